"""The one interface every inference backend implements.

A backend is a context manager that owns a loaded model (session, compiled
model or engine + buffers). ``infer`` takes a uint8 NHWC RGB batch and returns
the named outputs (``probs``, ``logits``, ``site_maps``) as numpy arrays.
Backends check shape and dtype and raise :class:`BackendError` with what was
received and what was expected, rather than letting the library crash.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from uopsl.runtime.errors import BackendClosedError, BackendError, ConfigError
from uopsl.runtime.fsio import sha256_file, user_cache_dir
from uopsl.runtime.optional import dist_version
from uopsl.runtime.parallelism import check_parallelism

if TYPE_CHECKING:
    from uopsl.runtime.backends import Selection


#: Registry names of the backends whose inference runs on a GPU.
GPU_BACKENDS = frozenset({"ort-cuda", "ort-trt", "tensorrt"})


def check_gpu_index(device: object) -> int:
    """``device`` if it is a GPU index (``nvidia-smi``'s numbering, >= 0), else :class:`ConfigError`."""
    if not isinstance(device, int) or isinstance(device, bool) or device < 0:
        raise ConfigError(f"device must be a GPU index >= 0 (as nvidia-smi numbers them), got {device!r}")
    return device


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic axis) and numpy dtype of a model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class Backend(abc.ABC):
    """Base class of the ONNX Runtime, OpenVINO and TensorRT backends."""

    #: short registry name, e.g. "ort-cpu", "openvino", "tensorrt"
    name: str = "backend"
    #: what ``open_backend`` chose and why; None for a backend built directly
    selection: Selection | None = None
    #: the sha256 the bundle's manifest lists for the model file (set by ``open_backend``): the file is
    #: checked against it just before and after loading (TensorRT: the engine bytes read once are), so
    #: what runs is what was verified, even when the file is replaced after verification. None: not checked.
    expected_sha256: str | None = None

    def __init__(self) -> None:
        self._active = False
        # One call at a time: a TensorRT execution context, an OpenVINO infer
        # request and the pinned buffers behind them must not be shared by two
        # threads at once (TensorRT: "do not call the APIs of the same
        # IExecutionContext from multiple threads"); interleaved calls could hand
        # one image's outputs to another. Open one backend per thread for parallelism.
        self._lock = threading.Lock()
        # Filled by ``load`` from the model file; the metadata properties read them.
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()

    # -- lifecycle ---------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Load the model; called by ``__enter__``."""

    def close(self) -> None:
        """Release the model and its buffers; called by ``__exit__``."""

    def __enter__(self) -> Backend:
        self.load()
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:  # waits for a call in flight on another thread
            self._active = False
            self.close()

    # -- metadata ----------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def precision(self) -> str:
        """fp32, fp16 or int8 (what the loaded model file computes in)."""
        return "fp32"

    def describe(self) -> str:
        """One line for logs and reports: backend, device, precision."""
        return f"{self.name} ({self.precision})"

    def settings(self) -> dict[str, object]:
        """The runtime settings its outputs depend on, for a parity report (a verdict holds for these only:
        ONNX Runtime's graph optimisation level alone moved the demo's INT8 outputs by 0.168, as
        benchmarks/ort_optimisation_levels.py shows)."""
        return {"backend": self.name}

    # -- inference ---------------------------------------------------------
    def check_input(self, batch: np.ndarray) -> None:
        spec = self.inputs[0]
        if not isinstance(batch, np.ndarray):
            raise BackendError(f"{self.name}: expected a numpy array, got {type(batch).__name__}")
        if batch.dtype != spec.dtype:
            raise BackendError(
                f"{self.name}: input '{spec.name}' must be {spec.dtype}, got {batch.dtype}; "
                "pass the uint8 RGB images from uopsl.runtime.preprocess"
            )
        if batch.ndim != len(spec.shape) or any(
            s is not None and s != b for s, b in zip(spec.shape, batch.shape)
        ):
            raise BackendError(
                f"{self.name}: input '{spec.name}' must have shape {spec.shape} (None = any), "
                f"got {batch.shape}"
            )

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on a uint8 (N, H, W, 3) batch; returns outputs by name.

        Thread-safe: concurrent calls on one backend run one after another.
        """
        if not self._active:
            raise BackendClosedError(f"{self.name}: the backend is not open: use it as a context manager "
                                     "('with backend: ...'); a Screener closed while screen_many was still "
                                     "iterating closes its backend too")
        self.check_input(batch)
        x = np.ascontiguousarray(batch)
        with self._lock:
            if not self._active:  # closed by another thread while this call waited
                raise BackendClosedError(f"{self.name}: the backend was closed while this call waited for it")
            return self._infer(x)

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


def _not_listed(path: Path, what: str) -> BackendError:
    return BackendError(f"{path} is not the file the bundle's manifest lists ({what}); copy the bundle again from "
                        "its source")


def _hash_fd(fd: int, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(fd, "rb", closefd=False) as fh:  # moves this handle's offset only: /proc/self/fd/N reads from 0
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    # Any write to the file changes its mtime or ctime, and a rename its ctime (Linux); a restored copy has
    # another inode or another ctime: what a load could have read in between, the check after it sees.
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _pinned_path(fd: int) -> str | None:
    """A path that opens the file behind ``fd`` whatever is renamed over its name (Linux); None elsewhere."""
    pinned = f"/proc/self/fd/{fd}"
    return pinned if sys.platform.startswith("linux") and os.path.exists(pinned) else None


@contextlib.contextmanager
def verified_model_path(path: Path, expected_sha256: str | None) -> Iterator[str]:
    """The path to load ``path`` by, for the ``with`` block: the bytes checked against the manifest's sha256.

    Why: a backend hands the runtime (ONNX Runtime, OpenVINO) a path, and someone who can write the bundle
    folder could rename another model in for the moment of the load and the signed one back after it (a
    review did so 9 times of 9). So the file is opened once and hashed from that handle, and on Linux the
    runtime reads that very file through ``/proc/self/fd/N``, whatever is renamed over the path meanwhile;
    after the load the file must be as it was (size, times, inode), or the load is refused. Elsewhere the
    path is loaded, then checked the same way against the handle and hashed again (a narrower guarantee,
    said in docs/deployment.md). ``expected_sha256`` None: nothing to check, the path itself.
    (Loading from bytes read once would also close the window, but ONNX Runtime keeps those bytes for the
    session's life: +39 MB resident for a ResNet-18, ``benchmarks/load_memory.py``.)
    """
    if expected_sha256 is None:
        yield str(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BackendError(f"cannot read {path} ({exc}); check the bundle with 'uopsl-screen verify'") from exc
    try:
        before = _identity(os.fstat(fd))
        if _hash_fd(fd) != expected_sha256:
            raise _not_listed(path, "its sha256 differs from the manifest's: replaced or damaged since the bundle was made")
        pinned = _pinned_path(fd)
        pinned_ok = pinned is not None
        yield pinned or str(path)
        try:
            now = (os.fstat(fd),) if pinned_ok else (os.fstat(fd), os.stat(path))
        except OSError as exc:
            raise BackendError(f"cannot read {path} ({exc}); check the bundle with 'uopsl-screen verify'") from exc
        if any(_identity(st) != before for st in now) or (not pinned_ok and sha256_file(path) != expected_sha256):
            raise _not_listed(path, "it was replaced or written while it was loaded; load it again, and keep "
                                    "the bundle folder writable only by whoever installs bundles")
    finally:
        os.close(fd)


class ModelFileBackend(Backend):
    """Shared plumbing of the backends that run one model file (ONNX Runtime, OpenVINO)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None, precision: str) -> None:
        super().__init__()
        check_parallelism("threads", threads)
        self.path = Path(path)
        self.threads = threads
        self._precision = precision

    @property
    def precision(self) -> str:
        return self._precision

    def _label(self) -> str:
        return self.name

    def describe(self) -> str:
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        return f"{self._label()} ({self._precision}, {self.path.name}{threads})"

    def _check_file(self) -> None:
        if not self.path.is_file():
            raise BackendError(f"model file {self.path} does not exist; check the bundle with 'uopsl-screen verify'")


def installed_tensorrt() -> str | None:
    """The pip-installed TensorRT's version, without importing it (None when absent or from apt, as on JetPack)."""
    return dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_lean")


def cache_dir() -> Path:
    """Where per-machine measurements are cached (:func:`uopsl.runtime.fsio.user_cache_dir`)."""
    return user_cache_dir()
