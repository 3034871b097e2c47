"""Image-to-video: a clip that continues a given first frame.

How: the first frame's latents and a mask are concatenated to the noisy latents as extra channels
(cond["concat"], MMDiTConfig.concat_channels = C + 1), as the open image-to-video models do (CogVideoX-I2V,
Wan I2V), rather than only fixing the frame's latent during sampling (replacement). With the channels the
model learns in training how a clip goes on from its first frame and sees the frame clean at every noise
level (replacement shows it as mostly noise exactly when the layout is decided), and one model does both
text-to-video (mask 0, zeros: `model.first_frame` of the training clips get their first frame) and
image-to-video. The causal video VAE encodes frame 0 on its own, so latent frame 0 IS the image's latent:
training takes it from the clip, sampling from the image; after sampling latent frame 0 is set to the
image's, so the clip starts with the image as the tokenizer reproduces it.

    concat = first_frame_concat(z0, frames, given)        # (B, C + 1, T', h, w)
    images = read_first_frames(["first.png"], (64, 64))    # (n, 3, H, W) in [-1, 1], resized with a warning
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.data.image_reader import open_image, pil_to_tensor, resize_crop
from mmflow.sampling.layout import WrongOutputRequest

logger = logging.getLogger("mmflow.sampling")

__all__ = ["FirstFrame", "first_frame_concat", "read_first_frames", "with_first_frame"]

FirstFrame = Union[str, Path, Tensor]  # an image file, or (3, H, W) in [-1, 1]


def first_frame_concat(z0: Tensor, frames: int, given: Tensor | None = None) -> Tensor:
    """First-frame latents z0 (B, C, 1, *hw), latent frames T', given (B,) bool (None: every row)
    -> (B, C + 1, T', *hw): channels [:C] hold z0 at frame 0 where given (zeros elsewhere), channel C the mask."""
    b, c = z0.shape[:2]
    out = z0.new_zeros(b, c + 1, frames, *z0.shape[3:])
    g = torch.ones(b, dtype=z0.dtype, device=z0.device) if given is None else given.to(z0.device, z0.dtype)
    g = g.view(b, 1, 1, *([1] * (z0.ndim - 3)))  # (B, 1, 1, 1, 1)
    out[:, :c, :1] = z0 * g
    out[:, c:, :1] = g.expand(b, 1, 1, *z0.shape[3:])
    return out


def with_first_frame(x: Tensor, z0: Tensor) -> Tensor:
    """Latents x (B, C, T', *hw) with frame 0 replaced by z0 (B, C, 1, *hw)."""
    return torch.cat([z0.to(x.dtype), x[:, :, 1:]], dim=2)


def _one(image: FirstFrame, size: tuple[int, int]) -> Tensor:
    """One image -> (3, H, W) in [-1, 1] at `size`, resized (cover + centre crop) with a warning if it differs."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise WrongOutputRequest(f"a first-frame tensor must be shaped (3, H, W) in [-1, 1], got {tuple(image.shape)}")
        name, hw = "the first-frame tensor", tuple(image.shape[1:])
        x = image.float()
    else:
        name = str(image)
        if not Path(image).is_file():
            raise WrongOutputRequest(f"--image {name}: no such file")
        img = open_image(image)
        hw = (img.height, img.width)
        x = pil_to_tensor(resize_crop(img, size))
    if hw != size:
        logger.warning("%s is %dx%d (HxW); the model makes %dx%d clips: resized to cover and centre-cropped",
                       name, *hw, *size)
        if isinstance(image, Tensor):
            side = max(size[0] / hw[0], size[1] / hw[1])  # cover, then crop the middle
            cover = (max(size[0], round(hw[0] * side)), max(size[1], round(hw[1] * side)))
            x = F.interpolate(x[None], size=cover, mode="bicubic", align_corners=False)[0]
            top, left = (x.shape[1] - size[0]) // 2, (x.shape[2] - size[1]) // 2
            x = x[:, top: top + size[0], left: left + size[1]].clamp(-1, 1)
    return x


def read_first_frames(images: Sequence[FirstFrame], size: tuple[int, int]) -> Tensor:
    """Image files or (3, H, W) tensors -> (n, 3, H, W) in [-1, 1] at `size` (H, W)."""
    return torch.stack([_one(im, size) for im in images])
