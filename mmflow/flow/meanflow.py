"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling"), in mmflow's time.

Convention: t = 0 is noise, t = 1 is data. The network u(z, t, h) is the average velocity over a jump of
length h >= 0 from t towards data,

    u(z_t, t, h) = (1 / h) int_t^{t+h} v(z_s, s) ds,   so   z_{t+h} = z_t + h u(z_t, t, h)   (any h),

and u(z, t, 0) = v(z, t), flow matching's velocity. Differentiating h u = int_t^{t+h} v in t with the end
t + h fixed, along the trajectory (dz/dt = v), gives the MeanFlow identity

    u = v + h du/dt,   du/dt = (d_z u) v + d_t u - d_h u      (dh/dt = -1 when the end is fixed),

whose right side is the regression target, under stop-gradient, with the path's conditional velocity for v
and du/dt from ONE forward-mode Jacobian-vector product of the network, tangents (v, 1, -1) on (z, t, h).

From the paper (t_p = 1 is noise, r_p <= t_p, z_{r_p} = z_{t_p} - (t_p - r_p) u_p, network input
(t_p, t_p - r_p)): t = 1 - t_p, h = t_p - r_p (the same second input), u = -u_p, v = -v_p; its target
u_p = v_p - (t_p - r_p)(v_p d_z u_p + d_{t_p} u_p) is the one above.

Times (`jump_times`): every row draws t from the recipe's time sampler, exactly as flow matching does; a
fraction `ratio_r_neq_t` of rows (the paper's 25%) draws a second time from it and jumps between the two,
t = min, h = max - min (the paper's sorted pair; its sampler is logit_normal m = -0.4, s = 1). Rows with
h = 0 have target v: with fm_rows_time "first" (the default) their loss is flow matching's exactly; "min" gives
them the smaller of both draws, as the paper's sampler does (sorted pair, then r := t), i.e. more noise.

The JVP's tangent on z is the path's conditional velocity v, as the paper's; `tangent="model"` takes the network's
own velocity u(z, t, 0) instead (improved MeanFlow, Geng, Lu et al. 2025), the trajectory's marginal velocity.

A teacher (flow.meanflow.teacher, a trained flow model, frozen): its velocity at x_t replaces the pair's
conditional v in the target and as the JVP's tangent (its null velocity in guidance's mix), so the target's v is
the marginal field the jumps integrate rather than one pair's noisy draw of it: MeanFlow as distillation of the
model it was fine-tuned from (still one network and one phase, and no pairs to make, unlike reflow).

Cost: forward-mode AD has no formula for torch's fused attention kernels (nor for the MM-DiT's fused
GELU-linear), so the JVP runs inside `plain_kernels()`: "math" attention, which stores the (B, H, N, N)
scores (flash: O(N)), and the tangent roughly doubles the forward's work. The JVP runs without gradient on
the jumping rows only, and the gradient flows through one plain forward of every row (`meanflow_target`).

Guidance (`guided_velocity`, the paper's Sec. 4.2 and its kappa variant): with flow.meanflow.guidance omega > 1
the path's velocity v in the identity is replaced by omega v + kappa u(z, t, 0 | c) + (1 - omega - kappa)
u(z, t, 0 | null), the model's own current velocities under stop-gradient; its fixed point is the CFG field
u_null + omega / (1 - kappa) (u_c - u_null), so the model learns the guided field and samples with one row per
jump (sample.guidance 1). Rows whose condition is the null (dropout) keep v's expectation: the unconditional
velocity. Without it, CFG is applied at sampling, on the average velocities (2B rows per jump).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from mmflow.models.attention import plain_kernels

__all__ = ["AverageVelocityFn", "MeanFlowTarget", "guided_velocity", "jump_times", "meanflow_target"]

AverageVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(z (B, ...), t (B,), h (B,)) -> u (B, ...), the average velocity over [t, t + h]."""


def jump_times(t: Tensor, other: Tensor, jump: Tensor, fm_rows_time: str = "first") -> tuple[Tensor, Tensor]:
    """(t, h), each (B,): where jump (B,) bool, t = min(t, other) and h = |t - other| (t, other (B,) in [0, 1]);
    elsewhere h = 0 and t unchanged (fm_rows_time "first") or min(t, other) ("min", the paper's sampler)."""
    if fm_rows_time not in ("first", "min"):
        raise ValueError(f"fm_rows_time must be 'first' or 'min', got {fm_rows_time!r}")
    lo = torch.minimum(t, other)
    return (torch.where(jump, lo, t) if fm_rows_time == "first" else lo,
            torch.where(jump, torch.maximum(t, other) - lo, torch.zeros_like(t)))


def guided_velocity(v: Tensor, u_null: Tensor, omega: float, u_cond: Tensor | None = None, kappa: float = 0.0
                    ) -> Tensor:
    """The guided velocity omega v + kappa u_cond + (1 - omega - kappa) u_null (all (B, ...)): the path's
    velocity v mixed with the model's own h = 0 outputs under the condition (u_cond) and the null (u_null),
    both detached. kappa > 0 needs u_cond."""
    if kappa and u_cond is None:
        raise ValueError("kappa > 0 needs the model's conditional velocity u_cond")
    out = omega * v + (1.0 - omega - kappa) * u_null.detach().to(v.dtype)
    return out + kappa * u_cond.detach().to(v.dtype) if kappa else out


@dataclass
class MeanFlowTarget:
    """u: the network's output (B, ...), in the graph; target: v + h du/dt (B, ...), detached; du_dt: the
    JVP (B, ...), detached (for diagnostics and tests)."""

    u: Tensor
    target: Tensor
    du_dt: Tensor


def meanflow_target(u_fn: AverageVelocityFn, z: Tensor, t: Tensor, h: Tensor, v: Tensor,
                    rows_fn: Callable[[Tensor], AverageVelocityFn] | None = None,
                    tangent: Literal["path", "model"] = "path") -> MeanFlowTarget:
    """The network's average velocity at (z (B, ...), t (B,), h (B,)) and its MeanFlow target v + h du/dt, with
    v (B, ...) the path's velocity at (z, t) and du/dt = (d_z u) v + d_t u - d_h u by torch.func.jvp (inside
    plain_kernels(): attention on the math backend). Gradients flow into u only.

    u comes from one plain forward of u_fn (the network as trained: fused kernels, compiled or DDP-wrapped);
    du/dt, which the target takes without gradient, from a JVP under no_grad (no graph kept). rows_fn: given
    row indices (K,), the same network restricted to those rows (their condition's rows), unwrapped and eager
    (forward-mode AD runs through neither a compiled graph nor DDP's forward: pytorch#182661); with it the JVP
    runs on the jumping rows (h > 0) only, as a row with h = 0 has target v whatever du/dt is. Without it the
    JVP runs u_fn on every row.

    tangent: the velocity along which du/dt is taken. "path": v, the paper's. "model": the network's own
    velocity u(z, t, 0) on the jumping rows, without gradient (improved MeanFlow, Geng, Lu et al. 2025, arXiv
    2512.02012): the marginal velocity the trajectory really follows rather than one pair's conditional one, so
    the target's du/dt no longer carries the pair's noise; costs one more no-grad forward of the jumping rows."""
    if tangent not in ("path", "model"):
        raise ValueError(f"tangent must be 'path' or 'model', got {tangent!r}")
    if v.shape != z.shape:
        raise ValueError(f"v {tuple(v.shape)} and z {tuple(z.shape)} differ in shape")
    if t.shape != z.shape[:1] or h.shape != t.shape:
        raise ValueError(f"t and h must be shaped ({z.shape[0]},), got {tuple(t.shape)} and {tuple(h.shape)}")
    v = v.to(z.dtype)
    u = u_fn(z, t, h)  # (B, ...): the only pass the gradient flows through
    du_dt = torch.zeros_like(u)
    jump = h > 0  # (B,)
    if bool(jump.any()):
        rows = jump.nonzero().squeeze(1) if rows_fn is not None else torch.arange(len(h), device=h.device)  # (J,)
        fn = rows_fn(rows) if rows_fn is not None else u_fn
        ones = torch.ones_like(t[rows])
        with torch.no_grad():
            dz = v[rows] if tangent == "path" else fn(z[rows], t[rows], torch.zeros_like(t[rows])).to(v.dtype)
            with plain_kernels():
                _, du = torch.func.jvp(fn, (z[rows], t[rows], h[rows]), (dz, ones, -ones))
        du_dt[rows] = du.to(du_dt.dtype)
    hb = h.view(-1, *([1] * (z.ndim - 1))).to(du_dt.dtype)  # (B, 1, ...)
    return MeanFlowTarget(u=u, target=(v.to(du_dt.dtype) + hb * du_dt).detach(), du_dt=du_dt)
