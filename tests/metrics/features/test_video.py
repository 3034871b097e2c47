from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.metrics.features import UnknownFeatures, get_features
from mmflow.metrics.features.weights import MissingWeights, WrongWeights


def test_video_frames_is_frame_mean_then_mean_absolute_motion():
    feats = get_features("video_frames", frames="pixels")
    image = get_features("pixels")
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 4, 16, 16, generator=g) * 2 - 1  # (B, 3, T, H, W)
    v = feats(video)
    assert feats.dim == v.shape[1] == 2 * 198 and feats.modality == "video"
    f = torch.stack([image(video[:, :, t]) for t in range(4)], 1)  # (B, T, D)
    torch.testing.assert_close(v[:, :198], f.mean(1))
    torch.testing.assert_close(v[:, 198:], (f[:, 1:] - f[:, :-1]).abs().mean(1))
    still = video[:, :, :1].expand(-1, -1, 4, -1, -1)
    assert feats(still)[:, 198:].abs().max() == 0  # no motion, no motion term
    assert feats.describe() == {"name": "video_frames", "dim": 396, "frames": image.describe()}


def test_a_name_alone_picks_the_frame_extractor():
    named = get_features("video_frames:pixels")
    assert named.describe() == get_features("video_frames", frames="pixels").describe()
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    torch.testing.assert_close(named(video), get_features("video_frames", frames="pixels")(video))
    with pytest.raises(UnknownFeatures, match="no_such"):
        get_features("video_frames:no_such")
    with pytest.raises(UnknownFeatures, match="names its frame extractor already"):
        get_features("video_frames:pixels", frames="clip")


def test_video_frames_with_clip_frames(tiny_clip):
    feats = get_features("video_frames", path=str(tiny_clip))  # frames="clip" by default
    assert feats(torch.zeros(1, 3, 2, 32, 32)).shape == (1, 32)
    with pytest.raises(MissingWeights, match="CLIP model folder"):
        get_features("video_frames")
    with pytest.raises(UnknownFeatures, match="frames='nope'"):
        get_features("video_frames", frames="nope")
    with pytest.raises(UnknownFeatures, match="'mel' is for audio"):
        get_features("video_frames", frames="mel")


class TinyI3D(nn.Module):
    """StyleGAN-V's calling convention: (B, 3, T, 224, 224) in [-1, 1] and three flags -> (B, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 5)

    def forward(self, x: Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> Tensor:
        assert x.shape[-2:] == (224, 224) and not rescale and not resize and return_features
        return self.proj(x.mean((2, 3, 4)))


def test_i3d_resizes_like_stylegan_v_and_calls_the_torchscript(tmp_path):
    torch.manual_seed(0)
    net = TinyI3D()
    torch.jit.script(net).save(str(tmp_path / "i3d.pt"))
    feats = get_features("i3d", path=str(tmp_path / "i3d.pt"), dim=5)
    video = torch.rand(2, 3, 3, 64, 96) * 2 - 1
    v = feats(video)
    frames = video.transpose(1, 2).reshape(6, 3, 64, 96)
    frames = F.interpolate(frames, size=(224, 336), mode="bilinear", align_corners=False)[..., 56:280]  # centre crop
    ref = net(frames.view(2, 3, 3, 224, 224).transpose(1, 2), False, False, True)
    torch.testing.assert_close(v, ref)
    assert len(feats.describe()["weights_sha256"]) == 64
    with pytest.raises(WrongWeights, match=r"returned \(2, 5\), expected \(2, 400\)"):
        get_features("i3d", path=str(tmp_path / "i3d.pt"))(video)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(WrongWeights, match="junk.pt: not a TorchScript file"):
        get_features("i3d", path=str(tmp_path / "junk.pt"))
    with pytest.raises(MissingWeights, match="i3d_torchscript.pt"):
        get_features("i3d")
