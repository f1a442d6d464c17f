"""jobs/stats.py computes a config's key statistics once; the second run finds them cached."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.integration


def test_stats_job_computes_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.config import TOY_CONFIG_PATH
    from jobs.stats import main

    argv = ["--config", str(TOY_CONFIG_PATH), "--address", "local", "--num-cpus", "2",
            "--set", f"results={tmp_path / 'r.duckdb'}", "--set", f"artifact_root={tmp_path / 'artifacts'}",
            "--set", "hparams_overrides=[{mom2_n_samples: 120}]", "--set", "stats_shards=2"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "computed" in first and "cached" not in first, first
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "cached" in second and "computed" not in second, second
    assert second.count("null-space projectors") == 1 and "rank/d_k" in second, second
    # statistics and AlphaEdit's projector per edited layer (toy preset: layers 0, 1, 2), recorded once
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT kind, count(*) FROM artifacts GROUP BY kind ORDER BY kind").fetchall()
    assert rows == [("key_stats", 3), ("projector", 3)], rows
    assert len(list((tmp_path / "artifacts").rglob("*.safetensors"))) == 6
