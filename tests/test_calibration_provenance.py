"""What a calibration table and an INT8 file in a bundle must come from, from an export engineer's review:
the bundle's own preprocessing, the images recorded, a set cache that notices replaced files, and a bundle
that the command which repairs it may repair."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tinymodel import calibrate_cli, fundus_png_folder
from tinybundle import make_tiny_bundle
from uopsl.runtime.bundle import read_manifest, verify_or_raise
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import BundleError

SIZE = 64


@pytest.fixture()
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    return make_tiny_bundle(tmp_path / "bundle", size=SIZE)


def _clahe_config(tmp_path: Path, bundle: Path) -> Path:
    cfg = {**read_manifest(bundle).preprocess.to_dict(), "clahe": True}
    path = tmp_path / "clahe.json"
    path.write_text(json.dumps(cfg))
    return path


def test_a_bundles_table_comes_from_the_bundles_own_preprocessing(bundle: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """calibrate --preprocess wrote a CLAHE table into a bundle screening without CLAHE, quantize made its INT8
    file from it, and the bundle verified: ranges up to 1.7x off, no word."""
    images = fundus_png_folder(tmp_path / "imgs", 6)
    other = _clahe_config(tmp_path, bundle)
    manifest_before = (bundle / "manifest.json").read_bytes()
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax",
                                        "--preprocess", str(other)]) == 2
    err = capsys.readouterr().err
    assert "its calibration table would be measured on images preprocessed otherwise than the bundle screens " \
           "them (clahe True (bundle: False))" in err
    assert (bundle / "manifest.json").read_bytes() == manifest_before and not (bundle / "calibration.json").exists()
    # Written outside the bundle, it may differ (a study); put in by hand, quantize and build-engine refuse it.
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax",
                                        "--preprocess", str(other), "--out", str(tmp_path / "t.json")]) == 0
    capsys.readouterr()
    assert main_entry(calibrate_cli(), ["quantize", str(bundle), "--table", str(tmp_path / "t.json"),
                                        "--rounding", "nearest", "--no-bias-correction"]) == 2
    assert "its ranges were measured on images preprocessed otherwise than the bundle" in capsys.readouterr().err
    assert not (bundle / "model.int8.onnx").exists()
    # The bundle's own preprocessing passes (a table of today's, or one from before tables noted it).
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method",
                                        "minmax"]) == 0
    from uopsl.calibration.table import CalibrationTable

    table = CalibrationTable.load(bundle / "calibration.json")
    assert table.preprocess_mismatch(read_manifest(bundle).preprocess) is None
    old = CalibrationTable.from_dict({**table.to_dict(), "notes": {}})
    assert old.preprocess_mismatch(read_manifest(bundle).preprocess) is None


def test_build_engine_refuses_a_legacy_cache_from_another_preprocessing(bundle: Path, tmp_path: Path) -> None:
    from uopsl.calibration.table import CalibrationTable
    from uopsl.runtime.errors import ConfigError
    from uopsl.runtime.fsio import sha256_file
    from uopsl.train.commands.build_engine import _legacy_calibration

    images = fundus_png_folder(tmp_path / "imgs", 6)
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method",
                                        "minmax"]) == 0
    m = read_manifest(bundle)
    table = CalibrationTable.load(bundle / "calibration.json")
    notes = {**table.notes, "preprocess": {**m.preprocess.to_dict(), "size": SIZE * 2}}
    CalibrationTable.from_dict({**table.to_dict(), "notes": notes}).save(bundle / "calibration.json")
    with pytest.raises(ConfigError, match=r"preprocessed otherwise than the bundle .*\(size 128 \(bundle: 64\)\)"):
        _legacy_calibration(bundle, m, "legacy-cache", bundle / "model.onnx", None, None, 1, None)
    assert sha256_file(bundle / "model.onnx")  # untouched


def test_the_manifest_records_the_images_an_int8_file_was_fitted_on(bundle: Path, tmp_path: Path) -> None:
    """Bias correction and weight rounding fitted the file on --images, which may be another set than the
    table's; only the table's fingerprint was recorded."""
    images = fundus_png_folder(tmp_path / "imgs", 8)
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax",
                                        "--max-images", "5", "--seed", "3"]) == 0
    assert main_entry(calibrate_cli(), ["quantize", str(bundle), "--images", str(images), "--max-images", "6",
                                        "--seed", "4", "--rounding", "nearest"]) == 0
    info = {f.path: f for f in read_manifest(bundle).files}["model.int8.onnx"].info
    assert set(info["fitted_on"]) == {"bias_correction"}  # the steps that ran (rounding nearest)
    step = info["fitted_on"]["bias_correction"]
    assert step["images"] == 6 and len(step["fingerprint"]) == 64 and step["fingerprint"] != \
        info["calibration_fingerprint"]
    # Each step records the subset it drew, not the whole set: 3 of the 6 images here.
    assert main_entry(calibrate_cli(), ["quantize", str(bundle), "--images", str(images), "--max-images", "6",
                                        "--seed", "4", "--rounding", "gptq", "--rounding-images", "3"]) == 0
    fitted = {f.path: f for f in read_manifest(bundle).files}["model.int8.onnx"].info["fitted_on"]
    assert fitted["rounding"]["images"] == 3 and fitted["bias_correction"]["images"] == 6
    assert fitted["rounding"]["fingerprint"] != fitted["bias_correction"]["fingerprint"]
    # --images given but no step drew from it: nothing is claimed.
    assert main_entry(calibrate_cli(), ["quantize", str(bundle), "--images", str(images), "--rounding", "nearest",
                                        "--no-bias-correction"]) == 0
    assert {f.path: f for f in read_manifest(bundle).files}["model.int8.onnx"].info["fitted_on"] == {}


def test_the_set_cache_notices_a_file_replaced_with_the_same_size_and_time(tmp_path: Path) -> None:
    """BMPs rewritten with other pixels, same size and mtime (cp -p, rsync -t) came from the cache."""
    from uopsl.calibration.dataset import build_calibration_set
    from uopsl.runtime.preprocess import PreprocessConfig

    pngs = fundus_png_folder(tmp_path / "png", 4)
    folder = tmp_path / "bmp"
    folder.mkdir()
    for i, p in enumerate(sorted(pngs.glob("*.png"))):
        cv2.imwrite(str(folder / f"{i}.bmp"), cv2.imread(str(p)))
    cfg = PreprocessConfig(size=SIZE)
    cache = tmp_path / "set.npz"
    first = build_calibration_set(folder, cfg, cache=cache, show_progress=False)
    for p in folder.glob("*.bmp"):
        st = p.stat()
        img = cv2.imread(str(p))
        cv2.imwrite(str(p), np.ascontiguousarray(img[:, ::-1]))  # other pixels, same size
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = build_calibration_set(folder, cfg, cache=cache, show_progress=False)
    assert again.fingerprint != first.fingerprint


def test_a_bundle_stopped_between_writing_its_table_and_listing_it_is_repaired_by_calibrate(
        bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = fundus_png_folder(tmp_path / "imgs", 6)
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method",
                                        "minmax"]) == 0
    table = json.loads((bundle / "calibration.json").read_text())
    first = next(iter(table["ranges"]))
    edited = {**table, "ranges": {**table["ranges"], first: [-1000.0, 1000.0]}}  # same model, images, method
    (bundle / "calibration.json").write_text(json.dumps(edited))  # written (or edited), not listed
    with pytest.raises(BundleError):
        verify_or_raise(bundle)
    with caplog.at_level("WARNING"):  # no --force: the table there is measured again, never reused
        assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method",
                                            "minmax"]) == 0
    assert "calibration.json does not match the manifest" in caplog.text
    verify_or_raise(bundle)
    assert json.loads((bundle / "calibration.json").read_text())["ranges"][first] == table["ranges"][first]
    # Any other file failing still stops it: the manifest is never re-signed over a damaged bundle.
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax",
                                        "--force"]) == 2


def test_calibrate_says_when_the_set_is_small_mostly_skipped_or_lacks_a_class(bundle: Path, tmp_path: Path,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """One good image of 31 gave a table that quantize then used without a word, and a class of the model with
    no image in the set went unmentioned (calibration review, session 31)."""
    images = fundus_png_folder(tmp_path / "imgs", 2)
    for i in range(5):
        (images / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    listing = tmp_path / "set.csv"
    listing.write_text("path,label\n" + "".join(f"{p.name},{'npdr' if p.suffix == '.png' else 'dme'}\n"
                                                for p in sorted(images.iterdir())), encoding="utf-8")
    (tmp_path / "imgs" / listing.name).write_text(listing.read_text(), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert main_entry(calibrate_cli(), ["calibrate", str(bundle), "--images", str(images / "set.csv"),
                                            "--method", "minmax", "--no-cache"]) == 1
    said = caplog.text
    assert "5 of the 7 calibration images were skipped" in said
    assert "measured on 2 images, fewer than 32" in said
    assert "no image labelled normal, dme" in said  # the broken dme photographs do not count
    notes = json.loads((bundle / "calibration.json").read_text())["notes"]
    assert notes["skipped_images"] == 5 and notes["skipped_reasons"] == {"undecodable": 5}
    assert "broken0.jpg" not in json.dumps(notes)  # file names can name patients; the table ships in the bundle
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main_entry(calibrate_cli(), ["quantize", str(bundle), "--rounding", "nearest",
                                            "--no-bias-correction"]) == 0
    assert "5 of the 7 calibration images were skipped" in caplog.text and "fewer than 32" in caplog.text
