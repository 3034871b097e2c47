"""Several processes (gloo on CPU) through `accelerate launch`: gradients are averaged across ranks and
only rank 0 writes. The 2-process result must equal one process with the doubled batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launched import run_launched
from mmflow.tasks import load_recipe
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.trainer import Trainer
from toy_recipes import SMALL_TOY

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

STEPS = ("train.max_steps=6", "train.log_every=3", "train.checkpoint_every=3", "train.warmup_steps=1",
         "train.device=cpu", "sample.num_samples=200")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_cmd(launch_args: list[str], run_dir: Path, batch: int, small: list[str],
                recipe: str = "toy2d.yaml") -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "-m", "mmflow", "train",
            str(REPO / "recipes" / recipe), *small, *STEPS, f"train.batch_size={batch}",
            "--run-dir", str(run_dir)]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "models" / name / "model.safetensors"))


def _reference(tmp_path: Path, make_toy_recipe, batch: int, recipe_file: str = "toy2d.yaml") -> Path:
    overrides = (*STEPS, f"train.batch_size={batch}")
    recipe = (make_toy_recipe(*overrides) if recipe_file == "toy2d.yaml"
              else load_recipe(REPO / "recipes" / recipe_file, [*SMALL_TOY, *overrides]))
    Trainer(recipe, Toy2DTask(recipe), tmp_path / "single").train()
    return tmp_path / "single"


def _assert_close_runs(a: Path, b: Path) -> None:
    for name in ("velocity", "velocity_ema"):
        wa, wb = _weights(a, name), _weights(b, name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=f"{name}.{k}")


def _check_rank0_only_wrote(run_dir: Path, output: str) -> None:
    log = (run_dir / "train.log").read_text()
    assert log.count("step 6 loss") == 1, log
    assert "2 process(es)" in log
    assert output.count("step 6 loss") == 1, output  # rank 1 printed no progress/log lines
    events = list((run_dir / "tb").rglob("events.out.tfevents.*"))  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert events and len({e.name.split(".")[-2] for e in events}) == 1, events  # one writer process
    ckpt = run_dir / "checkpoints" / "step_00000006"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert len(list(ckpt.glob("model*.safetensors"))) == 1
    assert not list(run_dir.rglob(".tmp-*")), "temporary folders left behind"


# meanflow: its JVP runs on the bare module (torch.func.jvp cannot pass DDP's forward, pytorch#182661)
@pytest.mark.parametrize("recipe_file", ["toy2d.yaml", "meanflow_toy2d.yaml"])
def test_two_processes_average_gradients_like_one_with_the_doubled_batch(tmp_path, make_toy_recipe, small_toy_overrides,
                                                                         recipe_file):

    single = _reference(tmp_path, make_toy_recipe, 64, recipe_file)
    run = tmp_path / "ddp"
    cmd = _launch_cmd(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
                       str(_free_port())], run, 32, small_toy_overrides, recipe_file)
    proc = run_launched(cmd, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_rank0_only_wrote(run, proc.stdout + proc.stderr)
    _assert_close_runs(single, run)


def test_two_machines_train_as_one(tmp_path, make_toy_recipe, small_toy_overrides):

    single = _reference(tmp_path, make_toy_recipe, batch=64)
    run = tmp_path / "two_machines"
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        cmd = _launch_cmd(["--multi_gpu", "--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
                           "--main_process_ip", "127.0.0.1", "--main_process_port", port], run, 32, small_toy_overrides)
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    _check_rank0_only_wrote(run, "".join(outputs))
    _assert_close_runs(single, run)
