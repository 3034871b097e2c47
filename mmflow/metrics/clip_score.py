"""CLIP score: how well media match their captions, 100 * max(cos(media, text), 0) averaged over pairs.

    img = clip.extract(images)                      # (N, D) image embeddings
    txt = clip.encode_text(captions)                # (N, D), row i is the caption of item i
    clip_score(img, txt)                            # e.g. 31.4 (Hessel et al. 2021 use w = 2.5 instead of 100)

Video: this function scores one vector per item; the caller's extractor pools per-frame image
embeddings over time (the mean of the frames' embeddings) before it is called. The other convention,
CLIPSIM (the mean of per-frame scores), is `clip_scores(frames (N*T, D), text repeated T times)`
reshaped to (N, T) and averaged over T; the two differ (a cosine of a mean is not a mean of cosines).
The same holds for audio with CLAP embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.metrics.errors import FeatureMismatch

__all__ = ["clip_score", "clip_scores"]


def clip_scores(media_features: Tensor | np.ndarray, text_features: Tensor | np.ndarray) -> Tensor:
    """Per-pair scores 100 * max(cos(m_i, t_i), 0) of media (N, D) and text (N, D) -> (N,) float64.

    Embeddings need not be normalised; a zero vector scores 0. FeatureMismatch names both shapes
    when they are not two equal (N, D) matrices.
    """
    m, t = torch.as_tensor(media_features).detach(), torch.as_tensor(text_features).detach()
    if m.ndim != 2 or m.shape != t.shape:
        raise FeatureMismatch(f"CLIP score needs media and text features of the same shape (N, D), one row per "
                              f"pair; got media {tuple(m.shape)} and text {tuple(t.shape)}")
    m, t = m.to(torch.float64), t.to(device=m.device, dtype=torch.float64)
    cos = (F.normalize(m, dim=1) * F.normalize(t, dim=1)).sum(dim=1)  # (N,)
    return 100 * cos.clamp_min(0)


def clip_score(media_features: Tensor | np.ndarray, text_features: Tensor | np.ndarray) -> float:
    """Mean over the N pairs of `clip_scores` (media (N, D), text (N, D)); in [0, 100], higher matches better."""
    scores = clip_scores(media_features, text_features)
    if scores.numel() == 0:
        raise FeatureMismatch("CLIP score of no pairs: media and text features are both empty")
    return float(scores.mean())
