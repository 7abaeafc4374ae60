"""Test macro AUC, per-class AUC and site concentration of ONE checkpoint on an exp_synthetic test pool.

For checkpoints trained outside ``exp_synthetic.py`` (e.g. ``uopsl finetune`` with the encoder
trained end to end), scored exactly as that script scores its ablations: the first --n-test
fundus images of DATA/test (generator seed 3000 + --seed), the checkpoint's own encoder (features
cached under --cache, keyed by the encoder's weights), concentration = site-attention mass inside
the class's true site mask over the mask's area fraction, on the test images that have the class.

    python benchmarks/eval_synthetic_checkpoint.py runs/s4_e2e/uopsl_ft --data runs/s3_n3000/data --cache runs/s4_e2e/evalcache --zero-shot
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import exp_synthetic as ex  # benchmarks/ is on sys.path when run as a script
from uopsl.runtime.metrics import per_class_auc
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="an exp_synthetic --out's data/ folder")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--zero-shot", action="store_true",
                    help="also score the unseen classes on DATA/zeroshot from their descriptions, with and without "
                         "site attention (exp_synthetic's zero-shot part)")
    args = ap.parse_args()
    model, meta = load_model(args.checkpoint)
    model.eval()
    pre = PreprocessConfig(size=meta.preprocess.size)
    test_src = ex.pool(args.data, "test", args.n_test, 0, 3000 + args.seed, 384, False)
    its = ex.items(test_src, ex.CLASSES, "fundus")
    fds = ex.features(model.fundus.encoder, its, pre, args.cache, "test")
    p, maps = ex.probs_of(model, fds)
    aucs = per_class_auc(fds.targets, p)
    res: dict[str, object] = {"checkpoint": str(args.checkpoint), "macro_auc": float(np.nanmean(aucs)),
                              "auc": dict(zip(ex.CLASSES, map(float, aucs)))}
    if model.config.variant != "fundus_only":
        # The checkpoint's own token mask and margin (exp_synthetic's concentration takes the margin from `pre`).
        res["site_concentration"] = ex.concentration(maps, test_src, its, meta.preprocess, model.config.fov_token_mask,
                                                     model.config.token_centres)
        res["fuse_weight"] = float(model.fuse_weight().detach())
    if args.zero_shot:
        zs_src = ex.pool(args.data, "zeroshot", args.n_test, 0, 4000 + args.seed, 384, True)
        fzs = ex.features(model.fundus.encoder, ex.items(zs_src, ex.ALL, "fundus"), pre, args.cache, "zeroshot")
        res["zero_shot"] = ex.zero_shot_aucs(model, fzs)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
