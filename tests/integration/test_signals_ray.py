"""SIGINT/SIGTERM to a ``jobs.sweep`` driver on a local Ray (issue 18b).

The driver stops its cell at the next batch boundary, marks it ``interrupted``, shuts down the
local Ray it started (nothing of its session is left running), exits 130/143 and prints one line
with the ``--resume`` command; that command then finishes the cell.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.workers import checkpoint_key
from storage.artifacts import ArtifactStore
from storage.hashing import config_hash

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
FAST = ["methods=[memit]", "n_edits=[40]", "batch_sizes=[10]", "eval_every=40", "checkpoint_every=1",
        "probes.tasks=[toy_knowledge]", "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4",
        "stats_shards=1", "hparams_overrides=[{mom2_n_samples: 60, v_num_grad_steps: 5}]"]


def _session_pids(sid: int) -> list[int]:
    out = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) == sid:
                out.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _status(db: Path) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT status, attempts FROM runs").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_at_a_batch_boundary_and_resume_finishes(tmp_path: Path, sig: signal.Signals) -> None:
    sets = [*FAST, f"results={tmp_path / 'r.duckdb'}", f"artifact_root={tmp_path / 'art'}", "sweep_id=sig"]
    cfg = load_config(TOY_CONFIG_PATH, sets)
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(TOY_CONFIG_PATH), "--address", "local",
           "--num-cpus", "2", *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cell = next(cfg.cells())
    first = checkpoint_key(cell.run_id("sig"), config_hash(cell.config()), 10)
    store = ArtifactStore(tmp_path / "art")
    err = (tmp_path / "driver.err").open("w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not store.exists(first) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and store.exists(first), (tmp_path / "driver.err").read_text()[-3000:]
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        err.close()
    stderr = (tmp_path / "driver.err").read_text()
    assert rc == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {sig.name}: 1 cell(s) stopped at a batch boundary"), last
    assert last.endswith("--resume sig"), last
    time.sleep(2.0)
    assert not _session_pids(proc.pid), "the driver's local Ray must be stopped"
    assert _status(tmp_path / "r.duckdb") == [("interrupted", 1)]

    resume = shlex.split(last.split("resume with: ", 1)[1])
    assert resume[:3] == ["python", "-m", "jobs.sweep"]
    done = subprocess.run([sys.executable, *resume[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed at" in done.stderr, done.stderr[-3000:]
    assert _status(tmp_path / "r.duckdb") == [("finished", 2)]
