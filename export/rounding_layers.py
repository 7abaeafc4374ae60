"""The quantized Conv/Gemm layers of an INT8 QDQ model whose weight rounding can be chosen.

Shared by the rounding methods (:mod:`uopsl.export.gptq`, :mod:`uopsl.export.adaround`):
both keep the quantizer's scales and graph and only choose which grid point
each weight takes. This module finds those layers (the float weight, its
per-channel scale, the quantizer's own nearest-rounded integers and where they
are stored: the int8 initializer behind the weight's DequantizeLinear in the
``cpu`` variant, the float initializer in front of its QuantizeLinear in the
``trt`` variant), runs a model up to any tensor, and writes a chosen rounding
back so that it quantizes to exactly the chosen integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from uopsl.export.layerwise import exposing_session, read_counts, truncated_model
from uopsl.runtime.optional import require

PURPOSE = "INT8 weight rounding"
ROUNDED_OPS = frozenset({"Conv", "Gemm"})
_RUN_BATCH = 8


@dataclass(frozen=True)
class RoundableLayer:
    """One quantized Conv/Gemm whose weight rounding can be chosen."""

    node: Any  # the node in the INT8 model
    float_output: str  # its output in the float model
    weight: np.ndarray  # float weights (from the float model)
    scale: np.ndarray  # per-channel (or one) weight scale, broadcast to the weight's shape
    nearest: np.ndarray  # the quantizer's own integer weights (nearest rounding), same shape as ``weight``
    stored: str  # initializer to write: int8 values (cpu) or float values (trt)
    stored_is_int: bool
    bias: np.ndarray | None  # the bias the INT8 model uses, in float
    clamp: tuple[float | None, float | None]  # the activation after the layer in the float model

    @property
    def qmax(self) -> int:
        """The symmetric grid is [-qmax, qmax] (the largest stored magnitude: 127, or 64 with reduce_range)."""
        return int(np.abs(self.nearest).max())


def node_attr(node: Any, name: str, default: Any) -> Any:
    onnx = require("onnx", PURPOSE)
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def constant_values(model: Any) -> dict[str, np.ndarray]:
    nh = require("onnx.numpy_helper", PURPOSE)
    values = {i.name: nh.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = nh.to_array(a.t)
    return values


def activation_after(float_model: Any, output: str,
                      values: dict[str, np.ndarray]) -> tuple[float | None, float | None]:
    """``(low, high)`` of the Relu/Clip that is the only reader of ``output`` in the float model, else no clamp."""
    readers = [n for n in float_model.graph.node if output in n.input]
    if len(readers) != 1 or output in {o.name for o in float_model.graph.output}:
        return (None, None)
    act = readers[0]
    if act.op_type == "Relu":
        return (0.0, None)
    if act.op_type == "Clip":
        if len(act.input) == 1:  # opset < 11: bounds are attributes
            return (node_attr(act, "min", None), node_attr(act, "max", None))
        bounds = [float(values[act.input[i]]) if len(act.input) > i and act.input[i] in values else None
                  for i in (1, 2)]
        return (bounds[0], bounds[1])
    return (None, None)


def roundable_layers(float_model: Any, qmodel: Any) -> tuple[list[RoundableLayer], list[str]]:
    """The quantized Conv/Gemm layers whose rounding can be optimised, and those left as they are (why)."""
    fvalues = constant_values(float_model)
    qvalues = constant_values(qmodel)
    float_nodes = {n.name: n for n in float_model.graph.node}
    producer = {t: n for n in qmodel.graph.node for t in n.output}
    readers = read_counts(qmodel)
    layers: list[RoundableLayer] = []
    skipped: list[str] = []
    for node in qmodel.graph.node:
        if node.op_type not in ROUNDED_OPS or node.name not in float_nodes or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue  # kept in float
        fnode = float_nodes[node.name]
        if fnode.input[1] not in fvalues:
            skipped.append(f"{node.name} (float weight is not a constant)")
            continue
        if node.op_type == "Conv" and (node_attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "")
                                       or fvalues[fnode.input[1]].ndim != 4):
            skipped.append(f"{node.name} (only 2-D convolutions with explicit pads)")
            continue
        if node.op_type == "Gemm" and (node_attr(node, "transA", 0) or node_attr(node, "alpha", 1.0) != 1.0
                                       or node_attr(node, "beta", 1.0) != 1.0):
            skipped.append(f"{node.name} (Gemm with transA, alpha or beta)")
            continue
        weight = fvalues[fnode.input[1]].astype(np.float64)
        q = producer.get(dq.input[0])
        if dq.input[0] in qvalues and readers.get(dq.input[0], 0) == 1:  # cpu: int8 initializer
            stored, stored_is_int, ints = dq.input[0], True, qvalues[dq.input[0]]
            scale_name = dq.input[1]
        elif q is not None and q.op_type == "QuantizeLinear" and q.input[0] in qvalues \
                and readers.get(q.input[0], 0) == 1:  # trt: float initializer -> Q -> DQ
            stored, stored_is_int, ints = q.input[0], False, None
            scale_name = q.input[1]
        else:
            skipped.append(f"{node.name} (weight shared with another layer)")
            continue
        zero_point = qvalues.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if zero_point is not None and np.any(zero_point != 0):
            skipped.append(f"{node.name} (asymmetric weights: zero point not 0)")
            continue
        axis = int(node_attr(dq, "axis", 1))
        scale = qvalues[scale_name].astype(np.float64)
        if scale.ndim == 1:
            scale = scale.reshape([-1 if i == axis % weight.ndim else 1 for i in range(weight.ndim)])
        if ints is None:
            ints = np.round(weight / scale)
        if not np.abs(ints).max() or (scale <= 0).any():
            skipped.append(f"{node.name} (all-zero weights)")
            continue
        bias = None
        if len(node.input) > 2 and node.input[2]:
            b_src = producer.get(node.input[2])
            if node.input[2] in qvalues:
                bias = qvalues[node.input[2]].astype(np.float64)
            elif b_src is not None and b_src.op_type == "DequantizeLinear" and b_src.input[0] in qvalues:
                bias = qvalues[b_src.input[0]].astype(np.float64) * qvalues[b_src.input[1]].astype(np.float64)
            else:
                skipped.append(f"{node.name} (bias is not a constant)")
                continue
        clamp = activation_after(float_model, fnode.output[0], fvalues)
        layers.append(RoundableLayer(node, fnode.output[0], weight, scale, np.asarray(ints, np.float64), stored, stored_is_int,
                             bias, clamp))
    return layers, skipped


def tensor_values(model: Any, name: str, images: np.ndarray) -> np.ndarray:
    """Tensor ``name`` of ``model`` (cut down to what it needs) on ``images``."""
    sess = exposing_session(truncated_model(model, name, purpose=PURPOSE), [name], purpose=PURPOSE)
    feed = sess.get_inputs()[0].name
    return np.concatenate([sess.run([name], {feed: images[i : i + _RUN_BATCH]})[0]
                           for i in range(0, len(images), _RUN_BATCH)]).astype(np.float32)


def conv_padded(torch: Any, layer: RoundableLayer, x: Any) -> Any:
    """A Conv's input with the layer's zero padding applied (so patches of it convolve with padding 0)."""
    if layer.node.op_type != "Conv":
        return x
    top, left, bottom, right = node_attr(layer.node, "pads", [0, 0, 0, 0])
    return torch.nn.functional.pad(x, (left, right, top, bottom)) if any((top, left, bottom, right)) else x


def write_rounding(qmodel: Any, layer: RoundableLayer, ints: np.ndarray) -> int:
    """Store integer weights ``ints`` (the weight's shape) for ``layer`` in ``qmodel``; returns how many changed.

    The ``cpu`` variant stores the integers themselves; the ``trt`` variant
    stores ``scale * ints`` in float, which its QuantizeLinear (same scale)
    turns back into exactly ``ints``.
    """
    nh = require("onnx.numpy_helper", PURPOSE)
    if ints.shape != layer.weight.shape:
        raise ValueError(f"{layer.node.name}: rounding of shape {ints.shape}, weight has {layer.weight.shape}")
    init = next(i for i in qmodel.graph.initializer if i.name == layer.stored)
    dtype = nh.to_array(init).dtype
    new = ints.astype(dtype) if layer.stored_is_int else (ints * layer.scale).astype(dtype)
    init.CopyFrom(nh.from_array(new, init.name))
    return int((ints != layer.nearest).sum())
