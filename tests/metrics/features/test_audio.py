from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mmflow.config import ConfigError
from mmflow.metrics.features import get_features
from mmflow.metrics.features.weights import MissingWeights


def tone(freq: float, seconds: float = 1.0, sr: int = 16000) -> Tensor:
    t = torch.arange(round(seconds * sr)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_mel_is_mean_and_std_of_log_mel_and_finds_the_tone_band():
    feats = get_features("mel")
    assert feats.dim == 128 and feats.sample_rate == 16000
    audio = torch.stack([tone(300), tone(3000)]).unsqueeze(1)  # (B, 1, N)
    v = feats(audio)
    assert v.shape == (2, 128)
    mel = feats.log_mel(audio)
    assert mel.shape == (2, 101, 64)  # 1 s / 10 ms hop, centred frames
    torch.testing.assert_close(v, torch.cat([mel.mean(1), mel.std(1, correction=0)], 1))
    assert v[0, :64].argmax() < v[1, :64].argmax()  # the higher tone peaks in a higher band
    # stereo is averaged to mono
    torch.testing.assert_close(feats(audio.expand(-1, 2, -1)), v)


def test_mel_deltas_and_short_clips():
    feats = get_features("mel", deltas=True)
    assert feats.dim == 256
    steady = feats(tone(440, 0.5).view(1, 1, -1))
    assert steady[0, 128:192].abs().max() < 0.5  # a steady tone barely changes between frames (away from the edges)
    short = feats(torch.zeros(2, 1, 100))  # shorter than one window: still finite
    assert short.shape == (2, 256) and torch.isfinite(short).all()


class Encoder(nn.Module):
    """Windows of 1000 samples -> (B, K, 3) embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(1000, 3)

    def forward(self, wave: Tensor) -> Tensor:
        k = wave.shape[1] // 1000
        return self.proj(wave[:, : k * 1000].reshape(wave.shape[0], k, 1000))


def test_audio_torchscript_averages_windows_and_needs_a_rate(tmp_path):
    torch.manual_seed(0)
    net = Encoder()
    torch.jit.script(net).save(str(tmp_path / "enc.pt"))
    feats = get_features("audio_torchscript", path=str(tmp_path / "enc.pt"), sample_rate=8000)
    assert feats.dim == 3 and feats.sample_rate == 8000
    audio = torch.rand(2, 2, 4000) - 0.5
    torch.testing.assert_close(feats(audio), net(audio.mean(1)).mean(1))
    with pytest.raises(ConfigError, match="needs sample_rate="):
        get_features("audio_torchscript", path=str(tmp_path / "enc.pt"))
    with pytest.raises(MissingWeights, match="audio encoder TorchScript"):
        get_features("audio_torchscript", sample_rate=16000)
