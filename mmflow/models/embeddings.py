"""Embedders shared by the velocity models: timestep (sinusoidal + MLP) and class labels with a null class;
MeanFlow's second time input (the jump length h) and the weights a flow model gaining it starts with."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def interval_input(h: Tensor | None, t: Tensor, has_embedder: bool) -> Tensor | None:
    """MeanFlow's jump length h as a model takes it: (B,) like t (B,) (a scalar is broadcast; None -> zeros,
    the instantaneous velocity), or None for a model without an interval embedding (which refuses an h)."""
    if not has_embedder:
        if h is not None:
            raise ValueError("this model has no interval embedding, so it takes no jump length h (MeanFlow models "
                             "are trained with flow.objective: meanflow; use another sample.solver)")
        return None
    if h is None:
        return torch.zeros_like(t)
    h = h.expand(t.shape[0]) if h.ndim == 0 else h
    if h.shape != t.shape:
        raise ValueError(f"h must be a scalar or shaped {tuple(t.shape)} like t, got {tuple(h.shape)}")
    return h


def adopt_missing_weights(state: dict[str, Tensor], module: nn.Module, prefix: str) -> tuple[dict[str, Tensor], list[str]]:
    """`state` (another model's weights) with `module`'s own current weights under `prefix.` added when it has
    none of them (a flow model starting a MeanFlow one: the new embedder keeps its zero-output init), and
    what changed; a state with some but not all of them is left for the strict load to report."""
    own = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    if any(k in state for k in own):
        return state, []
    return {**state, **own}, [f"{prefix}: new, starts at zero output (the model starts as the one loaded)"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features of the flow time.

    t: (B,) in [0, 1]; scaled by `scale` so the frequencies span the range DiT uses for 1000 steps.
    Returns (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    # at least float32 (bf16 cannot resolve 1000 t), float64 kept: a float64 model is an exact reference (tests)
    args = scale * t.to(torch.promote_types(t.dtype, torch.float32))[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, hidden): sinusoidal features of scale * t followed by a two-layer MLP, as in DiT."""

    def __init__(self, hidden: int, frequency_dim: int = 256, scale: float = 1000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim, scale=self.scale).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels (B,) -> (B, hidden). Index `num_classes` is the null (unconditional) label for CFG."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Tensor:
        if labels.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"class labels must be an integer tensor, got {labels.dtype}")
        # a compiled forward skips this data-dependent check (a graph break); nn.Embedding still refuses bad indices
        if not torch.compiler.is_compiling() and labels.numel() and (
                labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} is the null label), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return self.table(labels)
