"""FP32/INT8 parity matrix of issue 4 ("Done when"): two models x two image sets x seven ONNX files.

Reproduce (2 shared CPU cores: about 40 min from scratch, most of it ResNet-50 features
and the auto-exclude sensitivity passes; every step is cached under --out, so a rerun
resumes, and a finished rerun only re-reads the caches, ~10 s):

    python benchmarks/parity_matrix.py --synthetic /tmp/runs/synthetic --tvhl /work/shared/data/tvhl --out /tmp/runs/matrix --seed 0

Inputs (read only, never modified):

* ``SYNTH/uopsl/finetune``: the UOPSL EfficientNet-Lite0 checkpoint written by
  ``benchmarks/exp_synthetic.py`` (ImageNet init, frozen encoder, 256 px). It
  stores no operating thresholds, so a COPY gets them from ``SYNTH/data/val``
  (:func:`uopsl.train.evaluate.choose_thresholds`: sensitivity 0.9 for the
  referable classes, i.e. all but ``normal``; Youden's J for ``normal``) and is saved with
  :func:`uopsl.train.checkpoint.save_model` to ``OUT/efficientnet_lite0/checkpoint``.
* ``SYNTH/data/{train,val,test}``: the synthetic pools of that experiment.
* ``TVHL``: the real fundus photographs (``../shared/data/tvhl``).

Models:

* ``efficientnet_lite0``: the checkpoint above.
* ``--checkpoint NAME=PATH`` (repeatable): any other UOPSL checkpoint trained on
  the same synthetic pools (e.g. an encoder fine-tuned end to end with
  ``uopsl finetune --from``), prepared the same way under ``OUT/NAME``.
* ``resnet50``: a full UOPSL model with a torchvision ResNet-50 encoder at
  256 px, RANDOM init (no offline ImageNet weights ship for ResNet-50), frozen
  after its BatchNorm statistics are re-estimated on --bn-images train images per
  modality (see :func:`recalibrate_batchnorm`); only its head is trained
  (``exp_synthetic``'s recipe: stage 1 on the synthetic train pool's fundus + OCT
  features, stage 2 on its fundus features, model selection by validation macro
  AUC, --epochs per stage); thresholds as above. On random features it stays
  near chance (validation macro AUC ~0.56) and its probabilities sit in a band
  ~0.02 wide around the thresholds, so its INT8 flip and AUC figures measure that
  crowding more than the quantizer (the script reports the band); its numerical
  figures (max |prob diff|) are the meaningful ones.

Per model:

1. :func:`uopsl.train.workflow.run_export`: checkpoint -> bundle (FP32 ``model.onnx``).
2. calibration set: --n-calib synthetic TRAIN fundus images drawn with seed --seed;
   one :func:`collect_statistics` pass -> minmax, entropy and percentile tables.
3. :func:`quantize_model`, CPU u8 variant, per method, without and with
   ``auto_exclude=--auto-exclude`` (sensitivity pass on --sensitivity-images
   images): ``model.int8.<method>.onnx`` and ``model.int8.<method>.ax<N>.onnx``,
   each registered in the bundle (``int8-qdq-u8``).
4. :func:`validate_bundle` (``ort-cpu`` only, --threads threads, batch
   --batch-size, n_boot --n-boot, seed --seed) against the PyTorch reference
   (:class:`TorchReference`, CPU) on (a) the first --n-eval fundus images of
   ``SYNTH/data/test``, truth = their labels; (b) --n-eval TVHL fundus
   photographs drawn with seed --seed from the whole set: their labels are not
   in the model's class space, so the reference's own decisions are the truth
   (its AUC is 1 by construction; a candidate's AUC drop is then 1 - its AUC
   against the reference's decisions).

Figures per model x set x file, in ``OUT/matrix.json`` and a markdown table on
stdout: max |prob diff|, top-1 agreement, largest per-class AUC drop and
referral decisions flipped at the manifest's operating thresholds, each vs the
PyTorch reference (what ``uopsl validate`` reports) and, for the INT8 files,
vs the ORT FP32 file (the issue's wording; computed with the same metric
functions from the validation's output cache). Gates of issue 4: FP32 max
|prob diff| <= 1e-4 vs PyTorch; INT8 vs FP32: top-1 >= 99 %, AUC drop <= 0.01,
screening decisions flipped <= 1 %, counting both the referral and each
referable class's call (since session 9; before, only the referral).
``validate``'s own verdict (same limits plus its sensitivity-drop gate, 0.01)
is listed too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uopsl.calibration.dataset import CalibrationSet, build_calibration_set
from uopsl.calibration.ranges import DEFAULT_PERCENTILE, collect_statistics
from uopsl.calibration.table import METHODS, CalibrationTable, load_if_current
from uopsl.export.bundle_writer import add_file
from uopsl.export.parity_metrics import (
    ParityGates,
    clinical,
    jsonable,
    numerical,
    truth_from_labels,
    truth_from_reference,
)
from uopsl.export.quantize import QuantizeConfig, quantize_model
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import Manifest, read_manifest, verify
from uopsl.runtime.errors import ParityError, UopslError
from uopsl.runtime.fsio import sha256_bytes, sha256_file, write_json, write_text
from uopsl.runtime.metrics import per_class_auc
from uopsl.runtime.preprocess import preprocess_file
from uopsl.train import data
from uopsl.train.checkpoint import load_model, read_meta, save_model
from uopsl.train.evaluate import choose_thresholds
from uopsl.train.loops import TrainConfig, predict
from uopsl.train.reference import TorchReference
from uopsl.train.stages import FeatureDataset, finetune, pretrain
from uopsl.train.synthetic import SEEN_CLASSES
from uopsl.train.torchdata import OCT_INPUT, ImageDataset, ImageModality, Item
from uopsl.train.workflow import is_done, new_model, run_export

log = logging.getLogger("parity_matrix")

CLASSES = ("normal",) + SEEN_CLASSES
TARGET_SENSITIVITY = 0.9
FP32_MAX_PROB_DIFF = 1e-4
INT8_MIN_TOP1, INT8_MAX_AUC_DROP, INT8_MAX_FLIP_RATE = 0.99, 0.01, 0.01
VALIDATE_GATES = ParityGates(max_flip_rate=INT8_MAX_FLIP_RATE, max_class_flip_rate=INT8_MAX_FLIP_RATE,
                             max_auc_drop=INT8_MAX_AUC_DROP,
                             min_top1_agreement=INT8_MIN_TOP1, max_sensitivity_drop=0.01)


# -- small helpers ---------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def checkpoint_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "checkpoint.json"):
        h.update(sha256_file(folder / name).encode())
    return h.hexdigest()


def items(src: data.DatasetSource, modality: ImageModality = "fundus") -> list[Item]:
    """Training items of one modality with multi-hot targets over the model's classes."""
    space = data.LabelSpace(CLASSES)
    return [Item(s.path, space.encode(s.labels, strict=False), s.patient or "") for s in src.samples
            if s.modality == modality]


def macro_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    a = per_class_auc(targets, probs)
    return float(np.nanmean(a)) if np.isfinite(a).any() else 0.0


def threshold_record(names: tuple[str, ...], thresholds: list[float], val_auc: float) -> dict[str, Any]:
    return {"thresholds": dict(zip(names, thresholds)), "from": "synthetic val, choose_thresholds",
            "target_sensitivity": TARGET_SENSITIVITY, "val_macro_auc": val_auc}


# -- models ----------------------------------------------------------------------------------------------
def prepare_checkpoint(src_ckpt: Path, val_dir: Path, out: Path, name: str = "efficientnet_lite0") -> dict[str, Any]:
    """Copy of a trained UOPSL checkpoint with operating thresholds from the validation pool.

    Used for the exp_synthetic Lite0 model and for any ``--checkpoint NAME=PATH``
    (e.g. a model whose encoder was trained end to end).
    """
    ck = out / "checkpoint"
    done = read_json(out / "prepare.json")
    if done and (ck / "checkpoint.json").is_file() and read_meta(ck).thresholds \
            and done.get("source_digest") == checkpoint_digest(src_ckpt):
        return done
    t0 = time.time()
    model, meta = load_model(src_ckpt)
    if tuple(model.config.classes) != CLASSES:
        raise ParityError(f"{src_ckpt}: classes {model.config.classes}, expected {CLASSES}")
    ref = TorchReference.from_model(model, meta.preprocess, device="cpu")
    val_items = items(data.read_synthetic(val_dir, modality="fundus"))
    images = np.stack([preprocess_file(it.path, meta.preprocess).image for it in val_items])
    probs = np.concatenate([ref.infer(images[i:i + 16])["probs"] for i in range(0, len(images), 16)])
    targets = np.stack([it.target for it in val_items])
    th = choose_thresholds(targets, probs, list(meta.referable), TARGET_SENSITIVITY)
    record = threshold_record(CLASSES, th, macro_auc(probs, targets))
    save_model(ck, model, replace(meta, thresholds=tuple(th), metrics={**meta.metrics, "thresholds": record}))
    info = {"model": name, "backbone": meta.model.backbone, "init": meta.model.init, "checkpoint": str(ck), "source_checkpoint": str(src_ckpt),
            "source_digest": checkpoint_digest(src_ckpt),
            "n_val": len(val_items), **record,
            "seconds": round(time.time() - t0, 1)}
    write_json(out / "prepare.json", info)
    return info


def feature_set(encoder: torch.nn.Module, its: list[Item], pre: Any, image_cache: Path, path: Path,
                key: str, modality: ImageModality = "fundus") -> FeatureDataset:
    """Frozen-encoder features, cached as .npz (float16) under a key of the encoder weights and images."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return FeatureDataset(torch.from_numpy(z["features"]), z["targets"])
    t0 = time.time()
    fds = FeatureDataset.compute(encoder, ImageDataset(its, pre, image_cache, modality=modality),
                                 torch.device("cpu"), batch_size=16)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, features=fds.features.numpy(), targets=fds.targets, key=np.array(key))
    os.replace(tmp, path)
    log.info("features %s: %s in %.0f s", path.name, tuple(fds.features.shape), time.time() - t0)
    return fds


def recalibrate_batchnorm(encoder: torch.nn.Module, its: list[Item], pre: Any, image_cache: Path,
                          batch_size: int = 32, modality: ImageModality = "fundus") -> int:
    """Re-estimate every BatchNorm's running mean/variance of a random-init encoder on ``its``.

    torchvision's random init leaves running mean 0 / variance 1, so in eval mode
    BatchNorm does nothing, the activations grow block after block and the
    ResNet-50's pooled features of all images point the same way (cosine > 0.996
    on the synthetic pool): a head cannot learn from them (validation macro AUC 0.50).
    One no-gradient pass in train mode (cumulative average) fixes the statistics,
    as training would; no weight is learned. Returns the number of BatchNorm layers.
    """
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    ds = ImageDataset(its, pre, image_cache, modality=modality)
    encoder.train()
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            encoder(torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))]))
    for m in bns:
        m.momentum = 0.1
    encoder.eval()
    return len(bns)


def state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def prepare_resnet50(synth: Path, out: Path, epochs: int, seed: int, bn_images: int) -> dict[str, Any]:
    """Random-init ResNet-50 UOPSL model; frozen encoder, head trained on the synthetic pool; thresholds from val.

    The encoder's BatchNorm statistics are re-estimated on ``bn_images`` train
    images of each modality first (see :func:`recalibrate_batchnorm`).
    """
    ck = out / "checkpoint"
    done = read_json(out / "prepare.json")
    if done and (ck / "checkpoint.json").is_file() and read_meta(ck).thresholds:
        return done
    t0 = time.time()
    train_src = data.read_synthetic(synth / "data" / "train")
    val_src = data.read_synthetic(synth / "data" / "val", modality="fundus")
    torch.manual_seed(seed)
    model, meta = new_model(CLASSES, backbone="resnet50", init="random", size=256,
                            data_fingerprint=train_src.fingerprint, seed=seed)
    if model.oct is None:
        raise ParityError("the full UOPSL variant should have an OCT branch; new_model() built none")
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    pre = meta.preprocess
    ftr_items, oct_list, val_items = items(train_src), items(train_src, "oct"), items(val_src)
    rng = np.random.default_rng(seed)
    for enc, its, modality in ((model.fundus.encoder, ftr_items, "fundus"), (model.oct.encoder, oct_list, "oct")):
        pick = np.sort(rng.choice(len(its), min(bn_images, len(its)), replace=False))
        recalibrate_batchnorm(enc, [its[i] for i in pick], pre, cache / "images", modality=modality)
    fkey, okey = state_digest(model.fundus.encoder), state_digest(model.oct.encoder)
    ftr = feature_set(model.fundus.encoder, ftr_items, pre, cache / "images", cache / "train_fundus.npz",
                      fkey + train_src.fingerprint)
    foct = feature_set(model.oct.encoder, oct_list, pre, cache / "images", cache / "train_oct.npz",
                       okey + train_src.fingerprint + OCT_INPUT, modality="oct")
    fval = feature_set(model.fundus.encoder, val_items, pre, cache / "images", cache / "val_fundus.npz",
                       fkey + val_src.fingerprint)
    # No site guide: the matrix's documented models were trained before it existed (it is not what is tested here).
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, seed=seed, freeze_encoder=True, augment=False,
                      save_every=0, device="cpu", w_site_guide=0.0)
    if is_done(out / "pretrain", "pretrain"):
        model.load_state_dict(load_model(out / "pretrain")[0].state_dict())
    else:
        torch.manual_seed(seed)
        pretrain(model, ftr, foct, cfg, out / "pretrain", meta)
    if is_done(out / "finetune", "finetune"):
        model, _ = load_model(out / "finetune")
        result: dict[str, Any] = read_meta(out / "finetune").metrics
    else:
        model, result = finetune(model, ftr, fval, cfg, out / "finetune", meta, select=macro_auc)
    probs = predict(model, fval, device=torch.device("cpu"))["probs"]
    th = choose_thresholds(fval.targets, probs, list(meta.referable), TARGET_SENSITIVITY)
    val_auc = macro_auc(probs, fval.targets)
    save_model(ck, model, replace(meta, thresholds=tuple(th), train_config=cfg.to_dict(), metrics={
        "best_epoch": result.get("best_epoch"), "best_val_score": result.get("best_val_score"),
        "thresholds": threshold_record(CLASSES, th, val_auc)}))
    info = {"model": "resnet50", "checkpoint": str(ck), "init": "random (no offline ImageNet weights for resnet50)",
            "encoder": f"frozen; BatchNorm statistics re-estimated on {bn_images} train images per modality",
            "epochs_per_stage": epochs, "seed": seed, "n_train_fundus": len(ftr_items),
            "n_train_oct": len(oct_list), "n_val": len(val_items), "best_epoch": result.get("best_epoch"),
            **threshold_record(CLASSES, th, val_auc), "seconds": round(time.time() - t0, 1)}
    write_json(out / "prepare.json", info)
    return info


# -- bundle: export, calibrate, quantize ---------------------------------------------------------------
def export_bundle(ckpt: Path, bundle: Path) -> dict[str, Any]:
    stamp = bundle.parent / "bundle.stamp.json"
    digest = checkpoint_digest(ckpt)
    old = read_json(stamp)
    if old and old.get("checkpoint_digest") == digest and (bundle / "manifest.json").is_file() \
            and all(c.ok for c in verify(bundle)):
        return old
    t0 = time.time()
    run_export(ckpt, bundle, force=True)
    export = read_json(bundle.parent / f"{bundle.name}.export.json") or {}
    info = {"checkpoint_digest": digest, "op_count": export.get("op_count"), "seconds": round(time.time() - t0, 1)}
    write_json(stamp, info)
    return info


def pixel_probe(paths: list[Path], cfg: Any, n: int = 4) -> str:
    """sha256 of the preprocessed pixels of the first ``n`` images: it changes when the preprocessing CODE does.

    The calibration-set and validation caches are keyed by file identity and the
    preprocessing parameters, not by the preprocessing code, so a code change
    (e.g. the JPEG reduced-decoding rule) would otherwise reuse stale pixels and outputs.
    """
    h = hashlib.sha256()
    for p in paths[:n]:
        try:
            h.update(preprocess_file(p, cfg).image.tobytes())
        except UopslError as exc:
            h.update(type(exc).__name__.encode())
    return h.hexdigest()


def probe_changed(stamp: Path, probe: str) -> bool:
    """True when ``stamp`` (written after the cached work completed) holds another probe, or none."""
    old = read_json(stamp)
    return not old or old.get("pixel_probe") != probe


def calibration_set(train_dir: Path, manifest: Manifest, n: int, seed: int, cache: Path) -> CalibrationSet:
    src = data.read_synthetic(train_dir, modality="fundus")
    stamp, probe = cache.with_suffix(".probe.json"), pixel_probe([s.path for s in src.samples], manifest.preprocess)
    if probe_changed(stamp, probe):
        cache.unlink(missing_ok=True)
    cal = build_calibration_set([s.path for s in src.samples], manifest.preprocess,
                                labels=["+".join(s.labels) or "none" for s in src.samples], max_images=n, seed=seed,
                                cache=cache, show_progress=False)
    write_json(stamp, {"pixel_probe": probe})
    return cal


def calibration_tables(model_path: Path, cal: CalibrationSet, folder: Path) -> tuple[dict[str, CalibrationTable], float]:
    """The three tables from ONE statistics pass (reused while the model hash and set fingerprint match)."""
    sha = sha256_file(model_path)
    paths = {m: folder / f"calibration.{m}.json" for m in METHODS}
    tables = {m: load_if_current(p, model_sha256=sha, set_fingerprint=cal.fingerprint, method=m,
                                 percentile=DEFAULT_PERCENTILE if m == "percentile" else None)
              for m, p in paths.items()}
    if all(t is not None for t in tables.values()):
        return {m: t for m, t in tables.items() if t is not None}, 0.0
    t0 = time.time()
    stats = collect_statistics(model_path, cal, batch_size=16)
    out = {}
    for m, p in paths.items():
        out[m] = stats.table(m)
        out[m].save(p)
    return out, round(time.time() - t0, 1)


def int8_name(method: str, auto_exclude: int) -> str:
    return f"model.int8.{method}" + (f".ax{auto_exclude}" if auto_exclude else "") + ".onnx"


def quantize_all(bundle: Path, tables: dict[str, CalibrationTable], cal: CalibrationSet, auto: int,
                 sensitivity_images: int, folder: Path) -> dict[str, dict[str, Any]]:
    """The 6 CPU u8 INT8 files (3 methods x without/with auto-exclude), each registered in the bundle."""
    fp32_sha = sha256_file(bundle / "model.onnx")
    infos: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        for ax in (0, auto):
            name = int8_name(method, ax)
            record = folder / f"{name}.quantize.json"
            old = read_json(record)
            try:
                entry = read_manifest(bundle).file(name)
                registered = entry.sha256 == sha256_file(bundle / name)
            except (UopslError, OSError):
                registered = False
            # The toolkit's defaults (float head, bias correction on the calibration set) apply.
            cfg = QuantizeConfig(variant="cpu", auto_exclude=ax, sensitivity_images=sensitivity_images)
            table_sha = sha256_bytes(json.dumps(tables[method].to_dict()["ranges"], sort_keys=True).encode())
            # Records from before the table's hash was kept hold for a method whose range algorithm
            # has not changed since (version 1); an entropy file of the old search is remade.
            same_table = old.get("table_sha256") == table_sha if old and "table_sha256" in old \
                else tables[method].algorithm_version == 1
            if old and registered and same_table and old.get("model_sha256") == fp32_sha \
                    and old.get("set_fingerprint") == tables[method].set_fingerprint \
                    and old.get("config") == jsonable(asdict(cfg)):
                infos[name] = old
                continue
            t0 = time.time()
            res = quantize_model(bundle / "model.onnx", tables[method], bundle / name, cfg,
                                 calib_set=cal)
            add_file(bundle, None, name, "onnx", res.precision, info=res.manifest_info())
            d = res.to_dict()
            d["sensitivities_top"] = d.pop("sensitivities")[:8]
            d["seconds"] = round(time.time() - t0, 1)
            d["config"] = jsonable(asdict(cfg))
            d["table_sha256"] = table_sha
            write_json(record, d)
            infos[name] = d
            log.info("%s: %d QuantizeLinear, kept float %s (%.0f s)", name, res.quantize_nodes,
                     list(res.auto_excluded), d["seconds"])
    return infos


# -- evaluation sets -------------------------------------------------------------------------------------
def synthetic_records(test_dir: Path, n: int) -> tuple[list[ImageRecord], tuple[str, ...]]:
    src = data.read_synthetic(test_dir, modality="fundus")
    recs = [ImageRecord(str(Path(s.path).relative_to(src.root)), Path(s.path), tuple(s.labels))
            for s in src.samples[:n]]
    return recs, tuple(src.label_space.classes)


def tvhl_records(root: Path, n: int, seed: int) -> list[ImageRecord]:
    src = data.read_tvhl(root, modality="fundus", task="four_class")
    idx = np.sort(np.random.default_rng(seed).choice(len(src), min(n, len(src)), replace=False))
    return [ImageRecord(str(Path(src.samples[i].path).relative_to(root)), Path(src.samples[i].path), None)
            for i in idx]


# -- figures ---------------------------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def figures(num: dict[str, Any], clin: dict[str, Any]) -> dict[str, Any]:
    """The matrix's figures from one ``numerical`` + ``clinical`` pair."""
    drops = [(r["name"], r["auc_reference"] - r["auc_candidate"]) for r in clin["per_class"]
             if _finite(r.get("auc_reference")) and _finite(r.get("auc_candidate"))]
    worst = max(drops, key=lambda d: d[1]) if drops else (None, None)
    return jsonable({
        "max_abs_prob_diff": num["max_abs_prob_diff"], "mean_abs_prob_diff": num["mean_abs_prob_diff"],
        "top1_agreement": clin["top1_agreement"], "auc_drop": worst[1], "auc_drop_class": worst[0],
        "flips": clin["flips"]["n"], "flip_rate": clin["flips"]["rate"],
        "flips_to_refer": clin["flips"]["to_refer"], "flips_to_no_refer": clin["flips"]["to_no_refer"],
        "class_decision_flips": int(sum(r["decision_flips"] for r in clin["per_class"])),
        # The largest share of images whose call for one referable class changed: the report shows
        # these calls ("Found: amd"), so they are screening decisions as much as the referral is.
        "class_flip_rate": (clin.get("class_flips") or {}).get("max_rate"),
        "class_flip_class": (clin.get("class_flips") or {}).get("worst_class"),
    })


def issue_verdict(precision: str, vs_ref: dict[str, Any], vs_fp32: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 4's gates: FP32 vs PyTorch max |dp| <= 1e-4; INT8 vs FP32 top-1, AUC drop, flips."""
    if precision == "fp32":
        checks = [("max_abs_prob_diff", vs_ref["max_abs_prob_diff"], "<=", FP32_MAX_PROB_DIFF)]
    else:
        f = vs_fp32 or vs_ref
        checks = [("top1_agreement", f["top1_agreement"], ">=", INT8_MIN_TOP1),
                  ("auc_drop", f["auc_drop"], "<=", INT8_MAX_AUC_DROP),
                  ("flip_rate", f["flip_rate"], "<=", INT8_MAX_FLIP_RATE),
                  ("class_flip_rate", f.get("class_flip_rate"), "<=", INT8_MAX_FLIP_RATE)]
    failed, undefined = [], []
    for name, value, op, limit in checks:
        if value is None:
            undefined.append(name)
        elif (op == "<=" and value > limit + 1e-12) or (op == ">=" and value < limit - 1e-12):
            failed.append(f"{name} {value:.4g} {'>' if op == '<=' else '<'} {limit:g}")
    return {"passed": not failed, "failed": failed, "undefined": undefined}


def cached_outputs(out_dir: Path, records: list[ImageRecord], batch_size: int, sources: list[str]
                   ) -> tuple[list[str], list[tuple[str, ...] | None], dict[str, dict[str, np.ndarray]]]:
    """``probs`` and ``logits`` of ``sources``, read back from ``validate_bundle``'s output cache.

    The engine keeps every candidate's outputs per batch in ``OUT/.parity-cache/batch_NNNNNN.npz``
    (``<source>__probs``/``__logits`` arrays, a ``meta`` JSON with the indices of the usable
    images) but does not return them; this reads them to compare INT8 with the ORT FP32 file.
    A layout change there raises ParityError instead of giving wrong figures.
    """
    folder = out_dir / ".parity-cache"
    ids: list[str] = []
    labels: list[tuple[str, ...] | None] = []
    parts: dict[str, dict[str, list[np.ndarray]]] = {s: {"probs": [], "logits": []} for s in sources}
    for b in range(-(-len(records) // batch_size)):
        path = folder / f"batch_{b:06d}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                ok = [int(i) for i in json.loads(str(z["meta"]))["ok"]]
                arrays = {(s, o): z[f"{s}__{o}"] for s in sources for o in ("probs", "logits")} if ok else {}
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ParityError(f"{path}: not the validation output cache this script expects ({exc}); "
                              "uopsl.export.validate changed its cache layout: update cached_outputs()") from exc
        chunk = records[b * batch_size:(b + 1) * batch_size]
        ids.extend(chunk[i].id for i in ok)
        labels.extend(chunk[i].labels for i in ok)
        for (s, o), a in arrays.items():
            parts[s][o].append(a)
    return ids, labels, {s: {o: np.concatenate(v) for o, v in d.items()} for s, d in parts.items()}


def vs_fp32_figures(bundle: Path, out_dir: Path, records: list[ImageRecord], space: tuple[str, ...] | None,
                    cfg: ValidateConfig, int8_sources: list[str], fp32_source: str
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """INT8 vs the ORT FP32 file, scored like the validation (labels, or FP32's own decisions, as truth).

    Also returns how the reference's probabilities sit around the operating
    thresholds: when they crowd a threshold, a small INT8 error flips many
    decisions, so the flip figures say more about the model than the quantizer.
    """
    manifest = read_manifest(bundle)
    ids, labels, outs = cached_outputs(out_dir, records, cfg.batch_size, ["ref", fp32_source, *int8_sources])
    base = outs[fp32_source]
    if space is not None:
        truth = truth_from_labels(manifest, [lab or () for lab in labels], space)
    else:
        truth = truth_from_reference(manifest, base["probs"])
    figs = {s: figures(numerical(base, outs[s]), clinical(manifest, truth, base["probs"], outs[s]["probs"], ids,
                                                          n_boot=0, seed=cfg.seed))
            for s in int8_sources}
    ref = outs["ref"]["probs"]
    q = np.percentile(ref, [5, 50, 95], axis=0)
    spread = {
        "per_class": {c.name: {"p5": q[0, k], "p50": q[1, k], "p95": q[2, k], "threshold": c.threshold}
                      for k, c in enumerate(manifest.classes)},
        "widest_p5_p95": float((q[2] - q[0]).max()),
        "share_within_0.01_of_a_threshold": float((np.abs(ref - manifest.thresholds[None, :]) < 0.01).any(1).mean()),
    }
    return figs, jsonable(spread)


# -- one model ------------------------------------------------------------------------------------------
def run_model(name: str, ckpt: Path, mdir: Path, args: argparse.Namespace,
              eval_sets: dict[str, tuple[list[ImageRecord], tuple[str, ...] | None, str]]) -> dict[str, Any]:
    bundle = mdir / "bundle"
    res: dict[str, Any] = {"export": export_bundle(ckpt, bundle)}
    manifest = read_manifest(bundle)
    res["thresholds"] = {c.name: c.threshold for c in manifest.classes}
    cal = calibration_set(args.synthetic / "data" / "train", manifest, args.n_calib, args.seed,
                          mdir / f"calib{args.n_calib}_seed{args.seed}.npz")
    tables, stats_s = calibration_tables(bundle / "model.onnx", cal, mdir)
    res["calibration"] = {**cal.report(), "statistics_seconds": stats_s, "skipped": len(cal.skipped)}
    res["quantize"] = quantize_all(bundle, tables, cal, args.auto_exclude, args.sensitivity_images, mdir)
    manifest = read_manifest(bundle)
    reference = TorchReference.from_checkpoint(ckpt, "cpu")
    vcfg = ValidateConfig(backends=("ort-cpu",), gates=VALIDATE_GATES, batch_size=args.batch_size,
                          n_boot=args.n_boot, seed=args.seed, threads=args.threads, show_progress=True)
    res["datasets"] = {}
    for dname, (records, space, description) in eval_sets.items():
        out_dir = mdir / f"validate_{dname}"
        t0 = time.time()
        stamp, probe = mdir / f"validate_{dname}.probe.json", pixel_probe([r.path for r in records], manifest.preprocess)
        if probe_changed(stamp, probe):
            shutil.rmtree(out_dir / ".parity-cache", ignore_errors=True)  # outputs of other pixels
        rep = validate_bundle(bundle, reference, records, out_dir, vcfg, label_space=space,
                              context={"model": name, "data": description, "seed": args.seed,
                                       "command": " ".join(sys.argv)}).report
        write_json(stamp, {"pixel_probe": probe})
        seconds = round(time.time() - t0, 1)
        fp32 = next(c["name"] for c in rep["candidates"] if c["precision"] == "fp32")
        int8 = [c["name"] for c in rep["candidates"] if c["precision"] != "fp32" and not c.get("error")]
        vs, spread = vs_fp32_figures(bundle, out_dir, records, space, vcfg, int8, fp32)
        rows = []
        for c in rep["candidates"]:
            row: dict[str, Any] = {"candidate": c["file"], "precision": c["precision"]}
            if c.get("error"):
                row.update({"error": c["error"], "issue_verdict": {"passed": False, "failed": [c["error"]]}})
                rows.append(row)
                continue
            info = manifest.file(c["file"]).info
            row.update({"method": info.get("calibration_method"), "auto_excluded": info.get("auto_excluded", []),
                        "vs_reference": figures(c["numerical"], c["clinical"]),
                        "vs_fp32_onnx": vs.get(c["name"]),
                        "validate_passed": c["passed"], "validate_reasons": c["reasons"],
                        "top1_headroom": (c.get("headroom") or {}).get("top1")})
            row["issue_verdict"] = issue_verdict(c["precision"], row["vs_reference"], row["vs_fp32_onnx"])
            rows.append(row)
        res["datasets"][dname] = {"description": description, "truth": rep["data"]["truth"],
                                  "n_used": rep["data"]["n_used"], "n_skipped": rep["data"]["n_skipped"],
                                  "report": str(out_dir / "parity.json"), "seconds": seconds,
                                  "reference_probabilities": spread, "rows": rows}
        log.info("%s / %s: validated in %.0f s", name, dname, seconds)
    return res


# -- output ----------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _headroom(h: dict[str, Any] | None) -> str:
    """The top-1 decision headroom of `uopsl validate` (close calls, the file's error, the precision it lacks)."""
    if not h:
        return "—"
    return (f"{h['close_calls'].get('0.2', 'n/a')} / {_num(h.get('error_rms'), '.3f')} / "
            f"{_num(h.get('precision_needed_db', 0.0), '.1f')}")


def short_node(name: str) -> str:
    """'/trunk/blocks/blocks.0/blocks.0.0/conv_dw/Conv' -> 'blocks.0.0/conv_dw' (the table's 'kept float' column)."""
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[-3:-1]) if len(parts) >= 3 else name


def markdown(matrix: dict[str, Any]) -> str:
    head = ("| model | data (truth) | file | kept float | max \\|Δp\\| vs PyTorch | top-1 | max AUC drop (class) "
            "| flips | INT8 vs ORT FP32: top-1 / AUC drop / flips | issue 4 gates | `validate` verdict "
            "| top-1 headroom: gaps < 0.2 / error RMS / dB needed |")
    lines = [head, "|" + "---|" * 12]
    for mname, m in matrix["models"].items():
        for dname, d in m.get("datasets", {}).items():
            truth = "labels" if d["truth"] == "labels" else "reference decisions"
            for r in d["rows"]:
                if "error" in r:
                    lines.append(f"| {mname} | {dname} | {r['candidate']} | | error: {r['error']} |||||| FAIL | FAIL | |")
                    continue
                f, g = r["vs_reference"], r["vs_fp32_onnx"]
                vs = "—" if g is None else (f"{_pct(g['top1_agreement'])} / {_num(g['auc_drop'], '.4f')} / "
                                            f"{g['flips']} ({_pct(g['flip_rate'])})")
                kept = ", ".join(short_node(n) for n in r["auto_excluded"]) or "—"
                v = r["issue_verdict"]
                verdict = "PASS" if v["passed"] else "FAIL: " + "; ".join(v["failed"])
                auc = "n/a" if f["auc_drop"] is None else f"{f['auc_drop']:.4f} ({f['auc_drop_class']})"
                lines.append(
                    f"| {mname} | {dname} ({d['n_used']}, {truth}) | {r['candidate']} | {kept} "
                    f"| {f['max_abs_prob_diff']:.2e} | {_pct(f['top1_agreement'])} | {auc} "
                    f"| {f['flips']} ({_pct(f['flip_rate'])}) | {vs} | {verdict} "
                    f"| {'PASS' if r['validate_passed'] else 'FAIL'} | {_headroom(r.get('top1_headroom'))} |")
    lines += ["", "| model | data | reference probs: widest p5-p95 band of a class "
                  "| images with a probability within 0.01 of its threshold |", "|---|---|---|---|"]
    for mname, m in matrix["models"].items():
        for dname, d in m.get("datasets", {}).items():
            sp = d["reference_probabilities"]
            lines.append(f"| {mname} | {dname} | {sp['widest_p5_p95']:.3f} "
                         f"| {_pct(sp['share_within_0.01_of_a_threshold'])} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--synthetic", type=Path, default=Path("/tmp/runs/synthetic"),
                    help="exp_synthetic.py output: data/{train,val,test} and uopsl/finetune")
    ap.add_argument("--tvhl", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl")
    ap.add_argument("--out", type=Path, default=Path("/tmp/runs/matrix"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="also run a trained UOPSL checkpoint of the same synthetic experiment under NAME "
                         "(thresholds re-chosen on SYNTH/data/val as for the Lite0 model); repeatable")
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--auto-exclude", type=int, default=2)
    ap.add_argument("--sensitivity-images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5, help="ResNet-50 head: epochs of each stage")
    ap.add_argument("--bn-images", type=int, default=128,
                    help="ResNet-50: train images per modality that re-estimate the random encoder's BatchNorm statistics")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("parity_matrix", "uopsl"):  # not the quantizer's chatty root-logger INFO lines
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    matrix_path = args.out / "matrix.json"
    matrix: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]), "seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "gates": {"fp32_max_abs_prob_diff_vs_pytorch": FP32_MAX_PROB_DIFF, "int8_min_top1": INT8_MIN_TOP1,
                  "int8_max_auc_drop": INT8_MAX_AUC_DROP, "int8_max_flip_rate": INT8_MAX_FLIP_RATE,
                  "validate": VALIDATE_GATES.to_dict()},
        "models": {},
    }
    syn_recs, syn_space = synthetic_records(args.synthetic / "data" / "test", args.n_eval)
    eval_sets = {
        "synthetic": (syn_recs, syn_space, f"first {len(syn_recs)} fundus images of {args.synthetic}/data/test"),
        "tvhl": (tvhl_records(args.tvhl, args.n_eval, args.seed), None,
                 f"{args.n_eval} TVHL fundus photographs drawn with seed {args.seed} from {args.tvhl}/fundus.csv"),
    }
    extra: dict[str, Path] = {}
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name in ("efficientnet_lite0", "resnet50"):
            raise SystemExit(f"--checkpoint: expected NAME=PATH with a new NAME, got {spec!r}")
        if not (Path(path) / "checkpoint.json").is_file():
            raise SystemExit(f"--checkpoint {spec}: {path} is not a checkpoint folder (no checkpoint.json)")
        extra[name] = Path(path)
    names = [m.strip() for m in args.models.split(",") if m.strip()] + list(extra)
    for name in names:
        mdir = args.out / name
        t0 = time.time()
        if name in extra:
            prep = prepare_checkpoint(extra[name], args.synthetic / "data" / "val", mdir, name)
        elif name == "efficientnet_lite0":
            prep = prepare_checkpoint(args.synthetic / "uopsl" / "finetune", args.synthetic / "data" / "val", mdir)
        elif name == "resnet50":
            prep = prepare_resnet50(args.synthetic, mdir, args.epochs, args.seed, args.bn_images)
        else:
            raise SystemExit(f"--models: unknown model {name!r}; choose efficientnet_lite0 and/or resnet50")
        log.info("%s: checkpoint ready (%s)", name, prep["checkpoint"])
        matrix["models"][name] = {"prepare": prep, **run_model(name, Path(prep["checkpoint"]), mdir, args, eval_sets)}
        matrix["models"][name]["seconds"] = round(time.time() - t0, 1)
        write_json(matrix_path, jsonable(matrix))
    matrix["seconds"] = round(time.time() - t_start, 1)
    write_json(matrix_path, jsonable(matrix))
    table = markdown(matrix)
    write_text(args.out / "matrix.md", table + "\n")
    print(table)
    print(f"\n{matrix_path}; machine: {matrix['machine']['cpu']}, {matrix['machine']['cores']} cores; "
          f"{matrix['seconds']:.0f} s")


if __name__ == "__main__":
    main()
