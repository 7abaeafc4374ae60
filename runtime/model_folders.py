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

import os
from pathlib import Path
from typing import Literal

from uopsl.runtime.errors import ConfigError, command_word

FolderKind = Literal["bundle", "checkpoint"]

#: The files ``uopsl export`` and the training stages (``uopsl.train.checkpoint.save_model``) write.
BUNDLE_MANIFEST = "manifest.json"
CHECKPOINT_FILES = ("checkpoint.json", "model.safetensors")
# Keys every uopsl manifest has had; an unrelated manifest.json (a web app's) has not both.
_MANIFEST_KEYS = (b'"format_version"', b'"files"')
_MANIFEST_HEAD_BYTES = 1 << 20


def folder_kind(folder: str | os.PathLike[str]) -> FolderKind | None:
    """``"bundle"`` or ``"checkpoint"`` when ``folder`` is one (by the files in it), else None."""
    root = Path(folder)
    if all((root / name).is_file() for name in CHECKPOINT_FILES):
        return "checkpoint"
    manifest = root / BUNDLE_MANIFEST
    try:
        with open(manifest, "rb") as fh:
            head = fh.read(_MANIFEST_HEAD_BYTES)
    except OSError:
        return None
    return "bundle" if all(key in head for key in _MANIFEST_KEYS) else None


def enclosing_model_folder(path: str | os.PathLike[str]) -> tuple[FolderKind, Path] | None:
    """The bundle or checkpoint folder that ``path`` is, or is inside (symbolic links resolved), or None.

    ``path`` need not exist yet: its nearest existing folder is where the walk up starts.
    """
    here = Path(os.path.realpath(os.fspath(path)))
    for folder in (here, *here.parents):
        if folder.is_dir():
            kind = folder_kind(folder)
            if kind is not None:
                return kind, folder
    return None


def check_output_outside_model_folders(out: str | os.PathLike[str], option: str = "--out") -> None:
    """Raise :class:`ConfigError` when ``out`` (a folder or file to write) is or is inside a bundle or a
    training checkpoint folder; ``option`` names the setting in the message."""
    found = enclosing_model_folder(out)
    if found is None:
        return
    kind, folder = found
    where = "is" if Path(os.path.realpath(os.fspath(out))) == folder else "is inside"
    if kind == "bundle":
        why = ("a bundle folder holds the model files alone: devices copy and verify it whole (results in it "
               "would travel with the model), and `uopsl export --force` replaces it")
    else:
        why = ("a checkpoint folder holds a model that is copied and shared whole: results in it would travel "
               "with the model")
    raise ConfigError(f"{option} {out} {where} the {kind} folder {folder}; {why}. Choose a folder outside it, "
                      f"e.g. {option} {command_word(folder.parent / (folder.name + '-results'))}")
