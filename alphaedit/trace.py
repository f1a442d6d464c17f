"""Causal tracing of MLP states (ROME, Meng et al. 2022, Sec. 2.1): where does a model recall a fact?

For a prompt about subject s with true answer o: the *corrupted* run adds Gaussian noise (std
``noise_scale`` x the spread of the embedding rows) to the embeddings of the subject's tokens, which
lowers p(o). The *restored* run is the corrupted one with the MLP output of a window of layers,
at the subject's last token, set back to its clean value. The indirect effect of layer l is
p_restored(o) - p_corrupted(o): how much of the recall a clean MLP state there brings back. The
layers with the largest effect at the subject's last token are where MEMIT/AlphaEdit edit (the
paper's Llama-3 layers 4-8 come from such a trace).

One forward evaluates every layer for one fact: the batch holds ``n_noise`` corrupted rows per
restored window (plus ``n_noise`` unrestored rows), and each MLP's hook patches only the rows whose
window contains it. The LM head runs at the last position only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.models import ModelSpec, get_module, n_layers


@dataclass(frozen=True)
class TraceResult:
    p_clean: float  # p(o) of the clean run
    p_corrupt: float  # mean p(o) over the corrupted runs
    p_restored: torch.Tensor  # (n_layers,) mean p(o) with the MLP window centred on layer l restored

    @property
    def indirect_effect(self) -> torch.Tensor:
        return self.p_restored - self.p_corrupt


def mlp_name(spec: ModelSpec, layer: int) -> str:
    """The MLP module of ``layer`` (the parent of the edited projection)."""
    return spec.mlp_out_name(layer).rsplit(".", 1)[0]


def embedding_noise_std(model: nn.Module) -> float:
    """The mean per-dimension std of the input embedding rows (ROME scales its noise by this)."""
    return float(model.get_input_embeddings().weight.detach().float().std(dim=0).mean())


@torch.no_grad()
def trace_fact(
    model: nn.Module,
    spec: ModelSpec,
    input_ids: torch.Tensor,  # (T,) prompt tokens
    subject_span: tuple[int, int],  # [start, end) token positions of the subject
    target_id: int,  # first token of the true answer
    noise_std: float,
    window: int = 5,
    n_noise: int = 4,
    seed: int = 0,
) -> TraceResult:
    depth = n_layers(model, spec)
    start, end = subject_span
    last = end - 1
    device = input_ids.device
    ids = input_ids.unsqueeze(0)
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model

    def next_token_probs(hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, vocab) at the last position
        h = get_module(model, spec.final_norm)(hidden[:, -1])
        return torch.softmax(get_module(model, spec.lm_head)(h).float(), dim=-1)

    clean_mlp: dict[int, torch.Tensor] = {}
    handles = []

    def record(layer: int):
        def hook(_m, _a, out):
            clean_mlp[layer] = out[0, last].clone()
        return hook

    try:
        handles = [get_module(model, mlp_name(spec, layer)).register_forward_hook(record(layer))
                   for layer in range(depth)]
        p_clean = float(next_token_probs(body(input_ids=ids).last_hidden_state)[0, target_id])
    finally:
        for h in handles:
            h.remove()

    # Rows: n_noise unrestored, then n_noise per window centre l = 0..depth-1.
    n_rows = n_noise * (depth + 1)
    emb = model.get_input_embeddings()(ids).expand(n_rows, -1, -1).clone()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((n_noise, end - start, emb.shape[-1]), generator=gen) * noise_std
    emb[:, start:end] += noise.to(emb.dtype).to(device).repeat(depth + 1, 1, 1)
    rows_of: dict[int, list[int]] = {layer: [] for layer in range(depth)}
    for centre in range(depth):
        lo, hi = max(0, centre - window // 2), min(depth, centre - window // 2 + window)
        for layer in range(lo, hi):
            rows_of[layer] += list(range(n_noise * (centre + 1), n_noise * (centre + 2)))

    def patch(layer: int):
        rows = torch.tensor(rows_of[layer], device=device)

        def hook(_m, _a, out):
            if len(rows):
                out[rows, last] = clean_mlp[layer].to(out.dtype)
            return out
        return hook

    try:
        handles = [get_module(model, mlp_name(spec, layer)).register_forward_hook(patch(layer))
                   for layer in range(depth)]
        p = next_token_probs(body(inputs_embeds=emb).last_hidden_state)[:, target_id]  # (n_rows,)
    finally:
        for h in handles:
            h.remove()
    p = p.view(depth + 1, n_noise).mean(dim=1).cpu()
    return TraceResult(p_clean=p_clean, p_corrupt=float(p[0]), p_restored=p[1:])
