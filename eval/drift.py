"""Drift of hidden representations under editing (the paper's Fig. 5), as numbers and a 2-D view.

The paper (Sec. 4.3, Fig. 5) shows by t-SNE that the hidden representations of preserved inputs stay
where they were after AlphaEdit's edits but move after MEMIT's. Here the representation of a prompt
is the output of block ``layer`` (the last edited layer, downstream of every edited weight) at the
prompt's last token, for a fixed list of preserved prompts (documents of the preservation corpus,
truncated to ``max_tokens``), on the unedited and on the edited model. Three numbers compare them:

* ``drift_shift``: distance between the two means, relative to the unedited spread
  (``||mean(H1) - mean(H0)|| / sqrt(mean_i ||h0_i - mean(H0)||^2)``);
* ``drift_displacement``: mean per-prompt move relative to the same spread
  (``mean_i ||h1_i - h0_i|| / sqrt(mean_i ||h0_i - mean(H0)||^2)``);
* ``drift_mmd``: the squared maximum mean discrepancy of the two sets (the biased V-statistic, so
  exactly 0 when nothing moved and never negative) under an RBF kernel whose bandwidth is the median
  pairwise distance of the unedited set; it sees a change of distribution, not a permutation.

:func:`pca_basis` fits the unedited set's mean and first two principal axes once, and
:func:`pca_project` puts any set (the unedited one, each checkpoint's) on that one basis, so points of
different checkpoints are comparable; :func:`pca_2d` does both. It is a deterministic stand-in for the
paper's t-SNE, which has no fixed axes across checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.hooks import capture, run_until_stopped
from alphaedit.models import ModelSpec, spec_for
from alphaedit.tokens import encode, model_device, pad_id, right_pad
from storage import names

DRIFT_METRICS = names.DRIFT_METRICS


@torch.no_grad()
def hidden_states(model: nn.Module, tokenizer, prompts: Sequence[str], layer: int, *, spec: ModelSpec | None = None,
                  max_tokens: int = 64, batch_size: int = 32) -> torch.Tensor:
    """(n, d_model) float64: block ``layer``'s output at each prompt's last token (truncated to ``max_tokens``)."""
    if not prompts:
        raise ValueError("hidden_states: no prompts")
    spec = spec or spec_for(model)
    name = spec.block_name(layer)
    ids = encode(tokenizer, prompts, max_length=max_tokens)
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"hidden_states: prompt {i} ({prompts[i][:40]!r}) tokenizes to no tokens")
    device, pad = model_device(model), pad_id(tokenizer)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            input_ids, mask = right_pad(chunk, pad, device)
            with capture(model, outputs_of=[name], stop_after=name) as store:
                run_until_stopped(model, input_ids, mask)
            h = store["out:" + name]
            h = h[0] if isinstance(h, tuple) else h  # (b, seq, d_model)
            last = torch.tensor([len(r) - 1 for r in chunk], device=device)
            out.append(h[torch.arange(len(chunk), device=device), last].double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def drift_metrics(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """``drift_shift``, ``drift_displacement`` and ``drift_mmd`` of ``after`` against ``before`` (both (n, d))."""
    if before.shape != after.shape or before.ndim != 2 or before.shape[0] < 2:
        raise ValueError(f"drift_metrics: need two (n, d) sets of the same shape with n >= 2, got "
                         f"{tuple(before.shape)} and {tuple(after.shape)}")
    h0, h1 = before.double(), after.double()
    mu0 = h0.mean(0)
    spread = float((h0 - mu0).pow(2).sum(1).mean().sqrt())
    if spread == 0.0:
        raise ValueError("drift_metrics: the unedited representations are all equal (no spread to compare to)")
    shift = float((h1.mean(0) - mu0).norm()) / spread
    displacement = float((h1 - h0).norm(dim=1).mean()) / spread
    return {names.METRIC_DRIFT_SHIFT: shift, names.METRIC_DRIFT_DISPLACEMENT: displacement,
            names.METRIC_DRIFT_MMD: mmd2_rbf(h0, h1)}


def mmd2_rbf(x: torch.Tensor, y: torch.Tensor) -> float:
    """Biased MMD² of samples ``x`` and ``y`` (n, d) under exp(-||a-b||²/(2σ²)), σ = median pairwise distance of x."""
    n = x.shape[0]
    dxx, dyy, dxy = torch.cdist(x, x), torch.cdist(y, y), torch.cdist(x, y)
    sigma = float(dxx[~torch.eye(n, dtype=torch.bool)].median()) or 1.0

    def k(d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-d.pow(2) / (2 * sigma**2))

    return max(0.0, float(k(dxx).mean() + k(dyy).mean() - 2 * k(dxy).mean()))


@dataclass(frozen=True)
class PcaBasis:
    """The unedited states' mean (d,) and first two principal axes (2, d), float64."""

    mean: torch.Tensor  # (d,)
    axes: torch.Tensor  # (2, d), orthonormal rows


def pca_basis(before: torch.Tensor) -> PcaBasis:
    """Mean and first two principal axes of ``before`` (n, d), n >= 2.

    The axes' signs are fixed (largest-magnitude loading positive), so the picture is the same run to run.
    """
    if before.ndim != 2 or before.shape[0] < 2:
        raise ValueError(f"pca_basis: need an (n, d) set with n >= 2, got {tuple(before.shape)}")
    h0 = before.double()
    mu = h0.mean(0)  # (d,)
    _, _, vt = torch.linalg.svd(h0 - mu, full_matrices=False)
    axes = vt[:2]  # (2, d)
    sign = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))  # (2, 1)
    return PcaBasis(mu, axes * torch.where(sign == 0, torch.ones_like(sign), sign))


def pca_project(states: torch.Tensor, basis: PcaBasis) -> torch.Tensor:
    """(n, 2): ``states`` (n, d) centred on the basis' mean and projected on its axes."""
    return (states.double() - basis.mean) @ basis.axes.T  # (n, 2)


def pca_2d(before: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Each set projected on the first two principal axes of ``before`` (centred on its mean), (n, 2) each."""
    basis = pca_basis(before)
    return [pca_project(s, basis) for s in (before, *others)]
