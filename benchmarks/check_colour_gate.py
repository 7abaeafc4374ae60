"""Does the gate's colour check (``not_fundus_colour``: mean red / mean blue of the lit field below 0.8) leave
real photographs alone and catch arrays passed in BGR order? (issue 5)

For every photograph of each folder given: its red/blue ratio and verdict as a file, and the same photograph
decoded by OpenCV (BGR) and passed as if it were RGB, which is what an integrator who forgets
``cv2.cvtColor`` does. Prints, per folder: the lowest ratio among gradable photographs, how many
photographs the check flags, and the share of BGR copies it flags.

Reproduce (docs/results.md, section 2, "Colours that are not a fundus photograph's"; ~40 s on 2 cores):

    python benchmarks/check_colour_gate.py ../shared/data/tvhl/fundus demo/data/test/fundus
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.errors import ImageError
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.quality import assess

SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--size", type=int, default=224, help="model input size of the preprocessing")
    args = ap.parse_args()
    cfg = PreprocessConfig(size=args.size)
    for folder in args.folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
        gradable_rb, flagged, bgr_flagged, bgr_judged, failed = [], [], 0, 0, 0
        for path in files:
            data = read_bytes(path)
            try:
                v = assess(preprocess(data, cfg, source=str(path)))
            except ImageError:
                failed += 1
                continue
            if v.gradable:
                gradable_rb.append(v.metrics["red_blue"])
            if "not_fundus_colour" in v.reasons:
                flagged.append(path.name)
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            w = assess(preprocess(np.ascontiguousarray(bgr), cfg, source=str(path)))
            if "too_dark" in w.reasons:  # the check does not judge a field too dark to show colour
                continue
            bgr_judged += 1
            bgr_flagged += "not_fundus_colour" in w.reasons
        rb = np.array(gradable_rb) if gradable_rb else np.array([np.nan])
        print(f"{folder}: {len(files)} files ({failed} unreadable), {len(gradable_rb)} gradable: red/blue min "
              f"{np.nanmin(rb):.3f}, 1st percentile {np.nanpercentile(rb, 1):.3f}, median {np.nanmedian(rb):.2f}; "
              f"flagged not_fundus_colour: {len(flagged)} {flagged[:5]}; BGR copies flagged: {bgr_flagged} of "
              f"{bgr_judged} not too dark ({bgr_flagged / max(bgr_judged, 1):.1%})")


if __name__ == "__main__":
    main()
