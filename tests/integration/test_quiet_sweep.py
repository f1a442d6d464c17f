"""A normal sweep's stderr (its job log) on a real local Ray: no Ray ERROR line, and the progress bars.

Issue 20, item 4: every sweep log carried core_worker's ``Actor editor:... has constructor
arguments in the object store and max_restarts > 0`` ERROR. The editor actor now takes artifact
keys and reads its statistics and projectors from the store, so the line must not appear, while
the bars of key statistics, edit batches and evaluations must.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import TOY_CONFIG_PATH

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SETS = ["methods=[alphaedit]", "n_edits=[20]", "batch_sizes=[10]", "eval_every=20", "editor_max_restarts=2",
        "probes.tasks=[toy_knowledge]", "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4",
        "stats_shards=2", "hparams_overrides=[{mom2_n_samples: 60, v_num_grad_steps: 5}]"]
RAY_ERROR = re.compile(r"^\[[^\]]*\sE\s[^\]]*\]|\bERROR\b.*core_worker|core_worker\.cc.*\bE\b")


def test_a_normal_sweep_logs_no_ray_error_and_shows_its_bars(tmp_path: Path) -> None:
    sets = [*SETS, f"results={tmp_path / 'r.duckdb'}", f"artifact_root={tmp_path / 'art'}", "sweep_id=quiet"]
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(TOY_CONFIG_PATH), "--address", "local",
           "--num-cpus", "2", *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    log = out.stderr
    assert "constructor arguments" not in log + out.stdout, log[-4000:]
    ray_errors = [line for line in log.splitlines() if "core_worker" in line and RAY_ERROR.search(line)]
    assert ray_errors == [], ray_errors
    for bar in ("key statistics: 100%", "edit batches: 100%", "evaluations (rewrite metrics + probes): 100%"):
        assert bar in log, (bar, log[-4000:])
    assert "2/2 [" in log.split("key statistics: 100%")[1][:60]  # the two shard tasks
