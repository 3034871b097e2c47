"""recipes/tones_t2m.yaml shortened, through the CLI: generate a few tones clips (half of them cut short), train
a few steps through a fresh audio tokenizer with the shipped one's latents (hop 320, 16 channels; untrained and
smaller, so the test stays fast) with timing conditioning (checkpoint, validation with the tones
probe), resume, sample a prompt at the window's length, shorter and longer, and read the WAVs it wrote with
soundfile. Only the network, the data and the step counts are shrunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import torch

from mmflow.cli import main
from mmflow.model_io import save_model
from mmflow.tokenizers import AudioVAE
from mmflow.tokenizers.audio_vae import audio_vae_config
from mmflow.data.tones import TonesConfig, write_tones_folder
from tests.conftest import REPO
from tests.recipes.shortened import shortened

RECIPE = REPO / "recipes" / "tones_t2m.yaml"


def _overrides(data: Path, test: Path, steps: int) -> list[str]:
    return [*shortened(data, test, steps), f"model.tokenizer={data.parent / 'tokenizer'}"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tones")
    torch.manual_seed(0)
    save_model(AudioVAE(audio_vae_config("tiny", sample_rate=16000)), root / "tokenizer")  # hop 320, 16 channels
    write_tones_folder(root / "train", TonesConfig(n_train=8, short_fraction=0.5), split="train")
    write_tones_folder(root / "test", TonesConfig(test_tempi_per_key=1), split="test")
    return root / "train", root / "test"


def test_tones_t2m_recipe_trains_resumes_and_samples_wavs_of_any_length(clips: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data, test = clips
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)
    assert main(["prepare", str(RECIPE), *_overrides(data, test, steps=2)]) == 0
    assert main(["train", str(RECIPE), "--run-dir", str(run), *_overrides(data, test, steps=2)]) == 0
    out = capsys.readouterr().out
    assert (run / "checkpoints" / "step_00000002").is_dir()
    assert "prompt check 'tones': 4 samples of the prompts of" in out, out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    for attribute in ("pitch", "mode", "pattern", "tempo", "timbre", "all"):
        assert 0.0 <= float(table[attribute]) <= 1.0, (attribute, out)

    assert main(["train", str(RECIPE), "--run-dir", str(run), "--resume", *_overrides(data, test, steps=4)]) == 0
    capsys.readouterr()
    assert "(step 2)" in (run / "train.log").read_text()

    prompt = "a saw arpeggio in A minor at 120 bpm"
    for name, extra, seconds in (("plain", [], 4.0), ("short", ["--seconds", "2.5"], 2.5),
                                 ("long", ["--seconds", "6"], 6.0)):
        out_dir = tmp_path / name
        assert main(["sample", str(run), "--prompt", prompt, "--out", str(out_dir), "num_samples=1", "steps=2",
                     *extra]) == 0
        wave, rate = sf.read(str(out_dir / "sample_0000.wav"))
        assert rate == 16000 and wave.ndim == 1 and len(wave) == round(seconds * 16000)
        assert np.abs(wave).max() > 0
        assert json.loads((out_dir / "sample_0000.wav.json").read_text())["prompt"] == prompt  # provenance sidecar
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", prompt, "--seconds", "9", "--out", str(tmp_path / "too_long")]) != 0
    assert "up to 8 s" in capsys.readouterr().err
