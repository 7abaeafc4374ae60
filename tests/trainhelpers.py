"""Small training fixtures shared by the train-layer tests (tiny images, tiny models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tinymodel import random_fundus_batch
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train.checkpoint import CheckpointMeta
from uopsl.train.model import ModelConfig, UopslModel
from uopsl.train.torchdata import ImageDataset, Item

CLASSES = ("normal", "a", "b")


def tiny_items(root: Path, n: int = 24, size: int = 96) -> list[Item]:
    """Disc images; class a has a yellow spot at the centre, class b a blue one."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, im in enumerate(random_fundus_batch(n, size, seed=1)):
        y = np.zeros(len(CLASSES), np.float32)
        y[i % 3] = 1
        if i % 3:
            cv2.circle(im, (size // 2, size // 2), size // 8, (255, 255, 0) if i % 3 == 1 else (0, 0, 255), -1)
        p = root / f"{i}.png"
        cv2.imwrite(str(p), im[:, :, ::-1])
        items.append(Item(p, y))
    return items


def tiny_dataset(root: Path, n: int = 24, augment: bool = False) -> ImageDataset:
    return ImageDataset(tiny_items(root / "imgs", n), PreprocessConfig(size=64), root / "cache", augment=augment)


def tiny_model(variant: str = "uopsl", seed: int = 0, random_text: bool = False) -> tuple[UopslModel, CheckpointMeta]:
    """A small random ResNet-18 model for classes normal, a, b.

    Its class prototypes are the packaged encoder's, as in a real checkpoint; ``random_text``: random
    orthogonal-ish ones instead (class maps of an untrained model then differ more), for tests that never
    describe new classes.
    """
    import torch

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="resnet18", init="random", classes=CLASSES, dim=32, sites=2, variant=variant)  # type: ignore[arg-type]
    phrases = (("a healthy retina",), ("a yellow spot at the centre",), ("a blue spot at the centre",))
    # The packaged encoder's prototypes of its phrases, as a real checkpoint holds them: commands that describe
    # new classes check the checkpoint's encoder by encoding its phrases again.
    text = (np.random.default_rng(seed).standard_normal((3, 384)).astype(np.float32) if random_text
            else _prototypes(phrases))
    meta = CheckpointMeta(model=cfg, preprocess=PreprocessConfig(size=64), phrases=phrases, data_fingerprint="tiny")
    return UopslModel(cfg, text), meta


def classes_checkpoint(root: Path, classes: tuple[str, ...]) -> Path:
    """A small random fine-tuned checkpoint whose classes are ``classes`` (zero prototypes): what commands that
    read the checkpoint's classes before any model runs (evaluate's refusals) need, written to ``root``."""
    from dataclasses import replace

    from uopsl.train.checkpoint import save_model

    model, meta = tiny_model(random_text=True)
    cfg = replace(meta.model, classes=classes)
    meta = replace(meta, model=cfg, phrases=tuple((c,) for c in classes))
    save_model(root, UopslModel(cfg, np.zeros((len(classes), 384), np.float32)), replace(meta, stage="finetune"))
    return root


def _prototypes(phrases: tuple[tuple[str, ...], ...]) -> np.ndarray:
    from uopsl.train.text import TextEncoder

    return TextEncoder().prototypes(phrases)


def feature_batch(model: UopslModel, n: int = 4, grid: int = 8) -> tuple[Any, Any]:
    """Random backbone features (n, C, grid, grid) for ``model`` and one-hot labels cycling through its classes."""
    import torch

    torch.manual_seed(1)
    feat = torch.randn(n, model.fundus.encoder.channels, grid, grid)
    k = len(model.config.classes)
    y = torch.zeros(n, k)
    y[torch.arange(n), torch.arange(n) % k] = 1.0
    return feat, y


def tiny_synth(root: Path, n_fundus: int, n_oct: int = 0) -> Path:
    """A tiny ``uopsl synth`` folder: 64 px, seed 0, no site masks."""
    from uopsl.train.synthetic import SynthConfig, make_dataset

    make_dataset(root, n_fundus, n_oct, config=SynthConfig(size=64, seed=0), write_masks=False, progress=False)
    return root
