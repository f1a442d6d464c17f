"""Math properties of the projector and the closed-form solves (random data, float64)."""

from __future__ import annotations

import pytest
import torch

from alphaedit.projector import kept_fraction, null_space_projector, projector_rank
from alphaedit.solve import SolveInputs, alphaedit_update, memit_update, solve_update, spread_residual


@pytest.fixture(autouse=True)
def _float64_default():
    """Random data in float64 for these tests only (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _low_rank_keys(d: int = 48, rank: int = 20, n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(d, rank, generator=g, dtype=torch.float64)
    return basis @ torch.randn(rank, n, generator=g, dtype=torch.float64)  # (d, n), rank `rank`


def test_projector_is_symmetric_idempotent_and_kills_preserved_keys():
    K0 = _low_rank_keys()  # noqa: N806
    cov = K0 @ K0.T / K0.shape[1]
    P = null_space_projector(cov, threshold=1e-8)  # noqa: N806
    assert torch.allclose(P, P.T, atol=1e-12)
    assert torch.allclose(P @ P, P, atol=1e-10)
    assert projector_rank(P) == 48 - 20
    assert kept_fraction(P) == pytest.approx(28 / 48)
    assert (P @ K0).norm() / K0.norm() < 1e-10
    # P commutes with C0 (it is a spectral projector of it)
    assert torch.allclose(P @ cov, cov @ P, atol=1e-8)


def test_projector_threshold_modes():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))  # noqa: N806
    eig = torch.tensor([1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0], dtype=torch.float64)
    cov = Q @ torch.diag(eig) @ Q.T
    assert projector_rank(null_space_projector(cov, 2e-2)) == 3  # absolute: λ < 0.02
    assert projector_rank(null_space_projector(cov, 2e-2, mode="relative")) == 5  # λ < 0.02 * 10
    assert projector_rank(null_space_projector(100 * cov, 2e-2, mode="relative")) == 5  # scale-free
    with pytest.raises(ValueError, match="mode"):
        null_space_projector(cov, 2e-2, mode="percent")


def _problem(d_k=32, d_m=12, u=6, n_prev=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    K1 = torch.randn(d_k, u, generator=g, dtype=torch.float64)  # noqa: N806
    R = torch.randn(d_m, u, generator=g, dtype=torch.float64)  # noqa: N806
    Kp = torch.randn(d_k, n_prev, generator=g, dtype=torch.float64)  # noqa: N806
    K0 = _low_rank_keys(d_k, 14, 300, seed)  # noqa: N806
    return K1, R, Kp, K0


def test_alphaedit_closed_form_equals_least_squares():
    K1, R, Kp, K0 = _problem()  # noqa: N806
    cov = K0 @ K0.T / K0.shape[1]
    P = null_space_projector(cov, 1e-8)  # noqa: N806
    alpha = 10.0
    delta = alphaedit_update(K1, R, P, Kp @ Kp.T, alpha)  # (d_m, d_k)
    # Eq. 12 with Δ = B Ûᵀ: min ||B ÛᵀK1 - R||² + α||B||² + ||B ÛᵀKp||², a stacked least squares.
    eigvals, eigvecs = torch.linalg.eigh(cov)
    U = eigvecs[:, eigvals < 1e-8]  # noqa: N806
    A = torch.cat([U.T @ K1, alpha**0.5 * torch.eye(U.shape[1]), U.T @ Kp], dim=1)  # (r, u + r + n)
    b = torch.cat([R, torch.zeros(R.shape[0], U.shape[1] + Kp.shape[1])], dim=1)
    B = torch.linalg.lstsq(A.T, b.T).solution.T  # noqa: N806
    assert torch.allclose(delta, B @ U.T, atol=1e-9)
    # Eq. 14 written literally: R K1ᵀ P (Kp Kpᵀ P + K1 K1ᵀ P + α I)⁻¹
    eq14 = R @ K1.T @ P @ torch.linalg.inv(Kp @ Kp.T @ P + K1 @ K1.T @ P + alpha * torch.eye(32))
    assert torch.allclose(delta, eq14, atol=1e-9)
    # the update lives in the null space: Δ = ΔP, Δ K0 ≈ 0
    assert torch.allclose(delta, delta @ P, atol=1e-9)
    assert (delta @ K0).norm() < 1e-8 * delta.norm() * K0.norm()


def test_memit_closed_form_equals_normal_equations():
    K1, R, Kp, K0 = _problem(seed=3)  # noqa: N806
    n = K0.shape[1]
    K0 = K0 + 0.1 * torch.randn(K0.shape, generator=torch.Generator().manual_seed(9))  # full rank  # noqa: N806
    C0 = K0 @ K0.T / n  # noqa: N806
    lam = 50.0
    delta = memit_update(K1, R, C0, lam)
    # min ||Δ K1 - R||² + λ ||Δ K0||² / n  <=>  Δ [K1, sqrt(λ/n) K0] ≈ [R, 0]
    A = torch.cat([K1, (lam / n) ** 0.5 * K0], dim=1)  # noqa: N806
    b = torch.cat([R, torch.zeros(R.shape[0], n)], dim=1)
    ls = torch.linalg.lstsq(A.T, b.T).solution.T
    assert torch.allclose(delta, ls, atol=1e-9)
    # with previous keys (paper Eq. 15)
    delta_p = memit_update(K1, R, C0, lam, Kp @ Kp.T)
    normal = R @ K1.T @ torch.linalg.inv(lam * C0 + K1 @ K1.T + Kp @ Kp.T)
    assert torch.allclose(delta_p, normal, atol=1e-9)


def test_push_through_identity():
    K1, _, Kp, K0 = _problem(seed=5)  # noqa: N806
    P = null_space_projector(K0 @ K0.T / K0.shape[1], 1e-8)  # noqa: N806
    A = K1 @ K1.T + Kp @ Kp.T  # noqa: N806
    eye = torch.eye(A.shape[0])
    lhs = P @ torch.linalg.inv(A @ P + 10 * eye)
    rhs = torch.linalg.inv(P @ A @ P + 10 * eye) @ P
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_solve_update_dispatches_and_checks_inputs():
    K1, R, Kp, K0 = _problem(seed=7)  # noqa: N806
    C0 = K0 @ K0.T / K0.shape[1] + 1e-3 * torch.eye(32)  # noqa: N806
    P = null_space_projector(C0, 1e-2)  # noqa: N806
    inputs = SolveInputs(K1=K1.float(), R=R.float(), P=P.float(), C0=C0.float(), cache=(Kp @ Kp.T).float(), l2=10.0,
                         mom2_update_weight=100.0)
    a = solve_update("alphaedit", inputs)
    assert a.dtype == torch.float64  # fp32 inputs are solved in the requested dtype
    x = {k: getattr(inputs, k).double() for k in ("K1", "R", "P", "C0", "cache")}
    assert torch.allclose(a, alphaedit_update(x["K1"], x["R"], x["P"], x["cache"], 10.0), atol=1e-10)
    m = solve_update("memit", inputs)
    assert torch.allclose(m, memit_update(x["K1"], x["R"], x["C0"], 100.0, x["cache"]), atol=1e-10)
    assert solve_update("memit", inputs, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="known"):
        solve_update("no-such-solver", inputs)
    with pytest.raises(ValueError, match="projector"):
        solve_update("alphaedit", SolveInputs(K1=K1, R=R))


def test_spread_residual():
    z = torch.ones(3, 4) * 6
    cur = torch.zeros(3, 4)
    assert torch.allclose(spread_residual(z, cur, 0, 3), torch.full((4, 3), 2.0))
    assert torch.allclose(spread_residual(z, cur, 2, 3), torch.full((4, 3), 6.0))
    with pytest.raises(ValueError):
        spread_residual(z, cur, 3, 3)
