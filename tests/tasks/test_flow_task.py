"""FlowMatchingTask's shared pieces: the configured loss reaches the trainer, and small-noise validation
goes through the recipe's sampler (known answers with linear velocity fields)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmflow.flow.loss import residual_loss
from mmflow.tasks.flow_task import STABILITY_ROWS
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.random import BatchRandom


class LinearVelocity(nn.Module):
    """u(x, t) = a x for every class: Euler with n steps maps x0 to (1 + a / n)^n x0."""

    null_label = 8

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, cond=None, drop=None):
        self.seen.append(cond)
        return self.a * x


@pytest.mark.parametrize("steps", [1, 4])
def test_stability_of_a_linear_field_is_the_euler_stretch(make_toy_recipe, steps):
    task = Toy2DTask(make_toy_recipe("sample.solver=euler", f"sample.steps={steps}", "sample.guidance=1",
                                      "sample.grid=uniform", "sample.shift=1.0"))
    velocity = LinearVelocity(0.5)
    out = task.stability(velocity, torch.device("cpu"))
    stretch = (1 + 0.5 / steps) ** steps
    assert set(out) == {f"stability_{k}_{s}" for k in ("amp", "rms") for s in ("1e-3", "1e-2", "1e-1")}
    for s in ("1e-3", "1e-2", "1e-1"):
        assert out[f"stability_amp_{s}"] == pytest.approx(stretch, rel=1e-4)
    # 4 sampler runs (base + 3 scales) of `steps` calls on 8 rows, each with a label drawn per row
    assert len(velocity.seen) == 4 * steps
    labels = velocity.seen[0]
    assert labels.shape == (STABILITY_ROWS,) and 0 <= labels.min() and labels.max() < 8
    assert task.stability(velocity, torch.device("cpu")) == out  # fixed noise, directions and labels


def test_stability_takes_a_given_condition_and_features(make_toy_recipe):
    task = Toy2DTask(make_toy_recipe("sample.solver=euler", "sample.steps=2", "sample.guidance=1"))
    velocity = LinearVelocity(0.0)  # the identity map: amplification 1
    cond = torch.arange(3)
    out = task.stability(velocity, torch.device("cpu"), cond, rows=3, features=lambda y: y[:, :1])
    assert out["stability_amp_1e-2"] == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(velocity.seen[0], cond) and "stability_feat_1e-1" in out


def test_flow_loss_uses_the_recipe_loss(make_toy_recipe):
    task = Toy2DTask(make_toy_recipe("flow.loss=pseudo_huber", "flow.huber_c=0.1", "flow.cfg_dropout=0"))
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    out = task.flow_loss(LinearVelocity(0.0), z, None, BatchRandom(0, 0, 0, 0, 5, 1))
    # zero velocity: the residual is the target z - eps; the logged per-example value is the pseudo-Huber one
    rng = BatchRandom(0, 0, 0, 0, 5, 1)
    t = rng.draw(lambda n, g: task.time_sampler.sample(n, generator=g))
    target = z - rng.randn(2)
    torch.testing.assert_close(out.per_example, residual_loss(target, "pseudo_huber", 0.1))
    torch.testing.assert_close(out.t, t)
