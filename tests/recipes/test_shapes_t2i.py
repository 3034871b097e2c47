"""recipes/shapes_t2i.yaml shortened, through the CLI as `make demo` runs it: generate the shapes set, train
a few steps through the shipped f4 tokenizer (checkpoint, validation with the shapes probe), resume,
sample a prompt, and decode the PNGs it wrote. Only the network and step counts are shrunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmflow.cli import main
from mmflow.data.shapes import ShapesConfig, write_shapes_folder
from tests.conftest import REPO
from tests.recipes.shortened import shortened

RECIPE = REPO / "recipes" / "shapes_t2i.yaml"


def _overrides(data: Path, test: Path, steps: int) -> list[str]:
    return [*shortened(data, test, steps, samples=6),
            'eval.prompts=["a small purple triangle in the top left", "a red star to the left of a green circle"]']


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_folder(root / "train", ShapesConfig(n_one=12, n_two=4), split="train")
    write_shapes_folder(root / "test", ShapesConfig(n_test_two=2), split="test")
    return root / "train", root / "test"


def test_shapes_recipe_trains_resumes_and_samples(shapes: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data, test = shapes
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped tokenizer as from the repository root, as make demo runs it
    assert main(["train", str(RECIPE), "--run-dir", str(run), *_overrides(data, test, steps=2)]) == 0
    out = capsys.readouterr().out
    assert (run / "checkpoints" / "step_00000002").is_dir()
    # the end-of-run table of the probe, one attribute a line, each a fraction
    assert "prompt check 'shapes': 6 samples of eval.prompts" in out, out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    for attribute in ("colour", "position", "shape", "all", "relation", "two_all"):
        assert 0.0 <= float(table[attribute]) <= 1.0, (attribute, out)
    assert (run / "model" / "models" / "tokenizer" / "config.json").is_file()  # bundled: the model travels alone

    assert main(["train", str(RECIPE), "--run-dir", str(run), "--resume", *_overrides(data, test, steps=4)]) == 0
    capsys.readouterr()
    log = (run / "train.log").read_text()
    assert "resumed from" in log and "(step 2)" in log, log[-2000:]
    assert (run / "checkpoints" / "step_00000004").is_dir()

    samples = tmp_path / "samples"
    prompt = "a green star in the centre"
    assert main(["sample", str(run), "--prompt", prompt, "--out", str(samples), "num_samples=2", "steps=2"]) == 0
    files = sorted(samples.glob("*.png"))
    media = [f for f in files if f.name != "samples.png"]
    assert len(media) == 2, files
    for f in media:
        with Image.open(f) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
            assert prompt in json.dumps(dict(img.text))
            pixels = np.asarray(img)
        assert pixels.std() > 0  # decoded through the tokenizer, not a constant fill
