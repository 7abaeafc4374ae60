"""`uopsl validate` and the runtime's quality gate: images a device gives no decision on are left out by default.

A session-45 review screened a set holding a black frame, an over-exposed one and an OCT B-scan: `validate`
compared the file's decisions on them (one black frame "referred"), counted them towards the 100 images a
recorded PASS needs, and let their labels into the AUCs, while `uopsl-screen run` called them ungradable.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from tinybundle import fundus_jpeg
from validatekit import CPU, PatchedModels, cycled_labels, image_key, placeholder_bundle

from uopsl.export.parity_metrics import ParityGates
from uopsl.export.validate import UNGRADABLE, ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes

SIZE = 128  # the gate measures a 256 px copy of the model input: at 32 px every photograph reads blurred
N_GOOD = 12


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("gate_photos")
    good = [fundus_jpeg(folder / f"g{i:02d}.jpg", size=512, seed=i) for i in range(N_GOOD)]
    black = folder / "black.jpg"
    cv2.imwrite(str(black), np.full((512, 512, 3), 2, np.uint8))
    return [*good, black]


def _run(tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch, **cfg: object):  # type: ignore[no-untyped-def]
    pre = PreprocessConfig(size=SIZE)
    keys = {image_key(preprocess(read_bytes(p), pre, source=str(p)).image): i for i, p in enumerate(photos)}
    labels = cycled_labels(len(photos))
    models = PatchedModels(keys, monkeypatch, labels)
    bundle = placeholder_bundle(tmp_path / "bundle", model_name="gate", size=SIZE)
    records = [ImageRecord(p.name, p, lab) for p, lab in zip(photos, labels, strict=True)]
    config = ValidateConfig(backends=("ort-cpu",), gates=ParityGates(), n_boot=0, show_progress=False, record=False,
                            **cfg)  # type: ignore[arg-type]
    return validate_bundle(bundle, models.reference, records, tmp_path / "out", config, availability=CPU)


def test_images_the_gate_rejects_are_left_out_and_listed_with_its_reasons(
        tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    report = _run(tmp_path, photos, monkeypatch).report
    data = report["data"]
    assert (data["n_images"], data["n_used"], data["n_skipped"], data["n_ungradable"]) == (N_GOOD + 1, N_GOOD, 1, 1)
    assert data["quality_gate"] == "left out"
    (skipped,) = report["skipped_images"]
    assert skipped["id"] == "black.jpg" and skipped["reason"] == UNGRADABLE
    assert "too_dark" in skipped["message"] and "a device gives no decision on it" in skipped["message"]


def test_keep_ungradable_compares_them_too_and_says_so(tmp_path: Path, photos: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = _run(tmp_path, photos, monkeypatch, keep_ungradable=True).report["data"]
    assert (data["n_used"], data["n_skipped"], data["n_ungradable"], data["quality_gate"]) == (N_GOOD + 1, 0, 0, "kept")


def test_a_set_the_gate_rejects_whole_says_how_to_compare_it_anyway(tmp_path: Path, photos: list[Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--keep-ungradable") as info:
        _run(tmp_path, photos[-1:], monkeypatch)
    assert "black.jpg: the quality gate calls it ungradable (no_fov, too_dark" in str(info.value)


def test_the_terminal_and_report_words_for_what_was_left_out() -> None:
    from uopsl.export.parity_html import skipped_words

    assert skipped_words({"n_skipped": 3, "n_ungradable": 1, "quality_gate": "left out"}) == (
        "2 unreadable, 1 ungradable left out")
    assert skipped_words({"n_skipped": 0, "n_ungradable": 0, "quality_gate": "kept"}) == (
        "0 unreadable; ungradable ones kept by --keep-ungradable")
    assert skipped_words({"n_skipped": 2}) == "2 could not be read"  # a report from before the gate
