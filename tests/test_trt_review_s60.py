"""TensorRT review of session 60 (helper-245: the TensorRT, cuda-python and pycuda calls against their docs).

- On TensorRT 8.4 the engine check called an engine a version mismatch and advised ``uopsl build-engine``,
  which then refuses TensorRT before 8.5: a device's ``except EngineMismatchError: rebuild()`` looped into
  a failure. The check now reads the version through the same 8.5 floor.
- On TensorRT 10.8-10.x (no DLA: "TensorRT 10.7 was the last release that supported DLA") ``--dla-core``
  blamed the board ("AGX Orin, Orin NX and Xavier do"), which is wrong on an AGX Orin running 10.8+.

No TensorRT and no GPU: the fake TensorRT module of tests/test_tensorrt.py stands in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_tensorrt import DLA1, FakeCuda, FakeGpu, build_fake_engine, fake_onnx, gpu, install  # noqa: F401

from uopsl.export.tensorrt import EngineBuildConfig, build_engine
from uopsl.runtime import cuda_binding, engine_header, trt_compat
from uopsl.runtime.backends import RefusedHere, engine_mismatch
from uopsl.runtime.errors import ConfigError


def test_an_engine_check_under_tensorrt_8_4_is_not_a_rebuildable_mismatch(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:  # noqa: F811
    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "8.6.1")
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    install(monkeypatch, "8.4.3.1", gpu)
    with pytest.raises(ConfigError, match=r"8\.4\.3\.1 is older than 8\.5"):
        trt_compat.installed_version()
    with pytest.raises(ConfigError, match="older than 8.5"):
        engine_header.check_compatible(engine_header.read_header(path))
    why = engine_mismatch(path)
    assert why is not None and not isinstance(why, RefusedHere), why  # a rebuild would not mend it
    assert "older than 8.5" in why and "build-engine" not in why, why


def test_installed_version_still_reads_a_supported_tensorrt(monkeypatch: pytest.MonkeyPatch,
                                                           gpu: FakeGpu) -> None:  # noqa: F811
    install(monkeypatch, "10.3.0.30", gpu)
    assert trt_compat.installed_version() == "10.3.0.30"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError):
        trt_compat.installed_version()


@pytest.mark.parametrize("version", ["10.8.0", "10.13.0"])
def test_dla_core_under_tensorrt_10_8_names_the_tensorrt_release(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu, version: str) -> None:  # noqa: F811
    install(monkeypatch, version, gpu)
    with pytest.raises(ConfigError) as err:
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                     EngineBuildConfig(precision="fp16", dla_core=0, **DLA1), cuda=FakeCuda(gpu))
    msg = str(err.value)
    assert f"TensorRT {version} may be why" in msg and "10.7 or older" in msg, msg
    assert "Xavier do" not in msg, msg


def test_dla_core_under_tensorrt_10_3_still_blames_the_board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            gpu: FakeGpu) -> None:  # noqa: F811
    install(monkeypatch, "10.3.0", gpu)
    with pytest.raises(ConfigError, match=r"has 0 DLA core.*AGX Orin, Orin NX and Xavier do"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                     EngineBuildConfig(precision="fp16", dla_core=0, **DLA1), cuda=FakeCuda(gpu))
