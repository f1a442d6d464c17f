"""Batched, seeded top-k sampling: the reference's ``generate_fast`` for the fluency/consistency tests.

Each text is ``prompt + continuation`` with ``max_out_len`` tokens in total (prompt included, as in
the reference; a longer prompt is returned unchanged), sampled from the renormalized top-k
(default 5) next-token distribution, decoded with special tokens skipped, ``"\\n\\n"`` replaced by a
space (reference post-processing). Prompts are left-padded with explicit position ids and a KV
cache, so one forward per new token per batch.

Reproducibility: the draws come from one CPU ``torch.Generator`` seeded with ``seed`` per call;
the samples depend on the seed, the prompt order and ``batch_size`` (and on logits ties).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import torch
from torch import nn

from alphaedit.tokens import encode, left_pad, model_device, pad_id


@torch.no_grad()
def sample_top_k(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_out_len: int = 100,
    top_k: int = 5,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """One top-k sample per prompt, ``max_out_len`` tokens in total, returned as full texts."""
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        all_ids = encode(tokenizer, prompts)
        for start in range(0, len(all_ids), batch_size):
            batch = all_ids[start : start + batch_size]
            out.extend(_sample_batch(model, tokenizer, batch, max_out_len, top_k, generator, pad, device))
    finally:
        model.train(was_training)
    return out


def _sample_batch(model: nn.Module, tokenizer, batch: list[list[int]], max_out_len: int, top_k: int,
                  generator: torch.Generator, pad: int, device: torch.device) -> list[str]:
    n_new = max(0, max_out_len - min(len(ids) for ids in batch))
    input_ids, mask = left_pad(batch, pad)
    input_ids, mask = input_ids.to(device), mask.to(device)
    budget = torch.tensor([max(0, max_out_len - len(ids)) for ids in batch])  # (b,) tokens each may add
    new_tokens: list[torch.Tensor] = []
    past = None
    step_ids, positions = input_ids, (mask.cumsum(-1) - 1).clamp(min=0)  # (b, width)
    for _ in range(n_new):
        res = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                    use_cache=True)
        past = res.past_key_values
        top = res.logits[:, -1].float().topk(top_k, dim=-1)  # values/indices (b, k)
        probs = torch.softmax(top.values, dim=-1).cpu()  # (b, k)
        u = torch.rand(len(batch), 1, generator=generator)  # (b, 1)
        choice = (probs.cumsum(-1) < u).sum(-1).clamp(max=top_k - 1)  # (b,) inverse-CDF draw
        token = top.indices.cpu().gather(1, choice[:, None])  # (b, 1)
        new_tokens.append(token[:, 0])
        step_ids = token.to(device)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    generated = torch.stack(new_tokens, dim=1) if new_tokens else torch.zeros((len(batch), 0), dtype=torch.long)
    texts = []
    for i, ids in enumerate(batch):
        full = list(ids) + generated[i, : int(budget[i])].tolist()
        text = tokenizer.decode(full, skip_special_tokens=True)
        texts.append(unicodedata.normalize("NFKD", text).replace("\n\n", " "))
    return texts
