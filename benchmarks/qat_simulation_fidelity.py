"""How closely does QAT's simulated INT8 (``uopsl.train.qat.SimulatedInt8``) compute what the INT8 file computes?

The set-up of ``tests/test_qat.py``'s fidelity test: an ImageNet EfficientNet-Lite0 UOPSL model, stand-in
fundus images (a noisy disc on black), a minmax table from ``--calib`` of them, per-channel INT8 with nearest
rounding and no bias correction, the file run by ONNX Runtime with graph optimisation off (every Q/DQ pair as
written: the file's exact arithmetic). Prints the logits' SQNR of the simulation against the file (and of
each against FP32) with each of session 46's three parts switched off and on:

* ``fp32_ranges``: the grids come from the FP32 model's activations (off: measured with rounded weights);
* ``int32_bias``: each bias on the int32 grid of input scale x weight scale (off: float bias);
* ``residual_sums``: each residual block's output on a uint8 grid (off: float).

and, as the floor no simulation can pass, the simulation against itself with PyTorch's oneDNN kernels off.

    python benchmarks/qat_simulation_fidelity.py --size 64 --calib 16 --test 16
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.ranges import collect_statistics
from uopsl.export.onnx_export import export_onnx
from uopsl.export.quantize import QuantizeConfig, quantize_model
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.train import qat
from uopsl.train.model import DeployModel, ModelConfig, UopslModel

PARTS = ("fp32_ranges", "int32_bias", "residual_sums")


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).mean() / ((ref - x) ** 2).mean()))


def simulate(model: UopslModel, calib: torch.Tensor, x: torch.Tensor, parts: set[str]) -> np.ndarray:
    """Logits under the simulation with only ``parts`` of session 46's changes."""
    real_bias = qat.fake_quant_bias
    if "int32_bias" not in parts:
        qat.fake_quant_bias = lambda b, scale: b  # type: ignore[assignment]
    try:
        with torch.no_grad(), qat.SimulatedInt8(model) as sim:
            if "residual_sums" not in parts:
                for block in sim.block_outputs:
                    block.output_range = None
            if "fp32_ranges" in parts:
                sim.calibrate(calib)
            else:  # the calibration pass of before: weights (and the stem's input) already rounded
                sim.model(calib)
                for r in sim.ranges():
                    r.freeze()
            return model(x)["logits"].numpy()
    finally:
        qat.fake_quant_bias = real_bias  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--calib", type=int, default=16, help="calibration images (seed 1)")
    ap.add_argument("--test", type=int, default=16, help="test images (seed 2)")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="efficientnet_lite0", init="imagenet", classes=("normal", "dme", "dr"), dim=32,
                      sites=2)
    text = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    model = UopslModel(cfg, text).eval()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tinymodel import random_fundus_batch  # the test's stand-in photographs: a noisy disc on black

    calib_u8, test_u8 = random_fundus_batch(args.calib, args.size, 1), random_fundus_batch(args.test, args.size, 2)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx(DeployModel(model, args.size), fp32, args.size)
        table = collect_statistics(fp32, CalibrationSet.from_images(calib_u8), batch_size=8,
                                   show_progress=False).table("minmax")
        quantize_model(fp32, table, int8, QuantizeConfig(bias_correction=False, rounding="nearest"),
                       show_progress=False)
        with OrtBackend(fp32, "cpu", 1) as b:
            l_fp = b.infer(test_u8)["logits"]
        with OrtBackend(int8, "cpu", 1, optimization="disable") as b:
            l_q = b.infer(test_u8)["logits"]
    calib, x = as_input(calib_u8), as_input(test_u8)
    print(f"INT8 file vs FP32: {sqnr_db(l_fp, l_q):.2f} dB")
    print("| " + " | ".join(PARTS) + " | simulation vs file | simulation vs FP32 | error correlation |")
    print("|" + "---|" * (len(PARTS) + 3))
    for flags in itertools.product((False, True), repeat=len(PARTS)):
        parts = {p for p, on in zip(PARTS, flags) if on}
        l_s = simulate(model, calib, x, parts)
        corr = np.corrcoef((l_q - l_fp).ravel(), (l_s - l_fp).ravel())[0, 1]
        print("| " + " | ".join("on" if f else "off" for f in flags)
              + f" | {sqnr_db(l_q, l_s):.2f} dB | {sqnr_db(l_fp, l_s):.2f} dB | {corr:.3f} |")
    every = set(PARTS)
    torch.backends.mkldnn.enabled = False
    l_off = simulate(model, calib, x, every)
    torch.backends.mkldnn.enabled = True
    l_on = simulate(model, calib, x, every)
    print(f"floor: the full simulation with oneDNN off vs on: {sqnr_db(l_on, l_off):.2f} dB; "
          f"with oneDNN off vs the file: {sqnr_db(l_q, l_off):.2f} dB")


if __name__ == "__main__":
    main()
