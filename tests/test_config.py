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
    check_paths,
    config_fields_help,
    dump_yaml,
    from_dict,
    input_paths,
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
    # yaml.safe_load reads 3e-4 (no dot) as a string: YAML 1.1. Our loader does not (see below), but
    # float fields keep accepting numeric strings (quoted values, data from other YAML readers).
    data = yaml.safe_load("name: x\ntrain:\n  lr: 3e-4\n")
    assert data["train"]["lr"] == "3e-4"
    assert build(data).train.lr == pytest.approx(3e-4)
    assert build({"name": "x", "sample": {"guidance": "1e1"}}).sample.guidance == 10.0  # Optional[float]


# NaN slips past `x < lo` (every comparison with NaN is False); infinity past a missing upper bound.
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "nan", "inf", "-Infinity", "1e999",
                                   10**400])
def test_non_finite_floats_are_refused(value: Any):
    msg = error_of({"name": "x", "train": {"lr": value}})
    assert msg.startswith(f"{SRC}: train.lr: ") and "not a finite number" in msg
    msg = error_of({"name": "x", "train": {"betas": [0.9, value]}})  # inside a tuple
    assert "train.betas[1]" in msg and "not a finite number" in msg


def test_non_finite_float_in_an_optional_field_says_why():
    # float | None tries each option; a NaN float must not end as "expected float | null, got float nan"
    msg = error_of({"name": "x", "sample": {"guidance": float("nan")}})
    assert msg == f"{SRC}: sample.guidance: nan is not a finite number (NaN and infinity are refused)"
    msg = error_of({"name": "x", "sample": {"extras": {"shift": "-inf"}}})  # dict values, from a string
    assert "sample.extras.shift" in msg and "finite" in msg


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


@pytest.mark.parametrize("word", ["yes", "No", "on", "OFF", "y"])
def test_yaml11_bool_words_for_a_bool_field_ask_for_true_or_false(tmp_path: Path, word: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\ntrain:\n  ema: {word}\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path)
    assert str(info.value).startswith(f"{path}: train.ema: expected bool (true/false), got str {word!r}")
    assert "write true or false" in str(info.value)


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


# What YAML 1.1 (PyYAML's safe_load) would make of each plain scalar is in the comment.
@pytest.mark.parametrize("text,expected", [
    ("off", "off"), ("On", "On"), ("yes", "yes"), ("NO", "NO"), ("y", "y"),  # 1.1: bools
    ("true", True), ("False", False), ("TRUE", True),
    ("1e-3", 1e-3), ("3E5", 3e5), ("-2e+2", -200.0),  # 1.1: strings
    ("1.5", 1.5), (".5", 0.5), ("1.", 1.0), ("1.0e-3", 1e-3),
    ("010", 10), ("0o17", 15), ("0x1f", 31), ("-7", -7),  # 1.1: 010 is octal 8
    ("1:30", "1:30"), ("1_000", "1_000"), ("0b101", "0b101"),  # 1.1: 90, 1000, 5
    ("2024-01-01", "2024-01-01"), ("=", "="),  # 1.1: a date; a 'value' tag SafeLoader cannot build
    ("nan", "nan"), ("inf", "inf"),  # plain words (a float field still reads them, and refuses them)
    ("null", None), ("~", None), ("", None),
])
def test_yaml_scalars_read_the_yaml_1_2_way(tmp_path: Path, text: str, expected: Any):
    path = tmp_path / "v.yaml"
    path.write_text(f"v: {text}\n")
    value = load_yaml(path)["v"]
    assert value == expected and type(value) is type(expected)
    assert parse_override(f"x.v={text}")[1] == expected  # overrides read values the same way


def test_yaml_nan_and_inf_tokens_are_floats_and_refused(tmp_path: Path):
    path = tmp_path / "v.yaml"
    path.write_text("a: .nan\nb: -.inf\nc: .Inf\n")
    data = load_yaml(path)
    assert data["a"] != data["a"] and data["b"] == -float("inf") and data["c"] == float("inf")
    path.write_text("name: x\ntrain:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"train\.lr: nan is not a finite number"):
        load_config(Recipe, path)


def test_int_field_given_scientific_notation_says_what_to_write(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain:\n  steps: 1e3\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path)
    assert str(info.value) == f"{path}: train.steps: expected int, got float 1000.0 (write 1000)"


@pytest.mark.parametrize("key", ["null", "~", "''"])
def test_null_key_is_named(tmp_path: Path, key: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\ntrain:\n  {key}: 3\n" if key != "''" else "name: x\ntrain:\n  ? \n  : 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: train: a key is null") and "quote it" in msg


@dataclass
class CacheCfg:
    use_cache: Literal["auto", "require", "off"] = "auto"


@dataclass
class CacheTop:
    data: CacheCfg = field(default_factory=CacheCfg)


def test_literal_with_yaml11_bool_word_from_file_and_override(tmp_path: Path):
    Top = CacheTop
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  use_cache: off\n")
    assert load_config(Top, path).data.use_cache == "off"
    path.write_text("data: {}\n")
    assert load_config(Top, path, ["data.use_cache=off"]).data.use_cache == "off"


def test_dump_yaml_quotes_strings_any_yaml_reader_would_misread(tmp_path: Path):
    data = {"words": ["off", "yes", "TRUE", "1e3", "0o17", "010", "1:30", "2024-01-01", "=", ".nan", "plain"],
            "numbers": [1e-8, 3e-4, 10, -2.5], "flag": False, "none": None}
    path = tmp_path / "out.yaml"
    dump_yaml(data, path)
    assert load_yaml(path) == data  # our YAML 1.2 reading
    assert yaml.safe_load(path.read_text()) == data  # and a YAML 1.1 reader's


def test_load_yaml_duplicate_key(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 1.0\n  lr: 2.0\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: invalid YAML: line 3.*duplicate key 'lr'"):
        load_yaml(path)


# --- overrides ------------------------------------------------------------------------------------


def test_parse_override_values():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)  # YAML 1.2: a float, no dot needed
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


# --- input paths ----------------------------------------------------------------------------------


@dataclass
class EncoderPaths:
    path: str = "alias"  # not marked: an alias, checked by its own validate()
    vocab: str | None = field(default=None, metadata={"exists": "file"})


@dataclass
class PathsCfg:
    data: str = field(default="data", metadata={"exists": "dir", "exists_hint": "make it first"})
    weights: str | None = field(default=None, metadata={"exists": "dir_or_file"})
    extra: list[str] = field(default_factory=list, metadata={"exists": "dir"})
    encoders: list[EncoderPaths] = field(default_factory=list)
    cache: str | None = None  # an output: never checked


def test_input_paths_walks_nested_fields_and_skips_unset() -> None:
    cfg = PathsCfg(data="~/d", extra=["x", "y"], encoders=[EncoderPaths(), EncoderPaths(vocab="v.txt")], cache="c")
    found = [(key, str(path), kind) for key, path, kind, _ in input_paths(cfg, "top")]
    assert found == [("top.data", str(Path("~/d").expanduser()), "dir"), ("top.extra[0]", "x", "dir"),
                     ("top.extra[1]", "y", "dir"), ("top.encoders[1].vocab", "v.txt", "file")]


def test_check_paths_names_file_key_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "v.txt").write_text("a")
    check_paths(PathsCfg(weights="v.txt", encoders=[EncoderPaths(vocab="v.txt")]), source=SRC)  # all there
    cases = [
        (PathsCfg(data="nope"), f"{SRC}: data: no such folder: nope (relative to the working directory {tmp_path}); "
                                "make it first"),
        (PathsCfg(data="v.txt"), f"{SRC}: data: v.txt is a file, not a folder; make it first"),
        (PathsCfg(weights=str(tmp_path / "w")), f"{SRC}: weights: no such file or folder: {tmp_path / 'w'}"),
        (PathsCfg(extra=["data", "gone"]), f"{SRC}: extra[1]: no such folder: gone"),
        (PathsCfg(encoders=[EncoderPaths(vocab="data")]), f"{SRC}: encoders[0].vocab: data is a folder, not a file"),
    ]
    for cfg, expected in cases:
        with pytest.raises(ConfigError) as info:
            check_paths(cfg, source=SRC)
        assert str(info.value).startswith(expected), str(info.value)


def test_from_dict_does_not_check_paths() -> None:
    # a parsed config (e.g. a recipe inside an exported model) may come from a machine with other folders
    assert from_dict(PathsCfg, {"data": "/no/such/folder"}).data == "/no/such/folder"
