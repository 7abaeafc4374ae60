"""Native TensorRT backend: a uopsl engine file, pinned host buffers, device buffers, one CUDA stream.

Loading order matters: the engine header is read and checked against the
running TensorRT version and this GPU (:func:`uopsl.runtime.engine_header.check_compatible`)
*before* the plan is deserialised, so a mismatched engine fails with a message
that says how to rebuild it rather than a TensorRT internal error.

Buffers are allocated once for the engine's maximum batch: page-locked host
memory (fast, asynchronous copies) and device memory through cuda-python, or
pycuda where that is the binding the device has (:mod:`uopsl.runtime.cuda_binding`).
Each batch is: host-to-device copy, execute, device-to-host copy, all on one
stream, with CUDA events between them, so :attr:`TensorRTBackend.last_timings`
reports the transfer and compute times separately (``uopsl-screen bench``).

Batches larger than the engine's maximum are split into chunks of the maximum
(``oversize="split"``, the default) or refused (``oversize="reject"``); a batch
smaller than the engine's minimum is padded with blank images whose outputs are
dropped. The input may be uint8 or, when TensorRT turned the graph's uint8 input
into float, is cast exactly on the host.

Threads: one execution context, one stream and one set of pinned buffers serve
every caller, so calls must not overlap ("Do not call the APIs of the same
IExecutionContext from multiple threads at any given time"); the base class runs
one ``infer`` at a time. Loading, inference and :meth:`TensorRTBackend.close`
may each happen in a different thread: every piece of CUDA and TensorRT work
runs inside :meth:`uopsl.runtime.cuda_binding.CudaApi.current`, which makes the
device (pycuda: its primary context) current in the calling thread for that
block only. ``close`` waits for a batch in flight and may be called twice.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from uopsl.runtime.backends.base import Backend, TensorSpec
from uopsl.runtime.engine_header import EngineHeader, check_compatible, read_plan, rebuild_command
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.cuda_binding import CudaApi, PinnedBuffer, load_cuda
from uopsl.runtime.trt_compat import (
    EngineIO,
    IOTensor,
    TrtErrorLog,
    create_with_logger,
    engine_io,
    load_tensorrt,
    make_logger,
)

if TYPE_CHECKING:  # pragma: no cover - typing only; checked against tensorrt-stubs in CI
    import tensorrt

log = logging.getLogger(__name__)

_CASTABLE_INPUTS = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float16))


class TensorRTBackend(Backend):
    """Runs one uopsl TensorRT engine file (see :mod:`uopsl.export.tensorrt`) on CUDA device ``device``."""

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        device: int = 0,
        *,
        oversize: Literal["split", "reject"] = "split",
        cuda: CudaApi | None = None,
    ) -> None:
        super().__init__()
        if oversize not in ("split", "reject"):
            raise ConfigError(f"oversize must be 'split' or 'reject', got {oversize!r}")
        if device < 0:
            raise ConfigError(f"device must be >= 0, got {device}")
        self.path = Path(engine_path)
        self.device = device
        self.oversize = oversize
        self._cuda_arg = cuda
        self.header: EngineHeader | None = None
        #: milliseconds of the last ``infer`` measured with CUDA events: ``h2d`` (host-to-device copy),
        #: ``compute`` (execution), ``d2h`` (device-to-host copy); summed over chunks of a split batch.
        #: ``uopsl-screen bench`` reports each as ``<key>_p50_ms``.
        self.last_timings: dict[str, float] = {}
        #: how many engine runs the last ``infer`` took (> 1 when a batch exceeded the maximum)
        self.last_chunks = 0
        # Held by load, _infer and close: close() waits for a batch in flight instead of freeing
        # its buffers under it (a direct close() does not go through the base class's lock).
        # Reentrant: a failed load() closes while holding it.
        self._state_lock = threading.RLock()
        # The model's input/output specs outlive close(): a call after close() then passes the base
        # class's input check and gets _infer's "closed" BackendError instead of an IndexError.
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._reset()

    def _reset(self) -> None:
        self._cuda: CudaApi | None = None
        self._runtime: Any = None
        self._logger: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._io: EngineIO | None = None
        self._input: IOTensor | None = None
        self._outputs_io: list[IOTensor] = []
        self._device_ptrs: dict[str, int] = {}
        self._host: dict[str, PinnedBuffer] = {}
        self._stream: Any = None
        self._events: list[Any] = []
        self._min_batch = 1
        self._max_batch = 1

    # -- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        """Read, check and deserialise the engine, then allocate its buffers (a loaded backend is reloaded)."""
        with self._state_lock:
            if self._cuda is not None:
                self.close()
            self._load()

    def _load(self) -> None:
        header, plan = read_plan(self.path, expected_sha256=self.expected_sha256)
        trt, api = load_tensorrt("running a TensorRT engine")
        cuda = self._cuda_arg or load_cuda("running a TensorRT engine")
        gpu_name, cc = cuda.device_properties(self.device)
        check_compatible(header, api.version_text, gpu_name, cc, engine_path=self.path, device=self.device)
        self.header = header
        self._cuda = cuda
        try:
            # The device is current only for this block: nothing stays pushed in the loading thread.
            with cuda.current(self.device):
                self._deserialize(trt, api, header, plan)
                self._allocate()
        except BaseException:
            self.close()
            raise
        log.info("loaded %s: TensorRT %s on %s, %s, batch %d-%d", self.path.name, api.version_text, gpu_name,
                 header.precision, self._min_batch, self._max_batch)

    def _deserialize(self, trt: Any, api: Any, header: EngineHeader, plan: bytes) -> None:
        # TensorRT's one logger per process (make_logger returns it); errors are read per operation.
        logger = make_logger(trt)
        errors: TrtErrorLog = logger.error_log
        runtime: tensorrt.Runtime = create_with_logger(trt, api, "Runtime", logger)
        if header.version_compatible:
            # Version-compatible plans embed a lean runtime, which is host code TensorRT must be allowed to run.
            runtime.engine_host_code_allowed = True
        if header.dla_core is not None:
            cores = int(runtime.num_DLA_cores)
            if header.dla_core >= cores:
                raise BackendError(
                    f"{self.path} runs on DLA core {header.dla_core}, but this device has {cores} DLA core(s); "
                    "rebuild it for the GPU: run this command without its --dla-core option: "
                    f"{rebuild_command(header, self.path, api.version_text, self.device)}"
                )
            runtime.DLA_core = header.dla_core
        with errors.capture() as failure:
            engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            detail = " | ".join(failure.errors[-3:]) or "no error reported to uopsl's TensorRT logger"
            raise BackendError(
                f"TensorRT {api.version_text} could not deserialise {self.path} ({detail}); "
                f"rebuild it on this device: {rebuild_command(header, self.path, api.version_text, self.device)}"
            )
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self._runtime, self._engine, self._context, self._logger = runtime, engine, context, logger
        self._io = engine_io(trt, api, engine)

    def _allocate(self) -> None:
        assert self._io is not None and self._cuda is not None  # set by load() before this call
        io, cuda = self._io, self._cuda
        tensors = io.tensors()
        inputs = [t for t in tensors if t.is_input]
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: a uopsl engine has one input, this one has {[t.name for t in inputs]}")
        inp = inputs[0]
        if inp.profile is None:
            raise BackendError(f"{self.path}: the engine reports no optimisation profile for '{inp.name}'")
        if inp.dtype not in _CASTABLE_INPUTS:
            raise BackendError(f"{self.path}: input '{inp.name}' is {inp.dtype}; expected uint8 (or float)")
        self._input = inp
        self._outputs_io = [t for t in tensors if not t.is_input]
        self._min_batch, self._max_batch = int(inp.profile[0][0]), int(inp.profile[2][0])
        sample = tuple(int(d) for d in inp.profile[2][1:])
        io.set_input_shape(self._context, inp, (self._max_batch, *sample))
        sizes = {inp.name: self._max_batch * int(np.prod(sample)) * inp.dtype.itemsize}
        out_specs = []
        for t in self._outputs_io:
            shape = io.shape(self._context, t)
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.path}: output '{t.name}' has unresolved shape {shape} at the maximum batch")
            sizes[t.name] = int(np.prod(shape)) * t.dtype.itemsize
            out_specs.append(TensorSpec(t.name, (None, *shape[1:]), t.dtype))
        for name, nbytes in sizes.items():
            self._device_ptrs[name] = cuda.malloc(nbytes)
            self._host[name] = cuda.host_alloc(nbytes)
        self._stream = cuda.stream_create()
        self._events = [cuda.event_create() for _ in range(4)]
        # The contract input is uint8; a float engine input is fed the same images cast exactly.
        self._inputs = (TensorSpec(inp.name, (None, *sample), np.dtype(np.uint8)),)
        self._outputs = tuple(out_specs)

    def close(self) -> None:
        """Release buffers, stream, events and TensorRT objects: from any thread, any number of times.

        Waits for a batch in flight (``_state_lock``). The release runs inside
        ``cuda.current(device)``, so it needs nothing left current by ``load``
        and, under pycuda, pops only what it pushed itself. A failure is logged,
        never raised: close also runs while another error is being reported.
        """
        with self._state_lock:
            cuda = self._cuda
            if cuda is not None:
                try:
                    with cuda.current(self.device):
                        self._release(cuda)
                except Exception as exc:  # noqa: BLE001 - making the device current failed: release anyway
                    log.warning("TensorRT backend: could not make CUDA device %d current to release %s (%s); "
                                "releasing without it", self.device, self.path.name, exc)
                    self._release(cuda)  # a no-op for what the first attempt already released
            self._reset()

    def _release(self, cuda: CudaApi) -> None:
        """Free everything once: each list is emptied before its items are freed, so a second call does nothing."""
        events, self._events = self._events, []
        for ev in events:
            _quietly(cuda.event_destroy, ev)
        stream, self._stream = self._stream, None
        if stream is not None:
            _quietly(cuda.stream_destroy, stream)
        ptrs, self._device_ptrs = self._device_ptrs, {}
        for ptr in ptrs.values():
            _quietly(cuda.free, ptr)
        host, self._host = self._host, {}
        for buf in host.values():
            _quietly(cuda.host_free, buf)
        # TensorRT objects go before the CUDA context they live in: execution context, engine, runtime.
        self._context = None
        self._io = None
        self._engine = None
        self._runtime = None
        self._logger = None
        # The local references (events, stream, host) die when this returns, still inside cuda.current():
        # pycuda frees streams and events when their objects go, which needs their context current here.

    # -- metadata ------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return self.header.precision if self.header is not None else "unknown"

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch of the engine's optimisation profile."""
        return self._min_batch, self._max_batch

    def describe(self) -> str:
        h = self.header
        where = f", TensorRT {h.tensorrt_version}, {h.gpu_name}" if h else ""
        dla = f", DLA {h.dla_core}" if h and h.dla_core is not None else ""
        return f"{self.name} ({self.precision}, {self.path.name}{where}{dla})"

    # -- inference ------------------------------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._state_lock:  # close() from another thread waits for this batch
            cuda = self._cuda
            if cuda is None or self._context is None:
                raise BackendError(
                    f"{self.name}: {self.path.name} is closed (or failed to load), so it cannot run a batch; "
                    "open it again ('with TensorRTBackend(...) as backend:') before calling infer"
                )
            n = int(batch.shape[0])
            if n == 0:
                raise BackendError(f"{self.name}: empty batch")
            if n > self._max_batch and self.oversize == "reject":
                raise BackendError(
                    f"{self.name}: batch of {n} exceeds the engine's maximum batch {self._max_batch}; "
                    f"send at most {self._max_batch} images per call or rebuild with a larger --max-batch"
                )
            totals = {"h2d": 0.0, "compute": 0.0, "d2h": 0.0}
            parts: list[dict[str, np.ndarray]] = []
            # The device is current in the calling thread (whichever it is) for this batch only.
            with cuda.current(self.device):
                for start in range(0, n, self._max_batch):
                    out, times = self._run_chunk(batch[start:start + self._max_batch])
                    parts.append(out)
                    for k in totals:
                        totals[k] += times[k]
        if len(parts) == 1:
            result = parts[0]
        else:
            result = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
        self.last_timings = totals
        self.last_chunks = len(parts)
        return result

    def _execute(self, io: EngineIO, stream_handle: int) -> None:
        """Enqueue the engine; a refusal says what TensorRT logged for it (its errors in this thread since the
        call began), not "see the log above": a device's log is often not where the error line is read."""
        errors: TrtErrorLog | None = getattr(self._logger, "error_log", None)
        mark = errors.mark() if errors is not None else 0
        try:
            io.execute(self._context, self._device_ptrs, stream_handle)
        except BackendError as exc:
            said = errors.since(mark) if errors is not None else []
            raise BackendError(f"{exc} on {self.path.name}: "
                               + (f"TensorRT said: {' | '.join(said[-3:])}" if said else
                                  "TensorRT logged no error (run with -v to see its whole log)")) from exc

    def _run_chunk(self, chunk: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        assert self._io is not None and self._cuda is not None and self._input is not None  # loaded
        io, cuda, inp = self._io, self._cuda, self._input
        k = int(chunk.shape[0])
        run = max(k, self._min_batch)  # pad up to the profile's minimum; padded rows are dropped
        sample = chunk.shape[1:]
        io.set_input_shape(self._context, inp, (run, *sample))
        host_in = self._host[inp.name].view(inp.dtype, (run, *sample))
        np.copyto(host_in[:k], chunk, casting="unsafe")
        if run > k:
            host_in[k:] = 0
        ev = self._events
        stream = self._stream
        cuda.event_record(ev[0], stream)
        cuda.htod_async(self._device_ptrs[inp.name], host_in, stream)
        cuda.event_record(ev[1], stream)
        self._execute(io, cuda.stream_handle(stream))
        cuda.event_record(ev[2], stream)
        views = {}
        for t in self._outputs_io:
            shape = io.shape(self._context, t)
            view = self._host[t.name].view(t.dtype, shape)
            cuda.dtoh_async(view, self._device_ptrs[t.name], stream)
            views[t.name] = view
        cuda.event_record(ev[3], stream)
        cuda.stream_synchronize(stream)
        times = {
            "h2d": cuda.event_elapsed_ms(ev[0], ev[1]),
            "compute": cuda.event_elapsed_ms(ev[1], ev[2]),
            "d2h": cuda.event_elapsed_ms(ev[2], ev[3]),
        }
        # Copies: the pinned buffers are reused by the next batch.
        return {name: v[:k].copy() for name, v in views.items()}, times


def _quietly(fn: Any, *args: Any) -> None:
    """Release a resource during close(); a failure is logged, never raised over the real error."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        log.debug("TensorRT backend cleanup: %s", exc)


__all__ = ["TensorRTBackend"]
