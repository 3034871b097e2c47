"""What a modality is: one spec object per kind of media, and the registry that names them.

Everything that differs between images, videos and audio lives in a `Modality` subclass (one module
each): file extensions, crops, tensor shapes, how a dataset item and a whole file are read, how media
are written and previewed, which tokenizer fields the data fixes. Callers ask the registry and never
compare modality names:

    spec = get_modality(cfg.modality)            # cfg: a MediaFolderConfig (the recipe's data section)
    x, extras = spec.read(path, cfg, (256, 256), generator)     # extras: audio's "mask" and "timing"
    spec.write(x, "out/sample" + spec.suffix, fps=cfg.fps, sample_rate=cfg.sample_rate)
    spec.write(x, "out/a" + spec.suffix, metadata={"prompt": "a cat", "seed": 3})   # provenance, see below
    spec.read_metadata("out/a" + spec.suffix)                                        # {"prompt": "a cat", ...}

Provenance metadata goes where each format has room for it: PNG text chunks (values come back as
text), one JSON object in the MP4 `comment` tag, a `<file>.json` sidecar next to audio files.

Media tensors are float in [-1, 1]: image (C, H, W), video (C, T, H, W), audio (C, N). A new modality
is one new module with a `@register_modality` subclass, imported by `mmflow/modalities/__init__.py`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.errors import UserError
from mmflow.utils.media_io import MetadataValue

__all__ = ["MODALITIES", "MediaMetadata", "Modality", "UnknownModality", "get_modality", "pad_to",
           "register_modality"]

MediaMetadata = Mapping[str, MetadataValue]  # a sample's provenance: prompt, seed, guidance, solver, steps, ...


class UnknownModality(UserError, ValueError):
    """A modality name that no spec is registered under."""


class Modality(ABC):
    """One kind of media. `cfg` below is a MediaFolderConfig (or anything with its fields)."""

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]  # files a media folder picks up by default (lower case, no dot)
    suffix: ClassVar[str]  # what `write` writes
    crops: ClassVar[tuple[str, ...]]  # allowed data.crop values; the first is the default
    latent_axes: ClassVar[int]  # axes after the channel axis, of the media and of their latents alike
    size_keys: ClassVar[tuple[str, ...]]  # names of those axes (the metadata of `mmflow encode` latent files)
    # (H, W) axes: aspect-ratio buckets, square crops, PSNR and a PatchGAN discriminator apply
    spatial: ClassVar[bool] = False
    # a picture cannot show an item whole (motion, sound): samples are also written one file each
    item_files: ClassVar[bool] = False
    # what a sampler may be asked to change (FlowPipeline's size / num_frames / seconds) -> the data field it sets
    sample_options: ClassVar[dict[str, str]] = {}

    @property
    def default_crop(self) -> str:
        return self.crops[0]

    @abstractmethod
    def media_shape(self, cfg: Any) -> tuple[int, ...]:
        """(C, ...) of one dataset item read with `cfg`."""

    def tokenizer_fields(self, cfg: Any) -> dict[str, Any]:
        """The tokenizer (VAE) config fields the data fixes: RGB input unless a subclass says more."""
        return {"in_channels": 3}

    def header_size(self, path: str | os.PathLike) -> tuple[int, int]:
        """(H, W) from the file's header, for aspect-ratio buckets (spatial modalities only)."""
        raise NotImplementedError(f"{self.name} media have no height and width")

    def backend(self, cfg: Any, override: Any = None) -> Any:
        """The decoder object `read` needs (video: a VideoBackend), made once per dataset; None if none."""
        return None

    @abstractmethod
    def read(self, path: Path, cfg: Any, size: tuple[int, int], generator: torch.Generator, *,
             backend: Any = None, thorough: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """One dataset item: (media (C, ...) in [-1, 1], extras: more per-item tensors, e.g. audio's "mask"
        (N,) over the last axis and "timing" (2,): the window's start and the file's length in seconds).

        `size`: (H, W) to resize and crop to (ignored without H, W); random choices come from
        `generator`; `thorough`: check the whole file, not only the part read. Raises BadMedia.
        """

    @abstractmethod
    def read_whole(self, path: Path, sample_rate: int | None = None, channels: int | None = None
                   ) -> tuple[Tensor, dict[str, Any]]:
        """A whole file as it is (no resize, crop or padding): (media (C, ...) in [-1, 1], metadata: its
        sizes under `size_keys`, plus fps / sample rate). Audio is resampled to `sample_rate` and mixed to
        `channels` when given (others ignore them). Raises BadMedia for a file that does not decode."""

    @abstractmethod
    def read_file(self, path: Path, vae_config: Any) -> tuple[Tensor, dict[str, Any]]:
        """A whole file as the tokenizer with `vae_config` encodes it: (media (C, ...) padded as the
        tokenizer needs, metadata: the original sizes under `size_keys`, plus fps / sample rates)."""

    @abstractmethod
    def write(self, media: Tensor, path: str | os.PathLike, *, fps: float | None = None,
              sample_rate: int | None = None, metadata: MediaMetadata | None = None) -> Path:
        """One item (C, ...) in [-1, 1] -> a file at `path` (settings a modality has no use for are ignored),
        carrying `metadata` (None: the bare file)."""

    @abstractmethod
    def read_metadata(self, path: str | os.PathLike) -> dict[str, Any]:
        """The `metadata` that `write` stored with the file at `path`; {} when it carries none."""

    @abstractmethod
    def preview(self, media: Tensor, path: str | os.PathLike, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
        """A PNG of media (R, K, C, ...): R labelled rows of K items each."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


MODALITIES: dict[str, Modality] = {}
M = TypeVar("M", bound=type[Modality])


def register_modality(cls: M) -> M:
    """Class decorator: put one instance of `cls` into MODALITIES under `cls.name`."""
    MODALITIES[cls.name] = cls()
    return cls


def get_modality(name: str) -> Modality:
    """The spec registered under `name`; UnknownModality names the known ones."""
    try:
        return MODALITIES[name]
    except (KeyError, TypeError):
        raise UnknownModality(f"unknown modality {name!r}; known: {', '.join(sorted(MODALITIES))}") from None


def pad_to(x: Tensor, multiples: Sequence[int]) -> Tensor:
    """Repeat the last element along the last len(multiples) axes of x (C, ...) up to those multiples.

    Images (C, H, W) pad two axes, videos (C, T, H, W) up to three (replicate padding wants a batch axis)."""
    pads: list[int] = []
    for size, m in zip(reversed(x.shape[1:]), reversed(multiples)):
        pads += [0, -size % m]
    return F.pad(x[None], pads, mode="replicate")[0] if any(pads) else x
