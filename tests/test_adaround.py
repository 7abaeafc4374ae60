"""AdaRound (adaptive weight rounding) of the INT8 QDQ model: the maths, the write-back and the wiring."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tinymodel import rounding_against_nearest
from uopsl.export import adaround as ar
from uopsl.export import quantize as qz
from uopsl.export.rounding_layers import (
    RoundableLayer,
    activation_after,
    constant_values,
    conv_padded,
    roundable_layers,
)
from uopsl.runtime.errors import ConfigError

SIZE = 64
FAST = ar.AdaRoundConfig(iterations=150, batch_images=4, patch=8)


@pytest.mark.parametrize(("channels", "multiplier", "stride", "dilation", "size"),
                         [(8, 1, 1, 1, 13), (8, 2, 2, 1, 14), (6, 1, 2, 2, 17), (4, 1, 3, 1, 10)])
def test_depthwise_sum_of_slices_equals_conv2d(channels, multiplier, stride, dilation, size) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, generator=gen)
    w = torch.randn(channels * multiplier, 1, 3, 3, generator=gen)
    b = torch.randn(channels * multiplier, generator=gen)
    ref = torch.nn.functional.conv2d(x, w, b, stride=stride, dilation=dilation, groups=channels)
    got = ar._depthwise(torch, x, w, b, [stride, stride], [dilation, dilation])
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_patch_of_the_padded_input_convolves_to_the_same_patch_of_the_output(stride) -> None:
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1], strides=[stride, stride])
    gen = np.random.default_rng(0)
    w = gen.normal(size=(5, 3, 3, 3))
    layer = RoundableLayer(node, "y", w, np.ones((5, 1, 1, 1)), np.round(w), "w", True, None, (None, None))
    x = torch.from_numpy(gen.normal(size=(2, 3, 21, 21)).astype(np.float32))
    wt = torch.from_numpy(w.astype(np.float32))
    full = torch.nn.functional.conv2d(x, wt, stride=stride, padding=1)
    padded = conv_padded(torch, layer, x)
    torch.testing.assert_close(ar._forward(torch, layer, padded, wt, None), full)
    for _ in range(5):
        oy, ox, iy, ix = ar._patch(layer, tuple(full.shape[2:]), 4, gen)
        torch.testing.assert_close(ar._forward(torch, layer, padded[:, :, iy, ix], wt, None), full[:, :, oy, ox])


def _float_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


@pytest.mark.parametrize("variant", ["cpu", "trt"])
def test_adaround_lowers_every_layers_output_error_and_keeps_the_weights_on_the_quantizers_grid(
        tiny_onnx, tiny_minmax_table, tiny_calib_set, variant) -> None:
    prepared = qz._load_prepared(tiny_onnx)
    config = qz.QuantizeConfig(variant=variant, bias_correction=False)
    nearest = qz._quantize_proto(prepared, tiny_minmax_table, config)
    rounded = qz._quantize_proto(prepared, tiny_minmax_table, config)
    reports = ar.adaround(prepared, rounded, tiny_calib_set.images, FAST, show_progress=False)
    convs = [n.name for n in prepared.graph.node if n.op_type == "Conv"]
    assert [r.node for r in reports] == convs
    # Never worse than nearest rounding on the images it was fitted on, and better somewhere.
    assert all(r.mse_adaround <= r.mse_nearest for r in reports)
    assert sum(r.mse_adaround < 0.9 * r.mse_nearest for r in reports) >= 2, reports
    assert sum(r.changed_weights for r in reports) > 0
    # Same scales; each weight moved by at most one grid step from nearest rounding, inside the symmetric grid.
    float_w = _float_weights(prepared)
    layers_a = {lay.node.name: lay for lay in roundable_layers(prepared, nearest)[0]}
    layers_b = {lay.node.name: lay for lay in roundable_layers(prepared, rounded)[0]}
    inits_a = {i.name: numpy_helper.to_array(i) for i in nearest.graph.initializer}
    inits_b = {i.name: numpy_helper.to_array(i) for i in rounded.graph.initializer}
    for name in convs:
        a, b = layers_a[name], layers_b[name]
        np.testing.assert_array_equal(a.scale, b.scale)
        if variant == "cpu":
            ints_a, ints_b = inits_a[a.stored].astype(np.int64), inits_b[b.stored].astype(np.int64)
        else:  # float weights that quantize exactly to the chosen integers
            ratio = inits_b[b.stored].astype(np.float64) / b.scale
            np.testing.assert_allclose(ratio, np.round(ratio), atol=1e-3)
            ints_a, ints_b = np.round(inits_a[a.stored] / a.scale), np.round(ratio)
        np.testing.assert_array_equal(ints_a, np.round(float_w[name] / a.scale))
        np.testing.assert_array_equal(a.nearest, ints_a)  # the baseline is what the quantizer wrote
        assert np.abs(ints_b - ints_a).max() <= 1
        assert np.abs(ints_b).max() <= a.qmax
        assert set(np.unique(ints_b - np.floor(float_w[name] / a.scale))) <= {0.0, 1.0}


def test_quantize_with_adaround_brings_the_encoder_output_closer_to_fp32_and_says_so(
        tmp_path, tiny_onnx, tiny_minmax_table, tiny_calib_set) -> None:
    # On the images it was fitted on (the tiny random model's logits barely move, so the encoder is measured).
    rounded, err_plain, err_ada = rounding_against_nearest(tmp_path, tiny_onnx, tiny_minmax_table, tiny_calib_set,
                                                           tiny_calib_set.images, rounding="adaround",
                                                           adaround_iterations=150)
    convs = sum(1 for n in onnx.load(str(tiny_onnx)).graph.node if n.op_type == "Conv")
    assert rounded.rounded_layers == convs and rounded.manifest_info()["rounded_layers"] == convs
    assert err_ada < 0.9 * err_plain, (err_ada, err_plain)
    onnx.checker.check_model(onnx.load(rounded.path), full_check=True)


def test_adaround_needs_the_calibration_images_and_sane_settings(tmp_path, tiny_onnx, tiny_minmax_table) -> None:
    with pytest.raises(ConfigError, match="^--rounding adaround uses the calibration images"):
        qz.quantize_model(tiny_onnx, tiny_minmax_table, tmp_path / "q.onnx",
                          qz.QuantizeConfig(bias_correction=False, rounding="adaround"),
                          show_progress=False)
    for bad in ({"iterations": 0}, {"batch_images": 0}, {"patch": 0}, {"learning_rate": 0.0},
                {"regularization": -1.0}):
        with pytest.raises(ConfigError):
            ar.AdaRoundConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="adaround_iterations"):
        qz.QuantizeConfig(adaround_iterations=0)


def test_activation_after_a_layer_is_read_from_relu_and_clip(tiny_onnx) -> None:
    prepared = qz._load_prepared(tiny_onnx)
    values = constant_values(prepared)
    convs = [n for n in prepared.graph.node if n.op_type == "Conv"]
    # TinyScreen: every Conv (BatchNorm folded) is followed by ReLU6, exported as Clip(0, 6).
    assert [activation_after(prepared, c.output[0], values) for c in convs] == [(0.0, 6.0)] * len(convs)


def _hand_models(zero_point: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x -> Conv(3x3) -> Relu -> Flatten -> Gemm(transB) -> y, float and with int8 weights behind DequantizeLinear."""
    from onnx import TensorProto, helper

    gen = np.random.default_rng(3)
    wc = gen.normal(size=(6, 4, 3, 3)).astype(np.float32)
    wg = gen.normal(size=(5, 6 * 4 * 4)).astype(np.float32) * 0.1
    bg = gen.normal(size=5).astype(np.float32)

    def build(quantized: bool) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(bg, "bg")]
        nodes = []
        names = {}
        for name, w in (("wc", wc), ("wg", wg)):
            if quantized:
                scale = (np.abs(w).reshape(len(w), -1).max(axis=1) / 127).astype(np.float32)
                q = np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
                inits += [numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_s"),
                          numpy_helper.from_array(np.full(len(w), zero_point, np.int8), f"{name}_z")]
                nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                                              [f"{name}_dq"], name=f"dq_{name}", axis=0))
                names[name] = f"{name}_dq"
            else:
                inits.append(numpy_helper.from_array(w, name))
                names[name] = name
        nodes += [helper.make_node("Conv", ["x", names["wc"]], ["c"], name="conv", pads=[0, 0, 0, 0]),
                  helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("Flatten", ["r"], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", names["wg"], "bg"], ["y"], name="gemm", transB=1)]
        graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 6, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    return build(False), build(True)


def test_adaround_handles_gemm_layers_and_leaves_asymmetric_weights_alone() -> None:
    images = np.random.default_rng(4).normal(size=(12, 4, 6, 6)).astype(np.float32)
    float_model, qmodel = _hand_models(zero_point=0)
    reports = ar.adaround(float_model, qmodel, images, ar.AdaRoundConfig(iterations=100, patch=2), show_progress=False)
    assert [r.node for r in reports] == ["conv", "gemm"]
    assert all(r.mse_adaround <= r.mse_nearest for r in reports)
    assert reports[1].mse_adaround < reports[1].mse_nearest  # the Gemm's rounding improved too
    float_model, qmodel = _hand_models(zero_point=3)
    layers, skipped = roundable_layers(float_model, qmodel)
    assert layers == [] and all("zero point" in s for s in skipped) and len(skipped) == 2
