"""The tree-packed scoring (shared prompts and prefixes, output layer only where a target is read)
equals one plain forward per (prompt, target) pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import tiny_model, tiny_tokenizer  # noqa: E402

from alphaedit.scoring import score_targets  # noqa: E402

PROMPTS = [
    "Anna Varo was born in", "Anna Varo was born in", "The city of", "The city of Paris", "Hugo Wick works as a",
    "Anna Varo was born in", "The city of", "Clara Marsh lives in", "Clara Marsh lives in the city of",
]
TARGETS = [" Paris", " Berlin is large", " Rome", " is large", " pilot", " Paris", " Rome", " Oslo and",
           " Vienna"]


def per_pair_reference(model, tok, prompts, targets):
    """The previous implementation's numbers: one full forward of prompt + target per pair."""
    nll, correct = [], []
    with torch.no_grad():
        for p, t in zip(prompts, targets, strict=True):
            p_ids = tok(p).input_ids
            t_ids = tok(t, add_special_tokens=False).input_ids
            logits = model(torch.tensor([p_ids + t_ids]), use_cache=False).logits[0]
            logp = torch.log_softmax(logits[len(p_ids) - 1 : len(p_ids) - 1 + len(t_ids)].float(), -1)
            tgt = torch.tensor(t_ids)
            nll.append(-logp[torch.arange(len(t_ids)), tgt])
            correct.append(logp.argmax(-1) == tgt)
    return nll, correct


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen3"])
@pytest.mark.parametrize("row_tokens,max_tokens", [(256, 8192), (6, 12)])  # (6, 12): sub-trees split, 2 rows a batch
def test_scores_equal_per_pair_forwards(tok, model_type, row_tokens, max_tokens):
    model = tiny_model(model_type, len(tok))
    ref_nll, ref_correct = per_pair_reference(model, tok, PROMPTS, TARGETS)
    got = score_targets(model, tok, PROMPTS, TARGETS, row_tokens=row_tokens, max_tokens=max_tokens, batch_size=3)
    assert len(got.token_nll) == len(PROMPTS)
    for i in range(len(PROMPTS)):
        assert got.token_nll[i].shape == ref_nll[i].shape
        assert torch.allclose(got.token_nll[i], ref_nll[i], atol=1e-5), (i, got.token_nll[i], ref_nll[i])
        assert torch.equal(got.token_correct[i], ref_correct[i])
        assert torch.isclose(got.nll[i], ref_nll[i].mean(), atol=1e-5)
        assert bool(got.argmax_correct[i]) == bool(ref_correct[i].all())


def test_argmax_target_is_correct_and_shapes(tok):
    model = tiny_model("llama", len(tok))
    prompt = "Anna Varo was born in"
    with torch.no_grad():
        top = int(model(torch.tensor([tok(prompt).input_ids])).logits[0, -1].argmax())
    target = tok.decode([top])
    got = score_targets(model, tok, [prompt, prompt], [target, " Paris"])
    assert bool(got.argmax_correct[0])
    assert got.token_nll[0].shape == (len(tok(target, add_special_tokens=False).input_ids),)
    with pytest.raises(ValueError, match="pairs"):
        score_targets(model, tok, [prompt], [target, " Paris"])


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_bf16_scoring_is_close_and_restores_the_weights(tok, model_type):
    model = tiny_model(model_type, len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    exact = score_targets(model, tok, PROMPTS, TARGETS)
    low = score_targets(model, tok, PROMPTS, TARGETS, dtype="bfloat16")
    assert float((low.nll - exact.nll).abs().max()) < 0.05
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n


def test_no_pairs(tok):
    got = score_targets(tiny_model("gpt2", len(tok)), tok, [], [])
    assert got.nll.shape == (0,) and got.token_nll == []
