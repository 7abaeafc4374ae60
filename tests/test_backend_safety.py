"""Backends under conditions a device meets in the field: threads, stale engines, a GPU runtime that falls back."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from tinymodel import random_fundus_batch
from uopsl.runtime import engine_header as eh
from uopsl.runtime.backends import Availability, engine_stale, select_backend
from uopsl.runtime.backends.base import Backend, TensorSpec
from uopsl.runtime.backends.onnxruntime import OrtBackend, provider_options
from uopsl.runtime.bundle import FileEntry, read_manifest
from uopsl.runtime.errors import BackendError, BundleError


class _Overlap(Backend):
    """Records whether two calls were ever inside ``_infer`` at once (what shared buffers cannot survive)."""

    name = "overlap"

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.max_inside = 0
        self.calls = 0

    def load(self) -> None:
        self._inputs = (TensorSpec("image", (None, 4, 4, 3), np.dtype(np.uint8)),)

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.inside += 1
        self.max_inside = max(self.max_inside, self.inside)
        time.sleep(0.01)  # long enough for another thread to get in if nothing stops it
        self.inside -= 1
        self.calls += 1
        return {"probs": batch.reshape(len(batch), -1)[:, :1].astype(np.float32)}


def test_concurrent_infer_calls_run_one_at_a_time() -> None:
    b = _Overlap()
    x = np.zeros((1, 4, 4, 3), np.uint8)
    with b:
        threads = [threading.Thread(target=lambda: [b.infer(x) for _ in range(5)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert b.calls == 20 and b.max_inside == 1


def test_a_call_waiting_while_the_backend_closes_gets_a_clear_error() -> None:
    b = _Overlap()
    x = np.zeros((1, 4, 4, 3), np.uint8)
    b.__enter__()
    errors: list[BaseException] = []
    with b._lock:  # a call in flight: the next caller waits on the lock
        waiter = threading.Thread(target=lambda: _catch(errors, b.infer, x))
        waiter.start()
        time.sleep(0.05)
        b._active = False  # what __exit__ does once it holds the lock
    waiter.join()
    assert len(errors) == 1 and isinstance(errors[0], BackendError) and "closed" in str(errors[0])


def _catch(errors: list[BaseException], fn, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def test_ort_results_are_right_from_several_threads(tiny_bundle: Path) -> None:
    size = read_manifest(tiny_bundle).preprocess.size
    batches = [np.stack(random_fundus_batch(2, size, seed=s)) for s in range(4)]
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        expected = [b.infer(x)["probs"] for x in batches]
        got: dict[int, np.ndarray] = {}

        def work(i: int) -> None:
            for _ in range(3):
                got[i] = b.infer(batches[i])["probs"]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i], expected[i])


# -- stale engines ----------------------------------------------------------------------------


def _bundle_with_engine(src: Path, dst: Path, source_sha: str | None) -> tuple[Path, object]:
    """A copy of the tiny bundle with an fp16 engine whose header names model.onnx with ``source_sha``."""
    shutil.copytree(src, dst)
    m = read_manifest(dst)
    onnx = next(f for f in m.files if f.path == "model.onnx")
    header = eh.EngineHeader(
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA Jetson AGX Orin", compute_capability="8.7",
        precision="fp16", source_onnx="model.onnx",
        source_onnx_sha256=onnx.sha256 if source_sha is None else source_sha,
        min_batch=1, opt_batch=8, max_batch=16, input_name="image", input_shape=(64, 64, 3))
    eh.write_engine(dst / "model.fp16.engine", b"plan bytes", header)
    m = replace(m, files=m.files + (FileEntry("model.fp16.engine", "engine", "fp16", sha256="e16"),))
    return dst, m


def test_an_engine_of_a_replaced_model_is_stale_and_says_how_to_rebuild(tiny_bundle: Path, tmp_path: Path) -> None:
    root, m = _bundle_with_engine(tiny_bundle, tmp_path / "b", "0" * 64)
    engine = next(f for f in m.files if f.path == "model.fp16.engine")  # type: ignore[attr-defined]
    why = engine_stale(root, m, engine)  # type: ignore[arg-type]
    assert why is not None and why.startswith("stale: built from model.onnx")
    assert "000000000000" in why and "uopsl build-engine" in why
    av = Availability(ort_providers=("CPUExecutionProvider",), tensorrt=True)
    with pytest.raises(BundleError, match="stale"):
        select_backend(root, "tensorrt", manifest=m, availability=av, engine_check=lambda p: None)  # type: ignore[arg-type]


def test_auto_warns_when_it_passes_over_an_engine(tiny_bundle: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    root, m = _bundle_with_engine(tiny_bundle, tmp_path / "b", "0" * 64)
    av = Availability(ort_providers=("CPUExecutionProvider",), tensorrt=True)
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.backends"):
        sel = select_backend(root, manifest=m, availability=av, engine_check=lambda p: None,  # type: ignore[arg-type]
                             measure=False)
    assert sel.backend == "ort-cpu" and "stale" in sel.reason
    assert any("model.fp16.engine not used: stale" in r.getMessage() for r in caplog.records)


def test_an_engine_of_the_current_model_is_taken(tiny_bundle: Path, tmp_path: Path) -> None:
    root, m = _bundle_with_engine(tiny_bundle, tmp_path / "b", None)
    engine = next(f for f in m.files if f.path == "model.fp16.engine")  # type: ignore[attr-defined]
    assert engine_stale(root, m, engine) is None  # type: ignore[arg-type]
    av = Availability(ort_providers=("CPUExecutionProvider",), tensorrt=True)
    # fp16 by name: auto would also want a parity PASS (tests/test_backends.py); this is about staleness
    sel = select_backend(root, "tensorrt", "fp16", manifest=m, availability=av, engine_check=lambda p: None)  # type: ignore[arg-type]
    assert (sel.backend, sel.file) == ("tensorrt", "model.fp16.engine")


def test_an_engine_whose_source_left_the_bundle_is_stale(tiny_bundle: Path, tmp_path: Path) -> None:
    root, m = _bundle_with_engine(tiny_bundle, tmp_path / "b", None)
    m = replace(m, files=tuple(f for f in m.files if f.path != "model.onnx"))  # type: ignore[attr-defined]
    engine = next(f for f in m.files if f.path == "model.fp16.engine")
    assert "no longer lists" in (engine_stale(root, m, engine) or "")


# -- ONNX Runtime GPU providers ---------------------------------------------------------------


def test_ort_cuda_that_falls_back_to_the_cpu_is_an_error_not_a_mislabelled_cpu_run(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime lists CUDA whenever the GPU wheel is installed, then runs on the CPU if CUDA cannot load."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    b = OrtBackend(tiny_bundle / "model.onnx", "cuda", threads=1)
    with pytest.raises(BackendError, match="could not start CUDAExecutionProvider .* fell back to CPUExecutionProvider"):
        b.__enter__()


def test_ort_auto_runs_on_what_starts_and_says_so(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """providers="auto" is "whichever this build has, best first": a GPU wheel listing CUDA that cannot start
    runs on the CPU with a warning (before: BackendError, as for an explicit "cuda")."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING), OrtBackend(tiny_bundle / "model.onnx", "auto", threads=1) as b:
        assert b.name == "ort-cpu" and b.providers[0] == "CPUExecutionProvider"
    assert "could not start CUDAExecutionProvider here and runs on CPUExecutionProvider instead" in caplog.text


def test_tensorrt_ep_caches_its_engines_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = provider_options(providers, model_sha256="ab" * 32, ort_version="1.20.1")
    name, trt = opts[0]  # type: ignore[misc]
    assert name == "TensorrtExecutionProvider"
    assert opts[1:] == [("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_timing_cache_enable"] == "True"
    folder = Path(trt["trt_engine_cache_path"])
    versions = folder.parent
    assert versions.parent == tmp_path / "cache" / "ort-trt" and folder.is_dir()
    assert versions.name.startswith("ort-") and "-trt-" in versions.name  # one folder per ORT and TensorRT version
    # ONNX Runtime keys a cached engine by file name and tensor names, not weights: one folder per model file,
    # or a re-exported model.onnx of the same architecture would run the previous model's engine.
    assert folder.name == "ab" * 8
    other = provider_options(providers, model_sha256="cd" * 32, ort_version="1.20.1")[0][1]  # type: ignore[index]
    assert Path(other["trt_engine_cache_path"]) != folder
    assert trt["trt_timing_cache_path"] == str(versions) == other["trt_timing_cache_path"]  # timings are shared
    assert "trt_int8_enable" not in trt
    assert provider_options(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("ort_version, timing, timing_path", [
    ("1.14.1", False, False), ("1.15.0", True, False), ("1.16.3", True, False), ("1.17.0", True, True), ("", False, False)])
def test_tensorrt_ep_options_an_older_onnxruntime_does_not_know_are_left_out(
        ort_version: str, timing: bool, timing_path: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime refuses an unknown TensorRT EP option and falls back to CUDA (JetPack 5 wheels are 1.14-1.16)."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    trt = provider_options(["TensorrtExecutionProvider"], model_sha256="ab" * 32, ort_version=ort_version)[0][1]  # type: ignore[index]
    assert ("trt_timing_cache_enable" in trt, "trt_timing_cache_path" in trt) == (timing, timing_path)
    assert trt["trt_engine_cache_enable"] == "True"  # since ONNX Runtime 1.9


def test_tensorrt_ep_builds_a_qdq_file_with_its_int8_flag(tiny_bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 8.x refuses Q/DQ layers unless INT8 is enabled in the builder (ONNX Runtime issue 13381)."""
    import onnxruntime as ort

    from uopsl.runtime.fsio import sha256_file

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    seen: list[list] = []

    class FakeSession:
        def __init__(self, path: str, sess_options: object = None, providers: list | None = None) -> None:
            seen.append(list(providers or []))
            raise RuntimeError("no GPU here")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    for name, precision in (("model.int8.onnx", "int8-qdq-u8"), ("model.onnx", "fp32")):
        with pytest.raises(BackendError, match="no GPU here"):
            OrtBackend(tiny_bundle / name, "tensorrt", threads=1, precision=precision).__enter__()
    (int8, _), (fp32, _) = seen
    assert int8[1]["trt_int8_enable"] == "True" and "trt_int8_enable" not in fp32[1]
    assert Path(int8[1]["trt_engine_cache_path"]).name == sha256_file(tiny_bundle / "model.int8.onnx")[:16]


def test_the_gpu_index_reaches_every_gpu_runtime_and_the_engine_check(tiny_bundle: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-GPU desktop picks its GPU without CUDA_VISIBLE_DEVICES (device review, finding 18)."""
    from uopsl.runtime import backends as reg
    from uopsl.runtime.api import Screener
    from uopsl.runtime.errors import ConfigError

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    opts = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], 1)
    assert opts[0][1]["device_id"] == "1" and opts[1] == ("CUDAExecutionProvider", {"device_id": "1"})  # type: ignore[index]
    # no ONNX Runtime version given: no version-gated option (use_tf32 needs 1.18)
    assert provider_options(["CUDAExecutionProvider"], 1, ort_version="1.17.3") == [("CUDAExecutionProvider", {"device_id": "1"})]
    assert provider_options(["CUDAExecutionProvider"], 1, ort_version="1.18.0") == [
        ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})]
    root, m = _bundle_with_engine(tiny_bundle, tmp_path / "b", None)
    seen: list[int] = []
    monkeypatch.setattr(reg, "engine_mismatch", lambda path, device=0: seen.append(device) or None)
    av = Availability(ort_providers=("CPUExecutionProvider",), tensorrt=True)
    sel = select_backend(root, "tensorrt", "fp16", manifest=m, availability=av, device=1)  # type: ignore[arg-type]
    assert sel.file == "model.fp16.engine" and seen == [1]
    with pytest.raises(ConfigError, match="GPU index >= 0"):
        select_backend(root, manifest=m, availability=av, device=-1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="GPU index >= 0"):
        Screener(tiny_bundle, "ort-cpu", device=-1)
    with pytest.raises(ConfigError, match="GPU index >= 0"):
        OrtBackend(tiny_bundle / "model.onnx", "cpu", device=True)


class _OrtNode:
    """What an ONNX Runtime session's get_inputs()/get_outputs() list (for fake sessions)."""

    def __init__(self, name: str, shape: list, type_: str) -> None:
        self.name, self.shape, self.type = name, shape, type_


def test_tensorrt_ep_gets_one_batch_range_and_runs_larger_batches_in_chunks(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a profile the TensorRT EP rebuilds its engine for each new batch range (minutes on a Jetson)."""
    import onnxruntime as ort

    from uopsl.runtime.backends import open_backend
    from uopsl.runtime.backends.onnxruntime import TrtProfile
    from uopsl.runtime.errors import ConfigError

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    profile = TrtProfile("image", (64, 64, 3), 1, 4, 16)
    trt = provider_options(["TensorrtExecutionProvider"], model_sha256="ab" * 32, ort_version="1.20.1",
                           profile=profile)[0][1]  # type: ignore[index]
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "image:1x64x64x3", "image:4x64x64x3", "image:16x64x64x3")
    plain = provider_options(["TensorrtExecutionProvider"], model_sha256="ab" * 32, ort_version="1.20.1")[0][1]  # type: ignore[index]
    assert trt["trt_engine_cache_path"] != plain["trt_engine_cache_path"]  # an engine per batch range
    old = provider_options(["TensorrtExecutionProvider"], model_sha256="ab" * 32, ort_version="1.14.1",
                           profile=profile)[0][1]  # type: ignore[index]
    assert not any(k.startswith("trt_profile") for k in old)  # ONNX Runtime 1.14 would refuse them
    for bad in ({"min_batch": 0}, {"opt_batch": 32}, {"input_name": "a:b"}, {"sample_shape": (0, 64, 3)}):
        with pytest.raises(ConfigError):
            replace(profile, **bad)  # type: ignore[arg-type]

    # open_backend sizes the range from the manifest and the caller's batch.
    av = Availability(ort_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    size = read_manifest(tiny_bundle).preprocess.size
    b = open_backend(tiny_bundle, "ort-trt", "fp32", availability=av, measure=False, batch=24)
    assert b.trt_profile == TrtProfile("image", (size, size, 3), 1, 24, 24)  # type: ignore[attr-defined]
    # run (8), watch (1) and bench (1,8) share one range, so a device builds one engine, not one per command.
    ranges = {open_backend(tiny_bundle, "ort-trt", "fp32", availability=av, measure=False,  # type: ignore[attr-defined]
                           batch=n).trt_profile for n in (1, 8, 16)}
    assert ranges == {TrtProfile("image", (size, size, 3), 1, 8, 16)}
    assert open_backend(tiny_bundle, "ort-cpu", "fp32", availability=av, measure=False).trt_profile is None  # type: ignore[attr-defined]

    # The session runs at most max_batch images at a time; the outputs come back whole and in order.
    runs: list[int] = []

    class FakeSession:
        def __init__(self, path: str, sess_options: object = None, providers: list | None = None) -> None:
            assert providers and providers[0][1]["trt_profile_max_shapes"] == f"image:16x{size}x{size}x3"

        def get_providers(self) -> list[str]:
            return ["TensorrtExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self) -> list[_OrtNode]:
            return [_OrtNode("image", ["N", size, size, 3], "tensor(uint8)")]

        def get_outputs(self) -> list[_OrtNode]:
            return [_OrtNode("probs", ["N", 2], "tensor(float)")]

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            x = feeds["image"]
            runs.append(len(x))
            return [x[:, 0, 0, :2].astype(np.float32)]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    batch = np.zeros((21, size, size, 3), np.uint8)
    batch[:, 0, 0, 0] = np.arange(21)
    with OrtBackend(tiny_bundle / "model.onnx", "tensorrt", threads=1,
                    trt_profile=TrtProfile("image", (size, size, 3), 1, 8, 16)) as backend:
        probs = backend.infer(batch)["probs"]
        assert runs == [16, 5] and probs[:, 0].tolist() == list(range(21))
        backend.infer(batch[:3])
        assert runs[-1] == 3


def test_tensorrt_ep_that_refuses_the_profile_is_opened_without_it(tiny_bundle: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A graph ONNX Runtime splits between TensorRT and CUDA needs profiles for every subgraph input: fall back."""
    import onnxruntime as ort

    from uopsl.runtime.backends.onnxruntime import TrtProfile

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    attempts: list[bool] = []

    class EPFail(Exception):  # what ONNX Runtime raises for EP_FAIL: not a RuntimeError, which its own
        pass                    # InferenceSession would catch to fall back to CUDA

    class FakeSession:
        def __init__(self, path: str, sess_options: object = None, providers: list | None = None) -> None:
            with_profile = "trt_profile_min_shapes" in providers[0][1]  # type: ignore[index]
            attempts.append(with_profile)
            if with_profile:
                raise EPFail("User needs to provide all the dynamic shape inputs with associated profiles")

        def get_providers(self) -> list[str]:
            return ["TensorrtExecutionProvider"]

        def get_inputs(self) -> list[_OrtNode]:
            return [_OrtNode("image", ["N", 8, 8, 3], "tensor(uint8)")]

        def get_outputs(self) -> list[_OrtNode]:
            return [_OrtNode("probs", ["N", 2], "tensor(float)")]

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.zeros((len(feeds["image"]), 2), np.float32)]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    with caplog.at_level(logging.WARNING), OrtBackend(tiny_bundle / "model.onnx", "tensorrt", threads=1,
                                                      trt_profile=TrtProfile("image", (8, 8, 3))) as b:
        assert attempts == [True, False] and "refused the batch profile" in caplog.text
        assert b.infer(np.zeros((20, 8, 8, 3), np.uint8))["probs"].shape == (20, 2)  # one run: no range to keep to
