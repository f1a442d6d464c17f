"""Live results: `python -m storage.query` (with and without `--live`) and `python -m jobs.report` on a
file that a running sweep's writer actor holds.

A sweep-like driver (jobs.sweep.ray_outputs on a real local Ray: the named writer actor and the
published <db>.live.json) holds the results file; other processes query it through storage.query.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import live
from storage.reader import ResultsReader
from storage.sql import ResultsLockedError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import sys
    import ray
    from cluster.config import load_config
    from jobs.sweep import ray_outputs
    from storage.writer import RunSpec

    db, artifacts = sys.argv[1], sys.argv[2]
    cfg = load_config("jobs/configs/toy.yaml", [f"results={db}", f"artifact_root={artifacts}"])
    rows = lambda e: [{"run_id": "r-live", "edits_done": e, "dataset": "counterfact", "metric": "efficacy",
                       "value": 50.0 + e}]
    with ray_outputs(cfg, "local", 1) as (results, writer, store):
        ray.get(writer.register_runs.remote([RunSpec("r-live", "s-live", "toy", "alphaedit", "counterfact", 1, 10, 0, {})]),
                timeout=120)
        ray.get(writer.write.remote(metrics=rows(1)), timeout=120)
        print("ready", ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.readline()
        ray.get(writer.write.remote(metrics=rows(2)), timeout=120)
        print("wrote", flush=True)
        sys.stdin.readline()
    print("closed", flush=True)
    """
)


SECOND_WRITER = textwrap.dedent(
    """
    import sys
    import ray
    import cluster.pipeline as pipeline
    from cluster.executor import RayExecutor

    pipeline.WRITER_NAME_WAIT_S = 2.0
    ray.init(address=sys.argv[2], log_to_driver=False)
    try:
        pipeline.start_writer(sys.argv[1], RayExecutor())
        print("started")
    except RuntimeError as e:
        print("refused:", e)
    ray.shutdown()
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), **extra}


def _query(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storage.query", "--db", str(db), *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=240)


def _line(proc: subprocess.Popen, wanted: str) -> str:
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise AssertionError(f"driver exited (rc {proc.returncode}) before {wanted!r}: {proc.stderr.read()[-3000:]}")
        if line.startswith(wanted):
            return line.strip()


def test_storage_query_reads_a_running_sweep_through_its_writer(tmp_path):
    db = tmp_path / "results.duckdb"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(db), str(tmp_path / "artifacts")], cwd=ROOT,
                              env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        address = _line(driver, "ready").split()[1]
        with pytest.raises(ResultsLockedError):  # the file really is held
            ResultsReader(db)
        assert live.published(db)["address"] == address
        assert live.published(db)["actor"] == live.writer_actor_name(db)

        got = _query(db, "run_status")  # no RAY_ADDRESS: the address the sweep published
        assert got.returncode == 0, got.stderr
        assert "r-live" in got.stdout and "running sweep" in got.stderr
        explicit = _query(db, "--live", "run_status")  # --live: straight to the writer
        assert explicit.returncode == 0, explicit.stderr
        assert "r-live" in explicit.stdout and "running sweep" not in explicit.stderr

        report = subprocess.run([sys.executable, "-m", "jobs.report", "--db", str(db), "--out", str(tmp_path / "rep")],
                                cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
        assert report.returncode == 0, report.stderr[-3000:]  # a snapshot taken by the running sweep's writer
        page = (tmp_path / "rep" / "index.html").read_text()
        assert "Live: a snapshot of" in page and "r-live" in page
        assert not list(tmp_path.glob("rep/*.duckdb")) and live.published(db) is not None  # the copy is gone

        rejected = _query(db, "--sql", "DELETE FROM runs")  # the reader's guard, before any connection
        assert rejected.returncode == 1 and "only read-only queries" in rejected.stderr
        outside = tmp_path / "outside.csv"
        outside.write_text("a\n1\n")
        no_files = _query(db, "--sql", f"SELECT * FROM read_csv('{outside}')")  # file access off in the writer too
        assert no_files.returncode == 1 and "disabled" in no_files.stderr.lower(), no_files.stderr

        second = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(db), address], cwd=ROOT, env=_env(),
                                capture_output=True, text=True, timeout=240)  # another job, same file, same cluster
        assert "refused: another sweep on this Ray cluster is writing" in second.stdout, second.stdout + second.stderr[-2000:]

        dead = _query(db, "run_status", RAY_ADDRESS="127.0.0.1:1")  # RAY_ADDRESS wins over the published one
        assert dead.returncode == 1 and "no Ray cluster answers at 127.0.0.1:1" in dead.stderr

        driver.stdin.write("go\n")
        driver.stdin.flush()
        _line(driver, "wrote")
        count = _query(db, "--address", address, "--sql", "SELECT count(*) AS n FROM metrics WHERE run_id = 'r-live'",
                       RAY_ADDRESS="127.0.0.1:1")  # --address wins over RAY_ADDRESS; a write made since is seen
        assert count.returncode == 0, count.stderr
        assert count.stdout.split("╞")[1].split("│")[1].strip() == "2"

        driver.stdin.write("go\n")
        driver.stdin.flush()
        _line(driver, "closed")
        assert driver.wait(120) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
    assert live.published(db) is None  # the sweep's end removes the published address
    with ResultsReader(db) as r:  # and frees the file: the same rows, read directly
        assert r.sql("SELECT count(*) AS n FROM metrics")["n"][0] == 2
    direct = _query(db, "run_status")
    assert direct.returncode == 0 and "r-live" in direct.stdout and "running sweep" not in direct.stderr
    gone = _query(db, "--live", "run_status")  # --live with no running sweep: one line, exit 2
    assert gone.returncode == 2 and gone.stdout == "", gone.stdout + gone.stderr
    assert gone.stderr.strip().splitlines() == [gone.stderr.strip()], gone.stderr
    assert gone.stderr.startswith("error: --live: no running sweep publishes a writer for"), gone.stderr
    assert _query(db, "--live", "--address", "127.0.0.1:1", "run_status").returncode == 2  # no cluster there
