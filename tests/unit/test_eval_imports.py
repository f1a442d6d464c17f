"""eval/ stays below storage/cluster: importing it loads no ray, no duckdb, and lm_eval only on use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_eval_imports_no_ray_duckdb_or_lm_eval() -> None:
    code = (
        "import sys, eval.datasets, eval.corpus, eval.rewrite, eval.generation, eval.probes, eval.edited, eval.rows\n"
        "bad = [m for m in ('ray', 'duckdb', 'lm_eval') if m in sys.modules]\n"
        "storage = sorted(m for m in sys.modules if m.startswith('storage.') and m != 'storage.names')\n"
        "assert not bad and not storage, (bad, storage)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
