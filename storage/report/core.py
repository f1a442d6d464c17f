"""Entry points of the report: :func:`write_report` and :func:`report_hint`."""

from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

from storage.artifacts import write_bytes_atomic

log = logging.getLogger(__name__)

#: File name of the report page inside the output folder.
INDEX_NAME = "index.html"


def write_report(db_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], sweep_id: str | None = None,
                 preface_html: str | None = None) -> Path:
    """Write a self-contained HTML report of ``db_path`` (one sweep, or all runs) to ``out_dir``.

    The results file is opened read-only. ``out_dir`` is created if needed and may already
    exist; ``out_dir/index.html`` is written under a temporary name and renamed, so a reader
    never sees half a page. ``preface_html`` (trusted HTML, e.g. the nightly regression table)
    goes at the top of the page. Returns the path of ``index.html``.
    """
    from storage.report import plots, studies
    from storage.report.cells import seed_curves
    from storage.report.data import load_report_data
    from storage.report.html import render_html
    from storage.report.table1 import build_table1

    data = load_report_data(db_path, sweep_id)
    curves = seed_curves(data.run_metrics, data.cells)  # per cell (hparams apart), min–max over seeds
    page = render_html(
        data,
        build_table1(data),
        plots.metric_plots(curves, data.runs),
        plots.probe_plots(data.probes, data.runs),
        plots.timing_plot(data.timings),
        preface_html,
        tradeoff_plot=plots.tradeoff_plot(curves, data.runs),
        threshold_plots=studies.threshold_plots(data.cells, data.run_metrics, data.run_probes),
        budget_plots=studies.budget_plots(data.cells, data.run_metrics, data.run_probes),
        drift_plots=studies.drift_scatter_plots(data.cells, data.drift_points),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / INDEX_NAME
    write_bytes_atomic(final, page.encode("utf-8"))
    log.info("wrote report of %s (sweep %s) to %s", db_path, sweep_id or "all", final)
    return final


def default_out_dir(db_path: str | os.PathLike[str], sweep_id: str | None) -> Path:
    """``<folder of the db>/report-<sweep id>`` (``report-all`` without a sweep); unsafe characters as ``_``."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", sweep_id) if sweep_id else "all"
    return Path(db_path).parent / f"report-{tag}"


def report_hint(db_path: str | os.PathLike[str], sweep_id: str | None) -> str:
    """The command (run from the repository root) that writes the report of ``sweep_id``."""
    parts = ["python", "-m", "jobs.report", "--db", str(db_path)]
    if sweep_id is not None:
        parts += ["--sweep", sweep_id]
    parts += ["--out", str(default_out_dir(db_path, sweep_id))]
    return shlex.join(parts)
