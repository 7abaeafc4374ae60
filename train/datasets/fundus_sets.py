"""Adapters for public fundus datasets, each in the layout its publisher ships.

What each adapter assumes (verified against public code that reads these files,
not against the archives themselves, which are not available here):

- APTOS 2019: ``root/train.csv`` (``id_code,diagnosis``; diagnosis 0-4) and
  ``root/train_images/<id_code>.png``. No patient ids (each image its own group),
  and the set holds some photographs twice under different ids (Kaggle
  discussions list them), so ``split=``/``fold=`` can put copies on both sides.
  Only the training split: the competition's test labels were never published.
- ODIR-5K, Kaggle ``full_df.csv`` layout (the .xlsx needs a dependency we do
  not take): one row per image with ``ID`` (patient), ``Left-/Right-Diagnostic
  Keywords``, patient-level flags ``N,D,G,C,A,H,M,O`` (both eyes together),
  ``filename`` (``<ID>_left.jpg``/``<ID>_right.jpg``) and ``labels`` (ONE code,
  from the image's first keyword only); images in ``root/preprocessed_images/``.
  An image's labels come from its own eye's keywords (:func:`odir_keyword_codes`:
  every disease the eye has, not only the first); keywords about the photograph
  (``lens dust``, ``low image quality``, ...) give no label, an image with only
  those is left out (``dropped['no_diagnosis']``), and one marked ``anterior
  segment image`` or ``no fundus image`` too (``dropped['not_fundus']``). The
  patient flags are checked against both eyes' codes (a warning counts rows
  that differ) and kept in ``extra``. ODIR's ``D`` means any diabetic
  retinopathy, not referable DR; ``M`` is pathological myopia.
- RFMiD: ``RFMiD_<Training|Validation|Testing>_Labels.csv`` (``ID,Disease_Risk``
  then 45 0/1 disease columns ``DR,ARMD,MH,DN,MYA,BRVO,TSLN,...``) and images
  ``<ID>.png``, found in the publisher's layout (``2. Groundtruths/a. ...csv``,
  ``1. Original Images/a. Training Set``), the Kaggle mirror's
  (``Training_Set/Training_Set/``, ``Evaluation_Set/Evaluation_Set/Validation``,
  ``Test_Set/Test_Set/Test``) or flat (``Training/``, ``Validation/``, ``Test/``),
  so one root serves every split. Careful: ``MH`` is *media haze*; macular hole
  is ``MHL``. No patient ids.
- IDRiD disease grading: ``2. Groundtruths/a. IDRiD_Disease Grading_Training
  Labels.csv`` (or that file in the root) with ``Image name``, ``Retinopathy
  grade`` (0-4) and ``Risk of macular edema `` (0-2; trailing space in the real
  header; trailing empty columns and blank lines occur); images
  ``1. Original Images/a. Training Set/<name>.jpg``. Testing split: the ``b.``
  files. No patient ids; numbering restarts per split. DME risk 1 means
  exudates *beyond* one disc diameter of the macula centre, 2 within it: only
  2 is DME here (the referable DME of the ``dme`` class and of MESSIDOR-2).
- MESSIDOR-2 with the adjudicated grades (Kaggle google-brain/messidor2-dr-grades):
  ``messidor_data.csv`` with ``image_id`` (file name incl. extension),
  ``adjudicated_dr_grade`` (0-4), ``adjudicated_dme`` (0/1: referable DME),
  ``adjudicated_gradable`` (0/1; ungradable rows have no grade and are left out,
  counted in ``dropped['ungradable']``); the mirror that renamed the first two
  (``id_code``, ``diagnosis``) is read too. Images in ``IMAGES/``, ``images/``,
  ``preprocess/`` (or that mirror's ``messidor-2/messidor-2/preprocess/``) or the
  root; a file with the same stem but another extension is accepted (mirrors
  convert to PNG). The exam pairing (two eyes of one patient) comes from
  ``messidor-2.csv`` (ADCIS's ``left;right`` list) in the root or its parent;
  without it each image is its own group, with a warning.

Mapping onto the project vocabulary: DR-graded sets (APTOS, IDRiD, MESSIDOR-2)
offer ``task='referable'`` (``referable_dr``: ICDR grade >= 2, i.e. moderate
NPDR or worse, or referable DME where the set grades it; else
``non_referable``, which includes mild NPDR), ``task='any_dr'`` (``dr``: grade
>= 1, else ``normal``; the meaning of ``dr`` in ODIR, RFMiD and TVHL),
``task='grade'`` (five classes ``normal, mild_npdr, moderate_npdr,
severe_npdr, pdr``) and, where a DME grade exists, ``task='dr_dme'``
(multi-label: ``dr`` for any DR, ``dme`` for referable DME, else ``normal``).
``extra['dr_grade']`` (and ``extra['dme_grade']``) keep the raw grades for
quadratic-kappa metrics. ODIR and RFMiD map their codes with the tables below
(``vocabulary='raw'`` keeps the dataset's own codes).
"""

from __future__ import annotations

import ast
import csv
import io
import logging
from pathlib import Path

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.runtime.fsio import read_user_text
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
    "referable": (("non_referable", "referable_dr"), False),
    "any_dr": (("normal", "dr"), False),
    "grade": (DR_GRADE_NAMES, False),
    "dr_dme": (("normal", "dr", "dme"), True),
}
VOCABULARIES = ("mapped", "raw")

ODIR_CODES: dict[str, str] = {
    "N": "normal", "D": "dr", "G": "glaucoma", "C": "cataract", "A": "amd",
    "H": "hypertensive_retinopathy", "M": "pathologic_myopia", "O": "other",
}
# RFMiD codes with a counterpart in the vocabulary; every other code maps to 'other'. ODC (optic disc
# cupping) is the glaucoma-suspect sign RFMiD grades; it is read as glaucoma (RFMiD has no other).
RFMID_CODES: dict[str, str] = {
    "DR": "dr", "ARMD": "amd", "MH": "media_haze", "DN": "drusen", "MYA": "pathologic_myopia",
    "BRVO": "rvo", "CRVO": "rvo", "BRAO": "rao", "CRAO": "rao", "ERM": "erm",
    "MHL": "macular_hole", "RP": "rp", "ODC": "glaucoma", "CSR": "csc",
}


def _graded_task(task: str, *, has_dme: bool) -> LabelSpace:
    allowed = [t for t in GRADED_TASKS if has_dme or t != "dr_dme"]
    if task not in allowed:
        raise ConfigError(f"task {task!r} unknown for this dataset; choose one of {allowed}")
    classes, multi = GRADED_TASKS[task]
    return LabelSpace(classes, multi)


def _graded_labels(task: str, dr_grade: int, referable_dme: bool = False) -> tuple[str, ...]:
    """One image's labels under ``task`` from its ICDR grade (0-4) and whether it has referable DME.

    ``dr`` is any diabetic retinopathy (grade >= 1), as in ODIR, RFMiD, TVHL and the ``dr`` description;
    ``referable_dr`` is moderate NPDR or worse (grade >= REFERABLE_GRADE) or referable DME, the usual
    definition of referable disease (the DME part only where the dataset grades DME).
    """
    if task == "grade":
        return (DR_GRADE_NAMES[dr_grade],)
    if task == "referable":
        return ("referable_dr",) if dr_grade >= REFERABLE_GRADE or referable_dme else ("non_referable",)
    found = ["dr"] if dr_grade >= 1 else []
    if task == "dr_dme" and referable_dme:
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
    """APTOS 2019 training set (see module doc); task 'referable', 'any_dr' or 'grade'."""
    root = Path(root)
    space = _graded_task(task, has_dme=False)
    _, rows = read_table(root / "train.csv", ("id_code", "diagnosis"))
    col = Collector(f"aptos-{task}", root, space, missing)
    for row in rows:
        grade = row.integer("diagnosis", range(5))
        path = root / "train_images" / f"{row.require('id_code')}.png"
        col.add(Sample(path, _graded_labels(task, grade), extra={"dr_grade": grade}), row.where)
    return col.build({"reader": "aptos", "root": root, "task": task}, space.multi_label)


# ODIR's per-eye diagnostic keywords -> its category codes. The categories are those of the ODIR-5K
# annotation (N, D, G, C, A, H, M, O); a keyword naming none of the first seven is O. The patient-level
# flags N..O of a row are the union over both eyes, which read_odir checks.
_ODIR_KEYWORD_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("N", ("normal fundus",)),
    ("D", ("diabetic retinopathy", "nonproliferative retinopathy", "non proliferative retinopathy",
           "proliferative retinopathy")),
    ("G", ("glaucoma",)),
    ("C", ("cataract",)),
    ("A", ("age-related macular degeneration", "age related macular degeneration")),
    ("H", ("hypertensive retinopathy",)),
    ("M", ("myopi",)),  # pathological myopia, myopic maculopathy, myopia retinopathy
)
# Keywords about the photograph, not the eye: no diagnosis.
_ODIR_IMAGE_COMMENTS = frozenset({
    "lens dust", "image offset", "low image quality", "optic disk photographically invisible",
    "anterior segment image", "no fundus image",
})
# A photograph that is not of the fundus (left out of the dataset).
_ODIR_NOT_FUNDUS = frozenset({"anterior segment image", "no fundus image"})


def odir_keyword_codes(keywords: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ODIR category codes of one eye's diagnostic keywords, and the keywords about the photograph.

    Keywords are separated by ASCII or full-width commas (both occur in ``full_df.csv``). ``normal
    fundus`` next to a disease keyword is dropped (the disease wins). Codes come in ODIR's N..O order.
    """
    codes: set[str] = set()
    comments: list[str] = []
    for raw in keywords.replace("\uff0c", ",").split(","):
        kw = " ".join(raw.lower().split())
        if not kw:
            continue
        if kw in _ODIR_IMAGE_COMMENTS:
            comments.append(kw)
            continue
        hit = next((code for code, parts in _ODIR_KEYWORD_RULES if any(p in kw for p in parts)), "O")
        codes.add(hit)
    if len(codes) > 1:
        codes.discard("N")
    return tuple(c for c in ODIR_CODES if c in codes), tuple(comments)


def _odir_first_code(row: Row) -> str | None:
    """The ``labels`` column: ODIR's one code for the image (from its first keyword), or None if unreadable."""
    raw = row.get("labels") or ""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = [v.strip(" '\"") for v in raw.strip("[]").split(",")]
    codes = [str(c) for c in (value if isinstance(value, (list, tuple)) else (value,))]
    return codes[0] if len(codes) == 1 and codes[0] in ODIR_CODES else None


def read_odir(
    root: str | Path,
    *,
    vocabulary: str = "mapped",
    images_dir: str = "preprocessed_images",
    missing: OnMissing = "error",
) -> DatasetSource:
    """ODIR-5K from ``full_df.csv`` (see module doc); multi-label from each eye's own keywords; patient = ``ID``."""
    root = Path(root)
    _check_vocabulary(vocabulary)
    classes = order_classes(ODIR_CODES.values()) if vocabulary == "mapped" else tuple(ODIR_CODES)
    _, rows = read_table(root / "full_df.csv", ("ID", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords",
                                                "filename"))
    col = Collector(f"odir-{vocabulary}", root, LabelSpace(classes, True), missing)
    flags_disagree = 0
    for row in rows:
        filename = row.require("filename")
        stem = Path(filename).stem.lower()
        eye = "left" if stem.endswith("_left") else "right" if stem.endswith("_right") else None
        if eye is None:
            raise DataError(f"{row.where}: file name {filename!r} does not end in _left or _right; the eye's "
                            "keywords cannot be told apart")
        own = row.require("Left-Diagnostic Keywords" if eye == "left" else "Right-Diagnostic Keywords")
        codes, comments = odir_keyword_codes(own)
        if any(c in _ODIR_NOT_FUNDUS for c in comments):
            col.drop("not_fundus")
            continue
        if not codes:  # only remarks about the photograph (e.g. 'low image quality'): no diagnosis to learn
            col.drop("no_diagnosis")
            continue
        other_eye = row.get("Right-Diagnostic Keywords" if eye == "left" else "Left-Diagnostic Keywords") or ""
        both = set(codes) | set(odir_keyword_codes(other_eye)[0])
        flags = {c: row.get(c) for c in ODIR_CODES if c in row.values}
        if flags and any((flags[c] == "1") != (c in both) for c in flags if flags[c] in ("0", "1")):
            flags_disagree += 1
        labels = order_classes(ODIR_CODES[c] for c in codes) if vocabulary == "mapped" else codes
        extra = {
            "raw_labels": codes,
            "keywords": own,
            "image_comments": comments,
            "first_keyword_code": _odir_first_code(row),
            "patient_flags": flags,
            "age": row.get("Patient Age"),
            "sex": row.get("Patient Sex"),
        }
        sample = Sample(root / images_dir / filename, labels, patient=row.require("ID"), eye=eye, extra=extra)
        col.add(sample, row.where)
    if flags_disagree:
        log.warning("ODIR: on %d rows the patient-level flags N..O differ from the codes of both eyes' keywords; "
                    "the keywords are used", flags_disagree)
    return col.build({"reader": "odir", "root": root, "vocabulary": vocabulary, "images_dir": images_dir})


# Per split: the label CSV and the image folder, each as the places the publisher's release (IEEE
# DataPort / the challenge archive: "1. Original Images", "2. Groundtruths"), the Kaggle mirror
# (Training_Set/Training_Set, Evaluation_Set/Evaluation_Set, Test_Set/Test_Set) and a flat folder put
# them, so one root serves every split.
RFMID_SPLITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (
        ("2. Groundtruths/a. RFMiD_Training_Labels.csv", "a. RFMiD_Training_Labels.csv",
         "Training_Set/Training_Set/RFMiD_Training_Labels.csv", "Training_Set/RFMiD_Training_Labels.csv",
         "RFMiD_Training_Labels.csv"),
        ("1. Original Images/a. Training Set", "a. Training Set", "Training_Set/Training_Set/Training",
         "Training_Set/Training", "Training", "images", "."),
    ),
    "val": (
        ("2. Groundtruths/b. RFMiD_Validation_Labels.csv", "b. RFMiD_Validation_Labels.csv",
         "Evaluation_Set/Evaluation_Set/RFMiD_Validation_Labels.csv", "Evaluation_Set/RFMiD_Validation_Labels.csv",
         "RFMiD_Validation_Labels.csv"),
        ("1. Original Images/b. Validation Set", "b. Validation Set", "Evaluation_Set/Evaluation_Set/Validation",
         "Evaluation_Set/Validation", "Validation", "images", "."),
    ),
    "test": (
        ("2. Groundtruths/c. RFMiD_Testing_Labels.csv", "c. RFMiD_Testing_Labels.csv",
         "Test_Set/Test_Set/RFMiD_Testing_Labels.csv", "Test_Set/RFMiD_Testing_Labels.csv",
         "RFMiD_Testing_Labels.csv"),
        ("1. Original Images/c. Testing Set", "c. Testing Set", "Test_Set/Test_Set/Test", "Test_Set/Test", "Test",
         "images", "."),
    ),
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
    csv_names, candidates = RFMID_SPLITS[split]
    csv_path = first_existing(root, csv_names, f"RFMiD {split} label CSV", folder=False)
    header, rows = read_table(csv_path, ("ID", "Disease_Risk"))
    codes = [h for h in header if h and h not in ("ID", "Disease_Risk")]
    if not codes:
        raise DataError(f"{csv_path}: no disease columns after ID, Disease_Risk; columns found: {header}.")
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
        # Risk of macular edema 1 is exudates further than one disc diameter from the macula centre; only 2
        # (within it) is the referable, clinically significant DME the dme class and MESSIDOR-2 mean.
        labels = _graded_labels(task, grade, referable_dme=dme == 2)
        sample = Sample(index.find(f"{row.require('Image name')}.jpg"), labels, extra=extra)
        col.add(sample, row.where)
    return col.build({"reader": "idrid", "root": root, "split": split, "task": task}, space.multi_label)


# messidor_data.csv column names: the adjudicated-grades release, and the Kaggle mirror that renamed
# two of them (mariaherrerot/messidor2preprocess: id_code, diagnosis).
_MESSIDOR_COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("image_id", "id_code"),
    "grade": ("adjudicated_dr_grade", "diagnosis"),
    "dme": ("adjudicated_dme",),
    "gradable": ("adjudicated_gradable",),
}
MESSIDOR_PAIRS = "messidor-2.csv"


def _messidor_columns(header: list[str], path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for role, names in _MESSIDOR_COLUMNS.items():
        hit = next((n for n in names if n in header), None)
        if hit is None:
            raise DataError(f"{path}: missing column {' or '.join(repr(n) for n in names)}; columns found: "
                            f"{[h for h in header if h]}. Expected the adjudicated grades' messidor_data.csv.")
        found[role] = hit
    return found


def read_messidor_pairs(path: Path) -> dict[str, tuple[str, str]]:
    """``messidor-2.csv`` (ADCIS): one exam per line, ``left;right`` image names -> {stem: (exam, eye)}.

    The exam is named after its left image's stem; stems are matched in lower case, so a mirror that
    converted the .tif/.JPG files to PNG still pairs. A header line (``left;right``) is optional.
    """
    out: dict[str, tuple[str, str]] = {}
    text = read_user_text(path, "MESSIDOR-2 exam list")
    for n, cells in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=";"), 1):
        cells = [c.strip() for c in cells if c.strip()]
        if not cells or [c.lower() for c in cells] == ["left", "right"]:
            continue
        if len(cells) != 2:
            raise DataError(f"{path}, line {n}: expected two image names 'left;right', got {cells}")
        exam = Path(cells[0]).stem
        for name, eye in zip(cells, ("left", "right")):
            out[Path(name).stem.lower()] = (exam, eye)
    return out


def read_messidor2(
    root: str | Path,
    *,
    task: str = "referable",
    images_dir: str | None = None,
    missing: OnMissing = "error",
) -> DatasetSource:
    """MESSIDOR-2 with the adjudicated grades (see module doc); ungradable images left out.

    The two eyes of an exam share a patient id when ``messidor-2.csv`` (the exam list ADCIS ships) is
    in ``root`` or its parent folder; without it every image is its own group (a warning says so).
    """
    root = Path(root)
    space = _graded_task(task, has_dme=True)
    table = root / "messidor_data.csv"
    header, rows = read_table(table, ())
    cols = _messidor_columns(header, table)
    pairs_path = next((p for p in (root / MESSIDOR_PAIRS, root.parent / MESSIDOR_PAIRS) if p.is_file()), None)
    pairs = read_messidor_pairs(pairs_path) if pairs_path is not None else {}
    if pairs_path is None:
        log.warning("MESSIDOR-2: %s (the exam list pairing each patient's two eyes) not found in %s or its parent; "
                    "every image is its own group, so split=/fold= can put the two eyes of one exam on both sides",
                    MESSIDOR_PAIRS, root)
    index = _image_folder(root, images_dir, ("IMAGES", "images", "preprocess", "messidor-2/messidor-2/preprocess",
                                             "messidor-2/preprocess", "."), "MESSIDOR-2")
    col = Collector(f"messidor2-{task}", root, space, missing)
    unpaired = 0
    for row in rows:
        if row.integer(cols["gradable"], (0, 1)) == 0:
            col.drop("ungradable")
            continue
        grade = row.integer(cols["grade"], range(5))
        dme = row.integer(cols["dme"], (0, 1))
        extra = {"dr_grade": grade, "dme_grade": dme}
        name = row.require(cols["image"])
        exam, eye = pairs.get(Path(name).stem.lower(), (None, None))
        unpaired += bool(pairs) and exam is None
        sample = Sample(index.find(name), _graded_labels(task, grade, referable_dme=dme == 1), patient=exam, eye=eye,
                        extra=extra)
        col.add(sample, row.where)
    if unpaired:
        log.warning("MESSIDOR-2: %d images are not in %s; each is its own group", unpaired, pairs_path)
    return col.build({"reader": "messidor2", "root": root, "task": task}, space.multi_label)
