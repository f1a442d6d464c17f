"""Math of the method family on random data (float64): ROME, EMMET, PRUNE, RECT, and the projection."""

from __future__ import annotations

import math

import pytest
import torch

from alphaedit.hparams import FAMILY, METHODS, EditHparams, hparams_for, method_base
from alphaedit.methods import (
    method_name,
    method_spec,
    postprocess_update,
    prune_restraint,
    rect_kept_count,
    rect_mask,
    restrain_accumulated,
    rome_keys,
)
from alphaedit.projector import null_space_projector
from alphaedit.solve import SolveInputs, emmet_update, rome_update, solve_update

D_K, D_M = 40, 12
THRESHOLD = 2e-2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _preserved_keys(seed: int = 0, n: int = 2000) -> torch.Tensor:
    """K0 (d_k, n) whose covariance has 16 directions of variance ~1e-4 (below the threshold)."""
    g = _gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(D_K, D_K, generator=g, dtype=torch.float64))  # noqa: N806
    scales = torch.cat([torch.full((16,), 1e-2), torch.linspace(0.5, 2.0, D_K - 16, dtype=torch.float64)])
    return Q @ (scales[:, None] * torch.randn(D_K, n, generator=g, dtype=torch.float64))  # (d_k, n)


def _problem(seed: int = 0, u: int = 5):
    g = _gen(seed + 100)
    K0 = _preserved_keys(seed)  # noqa: N806
    C0 = K0 @ K0.T / K0.shape[1]  # (d_k, d_k)  # noqa: N806
    K = torch.randn(D_K, u, generator=g, dtype=torch.float64)  # noqa: N806
    R = torch.randn(D_M, u, generator=g, dtype=torch.float64)  # noqa: N806
    W = torch.randn(D_M, D_K, generator=g, dtype=torch.float64)  # noqa: N806
    return K0, C0, K, R, W


# --- names and hyper-parameters ------------------------------------------------------------------

def test_method_names_and_specs():
    assert METHODS[:2] == ("alphaedit", "memit")
    for base in FAMILY:
        assert base in METHODS and base + "+proj" in METHODS
        assert method_spec(base).projection is False and method_spec(base + "+proj").projection is True
        assert method_name(base, True) == base + "+proj" and method_name(base, False) == base
    assert method_name("memit", True) == "alphaedit"
    assert method_spec("alphaedit").solver == "alphaedit" and method_spec("memit").solver == "memit"
    assert method_spec("prune").solver == "memit" and method_spec("rect+proj").solver == "alphaedit"
    assert method_spec("rome+proj").solver == "rome" and method_spec("emmet").solver == "emmet"
    assert method_spec("rome").max_batch == 1 and method_spec("emmet").max_batch is None
    with pytest.raises(ValueError, match="known"):
        method_spec("memit+proj")
    with pytest.raises(ValueError, match="known"):
        method_base("fastmemit")


def test_hparams_for_keeps_alphaedit_and_memit_and_adds_method_defaults():
    from alphaedit.hparams import PRESETS

    for preset in PRESETS:
        assert hparams_for(preset, "alphaedit") == PRESETS[preset]
        calibrated = {"toy": 100.0, "smollm2": 2000.0}  # the embedded worlds calibrate MEMIT's λ
        memit = (PRESETS[preset].replace(mom2_update_weight=calibrated[preset]) if preset in calibrated
                 else PRESETS[preset])
        assert hparams_for(preset, "memit") == memit
        assert hparams_for(preset, "memit", l2=3.0) == memit.replace(l2=3.0)
        for wrapper in ("prune", "rect", "prune+proj", "rect+proj"):  # they wrap MEMIT (AlphaEdit with P)
            assert hparams_for(preset, wrapper) == memit
    assert hparams_for("gpt2-xl", "rome").layers == (17,)
    assert hparams_for("gpt-j", "rome+proj").layers == (5,)
    assert hparams_for("llama3-8b", "rome").layers == (5,)
    assert hparams_for("gpt2-xl", "emmet").emmet_ridge == 100.0
    assert hparams_for("gpt-j", "emmet").emmet_ridge == pytest.approx(0.1)
    assert hparams_for("gpt2-xl", "prune").prune_alpha == pytest.approx(math.e)
    assert hparams_for("gpt2-xl", "rect").rect_top_percent == 40.0
    assert hparams_for("gpt2-xl", "emmet", key_budget_multiplier=10).key_budget_multiplier == 10  # FastEMMET
    assert hparams_for("gpt2-xl", "rome", layers=(16,)).layers == (16,)
    with pytest.raises(ValueError, match="prune_mode"):
        EditHparams(layers=(1,), prune_mode="later")
    with pytest.raises(ValueError, match="prune_alpha"):
        EditHparams(layers=(1,), prune_alpha=1.0)


# --- ROME ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("project", [False, True])
def test_rome_maps_key_to_target_exactly(project):
    K0, C0, K, R, W = _problem(1, u=1)  # noqa: N806
    P = null_space_projector(C0, THRESHOLD) if project else None  # noqa: N806
    delta = rome_update(K, R, C0, P)  # (d_m, d_k)
    assert torch.linalg.matrix_rank(delta) == 1
    rel = ((W + delta) @ K - (W @ K + R)).norm() / R.norm()
    assert rel < 1e-10
    # any scale of C cancels; the row space is C⁻¹k (P C⁻¹ k with the projection)
    assert torch.allclose(rome_update(K, R, 7.0 * C0, P), delta, atol=1e-10)
    u_dir = torch.linalg.solve(C0, K)
    if P is not None:
        u_dir = P @ u_dir
        assert torch.allclose(delta @ P, delta, atol=1e-10)
    row = delta[0:1] / delta[0:1].norm()
    assert abs(float(row @ u_dir) / float(u_dir.norm())) == pytest.approx(1.0, abs=1e-10)


def test_rome_key_modes():
    _, C0, K, R, W = _problem(2, u=1)  # noqa: N806
    k_bare = K + 0.3 * torch.randn(K.shape, generator=_gen(5), dtype=torch.float64)
    v_star = W @ k_bare + R  # target MLP output (bias cancels)
    for mode, key in (("r_rome", K), ("original", k_bare), ("p_rome", k_bare), ("shared", K)):
        k_dir, k_den, r = rome_keys(K, k_bare, R, W, mode)
        delta = rome_update(k_dir, r, C0, None, k_den)
        want = v_star if mode != "shared" else W @ K + R
        assert ((W + delta) @ key - want).norm() / R.norm() < 1e-10, mode
    # original mode: k* is not mapped onto v*
    k_dir, k_den, r = rome_keys(K, k_bare, R, W, "original")
    assert ((W + rome_update(k_dir, r, C0, None, k_den)) @ K - v_star).norm() / R.norm() > 1e-3
    with pytest.raises(ValueError, match="one key"):
        rome_update(torch.randn(D_K, 2, dtype=torch.float64), R.repeat(1, 2), C0)


def test_emmet_single_edit_without_ridge_is_rome():
    _, C0, K, R, _ = _problem(3, u=1)  # noqa: N806
    assert torch.allclose(emmet_update(K, R, C0, ridge=0.1), rome_update(K, R, C0), atol=1e-10)  # no ridge at u = 1
    assert not torch.allclose(emmet_update(K, R, C0, ridge=1e3, ridge_single_edit=True), rome_update(K, R, C0))


# --- EMMET --------------------------------------------------------------------------------------

@pytest.mark.parametrize("project", [False, True])
def test_emmet_batch_residual_is_the_ridge_term(project):
    _, C0, K, R, W = _problem(4, u=6)  # noqa: N806
    P = null_space_projector(C0, THRESHOLD) if project else None  # noqa: N806
    exact = emmet_update(K, R, C0, ridge=0.0, P=P)
    assert ((W + exact) @ K - (W @ K + R)).norm() / R.norm() < 1e-9
    rho = 0.5
    delta = emmet_update(K, R, C0, ridge=rho, P=P)
    U = torch.linalg.solve(C0, K) if P is None else P @ torch.linalg.solve(C0, K)  # noqa: N806
    A = K.T @ U  # noqa: N806
    err = (W + delta) @ K - (W @ K + R)
    assert torch.allclose(err, -rho * R @ torch.linalg.inv(A + rho * torch.eye(6)), atol=1e-9)
    # the stated tolerance: ||err|| <= ρ / (λ_min(A) + ρ) ||R|| (A is symmetric positive definite)
    lam_min = float(torch.linalg.eigvalsh((A + A.T) / 2)[0])
    assert float(err.norm()) <= rho / (lam_min + rho) * float(R.norm()) * (1 + 1e-9)
    if P is not None:
        assert torch.allclose(delta @ P, delta, atol=1e-10)


def test_emmet_parametrisation_and_optimality():
    _, C0, K, R, _ = _problem(5, u=4)  # noqa: N806
    lam_m, lam_e = 1000.0, 0.1
    assert torch.allclose(emmet_update(K, R, lam_m * C0, lam_e), emmet_update(K, R, C0, lam_m * lam_e), rtol=1e-9)
    delta = emmet_update(K, R, C0, 0.0)
    g = _gen(9)
    for _ in range(3):  # perturbations E with E K = 0 cannot lower tr(Δ C0 Δᵀ)
        E = torch.randn(D_M, D_K, generator=g, dtype=torch.float64)  # noqa: N806
        E = E - E @ K @ torch.linalg.solve(K.T @ K, K.T)  # noqa: N806
        assert torch.trace((delta + E) @ C0 @ (delta + E).T) >= torch.trace(delta @ C0 @ delta.T)


# --- PRUNE --------------------------------------------------------------------------------------

def _with_spectrum(sigma: torch.Tensor, seed: int = 0, shape=(D_M, D_K)) -> tuple[torch.Tensor, ...]:
    g = _gen(seed)
    U, _ = torch.linalg.qr(torch.randn(shape[0], len(sigma), generator=g, dtype=torch.float64))  # noqa: N806
    V, _ = torch.linalg.qr(torch.randn(shape[1], len(sigma), generator=g, dtype=torch.float64))  # noqa: N806
    return (U * sigma) @ V.T, U, V


@pytest.mark.parametrize("alpha", [math.e, 1.2, 2.0])
def test_prune_restraint_follows_the_paper_function(alpha):
    sigma = torch.tensor([40.0, 12.0, 5.0, 3.0, 2.5, 1.0, 0.5, 0.1], dtype=torch.float64)
    sigma_max = 3.0
    delta, U, V = _with_spectrum(sigma)  # noqa: N806
    restrained = restrain_accumulated(delta, sigma_max, alpha)
    got = torch.linalg.svdvals(restrained)[: len(sigma)]
    want = torch.where(sigma >= sigma_max, sigma_max + torch.log(sigma / sigma_max) / math.log(alpha), sigma)
    assert torch.allclose(got, want, atol=1e-10)
    assert torch.allclose(got[3:], sigma[3:], atol=1e-10)  # below σ_max: untouched
    assert not torch.allclose(got[:2], sigma[:2])  # above: changed
    assert bool((got[:-1] >= got[1:]).all())  # order kept
    assert bool((got[:3] >= sigma_max).all())  # compressed, not clipped below σ_max
    # singular vectors unchanged: U diag(F(σ)) Vᵀ
    assert torch.allclose(restrained, (U * want) @ V.T, atol=1e-10)
    assert float(torch.linalg.matrix_norm(restrained, 2)) == pytest.approx(
        sigma_max + math.log(40.0 / sigma_max, alpha), abs=1e-10)
    # the linear variant of the reference code
    lin = torch.linalg.svdvals(restrain_accumulated(delta, sigma_max, function="linear"))[: len(sigma)]
    assert torch.allclose(lin, torch.where(sigma >= sigma_max, (sigma + sigma_max) / 2, sigma), atol=1e-10)
    assert torch.allclose(prune_restraint(sigma, sigma_max, alpha), want)


def test_prune_leaves_a_small_edit_alone_and_keeps_projected_edits_projected():
    delta, _, _ = _with_spectrum(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
    assert torch.allclose(restrain_accumulated(delta, 5.0), delta, atol=1e-12)
    K0, C0, _, _, _ = _problem(6)  # noqa: N806
    P = null_space_projector(C0, THRESHOLD)  # noqa: N806
    raw = sum(torch.randn(D_M, D_K, generator=_gen(s), dtype=torch.float64) * 10 @ P for s in range(3))
    restrained = restrain_accumulated(raw, float(torch.linalg.svdvals(raw)[2]))
    assert not torch.allclose(restrained, raw)
    assert torch.allclose(restrained @ P, restrained, atol=1e-9)


# --- RECT ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "k"), [((D_M, D_K), 40.0), ((7, 33), 40.0), ((16, 16), 20.0), ((5, 8), 100.0)])
def test_rect_keeps_the_top_k_percent_by_relative_change(shape, k):
    g = _gen(11)
    delta = torch.randn(shape, generator=g, dtype=torch.float64)
    weight = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = rect_mask(delta, weight, k)
    n = delta.numel()
    m = math.floor(n * (100 - k) / 100)
    assert int(mask.sum()) == (n - m + 1 if m else n) == rect_kept_count(n, k)
    kept = delta * mask
    assert torch.equal(kept[mask], delta[mask])  # bit-identical
    assert bool((kept[~mask] == 0).all())
    rel = delta.abs() / (weight.abs() + 1e-8)
    if m:
        assert float(rel[mask].min()) > float(rel[~mask].max())  # exactly the top entries by δ
    assert abs(int(mask.sum()) - k / 100 * n) <= 2


def test_rect_default_is_forty_percent_against_the_current_weight():
    hp = EditHparams(layers=(1,))
    assert hp.rect_top_percent == 40.0
    g = _gen(12)
    delta = torch.randn(10, 20, generator=g, dtype=torch.float64)
    weight = torch.randn(10, 20, generator=g, dtype=torch.float64)
    out = postprocess_update(method_spec("rect"), delta, weight, hp)
    assert int((out != 0).sum()) == rect_kept_count(200, 40.0) == 81
    # a different current weight gives a different mask (δ is relative to W, not absolute)
    other = postprocess_update(method_spec("rect"), delta, weight.flip(0), hp)
    assert not torch.equal(out != 0, other != 0)
    assert torch.equal(postprocess_update(method_spec("memit"), delta, weight, hp), delta)


# --- every method with the projection: outputs on preserved keys unchanged -----------------------

def _method_update(method: str, K0: torch.Tensor, C0: torch.Tensor, hp: EditHparams,  # noqa: N803
                   n_batches: int = 3) -> torch.Tensor:
    """The accumulated applied edit of ``method`` after ``n_batches`` random batches (shared pipeline)."""
    spec = method_spec(method)
    P = null_space_projector(C0, THRESHOLD) if spec.projection else None  # noqa: N806
    cache = torch.zeros(D_K, D_K, dtype=torch.float64)
    total = torch.zeros(D_M, D_K, dtype=torch.float64)
    for b in range(n_batches):
        _, _, K, R, W = _problem(20 + b, u=1 if spec.max_batch == 1 else 5)  # noqa: N806
        x = SolveInputs(K1=K, R=R, P=P, C0=C0, cache=cache if spec.uses_prev_keys(hp) else None, l2=hp.l2,
                        mom2_update_weight=hp.mom2_update_weight, emmet_ridge=hp.emmet_ridge, cov_ridge=hp.cov_ridge)
        delta = postprocess_update(spec, solve_update(spec.solver, x), W + total, hp, P)
        total = total + delta
        cache = cache + K @ K.T
    if spec.restrains:
        total = restrain_accumulated(total, 0.5 * float(torch.linalg.svdvals(total)[0]), hp.prune_alpha)
    return total


@pytest.mark.parametrize("method", [m for m in METHODS if m == "alphaedit" or m.endswith("+proj")])
def test_projected_methods_leave_preserved_keys_unchanged(method):
    K0 = _preserved_keys(7)  # noqa: N806
    C0 = K0 @ K0.T / K0.shape[1]  # noqa: N806
    hp = EditHparams(layers=(1,), emmet_ridge=0.1, mom2_update_weight=10.0)
    delta = _method_update(method, K0, C0, hp)
    assert float(delta.norm()) > 0
    # the bound used for AlphaEdit (tests/unit/test_core_toyworld.py): tr(Δ C0 Δᵀ) <= threshold ||Δ||_F²
    assert float(torch.trace(delta @ C0 @ delta.T)) <= THRESHOLD * float(delta.norm() ** 2) * 1.01
    # and on keys whose covariance has an exact null space, Δ K0 ≈ 0
    K0_low, C_low = _low_rank_problem()  # noqa: N806
    hp_low = hp.replace(cov_ridge=1e-3)
    d_low = _method_update(method, K0_low, C_low, hp_low)
    P = null_space_projector(C_low, THRESHOLD)  # noqa: N806
    assert (P @ K0_low).norm() < 1e-8 * K0_low.norm()
    assert float((d_low @ K0_low).norm()) < 1e-8 * float(d_low.norm() * K0_low.norm())


def _low_rank_problem():
    K0 = torch.linalg.qr(torch.randn(D_K, D_K, generator=_gen(8), dtype=torch.float64))[0][:, :20] @ torch.randn(  # noqa: N806
        20, 500, generator=_gen(9), dtype=torch.float64)
    return K0, K0 @ K0.T / 500 + 1e-12 * torch.eye(D_K)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "alphaedit" and not m.endswith("+proj")])
def test_unprojected_methods_do_change_preserved_outputs(method):
    """Without P, Δ K0 is not ≈ 0 on the exact-null-space keys (guards the test above).

    C0⁻¹ and MEMIT's λ C0 ridge themselves steer Δ into C0's exact null space, so the statistics
    given here are C0 + I, which does not single it out; only P then keeps Δ K0 at 0.
    """
    K0, C0 = _low_rank_problem()  # noqa: N806
    hp = EditHparams(layers=(1,), emmet_ridge=0.1, mom2_update_weight=10.0)
    d = _method_update(method, K0, C0 + torch.eye(D_K), hp)
    assert float((d @ K0).norm()) > 1e-4 * float(d.norm() * K0.norm())


def test_rect_project_then_mask_loses_the_guarantee():
    """The option keeps RECT's exact sparsity but not Δ K0 ≈ 0 (methods.md §5.3)."""
    K0, C0 = _low_rank_problem()  # noqa: N806
    hp = EditHparams(layers=(1,), rect_projection_order="project_then_mask")
    d = _method_update("rect+proj", K0, C0, hp)
    assert float((d @ K0).norm()) > 1e-4 * float(d.norm() * K0.norm())
