"""Closed-form updates: residual spreading (MEMIT) and the per-layer solve of each method.

Orientation: keys are columns, K1 ∈ R^{d_k x u}; residuals R ∈ R^{d_model x u}; the returned update
Δ ∈ R^{d_model x d_k} acts on keys, (W + Δ) k. Convert to a stored weight with
``alphaedit.models.to_weight_layout``.

All methods go through :func:`solve_update` with the method name as an argument. Later methods
(ROME, EMMET, PRUNE, RECT) plug in as further entries of ``SOLVERS``.
"""

from __future__ import annotations

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


def _solve_alphaedit(x: SolveInputs) -> torch.Tensor:
    if x.P is None:
        raise ValueError("solve_update(method='alphaedit') needs the null-space projector P of this layer")
    return alphaedit_update(x.K1, x.R, x.P, x.cache, x.l2)


def _solve_memit(x: SolveInputs) -> torch.Tensor:
    if x.C0 is None:
        raise ValueError("solve_update(method='memit') needs the key second moment C0 = E[k kᵀ] of this layer")
    return memit_update(x.K1, x.R, x.C0, x.mom2_update_weight, x.cache)


SOLVERS: dict[str, Callable[[SolveInputs], torch.Tensor]] = {
    "alphaedit": _solve_alphaedit,
    "memit": _solve_memit,
}


def solve_update(method: str, inputs: SolveInputs, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-layer closed-form update Δ (d_model x d_k) of ``method``, computed in ``dtype``."""
    if method not in SOLVERS:
        raise ValueError(f"unknown editing method {method!r}; known: {sorted(SOLVERS)}")

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype=dtype, device=inputs.K1.device)

    cast_inputs = SolveInputs(
        K1=inputs.K1.to(dtype), R=inputs.R.to(dtype), P=cast(inputs.P), C0=cast(inputs.C0),
        cache=cast(inputs.cache), l2=inputs.l2, mom2_update_weight=inputs.mom2_update_weight,
    )
    return SOLVERS[method](cast_inputs)
