"""Readers for layouts users make themselves: folder-per-class, a generic CSV, the synthetic generator's CSV.

Assumptions
- Folder-per-class: ``root/<class>/<image>``, one level; the folder name is the
  class name (kept as is); hidden files are skipped, and so are sub-folders and
  files of other types (DICOM too), with a warning and a count in ``dropped``.
- Generic CSV: a header line; one column with the image path (relative to the
  CSV's folder unless ``image_root`` says otherwise) and the labels in exactly
  one of three forms: one class name per row, several 0/1 columns (one per
  class) or one column of ';'-separated class names. Without a layout
  (``csv:FILE`` on the command line) the header says which: ``path`` plus
  ``label`` (one class) or ``labels`` (';'-joined), and ``patient``, ``eye``,
  ``modality`` when present (:meth:`CsvLayout.infer`). A ``label`` cell holding
  ``;``, ``,`` or ``|`` and a ``labels`` name holding another of them are errors
  (several names in one class name). A row repeating an earlier row's image is
  left out when it says the same, an error otherwise.
- Two spellings of one class (``DR``/``dr``, ``healthy``/``normal``) are an error
  when the label space comes from the data.
- Synthetic CSV (``uopsl synth``): ``path,patient,eye,modality,labels,masks``,
  ``labels`` ';'-joined (``normal`` when no disease), ``path`` and ``masks``
  relative to the CSV folder, ``masks`` empty when none were written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PureWindowsPath
from typing import Any

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train.datasets.core import (
    MODALITIES,
    Collector,
    DatasetSource,
    LabelSpace,
    OnMissing,
    Row,
    Sample,
    order_classes,
    parse_eye,
    read_table,
    scan_class_folders,
    semicolon_hint,
)

log = logging.getLogger(__name__)

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no", ""}
# What people join several class names with; inside one class name each is a mistake.
_JOINERS = (";", ",", "|")
# CsvLayout's three ways of giving labels; exactly one is set.
_LABEL_FORMS = ("label_column", "label_columns", "multi_label_column")


def _space(classes: tuple[str, ...] | list[str] | None, multi_label: bool) -> LabelSpace | None:
    return LabelSpace(tuple(classes), multi_label) if classes is not None else None


def read_folder(
    root: str | Path,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    modality: str = "fundus",
    name: str = "folder",
) -> DatasetSource:
    """Single-label dataset from ``root/<class>/*`` (class = folder name).

    classes: the allowed classes in label-space order; a folder outside them is
    an unknown-label error. Default: every sub-folder, in vocabulary order.
    """
    root = Path(root)
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
    col = Collector(name, root, _space(classes, False))
    for cls, path, size in scan_class_folders(root, classes, name, col.dropped):
        col.add(Sample(path, (cls,), modality=modality), str(path), size)
    return col.build({"reader": "folder", "root": root, "classes": classes, "modality": modality}, multi_label=False)


@dataclass(frozen=True)
class CsvLayout:
    """Which columns of a CSV hold what. Set exactly one of the three label forms.

    label_column: one class name per row (single-label).
    label_columns: one 0/1 column per class; the column names are the classes.
        A row with no 1 gets ``(none_label,)`` when set, else no label.
    multi_label_column: class names joined by ``separator``.
    image_root: folder the paths are relative to (itself relative to the CSV's folder
        unless absolute; default: the CSV's folder).
    modality: used when there is no ``modality_column``.
    """

    path_column: str = "path"
    label_column: str | None = None
    label_columns: tuple[str, ...] = ()
    multi_label_column: str | None = None
    separator: str = ";"
    none_label: str | None = None
    patient_column: str | None = None
    eye_column: str | None = None
    modality_column: str | None = None
    modality: str = "fundus"
    image_root: str | None = None

    def __post_init__(self) -> None:
        forms = sum([self.label_column is not None, bool(self.label_columns), self.multi_label_column is not None])
        if forms != 1:
            raise ConfigError(
                "CsvLayout needs exactly one of label_column (one class per row), label_columns "
                f"(0/1 column per class) or multi_label_column (joined names); got {forms}."
            )
        if isinstance(self.label_columns, (str, list)):
            raise ConfigError(f"label_columns must be a tuple of column names, got {self.label_columns!r}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if not self.separator:
            raise ConfigError("separator must be a non-empty string")

    @classmethod
    def infer(cls, header: Sequence[str], source: str | Path = "the CSV", **named: Any) -> CsvLayout:
        """The layout a header implies, with ``named`` fields taking precedence.

        Without ``named``: ``path`` and ``label`` (one class per row) or ``labels``
        (``;``-joined names; ``label`` wins when both exist), with ``patient``, ``eye`` and
        ``modality`` columns used when present. That is the form of the ``labels.csv``
        ``uopsl synth`` writes and of the CSVs ``uopsl calibrate``/``validate`` accept.
        ``named`` (the command line's ``csv:FILE:path_column=image,label_column=diagnosis``)
        names columns of a table made elsewhere; naming one label form (``label_column``,
        ``label_columns`` or ``multi_label_column``) stops the other two from being inferred,
        and each named column must exist.
        """
        known = [f.name for f in fields(cls)]
        unknown = [k for k in named if k not in known]
        if unknown:
            raise ConfigError(f"CsvLayout has no field {unknown[0]!r}; its fields: {', '.join(known)}.")
        cols = {c.strip() for c in header}
        found = [c for c in header if c.strip()]
        named_form = any(named.get(k) for k in _LABEL_FORMS)
        path_column = named.get("path_column", "path")
        if path_column not in cols or not (named_form or cols & {"label", "labels"}):
            hint = semicolon_hint(source, header)
            if hint:
                raise DataError(hint)
            labels = "a 'label' (one class per row) or 'labels' (';'-joined class names) column"
            if not named:
                what = f"cannot tell the layout from columns {found}; expected a 'path' column and {labels}"
            elif path_column not in cols:
                what = f"path_column {path_column!r} names none of the columns {found}"
            else:
                what = f"no label column is named, and none of the columns {found} is {labels}"
            raise DataError(
                f"{source}: {what}. Rename the columns in the CSV, or name them in the dataset spec, e.g. "
                f"csv:FILE:path_column={(found + ['image'])[0]},label_column={(found[1:] + ['diagnosis'])[0]} (also "
                "multi_label_column= for joined names, label_columns=a+b for 0/1 columns, patient_column=, "
                "eye_column=; from Python: read_csv(path, CsvLayout(...)))."
            )
        inferred: dict[str, Any] = {}
        if not named_form:
            single = "label" in cols
            inferred.update(label_column="label" if single else None, multi_label_column=None if single else "labels")
        for key, column in (("patient_column", "patient"), ("eye_column", "eye"), ("modality_column", "modality")):
            # A modality named for the whole table is not overruled by a modality column found in it.
            if column in cols and not (key == "modality_column" and "modality" in named):
                inferred[key] = column
        layout = cls(**{**inferred, **named})
        missing = [c for c in layout.columns() if c not in cols]
        if missing:
            raise DataError(f"{source}: column(s) {missing} named in the dataset spec are not in the CSV; columns "
                            f"found: {found}. Check the spelling (names are case-sensitive).")
        return layout

    @property
    def multi_label(self) -> bool:
        return self.label_column is None

    def columns(self) -> list[str]:
        """Every column this layout reads (all must exist)."""
        cols = [self.path_column, self.label_column, self.multi_label_column, self.patient_column,
                self.eye_column, self.modality_column]
        return [c for c in cols if c] + list(self.label_columns)

    def labels(self, row: Row) -> tuple[str, ...]:
        if self.label_column is not None:
            value = row.require(self.label_column)
            joiner = next((j for j in _JOINERS if j in value), None)
            if joiner is not None:
                raise DataError(
                    f"{row.where}: column {self.label_column!r} holds {value!r}, several class names joined by "
                    f"{joiner!r}; that column takes one class per row. For images with several classes use a "
                    "'labels' column instead, names joined by ';' (e.g. dr;dme)."
                )
            return (value,)
        if self.multi_label_column is not None:
            raw = row.require(self.multi_label_column)
            names = tuple(dict.fromkeys(n.strip() for n in raw.split(self.separator) if n.strip()))
            if not names:
                raise DataError(f"{row.where}: column {self.multi_label_column!r} holds no class name ({raw!r}).")
            for n in names:
                joiner = next((j for j in _JOINERS if j in n), None)
                if joiner is not None:
                    example = self.separator.join(p.strip() for p in n.split(joiner))
                    raise DataError(
                        f"{row.where}: column {self.multi_label_column!r} holds {raw!r}, where {n!r} looks like "
                        f"several class names joined by {joiner!r}; expected names joined by {self.separator!r} "
                        f"(e.g. {example})."
                    )
            return names
        on = []
        for c in self.label_columns:
            v = row.get(c).lower()
            if v in _TRUE:
                on.append(c)
            elif v not in _FALSE:
                raise DataError(f"{row.where}: column {c!r} holds {row.get(c)!r}; expected 0 or 1.")
        if not on and self.none_label is not None:
            return (self.none_label,)
        return tuple(on)


def read_csv(
    csv_path: str | Path,
    layout: CsvLayout | None = None,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    name: str | None = None,
    missing: OnMissing = "error",
    columns: Mapping[str, Any] | None = None,
) -> DatasetSource:
    """Dataset from a CSV described by ``layout`` (default: inferred from the header, :meth:`CsvLayout.infer`).

    columns: fields of the inferred layout named by the caller (what the command line's
    ``csv:FILE:path_column=...`` sets); with ``layout`` given, an error (say it there).

    classes: allowed classes in label-space order (an unlisted label is an
    error naming file and row). Default: the 0/1 column names (plus
    ``none_label``) for ``label_columns``, else every name found, in vocabulary order.
    """
    csv_path = Path(csv_path)
    if layout is not None and columns:
        raise ConfigError(f"read_csv got both a layout and columns {dict(columns)}; name the columns in the layout.")
    header, rows = read_table(csv_path, layout.columns() if layout is not None else ())
    if layout is None:
        layout = CsvLayout.infer(header, csv_path, **(columns or {}))
    if classes is None and layout.label_columns:
        classes = order_classes(list(layout.label_columns) + ([layout.none_label] if layout.none_label else []))
    image_root = csv_path.parent / layout.image_root if layout.image_root else csv_path.parent
    col = Collector(name or csv_path.stem, image_root, _space(classes, layout.multi_label), missing)
    col.paths_from = f"image_root {layout.image_root!r}" if layout.image_root else "the CSV's folder"
    for row in rows:
        modality = row.require(layout.modality_column) if layout.modality_column else layout.modality
        if modality not in MODALITIES:
            raise DataError(f"{row.where}: modality {modality!r}; expected one of {list(MODALITIES)}.")
        sample = Sample(
            cell_path(image_root, row.require(layout.path_column)),
            layout.labels(row),
            patient=(row.get(layout.patient_column) or None) if layout.patient_column else None,
            eye=parse_eye(row.get(layout.eye_column), where=row.where) if layout.eye_column else None,
            modality=modality,
        )
        col.add(sample, row.where)
    options: dict[str, Any] = {"reader": "csv", "csv": csv_path, "classes": classes, **asdict(layout)}
    return col.build(options, multi_label=layout.multi_label)


def cell_path(root: Path, cell: str) -> Path:
    """An image path from a CSV cell, relative to ``root``; a table written on Windows (``img\\a.jpg``) works here too."""
    p = root / cell
    if "\\" in cell and os.sep == "/" and not p.exists():
        return root / PureWindowsPath(cell).as_posix()
    return p


SYNTHETIC_COLUMNS = ("path", "patient", "eye", "modality", "labels", "masks")
#: What ``uopsl synth`` writes next to ``labels.csv``: its settings, the classes it draws among them.
SYNTHETIC_CONFIG = "synth_config.json"
#: The label of a synthetic image without disease (not listed in the generator's classes: it is implicit).
SYNTHETIC_NORMAL = "normal"


def synthetic_classes(path: str | Path) -> tuple[str, ...] | None:
    """The classes the synthetic set at ``path`` (``labels.csv`` or its folder) was drawn from, or None.

    Read from ``synth_config.json`` (``config.classes``, plus the implicit
    ``normal``), in vocabulary order. Why: a small set can hold no image of
    a class the generator draws; the labels present then miss it, and an
    evaluation would call it unlabelled when it is a class with no positive
    image. None when the file is absent or does not list classes (a set made
    by hand); the labels present are then all there is to go by.
    """
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / SYNTHETIC_CONFIG
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): the label space comes from the labels present", config, exc)
        return None
    classes = (settings.get("config") or {}).get("classes") if isinstance(settings, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        log.warning("%s lists no classes (config.classes): the label space comes from the labels present", config)
        return None
    return order_classes([SYNTHETIC_NORMAL, *classes])


def read_synthetic(
    path: str | Path,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    modality: str | None = None,
    missing: OnMissing = "error",
) -> DatasetSource:
    """The synthetic generator's dataset (``labels.csv`` or its folder).

    modality: keep only 'fundus' or 'oct' rows (default: both).
    ``extra['masks']`` is the site-mask .npz path, or None.
    """
    path = Path(path)
    csv_path = path / "labels.csv" if path.is_dir() else path
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    _, rows = read_table(csv_path, SYNTHETIC_COLUMNS)
    base = csv_path.parent
    col = Collector("synthetic", base, _space(classes, True), missing)
    col.paths_from = "the CSV's folder"
    layout = CsvLayout(multi_label_column="labels")
    for row in rows:
        mod = row.require("modality")
        if mod not in MODALITIES:
            raise DataError(f"{row.where}: modality {mod!r}; expected one of {list(MODALITIES)}.")
        if modality is not None and mod != modality:
            col.drop(f"modality={mod}")
            continue
        masks = row.get("masks")
        sample = Sample(
            base / row.require("path"),
            layout.labels(row),
            patient=row.get("patient") or None,
            eye=parse_eye(row.get("eye"), where=row.where),
            modality=mod,
            extra={"masks": base / masks if masks else None},
        )
        col.add(sample, row.where)
    options = {"reader": "synthetic", "csv": csv_path, "classes": classes, "modality": modality}
    return col.build(options, multi_label=True)
