"""Tests for mmflow/tokenizers/image_vae.py: shapes and factors, clear errors, save/load, checkpointing,
latent normalisation and a short training that lowers the reconstruction error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmflow.config import ConfigError, from_dict
from mmflow.model_io import build_model, load_model, save_model
from mmflow.tokenizers import ImageVAE, ImageVAEConfig, image_vae_config


def _vae(preset: str = "test", seed: int = 0, **overrides) -> ImageVAE:
    torch.manual_seed(seed)
    return ImageVAE(image_vae_config(preset, **overrides)).eval()


@pytest.mark.parametrize("preset,factor", [("test", 2), ("tiny", 4)])
def test_shapes_follow_the_downsampling_factor(preset: str, factor: int) -> None:
    vae = _vae(preset)
    assert vae.downsample_factor == factor
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, *vae.latent_shape((3, 16, 24)))
        assert vae.latent_shape((3, 16, 24)) == (4, 16 // factor, 24 // factor)
        assert vae.decode(post.mean).shape == x.shape
        out = vae(x, sample_posterior=False)
    assert torch.equal(out.latents, post.mean) and torch.equal(out.reconstruction, vae.decode(post.mean))


def test_config_defaults_are_f8_with_16_channels() -> None:
    cfg = ImageVAEConfig()
    assert cfg.downsample_factor == 8 and cfg.latent_channels == 16 and not cfg.use_quant_conv
    assert image_vae_config("sd").use_quant_conv and image_vae_config("sd").latent_channels == 4
    with pytest.raises(KeyError, match="unknown image VAE preset 'huge'"):
        image_vae_config("huge")


def test_encoder_is_local_batch_independent() -> None:
    vae = _vae()
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        both = vae.encode(x).mean
        one = vae.encode(x[1:2]).mean
    assert torch.allclose(both[1:2], one, atol=1e-5)  # GroupNorm is per example, no batch statistics


def test_input_errors_are_clear() -> None:
    vae = _vae("tiny")
    with pytest.raises(ValueError, match="image has 1 channels, this VAE expects in_channels = 3"):
        vae.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"image size 10x16 is not divisible by the VAE's downsampling factor 4 .*"
                                         r"crop to 8x16 or pad/resize to 12x16"):
        vae.encode(torch.zeros(1, 3, 10, 16))
    with pytest.raises(ValueError, match=r"expects images \(B, C, H, W\), got shape \(3, 8, 8\)"):
        vae.encode(torch.zeros(3, 8, 8))
    bad = torch.zeros(1, 3, 8, 8)
    bad[0, 0, 0, 0], bad[0, 1, 2, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"encode input contains non-finite values \(1 NaN, 1 Inf\)"):
        vae.encode(bad)
    with pytest.raises(ValueError, match=r"decode expects latents \(B, 4, h, w\), got shape \(1, 3, 2, 2\)"):
        vae.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="decode input contains non-finite values"):
        vae.decode(torch.full((1, 4, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"expected an image shape \(C, H, W\)"):
        vae.latent_shape((1, 3, 8, 8))
    with pytest.raises(ValueError, match="not divisible by the VAE's downsampling factor 4"):
        vae.latent_shape((3, 8, 6))


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"norm_num_groups: 32 does not divide the widths \[48\]"):
        ImageVAE(ImageVAEConfig(block_out_channels=(64, 48)))
    with pytest.raises(ConfigError, match="latent_shift: has 3 entries but latent_channels is 4"):
        image_vae_config("test", latent_shift=[0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match="latent_scale: entries must be non-zero"):
        image_vae_config("test", latent_scale=[1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="latent_scale: must be finite"):
        image_vae_config("test", latent_scale=[1.0, math.inf, 1.0, 1.0])
    with pytest.raises(ConfigError, match="block_out_channels"):  # through the strict dict route too
        build_model("image_vae", {"block_out_channels": [], "norm_num_groups": 8})
    with pytest.raises(ConfigError, match="layers_per_blok"):
        build_model("image_vae", {"layers_per_blok": 2})


def test_save_load_roundtrip_keeps_weights_and_stats(tmp_path) -> None:
    vae = _vae("tiny", latent_shift=[0.1, -0.2, 0.3, 0.0], latent_scale=[2.0, 0.5, 1.0, 3.0])
    save_model(vae, tmp_path / "vae")
    loaded = load_model(tmp_path / "vae").eval()
    assert isinstance(loaded, ImageVAE) and loaded.config == vae.config
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode_latents(x), vae.encode_latents(x))
        z = torch.randn(2, 4, 2, 2)
        assert torch.equal(loaded.decode_latents(z), vae.decode_latents(z))


def test_latent_normalisation_uses_per_channel_stats() -> None:
    shift, scale = [0.5, -1.0, 0.0, 2.0], [2.0, 0.25, 1.0, 4.0]
    vae = _vae(latent_shift=shift, latent_scale=scale)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        raw = vae.encode(x).mean
        norm = vae.encode_latents(x)
        expected = (raw - torch.tensor(shift).view(1, 4, 1, 1)) * torch.tensor(scale).view(1, 4, 1, 1)
        assert torch.allclose(norm, expected, atol=1e-6)
        assert torch.allclose(vae.decode_latents(norm), vae.decode(raw), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    grads, calls = [], []
    for flag in (False, True):
        vae = _vae("tiny").train()
        vae.set_gradient_checkpointing(flag)
        count, forward = [0], vae.decoder.mid.res1.forward

        def counted(h: torch.Tensor, forward=forward, count=count) -> torch.Tensor:
            count[0] += 1
            return forward(h)

        vae.decoder.mid.res1.forward = counted
        out = vae(x, sample_posterior=False)
        ((out.reconstruction - x).abs().mean() + 1e-3 * out.posterior.kl().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in vae.parameters()]))
        calls.append(count[0])
    assert calls == [1, 2]  # with checkpointing the block runs again in backward
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_gradient_checkpointing_is_not_saved_and_old_configs_still_load(tmp_path) -> None:
    vae = ImageVAE(image_vae_config("test"), gradient_checkpointing=True)
    assert vae.gradient_checkpointing
    save_model(vae, tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    assert "gradient_checkpointing" not in meta["config"]
    # an export from before it became a run-time setting: the key is dropped, the default applies
    meta["config"]["gradient_checkpointing"] = True
    (tmp_path / "new" / "config.json").write_text(json.dumps(meta))
    loaded = load_model(tmp_path / "new")
    assert loaded.config == vae.config and not loaded.gradient_checkpointing
    with pytest.raises(ConfigError, match="gradient_checkpointing"):  # not a config field any more
        from_dict(ImageVAEConfig, {"gradient_checkpointing": True})


def _structured_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients with a bright square: random, but learnable. (n, 3, size, size) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    a = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    b = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    img = 0.5 * (a * xx + b * yy)
    for i, (r, c) in enumerate(torch.randint(0, size - 5, (n, 2), generator=g).tolist()):
        img[i, :, r:r + 5, c:c + 5] = 0.9
    return img.clamp(-1, 1)


@pytest.mark.slow
def test_short_training_lowers_reconstruction_error() -> None:
    torch.manual_seed(0)
    vae = ImageVAE(image_vae_config("tiny", block_out_channels=(16, 32, 32), latent_channels=4)).train()
    x = _structured_images(8)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        out = vae(x, generator=gen)
        l1 = (out.reconstruction - x).abs().mean()
        loss = l1 + 1e-6 * out.posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(l1.item())
    print(f"L1 reconstruction: first {losses[0]:.3f}, last {losses[-1]:.3f}")
    vae.eval()
    with torch.no_grad():
        final = (vae.decode(vae.encode(x).mean) - x).abs().mean().item()
    assert final < 0.5 * losses[0], (losses[0], final)
