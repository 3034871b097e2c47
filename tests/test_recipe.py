"""Tests for mmflow/recipe.py (with the toy2d task schema and TrainConfig): loading, overrides, errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.recipe import Recipe
from mmflow.tasks import load_recipe, recipe_from_dict
from mmflow.tasks import get_task_class
from mmflow.tasks.toy2d import Toy2DDataConfig, Toy2DModelConfig, Toy2DTask
from mmflow.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "recipes" / "toy2d.yaml"


def _raw() -> dict[str, Any]:
    return yaml.safe_load(TOY.read_text())


def _write(tmp_path: Path, data: dict[str, Any], name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_toy2d_recipe_loads() -> None:
    r = load_recipe(TOY)
    assert isinstance(r, Recipe)
    assert r.name == "toy2d" and r.task == "toy2d"
    assert isinstance(r.data, Toy2DDataConfig) and r.data.dataset == "eight_gaussians" and r.data.conditional
    assert isinstance(r.model, Toy2DModelConfig) and r.model.hidden == 256
    assert isinstance(r.train, TrainConfig)
    assert r.train.lr == 2e-3 and isinstance(r.train.lr, float)
    assert r.train.batch_size == 1024 and r.train.warmup_steps == 100
    assert r.sample.solver == "heun" and r.sample.steps == 8
    assert r.flow.schedule == "condot" and r.flow.cfg_dropout == 0.1
    assert r.resolved_run_dir() == str(Path("runs") / "toy2d")
    assert get_task_class(r.task) is Toy2DTask


def test_overrides_apply() -> None:
    r = load_recipe(TOY, ["train.lr=3e-4", "data.dataset=spirals", "sample.steps=3", "flow.time_sampler.name=logit_normal"])
    assert r.train.lr == 3e-4 and type(r.train.lr) is float
    assert r.data.dataset == "spirals"
    assert r.sample.steps == 3
    assert r.flow.time_sampler.name == "logit_normal"
    assert r.train.batch_size == 1024  # untouched keys keep the file's value
    later = load_recipe(TOY, ["train.lr=1e-3", "train.lr=5e-4"])  # the last one wins
    assert later.train.lr == 5e-4


def test_round_trip_through_dict() -> None:
    r = load_recipe(TOY, ["data.dataset=two_moons"])
    again = recipe_from_dict(to_dict(r), source="dict")
    assert again == r


def test_defaults_when_sections_are_omitted(tmp_path: Path) -> None:
    r = load_recipe(_write(tmp_path, {"name": "mini", "task": "toy2d"}))
    assert r.data == Toy2DDataConfig() and r.model == Toy2DModelConfig() and r.train == TrainConfig()


def _set(section: str | None, key: str, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        (d.setdefault(section, {}) if section else d)[key] = value

    return edit


BAD = [
    # (id, edit, dotted key, extra substrings the message must contain)
    ("unknown_key", _set("train", "lrr", 1e-3), "train.lrr", ["did you mean 'lr'"]),
    ("unknown_top_key", _set(None, "trian", {}), "trian", ["train"]),
    ("wrong_type", _set("train", "batch_size", "big"), "train.batch_size", ["expected int", "big"]),
    ("negative_lr", _set("train", "lr", -1), "train.lr", ["> 0"]),
    ("cfg_dropout", _set("flow", "cfg_dropout", 1.5), "flow.cfg_dropout", ["<= 1"]),
    ("warmup_gt_max", _set("train", "warmup_steps", 5000), "train.warmup_steps", ["max_steps"]),
    ("shift_uniform", lambda d: d["sample"].update(shift=3, grid="uniform"), "sample.shift", ["shifted"]),
    ("task", _set(None, "task", "imagenet"), "task", ["imagenet", "'toy2d'"]),
    ("dataset", _set("data", "dataset", "mnist"), "data.dataset",
     ["mnist", "'eight_gaussians'", "'two_moons'", "'checkerboard'", "'spirals'"]),
    ("mixed_precision", _set("train", "mixed_precision", "fp8"), "train.mixed_precision", ["fp8", "'no'", "'fp16'", "'bf16'"]),
    ("solver", _set("sample", "solver", "dpm"), "sample.solver", ["'euler'", "'heun'", "'rk4'"]),
    ("model_key", _set("model", "width", 3), "model.width", ["hidden"]),
    ("betas", _set("train", "betas", [0.9, 1.5]), "train.betas", ["[0, 1)"]),
    ("bool_type", _set("data", "conditional", "yes"), "data.conditional", ["bool"]),
    ("name_slash", _set(None, "name", "a/b"), "name", ["'a/b'", "path separators"]),
    ("name_dotdot", _set(None, "name", ".."), "name", ["'..'"]),
    ("name_dot", _set(None, "name", "."), "name", ["'.'"]),
    ("name_backslash", _set(None, "name", "a\\b"), "name", ["usable run name"]),
    ("name_hidden", _set(None, "name", ".x"), "name", ["starting with a letter or digit"]),
    ("name_empty", _set(None, "name", ""), "name", ["usable run name"]),
    ("name_space", _set(None, "name", "my run"), "name", ["'my run'"]),
    ("nan_guidance", _set("sample", "guidance", float("nan")), "sample.guidance", ["not a finite number"]),
    ("inf_lr", _set("train", "lr", float("inf")), "train.lr", ["not a finite number"]),
    ("negative_guidance", _set("sample", "guidance", -1.0), "sample.guidance", [">= 0"]),
]


@pytest.mark.parametrize("edit,key,extra", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_recipe_error_names_key_and_file(tmp_path: Path, edit, key: str, extra: list[str]) -> None:
    data = copy.deepcopy(_raw())
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"{key}:" in msg
    for s in extra:
        assert s in msg, f"{s!r} not in {msg!r}"


def test_bad_override_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.lr: .*out of bounds"):
        load_recipe(TOY, ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"data\.dataset: 'moons' is not one of"):
        load_recipe(TOY, ["data.dataset=moons"])
    with pytest.raises(ConfigError, match="malformed override"):
        load_recipe(TOY, ["train.lr"])


def test_missing_task(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x"})
    with pytest.raises(ConfigError, match="task: required key is missing") as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_missing_required_name(tmp_path: Path) -> None:
    path = _write(tmp_path, {"task": "toy2d"})
    with pytest.raises(ConfigError, match="name: required key is missing") as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: toy\ntask: toy2d\ntrain:\n  lr: [1, 2\n  batch_size: 3\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_recipe(path)
    msg = str(info.value)
    assert str(path) in msg and "line " in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: toy\ntask: toy2d\ntrain:\n  lr: 1.0e-3\n  lr: 2.0e-3\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_recipe(path)


def test_train_config_validate_directly() -> None:
    assert from_dict(TrainConfig, {"warmup_steps": 10, "max_steps": 10}).warmup_steps == 10  # equal is fine
    with pytest.raises(ConfigError, match="train.grad_clip"):
        from_dict(TrainConfig, {"grad_clip": 0}, prefix="train")
    with pytest.raises(ConfigError, match="train.ema_decay"):
        from_dict(TrainConfig, {"ema_decay": 1.0}, prefix="train")
    assert from_dict(TrainConfig, {"grad_clip": None, "ema_decay": None}).ema_decay is None


def test_shift_allowed_with_shifted_grid() -> None:
    r = load_recipe(TOY, ["sample.grid=shifted", "sample.shift=3"])
    assert r.sample.shift == 3.0 and r.sample.grid == "shifted"


def test_time_sampler_kwargs() -> None:
    r = load_recipe(TOY, ["flow.time_sampler.name=logit_normal", "flow.time_sampler.m=0.5", "flow.time_sampler.s=2"])
    assert r.flow.time_sampler.kwargs() == {"m": 0.5, "s": 2.0}
    assert load_recipe(TOY).flow.time_sampler.kwargs() == {}


def test_toy2d_task_num_classes() -> None:
    assert Toy2DTask(load_recipe(TOY, ["data.dataset=two_moons"])).num_classes == 2
    assert Toy2DTask(load_recipe(TOY)).num_classes == 8
    assert Toy2DTask(load_recipe(TOY, ["data.conditional=false"])).num_classes == 0


@pytest.mark.parametrize("name", ["toy2d", "run-1", "a.b_c", "7up", "A..B"])
def test_safe_names_are_accepted(name: str) -> None:
    assert load_recipe(TOY, [f"name={name}"]).resolved_run_dir() == f"runs/{name}"


def test_guidance_zero_is_unconditional_and_allowed() -> None:
    assert load_recipe(TOY, ["sample.guidance=0"]).sample.guidance == 0.0


# --- check_before_work: what `mmflow train` / `prepare` check before writing anything --------------


def test_run_folder_may_not_be_the_working_directory_or_above(tmp_path: Path, monkeypatch) -> None:
    from mmflow.recipe import check_before_work

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = load_recipe(TOY)
    assert check_before_work(recipe, str(TOY)) == Path("runs/toy2d")  # the default, under the cwd
    assert check_before_work(recipe, str(TOY), run_dir=str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    for bad in (".", "..", str(work), str(tmp_path), "/", "runs/.."):
        with pytest.raises(ConfigError, match="working directory") as info:
            check_before_work(recipe, str(TOY), run_dir=bad)
        assert str(info.value).startswith("command line (--run-dir): ")
    with pytest.raises(ConfigError) as info:  # the same from the recipe's run_dir, set by an override
        check_before_work(load_recipe(TOY, ["run_dir=.."]), str(TOY), ["run_dir=.."])
    assert str(info.value).startswith(f"{TOY}: run_dir: the run folder .. is a parent of the working directory")
    assert str(info.value).endswith("set by the override 'run_dir=..'")
    (work / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_before_work(recipe, str(TOY), run_dir="afile")
