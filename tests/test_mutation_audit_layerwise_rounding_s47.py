"""Mutation audit (session 47) of ``export/layerwise.py`` and ``export/rounding_layers.py``: tests for its gaps.

Session 43 wrote but never ran mutants of layerwise's ``_plan`` matching, ``truncated_model``, ``exposing_session``,
``read_counts``, ``_elem_types``, ``fake_quantize`` and ``exact_qdq_options``, and of most of rounding_layers
(``node_attr``, ``constant_values``, ``activation_after``, ``roundable_layers``, ``tensor_values``, ``conv_padded``,
``write_rounding``). New single-point mutants (L60-L82, R60-R82) were applied one at a time in a scratch tree that
shadows only ``uopsl.export`` and run against tests/parity/test_layerwise.py, the s36/s43 layerwise and adaround
audits, tests/test_adaround.py, tests/test_gptq.py, tests/test_int8_arithmetic.py and the s42 GPTQ/bias-correction
audit. Each test below failed with the mutant(s) its docstring names and passes on the code as written.

The graphs are small hand-built ONNX models; expected values are worked out by hand or with plain numpy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from uopsl.runtime.errors import BackendError

io = helper.make_tensor_value_info


def _model(nodes: list, inits: list, inputs: list, outputs: list, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f32(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


# -- layerwise._plan: which tensors are matched, which nodes are layers, what each layer reads -------------------------
def _diamond_models(tmp_path: Path, sa: float) -> tuple[Path, Path]:
    """FP32: x = Cast(image); A: a = x * 1; S: s = Shape(a) (int64); R: r = Reshape(a, s); D: d = a * a;
    E: e = x + r; F: f = r * 1. Outputs d, e, f.
    QDQ: x through a u8 pair of scale 1 (exact on pixels), a through a u8 pair of scale ``sa``; S reads the raw a
    and comes before a's QuantizeLinear; R reshapes the dequantized a; D squares it; E adds the dequantized x to r;
    F reads r directly (no DequantizeLinear: a layer left in float)."""
    img = io("image", TensorProto.UINT8, [None, 4, 4, 1])
    outs = [io(t, TensorProto.FLOAT, [None, 4, 4, 1]) for t in ("d", "e", "f")]
    one = _f32("one", 1.0)
    cast = helper.make_node("Cast", ["image"], ["x"], name="cast", to=TensorProto.FLOAT)
    f_nodes = [cast, helper.make_node("Mul", ["x", "one"], ["a"], name="A"),
               helper.make_node("Shape", ["a"], ["s"], name="S"),
               helper.make_node("Reshape", ["a", "s"], ["r"], name="R"),
               helper.make_node("Mul", ["a", "a"], ["d"], name="D"),
               helper.make_node("Add", ["x", "r"], ["e"], name="E"),
               helper.make_node("Mul", ["r", "one"], ["f"], name="F")]
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    q_inits = [one, zp, _f32("x_s", 1.0), _f32("a_s", sa)]

    def pair(t: str) -> list:
        return [helper.make_node("QuantizeLinear", [t, f"{t}_s", "zp"], [f"{t}_q"], name=f"{t}_Q"),
                helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_s", "zp"], [f"{t}_d"], name=f"{t}_DQ")]

    q_nodes = [cast, *pair("x"), helper.make_node("Mul", ["x_d", "one"], ["a"], name="A"),
               helper.make_node("Shape", ["a"], ["s"], name="S"), *pair("a"),
               helper.make_node("Reshape", ["a_d", "s"], ["r"], name="R"),
               helper.make_node("Mul", ["a_d", "a_d"], ["d"], name="D"),
               helper.make_node("Add", ["x_d", "r"], ["e"], name="E"),
               helper.make_node("Mul", ["r", "one"], ["f"], name="F")]
    fpath, qpath = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_model(f_nodes, [one], [img], outs), str(fpath))
    onnx.save(_model(q_nodes, q_inits, [img], outs), str(qpath))
    return fpath, qpath


def test_layerwise_matches_float_tensors_through_their_pair_and_reports_only_quantized_compute_layers(
        tmp_path: Path) -> None:
    """L60, L61, L65, L66, L67, L68 on one graph worked by hand (a_q = min(round(x / 0.25), 255) * 0.25, exact in
    float32; s_a = 10 log10(sum x^2 / sum (a_q - x)^2)):

    * only float tensors are matched: x, a, r, d, e and f, 6 (L60 also counted the int64 shape s: 7);
    * a is compared after its pair although its first reader (S) is no QuantizeLinear: A's SQNR is s_a (L61 stopped
      at S and compared the raw a: a perfect 120 dB for a layer that clips everything above 63.75);
    * the layers are A, D and E: not the Reshape R (moves values, L66) and not F, left in float (L67); a user would
      be told to exclude layers that are not quantized;
    * E's worst input is r, a float tensor read without a pair, whose error is a's (L65 ignored it: 120 dB);
    * A's bad range suggests A with every float reader of a, each once, although D reads a twice (L68 named D
      twice in ``exclude``)."""
    from uopsl.export.layerwise import layerwise_errors

    fpath, qpath = _diamond_models(tmp_path, 0.25)
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    x = images.astype(np.float64)
    a_q = np.minimum(np.round(x / 0.25), 255) * 0.25
    s_a = 10 * math.log10((x**2).sum() / ((a_q - x) ** 2).sum())
    assert s_a < 30.0
    report = layerwise_errors(fpath, qpath, images)
    by = {e.node: e for e in report.layers}
    assert set(by) == {"A", "D", "E"}
    assert report.matched_tensors == 6
    assert by["A"].sqnr_db == pytest.approx(s_a, abs=1e-3)
    assert by["A"].range_sqnr_db == pytest.approx(s_a, abs=1e-3)
    assert by["E"].input_sqnr_db == pytest.approx(s_a, abs=1e-3)
    assert by["A"].exclude == ("A", "S", "R", "D")


def test_fake_quantize_rounds_halves_to_even_as_quantizelinear_does() -> None:
    """L70: ONNX QuantizeLinear rounds halfway cases to the nearest even integer; ``range_sqnr_db`` is meant to be
    the range's own error as the INT8 graph makes it. Rounding halves up (floor(x + 0.5)) gives 0.5 -> 1 and
    2.5 -> 3 where the graph gives 0 and 2, so the reported range error would not be the graph's."""
    from uopsl.export.layerwise import fake_quantize

    out = fake_quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5]), np.array(1.0, np.float32), np.array(0, np.int8))
    np.testing.assert_array_equal(out, [0.0, 2.0, 2.0, 0.0, -2.0])


# -- layerwise: sessions and cut-down models --------------------------------------------------------------------------
def _relu_model(opset: int = 17) -> onnx.ModelProto:
    """x (N, 3) -> Relu -> y -> Neg -> z (an extra node after the tensor of interest)."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"), helper.make_node("Neg", ["y"], ["z"], name="neg")]
    return _model(nodes, [], [io("x", TensorProto.FLOAT, [None, 3])], [io("z", TensorProto.FLOAT, [None, 3])], opset)


def test_session_options_keep_qdq_pairs_exact_and_exposing_sessions_run_the_graph_as_written() -> None:
    """L73, L74: ``exact_qdq_options(optimize=True)`` keeps ONNX Runtime's other optimisations and only turns off
    the Q/DQ fusion and the double-Q/DQ merge (L73 swapped the branches: the quantizer's measurements ran with every
    optimisation off, or with the fusion on); ``optimize=False`` disables everything. ``exposing_session`` runs the
    graph as written by default (L74: optimised, so a tensor inside a fusion may vanish from the per-layer report)."""
    import onnxruntime as ort

    from uopsl.export.layerwise import exact_qdq_options, exposing_session

    def entry(o: ort.SessionOptions, key: str) -> str:
        try:
            return str(o.get_session_config_entry(key))
        except RuntimeError:  # not set
            return ""

    fast = exact_qdq_options(ort, True)
    assert fast.graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert entry(fast, "session.disable_quant_qdq") == entry(fast, "session.disable_double_qdq_remover") == "1"
    exact = exact_qdq_options(ort, False)
    assert exact.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = exposing_session(_relu_model(), ["y"])
    assert sess.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_a_graph_onnx_runtime_cannot_run_is_a_backend_error_naming_the_purpose() -> None:
    """L76: a graph ONNX Runtime refuses (here an unknown operator) is reported as BackendError, the error the
    command line turns into a message and exit code, naming what it was for; the mutant let a bare error escape."""
    from uopsl.export.layerwise import exposing_session

    nodes = [helper.make_node("NoSuchOp", ["x"], ["y"], name="bad")]
    model = _model(nodes, [], [io("x", TensorProto.FLOAT, [None, 3])], [io("y", TensorProto.FLOAT, [None, 3])])
    with pytest.raises(BackendError, match=r"exposed \(INT8 bias correction\)"):
        exposing_session(model, ["y"], purpose="INT8 bias correction")


def test_a_tensor_is_read_with_the_models_own_opset_on_every_image() -> None:
    """L79, R77: ``tensor_values`` cuts the model down to what the tensor needs and keeps its opset: an opset-10
    Clip takes its bounds as attributes, which later opsets no longer accept (L79 dropped the opset and the cut
    model did not load). Ten images run in batches of 8 and 2 and all ten come back (R77 dropped one per batch)."""
    from uopsl.export.layerwise import truncated_model
    from uopsl.export.rounding_layers import tensor_values

    nodes = [helper.make_node("Clip", ["x"], ["y"], name="clip", min=0.0, max=6.0),
             helper.make_node("Neg", ["y"], ["z"], name="neg")]
    model = _model(nodes, [], [io("x", TensorProto.FLOAT, [None, 3])], [io("z", TensorProto.FLOAT, [None, 3])], 10)
    cut = truncated_model(model, "y")
    assert list(cut.opset_import) == list(model.opset_import) and [n.name for n in cut.graph.node] == ["clip"]
    x = np.random.default_rng(1).uniform(-10, 10, size=(10, 3)).astype(np.float32)
    np.testing.assert_array_equal(tensor_values(model, "y", x), np.clip(x, 0, 6))


# -- rounding_layers: which Conv/Gemm layers are roundable, and what is read about them --------------------------------
def _int8_weight(name: str, w: np.ndarray, scale: np.ndarray, *, zero_point: np.ndarray | None = None,
                 axis: int | None = 0) -> tuple[list, onnx.NodeProto]:
    """An int8 initializer ``name_q`` (nearest rounding of ``w / scale`` along ``axis``) behind a DequantizeLinear
    writing ``name_dq`` (no ``axis`` attribute when ``axis`` is None: ONNX's default, 1)."""
    shape = [-1 if i == (1 if axis is None else axis) % w.ndim else 1 for i in range(w.ndim)]
    q = np.round(w / scale.reshape(shape)).astype(np.int8)
    zp = np.zeros(len(scale), np.int8) if zero_point is None else zero_point.astype(np.int8)
    inits = [numpy_helper.from_array(q, f"{name}_q"), _f32(f"{name}_s", scale), numpy_helper.from_array(zp, f"{name}_z")]
    kw = {} if axis is None else {"axis": axis}
    return inits, helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                                   name=f"dq_{name}", **kw)


def _conv_pair(conv_attrs: dict | None = None, *, zero_point: np.ndarray | None = None, after: list | None = None,
               after_inits: list | None = None, opset: int = 17) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x (N, 2, 5, 5) -> Conv "conv" (3 filters 2x3x3, per-channel int8 weights, no bias) -> c, then ``after``."""
    w = np.random.default_rng(2).normal(size=(3, 2, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(3, -1).max(axis=1) / 127).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1], **(conv_attrs or {})}
    after = after or []
    out = after[-1].output[0] if after else "c"
    inputs, outputs = [io("x", TensorProto.FLOAT, [None, 2, 5, 5])], [io(out, TensorProto.FLOAT, None)]
    fmodel = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", **attrs), *after],
                    [_f32("w", w), *(after_inits or [])], inputs, outputs, opset)
    inits, dq = _int8_weight("w", w, scale, zero_point=zero_point)
    qmodel = _model([dq, helper.make_node("Conv", ["x", "w_dq"], ["c"], name="conv", **attrs), *after],
                    [*inits, *(after_inits or [])], inputs, outputs, opset)
    return fmodel, qmodel


def test_string_attributes_are_read_as_text_so_an_explicit_notset_auto_pad_is_roundable() -> None:
    """R60: ONNX stores string attributes as bytes; ``node_attr`` must return text, or ``auto_pad="NOTSET"``
    written out (as some exporters do) compares unequal to "NOTSET" and every such convolution is silently left
    with nearest rounding as "only 2-D convolutions with explicit pads"."""
    from uopsl.export.rounding_layers import node_attr, roundable_layers

    fmodel, qmodel = _conv_pair({"auto_pad": "NOTSET"})
    assert node_attr(qmodel.graph.node[1], "auto_pad", None) == "NOTSET"
    layers, skipped = roundable_layers(fmodel, qmodel)
    assert [layer.node.name for layer in layers] == ["conv"] and skipped == []
    fmodel, qmodel = _conv_pair({"auto_pad": "SAME_UPPER", "pads": None})  # None: no pads attribute
    layers, skipped = roundable_layers(fmodel, qmodel)
    assert layers == [] and skipped == ["conv (only 2-D convolutions with explicit pads)"]


@pytest.mark.parametrize(("clip_inputs", "consts", "expected"), [
    (["c", "lo", "hi"], {"lo": -1.0, "hi": 4.0}, (-1.0, 4.0)),
    (["c", "lo"], {"lo": 0.5}, (0.5, None)),
    (["c", "", "hi"], {"hi": 6.0}, (None, 6.0)),
])
def test_clip_bounds_written_by_constant_nodes_or_left_out_are_read(clip_inputs: list[str], consts: dict,
                                                                     expected: tuple) -> None:
    """R61, R63: the ReLU6/Clip bounds a layer is fitted under may come from Constant nodes (not initializers),
    and either bound may be absent: only a min input, or an empty name for min. R61 ignored Constant nodes (the
    layer was fitted as if unclipped); R63 read past a Clip's last input (IndexError on a min-only Clip)."""
    from uopsl.export.rounding_layers import activation_after, constant_values

    consts_nodes = [helper.make_node("Constant", [], [k], name=f"const_{k}", value=_f32(k, v)) for k, v in consts.items()]
    fmodel, _ = _conv_pair(after=[*consts_nodes, helper.make_node("Clip", clip_inputs, ["y"], name="clip")])
    assert activation_after(fmodel, "c", constant_values(fmodel)) == expected


def test_an_opset_10_clip_with_only_a_max_attribute_has_no_lower_bound() -> None:
    """R62: before opset 11 the bounds are attributes; a Clip with only ``max`` clamps nothing below. Reading a
    missing ``min`` as 0 would fit the layer as if followed by a ReLU and discard its negative outputs."""
    from uopsl.export.rounding_layers import activation_after, constant_values

    fmodel, _ = _conv_pair(after=[helper.make_node("Clip", ["c"], ["y"], name="clip", max=6.0)], opset=10)
    assert activation_after(fmodel, "c", constant_values(fmodel)) == (None, 6.0)


def _gemm_pair(gemm_attrs: dict, *, axis: int | None = 0, trans_b: int = 1, bias: str | None = None,
               extra_q: list | None = None, trt: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray, np.ndarray]:
    """x (N, 6) -> Gemm "gemm" (4 outputs) -> y, float and with int8 per-output-unit weights; returns the models,
    the float weight and the float bias. ``bias``: None, "dq" (int32 behind a DequantizeLinear) or "dynamic"
    (computed from the input, not a constant). ``trt``: the weight is a float initializer ``w_t`` in front of a
    QuantizeLinear (the ``trt`` variant's layout) instead of an int8 initializer."""
    gen = np.random.default_rng(5)
    w = gen.normal(size=(4, 6)).astype(np.float32)
    if not trans_b:
        w = np.ascontiguousarray(w.T)  # (in, out)
    out_axis = 0 if trans_b else 1
    scale = (np.abs(w).max(axis=1 - out_axis) / 127).astype(np.float32)
    b_s = np.full(4, 1 / 64, np.float32)
    b_q = np.array([7, -3, 0, 12], np.int32)
    f_inits, q_nodes, q_inits = [_f32("w", w)], [], []
    f_ins, q_ins = ["x", "w"], ["x", "w_dq"]
    inits, dq = _int8_weight("w", w, scale, axis=axis)
    if trt:
        inits[0] = _f32("w_t", w)
        q_nodes.append(helper.make_node("QuantizeLinear", ["w_t", "w_s", "w_z"], ["w_q"], name="q_w", axis=axis))
    q_inits += inits
    q_nodes.append(dq)
    f_nodes: list = []
    if bias == "dq":
        f_inits.append(_f32("b", b_q * b_s))
        q_inits += [numpy_helper.from_array(b_q, "b_q"), _f32("b_s", b_s),
                    numpy_helper.from_array(np.zeros(4, np.int32), "b_z")]
        q_nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b_dq"], name="dq_b", axis=0))
        f_ins.append("b")
        q_ins.append("b_dq")
    elif bias == "dynamic":
        dyn = helper.make_node("ReduceMean", ["x"], ["b"], name="mean", keepdims=0)
        f_nodes.append(dyn)
        q_nodes.append(dyn)
        f_ins.append("b")
        q_ins.append("b")
    attrs = {"transB": trans_b, **gemm_attrs}
    inputs, outputs = [io("x", TensorProto.FLOAT, [None, 6])], [io("y", TensorProto.FLOAT, [None, 4])]
    fmodel = _model([*f_nodes, helper.make_node("Gemm", f_ins, ["y"], name="gemm", **attrs)], f_inits, inputs, outputs)
    qmodel = _model([*q_nodes, helper.make_node("Gemm", q_ins, ["y"], name="gemm", **attrs), *(extra_q or [])],
                    q_inits, inputs, outputs)
    return fmodel, qmodel, w, (b_q * b_s).astype(np.float64)


@pytest.mark.parametrize(("attrs", "why"), [({"transA": 1}, "transA"), ({"alpha": 0.5}, "alpha"),
                                            ({"beta": 2.0}, "beta")])
def test_a_gemm_with_transa_alpha_or_beta_is_left_with_nearest_rounding(attrs: dict, why: str) -> None:
    """R67, R68: the rounding methods model a Gemm as ``x @ W.T + b``; with ``transA``, ``alpha`` or ``beta`` that
    is not what the layer computes, so fitting its rounding would fit another layer. Each such Gemm must be skipped
    with its reason (the mutants dropped the transA or the alpha check and rounded it anyway)."""
    from uopsl.export.rounding_layers import roundable_layers

    fmodel, qmodel, _, _ = _gemm_pair(attrs)
    layers, skipped = roundable_layers(fmodel, qmodel)
    assert layers == [] and skipped == ["gemm (Gemm with transA, alpha or beta)"], why


@pytest.mark.parametrize("axis", [None, -1, 1])
def test_the_weight_scale_lies_along_the_dequantizes_axis_default_one_or_negative(axis: int | None) -> None:
    """R72, R73: a Gemm with ``transB=0`` stores its weight as (in, out), quantized per output unit along axis 1:
    written out, written as -1, or left to ONNX's default (1). The scale must broadcast along that axis, so that
    ``scale * nearest`` is the weight the INT8 graph uses; R72 took a missing axis as 0, R73 did not wrap -1."""
    from uopsl.export.rounding_layers import roundable_layers

    fmodel, qmodel, w, _ = _gemm_pair({}, axis=axis, trans_b=0)
    (layer,), skipped = roundable_layers(fmodel, qmodel)
    assert skipped == [] and layer.scale.shape == (1, 4)
    np.testing.assert_allclose(layer.scale * layer.nearest, w, atol=float(layer.scale.max()) / 2 + 1e-9)


def test_a_bias_behind_a_dequantize_is_read_in_float_and_a_computed_bias_is_skipped() -> None:
    """R75, R76: an int32 bias behind its DequantizeLinear is the layer's float bias ``b_q * b_s`` (R75 used the
    raw integers, 64x too big here: every output the rounding is fitted to would be off); a bias computed from the
    input is no constant, and the layer is skipped with that reason, not rounded as if it had no bias (R76)."""
    from uopsl.export.rounding_layers import roundable_layers

    fmodel, qmodel, _, bias = _gemm_pair({}, bias="dq")
    (layer,), _ = roundable_layers(fmodel, qmodel)
    np.testing.assert_array_equal(layer.bias, bias)
    fmodel, qmodel, _, _ = _gemm_pair({}, bias="dynamic")
    layers, skipped = roundable_layers(fmodel, qmodel)
    assert layers == [] and skipped == ["gemm (bias is not a constant)"]


def test_weights_shared_partly_asymmetric_or_all_zero_are_left_alone_and_an_unknown_node_is_ignored() -> None:
    """R69, R70, R71, R74, R82: a weight another node also reads cannot take a rounding fitted to one of them (R69
    rewrote the shared int8 initializer, R70 the shared float one of the trt layout); a zero point that is nonzero in any one channel is asymmetric (R71 only
    skipped it when every channel was); all-zero weights have nothing to round (R74 kept them, with a grid of 0);
    a quantized Gemm whose name the float model does not have is ignored, not a KeyError (R82)."""
    from uopsl.export.rounding_layers import roundable_layers

    reader = helper.make_node("Identity", ["w_q"], ["w_copy"], name="other_reader")
    fmodel, qmodel, _, _ = _gemm_pair({}, extra_q=[reader])
    assert roundable_layers(fmodel, qmodel) == ([], ["gemm (weight shared with another layer)"])
    fmodel, qmodel, _, _ = _gemm_pair({}, trt=True)
    (layer,), _ = roundable_layers(fmodel, qmodel)
    assert (layer.stored, layer.stored_is_int) == ("w_t", False)
    reader = helper.make_node("Identity", ["w_t"], ["w_copy"], name="other_reader")
    fmodel, qmodel, _, _ = _gemm_pair({}, extra_q=[reader], trt=True)
    assert roundable_layers(fmodel, qmodel) == ([], ["gemm (weight shared with another layer)"])

    fmodel, qmodel = _conv_pair(zero_point=np.array([0, 1, 0]))
    assert roundable_layers(fmodel, qmodel) == ([], ["conv (asymmetric weights: zero point not 0)"])

    fmodel, qmodel, _, _ = _gemm_pair({})
    zero = next(i for i in qmodel.graph.initializer if i.name == "w_q")
    zero.CopyFrom(numpy_helper.from_array(np.zeros((4, 6), np.int8), "w_q"))
    assert roundable_layers(fmodel, qmodel) == ([], ["gemm (all-zero weights)"])

    fmodel, qmodel, _, _ = _gemm_pair({})
    next(n for n in qmodel.graph.node if n.op_type == "Gemm").name = "renamed"
    assert roundable_layers(fmodel, qmodel) == ([], [])


def test_asymmetric_pads_are_applied_top_left_bottom_right() -> None:
    """R78: ONNX orders a Conv's ``pads`` as (top, left, bottom, right); torch's ``pad`` wants (left, right, top,
    bottom). With pads (1, 0, 2, 3) a 2x2 input of ones lands at rows 1-2, columns 0-1 of a 5x5 map; R78 shifted it
    to rows 0-1, columns 1-2, so every patch AdaRound fitted read the wrong pixels."""
    import torch

    from uopsl.export.rounding_layers import RoundableLayer, conv_padded

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 0, 2, 3])
    layer = RoundableLayer(node, "y", np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), "w", True,
                           None, (None, None))
    out = conv_padded(torch, layer, torch.ones(1, 1, 2, 2)).numpy()[0, 0]
    expected = np.zeros((5, 5), np.float32)
    expected[1:3, 0:2] = 1.0
    np.testing.assert_array_equal(out, expected)


def test_a_rounding_of_the_transposed_shape_is_refused_before_anything_is_written() -> None:
    """R79: integers of the weight's size but another shape (a transposed Gemm weight) would be written in the
    wrong order; ``write_rounding`` must refuse them with ValueError and leave the model as it was (R79 compared
    sizes only and wrote them)."""
    from uopsl.export.rounding_layers import roundable_layers, write_rounding

    fmodel, qmodel, _, _ = _gemm_pair({})
    (layer,), _ = roundable_layers(fmodel, qmodel)
    before = qmodel.SerializeToString()
    with pytest.raises(ValueError, match="rounding of shape"):
        write_rounding(qmodel, layer, np.ascontiguousarray(layer.nearest.T))
    assert qmodel.SerializeToString() == before


def test_the_clamp_comes_from_the_float_models_bounds_when_the_int8_graph_dropped_the_clip() -> None:
    """R81: the quantizer may fuse a Conv's ReLU6 into its output's Q/DQ pair and drop the Clip and its bound
    tensors from the INT8 graph; the clamp a layer is fitted under is read from the float model, where they are.
    R81 looked the bounds up in the INT8 model and fitted the layer as if it were unclipped."""
    from uopsl.export.rounding_layers import roundable_layers

    bounds = [_f32("lo", 0.0), _f32("hi", 6.0)]
    fmodel, _ = _conv_pair(after=[helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")], after_inits=bounds)
    _, qmodel = _conv_pair()
    (layer,), _ = roundable_layers(fmodel, qmodel)
    assert layer.clamp == (0.0, 6.0)


def test_the_changed_count_is_against_the_quantizers_integers_not_a_fresh_rounding() -> None:
    """R80: ``changed_weights`` counts the stored integers that differ from what the quantizer wrote. A weight
    beyond the grid (here 130 steps: the quantizer stored 127) is unchanged when written back as 127; R80 compared
    with round(w / s) = 130 and reported a moved weight that was not moved."""
    from uopsl.export.rounding_layers import RoundableLayer, write_rounding

    w = np.array([[130.0, -2.0, 3.0]]) * 0.5
    nearest = np.array([[127.0, -2.0, 3.0]])
    init = numpy_helper.from_array(nearest.astype(np.int8), "w_q")
    qmodel = _model([], [init], [], [])
    node = helper.make_node("Gemm", ["x", "w_dq"], ["y"], name="gemm", transB=1)
    layer = RoundableLayer(node, "y", w, np.full((1, 1), 0.5), nearest, "w_q", True, None, (None, None))
    assert write_rounding(qmodel, layer, nearest.copy()) == 0
    assert write_rounding(qmodel, layer, np.array([[127.0, -1.0, 3.0]])) == 1
    np.testing.assert_array_equal(numpy_helper.to_array(qmodel.graph.initializer[0]), [[127, -1, 3]])
