"""SIGINT/SIGTERM/SIGKILL to a ``jobs.sweep`` driver on a local Ray, then ``--resume`` (issue 18b).

SIGINT/SIGTERM: the driver stops its cell at the next batch boundary, marks it ``interrupted``, shuts
down the local Ray it started, exits 130/143 and prints one line with the ``--resume`` command.
SIGKILL: the driver cannot react; the watchdog it started with its local Ray (cluster/watchdog.py)
stops every process of that Ray session (GCS, raylet, dashboard/runtime-env agents, workers). Either
way ``--resume`` then finishes the cell.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.watchdog import session_processes
from cluster.workers import checkpoint_key
from storage.artifacts import ArtifactStore
from storage.hashing import config_hash
from tests.faults.table import shown

pytestmark = [pytest.mark.integration, pytest.mark.faults]

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


def _ray_session_dir(driver_pid: int) -> str | None:
    """The session folder of the local Ray that ``driver_pid`` started (Ray names it ..._<pid>)."""
    pattern = re.compile(rf"(/[^ =]*/session_[\d_-]+_{driver_pid})(?=/|$)")
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info["cmdline"] or ():
            m = pattern.search(arg)
            if m:
                return m.group(1)
    return None


def _status(db: Path) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT status, attempts FROM runs").fetchall()
    finally:
        con.close()


def _rows(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in ("runs", "metrics", "probes", "timings", "artifacts"))
    finally:
        con.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_signal_then_resume_finishes(tmp_path: Path, sig: signal.Signals, observations) -> None:
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
    session = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while not store.exists(first) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and store.exists(first), (tmp_path / "driver.err").read_text()[-3000:]
        session = _ray_session_dir(proc.pid)
        assert session, "the driver's local Ray session is running"
        tree = session_processes(session)  # GCS, raylet, agents, workers (their titles no longer name the session)
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        err.close()
    stderr = (tmp_path / "driver.err").read_text()
    deadline = time.monotonic() + 60
    def left() -> list[str]:
        out = []
        for p in {p.pid: p for p in [*tree, *session_processes(session)]}.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            except psutil.NoSuchProcess:
                continue
        return out

    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    still = left()
    rows_after_fault = _rows(tmp_path / "r.duckdb")
    observations.append({"case": f"{sig.name} then --resume", "input": f"kill -{sig.name[3:]} <driver> after 10 of 40 edits",
                         "exit": rc, "first_line": shown((stderr.strip().splitlines() or [""])[-1], tmp_path)
                         if sig != signal.SIGKILL else "(killed: nothing printed)",
                         "rows_before": rows_after_fault, "rows_after": None})
    assert len(tree) >= 3 and not still, f"processes of the driver's Ray session {session} still running: {still}"
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        assert _status(tmp_path / "r.duckdb") == [("running", 1)]
        resume = ["python", "-m", "jobs.sweep", *cmd[3:], "--resume", "sig"]
    else:
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
    observations[-1]["rows_after"] = _rows(tmp_path / "r.duckdb")
    observations[-1]["input"] += f"; then --resume: exit {done.returncode}"
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed at" in done.stderr, done.stderr[-3000:]
    assert _status(tmp_path / "r.duckdb") == [("finished", 2)]


def test_a_stop_during_the_statistics_cancels_them(tmp_path: Path, observations) -> None:
    """SIGINT while the key-statistics shard task runs: it is cancelled (nothing merged or stored), the cell
    is marked interrupted and the driver exits 130 with the --resume line, without waiting for the statistics."""
    sets = [*FAST[:-1], "hparams_overrides=[{mom2_n_samples: 100000}]", f"results={tmp_path / 'r.duckdb'}",
            f"artifact_root={tmp_path / 'art'}", "sweep_id=stats"]
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(TOY_CONFIG_PATH), "--address", "local",
           "--num-cpus", "2", *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline, shard = time.monotonic() + TIMEOUT, None
        while shard is None and proc.poll() is None and time.monotonic() < deadline:
            session = _ray_session_dir(proc.pid)
            shard = next((p for p in session_processes(session) if "corpus_shard_stats" in " ".join(p.cmdline())),
                         None) if session else None
            time.sleep(0.05)
        assert shard is not None, "the statistics shard task never started"
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = stderr.strip().splitlines()[-1]
    observations.append({"case": "SIGINT during the statistics", "input": "kill -INT <driver> while the shard "
                         "task runs", "exit": proc.returncode, "first_line": shown(last, tmp_path),
                         "rows_before": None, "rows_after": _rows(tmp_path / "r.duckdb")})
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert last.startswith("interrupted by SIGINT: 1 cell(s)") and last.endswith("--resume stats"), last
    assert _status(tmp_path / "r.duckdb") == [("interrupted", 1)]
    assert not [p for p in (tmp_path / "art" / "key_stats").rglob("*") if p.is_file()], "no statistics stored"
    assert not shard.is_running() or shard.status() == psutil.STATUS_ZOMBIE, "the shard task was stopped"
