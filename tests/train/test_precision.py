"""mmflow/train/precision.py: `train.mixed_precision` resolved against the device's bf16 kernels."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmflow.config import ConfigError
from mmflow.train import precision
from mmflow.train.precision import resolve_mixed_precision


@pytest.fixture
def bf16_native(monkeypatch):
    """bf16_native(True | False): pretend this machine has (or lacks) bf16 kernels."""
    def set_(native: bool) -> None:
        monkeypatch.setattr(precision, "native_bf16", lambda cpu: native)
    return set_


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_is_bf16_only_where_it_is_native(bf16_native, caplog, native, expected):
    bf16_native(native)
    with caplog.at_level(logging.INFO, logger="mmflow.train.precision"):
        assert resolve_mixed_precision("auto", cpu=True) == expected
    assert ("bf16 autocast" if native else "float32") in caplog.text


def test_explicit_bf16_is_kept_with_a_warning_where_it_is_emulated(bf16_native, caplog):
    bf16_native(False)
    with caplog.at_level(logging.WARNING, logger="mmflow.train.precision"):
        assert resolve_mixed_precision("bf16", cpu=True) == "bf16"
    assert "no bf16 kernels" in caplog.text and "'auto' or 'no'" in caplog.text
    caplog.clear()
    bf16_native(True)
    with caplog.at_level(logging.WARNING, logger="mmflow.train.precision"):
        assert resolve_mixed_precision("bf16", cpu=True) == "bf16"
    assert caplog.text == ""


def test_no_stays_no_and_bad_values_are_refused(bf16_native):
    bf16_native(True)
    assert resolve_mixed_precision("no", cpu=True) == "no"
    assert resolve_mixed_precision("fp16", cpu=False) == "fp16"
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device"):
        resolve_mixed_precision("fp16", cpu=True)
    with pytest.raises(ConfigError, match="'fp8' is not one of"):
        resolve_mixed_precision("fp8", cpu=True)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(),
                    reason="reads the x86 CPU flags from /proc/cpuinfo")
def test_native_bf16_on_an_x86_cpu_is_avx512_bf16_or_amx():
    # an independent reading of the machine: bf16 is native with AVX512-BF16 (Cooper Lake, Zen 4) or AMX
    # (Sapphire Rapids); AVX512-BW alone and AVX2 emulate it (a step 2.5x slower than float32, measured)
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert precision.native_bf16(cpu=True) == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_the_accelerator_autocasts_as_resolved(bf16_native, fresh_accelerate, tmp_path, native, expected):
    from mmflow.train.trainer import make_accelerator

    bf16_native(native)
    fresh_accelerate()
    acc = make_accelerator(SimpleNamespace(device="cpu", mixed_precision="auto", trackers=()), tmp_path)
    try:
        assert acc.mixed_precision == expected
        with acc.autocast():
            y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
        assert y.dtype == (torch.bfloat16 if native else torch.float32)
    finally:
        fresh_accelerate()


def test_an_auto_run_on_a_cpu_without_bf16_trains_in_float32(bf16_native, fresh_accelerate, make_toy_recipe,
                                                             tmp_path):
    from safetensors.torch import load_file

    from mmflow.tasks.toy2d import Toy2DTask
    from mmflow.train.trainer import Trainer

    def weights(run_dir):
        return load_file(str(run_dir / "model" / "models" / "velocity" / "model.safetensors"))

    bf16_native(False)
    fresh_accelerate()
    recipe = make_toy_recipe("train.max_steps=5", "train.mixed_precision=auto")
    Trainer(recipe, Toy2DTask(recipe), tmp_path / "auto").train()
    assert "precision no (train.mixed_precision auto)" in (tmp_path / "auto" / "train.log").read_text()
    fresh_accelerate()
    recipe = make_toy_recipe("train.max_steps=5", "train.mixed_precision=no")
    Trainer(recipe, Toy2DTask(recipe), tmp_path / "fp32").train()
    fresh_accelerate()
    auto, fp32 = weights(tmp_path / "auto"), weights(tmp_path / "fp32")
    assert all(torch.equal(auto[k], fp32[k]) for k in fp32)  # the same run, bit for bit
