"""Probes as feature extractors: "probe:<name>" -> the probe's penultimate hidden layer.

A Frechet distance in a probe's features compares generated and real media in the terms of our own
data (motion, key, instrument...), with weights the repository ships:

    feats = get_features("probe:emoji_video")               # checkpoints/probes/emoji_video/
    feats = get_features("probe:music", path="my/probe")    # or any probe folder
    feats(clips)                                            # (B, 128)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmflow.metrics.features.base import FeatureExtractor, register_features
from mmflow.metrics.probes.base import AttributeClassifier, ProbeInputError, load_probe, shipped_probe_path
from mmflow.model_io import WEIGHTS_NAME

__all__ = ["ProbeFeatures", "probe_features"]

TRAINED_PROBES = ("emoji_video", "music", "shapes", "tones")


class ProbeFeatures(FeatureExtractor):
    """Media of the probe's modality (B, ...) in [-1, 1] -> its features (B, feature_dim)."""

    name = "probe"
    modality = "image"

    def __init__(self, probe: AttributeClassifier, weights: Path | None = None) -> None:
        super().__init__()
        assert isinstance(probe, nn.Module)
        self.probe = probe
        self.name = f"probe:{probe.config.name}"  # type: ignore[misc]  (per instance: one class serves every probe)
        self.modality = probe.config.modality  # type: ignore[misc]
        self.dim = probe.config.feature_dim
        self.sample_rate = probe.config.sample_rate
        self.weights_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest() if weights is not None else None

    def forward(self, media: Tensor) -> Tensor:
        return self.probe.features(media).float()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "weights_sha256": self.weights_sha256}


def probe_features(name: str, path: str | None = None) -> ProbeFeatures:
    """The features of probe `name`: from the folder `path`, else the shipped checkpoints/probes/<name>/."""
    if name == "digits":
        from mmflow.metrics.probes.digits import DigitsProbe

        if path is not None:
            raise ProbeInputError(f"probe:digits takes no weights path (got {path!r}): its SVC is refitted on "
                                  f"scikit-learn's digits when loaded")
        return ProbeFeatures(DigitsProbe())
    folder = Path(path) if path is not None else shipped_probe_path(name)
    return ProbeFeatures(load_probe(folder), folder / WEIGHTS_NAME)


def _register(name: str) -> None:
    @register_features(f"probe:{name}")
    def factory(path: str | None = None) -> FeatureExtractor:
        return probe_features(name, path)


for _name in (*TRAINED_PROBES, "digits"):
    _register(_name)
