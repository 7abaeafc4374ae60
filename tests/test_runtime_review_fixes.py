"""The runtime as device makers embed it, from the session-14 review of the Screener API, backends and bench."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, make_tiny_bundle, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import backends as B
from uopsl.runtime.api import Screener
from uopsl.runtime.errors import ConfigError, MissingDependencyError


def test_one_path_string_is_one_input(tiny_bundle: Path, tmp_path: Path) -> None:
    """A path string was iterated by character: '/data/photos' walked the whole file system from '/'."""
    photos = tmp_path / "photos"
    for i in range(2):
        fundus_jpeg(photos / f"{i}.jpg", seed=i)
    fundus_jpeg(tmp_path / "elsewhere" / "x.jpg")
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        got = [Path(r.source).name for r in s.screen_many(str(photos.resolve()))]
        assert sorted(got) == ["0.jpg", "1.jpg"]
        assert s.screen_to(tmp_path / "out", str(photos.resolve())).screened == 2
        assert s.screen_to(tmp_path / "out2", photos).screened == 2  # a Path too
        blob = (photos / "0.jpg").read_bytes()
        for bad in (blob, [blob], [str(photos / "0.jpg"), blob]):
            with pytest.raises(ConfigError, match="screen_to screens paths.*item_for_data"):
                s.screen_to(tmp_path / "out3", bad)
        with pytest.raises(ConfigError, match="screen_to screens paths"):
            s.screen_to(tmp_path / "out4", (x for x in [blob]))  # a generator: refused at the item
        s.check_output(tmp_path / "out5", str(photos.resolve()))  # one path, checked as one input
    assert not (tmp_path / "out3").exists()  # refused before the output folder was made


def test_auto_falls_back_when_the_gpu_provider_cannot_start(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime-gpu lists CUDA without a working GPU: auto picked ort-cuda and then failed to open."""
    listed = B.Availability(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    monkeypatch.setattr(B, "detect_availability", lambda **_: listed)
    assert B.select_backend(tiny_bundle, "auto", measure=False).backend == "ort-cuda"
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.backends"):
        with Screener(tiny_bundle) as s:
            assert s.backend.name == "ort-cpu"
    assert "backend ort-cuda could not start" in caplog.text and "without the GPU" in caplog.text
    # bench's default `auto` too; and a backend named explicitly is never replaced.
    from uopsl.runtime.bench import BenchConfig, run_bench
    from uopsl.runtime.errors import BackendError

    res = run_bench(tiny_bundle, "auto", "auto", BenchConfig(batches=(1,), iters=1, warmup=0, e2e=False))
    assert [c["backend"] for c in res["cases"]] == ["ort-cpu"]
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        with Screener(tiny_bundle, backend="ort-cuda"):
            pass


def test_info_does_not_call_a_stale_engine_usable(tiny_bundle: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.export.bundle_writer import add_file
    from uopsl.runtime.engine_header import EngineHeader, write_engine

    b = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    write_engine(b / "model.fp16.engine", b"plan", EngineHeader(
        tensorrt_version="10.13.0.35", gpu_name="g", compute_capability="8.7", precision="fp16",
        source_onnx="model.onnx", source_onnx_sha256="0" * 64, min_batch=1, opt_batch=1, max_batch=8))
    add_file(b, None, "model.fp16.engine", "engine", "fp16")
    monkeypatch.setattr(B, "engine_mismatch", lambda path: None)  # as on the device that built it
    rows = B.backend_table(b, availability=B.Availability(ort_providers=("CPUExecutionProvider",), tensorrt=True))
    (trt,) = [r for r in rows if r[0] == "tensorrt"]
    assert trt[1] is False and "stale: built from model.onnx" in trt[2]


def test_a_missing_backend_package_is_a_missing_dependency(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs promise MissingDependencyError (an ImportError) to catch and fall back; a BundleError came."""
    bare = B.Availability(ort_providers=("CPUExecutionProvider",))
    monkeypatch.setattr(B, "detect_availability", lambda **_: bare)
    for name in ("openvino", "ort-cuda", "ort-trt", "tensorrt"):
        with pytest.raises(MissingDependencyError):
            with Screener(tiny_bundle, backend=name):
                pass


def test_bench_skips_photographs_that_do_not_decode(tiny_bundle: Path, tmp_path: Path) -> None:
    """With --batch 1 one broken file sorted first crashed bench (np.stack of nothing)."""
    from uopsl.runtime.bench import BenchConfig, run_bench

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a_broken.jpg").write_bytes(b"\xff\xd8 not a photograph")
    fundus_jpeg(imgs / "p0.jpg")
    res = run_bench(tiny_bundle, "ort-cpu", "fp32",
                    BenchConfig(batches=(1,), iters=2, warmup=1, e2e=False, preprocess_images=4), images=imgs)
    assert res["cases"] and res["cases"][0]["batch"] == 1 and res["preprocess"]["images"] == 1
    (imgs / "p0.jpg").unlink()
    with pytest.raises(ConfigError, match=r"none of the 1 benchmark image\(s\) could be preprocessed \(.*a_broken.jpg: image data is truncated"):
        run_bench(tiny_bundle, "ort-cpu", "fp32", BenchConfig(batches=(1,), iters=2, warmup=1, e2e=False), images=imgs)


def test_nested_with_and_bad_threads(tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        Screener(tiny_bundle, backend="ort-cpu", threads=0)
    s = Screener(tiny_bundle, backend="ort-cpu", threads=1)
    with s:
        with s:
            pass
        assert s.backend.describe().endswith("1 thread)")  # the outer block is still open
    with pytest.raises(ConfigError, match="the Screener was closed"):
        _ = s.backend
