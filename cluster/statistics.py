"""The key-statistics data path of a sweep: the driver holds keys and object references only.

* **Shards read their own documents.** A shard task gets the corpus spec and its document range
  ``[start, end)`` (not the texts): it reads the corpus itself, in the corpus's own order, and
  returns per-layer (Σ k kᵀ, count). The ranges are those of ``numpy.linspace`` over the document
  count (counted by a task), so the shards and their sums are the ones the driver used to cut.
* **Merging and storing happen in a task** (:func:`merge_and_store`): the exact merge (sums add),
  the finiteness check, one artifact per layer; it returns the merged arrays into the object store
  (one reference, passed on to the projector task) and a small info dict (artifact rows, key
  counts) for the driver. The editor actor reads the stored statistics itself, by key
  (:class:`cluster.workers.EditorWorker`), so a restarted actor needs no object of the driver's.
* **Stored statistics are read by a task too** (:func:`load_stored`): verified against their full
  key by the store (the manifest holds the key's spec: model id + revision, module, corpus spec,
  sample count, max length, dtype, key budget) and their checksum, then checked finite.
* :class:`StatsSource` (one per model run, :class:`cluster.pipeline.ModelRun`) keeps one
  :class:`StatsHandle` per key set, so the cells of a model that need the same statistics share
  one computation and one object in the object store.

The task functions are plain Python (no Ray); :class:`cluster.executor.Executor` runs them.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alphaedit.editor import check_finite
from cluster.executor import Executor
from cluster.placement import helper_options
from storage.artifacts import ArtifactStore, KeyStatsKey

logger = logging.getLogger(__name__)

StatsArrays = dict[int, tuple[np.ndarray, int]]  # layer -> (Σ k kᵀ float64, key count)
GET_TIMEOUT_S = 3600.0
POLL_S = 0.5  # how often the driver looks at the shard tasks for its progress report


# --- tasks (plain functions; run where the executor puts them) --------------------------------

def document_count(corpus: Any) -> int:
    """Documents of ``corpus`` (an :class:`eval.corpus.CorpusSpec`), counted without keeping them."""
    from eval.corpus import iter_corpus

    return sum(1 for _ in iter_corpus(corpus))


def shard_ranges(n_docs: int, n_shards: int) -> list[tuple[int, int]]:
    """The non-empty ``[start, end)`` document ranges of ``n_shards`` near-equal shards."""
    bounds = np.linspace(0, n_docs, max(1, min(n_shards, n_docs)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def corpus_shard_stats(model_path: str, corpus: Any, start: int, end: int, hparams: Mapping[str, Any],
                       num_gpus: float = 0.0) -> StatsArrays:
    """Σ k kᵀ and counts of every edited layer over documents ``[start, end)`` of ``corpus``, read here."""
    from cluster.workers import stats_shard
    from eval.corpus import iter_corpus

    texts = list(itertools.islice(iter_corpus(corpus), start, end))
    if len(texts) != end - start:
        raise ValueError(f"corpus {corpus.key()}: documents {start}-{end} asked, {len(texts)} read (did the corpus "
                         "change while the statistics were computed?)")
    return stats_shard(model_path, texts, hparams, num_gpus)


def merge_and_store(keys: Mapping[int, KeyStatsKey], store_root: str, *shards: StatsArrays
                    ) -> tuple[StatsArrays, dict[str, Any]]:
    """Merge the shards exactly, check them finite, store one artifact per layer.

    Returns (layer -> (Σ k kᵀ, count), info with the artifact ``records`` and per-layer ``counts``).
    Raises :class:`alphaedit.editor.NonFiniteError` when a merged sum holds NaN/Inf (nothing stored).
    """
    from cluster.workers import merge_shards

    merged = merge_shards(shards)
    store = ArtifactStore(store_root)
    out: StatsArrays = {}
    records = []
    for layer, acc in merged.items():
        arrays = {"sum_kkT": acc.sum_kkT.numpy(), "count": np.array([acc.count], dtype=np.int64)}
        records.append(store.put(keys[layer], arrays).as_row())
        out[layer] = (arrays["sum_kkT"], acc.count)
    return out, {"records": records, "counts": {layer: c for layer, (_, c) in out.items()}}


def load_stored(keys: Mapping[int, KeyStatsKey], store_root: str) -> tuple[StatsArrays | None, dict[str, Any]]:
    """Every layer's stored statistics, verified (full key, checksum) and checked finite; or (None, info)
    when one is missing or corrupt (a corrupt one is deleted, so it is recomputed).

    Raises :class:`alphaedit.editor.NonFiniteError` when a stored sum holds NaN/Inf: a statistic that
    passed its checksum but is not finite was computed so, and a projector of it would be meaningless.
    """
    import torch

    store = ArtifactStore(store_root)
    out: StatsArrays = {}
    for layer, key in keys.items():
        got = store.get_valid(key) if store.exists(key) else None
        if got is None:
            return None, {"found": False}
        out[layer] = (got[0]["sum_kkT"], int(got[0]["count"][0]))
    check_finite({f"layer {layer} sum_kkT (stored {keys[layer].digest()[:12]})": torch.from_numpy(np.asarray(a))
                  for layer, (a, _) in out.items()}, "key statistics")
    return out, {"found": True, "counts": {layer: c for layer, (_, c) in out.items()}}


# --- the driver side ---------------------------------------------------------------------------

@dataclass
class StatsHandle:
    """One set of key statistics as the driver knows it: the keys, an object reference, how it came."""

    keys: dict[int, KeyStatsKey]
    ref: Any  # object reference of layer -> (Σ k kᵀ, count)
    counts: dict[int, int]
    seconds: float
    computed: bool
    records: list[dict[str, Any]] = field(default_factory=list)  # artifact rows of the computed ones

    @property
    def id(self) -> tuple[str, ...]:
        """Identity of these statistics (the digests of their keys, layer order)."""
        return tuple(self.keys[layer].digest() for layer in sorted(self.keys))


def fetch_statistics(ex: Executor, keys: dict[int, KeyStatsKey], store_root: str, model_path: str, corpus: Any,
                     hparams: Mapping[str, Any], shards: int, options: Mapping[str, Any], num_gpus: float,
                     single_shard: bool = False,
                     on_shards: Callable[[int, int], None] = lambda done, total: None,
                     check_stop: Callable[[], None] = lambda: None) -> StatsHandle:
    """The statistics under ``keys``: from the store (read and checked by a task) or computed by shard
    tasks that read their own corpus ranges and merged and stored by a task. Only references, keys and
    small info dicts reach the caller; ``single_shard``: a key budget is defined in corpus order.
    ``on_shards(done, total)``: called when the shard tasks are submitted and whenever more have finished
    (the driver's progress bar); never called when the statistics come from the store. ``check_stop()``:
    called while the shard tasks run; what it raises (the driver's stop request) cancels them and propagates
    (nothing is merged or stored)."""
    t0 = time.perf_counter()
    helper = helper_options(options)  # beside the shards: their node kind, no GPU
    load = ex.task(load_stored, **helper, max_retries=2, retry_exceptions=False, num_returns=2)
    ref, info_ref = load(keys, store_root)
    info = ex.get(info_ref, timeout=GET_TIMEOUT_S)
    if info["found"]:
        return StatsHandle(dict(keys), ref, info["counts"], time.perf_counter() - t0, computed=False)
    n_docs = ex.get(ex.task(document_count, **helper, max_retries=2)(corpus), timeout=GET_TIMEOUT_S)
    if n_docs == 0:
        raise ValueError(f"corpus {corpus.key()} has no documents: nothing to compute key statistics from")
    shard = ex.task(corpus_shard_stats, **options, max_retries=3, retry_exceptions=False)
    ranges = shard_ranges(n_docs, 1 if single_shard else shards)
    on_shards(0, len(ranges))
    refs = [shard(model_path, corpus, a, b, dict(hparams), num_gpus) for a, b in ranges]
    wait_reporting(ex, refs, on_shards, check_stop=check_stop)
    merge = ex.task(merge_and_store, **helper, max_retries=2, retry_exceptions=False, num_returns=2)
    ref, info_ref = merge(keys, store_root, *refs)
    info = ex.get(info_ref, timeout=GET_TIMEOUT_S)  # NonFiniteError on NaN/Inf
    logger.info("key statistics of layers %s over %d documents in %d shards", sorted(keys), n_docs, len(refs))
    return StatsHandle(dict(keys), ref, info["counts"], time.perf_counter() - t0, computed=True,
                       records=info["records"])


def wait_reporting(ex: Executor, refs: Sequence[Any], report: Callable[[int, int], None],
                   poll_s: float = POLL_S, timeout: float = GET_TIMEOUT_S,
                   check_stop: Callable[[], None] = lambda: None) -> None:
    """Wait until every one of ``refs`` has finished (a value or an error; nothing is fetched), calling
    ``report(done, total)`` whenever more have; at most ``timeout`` seconds (the caller's get times out then).
    ``check_stop()`` runs at every poll: when it raises, ``refs`` are cancelled and the exception propagates."""
    total, last = len(refs), -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            check_stop()
        except BaseException:
            ex.cancel(list(refs))
            raise
        done = sum(ex.ready(list(refs)))
        if done != last:
            report(done, total)
            last = done
        if done == total:
            return
        time.sleep(poll_s)


@dataclass
class StatsSource:
    """The statistics of one model run: each key set fetched once, its handle reused by later cells."""

    handles: dict[tuple[str, ...], StatsHandle] = field(default_factory=dict)

    def get(self, keys: dict[int, KeyStatsKey], fetch: Any) -> tuple[StatsHandle, bool]:
        """(handle, first): ``fetch()`` on the first request of ``keys``, the same handle afterwards."""
        sid = tuple(keys[layer].digest() for layer in sorted(keys))
        if sid in self.handles:
            return self.handles[sid], False
        handle = fetch()
        self.handles[sid] = handle
        return handle, True

