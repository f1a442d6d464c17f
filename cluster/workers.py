"""The work of a sweep as plain Python: statistics shards, the editor, checkpoint evaluation.

Nothing here imports Ray: :mod:`cluster.remote` wraps these with ``ray.remote(...)`` using the
resources from the sweep config, and unit tests call them in-process. Large values cross process
boundaries as numpy arrays (zero-copy through Ray's object store).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alphaedit import (
    EditHparams,
    Editor,
    SecondMoment,
    kept_fraction,
    merge_stats,
    method_spec,
    projectors_from_stats,
    requests_from_counterfact,
    spec_for,
)
from alphaedit.editor import NonFiniteError, NullUpdateError, check_finite
from alphaedit.models import load_model
from alphaedit.state import EditState, restore_weights, snapshot_weights
from alphaedit.stats import compute_key_stats, key_budget
from alphaedit.targets import StuckTargetError
from storage.artifacts import (
    ROWS,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStore,
    CheckpointKey,
    Codec,
    KeyStatsKey,
    ProjectorKey,
    UneditedEvalKey,
)

logger = logging.getLogger(__name__)

StatsArrays = dict[int, tuple[np.ndarray, int]]  # layer -> (Σ k kᵀ float64, key count)
ProjectorArrays = dict[int, np.ndarray]  # layer -> null-space projector P (d_k, d_k) float32


def pick_device(num_gpus: float) -> torch.device:
    """The device of a worker: CUDA when it was given a GPU and one is visible, else CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    if num_gpus > 0:
        logger.warning("worker was given %.2f GPU but CUDA is not available; running on CPU", num_gpus)
    return torch.device("cpu")


# --- key statistics ---------------------------------------------------------------------------

def stats_shard(model_path: str, texts: Sequence[str], hparams: Mapping[str, Any], num_gpus: float = 0.0,
                dtype: str = "float32") -> StatsArrays:
    """Σ k kᵀ and counts of every edited layer over one shard, in one forward pass per batch."""
    hp = EditHparams.from_dict(dict(hparams))
    model, tok = load_model(model_path, pick_device(num_gpus), dtype)
    spec = spec_for(model)
    stats = compute_key_stats(
        model, tok, texts, spec, hp.layers, max_length=hp.mom2_max_length, batch_size=hp.mom2_batch_size,
        max_keys=key_budget(model, spec, hp.layers, hp.key_budget_multiplier),
        forward_dtype=None if hp.stats_dtype == "float32" else hp.stats_dtype,  # sums stay fp64
    )
    return {layer: (acc.sum_kkT.cpu().numpy(), acc.count) for layer, acc in stats.items()}


def merge_shards(shards: Sequence[StatsArrays]) -> dict[int, SecondMoment]:
    """Exact merge of shard arrays (sums and counts add), through :func:`alphaedit.merge_stats`.

    Raises :class:`alphaedit.editor.NonFiniteError` when a merged Σ k kᵀ holds NaN or Inf.
    """
    merged = merge_stats(
        {layer: SecondMoment(torch.from_numpy(np.array(sum_kkT, dtype=np.float64)), int(count))
         for layer, (sum_kkT, count) in shard.items()}
        for shard in shards
    )
    check_finite({f"layer {layer} sum_kkT": acc.sum_kkT for layer, acc in merged.items()}, "key statistics")
    return merged


# --- null-space projectors ---------------------------------------------------------------------

def null_space_projectors(stats: StatsArrays, keys: Mapping[int, ProjectorKey], hparams: Mapping[str, Any],
                          store_root: str, num_gpus: float = 0.0) -> dict[str, Any]:
    """Make sure the artifact store holds P of every layer in ``keys``: computed from ``stats`` and stored
    where missing. The P matrices stay in the store (the editors read them there by key), so the task
    returns only the info, not d_k x d_k arrays per layer.

    The computation is :func:`alphaedit.projectors_from_stats` (eigh in float64 on this worker's
    device, P in float32), the same as the editor's own, so a cached P is bit-identical to a fresh
    one. A corrupt stored P is deleted and recomputed. Returns info, which holds
    ``computed`` (layers computed here), ``records`` (artifact rows of the stored ones), ``kept``
    (rank / d_k per layer) and ``seconds``.
    """
    t0 = time.perf_counter()
    hp = EditHparams.from_dict(dict(hparams))
    for layer, key in keys.items():
        if (key.threshold, key.mode) != (hp.nullspace_threshold, hp.threshold_mode):
            raise ValueError(f"projector key of layer {layer} (threshold {key.threshold}, {key.mode}) does not match "
                             f"the hparams ({hp.nullspace_threshold}, {hp.threshold_mode})")
    store = ArtifactStore(store_root)
    out: ProjectorArrays = {}
    for layer, key in keys.items():
        got = store.get_valid(key)  # None: not stored, or corrupt (then deleted)
        if got is not None:
            out[layer] = got[0]["P"]
    missing = sorted(set(keys) - set(out))
    records = []
    if missing:
        merged = merge_shards([{layer: stats[layer] for layer in missing}])
        for layer, proj in projectors_from_stats(merged, hp, pick_device(num_gpus)).items():
            out[layer] = proj.cpu().numpy()
            records.append(store.put(keys[layer], {"P": out[layer]}).as_row())
    kept = {layer: kept_fraction(torch.from_numpy(np.array(p))) for layer, p in sorted(out.items())}
    return {"computed": missing, "records": records, "kept": kept, "seconds": time.perf_counter() - t0}


def projector_distances(store_root: str, budget: Mapping[int, ProjectorKey], full: Mapping[int, ProjectorKey]
                        ) -> dict[int, float]:
    """||P_budget - P_full||_F / ||P_full||_F per layer of both, read from the artifact store (FastMEMIT's key
    budget against the full corpus at one threshold). A layer whose full-corpus P is 0 is left out."""
    store = ArtifactStore(store_root)
    out = {}
    for layer in sorted(set(budget) & set(full)):
        p_b, p_f = (np.asarray(store.get(keys[layer])["P"], dtype=np.float64) for keys in (budget, full))  # (d_k, d_k)
        norm = float(np.linalg.norm(p_f))
        if norm == 0.0:
            logger.warning("layer %d: the full-corpus projector is 0; no distance", layer)
            continue
        out[int(layer)] = float(np.linalg.norm(p_b - p_f)) / norm
    return out


# --- failures -----------------------------------------------------------------------------------

class CellFailed(RuntimeError):
    """A run cell cannot go on; the message (stored in ``runs.error``) says what, where and what to do."""


def describe_failure(exc: BaseException, where: str) -> str:
    """One line for ``runs.error``: the kind of failure, where it happened, the cause and a hint."""
    import errno

    cause = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, CellFailed):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return (f"out of memory {where} ({cause}). Lower batch_size or prompt_batch_size, or give the "
                "editor a larger GPU (models.N.num_gpus); the cell's earlier checkpoints and rows are kept.")
    if isinstance(exc, NonFiniteError):
        return f"non-finite values {where} ({cause})"
    if isinstance(exc, NullUpdateError | StuckTargetError):
        return f"an update that changes nothing {where} ({cause})"
    if isinstance(exc, ArtifactCorruptError):
        return f"corrupt artifact {where} ({cause})"
    if isinstance(exc, ArtifactError):
        return f"artifact problem {where} ({cause})"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"disk full {where} ({cause}). Free space on the artifact/results file system or point "
                "artifact_root/results elsewhere, then rerun with --resume SWEEP_ID.")
    return f"{cause} ({where})"


# --- the editor -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellStart:
    """What the editor needs to begin (or resume) one run cell.

    ``checkpoint_at``: edits_done values after which the state is stored as a checkpoint;
    ``keep_checkpoints``: those never deleted (evaluation points, the last one); any other
    checkpoint is deleted once a newer one is stored. ``resume``: continue from the newest stored
    checkpoint of this run (same run_id and config hash) instead of from the base model.
    """

    run_id: str
    method: str
    hparams: dict[str, Any]
    seed: int
    config_hash: str = ""
    checkpoint_at: tuple[int, ...] = ()
    keep_checkpoints: tuple[int, ...] = ()
    resume: bool = False


def checkpoint_codec() -> Codec:
    """Artifact codec of an editor checkpoint: ``(EditState, extra tensors)`` as one safetensors blob."""
    return Codec("edit_state", "safetensors", lambda v: v[0].to_bytes(v[1]), EditState.from_bytes)


def checkpoint_key(run_id: str, config_hash: str, edits_done: int) -> CheckpointKey:
    return CheckpointKey(run_id=run_id, config_hash=config_hash, edits_done=int(edits_done))


@dataclass(frozen=True)
class StoredDeltas:
    """Deltas to evaluate, read from a stored checkpoint (instead of shipped as arrays)."""

    store_root: str
    run_id: str
    config_hash: str
    edits_done: int

    def load(self) -> dict[str, np.ndarray]:
        key = checkpoint_key(self.run_id, self.config_hash, self.edits_done)
        state, _ = ArtifactStore(self.store_root).get(key, checkpoint_codec())
        return {name: d.numpy() for name, d in state.deltas.items()}


def _convert_checkpoint_time(reports: Sequence[Mapping[str, Any]], convert: Any) -> list[dict[str, Any]]:
    """Copies of batch reports with ``convert`` applied to their checkpoint row's ``created_at``."""
    out = []
    for r in reports:
        r = dict(r)
        if r.get("checkpoint") is not None:
            r["checkpoint"] = {**r["checkpoint"], "created_at": convert(r["checkpoint"]["created_at"])}
        out.append(r)
    return out


def _reports_to_json(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Batch reports as JSON data (checkpoint rows' ``created_at`` as ISO text)."""
    return _convert_checkpoint_time(reports, lambda t: t.isoformat())


def _reports_from_json(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from datetime import datetime

    return _convert_checkpoint_time(reports, datetime.fromisoformat)


class EditorWorker:
    """Holds one model, its preservation statistics and the edit state of the current run cell.

    The actor's constructor takes artifact *keys*, never object-store references: it reads the
    key statistics (and the null-space projectors) from the artifact store itself, so an actor that
    Ray restarts (``max_restarts``) rebuilds itself from the store, and its arguments are small
    values Ray keeps with the actor (no object that must outlive it, hence no Ray warning about
    constructor arguments in the object store).

    The base weights are snapshotted once; :meth:`begin` restores them before a new cell, so
    cells of the same model run one after the other on one copy of the model. The state is
    checkpointed (deltas, Σ Kp Kpᵀ, the exact edited weights, the RNG state, the position in the
    stream) at the cell's ``checkpoint_at`` points, and :meth:`begin` with ``resume=True``
    continues bit-exactly from the newest checkpoint, also in a restarted actor (whose
    ``__init__`` ran again).
    """

    def __init__(self, model_path: str, stats_keys: Mapping[int, KeyStatsKey], num_gpus: float = 0.0,
                 dtype: str = "float32", store_root: str | None = None,
                 projector_keys: Mapping[int, ProjectorKey] | None = None) -> None:
        """``stats_keys``: the artifact keys of the key statistics per layer, read from the store at
        ``store_root`` (where :func:`cluster.statistics.fetch_statistics` put them); missing or
        corrupt ones raise :class:`storage.artifacts.ArtifactNotFoundError`. ``projector_keys``: the
        keys of the null-space projectors per layer (stored by :func:`null_space_projectors`), all
        made with one ``(threshold, mode)``; cells with other values (or, when one is missing or
        corrupt in the store, every cell) compute their own from the statistics."""
        from cluster.statistics import load_stored

        if store_root is None:
            raise ValueError("EditorWorker needs a store_root: it reads its statistics from the artifact store")
        self.device = pick_device(num_gpus)
        self.model, self.tokenizer = load_model(model_path, self.device, dtype)
        self.spec = spec_for(self.model)
        stats, _ = load_stored(dict(stats_keys), store_root)  # verified (full key, checksum) and finite
        if stats is None:
            raise ArtifactNotFoundError(
                f"key statistics of layers {sorted(stats_keys)} are not (intact) in the artifact store {store_root}; "
                "rerun the sweep (or python -m jobs.stats) to compute them")
        self.stats = merge_shards([stats])
        self.projectors, self.projector_params = self._stored_projectors(store_root, projector_keys or {})
        self.store_root = store_root
        self._base: dict[str, torch.Tensor] | None = None
        self.editor: Editor | None = None
        self.cell: CellStart | None = None
        self.run_id: str | None = None
        self._failed: str | None = None
        self._last_checkpoint: int | None = None
        self.reports: list[dict[str, Any]] = []  # one per batch of the current cell (timings, checkpoint row)
        logger.info("editor worker for %s on %s", model_path, self.device)

    def _stored_projectors(self, store_root: str, keys: Mapping[int, ProjectorKey]
                           ) -> tuple[dict[int, torch.Tensor] | None, tuple[float, str] | None]:
        """(P per layer on this device, their (threshold, mode)) read from the store; (None, None)
        without keys, or when one is missing or corrupt (then the cells compute their own)."""
        if not keys:
            return None, None
        params = {(float(k.threshold), k.mode) for k in keys.values()}
        if len(params) != 1:
            raise ValueError(f"projector keys with different (threshold, mode) {sorted(params)}: give one set")
        store = ArtifactStore(store_root)
        out = {}
        for layer, key in keys.items():
            got = store.get_valid(key)  # None: not stored, or corrupt (then deleted)
            if got is None:
                logger.warning("projector of layer %d (%s) is not (intact) in the artifact store %s; the cells "
                               "compute their own", layer, key.digest()[:12], store_root)
                return None, None
            out[int(layer)] = torch.from_numpy(np.array(got[0]["P"], dtype=np.float32)).to(self.device)
        return out, params.pop()

    def start_cell(self, cell: CellStart) -> dict[str, Any]:
        """Begin ``cell`` from the base model (no resume); see :meth:`begin`."""
        return self.begin(dataclasses.replace(cell, resume=False))

    def begin(self, cell: CellStart) -> dict[str, Any]:
        """Set up ``cell``: base weights, seed, editor; with ``cell.resume`` the newest checkpoint.

        Returns ``{"edits_done": position in the stream, "setup_seconds", "projector_kept"?}``.
        Raises :class:`storage.artifacts.ArtifactCorruptError` when the newest checkpoint fails
        verification (delete it to resume from the one before).
        """
        hp = EditHparams.from_dict(cell.hparams)
        names = [self.spec.weight_name(layer) for layer in hp.layers]
        if self._base is None or set(self._base) != set(names):
            if self._base is not None:
                restore_weights(self.model, self._base)
            self._base = snapshot_weights(self.model, names)
        restore_weights(self.model, self._base)
        self.editor, self.cell, self.run_id, self._failed, self._last_checkpoint = None, cell, cell.run_id, None, None
        self.reports = []
        torch.manual_seed(cell.seed)
        missing = set(hp.layers) - set(self.stats)
        if missing:
            raise ValueError(f"{cell.run_id}: no key statistics for layers {sorted(missing)}")
        t0 = time.perf_counter()
        loaded = self._newest_checkpoint(cell) if cell.resume else None
        state, extras, record = loaded if loaded is not None else (None, {}, None)
        self.editor = Editor(self.model, self.tokenizer, hp, cell.method, projectors=self._projectors_for(hp, cell),
                             stats={layer: self.stats[layer] for layer in hp.layers}, spec=self.spec, state=state)
        if state is not None:
            # Exact edited weights (base + Δ in float32 can differ from them in the last bit).
            restore_weights(self.model, {n: extras[f"weight.{n}"].to(self.device) for n in names})
            torch.set_rng_state(extras["rng.cpu"])
            if "rng.cuda" in extras and self.device.type == "cuda":
                torch.cuda.set_rng_state(extras["rng.cuda"], self.device)
            self._last_checkpoint = state.n_edits
            # The batches before the checkpoint, as reported then; the checkpoint's own row has the
            # time it took to read it back (its write time died with the process that wrote it).
            self.reports = _reports_from_json(state.extra.get("batch_reports", []))
            if self.reports and record is not None:
                self.reports[-1]["checkpoint"] = {**record, "kept": state.n_edits in cell.keep_checkpoints}
            logger.info("%s: resumed from the checkpoint after %d edits", cell.run_id, state.n_edits)
        info: dict[str, Any] = {"setup_seconds": time.perf_counter() - t0, "edits_done": self.editor.state.n_edits,
                                "reports": list(self.reports)}
        if self.editor.projectors is not None:
            info["projector_kept"] = {int(layer): kept_fraction(p) for layer, p in self.editor.projectors.items()}
        return info

    def _projectors_for(self, hp: EditHparams, cell: CellStart) -> dict[int, torch.Tensor] | None:
        """The stored projectors when the cell's method uses P and they were made for its hparams."""
        if not method_spec(cell.method).needs_projector or self.projectors is None:
            return None
        if self.projector_params != (hp.nullspace_threshold, hp.threshold_mode) or not set(hp.layers) <= set(
                self.projectors):
            logger.warning("%s: the stored projectors were made for %s, the cell asks for (%s, %s) on layers %s; "
                           "computing its own", cell.run_id, self.projector_params, hp.nullspace_threshold,
                           hp.threshold_mode, list(hp.layers))
            return None
        return {layer: self.projectors[layer] for layer in hp.layers}

    def _store(self) -> ArtifactStore:
        if self.store_root is None:
            raise RuntimeError("EditorWorker has no store_root: checkpoints need an artifact store")
        return ArtifactStore(self.store_root)

    def _newest_checkpoint(self, cell: CellStart
                           ) -> tuple[EditState, dict[str, torch.Tensor], dict[str, Any]] | None:
        """(state, extras, artifact row + read seconds) of the newest stored checkpoint, or None."""
        store = self._store()
        for edits_done in sorted(cell.checkpoint_at, reverse=True):
            key = checkpoint_key(cell.run_id, cell.config_hash, edits_done)
            if store.exists(key):
                t0 = time.perf_counter()
                state, extras = store.get(key, checkpoint_codec())  # ArtifactCorruptError: never used
                row = {**store.record(key).as_row(), "seconds": time.perf_counter() - t0}
                if state.n_edits != edits_done:
                    raise CellFailed(f"{cell.run_id}: checkpoint {key.digest()[:12]} holds {state.n_edits} edits, "
                                     f"its key says {edits_done}; delete it ({store.folder(key)})")
                return state, extras, row
        return None

    def edit(self, records: Sequence[Mapping[str, Any]], start: int | None = None,
             want_deltas: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
        """Edit one batch of CounterFact-format records that begins after ``start`` edits.

        Returns (batch report, the deltas after the batch when ``want_deltas`` else None). The
        report carries the checkpoint's artifact row when one was stored. A batch that does not
        continue the stream (``start`` differs from the edits done) or follows a failed batch
        raises :class:`CellFailed`; errors are described with :func:`describe_failure`.
        """
        if self.editor is None or self.cell is None:
            raise RuntimeError("EditorWorker.edit before begin")
        done = self.editor.state.n_edits
        where = f"in the batch of edits {done}-{done + len(records)} of {self.run_id}"
        if self._failed is not None:
            raise CellFailed(f"{where}: skipped, an earlier batch failed: {self._failed}")
        if start is not None and start != done:
            raise CellFailed(f"{where}: the batch starts after {start} edits but the editor has done {done}")
        try:
            report = self.editor.edit(requests_from_counterfact(list(records)))
            out = {"step": len(self.reports), "n_requests": report.n_requests, "edits_done": report.n_edits_total,
                   "seconds": report.seconds, "mean_target_loss": report.mean_target_loss, "checkpoint": None}
            self.reports.append(out)
            if report.n_edits_total in self.cell.checkpoint_at:
                out["checkpoint"] = self._checkpoint()
        except (torch.OutOfMemoryError, MemoryError, NonFiniteError, NullUpdateError, StuckTargetError, OSError,
                ArtifactError) as exc:
            self._failed = describe_failure(exc, where)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise CellFailed(self._failed) from exc
        return out, (self.deltas() if want_deltas else None)

    def _checkpoint(self) -> dict[str, Any]:
        """Store the state now; delete the previous checkpoint unless it is kept. Returns the artifact row."""
        assert self.editor is not None and self.cell is not None
        t0 = time.perf_counter()
        state = self.editor.state
        params = dict(self.model.named_parameters())
        extras = {f"weight.{n}": params[n].detach() for n in state.weight_names.values()}
        extras["rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            extras["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        store = self._store()
        state.extra["batch_reports"] = _reports_to_json(self.reports)  # so a resume can write their rows
        record = store.put(checkpoint_key(self.cell.run_id, self.cell.config_hash, state.n_edits), (state, extras),
                           checkpoint_codec())
        prev = self._last_checkpoint
        if prev is not None and prev != state.n_edits and prev not in self.cell.keep_checkpoints:
            store.delete(checkpoint_key(self.cell.run_id, self.cell.config_hash, prev))
        self._last_checkpoint = state.n_edits
        row = record.as_row()
        row["seconds"] = time.perf_counter() - t0
        row["kept"] = state.n_edits in self.cell.keep_checkpoints
        return row

    def deltas(self) -> dict[str, np.ndarray]:
        """W_edited - W_base of every edited weight (float32 numpy, owned by the caller)."""
        if self.editor is None:
            return {}
        return {name: d.detach().float().cpu().numpy() for name, d in self.editor.state.deltas.items()}


# --- checkpoint evaluation ----------------------------------------------------------------------

@dataclass(frozen=True)
class EvalRequest:
    """One checkpoint to evaluate: which records, which probes, and the deltas to add."""

    run_id: str
    edits_done: int
    dataset: str  # "counterfact" | "zsre"
    records: tuple[dict[str, Any], ...]  # raw records (CounterFact or zsRE layout)
    probe_tasks: tuple[str, ...]
    probe_limit: int | None
    probe_batch_size: int
    generation_records: int
    snippets_source: str | None = None
    tfidf_sources: tuple[str, str] | None = None
    seed: int = 0
    zsre_answer_tokens: str = "clean"
    drift_corpus: Any | None = None  # eval.corpus.CorpusSpec of the drift documents (None: no drift)
    drift_layer: int | None = None  # the last edited layer


_MODEL_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def cached_model(path: str, device: torch.device, dtype: str) -> tuple[Any, Any]:
    """One (model, tokenizer) per (path, device, dtype) per worker process (the key is complete)."""
    key = (path, str(device), dtype)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_model(path, device, dtype)
    return _MODEL_CACHE[key]


_DRIFT_TEXTS: dict[str, tuple[str, ...]] = {}


def drift_texts(spec: Any | None) -> tuple[str, ...]:
    """The drift documents of ``spec`` (an ``eval.corpus.CorpusSpec``), read once per worker process."""
    if spec is None:
        return ()
    from eval.corpus import iter_corpus

    key = spec.key()
    if key not in _DRIFT_TEXTS:
        _DRIFT_TEXTS[key] = tuple(iter_corpus(spec))
    return _DRIFT_TEXTS[key]


def evaluate_checkpoint(model_path: str, deltas: Mapping[str, np.ndarray] | StoredDeltas, req: EvalRequest,
                        num_gpus: float = 0.0, dtype: str = "float32") -> dict[str, Any]:
    """Rewrite metrics and lm-eval probes of base + ``deltas``; rows ready for the writer.

    ``deltas``: arrays (shipped from the editor) or a :class:`StoredDeltas` read from the store.
    The evaluation itself is :func:`eval.suite.evaluate_edited` (the command line's too); the base
    weights are restored afterwards, so a worker can keep its model loaded across checkpoints.
    """
    from eval.datasets import CounterFactRecord, ZsreRecord, load_attribute_snippets, load_tfidf
    from eval.suite import EvalPlan, drift_point_rows, evaluate_edited

    model, tok = cached_model(model_path, pick_device(num_gpus), dtype)
    if isinstance(deltas, StoredDeltas):
        deltas = deltas.load()
    torch_deltas = {name: torch.from_numpy(np.array(d)) for name, d in deltas.items()}
    if req.dataset == "counterfact":
        records: list[Any] = [CounterFactRecord.from_json(r) for r in req.records]
        generation = req.generation_records > 0
        snippets = load_attribute_snippets(req.snippets_source) if generation and req.snippets_source else None
        vectorizer = load_tfidf(*req.tfidf_sources) if generation and req.tfidf_sources else None
    else:
        records = [ZsreRecord.from_json(r, int(r.get("case_id", i))) for i, r in enumerate(req.records)]
        snippets = vectorizer = None
    plan = EvalPlan(dataset=req.dataset, records=records, generation_records=req.generation_records,
                    snippets=snippets, vectorizer=vectorizer, probe_tasks=req.probe_tasks,
                    probe_limit=req.probe_limit, probe_batch_size=req.probe_batch_size, seed=req.seed,
                    zsre_answer_tokens=req.zsre_answer_tokens,  # type: ignore[arg-type]
                    drift_texts=drift_texts(req.drift_corpus), drift_layer=req.drift_layer)
    result = evaluate_edited(model, tok, plan, torch_deltas)
    metric_rows = [{"run_id": req.run_id, "edits_done": req.edits_done, "dataset": row.dataset, "metric": row.metric,
                    "value": row.value, "n_cases": row.n_cases} for row in result.rows]
    probe_rows = [{"run_id": req.run_id, "edits_done": req.edits_done, "task": p.task, "metric": p.metric,
                   "value": p.value} for p in result.probes]
    return {"metrics": metric_rows, "probes": probe_rows, "timings": result.seconds, "n_records": len(req.records),
            "drift_points": drift_point_rows(req.run_id, req.edits_done, result.drift_points)}


def evaluate_unedited(model_path: str, key: UneditedEvalKey, req: EvalRequest, store_root: str,
                      num_gpus: float = 0.0, dtype: str = "float32") -> dict[str, Any]:
    """The unedited model's evaluation of ``req``: read from the artifact store under ``key``, or computed
    by :func:`evaluate_checkpoint` (no deltas) and stored there in its :func:`shared_form`. The rows carry the
    run id of the request that computed them, or none when read from the store (:func:`cluster.pipeline`
    relabels them per cell). Adds ``reused`` (whether the
    store had them; ``timings`` is then the read's), ``record`` (the artifact row when stored here) and
    ``key`` (the digest). A worker whose device is not the key's computes without the store."""
    t0 = time.perf_counter()
    store = ArtifactStore(store_root)
    device = pick_device(num_gpus).type
    if device != key.device or dtype != key.dtype:
        logger.warning("unedited evaluation on %s/%s, its key says %s/%s: computed, not stored", device, dtype,
                       key.device, key.dtype)
        return {**evaluate_checkpoint(model_path, {}, req, num_gpus, dtype), "reused": False, "record": None,
                "key": None}
    got = store.get_valid(key, ROWS)  # None: not stored, or corrupt (then deleted)
    if got is not None:
        out, record = got
        return {**out, "timings": {"metrics": time.perf_counter() - t0, "probes": 0.0}, "reused": True,
                "record": None, "key": record.key}
    out = evaluate_checkpoint(model_path, {}, req, num_gpus, dtype)
    record = store.put(key, shared_form(out), ROWS)
    return {**out, "reused": False, "record": record.as_row(), "key": record.key}


def for_run(out: dict[str, Any], run_id: str) -> dict[str, Any]:
    """An evaluation's rows (metrics, probes, drift points) re-labelled for ``run_id`` (the unedited
    evaluation is shared by cells, and stored with no run id: :func:`shared_form`)."""
    return {**out, "metrics": [{**r, "run_id": run_id} for r in out["metrics"]],
            "probes": [{**r, "run_id": run_id} for r in out["probes"]],
            "drift_points": [{**r, "run_id": run_id} for r in out.get("drift_points", [])]}


def shared_form(out: dict[str, Any]) -> dict[str, Any]:
    """What the artifact store keeps of an unedited evaluation: its rows without the run id of the request
    that computed them (every cell relabels them) and without its timings, so the stored bytes depend only
    on the key. Two sweeps that compute one key at once then write the same file, and their results files'
    ``artifacts`` rows agree (``storage.merge`` skips the second)."""
    rows = for_run(out, "")
    return {k: rows[k] for k in ("metrics", "probes", "drift_points", "n_records")}
