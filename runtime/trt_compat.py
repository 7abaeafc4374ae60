"""The one place where TensorRT API differences are handled.

Supported TensorRT versions and what differs between them (NVIDIA's migration
guides 8.x -> 10.x and 10.x -> 11.x):

=============================  ================  ================  =========================
                               8.5 / 8.6         10.x              11.x
=============================  ================  ================  =========================
network creation flag          EXPLICIT_BATCH    none (ignored)    none
STRONGLY_TYPED flag            absent            opt-in            always on (flag ignored)
BuilderFlag.FP16 / INT8        yes               yes               removed
implicit INT8 (calibrators)    yes               deprecated        removed (Q/DQ only)
builder_optimization_level     8.6 only          yes               yes
VERSION_COMPATIBLE flag        8.6 only          yes               yes
workspace limit                memory pool API   memory pool API   memory pool API
engine I/O at run time         bindings, v2      tensor names, v3  tensor names, v3
=============================  ================  ================  =========================

(memory pool API: ``set_memory_pool_limit``, 8.4+; ``max_workspace_size`` before.
v2/v3: ``execute_async_v2`` / ``execute_async_v3``.) TensorRT 8.5 and 8.6 also
have the name-based I/O API (added in 8.5); this toolkit runs every 8.x through
bindings, which all 8.x releases share, and uses tensor names from 9.x on, where
bindings are deprecated (removed in 10.0).

:func:`api_for` reads a ``tensorrt`` module (a real one, or a fake in tests)
into a :class:`TrtApi` of capabilities; the builder
(:mod:`uopsl.export.tensorrt`) and the runtime backend
(:mod:`uopsl.runtime.backends.tensorrt`) ask it rather than testing versions
themselves.

The CUDA calls around TensorRT (device memory, pinned host memory, streams,
events) are :mod:`uopsl.runtime.cuda_binding`'s.

Nothing here imports TensorRT at module import time.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from uopsl.runtime.errors import BackendError, ConfigError, UopslError
from uopsl.runtime.optional import extra_hint, require
from uopsl.runtime.trt_version import parse_version

if TYPE_CHECKING:  # pragma: no cover - typing only; checked against tensorrt-stubs in CI
    import tensorrt

log = logging.getLogger(__name__)

MIN_VERSION = (8, 5)
SUPPORTED = "8.5, 8.6, 10.x and 11.x"
IoApi = Literal["bindings", "tensors"]


# -- TensorRT ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrtApi:
    """What the running TensorRT offers; derived from its version and attributes."""

    version_text: str
    version: tuple[int, ...]
    io_api: IoApi
    explicit_batch_flag: bool  # 8.x: networks must be created with EXPLICIT_BATCH
    strongly_typed_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists
    always_strongly_typed: bool  # 11.x: every network is strongly typed
    weak_precision_flags: bool  # BuilderFlag.FP16 / INT8 exist
    implicit_int8: bool  # INT8 calibrators (IInt8EntropyCalibrator2) usable
    implicit_int8_deprecated: bool
    memory_pool_api: bool  # IBuilderConfig.set_memory_pool_limit
    builder_optimization_level: bool
    version_compatible_flag: bool
    tf32_flag: bool
    dla: bool  # DeviceType.DLA exists (whether this device has DLA cores is asked at build time)
    notes: tuple[str, ...] = field(default=())

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def family(self) -> str:
        """``"8"``, ``"10"`` or ``"11"``: the API generation (9.x behaves as 10.x here)."""
        return "8" if self.major < 9 else "10" if self.major < 11 else "11"


def api_for(trt: Any) -> TrtApi:
    """Capabilities of the ``tensorrt`` module ``trt``; raises ConfigError for versions before 8.5."""
    text = str(getattr(trt, "__version__", ""))
    if not text:
        raise BackendError("the imported 'tensorrt' module has no __version__; is it a real TensorRT install?")
    try:
        version = parse_version(text)
    except UopslError as exc:
        raise BackendError(str(exc)) from exc
    if version[:2] < MIN_VERSION:
        raise ConfigError(
            f"TensorRT {text} is older than 8.5; uopsl supports TensorRT {SUPPORTED}. "
            "On a Jetson use JetPack 6 (6.0 ships 8.6, 6.1/6.2 ship 10.3); elsewhere "
            f"{extra_hint('trt')}"
        )
    notes = []
    if version[0] > 11:
        notes.append(f"TensorRT {text} is newer than this toolkit knows ({SUPPORTED}); using the 11.x rules")
    flags = getattr(trt, "BuilderFlag", None)
    ncf = getattr(trt, "NetworkDefinitionCreationFlag", None)
    major = version[0]
    weak = major < 11 and hasattr(flags, "INT8") and hasattr(flags, "FP16")
    return TrtApi(
        version_text=text,
        version=version,
        io_api="bindings" if major < 9 else "tensors",
        explicit_batch_flag=major < 10 and hasattr(ncf, "EXPLICIT_BATCH"),
        strongly_typed_flag=hasattr(ncf, "STRONGLY_TYPED"),
        always_strongly_typed=major >= 11,
        weak_precision_flags=weak,
        implicit_int8=weak and hasattr(trt, "IInt8EntropyCalibrator2"),
        implicit_int8_deprecated=version[:2] >= (10, 1),  # the calibrator APIs: "Deprecated in TensorRT 10.1"
        memory_pool_api=hasattr(trt, "MemoryPoolType"),
        builder_optimization_level=version[:2] >= (8, 6),
        version_compatible_flag=hasattr(flags, "VERSION_COMPATIBLE"),
        tf32_flag=hasattr(flags, "TF32"),
        dla=hasattr(getattr(trt, "DeviceType", None), "DLA"),
        notes=tuple(notes),
    )


def load_tensorrt(purpose: str) -> tuple[ModuleType, TrtApi]:
    """Import TensorRT (MissingDependencyError names what to install) and read its capabilities."""
    trt = require("tensorrt", purpose)
    api = api_for(trt)
    for note in api.notes:
        log.warning(note)
    return trt, api


def installed_version() -> str:
    """The running TensorRT version string (MissingDependencyError when TensorRT is absent).

    Goes through :func:`api_for`, so a TensorRT older than 8.5 is a ConfigError here too: an engine check
    that called it a version mismatch would advise ``uopsl build-engine``, which then refuses that TensorRT.
    """
    trt = require("tensorrt", "checking a TensorRT engine against this machine")
    return api_for(trt).version_text


# -- TensorRT's logger -----------------------------------------------------------------------------
class TrtErrorLog:
    """TensorRT's error messages, numbered, so that each operation reads the errors it caused.

    Why numbered and not one list per operation: TensorRT keeps one logger per
    process ("TensorRT maintains only a single logger pointer at any given
    time", NVIDIA/TensorRT#1475; the best-practices guide: "If using multiple
    builder or runtime objects, use the same logger"), so every Builder and
    Runtime reports to the same object. An operation takes :meth:`mark` before
    it starts and reads :meth:`since` after it failed (or uses :meth:`capture`).

    Why the thread: a failed deserialisation or build is expected to log from
    the thread that made the call (an assumption about TensorRT, not a documented
    guarantee, and not checked on hardware), so :meth:`since` prefers the
    messages logged by the operation's own thread; an engine loading in another
    thread at the same time then does not mix its errors in. When the own thread
    logged nothing (TensorRT may log from worker threads), the other threads'
    messages are returned rather than nothing. Messages are not cleared when read
    (another operation may still need them); only the last ``keep`` are kept,
    since the logger lives as long as the process.
    """

    def __init__(self, keep: int = 256) -> None:
        self._lock = threading.Lock()
        self._entries: deque[tuple[int, int, str]] = deque(maxlen=keep)  # (number, thread id, message)
        self._count = 0

    def add(self, message: str) -> None:
        """Record one error message (called by the logger, from whichever thread TensorRT logs on)."""
        with self._lock:
            self._count += 1
            self._entries.append((self._count, threading.get_ident(), str(message)))

    def mark(self) -> int:
        """The number of the last message so far; pass it to :meth:`since` after the operation."""
        with self._lock:
            return self._count

    def since(self, mark: int, thread: int | None = None) -> list[str]:
        """Messages recorded after ``mark``: those of ``thread`` (default: this one), else everyone's."""
        me = threading.get_ident() if thread is None else thread
        with self._lock:
            later = [(t, m) for n, t, m in self._entries if n > mark]
        own = [m for t, m in later if t == me]
        return own or [m for _, m in later]

    @contextlib.contextmanager
    def capture(self) -> Iterator[ErrorCapture]:
        """``with log.capture() as cap: ...``; ``cap.errors`` lists what was recorded since the block began."""
        yield ErrorCapture(self, self.mark(), threading.get_ident())


@dataclass(frozen=True)
class ErrorCapture:
    """The errors one operation caused (see :meth:`TrtErrorLog.capture`)."""

    log: TrtErrorLog
    mark: int
    thread: int

    @property
    def errors(self) -> list[str]:
        return self.log.since(self.mark, self.thread)


_LOGGER_LOCK = threading.Lock()
_LOGGER: Any = None  # the process-wide TensorRT logger, made by the first make_logger call


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """The process-wide ``tensorrt.ILogger``: forwards to Python logging and keeps the error messages.

    Every call returns the same object, created on first use (under a lock):
    TensorRT keeps a single logger per process (see :class:`TrtErrorLog`), so a
    fresh logger per Builder/Runtime loses every error once a second one exists,
    and a failed build or deserialisation could then only say "no error reported".

    Reading the errors of one operation:

    * ``logger.errors``: the errors recorded since *this thread's* last call of
      ``make_logger`` (what a caller that makes its logger at the start of an
      operation, like :func:`uopsl.export.tensorrt.build_engine`, expects);
    * ``with logger.error_log.capture() as cap: ...`` then ``cap.errors``, or
      ``logger.error_log.mark()`` / ``logger.error_log.since(mark)``.

    ``verbose=True`` forwards TensorRT's INFO messages at INFO instead of DEBUG;
    the logger being shared, it stays on for the rest of the process. A new
    logger is made only when ``trt`` is another ``tensorrt`` module than the
    one the current logger was made for (tests with fake modules).
    """
    global _LOGGER
    with _LOGGER_LOCK:
        logger = _LOGGER
        if logger is None or getattr(logger, "trt_base", None) is not trt.ILogger:
            logger = _new_logger(trt)
            _LOGGER = logger
        if verbose:
            logger.verbose = True
    logger.start_operation()
    return logger


def _new_logger(trt: Any) -> Any:
    base = trt.ILogger
    sev = base.Severity if hasattr(base, "Severity") else base

    class _SharedLogger(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.trt_base = base
            self.verbose = False
            self.error_log = TrtErrorLog()
            # Warnings too: TensorRT reports a failed CUDA initialisation as a WARNING ("CUDA initialization
            # failure with error: 35") before trt.Builder / trt.Runtime fail (see create_with_logger).
            self.warning_log = TrtErrorLog()
            self._marks = threading.local()

        def log(self, severity: Any, msg: str) -> None:
            # Called by TensorRT, possibly from its own threads; Python logging is thread-safe.
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.error_log.add(str(msg))
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                self.warning_log.add(str(msg))
                log.warning("TensorRT: %s", msg)
            elif severity == sev.INFO:
                (log.info if self.verbose else log.debug)("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def start_operation(self) -> int:
            """Mark the start of an operation in this thread (what ``errors`` counts from)."""
            mark = self.error_log.mark()
            self._marks.mark = mark
            return mark

        @property
        def errors(self) -> list[str]:
            return self.error_log.since(getattr(self._marks, "mark", 0))

    return _SharedLogger()


# -- Builder and Runtime ---------------------------------------------------------------------
_CUDA_INIT = re.compile(r"CUDA initiali[sz]ation failure with error:? *(\d+)", re.IGNORECASE)
#: cudaError_t codes TensorRT names in "CUDA initialization failure with error: N" (driver_types.h)
_CUDA_INIT_ERRORS = {35: "cudaErrorInsufficientDriver: the NVIDIA driver is older than the CUDA this TensorRT "
                         "was built for",
                     100: "cudaErrorNoDevice: no CUDA GPU is visible to this process",
                     34: "cudaErrorStubLibrary: a CUDA stub library was loaded instead of the driver's"}


def create_with_logger(trt: Any, api: TrtApi, kind: Literal["Builder", "Runtime"], logger: Any) -> Any:
    """``trt.Builder(logger)`` or ``trt.Runtime(logger)``; a BackendError that says why when TensorRT cannot make it.

    TensorRT's ``createInferBuilder`` / ``createInferRuntime`` return null when TensorRT cannot initialise CUDA
    (a driver older than the CUDA TensorRT was built for, no visible GPU), and the Python binding, which wraps
    them as pybind11 factory constructors (``py::init(&nvinfer1::createInferBuilder)``, pyCore.cpp), then raises
    ``TypeError: pybind11::init(): factory function returned nullptr``, after TensorRT logged the cause, often
    only as a warning ("[W] CUDA initialization failure with error: 35", NVIDIA/TensorRT#2913). Without this
    the CLI reported that TypeError as a bug in uopsl. Any other TypeError is raised as it is.
    """
    errors: TrtErrorLog | None = getattr(logger, "error_log", None)
    warnings: TrtErrorLog | None = getattr(logger, "warning_log", None)
    marks = (errors.mark() if errors is not None else 0, warnings.mark() if warnings is not None else 0)
    cause: BaseException | None = None
    try:
        made = getattr(trt, kind)(logger)
    except TypeError as exc:
        if "nullptr" not in str(exc):
            raise
        made, cause = None, exc
    if made is not None:
        return made
    said = [*(errors.since(marks[0]) if errors is not None else []),
            *(warnings.since(marks[1]) if warnings is not None else [])]
    detail = " | ".join(dict.fromkeys(said)) or (str(cause) if cause is not None else "no error reported")
    found = _CUDA_INIT.search(detail)
    meaning = _CUDA_INIT_ERRORS.get(int(found.group(1))) if found else None
    # pyproject's trt extra: "the bare `tensorrt` package now installs 11.x for CUDA 13, which needs driver >= 580".
    newer = (f"; TensorRT {api.major}.x from pip's plain 'tensorrt' package is built for CUDA 13: on a CUDA 12 "
             f"driver {extra_hint('trt')}" if api.major >= 11 else "")
    why = (f"it could not initialise CUDA on this machine{f' ({meaning})' if meaning else ''}" if found else
           "most often because it cannot initialise CUDA on this machine")
    raise BackendError(
        f"TensorRT {api.version_text} could not create its {kind} ({detail}): {why}. Check that the NVIDIA driver "
        f"supports the CUDA version this TensorRT was built for (nvidia-smi shows the driver's CUDA version{newer}; "
        "on a Jetson use JetPack's own TensorRT) and that a GPU is visible (nvidia-smi, tegrastats on Jetson, "
        "CUDA_VISIBLE_DEVICES)"
    ) from cause


# -- builder helpers ------------------------------------------------------------------------
def network_flags(trt: Any, api: TrtApi, strongly_typed: bool) -> int:
    """The ``create_network`` flags for this TensorRT (explicit batch on 8.x, strong typing on request)."""
    flags = 0
    if api.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        if api.always_strongly_typed:
            # 11.x: every network is strongly typed and the flag is "deprecated and ignored" (NVIDIA, 11.0): set
            # while it exists, never required, so a release that drops it still builds.
            if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
                flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            return flags
        if not api.strongly_typed_flag:
            raise ConfigError(
                f"strongly typed networks need TensorRT 10 or later; this is TensorRT {api.version_text}. "
                "Build without --strongly-typed"
            )
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def dims(trt: Any, shape: Sequence[int]) -> Any:
    """A ``tensorrt.Dims`` for ``shape`` (what ``IOptimizationProfile.set_shape`` takes)."""
    return trt.Dims([int(d) for d in shape])


def set_workspace(trt: Any, api: TrtApi, config: tensorrt.IBuilderConfig, nbytes: int) -> None:
    """Limit the builder's scratch memory (memory pool API on 8.4+, ``max_workspace_size`` before)."""
    if api.memory_pool_api:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(nbytes))
    else:  # pre-8.4 attribute, absent from current stubs
        setattr(config, "max_workspace_size", int(nbytes))


def parser_errors(parser: tensorrt.OnnxParser) -> list[str]:
    """Every error the ONNX parser recorded, one readable line each (node, operator, description)."""
    out = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        desc = _call(err, "desc") or str(err)
        node = _call(err, "node")
        name = _call(err, "node_name")  # 10.x+
        op = _call(err, "node_operator")  # 10.x+
        where = []
        if node not in (None, -1, ""):
            where.append(f"node {node}")
        if name:
            where.append(f"'{name}'")
        if op:
            where.append(f"({op})")
        out.append(f"{' '.join(where)}: {desc}" if where else str(desc))
    return out


def _call(obj: Any, name: str) -> Any:
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    try:
        return fn() if callable(fn) else fn
    except Exception:  # noqa: BLE001 - a missing detail must not hide the error itself
        return None


def load_timing_cache(config: tensorrt.IBuilderConfig, data: bytes) -> tensorrt.ITimingCache:
    """Attach a timing cache (``data`` empty: a new one) so tactic timings carry over between builds."""
    cache = config.create_timing_cache(data)
    if cache is None:
        raise BackendError("TensorRT could not create a timing cache")
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is rejected, not used.
    if not config.set_timing_cache(cache, False):
        raise BackendError(
            "TensorRT rejected the timing cache (written by another GPU or TensorRT version?); "
            "delete the file or pass another --timing-cache path"
        )
    return cache


def serialize_timing_cache(config: tensorrt.IBuilderConfig) -> bytes:
    """The builder's timing cache after a build, as bytes to save."""
    cache = config.get_timing_cache()
    if cache is None:
        raise BackendError("TensorRT gave no timing cache after the build")
    return bytes(memoryview(cache.serialize()))


def nptype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT ``DataType`` (``trt.nptype``, with a name table as fallback)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except Exception:  # noqa: BLE001 - nptype raises TypeError/KeyError for types numpy lacks
        name = str(dtype).rsplit(".", 1)[-1].upper()
        table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8,
                 "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
        if name in table:
            return np.dtype(table[name])
        raise BackendError(f"engine tensor type {dtype} has no numpy equivalent") from None


# -- engine I/O ---------------------------------------------------------------------------------
Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min, opt, max shapes


def shape_of(d: Any) -> tuple[int, ...]:
    """A ``tensorrt.Dims`` (or any sequence) as a tuple of ints (-1 = dynamic)."""
    return tuple(int(d[i]) for i in range(len(d)))


@dataclass(frozen=True)
class IOTensor:
    """One engine input or output: name, binding index, dtype, shape (-1 = dynamic), input profile."""

    name: str
    index: int
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    profile: Profile | None = None


class EngineIO(abc.ABC):
    """Engine introspection and execution through one of TensorRT's two I/O APIs."""

    api: IoApi

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt = trt
        self.engine = engine
        self._tensors: list[IOTensor] | None = None

    def tensors(self) -> list[IOTensor]:
        """Inputs and outputs in engine order (read once)."""
        if self._tensors is None:
            self._tensors = self._read_tensors()
        return self._tensors

    @abc.abstractmethod
    def _read_tensors(self) -> list[IOTensor]: ...

    @abc.abstractmethod
    def set_input_shape(self, context: Any, t: IOTensor, shape: Sequence[int]) -> None: ...

    @abc.abstractmethod
    def shape(self, context: Any, t: IOTensor) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def execute(self, context: Any, addresses: dict[str, int], stream_handle: int) -> None: ...

    def _shape_error(self, t: IOTensor, shape: Sequence[int]) -> BackendError:
        prof = f" (engine profile min {t.profile[0]}, max {t.profile[2]})" if t.profile else ""
        return BackendError(f"TensorRT rejected input shape {tuple(shape)} for '{t.name}'{prof}")


class BindingsIO(EngineIO):
    """TensorRT 8.x: binding indices, ``set_binding_shape``, ``execute_async_v2``."""

    api: IoApi = "bindings"

    def _read_tensors(self) -> list[IOTensor]:
        e = self.engine
        out = []
        for i in range(int(e.num_bindings)):
            is_input = bool(e.binding_is_input(i))
            profile: Profile | None = None
            if is_input:
                mn, opt, mx = e.get_profile_shape(0, i)
                profile = (shape_of(mn), shape_of(opt), shape_of(mx))
            out.append(IOTensor(str(e.get_binding_name(i)), i, is_input, nptype(self.trt, e.get_binding_dtype(i)),
                                shape_of(e.get_binding_shape(i)), profile))
        return out

    def set_input_shape(self, context: Any, t: IOTensor, shape: Sequence[int]) -> None:
        if not context.set_binding_shape(t.index, tuple(int(s) for s in shape)):
            raise self._shape_error(t, shape)

    def shape(self, context: Any, t: IOTensor) -> tuple[int, ...]:
        return shape_of(context.get_binding_shape(t.index))

    def execute(self, context: Any, addresses: dict[str, int], stream_handle: int) -> None:
        order = sorted(self.tensors(), key=lambda t: t.index)
        bindings = [int(addresses[t.name]) for t in order]
        if not context.execute_async_v2(bindings=bindings, stream_handle=stream_handle):
            raise BackendError("TensorRT execute_async_v2 failed")  # the backend adds what TensorRT logged


class TensorsIO(EngineIO):
    """TensorRT 9.x+: tensor names, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``."""

    api: IoApi = "tensors"

    def _read_tensors(self) -> list[IOTensor]:
        e: tensorrt.ICudaEngine = self.engine
        out = []
        for i in range(int(e.num_io_tensors)):
            name = e.get_tensor_name(i)
            is_input = e.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
            profile: Profile | None = None
            if is_input:
                mn, opt, mx = e.get_tensor_profile_shape(name, 0)
                profile = (shape_of(mn), shape_of(opt), shape_of(mx))
            out.append(IOTensor(str(name), i, is_input, nptype(self.trt, e.get_tensor_dtype(name)),
                                shape_of(e.get_tensor_shape(name)), profile))
        return out

    def set_input_shape(self, context: Any, t: IOTensor, shape: Sequence[int]) -> None:
        ctx: tensorrt.IExecutionContext = context
        if not ctx.set_input_shape(t.name, tuple(int(s) for s in shape)):
            raise self._shape_error(t, shape)

    def shape(self, context: Any, t: IOTensor) -> tuple[int, ...]:
        ctx: tensorrt.IExecutionContext = context
        return shape_of(ctx.get_tensor_shape(t.name))

    def execute(self, context: Any, addresses: dict[str, int], stream_handle: int) -> None:
        ctx: tensorrt.IExecutionContext = context
        for name, ptr in addresses.items():
            if not ctx.set_tensor_address(name, int(ptr)):
                raise BackendError(f"TensorRT refused the device address of '{name}'")
        if not ctx.execute_async_v3(stream_handle):
            raise BackendError("TensorRT execute_async_v3 failed")  # the backend adds what TensorRT logged


def engine_io(trt: Any, api: TrtApi, engine: Any) -> EngineIO:
    """The I/O adapter for ``engine`` under this TensorRT."""
    return BindingsIO(trt, engine) if api.io_api == "bindings" else TensorsIO(trt, engine)


__all__ = [
    "SUPPORTED",
    "BindingsIO",
    "EngineIO",
    "ErrorCapture",
    "IOTensor",
    "TensorsIO",
    "TrtApi",
    "TrtErrorLog",
    "api_for",
    "create_with_logger",
    "dims",
    "engine_io",
    "installed_version",
    "load_tensorrt",
    "load_timing_cache",
    "make_logger",
    "network_flags",
    "nptype",
    "parser_errors",
    "serialize_timing_cache",
    "set_workspace",
    "shape_of",
]
