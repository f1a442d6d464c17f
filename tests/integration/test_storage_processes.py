"""Storage across processes: a writer killed mid-write, and readers locked out by a live writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.query import main as query_main
from storage.reader import ResultsReader
from storage.sql import ResultsLockedError
from storage.writer import ResultWriter, RunSpec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROWS_PER_TXN = 20_000

WRITE_LOOP = textwrap.dedent(
    f"""
    import sys, time
    import polars as pl
    from storage.writer import ResultWriter, RunSpec

    K = {ROWS_PER_TXN}
    w = ResultWriter(sys.argv[1])
    w.register_run(RunSpec("r", "s", "toy", "alphaedit", "counterfact", 1, 10**6, 0, {{}}))
    metric_names = [f"m{{i}}" for i in range(K)]
    for t in range(10**6):
        metrics = pl.DataFrame({{"run_id": "r", "edits_done": t, "dataset": "counterfact",
                                 "metric": metric_names, "value": float(t)}})
        timings = [{{"run_id": "r", "stage": "edit_batch", "step": t, "seconds": 0.1, "items": K}}]
        print("begin", t, time.monotonic(), flush=True)
        w.write(metrics=metrics, timings=timings)   # one transaction over two tables
        print("commit", t, time.monotonic(), flush=True)
    """
)

HOLD_OPEN = textwrap.dedent(
    """
    import sys, time
    from storage.writer import ResultWriter, RunSpec
    w = ResultWriter(sys.argv[1])
    w.register_run(RunSpec("r", "s", "toy", "alphaedit", "counterfact", 1, 10, 0, {}))
    print("ready", flush=True)
    time.sleep(60)
    """
)


def spawn(code: str, db: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=env,
    )


def read_until(proc: subprocess.Popen, wanted: str) -> list[str]:
    """Lines of ``proc``'s stdout up to the first that starts with ``wanted``."""
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(5)
            raise AssertionError(f"child exited early (rc {proc.returncode}): {proc.stderr.read()}")
        lines.append(line.strip())
        if line.strip().startswith(wanted):
            return lines


def txn_seconds(lines: list[str]) -> float:
    """Median duration of the committed transactions, from the child's monotonic timestamps."""
    begins = {ln.split()[1]: float(ln.split()[2]) for ln in lines if ln.startswith("begin")}
    spans = sorted(float(ln.split()[2]) - begins[ln.split()[1]] for ln in lines if ln.startswith("commit"))
    return spans[len(spans) // 2]


@pytest.mark.parametrize("kill_at, fraction", [(3, 0.5), (4, 0.8), (5, 0.95)])
def test_writer_killed_mid_transaction_leaves_only_whole_transactions(tmp_path, kill_at, fraction):
    db = tmp_path / "results.duckdb"
    proc = spawn(WRITE_LOOP, db)
    try:
        lines = read_until(proc, f"begin {kill_at} ")
        # kill at `fraction` of a typical transaction: inside the INSERTs of transaction `kill_at`
        began = float(lines[-1].split()[2])
        time.sleep(max(0.0, began + fraction * txn_seconds(lines) - time.monotonic()))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = sum(1 for line in lines if line.startswith("commit"))
    assert committed == kill_at

    with ResultsReader(db) as r:  # opens (replaying the WAL) without error
        per_txn = r.sql("SELECT edits_done, count(*) AS n FROM metrics GROUP BY 1 ORDER BY 1").rows()
        steps = r.sql("SELECT step FROM timings ORDER BY 1")["step"].to_list()
    done = [t for t, _ in per_txn]
    assert all(n == ROWS_PER_TXN for _, n in per_txn), f"a partial transaction survived: {per_txn}"
    assert done == steps, "metrics and timings of one transaction must land together"
    # every acknowledged commit survived; the one in flight is either whole or absent
    assert done in (list(range(kill_at)), list(range(kill_at + 1)))

    with ResultWriter(db) as w:  # and the file is writable again
        w.write_timings([{"run_id": "r", "stage": "after_crash", "seconds": 1.0}])
        assert w.query("SELECT count(*) AS n FROM timings WHERE stage = 'after_crash'")["n"][0] == 1


def test_reader_explains_a_held_lock_and_how_to_get_a_snapshot(tmp_path, capsys):
    db = tmp_path / "results.duckdb"
    proc = spawn(HOLD_OPEN, db)
    try:
        read_until(proc, "ready")
        with pytest.raises(ResultsLockedError) as err:
            ResultsReader(db)
        msg = str(err.value)
        assert str(db) in msg and "snapshot" in msg and "ResultWriter.query" in msg
        assert "Could not set lock" in msg  # DuckDB's own words stay visible

        assert query_main(["--db", str(db), "run_status"]) == 1
        assert "snapshot" in capsys.readouterr().err

        with pytest.raises(ResultsLockedError, match="Only one ResultWriter"):
            ResultWriter(db)
    finally:
        proc.kill()
        proc.wait()
    with ResultsReader(db) as r:  # the writer is gone: reading works (its WAL is replayed)
        assert r.runs()["run_id"].to_list() == ["r"]


def test_snapshot_taken_by_live_writer_is_readable_from_another_process(tmp_path):
    db, snap = tmp_path / "results.duckdb", tmp_path / "snap.duckdb"
    with ResultWriter(db) as w:
        w.register_run(RunSpec("r", "s", "toy", "alphaedit", "counterfact", 1, 10, 0, {}))
        w.snapshot(snap)
        out = subprocess.run(
            [sys.executable, "-m", "storage.query", "--db", str(snap), "--sql", "SELECT run_id FROM runs"],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
        )
    assert out.returncode == 0, out.stderr
    assert "r" in out.stdout


def test_importing_storage_loads_no_ray_torch_lm_eval_or_duckdb():
    code = (
        "import sys\n"
        "import storage, storage.names, storage.schema, storage.writer, storage.reader, storage.artifacts\n"
        "import storage.query, storage.export, storage.queries\n"
        "bad = [m for m in ('ray', 'torch', 'lm_eval', 'duckdb') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
