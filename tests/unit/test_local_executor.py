"""The local twin of the executor: the sweep's own code path (run_model, EditorWorker,
evaluate_checkpoint, ResultWriter) in-process, without Ray.

A tiny sweep (AlphaEdit and MEMIT, 2 batches of 10 each) on the toy world writes the expected
rows; a run whose editor "actor" is killed before its second batch resumes from the checkpoint
and ends bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.executor import LocalExecutor
from cluster.pipeline import plan_cell, run_sweep, start_writer
from cluster.workers import checkpoint_codec, checkpoint_key
from storage.artifacts import ArtifactStore
from storage.hashing import config_hash

# Small and fast: 200 wiki documents of statistics, 5 optimisation steps per target, 4 probe docs.
FAST = ["batch_sizes=[10]", "eval_every=10", "probes.tasks=[toy_knowledge]", "probes.limit=4",
        "metrics.generation_records=0", "metrics.max_records=4", "stats_shards=1",
        "hparams_overrides=[{mom2_n_samples: 100, v_num_grad_steps: 5}]"]


def _config(tmp: Path, *extra: str):
    return load_config(TOY_CONFIG_PATH, [*FAST, f"results={tmp / 'r.duckdb'}",
                                             f"artifact_root={tmp / 'artifacts'}", *extra])


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """One torch thread, as in a Ray worker with num_cpus=1 (tests/conftest.py)."""


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("local")
    cfg = _config(tmp, "n_edits=[20]", "methods=[alphaedit, memit]")
    ex = LocalExecutor()
    writer = start_writer(str(tmp / "r.duckdb"), ex)
    statuses = run_sweep(cfg, "local", writer, ArtifactStore(tmp / "artifacts"), None, executor=ex)
    yield cfg, ex, writer, statuses, tmp
    ex.get(ex.call(writer, "close"))


def _q(ex, writer, sql: str):
    return ex.get(ex.call(writer, "query", sql))


def test_local_sweep_writes_the_expected_rows_without_ray(local_sweep) -> None:
    cfg, ex, writer, statuses, _ = local_sweep
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
    assert sorted(statuses.values()) == ["finished", "finished"]
    runs = _q(ex, writer, "SELECT method, status, error FROM runs ORDER BY method")
    assert runs["method"].to_list() == ["alphaedit", "memit"] and runs["error"].null_count() == 2
    per = _q(ex, writer, "SELECT r.method, m.edits_done, count(*) AS n FROM metrics m JOIN runs r USING (run_id) "
                         "WHERE m.dataset = r.dataset GROUP BY ALL ORDER BY ALL")
    assert per["edits_done"].to_list() == [0, 10, 20, 0, 10, 20]
    assert set(per["n"].to_list()) == {6}  # probability metrics (no generation records)
    probes = _q(ex, writer, "SELECT count(*) AS n FROM probes")["n"][0]
    assert probes == 2 * 3 * 2  # 2 runs x 3 points x toy_knowledge acc/acc_norm
    stages = _q(ex, writer, "SELECT stage, count(*) AS n FROM timings GROUP BY 1")
    counts = dict(zip(stages["stage"].to_list(), stages["n"].to_list(), strict=True))
    assert counts["edit_batch"] == 4 and counts["checkpoint"] == 4 and counts["rewrite_eval"] == 6
    assert counts["key_stats"] == 1 and counts["projector"] == 1  # computed once, by the first cell (alphaedit)
    kinds = _q(ex, writer, "SELECT kind, count(*) AS n FROM artifacts GROUP BY 1 ORDER BY 1")
    layers = len(next(cfg.cells()).hparams().layers)
    assert kinds["kind"].to_list() == ["checkpoint", "key_stats", "projector", "unedited_eval"]
    assert kinds["n"].to_list() == [4, layers, layers, 1]  # one unedited evaluation, shared by both cells
    values = _q(ex, writer, "SELECT value FROM metrics WHERE metric = 'efficacy'")["value"].to_list()
    assert len(values) == 6 and all(0 <= v <= 100 for v in values)
    kept = _q(ex, writer, "SELECT r.method, count(*) AS n FROM metrics m JOIN runs r USING (run_id) "
                          "WHERE m.dataset = 'projector' GROUP BY 1")
    assert kept.rows() == [("alphaedit", layers)]  # MEMIT has no projector


def test_plan_checkpoints_every_n_batches_evaluations_and_end(local_sweep) -> None:
    cfg = local_sweep[0]
    cell = next(cfg.cells())
    plan = plan_cell(cell, 1)
    assert plan.checkpoint_at == (10, 20) and plan.keep == (10, 20) and plan.eval_points == (0, 10, 20)
    import dataclasses

    long = dataclasses.replace(cell, n_edits=70, eval_every=40)
    plan = plan_cell(long, 3)
    assert plan.eval_points == (0, 40, 70)
    assert plan.checkpoint_at == (30, 40, 60, 70) and plan.keep == (40, 70)


def test_killed_editor_resumes_bit_identical(local_sweep) -> None:
    cfg, ex0, writer0, _, tmp = local_sweep
    # Same cell, another sweep id; the local "actor" dies right before its second batch.
    one = _config(tmp, "n_edits=[20]", "methods=[alphaedit]", f"results={tmp / 'killed.duckdb'}")
    ex = LocalExecutor(kill_before={"edit": 2})
    writer = start_writer(str(tmp / "killed.duckdb"), ex)
    try:
        statuses = run_sweep(one, "killed", writer, ArtifactStore(tmp / "artifacts"), None, executor=ex)
        assert list(statuses.values()) == ["finished"]
        assert ex.calls["begin"] == 2, "the editor must have been begun again after the kill"
        rows = _q(ex, writer, "SELECT edits_done, metric, value FROM metrics ORDER BY ALL")
        attempts = _q(ex, writer, "SELECT attempts FROM runs")["attempts"].to_list()
        # A second sweep on the same artifact store computes neither statistics nor projectors.
        stages = set(_q(ex, writer, "SELECT DISTINCT stage FROM timings")["stage"].to_list())
        kinds = _q(ex, writer, "SELECT DISTINCT kind FROM artifacts")["kind"].to_list()
    finally:
        ex.get(ex.call(writer, "close"))
    ref = _q(ex0, writer0, "SELECT edits_done, metric, value FROM metrics m JOIN runs r USING (run_id) "
                           "WHERE method = 'alphaedit' ORDER BY ALL")
    assert rows.equals(ref), "metrics after a resumed stream must equal the uninterrupted run's"
    assert attempts == [1]
    assert not stages & {"key_stats", "projector"} and "edit_batch" in stages, stages
    assert kinds == ["checkpoint"], kinds

    cell = next(c for c in one.cells())
    store = ArtifactStore(tmp / "artifacts")
    a, xa = store.get(checkpoint_key(cell.run_id("local"), config_hash(cell.config()), 20), checkpoint_codec())
    b, xb = store.get(checkpoint_key(cell.run_id("killed"), config_hash(cell.config()), 20), checkpoint_codec())
    for name in a.deltas:
        assert torch.equal(a.deltas[name], b.deltas[name]), name
        assert torch.equal(xa[f"weight.{name}"], xb[f"weight.{name}"]), name
    for layer in a.prev_keys:
        assert torch.equal(a.prev_keys[layer], b.prev_keys[layer]), layer
    assert a.n_edits == b.n_edits == 20 and a.case_ids == b.case_ids


def test_resume_config_keys_are_validated() -> None:
    from cluster.config import SweepConfigError

    with pytest.raises(SweepConfigError) as err:
        load_config(TOY_CONFIG_PATH, ["checkpoint_every=0", "editor_max_restarts=-1"])
    text = str(err.value)
    assert "checkpoint_every: must be >= 1" in text and "editor_max_restarts: must be >= 0" in text
    cfg = load_config(TOY_CONFIG_PATH, ["checkpoint_every=3", "editor_max_restarts=0"])
    assert (cfg.checkpoint_every, cfg.editor_max_restarts) == (3, 0)


def test_driver_progress_events_are_typed(local_sweep) -> None:
    """The driver reports progress as typed events (the sweep's progress bar counts BatchEdited ones);
    each is also its log line."""
    from cluster.events import BatchEdited, PointEvaluated

    _, _, _, _, tmp = local_sweep
    cfg = _config(tmp, "n_edits=[20]", "methods=[memit]", f"results={tmp / 'events.duckdb'}")
    ex = LocalExecutor()
    writer = start_writer(str(tmp / "events.duckdb"), ex)
    events: list = []
    try:
        run_sweep(cfg, "events", writer, ArtifactStore(tmp / "artifacts"), None, executor=ex, on_progress=events.append)
    finally:
        ex.get(ex.call(writer, "close"))
    batches = [e for e in events if isinstance(e, BatchEdited)]
    points = [e for e in events if isinstance(e, PointEvaluated)]
    assert [(e.edits_done, e.n_edits) for e in batches] == [(10, 20), (20, 20)]
    assert sorted(e.edits_done for e in points) == [0, 10, 20] and len(events) == 5
    assert str(batches[0]) == f"{batches[0].run_id}: 10/20 edits" and batches[0].run_id.startswith("events:")


class _WriteLog(LocalExecutor):
    """Records, in order, which evaluation points' metric rows and which batches' timing rows are written."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int]] = []

    def call(self, actor, method, *args, num_returns=1, **kwargs):
        if method == "write":
            for row in kwargs.get("metrics") or []:
                self.log.append(("eval", int(row["edits_done"])))
            for row in kwargs.get("timings") or []:
                if row.get("stage") == "edit_batch":
                    self.log.append(("batch", int(row["step"])))
        return super().call(actor, method, *args, num_returns=num_returns, **kwargs)


def test_evaluation_rows_land_while_the_cell_runs(tmp_path: Path) -> None:
    """An evaluation point's rows are written once it has finished, not after the cell's last batch."""
    cfg = _config(tmp_path, "n_edits=[30]", "methods=[alphaedit]")
    ex = _WriteLog()
    writer = start_writer(str(tmp_path / "r.duckdb"), ex)
    try:
        statuses = run_sweep(cfg, "live", writer, ArtifactStore(tmp_path / "artifacts"), None, executor=ex)
    finally:
        ex.get(ex.call(writer, "close"))
    assert set(statuses.values()) == {"finished"}
    order = list(dict.fromkeys(ex.log))  # first occurrence of each (kind, point)
    first_eval_at_10 = order.index(("eval", 10))
    assert first_eval_at_10 < order.index(("batch", 2)), order  # before the third batch's report (steps count from 0)


def test_drift_rows_at_every_evaluation_point(tmp_path: Path) -> None:
    """metrics.drift_prompts: the Fig. 5 drift of preserved documents, 0 on the unedited model."""
    cfg = _config(tmp_path, "n_edits=[20]", "methods=[alphaedit]", "metrics.drift_prompts=12")
    assert cfg.hash != _config(tmp_path, "n_edits=[20]", "methods=[alphaedit]").hash
    ex = LocalExecutor()
    writer = start_writer(str(tmp_path / "r.duckdb"), ex)
    try:
        run_sweep(cfg, "drift", writer, ArtifactStore(tmp_path / "artifacts"), None, executor=ex)
        rows = _q(ex, writer, "SELECT edits_done, metric, value, n_cases FROM metrics WHERE dataset = 'preserved' "
                              "ORDER BY edits_done, metric")
        kept = _q(ex, writer, "SELECT metric, value FROM metrics WHERE dataset = 'projector' AND edits_done = 0")
        points = _q(ex, writer, "SELECT edits_done, doc, x, y FROM drift_points ORDER BY edits_done, doc")
    finally:
        ex.get(ex.call(writer, "close"))
    got = {(int(e), m): (v, n) for e, m, v, n in rows.iter_rows()}
    assert set(got) == {(e, m) for e in (0, 10, 20) for m in ("drift_displacement", "drift_mmd", "drift_shift")}
    assert all(got[(0, m)][0] == 0.0 for m in ("drift_displacement", "drift_mmd", "drift_shift"))
    assert got[(20, "drift_displacement")][0] > 0.0 and got[(20, "drift_displacement")][1] == 12
    layers = cfg.cells().__next__().hparams().layers
    assert sorted(kept["metric"].to_list()) == sorted(f"kept_fraction.layer{la}" for la in layers)
    assert all(0.0 < v < 1.0 for v in kept["value"].to_list())
    # Fig. 5's scatter: every document at every point, on the unedited states' PCA basis (centred there).
    by_point = {int(e): pts for (e,), pts in points.group_by("edits_done")}
    assert sorted(by_point) == [0, 10, 20] and all(p.height == 12 for p in by_point.values())
    assert by_point[0]["doc"].to_list() == list(range(12))
    assert abs(by_point[0]["x"].mean()) < 1e-6 and abs(by_point[0]["y"].mean()) < 1e-6
    assert by_point[0]["x"].var() >= by_point[0]["y"].var() > 0.0  # the first axis has the larger spread
    moved = ((by_point[20]["x"] - by_point[0]["x"]) ** 2 + (by_point[20]["y"] - by_point[0]["y"]) ** 2).sqrt()
    assert moved.max() > 0.0


def test_new_metric_fields_keep_existing_sweep_ids(tmp_path: Path) -> None:
    base = _config(tmp_path)
    same = _config(tmp_path, "metrics.zsre_answer_tokens=clean", "metrics.drift_prompts=0")
    assert same.hash == base.hash
    ref = _config(tmp_path, "metrics.zsre_answer_tokens=reference")
    assert ref.hash != base.hash
    assert next(ref.cells()).config()["zsre_answer_tokens"] == "reference"  # runs.config names the mode
    assert "zsre_answer_tokens" not in next(base.cells()).config()  # and the clean default changes no run id
    with pytest.raises(Exception, match="zsre_answer_tokens"):
        _config(tmp_path, "metrics.zsre_answer_tokens=bos")


def test_post_hoc_drift_equals_the_sweeps_own(tmp_path: Path) -> None:
    """jobs.drift on a sweep run without drift writes the rows the sweep writes with metrics.drift_prompts."""
    from jobs.drift import main as drift_main

    rows = {}
    for name, extra in (("inline", ["metrics.drift_prompts=12"]), ("post", [])):
        cfg = _config(tmp_path / name, "n_edits=[20]", "methods=[alphaedit]", *extra)
        ex = LocalExecutor()
        writer = start_writer(str(tmp_path / name / "r.duckdb"), ex)
        try:
            run_sweep(cfg, "drift", writer, ArtifactStore(tmp_path / name / "artifacts"), None, executor=ex)
        finally:
            ex.get(ex.call(writer, "close"))
        if name == "post":
            assert drift_main(["--db", str(tmp_path / name / "r.duckdb"), "--artifact-root",
                               str(tmp_path / name / "artifacts"), "--prompts", "12"]) == 0
        import duckdb

        con = duckdb.connect(str(tmp_path / name / "r.duckdb"), read_only=True)
        rows[name] = con.execute("SELECT edits_done, metric, value FROM metrics WHERE dataset = 'preserved' "
                                 "ORDER BY ALL").fetchall()
        rows[name + "-points"] = con.execute("SELECT edits_done, doc, x, y FROM drift_points ORDER BY ALL").fetchall()
        con.close()
    assert len(rows["post"]) == 9 and [r[:2] for r in rows["post"]] == [r[:2] for r in rows["inline"]]
    for (_, m, a), (_, _, b) in zip(rows["post"], rows["inline"], strict=True):
        assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), m
    post, inline = rows["post-points"], rows["inline-points"]
    assert len(post) == 36 and [r[:2] for r in post] == [r[:2] for r in inline]
    assert max(abs(a - b) for p, q in zip(post, inline, strict=True) for a, b in zip(p[2:], q[2:], strict=True)) < 1e-6


def test_key_budget_cells_get_the_projector_distance_to_the_full_corpus(tmp_path: Path) -> None:
    """FastMEMIT's budget: a budgeted cell and a full-corpus cell at one threshold -> projector_distance rows."""
    cfg = _config(tmp_path, "n_edits=[10]", "methods=[alphaedit]", "probes.tasks=[]",
                  "hparams_overrides=[{mom2_n_samples: 100, v_num_grad_steps: 5, key_budget_multiplier: 1.0}, "
                  "{mom2_n_samples: 100, v_num_grad_steps: 5}]")
    ex = LocalExecutor()
    writer = start_writer(str(tmp_path / "r.duckdb"), ex)
    try:
        statuses = run_sweep(cfg, "budget", writer, ArtifactStore(tmp_path / "artifacts"), None, executor=ex)
        dist = _q(ex, writer, "SELECT run_id, metric, value, unit FROM v_metrics WHERE dataset = 'projector' "
                              "AND metric LIKE 'projector_distance.%' ORDER BY run_id, metric")
    finally:
        ex.get(ex.call(writer, "close"))
    assert sorted(statuses.values()) == ["finished", "finished"]
    layers = next(cfg.cells()).hparams().layers
    assert set(dist["run_id"].to_list()) == {rid for rid in statuses if rid.endswith("-h0")}  # the budgeted one only
    assert dist["metric"].to_list() == [f"projector_distance.layer{la}" for la in sorted(layers)]
    assert all(0.0 < v < 2.0 for v in dist["value"].to_list()) and set(dist["unit"].to_list()) == {"ratio"}
