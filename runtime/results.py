"""Results on disk: an append-only ``results.jsonl`` that survives crashes, and the derived ``results.csv``.

Why append-only JSON lines: a run can be killed at any moment (power loss in a
field clinic). Rows are appended per batch and fsync'ed, so at most the batch
in flight is lost; a half-written last line is detected and cut off when the
store is reopened. Each row carries the input's ``key`` (resolved path, size,
mtime), so a rerun skips what is already there. ``results.csv`` (and the HTML
report) are regenerated atomically from the jsonl at the end, keeping one row
per input file (the latest, when a file was replaced and screened again).

An output folder belongs to one model. ``run.json`` records the bundle that
wrote it (the manifest's ``content_sha256``) and every row carries it too
(``bundle_sha256``), so a different bundle pointed at the same folder is
refused instead of its rows being mixed with the old model's. One process at
a time writes a folder: :class:`ResultStore` holds an exclusive lock
(``.uopsl-screen.lock``) while it is open.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TextIO, cast

import numpy as np

from uopsl.runtime.bundle import MANIFEST, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import (FolderLock, open_plain, readable_text, remove_stale_temporaries,
                               sha256_bytes, sha256_file, special_entry, write_json, write_text)
from uopsl.runtime.input_keys import file_key, key_path, key_size
from uopsl.runtime.model_folders import check_output_outside_model_folders
from uopsl.runtime.reasons import NO_RESULT_ADVICE, order_reasons, reason_text
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

JSONL = "results.jsonl"
CSV = "results.csv"
RUN_JSON = "run.json"
LOCK_NAME = ".uopsl-screen.lock"
IMAGE_DIRS = ("thumbs", "overlays")  # overlay.THUMB_DIR, overlay.OVERLAY_DIR (not imported: overlay needs OpenCV)
_PAGES_DIR = "days"  # report_days.DAYS_DIR (not imported: it needs OpenCV too)
#: What an output folder holds that uopsl-screen reads, appends to or writes into in place (results.csv,
#: report.html and run.json are replaced by a rename, which replaces a link rather than writing through it;
#: run.json is also read). None of them may be a link, a pipe or a device: see :func:`refuse_planted_entries`.
_OWN_FILES = (LOCK_NAME, JSONL, RUN_JSON)
_OWN_DIRS = (*IMAGE_DIRS, _PAGES_DIR)
_RUN_JSON_MAX = 1 << 20  # run.json is a few hundred bytes; a larger one is not ours

#: Error reasons that are a property of the file's bytes: screening the same version again gives the same
#: answer, so a rerun skips it. Any other error (unreadable, inference_error, internal_error, ...) depends on
#: the moment (a permission fixed with chmod keeps the mtime; an out-of-memory passes) and is retried.
CONTENT_ERRORS = frozenset({"undecodable", "unsupported_format", "too_small", "too_large"})
#: Statuses that are final for a file version (an error is final only with content reasons).
FINAL_STATUSES = frozenset({"ok", "ungradable"})


@dataclass(frozen=True)
class ModelIdentity:
    """Which bundle wrote a row, and which model in effect, plus names for messages.

    ``bundle_sha256`` is the manifest's own content hash (what ``uopsl-screen
    info`` and the report show). ``model_sha256`` hashes what decides a
    screening result: classes, thresholds, referral rule, head, preprocessing
    and the sha256 of every model file, but not the records ``uopsl validate``
    adds, timestamps or notes. An output folder is refused to a bundle whose
    ``model_sha256`` differs: validating a bundle again (which rewrites its
    manifest) does not make it another model, a changed threshold does.
    """

    bundle_sha256: str
    model_name: str = ""
    classes: tuple[str, ...] = ()
    bundle: str = ""
    model_sha256: str = ""
    #: How this runtime turns files into pixels (``preprocess.PREPROCESS_VERSION``; 0: not checked). A row
    #: written under another version is screened again: the same file may now give other pixels or a
    #: different verdict (a JPEG with a trailer was "damaged", a dark 16-bit PNG was brightened).
    preprocess_version: int = 0

    @property
    def short(self) -> str:
        return self.bundle_sha256[:12]

    def describe(self) -> str:
        return f"model {self.model_name!r}, bundle {self.short}, classes {', '.join(self.classes) or '?'}"


#: Manifest fields that do not change what the model decides (see :class:`ModelIdentity`).
_NOT_THE_MODEL = ("content_sha256", "created", "notes", "toolkit_version", "format_version", "intended_use")


def probability_value(v: float) -> float:
    """A model probability as stored in results: the float32 the model gave, exactly (its shortest decimal).

    Rounded to 6 decimals, a probability within 1e-6 of its threshold could read below it in the results
    while the decision (float32 against float32) had it at or above; chosen thresholds are some validation
    image's exact score, so screening that image again showed a finding as "0.370000 < 0.370000".
    """
    return float(str(np.float32(v)))


def probability_text(v: float, min_decimals: int = 6) -> str:
    """``v`` with at least ``min_decimals`` decimals and as many more as its float32 needs to read back exactly
    (most values keep 6; a value within a float32 step of another needs up to 9, a tiny one more)."""
    x = np.float32(v)
    for nd in range(min_decimals, 13):
        text = f"{float(x):.{nd}f}"
        if np.float32(text) == x:
            return text
    return repr(float(x))


def model_sha256(manifest: Manifest) -> str:
    """sha256 of the decision-relevant part of ``manifest`` (see :class:`ModelIdentity`)."""
    d = {k: v for k, v in manifest.to_dict().items() if k not in _NOT_THE_MODEL}
    d["files"] = sorted([f.path, f.kind, f.precision, f.sha256] for f in manifest.files)
    return sha256_bytes(json.dumps(d, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8"))


def model_identity(bundle: str | os.PathLike[str], manifest: Manifest) -> ModelIdentity:
    """The :class:`ModelIdentity` of ``bundle`` (the sha256 of manifest.json's bytes when it records no hash)."""
    digest = manifest.content_sha256
    if not digest:
        try:
            digest = sha256_file(Path(bundle) / MANIFEST)
        except OSError:
            digest = "unknown"
    return ModelIdentity(digest, manifest.model_name, manifest.class_names, str(bundle), model_sha256(manifest))


def _row_path(row: dict[str, Any]) -> str:
    """What identifies a row's input: its path, or for an in-memory input its whole ``sha1:`` key.

    Why the whole key: in-memory inputs share display names (``image``), and
    keyed by name, different photographs would replace each other's rows.
    """
    key = str(row.get("key", ""))
    if key.startswith("sha1:"):
        return key
    return key_path(key) or str(row.get("source", ""))


#: :meth:`ResultStore.find_moved` looks at every done row of a new file's size up to this many (a renamed
#: photograph is found); beyond, only at rows of the same name too.
MOVED_BY_SIZE_UP_TO = 64


def _display(value: Any) -> Any:
    """``value`` with lone surrogates (undecodable file-name bytes) replaced, so UTF-8 files can hold it."""
    if isinstance(value, str):
        return readable_text(value)
    if isinstance(value, list):
        return [_display(v) for v in value]
    if isinstance(value, dict):
        return {k: _display(v) for k, v in value.items()}
    return value


def is_final(status: str, reasons: Sequence[str]) -> bool:
    """Whether a row with ``status``/``reasons`` is the answer for its file version (a rerun skips it)."""
    if status in FINAL_STATUSES:
        return True
    return status == "error" and bool(reasons) and all(r in CONTENT_ERRORS for r in reasons)


# -- the folder lock (re-entrant within a thread: watch holds it while each screen_to takes it again) ---------
_HELD: dict[str, tuple[FolderLock, int, int]] = {}  # real path -> (lock, thread id, depth)
_HELD_GUARD = threading.Lock()


def _acquire(out: Path, real: str) -> bool:
    """Lock ``out`` (resolved: ``real``) for this thread; True when newly taken (False: already held here)."""
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(real)
        if held is not None:
            lock, owner, depth = held
            if owner != me:
                raise ConfigError(f"another screening in this process is writing to {out}; "
                                  "wait for it to finish or use another output folder (--out)")
            _HELD[real] = (lock, owner, depth + 1)
            return False
        lock = FolderLock(out, LOCK_NAME)
        try:
            taken = lock.acquire()
        except OSError as exc:
            raise ConfigError(f"cannot write to output folder {out} ({exc.strerror or exc}); "
                              f"{_out_advice(exc)}") from None
        if not taken:
            who = f"pid {lock.holder}" if lock.holder else "another process"
            raise ConfigError(f"another uopsl-screen ({who}) is writing to {out}; wait for it to finish, "
                              "or use another output folder (--out)")
        _HELD[real] = (lock, me, 1)
        return True


def _release(real: str, remove_if_unused: bool = False) -> bool:
    """Release the lock taken for ``real``: the path resolved when it was taken (the working folder may
    have changed, or the folder been renamed, since). ``remove_if_unused``: the last holder also removes
    the folder if it holds nothing but the lock file (see :meth:`FolderLock.release_and_remove`)."""
    with _HELD_GUARD:
        held = _HELD.get(real)
        if held is None:
            return False
        lock, owner, depth = held
        if depth > 1:
            _HELD[real] = (lock, owner, depth - 1)
            return False
        del _HELD[real]
    if remove_if_unused:
        return lock.release_and_remove()
    lock.release()
    return False


def prepare_folder(out: Path) -> tuple[Path, ...]:
    """Create ``out`` and prove it is writable, or raise one clear :class:`ConfigError`.

    Returns the folders it created, ``out`` first, then the parents it had to make (absolute paths), so
    that a run that wrote nothing can remove them again. Why a probe file: a read-only mount, a path
    under a file or a folder in ``/proc`` otherwise fail later, halfway through a run, as a raw OSError.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} exists and is not a folder; choose another --out")
    created: list[Path] = []
    folder = out.absolute()
    while not os.path.lexists(folder) and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out} ({exc.strerror or exc}); {_out_advice(exc)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder {out} ({exc.strerror or exc}); {_out_advice(exc)}") from None
    return tuple(created)


def _out_advice(exc: OSError) -> str:
    """What to do about an output folder that cannot be written: a full disk is freed, not swapped (a review)."""
    return "free some space on that disk, or choose another --out" if exc.errno == errno.ENOSPC else \
        "choose another --out"


def refuse_planted_entries(out: Path) -> None:
    """Refuse an output folder whose own files or folders are links, pipes or devices (:class:`ConfigError`).

    Why: anyone who can write the results folder (a shared clinic drive) could otherwise plant
    ``results.jsonl`` or the lock file as a link to another file, which the screening would truncate or
    append patient rows to, or ``thumbs/`` as a link to a folder elsewhere, which it would write images
    into and clean. The files are also opened without following links (:func:`open_plain`), so one swapped
    in after this check fails its open instead.
    """
    for name in (*_OWN_FILES, *_OWN_DIRS):
        what = special_entry(out / name)
        if what is None and name in _OWN_DIRS and (out / name).exists() and not (out / name).is_dir():
            what = "a file, not a folder"
        if what is not None:
            raise ConfigError(
                f"{out / name} is {what}; uopsl-screen follows no links and opens no pipes or devices in its output "
                f"folder (one could make it write elsewhere): remove {out / name}, or choose another --out")


# Letters and digits (str.isalnum's: \w is exactly those and "_" in a str pattern), "-", "_" and ".".
_IMAGE_ID = re.compile(r"[\w.\-]+")


def valid_image_id(value: object) -> bool:
    """Whether ``value`` is an image id as the pipeline makes them (``STEM-HEX``: letters, digits, ``-_.``).

    Ids name the files under ``thumbs/`` and ``overlays/``, so an id read from ``results.jsonl`` that holds a
    path separator or is ``..`` would make the report embed a picture from outside the folder.
    """
    return (isinstance(value, str) and 0 < len(value) <= 200 and value.strip(".") != ""
            and _IMAGE_ID.fullmatch(value) is not None)


#: Row fields whose values repeat over a whole folder (one bundle, a handful of statuses).
_SHARED_FIELDS = frozenset({"status", "bundle_sha256", "model_sha256", "intended_use", "backend", "precision",
                            "model_file", "heatmap_class"})

_TEXT_FIELDS = ("source", "status", "error", "sha256", "heatmap_class", "screened_at", "bundle_sha256",
                "model_sha256", "intended_use", "backend", "precision", "model_file", "thumb_id", "overlay_id",
                "moved_from")


def _finite_number(v: object) -> bool:
    # math.isfinite, not np.isfinite: a microsecond less per number of every row (a large folder's reading time).
    if type(v) is float:
        return math.isfinite(v)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:  # an integer beyond a float's range (JSON allows 10**400) crashed every later rewrite of the CSV
        return math.isfinite(float(v))
    except OverflowError:
        return False


def row_problem(row: Mapping[str, Any]) -> str | None:
    """What makes a row read from ``results.jsonl`` unusable, or None.

    The file is ours, but a folder on a shared drive can be edited by others or damaged: a row whose fields
    do not have the types the pipeline writes would otherwise stop every later run (a probability that is
    text, reasons that are a number) or point the report outside the folder (an id that is a path). Such a
    row is skipped with a warning, so its photograph is screened again.
    """
    if not isinstance(row.get("key"), str) or not row["key"]:
        return "no key"
    if "id" in row and not valid_image_id(row["id"]):
        return "an id that is not a file name of this folder"
    for k in _TEXT_FIELDS:
        if row.get(k) is not None and not isinstance(row[k], str):
            return f"{k} is not text"
    for k in ("reasons", "positive"):
        v = row.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return f"{k} is not a list of names"
    for k in ("probs", "timings_ms"):
        v = row.get(k)
        if v is not None and not (isinstance(v, dict) and all(_finite_number(x) for x in v.values())):
            return f"{k} does not map names to numbers"
    for k in ("refer", "gradable", "file_replaced"):
        if row.get(k) is not None and not isinstance(row[k], bool):
            return f"{k} is not true or false"
    if row.get("quality_score") is not None and not _finite_number(row["quality_score"]):
        return "quality_score is not a number"
    v = row.get("preprocess_version")
    if v is not None and not (isinstance(v, int) and not isinstance(v, bool)):
        return "preprocess_version is not a whole number"
    return None


_SAID_CORRUPT: set[tuple[str, int]] = set()  # (results.jsonl, line) already warned about in this process
_SAID_RUN_JSON: set[str] = set()  # run.json files warned about in this process (a run opens its folder twice)


def _complete_row(tail: bytes) -> bool:
    """Whether ``tail`` (a last line without its newline) is a whole row: a JSON object with a key."""
    try:
        row = json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(row, dict) and "key" in row


class ResultStore:
    """The results of one output folder, open for appending.

    ``done`` maps every key already screened to its status and ``referred``
    holds the keys whose latest row refers, so a resumed run can count what an
    earlier one decided; :meth:`is_done` says whether a key's row is final
    (see :data:`CONTENT_ERRORS`). ``append`` writes a batch of rows durably
    (flush + fsync).

    Opening: creates the folder and checks it is writable, takes the folder
    lock (another process gets a :class:`ConfigError`), removes temporaries a
    killed run left, cuts a half-written last row, and, given ``identity``,
    refuses a folder written by another model. Close it (``with``) to release
    the lock. ``check_only``: opened only to check the folder (before a model
    loads); ``run.json`` is then left as it is.
    """

    def __init__(self, out_dir: str | os.PathLike[str], identity: ModelIdentity | None = None, *,
                 check_only: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JSONL
        self.identity = identity
        self._record: dict[str, Any] | None = None  # run.json to write with the first rows (see _check_model)
        self._check_only = check_only  # opened to check the folder before a model loads: record nothing
        # Every results folder is opened here (run, watch, the API's check_output and screen_to), so this is
        # where one inside a bundle or checkpoint is refused, before anything is created; once per store,
        # not per batch of a watch.
        check_output_outside_model_folders(self.out_dir)
        for attempt in (1, 2):
            self._created = prepare_folder(self.out_dir)  # removed again on close if nothing was written into it
            refuse_planted_entries(self.out_dir)
            self._real = os.path.realpath(self.out_dir)  # the lock is released under this name (cwd changes)
            try:
                first = _acquire(self.out_dir, self._real)
                break
            except ConfigError:
                # Another uopsl-screen that found nothing removed the (empty) folder just now: make it again.
                if attempt == 2 or self.out_dir.exists():
                    raise
        self._locked = True
        self.gone = False  # the folder was removed or moved while open: nothing more is written for it
        self._fh: TextIO | None = None
        self._pending: list[dict[str, Any]] = []  # rows noted but not yet written (see :meth:`defer`)
        self._broken: str = ""  # why a write failed: this store writes no more (its counts are not the file's)
        self._pending_by_key: dict[str, dict[str, Any]] = {}
        self._offsets: dict[str, int] = {}  # key -> byte offset of its latest row in the jsonl (find_moved)
        try:
            if first:
                n = sum(remove_stale_temporaries(self.out_dir / d) for d in ("", *IMAGE_DIRS))
                if n:
                    log.info("%s: removed %d temporary file(s) left by an interrupted run", self.out_dir, n)
            self._repair_tail()
            self.done: dict[str, str] = {}
            self.referred: set[str] = set()
            self._reasons: dict[str, tuple[str, ...]] = {}
            self._failed_at: dict[str, str] = {}  # key -> screened_at of its latest row, for rows without a result
            self._versions: dict[str, Any] = {}  # key -> the preprocess_version its row was screened under
            self.said_earlier_versions = False  # screen_to's note about them, once per store (watch reuses one)
            self._by_size: dict[int, dict[str, str]] = {}  # file size -> {key: content sha256}
            self._by_name_size: dict[tuple[str, int], dict[str, str]] = {}  # (file name, size) -> the same
            self._final_by_path: dict[str, tuple[str, str]] = {}  # path -> (content sha256, key) of its last final row
            self.n_rows = 0
            marks: dict[tuple[str, str], set[str]] = {}  # (model_sha256, bundle_sha256) -> photographs (keys)
            for offset, r in self._scan():
                if "key" in r:
                    self._note(r)
                    self._offsets[str(r["key"])] = offset
                    self.n_rows += 1
                    mark = (str(r.get("model_sha256") or ""), str(r.get("bundle_sha256") or ""))
                    marks.setdefault(mark, set()).add(str(r["key"]))
            self._end = self._size()
            if not self.n_rows:
                self._refuse_orphaned_list()
            if identity is not None:
                self._check_model(identity, {mark: len(keys) for mark, keys in marks.items()})
                self._check_versions(identity)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------------
    def _repair_tail(self) -> None:
        # A crash mid-write leaves a last line without its newline: cut it off, or the next append would glue
        # a new row onto it. Opened for writing only when there is something to cut (read-only media).
        try:
            with self._open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                if size == 0:
                    return
                fh.seek(size - 1)
                if fh.read(1) == b"\n":
                    return
                # Find the last newline by scanning back in blocks.
                pos = size
                while pos > 0:
                    step = min(65536, pos)
                    fh.seek(pos - step)
                    block = fh.read(step)
                    nl = block.rfind(b"\n")
                    if nl >= 0:
                        pos = pos - step + nl + 1
                        break
                    pos -= step
                fh.seek(pos)
                tail = fh.read(min(size - pos, 1 << 20))
        except FileNotFoundError:
            return
        if _complete_row(tail):  # a whole row without its newline (an editor, writeback cut just before it)
            log.warning("%s: the last row had no line end; adding it", self.path)
            with self._open("ab") as fh:
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            return
        log.warning("%s: dropping a partly written last row (%d bytes) left by an interrupted run",
                    self.path, size - pos)
        with self._open("rb+") as fh:
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())

    def _refuse_orphaned_list(self) -> None:
        """Refuse a folder whose results.csv lists photographs while results.jsonl has no row.

        Why: the CSV and the report are rebuilt from the jsonl alone, so a run here would replace an earlier
        session's list with its own photographs, without a word (the jsonl lost to a file-system check after
        a power cut, or deleted to free space). The CSV still holds those verdicts: nothing is written here.
        """
        try:
            text = (self.out_dir / CSV).read_text(encoding="utf-8-sig", errors="replace")
        except OSError:
            return  # no CSV (a new folder), or one that cannot be read: nothing to protect
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines and lines[0].lower().startswith("sep="):  # Excel's delimiter line
            lines = lines[1:]
        listed = max(0, len(lines) - 1)
        if listed:
            raise ConfigError(
                f"{self.out_dir} holds {CSV} listing {listed} photograph(s) but no {JSONL} row, and {CSV} and the "
                f"report are rebuilt from {JSONL}: screening here would replace that list with this run's "
                f"photographs only. Put {JSONL} back (a backup, or the file-system check's lost+found), or move "
                f"{CSV} and report.html elsewhere to keep them, or choose a new output folder (--out)")

    def _check_versions(self, identity: ModelIdentity) -> None:
        """Refuse a folder whose rows a newer uopsl screened (a later ``PREPROCESS_VERSION``).

        Why: a row of another version is screened again (:meth:`is_done`), which is right after an upgrade
        (the newer decoding replaces the older). After a rollback, or with two clinic machines at different
        versions sharing one folder, it would replace the newer rows with the older decoding, bringing back
        what the upgrade fixed, while saying the rows came from "an earlier uopsl".
        """
        mine = identity.preprocess_version
        if not mine:
            return
        newer = [v for v in self._versions.values()
                 if isinstance(v, int) and not isinstance(v, bool) and v > mine]
        if newer:
            raise ConfigError(
                f"{self.out_dir} holds {len(newer)} result(s) screened by a newer uopsl (preprocessing version "
                f"{max(newer)}; this uopsl {__version__} has version {mine}): screening here would replace them "
                "with this version's older decoding. Upgrade uopsl on this machine to the version that wrote them, "
                "or choose a new output folder (--out)")

    def _check_model(self, identity: ModelIdentity, marks: dict[tuple[str, str], int]) -> None:
        """Refuse a folder holding another model's rows; record this model in run.json.

        ``marks``: (model_sha256, bundle_sha256) -> how many photographs have rows under it."""
        recorded = self._read_run_json() or {}
        rec = (str(recorded.get("model_sha256") or ""), str(recorded.get("bundle_sha256") or ""))
        other: dict[str, int] = {}  # bundle hash shown -> rows
        unrecorded = 0
        for (model, bundle), n in marks.items():
            if not model and not bundle:
                model, bundle = rec  # a row without its own record belongs to the model run.json names
            if model:
                same = model == identity.model_sha256
            elif bundle:
                same = bundle == identity.bundle_sha256
            else:
                unrecorded += n
                continue
            if not same:
                shown = bundle or model
                other[shown] = other.get(shown, 0) + n
        if other:
            theirs, n = max(other.items(), key=lambda kv: kv[1])
            name = recorded.get("model_name") if theirs in rec else None
            raise ConfigError(
                f"{self.out_dir} holds {n} result(s) of another model (bundle {theirs[:12]}"
                + (f", model {name!r}" if name else "")
                + f"), not of this one ({identity.describe()}); results of two models are never mixed in one "
                f"folder: choose a new output folder (--out), or move {self.out_dir} away to start it over"
            )
        if unrecorded:
            raise ConfigError(
                f"{self.out_dir} holds {unrecorded} result(s) from an older uopsl that did not record which "
                f"model wrote them, so they cannot be told apart from this model's ({identity.describe()}): "
                f"choose a new output folder (--out), or move {self.out_dir} away to start it over"
            )
        entry = _display({"bundle_sha256": identity.bundle_sha256, "model_sha256": identity.model_sha256,
                          "model_name": identity.model_name, "classes": list(identity.classes),
                          "bundle": identity.bundle})
        if any(recorded.get(k) != v for k, v in entry.items()):
            same_model = rec[0] == identity.model_sha256
            # Written with the first rows, not now: a run that finds no photographs leaves no trace.
            self._record = {
                "what": "uopsl-screen output folder: the results of one model (model_sha256)",
                **entry,
                "created": (recorded.get("created") if same_model else None)
                or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "toolkit_version": __version__,
            }

    def _open(self, mode: str) -> IO[Any]:
        """``results.jsonl`` opened in ``mode`` (``rb``, ``ab``, ``rb+``, ``a``), never through a link."""
        flags = {"rb": os.O_RDONLY, "rb+": os.O_RDWR, "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT}[mode]
        fd = open_plain(self.path, flags | getattr(os, "O_BINARY", 0))
        try:
            return os.fdopen(fd, mode, encoding="utf-8") if mode == "a" else os.fdopen(fd, mode)
        except BaseException:
            os.close(fd)
            raise

    def _read_run_json(self) -> dict[str, Any] | None:
        path = self.out_dir / RUN_JSON
        try:
            fd = open_plain(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(_RUN_JSON_MAX + 1)
            if len(data) > _RUN_JSON_MAX:
                raise ValueError(f"larger than {_RUN_JSON_MAX} bytes")
            d = json.loads(data.decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:
            said = os.path.realpath(path)
            if said not in _SAID_RUN_JSON:
                _SAID_RUN_JSON.add(said)
                log.warning("%s: unreadable (%s); the rows' own bundle records are used", path, exc)
            return None
        return d if isinstance(d, dict) else None

    # -- reading ---------------------------------------------------------------------------------
    def rows(self) -> Iterator[dict[str, Any]]:
        """All parseable rows, in the order written (corrupt lines are skipped with a warning)."""
        for _, row in self._scan():
            yield row

    def _scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(byte offset, row) for every parseable row, in the order written."""
        for start, row, _ in self._scan_lines():
            yield start, row

    def _scan_lines(self, *, kept: bool = False) -> Iterator[tuple[int, dict[str, Any], bool]]:
        """(byte offset, row, whether its line holds a ``\\u`` escape that may be a lone surrogate).

        Lines are decoded with ``errors="replace"``, so a lone surrogate (an undecodable file name, which
        :meth:`append` writes with ASCII escapes) can reach a row only through a ``\\ud800``-``\\udfff``
        escape: rows without one need no :func:`_display` pass (most of a large folder's reading time).
        ``kept``: the caller holds every row (:meth:`latest_rows`), so they are made smaller first.
        """
        try:
            fh = self._open("rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        shared: dict[str, str] = {}  # one string object per distinct value of _SHARED_FIELDS in this file
        with fh:
            offset = 0
            for n, raw in enumerate(fh, 1):
                start, offset = offset, offset + len(raw)
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                    problem = row_problem(row) if isinstance(row, dict) else "not a JSON object"
                except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
                    problem = "not JSON"
                if problem is not None and not raw.endswith(b"\n"):
                    # The last line, cut short by a write that failed just now (a full disk): not a corrupt row,
                    # and its photograph's row comes again; the next opening cuts it (_repair_tail).
                    log.debug("%s:%d: a partly written last row (%d bytes), not read", self.path, n, len(raw))
                    continue
                if problem is not None:
                    said = (os.path.realpath(self.path), n)
                    if said not in _SAID_CORRUPT:  # a run reads the file more than once: say it once
                        _SAID_CORRUPT.add(said)
                        log.warning("%s:%d: skipping a corrupt row (%s); its photograph is screened again",
                                    self.path, n, problem)
                    continue
                # Field names interned and the few repeated values shared (json.loads makes every row's strings
                # anew): 4.4 -> 2.4 KB a row held, a one-off tracemalloc check; 100,000 rows are a year of watch.
                if kept:
                    row = {sys.intern(k): (shared.setdefault(v, v) if k in _SHARED_FIELDS and type(v) is str else v)
                           for k, v in row.items()}
                yield start, row, b"\\ud" in raw or b"\\uD" in raw

    def _size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def _row_of(self, key: str) -> dict[str, Any] | None:
        """The latest row written for ``key``: read at its recorded offset, not by reading the whole file."""
        pending = self._pending_by_key.get(key)
        if pending is not None:
            return pending
        offset = self._offsets.get(key)
        if offset is not None:
            try:
                with self._open("rb") as fh:
                    fh.seek(offset)
                    row = json.loads(fh.readline().decode("utf-8", errors="replace"))
                if isinstance(row, dict) and row.get("key") == key and row_problem(row) is None:
                    return row
            except (OSError, ValueError, RecursionError):
                pass
            log.debug("%s: row of %s not at its offset %d; reading the whole file", self.path, key, offset)
        latest = None
        for r in self.rows():
            if r.get("key") == key:
                latest = r
        return latest

    def _note(self, row: dict[str, Any]) -> None:
        key = str(row["key"])
        self.done[key] = str(row.get("status", ""))
        self._reasons[key] = tuple(str(x) for x in row.get("reasons") or ())
        if self.done[key] in ("ungradable", "error") and row.get("screened_at"):
            self._failed_at[key] = str(row["screened_at"])  # kept for failed rows only: a retake is judged by it
        else:
            self._failed_at.pop(key, None)
        self._versions[key] = row.get("preprocess_version")
        if row.get("sha256") and self.done[key] in FINAL_STATUSES:
            self._final_by_path[_row_path(row)] = (str(row["sha256"]), key)
        if row.get("refer"):
            self.referred.add(key)
        else:
            self.referred.discard(key)
        size = key_size(key)
        if size is not None:
            digest = str(row.get("sha256") or "")
            self._by_size.setdefault(size, {})[key] = digest
            self._by_name_size.setdefault((os.path.basename(key_path(key)), size), {})[key] = digest
        moved = row.get("moved_from")
        if isinstance(moved, str) and size is not None:
            for group in (self._by_size.get(size, {}), self._by_name_size.get((os.path.basename(moved), size), {})):
                for k in [k for k in group if key_path(k) == moved]:
                    del group[k]  # that file is gone: its row no longer stands for anything

    def failed_at(self, key: str) -> str:
        """When ``key``'s latest row was screened, where that row has no result ("" otherwise)."""
        return self._failed_at.get(key, "")

    def sha_of(self, key: str) -> str:
        """The content sha256 of ``key``'s latest row ("" where it has none, or none is known)."""
        size = key_size(key)
        return "" if size is None else self._by_size.get(size, {}).get(key, "")

    def reasons_of(self, key: str) -> tuple[str, ...]:
        """The reasons of ``key``'s latest row (empty for none, or for a key never screened)."""
        return self._reasons.get(key, ())

    def is_done(self, key: str, *, check_bytes: bool = True) -> bool:
        """Whether ``key`` already has a final row (see :func:`is_final`) made by this runtime's decoding.

        A failed row is retried, and so is one written under another preprocessing version (see
        :attr:`ModelIdentity.preprocess_version`). A damaged file's row (a content error) stands only while the
        file holds the bytes it was made from: the file copied again with its time kept (``cp -p``, Explorer,
        ``rsync -t``) has the same size and time, so the same key, and was never screened again.
        ``check_bytes=False``: that last check left out, for callers that compare the sha256 themselves
        (:meth:`find_moved`, :meth:`find_retimed`: the row's old path is gone, or is the file being read).
        """
        if key not in self.done or not is_final(self.done[key], self._reasons.get(key, ())):
            return False
        want = self.identity.preprocess_version if self.identity is not None else 0
        if want and self._versions.get(key) != want:
            return False
        return not check_bytes or self.done[key] != "error" or self._same_bytes(key)

    def _same_bytes(self, key: str) -> bool:
        """Whether ``key``'s file still has its latest row's sha256 (True where the row records none: rows
        written before the hash was kept); read only for content-error rows, which are few."""
        recorded, path = self.sha_of(key), key_path(key)
        if not recorded or not path:
            return True
        try:
            return sha256_file(path) == recorded
        except OSError:
            return False  # screened again: its row then says why it cannot be read

    def earlier_version_rows(self) -> int:
        """How many photographs still here, unchanged, have a final row screened under another preprocessing
        version (they are screened again when they are among the inputs); one stat per such row."""
        want = self.identity.preprocess_version if self.identity is not None else 0
        if not want:
            return 0
        return sum(1 for k, st in self.done.items()
                   if is_final(st, self._reasons.get(k, ())) and self._versions.get(k) != want
                   and file_key(key_path(k)) == k)

    def find_moved(self, key: str, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The final row of this same photograph screened under a path that no longer exists, or None.

        Why: a memory card that comes back under another mount point (or a
        folder renamed), or a photograph renamed (a clinic adding the patient's
        number to its name; ``watch`` sees it as a new file), would otherwise be
        screened again and listed twice, the report reading the pair as one
        photograph filed under two patients. Cheap for every other file: only a
        file whose size matches a done row whose file is gone is read, and it must
        have the same sha256 (the same photograph, whatever its name). Where more than
        :data:`MOVED_BY_SIZE_UP_TO` done rows share the size (an uncompressed camera
        format gives every photograph the same size), only rows of the same name are
        looked at: a stat per row of that size for every new file would grow with
        the square of the folder.
        """
        size = key_size(key)
        if size is None:
            return None
        here = key_path(key)
        group = self._by_size.get(size)
        if group is not None and len(group) > MOVED_BY_SIZE_UP_TO:
            group = self._by_name_size.get((os.path.basename(here), size))
        if not group:
            return None
        digest: str | None = None
        for old_key, old_sha in list(group.items()):
            old_path = key_path(old_key)
            if (old_path == here or not old_sha or os.path.lexists(old_path)
                    or not self.is_done(old_key, check_bytes=False)):
                continue
            if digest is None:
                try:
                    digest = sha256_file(path)
                except OSError:
                    return None
            if digest == old_sha:
                return self._row_of(old_key)
        return None

    def find_retimed(self, key: str, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The final row of this same photograph at this same path under another file time, or None.

        Why: a FAT-formatted camera card shows every file an hour older or newer after a daylight-saving
        change (FAT keeps local time), and file times are part of a key, so a rerun over the card would
        screen every photograph again. Only a file whose path has a final row of the same size is read,
        and it must have that row's sha256 (other content under the name is a new photograph).
        """
        here = key_path(key)
        known = self._final_by_path.get(here)
        if known is None:
            return None
        sha, old_key = known
        if old_key == key or key_size(old_key) != key_size(key) or not self.is_done(old_key, check_bytes=False):
            return None
        try:
            if sha256_file(path) != sha:
                return None
        except OSError:
            return None
        return self._row_of(old_key)

    def replaced_photograph(self, path: str, sha256: str) -> dict[str, Any] | None:
        """The ok/ungradable row of ANOTHER photograph screened earlier under ``path`` (other content), or None.

        Why: cameras restart their file numbering, so ``IMG_0001.jpg`` can name
        a new patient's photograph next week; the earlier patient's result must
        stay listed (:meth:`latest_rows`), and the new one needs images of its own.
        """
        known = self._final_by_path.get(path)
        if known is None or not sha256 or known[0] == sha256:
            return None
        return self._row_of(known[1])

    def latest_rows(self) -> list[dict[str, Any]]:
        """One row per photograph (the last one written for its path), ordered by those last rows; ready to display.

        A row that says ``moved_from`` replaces the row of that old path. A
        file replaced by *another* photograph (other content) keeps its earlier
        final row too, marked ``file_replaced``: both were screened, and the
        earlier patient's result must not drop out of the CSV and the report.
        Text is made valid Unicode (:func:`_display`); ``key`` and
        ``source_path`` keep the lossless form.
        """
        by_path: dict[str, dict[str, Any]] = {}
        escaped: set[int] = set()  # id() of the rows that may hold lone surrogates (see _scan_lines)
        for _, r, maybe in self._scan_lines(kept=True):
            if maybe:
                escaped.add(id(r))
            path = _row_path(r)
            moved = r.get("moved_from")
            if isinstance(moved, str):
                by_path.pop(moved, None)
            old = by_path.pop(path, None)  # re-insert: order follows the latest row
            if old is not None and _another_photograph(old, r):
                kept = by_path[f"{path}|{old['sha256']}"] = {**old, "file_replaced": True,
                                                             "replaced_at": r.get("screened_at")}
                if id(old) in escaped:
                    escaped.add(id(kept))
            by_path[path] = r
        # A folder that could not be listed had an error row of its own (inputs.walk_images); once it lists,
        # its photographs have rows (or it holds none), and the folder's row is history. Only error rows are
        # looked at: a stat each, not one per row.
        for path in [p for p, r in by_path.items() if r.get("status") == "error" and os.path.isdir(p)]:
            try:
                with os.scandir(path):
                    del by_path[path]
            except OSError:
                continue
        # Rows of escape-free lines are returned as parsed (no copy: a large folder's rows are held once).
        return [{k: (v if k in ("key", "source_path") else _display(v)) for k, v in r.items()}
                if id(r) in escaped else r for r in by_path.values()]

    # -- writing ---------------------------------------------------------------------------------
    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows and make them durable before returning.

        A row holding an undecodable file name (lone surrogates) is written
        with ASCII escapes, which JSON reads back losslessly; the file stays
        valid UTF-8 either way.
        """
        pending, self._pending = self._pending, []
        self._pending_by_key = {}
        if not rows and not pending:
            return
        if self.gone:  # the same words as when it was found: nothing can be written for that folder
            raise ConfigError(self._broken)
        if self._broken:
            raise ConfigError(f"{self.path}: an earlier write failed ({self._broken}); open the folder again "
                              "(rows written before the failure are kept, the rest are screened again)")
        if self._record is not None:
            write_json(self.out_dir / RUN_JSON, self._record)
            self._record = None
        if self._fh is None:
            self._fh = cast(TextIO, self._open("a"))  # noqa: SIM115 - kept open across batches
            self._end = self._size()
        try:
            self._write_rows(self._fh, pending, rows)
        except BaseException as exc:
            # A full disk or an interrupt mid-write: drop the handle (its buffer holds rows that must not be
            # written later by accident, e.g. by close) and let the next open cut a torn last line. The rows
            # were already counted as done here, so this store takes no more rows.
            self._broken = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):
                fh.close()
            if isinstance(exc, OSError) and exc.filename is None:  # write() and fsync() name no file
                exc.filename = os.fspath(self.path)
            raise

    def _write_rows(self, fh: TextIO, pending: list[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> None:
        newline = len(os.linesep)  # text mode writes "\n" as os.linesep
        deferred = {id(r) for r in pending}
        for r in [*pending, *rows]:
            line = json.dumps(r, ensure_ascii=False, separators=(",", ":"))
            try:
                data = line.encode("utf-8")
            except UnicodeEncodeError:
                line = json.dumps(r, ensure_ascii=True, separators=(",", ":"))
                data = line.encode("utf-8")
            fh.write(line + "\n")
            self._offsets[str(r["key"])] = self._end
            self._end += len(data) + newline
            if id(r) not in deferred:  # deferred rows were noted when deferred
                self._note(r)
                self.n_rows += 1
        fh.flush()
        os.fsync(fh.fileno())
        self._end = os.fstat(fh.fileno()).st_size
        self.check_in_place()

    def check_in_place(self) -> None:
        """Raise :class:`ConfigError` when the results.jsonl being written is no longer in the output folder.

        Why: a folder removed or moved while screening (a clean-up script, a USB stick re-mounted, a user
        tidying up) took the rows appended through the open handle with it, and the run then wrote a fresh
        report of "0 images" where the folder had been and exited as if all were well (a review). Only what
        every filesystem says reliably is used: the file is not found by its name (twice, half a second apart),
        or the open file has no name left and its name leads to another file. A ``stat`` or two per batch.
        """
        problem = self._where_gone()
        if problem:  # a network drive that blinked reads "not found" for a moment (Windows): look once more
            time.sleep(GONE_RECHECK_S)
            problem = self._where_gone()
        if not problem:
            return
        self.gone = True
        lost = (f": the rows written since are not in it (if it was moved, they are in its {JSONL} there)"
                if self._fh is not None else "")
        self._broken = self._broken or (f"the output folder {self.out_dir} {problem} while screening{lost}; run the "
                                        f"same command again to screen into {self.out_dir}")
        raise ConfigError(self._broken)

    def _where_gone(self) -> str:
        """What :meth:`check_in_place` found wrong, or ``""``."""
        try:
            if self._fh is None:
                os.stat(self.out_dir)
                return ""
            by_name, held = os.stat(self.path), os.fstat(self._fh.fileno())
        except FileNotFoundError:
            return "was removed or moved"
        # No name left for the open file: deleted. Some FUSE filesystems report 0 links for every file, so the
        # name must also lead to another file for it to count.
        if held.st_nlink == 0 and not os.path.samestat(by_name, held):
            return f"lost its {JSONL} (deleted)"
        return ""

    def defer(self, row: dict[str, Any]) -> None:
        """Count ``row`` as written now (``done``, lookups) and write it with the next :meth:`append`.

        Why: a card found under a new mount point gives one such row per
        photograph; writing and fsync'ing each on its own made thousands of
        fsyncs. :meth:`close` writes what is left.
        """
        self._note(row)
        self.n_rows += 1
        self._pending.append(row)
        self._pending_by_key[str(row["key"])] = row

    def close(self) -> None:
        """Write deferred rows, close the jsonl and release the folder lock."""
        try:
            if getattr(self, "_pending", None):
                self.append([])
        finally:
            self._close()

    def _close(self) -> None:
        fh = getattr(self, "_fh", None)
        try:
            if fh is not None:
                self._fh = None
                fh.close()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if getattr(self, "_locked", False):
            self._locked = False
            rows: int = getattr(self, "n_rows", 0)
            record: dict[str, Any] | None = getattr(self, "_record", None)
            if record is not None and rows and not getattr(self, "_check_only", False) \
                    and not getattr(self, "gone", False):  # never into a folder that went (it would come back)
                # A rerun that screened nothing new still records today's bundle path and toolkit version.
                with contextlib.suppress(OSError):
                    write_json(self.out_dir / RUN_JSON, record)
            # A folder this store created and nothing was written into (no photographs found) goes again,
            # with the parents it had to create (--out new/2026/11/29), as far as they are still empty.
            created: tuple[Path, ...] = getattr(self, "_created", ())
            if _release(self._real, remove_if_unused=bool(created) and rows == 0):
                for parent in created[1:]:
                    try:
                        os.rmdir(parent)
                    except OSError:  # something else is in it now, or it went: leave it and those above
                        break

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: How long check_in_place waits before looking again at a folder that seemed gone (seconds).
GONE_RECHECK_S = 0.5


def _another_photograph(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` (same path) holds other content than ``old``, a photograph that was decoded and judged.

    A damaged file (a half-copied one) followed by a good one is the same
    photograph copied again, not another one.
    """
    a, b = old.get("sha256"), new.get("sha256")
    return bool(a) and bool(b) and a != b and old.get("status") in FINAL_STATUSES


def content_hash(row: Mapping[str, Any]) -> str:
    """A screened row's own sha256 in one form (bare lower-case hex), else "": rows without a result are left
    out (every empty or cut-short file has the same bytes: not "the same photograph")."""
    if row.get("status") not in ("ok", "ungradable"):
        return ""
    own = row.get("sha256") or row.get("content_sha256")
    return str(own).lower().removeprefix("sha256:") if own else ""


def csv_columns(class_names: Sequence[str]) -> list[str]:
    return [
        "id", "source", "status", "refer", "positive",
        *[f"p_{c}" for c in class_names],
        "gradable", "quality_score", "reasons", "error", "heatmap_class",
        "screened_at", "bundle_sha256",
        "read_ms", "preprocess_ms", "quality_ms", "infer_ms",
        # Added later, so earlier columns keep their positions for scripts that read them by index.
        "findings", "backend", "precision", "model_file", "file_replaced", "intended_use",
        "advice", "same_as",
    ]


def _yes_no(v: Any) -> str:
    return "" if v is None else ("yes" if v else "no")


# A spreadsheet runs a cell starting with these as a formula (a file named "=HYPERLINK(...).jpg").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """A text cell a spreadsheet shows as text: a leading formula character gets a ``'`` before it."""
    return "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v


CSV_STYLES = ("comma", "semicolon")


def write_csv(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], class_names: Sequence[str],
              referable: Sequence[str] | None = None, style: str = "comma") -> int:
    """Write ``rows`` (jsonl records) as CSV atomically; returns the number of rows.

    ``style``: ``comma`` (comma-separated, decimal point: scripts, and
    spreadsheets set to English) or ``semicolon`` (semicolon-separated,
    decimal comma: what Excel opens into columns where the comma is the
    decimal mark, most of Europe and Latin America; lists inside a cell are
    then comma-separated).

    UTF-8 with a BOM (``utf-8-sig``): Excel on Windows reads a CSV without one
    in the local code page and garbles every non-ASCII file name. Lines end
    in CRLF (RFC 4180), and a cell holding a line break is quoted. Booleans
    are ``yes``/``no`` (empty when not decided). ``positive`` lists every
    class at or above its threshold (``normal`` included); ``findings`` only
    the ``referable`` ones of a gradable photograph, what the report calls
    "Found". ``intended_use`` is the bundle's stated use when the row was
    screened (empty in rows from before it was recorded). ``advice`` is the
    report's sentence for an ungradable or unreadable photograph's main
    cause (what to do: retake, export as JPEG, ...); ``same_as`` names the
    row above whose file has the same bytes (one photograph under two names,
    perhaps of two patients). Text that a
    spreadsheet would run as a formula is prefixed with ``'`` (:func:`_cell`).
    """
    if style not in CSV_STYLES:
        raise ConfigError(f"CSV style must be one of {', '.join(CSV_STYLES)}, got {style!r}")
    first_of: dict[str, str] = {}  # sha256 -> the first row's source with those bytes
    semicolon = style == "semicolon"
    sep = "," if semicolon else ";"  # between the items of a list inside one cell

    def number(v: float, digits: int) -> str:
        text = f"{v:.{digits}f}"
        return text.replace(".", ",") if semicolon else text

    cols = csv_columns(class_names)
    buf = io.StringIO()
    # CRLF line ends (RFC 4180) also make the writer quote a cell holding a lone carriage return (a file
    # name may): with "\n" it went out bare, and spreadsheets split the row there, the rest starting a row.
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\r\n",
                       delimiter=";" if semicolon else ",")
    w.writeheader()
    n = 0
    for r in rows:
        # Text is made valid UTF-8 per cell below (_display), not by copying every row whole first.
        flat: dict[str, Any] = {k: r.get(k) for k in ("id", "source", "status", "error", "heatmap_class",
                                                      "screened_at", "bundle_sha256")}
        flat["refer"] = _yes_no(r.get("refer"))
        flat["gradable"] = _yes_no(r.get("gradable"))
        flat["positive"] = sep.join(r.get("positive") or [])
        if referable is not None:
            flat["findings"] = sep.join(c for c in r.get("positive") or [] if c in referable) \
                if r.get("status") == "ok" else ""
        for k in ("backend", "precision", "model_file"):
            flat[k] = r.get(k) or ""
        flat["file_replaced"] = "yes" if r.get("file_replaced") else ""
        flat["intended_use"] = r.get("intended_use") or ""  # empty in rows screened before uopsl recorded it
        flat["reasons"] = sep.join(r.get("reasons") or [])
        # What to do, in the report's words (a clinic review: the CSV had only the codes), for the main cause.
        tags = [str(t) for t in r.get("reasons") or []]
        flat["advice"] = (reason_text(order_reasons(tags)[0]).advice if tags else NO_RESULT_ADVICE) \
            if r.get("status") in ("ungradable", "error") else ""
        # A byte-identical copy of a photograph listed above: one photograph under two names (possibly two
        # patients). As the report's duplicate check: screened rows only (every empty or cut-short file has the
        # same bytes), one key form for every sha256.
        digest = content_hash(r)
        source = str(r.get("source") or "")
        first = first_of.get(digest, "") if digest else ""
        flat["same_as"] = first if first != source else ""
        if digest:
            first_of.setdefault(digest, source)
        q = r.get("quality_score")
        flat["quality_score"] = "" if q is None else str(q).replace(".", ",") if semicolon else q
        for c in class_names:
            v = (r.get("probs") or {}).get(c)
            if v is None:
                flat[f"p_{c}"] = ""
            else:
                text = probability_text(v)
                flat[f"p_{c}"] = text.replace(".", ",") if semicolon else text
        for t, v in (r.get("timings_ms") or {}).items():
            flat[t] = number(v, 2)
        w.writerow({k: _cell(_display(v)) for k, v in flat.items()})
        n += 1
    write_text(path, buf.getvalue(), encoding="utf-8-sig", newline="")  # the CRLFs as written, on Windows too
    return n
