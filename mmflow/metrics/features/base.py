"""What a feature extractor is: media batch -> one vector per item; the registry that names them.

Every distribution metric (Frechet distance, precision/recall, density/coverage) compares two sets of
vectors; which network turns media into those vectors is pluggable. An extractor is an `nn.Module`
with the media convention of mmflow.modalities (float in [-1, 1]: image (B, 3, H, W), video
(B, 3, T, H, W), audio (B, C, N) at `sample_rate`), resizing / resampling what it needs itself:

    feats = get_features("inception", path="weights/pt_inception-2015-12-05.safetensors")
    v = feats(images)                       # (B, 2048) float32
    feats.describe()                        # what the vectors depend on: name, settings, weights sha256

Extractors that also embed text (CLIP, CLAP) implement `encode_text(prompts) -> (P, D)` in the same
space, which CLIP score uses. Nothing downloads: an extractor that needs weights takes a local path,
and its error names the file it wants and where such a file comes from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmflow.errors import UserError

__all__ = ["FEATURES", "FeatureExtractor", "UnknownFeatures", "get_features", "register_features"]


class UnknownFeatures(UserError, ValueError):
    """A feature extractor name that nothing is registered under."""


class FeatureExtractor(nn.Module, ABC):
    """Media (B, ...) in [-1, 1] of `modality` -> features (B, dim) float32, in eval mode, no gradients."""

    name: ClassVar[str]
    modality: ClassVar[str]  # "image", "video" or "audio" (a name in mmflow.modalities)
    dim: int
    sample_rate: int | None = None  # audio extractors: the rate their input must have (the caller resamples)

    @abstractmethod
    def forward(self, media: Tensor) -> Tensor:
        """(B, ...) in [-1, 1] -> (B, dim) float32."""

    def describe(self) -> dict[str, Any]:
        """What the features depend on (cache keys of saved statistics): name and settings, plus a
        weights fingerprint for extractors with weights."""
        return {"name": self.name, "dim": self.dim}

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """(P, dim) text embeddings in the media features' space (CLIP, CLAP); others refuse."""
        raise UnknownFeatures(f"feature extractor {self.name!r} embeds no text (CLIP score needs a CLIP/CLAP folder)")

    @torch.no_grad()
    def extract(self, media: Tensor, batch_size: int = 64) -> Tensor:
        """forward over chunks of `batch_size` on this module's device -> (B, dim) float32 on CPU."""
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        out = [self(media[i: i + batch_size].to(device)).float().cpu() for i in range(0, len(media), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)


FEATURES: dict[str, Callable[..., FeatureExtractor]] = {}
VIDEO_FRAMES = "video_frames"  # the per-frame video extractor (features/video.py): "video_frames:<image name>"


def register_features(name: str) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Decorator: register a factory `(path: str | None = None, **options) -> FeatureExtractor` under `name`."""

    def add(factory: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        FEATURES[name] = factory
        return factory

    return add


def get_features(name: str, path: str | None = None, device: str | torch.device = "cpu", **options: Any) -> FeatureExtractor:
    """The extractor registered under `name`, built from the local weights at `path` (where it needs
    any), in eval mode on `device`; UnknownFeatures names the known ones. "video_frames:<image extractor>"
    (e.g. "video_frames:probe:shapes") is video_frames with that extractor on every frame, so a name alone
    (`mmflow eval --features`) can choose it."""
    import mmflow.metrics.features  # noqa: F401  (registers the built-in extractors)

    head, _, frames = name.partition(":")
    if head == VIDEO_FRAMES and frames:
        if "frames" in options:
            raise UnknownFeatures(f"{name!r} names its frame extractor already; frames={options['frames']!r} too")
        name, options = VIDEO_FRAMES, {**options, "frames": frames}
    if name not in FEATURES:
        raise UnknownFeatures(f"unknown feature extractor {name!r}; known: {', '.join(sorted(FEATURES))}")
    module = FEATURES[name](path, **options)
    module.eval().requires_grad_(False)
    return module.to(device)
