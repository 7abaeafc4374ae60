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
TensorRT used to build them"; version compatibility "within the same major
version"; "Without [hardware compatibility] mode, engines are not portable
across different GPU architectures"):

* TensorRT version: ``major.minor.patch`` must be equal; when both sides also
  report the build number (``8.5.2.2``) it must be equal too. An engine built
  with ``version_compatible`` (TensorRT >= 8.6) runs under the same major
  version at an equal or later version.
* GPU: the compute capability (``"8.7"``) must be equal. The same compute
  capability under another GPU name (e.g. two Ampere boards) is accepted with a
  warning: TensorRT runs it, though the kernels were timed on the other board.

This module is numpy-free and imports nothing heavy; :func:`check_compatible`
only touches TensorRT and the CUDA binding when the caller does not say what
is running.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uopsl.runtime.errors import BundleError, EngineMismatchError
from uopsl.runtime.fsio import atomic_open, sha256_bytes
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

MAGIC = b"UOPSLENG"
HEADER_FORMAT = 1
_PREFIX = struct.Struct("<8sII")  # magic, format version, JSON length
# A header is a few hundred bytes; anything past this is a corrupt length field.
MAX_JSON_BYTES = 1 << 20
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineHeader:
    """What an engine was built from, for which TensorRT and GPU, and how.

    ``compute_capability`` is ``"major.minor"`` (``"8.7"`` for Jetson Orin).
    ``int8_mode`` is the resolved INT8 route (``qdq``, ``legacy-calibrator``,
    ``legacy-cache``) or ``""`` for float engines. The build settings
    (batches, workspace, DLA core, INT8 route) are recorded so that a mismatch
    message can print the exact command that rebuilds the engine.
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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "engine") -> EngineHeader:
        known = {f.name for f in fields(cls)}
        # Unknown keys come from a newer toolkit; keep them readable, do not fail.
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            kwargs["input_shape"] = tuple(int(x) for x in kwargs.get("input_shape", ()))
            h = cls(**kwargs)
            for name in ("min_batch", "opt_batch", "max_batch", "plan_size", "workspace_mib"):
                if not isinstance(getattr(h, name), int):
                    raise TypeError(f"{name} must be an integer, got {getattr(h, name)!r}")
            if h.dla_core is not None and not isinstance(h.dla_core, int):
                raise TypeError(f"dla_core must be an integer or null, got {h.dla_core!r}")
        except TypeError as exc:
            raise BundleError(
                f"{source}: engine header is malformed ({exc}); rebuild the engine with 'uopsl build-engine'"
            ) from exc
        return h


def now_utc() -> str:
    """An ISO-8601 UTC timestamp for ``built_at``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def encode(plan: bytes, header: EngineHeader) -> bytes:
    """The bytes of an engine file (header with the plan's checksum and size filled in)."""
    from dataclasses import replace

    h = replace(header, plan_sha256=sha256_bytes(plan), plan_size=len(plan))
    if h.precision not in PRECISIONS:
        raise BundleError(f"engine precision must be one of {PRECISIONS}, got {h.precision!r}")
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
        raw = json.loads(data[_PREFIX.size:_PREFIX.size + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{source}: engine header is not valid JSON ({exc}); rebuild the engine") from exc
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


def read_plan(path: str | os.PathLike[str], *, verify: bool = True) -> tuple[EngineHeader, bytes]:
    """Header and serialized plan; with ``verify`` the plan must match its recorded size and sha256."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{p}: engine file not found; build it with 'uopsl build-engine'") from exc
    except OSError as exc:
        raise BundleError(f"{p}: cannot read the engine file ({exc})") from exc
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


def version_mismatch(built: str, running: str, version_compatible: bool = False) -> str | None:
    """Why an engine built under TensorRT ``built`` cannot run under ``running``, or None."""
    b, r = parse_version(built), parse_version(running)
    if version_compatible:
        if b[0] != r[0]:
            return "a version-compatible engine runs only under the same TensorRT major version"
        if r[:3] < b[:3]:
            return "a version-compatible engine runs only under the same or a later TensorRT version"
        return None
    b3, r3 = (b + (0, 0))[:3], (r + (0, 0))[:3]
    if b3 != r3:
        return "TensorRT engines run only under the exact TensorRT version that built them"
    if len(b) > 3 and len(r) > 3 and b[3] != r[3]:
        return "the TensorRT build numbers differ (engines need the exact build)"
    return None


def rebuild_command(header: EngineHeader, engine_path: str | os.PathLike[str] | None = None) -> str:
    """The ``uopsl build-engine`` command that rebuilds this engine on the device it runs on."""
    bundle = "BUNDLE"
    out = "ENGINE"
    if engine_path is not None:
        p = Path(engine_path)
        out = p.name
        if (p.parent / "manifest.json").is_file():
            bundle = str(p.parent)
    parts = [
        "uopsl build-engine", _quote(bundle), f"--precision {header.precision}",
        f"--min-batch {header.min_batch}", f"--opt-batch {header.opt_batch}", f"--max-batch {header.max_batch}",
    ]
    if header.workspace_mib:
        parts.append(f"--workspace {header.workspace_mib}")
    if header.precision == "int8" and header.int8_mode:
        parts.append(f"--int8-mode {header.int8_mode}")
    if header.dla_core is not None:
        parts.append(f"--dla-core {header.dla_core}")
    parts.append(f"--out {_quote(out)}")
    return " ".join(parts)


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
) -> None:
    """Raise :class:`EngineMismatchError` when the engine cannot run here; see the module rule.

    Arguments left as None are probed: the TensorRT version from the installed
    ``tensorrt`` package, the GPU name and compute capability of ``device``
    from the CUDA binding (both raise :class:`MissingDependencyError` when
    absent). Passing them keeps this function free of TensorRT and a GPU.
    """
    if running_trt_version is None or gpu_name is None or compute_capability is None:
        from uopsl.runtime import trt_compat

        if running_trt_version is None:
            running_trt_version = trt_compat.installed_version()
        if gpu_name is None or compute_capability is None:
            name, cc = trt_compat.load_cuda("checking a TensorRT engine against this GPU").device_properties(device)
            gpu_name = name if gpu_name is None else gpu_name
            compute_capability = cc if compute_capability is None else compute_capability
    problems = []
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
            + f". Rebuild it on this device: {rebuild_command(header, engine_path)}"
        )
    if header.gpu_name != gpu_name:
        log.warning(
            "%s was built on %s and runs on %s (same compute capability %s): it works, but its kernels were "
            "timed on the other GPU; rebuild it here for best speed: %s",
            where, header.gpu_name, gpu_name, compute_capability, rebuild_command(header, engine_path),
        )


__all__ = [
    "HEADER_FORMAT",
    "MAGIC",
    "EngineHeader",
    "check_compatible",
    "encode",
    "now_utc",
    "parse_version",
    "read_header",
    "read_plan",
    "rebuild_command",
    "version_mismatch",
    "write_engine",
]
