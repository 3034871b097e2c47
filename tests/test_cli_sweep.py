"""Every `mmflow` verb against bad input, as a user runs it (a subprocess per case).

Each case must end with exit code 2, exactly one line `mmflow <verb>: error: ...` naming the file,
key or value at fault, and no traceback. (An unexpected exception keeps its traceback: that is a
bug report, and this sweep is how we find them.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, SMALL_TOY

TOY = str(REPO / "recipes" / "toy2d.yaml")
MEDIA = str(REPO / "recipes" / "emoji_image.yaml")


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mmflow", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny toy run, a tiny image tokenizer and a few broken files, made once."""
    from mmflow.model_io import save_model
    from mmflow.tokenizers import ImageVAE, image_vae_config

    root = tmp_path_factory.mktemp("sweep")
    done = run_cli(["train", TOY, *SMALL_TOY, "train.max_steps=4", "train.checkpoint_every=4",
                    "sample.num_samples=64", "--run-dir", str(root / "run")], cwd=root)
    assert done.returncode == 0, done.stderr
    save_model(ImageVAE(image_vae_config("test", latent_channels=4)), root / "vae")
    (root / "not_yaml.yaml").write_text("name: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "notes.txt").write_text("not media\n")
    (root / "blank.txt").write_text("\n  \n")  # a prompt file without a prompt
    (root / "junk.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    (root / "garbage_json").mkdir()
    (root / "garbage_json" / "config.json").write_text("{not json")
    (root / "garbage_config").mkdir()  # weights present, config.json unreadable
    (root / "garbage_config" / "config.json").write_text("{not json")
    (root / "garbage_config" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (root / "no_weights").mkdir()
    (root / "no_weights" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    return root


def _copy_model(assets: Path, name: str) -> Path:
    dst = assets / name
    if not dst.exists():
        shutil.copytree(assets / "run" / "model", dst)
    return dst


def _garbage_pipeline(assets: Path) -> Path:
    m = _copy_model(assets, "bad_pipeline")
    (m / "pipeline.json").write_text("{ this is not json")
    return m


def _truncated_weights(assets: Path) -> Path:
    m = _copy_model(assets, "truncated")
    for w in m.rglob("model.safetensors"):
        w.write_bytes(w.read_bytes()[:100])
    return m


@dataclass
class Case:
    name: str
    args: list[str]  # "{a}" stands for the assets folder
    names: list[str]  # what the error line must mention
    before_work: bool = True  # train/prepare: refused before the run folder is made


CASES = [
    # train
    Case("train-missing-recipe", ["train", "{a}/absent.yaml"], ["absent.yaml"]),
    Case("train-recipe-is-a-folder", ["train", "{a}"], ["{a}", "not a file"]),
    Case("train-invalid-yaml", ["train", "{a}/not_yaml.yaml"], ["not_yaml.yaml", "line"]),
    Case("train-yaml-not-a-mapping", ["train", "{a}/list.yaml"], ["list.yaml", "mapping"]),
    Case("train-unknown-key", ["train", TOY, "train.lrr=1"], ["train.lrr"]),
    Case("train-wrong-type", ["train", TOY, "train.max_steps=many"], ["train.max_steps", "many"]),
    Case("train-nan-lr", ["train", TOY, "train.lr=nan"], ["train.lr", "nan"]),
    Case("train-inf-lr", ["train", TOY, "train.lr=inf"], ["train.lr", "inf"]),
    Case("train-nan-guidance", ["train", TOY, "sample.guidance=nan"], ["sample.guidance", "nan"]),
    Case("train-unsafe-name", ["train", TOY, "name=.."], ["name", "'..'"]),
    Case("train-name-with-separator", ["train", TOY, "name=a/b"], ["name", "a/b"]),
    Case("train-unknown-task", ["train", TOY, "task=no_such_task"], ["task", "no_such_task"]),
    Case("train-unknown-solver", ["train", TOY, "sample.solver=magic"], ["sample.solver", "magic"]),
    Case("train-malformed-override", ["train", TOY, "train..lr=1"], ["train..lr=1"]),
    Case("train-overfit-zero", ["train", TOY, "--overfit-batch", "0"], ["--overfit-batch"]),
    Case("train-resume-never-ran", ["train", TOY, "--resume", "--run-dir", "{a}/never"], ["{a}/never"]),
    Case("train-diverges", ["train", TOY, *SMALL_TOY, "train.lr=1e30", "train.grad_clip=null", "train.warmup_steps=0"],
         ["step 2", "loss is inf", "train.lr"], before_work=False),
    Case("train-missing-data-path", ["train", MEDIA, "data.path={a}/no_media"], ["data.path", "no_media", MEDIA]),
    Case("train-nan-bad-fraction", ["train", MEDIA, "data.max_bad_fraction=nan"], ["data.max_bad_fraction"]),
    # sample
    Case("sample-missing-path", ["sample", "{a}/absent"], ["{a}/absent"]),
    Case("sample-folder-without-model", ["sample", "{a}/garbage_json"], ["{a}/garbage_json"]),
    Case("sample-garbage-pipeline-json", ["sample", "{bad_pipeline}"], ["pipeline.json"]),
    Case("sample-truncated-weights", ["sample", "{truncated}"], ["model.safetensors"]),
    Case("sample-unknown-device", ["sample", "{a}/run", "--device", "tpu9"], ["tpu9"]),
    Case("sample-zero-steps", ["sample", "{a}/run", "steps=0"], ["sample.steps"]),
    Case("sample-unknown-solver", ["sample", "{a}/run", "solver=magic"], ["sample.solver", "magic"]),
    Case("sample-nan-guidance", ["sample", "{a}/run", "guidance=nan"], ["sample.guidance"]),
    Case("sample-unknown-key", ["sample", "{a}/run", "stepz=3"], ["sample.stepz"]),
    Case("sample-label-out-of-range", ["sample", "{a}/run", "--label", "99"], ["--label", "99"]),
    Case("sample-prompt-on-class-model", ["sample", "{a}/run", "--prompt", "a cat"], ["--prompt"]),
    Case("sample-missing-prompt-file", ["sample", "{a}/run", "--prompt-file", "{a}/absent.txt"], ["--prompt-file", "absent.txt"]),
    Case("sample-empty-prompt-file", ["sample", "{a}/run", "--prompt-file", "{a}/blank.txt"], ["--prompt-file", "no prompt"]),
    Case("sample-frames-of-a-points-model", ["sample", "{a}/run", "--num-frames", "8"], ["num_frames", "points"]),
    Case("sample-zero-size", ["sample", "{a}/run", "--size", "0"], ["--size"]),
    Case("sample-bad-text-encoder-pair", ["sample", "{a}/run", "--text-encoder", "clip"], ["--text-encoder", "NAME=PATH"]),
    Case("sample-text-encoder-of-a-toy", ["sample", "{a}/run", "--text-encoder", "clip={a}"], ["references no text encoder"]),
    Case("sample-zero-batch", ["sample", "{a}/run", "--batch-size", "0"], ["--batch-size"]),
    # prepare
    Case("prepare-missing-recipe", ["prepare", "{a}/absent.yaml"], ["absent.yaml"]),
    Case("prepare-task-without-cache", ["prepare", TOY], ["toy2d", "prepare"]),
    Case("prepare-missing-data-path", ["prepare", MEDIA, "data.path={a}/no_media"], ["data.path", "no_media"]),
    Case("prepare-zero-batch", ["prepare", MEDIA, "--batch-size", "0"], ["--batch-size"]),
    # encode / decode
    Case("encode-missing-tokenizer", ["encode", "{a}/absent_vae", "{a}/notes.txt", "--out", "{a}/z"], ["absent_vae"]),
    Case("encode-garbage-tokenizer", ["encode", "{a}/garbage_json", "{a}/notes.txt", "--out", "{a}/z"],
         ["config.json"]),
    Case("encode-missing-input", ["encode", "{a}/vae", "{a}/absent.png", "--out", "{a}/z"], ["absent.png"]),
    Case("encode-not-media", ["encode", "{a}/vae", "{a}/notes.txt", "--out", "{a}/z"], ["notes.txt"]),
    Case("encode-unknown-device", ["encode", "{a}/vae", "{a}/notes.txt", "--out", "{a}/z", "--device", "tpu9"],
         ["tpu9"]),
    Case("decode-not-latents", ["decode", "{a}/vae", "{a}/junk.safetensors", "--out", "{a}/o"], ["junk.safetensors"]),
    Case("decode-missing-input", ["decode", "{a}/vae", "{a}/absent.safetensors", "--out", "{a}/o"],
         ["absent.safetensors"]),
    # convert
    Case("convert-missing-source", ["convert", "diffusers-sd3", "{a}/absent", "{a}/out"], ["absent"]),
    Case("convert-garbage-config", ["convert", "diffusers-sd3", "{a}/garbage_config", "{a}/out"], ["config.json"]),
    Case("convert-no-weights", ["convert", "diffusers-sd3", "{a}/no_weights", "{a}/out"], ["no_weights"]),
    Case("convert-vae-garbage-config", ["convert", "diffusers-vae", "{a}/garbage_config", "{a}/out"], ["config.json"]),
    Case("convert-zero-shard-size", ["convert", "diffusers-sd3", "{a}/no_weights", "{a}/out", "--max-shard-gb", "0"],
         ["--max-shard-gb"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_clean_line(case: Case, assets: Path, tmp_path: Path) -> None:
    made = {"bad_pipeline": _garbage_pipeline, "truncated": _truncated_weights}
    subs = {"{a}": str(assets), **{f"{{{k}}}": str(f(assets)) for k, f in made.items()
                                   if any(f"{{{k}}}" in a for a in case.args)}}

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    verb = case.args[0]
    done = run_cli([fill(a) for a in case.args], cwd=tmp_path)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 2, output
    errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith(f"mmflow {verb}: error:"), output
    for name in case.names:
        assert fill(name) in errors[0], f"{fill(name)!r} not named in: {errors[0]}"
    if verb in ("train", "prepare") and case.before_work:  # refused before any work: no run folder appears
        assert list(tmp_path.iterdir()) == [] and not (assets / "never").exists()
