"""Tests for mmflow/tokenizers/losses.py: reconstruction, KL, spectral losses, PatchGAN, hinge, VAELoss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mmflow.config import ConfigError, from_dict
from mmflow.model_io import load_model, save_model
from mmflow.tokenizers.base import DiagonalGaussian
from mmflow.tokenizers.losses import (
    MelLoss,
    MultiResolutionSTFTLoss,
    PatchDiscriminator,
    PatchDiscriminatorConfig,
    VAELoss,
    VAELossConfig,
    adaptive_adv_weight,
    chroma_l1,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    reconstruction_l1,
    stft_distance,
)

SR = 16000


def _music(seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    """A real-ish (1, 1, N) signal: four partials with slow amplitude envelopes over a faint noise floor."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SR * seconds)) / SR
    x = torch.zeros_like(t)
    for amp, freq, phase in [(0.3, 220.0, 0.0), (0.2, 440.0, 1.0), (0.1, 1250.0, 2.0), (0.05, 3100.0, 0.5)]:
        x += amp * (1 + 0.3 * torch.sin(2 * math.pi * 3 * t + phase)) * torch.sin(2 * math.pi * freq * t + phase)
    return (x + 1e-3 * torch.randn(t.shape, generator=g))[None, None]


def test_reconstruction_and_spectral_losses_zero_iff_identical() -> None:
    x = _music()
    y = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    stft, mel = MultiResolutionSTFTLoss((512, 256, 128)), MelLoss(SR, n_fft=512, hop_length=128, n_mels=40)
    for loss in (reconstruction_l1, stft, mel):
        assert loss(x, x).item() == 0.0
        assert loss(y, x).item() > 0.0
    torch.testing.assert_close(reconstruction_l1(torch.ones(2, 3), torch.zeros(2, 3)), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"reconstruction \(1, 1, 10\) and target \(1, 1, 12\)"):
        stft(torch.zeros(1, 1, 10), torch.zeros(1, 1, 12))


def test_stft_loss_spectral_convergence_by_hand() -> None:
    """A pure gain g leaves log magnitude off by |log g| and spectral convergence at |1 - g|."""
    x = _music()
    loss = MultiResolutionSTFTLoss((256,), eps=1e-12)
    torch.testing.assert_close(loss(0.5 * x, x), torch.tensor(0.5 + math.log(2.0)), rtol=1e-4, atol=1e-4)


def test_chroma_l1_sees_colour_not_brightness() -> None:
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(chroma_l1(x + 0.3, x)) < 1e-6  # a grey offset changes brightness only
    swapped = x[:, [2, 1, 0]]  # red and blue exchanged: pure colour change
    cb_cr = torch.tensor([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    by_hand = torch.einsum("kc,bchw->bkhw", cb_cr, swapped - x).abs().mean()
    assert torch.allclose(chroma_l1(swapped, x), by_hand) and float(by_hand) > 0.05
    cfg = VAELossConfig(kl_weight=0.0, chroma_weight=2.0)  # the generator loss adds it, weighted
    post = DiagonalGaussian(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2))
    out = VAELoss(cfg).generator_loss(x, swapped, post, step=0)
    assert torch.allclose(out.loss, reconstruction_l1(swapped, x) + 2.0 * by_hand) and "chroma" in out.logs
    with pytest.raises(ValueError, match="RGB"):
        chroma_l1(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))


def test_kl_loss_matches_closed_form() -> None:
    zero = DiagonalGaussian(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    assert kl_loss(zero).item() == 0.0
    mean = torch.full((2, 3, 4), 0.5)
    logvar = torch.full((2, 3, 4), math.log(2.0))
    per_elem = 0.5 * (0.25 + 2.0 - 1.0 - math.log(2.0))
    torch.testing.assert_close(kl_loss(DiagonalGaussian(mean, logvar), weight=0.1),
                               torch.tensor(0.1 * 12 * per_elem))


def test_stft_distance_ranks_reconstruction_below_silence_below_noise() -> None:
    x = _music()
    g = torch.Generator().manual_seed(2)
    recon = 0.97 * x + 0.01 * torch.randn(x.shape, generator=g)  # slight gain error and a noise floor
    noise = x.pow(2).mean().sqrt() * torch.randn(x.shape, generator=g)  # same loudness as the signal
    d = {name: stft_distance(y, x).item() for name, y in
         [("same", x), ("recon", recon), ("silence", torch.zeros_like(x)), ("noise", noise)]}
    assert d["same"] == 0.0
    assert d["recon"] < d["silence"] < d["noise"], d
    assert stft_distance(torch.cat([x, recon]), torch.cat([x, x])).shape == (2,)


def test_hinge_losses_on_hand_computed_cases() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2.5] -> mean 7/6
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 7 / 6)))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(0.5 / 3))  # -mean(fake) = -(-0.5 / 3)
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met


@pytest.mark.parametrize("dims,shape,out", [(2, (2, 3, 32, 32), (2, 1, 6, 6)),
                                            (3, (2, 3, 5, 32, 32), (2, 1, 5, 6, 6))])
def test_discriminator_output_shapes(dims: int, shape: tuple[int, ...], out: tuple[int, ...]) -> None:
    disc = PatchDiscriminator(PatchDiscriminatorConfig(in_channels=3, base_channels=8, n_layers=2, dims=dims))
    assert disc(torch.randn(shape)).shape == out
    with pytest.raises(ValueError, match="needs H, W >= 12"):
        disc(torch.randn(*shape[:-2], 8, 8))
    with pytest.raises(ValueError, match="expects"):
        disc(torch.randn(*shape[:1], 4, *shape[2:]))


def test_default_discriminator_is_the_70px_patchgan_and_round_trips(tmp_path: Path) -> None:
    cfg = PatchDiscriminatorConfig(base_channels=8)  # n_layers=3, as pix2pix
    assert PatchDiscriminator(cfg)(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    torch.manual_seed(0)
    disc = PatchDiscriminator(PatchDiscriminatorConfig(base_channels=8, n_layers=2, dims=3))
    save_model(disc, tmp_path / "disc")
    loaded = load_model(tmp_path / "disc")
    x = torch.randn(1, 3, 3, 16, 16)
    torch.testing.assert_close(loaded(x), disc(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="dims"):
        from_dict(PatchDiscriminatorConfig, {"dims": 4})


def test_adaptive_weight_is_the_gradient_norm_ratio() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    rec = (3.0 * w).sum()  # gradient (3, 3): norm 3*sqrt(2)
    g = (w ** 2).sum()  # gradient 2w = (2, 4): norm sqrt(20)
    expected = 3 * math.sqrt(2) / (math.sqrt(20) + 1e-4)
    torch.testing.assert_close(adaptive_adv_weight(rec, g, w), torch.tensor(expected))
    assert adaptive_adv_weight(rec, g, w, max_weight=0.5).item() == 0.5


def _tiny_setup() -> tuple[nn.Module, PatchDiscriminator, torch.Tensor]:
    torch.manual_seed(0)
    decoder = nn.Conv2d(3, 3, 3, padding=1)  # stands in for a VAE decoder's last layer
    disc = PatchDiscriminator(PatchDiscriminatorConfig(base_channels=4, n_layers=1))
    return decoder, disc, torch.rand(2, 3, 8, 8) * 2 - 1


def test_vae_loss_switches_adversarial_terms_on_at_start_step() -> None:
    decoder, disc, x = _tiny_setup()
    post = DiagonalGaussian(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2))
    loss = VAELoss(VAELossConfig(kl_weight=0.0, adv_weight=0.5, adv_start_step=10))
    x_hat = decoder(x)
    before = loss.generator_loss(x, x_hat, post, step=9, discriminator=disc, last_layer=decoder.weight)
    torch.testing.assert_close(before.loss, reconstruction_l1(x_hat, x))
    assert "g_loss" not in before.logs
    after = loss.generator_loss(x, x_hat, post, step=10, discriminator=disc, last_layer=decoder.weight)
    weight = adaptive_adv_weight(reconstruction_l1(x_hat, x), hinge_g_loss(disc(x_hat)), decoder.weight)
    torch.testing.assert_close(after.loss, reconstruction_l1(x_hat, x) + 0.5 * weight * hinge_g_loss(disc(x_hat)))
    assert after.logs["adv_weight"] == pytest.approx(weight.item())
    fixed = VAELoss(VAELossConfig(kl_weight=0.0, adv_weight=0.5, adaptive_adv_weight=False))
    out = fixed.generator_loss(x, x_hat, post, step=0, discriminator=disc)
    torch.testing.assert_close(out.loss, reconstruction_l1(x_hat, x) + 0.5 * hinge_g_loss(disc(x_hat)))
    with pytest.raises(ValueError, match="needs the discriminator"):
        fixed.generator_loss(x, x_hat, post, step=0)


def test_discriminator_loss_is_zero_but_connected_before_start() -> None:
    decoder, disc, x = _tiny_setup()
    loss = VAELoss(VAELossConfig(adv_weight=1.0, adv_start_step=5))
    x_hat = decoder(x)
    early = loss.discriminator_loss(x, x_hat, disc, step=4)
    assert early.loss.item() == 0.0 and early.logs["d_loss"] > 0
    early.loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() == 0 for p in disc.parameters())
    assert decoder.weight.grad is None  # the reconstruction is detached for the discriminator
    late = loss.discriminator_loss(x, x_hat, disc, step=5)
    torch.testing.assert_close(late.loss, hinge_d_loss(disc(x), disc(x_hat)))


def test_vae_loss_audio_terms() -> None:
    x = _music(0.2)
    y = 0.9 * x
    post = DiagonalGaussian(torch.zeros(1, 2, 10), torch.zeros(1, 2, 10))
    cfg = VAELossConfig(stft_weight=1.0, mel_weight=2.0, stft_fft_sizes=(256, 128), mel_n_fft=256,
                        mel_hop_length=64, mel_bins=20)
    out = VAELoss(cfg, sample_rate=SR).generator_loss(x, y, post, step=0)
    stft = MultiResolutionSTFTLoss((256, 128))(y, x)
    mel = MelLoss(SR, 256, 64, 20)(y, x)
    torch.testing.assert_close(out.loss, reconstruction_l1(y, x) + stft + 2.0 * mel)
    assert set(out.logs) == {"l1", "stft", "mel", "kl"}
    with pytest.raises(ValueError, match="needs the audio sample_rate"):
        VAELoss(cfg)


@pytest.mark.parametrize("modality", ["image", "video"])
def test_gan_step_with_the_vae_and_its_discriminator(modality: str) -> None:
    from mmflow.tokenizers.image_vae import ImageVAE, image_vae_config
    from mmflow.tokenizers.video_vae import VideoVAE, video_vae_config

    torch.manual_seed(0)
    image = modality == "image"
    vae = ImageVAE(image_vae_config("test")) if image else VideoVAE(video_vae_config("test"))
    disc = PatchDiscriminator(PatchDiscriminatorConfig(base_channels=4, n_layers=1, dims=2 if image else 3))
    loss = VAELoss(VAELossConfig(adv_weight=0.5))
    x = torch.rand(1, 3, 16, 16) * 2 - 1 if image else torch.rand(1, 3, 5, 16, 16) * 2 - 1
    out = vae(x)
    x_hat = out.reconstruction
    assert vae.last_layer_weight() is vae.decoder.state_dict(keep_vars=True)[
        "conv_out.weight" if image else "conv_out.conv.weight"]
    g = loss.generator_loss(x, x_hat, out.posterior, step=0, discriminator=disc,
                            last_layer=vae.last_layer_weight())
    g.loss.backward()
    assert g.logs["adv_weight"] > 0 and vae.last_layer_weight().grad is not None
    d = loss.discriminator_loss(x, x_hat, disc, step=0)
    assert d.loss.item() > 0 and torch.isfinite(d.loss)
