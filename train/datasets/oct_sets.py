"""Adapters for public OCT B-scan datasets.

What each adapter assumes:

- OCT2017 (Kermany et al., 2018): ``root/<split>/<CLASS>/<CLASS>-<patient>-<n>.jpeg``
  with split ``train``/``test`` (Kaggle mirrors add ``val``) and classes
  ``CNV, DME, DRUSEN, NORMAL``. The patient id is the middle field of the file
  name; a name that does not follow the pattern, or whose class prefix is not
  its folder's, is a DataError naming the file.
- OCTDL (Kulyabin et al., 2024): one folder per class ``AMD, DME, ERM, NO, RAO,
  RVO, VID`` with files ``<class>_<patient>_<n>.jpg`` (class prefix in any case).
  When ``OCTDL_labels.csv`` is present it drives the reader: columns
  ``file_name`` (with or without extension), ``disease`` (the class folder) and
  ``patient_id`` are required; ``subcategory`` and ``eye`` are read when present.
  The CSV is looked for in the root and beside it (Mendeley ships the archive
  and the CSV as two files). Without it the folders are scanned and the patient id parsed from the file
  name (a name that does not parse gets no patient: its own split group). The
  CSV's exact column set is taken from public code that reads it; only those
  three columns are relied on. Image files in the class folders that no row
  names are not read; they are counted in the source's ``dropped['not_in_csv']``
  with a warning.

Mapping onto the project vocabulary (``vocabulary='raw'`` keeps the folder names):
OCT2017 ``CNV`` (neovascular AMD) and ``DRUSEN`` (early AMD) -> ``amd``, ``DME`` ->
``dme``, ``NORMAL`` -> ``normal`` (the unpaired pools meet the fundus sets' ``amd``
that way); ``vocabulary='findings'`` keeps the four classes of the published
benchmark as ``cnv``, ``dme``, ``drusen``, ``normal``; OCTDL ``AMD`` -> ``amd``, ``DME`` -> ``dme``,
``ERM`` -> ``erm``, ``NO`` -> ``normal``, ``RAO`` -> ``rao``, ``RVO`` -> ``rvo``,
``VID`` (vitreomacular interface disease) -> ``vmi``. ``extra['raw_label']``
keeps the folder name. Both are single-label.

Files of a type not read and files in sub-folders of a class folder are skipped as ``folder:``
skips them: a warning per class folder, and counted in the source's ``dropped``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train.datasets.core import (
    Collector,
    DatasetSource,
    LabelSpace,
    OnMissing,
    Sample,
    StemIndex,
    order_classes,
    parse_eye,
    read_table,
    scan_class_folders,
)

log = logging.getLogger(__name__)

OCT2017_CLASSES: dict[str, str] = {"CNV": "amd", "DME": "dme", "DRUSEN": "amd", "NORMAL": "normal"}
OCT2017_FINDINGS: dict[str, str] = {"CNV": "cnv", "DME": "dme", "DRUSEN": "drusen", "NORMAL": "normal"}
OCT2017_SPLITS = ("train", "test", "val")
OCTDL_CLASSES: dict[str, str] = {
    "AMD": "amd", "DME": "dme", "ERM": "erm", "NO": "normal", "RAO": "rao", "RVO": "rvo", "VID": "vmi",
}
_KERMANY_NAME = re.compile(r"([A-Z]+)-(\d+)-(\d+)")
_OCTDL_NAME = re.compile(r"([A-Za-z]+)_(\d+)_(\d+)")


def _space(mapping: dict[str, str], vocabulary: str, allowed: tuple[str, ...] = ("mapped", "raw")) -> LabelSpace:
    if vocabulary not in allowed:
        raise ConfigError(f"vocabulary must be one of {list(allowed)}, got {vocabulary!r}")
    return LabelSpace(tuple(mapping) if vocabulary == "raw" else order_classes(mapping.values()), False)


def read_oct2017(
    root: str | Path, *, split: str = "train", vocabulary: str = "mapped"
) -> DatasetSource:
    """OCT2017 / Kermany (see module doc); split 'train', 'test', 'val' or 'all' (those present)."""
    root = Path(root)
    mapping = OCT2017_FINDINGS if vocabulary == "findings" else OCT2017_CLASSES
    space = _space(mapping, vocabulary, ("mapped", "findings", "raw"))
    if split not in (*OCT2017_SPLITS, "all"):
        raise ConfigError(f"OCT2017 split must be one of {[*OCT2017_SPLITS, 'all']}, got {split!r}")
    splits = [s for s in OCT2017_SPLITS if (root / s).is_dir()] if split == "all" else [split]
    missing_split = [s for s in splits if not (root / s).is_dir()]
    if not splits or missing_split:
        raise DataError(f"OCT2017: {root / (missing_split or ['train'])[0]} not found; point at the folder that "
                        "holds train/ and test/ (Kaggle's archive adds val/ and names the folder 'OCT2017 ', "
                        "with a trailing space)")
    col = Collector(f"oct2017-{split}-{vocabulary}", root, space)
    for sp in splits:
        # col.dropped: skipped files (other types, sub-folders) are counted as the folder: reader counts them,
        # so the source's ``dropped`` and a no-images error say what was left out, not only the log.
        for cls, path, size in scan_class_folders(root / sp, tuple(OCT2017_CLASSES), "OCT2017", col.dropped):
            m = _KERMANY_NAME.fullmatch(path.stem)
            if m is None or m.group(1) != cls:
                raise DataError(
                    f"{path}: file name does not follow <CLASS>-<patient>-<n> with CLASS={cls} "
                    f"(the OCT2017 naming); rename it or move it to its class folder."
                )
            label = cls if vocabulary == "raw" else mapping[cls]
            sample = Sample(path, (label,), patient=m.group(2), modality="oct", extra={"raw_label": cls, "split": sp})
            col.add(sample, str(path), size)
    return col.build({"reader": "oct2017", "root": root, "split": split, "vocabulary": vocabulary}, False)


def read_octdl(
    root: str | Path,
    *,
    vocabulary: str = "mapped",
    labels_csv: str = "OCTDL_labels.csv",
    missing: OnMissing = "error",
) -> DatasetSource:
    """OCTDL (see module doc): from ``labels_csv`` when present, else from the class folders."""
    root = Path(root)
    space = _space(OCTDL_CLASSES, vocabulary)
    col = Collector(f"octdl-{vocabulary}", root, space, missing)
    options = {"reader": "octdl", "root": root, "vocabulary": vocabulary, "labels_csv": labels_csv}
    csv_path = next((p for p in (root / labels_csv, root.parent / labels_csv) if p.is_file()), root / labels_csv)
    if csv_path.is_file():
        log.info("OCTDL: labels from %s", csv_path)
        header, rows = read_table(csv_path, ("file_name", "disease", "patient_id"))
        # Every class folder is listed once, up front: the rows look their files up there, and what no row
        # names is counted (the CSV drives the reader; those files are not read).
        folders = {cls: StemIndex(root / cls) for cls in OCTDL_CLASSES}
        listed: set[Path] = set()
        for row in rows:
            disease = row.require("disease")
            if disease not in OCTDL_CLASSES:
                raise DataError(
                    f"{row.where}: unknown label {disease!r} in column 'disease'; allowed labels: {list(OCTDL_CLASSES)}."
                )
            path = folders[disease].find(row.require("file_name"))
            listed.add(path)
            extra = {"raw_label": disease, "subcategory": row.get("subcategory") or None}
            sample = Sample(
                path,
                (OCTDL_CLASSES[disease] if vocabulary == "mapped" else disease,),
                patient=row.require("patient_id"),
                eye=parse_eye(row.get("eye"), strict=False) if "eye" in header else None,
                modality="oct",
                extra=extra,
            )
            col.add(sample, row.where)
        _count_unlisted(col, folders, listed, csv_path)
        return col.build(options, False)
    unparsed = 0
    for cls, path, size in scan_class_folders(root, tuple(OCTDL_CLASSES), "OCTDL", col.dropped):  # counted too
        m = _OCTDL_NAME.fullmatch(path.stem)
        unparsed += m is None
        label = OCTDL_CLASSES[cls] if vocabulary == "mapped" else cls
        sample = Sample(path, (label,), patient=m.group(2) if m else None, modality="oct", extra={"raw_label": cls})
        col.add(sample, str(path), size)
    if unparsed:
        log.warning("OCTDL: %d file names do not follow <class>_<patient>_<n>; they get no patient id", unparsed)
    return col.build(options, False)


def _count_unlisted(col: Collector, folders: dict[str, StemIndex], listed: set[Path], csv_path: Path) -> None:
    """Count (``dropped['not_in_csv']``) and warn about the class folders' image files no CSV row names.

    Hidden files (macOS' ``._`` copies) are passed over, as the folder scan passes them over.
    """
    unlisted = sorted(p for index in folders.values() for p in index.by_name.values()
                      if p not in listed and not p.name.startswith("."))
    if not unlisted:
        return
    col.drop("not_in_csv", len(unlisted))
    n = len(unlisted)
    log.warning("OCTDL: %d image file%s not listed in %s left out (e.g. %s): the CSV says which files are read; "
                "add a row for each to read them", n, "" if n == 1 else "s", csv_path.name,
                unlisted[0].relative_to(col.root).as_posix())
