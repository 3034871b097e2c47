"""recipes/meanflow_shapes_t2i.yaml shortened, through the CLI: MeanFlow fine-tuning of the shipped shapes_t2i
(two steps, batch 4, under the recipe's autocast: bf16 where native; a validation with the shapes probe), then
2-jump sampling of the run. Only step counts and data are shrunk: the model is the shipped one, as train.init_from names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from mmflow.cli import main
from tests.conftest import REPO
from tests.recipes.shortened import shipped_shapes_finetune

RECIPE = REPO / "recipes" / "meanflow_shapes_t2i.yaml"


def test_meanflow_recipe_fine_tunes_the_shipped_model_and_samples_in_two_jumps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, overrides = shipped_shapes_finetune(tmp_path)
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    assert main(["train", str(RECIPE), "--run-dir", str(run), *overrides]) == 0
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
