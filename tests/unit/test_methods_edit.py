"""The method family on tiny random models of every registered type (no download)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import synthetic_texts, tiny_model, tiny_requests, tiny_tokenizer  # noqa: E402

from alphaedit import (  # noqa: E402
    METHODS,
    EditHparams,
    Editor,
    EditState,
    compute_deltas,
    preservation_stats,
    projectors_from_stats,
    score_targets,
    spec_for,
)
from alphaedit.keys import subject_representations  # noqa: E402
from alphaedit.methods import rect_kept_count, restrain_accumulated  # noqa: E402
from alphaedit.models import from_weight_layout  # noqa: E402
from alphaedit.state import apply_deltas  # noqa: E402

FAMILY_METHODS = [m for m in METHODS if m not in ("alphaedit", "memit")]
PROJECTED = [m for m in METHODS if m == "alphaedit" or m.endswith("+proj")]
# Fixed templates (no sampling) keep these tests fast; the core tests cover template sampling.
TEMPLATES = [["{}"], ["The city. {}", "I live. {}"]]
# As tests/unit/test_core_edit.py: random tiny models respond weakly, so a larger shift is allowed.
HP = EditHparams(layers=(1, 2), mom2_max_length=64, mom2_batch_size=32, clamp_norm_factor=4.0, v_num_grad_steps=15,
                 mom2_update_weight=1000.0, emmet_ridge=0.1)
ROME_LAYER = 2


def hp_for(method: str) -> EditHparams:
    return HP.replace(layers=(ROME_LAYER,)) if method.startswith("rome") else HP


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    model = tiny_model("gpt2", len(tok))
    return model, preservation_stats(model, tok, synthetic_texts(60), HP)


def _editor(model, tok, method, stats, hp=None):
    hp = hp or hp_for(method)
    return Editor(model, tok, hp, method, stats={layer: stats[layer] for layer in hp.layers}, templates=TEMPLATES)


def _module_out(model, spec, layer, keys):
    with torch.no_grad():
        return model.get_submodule(spec.mlp_out_name(layer))(keys)


@pytest.mark.parametrize("method", ["rome", "rome+proj"])
def test_rome_maps_k_star_to_v_star(tok, gpt2, method):
    base, stats = gpt2
    model = copy.deepcopy(base)
    spec = spec_for(model)
    hp = hp_for(method)
    req = tiny_requests(1)
    reps = subject_representations(model, tok, spec, req, TEMPLATES, [ROME_LAYER], ROME_LAYER, fact_token=hp.fact_token)
    k_star, k_bare = reps.keys[ROME_LAYER], reps.bare_keys[ROME_LAYER]  # (1, d_k)
    m_bare = _module_out(model, spec, ROME_LAYER, k_bare)
    editor = _editor(model, tok, method, stats)
    batch = compute_deltas(model, tok, req, hp, method, TEMPLATES, spec=spec, projectors=editor.projectors,
                           second_moments=editor.second_moments)
    v_star = m_bare + (batch.targets.z - batch.targets.h0)  # target MLP output: bare output + δ
    apply_deltas(model, batch.deltas)
    after = _module_out(model, spec, ROME_LAYER, k_star)
    shift = (v_star - _module_out(base, spec, ROME_LAYER, k_star)).norm()
    assert float(shift) > 1e-2  # the edit is not trivial
    assert float((after - v_star).norm() / shift) < 1e-4, method  # exact up to float32
    d = from_weight_layout(batch.deltas[spec.weight_name(ROME_LAYER)], spec)
    assert int(torch.linalg.matrix_rank(d.double(), rtol=1e-5)) == 1


def test_rome_edits_one_layer_and_one_request_at_a_time(tok, gpt2):
    base, stats = gpt2
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="one layer"):
        compute_deltas(model, tok, tiny_requests(1), HP, "rome", TEMPLATES,
                       second_moments={layer: stats[layer].mean().float() for layer in HP.layers})
    with pytest.raises(ValueError, match="1 request at a time"):
        compute_deltas(model, tok, tiny_requests(2), hp_for("rome"), "rome", TEMPLATES,
                       second_moments={ROME_LAYER: stats[ROME_LAYER].mean().float()})
    editor = _editor(model, tok, "rome", stats)
    editor.edit(tiny_requests(3))
    assert editor.state.n_edits == 3
    d = from_weight_layout(editor.state.deltas[spec_for(model).weight_name(ROME_LAYER)], spec_for(model)).double()
    assert int(torch.linalg.matrix_rank(d, rtol=1e-5)) == 3  # three sequential rank-one updates


@pytest.mark.parametrize("method", ["emmet", "emmet+proj"])
def test_emmet_maps_edited_keys_to_targets(tok, gpt2, method):
    """Single layer: (W + Δ) K = W K + R up to the ridge term; tolerance ρ / (λ_min(A) + ρ) (A = Kᵀ[P]C⁻¹K)."""
    base, stats = gpt2
    model = copy.deepcopy(base)
    spec = spec_for(model)
    hp = HP.replace(layers=(ROME_LAYER,))
    reqs = tiny_requests(4)
    reps = subject_representations(model, tok, spec, reqs, TEMPLATES, [ROME_LAYER], ROME_LAYER, fact_token=hp.fact_token)
    K = reps.keys[ROME_LAYER]  # (u, d_k)  # noqa: N806
    before = _module_out(model, spec, ROME_LAYER, K)
    editor = _editor(model, tok, method, stats, hp)
    batch = compute_deltas(model, tok, reqs, hp, method, TEMPLATES, spec=spec, projectors=editor.projectors,
                           second_moments=editor.second_moments)
    R = batch.targets.z - reps.block_out  # (u, d_model) residual of the single layer  # noqa: N806
    apply_deltas(model, batch.deltas)
    err = _module_out(model, spec, ROME_LAYER, K) - (before + R)
    Kd, C = K.double().T, editor.second_moments[ROME_LAYER].double()  # noqa: N806
    U = torch.linalg.solve(C, Kd)  # noqa: N806
    if editor.projectors is not None:
        U = editor.projectors[ROME_LAYER].double() @ U  # noqa: N806
    A = Kd.T @ U  # noqa: N806
    lam_min = float(torch.linalg.eigvalsh((A + A.T) / 2)[0])
    tol = hp.emmet_ridge / (lam_min + hp.emmet_ridge) + 1e-4  # ridge term + float32
    assert float(R.norm()) > 1e-2
    assert float(err.norm() / R.norm()) <= tol, (float(err.norm() / R.norm()), tol)


@pytest.mark.parametrize("method", PROJECTED)
def test_projected_methods_leave_preserved_outputs_unchanged(tok, gpt2, method):
    """tr(Δ C0 Δᵀ) <= threshold · ||Δ||_F² for the accumulated edit of every layer (as for AlphaEdit)."""
    base, stats = gpt2
    model = copy.deepcopy(base)
    spec = spec_for(model)
    editor = _editor(model, tok, method, stats)
    assert all(float(torch.trace(p)) > 0 for p in editor.projectors.values())  # a null space exists
    if method.startswith("prune"):  # make the restraint act on these small edits
        editor.sigma_max = {n: 1e-3 for n in editor.sigma_max}
    editor.edit(tiny_requests(2))
    editor.edit(tiny_requests(4)[2:])
    for layer in editor.hparams.layers:
        d = from_weight_layout(editor.state.deltas[spec.weight_name(layer)], spec).double()
        c0 = stats[layer].mean()
        assert float(d.norm()) > 0
        ratio = float(torch.trace(d @ c0 @ d.T)) / float(d.norm() ** 2)
        assert ratio <= hp_for(method).nullspace_threshold * 1.01, (method, layer, ratio)


def test_prune_model_holds_the_restrained_accumulated_edit(tok, gpt2, tmp_path):
    base, stats = gpt2
    model = copy.deepcopy(base)
    spec = spec_for(model)
    editor = _editor(model, tok, "prune", stats)
    assert all(v > 0 for v in editor.sigma_max.values())
    editor.sigma_max = {n: 1e9 for n in editor.sigma_max}  # first batch: nothing above σ_max
    editor.edit(tiny_requests(2))
    name = spec.weight_name(2)
    raw1 = editor.state.raw_deltas[name].clone()
    assert torch.allclose(editor.state.deltas[name], raw1, atol=1e-6)
    top = float(torch.linalg.svdvals(raw1.double())[0])
    editor.sigma_max = {n: top / 4 for n in editor.sigma_max}
    editor.edit(tiny_requests(4)[2:])
    raw = editor.state.raw_deltas[name]
    want = restrain_accumulated(raw, top / 4)
    assert torch.allclose(editor.state.deltas[name], want, atol=1e-6)
    assert not torch.allclose(want, raw, atol=1e-4)
    params = dict(model.named_parameters())
    # regression guard (methods.md §4.4): the model holds W_0 + ΔW̄, not W_0 + ΔW + ΔW̄
    assert torch.allclose(params[name], editor.base[name] + want, atol=1e-6)
    sv_raw, sv = torch.linalg.svdvals(raw.double()), torch.linalg.svdvals(want.double())
    assert float(sv[0]) == pytest.approx(top / 4 + float(torch.log(sv_raw[0] / (top / 4))), rel=1e-5)
    # raw and restrained deltas survive save/load and the checkpoint blob
    editor.state.save(tmp_path / "s")
    loaded = EditState.load(tmp_path / "s")
    assert torch.equal(loaded.raw_deltas[name], raw.cpu()) and torch.equal(loaded.deltas[name], want.cpu())
    if hasattr(EditState, "to_bytes"):
        blob, _ = EditState.from_bytes(editor.state.to_bytes())
        assert torch.equal(blob.raw_deltas[name], raw.cpu())
    resumed = Editor(copy.deepcopy(base), tok, HP, "prune", stats=stats, templates=TEMPLATES, state=loaded)
    assert torch.equal(resumed.state.raw_deltas[name], raw.cpu())
    # in_loop: the raw sum is replaced by its restraint after every batch
    looped = _editor(copy.deepcopy(base), tok, "prune", stats, HP.replace(prune_mode="in_loop"))
    looped.sigma_max = {n: top / 4 for n in looped.sigma_max}
    looped.edit(tiny_requests(2))
    assert torch.equal(looped.state.raw_deltas[name], looped.state.deltas[name])


def test_rect_keeps_forty_percent_of_each_layer_update(tok, gpt2):
    base, stats = gpt2
    model = copy.deepcopy(base)
    spec = spec_for(model)
    editor = _editor(model, tok, "rect", stats)
    full = compute_deltas(model, tok, tiny_requests(3), HP, "memit", TEMPLATES, spec=spec,
                          second_moments=editor.second_moments)
    batch = compute_deltas(model, tok, tiny_requests(3), HP, "rect", TEMPLATES, spec=spec,
                           second_moments=editor.second_moments)
    name = spec.weight_name(1)  # the first layer: its mask is against the base weight, its Δ is MEMIT's
    d, ref = batch.deltas[name], full.deltas[name]
    assert int((d != 0).sum()) == rect_kept_count(d.numel(), 40.0)
    kept = d != 0
    assert torch.allclose(d[kept], ref[kept], rtol=1e-5, atol=1e-8)
    rel = ref.abs() / (editor.base[name].abs() + 1e-8)
    assert float(rel[kept].min()) >= float(rel[~kept].max()) * (1 - 1e-5)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama", "mistral", "qwen2", "qwen3"])
def test_every_method_raises_target_probability(tok, model_type):
    base = tiny_model(model_type, len(tok))
    stats = preservation_stats(base, tok, synthetic_texts(60), HP)
    reqs = tiny_requests(3)
    before = score_targets(base, tok, [r.rewrite_prompt for r in reqs], [r.target_new for r in reqs]).nll
    projectors = projectors_from_stats(stats, HP)
    failures = {}
    for method in FAMILY_METHODS:
        model = copy.deepcopy(base)
        hp = hp_for(method).replace(v_num_grad_steps=10)
        Editor(model, tok, hp, method, stats={layer: stats[layer] for layer in hp.layers},
               projectors={layer: projectors[layer] for layer in hp.layers}, templates=TEMPLATES).edit(reqs)
        after = score_targets(model, tok, [r.rewrite_prompt for r in reqs], [r.target_new for r in reqs]).nll
        if not (float(after.mean()) < float(before.mean()) - 5e-3 and int((after < before).sum()) >= 2):
            failures[method] = (before.tolist(), after.tolist())
    assert not failures, failures
