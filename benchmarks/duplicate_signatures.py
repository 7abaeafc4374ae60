"""How well `uopsl duplicates` finds altered copies, and how close different photographs come.

    python benchmarks/duplicate_signatures.py --tvhl ../shared/data/tvhl [--every 1] [--threshold 0.9]

For every photograph (or every ``--every``-th), six altered copies are made
(JPEG quality 60, twice the size, 60 % of the size, 0.7x darker, a tone curve
with gamma 0.6, padded to 1.5:1) and each copy's signature is correlated with
the original's. Then every pair of the original photographs is correlated:
the highest pairs of photographs filed under different patients are listed,
marked when their files are byte-identical. No randomness.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.preprocess import PreprocessConfig, preprocess
from uopsl.train.datasets.duplicates import DuplicateConfig, signature


def altered(bgr: np.ndarray) -> dict[str, bytes]:
    h, w = bgr.shape[:2]
    lut = (255 * (np.arange(256) / 255) ** 0.6).astype(np.uint8)

    def jpeg(img: np.ndarray, q: int = 90) -> bytes:
        return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()

    return {
        "JPEG quality 60": jpeg(bgr, 60),
        "2x the size": jpeg(cv2.resize(bgr, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)),
        "60 % of the size": jpeg(cv2.resize(bgr, (w * 3 // 5, h * 3 // 5), interpolation=cv2.INTER_AREA)),
        "0.7x darker": jpeg((bgr * 0.7).astype(np.uint8)),
        "gamma 0.6": jpeg(cv2.LUT(bgr, lut)),
        "padded to 1.5:1": jpeg(cv2.copyMakeBorder(bgr, 0, 0, w // 4, w // 4, cv2.BORDER_CONSTANT)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--every", type=int, default=1, help="alter every N-th photograph (all are compared)")
    ap.add_argument("--threshold", type=float, default=DuplicateConfig().threshold)
    ap.add_argument("--top", type=int, default=16)
    args = ap.parse_args()
    cfg = DuplicateConfig(threshold=args.threshold)
    pre = PreprocessConfig(size=cfg.size)
    rows = list(csv.DictReader(open(args.tvhl / "fundus.csv", encoding="utf-8")))
    sigs, keep, sha = [], [], []
    sims: dict[str, list[float]] = {}
    for k, r in enumerate(rows):
        data = (args.tvhl / r["path"]).read_bytes()
        sha.append(hashlib.sha256(data).hexdigest())
        s0 = signature(preprocess(data, pre).image, cfg.size)
        keep.append(s0 is not None)
        sigs.append(s0 if s0 is not None else np.zeros(1, np.float16))
        if s0 is None or k % args.every:
            continue
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for name, blob in altered(bgr).items():
            s = signature(preprocess(blob, pre).image, cfg.size)
            c = -1.0 if s is None else float(s0.astype(np.float32) @ s.astype(np.float32)) / len(s0)
            sims.setdefault(name, []).append(c)
    n_alt = len(next(iter(sims.values())))
    print(f"{sum(keep)} of {len(rows)} TVHL photographs have a signature; {n_alt} altered six ways each")
    print(f"| copy | found (>= {args.threshold}) | 10th percentile | lowest |")
    print("|---|---|---|---|")
    for name, v in sims.items():
        a = np.asarray(v)
        print(f"| {name} | {np.mean(a >= args.threshold):.1%} | {np.percentile(a, 10):.3f} | {a.min():.3f} |")
    idx = [i for i, ok in enumerate(keep) if ok]
    m = np.stack([sigs[i] for i in idx]).astype(np.float32)
    corr = m @ m.T / m.shape[1]
    iu = np.triu_indices(len(idx), 1)
    c = corr[iu]
    pat = np.array([rows[i]["patient"] for i in idx])
    cross = pat[iu[0]] != pat[iu[1]]
    order = np.argsort(-np.where(cross, c, -2.0))[: args.top]
    print(f"\nHighest pairs of photographs filed under different patients (of {int(cross.sum())} such pairs):")
    print("| correlation | photographs | byte-identical |")
    print("|---|---|---|")
    for k in order:
        a, b = idx[iu[0][k]], idx[iu[1][k]]
        print(f"| {c[k]:.3f} | {rows[a]['path']} / {rows[b]['path']} | {'yes' if sha[a] == sha[b] else 'no'} |")


if __name__ == "__main__":
    main()
