"""Gaussian conditional probability paths, CFM targets and parameterisation conversions.

Convention: t = 0 is noise, t = 1 is data; p_t(x | z) = N(alpha_t z, beta_t^2 I), sampled as
x_t = alpha_t z + beta_t eps (z = data, eps ~ N(0, I)). The conditional vector field is

    u_t(x | z) = (alpha' - beta'/beta alpha) z + beta'/beta x        (lecture formula)
               = alpha' z + beta' eps          at x = x_t            (stable form, used for training)

A network can predict the velocity v, the data z_hat, the noise eps_hat or the score. For a Gaussian
path they are linear in each other given x: x = a z + b e and v = a' z + b' e is a 2x2 system in
(z, e) with determinant det = a b' - b a' (-1 for CondOT, -pi/2 for cosine, -a'/b for VP), so

    z_hat = (b' x - b v) / det,    eps_hat = (a v - a' x) / det,    score = -eps_hat / b.

Times t are (B,) (or a scalar, broadcast to the batch); tensors are (B, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmflow.flow.schedules import Schedule, ScheduleOutput

__all__ = ["PathSample", "GaussianPath"]


@dataclass
class PathSample:
    """One draw from the path: x_t (B, ...), t (B,), z (B, ...), eps (B, ...), target (B, ...)."""

    x_t: Tensor
    t: Tensor
    z: Tensor
    eps: Tensor
    target: Tensor


class GaussianPath:
    """p_t(x | z) = N(alpha_t z, beta_t^2 I) for a given schedule."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def __repr__(self) -> str:
        return f"GaussianPath({self.schedule!r})"

    def coefficients(self, t: Tensor, like: Tensor) -> ScheduleOutput:
        """Schedule at t (B,) or scalar, each field shaped (B, 1, ..., 1) to broadcast with like (B, ...)."""
        t = t.to(device=like.device, dtype=like.dtype)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t must be a scalar or shaped ({like.shape[0]},), got {tuple(t.shape)}")
        t = t.view(-1, *([1] * (like.ndim - 1)))
        return self.schedule(t)

    def sample(self, z: Tensor, t: Tensor, eps: Tensor) -> PathSample:
        """x_t = alpha_t z + beta_t eps and its CFM target, for z, eps (B, ...) and t (B,)."""
        c = self.coefficients(t, z)
        x_t = c.alpha * z + c.beta * eps
        target = c.d_alpha * z + c.d_beta * eps
        return PathSample(x_t=x_t, t=t, z=z, eps=eps, target=target)

    def target(self, z: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """CFM regression target alpha' z + beta' eps (B, ...): finite wherever alpha', beta' are."""
        c = self.coefficients(t, z)
        return c.d_alpha * z + c.d_beta * eps

    def conditional_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """u_t(x | z) by the lecture formula (B, ...); divides by beta, so singular at t = 1.

        Reference implementation for tests; training uses the stable `target`.
        """
        c = self.coefficients(t, x)
        ratio = c.d_beta / c.beta
        return (c.d_alpha - ratio * c.alpha) * z + ratio * x

    # ---- conversions between parameterisations -------------------------------------------------

    def _det(self, c: ScheduleOutput) -> Tensor:
        return c.alpha * c.d_beta - c.beta * c.d_alpha

    def velocity_to_data(self, v: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """z_hat = (b' x - b v) / det (B, ...). Singular where det = a b' - b a' = 0 (never for the
        built-in schedules on [0, 1); VP's det -> -inf at t = 1, where z_hat -> x correctly)."""
        c = self.coefficients(t, x)
        return (c.d_beta * x - c.beta * v) / self._det(c)

    def velocity_to_noise(self, v: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """eps_hat = (a v - a' x) / det (B, ...). Singular where det = 0 (as `velocity_to_data`)."""
        c = self.coefficients(t, x)
        return (c.alpha * v - c.d_alpha * x) / self._det(c)

    def velocity_to_score(self, v: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x) = -eps_hat / beta (B, ...). Singular at beta = 0 (t = 1) and where det = 0."""
        c = self.coefficients(t, x)
        return -(c.alpha * v - c.d_alpha * x) / (self._det(c) * c.beta)

    def score_to_velocity(self, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """v from the score (B, ...) via eps_hat = -beta score. Singular at alpha = 0 (t = 0 for
        CondOT and cosine), where x carries no information about z."""
        c = self.coefficients(t, x)
        return self.noise_to_velocity(-c.beta * score, x, t)

    def data_to_velocity(self, z_hat: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """v = a' z + b' (x - a z) / b (B, ...). Singular at beta = 0 (t = 1)."""
        c = self.coefficients(t, x)
        return c.d_alpha * z_hat + c.d_beta * (x - c.alpha * z_hat) / c.beta

    def noise_to_velocity(self, eps_hat: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """v = a' (x - b e) / a + b' e (B, ...). Singular at alpha = 0 (t = 0 for CondOT, cosine)."""
        c = self.coefficients(t, x)
        return c.d_alpha * (x - c.beta * eps_hat) / c.alpha + c.d_beta * eps_hat
