"""What a review of the INT8 commands found (session 51): verdicts lost on an identical rerun, a second table
that nothing reads, advice that fails, a cache path silently ignored, labels outside the bundle's classes."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from tinybundle import fundus_jpeg, make_tiny_bundle

from uopsl.export.bundle_writer import add_file, record_parity
from uopsl.runtime.bundle import read_manifest, write_manifest
from uopsl.runtime.clikit import main_entry
from uopsl.train.cli import cli


def _uopsl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main_entry(cli, argv, prog_name="uopsl")
    got = capsys.readouterr()
    return rc, got.out + got.err


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "b", int8=True)


def test_adding_the_same_bytes_again_keeps_the_file_s_verdicts(bundle: Path, tmp_path: Path) -> None:
    """A quantize rerun that made a byte-identical INT8 file dropped its validate records: a FAIL read "not
    validated", and `uopsl triton --include-unvalidated` then served it."""
    fail = {"passed": False, "verdict": "FAIL", "reasons": ["flip_rate 0.1 > 0.005"]}
    record_parity(bundle, {"model.int8.onnx": {"ort-cpu": fail}})
    before = read_manifest(bundle).file("model.int8.onnx").info["parity"]
    copy = tmp_path / "same.onnx"
    shutil.copyfile(bundle / "model.int8.onnx", copy)
    add_file(bundle, copy, "model.int8.onnx", "onnx", "int8-qdq-u8", info={"variant": "cpu"})
    assert read_manifest(bundle).file("model.int8.onnx").info["parity"] == before
    # other bytes: the verdicts were about the old file, and go
    copy.write_bytes(copy.read_bytes() + b"\0")
    add_file(bundle, copy, "model.int8.onnx", "onnx", "int8-qdq-u8", info={"variant": "cpu"})
    assert "parity" not in read_manifest(bundle).file("model.int8.onnx").info


def _photos(folder: Path, n: int = 4) -> Path:
    for i in range(n):
        fundus_jpeg(folder / f"p{i}.jpg", seed=i)
    return folder


def test_a_second_table_in_the_bundle_is_refused(bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = (bundle / "manifest.json").read_bytes()
    rc, out = _uopsl(["calibrate", str(bundle), "--images", str(_photos(tmp_path / "imgs")), "--out",
                      str(bundle / "other.json"), "--allow-no-fov", "--no-cache"], capsys)
    assert rc == 2 and "would put a second calibration table into the bundle" in out, out
    assert (bundle / "manifest.json").read_bytes() == before and not (bundle / "other.json").exists()


def test_a_new_table_names_one_command_per_stale_int8_file_with_its_variant(
        bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    m = read_manifest(bundle)
    files = tuple(replace(f, info={**f.info, "variant": "cpu"}) if f.path == "model.int8.onnx" else f for f in m.files)
    write_manifest(bundle, replace(m, files=files))
    caplog.set_level(logging.WARNING)
    rc, out = _uopsl(["calibrate", str(bundle), "--images", str(_photos(tmp_path / "imgs")), "--allow-no-fov",
                      "--no-cache"], capsys)
    assert rc == 0, out
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"`uopsl quantize {bundle} --variant cpu --images IMAGES`" in said, said


def test_quantize_without_images_says_so_in_command_line_terms(bundle: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _uopsl(["calibrate", str(bundle), "--images", str(_photos(tmp_path / "imgs")), "--allow-no-fov",
                   "--no-cache"], capsys)[0] == 0
    rc, out = _uopsl(["quantize", str(bundle)], capsys)
    assert rc == 2 and "pass them with --images" in out and "--no-bias-correction and --rounding nearest" in out, out
    assert "calib_set" not in out and "bias_correction=False" not in out, out


def test_a_cache_to_build_from_that_does_not_exist_is_refused(bundle: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """It was ignored: the engine took calibration.json's ranges without a word (checked before TensorRT loads)."""
    missing = tmp_path / "jetson.cahce"
    for mode in ("legacy-cache", "auto"):
        rc, out = _uopsl(["build-engine", str(bundle), "--precision", "int8", "--int8-mode", mode, "--calib-cache",
                          str(missing)], capsys)
        assert rc == 2 and f"--calib-cache {missing}: no such file" in out, out


def test_calibration_labels_outside_the_bundle_s_classes_are_named(
        bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    rows = ["path,label"]
    for i, label in enumerate(("pdr", "amd", "normal")):  # the bundle: normal, npdr, dme
        rows.append(f"{fundus_jpeg(tmp_path / f'p{i}.jpg', seed=i)},{label}")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    caplog.set_level(logging.WARNING)
    _uopsl(["calibrate", str(bundle), "--images", str(tmp_path / "set.csv"), "--allow-no-fov", "--no-cache"], capsys)
    said = " ".join(r.getMessage() for r in caplog.records if "no image labelled" in r.getMessage())
    assert "no image labelled npdr, dme" in said and "its labels amd, pdr are not classes of this bundle" in said, said
