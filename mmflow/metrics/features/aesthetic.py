"""Aesthetic score: LAION's improved aesthetic predictor, a small head over CLIP ViT-L/14 image embeddings.

    clip = get_features("clip", path="weights/clip-vit-large-patch14")
    scorer = load_aesthetic_scorer("weights/sac+logos+ava1-l14-linearMSE.pth")
    scores = aesthetic_score(images, clip, scorer)      # (B,) roughly 1..10, higher = nicer

The head is christophschuhmann/improved-aesthetic-predictor's `MLP`: Linear 768->1024, Dropout 0.2,
Linear 1024->128, Dropout 0.2, Linear 128->64, Dropout 0.1, Linear 64->16, Linear 16->1 (no
activations: the released model is affine), applied to L2-normalised CLIP ViT-L/14 image embeddings.
Its released weights, `sac+logos+ava1-l14-linearMSE.pth` from that repository (fetch it on a machine
with internet; mmflow downloads nothing), are a state dict with keys layers.0.weight, layers.0.bias,
layers.2.*, layers.4.*, layers.6.*, layers.7.*; a .safetensors file with the same keys works too. The
scores only mean something with the CLIP model it was trained on (openai/clip-vit-large-patch14).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from mmflow.metrics.features.base import FeatureExtractor
from mmflow.metrics.features.weights import WrongWeights, file_sha256, load_checked, read_state_dict, require_path

__all__ = ["AestheticScorer", "aesthetic_score", "load_aesthetic_scorer"]

WEIGHTS_FILE = "sac+logos+ava1-l14-linearMSE.pth"
SOURCE = f"{WEIGHTS_FILE} from github.com/christophschuhmann/improved-aesthetic-predictor"


class AestheticScorer(nn.Module):
    """Unit-length CLIP image embeddings (B, input_size) -> scores (B,)."""

    def __init__(self, input_size: int = 768, weights_sha256: str | None = None) -> None:
        super().__init__()
        self.input_size = input_size
        self.weights_sha256 = weights_sha256
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.layers(embeddings).squeeze(-1)  # (B,)


def load_aesthetic_scorer(path: str | os.PathLike | None) -> AestheticScorer:
    """The head from a local .pth (torch.load weights_only) or .safetensors state dict; WrongWeights names bad keys."""
    path = require_path(path, "aesthetic predictor weights file", f"get {SOURCE}")
    state = read_state_dict(path)
    first = state.get("layers.0.weight")
    width = first.shape[1] if first is not None and first.ndim == 2 else 768
    scorer = AestheticScorer(width, weights_sha256=file_sha256(path))
    load_checked(scorer, state, path)
    return scorer.eval()


@torch.no_grad()
def aesthetic_score(images: Tensor, clip: FeatureExtractor, scorer: AestheticScorer, batch_size: int = 64) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B,) float32 scores on the CPU; WrongWeights when the widths differ."""
    if clip.dim != scorer.input_size:
        raise WrongWeights(f"the aesthetic head takes {scorer.input_size}-d CLIP embeddings but the {clip.name!r} "
                           f"features are {clip.dim}-d (it was trained on CLIP ViT-L/14, 768-d)")
    feats = clip.extract(images, batch_size)  # (B, D), unit length
    device = next(scorer.parameters()).device
    return scorer.eval()(feats.to(device)).float().cpu()
