"""CUDA-binding adapters (runtime/cuda_binding.py) and TensorRT's shared logger (runtime/trt_compat.py), exercised
with FAKE modules.

No GPU, TensorRT, pycuda or cuda-python is needed:

- :class:`FakeDriver` stands in for ``pycuda.driver``. Like CUDA, it keeps one
  context stack per thread, and every call that needs a context raises
  pycuda's ``LogicError`` ("invalid device context - no currently active
  context?") when the calling thread has none. It also records every push and
  pop, so a test can check that they are balanced and made in the right thread.
- :class:`FakeRuntime` stands in for cuda-python's runtime module: every call
  returns ``(err, value...)``, and any call can be made to fail.
- The TensorRT backend tests reuse the fake ``tensorrt`` module and the fake
  engine of ``test_tensorrt.py``, with the fake pycuda driver in place of the
  test CUDA binding, so copy, execute and copy run end to end over it.

What this does NOT prove: that real pycuda, cuda-python and TensorRT behave as
these fakes do. The fakes follow their documented behaviour; nothing here ran
on a GPU.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import test_tensorrt as tt
from uopsl.runtime import cuda_binding, trt_compat
from uopsl.runtime.backends.tensorrt import TensorRTBackend
from uopsl.runtime.engine_header import read_plan, write_engine
from uopsl.runtime.errors import BackendError, MissingDependencyError, UopslError
from uopsl.runtime.cuda_binding import CudaPythonApi, PycudaApi

JOIN_S = 10  # seconds a worker thread may take before a test gives up on it


# -- fake pycuda ------------------------------------------------------------------------------------
class PycudaErrors:
    """pycuda.driver's exception classes: Error and its subclasses."""

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class RuntimeError(Error):  # noqa: A001 - pycuda's own name
        pass

    class MemoryError(Error):  # noqa: A001 - pycuda's own name
        pass

    class LaunchError(Error):
        pass


class FakePinned(np.ndarray):
    """A page-locked array: ``.base`` is pycuda's HostAllocation, which has ``free()``."""

    allocation: Any = None

    def __array_finalize__(self, obj: Any) -> None:
        self.allocation = getattr(obj, "allocation", None)

    @property  # type: ignore[override]
    def base(self) -> Any:
        return self.allocation


class FakeDriver(types.ModuleType):
    """``pycuda.driver``: per-thread context stacks, device memory in a FakeGpu, every call logged."""

    Error = PycudaErrors.Error
    LogicError = PycudaErrors.LogicError
    RuntimeError = PycudaErrors.RuntimeError
    MemoryError = PycudaErrors.MemoryError
    LaunchError = PycudaErrors.LaunchError

    def __init__(self, gpu: tt.FakeGpu | None = None, *, built_for: tuple[int, ...] = (12, 2, 0),
                 driver_version: int = 12020) -> None:
        super().__init__("pycuda.driver")
        self.gpu = gpu or tt.FakeGpu()
        self.built_for, self.driver_version = built_for, driver_version
        self.init_error: BaseException | None = None
        self.push_error: BaseException | None = None
        self.fail: dict[str, BaseException] = {}  # call name -> exception that call raises
        self._tls = threading.local()
        self._lock = threading.Lock()
        self.events: list[tuple[str, str]] = []  # (thread name, "push" / "pop")
        self.calls: list[tuple[str, str, int]] = []  # (call, thread name, context stack depth)
        self.pinned_live = 0
        self.Context = types.SimpleNamespace(pop=self._pop)

    # context stack, one per thread (what cuCtxPushCurrent / cuCtxPopCurrent act on)
    def stack(self) -> list[Any]:
        if not hasattr(self._tls, "stack"):
            self._tls.stack = []
        return self._tls.stack

    def _record(self, what: str) -> None:
        with self._lock:
            self.events.append((threading.current_thread().name, what))

    def _push(self, ctx: Any) -> None:
        if self.push_error is not None:
            raise self.push_error
        self.stack().append(ctx)
        self._record("push")

    def _pop(self) -> None:
        if not self.stack():
            raise PycudaErrors.LogicError("context::pop failed: cannot pop non-current context")
        self.stack().pop()
        self._record("pop")

    def count(self, what: str, thread: str | None = None) -> int:
        return sum(1 for t, w in self.events if w == what and (thread is None or t == thread))

    def _need_ctx(self, call: str) -> None:
        with self._lock:
            self.calls.append((call, threading.current_thread().name, len(self.stack())))
        if not self.stack():
            raise PycudaErrors.LogicError(f"{call} failed: invalid device context - no currently active context?")
        if call in self.fail:
            raise self.fail[call]

    # pycuda.driver's functions and classes
    def init(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def get_version(self) -> tuple[int, ...]:
        return self.built_for

    def get_driver_version(self) -> int:
        return self.driver_version

    def Device(self, n: int) -> Any:  # noqa: N802 - pycuda's spelling
        drv = self

        class _Context:
            device = n

            def push(self) -> None:
                drv._push(self)

        class _Device:
            def name(self) -> str:
                return "Orin"

            def compute_capability(self) -> tuple[int, int]:
                return 8, 7

            def retain_primary_context(self) -> _Context:
                return _Context()

        if n > 0:
            raise PycudaErrors.LogicError(f"cuDeviceGet failed: invalid device ordinal {n}")
        return _Device()

    def mem_alloc(self, n: int) -> Any:
        self._need_ctx("mem_alloc")
        drv, ptr = self, self.gpu.alloc(n)

        class _DeviceAllocation:
            def __int__(self) -> int:
                return ptr

            def free(self) -> None:
                drv._need_ctx("free")
                del drv.gpu.mem[ptr]

        return _DeviceAllocation()

    def pagelocked_empty(self, n: int, dtype: Any) -> FakePinned:
        self._need_ctx("pagelocked_empty")
        drv = self

        class _HostAllocation:
            def free(self) -> None:
                drv._need_ctx("host_free")
                drv.pinned_live -= 1

        arr = np.zeros(n, dtype).view(FakePinned)
        arr.allocation = _HostAllocation()
        self.pinned_live += 1
        return arr

    def Stream(self) -> Any:  # noqa: N802 - pycuda's spelling
        self._need_ctx("Stream")
        drv = self

        class _Stream:
            handle = 0x5EED

            def synchronize(self) -> None:
                drv._need_ctx("synchronize")

        return _Stream()

    def Event(self) -> Any:  # noqa: N802 - pycuda's spelling
        self._need_ctx("Event")
        drv = self

        class _Event:
            def record(self, stream: Any) -> None:
                drv._need_ctx("record")

            def time_since(self, other: Any) -> float:
                drv._need_ctx("time_since")
                return 1.5

        return _Event()

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._need_ctx("memcpy_htod_async")
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.gpu.mem[int(dst)][: raw.size] = raw

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._need_ctx("memcpy_dtoh_async")
        flat = dst.reshape(-1).view(np.uint8)
        flat[:] = self.gpu.mem[int(src)][: flat.size]


def install_pycuda(monkeypatch: pytest.MonkeyPatch, drv: FakeDriver, version: str = "2025.1") -> None:
    """pycuda importable, cuda-python not (so load_cuda picks pycuda)."""
    pkg = types.ModuleType("pycuda")
    pkg.VERSION_TEXT = version  # type: ignore[attr-defined]
    pkg.driver = drv  # type: ignore[attr-defined]
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)


def run_in_thread(fn: Any, name: str) -> Any:
    """Run ``fn()`` in a new thread called ``name``; return its result or raise its exception here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=target, name=name)
    t.start()
    t.join(JOIN_S)
    assert not t.is_alive(), f"thread {name} did not finish"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- pycuda: context per call -----------------------------------------------------------------------
def test_pycuda_every_call_pushes_and_pops_the_context() -> None:
    drv = FakeDriver()
    api = PycudaApi(drv)
    ptr = api.malloc(64)
    buf = api.host_alloc(64)
    stream = api.stream_create()
    buf.array[:] = 9
    api.htod_async(ptr, buf.array, stream)
    out = np.zeros(64, np.uint8)
    api.dtoh_async(out, ptr, stream)
    api.stream_synchronize(stream)
    start, end = api.event_create(), api.event_create()
    api.event_record(start, stream)
    assert api.event_elapsed_ms(start, end) == 1.5
    assert api.stream_handle(stream) == 0x5EED
    api.free(ptr)
    api.host_free(buf)
    assert (out == 9).all()  # the copies went through the fake device memory
    calls = [c for c, _, _ in drv.calls]
    assert calls == ["mem_alloc", "pagelocked_empty", "Stream", "memcpy_htod_async", "memcpy_dtoh_async",
                     "synchronize", "Event", "Event", "record", "time_since", "free", "host_free"]
    assert all(depth == 1 for _, _, depth in drv.calls)  # each ran with exactly the one context pushed for it
    assert drv.count("push") == drv.count("pop") == len(calls)  # one push and one pop per call, balanced
    assert drv.stack() == [] and drv.gpu.mem == {} and drv.pinned_live == 0


def test_pycuda_calls_work_from_a_second_thread() -> None:
    """Allocate in the loading thread, copy/synchronise/free in another: nothing needs the loading thread's context."""
    drv = FakeDriver()
    api = PycudaApi(drv)
    api.activate(0)  # the loading thread holds a pushed context (the engine builder's pattern) ...
    ptr = api.malloc(16)
    stream = api.stream_create()
    assert drv.count("push") == 1  # ... and calls inside it push nothing more

    def worker() -> bytes:
        src = np.arange(16, dtype=np.uint8)
        api.htod_async(ptr, src, stream)
        dst = np.zeros(16, np.uint8)
        api.dtoh_async(dst, ptr, stream)
        api.stream_synchronize(stream)
        api.free(ptr)
        assert drv.stack() == []  # nothing left pushed in the worker
        return dst.tobytes()

    assert run_in_thread(worker, "infer-thread") == bytes(range(16))
    assert drv.count("push", "infer-thread") == drv.count("pop", "infer-thread") == 4
    api.deactivate()
    assert drv.stack() == [] and drv.count("pop", "MainThread") == 1


def test_pycuda_current_pushes_once_for_a_block_and_nests() -> None:
    drv = FakeDriver()
    api = PycudaApi(drv)
    with api.current(0):
        ptr = api.malloc(8)
        with api.current(0):  # nested: the same device, already current
            api.htod_async(ptr, np.ones(8, np.uint8), api.stream_create())
        assert len(drv.stack()) == 1
        api.free(ptr)
    assert drv.count("push") == drv.count("pop") == 1
    assert drv.stack() == []


def test_pycuda_deactivate_pops_only_what_this_thread_pushed() -> None:
    drv = FakeDriver()
    api = PycudaApi(drv)
    api.deactivate()  # nothing activated: nothing popped, no error
    assert drv.count("pop") == 0
    api.activate(0)
    run_in_thread(api.deactivate, "closer")  # close() from another thread ...
    assert drv.count("pop") == 0 and len(drv.stack()) == 1  # ... pops neither its own stack nor ours
    api.deactivate()
    api.deactivate()  # a second deactivate pops nothing more
    assert drv.count("pop") == 1 and drv.stack() == []


# -- pycuda: errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call, exc, said, todo", [
    ("mem_alloc", PycudaErrors.MemoryError("cuMemAlloc failed: out of memory"),
     "MemoryError: cuMemAlloc failed: out of memory", "smaller --max-batch"),
    ("synchronize", PycudaErrors.LaunchError("cuStreamSynchronize failed: an illegal memory access was encountered"),
     "LaunchError: cuStreamSynchronize failed: an illegal memory access", "open a new one"),
    ("memcpy_htod_async", PycudaErrors.LogicError("cuMemcpyHtoDAsync failed: invalid argument"),
     "LogicError: cuMemcpyHtoDAsync failed: invalid argument", "nvidia-smi"),
])
def test_pycuda_errors_become_backend_errors(call: str, exc: BaseException, said: str, todo: str) -> None:
    drv = FakeDriver()
    api = PycudaApi(drv)
    ptr = api.malloc(8)
    stream = api.stream_create()
    drv.fail[call] = exc
    run = {"mem_alloc": lambda: api.malloc(8),
           "synchronize": lambda: api.stream_synchronize(stream),
           "memcpy_htod_async": lambda: api.htod_async(ptr, np.zeros(8, np.uint8), stream)}[call]
    with pytest.raises(BackendError) as info:
        run()
    err = info.value
    msg = str(err)
    assert isinstance(err, UopslError)  # what the screening pipeline's per-batch handler catches
    assert msg.startswith("pycuda ") and said in msg and todo in msg and "\n" not in msg
    assert err.__cause__ is exc
    assert drv.stack() == [] and drv.count("push") == drv.count("pop")  # popped in finally


def test_pycuda_context_errors_are_wrapped_too() -> None:
    drv = FakeDriver()
    api = PycudaApi(drv)
    drv.push_error = PycudaErrors.LogicError("cuCtxPushCurrent failed: context is destroyed")
    with pytest.raises(BackendError, match=r"making device 0's primary context current failed \(LogicError: "
                                           r"cuCtxPushCurrent failed: context is destroyed\)"):
        api.malloc(8)
    with pytest.raises(BackendError, match="primary context current"):
        with api.current(0):
            pass
    drv.push_error = None
    with pytest.raises(BackendError, match=r"Device\(3\) properties failed.*invalid device ordinal 3"):
        api.device_properties(3)
    assert drv.stack() == []
    # a call without a context (a bug this adapter exists to prevent) is still a BackendError, not a crash
    with pytest.raises(BackendError, match="no currently active context.*report"):
        with api.current(0):
            drv._pop()  # something popped our context behind our back
            drv.memcpy_htod_async(0, np.zeros(1, np.uint8), None)


def test_pycuda_init_failure_names_binding_versions_and_command(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = FakeDriver(built_for=(13, 0, 0), driver_version=12060)
    drv.init_error = PycudaErrors.RuntimeError("cuInit failed: CUDA driver version is insufficient for CUDA runtime "
                                               "version")
    install_pycuda(monkeypatch, drv, "2025.1.2")
    with pytest.raises(BackendError) as info:
        cuda_binding.load_cuda("running a TensorRT engine")  # cuda-python absent: pycuda is chosen, and fails
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value.__cause__, PycudaErrors.RuntimeError)
    for part in ("driver.init(): RuntimeError: cuInit failed: CUDA driver version is insufficient",
                 "pycuda 2025.1.2 (built for CUDA 13.0, driver supports CUDA 12.6)",
                 "cuda-python 13.x needs a CUDA 13 driver", "JetPack 6 ships a CUDA 12.x driver",
                 "pip install 'cuda-python>=12,<13'", "--force-reinstall pycuda"):
        assert part in msg, part


def test_load_cuda_picks_pycuda_when_cuda_python_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = FakeDriver()
    install_pycuda(monkeypatch, drv)
    api = cuda_binding.load_cuda("running a TensorRT engine")
    assert isinstance(api, PycudaApi) and api.drv is drv
    assert api.device_properties(0) == ("Orin", "8.7")


def test_load_cuda_without_any_binding_says_which_major(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError) as info:
        cuda_binding.load_cuda("running a TensorRT engine")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("running a TensorRT engine needs a CUDA binding")
    assert "pip install 'cuda-python>=12,<13'" in msg and "JetPack 6" in msg and "pip install pycuda" in msg


# -- cuda-python --------------------------------------------------------------------------------------
CudaError = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorMemoryAllocation": 2,  # type: ignore[misc]
                                          "cudaErrorInsufficientDriver": 35, "cudaErrorNoDevice": 100,
                                          "cudaErrorIllegalAddress": 700})
_TEXT = {2: b"out of memory", 35: b"CUDA driver version is insufficient for CUDA runtime version",
         100: b"no CUDA-capable device is detected", 700: b"an illegal memory access was encountered"}


class FakeRuntime:
    """cuda-python's runtime module: each call returns (cudaError_t, value...); ``fail`` makes calls fail."""

    __name__ = "cuda.bindings.runtime"

    class cudaMemcpyKind:  # noqa: N801 - the binding's spelling
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.fail: dict[str, int] = {}  # call name -> error code
        self.device = 0
        self.set_calls: list[int] = []
        self.keep: list[Any] = []

    def _ret(self, call: str, *values: Any) -> tuple[Any, ...]:
        code = self.fail.get(call, self.fail.get("*", 0))
        return (CudaError(code), *([None] * len(values) if code else values))

    def cudaGetErrorString(self, err: Any) -> tuple[Any, bytes]:  # noqa: N802
        return CudaError(0), _TEXT.get(int(err), b"unknown error")

    def cudaRuntimeGetVersion(self) -> tuple[Any, int]:  # noqa: N802
        return CudaError(0), 13000

    def cudaDriverGetVersion(self) -> tuple[Any, int]:  # noqa: N802
        return CudaError(0), 12020

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaGetDeviceProperties", types.SimpleNamespace(name=b"Orin\0", major=8, minor=7))

    def cudaGetDevice(self) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaGetDevice", self.device)

    def cudaSetDevice(self, device: int) -> tuple[Any, ...]:  # noqa: N802
        self.set_calls.append(device)
        self.device = device
        return self._ret("cudaSetDevice")

    def cudaMalloc(self, n: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaMalloc", 0xD000)

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaFree")

    def cudaMallocHost(self, n: int) -> tuple[Any, ...]:  # noqa: N802
        import ctypes

        buf = (ctypes.c_uint8 * n)()
        self.keep.append(buf)
        return self._ret("cudaMallocHost", ctypes.addressof(buf))

    def cudaFreeHost(self, ptr: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaFreeHost")

    def cudaStreamCreate(self) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaStreamCreate", 42)

    def cudaStreamDestroy(self, s: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaStreamDestroy")

    def cudaStreamSynchronize(self, s: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaStreamSynchronize")

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, s: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaMemcpyAsync")

    def cudaEventCreate(self) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaEventCreate", 7)

    def cudaEventRecord(self, e: Any, s: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaEventRecord")

    def cudaEventElapsedTime(self, a: Any, b: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaEventElapsedTime", 0.5)

    def cudaEventDestroy(self, e: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ret("cudaEventDestroy")


def _enter_current(api: CudaPythonApi, device: int) -> None:
    with api.current(device):
        pass


_HOST = np.zeros(8, np.uint8)
# every CudaPythonApi method that calls CUDA, and the CUDA call its error must name
CUDA_PYTHON_CALLS = [
    ("cudaGetDeviceProperties", lambda a: a.device_properties(0)),
    ("cudaSetDevice", lambda a: a.activate(1)),
    ("cudaGetDevice", lambda a: _enter_current(a, 0)),
    ("cudaMalloc", lambda a: a.malloc(8)),
    ("cudaFree", lambda a: a.free(0xD000)),
    ("cudaMallocHost", lambda a: a.host_alloc(8)),
    ("cudaFreeHost", lambda a: a.host_free(cuda_binding.PinnedBuffer(_HOST, 0xB000))),
    ("cudaStreamCreate", lambda a: a.stream_create()),
    ("cudaStreamDestroy", lambda a: a.stream_destroy(42)),
    ("cudaStreamSynchronize", lambda a: a.stream_synchronize(42)),
    ("cudaMemcpyAsync (H2D)", lambda a: a.htod_async(0xD000, _HOST, 42)),
    ("cudaMemcpyAsync (D2H)", lambda a: a.dtoh_async(_HOST, 0xD000, 42)),
    ("cudaEventCreate", lambda a: a.event_create()),
    ("cudaEventRecord", lambda a: a.event_record(7, 42)),
    ("cudaEventElapsedTime", lambda a: a.event_elapsed_ms(7, 7)),
    ("cudaEventDestroy", lambda a: a.event_destroy(7)),
]


@pytest.mark.parametrize("call, run", CUDA_PYTHON_CALLS, ids=[c for c, _ in CUDA_PYTHON_CALLS])
def test_cuda_python_checks_every_call(call: str, run: Any) -> None:
    rt = FakeRuntime()
    api = CudaPythonApi(rt)
    run(api)  # succeeds while the binding reports success
    rt.fail["*"] = 700
    with pytest.raises(BackendError) as info:
        run(api)
    msg = str(info.value)
    assert msg.startswith(f"CUDA {call} failed (cudaErrorIllegalAddress, 700): an illegal memory access")
    assert "open a new one" in msg and "\n" not in msg


@pytest.mark.parametrize("code, name", [(35, "cudaErrorInsufficientDriver"), (100, "cudaErrorNoDevice")])
def test_cuda_python_driver_errors_name_binding_versions_and_command(monkeypatch: pytest.MonkeyPatch, code: int,
                                                                     name: str) -> None:
    bindings = types.ModuleType("cuda.bindings")
    bindings.__version__ = "13.0.3"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    rt = FakeRuntime()
    rt.fail["cudaGetDeviceProperties"] = code
    with pytest.raises(BackendError) as info:
        CudaPythonApi(rt).device_properties(0)
    msg = str(info.value)
    assert "\n" not in msg
    for part in (f"CUDA cudaGetDeviceProperties failed ({name}, {code})", _TEXT[code].decode(),
                 "cuda-python 13.0.3 (binding built for CUDA 13.0, driver supports CUDA 12.2)",
                 "cannot use this machine's driver. A CUDA binding works only with an NVIDIA driver whose CUDA major version is at least the binding's", "cuda-python 13.x needs a CUDA 13 driver",
                 "JetPack 6 ships a CUDA 12.x driver", "pip install 'cuda-python>=12,<13'", "pip install pycuda"):
        assert part in msg, part


def test_cuda_python_other_errors_say_what_to_do() -> None:
    rt = FakeRuntime()
    rt.fail["cudaMalloc"] = 2
    with pytest.raises(BackendError, match=r"cudaMalloc failed \(cudaErrorMemoryAllocation, 2\): out of memory; "
                                           r"free GPU memory .* smaller --max-batch"):
        CudaPythonApi(rt).malloc(1 << 30)


def test_cuda_python_current_sets_the_device_of_the_calling_thread() -> None:
    rt = FakeRuntime()
    api = CudaPythonApi(rt)
    with api.current(0):  # already current: no cudaSetDevice
        pass
    assert rt.set_calls == []
    with api.current(1):
        assert rt.device == 1
    assert rt.set_calls == [1]


# -- stream_handle (finding 15) ------------------------------------------------------------------------
class FakeStreamT:
    """A cuda.bindings object whose int() is deprecated: a test fails if int() is used where it must not be."""

    def __init__(self, address: int) -> None:
        self.address = address
        self.int_calls = 0

    def __int__(self) -> int:
        self.int_calls += 1
        return self.address


def test_stream_handle_uses_get_cuda_native_handle_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def get_cuda_native_handle(obj: Any) -> int:
        seen.append(obj)
        if not isinstance(obj, FakeStreamT):
            raise TypeError("Unknown type: " + str(type(obj)))
        return obj.address + 1  # distinguishable from int(obj)

    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = get_cuda_native_handle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    api = CudaPythonApi(FakeRuntime())
    stream = FakeStreamT(0x1000)
    assert api.stream_handle(stream) == 0x1001 and stream.int_calls == 0 and seen == [stream]
    assert api.stream_handle(42) == 42  # a type the helper does not know: int() after its TypeError


def test_stream_handle_falls_back_to_int_without_the_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # cuda-python < 12.9 / the cuda.cudart layout
    api = CudaPythonApi(FakeRuntime())
    stream = FakeStreamT(0x2000)
    assert api.stream_handle(stream) == 0x2000 and stream.int_calls == 1
    old = types.ModuleType("cuda.bindings.utils")  # a utils module without the helper
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", old)
    assert CudaPythonApi(FakeRuntime()).stream_handle(stream) == 0x2000 and stream.int_calls == 2


# -- TensorRT's shared logger (finding 10) ---------------------------------------------------------------
def test_make_logger_returns_one_logger_per_process() -> None:
    t = tt.fake_trt("10.3.0")
    first = trt_compat.make_logger(t)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(trt_compat.make_logger(t))) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_S)
    assert len(results) == 8 and all(r is first for r in results)
    assert trt_compat.make_logger(t) is first and isinstance(first, t.ILogger)
    other = trt_compat.make_logger(tt.fake_trt("10.3.0"))  # another tensorrt module (only tests have two) ...
    assert other is not first and isinstance(other, other.trt_base)  # ... gets a logger of its own ILogger


def test_logger_errors_are_per_operation() -> None:
    t = tt.fake_trt("10.3.0")
    sev = t.ILogger.Severity
    logger = trt_compat.make_logger(t)  # operation 1 starts
    logger.log(sev.ERROR, "from operation 1")
    assert logger.errors == ["from operation 1"]
    again = trt_compat.make_logger(t)  # operation 2 starts: what export/tensorrt.py does per build
    assert again is logger and again.errors == []
    logger.log(sev.ERROR, "from operation 2")
    logger.log(sev.WARNING, "not an error")
    assert again.errors == ["from operation 2"]
    log = logger.error_log
    mark = log.mark()
    with log.capture() as cap:
        logger.log(sev.INTERNAL_ERROR, "inside the block")
        assert cap.errors == ["inside the block"]
    logger.log(sev.ERROR, "after the block")
    assert log.since(mark) == ["inside the block", "after the block"]


def test_logger_separates_operations_in_two_threads() -> None:
    t = tt.fake_trt("10.3.0")
    logger = trt_compat.make_logger(t)
    sev = t.ILogger.Severity
    both_inside = threading.Barrier(2, timeout=JOIN_S)
    both_logged = threading.Barrier(2, timeout=JOIN_S)
    got: dict[str, list[str]] = {}

    def operation(name: str) -> None:
        with logger.error_log.capture() as cap:
            both_inside.wait()
            logger.log(sev.ERROR, f"error of {name}")
            both_logged.wait()  # the other thread's error is in the log now too
            got[name] = cap.errors

    threads = [threading.Thread(target=operation, args=(n,)) for n in ("engine-a", "engine-b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_S)
    assert got == {"engine-a": ["error of engine-a"], "engine-b": ["error of engine-b"]}


def test_logger_falls_back_to_errors_from_other_threads() -> None:
    """TensorRT may log from its own worker threads: an operation whose thread logged nothing still sees those."""
    t = tt.fake_trt("10.3.0")
    logger = trt_compat.make_logger(t)
    with logger.error_log.capture() as cap:
        run_in_thread(lambda: logger.log(t.ILogger.Severity.ERROR, "from a TensorRT worker"), "trt-worker")
        assert cap.errors == ["from a TensorRT worker"]


def test_logger_is_thread_safe_and_bounded() -> None:
    t = tt.fake_trt("10.3.0")
    logger = trt_compat.make_logger(t)
    log = logger.error_log
    start = log.mark()

    def spam(i: int) -> None:
        for j in range(100):
            logger.log(t.ILogger.Severity.ERROR, f"{i}-{j}")

    threads = [threading.Thread(target=spam, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_S)
    assert log.mark() == start + 800  # no message lost or numbered twice
    assert len(log.since(0, thread=-1)) == 256  # only the last 256 are kept for a process-long logger


def test_logger_verbose_stays_on(caplog: pytest.LogCaptureFixture) -> None:
    t = tt.fake_trt("10.3.0")
    logger = trt_compat.make_logger(t)
    with caplog.at_level(logging.DEBUG, logger="uopsl.runtime.trt_compat"):
        logger.log(t.ILogger.Severity.INFO, "quiet info")
        assert trt_compat.make_logger(t, verbose=True) is logger
        trt_compat.make_logger(t)  # a later caller without verbose does not turn it off
        logger.log(t.ILogger.Severity.INFO, "loud info")
    levels = {r.getMessage(): r.levelno for r in caplog.records if "info" in r.getMessage()}
    assert levels == {"TensorRT: quiet info": logging.DEBUG, "TensorRT: loud info": logging.INFO}


def sticky_logger(monkeypatch: pytest.MonkeyPatch, trt: Any) -> list[Any]:
    """Make the fake TensorRT behave as the real one: the first logger it is given is the one it keeps."""
    kept: list[Any] = []
    runtime, builder = trt.Runtime, trt.Builder

    def keep(logger: Any) -> Any:
        if not kept:
            kept.append(logger)
        return kept[0]

    monkeypatch.setattr(trt, "Runtime", lambda logger: runtime(keep(logger)))
    monkeypatch.setattr(trt, "Builder", lambda logger: builder(keep(logger)))
    return kept


def test_second_engine_error_reaches_its_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With a logger per Runtime, the second engine's error went to the first logger: 'no error reported'."""
    gpu = tt.FakeGpu()
    trt, path = tt.build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    kept = sticky_logger(monkeypatch, trt)
    header, plan = read_plan(path)
    bad = tmp_path / "bad.engine"
    write_engine(bad, plan.replace(b'"10.3.0"', b'"10.2.0"'), header)  # TensorRT itself refuses this plan
    with TensorRTBackend(path, cuda=tt.FakeCuda(gpu)):  # the first engine: its logger is the one TensorRT keeps
        kept[0].log(trt.ILogger.Severity.ERROR, "stale error of another engine")
        with pytest.raises(BackendError) as info:
            TensorRTBackend(bad, cuda=tt.FakeCuda(gpu)).load()
    msg = str(info.value)
    assert "could not deserialise" in msg and "version tag mismatch" in msg and "stale error" not in msg


def test_engine_build_reads_its_own_errors_from_the_shared_logger(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """export/tensorrt.py reads ``logger.errors`` after make_logger(trt): the compatible path."""
    from uopsl.export.tensorrt import EngineBuildConfig, build_engine

    gpu = tt.FakeGpu()
    trt, path = tt.build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    builder_class = trt.Builder
    sticky_logger(monkeypatch, trt)

    def failing_build(self: Any, network: Any, config: Any) -> None:
        self.logger.log(trt.ILogger.Severity.ERROR, "out of memory while timing tactics")
        return None

    with TensorRTBackend(path, cuda=tt.FakeCuda(gpu)):  # registers the shared logger with TensorRT first
        trt_compat.make_logger(trt).log(trt.ILogger.Severity.ERROR, "an earlier engine's error")
        monkeypatch.setattr(builder_class, "build_serialized_network", failing_build)
        with pytest.raises(BackendError) as info:
            build_engine(tt.fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(),
                         cuda=tt.FakeCuda(gpu))
    msg = str(info.value)
    assert "out of memory while timing tactics" in msg and "earlier engine" not in msg


# -- the TensorRT backend over pycuda (findings 2 and 3) ------------------------------------------------
def _pycuda_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[TensorRTBackend, FakeDriver, Any]:
    gpu = tt.FakeGpu()
    trt, path = tt.build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    drv = FakeDriver(gpu)
    return TensorRTBackend(path, cuda=PycudaApi(drv)), drv, trt


def _watch_execute(backend: TensorRTBackend, drv: FakeDriver, gate: threading.Event | None = None) -> list[int]:
    """Record the context depth of the thread TensorRT executes in (and optionally hold it at a gate)."""
    io = backend._io
    assert io is not None
    real = io.execute
    depths: list[int] = []

    def execute(context: Any, addresses: dict[str, int], stream_handle: int) -> None:
        depths.append(len(drv.stack()))
        if gate is not None:
            assert gate.wait(JOIN_S)
        real(context, addresses, stream_handle)

    io.execute = execute  # type: ignore[method-assign]
    return depths


def test_backend_loads_runs_and_closes_in_different_threads(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    backend, drv, _ = _pycuda_backend(monkeypatch, tmp_path)
    backend.__enter__()  # load in the main thread
    assert drv.stack() == []  # load leaves nothing pushed in the loading thread
    depths = _watch_execute(backend, drv)
    batch = np.random.default_rng(3).integers(0, 255, (6, tt.H, tt.W, 3), dtype=np.uint8)  # 4 + 2 chunks
    out = run_in_thread(lambda: backend.infer(batch), "infer-thread")
    np.testing.assert_allclose(out["probs"], tt.expected_probs(batch), rtol=1e-6)
    assert depths == [1, 1]  # TensorRT executed each chunk with the context current in the infer thread
    assert drv.count("push", "infer-thread") == drv.count("pop", "infer-thread") == 1  # one push per batch
    run_in_thread(lambda: backend.__exit__(None, None, None), "close-thread")
    assert drv.count("push", "close-thread") == drv.count("pop", "close-thread") == 1
    assert drv.count("push") == drv.count("pop")  # balanced over all threads
    assert drv.stack() == [] and drv.gpu.mem == {} and drv.pinned_live == 0  # everything released
    backend.close()  # idempotent: a second close does nothing and raises nothing
    assert drv.count("push") == drv.count("pop")


def test_backend_close_waits_for_a_batch_in_flight(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend, drv, _ = _pycuda_backend(monkeypatch, tmp_path)
    gate = threading.Event()
    batch = np.full((2, tt.H, tt.W, 3), 128, np.uint8)
    with backend:
        _watch_execute(backend, drv, gate)
        result: dict[str, Any] = {}
        infer = threading.Thread(target=lambda: result.update(backend.infer(batch)), name="infer-thread")
        infer.start()
        closer = threading.Thread(target=backend.close, name="close-thread")  # a direct close(), no base lock
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # close() waits while the batch runs ...
        assert drv.gpu.mem != {}  # ... and has freed nothing under it
        gate.set()
        infer.join(JOIN_S)
        closer.join(JOIN_S)
        assert not infer.is_alive() and not closer.is_alive()
        np.testing.assert_allclose(result["probs"], tt.expected_probs(batch), rtol=1e-6)
        assert drv.gpu.mem == {} and drv.pinned_live == 0
        with pytest.raises(BackendError, match="is closed .*open it again"):
            backend.infer(batch)  # the base class still thinks it is open; the backend knows better
    assert drv.count("push") == drv.count("pop") and drv.stack() == []


def test_backend_failed_load_leaves_nothing_pushed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend, drv, _ = _pycuda_backend(monkeypatch, tmp_path)
    drv.fail["Event"] = PycudaErrors.MemoryError("cuEventCreate failed: out of memory")
    with pytest.raises(BackendError, match=r"pycuda Event\(\) failed \(MemoryError"):
        backend.load()
    assert drv.stack() == [] and drv.count("push") == drv.count("pop")
    assert drv.gpu.mem == {} and drv.pinned_live == 0  # what was allocated before the failure is freed
    backend.close()  # and closing again is harmless
