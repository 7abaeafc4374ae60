"""Synthetic-data experiments of the training issue: ablations, site maps, zero-shot, few-shot.

Reproduce (2 CPU cores, ~20-40 min):

    python benchmarks/exp_synthetic.py --out runs/synthetic --seed 0

Protocol (all fixed by --seed):
* data: ``uopsl.train.synthetic`` at --size px. Train pool: --n-train fundus +
  --n-oct OCT images of the seen classes (normal, dr, dme, amd, glaucoma);
  validation --n-val fundus; test --n-test fundus (seen classes, with site
  masks); zero-shot test --n-test fundus drawn with the unseen classes too
  (rp, macular_hole). Each pool has its own generator seed.
* model: EfficientNet-Lite0 with ImageNet weights, frozen (features cached
  once and shared by every run), d=256, S=4 sites, sigmoid head; --size is the
  model input (the pools are always drawn at 384 px); --attention picks the
  site-attention form (cosine, the default, or the older dot product);
  the site attention weighs only the tokens inside the field of view
  (``fov_token_mask``, the default; ``--no-fov-mask``: every token, as
  models before the mask).
  ``--reuse RUN`` takes the data and the feature cache of an earlier run, so a
  second variant (e.g. the other attention form) costs only the training.
* ablations: ``fundus_only`` (no OCT, no P), ``p_only`` (P, no OCT),
  ``uopsl`` (P learned on OCT). Stage 1 then stage 2 for each.
* few-shot: N in {5, 20} labelled fundus images per class, seeds 0..2; stage 1
  sees the OCT pool (uopsl) plus the same N-shot fundus images, never more
  labelled fundus images than stage 2.
Outputs: OUT/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from uopsl.runtime.fsio import write_json
from uopsl.runtime.metrics import per_class_auc
from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file
from uopsl.train import data
from uopsl.train.evaluate import site_concentration_report
from uopsl.train.loops import TrainConfig, predict
from uopsl.train.model import TokenCentres, UopslModel, fov_token_mask
from uopsl.train.stages import FeatureDataset, finetune, pretrain
from uopsl.train.synthetic import SEEN_CLASSES, UNSEEN_CLASSES, SynthConfig, make_dataset
from uopsl.train.torchdata import ImageDataset, ImageModality, Item
from uopsl.train.workflow import new_model

log = logging.getLogger("exp_synthetic")
CLASSES = ("normal",) + SEEN_CLASSES
ALL = CLASSES + UNSEEN_CLASSES


def pool(out: Path, name: str, n_fundus: int, n_oct: int, seed: int, size: int, unseen: bool) -> data.DatasetSource:
    classes = SEEN_CLASSES + (UNSEEN_CLASSES if unseen else ())
    folder = make_dataset(out / name, n_fundus, n_oct, SynthConfig(size=size, seed=seed, classes=classes), progress=False)
    return data.read_synthetic(folder)


def items(src: data.DatasetSource, names: tuple[str, ...], modality: str) -> list[Item]:
    space = data.LabelSpace(names)
    return [Item(s.path, space.encode(s.labels, strict=False), s.patient or "") for s in src.samples if s.modality == modality]


def features(encoder: torch.nn.Module, its: list[Item], pre: PreprocessConfig, cache: Path, name: str,
             modality: ImageModality = "fundus") -> FeatureDataset:
    return FeatureDataset.cached(cache / f"features-{name}-{pre.size}.safetensors", encoder,
                                 ImageDataset(its, pre, cache, modality=modality), torch.device("cpu"))


def probs_of(model, fds: FeatureDataset, use_sites: bool = True) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    out = predict(model, fds, batch_size=64, use_sites=use_sites, with_maps=True)
    return out["probs"], out["site_maps"]


def zero_shot_aucs(model, fzs: FeatureDataset) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """AUC of each unseen class, scored from its description alone, with and without site attention."""
    from uopsl.train import bank as banks

    zm = model.with_classes(ALL, banks.build(ALL, seen=CLASSES).text, seen_names=CLASSES)
    out = {}
    for label, use in (("site_attention", True), ("no_site_attention", False)):
        p, _ = probs_of(zm, fzs, use)
        a = per_class_auc(fzs.targets, p)
        out[label] = {c: float(a[ALL.index(c)]) for c in UNSEEN_CLASSES}
    return out


def macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    a = per_class_auc(y, p)
    return float(np.nanmean(a))


def train_variant(variant: str, fund: FeatureDataset, octf: FeatureDataset | None, val: FeatureDataset, out: Path,
                  seed: int, epochs: int, size: int, base_model=None,  # type: ignore[no-untyped-def]
                  attention: str = "cosine", fov_mask: bool = True, site_loss: float = 0.0,
                  site_guide: float = 0.0) -> object:
    model, meta = new_model(CLASSES, variant=variant, size=size, seed=seed)  # the head's initialisation: seed
    if meta.preprocess.fov_margin != model.config.fov_margin:
        raise SystemExit(f"model fov_margin {model.config.fov_margin} != preprocessing's {meta.preprocess.fov_margin}")
    if (model.config.attention, model.config.fov_token_mask) != (attention, fov_mask):  # same seed: same weights
        cfg = replace(model.config, attention=attention, fov_token_mask=fov_mask)
        torch.manual_seed(seed)
        model, meta = UopslModel(cfg, model.class_text.numpy()), replace(meta, model=cfg)
    if base_model is not None:
        model.fundus.encoder.load_state_dict(base_model.fundus.encoder.state_dict())
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, seed=seed, freeze_encoder=True, augment=False, save_every=0,
                      w_site_finetune=site_loss, w_site_guide=site_guide)
    pretrain(model, fund, octf if variant == "uopsl" else None, cfg, out / "pretrain", meta)
    model, _ = finetune(model, fund, val, cfg, out / "finetune", meta,
                        select=lambda p, y: macro_auc(y, p))
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/synthetic"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-oct", type=int, default=300)
    ap.add_argument("--n-val", type=int, default=150)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--shots", default="5,20")
    ap.add_argument("--shot-seeds", type=int, default=3)
    ap.add_argument("--parts", default="ablations,zeroshot,fewshot",
                    help="which experiments to run (comma-separated subset)")
    ap.add_argument("--attention", choices=("cosine", "dot"), default="cosine", help="site-attention form")
    ap.add_argument("--no-fov-mask", action="store_true",
                    help="site attention over every token, including those outside the field of view")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="seed of the ablations' initialisation and batch order (default --seed); the data stay --seed's")
    ap.add_argument("--site-loss", type=float, default=0.0,
                    help="stage-2 site loss weight on fundus tokens (TrainConfig.w_site_finetune; 0: fused loss only)")
    ap.add_argument("--site-guide", type=float, default=0.0,
                    help="stage-2 site guide weight (TrainConfig.w_site_guide; 0: off)")
    ap.add_argument("--variants", default="fundus_only,p_only,uopsl", help="which ablations to train")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier run's --out whose data/ and cache/ (same seed and sizes) this run reads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    out, s = args.out, args.seed
    shared = args.reuse or out
    pre = PreprocessConfig(size=args.size)
    train_src = pool(shared / "data", "train", args.n_train, args.n_oct, 1000 + s, 384, False)
    val_src = pool(shared / "data", "val", args.n_val, 0, 2000 + s, 384, False)
    test_src = pool(shared / "data", "test", args.n_test, 0, 3000 + s, 384, False)
    zs_src = pool(shared / "data", "zeroshot", args.n_test, 0, 4000 + s, 384, True)

    ref_model, _ = new_model(CLASSES, size=args.size)
    enc, oenc = ref_model.fundus.encoder, ref_model.oct.encoder  # type: ignore[union-attr]
    cache = shared / "cache"
    ftr = features(enc, items(train_src, CLASSES, "fundus"), pre, cache, "train")
    foct = features(oenc, items(train_src, CLASSES, "oct"), pre, cache, "oct", modality="oct")
    fval = features(enc, items(val_src, CLASSES, "fundus"), pre, cache, "val")
    test_items = items(test_src, CLASSES, "fundus")
    ftest = features(enc, test_items, pre, cache, "test")
    fzs = features(enc, items(zs_src, ALL, "fundus"), pre, cache, "zeroshot") if "zeroshot" in args.parts else None
    res: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}, "ablations": {}}
    log.warning("features ready after %.0f s", time.time() - t0)

    parts = set(args.parts.split(","))
    models = {}
    for variant in args.variants.split(",") if parts & {"ablations", "zeroshot"} else ():
        ts = s if args.train_seed is None else args.train_seed
        m = train_variant(variant, ftr, foct, fval, out / variant, ts, args.epochs, args.size, ref_model, args.attention,
                          not args.no_fov_mask, args.site_loss, args.site_guide)
        models[variant] = m
        p, maps = probs_of(m, ftest)
        aucs = per_class_auc(ftest.targets, p)
        entry = {"macro_auc": float(np.nanmean(aucs)), "auc": dict(zip(CLASSES, map(float, aucs)))}
        if variant != "fundus_only":
            entry["site_concentration"] = concentration(maps, test_src, test_items, pre, not args.no_fov_mask,
                                                        m.config.token_centres)
            entry["outside_fov_mass"] = outside_fov_mass(maps, pre, m.config.token_centres)
        res["ablations"][variant] = entry  # type: ignore[index]
        log.warning("%s: %s (%.0f s)", variant, entry, time.time() - t0)

    # zero-shot: unseen classes from their descriptions only
    zs = {variant: zero_shot_aucs(models[variant], fzs)
          for variant in [v for v in ("p_only", "uopsl") if v in models] if "zeroshot" in parts}
    res["zero_shot"] = zs
    log.warning("zero-shot: %s", zs)

    few: dict[str, dict[str, list[float]]] = {}
    for n in [int(x) for x in args.shots.split(",")] if "fewshot" in parts else []:
        for seed in range(args.shot_seeds):
            idx = data.take_shots([x for x in train_src.samples if x.modality == "fundus"], n, seed=seed, classes=CLASSES)
            sub = ftr.subset(np.asarray(idx))
            for variant in ("fundus_only", "uopsl"):
                m = train_variant(variant, sub, foct, fval, out / f"fewshot{n}" / f"{variant}_s{seed}", seed,
                                  args.epochs, args.size, ref_model, args.attention, not args.no_fov_mask,
                                  args.site_loss, args.site_guide)
                p, _ = probs_of(m, ftest)
                few.setdefault(f"{n}-shot", {}).setdefault(variant, []).append(macro_auc(ftest.targets, p))
        log.warning("few-shot %d: %s", n, few[f"{n}-shot"])
    res["few_shot"] = {k: {v: {"runs": r, "mean": float(np.mean(r)), "std": float(np.std(r))} for v, r in d.items()}
                       for k, d in few.items()}
    res["seconds"] = round(time.time() - t0)
    write_json(out / "results.json", res)
    print(json.dumps(res, indent=1))


def outside_fov_mass(maps: np.ndarray, pre: PreprocessConfig, centres: TokenCentres = "token") -> dict[str, float]:
    """Per seen disease class: mean share of site-attention mass on tokens outside the FOV (all test images;
    ``centres``: the model's ``ModelConfig.token_centres``)."""
    out = ~fov_token_mask(maps.shape[2], maps.shape[3], pre.fov_margin, centres=centres)
    share = maps[:, :, out].sum(axis=-1) / maps.sum(axis=(2, 3))  # (N, K)
    return {c: float(share[:, CLASSES.index(c)].mean()) for c in SEEN_CLASSES}


def concentration(maps: np.ndarray, src: data.DatasetSource, its: list[Item], pre: PreprocessConfig,
                  fov_mask: bool = True, centres: TokenCentres = "token") -> dict[str, dict[str, float]]:
    """Per seen disease class: :func:`site_concentration_report`'s figures (the ratio over the field of view
    when the maps weigh the FOV only, the grid-wide one, and the fixed-map yardsticks)."""
    by_path = {s.path: s for s in src.samples}
    masks = [by_path[it.path].extra.get("masks") for it in its]
    geoms = [preprocess_file(it.path, pre).geometry if m else None for it, m in zip(its, masks)]
    inside = fov_token_mask(maps.shape[2], maps.shape[3], pre.fov_margin, centres=centres) if fov_mask else None
    rep = site_concentration_report(maps, np.stack([it.target for it in its]), CLASSES, masks, geoms, inside)
    return {c: rep.get(c, {"mean": float("nan")}) for c in SEEN_CLASSES}

if __name__ == "__main__":
    main()
