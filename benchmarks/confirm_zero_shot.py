"""A confirmation of session 8's zero-shot finding on a fresh pool, with its test fixed in advance.

Session 8 (docs/results.md, section 3) found site attention ahead of the
no-site reading in 13 of 14 comparisons in one of four readings (the unseen
class's description read against the healthy class's, healthy eyes as the
only negatives), after looking at several readings on one 300-image pool.
This script tests that finding on images none of those looks saw, with the
decision rule written down (docs/results.md, "Session 9") before the pool
existed:

* pool: a new unseen-class pool (``exp_synthetic.pool``, ``--pool-seed``,
  default 7000: no seed the experiments used before), ``--n`` photographs;
* models: the checkpoints given (session 8's seven), unchanged;
* primary statistic: in the ``vs_healthy`` reading with healthy negatives,
  the mean over every model and both unseen classes of
  ``AUC(site attention) - AUC(no site attention)``;
* interval: percentile bootstrap over the pool's images, resampled within
  each label pattern, the same resamples for every model, class and reading
  (so the models' shared test images are accounted for);
* confirmed when the primary interval's lower end is above zero.

``--unit patient`` resamples whole patients (the pool has two eyes per
patient) instead: a sensitivity analysis added after the pre-registered run,
not part of its rule.

Everything else is printed as secondary: the mean over the full UOPSL
models only, each class's mean, each comparison with its own interval, and
the same mean for the other three cells of the grid (``raw`` reading,
every other image as negatives).

Encoder features are cached per encoder (the frozen-encoder models share
one file), so a rerun scores from the cache.

    python benchmarks/confirm_zero_shot.py runs/s6_guide_t{0,1,2}/{p_only,uopsl}/finetune runs/s6_e2e_guide --out runs/s9_confirm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_synthetic as ex  # noqa: E402
from diag_zero_shot import zero_shot_model  # noqa: E402

from uopsl.runtime.metrics import _WeightedAuc, bootstrap_many  # noqa: E402
from uopsl.runtime.preprocess import PreprocessConfig  # noqa: E402
from uopsl.runtime.fsio import write_json  # noqa: E402
from uopsl.train.checkpoint import load_model  # noqa: E402
from uopsl.train.stages import FeatureDataset, features_fingerprint  # noqa: E402
from uopsl.train.torchdata import ImageDataset  # noqa: E402
from uopsl.train.zero_shot import ARMS, NEGATIVES, READINGS, healthy_only, reading_scores  # noqa: E402

PRIMARY = ("vs_healthy", "healthy")


def encoder_features(run: Path, its: list, pre: PreprocessConfig, cache: Path) -> torch.Tensor:
    """The checkpoint's own encoder's features of the pool, cached under the encoder's fingerprint."""
    model, _ = load_model(run)
    enc = model.fundus.encoder.eval()
    ds = ImageDataset(its, pre, cache)
    name = features_fingerprint(enc, ds)[:16]
    return FeatureDataset.cached(cache / f"features-{name}-{pre.size}.safetensors", enc, ds,
                                 torch.device("cpu")).features.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="pool, feature cache and confirm.json go here")
    ap.add_argument("--n", type=int, default=1000, help="photographs in the fresh pool")
    ap.add_argument("--pool-seed", type=int, default=7000)
    ap.add_argument("--size", type=int, default=256, help="model input size (the checkpoints' own)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--unit", choices=("image", "patient"), default="image",
                    help="what the bootstrap resamples: images within label patterns (the pre-registered test) "
                         "or whole patients (both eyes together; a sensitivity analysis added afterwards)")
    args = ap.parse_args()
    t0 = time.time()
    src = ex.pool(args.out / "data", "confirm", args.n, 0, args.pool_seed, 384, True)
    its = ex.items(src, ex.ALL, "fundus")
    y = np.stack([it.target for it in its]).astype(bool)
    pre = PreprocessConfig(size=args.size)
    cache = args.out / "cache"

    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    ref = None
    variants: dict[str, str] = {}
    for run in args.checkpoints:
        feats = encoder_features(run, its, pre, cache)
        zm = zero_shot_model(run)
        ref = zm.reference_class()
        variants[str(run)] = zm.config.variant
        scores[str(run)] = reading_scores(zm, FeatureDataset(feats, y.astype(np.float32)))
    healthy = healthy_only(y, ref)
    if healthy is None:
        raise SystemExit("the class bank has no healthy class")

    names = [str(r) for r in args.checkpoints]
    full = [n for n in names if variants[n] == "uopsl"]  # the full method (OCT pre-training and sites)
    cells = [(r, g) for r in READINGS for g in NEGATIVES]
    # One weighted AUC per (model, class, cell, arm), built once; each resample reweights it.
    aucs = {}
    for n in names:
        for c in ex.UNSEEN_CLASSES:
            k = ex.ALL.index(c)
            pos = y[:, k]
            for r, g in cells:
                rows = np.ones(len(y), bool) if g == "all" else (healthy | pos)
                for arm in ARMS:
                    aucs[n, c, r, g, arm] = (_WeightedAuc(pos, scores[n][arm][r][:, k]), rows.astype(np.float64))

    def stat(w: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for r, g in cells:
            diffs = {}
            for n in names:
                for c in ex.UNSEEN_CLASSES:
                    (a_s, rows), (a_n, _) = aucs[n, c, r, g, "site_attention"], aucs[n, c, r, g, "no_site_attention"]
                    wr = w * rows
                    with_sites, without = a_s(wr), a_n(wr)
                    diffs[n, c] = with_sites - without
                    out[f"{r}/{g}/{n}/{c}"] = diffs[n, c]
                    out[f"{r}/{g}/{n}/{c}/with_sites"] = with_sites
                    out[f"{r}/{g}/{n}/{c}/without"] = without
            out[f"{r}/{g}/mean_all"] = np.mean([diffs[k] for k in diffs], axis=0)
            out[f"{r}/{g}/mean_full_uopsl"] = np.mean([diffs[n, c] for n in full for c in ex.UNSEEN_CLASSES], axis=0)
            for c in ex.UNSEEN_CLASSES:
                out[f"{r}/{g}/mean_{c}"] = np.mean([diffs[n, c] for n in names], axis=0)
        return out

    if args.unit == "image":
        iv = bootstrap_many(stat, len(y), n_boot=args.n_boot, seed=args.seed, strata=y)
    else:  # the pool pairs two eyes per patient; their scores need not be independent
        iv = bootstrap_many(stat, len(y), n_boot=args.n_boot, seed=args.seed, clusters=[it.group for it in its])
    res = {k: {"estimate": v.estimate, "ci95": [v.low, v.high]} for k, v in iv.items()}
    primary = iv[f"{PRIMARY[0]}/{PRIMARY[1]}/mean_all"]
    counts = {c: int(y[:, ex.ALL.index(c)].sum()) for c in ex.UNSEEN_CLASSES}
    summary = {
        "pool": {"n": len(y), "seed": args.pool_seed, "healthy": int(healthy.sum()), "positives": counts},
        "checkpoints": names, "full_uopsl": full, "n_boot": args.n_boot, "bootstrap_seed": args.seed,
        "bootstrap_unit": args.unit,
        "primary": {"cell": list(PRIMARY), "estimate": primary.estimate, "ci95": [primary.low, primary.high],
                    "confirmed": bool(primary.low > 0)},
        "ahead": {f"{r}/{g}": sum(iv[f"{r}/{g}/{n}/{c}"].estimate > 0 for n in names for c in ex.UNSEEN_CLASSES)
                  for r, g in cells},
        "intervals": res, "seconds": round(time.time() - t0, 1),
    }
    write_json(args.out / ("confirm.json" if args.unit == "image" else f"confirm-{args.unit}.json"), summary)
    print(f"pool: {len(y)} photographs (seed {args.pool_seed}), {int(healthy.sum())} healthy, positives {counts}")
    print(f"PRIMARY {PRIMARY}: mean difference {primary.estimate:+.4f} [{primary.low:+.4f}, {primary.high:+.4f}]"
          f" -> {'confirmed' if primary.low > 0 else 'not confirmed'}")
    for r, g in cells:
        m, u = iv[f"{r}/{g}/mean_all"], iv[f"{r}/{g}/mean_full_uopsl"]
        per = ", ".join(f"{c} {iv[f'{r}/{g}/mean_{c}'].estimate:+.4f} [{iv[f'{r}/{g}/mean_{c}'].low:+.4f},"
                        f" {iv[f'{r}/{g}/mean_{c}'].high:+.4f}]" for c in ex.UNSEEN_CLASSES)
        print(f"{r:>10} / {g:<7}: all {m.estimate:+.4f} [{m.low:+.4f}, {m.high:+.4f}], full uopsl {u.estimate:+.4f}"
              f" [{u.low:+.4f}, {u.high:+.4f}]; {per}; ahead {summary['ahead'][f'{r}/{g}']} of {2 * len(names)}")
    print("per comparison (primary cell): with / without, difference [95 %]")
    for n in names:
        row = []
        for c in ex.UNSEEN_CLASSES:
            key = f"{PRIMARY[0]}/{PRIMARY[1]}/{n}/{c}"
            d, a_s, a_n = iv[key], iv[key + "/with_sites"], iv[key + "/without"]
            row.append(f"{c} {a_s.estimate:.3f} / {a_n.estimate:.3f}, {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        print(f"  {n}: " + "; ".join(row))
    print(json.dumps({"seconds": summary["seconds"]}))


if __name__ == "__main__":
    main()
