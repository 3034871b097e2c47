"""The toy-2D task end to end: a short training reaches a quality bound, CFG picks the asked class,
and `mmflow sample` writes what it says."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mmflow.cli import main
from mmflow.flow.analytic import eight_gaussians
from mmflow.pipeline import FlowPipeline
from mmflow.tasks import load_recipe
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.trainer import Trainer
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, make_toy_recipe):
    """A smaller default: 8-gaussians, 900 steps of a 128-wide MLP (about 30 s on 2 cores)."""
    run = tmp_path_factory.mktemp("toy_quality")
    recipe = make_toy_recipe("model.hidden=128", "model.depth=3", "model.time_frequency_dim=32", "train.batch_size=256",
                        "train.max_steps=900", "train.warmup_steps=50", "train.log_every=100",
                        "train.checkpoint_every=900", "data.num_samples=50000", "sample.num_samples=5000",
                        "sample.steps=8", base=())
    Trainer(recipe, Toy2DTask(recipe), run).train()
    return run


def _quality(run, *overrides):
    pipe = FlowPipeline.from_pretrained(run)
    with torch.no_grad():
        return pipe.task.evaluate(pipe.velocity, torch.device("cpu"), pipe.sample_config(overrides))


def test_short_training_reaches_the_loose_quality_bound(trained_run):
    # the default run must reach 1.5x (16 NFE) and 1.2x (100 NFE) of the floor; this smaller run gets
    # looser bounds. With 5,000 points the floor itself is ~1.4x the 10,000-point floor.
    m16 = _quality(trained_run, "solver=heun", "steps=8")
    assert m16["nfe"] == 16
    assert m16["ratio_sliced_w1"] < 1.8, m16
    m100 = _quality(trained_run, "solver=rk4", "steps=25")
    assert m100["nfe"] == 100
    assert m100["ratio_sliced_w1"] < 1.5, m100
    bad = _quality(trained_run, "solver=euler", "steps=2")  # the metric sees a poor sampler
    assert bad["ratio_sliced_w1"] > 2 * m100["ratio_sliced_w1"], (bad, m100)


def test_validation_reports_small_noise_stability(trained_run):
    metrics = json.loads((trained_run / "validation" / "step_00000900" / "metrics.json").read_text())
    amps = [metrics[f"stability_amp_{s}"] for s in ("1e-3", "1e-2", "1e-1")]
    # a trained flow is smooth: each class's unit Gaussian maps to a component of std 0.5, so small
    # perturbations shrink (~0.5), and the stretch does not depend on their size
    assert all(0.1 < a < 2 for a in amps), metrics
    assert max(amps) < 1.5 * min(amps), metrics


def test_guidance_samples_the_asked_component(trained_run):
    pipe = FlowPipeline.from_pretrained(trained_run)
    mixture = eight_gaussians()
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    hits = {}
    for w in (1.0, 3.0):
        cfg = pipe.sample_config([f"guidance={w}"])
        with torch.no_grad():
            x = pipe.task.sample(pipe.velocity, x0, torch.full((2000,), 5), cfg).x
        nearest = torch.cdist(x.double(), mixture.means).argmin(dim=1)
        hits[w] = (nearest == 5).float().mean().item()
    assert hits[1.0] > 0.9 and hits[3.0] >= hits[1.0] - 0.01, hits


def test_sample_command_writes_samples_and_pictures(trained_run, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(trained_run), "num_samples=300", "solver=rk4", "steps=5", "--label", "2",
                 "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nfe"] == 20 and info["samples"] == 300 and info["inputs"] == [2]
    tensors = load_file(str(out / "samples.safetensors"))
    assert tensors["samples"].shape == (300, 2) and torch.all(tensors["labels"] == 2)
    assert tensors["seeds"].tolist() == list(range(300))  # sample i from seed 0 + i
    centre = eight_gaussians().means[2].float()
    assert (tensors["samples"] - centre).norm(dim=1).median() < 1.0
    assert (out / "samples.png").stat().st_size > 1000


def test_sample_command_rejects_an_unknown_label(trained_run, tmp_path, capsys):
    assert main(["sample", str(trained_run), "num_samples=10", "--label", "8", "--out", str(tmp_path / "x")]) == 2
    assert "--label 8" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_meanflow_one_step_samples_beat_one_euler_step_of_the_flow_model(trained_run, tmp_path, fresh_accelerate):
    # the default class-conditional 8-gaussians, MeanFlow's own recipe (time_scale 1, the paper's logit-normal)
    # on the flow model's data, width and batch: one Euler step of a flow model lands each class on its
    # component's mean at any training length (at t = 0 the velocity is E[x1 | class] - x0), one MeanFlow jump
    # spreads it over the component (~40 s on one thread; at 900 steps MeanFlow's 1 step is not there yet:
    # 0.32 vs 0.25).
    fresh_accelerate()
    recipe = load_recipe(REPO / "recipes" / "meanflow_toy2d.yaml", [
        "model.hidden=128", "model.depth=3", "model.time_frequency_dim=32", "data.num_samples=50000",
        "train.batch_size=256", "train.max_steps=1500", "train.warmup_steps=50", "train.checkpoint_every=1500",
        "train.log_every=300", "sample.num_samples=2000"])
    assert recipe.data.conditional
    Trainer(recipe, Toy2DTask(recipe), tmp_path / "mf").train()
    mf = _quality(tmp_path / "mf", "solver=meanflow", "steps=1", "num_samples=2000")
    fm = _quality(trained_run, "solver=euler", "steps=1", "num_samples=2000")
    assert mf["nfe"] == fm["nfe"] == 1
    assert mf["sliced_w1"] < 0.75 * fm["sliced_w1"], (mf, fm)


def test_reflow_straightens_the_paths_and_improves_one_step_samples(trained_run, tmp_path, fresh_accelerate,
                                                                     make_toy_recipe):
    from mmflow.flow.reflow import straightness

    recipe = make_toy_recipe("model.hidden=128", "model.depth=3", "model.time_frequency_dim=32", "train.batch_size=256",
                             "train.max_steps=400", "train.warmup_steps=20", "train.log_every=100",
                             "train.checkpoint_every=400", "sample.num_samples=2000", "sample.solver=euler",
                             "sample.steps=1", "sample.guidance=1", f"flow.reflow.teacher={trained_run}",
                             "flow.reflow.pairs=8192", f"train.init_from={trained_run}", f"run_dir={tmp_path / 'student'}",
                             base=())
    Trainer(recipe, Toy2DTask(recipe), tmp_path / "student").train()
    assert (tmp_path / "student" / "reflow_pairs" / "pairs.safetensors").is_file()
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 8, (2000,), generator=torch.Generator().manual_seed(2))
    score = {}
    for name, run in (("teacher", trained_run), ("student", tmp_path / "student")):
        pipe = FlowPipeline.from_pretrained(run)
        with torch.no_grad():
            s = straightness(lambda x, t: pipe.velocity(x, t, labels), x0, 32).relative
        score[name] = (s, _quality(run, "solver=euler", "steps=1", "guidance=1")["sliced_w1"])
    (s_teacher, w_teacher), (s_student, w_student) = score["teacher"], score["student"]
    assert s_student < 0.2 * s_teacher, score  # measured: 0.0176 -> 0.0005 on a smaller teacher
    assert w_student < 0.8 * w_teacher, score  # 0.249 -> 0.158
