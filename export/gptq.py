"""Error-feedback rounding of INT8 weights (GPTQ: Frantar et al., 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", after Optimal Brain Quantization, 2022).

Why: rounding every weight to its nearest grid point ignores what the layer's
inputs look like. In a fundus photograph most of the input is smooth, so a
layer's input patches are dominated by their local brightness (the DC
component), and filters whose weights sum to about zero (edge and texture
detectors, most of the stem and the early depthwise kernels) answer ~0 there.
Independent rounding errors break that zero sum: the rounded filter leaks a
response proportional to the local brightness over the whole retina. On the
synthetic EfficientNet-Lite0 models of docs/results.md (section 4) this is
where the INT8 error comes from: the stem's weights alone, nearest-rounded,
cost the encoder trained end to end 12.5 dB of logits SQNR.

GPTQ minimises each layer's output error on the calibration images,
``|| W x - s * q x ||^2`` summed over positions, which is the quadratic form
``(w - s q)^T H (w - s q)`` per output channel with ``H = sum x x^T`` over the
layer's input patches. It rounds the weights of a channel one input position
at a time and moves the weights not yet rounded to absorb the error just made
(the optimal update given ``H``), so the leak along ``H``'s dominant
directions, brightness first, is compensated instead of accumulated. Weights
may end further than one grid step from their float value; they stay inside
``[-qmax, qmax]``.

Same scales, same graph, same speed (:mod:`uopsl.export.rounding_layers`
writes the result back as the quantizer stored it). Each layer's ``H`` is
measured on its input in the INT8 model as rounded so far (layers in graph
order), so a layer also sees the activation grid in front of it and the
rounding of the layers before it. No iterations: a Cholesky factorisation per
layer (or per channel, for depthwise layers) and one pass over the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from uopsl.runtime.progress import track
from uopsl.export.rounding_layers import (
    RoundableLayer,
    conv_padded,
    node_attr,
    roundable_layers,
    tensor_values,
    write_rounding,
)
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

PURPOSE = "INT8 error-feedback rounding (GPTQ)"
_CHUNK = 4  # images unfolded at a time while H is accumulated (an early 3x3 layer unfolds to up to ~60 MB per image)


@dataclass(frozen=True)
class GptqConfig:
    """damping: added to ``H``'s diagonal as a share of its mean (GPTQ's 1 %): keeps the
    factorisation stable where inputs are nearly collinear, at the price of a slightly
    less exact compensation.
    block: columns rounded before the rest of the weights are updated in one
    matrix product (GPTQ's lazy batch update; the result is the same for any value).
    """

    damping: float = 0.01
    block: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.damping <= 1:
            raise ConfigError(f"GPTQ damping must be in (0, 1], got {self.damping}")
        if self.block < 1:
            raise ConfigError(f"GPTQ block must be >= 1, got {self.block}")


@dataclass(frozen=True)
class GptqReport:
    """Per layer, on the images used: mean squared output error (before bias and activation)
    with nearest rounding and with the chosen rounding, and how many weights moved."""

    node: str
    mse_nearest: float
    mse_gptq: float
    changed_weights: int


def round_with_feedback(weights: Any, scales: Any, hessians: Any, qmax: int, config: GptqConfig = GptqConfig()) -> Any:
    """Integer weights for ``weights`` (G, R, D): G groups of R rows sharing one ``hessians[g]`` (D, D).

    ``scales`` (G, R) is each row's grid step. Columns are rounded in
    decreasing order of ``H``'s diagonal within each group (GPTQ's "act
    order": the inputs with the most energy first, while there is most room
    left to compensate them). Inputs that never fire (zero diagonal) get
    nearest rounding and pass no error on. Float64 throughout. Returns a
    float64 tensor of integers in ``[-qmax, qmax]``, shape (G, R, D).
    """
    torch = require("torch", PURPOSE)
    w = weights.to(torch.float64).clone()
    # (G, R, 1); a zero scale (an all-zero row) would turn its zeros into NaN.
    s = scales.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
    h = hessians.to(torch.float64).clone()
    g, _, d = w.shape
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag <= 0
    diag[dead] = 1.0  # writes through the view: an unused input is its own, uncoupled column
    order = torch.argsort(diag, dim=1, descending=True)  # (G, D)
    rows = torch.arange(g).view(-1, 1, 1)
    h = h[rows, order.unsqueeze(2), order.unsqueeze(1)]
    w = torch.gather(w, 2, order.unsqueeze(1).expand_as(w))
    damp = config.damping * torch.diagonal(h, dim1=1, dim2=2).mean(dim=1)
    h = h + damp.view(-1, 1, 1) * torch.eye(d, dtype=h.dtype)
    # U: the upper Cholesky factor of H^-1. Row i of U gives the optimal update of the
    # columns after i for an error made in column i, divided by U[i, i].
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for a in range(0, d, config.block):
        b = min(a + config.block, d)
        wb = w[:, :, a:b].clone()
        errs = torch.zeros_like(wb)
        for i in range(b - a):
            col = wb[:, :, i]
            qi = torch.clamp(torch.round(col / s[:, :, 0]), -qmax, qmax)
            q[:, :, a + i] = qi
            err = (col - qi * s[:, :, 0]) / u[:, a + i, a + i].unsqueeze(1)  # (G, R)
            wb[:, :, i:] -= err.unsqueeze(2) * u[:, a + i, a + i:b].unsqueeze(1)
            errs[:, :, i] = err
        if b < d:
            w[:, :, b:] -= errs @ u[:, a:b, b:]
    out = torch.empty_like(q)
    out.scatter_(2, order.unsqueeze(1).expand_as(q), q)
    return out


def conv_hessians(x: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                  groups: int, padding: tuple[int, int] = (0, 0)) -> tuple[Any, int]:
    """``sum p p^T`` over the input patches ``p`` of a convolution on ``x`` (N, C, H, W), per group; and the
    number of patches. One ``(C / groups * kh * kw)``-square matrix per group (per channel for a
    depthwise layer), rows in the order of the flattened weight (channel, then kernel row, column).
    Float32 products per chunk of images (BLAS), summed in float64.
    """
    torch = require("torch", PURPOSE)
    x = torch.as_tensor(x, dtype=torch.float32)
    per_group = x.shape[1] // groups * kernel[0] * kernel[1]
    total, count = None, 0
    for i in range(0, len(x), _CHUNK):
        cols = torch.nn.functional.unfold(x[i : i + _CHUNK], kernel, dilation=dilation, padding=padding,
                                          stride=stride)  # (n, C*kh*kw, L)
        n, _, positions = cols.shape
        cols = cols.reshape(n, groups, per_group, positions).permute(1, 2, 0, 3).reshape(groups, per_group, -1)
        part = torch.bmm(cols, cols.transpose(1, 2)).to(torch.float64)
        total = part if total is None else total + part
        count += n * positions
    return total, count


def _hessians(layer: RoundableLayer, x: np.ndarray) -> tuple[Any, int]:
    """:func:`conv_hessians` of ``layer``'s inputs ``x`` (ONNX pads, which may be asymmetric, applied
    first); for a Gemm one (in, in) matrix over the rows of ``x``."""
    torch = require("torch", PURPOSE)
    node = layer.node
    if node.op_type == "Gemm":
        flat = torch.from_numpy(x.reshape(len(x), -1))
        return (flat.T @ flat).to(torch.float64).unsqueeze(0), len(x)
    return conv_hessians(conv_padded(torch, layer, torch.from_numpy(x)), tuple(layer.weight.shape[2:]),
                         tuple(node_attr(node, "strides", [1, 1])), tuple(node_attr(node, "dilations", [1, 1])),
                         int(node_attr(node, "group", 1)))


def _grouped(layer: RoundableLayer) -> tuple[np.ndarray, np.ndarray, int]:
    """The layer's weights and scales as (G, R, D) rows per input group, and G."""
    w, s = layer.weight, np.broadcast_to(layer.scale, layer.weight.shape)
    if layer.node.op_type == "Gemm":
        if not node_attr(layer.node, "transB", 0):  # (in, out): rows are the columns
            w, s = w.T, s.T
        return w[None], s[None, :, 0], 1
    groups = int(node_attr(layer.node, "group", 1))
    rows = w.shape[0] // groups
    return (w.reshape(groups, rows, -1), s.reshape(groups, rows, -1)[:, :, 0], groups)


def _ungrouped(layer: RoundableLayer, ints: np.ndarray) -> np.ndarray:
    if layer.node.op_type == "Gemm":
        ints = ints[0]
        return ints if node_attr(layer.node, "transB", 0) else ints.T
    return ints.reshape(layer.weight.shape)


def _output_mse(torch: Any, w: Any, s: Any, ints: Any, h: Any, count: int) -> float:
    """Mean over rows and patches of ``(w - s q)^T H (w - s q)``: the squared output error of the linear part."""
    e = w - s.unsqueeze(-1) * ints  # (G, R, D)
    return float(torch.einsum("grd,gde,gre->", e, h, e)) / (count * e.shape[0] * e.shape[1])


def gptq_layer(layer: RoundableLayer, x: np.ndarray, config: GptqConfig = GptqConfig()) -> tuple[np.ndarray, float,
                                                                                                  float]:
    """Integer weights of ``layer`` (its weight's shape) for inputs ``x``; output MSE of nearest and of GPTQ.

    Falls back to the quantizer's nearest rounding when that is better on these
    inputs (possible through the damping and the clamp to ``[-qmax, qmax]``), so no
    layer gets worse.
    """
    torch = require("torch", PURPOSE)
    h, count = _hessians(layer, x)
    w_np, s_np, _ = _grouped(layer)
    w, s = torch.from_numpy(np.array(w_np, np.float64)), torch.from_numpy(np.array(s_np, np.float64))
    nearest_g, _, _ = _grouped(replace(layer, weight=layer.nearest))
    nearest = torch.from_numpy(np.array(nearest_g, np.float64))
    ints = round_with_feedback(w, s, h, layer.qmax, config)
    before, after = _output_mse(torch, w, s, nearest, h, count), _output_mse(torch, w, s, ints, h, count)
    if after >= before:
        return layer.nearest.copy(), before, before
    return _ungrouped(layer, ints.numpy()), before, after


def gptq(float_model: Any, qmodel: Any, images: np.ndarray, config: GptqConfig = GptqConfig(), *,
         show_progress: bool = True) -> list[GptqReport]:
    """Choose the rounding of every quantized Conv/Gemm weight of ``qmodel`` (edited in place) on ``images``.

    ``float_model`` is the FP32 model ``qmodel`` was quantized from (node names
    shared); ``images`` are calibration inputs in the model's input layout.
    Returns one report per layer, in graph order.
    """
    layers, skipped = roundable_layers(float_model, qmodel)
    if skipped:
        log.info("GPTQ leaves %d quantized layer(s) with nearest rounding: %s", len(skipped),
                 "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    reports: list[GptqReport] = []
    for layer in track(layers, total=len(layers), desc="GPTQ", show=show_progress):
        x_q = tensor_values(qmodel, layer.node.input[0], images)
        ints, before, after = gptq_layer(layer, x_q, config)
        changed = write_rounding(qmodel, layer, ints)
        reports.append(GptqReport(layer.node.name, before, after, changed))
        log.debug("GPTQ %s: output MSE %.3g -> %.3g, %d weights moved", layer.node.name, before, after, changed)
    if reports:
        gain = [r.mse_nearest / r.mse_gptq for r in reports if r.mse_gptq > 0]
        log.info("GPTQ: %d layers on %d images; median output MSE ratio nearest/gptq %.2f",
                 len(reports), len(images), float(np.median(gain)) if gain else float("nan"))
    return reports
