"""The one place where TensorRT and CUDA-binding API differences are handled.

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

CUDA bindings: device memory, pinned host memory, streams and events come
from cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``
layout; every call returns ``(err, value...)``) or, where that is what the
device has, from pycuda. :func:`load_cuda` returns a :class:`CudaApi` over
whichever is installed.

Nothing here imports TensorRT or a CUDA binding at module import time.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from uopsl.runtime.engine_header import parse_version
from uopsl.runtime.errors import BackendError, ConfigError, MissingDependencyError, UopslError
from uopsl.runtime.optional import CUDA_HINT, CUDA_MODULES, dist_version, extra_hint, require

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
    """The running TensorRT version string (MissingDependencyError when TensorRT is absent)."""
    trt = require("tensorrt", "checking a TensorRT engine against this machine")
    return str(trt.__version__)


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
            self._marks = threading.local()

        def log(self, severity: Any, msg: str) -> None:
            # Called by TensorRT, possibly from its own threads; Python logging is thread-safe.
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.error_log.add(str(msg))
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
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
            raise BackendError("TensorRT execute_async_v2 failed (see the TensorRT log above)")


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
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log above)")


def engine_io(trt: Any, api: TrtApi, engine: Any) -> EngineIO:
    """The I/O adapter for ``engine`` under this TensorRT."""
    return BindingsIO(trt, engine) if api.io_api == "bindings" else TensorsIO(trt, engine)


# -- CUDA bindings -------------------------------------------------------------------------------
@dataclass
class PinnedBuffer:
    """Page-locked host memory viewed as a flat uint8 numpy array."""

    array: np.ndarray
    handle: Any

    def view(self, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.array[:n].view(dtype).reshape(tuple(shape))


class CudaApi(abc.ABC):
    """The CUDA calls TensorRT needs around it, over cuda-python or pycuda.

    Threads: CUDA's current device (runtime API) and current context (driver
    API) belong to the calling thread. A caller that runs TensorRT itself
    (deserialise, execute) wraps that work in :meth:`current`, which makes the
    device current in *its* thread for the block, so loading, inference and
    closing may each happen in a different thread.
    """

    name = "cuda"

    @abc.abstractmethod
    def device_properties(self, device: int = 0) -> tuple[str, str]:
        """(GPU name, compute capability ``"major.minor"``)."""

    @abc.abstractmethod
    def activate(self, device: int = 0) -> None:
        """Make ``device`` current for this thread (before TensorRT runs on it)."""

    def deactivate(self) -> None:
        """Undo :meth:`activate` where the binding keeps a context stack (pycuda); in the thread that activated."""

    @contextlib.contextmanager
    def current(self, device: int = 0) -> Iterator[None]:
        """``device`` is current in this thread inside the block (activate/deactivate around it here)."""
        self.activate(device)
        try:
            yield
        finally:
            self.deactivate()

    @abc.abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abc.abstractmethod
    def free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def host_alloc(self, nbytes: int) -> PinnedBuffer: ...

    @abc.abstractmethod
    def host_free(self, buf: PinnedBuffer) -> None: ...

    @abc.abstractmethod
    def stream_create(self) -> Any: ...

    @abc.abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def stream_handle(self, stream: Any) -> int: ...

    @abc.abstractmethod
    def stream_synchronize(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...

    @abc.abstractmethod
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...

    @abc.abstractmethod
    def event_create(self) -> Any: ...

    @abc.abstractmethod
    def event_record(self, event: Any, stream: Any) -> None: ...

    @abc.abstractmethod
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...

    @abc.abstractmethod
    def event_destroy(self, event: Any) -> None: ...


# What a device maker runs when the binding cannot talk to the driver. Why the major matters:
# cuda.bindings "shares the same major.minor version with the CUDA Toolkit" and is compatible within
# a major (its support policy), and a CUDA runtime needs a driver of at least its own major version.
DRIVER_MISMATCH_HINT = (
    "A CUDA binding works only with an NVIDIA driver whose CUDA major version is at least the binding's "
    "(cuda-python 13.x needs a CUDA 13 driver; JetPack 6 ships a CUDA 12.x driver; nvidia-smi shows the "
    f"driver's CUDA version). Install the binding that matches the driver ({CUDA_HINT}; a later 12.x than "
    "JetPack's carries a newer CUDA runtime than its driver may take), or upgrade the driver. If the driver is "
    "recent enough, check "
    "that a GPU is visible (nvidia-smi, tegrastats on Jetson, CUDA_VISIBLE_DEVICES)"
)

# cudaError_t codes meaning "cannot use the driver/device at all" (driver_types.h)
_DRIVER_ERRORS = {34: "cudaErrorStubLibrary", 35: "cudaErrorInsufficientDriver",
                  36: "cudaErrorCallRequiresNewerDriver", 100: "cudaErrorNoDevice"}


def _cuda_version_text(v: Any) -> str:
    """CUDA's integer version (12020) as ``"12.2"``; 0 (no driver) as ``"none"``."""
    try:
        n = int(v)
    except (TypeError, ValueError):
        return "unknown"
    return "none" if n <= 0 else f"{n // 1000}.{(n % 1000) // 10}"


def _package_version(module_name: str, *dists: str) -> str:
    """Version of the binding actually imported: ``__version__`` of the module or a parent, else its dist."""
    parts = module_name.split(".")
    for i in range(len(parts), 0, -1):
        mod = sys.modules.get(".".join(parts[:i]))
        for attr in ("__version__", "VERSION_TEXT"):
            v = getattr(mod, attr, None)
            if isinstance(v, str) and v:
                return v
    return dist_version(*dists) or "version unknown"


def _advice(text: str) -> str:
    """What to do about a failed CUDA call, from its error name and message."""
    t = text.lower()
    if any(k in t for k in ("out of memory", "memoryallocation", "out_of_memory")):
        return ("free GPU memory (other GPU programs: nvidia-smi, tegrastats on Jetson) or rebuild the engine "
                "with a smaller --max-batch")
    if any(k in t for k in ("insufficient", "nodevice", "no cuda-capable device", "stub", "newer driver",
                            "no_device", "not initialized", "notinitialized")):
        return DRIVER_MISMATCH_HINT
    if any(k in t for k in ("launch", "illegal", "misaligned", "uncorrectable", "hardware", "assert")):
        return ("the GPU hit a fault and this process's CUDA context is no longer usable: close the Screener "
                "(or backend) and open a new one; restart the process if that fails")
    if any(k in t for k in ("context", "invalid handle", "invalid resource handle")):
        return ("the CUDA context or handle used was not valid in this thread; close and reopen the Screener, "
                "and report this message to uopsl if it repeats")
    return ("check the GPU and its driver (nvidia-smi, tegrastats on Jetson) and retry; if it repeats, close and "
            "reopen the Screener")


class CudaPythonApi(CudaApi):
    """cuda-python's runtime module (``cuda.bindings.runtime`` or ``cuda.cudart``): calls return (err, ...).

    Every call goes through :meth:`_ok`, which turns a non-zero ``cudaError_t``
    into a :class:`BackendError` naming the call, CUDA's error name and text
    and what to do; the errors that mean "this binding cannot use this
    driver" (insufficient driver, no device) also name the installed
    cuda-python and the CUDA versions of binding and driver.
    """

    name = "cuda-python"

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart
        self._native_handle: Any = _UNRESOLVED

    def _ok(self, ret: Any, what: str) -> Any:
        """Check the error of a ``(err, value...)`` tuple; return the value (None, or a tuple if several)."""
        if not isinstance(ret, tuple):
            ret = (ret,)
        err, rest = ret[0], ret[1:]
        code = _error_code(err)
        if code != 0:
            msg = ""
            try:
                _, text = self.rt.cudaGetErrorString(err)
                msg = str(text, "utf-8", "replace") if isinstance(text, bytes) else str(text)
            except Exception:  # noqa: BLE001 - the description is a nicety; the code is reported anyway
                pass
            name = getattr(err, "name", None) or _DRIVER_ERRORS.get(code)
            label = f"{name}, {code}" if name else str(code)
            head = f"CUDA {what} failed ({label}): {msg or 'no description'}"
            if code in _DRIVER_ERRORS:
                raise BackendError(f"{head}. {self._binding_text()} cannot use this machine's driver. "
                                   f"{DRIVER_MISMATCH_HINT}")
            raise BackendError(f"{head}; {_advice(str(name or '') + ' ' + msg)}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def _binding_text(self) -> str:
        """``cuda-python 13.0.3 (CUDA 13.0), driver CUDA 12.2``: what a driver-mismatch error must name."""
        version = _package_version(str(getattr(self.rt, "__name__", "cuda.bindings.runtime")),
                                   "cuda-bindings", "cuda-python")
        parts = []
        for call, label in (("cudaRuntimeGetVersion", "binding built for CUDA"), ("cudaDriverGetVersion",
                                                                                  "driver supports CUDA")):
            try:
                ret = getattr(self.rt, call)()
                if _error_code(ret[0]) == 0:
                    parts.append(f"{label} {_cuda_version_text(ret[1])}")
            except Exception:  # noqa: BLE001 - versions are details of an error already being reported
                continue
        return f"cuda-python {version}" + (f" ({', '.join(parts)})" if parts else "")

    def device_properties(self, device: int = 0) -> tuple[str, str]:
        prop = self._ok(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
        return str(name).strip(), f"{int(prop.major)}.{int(prop.minor)}"

    def activate(self, device: int = 0) -> None:
        self._ok(self.rt.cudaSetDevice(device), "cudaSetDevice")

    @contextlib.contextmanager
    def current(self, device: int = 0) -> Iterator[None]:
        """``cudaSetDevice(device)`` for this thread when another device is current.

        The previous device is not restored afterwards: on CUDA 12+ setting a
        device creates its primary context, so restoring device 0 in a thread
        that never used CUDA would cost GPU memory on a GPU uopsl does not use.
        """
        if int(self._ok(self.rt.cudaGetDevice(), "cudaGetDevice")) != int(device):
            self.activate(device)
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(1, int(nbytes))), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> PinnedBuffer:
        n = max(1, int(nbytes))
        ptr = int(self._ok(self.rt.cudaMallocHost(n), "cudaMallocHost"))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))
        return PinnedBuffer(array, ptr)

    def host_free(self, buf: PinnedBuffer) -> None:
        self._ok(self.rt.cudaFreeHost(buf.handle), "cudaFreeHost")

    def stream_create(self) -> Any:
        return self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream: Any) -> int:
        """The stream's address for TensorRT's ``execute_async``.

        cuda-bindings 13 deprecates ``int(cuda_obj)`` ("subject to future
        removal"; use ``cuda.bindings.utils.get_cuda_native_handle``), which
        older releases and the ``cuda.cudart`` layout do not have: the helper is
        used where it exists, ``int()`` otherwise (and for types it does not know).
        """
        if self._native_handle is _UNRESOLVED:
            try:
                utils = importlib.import_module("cuda.bindings.utils")
                self._native_handle = getattr(utils, "get_cuda_native_handle", None)
            except ImportError:
                self._native_handle = None
        getter = self._native_handle
        if getter is not None:
            try:
                return int(getter(stream))
            except TypeError:  # "Unknown type": not a cuda.bindings object (e.g. a raw int)
                pass
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync (H2D)")

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync (D2H)")

    def event_create(self) -> Any:
        return self._ok(self.rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._ok(self.rt.cudaEventDestroy(event), "cudaEventDestroy")


_UNRESOLVED: Any = object()  # CudaPythonApi._native_handle before the first look-up


def _error_code(err: Any) -> int:
    """A ``cudaError_t`` (IntEnum, cuda-bindings' own fast enum, or a plain int) as an int."""
    try:
        return int(err)
    except (TypeError, ValueError):
        return int(getattr(err, "value"))


class PycudaApi(CudaApi):
    """pycuda's driver module, in the device's primary context (the one TensorRT's runtime uses too).

    pycuda's calls need a context current in the *calling* thread ("Pushes the
    given context ctx onto the CPU thread's stack of current contexts", CUDA's
    cuCtxPushCurrent), so every call here pushes the primary context and pops
    it in ``finally``, unless this thread is already inside :meth:`current` or
    :meth:`activate` for that device, which pushed it once for the whole block.
    Nothing stays pushed between calls, so any thread may run inference or close
    the backend, and pycuda's exit check ("The context stack was not empty upon
    module cleanup", which aborts) finds an empty stack.

    pycuda's exceptions (``pycuda.driver.Error`` and its subclasses) come out as
    :class:`BackendError`, a :class:`UopslError`, naming the call, pycuda's
    message and what to do, so the screening pipeline's per-batch handling
    turns them into error rows instead of ending the run.
    """

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self.drv = driver
        err = getattr(driver, "Error", None)
        self._errors: tuple[type[BaseException], ...] = (
            (err,) if isinstance(err, type) and issubclass(err, BaseException) else ())
        self._device = 0
        self._ctxs: dict[int, Any] = {}
        self._ctx_lock = threading.Lock()
        self._tls = threading.local()
        self._allocs: dict[int, Any] = {}
        try:
            driver.init()
        except self._errors as exc:
            raise BackendError(
                f"pycuda could not initialise the CUDA driver (driver.init(): {type(exc).__name__}: {exc}). "
                f"{self._binding_text()}. {DRIVER_MISMATCH_HINT}. A pycuda built against a newer CUDA than the "
                "driver's needs rebuilding against this machine's CUDA toolkit "
                "(pip install --no-cache-dir --force-reinstall pycuda, with that toolkit's nvcc on the PATH)"
            ) from exc

    def _binding_text(self) -> str:
        """``pycuda 2024.1 (built for CUDA 12.2, driver supports CUDA 12.2)``, as far as pycuda can tell."""
        version = _package_version(str(getattr(self.drv, "__name__", "pycuda.driver")), "pycuda")
        parts = []
        try:
            built = self.drv.get_version()
            parts.append("built for CUDA " + ".".join(str(int(x)) for x in tuple(built)[:2]))
        except Exception:  # noqa: BLE001 - a detail of an error already being reported
            pass
        try:
            parts.append(f"driver supports CUDA {_cuda_version_text(self.drv.get_driver_version())}")
        except Exception:  # noqa: BLE001
            pass
        return f"pycuda {version}" + (f" ({', '.join(parts)})" if parts else "")

    # -- context handling -------------------------------------------------------------------------
    def _stack(self) -> list[tuple[int, bool]]:
        """This thread's (device, pushed here) entries, innermost last."""
        stack: list[tuple[int, bool]] | None = getattr(self._tls, "stack", None)
        if stack is None:
            stack = self._tls.stack = []
        return stack

    def _primary(self, device: int) -> Any:
        """One pycuda Context object per device, retained once and pushed every time.

        The same object, not a new one per push: pycuda's allocations, streams
        and events remember the context object current when they were made and,
        when freed, push it themselves unless it is already current, which pycuda
        refuses outside the thread that retained it ("cannot activate
        out-of-thread context"). With the same object current, nothing is switched.
        It is never released here: TensorRT's runtime works in the same primary context.
        """
        with self._ctx_lock:
            ctx = self._ctxs.get(device)
            if ctx is None:
                ctx = self._ctxs[device] = self.drv.Device(device).retain_primary_context()
            return ctx

    def _wrap(self, what: str, exc: BaseException) -> BackendError:
        said = f"{type(exc).__name__}: {exc}"
        return BackendError(f"pycuda {what} failed ({said}); {_advice(said)}")

    @contextlib.contextmanager
    def _pushed(self, device: int) -> Iterator[None]:
        """The primary context of ``device`` is current in this thread inside the block; pushed only if needed."""
        stack = self._stack()
        if stack and stack[-1][0] == device:
            stack.append((device, False))
            try:
                yield
            finally:
                stack.pop()
            return
        try:
            self._primary(device).push()
        except self._errors as exc:
            raise self._wrap(f"making device {device}'s primary context current", exc) from exc
        stack.append((device, True))
        failed = True
        try:
            yield
            failed = False
        finally:
            stack.pop()
            try:
                self.drv.Context.pop()
            except self._errors as exc:
                if not failed:
                    raise self._wrap("Context.pop", exc) from exc
                log.warning("pycuda: popping the CUDA context after a failed call failed too: %s", exc)

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Run a pycuda call with the context current; its pycuda errors come out as BackendError."""
        stack = self._stack()
        device = stack[-1][0] if stack else self._device
        try:
            with self._pushed(device):
                yield
        except self._errors as exc:
            raise self._wrap(what, exc) from exc

    @contextlib.contextmanager
    def current(self, device: int = 0) -> Iterator[None]:
        """Device ``device``'s primary context is current in this thread inside the block, popped after it."""
        self._device = int(device)
        try:
            with self._pushed(int(device)):
                yield
        except self._errors as exc:
            raise self._wrap(f"a CUDA call in device {device}'s context", exc) from exc

    def activate(self, device: int = 0) -> None:
        """Push the context in this thread until :meth:`deactivate` in the same thread (the engine builder).

        The runtime backend uses :meth:`current` instead, so no context stays
        pushed while it is open.
        """
        scope = contextlib.ExitStack()
        scope.enter_context(self.current(device))
        activations: list[contextlib.ExitStack] | None = getattr(self._tls, "activations", None)
        if activations is None:
            activations = self._tls.activations = []
        activations.append(scope)

    def deactivate(self) -> None:
        """Pop what :meth:`activate` pushed in this thread; in any other thread nothing is popped."""
        activations: list[contextlib.ExitStack] | None = getattr(self._tls, "activations", None)
        if not activations:
            log.debug("pycuda: deactivate() in a thread that activated nothing; nothing to pop")
            return
        activations.pop().close()

    # -- calls --------------------------------------------------------------------------------------
    def device_properties(self, device: int = 0) -> tuple[str, str]:
        try:
            dev = self.drv.Device(device)
            major, minor = dev.compute_capability()
            return str(dev.name()).strip(), f"{int(major)}.{int(minor)}"
        except self._errors as exc:
            raise self._wrap(f"Device({device}) properties", exc) from exc

    def malloc(self, nbytes: int) -> int:
        with self._call(f"mem_alloc({max(1, int(nbytes))} bytes)"):
            alloc = self.drv.mem_alloc(max(1, int(nbytes)))
        ptr = int(alloc)
        self._allocs[ptr] = alloc
        return ptr

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(int(ptr), None)
        if alloc is not None:
            with self._call("DeviceAllocation.free"):
                alloc.free()

    def host_alloc(self, nbytes: int) -> PinnedBuffer:
        with self._call(f"pagelocked_empty({max(1, int(nbytes))} bytes)"):
            arr = self.drv.pagelocked_empty(max(1, int(nbytes)), np.uint8)
        return PinnedBuffer(arr, arr)

    def host_free(self, buf: PinnedBuffer) -> None:
        base = getattr(buf.handle, "base", None)
        if base is not None and hasattr(base, "free"):
            with self._call("HostAllocation.free"):
                base.free()

    def stream_create(self) -> Any:
        with self._call("Stream()"):
            return self.drv.Stream()

    def stream_destroy(self, stream: Any) -> None:
        return None  # freed with the object (the backend drops it inside current())

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        with self._call("Stream.synchronize"):
            stream.synchronize()

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        with self._call(f"memcpy_htod_async ({src.nbytes} bytes)"):
            self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        with self._call(f"memcpy_dtoh_async ({dst.nbytes} bytes)"):
            self.drv.memcpy_dtoh_async(dst, src, stream)

    def event_create(self) -> Any:
        with self._call("Event()"):
            return self.drv.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        with self._call("Event.record"):
            event.record(stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        with self._call("Event.time_since"):
            return float(end.time_since(start))

    def event_destroy(self, event: Any) -> None:
        return None  # freed with the object


# Tried in this order: cuda-python >= 12.6 layout, the older cuda-python layout, pycuda.


def load_cuda(purpose: str) -> CudaApi:
    """The first CUDA binding that imports; MissingDependencyError (naming what to install) if none does.

    Importing is all that is checked here: whether the binding can use this
    machine's driver shows at its first call, whose BackendError then names the
    binding, the CUDA versions and the command (see :data:`DRIVER_MISMATCH_HINT`).
    """
    errors: list[MissingDependencyError] = []
    for name in CUDA_MODULES:
        try:
            mod = require(name, purpose)
        except MissingDependencyError as exc:
            errors.append(exc)
            continue
        return PycudaApi(mod) if name.startswith("pycuda") else CudaPythonApi(mod)
    cause = errors[0].__cause__ or errors[0]
    raise MissingDependencyError(
        f"{purpose} needs a CUDA binding for Python, and none imports here: neither cuda-python "
        f"('cuda.bindings.runtime', 'cuda.cudart') nor pycuda ('pycuda.driver') "
        f"({type(cause).__name__}: {cause}). Install one whose CUDA major is at most the driver's (nvidia-smi shows "
        f"it): {CUDA_HINT}"
    ) from errors[0]


__all__ = [
    "SUPPORTED",
    "BindingsIO",
    "CudaApi",
    "CudaPythonApi",
    "DRIVER_MISMATCH_HINT",
    "EngineIO",
    "ErrorCapture",
    "IOTensor",
    "PinnedBuffer",
    "PycudaApi",
    "TensorsIO",
    "TrtApi",
    "TrtErrorLog",
    "api_for",
    "dims",
    "engine_io",
    "installed_version",
    "load_cuda",
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
