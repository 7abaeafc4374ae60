"""What the machine offers: ONNX Runtime's TensorRT provider counts only where TensorRT's library is found.

ONNX Runtime's GPU wheel lists ``TensorrtExecutionProvider`` whether or not TensorRT is installed (the
session-23 GPU machine had none, and ``uopsl-screen info`` still called ``ort-trt`` usable).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import uopsl.runtime.backends as backends
from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.backends import Availability, backend_table, detect_availability, nvinfer_found, open_backend
from uopsl.runtime.errors import MissingDependencyError

LISTED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_ort_trt_needs_the_provider_and_the_library(tiny_bundle: Path) -> None:
    without = Availability(ort_providers=LISTED, nvinfer=False)
    assert without.ort_trt_listed and not without.ort_trt and without.ort_cuda
    assert Availability(ort_providers=LISTED).ort_trt  # not probed: as listed
    assert not Availability(ort_providers=("CPUExecutionProvider",)).ort_trt
    row = next(r for r in backend_table(tiny_bundle, availability=without) if r[0] == "ort-trt")
    assert row[1] is False and "libnvinfer" in row[2]
    with pytest.raises(MissingDependencyError, match="TensorRT's library \\(libnvinfer\\)"):
        open_backend(tiny_bundle, "ort-trt", "fp32", availability=without, measure=False)
    with pytest.raises(MissingDependencyError, match="needs onnxruntime-gpu with its TensorRT provider"):
        open_backend(tiny_bundle, "ort-trt", "fp32", availability=Availability(ort_providers=("CPUExecutionProvider",)),
                     measure=False)


def test_nvinfer_is_looked_for_in_the_package_the_loader_and_ld_library_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    monkeypatch.setattr(backends, "available", lambda name: False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    assert not nvinfer_found()
    (tmp_path / "libnvinfer.so.10").write_bytes(b"")
    assert nvinfer_found()
    (tmp_path / "libnvinfer.so.10").unlink()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libnvinfer.so.8" if name == "nvinfer" else None)
    assert nvinfer_found()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(backends, "available", lambda name: name == "tensorrt")
    assert nvinfer_found()


def test_detect_probes_the_library_only_when_the_provider_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    import uopsl.runtime.backends.onnxruntime as ort_backend

    calls = []
    monkeypatch.setattr(backends, "nvinfer_found", lambda **_: calls.append(1) or False)
    monkeypatch.setattr(ort_backend, "available_providers", lambda: ("CPUExecutionProvider",))
    assert detect_availability().nvinfer is False and not calls
    monkeypatch.setattr(ort_backend, "available_providers", lambda: LISTED)
    av = detect_availability()
    assert calls and av.ort_trt_listed and not av.ort_trt and av.ort_cuda


def test_tensorrt_needs_a_cuda_binding_load_cuda_can_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare `cuda` namespace (cuda-pathfinder, cuda-core) counted as a binding, so `auto` picked an engine that
    load_cuda could not run (TensorRT review, session 31); cuda-python 13 has no cuda.cudart either."""
    import uopsl.runtime.backends.onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "available_providers", lambda: ("CPUExecutionProvider",))
    present = {"tensorrt", "cuda", "cuda.bindings"}
    monkeypatch.setattr(backends, "available", lambda name: name in present)
    assert detect_availability().tensorrt is False
    for binding in ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver"):
        present.add(binding)
        assert detect_availability().tensorrt is True, binding
        present.discard(binding)
