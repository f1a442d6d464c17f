"""Editing on tiny random models of every registered type; state, restore, batching, scoring."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import synthetic_texts, tiny_model, tiny_requests, tiny_tokenizer  # noqa: E402

from alphaedit import (  # noqa: E402
    EditHparams,
    Editor,
    EditState,
    compute_deltas,
    compute_targets,
    preservation_stats,
    projectors_from_stats,
    score_targets,
    spec_for,
)
from alphaedit.models import edited_weight, from_weight_layout  # noqa: E402
from alphaedit.state import load_deltas  # noqa: E402

# Random tiny models respond weakly to a mid-layer shift, so the test hparams allow a larger one.
HP = EditHparams(layers=(1, 2), mom2_max_length=64, mom2_batch_size=32, clamp_norm_factor=4.0, v_num_grad_steps=30,
                 mom2_update_weight=1000.0)


def _scores(model, tok, reqs, target="new"):
    return score_targets(model, tok, [r.rewrite_prompt for r in reqs],
                         [r.target_new if target == "new" else r.target_true for r in reqs])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("method", ["alphaedit", "memit"])
def test_edit_raises_target_probability(tok, model_type, method):
    model = tiny_model(model_type, len(tok))
    stats = preservation_stats(model, tok, synthetic_texts(80), HP)
    reqs = tiny_requests(4)
    before = _scores(model, tok, reqs).nll
    Editor(model, tok, HP, method, stats=stats).edit(reqs)
    after = _scores(model, tok, reqs).nll
    assert float(after.mean()) < float(before.mean()) - 5e-3, (before, after)
    assert int((after < before).sum()) >= 3, (before, after)


def test_compute_deltas_restores_model_and_apply_matches(tok):
    model = tiny_model("gpt2", len(tok))
    spec = spec_for(model)
    stats = preservation_stats(model, tok, synthetic_texts(40), HP)
    editor = Editor(model, tok, HP, "alphaedit", stats=stats)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = compute_deltas(model, tok, tiny_requests(3), HP, "alphaedit", editor.templates, spec=spec,
                           projectors=editor.projectors, prev_keys=editor.state.prev_keys)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    assert set(batch.deltas) == {spec.weight_name(1), spec.weight_name(2)}
    for layer in (1, 2):
        delta = batch.deltas[spec.weight_name(layer)]
        assert delta.shape == edited_weight(model, spec, layer).shape  # Conv1D: (d_k, d_model)
        # the update lives in the projector's range: Δ P = Δ (math orientation d_model x d_k)
        d = from_weight_layout(delta, spec).double()
        assert torch.allclose(d @ editor.projectors[layer].double(), d, atol=1e-5 * float(d.abs().max()))


def test_conv1d_orientation_output_change_equals_delta_times_key(tok):
    """GPT-2 stores Δᵀ; the MLP output change at a key k must be Δ k."""
    model = tiny_model("gpt2", len(tok))
    spec = spec_for(model)
    module = model.get_submodule(spec.mlp_out_name(1))
    k = torch.randn(5, 256)
    delta = torch.randn(64, 256) * 0.01  # (d_model, d_k)
    before = module(k)
    from alphaedit.models import to_weight_layout
    from alphaedit.state import apply_deltas

    apply_deltas(model, {spec.weight_name(1): to_weight_layout(delta, spec)})
    assert torch.allclose(module(k) - before, k @ delta.T, atol=1e-5)


def test_batched_targets_equal_per_request_targets(tok):
    model = tiny_model("gpt2", len(tok))
    spec = spec_for(model)
    hp = HP.replace(v_num_grad_steps=8)
    templates = [["{}"], ["Because the city. {}", "I live. {}"]]
    reqs = tiny_requests(4)
    batched = compute_targets(model, tok, spec, reqs, templates, hp)
    for i, r in enumerate(reqs):
        single = compute_targets(model, tok, spec, [r], templates, hp)
        assert torch.allclose(batched.z[i], single.z[0], atol=1e-4, rtol=1e-4)
        assert torch.allclose(batched.h0[i], single.h0[0], atol=1e-5)
        assert int(batched.steps[i]) == int(single.steps[0])
    # the clamp holds
    ratio = (batched.z - batched.h0).norm(dim=-1) / batched.h0.norm(dim=-1)
    assert float(ratio.max()) <= hp.clamp_norm_factor + 1e-5


def test_state_save_load_restore(tok, tmp_path):
    model = tiny_model("gpt2", len(tok))
    spec = spec_for(model)
    stats = preservation_stats(model, tok, synthetic_texts(40), HP)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    editor = Editor(model, tok, HP, "alphaedit", stats=stats)
    editor.edit(tiny_requests(2))
    editor.edit(tiny_requests(4)[2:])
    state = editor.state
    assert state.n_edits == 4 and state.case_ids == [0, 1, 2, 3]
    assert all(float(c.norm()) > 0 for c in state.prev_keys.values())
    edited = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, delta in state.deltas.items():
        assert torch.allclose(base[name] + delta, edited[name], atol=1e-6)
    state.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "deltas.safetensors", "state.json", "state.safetensors"]
    assert set(load_deltas(tmp_path / "ckpt" / "deltas.safetensors")) == {spec.weight_name(1), spec.weight_name(2)}
    editor.restore()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    # resume from disk on a fresh copy of the base model: same weights, same caches
    fresh = tiny_model("gpt2", len(tok))
    loaded = EditState.load(tmp_path / "ckpt")
    resumed = Editor(fresh, tok, HP, "alphaedit", projectors=editor.projectors, templates=editor.templates,
                     state=loaded)
    for n, p in fresh.named_parameters():
        assert torch.allclose(p, edited[n], atol=1e-6), n
    for layer in HP.layers:
        assert torch.equal(loaded.prev_keys[layer], state.prev_keys[layer].cpu())
    assert resumed.state.n_edits == 4


def test_editor_requires_statistics(tok):
    model = tiny_model("gpt2", len(tok))
    with pytest.raises(ValueError, match="projectors"):
        Editor(model, tok, HP, "alphaedit")
    with pytest.raises(ValueError, match="unknown editing method"):
        Editor(model, tok, HP, "no-such-method", stats={})
    stats = preservation_stats(model, tok, synthetic_texts(10), HP.replace(layers=(1,)))
    with pytest.raises(ValueError, match="lack layers"):
        Editor(model, tok, HP, "alphaedit", projectors=projectors_from_stats(stats, HP))


def test_templates_are_seeded(tok):
    from alphaedit.templates import sample_context_templates

    model = tiny_model("gpt2", len(tok))
    a = sample_context_templates(model, tok, seed=3)
    assert a == sample_context_templates(model, tok, seed=3)
    assert a != sample_context_templates(model, tok, seed=4)
    assert a[0] == ["{}"] and len(a[1]) == 5 and all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1])


def test_score_targets_batched_equals_unbatched(tok):
    model = tiny_model("llama", len(tok))
    prompts = ["Anna Varo was born in", "The city of", "Hugo Wick works as a"]
    targets = [" Paris", " Berlin is large", " pilot"]
    batched = score_targets(model, tok, prompts, targets, batch_size=8)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        p_ids = tok(p).input_ids
        t_ids = tok(t, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + t_ids])).logits[0]
        logp = torch.log_softmax(logits[len(p_ids) - 1 : len(p_ids) - 1 + len(t_ids)], -1)
        nll = -logp[torch.arange(len(t_ids)), torch.tensor(t_ids)]
        assert torch.allclose(batched.token_nll[i], nll, atol=1e-5)
        assert torch.isclose(batched.nll[i], nll.mean(), atol=1e-5)
        assert bool(batched.argmax_correct[i]) == bool((logp.argmax(-1) == torch.tensor(t_ids)).all())
    with pytest.raises(ValueError, match="pairs"):
        score_targets(model, tok, prompts, targets[:2])


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_replayed_blocks_give_the_full_forward(tok, model_type):
    """compute_targets replays blocks 0..L from its first forward; the logits must not change."""
    from alphaedit.hooks import add_at_positions, replay_blocks

    model = tiny_model(model_type, len(tok))
    spec = spec_for(model)
    enc = tok(["Anna Varo was born in Paris", "The city of"], padding=True, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    rows, cols = torch.tensor([0, 1]), torch.tensor([1, 2])
    shift = torch.randn(2, 64)
    with add_at_positions(model, spec.block_name(2), rows, cols, lambda: shift) as block, torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
    clean = block["clean"]
    with (replay_blocks(model, [spec.block_name(i) for i in range(3)], clean),
          add_at_positions(model, spec.block_name(2), rows, cols, lambda: shift), torch.no_grad()):
        replayed = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(full, replayed, atol=1e-5)
    assert "forward" not in vars(model.get_submodule(spec.block_name(2)))  # shadowing removed
