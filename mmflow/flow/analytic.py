"""Isotropic Gaussian mixtures as data: exact marginal paths, velocities and scores.

Convention: t = 0 is noise, t = 1 is data, x_t = alpha_t z + beta_t eps. If p_data is the mixture
sum_k w_k N(mu_k, s_k^2 I), then p_t is the mixture sum_k w_k N(a mu_k, (a^2 s_k^2 + b^2) I) and the
marginal velocity of the seeds' marginalization trick, E[alpha' z + beta' eps | x_t = x], is known
in closed form. That gives ground truth for solvers, samplers and guidance without training
anything. With v_k = a^2 s_k^2 + b^2 and r_k(x) the posterior of component k given x_t = x:

    E[z   | x, k] = mu_k + a s_k^2 / v_k (x - a mu_k)
    E[eps | x, k] = b / v_k (x - a mu_k)
    u_t(x) = sum_k r_k(x) (a' E[z | x, k] + b' E[eps | x, k])

No division by b, so u is finite at t = 1 (needs s_k > 0); b' enters only through the product
b b' (`Schedule.beta_d_beta`), so VP's infinite b' at t = 1 gives the right limit, not 0 * inf.
Everything follows x's dtype: pass float64 inputs for tests that differentiate or compare to tight
tolerances.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from mmflow.flow.paths import GaussianPath

__all__ = ["MixtureMarginal", "GaussianMixture", "eight_gaussians"]


class MixtureMarginal(NamedTuple):
    """Components of p_t: means (..., K, d) and isotropic variances (..., K)."""

    means: Tensor
    vars: Tensor


class SampleSummary(NamedTuple):
    """How samples x (N, d) sit against a mixture: mean (d,), covariance (d, d), the fraction nearest
    each component (K,), and the mean squared distance to the nearest component mean (scalar)."""

    mean: Tensor
    covariance: Tensor
    weights: Tensor
    within: Tensor


class GaussianMixture:
    """sum_k w_k N(mu_k, s_k^2 I_d): means (K, d), stds (K,) > 0, weights (K,) >= 0 (normalised)."""

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor) -> None:
        if means.ndim != 2:
            raise ValueError(f"means must be (K, d), got {tuple(means.shape)}")
        k = means.shape[0]
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(
                f"stds and weights must be ({k},), got {tuple(stds.shape)}, {tuple(weights.shape)}"
            )
        if not bool((stds > 0).all()):
            raise ValueError("component stds must be > 0 (a point mass has no finite velocity at t = 1)")
        if not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def component(self, k: int) -> "GaussianMixture":
        """The k-th component alone, as a one-component mixture (p_data given label k)."""
        return GaussianMixture(self.means[k : k + 1], self.stds[k : k + 1], self.weights.new_ones(1))

    def mean(self) -> Tensor:
        """(d,) mean of the data distribution."""
        return self.weights @ self.means

    def summarize(self, x: Tensor) -> SampleSummary:
        """Moments and nearest-component weights of samples x (N, d), to compare with this mixture's."""
        dist = torch.cdist(x, self.means.to(x.dtype))  # (N, K)
        weights = torch.bincount(dist.argmin(1), minlength=self.n_components) / x.shape[0]
        return SampleSummary(x.mean(0), torch.cov(x.T), weights, (dist.min(1).values ** 2).mean())

    def covariance(self) -> Tensor:
        """(d, d) covariance of the data distribution."""
        mu = self.mean()
        centered = self.means - mu
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        within = (self.weights * self.stds**2).sum() * eye
        return within + (self.weights[:, None] * centered).T @ centered

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws: x (n, d) and their component index (n,)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(
            (n, self.dim), generator=generator, dtype=self.means.dtype, device=self.means.device
        )
        return self.means[comp] + self.stds[comp, None] * noise, comp

    # ---- the path p_t -----------------------------------------------------------------------

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = dict(device=like.device, dtype=like.dtype)
        return self.means.to(**kw), self.stds.to(**kw), self.weights.to(**kw)

    @staticmethod
    def _t_column(t: Tensor | float, x: Tensor) -> Tensor:
        """t (B,) or scalar -> (B, 1), to broadcast against per-component (B, K) quantities."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must be a scalar or shaped ({x.shape[0]},), got {tuple(t.shape)}")
        return t[:, None]

    def marginal(self, t: Tensor | float, path: GaussianPath) -> MixtureMarginal:
        """Components of p_t for t scalar -> means (K, d), vars (K,); t (B,) -> (B, K, d), (B, K)."""
        t = torch.as_tensor(t, dtype=self.means.dtype, device=self.means.device)
        c = path.schedule(t)
        a, b = c.alpha[..., None], c.beta[..., None]  # (..., 1)
        means = a[..., None] * self.means  # (..., K, d)
        variances = a**2 * self.stds**2 + b**2  # (..., K)
        return MixtureMarginal(means=means, vars=variances)

    def _posterior(self, x: Tensor, t: Tensor | float, path: GaussianPath):
        """Pieces shared by the methods below, at x (B, d) and t.

        Returns logits log w_k + log N_k(x) (B, K), residuals x - a mu_k (B, K, d), component
        variances a^2 s_k^2 + b^2 (B, K), and the schedule at t with fields (B, 1).
        """
        means, stds, weights = self._params(x)
        t_col = self._t_column(t, x)
        c = path.schedule(t_col)
        var = c.alpha**2 * stds**2 + c.beta**2  # (B, K)
        # the residual itself, not |x|^2 - 2 a x.mu + a^2 |mu|^2, which cancels badly in float32
        resid = x[:, None, :] - c.alpha[:, :, None] * means  # (B, K, d)
        sq = resid.pow(2).sum(-1)  # (B, K)
        logits = torch.log(weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logits, resid, var, t_col, c

    def log_prob(self, x: Tensor, t: Tensor | float, path: GaussianPath) -> Tensor:
        """log p_t(x) (B,) for x (B, d) and t (B,) or scalar."""
        logits, *_ = self._posterior(x, t, path)
        return torch.logsumexp(logits, dim=-1)

    def responsibilities(self, x: Tensor, t: Tensor | float, path: GaussianPath) -> Tensor:
        """P(component k | x_t = x) (B, K), by log-sum-exp."""
        logits, *_ = self._posterior(x, t, path)
        return torch.softmax(logits, dim=-1)

    def score(self, x: Tensor, t: Tensor | float, path: GaussianPath) -> Tensor:
        """grad_x log p_t(x) = -sum_k r_k (x - a mu_k) / v_k, (B, d)."""
        logits, resid, var, _, _ = self._posterior(x, t, path)
        r = torch.softmax(logits, dim=-1)  # (B, K)
        return -torch.einsum("bk,bkd->bd", r / var, resid)

    def velocity(self, x: Tensor, t: Tensor | float, path: GaussianPath) -> Tensor:
        """Exact marginal velocity u_t(x) (B, d) of p_t, finite on all of [0, 1].

        sum_k r_k (a' E[z | x, k] + b' E[eps | x, k]) = a' sum_k r_k mu_k + sum_k r_k c_k (x - a mu_k)
        with c_k = (a a' s_k^2 + b b') / v_k.
        """
        means, stds, _ = self._params(x)
        logits, resid, var, t_col, c = self._posterior(x, t, path)
        r = torch.softmax(logits, dim=-1)  # (B, K)
        bdb = path.schedule.beta_d_beta(t_col)  # (B, 1); b b', finite where b' is not
        coef = (c.alpha * c.d_alpha * stds**2 + bdb) / var  # (B, K)
        return c.d_alpha * (r @ means) + torch.einsum("bk,bkd->bd", r * coef, resid)


def eight_gaussians(
    radius: float = 4.0, std: float = 0.5, dtype: torch.dtype = torch.float64
) -> GaussianMixture:
    """Eight equal-weight components of std `std` evenly spaced on a circle of radius `radius`.

    float64 by default (a reference distribution); `velocity` etc. still follow their input's dtype.
    """
    angles = torch.arange(8, dtype=dtype) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (8, 2)
    return GaussianMixture(means, torch.full((8,), std, dtype=dtype), torch.ones(8, dtype=dtype))
