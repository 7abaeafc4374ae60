"""Parity tests: put ``tests/`` on sys.path (shared helpers) and build the shared fixtures once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
REPO = TESTS.parent
TVHL = (REPO.parent / "shared" / "data" / "tvhl").resolve()


@pytest.fixture(scope="session")
def cast_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Colour-cast images: 'fit' (model fit and calibration) and 'val' (validation), disjoint seeds."""
    from paritykit import cast_images

    root = tmp_path_factory.mktemp("cast")
    return {"fit": cast_images(root / "fit", 60, seed=0), "val": cast_images(root / "val", 120, seed=1)}


@pytest.fixture(scope="session")
def tiny_ckpt_bundle(tmp_path_factory: pytest.TempPathFactory, cast_sets: dict[str, list[Path]]) -> tuple[Path, Path]:
    """(checkpoint, FP32 bundle) of the tiny UOPSL model; read-only: copy before tampering."""
    from paritykit import export_checkpoint, tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    ckpt = tiny_checkpoint(root / "ckpt")
    return ckpt, export_checkpoint(ckpt, root / "bundle", cast_sets["val"][:48])


@pytest.fixture(scope="session")
def screen_bundle(tmp_path_factory: pytest.TempPathFactory, cast_sets: dict[str, list[Path]]) -> Path:
    """Colour-screen bundle: FP32 + INT8 (CPU QDQ, the toolkit's default entropy calibration); read-only."""
    import torch

    from paritykit import CLASSES, add_int8, color_screen, margin_thresholds, model_inputs, targets_of
    from paritykit import write_contract_bundle

    x, y = model_inputs(cast_sets["fit"]), targets_of(cast_sets["fit"])
    model = color_screen(x, y)
    with torch.no_grad():
        probs = model(torch.from_numpy(x))[0].numpy()
    bundle = write_contract_bundle(tmp_path_factory.mktemp("screen") / "bundle", model, CLASSES,
                                   margin_thresholds(probs, y), (8, 8))
    add_int8(bundle, x, method="entropy")
    return bundle
