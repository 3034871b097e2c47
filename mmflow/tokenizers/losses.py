"""Training losses of the tokenizers (VAEs) and the audio quality metric.

* reconstruction: `reconstruction_l1`; audio adds `MultiResolutionSTFTLoss` (spectral convergence +
  log magnitude, Parallel WaveGAN) and `MelLoss` (L1 of log mel, DAC / Stable Audio);
* `kl_loss`: KL(q(z|x) || N(0, I)), summed over latent elements, mean over the batch, weighted;
* adversarial: `PatchDiscriminator` (pix2pix NLayer PatchGAN; dims=2 for images, 3 for video),
  `hinge_d_loss` / `hinge_g_loss`, and the generator weight: fixed, or VQGAN's adaptive weight
  ||grad rec|| / ||grad adv|| at the decoder's last layer, switched on after `adv_start_step`;
* `VAELoss` combines them from a `VAELossConfig` for a task's generator and discriminator steps;
* `stft_distance`: the multi-scale STFT distance used to judge audio reconstructions (audiotools /
  DAC definition), comparable against silence and noise baselines.

Audio tensors are (B, C, N); images (B, C, H, W); videos (B, C, T, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.config import check
from mmflow.model_io import register_model
from mmflow.tokenizers.base import DiagonalGaussian

__all__ = [
    "MelLoss", "MultiResolutionSTFTLoss", "PatchDiscriminator", "PatchDiscriminatorConfig", "VAELoss",
    "VAELossConfig", "VAELossOutput", "adaptive_adv_weight", "hinge_d_loss", "hinge_g_loss", "kl_loss",
    "chroma_l1", "reconstruction_l1", "stft_distance",
]


def _field(default: Any, doc: str = "", **bounds: Any) -> Any:
    return field(default=default, metadata={"help": doc, **bounds})


def _same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: reconstruction {tuple(a.shape)} and target {tuple(b.shape)} differ in shape")


# --------------------------------------------------------------------------------------------------
# Reconstruction and KL
# --------------------------------------------------------------------------------------------------


def reconstruction_l1(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean absolute error over all elements (scalar)."""
    _same_shape(x_hat, x, "reconstruction_l1")
    return (x_hat - x).abs().mean()


# BT.601 chroma rows of RGB -> YCbCr (Cb, Cr): colour apart from brightness
_CHROMA = ((-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def chroma_l1(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean absolute error of the (Cb, Cr) chroma of RGB media (B, 3, ...) (scalar): the colour part of
    the error, which a plain L1 lets the few saturated pixels of mostly white images average away."""
    _same_shape(x_hat, x, "chroma_l1")
    if x.shape[1] != 3:
        raise ValueError(f"chroma_l1: needs RGB media (B, 3, ...), got {x.shape[1]} channels")
    m = torch.tensor(_CHROMA, dtype=x_hat.dtype, device=x_hat.device)  # (2, 3)
    return torch.einsum("kc,bc...->bk...", m, x_hat - x).abs().mean()


def kl_loss(posterior: DiagonalGaussian, weight: float = 1.0) -> Tensor:
    """weight * mean over the batch of KL(q(z|x) || N(0, I)) summed over latent elements (scalar)."""
    return weight * posterior.kl().mean()


def _stft_magnitude(x: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """(B, C, N) -> |STFT| (B*C, n_fft/2 + 1, frames), Hann window of length n_fft, centred frames."""
    x = x.reshape(-1, x.shape[-1]).float()  # stft wants (batch, N); float32 under mixed precision too
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    pad_mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"  # reflect needs N > n_fft / 2
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True, pad_mode=pad_mode,
                      return_complex=True)
    return spec.abs()


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over FFT sizes of spectral convergence + L1 of log magnitude (Yamamoto et al. 2020).

    spectral convergence = ||M_x - M_hat||_F / ||M_x||_F per signal; hop = n_fft * hop_fraction.
    """

    def __init__(self, fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128), hop_fraction: float = 0.25,
                 eps: float = 1e-7) -> None:
        super().__init__()
        if not fft_sizes or not 0 < hop_fraction <= 1:
            raise ValueError(f"MultiResolutionSTFTLoss: need fft sizes and 0 < hop_fraction <= 1, "
                             f"got {list(fft_sizes)}, {hop_fraction}")
        self.fft_sizes, self.hop_fraction, self.eps = tuple(fft_sizes), hop_fraction, eps

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """x_hat, x: (B, C, N) -> scalar."""
        _same_shape(x_hat, x, "MultiResolutionSTFTLoss")
        total = x.new_zeros((), dtype=torch.float32)
        for n_fft in self.fft_sizes:
            hop = max(1, int(n_fft * self.hop_fraction))
            m_hat, m = _stft_magnitude(x_hat, n_fft, hop), _stft_magnitude(x, n_fft, hop)  # (B*C, F, frames)
            sc = (m - m_hat).flatten(1).norm(dim=1) / (m.flatten(1).norm(dim=1) + self.eps)
            log_mag = (torch.log(m.clamp_min(self.eps)) - torch.log(m_hat.clamp_min(self.eps))).abs().mean()
            total = total + sc.mean() + log_mag
        return total / len(self.fft_sizes)


class MelLoss(nn.Module):
    """L1 distance of log mel spectrograms (torchaudio MelSpectrogram, magnitude, i.e. power 1)."""

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80,
                 eps: float = 1e-5) -> None:
        super().__init__()
        from torchaudio.transforms import (
            MelSpectrogram,  # deferred: only audio needs torchaudio
        )

        self.mel = MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=1.0)
        self.eps = eps

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """x_hat, x: (B, C, N) -> scalar."""
        _same_shape(x_hat, x, "MelLoss")
        mel_hat, mel = self.mel(x_hat.float()), self.mel(x.float())  # (B, C, n_mels, frames)
        return (torch.log(mel_hat + self.eps) - torch.log(mel + self.eps)).abs().mean()


@torch.no_grad()
def stft_distance(x_hat: Tensor, x: Tensor, fft_sizes: Sequence[int] = (2048, 512), eps: float = 1e-5) -> Tensor:
    """Multi-scale STFT distance per example (B,): lower is better (the audiotools metric DAC reports).

    Mean over FFT sizes (hop n_fft/4) of L1(log10 of clamp(M, eps)^2) + L1(M), with M = |STFT|.
    Compare a reconstruction's value with those of silence (zeros) and noise to read it.
    """
    _same_shape(x_hat, x, "stft_distance")
    b = x.shape[0]
    total = x.new_zeros(b, dtype=torch.float32)
    for n_fft in fft_sizes:
        m_hat = _stft_magnitude(x_hat, n_fft, n_fft // 4).reshape(b, -1)  # (B, C*F*frames)
        m = _stft_magnitude(x, n_fft, n_fft // 4).reshape(b, -1)
        log_l1 = (m_hat.clamp_min(eps).pow(2).log10() - m.clamp_min(eps).pow(2).log10()).abs().mean(1)
        total += log_l1 + (m_hat - m).abs().mean(1)
    return total / len(fft_sizes)


# --------------------------------------------------------------------------------------------------
# Adversarial
# --------------------------------------------------------------------------------------------------


@dataclass
class PatchDiscriminatorConfig:
    in_channels: int = _field(3, "channels of the judged media", min=1)
    base_channels: int = _field(64, "width of the first layer (doubles per layer, at most 8x)", min=1)
    n_layers: int = _field(3, "stride-2 layers; 3 = pix2pix's 70x70 PatchGAN", min=1)
    dims: Literal[2, 3] = _field(2, "2: images (B, C, H, W); 3: videos (B, C, T, H, W)")

    def validate(self) -> None:
        check(self.dims in (2, 3), "dims", f"must be 2 (images) or 3 (videos), got {self.dims}")


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


@register_model("patch_discriminator")
class PatchDiscriminator(nn.Module):
    """pix2pix NLayer PatchGAN: media -> a map of real/fake logits, one per patch.

    2-D: (B, C, H, W) -> (B, 1, H', W'). 3-D: (B, C, T, H, W) -> (B, 1, T, H', W'); kernels (3, 4, 4) and
    strides (1, 2, 2) there, so short clips keep their frames. H and W must be >= 3 * 2**n_layers.
    GroupNorm replaces pix2pix's BatchNorm: its statistics do not mix real and fake batches and need no
    synchronisation across processes.
    """

    config_class = PatchDiscriminatorConfig

    def __init__(self, config: PatchDiscriminatorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        conv = nn.Conv2d if config.dims == 2 else nn.Conv3d
        k, s2, s1 = (4, 2, 1) if config.dims == 2 else ((3, 4, 4), (1, 2, 2), 1)
        c = config.base_channels
        layers: list[nn.Module] = [conv(config.in_channels, c, k, s2, 1), nn.LeakyReLU(0.2)]
        for n in range(1, config.n_layers + 1):
            c_out = config.base_channels * min(2 ** n, 8)
            stride = s2 if n < config.n_layers else s1  # the last feature layer keeps the resolution
            layers += [conv(c, c_out, k, stride, 1, bias=False), nn.GroupNorm(_groups(c_out), c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(conv(c, 1, k, 1, 1))  # (B, 1, ...) logits per patch
        self.net = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DCGAN / pix2pix init: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            layout = "(B, C, H, W)" if cfg.dims == 2 else "(B, C, T, H, W)"
            raise ValueError(f"PatchDiscriminator expects {layout} with C={cfg.in_channels}, got {tuple(x.shape)}")
        need = 3 * 2 ** cfg.n_layers
        if min(x.shape[-2:]) < need:
            raise ValueError(f"PatchDiscriminator with n_layers={cfg.n_layers} needs H, W >= {need}, got {tuple(x.shape[-2:])}")
        return self.net(x)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) (scalar)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss -mean D(x_hat) (scalar)."""
    return -fake_logits.mean()


def adaptive_adv_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's balance ||d rec / d W|| / (||d g / d W|| + 1e-4) at the decoder's last weight W, detached.

    Scales the adversarial gradient to the size of the reconstruction gradient wherever training is.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# --------------------------------------------------------------------------------------------------
# Combined
# --------------------------------------------------------------------------------------------------


@dataclass
class VAELossConfig:
    l1_weight: float = _field(1.0, "L1 reconstruction", min=0)
    kl_weight: float = _field(1e-6, "KL to N(0, I) (summed over latent elements, mean over batch)", min=0)
    chroma_weight: float = _field(0.0, "images, videos: L1 of the YCbCr chroma (Cb, Cr), on top of the RGB L1", min=0)
    stft_weight: float = _field(0.0, "audio: multi-resolution STFT loss", min=0)
    mel_weight: float = _field(0.0, "audio: log-mel L1", min=0)
    stft_fft_sizes: tuple[int, ...] = _field((2048, 1024, 512, 256, 128), "FFT sizes of the STFT loss", min=2)
    mel_n_fft: int = _field(1024, "mel loss FFT size", min=2)
    mel_hop_length: int = _field(256, "mel loss hop", min=1)
    mel_bins: int = _field(80, "mel loss bands", min=1)
    adv_weight: float = _field(0.0, "generator adversarial loss; 0 = no discriminator", min=0)
    adv_start_step: int = _field(0, "the adversarial terms (G and D) are off before this step", min=0)
    adaptive_adv_weight: bool = _field(True, "multiply adv_weight by VQGAN's gradient-norm balance")
    adaptive_max_weight: float = _field(1e4, "clamp of the adaptive weight", min=0)


@dataclass
class VAELossOutput:
    """loss: scalar to minimise; logs: its parts as floats."""

    loss: Tensor
    logs: dict[str, float]


class VAELoss(nn.Module):
    """The generator (VAE) and discriminator losses of a tokenizer training step, from `VAELossConfig`.

    Audio terms need `sample_rate` (mel). `last_layer` for the adaptive weight: `vae.last_layer_weight()`.
    """

    def __init__(self, cfg: VAELossConfig, sample_rate: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.stft = MultiResolutionSTFTLoss(cfg.stft_fft_sizes) if cfg.stft_weight > 0 else None
        if cfg.mel_weight > 0 and sample_rate is None:
            raise ValueError("VAELoss: mel_weight > 0 needs the audio sample_rate")
        self.mel = (MelLoss(sample_rate, cfg.mel_n_fft, cfg.mel_hop_length, cfg.mel_bins)  # type: ignore[arg-type]
                    if cfg.mel_weight > 0 else None)

    def adversarial_active(self, step: int) -> bool:
        return self.cfg.adv_weight > 0 and step >= self.cfg.adv_start_step

    def generator_loss(self, x: Tensor, x_hat: Tensor, posterior: DiagonalGaussian, step: int,
                       discriminator: nn.Module | None = None, last_layer: Tensor | None = None) -> VAELossOutput:
        """Reconstruction + KL (+ weighted hinge G loss once the adversarial terms are active)."""
        cfg, logs = self.cfg, {}
        l1 = reconstruction_l1(x_hat, x)
        rec = cfg.l1_weight * l1
        logs["l1"] = l1.item()
        if cfg.chroma_weight > 0:
            chroma = chroma_l1(x_hat, x)
            rec = rec + cfg.chroma_weight * chroma
            logs["chroma"] = chroma.item()
        if self.stft is not None:
            stft = self.stft(x_hat, x)
            rec = rec + cfg.stft_weight * stft
            logs["stft"] = stft.item()
        if self.mel is not None:
            mel = self.mel(x_hat, x)
            rec = rec + cfg.mel_weight * mel
            logs["mel"] = mel.item()
        kl = kl_loss(posterior)
        logs["kl"] = kl.item()
        loss = rec + cfg.kl_weight * kl
        if self.adversarial_active(step):
            if discriminator is None:
                raise ValueError("VAELoss.generator_loss: adv_weight > 0 needs the discriminator")
            g = hinge_g_loss(discriminator(x_hat))
            weight = torch.ones((), device=x.device)
            if cfg.adaptive_adv_weight and torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError("VAELoss.generator_loss: adaptive_adv_weight needs last_layer "
                                     "(vae.last_layer_weight())")
                weight = adaptive_adv_weight(rec, g, last_layer, cfg.adaptive_max_weight)
            loss = loss + cfg.adv_weight * weight * g
            logs.update(g_loss=g.item(), adv_weight=float(weight))
        return VAELossOutput(loss, logs)

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, discriminator: nn.Module, step: int) -> VAELossOutput:
        """Hinge D loss on real x and detached x_hat; multiplied by 0 before adv_start_step (so every
        discriminator parameter still takes part in the graph, as DDP requires)."""
        real, fake = discriminator(x), discriminator(x_hat.detach())
        d = hinge_d_loss(real, fake)
        factor = 1.0 if self.adversarial_active(step) else 0.0
        logs = {"d_loss": d.item(), "logits_real": real.mean().item(), "logits_fake": fake.mean().item()}
        return VAELossOutput(factor * d, logs)
