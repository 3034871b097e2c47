"""recipes/meanflow_shapes_t2v.yaml shortened, through the CLI: MeanFlow fine-tuning of the shipped shapes_t2v
(two steps, batch 4, a validation with the shapes_video probe), then a clip sampled in the recipe's 2 jumps, also
from a first frame, decoded with PyAV. Only step counts and data are shrunk: the model is the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from mmflow.cli import main
from mmflow.data.shapes_video import ShapesVideoConfig, write_clips_folder
from tests.conftest import REPO
from tests.recipes.shortened import mp4_frames

RECIPE = REPO / "recipes" / "meanflow_shapes_t2v.yaml"


def test_meanflow_video_recipe_fine_tunes_the_shipped_model_and_samples_in_two_jumps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data, test = tmp_path / "train", tmp_path / "test"
    write_clips_folder(data, ShapesVideoConfig(n=4), split="train")
    write_clips_folder(test, ShapesVideoConfig(), split="test")
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    overrides = [f"data.path={data}", f"data.cache={tmp_path / 'cache'}", f"eval.real={test}", "train.batch_size=4",
                 "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
                 "train.log_every=1", "data.eval_per_prompt=1", "eval.num_samples=2", "eval.batch_size=2"]
    assert main(["train", str(RECIPE), "--run-dir", str(run), *overrides]) == 0
    out = capsys.readouterr().out
    assert "prompt check 'shapes_video': 2 samples" in out, out
    assert "interval_embedder: new, starts at zero output" in (run / "train.log").read_text()
    with safe_open(str(run / "checkpoints" / "step_00000002" / "model.safetensors"), framework="pt") as f:
        last = [k for k in f.keys() if k.startswith("interval_embedder.mlp.2.weight")]
        assert last and f.get_tensor(last[0]).abs().max() > 0  # moved off its zero-output start

    prompt = "a red star moving up on a white background"
    first = tmp_path / "first.png"
    Image.fromarray(np.full((64, 64, 3), (250, 250, 250), np.uint8)).save(first)
    for name, extra in (("t2v", []), ("i2v", ["--image", str(first)])):
        out_dir = tmp_path / name
        assert main(["sample", str(run), "--prompt", prompt, "--out", str(out_dir), "num_samples=1", *extra]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["nfe"] == 2, info  # the recipe's 2 jumps
        pixels, fps, codec = mp4_frames(out_dir / "sample_0000.mp4")
        assert pixels.shape == (9, 64, 64, 3) and fps == 8.0 and codec == "h264"
        assert pixels.std() > 0
    assert abs(float(pixels[0].mean()) - 250) < 12  # i2v: frame 0 is the given image, through the tokenizer
