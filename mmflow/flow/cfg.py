"""Condition dropout for classifier-free guidance training.

The seeds' L_CFM^CFG: with probability p replace the condition y by the null condition
(y <- null), so one network learns both u(x | y) and u(x | null). A condition is a Tensor (B, ...)
or a dict[str, Tensor] of such (e.g. text tokens (B, S, D), their mask (B, S), pooled (B, D)).
The null condition has the same structure with each entry either without the batch dim or with
batch 1 (a learned or fixed "empty prompt"), or batch B.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

__all__ = ["Condition", "condition_dropout_mask", "broadcast_null", "apply_condition_dropout", "take_rows"]

Condition = Union[Tensor, dict[str, Tensor]]


def condition_dropout_mask(
    batch_size: int,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(B,) bool, True where the condition is replaced by null (independently with probability p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must be in [0, 1], got {p}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    # rand is in [0, 1): p = 0 never drops, p = 1 always does.
    return torch.rand((batch_size,), generator=generator, device=device) < p


def _broadcast_tensor(null: Tensor, like: Tensor, key: str) -> Tensor:
    if null.ndim == like.ndim - 1:
        null = null.unsqueeze(0)
    if null.ndim != like.ndim or null.shape[1:] != like.shape[1:] or null.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"null condition{key} shaped {tuple(null.shape)} cannot stand in for rows of {tuple(like.shape)}"
        )
    return null.to(device=like.device, dtype=like.dtype).expand_as(like)


def broadcast_null(null: Condition, like: Condition) -> Condition:
    """Null condition expanded to like's batch: same structure, each entry shaped as in like.

    Each entry of null is shaped like one row of like (no batch dim), or has batch 1 or B.
    """
    if isinstance(like, Tensor):
        if not isinstance(null, Tensor):
            raise TypeError(f"condition is a Tensor but null condition is {type(null).__name__}")
        return _broadcast_tensor(null, like, "")
    if isinstance(like, dict):
        if not isinstance(null, dict):
            raise TypeError(f"condition is a dict but null condition is {type(null).__name__}")
        missing = sorted(set(like) - set(null))
        if missing:
            raise KeyError(f"null condition lacks keys {missing}")
        return {k: _broadcast_tensor(null[k], v, f"[{k!r}]") for k, v in like.items()}
    raise TypeError(f"a condition must be a Tensor or a dict of Tensors, got {type(like).__name__}")


def apply_condition_dropout(cond: Condition, null: Condition, mask: Tensor) -> Condition:
    """cond with the rows where mask (B,) is True replaced by null; same structure as cond.

    Works for any dtype, including bool attention masks.
    """
    if mask.ndim != 1 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a 1-D bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    full_null = broadcast_null(null, cond)

    def select(c: Tensor, n: Tensor) -> Tensor:
        if c.shape[0] != mask.shape[0]:
            raise ValueError(f"mask has {mask.shape[0]} rows but the condition has {c.shape[0]}")
        m = mask.to(c.device).view(-1, *([1] * (c.ndim - 1)))
        return torch.where(m, n, c)

    if isinstance(cond, Tensor):
        return select(cond, full_null)
    return {k: select(v, full_null[k]) for k, v in cond.items()}


def take_rows(cond: Condition, rows: Tensor) -> Condition:
    """cond's rows `rows` (K,) long, in that order: each entry (B, ...) -> (K, ...); same structure as cond."""
    if isinstance(cond, Tensor):
        return cond[rows.to(cond.device)]
    if not isinstance(cond, dict):
        raise TypeError(f"a condition must be a Tensor or a dict of Tensors, got {type(cond).__name__}")
    batch = {v.shape[0] for v in cond.values()}
    if len(batch) > 1:
        raise ValueError(f"condition entries disagree on the batch size: { {k: tuple(v.shape) for k, v in cond.items()} }")
    return {k: v[rows.to(v.device)] for k, v in cond.items()}
