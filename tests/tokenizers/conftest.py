"""Shared by the tokenizer tests: a short Adam fit of a VAE, to show that its loss falls."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn


def _short_fit(vae: nn.Module, x: Tensor, steps: int, lr: float = 3e-3, kl_weight: float = 1e-6) -> tuple[list[float], Tensor]:
    """L1 + small KL for `steps` Adam steps on x -> (losses per step, eval-mode posterior-mean reconstruction)."""
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        out = vae(x, generator=torch.Generator().manual_seed(step))
        loss = (out.reconstruction - x).abs().mean() + kl_weight * out.posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        rec = vae.eval()(x, sample_posterior=False).reconstruction
    return losses, rec


@pytest.fixture
def short_fit() -> Callable[..., tuple[list[float], Tensor]]:
    return _short_fit
