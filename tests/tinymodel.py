"""A tiny model with the deployed-model contract, for tests of layers below ``train``.

Contract (what ``uopsl export`` produces): input ``image`` uint8 (N, H, W, 3)
RGB; outputs ``probs`` (N, K) float32, ``logits`` (N, K) float32 and
``site_maps`` (N, K, h, w) float32 (each map sums to 1). Normalisation happens
inside the graph. Tests use it to exercise calibration, quantization, backends
and the screening pipeline without training a real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class TinyScreen(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 16, head: str = "sigmoid", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)  # the layers draw from the global RNG: same seed, same weights
        g = torch.Generator().manual_seed(seed)
        self.head = head
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU6(),
            nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU6(),
            nn.Conv2d(width, 2 * width, 1), nn.BatchNorm2d(2 * width), nn.ReLU6(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU6(),
        )
        self.query = nn.Parameter(torch.randn(num_classes, 2 * width, generator=g) * 0.5)
        self.cls = nn.Linear(2 * width, num_classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 1.5, generator=g)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
        self.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (image.float().permute(0, 3, 1, 2) - self.mean) / self.std
        t = self.features(x)  # N, C, h, w
        n, c, h, w = t.shape
        tokens = t.flatten(2).transpose(1, 2)  # N, hw, C
        att = torch.softmax(tokens @ self.query.t() / c**0.5, dim=1)  # N, hw, K
        pooled = att.transpose(1, 2) @ tokens  # N, K, C
        logits = (self.cls.weight.unsqueeze(0) * pooled).sum(-1) + self.cls.bias
        probs = torch.sigmoid(logits) if self.head == "sigmoid" else torch.softmax(logits, dim=1)
        return probs, logits, att.transpose(1, 2).reshape(n, -1, h, w)


def export_tiny_onnx(path: str | Path, num_classes: int = 3, size: int = 64, head: str = "sigmoid",
                     seed: int = 0, opset: int = 17) -> Path:
    """Export :class:`TinyScreen` to ONNX with a dynamic batch; returns the path."""
    path = Path(path)
    model = TinyScreen(num_classes, head=head, seed=seed)
    dummy = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["image"], output_names=["probs", "logits", "site_maps"],
        dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}, "logits": {0: "batch"}, "site_maps": {0: "batch"}},
        opset_version=opset, dynamo=False,
    )
    return path


def random_fundus_batch(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3) images: a bright disc on black, with noise (stand-ins for fundus photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) <= (size * 0.45) ** 2
    out = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8) // 2 + np.array([90, 40, 20], np.uint8)
    out[:, ~disc] = 0
    return out


def exact_int8_options() -> Any:
    """ONNX Runtime session options that run a QDQ file in its exact arithmetic on any CPU.

    Tests of the quantizer measure what its files compute by definition (what VNNI CPUs, OpenVINO on them
    and TensorRT compute), not this machine's integer kernels: on x86 without VNNI those saturate and sit
    ~9 dB from it (docs/results.md, section 4, session 22), which failed these tests there.
    """
    import onnxruntime as ort

    # No graph optimisation at all (not the quantizer's own exact_qdq_options, which these tests check):
    # every Q/DQ pair runs as written.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return opts


def last_conv_features(model: Any, images: np.ndarray) -> np.ndarray:
    """The encoder's output of a TinyScreen ONNX model (float or INT8): the last Conv's output after
    its ReLU6, what the head reads. ``model``: an ``onnx.ModelProto`` or a path. Weight-rounding tests measure it because the tiny random
    model's logits barely move."""
    import onnx
    import onnxruntime as ort

    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    last = [n for n in m.graph.node if n.op_type == "Conv"][-1].output[0]
    m.graph.output.append(onnx.ValueInfoProto(name=last))
    sess = ort.InferenceSession(m.SerializeToString(), exact_int8_options(), providers=["CPUExecutionProvider"])
    return np.clip(np.asarray(sess.run([last], {"image": images})[0], np.float64), 0.0, 6.0)


def rounding_against_nearest(out: Path, model: Path, table: Any, calib_set: Any, images: np.ndarray,
                             **config: Any) -> tuple[Any, float, float]:
    """Quantize ``model`` with nearest rounding and with ``config`` (no bias correction in either);
    returns the second result and both encoders' mean squared error from FP32 on ``images``."""
    from uopsl.export import quantize as qz

    reference = last_conv_features(model, images)
    results = [qz.quantize_model(model, table, out / f"{name}.onnx",
                                 qz.QuantizeConfig(bias_correction=False, **cfg), calib_set=calib_set,
                                 show_progress=False)
               for name, cfg in (("nearest", {"rounding": "nearest"}), ("rounded", config))]
    errs = [float(((last_conv_features(Path(r.path), images) - reference) ** 2).mean()) for r in results]
    assert results[0].rounded_layers == 0
    return results[1], errs[0], errs[1]


def calibrate_cli() -> Any:
    """``uopsl calibrate`` and ``uopsl quantize`` as train/cli.py registers them (lazily, under the same names)."""
    from uopsl.runtime.clikit import LazyGroup

    return LazyGroup(name="uopsl", lazy={"calibrate": "uopsl.train.commands.calibrate:command",
                                         "quantize": "uopsl.train.commands.quantize:command"})


def fundus_png_folder(folder: Path, n: int = 6, *, broken: bool = False) -> Path:
    """``n`` 96 px synthetic fundus PNGs (seed 11) in ``folder``; ``broken``: plus a JPEG that does not decode."""
    import cv2

    folder.mkdir(parents=True)
    for i, img in enumerate(random_fundus_batch(n, 96, seed=11)):
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder
