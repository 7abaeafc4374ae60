"""Quantization-aware fine-tuning (QAT) of the image encoder, distilled from the FP32 model.

Why: post-training INT8 of a model whose encoder was never trained with
rounding (the frozen ImageNet EfficientNet-Lite0 of the demo) moves its
probabilities enough to flip screening decisions (docs/results.md, section 4);
calibration methods, float layers, bias correction and AdaRound did not close
that gap. QAT lets the weights settle where INT8 rounding costs little.

What it simulates, per convolution of the encoder (BatchNorm folded into the
weights exactly as the ONNX export folds it, its statistics frozen):

* the weight on the quantizer's grid: symmetric int8, one scale per output
  channel (``max|w| / 127``), recomputed from the current weight every step;
* its input on an asymmetric uint8 grid over a fixed range (``min``/``max``
  over the calibration images, widened to hold 0, as ORT's QDQ uses it);
* its output after the fused activation (timm's ``BatchNormAct2d``: the
  ReLU6 the quantizer folds into the range) on a uint8 grid, except the
  encoder's last output, which the float head reads in float;
* its bias on the int32 grid of ``input scale x weight scale``, as the
  quantizer stores it;
* each residual sum (a block's output, which the next block's convolution
  and its shortcut both read) on a uint8 grid.

The grids come from the FP32 model's activations on the calibration images,
as ``uopsl calibrate`` measures them on the FP32 file. Before session 46
the ranges were measured with the weights already rounded, biases stayed
float and residual sums were not rounded; on ImageNet Lite0 at 64 px that
left the simulation 23.2 dB from what ONNX Runtime computes from the
quantized file, and with all three as deployed it sits 30.0 dB from it (at
128 px: 31.0 and 32.5 dB). That is about as close as float kernels allow:
the simulation itself moves by 26 (31) dB when PyTorch's oneDNN convolutions
are switched off (``benchmarks/qat_simulation_fidelity.py``; docs/results.md).

Rounding passes gradients straight through (PyTorch's fake-quantize ops). The
stem's input is simulated as the deployed graph sees it: ``x - mean`` on the
uint8 grid and the weight divided by the per-channel std before rounding.

Objective: the student (the model with simulated INT8) must reproduce the
unchanged FP32 model's logits (mean squared error) on unlabelled fundus
photographs; only the encoder trains (the deployed head stays float).
Labels are not used, so any photographs from the deployment population serve.

The result is a normal checkpoint (``stage: "qat"``) with the original
operating thresholds. Export it, calibrate with minmax and quantize with
nearest rounding and no bias correction (what was simulated: bias correction
and GPTQ pull each layer towards the QAT model's own FP32 outputs and undid
part of what it learned; docs/results.md, session 46), and validate the INT8
file against the ORIGINAL checkpoint: that is the model whose decisions the
device must keep.

Limits: the exact simulation needs activations fused into the BatchNorm
module (timm's EfficientNet-Lite, the default backbone). For torchvision
backbones (separate ReLU modules, residual adds after the BatchNorm) only
weights and convolution inputs are simulated.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uopsl.runtime.errors import ConfigError
from uopsl.train.checkpoint import UNFINISHED_KEY, UNFINISHED_RUN_KEY, CheckpointMeta, save_model
from uopsl.train.loops import StageRunner, TrainConfig, run_epochs, train_loop
from uopsl.train.model import UopslModel
from uopsl.train.torchdata import ImageDataset

log = logging.getLogger(__name__)

QMAX_WEIGHT = 127  # symmetric int8 weights on [-127, 127], as ONNX Runtime quantizes them


@dataclass(frozen=True)
class QatConfig:
    """QAT settings.

    epochs / batch_size / lr / seed: the optimisation (Adam on the encoder only;
    ``bias_lr`` for its biases and BatchNorm shifts).
    calib_images: images (of the training set, the first ones) whose activation
    ranges fix the simulated uint8 grids. augment: light photometric jitter
    and flips (teacher and student see the same image).
    """

    epochs: int = 2
    batch_size: int = 8
    # Adam moves every weight by ~lr per step; from a converged model 1e-5 overshoots
    # (the simulated error first rises), 3e-6 lowers it steadily (tests/test_qat.py).
    lr: float = 3e-6
    # Biases and BatchNorm shifts may get their own rate: rounding shifts each channel's
    # output mean, which QAT must learn itself. 100x lr fitted the training images no
    # better and drifted further on real photographs (docs/results.md, section 4).
    bias_lr: float = 3e-6
    calib_images: int = 64
    seed: int = 0
    augment: bool = True
    device: str = "cpu"
    save_every: int = 50

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.calib_images < 1:
            raise ConfigError(
                f"epochs, batch_size and calib_images must be >= 1, got {self.epochs}, {self.batch_size}, "
                f"{self.calib_images}"
            )
        if not (self.lr > 0 and self.bias_lr > 0):
            raise ConfigError(f"lr and bias_lr must be > 0, got {self.lr} and {self.bias_lr}")

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` the stage runner uses (encoder learning rate = ``lr``)."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, lr_encoder=self.lr,
                           weight_decay=0.0, seed=self.seed, augment=self.augment, balanced=False,
                           save_every=self.save_every, device=self.device, amp=False)


# -- simulated INT8 ------------------------------------------------------------------
def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """The per-output-channel scales (``max|w| / 127``) of symmetric int8 weights ``w`` (out, ...)."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12)
    return (amax / QMAX_WEIGHT).float()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, ...) rounded to symmetric int8 per output channel, gradient straight through."""
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, weight_scales(w), zero, 0, -QMAX_WEIGHT, QMAX_WEIGHT)


def fake_quant_bias(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``b`` rounded to the int32 grid ``scale`` (per channel: input scale x weight scale), gradient straight
    through. An int32 range is never reached by a bias on that grid, so there is no clamp."""
    return b + (torch.round(b / scale) * scale - b).detach()



def uint8_grid(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of ONNX Runtime's asymmetric uint8 grid over [lo, hi] (widened to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


class _Range:
    """Running min/max of a tensor (the calibration pass), then its uint8 grid."""

    def __init__(self) -> None:
        self.lo, self.hi = float("inf"), float("-inf")
        self.grid: tuple[float, int] | None = None

    def observe(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.detach().min()))
        self.hi = max(self.hi, float(x.detach().max()))

    def pin(self, lo: float, hi: float) -> None:
        """Fix the grid to ``[lo, hi]`` now, whatever calibration sees (the stem input: see SimulatedInt8)."""
        self.lo, self.hi = lo, hi
        self.grid = uint8_grid(lo, hi)

    def freeze(self) -> None:
        if self.grid is not None:  # pinned (or frozen already): the calibration pass does not move it
            return
        if self.lo > self.hi:
            raise ConfigError("an encoder layer saw no calibration data; the calibration pass did not run")
        self.grid = uint8_grid(self.lo, self.hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.grid is None:
            self.observe(x)
            return x
        scale, zero = self.grid
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class _SimConv:
    """A convolution and its BatchNorm, folded, with simulated INT8 weight and input.

    Installed as the convolution's ``forward``: the module tree and its
    ``state_dict`` keys stay as they are (checkpoints and resume work
    unchanged), and the fold is recomputed from the live parameters each call.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, input_std: torch.Tensor | None) -> None:
        self.conv, self.bn = conv, bn
        self.input_range = _Range()
        # The stem: the deployed graph feeds ``x - mean`` and folds 1/std into the weight.
        self.input_std = None if input_std is None else input_std.view(1, -1, 1, 1)
        # True during SimulatedInt8.calibrate: FP32 arithmetic, as the deployed table's ranges are measured
        # on the FP32 file (ranges measured with rounded weights sat up to 1.7 % off that table's).
        self.calibrating = False

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.conv.weight, self.conv.bias
        if self.bn is not None:
            mean, var = self.bn.running_mean, self.bn.running_var
            if mean is None or var is None:
                raise ConfigError("QAT folds each BatchNorm's running statistics, but a BatchNorm2d of the encoder "
                                  "keeps none (track_running_stats=False); use a backbone whose BatchNorms track them")
            scale = self.bn.weight / torch.sqrt(var + self.bn.eps)
            w = w * scale.view(-1, *([1] * (w.dim() - 1)))
            shift = self.bn.bias - mean * scale
            b = shift if b is None else b * scale + shift
        return w, b

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # named as nn.Conv2d.forward, which it replaces
        w, b = self.folded()
        if self.input_std is not None:
            std = self.input_std.to(input.device)
            input, w = input * std, w / std
        if self.calibrating:
            if self.input_range.grid is None:  # (the stem's is pinned)
                self.input_range.observe(input)
            return self.conv._conv_forward(input, w, b)
        x = self.input_range(input)
        grid = self.input_range.grid
        if b is not None and grid is not None:
            b = fake_quant_bias(b, grid[0] * weight_scales(w))
        return self.conv._conv_forward(x, fake_quant_weight(w), b)


class _SimAfterBN:
    """What is left of a folded BatchNorm: its fused activation, then the uint8 output grid."""

    def __init__(self, bn: nn.BatchNorm2d, quantize_output: bool) -> None:
        self.act = getattr(bn, "act", None)
        self.drop = getattr(bn, "drop", None)
        self.output_range = _Range() if quantize_output else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # named as nn.BatchNorm2d.forward, which it replaces
        x = input
        if self.drop is not None:
            x = self.drop(x)
        if self.act is not None:
            x = self.act(x)
        return self.output_range(x) if self.output_range is not None else x


class _SimBlockOutput:
    """A residual block's output (the sum of its last BatchNorm's and its input) on a uint8 grid.

    The quantizer puts a Q/DQ pair on each residual ``Add``: the next block's
    convolution and its shortcut both read the rounded sum.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.output_range: _Range | None = _Range()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # named as the block's forward, which it replaces
        out = type(self.block).forward(self.block, x)
        return self.output_range(out) if self.output_range is not None else out


def _conv_bn_pairs(trunk: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every Conv2d of ``trunk`` (module order) with the BatchNorm2d that normalises its output, if any."""
    mods = list(trunk.named_modules())
    pairs: list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]] = []
    for i, (name, mod) in enumerate(mods):
        if not isinstance(mod, nn.Conv2d):
            continue
        if type(mod) is not nn.Conv2d:  # subclasses (e.g. 'same'-padding convs) pad in their own forward
            raise ConfigError(f"QAT cannot simulate {type(mod).__name__} ({name}); use a backbone with plain Conv2d")
        bn = None
        for _, later in mods[i + 1:]:
            if isinstance(later, nn.Conv2d):
                break
            if isinstance(later, nn.BatchNorm2d) and later.num_features == mod.out_channels:
                bn = later
                break
        pairs.append((name, mod, bn))
    if not pairs:
        raise ConfigError("the encoder has no Conv2d layer to quantize")
    return pairs


class SimulatedInt8:
    """Context manager: inside it the model's encoder computes with simulated INT8.

    On entry every (Conv2d, BatchNorm) pair computes in its folded,
    fake-quantized form; :meth:`calibrate` then fixes the activation grids
    (until then they only record ranges); on exit the modules compute as
    before, with whatever their parameters learned meanwhile.
    """

    def __init__(self, model: UopslModel) -> None:
        self.model = model
        self.encoder = model.fundus.encoder
        self._patched: list[nn.Module] = []
        self.layers: list[_SimConv] = []
        self.outputs: list[_SimAfterBN] = []
        self.block_outputs: list[_SimBlockOutput] = []

    def __enter__(self) -> SimulatedInt8:
        pairs = _conv_bn_pairs(self.encoder.trunk)
        std = self.encoder.std.detach().reshape(-1).clone()
        mean = self.encoder.mean.detach().reshape(-1)
        for i, (_, conv, bn) in enumerate(pairs):
            first = i == 0 and conv.in_channels == std.numel()
            sim = _SimConv(conv, bn, std if first else None)
            if first:
                # The deployed table bounds the stem's input, ``x - mean`` of 0..255 pixels, from the input
                # type (uopsl.calibration.ranges.input_bound_ranges), not from the calibration images.
                sim.input_range.pin(float(0.0 - mean.max()), float(255.0 - mean.min()))
            conv.forward = sim.forward  # type: ignore[method-assign]  # instance attribute, removed on exit
            self._patched.append(conv)
            self.layers.append(sim)
            if bn is not None:
                # timm's BatchNormAct2d holds the activation the quantizer folds into the
                # output range; the encoder's last output is read in float by the head.
                after = _SimAfterBN(bn, quantize_output=hasattr(bn, "act") and i < len(pairs) - 1)
                bn.forward = after.forward  # type: ignore[method-assign]  # as above
                self._patched.append(bn)
                self.outputs.append(after)
        for block in self.encoder.trunk.modules():
            if getattr(block, "has_skip", False) is True:  # timm's residual blocks say whether they add
                block_sim = _SimBlockOutput(block)
                block.forward = block_sim.forward  # type: ignore[method-assign]  # as above
                self._patched.append(block)
                self.block_outputs.append(block_sim)
        log.info("QAT: %d convolutions simulated in INT8 (%d with a folded BatchNorm), %d residual sums",
                 len(self.layers), len(self.outputs), len(self.block_outputs))
        return self

    def ranges(self) -> Iterator[_Range]:
        for q in self.layers:
            yield q.input_range
        for a in self.outputs:
            if a.output_range is not None:
                yield a.output_range
        for blk in self.block_outputs:
            if blk.output_range is not None:
                yield blk.output_range

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Fix every simulated uint8 grid from ``images`` (N, 3, S, S) float 0..255 (minmax of the FP32 model's
        activations, as ``uopsl calibrate`` measures them on the FP32 file)."""
        was_training = self.model.training
        self.model.eval()
        for layer in self.layers:
            layer.calibrating = True
        try:
            for i in range(0, len(images), batch_size):
                self.model(images[i:i + batch_size])
        finally:
            for layer in self.layers:
                layer.calibrating = False
        for r in self.ranges():
            r.freeze()
        self.model.train(was_training)

    def __exit__(self, *exc: object) -> None:
        for mod in self._patched:
            del mod.forward
        self._patched.clear()


# -- the stage -----------------------------------------------------------------------
def distillation_loss(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean squared difference of the student's logits from the FP32 teacher's on batch ``x``."""
    with torch.no_grad():
        target = teacher(x)["logits"]
    loss = F.mse_loss(student(x)["logits"], target)
    return {"logit_mse": loss.detach(), "loss": loss}


def qat_finetune(model: UopslModel, meta: CheckpointMeta, train_ds: ImageDataset, cfg: QatConfig,
                 out: Path, run_key: str = "", identity: dict[str, str] | None = None
                 ) -> tuple[UopslModel, dict[str, Any]]:
    """Fine-tune ``model``'s encoder under simulated INT8 towards its own FP32 outputs; write the checkpoint.

    ``train_ds``: fundus photographs (targets unused). Resumes an interrupted
    run in ``out`` when rerun with the same settings. Returns the model and
    the per-epoch history (logit MSE under simulated INT8). ``run_key``: what an interrupted run must share
    with this one besides the settings (the command passes the teacher's weights and the photographs; default:
    the checkpoint's data fingerprint, which says nothing of ``train_ds``). ``identity``: the run's
    :func:`~uopsl.train.workflow.run_identity`, stored in the checkpoint so that a rerun reuses it and a run with
    other settings or data is refused (``uopsl qat`` checks it before anything is written).
    """
    if len(train_ds) < cfg.calib_images:
        raise ConfigError(f"QAT needs at least calib_images={cfg.calib_images} images, got {len(train_ds)}")
    out.mkdir(parents=True, exist_ok=True)
    model.oct = None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # Only the encoder trains: the deployed head stays float and must keep computing what it did.
    for name, p in model.named_parameters():
        p.requires_grad_(".encoder." in f".{name}")
    tcfg = cfg.train_config()
    # Every QAT setting (bias_lr and calib_images are not in TrainConfig) keys the resume check.
    runner = StageRunner(model, tcfg, out, "qat",
                         f"{run_key or meta.data_fingerprint}|{json.dumps(asdict(cfg), sort_keys=True)}",
                         meta.preprocess)
    # The runner's own optimiser has one rate for the encoder; QAT replaces it (before any
    # resume, so a resumed run loads its state into this one).
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    runner.opt = torch.optim.Adam([{"params": weights, "lr": cfg.lr}, {"params": biases, "lr": cfg.bias_lr}])
    teacher.to(runner.device)
    # The activation grids come from the ORIGINAL weights (before any resume), on the
    # first calib_images photographs without augmentation: a resumed run simulates the same grids.
    plain = copy.copy(train_ds)
    plain.augment = False
    calib = torch.stack([plain[i][0] for i in range(cfg.calib_images)]).to(runner.device)

    with SimulatedInt8(model) as sim:
        sim.calibrate(calib)
        runner.resume()

        def loss_fn(x: torch.Tensor, _: torch.Tensor) -> dict[str, torch.Tensor]:
            return distillation_loss(runner.ddp, teacher, x)

        # Eval mode throughout: folded (frozen) BatchNorm statistics, no dropout, the deployed arithmetic.
        run_epochs(runner, len(train_ds), train_loop(runner, train_ds, loss_fn, eval_mode=True))
    result = {"history": runner.info["history"], "qat": asdict(cfg)}
    if runner.dist.main:
        from uopsl.train.workflow import RUN_IDENTITY_KEY  # workflow runs the stages; this module is one of them

        # The teacher's metrics stay (its thresholds' provenance), not what described the teacher's own run.
        kept = {k: v for k, v in meta.metrics.items()
                if k not in (UNFINISHED_KEY, UNFINISHED_RUN_KEY, RUN_IDENTITY_KEY)}
        save_model(out, model, replace(meta, stage="qat", train_config={**meta.train_config, "qat": asdict(cfg)},
                                       metrics={**kept, "qat": result,
                                                **({RUN_IDENTITY_KEY: identity} if identity else {})}))
    runner.finish()
    return model, result
