"""Aspect-ratio buckets: train on several (H, W) shapes of about the same pixel count.

As in SD3 / MovieGen: the buckets are every (H, W) with sides a multiple of `multiple` (the VAE's
downsampling times the DiT's patch), area close to size**2 and aspect W/H within limits. Each item
goes to the bucket nearest its own aspect (in log ratio), is resized to cover it and centre-cropped,
so little of any image is cut. A batch must have one shape, so `BucketBatchSampler` yields batches
from one bucket at a time.

Sampler order: epoch e shuffles each bucket's items with a generator seeded by (seed, e, bucket),
cuts each bucket into global batches of `local_batch * world_size` items (a bucket's last batch is
filled up with its own first items, so no item is dropped), and shuffles the order of all batches
with (seed, e). Global micro-batch k is the k-th batch of that endless stream and rank r takes rows
[r*B, (r+1)*B) of it: at one step every rank reads the same bucket, and the order depends only on
(seed, global batch size), so resuming at step k is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from mmflow.utils.seeding import mix_seed

__all__ = ["BucketBatchSampler", "assign_bucket", "make_buckets"]


def make_buckets(size: int, multiple: int = 16, min_aspect: float = 0.5, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(H, W) buckets with area ~ size**2, sides multiples of `multiple`, W/H in [min_aspect, max_aspect].

    Sorted by aspect W/H (tallest first); includes (size, size) when size is a multiple of `multiple`.
    """
    if size < multiple:
        raise ValueError(f"bucket size {size} is smaller than the side multiple {multiple}")
    if not 0 < min_aspect <= 1 <= max_aspect:
        raise ValueError(f"need 0 < min_aspect <= 1 <= max_aspect, got {min_aspect}, {max_aspect}")
    area = size * size
    out: set[tuple[int, int]] = set()
    for h in range(multiple, int(2 * size / math.sqrt(min_aspect)) + multiple, multiple):  # past the tallest
        w = max(multiple, round(area / h / multiple) * multiple)
        if min_aspect - 1e-9 <= w / h <= max_aspect + 1e-9:
            out |= {(h, w), (w, h)}  # both orientations, so portrait and landscape get the same choice
    if not out:
        raise ValueError(f"no bucket of area ~{size}**2 with sides multiple of {multiple} and aspect in "
                         f"[{min_aspect}, {max_aspect}]")
    return sorted(out, key=lambda hw: (hw[1] / hw[0], hw[0]))


def assign_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect W/H is nearest (in log ratio) to the item's; ties go to the first."""
    a = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][1] / buckets[i][0]) - a))


class BucketBatchSampler:
    """An endless batch sampler (for DataLoader(batch_sampler=...)) of single-bucket batches.

    Yields lists of (index, epoch) pairs, which `MediaFolderDataset` accepts as keys so that random
    crops follow the epoch. `bucket_of[i]` is item i's bucket; see the module docstring for the order.
    """

    def __init__(self, bucket_of: Sequence[int], local_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, start: int = 0) -> None:
        if len(bucket_of) == 0:
            raise ValueError("the dataset is empty: nothing to train on")
        if not 0 <= rank < world_size or local_batch < 1:
            raise ValueError(f"need local_batch >= 1 and 0 <= rank < world_size, got {local_batch}, {rank}, {world_size}")
        self.local_batch = local_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start = start
        members: dict[int, list[int]] = {}
        for i, b in enumerate(bucket_of):
            members.setdefault(int(b), []).append(i)
        self.members = [torch.tensor(members[b]) for b in sorted(members)]  # non-empty buckets only
        self.bucket_ids = sorted(members)
        g = self.global_batch
        self.batches_per_epoch = sum(math.ceil(len(m) / g) for m in self.members)
        self._epoch = -1
        self._plan: list[tuple[int, list[int]]] = []

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    def _epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """[(bucket id, global batch of item indices)] for `epoch`, in stream order."""
        if epoch != self._epoch:
            g = self.global_batch
            batches = []
            for b, m in zip(self.bucket_ids, self.members):
                gen = torch.Generator().manual_seed(mix_seed(self.seed, 0xB0C7, epoch, b))
                order = m[torch.randperm(len(m), generator=gen)].tolist()
                n = math.ceil(len(order) / g) * g
                order = [order[k % len(order)] for k in range(n)]  # fill the last batch from the start
                batches += [(b, order[k : k + g]) for k in range(0, n, g)]
            gen = torch.Generator().manual_seed(mix_seed(self.seed, 0xB0C8, epoch))
            self._plan = [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]
            self._epoch = epoch
        return self._plan

    def bucket(self, micro_step: int) -> int:
        """The bucket every rank reads at global micro-batch `micro_step`."""
        epoch, k = divmod(micro_step, self.batches_per_epoch)
        return self._epoch_plan(epoch)[k][0]

    def indices(self, micro_step: int) -> list[tuple[int, int]]:
        """This rank's (index, epoch) keys for global micro-batch `micro_step`."""
        epoch, k = divmod(micro_step, self.batches_per_epoch)
        rows = self._epoch_plan(epoch)[k][1]
        lo = self.rank * self.local_batch
        return [(i, epoch) for i in rows[lo : lo + self.local_batch]]

    def epoch_of(self, micro_step: int) -> float:
        return micro_step / self.batches_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        while True:
            yield self.indices(k)
            k += 1
