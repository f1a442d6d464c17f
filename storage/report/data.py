"""Everything a report shows, read from a results file in one read-only session.

The frames come from the canned queries (``storage/queries/*.sql``) where one fits, so the
report shows what ``python -m storage.query`` shows; the one extra query (metrics of the
unedited model per model and dataset) lives here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from eval.errors import ExpectedError
from storage import names
from storage.reader import ResultsReader
from storage.report.cells import run_cells
from storage.schema import utc_now

log = logging.getLogger(__name__)

# Metrics of the unedited model (edits_done = 0) per model and runs.dataset, mean over runs.
_UNEDITED_SQL = f"""
SELECT r.model, r.dataset, m.metric, avg(m.value) AS value, count(DISTINCT r.run_id) AS n_runs
FROM runs AS r
JOIN metrics AS m ON m.run_id = r.run_id AND m.dataset = r.dataset
WHERE m.edits_done = {names.UNEDITED_EDITS_DONE}
  AND ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
GROUP BY r.model, r.dataset, m.metric
ORDER BY r.model, r.dataset, m.metric
"""

_SWEEP = "($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))"
# Every metrics row of the runs, per run (the seed bands and the studies aggregate them; storage.report.cells).
_RUN_METRICS_SQL = f"""SELECT m.run_id, m.dataset, m.edits_done, m.metric, m.value
FROM metrics AS m JOIN runs AS r USING (run_id) WHERE {_SWEEP} ORDER BY ALL"""
_RUN_PROBES_SQL = f"""SELECT p.run_id, p.edits_done, p.task, p.metric, p.value
FROM probes AS p JOIN runs AS r USING (run_id) WHERE {_SWEEP} ORDER BY ALL"""
_DRIFT_POINTS_SQL = f"""SELECT d.run_id, d.edits_done, d.doc, d.x, d.y
FROM drift_points AS d JOIN runs AS r USING (run_id) WHERE {_SWEEP} ORDER BY ALL"""


class UnknownSweepError(ExpectedError, ValueError):
    """The requested sweep id has no runs in the results file."""


@dataclass(frozen=True)
class ReportData:
    """The frames one report is drawn from (all already filtered to ``sweep_id`` when given)."""

    db_path: Path
    sweep_id: str | None
    read_at: datetime
    schema_version: int
    runs: pl.DataFrame  # run_status + config: one row per run
    final: pl.DataFrame  # method_comparison at each run's final step
    unedited: pl.DataFrame  # model, dataset, metric, value, n_runs at edits_done = 0
    curves: pl.DataFrame  # degradation_curve
    probes: pl.DataFrame  # probe_deltas
    timings: pl.DataFrame  # stage_timings
    cells: pl.DataFrame = field(default_factory=pl.DataFrame)  # storage.report.cells.run_cells: one row per run
    run_metrics: pl.DataFrame = field(default_factory=pl.DataFrame)  # run_id, dataset, edits_done, metric, value
    run_probes: pl.DataFrame = field(default_factory=pl.DataFrame)  # run_id, edits_done, task, metric, value
    drift_points: pl.DataFrame = field(default_factory=pl.DataFrame)  # run_id, edits_done, doc, x, y (Fig. 5)


def load_report_data(db_path: str | os.PathLike[str], sweep_id: str | None = None) -> ReportData:
    """Read the frames of a report from ``db_path`` (opened read-only), for one sweep or all.

    Raises :class:`UnknownSweepError` when ``sweep_id`` has no runs (the message lists the
    sweeps the file holds), and the reader's errors for a missing, locked or wrong-version file.
    """
    path = Path(db_path)
    with ResultsReader(path) as r:
        runs = r.canned("run_status", sweep_id=sweep_id)
        if sweep_id is not None and runs.height == 0:
            known = r.sql("SELECT DISTINCT sweep_id FROM runs ORDER BY 1")["sweep_id"].to_list()
            raise UnknownSweepError(
                f"{path}: no runs of sweep {sweep_id!r}; sweeps in this file: "
                f"{', '.join(map(repr, known)) or 'none'}. Pass one of them with --sweep, or leave it out for all runs."
            )
        configs = r.sql(
            "SELECT run_id, CAST(config AS VARCHAR) AS config FROM runs "
            "WHERE $sweep_id IS NULL OR sweep_id = CAST($sweep_id AS VARCHAR)",
            {"sweep_id": sweep_id},
        )
        runs = runs.join(configs, on="run_id", how="left")
        params = {"sweep_id": sweep_id}
        data = ReportData(
            db_path=path,
            sweep_id=sweep_id,
            read_at=utc_now(),
            schema_version=r.schema_version,
            runs=runs,
            final=r.canned("method_comparison", sweep_id=sweep_id),
            unedited=r.sql(_UNEDITED_SQL, {"sweep_id": sweep_id}),
            curves=r.canned("degradation_curve", sweep_id=sweep_id),
            probes=r.canned("probe_deltas", sweep_id=sweep_id),
            timings=r.canned("stage_timings", sweep_id=sweep_id),
            cells=run_cells(runs),
            run_metrics=r.sql(_RUN_METRICS_SQL, params),
            run_probes=r.sql(_RUN_PROBES_SQL, params),
            drift_points=r.sql(_DRIFT_POINTS_SQL, params),
        )
    log.info(
        "report data from %s (sweep %s): %d runs, %d curve points, %d probe points, %d timing rows",
        path, sweep_id or "all", data.runs.height, data.curves.height, data.probes.height, data.timings.height,
    )
    return data
