"""Every shipped text-to-media model samples from a fresh clone through the CLI, as the README shows: one file per
sample in its modality's format (PNG, MP4, or WAV read back with soundfile at the model's rate and length) and
the preview samples.png. Two solver steps: what is checked is the path, not the quality (BENCHMARKS.md has that)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from PIL import Image

from mmflow.cli import main
from mmflow.data.video_reader import video_frames
from tests.recipes.test_finetune_shipped import CHECKPOINTS, SHIPPED

PROMPTS = {"image": "a green star in the centre", "video": "a red star moving up on a white background",
           "audio": "a sine arpeggio in D major at 100 bpm"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_samples_its_media(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = json.loads((CHECKPOINTS / name / "pipeline.json").read_text())
    modality = pipeline["recipe"]["data"]["modality"]
    extra = ["--seconds", "2"] if modality == "audio" else []
    assert main(["sample", str(CHECKPOINTS / name), "--prompt", PROMPTS[modality], "--out", str(tmp_path), *extra,
                 "num_samples=2", "steps=2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and (tmp_path / "samples.png").is_file()
    suffix = {"image": "png", "video": "mp4", "audio": "wav"}[modality]
    files = sorted(tmp_path.glob(f"sample_*.{suffix}"))
    assert len(files) == 2
    data = pipeline["recipe"]["data"]
    if modality == "audio":
        wave, rate = sf.read(str(files[0]), always_2d=True)
        assert rate == data["sample_rate"] and wave.shape == (2 * rate, data["channels"])  # 2 s asked
        assert 0 < abs(wave).max() <= 1.0
    elif modality == "image":
        assert Image.open(files[0]).size == (64, 64)
    else:
        assert video_frames(files[0])[0] > 1  # frame count
