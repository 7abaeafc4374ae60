"""Checkpoints: safetensors for tensors, JSON for everything else; no pickle anywhere.

A checkpoint is a folder::

    model.safetensors    model weights (what evaluate/export/validate load)
    checkpoint.json      model config, class bank, preprocessing, training config,
                         operating thresholds, metrics, data fingerprint, versions
    state.safetensors    (while training) model + optimizer tensors + RNG state
    state.json           (while training) epoch, step, optimizer hyper-parameters

Loading never unpickles: a checkpoint from an untrusted source cannot run code.
Everything is written atomically, so a kill at any moment leaves either the
previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from uopsl.runtime.bundle import CHECKPOINT_DIGEST_NOTE, TEACHER_DIGEST_NOTE, probability
from uopsl.runtime.model_folders import folder_kind
from uopsl.runtime.errors import BundleError, CheckpointError
from uopsl.runtime.fsio import atomic_open, sha256_file, write_json
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.version import __version__
from uopsl.train.model import ModelConfig, UopslModel
from uopsl.train.text import DEFAULT_MODEL as DEFAULT_TEXT_MODEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (checkpoint.json)."""

    model: ModelConfig
    preprocess: PreprocessConfig
    phrases: tuple[tuple[str, ...], ...]
    stage: str = "finetune"
    thresholds: tuple[float, ...] = ()
    referable: tuple[bool, ...] = ()
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    toolkit_version: str = __version__
    # The sentence encoder that made the class prototypes: new class descriptions (re-targeted
    # fine-tunes, zero-shot, export --classes) must be encoded by the same one, or their prototypes
    # land in another embedding space (of the same width, so nothing else would notice).
    text_model: str = DEFAULT_TEXT_MODEL
    # What each stage trained on (uopsl.train.workflow.data_record), oldest first: the exporter
    # describes the model's training data from it, and refuses to state clinical use for a model
    # that only ever saw synthetic photographs. Empty for checkpoints written before the field.
    training_data: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(), "preprocess": self.preprocess.to_dict(),
            "phrases": [list(p) for p in self.phrases], "stage": self.stage,
            "thresholds": list(self.thresholds), "referable": list(self.referable),
            "train_config": self.train_config, "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint, "toolkit_version": self.toolkit_version,
            "text_model": self.text_model, "training_data": [dict(r) for r in self.training_data],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        # Operating points are checked as a bundle's are (a NaN threshold would make its class never
        # positive in the exported bundle); ValueError reaches read_meta's CheckpointError.
        n = len(d["phrases"])
        thresholds, referable = d.get("thresholds", ()), d.get("referable", ())
        for what, values in (("thresholds", thresholds), ("referable", referable)):
            if not isinstance(values, (list, tuple)) or len(values) not in (0, n):
                raise ValueError(f"{what} must list one value per class ({n}), got {values!r}")
        try:
            thresholds = tuple(probability(t, f"thresholds[{i}]") for i, t in enumerate(thresholds))
        except BundleError as exc:
            raise ValueError(str(exc)) from exc
        if not all(isinstance(r, bool) for r in referable):
            raise ValueError(f"referable must hold true or false per class, got {referable!r}")
        records = d.get("training_data", [])
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"training_data must be a list of objects, got {records!r}")
        return cls(
            model=ModelConfig.from_dict(d["model"]), preprocess=PreprocessConfig.from_dict(d["preprocess"]),
            phrases=tuple(tuple(p) for p in d["phrases"]), stage=d.get("stage", "finetune"),
            thresholds=thresholds, referable=tuple(referable),
            train_config=d.get("train_config", {}), metrics=d.get("metrics", {}),
            data_fingerprint=d.get("data_fingerprint", ""), toolkit_version=d.get("toolkit_version", "?"),
            # Checkpoints written before the field: the packaged default (what every command used unless told).
            text_model=d.get("text_model", DEFAULT_TEXT_MODEL),
            training_data=tuple(dict(r) for r in records),
        )


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as one safetensors file, atomically (a kill leaves the old file or the new one)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a damaged one raises :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc}); restore or retrain it") from exc


def save_model(folder: Path, model: UopslModel, meta: CheckpointMeta) -> None:
    """Write model.safetensors + checkpoint.json (the deliverable of a training stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "checkpoint.json", meta.to_dict())


def _interrupted_run(folder: Path) -> str | None:
    """Where the interrupted run in ``folder`` stopped, in words ("finetune, epoch 1 after step 5"), or None
    when the folder holds no resumable state (``state.json``, written by :mod:`uopsl.train.loops`)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    from uopsl.train.loops import checkpoint_words  # the words a resume uses for the same place

    stage = state.get("stage")
    stages = [stage] if isinstance(stage, str) else sorted(p.name[: -len(".config.json")]
                                                           for p in folder.glob("*.config.json"))
    epoch, step = state.get("epoch"), state.get("step")
    where = (f"at {checkpoint_words(epoch, step)}" if isinstance(epoch, int) and isinstance(step, int) else
             "at a place not recorded")
    return f"{', '.join(stages) or 'a stage'} stopped {where}"


def read_meta(folder: str | Path) -> CheckpointMeta:
    p = Path(folder) / "checkpoint.json"
    if not p.is_file():
        if folder_kind(folder) == "bundle":
            raise CheckpointError(f"{folder} is a deployment bundle (manifest.json), not a training checkpoint: "
                                  "give the checkpoint folder it was exported from (the one holding "
                                  "checkpoint.json and model.safetensors)")
        interrupted = _interrupted_run(Path(folder))
        if interrupted:
            raise CheckpointError(f"{folder} holds an interrupted training run ({interrupted}), not a finished "
                                  "checkpoint: run the command that started it again to finish it (a finished run "
                                  "writes checkpoint.json)")
        raise CheckpointError(f"{folder}: no checkpoint.json; expected a checkpoint folder written by uopsl")
    try:
        return CheckpointMeta.from_dict(json.loads(p.read_text()))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p}: malformed checkpoint metadata ({exc})") from exc


def load_model(folder: str | Path, init_backbone: bool = False) -> tuple[UopslModel, CheckpointMeta]:
    """Rebuild the model from checkpoint.json and load model.safetensors (strict)."""
    folder = Path(folder)
    meta = read_meta(folder)
    cfg = meta.model if init_backbone else replace(meta.model, init="random")
    tensors = load_tensors(folder / "model.safetensors")
    if "class_text" not in tensors:
        raise CheckpointError(f"{folder}/model.safetensors has no class_text; not a uopsl model")
    model = UopslModel(cfg, tensors["class_text"].numpy())
    if model.oct is not None and not any(k.startswith("oct.") for k in tensors):
        model.oct = None  # fine-tuned checkpoints drop the OCT branch
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{folder}: weights do not fit the configured model: {str(exc)[:400]}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not fit the configured model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model, meta


#: ``uopsl qat`` keeps its source checkpoint's digest under this key of ``train_config``; export
#: records it as this note, the second checkpoint ``validate`` accepts (QAT is checked against the original).
TEACHER_DIGEST_KEY = "teacher_weights_sha256"


def checkpoint_digest(folder: str | Path) -> str:
    """sha256 of a checkpoint's weights file: which model a bundle was exported from."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors; expected a checkpoint folder written by uopsl")
    return sha256_file(path)


def bundle_source_mismatch(folder: str | Path, notes: dict[str, Any]) -> str | None:
    """Why checkpoint ``folder`` is not the one a bundle (its manifest ``notes``) was exported from, or None.

    The exported checkpoint matches, and so does the original of a ``uopsl
    qat`` checkpoint (its INT8 file is validated against the original). None
    too when the bundle does not say (exported before the digest was
    recorded): the caller should warn then.
    """
    recorded = notes.get(CHECKPOINT_DIGEST_NOTE)
    if not recorded:
        return None
    got = checkpoint_digest(folder)
    if got in (recorded, notes.get(TEACHER_DIGEST_NOTE)):  # the exported model, or the original a QAT one came from
        return None
    return (f"{folder} is not the checkpoint this bundle was exported from: its weights' sha256 is {got[:12]}..., "
            f"the bundle records {str(recorded)[:12]}... (exported from {notes.get('checkpoint', 'an unnamed folder')})")


def init_from(model: UopslModel, folder: str | Path, skip_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Copy matching tensors of another checkpoint into ``model`` (stage 1 -> stage 2); returns skipped keys."""
    src = load_tensors(Path(folder) / "model.safetensors")
    own = model.state_dict()
    use = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and not k.startswith(skip_prefixes)}
    skipped = sorted(set(src) - set(use))
    model.load_state_dict(use, strict=False)
    log.info("initialised %d tensors from %s (%d skipped: %s)", len(use), folder, len(skipped), skipped[:6])
    return skipped


# -- resumable training state -------------------------------------------------
#: The key, in a stage's checkpoint metrics, that marks it as written before its run was complete: the stage's
#: weights are saved and its training state cleared, then the workflow adds what makes the run whole (the run's
#: identity; for fine-tuning, the thresholds chosen on the validation images). A stop in between left a
#: checkpoint a rerun took as finished (a fine-tuned model without thresholds: 0.5 everywhere at export).
UNFINISHED_KEY = "unfinished"
#: Beside :data:`UNFINISHED_KEY`: the resume key of the run that trained it, so a rerun of the same command
#: completes it without training again, and another command is refused instead of training over it.
UNFINISHED_RUN_KEY = "unfinished_run_key"

#: Where in ``state.safetensors`` the state's info (position, tag, optimiser groups) is kept, so the tensors and
#: the position they belong to are written in one atomic rename (``state.json`` is a copy for a quick look).
_STATE_INFO = "uopsl_state_info"


def save_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for name, val in st.items():
            tensors[f"opt.{idx}.{name}"] = val if torch.is_tensor(val) else torch.tensor(val)
    tensors["rng.torch"] = torch.get_rng_state()
    full = {**info, "param_groups": sd["param_groups"]}
    # Two files renamed one after the other: a kill between them paired new tensors with the old position, and
    # the resumed run trained those steps again without a word (a review). The info inside the tensor file is
    # the one load_state trusts.
    save_tensors(folder / "state.safetensors", tensors, {_STATE_INFO: json.dumps(full)})
    write_json(folder / "state.json", full)


def peek_state(folder: Path) -> dict[str, Any] | None:
    """The info of the training state in ``folder`` (its tag, stage, position), without loading tensors; or None."""
    sj, st = folder / "state.json", folder / "state.safetensors"
    if not (sj.is_file() and st.is_file()):
        return None
    try:
        info = json.loads(sj.read_text())
    except (OSError, ValueError) as exc:
        # state.json is a copy for a quick look: the info load_state trusts is inside state.safetensors. A torn
        # copy sent the user to delete a good state (review, session 31); it is written again from the tensors'.
        try:
            inner = _state_info(st)
        except (CheckpointError, ValueError):
            inner = None
        if inner is None:
            raise CheckpointError(f"{sj}: unreadable training state ({exc}); delete {sj.name} and state.safetensors "
                                  "in that folder to train this stage from its start") from exc
        log.warning("%s: unreadable (%s); read from the copy inside state.safetensors", sj, exc)
        with contextlib.suppress(OSError):  # a read-only folder: the resume reads the inner copy anyway
            write_json(sj, inner)
        info = inner
    return info if isinstance(info, dict) else None


def _state_info(path: Path) -> dict[str, Any] | None:
    """The info saved inside ``state.safetensors`` (None in states written before it was kept there)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(_STATE_INFO)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc}); delete it and state.json in that "
                              "folder to train this stage from its start") from exc
    if raw is None:
        return None
    info = json.loads(raw)
    return info if isinstance(info, dict) else None


def load_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore a training state if the folder has one; returns its info or None."""
    sj, st = folder / "state.json", folder / "state.safetensors"
    if not (sj.is_file() and st.is_file()):
        return None
    info = _state_info(st) or peek_state(folder)
    if info is None:
        return None
    tensors = load_tensors(st)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as exc:  # another architecture: missing/unexpected keys or other shapes
        raise CheckpointError(f"{st}: the interrupted run's weights do not fit this model "
                              f"({str(exc).splitlines()[0]}); rerun in a new --out folder") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return info


def clear_state(folder: Path) -> None:
    for name in ("state.json", "state.safetensors"):
        (folder / name).unlink(missing_ok=True)
