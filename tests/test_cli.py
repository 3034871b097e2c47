"""Tests for mmflow/cli.py, in-process via `mmflow.cli.main([...])`. No training is run here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmflow.cli import main
from mmflow.tasks import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "recipes" / "toy2d.yaml")


@pytest.mark.parametrize("command,expected", [
    ("train", ["overrides", "--resume", "--print-config", "--overfit-batch", "train.lr=3e-4"]),
    ("sample", ["overrides", "--label", "--no-ema", "steps=16"]),
])
def test_help_exits_zero(capsys: pytest.CaptureFixture[str], command: str, expected: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"mmflow {command}" in out
    for s in expected:
        assert s in out, f"{s!r} missing from `mmflow {command} --help`"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_print_config_is_resolved_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", TOY, "train.lr=3e-4", "data.dataset=spirals", "sample.steps=4", "--print-config"])
    assert rc == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["train"]["lr"] == 3e-4
    assert resolved["data"]["dataset"] == "spirals"
    assert resolved["sample"]["steps"] == 4
    assert resolved["train"]["batch_size"] == 1024  # from the file
    assert resolved["flow"]["time_sampler"]["name"] == "uniform"  # defaults are filled in
    recipe_from_dict(resolved, source="printed")  # and it is a valid recipe again


def test_overfit_batch_zero_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:  # a usage error, before the recipe is read
        main(["train", TOY, "--overfit-batch", "0", "--print-config"])
    assert info.value.code == 2
    assert "--overfit-batch" in capsys.readouterr().err


def test_bad_recipe_file_returns_2_naming_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(Path(TOY).read_text())
    data["train"]["lrr"] = 1e-3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path), "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train.lrr" in captured.err and str(path) in captured.err
    assert "mmflow train: error:" in captured.err


def test_bad_override_returns_2_naming_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", TOY, "train.mixed_precision=fp8"]) == 2
    err = capsys.readouterr().err
    assert "train.mixed_precision" in err and "'bf16'" in err


def test_missing_recipe_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["train", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_existing_checkpoints_need_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    (run / "checkpoints" / "step_10" / "MANIFEST.json").write_text('{"files": {}}')  # complete: a save that finished
    assert main(["train", TOY, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and str(run) in err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # nothing was written


def test_sample_missing_path_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "no_such_run"
    assert main(["sample", str(path)]) == 2
    captured = capsys.readouterr()
    assert str(path) in captured.err and "mmflow sample: error:" in captured.err
    assert not path.exists()


def test_sample_folder_without_model_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty_run"
    path.mkdir()
    assert main(["sample", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    assert sorted(path.iterdir()) == []


def test_overrides_may_follow_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", TOY, "--print-config", "train.lr=0.005", "sample.steps=3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.005 and cfg["sample"]["steps"] == 3


def test_a_stray_argument_after_options_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", TOY, "--print-config", "not-an-override"])
    assert exc.value.code == 2
    assert "unrecognized arguments: not-an-override" in capsys.readouterr().err


def test_encode_then_decode_round_trips_an_image_through_a_tokenizer(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from mmflow.model_io import save_model
    from mmflow.tokenizers import ImageVAE, image_vae_config

    save_model(ImageVAE(image_vae_config("test", latent_channels=4)), tmp_path / "vae")
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    assert main(["encode", str(tmp_path / "vae"), str(tmp_path / "grey.png"), "--out", str(tmp_path / "z")]) == 0
    assert main(["decode", str(tmp_path / "vae"), str(tmp_path / "z"), "--out", str(tmp_path / "back")]) == 0
    assert Image.open(tmp_path / "back" / "grey.png").size == (24, 16)


def test_decode_of_a_file_that_is_not_latents_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmflow.model_io import save_model
    from mmflow.tokenizers import ImageVAE, image_vae_config

    save_model(ImageVAE(image_vae_config("test")), tmp_path / "vae")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert main(["decode", str(tmp_path / "vae"), str(tmp_path / "junk.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "junk.safetensors" in capsys.readouterr().err


# ------------------------------------------------------------------ the end-of-run summary (Task.summary_lines)
def test_toy2d_summary_lines_are_the_quality_of_both_solvers(make_toy_recipe, tmp_path):
    from mmflow.tasks.toy2d import Toy2DTask

    recipe = make_toy_recipe("sample.solver=heun", "sample.steps=8", "sample.num_samples=300")
    one = {"nfe": 16.0, "sliced_w1": 0.40664, "floor_sliced_w1": 0.35861, "ratio_sliced_w1": 1.134,
           "energy": 0.074861, "floor_energy": 0.067972, "ratio_energy": None}  # None: not finite, printed n/a
    metrics = {**one, **{f"ode100_{k}": v for k, v in one.items()}, "ode100_nfe": 100.0, "loss_t0": 1.1}
    lines = Toy2DTask(recipe).summary_lines(metrics, tmp_path)
    assert lines == [
        "quality (heun x8, 16 NFE, 300 samples vs fresh data):\n"
        "  sliced W1 0.4066  (data-vs-data floor 0.3586, ratio 1.13x)\n"
        "  energy    0.07486 (data-vs-data floor 0.06797, ratio n/ax)",
        "quality (rk4 x25, 100 NFE, 300 samples vs fresh data):\n"
        "  sliced W1 0.4066  (data-vs-data floor 0.3586, ratio 1.13x)\n"
        "  energy    0.07486 (data-vs-data floor 0.06797, ratio n/ax)"]
    assert Toy2DTask(recipe).summary_lines({"loss_t0": 1.0}, tmp_path) == []


def test_digits_summary_line_is_the_classifier_check(tmp_path):
    from mmflow.tasks import load_recipe
    from mmflow.tasks.digits import DigitsImageTask

    task = DigitsImageTask(load_recipe(ROOT / "recipes" / "digits_image.yaml", []))
    metrics = {"accuracy_w3": 0.9, "accuracy_w1": 0.61234, "classifier_accuracy_real": 0.9933, "sample_std": 0.5}
    assert task.summary_lines(metrics, tmp_path) == [
        "classifier check: accuracy_w1 0.612, accuracy_w3 0.900, classifier_accuracy_real 0.993"]
    assert task.summary_lines({}, tmp_path) == []


def test_tokenizer_summary_is_its_reconstruction_then_the_media_accounting(tmp_path):
    from mmflow.tasks import load_recipe
    from mmflow.tasks.tokenizer import TokenizerTask

    task = TokenizerTask(load_recipe(ROOT / "tokenizers" / "image_f8.yaml", [f"data.path={tmp_path}"]))
    metrics = {"l1": 0.0512345, "psnr": 24.56789, "psnr_min": None, "held_out_items": 4.0,
               "bad_items": 2.0, "items_loaded": 40.0, "dropped_rows": 3.0}
    log = tmp_path / "run" / "train.log"
    assert task.summary_lines(metrics, tmp_path / "run") == [
        "held-out reconstruction: l1 0.05123, psnr 24.57, psnr_min n/a",
        f"bad media: 2 of 40 items asked for were bad and replaced (paths in {log})",
        f"dropped rows: 3 metadata rows were not used as items (rows and reasons in {log})"]
    assert task.summary_lines({"bad_items": 0.0, "items_loaded": 8.0, "held_out_items": 0.0}, tmp_path) == []
