"""Tests for mmflow/model_io.py: the model registry and the on-disk model folder (config.json + safetensors shards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmflow.model_io as model_io
from mmflow.config import ConfigError
from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig
from mmflow.model_io import (INDEX_NAME, WEIGHTS_NAME, CorruptModel, build_model, load_model,
                                   save_model)


def _model(seed: int = 0, **kw) -> MLPVelocity:
    torch.manual_seed(seed)
    model = MLPVelocity(MLPVelocityConfig(**{"dim": 2, "hidden": 8, "depth": 2, "time_frequency_dim": 4,
                                             "num_classes": 3, **kw}))
    with torch.no_grad():  # leave the zero-init so two models' outputs can actually differ
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x, t = torch.randn(6, 2, generator=g), torch.rand(6, generator=g)
    with torch.no_grad():
        return model(x, t, torch.tensor([0, 1, 2, 3, 0, 1]))


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_identical_outputs(tmp_path: Path) -> None:
    model = _model()
    folder = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS_NAME]
    loaded = load_model(folder)
    assert type(loaded) is MLPVelocity and loaded.config == model.config
    assert torch.equal(_outputs(loaded), _outputs(model))
    # and different from a differently-seeded model (the comparison can fail)
    assert not torch.equal(_outputs(_model(seed=1)), _outputs(model))


def test_config_json_contents(tmp_path: Path) -> None:
    model = _model(ignore_time=True)
    save_model(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model_type"] == "mlp_velocity"
    assert meta["config"] == {"dim": 2, "hidden": 8, "depth": 2, "num_classes": 3, "time_frequency_dim": 4,
                              "ignore_time": True, "interval_embed": False, "time_scale": 1000.0}


def test_build_model_from_dict_is_strict() -> None:
    m = build_model("mlp_velocity", {"dim": 2, "hidden": 4, "depth": 1})
    assert isinstance(m, MLPVelocity) and m.config.hidden == 4
    with pytest.raises(ConfigError, match="hiddn"):
        build_model("mlp_velocity", {"hiddn": 4})


def test_sharded_round_trip(tmp_path: Path) -> None:
    model = _model()
    folder = save_model(model, tmp_path / "m", max_shard_bytes=1024)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert not (folder / WEIGHTS_NAME).exists()
    index = json.loads((folder / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == set(shards)
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert index["metadata"]["total_size"] == total
    for name in shards:  # each shard respects the limit unless it holds a single larger tensor
        tensors = load_file(str(folder / name))
        size = sum(v.numel() * v.element_size() for v in tensors.values())
        assert size <= 1024 or len(tensors) == 1
    loaded = load_model(folder)
    assert torch.equal(_outputs(loaded), _outputs(model))


def _rewrite_weights(folder: Path, edit) -> None:
    state = load_file(str(folder / WEIGHTS_NAME))
    edit(state)
    save_file(state, str(folder / WEIGHTS_NAME))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.__setitem__("bogus.weight", torch.zeros(2)), r"unexpected keys: \['bogus.weight'\]"),
    (lambda s: s.pop("out.bias"), r"missing keys: \['out.bias'\]"),
    (lambda s: s.__setitem__("out.bias", torch.zeros(5)), r"out\.bias: checkpoint \(5,\) vs model \(2,\)"),
], ids=["extra key", "missing key", "shape mismatch"])
def test_weights_that_do_not_fit_raise_naming_the_key(tmp_path: Path, edit, message: str) -> None:
    folder = save_model(_model(), tmp_path / "m")
    _rewrite_weights(folder, edit)
    with pytest.raises(ValueError, match=message):
        load_model(folder)


def test_unknown_model_type_raises_config_error(tmp_path: Path) -> None:
    folder = save_model(_model(), tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta["model_type"] = "no_such_model"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="no_such_model"):
        load_model(folder)


def test_legacy_config_keys_are_dropped_others_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"dim": 2, "hidden": 8, "depth": 2, "time_frequency_dim": 4, "num_classes": 3, "old_knob": True}
    with pytest.raises(ConfigError, match="old_knob"):
        build_model("mlp_velocity", config)
    monkeypatch.setattr(MLPVelocity, "legacy_config_keys", ("old_knob",), raising=False)
    assert build_model("mlp_velocity", config).config == _model().config
    with pytest.raises(ConfigError, match="new_knob"):
        build_model("mlp_velocity", {**config, "new_knob": 1})


def test_missing_config_json_raises_naming_folder(tmp_path: Path) -> None:
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="not_a_model") as info:
        load_model(folder)
    assert "config.json" in str(info.value)


def test_missing_weights_raises(tmp_path: Path) -> None:
    folder = save_model(_model(), tmp_path / "m")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_model(folder)


def test_unregistered_model_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m")


def test_register_model_refuses_a_second_class_under_the_same_name() -> None:
    class Other(torch.nn.Module):
        config_class = MLPVelocityConfig

    with pytest.raises(ValueError, match="mlp_velocity"):
        model_io.register_model("mlp_velocity")(Other)
    assert model_io.MODEL_REGISTRY["mlp_velocity"] is MLPVelocity


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on_call: int) -> None:
    old = _model(seed=0)
    folder = save_model(old, tmp_path / "m")
    before = _listing(folder)

    calls = {"n": 0}
    real_save_file = model_io.save_file

    def failing_save_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise OSError("disk full (simulated)")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(model_io, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_model(_model(seed=1), folder, max_shard_bytes=1024)  # sharded: fails after 0 or 1 shards
    assert calls["n"] == fail_on_call

    assert _listing(folder) == before  # old content survives byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp/old folders left behind
    assert torch.equal(_outputs(load_model(folder)), _outputs(old))


def test_save_overwrites_previous_model(tmp_path: Path) -> None:
    save_model(_model(seed=0), tmp_path / "m", max_shard_bytes=1024)  # sharded first...
    new = _model(seed=1)
    save_model(new, tmp_path / "m")  # ...then a single file: no stale shards or index remain
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert torch.equal(_outputs(load_model(tmp_path / "m")), _outputs(new))


def test_tokenizer_folders_load_in_a_fresh_interpreter_once_the_builtins_are_imported(tmp_path):
    import subprocess
    import sys

    from mmflow.tokenizers import ImageVAE, image_vae_config

    save_model(ImageVAE(image_vae_config("test")), tmp_path / "vae")
    load = f"m = load_model({str(tmp_path / 'vae')!r}); print(type(m).__name__)"
    code = f"import mmflow.builtin_models; from mmflow.model_io import load_model; {load}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ImageVAE"
    # model_io alone knows no model package (it is the ground floor): the error says what to import
    bare = subprocess.run([sys.executable, "-c", f"from mmflow.model_io import load_model; {load}"],
                          capture_output=True, text=True)
    assert bare.returncode != 0
    assert "unknown model type 'image_vae'" in bare.stderr and "import mmflow.builtin_models" in bare.stderr


# ------------------------------------------------------------------ a corrupt folder is refused, naming the file
def test_truncated_weights_raise_corrupt_model_naming_the_file(tmp_path: Path) -> None:
    folder = save_model(_model(), tmp_path / "m")
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CorruptModel, match="not a readable safetensors file") as info:
        load_model(folder)
    assert str(weights) in str(info.value)


def test_a_missing_shard_raises_corrupt_model_naming_it(tmp_path: Path) -> None:
    folder = save_model(_model(), tmp_path / "m", max_shard_bytes=1024)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CorruptModel, match=shard.name):
        load_model(folder)


@pytest.mark.parametrize("name,text", [("config.json", "{oops"), ("config.json", "[1, 2]"),
                                       (INDEX_NAME, "not json"), (INDEX_NAME, '{"metadata": {}}')])
def test_bad_json_raises_corrupt_model_naming_the_file(tmp_path: Path, name: str, text: str) -> None:
    folder = save_model(_model(), tmp_path / "m", max_shard_bytes=1024)
    (folder / name).write_text(text)
    with pytest.raises(CorruptModel, match=name):
        load_model(folder)


def test_config_json_missing_a_key_is_corrupt(tmp_path: Path) -> None:
    folder = save_model(_model(), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"model_type": "mlp_velocity"}))
    with pytest.raises(CorruptModel, match="missing key 'config'"):
        load_model(folder)


@pytest.mark.parametrize("value,count", [(float("nan"), "1 NaN, 0 inf"), (float("-inf"), "0 NaN, 1 inf")])
def test_non_finite_weights_raise_naming_the_tensor(tmp_path: Path, value: float, count: str) -> None:
    folder = save_model(_model(), tmp_path / "m")
    _rewrite_weights(folder, lambda s: s["out.bias"].__setitem__(1, value))
    with pytest.raises(CorruptModel, match=rf"'out\.bias' is not finite \({count} of 2 values\)") as info:
        load_model(folder)
    assert str(folder / WEIGHTS_NAME) in str(info.value)


def test_corrupt_model_is_a_user_error_and_a_value_error() -> None:
    from mmflow.errors import UserError

    assert issubclass(CorruptModel, UserError) and issubclass(CorruptModel, ValueError)
