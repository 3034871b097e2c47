""""clap": audio and text embeddings from a local transformers CLAP folder (for FAD-style distances and
an audio-caption score like CLIP score).

    feats = get_features("clap", path="weights/clap-htsat-unfused")   # a save_pretrained folder
    v = feats(audio)                        # (B, C, N) in [-1, 1] at feats.sample_rate -> (B, D), unit length
    t = feats.encode_text(["a drum loop"])  # (P, D), unit length

The folder holds ClapModel weights (model.safetensors), its tokenizer and preprocessor_config.json
(ClapFeatureExtractor). `sample_rate` is the feature extractor's (48 kHz for LAION's models): the
caller resamples to it. Channels are averaged to mono. Clips longer than the extractor's
max_length_s are cut to their first max_length_s seconds here, so features are deterministic (the HF
extractor would pick a random window). ClapFeatureExtractor computes its mel spectrogram in numpy,
so each batch goes through the CPU once.
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

__all__ = ["ClapFeatures"]


class ClapFeatures(FeatureExtractor):
    """A ClapModel's unit-length audio / text embeddings (B, projection_dim)."""

    name = "clap"
    modality = "audio"

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: Any, weights_sha256: str | None = None) -> None:
        super().__init__()
        self.model, self.tokenizer, self.feature_extractor = model, tokenizer, feature_extractor
        self.weights_sha256 = weights_sha256
        self.dim = int(model.config.projection_dim)
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.max_samples = int(feature_extractor.nb_max_samples)
        text = model.config.text_config
        self.max_text_length = int(text.max_position_embeddings) - int(text.pad_token_id) - 1  # RoBERTa position offset

    def forward(self, media: Tensor) -> Tensor:
        mono = media.float().mean(1)[:, : self.max_samples]  # (B, N'), N' <= max_samples
        inputs = self.feature_extractor(list(mono.cpu().numpy()), sampling_rate=self.sample_rate, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = embedding(self.model.get_audio_features(
            input_features=inputs["input_features"].to(device), is_longer=inputs["is_longer"].to(device)))
        return F.normalize(out.float(), dim=-1)  # (B, D)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """(P, D) unit-length text embeddings; prompts longer than the model's positions are cut, with a warning."""
        batch = tokenize(self.tokenizer, prompts, self.max_text_length, "the CLAP text encoder")
        device = next(self.model.parameters()).device
        out = embedding(self.model.get_text_features(**{k: v.to(device) for k, v in batch.items()}))
        return F.normalize(out.float(), dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "sample_rate": self.sample_rate, "max_samples": self.max_samples,
                "weights_sha256": self.weights_sha256}


@register_features("clap")
def _clap(path: str | os.PathLike | None = None) -> ClapFeatures:
    model, tokenizer, extractor, sha = load_folder(path, "ClapModel", "CLAP model folder", "AutoFeatureExtractor")
    return ClapFeatures(model, tokenizer, extractor, sha)
