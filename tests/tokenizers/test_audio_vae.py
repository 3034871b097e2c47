"""Tests for mmflow/tokenizers/audio_vae.py and audio_blocks.py: waveform VAE, Snake, ISTFT head
(prepare_audio: tests/data)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.model_io import load_model, save_model
from mmflow.tokenizers.audio_blocks import (
    ConvNeXt1d, ISTFTHead, MagnitudeHead, Snake1d, log_magnitude_loss, stft_features,
)
from mmflow.tokenizers.audio_vae import (
    AUDIO_VAE_PRESETS,
    AudioVAE,
    AudioVAEConfig,
    audio_vae_config,
)
from mmflow.tokenizers.losses import adaptive_adv_weight, stft_distance

TINY = audio_vae_config("test", sample_rate=8000)  # hop 8
ISTFT = replace(TINY, strides=(2, 4, 5), block_channels=(8, 16, 16), head="istft", istft_hop=8)  # hop 40, 5x up
SPECTRAL = replace(ISTFT, istft_hop=None, encoder_input="stft", frame_blocks=2, frame_channels=32)  # hop 40
MAGNITUDE = replace(SPECTRAL, head="magnitude")


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
@pytest.mark.parametrize(("cfg", "steps"), [(TINY, 50), (ISTFT, 100), (SPECTRAL, 200), (MAGNITUDE, 100)],
                         ids=["wave", "istft", "spectral", "magnitude"])
def test_short_training_reduces_reconstruction_error(short_fit, cfg: AudioVAEConfig, steps: int) -> None:
    """A pure waveform-L1 fit; the ISTFT head learns it (the phases) about half as fast as the wave head."""
    vae, x = _vae(cfg), _sines()
    losses, rec = short_fit(vae, x, steps)
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


@pytest.mark.parametrize("istft_hop", [None, 8, 2])  # 0, 1 and 2 upsampling blocks before the head (hop 40)
@pytest.mark.parametrize("n", [1, 40, 803, 2000])
def test_istft_head_keeps_the_latent_contract(istft_hop: int | None, n: int) -> None:
    cfg = replace(ISTFT, istft_hop=istft_hop)
    vae, wave_vae, x = _vae(cfg), _vae(replace(cfg, head="wave", istft_hop=None)), _sines(b=2, n=n)
    frames = math.ceil(n / 40)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == wave_vae.encode(x).mean.shape == (2, 8, frames)
        full = vae.decode(post.mode())
        assert full.shape == (2, 1, frames * 40) and torch.isfinite(full).all()
        assert full.abs().max() < 0.01  # starts near silence (INIT_LOG_MAGNITUDE)
        assert vae.decode(post.mode(), like_shape=x.shape).shape == x.shape
        assert vae(x).reconstruction.shape == x.shape
    assert len(vae.decoder.blocks) == {None: 0, 8: 1, 2: 2}[istft_hop]


def test_istft_head_synthesises_the_spectrum_it_predicts() -> None:
    """Every frame: bin 8 of a 64-point FFT (1/8 cycle per sample), phase 0, the rest silent. The phase advances
    8 * 16 / 64 = 2 whole cycles per hop, so the frames agree and the inverse STFT is a steady cosine, of
    amplitude 2 * |X| / n_fft * sum(w) / sum(w^2) = 2 * 24 / 64 * 2 / 1.5 = 1 (periodic Hann, hop n_fft / 4)."""
    head, t = ISTFTHead(1, 1, 16), 20
    with torch.no_grad():
        head.conv.weight.zero_()
        bias = torch.zeros(2, head.bins)  # (log magnitude, phase) per bin
        bias[0] = -30.0
        bias[0, 8] = math.log(24.0)
        head.conv.bias.copy_(bias.flatten())
        wave = head(torch.zeros(1, 1, t))[0, 0]
    assert wave.shape == (t * 16,)
    inner = torch.arange(64, t * 16 - 64)  # away from the ends, where fewer frames overlap
    torch.testing.assert_close(wave[inner], torch.cos(2 * math.pi * inner / 8), atol=1e-4, rtol=0)


def test_istft_last_layer_is_the_head_and_gets_gradients() -> None:
    vae, x = _vae(ISTFT).train(), _sines(n=400)
    assert vae.last_layer_weight() is vae.decoder.head.conv.weight
    out = vae(x)
    rec, adv = (out.reconstruction - x).abs().mean(), -out.reconstruction.mean()
    weight = adaptive_adv_weight(rec, adv, vae.last_layer_weight())
    assert torch.isfinite(weight) and weight > 0
    wave = _vae()
    assert wave.last_layer_weight() is wave.decoder.conv_out.weight


def test_istft_config_errors_name_the_key(tmp_path: Path) -> None:
    base = to_dict(ISTFT)
    with pytest.raises(ConfigError, match=r"istft_hop: 4 must be the hop \(40\) divided by .* one of \[40, 8, 2, 1\]"):
        from_dict(AudioVAEConfig, {**base, "istft_hop": 4})
    with pytest.raises(ConfigError, match="istft_hop: 80 must be the hop"):
        from_dict(AudioVAEConfig, {**base, "istft_hop": 80})
    with pytest.raises(ConfigError, match="istft_hop: is only used with head 'istft'"):
        from_dict(AudioVAEConfig, {**base, "head": "wave"})
    with pytest.raises(ConfigError, match="head"):
        from_dict(AudioVAEConfig, {**base, "head": "vocos"})
    assert AudioVAEConfig().head == "wave"  # existing checkpoints keep their decoder
    vae = _vae(ISTFT)
    save_model(vae, tmp_path / "istft")
    loaded = load_model(tmp_path / "istft").eval()
    assert loaded.config == vae.config
    with torch.no_grad():
        z = vae.encode(_sines(n=400)).mean
        torch.testing.assert_close(loaded.decode(z), vae.decode(z))



def test_stft_features_align_one_frame_per_latent_frame() -> None:
    """Frame i is centred on the middle of samples [i * hop, (i + 1) * hop): a click there lights frame i most;
    a steady sine peaks at its bin (n_fft = 4 * hop = 160 at 8 kHz: 50 Hz per bin)."""
    hop, n = 40, 10
    click = torch.zeros(1, 1, n * hop)
    click[0, 0, 3 * hop + hop // 2] = 1.0
    feats = stft_features(click, hop)
    bins = 2 * hop + 1
    assert feats.shape == (1, 3 * bins, n)
    assert int(feats[0, :bins].mean(0).argmax()) == 3  # the log magnitude is loudest around the click
    sine = torch.sin(2 * math.pi * 1000 * torch.arange(n * hop) / 8000)[None, None]
    assert int(stft_features(sine, hop)[0, :bins, 5].argmax()) == 1000 // 50
    stereo = stft_features(torch.cat([sine, click], dim=1), hop)
    torch.testing.assert_close(stereo[:, 3 * bins:], feats)  # channel c's features follow channel c - 1's


@pytest.mark.parametrize("n", [1, 40, 803])
def test_spectral_encoder_and_convnext_decoder_keep_the_latent_contract(n: int) -> None:
    vae, x = _vae(SPECTRAL), _sines(b=2, n=n)
    assert isinstance(vae.decoder.frames.blocks[0], ConvNeXt1d) and not hasattr(vae.encoder, "blocks")
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == (2, 8, math.ceil(n / 40))
        assert post.std.max() < 0.2  # init_posterior_std holds for the spectral encoder too
        assert vae.decode(post.mode(), like_shape=x.shape).shape == x.shape
    assert vae.last_layer_weight() is vae.decoder.head.conv.weight
    wave_encoder = _vae(replace(SPECTRAL, encoder_input="wave"))  # the waveform encoder, ConvNeXt decoder
    assert wave_encoder.encode(x).mean.shape == post.mean.shape


def test_spectral_config_errors_name_the_key(tmp_path: Path) -> None:
    base = to_dict(SPECTRAL)
    with pytest.raises(ConfigError, match="frame_blocks: the 'stft' encoder needs at least one ConvNeXt block"):
        from_dict(AudioVAEConfig, {**base, "frame_blocks": 0})
    with pytest.raises(ConfigError, match="frame_blocks: ConvNeXt frame blocks feed a spectral head at the hop"):
        from_dict(AudioVAEConfig, {**base, "istft_hop": 8})
    with pytest.raises(ConfigError, match="frame_blocks: ConvNeXt frame blocks"):
        from_dict(AudioVAEConfig, {**base, "head": "wave", "encoder_input": "wave"})
    with pytest.raises(ConfigError, match="encoder_input"):
        from_dict(AudioVAEConfig, {**base, "encoder_input": "mel"})
    vae = _vae(SPECTRAL)
    save_model(vae, tmp_path / "spectral")
    loaded = load_model(tmp_path / "spectral").eval()
    assert loaded.config == vae.config
    with torch.no_grad():
        x = _sines(n=400)
        torch.testing.assert_close(loaded.decode(loaded.encode(x).mean), vae.decode(vae.encode(x).mean))


@pytest.mark.parametrize("integrate", [False, True])
def test_istft_head_integrated_phase_keeps_a_steady_tone_between_frame_rate_multiples(integrate: bool) -> None:
    """Bin 9 of a 64-point FFT, hop 16: the tone advances 2 pi 9 * 16 / 64 = 4.5 pi per frame, not a whole number
    of cycles. The same absolute phase in every frame (what a convolution over a steady input predicts) makes
    the overlapping frames cancel; the integrated phase, starting from the bin's own advance, keeps a steady
    cosine of amplitude 1 (as in the test above)."""
    head, t = ISTFTHead(1, 1, 16, integrate_phase=integrate), 20
    with torch.no_grad():
        head.conv.weight.zero_()
        bias = head.conv.bias.view(head.parts, head.bins)
        bias[0] = -30.0
        bias[0, 9] = math.log(24.0)
        bias[1] = 0.0
        if integrate:
            assert bias[2, 9] == pytest.approx(math.pi / 2)  # 4.5 pi, wrapped
        wave = head(torch.zeros(1, 1, t))[0, 0]
    inner = wave[64: t * 16 - 64]  # away from the ends, where fewer frames overlap
    if integrate:
        assert inner.abs().max() == pytest.approx(1.0, abs=1e-3) and inner.std() == pytest.approx(2 ** -0.5, abs=1e-2)
    else:
        assert inner.abs().max() < 0.51  # the frames interfere: half the amplitude is lost


@pytest.mark.parametrize("subframes", [1, 2])
def test_magnitude_head_takes_the_reference_phase_in_training_and_griffin_lim_at_decode(subframes: int) -> None:
    """A steady 1 kHz sine at 8 kHz (hop 40, n_fft 160: bin 20): with the sine's own log magnitude in every
    frame, the head gives the sine back from its phase, and Griffin-Lim finds a tone of the same pitch and level."""
    hop, t = 40, 40
    n = torch.arange(t * hop)
    sine = 0.5 * torch.sin(2 * math.pi * 1000 * n / 8000)[None, None]  # (1, 1, 1600)
    head = MagnitudeHead(1, 1, hop, subframes=subframes)
    mag = torch.stft(sine[0], 160, hop, window=torch.hann_window(160), return_complex=True).abs()[0, :, t // 2]
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.copy_(mag.clamp_min(1e-6).log().repeat(subframes))
        inner = slice(4 * hop, (t - 4) * hop)  # away from the ends, where fewer frames overlap
        trained = head.synthesise(head.magnitude(torch.zeros(1, 1, t)), head.spectrum(sine, t).angle())
        torch.testing.assert_close(trained[..., inner], sine[..., inner], atol=1e-3, rtol=0)
        decoded = head(torch.zeros(1, 1, t))[0, 0, inner]
    spectrum = torch.fft.rfft(decoded).abs()
    assert int(spectrum.argmax()) * 8000 / len(decoded) == pytest.approx(1000, abs=8000 / len(decoded))
    assert decoded.std() == pytest.approx(0.5 / math.sqrt(2), rel=0.05)


@pytest.mark.parametrize("subframes", [1, 2, 4])
def test_magnitude_head_frames_sit_on_the_encoders_frames(subframes: int) -> None:
    """Frame j of the head is centred at (j - 1/2) * step: with one frame per latent frame, frame i + 1 is
    centred where the encoder's frame i is, so a click there lights both; with more, latent frame i's
    `subframes` frames split its span. The conv's outputs land on those frames in order (latent-major), the
    reconstruction keeps the click where it was, and the ends reach one frame beyond the clip."""
    hop, t = 40, 10
    head = MagnitudeHead(1, 1, hop, subframes=subframes)
    step = hop // subframes
    for at in (3 * hop + step // 2, 6 * hop + hop - step // 2):  # the centre of latent frame 3's first subframe...
        click = torch.zeros(1, 1, t * hop)
        click[0, 0, at] = 1.0
        spec = head.spectrum(click, t)  # (1, bins, t * subframes + 2)
        assert spec.shape == (1, 2 * hop + 1, t * subframes + 2)
        assert int(spec.abs().pow(2).sum(1).argmax()) == at // step + 1
        if subframes == 1:
            assert int(stft_features(click, hop)[0, : 2 * hop + 1].mean(0).argmax()) == at // hop
        back = head.synthesise(spec.abs(), spec.angle())
        torch.testing.assert_close(back, click, atol=1e-5, rtol=0)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.copy_(torch.arange(subframes).repeat_interleave(2 * hop + 1).float().log1p())
        frames = head.magnitude(torch.zeros(1, 1, t))[0, 0]  # bin 0 of every frame: k + 1 in subframe k
    want = torch.arange(subframes).float().add(1).repeat(t + 2)[subframes - 1: (t + 1) * subframes + 1]
    torch.testing.assert_close(frames, want)
    with pytest.raises(ValueError, match="hop 40 must split into 3 frames"):
        MagnitudeHead(1, 1, hop, subframes=3)


def test_magnitude_head_predicting_frequencies_decodes_an_off_bin_tone_in_tune() -> None:
    """A 1010 Hz tone at 8 kHz lies a fifth of a bin from bin 20 (n_fft 160: 50 Hz per bin). With its true
    magnitudes and frequency offsets (the loss is ~0 there, not at the bins' centres), the phase vocoder alone
    (no Griffin-Lim) gives back a steady 1010 Hz sinusoid: nearly all of the decoded energy projects on it."""
    hop, t, sr, freq = 40, 40, 8000, 1010.0
    n = torch.arange(t * hop)
    tone = 0.5 * torch.sin(2 * math.pi * freq * n / sr)[None, None]  # (1, 1, 1600)
    head = MagnitudeHead(1, 1, hop, griffin_lim_iters=0, subframes=2, frequency=True)
    spec = head.spectrum(tone, t)  # (1, 81, 82)
    middle = spec[0, :, t]  # a frame inside the clip
    advance = torch.angle(spec[0, :, t] * spec[0, :, t - 1].conj())
    offset = (torch.remainder(advance - head.unit * torch.arange(81) + math.pi, 2 * math.pi) - math.pi) / head.unit
    assert float(offset[20]) == pytest.approx(0.2, abs=1e-3)  # the tone's frequency, seen from bin 20
    with torch.no_grad():
        head.conv.weight.zero_()
        bias = head.conv.bias.view(2, 2, 81)  # (subframe, [log magnitude, offset], bins)
        bias[:, 0] = middle.abs().clamp_min(1e-6).log()
        bias[:, 1] = torch.atanh((offset / (math.pi / head.unit)).clamp(-0.999, 0.999))
        mag, predicted = head.predict(torch.zeros(1, 1, t))
        assert float(head.frequency_loss(predicted, spec)) < 0.05 < float(head.frequency_loss(0 * predicted, spec))
        decoded = head(torch.zeros(1, 1, t))[0, 0, 6 * hop: (t - 6) * hop]
    k = n[6 * hop: (t - 6) * hop].float()
    basis = torch.stack([torch.sin(2 * math.pi * freq * k / sr), torch.cos(2 * math.pi * freq * k / sr)])  # (2, L)
    coef = torch.linalg.lstsq(basis.T, decoded[:, None]).solution
    residual = decoded - (basis.T @ coef)[:, 0]
    assert float(residual.pow(2).sum() / decoded.pow(2).sum()) < 0.01
    assert float(coef.norm()) == pytest.approx(0.5, rel=0.1)


def test_magnitude_vae_trains_with_the_input_phase_and_a_magnitude_loss_and_decodes_alone() -> None:
    cfg = replace(MAGNITUDE, griffin_lim_iters=4)
    vae, x = _vae(cfg), _sines(b=2, n=803)
    with torch.no_grad():
        post = vae.encode(x)
        out, decoded = vae.training_output(post.mean, x, post), vae.decode(post.mean, like_shape=x.shape)
        head = vae.decoder.head
        mag, target = head.magnitude(vae.decoder.frames(post.mean)), head.spectrum(x, post.mean.shape[-1]).abs()
    assert out.reconstruction.shape == decoded.shape == x.shape and not torch.allclose(out.reconstruction, decoded)
    assert mag.shape == target.shape == (2, 81, math.ceil(803 / 40) + 2)
    torch.testing.assert_close(out.decoder_loss, log_magnitude_loss(mag, target))
    assert log_magnitude_loss(target, target) == 0 and out.decoder_loss > 1.0  # the untrained head is near silence
    assert isinstance(head, MagnitudeHead) and vae.last_layer_weight() is head.conv.weight
    assert _vae(SPECTRAL).training_output(post.mean, x, post).decoder_loss is None
    base = to_dict(cfg)
    with pytest.raises(ConfigError, match="head: 'magnitude' needs the ConvNeXt frame decoder"):
        from_dict(AudioVAEConfig, {**base, "frame_blocks": 0, "encoder_input": "wave"})
    with pytest.raises(ConfigError, match="istft_hop: is only used with head 'istft'"):
        from_dict(AudioVAEConfig, {**base, "istft_hop": 8})
    with pytest.raises(ConfigError, match="istft_phase: is only used with head 'istft'"):
        from_dict(AudioVAEConfig, {**base, "istft_phase": "integrated"})
    with pytest.raises(ConfigError, match="magnitude_subframes: must split the hop"):
        from_dict(AudioVAEConfig, {**base, "magnitude_subframes": 3})
    with pytest.raises(ConfigError, match="magnitude_subframes: is only used with head 'magnitude'"):
        from_dict(AudioVAEConfig, {**to_dict(SPECTRAL), "magnitude_subframes": 2})
    with pytest.raises(ConfigError, match="magnitude_frequency: is only used with head 'magnitude'"):
        from_dict(AudioVAEConfig, {**to_dict(SPECTRAL), "magnitude_frequency": True})
    with pytest.raises(ConfigError, match="griffin_lim_iters: 0 leaves no phase"):
        from_dict(AudioVAEConfig, {**base, "griffin_lim_iters": 0})
    with pytest.raises(ConfigError, match="magnitude_hidden: is only used with head 'magnitude'"):
        from_dict(AudioVAEConfig, {**to_dict(SPECTRAL), "magnitude_hidden": 32})
    deep = _vae(replace(cfg, magnitude_hidden=48, magnitude_subframes=2))
    with torch.no_grad():
        out = deep.training_output(post.mean, x, post)
    readout = deep.decoder.head.conv
    assert readout.in_channels == 48 and readout.out_channels == 2 * 81 and deep.last_layer_weight() is readout.weight
    assert out.reconstruction.shape == x.shape and deep.decode(post.mean, like_shape=x.shape).shape == x.shape
    tuned = _vae(replace(cfg, magnitude_frequency=True, griffin_lim_iters=0))
    with torch.no_grad():
        out = tuned.training_output(post.mean, x, post)
        mag, offset = tuned.decoder.head.predict(tuned.decoder.frames(post.mean))
        spec = tuned.decoder.head.spectrum(x, post.mean.shape[-1])
    torch.testing.assert_close(out.decoder_loss, log_magnitude_loss(mag, spec.abs())
                               + tuned.decoder.head.frequency_loss(offset, spec))
    assert tuned.decode(post.mean, like_shape=x.shape).shape == x.shape
