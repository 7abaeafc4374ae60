"""Are images holding several fields of view refused, and single photographs in wide frames left alone? (issue 5)

For every ``--every``-th TVHL fundus photograph (and another one drawn with ``--seed``), JPEG quality 90:

* composites that must be refused (``several_fov`` or ``no_fov``): the photograph beside its mirror image,
  beside the other photograph (touching, and 40 px apart), and above it;
* single photographs that must keep one field: padded to 16:9, centred and off centre.

Reproduce (docs/results.md, section 2, "Several eyes in one image"; ~15 s on 2 cores):

    python benchmarks/check_several_fov.py --tvhl ../shared/data/tvhl --every 3
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess
from uopsl.runtime.quality import assess


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise SystemExit("JPEG encoding failed")
    return buf.tobytes()


def cases(a: np.ndarray, b: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """name -> (image, whether it must be refused as several fields / no field)."""
    h, w = a.shape[:2]
    b = cv2.resize(b, (w, h))
    pad = 16 * h // 9 - w
    return {
        "beside its mirror image": (np.hstack([a, a[:, ::-1]]), True),
        "beside another photograph": (np.hstack([a, b]), True),
        "40 px from another photograph": (np.hstack([a, np.zeros((h, 40, 3), np.uint8), b]), True),
        "above another photograph": (np.vstack([a, b]), True),
        "padded to 16:9, centred": (np.pad(a, ((0, 0), (pad // 2, pad - pad // 2), (0, 0))), False),
        "padded to 16:9, off centre": (np.pad(a, ((0, 0), (pad // 5, pad - pad // 5), (0, 0))), False),
        "alone": (a, False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--size", type=int, default=224, help="model input size")
    ap.add_argument("--seed", type=int, default=0, help="draw of the other photograph")
    args = ap.parse_args()
    paths = sorted((args.tvhl / "fundus").glob("*.jpg"))
    rng = random.Random(args.seed)
    cfg = PreprocessConfig(size=args.size)
    ok: dict[str, list[int]] = {}
    wrong: dict[str, list[str]] = {}
    must_refuse: dict[str, bool] = {}
    for p in paths[:: args.every]:
        a, b = decode(p.read_bytes()), decode(rng.choice(paths).read_bytes())
        for name, (img, refuse) in cases(a, b).items():
            must_refuse[name] = refuse
            pre = preprocess(_jpeg(img), cfg)
            v = assess(pre)
            good = (not v.gradable and bool({"several_fov", "no_fov"} & set(v.reasons))) if refuse \
                else pre.geometry.fov_found and pre.geometry.fov_count == 1  # one field, and found
            counts = ok.setdefault(name, [0, 0])
            counts[0] += good
            counts[1] += 1
            if not good:
                wrong.setdefault(name, []).append(p.name)
    print(f"| case (one TVHL photograph in {args.every}, {args.size} px) | expected | as expected |")
    print("|---|---|---|")
    for name, (n_ok, n) in ok.items():
        print(f"| {name} | {'refused' if must_refuse[name] else 'one field'} | {n_ok} of {n}" + (f" (not: {', '.join(wrong[name][:5])})" if name in wrong else "")
              + " |")


if __name__ == "__main__":
    main()
