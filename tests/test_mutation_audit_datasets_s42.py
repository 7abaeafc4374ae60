"""Mutation audit (session 42, helper H): the user-data and public-fundus dataset readers.

Audited: ``uopsl.train.datasets.generic`` (``read_folder``, ``CsvLayout`` and its header inference,
``read_csv``, ``cell_path``, ``synthetic_classes``, ``read_synthetic``) and
``uopsl.train.datasets.fundus_sets`` (APTOS, ODIR-5K, RFMiD, IDRiD, MESSIDOR-2 and the grade-to-class
mapping they share). Single-point mutants of those two files were run, each in a scratch tree shadowing only
the mutated module, against tests/test_data.py, tests/test_dataset_readers_review.py,
tests/test_dataset_specs.py, tests/test_trainfix_octdl_unlisted.py and the ``synthetic_classes`` test of
tests/test_validate_release.py. Each test below kills at least one mutant that survived them; its docstring
names the mutant(s) and what a user would have suffered. Expected labels are worked out by hand from the
published meaning of each dataset's columns, never by calling the reader another way. Every dataset is a
handful of 16-pixel images written into ``tmp_path``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

import fixtures_data as fx
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train import data as D
from uopsl.train.datasets.generic import synthetic_classes


def _table(root: Path, text: str, images: int = 2, name: str = "labels.csv") -> Path:
    """``text`` as ``root/name`` next to ``img/0.jpg`` .. ``img/<images-1>.jpg``."""
    for i in range(images):
        fx.write_image(root / "img" / f"{i}.jpg", seed=i)
    (root / name).write_text(text, encoding="utf-8")
    return root / name


# -- read_folder ------------------------------------------------------------------------------------------------


def test_a_folder_read_as_oct_gives_oct_samples(tmp_path: Path) -> None:
    """H02: read_folder dropped ``modality=`` when it made the samples. An OCT folder (``folder:DIR:modality=oct``)
    would have trained and been evaluated as fundus photographs: the B-scans cut by the fundus preprocessing."""
    fx.make_folder_dataset(tmp_path, {"normal": 2, "dme": 1})
    src = D.read_folder(tmp_path, modality="oct")
    assert [s.modality for s in src.samples] == ["oct", "oct", "oct"]
    assert src.options["modality"] == "oct"


def test_a_folder_with_classes_given_keeps_their_order_and_stays_single_label(tmp_path: Path) -> None:
    """H03, H45: with ``classes=`` given, the label space was made multi-label (H03: a folder-per-class set,
    one class per image, trained with independent sigmoids instead of a softmax) or the order given was replaced
    by the vocabulary's (H45: output index 0 would not be the class the user listed first)."""
    fx.make_folder_dataset(tmp_path, {"normal": 1, "dr": 2})
    src = D.read_folder(tmp_path, classes=("dr", "normal"))
    assert src.label_space == D.LabelSpace(("dr", "normal"), False)
    assert src.targets().tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # dr/img0, dr/img1, normal/img0


# -- CsvLayout --------------------------------------------------------------------------------------------------


def test_a_layout_that_cannot_be_read_is_refused_when_made() -> None:
    """H06, H07, H08: a ``label_columns`` given as one string (H06: its letters became the 0/1 columns, and the
    CSV was said to miss columns 'd' and 'r'), a modality outside fundus/oct (H07) or an empty separator (H08: a
    bare ValueError from ``str.split`` on the first row) were accepted by CsvLayout; each is a ConfigError
    saying what is wrong before any file is read."""
    with pytest.raises(ConfigError, match=r"label_columns must be a tuple of column names, got 'dr'"):
        D.CsvLayout(label_columns="dr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"modality must be one of \('fundus', 'oct'\), got 'xray'"):
        D.CsvLayout(label_column="label", modality="xray")
    with pytest.raises(ConfigError, match="separator must be a non-empty string"):
        D.CsvLayout(multi_label_column="labels", separator="")


@pytest.mark.parametrize("header", ["path,diagnosis", "file,label", "file,labels"])
def test_a_header_lacking_path_or_a_label_column_is_refused_as_a_whole(tmp_path: Path, header: str) -> None:
    """H09: header inference needed 'path' *and* no label column to refuse (``and`` for ``or``). A CSV with a
    path but its labels under another name (or the labels but no 'path') was read with columns it does not
    have: one 'column ... is empty' error per row instead of the one error naming the columns it needs."""
    table = _table(tmp_path, f"{header}\nimg/0.jpg,dr\nimg/1.jpg,normal\n")
    with pytest.raises(DataError) as err:
        D.read_csv(table)
    msg = str(err.value)
    assert msg.startswith(f"{table}: cannot tell the layout from columns {header.split(',')}")
    assert "expected a 'path' column and a 'label'" in msg


def test_a_modality_column_is_read_without_a_layout(tmp_path: Path) -> None:
    """H13: ``CsvLayout.infer`` left out the ``modality`` column. A ``csv:FILE`` listing OCT scans beside
    photographs would have read every row as fundus, so the B-scans went through the fundus preprocessing."""
    table = _table(tmp_path, "path,label,modality\nimg/0.jpg,dme,oct\nimg/1.jpg,normal,fundus\n")
    src = D.read_csv(table)
    assert [(s.path.name, s.modality) for s in src.samples] == [("0.jpg", "oct"), ("1.jpg", "fundus")]


# -- label cells ------------------------------------------------------------------------------------------------


def test_a_class_named_twice_in_one_labels_cell_counts_once(tmp_path: Path) -> None:
    """H16: the ';'-joined names of a cell were not de-duplicated. ``dr;dme;dr`` gave the image 'dr' twice, so
    the class counts a report and the class weights use said 3 dr images where the table has 2."""
    table = _table(tmp_path, "path,labels\nimg/0.jpg,dr;dme;dr\nimg/1.jpg, dr ;dr\n")
    src = D.read_csv(table)
    assert [s.labels for s in src.samples] == [("dr", "dme"), ("dr",)]
    assert src.counts() == {"dr": 2, "dme": 1}


@pytest.mark.parametrize("cell", [";", " ; ; "])
def test_a_labels_cell_of_separators_only_is_refused_naming_its_row(tmp_path: Path, cell: str) -> None:
    """H17: a ``labels`` cell holding separators and no name was read as an image with no class at all, trained
    as negative for every class, when the table says nothing about it; it is an error naming file and row."""
    table = _table(tmp_path, f"path,labels\nimg/0.jpg,dr\nimg/1.jpg,{cell}\n")
    said = r", row 2 \(line 3\): column 'labels' holds no class name"
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}{said}"):
        D.read_csv(table)


def test_zero_one_columns_read_the_spellings_spreadsheets_write(tmp_path: Path) -> None:
    """H19, H20, H21: in 0/1 columns, 'TRUE'/'Yes' (H19: case no longer folded), '1.0' (H20: what pandas writes
    for a float column) or an empty cell (H21: a blank meaning 0) were refused as 'expected 0 or 1', so a table
    saved from Excel or pandas could not be read at all."""
    table = _table(tmp_path, "path,dr,dme\nimg/0.jpg,1.0,\nimg/1.jpg,TRUE,Yes\nimg/2.jpg,0.0,FALSE\nimg/3.jpg,,No\n",
                   images=4)
    src = D.read_csv(table, D.CsvLayout(label_columns=("dr", "dme"), none_label="normal"))
    assert [s.labels for s in src.samples] == [("dr",), ("dr", "dme"), ("normal",), ("normal",)]


# -- read_csv: classes, paths, patients, eyes, modality ----------------------------------------------------------


def test_classes_given_for_zero_one_columns_set_the_output_order(tmp_path: Path) -> None:
    """H25: for 0/1 columns the label space was always built from the column names (vocabulary order), so the
    ``classes=`` a user gave to fix the model's output order (e.g. to match an earlier model) were ignored."""
    table = _table(tmp_path, "path,dr,dme\nimg/0.jpg,1,0\nimg/1.jpg,0,0\n")
    src = D.read_csv(table, D.CsvLayout(label_columns=("dr", "dme"), none_label="normal"),
                     classes=("dme", "dr", "normal"))
    assert src.label_space.classes == ("dme", "dr", "normal")
    assert src.targets().tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_image_root_is_relative_to_the_csv_folder_not_the_current_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """H26: a relative ``image_root`` was read against the current folder. Run from anywhere but the table's
    folder, every row's image was reported missing (or, worse, a same-named folder there was read)."""
    data = tmp_path / "data"
    for i in range(2):
        fx.write_image(data / "photos" / f"{i}.jpg", seed=i)
    (data / "labels.csv").write_text("path,label\n0.jpg,dr\n1.jpg,normal\n", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    src = D.read_csv(data / "labels.csv", D.CsvLayout(label_column="label", image_root="photos"))
    assert [s.path for s in src.samples] == [data / "photos" / "0.jpg", data / "photos" / "1.jpg"]


def test_an_unknown_modality_cell_is_a_data_error_naming_its_row(tmp_path: Path) -> None:
    """H27: a modality cell other than fundus/oct reached Sample, whose ConfigError names neither the file nor the
    row; the user could not find the cell to fix in a table of thousands."""
    table = _table(tmp_path, "path,label,modality\nimg/0.jpg,dr,fundus\nimg/1.jpg,dme,OCT\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}, row 2 \(line 3\): modality 'OCT'; "
                                        r"expected one of \['fundus', 'oct'\]"):
        D.read_csv(table)


def test_a_blank_patient_cell_is_no_patient(tmp_path: Path) -> None:
    """H28: a blank patient cell became the patient '' instead of None, so every image without a patient id
    formed ONE group: a split or fold moved them all to one side instead of spreading them image by image."""
    table = _table(tmp_path, "path,label,patient\nimg/0.jpg,dr,\nimg/1.jpg,normal,\nimg/2.jpg,dr,P7\n", images=3)
    src = D.read_csv(table)
    assert [s.patient for s in src.samples] == [None, None, "P7"]
    keys = D.group_keys(src.samples)
    assert keys[0] != keys[1]


def test_an_unrecognised_eye_cell_is_refused_naming_its_row(tmp_path: Path) -> None:
    """H29: read_csv parsed the eye column leniently; an eye written 'both' or 'OU' became 'unknown eye' without
    a word, where the table says something the reader does not understand."""
    table = _table(tmp_path, "path,label,eye\nimg/0.jpg,dr,OD\nimg/1.jpg,normal,OU\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}, row 2 \(line 3\): eye 'OU' is not recognised"):
        D.read_csv(table)


def test_a_file_whose_name_holds_a_backslash_is_read_as_named(tmp_path: Path) -> None:
    """H32: a path cell holding a backslash was always read as a Windows path. On Linux, where a backslash is an
    ordinary character in a file name, a file named exactly as the cell was reported missing."""
    fx.write_image(tmp_path / "scan\\0.jpg", seed=0)
    (tmp_path / "labels.csv").write_text("path,label\nscan\\0.jpg,dr\n", encoding="utf-8")
    src = D.read_csv(tmp_path / "labels.csv")
    assert [s.path.name for s in src.samples] == ["scan\\0.jpg"]


# -- the synthetic generator's CSV ----------------------------------------------------------------------------------


def _synthetic_rows(root: Path, rows: list[str]) -> Path:
    """``labels.csv`` with the generator's columns and ``rows`` (path cells img/<i>.jpg), images written."""
    header = "path,patient,eye,modality,labels,masks\n"
    return _table(root, header + "".join(r + "\n" for r in rows), images=len(rows))


def test_synthetic_rows_blank_patient_unknown_eye_and_modality(tmp_path: Path) -> None:
    """H38, H41, H42: in ``uopsl synth``'s labels.csv a modality cell outside fundus/oct reached Sample (H38: a
    ConfigError naming no row), a blank patient became the patient '' (H41: every patient-less image one
    split group) and an eye cell not understood became 'unknown' silently (H42)."""
    table = _synthetic_rows(tmp_path, ["img/0.jpg,,left,fundus,dr,", "img/1.jpg,,R,oct,normal,"])
    src = D.read_synthetic(table)
    assert [(s.patient, s.eye, s.modality) for s in src.samples] == [(None, "left", "fundus"), (None, "right", "oct")]
    bad_mod = _synthetic_rows(tmp_path / "m", ["img/0.jpg,s1,left,fundus,dr,", "img/1.jpg,s1,right,xray,dr,"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad_mod))}, row 2 \(line 3\): modality 'xray'"):
        D.read_synthetic(bad_mod)
    bad_eye = _synthetic_rows(tmp_path / "e", ["img/0.jpg,s1,up,fundus,dr,"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad_eye))}, row 1 \(line 2\): eye 'up' is not recognised"):
        D.read_synthetic(bad_eye)


def test_synthetic_missing_skip_leaves_out_rows_whose_image_is_gone(tmp_path: Path) -> None:
    """H43: read_synthetic did not pass ``missing=`` on, so ``synthetic:DIR:missing=skip`` still stopped at the
    first deleted image instead of reading the rest and counting what it left out."""
    table = _synthetic_rows(tmp_path, ["img/0.jpg,s1,left,fundus,dr,", "img/1.jpg,s2,left,fundus,normal,"])
    (tmp_path / "img" / "0.jpg").unlink()
    src = D.read_synthetic(table, missing="skip")
    assert [s.path.name for s in src.samples] == ["1.jpg"] and src.dropped == {"missing_image": 1}


def test_a_synthetic_csv_lacking_columns_is_refused_by_name(tmp_path: Path) -> None:
    """H46: the generator's columns were not required. A labels.csv without ``modality`` and ``eye`` columns
    gave one 'column is empty' error for row 1, which the user cannot fix by filling a cell; the error names
    the missing columns."""
    table = _table(tmp_path, "path,patient,labels,masks\nimg/0.jpg,s1,dr,\n", images=1)
    with pytest.raises(DataError, match=r"missing column\(s\) \['eye', 'modality'\]"):
        D.read_synthetic(table)


def test_synthetic_classes_need_a_list_of_non_empty_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """H35: ``config.classes`` holding an empty name or a number was taken as is: an empty class name, which the
    label space refuses later with no word about synth_config.json. It is ignored with a warning instead."""
    for bad in (["dr", ""], ["dr", 3]):
        (tmp_path / "synth_config.json").write_text(json.dumps({"config": {"classes": bad}}), encoding="utf-8")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uopsl.train.datasets.generic"):
            assert synthetic_classes(tmp_path) is None
        assert "lists no classes (config.classes)" in caplog.text


# -- the DR-graded public sets ------------------------------------------------------------------------------------


def _idrid(root: Path, rows: list[tuple[str, int, int]]) -> Path:
    """The 'B. Disease Grading' layout with (image name, retinopathy grade, risk of macular edema) rows."""
    for i, (name, _, _) in enumerate(rows):
        fx.write_image(root / "1. Original Images" / "a. Training Set" / f"{name}.jpg", seed=i)
    fx.write_csv(root / "2. Groundtruths" / fx.IDRID_CSV, ["Image name", "Retinopathy grade", "Risk of macular edema "],
                 [list(r) for r in rows])
    return root


# (grade, risk of macular edema) -> labels per task, by hand: referable = grade >= 2 or risk 2 (DME within one
# disc diameter of the macula); any_dr = dr for grade >= 1 else normal; dr_dme adds dme for risk 2 only.
IDRID_ROWS = [("IDRiD_A", 0, 2), ("IDRiD_B", 1, 2), ("IDRiD_C", 1, 1), ("IDRiD_D", 4, 0)]
IDRID_EXPECTED = {
    "referable": [("referable_dr",), ("referable_dr",), ("non_referable",), ("referable_dr",)],
    "any_dr": [("normal",), ("dr",), ("dr",), ("dr",)],
    "grade": [("normal",), ("mild_npdr",), ("mild_npdr",), ("pdr",)],
    "dr_dme": [("dme",), ("dr", "dme"), ("dr",), ("dr",)],
}


@pytest.mark.parametrize("task", list(IDRID_EXPECTED))
def test_idrid_dme_without_moderate_dr_is_referable_and_only_dr_dme_names_it(tmp_path: Path, task: str) -> None:
    """H54, H55: referable disease was graded on the DR grade alone (H54: an eye with clinically significant
    macular edema but mild or no retinopathy, the case screening must not miss, labelled non_referable), and
    the ``dme`` class leaked into tasks that do not have it (H55: ``any_dr`` refused an IDRiD set with any
    DME image as holding an unknown label 'dme')."""
    src = D.read_idrid(_idrid(tmp_path, IDRID_ROWS), task=task)
    assert [s.labels for s in src.samples] == IDRID_EXPECTED[task]


def _messidor(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """messidor_data.csv with (image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable) rows."""
    for i, (name, *_) in enumerate(rows):
        fx.write_image(root / "IMAGES" / name, seed=i)
    fx.write_csv(root / "messidor_data.csv",
                 ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
                 [list(r) for r in rows])
    return root


def _rfmid(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A flat RFMiD training split with the codes DR and ARMD only: (ID, Disease_Risk, DR, ARMD) rows."""
    for i, (image_id, *_) in enumerate(rows):
        fx.write_image(root / "Training" / f"{image_id}.png", seed=i)
    fx.write_csv(root / "RFMiD_Training_Labels.csv", ["ID", "Disease_Risk", "DR", "ARMD"], [list(r) for r in rows])
    return root


def _bad_aptos(root: Path) -> tuple[Path, str]:
    fx.make_aptos(root, grades=(0, 5))
    return root / "train.csv", r"row 2 \(line 3\): column 'diagnosis' holds '5'; expected one of \[0, 1, 2, 3, 4\]"


def _bad_idrid_grade(root: Path) -> tuple[Path, str]:
    _idrid(root, [("IDRiD_A", 1, 0), ("IDRiD_B", 5, 0)])
    return root / "2. Groundtruths" / fx.IDRID_CSV, r"row 2 \(line 3\): column 'Retinopathy grade' holds '5'"


def _bad_idrid_risk(root: Path) -> tuple[Path, str]:
    _idrid(root, [("IDRiD_A", 1, 3)])
    return (root / "2. Groundtruths" / fx.IDRID_CSV,
            r"row 1 \(line 2\): column 'Risk of macular edema' holds '3'; expected one of \[0, 1, 2\]")


def _bad_messidor_grade(root: Path) -> tuple[Path, str]:
    _messidor(root, [("a.png", "0", "0", "1"), ("b.png", "5", "0", "1")])
    return root / "messidor_data.csv", r"row 2 \(line 3\): column 'adjudicated_dr_grade' holds '5'"


def _bad_messidor_dme(root: Path) -> tuple[Path, str]:
    _messidor(root, [("a.png", "1", "2", "1")])
    return root / "messidor_data.csv", r"row 1 \(line 2\): column 'adjudicated_dme' holds '2'; expected one of \[0, 1\]"


def _bad_messidor_gradable(root: Path) -> tuple[Path, str]:
    _messidor(root, [("a.png", "1", "0", "2")])
    return root / "messidor_data.csv", r"row 1 \(line 2\): column 'adjudicated_gradable' holds '2'"


def _bad_rfmid_code(root: Path) -> tuple[Path, str]:
    _rfmid(root, [("1", "1", "1", "0"), ("2", "1", "0", "2")])
    return root / "RFMiD_Training_Labels.csv", r"row 2 \(line 3\): column 'ARMD' holds '2'; expected one of \[0, 1\]"


def _bad_rfmid_risk(root: Path) -> tuple[Path, str]:
    _rfmid(root, [("1", "yes", "1", "0")])
    return root / "RFMiD_Training_Labels.csv", r"row 1 \(line 2\): column 'Disease_Risk' holds 'yes'"


BAD_GRADES = {
    "aptos-grade-5": (D.read_aptos, _bad_aptos),
    "idrid-grade-5": (D.read_idrid, _bad_idrid_grade),
    "idrid-risk-3": (D.read_idrid, _bad_idrid_risk),
    "messidor-grade-5": (D.read_messidor2, _bad_messidor_grade),
    "messidor-dme-2": (D.read_messidor2, _bad_messidor_dme),
    "messidor-gradable-2": (D.read_messidor2, _bad_messidor_gradable),
    "rfmid-code-2": (D.read_rfmid, _bad_rfmid_code),
    "rfmid-risk-yes": (D.read_rfmid, _bad_rfmid_risk),
}


@pytest.mark.parametrize("case", list(BAD_GRADES))
def test_a_grade_outside_the_published_scale_is_refused_naming_file_row_and_column(tmp_path: Path, case: str) -> None:
    """H56, H96, H79, H94, H95, H82, H74, H97: each grade column accepted one value past its published scale
    (APTOS/IDRiD/MESSIDOR-2 DR grade 5, IDRiD edema risk 3, MESSIDOR-2 DME 2) or read its 0/1 cells by
    comparing with '1' (MESSIDOR-2 gradable, RFMiD disease and Disease_Risk columns): a corrupt or shifted table
    trained on invented labels (grade 5 as referable, 'yes' as no risk) instead of stopping at the cell."""
    reader, build = BAD_GRADES[case]
    table, said = build(tmp_path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}, {said}"):
        reader(tmp_path)


def test_rfmid_disease_risk_without_a_disease_column_is_other_not_normal(tmp_path: Path) -> None:
    """H72: a row with Disease_Risk=1 and no disease column set was labelled ``normal``: a photograph the graders
    called diseased (a rare finding RFMiD has no column for) trained as a healthy eye."""
    src = D.read_rfmid(_rfmid(tmp_path, [("1", "1", "0", "0"), ("2", "0", "0", "0"), ("3", "1", "0", "1")]))
    assert [s.labels for s in src.samples] == [("other",), ("normal",), ("amd",)]
    assert [s.extra["disease_risk"] for s in src.samples] == [1, 0, 1]


def _gone(root: Path, name: str) -> None:
    next(p for p in sorted(root.rglob(name)) if p.is_file()).unlink()


MISSING_SKIP = {
    "aptos": (D.read_aptos, fx.make_aptos, "0001c1434d8d7.png", 5),
    "rfmid": (D.read_rfmid, fx.make_rfmid, "2.png", 4),
    "idrid": (D.read_idrid, fx.make_idrid, "IDRiD_002.jpg", 3),
    "messidor2": (D.read_messidor2, fx.make_messidor2, "20051020_43808_0100_PP.png", 2),
}


@pytest.mark.parametrize("kind", list(MISSING_SKIP))
def test_public_readers_pass_missing_skip_on(tmp_path: Path, kind: str) -> None:
    """H57, H77, H81, H86: APTOS, RFMiD, IDRiD and MESSIDOR-2 did not pass ``missing=`` to the collector, so
    ``aptos:DIR:missing=skip`` (a mirror missing a few images) still stopped at the first absent file."""
    reader, make, name, left = MISSING_SKIP[kind]
    make(tmp_path)
    _gone(tmp_path, name)
    src = reader(tmp_path, missing="skip")
    assert len(src) == left and src.dropped.get("missing_image") == 1
    assert name not in {s.path.name for s in src.samples}


def test_images_dir_is_where_odir_rfmid_and_idrid_look(tmp_path: Path) -> None:
    """H69, H75, H80: ``images_dir=`` was ignored by ODIR (always preprocessed_images/), RFMiD and IDRiD (their
    default folders): a user whose images sit elsewhere (the ODIR-5K 'Training Images' folder) got every image
    missing, or worse, the default folder's files."""
    odir = fx.make_odir(tmp_path / "odir")
    (odir / "preprocessed_images").rename(odir / "Training Images")
    odir_src = D.read_odir(odir, images_dir="Training Images")
    assert {s.path.parent for s in odir_src.samples} == {odir / "Training Images"}
    rfmid = fx.make_rfmid(tmp_path / "rfmid")
    (rfmid / "Training").rename(rfmid / "pics")
    assert {s.path.parent for s in D.read_rfmid(rfmid, images_dir="pics").samples} == {rfmid / "pics"}
    idrid = fx.make_idrid(tmp_path / "idrid")
    (idrid / "1. Original Images" / "a. Training Set").rename(idrid / "jpgs")
    assert {s.path.parent for s in D.read_idrid(idrid, images_dir="jpgs").samples} == {idrid / "jpgs"}


def test_an_images_dir_that_is_no_folder_is_named(tmp_path: Path) -> None:
    """H87: an ``images_dir=`` naming no folder was not reported as such; the user read that the first image was
    missing, with no word that the folder they named does not exist."""
    fx.make_rfmid(tmp_path)
    with pytest.raises(DataError, match=rf"^RFMiD: image folder {re.escape(str(tmp_path / 'Trainig'))} not found; "
                                        r"check images_dir"):
        D.read_rfmid(tmp_path, images_dir="Trainig")


def test_messidor_exam_list_in_the_parent_folder_pairs_the_eyes(tmp_path: Path) -> None:
    """H83: ``messidor-2.csv`` was only looked for in the dataset folder, not in its parent as documented (the
    ADCIS archive puts it beside the image folder): the two eyes of an exam were separate groups and could
    land on both sides of a split."""
    root = _messidor(tmp_path / "messidor", [("a.png", "0", "0", "1"), ("b.png", "2", "0", "1")])
    (tmp_path / "messidor-2.csv").write_text("left;right\na.tif;b.tif\n", encoding="utf-8")
    src = D.read_messidor2(root)
    assert [(s.patient, s.eye) for s in src.samples] == [("a", "left"), ("a", "right")]


# -- ODIR-5K ------------------------------------------------------------------------------------------------------


def _odir(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """full_df.csv with (ID, left keywords, right keywords, filename) rows, images in preprocessed_images/."""
    for i, (_, _, _, filename) in enumerate(rows):
        fx.write_image(root / "preprocessed_images" / filename, seed=i)
    fx.write_csv(root / "full_df.csv", ["ID", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords", "filename"],
                 [list(r) for r in rows])
    return root


def test_odir_keywords_are_matched_whatever_their_case_and_spacing() -> None:
    """H62, H63: keywords were matched without folding case (H63: 'Cataract' became 'other') or without
    collapsing inner spaces (H62: 'diabetic  retinopathy', two spaces, became 'other'): a disease the
    grader wrote down trained as an unrelated finding."""
    assert D.odir_keyword_codes("Moderate Non Proliferative Retinopathy\uff0cCataract") == (("D", "C"), ())
    assert D.odir_keyword_codes("diabetic  retinopathy ,  lens  dust") == (("D",), ("lens dust",))


def test_an_odir_photograph_marked_not_fundus_is_left_out_whatever_else_it_says(tmp_path: Path) -> None:
    """H65: a photograph was left out as not a fundus only when every remark about it said so; one marked
    'anterior segment image' with 'lens dust' and a disease keyword (both occur in full_df.csv) trained as a
    fundus photograph of that disease."""
    left = "anterior segment image\uff0clens dust\uff0ccataract"
    root = _odir(tmp_path, [("7", left, "normal fundus", "7_left.jpg"), ("7", left, "normal fundus", "7_right.jpg")])
    src = D.read_odir(root)
    assert [(s.path.name, s.labels) for s in src.samples] == [("7_right.jpg", ("normal",))]
    assert src.dropped == {"not_fundus": 1}


def test_an_aptos_row_without_an_id_is_refused_even_with_missing_skip(tmp_path: Path) -> None:
    """H58: an empty ``id_code`` cell was read as the image ``train_images/.png``: reported as a missing image,
    and with ``missing=skip`` left out silently, where the table itself is broken at that row."""
    fx.make_aptos(tmp_path, grades=(0, 2))
    table = tmp_path / "train.csv"
    table.write_text(table.read_text().replace("0001c1434d8d7,", ",", 1))
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}, row 2 \(line 3\): column 'id_code' is empty"):
        D.read_aptos(tmp_path, missing="skip")


def test_an_odir_file_name_ending_in_left_or_right_in_capitals_names_its_eye(tmp_path: Path) -> None:
    """H71: the eye was read from the file name's case as written; a mirror that saved '8_Left.jpg' was refused
    as naming no eye, although its keywords column is plain."""
    root = _odir(tmp_path, [("8", "cataract", "normal fundus", "8_Left.jpg"),
                            ("8", "cataract", "normal fundus", "8_RIGHT.jpg")])
    src = D.read_odir(root)
    assert [(s.eye, s.labels) for s in src.samples] == [("left", ("cataract",)), ("right", ("normal",))]


# -- RFMiD, IDRiD, MESSIDOR-2: what is refused up front ----------------------------------------------------------


def test_rfmid_occlusions_map_to_their_own_vessel(tmp_path: Path) -> None:
    """H99: the RFMiD code table sent one occlusion code to the other vessel (CRAO, central retinal ARTERY
    occlusion, to 'rvo'): arterial occlusions trained as vein occlusions. By hand: BRVO/CRVO are rvo,
    BRAO/CRAO are rao."""
    codes = ["BRVO", "CRVO", "BRAO", "CRAO"]
    rows = [[str(i + 1), "1", *(int(j == i) for j in range(4))] for i in range(4)]
    for i in range(4):
        fx.write_image(tmp_path / "Training" / f"{i + 1}.png", seed=i)
    fx.write_csv(tmp_path / "RFMiD_Training_Labels.csv", ["ID", "Disease_Risk", *codes], rows)
    src = D.read_rfmid(tmp_path)
    assert [s.labels for s in src.samples] == [("rvo",), ("rvo",), ("rao",), ("rao",)]


def test_an_rfmid_table_without_disease_columns_is_refused(tmp_path: Path) -> None:
    """H76: a label CSV holding only ID and Disease_Risk (a summary export) was read, every image 'normal' or
    'other', instead of being refused as having no disease columns."""
    fx.write_image(tmp_path / "Training" / "1.png")
    table = fx.write_csv(tmp_path / "RFMiD_Training_Labels.csv", ["ID", "Disease_Risk"], [["1", "1"]])
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}: no disease columns after ID, Disease_Risk"):
        D.read_rfmid(tmp_path)


def test_a_vocabulary_or_split_not_offered_is_a_config_error(tmp_path: Path) -> None:
    """H88, H89, H90: a misspelt ``vocabulary=`` (e.g. 'Raw') was read as the raw codes without a word (H88), and
    a split outside train/val/test (IDRiD H89, RFMiD H90) ended in a bare KeyError instead of the choices."""
    fx.make_odir(tmp_path / "odir")
    with pytest.raises(ConfigError, match=r"vocabulary must be one of \('mapped', 'raw'\), got 'Raw'"):
        D.read_odir(tmp_path / "odir", vocabulary="Raw")
    fx.make_rfmid(tmp_path / "rfmid")
    with pytest.raises(ConfigError, match=r"vocabulary must be one of \('mapped', 'raw'\), got 'codes'"):
        D.read_rfmid(tmp_path / "rfmid", vocabulary="codes")
    with pytest.raises(ConfigError, match=r"RFMiD split must be one of \['train', 'val', 'test'\], got 'valid'"):
        D.read_rfmid(tmp_path / "rfmid", split="valid")
    fx.make_idrid(tmp_path / "idrid")
    with pytest.raises(ConfigError, match=r"IDRiD split must be one of \['train', 'test'\], got 'val'"):
        D.read_idrid(tmp_path / "idrid", split="val")


def test_a_messidor_exam_line_with_three_names_is_refused(tmp_path: Path) -> None:
    """H84: an exam line of messidor-2.csv naming three images was accepted and its third name dropped (only two
    were paired), where the list is broken at that line; it is refused naming the line."""
    root = _messidor(tmp_path, [("a.png", "0", "0", "1"), ("b.png", "2", "0", "1")])
    (root / "messidor-2.csv").write_text("left;right\na.tif;b.tif\nc.tif;d.tif;e.tif\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"messidor-2\.csv, line 3: expected two image names 'left;right'"):
        D.read_messidor2(root)
