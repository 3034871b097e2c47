"""A small toy velocity network for low-dimensional data (the toy 2-D recipes); registered as "mlp_velocity".

u_theta(x, t, y): x (B, d), t (B,), y (B,) class labels or None -> (B, d); with interval_embed a second time
input h (B,), MeanFlow's jump length (mmflow/flow/meanflow.py), embedded like t and added to the conditioning.
Time and label enter through FiLM-style (scale, shift) modulation of every hidden layer, so t can
change the field everywhere; `ignore_time=True` zeroes the time input (the seeds' debugging check
"does t change anything?").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmflow.models.embeddings import LabelEmbedder, TimestepEmbedder, adopt_missing_weights, interval_input
from mmflow.model_io import register_model


@dataclass
class MLPVelocityConfig:
    dim: int = field(default=2, metadata={"min": 1, "help": "data dimension"})
    hidden: int = field(default=256, metadata={"min": 1})
    depth: int = field(default=4, metadata={"min": 1, "help": "number of hidden residual blocks"})
    num_classes: int = field(default=0, metadata={"min": 0, "help": "0 = unconditional; else labels 0..n-1, n = null"})
    time_frequency_dim: int = field(default=64, metadata={"min": 2})
    time_scale: float = field(default=1000.0, metadata={
        "min": 0.0, "min_exclusive": True,
        "help": "t and h are multiplied by this before their sinusoidal features (DiT's 1000); the fastest feature "
                "turns at this many radians per unit t, so d(u)/dt, MeanFlow's JVP target, grows with it"})
    ignore_time: bool = field(default=False, metadata={"help": "debug ablation: the model never sees t"})
    interval_embed: bool = field(default=False, metadata={
        "help": "MeanFlow: a second time input h (the jump length), zero-initialised output"})


class _ResidualBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(hidden, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        scale, shift = self.modulation(c).chunk(2, dim=-1)  # (B, hidden) each
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(y))))


@register_model("mlp_velocity")
class MLPVelocity(nn.Module):
    config_class = MLPVelocityConfig
    init_adaptable_fields = ("interval_embed",)  # train.init_from: adapt_init_state adds the interval embedder

    def __init__(self, config: MLPVelocityConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.inp = nn.Linear(config.dim, h)
        self.time = TimestepEmbedder(h, config.time_frequency_dim, config.time_scale)
        self.label = LabelEmbedder(config.num_classes, h) if config.num_classes > 0 else None
        self.interval = (TimestepEmbedder(h, config.time_frequency_dim, config.time_scale) if config.interval_embed
                         else None)
        self.blocks = nn.ModuleList(_ResidualBlock(h) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, config.dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All zero-inits live here: modulation starts as identity, the output as zero (as in DiT), and the
        interval embedding's output as zero (a flow model gaining it starts unchanged)."""
        for block in self.blocks:
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if self.interval is not None:
            nn.init.zeros_(self.interval.mlp[2].weight)
            nn.init.zeros_(self.interval.mlp[2].bias)

    def adapt_init_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """A flow model's weights for this one: a missing interval embedder keeps its zero-output init."""
        if self.interval is None:
            return state, []
        return adopt_missing_weights(state, self.interval, "interval")

    @property
    def null_label(self) -> int | None:
        return self.label.null_label if self.label is not None else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, drop: Tensor | None = None,
                h: Tensor | None = None) -> Tensor:
        """x (B, dim), t (B,) or scalar, y (B,) labels (None: the null label) -> velocity (B, dim).
        drop (B,) bool: those rows get the null label (CFG dropout in training). h (B,) or scalar: MeanFlow's
        jump length, interval_embed models only (None = 0: the instantaneous velocity)."""
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLPVelocity expects x of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.config.ignore_time:
            t = torch.zeros_like(t)
        h = interval_input(h, t, self.interval is not None)
        c = self.time(t)  # (B, hidden)
        if self.interval is not None:
            c = c + self.interval(h)
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.label.null_label, device=x.device, dtype=torch.long)
            elif drop is not None:
                y = torch.where(drop.to(y.device), torch.full_like(y, self.label.null_label), y)
            c = c + self.label(y)
        c = nn.functional.silu(c)
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.out_norm(h))
