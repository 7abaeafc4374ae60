"""Calibration sets, range collection (minmax / entropy / percentile) and the calibration table."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tinymodel import export_tiny_onnx, random_fundus_batch
from uopsl.calibration import ranges as ranges_mod
from uopsl.calibration.dataset import CalibrationSet, build_calibration_set, fingerprint_images
from uopsl.calibration.ranges import (
    ActivationHistogram,
    activation_tensors,
    calibrate,
    collect_statistics,
    entropy_amax,
    percentile_amax,
)
from uopsl.calibration.table import CalibrationTable, load_if_current
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.preprocess import PreprocessConfig

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"
SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)  # TinyScreen's convolutions draw from the global generator
    return export_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx", num_classes=3, size=SIZE)


@pytest.fixture(scope="module")
def calib_set() -> CalibrationSet:
    return CalibrationSet.from_images(random_fundus_batch(24, SIZE, seed=1))


@pytest.fixture(scope="module")
def stats(tiny: Path, calib_set: CalibrationSet) -> ranges_mod.ActivationStats:
    return collect_statistics(tiny, calib_set, batch_size=5, show_progress=False)


def _observed(model: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every float activation, computed independently of the module under test."""
    m = onnx.load(str(model))
    names = list(activation_tensors(m))
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {"image": images})))


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


# -- ranges ------------------------------------------------------------------------
def test_minmax_ranges_are_sane_and_cover_every_observed_activation(tiny, calib_set, stats) -> None:
    r = stats.ranges("minmax")
    obs = _observed(tiny, calib_set.images)
    assert set(r) == set(obs)
    assert any("Conv" in n for n in r) and "logits" in r
    assert stats.pinned and set(stats.pinned) < set(r)
    for name, (lo, hi) in r.items():
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi, name
        # Same images, so minmax is the observed extent; the slack is float32 rounding (the
        # reference runs all 24 images in one batch, calibration in batches of 5).
        o_lo, o_hi = float(obs[name].min()), float(obs[name].max())
        slack = 1e-6 * max(1.0, abs(o_lo), abs(o_hi))
        assert lo <= o_lo + slack and hi >= o_hi - slack, name
        if name in stats.pinned:  # the input's exact range, which these images do not fill
            assert (lo, hi) == stats.pinned[name], name
        else:
            assert lo == pytest.approx(o_lo, abs=slack) and hi == pytest.approx(o_hi, abs=slack), name


def test_tensors_of_the_uint8_input_alone_hold_their_exact_range_in_every_method(tiny, stats) -> None:
    """Entropy measured [0, 20] on the cast input of black-bordered images (a TensorRT 8.x implicit engine
    could clip every pixel above 20 on it), and every method ended at the brightest calibration pixel."""
    from uopsl.calibration.ranges import input_bound_ranges

    m = onnx.load(str(tiny))
    exact = input_bound_ranges(m)
    cast = next(n.output[0] for n in m.graph.node if n.op_type == "Cast")
    assert exact[cast] == (0.0, 255.0)
    # Every tensor pinned lies on the chain from the input to the first weighted op, and a tensor fed by a
    # convolution is never pinned.
    # This model normalises as the export does (cast, NHWC -> NCHW, mean, scale) before its first convolution:
    # exactly those four tensors are pinned, the last of them the convolution's input.
    assert [n.op_type for n in m.graph.node[:5]] == ["Cast", "Transpose", "Sub", "Div", "Conv"]
    assert set(exact) == {n.output[0] for n in m.graph.node[:4]} and m.graph.node[4].input[0] in exact
    conv_outputs = {n.output[0] for n in m.graph.node if n.op_type == "Conv"}
    assert not conv_outputs & set(exact)
    assert stats.histograms[cast].range("entropy", 99.99)[1] < 255  # what measuring alone gives here
    for method in ("minmax", "entropy", "percentile"):
        table = stats.table(method)
        for name, rng in exact.items():
            assert table.range(name) == rng, (method, name)
        assert table.notes["exact_from_input"] == sorted(exact)


def test_interval_arithmetic_of_the_input_chain() -> None:
    from uopsl.calibration.ranges import _interval

    mean = np.array([123.675, 116.28, 103.53], np.float32)
    assert _interval("Sub", (0.0, 255.0), mean, tensor_first=True) == pytest.approx((-123.675, 151.47))
    assert _interval("Sub", (0.0, 255.0), mean, tensor_first=False) == pytest.approx((-151.47, 123.675))
    assert _interval("Mul", (-1.0, 2.0), np.array([-3.0, 0.5]), tensor_first=True) == (-6.0, 3.0)
    assert _interval("Div", (0.0, 255.0), np.array([255.0]), tensor_first=True) == (0.0, 1.0)
    assert _interval("Div", (0.0, 255.0), np.array([1.0, 0.0]), tensor_first=True) is None  # divides by zero
    assert _interval("Div", (0.0, 255.0), np.array([1.0]), tensor_first=False) is None  # 1 / 0 reachable
    assert _interval("Add", (0.0, 1.0), np.array([np.inf]), tensor_first=True) is None


def test_entropy_and_percentile_never_widen_minmax_and_clip_some_tails(stats) -> None:
    mm = stats.ranges("minmax")
    narrower = 0
    for method in ("entropy", "percentile"):
        r = stats.ranges(method, 99.9)
        for name, (lo, hi) in r.items():
            assert mm[name][0] <= lo <= hi <= mm[name][1], (method, name)
        narrower += sum(r[n][1] - r[n][0] < 0.95 * (mm[n][1] - mm[n][0]) for n in r)
    # Convolution outputs of noisy images have tails: both methods must clip some of them.
    assert narrower >= 4


def test_entropy_keeps_minmax_for_tensors_with_too_few_values(stats) -> None:
    # logits: 24 images x 3 classes = 72 values, far fewer than the histogram's bins.
    assert stats.histograms["logits"].count == 72
    assert stats.ranges("entropy")["logits"] == stats.ranges("minmax")["logits"]


def test_percentile_100_reproduces_minmax(stats) -> None:
    assert stats.ranges("percentile", 100.0) == stats.ranges("minmax")


def test_histogram_merge_is_exact_when_the_range_grows() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 0.3, 5000).astype(np.float32), rng.normal(0, 6.0, 5000).astype(np.float32)
    grown = ActivationHistogram(1024)
    grown.update(np.zeros(10, np.float32))  # exact zeros before any scale is known
    grown.update(small)
    grown.update(large)  # limit doubles several times: bins merge pairwise
    direct = ActivationHistogram(1024)
    direct.update(np.concatenate([np.zeros(10, np.float32), small, large]))
    assert grown.limit == direct.limit
    np.testing.assert_array_equal(grown.hist, direct.hist)
    assert (grown.lo, grown.hi) == (direct.lo, direct.hi) and grown.hist.sum() == 10010


def test_histogram_ignores_nonfinite_values_and_counts_them() -> None:
    h = ActivationHistogram(1024)
    h.update(np.array([1.0, np.nan, -2.0, np.inf], np.float32))
    assert (h.lo, h.hi, h.nonfinite, int(h.hist.sum())) == (-2.0, 1.0, 2, 2)


def test_non_finite_activations_are_listed_and_a_tensor_without_a_finite_value_is_refused(calib_set,
                                                                                          tmp_path: Path) -> None:
    """NaN/inf values were dropped with a log line only, and a tensor that is NaN everywhere got the range
    (0, 0) silently (calibration review, session 31)."""
    from onnx import TensorProto, helper

    def model(path: Path, nan_everywhere: bool) -> Path:
        nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
                 helper.make_node("Log", ["x"], ["logx"]),  # -inf at black pixels, finite elsewhere
                 helper.make_node("Sub", ["x", "c"], ["shifted"]),
                 helper.make_node("Sqrt", ["shifted"], ["root"])]  # NaN wherever x < c
        c = helper.make_tensor("c", TensorProto.FLOAT, [], [300.0 if nan_everywhere else 0.0])
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                           ["N", SIZE, SIZE, 3])],
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logx", "root")],
                                  initializer=[c])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    stats = collect_statistics(model(tmp_path / "some.onnx", False), calib_set, show_progress=False)
    assert set(stats.notes["nonfinite_values"]) == {"logx"} and stats.notes["nonfinite_values"]["logx"] > 0
    assert stats.table("minmax").notes["nonfinite_values"] == stats.notes["nonfinite_values"]
    with pytest.raises(ConfigError, match="no finite value on any of the 24 calibration images .*root"):
        collect_statistics(model(tmp_path / "nan.onnx", True), calib_set, show_progress=False)


def _abs_hist(values: np.ndarray, bins: int = 4096) -> tuple[np.ndarray, float]:
    top = float(np.abs(values).max())
    h, edges = np.histogram(np.abs(values), bins=bins, range=(0, top))
    return h, float(edges[1])


def test_entropy_threshold_ignores_rare_outliers_that_minmax_keeps() -> None:
    rng = np.random.default_rng(0)
    bulk = rng.normal(0, 1, 200_000)
    # The bulk alone: KL keeps (nearly) all of it; a Gaussian has no tail worth cutting at 128 levels.
    assert 3.0 < entropy_amax(*_abs_hist(bulk)) <= np.abs(bulk).max() + 1e-9
    # 0.1 % outliers up to 50 sigma: minmax would spend the int8 grid on them, KL does not.
    spiky = np.concatenate([bulk, rng.uniform(-50, 50, 200)])
    assert entropy_amax(*_abs_hist(spiky)) < 5.0
    assert entropy_amax(*_abs_hist(np.append(bulk, 100.0))) < 5.0


def test_entropy_keeps_a_uniform_distribution_whole() -> None:
    x = np.random.default_rng(0).uniform(-3, 3, 200_000)
    assert entropy_amax(*_abs_hist(x)) == pytest.approx(3.0, rel=0.03)


def test_percentile_threshold_matches_the_quantile() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 100_000)
    h, w = _abs_hist(x)
    assert percentile_amax(h, w, 99.0) == pytest.approx(0.99, abs=2 * w)
    with pytest.raises(ConfigError):
        percentile_amax(h, w, 0.0)


def _pq_entropy_bins(hist: np.ndarray, nbins: int = 128, start_bin: int = 128) -> int:
    """NVIDIA pytorch-quantization's ``_compute_amax_entropy`` (stride 1), transcribed; the threshold in bins.

    Quantized bins from ``np.linspace``/``np.digitize``, KL as ``scipy.stats.entropy(ref, new)`` (both
    normalised, ``p log(p / q)`` summed), the last argmin: the reference this module claims to reproduce.
    """
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    div = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        dig = np.digitize(range(i), space) - 1
        dig[bins[:i] == 0] = -1
        ok = dig != -1
        sums = np.bincount(dig[ok], weights=bins[:i][ok], minlength=nbins)
        counts = np.bincount(dig[ok], minlength=nbins)
        new = np.zeros(i)
        new[ok] = (sums / np.maximum(counts, 1))[dig[ok]]
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        p, q = ref / ref.sum(), new / new.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            div.append(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
    d = np.array(div)
    return start_bin + len(d) - 1 - int(np.argmin(d[::-1]))


def test_entropy_matches_pytorch_quantization_bin_for_bin() -> None:
    # The review's t_entropy.py histograms: half-normal-ish and heavy-tailed, 300 to 1000 bins ending at max |x|.
    rng = np.random.default_rng(0)
    for t in range(12):
        nb = int(rng.choice([300, 600, 1000]))
        x = (np.abs(rng.standard_t(df=rng.uniform(2, 8), size=200_000)) if t % 2
             else np.maximum(rng.normal(0.5, 1, 200_000), 0))
        h, edges = np.histogram(x, bins=nb, range=(0, x.max()))
        w = edges[1] - edges[0]
        assert entropy_amax(h, w) == pytest.approx(_pq_entropy_bins(h) * w, rel=1e-12), t
    # Isolated outliers leave empty bins between the bulk and the maximum: candidates with KL = inf.
    bulk = np.abs(rng.normal(0, 1, 100_000))
    spiky = np.concatenate([bulk, rng.uniform(8, 40, 30)])
    h, edges = np.histogram(spiky, bins=1500, range=(0, spiky.max()))
    w = edges[1] - edges[0]
    assert entropy_amax(h, w) == pytest.approx(_pq_entropy_bins(h) * w, rel=1e-12)


@pytest.mark.parametrize("mu, sd", [(1.0, 0.8), (2.0, 1.0), (4.0, 0.5)])
def test_entropy_keeps_the_values_of_a_tensor_far_from_zero(mu: float, sd: float) -> None:
    """A sigmoid gate (squeeze-excitation in efficientnet_b0 / mobilenet_v3) never reaches 0: the reference's
    first scored threshold, just past the smallest value, makes P and Q one spike (KL 0) and kept a range one
    bin wide that clipped every value (review of session 31). Those candidates are not scored."""
    x = 1 / (1 + np.exp(-np.random.default_rng(0).normal(mu, sd, 200_000)))
    hist = ActivationHistogram()
    hist.update(x.astype(np.float32))
    lo, hi = hist.range("entropy")
    assert lo == pytest.approx(x.min(), abs=1e-6)
    assert np.mean((x >= lo) & (x <= hi)) > 0.98
    assert hi > x.min() + 0.8 * (x.max() - x.min())
    # What the reference does on the same histogram: the degenerate pick this module departs from.
    h, w = hist.abs_histogram()
    used = np.flatnonzero(h)
    assert (_pq_entropy_bins(h[: used[-1] + 1]) - used[0]) * w < 2 * w


def test_entropy_search_is_exact_on_activation_histograms_where_a_strided_search_was_not() -> None:
    # The review's t_stride.py tensors (400k values; 2100-3600 of the 4096 |x| bins used): every bin is a
    # candidate now. The former default (about 512 candidates, every 4th-7th bin) landed elsewhere.
    rng = np.random.default_rng(1)
    moved = 0
    for kind in range(4):
        n = 400_000
        x = [np.maximum(rng.normal(0.3, 1, n), 0), rng.standard_t(3, n), rng.laplace(0, 1, n),
             np.maximum(rng.standard_t(5, n), 0) * rng.uniform(0.5, 3)][kind]
        hist = ActivationHistogram()
        hist.update(x.astype(np.float32))
        h, w = hist.abs_histogram()
        used = int(np.flatnonzero(h)[-1]) + 1
        exact = entropy_amax(h, w)
        assert exact == pytest.approx(_pq_entropy_bins(h[:used]) * w, rel=1e-12), kind
        moved += entropy_amax(h, w, max_candidates=512) != exact
    assert moved >= 3


def test_percentile_is_the_upper_edge_of_the_bin_onnxruntime_takes_the_lower_edge_of() -> None:
    x = np.abs(np.random.default_rng(2).normal(size=999_983)).astype(np.float32)  # no cdf value ties p exactly
    hist = ActivationHistogram()
    hist.update(x)
    h, w = hist.abs_histogram()
    for p in (99.0, 99.99):
        cdf = np.cumsum(h / h.sum())
        lower = int(np.searchsorted(cdf, p / 100)) * w  # ONNX Runtime / pytorch-quantization: hist_edges[idx]
        assert percentile_amax(h, w, p) == pytest.approx(lower + w, abs=1e-12)
        # Upper edge: at least p % of |x| is kept unclipped; the lower edge keeps less.
        assert np.mean(x <= percentile_amax(h, w, p)) >= p / 100 > np.mean(x < lower)


def test_calibrating_a_float_input_model_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 3])])
    path = tmp_path / "float_in.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ConfigError, match="uint8"):
        collect_statistics(path, CalibrationSet.from_images(random_fundus_batch(2, 32)), show_progress=False)


def test_images_of_the_wrong_size_are_refused_with_a_hint(tiny) -> None:
    wrong = CalibrationSet.from_images(random_fundus_batch(2, 32))
    with pytest.raises(ConfigError, match="--size"):
        collect_statistics(tiny, wrong, show_progress=False)


# -- the table -----------------------------------------------------------------
def test_table_json_round_trip_amax_and_scale(tmp_path: Path, stats) -> None:
    table = stats.table("percentile", 99.99)
    path = table.save(tmp_path / "calibration.json")
    again = CalibrationTable.load(path, model_sha256=stats.model_sha256)
    assert again == table
    assert again.percentile == 99.99 and again.method == "percentile" and again.num_images == 24
    raw = json.loads(path.read_text())
    assert raw["model_sha256"] == stats.model_sha256 and raw["set_fingerprint"] == stats.set_fingerprint
    assert raw["toolkit_version"] and raw["format_version"] == 1
    name = "/features/features.0/Conv_output_0"
    lo, hi = table.range(name)
    assert lo < 0 < hi
    assert table.amax(name) == max(-lo, hi)
    assert table.scale(name) == pytest.approx(table.amax(name) / 127)
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temp file left behind
    with pytest.raises(TypeError):
        table.ranges[name] = (0.0, 1.0)  # type: ignore[index]


def test_loading_a_table_for_another_model_fails_clearly(tmp_path: Path, stats) -> None:
    path = stats.table("minmax").save(tmp_path / "calibration.json")
    with pytest.raises(ConfigError, match="recalibrate|Recalibrate"):
        CalibrationTable.load(path, model_sha256="0" * 64)


def test_a_model_with_external_data_is_refused_not_hashed_without_its_weights(tiny, calib_set, tmp_path: Path) -> None:
    """Weights edited in model.data left the .onnx file's hash unchanged, so a stale table was reused and
    quantize accepted it (calibration review, session 31)."""
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    m = onnx.load(str(tiny))
    ext = tmp_path / "ext.onnx"
    onnx.save(m, str(ext), save_as_external_data=True, location="ext.data", size_threshold=0)
    with pytest.raises(ConfigError, match="ext.onnx keeps tensors in external data files.*save it as one file"):
        calibrate(ext, calib_set, method="minmax", out=tmp_path / "t.json", show_progress=False)
    table = calibrate(tiny, calib_set, method="minmax", show_progress=False)
    with pytest.raises(ConfigError, match="external data files"):
        quantize_model(ext, table, tmp_path / "q.onnx", QuantizeConfig(), show_progress=False)


def test_a_table_missing_a_tensor_is_refused_before_onnxruntime_fails_on_it(tiny, calib_set, tmp_path: Path) -> None:
    """ONNX Runtime's QDQ quantizer failed with a bare KeyError, reported as a bug (calibration review)."""
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    table = calibrate(tiny, calib_set, method="minmax", show_progress=False)
    gone = next(iter(activation_tensors(onnx.load(str(tiny)))))
    partial = CalibrationTable(ranges={k: v for k, v in table.ranges.items() if k != gone}, method="minmax",
                               model_sha256=table.model_sha256, set_fingerprint=table.set_fingerprint,
                               num_images=table.num_images)
    with pytest.raises(ConfigError, match=f"no range for 1 of the .* activation tensors .*{gone}.*recalibrate"):
        quantize_model(tiny, partial, tmp_path / "q.onnx", QuantizeConfig(bias_correction=False, rounding="nearest"),
                       show_progress=False)


def test_a_table_of_an_older_algorithm_is_named_when_a_consumer_loads_it(tmp_path: Path, stats,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """load_if_current recomputes such a table; quantize and build-engine, given its path, used it without a
    word (entropy version 2 tables clipped the input cast at [0, 20]; calibration review)."""
    raw = stats.table("entropy").to_dict()
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**raw, "algorithm_version": 2}))
    with caplog.at_level(logging.WARNING, logger="uopsl.calibration.table"):
        assert CalibrationTable.load(path).outdated
    assert any("version 2 of the entropy range algorithm" in r.getMessage() and "--force" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING, logger="uopsl.calibration.table"):
        assert not CalibrationTable.load(path).outdated
    assert not caplog.records


def test_a_saved_set_of_older_preprocessing_is_refused(calib_set, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--images set.npz` was checked against the preprocessing config only: pixels from an older decoder were
    calibrated and fingerprinted as if current (calibration review, session 31)."""
    import uopsl.calibration.dataset as dataset_mod

    path = calib_set.save(tmp_path / "set.npz")
    assert CalibrationSet.load(path).fingerprint == calib_set.fingerprint
    monkeypatch.setattr(dataset_mod, "PREPROCESS_VERSION", dataset_mod.PREPROCESS_VERSION + 1)
    with pytest.raises(DataError, match="made by version .* of the runtime's preprocessing.*Rebuild the set"):
        build_calibration_set(path)
    monkeypatch.undo()
    with np.load(path, allow_pickle=False) as z:
        images, meta = np.array(z["images"]), json.loads(str(z["meta"]))
    del meta["preprocess_version"]  # a set saved before the field existed
    np.savez(tmp_path / "old.npz", images=images, meta=np.array(json.dumps(meta)))
    with pytest.raises(DataError, match="did not record its preprocessing version"):
        CalibrationSet.load(tmp_path / "old.npz")


def test_set_warnings_speak_only_past_their_limits() -> None:
    from uopsl.calibration.ranges import FEW_IMAGES, set_warnings

    assert set_warnings(FEW_IMAGES, 0) == []
    assert set_warnings(40, 13) == []  # 13 of 53 skipped: under a quarter
    assert len(set_warnings(40, 14)) == 1 and "14 of the 54" in set_warnings(40, 14)[0]
    assert "fewer than 32" in set_warnings(FEW_IMAGES - 1, 0)[0]


def test_external_data_inside_a_local_function_is_found(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    from uopsl.calibration.onnx_file import has_external_data

    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    fn = helper.make_function("local", "f", ["x"], ["y"], [helper.make_node("Constant", [], ["y"], value=w)],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("f", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("local", 1)])
    assert not has_external_data(model)
    set_external_data(model.functions[0].node[0].attribute[0].t, location="w.bin")
    model.functions[0].node[0].attribute[0].t.data_location = TensorProto.EXTERNAL
    assert has_external_data(model)


def test_constants_of_every_attribute_form_become_weights(tiny, calib_set, tmp_path: Path) -> None:
    """A Constant with value_float (not a tensor) stayed a node, and ONNX Runtime's quantizer failed on it with
    a bare ValueError (second review of session 31)."""
    from onnx import helper

    from uopsl.export.onnx_export import constants_to_initializers
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    m = onnx.load(str(tiny))
    out = m.graph.output[0].name
    m.graph.node.extend([helper.make_node("Constant", [], ["k"], value_float=0.5),
                         helper.make_node("Mul", [out, "k"], ["scaled"])])
    m.graph.output.append(onnx.ValueInfoProto(name="scaled"))
    path = tmp_path / "k.onnx"
    onnx.save(m, str(path))
    table = calibrate(path, calib_set, method="minmax", show_progress=False)
    quantize_model(path, table, tmp_path / "k.int8.onnx", QuantizeConfig(bias_correction=False, rounding="nearest"),
                   show_progress=False)
    forms = onnx.load(str(path))
    forms.graph.node.extend([helper.make_node("Constant", [], ["i"], value_ints=[1, 2]),
                             helper.make_node("Constant", [], ["f"], value_floats=[0.5, 2.0])])
    assert constants_to_initializers(forms, onnx) >= 3 and not any(n.op_type == "Constant" for n in forms.graph.node)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in forms.graph.initializer}
    assert inits["k"].dtype == np.float32 and inits["k"].shape == () and inits["i"].dtype == np.int64


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["ranges"].update({"t": [1.0, -1.0]}), "min <= max"),
        (lambda d: d["ranges"].update({"t": [float("nan"), 1.0]}), "finite"),
        (lambda d: d.update(method="kl"), "method"),
        (lambda d: d.update(format_version=99), "format"),
        (lambda d: d.pop("model_sha256"), "malformed"),
    ],
)
def test_malformed_tables_are_refused(tmp_path: Path, stats, edit, match) -> None:
    d = stats.table("minmax").to_dict()
    edit(d)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=match):
        CalibrationTable.load(path)


def test_recalibration_is_skipped_when_model_and_set_match(tmp_path, tiny, calib_set, monkeypatch, caplog) -> None:
    out = tmp_path / "calibration.json"
    first = calibrate(tiny, calib_set, method="entropy", out=out, show_progress=False)

    def boom(*a, **k):
        raise AssertionError("the model must not be run again")

    monkeypatch.setattr(ranges_mod, "collect_statistics", boom)
    with caplog.at_level(logging.INFO, logger="uopsl.calibration.table"):
        again = calibrate(tiny, calib_set, method="entropy", out=out, show_progress=False)
    assert again == first
    assert "calibration skipped" in caplog.text
    # Another model, another method, another set or --force: the cache does not apply.
    assert load_if_current(out, model_sha256="0" * 64, set_fingerprint=calib_set.fingerprint,
                           method="entropy") is None
    assert load_if_current(out, model_sha256=sha256_file(tiny), set_fingerprint=calib_set.fingerprint,
                           method="minmax") is None
    other = CalibrationSet.from_images(random_fundus_batch(6, SIZE, seed=9))
    assert load_if_current(out, model_sha256=sha256_file(tiny), set_fingerprint=other.fingerprint,
                           method="entropy") is None
    with pytest.raises(AssertionError, match="must not be run"):
        calibrate(tiny, calib_set, method="entropy", out=out, force=True, show_progress=False)


def test_a_table_for_another_model_in_the_same_place_is_made_again(tmp_path, tiny, calib_set, caplog) -> None:
    # A re-exported model calibrated into the same --out with the same images must not get the old ranges.
    out = tmp_path / "calibration.json"
    first = calibrate(tiny, calib_set, method="minmax", out=out, show_progress=False)
    other = export_tiny_onnx(tmp_path / "other.onnx", num_classes=3, size=SIZE, seed=5)
    with caplog.at_level(logging.INFO, logger="uopsl.calibration.table"):
        second = calibrate(other, calib_set, method="minmax", out=out, show_progress=False)
    assert "calibration skipped" not in caplog.text
    assert second.model_sha256 == sha256_file(other) != first.model_sha256
    assert CalibrationTable.load(out).model_sha256 == sha256_file(other)


# -- calibration sets ------------------------------------------------------------
@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, img in enumerate(random_fundus_batch(5, 96, seed=3)):
        _write_png(folder / ("sub" if i == 4 else ".") / f"good{i}.png", img)
    good = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"this is not an image at all" * 10)
    checker = (np.indices((96, 96)).sum(0) // 12 % 2 * 255).astype(np.uint8)
    _write_png(folder / "checker.png", np.repeat(checker[..., None], 3, axis=2))
    return folder


def test_a_saved_set_honours_max_images_and_refuses_labels(image_folder: Path, tmp_path: Path) -> None:
    # --max-images was silently ignored for a .npz set: 4 asked, all calibrated.
    full = build_calibration_set(image_folder, PreprocessConfig(size=SIZE), show_progress=False)
    full.save(tmp_path / "set.npz")
    four = build_calibration_set(tmp_path / "set.npz", max_images=4, seed=1, show_progress=False)
    assert len(four) == 4 and four.fingerprint != full.fingerprint
    assert four.fingerprint == full.subset(4, seed=1).fingerprint
    assert len(build_calibration_set(tmp_path / "set.npz", show_progress=False)) == len(full)
    with pytest.raises(ConfigError, match="keeps the labels it was built with"):
        build_calibration_set(tmp_path / "set.npz", labels=["a"] * len(full), show_progress=False)


def test_csv_rows_without_a_path_or_a_label(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A separator-only row was "skipped: <csv folder> is a directory" (and calibrate exited 1); an empty label
    # was a class named "".
    csv_file = image_folder / "set.csv"
    csv_file.write_text("path,label\ngood0.png,dr\ngood1.png,\ngood2.png,normal\n,\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        cs = build_calibration_set(csv_file, PreprocessConfig(size=SIZE), show_progress=False)
    assert len(cs) == 3 and not cs.skipped
    assert cs.class_balance() == {"dr": 1, "(no label)": 1, "normal": 1}
    assert "1 row(s) without a path left out (line 5)" in caplog.text


def test_bad_images_are_skipped_and_listed_with_reasons(image_folder: Path) -> None:
    cs = build_calibration_set(image_folder, PreprocessConfig(size=SIZE), show_progress=False)
    assert len(cs) == 5 and cs.images.shape == (5, SIZE, SIZE, 3) and cs.images.dtype == np.uint8
    reasons = {Path(s.source).name: s.reason for s in cs.skipped}
    assert reasons == {"truncated.png": "undecodable", "empty.jpg": "undecodable", "text.jpg": "undecodable",
                       "checker.png": "no_fov"}
    assert all(Path(s.source).name in s.message for s in cs.skipped)
    report = cs.report()
    assert report["num_images"] == 5 and len(report["skipped"]) == 4 and report["class_balance"] is None
    kept = build_calibration_set(image_folder, PreprocessConfig(size=SIZE), require_fov=False, show_progress=False)
    assert len(kept) == 6


def test_fingerprint_covers_pixels_and_preprocessing(image_folder: Path) -> None:
    a = build_calibration_set(image_folder, PreprocessConfig(size=SIZE), show_progress=False)
    b = build_calibration_set(image_folder, PreprocessConfig(size=SIZE), show_progress=False)
    c = build_calibration_set(image_folder, PreprocessConfig(size=SIZE, clahe=True), show_progress=False)
    assert a.fingerprint == b.fingerprint == fingerprint_images(a.images, a.preprocess)
    assert c.fingerprint != a.fingerprint
    flipped = a.images.copy()
    flipped[0, 0, 0, 0] ^= 1
    assert fingerprint_images(flipped, a.preprocess) != a.fingerprint


def test_set_cache_is_reused_and_invalidated_by_a_changed_file(image_folder: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    from uopsl.calibration import dataset

    cache = tmp_path / "set.npz"
    cfg = PreprocessConfig(size=SIZE)
    first = build_calibration_set(image_folder, cfg, cache=cache, show_progress=False)
    assert cache.is_file()
    calls = []
    real = dataset.preprocess
    monkeypatch.setattr(dataset, "preprocess", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_calibration_set(image_folder, cfg, cache=cache, show_progress=False)
    assert calls == [] and again.fingerprint == first.fingerprint and again.skipped == first.skipped
    assert CalibrationSet.load(cache).fingerprint == first.fingerprint
    # A changed file (new mtime/size) rebuilds the set.
    target = image_folder / "good1.png"
    _write_png(target, random_fundus_batch(1, 96, seed=42)[0])
    os.utime(target, ns=(1, 1))
    rebuilt = build_calibration_set(image_folder, cfg, cache=cache, show_progress=False)
    assert calls and rebuilt.fingerprint != first.fingerprint


def test_a_labels_column_of_several_classes_counts_each_class(image_folder: Path) -> None:
    """`uopsl synth`'s labels.csv has a `labels` column of `;`-joined classes: the balance was None for it, and a
    `label` column's "dr;amd" and "amd;dr" were counted as two classes of their own (calibration review)."""
    csv_file = image_folder / "multi.csv"
    csv_file.write_text("path,labels\ngood0.png,dr;amd\ngood1.png,amd;dr\ngood2.png,dr\ngood3.png,\n",
                        encoding="utf-8")
    cs = build_calibration_set(csv_file, PreprocessConfig(size=SIZE), show_progress=False)
    assert cs.class_balance() == {"dr": 3, "amd": 2, "(no label)": 1}


def test_csv_list_with_labels_gives_a_class_balance_and_a_seeded_draw(image_folder: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "list.csv"
    names = ["good0.png", "good1.png", "good2.png", "good3.png", "sub/good4.png", "truncated.png"]
    labels = ["dme", "dme", "normal", "dme", "npdr", "dme"]
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(image_folder / n), lab] for n, lab in zip(names, labels))
    full = build_calibration_set(csv_path, PreprocessConfig(size=SIZE), show_progress=False)
    assert full.class_balance() == {"dme": 3, "normal": 1, "npdr": 1}
    assert [Path(s.source).name for s in full.skipped] == ["truncated.png"]
    draw = build_calibration_set(csv_path, PreprocessConfig(size=SIZE), max_images=3, seed=1, show_progress=False)
    again = build_calibration_set(csv_path, PreprocessConfig(size=SIZE), max_images=3, seed=1, show_progress=False)
    assert len(draw) == 3 and draw.sources == again.sources and set(draw.sources) <= set(full.sources)
    txt = tmp_path / "list.txt"
    txt.write_text("# calibration images\n" + "\n".join(str(image_folder / n) for n in names[:2]) + "\n")
    assert len(build_calibration_set(txt, PreprocessConfig(size=SIZE), show_progress=False)) == 2


def test_unusable_sources_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        build_calibration_set(tmp_path / "missing", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        build_calibration_set(tmp_path / "empty", show_progress=False)
    bad_csv = tmp_path / "x.csv"
    bad_csv.write_text("file,label\na.png,dme\n")
    with pytest.raises(DataError, match="'path' column"):
        build_calibration_set(bad_csv, show_progress=False)
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1"):
        build_calibration_set(tmp_path / "only_bad", show_progress=False)


@pytest.mark.skipif(not (TVHL / "fundus.csv").is_file(), reason=f"TVHL data not found at {TVHL}")
def test_real_tvhl_images_make_a_labelled_set() -> None:
    cs = build_calibration_set(TVHL / "fundus.csv", PreprocessConfig(size=128), max_images=6, seed=0,
                               show_progress=False)
    assert len(cs) == 6 and cs.images.shape[1:] == (128, 128, 3)
    balance = cs.class_balance()
    assert balance is not None and sum(balance.values()) == 6
    assert set(balance) <= {"dme", "normal", "npdr", "pdr", "unknown"}
    # Real fundus photographs: the field of view is black outside, bright inside.
    assert cs.images[:, 0, 0].max() == 0 and cs.images[:, 64, 64].mean() > 10


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
@pytest.mark.parametrize("written_as", [None, 1, 2])
def test_a_table_of_an_older_range_algorithm_is_recomputed_not_reused(tmp_path: Path, method: str,
                                                                      written_as: int | None) -> None:
    """Entropy's search changed in session 9, and every method's table pins the input's exact ranges since
    session 28: a cached table from before must not stand in for the new one."""
    pct = 99.99 if method == "percentile" else None
    table = CalibrationTable(ranges={"x": (0.0, 1.0)}, method=method, model_sha256="m", set_fingerprint="s",
                             num_images=4, percentile=pct)
    assert table.algorithm_version == (4 if method == "entropy" else 2)
    raw = table.to_dict()
    if written_as is None:
        del raw["algorithm_version"]  # a table written before the field existed
    elif written_as >= table.algorithm_version:
        return  # not an older version for this method
    else:
        raw["algorithm_version"] = written_as
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(raw))
    assert load_if_current(path, model_sha256="m", set_fingerprint="s", method=method, percentile=pct) is None
    table.save(path)  # the current algorithm's table is reused
    assert load_if_current(path, model_sha256="m", set_fingerprint="s", method=method, percentile=pct) == table


def test_a_calibration_folder_is_walked_as_the_screening_runtime_walks_it(tmp_path: Path) -> None:
    """Overlays and thumbnails of a uopsl-screen output folder inside the photo folder are no calibration images."""
    import cv2

    from uopsl.calibration.dataset import list_images
    from uopsl.runtime.errors import DataError

    photos = tmp_path / "photos"
    (photos / "screen-2026-11-29" / "overlays").mkdir(parents=True)
    jpeg = cv2.imencode(".jpg", random_fundus_batch(1, 64, seed=3)[0])[1].tobytes()
    for name in ("a.jpg", "b.jfif", "screen-2026-11-29/overlays/a.png", ".hidden.jpg"):
        (photos / name).write_bytes(jpeg)
    (photos / "screen-2026-11-29" / "results.jsonl").write_text("")
    paths, labels = list_images(photos)
    assert [p.name for p in paths] == ["a.jpg", "b.jfif"] and labels is None
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "scan.psd").write_bytes(b"x")
    with pytest.raises(DataError, match=r"no images found \(looked for .*\.jfif.*1 file skipped \(not an image type"):
        list_images(tmp_path / "none")


def _chain_model(steps: list[tuple[str, np.ndarray | None, bool]], cast_to: int, *, before_cast: str | None = None,
                 constant_node: bool = False) -> onnx.ModelProto:
    """uint8 NHWC input -> [before_cast] -> Cast(cast_to) -> Transpose -> each (op, constant, tensor_first)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "x"
    if before_cast:
        nodes.append(helper.make_node(before_cast, [x], ["pre"], **({"perm": [0, 1, 2, 3]} if before_cast == "Transpose"
                                                                   else {})))
        x = "pre"
    nodes.append(helper.make_node("Cast", [x], ["cast"], to=cast_to))
    nodes.append(helper.make_node("Transpose", ["cast"], ["nchw"], perm=[0, 3, 1, 2]))
    cur = "nchw"
    np_type = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}[cast_to]
    for k, (op, const, tensor_first) in enumerate(steps):
        cname = f"c{k}"
        value = np.asarray(const, np_type)
        if constant_node and value.size == 1 and np_type is np.float32:
            nodes.append(helper.make_node("Constant", [], [cname], value_float=float(value.ravel()[0])))
        else:
            inits.append(numpy_helper.from_array(value.reshape((1, -1, 1, 1)) if value.size == 3 else value, cname))
        ins = [cur, cname] if tensor_first else [cname, cur]
        nodes.append(helper.make_node(op, ins, [f"t{k}"]))
        cur = f"t{k}"
    elem = cast_to
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 4, 4, 3])],
                              [helper.make_tensor_value_info(n, elem, [None, None, None, None] if n != "cast" else [None, 4, 4, 3]) for n in ["cast", "nchw"] +
                               [f"t{k}" for k in range(len(steps))]], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("seed", range(12))
def test_pinned_ranges_hold_every_value_the_model_computes(seed: int) -> None:
    """A review: interval arithmetic was tested on its own, never against what a model computes. Random chains
    (reversed Sub, Mul and Div by mixed signs, per-channel constants, a Constant node); every output of every
    input tried (all 0, all 255, each channel's extremes, random pixels) lies within its pin."""
    import onnxruntime as ort
    from onnx import TensorProto

    from uopsl.calibration.ranges import input_bound_ranges

    rng = np.random.default_rng(seed)
    steps: list[tuple[str, np.ndarray | None, bool]] = []
    for _ in range(int(rng.integers(1, 4))):
        op = str(rng.choice(["Add", "Sub", "Mul", "Div"]))
        const = rng.uniform(-300, 300, size=int(rng.choice([1, 3]))).astype(np.float32)
        if op in ("Mul", "Div"):
            const = rng.uniform(0.003, 3, size=const.size).astype(np.float32) * rng.choice([-1, 1], size=const.size)
        tensor_first = bool(rng.integers(0, 2)) if op != "Div" else True
        steps.append((op, const, tensor_first))
    model = _chain_model(steps, TensorProto.FLOAT, before_cast=["Identity", "Transpose", None][seed % 3],
                         constant_node=seed % 2 == 0)
    onnx.checker.check_model(model)
    pins = input_bound_ranges(model)
    names = ["cast", "nchw"] + [f"t{k}" for k in range(len(steps))]
    assert set(pins) == set(names)
    inputs = [np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8),
              rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)]
    for corner in range(8):  # each channel at 0 or 255
        inputs.append(np.broadcast_to(np.array([255 * ((corner >> c) & 1) for c in range(3)], np.uint8),
                                      (1, 4, 4, 3)).copy())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reached = {n: [np.inf, -np.inf] for n in names}
    for x in inputs:
        for n, v in zip(names, sess.run(names, {"x": x})):
            lo, hi = pins[n]
            assert lo <= v.min() and v.max() <= hi, (n, steps, (lo, hi), (v.min(), v.max()))
            reached[n] = [min(reached[n][0], float(v.min())), max(reached[n][1], float(v.max()))]
    # One op of per-channel constants (or scalar constants throughout): the pins are reached, so exact.
    if sum(c.size > 1 for _, c, _ in steps) <= 1:
        for n in names:
            assert reached[n] == pytest.approx(pins[n], rel=1e-6, abs=1e-6), (n, steps)


def test_after_a_float16_cast_only_the_cast_and_layout_are_pinned(caplog: pytest.LogCaptureFixture) -> None:
    """float16 arithmetic rounds otherwise than the float32 bounds (255 - 0.05 is 255 in float16)."""
    from onnx import TensorProto

    from uopsl.calibration.ranges import input_bound_ranges

    model = _chain_model([("Sub", np.array([0.05], np.float32), True)], TensorProto.FLOAT16)
    assert input_bound_ranges(model) == {"cast": (0.0, 255.0), "nchw": (0.0, 255.0)}
    # A uint8 input that reaches no cast pins nothing, and says so.
    no_cast = _chain_model([], TensorProto.FLOAT)
    del no_cast.graph.node[0]  # the Cast
    no_cast.graph.node[0].input[0] = "x"
    with caplog.at_level(logging.WARNING, logger="uopsl.calibration.ranges"):
        assert input_bound_ranges(no_cast) == {}
    assert "reaches no Cast to float" in caplog.text
