"""Datasets: what the rest of the toolkit imports to read images and labels.

Torch-free: a reader returns a :class:`DatasetSource` (samples, label space,
fingerprint); the torch ``Dataset`` wrapper, preprocessing and augmentation
live elsewhere. Readers never decode images.

Readers (each module's docstring says what layout it assumes):

==============  ================================================================
``folder``      ``root/<class>/*`` (:func:`read_folder`)
``csv``         a CSV described by a :class:`CsvLayout` or by its header (:func:`read_csv`)
``synthetic``   the ``uopsl synth`` output (:func:`read_synthetic`)
``tvhl``        TVHL fundus/OCT (:func:`read_tvhl`), the project's real data
``aptos``       APTOS 2019 (:func:`read_aptos`)
``odir``        ODIR-5K ``full_df.csv`` (:func:`read_odir`)
``rfmid``       RFMiD (:func:`read_rfmid`)
``idrid``       IDRiD disease grading (:func:`read_idrid`)
``messidor2``   MESSIDOR-2 adjudicated grades (:func:`read_messidor2`)
``oct2017``     OCT2017 / Kermany (:func:`read_oct2017`)
``octdl``       OCTDL (:func:`read_octdl`)
==============  ================================================================

Splits: :func:`patient_split`, :func:`group_kfold`, :func:`take_shots` never put
one patient on both sides. Errors are :class:`~uopsl.runtime.errors.DataError`
naming the file and row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uopsl.runtime.errors import ConfigError
from uopsl.train.datasets.core import (
    EYES,
    IMAGE_EXTENSIONS,
    MODALITIES,
    VOCABULARY,
    DatasetSource,
    LabelSpace,
    Sample,
    fingerprint,
    order_classes,
)
from uopsl.train.datasets.fundus_sets import (
    DR_GRADE_NAMES,
    GRADED_TASKS,
    ODIR_CODES,
    REFERABLE_GRADE,
    RFMID_CODES,
    odir_keyword_codes,
    read_aptos,
    read_idrid,
    read_messidor2,
    read_odir,
    read_rfmid,
)
from uopsl.train.datasets.generic import CsvLayout, read_csv, read_folder, read_synthetic
from uopsl.train.datasets.oct_sets import OCT2017_CLASSES, OCTDL_CLASSES, read_oct2017, read_octdl
from uopsl.train.datasets.splits import (
    Split,
    check_apart,
    group_keys,
    group_kfold,
    links_within,
    patient_split,
    spec_folds,
    spec_split,
    take_shots,
)
from uopsl.train.datasets.tvhl import TVHL_TASKS, read_tvhl

READERS: dict[str, Callable[..., DatasetSource]] = {
    "folder": read_folder,
    "csv": read_csv,
    "synthetic": read_synthetic,
    "tvhl": read_tvhl,
    "aptos": read_aptos,
    "odir": read_odir,
    "rfmid": read_rfmid,
    "idrid": read_idrid,
    "messidor2": read_messidor2,
    "oct2017": read_oct2017,
    "octdl": read_octdl,
}


def reader_options(kind: str) -> dict[str, inspect.Parameter]:
    """The options of the reader named ``kind``: its parameters after the path, in signature order."""
    reader = READERS.get(kind)
    if reader is None:
        raise ConfigError(f"unknown dataset kind {kind!r}; choose one of {sorted(READERS)}")
    return dict(list(inspect.signature(reader).parameters.items())[1:])


def load_dataset(kind: str, root: str | Path, **options: Any) -> DatasetSource:
    """Read ``root`` with the reader named ``kind`` (see :data:`READERS`), passing ``options`` on.

    An option the reader does not take, or a ``root`` that does not exist, is a
    :class:`ConfigError` (not a ``TypeError`` from deep inside the reader).
    """
    accepted = reader_options(kind)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(
            f"dataset kind {kind!r} has no option {unknown[0]!r} (got {unknown[0]}={options[unknown[0]]!r}); "
            f"it accepts {', '.join(accepted) or 'no options'}."
        )
    required = [k for k, p in accepted.items() if p.default is p.empty and k not in options]
    if required:
        raise ConfigError(f"dataset kind {kind!r} needs the option {required[0]!r}; it accepts {', '.join(accepted)}.")
    if not Path(root).exists():
        raise ConfigError(f"{root}: no such file or folder (dataset kind {kind!r}); check the path.")
    return READERS[kind](root, **options)


__all__ = [
    "DR_GRADE_NAMES", "EYES", "GRADED_TASKS", "IMAGE_EXTENSIONS", "MODALITIES", "OCT2017_CLASSES",
    "OCTDL_CLASSES", "ODIR_CODES", "READERS", "REFERABLE_GRADE", "RFMID_CODES", "TVHL_TASKS", "VOCABULARY",
    "CsvLayout", "DatasetSource", "LabelSpace", "Sample", "Split",
    "check_apart", "fingerprint", "group_keys", "group_kfold", "links_within", "load_dataset", "odir_keyword_codes",
    "order_classes",
    "patient_split",
    "read_aptos", "read_csv", "read_folder", "read_idrid", "read_messidor2", "read_oct2017", "read_octdl",
    "read_odir", "read_rfmid", "read_synthetic", "read_tvhl", "reader_options", "spec_folds", "spec_split",
    "take_shots",
]
