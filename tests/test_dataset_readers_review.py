"""Review of the dataset readers: label spellings, folder: skips, repeated rows, joined names, paths.

Each test reproduces a defect a reviewer found (scripts under the review's
t1, t3, t4, t10, t14, t15 and t17 cases) and checks the reader now says what
it received, what it expected and what to do, instead of going on quietly.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import pytest

import fixtures_data as fx
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train import data as D
from uopsl.train.datasets import fundus_sets


def _table(root: Path, text: str, images: int = 4, name: str = "labels.csv") -> Path:
    """``text`` as ``root/name`` next to ``img/0.jpg`` .. ``img/<images-1>.jpg``."""
    for i in range(images):
        fx.write_image(root / "img" / f"{i}.jpg", seed=i)
    (root / name).write_text(text, encoding="utf-8")
    return root / name


# -- 1. two spellings of one class ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "said"),
    [
        (("normal", "Normal", "DR", "dr"), ["'Normal' (1 row) and 'normal' (1 row) are all class 'normal'",
                                            "'DR' (1 row) and 'dr' (1 row) are all class 'dr'"]),
        (("healthy", "normal", "diabetic retinopathy", "dr"),
         ["'healthy' (1 row) and 'normal' (1 row) are all class 'normal'",
          "'diabetic retinopathy' (1 row) and 'dr' (1 row) are all class 'dr'"]),
    ],
)
def test_two_spellings_of_one_class_are_refused_with_their_row_counts(tmp_path, cells, said):
    csv_path = _table(tmp_path, "path,label\n" + "".join(f"img/{i}.jpg,{c}\n" for i, c in enumerate(cells)))
    with pytest.raises(ConfigError) as err:
        D.read_csv(csv_path)
    msg = str(err.value)
    assert str(csv_path) in msg and all(s in msg for s in said), msg
    assert "Use one spelling per class" in msg and "\n" not in msg


def test_two_spellings_as_class_folders_are_refused(tmp_path):
    fx.make_folder_dataset(tmp_path, {"healthy": 2, "normal": 1, "dr": 1})
    with pytest.raises(ConfigError, match=r"'healthy' \(2 images\) and 'normal' \(1 image\) are all class "
                                          r"'normal'.*rename the class folders"):
        D.read_folder(tmp_path)


def test_distinct_classes_and_a_fixed_label_space_still_read(tmp_path):
    csv_path = _table(tmp_path, "path,labels\nimg/0.jpg,normal\nimg/1.jpg,dr;dme\nimg/2.jpg,DME\n", images=3)
    with pytest.raises(ConfigError, match="'DME' .* and 'dme' .* are all class 'dme'"):
        D.read_csv(csv_path)  # also across the names of a multi-label cell
    ok = _table(tmp_path, "path,label\nimg/0.jpg,normal\nimg/1.jpg,dr\nimg/2.jpg,macular_hole\n", 3, "ok.csv")
    assert D.read_csv(ok).label_space.classes == ("normal", "dr", "macular_hole")


# -- 2. folder: skips sub-folders and other file types, with a warning and a count -----------------------------


def test_folder_warns_about_and_counts_nested_images_and_other_file_types(tmp_path, caplog):
    for i in range(3):
        fx.write_image(tmp_path / "normal" / f"n{i}.jpg", seed=i)
    fx.write_image(tmp_path / "normal" / "N9.JPG", seed=9)
    for i in range(4):
        fx.write_image(tmp_path / "dr" / "clinicA" / f"d{i}.jpg", seed=10 + i)
    fx.write_image(tmp_path / "dr" / "top.png", seed=20)
    for i in range(5):
        fx.write_image(tmp_path / "dme" / "left" / f"m{i}.jpg", seed=30 + i)
    (tmp_path / "normal" / "scan.heic").write_bytes(b"x")
    (tmp_path / "normal" / "scan2.dcm").write_bytes(b"x")
    (tmp_path / "normal" / "Thumbs.db").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="uopsl.train.datasets.core"):
        src = D.read_folder(tmp_path)
    assert src.counts() == {"normal": 4, "dr": 1}
    assert src.dropped == {"file_in_subfolder": 9, "not_an_image:.heic": 1, "not_an_image:.dcm": 1}
    warned = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert any(str(tmp_path / "dme") in m and "left/ (5 files)" in m for m in warned), warned
    assert any(str(tmp_path / "dr") in m and "clinicA/ (4 files)" in m for m in warned), warned
    assert any(str(tmp_path / "normal") in m and ".dcm: 1, .heic: 1" in m and "DICOM" in m for m in warned), warned


def test_a_folder_of_dicom_files_says_folder_does_not_read_dicom_and_what_does(tmp_path):
    for c in ("normal", "dr"):
        for i in range(3):
            (tmp_path / c).mkdir(exist_ok=True)
            (tmp_path / c / f"IM{i:04d}.dcm").write_bytes(b"\0" * 132 + b"DICM")
    with pytest.raises(DataError) as err:
        D.read_folder(tmp_path)
    msg = str(err.value)
    assert "no images found" in msg and "6 .dcm" in msg and "DICOM files are not read by folder:" in msg
    assert "csv:FILE" in msg and "pip install 'pydicom>=3,<4'" in msg and ".png" in msg


# -- 3. repeated rows ------------------------------------------------------------------------------------------


def test_a_row_repeating_an_image_with_the_same_labels_is_left_out_and_counted(tmp_path, caplog):
    csv_path = _table(tmp_path, "path,label\nimg/0.jpg,normal\n./img/0.jpg,normal\nimg//0.jpg,normal\nimg/1.jpg,dr\n"
                                "img/1.jpg,dr\n", images=2)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.datasets.core"):
        src = D.read_csv(csv_path)
    assert [s.path.name for s in src.samples] == ["0.jpg", "1.jpg"]
    assert src.dropped == {"duplicate_row": 3}
    assert any("3 row(s) left out because they repeat an earlier row" in r.getMessage()
               and f"{csv_path}, row 2 (line 3) repeats {csv_path}, row 1 (line 2)" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_row_repeating_an_image_with_other_labels_is_an_error_naming_both_rows(tmp_path):
    csv_path = _table(tmp_path, "path,label\nimg/0.jpg,normal\nimg/1.jpg,dr\nimg/0.jpg,dr\n", images=2)
    with pytest.raises(DataError) as err:
        D.read_csv(csv_path)
    msg = str(err.value)
    assert msg.startswith(f"{csv_path}, row 3 (line 4): image {tmp_path / 'img' / '0.jpg'} is listed again")
    assert f"by {csv_path}, row 1 (line 2)" in msg and "labels ['dr'] here, ['normal'] there" in msg
    assert "keep one of the rows" in msg


# -- 4. several names in one class name ------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "value"), [("dr;dme", "dr;dme"), ('"dr,dme"', "dr,dme"), ("dr|dme", "dr|dme")])
def test_a_label_cell_joining_names_is_refused_with_a_hint_to_the_labels_column(tmp_path, cell, value):
    csv_path = _table(tmp_path, f"path,label\nimg/0.jpg,{cell}\nimg/1.jpg,normal\n", images=2)
    with pytest.raises(DataError) as err:
        D.read_csv(csv_path)
    msg = str(err.value)
    assert msg.startswith(f"{csv_path}, row 1 (line 2): column 'label' holds {value!r}")
    assert "one class per row" in msg and "'labels' column" in msg and "joined by ';'" in msg


@pytest.mark.parametrize(("cell", "joiner"), [('"dr,dme"', ","), ("dr|dme", "|"), ('"normal;dr,dme"', ",")])
def test_a_labels_name_holding_a_comma_or_a_bar_is_refused(tmp_path, cell, joiner):
    csv_path = _table(tmp_path, f"path,labels\nimg/0.jpg,{cell}\nimg/1.jpg,normal\n", images=2)
    with pytest.raises(DataError, match=rf"row 1 \(line 2\): column 'labels' holds .*joined by '\{joiner}'; "
                                        r"expected names joined by ';' \(e\.g\. dr;dme\)"):
        D.read_csv(csv_path)
    joined = _table(tmp_path, "path,labels\nimg/0.jpg,dr;dme\nimg/1.jpg,normal\n", 2, "ok.csv")
    assert [s.labels for s in D.read_csv(joined).samples] == [("dr", "dme"), ("normal",)]


# -- 5. a semicolon-separated file -----------------------------------------------------------------------------


def test_a_semicolon_separated_csv_says_to_save_it_comma_separated(tmp_path):
    csv_path = _table(tmp_path, "path;label\r\nimg/0.jpg;normal\r\nimg/1.jpg;dr\r\n", images=2)
    for layout in (None, D.CsvLayout(label_column="label")):
        with pytest.raises(DataError) as err:
            D.read_csv(csv_path, layout)
        msg = str(err.value)
        assert "'path;label'" in msg and "semicolon-separated" in msg and "comma-separated CSV (UTF-8)" in msg
        assert "CsvLayout" not in msg


# -- 6. a path not found names the folder it was read against and a near match --------------------------------


def test_paths_relative_to_the_current_folder_are_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        fx.write_image(tmp_path / "data" / "img" / f"{i}.jpg", seed=i)
    (tmp_path / "data" / "labels.csv").write_text("path,label\ndata/img/0.jpg,normal\ndata/img/1.jpg,dr\n")
    with pytest.raises(DataError) as err:
        D.read_csv("data/labels.csv")
    msg = str(err.value)
    assert f"relative to the CSV's folder, {tmp_path / 'data'}" in msg
    assert "data/img/0.jpg exists relative to the current folder" in msg and "(here img/0.jpg)" in msg
    assert "2 of 2 rows name a missing image" in msg and "missing=skip" not in msg


def test_a_path_differing_in_letter_case_is_named_and_missing_skip_offered_when_rows_exist(tmp_path):
    fx.write_image(tmp_path / "images" / "img_0.jpg")
    fx.write_image(tmp_path / "images" / "img_1.jpg")
    (tmp_path / "labels.csv").write_text("path,label\nimages/img_1.jpg,dr\nImages\\IMG_0.JPG,normal\n")
    with pytest.raises(DataError) as err:
        D.read_csv(tmp_path / "labels.csv")
    msg = str(err.value)
    assert f"the disk holds {tmp_path / 'images' / 'img_0.jpg'}, which differs in letter case" in msg
    assert "missing=skip" in msg
    assert D.read_csv(tmp_path / "labels.csv", missing="skip").dropped == {"missing_image": 1}


def test_a_path_differing_in_unicode_form_is_named_not_used(tmp_path):
    nfd, nfc = unicodedata.normalize("NFD", "José.jpg"), unicodedata.normalize("NFC", "José.jpg")
    fx.write_image(tmp_path / "img" / nfd)
    if (tmp_path / "img" / nfc).exists():
        pytest.skip("this file system folds Unicode forms (APFS, HFS+): nothing to report")
    (tmp_path / "labels.csv").write_text(f"path,label\nimg/{nfc},dr\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"differs in Unicode form \(NFC/NFD\): rename the file or fix the path"):
        D.read_csv(tmp_path / "labels.csv")


# -- 7. read_aptos's docstring ---------------------------------------------------------------------------------


def test_read_aptos_docstring_names_every_task_it_takes():
    doc = fundus_sets.read_aptos.__doc__ or ""
    assert all(f"'{t}'" in doc for t in fundus_sets.GRADED_TASKS if t != "dr_dme")
