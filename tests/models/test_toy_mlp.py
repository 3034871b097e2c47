"""Tests for mmflow/models/toy_mlp.py: the toy MLP velocity network u_theta(x, t, y)."""

from __future__ import annotations

import pytest
import torch

from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig


def _model(seed: int = 0, perturb: bool = True, **kw) -> MLPVelocity:
    """A tiny model; `perturb` replaces the zero-inits with random weights so the output is non-zero."""
    torch.manual_seed(seed)
    cfg = MLPVelocityConfig(**{"dim": 3, "hidden": 16, "depth": 2, "time_frequency_dim": 8, **kw})
    model = MLPVelocity(cfg)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _inputs(b: int = 5, dim: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dim, generator=g), torch.rand(b, generator=g)


def test_output_shape() -> None:
    model = _model()
    x, t = _inputs()
    assert model(x, t).shape == (5, 3)


def test_zero_output_at_init() -> None:
    model = _model(perturb=False, num_classes=4)
    x, t = _inputs()
    out = model(x, t, torch.tensor([0, 1, 2, 3, 4]))
    assert torch.equal(out, torch.zeros(5, 3))


def test_scalar_t_is_broadcast() -> None:
    model = _model()
    x, _ = _inputs()
    torch.testing.assert_close(model(x, torch.tensor(0.3)), model(x, torch.full((5,), 0.3)))


def test_time_changes_output() -> None:
    model = _model()
    x, _ = _inputs()
    a = model(x, torch.full((5,), 0.1))
    b = model(x, torch.full((5,), 0.9))
    assert a.abs().max() > 1e-3
    assert (a - b).abs().max() > 1e-3


def test_ignore_time_makes_output_independent_of_t() -> None:
    model = _model(ignore_time=True)
    x, _ = _inputs()
    a = model(x, torch.full((5,), 0.1))
    b = model(x, torch.full((5,), 0.9))
    assert a.abs().max() > 1e-3  # non-trivial output...
    torch.testing.assert_close(a, b)  # ...that t does not change


def test_labels_change_output_and_null_label_is_accepted() -> None:
    model = _model(num_classes=4)
    assert model.null_label == 4
    x, t = _inputs(b=1)
    outs = [model(x, t, torch.tensor([k])) for k in range(5)]  # 0..3 and the null label 4
    for k in range(1, 5):
        assert (outs[k] - outs[0]).abs().max() > 1e-3


def test_no_labels_means_null_label() -> None:
    model = _model(num_classes=4)
    x, t = _inputs()
    torch.testing.assert_close(model(x, t), model(x, t, torch.full((5,), 4)))


def test_unconditional_model_has_no_null_label() -> None:
    assert _model().null_label is None


@pytest.mark.parametrize("bad", [[5], [-1]])
def test_out_of_range_labels_raise(bad: list[int]) -> None:
    model = _model(num_classes=4)
    x, t = _inputs(b=1)
    with pytest.raises(ValueError, match="class labels"):
        model(x, t, torch.tensor(bad))


def test_float_labels_raise() -> None:
    model = _model(num_classes=4)
    x, t = _inputs(b=2)
    with pytest.raises(TypeError, match="integer"):
        model(x, t, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("shape", [(5, 2), (5, 3, 1), (3,)])
def test_wrong_input_shape_raises(shape: tuple[int, ...]) -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        model(torch.zeros(shape), torch.zeros(shape[0]))


def test_batch_items_are_independent() -> None:
    model = _model(num_classes=4)
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 3, 4])
    full = model(x, t, y)
    for i in range(5):
        torch.testing.assert_close(model(x[i : i + 1], t[i : i + 1], y[i : i + 1]), full[i : i + 1])


def test_dropped_rows_get_the_null_label() -> None:
    model = _model(num_classes=4)
    x, t = _inputs(b=3)
    y = torch.tensor([0, 1, 2])
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        expected = model(x, t, torch.tensor([0, model.null_label, 2]))
        torch.testing.assert_close(model(x, t, y, drop=drop), expected, atol=0, rtol=0)


def test_a_zero_initialised_interval_embedding_leaves_the_model_unchanged(tmp_path) -> None:
    from mmflow.model_io import load_model, save_model

    old = _model(num_classes=4)
    new = MLPVelocity(MLPVelocityConfig(**{**old.config.__dict__, "interval_embed": True}))
    state, changes = new.adapt_init_state(old.state_dict())  # init_from a flow model
    new.load_state_dict(state)
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 3, 4])
    for h in (None, torch.zeros(5), torch.rand(5)):  # any h: the new embedding outputs zero
        assert torch.equal(new.eval()(x, t, y, h=h), old(x, t, y))
    with pytest.raises(ValueError, match="no interval embedding"):
        old(x, t, y, h=torch.zeros(5))
    save_model(old, tmp_path / "old")  # a flow model's folder has no interval weights and still loads
    assert not any("interval" in k for k in load_model(tmp_path / "old").state_dict())


def test_a_config_without_time_scale_loads_to_the_same_outputs(tmp_path) -> None:
    # folders saved before time_scale existed have no such key: they load at 1000, the scale they trained at
    import json

    from mmflow.model_io import load_model, save_model

    old = _model(num_classes=4, interval_embed=True)
    save_model(old, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    saved = json.loads(path.read_text())
    assert saved["config"].pop("time_scale") == 1000.0
    path.write_text(json.dumps(saved))
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config.time_scale == 1000.0
    x, t = _inputs()
    y, h = torch.tensor([0, 1, 2, 3, 4]), torch.rand(5)
    assert torch.equal(loaded(x, t, y, h=h), old(x, t, y, h=h))


def test_time_scale_stretches_the_time_and_interval_features() -> None:
    # the same weights at scale s see t as the scale-1000 model sees t * s / 1000
    fast, slow = _model(interval_embed=True), _model(interval_embed=True, time_scale=10.0)
    x, t = _inputs()
    h = torch.rand(5) * (1 - t)
    torch.testing.assert_close(slow(x, t, h=h), fast(x, t / 100, h=h / 100))
    assert (slow(x, t, h=h) - fast(x, t, h=h)).abs().max() > 1e-3
