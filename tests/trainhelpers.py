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


def tiny_model(variant: str = "uopsl", seed: int = 0) -> tuple[UopslModel, CheckpointMeta]:
    import torch

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="resnet18", init="random", classes=CLASSES, dim=32, sites=2, variant=variant)  # type: ignore[arg-type]
    text = np.random.default_rng(seed).standard_normal((3, 384)).astype(np.float32)
    meta = CheckpointMeta(model=cfg, preprocess=PreprocessConfig(size=64), phrases=(("n",), ("a",), ("b",)),
                          data_fingerprint="tiny")
    return UopslModel(cfg, text), meta


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
