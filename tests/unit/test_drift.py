"""Hidden-representation drift (Fig. 5): the statistics, the capture, and a real edit's effect."""

from __future__ import annotations

import pytest
import torch

from eval.drift import DRIFT_METRICS, drift_metrics, hidden_states, mmd2_rbf, pca_2d
from tests.unit.test_core_support import synthetic_texts, tiny_model, tiny_tokenizer


def test_no_change_is_zero_drift_and_a_shift_is_measured() -> None:
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(200, 16, generator=g, dtype=torch.float64)
    same = drift_metrics(h0, h0.clone())
    assert same["drift_shift"] == 0.0 and same["drift_displacement"] == 0.0 and abs(same["drift_mmd"]) < 1e-12
    moved = drift_metrics(h0, h0 + 1.0)  # every point moved by sqrt(16) = 4; the spread is ~sqrt(16) = 4
    assert moved["drift_shift"] == pytest.approx(moved["drift_displacement"]) and 0.8 < moved["drift_shift"] < 1.2
    assert moved["drift_mmd"] > 0.05
    # A random rotation-free resample of the same distribution: small MMD, large displacement.
    other = torch.randn(200, 16, generator=g, dtype=torch.float64)
    resampled = drift_metrics(h0, other)
    assert abs(resampled["drift_mmd"]) < 0.02 < moved["drift_mmd"] and resampled["drift_displacement"] > 1.0
    assert set(same) == set(DRIFT_METRICS)


def test_mmd_grows_with_the_shift() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 8, generator=g, dtype=torch.float64)
    assert mmd2_rbf(x, x + 0.2) < mmd2_rbf(x, x + 0.5) < mmd2_rbf(x, x + 2.0)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"same shape with n >= 2"):
        drift_metrics(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="no spread"):
        drift_metrics(torch.ones(3, 2), torch.ones(3, 2))


def test_pca_axes_are_the_unedited_sets() -> None:
    g = torch.Generator().manual_seed(2)
    h0 = torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1, 1, 1, 1], dtype=torch.float64)
    third = torch.linalg.svd(h0 - h0.mean(0), full_matrices=False)[2][2]  # the third principal axis
    p0, p1 = pca_2d(h0, h0 + 7.0 * third)
    assert p0.shape == (50, 2) and torch.allclose(p0.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert p0[:, 0].var() > p0[:, 1].var() > 1.0  # the two largest directions
    assert torch.allclose(p0, p1, atol=1e-6)  # a move orthogonal to both axes is invisible in 2-D
    (again,) = pca_2d(h0.clone())
    assert torch.equal(again, p0)


def test_hidden_states_follow_a_weight_change() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), n_layers=3)
    prompts = synthetic_texts(20)
    h0 = hidden_states(model, tok, prompts, layer=1, batch_size=7)
    assert h0.shape == (20, model.config.hidden_size) and h0.dtype == torch.float64
    single = torch.cat([hidden_states(model, tok, [p], layer=1) for p in prompts[:3]])
    assert torch.allclose(h0[:3], single, atol=1e-5)  # padding does not change the last token's state
    w = model.model.layers[2].mlp.down_proj.weight  # above layer 1: no drift at layer 1
    with torch.no_grad():
        w.add_(0.5)
    assert torch.equal(hidden_states(model, tok, prompts, layer=1, batch_size=7), h0)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.05)  # below: drift
    d = drift_metrics(h0, hidden_states(model, tok, prompts, layer=1))
    assert d["drift_displacement"] > 0.01


def test_pca_basis_is_fitted_on_the_unedited_set_only_and_shared_by_every_checkpoint() -> None:
    from eval.drift import pca_basis, pca_project
    from eval.suite import drift_point_list, drift_point_rows

    g = torch.Generator().manual_seed(3)
    h0 = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.tensor([4.0, 2.0, 1, 1, 1], dtype=torch.float64)
    basis = pca_basis(h0)
    assert basis.axes.shape == (2, 5) and torch.allclose(basis.axes @ basis.axes.T, torch.eye(2, dtype=torch.float64))
    assert torch.allclose(basis.mean, h0.mean(0))
    shift = torch.tensor([3.0, -1.0, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(pca_project(h0 + shift, basis) - pca_project(h0, basis), (shift @ basis.axes.T).expand(40, 2))
    # A checkpoint's states do not move the basis: a far-away edited set projects with the unedited mean/axes.
    far = h0 * 10.0 + 100.0
    points = drift_point_list(h0, far)
    assert len(points) == 80 and [p.edited for p in points] == [False] * 40 + [True] * 40
    edited = torch.tensor([[p.x, p.y] for p in points if p.edited], dtype=torch.float64)
    assert torch.allclose(edited, pca_project(far, basis))
    assert torch.allclose(edited, pca_2d(h0, far)[1])
    # Rows: edited states under edits_done, unedited ones under 0; at edits_done 0 only the unedited set.
    rows = drift_point_rows("r", 20, points)
    assert sorted({r["edits_done"] for r in rows}) == [0, 20] and len(rows) == 80
    assert len(drift_point_rows("r", 0, drift_point_list(h0, h0))) == 40
    with pytest.raises(ValueError, match="n >= 2"):
        pca_basis(torch.zeros(1, 5))
