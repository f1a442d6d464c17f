"""Key statistics: exact shard merging, one multi-layer pass = per-layer passes, budgets, padding."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import synthetic_texts, tiny_model, tiny_tokenizer  # noqa: E402

from alphaedit.hooks import capture, run_until_stopped  # noqa: E402
from alphaedit.models import spec_for  # noqa: E402
from alphaedit.stats import SecondMoment, compute_key_stats, load_stats, merge_stats, save_stats  # noqa: E402

LAYERS = (1, 2)


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok))
    return model, tok, spec_for(model), synthetic_texts(60)


def _close(a: dict[int, SecondMoment], b: dict[int, SecondMoment], tol=1e-9) -> None:
    assert a.keys() == b.keys()
    for layer in a:
        assert a[layer].count == b[layer].count
        assert a[layer].sum_kkT.dtype == torch.float64
        rel = (a[layer].sum_kkT - b[layer].sum_kkT).norm() / b[layer].sum_kkT.norm()
        assert rel < tol, (layer, float(rel))


def test_merged_shards_equal_one_pass(setup):
    model, tok, spec, texts = setup
    full = compute_key_stats(model, tok, texts, spec, LAYERS, max_length=64, batch_size=8)
    shards = [compute_key_stats(model, tok, texts[i::3], spec, LAYERS, max_length=64, batch_size=8) for i in range(3)]
    _close(merge_stats(shards), full, tol=1e-6)  # fp32 per-batch products: order changes rounding only
    assert full[1].count == sum(len(tok(t).input_ids) for t in texts)


def test_multi_layer_pass_equals_per_layer_passes(setup):
    model, tok, spec, texts = setup
    joint = compute_key_stats(model, tok, texts, spec, LAYERS, max_length=64, batch_size=8)
    for layer in LAYERS:
        alone = compute_key_stats(model, tok, texts, spec, [layer], max_length=64, batch_size=8)
        _close({layer: joint[layer]}, alone, tol=1e-12)


def test_padding_is_excluded(setup):
    model, tok, spec, texts = setup
    padded = compute_key_stats(model, tok, texts[:20], spec, LAYERS, max_length=64, batch_size=20)
    single = compute_key_stats(model, tok, texts[:20], spec, LAYERS, max_length=64, batch_size=1)
    _close(padded, single, tol=1e-5)


def test_matches_a_full_forward_reference(setup):
    """Stopping early does not change the keys: compare with hooks on a complete forward."""
    model, tok, spec, texts = setup
    ids = torch.tensor([tok(texts[0]).input_ids])
    with capture(model, inputs_of=[spec.mlp_out_name(2)]) as store:
        run_until_stopped(model, ids, torch.ones_like(ids))
    keys = store["in:" + spec.mlp_out_name(2)][0].double()
    stats = compute_key_stats(model, tok, texts[:1], spec, [2], max_length=64)
    assert torch.allclose(stats[2].sum_kkT, keys.T @ keys, rtol=1e-5, atol=1e-6)
    assert torch.allclose(stats[2].mean(), keys.T @ keys / keys.shape[0], rtol=1e-5, atol=1e-8)


def test_key_budget_is_exact(setup):
    model, tok, spec, texts = setup
    stats = compute_key_stats(model, tok, texts, spec, LAYERS, max_length=64, batch_size=8, max_keys=301)
    assert stats[1].count == stats[2].count == 301
    # the budgeted keys are the first 301 keys of the corpus
    full = compute_key_stats(model, tok, texts[:20], spec, LAYERS, max_length=64, batch_size=1, max_keys=301)
    _close(stats, full, tol=1e-5)


def test_truncation(setup):
    model, tok, spec, texts = setup
    stats = compute_key_stats(model, tok, texts[:10], spec, [1], max_length=5, batch_size=4)
    assert stats[1].count == 50


def test_default_truncation_is_the_model_context(setup):
    """max_length None (the default, as the reference's layer_stats): each document is cut at the
    model's n_positions / max_position_embeddings."""
    from alphaedit.hparams import EditHparams
    from alphaedit.models import context_length

    model, tok, spec, texts = setup
    assert EditHparams(layers=LAYERS).mom2_max_length is None
    n_positions = model.config.n_positions
    try:
        model.config.n_positions = 5
        assert context_length(model) == 5
        cut = compute_key_stats(model, tok, texts[:10], spec, [1], batch_size=4)
    finally:
        model.config.n_positions = n_positions
    assert cut[1].count == 50  # every synthetic text is longer than 5 tokens
    _close(cut, compute_key_stats(model, tok, texts[:10], spec, [1], max_length=5, batch_size=4))


def test_save_load_roundtrip(setup, tmp_path):
    model, tok, spec, texts = setup
    stats = compute_key_stats(model, tok, texts[:10], spec, LAYERS, max_length=64)
    save_stats(stats, tmp_path / "s.safetensors", metadata={"corpus": "synthetic"})
    back = load_stats(tmp_path / "s.safetensors")
    for layer in LAYERS:
        assert back[layer].count == stats[layer].count
        assert torch.equal(back[layer].sum_kkT, stats[layer].sum_kkT)


def test_accumulator_precision_for_large_counts():
    """10^8 keys fold in without drift: fp64 products are exact, fp32 chunks keep a bounded error.

    (A plain fp32 product over 10^6-row batches is off by ~1% here.)"""
    batch = torch.ones(1_000_000, 2) / 3
    exact = torch.full((2, 2), 1 / 9, dtype=torch.float64)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        acc = SecondMoment.zeros(2, product_dtype=dtype)
        for _ in range(100):
            acc.add(batch)
        assert acc.count == 100_000_000
        assert torch.allclose(acc.mean(), exact, rtol=rtol), (dtype, acc.mean())
    with pytest.raises(ValueError, match="shape"):
        acc.add(torch.ones(3, 5))
    with pytest.raises(ValueError, match="no keys"):
        SecondMoment.zeros(2).mean()


def test_fastmemit_budget_from_hparams(setup):
    from alphaedit import EditHparams, preservation_stats

    model, tok, spec, texts = setup
    hp = EditHparams(layers=LAYERS, mom2_max_length=64, mom2_batch_size=8, key_budget_multiplier=2.5)
    stats = preservation_stats(model, tok, texts, hp, spec)
    assert stats[1].count == stats[2].count == 640  # 2.5 x d_k (256)
    capped = preservation_stats(model, tok, texts, hp.replace(key_budget_multiplier=None, mom2_n_samples=7), spec)
    assert capped[1].count == sum(len(tok(t).input_ids) for t in texts[:7])
