"""The legacy (implicit) INT8 calibrator for TensorRT 8.x and 10.x.

TensorRT asks a calibrator for batches of input data (device pointers) or
for a cache of per-tensor scales. Two uses here:

* ``legacy-calibrator``: feed preprocessed calibration images; TensorRT runs
  its entropy (or min-max) calibration and hands back the cache, which is
  saved so the next build can reuse it;
* ``legacy-cache``: feed no data and return a cache written from the
  calibration table (:mod:`uopsl.calibration.trt_cache`), so the engine uses
  the same ranges as the ONNX Runtime and Q/DQ models.

The class must derive from ``tensorrt.IInt8EntropyCalibrator2`` (or
``IInt8MinMaxCalibrator``) of the *running* TensorRT, so it is created inside
:func:`make_calibrator` after TensorRT is imported. TensorRT 11 has no
calibrators (explicit Q/DQ only); the builder never calls this there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_bytes
from uopsl.runtime.cuda_binding import CudaApi, PinnedBuffer

log = logging.getLogger(__name__)

ALGORITHMS = {"entropy2": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def make_calibrator(
    trt: Any,
    cuda: CudaApi,
    *,
    input_shape: tuple[int, ...],
    input_dtype: np.dtype,
    batches: Iterable[np.ndarray] | None = None,
    cache: bytes | None = None,
    cache_out: str | os.PathLike[str] | None = None,
    algorithm: str = "entropy2",
) -> Any:
    """An INT8 calibrator instance of the running TensorRT.

    input_shape: the full calibration input shape ``(B, H, W, C)``; every
    batch must have it (a shorter last batch is dropped, not padded, so no image
    is counted twice). With ``cache`` the calibrator returns it and TensorRT
    skips calibration; ``cache_out`` receives the cache TensorRT computes.
    """
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"calibration algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    base = getattr(trt, ALGORITHMS[algorithm], None)
    if base is None:
        raise ConfigError(
            f"TensorRT {trt.__version__} has no {ALGORITHMS[algorithm]} (implicit INT8 calibration was removed "
            "in TensorRT 11); build INT8 from the Q/DQ model instead (--int8-mode qdq)"
        )
    if cache is None and batches is None:
        raise ConfigError("the INT8 calibrator needs calibration batches or a calibration cache")

    class _Calibrator(base):  # type: ignore[misc,valid-type]
        # TensorRT's Python wrapper catches any exception raised in get_batch (or in the cache
        # callbacks), prints it and reads it as "no more batches": an error on the first batch then
        # surfaces as "no scaling factors", one on a later batch as a quietly shorter calibration.
        # So every callback keeps its exception in ``error`` for the builder to raise after the build.
        def __init__(self) -> None:
            super().__init__()
            self.used = 0
            self.dropped = 0
            self.error: BaseException | None = None
            self.expects_batches = batches is not None and cache is None  # TensorRT reads a cache instead
            self.cache_write_error: Exception | None = None  # cache_out could not be written
            self._it: Iterator[np.ndarray] | None = iter(batches) if batches is not None else None
            self._ptr: int | None = None
            self._pinned: PinnedBuffer | None = None  # page-locked: pycuda's async copy requires it
            self._host: np.ndarray | None = None  # a view of _pinned
            self._stream: Any = None

        def get_batch_size(self) -> int:
            return int(input_shape[0])

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            if self._it is None or self.error is not None:
                return None
            try:
                return self._next_batch()
            except BaseException as exc:  # noqa: BLE001 - TensorRT would swallow it; kept for the builder
                self.error = exc
                return None

        def _next_batch(self) -> list[int] | None:
            assert self._it is not None  # get_batch checked
            for batch in self._it:
                arr = np.asarray(batch)
                if arr.shape != tuple(input_shape):
                    if arr.ndim == len(input_shape) and arr.shape[1:] == tuple(input_shape[1:]):
                        self.dropped += int(arr.shape[0])
                        log.info("calibration: dropping a short batch of %d images", arr.shape[0])
                        continue
                    raise ConfigError(
                        f"calibration batch has shape {arr.shape}, expected {tuple(input_shape)} "
                        "(uint8 NHWC images from uopsl.runtime.preprocess)"
                    )
                if self._ptr is None:
                    nbytes = int(np.prod(input_shape)) * np.dtype(input_dtype).itemsize
                    self._pinned = cuda.host_alloc(nbytes)
                    self._host = self._pinned.view(np.dtype(input_dtype), input_shape)
                    self._ptr = cuda.malloc(nbytes)
                    self._stream = cuda.stream_create()
                assert self._host is not None  # allocated together with _ptr just above
                np.copyto(self._host, arr, casting="unsafe")
                cuda.htod_async(self._ptr, self._host, self._stream)
                cuda.stream_synchronize(self._stream)
                self.used += int(arr.shape[0])
                return [int(self._ptr)]
            return None

        def read_calibration_cache(self) -> bytes | None:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            if cache_out is None or self.error is not None:  # never save a cache of a calibration that failed
                return
            try:
                write_bytes(cache_out, bytes(memoryview(data)))
                log.info("calibration cache written to %s", Path(cache_out))
            except Exception as exc:  # noqa: BLE001 - as in get_batch: TensorRT's wrapper would swallow it
                # Not self.error: the calibration itself succeeded and the engine being built is sound; only
                # the copy for later builds is missing, which the build reports (a Jetson build takes minutes).
                self.cache_write_error = exc
            except BaseException as exc:  # noqa: BLE001 - an interrupt stops the build, as in get_batch
                self.error = exc

        def release(self) -> None:
            # Called while the builder's CUDA context is still current: every CUDA object goes here, none is
            # left to the garbage collector (pycuda frees a stream when its object goes, which needs that context).
            if self._ptr is not None:
                cuda.free(self._ptr)
                cuda.stream_destroy(self._stream)
                self._ptr = None
            self._stream = None
            self._host = None
            if self._pinned is not None:
                cuda.host_free(self._pinned)
                self._pinned = None

    return _Calibrator()


__all__ = ["ALGORITHMS", "make_calibrator"]
