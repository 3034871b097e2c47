"""`kill -9` at any point of a run, then `mmflow train --resume`: the same weights and metrics as an
uninterrupted run, and nothing left behind.

The commands run through mmflow's CLI in killable child processes (tests/train/forking_cli.py). A
kill lands at a named point with MMFLOW_TEST_KILL_AT="phase:count" (mmflow.utils.fs.crash_point:
after a training step, in a checkpoint save, in the model/ export, in a validation), or at a seeded
random moment.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file

from mmflow.train import checkpoint as ckpt
from mmflow.utils.fs import KILL_AT_ENV

REPO = Path(__file__).resolve().parents[2]
TOY = str(REPO / "recipes" / "toy2d.yaml")
# 6 steps, checkpoints at 2, 4, 6 (two kept), a validation at 4 and at the end; log_every=3 leaves
# unlogged losses in the checkpoints at 2 and 4, which a resumed run must average in as well
TINY = ["model.hidden=16", "model.depth=1", "model.time_frequency_dim=8", "data.num_samples=256",
        "train.batch_size=16", "train.max_steps=6", "train.warmup_steps=1", "train.log_every=3",
        "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.validate_every=4", "train.device=cpu",
        "sample.num_samples=64", "sample.steps=2"]
KILLED = -9
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="the child processes are forked")]


class Cli:
    """`mmflow ...` in a child process that can be killed; results as (exit code, output)."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        env.pop(KILL_AT_ENV, None)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forking_cli.py"))], cwd=cwd,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *args: str, kill_at: str | None = None, kill_after: float | None = None) -> tuple[int, str]:
        job = {"argv": list(args), "env": {KILL_AT_ENV: kill_at} if kill_at else {}, "kill_after": kill_after}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["rc"], reply["output"]

    def train(self, run: Path, *flags: str, **kill: object) -> tuple[int, str]:
        return self("train", TOY, *TINY, "--run-dir", str(run), *flags, **kill)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory):
    c = Cli(tmp_path_factory.mktemp("cli"))
    yield c
    c.close()


class Straight(NamedTuple):
    run: Path
    seconds: float  # how long it took here: random kill times are drawn within it


@pytest.fixture(scope="module")
def straight(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Straight:
    """The uninterrupted run every killed one must end up equal to."""
    run = tmp_path_factory.mktemp("straight") / "run"
    t0 = time.monotonic()
    rc, out = cli.train(run)
    assert rc == 0, out
    return Straight(run, time.monotonic() - t0)


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.parent.name: load_file(str(p)) for p in sorted((run / "model" / "models").glob("*/model.safetensors"))}


def _leftovers(run: Path) -> list[Path]:
    """Temporaries of an interrupted write anywhere in the run folder."""
    return [p for p in run.rglob("*") if p.name.startswith((".tmp-", ".old-")) or p.name.endswith(".tmp")]


def _assert_same_run(run: Path, straight: Straight) -> None:
    a, b = _weights(run), _weights(straight.run)
    assert a.keys() == b.keys() == {"velocity", "velocity_ema"}
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}.{k} differs from the uninterrupted run"
    assert json.loads((run / "metrics.json").read_text()) == json.loads((straight.run / "metrics.json").read_text())
    for step in (4, 6):
        rel = Path("validation") / ckpt.step_dir_name(step) / "metrics.json"
        assert json.loads((run / rel).read_text()) == json.loads((straight.run / rel).read_text()), rel
    assert [r.step for r in ckpt.list_checkpoints(run / "checkpoints")] == [6, 4]
    assert ckpt.export_matches(run / "checkpoints" / ckpt.step_dir_name(6), run / "model")
    assert not _leftovers(run), _leftovers(run)


def _has_checkpoint(run: Path) -> bool:
    return bool(ckpt.complete_checkpoints(run / "checkpoints"))


def test_kills_in_every_phase_then_resume_match_the_uninterrupted_run(cli: Cli, straight: Straight,
                                                                      tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpts = run / "checkpoints"

    # killed in the first checkpoint save: only its temporary folder is there
    assert cli.train(run, kill_at="checkpoint:1")[0] == KILLED
    assert [p.name for p in ckpts.iterdir()] == [".tmp-step_00000002"]
    rc, out = cli.train(run, "--resume")  # nothing to resume: one clean line that says what to do
    assert rc == 2 and "Traceback" not in out, out
    assert "error: --resume:" in out and ".tmp-step_00000002: a save that did not finish" in out
    assert "start the run without --resume" in out

    # a fresh start is allowed, says what it cleaned; killed while filling the first model/ export
    rc, out = cli.train(run, kill_at="export:1")
    assert rc == KILLED
    assert f"removed {ckpts / '.tmp-step_00000002'}" in out
    assert not (run / "model").exists() and len(list(run.glob(".tmp-model-*"))) == 1
    assert [r.step for r in ckpt.complete_checkpoints(ckpts)] == [2]

    # resumed (model/ is exported again from step 2: export point 1), killed between the two renames
    # of the model/ export after step 4 (points 2: filled, 3: renamed aside): no model/ at all
    rc, out = cli.train(run, "--resume", kill_at="export:3")
    assert rc == KILLED, out
    assert not (run / "model").exists()
    assert len(list(run.glob(".old-model-*"))) == 1 and len(list(run.glob(".tmp-model-*"))) == 1

    # resumed: model/ restored from the old copy and named, then exported again from step 4; the
    # validation at step 4 never ran, so it runs now, and is killed before its metrics are written
    rc, out = cli.train(run, "--resume", kill_at="validation:1")
    assert rc == KILLED
    assert "restored" in out and str(run / "model") in out
    val4 = run / "validation" / ckpt.step_dir_name(4)
    assert list(val4.glob("*.png")) and not (val4 / "metrics.json").exists()

    # resumed: the validation at step 4 is finished; killed after step 5
    assert cli.train(run, "--resume", kill_at="step:1")[0] == KILLED
    assert (val4 / "metrics.json").exists()

    # resumed from 4 again (step 5 was not saved); killed in the final validation
    assert cli.train(run, "--resume", kill_at="validation:1")[0] == KILLED  # the one at 4 is done
    assert (ckpts / ckpt.step_dir_name(6)).is_dir() and not (run / "metrics.json").exists()
    assert not (run / "validation" / ckpt.step_dir_name(6) / "metrics.json").exists()

    # resumed at the end: the missing final validation runs, and the run equals the uninterrupted one
    rc, out = cli.train(run, "--resume")
    assert rc == 0, out
    _assert_same_run(run, straight)

    # resuming the finished run keeps its results, byte for byte, and prints them again
    before = (run / "metrics.json").read_bytes()
    rc, again = cli.train(run, "--resume")
    assert rc == 0 and "quality (heun x2" in again, again
    assert (run / "metrics.json").read_bytes() == before

    # metrics.json as older versions wrote it on such a resume (NaN is not JSON): rebuilt from the
    # checkpoint's loss history and the final validation, without validating again
    (run / "metrics.json").write_text('{"final_loss": NaN, "step": 6}')
    mtime = (run / "validation" / ckpt.step_dir_name(6) / "samples.png").stat().st_mtime_ns
    assert cli.train(run, "--resume")[0] == 0
    _assert_same_run(run, straight)
    assert (run / "validation" / ckpt.step_dir_name(6) / "samples.png").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("seed", [0, 1])
def test_seeded_random_kills_then_resume_match_the_uninterrupted_run(cli: Cli, straight: Straight, tmp_path: Path,
                                                                      seed: int) -> None:
    """Seed 0 kills at random crash points, seed 1 at random moments (wherever the process is then);
    each run is resumed (or started afresh while there is no checkpoint) until one ends by itself."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    kills = []
    for _ in range(6):
        flags = ["--resume"] if _has_checkpoint(run) else []
        if seed == 0:
            point = f"any:{rng.randint(1, 8)}"  # a fresh run passes 16 points, one resumed at step 4 about 7
            rc, out = cli.train(run, *flags, kill_at=point)
        else:
            seconds = rng.uniform(0.05, 1.0) * straight.seconds
            point = f"after {seconds:.2f} s"
            rc, out = cli.train(run, *flags, kill_after=seconds)
        assert rc in (0, KILLED), out
        if rc == 0:  # the kill came too late: the run finished
            break
        kills.append(point)
    else:
        rc, out = cli.train(run, "--resume")
        assert rc == 0, out
    assert len(kills) >= 2 or seed == 1, kills  # random moments: how many land depends on the machine's speed
    _assert_same_run(run, straight)
