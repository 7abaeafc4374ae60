"""Session 42 mutation audit of the INT8 weight-rounding (GPTQ) and bias-correction passes: tests for its gaps.

Audited: ``uopsl.export.gptq`` (``GptqConfig``, ``round_with_feedback``, the Hessians of Conv/Gemm inputs,
``gptq_layer``, ``gptq``) and ``uopsl.export.bias_correction`` (``_channel_means``, ``_own_float_biases``,
``_targets``, ``correct_biases``). Single-point mutants (E01-E83) were applied one at a time in a scratch tree
shadowing only the mutated module and run against tests/test_gptq.py, tests/test_quantize.py,
tests/test_mutation_audit_export_s36.py and tests/test_calibration_provenance.py. Each test here failed with the
mutant(s) its docstring names and passes on the code as written.

Expected values come from plain re-implementations in this file (an Optimal-Brain-Quantizer loop with an explicit
inverse and its rank-one downdates, instead of GPTQ's Cholesky factor and lazy block updates; channel means by
hand with numpy), never from the code under test. Graphs are small hand-built ONNX models; integer-valued inputs
keep the float32 sums the code forms exact.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from uopsl.export import gptq as gq
from uopsl.export.bias_correction import correct_biases
from uopsl.export.rounding_layers import RoundableLayer
from uopsl.runtime.errors import ConfigError


# -- plain re-implementations ----------------------------------------------------------------------------------------
def _ref_rounding(w: np.ndarray, s: np.ndarray, h: np.ndarray, qmax: float, damping: float = 0.01) -> np.ndarray:
    """Optimal Brain Quantization of the rows ``w`` (R, D) with steps ``s`` (R,) for ``H`` (D, D), written plainly:
    columns in decreasing order of H's diagonal (dead inputs: diagonal 1, uncoupled), H damped by ``damping`` times
    its mean diagonal, each column rounded to the grid [-qmax, qmax], its error spread onto the columns not yet
    rounded through the explicit inverse, which is then downdated (the column removed)."""
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    d = w.shape[1]
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    diag[dead] = 1.0
    order = np.argsort(-diag, kind="stable")
    hp = h[np.ix_(order, order)]
    wp = w[:, order]
    hinv = np.linalg.inv(hp + damping * np.mean(np.diag(hp)) * np.eye(d))
    q = np.zeros_like(wp)
    for i in range(d):
        q[:, i] = np.clip(np.round(wp[:, i] / s), -qmax, qmax)
        err = (wp[:, i] - q[:, i] * s) / hinv[i, i]
        wp[:, i + 1:] -= err[:, None] * hinv[i, i + 1:][None]
        hinv = hinv - np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    out = np.empty_like(q)
    out[:, order] = q
    return out


def _out_mse(w: np.ndarray, s: np.ndarray, q: np.ndarray, x: np.ndarray) -> float:
    """Mean squared error of ``x @ w.T`` against ``x @ (s q).T`` over rows of ``x`` and output units."""
    return float(((x @ (w - s[:, None] * q).T) ** 2).mean())


def _gemm_layer(w_out_in: np.ndarray, scale: np.ndarray, nearest: np.ndarray | None = None) -> RoundableLayer:
    """A Gemm (transB=1, weight stored (out, in)) with per-output-unit ``scale``."""
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=1)
    s = scale.reshape(-1, 1)
    ints = np.round(w_out_in / s) if nearest is None else nearest
    return RoundableLayer(node, "y", w_out_in, s, ints, "w", True, None, (None, None))


def _correlated(seed: int, n: int, d: int) -> np.ndarray:
    """Integer-valued inputs (exact float32 sums) with a large, uneven mean: nearly collinear, distinct energies."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(n, d)) + np.arange(10, 10 + 3 * d, 3)).astype(np.float64)


# -- GPTQ: the rounding itself ---------------------------------------------------------------------------------------
def test_feedback_rounding_is_the_sequential_optimal_update_in_decreasing_input_energy_order() -> None:
    """E05, E11, E12, E13, E14, E23: GPTQ with its defaults (1 % damping of the mean diagonal, act order, H and the
    weights permuted alike) must equal the plain quantizer loop, also with blocks that leave one column after the
    last full block. Otherwise the INT8 file carries a different rounding than the one documented (and recorded as
    ``gptq``) without any test noticing."""
    rng = np.random.default_rng(11)
    ws, ss, hs, want = [], [], [], []
    for g in range(2):
        x = _correlated(20 + g, 60, 9)
        w = rng.normal(size=(32, 9))
        w -= w.mean(axis=1, keepdims=True)  # zero-sum filters: feedback matters on bright inputs
        s = np.abs(w).max(axis=1) / 127
        ws.append(w), ss.append(s), hs.append(x.T @ x)
        want.append(_ref_rounding(w, s, x.T @ x, 127))
        assert (want[-1] != np.round(w / s[:, None])).any()  # the feedback does move weights here
    assert any((_ref_rounding(w, s, h, 127, 0.02) != q).any() for w, s, h, q in zip(ws, ss, hs, want))  # damping
    args = (torch.from_numpy(np.stack(ws)), torch.from_numpy(np.stack(ss)), torch.from_numpy(np.stack(hs)), 127)
    np.testing.assert_array_equal(gq.round_with_feedback(*args).numpy(), np.stack(want))
    np.testing.assert_array_equal(gq.round_with_feedback(*args, gq.GptqConfig(block=8)).numpy(), np.stack(want))


def test_damping_of_one_and_blocks_of_one_column_are_accepted_and_honoured() -> None:
    """E02, E04, E15: the documented limits ``0 < damping <= 1`` and ``block >= 1`` include 1; refusing them, or
    ignoring the damping asked for, would leave users unable to get the stable factorisation they configured."""
    x = _correlated(3, 50, 8)
    w = np.random.default_rng(4).normal(size=(4, 8))
    s = np.abs(w).max(axis=1) / 127
    strong, default = _ref_rounding(w, s, x.T @ x, 127, 1.0), _ref_rounding(w, s, x.T @ x, 127, 0.01)
    assert (strong != default).any()  # the damping changes the answer on these inputs
    for block in (1, 3, 7):
        got = gq.round_with_feedback(torch.from_numpy(w[None]), torch.from_numpy(s[None]),
                                     torch.from_numpy((x.T @ x)[None]), 127, gq.GptqConfig(damping=1.0, block=block))
        np.testing.assert_array_equal(got[0].numpy(), strong)
    with pytest.raises(ConfigError, match="damping must be in"):
        gq.GptqConfig(damping=1.0000001)


def test_weights_exactly_half_way_between_grid_points_round_to_even_like_the_quantizers_nearest() -> None:
    """E26: with uncoupled inputs (H diagonal) GPTQ passes no error on and must give exactly the quantizer's own
    nearest integers (numpy/ONNX Runtime round half to even). Rounding ties up would move weights at exact half
    steps (e.g. +0.5 -> 1, -2.5 -> -2) and make GPTQ differ from nearest where nothing justifies it."""
    w = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 3.25]])
    s = np.ones(1)
    h = np.diag([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    got = gq.round_with_feedback(torch.from_numpy(w[None]), torch.from_numpy(s[None]), torch.from_numpy(h[None]), 127)
    np.testing.assert_array_equal(got[0].numpy(), [[0.0, 2.0, 2.0, -0.0, -2.0, 3.0]])


def _edge_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two strongly correlated inputs (input 0 with more energy, rounded first). Row 0 sits at 63.4 and 64.4 grid
    steps: input 0 rounds down (error +0.4 step), and the feedback pushes input 1 up past 64.5, to 65 steps
    unless clamped at qmax = 64 (the nearest rounding's largest magnitude: a reduce_range grid). Row 1 is the
    mirror image (-65 unless clamped at -64)."""
    x = np.array([[10.0, 9.0], [11.0, 10.0], [12.0, 12.0], [13.0, 12.0]] * 3)
    s = np.array([0.01, 0.02])
    w = np.array([[63.4, 64.4], [-63.4, -64.4]]) * s[:, None]
    return w, s, x


def test_feedback_never_leaves_the_layers_grid_of_plus_minus_qmax() -> None:
    """E16, E17, E18, E39: compensated weights may move more than a step, but must stay within [-qmax, qmax], with
    qmax the layer's own (64 for a reduce_range model). An integer of 65 or -65 would not be on the grid the
    quantizer chose (and would wrap or saturate differently on a reduce_range backend)."""
    w, s, x = _edge_case()
    unclamped = _ref_rounding(w, s, x.T @ x, np.inf)
    assert unclamped[0, 1] == 65 and unclamped[1, 1] == -65  # the feedback does push past the edge
    want = _ref_rounding(w, s, x.T @ x, 64)
    got = gq.round_with_feedback(torch.from_numpy(w[None]), torch.from_numpy(s[None]),
                                 torch.from_numpy((x.T @ x)[None]), 64)
    np.testing.assert_array_equal(got[0].numpy(), want)
    assert np.abs(want).max() == 64
    # Through a layer: its qmax is the largest nearest-rounded magnitude (64 here), not 127.
    layer = _gemm_layer(w, s)
    assert layer.qmax == 64
    ints, before, after = gq.gptq_layer(layer, x.astype(np.float32))
    assert np.abs(ints).max() <= 64
    assert before == pytest.approx(_out_mse(w, s, np.round(w / s[:, None]), x), rel=1e-9)


def test_a_layer_made_worse_by_feedback_keeps_nearest_rounding_and_reports_the_nearest_error() -> None:
    """E40, E43 (E42): with damping 1.0 these inputs make GPTQ worse than nearest, so the layer must keep nearest
    rounding and report the nearest error for both figures (the rounding written); with the default damping GPTQ
    wins. Passing the config on matters: a user's damping silently replaced by the default is a different file."""
    rng = np.random.default_rng(2246)  # a case found by searching with the plain re-implementation above
    w = rng.normal(size=(2, 4))
    x = rng.integers(-3, 4, size=(12, 4)).astype(np.float64) + rng.integers(0, 3, size=4)
    s = np.abs(w).max(axis=1) / 7
    nearest = np.round(w / s[:, None])
    m_near = _out_mse(w, s, nearest, x)
    strong, default = _ref_rounding(w, s, x.T @ x, 7, 1.0), _ref_rounding(w, s, x.T @ x, 7, 0.01)
    assert _out_mse(w, s, strong, x) > 1.2 * m_near and _out_mse(w, s, default, x) < 0.8 * m_near
    layer = _gemm_layer(w, s)
    ints, before, after = gq.gptq_layer(layer, x.astype(np.float32), gq.GptqConfig(damping=1.0))
    np.testing.assert_array_equal(ints, nearest)
    assert before == after == pytest.approx(m_near, rel=1e-9)
    ints, before, after = gq.gptq_layer(layer, x.astype(np.float32))
    np.testing.assert_array_equal(ints, default)
    assert before == pytest.approx(m_near, rel=1e-9) and after == pytest.approx(_out_mse(w, s, default, x), rel=1e-9)


def test_a_dilated_convolution_is_rounded_for_its_own_dilated_patches() -> None:
    """E27, E31: a dilated 3x3 Conv sees taps two pixels apart. Its Hessian built from adjacent pixels measures the
    wrong inputs: the reported nearest error is not the layer's, and the chosen rounding is fitted to patches the
    layer never sees."""
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(3, 2, 3, 3))
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", dilations=[2, 2], strides=[1, 1],
                            pads=[2, 2, 2, 2])
    scale = (np.abs(weight).reshape(3, -1).max(axis=1) / 127).reshape(-1, 1, 1, 1)
    nearest = np.round(weight / scale)
    layer = RoundableLayer(node, "y", weight, scale, nearest, "w", True, None, (None, None))
    x = rng.integers(0, 9, size=(3, 2, 8, 8)).astype(np.float32)
    xt = torch.from_numpy(x).double()

    def conv_mse(ints: np.ndarray) -> float:
        diff = torch.nn.functional.conv2d(xt, torch.from_numpy(weight - scale * ints), padding=2, dilation=2)
        return float((diff**2).mean())

    ints, before, after = gq.gptq_layer(layer, x)
    assert before == pytest.approx(conv_mse(nearest), rel=1e-9)
    assert after == pytest.approx(conv_mse(ints), rel=1e-9)
    # The rounding itself: per output channel, the plain loop on the dilated patches (unfolded by hand).
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (2, 2), (2, 2)))
    patches = np.stack([xp[:, :, i:i + 5:2, j:j + 5:2].reshape(3, -1) for i in range(8) for j in range(8)], 1)
    p = patches.reshape(-1, 18)
    want = _ref_rounding(weight.reshape(3, -1), scale.reshape(-1), p.T @ p, 127).reshape(weight.shape)
    np.testing.assert_array_equal(ints, want)


# -- GPTQ: the pass over a model -------------------------------------------------------------------------------------
def _two_gemms(seed: int) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray, dict[str, tuple]]:
    """FP32: y = B(A(x)), two Gemms (transB=1, per-output-unit scales, a coarse grid of qmax 7). INT8: the same with
    each weight an int8 initializer behind its DequantizeLinear (axis 0). Returns both models, integer-valued
    inputs and, per layer, (float weight, step, bias) as the files hold them (float32 values)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=(10, 4)).astype(np.float32)
    layers = {}
    for name, (n_out, n_in) in (("A", (3, 4)), ("B", (2, 3))):
        w, b = rng.normal(size=(n_out, n_in)).astype(np.float32), rng.normal(size=n_out).astype(np.float32)
        layers[name] = (w, (np.abs(w).max(axis=1) / 7).astype(np.float32), b)
    f_inits, q_inits, q_nodes = [], [], []
    for name, (w, s, b) in layers.items():
        f_inits += [numpy_helper.from_array(w, f"w{name}"), numpy_helper.from_array(b, f"b{name}")]
        q_inits += [numpy_helper.from_array(np.round(w / s[:, None]).astype(np.int8), f"w{name}_q"),
                    numpy_helper.from_array(s, f"w{name}_s"), numpy_helper.from_array(b, f"b{name}")]
        q_nodes.append(helper.make_node("DequantizeLinear", [f"w{name}_q", f"w{name}_s"], [f"w{name}"],
                                        name=f"dq{name}", axis=0))
    gemms = [helper.make_node("Gemm", ["x", "wA", "bA"], ["a"], name="A", transB=1),
             helper.make_node("Gemm", ["a", "wB", "bB"], ["y"], name="B", transB=1)]
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    fm = helper.make_model(helper.make_graph(gemms, "f", *io, f_inits), opset_imports=[helper.make_opsetid("", 17)])
    qm = helper.make_model(helper.make_graph(q_nodes + gemms, "q", *io, q_inits),
                           opset_imports=[helper.make_opsetid("", 17)])
    return fm, qm, x, layers


def _ref_layer(w: np.ndarray, s: np.ndarray, x: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """The plain loop's rounding of one Gemm, or nearest where that is no worse on ``x``; and the nearest."""
    w, s, x = w.astype(np.float64), s.astype(np.float64), x.astype(np.float64)
    near = np.round(w / s[:, None])
    q = _ref_rounding(w, s, x.T @ x, 7, damping)
    return (near if _out_mse(w, s, q, x) >= _out_mse(w, s, near, x) else q), near


def _ref_model(layers: dict[str, tuple], x: np.ndarray, damping: float, float_inputs: bool = False) -> dict[str, tuple]:
    """Each layer rounded on its inputs in the INT8 model as rounded so far (or, ``float_inputs``, in FP32)."""
    (wa, sa, ba), (wb, sb, _) = layers["A"], layers["B"]
    qa, na = _ref_layer(wa, sa, x, damping)
    a = x.astype(np.float64) @ (wa.astype(np.float64) if float_inputs else sa[:, None] * qa).T + ba
    qb, nb = _ref_layer(wb, sb, a, damping)
    return {"A": (qa, na), "B": (qb, nb)}


@pytest.mark.parametrize("damping", [0.01, 1.0])
def test_gptq_rounds_each_layer_on_its_inputs_in_the_int8_model_as_rounded_so_far(damping: float) -> None:
    """E45, E46, E47 (E48): layer B's Hessian comes from A's output in the INT8 model with A's new rounding, the
    damping asked for reaches every layer, and each report counts the weights that moved. Measuring B on the FP32
    model, or ignoring the config, writes a rounding fitted to other inputs or settings; a wrong count misstates
    what the record says was changed."""
    fm, qm, x, layers = _two_gemms(8)
    want = _ref_model(layers, x, damping)
    if damping == 0.01:  # which inputs B is measured on matters (at the default damping)
        assert (want["B"][0] != _ref_model(layers, x, damping, float_inputs=True)["B"][0]).any()
    other = _ref_model(layers, x, 1.0 if damping == 0.01 else 0.01)
    assert any((want[n][0] != other[n][0]).any() for n in "AB")  # the damping matters
    reports = gq.gptq(fm, qm, x, gq.GptqConfig(damping=damping), show_progress=False)
    inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    assert [r.node for r in reports] == ["A", "B"]
    for r in reports:
        q, near = want[r.node]
        stored = inits[f"w{r.node}_q"]
        assert stored.dtype == np.int8
        np.testing.assert_array_equal(stored, q)
        assert r.changed_weights == int((q != near).sum())
        assert r.mse_gptq <= r.mse_nearest
    assert sum(r.changed_weights for r in reports) > 0
    onnx.checker.check_model(qm, full_check=True)


# -- bias correction -------------------------------------------------------------------------------------------------
def _graph(nodes: list, inits: list, inputs: list, outputs: list) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _dq_weight(name: str, ints: np.ndarray, scale: np.ndarray | float, axis: int = 0) -> tuple[list, list]:
    """Inits and node of a weight ``name`` stored as int8 ``ints`` behind a DequantizeLinear."""
    inits = [numpy_helper.from_array(ints.astype(np.int8), f"{name}_q"),
             numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_s")]
    return inits, [helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s"], [name], name=f"dq_{name}",
                                    axis=axis)]


def _one_to_two_channels(wf: np.ndarray, ints: np.ndarray, w_scale: float) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """1x1 Conv from one input channel to len(wf) channels with a float bias [0.25, -0.5, ...]: FP32 weights ``wf``,
    INT8 weights ``ints * w_scale``."""
    c = len(wf)
    bias = numpy_helper.from_array((0.25 * np.arange(1, c + 1) * (-1) ** np.arange(c)).astype(np.float32), "b")
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")
    io = ([_vi("x", [None, 1, 2, 3])], [_vi("y", [None, c, 2, 3])])
    fm = _graph([conv], [numpy_helper.from_array(wf.reshape(c, 1, 1, 1).astype(np.float32), "w"), bias], *io)
    q_inits, q_nodes = _dq_weight("w", ints.reshape(c, 1, 1, 1), w_scale)
    return fm, _graph(q_nodes + [conv], q_inits + [bias], *io)


def test_the_mean_shift_is_averaged_over_every_image_and_position_per_output_channel() -> None:
    """E50, E51, E52, E54, E55, E81, E82: 9 images (one more than a batch of 8), all different, on a 2-channel
    output 2x3 pixels wide. The shift of channel c is (wf_c - wq_c) * mean(x) over all images and pixels; a mean
    over some of the images, per image instead of per pixel, or over the wrong axis would write a wrong bias into
    the file (or skip the layer), shifting every screening score it feeds."""
    wf, ints, w_scale = np.array([1.0, -0.5]), np.array([2, -1]), 0.4  # INT8 weights 0.8, -0.4
    fm, qm = _one_to_two_channels(wf, ints, w_scale)
    images = (np.arange(9, dtype=np.float32)[:, None, None, None] ** 2
              + np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))
    before = _inits(qm)["b"].astype(np.float64)
    assert correct_biases(fm, qm, images, show_progress=False) == 1
    want = before + (wf - np.float32(w_scale) * ints) * images.astype(np.float64).mean()
    np.testing.assert_allclose(_inits(qm)["b"], want, rtol=1e-6)


def test_more_layers_than_one_pass_measures_are_all_corrected() -> None:
    """E53: the FP32 means are measured 12 tensors per session; with 13 layers every one must still be measured
    (a chunk one short loses a layer's reference and the whole quantization stops with a KeyError)."""
    n = 13
    f_inits, q_inits, q_nodes, convs = [], [], [], []
    for i in range(n):
        src, dst = ("x" if i == 0 else f"t{i - 1}"), ("y" if i == n - 1 else f"t{i}")
        convs.append(helper.make_node("Conv", [src, f"w{i}", f"b{i}"], [dst], name=f"c{i}"))
        b = numpy_helper.from_array(np.array([0.1 * i], np.float32), f"b{i}")
        f_inits += [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), f"w{i}"), b]
        inits, nodes = _dq_weight(f"w{i}", np.full((1, 1, 1, 1), 3), 0.3)  # 0.9 instead of 1.0
        q_inits += inits + [b]
        q_nodes += nodes
    io = ([_vi("x", [None, 1, 2, 2])], [_vi("y", [None, 1, 2, 2])])
    fm, qm = _graph(convs, f_inits, *io), _graph(q_nodes + convs, q_inits, *io)
    images = np.full((2, 1, 2, 2), 1.0, np.float32)
    assert correct_biases(fm, qm, images, show_progress=False) == n
    # Sequential correction: every layer's output mean now matches FP32 (all pixels equal: the mean is the value).
    import onnxruntime as ort

    def run(m: onnx.ModelProto) -> float:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return float(sess.run(["y"], {"x": images})[0].mean())

    assert run(qm) == pytest.approx(run(fm), abs=1e-5)


def test_only_float_biases_read_by_several_layers_are_copied_and_no_initializer_is_left_unread() -> None:
    """E56, E57, E58: a bias read by one layer keeps its initializer; one read by two layers gets one copy (the last
    reader keeps the original); the shared bound of two Clips is no bias and is left alone. Copying every bias,
    copying for the last reader too, or copying other nodes' third inputs leaves initializers that nothing reads
    in the written file and renames what users and tools look up by name."""
    rng = np.random.default_rng(0)
    w = {k: rng.normal(size=(2, 2, 1, 1)).astype(np.float32) for k in "ABC"}
    own, shared = (numpy_helper.from_array(rng.normal(size=2).astype(np.float32), n) for n in ("bA", "bS"))
    convs = [helper.make_node("Conv", ["x", "wA", "bA"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "wB", "bS"], ["b"], name="B"),
             helper.make_node("Conv", ["b", "wC", "bS"], ["c"], name="C"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["c1"], name="clip1"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["y"], name="clip2")]
    bounds = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", -3.0), ("hi", 3.0))]
    io = ([_vi("x", [None, 2, 2, 2])], [_vi("y", [None, 2, 2, 2])])
    fm = _graph(convs, [numpy_helper.from_array(v, f"w{k}") for k, v in w.items()] + [own, shared] + bounds, *io)
    q_inits, q_nodes = [own, shared] + bounds, []
    for k, v in w.items():
        scale = np.abs(v).max() / 5
        inits, nodes = _dq_weight(f"w{k}", np.round(v / scale), scale, axis=1)
        q_inits += inits
        q_nodes += nodes
    qm = _graph(q_nodes + convs, q_inits, *io)
    n_inits = len(qm.graph.initializer)
    images = rng.normal(size=(4, 2, 2, 2)).astype(np.float32) + 1.0
    assert correct_biases(fm, qm, images, show_progress=False) == 3
    bias_of = {n.name: n.input[2] for n in qm.graph.node if n.op_type in ("Conv", "Clip")}
    assert bias_of["A"] == "bA" and bias_of["C"] == "bS" and bias_of["B"] not in ("bA", "bS")
    assert bias_of["clip1"] == bias_of["clip2"] == "hi"
    read = {t for n in qm.graph.node for t in n.input}
    assert len(qm.graph.initializer) == n_inits + 1 and all(i.name in read for i in qm.graph.initializer)


def test_a_layer_without_bias_is_skipped_and_the_rest_corrected() -> None:
    """E61: a Conv with only two inputs (no bias) has nothing to correct; looking for its third input must not stop
    the whole quantization with an IndexError."""
    wf = np.ones((1, 1, 1, 1), np.float32)
    b = numpy_helper.from_array(np.array([0.5], np.float32), "b")
    convs = [helper.make_node("Conv", ["x", "w1"], ["a"], name="nobias"),
             helper.make_node("Conv", ["a", "w2", "b"], ["y"], name="withbias")]
    io = ([_vi("x", [None, 1, 2, 2])], [_vi("y", [None, 1, 2, 2])])
    fm = _graph(convs, [numpy_helper.from_array(wf, "w1"), numpy_helper.from_array(wf, "w2"), b], *io)
    i1, n1 = _dq_weight("w1", np.full((1, 1, 1, 1), 2), 0.5)  # exact: 1.0
    i2, n2 = _dq_weight("w2", np.full((1, 1, 1, 1), 3), 0.25)  # 0.75 instead of 1.0
    qm = _graph(n1 + n2 + convs, i1 + i2 + [b], *io)
    images = np.full((3, 1, 2, 2), 4.0, np.float32)
    assert correct_biases(fm, qm, images, show_progress=False) == 1
    assert float(_inits(qm)["b"][0]) == pytest.approx(0.5 + 0.25 * 4.0, rel=1e-6)


def test_a_gemm_with_trans_a_0_is_corrected_and_one_with_trans_a_1_left_alone() -> None:
    """E62, E63: ``transA=0`` written out is an ordinary Gemm and is corrected; a Gemm with ``transA=1`` is one the
    pass documents it does not handle and must keep its bias. Skipping any Gemm that merely names transA would
    leave PyTorch/Keras exports that spell it out uncorrected."""
    wf1 = np.array([[1.0, 0.5], [-1.0, 2.0], [0.25, 0.75]], np.float32)  # (out 3, in 2), transB=1
    ints1 = np.array([[3, 1], [-3, 6], [1, 2]])  # step 0.3: 0.9, 0.3 / -0.9, 1.8 / 0.3, 0.6
    wf2 = np.array([[1.0, -1.0, 0.5], [0.5, 0.5, 0.5]], np.float32)  # (out 2, in 3)
    b1 = numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32), "b1")
    b2 = numpy_helper.from_array(np.array([1.0, -1.0], np.float32), "b2")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="g1", transA=0, transB=1),
             helper.make_node("Transpose", ["g"], ["gt"], name="t", perm=[1, 0]),
             helper.make_node("Gemm", ["gt", "w2", "b2"], ["y"], name="g2", transA=1, transB=1)]
    io = ([_vi("x", [None, 2])], [_vi("y", [None, 2])])
    fm = _graph(nodes, [numpy_helper.from_array(wf1, "w1"), numpy_helper.from_array(wf2, "w2"), b1, b2], *io)
    i1, n1 = _dq_weight("w1", ints1, 0.3)
    i2, n2 = _dq_weight("w2", np.round(wf2 / 0.3), 0.3)
    qm = _graph(n1 + n2 + nodes, i1 + i2 + [b1, b2], *io)
    images = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 5.0]], np.float32)
    assert correct_biases(fm, qm, images, show_progress=False) == 1
    want = np.array([0.1, 0.2, 0.3]) + images.astype(np.float64).mean(axis=0) @ (wf1 - np.float32(0.3) * ints1).T
    np.testing.assert_allclose(_inits(qm)["b1"], want, rtol=1e-6)
    np.testing.assert_array_equal(_inits(qm)["b2"], np.array([1.0, -1.0], np.float32))


def _int32_bias_pair(bias_ints: np.ndarray, bias_scales: np.ndarray, share_init: bool = False,
                     ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """1x1 Conv A, one input channel to 3: FP32 weights 1.0 each, INT8 weights [0.5, 1.5, 1.5] (ints 1 with
    per-channel steps 0.5, 1.5, 1.5); on inputs of 2.0 the shifts FP32 - INT8 are [+1.0, -1.0, -1.0]. The INT8
    bias is int32 ``bias_ints`` behind a DequantizeLinear (axis 0) with per-channel ``bias_scales``.
    ``share_init``: a second Conv B (3 to 3 channels, after A) has its own DequantizeLinear of the same int32
    initializer."""
    names = ["A", "B"] if share_init else ["A"]
    f_inits = [numpy_helper.from_array((bias_ints * bias_scales).astype(np.float32), "bf")]
    q_inits = [numpy_helper.from_array(bias_ints.astype(np.int32), "b_q"),
               numpy_helper.from_array(bias_scales.astype(np.float32), "b_s")]
    f_nodes, q_nodes = [], []
    for k in names:
        src, dst, c_in = ("x", "a" if share_init else "y", 1) if k == "A" else ("a", "y", 3)
        f_inits.append(numpy_helper.from_array(np.ones((3, c_in, 1, 1), np.float32), f"w{k}"))
        f_nodes.append(helper.make_node("Conv", [src, f"w{k}", "bf"], [dst], name=k))
        inits, nodes = _dq_weight(f"w{k}", np.ones((3, c_in, 1, 1)), np.array([0.5, 1.5, 1.5]))
        q_inits += inits
        q_nodes += nodes + [helper.make_node("DequantizeLinear", ["b_q", "b_s"], [f"b{k}"], name=f"dq_b{k}", axis=0),
                            helper.make_node("Conv", [src, f"w{k}", f"b{k}"], [dst], name=k)]
    io = ([_vi("x", [None, 1, 2, 2])], [_vi("y", [None, 3, 2, 2])])
    return _graph(f_nodes, f_inits, *io), _graph(q_nodes, q_inits, *io)


IMAGES_2 = np.full((3, 1, 2, 2), 2.0, np.float32)


def test_an_int32_bias_moves_by_the_nearest_whole_number_of_its_own_channels_steps() -> None:
    """E71, E72, E83: shifts [+1, -1, -1] with bias steps [1/2.6, 1/2.6, 1/1.3] are [+2.6, -2.6, -1.3] steps:
    the bias moves by [+3, -3, -1]. Truncating (+2, -2), flooring (+2, -3, -2) or one step for all channels
    leaves a mean shift of up to a whole step (or more) that the correction is there to remove."""
    fm, qm = _int32_bias_pair(np.array([100, 100, 100]), np.array([1 / 2.6, 1 / 2.6, 1 / 1.3]))
    assert correct_biases(fm, qm, IMAGES_2, show_progress=False) == 1
    np.testing.assert_array_equal(_inits(qm)["b_q"], np.array([103, 97, 99], np.int32))


def test_an_int32_initializer_behind_two_dequantize_nodes_is_left_alone() -> None:
    """E64: two layers, each with its own DequantizeLinear, read one int32 bias initializer; correcting it for one
    layer moves the other's output too. Both layers are skipped and the stored values are unchanged."""
    fm, qm = _int32_bias_pair(np.array([100, 100, 100]), np.array([0.25, 0.25, 0.25]), share_init=True)
    assert correct_biases(fm, qm, IMAGES_2, show_progress=False) == 0
    np.testing.assert_array_equal(_inits(qm)["b_q"], np.array([100, 100, 100], np.int32))


def test_a_negative_int32_overflow_saturates_at_the_int32_minimum_and_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    """E74, E75, E76: channel 1 (shift -1.0, step 1e-9) would need -1e9 steps from -2**31 + 5: the bias stops at
    exactly -2**31 and a warning names how many channels saturated (one). Stopping a step short, or saying
    nothing, hides that the correction could not be applied."""
    fm, qm = _int32_bias_pair(np.array([0, -2**31 + 5, 7]), np.array([0.25, 1e-9, 0.5]))
    with caplog.at_level(logging.WARNING, logger="uopsl.export.bias_correction"):
        assert correct_biases(fm, qm, IMAGES_2, show_progress=False) == 1
    np.testing.assert_array_equal(_inits(qm)["b_q"], np.array([4, -2**31, 5], np.int32))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "saturates the int32 bias of 1 channel(s)" in msgs[0]


def test_only_quantized_layers_of_the_float_model_with_a_per_channel_bias_are_corrected() -> None:
    """E59, E60, E77: of four Convs/Gemms only A is corrected. K keeps float weights (from a Constant node, not a
    DequantizeLinear): it is not a quantized layer. X exists in the INT8 model only: it has no FP32 reference
    (looking it up stopped the quantization with a KeyError). G's bias has shape (1, 2), not one value per output
    unit: it is skipped as the pass documents, and its bias is written back unchanged."""
    wa = np.array([[[[1.0]]], [[[2.0]]]], np.float32)  # (2, 1, 1, 1)
    wk = np.full((2, 2, 1, 1), 0.5, np.float32)
    wg = np.array([[1.0, 0.5], [0.25, -1.0]], np.float32)
    bias = {"bA": np.array([0.1, 0.2], np.float32), "bK": np.array([0.3, 0.4], np.float32),
            "bX": np.array([0.5, 0.6], np.float32), "bG": np.array([[0.7, 0.8]], np.float32)}
    const_k = helper.make_node("Constant", [], ["wK"], name="const_k", value=numpy_helper.from_array(wk))
    shared = [const_k,
              helper.make_node("Conv", ["x", "wA", "bA"], ["a"], name="A"),
              helper.make_node("Conv", ["a", "wK", "bK"], ["k"], name="K"),
              helper.make_node("GlobalAveragePool", ["k"], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "wG", "bG"], ["y"], name="G", transB=1)]
    io = ([_vi("x", [None, 1, 2, 2])], [_vi("y", [None, 2])])
    b_inits = [numpy_helper.from_array(v, k) for k, v in bias.items() if k != "bX"]
    fm = _graph(shared, [numpy_helper.from_array(wa, "wA"), numpy_helper.from_array(wg, "wG")] + b_inits, *io)
    ia, na = _dq_weight("wA", np.array([3, 3]).reshape(2, 1, 1, 1), np.array([0.25, 0.5]))  # 0.75, 1.5
    ix, nx = _dq_weight("wX", np.full((2, 2, 1, 1), 2), 0.25)
    ig, ng = _dq_weight("wG", np.array([[4, 2], [1, -4]]), 0.2)  # 0.8, 0.4 / 0.2, -0.8
    extra = helper.make_node("Conv", ["k", "wX", "bX"], ["kx"], name="X")
    q_nodes = na + nx + ng + shared[:3] + [extra] + shared[3:]
    q_nodes[q_nodes.index(shared[3])].input[0] = "kx"
    qm = _graph(q_nodes, ia + ix + ig + [numpy_helper.from_array(v, k) for k, v in bias.items()], *io)
    images = np.arange(3 * 4, dtype=np.float32).reshape(3, 1, 2, 2)
    assert correct_biases(fm, qm, images, show_progress=False) == 1
    got = _inits(qm)
    want_a = bias["bA"] + (wa.reshape(2) - np.array([0.75, 1.5])) * images.astype(np.float64).mean()
    np.testing.assert_allclose(got["bA"], want_a, rtol=1e-6)
    for name in ("bK", "bX", "bG"):
        np.testing.assert_array_equal(got[name], bias[name])
