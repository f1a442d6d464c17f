"""Batched, teacher-forced log-probabilities of target strings after prompts.

``score_targets(model, tokenizer, prompts, targets)`` scores pair i = (prompts[i], targets[i]):
the input is tokens(prompt) (special tokens as the tokenizer adds them, e.g. Llama's BOS) followed by
tokens(target) (no special tokens), right-padded, one forward per batch of pairs. For each pair it
returns the per-token NLL of the target tokens, their mean (the CounterFact probability test compares
these means: efficacy is mean NLL(true) > mean NLL(new)), and whether every target token is the
argmax (the CounterFact "acc" / zsRE token-accuracy building block).

Targets are used verbatim: pass " Paris" (with the leading space) where the prompt ends before the
answer word, as CounterFact's "prompt + ' ' + target" does. For a cross product of prompts and
targets, build the pairs with :func:`cross_pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.tokens import encode, model_device, pad_id, right_pad


@dataclass(frozen=True)
class TargetScores:
    nll: torch.Tensor  # (n,) float32, mean NLL (nats) over each target's tokens
    token_nll: list[torch.Tensor]  # n tensors (|target_i|,) float32
    argmax_correct: torch.Tensor  # (n,) bool: every target token is the greedy prediction
    token_correct: list[torch.Tensor]  # n tensors (|target_i|,) bool

    @property
    def prob(self) -> torch.Tensor:
        """exp(-mean NLL): the geometric-mean token probability."""
        return torch.exp(-self.nll)


def cross_pairs(prompts: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """All (prompt, target) pairs, prompt-major: for scoring every target after every prompt."""
    return [p for p in prompts for _ in targets], [t for _ in prompts for t in targets]


@torch.no_grad()
def score_targets(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 64,
) -> TargetScores:
    """Teacher-forced NLL and argmax-correctness of ``targets[i]`` after ``prompts[i]``."""
    if len(prompts) != len(targets):
        raise ValueError(f"score_targets: {len(prompts)} prompts but {len(targets)} targets; pass pairs "
                         "(see cross_pairs for a cross product)")
    prompt_ids = encode(tokenizer, prompts)
    target_ids = encode(tokenizer, targets, add_special_tokens=False)
    for i, ids in enumerate(target_ids):
        if not ids:
            raise ValueError(f"score_targets: target {i} ({targets[i]!r}) tokenizes to no tokens")
    device = model_device(model)
    pad = pad_id(tokenizer)
    token_nll: list[torch.Tensor] = []
    token_correct: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            p_ids = prompt_ids[start : start + batch_size]
            t_ids = target_ids[start : start + batch_size]
            input_ids, mask = right_pad([p + t for p, t in zip(p_ids, t_ids, strict=True)], pad, device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # (b, seq, V)
            for row, (p, t) in enumerate(zip(p_ids, t_ids, strict=True)):
                pos = torch.arange(len(p) - 1, len(p) - 1 + len(t), device=device)
                logp = torch.log_softmax(logits[row, pos].float(), dim=-1)  # (|t|, V)
                tgt = torch.tensor(t, device=device)
                token_nll.append(-logp.gather(1, tgt[:, None])[:, 0].cpu())
                token_correct.append((logp.argmax(-1) == tgt).cpu())
    finally:
        model.train(was_training)
    nll = torch.stack([x.mean() for x in token_nll]) if token_nll else torch.zeros(0)
    correct = torch.stack([x.all() for x in token_correct]) if token_correct else torch.zeros(0, dtype=torch.bool)
    return TargetScores(nll=nll, token_nll=token_nll, argmax_correct=correct, token_correct=token_correct)
