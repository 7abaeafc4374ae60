"""Empirical bias correction of a QDQ INT8 model (Nagel et al., 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", section 4.2, the empirical variant).

Rounding weights and activations to 8 bits does not only add noise: it shifts
the *mean* of a layer's output per channel, and in depthwise-separable
networks (EfficientNet-Lite, MobileNet) those shifts add up through the
network. A shift is exactly what a bias can undo. For each quantized
Conv/Gemm, in graph order, the mean output per channel is measured on the
calibration images in the FP32 model and in the INT8 model (with every layer
before it already corrected), and the difference is added to the layer's
bias. Nothing else changes: same scales, same kernels, same speed.

Measured on the synthetic EfficientNet-Lite0 UOPSL model (docs/results.md,
section 4): logits SQNR against FP32 rises by ~6 dB, and decision flips fall
by about two thirds. The correction is fitted on the calibration images only;
the parity gates measure it on held-out images.

The corrected bias is written back in the form the quantizer left it: an
int32 initializer behind a DequantizeLinear (``cpu`` variant; the correction
is rounded to the bias scale ``s_x * s_w``) or a float initializer (``trt``
variant, where biases stay float).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from uopsl.runtime.progress import track
from uopsl.export.layerwise import exposing_session, read_counts, truncated_model
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

CORRECTED_OPS = frozenset({"Conv", "Gemm"})
_BATCH = 8
_TENSORS_PER_PASS = 12


@dataclass(frozen=True)
class _Target:
    """One quantized layer whose bias can be corrected."""

    node: str
    op_type: str
    float_output: str  # the layer's own (pre-activation) output in the float model
    int8_output: str  # the same in the INT8 model
    bias: str  # the initializer holding the stored bias values
    bias_scale: str | None  # int32 bias: the initializer of its DequantizeLinear scale; float bias: None


def _channel_means(model: Any, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of each tensor in ``names`` per channel (axis 1) over all other axes and all ``images``.

    Tensors are requested a few at a time: a batch of every early feature map
    of a ResNet-50 at once would hold gigabytes.
    """
    out: dict[str, np.ndarray] = {}
    for first in range(0, len(names), _TENSORS_PER_PASS):
        chunk = names[first : first + _TENSORS_PER_PASS]
        # The exact QDQ arithmetic every correct INT8 backend computes, not this CPU's kernels (see
        # layerwise.exact_qdq_options); optimised otherwise, for speed.
        sess = exposing_session(model, chunk, optimize=True, purpose="INT8 bias correction")
        feed = sess.get_inputs()[0].name
        sums: dict[str, np.ndarray] = {}
        count: dict[str, int] = {}
        for start in range(0, len(images), _BATCH):
            for name, value in zip(chunk, sess.run(chunk, {feed: images[start : start + _BATCH]})):
                v = np.moveaxis(np.asarray(value, np.float64), 1, -1)
                flat = v.reshape(-1, v.shape[-1])
                sums[name] = sums.get(name, 0.0) + flat.sum(axis=0)
                count[name] = count.get(name, 0) + flat.shape[0]
        out.update({name: sums[name] / count[name] for name in chunk})
    return out


def _own_float_biases(qmodel: Any) -> None:
    """Give each Conv/Gemm its own copy of a float bias initializer that several nodes read.

    A shared bias corrected for one layer would move the other layer's output too.
    """
    inits = {i.name: i for i in qmodel.graph.initializer}
    readers = read_counts(qmodel)
    for node in qmodel.graph.node:
        if node.op_type in CORRECTED_OPS and len(node.input) >= 3 and readers.get(node.input[2], 0) > 1 \
                and node.input[2] in inits:
            copy_ = qmodel.graph.initializer.add()
            copy_.CopyFrom(inits[node.input[2]])
            copy_.name = f"{node.input[2]}__{node.name}"
            readers[node.input[2]] -= 1
            node.input[2] = copy_.name


def _targets(float_model: Any, qmodel: Any) -> tuple[list[_Target], list[str]]:
    """The quantized Conv/Gemm layers (weights behind a DequantizeLinear) whose bias can be corrected.

    Also returns the quantized layers that cannot be (no bias, or an int32 bias shared with another layer).
    """
    _own_float_biases(qmodel)
    float_nodes = {n.name: n for n in float_model.graph.node}
    producer = {t: n for n in qmodel.graph.node for t in n.output}
    readers = read_counts(qmodel)
    inits = {i.name for i in qmodel.graph.initializer}
    out: list[_Target] = []
    skipped: list[str] = []
    for node in qmodel.graph.node:
        if node.op_type not in CORRECTED_OPS or node.name not in float_nodes:
            continue
        weight = producer.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.op_type != "DequantizeLinear":
            continue  # kept in float: nothing to correct
        if len(node.input) < 3 or not node.input[2] or \
                (node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)):
            skipped.append(node.name)
            continue
        bias_in = node.input[2]
        dq = producer.get(bias_in)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits \
                and readers.get(bias_in, 0) == 1 and readers.get(dq.input[0], 0) == 1:
            target = _Target(node.name, node.op_type, float_nodes[node.name].output[0], node.output[0],
                             dq.input[0], dq.input[1])
        elif bias_in in inits:
            target = _Target(node.name, node.op_type, float_nodes[node.name].output[0], node.output[0], bias_in, None)
        else:
            skipped.append(node.name)
            continue
        out.append(target)
    return out, skipped


def correct_biases(float_model: Any, qmodel: Any, images: np.ndarray, *, show_progress: bool = True) -> int:
    """Correct the biases of ``qmodel`` (edited in place) on ``images``; returns the number of layers corrected.

    ``float_model`` is the FP32 model ``qmodel`` was quantized from (node names
    shared). ``images`` are calibration inputs in the model's input layout.
    """
    nh = require("onnx.numpy_helper", "INT8 bias correction")
    targets, skipped = _targets(float_model, qmodel)
    if skipped:
        log.info("bias correction leaves %d quantized layer(s) as they are (no bias of their own): %s",
                 len(skipped), ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not targets:
        return 0
    reference = _channel_means(float_model, [t.float_output for t in targets], images)
    inits = {i.name: i for i in qmodel.graph.initializer}
    corrected = 0
    for t in track(targets, total=len(targets), desc="bias correction", show=show_progress):
        # Each layer is measured with every earlier layer already corrected (sequential, not one-shot:
        # correcting all layers from one measurement overshoots).
        part = truncated_model(qmodel, t.int8_output, purpose="INT8 bias correction")
        measured = _channel_means(part, [t.int8_output], images)[t.int8_output]
        shift = reference[t.float_output] - measured
        init = inits[t.bias]
        bias = nh.to_array(init)
        if shift.shape != bias.shape:
            log.info("bias correction skips %s: bias shape %s, output channels %s", t.node, bias.shape, shift.shape)
            continue
        if t.bias_scale is None:
            new = (bias.astype(np.float64) + shift).astype(bias.dtype)
        else:
            scale = nh.to_array(inits[t.bias_scale]).astype(np.float64)
            step = np.round(shift / scale).astype(np.int64)
            info = np.iinfo(bias.dtype)
            wide = bias.astype(np.int64) + step
            if (wide < info.min).any() or (wide > info.max).any():
                log.warning("bias correction of %s saturates the %s bias of %d channel(s)", t.node, bias.dtype,
                            int(((wide < info.min) | (wide > info.max)).sum()))
            new = np.clip(wide, info.min, info.max).astype(bias.dtype)
        init.CopyFrom(nh.from_array(new, init.name))
        corrected += 1
    log.info("bias correction: %d of %d quantized Conv/Gemm layers corrected on %d images",
             corrected, len(targets), len(images))
    return corrected
