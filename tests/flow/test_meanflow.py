"""mmflow/flow/meanflow.py: the JVP equals central finite differences through the real networks, the true
average velocity is a fixed point of the target, and rows with h = 0 are flow matching's loss exactly."""

from __future__ import annotations

import pytest
import torch

from mmflow.config import ConfigError
from mmflow.flow.cfg import take_rows
from mmflow.flow.loss import cfm_loss
from mmflow.flow.meanflow import guided_velocity, jump_times, meanflow_target
from mmflow.models.mmdit import MMDiT, MMDiTConfig
from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig
from mmflow.recipe import check_before_work
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.random import BatchRandom


def _perturbed(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """model with every weight moved off its (zero) init, so every path, h's included, is live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _rng() -> BatchRandom:
    """The same 16-row batch's random stream each call: a test replays the loss's draws in its order."""
    return BatchRandom(seed=1, step=3, group=0, slot=0, local_batch=16, num_slots=1)


def _check_against_finite_differences(u_fn, z: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> float:
    """max |JVP - central FD| / max |FD| along the tangent (v, 1, -1), and the target's assembly."""
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    out = meanflow_target(u_fn, z, t, h, v)
    e = 1e-6  # float64; the time features reach 1000 rad per unit t, so truncation ~ e^2 1e9 stays ~1e-3
    with torch.no_grad():
        fd = (u_fn(z + e * v, t + e, h - e) - u_fn(z - e * v, t - e, h + e)) / (2 * e)
        torch.testing.assert_close(out.u, u_fn(z, t, h))
    torch.testing.assert_close(out.target, v + h.view(-1, *[1] * (z.ndim - 1)) * out.du_dt)
    assert out.u.requires_grad and not out.target.requires_grad  # stop-gradient on the target
    return float((out.du_dt - fd).abs().max() / fd.abs().max())


def _toy_mlp_case():
    """(u_fn, z (6, 2), t (6,), h (6,), generator): a perturbed float64 toy MLP under 6 labels (4 = the null)."""
    cfg = MLPVelocityConfig(dim=2, hidden=32, depth=2, num_classes=4, time_frequency_dim=16, interval_embed=True)
    torch.manual_seed(0)
    model = _perturbed(MLPVelocity(cfg)).double()
    g = torch.Generator().manual_seed(1)
    z, t = torch.randn(6, 2, generator=g, dtype=torch.float64), 0.5 * torch.rand(6, generator=g, dtype=torch.float64)
    h, y = 0.4 * torch.rand(6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    return (lambda z_, t_, h_: model(z_, t_, y, h=h_)), z, t, h, g


def test_jvp_of_the_toy_mlp_matches_central_finite_differences() -> None:
    u_fn, z, t, h, _ = _toy_mlp_case()
    err = _check_against_finite_differences(u_fn, z, t, h)
    assert err < 1e-5, err


def test_the_model_tangent_takes_du_dt_along_the_networks_own_velocity() -> None:
    # improved MeanFlow: du/dt along u(z, t, 0), the marginal velocity, instead of the pair's v; central FD along it
    u_fn, z, t, h, g = _toy_mlp_case()
    h[2] = 0.0  # a flow-matching row: target v
    v = torch.randn(z.shape, generator=g, dtype=z.dtype)
    own = meanflow_target(u_fn, z, t, h, v, tangent="model")
    path = meanflow_target(u_fn, z, t, h, v)
    e = 1e-6
    with torch.no_grad():
        w = u_fn(z, t, torch.zeros_like(t))  # (6, 2): the model's own velocity
        fd = (u_fn(z + e * w, t + e, h - e) - u_fn(z - e * w, t - e, h + e)) / (2 * e)
    jumping = h > 0
    torch.testing.assert_close(own.du_dt[jumping], fd[jumping], rtol=1e-5, atol=1e-7)
    assert (own.target[~jumping] == v[~jumping]).all()
    assert (own.du_dt[jumping] - path.du_dt[jumping]).abs().max() > 1e-3  # not the path's tangent
    torch.testing.assert_close(own.u, path.u)
    with pytest.raises(ValueError, match="tangent must be"):
        meanflow_target(u_fn, z, t, h, v, tangent="marginal")


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_jvp_of_the_mmdit_matches_central_finite_differences(backend: str) -> None:
    # sdpa's CPU flash kernel has no forward-mode formula: the JVP must run it as math (plain_kernels)
    cfg = MMDiTConfig(in_channels=3, patch_size=(2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8,
                      pooled_dim=4, qk_norm="rms_norm", interval_embed=True)
    torch.manual_seed(0)
    model = _perturbed(MMDiT(cfg, attention_backend=backend), 0.05).double().train()  # train(): the fused GELU path too
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t, h = torch.tensor([0.2, 0.6], dtype=torch.float64), torch.tensor([0.5, 0.1], dtype=torch.float64)
    cond = {"text": torch.randn(2, 5, 8, generator=g, dtype=torch.float64),
            "text_mask": torch.tensor([[True] * 5, [True, True, False, False, False]]),
            "pooled": torch.randn(2, 4, generator=g, dtype=torch.float64)}
    err = _check_against_finite_differences(lambda z_, t_, h_: model(z_, t_, cond, h=h_), z, t, h)
    assert err < 1e-5, err
    out = meanflow_target(lambda z_, t_, h_: model(z_, t_, cond, h=h_), z, t, h, torch.randn_like(z))
    (out.u - out.target).pow(2).mean().backward()  # the gradient reaches the weights, the new embedder's too
    assert model.interval_embedder.mlp[2].weight.grad.abs().sum() > 0


def test_the_jvp_on_the_jumping_rows_alone_gives_every_rows_target_and_gradient() -> None:
    # rows_fn: the JVP runs on the rows with h > 0 only; the h = 0 rows' du/dt is 0 (their target is v), and
    # the target, u and the weights' gradient equal the JVP over every row
    cfg = MMDiTConfig(in_channels=3, patch_size=(2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8,
                      pooled_dim=4, qk_norm="rms_norm", interval_embed=True)
    torch.manual_seed(0)
    model = _perturbed(MMDiT(cfg), 0.05).double().train()
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.2, 0.6, 0.1, 0.4, 0.3], dtype=torch.float64)
    h = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.0], dtype=torch.float64)
    cond = {"text": torch.randn(5, 5, 8, generator=g, dtype=torch.float64),
            "text_mask": torch.ones(5, 5, dtype=torch.bool), "pooled": torch.randn(5, 4, generator=g, dtype=torch.float64)}
    seen: list[list[int]] = []

    def rows_fn(rows: torch.Tensor):
        seen.append(rows.tolist())
        c = take_rows(cond, rows)
        return lambda z_, t_, h_: model(z_, t_, c, h=h_)

    grads = []
    for fn in (None, rows_fn):
        model.zero_grad()
        out = meanflow_target(lambda z_, t_, h_: model(z_, t_, cond, h=h_), z, t, h, v, fn)
        (out.u - out.target).pow(2).sum().backward()
        grads.append([torch.zeros(()) if p.grad is None else p.grad.clone() for p in model.parameters()])
        if fn is None:
            every = out
    assert seen == [[0, 2]]  # the JVP saw the two jumping rows, nothing else
    torch.testing.assert_close(out.u, every.u)
    torch.testing.assert_close(out.target, every.target)
    assert out.du_dt[[1, 3, 4]].abs().max() == 0 and every.du_dt[[1, 3, 4]].abs().max() > 0
    torch.testing.assert_close(out.target[[1, 3, 4]], v[[1, 3, 4]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    model.zero_grad()  # no jumping row: no JVP at all
    meanflow_target(lambda z_, t_, h_: model(z_, t_, cond, h=h_), z, t, torch.zeros_like(h), v, rows_fn)
    assert seen == [[0, 2]]


def test_the_true_average_velocity_is_a_fixed_point_of_the_target() -> None:
    # data N(0, s1^2) in 1-D: the flow scales x_0 by s(t) = sqrt(t^2 s1^2 + (1 - t)^2), so
    # u(x, t, h) = x (s(t + h) / s(t) - 1) / h and v(x, t) = x s'(t) / s(t) exactly: target = u
    s1 = 0.3
    s = lambda t: torch.sqrt(t**2 * s1**2 + (1 - t) ** 2)  # noqa: E731
    ds = lambda t: (t * s1**2 - (1 - t)) / s(t)  # noqa: E731
    u_fn = lambda x, t, h: x * (s(t + h) / s(t) - 1)[:, None] / h[:, None]  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, generator=g, dtype=torch.float64)
    t, h = 0.5 * torch.rand(8, generator=g, dtype=torch.float64), 0.5 * torch.rand(8, generator=g, dtype=torch.float64)
    out = meanflow_target(u_fn, x, t, h, x * (ds(t) / s(t))[:, None])
    torch.testing.assert_close(out.target, out.u, rtol=1e-12, atol=1e-12)


def test_jump_times_sort_the_pair_only_where_asked() -> None:
    a, b = torch.tensor([0.2, 0.7, 0.5]), torch.tensor([0.6, 0.1, 0.9])
    t, h = jump_times(a, b, torch.tensor([True, True, False]))
    torch.testing.assert_close(t, torch.tensor([0.2, 0.1, 0.5]))
    torch.testing.assert_close(h, torch.tensor([0.4, 0.6, 0.0]))
    t, h = jump_times(a, b, torch.tensor([True, True, False]), fm_rows_time="min")  # the paper's sampler
    torch.testing.assert_close(t, torch.tensor([0.2, 0.1, 0.5]))  # the h = 0 row takes the smaller draw too
    torch.testing.assert_close(h, torch.tensor([0.4, 0.6, 0.0]))
    with pytest.raises(ValueError, match="fm_rows_time"):
        jump_times(a, b, torch.tensor([True, True, False]), fm_rows_time="max")


def test_with_no_jumps_the_meanflow_loss_is_the_fm_loss(make_toy_recipe) -> None:
    fm = make_toy_recipe()
    mf = make_toy_recipe("flow.objective=meanflow", "flow.meanflow.ratio_r_neq_t=0", "flow.meanflow.adaptive_p=0")
    fm_task, mf_task = Toy2DTask(fm), Toy2DTask(mf)
    fm_model, mf_model = fm_task.build_models()["velocity"], mf_task.build_models()["velocity"]
    _perturbed(fm_model)
    state, changes = mf_model.adapt_init_state(fm_model.state_dict())  # init_from an FM model
    mf_model.load_state_dict(state)
    assert changes and "interval" in changes[0]
    z, labels = torch.randn(16, 2), torch.randint(0, 8, (16,))
    a = fm_task.flow_loss(fm_model, z, labels, _rng())
    b = mf_task.flow_loss(mf_model, z, labels, _rng())
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(b.t, a.t)
    # MeanFlow logs the plain mse beside its loss (here equal: no adaptive weight, no jumps)
    assert a.logs == {} and b.logs["mse"] == pytest.approx(b.loss.item(), rel=1e-6)


def test_the_recipes_tangent_reaches_the_target(make_toy_recipe) -> None:
    base = ("flow.objective=meanflow", "flow.meanflow.ratio_r_neq_t=1", "flow.meanflow.adaptive_p=0")
    z, labels = torch.randn(16, 2), torch.randint(0, 8, (16,))
    losses = {}
    for tangent in ("path", "model"):
        task = Toy2DTask(make_toy_recipe(*base, f"flow.meanflow.tangent={tangent}"))
        torch.manual_seed(0)
        model = task.build_models()["velocity"]
        _perturbed(model)
        losses[tangent] = task.flow_loss(model, z, labels, _rng()).loss
    assert torch.isfinite(losses["model"]) and abs(losses["model"].item() - losses["path"].item()) > 1e-4


def test_the_guided_velocitys_fixed_point_is_the_cfg_field() -> None:
    # u_c = target(u_c) exactly where u_c = u_null + omega / (1 - kappa) (v_c - u_null): CFG at omega / (1 - kappa)
    g = torch.Generator().manual_seed(0)
    v, u_null = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    for omega, kappa in ((3.0, 0.0), (2.0, 0.5)):
        cfg_field = u_null + omega / (1 - kappa) * (v - u_null)
        torch.testing.assert_close(guided_velocity(v, u_null, omega, cfg_field, kappa), cfg_field)
    torch.testing.assert_close(guided_velocity(v, u_null, 1.0), v)  # omega 1: the path's own velocity
    with pytest.raises(ValueError, match="kappa > 0 needs"):
        guided_velocity(v, u_null, 2.0, kappa=0.5)


def test_guidance_in_the_target_mixes_in_the_models_own_null_velocity(make_toy_recipe) -> None:
    # no jumps and no adaptive weight: the loss is the MSE of u(z_t, t, 0 | c) against omega v + (1 - omega)
    # u(z_t, t, 0 | null), the null velocity from the model's own forward with every row dropped, no gradient
    omega = 3.0
    recipe = make_toy_recipe("flow.objective=meanflow", "flow.meanflow.ratio_r_neq_t=0", "flow.meanflow.adaptive_p=0",
                             "flow.cfg_dropout=0", f"flow.meanflow.guidance={omega}")
    task = Toy2DTask(recipe)
    model = task.build_models()["velocity"]
    _perturbed(model)
    z, labels = torch.randn(16, 2), torch.randint(0, 8, (16,))
    got = task.flow_loss(model, z, labels, _rng())
    r = _rng()  # the same draws in the same order: t, then the noise
    t = r.draw(lambda n, g: task.time_sampler.sample(n, generator=g))
    ps = task.path.sample(z, t, r.randn(*z.shape[1:]))
    zero, everyone = torch.zeros(16), torch.ones(16, dtype=torch.bool)
    with torch.no_grad():
        pred = model(ps.x_t, t, labels, h=zero)
        target = omega * ps.target + (1 - omega) * model(ps.x_t, t, labels, h=zero, drop=everyone)
    torch.testing.assert_close(got.loss, cfm_loss(pred, target, t).loss, rtol=1e-5, atol=0)
    plain = make_toy_recipe("flow.objective=meanflow", "flow.meanflow.ratio_r_neq_t=0", "flow.meanflow.adaptive_p=0",
                            "flow.cfg_dropout=0")
    assert abs(Toy2DTask(plain).flow_loss(model, z, labels, _rng()).loss.item() - got.loss.item()) > 1e-3


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    """A small toy flow model's run folder (a few steps: the tests need its velocity, not its quality)."""
    from tests.toy_recipes import reset_accelerate, toy_recipe
    from mmflow.train.trainer import Trainer

    reset_accelerate()
    run = tmp_path_factory.mktemp("teacher")
    recipe = toy_recipe("train.max_steps=4", "train.checkpoint_every=4", "train.validate_every=0")
    Trainer(recipe, Toy2DTask(recipe), run).train()
    return run


@pytest.mark.parametrize("omega", [1.0, 3.0])
def test_a_teacher_gives_the_target_its_velocity_and_its_null(make_toy_recipe, toy_teacher, omega) -> None:
    # no jumps and no adaptive weight: the loss is the MSE of u(z_t, t, 0 | c) against the teacher's guided
    # velocity omega v_T(c) + (1 - omega) v_T(null) at the same x_t, whatever the pair's own velocity
    from mmflow.pipeline import FlowPipeline

    recipe = make_toy_recipe("flow.objective=meanflow", "flow.meanflow.ratio_r_neq_t=0", "flow.meanflow.adaptive_p=0",
                             "flow.cfg_dropout=0", f"flow.meanflow.guidance={omega}",
                             f"flow.meanflow.teacher={toy_teacher}")
    task = Toy2DTask(recipe)
    model = _perturbed(task.build_models()["velocity"])
    z, labels = torch.randn(16, 2), torch.randint(0, 8, (16,))
    got = task.flow_loss(model, z, labels, _rng())
    r = _rng()
    t = r.draw(lambda n, g: task.time_sampler.sample(n, generator=g))
    ps = task.path.sample(z, t, r.randn(*z.shape[1:]))
    teacher = FlowPipeline.from_pretrained(toy_teacher).velocity
    everyone = torch.ones(16, dtype=torch.bool)
    with torch.no_grad():
        pred = model(ps.x_t, t, labels, h=torch.zeros(16))
        target = omega * teacher(ps.x_t, t, labels) + (1 - omega) * teacher(ps.x_t, t, labels, drop=everyone)
    torch.testing.assert_close(got.loss, cfm_loss(pred, target, t).loss, rtol=1e-5, atol=0)
    assert (target - ps.target).abs().max() > 0.1  # not the pair's velocity


def test_a_teacher_jump_takes_du_dt_along_the_teachers_velocity(make_toy_recipe, toy_teacher) -> None:
    # every row jumps: the target is v_T + h du/dt with the JVP's z-tangent v_T, the teacher's velocity
    from mmflow.pipeline import FlowPipeline

    recipe = make_toy_recipe("flow.objective=meanflow", "flow.meanflow.ratio_r_neq_t=1", "flow.meanflow.adaptive_p=0",
                             "flow.cfg_dropout=0", f"flow.meanflow.teacher={toy_teacher}")
    task = Toy2DTask(recipe)
    model = _perturbed(task.build_models()["velocity"])
    z, labels = torch.randn(16, 2), torch.randint(0, 8, (16,))
    got = task.flow_loss(model, z, labels, _rng())
    r = _rng()  # FM's draws (t, noise), then the second time and the jumping rows
    t = r.draw(lambda n, g: task.time_sampler.sample(n, generator=g))
    eps = r.randn(*z.shape[1:])
    other = r.draw(lambda n, g: task.time_sampler.sample(n, generator=g))
    jump = r.draw(lambda n, g: torch.rand(n, generator=g) < 1.0)
    t, h = jump_times(t, other, jump)
    ps = task.path.sample(z, t, eps)
    with torch.no_grad():
        v = FlowPipeline.from_pretrained(toy_teacher).velocity(ps.x_t, t, labels)
    want = meanflow_target(lambda x_, t_, h_: model(x_, t_, labels, h=h_), ps.x_t, t, h, v)
    torch.testing.assert_close(got.loss, cfm_loss(want.u, want.target, t).loss, rtol=1e-5, atol=0)
    pair = meanflow_target(lambda x_, t_, h_: model(x_, t_, labels, h=h_), ps.x_t, t, h, ps.target)
    assert abs(cfm_loss(pair.u, pair.target, t).loss.item() - got.loss.item()) > 1e-3


def test_a_teacher_must_fit_the_recipe(make_toy_recipe, toy_teacher, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="flow.meanflow.teacher.*objective meanflow"):
        make_toy_recipe(f"flow.meanflow.teacher={toy_teacher}")
    with pytest.raises(ConfigError, match="flow.meanflow.guidance_kappa.*teacher"):
        make_toy_recipe("flow.objective=meanflow", "flow.meanflow.guidance=2", "flow.meanflow.guidance_kappa=0.5",
                        f"flow.meanflow.teacher={toy_teacher}")
    missing = make_toy_recipe("flow.objective=meanflow", f"flow.meanflow.teacher={toy_teacher / 'missing'}")
    with pytest.raises(ConfigError, match="flow.meanflow.teacher"):
        check_before_work(missing, "recipe.yaml", run_dir=str(toy_teacher.parent / "student"))
    task = Toy2DTask(make_toy_recipe("flow.objective=meanflow", f"flow.meanflow.teacher={toy_teacher}"))
    monkeypatch.setattr(Toy2DTask, "reflow_mismatch", lambda self, teacher: "it samples [3], this recipe trains on [2]")
    with pytest.raises(ConfigError, match="cannot be this recipe's teacher: it samples"):
        task.prepare_data(torch.device("cpu"))


def test_adaptive_weight_is_a_stop_gradient_weight() -> None:
    pred = torch.tensor([[1.0, 1.0], [3.0, 3.0]], requires_grad=True)
    out = cfm_loss(pred, torch.zeros(2, 2), torch.rand(2), adaptive_p=1.0, adaptive_c=1e-3)
    torch.testing.assert_close(out.loss, torch.tensor((1 / 1.001 + 9 / 9.001) / 2))
    out.loss.backward()  # d/dpred of sg(w) mean(pred^2) / 2 rows = w pred / 2
    torch.testing.assert_close(pred.grad, torch.tensor([[0.5 / 1.001] * 2, [1.5 / 9.001] * 2]))


def test_recipes_refuse_what_meanflow_cannot_do(make_toy_recipe) -> None:
    with pytest.raises(ConfigError, match="sample.solver.*objective is fm"):
        make_toy_recipe("sample.solver=meanflow")
    with pytest.raises(ConfigError, match="flow.loss.*adaptive weight"):
        make_toy_recipe("flow.objective=meanflow", "flow.loss=l1")
    with pytest.raises(ConfigError, match="flow.meanflow.guidance.*objective meanflow"):
        make_toy_recipe("flow.meanflow.guidance=2")
