"""Does calibrating on the photographs a device will see keep INT8 closer to FP32? (issue 4, exploration)

The parity matrix calibrates its Lite0 model on 64 *synthetic* training photographs and
then judges the INT8 files on 200 synthetic and 200 real TVHL photographs. On TVHL the
files fail worst (top-1 94 %, 2-10 % of referral calls flipped), and the activation ranges
they use were measured on images unlike those. A clinic would calibrate on its own
camera's photographs. This script asks how much of the TVHL loss that recovers, and what
it costs on the synthetic photographs, by calibrating the same model three ways:

* ``synthetic``: the matrix's 64 synthetic training photographs (as today);
* ``tvhl``: 64 TVHL photographs of patients who have no photograph in the 200 judged
  (drawn with ``--seed``);
* ``mixed``: the first 32 of each.

For each population and range method the model is quantized with the toolkit's defaults
(float head, GPTQ rounding and bias correction on the same population) and compared with
the FP32 ONNX file on ONNX Runtime, on the matrix's two image sets: top-1 agreement, top-1
swaps between two classes FP32 already calls present, referral calls flipped, the largest
share of one class's positive/negative calls changed, and the logits SQNR.

Reproduce (docs/results.md, section 4; ~10 min on 2 cores):

    python benchmarks/exp_int8_calibration_population.py --matrix /tmp/runs/matrix/efficientnet_lite0 \\
        --synthetic /tmp/runs/synthetic --tvhl ../shared/data/tvhl --out /tmp/s11/calpop.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.ranges import collect_statistics
from uopsl.export.quantize import QuantizeConfig, quantize_model
from uopsl.train import data
from exp_int8_float_layers import images, run  # benchmarks/ is on sys.path when run as a script
from parity_matrix import synthetic_records, tvhl_records
from uopsl.runtime.bundle import read_manifest


def tvhl_calibration_paths(root: Path, judged: list[Path], n: int, seed: int) -> list[Path]:
    """``n`` TVHL fundus photographs of patients with no photograph among ``judged``."""
    src = data.read_tvhl(root, modality="fundus", task="four_class")
    judged_names = {p.name for p in judged}
    judged_patients = {p.name.split("_")[0] for p in judged}
    pool = [Path(s.path) for s in src.samples
            if Path(s.path).name not in judged_names and Path(s.path).name.split("_")[0] not in judged_patients]
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} TVHL photographs of patients outside the judged set; need {n}")
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), n, replace=False))
    return [pool[i] for i in pick]


def compare(m: Any, ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    (p0, l0), (p1, l1) = ref, got
    th = np.asarray(m.thresholds)
    a, b = l0.argmax(1), l1.argmax(1)
    swaps = sum(1 for i in np.where(a != b)[0] if p0[i, a[i]] >= th[a[i]] and p0[i, b[i]] >= th[b[i]])
    calls = ((p0 >= th) != (p1 >= th)).mean(axis=0)
    worst = int(np.argmax(calls))
    return {"top1": float((a == b).mean()), "top1_swaps_between_present_classes": int(swaps),
            "referral_flips": int((m.decide(p0)[1] != m.decide(p1)[1]).sum()),
            "worst_class_call_change": [m.class_names[worst], float(calls[worst])],
            "logits_sqnr_db": float(10 * np.log10((l0 ** 2).mean() / ((l0 - l1) ** 2).mean())), "images": len(l0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=Path, default=Path("/tmp/runs/matrix/efficientnet_lite0"))
    ap.add_argument("--synthetic", type=Path, default=Path("/tmp/runs/synthetic"))
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    ap.add_argument("--populations", default="synthetic,tvhl,mixed")
    ap.add_argument("--seed", type=int, default=1, help="draw of the TVHL calibration photographs")
    ap.add_argument("--out", type=Path, default=None, help="JSON of every row")
    args = ap.parse_args()
    bundle = args.matrix / "bundle"
    m = read_manifest(bundle)
    syn, _ = synthetic_records(args.synthetic / "data" / "test", 200)
    judged_tvhl = [r.path for r in tvhl_records(args.tvhl, 200, 0)]
    sets = {"synthetic": images([r.path for r in syn], m.preprocess), "tvhl": images(judged_tvhl, m.preprocess)}
    ref = {k: run(bundle / "model.onnx", x) for k, x in sets.items()}

    syn_cal = np.load(args.matrix / "calib64_seed0.npz")["images"]
    tvhl_paths = tvhl_calibration_paths(args.tvhl, judged_tvhl, 64, args.seed)
    tvhl_cal = images(tvhl_paths, m.preprocess)
    populations = {"synthetic": syn_cal, "tvhl": tvhl_cal, "mixed": np.concatenate([syn_cal[:32], tvhl_cal[:32]])}
    print(json.dumps({"tvhl_calibration_photographs": [p.name for p in tvhl_paths]}), flush=True)
    rows = []
    for pop in args.populations.split(","):
        cal = CalibrationSet.from_images(populations[pop], m.preprocess)
        t0 = time.perf_counter()
        stats = collect_statistics(bundle / "model.onnx", cal, batch_size=16)
        stats_s = time.perf_counter() - t0
        for method in args.methods.split(","):
            out = args.matrix / f"explore.calpop.{pop}.{method}.onnx"
            t0 = time.perf_counter()
            quantize_model(bundle / "model.onnx", stats.table(method), out, QuantizeConfig(), calib_set=cal,
                           show_progress=False)
            row: dict[str, Any] = {"population": pop, "method": method, "statistics_s": round(stats_s, 1),
                                   "quantize_s": round(time.perf_counter() - t0, 1)}
            for name, x in sets.items():
                row[name] = compare(m, ref[name], run(out, x))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
