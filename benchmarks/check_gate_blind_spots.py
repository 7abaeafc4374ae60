"""Two pictures the quality gate passes although a grader could not grade them (issue 5). It reports; it
changes nothing.

1. **A dark centre inside a lit rim.** The gate judges the lit part of the field of view (pixels brighter
   than a quarter of the field's mean), so a field whose centre is dim but above that quarter, with a bright
   rim around it, is judged on the rim. A small pupil or a misaligned camera gives such pictures, and the
   macula and the optic disc sit in the dark part. For every TVHL photograph: the mean luminance inside half
   the field's radius over that of the annulus from half to 0.95 of it (on the gate's own 256 px copy), and
   the gate's verdict; then synthetic rings (a flat fundus-coloured annulus around a flat dim disc, no
   retinal detail at all).
2. **A blurred photograph with one sharp edge.** The gate's sharpness is a ratio of two energies, which one
   strong edge dominates. For every ``--every``-th gradable TVHL photograph: a copy blurred with sigma 3 %
   of its short side (the gate must flag it), and the same copy with its lower 38 % darkened to 40 % (a
   sharp-edged shadow, as an eyelid casts).
3. **A hazy photograph with a shadow or a vignette.** ``low_contrast`` reads the spread of the lit field's
   luminance, which a shadow's step or a strong fall-off of light towards the rim widens. For the same
   photographs: a hazy copy (the field pulled 90 % towards its mean colour, as ``tests/test_quality.py``
   makes it), the same with the shadow above, and the same darkened towards the rim (x 1.2 at the centre
   down to x 0.2 at the field's edge), each re-encoded as JPEG quality 90.

Reproduce (docs/results.md, "Session 44"; ~40 s on 2 cores):

    python benchmarks/check_gate_blind_spots.py --tvhl ../shared/data/tvhl --show 6 --every 4
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.preprocess import Preprocessed, PreprocessConfig, decode, preprocess, preprocess_file, read_bytes
from uopsl.runtime.quality import WORK_SIDE, QualityVerdict, _working_image, assess


def centre_over_rim(pre: Preprocessed) -> float:
    """Mean luminance inside 0.5 of the field's radius over that of the annulus 0.5-0.95 (nan without either)."""
    lum = cv2.cvtColor(_working_image(pre), cv2.COLOR_RGB2GRAY).astype(np.float64)
    fov, rim_outer, centre = pre.geometry.fov_masks(WORK_SIDE, (1.0, 0.95, 0.5))
    centre &= fov
    rim = rim_outer & fov & ~centre
    if not centre.any() or not rim.any():
        return float("nan")
    return float(lum[centre].mean() / max(lum[rim].mean(), 1e-6))


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def ring(side: int, outer: float, width: float, centre_grey: int, colour: tuple[int, int, int]) -> np.ndarray:
    """A ``side`` px square: a flat ``colour`` annulus (radii ``outer - width`` to ``outer``, fractions of the
    side) around a flat grey disc of level ``centre_grey``, on black."""
    yy, xx = np.mgrid[0:side, 0:side]
    d = np.hypot(yy + 0.5 - side / 2, xx + 0.5 - side / 2) / side
    img = np.zeros((side, side, 3), np.uint8)
    img[d <= outer] = colour
    img[d <= outer - width] = centre_grey
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--size", type=int, default=224, help="model input size (default 224)")
    ap.add_argument("--show", type=int, default=6, help="list this many gradable photographs with the lowest ratio")
    ap.add_argument("--every", type=int, default=4, help="part 2 uses every N-th gradable photograph")
    args = ap.parse_args()
    cfg = PreprocessConfig(size=args.size)
    rows = list(csv.DictReader(open(args.tvhl / "fundus.csv", newline="")))
    found = []
    for r in rows:
        pre = preprocess_file(args.tvhl / r["path"], cfg)
        found.append((r["path"], r["label"], assess(pre).gradable, centre_over_rim(pre), pre.geometry))
    ratios = np.array([f[3] for f in found if f[2]], float)
    print(f"TVHL, {len(found)} photographs at {args.size} px, {len(ratios)} gradable: centre / rim luminance "
          f"min {np.nanmin(ratios):.3f}, 1st percentile {np.nanpercentile(ratios, 1):.3f}, "
          f"5th {np.nanpercentile(ratios, 5):.3f}, median {np.nanmedian(ratios):.3f}, max {np.nanmax(ratios):.3f}")
    for t in (0.35, 0.5, 0.6):
        below = [f for f in found if f[2] and f[3] < t]
        print(f"  gradable below {t}: {len(below)} {dict(Counter(f[1] for f in below))}")
    for path, label, _, ratio, _ in sorted((f for f in found if f[2]), key=lambda f: f[3])[: args.show]:
        print(f"  {path} ({label}): {ratio:.3f}")
    # Parts 2 and 3 on the same photographs, each decoded once.
    copies: dict[str, list[QualityVerdict]] = {k: [] for k in (
        "blurred (sigma 3 % of the short side)", "the same with a sharp shadow edge",
        "hazy", "hazy + shadow", "hazy + vignette")}
    for path, g in [(f[0], f[4]) for f in found if f[2]][:: args.every]:
        a = decode(read_bytes(args.tvhl / path))
        cut = int(a.shape[0] * 0.62)
        blurred = cv2.GaussianBlur(a, (0, 0), 0.03 * min(a.shape[:2]))
        shadowed = blurred.copy()
        shadowed[cut:] = (shadowed[cut:] * 0.4).astype(np.uint8)
        yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
        d = np.hypot(xx + 0.5 - g.cx, yy + 0.5 - g.cy) / g.radius
        hazy = a.astype(np.float32)
        inside = d <= 1.0
        hazy[inside] = 0.1 * hazy[inside] + 0.9 * hazy[inside].mean(axis=0)
        hazy_shadow = hazy.copy()
        hazy_shadow[cut:] *= 0.4
        hazy_vignette = hazy * np.clip(1.2 - d, 0.2, 1.0)[..., None]
        for name, img in zip(copies, (blurred, shadowed, _jpeg(hazy.astype(np.uint8)),
                                      _jpeg(hazy_shadow.astype(np.uint8)), _jpeg(hazy_vignette.astype(np.uint8)))):
            copies[name].append(assess(preprocess(img, cfg)))
    for name, verdicts in copies.items():
        figures = {k: np.array([v.metrics.get(k, np.nan) for v in verdicts]) for k in ("sharpness", "sharpness_tiles")}
        print(f"{name}: {sum(v.gradable for v in verdicts)} of {len(verdicts)} gradable, "
              f"{sum('blurred' in v.reasons for v in verdicts)} flagged blurred; "
              + ", ".join(f"{k} median {np.median(x):.4f} (range {x.min():.4f}-{x.max():.4f})"
                          for k, x in figures.items()))
    print("synthetic rings, 512 px (outer radius, width, centre grey, colour -> verdict, score, centre / rim):")
    for outer in (0.4, 0.5):
        for width in (0.1, 0.15):
            for grey in (5, 12, 20, 30):
                for colour in ((150, 70, 30), (220, 120, 50)):
                    pre = preprocess(ring(512, outer, width, grey, colour), cfg)
                    v = assess(pre)
                    print(f"  {outer:.2f} {width:.2f} {grey:3d} {colour} -> "
                          f"{'gradable' if v.gradable else ','.join(v.reasons)}, {v.score:.2f}, "
                          f"{centre_over_rim(pre):.3f}")


if __name__ == "__main__":
    main()
