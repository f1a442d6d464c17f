"""Key statistics E[k kᵀ] of the edited layers over a preservation corpus.

One forward pass per batch hooks the inputs of *all* edited projections and is aborted right after
the last of them, so the blocks above the last edited layer never run. Padding positions are
excluded. Each batch's Σ k kᵀ is formed in fp32 (``product_dtype``) and folded into an fp64 running
sum, which keeps 10^8-token sums exact to ~1e-16 relative per addition. The forward itself may run
in bf16 (``forward_dtype``; the keys are then bf16-rounded before their fp32 products). Accumulators of disjoint
shards merge exactly (sums and counts add), so distributed workers can compute shards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alphaedit.hooks import capture, cast_parameters, run_until_stopped
from alphaedit.models import ModelSpec, context_length, key_dim
from alphaedit.tokens import encode, model_device, pad_id, right_pad

logger = logging.getLogger(__name__)


@dataclass
class SecondMoment:
    """Running Σ k kᵀ (fp64, d_k x d_k) and the number of keys summed."""

    sum_kkT: torch.Tensor  # (d_k, d_k) float64
    count: int = 0
    chunk_rows: int = 1024  # keys per product before folding into the fp64 sum
    product_dtype: torch.dtype = torch.float32  # dtype of each chunk's kᵀk (float64: exact, slower)

    @classmethod
    def zeros(cls, d_k: int, device: torch.device | str | None = None,
              product_dtype: torch.dtype = torch.float32) -> SecondMoment:
        return cls(torch.zeros(d_k, d_k, dtype=torch.float64, device=device), 0, product_dtype=product_dtype)

    @property
    def d_k(self) -> int:
        return int(self.sum_kkT.shape[0])

    def add(self, keys: torch.Tensor) -> None:
        """Fold keys (n, d_k) in: Σ += kᵀk, formed in ``product_dtype`` per chunk of ``chunk_rows`` keys
        and summed in fp64, so the relative rounding error is bounded by one chunk's (<~1e-5 in fp32,
        ~1e-16 in fp64) and does not grow with the corpus size."""
        if keys.ndim != 2 or keys.shape[1] != self.d_k:
            raise ValueError(f"SecondMoment.add: expected keys of shape (n, {self.d_k}), got {tuple(keys.shape)}")
        if keys.shape[0] == 0:
            return
        feats = keys.detach().to(self.product_dtype)
        for start in range(0, feats.shape[0], self.chunk_rows):
            chunk = feats[start : start + self.chunk_rows]  # (<=chunk_rows, d_k)
            self.sum_kkT += (chunk.T @ chunk).to(device=self.sum_kkT.device, dtype=torch.float64)
        self.count += int(keys.shape[0])

    def merge(self, other: SecondMoment) -> SecondMoment:
        """A new accumulator holding both shards (exact: sums and counts add)."""
        if other.d_k != self.d_k:
            raise ValueError(f"cannot merge second moments of width {self.d_k} and {other.d_k}")
        return SecondMoment(self.sum_kkT + other.sum_kkT.to(self.sum_kkT.device), self.count + other.count,
                            self.chunk_rows, self.product_dtype)

    def mean(self) -> torch.Tensor:
        """E[k kᵀ] = Σ k kᵀ / count (d_k x d_k, float64): the matrix the threshold is defined on."""
        if self.count == 0:
            raise ValueError("SecondMoment.mean: no keys were accumulated (empty corpus?)")
        return self.sum_kkT / self.count


def merge_stats(shards: Iterable[dict[int, SecondMoment]]) -> dict[int, SecondMoment]:
    """Merge per-layer accumulators of several shards (same layers in each)."""
    merged: dict[int, SecondMoment] = {}
    for shard in shards:
        for layer, acc in shard.items():
            merged[layer] = acc if layer not in merged else merged[layer].merge(acc)
    return merged


def save_stats(stats: dict[int, SecondMoment], path: str | Path, metadata: dict | None = None) -> None:
    """Write ``{layer: SecondMoment}`` to one safetensors file (sums as fp64, counts in the header).

    The file is written to a temporary name and renamed, so readers never see a partial file.
    """
    path = Path(path)
    tensors = {f"layer.{layer}.sum_kkT": acc.sum_kkT.detach().cpu().contiguous() for layer, acc in stats.items()}
    header = {
        "format": "alphaedit.second_moment.v1",
        "counts": json.dumps({str(layer): acc.count for layer, acc in stats.items()}),
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)


def load_stats(path: str | Path) -> dict[int, SecondMoment]:
    """Read what :func:`save_stats` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != "alphaedit.second_moment.v1":
        raise ValueError(f"{path}: not an alphaedit second-moment file (format={header.get('format')!r})")
    counts = {int(k): int(v) for k, v in json.loads(header["counts"]).items()}
    tensors = load_file(str(path))
    return {layer: SecondMoment(tensors[f"layer.{layer}.sum_kkT"], counts[layer]) for layer in sorted(counts)}


def key_budget(model: nn.Module, spec: ModelSpec, layers: Sequence[int], multiplier: float | None) -> int | None:
    """FastMEMIT budget: ``ceil(multiplier * d_k)`` keys (d_k of the first edited layer), or None."""
    if multiplier is None:
        return None
    return math.ceil(multiplier * key_dim(model, spec, layers[0]))


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if text:
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def compute_key_stats(
    model: nn.Module,
    tokenizer,
    texts: Iterable[str],
    spec: ModelSpec,
    layers: Sequence[int],
    *,
    max_length: int | None = None,
    batch_size: int = 16,
    max_keys: int | None = None,
    accumulate_on: torch.device | str | None = "cpu",
    product_dtype: torch.dtype = torch.float32,
    forward_dtype: torch.dtype | str | None = None,
) -> dict[int, SecondMoment]:
    """Σ k kᵀ and the key count of every layer in ``layers`` over ``texts``, in one pass per batch.

    Each text is tokenized (special tokens included, e.g. Llama's BOS), truncated to
    ``max_length`` (None: the model's context, as the reference), right-padded in batches of
    ``batch_size``; padding positions are dropped.
    ``max_keys`` (FastMEMIT budget) stops after exactly that many keys per layer, in corpus order.
    ``accumulate_on``: device of the fp64 sums (None = the model's device). ``product_dtype``: dtype of
    each chunk's kᵀk before it is added to the fp64 sum (see :meth:`SecondMoment.add`).
    ``forward_dtype`` (e.g. ``"bfloat16"``, ``EditHparams.stats_dtype``): the model's weights are held
    in that dtype for the call (one cast, restored bit-exactly after); None: the model's own dtype.
    """
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        raise ValueError("compute_key_stats: no layers given")
    if max_length is None:
        max_length = context_length(model)
    device = model_device(model)
    acc_device = device if accumulate_on is None else torch.device(accumulate_on)
    stats = {layer: SecondMoment.zeros(key_dim(model, spec, layer), acc_device, product_dtype) for layer in layers}
    names = [spec.mlp_out_name(layer) for layer in layers]
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    remaining = max_keys
    n_docs = 0
    if isinstance(forward_dtype, str):
        if not isinstance(getattr(torch, forward_dtype, None), torch.dtype):
            raise ValueError(f"compute_key_stats: unknown forward_dtype {forward_dtype!r}; use e.g. 'bfloat16'")
        forward_dtype = getattr(torch, forward_dtype)
    cast = cast_parameters([model], forward_dtype) if forward_dtype is not None else contextlib.nullcontext()
    try:
        with cast:
            for batch in _batches(texts, batch_size):
                ids = encode(tokenizer, batch, max_length=max_length)
                ids = [row for row in ids if row]
                if not ids:
                    continue
                input_ids, mask = right_pad(ids, pad, device)
                with capture(model, inputs_of=names, stop_after=names[-1]) as store:
                    run_until_stopped(model, input_ids, mask)
                keep = mask.bool()  # (batch, seq)
                for layer, name in zip(layers, names, strict=True):
                    keys = store["in:" + name][keep]  # (n_tokens, d_k), padding excluded
                    if remaining is not None:
                        keys = keys[:remaining]
                    stats[layer].add(keys)
                n_docs += len(ids)
                if remaining is not None:
                    remaining -= min(remaining, int(keep.sum()))
                    if remaining == 0:
                        break
    finally:
        model.train(was_training)
    logger.info(
        "key statistics: %d documents, %d keys per layer, layers %s%s",
        n_docs, stats[layers[0]].count, layers, f" (budget {max_keys})" if max_keys is not None else "",
    )
    if max_keys is not None and stats[layers[0]].count < max_keys:
        logger.warning("key budget %d not reached: corpus ran out after %d keys", max_keys, stats[layers[0]].count)
    return stats
