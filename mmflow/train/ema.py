"""Exponential moving average of a model's weights (kept in float32, beside the trained model)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `shadow`, a frozen copy of the model whose parameters track an EMA of the trained ones.

    decay_n = min(decay, (1 + n) / (10 + n)) when `warmup` is on, so early averages are not dominated
    by the random initialisation. Only the trainable parameters are averaged: frozen ones (a LoRA run's
    base weights) never change, so the shadow shares them with the model instead of holding a copy.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.shadow = copy.deepcopy(model, memo=frozen).eval()  # deepcopy's memo: frozen ones are not copied
        self.tracked = [n for n, p in model.named_parameters() if p.requires_grad]
        if not frozen:
            self.shadow.float()
        shadow_params = dict(self.shadow.named_parameters())
        for name in self.tracked:
            shadow_params[name].data = shadow_params[name].data.float()
            shadow_params[name].requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params, shadow_params = dict(model.named_parameters()), dict(self.shadow.named_parameters())
        for name in self.tracked:
            shadow_params[name].lerp_(params[name].detach().float(), 1.0 - d)
        buffers = dict(model.named_buffers())
        for name, b_ema in self.shadow.named_buffers():
            b_ema.copy_(buffers[name])
        self.num_updates += 1
