"""Per-step randomness that does not depend on how the global batch is split.

An optimizer step consumes a global batch of `local_batch * num_slots` rows, where the slots are
(micro-batch, rank) pairs: slot = micro * world_size + rank. Every draw is made for the whole global
batch from a generator seeded by (seed, step, optimizer group, draw index) and each slot keeps its own
rows, the same rows the data sampler gives it. So one process with batch 2B, one with batch B and 2
accumulation steps, and two processes with batch B all see exactly the same noise, times and CFG
drops, and a resumed run repeats the interrupted one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mmflow.utils.seeding import mix_seed


class BatchRandom:
    """Random draws for one slot: rows [slot*B, (slot+1)*B) of the step's global batch."""

    def __init__(self, seed: int, step: int, group: int, slot: int, local_batch: int, num_slots: int,
                 device: torch.device | str = "cpu") -> None:
        if not 0 <= slot < num_slots:
            raise ValueError(f"slot {slot} outside [0, {num_slots})")
        self.key = (seed, step, group)
        self.slot = slot
        self.local_batch = local_batch
        self.num_slots = num_slots
        self.device = torch.device(device)
        self._draws = 0

    def _generator(self) -> torch.Generator:
        g = torch.Generator().manual_seed(mix_seed(*self.key, self._draws))
        self._draws += 1
        return g

    def draw(self, fn: Callable[[int, torch.Generator], Tensor]) -> Tensor:
        """fn(global_batch, generator) -> (global_batch, ...) on CPU; returns this slot's rows on device."""
        full = fn(self.local_batch * self.num_slots, self._generator())
        lo = self.slot * self.local_batch
        return full[lo : lo + self.local_batch].to(self.device)

    def randn(self, *shape: int) -> Tensor:
        """(B, *shape) standard normal."""
        return self.draw(lambda n, g: torch.randn(n, *shape, generator=g))

    def rand(self, *shape: int) -> Tensor:
        """(B, *shape) uniform in [0, 1)."""
        return self.draw(lambda n, g: torch.rand(n, *shape, generator=g))
