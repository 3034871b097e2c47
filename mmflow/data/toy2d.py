"""Class-labelled 2-D toy distributions, the seeds' test bed where the answer can be checked.

Each sampler returns (x (n, 2), label (n,)); all four live roughly in [-4, 4]^2.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.flow.analytic import eight_gaussians as eight_gaussians_mixture

ToySampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


def eight_gaussians(n: int, generator: torch.Generator, radius: float = 4.0, std: float = 0.5) -> tuple[Tensor, Tensor]:
    """Eight isotropic Gaussians on a circle; the label is the component."""
    x, k = eight_gaussians_mixture(radius=radius, std=std).sample(n, generator=generator)
    return x.float(), k.long()


def two_moons(n: int, generator: torch.Generator, noise: float = 0.1) -> tuple[Tensor, Tensor]:
    """sklearn-style interleaved half circles, scaled by 2 and centred; label = which moon."""
    label = torch.randint(0, 2, (n,), generator=generator)
    theta = math.pi * torch.rand(n, generator=generator)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(label[:, None] == 0, upper, lower)
    x = x + noise * torch.randn(n, 2, generator=generator)
    return (2.0 * (x - torch.tensor([0.5, 0.25]))), label


def checkerboard(n: int, generator: torch.Generator, size: float = 4.0) -> tuple[Tensor, Tensor]:
    """A 4x4 board on [-size, size]^2 with the 8 dark squares filled uniformly; label = square index."""
    label = torch.randint(0, 8, (n,), generator=generator)
    row = label // 2  # 0..3
    col = 2 * (label % 2) + (row % 2)  # dark squares alternate per row
    cell = 2 * size / 4
    u = torch.rand(n, 2, generator=generator)
    x = torch.stack([-size + (col + u[:, 0]) * cell, -size + (row + u[:, 1]) * cell], dim=1)
    return x, label


def spirals(n: int, generator: torch.Generator, noise: float = 0.15) -> tuple[Tensor, Tensor]:
    """Two interleaved Archimedean spirals; label = which spiral."""
    label = torch.randint(0, 2, (n,), generator=generator)
    r = torch.sqrt(torch.rand(n, generator=generator)) * 3.5 * math.pi  # sqrt: uniform density along the arm
    angle = r + math.pi * label
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1) / 2.75
    return x + noise * torch.randn(n, 2, generator=generator), label


TOY_DATASETS: dict[str, tuple[ToySampler, int]] = {
    "eight_gaussians": (eight_gaussians, 8),
    "two_moons": (two_moons, 2),
    "checkerboard": (checkerboard, 8),
    "spirals": (spirals, 2),
}


def sample_toy(name: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; known: {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name][0](n, torch.Generator().manual_seed(seed))


class Toy2DDataset(Dataset):
    """A fixed draw of `num_samples` points (a finite training set, as a real dataset would be)."""

    def __init__(self, name: str, num_samples: int, seed: int) -> None:
        self.x, self.label = sample_toy(name, num_samples, seed)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.label[i]
