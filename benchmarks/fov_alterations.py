"""Field-of-view detection under what cameras, PACS exports and dataset mirrors do to a photograph.

    python benchmarks/fov_alterations.py --tvhl ../shared/data/tvhl [--every 5] [--runtime DIR]

Each alteration is applied to every ``--every``-th TVHL photograph (sorted by
path, from the first; no randomness), saved as JPEG (quality 95) and
preprocessed at 224 px. The reference circle is the unaltered photograph's,
carried through the alteration's geometry (shift, scale, rotation). Reported
per alteration: fields found; found but wrong (centre more than 5 % of the
radius away, or radius more than 5 % off); and "silent", found, wrong and
still judged gradable by the quality gate (the model then sees a shifted or
zoomed crop, and nothing says so). ``--runtime DIR`` imports ``uopsl.runtime``
from ``DIR/uopsl/runtime`` (an older copy) to compare.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

Altered = tuple[np.ndarray, np.ndarray]  # image (RGB), 2x3 map from original to altered coordinates
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _pad(im: np.ndarray, top: int, bottom: int, left: int, right: int, colour: tuple[int, int, int]) -> Altered:
    out = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=colour)
    return out, np.array([[1.0, 0.0, left], [0.0, 1.0, top]])


def text_in_corners(scale: float = 0.5, thickness: int = 1) -> Callable[[np.ndarray], Altered]:
    def alter(im: np.ndarray) -> Altered:
        out, (h, w), s = im.copy(), im.shape[:2], im.shape[1] / 512
        for txt, org in (("PATIENT 0123456", (int(8 * s), int(22 * s))), ("OD  45deg", (int(8 * s), int(44 * s))),
                         ("2019-03-14 10:22", (int(w - 330 * s * scale), h - int(10 * s)))):
            cv2.putText(out, txt, org, cv2.FONT_HERSHEY_SIMPLEX, scale * s, (255, 255, 255), thickness, cv2.LINE_AA)
        return out, IDENTITY
    return alter


def header_band(im: np.ndarray) -> Altered:
    out = im.copy()
    out[: int(0.055 * im.shape[0])] = (45, 45, 45)
    return out, IDENTITY


def frame_line(im: np.ndarray) -> Altered:
    out = im.copy()
    cv2.rectangle(out, (0, 0), (im.shape[1] - 1, im.shape[0] - 1), (255, 255, 255), 2)
    return out, IDENTITY


def rotate(deg: float) -> Callable[[np.ndarray], Altered]:
    def alter(im: np.ndarray) -> Altered:
        h, w = im.shape[:2]
        a = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        cos, sin = abs(a[0, 0]), abs(a[0, 1])
        nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
        a[0, 2] += nw / 2 - w / 2
        a[1, 2] += nh / 2 - h / 2
        return cv2.warpAffine(im, a, (nw, nh), flags=cv2.INTER_LINEAR), a
    return alter


def small_field(fraction: float) -> Callable[[np.ndarray], Altered]:
    def alter(im: np.ndarray) -> Altered:
        h, w = im.shape[:2]
        s = fraction
        small = cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
        canvas = np.zeros_like(im)
        canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
        return canvas, np.array([[s, 0.0, left], [0.0, s, top]])
    return alter


def stretch(im: np.ndarray) -> Altered:
    h, w = im.shape[:2]
    return cv2.resize(im, (round(w * 4 / 3), h), interpolation=cv2.INTER_AREA), np.array([[4 / 3, 0, 0], [0, 1.0, 0]])


ALTERATIONS: dict[str, Callable[[np.ndarray], Altered]] = {
    "none (JPEG 95)": lambda im: (im, IDENTITY),
    "padded black to 4:3": lambda im: _pad(im, 0, 0, im.shape[0] // 6, im.shape[0] // 6, (0, 0, 0)),
    "padded grey (128) to 4:3": lambda im: _pad(im, 0, 0, im.shape[0] // 6, im.shape[0] // 6, (128, 128, 128)),
    "padded white to 4:3": lambda im: _pad(im, 0, 0, im.shape[0] // 6, im.shape[0] // 6, (255, 255, 255)),
    "white text in the corners": text_in_corners(),
    "white text in the corners, twice the size, bold": text_in_corners(1.0, 2),
    "grey header band (5.5 %)": header_band,
    "white frame line, 2 px": frame_line,
    "rotated 10 degrees": rotate(10.0),
    "field at 50 % of the frame": small_field(0.5),
    "field at 40 % of the frame": small_field(0.4),
    "stretched to 4:3": stretch,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runtime", type=Path, help="import uopsl.runtime from DIR/uopsl/runtime")
    args = ap.parse_args()
    if args.runtime:
        sys.path.insert(0, str(args.runtime))
    from uopsl.runtime.preprocess import PreprocessConfig, preprocess
    from uopsl.runtime.quality import assess

    cfg = PreprocessConfig(size=args.size)
    rows = sorted(csv.DictReader(open(args.tvhl / "fundus.csv", encoding="utf-8")), key=lambda r: r["path"])
    rows = rows[:: args.every]
    tally = {name: [0, 0, 0, 0, 0, 0] for name in ALTERATIONS}  # photographs, found, wrong, silent; DR-graded, found
    for r in rows:
        bgr = cv2.imread(str(args.tvhl / r["path"]), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        base = preprocess(rgb, cfg).geometry
        if not base.fov_found:
            continue
        for name, alter in ALTERATIONS.items():
            img, a = alter(rgb)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise SystemExit(f"JPEG encoding failed for {r['path']} ({name})")
            pre = preprocess(buf.tobytes(), cfg)
            g = pre.geometry
            cx, cy = a @ np.array([base.cx, base.cy, 1.0])
            r_ref = base.radius * math.sqrt(abs(np.linalg.det(a[:, :2])))
            wrong = g.fov_found and (math.hypot(g.cx - cx, g.cy - cy) > 0.05 * r_ref or abs(g.radius - r_ref) > 0.05 * r_ref)
            t = tally[name]
            t[0] += 1
            t[1] += g.fov_found
            t[2] += wrong
            t[3] += wrong and assess(pre).gradable
            if r["label"] != "dme":  # TVHL's DR-graded cohort: fields clipped on all four sides
                t[4] += 1
                t[5] += g.fov_found
    n = tally["none (JPEG 95)"][0]
    print(f"{n} TVHL photographs (every {args.every}th by path, field found unaltered), {args.size} px")
    print("| alteration | field found | found, DR-graded (clipped fields) | found, wrong circle | wrong and judged gradable |")
    print("|---|---|---|---|---|")
    for name, (k, found, wrong, silent, k_dr, found_dr) in tally.items():
        print(f"| {name} | {found / k:.0%} | {found_dr / max(k_dr, 1):.0%} | {wrong} ({wrong / k:.0%}) | {silent} ({silent / k:.0%}) |")


if __name__ == "__main__":
    main()
