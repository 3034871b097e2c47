"""The frozen media encoders: one encode for raw and cached batches, lazy loading, decode crops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmflow.config import ConfigError
from mmflow.model_io import save_model
from mmflow.tasks.encoders import MediaEncoders
from mmflow.text import TextConditionerConfig, TextEncoderConfig
from mmflow.tokenizers import AudioVAE, ImageVAE, audio_vae_config, image_vae_config
from mmflow.train.random import BatchRandom

CAPTIONS = ["a red square", "a blue circle", "", "a green triangle"]


def _text(dropout: float = 0.5) -> TextConditionerConfig:
    return TextConditionerConfig(encoders=[TextEncoderConfig(path="minilm", max_length=8, dropout=dropout)])


def _rng(batch: int = 4) -> BatchRandom:
    return BatchRandom(seed=3, step=5, group=0, slot=0, local_batch=batch, num_slots=1)


def test_a_cached_batch_encodes_exactly_like_the_raw_media(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = ImageVAE(image_vae_config("test", latent_channels=4, latent_shift=[0.1] * 4, latent_scale=[2.0] * 4))
    enc = MediaEncoders(str(save_model(vae, tmp_path / "vae")), _text())
    media = torch.rand(4, 3, 16, 16) * 2 - 1  # (B, C, H, W)
    fields = enc.cache_fields(media, CAPTIONS)
    assert sorted(fields) == ["latent_mean", "latent_std", "text.minilm.mask", "text.minilm.pooled",
                              "text.minilm.tokens"]
    assert all(t.shape[0] == 4 for t in fields.values())
    raw = enc.encode_batch({"media": media, "text": CAPTIONS}, _rng())
    cached = enc.encode_batch(fields, _rng())  # same draws: posterior noise, then each encoder's drop mask
    assert raw.z.shape == (4, *enc.latent_shape((3, 16, 16)))
    torch.testing.assert_close(cached.z, raw.z, rtol=0, atol=1e-6)
    for a, b in ((cached.text.tokens, raw.text.tokens), (cached.text.mask, raw.text.mask),
                 (cached.text.pooled, raw.text.pooled)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # without dropout every row keeps its own caption; the null condition is one row of the same layout
    plain = enc.encode_batch(fields, _rng(), dropout=False).text
    torch.testing.assert_close(plain.tokens, enc.encode_prompts(CAPTIONS).tokens, rtol=0, atol=1e-6)
    assert enc.null().tokens.shape == (1, *plain.tokens.shape[1:])
    assert enc.describe()["tokenizer"] is not None and enc.describe()["text"] == _text().fingerprint()


def test_pixel_space_passes_media_through_and_loads_nothing_until_asked(tmp_path: Path) -> None:
    enc = MediaEncoders(None, _text(dropout=0.0))
    media = torch.rand(2, 3, 8, 8)
    fields = enc.cache_fields(media, CAPTIONS[:2])
    assert "media" in fields and "latent_mean" not in fields
    out = enc.encode_batch({"media": media, "text": CAPTIONS[:2]}, _rng(2))
    assert out.z is media and enc.decode(media) is media and enc.describe()["tokenizer"] is None
    assert enc.latent_shape((3, 8, 8)) == (3, 8, 8)

    missing = MediaEncoders(str(tmp_path / "gone"), _text())  # construction loads nothing...
    with pytest.raises(ConfigError, match="is not a folder"):
        missing.modules()  # ...the first use does


def test_decode_crops_a_padding_tokenizer_to_the_data_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = audio_vae_config("test", sample_rate=8000)  # hop 8
    enc = MediaEncoders(str(save_model(AudioVAE(cfg), tmp_path / "avae")), _text())
    n = 101  # not a multiple of the hop (8): encode pads
    z = enc.cache_fields(torch.zeros(1, 1, n), [""])["latent_mean"]
    assert enc.decode(z).shape[-1] > n and enc.decode(z, like_shape=(1, 1, n)).shape[-1] == n
