"""How many inference threads or preprocessing workers a run may ask for.

A thread or worker count is refused above :func:`parallelism_limit`, not clamped: ``--threads 100000`` once
made ONNX Runtime try to start that many threads and exhausted the machine's process table, so that other
programs (the camera software beside a ``watch``) could not start either. More threads than cores only slow
inference, and each worker process holds its own decoder and buffers, so the limit is generous (eight per
usable core, at least 64) and exists to stop typing mistakes, not to tune.
"""

from __future__ import annotations

import numbers
import os

from uopsl.runtime.errors import ConfigError

_PER_CORE = 8
_FLOOR = 64


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def parallelism_limit() -> int:
    """The largest thread or worker count accepted on this machine."""
    return max(_FLOOR, _PER_CORE * usable_cores())


def check_parallelism(what: str, value: int | None) -> None:
    """Refuse a count that is not a whole number from 1 to :func:`parallelism_limit` (None: the default).

    ``what`` names the setting as the caller's user knows it (``--threads``, ``workers``).
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if value < 1:
        raise ConfigError(f"{what} must be at least 1 (or left out for the default), got {value}")
    limit = parallelism_limit()
    if value > limit:
        cores, total = usable_cores(), os.cpu_count() or 1
        has = (f"this machine has {cores} CPU core{'s' if cores != 1 else ''}" if cores >= total
               else f"this process may run on {cores} of the machine's {total} CPU cores")
        raise ConfigError(f"{what} {value} is more than can be used here: {has}; give at most {limit} (more than "
                          "the cores only slows the run), or leave it out for the default")
