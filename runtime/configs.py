"""Building frozen config dataclasses from JSON-like dicts, refusing unknown keys and values of the wrong kind.

Configs are saved next to every output and read back from manifests,
checkpoints and user files; an unknown key is a typo or a version mismatch,
never something to ignore silently. A value of the wrong kind (a size written
as the string "256") is refused naming the field, instead of failing later
inside a comparison with a Python message ("'<=' not supported between
instances of 'int' and 'str'").
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np

from uopsl.runtime.errors import ConfigError

T = TypeVar("T")

# Annotation text -> (accepted types, words for a message); numpy's numbers count (a config built in memory from
# computed values). Fields of other types are not checked here.
_SIMPLE: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((numbers.Integral,), "a whole number"),
    "float": ((numbers.Real,), "a number"),
    "bool": ((bool, np.bool_), "true or false"),
    "str": ((str,), "a string"),
}


@lru_cache(maxsize=None)
def _checked_fields(cls: type) -> dict[str, tuple[tuple[type, ...], str, bool]]:
    """Field name -> (accepted types, words, None allowed) for the fields with a simple annotation."""
    out: dict[str, tuple[tuple[type, ...], str, bool]] = {}
    for f in dataclasses.fields(cls):
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        parts = [p.strip() for p in str(text).split("|")]
        optional = "None" in parts
        parts = [p for p in parts if p != "None"]
        if len(parts) == 1 and parts[0] in _SIMPLE:
            types, words = _SIMPLE[parts[0]]
            out[f.name] = (types, words, optional)
    return out


def _kind_problem(cls: type, name: str, value: Any) -> str | None:
    spec = _checked_fields(cls).get(name)
    if spec is None:
        return None
    types, words, optional = spec
    if value is None:
        return None if optional else f"must be {words}, got null"
    # bool is an int in Python: true is not a size, and 1 is not a switch.
    if isinstance(value, (bool, np.bool_)) and bool not in types:
        return f"must be {words}, got {value!r}"
    if not isinstance(value, types):
        return f"must be {words}{' or null' if optional else ''}, got {value!r}"
    return None


def config_from_dict(cls: type[T], d: Mapping[str, Any], what: str) -> T:
    """``cls(**d)`` after checking every key of ``d`` is a field of the dataclass ``cls`` and every value of a
    simply typed field (int, float, bool, str, or one of them or None) is of that kind."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {what} parameters {sorted(unknown)}; expected a subset of {sorted(known)}")
    for name, value in d.items():
        problem = _kind_problem(cls, name, value)  # type: ignore[arg-type]
        if problem:
            raise ConfigError(f"{what} parameter {name!r} {problem}")
    return cls(**dict(d))
