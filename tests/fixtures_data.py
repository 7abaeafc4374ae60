"""Tiny on-disk copies of real dataset layouts, for the dataset-reader tests.

Each builder writes small generated images (cv2.imwrite) and the label files
with the publisher's column names, quirks and file naming, and returns what a
correct reader must find.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

RFMID_CODES = (
    "DR ARMD MH DN MYA BRVO TSLN ERM LS MS CSR ODC CRVO TV AH ODP ODE ST AION PT RT RS CRS EDN RPEC "
    "MHL RP CWS CB ODPM PRH MNF HR CRAO TD CME PTCR CF VH MCA VS BRAO PLQ HPED CL"
).split()


def write_image(path: Path, seed: int = 0, size: int = 16) -> Path:
    """A small random colour image; the encoder follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    if not cv2.imwrite(str(path), img):
        raise RuntimeError(f"cv2.imwrite failed for {path}")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], *, trailer: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
        fh.write(trailer)
    return path


def make_folder_dataset(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        for i in range(n):
            write_image(root / c / f"img{i}.png", seed=i)
    return root


def make_generic_csv(root: Path) -> Path:
    """Paths under images/, three label forms side by side, patients P1-P3, OD/OS eyes."""
    rows = []
    spec = [("P1", "OD", "dr", "1", "0", "dr;dme"), ("P1", "OS", "normal", "0", "0", "normal"),
            ("P2", "R", "dme", "0", "1", "dme"), ("P3", "l", "dr", "1", "1", "dr ; dme")]
    for i, (patient, eye, single, dr, dme, multi) in enumerate(spec):
        write_image(root / "images" / f"{i}.jpg", seed=i)
        rows.append([f"images/{i}.jpg", patient, eye, single, dr, dme, multi])
    return write_csv(root / "table.csv", ["file", "pid", "eye", "label", "dr", "dme", "findings"], rows)


def make_synthetic(root: Path) -> Path:
    """The synthetic generator's CSV (path,patient,eye,modality,labels,masks) with masks for lesions."""
    rows = []
    spec = [("fundus", "dr;dme", True), ("fundus", "normal", False), ("oct", "amd", True), ("fundus", "glaucoma", True)]
    for i, (mod, labels, mask) in enumerate(spec):
        ext = "png" if mod == "oct" else "jpg"
        write_image(root / mod / f"{mod}_{i:05d}.{ext}", seed=i)
        masks = ""
        if mask:
            masks = f"masks/{mod}_{i:05d}.npz"
            (root / "masks").mkdir(parents=True, exist_ok=True)
            np.savez_compressed(root / masks, **{n: np.ones((4, 4), np.uint8) for n in labels.split(";")})
        rows.append([f"{mod}/{mod}_{i:05d}.{ext}", f"s{i // 2:04d}", "left" if i % 2 else "right", mod, labels, masks])
    return write_csv(root / "labels.csv", ["path", "patient", "eye", "modality", "labels", "masks"], rows)


TVHL_HEADER = ["path", "patient", "eye", "modality", "dme", "dr", "label"]


def make_tvhl(root: Path) -> Path:
    """fundus.csv/oct.csv like the real TVHL folder: dme, DR-graded and unknown rows."""
    fundus = [("0002", "OD", 1, "unknown", "dme"), ("0002", "OI", 1, "unknown", "dme"), ("1222", "OD", 0, "none", "normal"),
              ("1223", "OI", 0, "npdr", "npdr"), ("1224", "OD", 0, "pdr", "pdr"), ("1225", "OD", 1, "npdr", "dme")]
    octs = [("1222", "OD", 0, "none", "normal"), ("1226", "OI", 0, "unknown", "unknown"), ("0002", "OD", 1, "unknown", "dme")]
    for mod, spec, tag in (("fundus", fundus, "f"), ("oct", octs, "o")):
        rows = []
        for i, (patient, eye, dme, dr, label) in enumerate(spec):
            rel = f"{mod}/{patient}_{eye}_{tag}_{i}.jpg"
            write_image(root / rel, seed=i)
            rows.append([rel, patient, "right" if eye == "OD" else "left", mod, dme, dr, label])
        write_csv(root / f"{mod}.csv", TVHL_HEADER, rows)
    return root


def make_aptos(root: Path, grades: tuple[int, ...] = (0, 1, 2, 3, 4, 2)) -> Path:
    rows = []
    for i, g in enumerate(grades):
        code = f"{i:04x}c1434d8d7"
        write_image(root / "train_images" / f"{code}.png", seed=i)
        rows.append([code, g])
    write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    return root


ODIR_HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
               "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O", "filepath", "labels", "target",
               "filename"]


# Per patient: (left keywords, right keywords), as ODIR writes them (full-width commas between keywords).
ODIR_PATIENTS: dict[int, tuple[str, str]] = {
    0: ("cataract", "normal fundus"),
    1: ("mild nonproliferative retinopathy", "moderate non proliferative retinopathy"),
    2: ("normal fundus", "glaucoma"),
    3: ("lens dust\uff0cnormal fundus", "macular epiretinal membrane\uff0cdiabetic retinopathy"),
    4: ("anterior segment image", "low image quality"),
}
# The rows Kaggle's full_df.csv holds (one per image; not every eye of every patient is listed).
ODIR_ROWS = [(0, "right"), (0, "left"), (1, "right"), (1, "left"), (2, "right"), (3, "right"), (3, "left"),
             (4, "left"), (4, "right")]
# The 'labels' column: ONE code per image, from its first keyword (so 3_right, ERM first, is ['O']).
ODIR_FIRST_CODE = {(0, "right"): "N", (0, "left"): "C", (1, "right"): "D", (1, "left"): "D", (2, "right"): "G",
                   (3, "right"): "O", (3, "left"): "N", (4, "left"): "O", (4, "right"): "O"}


def make_odir(root: Path) -> Path:
    """full_df.csv rows as Kaggle ships them: one per image, both eyes' keywords, patient flags, one first code."""
    patient_codes = {0: "NC", 1: "D", 2: "NG", 3: "NDO", 4: ""}  # the union over both eyes
    rows = []
    for pid, eye in ODIR_ROWS:
        fn = f"{pid}_{eye}.jpg"
        write_image(root / "preprocessed_images" / fn, seed=pid)
        left, right = ODIR_PATIENTS[pid]
        code = ODIR_FIRST_CODE[(pid, eye)]
        flags = [int(c in patient_codes[pid]) for c in "NDGCAHMO"]
        target = str([int(c == code) for c in "NDGCAHMO"])
        rows.append([pid, 57, "Female", f"{pid}_left.jpg", f"{pid}_right.jpg", left, right, *flags,
                     f"../input/ocular-disease-recognition-odir5k/ODIR-5K/ODIR-5K/Training Images/{fn}",
                     f"['{code}']", target, fn])
    write_csv(root / "full_df.csv", ODIR_HEADER, rows)
    return root


def make_rfmid(root: Path) -> Path:
    """Training_Set layout: RFMiD_Training_Labels.csv (ID, Disease_Risk, 45 codes) + Training/<ID>.png."""
    positives = {1: ["DR"], 2: [], 3: ["MH", "MHL"], 4: ["ODC", "TSLN"], 5: ["ARMD", "DN"]}
    rows = []
    for i, pos in positives.items():
        write_image(root / "Training" / f"{i}.png", seed=i)
        rows.append([i, int(bool(pos)), *[int(c in pos) for c in RFMID_CODES]])
    write_csv(root / "RFMiD_Training_Labels.csv", ["ID", "Disease_Risk", *RFMID_CODES], rows)
    return root


IDRID_CSV = "a. IDRiD_Disease Grading_Training Labels.csv"


def make_idrid(root: Path) -> Path:
    """'B. Disease Grading' layout; header with the real trailing space, empty columns and blank lines."""
    spec = [("IDRiD_001", 3, 2), ("IDRiD_002", 0, 0), ("IDRiD_003", 2, 0), ("IDRiD_004", 1, 1)]
    rows = []
    for i, (name, grade, risk) in enumerate(spec):
        write_image(root / "1. Original Images" / "a. Training Set" / f"{name}.jpg", seed=i)
        rows.append([name, grade, risk, "", "", ""])
    header = ["Image name", "Retinopathy grade", "Risk of macular edema ", "", "", ""]
    write_csv(root / "2. Groundtruths" / IDRID_CSV, header, rows, trailer=",,,,,\r\n,,,,,\r\n")
    return root


def make_messidor2(root: Path) -> Path:
    """messidor_data.csv (image_id with extension) + IMAGES/; one ungradable row, one .JPG stored as .png."""
    spec = [("20051020_43808_0100_PP.png", "0", "0", "1"), ("20051020_43832_0100_PP.png", "2", "1", "1"),
            ("IM000001.JPG", "4", "0", "1"), ("IM000002.JPG", "", "", "0")]
    rows = []
    for i, (image_id, grade, dme, gradable) in enumerate(spec):
        stored = image_id if image_id.endswith(".png") else image_id.replace(".JPG", ".png")
        write_image(root / "IMAGES" / stored, seed=i)
        rows.append([image_id, grade, dme, gradable])
    write_csv(root / "messidor_data.csv", ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"], rows)
    return root


def make_oct2017(root: Path) -> Path:
    """train/ and test/ with CNV, DME, DRUSEN, NORMAL folders and <CLASS>-<patient>-<n>.jpeg names."""
    spec = {"train": [("CNV", "1016042", 1), ("CNV", "1016042", 2), ("DME", "1072015", 1), ("DRUSEN", "1083159", 1),
                      ("NORMAL", "1001666", 1), ("NORMAL", "1001772", 3)],
            "test": [("CNV", "1234567", 1), ("NORMAL", "7654321", 1)]}
    for split, items in spec.items():
        for i, (cls, pid, n) in enumerate(items):
            write_image(root / split / cls / f"{cls}-{pid}-{n}.jpeg", seed=i)
    return root


def make_octdl(root: Path, *, with_csv: bool) -> Path:
    """Class folders AMD..VID with <class>_<patient>_<n>.jpg; optionally OCTDL_labels.csv."""
    spec = [("AMD", "1047099", 1, "MNV"), ("AMD", "1047099", 2, "MNV"), ("DME", "1088513", 1, ""),
            ("NO", "1021542", 1, ""), ("VID", "1099999", 1, "MH")]
    rows = []
    for i, (cls, pid, n, sub) in enumerate(spec):
        stem = f"{cls.lower()}_{pid}_{n}"
        write_image(root / cls / f"{stem}.jpg", seed=i)
        rows.append([stem, cls, sub, "", pid, "OD" if i % 2 else "OS", "M", 2021, 16, 16])
    if with_csv:
        header = ["file_name", "disease", "subcategory", "condition", "patient_id", "eye", "sex", "year",
                  "image_width", "image_height"]
        write_csv(root / "OCTDL_labels.csv", header, rows)
    return root
