"""Core dataset types and the plumbing every reader shares.

A reader turns a dataset on disk into a :class:`DatasetSource`: an ordered tuple
of :class:`Sample` (image path, class names, patient, eye, modality, extras), the
:class:`LabelSpace` those names live in and a content fingerprint that goes into
checkpoints and bundle manifests. Readers never decode images: they check that
each file exists (one ``stat``), which is also what the fingerprint hashes, so a
100k-image set loads in seconds.

Errors are :class:`~uopsl.runtime.errors.DataError` and always name the file and,
for tables, the row (1-based data row, and the physical line a text editor shows).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from uopsl.runtime.clikit import plural
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.runtime.optional import extra_hint
from uopsl.runtime.fsio import read_user_text, sha256_file
from uopsl.runtime.image_suffixes import DICOM_SUFFIXES, IMAGE_SUFFIXES
from uopsl.runtime.inputs import output_folder_kind
from uopsl.runtime.progress import NoBar, track
from uopsl.train.descriptions import canonical

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("fundus", "oct")
EYES: tuple[str, ...] = ("left", "right")
# What the runtime decodes (runtime.image_suffixes.IMAGE_SUFFIXES), so a folder dataset reads what screening reads,
# less DICOM: a folder dataset's contents must not change with a toolkit update, and PACS exports often hold
# each photograph as both .dcm and .jpg (counted twice, perhaps across folds). A list or CSV can name .dcm files.
IMAGE_EXTENSIONS = IMAGE_SUFFIXES - DICOM_SUFFIXES
# Files a class folder may hold that are no photograph and not worth a warning (Windows' thumbnail caches).
_FOLDER_JUNK = frozenset({"thumbs.db", "desktop.ini"})
OnMissing = Literal["error", "skip"]
T = TypeVar("T")

# The project's class vocabulary, in the order label spaces list them. Adapters
# map each dataset's own labels onto these names (their docstrings say how);
# names outside it (a user's folder names, RFMiD codes with vocabulary="raw")
# sort after, alphabetically. The first block matches the synthetic generator.
VOCABULARY: tuple[str, ...] = (
    "normal", "dr", "dme", "amd", "glaucoma", "rp", "macular_hole",
    # DR severity (international 5-point scale, TVHL's npdr/pdr)
    "mild_npdr", "moderate_npdr", "severe_npdr", "npdr", "pdr", "non_referable", "referable_dr",
    # other retinal / ocular findings of the public sets
    "cnv", "drusen", "erm", "vmi", "rvo", "rao", "csc", "hypertensive_retinopathy",
    "pathologic_myopia", "cataract", "media_haze", "other",
)

_EYE_WORDS = {
    "left": "left", "l": "left", "os": "left", "oi": "left",
    "right": "right", "r": "right", "od": "right",
}


def order_classes(names: Iterable[str]) -> tuple[str, ...]:
    """Vocabulary names first (vocabulary order), then any other names alphabetically."""
    rank = {n: i for i, n in enumerate(VOCABULARY)}
    uniq = set(names)
    return tuple(sorted(uniq, key=lambda n: (rank.get(n, len(rank)), n)))


def parse_eye(value: str, *, strict: bool = True, where: str = "") -> str | None:
    """Map left/right, L/R, OD/OS/OI (any case) to 'left'/'right'; '' means unknown (None)."""
    v = value.strip().lower()
    if not v:
        return None
    eye = _EYE_WORDS.get(v)
    if eye is None and strict:
        raise DataError(
            f"{where}: eye {value!r} is not recognised; expected one of "
            f"{sorted(_EYE_WORDS)} (any case) or an empty cell."
        )
    return eye


@dataclass(frozen=True)
class Sample:
    """One image with its class names.

    ``extra`` holds what a task needs beyond the class names, e.g. the raw grade
    (``dr_grade``, ``dme_grade``) for quadratic-kappa metrics, the dataset's own
    label (``raw_label`` / ``raw_labels``) or the synthetic site-mask file (``masks``).
    """

    path: Path
    labels: tuple[str, ...]
    patient: str | None = None
    eye: str | None = None
    modality: str = "fundus"
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(f"sample modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.eye is not None and self.eye not in EYES:
            raise ConfigError(f"sample eye must be one of {EYES} or None, got {self.eye!r}")
        if not isinstance(self.labels, tuple):
            raise ConfigError(f"sample labels must be a tuple of class names, got {type(self.labels).__name__}")


@dataclass(frozen=True)
class LabelSpace:
    """Ordered class names and whether a sample may carry several (multi-label).

    Index ``i`` of every encoded vector is ``classes[i]``. A single-label space
    requires exactly one class per sample.
    """

    classes: tuple[str, ...]
    multi_label: bool = True

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("a label space needs at least one class name")
        dup = [c for c, n in Counter(self.classes).items() if n > 1]
        if dup:
            raise ConfigError(f"class names must be unique; repeated: {dup}")
        bad = [c for c in self.classes if not isinstance(c, str) or not c or c != c.strip()]
        if bad:
            raise ConfigError(f"class names must be non-empty strings without surrounding spaces; got {bad!r}")

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, name: object) -> bool:
        return name in self.classes

    def index(self, name: str) -> int:
        """Position of ``name``; :class:`DataError` naming the allowed classes if absent."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise DataError(f"label {name!r} is not in the label space; allowed: {list(self.classes)}") from None

    def encode(self, labels: Iterable[str], *, strict: bool = True) -> np.ndarray:
        """Multi-hot float32 vector of length ``len(self)``.

        strict=False ignores names outside the space (e.g. a model space that
        leaves out ``normal``); strict=True raises on them.
        """
        vec = np.zeros(len(self.classes), np.float32)
        names = tuple(labels)
        for name in names:
            if name in self.classes:
                vec[self.classes.index(name)] = 1.0
            elif strict:
                self.index(name)
        if not self.multi_label and strict and vec.sum() != 1:
            raise DataError(
                f"a single-label space needs exactly one class per sample, got {list(names)}; "
                f"allowed: {list(self.classes)}"
            )
        return vec

    def encode_all(self, samples: Sequence[Sample], *, strict: bool = True) -> np.ndarray:
        """(N, K) float32 multi-hot matrix for ``samples``."""
        out = np.zeros((len(samples), len(self.classes)), np.float32)
        for i, s in enumerate(samples):
            out[i] = self.encode(s.labels, strict=strict)
        return out

    def decode(self, vector: np.ndarray, threshold: float = 0.5) -> tuple[str, ...]:
        """Class names whose score is >= threshold (argmax for a single-label space)."""
        v = np.asarray(vector).reshape(-1)
        if v.shape[0] != len(self.classes):
            raise ConfigError(f"vector has {v.shape[0]} entries, label space has {len(self.classes)}")
        if not self.multi_label:
            return (self.classes[int(np.argmax(v))],)
        return tuple(c for c, x in zip(self.classes, v) if x >= threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "multi_label": self.multi_label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpace:
        return cls(tuple(d["classes"]), bool(d["multi_label"]))


@dataclass(frozen=True)
class DatasetSource:
    """What a reader returns: samples, their label space and a content fingerprint.

    ``sizes[i]`` is the byte size of ``samples[i]`` (kept so subsets re-fingerprint
    without touching the disk); ``dropped`` counts rows left out and why;
    ``options`` are the reader arguments, saved next to every output;
    ``links``: pairs of sample indices that any further split must keep on one
    side (a spec's ``duplicates=``: copies of one photograph), re-indexed by
    :meth:`subset`.
    """

    name: str
    root: Path
    samples: tuple[Sample, ...]
    label_space: LabelSpace
    fingerprint: str
    sizes: tuple[int, ...] = field(repr=False, hash=False, default=())
    dropped: dict[str, int] = field(default_factory=dict, hash=False)
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    links: tuple[tuple[int, int], ...] = field(default=(), hash=False, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        """Images per class, in label-space order."""
        c: Counter[str] = Counter(n for s in self.samples for n in s.labels)
        return {name: c.get(name, 0) for name in self.label_space.classes}

    def targets(self) -> np.ndarray:
        """(N, K) float32 multi-hot targets."""
        return self.label_space.encode_all(self.samples)

    def subset(self, indices: Iterable[int], name: str | None = None) -> DatasetSource:
        """The samples at ``indices`` (in that order), with their own fingerprint."""
        idx = [int(i) for i in indices]
        n = len(self.samples)
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ConfigError(f"subset indices out of range 0..{n - 1}: {bad[:5]}")
        samples = tuple(self.samples[i] for i in idx)
        sizes = tuple(self.sizes[i] for i in idx) if self.sizes else ()
        fp = fingerprint(samples, self.root, sizes or None)
        at = {i: j for j, i in enumerate(idx)}
        links = tuple((at[a], at[b]) for a, b in self.links if a in at and b in at)
        return DatasetSource(
            name or self.name, self.root, samples, self.label_space, fp, sizes, dict(self.dropped), dict(self.options),
            links,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for resolved configs, reports and manifests."""
        return {
            "name": self.name,
            "root": str(self.root),
            "n_images": len(self.samples),
            "n_patients": len({s.patient for s in self.samples if s.patient is not None}),
            "label_space": self.label_space.to_dict(),
            "counts": self.counts(),
            "dropped": dict(self.dropped),
            "fingerprint": self.fingerprint,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in self.options.items()},
        }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def fingerprint(
    samples: Sequence[Sample], root: Path, sizes: Sequence[int] | None = None, *, content: bool = False
) -> str:
    """sha256 over sorted (relative path, byte size, modality, patient, labels) of ``samples``.

    Modification times are left out on purpose (a copy to another disk keeps the
    fingerprint). content=True also hashes every file's bytes: exact, but reads
    the whole dataset (progress bar); the default reads no image.
    """
    if sizes is None:
        sizes = [s.path.stat().st_size for s in samples]
    if len(sizes) != len(samples):
        raise ConfigError(f"{len(sizes)} sizes for {len(samples)} samples")
    entries = sorted(
        (_relative(s.path, root), int(size), s.modality, s.patient or "", ";".join(sorted(s.labels)), s.path)
        for s, size in zip(samples, sizes)
    )
    h = hashlib.sha256(b"uopsl-dataset-v1 " + (b"content\n" if content else b"meta\n"))
    for rel, size, modality, patient, labels, path in progress(entries, "hashing images", enabled=content):
        h.update(f"{rel}\t{size}\t{modality}\t{patient}\t{labels}\n".encode())
        if content:
            h.update(sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def progress(items: Sequence[T], desc: str, *, enabled: bool = True, min_items: int = 2000) -> Sequence[T]:
    """tqdm over ``items`` when tqdm is installed, the loop is long and stderr is a terminal."""
    if len(items) < min_items:
        return items
    drawn = track(items, desc=desc, show=enabled, terminal_only=True)
    return items if isinstance(drawn, NoBar) else drawn  # type: ignore[return-value]  # a Sequence when hidden


# ---------------------------------------------------------------- tables


def where(file: Path, row: int | None = None, line: int | None = None) -> str:
    """'file, row R (line L)': how every data error locates itself."""
    if row is None:
        return str(file)
    return f"{file}, row {row} (line {line})" if line is not None else f"{file}, row {row}"


@dataclass(frozen=True)
class Row:
    """One data row of a CSV table: values by (whitespace-stripped) column name."""

    file: Path
    number: int
    line: int
    values: Mapping[str, str]

    @property
    def where(self) -> str:
        return where(self.file, self.number, self.line)

    def get(self, column: str) -> str:
        return self.values.get(column, "")

    def require(self, column: str) -> str:
        """The non-empty value of ``column`` or a DataError naming file, row and column."""
        value = self.values.get(column, "")
        if not value and column not in self.values:  # a row shorter than the header: its cells ran out
            raise DataError(f"{self.where}: the row has {len(self.values)} field(s) and ends before column "
                            f"{column!r}; every row needs a value there (a cell missing, or a line broken in two?).")
        if not value:
            raise DataError(f"{self.where}: column {column!r} is empty; every row needs a value there.")
        return value

    def integer(self, column: str, allowed: Sequence[int]) -> int:
        """An integer cell whose value must be in ``allowed`` ('2.0' reads as 2)."""
        raw = self.require(column)
        try:
            f = float(raw)
        except ValueError:
            f = float("nan")
        if not f.is_integer() or int(f) not in allowed:
            raise DataError(
                f"{self.where}: column {column!r} holds {raw!r}; expected one of {list(allowed)}."
            )
        return int(f)


def read_table(path: Path, required: Sequence[str]) -> tuple[list[str], Sequence[Row]]:
    """Read a CSV with a header line; check that ``required`` columns exist.

    Header names and cells are whitespace-stripped (real headers carry trailing
    spaces, e.g. IDRiD's 'Risk of macular edema '); a UTF-8 byte-order mark is
    ignored; rows whose cells are all empty (trailing blank lines, IDRiD's empty
    columns) are skipped. Returns the stripped header and the rows (wrapped in a
    progress bar when there are many: readers stat each image as they go).
    """
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found; check the dataset root and the file name.")
    rows: list[Row] = []
    number = 0
    text = read_user_text(path, "CSV table")
    try:
        with io.StringIO(text, newline="") as fh:
            reader = csv.reader(fh)
            raw_header = next(reader, None)
            if raw_header is None:
                raise DataError(f"{path}: the CSV is empty; expected a header line with columns {list(required)}.")
            header = [h.strip() for h in raw_header]
            missing = [c for c in required if c not in header]
            if missing:
                found = [h for h in raw_header if h.strip()]
                raise DataError(
                    semicolon_hint(path, raw_header) or f"{path}: missing column(s) {missing}; columns found: "
                    f"{found}. Rename the columns or tell the reader which columns to use."
                )
            for cells in reader:
                number += 1
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
                    raise DataError(
                        f"{where(path, number, reader.line_num)}: {len(cells)} fields but the header has "
                        f"{len(header)} columns; quote values that contain commas."
                    )
                values = {h: c.strip() for h, c in zip(header, cells) if h}
                rows.append(Row(path, number, reader.line_num, values))
    except csv.Error as exc:
        raise DataError(f"{where(path, number + 1)}: malformed CSV ({exc}).") from exc
    return header, progress(rows, f"reading {path.name}")


def semicolon_hint(path: Path | str, header: Sequence[str]) -> str | None:
    """The error for a header that is one column holding ';' (a semicolon-separated file), else None."""
    cols = [h.strip() for h in header if h.strip()]
    if len(cols) != 1 or ";" not in cols[0]:
        return None
    return (
        f"{path}: the header is one column {cols[0]!r}: the file looks semicolon-separated (as Excel writes CSV "
        "in decimal-comma locales); expected comma-separated columns. Save it as comma-separated CSV (UTF-8) "
        "and try again (Excel uses the system's list separator; LibreOffice asks for the field delimiter)."
    )


# ---------------------------------------------------------------- collecting samples


class Collector:
    """Accumulates samples for one reader: checks images, labels and builds the source.

    ``label_space`` fixed up front (an adapter's task) validates every sample's
    labels; ``None`` infers the space from the data at :meth:`build`, which
    refuses two spellings of one class (``DR``/``dr``, ``healthy``/``normal``).
    ``missing='skip'`` leaves out rows whose image is absent (counted in
    ``dropped['missing_image']``) instead of raising; with ``'error'`` the
    error comes at :meth:`build`, once every row was looked at, so it can say
    how many rows miss their image. A row naming an image an earlier row named
    is left out (``dropped['duplicate_row']``) when it says the same, an error otherwise.
    ``paths_from`` (e.g. "the CSV's folder") says what ``root`` is to the
    table's paths, for the missing-image error.
    """

    def __init__(self, name: str, root: Path, label_space: LabelSpace | None, missing: OnMissing = "error") -> None:
        if missing not in ("error", "skip"):
            raise ConfigError(f"missing must be 'error' or 'skip', got {missing!r}")
        self.name = name
        self.root = root
        self.label_space = label_space
        self.missing = missing
        self.paths_from: str | None = None
        self.samples: list[Sample] = []
        self.sizes: list[int] = []
        self.dropped: Counter[str] = Counter()
        self._locations: list[str] = []
        # (device, inode) where the file was stat'ed: './a.jpg', 'x/../a.jpg', a link or another letter case
        # on a case-insensitive disk are one image; the normalised path otherwise.
        self._seen: dict[tuple[int, int] | str, int] = {}
        self._repeat: tuple[str, str] | None = None
        self._first_missing: tuple[str, Path] | None = None
        self._n_missing = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def check_labels(self, labels: Sequence[str], location: str) -> None:
        space = self.label_space
        if space is None:
            return
        for name in labels:
            if name not in space:
                raise DataError(f"{location}: unknown label {name!r}; allowed labels: {list(space.classes)}.")
        if not space.multi_label and len(labels) != 1:
            raise DataError(
                f"{location}: {len(labels)} labels {list(labels)} for a single-label task; "
                f"expected exactly one of {list(space.classes)}."
            )

    def add(self, sample: Sample, location: str, size: int | None = None) -> bool:
        """Add ``sample`` (found at ``location``); False when it is left out (image missing, or a repeated row)."""
        self.check_labels(sample.labels, location)
        key: tuple[int, int] | str = os.path.normpath(sample.path)
        if size is None:
            try:
                st = sample.path.stat()
                ok = stat.S_ISREG(st.st_mode)
            except OSError:
                ok = False
            if not ok:
                if self.missing == "skip":
                    self.drop("missing_image")
                    log.debug("%s: image %s not found; skipped", location, sample.path)
                else:
                    self._n_missing += 1
                    self._first_missing = self._first_missing or (location, sample.path)
                return False
            size = st.st_size
            if st.st_ino:
                key = (st.st_dev, st.st_ino)
        first = self._seen.get(key)
        if first is not None:
            self._repeated(sample, location, first)
            return False
        self._seen[key] = len(self.samples)
        self.samples.append(sample)
        self.sizes.append(size)
        self._locations.append(location)
        return True

    def _repeated(self, sample: Sample, location: str, first: int) -> None:
        """``sample`` names the image of ``samples[first]``: left out when it says the same, else an error."""
        earlier = self.samples[first]
        fields = {
            "labels": (sorted(sample.labels), sorted(earlier.labels)),
            "patient": (sample.patient, earlier.patient),
            "eye": (sample.eye, earlier.eye),
            "modality": (sample.modality, earlier.modality),
        }
        differ = [f"{k} {here!r} here, {there!r} there" for k, (here, there) in fields.items() if here != there]
        if differ:
            also = f" (as {earlier.path})" if earlier.path != sample.path else ""
            raise DataError(
                f"{location}: image {sample.path} is listed again, by {self._locations[first]}{also}, and the two "
                f"rows disagree ({'; '.join(differ)}); one image needs one set of labels: keep one of the rows "
                "(if graders disagree, settle the label first)."
            )
        self.drop("duplicate_row")
        self._repeat = self._repeat or (location, self._locations[first])

    def _missing_error(self) -> DataError:
        """The first missing image, the folder its path was read against, a near match and how many miss."""
        location, path = self._first_missing or ("", self.root)
        base = count = ""
        if self.paths_from:
            base = f" (paths are read relative to {self.paths_from}, {os.path.abspath(self.root)})"
        near = near_match(path, self.root, table=self.paths_from is not None)
        found = len(self.samples) + self.dropped["duplicate_row"]
        if self._n_missing > 1:
            count = f"; {self._n_missing} of {self._n_missing + found} rows name a missing image"
        if found:
            todo = ("Fix the path (or the image folder), or leave such rows out: add :missing=skip to the data "
                    "spec (e.g. csv:labels.csv:missing=skip; Python: missing='skip').")
        else:
            todo = ("No row's image was found: check the folder the paths are relative to"
                    f"{' (or move the table next to the images)' if self.paths_from else ' (the dataset root)'}.")
        return DataError(f"{location}: image file {path} not found{base}{near}{count}. {todo}")

    def _check_spellings(self, where_: str, unit: str) -> None:
        """Refuse class names that are spellings of one class: the text bank gives them one description."""
        counts = Counter(n for s in self.samples for n in s.labels)
        groups: dict[str, list[str]] = {}
        for n in counts:
            groups.setdefault(canonical(n), []).append(n)
        clashes = [(key, names) for key, names in groups.items() if len(names) > 1]
        if not clashes:
            return
        said = "; ".join(
            " and ".join(f"{n!r} ({plural(counts[n], unit)})" for n in sorted(names)) + f" are all class {key!r}"
            for key, names in clashes
        )
        fix = "rename the class folders" if unit == "image" else "fix the label cells of the table"
        raise ConfigError(
            f"{where_}: labels spelled differently name one class: {said}; they would train as separate classes "
            f"with the same description. Use one spelling per class (e.g. {clashes[0][0]!r}): {fix} and run again."
        )

    def build(self, options: Mapping[str, Any], multi_label: bool = True) -> DatasetSource:
        if self._n_missing:
            raise self._missing_error()
        if not self.samples:
            table = options.get("csv")
            if table is not None and not self.dropped:
                # A table with a header and no row: naming the folder and its layout sent people looking there.
                raise DataError(f"{self.name}: {table} lists no images (a header and no rows?); add one row per "
                                "image, or point at another table")
            raise DataError(
                f"{self.name}: no images found under {self.root}{_left_out(self.dropped, options)}; check the dataset "
                f"root and layout (see the reader's docstring)."
            )
        if self.label_space is None:
            unit = "image" if options.get("reader") == "folder" else "row"
            self._check_spellings(str(options.get("csv") or self.root), unit)
        space = self.label_space or LabelSpace(order_classes(n for s in self.samples for n in s.labels), multi_label)
        if self.missing == "skip" and self.dropped.get("missing_image"):
            log.warning("%s: %d rows left out because their image is missing", self.name, self.dropped["missing_image"])
        if self._repeat is not None:
            log.warning("%s: %d row(s) left out because they repeat an earlier row (same image, same labels), e.g. %s "
                        "repeats %s", self.name, self.dropped["duplicate_row"], *self._repeat)
        samples = tuple(self.samples)
        sizes = tuple(self.sizes)
        return DatasetSource(
            self.name, self.root, samples, space, fingerprint(samples, self.root, sizes), sizes,
            dict(self.dropped), dict(options),
        )




# How the no-images error names a reader that scans class folders (its spec kind) and the layout it reads;
# a reader not listed here is spoken of as folder: (only folder: and these scan class folders).
_FOLDER_LAYOUTS: dict[str, tuple[str, str]] = {
    "folder": ("folder:", "root/<class>/<image>, one level"),
    "oct2017": ("oct2017:", "root/<split>/<CLASS>/<image>, images directly in a class folder"),
    "octdl": ("octdl:", "root/<CLASS>/<image>, one level"),
}


def _left_out(dropped: Mapping[str, int], options: Mapping[str, Any] | None = None) -> str:
    """What the no-images error says about what was left out, with what to do for files the class-folder scan
    skips, naming the reader of ``options['reader']`` (folder:, oct2017:, octdl:)."""
    reader = str((options or {}).get("reader") or "folder")
    kind, layout = _FOLDER_LAYOUTS.get(reader, _FOLDER_LAYOUTS["folder"])
    special = ("file_in_subfolder", "not_in_csv")
    exts = {k.split(":", 1)[1]: n for k, n in dropped.items() if k.startswith("not_an_image:")}
    rows = {k: n for k, n in dropped.items() if not k.startswith("not_an_image:") and k not in special}
    notes = [f"rows left out: {rows}"] if rows else []
    if dropped.get("not_in_csv"):
        csv_name = (options or {}).get("labels_csv") or "the labels CSV"
        notes.append(f"{plural(dropped['not_in_csv'], 'image file')} not listed in {csv_name} left out "
                     "(the CSV says which files are read)")
    if exts:
        notes.append("files skipped by type: " + ", ".join(f"{n} {e}" for e, n in sorted(exts.items())))
    if dropped.get("file_in_subfolder"):
        notes.append(f"{plural(dropped['file_in_subfolder'], 'file')} in sub-folders of the class folders not read "
                     f"({kind} reads {layout}; move them up a level)")
    if DICOM_SUFFIXES & set(exts):
        if kind == "folder:":
            notes.append("DICOM files are not read by folder: (a PACS export often holds each photograph as both "
                         ".dcm and .jpg); list them in a CSV with path,label columns (csv:FILE; reading DICOM needs "
                         f"{extra_hint('dicom')}) or export them as JPEG/PNG")
        else:
            notes.append(f"DICOM files are not read by {kind}; export them as JPEG/PNG, or list them in a CSV with "
                         f"path,label,modality columns (csv:FILE; reading DICOM needs {extra_hint('dicom')})")
    if exts:
        notes.append(f"{kind} reads {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return " (" + "; ".join(notes) + ")" if notes else ""


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def near_match(path: Path, root: Path, *, table: bool = False) -> str:
    """'; <hint>' naming a file the missing ``path`` probably means, else ''.

    Two near misses are common: a table whose paths are relative to the folder
    the user worked in instead of the table's folder, and a name that differs
    from the file on disk in letter case (a table made on Windows or macOS) or
    in Unicode form (NFC/NFD: names from macOS or a zip made there). The first
    is looked for when ``table`` (``path`` is a table's cell joined to ``root``).
    The file is named, never used: the table is what the user meant to say.
    """
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = None
    if table and rel is not None and not rel.is_absolute() and os.path.abspath(root) != os.getcwd() and rel.is_file():
        fixed = os.path.relpath(os.path.abspath(rel), os.path.abspath(root))
        return (f"; {rel} exists relative to the current folder {os.getcwd()}: write the paths relative to the "
                f"table's folder (here {fixed}) or as absolute paths")
    current = Path(path.anchor) if path.is_absolute() else Path(".")
    case = unicode_form = False
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if not os.path.lexists(current / part):
            try:
                hits = sorted(n for n in os.listdir(current) if _folded(n) == _folded(part))
            except OSError:
                return ""
            if not hits:
                return ""
            nfc = unicodedata.normalize("NFC", part) == unicodedata.normalize("NFC", hits[0])
            unicode_form |= nfc
            case |= not nfc
            part = hits[0]
        current = current / part
    if not current.is_file() or not (case or unicode_form):
        return ""
    how = " and ".join(w for w, on in (("letter case", case), ("Unicode form (NFC/NFD)", unicode_form)) if on)
    return f"; the disk holds {current}, which differs in {how}: rename the file or fix the path in the table"


class StemIndex:
    """Files of one folder by exact name and by lower-case stem.

    Public sets list images by id (RFMiD, IDRiD) or by a name whose extension
    differs from the file on disk (MESSIDOR-2 mirrors convert to PNG); one
    ``listdir`` answers every lookup.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        if folder.is_dir():
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    p = Path(entry.path)
                    self.by_name[entry.name] = p
                    self.by_stem.setdefault(p.stem.lower(), p)

    def find(self, name: str) -> Path:
        """The file called ``name``, else one with the same stem; else the expected path (may not exist)."""
        hit = self.by_name.get(name)
        if hit is None:
            hit = self.by_stem.get(name.lower()) or self.by_stem.get(Path(name).stem.lower())
        return hit if hit is not None else self.folder / name


def first_existing(root: Path, candidates: Sequence[str], what: str, *, folder: bool) -> Path:
    """The first of ``root/candidate`` that exists (as a folder or a file), else a DataError listing them."""
    for c in candidates:
        p = root / c
        if (p.is_dir() if folder else p.is_file()):
            return p
    tried = [str(root / c) for c in candidates]
    raise DataError(f"{what} not found; looked for: {tried}. Point the reader at the dataset root.")


def scan_class_folders(
    root: Path, allowed: Sequence[str] | None, dataset: str, dropped: Counter[str] | None = None
) -> Iterator[tuple[str, Path, int]]:
    """Yield (folder name, image path, byte size) for ``root/<class>/<image>``, sorted.

    Hidden entries are skipped. Files of a type not read (:data:`IMAGE_EXTENSIONS`;
    DICOM too) and files in sub-folders of a class folder are skipped with a
    warning per class folder, and counted in ``dropped`` (when given) as
    ``not_an_image:<.ext>`` and ``file_in_subfolder``. A class folder whose name
    is not in ``allowed`` (when given) is an unknown-label DataError naming it.
    """
    if not root.is_dir():
        raise DataError(f"{dataset}: folder {root} not found; expected one sub-folder per class.")
    for d in sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name):
        made_by = output_folder_kind(d.path)
        if made_by is not None:  # `uopsl explain` maps or `uopsl-screen` results beside the class folders
            log.warning("%s: not read as a class folder: it is %s", d.path, made_by)
            continue
        if allowed is not None and d.name not in allowed:
            raise DataError(f"{d.path}: unknown label {d.name!r} (class folder); allowed labels: {list(allowed)}.")
        types: Counter[str] = Counter()
        nested: dict[str, int] = {}
        for f in sorted(os.scandir(d.path), key=lambda e: e.name):
            if f.name.startswith(".") or f.name.lower() in _FOLDER_JUNK:
                continue
            if f.is_dir():
                nested[f.name] = sum(
                    1 for _, _, files in os.walk(f.path) for n in files if not n.startswith(".")
                )
                continue
            if not f.is_file():
                continue
            ext = Path(f.name).suffix.lower()
            if ext not in IMAGE_EXTENSIONS:
                types[ext or "(no extension)"] += 1
                continue
            yield d.name, Path(f.path), f.stat().st_size
        if types or nested:
            _warn_skipped(d.path, types, nested)
        if dropped is not None:
            for ext, n in types.items():
                dropped[f"not_an_image:{ext}"] += n
            if sum(nested.values()):
                dropped["file_in_subfolder"] += sum(nested.values())


def _warn_skipped(folder: str, types: Mapping[str, int], nested: Mapping[str, int]) -> None:
    said = []
    if types:
        listed = ", ".join(f"{e}: {n}" for e, n in sorted(types.items()))
        dicom = ""
        if DICOM_SUFFIXES & set(types):
            dicom = " (DICOM is not read from class folders; a CSV can list .dcm files)"
        said.append(f"{plural(sum(types.values()), 'file')} of a type not read ({listed}){dicom}")
    if nested:
        names = ", ".join(f"{k}/ ({plural(n, 'file')})" for k, n in sorted(nested.items())[:5])
        said.append(f"{plural(len(nested), 'sub-folder')}, not read: only images directly in a class folder "
                    f"count ({names})")
    log.warning("%s: skipped %s", folder, "; ".join(said))
