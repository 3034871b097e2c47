"""`mmflow train --resume` with nothing to resume, as a user runs it: one clean line, exit code 2, and
nothing written, in each way a run folder can lack a usable checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmflow.cli import main
from mmflow.train import checkpoint as ckpt
from mmflow.utils.fs import KILL_AT_ENV
from tests.conftest import REPO

TOY = str(REPO / "recipes" / "toy2d.yaml")
TINY = ["model.hidden=16", "model.depth=1", "model.time_frequency_dim=8", "data.num_samples=256",
        "train.batch_size=16", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=2",
        "train.checkpoint_every=2", "train.device=cpu", "sample.num_samples=64", "sample.steps=2"]


def mmflow(*args: str, cwd: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(KILL_AT_ENV, None)
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "mmflow", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _assert_one_clean_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mmflow train: error: --resume:")]
    assert len(errors) == 1, done.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", TOY, *TINY, "--run-dir", str(run)]) == 0
    return run


def test_resume_of_a_run_folder_that_never_existed_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "never"
    _assert_one_clean_line(mmflow("train", TOY, *TINY, "--run-dir", str(run), "--resume", cwd=tmp_path),
                           f"the run folder {run} does not exist", "start the run without --resume")
    assert not (tmp_path / "runs").exists()  # decided before any work: no folder, recipe.yaml or train.log


def test_resume_after_a_kill_before_the_first_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    killed = mmflow("train", TOY, *TINY, "--run-dir", str(run), cwd=tmp_path, kill_at="step:1")
    assert killed.returncode == -9, killed.stderr
    assert (run / "train.log").exists() and not ckpt.complete_checkpoints(run / "checkpoints")
    before = _snapshot(run)
    _assert_one_clean_line(mmflow("train", TOY, *TINY, "--run-dir", str(run), "--resume", cwd=tmp_path),
                           f"{run / 'checkpoints'} holds no complete checkpoint", "start the run without --resume")
    assert _snapshot(run) == before


def test_resume_with_every_checkpoint_deleted(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for ref in ckpt.list_checkpoints(run / "checkpoints"):
        shutil.rmtree(ref.path)
    _assert_one_clean_line(mmflow("train", TOY, *TINY, "--run-dir", str(run), "--resume", cwd=tmp_path),
                           "holds no complete checkpoint (no step_* folders)")


def test_resume_with_every_checkpoint_corrupt_names_each(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for ref in ckpt.list_checkpoints(run / "checkpoints"):
        weights = ref.path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated by a full disk, say
    _assert_one_clean_line(mmflow("train", TOY, *TINY, "--run-dir", str(run), "--resume", cwd=tmp_path),
                           "no usable checkpoint", "step_00000004: model.safetensors has", "step_00000002:",
                           "to start afresh")
