"""Session 43 mutation audit of AdaRound and the roundable-layer helpers it shares with GPTQ: tests for its gaps.

Audited: ``uopsl.export.adaround`` (``AdaRoundConfig``, ``_depthwise``, ``_forward``, ``_patch``, ``_optimise``,
``adaround``) and ``uopsl.export.rounding_layers`` (``RoundableLayer.qmax``, ``node_attr``, ``constant_values``,
``activation_after``, ``roundable_layers``, ``tensor_values``, ``conv_padded``, ``write_rounding``). Single-point
mutants (A01-A58) were applied one at a time in a scratch tree shadowing only the mutated module and run against
tests/test_adaround.py, tests/test_gptq.py and tests/test_mutation_audit_gptq_biascorr_s42.py. Each test here
failed with the mutant(s) its docstring names and passes on the code as written.

Expected values are worked out by hand or with plain numpy (a Gemm is ``x @ W.T + b``); the graphs are small
hand-built ONNX models. Integer-valued inputs and power-of-two weight scales keep the float32 sums the code forms
exact where a test compares exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from uopsl.export import adaround as ar
from uopsl.export.quantize import QuantizeConfig
from uopsl.export.rounding_layers import RoundableLayer, activation_after

D_IN, D_OUT = 6, 4


def _gemm_layer(w: np.ndarray, scale: float, nearest: np.ndarray,
                clamp: tuple[float | None, float | None] = (None, None)) -> RoundableLayer:
    """A Gemm (transB=1, weight (out, in)) with one weight scale for every output unit."""
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=1)
    return RoundableLayer(node, "y", w, np.full((len(w), 1), scale), nearest.astype(np.float64), "w", True, None,
                          clamp)


def _int_inputs(seed: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3, 4, size=(n, D_IN)).astype(np.float32)


# -- _optimise: what it returns and reports ----------------------------------------------------------------------------
def test_a_layer_adaround_cannot_improve_keeps_the_quantizers_integers_and_reports_the_nearest_error_twice() -> None:
    """A08: when the chosen rounding is worse than the quantizer's on the fitted images, the quantizer's integers are
    kept and the report must say so (``mse_adaround == mse_nearest``). The mutant reported the rejected rounding's
    error as the error of the weights actually written, so a user read an output error that no model had."""
    x = _int_inputs(1)
    scale = 0.25
    w = np.random.default_rng(2).uniform(-2.0, 2.0, size=(D_OUT, D_IN)) * 4 * scale
    nearest = np.floor(w / scale) - 1  # below both grid points AdaRound may choose: out of its reach
    target = (x.astype(np.float64) @ (scale * nearest).T).astype(np.float32)  # what the quantizer's weights give
    ints, before, after = ar._optimise(_gemm_layer(w, scale, nearest), x, target, ar.AdaRoundConfig(iterations=20))
    np.testing.assert_array_equal(ints, nearest)
    assert before == 0.0 and after == 0.0


def test_a_rounding_is_never_chosen_outside_the_layers_symmetric_grid() -> None:
    """A17: the grid is [-qmax, qmax] with qmax the largest magnitude the quantizer stored (127, or 64 with
    reduce_range). A weight whose best rounding lies one step below -qmax must be clamped to -qmax; the mutant let it
    reach -qmax - 1, a value outside the quantizer's range (with reduce_range, an int8 the backend must not see)."""
    x = _int_inputs(3)
    scale = 0.5
    ideal = np.array([[-4, 3, 1, -2, 0, 2], [1, -1, 3, 0, -3, 2], [2, 0, -1, 3, 1, -2], [0, 2, -3, 1, 3, -1]],
                     np.float64)
    w = (ideal + 0.375) * scale  # every weight 3/8 of a step above its ideal integer
    nearest = np.clip(np.round(w / scale), -3, 3)  # the quantizer's grid: qmax 3
    target = (x.astype(np.float64) @ (scale * ideal).T).astype(np.float32)
    ints, before, after = ar._optimise(_gemm_layer(w, scale, nearest), x, target, ar.AdaRoundConfig(iterations=300))
    assert np.abs(ints).max() <= 3
    np.testing.assert_array_equal(ints, np.clip(ideal, -3, 3))
    assert after <= before


def test_the_reported_errors_are_per_output_element_and_measured_after_the_relu() -> None:
    """A11, A19: the output MSE of a layer followed by ReLU is measured on the ReLU's output (the target is already
    clipped) and averaged over every output element. Without the clamp on the layer's own output, negative outputs
    counted as errors and AdaRound fitted them too; dividing by the number of images instead inflated every
    reported error by the layer's width."""
    x = _int_inputs(5, n=20)
    scale = 0.25
    w = np.random.default_rng(6).uniform(-3.0, 3.0, size=(D_OUT, D_IN)) * scale
    nearest = np.round(w / scale)
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    target = relu(x.astype(np.float64) @ w.T).astype(np.float32)
    ints, before, after = ar._optimise(_gemm_layer(w, scale, nearest, clamp=(0.0, None)), x, target,
                                       ar.AdaRoundConfig(iterations=50))

    def out_mse(q: np.ndarray) -> float:
        return float(((relu(x.astype(np.float64) @ (scale * q).T) - target) ** 2).mean())

    assert before == pytest.approx(out_mse(nearest), rel=1e-5)
    assert after == pytest.approx(out_mse(ints), rel=1e-5)
    assert after <= before


# -- adaround(): the whole pass on a hand-built model ------------------------------------------------------------------
def _gemm_relu_models(w: np.ndarray, b: np.ndarray, scale: float) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x -> Gemm(transB=1) -> Relu -> y, in float and with int8 weights behind a per-channel DequantizeLinear."""
    def build(quantized: bool) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(b.astype(np.float32), "b")]
        nodes = []
        if quantized:
            q = np.round(w / scale).astype(np.int8)
            inits += [numpy_helper.from_array(q, "w_q"),
                      numpy_helper.from_array(np.full(len(w), scale, np.float32), "w_s"),
                      numpy_helper.from_array(np.zeros(len(w), np.int8), "w_z")]
            nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], name="dq_w", axis=0))
        else:
            inits.append(numpy_helper.from_array(w.astype(np.float32), "w"))
        nodes += [helper.make_node("Gemm", ["x", "w_dq" if quantized else "w", "b"], ["g"], name="gemm", transB=1),
                  helper.make_node("Relu", ["g"], ["y"], name="relu")]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, D_IN])]
        graph = helper.make_graph(nodes, "gemm_relu", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, D_OUT])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    return build(False), build(True)


def test_adaround_reports_the_errors_after_the_relu_writes_the_integers_it_counts_and_restores_torchs_threads() -> None:
    """A12, A18, A20, A21: on x -> Gemm -> Relu, the float target is the ReLU's output, so the reported errors are
    those of the ReLU outputs (the mutant fitted and reported against the raw Gemm outputs when only a lower bound
    exists); ``mse_nearest``/``mse_adaround`` are the errors of the quantizer's and of the written integers, in that
    order; ``changed_weights`` counts the stored integers that differ from the quantizer's; and the caller's torch
    thread count is put back (the mutant left every later torch computation of the process on one thread)."""
    import torch

    scale = 0.125
    w = np.random.default_rng(8).uniform(-4.0, 4.0, size=(D_OUT, D_IN)) * scale
    b = np.array([0.5, -0.25, 0.0, 0.25])
    float_model, qmodel = _gemm_relu_models(w, b, scale)
    x = _int_inputs(9, n=24)
    nearest = np.round(w / scale)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        reports = ar.adaround(float_model, qmodel, x, ar.AdaRoundConfig(iterations=200, batch_images=8),
                              show_progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    stored = numpy_helper.to_array(next(i for i in qmodel.graph.initializer if i.name == "w_q")).astype(np.float64)
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    xd = x.astype(np.float64)
    target = relu(xd @ w.T + b)

    def out_mse(q: np.ndarray) -> float:
        return float(((relu(xd @ (scale * q).T + b) - target) ** 2).mean())

    assert [r.node for r in reports] == ["gemm"]
    (report,) = reports
    assert report.changed_weights == int((stored != nearest).sum()) > 0
    assert report.mse_nearest == pytest.approx(out_mse(nearest), rel=1e-4)
    assert report.mse_adaround == pytest.approx(out_mse(stored), rel=1e-4)
    assert report.mse_adaround < report.mse_nearest


# -- AdaRoundConfig ----------------------------------------------------------------------------------------------------
def test_a_regularization_of_zero_is_accepted_and_the_defaults_match_the_quantize_commands() -> None:
    """A05, A06: ``regularization`` 0 (no push towards 0/1, documented as allowed: ``>= 0``) must be accepted, not
    refused as a configuration error; and a library user's default of 500 iterations per layer must be the same as
    ``uopsl quantize --rounding adaround``'s, or the two give different models for the same request."""
    config = ar.AdaRoundConfig(regularization=0.0)
    assert config.regularization == 0.0
    assert ar.AdaRoundConfig().iterations == QuantizeConfig().adaround_iterations == 500


# -- activation_after --------------------------------------------------------------------------------------------------
def test_a_layer_output_that_is_also_a_graph_output_or_unread_gets_no_clamp() -> None:
    """A26, A27: a ReLU only clamps what the layer is fitted to when the ReLU is the layer's only consumer. If the
    raw output is also a graph output, its negative values are part of the model's result and must be fitted (the
    mutant clamped them away); a layer output nobody reads has no activation (the mutant crashed with IndexError)."""
    w = numpy_helper.from_array(np.ones((D_OUT, D_IN), np.float32), "w")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], name="gemm", transB=1),
             helper.make_node("Relu", ["g"], ["y"], name="relu"),
             helper.make_node("Gemm", ["x", "w"], ["unread"], name="gemm2", transB=1)]
    io = helper.make_tensor_value_info
    outs = [io("y", TensorProto.FLOAT, [None, D_OUT]), io("g", TensorProto.FLOAT, [None, D_OUT])]
    model = helper.make_model(helper.make_graph(nodes, "g", [io("x", TensorProto.FLOAT, [None, D_IN])], outs, [w]))
    values = {"w": numpy_helper.to_array(w)}
    assert activation_after(model, "g", values) == (None, None)
    assert activation_after(model, "unread", values) == (None, None)
    model.graph.output.pop()  # "g" read by the Relu alone: now it is clamped
    assert activation_after(model, "g", values) == (0.0, None)
