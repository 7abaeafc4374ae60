"""The PyTorch reference for parity validation: a checkpoint's deployed graph, run in torch.

:class:`TorchReference` wraps :class:`uopsl.train.model.DeployModel` (the same
folded graph that is exported to ONNX) behind the runtime backend's calling
convention: ``infer(uint8 NHWC batch) -> {"probs", "logits", "site_maps"}``, so
:func:`uopsl.export.validate.validate_bundle` treats it like any backend without
importing training code. It carries the checkpoint's preprocessing (the
pixels the model was trained on) and a fingerprint of the weights (keys the
validation's output cache). It declares ``reference_kind = "pytorch"``: its
verdicts are the PyTorch-referenced ones.

On CUDA, TF32 matmuls and convolutions are switched off while it runs: the
reference must be FP32 arithmetic, or FP32 parity could not be judged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uopsl.runtime.bundle import REFERENCE_PYTORCH, Manifest
from uopsl.runtime.errors import BackendError, CheckpointError, ConfigError
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train.checkpoint import CheckpointMeta, load_model
from uopsl.train.model import DeployModel, UopslModel

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but PyTorch sees no CUDA GPU here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    return dev


@contextlib.contextmanager
def _strict_fp32(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _same_bank(class_bank: tuple[tuple[str, ...], np.ndarray], model: UopslModel) -> bool:
    """Whether ``class_bank`` (names, embeddings) is the one ``model`` was trained with, name for name and bit for
    bit: a bundle re-exported with the same names but other phrases for a class scores other prototypes. A bank
    of the model's names whose embeddings have another shape cannot have come from this model (no export writes
    one): it is left alone, with a warning, and the checkpoint's own bank is used."""
    names, text = class_bank
    own = model.class_text.detach().cpu().numpy()
    text = np.asarray(text)
    if tuple(names) != tuple(model.config.classes):
        return False
    if text.shape != own.shape:
        log.warning("the bundle's class bank is %s, the checkpoint's %s: not one this checkpoint's export writes; "
                    "the reference scores the checkpoint's own", text.shape, own.shape)
        return True
    return bool(np.array_equal(text.astype(np.float32), own))


class TorchReference:
    """A module with the deployed contract (uint8 NHWC in; probs, logits, site_maps out), run in PyTorch."""

    name = "pytorch"
    #: Declared, never defaulted: only a reference that says it is the PyTorch checkpoint has its verdicts recorded
    #: as PyTorch-referenced, the ones that start a chain of trust (``uopsl validate --onnx-reference``) and that a
    #: device's verdict never replaces (:mod:`uopsl.export.validate`).
    reference_kind = REFERENCE_PYTORCH

    def __init__(self, module: torch.nn.Module, preprocess: PreprocessConfig, *, device: str = "cpu",
                 fingerprint: str = "", source: str = "", meta: CheckpointMeta | None = None) -> None:
        self.meta = meta
        self.device = resolve_device(device)
        self.preprocess = preprocess
        self.fingerprint = fingerprint
        self.source = source
        self.module = module.to(self.device).eval()
        #: Whether the reference scores a bundle's class bank instead of the checkpoint's own (:meth:`from_checkpoint`).
        self.class_bank_applied = False

    @classmethod
    def from_model(cls, model: UopslModel, preprocess: PreprocessConfig, **kwargs: Any) -> TorchReference:
        """The deployed graph (:class:`DeployModel`) of a UOPSL model at ``preprocess.size``."""
        return cls(DeployModel(model.eval(), preprocess.size), preprocess, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto",
                        class_bank: tuple[tuple[str, ...], np.ndarray] | None = None) -> TorchReference:
        """Load ``checkpoint`` (a folder written by uopsl) as the reference.

        ``class_bank``: (names, text embeddings) of a bundle's ``class_bank.npy``;
        where it differs from the checkpoint's own (``uopsl export --classes``:
        other names, or a trained class given other phrases) the reference
        scores that bank, as the export did (:meth:`UopslModel.with_classes`).
        """
        folder = Path(checkpoint)
        model, meta = load_model(folder)
        if class_bank is not None and not _same_bank(class_bank, model):
            log.info("the bundle scores its own class bank %s: the reference does too", list(class_bank[0]))
            model = model.with_classes(tuple(class_bank[0]), class_bank[1], seen_names=model.config.classes)
            # The checkpoint's thresholds and referable flags were for its own classes; the bundle's decide.
            meta = replace(meta, model=model.config, thresholds=(), referable=())
        else:
            class_bank = None
        digest = hashlib.sha256()
        for name in ("model.safetensors", "checkpoint.json"):
            digest.update(sha256_file(folder / name).encode())
        if class_bank is not None:  # another bank, other outputs: cached reference outputs must not be shared
            digest.update("|".join(class_bank[0]).encode())
            digest.update(np.ascontiguousarray(class_bank[1], np.float32).tobytes())
        reference = cls.from_model(model, meta.preprocess, device=device, fingerprint=digest.hexdigest(),
                                   source=str(folder), meta=meta)
        reference.class_bank_applied = class_bank is not None
        return reference

    def describe(self) -> str:
        where = f" {self.source}" if self.source else ""
        return f"PyTorch {torch.__version__} {type(self.module).__name__}{where} on {self.device} (FP32)"

    # Context-manager methods so it can sit where a Backend does.
    def __enter__(self) -> TorchReference:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the deployed graph on a uint8 (N, S, S, 3) RGB batch."""
        size = self.preprocess.size
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            got = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise BackendError(f"the PyTorch reference takes uint8 (N, {size}, {size}, 3) RGB batches; got {got}")
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.no_grad(), _strict_fp32(self.device):
            probs, logits, maps = self.module(x)
        return {"probs": probs.float().cpu().numpy(), "logits": logits.float().cpu().numpy(),
                "site_maps": maps.float().cpu().numpy()}


def manifest_mismatches(meta: CheckpointMeta, manifest: Manifest) -> list[str]:
    """What a bundle's manifest says differently from the checkpoint it should come from.

    Class names (and their order) must match, or outputs cannot be compared
    column by column: that raises :class:`CheckpointError`. The other
    differences (head, operating thresholds, referable flags) are returned as
    notes for the report; preprocessing differences are handled by the
    validation itself (each side gets its own).
    """
    names = tuple(meta.model.classes)
    if names != manifest.class_names:
        raise CheckpointError(
            f"the checkpoint's classes {list(names)} differ from the bundle's {list(manifest.class_names)}; "
            "validate a bundle against the checkpoint it was exported from (uopsl export)"
        )
    notes = []
    if meta.model.head != manifest.head:
        notes.append(f"head: checkpoint {meta.model.head}, bundle {manifest.head}")
    if meta.thresholds and tuple(round(t, 6) for t in meta.thresholds) != tuple(
            round(float(t), 6) for t in manifest.thresholds):
        notes.append(f"operating thresholds: checkpoint {list(meta.thresholds)}, bundle "
                     f"{[float(t) for t in manifest.thresholds]} (decisions use the bundle's)")
    if meta.referable and tuple(meta.referable) != tuple(bool(r) for r in manifest.referable_mask):
        notes.append(f"referable classes: checkpoint {list(meta.referable)}, bundle "
                     f"{[bool(r) for r in manifest.referable_mask]} (decisions use the bundle's)")
    return notes
