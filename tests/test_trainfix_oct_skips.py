"""The OCT readers count the files they skip, as folder: does (commit 02dc981).

OCT2017 and OCTDL (scanned) read class folders with the same helper as folder:, but did not pass it the
source's ``dropped`` counter: a file of another type or in a sub-folder of a class folder was warned about
in the log and then gone, the source's ``dropped`` empty, and a tree of nothing readable ended in a bare
"no images found" that did not say what had been found instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import fixtures_data as fx
from uopsl.runtime.errors import DataError
from uopsl.train import data as D


def _litter(folder: Path) -> None:
    """A class folder's usual strays: a phone's HEIC photo, a DICOM copy, a note, a sub-folder of scans."""
    (folder / "scan.heic").write_bytes(b"x")
    (folder / "scan.dcm").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    for i in range(3):
        fx.write_image(folder / "extra" / f"{folder.name}-9-{i}.jpeg", seed=40 + i)


def test_oct2017_warns_about_and_counts_skipped_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx.make_oct2017(tmp_path)
    _litter(tmp_path / "train" / "CNV")
    (tmp_path / "test" / "NORMAL" / "readme.md").write_text("x")
    with caplog.at_level(logging.WARNING):
        train = D.read_oct2017(tmp_path)
    assert train.counts() == {"normal": 2, "dme": 1, "amd": 3}  # what is read is unchanged
    assert train.dropped == {"not_an_image:.heic": 1, "not_an_image:.dcm": 1, "not_an_image:.txt": 1,
                             "file_in_subfolder": 3}
    assert train.describe()["dropped"] == train.dropped
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "train" / "CNV") in m and "extra/ (3 files)" in m and ".txt: 1" in m
               for m in warned), warned
    every = D.read_oct2017(tmp_path, split="all")  # each split's folders counted
    assert every.dropped["not_an_image:.md"] == 1 and every.dropped["file_in_subfolder"] == 3


def test_octdl_scanned_warns_about_and_counts_skipped_files(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    fx.make_octdl(tmp_path, with_csv=False)
    _litter(tmp_path / "AMD")
    with caplog.at_level(logging.WARNING):
        src = D.read_octdl(tmp_path)
    assert len(src) == 5
    assert src.dropped == {"not_an_image:.heic": 1, "not_an_image:.dcm": 1, "not_an_image:.txt": 1,
                           "file_in_subfolder": 3}
    assert any(str(tmp_path / "AMD") in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_an_oct_tree_of_nothing_readable_says_what_it_skipped(tmp_path: Path) -> None:
    for cls in ("CNV", "NORMAL"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / f"{cls}-1-1.dcm").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        D.read_oct2017(tmp_path)
    msg = str(err.value)
    assert "no images found" in msg and "2 .dcm" in msg and "DICOM" in msg, msg
