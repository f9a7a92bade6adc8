"""Range checks of config dataclasses, read from field metadata: the one validation mechanism.

A field declares its range next to its help text, e.g.
``field(default=16, metadata={"help": "...", "min": 1})``, with the bound keys

* ``min`` / ``max``: inclusive bounds,
* ``gt`` / ``lt``: exclusive bounds,

(``None`` values of optional fields are not checked; any float must be finite).
:func:`check_config` walks a config tree, checks every field, then calls each section's
``validate(prefix)`` for the combinations a single field cannot express; every failure is a
:class:`ConfigError` whose one line names the full key, the value and what was expected:
``train.batch_size: got 0, expected an integer >= 1``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any

from prefopt.errors import ConfigError

BOUND_KEYS = ("min", "gt", "max", "lt")


def bad_value(key: str, value: Any, expected: str) -> ConfigError:
    """The one message format of a rejected config value."""
    return ConfigError(f"{key}: got {value!r}, expected {expected}")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def describe_range(meta: dict, kind: str = "a number") -> str:
    """'an integer >= 1', 'a number in [0, 1]', ... from a field's bound keys ('' if unbounded)."""
    low = ("[", meta["min"]) if "min" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["max"]) if "max" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"{kind} in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    if low:
        return f"{kind} {'>=' if low[0] == '[' else '>'} {_num(low[1])}"
    if high:
        return f"{kind} {'<=' if high[0] == ']' else '<'} {_num(high[1])}"
    return ""


@functools.lru_cache(maxsize=None)
def type_hints(cls) -> dict:
    """``typing.get_type_hints(cls)``, cached (annotations are strings under ``from __future__``)."""
    return typing.get_type_hints(cls)


def field_kind(cls, name: str) -> str:
    """'an integer' for int fields, else 'a number' (from the annotation, as YAML gives 1 for 1.0)."""
    hint = type_hints(cls).get(name)
    args = set(typing.get_args(hint)) or {hint}
    return "an integer" if int in args and float not in args else "a number"


def _in_range(value: float, meta: dict) -> bool:
    return (("min" not in meta or value >= meta["min"]) and ("gt" not in meta or value > meta["gt"])
            and ("max" not in meta or value <= meta["max"]) and ("lt" not in meta or value < meta["lt"]))


def check_fields(obj, prefix: str = "") -> None:
    """Check every bounded field of one dataclass instance (not its sub-sections); a float field
    without bounds must still be finite."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        bounded = any(k in f.metadata for k in BOUND_KEYS)
        if value is None or not (bounded or isinstance(value, float)):
            continue
        kind = field_kind(type(obj), f.name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        finite = number and math.isfinite(value)
        if not finite and number:
            kind = "a finite number"
        if not finite or (kind == "an integer" and not isinstance(value, int)) or not _in_range(value, f.metadata):
            raise bad_value(prefix + f.name, value, describe_range(f.metadata, kind) or kind)


def check_config(obj, prefix: str = "") -> None:
    """Validate a config tree: bounded fields, sub-sections (also lists of them), then the section's
    own ``validate(prefix)`` (combinations), so a section's checks see valid sub-sections."""
    check_fields(obj, prefix)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{prefix}{f.name}.")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_config(item, f"{prefix}{f.name}[{i}].")
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
