"""Closed-form updates: residual spreading (MEMIT) and the per-layer solve of each method.

Orientation: keys are columns, K1 ∈ R^{d_k x u}; residuals R ∈ R^{d_model x u}; the returned update
Δ ∈ R^{d_model x d_k} acts on keys, (W + Δ) k. Convert to a stored weight with
``alphaedit.models.to_weight_layout``.

All closed forms go through :func:`solve_update` with the solver name as an argument: "memit",
"alphaedit", "rome", "emmet" (``SOLVERS``). ROME and EMMET take AlphaEdit's projector P *inside*
the solve when ``SolveInputs.P`` is given (methods.md §2.6, §3.4). PRUNE and RECT are not solvers:
they post-process MEMIT's or AlphaEdit's update (``alphaedit.methods``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch


def spread_residual(targets: torch.Tensor, current: torch.Tensor, layer_index: int, n_layers: int) -> torch.Tensor:
    """MEMIT spreading: R = (z - h_L(current)) / (n_layers - i) for the i-th of n edited layers.

    targets, current: (u, d_model) -> R: (d_model, u) (one column per request).
    """
    if not 0 <= layer_index < n_layers:
        raise ValueError(f"spread_residual: layer_index {layer_index} outside 0..{n_layers - 1}")
    return ((targets - current) / (n_layers - layer_index)).T  # (d_model, u)


def alphaedit_update(K1: torch.Tensor, R: torch.Tensor, P: torch.Tensor, cache: torch.Tensor | None,  # noqa: N803
                     l2: float) -> torch.Tensor:
    """AlphaEdit Eq. 14: Δ = R K1ᵀ P (Kp Kpᵀ P + K1 K1ᵀ P + α I)⁻¹.

    Solved in the transposed form of the reference code:
    (P (K1 K1ᵀ + Kp Kpᵀ) + α I) X = P K1 Rᵀ, Δ = Xᵀ. Since P is symmetric,
    Xᵀ = R K1ᵀ P ((K1K1ᵀ + KpKpᵀ) P + α I)⁻¹, exactly Eq. 14.
    K1: (d_k, u), R: (d_model, u), P: (d_k, d_k), cache = Σ Kp Kpᵀ: (d_k, d_k) or None.
    """
    d_k = K1.shape[0]
    A = K1 @ K1.T  # (d_k, d_k)
    if cache is not None:
        A = A + cache
    eye = torch.eye(d_k, dtype=K1.dtype, device=K1.device)
    lhs = P @ A + l2 * eye  # (d_k, d_k)
    rhs = P @ K1 @ R.T  # (d_k, d_model)
    X = torch.linalg.solve(lhs, rhs)  # (d_k, d_model)
    return X.T  # (d_model, d_k)


def memit_update(K1: torch.Tensor, R: torch.Tensor, C0: torch.Tensor, mom2_update_weight: float,  # noqa: N803
                 cache: torch.Tensor | None = None) -> torch.Tensor:
    """MEMIT Eq. 15: Δ = R K1ᵀ (λ C0 + K1 K1ᵀ [+ Kp Kpᵀ])⁻¹, C0 = E[k kᵀ] (reference code form).

    K1: (d_k, u), R: (d_model, u), C0: (d_k, d_k). The reference solves (λC0 + K1K1ᵀ) X = K1 and
    sets Δ = R Xᵀ; the optional cache (Kp Kpᵀ) is the paper's Eq. 15 variant.
    """
    A = mom2_update_weight * C0 + K1 @ K1.T  # (d_k, d_k)
    if cache is not None:
        A = A + cache
    X = torch.linalg.solve(A, K1)  # (d_k, u)
    return R @ X.T  # (d_model, d_k)


def _cov(C0: torch.Tensor, cov_ridge: float) -> torch.Tensor:  # noqa: N803
    """C = C0 + μ I (d_k, d_k)."""
    if cov_ridge == 0:
        return C0
    return C0 + cov_ridge * torch.eye(C0.shape[0], dtype=C0.dtype, device=C0.device)


def rome_update(k: torch.Tensor, r: torch.Tensor, C: torch.Tensor | None = None,  # noqa: N803
                P: torch.Tensor | None = None, k_den: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
    """ROME (Meng et al. 2022, §3.1 Eq. 2) as Δ = r ũᵀ / (ũᵀ k_den), ũ = [P] C⁻¹ k.

    k: (d_k, 1) key giving the direction (k*), r: (d_model, 1) residual, C: (d_k, d_k) key second
    moment (None: C = I, ROME's ``mom2_adjustment: false``), P: null-space projector (None: no
    projection), k_den: key of the denominator (None: k; the original kmeng01/rome code uses the
    bare-prompt key here, methods.md §2.2). With k_den = k, (W + Δ) k = W k + r exactly, and with
    P the update satisfies Δ = Δ P (methods.md §2.6, P inside the solve).
    """
    if k.ndim != 2 or k.shape[1] != 1:
        raise ValueError(f"rome_update: ROME edits one key at a time, got keys of shape {tuple(k.shape)}")
    u_vec = k if C is None else torch.linalg.solve(C, k)  # (d_k, 1) C⁻¹ k
    if P is not None:
        u_vec = P @ u_vec  # (d_k, 1)
    den = (u_vec.T @ (k if k_den is None else k_den))  # (1, 1) ũᵀ k
    if float(den.abs()) <= torch.finfo(den.dtype).tiny:
        raise ValueError("rome_update: ũᵀ k is zero (the key lies outside the projector's range?)")
    return r @ u_vec.T / den  # (d_model, d_k), rank one


def emmet_update(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, ridge: float,  # noqa: N803
                 P: torch.Tensor | None = None, ridge_single_edit: bool = False) -> torch.Tensor:  # noqa: N803
    """EMMET (Gupta et al. 2024, arXiv 2403.14236): Δ = R (Kᵀ Ũ + ρ I)⁻¹ Ũᵀ, Ũ = [P] C⁻¹ K.

    K: (d_k, u) keys, R: (d_model, u) residuals, C: (d_k, d_k) key second moment, ρ = ``ridge``
    (added only when u > 1 unless ``ridge_single_edit``, as in emmet/emmet_main.py). With ρ = 0,
    (W + Δ) K = W K + R exactly; otherwise (W + Δ) K - (W K + R) = -ρ R (Kᵀ Ũ + ρ I)⁻¹. With P,
    Δ = Δ P (P inside the solve, methods.md §3.4).
    """
    u = K.shape[1]
    U = torch.linalg.solve(C, K)  # (d_k, u) C⁻¹ K  # noqa: N806
    if P is not None:
        U = P @ U  # noqa: N806
    A = K.T @ U  # (u, u)  # noqa: N806
    if ridge and (u > 1 or ridge_single_edit):
        A = A + ridge * torch.eye(u, dtype=A.dtype, device=A.device)  # noqa: N806
    return R @ torch.linalg.solve(A, U.T)  # (d_model, d_k)


@dataclass(frozen=True)
class SolveInputs:
    """Everything a per-layer solver may use; each method reads what it needs."""

    K1: torch.Tensor  # (d_k, u) keys of this batch at this layer
    R: torch.Tensor  # (d_model, u) spread residual
    P: torch.Tensor | None = None  # (d_k, d_k) null-space projector (AlphaEdit)
    C0: torch.Tensor | None = None  # (d_k, d_k) mean second moment E[k kᵀ] (MEMIT)
    cache: torch.Tensor | None = None  # (d_k, d_k) Σ Kp Kpᵀ of previous batches
    l2: float = 10.0
    mom2_update_weight: float = 15000.0
    K_den: torch.Tensor | None = None  # (d_k, 1) ROME's denominator key (None: K1)  # noqa: N815
    rome_mom2_adjustment: bool = True  # ROME: ũ = C0⁻¹ k (True) or k (False)
    emmet_ridge: float = 0.0  # EMMET ρ
    emmet_ridge_single_edit: bool = False
    cov_ridge: float = 0.0  # μ in C0 + μ I (ROME, EMMET)


def _solve_alphaedit(x: SolveInputs) -> torch.Tensor:
    if x.P is None:
        raise ValueError("solve_update(method='alphaedit') needs the null-space projector P of this layer")
    return alphaedit_update(x.K1, x.R, x.P, x.cache, x.l2)


def _solve_memit(x: SolveInputs) -> torch.Tensor:
    if x.C0 is None:
        raise ValueError("solve_update(method='memit') needs the key second moment C0 = E[k kᵀ] of this layer")
    return memit_update(x.K1, x.R, x.C0, x.mom2_update_weight, x.cache)


def _solve_rome(x: SolveInputs) -> torch.Tensor:
    if x.rome_mom2_adjustment and x.C0 is None:
        raise ValueError("solve_update(method='rome') needs C0 = E[k kᵀ] of this layer (or rome_mom2_adjustment=False)")
    C = _cov(x.C0, x.cov_ridge) if x.rome_mom2_adjustment else None  # noqa: N806
    return rome_update(x.K1, x.R, C, x.P, x.K_den)


def _solve_emmet(x: SolveInputs) -> torch.Tensor:
    if x.C0 is None:
        raise ValueError("solve_update(method='emmet') needs the key second moment C0 = E[k kᵀ] of this layer")
    return emmet_update(x.K1, x.R, _cov(x.C0, x.cov_ridge), x.emmet_ridge, x.P, x.emmet_ridge_single_edit)


SOLVERS: dict[str, Callable[[SolveInputs], torch.Tensor]] = {
    "alphaedit": _solve_alphaedit,
    "memit": _solve_memit,
    "rome": _solve_rome,
    "emmet": _solve_emmet,
}


def solve_update(method: str, inputs: SolveInputs, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-layer closed-form update Δ (d_model x d_k) of ``method``, computed in ``dtype``."""
    if method not in SOLVERS:
        raise ValueError(f"unknown editing method {method!r}; known: {sorted(SOLVERS)}")

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype=dtype, device=inputs.K1.device)

    cast_inputs = dataclasses.replace(
        inputs, K1=inputs.K1.to(dtype), R=inputs.R.to(dtype), P=cast(inputs.P), C0=cast(inputs.C0),
        cache=cast(inputs.cache), K_den=cast(inputs.K_den),
    )
    return SOLVERS[method](cast_inputs)
