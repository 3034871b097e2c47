"""scikit-learn's 8x8 handwritten digits (1797 images, 0..16) as captioned 1-channel images.

Images are scaled to [-1, 1] and upsampled bilinearly to `image_size` (16 or 32); each is paired with
every caption template ("a handwritten seven", "the digit 7", ...), so the caption wording varies
while the digit it names is always the image's own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CAPTION_TEMPLATES", "DIGIT_NAMES", "DIGITS_MAX", "DigitsDataset", "all_captions", "caption",
           "digits_to_pixels", "load_digits_8x8", "pixels_to_digits", "prompt_for"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_MAX = 16.0  # sklearn's digits are counts of on-pixels in 4x4 blocks: integers 0..16
# {name}: "seven", {digit}: "7". The first template is the validation prompt (`prompt_for`).
CAPTION_TEMPLATES = (
    "a handwritten {name}",
    "a handwritten {digit}",
    "the digit {name}",
    "the number {digit}",
    "a drawing of the digit {name}",
    "a {name} written by hand",
)


def caption(label: int, template: int) -> str:
    """Caption of digit `label` (0..9) with template index `template`."""
    return CAPTION_TEMPLATES[template].format(name=DIGIT_NAMES[label], digit=str(label))


def prompt_for(label: int) -> str:
    """The prompt validation asks with: 'a handwritten <digit name>'."""
    return caption(label, 0)


def all_captions() -> list[str]:
    """Every caption the dataset can produce (the tokenizer's vocabulary comes from these)."""
    return [caption(d, k) for k in range(len(CAPTION_TEMPLATES)) for d in range(10)]


@lru_cache(maxsize=1)
def load_digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64), from the copy inside scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64), d.target.astype(np.int64)


def digits_to_pixels(images: np.ndarray | Tensor, size: int) -> Tensor:
    """Digits (N, 8, 8) in 0..16 -> images (N, 1, size, size) float32 in [-1, 1], upsampled bilinearly.

    Bilinear weights are convex, so the result stays inside [-1, 1].
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None] / (DIGITS_MAX / 2) - 1.0  # (N, 1, 8, 8)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0)


def pixels_to_digits(images: Tensor) -> np.ndarray:
    """Images (N, 1, H, W) in [-1, 1] (H = W, a multiple of 8) -> (N, 64) in 0..16, the classifier's input.

    Area-downsampled to 8x8 (each 8x8 pixel is the mean of its block), then mapped back to 0..16.
    """
    x = images.detach().float().cpu()
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or x.shape[2] % 8:
        raise ValueError(f"expected images (N, 1, S, S) with S a multiple of 8, got {tuple(x.shape)}")
    x = F.adaptive_avg_pool2d(x, 8)  # (N, 1, 8, 8)
    x = ((x + 1.0) * (DIGITS_MAX / 2)).clamp(0.0, DIGITS_MAX)
    return x.reshape(x.shape[0], 64).numpy().astype(np.float64)


class DigitsDataset(Dataset):
    """Item i: image (i mod N) with caption template (i div N); N = 1797, len = N * templates.

    Items are dicts: image (1, S, S) float in [-1, 1], ids (L,) long, mask (L,) bool, label () long.
    `encode` maps captions to (ids (B, L), mask (B, L)); it is the text embedder's tokenizer.
    """

    def __init__(self, image_size: int, encode: Callable[[Sequence[str]], tuple[Tensor, Tensor]],
                 templates: Sequence[int] | None = None) -> None:
        images, labels = load_digits_8x8()
        self.images = digits_to_pixels(images, image_size)  # (N, 1, S, S)
        self.labels = torch.as_tensor(labels)  # (N,)
        self.templates = list(range(len(CAPTION_TEMPLATES))) if templates is None else list(templates)
        # one row per (template, digit): captions are tokenized once, not per item
        self.ids, self.mask = encode([caption(d, k) for k in self.templates for d in range(10)])  # (T * 10, L)

    def __len__(self) -> int:
        return len(self.templates) * self.images.shape[0]

    def caption_of(self, i: int) -> str:
        n = self.images.shape[0]
        return caption(int(self.labels[i % n]), self.templates[i // n])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        n = self.images.shape[0]
        image_index, template_slot = i % n, i // n
        label = self.labels[image_index]
        row = template_slot * 10 + int(label)
        return {"image": self.images[image_index], "ids": self.ids[row], "mask": self.mask[row], "label": label}
