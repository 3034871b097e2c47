"""Classifier-free guidance: one batched call, the (1 - w) / w mix, dict conditions, guided sampling."""

import pytest
import torch

from mmflow.flow.analytic import eight_gaussians
from mmflow.flow.paths import GaussianPath
from mmflow.flow.schedules import CondOTSchedule
from mmflow.sampling.grids import uniform_grid
from mmflow.sampling.guidance import cfg_velocity
from mmflow.sampling.solvers import ode_solve


class CountingModel:
    """Toy conditional velocity u(x, t | c) = c - x * t (c broadcast per row); logs each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], cond))
        c = cond["emb"] * cond["scale"][:, None] if isinstance(cond, dict) else cond
        return c - x * t[:, None]


def _inputs(b=4, d=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, d, generator=g), torch.rand(b, generator=g), torch.randn(b, d, generator=g)


def test_one_call_on_two_b_rows_null_first():
    model = CountingModel()
    x, t, cond = _inputs()
    null = torch.zeros(3)  # no batch dim
    out = cfg_velocity(model, cond, null, 4.0)(x, t)
    assert len(model.calls) == 1
    rows, stacked = model.calls[0]
    assert rows == 8 and stacked.shape == (8, 3)
    assert (stacked[:4] == 0).all() and torch.equal(stacked[4:], cond)
    u_null, u_cond = -x * t[:, None], cond - x * t[:, None]
    torch.testing.assert_close(out, -3.0 * u_null + 4.0 * u_cond)


def test_guidance_one_is_conditional_with_a_single_b_row_call():
    model = CountingModel()
    x, t, cond = _inputs()
    out = cfg_velocity(model, cond, torch.zeros(3), 1.0)(x, t)
    assert [rows for rows, _ in model.calls] == [4]
    assert torch.equal(model.calls[0][1], cond)
    torch.testing.assert_close(out, cond - x * t[:, None])


def test_guidance_zero_is_unconditional():
    model = CountingModel()
    x, t, cond = _inputs()
    null = torch.full((1, 3), 0.5)  # batch-1 null
    out = cfg_velocity(model, cond, null, 0.0)(x, t)
    torch.testing.assert_close(out, 0.5 - x * t[:, None])


def test_dict_conditions_and_batch_one_cond():
    model = CountingModel()
    x, t, _ = _inputs(b=5)
    cond = {"emb": torch.randn(1, 3), "scale": torch.tensor([2.0])}  # one prompt for 5 samples
    null = {"emb": torch.zeros(3), "scale": torch.ones(5)}
    out = cfg_velocity(model, cond, null, 2.5)(x, t)
    rows, stacked = model.calls[0]
    assert rows == 10 and stacked["emb"].shape == (10, 3) and stacked["scale"].shape == (10,)
    u_null, u_cond = -x * t[:, None], 2.0 * cond["emb"] - x * t[:, None]
    torch.testing.assert_close(out, -1.5 * u_null + 2.5 * u_cond)
    with pytest.raises(ValueError):
        cfg_velocity(model, {"emb": torch.randn(3, 3), "scale": torch.ones(3)}, null, 2.0)(x, t)


def _labelled_mixture_model(gm, path):
    """u(x, t | k) = exact velocity of component k alone; label -1 = the whole mixture (null)."""
    components = [gm.component(k) for k in range(gm.n_components)]

    def model(x, t, label):
        out = gm.velocity(x, t, path)
        for k, comp in enumerate(components):
            rows = label == k
            if rows.any():
                out[rows] = comp.velocity(x[rows], t[rows], path)
        return out

    return model


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guided_sampling_lands_on_the_asked_component(guidance):
    gm = eight_gaussians(radius=4.0, std=0.5, dtype=torch.float32)
    path = GaussianPath(CondOTSchedule())
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (2_000,), generator=g)
    x0 = torch.randn(2_000, 2, generator=g)
    fn = cfg_velocity(_labelled_mixture_model(gm, path), labels, torch.tensor(-1), guidance)
    with torch.no_grad():
        x = ode_solve(fn, x0, uniform_grid(40), "heun").x
    assert (torch.cdist(x, gm.means).argmin(1) == labels).float().mean() > 0.99
    # offsets from the asked mean, in the radial / tangential frame of that mean
    mu = gm.means[labels]
    offset = x - mu
    radial = (offset * mu).sum(1) / 4.0
    tangential = (offset[:, 1] * mu[:, 0] - offset[:, 0] * mu[:, 1]) / 4.0
    if guidance == 1.0:  # exactly component k: N(mu_k, 0.25 I)
        assert abs(radial.mean()) < 0.05 and abs(tangential.mean()) < 0.05
        assert radial.var().item() == pytest.approx(0.25, abs=0.03)
        assert tangential.var().item() == pytest.approx(0.25, abs=0.03)
    else:  # w > 1 pushes away from the other classes (outwards) and sharpens
        assert radial.mean() > 0.3 and abs(tangential.mean()) < 0.05
        assert radial.var() < 0.2 and tangential.var() < 0.1


def test_cfg_passes_a_meanflow_jump_to_both_branches() -> None:
    seen = []

    def model(x, t, cond, h=None):  # u = cond + h: the guided value shows which rows got which h
        seen.append(h)
        return cond[:, None].float() + h[:, None]

    fn = cfg_velocity(model, torch.tensor([2, 4]), torch.tensor(0), 3.0)
    out = fn(torch.zeros(2, 1), torch.zeros(2), h=torch.tensor([0.5, 1.0]))
    assert seen[0].tolist() == [0.5, 1.0, 0.5, 1.0]  # [null; cond] rows, each with its own jump
    torch.testing.assert_close(out, torch.tensor([[6.5], [13.0]]))  # u_null + 3 (u_cond - u_null)
