"""Lay out one Lite0 checkpoint the way parity_matrix.py lays out its model, for exp_int8_float_layers.py.

Uses the matrix's own functions: a copy of the checkpoint with operating thresholds chosen on
the validation pool (``prepare_checkpoint``: sensitivity 0.9 for referable classes), its bundle
(``export_bundle``), a 64-image calibration set drawn with seed 0 from the train pool
(``calibration_set``) and the minmax / entropy / percentile tables from one statistics pass
(``calibration_tables``). Then:

    python benchmarks/prepare_int8_folder.py runs/s4_e2e/uopsl_ft runs/s4_int8/e2e runs/s3_n3000/data/train
    python benchmarks/exp_int8_float_layers.py --matrix runs/s4_int8/e2e --synthetic runs/s3_n3000 \\
        --tvhl ../shared/data/tvhl --methods minmax,percentile,entropy --groups none
"""

from __future__ import annotations

import sys
from pathlib import Path

from parity_matrix import calibration_set, calibration_tables, export_bundle, prepare_checkpoint  # benchmarks/ on sys.path
from uopsl.runtime.bundle import read_manifest


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit("usage: prepare_int8_folder.py CHECKPOINT OUT TRAIN_DIR (its sibling val/ gives the thresholds)")
    ckpt, out, train = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    prepare_checkpoint(ckpt, train.parent / "val", out)
    export_bundle(out / "checkpoint", out / "bundle")
    manifest = read_manifest(out / "bundle")
    cal = calibration_set(train, manifest, 64, 0, out / "calib64_seed0.npz")
    calibration_tables(out / "bundle" / "model.onnx", cal, out)
    print(f"ready: {out} (thresholds {manifest.thresholds.tolist()})")


if __name__ == "__main__":
    main()
