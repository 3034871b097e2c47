"""What a model draws and how its samples become media: the shape of x0, the decode, the output modality.

A task answers `sample_layout(size=..., num_frames=..., seconds=...)` with one of these; the pipeline
draws x0 of `x_shape`, solves, decodes and writes files through the modality spec it names:

    layout = task.sample_layout(size=48)                 # e.g. an image model asked for 48x48
    layout.x_shape, layout.media_shape                   # (4, 12, 12) latents, (3, 48, 48) pixels
    spec = get_modality(layout.modality)                 # None for points (the 2-D toy): no media files
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from mmflow.errors import UserError

__all__ = ["SampleLayout", "WrongOutputRequest", "describe_media"]


class WrongOutputRequest(UserError, ValueError):
    """A size / num_frames / seconds the model cannot make (another modality, or a shape it does not allow)."""


def describe_media(modality: str | None, media_shape: tuple[int, ...], sample_rate: int | None = None) -> str:
    """A person's words for one item: "image 3x32x32", "video of 16 frames 3x16x64x64", "audio 4 s at 16000 Hz"."""
    dims = "x".join(str(n) for n in media_shape)
    if modality == "video":
        return f"video of {media_shape[1]} frames {dims}"
    if modality == "audio" and sample_rate:
        return f"audio {media_shape[-1] / sample_rate:g} s at {sample_rate} Hz ({dims})"
    return f"{modality} {dims}" if modality else f"points of dimension {media_shape[-1]}"


@dataclass(frozen=True)
class SampleLayout:
    """x_shape: (C, *axes) of one x0 (latents, pixels or points); media_shape: (C, ...) of one item after
    decode; modality: a name in mmflow.modalities (None: points, written as a tensor file); decode:
    (B, *x_shape) -> (B, *media_shape) on the device, None when x is the media; clamp to [-1, 1];
    fps / sample_rate: what video / audio files are written at."""

    x_shape: tuple[int, ...]
    media_shape: tuple[int, ...]
    modality: str | None
    decode: Callable[[Tensor], Tensor] | None = None
    clamp: bool = True
    fps: float | None = None
    sample_rate: int | None = None

    def describe(self) -> str:
        return describe_media(self.modality, self.media_shape, self.sample_rate)
