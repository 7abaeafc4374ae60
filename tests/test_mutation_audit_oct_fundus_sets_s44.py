"""Mutation audit (session 44, helper C): the public OCT and fundus dataset readers.

Audited: ``uopsl.train.datasets.oct_sets`` (OCT2017/Kermany, OCTDL from its labels CSV or its class folders) and
``uopsl.train.datasets.fundus_sets`` (APTOS, ODIR-5K, RFMiD, IDRiD, MESSIDOR-2; the parts the session-42 audit in
tests/test_mutation_audit_datasets_s42.py left). Single-point mutants (ids C01..) were applied one at a time in a
scratch tree shadowing only the mutated module, and run against tests/test_data.py,
tests/test_dataset_readers_review.py, tests/test_trainfix_oct_skips.py, tests/test_trainfix_octdl_unlisted.py,
tests/test_mutation_audit_datasets_s42.py and tests/test_dataset_specs.py. Each test below kills at least one
mutant that survived them; its docstring names the mutant(s) and what a user would have suffered. Expected
files, labels, patients and messages are worked out by hand from each dataset's published layout, never by
calling the reader another way. Every dataset is a handful of 16-pixel images written into ``tmp_path``.
Of 90 mutants, 44 survived those files; two are equivalent in practice (C34: ``vocabulary != 'raw'`` for
``== 'mapped'`` in the OCTDL scan, where no third vocabulary gets past ``_space``; C82: an exam-list header in
capitals read as one more exam named 'Left', which no MESSIDOR-2 image is called), the rest are killed here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fixtures_data as fx
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train import data as D

# -- OCT2017 ------------------------------------------------------------------------------------------------------


def test_oct2017_split_all_tags_each_scan_with_its_own_split(tmp_path: Path) -> None:
    """C22: with ``split='all'`` each scan's ``extra['split']`` said 'all' instead of the folder it came from, so
    a user who reads the whole set and holds out the published test scans (``extra['split'] == 'test'``) held out
    nothing and evaluated on training scans."""
    fx.make_oct2017(tmp_path)  # 6 scans in train/, 2 in test/
    src = D.read_oct2017(tmp_path, split="all")
    by_split = sorted((s.extra["split"], s.path.parent.parent.name) for s in src.samples)
    assert by_split == [("test", "test")] * 2 + [("train", "train")] * 6


def test_oct2017_and_octdl_are_single_label(tmp_path: Path) -> None:
    """C10: the OCT label spaces were made multi-label: a one-class-per-scan set trained with independent sigmoids
    instead of a softmax, and its outputs no longer summed to one."""
    fx.make_oct2017(tmp_path / "oct2017")
    fx.make_octdl(tmp_path / "octdl", with_csv=False)
    for src in (D.read_oct2017(tmp_path / "oct2017"), D.read_oct2017(tmp_path / "oct2017", vocabulary="findings"),
                D.read_octdl(tmp_path / "octdl"), D.read_octdl(tmp_path / "octdl", vocabulary="raw")):
        assert src.label_space.multi_label is False


def test_oct2017_unknown_split_is_a_config_error_listing_the_choices(tmp_path: Path) -> None:
    """C13: a misspelt split (``split=valid``) was not refused as an option: the user read that the folder
    ``valid`` was not found, as if the dataset were incomplete, with no word of the splits the reader takes."""
    fx.make_oct2017(tmp_path)
    with pytest.raises(ConfigError, match=r"OCT2017 split must be one of \['train', 'test', 'val', 'all'\], "
                                          r"got 'valid'"):
        D.read_oct2017(tmp_path, split="valid")


@pytest.mark.parametrize("stem", ["CNV-1016042-1 (1)", "CNV-1016042-1-copy", "CNV-1016042-1a"])
def test_oct2017_a_name_with_anything_after_the_scan_number_is_refused(tmp_path: Path, stem: str) -> None:
    """C06: a file name was checked only for its start: a browser's second download 'CNV-1016042-1 (1).jpeg' was
    read as another scan of that patient (the same image twice in training) instead of being refused, naming
    the file, as the module promises for a name outside <CLASS>-<patient>-<n>."""
    fx.make_oct2017(tmp_path)
    fx.write_image(tmp_path / "train" / "CNV" / f"{stem}.jpeg", seed=9)
    with pytest.raises(DataError, match=rf"{re.escape(stem)}\.jpeg: file name does not follow "
                                        r"<CLASS>-<patient>-<n> with CLASS=CNV"):
        D.read_oct2017(tmp_path)



def test_oct2017_all_with_no_split_folder_names_the_folder_it_expected(tmp_path: Path) -> None:
    """C86: ``split='all'`` on a folder holding no split folder (the user pointed one level too high or too low)
    ended in a bare 'no images found' instead of naming the train/ folder expected and where to point."""
    fx.write_image(tmp_path / "CNV" / "CNV-1-1.jpeg")
    with pytest.raises(DataError, match=rf"^OCT2017: {re.escape(str(tmp_path / 'train'))} not found; point at the "
                                        r"folder that holds train/ and test/"):
        D.read_oct2017(tmp_path, split="all")


def test_oct_readers_refuse_an_unknown_class_folder_naming_it(tmp_path: Path) -> None:
    """C88, C89: a class folder outside the dataset's classes (a mirror's 'Normal' or an extra 'OTHER') was not
    refused by name: OCT2017 stopped with a bare KeyError, OCTDL read its scans under a label it does not have."""
    fx.make_oct2017(tmp_path / "oct2017")
    fx.write_image(tmp_path / "oct2017" / "train" / "OTHER" / "OTHER-1-1.jpeg")
    with pytest.raises(DataError, match=r"train/OTHER: unknown label 'OTHER' \(class folder\); allowed labels: "
                                        r"\['CNV', 'DME', 'DRUSEN', 'NORMAL'\]"):
        D.read_oct2017(tmp_path / "oct2017")
    fx.make_octdl(tmp_path / "octdl", with_csv=False)
    fx.write_image(tmp_path / "octdl" / "CSR" / "csr_1_1.jpg")
    with pytest.raises(DataError, match=r"octdl/CSR: unknown label 'CSR' \(class folder\)"):
        D.read_octdl(tmp_path / "octdl")


# -- OCTDL --------------------------------------------------------------------------------------------------------

OCTDL_HEADER = ["file_name", "disease", "subcategory", "condition", "patient_id", "eye", "sex", "year",
                "image_width", "image_height"]


def _octdl_csv(root: Path, rows: list[list[object]], header: list[str] | None = None) -> Path:
    """``root/OCTDL_labels.csv`` with ``rows`` under OCTDL's header (or ``header``)."""
    return fx.write_csv(root / "OCTDL_labels.csv", header or OCTDL_HEADER, rows)


def test_octdl_refuses_the_findings_vocabulary_it_does_not_have(tmp_path: Path) -> None:
    """C25: ``vocabulary='findings'`` (OCT2017's) was accepted by OCTDL, which has no such table, and the read then
    stopped at the first scan with an unknown-label error instead of the ConfigError naming the choices."""
    fx.make_octdl(tmp_path, with_csv=False)
    with pytest.raises(ConfigError, match=r"vocabulary must be one of \['mapped', 'raw'\], got 'findings'"):
        D.read_octdl(tmp_path, vocabulary="findings")


def test_octdl_labels_csv_in_the_root_wins_over_one_beside_it(tmp_path: Path) -> None:
    """C27: with OCTDL_labels.csv both in the dataset folder and beside it (an old copy next to the archive), the
    one beside it was read: the patient ids (hence the patient-level split) came from the stale table."""
    root = fx.make_octdl(tmp_path / "OCTDL", with_csv=True)
    stale = [[f"{c.lower()}_{p}_{n}", c, "", "", "P9", "OD", "M", 2021, 16, 16]
             for c, p, n in (("AMD", "1047099", 1), ("AMD", "1047099", 2), ("DME", "1088513", 1), ("NO", "1021542", 1),
                             ("VID", "1099999", 1))]
    _octdl_csv(tmp_path, stale)
    src = D.read_octdl(root)
    assert [s.patient for s in src.samples] == ["1047099", "1047099", "1088513", "1021542", "1099999"]


def test_octdl_labels_csv_argument_names_the_table_read(tmp_path: Path) -> None:
    """C87: ``labels_csv=`` was ignored for the dataset folder (OCTDL_labels.csv read there whatever was asked): a
    user's corrected table, saved under another name beside the original, was not the one read."""
    root = fx.make_octdl(tmp_path, with_csv=True)
    rows = [[f"{c.lower()}_{p}_{n}", c, "", "", f"Q{i}", "OD", "M", 2021, 16, 16]
            for i, (c, p, n) in enumerate((("AMD", "1047099", 1), ("AMD", "1047099", 2), ("DME", "1088513", 1),
                                          ("NO", "1021542", 1), ("VID", "1099999", 1)))]
    fx.write_csv(root / "fixed.csv", OCTDL_HEADER, rows)
    src = D.read_octdl(root, labels_csv="fixed.csv")
    assert [s.patient for s in src.samples] == ["Q0", "Q1", "Q2", "Q3", "Q4"]


def test_octdl_csv_without_a_patient_column_is_refused_as_a_whole(tmp_path: Path) -> None:
    """C28: a labels CSV lacking the patient_id column was not refused up front: the user read that row 1's
    patient_id cell is empty, not that the column is missing and which columns the file holds."""
    root = fx.make_octdl(tmp_path, with_csv=False)
    table = fx.write_csv(root / "OCTDL_labels.csv", ["file_name", "disease", "eye"], [["amd_1047099_1", "AMD", "OS"]])
    with pytest.raises(DataError) as err:
        D.read_octdl(root)
    msg = str(err.value)
    assert msg.startswith(str(table)) and "missing column(s) ['patient_id']" in msg, msg


def test_octdl_csv_row_with_no_patient_is_refused_naming_the_row(tmp_path: Path) -> None:
    """C35: a row with an empty patient_id cell was read as a scan of no patient (its own split group): the other
    scans of that patient could land on the other side of the split; the row is refused, naming file and row."""
    root = fx.make_octdl(tmp_path, with_csv=False)
    table = _octdl_csv(root, [["amd_1047099_1", "AMD", "MNV", "", "1047099", "OS", "M", 2021, 16, 16],
                              ["amd_1047099_2", "AMD", "MNV", "", "", "OS", "M", 2021, 16, 16]])
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}, row 2 \(line 3\): column 'patient_id' is empty"):
        D.read_octdl(root)


def test_octdl_csv_blank_subcategory_is_none_and_an_unknown_eye_is_no_eye(tmp_path: Path) -> None:
    """C29, C30: a blank subcategory cell was kept as '' (C29: reports and filters on ``extra['subcategory']`` saw
    an empty-named subcategory instead of none), and an eye cell the reader does not know ('OU') stopped the
    whole read (C30) where the module reads the eye leniently (unknown: no eye)."""
    root = fx.make_octdl(tmp_path, with_csv=False)
    _octdl_csv(root, [["amd_1047099_1", "AMD", "MNV", "", "1047099", "OU", "M", 2021, 16, 16],
                      ["dme_1088513_1", "DME", "", "", "1088513", "OD", "M", 2021, 16, 16]])
    src = D.read_octdl(root)
    assert [(s.extra["subcategory"], s.eye) for s in src.samples] == [("MNV", None), (None, "right")]


def test_octdl_raw_vocabulary_keeps_folder_names_from_the_csv(tmp_path: Path) -> None:
    """C36: with the labels CSV, ``vocabulary='raw'`` still gave the mapped names, which the raw label space does
    not hold: the read stopped with an unknown-label error although the folder names were asked for."""
    root = fx.make_octdl(tmp_path, with_csv=True)
    src = D.read_octdl(root, vocabulary="raw")
    assert [s.labels for s in src.samples] == [("AMD",), ("AMD",), ("DME",), ("NO",), ("VID",)]
    assert src.label_space.classes == ("AMD", "DME", "ERM", "NO", "RAO", "RVO", "VID")


def test_octdl_scanned_keeps_the_folder_name_as_raw_label(tmp_path: Path) -> None:
    """C33: read from the class folders, ``extra['raw_label']`` held the mapped class ('normal') instead of the
    folder ('NO'), as read from the CSV it does: the two ways of reading one set disagreed on it."""
    root = fx.make_octdl(tmp_path, with_csv=False)
    assert [s.extra["raw_label"] for s in D.read_octdl(root).samples] == ["AMD", "AMD", "DME", "NO", "VID"]


def test_octdl_csv_row_naming_a_missing_scan_is_located_and_skippable(tmp_path: Path) -> None:
    """C26, C37: a CSV row naming a scan not on disk was not skipped with ``missing='skip'`` (C26: the argument
    was not passed on; a mirror missing a few scans could not be read at all), and without it the error named
    the expected file, not the CSV row that names it (C37)."""
    root = fx.make_octdl(tmp_path, with_csv=True)
    table = root / "OCTDL_labels.csv"
    (root / "DME" / "dme_1088513_1.jpg").unlink()  # row 3 (line 4)
    with pytest.raises(DataError, match=rf"^{re.escape(str(table))}, row 3 \(line 4\): image file "):
        D.read_octdl(root)
    src = D.read_octdl(root, missing="skip")
    assert [s.path.name for s in src.samples] == ["amd_1047099_1.jpg", "amd_1047099_2.jpg", "no_1021542_1.jpg",
                                                  "vid_1099999_1.jpg"]
    assert src.dropped == {"missing_image": 1}


def test_octdl_scanned_name_that_does_not_parse_has_no_patient(tmp_path: Path) -> None:
    """C40: a scanned file whose name does not follow <class>_<patient>_<n> got its stem as patient id, so two
    such scans named alike in two class folders ('scan1.jpg') became one invented patient, where the module
    promises no patient (each its own split group)."""
    root = fx.make_octdl(tmp_path, with_csv=False)
    fx.write_image(root / "ERM" / "scan1.jpg", seed=7)
    src = D.read_octdl(root)
    patients = {s.path.name: s.patient for s in src.samples}
    assert patients["scan1.jpg"] is None and patients["amd_1047099_1.jpg"] == "1047099"


# -- ODIR-5K ------------------------------------------------------------------------------------------------------

ODIR_HEADER = ["ID", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords", "filename", "labels"]


def _odir(root: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """full_df.csv with ``rows`` (the file name in the column 'filename'), images in preprocessed_images/."""
    header = header or ODIR_HEADER
    for i, row in enumerate(rows):
        fx.write_image(root / "preprocessed_images" / row[header.index("filename")], seed=i)
    fx.write_csv(root / "full_df.csv", header, [list(r) for r in rows])
    return root


@pytest.mark.parametrize(("keywords", "codes"), [("normal fundus,", ("N",)), ("cataract\uff0c", ("C",)),
                                                 (",glaucoma, ,", ("G",))])
def test_odir_an_empty_keyword_between_commas_gives_no_code(keywords: str, codes: tuple[str, ...]) -> None:
    """C48: an empty keyword (a trailing or doubled comma, as spreadsheet edits leave) was read as an unknown
    finding, code O: a normal eye ('normal fundus,') lost its N to 'other' and trained as diseased."""
    assert D.odir_keyword_codes(keywords) == (codes, ())


def test_odir_optic_disk_invisible_is_a_remark_not_a_finding() -> None:
    """C52: 'optic disk photographically invisible' (a remark on the photograph) was read as a finding, code O:
    an eye with only that remark trained as 'other' instead of being left out, a glaucoma eye got 'other' too."""
    remark = "optic disk photographically invisible"
    assert D.odir_keyword_codes(f"{remark}\uff0cglaucoma") == (("G",), (remark,))
    assert D.odir_keyword_codes(remark) == ((), (remark,))


def test_odir_no_fundus_image_is_left_out_as_not_fundus(tmp_path: Path) -> None:
    """C51: a photograph marked 'no fundus image' was counted as lacking a diagnosis, not as not being a fundus
    photograph: the source's ``dropped`` said 'no_diagnosis', hiding the non-fundus photographs in the set."""
    root = _odir(tmp_path, [["5", "no fundus image", "cataract", "5_left.jpg", "['O']"],
                            ["5", "no fundus image", "cataract", "5_right.jpg", "['C']"]])
    src = D.read_odir(root)
    assert [(s.path.name, s.labels) for s in src.samples] == [("5_right.jpg", ("cataract",))]
    assert src.dropped == {"not_fundus": 1}


def test_odir_first_keyword_code_is_one_known_code_or_none(tmp_path: Path) -> None:
    """C53, C54, C55: ``extra['first_keyword_code']`` (ODIR's own one-code label, kept to compare with) took the
    first of several codes (C53), kept a code ODIR does not have (C54), or lost the code of a cell written
    without quotes, '[C]' (C55)."""
    labels = ["['D', 'O']", "['X']", "[C]", "['N']"]
    rows = [[str(i), "cataract", "normal fundus", f"{i}_left.jpg", cell] for i, cell in enumerate(labels)]
    src = D.read_odir(_odir(tmp_path, rows))
    assert [s.extra["first_keyword_code"] for s in src.samples] == [None, None, "C", "N"]


def test_odir_flag_cells_left_blank_are_not_a_disagreement(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """C56: blank patient-flag cells (N..O) were compared as if they said 0: a table whose flags were not filled in
    warned that every row disagrees with its keywords, drowning the warning that means something."""
    header = [*ODIR_HEADER, *"NDGCAHMO"]
    root = _odir(tmp_path, [["6", "cataract", "normal fundus", "6_left.jpg", "['C']", *[""] * 8]], header)
    with caplog.at_level("WARNING"):
        src = D.read_odir(root)
    assert src.samples[0].labels == ("cataract",)
    assert "patient-level flags" not in caplog.text


def test_odir_labels_of_an_eye_come_in_vocabulary_order(tmp_path: Path) -> None:
    """C73: an eye's mapped labels came in ODIR's code order (C before A: 'cataract', 'amd') instead of the
    project vocabulary's ('amd' before 'cataract'), which every other reader uses for a sample's labels."""
    root = _odir(tmp_path, [["9", "dry age-related macular degeneration\uff0ccataract", "normal fundus", "9_left.jpg",
                             "['A']"]])
    assert D.read_odir(root).samples[0].labels == ("amd", "cataract")


def test_odir_keeps_age_and_sex_apart(tmp_path: Path) -> None:
    """C75: ``extra['age']`` held the patient's sex: an age-stratified evaluation of ODIR grouped by 'Female'."""
    header = [*ODIR_HEADER, "Patient Age", "Patient Sex"]
    root = _odir(tmp_path, [["4", "cataract", "normal fundus", "4_left.jpg", "['C']", "57", "Female"]], header)
    extra = D.read_odir(root).samples[0].extra
    assert (extra["age"], extra["sex"]) == ("57", "Female")


# -- RFMiD ----------------------------------------------------------------------------------------------------------


def _rfmid_rows(images: Path, table: Path, *, trailing_comma: bool = False) -> None:
    """Images 1.png (DR) and 2.png (healthy) in ``images``; their labels CSV at ``table``."""
    for i in (1, 2):
        fx.write_image(images / f"{i}.png", seed=i)
    end = "," if trailing_comma else ""
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(f"ID,Disease_Risk,DR,ARMD{end}\n1,1,1,0{end}\n2,0,0,0{end}\n", encoding="utf-8")


def test_rfmid_a_trailing_empty_column_is_not_a_disease(tmp_path: Path) -> None:
    """C58: an empty header cell (a trailing comma, as spreadsheet exports leave) was taken as a disease column
    named '': every row was refused as having that column empty."""
    _rfmid_rows(tmp_path / "Training", tmp_path / "RFMiD_Training_Labels.csv", trailing_comma=True)
    src = D.read_rfmid(tmp_path)
    assert [s.labels for s in src.samples] == [("dr",), ("normal",)]
    assert src.label_space.classes == ("normal", "dr", "amd", "other")


@pytest.mark.parametrize(("table", "images"), [
    ("Training_Set/RFMiD_Training_Labels.csv", "Training_Set/Training"),  # Kaggle, one level
    ("RFMiD_Training_Labels.csv", "images"),
    ("RFMiD_Training_Labels.csv", "."),  # everything in one folder
])
def test_rfmid_finds_the_other_documented_layouts(tmp_path: Path, table: str, images: str) -> None:
    """C59, C60, C61: the label CSV in ``Training_Set/`` (C59), or the images in ``images/`` (C61) or beside the
    CSV (C60), were no longer found: a set unpacked that way was refused as lacking its labels or images."""
    _rfmid_rows(tmp_path / images, tmp_path / table)
    src = D.read_rfmid(tmp_path)
    assert [(s.path, s.labels) for s in src.samples] == [(tmp_path / images / "1.png", ("dr",)),
                                                        (tmp_path / images / "2.png", ("normal",))]


# -- IDRiD ----------------------------------------------------------------------------------------------------------


def _idrid_split(root: Path, csv_at: str, images_at: str, rows: list[tuple[str, int, int]]) -> None:
    for i, (name, _, _) in enumerate(rows):
        fx.write_image(root / images_at / f"{name}.jpg", seed=i)
    fx.write_csv(root / csv_at, ["Image name", "Retinopathy grade", "Risk of macular edema "], [list(r) for r in rows])


def test_idrid_label_csv_and_images_directly_in_the_root(tmp_path: Path) -> None:
    """C62, C63: the grading CSV in the root itself (C62) or the 'a. Training Set' folder in the root (C63), both
    documented, were not found: a user who unpacked only those was refused."""
    _idrid_split(tmp_path, fx.IDRID_CSV, "a. Training Set", [("IDRiD_001", 3, 0), ("IDRiD_002", 0, 0)])
    src = D.read_idrid(tmp_path)
    assert [(s.path, s.labels) for s in src.samples] == [
        (tmp_path / "a. Training Set" / "IDRiD_001.jpg", ("referable_dr",)),
        (tmp_path / "a. Training Set" / "IDRiD_002.jpg", ("non_referable",))]


def test_idrid_test_split_reads_the_testing_images(tmp_path: Path) -> None:
    """C64: the test split looked its images up in the training folder: the numbering restarts per split, so
    'IDRiD_001' of the test labels was paired with the training photograph of that name."""
    train = [("IDRiD_001", 0, 0), ("IDRiD_002", 0, 0)]
    test = [("IDRiD_001", 4, 2)]
    _idrid_split(tmp_path, f"2. Groundtruths/{fx.IDRID_CSV}", "1. Original Images/a. Training Set", train)
    _idrid_split(tmp_path, "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv",
                 "1. Original Images/b. Testing Set", test)
    src = D.read_idrid(tmp_path, split="test")
    assert [(s.path, s.labels) for s in src.samples] == [
        (tmp_path / "1. Original Images" / "b. Testing Set" / "IDRiD_001.jpg", ("referable_dr",))]


# -- MESSIDOR-2 -----------------------------------------------------------------------------------------------------


def _messidor(root: Path, images_at: str = "IMAGES") -> Path:
    """messidor_data.csv with a.png (grade 0) and b.png (grade 3), both gradable, images in ``root/images_at``."""
    for i, name in enumerate(("a.png", "b.png")):
        fx.write_image(root / images_at / name, seed=i)
    fx.write_csv(root / "messidor_data.csv",
                 ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
                 [["a.png", "0", "0", "1"], ["b.png", "3", "0", "1"]])
    return root


def test_messidor_exam_line_ending_in_a_semicolon_still_pairs(tmp_path: Path) -> None:
    """C65: an exam line with a trailing separator ('a.tif;b.tif;', as a spreadsheet saves a third empty column)
    was refused as naming three images: the exam list could not be read at all."""
    root = _messidor(tmp_path)
    (root / "messidor-2.csv").write_text("left;right;\na.tif;b.tif;\n", encoding="utf-8")
    src = D.read_messidor2(root)
    assert [(s.patient, s.eye) for s in src.samples] == [("a", "left"), ("a", "right")]


@pytest.mark.parametrize("images_at", ["images", "preprocess", "messidor-2/preprocess", "."])
def test_messidor_finds_images_in_each_documented_folder(tmp_path: Path, images_at: str) -> None:
    """C66, C67, C68: images in ``images/`` (C66), in the root beside the table (C67) or in the mirror's
    ``preprocess/`` folders (C68) were no longer found: the set was refused as lacking its image folder."""
    root = _messidor(tmp_path, images_at)
    src = D.read_messidor2(root)
    assert [(s.path, s.labels) for s in src.samples] == [(root / images_at / "a.png", ("non_referable",)),
                                                        (root / images_at / "b.png", ("referable_dr",))]


def test_messidor_exam_list_in_the_root_wins_over_one_in_the_parent(tmp_path: Path) -> None:
    """C69: with messidor-2.csv both in the dataset folder and its parent, the parent's was read: a stale or other
    list beside the folder paired the eyes wrongly (here: not at all)."""
    root = _messidor(tmp_path / "messidor")
    (root / "messidor-2.csv").write_text("a.tif;b.tif\n", encoding="utf-8")
    (tmp_path / "messidor-2.csv").write_text("x.tif;y.tif\n", encoding="utf-8")
    src = D.read_messidor2(root)
    assert [(s.patient, s.eye) for s in src.samples] == [("a", "left"), ("a", "right")]


def test_messidor_without_an_exam_list_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """C83: without messidor-2.csv every image was also counted as missing from an exam list, a second warning
    ('2 images are not in None') that named no file and read as a broken list the user never had."""
    root = _messidor(tmp_path)
    with caplog.at_level("WARNING"):
        src = D.read_messidor2(root)
    assert [s.patient for s in src.samples] == [None, None]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert len(warned) == 1 and "messidor-2.csv (the exam list pairing each patient's two eyes) not found" in warned[0]


# -- APTOS ----------------------------------------------------------------------------------------------------------


def test_aptos_table_without_the_diagnosis_column_is_refused_as_a_whole(tmp_path: Path) -> None:
    """C84: a train.csv lacking the diagnosis column (Kaggle's test.csv, id_code only, given by mistake) was not
    refused up front: the user read that row 1's diagnosis cell is empty, not that the column is missing."""
    fx.write_image(tmp_path / "train_images" / "abc.png")
    table = fx.write_csv(tmp_path / "train.csv", ["id_code"], [["abc"]])
    with pytest.raises(DataError) as err:
        D.read_aptos(tmp_path)
    msg = str(err.value)
    assert msg.startswith(str(table)) and "missing column(s) ['diagnosis']" in msg, msg
