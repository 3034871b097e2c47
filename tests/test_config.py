"""Tests for mmflow/config.py: strict building, error messages, round-trips, overrides, YAML I/O."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from mmflow.config import (
    ConfigError,
    apply_overrides,
    check,
    config_fields_help,
    dump_yaml,
    from_dict,
    load_config,
    load_yaml,
    parse_override,
    to_dict,
)

SRC = "recipes/toy2d.yaml"


@dataclass
class ModelCfg:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: Literal["silu", "gelu"] = "silu"
    dropout: float = field(default=0.0, metadata={"min": 0, "max": 1, "max_exclusive": True, "help": "drop rate"})


@dataclass
class TrainCfg:
    lr: float = field(default=1e-3, metadata={"min": 0, "min_exclusive": True, "help": "peak learning rate"})
    steps: int = field(default=1000, metadata={"min": 1})
    warmup: int = 0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    ema: bool = True
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self) -> None:
        check(self.warmup <= self.steps, "warmup", f"must be <= steps ({self.steps}), got {self.warmup}")


@dataclass
class SampleCfg:
    solver: str = "euler"
    steps: int = 50
    seed: int | None = None
    guidance: Optional[float] = None
    grid: tuple[int, ...] = ()
    extras: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"solver: unknown solver {self.solver!r}")


@dataclass
class Recipe:
    name: str
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    sample: SampleCfg = field(default_factory=SampleCfg)
    notes: Any = None
    out: Path = Path("runs")


def build(data: dict) -> Recipe:
    return from_dict(Recipe, data, source=SRC)


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build(data)
    return str(info.value)


# --- building -------------------------------------------------------------------------------------


def test_nested_defaults_and_types():
    cfg = build(
        {
            "name": "toy",
            "model": {"hidden": [32, 32, 32], "activation": "gelu"},
            "train": {"lr": 1, "betas": [0.8, 0.99]},
            "sample": {"seed": 3, "grid": [1, 2, 4], "extras": {"shift": 3}},
            "notes": {"anything": [1, "x"]},
            "out": "runs/toy",
        }
    )
    assert cfg.model == ModelCfg(hidden=[32, 32, 32], activation="gelu")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for float
    assert cfg.train.betas == (0.8, 0.99) and isinstance(cfg.train.betas, tuple)
    assert cfg.sample.seed == 3 and cfg.sample.guidance is None
    assert cfg.sample.grid == (1, 2, 4)
    assert cfg.sample.extras == {"shift": 3.0}
    assert cfg.notes == {"anything": [1, "x"]}  # Any passes through
    assert cfg.out == Path("runs/toy")


def test_float_from_numeric_string():
    # yaml.safe_load reads 3e-4 (no dot) as a string: YAML 1.1.
    data = yaml.safe_load("name: x\ntrain:\n  lr: 3e-4\n")
    assert data["train"]["lr"] == "3e-4"
    assert build(data).train.lr == pytest.approx(3e-4)
    assert build({"name": "x", "sample": {"guidance": "1e1"}}).sample.guidance == 10.0  # Optional[float]


def test_no_string_coercion_for_other_types():
    msg = error_of({"name": "x", "train": {"steps": "1e5"}})
    assert SRC in msg and "train.steps" in msg and "expected int" in msg and "100000" in msg
    msg = error_of({"name": "x", "train": {"lr": "fast"}})
    assert "train.lr" in msg and "expected float" in msg
    msg = error_of({"name": 3})
    assert "name" in msg and "expected str" in msg


def test_bool_is_not_int_and_int_is_not_bool():
    msg = error_of({"name": "x", "train": {"steps": True}})
    assert f"{SRC}: train.steps: expected int, got bool True" in msg
    msg = error_of({"name": "x", "train": {"lr": False}})
    assert "train.lr" in msg and "expected float" in msg
    msg = error_of({"name": "x", "train": {"ema": 1}})
    assert "train.ema" in msg and "expected bool" in msg


def test_literal_error_lists_allowed_values():
    msg = error_of({"name": "x", "train": {"optimizer": "adamx"}})
    assert msg == "recipes/toy2d.yaml: train.optimizer: 'adamx' is not one of 'adamw', 'sgd'"


def test_unknown_key_lists_known_and_suggests():
    msg = error_of({"name": "x", "train": {"lrr": 0.1}})
    assert msg.startswith(f"{SRC}: train.lrr: unknown key")
    assert "'lr', 'steps', 'warmup', 'optimizer', 'ema', 'betas'" in msg
    assert "did you mean 'lr'?" in msg
    msg = error_of({"name": "x", "modle": {}})
    assert "modle" in msg and "the top level" in msg and "did you mean 'model'?" in msg
    msg = error_of({"name": "x", "train": {"zzz": 0}})
    assert "did you mean" not in msg


def test_missing_required_key():
    msg = error_of({})
    assert msg == f"{SRC}: name: required key is missing (expected str)"


def test_wrong_container_types_and_item_paths():
    msg = error_of({"name": "x", "model": {"hidden": [64, "wide"]}})
    assert "model.hidden[1]" in msg and "expected int" in msg
    msg = error_of({"name": "x", "model": [1, 2]})
    assert f"{SRC}: model: expected a mapping" in msg
    msg = error_of({"name": "x", "train": {"betas": [0.9]}})
    assert "train.betas" in msg and "expected 2 items" in msg
    msg = error_of({"name": "x", "sample": {"extras": {"shift": "big"}}})
    assert "sample.extras.shift" in msg
    msg = error_of({"name": "x", "sample": {"seed": "abc"}})
    assert "sample.seed" in msg and "int | null" in msg


def test_bounds_from_metadata():
    msg = error_of({"name": "x", "train": {"lr": 0.0}})
    assert msg == f"{SRC}: train.lr: 0.0 is out of bounds: must be > 0"
    msg = error_of({"name": "x", "model": {"dropout": 1.0}})
    assert "model.dropout" in msg and ">= 0 and < 1" in msg
    msg = error_of({"name": "x", "train": {"steps": 0}})
    assert "train.steps" in msg and ">= 1" in msg
    assert build({"name": "x", "model": {"dropout": 0.0}}).model.dropout == 0.0  # inclusive min


def test_validate_hook_with_check_and_value_error():
    msg = error_of({"name": "x", "train": {"steps": 10, "warmup": 20}})
    assert msg == f"{SRC}: train.warmup: must be <= steps (10), got 20"
    msg = error_of({"name": "x", "sample": {"solver": "rk99"}})
    assert msg == f"{SRC}: sample.solver: unknown solver 'rk99'"


@dataclass
class Pair:
    a: int = 0
    b: int = 0

    def validate(self) -> None:
        if self.a + self.b > 3:
            raise ValueError("a + b must be <= 3")


@dataclass
class Top:
    pair: Pair = field(default_factory=Pair)


def test_validate_value_error_without_field_names_the_section():
    with pytest.raises(ConfigError, match=r"^f\.yaml: pair: a \+ b must be <= 3$"):
        from_dict(Top, {"pair": {"a": 2, "b": 2}}, source="f.yaml")


def test_error_without_source_and_prefix():
    with pytest.raises(ConfigError) as info:
        from_dict(TrainCfg, {"lr": -1}, prefix="train")
    assert str(info.value) == "train.lr: -1.0 is out of bounds: must be > 0"
    assert info.value.key == "train.lr" and info.value.source is None
    assert isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.key == "train.lr"


def test_round_trip_through_yaml(tmp_path: Path):
    cfg = build({"name": "toy", "train": {"lr": "3e-4", "betas": [0.5, 0.9]}, "sample": {"grid": [1, 2]}})
    plain = to_dict(cfg)
    assert plain["train"]["betas"] == [0.5, 0.9] and plain["out"] == "runs"
    assert from_dict(Recipe, plain) == cfg
    assert from_dict(Recipe, yaml.safe_load(yaml.safe_dump(plain))) == cfg
    path = tmp_path / "deep" / "recipe.yaml"
    dump_yaml(cfg, path)
    assert from_dict(Recipe, load_yaml(path), source=str(path)) == cfg
    assert os.listdir(path.parent) == ["recipe.yaml"]  # temp file renamed away
    dump_yaml({"a": (1, 2)}, path)  # plain dicts too, overwriting
    assert load_yaml(path) == {"a": [1, 2]}


# --- YAML files -----------------------------------------------------------------------------------


def test_load_yaml_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_yaml(path)


def test_load_yaml_syntax_error_has_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain:\n  lr: [1, 2\n  steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    msg = str(info.value)
    assert str(path) in msg and "line 4" in msg and "column" in msg


def test_load_yaml_top_level_not_mapping_and_empty(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_yaml(path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_load_yaml_duplicate_key(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 1.0\n  lr: 2.0\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: invalid YAML: line 3.*duplicate key 'lr'"):
        load_yaml(path)


# --- overrides ------------------------------------------------------------------------------------


def test_parse_override_values():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], "3e-4")
    assert parse_override("train.lr=0.001") == (["train", "lr"], 0.001)
    assert parse_override("model.hidden=[64,64]") == (["model", "hidden"], [64, 64])
    assert parse_override("sample.solver=heun") == (["sample", "solver"], "heun")
    assert parse_override("train.ema=false") == (["train", "ema"], False)
    assert parse_override("sample.seed=null") == (["sample", "seed"], None)
    assert parse_override("name=a=b") == (["name"], "a=b")  # split on the first '='


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=3", "train lr=3"])
def test_parse_override_malformed(text: str):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    msg = str(info.value)
    assert msg.startswith("command line") and repr(text) in msg


def test_apply_overrides_copies_creates_and_builds():
    data = {"name": "toy", "train": {"lr": 0.1}}
    out = apply_overrides(
        data, ["train.lr=3e-4", "model.hidden=[16,16]", "sample.solver=heun", "sample.extras.shift=3"]
    )
    assert data == {"name": "toy", "train": {"lr": 0.1}}  # input untouched
    assert out["model"] == {"hidden": [16, 16]} and out["sample"]["extras"] == {"shift": 3}
    cfg = from_dict(Recipe, out)
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.model.hidden == [16, 16]
    assert cfg.sample.solver == "heun" and cfg.sample.extras == {"shift": 3.0}
    out = apply_overrides(out, ["model.hidden.0=8"])
    assert out["model"]["hidden"] == [8, 16]


def test_apply_overrides_errors():
    with pytest.raises(ConfigError, match=r"^command line: malformed override 'train\.lr'"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match=r"cli: train\.lr\.x: .*'train\.lr', which is float 0\.1, not a mapping"):
        apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1"], source="cli")
    with pytest.raises(ConfigError, match="index '5'"):
        apply_overrides({"a": [1]}, ["a.5=2"])


def test_load_config_names_the_override(tmp_path: Path):
    path = tmp_path / "toy2d.yaml"
    path.write_text("name: toy\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(Recipe, path, ["train.steps=20"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.steps == 20
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path, ["train.lrr=1"])
    assert str(info.value).startswith("command line (override 'train.lrr=1'): train.lrr: unknown key")
    assert "did you mean 'lr'?" in str(info.value)
    path.write_text("name: toy\ntrain:\n  optimizer: adam\n")
    with pytest.raises(ConfigError, match=r"toy2d\.yaml: train\.optimizer: 'adam' is not one of 'adamw', 'sgd'"):
        load_config(Recipe, path)


# --- help -----------------------------------------------------------------------------------------


def test_config_fields_help():
    text = config_fields_help(Recipe)
    assert "name: str (required)" in text
    assert "train.lr: float = 0.001  # [> 0] peak learning rate" in text
    assert "train.optimizer: 'adamw' | 'sgd' = 'adamw'" in text
    assert "model.hidden: list[int] = [64, 64]" in text
    assert "sample.seed: int | null = None" in text
    assert "model.dropout" in text and "drop rate" in text


def test_non_dataclass_is_a_type_error():
    with pytest.raises(TypeError):
        from_dict(dict, {})
