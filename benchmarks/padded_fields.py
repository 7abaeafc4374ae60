"""Field-of-view detection on photographs padded into a larger frame.

Dataset mirrors pad photographs to a square, and some export tools letterbox
them into a wider frame. A field the sensor clipped (TVHL's DR-graded cohort:
the circle is cut by all four sides of the 512 px frame) then keeps its
straight clipped edges inside the new frame. This script pads every TVHL
photograph three ways and reports, per way, how many fields are still found
and how far the padded photograph's model input lies from the unpadded one's
(mean absolute difference in grey levels, 224 px), plus how many unpadded
photographs' geometry it saw.

    python benchmarks/padded_fields.py --tvhl ../shared/data/tvhl [--json OUT]

``--runtime DIR``: import ``uopsl.runtime`` from ``DIR/uopsl/runtime`` (an
older copy, ``git archive REV runtime | tar -x -C DIR/uopsl``) to compare.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

PADS = {"wide": lambda h, w: (0, 0, w // 4, w // 4),  # 512 -> 768 px wide
        "tall": lambda h, w: (h // 4, h // 4, 0, 0),
        "uneven": lambda h, w: (30, 90, 200, 10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runtime", type=Path, help="import uopsl.runtime from DIR/uopsl/runtime")
    ap.add_argument("--json", type=Path, help="also write the per-photograph figures here")
    args = ap.parse_args()
    if args.runtime:
        sys.path.insert(0, str(args.runtime))
    from uopsl.runtime.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(size=args.size)
    rows = list(csv.DictReader(open(args.tvhl / "fundus.csv", encoding="utf-8")))
    per: dict[str, dict[str, list[float | bool]]] = {}
    found_plain = 0
    for r in rows:
        data = (args.tvhl / r["path"]).read_bytes()
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        plain = preprocess(rgb, cfg)
        found_plain += plain.geometry.fov_found
        out = per.setdefault(r["path"], {})
        for name, pad in PADS.items():
            top, bottom, left, right = pad(*rgb.shape[:2])
            pre = preprocess(cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT), cfg)
            out[name] = [bool(pre.geometry.fov_found),
                         float(np.abs(pre.image.astype(np.int16) - plain.image.astype(np.int16)).mean())]
    print(f"{len(rows)} TVHL photographs, model size {args.size}; field found unpadded: {found_plain}")
    print("| padding | field found | model input vs unpadded, median grey levels | > 5 grey levels |")
    print("|---|---|---|---|")
    for name in PADS:
        vals = [per[p][name] for p in per]
        print(f"| {name} | {sum(v[0] for v in vals)} | {statistics.median(v[1] for v in vals):.2f} | "
              f"{sum(v[1] > 5 for v in vals)} |")
    if args.json:
        args.json.write_text(json.dumps(per))


if __name__ == "__main__":
    main()
