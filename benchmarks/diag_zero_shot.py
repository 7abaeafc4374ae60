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

Each also with healthy eyes as the only negatives (``.../healthy_negatives``:
the unseen class's images against the pool's normal ones, without the
other diseases), since telling a new disease from a healthy retina and
from other diseases at the same sites are different questions.

``--oracle`` adds two readings that use what zero-shot may not (the
unseen classes' true site masks and labels), to locate the failure:

* ``conc_g``: how far ``G``'s maps for each unseen class concentrate on its
  true sites (positive images; 1 = chance, as the seen classes' criterion);
* ``prior_maps``: the raw reading with each unseen class's maps replaced by
  its true-site prior (mean site mask of its positive images on the token
  grid, inside the FOV): would correct maps beat the no-site reading?
* ``image_prototype``: the text prototype replaced by one estimated from
  images (mean feature of positives minus negatives on a random half, AUC
  on the other half, mean of 20 splits) for the global feature, the fused
  feature and the site feature alone: do the features separate the class
  when the prototype is right?

``--compare`` adds what ``uopsl zero-shot`` reports for the unseen classes
(:mod:`uopsl.train.zero_shot`: raw and against-the-healthy-description
readings, every other image or healthy eyes only as negatives, each
with/without-sites difference with a paired bootstrap interval and DeLong's
p), computed from the cached features.

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
from uopsl.train.model import UopslModel  # noqa: E402
from uopsl.train.workflow import text_model_of  # noqa: E402


def zero_shot_model(run: Path) -> UopslModel:
    """The checkpoint with the experiment's class bank: its seen classes plus the unseen ones."""
    model, meta = load_model(run)
    if model.config.variant == "fundus_only":
        raise SystemExit(f"{run}: a fundus_only model has no site attention to compare")
    encoder = text_model_of(run, model, meta)  # the encoder that made the checkpoint, checked
    return model.with_classes(ex.ALL, banks.build(ex.ALL, text_model=encoder, seen=ex.CLASSES).text,
                              seen_names=ex.CLASSES).eval()


@torch.no_grad()
def readings(zm: UopslModel, feats: torch.Tensor, y: np.ndarray) -> dict[str, dict[str, float]]:
    """The raw, against-the-healthy-prototype and softmax readings, against every image and healthy eyes only."""
    from uopsl.train.stages import FeatureDataset
    from uopsl.train.zero_shot import healthy_only, reading_scores

    healthy = healthy_only(y, zm.reference_class())
    if healthy is None:
        raise SystemExit("the class bank has no healthy class to read against")
    both = reading_scores(zm, FeatureDataset(feats, y))  # the scores uopsl zero-shot compares
    out: dict[str, dict[str, float]] = {}
    for label, by in both.items():
        raw = torch.from_numpy(by["raw"])
        scores = {"raw": by["raw"], "vs_normal": by["vs_healthy"],
                  "softmax": (zm.tau * raw + zm.bias).softmax(-1).numpy()}
        for name, s in scores.items():
            aucs = per_class_auc(y, s)
            out[f"{label}/{name}"] = {c: round(float(aucs[ex.ALL.index(c)]), 3) for c in ex.UNSEEN_CLASSES}
            # The same scores, with healthy eyes as the only negatives (the class's images against normal ones).
            against_healthy = {}
            for c in ex.UNSEEN_CLASSES:
                k = ex.ALL.index(c)
                rows = healthy | (y[:, k] > 0)
                against_healthy[c] = round(float(per_class_auc(y[rows][:, [k]], s[rows][:, [k]])[0]), 3)
            out[f"{label}/{name}/healthy_negatives"] = against_healthy
    return out


def comparisons(zm: UopslModel, feats: torch.Tensor, y: np.ndarray, n_boot: int, seed: int) -> dict:
    """What ``uopsl zero-shot`` reports (its ``readings``) for the unseen classes, from cached features."""
    from uopsl.train.stages import FeatureDataset
    from uopsl.train.zero_shot import reading_scores, site_comparisons

    scores = reading_scores(zm, FeatureDataset(feats, y))
    full = site_comparisons(y, list(ex.ALL), zm.reference_class(), scores["site_attention"],
                            scores["no_site_attention"], n_boot=n_boot, seed=seed)
    return {r: {n: {c: blk[c] for c in ex.UNSEEN_CLASSES} for n, blk in by.items()} for r, by in full.items()}


def _site_priors(src, size: int, hw: tuple[int, int]) -> np.ndarray:
    """(N, U, h, w): each zero-shot image's true site mask of every unseen class on the token grid (0 where absent)."""
    from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file
    from uopsl.train.evaluate import mask_to_grid
    from uopsl.train.synthetic import load_masks

    pre = PreprocessConfig(size=size)
    by_path = {s.path: s for s in src.samples}
    its = ex.items(src, ex.ALL, "fundus")
    grid = np.zeros((len(its), len(ex.UNSEEN_CLASSES), *hw), np.float32)
    for i, it in enumerate(its):
        mfile = by_path[it.path].extra.get("masks")
        if not mfile:
            continue
        geom = preprocess_file(it.path, pre).geometry
        per_class = load_masks(mfile)
        for j, c in enumerate(ex.UNSEEN_CLASSES):
            if c in per_class:
                grid[i, j] = mask_to_grid(per_class[c], geom, *hw)
    return grid


@torch.no_grad()
def oracle_readings(zm: UopslModel, feats: torch.Tensor, y: np.ndarray, masks: np.ndarray,
                    splits: int = 20, seed: int = 0) -> dict[str, dict[str, float]]:
    """The ``--oracle`` readings (module docstring): G's map concentration, true-site maps, image prototypes."""
    from uopsl.train.evaluate import site_concentration

    tokens, glob, (h, w) = zm.fundus.from_features(feats)
    inside = zm.inside_tokens(h, w, feats.device)
    e = zm.prototypes()
    fused, maps, z = zm.fused_features(tokens, glob, True, inside)
    gn = F.normalize(glob, dim=-1)
    a = zm.fuse_weight()
    values = zm.sites.v(tokens)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {"conc_g": {}, "prior_maps": {}, "no_site_attention": {},
                                        "image_prototype/no_site": {}, "image_prototype/fused": {},
                                        "image_prototype/site_only": {}}
    for j, c in enumerate(ex.UNSEEN_CLASSES):
        k = ex.ALL.index(c)
        pos = np.flatnonzero(y[:, k] > 0)
        ratios = [site_concentration(maps[i, k].reshape(h, w).numpy(), masks[i, j]) for i in pos]
        out["conc_g"][c] = round(float(np.nanmean(ratios)), 2)
        prior = torch.from_numpy(masks[pos, j].mean(0)).reshape(-1)
        if inside is not None:
            prior = prior * inside.float()
        prior = prior / prior.sum()
        zp = torch.einsum("t,ntd->nd", prior, values)
        fp = a * gn + (1 - a) * F.normalize(zp, dim=-1)
        for name, f in (("prior_maps", fp), ("no_site_attention", gn)):
            s = (F.normalize(f, dim=-1) @ e[k]).numpy()
            out[name][c] = round(float(per_class_auc(y[:, [k]], s[:, None])[0]), 3)
        for name, f in (("no_site", gn), ("fused", F.normalize(fused[:, k], dim=-1)),
                        ("site_only", F.normalize(z[:, k], dim=-1))):
            aucs = []
            for _ in range(splits):
                idx = rng.permutation(len(y))
                fit, held = idx[: len(y) // 2], idx[len(y) // 2:]
                proto = F.normalize(f[fit[y[fit, k] > 0]].mean(0) - f[fit[y[fit, k] == 0]].mean(0), dim=0)
                aucs.append(per_class_auc(y[held][:, [k]], (f[held] @ proto).numpy()[:, None])[0])
            out[f"image_prototype/{name}"][c] = round(float(np.mean(aucs)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the run's data folder (its zeroshot pool is read)")
    ap.add_argument("--features", type=Path, required=True,
                    help="cached encoder features of that pool (features-zeroshot-SIZE.safetensors)")
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", action="store_true",
                    help="also the oracle readings (true site maps, image-estimated prototypes)")
    ap.add_argument("--size", type=int, default=256, help="the model size the features were cached at")
    ap.add_argument("--compare", action="store_true",
                    help="also uopsl zero-shot's comparisons (paired bootstrap interval, DeLong p) of the unseen classes")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    src = ex.pool(args.data, "zeroshot", args.n_test, 0, 4000 + args.seed, 384, True)
    y = np.stack([it.target for it in ex.items(src, ex.ALL, "fundus")])
    feats = load_file(str(args.features))["features"].float()
    if len(feats) != len(y):
        raise SystemExit(f"{args.features} holds {len(feats)} images, the pool {len(y)}")
    masks = _site_priors(src, args.size, tuple(feats.shape[2:])) if args.oracle else None
    for run in args.checkpoints:
        zm = zero_shot_model(run)
        row = {"checkpoint": str(run), **readings(zm, feats, y)}
        if masks is not None:
            row["oracle"] = oracle_readings(zm, feats, y, masks, seed=args.seed)
        if args.compare:
            row["comparisons"] = comparisons(zm, feats, y, args.n_boot, args.seed)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
