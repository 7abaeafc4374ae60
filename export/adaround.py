"""Adaptive rounding of INT8 weights (AdaRound: Nagel et al., 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization").

Rounding every weight to its nearest grid point is not what keeps a layer's
*output* closest to the float layer's: the rounding errors of the weights that
meet in one output add up, and in small depthwise kernels (EfficientNet-Lite,
MobileNet) a few of them decide the output. On the synthetic
EfficientNet-Lite0 UOPSL model, rounding the weights alone (activations float)
costs as much logits SQNR as the whole INT8 model without bias correction
(19 dB vs 18 dB). Once bias correction has run, though, AdaRound changed
that model's parity figures by no more than noise (docs/results.md, section
4): from the second block on, most of a layer's error arrives with its
input. So it is not the default: ``uopsl quantize --rounding adaround`` asks for it;
the default, error-feedback rounding (:mod:`uopsl.export.gptq`), has the same
goal, needs no iterations and did better on these models. ``uopsl validate``
decides either way.

AdaRound keeps the quantizer's scales and chooses, per weight, between the
grid point below and the one above. For each quantized Conv/Gemm, in graph
order, it minimises

    || f(W~ * x_q + b) - f(W * x + b) ||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta)

on the calibration images, where ``W~ = s * clip(floor(W / s) + h(V))`` with a
rectified sigmoid ``h`` of a free variable ``V`` per weight, ``x`` is the
layer's input in the float model, ``x_q`` its input in the INT8 model with
every earlier layer already rounded (so each layer also absorbs the error of
those before it, the "asymmetric reconstruction" of the paper), and ``f`` the
ReLU/ReLU6 that follows the layer, if any. The regulariser, annealed from
``beta`` 20 to 2 after a warm-up, drives every ``h(V)`` to 0 or 1; at the end
each weight is rounded down or up accordingly. The result is written back as
the quantizer wrote the weight: the int8 initializer behind the weight's
DequantizeLinear (``cpu`` variant) or the float initializer in front of its
QuantizeLinear, as ``s * q`` so it quantizes to exactly ``q`` (``trt``).

Same scales, same graph, same speed: only which grid point each weight takes
changes. The optimisation runs in PyTorch (the export stage's own dependency;
the runtime never sees it); the layer inputs and float targets come from ONNX
Runtime running the two graphs, cut down to the nodes each layer depends on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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

PURPOSE = "INT8 adaptive rounding (AdaRound)"
# The paper's rectified sigmoid stretch, regulariser weight, beta schedule and warm-up share.
_ZETA, _GAMMA = 1.1, -0.1
_BETA_START, _BETA_END = 20.0, 2.0
_WARM_UP = 0.2
_RUN_BATCH = 8  # images per forward pass when measuring a layer's output error


@dataclass(frozen=True)
class AdaRoundConfig:
    """How hard to optimise each layer's rounding.

    iterations: Adam steps per layer (the paper uses 10,000 on a GPU; a few
        hundred recover most of the gain on a CPU budget, docs/results.md).
    batch_images: calibration images per step.
    patch: each step of a Conv sees one random ``patch`` x ``patch`` window of
        its output (and the input window it reads) instead of whole feature
        maps: the early layers of a 320 px model would otherwise cost ~30x more.
    learning_rate: Adam's step size for the rounding variables.
    regularization: ``lambda``, the weight of the push towards 0/1.
    seed: the order in which images are drawn.
    """

    iterations: int = 500
    batch_images: int = 4
    patch: int = 24
    learning_rate: float = 3e-2
    regularization: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"AdaRound iterations must be >= 1, got {self.iterations}")
        if self.batch_images < 1:
            raise ConfigError(f"AdaRound batch_images must be >= 1, got {self.batch_images}")
        if self.patch < 1:
            raise ConfigError(f"AdaRound patch must be >= 1, got {self.patch}")
        if not self.learning_rate > 0:
            raise ConfigError(f"AdaRound learning_rate must be > 0, got {self.learning_rate}")
        if self.regularization < 0:
            raise ConfigError(f"AdaRound regularization must be >= 0, got {self.regularization}")


@dataclass(frozen=True)
class AdaRoundReport:
    """Per layer: output MSE with nearest rounding and with the chosen rounding, on the images used."""

    node: str
    mse_nearest: float
    mse_adaround: float
    changed_weights: int


def _depthwise(torch: Any, x: Any, weight: Any, bias: Any, stride: list[int], dil: list[int]) -> Any:
    """A depthwise convolution (padding 0) as a sum of ``k*k`` shifted, weighted slices of ``x``.

    Same values as ``conv2d(..., groups=C)``; PyTorch's CPU kernel for the
    weight gradient of a depthwise convolution is ~20x slower than this.
    """
    channels, _, kh, kw = weight.shape
    if channels != x.shape[1]:  # a channel multiplier: each input channel feeds channels / C outputs
        x = x.repeat_interleave(channels // x.shape[1], dim=1)
    ho = (x.shape[2] - (kh - 1) * dil[0] - 1) // stride[0] + 1
    wo = (x.shape[3] - (kw - 1) * dil[1] - 1) // stride[1] + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            r, c = i * dil[0], j * dil[1]
            term = x[:, :, r : r + (ho - 1) * stride[0] + 1 : stride[0], c : c + (wo - 1) * stride[1] + 1 : stride[1]] \
                * weight[:, 0, i, j].view(1, -1, 1, 1)
            y = term if y is None else y + term
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _forward(torch: Any, layer: RoundableLayer, x: Any, weight: Any, bias: Any) -> Any:
    """The layer and its activation on ``x`` (a Conv's input already padded by :func:`_padded`)."""
    f = torch.nn.functional
    node = layer.node
    if node.op_type == "Gemm":
        w = weight if node_attr(node, "transB", 0) else weight.t()
        y = f.linear(x.reshape(len(x), -1), w, bias)
    elif weight.shape[1] == 1 and int(node_attr(node, "group", 1)) > 1:
        y = _depthwise(torch, x, weight, bias, node_attr(node, "strides", [1, 1]), node_attr(node, "dilations", [1, 1]))
    else:
        y = f.conv2d(x, weight, bias, stride=tuple(node_attr(node, "strides", [1, 1])), padding=0,
                     dilation=tuple(node_attr(node, "dilations", [1, 1])), groups=int(node_attr(node, "group", 1)))
    low, high = layer.clamp
    if low is not None or high is not None:
        y = torch.clamp(y, min=low, max=high)
    return y


def _patch(layer: RoundableLayer, out_hw: tuple[int, int], size: int, gen: np.random.Generator) -> tuple[slice, ...]:
    """A random ``size`` x ``size`` window of a Conv's output and the window of its padded input it reads.

    Convolving the input window with padding 0 gives exactly that output
    window, so each step costs a patch, not a whole feature map.
    """
    stride = node_attr(layer.node, "strides", [1, 1])
    dil = node_attr(layer.node, "dilations", [1, 1])
    kernel = layer.weight.shape[2:]
    windows = []
    for ax in range(2):
        n = min(size, out_hw[ax])
        start = int(gen.integers(0, out_hw[ax] - n + 1))
        windows.append((slice(start, start + n),
                        slice(start * stride[ax], (start + n - 1) * stride[ax] + (kernel[ax] - 1) * dil[ax] + 1)))
    return windows[0][0], windows[1][0], windows[0][1], windows[1][1]


def _optimise(layer: RoundableLayer, x_q: np.ndarray, target: np.ndarray, config: AdaRoundConfig) -> tuple[np.ndarray, float,
                                                                                                       float]:
    """The rounded integer weights of ``layer``; also the output MSE of nearest and of chosen rounding."""
    torch = require("torch", PURPOSE)
    gen = np.random.default_rng(config.seed)
    scaled = layer.weight / layer.scale
    floor = np.floor(scaled)
    rest = np.clip(scaled - floor, 0.0, 1.0)
    # V such that h(V) starts at the fractional part: the soft weights start at the float weights.
    p = np.clip((rest - _GAMMA) / (_ZETA - _GAMMA), 1e-4, 1 - 1e-4)
    v = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32, requires_grad=True)
    floor_t = torch.tensor(floor, dtype=torch.float32)
    scale_t = torch.tensor(layer.scale, dtype=torch.float32)
    bias_t = None if layer.bias is None else torch.tensor(layer.bias, dtype=torch.float32)
    x_all, y_all = conv_padded(torch, layer, torch.from_numpy(x_q)), torch.from_numpy(target)
    lo, hi = -float(layer.qmax), float(layer.qmax)

    def soft(v_: Any) -> Any:
        return torch.clamp(torch.sigmoid(v_) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)

    def mse(ints: Any) -> float:
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(x_all), _RUN_BATCH):
                out = _forward(torch, layer, x_all[i : i + _RUN_BATCH], scale_t * ints, bias_t)
                total += float(((out - y_all[i : i + _RUN_BATCH]) ** 2).sum())
            return total / y_all.numel()

    nearest = torch.tensor(layer.nearest, dtype=torch.float32)  # what the quantizer wrote: the fallback
    opt = torch.optim.Adam([v], lr=config.learning_rate)
    warm = int(config.iterations * _WARM_UP)
    for it in range(config.iterations):
        idx = torch.from_numpy(gen.choice(len(x_all), size=min(config.batch_images, len(x_all)), replace=False))
        x, y = x_all[idx], y_all[idx]
        if layer.node.op_type == "Conv":
            oy, ox, iy, ix = _patch(layer, tuple(y.shape[2:]), config.patch, gen)
            x, y = x[:, :, iy, ix], y[:, :, oy, ox]
        h = soft(v)
        out = _forward(torch, layer, x, scale_t * torch.clamp(floor_t + h, lo, hi), bias_t)
        # Summed over channels, averaged over images and positions (as in the paper's reference code),
        # so lambda means the same for wide and narrow layers.
        loss = ((out - y) ** 2).sum(dim=1).mean()
        if it >= warm:
            progress_ = (it - warm) / max(1, config.iterations - warm)
            beta = _BETA_END + 0.5 * (_BETA_START - _BETA_END) * (1 + np.cos(np.pi * progress_))
            loss = loss + config.regularization * (1 - torch.abs(2 * h - 1) ** beta).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        chosen = torch.clamp(floor_t + (soft(v) >= 0.5).float(), lo, hi)
    before, after = mse(nearest), mse(chosen)
    if after > before:  # never make a layer worse than nearest rounding on the images it was fitted on
        return nearest.numpy().astype(np.float64), before, before
    return chosen.numpy().astype(np.float64), before, after


def adaround(float_model: Any, qmodel: Any, images: np.ndarray, config: AdaRoundConfig = AdaRoundConfig(), *,
             show_progress: bool = True) -> list[AdaRoundReport]:
    """Choose the rounding of every quantized Conv/Gemm weight of ``qmodel`` (edited in place) on ``images``.

    ``float_model`` is the FP32 model ``qmodel`` was quantized from (node
    names shared). ``images`` are calibration inputs in the model's input
    layout. Returns one report per layer, in graph order.
    """
    torch = require("torch", PURPOSE)
    layers, skipped = roundable_layers(float_model, qmodel)
    if skipped:
        log.info("AdaRound leaves %d quantized layer(s) with nearest rounding: %s", len(skipped),
                 "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    reports: list[AdaRoundReport] = []
    for layer in track(layers, total=len(layers), desc="AdaRound", show=show_progress):
        x_q = tensor_values(qmodel, layer.node.input[0], images)
        target = tensor_values(float_model, layer.float_output, images)
        low, high = layer.clamp
        if low is not None or high is not None:
            target = np.clip(target, low, high)
        # One thread: each step is a few small tensors, and OpenMP threads spinning at every
        # barrier make it 100x slower when another process holds the other core.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ints, before, after = _optimise(layer, x_q, target, config)
        finally:
            torch.set_num_threads(threads)
        changed = write_rounding(qmodel, layer, ints)
        reports.append(AdaRoundReport(layer.node.name, before, after, changed))
        log.debug("AdaRound %s: output MSE %.3g -> %.3g, %d weights moved", layer.node.name, before, after, changed)
    if reports:
        gain = [r.mse_nearest / r.mse_adaround for r in reports if r.mse_adaround > 0]
        log.info("AdaRound: %d layers on %d images, %d iterations each; median output MSE ratio "
                 "nearest/adaround %.2f", len(reports), len(images), config.iterations,
                 float(np.median(gain)) if gain else float("nan"))
    return reports
