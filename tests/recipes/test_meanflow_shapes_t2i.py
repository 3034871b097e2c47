"""recipes/meanflow_shapes_t2i.yaml shortened, through the CLI: MeanFlow fine-tuning of the shipped shapes_t2i
(two steps, batch 4, under the recipe's bf16 autocast, a validation with the shapes probe), then 2-jump sampling
of the run. Only step counts and data are shrunk: the model is the shipped one, as train.init_from names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from mmflow.cli import main
from mmflow.data.shapes import ShapesConfig, write_shapes_folder
from tests.conftest import REPO

RECIPE = REPO / "recipes" / "meanflow_shapes_t2i.yaml"


def _overrides(data: Path, test: Path) -> list[str]:
    return [f"data.path={data}", f"data.cache={data.parent / 'cache'}", f"eval.real={test}", "train.batch_size=4",
            "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
            "train.log_every=1", "data.eval_per_prompt=1", "eval.num_samples=4", "eval.batch_size=4"]


def test_meanflow_recipe_fine_tunes_the_shipped_model_and_samples_in_two_jumps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data, test = tmp_path / "train", tmp_path / "test"
    write_shapes_folder(data, ShapesConfig(n_one=8, n_two=2), split="train")
    write_shapes_folder(test, ShapesConfig(n_test_two=2), split="test")
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    assert main(["train", str(RECIPE), "--run-dir", str(run), *_overrides(data, test)]) == 0
    out = capsys.readouterr().out
    assert "prompt check 'shapes': 4 samples" in out, out
    log = (run / "train.log").read_text()
    assert "interval_embedder: new, starts at zero output" in log, log[-3000:]
    # the checkpoint holds the new embedder, and it has moved off its zero-output start in two steps
    with safe_open(str(run / "checkpoints" / "step_00000002" / "model.safetensors"), framework="pt") as f:
        last = [k for k in f.keys() if k.startswith("interval_embedder.mlp.2.weight")]
        assert last, list(f.keys())[:8]
        assert f.get_tensor(last[0]).abs().max() > 0
    config = json.loads((run / "model" / "models" / "velocity" / "config.json").read_text())
    assert config["config"]["interval_embed"] is True

    samples = tmp_path / "samples"
    prompt = "a large blue square in the centre"
    assert main(["sample", str(run), "--prompt", prompt, "--out", str(samples), "num_samples=2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nfe"] == 2, info  # the recipe's 2 jumps (each one batched evaluation with CFG's null rows)
    media = sorted(p for p in samples.glob("sample_*.png"))
    assert len(media) == 2, media
    for f in media:
        with Image.open(f) as img:
            assert img.size == (64, 64) and prompt in json.dumps(dict(img.text))
            assert np.asarray(img).std() > 0
