"""The quality gate of this checkout against an earlier ``runtime/quality.py``: verdicts, reasons, scores, cost.

A change to the gate must say what it does to real photographs. This loads an earlier copy of the module
beside the installed one, judges every TVHL photograph with both at each size given, and prints the
photographs whose verdict changed, how many kept their verdict but not their reasons, and how the scores of
photographs gradable under both moved. With ``--timing`` it also times ``measure`` of both on every 5th
photograph (224 px, one OpenCV thread, process CPU time, passes interleaved).

Reproduce (docs/results.md, "Session 44"; ~2 min on 2 cores):

    git show 0203263:runtime/quality.py > /tmp/quality_s43.py
    python benchmarks/compare_gate_versions.py --old /tmp/quality_s43.py --tvhl ../shared/data/tvhl --timing
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

import uopsl.runtime.quality as current
from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality_old", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_old"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="an earlier runtime/quality.py")
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 320])
    ap.add_argument("--timing", action="store_true", help="also time measure() of both, 5 interleaved passes")
    args = ap.parse_args()
    old = load_module(args.old)
    rows = list(csv.DictReader(open(args.tvhl / "fundus.csv", newline="")))
    for size in args.sizes:
        cfg = PreprocessConfig(size=size)
        changed, reasons_changed, drops = [], 0, []
        for r in rows:
            pre = preprocess_file(args.tvhl / r["path"], cfg)
            a, b = old.assess(pre), current.assess(pre)
            if a.gradable != b.gradable:
                changed.append(f"{r['path']} ({'now gradable' if b.gradable else ','.join(b.reasons)})")
            elif a.reasons != b.reasons:
                reasons_changed += 1
            if a.gradable and b.gradable:
                drops.append(a.score - b.score)
        d = np.array(drops)
        print(f"{size} px: verdicts changed {len(changed)} {changed}; reasons changed (verdict kept) "
              f"{reasons_changed}; of {d.size} gradable under both, {int((d > 1e-12).sum())} score lower "
              f"(median drop {np.median(d):.3f}, largest {d.max():.3f}), {int((d < -1e-12).sum())} higher")
    if args.timing:
        cv2.setNumThreads(1)
        cfg = PreprocessConfig(size=224)
        pres = [preprocess_file(args.tvhl / r["path"], cfg) for r in rows[::5]]
        ms: dict[str, list[float]] = {"old": [], "current": []}
        for _ in range(5):
            for name, module in (("old", old), ("current", current)):
                t = time.process_time()
                for pre in pres:
                    module.measure(pre)
                ms[name].append((time.process_time() - t) / len(pres) * 1000)
        print(f"measure(), ms a photograph over {len(pres)} at 224 px: "
              + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in ms.items()))


if __name__ == "__main__":
    main()
