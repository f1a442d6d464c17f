"""v_points holds evaluation points with rewrite metrics only: the projector (kept_fraction,
projector_distance) and preserved (drift) datasets and skipped_records give it no all-NULL rows."""

from __future__ import annotations

from pathlib import Path

from storage import names
from storage.reader import read_sql
from storage.writer import ResultWriter, RunSpec


def _m(done: int, dataset: str, metric: str, value: float) -> dict:
    return dict(run_id="ae-0", edits_done=done, dataset=dataset, metric=metric, value=value, n_cases=None)


def test_v_points_has_no_rows_without_a_rewrite_metric(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    with ResultWriter(path) as w:
        w.register_runs([RunSpec(run_id="ae-0", sweep_id="s", model="toy", method="alphaedit", dataset="counterfact",
                                 batch_size=10, n_edits=20, seed=0)])
        w.write(metrics=[
            _m(0, "counterfact", "efficacy", 1.0), _m(20, "counterfact", "efficacy", 96.0),
            _m(0, "counterfact", "skipped_records", 2.0),
            _m(0, names.DATASET_PROJECTOR, names.kept_fraction_metric(3), 0.4),
            _m(0, names.DATASET_PROJECTOR, names.projector_distance_metric(3), 0.1),
            _m(0, names.DATASET_PRESERVED, names.METRIC_DRIFT_SHIFT, 0.0),
            _m(20, names.DATASET_PRESERVED, names.METRIC_DRIFT_SHIFT, 0.7),
            _m(40, names.DATASET_PRESERVED, names.METRIC_DRIFT_SHIFT, 0.9),  # a point with drift only
        ])
    got = read_sql(path, "SELECT dataset, edits_done, efficacy FROM v_points ORDER BY ALL")
    assert got.rows() == [("counterfact", 0, 1.0), ("counterfact", 20, 96.0)]
    # The other rows are still there, in v_metrics.
    other = read_sql(path, "SELECT DISTINCT dataset FROM v_metrics ORDER BY 1")["dataset"].to_list()
    assert other == ["counterfact", names.DATASET_PRESERVED, names.DATASET_PROJECTOR]
