"""Audio reading: crops, channels, resampling, padding with mask, silent / non-finite files."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from media_factory import ramp_audio, sine, write_audio, write_text_file, write_zero_byte

from mmflow.data import audio_reader
from mmflow.data.audio_reader import prepare_audio, read_audio
from mmflow.data.bad_items import BadMedia


def test_start_crop_is_exact_for_float_wav(tmp_path):
    data = ramp_audio(16000)
    clip = read_audio(write_audio(tmp_path / "a.wav", data, 8000, "FLOAT"), 8000, 1.5, crop="start")
    assert clip.audio.shape == (1, 12000) and clip.audio.dtype == torch.float32
    assert torch.equal(clip.audio[0], torch.from_numpy(data[:12000, 0]))
    assert clip.mask.dtype == torch.bool and bool(clip.mask.all())


def test_random_crop_is_a_window_chosen_by_the_generator(tmp_path):
    n = 4000
    data = ramp_audio(n)
    path = write_audio(tmp_path / "a.wav", data, 1000, "FLOAT")
    starts = set()
    for seed in range(10):
        clip = read_audio(path, 1000, 1.0, generator=torch.Generator().manual_seed(seed))
        again = read_audio(path, 1000, 1.0, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(clip.audio, again.audio)
        start = round(float(clip.audio[0, 0]) * (n + 1)) - 1  # the ramp tells where the window starts
        assert torch.equal(clip.audio[0], torch.from_numpy(data[start : start + 1000, 0]))
        assert (clip.start_seconds, clip.total_seconds) == (start / 1000, 4.0)  # stable-audio's timing
        starts.add(start)
    assert len(starts) > 5 and max(starts) <= n - 1000


def test_channels_mono_mix_stereo_keep_and_duplicate(tmp_path):
    st = ramp_audio(3000, channels=2)  # right channel = left / 2
    path = write_audio(tmp_path / "s.flac", st, 3000, "PCM_24")
    stereo = read_audio(path, 3000, 1.0, channels=2, crop="start").audio
    assert stereo.shape == (2, 3000)
    assert torch.allclose(stereo, torch.from_numpy(st.T), atol=2 ** -22)
    mono = read_audio(path, 3000, 1.0, channels=1, crop="start").audio
    assert torch.allclose(mono[0], stereo.mean(0), atol=1e-7)
    m = write_audio(tmp_path / "m.wav", ramp_audio(3000), 3000, "FLOAT")
    dup = read_audio(m, 3000, 1.0, channels=2, crop="start").audio
    assert torch.equal(dup[0], dup[1]) and torch.equal(dup[0], torch.from_numpy(ramp_audio(3000)[:, 0]))


def test_resampling_keeps_the_pitch_and_logs_once_per_rate(tmp_path, caplog):
    audio_reader._logged_rates.clear()
    path = write_audio(tmp_path / "a.wav", sine(1.0, 44100, freq=440.0), 44100, "PCM_16")
    with caplog.at_level(logging.INFO, logger="mmflow.data"):
        clip = read_audio(path, 16000, 1.0, crop="start")
        read_audio(path, 16000, 0.5, crop="start")
        read_audio(write_audio(tmp_path / "b.wav", sine(1.0, 22050), 22050), 16000, 0.5, crop="start")
    assert clip.audio.shape == (1, 16000) and bool(clip.mask.all())
    spectrum = torch.fft.rfft(clip.audio[0]).abs()
    assert int(spectrum.argmax()) == 440  # 1 s at 16 kHz: bin k is k Hz
    assert 0.45 < float(clip.audio.abs().max()) < 0.55  # amplitude kept
    msgs = [r.getMessage() for r in caplog.records if "resampling" in r.getMessage()]
    assert msgs == ["resampling audio from 44100 Hz to 16000 Hz (logged once per source rate)",
                    "resampling audio from 22050 Hz to 16000 Hz (logged once per source rate)"]


def test_short_audio_is_zero_padded_with_a_mask(tmp_path):
    data = ramp_audio(4000)
    clip = read_audio(write_audio(tmp_path / "a.wav", data, 8000, "FLOAT"), 8000, 1.0, crop="random",
                      generator=torch.Generator().manual_seed(0))
    assert clip.audio.shape == (1, 8000) and int(clip.mask.sum()) == 4000
    assert bool(clip.mask[:4000].all()) and not bool(clip.mask[4000:].any())
    assert torch.equal(clip.audio[0, :4000], torch.from_numpy(data[:, 0]))
    assert bool((clip.audio[0, 4000:] == 0).all())
    # the same after resampling: 0.5 s of real samples at any rate
    up = read_audio(write_audio(tmp_path / "b.wav", sine(0.5, 8000), 8000), 16000, 1.0, channels=2)
    assert up.audio.shape == (2, 16000) and int(up.mask.sum()) == 8000
    assert bool((up.audio[:, 8000:] == 0).all()) and float(up.audio[:, :8000].abs().max()) > 0.4


def test_bad_audio(tmp_path):
    silent = write_audio(tmp_path / "silent.wav", np.zeros((8000, 1), np.float32), 8000)
    with pytest.raises(BadMedia, match="^silent audio: peak 0 <= data.silence_threshold") as info:
        read_audio(silent, 8000, 0.5)
    assert info.value.permanent is False  # only this window is known to be silent
    hiss = write_audio(tmp_path / "quiet.wav", sine(0.5, 8000, amp=1e-5), 8000, "FLOAT")
    with pytest.raises(BadMedia, match="^silent audio"):
        read_audio(hiss, 8000, 0.5)
    assert read_audio(hiss, 8000, 0.5, silence_threshold=1e-6).audio.abs().max() > 0
    for bad_value in (np.nan, np.inf):
        data = sine(0.5, 8000)
        data[100] = bad_value
        path = write_audio(tmp_path / "nan.wav", data, 8000, "FLOAT")
        with pytest.raises(BadMedia, match="^non-finite audio: NaN or Inf") as info:
            read_audio(path, 8000, 0.5, crop="start")
        assert info.value.permanent is True
    with pytest.raises(BadMedia, match="^empty file"):
        read_audio(write_zero_byte(tmp_path / "z.wav"), 8000, 0.5)
    with pytest.raises(BadMedia, match="^decode error: soundfile"):
        read_audio(write_text_file(tmp_path / "t.wav"), 8000, 0.5)
    with pytest.raises(BadMedia, match="^missing file"):
        read_audio(tmp_path / "gone.flac", 8000, 0.5)


def test_whole_file_check_finds_what_the_window_misses(tmp_path):
    data = sine(1.0, 8000)
    data[7000] = np.nan
    path = write_audio(tmp_path / "late_nan.wav", data, 8000, "FLOAT")
    assert bool(read_audio(path, 8000, 0.5, crop="start").mask.all())  # the window is clean
    with pytest.raises(BadMedia, match="^non-finite audio: NaN or Inf samples in the file"):
        read_audio(path, 8000, 0.5, crop="start", whole_file=True)
    quiet = np.zeros((8000, 1), np.float32)
    quiet[:100] = 0.3  # a click, then silence: the start window is sound, the file is not silent
    qpath = write_audio(tmp_path / "click.wav", quiet, 8000, "FLOAT")
    assert read_audio(qpath, 8000, 0.5, crop="start", whole_file=True).audio.abs().max() > 0.2


def test_prepare_audio_mixes_and_duplicates_channels() -> None:
    stereo = torch.stack([torch.ones(100), -torch.ones(100) * 0.5])  # (2, N)
    torch.testing.assert_close(prepare_audio(stereo, 8000, 8000, 1), torch.full((1, 100), 0.25))
    mono = torch.randn(3, 1, 50)  # batched (B, 1, N)
    dup = prepare_audio(mono, 8000, 8000, 2)
    assert dup.shape == (3, 2, 50) and torch.equal(dup[:, 0], dup[:, 1]) and torch.equal(dup[:, :1], mono)
    with pytest.raises(ValueError, match="cannot turn 6-channel audio into stereo"):
        prepare_audio(torch.zeros(6, 10), 8000, 8000, 2)
    with pytest.raises(ValueError, match="1 \\(mono\\) or 2 \\(stereo\\)"):
        prepare_audio(torch.zeros(1, 10), 8000, 8000, 3)


def test_prepare_audio_resamples_keeps_pitch_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    sr, target = 16000, 8000
    t = torch.arange(sr) / sr  # one second
    wave = torch.sin(2 * math.pi * 440.0 * t)[None]  # (1, N)
    with caplog.at_level(logging.INFO, logger="mmflow.data"):
        out = prepare_audio(wave, sr, target, 1)
    assert out.shape == (1, target)
    assert any("resampling audio from 16000 Hz to 8000 Hz" in r.getMessage() for r in caplog.records)
    peak_hz = torch.fft.rfft(out[0]).abs().argmax().item() * target / out.shape[1]
    assert abs(peak_hz - 440.0) <= 1.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmflow.data"):
        assert torch.equal(prepare_audio(wave, sr, sr, 1), wave)  # nothing to do: unchanged, silent
    assert not caplog.records
