"""The TensorRT 8.x implicit-calibration cache file, written from the one calibration table.

TensorRT 8.5/8.6 (JetPack 5 and 6.0) quantize a float ONNX graph implicitly:
an ``IInt8EntropyCalibrator2`` hands the builder either calibration batches or
a cache file of per-tensor scales. Writing that cache from our calibration
table (:mod:`uopsl.calibration.table`) gives the engine exactly the ranges the
ONNX Runtime and TensorRT Q/DQ models use, without re-running calibration on
the device.

Format (plain ASCII, one entry per line)::

    TRT-8601-EntropyCalibration2
    image: 3c010204
    /features/features.0/Conv_output_0: 3d9d69c8

* First line: ``TRT-<version>-<algorithm>``. ``<version>`` is TensorRT's
  ``NV_TENSORRT_VERSION`` integer: ``major*1000 + minor*100 + patch`` up to
  8.x (``8601`` = 8.6.1) and ``major*10000 + minor*100 + patch`` from 10.0
  (``100300`` = 10.3.0). ``<algorithm>`` is ``EntropyCalibration2``,
  ``EntropyCalibration``, ``MinMaxCalibration`` or ``LegacyCalibration``.
* Then ``<tensor name>: <hex>`` where ``<hex>`` is the IEEE-754 float32 bit
  pattern of the tensor's *scale*, printed as a big-endian hexadecimal integer
  (``struct.pack(">f", scale).hex()``), and scale = amax / 127 (symmetric s8).
  Tensor names may themselves contain ``": "``; the value follows the last one.

Sources checked (public code, read through this project's search tool):
NVIDIA's TensorRT developer guide as mirrored in notes on the cache
("TRT-7000-EntropyCalibration2 / data: 3c008912 / conv1: 3c88edfc ...",
"value corresponds to the floating-point activation scales",
``ABS(max_dynamic_range) / 127.0f``); ONNX Runtime's TensorRT execution
provider, ``onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_utils.h``
(microsoft/onnxruntime), ``ReadDynamicRange``: checks the ``TRT-`` prefix,
reads each value with ``strtoul(str, nullptr, 16)``, reinterprets it as a
float32 and multiplies by 127 to get the dynamic range; caches produced by
TensorRT itself in public repositories (``TRT-8401-EntropyCalibration2``,
``TRT-100300-EntropyCalibration2`` for TensorRT 10.3). TensorRT prints the
hex without zero padding, which only shows for a zero scale (``tensor: 0``);
this writer pads nothing either, and the reader accepts 1-8 hex digits. It
never writes a zero scale, though (:func:`format_cache`). The
version-integer formulas are those of ``NvInferVersion.h`` / ``NvInfer.h``
(``NV_TENSORRT_VERSION``) in 8.x and 10.x.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from uopsl.runtime.trt_version import parse_version
from uopsl.runtime.errors import ConfigError, DataError, UopslError
from uopsl.runtime.fsio import write_text

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")
INT8_MAX = 127.0
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32 (numpy.finfo(numpy.float32).tiny)


def version_int(trt_version: str) -> int:
    """TensorRT's ``NV_TENSORRT_VERSION`` for a version string: ``"8.6.1"`` -> 8601, ``"10.3.0"`` -> 100300."""
    try:
        v = parse_version(trt_version)
    except UopslError as exc:
        raise ConfigError(str(exc)) from exc
    major, minor, patch = (v + (0, 0))[:3]
    if major < 10:
        return major * 1000 + minor * 100 + patch
    return major * 10000 + minor * 100 + patch


def scale_hex(scale: float) -> str:
    """The cache text of a scale: float32 bits as an unpadded lowercase hex integer (as TensorRT writes it)."""
    (bits,) = struct.unpack(">I", struct.pack(">f", scale))
    return format(bits, "x")


def hex_scale(text: str) -> float:
    """Inverse of :func:`scale_hex`."""
    return float(struct.unpack(">f", struct.pack(">I", int(text, 16)))[0])


def amax_to_scale(amax: float) -> float:
    """float32(amax) / 127 rounded to float32, as TensorRT computes it (``amax / 127.0f``)."""
    a = struct.unpack(">f", struct.pack(">f", amax))[0]
    # Two float32 operands divided in double precision and rounded once to float32
    # give the correctly rounded float32 quotient, i.e. what a float32 division gives.
    return float(struct.unpack(">f", struct.pack(">f", a / INT8_MAX))[0])


@dataclass(frozen=True)
class TrtCalibrationCache:
    """A parsed cache: TensorRT version integer, algorithm and per-tensor scales."""

    version: int
    algorithm: str
    scales: dict[str, float] = field(default_factory=dict)

    def amax(self, name: str) -> float:
        """The tensor's symmetric range (scale x 127)."""
        try:
            return self.scales[name] * INT8_MAX
        except KeyError:
            raise ConfigError(f"the calibration cache has no tensor {name!r}") from None


def format_cache(amax: Mapping[str, float], trt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """The cache text for per-tensor ``amax`` (absolute maximum, >= 0), for TensorRT ``trt_version``."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"calibration algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not amax:
        raise ConfigError("no tensor ranges to write: the calibration table is empty")
    lines = [f"TRT-{version_int(trt_version)}-{algorithm}"]
    for name, value in amax.items():
        if not isinstance(name, str) or not name or any(c in name for c in "\r\n"):
            raise ConfigError(f"tensor name {name!r} cannot be written to a TensorRT cache (empty or multi-line)")
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"tensor {name!r}: amax must be a finite value >= 0, got {value!r}")
        if v > _FLOAT32_MAX:
            raise ConfigError(f"tensor {name!r}: amax {v} does not fit a float32")
        scale = amax_to_scale(v)
        # A tensor that was zero on every calibration image has no range. TensorRT writes such a scale as
        # 0, and zero scales are suspected in INT8 build failures on 8.5 and 8.6, the versions this file is
        # for (NVIDIA/TensorRT#4446, JetPack 5.1: "Assertion getter(i) != 0 failed" in quantizeBiasCommon,
        # though its reporter later found another cause; #3020, 8.6.1). ONNX Runtime's quantizer gives such a tensor scale 1.0 in the Q/DQ files (compute_scale_zp: a
        # scale below float32's smallest normal becomes 1.0); the cache does the same, so engines built
        # either way agree. For a tensor that stays zero any scale gives the same result.
        if scale < _FLOAT32_TINY:
            scale = 1.0
        lines.append(f"{name}: {scale_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_cache(path: str | os.PathLike[str], amax: Mapping[str, float], trt_version: str,
                algorithm: str = "EntropyCalibration2") -> Path:
    """Write :func:`format_cache` to ``path`` atomically; returns the path."""
    write_text(path, format_cache(amax, trt_version, algorithm))
    return Path(path)


def parse_cache(text: str, *, source: str = "calibration cache") -> TrtCalibrationCache:
    """Parse cache text; DataError (naming ``source`` and the line) when it is not a TensorRT cache."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{source}: empty file; expected a 'TRT-<version>-<algorithm>' first line")
    m = _HEADER.match(lines[0].strip())
    if m is None:
        raise DataError(
            f"{source}: first line {lines[0][:60]!r} is not a TensorRT calibration cache header "
            "(expected e.g. 'TRT-8601-EntropyCalibration2')"
        )
    scales: dict[str, float] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        value = value.strip()
        if not sep or not name or not _HEX.match(value):
            raise DataError(f"{source}: line {i} {line[:80]!r} is not '<tensor>: <hex float32>'")
        scales[name] = hex_scale(value)
    return TrtCalibrationCache(int(m.group(1)), m.group(2), scales)


def retag_cache(text: str, trt_version: str) -> str:
    """``text`` (a cache) with its header naming TensorRT ``trt_version``, every scale line kept as it is.

    TensorRT refuses a cache whose ``TRT-<version>-<algorithm>`` header is not its own (a TensorRT 10 build
    given an 8.6 cache stops with "Calibration table does not match calibrator algorithm type", then fails
    with no data to calibrate from). The scales mean the same in every version (amax / 127), so a cache
    carried across a JetPack upgrade only needs the running version's tag.
    """
    head, sep, rest = text.partition("\n")
    m = _HEADER.match(head.strip())
    if m is None:
        raise DataError(f"first line {head[:60]!r} is not a TensorRT calibration cache header")
    return f"TRT-{version_int(trt_version)}-{m.group(2)}{sep}{rest}"


def read_cache(path: str | os.PathLike[str]) -> TrtCalibrationCache:
    """Read and parse a cache file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{p}: calibration cache not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read the calibration cache ({exc})") from exc
    return parse_cache(text, source=str(p))


__all__ = [
    "ALGORITHMS",
    "TrtCalibrationCache",
    "amax_to_scale",
    "format_cache",
    "hex_scale",
    "parse_cache",
    "read_cache",
    "retag_cache",
    "scale_hex",
    "version_int",
    "write_cache",
]
