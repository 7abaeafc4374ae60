"""TensorRT version strings, read the one way that engine headers, calibration caches and the API dispatch share.

A module of its own, with nothing but the standard library: ``engine_header`` must import without numpy (a
device checks an engine file before anything else loads), and ``trt_compat``, which needs numpy, imports it
too; kept in either, one of them imported the other back.
"""

from __future__ import annotations

import re

from uopsl.runtime.errors import BundleError


def parse_version(text: str) -> tuple[int, ...]:
    """``"8.6.1"`` -> (8, 6, 1); ``"10.0.0b6"`` -> (10, 0, 0); at most four numeric parts."""
    parts: list[int] = []
    for piece in str(text).strip().split(".")[:4]:
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):  # "0b6": a pre-release suffix ends the numeric part
            break
    if len(parts) < 2:
        raise BundleError(f"cannot read the TensorRT version {text!r} (expected e.g. '8.6.1' or '10.13.0.35')")
    return tuple(parts)
