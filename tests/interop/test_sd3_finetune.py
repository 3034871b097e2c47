"""Fine-tuning from a converted SD3 pipeline (mmflow/interop/diffusers_sd3_pipeline.py + train.init_from +
train.lora): the converted recipe's model section describes the converted weights exactly, a few LoRA steps
train from them through the command line (cached latents and text, bf16 frozen base), the adapter samples
with --lora, and a recipe whose model differs from the weights is refused before any work, naming the field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import write_captioned_squares  # noqa: E402

from mmflow.cli import main  # noqa: E402
from mmflow.models.lora import ADAPTER_WEIGHTS  # noqa: E402
from mmflow.model_io import read_safetensors  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402
from tests.interop.sd3_tiny_pipeline import sd3_pipeline  # noqa: E402

CAPTIONS = ["a red cat", "a blue cat"]


def _finetune_recipe(tmp_path: Path, converted: Path) -> Path:
    """A LoRA recipe on 4 captioned 16 px images whose model section is the converted pipeline.json's."""
    images = write_captioned_squares(tmp_path / "images", 16, CAPTIONS)
    model = json.loads((converted / "pipeline.json").read_text())["recipe"]["model"]
    for e in model["text"]["encoders"]:  # the converted copies, as recipes/finetune_sd35_lora.yaml names them
        folder = converted / "models" / "text_encoders" / e["name"]
        e.update(path=str(folder), tokenizer=str(folder / "tokenizer"))
    recipe = {
        "name": "sd3_lora", "task": "text_to_media", "seed": 0,
        "data": {"path": str(images), "modality": "image", "size": 16, "use_cache": "require",
                 "cache": str(tmp_path / "cache"), "eval_prompts": CAPTIONS[:1], "eval_per_prompt": 1},
        "model": {**model, "tokenizer": str(converted / "models" / "tokenizer")},
        "train": {"init_from": str(converted), "lora": {"rank": 2, "targets": ["attention"]},
                  "mixed_precision": "bf16", "frozen_dtype": "bfloat16", "batch_size": 2, "max_steps": 2,
                  "lr": 0.05, "log_every": 1, "checkpoint_every": 2, "trackers": [], "ema_decay": None,
                  "device": "cpu"},
        "sample": {"solver": "euler", "grid": "sd3", "shift": 3.0, "steps": 2, "num_samples": 1, "guidance": 2.0},
    }
    path = tmp_path / "sd3_lora.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """(converted pipeline folder, fine-tune recipe)."""
    converted = tmp_path / "converted"
    assert main(["convert", "diffusers-sd3-pipeline", str(sd3_pipeline(tmp_path)), str(converted)]) == 0
    return converted, _finetune_recipe(tmp_path, converted)


def test_lora_trains_from_a_converted_pipeline_and_samples(setup, tmp_path: Path) -> None:
    converted, recipe = setup
    run = tmp_path / "run"
    assert main(["prepare", str(recipe)]) == 0
    assert main(["train", str(recipe), "--run-dir", str(run)]) == 0
    adapter = read_safetensors(run / "model" / "models" / "velocity" / ADAPTER_WEIGHTS)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # it trained

    out = tmp_path / "samples"
    assert main(["sample", str(converted), "--lora", str(run), "--prompt", CAPTIONS[0], "--out", str(out),
                 "steps=2"]) == 0
    assert (out / "sample_0000.png").is_file()
    base = FlowPipeline.from_pretrained(converted)
    plain = base(CAPTIONS[0], seed=3, steps=2).media
    base.load_lora(run, 1.0)
    assert not torch.allclose(base(CAPTIONS[0], seed=3, steps=2).media, plain)


@pytest.mark.parametrize("overrides, field", [
    (["model.mmdit.pos_embed=rope", "model.mmdit.pos_embed_max_size=null", "model.mmdit.pos_embed_base_size=null"],
     "pos_embed: 'rope' here, 'sincos' there"),
    (["model.mmdit.time_scale=1000"], "time_scale: 1000.0 here, -1000.0 there"),  # same weights, other model
])
def test_a_recipe_that_differs_from_the_weights_is_refused_before_work(setup, tmp_path, capsys, overrides,
                                                                       field) -> None:
    _, recipe = setup
    run = tmp_path / "refused"
    assert main(["train", str(recipe), *overrides, "train.lora=null", "train.frozen_dtype=float32",
                 "data.use_cache=off", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "train.init_from" in err and field in err, err
    assert not (run / "checkpoints").exists() and not (tmp_path / "cache").exists()
    rc = main(["train", str(recipe), *overrides, "--dry-run"])  # the dry run says so too
    assert rc == 2 and field in capsys.readouterr().err
