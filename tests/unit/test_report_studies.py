"""The report's seed bands, threshold and key-budget studies and Fig. 5 scatter, from a hand-made results file.

The file holds: AlphaEdit with 3 seeds and MEMIT with 1 (bands vs. a plain line), a threshold study
(five absolute thresholds and the relative mode), a key-budget study (1, 2, 10 x d_k and the full
corpus) and drift points; ``make_studies_db`` is also the browser test's page.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import polars as pl
import pytest

from storage import names
from storage.report import write_report
from storage.report.cells import (
    BUDGET_FIELDS,
    THRESHOLD_FIELDS,
    final_values,
    run_cells,
    seed_curves,
    studies,
)
from storage.writer import ResultWriter, RunSpec

CF, ZSRE = names.DATASET_COUNTERFACT, names.DATASET_ZSRE
EFF, SPE, GEN = names.METRIC_EFFICACY, names.METRIC_SPECIFICITY, names.METRIC_GENERALIZATION
MODEL = "smollm2-135m"
LAYERS = (3, 4, 5)
HP = {"layers": list(LAYERS), "nullspace_threshold": 0.02, "threshold_mode": "absolute", "key_budget_multiplier": None,
      "l2": 10.0}
THRESHOLDS = ((1e-3, "absolute"), (1e-2, "absolute"), (2e-2, "absolute"), (5e-2, "absolute"), (1e-1, "absolute"),
              (1e-2, "relative"))
BUDGETS = (1.0, 2.0, 10.0, None)
LONG_ERROR = ("an update that changes nothing in smollm2:alphaedit:counterfact:b100:n200:s9 at batch 2 "
              "(NullUpdateError: every edited layer's update is 0: layers [3, 4, 5]; check nullspace_threshold "
              "(1e-09 keeps nothing) and the key statistics) " + "x" * 120)


def _seed_value(method: str, seed: int, edits: int, metric: str) -> float:
    base = {EFF: 20.0, SPE: 80.0, GEN: 18.0}[metric]
    if edits == 0:
        return base
    gain = {"alphaedit": {EFF: 75.0, SPE: -6.0, GEN: 60.0}, "memit": {EFF: 60.0, SPE: -25.0, GEN: 45.0}}[method][metric]
    return base + gain * edits / 200 + (seed - 1) * 2.0  # seeds 0, 1, 2: -2, 0, +2


def make_studies_db(path: Path) -> Path:
    """Sweep ``st``: seed cells (b=100), a threshold study (counterfact, b=50), a key-budget study (zsre, b=50),
    drift points of the seed cells and one failed run with a long error."""
    runs: list[tuple[RunSpec, str]] = []
    metrics, probes, points = [], [], []

    def run(run_id: str, method: str, dataset: str, bs: int, n: int, seed: int, hp: dict, status: str = "finished"):
        runs.append((RunSpec(run_id=run_id, sweep_id="st", model=MODEL, method=method, dataset=dataset, batch_size=bs,
                             n_edits=n, seed=seed, config={"model": {"name": MODEL}, "hparams": hp}), status))

    for method, seeds in (("alphaedit", (0, 1, 2)), ("memit", (0,))):
        for seed in seeds:
            rid = f"st:{method}:s{seed}"
            run(rid, method, CF, 100, 200, seed, HP)
            metrics += [{"run_id": rid, "edits_done": e, "dataset": CF, "metric": m, "value": _seed_value(method, seed, e, m)}
                        for e in (0, 100, 200) for m in (EFF, SPE, GEN)]
            spread = 0.1 if method == "alphaedit" else 1.5
            for e in (0, 100, 200):
                points += [{"run_id": rid, "edits_done": e, "doc": d, "x": math.cos(d) * 3 + (spread * e / 200),
                            "y": math.sin(d) + (spread * e / 200) * (d % 3)} for d in range(30)]
    run("st:alphaedit:failed", "alphaedit", CF, 100, 200, 9, {**HP, "nullspace_threshold": 1e-9}, status="failed")
    for i, (t, mode) in enumerate(THRESHOLDS):
        rid = f"st:threshold:h{i}"
        run(rid, "alphaedit", CF, 50, 50, 0, {**HP, "nullspace_threshold": t, "threshold_mode": mode})
        kept = (0.2 if mode == "relative" else 0.05) + 0.6 * math.log10(t / 1e-3) / 2
        metrics += [{"run_id": rid, "edits_done": 0, "dataset": names.DATASET_PROJECTOR,
                     "metric": names.kept_fraction_metric(la), "value": kept - 0.02 * j} for j, la in enumerate(LAYERS)]
        metrics += [{"run_id": rid, "edits_done": e, "dataset": CF, "metric": m, "value": v}
                    for e, vals in ((0, {EFF: 20.0, SPE: 80.0}), (50, {EFF: 60.0 + 30 * kept, SPE: 80.0 - 10 * (1 - kept)}))
                    for m, v in vals.items()]
        probes += [{"run_id": rid, "edits_done": e, "task": "real_knowledge", "metric": "acc", "value": v}
                   for e, v in ((0, 0.6), (50, 0.6 - 0.05 * (1 - kept)))]
    for i, b in enumerate(BUDGETS):
        rid = f"st:budget:h{i}"
        run(rid, "alphaedit", ZSRE, 50, 50, 0, {**HP, "key_budget_multiplier": b})
        metrics += [{"run_id": rid, "edits_done": 0, "dataset": names.DATASET_PROJECTOR,
                     "metric": names.kept_fraction_metric(la), "value": 0.3 if b is None else 0.3 + 0.2 / b}
                    for la in LAYERS]
        if b is not None:
            metrics += [{"run_id": rid, "edits_done": 0, "dataset": names.DATASET_PROJECTOR,
                         "metric": names.projector_distance_metric(la), "value": 0.5 / b + 0.01 * la} for la in LAYERS]
        metrics += [{"run_id": rid, "edits_done": e, "dataset": ZSRE, "metric": m, "value": v}
                    for e, vals in ((0, {EFF: 30.0, SPE: 30.0}), (50, {EFF: 90.0, SPE: 30.0 - (0 if b is None else 4 / b)}))
                    for m, v in vals.items()]
    with ResultWriter(path) as w:
        w.register_runs([spec for spec, _ in runs])
        for spec, _ in runs:
            w.set_status(spec.run_id, "running")
        w.write(metrics=metrics, probes=probes, drift_points=points,
                timings=[{"run_id": "st:alphaedit:s0", "stage": names.STAGE_EDIT_BATCH, "step": s, "seconds": 4.0,
                          "items": 100} for s in (0, 1)])
        for spec, status in runs:
            w.set_status(spec.run_id, status, error=LONG_ERROR if status == "failed" else None)
    return path


@pytest.fixture(scope="module")
def studies_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_studies_db(tmp_path_factory.mktemp("studies") / "results.duckdb")


@pytest.fixture(scope="module")
def frames(studies_db: Path):
    from storage.report.data import load_report_data

    data = load_report_data(studies_db, "st")
    return data, seed_curves(data.run_metrics, data.cells)


def test_seed_bands_are_the_min_max_over_a_cells_seeds(frames) -> None:
    _, curves = frames
    ae = curves.filter((pl.col("method") == "alphaedit") & (pl.col("batch_size") == 100)
                       & (pl.col("variant") == "nullspace_threshold=0.02") & (pl.col("metric") == EFF)
                       & (pl.col("dataset") == CF))
    at200 = ae.filter(pl.col("edits_done") == 200).to_dicts()[0]
    vals = [_seed_value("alphaedit", s, 200, EFF) for s in (0, 1, 2)]
    assert at200["n_runs"] == 3 and at200["value"] == pytest.approx(sum(vals) / 3)
    assert (at200["lo"], at200["hi"]) == (min(vals), max(vals)) and at200["std"] == pytest.approx(2.0)
    memit = curves.filter((pl.col("method") == "memit") & (pl.col("metric") == EFF) & (pl.col("edits_done") == 200))
    assert memit["n_runs"].to_list() == [1] and memit["lo"].to_list() == memit["hi"].to_list() == memit["value"].to_list()
    assert memit["std"].null_count() == 1
    # the failed run (another threshold) is a cell of its own, not a fourth seed of the default one
    failed = curves.filter((pl.col("batch_size") == 100) & (pl.col("variant") == "nullspace_threshold=1e-09"))
    assert failed.height == 0  # it has no rows; and it is not counted into the default cell's runs
    assert set(ae["n_runs"].to_list()) == {3}


def test_tradeoff_points_carry_the_band(frames) -> None:
    from storage.report.plots import tradeoff_points

    _, curves = frames
    pts = tradeoff_points(curves).filter((pl.col("method") == "alphaedit") & (pl.col("batch_size") == 100)
                                         & (pl.col("variant") == "nullspace_threshold=0.02"))
    last = pts.filter(pl.col("edits_done") == 200).to_dicts()[0]
    assert last["n_runs"] == 3
    assert (last["y_lo"], last["y"], last["y_hi"]) == pytest.approx(
        tuple(_seed_value("alphaedit", s, 200, EFF) for s in (0, 1, 2)))
    assert (last["x_lo"], last["x_hi"]) == (_seed_value("alphaedit", 0, 200, SPE), _seed_value("alphaedit", 2, 200, SPE))


def test_threshold_and_budget_studies_are_found_and_read(frames) -> None:
    data, _ = frames
    thr = studies(data.cells, THRESHOLD_FIELDS)
    assert [(s.dataset, s.batch_size, s.cells.height) for s in thr] == [(CF, 50, 6)]
    budget = studies(data.cells, BUDGET_FIELDS)
    assert [(s.dataset, s.batch_size, s.cells.height) for s in budget] == [(ZSRE, 50, 4)]
    vals = final_values(thr[0], data.run_metrics, data.run_probes)
    h0 = {r["quantity"]: r["value"] for r in vals.filter(pl.col("run_id") == "st:threshold:h0").to_dicts()}
    assert set(h0) == {EFF, SPE, "Δ real_knowledge.acc", *(names.kept_fraction_metric(la) for la in LAYERS)}
    assert h0[names.kept_fraction_metric(3)] == pytest.approx(0.05)
    assert h0["Δ real_knowledge.acc"] == pytest.approx(-0.05 * 0.95)
    bvals = final_values(budget[0], data.run_metrics, data.run_probes)
    assert bvals.filter(pl.col("quantity") == names.projector_distance_metric(3))["run_id"].to_list() == [
        "st:budget:h0", "st:budget:h1", "st:budget:h2"]
    # a failed run counts when it has rows (a threshold whose kept fraction made every update 0), and shows no
    # rewrite value then (its only evaluation is the unedited one)
    with_failed = studies(data.cells, THRESHOLD_FIELDS, measured={"st:alphaedit:failed"})
    assert [(s.batch_size, s.cells.height) for s in with_failed] == [(50, 6), (100, 4)]
    extra = pl.DataFrame([{"run_id": "st:alphaedit:failed", "dataset": CF, "edits_done": 0, "metric": EFF, "value": 20.0},
                          {"run_id": "st:alphaedit:failed", "dataset": names.DATASET_PROJECTOR, "edits_done": 0,
                           "metric": names.kept_fraction_metric(3), "value": 0.0}])
    failed_vals = final_values(with_failed[1], pl.concat([data.run_metrics, extra], how="vertical_relaxed"),
                               data.run_probes).filter(pl.col("run_id") == "st:alphaedit:failed")
    assert failed_vals["quantity"].to_list() == [names.kept_fraction_metric(3)]
    # cells with a single setting are no study
    assert studies(data.cells.filter(pl.col("run_id").str.starts_with("st:memit")), THRESHOLD_FIELDS) == []


def test_run_cells_label_the_hparams_a_cell_differs_in(studies_db: Path) -> None:
    from storage.reader import ResultsReader

    with ResultsReader(studies_db) as r:
        runs = r.sql("SELECT run_id, model, method, dataset, batch_size, seed, status, CAST(config AS VARCHAR) AS config "
                     "FROM runs")
    cells = {c["run_id"]: c for c in run_cells(runs).to_dicts()}
    assert cells["st:alphaedit:s1"]["variant"] == "nullspace_threshold=0.02"  # vs the failed run (1e-9)
    assert cells["st:memit:s0"]["variant"] == ""
    assert cells["st:threshold:h5"]["variant"] == "nullspace_threshold=0.01, threshold_mode=relative"
    assert cells["st:budget:h3"]["key_budget"] is None and cells["st:budget:h0"]["key_budget"] == 1.0


def test_report_shows_the_studies_and_the_drift_scatter(studies_db: Path, tmp_path: Path) -> None:
    html = write_report(studies_db, tmp_path / "rep", sweep_id="st").read_text(encoding="utf-8")
    figures = re.findall(r'data-plot="([^"]+)"', html)
    assert {"threshold-0", "budget-0", f"drift-{MODEL}-{CF}", "tradeoff", "metric-efficacy"} <= set(figures)
    for anchor in ("threshold", "budget", "drift"):
        assert f'<h2 id="{anchor}">' in html
    assert "min–max" in html  # the page says what the bands are
    assert not any(f.startswith("metric-kept_fraction") or f.startswith("metric-projector_distance") for f in figures)


def test_study_sections_only_when_such_cells_exist(tmp_path: Path) -> None:
    from tests.unit.test_report import make_results_db

    html = write_report(make_results_db(tmp_path / "r.duckdb"), tmp_path / "rep", sweep_id="s1").read_text(encoding="utf-8")
    for anchor in ("threshold", "budget", "drift"):
        assert f'<h2 id="{anchor}">' not in html


def test_table1_has_a_row_per_cell_not_a_mean_over_thresholds(frames) -> None:
    from storage.report.table1 import RowKind, build_table1

    data, _ = frames
    cf = next(t for t in build_table1(data) if t.dataset == CF)
    ours = [r for r in cf.rows if r.kind == RowKind.OURS]
    b50 = [r for r in ours if r.batch_size == 50]
    assert len(b50) == 6 and len({r.variant for r in b50}) == 6 and all(r.runs == "1 finished" for r in b50)
    seeds = next(r for r in ours if r.variant == "nullspace_threshold=0.02" and r.batch_size == 100)
    eff = cf.metrics.index(EFF)
    assert seeds.runs == "3 finished; mean of 3" and not seeds.any_failed
    assert seeds.cells[eff].text == f"{sum(_seed_value('alphaedit', s, 200, EFF) for s in (0, 1, 2)) / 3:.2f}"
    failed = next(r for r in ours if r.variant == "nullspace_threshold=1e-09")
    assert failed.runs == "1 failed" and failed.cells[eff].text == "failed"


def test_variant_labels_sort_by_their_numbers() -> None:
    """Table 1 rows and the Fig. 5 panels list key budgets 1, 2, 10, full (not '1, 10, 2' as text)."""
    from storage.report.cells import natural_key

    labels = ["key_budget_multiplier=10", "key_budget_multiplier=full", "key_budget_multiplier=2",
              "key_budget_multiplier=1", "nullspace_threshold=0.1", "nullspace_threshold=1e-3",
              "nullspace_threshold=0.02", ""]
    assert sorted(labels, key=natural_key) == [
        "", "key_budget_multiplier=1", "key_budget_multiplier=2", "key_budget_multiplier=10",
        "key_budget_multiplier=full", "nullspace_threshold=1e-3", "nullspace_threshold=0.02",
        "nullspace_threshold=0.1"]
