"""Tests for mmflow/tokenizers/audio_vae.py and audio_blocks.py: waveform VAE, Snake (prepare_audio: tests/data)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.model_io import load_model, save_model
from mmflow.tokenizers.audio_blocks import Snake1d
from mmflow.tokenizers.audio_vae import (
    AUDIO_VAE_PRESETS,
    AudioVAE,
    AudioVAEConfig,
    audio_vae_config,
)
from mmflow.tokenizers.losses import stft_distance

TINY = audio_vae_config("test", sample_rate=8000)  # hop 8


def _vae(cfg: AudioVAEConfig = TINY, seed: int = 0) -> AudioVAE:
    torch.manual_seed(seed)
    return AudioVAE(cfg).eval()


def _sines(b: int = 2, channels: int = 1, n: int = 2048, sr: int = 8000) -> torch.Tensor:
    """(B, C, N) sums of two sines, a different pitch per example and channel, in [-0.6, 0.6]."""
    t = torch.arange(n) / sr
    out = torch.zeros(b, channels, n)
    for i in range(b):
        for c in range(channels):
            f = 200 + 150 * i + 60 * c
            out[i, c] = 0.4 * torch.sin(2 * math.pi * f * t) + 0.2 * torch.sin(2 * math.pi * 2.5 * f * t + 1.0)
    return out


def test_default_hops() -> None:
    cfg = AudioVAEConfig()
    assert (cfg.hop_length, cfg.latent_rate, cfg.sample_rate, cfg.latent_channels) == (320, 50.0, 16000, 32)
    assert replace(cfg, strides=(2, 4, 6, 8)).hop_length == 384
    assert {name: audio_vae_config(name).hop_length for name in AUDIO_VAE_PRESETS} == {
        "test": 8, "tiny": 320, "base": 320, "base-hop384": 384}
    with pytest.raises(KeyError, match="unknown audio VAE preset"):
        audio_vae_config("huge")


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_mono_and_stereo(channels: int) -> None:
    vae, x = _vae(replace(TINY, channels=channels)), _sines(channels=channels, n=800)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == (2, 8, 100)  # hop 8
        assert vae.decode(post.mode()).shape == x.shape
        assert vae(x).reconstruction.shape == x.shape


@pytest.mark.parametrize("strides", [(2, 4), (3, 5), (2, 4, 5)])
def test_lengths_are_exact_for_any_stride(strides: tuple[int, ...]) -> None:
    cfg = replace(TINY, strides=strides, block_channels=(8,) * len(strides))
    vae, hop = _vae(cfg), math.prod(strides)
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 1, 7 * hop)).mean
        assert z.shape[2] == 7 and vae.decode(z).shape[2] == 7 * hop


def test_length_not_multiple_of_hop_is_padded_with_silence_and_cropped() -> None:
    vae, x = _vae(), _sines(n=803)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape[2] == math.ceil(803 / 8) == vae.num_latent_frames(803)
        assert vae.latent_shape((1, 803)) == tuple(post.mean.shape[1:])  # without encoding (dry runs: meta tensors)
        with pytest.raises(ValueError, match="expects 1 channel"):
            vae.latent_shape((2, 803))
        torch.testing.assert_close(post.mean, vae.encode(F.pad(x, (0, 5))).mean)  # zeros on the right
        assert vae.decode(post.mode(), like_shape=x.shape).shape == x.shape
        assert vae(x).reconstruction.shape == x.shape
        with pytest.raises(ValueError, match="num_samples=700 does not match 101 latent frames"):
            vae.decode(post.mode(), like_shape=(*x.shape[:2], 700))


def test_snake_formula_and_learnable_alpha() -> None:
    snake, x = Snake1d(3), torch.linspace(-3, 3, 12).reshape(1, 3, 4)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1))
    alpha = snake.alpha.detach()
    torch.testing.assert_close(snake(x), x + torch.sin(alpha * x) ** 2 / alpha)
    snake(x).sum().backward()
    assert snake.alpha.grad is not None and snake.alpha.grad.abs().min() > 0


def test_bad_inputs() -> None:
    vae, stereo = _vae(), _vae(replace(TINY, channels=2))
    with pytest.raises(ValueError, match=r"expects mono audio \(1 channel\).*got 2 channels.*prepare_audio"):
        vae.encode(torch.zeros(1, 2, 64))
    with pytest.raises(ValueError, match=r"expects stereo audio \(2 channels\).*got 1 channels"):
        stereo.encode(torch.zeros(1, 1, 64))
    with pytest.raises(ValueError, match=r"\(B, C, N\), got \(1, 64\).*unsqueeze\(0\)"):
        vae.encode(torch.zeros(1, 64))
    bad = torch.zeros(1, 1, 64)
    bad[0, 0, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vae.encode(bad)
    with pytest.raises(ValueError, match=r"latents of shape \(B, 8, L\)"):
        vae.decode(torch.zeros(1, 4, 10))


def test_config_errors_name_the_key() -> None:
    base = to_dict(TINY)
    with pytest.raises(ConfigError, match="block_channels: needs one width per stride"):
        from_dict(AudioVAEConfig, {**base, "block_channels": [8]})
    with pytest.raises(ConfigError, match="channels: 3 is out of bounds"):
        from_dict(AudioVAEConfig, {**base, "channels": 3})
    with pytest.raises(ConfigError, match="latent_scale: has 1 entries but latent_channels is 8"):
        from_dict(AudioVAEConfig, {**base, "latent_scale": [1.0]})


def test_save_load_round_trip(tmp_path: Path) -> None:
    vae = _vae(replace(TINY, latent_shift=[0.5] * 8, latent_scale=[2.0] * 8))
    save_model(vae, tmp_path / "audio_vae")
    loaded = load_model(tmp_path / "audio_vae").eval()
    assert isinstance(loaded, AudioVAE) and loaded.config == vae.config
    x = _sines(n=256)
    with torch.no_grad():
        z = vae.encode_latents(x)
        torch.testing.assert_close(loaded.encode_latents(x), z, rtol=0, atol=0)
        torch.testing.assert_close(z, (vae.encode(x).mean - 0.5) * 2.0)
        torch.testing.assert_close(loaded.decode_latents(z), vae.decode(vae.encode(x).mean), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_short_training_reduces_reconstruction_error(short_fit) -> None:
    vae, x = _vae(), _sines()
    losses, rec = short_fit(vae, x, 50)
    final, silence = (rec - x).abs().mean().item(), x.abs().mean().item()
    assert final < 0.4 * losses[0] and final < 0.4 * silence, (losses[0], silence, final)
    assert torch.all(stft_distance(rec, x) < stft_distance(torch.zeros_like(x), x))


def test_untrained_posterior_noise_is_small() -> None:
    """The encoder starts at std init_posterior_std, not the prior's 1: noise that large drowned the untrained
    means and the decoder learnt to output silence (the tokenizer recipe's l1 stuck at the data's mean |x|)."""
    for std in (0.1, 0.5):
        vae = AudioVAE(audio_vae_config("test", init_posterior_std=std))
        with torch.no_grad():
            post = vae.encode(_sines(n=800))
        assert abs(post.std.log().mean().item() - math.log(std)) < 0.15  # the bias sets it; the weights scatter it
        assert post.std.max() < 2 * std
    with pytest.raises(ConfigError, match="init_posterior_std"):
        from_dict(AudioVAEConfig, {"init_posterior_std": 0.0})
