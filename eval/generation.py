"""Batched, seeded top-k sampling: the reference's ``generate_fast`` for the fluency/consistency tests.

Each text is ``prompt + continuation`` with ``max_out_len`` tokens in total (prompt included, as in
the reference; a longer prompt is returned unchanged), sampled from the renormalized top-k
(default 5) next-token distribution, decoded with special tokens skipped, ``"\\n\\n"`` replaced by a
space (reference post-processing). The decoding is :func:`alphaedit.decoding.generate_ids` (left
padding, explicit position ids, a KV cache: one forward per new token per batch) with
:func:`alphaedit.decoding.top_k_sampler` as its next-token rule.

Reproducibility: the draws come from one CPU ``torch.Generator`` seeded with ``seed`` per call;
the samples depend on the seed, the prompt order and ``batch_size`` (and on logits ties).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from torch import Generator, nn

from alphaedit.decoding import generate_ids, top_k_sampler
from alphaedit.tokens import encode, pad_id


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
    prompt_ids = encode(tokenizer, prompts)
    budget = [max(0, max_out_len - len(ids)) for ids in prompt_ids]  # tokens each prompt may add
    generated = generate_ids(model, prompt_ids, budget, top_k_sampler(top_k, Generator().manual_seed(seed)),
                             pad=pad_id(tokenizer), batch_size=batch_size)
    texts = (tokenizer.decode(list(ids) + new, skip_special_tokens=True)
             for ids, new in zip(prompt_ids, generated, strict=True))
    return [unicodedata.normalize("NFKD", text).replace("\n\n", " ") for text in texts]
