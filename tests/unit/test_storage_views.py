"""The analysis views (storage/views.py) on real DuckDB files written through storage.writer."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from storage import names
from storage.reader import ResultsReader, read_sql
from storage.schema import apply_comments, migrate
from storage.sql import MissingViewError
from storage.views import METRIC_UNITS, STAGE_UNITS, VIEWS
from storage.writer import ResultWriter, RunSpec

REPO = Path(__file__).resolve().parents[2]
RUNS = [  # run_id, method, dataset, seed
    ("ae-0", "alphaedit", "counterfact", 0),
    ("me-0", "memit", "counterfact", 0),
    ("zs-0", "alphaedit", "zsre", 1),
]
CHECKPOINT_BYTES = 165_169_720


def _metric(run: str, done: int, dataset: str, metric: str, value: float) -> dict:
    return dict(run_id=run, edits_done=done, dataset=dataset, metric=metric, value=value, n_cases=20)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("views") / "results.duckdb"
    with ResultWriter(path) as w:
        w.register_runs(RunSpec(run_id=r, sweep_id="s1", model="toy", method=m, dataset=d, batch_size=10, n_edits=20,
                                seed=seed) for r, m, d, seed in RUNS)
        metrics = [
            _metric("ae-0", 0, "counterfact", "efficacy", 0.0), _metric("ae-0", 0, "counterfact", "specificity", 99.0),
            _metric("ae-0", 20, "counterfact", "efficacy", 96.0),
            _metric("ae-0", 20, "counterfact", "generalization", 88.0),
            _metric("ae-0", 20, "counterfact", "specificity", 90.0),
            _metric("ae-0", 20, "counterfact", "fluency", 615.5),
            _metric("ae-0", 20, "counterfact", "consistency", 31.0),
            _metric("ae-0", 20, "counterfact", "efficacy_magnitude", 70.0),
            _metric("me-0", 20, "counterfact", "efficacy", 50.0),
            _metric("zs-0", 20, "zsre", "efficacy", 94.0),
            _metric("zs-0", 20, "zsre", "skipped_records", 2.0),
            _metric("zs-0", 20, "zsre", "made_up", 1.0),
        ]
        probes = [
            dict(run_id="ae-0", edits_done=0, task="real_knowledge", metric="acc", value=0.88),
            dict(run_id="ae-0", edits_done=20, task="real_knowledge", metric="acc", value=0.85),
            dict(run_id="ae-0", edits_done=20, task="real_knowledge", metric="perplexity", value=12.5),
            dict(run_id="me-0", edits_done=20, task="real_knowledge", metric="acc", value=0.80),  # no unedited row
        ]
        timings = []
        for step in (0, 1):  # two batches of 10: edit_batch contains targets and solve
            timings += [dict(run_id="ae-0", stage=names.STAGE_EDIT_BATCH, step=step, seconds=10.0, items=10),
                        dict(run_id="ae-0", stage=names.STAGE_TARGETS, step=step, seconds=7.0, items=10),
                        dict(run_id="ae-0", stage=names.STAGE_SOLVE, step=step, seconds=1.0, items=10),
                        dict(run_id="ae-0", stage=names.STAGE_CHECKPOINT, step=step, seconds=0.5,
                             items=CHECKPOINT_BYTES)]
        timings += [dict(run_id="ae-0", stage=names.STAGE_REWRITE_EVAL, step=0, seconds=4.0, items=20),
                    dict(run_id="ae-0", stage=names.STAGE_REWRITE_EVAL, step=1, seconds=4.0, items=20),
                    dict(run_id="ae-0", stage=names.STAGE_PROBE, step=1, seconds=3.0),
                    dict(run_id="ae-0", stage=names.STAGE_KEY_STATS, step=0, seconds=40.0),
                    dict(run_id="ae-0", stage="my_stage", step=0, seconds=2.0, items=4)]
        w.write(metrics=metrics, probes=probes, timings=timings)
        w.set_status("ae-0", "running")
        w.set_status("ae-0", "finished")
    return path


def test_v_points_one_row_per_evaluation_point_metrics_as_columns(db):
    got = read_sql(db, "SELECT * FROM v_points")
    assert got.columns == ["model", "method", "dataset", "batch_size", "n_edits", "seed", "edits_done",
                           *names.COUNTERFACT_METRICS, "sweep_id", "run_id"]
    rows = {(r["run_id"], r["edits_done"]): r for r in got.iter_rows(named=True)}
    assert set(rows) == {("ae-0", 0), ("ae-0", 20), ("me-0", 20), ("zs-0", 20)}
    final = rows[("ae-0", 20)]
    assert (final["efficacy"], final["generalization"], final["specificity"], final["fluency"],
            final["consistency"], final["efficacy_magnitude"]) == (96.0, 88.0, 90.0, 615.5, 31.0, 70.0)
    assert final["specificity_magnitude"] is None  # not measured: NULL, never 0
    assert rows[("ae-0", 0)]["efficacy"] == 0.0 and rows[("ae-0", 0)]["specificity"] == 99.0
    zsre = rows[("zs-0", 20)]
    assert (zsre["dataset"], zsre["method"], zsre["seed"], zsre["efficacy"], zsre["fluency"]) == (
        "zsre", "alphaedit", 1, 94.0, None)


def test_v_metrics_has_run_columns_and_a_unit_for_every_metric(db):
    got = read_sql(db, "SELECT * FROM v_metrics")
    assert got.columns == ["model", "method", "dataset", "batch_size", "n_edits", "seed", "edits_done", "metric",
                           "value", "unit", "n_cases", "sweep_id", "run_id"]
    unit = {r["metric"]: r["unit"] for r in got.iter_rows(named=True)}
    assert unit["efficacy"] == unit["specificity"] == "percent"
    assert unit["fluency"] == "entropy x100" and unit["consistency"] == "cosine x100"
    assert unit["efficacy_magnitude"] == "probability x100" and unit["skipped_records"] == "records"
    assert unit["made_up"] is None  # a metric nobody described has no unit, and still shows
    assert got.height == 12
    # every metric eval/ writes is described, in the view too
    assert set(names.COUNTERFACT_METRICS) <= set(METRIC_UNITS)
    described = read_sql(db, "SELECT metric, unit, scale FROM metric_units")
    assert set(described["metric"]) == set(METRIC_UNITS) and described["unit"].null_count() == 0
    assert dict(zip(described["metric"], described["scale"], strict=True))["efficacy"] == 100.0


def test_v_probes_unedited_value_and_delta(db):
    got = read_sql(db, "SELECT run_id, edits_done, probe, value, unit, unedited, delta FROM v_probes")
    rows = {(r["run_id"], r["edits_done"], r["probe"]): r for r in got.iter_rows(named=True)}
    acc = rows[("ae-0", 20, "real_knowledge.acc")]
    assert acc["unit"] == "fraction" and acc["unedited"] == 0.88 and acc["delta"] == pytest.approx(-0.03)
    assert rows[("ae-0", 20, "real_knowledge.perplexity")]["unit"] == "as lm-eval reports"
    assert rows[("ae-0", 0, "real_knowledge.acc")]["delta"] == 0.0
    no_base = rows[("me-0", 20, "real_knowledge.acc")]
    assert no_base["unedited"] is None and no_base["delta"] is None


def test_v_probe_points_one_row_per_evaluation_point_probes_by_name(db):
    got = read_sql(db, "SELECT run_id, edits_done, probes['real_knowledge.acc'] AS acc, "
                       "probes['real_knowledge.perplexity'] AS ppl, cardinality(probes) AS n FROM v_probe_points")
    assert got.rows() == [("ae-0", 0, 0.88, None, 1), ("ae-0", 20, 0.85, 12.5, 2), ("me-0", 20, 0.80, None, 1)]
    cols = read_sql(db, "SELECT * FROM v_probe_points").columns
    assert cols == ["model", "method", "dataset", "batch_size", "n_edits", "seed", "edits_done", "probes",
                    "sweep_id", "run_id"]


def test_v_stage_times_parts_and_bytes(db):
    got = read_sql(db, "SELECT * FROM v_stage_times WHERE run_id = 'ae-0'")
    by = {r["stage"]: r for r in got.iter_rows(named=True)}
    assert by["edit_batch"]["part_of"] is None and by["edit_batch"]["n_calls"] == 2
    assert by["edit_batch"]["seconds"] == 20.0 and by["edit_batch"]["n_items"] == 20
    assert by["edit_batch"]["item_unit"] == "edits" and by["edit_batch"]["seconds_per_item"] == 1.0
    for part in ("targets", "solve"):
        assert by[part]["part_of"] == "edit_batch"
    ckpt = by["checkpoint"]
    assert (ckpt["item_unit"], ckpt["n_items"], ckpt["bytes"], ckpt["seconds_per_item"]) == (
        "bytes", None, 2 * CHECKPOINT_BYTES, None)
    assert by["rewrite_eval"]["item_unit"] == "records" and by["rewrite_eval"]["seconds_per_item"] == 0.2
    assert by["probe"]["n_items"] is None and by["key_stats"]["item_unit"] is None
    assert by["my_stage"]["part_of"] is None and by["my_stage"]["n_items"] == 4  # free-text stage: as stored
    # the time that was spent: top-level stages only (targets + solve are not added on top of edit_batch)
    top = read_sql(db, "SELECT sum(seconds) AS s FROM v_stage_times WHERE run_id = 'ae-0' AND part_of IS NULL")
    assert top["s"][0] == pytest.approx(20.0 + 1.0 + 8.0 + 3.0 + 40.0 + 2.0)
    assert set(STAGE_UNITS) == {getattr(names, n) for n in dir(names) if n.startswith("STAGE_")}


def test_v_run_times_wall_editor_and_evaluation_seconds(db):
    got = read_sql(db, "SELECT r.*, date_diff('millisecond', runs.started_at, runs.finished_at) / 1000.0 AS wall "
                       "FROM v_run_times AS r JOIN runs USING (run_id) ORDER BY run_id")
    rows = {r["run_id"]: r for r in got.iter_rows(named=True)}
    ae = rows["ae-0"]
    assert ae["status"] == "finished" and ae["wall_seconds"] == ae["wall"] and ae["wall_seconds"] >= 0.0
    assert (ae["edit_seconds"], ae["eval_seconds"], ae["setup_seconds"]) == (21.0, 11.0, 40.0)
    me = rows["me-0"]  # never started, no timings: zero seconds, no wall time
    assert me["wall_seconds"] is None and me["edit_seconds"] == 0.0


def test_views_come_to_existing_files_and_travel_with_snapshots(tmp_path):
    old = tmp_path / "old.duckdb"  # a file as the writer made it before the views existed
    con = duckdb.connect(str(old))
    migrate(con)
    apply_comments(con)
    con.close()
    with ResultsReader(old) as r:
        assert r.sql("SELECT count(*) AS n FROM duckdb_views() WHERE NOT internal")["n"][0] == 0
        with pytest.raises(MissingViewError, match="open it once with ResultWriter"):
            r.sql("SELECT * FROM v_points")
        with pytest.raises(duckdb.CatalogException):  # other missing names: DuckDB's own error
            r.sql("SELECT * FROM v_pointless")
    with ResultWriter(old) as w:
        w.register_runs([RunSpec(run_id="a", sweep_id="s", model="toy", method="memit", dataset="counterfact",
                                 batch_size=1, n_edits=1, seed=0)])
        w.write(metrics=[_metric("a", 1, "counterfact", "efficacy", 100.0)])
        w.snapshot(tmp_path / "snap.duckdb")
    for path in (old, tmp_path / "snap.duckdb"):
        with ResultsReader(path) as r:  # read-only, file access off: the views still work
            views = set(r.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")["view_name"])
            assert views == {v.name for v in VIEWS}, path
            assert r.sql("SELECT efficacy FROM v_points")["efficacy"].to_list() == [100.0]
            comment = r.sql("SELECT comment FROM duckdb_views() WHERE view_name = 'v_points'")["comment"][0]
            assert comment and "evaluation point" in comment
    with ResultWriter(old):  # reopening re-creates them without error
        pass


def test_views_are_documented_with_an_example():
    storage_readme = (REPO / "storage" / "README.md").read_text()
    section = storage_readme.split("## Views", 1)
    assert len(section) == 2, "storage/README.md has no '## Views' section"
    body = section[1].split("\n## ", 1)[0]
    for view in VIEWS:
        assert f"`{view.name}`" in body, f"storage/README.md does not document view {view.name}"
    readme = (REPO / "README.md").read_text()
    for view in ("v_points", "v_metrics", "v_probes", "v_probe_points", "v_stage_times", "v_run_times"):
        assert f"FROM {view}" in readme, f"README.md has no example query on {view}"


def test_every_view_runs_on_an_empty_file(tmp_path):
    with ResultWriter(tmp_path / "empty.duckdb") as w:
        for view in VIEWS:
            got = w.query(f"SELECT * FROM {view.name}")
            want = len(METRIC_UNITS) if view.name == "metric_units" else (
                len(STAGE_UNITS) if view.name == "stage_units" else 0)
            assert got.height == want, view.name
