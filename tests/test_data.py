"""Dataset readers, label spaces, fingerprints and patient-level splits (uopsl.train.data)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fixtures_data as fx
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train import data as D

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"
needs_tvhl = pytest.mark.skipif(not (TVHL / "fundus.csv").is_file(), reason=f"real TVHL data not found at {TVHL}")


def patients_of(source: D.DatasetSource, idx: np.ndarray) -> set[str]:
    return {k for i, k in enumerate(D.group_keys(source)) if i in set(idx.tolist())}


# ---------------------------------------------------------------- core types


def test_label_space_encodes_decodes_and_rejects_unknown_names():
    space = D.LabelSpace(("normal", "dr", "dme"))
    np.testing.assert_array_equal(space.encode(["dme", "dr"]), [0, 1, 1])
    assert space.encode(["dr"]).dtype == np.float32
    assert space.index("dme") == 2 and "dr" in space and len(space) == 3
    assert space.decode(np.array([0.1, 0.7, 0.5])) == ("dr", "dme")
    with pytest.raises(DataError, match=r"'amd'.*allowed.*'normal', 'dr', 'dme'"):
        space.encode(["amd"])
    np.testing.assert_array_equal(space.encode(["amd", "dr"], strict=False), [0, 1, 0])
    single = D.LabelSpace(("normal", "dr"), multi_label=False)
    with pytest.raises(DataError, match="exactly one"):
        single.encode(["normal", "dr"])
    assert single.decode(np.array([0.2, 0.3])) == ("dr",)
    assert D.LabelSpace.from_dict(space.to_dict()) == space
    with pytest.raises(ConfigError, match="unique"):
        D.LabelSpace(("dr", "dr"))


def test_sample_rejects_unknown_modality_and_eye(tmp_path):
    with pytest.raises(ConfigError, match="modality"):
        D.Sample(tmp_path / "a.png", ("dr",), modality="xray")
    with pytest.raises(ConfigError, match="eye"):
        D.Sample(tmp_path / "a.png", ("dr",), eye="OD")


def test_vocabulary_order_puts_known_classes_first():
    assert D.order_classes(["zeta", "dme", "normal", "alpha", "dr"]) == ("normal", "dr", "dme", "alpha", "zeta")


def test_data_module_does_not_import_torch():
    code = "import sys, uopsl.train.data; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# ---------------------------------------------------------------- generic readers


def test_folder_reader(tmp_path):
    fx.make_folder_dataset(tmp_path, {"normal": 3, "dr": 2, "zz_custom": 1})
    (tmp_path / "dr" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    src = D.read_folder(tmp_path)
    assert src.label_space.classes == ("normal", "dr", "zz_custom")
    assert not src.label_space.multi_label
    assert src.counts() == {"normal": 3, "dr": 2, "zz_custom": 1}
    assert all(s.patient is None and s.modality == "fundus" for s in src.samples)


def test_folder_reader_unknown_class_folder_names_the_folder(tmp_path):
    fx.make_folder_dataset(tmp_path, {"normal": 1, "cat": 1})
    with pytest.raises(DataError) as err:
        D.read_folder(tmp_path, classes=("normal", "dr"))
    msg = str(err.value)
    assert str(tmp_path / "cat") in msg and "'cat'" in msg and "['normal', 'dr']" in msg


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "normal").mkdir()
    with pytest.raises(DataError, match="no images found"):
        D.read_folder(tmp_path)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (D.CsvLayout(path_column="file", label_column="label"), [("dr",), ("normal",), ("dme",), ("dr",)]),
        (D.CsvLayout(path_column="file", label_columns=("dr", "dme"), none_label="normal"),
         [("dr",), ("normal",), ("dme",), ("dr", "dme")]),
        (D.CsvLayout(path_column="file", multi_label_column="findings"),
         [("dr", "dme"), ("normal",), ("dme",), ("dr", "dme")]),
    ],
)
def test_generic_csv_label_forms(tmp_path, layout, expected):
    csv_path = fx.make_generic_csv(tmp_path)
    layout = D.CsvLayout(**{**layout.__dict__, "patient_column": "pid", "eye_column": "eye"})
    src = D.read_csv(csv_path, layout)
    assert [s.labels for s in src.samples] == expected
    assert [s.patient for s in src.samples] == ["P1", "P1", "P2", "P3"]
    assert [s.eye for s in src.samples] == ["right", "left", "right", "left"]
    assert src.label_space.multi_label == (layout.label_column is None)
    assert src.samples[0].path == tmp_path / "images" / "0.jpg"


def test_csv_layout_needs_exactly_one_label_form():
    with pytest.raises(ConfigError, match="exactly one"):
        D.CsvLayout(label_column="a", multi_label_column="b")
    with pytest.raises(ConfigError, match="exactly one"):
        D.CsvLayout()


def test_missing_column_names_file_column_and_columns_found(tmp_path):
    csv_path = fx.make_generic_csv(tmp_path)
    with pytest.raises(DataError) as err:
        D.read_csv(csv_path, D.CsvLayout(path_column="path", label_column="label"))
    msg = str(err.value)
    assert str(csv_path) in msg and "['path']" in msg and "'file', 'pid'" in msg


def test_missing_image_names_file_and_row(tmp_path):
    csv_path = fx.make_generic_csv(tmp_path)
    (tmp_path / "images" / "2.jpg").unlink()
    layout = D.CsvLayout(path_column="file", label_column="label")
    with pytest.raises(DataError) as err:
        D.read_csv(csv_path, layout)
    msg = str(err.value)
    assert f"{csv_path}, row 3 (line 4)" in msg and "2.jpg" in msg
    src = D.read_csv(csv_path, layout, missing="skip")
    assert len(src) == 3 and src.dropped == {"missing_image": 1}


def test_unknown_label_names_file_row_label_and_allowed(tmp_path):
    csv_path = fx.make_generic_csv(tmp_path)
    with pytest.raises(DataError) as err:
        D.read_csv(csv_path, D.CsvLayout(path_column="file", label_column="label"), classes=("normal", "dr"))
    msg = str(err.value)
    assert f"{csv_path}, row 3" in msg and "'dme'" in msg and "['normal', 'dr']" in msg


def test_bad_binary_cell_names_file_row_and_column(tmp_path):
    csv_path = fx.write_csv(tmp_path / "t.csv", ["path", "dr"], [["a.png", "yes please"]])
    fx.write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"t\.csv, row 1 \(line 2\): column 'dr' holds 'yes please'"):
        D.read_csv(csv_path, D.CsvLayout(label_columns=("dr",)))


def test_malformed_rows_and_empty_csv(tmp_path):
    fx.write_image(tmp_path / "a.png")
    too_many = tmp_path / "wide.csv"
    too_many.write_text("path,label\na.png,dr\na.png,dr,extra\n")
    with pytest.raises(DataError, match=r"wide\.csv, row 2 \(line 3\): 3 fields"):
        D.read_csv(too_many, D.CsvLayout(label_column="label"))
    empty_cell = tmp_path / "empty.csv"
    empty_cell.write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match=r"empty\.csv, row 1 \(line 2\): column 'label' is empty"):
        D.read_csv(empty_cell, D.CsvLayout(label_column="label"))
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(DataError, match=r"blank\.csv: the CSV is empty"):
        D.read_csv(blank, D.CsvLayout(label_column="label"))
    with pytest.raises(DataError, match="CSV file not found"):
        D.read_csv(tmp_path / "nope.csv", D.CsvLayout(label_column="label"))
    header_only = tmp_path / "header.csv"
    header_only.write_text("path,label\n")
    with pytest.raises(DataError, match=r"header\.csv lists no images \(a header and no rows\?\)"):
        D.read_csv(header_only, D.CsvLayout(label_column="label"))


def test_synthetic_csv(tmp_path):
    fx.make_synthetic(tmp_path)
    src = D.read_synthetic(tmp_path)
    assert len(src) == 4 and src.label_space.multi_label
    assert src.label_space.classes == ("normal", "dr", "dme", "amd", "glaucoma")
    assert src.samples[0].labels == ("dr", "dme") and src.samples[0].eye == "right"
    assert src.samples[0].extra["masks"] == tmp_path / "masks" / "fundus_00000.npz"
    assert src.samples[1].extra["masks"] is None
    oct_only = D.read_synthetic(tmp_path / "labels.csv", modality="oct")
    assert [s.modality for s in oct_only.samples] == ["oct"] and oct_only.dropped == {"modality=fundus": 3}
    with pytest.raises(DataError, match=r"row 3 .*unknown label 'amd'"):
        D.read_synthetic(tmp_path, classes=("normal", "dr", "dme", "glaucoma"))


def test_synthetic_generator_output_reads(tmp_path):
    synthetic = pytest.importorskip("uopsl.train.synthetic", reason="synthetic generator not in this checkout yet")
    csv_path = synthetic.make_dataset(tmp_path, 6, 2, synthetic.SynthConfig(size=128, seed=0), workers=1)
    src = D.read_synthetic(csv_path)
    assert len(src) == 8
    assert Counter(s.modality for s in src.samples) == {"fundus": 6, "oct": 2}


# ---------------------------------------------------------------- TVHL


@needs_tvhl
def test_tvhl_real_counts_match_readme():
    fundus = D.read_tvhl(TVHL)
    assert fundus.counts() == {"normal": 267, "npdr": 54, "pdr": 15, "dme": 722}
    oct_ = D.read_tvhl(TVHL, modality="oct")
    assert oct_.counts() == {"normal": 209, "npdr": 33, "pdr": 15, "dme": 121}
    assert oct_.dropped == {"oct:label=unknown not in task four_class": 384}
    referable = D.read_tvhl(TVHL, task="referable_dr")
    assert referable.counts() == {"normal": 267, "dr": 69}
    assert {s.extra["dr_grade"] for s in referable.samples} == {0, 1, 2}
    both = D.read_tvhl(TVHL, modality="both", task="dme")
    assert both.counts() == {"normal": 267 + 209, "dme": 722 + 121}
    assert all(s.patient and s.eye in ("left", "right") for s in fundus.samples)
    assert D.read_tvhl(TVHL).fingerprint == fundus.fingerprint


@needs_tvhl
def test_tvhl_real_grouped_folds_are_patient_disjoint():
    src = D.read_tvhl(TVHL, modality="both", task="four_class")
    folds = D.group_kfold(src, 3, seed=0)
    tests = [set(te.tolist()) for _, te in folds]
    assert sorted(i for t in tests for i in t) == list(range(len(src)))
    keys = D.group_keys(src)
    for tr, te in folds:
        assert not {keys[i] for i in tr} & {keys[i] for i in te}
        assert src.subset(te).counts()["pdr"] > 0


def test_tvhl_fixture_tasks(tmp_path):
    fx.make_tvhl(tmp_path)
    four = D.read_tvhl(tmp_path)
    assert four.counts() == {"normal": 1, "npdr": 1, "pdr": 1, "dme": 3}
    assert four.samples[0].patient == "0002" and four.samples[0].eye == "right"
    assert D.read_tvhl(tmp_path, task="referable_dr").counts() == {"normal": 1, "dr": 2}
    oct_ = D.read_tvhl(tmp_path, modality="oct", task="dme")
    assert oct_.counts() == {"normal": 1, "dme": 1} and all(s.modality == "oct" for s in oct_.samples)
    with pytest.raises(ConfigError, match="task"):
        D.read_tvhl(tmp_path, task="glaucoma")


def test_tvhl_inconsistent_or_unknown_label_names_row(tmp_path):
    fx.make_tvhl(tmp_path)
    csv_path = tmp_path / "fundus.csv"
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3].replace(",normal", ",npdr")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fundus\.csv, row 3 \(line 4\): label 'npdr' contradicts dme=0, dr='none'"):
        D.read_tvhl(tmp_path)
    lines[3] = lines[3].replace(",npdr", ",severe")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 3 .*unknown label 'severe'; allowed labels: \['dme', 'normal'"):
        D.read_tvhl(tmp_path)


# ---------------------------------------------------------------- public fundus sets


def test_aptos(tmp_path):
    fx.make_aptos(tmp_path)
    src = D.read_aptos(tmp_path)
    # Referable: moderate NPDR or worse; mild NPDR (grade 1) is not referable, and not 'normal' either.
    assert src.counts() == {"non_referable": 2, "referable_dr": 4}
    assert [s.extra["dr_grade"] for s in src.samples] == [0, 1, 2, 3, 4, 2]
    any_dr = D.read_aptos(tmp_path, task="any_dr")  # 'dr' as ODIR, RFMiD, TVHL and its description mean it
    assert [s.labels for s in any_dr.samples] == [("normal",)] + [("dr",)] * 5
    graded = D.read_aptos(tmp_path, task="grade")
    assert graded.label_space.classes == D.DR_GRADE_NAMES
    assert graded.samples[4].labels == ("pdr",)
    with pytest.raises(ConfigError, match="dr_dme"):
        D.read_aptos(tmp_path, task="dr_dme")


def test_aptos_bad_grade_names_row(tmp_path):
    fx.make_aptos(tmp_path, grades=(0, 7))
    with pytest.raises(DataError, match=r"train\.csv, row 2 \(line 3\): column 'diagnosis' holds '7'"):
        D.read_aptos(tmp_path)


def test_odir(tmp_path, caplog):
    fx.make_odir(tmp_path)
    with caplog.at_level(logging.WARNING):
        src = D.read_odir(tmp_path)
    # Each eye's own keywords, every disease in them: 3_right's 'labels' column says only O (its first
    # keyword, an epiretinal membrane); it has diabetic retinopathy too, which used to be a negative.
    assert [s.labels for s in src.samples] == [("normal",), ("cataract",), ("dr",), ("dr",), ("glaucoma",),
                                               ("dr", "other"), ("normal",)]
    assert [s.eye for s in src.samples] == ["right", "left", "right", "left", "right", "right", "left"]
    assert [s.patient for s in src.samples] == ["0", "0", "1", "1", "2", "3", "3"]
    assert src.samples[5].extra["first_keyword_code"] == "O" and src.samples[6].extra["image_comments"] == ("lens dust",)
    assert src.samples[1].extra["keywords"] == "cataract"
    assert src.samples[2].extra["patient_flags"]["D"] == "1"
    # An anterior-segment photograph is no fundus; 'low image quality' alone gives no diagnosis.
    assert src.dropped == {"not_fundus": 1, "no_diagnosis": 1}
    assert "patient-level flags" not in caplog.text  # the fixture's flags are the union of both eyes' codes
    raw = D.read_odir(tmp_path, vocabulary="raw")
    assert raw.label_space.classes == tuple("NDGCAHMO") and raw.samples[1].labels == ("C",)
    assert raw.samples[5].labels == ("D", "O")


def test_odir_keywords_and_flag_check(tmp_path, caplog):
    codes = D.odir_keyword_codes
    assert codes("wet age-related macular degeneration\uff0cdiabetic retinopathy") == (("D", "A"), ())
    assert codes("suspected glaucoma, myopic maculopathy") == (("G", "M"), ())
    assert codes("normal fundus, lens dust") == (("N",), ("lens dust",))
    assert codes("normal fundus, drusen") == (("O",), ())  # a finding beats 'normal'
    assert codes("hypertensive retinopathy") == (("H",), ())  # not diabetic
    assert codes("severe proliferative diabetic retinopathy") == (("D",), ())
    fx.make_odir(tmp_path)
    csv_path = tmp_path / "full_df.csv"
    csv_path.write_text(csv_path.read_text().replace("mild nonproliferative retinopathy", "cataract"))
    with caplog.at_level(logging.WARNING):
        src = D.read_odir(tmp_path)
    assert src.samples[3].labels == ("cataract",)
    assert "on 2 rows the patient-level flags N..O differ" in caplog.text


def test_odir_needs_the_eye_in_the_file_name(tmp_path):
    fx.make_odir(tmp_path)
    csv_path = tmp_path / "full_df.csv"
    csv_path.write_text(csv_path.read_text().replace(",0_right.jpg\n", ",0_r.jpg\n", 1))
    with pytest.raises(DataError, match=r"full_df\.csv, row 1 .*'0_r\.jpg' does not end in _left or _right"):
        D.read_odir(tmp_path)


def test_rfmid(tmp_path):
    fx.make_rfmid(tmp_path)
    src = D.read_rfmid(tmp_path)
    labels = [s.labels for s in src.samples]
    assert labels == [("dr",), ("normal",), ("macular_hole", "media_haze"), ("glaucoma", "other"), ("amd", "drusen")]
    assert src.samples[3].extra["raw_labels"] == ("TSLN", "ODC")
    raw = D.read_rfmid(tmp_path, vocabulary="raw")
    assert len(raw.label_space) == 47 and raw.samples[2].labels == ("MH", "MHL")
    assert src.samples[0].path == tmp_path / "Training" / "1.png"


def test_idrid_real_header_quirks(tmp_path):
    fx.make_idrid(tmp_path)
    src = D.read_idrid(tmp_path)
    assert [s.labels for s in src.samples] == [("referable_dr",), ("non_referable",), ("referable_dr",),
                                               ("non_referable",)]
    assert [(s.extra["dr_grade"], s.extra["dme_grade"]) for s in src.samples] == [(3, 2), (0, 0), (2, 0), (1, 1)]
    multi = D.read_idrid(tmp_path, task="dr_dme")
    assert multi.label_space.multi_label
    # DME risk 1 (exudates beyond one disc diameter of the macula) is not DME; risk 2 is.
    assert [s.labels for s in multi.samples] == [("dr", "dme"), ("normal",), ("dr",), ("dr",)]
    missing_col = tmp_path / "2. Groundtruths" / fx.IDRID_CSV
    missing_col.write_text(missing_col.read_text().replace("Retinopathy grade", "DR grade"))
    with pytest.raises(DataError) as err:
        D.read_idrid(tmp_path)
    assert "missing column(s) ['Retinopathy grade']" in str(err.value) and "'Risk of macular edema '" in str(err.value)


def test_messidor2(tmp_path):
    fx.make_messidor2(tmp_path)
    src = D.read_messidor2(tmp_path, task="dr_dme")
    assert [s.labels for s in src.samples] == [("normal",), ("dr", "dme"), ("dr",)]
    assert src.dropped == {"ungradable": 1}
    assert src.samples[2].path.name == "IM000001.png"
    assert [s.extra["dr_grade"] for s in src.samples] == [0, 2, 4]


def test_messidor2_missing_image_names_row(tmp_path):
    fx.make_messidor2(tmp_path)
    (tmp_path / "IMAGES" / "20051020_43832_0100_PP.png").unlink()
    with pytest.raises(DataError, match=r"messidor_data\.csv, row 2 \(line 3\): image file .*43832.* not found"):
        D.read_messidor2(tmp_path)


# ---------------------------------------------------------------- OCT sets


def test_oct2017(tmp_path):
    fx.make_oct2017(tmp_path)
    train = D.read_oct2017(tmp_path)
    assert train.counts() == {"normal": 2, "dme": 1, "amd": 3}
    assert train.samples[0].patient == "1016042" and train.samples[0].modality == "oct"
    assert [s.extra["raw_label"] for s in train.samples][:2] == ["CNV", "CNV"]
    assert len(D.read_oct2017(tmp_path, split="all")) == 8
    raw = D.read_oct2017(tmp_path, split="test", vocabulary="raw")
    assert raw.counts() == {"CNV": 1, "DME": 0, "DRUSEN": 0, "NORMAL": 1}
    fx.write_image(tmp_path / "train" / "DME" / "CNV-1-1.jpeg")
    with pytest.raises(DataError, match=r"CNV-1-1\.jpeg: file name does not follow"):
        D.read_oct2017(tmp_path)


def test_octdl_with_and_without_labels_csv(tmp_path):
    fx.make_octdl(tmp_path, with_csv=False)
    scanned = D.read_octdl(tmp_path)
    assert scanned.counts() == {"normal": 1, "dme": 1, "amd": 2, "erm": 0, "vmi": 1, "rvo": 0, "rao": 0}
    assert [s.patient for s in scanned.samples] == ["1047099", "1047099", "1088513", "1021542", "1099999"]
    fx.make_octdl(tmp_path, with_csv=True)
    from_csv = D.read_octdl(tmp_path)
    assert [s.patient for s in from_csv.samples] == [s.patient for s in scanned.samples]
    assert from_csv.samples[0].extra["subcategory"] == "MNV" and from_csv.samples[0].eye == "left"
    assert from_csv.fingerprint == scanned.fingerprint
    csv_path = tmp_path / "OCTDL_labels.csv"
    csv_path.write_text(csv_path.read_text().replace(",VID,", ",XYZ,"))
    with pytest.raises(DataError, match=r"OCTDL_labels\.csv, row 5 \(line 6\): unknown label 'XYZ'"):
        D.read_octdl(tmp_path)


def test_load_dataset_registry(tmp_path):
    fx.make_aptos(tmp_path)
    assert len(D.load_dataset("aptos", tmp_path, task="grade")) == 6
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        D.load_dataset("kaggle", tmp_path)


def test_every_mapped_class_is_in_the_vocabulary():
    mapped = [*D.ODIR_CODES.values(), *D.RFMID_CODES.values(), *D.OCT2017_CLASSES.values(),
              *D.OCTDL_CLASSES.values(), *D.DR_GRADE_NAMES, *(c for t in D.TVHL_TASKS.values() for c in t)]
    assert set(mapped) <= set(D.VOCABULARY)


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_names_sizes_labels_not_mtime(tmp_path):
    fx.make_aptos(tmp_path)
    base = D.read_aptos(tmp_path).fingerprint
    img = tmp_path / "train_images" / "0000c1434d8d7.png"
    os.utime(img, (1, 1))
    assert D.read_aptos(tmp_path).fingerprint == base
    assert D.read_aptos(tmp_path, task="grade").fingerprint != base
    content = D.fingerprint(D.read_aptos(tmp_path).samples, tmp_path, content=True)
    assert content != base
    data = bytearray(img.read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes
    img.write_bytes(bytes(data))
    assert D.read_aptos(tmp_path).fingerprint == base
    assert D.fingerprint(D.read_aptos(tmp_path).samples, tmp_path, content=True) != content
    img.write_bytes(bytes(data) + b"\0")
    assert D.read_aptos(tmp_path).fingerprint != base


def test_subset_refingerprints_without_disk(tmp_path):
    fx.make_aptos(tmp_path)
    src = D.read_aptos(tmp_path)
    sub = src.subset([4, 0])
    assert [s.extra["dr_grade"] for s in sub.samples] == [4, 0]
    assert sub.fingerprint == D.fingerprint(sub.samples, tmp_path)
    assert sub.fingerprint != src.fingerprint
    assert src.describe()["counts"] == {"non_referable": 2, "referable_dr": 4}
    with pytest.raises(ConfigError, match="out of range"):
        src.subset([6])


# ---------------------------------------------------------------- splits


def synthetic_cohort(n_patients: int = 60, seed: int = 0) -> list[D.Sample]:
    """Patients with 1-4 images each; 'rare' on 10 % of patients, images without patient id mixed in."""
    rng = np.random.default_rng(seed)
    samples = []
    for p in range(n_patients):
        label = "rare" if p % 10 == 0 else ("dr" if p % 3 == 0 else "normal")
        for k in range(int(rng.integers(1, 5))):
            samples.append(D.Sample(Path(f"/x/{p}_{k}.png"), (label,), patient=f"p{p:03d}"))
    samples += [D.Sample(Path(f"/x/anon{i}.png"), ("normal",)) for i in range(7)]
    return samples


def test_group_kfold_is_patient_disjoint_complete_deterministic_and_stratified():
    samples = synthetic_cohort()
    keys = D.group_keys(samples)
    folds = D.group_kfold(samples, 5, seed=3)
    assert len(folds) == 5
    all_test = np.concatenate([te for _, te in folds])
    assert sorted(all_test.tolist()) == list(range(len(samples)))
    for tr, te in folds:
        assert not {keys[i] for i in tr} & {keys[i] for i in te}
        assert len(tr) + len(te) == len(samples)
        assert sum(1 for i in te if samples[i].labels == ("rare",)) > 0
    again = D.group_kfold(list(samples), 5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = D.group_kfold(samples, 5, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))
    with pytest.raises(ConfigError, match="k must be"):
        D.group_kfold(samples, 1)
    with pytest.raises(ConfigError, match="at least 500"):
        D.group_kfold(samples, 500)


def test_images_without_patient_are_their_own_groups():
    samples = [D.Sample(Path(f"/x/{i}.png"), ("normal",)) for i in range(4)]
    assert len(set(D.group_keys(samples))) == 4
    assert len(D.group_kfold(samples, 4)) == 4


def test_patient_split_fractions_disjoint_and_deterministic():
    samples = synthetic_cohort(200)
    keys = D.group_keys(samples)
    split = D.patient_split(samples, (0.6, 0.2, 0.2), seed=1)
    parts = [split.train, split.val, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(samples)))
    groups = [{keys[i] for i in part} for part in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    shares = np.array([len(p) for p in parts]) / len(samples)
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.03)  # within a few 1-4 image groups of 507
    assert all(any(samples[i].labels == ("rare",) for i in part) for part in parts)
    again = D.patient_split(samples, (0.6, 0.2, 0.2), seed=1)
    assert np.array_equal(again.test, split.test)
    no_val = D.patient_split(samples, (0.8, 0.0, 0.2))
    assert len(no_val.val) == 0
    with pytest.raises(ConfigError, match="summing to 1"):
        D.patient_split(samples, (0.5, 0.2, 0.2))


def test_take_shots():
    samples = synthetic_cohort(100)
    idx = D.take_shots(samples, 3, seed=0)
    counts = Counter(n for i in idx for n in samples[i].labels)
    assert counts == {"rare": 3, "dr": 3, "normal": 3}
    assert np.array_equal(idx, D.take_shots(samples, 3, seed=0))
    assert not np.array_equal(idx, D.take_shots(samples, 3, seed=1))
    multi = [D.Sample(Path("/x/a.png"), ("dr", "dme")), D.Sample(Path("/x/b.png"), ("dme",)),
             D.Sample(Path("/x/c.png"), ("dr",))]
    one = D.take_shots(multi, 1, classes=["dr", "dme"])
    assert all(any(c in multi[i].labels for i in one) for c in ("dr", "dme")) and len(one) <= 2
    assert set(D.take_shots(multi, 5).tolist()) == {0, 1, 2}
    with pytest.raises(ConfigError, match="n_per_class"):
        D.take_shots(samples, 0)


# -- a --val set that shares images or patients with --data is refused (session 13) -----------------------------
def _source(root: Path, rows: list[tuple[str, str | None]]) -> D.DatasetSource:
    """A one-class set of the files ``rows`` names (relative to ``root``, made if missing) with their patients."""
    samples = []
    for name, patient in rows:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(b"jpeg")
        samples.append(D.Sample(path, ("normal",), patient=patient))
    return D.DatasetSource("set", root, tuple(samples), D.LabelSpace(("normal",)), "fp")


def test_subset_renumbers_duplicate_links_and_drops_the_ones_it_cuts(tmp_path):
    """A spec's ``duplicates=`` links travel with :meth:`DatasetSource.subset` (finetune's own validation split
    and every fold take subsets): indices follow the new order, and a link with one end left out is dropped."""
    from dataclasses import replace
    src = replace(_source(tmp_path, [(f"{i}.jpg", f"p{i}") for i in range(6)]), links=((0, 3), (2, 5), (1, 4)))
    sub = src.subset([5, 3, 0, 1])
    assert [s.path.name for s in sub.samples] == ["5.jpg", "3.jpg", "0.jpg", "1.jpg"]
    assert sub.links == ((2, 1),)  # (0, 3) now at 2 and 1; (2, 5) and (1, 4) lost an end
    assert sub.subset([1, 2]).links == ((1, 0),) and sub.subset([3]).links == ()


def test_validation_sharing_a_patient_or_an_image_with_training_is_refused(tmp_path):
    train = _source(tmp_path, [("a1.jpg", "p1"), ("a2.jpg", "p1"), ("b1.jpg", "p2")])
    D.check_apart(train, _source(tmp_path, [("c1.jpg", "p3")]))  # other patients, same dataset: fine
    with pytest.raises(ConfigError, match=r"--val set overlaps the training data set: 1 patient\(s\) have images "
                                          r"on both sides \(e.g. patient p2\)"):
        D.check_apart(train, _source(tmp_path, [("b2.jpg", "p2"), ("c1.jpg", "p3")]))
    # The same file, reached from another dataset folder through a link, is the same image.
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "a1.jpg", tmp_path / "other" / "linked.jpg")
    with pytest.raises(ConfigError, match=r"1 of its 2 images are training images too .*linked\.jpg"):
        D.check_apart(train, _source(tmp_path / "other", [("linked.jpg", None), ("x.jpg", None)]))
    # Patient ids of another dataset folder are another namespace: patient p1 there is someone else.
    D.check_apart(train, _source(tmp_path / "another_study", [("z.jpg", "p1")]))


def test_two_tables_in_different_folders_listing_one_image_folder_are_one_dataset(tmp_path):
    """A hospital keeps splits/train.csv and exports/val.csv, both listing photographs of one image folder: a
    CSV source's root is its table's folder, so patients were compared only when both tables sat in one folder,
    and the same patients on both sides trained without a word (session 47's review)."""
    from dataclasses import replace

    images = tmp_path / "images"
    train = replace(_source(images, [("a1.jpg", "p1"), ("b1.jpg", "p2")]), root=tmp_path / "splits")
    val = replace(_source(images, [("b2.jpg", "p2"), ("c1.jpg", "p3")]), root=tmp_path / "exports")
    with pytest.raises(ConfigError, match=r"1 patient\(s\) have images on both sides \(e.g. patient p2\)"):
        D.check_apart(train, val)
    D.check_apart(train, replace(_source(images, [("c1.jpg", "p3")]), root=tmp_path / "exports"))
    # Another study's images in a folder of their own: its patient p2 is someone else.
    D.check_apart(train, replace(_source(tmp_path / "study2", [("z.jpg", "p2")]), root=tmp_path / "exports"))


def test_finetune_with_the_training_folder_as_val_stops_before_training(tmp_path):
    fx.make_folder_dataset(tmp_path / "photos", {"normal": 2, "dr": 2})
    proc = subprocess.run(
        [sys.executable, "-m", "uopsl.train.cli", "finetune", "--data", f"folder:{tmp_path / 'photos'}",
         "--val", f"folder:{tmp_path / 'photos'}", "--out", str(tmp_path / "o"), "--backbone", "resnet18",
         "--init", "random", "--size", "64", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "4 of its 4 images are training images too" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- session-14 review of the public-set readers


def test_every_vocabulary_class_has_a_description():
    """ODIR/RFMiD/OCTDL emitted myopia, other, media_haze, rao, vmi: `finetune --data odir:DIR` stopped there."""
    from uopsl.train import descriptions

    for name in D.VOCABULARY:
        assert descriptions.get(name).name == name
    for table in (D.ODIR_CODES, D.RFMID_CODES, D.OCT2017_CLASSES, D.OCTDL_CLASSES):
        assert set(table.values()) <= set(D.VOCABULARY)
    for labels, _multi in D.GRADED_TASKS.values():
        assert set(labels) <= set(D.VOCABULARY)


def test_referable_by_default_follows_the_referable_grade():
    from uopsl.train.descriptions import referable_by_default
    from uopsl.train.workflow import referable_flags

    assert referable_flags(D.DR_GRADE_NAMES) == (False, False, True, True, True)
    assert referable_flags(("non_referable", "referable_dr")) == (False, True)
    assert referable_by_default("healthy") is False and referable_by_default("other") is True


def test_rfmid_reads_the_publishers_and_kaggles_layouts(tmp_path):
    official, kaggle = tmp_path / "official", tmp_path / "kaggle"
    fx.make_rfmid(tmp_path / "flat")
    for split, letter, setname, csvname in (("train", "a", "Training", "Training"), ("val", "b", "Validation", "Validation"),
                                            ("test", "c", "Testing", "Testing")):
        fx.make_rfmid(tmp_path / "tmp" / split)
        src_csv = tmp_path / "tmp" / split / "RFMiD_Training_Labels.csv"
        (official / "2. Groundtruths").mkdir(parents=True, exist_ok=True)
        (official / "2. Groundtruths" / f"{letter}. RFMiD_{csvname}_Labels.csv").write_bytes(src_csv.read_bytes())
        (official / "1. Original Images").mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path / "tmp" / split / "Training", official / "1. Original Images" / f"{letter}. {setname} Set")
        kaggle_set = {"train": ("Training_Set", "Training"), "val": ("Evaluation_Set", "Validation"),
                      "test": ("Test_Set", "Test")}[split]
        inner = kaggle / kaggle_set[0] / kaggle_set[0]
        inner.mkdir(parents=True)
        (inner / f"RFMiD_{csvname}_Labels.csv").write_bytes(src_csv.read_bytes())
        (inner / kaggle_set[1]).symlink_to(official / "1. Original Images" / f"{letter}. {setname} Set")
    flat = [s.labels for s in D.read_rfmid(tmp_path / "flat").samples]
    for root in (official, kaggle):
        for split in ("train", "val", "test"):
            src = D.read_rfmid(root, split=split)
            assert [s.labels for s in src.samples] == flat and src.samples[0].path.is_file()
    with pytest.raises(DataError, match=r"RFMiD val label CSV not found; looked for: .*2\. Groundtruths/b\. RFMiD_Validation"):
        D.read_rfmid(tmp_path / "flat", split="val")
    assert D.RFMID_CODES["CSR"] == "csc" and D.RFMID_CODES["MYA"] == "pathologic_myopia"


def test_messidor2_pairs_the_eyes_of_an_exam(tmp_path, caplog):
    fx.make_messidor2(tmp_path)
    with caplog.at_level(logging.WARNING):
        alone = D.read_messidor2(tmp_path)
    assert "messidor-2.csv (the exam list pairing each patient's two eyes) not found" in caplog.text
    assert [s.patient for s in alone.samples] == [None, None, None]
    # ADCIS's list (semicolons, .tif/.JPG names the mirror converted to PNG), beside the dataset folder.
    (tmp_path / "messidor-2.csv").write_text("left;right\n20051020_43808_0100_PP.tif;20051020_43832_0100_PP.tif\n"
                                             "IM000001.JPG;IM000002.JPG\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        paired = D.read_messidor2(tmp_path)
    assert not caplog.text
    assert [(s.patient, s.eye) for s in paired.samples] == [("20051020_43808_0100_PP", "left"),
                                                            ("20051020_43808_0100_PP", "right"), ("IM000001", "left")]
    # Referable: grade >= 2 or referable DME.
    assert [s.labels for s in paired.samples] == [("non_referable",), ("referable_dr",), ("referable_dr",)]
    for seed in range(5):  # the two eyes of the first exam always land in the same part
        split = D.patient_split(paired.samples, (0.5, 0.0, 0.5), seed=seed)
        assert {0, 1} <= set(split.train.tolist()) or {0, 1} <= set(split.test.tolist())
    (tmp_path / "messidor-2.csv").write_text("left;right\nonly_one.tif\n")
    with pytest.raises(DataError, match=r"messidor-2\.csv, line 2: expected two image names"):
        D.read_messidor2(tmp_path)


def test_messidor2_reads_the_kaggle_mirror_columns(tmp_path):
    fx.make_messidor2(tmp_path)
    table = tmp_path / "messidor_data.csv"
    table.write_text(table.read_text().replace("image_id,adjudicated_dr_grade", "id_code,diagnosis"))
    preprocess = tmp_path / "messidor-2" / "messidor-2" / "preprocess"
    preprocess.parent.mkdir(parents=True)
    os.replace(tmp_path / "IMAGES", preprocess)
    src = D.read_messidor2(tmp_path, task="dr_dme")
    assert [s.labels for s in src.samples] == [("normal",), ("dr", "dme"), ("dr",)]
    assert src.samples[0].path.parent == preprocess
    table.write_text(table.read_text().replace("id_code", "picture"))
    with pytest.raises(DataError, match=r"missing column 'image_id' or 'id_code'; columns found"):
        D.read_messidor2(tmp_path)


def test_oct2017_findings_vocabulary_and_wrong_root(tmp_path):
    fx.make_oct2017(tmp_path)
    assert D.read_oct2017(tmp_path, vocabulary="findings").counts() == {"normal": 2, "dme": 1, "cnv": 2,
                                                                        "drusen": 1}
    with pytest.raises(DataError, match=r"OCT2017: .*/val not found; point at the folder that holds train/ and test/"):
        D.read_oct2017(tmp_path, split="val")
    with pytest.raises(ConfigError, match=r"vocabulary must be one of \['mapped', 'findings', 'raw'\]"):
        D.read_oct2017(tmp_path, vocabulary="x")


def test_octdl_labels_csv_beside_the_archive(tmp_path):
    fx.make_octdl(tmp_path / "OCTDL", with_csv=True)
    os.replace(tmp_path / "OCTDL" / "OCTDL_labels.csv", tmp_path / "OCTDL_labels.csv")
    src = D.read_octdl(tmp_path / "OCTDL")
    assert src.samples[0].extra["subcategory"] == "MNV"  # read from the CSV, not parsed from file names


def test_csv_written_on_windows_and_a_path_holding_an_equals_sign(tmp_path):
    from uopsl.train.commands.common import parse_spec

    root = tmp_path / "set=v2"
    fx.write_image(root / "img" / "a.jpg", seed=0)
    (root / "labels.csv").write_text("path,label\nimg\\a.jpg,dme\n")
    src = D.read_csv(root / "labels.csv", D.CsvLayout(label_column="label"))
    assert src.samples[0].path == root / "img" / "a.jpg"
    assert parse_spec(f"folder:{root}")[1:] == (root, {})
    assert parse_spec(f"folder:{root}:classes=dme")[1:] == (root, {"classes": "dme"})


def test_an_oct_bscan_enters_whole(tmp_path):
    """B-scans went through the fundus preprocessing, which kept their central square (44 % of the width)."""
    import cv2

    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.torchdata import Item, ImageDataset, bscan_input

    scan = np.full((168, 384, 3), 40, np.uint8)
    scan[:, :20] = 250  # a bright band at the far left of the scan
    p = tmp_path / "scan.png"
    cv2.imwrite(str(p), scan)
    pre = PreprocessConfig(size=96)
    x = bscan_input(p.read_bytes(), pre)
    assert x.shape == (96, 96, 3)
    rows = slice(48 - 15, 48 + 15)  # the scan's 168/384 of the height, centred: rows 27-69
    assert x[rows, :4].min() > 200 and x[rows, 10:].max() < 60  # the left band is there, at the left
    assert x[:20].max() == 0 and x[-20:].max() == 0  # black above and below
    ds_oct = ImageDataset([Item(p, np.ones(1, np.float32))], pre, tmp_path / "cache", modality="oct")
    ds_fundus = ImageDataset([Item(p, np.ones(1, np.float32))], pre, tmp_path / "cache")
    np.testing.assert_array_equal(ds_oct.images[0], x)
    assert ds_fundus.images[0][rows, :4].max() < 60  # the fundus path cuts the band off
