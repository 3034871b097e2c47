"""Which dataset rows each process reads at each micro-step.

The data is one endless stream: epoch e is a permutation of the dataset seeded by (seed, e), and the
global micro-batch k is positions [k*G, (k+1)*G) of the stream (G = batch * world size), of which rank
r takes its slice. The order depends only on (seed, G), so resume is exact and one process with
batch 2B reads exactly what two processes with batch B read together.
"""

from __future__ import annotations

from typing import Iterator

import torch

from mmflow.utils.seeding import mix_seed


class StreamBatchSampler:
    """An endless batch sampler (for DataLoader(batch_sampler=...)) starting at global micro-batch `start`."""

    def __init__(self, dataset_size: int, local_batch: int, rank: int, world_size: int, seed: int,
                 start: int = 0, shuffle: bool = True, overfit: int = 0) -> None:
        if dataset_size <= 0:
            raise ValueError("the dataset is empty: nothing to train on")
        self.n = dataset_size
        self.local_batch = local_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start = start
        self.shuffle = shuffle
        self.overfit = overfit  # > 0: cycle over the first `overfit` rows of epoch 0 only (debugging)
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(mix_seed(self.seed, 0xDA7A, epoch))
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.arange(self.n)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, micro_step: int) -> list[int]:
        """Dataset rows of this rank for global micro-batch `micro_step`."""
        global_batch = self.local_batch * self.world_size
        first = micro_step * global_batch + self.rank * self.local_batch
        positions = range(first, first + self.local_batch)
        if self.overfit:
            return [int(self._permutation(0)[pos % min(self.overfit, self.n)]) for pos in positions]
        return [int(self._permutation(pos // self.n)[pos % self.n]) for pos in positions]

    def epoch_of(self, micro_step: int) -> float:
        return micro_step * self.local_batch * self.world_size / self.n

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.indices(k)
            k += 1
