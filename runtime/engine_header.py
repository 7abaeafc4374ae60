"""TensorRT engine files: a length-prefixed JSON header in front of the serialized plan.

A TensorRT plan runs only under the TensorRT version and on the GPU
architecture it was built for, and TensorRT itself says little more than
"deserialization failed" when that is not the case. The header records what
the engine was built for, so the runtime can refuse a mismatched engine
*before* deserialising it, with a message that says how to rebuild it.

File layout (all integers little-endian)::

    offset  size  field
    0       8     magic b"UOPSLENG"
    8       4     header format version (uint32), currently 1
    12      4     JSON length N in bytes (uint32)
    16      N     JSON object, UTF-8 (see :class:`EngineHeader`)
    16+N    ...   the serialized TensorRT plan, unchanged

Compatibility rule (:func:`check_compatible`), from NVIDIA's documentation
("By default, TensorRT engines are compatible only with the version of
TensorRT used to build them"; "Without [hardware compatibility] mode, engines
are not portable across different GPU architectures"):

* TensorRT version: ``major.minor.patch`` must be equal; when both sides also
  report the build number (``8.5.2.2``) it must be equal too.
* An engine built with ``version_compatible`` (TensorRT >= 8.6) runs under an
  equal or later TensorRT of the same major version, and across exactly the
  two major-version pairs NVIDIA supports: 8.x (>= 8.6) -> 10.x and
  10.x -> 11.x. See :func:`version_mismatch` for the sources.
* Platform: the operating system and CPU architecture (``platform``,
  ``"Linux-aarch64"``) must be equal when the header records them ("Serialized
  engines are not portable across platforms", NVIDIA's support matrix);
  headers written before the field existed are not checked.
* GPU: the compute capability (``"8.7"``) must be equal. The same compute
  capability under another GPU name (e.g. two Ampere boards; Orin AGX, NX and
  Nano all report 8.7) is accepted with a warning: NVIDIA does not support it
  ("engines are specific to the exact GPU model they were built on"; TensorRT
  itself warns it "is likely to affect performance or even cause errors"),
  so the warning says to rebuild on this device.

The header also records the ``uopsl build-engine`` options the engine was
built with (``extra["build_options"]``, see :class:`BuildOptions`), so that
:func:`rebuild_command` prints a command that rebuilds the same engine.
Headers written before that field existed still give a working command.

This module is numpy-free and imports nothing heavy; :func:`check_compatible`
only touches TensorRT and the CUDA binding when the caller does not say what
is running.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uopsl.runtime.errors import BundleError, EngineMismatchError
from uopsl.runtime.fsio import atomic_open, load_json_strict, sha256_bytes
from uopsl.runtime.trt_version import parse_version
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

MAGIC = b"UOPSLENG"
HEADER_FORMAT = 1
_PREFIX = struct.Struct("<8sII")  # magic, format version, JSON length
# A header is a few hundred bytes; anything past this is a corrupt length field.
MAX_JSON_BYTES = 1 << 20
PRECISIONS = ("fp32", "fp16", "int8")
INT8_ROUTES = ("", "qdq", "legacy-calibrator", "legacy-cache")  # "" for float engines


BUILD_OPTIONS_KEY = "build_options"  # key in EngineHeader.extra
CALIB_SOURCES = ("", "table", "cache", "images")


@dataclass(frozen=True)
class BuildOptions:
    """The ``uopsl build-engine`` options an engine was built with, beyond the header's own fields.

    Stored in ``EngineHeader.extra["build_options"]`` (not as header fields) so
    that headers stay format 1 and older toolkits still read newer engines.
    Without them :func:`rebuild_command` could not replay ``--no-gpu-fallback``,
    ``--strongly-typed``, ``--fp16-fallback``, ``--opt-level`` or where the INT8
    ranges came from, and the printed command would build another engine (or,
    for ``legacy-calibrator``, fail for want of ``--calib-images``).

    strongly_typed: as requested (None: the TensorRT version's default), not as
        resolved; the resolved value is ``EngineHeader.strongly_typed``.
    calib_source: ``table`` (the bundle's calibration.json), ``cache`` (a
        TensorRT calibration cache file), ``images`` (legacy calibrator) or ``""``.
    calib_cache / calib_images: absolute paths on the device that built it.
    calib_batch / calib_max_images: ``--calib-batch`` / ``--calib-max-images``.
    tf32: the Python API's ``EngineBuildConfig.tf32`` (the CLI has no option).
    device: the CUDA device index it was built on (``--device``).
    """

    gpu_fallback: bool = True
    strongly_typed: bool | None = None
    fp16_fallback: bool = False
    opt_level: int | None = None
    tf32: bool = False
    calib_source: str = ""
    calib_cache: str | None = None
    calib_images: str | None = None
    calib_batch: int | None = None
    calib_max_images: int | None = None
    device: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_extra(cls, extra: Any, *, source: str = "engine") -> BuildOptions | None:
        """The recorded options, or None for headers written before they were recorded.

        A value of the wrong type is left out (that option falls back to the
        command's default) with a warning naming it: a damaged record must not
        stop the mismatch message that prints the rebuild command.
        """
        raw = extra.get(BUILD_OPTIONS_KEY) if isinstance(extra, dict) else None
        if not isinstance(raw, dict):
            return None
        kwargs: dict[str, Any] = {}
        for name, ok in _OPTION_TYPES.items():
            if name not in raw:
                continue
            value = raw[name]
            if ok(value):
                kwargs[name] = value
            else:
                log.warning("%s: engine header build option %s=%r has the wrong type; left out of the rebuild "
                            "command", source, name, value)
        return cls(**kwargs)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_OPTION_TYPES: dict[str, Callable[[Any], bool]] = {
    "gpu_fallback": lambda v: isinstance(v, bool),
    "strongly_typed": lambda v: v is None or isinstance(v, bool),
    "fp16_fallback": lambda v: isinstance(v, bool),
    "opt_level": lambda v: v is None or (_is_int(v) and 0 <= v <= 5),
    "tf32": lambda v: isinstance(v, bool),
    "calib_source": lambda v: v in CALIB_SOURCES,
    "calib_cache": lambda v: v is None or isinstance(v, str),
    "calib_images": lambda v: v is None or isinstance(v, str),
    "calib_batch": lambda v: v is None or (_is_int(v) and v >= 1),
    "calib_max_images": lambda v: v is None or (_is_int(v) and v >= 1),
    "device": lambda v: _is_int(v) and v >= 0,
}


@dataclass(frozen=True)
class EngineHeader:
    """What an engine was built from, for which TensorRT and GPU, and how.

    ``compute_capability`` is ``"major.minor"`` (``"8.7"`` for Jetson Orin).
    ``int8_mode`` is the resolved INT8 route (``qdq``, ``legacy-calibrator``,
    ``legacy-cache``) or ``""`` for float engines. The build settings
    (batches, workspace, DLA core, INT8 route, and in ``extra["build_options"]``
    the other ``uopsl build-engine`` options: :class:`BuildOptions`) are
    recorded so that a mismatch message can print the command that rebuilds
    the engine.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    source_onnx: str
    source_onnx_sha256: str
    min_batch: int
    opt_batch: int
    max_batch: int
    plan_sha256: str = ""
    plan_size: int = 0
    dla_core: int | None = None
    int8_mode: str = ""
    strongly_typed: bool = False
    version_compatible: bool = False
    workspace_mib: int = 0
    input_name: str = ""
    input_shape: tuple[int, ...] = ()  # per-sample shape, e.g. (320, 320, 3)
    built_at: str = ""
    toolkit_version: str = __version__
    platform: str = ""  # this_platform() of the building machine; "" in headers from before it was recorded
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @property
    def build_options(self) -> BuildOptions | None:
        """The recorded ``uopsl build-engine`` options (None in headers from before they were recorded)."""
        return BuildOptions.from_extra(self.extra)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "engine") -> EngineHeader:
        known = {f.name for f in fields(cls)}
        # Unknown keys come from a newer toolkit; keep them readable, do not fail.
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            shape = kwargs.get("input_shape", ())
            if not isinstance(shape, (list, tuple)) or not all(_is_int(x) for x in shape):
                raise TypeError(f"input_shape must be a list of integers, got {shape!r}")
            kwargs["input_shape"] = tuple(shape)
            h = cls(**kwargs)
            # bool is an int to Python: "dla_core": true would otherwise read as DLA core 1.
            for name in ("min_batch", "opt_batch", "max_batch", "plan_size", "workspace_mib"):
                if not _is_int(getattr(h, name)):
                    raise TypeError(f"{name} must be an integer, got {getattr(h, name)!r}")
            if h.dla_core is not None and not (_is_int(h.dla_core) and h.dla_core >= 0):
                raise TypeError(f"dla_core must be an integer >= 0 or null, got {h.dla_core!r}")
            # A precision or INT8 route no build writes would pick a backend and a rebuild command for an
            # engine that is not there ("INT8" read as a float engine, say).
            if h.precision not in PRECISIONS:
                raise ValueError(f"precision must be one of {PRECISIONS}, got {h.precision!r}")
            if h.int8_mode not in INT8_ROUTES:
                raise ValueError(f"int8_mode must be one of {INT8_ROUTES}, got {h.int8_mode!r}")
            if not 1 <= h.min_batch <= h.opt_batch <= h.max_batch:
                raise ValueError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {h.min_batch}, "
                                 f"{h.opt_batch}, {h.max_batch}")
        except (TypeError, ValueError) as exc:
            raise BundleError(
                f"{source}: engine header is malformed ({exc}); rebuild the engine with 'uopsl build-engine'"
            ) from exc
        return h


def this_platform() -> str:
    """``"<system>-<machine>"`` of this machine (``"Linux-x86_64"``, ``"Linux-aarch64"``, ``"Windows-AMD64"``)."""
    return f"{platform.system()}-{platform.machine()}"


def now_utc() -> str:
    """An ISO-8601 UTC timestamp for ``built_at``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def encode(plan: bytes, header: EngineHeader) -> bytes:
    """The bytes of an engine file (header with the plan's checksum and size filled in)."""
    from dataclasses import replace

    h = replace(header, plan_sha256=sha256_bytes(plan), plan_size=len(plan))
    if h.precision not in PRECISIONS:
        raise BundleError(f"engine precision must be one of {PRECISIONS}, got {h.precision!r}")
    EngineHeader.from_dict(h.to_dict(), source="engine header to write")  # what a reader would refuse is not written
    blob = json.dumps(h.to_dict(), sort_keys=True).encode("utf-8")
    return _PREFIX.pack(MAGIC, HEADER_FORMAT, len(blob)) + blob + plan


def write_engine(path: str | os.PathLike[str], plan: bytes, header: EngineHeader) -> EngineHeader:
    """Write header + plan to ``path`` atomically; returns the header as written."""
    data = encode(bytes(plan), header)
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return _parse(data, str(path))[0]


def _parse(data: bytes, source: str) -> tuple[EngineHeader, int]:
    """Header and the offset where the plan starts; raises BundleError naming ``source``."""
    if len(data) < _PREFIX.size:
        raise BundleError(
            f"{source}: {len(data)} bytes is too short for an engine file (truncated?); "
            "rebuild it with 'uopsl build-engine' or copy the bundle again"
        )
    magic, fmt, n = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise BundleError(
            f"{source}: not a uopsl engine file (starts with {magic!r}, expected {MAGIC!r}); a bare TensorRT "
            "plan has no header: build engines with 'uopsl build-engine'"
        )
    if fmt != HEADER_FORMAT:
        raise BundleError(
            f"{source}: engine header format {fmt} is not supported by uopsl {__version__} "
            f"(expected {HEADER_FORMAT}); rebuild the engine with this toolkit"
        )
    if n > MAX_JSON_BYTES or _PREFIX.size + n > len(data):
        raise BundleError(
            f"{source}: engine header says {n} bytes of JSON but the file has {len(data) - _PREFIX.size} "
            "after the prefix (truncated or corrupt); rebuild the engine or copy the bundle again"
        )
    try:
        raw = load_json_strict(data[_PREFIX.size:_PREFIX.size + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BundleError(f"{source}: engine header is not valid JSON ({why}); rebuild the engine") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{source}: engine header must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("tensorrt_version", "gpu_name", "compute_capability", "precision",
                           "source_onnx", "source_onnx_sha256", "min_batch", "opt_batch", "max_batch")
               if k not in raw]
    if missing:
        raise BundleError(f"{source}: engine header lacks {missing}; rebuild the engine with 'uopsl build-engine'")
    return EngineHeader.from_dict(raw, source=source), _PREFIX.size + n


def _read_prefix(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PREFIX.size)
            if len(head) < _PREFIX.size:
                return head
            _, _, n = _PREFIX.unpack_from(head, 0)
            return head + fh.read(min(n, MAX_JSON_BYTES + 1))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: engine file not found; build it with 'uopsl build-engine'") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the engine file ({exc})") from exc


def read_header(path: str | os.PathLike[str]) -> EngineHeader:
    """The header of the engine file at ``path`` (reads only the header bytes)."""
    p = Path(path)
    return _parse(_read_prefix(p), str(p))[0]


def read_plan(path: str | os.PathLike[str], *, verify: bool = True,
              expected_sha256: str | None = None) -> tuple[EngineHeader, bytes]:
    """Header and serialized plan; with ``verify`` the plan must match its recorded size and sha256.

    ``expected_sha256``: the whole file's sha256 as the bundle's manifest lists it; the plan returned
    then comes from exactly the bytes the bundle was verified with.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{p}: engine file not found; build it with 'uopsl build-engine'") from exc
    except OSError as exc:
        raise BundleError(f"{p}: cannot read the engine file ({exc})") from exc
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise BundleError(f"{p} is not the engine the bundle's manifest lists (its sha256 differs: replaced or "
                          "damaged since the bundle was verified); copy the bundle again or rebuild the engine")
    header, start = _parse(data, str(p))
    plan = data[start:]
    if verify:
        if header.plan_size and len(plan) != header.plan_size:
            raise BundleError(
                f"{p}: plan is {len(plan)} bytes, the header says {header.plan_size} (truncated?); "
                "copy the bundle again or rebuild the engine"
            )
        if header.plan_sha256 and sha256_bytes(plan) != header.plan_sha256:
            raise BundleError(f"{p}: plan sha256 differs from its header (corrupted); rebuild the engine")
    return header, plan


# -- compatibility -----------------------------------------------------------------------
# Version-compatible engines across major versions: the only pairs NVIDIA supports.
# TensorRT 11.4.1 Support Matrix, "Engine Portability"
# (docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html): "Two combinations are
# supported across major versions: TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime,
# and TensorRT 8 version-compatible engines can run with a TensorRT 10 runtime. No other combination across
# major versions is supported." The Version Compatibility page (10.16.1 and latest) adds the conditions: "the
# plan must be built with a version at least 8.6 or higher", and the plan carries a copy of the lean runtime
# that runs only when the runtime trusts it (runtime.engine_host_code_allowed = True, which
# uopsl.runtime.backends.tensorrt sets for version-compatible engines). The older 10.16.1 Support Matrix says
# "within the same major version", and the Version Compatibility page also names TensorRT 9 runtimes for
# TensorRT 8 engines; we follow the newer, explicit list and leave 8 -> 9 out (TensorRT 9 never shipped for
# Jetson). Version compatibility never covers another GPU architecture (compute capability is checked apart).
CROSS_MAJOR_VERSION_COMPATIBLE: frozenset[tuple[int, int]] = frozenset({(8, 10), (10, 11)})
VERSION_COMPATIBLE_SINCE = (8, 6)


def version_mismatch(built: str, running: str, version_compatible: bool = False) -> str | None:
    """Why an engine built under TensorRT ``built`` cannot run under ``running``, or None.

    Without ``version_compatible`` the version must be exact (NVIDIA: "compatible
    only with the version of TensorRT used to build them"). With it, an equal or
    later version of the same major runs it, and so do the documented major
    pairs in ``CROSS_MAJOR_VERSION_COMPATIBLE`` (8.6+ -> 10.x, 10.x -> 11.x);
    the sources are cited next to that constant.
    """
    b, r = parse_version(built), parse_version(running)
    if version_compatible:
        if b[:2] < VERSION_COMPATIBLE_SINCE:
            return (f"version compatibility needs an engine built with TensorRT 8.6 or later; this header says "
                    f"{built} built it")
        if r[:3] < b[:3]:
            return "a version-compatible engine runs only under the same or a later TensorRT version"
        if b[0] != r[0] and (b[0], r[0]) not in CROSS_MAJOR_VERSION_COMPATIBLE:
            pairs = ", ".join(f"{x}.x -> {y}.x" for x, y in sorted(CROSS_MAJOR_VERSION_COMPATIBLE))
            return (f"a version-compatible engine runs under a later TensorRT of the same major version, and across "
                    f"majors only for {pairs} (NVIDIA's support matrix); {b[0]}.x -> {r[0]}.x is not one of them")
        return None
    b3, r3 = (b + (0, 0))[:3], (r + (0, 0))[:3]
    if b3 != r3:
        return "TensorRT engines run only under the exact TensorRT version that built them"
    if len(b) > 3 and len(r) > 3 and b[3] != r[3]:
        return "the TensorRT build numbers differ (engines need the exact build)"
    return None


_LEGACY = ("legacy-calibrator", "legacy-cache")


def rebuild_command(header: EngineHeader, engine_path: str | os.PathLike[str] | None = None,
                    running_trt_version: str | None = None, device: int | None = None) -> str:
    """The ``uopsl build-engine`` command that rebuilds this engine on the device it runs on.

    It replays every recorded option (:class:`BuildOptions`; headers without
    them give the command of the header's own fields, as before), so that the
    rebuilt engine is the same one. ``running_trt_version``: the TensorRT that
    will rebuild it. Where that TensorRT cannot take an option the old one took
    (implicit INT8 on 11.x, ``--no-strongly-typed`` on 11.x, Q/DQ on DLA under
    8.x), the option is left out and a shell comment at the end says why and
    what to do, rather than printing a command that fails; where it merely
    prefers another INT8 route, the comment says so and the route is kept.
    ``device``: the GPU the engine is meant to run on (default: the one it was built on).
    """
    bundle = "BUNDLE"
    out = "ENGINE"
    if engine_path is not None:
        p = Path(engine_path)
        out = p.name
        if (p.parent / "manifest.json").is_file():
            bundle = str(p.parent)
    opts = header.build_options
    running: tuple[int, ...] | None = None
    if running_trt_version:
        try:
            running = parse_version(running_trt_version)
        except BundleError:
            running = None
    built_major = _major(header.tensorrt_version)
    notes: list[str] = []
    precision = header.precision
    if precision == "fp16" and running is not None and running[0] >= 11:
        precision = "fp32"
        notes.append(f"TensorRT {running_trt_version} has no FP16 builder flag, so this builds FP32; for FP16 "
                     "there, export a model already in FP16 (strongly typed)")
    parts = ["uopsl build-engine", _quote(bundle), f"--precision {precision}"]
    if header.dla_core is not None and not header.min_batch == header.opt_batch == header.max_batch:
        notes.append(
            f"the old engine had batch {header.min_batch}-{header.max_batch} on DLA core {header.dla_core}, which "
            "DLA cannot run (no dynamic shapes: its layers fell back to the GPU); with --dla-core and no batch "
            "options the batch is "
            "fixed at 1; add --min-batch N --opt-batch N --max-batch N for another fixed size"
        )
    else:
        parts += [f"--min-batch {header.min_batch}", f"--opt-batch {header.opt_batch}",
                  f"--max-batch {header.max_batch}"]
    if header.workspace_mib:
        parts.append(f"--workspace {header.workspace_mib}")
    route = header.int8_mode if header.precision == "int8" else ""
    if route:
        if route in _LEGACY and running is not None and running[0] >= 11:
            notes.append(
                f"built with --int8-mode {route} under TensorRT {header.tensorrt_version}; TensorRT "
                f"{running_trt_version} has no implicit INT8, so this builds from the bundle's Q/DQ model (run "
                "'uopsl quantize BUNDLE --variant trt --images CALIBRATION_IMAGES' first if it has none)"
            )
        elif (route == "qdq" and header.dla_core is not None and running is not None and running[0] < 9):
            notes.append(
                f"built from the Q/DQ model on DLA under TensorRT {header.tensorrt_version}; DLA under TensorRT "
                f"{running_trt_version} runs no Q/DQ model, so this builds implicit INT8 from calibration data "
                "(the bundle's calibration.json, or add --calib-cache FILE or --calib-images DIR)"
            )
        else:
            parts.append(f"--int8-mode {route}")
            if route in _LEGACY:
                parts += _calibration_args(route, opts, notes)
                # The calibrator APIs are "Deprecated in TensorRT 10.1" (trt_compat.api_for's rule): 9.x and
                # 10.0 take implicit INT8 without a deprecation, so they get no note.
                if (running is not None and (10, 1) <= running[:2] and running[0] < 11 and built_major is not None
                        and built_major < 9):
                    notes.append(
                        f"TensorRT {running_trt_version} prefers the Q/DQ model for INT8 (implicit INT8 is "
                        f"deprecated since 10.1): leave out --int8-mode {route} and the --calib options to build "
                        "from it"
                    )
    if header.dla_core is not None:
        parts.append(f"--dla-core {header.dla_core}")
        if opts is not None and not opts.gpu_fallback:
            parts.append("--no-gpu-fallback")
    if opts is not None:
        if opts.strongly_typed is True and running is not None and running[0] < 10:
            notes.append(f"built with --strongly-typed; TensorRT {running_trt_version} has no strongly typed "
                         "networks (10.0 and later), so it is left out")
        elif opts.strongly_typed is True:
            parts.append("--strongly-typed")
        elif opts.strongly_typed is False:
            if running is not None and running[0] >= 11:
                notes.append(f"built with --no-strongly-typed; TensorRT {running_trt_version} builds every network "
                             "strongly typed, so it is left out")
            else:
                parts.append("--no-strongly-typed")
        if opts.fp16_fallback:
            parts.append("--fp16-fallback")
        if opts.opt_level is not None and running is not None and running[:2] < (8, 6):
            notes.append(f"built with --opt-level {opts.opt_level}; TensorRT {running_trt_version} has no builder "
                         "optimisation level (8.6 and later), so it is left out")
        elif opts.opt_level is not None:
            parts.append(f"--opt-level {opts.opt_level}")
        if opts.tf32:
            notes.append("built with tf32=True through the Python API (EngineBuildConfig); the CLI has no option "
                         "for it, so this command builds with TF32 off")
    if header.version_compatible and running is not None and running[:2] < (8, 6):
        notes.append(f"built version-compatible; TensorRT {running_trt_version} cannot build such engines (8.6 and "
                     "later), so it is left out")
    elif header.version_compatible:
        parts.append("--version-compatible")
    gpu = device if device is not None else (opts.device if opts is not None else 0)
    if gpu:
        parts.append(f"--device {gpu}")
    parts.append(f"--out {_quote(out)}")
    command = " ".join(parts)
    return command + ("  # " + "; ".join(notes) if notes else "")


def _calibration_args(route: str, opts: BuildOptions | None, notes: list[str]) -> list[str]:
    """The --calib options that give a legacy INT8 route the same ranges again."""
    args: list[str] = []
    if route == "legacy-calibrator":
        images = opts.calib_images if opts is not None else None
        if images is None:
            notes.append("the calibration images are not recorded in this engine's header: give them with "
                         "--calib-images")
        args.append(f"--calib-images {_quote(images or 'CALIBRATION_IMAGES')}")
        if opts is not None and opts.calib_max_images is not None:
            args.append(f"--calib-max-images {opts.calib_max_images}")
        if opts is not None and opts.calib_cache is not None:
            args.append(f"--calib-cache {_quote(opts.calib_cache)}")  # where the computed cache was written
    elif opts is not None and opts.calib_source == "cache" and opts.calib_cache is not None:
        args.append(f"--calib-cache {_quote(opts.calib_cache)}")
    # legacy-cache from the bundle's calibration.json needs no option: build-engine reads it from the bundle.
    if opts is not None and opts.calib_batch is not None:
        args.append(f"--calib-batch {opts.calib_batch}")
    return args


def _major(version: str) -> int | None:
    try:
        return parse_version(version)[0]
    except BundleError:
        return None


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def check_compatible(
    header: EngineHeader,
    running_trt_version: str | None = None,
    gpu_name: str | None = None,
    compute_capability: str | None = None,
    *,
    engine_path: str | os.PathLike[str] | None = None,
    device: int = 0,
    running_platform: str | None = None,
) -> None:
    """Raise :class:`EngineMismatchError` when the engine cannot run here; see the module rule.

    Arguments left as None are probed: the TensorRT version from the installed
    ``tensorrt`` package, the GPU name and compute capability of ``device``
    from the CUDA binding (both raise :class:`MissingDependencyError` when
    absent). Passing them keeps this function free of TensorRT and a GPU.
    ``running_platform``: :func:`this_platform` when None.
    """
    if running_trt_version is None or gpu_name is None or compute_capability is None:
        from uopsl.runtime import cuda_binding, trt_compat  # need numpy and TensorRT: loaded only here

        if running_trt_version is None:
            running_trt_version = trt_compat.installed_version()
        if gpu_name is None or compute_capability is None:
            name, cc = cuda_binding.load_cuda("checking a TensorRT engine against this GPU").device_properties(device)
            gpu_name = name if gpu_name is None else gpu_name
            compute_capability = cc if compute_capability is None else compute_capability
    problems = []
    running_platform = this_platform() if running_platform is None else running_platform
    if header.platform and header.platform != running_platform:
        problems.append(f"it was built on {header.platform}, this is {running_platform}; engines are not portable "
                        "across operating systems and CPU architectures")
    why = version_mismatch(header.tensorrt_version, running_trt_version, header.version_compatible)
    if why:
        problems.append(f"TensorRT {header.tensorrt_version} built it, TensorRT {running_trt_version} is running ({why})")
    if str(header.compute_capability) != str(compute_capability):
        problems.append(
            f"it was built on {header.gpu_name} (compute capability {header.compute_capability}), "
            f"this is {gpu_name} (compute capability {compute_capability}); engines do not move between GPU architectures"
        )
    where = str(engine_path) if engine_path is not None else "TensorRT engine"
    if problems:
        raise EngineMismatchError(
            f"{where} ({header.precision}) cannot run here: " + "; ".join(problems)
            + f". Rebuild it on this device: {rebuild_command(header, engine_path, running_trt_version, device)}"
        )
    if header.gpu_name != gpu_name:
        log.warning(
            "%s was built on %s and runs on %s (same compute capability %s): NVIDIA does not support moving an "
            "engine between GPU models (it may run slower or fail); rebuild it on this device: %s",
            where, header.gpu_name, gpu_name, compute_capability,
            rebuild_command(header, engine_path, running_trt_version, device),
        )


__all__ = [
    "BUILD_OPTIONS_KEY",
    "CROSS_MAJOR_VERSION_COMPATIBLE",
    "HEADER_FORMAT",
    "MAGIC",
    "BuildOptions",
    "EngineHeader",
    "check_compatible",
    "encode",
    "now_utc",
    "parse_version",
    "read_header",
    "read_plan",
    "rebuild_command",
    "this_platform",
    "version_mismatch",
    "write_engine",
]
