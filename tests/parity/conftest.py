"""Parity tests: put ``tests/`` on sys.path (shared helpers) and build the shared fixtures once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


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
def screen_model(cast_sets: dict[str, list[Path]]) -> tuple[object, list[float]]:
    """(colour-screen torch module, its margin thresholds on the fit images)."""
    import torch

    from paritykit import color_screen, margin_thresholds, model_inputs, targets_of

    x, y = model_inputs(cast_sets["fit"]), targets_of(cast_sets["fit"])
    model = color_screen(x, y)
    with torch.no_grad():
        probs = model(torch.from_numpy(x))[0].numpy()
    return model, margin_thresholds(probs, y)


@pytest.fixture(scope="session")
def screen_bundle(tmp_path_factory: pytest.TempPathFactory, cast_sets: dict[str, list[Path]],
                  screen_model: tuple[object, list[float]]) -> Path:
    """Colour-screen bundle: FP32 + INT8 (CPU QDQ, the toolkit's default entropy calibration); read-only."""
    from paritykit import CLASSES, add_int8, model_inputs, write_contract_bundle

    model, thresholds = screen_model
    bundle = write_contract_bundle(tmp_path_factory.mktemp("screen") / "bundle", model, CLASSES, thresholds, (8, 8))
    add_int8(bundle, model_inputs(cast_sets["fit"]), method="entropy")
    return bundle
