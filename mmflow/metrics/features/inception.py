"""FID's Inception-v3 (pool3, 2048-d): the TensorFlow FID graph `inception-2015-12-05` in plain torch.

    feats = get_features("inception", path="weights/pt_inception-2015-12-05-6726825d.pth")  # resize="clean"
    v = feats(images)                     # images (B, 3, H, W) in [-1, 1] -> (B, 2048) float32

The architecture is torchvision's Inception3 with the FID graph's differences (pytorch-fid's
FIDInceptionA / C / E_1 / E_2): the branch average pools leave padding out of the mean
(count_include_pad=False) and the last block (Mixed_7c) max-pools its pool branch. Features are the
output of the final average pool; the 1008-way classifier (`fc`) is not used.

Weights file (nothing downloads; fetch it on a machine with internet and copy it over):
  pytorch-fid's port of the TF FID graph,
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  (its sha256 starts 6726825d, as the name says), a plain torch state dict with torchvision's Inception3 key names
  (`Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.running_mean`, ..., `Mixed_7c.branch_pool.bn.bias`,
  `fc.weight` (1008, 2048)), read with torch.load(weights_only=True). A `.safetensors` file with the
  same keys works too (`safetensors.torch.save_file(torch.load(pth, weights_only=True), out)`).
  `fc.*` may be absent; `num_batches_tracked` may be absent. Any other key difference (torchvision's
  ImageNet Inception, with AuxLogits and a 1000-way fc, for example) is an error naming the keys.

Resizing (input in [-1, 1] is first quantized to uint8 exactly as mmflow's PNG writer does, so a
sample's features equal those of its saved PNG):
  resize="clean"  (default) clean-fid's "clean" mode: bicubic with antialias on the uint8 values as
                  float (Pillow's float "F" mode, what clean-fid calls), clipped to [0, 255], then
                  (x - 128) / 128 as the TF graph does. Matches clean-fid's FID (mode="clean").
  resize="legacy" pytorch-fid: x / 255 resized bilinearly without antialias (F.interpolate,
                  align_corners=False), then 2x - 1. Matches pytorch-fid's numbers (and those of
                  papers computed with it); aliasing makes it sensitive to the input size.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.errors import UserError
from mmflow.metrics.features.base import FeatureExtractor, register_features
from mmflow.metrics.features.weights import file_sha256, load_checked, read_state_dict, require_path

__all__ = ["FID_WEIGHTS_FILE", "FID_WEIGHTS_URL", "FIDInceptionV3", "InceptionFeatures", "UnknownResize"]

FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
SIZE = 299  # the TF graph's input side
RESIZE_MODES = ("clean", "legacy")
Resize = Literal["clean", "legacy"]


class UnknownResize(UserError, ValueError):
    """A resize mode of the inception features other than "clean" / "legacy"."""


# ---------------------------------------------------------------------------------------------- blocks
class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, the TF graph's) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: Tensor) -> Tensor:
    # the TF graph averages over the window's in-image pixels only (torchvision's blocks count the padding)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/c/d (35x35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a: 35x35 -> 17x17 (stride-2 3x3 | 1x1-3x3-3x3/2 | maxpool/2)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..e (17x17): factorised 7x7 branches of width c7 -> 768 channels."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a: 17x17 -> 8x8 (1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/c (8x8): split 1x3 / 3x1 branches -> 2048 channels; `max_pool` for Mixed_7c, whose pool
    branch the FID graph max-pools (an accident of that graph that FID keeps)."""

    def __init__(self, cin: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # (B, 768, 8, 8)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)  # (B, 768, 8, 8)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(B, 3, 299, 299) scaled to [-1, 1] -> pool3 (B, 2048); key names are torchvision's Inception3."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ... -> (B, 768, 17, 17) -> (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048): pool3


# ---------------------------------------------------------------------------------------------- resizing
def to_uint8_values(images: Tensor) -> Tensor:
    """[-1, 1] -> uint8 values as floats in [0, 255] (float32 or wider), rounded as mmflow's PNG writer rounds."""
    x = images.to(torch.promote_types(images.dtype, torch.float32))  # half precision cannot hold 255 levels exactly
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def resize_for_inception(images: Tensor, resize: Resize = "clean") -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, 299, 299) scaled as the network wants (see the module docstring)."""
    u = to_uint8_values(images)  # (B, 3, H, W) in {0, ..., 255}
    if resize == "clean":
        # torch's antialiased bicubic is Pillow's resampling (a = -0.5, support widened when shrinking)
        u = F.interpolate(u, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True)
        return (u.clamp(0, 255) - 128) / 128
    if resize == "legacy":
        x01 = F.interpolate(u / 255, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x01 - 1
    raise UnknownResize(f"unknown inception resize {resize!r}; known: {', '.join(RESIZE_MODES)}")


# ---------------------------------------------------------------------------------------------- extractor
class InceptionFeatures(FeatureExtractor):
    """Images (B, 3, H, W) in [-1, 1] -> FID Inception pool3 features (B, 2048) float32."""

    name = "inception"
    modality = "image"

    def __init__(self, resize: Resize = "clean", weights_sha256: str | None = None) -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise UnknownResize(f"unknown inception resize {resize!r}; known: {', '.join(RESIZE_MODES)}")
        self.resize = resize
        self.weights_sha256 = weights_sha256  # None: random weights (tests and benchmarks only)
        self.dim = 2048
        self.net = FIDInceptionV3()

    def forward(self, media: Tensor) -> Tensor:
        return self.net(resize_for_inception(media, self.resize)).float()  # (B, 2048)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "resize": self.resize, "weights_sha256": self.weights_sha256}


def load_fid_inception(path: str | os.PathLike | None, resize: Resize = "clean") -> InceptionFeatures:
    """InceptionFeatures with the FID weights at `path` (pytorch-fid's .pth or a .safetensors of its keys)."""
    path = require_path(path, f"FID Inception weights file ({FID_WEIGHTS_FILE}, or a .safetensors of its keys)",
                        f"fetch {FID_WEIGHTS_URL} on a machine with internet and copy it here")
    state = read_state_dict(path)
    module = InceptionFeatures(resize, weights_sha256=file_sha256(path))
    # fc is the TF graph's 1008-way classifier (1001 classes, padded): absent or that shape
    load_checked(module.net, state, path, ignore=("fc.",), shapes={"fc.weight": (1008, 2048), "fc.bias": (1008,)})
    return module


@register_features("inception")
def _inception(path: str | None = None, resize: Resize = "clean") -> InceptionFeatures:
    return load_fid_inception(path, resize)
