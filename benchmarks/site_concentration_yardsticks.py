"""What site concentration gives for maps that look at no image, on exp_synthetic's test pool.

The synthetic sites sit at fixed places of the field of view (the macula for
dme and amd, the posterior pole for dr, the disc for glaucoma), so a fixed map
can score high. This script scores such maps with the same code `uopsl
evaluate` uses (:func:`uopsl.train.evaluate.site_concentration_report`), on the
test pool of ``benchmarks/exp_synthetic.py`` (seed 3000, 384 px, the seen
classes), at the token grid of EfficientNet-Lite0 at ``--size`` px:

- an even spread over the field of view (chance);
- a fixed blob at the centre of the field of view, the same for every class;
- one fixed map for every class and a fixed map per class, both the mean
  site masks of *another* pool (``--prior-seed``), so they are honest priors,
  not oracles.

Each is given both ways: over the field of view (the definition since
session 14) and over the whole grid (the figures reported before).

    python benchmarks/site_concentration_yardsticks.py --out runs/yardsticks [--centres cell|token]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_synthetic import CLASSES, SEEN_CLASSES, pool  # noqa: E402

from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file  # noqa: E402
from uopsl.train.evaluate import mask_to_grid, site_concentration_report  # noqa: E402
from uopsl.train.model import fov_token_mask  # noqa: E402
from uopsl.train.synthetic import load_masks  # noqa: E402


def grid_of(size: int) -> int:
    """Tokens per side of EfficientNet-Lite0 (stride 32) at ``size`` px."""
    return -(-size // 32)


def masks_and_geometry(src, pre):  # type: ignore[no-untyped-def]
    samples = [s for s in src.samples if s.modality == "fundus"]
    targets = np.array([[float(c in s.labels) for c in CLASSES] for s in samples], np.float32)
    masks = [s.extra.get("masks") or None for s in samples]
    geoms = [preprocess_file(s.path, pre).geometry if m else None for s, m in zip(samples, masks)]
    return targets, masks, geoms


def mean_covers(targets, masks, geoms, g):  # type: ignore[no-untyped-def]
    """Per seen class, the mean mask cover on the g x g grid over its positive images."""
    sums = {c: np.zeros((g, g)) for c in SEEN_CLASSES}
    counts = {c: 0 for c in SEEN_CLASSES}
    for i, (m, geom) in enumerate(zip(masks, geoms)):
        if not m:
            continue
        per_class = load_masks(m)
        for c in SEEN_CLASSES:
            if c in per_class and targets[i, CLASSES.index(c)] > 0:
                sums[c] += mask_to_grid(per_class[c], geom, g, g)
                counts[c] += 1
    return {c: sums[c] / max(counts[c], 1) for c in SEEN_CLASSES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (the pools are generated here)")
    ap.add_argument("--n", type=int, default=300, help="photographs per pool (exp_synthetic's --n-test)")
    ap.add_argument("--size", type=int, default=256, help="model input size (the token grid follows)")
    ap.add_argument("--seed", type=int, default=0, help="exp_synthetic's seed: the test pool is 3000 + seed")
    ap.add_argument("--prior-seed", type=int, default=1000, help="generator seed of the pool the priors come from")
    ap.add_argument("--centres", choices=("token", "cell"), default="cell",
                    help="the field-of-view token mask's windows: the tokens' grid cells (what models are trained "
                         "with, ModelConfig.token_centres) or where the tokens look (session 17's experiment, "
                         "not adopted)")
    args = ap.parse_args()
    pre = PreprocessConfig(size=args.size)
    g = grid_of(args.size)
    inside = fov_token_mask(g, g, pre.fov_margin, centres=args.centres)
    test = pool(args.out, "test", args.n, 0, 3000 + args.seed, 384, False)
    prior_pool = pool(args.out, "prior", args.n, 0, args.prior_seed, 384, False)
    targets, masks, geoms = masks_and_geometry(test, pre)
    priors = mean_covers(*masks_and_geometry(prior_pool, pre), g)
    pooled = np.mean([priors[c] for c in SEEN_CLASSES], axis=0)
    yy, xx = np.mgrid[:g, :g]
    centre = np.exp(-(((xx - (g - 1) / 2) ** 2 + (yy - (g - 1) / 2) ** 2) / (2 * (0.12 * g) ** 2)))
    n, k = len(targets), len(CLASSES)
    maps_of = {
        "even over the field of view": np.broadcast_to(inside / inside.sum(), (n, k, g, g)),
        "fixed centre blob, every class": np.broadcast_to(centre * inside, (n, k, g, g)),
        "one fixed map for every class (prior pool)": np.broadcast_to(pooled * inside, (n, k, g, g)),
        "a fixed map per class (prior pool)": np.broadcast_to(
            np.stack([priors.get(c, np.zeros((g, g))) * inside for c in CLASSES])[None], (n, k, g, g)),
    }
    table = {}
    for name, maps in maps_of.items():
        rep = site_concentration_report(np.ascontiguousarray(maps, np.float32), targets, CLASSES, masks, geoms, inside)
        table[name] = {c: {"over_fov": round(rep[c]["mean"], 2), "over_grid": round(rep[c]["mean_over_grid"], 2),
                           "n_images": rep[c]["n_images"]} for c in SEEN_CLASSES if c in rep}
    print(f"| map (looks at no image), {g}x{g} tokens, {args.size} px | "
          + " | ".join(SEEN_CLASSES) + " |")
    print("|---|" + "---|" * len(SEEN_CLASSES))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]['over_fov']:.2f} ({row[c]['over_grid']:.2f})"
                                         for c in SEEN_CLASSES) + " |")
    (args.out / "yardsticks.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "grid": g, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
