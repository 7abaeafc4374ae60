"""Session-56 TensorRT review: what a real device does that the fake ``tensorrt`` module did not.

1. ``trt.Builder(logger)`` / ``trt.Runtime(logger)`` when TensorRT cannot initialise CUDA. The Python binding
   wraps ``createInferBuilder`` / ``createInferRuntime`` as pybind11 factory constructors
   (``py::init(&nvinfer1::createInferBuilder)``, NVIDIA/TensorRT python/src/infer/pyCore.cpp), so a null
   result raises ``TypeError: pybind11::init(): factory function returned nullptr``, after TensorRT logged
   the cause, in recent releases only as a warning ("[W] CUDA initialization failure with error: 35",
   NVIDIA/TensorRT#2913, triple-mu/YOLOv8-TensorRT#134). uopsl let that TypeError through, and its CLI then
   called it a bug in uopsl. The fakes here raise it the same way.
2. The timing cache is a speed-up: a cache file that cannot be read or written (a read-only or full cache
   folder on a device) must not cost a finished multi-minute build its engine.

No TensorRT and no GPU: the fake ``tensorrt`` module and CUDA binding of ``test_tensorrt.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import test_tensorrt as tt
from uopsl.export.tensorrt import EngineBuildConfig, build_engine
from uopsl.runtime import cuda_binding, trt_compat
from uopsl.runtime.backends.tensorrt import TensorRTBackend
from uopsl.runtime.engine_header import read_header
from uopsl.runtime.errors import BackendError
from uopsl.runtime.optional import extra_hint

NULLPTR = "pybind11::init(): factory function returned nullptr"
CUDA_35 = ("CUDA initialization failure with error: 35. Please check your CUDA installation:  "
           "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html")


def failing_factory(trt: Any, message: str = CUDA_35, severity: str = "WARNING") -> Any:
    """What ``trt.Builder`` / ``trt.Runtime`` do when TensorRT cannot initialise CUDA: log, then raise."""

    def factory(logger: Any) -> Any:
        logger.log(getattr(trt.ILogger.Severity, severity), message)
        raise TypeError(NULLPTR)

    return factory


# -- 1. TensorRT that cannot initialise CUDA ------------------------------------------------------
@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_a_builder_tensorrt_cannot_create_is_a_backend_error_naming_the_cuda_failure(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str) -> None:
    gpu = tt.FakeGpu()
    trt = tt.install(monkeypatch, version, gpu)
    monkeypatch.setattr(trt, "Builder", failing_factory(trt))
    cuda = tt.FakeCuda(gpu)
    with pytest.raises(BackendError) as exc:
        build_engine(tt.fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(), cuda=cuda)
    msg = str(exc.value)
    assert f"TensorRT {version} could not create its Builder" in msg
    assert "CUDA initialization failure with error: 35" in msg  # TensorRT's own warning, not only the TypeError
    assert "cudaErrorInsufficientDriver" in msg and "nvidia-smi" in msg
    assert "CUDA 13" not in msg  # the pip note is for TensorRT 11 only
    assert "\n" not in msg and isinstance(exc.value.__cause__, TypeError)
    assert cuda.active == 0  # the CUDA context was given back
    assert not (tmp_path / "e.engine").exists()


def test_a_runtime_tensorrt_cannot_create_is_a_backend_error_and_the_backend_frees_everything(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = tt.FakeGpu()
    trt, path = tt.build_fake_engine(monkeypatch, tmp_path, gpu, "11.0.0", precision="fp32")
    monkeypatch.setattr(trt, "Runtime", failing_factory(trt, "CUDA initialization failure with error: 100"))
    cuda = tt.FakeCuda(gpu)
    backend = TensorRTBackend(path, cuda=cuda)
    with pytest.raises(BackendError) as exc:
        backend.load()
    msg = str(exc.value)
    assert "TensorRT 11.0.0 could not create its Runtime" in msg and "cudaErrorNoDevice" in msg
    assert extra_hint("trt") in msg and "CUDA 13" in msg  # 11.x from pip's plain package: the CUDA 12 route
    assert "\n" not in msg
    assert cuda.host == [] and cuda.streams == 0 and not gpu.mem  # nothing left allocated


def test_an_error_logged_by_an_older_tensorrt_is_quoted_and_an_unknown_code_gets_no_guess(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 8.0-era wording: an INTERNAL_ERROR with "error 2" (no colon); 2 is not a driver code we explain."""
    trt = tt.fake_trt("8.5.2.2")
    said = ("[runtime.cpp::isCudaInstalledCorrectly::41] Error Code 6: Internal Error (CUDA initialization "
            "failure with error 2. Please check your CUDA installation)")
    monkeypatch.setattr(trt, "Builder", failing_factory(trt, said, "INTERNAL_ERROR"))
    logger = trt_compat.make_logger(trt)
    with pytest.raises(BackendError) as exc:
        trt_compat.create_with_logger(trt, trt_compat.api_for(trt), "Builder", logger)
    assert said in str(exc.value) and "cudaError" not in str(exc.value)
    assert "it could not initialise CUDA on this machine." in str(exc.value)


def test_other_type_errors_and_a_factory_that_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    trt = tt.fake_trt("10.3.0")
    api = trt_compat.api_for(trt)
    logger = trt_compat.make_logger(trt)

    def wrong_call(logger: Any) -> Any:
        raise TypeError("__init__(): incompatible constructor arguments")

    monkeypatch.setattr(trt, "Runtime", wrong_call)
    with pytest.raises(TypeError, match="incompatible constructor"):  # a bug stays a bug, not a CUDA story
        trt_compat.create_with_logger(trt, api, "Runtime", logger)
    monkeypatch.setattr(trt, "Runtime", lambda logger: None)
    with pytest.raises(BackendError, match=r"could not create its Runtime \(no error reported\): most often because"):
        trt_compat.create_with_logger(trt, api, "Runtime", logger)  # no CUDA failure logged: no certainty claimed
    made = object()
    monkeypatch.setattr(trt, "Runtime", lambda logger: made)
    assert trt_compat.create_with_logger(trt, api, "Runtime", logger) is made


def test_the_shared_logger_keeps_warnings_apart_from_errors(caplog: pytest.LogCaptureFixture) -> None:
    trt = tt.fake_trt("10.3.0")
    logger = trt_compat.make_logger(trt)
    mark, wmark = logger.error_log.mark(), logger.warning_log.mark()
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.trt_compat"):
        logger.log(trt.ILogger.Severity.WARNING, "a warning")
        logger.log(trt.ILogger.Severity.ERROR, "an error")
    assert logger.warning_log.since(wmark) == ["a warning"] and logger.error_log.since(mark) == ["an error"]
    assert logger.errors == ["an error"]  # what a failed build reports is unchanged
    assert "TensorRT: a warning" in caplog.text


def test_cli_says_what_to_check_in_one_line_not_an_unexpected_type_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu = tt.FakeGpu()
    trt = tt.install(monkeypatch, "10.3.0", gpu)
    monkeypatch.setattr(trt, "Builder", failing_factory(trt))
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: tt.FakeCuda(gpu))
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = tt._bundle(tmp_path)
    rc, out, err = tt._cli(["build-engine", str(bundle)], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc != 0 and len(lines) == 1, err
    assert "could not create its Builder" in lines[0] and "unexpected TypeError" not in err


# -- 2. a timing cache that cannot be read or written ---------------------------------------------
def test_a_timing_cache_that_cannot_be_written_costs_the_cache_not_the_engine(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gpu = tt.FakeGpu()
    tt.install(monkeypatch, "10.3.0", gpu)
    (tmp_path / "not-a-folder").write_text("a file where the cache folder should be")
    tc = tmp_path / "not-a-folder" / "timing.cache"  # mkdir of its parent fails: an OSError, as on a full disk
    with caplog.at_level(logging.WARNING, logger="uopsl.export.tensorrt"):
        info = build_engine(tt.fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                            EngineBuildConfig(timing_cache=str(tc)), cuda=tt.FakeCuda(gpu))
    assert info.path.is_file() and read_header(info.path).precision == "fp16"
    assert info.timing_cache is None
    assert "could not save the timing cache" in caplog.text and str(tc) in caplog.text


def test_a_timing_cache_that_cannot_be_read_starts_a_new_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    gpu = tt.FakeGpu()
    trt = tt.install(monkeypatch, "10.3.0", gpu)
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"previous timings")
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == tc:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with caplog.at_level(logging.WARNING, logger="uopsl.export.tensorrt"):
        info = build_engine(tt.fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                            EngineBuildConfig(timing_cache=str(tc)), cuda=tt.FakeCuda(gpu))
    assert info.path.is_file()
    assert trt.calls["configs"][0].timing.data == b""  # a fresh cache, not the unreadable one
    assert "cannot read the timing cache" in caplog.text
    monkeypatch.setattr(Path, "read_bytes", real_read)
    assert tc.read_bytes() == b"TIMING:0"  # and it is written back for the next build



def test_a_legacy_cache_engine_records_the_tables_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """TensorRT 8.x builds INT8 from the FP32 file with calibration.json's ranges: the engine's manifest entry
    names the table's calibration set, so that uopsl validate can check it against the images it is judged on
    (session 56's review: such engines were never checked)."""
    from test_tensorrt import FakeCuda, FakeGpu, _bundle, _cli, install
    from uopsl.runtime import cuda_binding
    from uopsl.runtime.bundle import read_manifest

    gpu = FakeGpu()
    install(monkeypatch, "8.5.2", gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _bundle(tmp_path, with_qdq=True, table=True)
    rc, out, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--max-batch", "8"], capsys)
    assert rc == 0, err
    info = read_manifest(bundle).file("model.int8.engine").info
    assert info["int8_mode"] == "legacy-cache" and info["calibration_fingerprint"] == "f" * 64


def test_a_timing_cache_folder_that_cannot_be_read_starts_a_new_cache(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """path.is_file() raised PermissionError on a folder without search permission (pathlib swallows only
    ENOENT and a few others), which stopped the build before it started (session 56's review)."""
    import logging
    import unittest.mock as mock

    from uopsl.export import tensorrt as trt_export

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    loaded: list[bytes] = []
    with mock.patch.object(Path, "read_bytes", denied), mock.patch.object(Path, "is_file", denied), \
            mock.patch.object(trt_export, "load_timing_cache", lambda cfg, data: loaded.append(data)), \
            caplog.at_level(logging.WARNING):
        trt_export._attach_timing_cache(object(), tmp_path / "locked" / "cache.bin")  # type: ignore[arg-type]
    assert loaded == [b""] and "cannot read the timing cache" in caplog.text


def test_no_timing_cache_from_tensorrt_costs_no_engine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from uopsl.export import tensorrt as trt_export

    class Config:
        def get_timing_cache(self) -> None:
            return None

    with caplog.at_level(logging.WARNING):
        assert trt_export._save_timing_cache(Config(), tmp_path / "cache.bin") is False  # type: ignore[arg-type]
    assert "could not save the timing cache" in caplog.text and not (tmp_path / "cache.bin").exists()
