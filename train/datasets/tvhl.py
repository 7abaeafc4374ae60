"""TVHL fundus + OCT images (DME / DR), the project's real evaluation data.

Layout (see the README next to the data): ``root/fundus.csv`` and
``root/oct.csv`` with columns ``path,patient,eye,modality,dme,dr,label``;
``path`` is relative to ``root``; ``dme`` is 0/1; ``dr`` is
none/npdr/pdr/unknown; ``label`` is ``dme`` when DME is present, else the DR
grade (``normal``/``npdr``/``pdr``), or ``unknown`` (no DR grade, no DME).

Tasks (single-label):
- ``four_class``: normal / npdr / pdr / dme from ``label``; ``unknown`` rows left out.
- ``referable_dr``: npdr+pdr -> ``dr`` vs ``normal`` on the DR-graded cohort
  (``label`` in normal/npdr/pdr). This cohort has no acquisition-batch
  brightness confound; it leaves out the DME images, including the 40 fundus
  DME images that also carry a DR grade.
- ``dme``: ``dme`` vs ``normal``. Confounded by brightness (README pitfall 1):
  report a brightness-only baseline next to any figure on it.

``extra``: ``dme`` (0/1), ``dr`` (raw), ``dr_grade`` (none=0, npdr=1, pdr=2,
None when unknown), ``raw_label``. Each row's ``label`` must agree with its
``dme``/``dr`` columns; a disagreement is a DataError naming the row.
"""

from __future__ import annotations

from pathlib import Path

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train.datasets.core import MODALITIES, Collector, DatasetSource, LabelSpace, OnMissing, Sample, parse_eye
from uopsl.train.datasets.core import read_table

TVHL_COLUMNS = ("path", "patient", "eye", "modality", "dme", "dr", "label")
TVHL_TASKS: dict[str, tuple[str, ...]] = {
    "four_class": ("normal", "npdr", "pdr", "dme"),
    "referable_dr": ("normal", "dr"),
    "dme": ("normal", "dme"),
}
# Per task: TVHL's raw label -> the task's class; raw labels absent from a task's map are left out of it.
TVHL_TASK_LABELS: dict[str, dict[str, str]] = {
    "four_class": {"normal": "normal", "npdr": "npdr", "pdr": "pdr", "dme": "dme"},
    "referable_dr": {"normal": "normal", "npdr": "dr", "pdr": "dr"},
    "dme": {"normal": "normal", "dme": "dme"},
}
TVHL_RAW_LABELS = ("dme", "normal", "npdr", "pdr", "unknown")  # the label column's values
_DR_VALUES = {"none": 0, "npdr": 1, "pdr": 2, "unknown": None}


def _expected_label(dme: int, dr: str) -> str:
    if dme:
        return "dme"
    return {"none": "normal", "npdr": "npdr", "pdr": "pdr", "unknown": "unknown"}[dr]


def read_tvhl(
    root: str | Path,
    *,
    modality: str = "fundus",
    task: str = "four_class",
    missing: OnMissing = "error",
) -> DatasetSource:
    """TVHL images of ``modality`` ('fundus', 'oct' or 'both') labelled for ``task`` (see module doc)."""
    root = Path(root)
    if task not in TVHL_TASKS:
        raise ConfigError(f"TVHL task {task!r} unknown; choose one of {list(TVHL_TASKS)}")
    if modality not in (*MODALITIES, "both"):
        raise ConfigError(f"modality must be 'fundus', 'oct' or 'both', got {modality!r}")
    mapping = TVHL_TASK_LABELS[task]
    col = Collector(f"tvhl-{modality}-{task}", root, LabelSpace(TVHL_TASKS[task], multi_label=False), missing)
    for mod in MODALITIES if modality == "both" else (modality,):
        _, rows = read_table(root / f"{mod}.csv", TVHL_COLUMNS)
        for row in rows:
            label = row.require("label")
            if label not in TVHL_RAW_LABELS:
                raise DataError(f"{row.where}: unknown label {label!r}; allowed labels: {list(TVHL_RAW_LABELS)}.")
            dme = row.integer("dme", (0, 1))
            dr = row.require("dr")
            if dr not in _DR_VALUES:
                raise DataError(f"{row.where}: unknown dr grade {dr!r}; allowed: {list(_DR_VALUES)}.")
            if label != _expected_label(dme, dr):
                raise DataError(
                    f"{row.where}: label {label!r} contradicts dme={dme}, dr={dr!r} "
                    f"(expected {_expected_label(dme, dr)!r}); fix the row."
                )
            if row.require("modality") != mod:
                raise DataError(f"{row.where}: modality {row.get('modality')!r} in {mod}.csv; expected {mod!r}.")
            if label not in mapping:
                col.drop(f"{mod}:label={label} not in task {task}")
                continue
            sample = Sample(
                root / row.require("path"),
                (mapping[label],),
                patient=row.require("patient"),
                eye=parse_eye(row.get("eye"), where=row.where),
                modality=mod,
                extra={"dme": dme, "dr": dr, "dr_grade": _DR_VALUES[dr], "raw_label": label},
            )
            col.add(sample, row.where)
    return col.build({"reader": "tvhl", "root": root, "modality": modality, "task": task}, multi_label=False)
