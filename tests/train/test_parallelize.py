"""train.sharding fsdp2 (mmflow/train/parallelize.py): units, sharded clipping / EMA / state dicts on a one-process
gloo group; then on 2 gloo processes through `accelerate launch`, a small MM-DiT recipe (digits_image) trains to
DDP's weights, stops and resumes to the uninterrupted run's, and exports model folders that load anywhere."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from accelerate import DistributedType
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import mmflow.builtin_models  # noqa: F401  (registers the model types load_model builds)
from launched import run_launched
from mmflow.config import ConfigError
from mmflow.model_io import load_model
from mmflow.models.mmdit import MMDiT, MMDiTConfig
from mmflow.tasks import load_recipe
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.config import Fsdp2Config
from mmflow.train.parallelize import (clip_grad_norm, full_state_dict, load_full_state_dict, parallelize,
                                      shard_like)
from mmflow.train.trainer import SHARDED_OPTIMIZER, Trainer
from toy_recipes import REPO, toy_recipe

DIGITS = REPO / "recipes" / "digits_image.yaml"
# a 2-block, 32-wide MM-DiT on 16x16 digits: 4 steps of 2 micro-batches each (no_sync is exercised), a checkpoint
# every 2; validation draws 1 image per digit in 2 solver steps
TINY = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "model.text_dim=16", "train.batch_size=8",
        "train.grad_accum=2", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=2",
        "train.checkpoint_every=2", "train.keep_checkpoints=2", "data.eval_per_digit=1", "sample.steps=2",
        "train.device=cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mmdit(depth: int = 3) -> MMDiT:
    torch.manual_seed(0)
    cfg = MMDiTConfig(in_channels=1, patch_size=(2, 2), hidden_size=32, depth=depth, num_heads=4, context_dim=8,
                      pooled_dim=8, pos_embed="rope", null_text="learned")
    model = MMDiT(cfg)
    with torch.no_grad():  # away from the zero init, so outputs and gradients are not trivially zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(batch: int = 4) -> tuple:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 8, 8, generator=g)
    cond = {"text": torch.randn(batch, 3, 8, generator=g), "pooled": torch.randn(batch, 8, generator=g)}
    return x, torch.rand(batch, generator=g), cond


@pytest.fixture
def mesh():
    """A one-process gloo group: fully_shard's code paths, with shards of the whole."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_parallelize_makes_one_unit_per_block_and_the_root(mesh):
    model = _mmdit(depth=3)
    plain = copy.deepcopy(model)
    units = parallelize(model, mesh, Fsdp2Config())
    assert units == [*model.blocks, model]
    assert [m for m in model.modules() if isinstance(m, FSDPModule)] == [model, *model.blocks]
    assert all(isinstance(p, DTensor) for p in model.parameters())
    x, t, cond = _inputs()
    torch.testing.assert_close(model(x, t, cond), plain(x, t, cond), rtol=0, atol=1e-6)


def test_sharded_clipping_ema_and_whole_state_dicts(mesh):
    model = _mmdit()
    plain = copy.deepcopy(model)
    shadow = copy.deepcopy(model).eval()
    names = [n for n, _ in model.named_parameters()]
    parallelize(model, mesh, Fsdp2Config())
    shard_like(shadow, model, names)
    assert all(isinstance(p, DTensor) and not p.requires_grad for p in shadow.parameters())
    x, t, cond = _inputs()
    for m in (model, plain):
        (m(x, t, cond) - x).pow(2).mean().backward()
    norm = clip_grad_norm(list(model.parameters()), 0.1)
    ref = torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.1)
    torch.testing.assert_close(norm, ref)
    assert norm > 0.1  # the clipping did something
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    for n, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)
    with torch.no_grad():  # the EMA's update: shard by shard
        for (_, s), (_, p) in zip(shadow.named_parameters(), model.named_parameters()):
            s.lerp_(p.detach() * 2, 0.5)
    whole, whole_ema = full_state_dict(model), full_state_dict(shadow)
    assert whole.keys() == plain.state_dict().keys() == whole_ema.keys()
    for k, v in plain.state_dict().items():
        assert not isinstance(whole[k], DTensor) and torch.equal(whole[k], v), k
        if k in names:
            torch.testing.assert_close(whole_ema[k], 1.5 * v)
    fresh, fresh_shadow = _mmdit(), _mmdit()
    torch.manual_seed(3)
    parallelize(fresh, mesh, Fsdp2Config())
    shard_like(fresh_shadow, fresh, names)
    load_full_state_dict(fresh, whole)
    load_full_state_dict(fresh_shadow, whole_ema)
    assert all(torch.equal(full_state_dict(fresh)[k], v) for k, v in whole.items())
    assert all(torch.equal(full_state_dict(fresh_shadow)[k], v) for k, v in whole_ema.items())


def test_gradient_checkpointing_through_sharded_blocks_matches_the_plain_model(mesh):
    """The GPU recipes' combination: each block recomputed in its backward (model.gradient_checkpointing) inside its
    unit, which gathers the block again for the recompute; the gradients are the plain model's."""
    model = _mmdit()
    plain = copy.deepcopy(model)
    model.set_gradient_checkpointing(True)
    parallelize(model, mesh, Fsdp2Config())
    x, t, cond = _inputs()
    model(x, t, cond).pow(2).mean().backward()
    plain(x, t, cond).pow(2).mean().backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == {n for n, p in plain.named_parameters() if p.grad is not None} and grads
    for n, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_bf16_params_compute_in_bf16_and_keep_fp32_shards(mesh):
    model = _mmdit()
    plain = copy.deepcopy(model)
    parallelize(model, mesh, Fsdp2Config(param_dtype="bfloat16", reduce_dtype="float32"))
    x, t, cond = _inputs()
    out = model(x, t, cond)
    assert out.dtype == torch.bfloat16
    out.float().pow(2).mean().backward()  # then every unit is resharded: the stored shards and grads are fp32
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in model.parameters())
    torch.testing.assert_close(out.float(), plain(x, t, cond), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("overrides, key", [
    (["train.fsdp2.reshard_after_forward=false"], "train.fsdp2"),
    (["train.sharding=fsdp2", "train.fsdp2.reduce_dtype=bfloat16"], "train.fsdp2.reduce_dtype"),
    (["train.sharding=fsdp2", "train.mixed_precision=fp16"], "train.sharding"),
])
def test_recipe_refuses_what_fsdp2_does_not_support(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_recipe(DIGITS, [*TINY, *overrides])
    assert e.value.key == key, e.value


def test_trainer_refuses_sharding_a_task_without_mmdit_blocks(tmp_path):
    recipe = toy_recipe("train.sharding=fsdp2")
    task = Toy2DTask(recipe)
    acc = SimpleNamespace(is_main_process=True, distributed_type=DistributedType.MULTI_CPU)
    trainer = Trainer(recipe, task, tmp_path, accelerator=acc)  # type: ignore[arg-type]
    models = task.build_models()
    trainer.groups = task.optimizer_groups(models)
    with pytest.raises(ConfigError, match="MM-DiT") as e:
        trainer._check_sharding(models, list(models))
    assert e.value.key == "train.sharding"
    acc.distributed_type, acc.num_processes = DistributedType.FSDP, 2  # refused before any work, as the dry run does
    with pytest.raises(ConfigError, match="accelerate's FSDP plugin .* would shard them twice") as e:
        Trainer(recipe, task, tmp_path, accelerator=acc)  # type: ignore[arg-type]
    assert e.value.key == "train.sharding"


# ---------------------------------------------------------------------------------------------- 2 gloo processes
def _launch(run_dir: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(_free_port()), "-m", "mmflow", "train", str(DIGITS),
           *TINY, *extra, "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = run_launched(cmd, cwd=run_dir.parent, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _exported(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {f.name: load_model(f).state_dict() for f in sorted((run / "model" / "models").iterdir())}


@pytest.mark.slow
def test_fsdp2_trains_like_ddp_resumes_exactly_and_exports_whole_models(tmp_path):
    ddp, sharded, resumed = tmp_path / "ddp", tmp_path / "fsdp2", tmp_path / "resumed"
    _launch(ddp)
    out = _launch(sharded, "train.sharding=fsdp2")
    assert "velocity, text_embedder sharded (fsdp2)" in out
    step2 = sharded / "checkpoints" / "step_00000002"
    assert (step2 / f"{SHARDED_OPTIMIZER}_main.pt").is_file() and not (step2 / "model.safetensors").exists()

    # the same model as DDP: only the order of float sums differs (reduce-scatter vs all-reduce). Measured: at most
    # 3e-8 (velocity) and 6e-8 (text embedder) apart after 4 AdamW steps, a few float32 ulps; 1e-6 leaves room for
    # other BLAS builds, and is far below one update (lr 1e-3 x ~1 in AdamW's first steps)
    a, b = _exported(ddp), _exported(sharded)
    assert a.keys() == b.keys() == {"text_embedder", "text_embedder_ema", "velocity", "velocity_ema"}
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            torch.testing.assert_close(b[name][k], a[name][k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")

    # stop after step 2 (its checkpoint is what a kill leaves) and resume: the uninterrupted run's weights, exactly
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    (resumed / "metrics.json").unlink()
    out = _launch(resumed, "train.sharding=fsdp2", "--resume")
    assert "resumed from" in out and "step_00000002" in out
    c = _exported(resumed)
    for name in b:
        for k in b[name]:
            assert torch.equal(c[name][k], b[name][k]), f"{name}.{k}"

    # the exported velocity is a plain model folder: it loads in this process and computes as DDP's does
    velocity = load_model(sharded / "model" / "models" / "velocity_ema").eval()
    reference = load_model(ddp / "model" / "models" / "velocity_ema").eval()
    assert not any(isinstance(p, DTensor) for p in velocity.parameters())
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 16, 16, generator=g), torch.rand(3, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(velocity(x, t), reference(x, t), rtol=1e-5, atol=1e-6)
    step4 = load_model(sharded / "checkpoints" / "step_00000004" / "models" / "velocity")
    assert all(torch.equal(v, b["velocity"][k]) for k, v in step4.state_dict().items())
