"""Whitening of text token states: word order as a strong input direction instead of a faint one.

A frozen text encoder's token states vary mostly with which words a caption has (colours, objects); what the
word order says (which object is left of which) is there, but as a faint direction: in MiniLM's layer 3 half
the gap between the two sides' mean states is 2.5% of the colours' spread (benchmarks/text_layer_probe.py), and
a model learns every word long before their order. Whitening the states over the training captions,
x -> (x - mean) W with W = (C + eps I)^(-1/2) (C their covariance), gives every direction the same size; eps (a
fraction of C's mean eigenvalue) keeps directions the captions never use from being blown up, and W is rescaled
so the whitened states keep the states' overall size. The MM-DiT applies it to its text input
(MMDiTConfig.text_whitening); the statistics are measured once, at a run's start, and saved with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DEFAULT_EPS", "Whitening", "fit_whitening"]

# added to every eigenvalue, times their mean: at 0.01 the weakest directions are amplified at most 10x the
# average one (benchmarks/text_whitening.py: side-of-object 13% of the colours' spread, was 2.5%)
DEFAULT_EPS = 0.01


@dataclass
class Whitening:
    """x -> (x - mean) @ matrix; mean (D,), matrix (D, D) symmetric; count = the token states measured."""

    mean: Tensor
    matrix: Tensor
    count: int

    def apply(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        return (x - self.mean.to(x)) @ self.matrix.to(x)


def fit_whitening(states: Tensor, eps: float = DEFAULT_EPS) -> Whitening:
    """The whitening of token states (N, D) (real tokens only: padding never reaches the model), in float64.

    After it the states' covariance is close to a multiple of the identity (directions weaker than eps times the
    mean eigenvalue stay weaker) and their mean squared distance from the mean is what it was."""
    if states.ndim != 2 or states.shape[0] < 2:
        raise ValueError(f"whitening needs token states (N >= 2, D), got {tuple(states.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it bounds how much a rare direction is amplified), got {eps}")
    x = states.detach().to("cpu", torch.float64)
    mean = x.mean(0)  # (D,)
    centred = x - mean  # (N, D)
    if not torch.isfinite(centred).all():
        raise ValueError("token states hold NaN or inf")
    lam, u = torch.linalg.eigh(centred.T @ centred / (x.shape[0] - 1))  # (D,), (D, D)
    floor = eps * lam.clamp_min(0).mean()
    if not floor > 0:
        raise ValueError(f"all {x.shape[0]} token states are the same vector: nothing to whiten")
    w = u @ torch.diag((lam.clamp_min(0) + floor).rsqrt()) @ u.T  # (D, D)
    size = centred.pow(2).sum(1).mean().sqrt() / (centred @ w).pow(2).sum(1).mean().sqrt()
    return Whitening(mean.float(), (w * size).float().contiguous(), int(x.shape[0]))
