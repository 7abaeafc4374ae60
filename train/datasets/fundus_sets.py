"""Adapters for public fundus datasets, each in the layout its publisher ships.

What each adapter assumes (verified against public code that reads these files,
not against the archives themselves, which are not available here):

- APTOS 2019: ``root/train.csv`` (``id_code,diagnosis``; diagnosis 0-4) and
  ``root/train_images/<id_code>.png``. No patient ids (each image its own group).
  Only the training split: the competition's test labels were never published.
- ODIR-5K, Kaggle ``full_df.csv`` layout (the .xlsx needs a dependency we do
  not take): one row per image with ``ID`` (patient), ``Left-/Right-Diagnostic
  Keywords``, patient-level flags ``N,D,G,C,A,H,M,O``, ``filename``
  (``<ID>_left.jpg``/``<ID>_right.jpg``) and ``labels`` (the image's codes as a
  list literal, e.g. ``['D']``); images in ``root/preprocessed_images/``. The
  image's labels come from ``labels``; the patient-level flags go to ``extra``.
  ODIR's ``D`` means any diabetic retinopathy, not referable DR.
- RFMiD: ``RFMiD_Training_Labels.csv`` (``ID,Disease_Risk`` then 45 0/1 disease
  columns ``DR,ARMD,MH,DN,MYA,BRVO,TSLN,...``); images ``<ID>.png`` in
  ``Training/`` (or ``images/`` or the root). Validation/test splits use
  ``RFMiD_Validation_Labels.csv``/``Validation/`` and
  ``RFMiD_Testing_Labels.csv``/``Test/``. Careful: ``MH`` is *media haze*;
  macular hole is ``MHL``. No patient ids.
- IDRiD disease grading: ``2. Groundtruths/a. IDRiD_Disease Grading_Training
  Labels.csv`` (or that file in the root) with ``Image name``, ``Retinopathy
  grade`` (0-4) and ``Risk of macular edema `` (0-2; trailing space in the real
  header; trailing empty columns and blank lines occur); images
  ``1. Original Images/a. Training Set/<name>.jpg``. Testing split: the ``b.``
  files. No patient ids; numbering restarts per split.
- MESSIDOR-2 with the adjudicated grades (Kaggle google-brain/messidor2-dr-grades):
  ``messidor_data.csv`` with ``image_id`` (file name incl. extension),
  ``adjudicated_dr_grade`` (0-4), ``adjudicated_dme`` (0/1),
  ``adjudicated_gradable`` (0/1; ungradable rows have no grade and are left out,
  counted in ``dropped['ungradable']``). Images in ``IMAGES/``, ``images/``,
  ``preprocess/`` or the root; a file with the same stem but another extension
  is accepted (mirrors convert to PNG). The exam pairing (two eyes of one
  patient) lives in an .xls we cannot read: each image is its own group, so
  two eyes of one exam can land in different folds.

Mapping onto the project vocabulary: DR-graded sets (APTOS, IDRiD, MESSIDOR-2)
offer ``task='referable'`` (grade >= 2 -> ``dr``, else ``normal``, which there
means *non-referable*), ``task='grade'`` (five classes ``normal, mild_npdr,
moderate_npdr, severe_npdr, pdr``) and, where a DME grade exists,
``task='dr_dme'`` (multi-label: ``dr`` if referable, ``dme`` if the DME grade
is > 0, else ``normal``). ``extra['dr_grade']`` (and ``extra['dme_grade']``)
keep the raw grades for quadratic-kappa metrics. ODIR and RFMiD map their codes
with the tables below (``vocabulary='raw'`` keeps the dataset's own codes).
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train.datasets.core import (
    Collector,
    DatasetSource,
    LabelSpace,
    OnMissing,
    Row,
    Sample,
    StemIndex,
    first_existing,
    order_classes,
    read_table,
)

log = logging.getLogger(__name__)

REFERABLE_GRADE = 2
DR_GRADE_NAMES = ("normal", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")
GRADED_TASKS: dict[str, tuple[tuple[str, ...], bool]] = {
    "referable": (("normal", "dr"), False),
    "grade": (DR_GRADE_NAMES, False),
    "dr_dme": (("normal", "dr", "dme"), True),
}
VOCABULARIES = ("mapped", "raw")

ODIR_CODES: dict[str, str] = {
    "N": "normal", "D": "dr", "G": "glaucoma", "C": "cataract", "A": "amd",
    "H": "hypertensive_retinopathy", "M": "myopia", "O": "other",
}
# RFMiD codes with a counterpart in the vocabulary; every other code maps to 'other'.
RFMID_CODES: dict[str, str] = {
    "DR": "dr", "ARMD": "amd", "MH": "media_haze", "DN": "drusen", "MYA": "myopia",
    "BRVO": "rvo", "CRVO": "rvo", "BRAO": "rao", "CRAO": "rao", "ERM": "erm",
    "MHL": "macular_hole", "RP": "rp", "ODC": "glaucoma",
}


def _graded_task(task: str, *, has_dme: bool) -> LabelSpace:
    allowed = [t for t in GRADED_TASKS if has_dme or t != "dr_dme"]
    if task not in allowed:
        raise ConfigError(f"task {task!r} unknown for this dataset; choose one of {allowed}")
    classes, multi = GRADED_TASKS[task]
    return LabelSpace(classes, multi)


def _graded_labels(task: str, dr_grade: int, dme_grade: int = 0) -> tuple[str, ...]:
    if task == "grade":
        return (DR_GRADE_NAMES[dr_grade],)
    found = ["dr"] if dr_grade >= REFERABLE_GRADE else []
    if task == "dr_dme" and dme_grade > 0:
        found.append("dme")
    return tuple(found) or ("normal",)


def _check_vocabulary(vocabulary: str) -> None:
    if vocabulary not in VOCABULARIES:
        raise ConfigError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")


def _image_folder(root: Path, images_dir: str | None, candidates: tuple[str, ...], what: str) -> StemIndex:
    if images_dir is not None:
        folder = root / images_dir
        if not folder.is_dir():
            raise DataError(f"{what}: image folder {folder} not found; check images_dir.")
        return StemIndex(folder)
    return StemIndex(first_existing(root, candidates, f"{what} image folder", folder=True))


def read_aptos(root: str | Path, *, task: str = "referable", missing: OnMissing = "error") -> DatasetSource:
    """APTOS 2019 training set (see module doc); task 'referable' or 'grade'."""
    root = Path(root)
    space = _graded_task(task, has_dme=False)
    _, rows = read_table(root / "train.csv", ("id_code", "diagnosis"))
    col = Collector(f"aptos-{task}", root, space, missing)
    for row in rows:
        grade = row.integer("diagnosis", range(5))
        path = root / "train_images" / f"{row.require('id_code')}.png"
        col.add(Sample(path, _graded_labels(task, grade), extra={"dr_grade": grade}), row.where)
    return col.build({"reader": "aptos", "root": root, "task": task}, space.multi_label)


def _odir_codes(row: Row) -> tuple[str, ...]:
    raw = row.require("labels")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = [v.strip(" '\"") for v in raw.strip("[]").split(",")]
    codes = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for c in codes:
        if c not in ODIR_CODES:
            raise DataError(f"{row.where}: unknown label {c!r} in column 'labels'; allowed labels: {list(ODIR_CODES)}.")
    return tuple(str(c) for c in codes)


def read_odir(
    root: str | Path,
    *,
    vocabulary: str = "mapped",
    images_dir: str = "preprocessed_images",
    missing: OnMissing = "error",
) -> DatasetSource:
    """ODIR-5K from ``full_df.csv`` (see module doc); multi-label; patient = ``ID``."""
    root = Path(root)
    _check_vocabulary(vocabulary)
    classes = order_classes(ODIR_CODES.values()) if vocabulary == "mapped" else tuple(ODIR_CODES)
    _, rows = read_table(
        root / "full_df.csv", ("ID", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords", "filename", "labels")
    )
    col = Collector(f"odir-{vocabulary}", root, LabelSpace(classes, True), missing)
    for row in rows:
        filename = row.require("filename")
        stem = Path(filename).stem.lower()
        eye = "left" if stem.endswith("_left") else "right" if stem.endswith("_right") else None
        codes = _odir_codes(row)
        labels = order_classes(ODIR_CODES[c] for c in codes) if vocabulary == "mapped" else codes
        extra = {
            "raw_labels": codes,
            "keywords": row.get("Left-Diagnostic Keywords" if eye == "left" else "Right-Diagnostic Keywords"),
            "patient_flags": {c: row.get(c) for c in ODIR_CODES if c in row.values},
            "age": row.get("Patient Age"),
            "sex": row.get("Patient Sex"),
        }
        sample = Sample(root / images_dir / filename, labels, patient=row.require("ID"), eye=eye, extra=extra)
        col.add(sample, row.where)
    return col.build({"reader": "odir", "root": root, "vocabulary": vocabulary, "images_dir": images_dir})


RFMID_SPLITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("RFMiD_Training_Labels.csv", ("Training", "images", ".")),
    "val": ("RFMiD_Validation_Labels.csv", ("Validation", "images", ".")),
    "test": ("RFMiD_Testing_Labels.csv", ("Test", "images", ".")),
}


def read_rfmid(
    root: str | Path,
    *,
    split: str = "train",
    vocabulary: str = "mapped",
    images_dir: str | None = None,
    missing: OnMissing = "error",
) -> DatasetSource:
    """RFMiD (see module doc); multi-label; ``normal`` when no disease column is 1.

    A row with Disease_Risk=1 but no disease column set is labelled ``other``
    (a warning counts such rows); the disease columns win over Disease_Risk.
    """
    root = Path(root)
    _check_vocabulary(vocabulary)
    if split not in RFMID_SPLITS:
        raise ConfigError(f"RFMiD split must be one of {list(RFMID_SPLITS)}, got {split!r}")
    csv_name, candidates = RFMID_SPLITS[split]
    header, rows = read_table(root / csv_name, ("ID", "Disease_Risk"))
    codes = [h for h in header if h and h not in ("ID", "Disease_Risk")]
    if not codes:
        raise DataError(f"{root / csv_name}: no disease columns after ID, Disease_Risk; columns found: {header}.")
    if vocabulary == "mapped":
        classes = order_classes(["normal", "other", *(RFMID_CODES.get(c, "other") for c in codes)])
    else:
        classes = ("normal", *codes, "other")
    index = _image_folder(root, images_dir, candidates, "RFMiD")
    col = Collector(f"rfmid-{split}-{vocabulary}", root, LabelSpace(classes, True), missing)
    inconsistent = 0
    for row in rows:
        risk = row.integer("Disease_Risk", (0, 1))
        positives = tuple(c for c in codes if row.integer(c, (0, 1)))
        inconsistent += int(bool(positives) != bool(risk))
        if not positives:
            labels: tuple[str, ...] = ("other",) if risk else ("normal",)
        elif vocabulary == "mapped":
            labels = order_classes(RFMID_CODES.get(c, "other") for c in positives)
        else:
            labels = positives
        image_id = row.require("ID")
        extra = {"raw_labels": positives, "disease_risk": risk}
        col.add(Sample(index.find(f"{image_id}.png"), labels, extra=extra), row.where)
    if inconsistent:
        log.warning("RFMiD %s: %d rows where Disease_Risk disagrees with the disease columns", split, inconsistent)
    return col.build({"reader": "rfmid", "root": root, "split": split, "vocabulary": vocabulary})


IDRID_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
    "test": ("b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
}


def read_idrid(
    root: str | Path,
    *,
    split: str = "train",
    task: str = "referable",
    images_dir: str | None = None,
    missing: OnMissing = "error",
) -> DatasetSource:
    """IDRiD disease grading (see module doc); ``root`` is the 'B. Disease Grading' folder."""
    root = Path(root)
    if split not in IDRID_SPLITS:
        raise ConfigError(f"IDRiD split must be one of {list(IDRID_SPLITS)}, got {split!r}")
    space = _graded_task(task, has_dme=True)
    csv_name, folder = IDRID_SPLITS[split]
    csv_path = first_existing(root, (f"2. Groundtruths/{csv_name}", csv_name), "IDRiD label CSV", folder=False)
    _, rows = read_table(csv_path, ("Image name", "Retinopathy grade", "Risk of macular edema"))
    index = _image_folder(root, images_dir, (f"1. Original Images/{folder}", folder, "."), "IDRiD")
    col = Collector(f"idrid-{split}-{task}", root, space, missing)
    for row in rows:
        grade = row.integer("Retinopathy grade", range(5))
        dme = row.integer("Risk of macular edema", range(3))
        extra = {"dr_grade": grade, "dme_grade": dme}
        sample = Sample(index.find(f"{row.require('Image name')}.jpg"), _graded_labels(task, grade, dme), extra=extra)
        col.add(sample, row.where)
    return col.build({"reader": "idrid", "root": root, "split": split, "task": task}, space.multi_label)


def read_messidor2(
    root: str | Path,
    *,
    task: str = "referable",
    images_dir: str | None = None,
    missing: OnMissing = "error",
) -> DatasetSource:
    """MESSIDOR-2 with the adjudicated grades (see module doc); ungradable images left out."""
    root = Path(root)
    space = _graded_task(task, has_dme=True)
    _, rows = read_table(
        root / "messidor_data.csv",
        ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"),
    )
    index = _image_folder(root, images_dir, ("IMAGES", "images", "preprocess", "."), "MESSIDOR-2")
    col = Collector(f"messidor2-{task}", root, space, missing)
    for row in rows:
        if row.integer("adjudicated_gradable", (0, 1)) == 0:
            col.drop("ungradable")
            continue
        grade = row.integer("adjudicated_dr_grade", range(5))
        dme = row.integer("adjudicated_dme", (0, 1))
        extra = {"dr_grade": grade, "dme_grade": dme}
        sample = Sample(index.find(row.require("image_id")), _graded_labels(task, grade, dme), extra=extra)
        col.add(sample, row.where)
    return col.build({"reader": "messidor2", "root": root, "task": task}, space.multi_label)
