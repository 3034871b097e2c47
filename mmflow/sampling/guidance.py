"""Classifier-free guidance at sampling time.

Convention: t = 0 is noise, t = 1 is data. The guided velocity of the seeds is

    u~_t(x | y) = (1 - w) u_t(x | null) + w u_t(x | y),

w = 1 is plain conditional sampling, w > 1 trades diversity for fidelity. Both terms come from one
forward pass on 2B rows ([null; cond] stacked on dim 0), which is what makes CFG cost one network
evaluation per solver stage rather than two.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from mmflow.flow.cfg import Condition, broadcast_null
from mmflow.sampling.solvers import VelocityFn

__all__ = ["ModelFn", "cfg_velocity"]

ModelFn = Callable[..., Tensor]
"""(x (B, ...), t (B,), cond) -> v (B, ...); a MeanFlow model also takes h= (B,), its jump."""


def _expand_rows(cond: Condition, batch_size: int) -> Condition:
    """cond with batch 1 expanded to batch_size rows (batch batch_size passes through)."""

    def expand(c: Tensor, key: str) -> Tensor:
        if c.shape[0] == batch_size:
            return c
        if c.shape[0] == 1:
            return c.expand(batch_size, *c.shape[1:])
        raise ValueError(f"condition{key} has batch {c.shape[0]}, expected {batch_size} or 1")

    if isinstance(cond, Tensor):
        return expand(cond, "")
    if isinstance(cond, dict):
        return {k: expand(v, f"[{k!r}]") for k, v in cond.items()}
    raise TypeError(f"a condition must be a Tensor or a dict of Tensors, got {type(cond).__name__}")


def _concat(a: Condition, b: Condition) -> Condition:
    if isinstance(a, Tensor):
        return torch.cat([a, b], dim=0)
    return {k: torch.cat([a[k], b[k]], dim=0) for k in a}


def cfg_velocity(model_fn: ModelFn, cond: Condition, null_cond: Condition, guidance: float) -> VelocityFn:
    """Velocity (x (B, ...), t (B,)) -> (1 - w) u(x | null) + w u(x | cond), w = guidance.

    cond: Tensor (B, ...) or dict of them (batch B or 1); null_cond: same structure, each entry with
    batch B or 1 or no batch dim. guidance == 1 calls model_fn once on the B rows with cond only;
    otherwise once on 2B rows, null first. x may carry a batch of B (or of cond's batch when it is 1).
    The returned function also takes h= (B,), a MeanFlow jump, passed on to model_fn (the combination is
    then of average velocities, as the paper's CFG without guidance in training).
    """
    guidance = float(guidance)

    def velocity(x: Tensor, t: Tensor, h: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        c = _expand_rows(cond, b)
        jump = {} if h is None else {"h": h}
        if guidance == 1.0:
            return model_fn(x, t, c, **jump)
        n = broadcast_null(null_cond, c)
        if h is not None:
            jump = {"h": torch.cat([h, h], dim=0)}
        out = model_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), _concat(n, c), **jump)
        u_null, u_cond = out[:b], out[b:]
        return u_null + guidance * (u_cond - u_null)

    return velocity
