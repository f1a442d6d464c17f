"""The work of a sweep as plain Python: statistics shards, the editor, checkpoint evaluation.

Nothing here imports Ray: :mod:`cluster.remote` wraps these with ``ray.remote(...)`` using the
resources from the sweep config, and unit tests call them in-process. Large values cross process
boundaries as numpy arrays (zero-copy through Ray's object store).
"""

from __future__ import annotations

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
    requests_from_counterfact,
    spec_for,
)
from alphaedit.state import restore_weights, snapshot_weights
from alphaedit.stats import compute_key_stats, key_budget

logger = logging.getLogger(__name__)

StatsArrays = dict[int, tuple[np.ndarray, int]]  # layer -> (Σ k kᵀ float64, key count)


def pick_device(num_gpus: float) -> torch.device:
    """The device of a worker: CUDA when it was given a GPU and one is visible, else CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    if num_gpus > 0:
        logger.warning("worker was given %.2f GPU but CUDA is not available; running on CPU", num_gpus)
    return torch.device("cpu")


def load_model(path: str, device: torch.device, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from an HF id or local path, on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return model, tok


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
    )
    return {layer: (acc.sum_kkT.cpu().numpy(), acc.count) for layer, acc in stats.items()}


def merge_shards(shards: Sequence[StatsArrays]) -> dict[int, SecondMoment]:
    """Exact merge of shard arrays (sums and counts add), through :func:`alphaedit.merge_stats`."""
    return merge_stats(
        {layer: SecondMoment(torch.from_numpy(np.array(sum_kkT, dtype=np.float64)), int(count))
         for layer, (sum_kkT, count) in shard.items()}
        for shard in shards
    )


# --- the editor -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellStart:
    """What the editor needs to begin one run cell."""

    run_id: str
    method: str
    hparams: dict[str, Any]
    seed: int


class EditorWorker:
    """Holds one model, its preservation statistics and the edit state of the current run cell.

    The base weights are snapshotted once; :meth:`start_cell` restores them before a new cell,
    so cells of the same model run one after the other on one copy of the model.
    """

    def __init__(self, model_path: str, stats: Mapping[int, tuple[np.ndarray, int]], num_gpus: float = 0.0,
                 dtype: str = "float32") -> None:
        self.device = pick_device(num_gpus)
        self.model, self.tokenizer = load_model(model_path, self.device, dtype)
        self.spec = spec_for(self.model)
        self.stats = merge_shards([dict(stats)])
        self._base: dict[str, torch.Tensor] | None = None
        self.editor: Editor | None = None
        self.run_id: str | None = None
        self.projector_ranks: dict[int, float] = {}
        logger.info("editor worker for %s on %s", model_path, self.device)

    def start_cell(self, cell: CellStart) -> dict[str, Any]:
        hp = EditHparams.from_dict(cell.hparams)
        names = [self.spec.weight_name(layer) for layer in hp.layers]
        if self._base is None or set(self._base) != set(names):
            if self._base is not None:
                restore_weights(self.model, self._base)
            self._base = snapshot_weights(self.model, names)
        restore_weights(self.model, self._base)
        torch.manual_seed(cell.seed)
        missing = set(hp.layers) - set(self.stats)
        if missing:
            raise ValueError(f"{cell.run_id}: no key statistics for layers {sorted(missing)}")
        t0 = time.perf_counter()
        self.editor = Editor(self.model, self.tokenizer, hp, cell.method,
                             stats={layer: self.stats[layer] for layer in hp.layers}, spec=self.spec)
        self.run_id = cell.run_id
        info: dict[str, Any] = {"setup_seconds": time.perf_counter() - t0}
        if self.editor.projectors is not None:
            info["projector_kept"] = {int(layer): kept_fraction(p) for layer, p in self.editor.projectors.items()}
        return info

    def edit(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Edit one batch of CounterFact-format records; return the batch report as a dict."""
        if self.editor is None:
            raise RuntimeError("EditorWorker.edit before start_cell")
        requests = requests_from_counterfact(list(records))
        report = self.editor.edit(requests)
        for name, delta in self.editor.state.deltas.items():
            if not torch.isfinite(delta).all():
                raise FloatingPointError(f"{self.run_id}: the update of {name} contains NaN/Inf")
        return {"n_requests": report.n_requests, "edits_done": report.n_edits_total,
                "seconds": report.seconds, "mean_target_loss": report.mean_target_loss}

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


_MODEL_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def cached_model(path: str, device: torch.device, dtype: str) -> tuple[Any, Any]:
    """One (model, tokenizer) per (path, device, dtype) per worker process (the key is complete)."""
    key = (path, str(device), dtype)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_model(path, device, dtype)
    return _MODEL_CACHE[key]


def evaluate_checkpoint(model_path: str, deltas: Mapping[str, np.ndarray], req: EvalRequest,
                        num_gpus: float = 0.0, dtype: str = "float32") -> dict[str, Any]:
    """Rewrite metrics and lm-eval probes of base + ``deltas``; rows ready for the writer.

    The base weights are restored afterwards (``eval.edited.edited_weights``), so a worker can
    keep its model loaded across checkpoints.
    """
    from eval.datasets import CounterFactRecord, ZsreRecord, load_attribute_snippets, load_tfidf
    from eval.edited import edited_weights
    from eval.probes import resolve_tasks, run_probes
    from eval.rewrite import counterfact_metrics, zsre_metrics

    t0 = time.perf_counter()
    model, tok = cached_model(model_path, pick_device(num_gpus), dtype)
    torch_deltas = {name: torch.from_numpy(np.array(d)) for name, d in deltas.items()}
    metric_rows: list[dict[str, Any]] = []
    probe_rows: list[dict[str, Any]] = []
    with edited_weights(model, torch_deltas):
        if req.dataset == "counterfact":
            records = [CounterFactRecord.from_json(r) for r in req.records]
            rows = counterfact_metrics(model, tok, records, generation=False)
            if req.generation_records > 0:
                snippets = load_attribute_snippets(req.snippets_source) if req.snippets_source else None
                vectorizer = load_tfidf(*req.tfidf_sources) if req.tfidf_sources else None
                gen_rows = counterfact_metrics(
                    model, tok, records[: req.generation_records], snippets=snippets, vectorizer=vectorizer,
                    generation=True, seed=req.seed,
                )
                rows += [r for r in gen_rows if r.metric in ("fluency", "consistency")]
        else:
            rows = zsre_metrics(model, tok, [ZsreRecord.from_json(r, int(r.get("case_id", i)))
                                             for i, r in enumerate(req.records)])
        t_metrics = time.perf_counter() - t0
        for row in rows:
            metric_rows.append({"run_id": req.run_id, "edits_done": req.edits_done, "dataset": row.dataset,
                                "metric": row.metric, "value": row.value, "n_cases": row.n_cases})
        if req.probe_tasks:
            for p in run_probes(model, tok, resolve_tasks(list(req.probe_tasks)), limit=req.probe_limit,
                                batch_size=req.probe_batch_size):
                probe_rows.append({"run_id": req.run_id, "edits_done": req.edits_done, "task": p.task,
                                   "metric": p.metric, "value": p.value})
    seconds = time.perf_counter() - t0
    return {"metrics": metric_rows, "probes": probe_rows,
            "timings": {"metrics": t_metrics, "probes": seconds - t_metrics}, "n_records": len(req.records)}
