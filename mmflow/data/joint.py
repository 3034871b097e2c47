"""Joint image+video batches: the images of an image folder trained as 1-frame clips beside a video set's clips.

With a causal video tokenizer an image is exactly a 1-frame video (frame 0 is encoded on its own, with
per-frame norms), so a video model learns from image sets in the same batches as its clips (SD3 /
MovieGen: image pre-training, then joint image+video training). Each batch holds `video_rows` clips
followed by `image_rows` images; `collate_padded` repeats each item's last frame up to the batch's longest
item and records the real frames of each row under "frames". For raw media the padding is a still clip,
whose frame 0 encodes as the image alone; for cached latents it is any value: the MM-DiT masks padded
frames as keys (cond["frames"]) and the loss masks them out.

    data = JointDataset(video_dataset, ImagesAsClips(image_config))
    sampler = JointBatchSampler(video_sampler, image_sampler)    # keys (0, video key) ... (1, image key)
    batch = collate_padded(items, collate)                       # + "frames" (B,) long, "source" (B,) long

The same zipping serves DreamBooth's prior preservation (mmflow/tasks/prior.py): instance items, then the
base model's class items, same-sized, collated with `collate_sources`; "source" tells the loss which is which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.data.media_folder import MediaFolderDataset

__all__ = ["FRAMES", "SOURCE", "JointImagesConfig", "ImagesAsClips", "JointDataset", "JointBatchSampler",
           "collate_padded", "collate_sources", "image_rows"]

FRAMES = "frames"  # (B,) long: real frames of each row along the time axis of what the batch holds
SOURCE = "source"  # (B,) long: each row's part of a JointDataset, 0 (video / instance) or 1 (images / class)
TIME_AXIS_FIELDS = ("media", "latent_mean", "latent_std")  # (C, T, ...) per item: padded along T


@dataclass
class JointImagesConfig:
    """data.images of a video recipe: an image folder trained as 1-frame clips in every batch."""

    path: str | None = field(default=None, metadata={
        "exists": "dir", "help": "image folder (captions as data.path's); null: clips only"})
    fraction: float = field(default=0.25, metadata={
        "min": 0.0, "max": 1.0, "min_exclusive": True, "max_exclusive": True,
        "help": "share of each batch's rows that are images (rounded; at least one of each kind)"})
    cache: str | None = field(default=None, metadata={
        "help": "folder of the images' cache (`mmflow prepare` writes it); null: data.cache's folder + '-images'"})


def image_rows(batch: int, fraction: float) -> int:
    """Images (or class items) in a batch of `batch` rows: round(fraction * batch), at least 1 and at most batch - 1."""
    if batch < 2:
        raise ValueError(f"a joint batch needs at least 2 rows (one clip and one image, or one instance and one "
                         f"class item), got {batch}")
    return min(batch - 1, max(1, round(fraction * batch)))


class ImagesAsClips(MediaFolderDataset):
    """An image folder whose items are 1-frame clips: media (3, 1, H, W)."""

    def load(self, index: int, epoch: int = 0, size: tuple[int, int] | None = None,
             thorough: bool = False, frames: int | None = None) -> dict[str, Any]:
        item = super().load(index, epoch, size, thorough, frames)
        item["media"] = item["media"].unsqueeze(1)  # (3, 1, H, W)
        return item


class JointDataset(Dataset):
    """Clips then images: key (0, k) is video[k], (1, k) images[k]; a plain int indexes the concatenation.
    Each item carries its part under SOURCE (0 or 1)."""

    def __init__(self, video: Dataset, images: Dataset) -> None:
        self.video = video
        self.images = images
        self.dropped = list(getattr(video, "dropped", [])) + list(getattr(images, "dropped", []))

    def __len__(self) -> int:
        return len(self.video) + len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):  # (source, the source's own key) from JointBatchSampler
            source, inner = key
            return {**(self.video if source == 0 else self.images)[inner], SOURCE: int(source)}
        k, n = int(key), len(self.video)  # type: ignore[arg-type]
        return {**self.video[k], SOURCE: 0} if k < n else {**self.images[k - n], SOURCE: 1}


class JointBatchSampler:
    """Zips a clip sampler (video_rows per batch) and an image sampler (image_rows per batch) into batches
    of tagged keys, clips first. Both are endless and deterministic in the step, so resuming is exact.

    size_at(k) -> (H, W): the clips' size at micro-batch k (aspect-ratio buckets); the images' (index, epoch)
    keys then carry it, (index, epoch, H, W), so they are read at their batch's size. `start`: the first k."""

    def __init__(self, video: Iterable[list[Any]], images: Iterable[list[Any]],
                 size_at: Callable[[int], tuple[int, int]] | None = None, start: int = 0) -> None:
        self.video = video
        self.images = images
        self.size_at = size_at
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        for k, (clips, images) in enumerate(zip(self.video, self.images), start=self.start):
            if self.size_at is not None:
                hw = self.size_at(k)
                images = [(*key, *hw) for key in images]  # (index, epoch, H, W)
            yield [(0, key) for key in clips] + [(1, key) for key in images]


def _pad_time(x: Tensor, length: int) -> Tensor:
    """(C, T, ...) -> (C, length, ...) by repeating the last frame (a still clip)."""
    extra = length - x.shape[1]
    return x if extra == 0 else torch.cat([x, x[:, -1:].expand(-1, extra, *x.shape[2:])], dim=1)


def collate_sources(items: list[dict[str, Any]], collate: Callable[[list[dict[str, Any]]], Any]) -> Any:
    """`collate` of JointDataset items (without their SOURCE), plus SOURCE (B,) long: each row's part."""
    batch = collate([{k: v for k, v in it.items() if k != SOURCE} for it in items])
    batch[SOURCE] = torch.tensor([it.get(SOURCE, 0) for it in items], dtype=torch.long)
    return batch


def collate_padded(items: list[dict[str, Any]], collate: Callable[[list[dict[str, Any]]], Any]) -> Any:
    """`collate_sources` of items whose time axes (dim 1 of media / latent_mean / latent_std) differ, each padded
    to the longest by repeating its last frame, plus FRAMES (B,) long: each row's real frames."""
    key = next(k for k in TIME_AXIS_FIELDS if k in items[0])
    frames = [int(it[key].shape[1]) for it in items]
    length = max(frames)
    padded = [{**it, **{k: _pad_time(it[k], length) for k in TIME_AXIS_FIELDS if k in it}} for it in items]
    batch = collate_sources(padded, collate)
    batch[FRAMES] = torch.tensor(frames, dtype=torch.long)
    return batch
