"""train.lora: a run trains adapters on its init_from base, saves and resumes them only, and DDP agrees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from toy_recipes import reset_accelerate, toy_recipe
from safetensors import safe_open
from safetensors.torch import load_file
from test_distributed import STEPS, _env, _free_port, _launch_cmd

from launched import run_launched
from mmflow.config import ConfigError
from mmflow.model_io import load_state_dict
from mmflow.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mmflow.pipeline import FlowPipeline
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.trainer import Trainer

LORA = ("train.lora.rank=4", "train.lora.alpha=4", "train.lora.targets=[blocks.*.fc1,blocks.*.fc2]")
SHORT = ("train.max_steps=4", "train.checkpoint_every=2", "train.log_every=2", "train.warmup_steps=0", "train.lr=1e-2")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A toy model trained a few steps: the base the LoRA runs start from."""
    run = tmp_path_factory.mktemp("base") / "run"
    recipe = toy_recipe("train.max_steps=4", "train.checkpoint_every=4", "train.warmup_steps=0")
    Trainer(recipe, Toy2DTask(recipe), run).train()
    reset_accelerate()
    return run


def _lora_run(run: Path, base: Path, *overrides: str, resume: bool = False) -> Trainer:
    recipe = toy_recipe(*LORA, *SHORT, f"train.init_from={base}", *overrides)
    trainer = Trainer(recipe, Toy2DTask(recipe), run, resume=resume)
    trainer.train()
    return trainer


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ADAPTER_WEIGHTS))


def test_lora_trains_only_the_adapters_and_exports_them_alone(tmp_path, base_run):
    trainer = _lora_run(tmp_path / "lora", base_run)
    model = trainer.accelerator.unwrap_model(trainer.models["velocity"])
    state = model.state_dict()
    base = load_state_dict(base_run / "model" / "models" / "velocity_ema")  # init_from takes the EMA weights
    for key, value in base.items():
        parent, _, leaf = key.rpartition(".")
        now = state.get(key, state.get(f"{parent}.base_layer.{leaf}"))
        assert torch.equal(now, value), key  # bit-identical after training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    in_optimizer = sum(p.numel() for g in trainer.optimizers["main"].param_groups for p in g["params"])
    assert in_optimizer == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert any(state[n].abs().max() > 0 for n in trainable if "lora_B" in n)  # the adapters did learn
    ema = trainer.emas["velocity"]
    assert ema.tracked == trainable
    shadow = dict(ema.shadow.named_parameters())
    assert all(shadow[n] is p for n, p in model.named_parameters() if not p.requires_grad)  # shared, not copied

    run = tmp_path / "lora"
    export = run / "model"
    for name in ("velocity", "velocity_ema"):
        assert sorted(p.name for p in (export / "models" / name).iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    info = json.loads((export / "pipeline.json").read_text())
    assert info["base_model"] == str((base_run / "model").resolve())
    assert "components" not in info
    config = json.loads((export / "models" / "velocity" / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == info["base_model"] and config["r"] == 4
    with safe_open(str(run / "checkpoints" / "step_00000004" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(trainable)  # the checkpoint's model state: adapters only
    base_bytes = sum(f.stat().st_size for f in (base_run / "model" / "models" / "velocity").iterdir())
    assert sum(f.stat().st_size for f in (export / "models").rglob("*") if f.is_file()) < base_bytes / 2

    pipe = FlowPipeline.from_pretrained(run)  # the base, then the EMA adapter
    x, t, label = torch.randn(5, 2), torch.rand(5), torch.arange(5)
    with torch.no_grad():
        torch.testing.assert_close(pipe.velocity(x, t, label), ema.shadow.eval()(x, t, label))
    base_pipe = FlowPipeline.from_pretrained(base_run)
    assert pipe.fingerprint != base_pipe.fingerprint
    with torch.no_grad():
        assert not torch.allclose(pipe.velocity(x, t, label), base_pipe.velocity(x, t, label))


def test_a_compiled_lora_run_trains_the_same_adapters_and_saves_the_same_keys(tmp_path, base_run, fresh_accelerate,
                                                                              monkeypatch):
    import torch._dynamo

    monkeypatch.setattr("mmflow.models.compile.BACKEND", "aot_eager")  # the trainer's use of compile, not kernels
    torch._dynamo.reset()
    _lora_run(tmp_path / "eager", base_run, "train.compile=false")
    fresh_accelerate()
    _lora_run(tmp_path / "compiled", base_run, "train.compile=true")
    torch._dynamo.reset()
    assert "velocity (MLPVelocity) compiled" in (tmp_path / "compiled" / "train.log").read_text()
    for sub in ("model/models/velocity", "model/models/velocity_ema"):
        eager, compiled = (_adapter(tmp_path / run / sub) for run in ("eager", "compiled"))
        assert eager.keys() == compiled.keys()
        for key in eager:
            torch.testing.assert_close(compiled[key], eager[key], atol=1e-5, rtol=1e-5, msg=key)


def test_a_resumed_lora_run_ends_with_the_same_adapters(tmp_path, base_run, fresh_accelerate):
    _lora_run(tmp_path / "whole", base_run)
    fresh_accelerate()
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000004")  # as if killed after step 2's checkpoint
    (cut / "metrics.json").unlink()
    _lora_run(cut, base_run, resume=True)
    for name in ("velocity", "velocity_ema"):
        want, got = (_adapter(r / "model" / "models" / name) for r in (tmp_path / "whole", cut))
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_bad_lora_settings_are_refused_by_name(tmp_path, base_run):
    with pytest.raises(ConfigError, match="set init_from") as e:
        toy_recipe(*LORA)
    assert e.value.key == "train.init_from"
    recipe = toy_recipe(*SHORT, "train.lora.targets=[mlp]", f"train.init_from={base_run}")
    with pytest.raises(ConfigError, match="LoRA target 'mlp' matches no linear layer of this MLPVelocity"):
        Trainer(recipe, Toy2DTask(recipe), tmp_path / "bad").train()


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one_with_the_doubled_batch(tmp_path, base_run, small_toy_overrides):
    lora = [*LORA, f"train.init_from={base_run}"]
    recipe = toy_recipe(*STEPS, *lora, "train.batch_size=64")
    Trainer(recipe, Toy2DTask(recipe), tmp_path / "single").train()
    cmd = _launch_cmd(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
                       str(_free_port())], tmp_path / "ddp", 32, [*small_toy_overrides, *lora])
    proc = run_launched(cmd, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("velocity", "velocity_ema"):
        want, got = (_adapter(r / "model" / "models" / name) for r in (tmp_path / "single", tmp_path / "ddp"))
        assert want.keys() == got.keys() and want
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=k)
