"""Tests for mmflow/tokenizers/video_vae.py: causal video VAE shapes, causality, exact chunking, I/O."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.model_io import load_model, save_model
from mmflow.tokenizers.causal3d import Upsample3d
from mmflow.tokenizers.video_vae import (
    VIDEO_VAE_PRESETS,
    VideoVAE,
    VideoVAEConfig,
    video_vae_config,
)

# 3 levels: spatial factor 4, temporal factor 4 (both downsamplings halve time)
TINY = video_vae_config("test", encode_chunk_frames=0, decode_chunk_latents=0)


PER_FRAME_TOP = replace(TINY, temporal_kernel=(1, 1, 3))  # full-resolution levels per frame


def _vae(cfg: VideoVAEConfig = TINY, seed: int = 0) -> VideoVAE:
    torch.manual_seed(seed)
    vae = VideoVAE(cfg).eval()
    with torch.no_grad():  # the depth-to-time convs start at zero (repetition): let the tests see their path
        for m in vae.modules():
            if isinstance(m, Upsample3d) and m.time_conv is not None:
                m.time_conv.conv.weight.normal_(0, 0.1)
    return vae


def _video(t: int, b: int = 2, s: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_factors_default_config_and_presets() -> None:
    cfg = VideoVAEConfig()
    cfg.validate()
    assert (cfg.spatial_factor, cfg.temporal_factor, cfg.latent_channels) == (8, 4, 16)
    assert (TINY.spatial_factor, TINY.temporal_factor) == (4, 4)
    for name in VIDEO_VAE_PRESETS:
        assert video_vae_config(name).temporal_factor == 4
    assert video_vae_config("cogvideox").spatial_factor == 8
    with pytest.raises(KeyError, match="unknown video VAE preset 'huge'"):
        video_vae_config("huge")


@pytest.mark.parametrize("t,t_lat", [(1, 1), (5, 2), (9, 3)])
def test_shapes(t: int, t_lat: int) -> None:
    vae, x = _vae(), _video(t, s=16)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, 4, t_lat, 4, 4)
        assert vae.latent_size(t, 16, 16) == (t_lat, 4, 4)
        assert vae.decode(post.mode()).shape == x.shape
        assert vae(x).reconstruction.shape == x.shape


@pytest.mark.parametrize("cfg", [TINY, PER_FRAME_TOP], ids=["3d", "per-frame-top"])
def test_encoder_is_causal(cfg: VideoVAEConfig) -> None:
    """Latent j sees frames <= 4j: perturbing frame k changes exactly the latents j >= ceil(k / 4)."""
    vae, x = _vae(cfg), _video(9)
    with torch.no_grad():
        base = vae.encode(x).mean
        for k in range(9):
            y = x.clone()
            y[:, :, k] += 0.5
            diff = (vae.encode(y).mean - base).abs().amax(dim=(0, 1, 3, 4))  # (T',)
            first = math.ceil(k / 4)
            assert torch.all(diff[:first] == 0), (k, diff)
            assert torch.all(diff[first:] > 1e-6), (k, diff)  # the receptive field reaches all later latents


@pytest.mark.parametrize("cfg", [TINY, PER_FRAME_TOP], ids=["3d", "per-frame-top"])
def test_decoder_is_causal(cfg: VideoVAEConfig) -> None:
    """Latent 0 decodes to frame 0, latent j >= 1 to frames 4j-3 .. 4j: earlier frames never change."""
    vae = _vae(cfg)
    z = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = vae.decode(z)
        for j in range(3):
            w = z.clone()
            w[:, :, j] += 0.5
            diff = (vae.decode(w) - base).abs().amax(dim=(0, 1, 3, 4))  # (T,)
            first = 0 if j == 0 else 4 * j - 3
            assert torch.all(diff[:first] == 0), (j, diff)
            assert torch.all(diff[first:] > 1e-6), (j, diff)


def test_untrained_posterior_noise_is_small() -> None:
    """The encoder starts at std init_posterior_std, not the prior's 1 (which drowned the means)."""
    for std in (0.1, 0.5):
        vae = VideoVAE(replace(TINY, init_posterior_std=std))
        with torch.no_grad():
            post = vae.encode(_video(5))
        assert abs(post.std.log().mean().item() - math.log(std)) < 0.1  # the bias sets it; the weights scatter it
        assert post.std.max() < 2 * std


def test_image_is_a_one_frame_video() -> None:
    vae, x = _vae(), _video(5)
    with torch.no_grad():
        image_post = vae.encode(x[:, :, :1])  # (B, 3, 1, H, W)
        torch.testing.assert_close(image_post.mean, vae.encode(x).mean[:, :, :1], rtol=0, atol=1e-6)
        frame = vae.decode(image_post.mode())
        assert frame.shape == (2, 3, 1, 8, 8)
        torch.testing.assert_close(frame, vae.decode(vae.encode(x).mode())[:, :, :1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad,kernel", [("replicate", (3,)), ("zeros", (3,)), ("replicate", (1, 1, 3))])
def test_chunked_equals_whole(pad: str, kernel: tuple[int, ...]) -> None:
    vae, x = _vae(replace(TINY, temporal_pad=pad, temporal_kernel=kernel)), _video(17)
    with torch.no_grad():
        whole = vae.encode(x, chunk_frames=0)
        for chunk in (4, 8, 12):  # 12: a last chunk shorter than the others
            post = vae.encode(x, chunk_frames=chunk)
            torch.testing.assert_close(post.mean, whole.mean, rtol=0, atol=1e-5)
            torch.testing.assert_close(post.logvar, whole.logvar, rtol=0, atol=1e-5)
        # without the carried conv caches, chunks encoded independently would not match
        naive = vae.encode(x[:, :, 4:9]).mean[:, :, 1]  # frames 5..8 with only frame 4 as their past
        assert (naive - whole.mean[:, :, 2]).abs().max() > 1e-3
        video = vae.decode(whole.mean, chunk_latents=0)
        for chunk in (1, 2, 3):
            torch.testing.assert_close(vae.decode(whole.mean, chunk_latents=chunk), video, rtol=0, atol=1e-5)


def test_chunking_from_config_and_bad_chunk() -> None:
    vae, x = _vae(replace(TINY, encode_chunk_frames=4, decode_chunk_latents=1)), _video(9)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(x).mean, vae.encode(x, chunk_frames=0).mean, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="multiple of the temporal factor 4"):
            vae.encode(x, chunk_frames=6)


def test_pad_frames_repeats_last_frame_and_crops() -> None:
    vae, x = _vae(replace(TINY, pad_frames=True)), _video(6)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape[2] == 3  # 6 frames padded to 9
        padded = torch.cat([x, x[:, :, -1:].expand(-1, -1, 3, -1, -1)], dim=2)
        torch.testing.assert_close(post.mean, vae.encode(padded).mean)
        assert vae.decode(post.mode(), like_shape=x.shape).shape == x.shape
        assert vae(x).reconstruction.shape == x.shape
        with pytest.raises(ValueError, match="num_frames=4 does not match 3 latent frames"):
            vae.decode(post.mode(), like_shape=(*x.shape[:2], 4, *x.shape[3:]))


def test_bad_inputs() -> None:
    vae = _vae()
    with pytest.raises(ValueError, match=r"T=6 frames does not fit temporal factor 4: use 1 \+ 4k frames "
                                         r"\(the nearest: 5 or 9\) or set pad_frames: true"):
        vae.encode(_video(6))
    with pytest.raises(ValueError, match="expects 3 channels"):
        vae.encode(torch.zeros(1, 4, 5, 8, 8))
    with pytest.raises(ValueError, match=r"x\.unsqueeze\(2\)"):
        vae.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of the spatial factor 4, got 8x6"):
        vae.encode(torch.zeros(1, 3, 5, 8, 6))
    bad = _video(5)
    bad[0, 1, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vae.encode(bad)
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, T', H', W'\)"):
        vae.decode(torch.zeros(1, 5, 2, 2, 2))


def test_config_errors_name_the_key() -> None:
    base = to_dict(TINY)
    with pytest.raises(ConfigError, match="temporal_downsample: needs one entry per downsampling"):
        from_dict(VideoVAEConfig, {**base, "temporal_downsample": [True]})
    with pytest.raises(ConfigError, match="encode_chunk_frames: must be a multiple of the temporal factor 4"):
        from_dict(VideoVAEConfig, {**base, "encode_chunk_frames": 6})
    with pytest.raises(ConfigError, match=r"temporal_kernel: needs one entry or one per level \(3\), got 2"):
        from_dict(VideoVAEConfig, {**base, "temporal_kernel": [1, 3]})
    with pytest.raises(ConfigError, match=r"temporal_kernel: entries must be 1 or 3, got \[1, 2, 3\]"):
        from_dict(VideoVAEConfig, {**base, "temporal_kernel": [1, 2, 3]})
    with pytest.raises(ConfigError, match="init_posterior_std"):
        from_dict(VideoVAEConfig, {**base, "init_posterior_std": 0.0})
    with pytest.raises(ConfigError, match="norm_num_groups: 3 does not divide"):
        from_dict(VideoVAEConfig, {**base, "norm_num_groups": 3})
    with pytest.raises(ConfigError, match="latent_shift: has [0-9]+ entries but latent_channels is 4"):
        from_dict(VideoVAEConfig, {**base, "latent_shift": [0.0, 1.0]})
    with pytest.raises(ConfigError, match=r"latent_scale\[1\]: nan is not a finite number"):  # from_dict's float check
        from_dict(VideoVAEConfig, {**base, "latent_scale": [1.0, float("nan"), 1.0, 1.0]})


def test_save_load_round_trip_keeps_weights_and_latent_stats(tmp_path: Path) -> None:
    vae = _vae(replace(TINY, latent_shift=[0.1, -0.2, 0.3, 0.0], latent_scale=[2.0, 1.0, 0.5, 1.5]))
    save_model(vae, tmp_path / "vae")
    loaded = load_model(tmp_path / "vae").eval()
    assert isinstance(loaded, VideoVAE) and loaded.config == vae.config
    x = _video(5)
    with torch.no_grad():
        z = vae.encode_latents(x)
        torch.testing.assert_close(loaded.encode_latents(x), z, rtol=0, atol=0)
        # normalised latents: (mean - shift) * scale, and decode_latents undoes the normalisation
        shift = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
        scale = torch.tensor([2.0, 1.0, 0.5, 1.5]).view(1, 4, 1, 1, 1)
        torch.testing.assert_close(z, (vae.encode(x).mean - shift) * scale)
        torch.testing.assert_close(loaded.decode_latents(z), vae.decode(vae.encode(x).mean), rtol=1e-5, atol=1e-5)


def _moving_squares(b: int = 2, t: int = 5, s: int = 16, size: int = 8) -> torch.Tensor:
    """Clips of a coloured square moving over a gradient background (different per clip)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    x = torch.zeros(b, 3, t, s, s)
    for i in range(b):
        x[i] = (0.5 * (xx if i % 2 else yy) - 0.3)[None, None]
        for f in range(t):
            r, c = 1 + f, 1 + (2 * f if i % 2 else 6 - f)
            x[i, :, f, r:r + size, c:c + size] = torch.tensor([0.9, -0.8 + 0.6 * i, 0.4])[:, None, None]
    return x


@pytest.mark.slow
def test_short_training_reduces_reconstruction_error(short_fit) -> None:
    vae, x = _vae(), _moving_squares()
    losses, rec = short_fit(vae, x, 60)
    final = (rec - x).abs().mean().item()
    constant = (x - x.mean(dim=(0, 2, 3, 4), keepdim=True)).abs().mean().item()  # best colour, no structure
    assert final < 0.35 * losses[0], (losses[0], final)
    assert final < 0.5 * constant, (constant, final)  # it reconstructs the moving structure, not a mean colour


def test_latent_shape_is_what_encode_gives_without_encoding() -> None:
    vae = _vae()
    x = _video(9)
    assert vae.latent_shape(tuple(x.shape[1:])) == tuple(vae.encode(x).mean.shape[1:])
    with pytest.raises(ValueError, match=r"the nearest: 9 or 13"):
        vae.latent_shape((3, 10, 16, 16))
    with pytest.raises(ValueError, match=r"expected a clip shape \(C, T, H, W\)"):
        vae.latent_shape((3, 16, 16))
