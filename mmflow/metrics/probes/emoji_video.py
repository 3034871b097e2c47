"""The emoji-clip probe: motion (9 classes) and background colour (8) of (3, 16, 64, 64) clips.

Trained on ../shared/data/emoji_video64 (its `motion` and `background` fields). The clip is
area-downsampled to 32x32 (CPU-cheap; an emoji is ~32 px, so 16 px of it remain); its 16 frames
and their 15 differences to the previous frame (motion is what changes) are stacked as channels
(early fusion: these motions are simple and global), with two coordinate channels: telling zoom in
from zoom out needs to know on which side of the centre an edge moves outwards. Three strided 2-D
convolutions down to a 4x4 grid of positions and one hidden layer give the features; a linear head
per attribute reads them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.metrics.probes.base import Probe, ProbeConfig
from mmflow.model_io import register_model

__all__ = ["BACKGROUNDS", "EmojiVideoProbe", "MOTIONS", "emoji_video_config", "flip_motion", "read_clip",
           "reverse_motion"]

MOTIONS = ["move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw", "zoom_in", "zoom_out",
           "bounce"]
BACKGROUNDS = ["white", "black", "light gray", "light blue", "light green", "light yellow", "pink", "dark blue"]
CLIP_SHAPE = [3, 16, 64, 64]
WORK_SIZE = 32  # frames are area-downsampled to WORK_SIZE x WORK_SIZE inside the probe


def _swap(names: list[str], pairs: list[tuple[str, str]]) -> Tensor:
    perm = list(range(len(names)))
    for a, b in pairs:
        perm[names.index(a)], perm[names.index(b)] = names.index(b), names.index(a)
    return torch.tensor(perm, dtype=torch.long)


# Label maps of the augmentations: a mirrored clip moves the other way and turns the other way; a
# clip played backwards also swaps up/down and in/out (a bounce stays a bounce).
flip_motion = _swap(MOTIONS, [("move_left", "move_right"), ("rotate_cw", "rotate_ccw")])
reverse_motion = _swap(MOTIONS, [("move_left", "move_right"), ("move_up", "move_down"),
                                 ("rotate_cw", "rotate_ccw"), ("zoom_in", "zoom_out")])


def emoji_video_config(**overrides) -> ProbeConfig:
    """The config of a fresh emoji-clip probe (overrides: width, feature_dim, ...)."""
    base = dict(name="emoji_video", modality="video", media_shape=list(CLIP_SHAPE),
                attributes={"motion": list(MOTIONS), "background": list(BACKGROUNDS)}, width=32, feature_dim=128)
    base.update(overrides)
    return ProbeConfig(**base)


def read_clip(path: Path) -> Tensor:
    """Every frame of an emoji clip (3, 16, 64, 64) in [-1, 1], through mmflow's video modality."""
    from mmflow.modalities import get_modality

    clip, _ = get_modality("video").read_whole(path)  # (3, T, H, W)
    return clip


@register_model("probe_emoji_video")
class EmojiVideoProbe(Probe):
    """Clips (B, 3, 16, 64, 64) in [-1, 1] -> motion logits (B, 9), background logits (B, 8)."""

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__(config)
        w, d = config.width, config.feature_dim
        t = config.media_shape[1]
        self.convs = nn.ModuleList([
            nn.Conv2d(3 * t + 3 * (t - 1) + 2, w, 3, stride=2, padding=1),  # frames, differences, (y, x) coordinates
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
        ])
        self.norms = nn.ModuleList([nn.GroupNorm(8, c) for c in (w, 2 * w, 4 * w)])
        self.hidden = nn.Linear(4 * w * 16, d)  # a 4x4 grid of positions
        self.heads = nn.ModuleDict({a: nn.Linear(d, len(names)) for a, names in config.attributes.items()})

    def prepare(self, media: Tensor) -> dict[str, Tensor]:
        """(B, 3, T, 64, 64) -> {"clip": (B, 3, T, 32, 32)}: the fixed, parameter-free downsampling."""
        return {"clip": F.avg_pool3d(media.float(), (1, 64 // WORK_SIZE, 64 // WORK_SIZE))}

    def embed(self, prepared: dict[str, Tensor]) -> Tensor:
        """{"clip": (B, 3, T, 32, 32)} -> features (B, feature_dim)."""
        small = prepared["clip"]
        b, _, _, h, w = small.shape
        diff = small[:, :, 1:] - small[:, :, :-1]  # (B, 3, T-1, h, w)
        ys = torch.linspace(-1, 1, h, device=small.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=small.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = torch.cat([small.flatten(1, 2), diff.flatten(1, 2), ys, xs], dim=1)  # (B, 3T + 3(T-1) + 2, h, w)
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x)))  # -> (B, w, 16, 16) -> (B, 2w, 8, 8) -> (B, 4w, 4, 4)
        return F.gelu(self.hidden(x.flatten(1)))  # (B, feature_dim)

    def prepared_logits(self, prepared: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = self.embed(prepared)  # (B, feature_dim)
        return {a: head(feats) for a, head in self.heads.items()}
