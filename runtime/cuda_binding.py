"""The one place where CUDA-binding API differences are handled: the CUDA calls TensorRT needs around it.

Device memory, pinned host memory, streams and events come from cuda-python
(``cuda.bindings.runtime``, or the older ``cuda.cudart`` layout; every call
returns ``(err, value...)``) or, where that is what the device has, from
pycuda. :func:`load_cuda` returns a :class:`CudaApi` over whichever is
installed; the TensorRT backend (:mod:`uopsl.runtime.backends.tensorrt`) and
the engine builder's calibrator (:mod:`uopsl.export.tensorrt_calibrator`) use
it. TensorRT's own API differences are :mod:`uopsl.runtime.trt_compat`'s.

Nothing here imports a CUDA binding at module import time.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uopsl.runtime.errors import BackendError, MissingDependencyError
from uopsl.runtime.optional import CUDA_HINT, CUDA_MODULES, dist_version, require

log = logging.getLogger(__name__)

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
    "CudaApi",
    "CudaPythonApi",
    "DRIVER_MISMATCH_HINT",
    "PinnedBuffer",
    "PycudaApi",
    "load_cuda",
]
