"""The tokenizers shipped in checkpoints/tokenizers load as a user loads them and still reconstruct: every
folder there is a config.json + model.safetensors with finite latent statistics, and a round trip of
generated shapes images (large objects of all seven colours; still 9-frame clips of them for the video
tokenizer) keeps them (PSNR, hue error); the audio tokenizer's round trip of generated tones clips keeps
every note's pitch and stays far below silence's spectral distance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mmflow.builtin_models  # noqa: F401  (registers image_vae)
from mmflow.data.shapes import COLOURS, SHAPES, render
from mmflow.metrics.reconstruction import hue_error, psnr
from mmflow.model_io import load_model
from tests.conftest import REPO

ONSET_FRAMES = 2  # how far (tones-probe analysis frames) a reconstructed note's start may be from the original's
SHIPPED = sorted(p for p in (REPO / "checkpoints" / "tokenizers").iterdir() if p.is_dir())


def _images() -> torch.Tensor:
    """(7, 3, 64, 64) in [-1, 1]: one large object of each colour, shapes cycling, at different places."""
    objects = [[(SHAPES[i % len(SHAPES)], colour, 16.0 + 8 * (i % 5), 18.0 + 6 * (i % 4), 22.0)]
               for i, colour in enumerate(COLOURS)]
    pixels = np.stack([render(o) for o in objects])  # (7, 64, 64, 3) uint8
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_the_shipped_tokenizers_are_there() -> None:
    assert {p.name for p in SHIPPED} >= {"image_f4", "image_f8", "video", "audio"}


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_tokenizer_loads_and_reconstructs(folder: Path) -> None:
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors"}
    model = load_model(folder).eval()
    cfg = model.config
    assert len(cfg.latent_shift) == len(cfg.latent_scale) == cfg.latent_channels
    assert all(math.isfinite(v) for v in cfg.latent_shift) and all(0 < v < 100 for v in cfg.latent_scale)
    if model.model_type == "audio_vae":
        _check_audio(model)
        return
    x = _images()
    if model.model_type == "video_vae":  # clips of 9 frames of each still (the causal VAE: 1 + 4k frames)
        x = x[:, :, None].expand(-1, -1, 9, -1, -1).contiguous()
    with torch.no_grad():
        y = model.decode(model.encode(x).mean, like_shape=x.shape).clamp(-1, 1)
    assert y.shape == x.shape
    # flat shapes on white are easier than the real held-out items (f4 32 dB, f8 27 dB, video 25.9 dB there)
    assert float(psnr(y, x).mean()) > 25.0
    assert hue_error(x, y) < 5.0


def _check_audio(model: torch.nn.Module) -> None:
    from mmflow.data.tones import TonesConfig, make_tones, test_prompts
    from mmflow.metrics.probes.tones import analyse
    from mmflow.tokenizers.losses import stft_distance

    # one held-out clip of each timbre (the tones test split: every timbre, pattern and mode)
    prompts = test_prompts(TonesConfig(test_tempi_per_key=1))[::12]
    items = [it for it in make_tones(TonesConfig(test_tempi_per_key=1), "test") if it.prompt in prompts][:5]
    x = torch.from_numpy(np.stack([it.wave for it in items]))[:, None]  # (5, 1, 64000)
    with torch.no_grad():
        y = model.decode(model.encode(x).mean, like_shape=x.shape).clamp(-1, 1)
    assert y.shape == x.shape
    assert float(stft_distance(y, x).mean()) < 0.5 * float(stft_distance(torch.zeros_like(x), x).mean())
    for a, b in zip(x, y):
        want, got = analyse(a[0]).notes, analyse(b[0]).notes
        # each original note against the reconstructed note starting nearest it, within two 16 ms analysis
        # frames: the decoder places onsets on its own 10 ms frames, and 32 ms is below an audible asynchrony
        cents = [100 * (min(got, key=lambda n: abs(n[0] - s))[2] - m) for s, _, m in want
                 if got and min(abs(n[0] - s) for n in got) <= ONSET_FRAMES]
        assert len(cents) >= len(want) // 2 and float(np.median(np.abs(cents))) < 20.0  # every note in tune
