"""Zero-shot readings of the unseen classes: raw, against the healthy prototype, and softmax over the bank.

Diagnoses why zero-shot does not beat the no-site reading (docs/results.md,
section 3). For each checkpoint (frozen-encoder runs of exp_synthetic.py, or
an end-to-end one with its own cached zero-shot features) it scores the
unseen classes of the zero-shot pool from their descriptions, with and
without site attention, three ways:

* ``raw``: ``cos(fused_k, e_k)``, what the model's logits rank by;
* ``vs_normal``: ``cos(fused_k, e_k) - cos(fused_k, e_normal)``, the class
  description against the healthy one's on the same pooled feature (a
  negative prompt, as CheXzero does for chest X-rays);
* ``softmax``: the model's logits made to compete across the whole class
  bank (CLIP's zero-shot reading).

Usage (the 3,000-image run's pool and cached 256 px features):

    python benchmarks/diag_zero_shot.py runs/s6_guide_t0/uopsl/finetune ... --data runs/s3_n3000/data --features runs/s3_n3000/cache/features-zeroshot-256.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_synthetic as ex  # noqa: E402  (the experiment's own pools and class lists)

from uopsl.runtime.metrics import per_class_auc  # noqa: E402
from uopsl.train import bank as banks  # noqa: E402
from uopsl.train.checkpoint import load_model  # noqa: E402


@torch.no_grad()
def readings(run: Path, feats: torch.Tensor, y: np.ndarray) -> dict[str, dict[str, float]]:
    model, _ = load_model(run)
    if model.config.variant == "fundus_only":
        raise SystemExit(f"{run}: a fundus_only model has no site attention to compare")
    zm = model.with_classes(ex.ALL, banks.build(ex.ALL, seen=ex.CLASSES).text, seen_names=ex.CLASSES).eval()
    ref = zm.reference_class()
    if ref is None:
        raise SystemExit(f"{run}: no healthy class to read against")
    tokens, glob, (h, w) = zm.fundus.from_features(feats)
    inside = zm.inside_tokens(h, w, feats.device)
    e = zm.prototypes()
    out: dict[str, dict[str, float]] = {}
    for label, use in (("site_attention", True), ("no_site_attention", False)):
        fused, _, _ = zm.fused_features(tokens, glob, use, inside)  # what the model's logits compare
        fn = F.normalize(fused, dim=-1)
        cos = (fn * e).sum(-1)
        scores = {"raw": cos, "vs_normal": cos - (fn * e[ref]).sum(-1),
                  "softmax": (zm.tau * cos + zm.bias).softmax(-1)}
        for name, s in scores.items():
            aucs = per_class_auc(y, s.numpy())
            out[f"{label}/{name}"] = {c: round(float(aucs[ex.ALL.index(c)]), 3) for c in ex.UNSEEN_CLASSES}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the run's data folder (its zeroshot pool is read)")
    ap.add_argument("--features", type=Path, required=True,
                    help="cached encoder features of that pool (features-zeroshot-SIZE.safetensors)")
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = ex.pool(args.data, "zeroshot", args.n_test, 0, 4000 + args.seed, 384, True)
    y = np.stack([it.target for it in ex.items(src, ex.ALL, "fundus")])
    feats = load_file(str(args.features))["features"].float()
    if len(feats) != len(y):
        raise SystemExit(f"{args.features} holds {len(feats)} images, the pool {len(y)}")
    for run in args.checkpoints:
        print(json.dumps({"checkpoint": str(run), **readings(run, feats, y)}), flush=True)


if __name__ == "__main__":
    main()
