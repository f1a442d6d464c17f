"""The method family on the shared path: ROME, EMMET, PRUNE, RECT, each with or without AlphaEdit's P.

Every method uses the same targets z, template-averaged keys, key statistics C0 = E[k kᵀ] and
MEMIT residual spreading (``alphaedit.editor.compute_deltas``); a method is a choice of per-layer
closed form (``alphaedit.solve``) plus an optional post-processing of its update:

==============  =======================  ====================================  =========================
method          per-layer solve          post-processing                       state across batches
==============  =======================  ====================================  =========================
memit           MEMIT (λ C0 ridge)       -                                     (Σ Kp Kpᵀ if configured)
alphaedit       AlphaEdit Eq. 14 (P)     -                                     Σ Kp Kpᵀ
rome            ROME, one edit a time    -                                     -
emmet           EMMET (equality)         -                                     -
prune           MEMIT                    F_α on σ(Δ_raw) >= σ_max(W_0)         W_0, Δ_raw
rect            MEMIT                    top-k% mask of |Δ| / (|W| + ε)        -
<m>+proj        P inside the solve:      as <m>; RECT: mask, then P again      as <m>; prune/rect +proj:
                ROME/EMMET ũ = P C0⁻¹ k;  (``rect_projection_order``)           Σ Kp Kpᵀ
                PRUNE/RECT: AlphaEdit
==============  =======================  ====================================  =========================

Choices where the papers are silent or the code differs (methods.md section in brackets):

- ROME edits one request at a time (the Editor splits a batch) at one layer; its residual and keys
  follow ``rome_key_mode`` (r-ROME by default, paper Eq. 2) [§2.3-2.4]. z is the shared one (block
  output at the edited layer), which for one layer gives ROME's δ, with MEMIT's clamp [§2.4].
- ROME and EMMET with the projection put P inside the solve, ũ = P C0⁻¹ k, which keeps the edit
  equality exact [§2.6, §3.4]; they have no Σ Kp Kpᵀ term: no published recipe exists [§3.4].
- EMMET's C is never updated (no previous-edit term) [§3.1]; FastEMMET = EMMET with
  ``key_budget_multiplier`` (statistics computed once on the unedited model, not per batch [§3.3]).
- PRUNE restrains the *accumulated* edit Δ_raw = Σ_b Δ_b; ``prune_mode="shadow"`` (official
  protocol: later edits are computed on W_0 + Δ_raw, the model holds W_0 + F(Δ_raw)) or
  ``"in_loop"`` (variant) [§4.3]. It wraps MEMIT, as AlphaEdit's PRUNE baseline does [§4.4], and
  AlphaEdit's solve with the projection [§6.2].
- RECT masks each batch's per-layer update against the current weight (AlphaEdit's
  ``memit_rect_main.py``: MEMIT per batch, k = 40) [§5.1-5.2]; δ = |Δ| / (|W| + ε), which equals the
  reference |Δ / (W + ε)| except where W ≈ -ε (division by zero there). With the projection the
  default is mask-then-project, so rect+proj keeps Δ K0 ≈ 0 like every +proj method; AlphaEdit §4.5
  does not say which order it used, and project-then-mask (exact sparsity) is the option [§5.3].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from alphaedit.hparams import PROJECTION_SUFFIX, EditHparams, method_base

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    """What one method name means on the shared path."""

    name: str  # as in alphaedit.hparams.METHODS
    base: str  # alphaedit | memit | rome | emmet | prune | rect
    projection: bool  # AlphaEdit's null-space projector P is used

    @property
    def solver(self) -> str:
        """Per-layer closed form in ``alphaedit.solve.SOLVERS``."""
        if self.base in ("rome", "emmet"):
            return self.base
        return "alphaedit" if self.projection else "memit"

    @property
    def restrains(self) -> bool:
        """PRUNE: the accumulated edit is restrained (``restrain_accumulated``)."""
        return self.base == "prune"

    @property
    def masks(self) -> bool:
        """RECT: each per-layer update is masked (``rect_mask``)."""
        return self.base == "rect"

    @property
    def max_batch(self) -> int | None:
        """ROME edits one request at a time; the others take a whole batch."""
        return 1 if self.base == "rome" else None

    @property
    def needs_projector(self) -> bool:
        return self.projection

    @property
    def needs_second_moment(self) -> bool:
        """C0 = E[k kᵀ] enters the solve (MEMIT's ridge, ROME's and EMMET's C0⁻¹)."""
        return self.solver in ("memit", "rome", "emmet")

    def uses_prev_keys(self, hparams: EditHparams) -> bool:
        """Whether the solve includes Σ Kp Kpᵀ of previous batches."""
        if self.solver == "alphaedit":
            return self.base == "alphaedit" or hparams.projected_uses_prev_keys
        if self.solver == "memit":
            return hparams.memit_uses_prev_keys
        return False  # ROME, EMMET: equality-constrained, no previous-edit term


def method_spec(name: str) -> MethodSpec:
    """Parse a method name of ``METHODS`` (raises ValueError naming the known ones)."""
    base = method_base(name)
    return MethodSpec(name=name, base=base, projection=name == "alphaedit" or name.endswith(PROJECTION_SUFFIX))


def method_name(base: str, projection: bool) -> str:
    """The name of ``base`` with or without the projection (``alphaedit`` is MEMIT's projected path)."""
    if base == "memit" and projection:
        return "alphaedit"
    name = base + PROJECTION_SUFFIX if projection else base
    method_base(name)  # validates
    return name


# --- ROME: which key and residual enter the rank-one formula (methods.md §2.4) --------------------

def rome_keys(K_star: torch.Tensor, K_bare: torch.Tensor, R: torch.Tensor, W: torch.Tensor,  # noqa: N803
              mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k for the direction, k for the denominator, residual r) of ROME's Δ = r ũᵀ / (ũᵀ k_den).

    K_star: (d_k, 1) template-averaged key k*, K_bare: (d_k, 1) key of the bare prompt, R: (d_model, 1)
    shared residual δ = z - h_L(bare), W: (d_model, d_k) current weight. v* = W k_bare + b + δ is the
    target MLP output (ROME's ``target_init + delta``).

    - ``r_rome``: (k*, k*, v* - W k* - b = δ + W (k_bare - k*)): then (W + Δ) k* + b = v* (Eq. 2).
    - ``original``: (k*, k_bare, δ): (W + Δ) k_bare + b = v*, (W + Δ) k* ≠ v* (kmeng01/rome).
    - ``p_rome``: (k_bare, k_bare, δ).
    - ``shared``: (k*, k*, δ): shifts W k* by δ, as MEMIT and EMMET do.
    """
    if mode == "r_rome":
        return K_star, K_star, R + W @ (K_bare - K_star)  # (d_model, 1)
    if mode == "original":
        return K_star, K_bare, R
    if mode == "p_rome":
        return K_bare, K_bare, R
    if mode == "shared":
        return K_star, K_star, R
    raise ValueError(f"rome_key_mode must be r_rome, original, p_rome or shared, got {mode!r}")


# --- RECT (methods.md §5) --------------------------------------------------------------------------

def rect_kept_count(n: int, top_percent: float) -> int:
    """Entries RECT keeps of n (no ties): n - m + 1, m = ⌊n (100 - k) / 100⌋ (kthvalue threshold)."""
    m = math.floor(n * (100 - top_percent) / 100)
    return n if m == 0 else n - m + 1


def rect_mask(delta: torch.Tensor, weight: torch.Tensor, top_percent: float = 40.0,
              eps: float = 1e-8) -> torch.Tensor:
    """RECT's mask M: True where δ_ij = |Δ_ij| / (|W_ij| + ε) is among the top ``top_percent`` %.

    As AlphaEdit's ``memit_rect_main.py``: threshold = the m-th smallest δ, m = ⌊N (100 - k) / 100⌋
    (``torch.kthvalue``), keep δ >= threshold, so N - m + 1 entries are kept when there are no ties.
    ``weight`` is the weight the update is added to, in the same orientation as ``delta``.
    """
    if delta.shape != weight.shape:
        raise ValueError(f"rect_mask: delta {tuple(delta.shape)} and weight {tuple(weight.shape)} differ in shape")
    rel = delta.abs() / (weight.abs().to(delta.dtype) + eps)  # δ, same shape
    m = math.floor(rel.numel() * (100 - top_percent) / 100)
    if m == 0:
        return torch.ones_like(rel, dtype=torch.bool)
    threshold = rel.flatten().kthvalue(m).values
    return rel >= threshold


# --- PRUNE (methods.md §4) -------------------------------------------------------------------------

def prune_restraint(sigma: torch.Tensor, sigma_max: float, alpha: float = math.e,
                    function: str = "log") -> torch.Tensor:
    """PRUNE's F: σ̄ = σ_max + log_α(σ / σ_max) where σ >= σ_max, σ̄ = σ below (PRUNE §4; methods.md §4.2).

    ``function="linear"``: σ̄ = (σ + σ_max) / 2 above the threshold (the reference's ``linear``).
    F is continuous at σ_max and increasing: values are compressed, not clipped.
    """
    if function == "log":
        above = sigma_max + torch.log(sigma / sigma_max) / math.log(alpha)
    elif function == "linear":
        above = (sigma + sigma_max) / 2
    else:
        raise ValueError(f"prune_restraint: function must be 'log' or 'linear', got {function!r}")
    return torch.where(sigma >= sigma_max, above, sigma)


def restrain_accumulated(delta: torch.Tensor, sigma_max: float, alpha: float = math.e, function: str = "log",
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ΔW̄ = U diag(F(σ̂)) Vᵀ over the numerical rank of the accumulated edit ΔW = U diag(σ̂) Vᵀ.

    ``delta``: W_n - W_0 in any orientation (singular values do not depend on it); σ_max is the
    largest singular value of W_0. Thin SVD in ``dtype``; components below the rank tolerance
    (max(shape) · eps · σ̂_1, as numpy's matrix_rank) are dropped, as ``read_weights`` does.
    Returns the restrained edit in ``delta``'s shape and dtype.
    """
    U, S, Vh = torch.linalg.svd(delta.to(dtype), full_matrices=False)  # noqa: N806
    if S.numel() == 0 or float(S[0]) == 0.0:
        return delta.clone()
    tol = float(S[0]) * max(delta.shape) * torch.finfo(dtype).eps
    r = int((S > tol).sum())
    S_bar = prune_restraint(S[:r], sigma_max, alpha, function)  # noqa: N806
    n_restrained = int((S[:r] >= sigma_max).sum())
    if n_restrained:
        logger.info("PRUNE: %d singular values >= σ_max(W_0) = %.4g restrained (largest %.4g -> %.4g)",
                    n_restrained, sigma_max, float(S[0]), float(S_bar[0]))
    return ((U[:, :r] * S_bar) @ Vh[:r]).to(delta.dtype)  # (rows, cols)


def spectral_norm(weight: torch.Tensor) -> float:
    """σ_max(W) = the largest singular value (fp64)."""
    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


# --- the per-layer update of a method ----------------------------------------------------------------

def postprocess_update(method: MethodSpec, delta: torch.Tensor, weight: torch.Tensor, hparams: EditHparams,
                       P: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
    """The update to store for one layer: RECT's mask (then P again with mask_then_project), else Δ.

    delta, weight: (d_model, d_k) in the solve's orientation; weight is the current W of the layer.
    """
    if not method.masks:
        return delta
    mask = rect_mask(delta, weight, hparams.rect_top_percent, hparams.rect_eps)
    out = delta * mask  # (d_model, d_k)
    if method.projection and hparams.rect_projection_order == "mask_then_project":
        if P is None:
            raise ValueError(f"{method.name}: the projector P is needed to project the masked update")
        out = out @ P.to(out.dtype)  # (d_model, d_k), Δ = Δ P again
    return out
