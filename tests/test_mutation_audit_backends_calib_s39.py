"""Mutation audit (session 39) of the inference backends and of calibration sets.

Audited: ``runtime/backends/__init__.py`` (choosing a backend, the CPU INT8 decision, building a backend for a
made choice, the check of a model's outputs against its manifest), ``runtime/backends/base.py`` (the input
checks every backend shares), ``runtime/backends/onnxruntime.py`` (sessions, providers, threads, the TensorRT
EP's batch profile and chunked batches), ``runtime/backends/openvino.py`` (compile settings, the batch
self-check) and ``calibration/dataset.py`` (calibration sets: fingerprint, class balance, bad images skipped and
listed, the set cache). ``runtime/backends/tensorrt.py`` was left out (no GPU here).

Each test pins a behaviour that a single-point bug slipped past the rest of the suite with; its docstring names
the mutant(s) of the audit's list it catches. No GPU, TensorRT or network: GPU availability is injected
(:class:`Availability`) and ONNX Runtime sessions run on the CPU. Expected values are worked out by hand in the
test (counts, orders, the batch arithmetic of the documented profile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

import tinybundle
from imagekit import draw_fake_fundus
from tinymodel import random_fundus_batch
from uopsl.calibration import dataset
from uopsl.calibration.dataset import CalibrationSet, build_calibration_set
from uopsl.runtime import backends as reg
from uopsl.runtime.backends import Availability, select_backend
from uopsl.runtime.bundle import FileEntry, read_manifest
from uopsl.runtime.errors import ConfigError, ImageReaderMissingError
from uopsl.runtime.preprocess import PreprocessConfig

tiny_bundle = tinybundle.tiny_bundle  # the session's shared bundle fixture

SIZE = 32
CPU = ("CPUExecutionProvider",)
GPU = Availability(ort_providers=("CUDAExecutionProvider", *CPU))


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    """Six synthetic fundus PNGs (96 px) that pass the field-of-view check."""
    return [_png(tmp_path / "imgs" / f"img{i}.png", img) for i, img in enumerate(random_fundus_batch(6, 96, seed=11))]


# -- calibration sets: what a set may hold ---------------------------------------------------------------------
def test_a_set_of_four_channel_images_is_refused() -> None:
    """D01: a set holds RGB model inputs, (N, H, W, 3). RGBA arrays (a PNG read with its alpha) were accepted as a
    calibration set, and the INT8 ranges would be fitted on inputs of another layout than the model's."""
    rgba = np.zeros((2, SIZE, SIZE, 4), np.uint8)
    with pytest.raises(ConfigError, match="uint8"):
        CalibrationSet.from_images(rgba, PreprocessConfig(size=SIZE))


def test_a_set_with_fewer_labels_than_images_is_refused() -> None:
    """D02: three images and two labels: which image is unlabelled is unknown, and the class balance would count
    two. It must be refused, not built."""
    with pytest.raises(ConfigError, match="3 calibration images but 2 labels"):
        CalibrationSet.from_images(random_fundus_batch(3, SIZE, seed=1), labels=["dr", "normal"])


# -- calibration sets: reading lists -----------------------------------------------------------------------------
def test_a_text_list_skips_comment_lines_and_reads_paths_relative_to_itself(
        photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D19 (and D20): a list file's ``#`` lines are comments, not images (they were tried as files and listed as
    skipped 'unreadable' images in the set's report); and a relative path is relative to the list file, not to the
    folder calibrate runs in (from another folder every image was 'unreadable' and no set could be built)."""
    listing = tmp_path / "set.txt"
    listing.write_text("# images for the INT8 ranges\nimgs/img0.png\n\n# second\nimgs/img2.png\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cs = build_calibration_set(listing, PreprocessConfig(size=SIZE), show_progress=False)
    assert cs.skipped == ()
    assert cs.sources == (str(tmp_path / "imgs" / "img0.png"), str(tmp_path / "imgs" / "img2.png"))


# -- calibration sets: which images, in which order ----------------------------------------------------------
def test_max_images_draws_the_seeds_permutation_keeps_list_order_and_the_cache_knows_the_seed(
        photos: list[Path], tmp_path: Path) -> None:
    """D25, D35, D41 (and D32): with ``max_images`` below the list's length the images are the first ones of the
    seed's permutation (not the list's first ones: a list sorted by class would be cut to one class), put back in
    list order; and a cache written for one seed is not served for another (the key left the seed out, so
    ``--seed`` was silently ignored once a cache existed). Expected sources: numpy's permutation for the seed, by
    hand, all six photographs being usable."""
    cfg = PreprocessConfig(size=SIZE)

    def expected(seed: int) -> tuple[str, ...]:
        first3 = np.random.default_rng(seed).permutation(6)[:3]
        return tuple(str(photos[i]) for i in sorted(first3))

    # Seeds whose draws differ from each other and from the list's first three, and are not drawn in order.
    assert len({expected(0), expected(1), (str(photos[0]), str(photos[1]), str(photos[2]))}) == 3
    assert list(np.random.default_rng(1).permutation(6)[:3]) != sorted(np.random.default_rng(1).permutation(6)[:3])
    cache = tmp_path / "set.npz"
    first = build_calibration_set(photos, cfg, max_images=3, seed=0, cache=cache, show_progress=False)
    assert first.sources == expected(0)
    again = build_calibration_set(photos, cfg, max_images=3, seed=1, cache=cache, show_progress=False)
    assert again.sources == expected(1)
    assert np.array_equal(again.images[0], build_calibration_set([expected(1)[0]], cfg, show_progress=False).images[0])


def test_a_cache_built_with_the_field_of_view_check_is_not_served_without_it(
        photos: list[Path], tmp_path: Path) -> None:
    """D26: ``require_fov=False`` keeps photographs the check would leave out; a cache written with the check on
    held one image fewer and was served for it (the key left ``require_fov`` out)."""
    chess = (np.indices((96, 96)).sum(0) // 12 % 2 * 255).astype(np.uint8)
    board = _png(tmp_path / "imgs" / "board.png", np.repeat(chess[..., None], 3, axis=2))
    paths = [*photos[:2], board]
    cfg = PreprocessConfig(size=SIZE)
    cache = tmp_path / "set.npz"
    checked = build_calibration_set(paths, cfg, cache=cache, show_progress=False)
    assert len(checked) == 2 and [s.reason for s in checked.skipped] == ["no_fov"]
    unchecked = build_calibration_set(paths, cfg, require_fov=False, cache=cache, show_progress=False)
    assert len(unchecked) == 3 and unchecked.skipped == ()


def test_a_photograph_of_both_eyes_is_skipped_as_several_fields(photos: list[Path], tmp_path: Path) -> None:
    """D34: two fields of view in one image (a montage of both eyes) are refused by the quality gate, so they are
    no input the deployed model sees; one such image was calibrated on (the check counted 'more than two')."""
    pair = np.ascontiguousarray(np.vstack([draw_fake_fundus(320, seed=4, field=0.5),
                                           draw_fake_fundus(320, seed=5, field=0.5)[:, ::-1]]))
    both = _png(tmp_path / "imgs" / "both_eyes.png", pair)
    cs = build_calibration_set([photos[0], both], PreprocessConfig(size=SIZE), show_progress=False)
    assert cs.sources == (str(photos[0]),)
    assert [(Path(s.source).name, s.reason) for s in cs.skipped] == [("both_eyes.png", "several_fov")]
    assert "2 fields of view" in cs.skipped[0].message


# -- calibration sets: bad images are skipped, and a set missing some is not cached ------------------------------
def test_an_os_error_while_reading_one_image_skips_it(photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """D37: a broken file must not stop the set (PIL reports a truncated TIFF as OSError, a flaky share as EIO):
    the image is listed as 'unreadable' and the others are used; the set was aborted by the first one."""
    real = dataset.preprocess

    def flaky(data: bytes, cfg: PreprocessConfig, *, source: str = "") -> object:
        if source.endswith("img1.png"):
            raise OSError(5, "Input/output error")
        return real(data, cfg, source=source)

    monkeypatch.setattr(dataset, "preprocess", flaky)
    cs = build_calibration_set(photos[:3], PreprocessConfig(size=SIZE), show_progress=False)
    assert cs.sources == (str(photos[0]), str(photos[2]))
    assert [(Path(s.source).name, s.reason) for s in cs.skipped] == [("img1.png", "unreadable")]
    assert "OSError" in cs.skipped[0].message


def test_a_set_missing_images_whose_reader_is_not_installed_is_not_cached(
        photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D36: a DICOM file without pydicom is 'reader_missing', which installing the reader mends. Cached, the set
    would leave that image out for good (the next run with pydicom installed would be served the cache)."""
    real = dataset.preprocess

    def no_reader(data: bytes, cfg: PreprocessConfig, *, source: str = "") -> object:
        if source.endswith("img1.png"):
            raise ImageReaderMissingError("DICOM needs pydicom", source=source)
        return real(data, cfg, source=source)

    monkeypatch.setattr(dataset, "preprocess", no_reader)
    cache = tmp_path / "set.npz"
    cs = build_calibration_set(photos[:3], PreprocessConfig(size=SIZE), cache=cache, show_progress=False)
    assert len(cs) == 2 and [s.reason for s in cs.skipped] == ["reader_missing"]
    assert not cache.exists()


# -- backend choice: which INT8 file a runtime is given ---------------------------------------------------------
def _with_s8_first(bundle: Path):  # type: ignore[no-untyped-def]
    """The tiny bundle's manifest with a symmetric (s8) INT8 variant listed before its u8 one."""
    m = read_manifest(bundle)
    s8 = FileEntry("model.int8.s8.onnx", "onnx", "int8-qdq-s8", sha256="0" * 64)
    return replace(m, files=(s8, *m.files))


def test_cpu_runtimes_get_the_u8_int8_variant_and_gpus_the_s8_one(tiny_bundle: Path) -> None:
    """M02: CPU INT8 kernels want u8 activations (VNNI's u8 x s8 products); the s8 variant is TensorRT's. With both
    in the bundle, ONNX Runtime on the CPU and OpenVINO were given the s8 file (slower there, and not the file
    validated for the CPU) when it came first in the list; the GPU's order is the other way round."""
    m = _with_s8_first(tiny_bundle)
    assert select_backend(tiny_bundle, "ort-cpu", "int8", manifest=m, availability=Availability(CPU)).file == \
        "model.int8.onnx"
    ov = select_backend(tiny_bundle, "auto", "int8", manifest=m, availability=Availability(CPU, openvino=True))
    assert (ov.backend, ov.file) == ("openvino", "model.int8.onnx")
    assert select_backend(tiny_bundle, "ort-cuda", "int8", manifest=m, availability=GPU).file == "model.int8.s8.onnx"


# -- the CPU INT8 decision: the measured figure ----------------------------------------------------------------
class _Clock:
    """A perf_counter that moves only when a fake backend says its inference took time."""

    def __init__(self) -> None:
        self.t = 100.0

    def perf_counter(self) -> float:
        return self.t


def _timed_backends(monkeypatch: pytest.MonkeyPatch, ms_per_file: dict[str, float]) -> list[tuple[str, object]]:
    """Replace ONNX Runtime's and OpenVINO's backends with fakes whose batch-1 call takes ``ms_per_file[name]``
    on a fake clock; returns the (runtime, threads) each was built with."""
    from types import SimpleNamespace

    from uopsl.runtime.backends import onnxruntime as ort_mod
    from uopsl.runtime.backends import openvino as ov_mod
    from uopsl.runtime.backends.base import TensorSpec

    clock = _Clock()
    built: list[tuple[str, object]] = []
    monkeypatch.setattr(reg, "time", SimpleNamespace(perf_counter=clock.perf_counter))

    def fake(runtime: str) -> type:
        class Fake:
            def __init__(self, path: Path, device: str, threads: int | None = None, **kw: object) -> None:
                self.ms = ms_per_file[Path(path).name]
                built.append((runtime, threads))
                self.inputs = (TensorSpec("image", (None, 8, 8, 3), np.dtype(np.uint8)),)

            def __enter__(self) -> Fake:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
                assert x.shape == (1, 8, 8, 3)
                clock.t += self.ms / 1e3
                return {}
        return Fake

    monkeypatch.setattr(ort_mod, "OrtBackend", fake("ort"))
    monkeypatch.setattr(ov_mod, "OpenVinoBackend", fake("openvino"))
    return built


@pytest.mark.parametrize("runtime", ["openvino", "ort-cpu"])
def test_the_int8_speedup_is_fp32_latency_over_int8_latency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           runtime: str) -> None:
    """M09: 'INT8 is 2.5x faster' means FP32's median batch-1 latency (10 ms) divided by INT8's (4 ms). Inverted
    (0.4), a CPU where INT8 pays off ran FP32, and one where INT8 is slower (VNNI-less, depthwise) ran INT8."""
    built = _timed_backends(monkeypatch, {"fp32.onnx": 10.0, "int8.onnx": 4.0})
    got = reg._measure_speedup(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", "fp32", "int8-qdq-u8", 2,
                               runtime=runtime)
    assert got == pytest.approx(10.0 / 4.0)
    assert built == [("ort", 2), ("openvino" if runtime == "openvino" else "ort", 2)]


def test_a_speedup_measured_with_one_thread_count_is_not_served_for_another(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """M47: INT8's gain depends on the thread count (a 4-thread run of a small model gains less than a 1-thread
    run); the cached figure is keyed by it. Keyed without it, the figure measured for ``--threads 1`` was served
    for ``--threads 4``."""
    m = read_manifest(tiny_bundle)
    fp32, int8 = m.file("model.onnx"), m.file("model.int8.onnx")
    measured: list[object] = []

    def fake(fp32_path: Path, int8_path: Path, p32: str, p8: str, threads: int | None, **kw: object) -> float:
        measured.append(threads)
        return {1: 1.10, 4: 2.00}[threads]  # type: ignore[index]

    monkeypatch.setattr(reg, "_measure_speedup", fake)
    assert reg.cpu_int8_speedup(tiny_bundle, fp32, int8, threads=1) == (1.10, "measured now on this machine")
    speed, source = reg.cpu_int8_speedup(tiny_bundle, fp32, int8, threads=4)
    assert (speed, source) == (2.00, "measured now on this machine") and measured == [1, 4]
    assert reg.cpu_int8_speedup(tiny_bundle, fp32, int8, threads=1)[0] == 1.10 and measured == [1, 4]


def test_a_file_rewritten_with_the_same_size_loses_its_validation(tiny_bundle: Path, tmp_path: Path) -> None:
    """M45: the sha256 behind a parity PASS is hashed once per file version (path, size, mtime). Keyed by path and
    size alone, an INT8 file replaced by another of the same size (re-quantized with another method) kept the
    PASS of the file it replaced, and ``auto`` ran it unvalidated."""
    import os
    import shutil

    from test_backends import _validated

    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    m = _validated(read_manifest(root))
    entry = m.file("model.int8.onnx")
    assert reg.validated_file(root, entry, "openvino", m)[0]
    path = root / entry.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    before = path.stat().st_mtime_ns
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before + 10**9, before + 10**9))
    ok, why = reg.validated_file(root, entry, "openvino", m)
    assert not ok and "is not the file that passed validation" in why


def test_openvino_by_name_at_auto_precision_runs_int8_only_when_it_wins(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """M24: ``--backend openvino`` with precision ``auto`` takes INT8 only when it passed validation and is at
    least 1.15x faster here; otherwise the FP32 file. It took INT8 always: on this CPU 0.6x as fast (slower), and,
    without a PASS, a file no one had validated."""
    from test_backends import _validated

    ov = Availability(CPU, openvino=True)
    monkeypatch.setattr(reg, "_measure_speedup", lambda *a, **k: 0.6)
    slow = select_backend(tiny_bundle, "openvino", manifest=_validated(read_manifest(tiny_bundle)), availability=ov)
    assert (slow.backend, slow.precision, slow.file) == ("openvino", "fp32", "model.onnx")
    assert "0.60x" in slow.reason and "not enough faster" in slow.reason
    unvalidated = select_backend(tiny_bundle, "openvino", manifest=read_manifest(tiny_bundle), availability=ov)
    assert (unvalidated.precision, unvalidated.file) == ("fp32", "model.onnx")
    monkeypatch.setattr(reg, "_measure_speedup", lambda *a, **k: 2.0)
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(Path(str(reg.cache_dir())) / "fresh"))
    fast = select_backend(tiny_bundle, "openvino", manifest=_validated(read_manifest(tiny_bundle)), availability=ov)
    assert (fast.precision, fast.file) == ("int8-qdq-u8", "model.int8.onnx")


def test_auto_on_a_cuda_machine_honours_the_precision_asked_for(tiny_bundle: Path) -> None:
    """M27: ``--precision int8`` with the backend left to ``auto`` on a CUDA machine runs ONNX Runtime CUDA on the
    INT8 file (the s8 variant, GPUs' order); it ran the FP32 file, ignoring the precision asked for."""
    sel = select_backend(tiny_bundle, "auto", "int8", manifest=_with_s8_first(tiny_bundle), availability=GPU)
    assert (sel.backend, sel.precision, sel.file) == ("ort-cuda", "int8-qdq-s8", "model.int8.s8.onnx")
    only_u8 = select_backend(tiny_bundle, "auto", "int8", availability=GPU)
    assert (only_u8.backend, only_u8.precision) == ("ort-cuda", "int8-qdq-u8")


def test_auto_whose_tensorrt_engine_cannot_start_falls_back_to_the_cpu(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """M37: when the GPU choice of ``auto`` cannot start, the choice is made again without the GPU: without the
    ONNX Runtime GPU providers and without TensorRT. With TensorRT left in, the same engine was chosen again and
    failed again, and screening stopped instead of running on the CPU."""
    from test_backends import _with_engines
    from uopsl.runtime.backends import open_and_enter
    from uopsl.runtime.backends import tensorrt as trt_mod
    from uopsl.runtime.errors import BackendError

    started: list[str] = []

    class NoGpu:
        name = "tensorrt"

        def __init__(self, path: Path, device: int = 0) -> None:
            self.path = path

        def __enter__(self) -> NoGpu:
            started.append(Path(self.path).name)
            raise BackendError("CUDA driver version is insufficient for CUDA runtime version")

    root = tmp_path / "b"
    m = _with_engines(tiny_bundle, validated=True, write_to=root)
    monkeypatch.setattr(reg, "engine_mismatch", lambda path, device=0: None)
    monkeypatch.setattr(trt_mod, "TensorRTBackend", NoGpu)
    av = Availability(ort_providers=CPU, tensorrt=True)
    b = open_and_enter(root, manifest=m, availability=av, measure=False)
    try:
        assert (b.name, b.selection.file) == ("ort-cpu", "model.onnx")  # type: ignore[union-attr]
        assert started == ["model.int8.engine"]
    finally:
        b.__exit__(None, None, None)


def test_info_says_onnx_runtime_is_unusable_where_it_offers_no_cpu_provider(tiny_bundle: Path) -> None:
    """M41: ``info``'s table says ort-cpu is usable only where ONNX Runtime is installed (its CPU provider
    listed), and ort-trt only where TensorRT's library is found too (M42; tests/test_availability.py pins that
    as well). Without ONNX Runtime, ort-cpu was listed as usable, and the first run then failed on the missing
    package."""
    rows = {name: (usable, note) for name, usable, note in reg.backend_table(tiny_bundle, availability=Availability())}
    assert rows["ort-cpu"][0] is False and rows["ort-cuda"][0] is False
    listed = Availability(ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", *CPU), nvinfer=False)
    rows = {name: (usable, note) for name, usable, note in reg.backend_table(tiny_bundle, availability=listed)}
    assert rows["ort-cpu"][0] is True
    assert rows["ort-trt"] == (False, "needs TensorRT's library (libnvinfer), not found here")


# -- the shared input checks and the ONNX Runtime session ------------------------------------------------------
def test_an_input_of_another_rank_is_refused_saying_the_expected_shape(tiny_bundle: Path) -> None:
    """B04: a batch with a trailing axis too many (N, H, W, 3, 1), as a channel-last stack of single-channel reads
    gives, must be refused by the backend saying the shape it takes; without the rank check the dimensions it
    shares with the input passed and ONNX Runtime failed with its own message ('Invalid rank')."""
    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.runtime.errors import BackendError

    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        with pytest.raises(BackendError, match=r"must have shape \(None, 64, 64, 3\) \(None = any\), "
                                               r"got \(1, 64, 64, 3, 1\)"):
            b.infer(np.zeros((1, 64, 64, 3, 1), np.uint8))


@pytest.mark.parametrize("name", ["ort-cpu", "openvino"])
def test_a_model_file_replaced_after_the_bundle_was_read_is_not_loaded(tiny_bundle: Path, tmp_path: Path,
                                                                        name: str) -> None:
    """B09: the backend checks the model file against the manifest's sha256 as it loads it, so what runs is what
    was verified. The check returned without hashing: a model.onnx swapped after verification (another model of
    the same architecture) was loaded and screened with."""
    import shutil

    from uopsl.runtime.backends import Selection, construct_backend
    from uopsl.runtime.errors import BackendError

    if name == "openvino":
        pytest.importorskip("openvino")
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    m = read_manifest(root)
    b = construct_backend(root, Selection(name, "fp32", "model.onnx", "test"), m, threads=1)
    assert b.expected_sha256 == m.file("model.onnx").sha256
    shutil.copyfile(root / "model.int8.onnx", root / "model.onnx")
    with pytest.raises(BackendError, match="is not the file the bundle's manifest lists"):
        with b:
            pass


def test_a_tensorrt_ep_profile_refuses_an_input_name_with_a_comma() -> None:
    """O04: ONNX Runtime splits the TensorRT EP's shape options on ',' (between inputs) and ':' (name from
    shape). An input named 'image,rgb' would be read as two inputs, 'image' and 'rgb:1x64x64x3'; the profile
    refused ':' only."""
    from uopsl.runtime.backends.onnxruntime import TrtProfile

    with pytest.raises(ConfigError, match="cannot be written in a TensorRT EP shape option"):
        TrtProfile("image,rgb", (64, 64, 3))
    assert TrtProfile("image_rgb", (64, 64, 3)).options()["trt_profile_min_shapes"] == "image_rgb:1x64x64x3"


def test_an_unwritable_cache_folder_turns_the_engine_cache_off_instead_of_failing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """O11: on a device whose home is read-only the TensorRT EP's engine cache folder cannot be made; the EP then
    builds its engine each time (slow) rather than not starting at all. The OSError escaped and the backend could
    not open. (The cache root here lies under a regular file, which no user, root included, can make a folder in.)"""
    import logging

    from uopsl.runtime.backends.onnxruntime import provider_options

    (tmp_path / "not_a_folder").write_text("x")
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "not_a_folder" / "cache"))
    with caplog.at_level(logging.WARNING):
        opts = provider_options(["TensorrtExecutionProvider", "CPUExecutionProvider"], 0, model_sha256="ab" * 32,
                                ort_version="1.20.1")
    assert opts == [("TensorrtExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert "TensorRT EP engine cache off" in caplog.text


@pytest.mark.parametrize("threads", [1, 2])
def test_the_thread_count_reaches_the_onnx_runtime_session(tiny_bundle: Path, threads: int) -> None:
    """O20: ``--threads`` leaves cores to the image decoders on small CPUs (and INT8's measured gain is keyed by
    it); it was never handed to the session, which then took one thread per core."""
    from uopsl.runtime.backends.onnxruntime import OrtBackend

    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=threads) as b:
        opts = b._session.get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (threads, 1)
        assert b.settings()["threads"] == threads


def test_a_model_file_replaced_while_onnx_runtime_reads_it_is_refused(tiny_bundle: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """O23: the file is hashed again once ONNX Runtime has read it, so a copy landing during the load (a bundle
    update while a watch restarts) is caught; only the check before the load was left, and the session held
    bytes no check had seen."""
    import shutil

    import onnxruntime as ort

    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.runtime.errors import BackendError

    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    real = ort.InferenceSession

    def swapped_while_loading(path: str, sess_options: object = None, providers: object = None) -> object:
        session = real(path, sess_options=sess_options, providers=providers)
        shutil.copyfile(root / "model.int8.onnx", path)  # replaced after ONNX Runtime read it
        return session

    monkeypatch.setattr(ort, "InferenceSession", swapped_while_loading)
    b = OrtBackend(root / "model.onnx", "cpu", threads=1)
    b.expected_sha256 = read_manifest(root).file("model.onnx").sha256
    with pytest.raises(BackendError, match="is not the file the bundle's manifest lists"):
        with b:
            pass
    assert b._session is None


def test_the_thread_count_reaches_the_openvino_compiled_model(tiny_bundle: Path) -> None:
    """V03: OpenVINO's CPU plugin takes every physical core unless told; ``threads=1`` must compile the model for one
    inference thread (the compiled model reports it). It was left out of the compile settings."""
    pytest.importorskip("openvino")
    from uopsl.runtime.backends.openvino import OpenVinoBackend

    with OpenVinoBackend(tiny_bundle / "model.onnx", threads=1, batch_check=False) as b:
        assert int(b._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert b.describe() == "openvino-cpu (fp32, model.onnx, 1 thread)"


class _Node:
    """An ONNX Runtime NodeArg stand-in."""

    def __init__(self, name: str, shape: list, type_: str) -> None:  # type: ignore[type-arg]
        self.name, self.shape, self.type = name, shape, type_


def _fake_session(input_: _Node, output: _Node, run: Callable[[np.ndarray], np.ndarray]) -> type:
    """An ``onnxruntime.InferenceSession`` stand-in on the CPU provider: one input, one output, ``run`` per batch."""

    class FakeSession:
        def __init__(self, path: str, sess_options: object = None, providers: object = None) -> None:
            pass

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

        def get_inputs(self) -> list[_Node]:
            return [input_]

        def get_outputs(self) -> list[_Node]:
            return [output]

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [run(feeds[input_.name])]

    return FakeSession


def test_an_empty_batch_reaches_the_session_once_and_comes_back_empty(tiny_bundle: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """O27: a batch of no images (every photograph of a batch refused by the gate) is run once, as the model
    takes it, and gives outputs of no rows; with no run at all the outputs were joined from nothing and a raw
    ValueError ('need at least one array to concatenate') escaped instead of a result or a BackendError. The
    session is a fake that takes any batch size (the tiny model's Reshape refuses a batch of 0)."""
    import onnxruntime as ort

    from uopsl.runtime.backends.onnxruntime import OrtBackend

    runs: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        runs.append(len(x))
        return np.zeros((len(x), 2), np.float32)

    monkeypatch.setattr(ort, "InferenceSession", _fake_session(_Node("image", ["N", 8, 8, 3], "tensor(uint8)"),
                                                               _Node("probs", ["N", 2], "tensor(float)"), run))
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        out = b.infer(np.zeros((0, 8, 8, 3), np.uint8))
        assert out["probs"].shape == (0, 2) and runs == [0]
        assert b.infer(np.zeros((3, 8, 8, 3), np.uint8))["probs"].shape == (3, 2) and runs == [0, 3]


# -- follow-up round (session 39): candidates of the list not run in the first round -----------------------------
def test_a_set_whose_images_are_not_the_configs_size_is_refused() -> None:
    """D05: a set of 32 px images given a preprocessing config of 64 px is refused. Accepted, the set (and the INT8
    table fitted on it) carried the 64 px config in its fingerprint, though the pixels are no 64 px model input."""
    with pytest.raises(ConfigError, match="images are 32 px but the preprocessing config says 64 px"):
        CalibrationSet.from_images(random_fundus_batch(2, SIZE, seed=1), PreprocessConfig(size=64))


def test_auto_on_a_cpu_without_openvino_runs_the_int8_file_asked_for_on_onnx_runtime(tiny_bundle: Path) -> None:
    """M31: ``--precision int8`` with the backend left to ``auto`` on a CPU-only machine without OpenVINO runs ONNX
    Runtime on the INT8 file (the u8 variant, CPUs' order); it ran the FP32 file, ignoring the precision asked for,
    and the run's report named a file other than the one asked for."""
    sel = select_backend(tiny_bundle, "auto", "int8", manifest=_with_s8_first(tiny_bundle),
                         availability=Availability(CPU))
    from uopsl.runtime.errors import BundleError

    assert (sel.backend, sel.precision, sel.file) == ("ort-cpu", "int8-qdq-u8", "model.int8.onnx")
    with pytest.raises(BundleError, match="at precision fp16 needs an ONNX file of that precision") as err:
        select_backend(tiny_bundle, "auto", "fp16", availability=Availability(CPU))
    assert "precision= in the Python API" in str(err.value)  # not only the CLI's --precision


def test_a_float16_model_tensor_is_described_and_checked_as_float16(tiny_bundle: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """O31: an FP16 ONNX file (the ort-cuda FP16 variant) declares 'tensor(float16)' tensors; the backend describes
    them as float16, takes a float16 batch and refuses a float32 one saying float16. Mapped to float32, a float16
    batch was refused with 'must be float32' and the outputs' specs named the wrong type. The session is a fake
    declaring float16 tensors (no GPU here to run an FP16 file)."""
    import onnxruntime as ort

    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.runtime.errors import BackendError

    monkeypatch.setattr(ort, "InferenceSession", _fake_session(
        _Node("image", ["N", 4], "tensor(float16)"), _Node("probs", ["N", 2], "tensor(float16)"),
        lambda x: np.zeros((len(x), 2), np.float16)))
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        assert [s.dtype for s in (*b.inputs, *b.outputs)] == [np.dtype(np.float16)] * 2
        assert b.infer(np.zeros((3, 4), np.float16))["probs"].shape == (3, 2)
        with pytest.raises(BackendError, match="must be float16, got float32"):
            b.infer(np.zeros((3, 4), np.float32))


def test_why_auto_passed_over_cpu_int8_names_the_cpus_own_variant(tiny_bundle: Path) -> None:
    """M12: with two INT8 files and neither validated, ``auto``'s reason says why the CPU's file (the u8 variant,
    tried first) was not taken. It named the last file tried, the s8 variant meant for TensorRT, so the engineer
    reading it validated the wrong file."""
    sel = select_backend(tiny_bundle, "auto", manifest=_with_s8_first(tiny_bundle), availability=Availability(CPU),
                         measure=False)
    assert (sel.backend, sel.file) == ("ort-cpu", "model.onnx")
    assert "ONNX Runtime INT8 not chosen unasked: model.int8.onnx has no parity record" in sel.reason
    assert "model.int8.s8.onnx" not in sel.reason


def test_site_maps_are_checked_as_class_first_maps(tiny_bundle: Path) -> None:
    """M40: the manifest's site maps are (batch, classes, height, width): 3 classes of 8 x 8 here. A model whose
    maps are channel-last (batch, 8, 8, 3) does not belong to the manifest (its overlays would be read along the
    wrong axis) and must be named; the check expected channel-last, refused the right model and let the wrong one
    in."""
    from uopsl.runtime.backends.base import TensorSpec

    m = read_manifest(tiny_bundle)
    assert (len(m.classes), m.site_map_size) == (3, (8, 8))
    f32 = np.dtype(np.float32)

    def outputs(site: tuple[int | None, ...]) -> tuple[TensorSpec, ...]:
        return (TensorSpec("probs", (None, 3), f32), TensorSpec("logits", (None, 3), f32),
                TensorSpec("site_maps", site, f32))

    assert reg.output_mismatch(outputs((None, 3, 8, 8)), m) is None
    assert reg.output_mismatch(outputs((None, 8, 8, 3)), m) == \
        "output 'site_maps' has shape (None, 8, 8, 3), the manifest implies (batch, 3, 8, 8)"
