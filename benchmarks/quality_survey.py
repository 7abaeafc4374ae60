"""Quality gate on real photographs: FOV detection, gradable fraction, degraded copies.

Reproduce (2 CPU cores, ~2 min):

    python benchmarks/quality_survey.py --tvhl ../shared/data/tvhl --every 7 --offset 3

Part 1 runs preprocessing + the gate (default QualityConfig, 320 px) on every
fundus photograph of TVHL and reports the FOV-found and gradable fractions,
the reasons, and the per-image cost. Part 2 degrades every --every-th
photograph (from --offset) in 8 ways, re-encodes it as JPEG quality 90, and
reports how often the expected reason is raised, separately for the
DR-graded cohort and the (darker) DME acquisition batch. Noise seed 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.preprocess import decode, preprocess, preprocess_file, read_bytes
from uopsl.runtime.quality import assess


def _enc(a: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(a, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _haze(a: np.ndarray) -> np.ndarray:
    g = preprocess(a).geometry
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    m = (xx + 0.5 - g.cx) ** 2 + (yy + 0.5 - g.cy) ** 2 <= g.radius**2
    out = a.astype(np.float32)
    out[m] = out[m] * 0.1 + a[m].mean(axis=0) * 0.9
    return out.astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--every", type=int, default=7)
    ap.add_argument("--offset", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.tvhl / "fundus.csv")))
    label = {r["path"]: r["label"] for r in rows}

    t_pre = t_q = 0.0
    reasons: Counter[str] = Counter()
    found = gradable = 0
    flagged = []
    for r in rows:
        t = time.perf_counter()
        p = preprocess_file(args.tvhl / r["path"])
        t_pre += time.perf_counter() - t
        t = time.perf_counter()
        v = assess(p)
        t_q += time.perf_counter() - t
        found += p.geometry.fov_found
        gradable += v.gradable
        reasons.update(v.reasons)
        if v.reasons:
            flagged.append((r["path"], r["label"], list(v.reasons)))
    n = len(rows)
    part1 = {"images": n, "fov_found": found, "fov_found_fraction": found / n, "gradable": gradable,
             "gradable_fraction": gradable / n, "reasons": dict(reasons), "ms_preprocess": 1e3 * t_pre / n,
             "ms_quality": 1e3 * t_q / n, "flagged": flagged}
    print(f"FOV found {found}/{n} ({found / n:.1%}); gradable {gradable}/{n} ({gradable / n:.1%}); "
          f"preprocess {part1['ms_preprocess']:.1f} ms, gate {part1['ms_quality']:.1f} ms per image; {dict(reasons)}")

    rng = np.random.default_rng(0)
    degrade = {
        "blurred (sigma 1.5%)": (lambda a: cv2.GaussianBlur(a, (0, 0), 0.015 * min(a.shape[:2])), "blurred"),
        "blurred (sigma 1%)": (lambda a: cv2.GaussianBlur(a, (0, 0), 0.010 * min(a.shape[:2])), "blurred"),
        "darkened x0.08": (lambda a: (a * 0.08).astype(np.uint8), "too_dark"),
        "over-exposed x2.5+40": (lambda a: np.clip(a.astype(np.float32) * 2.5 + 40, 0, 255).astype(np.uint8), "too_bright"),
        "central 60% crop": (lambda a: a[a.shape[0] // 5 : -a.shape[0] // 5, a.shape[1] // 5 : -a.shape[1] // 5], "no_fov"),
        "noise sigma 25": (lambda a: np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8), "noisy"),
        "haze 90%": (_haze, "low_contrast"),
        # Exports some cameras and PACS make: both eyes side by side, a row of photographs.
        "two side by side": (lambda a: np.hstack([a, a[:, ::-1]]), "several_fov"),
        "six in a row": (lambda a: np.hstack([a] * 6), "refused"),
        "original": (lambda a: a, ""),
    }
    paths = sorted(label)[args.offset :: args.every]
    part2: dict[str, dict[str, str]] = {}
    for name, (fn, tag) in degrade.items():
        hits = {"DR-graded": [0, 0], "DME batch": [0, 0]}
        for pth in paths:
            a = decode(read_bytes(args.tvhl / pth))
            v = assess(preprocess(_enc(fn(a))))
            ok = (not v.reasons) if not tag else (not v.gradable) if tag == "refused" else tag in v.reasons
            grp = "DME batch" if label[pth] == "dme" else "DR-graded"
            hits[grp][0] += ok
            hits[grp][1] += 1
        part2[name] = {g: f"{h}/{m} ({h / max(m, 1):.0%})" for g, (h, m) in hits.items()}
        print(f"{name:24s} expected {'gradable' if not tag else tag:13s} " + "  ".join(f"{g}: {s}" for g, s in part2[name].items()))
    if args.out:
        args.out.write_text(json.dumps({"survey": part1, "degraded": part2}, indent=1))


if __name__ == "__main__":
    main()
