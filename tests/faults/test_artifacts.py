"""Damaged artifacts (issue 18): a truncated or deleted checkpoint under an interrupted cell, and corrupt key
statistics. ``--resume`` (the sweep's resume path, in-process executor) and a rerun end with exactly the rows
and values of an undamaged run; the damage is recorded for docs/faults.md."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.events import BatchEdited
from cluster.executor import LocalExecutor
from cluster.pipeline import run_sweep, start_writer
from cluster.workers import checkpoint_key
from storage.artifacts import ArtifactStore
from storage.hashing import config_hash

pytestmark = pytest.mark.faults

FAST = ["methods=[memit]", "n_edits=[30]", "batch_sizes=[10]", "eval_every=10", "checkpoint_every=1",
        "probes.tasks=[toy_knowledge]", "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4",
        "stats_shards=1", "hparams_overrides=[{mom2_n_samples: 60, v_num_grad_steps: 2}]"]
VALUES = "SELECT edits_done, dataset, metric, value FROM metrics ORDER BY ALL"


def _sweep(db: Path, art: Path, stop_after: int | None = None):
    """(statuses, runs rows, metric values, total rows) of the FAST sweep ``s`` into ``db`` with store ``art``."""
    cfg = load_config(TOY_CONFIG_PATH, [*FAST, f"results={db}", f"artifact_root={art}"])
    ex = LocalExecutor()
    writer = start_writer(str(db), ex)
    stop = threading.Event()

    def progress(event) -> None:
        if stop_after is not None and isinstance(event, BatchEdited) and event.edits_done >= stop_after:
            stop.set()  # what the driver's signal handler does

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        statuses = run_sweep(cfg, "s", writer, ArtifactStore(art), None, executor=ex, on_progress=progress,
                             stop=stop, parallel=False)
        q = lambda sql: ex.get(ex.call(writer, "query", sql))  # noqa: E731
        runs = q("SELECT status, error FROM runs").rows()
        values = q(VALUES)
        n = sum(q(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in ("runs", "metrics", "probes", "timings",
                                                                     "artifacts"))
    finally:
        torch.set_num_threads(threads)
        ex.get(ex.call(writer, "close"))
    return statuses, runs, values, n


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("reference")
    _, runs, values, n = _sweep(tmp / "r.duckdb", tmp / "art")
    assert runs == [("finished", None)]
    return tmp, values, n


def _checkpoint_file(art: Path, edits_done: int) -> Path:
    cfg = load_config(TOY_CONFIG_PATH, FAST)
    cell = next(cfg.cells())
    store = ArtifactStore(art)
    key = checkpoint_key(cell.run_id("s"), config_hash(cell.config()), edits_done)
    assert store.exists(key)
    folder = art / store.folder(key)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    assert files, list(folder.rglob("*"))
    return files[0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete(path: Path) -> None:
    import shutil

    shutil.rmtree(path.parent)


@pytest.mark.parametrize("damage", [_truncate, _delete], ids=["truncated", "deleted"])
def test_resume_over_a_damaged_checkpoint_ends_with_the_undamaged_rows(reference, damage, tmp_path: Path,
                                                                        observations) -> None:
    _, ref_values, ref_rows = reference
    db, art = tmp_path / "r.duckdb", tmp_path / "art"
    statuses, runs, _, before = _sweep(db, art, stop_after=10)
    assert runs == [("interrupted", None)]
    damage(_checkpoint_file(art, 10))
    statuses, runs, values, after = _sweep(db, art)
    observations.append({"case": f"checkpoint {damage.__name__[1:]}d, then --resume",
                         "input": f"{damage.__name__[1:]} the newest checkpoint (10 of 30 edits) of an "
                                  "interrupted cell", "exit": f"cell {runs[0][0]}",
                         "first_line": f"runs.error: {runs[0][1]}" if runs[0][1] else "(no error; the values equal "
                                       "the undamaged run's)", "rows_before": before, "rows_after": after})
    assert runs == [("finished", None)], runs
    assert values.equals(ref_values), "a resume over a damaged checkpoint must give the undamaged run's values"
    assert after == ref_rows


def test_corrupt_statistics_are_recomputed_to_the_same_rows(reference, tmp_path: Path, observations) -> None:
    ref_tmp, ref_values, ref_rows = reference
    import shutil

    art = tmp_path / "art"
    shutil.copytree(ref_tmp / "art", art)
    stats = sorted(p for p in (art / "key_stats").rglob("*") if p.is_file() and p.suffix in (".npy", ".safetensors"))
    assert stats, list((art / "key_stats").rglob("*"))
    data = bytearray(stats[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the sums
    stats[0].write_bytes(bytes(data))
    _, runs, values, after = _sweep(tmp_path / "r.duckdb", art)
    observations.append({"case": "corrupt key statistics", "input": "one flipped byte in a stored Σ k kᵀ, then a "
                         "new sweep on that artifact store", "exit": f"cell {runs[0][0]}",
                         "first_line": f"runs.error: {runs[0][1]}" if runs[0][1] else "(no error; recomputed, the "
                                       "values equal the first run's)", "rows_before": ref_rows, "rows_after": after})
    assert runs == [("finished", None)], runs
    assert values.equals(ref_values), "recomputed statistics must give the same values"
