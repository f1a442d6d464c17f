"""The key-statistics data path (issue 19): tasks read their own corpus shard, merge and store off the
driver, the driver holds object references and keys only, one fetch per model run for all its cells,
and the shards and sums are the ones the driver used to cut (results unchanged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.executor import LocalExecutor, LocalRef
from cluster.pipeline import cell_stats_keys, corpus_spec, run_sweep, start_writer
from cluster.statistics import document_count, fetch_statistics, shard_ranges
from storage.artifacts import ArtifactStore

FAST = ["batch_sizes=[10]", "n_edits=[10]", "eval_every=10", "probes.tasks=[]", "metrics.generation_records=0",
        "metrics.max_records=2", "stats_shards=2", "methods=[alphaedit, memit]"]
SMALL = "{mom2_n_samples: 60, v_num_grad_steps: 2}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread for the module (tests/conftest.py)."""


def _largest_array(value: Any) -> int:
    """Bytes of the largest numpy array or tensor inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return max((_largest_array(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple):
        return max((_largest_array(v) for v in value), default=0)
    return 0


class RecordingExecutor(LocalExecutor):
    """The in-process executor, recording what reaches the driver: values it gets, values it puts,
    and the arguments and names of the tasks it submits."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[int] = []
        self.put_bytes: list[int] = []
        self.tasks: list[tuple[str, tuple[Any, ...]]] = []

    def put(self, value: Any) -> LocalRef:
        self.put_bytes.append(_largest_array(value))
        return super().put(value)

    def task(self, fn, **options):
        submit = super().task(fn, **options)

        def recorded(*args, **kwargs):
            self.tasks.append((fn.__name__, args))
            return submit(*args, **kwargs)

        return recorded

    def get(self, refs, timeout=None):
        out = super().get(refs, timeout)
        self.got.append(_largest_array(out))
        return out


def _run(tmp: Path, *extra: str, db: str = "r.duckdb") -> tuple[RecordingExecutor, dict[str, str], Any]:
    cfg = load_config(TOY_CONFIG_PATH, [*FAST, f"results={tmp / db}", f"artifact_root={tmp / 'art'}", *extra])
    ex = RecordingExecutor()
    writer = start_writer(str(tmp / db), ex)
    try:
        statuses = run_sweep(cfg, "s", writer, ArtifactStore(tmp / "art"), None, executor=ex, parallel=False)
    finally:
        ex.get(ex.call(writer, "close"))
    return ex, statuses, cfg


def test_driver_holds_references_and_one_fetch_serves_the_model_run(tmp_path) -> None:
    ex, statuses, cfg = _run(tmp_path, f"hparams_overrides=[{SMALL}]")
    assert sorted(statuses.values()) == ["finished", "finished"]
    names = [name for name, _ in ex.tasks]
    # one fetch for both cells (was: every cell read and re-hashed every layer on the driver)
    assert names.count("load_stored") == 1 and names.count("merge_and_store") == 1
    assert names.count("corpus_shard_stats") == 2 and names.count("document_count") == 1
    # the shard tasks get a corpus spec and a range, not texts (was: the driver's slices of the corpus)
    shard_args = [args for name, args in ex.tasks if name == "corpus_shard_stats"]
    assert [(a[2], a[3]) for a in shard_args] == [(0, 30), (30, 60)]
    assert not any(isinstance(x, list | tuple) and x and isinstance(x[0], str) for a in shard_args for x in a)
    # no Σ k kᵀ (512 x 512 float64 = 2 MiB a layer) ever reaches the driver, nor is put from it
    d_k = 512
    assert max(ex.got) < d_k * d_k * 8 and max(ex.put_bytes, default=0) < d_k * d_k * 8, (max(ex.got), ex.put_bytes)


def test_second_run_reads_the_store_in_a_task(tmp_path) -> None:
    _run(tmp_path, f"hparams_overrides=[{SMALL}]", "methods=[memit]")
    ex, statuses, _ = _run(tmp_path, f"hparams_overrides=[{SMALL}]", "methods=[memit]", db="second.duckdb")
    assert list(statuses.values()) == ["finished"]
    names = [name for name, _ in ex.tasks]
    assert names.count("load_stored") == 1 and "corpus_shard_stats" not in names and "merge_and_store" not in names


def test_cells_with_other_statistics_get_their_own(tmp_path) -> None:
    """Was: the statistics' object was cached by layer numbers, so a cell with another sample count on the
    same layers was edited with the first cell's statistics on the first cell's editor."""
    ex, statuses, _ = _run(tmp_path, "methods=[memit]",
                           "hparams_overrides=[{mom2_n_samples: 60, v_num_grad_steps: 2}, "
                           "{mom2_n_samples: 40, v_num_grad_steps: 2}]")
    assert list(statuses.values()) == ["finished", "finished"]
    names = [name for name, _ in ex.tasks]
    assert names.count("merge_and_store") == 2
    assert len([n for n in ex.named if n.startswith("editor:")]) == 2  # a new editor for the new statistics


def test_shards_and_sums_are_the_drivers_former_cut(tmp_path) -> None:
    """The shard tasks' ranges are the driver's former np.linspace cut of the texts: bit-identical sums."""
    from cluster.workers import merge_shards, stats_shard
    from eval.corpus import iter_corpus

    cfg = load_config(TOY_CONFIG_PATH, [f"hparams_overrides=[{SMALL}]"])
    cell = next(cfg.cells())
    model, hp = cfg.models[0], cell.hparams()
    corpus = corpus_spec(model, hp.mom2_n_samples)
    texts = list(iter_corpus(corpus))
    assert document_count(corpus) == len(texts) == 60
    bounds = np.linspace(0, len(texts), 3 + 1).astype(int)
    assert shard_ranges(len(texts), 3) == list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    path = model.resolve(model.path)
    former = merge_shards([stats_shard(path, texts[a:b], hp.to_dict()) for a, b in zip(bounds[:-1], bounds[1:],
                                                                                        strict=True)])
    ex = LocalExecutor()
    keys = cell_stats_keys(model, cell)
    handle = fetch_statistics(ex, keys, str(tmp_path / "art"), path, corpus, hp.to_dict(), 3, {}, 0.0)
    now = ex.get(handle.ref)
    assert handle.computed and handle.counts == {layer: acc.count for layer, acc in former.items()}
    for layer, acc in former.items():
        assert np.array_equal(now[layer][0], acc.sum_kkT.numpy())
    again = fetch_statistics(ex, keys, str(tmp_path / "art"), path, corpus, hp.to_dict(), 3, {}, 0.0)
    assert not again.computed and all(np.array_equal(ex.get(again.ref)[k][0], now[k][0]) for k in now)


def test_a_stored_statistic_under_another_key_is_not_used(tmp_path) -> None:
    """The store checks the full key (corpus spec, sample count, max length, dtype ...), not a prefix."""
    import dataclasses

    from storage.artifacts import ArtifactCorruptError

    cfg = load_config(TOY_CONFIG_PATH, [f"hparams_overrides=[{SMALL}]"])
    cell = next(cfg.cells())
    keys = cell_stats_keys(cfg.models[0], cell)
    store = ArtifactStore(tmp_path / "art")
    key = keys[min(keys)]
    store.put(key, {"sum_kkT": np.eye(4), "count": np.array([4], dtype=np.int64)})
    other = dataclasses.replace(key, n_samples=key.n_samples + 1)
    assert not store.exists(other)
    # a manifest copied under another key's folder is refused, not used
    import shutil

    shutil.copytree(tmp_path / "art" / store.folder(key), tmp_path / "art" / store.folder(other))
    with pytest.raises(ArtifactCorruptError, match="different key"):
        store.get(other)
