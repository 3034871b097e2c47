"""Tests for mmflow/pipeline.py: loading a saved model is verified, falls back, and refuses NaN.

The command-line tests run `python -m mmflow sample` as a user does, on copies of one tiny toy run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmflow.cli import main
from mmflow.config import ConfigError
from mmflow.model_io import CorruptModel
from mmflow.pipeline import FlowPipeline, NonFiniteSamples, parse_device
from mmflow.sampling.layout import WrongOutputRequest
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.trainer import Trainer

TINY = ["model.hidden=16", "model.depth=1", "model.time_frequency_dim=8", "data.num_samples=256",
        "train.batch_size=32", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=2",
        "train.checkpoint_every=2", "train.keep_checkpoints=2", "sample.num_samples=64", "sample.steps=2"]
EMA_WEIGHTS = Path("model/models/velocity_ema/model.safetensors")
NEWEST = Path("checkpoints/step_00000004")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_toy_recipe) -> Path:
    """A 4-step toy run: model/ export plus checkpoints step_2 and step_4 (trained once per module)."""
    run = tmp_path_factory.mktemp("tiny_toy") / "run"
    recipe = make_toy_recipe(*TINY, base=())
    Trainer(recipe, Toy2DTask(recipe), run).train()
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, free to corrupt."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _sample(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmflow", "sample", *args, "num_samples=8"], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _refused(out: subprocess.CompletedProcess[str], *named: str) -> str:
    """Exit 2, one clean error line naming each of `named`, no traceback; returns the line."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("mmflow sample: error:")]
    assert len(lines) == 1, out.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _edit_weights(path: Path, edit) -> None:
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def _set_nan(state: dict[str, torch.Tensor]) -> None:
    state["out.bias"][0] = float("nan")


# ------------------------------------------------------------------ corrupt files, through the CLI
def test_truncated_weights_are_named(run: Path) -> None:
    weights = run / EMA_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    _refused(_sample(run.parent, "run/model"), str(Path("run") / EMA_WEIGHTS), "safetensors")
    assert not (run / "model" / "samples").exists()


def test_garbage_weights_are_named(run: Path) -> None:
    (run / EMA_WEIGHTS).write_bytes(bytes(range(256)) * 4)
    _refused(_sample(run.parent, "run/model"), str(Path("run") / EMA_WEIGHTS))


def test_non_json_config_is_named(run: Path) -> None:
    (run / EMA_WEIGHTS).with_name("config.json").write_text("{not json")
    _refused(_sample(run.parent, "run/model"), "run/model/models/velocity_ema/config.json", "JSON")


def test_non_json_pipeline_is_named(run: Path) -> None:
    (run / "model" / "pipeline.json").write_text("model: [1, 2")
    _refused(_sample(run.parent, "run/model"), "run/model/pipeline.json", "JSON")


def test_nan_weights_are_refused_naming_the_tensor(run: Path) -> None:
    _edit_weights(run / EMA_WEIGHTS, _set_nan)
    line = _refused(_sample(run.parent, "run/model"), str(Path("run") / EMA_WEIGHTS), "'out.bias'", "NaN")
    assert "not finite" in line
    assert not (run / "model" / "samples").exists()


def test_unknown_device_is_named_before_loading(run: Path) -> None:
    (run / "model" / "pipeline.json").write_text("not even read")  # the device is checked first
    line = _refused(_sample(run.parent, "run", "--device", "tpu9"), "--device", "'tpu9'")
    assert "cpu, cuda, cuda:N or mps" in line


@pytest.mark.parametrize("verb", ["encode", "decode"])
def test_encode_and_decode_share_the_device_check(verb: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([verb, str(tmp_path / "no_such_tokenizer"), "x", "--out", str(tmp_path / "o"), "--device", "tpu9"]) == 2
    assert f"mmflow {verb}: error: --device: 'tpu9'" in capsys.readouterr().err


def test_checkpoint_given_directly_is_verified_against_its_manifest(run: Path) -> None:
    weights = run / NEWEST / "models" / "velocity_ema" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, still a readable safetensors file: only the sha256 can tell
    weights.write_bytes(bytes(data))
    _refused(_sample(run.parent, f"run/{NEWEST}"), f"run/{NEWEST}", "MANIFEST.json",
             "models/velocity_ema/model.safetensors", "sha256")


def test_corrupt_model_export_falls_back_to_the_newest_intact_checkpoint(run: Path) -> None:
    (run / EMA_WEIGHTS).write_bytes(b"\x00" * 7)
    out = _sample(run.parent, "run")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    warning = [line for line in out.stderr.splitlines() if "WARNING" in line]
    assert len(warning) == 1, out.stderr
    assert str(Path("run") / EMA_WEIGHTS) in warning[0] and f"sampling from run/{NEWEST} instead" in warning[0]
    assert f'"model": "run/{NEWEST}/models/velocity_ema"' in out.stdout
    assert (run / "samples" / "samples.safetensors").exists()


def test_non_finite_samples_are_refused_and_nothing_is_written(run: Path) -> None:
    # finite weights that overflow: every sampling step meets inf, which the hook refuses
    _edit_weights(run / EMA_WEIGHTS, lambda s: s.update({k: v * 1e30 for k, v in s.items() if v.is_floating_point()}))
    line = _refused(_sample(run.parent, "run"), "run/model/models/velocity_ema", "non-finite", "nothing was written")
    assert "heun x2" in line
    assert not (run / "samples").exists()


# ------------------------------------------------------------------ the mechanisms, in process
def test_fallback_skips_a_corrupt_newest_checkpoint_too(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    _edit_weights(run / EMA_WEIGHTS, _set_nan)
    (run / NEWEST / "pipeline.json").write_text("{")
    pipe = FlowPipeline.from_pretrained(run)
    assert pipe.source == run / "checkpoints" / "step_00000002" / "models" / "velocity_ema"
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "'out.bias'" in warning and str(run / NEWEST) in warning and "pipeline.json" in warning


def test_nothing_usable_is_one_error_listing_each_try(run: Path) -> None:
    (run / EMA_WEIGHTS).write_bytes(b"")
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "pipeline.json").write_text("{")
    with pytest.raises(CorruptModel, match=r"no usable model \(3 tried\)") as info:
        FlowPipeline.from_pretrained(run)
    message = str(info.value)
    for tried in (run / EMA_WEIGHTS, run / NEWEST, run / "checkpoints" / "step_00000002"):
        assert str(tried) in message
    assert message.count("MANIFEST.json") == 2


def test_a_folder_with_nothing_to_load_is_missing_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no pipeline.json, no model/ export and no checkpoint"):
        FlowPipeline.from_pretrained(tmp_path)


def test_intact_run_loads_its_export_without_warning(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe = FlowPipeline.from_pretrained(run)
    assert pipe.source == run / "model" / "models" / "velocity_ema"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert not pipe.velocity._forward_hooks  # sampling's finiteness hook is not left behind by loading


def test_explicit_folder_is_never_swapped_for_another(run: Path) -> None:
    (run / "model" / "pipeline.json").write_text("[]")
    with pytest.raises(CorruptModel, match="expected a JSON object"):
        FlowPipeline.from_pretrained(run / "model")
    assert FlowPipeline.from_pretrained(run).source == run / NEWEST / "models" / "velocity_ema"  # a run falls back


def test_sampling_names_the_model_on_overflow(run: Path) -> None:
    pipe = FlowPipeline.from_pretrained(run)
    with torch.no_grad():
        for p in pipe.velocity.parameters():
            p.mul_(1e30)
    with pytest.raises(NonFiniteSamples, match="non-finite") as info:
        pipe(num_per_prompt=4)
    assert str(pipe.source) in str(info.value) and "nothing was written" in str(info.value)


@pytest.mark.parametrize("value", ["cpu", torch.device("cpu")])
def test_parse_device_accepts_cpu(value) -> None:
    assert parse_device(value) == torch.device("cpu")


@pytest.mark.parametrize("value,message", [
    ("tpu9", "is not a device"),
    ("cuda:x", "is not a device"),
    ("", "is not a device"),
    ("meta", "not supported"),
])
def test_parse_device_refuses_naming_the_value(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_device(value)
    assert repr(value) in str(info.value) and str(info.value).startswith("--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_parse_device_refuses_cuda_without_a_gpu() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        parse_device("cuda:0")


def test_a_moved_toy_export_samples_alone_from_python_and_the_command_line(run: Path, tmp_path: Path) -> None:
    moved = Path(shutil.move(str(run / "model"), str(tmp_path / "moved")))
    shutil.rmtree(run)  # no run folder, no checkpoints, no recipe file
    pipe = FlowPipeline.from_pretrained(moved)
    out = pipe(labels=[3, 5], num_per_prompt=4, seed=2)
    assert out.media.shape == (8, 2) and out.inputs == [3] * 4 + [5] * 4 and out.seeds == list(range(2, 10))
    assert torch.equal(out.media, pipe(labels=[3, 5], num_per_prompt=4, seed=2).media)
    assert not torch.equal(out.media, pipe(labels=[3, 5], num_per_prompt=4, seed=3).media)
    unlabelled = pipe(num_per_prompt=16)  # labels drawn from each row's seed, recorded
    assert all(0 <= label < 8 for label in unlabelled.inputs) and len(set(unlabelled.inputs)) > 1
    done = _sample(tmp_path, "moved", "seed=2", "--label", "3", "--label", "5", "--out", "s")
    assert done.returncode == 0, done.stderr
    tensors = load_file(str(tmp_path / "s" / "samples.safetensors"))
    assert tensors["labels"].tolist() == [3] * 8 + [5] * 8 and tensors["seeds"].tolist() == list(range(2, 18))
    torch.testing.assert_close(tensors["samples"][:4], out.media[:4])  # rows 0-3: the same seeds and label
    with pytest.raises(WrongOutputRequest, match="size cannot be set: this toy2d model makes points"):
        pipe(labels=[3], size=32)
