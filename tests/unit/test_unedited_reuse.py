"""The unedited model's evaluation is computed once per key and reused: by the other cells of a sweep
and by later sweeps on the same artifact store; every cell's rows at 0 edits equal what a
single-cell sweep computes itself (in-process, the sweep's own code path: LocalExecutor)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import duckdb
import pytest

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.executor import LocalExecutor
from cluster.pipeline import run_sweep, start_writer
from cluster.plan import cell_data, eval_request, unedited_key
from storage.artifacts import ArtifactStore

FAST = ["batch_sizes=[10]", "eval_every=10", "n_edits=[10]", "probes.tasks=[toy_knowledge]", "probes.limit=4",
        "metrics.generation_records=0", "metrics.max_records=4", "metrics.drift_prompts=6", "stats_shards=1",
        "hparams_overrides=[{mom2_n_samples: 100, v_num_grad_steps: 5}]"]
COMPUTED, REUSED = "unedited evaluation computed", "unedited evaluation reused from"


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """One torch thread, as in a Ray worker with num_cpus=1 (tests/conftest.py)."""


def _sweep(tmp: Path, name: str, methods: str, store: str, caplog, on_existing: str = "resume"
           ) -> tuple[dict[str, list], list[str]]:
    """Run sweep ``name`` (results ``tmp/name.duckdb``, artifacts ``tmp/store``); its 0-edit rows per method
    and the log lines about the unedited evaluation."""
    db = tmp / f"{name}.duckdb"
    cfg = load_config(TOY_CONFIG_PATH, [*FAST, f"methods={methods}", f"results={db}", f"artifact_root={tmp / store}"])
    ex = LocalExecutor()
    writer = start_writer(str(db), ex)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cluster.pipeline"):
        try:
            statuses = run_sweep(cfg, name, writer, ArtifactStore(tmp / store), None, on_existing, executor=ex)
        finally:
            ex.get(ex.call(writer, "close"))
    assert set(statuses.values()) == {"finished"}, statuses
    lines = [r.getMessage() for r in caplog.records if "unedited evaluation" in r.getMessage()]
    con = duckdb.connect(str(db), read_only=True)
    out: dict[str, list] = {}
    for (method,) in con.execute("SELECT method FROM runs ORDER BY method").fetchall():
        q = {"metrics": "SELECT m.dataset, m.metric, m.value, m.n_cases FROM metrics m",
             "probes": "SELECT m.task, m.metric, m.value FROM probes m",
             "drift_points": "SELECT m.doc, m.x, m.y FROM drift_points m"}
        where = " JOIN runs r USING (run_id) WHERE r.method = ? AND m.edits_done = 0"
        out[method] = [con.execute(sql + where + (" AND m.dataset <> 'projector'" if table == "metrics" else "")
                                   + " ORDER BY ALL", [method]).fetchall() for table, sql in q.items()]
        steps = con.execute("SELECT count(*) FROM timings t JOIN runs r USING (run_id) WHERE r.method = ? AND "
                            "t.stage = 'rewrite_eval' AND t.step = 0", [method]).fetchone()
        assert steps == (1,), f"{method}: its rewrite_eval row at 0 edits (what --resume reads) is missing"
    out["_artifacts"] = con.execute("SELECT count(*) FROM artifacts WHERE kind = 'unedited_eval'").fetchall()
    out["_sha"] = con.execute("SELECT key, sha256 FROM artifacts WHERE kind = 'unedited_eval'").fetchall()
    con.close()
    return out, lines


def test_unedited_evaluation_is_computed_once_and_equals_a_single_cell_sweeps(tmp_path: Path, caplog) -> None:
    two, lines = _sweep(tmp_path, "two", "[alphaedit, memit]", "store-a", caplog)
    assert sum(COMPUTED in x for x in lines) == 1 and sum(REUSED in x for x in lines) == 1, lines
    assert two["_artifacts"] == [(1,)]
    one, lines_one = _sweep(tmp_path, "one", "[memit]", "store-b", caplog)  # a fresh store: computed by itself
    assert sum(COMPUTED in x for x in lines_one) == 1 and not any(REUSED in x for x in lines_one), lines_one
    metrics, probes, points = one["memit"]
    assert len(metrics) == 6 + 3 and len(probes) == 2 and len(points) == 6  # rewrite + drift; acc, acc_norm
    assert two["alphaedit"] == two["memit"] == one["memit"]  # exactly the same numbers
    # The stored bytes depend only on the key, not on which run computed them (alphaedit's cell in "two",
    # memit's in "one") nor on its timings: sweeps racing on one key agree, and storage.merge skips the copy.
    assert two["_sha"] == one["_sha"] and len(one["_sha"]) == 1
    # A later sweep on the first store computes nothing: its rows come from the stored evaluation.
    again, lines_again = _sweep(tmp_path, "again", "[alphaedit]", "store-a", caplog)
    assert not any(COMPUTED in x for x in lines_again), lines_again
    assert any(REUSED in x and "artifact store" in x for x in lines_again), lines_again
    assert again["alphaedit"] == one["memit"] and again["_artifacts"] == [(0,)]
    # --rerun replace: the cell's rows are deleted and written again, from the stored evaluation.
    replaced, lines_replaced = _sweep(tmp_path, "again", "[alphaedit]", "store-a", caplog, on_existing="replace")
    assert not any(COMPUTED in x for x in lines_replaced) and any(REUSED in x for x in lines_replaced)
    assert replaced["alphaedit"] == one["memit"]


def test_rows_codec_keeps_floats_exactly_and_non_finite_values(tmp_path: Path) -> None:
    from storage.artifacts import ROWS, UneditedEvalKey

    key = UneditedEvalKey(model_id="m", revision="r", dataset="counterfact", records="0" * 64, n_records=1,
                          generation_records=0, seed=0, snippets=None, tfidf=None, zsre_answer_tokens="clean",
                          probe_tasks=("toy_knowledge", {"task": "t", "limit": 2}), probe_limit=4,
                          probe_batch_size=8, drift_corpus=None, drift_layer=None, device="cpu", dtype="float32",
                          code="c")
    value = {"metrics": [{"value": 0.1 + 0.2, "n_cases": None}, {"value": float("nan")}, {"value": -0.0}],
             "probes": [{"value": 1 / 3}]}
    store = ArtifactStore(tmp_path)
    store.put(key, value, ROWS)
    got = store.get(key, ROWS)
    assert got["metrics"][0]["value"] == 0.1 + 0.2 and got["probes"][0]["value"] == 1 / 3
    assert got["metrics"][1]["value"] != got["metrics"][1]["value"]  # NaN stays NaN
    assert str(got["metrics"][2]["value"]) == "-0.0"


def test_unedited_key_names_what_changes_the_numbers(tmp_path: Path) -> None:
    def key(*extra: str, cell_change: dict | None = None, device: str = "cpu"):
        cfg = load_config(TOY_CONFIG_PATH, [*FAST, "methods=[memit]", f"artifact_root={tmp_path}", *extra])
        cell = next(cfg.cells())
        if cell_change:
            cell = dataclasses.replace(cell, **cell_change)
        req = eval_request(cfg, cell, "any-run-id", cell_data(cell), 0)
        return unedited_key(cell.model, req, device).digest()

    base = key()
    assert key("methods=[alphaedit]") == base  # the method does not enter an unedited evaluation
    assert key("seeds=[3]") == base  # no generation records: the seed changes nothing
    for changed in (key("metrics.max_records=3"), key("metrics.drift_prompts=5"), key("probes.limit=3"),
                    key("probes.tasks=[]"), key("metrics.generation_records=2"), key(device="cuda"),
                    key("metrics.max_records=null", cell_change={"n_edits": 20})):
        assert changed != base
    assert key("metrics.generation_records=2", "seeds=[3]") != key("metrics.generation_records=2")
    assert key("metrics.drift_prompts=0", "metrics.max_records=3") == key("metrics.drift_prompts=0",
                                                                          "metrics.max_records=3")
