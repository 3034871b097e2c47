"""The LoRA command-line flow on a toy text-to-image recipe: train a base, train an adapter on it
(train.lora), sample with --lora (one or two adapters), merge it into a full model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from media_factory import write_captioned_squares  # noqa: E402

from mmflow.cli import main  # noqa: E402
from mmflow.models.lora import ADAPTER_WEIGHTS  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402

pytestmark = pytest.mark.slow  # three short trainings
CAPTIONS = ["a red square", "a blue square"]


def _recipe(tmp_path: Path) -> Path:
    folder = write_captioned_squares(tmp_path / "images", 8, CAPTIONS)
    recipe = {
        "name": "t2i", "task": "text_to_media", "seed": 0,
        "data": {"path": str(folder), "modality": "image", "size": 8, "eval_prompts": CAPTIONS[:1],
                 "eval_per_prompt": 1},
        "model": {"tokenizer": None, "text": {"encoders": [{"path": "minilm", "max_length": 8}]},
                  "mmdit": {"preset": "test", "patch_size": [2, 2]}},
        "train": {"batch_size": 2, "max_steps": 2, "lr": 1e-2, "log_every": 1, "checkpoint_every": 2,
                  "warmup_steps": 0, "trackers": [], "ema_decay": None, "device": "cpu"},
        "sample": {"steps": 2, "num_samples": 1, "guidance": 2.0},
    }
    path = tmp_path / "t2i.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def _media(path: Path, **kwargs) -> torch.Tensor:
    pipe = FlowPipeline.from_pretrained(path)
    for adapter, scale in kwargs.pop("loras", []):
        pipe.load_lora(adapter, scale)
    return pipe(CAPTIONS[0], seed=3, steps=2, guidance=2.0).media


def test_train_an_adapter_sample_with_it_and_merge_it(tmp_path, fresh_accelerate, capsys, monkeypatch):
    recipe = _recipe(tmp_path)
    monkeypatch.chdir(tmp_path)  # runs named from the working directory, as a user's clone does
    base, style, second = Path("base"), Path("style"), Path("second")
    assert main(["train", str(recipe), "--run-dir", str(base)]) == 0
    fresh_accelerate()
    lora = [f"train.init_from={base}", "train.lora.rank=2", "train.lr=0.05",
            "train.lora.targets=[attention,mlp,modulation]"]
    assert main(["train", str(recipe), *lora, "sample.guidance=3.0", "--run-dir", str(style)]) == 0
    fresh_accelerate()
    assert main(["train", str(recipe), *lora, "train.lora.targets=[blocks.0.x_qkv]", "seed=1",
                 "--run-dir", str(second)]) == 0
    assert (style / "model" / "models" / "velocity" / ADAPTER_WEIGHTS).is_file()
    # the LoRA run's export samples with its own recipe's settings (those its validation used), not the base's
    assert FlowPipeline.from_pretrained(style).sample_config().guidance == 3.0
    assert FlowPipeline.from_pretrained(base).sample_config().guidance == 2.0

    out = tmp_path / "samples"
    assert main(["sample", str(base), "--lora", f"{style}:0.5", "--lora", str(second), "--prompt", CAPTIONS[0],
                 "--out", str(out)]) == 0
    index = json.loads((out / "samples.json").read_text())
    assert len(index["samples"]) == 1 and (out / "sample_0000.png").is_file()

    merged = tmp_path / "merged"
    assert main(["lora", "merge", str(base), str(style), str(merged), "--scale", "0.5"]) == 0
    assert (merged / "models" / "velocity" / "model.safetensors").is_file()
    assert "base_model" not in json.loads((merged / "pipeline.json").read_text())
    half = _media(base, loras=[(style, 0.5)])
    torch.testing.assert_close(_media(merged), half, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_media(style), _media(base, loras=[(style, 1.0)]), atol=0, rtol=0)
    assert not torch.allclose(half, _media(base), atol=1e-3)

    # the clone moved: the export's absolute base path is gone, its place below the working directory is not
    info = json.loads((style / "model" / "pipeline.json").read_text())
    assert info["base_model"] == str((tmp_path / "base" / "model").resolve())
    assert info["base_model_from_cwd"] == str(Path("base") / "model")
    moved = tmp_path / "moved"
    moved.mkdir()
    for run in (base, style):
        run.rename(moved / run)
    monkeypatch.chdir(moved)
    torch.testing.assert_close(_media(style), _media(base, loras=[(style, 1.0)]), atol=0, rtol=0)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["sample", str(moved / style), "--prompt", CAPTIONS[0], "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "base model does not exist at" in err and str(Path("base") / "model") in err, err
    assert main(["lora", "merge", str(moved / base), str(tmp_path / "images"), str(tmp_path / "m2")]) == 2
    assert "is not a LoRA adapter" in capsys.readouterr().err
    assert main(["sample", str(moved / base), "--lora", f"{moved / style}:nan", "--out", str(out), "--overwrite"]) == 2
    assert "finite scale" in capsys.readouterr().err
