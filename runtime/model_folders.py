"""Telling a deployment bundle and a training checkpoint apart by their files, and keeping outputs out of both.

A bundle folder holds the model files alone: its manifest lists every file, devices copy and verify it
whole, and ``uopsl export --force`` replaces it, deleting whatever else is in it. A checkpoint folder is
what a training stage wrote; it too is copied and shared as a model. Results written into either
(``uopsl-screen run --out BUNDLE`` was accepted) would travel with the model to wherever it is copied,
patients' results among them, and ``verify`` would list them as files the manifest does not know. So every
command that writes results refuses such an output before it starts
(:func:`check_output_outside_model_folders`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from uopsl.runtime.errors import ConfigError, command_word

FolderKind = Literal["bundle", "checkpoint"]

#: The files ``uopsl export`` and the training stages (``uopsl.train.checkpoint.save_model``) write.
BUNDLE_MANIFEST = "manifest.json"
CHECKPOINT_META, CHECKPOINT_WEIGHTS = "checkpoint.json", "model.safetensors"
# A manifest or checkpoint record larger than this is not read (a folder of someone else's data may hold a
# huge file of the same name); uopsl's own are kilobytes.
_MAX_RECORD_BYTES = 16 << 20


def _json_object(path: Path) -> dict[str, object] | None:
    """The JSON object in ``path``, or None when it is missing, too large, not JSON or not an object."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    if len(data) > _MAX_RECORD_BYTES:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _exists(path: Path, *, dir_: bool) -> bool:
    """Whether ``path`` is a folder (``dir_``) or a file; False where it cannot be looked at (a folder of
    another account's that this one may not enter), rather than an error."""
    try:
        return path.is_dir() if dir_ else path.is_file()
    except OSError:
        return False


def folder_kind(folder: str | os.PathLike[str]) -> FolderKind | None:
    """``"bundle"`` or ``"checkpoint"`` when ``folder`` is one, else None.

    Judged by the record uopsl writes there, parsed: a ``manifest.json`` with uopsl's top-level fields (an
    integer ``format_version``, a ``files`` list, ``preprocess`` and ``classes``), or a ``checkpoint.json``
    with ``model`` and ``stage`` beside ``model.safetensors``. Another program's ``manifest.json`` (a web
    app's) or a file of the same name with other content is no model folder.
    """
    root = Path(folder)
    meta = _json_object(root / CHECKPOINT_META) if _exists(root / CHECKPOINT_WEIGHTS, dir_=False) else None
    if meta is not None and isinstance(meta.get("model"), dict) and isinstance(meta.get("stage"), str):
        return "checkpoint"
    m = _json_object(root / BUNDLE_MANIFEST)
    if m is None:
        return None
    version = m.get("format_version")
    if (isinstance(version, int) and not isinstance(version, bool) and isinstance(m.get("files"), list)
            and isinstance(m.get("preprocess"), dict) and isinstance(m.get("classes"), list)):
        return "bundle"
    return None


def enclosing_model_folders(path: str | os.PathLike[str]) -> list[tuple[FolderKind, Path]]:
    """The bundle and checkpoint folders that ``path`` is or lies inside (symbolic links resolved),
    innermost first; empty when none. ``path`` need not exist yet."""
    here = Path(os.path.realpath(os.fspath(path)))
    return [(kind, folder) for folder in (here, *here.parents)
            if _exists(folder, dir_=True) and (kind := folder_kind(folder)) is not None]


def check_output_outside_model_folders(out: str | os.PathLike[str], option: str = "--out", *,
                                       is_file: bool = False) -> None:
    """Raise :class:`ConfigError` when ``out`` (a folder, or with ``is_file`` a file, to write) is or lies
    inside a bundle or a training checkpoint folder; ``option`` names the setting in the message.

    The message names the innermost such folder and suggests a place beside the outermost one (a bundle
    exported inside a checkpoint folder: a place beside the bundle would still be inside the checkpoint).
    """
    found = enclosing_model_folders(out)
    if not found:
        return
    kind, folder = found[0]
    outermost = found[-1][1]
    where = "is" if Path(os.path.realpath(os.fspath(out))) == folder else "is inside"
    if kind == "bundle":
        why = ("a bundle folder holds the model files alone: devices copy and verify it whole (results in it "
               "would travel with the model), and `uopsl export --force` replaces it")
    else:
        why = ("a checkpoint folder holds a model that is copied and shared whole: results in it would travel "
               "with the model")
    if is_file:
        suggestion = outermost.parent / Path(out).name
        what = "a file"
    else:
        suggestion = outermost.parent / f"{outermost.name}-results"
        what = "a folder"
    raise ConfigError(f"{option} {out} {where} the {kind} folder {folder}; {why}. Choose {what} outside it, "
                      f"e.g. {option} {command_word(suggestion)}")
