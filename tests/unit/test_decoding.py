"""The one decoding loop (alphaedit.decoding) and its two callers: greedy_continuations and sample_top_k.

The pinned token ids are the outputs of the two loops as they stood before they were merged into
one (greedy without a KV cache in alphaedit/api.py, sampling with one in eval/generation.py), on
tiny seeded models and the toy world: the merge must not change a single token.
"""

from __future__ import annotations

import pytest
import torch

from alphaedit.api import greedy_continuations
from alphaedit.decoding import argmax_token, decode_batch, generate_ids, top_k_sampler
from alphaedit.tokens import encode, pad_id
from eval.generation import sample_top_k
from tests.unit.test_core_support import tiny_model, tiny_tokenizer, toy_world, toy_world_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Anna Varo was born in", "The city of Paris", "Boris Quill works as a doctor and lives in",
           "Clara"]

# greedy_continuations(model, tok, PROMPTS, max_new_tokens=6, batch_size=3): the new tokens of each prompt
PINNED_GREEDY = {
    "gpt2": [[94, 94, 2, 2, 271, 252], [99, 99, 99, 99, 7, 7], [138, 138, 138, 138, 138, 138],
             [65, 65, 65, 65, 65, 65]],
    "llama": [[53, 247, 3, 181, 30, 121], [186, 151, 186, 186, 186, 186], [174, 242, 351, 367, 189, 190],
              [309, 371, 294, 294, 366, 272]],
}
# sample_top_k(model, tok, PROMPTS, max_out_len=12, top_k=5, seed=3, batch_size=3): prompt + sample ids
# (the third prompt has 14 tokens, more than max_out_len, and comes back unchanged)
PINNED_SAMPLE = {
    "gpt2": [[33, 301, 353, 285, 291, 263, 94, 94, 90, 138, 138, 334],
             [52, 267, 290, 280, 319, 99, 146, 12, 12, 165, 165, 221],
             [34, 347, 221, 49, 85, 73, 315, 286, 281, 257, 359, 282, 292, 263],
             [35, 76, 259, 65, 65, 146, 27, 2, 2, 2, 112, 112]],
    "llama": [[33, 301, 353, 285, 291, 263, 53, 247, 269, 73, 213, 197],
              [52, 267, 290, 280, 319, 186, 145, 357, 267, 186, 186, 145],
              [34, 347, 221, 49, 85, 73, 315, 286, 281, 257, 359, 282, 292, 263],
              [35, 76, 259, 65, 309, 392, 285, 371, 165, 179, 256, 367]],
}
# the toy world, the first 5 CounterFact prompts: greedy (5 new tokens, batch 2) and sampling (16 in total,
# top 5, seed 0, batch 2)
PINNED_TOY_GREEDY = [[1045, 1046, 14, 4066, 427], [1019, 1165, 1165, 1165, 1165], [1002, 422, 1002, 422, 920],
                     [661, 14, 906, 317, 1122], [803, 14, 7208, 266, 716]]
PINNED_TOY_SAMPLE = [
    [950, 4066, 457, 360, 1045, 1046, 14, 4066, 427, 364, 317, 1174, 12, 279, 371, 264],
    [992, 5298, 505, 514, 279, 425, 317, 1019, 1165, 1165, 14, 5298, 266, 278, 293, 264],
    [824, 5697, 427, 364, 374, 1002, 422, 1002, 422, 920, 14, 5697, 1242, 1243, 279, 1414],
    [966, 5363, 522, 278, 518, 523, 394, 661, 14, 906, 317, 1122, 12, 5885, 907, 278],
    [1052, 7208, 522, 278, 518, 523, 394, 803, 14, 7208, 457, 360, 1087, 1086, 14, 604],
]


def _decoded(tok, rows: list[list[int]]) -> list[str]:
    return [tok.decode(row, skip_special_tokens=True) for row in rows]


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_both_callers_reproduce_the_pinned_tokens_of_the_two_former_loops(model_type: str) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(model_type, len(tok), seed=1)
    prompt_ids = encode(tok, PROMPTS)
    greedy = generate_ids(model, prompt_ids, [6] * len(PROMPTS), argmax_token, pad=pad_id(tok), batch_size=3)
    assert greedy == PINNED_GREEDY[model_type]
    assert greedy_continuations(model, tok, PROMPTS, max_new_tokens=6, batch_size=3) == _decoded(tok, greedy)
    budget = [max(0, 12 - len(ids)) for ids in prompt_ids]
    sampled = generate_ids(model, prompt_ids, budget, top_k_sampler(5, torch.Generator().manual_seed(3)),
                           pad=pad_id(tok), batch_size=3)
    assert [ids + new for ids, new in zip(prompt_ids, sampled, strict=True)] == PINNED_SAMPLE[model_type]
    texts = sample_top_k(model, tok, PROMPTS, max_out_len=12, top_k=5, seed=3, batch_size=3)
    assert texts == [t.replace("\n\n", " ") for t in _decoded(tok, PINNED_SAMPLE[model_type])]


@pytest.mark.skipif(not toy_world_available(), reason="toy world artifacts not built (make toyworld)")
def test_toy_world_generations_are_the_pinned_ones() -> None:
    model, tok, records, _ = toy_world()
    prompts = [r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"])
               for r in records[:5]]
    greedy = greedy_continuations(model, tok, prompts, max_new_tokens=5, batch_size=2)
    assert greedy == _decoded(tok, PINNED_TOY_GREEDY)
    texts = sample_top_k(model, tok, prompts, max_out_len=16, top_k=5, seed=0, batch_size=2)
    assert texts == _decoded(tok, PINNED_TOY_SAMPLE)


def test_cached_greedy_equals_argmax_of_full_forwards_on_the_unpadded_prompt() -> None:
    """The KV cache, the left padding and the position ids change nothing: each prompt's greedy tokens
    equal those of re-running the whole unpadded sequence every step."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), seed=2, init_range=0.5)
    prompt_ids = encode(tok, PROMPTS)
    cached = decode_batch(model, prompt_ids, 5, argmax_token, pad=pad_id(tok))  # (4, 5), one batch
    for ids, row in zip(prompt_ids, cached.tolist(), strict=True):
        seq = list(ids)
        with torch.no_grad():
            for _ in range(5):
                seq.append(int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
        assert row == seq[len(ids):]


def test_each_prompt_keeps_its_own_budget_and_train_mode_is_restored() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=1).train()
    prompt_ids = encode(tok, PROMPTS)
    out = generate_ids(model, prompt_ids, [3, 0, 5, 1], argmax_token, pad=pad_id(tok), batch_size=2)
    assert [len(row) for row in out] == [3, 0, 5, 1]
    assert model.training
    full = generate_ids(model, prompt_ids, [5] * 4, argmax_token, pad=pad_id(tok), batch_size=4)
    # greedy: a shorter run is a prefix of a longer one
    assert [row[:n] for row, n in zip(full, [3, 0, 5, 1], strict=True)] == out
    none = generate_ids(model, prompt_ids[:2], [0, 0], argmax_token, pad=pad_id(tok), batch_size=2)
    assert none == [[], []]


def test_top_k_sampler_draws_only_among_the_top_k() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]]).repeat(200, 1)  # (200, 5)
    draws = top_k_sampler(2, torch.Generator().manual_seed(0))(logits)
    assert set(draws.tolist()) == {1, 2}
    assert top_k_sampler(1, torch.Generator().manual_seed(0))(logits).tolist() == [1] * 200


def test_bad_arguments_are_named() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=1)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        top_k_sampler(0, torch.Generator())
    with pytest.raises(ValueError, match="2 prompts but 1 max_new"):
        generate_ids(model, [[1, 2], [3]], [4], argmax_token, pad=0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        generate_ids(model, [[1, 2]], [4], argmax_token, pad=0, batch_size=0)
