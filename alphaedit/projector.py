"""AlphaEdit's null-space projector P = Û Ûᵀ (paper Eqs. 8-9)."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def null_space_projector(cov: torch.Tensor, threshold: float = 2e-2, mode: str = "absolute") -> torch.Tensor:
    """P = Û Ûᵀ, Û = eigenvectors of ``cov`` = E[k kᵀ] (d_k x d_k) with eigenvalue below the threshold.

    ``mode="absolute"``: keep λ < threshold (reference code, threshold 2e-2 on the *mean* second
    moment). ``mode="relative"``: keep λ < threshold * λ_max (scale-free variant).
    The eigendecomposition runs in float64 on ``cov``'s device; P is returned in float64.
    """
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"null_space_projector: cov must be square, got shape {tuple(cov.shape)}")
    if mode not in ("absolute", "relative"):
        raise ValueError(f"null_space_projector: mode must be 'absolute' or 'relative', got {mode!r}")
    sym = cov.to(torch.float64)
    sym = (sym + sym.T) / 2  # (d_k, d_k)
    eigvals, eigvecs = torch.linalg.eigh(sym)  # ascending λ; eigvecs (d_k, d_k)
    cutoff = threshold if mode == "absolute" else threshold * float(eigvals[-1].clamp_min(0))
    keep = eigvals < cutoff
    basis = eigvecs[:, keep]  # Û: (d_k, r)
    proj = basis @ basis.T  # (d_k, d_k)
    d_k = cov.shape[0]
    rank = int(keep.sum())
    logger.info("null-space projector: rank %d / d_k %d = %.4f (threshold %g, %s)",
                rank, d_k, rank / d_k, threshold, mode)
    return proj


def projector_rank(proj: torch.Tensor) -> int:
    """rank(P) = trace(P) for an orthogonal projector."""
    return int(round(float(torch.trace(proj.to(torch.float64)))))


def kept_fraction(proj: torch.Tensor) -> float:
    """rank(P) / d_k: the share of key directions an AlphaEdit update may use."""
    return projector_rank(proj) / proj.shape[0]
