"""Real-data experiments on TVHL: the three ablations, yardsticks, pretrained vs random init.

Reproduce (2 CPU cores, ~15-30 min; reads ../shared/data/tvhl, writes nothing into it):

    python benchmarks/exp_tvhl.py --tvhl ../shared/data/tvhl --out runs/tvhl --seed 0

Protocol:
* fundus images: all 1058 of the dev subset; model classes ``normal``, ``dr``
  (npdr or pdr) and ``dme`` (multi-label sigmoid head). DME images without a DR
  grade count as dr-negative in training (their grade is unknown).
* patient-grouped 3-fold cross-validation (``uopsl.train.data.group_kfold``,
  seed --seed; ``--train-seed`` trains other models on the same folds;
  ``--duplicates 0.9`` also keeps copies of one photograph
  filed under two patient ids on one side, which draws other folds); inside
  each training part, 15 % of the patients are held out for model selection
  and operating thresholds.
* OCT pool for stage 1: TVHL OCT B-scans with a known label, of the training
  part's patients only: no test patient's OCT is ever seen, nor (since
  2026-12-02) a model-selection patient's.
* 95 % intervals resample patients (since 2026-12-02; before, photographs,
  which made them too narrow).
* encoder: EfficientNet-Lite0, ImageNet weights (or random with --init random),
  frozen at 320 px; features computed once and shared by all runs.
* tasks scored on the pooled out-of-fold predictions:
  (a) referable DR = npdr+pdr vs normal on the DR-graded cohort, score p(dr);
  (b) DME vs normal, score p(dme), next to a brightness-only baseline.
* yardsticks: logistic regression on brightness features (mean, std, RGB
  means of the field of view) and on the frozen encoder's pooled features.

``--zero-shot-dr``: instead, DR is held out as a zero-shot class. Each fold's
models train on ``normal`` and ``dme`` only, with every fundus photograph and
OCT scan of a DR-graded eye (npdr or pdr) left out of training; ``dr`` is then
added from its description alone and scored on the fold's test photographs
(:mod:`uopsl.train.zero_shot`: the description reading and the reading
against the healthy description, with and without site attention). Task:
npdr+pdr vs normal on the DR-graded cohort, pooled out of fold, healthy eyes
the only negatives by construction. Real photographs and a class no label
taught, though not a new appearance: DME photographs carry DR lesions.
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
from uopsl.runtime import metrics
from uopsl.runtime.metrics import auc_ci, roc_auc
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train import data
from uopsl.train.checkpoint import CheckpointMeta
from uopsl.train.datasets.duplicates import DuplicateConfig, find_duplicates
from uopsl.train.loops import TrainConfig
from uopsl.train.model import UopslModel
from uopsl.train.stages import FeatureDataset, finetune, pretrain
from uopsl.train.torchdata import ImageDataset, Item
from uopsl.train.workflow import new_model

log = logging.getLogger("exp_tvhl")
CLASSES = ("normal", "dr", "dme")


def target(s: data.Sample) -> np.ndarray:
    e = s.extra
    dr = e.get("dr_grade")
    y = np.zeros(3, np.float32)
    y[0] = 1.0 if s.labels == ("normal",) else 0.0
    y[1] = 1.0 if dr is not None and dr >= 1 else 0.0
    y[2] = 1.0 if int(e.get("dme", 0)) == 1 else 0.0
    return y


def logistic(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, l2: float = 1e-2, steps: int = 300) -> np.ndarray:
    """L2-regularised logistic regression (LBFGS, standardised inputs); returns test scores."""
    xtr, xte = np.asarray(xtr, np.float64), np.asarray(xte, np.float64)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a = torch.tensor((xtr - mu) / sd, dtype=torch.float64)
    b = torch.tensor(ytr, dtype=torch.float64)
    w = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    c = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, b) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.tensor((xte - mu) / sd) @ w + c).numpy()


def brightness_features(images: np.ndarray) -> np.ndarray:
    out = []
    for im in images:
        fov = im.reshape(-1, 3)
        fov = fov[fov.max(axis=1) > 0]
        g = fov.mean(axis=1)
        out.append([g.mean(), g.std(), *fov.mean(axis=0)])
    return np.asarray(out, np.float64)


def train_seed(args: argparse.Namespace) -> int:
    """The seed of the models' initialisation and batch order: ``--train-seed``, else ``--seed``."""
    return int(args.seed if args.train_seed is None else args.train_seed)


def with_token_centres(model: UopslModel, meta: CheckpointMeta, centres: str) -> tuple[UopslModel, CheckpointMeta]:
    """The model judging its field-of-view tokens by ``centres`` (``ModelConfig.token_centres``; weights unchanged)."""
    if centres != model.config.token_centres:
        model.config = replace(model.config, token_centres=centres)  # type: ignore[arg-type]
        meta = replace(meta, model=model.config)
    return model, meta


def zero_shot_dr(args: argparse.Namespace, fsrc: data.DatasetSource, osrc: data.DatasetSource,
                 ffeat: FeatureDataset, ofeat: FeatureDataset, fy: np.ndarray, oy: np.ndarray,
                 folds: list[tuple[np.ndarray, np.ndarray]], lab: np.ndarray, t0: float,
                 links: list[tuple[int, int]] | None = None) -> dict[str, object]:
    """``--zero-shot-dr``: train on normal + dme without any DR-graded eye, score ``dr`` from its description."""
    from uopsl.train import bank as banks
    from uopsl.train.zero_shot import compare, reading_scores

    seen = ("normal", "dme")
    keep = [CLASSES.index(c) for c in seen]
    f2 = FeatureDataset(ffeat.features, fy[:, keep])
    o2 = FeatureDataset(ofeat.features, oy[:, keep])
    no_dr_f = fy[:, 1] == 0
    no_dr_o = oy[:, 1] == 0
    opatients = np.array([s.patient for s in osrc.samples])
    text = banks.build(CLASSES, seen=seen).text
    variants = args.variants.split(",")
    if "fundus_only" in variants:
        raise SystemExit("--zero-shot-dr compares site attention with the plain reading: fundus_only has none")
    scores = {v: {arm: {r: np.full(len(fy), np.nan) for r in ("raw", "vs_healthy")}
                  for arm in ("site_attention", "no_site_attention")} for v in variants}
    for f, (tr, te) in enumerate(folds):
        trs = fsrc.subset(tr)
        split = data.patient_split(trs.samples, fractions=(0.85, 0.15, 0.0), seed=args.seed,
                                   links=data.links_within(links, tr))
        tr_idx = tr[split.train][no_dr_f[tr[split.train]]]
        va_idx = tr[split.val][no_dr_f[tr[split.val]]]
        train_patients = {fsrc.samples[i].patient for i in tr[split.train]}  # not the model-selection part's
        oidx = np.flatnonzero(np.isin(opatients, list(train_patients)) & no_dr_o)
        for v in variants:
            model, meta = with_token_centres(*new_model(seen, variant=v, size=args.size, init=args.init,
                                                        seed=train_seed(args)), args.token_centres)
            torch.manual_seed(train_seed(args))
            cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=1e-3, seed=train_seed(args), freeze_encoder=True,
                              augment=False, save_every=0, balanced=True, w_site_guide=args.site_guide)
            run = args.out / "zero_shot_dr" / f"fold{f}" / v
            pretrain(model, f2.subset(tr_idx), o2.subset(oidx) if v == "uopsl" else None, cfg, run / "pretrain", meta)

            def select(p: np.ndarray, y: np.ndarray) -> float:
                return float(roc_auc(y[:, 1], p[:, 1]))  # dme, the one disease it sees

            model, _ = finetune(model, f2.subset(tr_idx), f2.subset(va_idx), cfg, run / "finetune", meta, select=select)
            zm = model.with_classes(CLASSES, text, seen_names=seen).eval()
            got = reading_scores(zm, ffeat.subset(te))
            for arm, by in got.items():
                for r, sc in by.items():
                    scores[v][arm][r][te] = sc[:, CLASSES.index("dr")]
        log.warning("zero-shot dr: fold %d done after %.0f s", f, time.time() - t0)
    cohort = np.isin(lab, ["normal", "npdr", "pdr"])
    y = np.isin(lab[cohort], ["npdr", "pdr"])
    clusters = metrics.patient_codes([s.patient for s in fsrc.samples])[cohort]  # resample patients, not images
    models = {v: {r: compare(y, scores[v]["site_attention"][r][cohort], scores[v]["no_site_attention"][r][cohort],
                             n_boot=2000, seed=args.seed, clusters=clusters).to_dict()
                  for r in ("raw", "vs_healthy")} for v in variants}
    return {"args": {k: str(v) for k, v in vars(args).items()}, "n_pos": int(y.sum()), "n_neg": int((~y).sum()),
            "models": models, "seconds": round(time.time() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--out", type=Path, default=Path("runs/tvhl"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seed", type=int, default=None,
                    help="seed of the models' initialisation and batch order (default: --seed); --seed alone keeps "
                         "drawing the folds, so other values train other models on the same folds")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--init", default="imagenet")
    ap.add_argument("--variants", default="fundus_only,p_only,uopsl")
    ap.add_argument("--site-guide", type=float, default=0.0,
                    help="stage-2 site guide weight (0, the default here: as the documented runs, which predate it)")
    ap.add_argument("--duplicates", type=float, default=None, metavar="T",
                    help="keep copies of one photograph (signature correlation >= T, `uopsl duplicates`) on one side "
                         "of every fold and of the model-selection split; default: patients only, as the runs "
                         "before session 17")
    ap.add_argument("--token-centres", choices=("cell", "token"), default="cell",
                    help="the site attention's field-of-view token mask: grid cells (the default) or windows centred "
                         "where the tokens look (ModelConfig.token_centres; session 17's experiment)")
    ap.add_argument("--zero-shot-dr", action="store_true",
                    help="hold DR out of training and score it zero-shot (see the module docstring)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    out = args.out
    pre = PreprocessConfig(size=args.size)
    fsrc = data.read_tvhl(args.tvhl, modality="fundus", task="four_class")
    osrc = data.read_tvhl(args.tvhl, modality="oct", task="four_class")
    fy = np.stack([target(s) for s in fsrc.samples])
    oy = np.stack([target(s) for s in osrc.samples])
    fitems = [Item(s.path, y, s.patient or "") for s, y in zip(fsrc.samples, fy)]
    oitems = [Item(s.path, y, s.patient or "") for s, y in zip(osrc.samples, oy)]

    ref, _ = new_model(CLASSES, size=args.size, init=args.init)
    fds_img = ImageDataset(fitems, pre, out / "cache")
    ods_img = ImageDataset(oitems, pre, out / "cache", modality="oct")
    if len(fds_img) != len(fitems) or len(ods_img) != len(oitems):
        raise SystemExit("some TVHL images could not be read; see the log")
    cpu = torch.device("cpu")
    ffeat = FeatureDataset.cached(out / f"features-fundus-{args.init}-{args.size}.safetensors", ref.fundus.encoder, fds_img, cpu)
    ofeat = FeatureDataset.cached(out / f"features-oct-{args.init}-{args.size}.safetensors", ref.oct.encoder, ods_img, cpu)  # type: ignore[union-attr]
    pooled = ffeat.features.float().mean(dim=(2, 3)).numpy()
    bright = brightness_features(np.asarray(fds_img.images))
    log.warning("features ready after %.0f s", time.time() - t0)

    labels = [s.labels[0] for s in fsrc.samples]
    links = None
    if args.duplicates is not None:
        report = find_duplicates(fsrc.samples, DuplicateConfig(threshold=args.duplicates), out / "cache")
        links = report.links()
        patients = {s.patient for g in report.groups for s in (fsrc.samples[i] for i in g)}
        log.warning("duplicates >= %.2f: %d sets of copies (%d photographs, %d patient ids) kept on one side",
                    args.duplicates, len(report.groups), sum(map(len, report.groups)), len(patients))
    folds = data.group_kfold(fsrc.samples, args.folds, seed=args.seed, links=links)
    if args.zero_shot_dr:
        result = zero_shot_dr(args, fsrc, osrc, ffeat, ofeat, fy, oy, folds, np.array(labels), t0, links)
        write_json(out / "zero_shot_dr.json", result)
        print(json.dumps(result, indent=1))
        return
    variants = args.variants.split(",")
    scores = {v: np.full((len(fitems), 3), np.nan) for v in variants}
    base = {"brightness": np.full((len(fitems), 3), np.nan), "imagenet_lr": np.full((len(fitems), 3), np.nan)}
    fold_of = np.zeros(len(fitems), int)
    opatients = np.array([s.patient for s in osrc.samples])
    for f, (tr, te) in enumerate(folds):
        fold_of[te] = f
        trs = fsrc.subset(tr)
        split = data.patient_split(trs.samples, fractions=(0.85, 0.15, 0.0), seed=args.seed,
                                   links=data.links_within(links, tr))
        tr_idx, va_idx = tr[split.train], tr[split.val]
        # The OCT of the training part's patients only: the model-selection part's patients must be as unseen
        # as the test fold's (before 2026-12-02 their OCT was in the pool; `uopsl` variant only).
        train_patients = {fsrc.samples[i].patient for i in tr_idx}
        oidx = np.flatnonzero(np.isin(opatients, list(train_patients)))
        for k in (1, 2):
            for name, x in (("brightness", bright), ("imagenet_lr", pooled)):
                base[name][te, k] = logistic(x[tr], fy[tr, k], x[te])
        for v in variants:
            model, meta = with_token_centres(*new_model(CLASSES, variant=v, size=args.size, init=args.init,
                                                        seed=train_seed(args)), args.token_centres)
            torch.manual_seed(train_seed(args))
            cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=1e-3, seed=train_seed(args), freeze_encoder=True,
                              augment=False, save_every=0, balanced=True, w_site_guide=args.site_guide)
            run = out / f"fold{f}" / v
            pretrain(model, ffeat.subset(tr_idx), ofeat.subset(oidx) if v == "uopsl" else None, cfg, run / "pretrain", meta)

            def select(p: np.ndarray, y: np.ndarray) -> float:
                return float(np.nanmean([roc_auc(y[:, k], p[:, k]) for k in (1, 2)]))

            model, _ = finetune(model, ffeat.subset(tr_idx), ffeat.subset(va_idx), cfg, run / "finetune", meta, select=select)
            model.eval()
            with torch.no_grad():
                o = model.forward_features(ffeat.features[torch.as_tensor(te)].float())
                scores[v][te] = model.probs(o["logits"]).numpy()
        log.warning("fold %d done after %.0f s", f, time.time() - t0)

    lab = np.array(labels)
    cohort_dr = np.isin(lab, ["normal", "npdr", "pdr"])
    cohort_dme = np.isin(lab, ["normal", "dme"])
    y_dr = np.isin(lab[cohort_dr], ["npdr", "pdr"]).astype(int)
    y_dme = (lab[cohort_dme] == "dme").astype(int)

    patients = metrics.patient_codes([smp.patient for smp in fsrc.samples])

    def summarise(s: np.ndarray) -> dict[str, object]:
        res = {}
        for task, cohort, y, k in (("referable_dr", cohort_dr, y_dr, 1), ("dme_vs_normal", cohort_dme, y_dme, 2)):
            sc = s[cohort, k]
            # Patients resampled, not photographs (before 2026-12-02: by photograph, intervals too narrow).
            ci = auc_ci(y, sc, n_boot=2000, seed=args.seed, clusters=patients[cohort])
            per_fold = [roc_auc(y[fold_of[cohort] == f], sc[fold_of[cohort] == f]) for f in range(args.folds)]
            res[task] = {"auc": ci.estimate, "ci95": [ci.low, ci.high], "ci_unit": "patient", "per_fold": per_fold,
                         "n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}
        return res

    result = {"args": {k: str(v) for k, v in vars(args).items()},
              "n_fundus": len(fitems), "n_oct_labelled": len(oitems),
              "models": {v: summarise(scores[v]) for v in variants},
              "baselines": {b: summarise(s) for b, s in base.items()},
              "seconds": round(time.time() - t0)}
    write_json(out / "results.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
