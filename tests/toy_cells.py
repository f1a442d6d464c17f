"""One tiny toy-world cell run in-process (LocalExecutor, a real DuckDB writer), for tests that check
how a cell ends: its statuses, its runs row and the evaluation points it kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_tiny_toy_cell(tmp_path: Path, method: str, hparams: str) -> tuple[dict[str, str], tuple[Any, Any], list[int]]:
    """Run a 10-edit, one-batch ``method`` cell of the toy config with ``hparams`` (a YAML mapping's
    body, e.g. ``"v_lr: 1.0e+30"``) added to a small statistics sample; returns the sweep's statuses,
    the cell's (status, error) and the edits_done of its CounterFact rows."""
    from cluster.config import TOY_CONFIG_PATH, load_config
    from cluster.executor import LocalExecutor
    from cluster.pipeline import run_sweep, start_writer
    from storage.artifacts import ArtifactStore

    cfg = load_config(TOY_CONFIG_PATH, [
        f"methods=[{method}]", "n_edits=[10]", "batch_sizes=[10]", "eval_every=10", "probes.tasks=[]",
        "metrics.generation_records=0", "metrics.max_records=2", "stats_shards=1",
        f"hparams_overrides=[{{mom2_n_samples: 60, {hparams}}}]"])
    ex = LocalExecutor()
    writer = start_writer(str(tmp_path / "r.duckdb"), ex)
    try:
        statuses = run_sweep(cfg, "s", writer, ArtifactStore(tmp_path / "art"), None, executor=ex, parallel=False)
        (run,) = ex.get(ex.call(writer, "query", "SELECT status, error FROM runs")).rows()
        points = ex.get(ex.call(writer, "query", "SELECT DISTINCT edits_done FROM metrics WHERE dataset = "
                                                 "'counterfact' ORDER BY 1"))["edits_done"].to_list()
    finally:
        ex.get(ex.call(writer, "close"))
    return statuses, run, points
