""""clip": image (and video, per frame) and text embeddings from a local transformers CLIP folder.

    feats = get_features("clip", path="weights/clip-vit-large-patch14")   # a save_pretrained folder
    v = feats(images)                      # (B, 3, H, W) in [-1, 1] -> (B, D), unit length
    v = feats(videos)                      # (B, 3, T, H, W) -> (B, D): mean of the unit frame embeddings, renormalised
    t = feats.encode_text(["a red cat"])   # (P, D), unit length; CLIP score = 100 * max(cos, 0)

The folder is what `CLIPModel.from_pretrained(name).save_pretrained(folder)` plus
`CLIPProcessor.from_pretrained(name).save_pretrained(folder)` write (config.json, model.safetensors,
tokenizer files, preprocessor_config.json or processor_config.json). Nothing downloads; weights load
from safetensors only.

Preprocessing follows the folder's image processor settings (shortest-edge resize, centre crop,
mean/std) but runs in torch on the float batch: bicubic with antialias on floats, where the HF
processor first quantises to uint8 and resizes with PIL (or torchvision on uint8). The two agree
exactly when no resize is needed; with a resize they differ by a third of a grey level on average
(up to ~10 levels at sharp edges of random noise), and embeddings by cosine > 0.999
(tests/metrics/features/test_clip.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.metrics.features.base import FeatureExtractor, register_features
from mmflow.metrics.features.hf import embedding, load_folder, tokenize
from mmflow.metrics.features.preprocess import resize_center_crop
from mmflow.metrics.features.video import per_frame

__all__ = ["ClipFeatures", "image_preprocessing"]

_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes the image processors store


def _side(size: Any, key: str) -> int | None:
    if size is None or isinstance(size, int):
        return size
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def image_preprocessing(processor: Any, image_size: int) -> dict[str, Any]:
    """The resize / crop / normalisation settings of a CLIPImageProcessor, as plain values."""
    shortest = _side(processor.size, "shortest_edge") or _side(processor.size, "height") or image_size
    crop = processor.crop_size if getattr(processor, "do_center_crop", True) else None
    crop_hw = (_side(crop, "height") or image_size, _side(crop, "width") or image_size) if crop is not None else None
    return {"shortest": shortest if getattr(processor, "do_resize", True) else None, "crop": crop_hw,
            "mode": _MODES.get(int(getattr(processor, "resample", 3) or 3), "bicubic"),
            "mean": [float(m) for m in processor.image_mean], "std": [float(s) for s in processor.image_std]}


class ClipFeatures(FeatureExtractor):
    """A CLIPModel's unit-length image / text embeddings (B, projection_dim)."""

    name = "clip"
    modality = "image"

    def __init__(self, model: Any, tokenizer: Any, processor: Any, weights_sha256: str | None = None) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.weights_sha256 = weights_sha256
        self.dim = int(model.config.projection_dim)
        self.max_text_length = int(model.config.text_config.max_position_embeddings)
        self.prep = image_preprocessing(processor, int(model.config.vision_config.image_size))
        self.register_buffer("mean", torch.tensor(self.prep["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.prep["std"]).view(1, 3, 1, 1), persistent=False)

    def pixel_values(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, crop_h, crop_w) normalised as the CLIP vision tower expects."""
        x = (images.float() + 1) / 2  # the processors' [0, 1] (after their rescale by 1/255)
        x = resize_center_crop(x, self.prep["shortest"], self.prep["crop"], self.prep["mode"]).clamp(0, 1)
        return (x - self.mean) / self.std

    def forward(self, media: Tensor) -> Tensor:
        if media.ndim == 5:  # video (B, 3, T, H, W): pool the unit frame embeddings, back onto the sphere
            return F.normalize(per_frame(self, media).mean(1), dim=-1)  # (B, D)
        out = embedding(self.model.get_image_features(pixel_values=self.pixel_values(media).to(self.mean.dtype)))
        return F.normalize(out.float(), dim=-1)  # (B, D)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """(P, D) unit-length text embeddings; prompts longer than the model's positions are cut, with a warning."""
        batch = tokenize(self.tokenizer, prompts, self.max_text_length, "the CLIP text encoder")
        device = self.mean.device
        out = embedding(self.model.get_text_features(**{k: v.to(device) for k, v in batch.items()}))
        return F.normalize(out.float(), dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "weights_sha256": self.weights_sha256,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self.prep.items()}}


def load_clip(path: str | os.PathLike | None) -> ClipFeatures:
    """ClipFeatures from a local CLIP folder (CLIPModel weights, tokenizer and image processor)."""
    model, tokenizer, processor, sha = load_folder(path, "CLIPModel", "CLIP model folder", "AutoImageProcessor")
    return ClipFeatures(model, tokenizer, processor, sha)


@register_features("clip")
def _clip(path: str | None = None) -> ClipFeatures:
    return load_clip(path)
