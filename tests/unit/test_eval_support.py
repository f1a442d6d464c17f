"""Shared helpers for the eval tests (no tests here): a bigram LM with hand-set logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class BigramLM(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next-token distribution depends on the last token only.

    Every row not set by hand is all zeros (uniform). Accepts and ignores the HF keyword arguments
    the scorer and the sampler pass; returns an object with ``.logits`` (and ``past_key_values=None``).
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab_size, vocab_size))
        self.config = SimpleNamespace(n_positions=512)

    def set_next(self, token: int, logits: dict[int, float]) -> None:
        with torch.no_grad():
            for nxt, value in logits.items():
                self.table[token, nxt] = value

    def forward(self, input_ids: torch.Tensor, attention_mask=None, past_key_values=None, **_):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None)
