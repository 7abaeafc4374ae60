"""Building frozen config dataclasses from JSON-like dicts, refusing unknown keys.

Configs are saved next to every output and read back from manifests,
checkpoints and user files; an unknown key is a typo or a version mismatch,
never something to ignore silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from uopsl.runtime.errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], d: Mapping[str, Any], what: str) -> T:
    """``cls(**d)`` after checking every key of ``d`` is a field of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {what} parameters {sorted(unknown)}; expected a subset of {sorted(known)}")
    return cls(**dict(d))
