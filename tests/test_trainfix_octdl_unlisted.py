"""OCTDL's CSV-driven reader counts the image files its CSV does not list; the no-images error names the reader.

1. With ``OCTDL_labels.csv`` present the CSV says which files are read; image files in the class folders that
   no row names were left out without a word. They are now counted in the source's ``dropped['not_in_csv']``,
   with a warning saying how many and why (what is read is unchanged).
2. The "no images found" error's notes spoke of ``folder:`` ("folder: reads root/<class>/<image>", "DICOM files
   are not read by folder:") for OCT2017 and OCTDL sources too; they now name the reader used. The folder:
   wording is unchanged.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

import fixtures_data as fx
from uopsl.runtime.errors import DataError
from uopsl.train import data as D

NOT_LISTED = "not listed in OCTDL_labels.csv left out"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- 1. OCTDL: image files the CSV does not list --------------------------------------------------------------


def test_octdl_csv_counts_and_warns_about_image_files_it_does_not_list(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    root = fx.make_octdl(tmp_path / "OCTDL", with_csv=True)
    before = D.read_octdl(root)
    assert before.dropped == {}
    fx.write_image(root / "AMD" / "amd_1047099_9.jpg", seed=50)   # a class the CSV lists
    fx.write_image(root / "NO" / "no_1021542_7.png", seed=51)
    fx.write_image(root / "ERM" / "erm_1111111_1.jpg", seed=52)   # a class folder no row names
    fx.write_image(root / "AMD" / "._amd_1047099_1.jpg", seed=53)  # macOS copy: hidden, not counted
    (root / "DME" / "notes.txt").write_text("x")                   # not an image file, not counted
    with caplog.at_level(logging.WARNING):
        src = D.read_octdl(root)
    assert [s.path for s in src.samples] == [s.path for s in before.samples]  # what is read is unchanged
    assert src.fingerprint == before.fingerprint
    assert src.dropped == {"not_in_csv": 3}
    assert src.describe()["dropped"] == {"not_in_csv": 3}
    warned = _warnings(caplog)
    assert any(f"3 image files {NOT_LISTED}" in m and "AMD/amd_1047099_9.jpg" in m for m in warned), warned


def test_octdl_csv_beside_the_archive_counts_one_unlisted_file(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    root = fx.make_octdl(tmp_path / "OCTDL", with_csv=True)
    shutil.move(str(root / "OCTDL_labels.csv"), str(tmp_path / "OCTDL_labels.csv"))
    fx.write_image(root / "VID" / "vid_1099999_2.jpg", seed=54)
    with caplog.at_level(logging.WARNING):
        src = D.read_octdl(root)
    assert len(src) == 5 and src.dropped == {"not_in_csv": 1}
    assert any(f"1 image file {NOT_LISTED}" in m for m in _warnings(caplog)), _warnings(caplog)


def test_octdl_csv_that_lists_every_file_drops_nothing_and_warns_nothing(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = fx.make_octdl(tmp_path, with_csv=True)
    with caplog.at_level(logging.WARNING):
        src = D.read_octdl(root)
    assert len(src) == 5 and src.dropped == {}
    assert not any("not listed" in m for m in _warnings(caplog))


def test_octdl_csv_listing_no_file_says_how_many_it_left_out(tmp_path: Path) -> None:
    root = fx.make_octdl(tmp_path, with_csv=False)
    fx.write_csv(root / "OCTDL_labels.csv", ["file_name", "disease", "patient_id"], [])
    with pytest.raises(DataError) as err:
        D.read_octdl(root)
    msg = str(err.value)
    assert "no images found" in msg and f"5 image files {NOT_LISTED}" in msg, msg
    assert "rows left out" not in msg, msg


# -- 2. the no-images error names the reader used -------------------------------------------------------------


def _dicom_and_subfolder(folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.dcm").write_bytes(b"\0" * 132 + b"DICM")
    (folder / "extra").mkdir()
    (folder / "extra" / "scan.txt").write_text("x")


def _no_images_message(read: Any, root: Path) -> str:
    with pytest.raises(DataError) as err:
        read(root)
    return str(err.value)


def test_oct2017_no_images_error_names_oct2017_not_folder(tmp_path: Path) -> None:
    for cls in ("CNV", "NORMAL"):
        _dicom_and_subfolder(tmp_path / "train" / cls, f"{cls}-1-1")
    msg = _no_images_message(D.read_oct2017, tmp_path)
    assert "no images found" in msg and "2 .dcm" in msg, msg
    assert "folder:" not in msg and "PACS" not in msg, msg
    assert "DICOM files are not read by oct2017:" in msg and "csv:FILE" in msg, msg
    assert "oct2017: reads root/<split>/<CLASS>/<image>" in msg and "oct2017: reads .bmp" in msg, msg


def test_octdl_scanned_no_images_error_names_octdl_not_folder(tmp_path: Path) -> None:
    _dicom_and_subfolder(tmp_path / "AMD", "amd_1_1")
    msg = _no_images_message(D.read_octdl, tmp_path)
    assert "no images found" in msg and "1 .dcm" in msg, msg
    assert "folder:" not in msg, msg
    assert "DICOM files are not read by octdl:" in msg and "octdl: reads root/<CLASS>/<image>" in msg, msg


def test_folder_no_images_error_keeps_its_wording(tmp_path: Path) -> None:
    _dicom_and_subfolder(tmp_path / "normal", "IM0001")
    msg = _no_images_message(D.read_folder, tmp_path)
    assert "(folder: reads root/<class>/<image>, one level; move them up a level)" in msg, msg
    assert "DICOM files are not read by folder: (a PACS export often holds each photograph as both .dcm" in msg
    assert "folder: reads .bmp" in msg, msg
