"""Fixtures for the parity tests: images, small models with the deployed contract, bundles, INT8 variants.

Two models serve different checks:

* the tiny UOPSL model (``trainhelpers.tiny_model``, random ResNet-18 trunk)
  saved as a checkpoint and exported like ``uopsl export`` does: the PyTorch
  reference vs ONNX Runtime, the CLI, and deliberately broken bundles;
* a "colour screen": :class:`tinymodel.TinyScreen` with hand-set weights whose
  outputs are linear in the image's mean colour, fitted in closed form to
  images with a class-specific colour cast. Its decisions have a margin (as a
  trained model's do on clean data), so the INT8 gates test INT8 arithmetic
  rather than the noise of a random network, without a training loop in the
  test suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from tinymodel import TinyScreen
from trainhelpers import CLASSES, tiny_model
from uopsl.export.bundle_writer import add_file, write_bundle
from uopsl.export.onnx_export import export_onnx
from uopsl.runtime.bench import synthetic_fundus
from uopsl.runtime.bundle import ClassSpec
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes
from uopsl.train.checkpoint import save_model

#: The real TVHL images (read-only shared data next to the repository; never copied into it).
TVHL = (Path(__file__).resolve().parents[3] / "shared" / "data" / "tvhl").resolve()
#: Per-class RGB gains of the cast images (class names as in ``trainhelpers.CLASSES``).
CAST_GAINS = {"normal": (1.0, 1.0, 1.0), "a": (1.0, 1.9, 0.4), "b": (0.4, 0.8, 3.0)}
SIZE = 64  # model input size of every fixture


def cast_images(folder: Path, n: int, seed: int, size: int = 96) -> list[Path]:
    """``n`` synthetic fundus PNGs in ``folder/<class>/`` (folder-per-class), classes cycling normal/a/b."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        name = CLASSES[i % len(CLASSES)]
        img = synthetic_fundus(int(rng.integers(1 << 30)), size).astype(np.float32)
        gain = np.array(CAST_GAINS[name], np.float32) * rng.uniform(0.95, 1.05)
        inside = img.max(axis=2) > 0
        img = np.where(inside[..., None], np.clip(img * gain, 0, 255), 0).astype(np.uint8)
        p = folder / name / f"{seed}_{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def targets_of(paths: Sequence[Path], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """One-hot (N, K) targets from the class folder of each path."""
    return np.array([[p.parent.name == c for c in classes] for p in paths], np.float32)


def model_inputs(paths: Sequence[Path], size: int = SIZE) -> np.ndarray:
    """The runtime's preprocessing of each file, stacked (N, size, size, 3) uint8."""
    cfg = PreprocessConfig(size=size)
    return np.stack([preprocess(read_bytes(p), cfg, source=str(p)).image for p in paths])


def _colour_features(channels: int) -> list[list[int]]:
    # channel c of the last feature map carries colour (c % 16) % 3 (see color_screen)
    return [[c for c in range(channels) if (c % 16) % 3 == k] for k in range(3)]


def color_screen(images: np.ndarray, targets: np.ndarray, seed: int = 0, ridge: float = 1.0) -> TinyScreen:
    """A TinyScreen whose logits are ridge-fitted linear functions of the mean colour (see module doc)."""
    torch.manual_seed(seed)
    m = TinyScreen(targets.shape[1], width=16, seed=seed).eval()
    convs = [mod for mod in m.features if isinstance(mod, nn.Conv2d)]
    with torch.no_grad():
        for bn in (mod for mod in m.features if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        c0, c1, c2, c3 = convs
        for c in convs:
            c.weight.zero_()
            c.bias.zero_()
        c0.bias.fill_(2.2)  # normalised pixels start near -2.1: keep them inside ReLU6's [0, 6]
        for j in range(c0.out_channels):
            c0.weight[j, j % 3] = 1.0 / 9  # 3x3 box filter of one colour channel
        c1.weight.fill_(1.0 / 9)  # depthwise box filter
        for j in range(c2.out_channels):
            c2.weight[j, j % c2.in_channels, 0, 0] = 1.0
        for j in range(c3.out_channels):
            c3.weight[j, j] = 1.0 / 9
        m.query.zero_()  # uniform attention: pooled tokens = mean of the feature map
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - m.mean) / m.std
        feats = m.features(x).mean(dim=(2, 3)).numpy().astype(np.float64)
    groups = _colour_features(feats.shape[1])
    colour = np.stack([feats[:, g].mean(axis=1) for g in groups], axis=1)
    mu, sd = colour.mean(axis=0), colour.std(axis=0) + 1e-6
    z = np.c_[(colour - mu) / sd, np.ones(len(colour))]
    weight = np.zeros((targets.shape[1], feats.shape[1]), np.float32)
    bias = np.zeros(targets.shape[1], np.float32)
    for k in range(targets.shape[1]):
        goal = np.where(targets[:, k] > 0, 4.0, -4.0)
        w = np.linalg.solve(z.T @ z + ridge * np.diag([1.0, 1.0, 1.0, 0.0]), z.T @ goal)
        for g, wk in zip(groups, w[:3] / sd):
            weight[k, g] = wk / len(g)
        bias[k] = w[3] - (mu / sd) @ w[:3]
    with torch.no_grad():
        m.cls.weight.copy_(torch.from_numpy(weight))
        m.cls.bias.copy_(torch.from_numpy(bias))
    return m


def margin_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the middle of the gap between negatives and positives (Youden's point where they overlap)."""
    from uopsl.runtime.metrics import roc_curve

    out = []
    for k in range(probs.shape[1]):
        y, p = targets[:, k] > 0, probs[:, k]
        lo, hi = p[~y].max(), p[y].min()
        if hi > lo:
            out.append(float((lo + hi) / 2))
        else:
            c = roc_curve(y, p)
            out.append(float(c.thresholds[int(np.nanargmax(c.tpr - c.fpr))]))
    return out


def median_thresholds(probs: np.ndarray) -> list[float]:
    """Per class, halfway between the two middle probabilities: about half the images positive, none on the line."""
    out = []
    for k in range(probs.shape[1]):
        s = np.sort(probs[:, k])
        i = len(s) // 2
        out.append(float((s[i - 1] + s[i]) / 2))
    return out


def write_contract_bundle(out: Path, module: Any, names: Sequence[str], thresholds: Sequence[float],
                          site_map_size: tuple[int, int], size: int = SIZE, head: str = "sigmoid",
                          preprocess_config: PreprocessConfig | None = None) -> Path:
    """Export ``module`` (deployed contract) and write a bundle with ``names`` (all but 'normal' referable)."""
    onnx_path = out.parent / f"{out.name}.onnx"
    export_onnx(module, onnx_path, size)
    classes = [ClassSpec(n, (n,), float(t), n != "normal") for n, t in zip(names, thresholds)]
    write_bundle(out, onnx_path, classes, head, preprocess_config or PreprocessConfig(size=size),  # type: ignore[arg-type]
                 class_bank=np.eye(len(names), 8, dtype=np.float32), site_map_size=site_map_size, opset=17,
                 backbone="fixture")
    onnx_path.unlink()
    return out


def tiny_checkpoint(folder: Path, seed: int = 0, random_text: bool = False) -> Path:
    """The tiny UOPSL model saved as a checkpoint folder (``random_text``: see ``trainhelpers.tiny_model``)."""
    model, meta = tiny_model(seed=seed, random_text=random_text)
    save_model(folder, model, meta)
    return folder


def export_checkpoint(ckpt: Path, out: Path, paths: Sequence[Path]) -> Path:
    """Bundle of a checkpoint (DeployModel -> ONNX) with thresholds at the median of its probabilities on ``paths``."""
    from uopsl.train.checkpoint import load_model
    from uopsl.train.model import DeployModel

    model, meta = load_model(ckpt)
    deploy = DeployModel(model.eval(), meta.preprocess.size)
    with torch.no_grad():
        probs = deploy(torch.from_numpy(model_inputs(paths, meta.preprocess.size)))[0].numpy()
    return write_contract_bundle(out, deploy, model.config.classes, median_thresholds(probs), (deploy.h, deploy.w),
                                 meta.preprocess.size, model.config.head, meta.preprocess)


def add_int8(bundle: Path, calibration: np.ndarray, *, method: str = "minmax", variant: str = "cpu",
             exclude: tuple[str, ...] = (), table_edit: Any = None, bias_correction: bool = True) -> Any:
    """Calibrate the bundle's FP32 model on ``calibration``, quantize it and register it in the manifest.

    ``table_edit(table) -> table`` may alter the calibration table first (to break one range on purpose).
    The quantizer's defaults apply (bias correction on the same ``calibration`` images).
    """
    from uopsl.calibration.dataset import CalibrationSet
    from uopsl.calibration.ranges import calibrate
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    fp32 = bundle / "model.onnx"
    calib = CalibrationSet.from_images(calibration, PreprocessConfig(size=calibration.shape[1]))
    table = calibrate(fp32, calib, method=method, show_progress=False)
    if table_edit is not None:
        table = table_edit(table)
    name = "model.int8.onnx" if variant == "cpu" else "model.int8.trt.onnx"
    result = quantize_model(fp32, table, bundle / name,
                            QuantizeConfig(variant, exclude=exclude, bias_correction=bias_correction),
                            calib_set=calib, show_progress=False)
    add_file(bundle, None, name, "onnx", result.precision, info=result.manifest_info())  # type: ignore[arg-type]
    return result
