"""The sweep end to end: a real Ray head, `ray job submit`, a real DuckDB file."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from alphaedit import hparams_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_head(temp_dir: str, timeout_s: float = 30.0) -> int:
    """Stop the Ray head started with ``--temp-dir temp_dir`` and only it; return the processes stopped.

    ``ray stop`` would stop every Ray instance on the machine (another user's sweep, a parallel test
    session); the head's own processes carry ``temp_dir`` in their command lines, and its workers and
    agents are their children.
    """
    import psutil

    def is_own(cmdline: list[str]) -> bool:  # a Ray program (binary or module) of this head's session
        return (any(f"{temp_dir}/session" in a for a in cmdline)
                and any("/ray/" in a or a.endswith(("raylet", "gcs_server")) for a in cmdline[:3]))

    own = [p for p in psutil.process_iter(["cmdline"]) if is_own(p.info["cmdline"] or [])]
    tree = set(own)
    for p in own:
        with contextlib.suppress(psutil.Error):
            tree.update(p.children(recursive=True))
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(tree), timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(tree)


@pytest.fixture(scope="module")
def ray_head():
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    dport = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(_free_port()),
                        "--dashboard-port", str(dport), "--include-dashboard", "true", "--disable-usage-stats",
                        # its own agent port: the default (52365) may be held by another Ray on this machine,
                        # and then the head has no job agent ("No available agent to submit job")
                        "--dashboard-agent-listen-port", str(_free_port()),
                        "--temp-dir", temp_dir], env=env, check=True, timeout=180, capture_output=True)
        yield f"http://127.0.0.1:{dport}", env
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(address: str, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           "python", "-m", "jobs.sweep", "--config", "jobs/configs/toy.yaml", *[a for o in overrides for a in ("--set", o)]]
    for _ in range(12):  # a fresh head's job agent registers after the dashboard answers (slow on a busy host)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in out.stderr + out.stdout:
            return out
        time.sleep(5)
    return out


def test_ray_job_submit_sweep_writes_every_number_once(ray_head, tmp_path: Path) -> None:
    import duckdb

    address, env = ray_head
    db = tmp_path / "results.duckdb"
    overrides = ("n_edits=[20]", "batch_sizes=[10]", "eval_every=10", "probes.limit=20",
                 "metrics.generation_records=2", f"results={db}", f"artifact_root={tmp_path / 'artifacts'}")
    first = _submit(address, env, *overrides)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "key statistics of layers [0, 1, 2] reused" in first.stdout + first.stderr, "second cell must reuse stats"

    def counts() -> dict[str, int]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            out = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in ("runs", "metrics", "probes", "timings", "artifacts")}
            out["finished"] = con.execute("SELECT count(*) FROM runs WHERE status = 'finished'").fetchone()[0]
            out["stats_artifacts"] = con.execute(
                "SELECT count(*) FROM artifacts WHERE kind = 'key_stats'").fetchone()[0]
            out["projector_artifacts"] = con.execute(
                "SELECT count(*) FROM artifacts WHERE kind = 'projector'").fetchone()[0]
            out["dupes"] = con.execute(
                "SELECT count(*) FROM (SELECT run_id, edits_done, dataset, metric FROM metrics "
                "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
            out["edits_done"] = sorted(r[0] for r in con.execute("SELECT DISTINCT edits_done FROM metrics").fetchall())
            out["post_efficacy_rows"] = con.execute(
                "SELECT count(*) FROM metrics WHERE metric = 'efficacy' AND edits_done = 20").fetchone()[0]
            return out
        finally:
            con.close()

    c1 = counts()
    assert c1["runs"] == 2 and c1["finished"] == 2 and c1["dupes"] == 0
    assert c1["edits_done"] == [0, 10, 20] and c1["post_efficacy_rows"] == 2
    layers = len(hparams_for("toy", "alphaedit").layers)
    # 2 runs x 3 checkpoints x (6 probability + fluency + consistency), plus AlphaEdit's projector kept
    # fraction per edited layer (dataset 'projector'; MEMIT has no projector)
    assert c1["metrics"] == 2 * 3 * 8 + layers
    assert c1["probes"] == 2 * 3 * 3  # toy_knowledge acc/acc_norm + toy_acceptability acc
    from alphaedit import preset

    assert c1["stats_artifacts"] == len(preset("toy").layers)  # key statistics of each edited layer, stored once
    assert c1["projector_artifacts"] == len(preset("toy").layers)  # AlphaEdit's P per layer (MEMIT needs none)
    # + the kept editor checkpoints (10, 20 edits) per run + the unedited evaluation, computed once for both
    assert c1["artifacts"] == c1["stats_artifacts"] + c1["projector_artifacts"] + 2 * 2 + 1
    assert "unedited evaluation reused from" in first.stdout + first.stderr, "the second cell must reuse it"

    again = _submit(address, env, *overrides)  # same sweep again: finished cells are skipped
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "0 to run" in again.stdout + again.stderr
    assert counts() == c1
