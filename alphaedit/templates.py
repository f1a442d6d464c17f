"""Context templates (prefix augmentation): 1 bare template + short prefixes sampled from the model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from alphaedit.tokens import encode, model_device

logger = logging.getLogger(__name__)

Templates = list[list[str]]  # groups of templates, each containing one "{}" for the request prompt


@torch.no_grad()
def sample_context_templates(
    model: nn.Module,
    tokenizer,
    prefixes: Sequence[str] = ("The", "Therefore", "Because", "I", "You"),
    samples_per_prefix: int = 1,
    length: int = 10,
    top_k: int = 5,
    seed: int = 0,
) -> Templates:
    """``[["{}"], [g_1 + ". {}", ...]]`` with g_j a top-k sample continuing each prefix.

    Each sample has ``length`` tokens in total, prompt (and BOS) included, as in the reference.
    Sampling draws from a CPU ``torch.Generator`` seeded with ``seed``, so the templates are
    reproducible across runs and devices (up to logits ties). Braces are replaced by spaces.
    """
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    was_training = model.training
    model.eval()
    sampled: list[str] = []
    try:
        for prefix in prefixes:
            prompt_ids = encode(tokenizer, [prefix])[0]
            for _ in range(samples_per_prefix):
                ids = list(prompt_ids)
                while len(ids) < length:
                    logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits
                    top = logits[0, -1].float().cpu().topk(top_k)  # (top_k,)
                    choice = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=generator)
                    ids.append(int(top.indices[choice]))
                text = tokenizer.decode(ids, skip_special_tokens=True)
                sampled.append(text.replace("{", " ").replace("}", " ") + ". {}")
    finally:
        model.train(was_training)
    templates = [["{}"], sampled]
    logger.info("context templates (seed %d): %s", seed, templates)
    return templates


def flat_templates(templates: Templates) -> list[str]:
    return [t for group in templates for t in group]
