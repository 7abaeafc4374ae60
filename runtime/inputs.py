"""What a screening run reads: files, folders (walked as they go), list files and in-memory images, as
:class:`InputItem` objects with a stable key each.

Owns which files a run takes (photographs named as :mod:`uopsl.runtime.image_suffixes` says, DICOM, list
files, photographs it cannot decode), each input's key (:mod:`uopsl.runtime.input_keys`: real path, size and
time; ``sha1:`` for in-memory images), the checks on the inputs and the output folder a run is given, and the
folder walk (symbolic-link loops, unreadable folders and DICOM files without a suffix handled as they are met).
:mod:`uopsl.runtime.pipeline` screens what this module yields; :mod:`uopsl.runtime.results` reads the keys back.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from uopsl.runtime.dicomfile import PART10_HEAD, is_part10
from uopsl.runtime.errors import ConfigError, command_word
from uopsl.runtime.fsio import readable_text
from uopsl.runtime.image_suffixes import DICOM_SUFFIXES, IMAGE_SUFFIXES, image_suffix
from uopsl.runtime.input_keys import file_key, key_path
from uopsl.runtime.optional import available, extra_hint
from uopsl.runtime.results import JSONL, LOCK_NAME

log = logging.getLogger(__name__)


LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
#: Photographs in formats the runtime does not decode (a phone's HEIC/HEIF, AVIF): a folder walk takes them so
#: each gets a row ("file type not supported: export it as JPEG", judged by content) instead of a count on the
#: console that the printed report never showed (a clinic review: a patient's HEIC photo vanished). Not camera RAW:
#: DNG, NEF and CR2 are TIFF containers whose first picture (a thumbnail or a processed preview) would be graded.
PHOTO_SUFFIXES_NOT_READ = frozenset({".heic", ".heif", ".hif", ".avif"})
_PHOTO_NAMES = IMAGE_SUFFIXES | PHOTO_SUFFIXES_NOT_READ


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as valid Unicode text, for CSV, HTML and messages (:func:`uopsl.runtime.fsio.readable_text`)."""
    return readable_text(os.fspath(path))


# -- inputs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputItem:
    """One thing to screen: a file path, or in-memory bytes / an RGB array (API use).

    ``key`` identifies the exact file version (absolute path, size, mtime) so a
    rerun can skip what it already screened; ``id`` is a short, file-name-safe
    identifier for overlays and thumbnails.
    """

    source: str
    key: str
    id: str
    path: Path | None = None
    data: bytes | np.ndarray | None = None


#: What :meth:`uopsl.runtime.api.Screener.screen` takes: a path (or, for ``screen_many``, a folder or a list
#: file), encoded image bytes, an RGB uint8 (H, W, 3) array, or an :class:`InputItem`.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, InputItem]


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:40]
    return stem or "image"


def item_for_path(path: str | os.PathLike[str]) -> InputItem:
    p = Path(path)
    key = file_key(p)
    digest = hashlib.sha1(key_path(key).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return InputItem(source=str(p), key=key, id=f"{_safe_stem(p.name)}-{digest}", path=p)


def item_for_data(data: bytes | np.ndarray, name: str = "image") -> InputItem:
    """An in-memory image; its key is a content hash (so identical images dedupe)."""
    # (an array is hashed through its buffer: the same digest as its tobytes(), without another copy of it)
    raw = np.ascontiguousarray(data).data if isinstance(data, np.ndarray) else bytes(data)
    digest = hashlib.sha1(raw).hexdigest()
    return InputItem(source=name, key=f"sha1:{digest}", id=f"{_safe_stem(name)}-{digest[:8]}", data=data)


@dataclass
class WalkState:
    """What a walk over the inputs remembers: folders already walked, folders left out, files not taken.

    Why it exists: a symbolic link back to a parent folder (``sub/up -> ..``)
    would walk the same photographs again and again, so every folder is
    walked once, by its (device, inode). The output folder (``exclude``) and
    any folder holding ``results.jsonl`` are never walked: their thumbnails and
    overlays are not patient photographs. Files that are not an image type are
    counted per suffix, so the user hears about a ``.HEIC`` or ``.dcm`` the
    walk did not take instead of it silently disappearing.
    """

    exclude: Sequence[str | os.PathLike[str]] = ()
    visited: set[tuple[int, int] | str] = field(default_factory=set)  # (st_dev, st_ino), or the real path
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped_names: list[str] = field(default_factory=list)
    hidden_images: int = 0  # image-named files starting with '.' (a Mac's ._IMG_0001.jpg, an editor's temp file)
    #: DICOM files a folder walk left out: no DICOM reader installed; a photograph of the same name beside it
    #: (PACS exports write both: each photograph would be screened twice).
    dicom_unread: int = 0
    dicom_copies: int = 0
    excluded: list[str] = field(default_factory=list)
    said: set[str] = field(default_factory=set)
    #: Files without an image suffix whose first bytes were read (:func:`dicom_media_file`): path -> (size,
    #: mtime_ns, ctime_ns, is DICOM). ``watch`` keeps one across polls, so an unchanged file is read once.
    sniffed: dict[str, tuple[int, int, int, bool]] = field(default_factory=dict)
    #: The paths :func:`dicom_media_file` looked up in this walk (``watch`` keeps only those after a full check).
    sniff_seen: set[str] = field(default_factory=set)
    #: Folders that could not be opened or listed (no permission, gone): :func:`walk_images` gives each its own
    #: error row (the reason is read again there), so the photographs in it are not missed without a trace.
    unlisted: set[str] = field(default_factory=set)
    #: Every folder walked -> (st_mtime_ns, st_ino) read before it was listed: ``watch`` walks again
    #: only when one of them changes (a file created, removed or renamed in it).
    folders: dict[str, tuple[int, int]] = field(default_factory=dict)
    _exclude_ids: set[tuple[int, int]] = field(default_factory=set, init=False, repr=False)
    _exclude_real: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        for x in self.exclude:
            self._exclude_real.append(os.path.realpath(os.fspath(x)))
            try:
                st = os.stat(x)
                if st.st_ino:  # 0: no identity (matched by its path instead)
                    self._exclude_ids.add((st.st_dev, st.st_ino))
            except OSError:
                pass  # not created yet: matched by its path

    def inside_excluded(self, path: str | os.PathLike[str]) -> str | None:
        """The excluded folder ``path`` lies in (or is), else None."""
        real = os.path.realpath(os.fspath(path))
        for ex in self._exclude_real:
            if real == ex or real.startswith(ex.rstrip(os.sep) + os.sep):
                return ex
        return None

    def say(self, level: int, msg: str, *args: Any) -> None:
        """Log once per distinct message: ``watch`` walks the same folder every half second."""
        text = msg % args
        if text not in self.said:
            self.said.add(text)
            log.log(level, "%s", text)

    def note_skipped(self, name: str) -> None:
        self.skipped[image_suffix(name) or "(no suffix)"] += 1
        if len(self.skipped_names) < 5:
            self.skipped_names.append(display_path(name))

    @property
    def anything_skipped(self) -> bool:
        """Whether :meth:`skipped_message` has something to say."""
        return bool(self.skipped) or self.hidden_images > 0 or self.dicom_unread > 0 or self.dicom_copies > 0

    def skipped_message(self) -> str:
        """``"4 files skipped (not an image type: .HEIC 1, .dcm 1, ...; e.g. e.HEIC, g.dcm)"``, or ``""``."""
        n = sum(self.skipped.values())
        notes = []
        if self.hidden_images:
            notes.append(f"{self.hidden_images} hidden image file{'s' if self.hidden_images != 1 else ''} skipped "
                         "(names starting with '.': a Mac's ._ copies, temporary files)")
        if self.dicom_unread:
            notes.append(f"{self.dicom_unread} DICOM file{'s' if self.dicom_unread != 1 else ''} skipped (no DICOM "
                         f"reader here: {extra_hint('dicom')} to screen them)")
        if self.dicom_copies:
            notes.append(f"{self.dicom_copies} DICOM file{'s' if self.dicom_copies != 1 else ''} skipped (a "
                         "photograph of the same name is beside each, screened instead)")
        extra = "; ".join(notes)
        if not n:
            return extra
        kinds = ", ".join(f"{k} {v}" for k, v in self.skipped.most_common(8))
        return (f"{n} file{'s' if n != 1 else ''} skipped (not an image type: {kinds}; "
                f"e.g. {', '.join(self.skipped_names)}; taken: {', '.join(sorted(IMAGE_SUFFIXES))})"
                + (f"; {extra}" if extra else ""))


#: The file ``uopsl explain`` leaves in its output folder (hidden: never a photograph itself) so that folder walks
#: leave the maps out: each is a PNG of a patient's photograph with heatmaps, and ``uopsl-screen run`` over the
#: photo folder screened them as photographs (a review: a two-panel map came back ``ok`` and referred).
MAPS_MARKER = ".uopsl-maps"


def output_folder_kind(folder: str | os.PathLike[str]) -> str | None:
    """What marks ``folder`` as a uopsl output folder, in words, or None."""
    for name, what in ((JSONL, "uopsl-screen"), (LOCK_NAME, "uopsl-screen"), (MAPS_MARKER, "uopsl explain")):
        if os.path.isfile(os.path.join(folder, name)):
            return f"an output folder of {what} (it holds {name})"
    return None


def is_output_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds uopsl-screen results (``results.jsonl`` or its lock file) or ``uopsl explain``'s
    maps (:data:`MAPS_MARKER`)."""
    return output_folder_kind(folder) is not None


def output_folder_named(folder: str | os.PathLike[str]) -> ConfigError:
    """The error for a folder the user named as input that is an output folder of uopsl-screen or explain.

    Why an error: the walk leaves output folders out (their thumbnails would be screened), so naming one
    used to end in "no photographs found", which does not say why.
    """
    return ConfigError(f"input {display_path(folder)} is {output_folder_kind(folder) or 'an output folder'}, not a "
                       "folder of photographs; name the folder the photographs are in (results go to --out)")


def walk_images(folder: Path, state: WalkState | None = None) -> Iterator[Path]:
    """Image files under ``folder``: sorted, recursive, hidden files and folders skipped, lazy.

    Every folder is walked once (``state.visited``); output folders are left
    out; an entry that cannot even be examined (a symbolic-link loop, no
    permission) is yielded as it is, so it gets its own error row instead of
    stopping the walk, and so is a folder that cannot be opened or listed (its
    row says its photographs were not screened; before, a warning on the console
    was all a clinic got, and the run could end "all screened").
    """
    state = state if state is not None else WalkState()
    entries = list_folder(folder, state)
    if os.fspath(folder) in state.unlisted:
        yield folder
        return
    for path, is_folder in entries:
        if is_folder:
            yield from walk_images(path, state)
        else:
            yield path


def folder_ident(folder: Path, st: os.stat_result) -> tuple[int, int] | str:
    """What identifies ``folder`` (``st``: its ``os.stat``) in a walk's ``visited``, whatever path reached it.

    Where Windows reports no file index (st_ino 0: some network redirectors, FAT through some drivers) the
    pair identifies nothing; the resolved path stands in (loops through links are still caught by it).
    """
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(folder)


def list_folder(folder: Path, state: WalkState) -> list[tuple[Path, bool]]:
    """One folder's entries a walk takes, in name order, as (path, is it a folder); see :func:`walk_images`.

    Empty for a folder already walked, left out (``exclude``, an output
    folder) or unreadable; ``state`` says why. ``watch`` lists the folders
    that changed with it, and keeps the other folders' listings.
    """
    try:
        st = os.stat(folder)
    except OSError as exc:
        state.say(logging.WARNING, "cannot open folder %s: %s", display_path(folder), exc.strerror or exc)
        state.unlisted.add(os.fspath(folder))
        return []
    ident = folder_ident(folder, st)
    if ident in state.visited:
        state.say(logging.INFO, "not walking %s again (a link to a folder already walked)", display_path(folder))
        return []
    if ident in state._exclude_ids or state.inside_excluded(folder) or is_output_folder(folder):
        state.excluded.append(display_path(folder))
        if not (ident in state._exclude_ids or state.inside_excluded(folder)):
            state.say(logging.WARNING, "not screening %s: it is %s", display_path(folder),
                      output_folder_kind(folder) or "an output folder")
        return []
    state.visited.add(ident)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        state.say(logging.WARNING, "cannot list %s: %s", display_path(folder), exc.strerror or exc)
        state.unlisted.add(os.fspath(folder))
        state.visited.discard(ident)  # listed again by a later walk (watch) once it can be
        return []
    state.unlisted.discard(os.fspath(folder))
    state.folders[os.fspath(folder)] = (st.st_mtime_ns, st.st_ino)  # the time read before listing; listed
    out: list[tuple[Path, bool]] = []
    # DICOM files are taken only where they can be read (a default install has no reader: they are counted,
    # not given error rows) and only when no other photograph of the same name is beside them.
    photo_stems = {os.path.splitext(e.name)[0].lower() for e in entries
                   if image_suffix(e.name) in IMAGE_SUFFIXES - DICOM_SUFFIXES}
    dicom_readable: bool | None = None
    for e in entries:
        if e.name.startswith("."):
            if image_suffix(e.name) in IMAGE_SUFFIXES:
                state.hidden_images += 1
            continue
        try:
            is_dir = e.is_dir(follow_symlinks=True)
        except OSError:
            out.append((Path(e.path), False))  # e.g. a symbolic-link loop: reading it gives the row its reason
            continue
        suffix = image_suffix(e.name)
        if is_dir:
            out.append((Path(e.path), True))
        elif suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and dicom_media_file(e, state)):
            # A media file's whole name is its stem (IM000001, or a UID whose last part is no suffix).
            stem = os.path.splitext(e.name)[0] if suffix in DICOM_SUFFIXES else e.name.rstrip()
            if stem.lower() in photo_stems:
                state.dicom_copies += 1
                continue
            if dicom_readable is None:
                dicom_readable = available("pydicom")
            if dicom_readable:
                out.append((Path(e.path), False))
            else:
                state.dicom_unread += 1
        elif suffix in IMAGE_SUFFIXES:
            out.append((Path(e.path), False))
        elif suffix in PHOTO_SUFFIXES_NOT_READ and os.path.splitext(e.name)[0].lower() not in photo_stems:
            out.append((Path(e.path), False))  # a phone's HEIC beside its exported JPEG: the JPEG is screened
        else:
            state.note_skipped(e.name)
    return out


#: A file's first bytes are remembered as "not DICOM" only once it has not been written for this long: a
#: file still being written (or preallocated) may become one without its size or times moving past the
#: resolution of the file system (FAT: 2 s).
_SNIFF_SETTLED_NS = 10_000_000_000


def dicom_media_file(entry: os.DirEntry[str], state: WalkState) -> bool:
    """Whether a file a folder walk would otherwise skip is a DICOM Part 10 file named the way DICOM media name them.

    Why: DICOM media (a CD or USB export with a ``DICOMDIR``, PS3.12) name their files without a suffix
    (``IM000001``), and PACS exports often by the instance UID (``1.2.840.113619.2.55.3.604``), whose last
    part reads as a suffix of digits. Only such names are examined: a stat per listing, and the first 134
    bytes (the 128-byte preamble, ``DICM``, and the file meta group's first tag) once per run, or once per
    change of the file while ``watch`` runs. ``DICOMDIR`` itself is an index, not a photograph. A file too
    short to tell yet (a copy that has just begun) is read again at the next listing; a result is
    remembered in ``state.sniffed`` by size, modification and change time (a "no" only for a file not
    written in the last 10 s).
    """
    suffix = image_suffix(entry.name)
    if (suffix and not suffix[1:].isdigit()) or entry.name.strip().upper() == "DICOMDIR":
        return False
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size < PART10_HEAD:
        return False
    state.sniff_seen.add(entry.path)
    sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = state.sniffed.get(entry.path)
    if known is not None and known[:3] == sig:
        return known[3]
    try:
        with open(entry.path, "rb") as fh:
            head = fh.read(PART10_HEAD)
    except OSError:
        return False  # unreadable now: not remembered, so it is read again at the next listing
    found = is_part10(head)
    if found or time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= _SNIFF_SETTLED_NS:
        state.sniffed[entry.path] = (*sig, found)
    else:
        state.sniffed.pop(entry.path, None)
    return found


def _missing_input(p: Path, exc: OSError) -> ConfigError:
    what = "does not exist" if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else \
        f"cannot be opened ({exc.strerror or exc})"
    return ConfigError(f"input {display_path(p)} {what}; expected a photograph, a folder or a "
                       f"{'/'.join(sorted(LIST_SUFFIXES))} list file: check the path")


def _named_like_a_photograph(p: Path) -> bool:
    """Whether ``p``'s name is a photograph's, read or not (a missing one gets an error row, not a stop)."""
    return image_suffix(p.name) in _PHOTO_NAMES


def refuse_empty_path(raw: Any) -> None:
    """An empty path (``""``, an empty form field) is Python's current folder: never screen that unasked."""
    if isinstance(raw, str) and not raw.strip():
        raise ConfigError(f"an empty path ({raw!r}) names no photograph; pass a photograph, a folder or a list "
                          "file (for the current folder, say '.')")


def check_inputs(inputs: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` for a top-level input that is missing and not named like a photograph.

    Why: a mistyped folder used to become one "unreadable photo" row and a
    report, as if the folder were a patient's image. A missing path named like
    an image (``x.jpg``) still gets its error row: a list of expected
    photographs should show which one is missing. Cheap (one stat per input),
    so callers run it before loading a model or creating an output folder.
    """
    for raw in inputs:
        refuse_empty_path(raw)
        if isinstance(raw, (str, os.PathLike)):
            p = Path(raw)
            try:
                st = os.stat(p)
            except OSError as exc:
                if not _named_like_a_photograph(p):
                    raise _missing_input(p, exc) from None
                continue
            if stat.S_ISDIR(st.st_mode) and is_output_folder(p):
                raise output_folder_named(p)


def check_output_placement(out: str | os.PathLike[str], inputs: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` when the output folder is, or holds, a top-level input.

    Why: the walk never screens the output folder, so ``--out photos`` (or a
    parent such as ``--out .``) would skip every photograph, say "no
    photographs found" and leave the photo folder marked as an output folder.
    An output folder *inside* the photo folder is fine (it is skipped). Checked
    before anything is created.
    """
    real_out = os.path.realpath(os.fspath(out))
    for raw in inputs:
        if not isinstance(raw, (str, os.PathLike)) or not os.path.lexists(raw):
            continue
        real = os.path.realpath(os.fspath(raw))
        if real == real_out or real.startswith(real_out.rstrip(os.sep) + os.sep):
            p = Path(os.path.abspath(raw))
            where = "is" if real == real_out else "holds"
            suggestion = p.parent / f"{p.name}-screened" if p.is_dir() else p.parent.parent / f"{p.parent.name}-screened"
            raise ConfigError(f"the output folder {display_path(out)} {where} the input {display_path(raw)}, so its "
                              f"photographs would be skipped as results; choose an output folder outside it, "
                              f"e.g. --out {command_word(display_path(suggestion))}")


def iter_inputs(inputs: Iterable[str | os.PathLike[str]], *, state: WalkState | None = None) -> Iterator[InputItem]:
    """Expand files, folders (recursively: image files only) and list files (one path a line).

    A path given explicitly is always screened, even if it is not an image or
    does not exist: it then gets an ``error`` row that says so; only a missing
    top-level input that is not named like an image raises :class:`ConfigError`
    (:func:`check_inputs`), and so does a top-level folder that is an output
    folder of uopsl-screen (:func:`output_folder_named`). List files are read as UTF-8 with or without the
    BOM Notepad writes; entries are relative to the list file's folder; ``#``
    starts a comment; a list that (directly or not) names itself is read once.
    Anything inside an excluded folder (the output folder) is left out.
    """
    state = state if state is not None else WalkState()
    for raw in inputs:
        refuse_empty_path(raw)
        yield from _expand(Path(raw), state, top=True, lists=())


def _expand(p: Path, state: WalkState, *, top: bool, lists: tuple[str, ...],
            gone: list[Path] | None = None) -> Iterator[InputItem]:
    """``p``'s items; ``gone``: where a path that does not exist is noted (a list file's entries, to name them)."""
    inside = state.inside_excluded(p)
    if inside is not None:
        state.say(logging.WARNING, "not screening %s: it is inside the output folder %s", display_path(p),
                  display_path(inside))
        state.excluded.append(display_path(p))
        return
    try:
        st: os.stat_result | None = os.stat(p)
    except OSError as exc:
        st = None
        if top and not _named_like_a_photograph(p):
            raise _missing_input(p, exc) from None
        if gone is not None and isinstance(exc, FileNotFoundError):
            gone.append(p)
    if st is not None and stat.S_ISDIR(st.st_mode):
        if top and is_output_folder(p):
            raise output_folder_named(p)
        for f in walk_images(p, state):
            yield item_for_path(f)
    elif st is not None and stat.S_ISREG(st.st_mode) and p.suffix.lower() in LIST_SUFFIXES:
        yield from _read_list(p, state, top=top, lists=lists)
    else:
        yield item_for_path(p)


def _read_list(p: Path, state: WalkState, *, top: bool, lists: tuple[str, ...]) -> Iterator[InputItem]:
    real = os.path.realpath(p)
    try:
        fh = open(p, encoding="utf-8-sig")  # noqa: SIM115 - closed below; lazy on purpose
    except OSError as exc:
        if top:
            raise _missing_input(p, exc) from None
        yield item_for_path(p)
        return
    entries = 0
    missing: list[tuple[int, str]] = []  # (line, entry) naming no file: their rows alone did not say where from
    gone: list[Path] = []  # noted by _expand from the stat it makes anyway
    with fh:
        for n, line in _strict_lines(fh, p):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            entry = _unquoted(entry, p.parent)
            if not entry:  # "" (an empty spreadsheet cell) would name the list's own folder
                continue
            q = Path(entry)
            q = q if q.is_absolute() else p.parent / q
            if q.suffix.lower() in LIST_SUFFIXES and os.path.realpath(q) in (*lists, real):
                log.warning("%s, line %d: %s is a list file already being read (a list cannot include "
                            "itself); entry skipped", display_path(p), n, display_path(entry))
                continue
            entries += 1
            before = len(gone)
            yield from _expand(q, state, top=False, lists=(*lists, real), gone=gone)
            if len(gone) > before:
                missing.append((n, entry))
    if missing:
        # A review: notes.txt holding "hello" gave a row "hello (cannot open file)" and nothing named the list,
        # its line, or that any .txt input is read as a list of photographs.
        first = ", ".join(f"line {n}: {display_path(e)}" for n, e in missing[:3])
        state.say(logging.WARNING, "%s: %d of its %d %s %s no file (%s%s), and each gets an error row; a %s "
                  "input is read as a list of photographs, one path a line, relative to the list's folder",
                  display_path(p), len(missing), entries, "entry" if entries == 1 else "entries",
                  "names" if len(missing) == 1 else "name", first,
                  ", ..." if len(missing) > 3 else "", "/".join(sorted(LIST_SUFFIXES)))


def _unquoted(entry: str, base: Path) -> str:
    """``entry`` without one pair of surrounding double quotes, unless a file is named with them.

    Windows Explorer's "Copy as path" copies ``"C:\\photos\\img 1.jpg"`` quoted; a list built from it made
    every entry "unreadable". (A quote is not allowed in a Windows file name; on POSIX the quoted name is
    kept when such a file exists.)
    """
    if len(entry) < 2 or not entry[0] == entry[-1] == '"':
        return entry
    q = Path(entry)
    if os.path.lexists(q if q.is_absolute() else base / q):
        return entry
    return entry[1:-1].strip()


def _strict_lines(fh: Any, p: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a list file, read lazily; text that is not UTF-8 is one ConfigError.

    Decoding with replacement characters turned each non-ASCII name of a list saved in a Windows code
    page into a "missing file" row (``M\ufffdller.png``), one per photograph.
    """
    try:
        for n, line in enumerate(fh, 1):
            if "\x00" in line:  # UTF-16 without a byte-order mark decodes as UTF-8 with a NUL in every other place
                raise ConfigError(f"{display_path(p)}, line {n}: the image list holds NUL characters (UTF-16 text?); "
                                  "save it as UTF-8 (Notepad: Save as, Encoding UTF-8) and run again")
            yield n, line
    except UnicodeDecodeError as exc:  # text files decode in chunks: the position would be the chunk's
        raise ConfigError(f"{display_path(p)}: the image list is not UTF-8 text ({exc.reason}); save it as UTF-8 "
                          "(Notepad: Save as, Encoding UTF-8) and run again") from None


def check_rgb_array(a: np.ndarray, what: str = "the array") -> None:
    """Raise :class:`ConfigError` unless ``a`` is what the API takes: uint8, (H, W, 3) RGB or (H, W) grey.

    Why not convert: the value range of other types is a guess (12-bit data
    in an int32 array would be clipped to white and called "too bright", a
    float array in 0..1 or 0..255 can be either), and a wrongly shaped array
    is the caller's bug, not a bad photograph to list with a retake advice.
    """
    if a.dtype != np.uint8:
        raise ConfigError(f"{what} is {a.dtype}; expected uint8 RGB (0-255): convert it yourself "
                          f"({_conversion_hint(a.dtype)}), or pass the image file")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ConfigError(f"{what} has shape {a.shape}; expected (H, W, 3) RGB or (H, W) greyscale: drop an alpha "
                          "channel with a[..., :3], move channels last with a.transpose(1, 2, 0)")


def _conversion_hint(dtype: np.dtype) -> str:
    """How to make uint8 of an array of ``dtype``, for each value range it commonly holds (the caller knows which)."""
    if np.issubdtype(dtype, np.floating):
        return ("floats in 0..1: (a * 255).round().astype(np.uint8); floats in 0..255: "
                "a.round().clip(0, 255).astype(np.uint8)")
    if dtype == np.uint16:
        return "16-bit data: (a >> 8).astype(np.uint8); 12-bit data in 16-bit words: (a >> 4).astype(np.uint8)"
    if dtype == np.bool_:
        return "a mask: (a * 255).astype(np.uint8)"
    if np.issubdtype(dtype, np.integer):
        return ("values in 0..255: a.clip(0, 255).astype(np.uint8); 12-bit values (0..4095): "
                "(a >> 4).astype(np.uint8); 16-bit values: (a >> 8).astype(np.uint8)")
    return "its pixels as numbers 0-255 in a uint8 array"


def _a(word: str) -> str:
    """``word`` with its indefinite article ("an int", "a list"), by its first letter."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"  # u: "a uint8", "a UUID"


#: An image held in memory (encoded bytes or decoded pixels), not a path to one.
IMAGE_DATA = (bytes, bytearray, memoryview, np.ndarray)


def one_or_many(inputs: Any) -> Iterable[Any]:
    """``inputs`` as an iterable of inputs: a single path, bytes or array is one input, not a sequence of them.

    A path string iterated is its characters, and an absolute one starts with ``/``: screening that walked
    the whole file system.
    """
    if isinstance(inputs, (str, os.PathLike, InputItem, *IMAGE_DATA)):
        return [inputs]
    return inputs


def as_items(things: Iterable[Any], *, single: bool = False) -> Iterator[InputItem]:
    """Accept InputItems, paths, bytes or RGB arrays (what the Python API takes); a single one is one input.

    ``single``: ``things`` is the one image of :meth:`Screener.screen`, so a bad array is "the array", not
    "array 0" (a number that only means something among ``screen_many``'s inputs).
    """
    for i, t in enumerate(one_or_many(things)):
        if isinstance(t, InputItem):
            yield t
        elif isinstance(t, (bytes, bytearray, memoryview)):
            yield item_for_data(bytes(t), f"bytes{i}")
        elif isinstance(t, np.ndarray):
            check_rgb_array(t, "the array" if single else f"array {i}")
            # A copy, taken now: the pipeline reads ahead, and a camera driver that refills one buffer for every
            # frame had later frames' pixels screened under earlier frames' keys (a review, session 51).
            yield item_for_data(np.array(t, copy=True), f"array{i}")
        elif isinstance(t, (str, os.PathLike)):
            yield from iter_inputs([t])
        else:
            hint = (" (a PIL image: numpy.asarray(image.convert('RGB')))"
                    if hasattr(t, "convert") and hasattr(t, "mode") else "")
            raise ConfigError(f"cannot screen {_a(type(t).__name__)}; pass a path, image bytes or an RGB uint8 "
                              f"array{hint}")
