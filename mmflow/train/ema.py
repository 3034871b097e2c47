"""Exponential moving average of a model's weights (kept in float32, beside the trained model)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `shadow`, a frozen copy of the model whose parameters track an EMA of the trained ones.

    decay_n = min(decay, (1 + n) / (10 + n)) when `warmup` is on, so early averages are not dominated
    by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        for name, p_ema in self.shadow.named_parameters():
            p_ema.lerp_(params[name].detach().float(), 1.0 - d)
        buffers = dict(model.named_buffers())
        for name, b_ema in self.shadow.named_buffers():
            b_ema.copy_(buffers[name])
        self.num_updates += 1
