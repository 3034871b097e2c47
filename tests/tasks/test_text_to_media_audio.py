"""text_to_media on AUDIO latents with timing conditioning (stable-audio's seconds_start / seconds_total).

Files shorter than the window train padded with silence and told their length, so one model samples any
length up to twice its window: the window (or more latents, through RoPE) is sampled with seconds_total set
and cropped to the length asked; beyond the range the request is refused with the range.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import sine, write_audio  # noqa: E402

from mmflow.config import ConfigError  # noqa: E402
from mmflow.model_io import save_model  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402
from mmflow.sampling.layout import WrongOutputRequest  # noqa: E402
from mmflow.tasks import recipe_from_dict  # noqa: E402
from mmflow.tasks.media_cache import prepare_cache  # noqa: E402
from mmflow.tasks.text_to_media import TextToMediaTask  # noqa: E402
from mmflow.tokenizers import AudioVAE  # noqa: E402
from mmflow.tokenizers.audio_vae import audio_vae_config  # noqa: E402
from mmflow.train.trainer import Trainer, make_accelerator  # noqa: E402

RATE = 8000
LENGTHS = [0.25, 0.5, 0.4, 0.75]  # seconds of each file; the window is 0.5 s
PROMPTS = ["a low hum", "a high beep"]


def _raw(root: Path, **data) -> dict:
    torch.manual_seed(0)
    vae = save_model(AudioVAE(audio_vae_config("test", sample_rate=RATE)), root / "vae")  # hop 8
    media = root / "media"
    media.mkdir()
    for i, seconds in enumerate(LENGTHS):
        write_audio(media / f"{i}.wav", sine(seconds, RATE, freq=220.0 * (i + 1)), RATE)
    (media / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.wav", "text": PROMPTS[i % 2]}) + "\n"
                                                  for i in range(len(LENGTHS))))
    return {"name": "t2a", "task": "text_to_media", "seed": 0, "run_dir": str(root / "run"),
            "data": {"path": str(media), "modality": "audio", "sample_rate": RATE, "seconds": 0.5, "crop": "start",
                     "eval_per_prompt": 1, **data},
            "model": {"tokenizer": str(vae), "timing": True, "text": {"encoders": [{"path": "minilm", "max_length": 8}]},
                      "mmdit": {"preset": "test", "patch_size": [25]}},  # 500 latent frames -> 20 tokens
            "flow": {"cfg_dropout": 0.2},
            "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2,
                      "trackers": [], "ema_decay": None},
            "sample": {"steps": 2, "num_samples": 1, "guidance": 2.0, "solver": "euler"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("timing")
    recipe = recipe_from_dict(_raw(root, use_cache="require", cache=str(root / "cache")), source="test")
    task = TextToMediaTask(recipe)
    prepare_cache(task, make_accelerator(recipe.train, root / "run"))
    batch = task.collate([task.build_dataset()[k] for k in range(4)])
    # each window starts at 0 s; seconds_total is its file's length, padding beyond it is silence
    assert torch.allclose(batch["timing"], torch.tensor([[0.0, s] for s in LENGTHS]), atol=1e-4)
    Trainer(recipe, task, root / "run", accelerator=make_accelerator(recipe.train, root / "run")).train()
    return root / "run"


def _told_seconds(pipe: FlowPipeline) -> list[float]:
    """Every seconds_total the velocity model is called with during the next sampling (a forward pre-hook)."""
    told: list[float] = []
    pipe.velocity.register_forward_pre_hook(lambda m, args: told.extend(args[2]["seconds_total"].tolist()))
    return told


def test_a_timing_model_samples_any_length_up_to_twice_its_window_and_is_told_it(run, caplog) -> None:
    pipe = FlowPipeline.from_pretrained(run)
    assert pipe.velocity.config.scalar_conditions == ("seconds_start", "seconds_total")
    told = _told_seconds(pipe)
    for seconds in (0.3, 0.5, 0.75, 1.0):
        told.clear()
        out = pipe(PROMPTS[:1], seed=0, seconds=seconds).media
        assert out.shape == (1, 1, round(seconds * RATE)) and torch.isfinite(out).all()
        assert told and all(abs(s - seconds) < 1e-6 for s in told)  # both CFG branches (prompt and null)
    with caplog.at_level(logging.WARNING, logger="mmflow.tasks"):
        assert pipe(PROMPTS[:1], seed=0, seconds=0.30001).media.shape[-1] == 2400
    assert "rounded to 2400 samples" in caplog.text
    with pytest.raises(WrongOutputRequest, match=r"seconds=1\.5: .* up to 1 s \(its 0\.5 s window"):
        pipe(PROMPTS[:1], seconds=1.5)


def test_validation_and_the_default_sample_use_the_training_window(run) -> None:
    pipe = FlowPipeline.from_pretrained(run)
    told = _told_seconds(pipe)
    assert pipe(PROMPTS[:1], seed=0).media.shape == (1, 1, 4000) and set(told) == {0.5}


def test_timing_is_for_audio_recipes(tmp_path) -> None:
    raw = _raw(tmp_path)
    raw["data"] = {"path": raw["data"]["path"], "modality": "image", "size": 16}
    raw["model"]["mmdit"]["patch_size"] = [2, 2]
    with pytest.raises(ConfigError, match="model.timing: timing conditioning is for audio recipes, this one is image"):
        recipe_from_dict(raw, source="test")
