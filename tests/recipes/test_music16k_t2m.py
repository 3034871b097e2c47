"""recipes/music16k_t2m.yaml shortened, through the CLI: a few synthetic melodies written as a music16k-style
folder (audio/NNNN.wav + metadata.jsonl with its captions), a fresh audio tokenizer with the shipped one's latents
(hop 320, 16 channels; untrained and smaller, so the test stays fast), prepare, 2 training steps with a validation
scored by the music check and the Frechet distance in the music probe's features, then a sampled WAV read back
with soundfile. Only the network, the data and the step counts are shrunk; no shared data needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmflow.cli import main
from mmflow.metrics.probes.music import KEYS, NUM_SAMPLES, SAMPLE_RATE
from mmflow.model_io import save_model
from mmflow.tokenizers import AudioVAE
from mmflow.tokenizers.audio_vae import audio_vae_config
from tests.conftest import REPO
from tests.metrics.probes.probe_media import melody, music_caption
from tests.recipes.shortened import shortened

RECIPE = REPO / "recipes" / "music16k_t2m.yaml"
# (instrument, tonic pitch class, mode, bpm, chords): what each clip's caption says
CLIPS = [("violin", 2, "major", 120, False), ("cello", 9, "minor", 96, False), ("marimba", 1, "major", 100, True),
         ("flute", 6, "minor", 132, False), ("piano", 7, "major", 84, True), ("organ", 4, "minor", 110, False),
         ("trumpet", 10, "major", 90, False), ("choir", 0, "minor", 126, True)]


def _overrides(data: Path, steps: int) -> list[str]:
    # the recipe evaluates on its own train folder; 4 samples give a rank-deficient (biased) fd: allowed here
    return [*shortened(data, data, steps), f"model.tokenizer={data.parent / 'tokenizer'}",
            "eval.allow_rank_deficient=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("music16k")
    torch.manual_seed(0)
    save_model(AudioVAE(audio_vae_config("tiny", sample_rate=16000)), root / "tokenizer")  # hop 320, 16 channels
    folder = root / "train"
    (folder / "audio").mkdir(parents=True)
    lines = []
    for i, (instrument, tonic, mode, bpm, chords) in enumerate(CLIPS):
        name = f"audio/{i:04d}.wav"
        sf.write(str(folder / name), melody(tonic, mode, bpm)[0].numpy(), SAMPLE_RATE, subtype="PCM_16")
        lines.append(json.dumps({"file_name": name, "text": music_caption(instrument, KEYS[tonic], mode, bpm, chords),
                                 "instrument": instrument, "key": KEYS[tonic], "mode": mode, "bpm": bpm,
                                 "chords": chords, "sample_rate": SAMPLE_RATE, "num_samples": NUM_SAMPLES,
                                 "seconds": 4.0}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_music16k_t2m_recipe_trains_validates_with_the_music_check_and_samples_a_wav(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)
    assert main(["prepare", str(RECIPE), *_overrides(data, steps=2)]) == 0
    assert main(["train", str(RECIPE), "--run-dir", str(run), *_overrides(data, steps=2)]) == 0
    out = capsys.readouterr().out
    assert (run / "checkpoints" / "step_00000002").is_dir()
    assert f"prompt check 'music': 4 samples of the prompts of {data}" in out, out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    for attribute in ("key", "mode", "instrument", "tempo", "tempo_octave", "all"):
        assert 0.0 <= float(table[attribute]) <= 1.0, (attribute, out)
    quality = next(line for line in out.splitlines() if line.startswith("quality: "))
    assert float(quality.split("fd ")[1].split(",")[0]) >= 0.0, quality  # in the music probe's features

    prompt = "a melancholic cello melody in A minor at 96 bpm"
    out_dir = tmp_path / "sample"
    assert main(["sample", str(run), "--prompt", prompt, "--out", str(out_dir), "num_samples=1", "steps=2"]) == 0
    wave, rate = sf.read(str(out_dir / "sample_0000.wav"))
    assert rate == SAMPLE_RATE and wave.ndim == 1 and len(wave) == NUM_SAMPLES
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    assert json.loads((out_dir / "sample_0000.wav.json").read_text())["prompt"] == prompt
