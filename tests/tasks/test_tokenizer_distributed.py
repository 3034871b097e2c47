"""The tokenizer task on two processes (gloo on CPU, `accelerate launch`): the VAE's encode/decode step
runs through the DDP wrapper, so gradients are averaged, and posterior noise comes from BatchRandom, so
two processes with batch B train exactly like one process with batch 2B, discriminator included."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import pattern_rgb, write_image  # noqa: E402

from launched import run_launched  # noqa: E402
from mmflow.tasks import load_recipe  # noqa: E402
from mmflow.tasks.tokenizer import DISCRIMINATOR, TOKENIZER, TokenizerTask  # noqa: E402
from mmflow.train.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SETTINGS = ["model.preset=test", "model.vae={}", "data.size=16", "data.held_out=2", "data.stats_items=8",
            "model.loss.adv_weight=0.5", "model.loss.adv_start_step=1", "model.loss.adaptive_adv_weight=false",
            "model.discriminator.base_channels=8", "model.discriminator.n_layers=1", "train.max_steps=3",
            "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=3", "train.trackers=[]",
            "train.device=cpu", "train.eps=1e-4"]
# Adam's default eps (1e-8) turns a gradient element that is ~0 up to float noise into a full +-lr step, so
# a different summation order (another CPU, DDP's bucketed all-reduce) moved single weights by 3e-5. With
# eps=1e-4 such elements take steps proportional to their gradient, and the runs agree to ~1e-7.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_doubled_batch(tmp_path):
    for i in range(10):
        write_image(tmp_path / "data" / f"img_{i:02d}.png", pattern_rgb(16, 16, seed=i))
    settings = [f"data.path={tmp_path / 'data'}", *SETTINGS]
    recipe = load_recipe(REPO / "tokenizers" / "image_f8.yaml", [*settings, "train.batch_size=4"])
    Trainer(recipe, TokenizerTask(recipe), tmp_path / "single").train()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "mmflow", "train",
           str(REPO / "tokenizers" / "image_f8.yaml"),
           *settings, "train.batch_size=2", "--run-dir", str(tmp_path / "double")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = run_launched(cmd, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in (TOKENIZER, DISCRIMINATOR):
        a = load_file(str(tmp_path / "single" / "model" / "models" / name / "model.safetensors"))
        b = load_file(str(tmp_path / "double" / "model" / "models" / name / "model.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=f"{name}.{k}")
