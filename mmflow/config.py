"""Typed, strict config machinery: dataclasses in, YAML only as their serialization.

A config is a tree of dataclasses. `from_dict` builds one from plain data (what `load_yaml`
returns) and rejects anything it does not understand: unknown keys, wrong types, values outside
the bounds declared in field metadata, and whatever the dataclass's own `validate()` refuses.
Every error is a `ConfigError` whose message names the file, the dotted key and what was wrong, so
a typo in a recipe reads like

    recipes/toy2d.yaml: train.lrr: unknown key; known keys of 'train': 'lr', 'steps'; did you mean 'lr'?

The recipe schema itself lives elsewhere; this module is generic. Typical use:

    data = apply_overrides(load_yaml(path), ["train.lr=3e-4"])
    cfg = from_dict(Recipe, data, source=str(path))
    dump_yaml(cfg, run_dir / "recipe.yaml")   # the resolved recipe, loadable again

(`load_config` does those first two steps and says which override a bad key came from.)

Field bounds are declared where the field is, and checked automatically:

    lr: float = field(default=1e-3, metadata={"min": 0, "min_exclusive": True, "help": "peak LR"})

Every float must be finite: NaN and infinity are refused in any float field, however written (`.nan`,
`nan`, `1e999`), because a comparison with NaN is always False and would slip past every bound.

Input paths say so in their metadata, `metadata={"exists": "dir"}` ("file", "dir_or_file"), and
`check_paths` checks them all, naming file and key. It is not part of `from_dict`: a parsed config
(e.g. a recipe inside an exported model) may describe a machine where those paths do not exist, so
commands that are about to read them call it before any work.

YAML is read the YAML 1.2 way (the core schema), not the YAML 1.1 way PyYAML implements, so what a
recipe says is what it means:
- booleans are only `true` / `false` (any case); `yes`, `no`, `on`, `off`, `y`, `n` are strings, so
  `use_cache: off` is the string 'off', and a bool field given `yes` asks for true or false;
- `1e-3` and `3E5` are floats (YAML 1.1 wants a dot, `1.0e-3`) and `.inf` / `.nan` floats (refused);
- integers are decimal (`010` is 10, not octal 8), `0o17` octal, `0x1f` hex; `1:30` (sexagesimal
  90 in YAML 1.1) and `1_000` are strings, and `2024-01-01` is a string, not a date;
- `null`, `~` and an empty value are null; as a mapping key that is an error (quote the key).
Files and `key=value` overrides are read the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union

import yaml

from mmflow.errors import UserError

__all__ = [
    "ConfigError",
    "apply_overrides",
    "check",
    "check_paths",
    "config_fields_help",
    "dump_yaml",
    "from_dict",
    "input_paths",
    "load_config",
    "load_yaml",
    "override_for",
    "parse_override",
    "to_dict",
]

T = TypeVar("T")

# Field metadata keys understood by the bound check and by `config_fields_help`.
_BOUND_KEYS = ("min", "max", "min_exclusive", "max_exclusive")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ConfigError(UserError, ValueError):
    """A config problem, reported as `source: dotted.key: message`.

    `key` is the dotted path of the offending entry ("" or None for the whole document) and
    `source` where the data came from (a file path, "command line"); either may be unknown.
    """

    def __init__(self, message: str, key: str | None = None, source: str | None = None) -> None:
        self.message = message
        self.key = key or None
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        return ": ".join([*parts, self.message])

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self):  # keep key/source across pickling (e.g. errors from worker processes)
        return (type(self), (self.message, self.key, self.source))


class _BadValue(ConfigError):
    """The value has the field's type but is refused (NaN, inf): a union reports it rather than trying on."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise a `ConfigError` for `key` (relative to the dataclass being validated) unless `condition`.

    Meant for `validate()` methods: `check(self.warmup <= self.steps, "warmup", "must be <= steps")`.
    `from_dict` prefixes the key with the section's dotted path and adds the source file.
    """
    if not condition:
        raise ConfigError(message, key=key)


def preset_config(cls: type[T], presets: Mapping[str, Mapping[str, Any]], preset: str, what: str,
                  **overrides: Any) -> T:
    """cls() with a named size preset's fields and then `overrides` applied, validated.

    what: the kind of config in the error message ("MM-DiT", "image VAE", ...).
    """
    if preset not in presets:
        raise KeyError(f"unknown {what} preset {preset!r}; known: {sorted(presets)}")
    cfg = dataclasses.replace(cls(), **{**presets[preset], **overrides})  # type: ignore[type-var]
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _quote_list(values: Sequence[Any]) -> str:
    return ", ".join(repr(v) for v in values)


# --------------------------------------------------------------------------------------------------
# Type names (for error messages and help text)
# --------------------------------------------------------------------------------------------------


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict) and args:
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_name(args[0])}, ...]"
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def _value_desc(value: Any) -> str:
    """`str 'abc'`, `int 3`, `list [1, 2]`: what the user wrote, with its YAML-derived type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


# --------------------------------------------------------------------------------------------------
# from_dict
# --------------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # an unresolvable annotation is a bug in the schema, not in the recipe
        raise TypeError(f"cannot resolve type hints of config class {cls.__name__}: {exc}") from exc


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str | None = None, prefix: str = "") -> T:
    """Build dataclass `cls` from plain data (nested mappings/lists/scalars), strictly.

    Unknown keys, missing required keys, wrong types, out-of-bounds values and failures of the
    class's `validate()` all raise `ConfigError` naming `source` and the dotted key (`prefix` is the
    dotted path of `data` inside the whole document, used when building nested sections).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {_value_desc(data)}", prefix, source)

    hints = _hints(cls)
    fields = _init_fields(cls)
    known = [f.name for f in fields]

    for key in data:
        if not isinstance(key, str):
            raise ConfigError(_non_string_key(key), prefix, source)
        if key not in known:
            section = f"'{prefix}'" if prefix else "the top level"
            msg = f"unknown key; known keys of {section}: {_quote_list(known) or '(none)'}"
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            raise ConfigError(msg, _join(prefix, key), source)

    kwargs: dict[str, Any] = {}
    for f in fields:
        key = _join(prefix, f.name)
        if f.name not in data:
            if not _has_default(f):
                raise ConfigError(f"required key is missing (expected {_type_name(hints[f.name])})", key, source)
            continue
        value = _convert(hints[f.name], data[f.name], key, source)
        _check_bounds(f, value, key, source)
        kwargs[f.name] = value

    try:
        obj = cls(**kwargs)  # __post_init__ may raise too; it gets the same treatment as validate()
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except ConfigError as exc:
        if exc.source is not None:
            raise  # already placed in its document (a from_dict or load_yaml called by the hook)
        # From `check()` or raised directly: the key is relative to this class.
        raise ConfigError(exc.message, _join(prefix, exc.key or ""), source) from exc
    except ValueError as exc:
        key, message = _split_field_message(str(exc), known)
        raise ConfigError(message, _join(prefix, key), source) from exc
    return obj


# `ValueError("warmup: must be <= steps")` -> ("warmup", "must be <= steps"); only when the head is
# one of the class's fields, so a stray "x: y" inside an unrelated message is not mistaken for a key.
_FIELD_MESSAGE = re.compile(r"^([A-Za-z_]\w*)((?:\.\w+|\[\d+\])*): (.*)$", re.DOTALL)


def _non_string_key(key: Any) -> str:
    if key is None:
        return "a key is null (YAML reads an empty key, `null` and `~` as null); quote it if you meant the word"
    return f"key {key!r} is not a string ({type(key).__name__}); quote it"


def _split_field_message(text: str, known: Sequence[str]) -> tuple[str, str]:
    m = _FIELD_MESSAGE.match(text)
    if m and m.group(1) in known:
        return m.group(1) + m.group(2), m.group(3)
    return "", text


def _convert(tp: Any, value: Any, key: str, source: str | None) -> Any:
    """Check `value` against annotation `tp` and return it in the annotated Python type."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and options[0] not in (int, float, str, bool, Path):
            return _convert(options[0], value, key, source)  # its own error is the more specific one
        for option in options:  # first match wins, in the order the annotation lists them
            try:
                return _convert(option, value, key, source)
            except _BadValue:
                raise  # the right type with a refused value (NaN): no other option is meant
            except ConfigError:
                pass
        raise ConfigError(f"expected {_type_name(tp)}, got {_value_desc(value)}", key, source)

    if origin is Literal:
        # `type(a) is type(value)` so that True does not match Literal[1] (True == 1 in Python).
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{value!r} is not one of {_quote_list(args)}", key, source)

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # already built (e.g. a default passed through programmatically)
            return value
        return from_dict(tp, value, source=source, prefix=key)

    if tp is bool:
        if isinstance(value, bool):
            return value
        hint = ""
        if isinstance(value, str) and value.strip().lower() in _YAML11_BOOL_WORDS:
            hint = f" (write true or false; {value} is not a boolean here, see YAML 1.2)"
        raise ConfigError(f"expected bool (true/false), got {_value_desc(value)}{hint}", key, source)

    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        hint = ""
        if isinstance(value, str) and _parses_as_float(value) and float(value).is_integer():
            hint = f" (YAML reads {value} as a string; write {int(float(value))})"
        elif isinstance(value, float) and value.is_integer():
            hint = f" (write {int(value)})"
        raise ConfigError(f"expected int, got {_value_desc(value)}{hint}", key, source)

    if tp is float:
        # Numeric strings are accepted too (a quoted "3e-4", or data read by a YAML 1.1 loader, which
        # reads 3e-4 as a string); no other type coerces from strings.
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and _parses_as_float(value):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float's range
                number = math.inf if value > 0 else -math.inf
            if not math.isfinite(number):
                raise _BadValue(f"{value!r} is not a finite number (NaN and infinity are refused)", key, source)
            return number
        raise ConfigError(f"expected float, got {_value_desc(value)}", key, source)

    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected str, got {_value_desc(value)}", key, source)

    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"expected a path (str), got {_value_desc(value)}", key, source)

    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {_type_name(tp)}, got {_value_desc(value)}", key, source)
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]

    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {_type_name(tp)}, got {_value_desc(value)}", key, source)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if args == ((),):  # tuple[()]
            args = ()
        if len(value) != len(args):
            raise ConfigError(
                f"expected {len(args)} items ({_type_name(tp)}), got {len(value)}: {value!r}", key, source
            )
        return tuple(_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))

    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping ({_type_name(tp)}), got {_value_desc(value)}", key, source)
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            if key_tp is str and not isinstance(k, str):
                raise ConfigError(_non_string_key(k), key, source)
            out[k] = _convert(val_tp, v, _join(key, str(k)), source)
        return out

    raise TypeError(f"{key}: unsupported config field type {tp!r}")


def _parses_as_float(value: Any) -> bool:
    if not isinstance(value, str):
        return True  # an int or float
    try:
        float(value)
    except ValueError:
        return False
    return True


# What YAML 1.1 reads as booleans; here they are strings (see the module docstring).
_YAML11_BOOL_WORDS = frozenset({"yes", "no", "on", "off", "y", "n"})


def _check_bounds(f: dataclasses.Field, value: Any, key: str, source: str | None) -> None:
    """Apply `min`/`max` (optionally exclusive) from field metadata to a number or each item of a sequence."""
    meta = f.metadata
    if not any(k in meta for k in ("min", "max")):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_bound(meta, v, f"{key}[{i}]", source)
    else:
        _check_bound(meta, value, key, source)


def _check_bound(meta: Mapping[str, Any], value: Any, key: str, source: str | None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # None (optional) and non-numbers have nothing to bound
    lo, hi = meta.get("min"), meta.get("max")
    lo_ex, hi_ex = bool(meta.get("min_exclusive")), bool(meta.get("max_exclusive"))
    bad_lo = lo is not None and (value <= lo if lo_ex else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_ex else value > hi)
    if bad_lo or bad_hi:
        raise ConfigError(f"{value!r} is out of bounds: must be {_bounds_text(meta)}", key, source)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = []
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('min_exclusive') else '>='} {meta['min']}")
    if meta.get("max") is not None:
        parts.append(f"{'<' if meta.get('max_exclusive') else '<='} {meta['max']}")
    return " and ".join(parts)


# --------------------------------------------------------------------------------------------------
# to_dict / YAML
# --------------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config: dataclasses become dicts, tuples lists, paths strings.

    The result is what `yaml.safe_dump` accepts, and `from_dict(type(obj), to_dict(obj)) == obj`.
    Called on a mapping or list it converts the contents the same way.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads plain scalars the YAML 1.2 way and refuses duplicate keys.

    PyYAML implements YAML 1.1, where `off` is false, `1e-3` a string, `010` is 8 and `1:30` is 90
    (see the module docstring); it also silently keeps the last of two equal keys.
    """


_INT_TAG, _FLOAT_TAG, _BOOL_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
# YAML 1.1 resolvers dropped: bool/int/float are replaced below, and timestamp (`2024-01-01` -> date)
# and value (`=`, which SafeLoader cannot even construct) are left as strings.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in (_INT_TAG, _FLOAT_TAG, _BOOL_TAG, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# The YAML 1.2 core schema's bool, int and float (bool in any case, as the 1.1 words were).
_StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?i:true|false)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(_INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?  # 1.5, .5, 1., 1.5e-3
                     |[-+]?[0-9]+[eE][-+]?[0-9]+                          # 1e-3
                     |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    """Decimal (a leading 0 is not octal), 0o octal, 0x hex; an explicit `!!int` gets the same reading."""
    text = str(loader.construct_scalar(node))
    try:
        return int(text, 0) if text.lstrip("+-")[:2].lower() in ("0o", "0x", "0b") else int(text, 10)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not an integer", node.start_mark) from exc


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key]
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first defined on line {first.line + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor(_INT_TAG, _construct_int)


def _load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; ConfigError for a missing file, bad syntax (with line/column), or a non-mapping."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found" if not p.exists() else "not a file", source=source)
    text = p.read_text(encoding="utf-8")
    try:
        data = _load_yaml_text(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(m) for m in (exc.context, exc.problem) if m)
        raise ConfigError(f"invalid YAML: {where}{what}", source=source) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from exc
    if data is None:  # an empty file is an empty mapping; from_dict then names any required key
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, got {type(data).__name__}", source=source)
    return data


class _QuotingDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string either YAML 1.1 or 1.2 would read as something else.

    So the strings 'off' and '1e3' are written quoted, and the file reads back the same with our
    loader and with any YAML 1.1 reader (yaml.safe_load).
    """


_QuotingDumper.yaml_implicit_resolvers = {
    first: [*yaml.SafeDumper.yaml_implicit_resolvers.get(first, []),
            *_StrictLoader.yaml_implicit_resolvers.get(first, [])]
    for first in {*yaml.SafeDumper.yaml_implicit_resolvers, *_StrictLoader.yaml_implicit_resolvers}
}


def dump_yaml(obj: Any, path: str | os.PathLike) -> None:
    """Write a config (dataclass or plain mapping) as YAML, atomically (temp file + os.replace)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(to_dict(obj), Dumper=_QuotingDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    # Same directory so os.replace is a rename on one filesystem: readers see old or new, never half.
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# Input paths
# --------------------------------------------------------------------------------------------------

PathKind = Literal["dir", "file", "dir_or_file"]
_KIND_WORDS = {"dir": "folder", "file": "file", "dir_or_file": "file or folder"}


def input_paths(obj: Any, prefix: str = "") -> list[tuple[str, Path, PathKind, Mapping[str, Any]]]:
    """(dotted key, path, kind, field metadata) of every set field marked `metadata={"exists": kind}`.

    Walks nested dataclasses, lists and mappings of a built config. A null or empty value is unset
    (an optional input), and `~` is expanded as the readers do.
    """
    found: list[tuple[str, Path, PathKind, Mapping[str, Any]]] = []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            key, value = _join(prefix, f.name), getattr(obj, f.name)
            kind = f.metadata.get("exists")
            if kind is None:
                found += input_paths(value, key)
                continue
            if kind not in _KIND_WORDS:
                raise TypeError(f"{key}: metadata 'exists' must be one of {list(_KIND_WORDS)}, got {kind!r}")
            values = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
            for i, v in values:
                if v is not None and str(v).strip():
                    found.append((key if i is None else f"{key}[{i}]", Path(v).expanduser(), kind, f.metadata))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            found += input_paths(v, _join(prefix, str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += input_paths(v, f"{prefix}[{i}]")
    return found


def check_paths(obj: Any, *, source: str | None = None, prefix: str = "") -> None:
    """Raise ConfigError(source, dotted key, the path and what is wrong) for the first missing input path.

    Call it where a command is about to read its inputs, before any work (see the module docstring).
    A field's metadata may add `"exists_hint"`, said after the message (how to make the missing thing).
    """
    for key, path, kind, meta in input_paths(obj, prefix):
        if (kind == "dir" and path.is_dir()) or (kind == "file" and path.is_file()) or \
                (kind == "dir_or_file" and path.exists()):
            continue
        if path.exists():
            problem = f"{path} is a {'folder' if path.is_dir() else 'file'}, not a {_KIND_WORDS[kind]}"
        else:
            problem = f"no such {_KIND_WORDS[kind]}: {path}"
            if not path.is_absolute():
                problem += f" (relative to the working directory {Path.cwd()})"
        if meta.get("exists_hint"):
            problem += f"; {meta['exists_hint']}"
        raise ConfigError(problem, key, source)


# --------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------

_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")


def parse_override(text: str, *, source: str = "command line") -> tuple[list[str], Any]:
    """`"train.lr=3e-4"` -> (["train", "lr"], 3e-4); the value is parsed as YAML, as files are.

    So `model.hidden=[64,64]` gives a list, `train.ema=false` a bool, `sample.solver=heun` and
    `data.use_cache=off` a str (see the module docstring for how YAML 1.1's traps read here).
    """
    if "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected key=value, e.g. train.lr=3e-4", source=source)
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or not all(_KEY_SEGMENT.match(p) for p in parts):
        raise ConfigError(
            f"malformed override {text!r}: the key must be dotted names like train.lr", key or None, source
        )
    try:
        value = _load_yaml_text(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse the value of override {text!r}: {exc}", key, source) from exc
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], *, source: str = "command line") -> dict:
    """Return a deep copy of `data` with each `dotted.key=value` override set, in order.

    Missing intermediate sections are created as empty mappings; a list element can be addressed
    by index (`model.hidden.0=32`). Whether a key exists in the schema is checked later by
    `from_dict`, which names the key.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of strings, not one string")
    out = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text, source=source)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            nxt = _child(node, part)
            if nxt is _MISSING:
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, (dict, list)):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {text!r} sets a key inside {where!r}, which is {_value_desc(nxt)}, not a mapping",
                    ".".join(parts),
                    source,
                )
            node = nxt
        _set_child(node, parts[-1], value, text, source)
    return out


_MISSING = object()


def _child(node: dict | list, part: str) -> Any:
    if isinstance(node, list):
        i = int(part) if part.isdigit() else None
        return node[i] if i is not None and i < len(node) else _MISSING
    return node.get(part, _MISSING)


def _set_child(node: dict | list, part: str, value: Any, text: str, source: str) -> None:
    if isinstance(node, list):
        if not (part.isdigit() and int(part) < len(node)):
            raise ConfigError(f"override {text!r}: index {part!r} is not within a list of {len(node)}", None, source)
        node[int(part)] = value
    else:
        node[part] = value


def build_with_overrides(build: Callable[[dict, str], T], path: str | os.PathLike, overrides: Sequence[str] = ()) -> T:
    """`build(apply_overrides(load_yaml(path), overrides), str(path))`, with errors that name the override.

    When the offending key was set by an override the error's source is that override instead of
    the file, so `train.lrr=1` reports "command line (override 'train.lrr=1')".
    """
    data = apply_overrides(load_yaml(path), overrides)
    try:
        return build(data, str(path))
    except ConfigError as exc:
        text = override_for(exc.key, overrides)
        if text is not None:
            raise ConfigError(exc.message, exc.key, f"command line (override {text!r})") from exc
        raise


def override_for(key: str | None, overrides: Sequence[str]) -> str | None:
    """The override that set dotted `key` (or a section holding it), if any: the last one, which took effect."""
    for text in reversed(overrides):
        okey = text.split("=", 1)[0].strip()
        if key and (key == okey or key.startswith((okey + ".", okey + "["))):
            return text
    return None


def load_config(cls: type[T], path: str | os.PathLike, overrides: Sequence[str] = ()) -> T:
    """Load dataclass `cls` from a YAML file with dotted overrides (see build_with_overrides)."""
    return build_with_overrides(lambda data, source: from_dict(cls, data, source=source), path, overrides)


# --------------------------------------------------------------------------------------------------
# Help text
# --------------------------------------------------------------------------------------------------


def config_fields_help(cls: type, *, prefix: str = "") -> str:
    """One line per field: dotted key, type, default (or "required"), bounds and `help` metadata.

    Nested dataclass fields are expanded under their dotted prefix.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"config_fields_help needs a dataclass type, got {cls!r}")
    hints = _hints(cls)
    lines: list[str] = []
    for f in _init_fields(cls):
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            head = f"{'  ' * key.count('.')}{key}:"
            if f.metadata.get("help"):
                head += f"  # {f.metadata['help']}"
            lines.append(head)
            lines.append(config_fields_help(tp, prefix=key))
            continue
        if f.default is not dataclasses.MISSING:
            default = f"= {to_dict(f.default)!r}"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"= {to_dict(f.default_factory())!r}"
        else:
            default = "(required)"
        extras = []
        if any(f.metadata.get(k) is not None for k in ("min", "max")):
            extras.append(f"[{_bounds_text(f.metadata)}]")
        if f.metadata.get("help"):
            extras.append(str(f.metadata["help"]))
        line = f"{'  ' * key.count('.')}{key}: {_type_name(tp)} {default}"
        if extras:
            line += "  # " + " ".join(extras)
        lines.append(line)
    return "\n".join(lines)
