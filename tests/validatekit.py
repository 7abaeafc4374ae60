"""Shared pieces of the `uopsl validate` tests: the demo bundle's classes, and the command run in-process."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinybundle import fundus_jpeg

from uopsl.runtime.backends import Availability
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest, describe_file, write_manifest
from uopsl.runtime.clikit import LazyGroup, main_entry
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes

# The demo bundle's classes and operating thresholds (/tmp/s8/demo_det/bundle, a review's input).
DEMO_CLASSES = (ClassSpec("normal", threshold=0.10487), ClassSpec("dr", threshold=0.87914, referable=True),
                ClassSpec("dme", threshold=0.28952, referable=True), ClassSpec("amd", threshold=0.012007, referable=True),
                ClassSpec("glaucoma", threshold=0.013595, referable=True))
NAMES = tuple(c.name for c in DEMO_CLASSES)
THRESHOLDS = np.array([c.threshold for c in DEMO_CLASSES])
PRE = PreprocessConfig(size=32)
N = 120
CPU = Availability(("CPUExecutionProvider",))


def uopsl_validate(argv: list[str]) -> int:
    """Run ``uopsl validate`` in this process (same LazyGroup plumbing and exit-code mapping as the CLI)."""
    import click

    @click.group(cls=LazyGroup, lazy={"validate": "uopsl.train.commands.validate:command"})
    def cli() -> None:
        pass

    # --keep-ungradable: these tests' photographs are smaller than the runtime's quality gate takes (256 px).
    return main_entry(cli, ["validate", "--keep-ungradable", *argv], prog_name="uopsl")


def logits_of(p: np.ndarray) -> np.ndarray:
    """The logits of probabilities ``p`` (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def confident(labels: Sequence[tuple[str, ...]]) -> np.ndarray:
    """Probabilities calling each labelled class well above its threshold, every other well below."""
    pos = np.array([[n in lab for n in NAMES] for lab in labels])
    return np.where(pos, THRESHOLDS + (1 - THRESHOLDS) * 0.6, THRESHOLDS * 0.4)


def image_key(image: np.ndarray) -> str:
    """sha1 of a preprocessed image: how the stand-in models find their outputs."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    return [fundus_jpeg(folder / f"i{i:03d}.jpg", size=96, seed=i) for i in range(N)]


@pytest.fixture(scope="module")
def image_keys(photos: list[Path]) -> dict[str, int]:
    """:func:`image_key` of each preprocessed photograph -> its index."""
    keys = {image_key(preprocess(read_bytes(p), PRE, source=str(p)).image): i for i, p in enumerate(photos)}
    assert len(keys) == len(photos)
    return keys


class Table:
    """A model whose outputs for each image are rows of ``probs()`` (logits from them; NaN/inf pass through)."""

    def __init__(self, keys: Mapping[str, int], probs: Callable[[], np.ndarray]) -> None:
        self.keys, self.probs = keys, probs

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        idx = [self.keys[image_key(x)] for x in batch]
        p = self.probs()[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            logits = np.where(np.isfinite(p), logits_of(p), p)
        return {"probs": p.astype(np.float32), "logits": logits.astype(np.float32),
                "site_maps": np.zeros((len(idx), len(NAMES), 4, 4), np.float32)}

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def cycled_labels(n: int) -> list[tuple[str, ...]]:
    """One label per image, cycling through the demo classes."""
    return [(NAMES[i % len(NAMES)],) for i in range(n)]


class PatchedModels:
    """The reference's and each file's probabilities (changeable), with ``validate``'s candidates patched in."""

    def __init__(self, keys: Mapping[str, int], monkeypatch: pytest.MonkeyPatch,
                 labels: Sequence[tuple[str, ...]]) -> None:
        from uopsl.export import validate as validate_mod

        self.ref = confident(labels)
        self.files = {"model.onnx": self.ref.copy(), "model.int8.onnx": self.ref.copy()}
        self.reference = Table(keys, lambda: self.ref)
        monkeypatch.setattr(validate_mod, "open_candidate",
                            lambda bundle, spec, threads, manifest: Table(keys, lambda: self.files[spec.file]))


def placeholder_bundle(root: Path, *, model_name: str, backbone: str = "", size: int = PRE.size,
                       notes: dict[str, Any] | None = None) -> Path:
    """FP32 + INT8 placeholder files with real checksums, the demo bundle's five classes, no engine."""
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"fp32 stand-in")
    (root / "model.int8.onnx").write_bytes(b"int8 stand-in")
    files = tuple(describe_file(root, f) for f in (FileEntry("model.onnx", "onnx", "fp32"),
                                                    FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8")))
    write_manifest(root, Manifest(classes=DEMO_CLASSES, head="sigmoid", preprocess=PreprocessConfig(size=size),
                                  files=files, model_name=model_name, backbone=backbone, notes=dict(notes or {})))
    return root
