"""Per-step randomness that does not depend on how the global batch is split over processes.

Every draw is made for the whole global batch from a generator seeded by (seed, micro-step, draw
index), and each rank keeps its own rows. So two processes with batch B see exactly the noise, times
and CFG drops that one process with batch 2B sees, and a resumed run repeats the interrupted one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _mix(*values: int) -> int:
    # splitmix-style hashing so nearby (seed, step) pairs give unrelated generator seeds
    h = 0x9E3779B97F4A7C15
    for v in values:
        h ^= (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class BatchRandom:
    """Random draws for one micro-batch: rows [rank*B, (rank+1)*B) of a global batch of B*world rows."""

    def __init__(self, seed: int, micro_step: int, rank: int, local_batch: int, world_size: int,
                 device: torch.device | str = "cpu") -> None:
        self.seed = seed
        self.micro_step = micro_step
        self.rank = rank
        self.local_batch = local_batch
        self.world_size = world_size
        self.device = torch.device(device)
        self._draws = 0

    def _generator(self) -> torch.Generator:
        g = torch.Generator().manual_seed(_mix(self.seed, self.micro_step, self._draws))
        self._draws += 1
        return g

    def draw(self, fn: Callable[[int, torch.Generator], Tensor]) -> Tensor:
        """fn(global_batch, generator) -> (global_batch, ...) on CPU; returns this rank's rows on device."""
        full = fn(self.local_batch * self.world_size, self._generator())
        lo = self.rank * self.local_batch
        return full[lo : lo + self.local_batch].to(self.device)

    def randn(self, *shape: int) -> Tensor:
        """(B, *shape) standard normal."""
        return self.draw(lambda n, g: torch.randn(n, *shape, generator=g))

    def rand(self, *shape: int) -> Tensor:
        """(B, *shape) uniform in [0, 1)."""
        return self.draw(lambda n, g: torch.rand(n, *shape, generator=g))
