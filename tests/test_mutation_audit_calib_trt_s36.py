"""Mutation audit, session 36: calibration sets and tables, the TensorRT 8.x cache, the engine builder's version
dispatch, the engine header and the TensorRT backend, without TensorRT or a GPU.

Each test here failed with one single-point bug (a "mutant") applied to a scratch copy of the code and passes on
the code as it is; the mutant is named in the test's docstring. Expected values are derived independently of the
code under test: by hand, with ``struct``/``numpy`` float32 arithmetic, ``hashlib``, or a plain re-implementation
stated in the docstring. TensorRT is the fake of ``tests/test_tensorrt.py``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import test_tensorrt as tt
from tinymodel import random_fundus_batch
from uopsl.calibration import trt_cache
from uopsl.calibration.dataset import CalibrationSet, build_calibration_set
from uopsl.calibration.table import CalibrationTable, load_if_current
from uopsl.runtime import engine_header as eh
from uopsl.runtime import trt_compat
from uopsl.runtime.errors import BundleError, DataError
from uopsl.runtime.preprocess import PreprocessConfig

SIZE = 32


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


# -- the TensorRT 8.x calibration cache ---------------------------------------------------------------------
def test_cache_scale_is_float32_amax_divided_in_float32() -> None:
    """Mutant: ``amax_to_scale`` divided the double amax and rounded once (``float32(amax / 127)``) instead of
    ``float32(float32(amax) / 127.0f)``, what TensorRT computes from a float amax (trt_cache module docstring).
    For amax 0.013 the two differ in the last bit: float32(0.013) / 127 in float32 is 0x38d6ab4b, computed
    here with numpy's float32 division and packed big-endian with ``struct``."""
    for amax in (0.013, 0.017, 0.019):
        want = struct.pack(">f", np.float32(np.float32(amax) / np.float32(127))).hex()
        assert trt_cache.scale_hex(trt_cache.amax_to_scale(amax)) == want
    assert struct.pack(">f", np.float32(np.float32(0.013) / np.float32(127))).hex() == "38d6ab4b"
    line = trt_cache.format_cache({"t": 0.013}, "8.6.1").splitlines()[1]
    assert line == "t: 38d6ab4b"


# -- the calibration table ------------------------------------------------------------------------------------
def _table(method: str = "percentile", percentile: float | None = 99.99, **kw: Any) -> CalibrationTable:
    base: dict[str, Any] = dict(ranges={"x": (-8.0, 2.0)}, method=method, model_sha256="m" * 64,
                                set_fingerprint="s" * 64, num_images=4, percentile=percentile)
    base.update(kw)
    return CalibrationTable(**base)


def test_a_table_of_another_percentile_is_not_reused(tmp_path: Path) -> None:
    """Mutant: ``matches`` left out the percentile, so a 99.99 % table stood in for a 99.9 % calibration of the
    same model and set (table.py: "Valid means same model hash, same set fingerprint, same method (and
    percentile)")."""
    path = _table().save(tmp_path / "calibration.json")
    same = dict(model_sha256="m" * 64, set_fingerprint="s" * 64, method="percentile")
    assert load_if_current(path, percentile=99.99, **same) is not None
    assert load_if_current(path, percentile=99.9, **same) is None


def test_a_minmax_table_is_reused_whatever_percentile_the_caller_passes(tmp_path: Path) -> None:
    """Mutant: ``matches`` compared the caller's percentile for every method; a minmax table (percentile None)
    was then recomputed whenever the caller passed its default percentile along. Only the percentile method
    has one (CalibrationTable: "a percentile is required for (and only for) the percentile method")."""
    path = _table("minmax", None).save(tmp_path / "calibration.json")
    assert load_if_current(path, model_sha256="m" * 64, set_fingerprint="s" * 64, method="minmax",
                           percentile=99.99) is not None


# -- calibration sets -----------------------------------------------------------------------------------------
def _fingerprint_by_hand(images: np.ndarray, cfg: PreprocessConfig) -> str:
    """The documented fingerprint, re-implemented: sha256 over the config as canonical JSON (sorted keys), the
    shape's repr and the uint8 pixel bytes in set order."""
    blob = (json.dumps(cfg.to_dict(), sort_keys=True).encode() + repr(tuple(images.shape)).encode()
            + np.ascontiguousarray(images, np.uint8).tobytes())
    return hashlib.sha256(blob).hexdigest()


def test_fingerprint_covers_every_channel_every_image_and_their_order() -> None:
    """Mutants: the fingerprint left out the preprocessing config, hashed the first (red) channel only, or the
    images sorted (order ignored). The same pixels under another config, a change to the blue channel of the last
    image, or two images swapped must each give another fingerprint, and the value is the documented sha256
    (re-implemented above)."""
    images = random_fundus_batch(3, SIZE, seed=5)
    cfg = PreprocessConfig(size=SIZE)
    base = CalibrationSet.from_images(images, cfg)
    assert base.fingerprint == _fingerprint_by_hand(images, cfg)
    clahe = PreprocessConfig(size=SIZE, clahe=True)
    assert CalibrationSet.from_images(images, clahe).fingerprint not in (base.fingerprint, "")
    assert CalibrationSet.from_images(images, clahe).fingerprint == _fingerprint_by_hand(images, clahe)
    blue = images.copy()
    blue[2, SIZE // 2, SIZE // 2, 2] ^= 1
    swapped = images[[1, 0, 2]]
    for other in (blue, swapped):
        fp = CalibrationSet.from_images(other, cfg).fingerprint
        assert fp != base.fingerprint and fp == _fingerprint_by_hand(other, cfg)


def test_class_balance_lists_the_most_frequent_class_first_and_counts_an_image_once_per_class() -> None:
    """Mutants: the balance kept first-seen order (documented: "most frequent first"), and a label naming a class
    twice ("dr;dr") counted that image twice. Counted by hand: dr 3 images, amd 2, normal 1."""
    labels = ["normal", "amd", "dr;dr", "amd; dr", "dr"]
    cs = CalibrationSet.from_images(random_fundus_batch(5, SIZE, seed=1), labels=labels)
    assert list(cs.class_balance().items()) == [("dr", 3), ("amd", 2), ("normal", 1)]


def test_a_saved_set_whose_pixels_changed_is_refused(tmp_path: Path) -> None:
    """Mutant: loading a saved set no longer checked its pixels against the recorded fingerprint, so a damaged
    cache was calibrated on under the fingerprint of the images it no longer holds."""
    cs = CalibrationSet.from_images(random_fundus_batch(3, SIZE, seed=2))
    path = cs.save(tmp_path / "set.npz")
    with np.load(path, allow_pickle=False) as z:
        images, meta = np.array(z["images"]), np.array(z["meta"])
    images[1, 3, 3, 1] ^= 0x10
    with open(path, "wb") as fh:
        np.savez(fh, images=images, meta=meta)
    with pytest.raises(DataError, match="do not match their fingerprint"):
        CalibrationSet.load(path)


def test_a_subset_keeps_set_order() -> None:
    """Mutant: ``subset`` kept the seeded draw in draw order, not set order (documented: "in set order"). The
    expected sources are the draw numpy gives for the seed, sorted."""
    cs = CalibrationSet.from_images(random_fundus_batch(10, SIZE, seed=3))
    drawn = np.random.default_rng(4).choice(10, 5, replace=False)
    assert list(drawn) != sorted(drawn)  # the seed's draw is not already in order
    sub = cs.subset(5, seed=4)
    assert sub.sources == tuple(f"array[{i}]" for i in sorted(drawn))
    assert np.array_equal(sub.images, cs.images[np.sort(drawn)])


def test_a_percentile_table_may_keep_100_percent() -> None:
    """Mutant: the percentile bound became (50, 100) and refused 100 (documented: "percentile must be in
    (50, 100]"; percentile 100 is minmax's range, tests/test_calibration.py)."""
    assert _table(percentile=100.0).percentile == 100.0
    with pytest.raises(Exception, match=r"\(50, 100\]"):
        _table(percentile=100.5)


# -- the engine header ----------------------------------------------------------------------------------------
def _header(**kw: Any) -> eh.EngineHeader:
    base: dict[str, Any] = dict(
        tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="fp16",
        source_onnx="model.onnx", source_onnx_sha256="ab" * 32, min_batch=1, opt_batch=4, max_batch=8)
    base.update(kw)
    return eh.EngineHeader(**base)


def _raw_engine(header: dict[str, Any], plan: bytes, fmt: int = 1) -> bytes:
    """An engine file laid out by hand (engine_header docstring): b"UOPSLENG", uint32 format, uint32 JSON length,
    all little-endian, then the JSON and the plan."""
    blob = json.dumps(header, sort_keys=True).encode()
    return struct.pack("<8sII", b"UOPSLENG", fmt, len(blob)) + blob + plan


def test_a_header_of_the_next_format_is_refused(tmp_path: Path) -> None:
    """Mutant: any format up to one above ours was read as format 1. Format 2 (a newer toolkit's header, laid
    out by hand) must be refused with a rebuild message, not read with format 1's rules."""
    path = tmp_path / "next.engine"
    path.write_bytes(_raw_engine(_header().to_dict(), b"PLAN", fmt=2))
    with pytest.raises(BundleError, match="engine header format 2 is not supported"):
        eh.read_header(path)


def test_an_opt_batch_outside_min_and_max_is_a_malformed_header() -> None:
    """Mutant: the header check was ``1 <= min <= max`` and let opt 16 outside 1..8 through, a profile TensorRT
    itself refuses (min <= opt <= max)."""
    d = _header().to_dict()
    d["opt_batch"] = 16
    with pytest.raises(BundleError, match="batch sizes must satisfy 1 <= min <= opt <= max"):
        eh.EngineHeader.from_dict(d, source="x.engine")


def test_read_plan_refuses_a_file_other_than_the_manifest_lists(tmp_path: Path) -> None:
    """Mutant: ``read_plan`` ignored ``expected_sha256`` (the whole file's sha256 from the bundle's manifest), so an
    engine replaced after the bundle was verified was deserialised. The expected value is hashlib over the bytes."""
    path = tmp_path / "m.engine"
    eh.write_engine(path, b"PLAN" * 10, _header())
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert eh.read_plan(path, expected_sha256=good)[1] == b"PLAN" * 10
    with pytest.raises(BundleError, match="not the engine the bundle's manifest lists"):
        eh.read_plan(path, expected_sha256=hashlib.sha256(b"another file").hexdigest())


# -- TensorRT version dispatch --------------------------------------------------------------------------------
def test_implicit_int8_is_deprecated_from_10_1_0_on() -> None:
    """Mutant: ``implicit_int8_deprecated`` was ``version[:2] > (10, 1)``, leaving 10.1.x out. TensorRT's calibrator
    APIs are "Deprecated in TensorRT 10.1" (trt_compat.api_for), so 10.1.0 must warn and 10.0.1 must not."""
    from uopsl.export.tensorrt import EngineBuildConfig, LegacyCalibration, plan_build

    assert trt_compat.api_for(tt.fake_trt("10.1.0")).implicit_int8_deprecated
    assert not trt_compat.api_for(tt.fake_trt("10.0.1")).implicit_int8_deprecated
    cfg = EngineBuildConfig(precision="int8", int8_mode="legacy-cache")
    cal = LegacyCalibration(amax={"image": 255.0})
    assert any("deprecated since TensorRT 10.1" in w for w in
               plan_build(trt_compat.api_for(tt.fake_trt("10.1.0")), cfg, onnx_qdq=False, calibration=cal).warnings)


def test_the_parser_opset_ceiling_is_stated_only_for_8x_and_10_0() -> None:
    """Mutant: every 10.x got 10.0's ceiling (opset 20), so a 10.3 build of an opset-21 model warned that the
    parser may fail. ``parser_max_opset`` states "None where we have no statement" (later 10.x raise it)."""
    from uopsl.export.tensorrt import EngineBuildConfig, parser_max_opset, plan_build

    def api(v: str) -> trt_compat.TrtApi:
        return trt_compat.api_for(tt.fake_trt(v))

    assert parser_max_opset(api("8.6.1")) == 17 and parser_max_opset(api("10.0.1")) == 20
    assert parser_max_opset(api("10.3.0")) is None
    p = plan_build(api("10.3.0"), EngineBuildConfig(precision="fp32"), onnx_qdq=False, onnx_opset=21)
    assert not any("opset" in w for w in p.warnings)


# -- the engine build with the fake TensorRT --------------------------------------------------------------------
def test_a_minmax_table_gives_a_minmax_cache_and_calibrator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mutant: the cache written from table ranges always said EntropyCalibration2. build-engine hands a minmax
    table's ranges over with algorithm "minmax" (train/commands/build_engine.py), the calibrator is then an
    IInt8MinMaxCalibrator, and TensorRT refuses a cache whose header names another algorithm ("Calibration table
    does not match calibrator algorithm type", the fake's behaviour). Expected header by hand: 8.6.1 -> 8601."""
    from uopsl.export.tensorrt import EngineBuildConfig, LegacyCalibration, build_engine

    gpu = tt.FakeGpu()
    trt = tt.install(monkeypatch, "8.6.1", gpu)
    cal = LegacyCalibration(amax={"image_f": 255.0, "conv_out": 6.0}, algorithm="minmax", batch_size=2)
    build_engine(tt.fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                 EngineBuildConfig(precision="int8", int8_mode="legacy-cache"), cal, cuda=tt.FakeCuda(gpu))
    (kind, cache), = trt.calls["calibration"]
    want = struct.pack(">f", np.float32(255.0) / np.float32(127)).hex()
    assert kind == "cache" and cache.decode().splitlines()[:2] == ["TRT-8601-MinMaxCalibration", f"image_f: {want}"]
    assert isinstance(trt.calls["configs"][0].int8_calibrator, trt.IInt8MinMaxCalibrator)


def test_the_header_records_the_onnx_hash_and_version_compatibility(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Mutants: the header's ``source_onnx_sha256`` hashed other bytes (the plan), and ``version_compatible`` was
    not recorded (the runtime then neither accepts the engine under a later TensorRT nor lets its lean runtime
    run). Expected: hashlib.sha256 of the ONNX file's bytes, and True as requested."""
    from uopsl.export.tensorrt import EngineBuildConfig, build_engine

    gpu = tt.FakeGpu()
    tt.install(monkeypatch, "10.3.0", gpu)
    onnx = tt.fake_onnx(tmp_path / "m.onnx")
    info = build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="fp16", version_compatible=True),
                        cuda=tt.FakeCuda(gpu))
    h = eh.read_header(info.path)
    assert h.source_onnx_sha256 == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert h.version_compatible is True
    eh.check_compatible(h, "10.4.0", "Orin", "8.7", running_platform=h.platform)  # a later 10.x runs it


def test_the_calibrator_reports_its_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: ``get_batch_size`` returned the image height. TensorRT asks the calibrator for its batch size
    (IInt8Calibrator.get_batch_size) and reads that many images per pointer; the fake builder never asks, so it
    is asked here: (4, 8, 8, 3) -> 4."""
    from uopsl.export.tensorrt_calibrator import make_calibrator

    gpu = tt.FakeGpu()
    trt = tt.fake_trt("8.6.1", gpu)
    cal = make_calibrator(trt, tt.FakeCuda(gpu), input_shape=(4, 8, 8, 3), input_dtype=np.dtype(np.uint8),
                          cache=b"TRT-8601-EntropyCalibration2\n")
    assert cal.get_batch_size() == 4


# -- the TensorRT backend ------------------------------------------------------------------------------------------
def _engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: tt.FakeGpu, **cfg: Any) -> tuple[Any, Path]:
    from uopsl.export.tensorrt import EngineBuildConfig, build_engine

    trt = tt.install(monkeypatch, "10.3.0", gpu, dla_cores=cfg.pop("dla_cores", 0))
    path = build_engine(tt.fake_onnx(tmp_path / "model.onnx"), tmp_path / "model.engine",
                        EngineBuildConfig(**{"precision": "fp16", **cfg}), cuda=tt.FakeCuda(gpu)).path
    return trt, path


def test_the_backend_takes_its_maximum_batch_from_the_profiles_max_not_opt(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """Mutant: the backend read its maximum batch from the profile's opt shape. With min/opt/max 1/2/4 a batch of
    4 is one engine run, and the batch range is (1, 4)."""
    from uopsl.runtime.backends.tensorrt import TensorRTBackend

    gpu = tt.FakeGpu()
    _, path = _engine(monkeypatch, tmp_path, gpu, min_batch=1, opt_batch=2, max_batch=4)
    batch = np.random.default_rng(0).integers(0, 255, (4, tt.H, tt.W, 3), dtype=np.uint8)
    with TensorRTBackend(path, cuda=tt.FakeCuda(gpu)) as backend:
        assert backend.batch_range == (1, 4)
        out = backend.infer(batch)
        assert backend.last_chunks == 1
    np.testing.assert_allclose(out["probs"], tt.expected_probs(batch), rtol=1e-6)


class _ClockCuda(tt.FakeCuda):
    """FakeCuda with a simulated device clock: a host-to-device copy takes 2 ms, the engine 5 ms (counted when the
    stream handle is taken for execute), each device-to-host copy 0.25 ms; events read the clock."""

    def __init__(self, gpu: tt.FakeGpu) -> None:
        super().__init__(gpu)
        self.clock = 0.0

    def event_create(self) -> Any:
        return [0.0]

    def event_record(self, event: Any, stream: Any) -> None:
        event[0] = self.clock

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return end[0] - start[0]

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        super().htod_async(dst, src, stream)
        self.clock += 2.0

    def stream_handle(self, stream: Any) -> int:
        self.clock += 5.0
        return super().stream_handle(stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        super().dtoh_async(dst, src, stream)
        self.clock += 0.25


def test_the_backend_times_each_part_between_its_own_events(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mutant: h2d and compute read the wrong pair of events. With the simulated clock, one batch is h2d 2 ms,
    compute 5 ms and d2h 3 x 0.25 ms (three outputs: probs, logits, site_maps), by hand."""
    from uopsl.runtime.backends.tensorrt import TensorRTBackend

    gpu = tt.FakeGpu()
    _, path = _engine(monkeypatch, tmp_path, gpu, min_batch=1, opt_batch=2, max_batch=2)
    with TensorRTBackend(path, cuda=_ClockCuda(gpu)) as backend:
        backend.infer(np.zeros((2, tt.H, tt.W, 3), np.uint8))
        assert backend.last_timings == {"h2d": 2.0, "compute": 5.0, "d2h": 0.75}


def test_engine_host_code_is_allowed_only_for_version_compatible_engines(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """Mutant: every engine was deserialised with ``engine_host_code_allowed = True``. Only version-compatible plans
    embed a lean runtime (host code) that needs it (backend comment; TensorRT's IRuntime.engine_host_code_allowed
    defaults to false); an ordinary engine must not switch it on."""
    from uopsl.runtime.backends.tensorrt import TensorRTBackend

    gpu = tt.FakeGpu()
    trt, path = _engine(monkeypatch, tmp_path, gpu, min_batch=1, opt_batch=1, max_batch=1)
    with TensorRTBackend(path, cuda=tt.FakeCuda(gpu)):
        assert trt.calls["runtime"].engine_host_code_allowed is False


def test_a_dla_engine_is_deserialised_on_its_dla_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mutant: the runtime's ``DLA_core`` was not set, so a DLA engine for core 1 was deserialised for the default
    core. The header says core 1; the runtime must be given 1 before deserialising."""
    from uopsl.runtime.backends.tensorrt import TensorRTBackend

    gpu = tt.FakeGpu()
    trt, path = _engine(monkeypatch, tmp_path, gpu, min_batch=1, opt_batch=1, max_batch=1, dla_cores=2,
                        dla_core=1)
    assert eh.read_header(path).dla_core == 1
    with TensorRTBackend(path, cuda=tt.FakeCuda(gpu)):
        assert trt.calls["runtime"].DLA_core == 1


def test_the_set_cache_is_not_reused_for_other_labels(tmp_path: Path) -> None:
    """Mutant: the set cache's key left out the labels, so the same files given other labels came back from the
    cache with the old labels (and the old class balance). Labels given by hand: (dr, amd) then (normal, normal)."""
    imgs = random_fundus_batch(2, 96, seed=8)
    paths = [_write_png(tmp_path / f"{i}.png", img) for i, img in enumerate(imgs)]
    cfg = PreprocessConfig(size=SIZE)
    cache = tmp_path / "set.npz"
    first = build_calibration_set(paths, cfg, labels=["dr", "amd"], cache=cache, show_progress=False)
    assert first.labels == ("dr", "amd")
    again = build_calibration_set(paths, cfg, labels=["normal", "normal"], cache=cache, show_progress=False)
    assert again.labels == ("normal", "normal") and again.class_balance() == {"normal": 2}


# -- external data anywhere in an ONNX model ------------------------------------------------------------------
def _external(t: Any) -> Any:
    """Mark TensorProto ``t`` as stored in an external file (what onnx.save(save_as_external_data=True) writes)."""
    import onnx

    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    entry = t.external_data.add()
    entry.key, entry.value = "location", "model.data"
    return t


def test_external_data_in_sparse_initializers_and_graph_list_attributes_is_found() -> None:
    """Mutants: the walk over a model's tensors skipped sparse initializers, the indices of a sparse tensor, or the
    graphs of a GRAPHS (list) attribute. Each model below has exactly one tensor marked external by hand, in one
    of those places; a model whose weights live elsewhere would be hashed without them (onnx_file docstring)."""
    import onnx
    from onnx import helper as h

    from uopsl.calibration.onnx_file import has_external_data

    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64

    def sparse(values_external: bool, indices_external: bool) -> Any:
        values = h.make_tensor("sp_values", f32, [2], [1.0, 2.0])
        indices = h.make_tensor("sp_indices", i64, [2], [0, 3])
        if values_external:
            _external(values)
        if indices_external:
            _external(indices)
        return h.make_sparse_tensor(values, indices, [4])

    def model(sparse_inits: list[Any], nodes: list[Any]) -> Any:
        g = h.make_graph(nodes or [h.make_node("Identity", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", f32, [4])], [h.make_tensor_value_info("y", f32, [4])],
                         sparse_initializer=sparse_inits)
        return h.make_model(g)

    assert not has_external_data(model([sparse(False, False)], []))
    assert has_external_data(model([sparse(True, False)], []))
    assert has_external_data(model([sparse(False, True)], []))
    body = h.make_graph([h.make_node("Identity", ["w"], ["z"])], "body", [],
                        [h.make_tensor_value_info("z", f32, [1])],
                        initializer=[_external(h.make_tensor("w", f32, [1], [0.5]))])
    node = h.make_node("Identity", ["x"], ["y"])
    node.attribute.append(h.make_attribute("branches", [body]))  # a GRAPHS attribute
    assert node.attribute[0].type == onnx.AttributeProto.GRAPHS
    assert has_external_data(model([], [node]))


def test_auto_int8_takes_the_cache_when_both_a_cache_and_images_are_given() -> None:
    """Mutant: ``int8_mode="auto"`` preferred the calibrator when ranges and images were both given, running a
    calibration on the device that the cache already holds. TensorRT's calibrator contract
    (IInt8Calibrator.read_calibration_cache: "Calibration is potentially expensive, so it can be useful to generate
    the calibration data once, then use it on subsequent builds") and the module docstring ("legacy-cache ... so no
    calibration runs on the device") make the cache win."""
    from uopsl.export.tensorrt import EngineBuildConfig, LegacyCalibration, plan_build

    both = LegacyCalibration(amax={"image": 255.0}, batches=[np.zeros((8, tt.H, tt.W, 3), np.uint8)])
    p = plan_build(trt_compat.api_for(tt.fake_trt("8.6.1")), EngineBuildConfig(precision="int8"), onnx_qdq=False,
                   calibration=both)
    assert p.int8_mode == "legacy-cache"


def test_a_cache_from_a_newer_tensorrt_is_retagged_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mutant: the cache was retagged only when its version was older than the running TensorRT. TensorRT refuses
    any other version's ``TRT-<version>-`` header (retag_cache docstring; the fake refuses it too), so a 10.3 cache
    (tag 100300 by NV_TENSORRT_VERSION's 10.x formula) used under 8.6.1 must reach it as TRT-8601 (8.x formula),
    its scale lines unchanged."""
    from uopsl.export.tensorrt import EngineBuildConfig, LegacyCalibration, build_engine

    gpu = tt.FakeGpu()
    trt = tt.install(monkeypatch, "8.6.1", gpu)
    cache = tmp_path / "new.cache"
    scale = struct.pack(">f", np.float32(6.0) / np.float32(127)).hex()
    cache.write_text(f"TRT-100300-EntropyCalibration2\nconv_out: {scale}\n")
    build_engine(tt.fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                 EngineBuildConfig(precision="int8", int8_mode="legacy-cache"),
                 LegacyCalibration(cache_file=str(cache), batch_size=2), cuda=tt.FakeCuda(gpu))
    assert trt.calls["calibration"] == [("cache", f"TRT-8601-EntropyCalibration2\nconv_out: {scale}\n".encode())]


def test_the_implicit_int8_deprecation_is_said_for_the_calibrator_route_too() -> None:
    """Mutant: only legacy-cache got the "deprecated since TensorRT 10.1" warning; the calibrator route is implicit
    INT8 as well (IInt8EntropyCalibrator2: "Deprecated in TensorRT 10.1")."""
    from uopsl.export.tensorrt import EngineBuildConfig, LegacyCalibration, plan_build

    cal = LegacyCalibration(batches=[np.zeros((8, tt.H, tt.W, 3), np.uint8)])
    p = plan_build(trt_compat.api_for(tt.fake_trt("10.3.0")),
                   EngineBuildConfig(precision="int8", int8_mode="legacy-calibrator"), onnx_qdq=False, calibration=cal)
    assert p.int8_mode == "legacy-calibrator"
    assert any("implicit INT8 calibration is deprecated since TensorRT 10.1" in w for w in p.warnings)


def test_the_calibrator_hands_tensorrt_each_batch_as_given() -> None:
    """Mutant: the batch was copied to the device in another image order. The fake device memory behind the pointer
    ``get_batch`` returns must hold the batch's bytes exactly (numpy ``tobytes`` of the batch)."""
    from uopsl.export.tensorrt_calibrator import make_calibrator

    gpu = tt.FakeGpu()
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 255, (2, tt.H, tt.W, 3), dtype=np.uint8) for _ in range(2)]
    cal = make_calibrator(tt.fake_trt("8.6.1", gpu), tt.FakeCuda(gpu), input_shape=(2, tt.H, tt.W, 3),
                          input_dtype=np.dtype(np.uint8), batches=batches)
    for batch in batches:
        ptr, = cal.get_batch(["image"])
        assert gpu.mem[ptr][: batch.nbytes].tobytes() == batch.tobytes()
    assert cal.get_batch(["image"]) is None and cal.used == 4 and cal.error is None
    cal.release()
