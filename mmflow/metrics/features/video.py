"""Video features: any image extractor per frame, pooled over time with a motion term ("video_frames"),
and FVD's I3D from a local TorchScript file ("i3d").

    feats = get_features("video_frames", frames="pixels")               # weight-free
    feats = get_features("video_frames", path="weights/clip-vit-b32")    # frames="clip" (the default)
    v = feats(videos)                   # (B, 3, T, H, W) in [-1, 1] -> (B, 2 * D)
    fvd_feats = get_features("i3d", path="weights/i3d_torchscript.pt")
    v = fvd_feats(videos)               # (B, 400)

video_frames: f_t = image_extractor(frame t); features = [mean_t f_t, mean_t |f_{t+1} - f_t|]. The
second half is zero for a still video and grows with frame-to-frame change, so a model whose clips
are sharp but frozen (or flicker) moves away from real video in a Frechet distance.

i3d: the TorchScript I3D that StyleGAN-V and most FVD code use (`i3d_torchscript.pt`, distributed by
the StyleGAN-V authors; nobody can fetch it from these machines: copy it over). It is called as
`net(x, rescale=False, resize=False, return_features=True)` with x (B, 3, T, 224, 224) in [-1, 1]
and returns the 400 pre-softmax logits used as FVD features. Frames are resized here as StyleGAN-V
does: shorter side to 224 (bilinear, no antialias), centre crop. Clips need enough frames for the
network's temporal pooling (16 is the usual FVD length).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from mmflow.metrics.features.base import FEATURES, VIDEO_FRAMES, FeatureExtractor, UnknownFeatures, register_features
from mmflow.metrics.features.preprocess import resize_center_crop
from mmflow.metrics.features.weights import WrongWeights, file_sha256, load_torchscript, require_path

__all__ = ["I3DFeatures", "VideoFrameFeatures"]

I3D_SIDE = 224


def per_frame(image: FeatureExtractor, video: Tensor) -> Tensor:
    """(B, 3, T, H, W) -> (B, T, D): the image extractor on every frame."""
    b, c, t = video.shape[:3]
    frames = video.transpose(1, 2).reshape(b * t, c, *video.shape[3:])  # (B * T, 3, H, W)
    return image(frames).view(b, t, -1)


class VideoFrameFeatures(FeatureExtractor):
    """(B, 3, T, H, W) -> (B, 2 * D): mean over time of per-frame features, then mean |f_{t+1} - f_t|."""

    name = VIDEO_FRAMES
    modality = "video"

    def __init__(self, image: FeatureExtractor) -> None:
        super().__init__()
        if image.modality != "image":
            raise UnknownFeatures(f"video_frames needs an image feature extractor per frame; {image.name!r} "
                                  f"is for {image.modality}")
        self.image = image
        self.dim = 2 * image.dim

    def forward(self, media: Tensor) -> Tensor:
        f = per_frame(self.image, media).float()  # (B, T, D)
        motion = (f[:, 1:] - f[:, :-1]).abs().mean(1) if f.shape[1] > 1 else torch.zeros_like(f[:, 0])  # (B, D)
        return torch.cat([f.mean(1), motion], dim=1)  # (B, 2 * D)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "frames": self.image.describe()}


class I3DFeatures(FeatureExtractor):
    """(B, 3, T, H, W) in [-1, 1] -> (B, dim) from a TorchScript I3D called with StyleGAN-V's flags."""

    name = "i3d"
    modality = "video"

    def __init__(self, net: torch.jit.ScriptModule, dim: int = 400, weights_sha256: str | None = None) -> None:
        super().__init__()
        self.net, self.dim, self.weights_sha256 = net, dim, weights_sha256

    def forward(self, media: Tensor) -> Tensor:
        b, c, t = media.shape[:3]
        frames = media.float().transpose(1, 2).reshape(b * t, c, *media.shape[3:])  # (B * T, 3, H, W)
        frames = resize_center_crop(frames, I3D_SIDE, (I3D_SIDE, I3D_SIDE), mode="bilinear", antialias=False)
        x = frames.view(b, t, c, I3D_SIDE, I3D_SIDE).transpose(1, 2).contiguous()  # (B, 3, T, 224, 224)
        out = self.net(x, rescale=False, resize=False, return_features=True).float()
        if out.shape != (b, self.dim):
            raise WrongWeights(f"the I3D TorchScript returned {tuple(out.shape)}, expected ({b}, {self.dim}) "
                               f"(set dim= to its feature width)")
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "side": I3D_SIDE, "weights_sha256": self.weights_sha256}


@register_features(VIDEO_FRAMES)
def _video_frames(path: str | os.PathLike | None = None, frames: str = "clip", **options: Any) -> VideoFrameFeatures:
    if frames not in FEATURES:
        raise UnknownFeatures(f"video_frames: frames={frames!r} is no registered image extractor; "
                           f"known: {', '.join(sorted(FEATURES))}")
    return VideoFrameFeatures(FEATURES[frames](path, **options))


@register_features("i3d")
def _i3d(path: str | os.PathLike | None = None, dim: int = 400) -> I3DFeatures:
    file = require_path(path, "I3D TorchScript file (i3d_torchscript.pt)",
                        "StyleGAN-V's i3d_torchscript.pt, copied from a machine that has it")
    return I3DFeatures(load_torchscript(file, "I3D network"), dim, file_sha256(file))
