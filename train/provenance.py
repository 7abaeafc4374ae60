"""What a training-side report records to tie its figures to a model, data and machine (``eval.json``).

The same facts ``parity.json`` records (:mod:`uopsl.export.validate`): when
and with which code the report was made (``created``, ``toolkit_version``,
``toolkit_source``: git commit and whether the checkout had changed), where
(``machine``: Python, platform, CPU, the versions of the libraries that
computed the figures, the torch device), and the content of every image
evaluated (each file's sha256 and one digest over them and their labels,
computed as ``uopsl validate``'s ``data.images_sha256``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from uopsl.export.validate import images_digest
from uopsl.runtime.errors import UopslError
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.version import __version__, source_revision

#: How eval.json's ``data.images_sha256`` is computed (so a signer can recompute it; as parity.json's).
EVAL_IMAGES_DIGEST_METHOD = (
    "sha256 of the UTF-8 text holding one line per evaluated image, the lines sorted (so the order the data "
    "listed them in does not enter it): the JSON array [sha256 of the file's bytes, its labels among the model's "
    "classes, sorted] as json.dumps(line, separators=(',', ':'), ensure_ascii=False) writes it, ended by a "
    "newline (uopsl validate's data.images_sha256 method); file names and times do not enter it")

#: The libraries whose versions the figures depend on (those installed are recorded).
_LIBRARIES = ("torch", "torchvision", "timm", "numpy", "opencv-python-headless", "opencv-python", "safetensors")


def created_now() -> str:
    """The current UTC time, ISO 8601 to the second (as parity.json's ``created``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def toolkit_facts() -> dict[str, Any]:
    """``toolkit_version`` and ``toolkit_source`` (git commit and dirty flag; ``{}`` for an installed wheel)."""
    return {"toolkit_version": __version__, "toolkit_source": source_revision()}


def machine_facts(device: str | None = None) -> dict[str, Any]:
    """Where the figures were computed: what ``uopsl validate`` records (Python, platform, CPU and its INT8
    class, the runtimes' versions), the training libraries' versions, and the torch ``device`` (with the GPU's
    name for a CUDA device)."""
    from uopsl.export.validate import machine_facts as runtime_machine

    info = runtime_machine()
    versions: dict[str, str] = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    info["versions"] = versions
    if device is not None:
        info["device"] = str(device)
        if str(device).startswith("cuda"):
            import torch

            try:
                info["gpu"] = torch.cuda.get_device_name(torch.device(str(device)))
            except (RuntimeError, AssertionError, ValueError):  # no such GPU here: the device name alone
                pass
    return info


def image_sha256s(paths: Sequence[str | Path]) -> list[str | None]:
    """sha256 of each file's bytes (None for one that cannot be read now)."""
    out: list[str | None] = []
    for p in paths:
        try:
            out.append(sha256_file(p))
        except (OSError, UopslError):
            out.append(None)
    return out


def data_facts(paths: Sequence[str | Path], labels: Sequence[tuple[str, ...]],
               known: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """``n_images``, per-image ``image_sha256`` (in ``paths`` order) and their content digest ``images_sha256``
    (:data:`EVAL_IMAGES_DIGEST_METHOD`). ``known``: sha256s already read, by path (the rest are read here)."""
    have = known or {}
    missing = [p for p in paths if have.get(str(p)) is None]
    read = dict(zip(map(str, missing), image_sha256s(missing)))
    shas = [have.get(str(p)) or read.get(str(p)) for p in paths]
    return {"n_images": len(shas), "images_sha256": images_digest(shas, list(labels)),
            "images_sha256_method": EVAL_IMAGES_DIGEST_METHOD, "image_sha256": shas}
