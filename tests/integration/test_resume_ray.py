"""Resume on Ray: a killed editor actor and a killed driver both end where an uninterrupted run ends.

One uninterrupted reference run (AlphaEdit, 30 toy-world edits in batches of 10, evaluated at 0,
20 and 30 edits, a checkpoint after every batch) is compared with
* a run whose editor actor is killed (``ray.kill(actor, no_restart=False)``) after its first
  batch: Ray restarts it and the cell resumes from the newest checkpoint;
* a ``jobs/sweep.py`` driver killed with SIGKILL after two batches are checkpointed, then
  continued with ``jobs/sweep.py --resume SWEEP_ID``.
Equality is bitwise: final deltas, edited weights and Σ Kp Kpᵀ, every metric and probe value
(CPU, fixed seeds, one thread per Ray worker). No row is duplicated or lost.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch

from cluster.config import TOY_CONFIG_PATH, SweepConfig, load_config
from cluster.workers import checkpoint_codec, checkpoint_key
from storage.artifacts import ArtifactStore
from storage.hashing import config_hash

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
FAST = ["methods=[alphaedit]", "n_edits=[30]", "batch_sizes=[10]", "eval_every=20", "checkpoint_every=1",
        "probes.tasks=[toy_knowledge]", "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4",
        "stats_shards=1", "hparams_overrides=[{mom2_n_samples: 100, v_num_grad_steps: 5}]"]
METRICS = "SELECT edits_done, dataset, metric, value, n_cases FROM metrics ORDER BY ALL"
PROBES = "SELECT edits_done, task, metric, value FROM probes ORDER BY ALL"
TIMINGS = ("SELECT stage, step FROM timings WHERE stage NOT IN ('key_stats', 'projector') "  # computed once
           "ORDER BY ALL")


def _config(tmp: Path, db: str) -> tuple[list[str], SweepConfig]:
    sets = [*FAST, f"results={tmp / db}", f"artifact_root={tmp / 'artifacts'}"]
    return sets, load_config(TOY_CONFIG_PATH, sets)


@dataclass
class Results:
    metrics: pl.DataFrame
    probes: pl.DataFrame
    timings: pl.DataFrame
    runs: pl.DataFrame


def _results_from(query) -> Results:
    return Results(query(METRICS), query(PROBES), query(TIMINGS),
                   query("SELECT run_id, status, error, attempts FROM runs"))


def _final_state(tmp: Path, cfg: SweepConfig, sweep_id: str):
    cell = next(cfg.cells())
    key = checkpoint_key(cell.run_id(sweep_id), config_hash(cell.config()), cell.n_edits)
    return ArtifactStore(tmp / "artifacts").get(key, checkpoint_codec())


def _assert_same_as_reference(got: Results, ref: Results, tmp: Path, cfg: SweepConfig, sweep_id: str) -> None:
    assert got.runs["status"].to_list() == ["finished"], got.runs
    assert got.metrics.height == ref.metrics.height and got.metrics.equals(ref.metrics), "metrics differ"
    assert got.probes.equals(ref.probes), "probes differ"
    assert got.timings.equals(ref.timings), "timing rows lost or added"
    assert got.metrics.select("edits_done", "dataset", "metric").is_duplicated().sum() == 0
    a, xa = _final_state(tmp, cfg, "ref")
    b, xb = _final_state(tmp, cfg, sweep_id)
    assert a.n_edits == b.n_edits == 30 and a.case_ids == b.case_ids
    for name in a.deltas:
        assert torch.equal(a.deltas[name], b.deltas[name]), f"delta {name} differs"
        assert torch.equal(xa[f"weight.{name}"], xb[f"weight.{name}"]), f"weight {name} differs"
    for layer in a.prev_keys:
        assert torch.equal(a.prev_keys[layer], b.prev_keys[layer]), f"prev_keys {layer} differ"


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_in_process(ray, tmp: Path, sweep_id: str, on_progress=lambda msg: None) -> tuple[dict, Results]:
    from cluster.executor import RayExecutor
    from cluster.pipeline import run_sweep, start_writer

    _, cfg = _config(tmp, f"{sweep_id}.duckdb")
    ex = RayExecutor()
    writer = start_writer(str(tmp / f"{sweep_id}.duckdb"), ex)
    try:
        statuses = run_sweep(cfg, sweep_id, writer, ArtifactStore(tmp / "artifacts"), None, executor=ex,
                             on_progress=on_progress)
        results = _results_from(lambda sql: ray.get(writer.query.remote(sql), timeout=TIMEOUT))
    finally:
        ray.get(writer.close.remote(), timeout=60)
        ray.kill(writer)
    return statuses, results


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory) -> tuple[Path, SweepConfig, Results]:
    tmp = tmp_path_factory.mktemp("resume")
    statuses, results = _run_in_process(ray_session, tmp, "ref")
    assert list(statuses.values()) == ["finished"]
    assert results.metrics["edits_done"].unique().sort().to_list() == [0, 20, 30]
    return tmp, _config(tmp, "ref.duckdb")[1], results


def test_killed_editor_actor_restarts_and_resumes_bit_identical(ray_session, reference, caplog) -> None:
    from cluster.pipeline import editor_actor_name

    tmp, cfg, ref = reference
    ray = ray_session
    killed: list[str] = []

    def kill_after_first_batch(msg: str) -> None:
        if not killed and msg.endswith(" 10/30 edits"):
            ray.kill(ray.get_actor(editor_actor_name("actor", "toy-gpt2")), no_restart=False)
            killed.append(msg)

    with caplog.at_level(logging.WARNING, logger="cluster.pipeline"):
        statuses, got = _run_in_process(ray, tmp, "actor", kill_after_first_batch)
    assert killed, "the editor was never killed"
    assert "editor actor died after 10 confirmed edits" in caplog.text, caplog.text[-2000:]
    assert list(statuses.values()) == ["finished"]
    assert got.runs["attempts"].to_list() == [1]
    _assert_same_as_reference(got, ref, tmp, cfg, "actor")


def _kill_session(pgid: int) -> None:
    """SIGKILL whatever is left of the session the driver led (its local Ray)."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) == pgid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def test_killed_driver_resumes_with_resume_flag(reference) -> None:
    import duckdb

    tmp, cfg, ref = reference
    sets, _ = _config(tmp, "driver.duckdb")
    cmd = [sys.executable, str(REPO / "jobs" / "sweep.py"), "--config", str(TOY_CONFIG_PATH), "--address", "local", "--num-cpus", "2",
           *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cell = next(cfg.cells())
    recorded = checkpoint_key(cell.run_id("driver"), config_hash(cell.config()), 20)
    store = ArtifactStore(tmp / "artifacts")
    log = (tmp / "driver-1.log").open("w")
    proc = subprocess.Popen([*cmd, "--set", "sweep_id=driver"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not store.exists(recorded) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the driver ended before it was killed: {(tmp / 'driver-1.log').read_text()[-3000:]}"
        assert store.exists(recorded), "no checkpoint after 2 batches within the timeout"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _kill_session(proc.pid)
        log.close()
    time.sleep(1.0)  # let the killed writer's file lock go

    con = duckdb.connect(str(tmp / "driver.duckdb"), read_only=True)
    try:
        status = con.execute("SELECT status FROM runs").fetchall()
    finally:
        con.close()
    assert status == [("running",)], f"the driver must have died mid-cell, runs say {status}"

    resumed = subprocess.run([*cmd, "--resume", "driver"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=TIMEOUT, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed at" in resumed.stderr, resumed.stderr[-3000:]

    con = duckdb.connect(str(tmp / "driver.duckdb"), read_only=True)
    try:
        got = _results_from(lambda sql: con.sql(sql).pl())
    finally:
        con.close()
    assert got.runs["attempts"].to_list() == [2]
    _assert_same_as_reference(got, ref, tmp, cfg, "driver")
