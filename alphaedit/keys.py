"""Keys K1 (template-averaged MLP-projection inputs at the subject's last token) and block outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.hooks import cache_kwargs, cached_kv, capture, fill_kv_cache, new_kv_cache, run_until_stopped
from alphaedit.models import ModelSpec
from alphaedit.prompts import SubjectPrompt, request_prompts, subject_prompts
from alphaedit.requests import EditRequest
from alphaedit.templates import Templates, flat_templates
from alphaedit.tokens import model_device, pad_id, right_pad


@dataclass(frozen=True)
class SubjectReps:
    keys: dict[int, torch.Tensor]  # layer -> (u, d_k) float32, template-averaged keys
    block_out: torch.Tensor | None  # (u, d_model) float32: block-L output on the bare prompt
    bare_keys: dict[int, torch.Tensor] | None = None  # layer -> (u, d_k) float32, key of the bare prompt (ROME)


@torch.no_grad()
def subject_representations(
    model: nn.Module,
    tokenizer,
    spec: ModelSpec,
    requests: Sequence[EditRequest],
    templates: Templates,
    key_layers: Sequence[int],
    block_layer: int | None = None,
    batch_rows: int = 512,
    fact_token: str = "subject_last",
) -> SubjectReps:
    """Keys at ``key_layers`` and the block output at ``block_layer``, from one pass per row batch.

    Key of request r (reference ``compute_ks``): the input of the edited projection at the subject's
    last token, averaged within each template group, then over groups (k = ½ k_bare + ½ mean_5 k_pre).
    The block output is taken on the bare prompt (first template, "{}"). The forward stops after the
    deepest module needed: the bare prompts run to ``block_layer``, the other rows only to the deepest
    key layer.
    """
    flat = flat_templates(templates)
    if flat[0] != "{}":
        raise ValueError("subject_representations: the first context template must be the bare '{}'")
    n_tmpl, u = len(flat), len(requests)
    key_layers = sorted(set(key_layers))
    prompts = subject_prompts(tokenizer, request_prompts(requests, flat), [r.subject for r in requests for _ in flat],
                              fact_token)
    device = model_device(model)
    pad = pad_id(tokenizer)
    key_names = [spec.mlp_out_name(layer) for layer in key_layers]
    block_names = [] if block_layer is None else [spec.block_name(block_layer)]
    deepest = max(key_layers + ([block_layer] if block_layer is not None else []))
    stop = spec.block_name(deepest) if block_layer == deepest else spec.mlp_out_name(deepest)

    # Only the bare prompts' block output is read, so the other rows stop after the deepest key
    # module (reference compute_ks/compute_z read the same values from full-depth passes). The rows
    # of one context template share its tokens ("<sampled text>. "): they are computed once per
    # template and the rows continue from that KV cache.
    key_stop = spec.mlp_out_name(max(key_layers))
    bare = list(range(0, len(prompts), n_tmpl))
    parts = [(bare, block_names, stop, False)]
    parts += [(list(range(j, len(prompts), n_tmpl)), [], key_stop, True) for j in range(1, n_tmpl)]
    per_row: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for index, outs, last, shared in parts:
            got = _captured_at_lookup(model, [prompts[i] for i in index], key_names, outs, last, pad, device,
                                      batch_rows, shared_prefix=shared)
            at = torch.as_tensor(index, dtype=torch.long)
            for name, values in got.items():
                if name not in per_row:
                    per_row[name] = values.new_zeros((len(prompts), values.shape[1]))
                per_row[name][at] = values
    finally:
        model.train(was_training)

    group_slices, offset = [], 0
    for group in templates:
        group_slices.append(slice(offset, offset + len(group)))
        offset += len(group)
    keys, bare_keys = {}, {}
    for layer, name in zip(key_layers, key_names, strict=True):
        k = per_row["in:" + name].view(u, n_tmpl, -1)  # (u, T, d_k)
        keys[layer] = torch.stack([k[:, s].mean(1) for s in group_slices]).mean(0)  # (u, d_k)
        bare_keys[layer] = k[:, 0]  # (u, d_k)
    block_out = None
    if block_names:
        block_out = per_row["out:" + block_names[0]].view(u, n_tmpl, -1)[:, 0]  # (u, d_model), bare prompt
    return SubjectReps(keys=keys, block_out=block_out, bare_keys=bare_keys)


def _captured_at_lookup(model: nn.Module, prompts: Sequence[SubjectPrompt], inputs_of: Sequence[str],
                        outputs_of: Sequence[str], stop: str, pad: int, device: torch.device, batch_rows: int,
                        shared_prefix: bool = False) -> dict[str, torch.Tensor]:
    """"in:<name>" / "out:<name>" -> (len(prompts), d) float32 at each prompt's lookup token.

    ``shared_prefix``: the tokens every prompt starts with (up to the first lookup) run once, and each
    row runs only its own tokens on a copy of that KV cache (explicit position ids and mask).
    """
    ids = [p.ids for p in prompts]
    n_prefix = min(_common_prefix_len(ids), min(p.lookup for p in prompts)) if shared_prefix else 0
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if n_prefix >= 2:
        cache = new_kv_cache(model)
        head = torch.tensor([ids[0][:n_prefix]], device=device)
        with capture(model, stop_after=stop):
            run_until_stopped(model, head, torch.ones_like(head), **cache_kwargs(model, cache))
        kv = {layer: cached_kv(cache, layer) for layer in range(_n_cached(cache))}
    else:
        n_prefix = 0
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_rows):
        chunk = prompts[start : start + batch_rows]
        input_ids, mask = right_pad([p.ids[n_prefix:] for p in chunk], pad, device)
        rows = torch.arange(len(chunk), device=device)
        cols = torch.tensor([p.lookup - n_prefix for p in chunk], device=device)
        extra: dict[str, object] = {}
        if kv:
            b = len(chunk)
            extra = cache_kwargs(model, fill_kv_cache(model, {
                layer: (k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous())
                for layer, (k, v) in kv.items()}))
            mask = torch.cat([mask.new_ones((b, n_prefix)), mask], dim=1)
            extra["position_ids"] = (n_prefix + torch.arange(input_ids.shape[1], device=device)).expand(b, -1)
        with capture(model, inputs_of=inputs_of, outputs_of=outputs_of, stop_after=stop) as store:
            run_until_stopped(model, input_ids, mask, **extra)
        for key in [f"in:{n}" for n in inputs_of] + [f"out:{n}" for n in outputs_of]:
            out.setdefault(key, []).append(store[key][rows, cols].float())
    return {key: torch.cat(values) for key, values in out.items()}


def _common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def _n_cached(cache: object) -> int:
    """Layers of an HF cache that hold keys (the prefix forward stops early, so the deeper ones are empty)."""
    n = 0
    while True:
        try:
            keys, _ = cached_kv(cache, n)
        except (IndexError, AttributeError):
            return n
        if keys is None or keys.numel() == 0:
            return n
        n += 1
