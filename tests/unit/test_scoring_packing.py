"""Row packing of the scorer's prefix tree (grouped pieces, one ancestor copy per piece) and the
oneDNN packed linears of the fp32 CPU path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import tiny_model, tiny_tokenizer  # noqa: E402
from test_speed_scoring import PROMPTS, TARGETS, per_pair_reference  # noqa: E402

from alphaedit.onednn import onednn_available, packed_linears  # noqa: E402
from alphaedit.scoring import _pack_rows, _Trie, score_targets  # noqa: E402

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def _trie(seqs):
    trie = _Trie()
    for s in seqs:
        trie.insert(s)
    return trie


def _check_rows(trie, rows, width):
    """Every node is computed, every row fits, every position sees exactly its ancestors' copies."""
    seen = set()
    for row in rows:
        assert len(row.nodes) <= width
        for pos, node in enumerate(row.nodes):
            seen.add(node)
            chain, n = [], node
            while n >= 0:
                chain.append(n)
                n = trie.parent[n]
            assert [row.nodes[k] for k in row.ancestors[pos]] == chain[::-1]
            assert row.ancestors[pos][-1] == pos
    assert seen == set(range(len(trie.token)))


def test_split_subtree_copies_its_ancestors_once_per_piece():
    # a shared 2-token head (10, 11) with 12 children of 3 tokens each: 38 nodes, too many for a row of 16
    seqs = [[10, 11, 100 + c, 200 + c, 300 + c] for c in range(12)]
    trie = _trie(seqs)
    width = 16
    rows = _pack_rows(trie, width)
    _check_rows(trie, rows, width)
    # the children are grouped: 14 free positions after the 2-token head hold 4 children each, so
    # 3 pieces (3 copies of the head) instead of one piece (and one copy) per child
    head = {trie.roots[10], trie.children[trie.roots[10]][11]}
    copies = sum(node in head for row in rows for node in row.nodes)
    assert copies == 2 * 3
    assert sum(len(r.nodes) for r in rows) == len(trie.token) + 2 * 2


@pytest.mark.parametrize("width", [4, 7, 64])
def test_rows_cover_the_tree_at_any_width(width):
    tok = tiny_tokenizer()
    trie = _trie([tok(p + t).input_ids for p, t in zip(PROMPTS, TARGETS, strict=True)])
    rows = _pack_rows(trie, max(width, max(trie.depth) + 1))
    _check_rows(trie, rows, max(width, max(trie.depth) + 1))


@needs_onednn
def test_packed_linears_match_plain_linears_and_leave_nothing_behind():
    model = tiny_model("llama", 97)
    ids = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        ref = model(ids).logits
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    with torch.no_grad(), packed_linears([model]) as n:
        got = model(ids).logits
    assert n == n_linear > 0
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert not any("forward" in m.__dict__ for m in model.modules())


@needs_onednn
def test_packed_linears_defer_to_autograd_and_to_vectors():
    model = tiny_model("llama", 97)
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(5, layer.in_features)
    with packed_linears([model], exclude=[model.lm_head]) as n:
        y = layer(x.requires_grad_())  # gradients enabled: the module's own forward, differentiable
        y.sum().backward()
        assert x.grad is not None and torch.allclose(x.grad, layer.weight.detach().sum(0).expand_as(x), atol=1e-5)
        with torch.no_grad():  # a 1-D input: the module's own forward too
            assert torch.equal(layer(x[0]), nn.functional.linear(x[0], layer.weight, layer.bias))
        assert "forward" not in model.lm_head.__dict__
    assert n == sum(type(m) is nn.Linear for m in model.modules()) - 1


@needs_onednn
@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_scores_with_onednn_equal_per_pair_forwards(model_type):
    tok = tiny_tokenizer()
    model = tiny_model(model_type, len(tok))
    ref_nll, ref_correct = per_pair_reference(model, tok, PROMPTS, TARGETS)
    got = score_targets(model, tok, PROMPTS, TARGETS, onednn=True, row_tokens=8, max_tokens=24)
    off = score_targets(model, tok, PROMPTS, TARGETS, onednn=False, row_tokens=8, max_tokens=24)
    for i in range(len(PROMPTS)):
        assert torch.allclose(got.token_nll[i], ref_nll[i], atol=1e-5), (i, got.token_nll[i], ref_nll[i])
        assert torch.equal(got.token_correct[i], ref_correct[i])
    assert torch.allclose(got.nll, off.nll, atol=1e-5)
