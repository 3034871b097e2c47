from __future__ import annotations

import pytest
import torch

from mmflow.text.whitening import DEFAULT_EPS, fit_whitening


def test_whitened_states_have_equal_scales_and_keep_their_size() -> None:
    g = torch.Generator().manual_seed(0)
    mix = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]  # a rotation: the strong directions are not the axes
    scales = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    states = (torch.randn(5000, 6, generator=g) * scales) @ mix.T + 3.0
    w = fit_whitening(states)
    assert w.count == 5000
    assert torch.allclose(w.mean, states.mean(0), atol=1e-5)
    white = w.apply(states)
    var = torch.linalg.eigvalsh(torch.cov(white.T))  # ascending
    # a direction of variance lam comes out in proportion to lam / (lam + eps x mean lam): the weak ones stay
    # weaker (0.06 -> 0.31 of the strongest), the rest within 13% of each other; before: a 1000x spread
    lam = torch.linalg.eigvalsh(torch.cov(states.T))
    want = lam / (lam + DEFAULT_EPS * lam.mean())
    assert torch.allclose(var / var.max(), want / want.max(), atol=1e-3)
    assert var[2:].max() / var[2:].min() < 1.15
    assert torch.allclose(white.pow(2).sum(1).mean(), (states - states.mean(0)).pow(2).sum(1).mean(), rtol=1e-3)
    assert torch.allclose(w.matrix, w.matrix.T, atol=1e-6)
    # without the floor the weakest direction would be blown up to the others' size: eps bounds it
    sharper = fit_whitening(states, eps=1e-6)
    var_sharp = torch.linalg.eigvalsh(torch.cov(sharper.apply(states).T))
    assert var_sharp.max() / var_sharp.min() < 1.01


def test_whitening_refuses_what_it_cannot_whiten() -> None:
    with pytest.raises(ValueError, match=r"needs token states \(N >= 2, D\), got \(1, 4\)"):
        fit_whitening(torch.randn(1, 4))
    with pytest.raises(ValueError, match="all 10 token states are the same vector"):
        fit_whitening(torch.ones(10, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_whitening(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="eps must be > 0"):
        fit_whitening(torch.randn(10, 4), eps=0.0)
    assert DEFAULT_EPS == 0.01
