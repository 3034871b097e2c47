"""Images: (3, H, W) tensors, read with Pillow (mmflow.data.image_reader), written as PNG (metadata as
text chunks).

    spec = get_modality("image")
    x, _ = spec.read(Path("cat.jpg"), cfg, (256, 256), torch.Generator())   # (3, 256, 256), {}
    spec.preview(torch.stack([x[None], x[None]]), "grid.png", ["top", "bottom"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmflow.data.image_reader import image_size, open_image, pil_to_tensor, read_image
from mmflow.modalities.base import MediaMetadata, Modality, pad_to, register_modality
from mmflow.utils.images import save_image_grid
from mmflow.utils.media_io import read_png_text, write_png

__all__ = ["ImageModality"]


@register_modality
class ImageModality(Modality):
    name = "image"
    extensions = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
    suffix = ".png"
    crops = ("center", "random")
    latent_axes = 2
    size_keys = ("height", "width")
    sample_options = {"size": "size"}
    spatial = True

    def media_shape(self, cfg: Any) -> tuple[int, ...]:
        return (3, cfg.size, cfg.size)

    def header_size(self, path: str | os.PathLike) -> tuple[int, int]:
        return image_size(path)

    def read(self, path: Path, cfg: Any, size: tuple[int, int], generator: torch.Generator, *,
             backend: Any = None, thorough: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        return read_image(path, size, cfg.crop_mode, generator), {}

    def read_whole(self, path: Path, sample_rate: int | None = None, channels: int | None = None
                   ) -> tuple[Tensor, dict[str, Any]]:
        x = pil_to_tensor(open_image(path))  # (3, H, W)
        return x, {"height": x.shape[1], "width": x.shape[2]}

    def read_file(self, path: Path, vae_config: Any) -> tuple[Tensor, dict[str, Any]]:
        x, info = self.read_whole(path)
        f = vae_config.downsample_factor
        return pad_to(x, (f, f)), info

    def write(self, media: Tensor, path: str | os.PathLike, *, fps: float | None = None,
              sample_rate: int | None = None, metadata: MediaMetadata | None = None) -> Path:
        return write_png(media, path, metadata)

    def read_metadata(self, path: str | os.PathLike) -> dict[str, Any]:
        """The PNG's text chunks: values are strings (a PNG stores text)."""
        return read_png_text(path)

    def preview(self, media: Tensor, path: str | os.PathLike, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
        return save_image_grid(media, path, row_labels=labels, title=title)
