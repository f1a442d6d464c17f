"""One decoding loop for every generation in the project, with the next-token rule as an argument.

Prompts are left-padded (every row's last token at the last position) with explicit position ids
from the mask and a KV cache, so one forward per new token per batch. The rule maps the last
position's fp32 logits to each row's next token: :func:`argmax_token` (greedy, the editing API's
``target_true`` reading) or :func:`top_k_sampler` (the fluency/consistency texts of ``eval``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from alphaedit.hooks import cache_kwargs
from alphaedit.tokens import left_pad, model_device

NextToken = Callable[[torch.Tensor], torch.Tensor]
"""Logits of the last position (batch, vocab), fp32 on the model's device -> the next token of each row
(batch,), int64 on the CPU."""


def argmax_token(logits: torch.Tensor) -> torch.Tensor:
    """Greedy decoding: the most likely token of each row (the first on a tie)."""
    return logits.argmax(-1).cpu()  # (b,)


def top_k_sampler(top_k: int, generator: torch.Generator) -> NextToken:
    """Sampling from the renormalized top-``top_k`` distribution, one inverse-CDF draw per row from
    ``generator`` (a CPU generator; the draws depend on its state, the batch size and logits ties)."""
    if top_k < 1:
        raise ValueError(f"top_k_sampler: top_k must be at least 1, got {top_k}")

    def next_token(logits: torch.Tensor) -> torch.Tensor:
        top = logits.topk(top_k, dim=-1)  # values/indices (b, k)
        probs = torch.softmax(top.values, dim=-1).cpu()  # (b, k)
        u = torch.rand(logits.shape[0], 1, generator=generator)  # (b, 1)
        choice = (probs.cumsum(-1) < u).sum(-1).clamp(max=top_k - 1)  # (b,)
        return top.indices.cpu().gather(1, choice[:, None])[:, 0]  # (b,)

    return next_token


def _returned_cache(output: object) -> object:
    """The KV cache a forward returns: ``cache`` in transformers >= 5 (``past_key_values`` there is a
    deprecated alias that logs a warning on every read), ``past_key_values`` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@torch.no_grad()
def decode_batch(model: nn.Module, batch: Sequence[Sequence[int]], n_new: int, next_token: NextToken, *,
                 pad: int) -> torch.Tensor:
    """``n_new`` tokens after each prompt of ``batch`` (token ids), (b, n_new) int64 on the CPU.

    The model runs as it is (the caller decides train/eval mode); ``pad`` fills the left padding.
    """
    device = model_device(model)
    input_ids, mask = left_pad(batch, pad)
    step_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, width)
    cache = None
    new_tokens: list[torch.Tensor] = []
    for _ in range(n_new):
        res = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                    **cache_kwargs(model, cache))
        cache = _returned_cache(res)
        token = next_token(res.logits[:, -1].float())  # (b,)
        new_tokens.append(token)
        step_ids = token[:, None].to(device)  # (b, 1)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    if not new_tokens:
        return torch.zeros((len(batch), 0), dtype=torch.long)
    return torch.stack(new_tokens, dim=1)  # (b, n_new)


def generate_ids(model: nn.Module, prompt_ids: Sequence[Sequence[int]], max_new: Sequence[int],
                 next_token: NextToken, *, pad: int, batch_size: int) -> list[list[int]]:
    """The first ``max_new[i]`` generated tokens after ``prompt_ids[i]``, in eval mode, ``batch_size`` prompts
    at a time (each batch runs for the largest ``max_new`` in it; the model's train mode is restored)."""
    if len(prompt_ids) != len(max_new):
        raise ValueError(f"generate_ids: {len(prompt_ids)} prompts but {len(max_new)} max_new values")
    if batch_size < 1:
        raise ValueError(f"generate_ids: batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            batch, budget = prompt_ids[start : start + batch_size], max_new[start : start + batch_size]
            generated = decode_batch(model, batch, max(0, *budget), next_token, pad=pad)  # (b, n_new)
            out.extend(row[: max(0, n)] for row, n in zip(generated.tolist(), budget, strict=True))
    finally:
        model.train(was_training)
    return out
