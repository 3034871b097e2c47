"""recipes/shapes_t2v.yaml shortened, through the CLI: generate a few moving-shapes clips, train a few steps
through the shipped video tokenizer (checkpoint, validation with the shapes_video probe), resume, sample a
prompt at the recipe's length, twice it and from a first frame, and decode the MP4s it wrote with PyAV.
Only the network, the data and the step counts are shrunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmflow.cli import main
from mmflow.data.shapes_video import ShapesVideoConfig, write_clips_folder
from tests.conftest import REPO
from tests.recipes.shortened import mp4_frames, shortened

RECIPE = REPO / "recipes" / "shapes_t2v.yaml"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes_video")
    write_clips_folder(root / "train", ShapesVideoConfig(n=8), split="train")
    write_clips_folder(root / "test", ShapesVideoConfig(), split="test")
    return root / "train", root / "test"


def test_shapes_t2v_recipe_trains_resumes_and_samples_mp4s(clips: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data, test = clips
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped tokenizer as from the repository root
    assert main(["train", str(RECIPE), "--run-dir", str(run), *shortened(data, test, steps=2)]) == 0
    out = capsys.readouterr().out
    assert (run / "checkpoints" / "step_00000002").is_dir()
    assert "prompt check 'shapes_video': 4 samples of the prompts of" in out, out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    for attribute in ("motion", "colour", "shape", "background", "all"):
        assert 0.0 <= float(table[attribute]) <= 1.0, (attribute, out)

    assert main(["train", str(RECIPE), "--run-dir", str(run), "--resume", *shortened(data, test, steps=4)]) == 0
    capsys.readouterr()
    assert "(step 2)" in (run / "train.log").read_text()

    prompt = "a red star moving up on a white background"
    for name, extra, frames in (("plain", [], 9), ("long", ["--num-frames", "17"], 17)):
        out_dir = tmp_path / name
        assert main(["sample", str(run), "--prompt", prompt, "--out", str(out_dir), "num_samples=1", "steps=2",
                     *extra]) == 0
        pixels, fps, codec = mp4_frames(out_dir / "sample_0000.mp4")
        assert pixels.shape == (frames, 64, 64, 3) and fps == 8.0 and codec == "h264"
        assert pixels.std() > 0
    capsys.readouterr()

    first = tmp_path / "first.png"
    Image.fromarray(np.full((64, 64, 3), (250, 250, 250), np.uint8)).save(first)
    out_dir = tmp_path / "i2v"
    assert main(["sample", str(run), "--prompt", prompt, "--image", str(first), "--out", str(out_dir),
                 "num_samples=1", "steps=2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 1
    pixels, _, _ = mp4_frames(out_dir / "sample_0000.mp4")
    assert abs(float(pixels[0].mean()) - 250) < 12  # frame 0 is the given (near-white) image, through the tokenizer
    assert main(["sample", str(run), "--prompt", prompt, "--num-frames", "10", "--out", str(tmp_path / "bad")]) == 2
    assert "the nearest: 9 or 13" in capsys.readouterr().err
