"""Session 36 mutation audit of the export and quantization code: tests for the gaps it found.

Each test here failed with one single-point bug (a "mutant") applied to the code it names and passes on the
code as written; the expected values are worked out by hand (in the docstrings) or by a plain re-implementation,
not read back from the code under test. Kept fast: small hand-built ONNX graphs, or the 64 px TinyScreen model
with a few images and no bias correction or weight rounding.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinymodel import export_tiny_onnx, random_fundus_batch
from uopsl.runtime.errors import BundleError, ConfigError

RAW = {"bias_correction": False, "rounding": "nearest"}  # the quantizer's own output, nothing fitted on images


def _model(nodes: list, inputs: list, outputs: list, inits: list = (), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    return export_tiny_onnx(tmp_path_factory.mktemp("s36") / "tiny.onnx", num_classes=3, size=64)


@pytest.fixture(scope="module")
def calib(tiny: Path):  # type: ignore[no-untyped-def]
    from uopsl.calibration.dataset import CalibrationSet

    return CalibrationSet.from_images(random_fundus_batch(4, 64, seed=1))


@pytest.fixture(scope="module")
def table(tiny: Path, calib):  # type: ignore[no-untyped-def]
    from uopsl.calibration.ranges import collect_statistics

    return collect_statistics(tiny, calib, batch_size=4, show_progress=False).table("minmax")


# -- quantize: the sensitivity ranking's error measure -------------------------------------------------------
def test_output_error_is_the_largest_probability_change_and_the_mean_logits_cosine() -> None:
    """probs: |diffs| are 0, 0.3, 0.05, 0 -> max 0.3 (the mean would be 0.0875).
    logits row 1: (1, 0) vs (1, 1): cos = 1 / (1 * sqrt 2) = 0.70711; row 2: both zero, counted as agreeing (1.0);
    mean = (0.70711 + 1) / 2 = 0.85355."""
    from uopsl.export.quantize import output_error

    p0 = np.array([[0.1, 0.5], [0.2, 0.3]])
    p1 = np.array([[0.1, 0.8], [0.25, 0.3]])
    l0 = np.array([[1.0, 0.0], [0.0, 0.0]])
    l1 = np.array([[1.0, 1.0], [0.0, 0.0]])
    max_abs, cos = output_error((p0, l0), (p1, l1))
    assert max_abs == pytest.approx(0.3, abs=1e-12)
    assert cos == pytest.approx((1 / math.sqrt(2) + 1.0) / 2, abs=1e-12)


# -- onnx_export: the opset limits ----------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [14, 20])
def test_export_accepts_both_ends_of_its_opset_range(tmp_path: Path, opset: int) -> None:
    """MIN_OPSET 14 and MAX_OPSET 20 are inside the range (``uopsl export --opset`` documents 14..20)."""
    from tinymodel import TinyScreen
    from uopsl.export.onnx_export import export_onnx

    report = export_onnx(TinyScreen(3), tmp_path / "m.onnx", 64, opset=opset)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert report.opset == opset
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert report.outputs["probs"] == ["batch", 3]


@pytest.mark.parametrize("opset", [13, 21])
def test_export_refuses_opsets_outside_14_to_20(tmp_path: Path, opset: int) -> None:
    from tinymodel import TinyScreen
    from uopsl.export.onnx_export import export_onnx

    with pytest.raises(ConfigError, match=r"opset must be in 14\.\.20"):
        export_onnx(TinyScreen(3), tmp_path / "m.onnx", 64, opset=opset)
    assert not (tmp_path / "m.onnx").exists()


# -- quantize: what each variant writes ---------------------------------------------------------------------
def test_trt_variant_leaves_conv_outputs_unquantized_and_gives_each_reader_its_own_pair(tmp_path, tiny, table) -> None:
    """TensorRT variant (module doc): Conv/Gemm/MatMul outputs carry no Q/DQ of their own (TensorRT fuses the
    activation after them), and a tensor read by several nodes gets one Q/DQ pair per reader
    (``DedicatedQDQPair``). TinyScreen's tokens (Transpose_1) and attention (Softmax) each have two readers."""
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    q = onnx.load(quantize_model(tiny, table, tmp_path / "trt.onnx", QuantizeConfig(variant="trt", **RAW),
                                 show_progress=False).path)
    producer = {t: n for n in q.graph.node for t in n.output}
    readers: dict[str, list[str]] = {}
    for n in q.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n.name)
    quantized_sources = [producer[n.input[0]].op_type for n in q.graph.node
                         if n.op_type == "QuantizeLinear" and n.input[0] in producer]
    assert quantized_sources and "Conv" not in quantized_sources
    inits = {i.name for i in q.graph.initializer}
    activation_dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
                      and producer.get(n.input[0]) is not None and producer[n.input[0]].input[0] not in inits]
    assert activation_dqs and all(len(readers.get(n.output[0], [])) == 1 for n in activation_dqs)
    pairs_per_tensor: dict[str, int] = {}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            pairs_per_tensor[n.input[0]] = pairs_per_tensor.get(n.input[0], 0) + 1
    assert pairs_per_tensor["/Softmax_output_0"] == 2 and pairs_per_tensor["/Transpose_1_output_0"] == 2


def test_reduce_range_and_per_tensor_scales_are_in_the_file_and_its_record(tmp_path, tiny, table) -> None:
    """``reduce_range``: weights on ONNX Runtime's reduced grid [-64, 64]; without it the full symmetric s8 grid,
    where max-abs scaling puts the largest weight of each tensor on +-127. ``per_channel=False``: one scale per
    weight tensor. The manifest record (manifest_info) must say what the file holds."""
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    def quantized(config: QuantizeConfig, name: str):  # type: ignore[no-untyped-def]
        r = quantize_model(tiny, table, tmp_path / name, config, show_progress=False)
        q = onnx.load(r.path)
        inits = _inits(q)
        dqs = [n for n in q.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
        return r, [inits[n.input[0]] for n in dqs], [inits[n.input[1]] for n in dqs]

    r7, reduced, scales7 = quantized(QuantizeConfig(reduce_range=True, per_channel=False, **RAW), "rr.onnx")
    r8, full, scales8 = quantized(QuantizeConfig(**RAW), "full.onnx")
    assert len(reduced) == len(full) == 5  # four convolutions and the classifier weights
    assert all(int(np.abs(w.astype(np.int32)).max()) == 64 for w in reduced)
    assert all(int(np.abs(w.astype(np.int32)).max()) == 127 for w in full)
    assert all(s.shape == () for s in scales7) and any(s.shape != () for s in scales8)
    assert (r7.manifest_info()["reduce_range"], r7.manifest_info()["per_channel"]) == (True, False)
    assert (r8.manifest_info()["reduce_range"], r8.manifest_info()["per_channel"]) == (False, True)


# -- quantize: the sensitivity pass and --auto-exclude -------------------------------------------------------
def test_sensitivity_ties_on_probs_are_broken_by_the_lower_logits_cosine(tiny, table, calib, monkeypatch) -> None:
    """Ranking key: largest max |prob diff| first; equal ones, lowest logits cosine (worse) first. The measured
    errors are replaced by chosen ones: /Sigmoid and /Softmax tie at 0.5 and /Sigmoid's cosine is lower, so the
    order starts /Sigmoid, /Softmax, then /Add (0.2), then the rest (0.1)."""
    from uopsl.export import quantize as qz

    current: list[str] = []
    real = qz._quantize_proto

    def spy(model, table_, config, *, nodes_to_exclude=(), nodes_to_quantize=()):  # type: ignore[no-untyped-def]
        current[:] = list(nodes_to_quantize)
        return real(model, table_, config, nodes_to_exclude=nodes_to_exclude, nodes_to_quantize=nodes_to_quantize)

    chosen = {"/Softmax": (0.5, 0.9), "/Sigmoid": (0.5, 0.2), "/Add": (0.2, 0.99)}
    monkeypatch.setattr(qz, "_quantize_proto", spy)
    monkeypatch.setattr(qz, "output_error", lambda ref, test: chosen.get(current[0], (0.1, 0.999)))
    sens = qz.layer_sensitivities(tiny, table, calib, qz.QuantizeConfig(sensitivity_images=2, **RAW),
                                  show_progress=False)
    assert [s.node for s in sens[:3]] == ["/Sigmoid", "/Softmax", "/Add"]
    assert (sens[0].probs_max_abs, sens[0].logits_cosine) == (0.5, 0.2)


def test_auto_exclude_may_take_every_candidate_and_counts_only_layers_not_already_float(tmp_path, tiny, table,
                                                                                          calib) -> None:
    """TinyScreen's compute layers: 4 Conv, 2 MatMul, Mul, Add, Softmax, Sigmoid. Excluding the op types Conv,
    MatMul, Mul and Add leaves 2 candidates (/Softmax, /Sigmoid): --auto-exclude 2 takes both, 3 is refused
    (the 8 layers already kept in float are no candidates)."""
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    kept = ("Conv", "MatMul", "Mul", "Add")
    r = quantize_model(tiny, table, tmp_path / "q.onnx",
                       QuantizeConfig(exclude=kept, auto_exclude=2, sensitivity_images=2, **RAW),
                       calib_set=calib, show_progress=False)
    assert sorted(r.auto_excluded) == ["/Sigmoid", "/Softmax"] and len(r.excluded_nodes) == 10
    with pytest.raises(ConfigError, match="more layers than the 2 candidate layers"):
        quantize_model(tiny, table, tmp_path / "q3.onnx",
                       QuantizeConfig(exclude=kept, auto_exclude=3, sensitivity_images=2, **RAW),
                       calib_set=calib, show_progress=False)


# -- quantize: input checks ------------------------------------------------------------------------------------
def _relu_chain(opset: int, names: tuple[str, ...] = ("r0", "r1")) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    nodes, prev = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Relu", [prev], [f"t{i}"], name=name))
        prev = f"t{i}"
    return _model(nodes, [x], [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])], opset=opset)


@pytest.mark.parametrize("opset,ok", [(12, False), (13, True), (20, True), (21, False)])
def test_quantize_reads_opsets_13_to_20(tmp_path: Path, opset: int, ok: bool) -> None:
    """Per-channel Q/DQ needs opset 13; TensorRT 10 parses up to 20 (quantize.MAX_OPSET)."""
    from uopsl.export.quantize import _load_prepared

    path = tmp_path / "m.onnx"
    onnx.save(_relu_chain(opset), str(path))
    if ok:
        assert [n.name for n in _load_prepared(path).graph.node] == ["r0", "r1"]
    else:
        with pytest.raises(ConfigError, match=rf"opset {opset}; INT8 QDQ export needs 13 <= opset <= 20"):
            _load_prepared(path)


def test_nodes_are_given_unique_names_before_quantization(tmp_path: Path) -> None:
    """--exclude and the sensitivity pass name nodes: a second node called "r" and an unnamed one are renamed
    ``<op>_<index>``, the first "r" keeps its name."""
    from uopsl.export.quantize import _load_prepared

    path = tmp_path / "m.onnx"
    onnx.save(_relu_chain(17, ("r", "r", "")), str(path))
    assert [n.name for n in _load_prepared(path).graph.node] == ["r", "Relu_1", "Relu_2"]


@pytest.mark.parametrize("field", ["sensitivity_images", "correction_images"])
def test_image_counts_of_the_fitting_steps_must_be_positive(field: str) -> None:
    from uopsl.export.quantize import QuantizeConfig

    assert getattr(QuantizeConfig(**{field: 1}), field) == 1
    with pytest.raises(ConfigError, match=f"{field} must be >= 1, got 0"):
        QuantizeConfig(**{field: 0})


# -- quantize: graph helpers ---------------------------------------------------------------------------------------
def _trunk_and_head() -> onnx.ModelProto:
    """Cast -> /trunk/Conv -> /trunk/Relu -> /Reshape -> /MatMul -> /Softmax (the shape of a `uopsl export` graph)."""
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 2, 2])
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])
    inits = [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array([1, 16], np.int64), "shape"),
             numpy_helper.from_array(np.ones((16, 2), np.float32), "proto")]
    nodes = [helper.make_node("Cast", ["image"], ["xf"], name="/Cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["xf", "w"], ["c"], name="/trunk/Conv"),
             helper.make_node("Conv", ["c", "w2"], ["c2"], name="/trunk/Conv_1"),
             helper.make_node("Relu", ["c"], ["r"], name="/trunk/Relu"),
             helper.make_node("Reshape", ["r", "shape"], ["flat"], name="/Reshape"),
             helper.make_node("MatMul", ["flat", "proto"], ["logits"], name="/MatMul"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=1)]
    del nodes[2]  # one trunk convolution is enough
    return _model(nodes, [x], [out], inits)


def test_the_head_group_is_the_compute_layers_after_the_encoder() -> None:
    """@head: nodes after the first /trunk/ node, not named /trunk/, whose op computes (LAYER_OPS): the MatMul and
    the Softmax; the Reshape only moves data and the Cast comes before the encoder."""
    from uopsl.export.quantize import head_nodes, resolve_exclusions

    m = _trunk_and_head()
    assert head_nodes(m) == ("/MatMul", "/Softmax")
    assert resolve_exclusions(m, ("@head",)) == ("/MatMul", "/Softmax")


def test_exclusions_name_each_node_once_in_the_order_given() -> None:
    """``Conv`` (an op type) then ``/trunk/Conv`` (a node name, already matched) then ``/Softmax``: each node once."""
    from uopsl.export.quantize import resolve_exclusions

    m = _trunk_and_head()
    assert resolve_exclusions(m, ("Conv", "/trunk/Conv", "/Softmax", "Softmax")) == ("/trunk/Conv", "/Softmax")


# -- layerwise: the measures -------------------------------------------------------------------------------------
def test_sqnr_is_capped_at_120_db_for_a_tiny_but_nonzero_noise() -> None:
    """10 log10(1e20 / 1) = 200 dB, reported as the 120 dB cap; 10 log10(1e6 / 1) = 60 dB is not capped."""
    from uopsl.export.layerwise import SQNR_CAP_DB, sqnr_db

    assert sqnr_db(1e20, 1.0) == SQNR_CAP_DB == 120.0
    assert sqnr_db(1e6, 1.0) == pytest.approx(60.0)


def test_fake_quantize_clips_to_the_integer_range_and_removes_the_zero_point() -> None:
    """u8, scale 0.1, zero point 10: 0.5 -> q = 5 + 10 = 15 -> (15 - 10) * 0.1 = 0.5; -2.0 -> q = -20 + 10 clipped
    to 0 -> -1.0; 30.0 -> q = 310 clipped to 255 -> 24.5. s8, scale 0.01, zero point 0: -5 -> q = -500 clipped to
    -128 -> -1.28; 5 -> 127 -> 1.27."""
    from uopsl.export.layerwise import fake_quantize

    u8 = fake_quantize(np.array([0.5, -2.0, 30.0]), np.array(0.1, np.float32), np.array(10, np.uint8))
    np.testing.assert_allclose(u8, [0.5, -1.0, 24.5], atol=1e-6)
    s8 = fake_quantize(np.array([-5.0, 5.0]), np.array(0.01, np.float32), np.array(0, np.int8))
    np.testing.assert_allclose(s8, [-1.28, 1.27], atol=1e-6)


# -- int8_arithmetic: where the CPU's kernels count as faithful -------------------------------------------------
def test_kernels_exactly_20_db_from_the_file_are_faithful() -> None:
    """exact (10, 0), candidate (11, 0): 10 log10(100 / 1) = 20.0 dB exactly, the FAITHFUL_DB limit, which counts
    as faithful (>=), so no advice; the file equals the reference (120 dB)."""
    from uopsl.export.int8_arithmetic import arithmetic_check

    exact = np.array([[10.0, 0.0], [10.0, 0.0]], np.float32)
    cand = np.array([[11.0, 0.0], [11.0, 0.0]], np.float32)
    a = arithmetic_check(exact, cand, exact, backend="ort-cpu", cpu_int8="x86-no-vnni", reduce_range=False)
    assert a["kernels_db"] == 20.0 and a["file_db"] == 120.0 and a["backend_db"] == 20.0
    assert a["faithful"] is True and a["note"] is None


def test_kernels_as_far_off_as_the_file_itself_get_no_advice_and_top1_is_the_files() -> None:
    """reference (1, 0), file (0, 1), candidate (1, 0): file 10 log10(1 / 2) = -3.01 dB from the reference, the
    kernels -3.01 dB from the file: equal, so the CPU is not the larger error (no note). The file's own top-1
    agreement is 0 (it picks class 1, the reference class 0), though the candidate agrees with the reference."""
    from uopsl.export.int8_arithmetic import arithmetic_check

    ref = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    exact = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    a = arithmetic_check(ref, ref.copy(), exact, backend="openvino", cpu_int8="x86-no-vnni", reduce_range=False)
    assert a["file_db"] == a["kernels_db"] == pytest.approx(10 * math.log10(0.5), abs=0.01)
    assert a["backend_db"] == 120.0 and a["faithful"] is False
    assert a["note"] is None and a["file_top1"] == 0.0


# -- onnx_export: graph tidying and the fixed-size check ------------------------------------------------------
def test_an_identity_that_writes_a_graph_output_is_kept(tmp_path: Path) -> None:
    """A module returning one tensor as two outputs (here logits as ``probs`` too) exports an Identity that
    produces the second output; dropping it, like the exporter's other Identity nodes, would leave that output
    without a producer. Both outputs must compute the same values."""
    import onnxruntime as ort
    from tinymodel import TinyScreen
    from uopsl.export.onnx_export import export_onnx

    class Same(TinyScreen):
        def forward(self, image):  # type: ignore[no-untyped-def]
            _, logits, maps = super().forward(image)
            return logits, logits, maps

    export_onnx(Same(3), tmp_path / "m.onnx", 64)
    x = random_fundus_batch(2, 64, seed=3)
    probs, logits = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probs", "logits"], {"image": x})
    np.testing.assert_array_equal(probs, logits)


def test_a_class_dimension_left_symbolic_is_refused(tmp_path: Path) -> None:
    """``probs[:, :batch + 2]``: shape inference cannot size the class axis (it depends on the batch), and the
    runtime and Triton compare the class count with the manifest, so the export stops and names the output."""
    from tinymodel import TinyScreen
    from uopsl.export.onnx_export import export_onnx

    class Sym(TinyScreen):
        def forward(self, image):  # type: ignore[no-untyped-def]
            probs, logits, maps = super().forward(image)
            return probs[:, : image.shape[0] + 2], logits, maps

    with pytest.raises(ConfigError, match=r"left outputs without fixed sizes \(\{'probs': \['batch', "):
        export_onnx(Sym(3), tmp_path / "m.onnx", 64)
    assert not (tmp_path / "m.onnx").exists()


def test_a_scalar_int_constant_becomes_an_int64_initializer() -> None:
    """ONNX defines ``value_int`` as int64 (and ``value_float`` as float32)."""
    from uopsl.export.onnx_export import constants_to_initializers

    y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    m = _model([helper.make_node("Constant", [], ["k"], value_int=3),
                helper.make_node("Identity", ["k"], ["y"])], [], [y])
    assert constants_to_initializers(m, onnx) == 1
    k = _inits(m)["k"]
    assert k.dtype == np.int64 and k.shape == () and int(k) == 3


def test_describe_onnx_reads_the_default_domain_opset_and_counts(tiny: Path) -> None:
    """TinyScreen is exported at opset 17 in the default domain (written as ""), with a dynamic batch input."""
    from collections import Counter

    from uopsl.export.onnx_export import describe_onnx

    model = onnx.load(str(tiny))
    r = describe_onnx(tiny)
    assert r.opset == 17
    assert r.ops == dict(Counter(n.op_type for n in model.graph.node)) and r.op_count == len(model.graph.node)
    assert r.inputs["image"][1:] == [64, 64, 3] and isinstance(r.inputs["image"][0], str)
    assert r.initializers == len(model.graph.initializer)


# -- triton ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle written the way `uopsl export` writes one (export_onnx -> write_bundle) from a TinyScreen whose site
    maps have a static shape (3, 8, 8), with the FP32 file also listed as an s8 (TensorRT) INT8 file and as an
    FP16 file: the writer decides what to serve from the manifest's precision and parity records, not the bytes."""
    from tinymodel import TinyScreen
    from uopsl.export.bundle_writer import add_file, write_bundle
    from uopsl.export.onnx_export import export_onnx
    from uopsl.runtime.bundle import ClassSpec
    from uopsl.runtime.preprocess import PreprocessConfig

    class Fixed(TinyScreen):
        def forward(self, image):  # type: ignore[no-untyped-def]
            probs, logits, maps = super().forward(image)
            return probs, logits, maps.reshape(-1, 3, 8, 8)

    root = tmp_path_factory.mktemp("triton36")
    export_onnx(Fixed(3), root / "fp32.onnx", 64)
    classes = [ClassSpec(n, (f"{n} phrase",), 0.5, r, seen_in_training=s)
               for n, r, s in zip(("normal", "a", "b"), (False, True, True), (True, True, False))]
    out = root / "bundle"
    write_bundle(out, root / "fp32.onnx", classes, "sigmoid", PreprocessConfig(size=64),
                 class_bank=np.eye(3, 8, dtype=np.float32), site_map_size=(8, 8), opset=17)
    add_file(out, root / "fp32.onnx", "model.int8.trt.onnx", "onnx", "int8-qdq-s8")
    add_file(out, root / "fp32.onnx", "model.fp16.onnx", "onnx", "fp16")
    return out


def _verdict(verdict: str, cpu: str = "x86-vnni") -> dict:
    from uopsl.runtime.bundle import PARITY_GATE_DEFAULTS

    return {"passed": verdict == "PASS", "verdict": verdict, "reasons": [] if verdict == "PASS" else ["flip"],
            "n_images": 150, "gates": dict(PARITY_GATE_DEFAULTS), "data": {"spec": "synthetic:test"},
            "reference": "PyTorch", "machine": {"cpu_int8": cpu}}


def _left_out(repo: Path) -> dict[str, str]:
    return json.loads((repo / "uopsl_triton.json").read_text())["left_out"]


def test_the_tensorrt_int8_file_on_a_gpu_needs_its_pass_on_ort_trt(served: Path, tmp_path: Path, monkeypatch) -> None:
    """On a GPU the s8 file runs through ONNX Runtime's TensorRT provider (ort-trt), not CUDA: a PASS on ort-cuda
    does not stand for it. Under KIND_AUTO (the default for it) Triton may put it on the CPU or the GPU, so it
    needs a PASS on ort-cpu and on ort-trt."""
    import uopsl.runtime.bundle as rb
    from uopsl.export.bundle_writer import record_parity
    from uopsl.export.triton import write_triton_repository

    monkeypatch.setattr(rb, "int8_cpu_class", lambda: "x86-vnni")
    b = Path(shutil.copytree(served, tmp_path / "b"))
    record_parity(b, {"model.int8.trt.onnx": {"ort-cuda": _verdict("PASS"), "ort-cpu": _verdict("PASS")}})
    gpu = write_triton_repository(b, tmp_path / "gpu", onnx_device="gpu")
    assert _left_out(gpu)["model.int8.trt.onnx"].startswith("not validated where Triton runs it (ort-trt): ort-trt: ")
    auto = write_triton_repository(b, tmp_path / "auto")
    assert _left_out(auto)["model.int8.trt.onnx"].startswith(
        "not validated where Triton runs it (ort-cpu, ort-trt): ort-trt: ")
    record_parity(b, {"model.int8.trt.onnx": {"ort-trt": _verdict("PASS")}})
    served_now = write_triton_repository(b, tmp_path / "auto2")
    assert "model.int8.trt.onnx" not in _left_out(served_now)
    params = (served_now / "uopsl_int8_trt" / "config.pbtxt").read_text()
    assert 'key: "uopsl_parity" value: { string_value: "PASS on ort-cpu, ort-trt" }' in params


def test_a_fail_of_a_non_int8_file_counts_whatever_cpu_it_was_judged_on(served: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """Only 8-bit sums differ between CPUs with and without VNNI: an FP16 file's FAIL on ort-cpu, recorded on
    another kind of CPU, still keeps it out, even with include_unvalidated."""
    import uopsl.runtime.bundle as rb
    from uopsl.export.bundle_writer import record_parity
    from uopsl.export.triton import write_triton_repository

    monkeypatch.setattr(rb, "int8_cpu_class", lambda: "x86-vnni")
    b = Path(shutil.copytree(served, tmp_path / "b"))
    record_parity(b, {"model.fp16.onnx": {"ort-cpu": _verdict("FAIL", cpu="x86-no-vnni")}})
    repo = write_triton_repository(b, tmp_path / "r", onnx_device="cpu", include_unvalidated=True)
    assert _left_out(repo)["model.fp16.onnx"].startswith("failed parity validation where Triton runs it (ort-cpu)")


def test_seen_in_training_reaches_the_triton_parameters(served: Path, tmp_path: Path) -> None:
    """The fixture's classes: seen in training True, True, False (the third described only); referable False,
    True, True; a client needs the unseen flag to say a finding is zero-shot."""
    from uopsl.export.triton import write_triton_repository

    repo = write_triton_repository(served, tmp_path / "r")
    text = (repo / "uopsl" / "config.pbtxt").read_text()
    assert 'key: "uopsl_seen_in_training" value: { string_value: "[true, true, false]" }' in text
    assert 'key: "uopsl_referable" value: { string_value: "[false, true, true]" }' in text


def _rewired(src: Path, dest: Path, edit) -> None:  # type: ignore[no-untyped-def]
    m = onnx.load(str(src))
    edit(m)
    onnx.save(m, str(dest))


@pytest.mark.parametrize("case", ["classes", "input_name", "static_batch"])
def test_a_graph_that_breaks_the_manifest_contract_is_not_served(served: Path, tmp_path: Path, case: str) -> None:
    """Triton's configuration promises what the graph does: a model with 2 classes where the manifest lists 3, an
    input not called ``image``, or a batch axis fixed at 1 (Triton batching needs it dynamic) is refused."""
    from uopsl.export.bundle_writer import add_file
    from uopsl.export.triton import write_triton_repository

    b = Path(shutil.copytree(served, tmp_path / "b"))

    def edit(m: onnx.ModelProto) -> None:
        if case == "classes":
            for o in m.graph.output:
                if o.name in ("probs", "logits"):
                    o.type.tensor_type.shape.dim[1].dim_value = 2
        elif case == "input_name":
            m.graph.input[0].name = "picture"
            for n in m.graph.node:
                for i, t in enumerate(n.input):
                    if t == "image":
                        n.input[i] = "picture"
        else:
            for v in [*m.graph.input, *m.graph.output]:
                v.type.tensor_type.shape.dim[0].dim_value = 1

    _rewired(b / "model.onnx", tmp_path / "bad.onnx", edit)
    add_file(b, tmp_path / "bad.onnx", "model.onnx", "onnx", "fp32")
    match = {"classes": r"'probs' has per-sample shape \[2\], manifest implies \[3\]",
             "input_name": r"inputs \['picture'\], manifest says \['image'\]",
             "static_batch": r"has shape \[1, 64, 64, 3\]; a batching Triton model needs a dynamic batch axis"}[case]
    with pytest.raises(BundleError, match=match):
        write_triton_repository(b, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# -- bias_correction: int32 biases ---------------------------------------------------------------------------------
def _one_conv_pair(bias_int: int, bias_scale: float, shared: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """FP32: y = 1.0 * x + b (1x1 conv, one channel). INT8: the weight dequantizes to 0.5 (q = 1, scale 0.5) and the
    bias is int32 ``bias_int`` behind a DequantizeLinear of scale ``bias_scale``. On inputs of 2.0 the INT8 output's
    mean sits 2 * (1.0 - 0.5) = 1.0 below FP32: the correction adds 1.0 / bias_scale steps to the int32 bias.
    ``shared``: a second conv (named B, reading A's output) reads the same dequantized bias."""
    b = np.float32(bias_int * bias_scale)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 2, 2])
    f_inits = [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
               numpy_helper.from_array(np.array([b], np.float32), "b")]
    f_nodes = [helper.make_node("Conv", ["x", "w", "b"], ["a" if shared else "y"], name="A")]
    if shared:
        f_nodes.append(helper.make_node("Conv", ["a", "w", "b"], ["y"], name="B"))
    q_inits = [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.int8), "w_q"),
               numpy_helper.from_array(np.array(0.5, np.float32), "w_s"),
               numpy_helper.from_array(np.array([bias_int], np.int32), "b_q"),
               numpy_helper.from_array(np.array([bias_scale], np.float32), "b_s")]
    q_nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], name="dq_w"),
               helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="dq_b"),
               helper.make_node("Conv", ["x", "w", "b"], ["a" if shared else "y"], name="A")]
    if shared:
        q_nodes.append(helper.make_node("Conv", ["a", "w", "b"], ["y"], name="B"))
    return _model(f_nodes, [x], [y], f_inits), _model(q_nodes, [x], [y], q_inits)


def test_an_int32_bias_correction_is_rounded_to_bias_steps_and_saturates_instead_of_wrapping() -> None:
    """Scale 1/64: +1.0 is 64 steps, so bias 100 becomes 164. Scale 1e-9 with bias 2**31 - 11: +1e9 steps overflow
    int32, and the bias stops at 2**31 - 1 (wrapping round would make it hugely negative)."""
    from uopsl.export.bias_correction import correct_biases

    images = np.full((4, 1, 2, 2), 2.0, np.float32)
    fm, qm = _one_conv_pair(100, 1 / 64)
    assert correct_biases(fm, qm, images, show_progress=False) == 1
    assert int(_inits(qm)["b_q"][0]) == 164
    fm, qm = _one_conv_pair(2**31 - 11, 1e-9)
    assert correct_biases(fm, qm, images, show_progress=False) == 1
    assert int(_inits(qm)["b_q"][0]) == 2**31 - 1


def test_an_int32_bias_shared_by_two_layers_is_left_alone() -> None:
    """Correcting one layer's copy would move the other layer's output too: both are skipped, the bias unchanged."""
    from uopsl.export.bias_correction import correct_biases

    fm, qm = _one_conv_pair(100, 1 / 64, shared=True)
    assert correct_biases(fm, qm, np.full((4, 1, 2, 2), 2.0, np.float32), show_progress=False) == 0
    assert int(_inits(qm)["b_q"][0]) == 100


# -- layerwise: the report on a hand-built QDQ graph -------------------------------------------------------------
def _two_branch_models(tmp_path: Path, sa: float, sb: float) -> tuple[Path, Path]:
    """FP32: x = Cast(image); A: a = x * 1; B: b = x * 1; C: c = a + b (the output).
    QDQ: x through a u8 pair of scale 1 (exact on pixel values); a and b through u8 pairs of scales ``sa``, ``sb``
    (zero point 0), which clip everything above 255 * scale; C adds the dequantized a and b."""
    img = helper.make_tensor_value_info("image", TensorProto.UINT8, [None, 4, 4, 1])
    out = helper.make_tensor_value_info("c", TensorProto.FLOAT, [None, 4, 4, 1])
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    cast = helper.make_node("Cast", ["image"], ["x"], name="cast", to=TensorProto.FLOAT)
    f_nodes = [cast, helper.make_node("Mul", ["x", "one"], ["a"], name="A"),
               helper.make_node("Mul", ["x", "one"], ["b"], name="B"),
               helper.make_node("Add", ["a", "b"], ["c"], name="C")]
    fpath, qpath = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_model(f_nodes, [img], [out], [one]), str(fpath))
    q_inits = [one, numpy_helper.from_array(np.array(0, np.uint8), "zp")]
    q_nodes = [cast]

    def pair(t: str, scale: float) -> str:
        q_inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{t}_s"))
        q_nodes.extend([helper.make_node("QuantizeLinear", [t, f"{t}_s", "zp"], [f"{t}_q"], name=f"{t}_Q"),
                        helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_s", "zp"], [f"{t}_d"], name=f"{t}_DQ")])
        return f"{t}_d"

    xd = pair("x", 1.0)
    q_nodes.append(helper.make_node("Mul", [xd, "one"], ["a"], name="A"))
    ad = pair("a", sa)
    q_nodes.append(helper.make_node("Mul", [xd, "one"], ["b"], name="B"))
    bd = pair("b", sb)
    q_nodes.append(helper.make_node("Add", [ad, bd], ["c"], name="C"))
    onnx.save(_model(q_nodes, [img], [out], q_inits), str(qpath))
    return fpath, qpath


def test_layerwise_figures_ranking_and_suggestions_on_a_graph_worked_by_hand(tmp_path: Path) -> None:
    """Re-implemented here: a_q = min(round(x / sa), 255) * sa (same for b), c_q = a_q + b_q, SQNR = 10 log10(sum
    ref^2 / sum err^2). A and B each read the exact x (input SQNR: the 120 dB cap), so each loses 120 - its own
    SQNR; C's worst input is A's output. A's range (sa: clips above 63.75) is the worse one, so A is the first
    suggestion, with C (the other reader of a: the pair of a is shared), then B. max_suggestions=1 keeps A's."""
    from uopsl.export.layerwise import layerwise_errors

    sa, sb = 0.25, 0.75
    fpath, qpath = _two_branch_models(tmp_path, sa, sb)
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    x = images.astype(np.float64)

    def sq(ref: np.ndarray, test: np.ndarray) -> float:
        return min(120.0, 10 * math.log10((ref**2).sum() / ((test - ref) ** 2).sum()))

    a_q, b_q = np.minimum(np.round(x / sa), 255) * sa, np.minimum(np.round(x / sb), 255) * sb
    s_a, s_b, s_c = sq(x, a_q), sq(x, b_q), sq(2 * x, a_q + b_q)
    assert s_a < s_b < 30.0  # both ranges clip; a's more
    report = layerwise_errors(fpath, qpath, images, min_drop_db=3.0)
    by = {e.node: e for e in report.layers}
    assert set(by) == {"A", "B", "C"}
    assert by["A"].sqnr_db == pytest.approx(s_a, abs=1e-3) and by["B"].sqnr_db == pytest.approx(s_b, abs=1e-3)
    assert by["C"].sqnr_db == pytest.approx(s_c, abs=1e-3)
    assert by["A"].input_sqnr_db == by["B"].input_sqnr_db == 120.0
    assert by["C"].input_sqnr_db == pytest.approx(s_a, abs=1e-3)  # the worse of its two inputs
    assert by["C"].sqnr_drop_db == pytest.approx(s_a - s_c, abs=2e-3)
    assert by["A"].range_sqnr_db == pytest.approx(s_a, abs=1e-3)  # the loss is its range's
    assert by["A"].exclude == ("A", "C") and by["B"].exclude == ("B", "C")
    assert [e.node for e in report.layers] == sorted(by, key=lambda n: by[n].sqnr_db)
    assert report.suggested_exclude == ("A", "C", "B")
    assert layerwise_errors(fpath, qpath, images, max_suggestions=1).suggested_exclude == ("A", "C")
    # A layer below the threshold that loses less than min_drop_db itself is no culprit: with the bar just above
    # B's own loss only A (and the other reader of a) remain.
    only_a = layerwise_errors(fpath, qpath, images, min_drop_db=120.0 - s_b + 0.5)
    assert only_a.suggested_exclude == ("A", "C")


# -- bundle_writer: parity records ----------------------------------------------------------------------------------
def test_a_pass_on_the_same_ids_but_other_pixels_does_not_clear_a_fail() -> None:
    """Same image list (image_ids_sha256), other pixel content (images_sha256): other data, so a PASS there keeps
    the FAIL. Same list and same pixels: it may replace it; a record without the pixels' hash on either side is
    judged on the list alone."""
    from uopsl.export.bundle_writer import kept_verdict

    def rec(verdict: str, pixels: str | None) -> dict:
        data = {"spec": "tvhl:real", "image_ids_sha256": "ids", **({"images_sha256": pixels} if pixels else {})}
        return {"verdict": verdict, "n_images": 150, "data": data, "created": "2026-11-29T10:00:00+00:00"}

    why = kept_verdict(rec("FAIL", "pixels-a"), rec("PASS", "pixels-b"))
    assert why is not None and "a PASS on other data" in why
    assert kept_verdict(rec("FAIL", "pixels-a"), rec("PASS", "pixels-a")) is None
    assert kept_verdict(rec("FAIL", "pixels-a"), rec("PASS", None)) is None


def test_repeating_a_verdict_at_another_time_leaves_the_manifest_bytes(tmp_path: Path) -> None:
    """A verdict equal to the recorded one but for its ``created`` time changes nothing: the manifest (and so the
    bundle identity screening results are tied to) keeps its bytes and the first record's time."""
    from tinybundle import make_tiny_bundle
    from uopsl.export.bundle_writer import record_parity
    from uopsl.runtime.bundle import read_manifest

    root = make_tiny_bundle(tmp_path / "b")
    first = {**_verdict("PASS"), "created": "2026-11-29T10:00:00+00:00"}
    record_parity(root, {"model.onnx": {"ort-cpu": first}})
    before = (root / "manifest.json").read_bytes()
    record_parity(root, {"model.onnx": {"ort-cpu": {**first, "created": "2026-11-30T09:00:00+00:00"}}})
    assert (root / "manifest.json").read_bytes() == before
    rec = read_manifest(root).file("model.onnx").info["parity"]["backends"]["ort-cpu"]
    assert rec["created"] == "2026-11-29T10:00:00+00:00"


# -- bundle_writer: manifest fields -------------------------------------------------------------------------------
def test_the_referral_rule_and_threshold_given_are_the_manifests(served: Path, tmp_path: Path) -> None:
    """``referable_sum`` with 0.3: refer when the referable classes' probabilities add up to 0.3 (not the 0.5
    default); both reach the manifest as given."""
    from uopsl.export.bundle_writer import write_bundle
    from uopsl.runtime.bundle import ClassSpec, read_manifest
    from uopsl.runtime.preprocess import PreprocessConfig

    classes = [ClassSpec("normal"), ClassSpec("a", referable=True), ClassSpec("b", referable=True)]
    m = write_bundle(tmp_path / "b", served / "model.onnx", classes, "sigmoid", PreprocessConfig(size=64),
                     class_bank=np.eye(3, 8, dtype=np.float32), site_map_size=(8, 8), opset=17,
                     referral_rule="referable_sum", referral_threshold=0.3)
    again = read_manifest(tmp_path / "b")
    assert (m.referral_rule, m.referral_threshold) == (again.referral_rule, again.referral_threshold) == (
        "referable_sum", 0.3)


def test_adding_a_file_sets_the_manifest_fields_given_with_it(served: Path, tmp_path: Path) -> None:
    """``uopsl calibrate`` registers its table and the calibration set's fingerprint in one manifest write."""
    from uopsl.export.bundle_writer import add_file
    from uopsl.runtime.bundle import read_manifest, verify

    b = Path(shutil.copytree(served, tmp_path / "b"))
    (tmp_path / "calibration.json").write_text("{}")
    m = add_file(b, tmp_path / "calibration.json", "calibration.json", "calibration",
                 calibration_fingerprint="set-fp-1")
    assert m.calibration_fingerprint == read_manifest(b).calibration_fingerprint == "set-fp-1"
    assert read_manifest(b).file("calibration.json").kind == "calibration" and all(c.ok for c in verify(b))


def test_a_file_name_leaving_the_bundle_is_refused_before_anything_is_written(served: Path, tmp_path: Path) -> None:
    from uopsl.export.bundle_writer import add_file

    b = Path(shutil.copytree(served, tmp_path / "b"))
    (tmp_path / "src.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"cannot add '\.\./escaped\.bin' to the bundle"):
        add_file(b, tmp_path / "src.bin", "../escaped.bin", "other")
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path / ".escaped.bin.tmp").exists()


def _bundle_files(b: Path) -> dict[str, bytes]:
    return {p.relative_to(b).as_posix(): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}


def test_a_refused_add_leaves_the_listed_file_and_no_temporary(served: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's production finding: ``add_file`` put the new bytes in place before it took the manifest lock and
    checked the manifest, so a busy lock (or a damaged manifest) raised with the file already replaced and the
    bundle no longer verifying. Now the bytes wait under a temporary name until the manifest may change."""
    from uopsl.export import bundle_writer as bw
    from uopsl.runtime.bundle import verify
    from uopsl.runtime.fsio import FolderLock

    b = Path(shutil.copytree(served, tmp_path / "b"))
    before = _bundle_files(b)
    (tmp_path / "other.onnx").write_bytes(b"not the listed model")
    monkeypatch.setattr(bw, "_LOCK_WAIT_S", 0.3)
    holder = FolderLock(b, bw.MANIFEST_LOCK)
    assert holder.acquire()
    try:
        with pytest.raises(BundleError, match="has been updating"):
            bw.add_file(b, tmp_path / "other.onnx", "model.onnx", "onnx", "fp32")
    finally:
        holder.release_and_unlink()
    assert _bundle_files(b) == before and all(c.ok for c in verify(b))
    # A manifest that fails its own checksum: refused, the file untouched again.
    raw = (b / "manifest.json").read_text()
    assert '"sigmoid"' in raw
    (b / "manifest.json").write_text(raw.replace('"sigmoid"', '"softmax"', 1))
    damaged = _bundle_files(b)
    with pytest.raises(BundleError):
        bw.add_file(b, tmp_path / "other.onnx", "model.onnx", "onnx", "fp32")
    assert _bundle_files(b) == damaged


def test_an_added_file_gets_the_mode_a_plain_write_would_give(served: Path, tmp_path: Path) -> None:
    """The temporary is made private by ``mkstemp`` (0600); the file in the bundle must not stay so, or a device's
    service user cannot read a model its installer copied. Under umask 022: 0644."""
    import os
    import stat

    from uopsl.export.bundle_writer import add_file

    b = Path(shutil.copytree(served, tmp_path / "b"))
    (tmp_path / "new.onnx").write_bytes(b"new bytes")
    old = os.umask(0o022)
    try:
        add_file(b, tmp_path / "new.onnx", "model.new.onnx", "onnx", "fp32")
    finally:
        os.umask(old)
    assert stat.S_IMODE((b / "model.new.onnx").stat().st_mode) == 0o644
    assert (b / "model.new.onnx").read_bytes() == b"new bytes"
