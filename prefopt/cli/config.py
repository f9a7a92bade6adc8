"""Typed configs from YAML plus dotted ``key=value`` overrides, validated before any work.

Errors name the key, the value and what was expected; an unknown key suggests the closest one.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from prefopt.errors import ConfigError
from prefopt.validation import check_config, describe_range, field_kind, type_hints


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (with the few safe conversions YAML needs)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}{hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data`` and validate the whole tree (ranges, then each section's
    combinations: :func:`prefopt.validation.check_config`); unknown keys fail with a suggestion."""
    obj = _build(cls, data, prefix)
    check_config(obj, prefix)
    return obj


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def apply_override(data: dict, dotted: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict (the value is parsed as YAML)."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}': expected key=value, e.g. train.steps=50")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override '{dotted}': the value is not valid YAML ({problem}); in YAML, "
                          "backslashes need single quotes, e.g. \"model.trainable=['^model\\.norm\\.']\"") from None


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Read YAML ``path`` (optional), apply overrides, validate into ``cls``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for o in overrides or []:
        apply_override(data, o)
    return from_dict(cls, data)


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, recursively; used by ``--help``-style listings."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        expected = describe_range(f.metadata, field_kind(cls, f.name))
        help_ = f.metadata.get("help", "") + (f" Expected: {expected}." if expected else "")
        rows.append((prefix + f.name, repr(default), help_))
    return rows
