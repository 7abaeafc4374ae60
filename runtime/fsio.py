"""Atomic file writes, content hashes, and reading the text files people write.

A crash or power loss never leaves a half-written output: everything is written
to a temporary file in the same folder, flushed, then renamed over the target.

Modes: ``tempfile.mkstemp``/``mkdtemp`` create owner-only entries (0600/0700)
and ``os.replace`` keeps them, which would make every output unreadable to
other accounts (a service account screening a copied bundle, staff reading a
report). So a new file gets the mode a plain ``open(path, "w")`` would give
(``0o666 & ~umask``), a file that replaces another keeps the replaced file's
permission bits, and folders built in a temporary place get ``0o777 & ~umask``
(:func:`new_file_mode`, :func:`new_dir_mode`, :func:`set_mode`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from uopsl.runtime.errors import ConfigError, DataError, UopslError

log = logging.getLogger(__name__)


_UMASK_LOCK = threading.Lock()

#: What ``numpy.load`` raises for a cache file that cannot be used: unreadable (OSError), empty
#: (EOFError), cut short or not numpy's (ValueError; a ``.npz`` cut short: zipfile.BadZipFile), or
#: without the arrays asked for (KeyError). Callers treat such a file as unreadable: a cache is made again,
#: a file the user named is refused with what to do.
NUMPY_FILE_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def user_cache_dir() -> Path:
    """The one folder every uopsl cache lives under (timing caches, TensorRT EP engines, calibration sets, text
    embeddings, image signatures, CPU measurements).

    ``$UOPSL_CACHE_DIR`` when set (a device with a read-only home points it at writable storage), else the
    older ``$UOPSL_CACHE`` (the text-embedding cache's variable, still honoured), else
    ``$XDG_CACHE_HOME/uopsl``, else ``~/.cache/uopsl``.
    """
    for var in ("UOPSL_CACHE_DIR", "UOPSL_CACHE"):
        value = os.environ.get(var)
        if value:
            return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uopsl"

def current_umask() -> int:
    """Return the process umask (read afresh on every call; nothing is cached).

    Linux reports it in ``/proc/self/status`` (since 4.7), which reads it
    without changing it. Elsewhere POSIX only offers ``umask()``, which sets the
    mask while returning the old one: this sets it and restores it at once.
    The temporary value is the most restrictive one (0o077), not 0, so a file
    another thread creates in that instant is at worst owner-only (never world
    writable), and a lock keeps two callers here from each reading the other's
    temporary value and "restoring" it for good.
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if fields[:1] == ["Umask:"] and len(fields) > 1:
                    return int(fields[1], 8) & 0o777
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask & 0o777


def new_file_mode(target: str | os.PathLike[str] | None = None) -> int:
    """Permission bits for a file about to be written at ``target``.

    The bits of the file already there (so a ``chmod`` a user made survives a
    rewrite), else those ``open(target, "w")`` would give: ``0o666 & ~umask``.
    """
    if target is not None:
        with contextlib.suppress(OSError, ValueError):
            st = os.stat(target)
            if stat.S_ISREG(st.st_mode):
                return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~current_umask()


def new_dir_mode() -> int:
    """Permission bits ``os.mkdir`` would give a new folder: ``0o777 & ~umask``.

    For folders made with ``tempfile.mkdtemp`` (0700) and filled before they
    replace a target: a replaced folder's old mode is not kept, so a bundle
    left owner-only by an older version becomes readable when re-exported.
    """
    return 0o777 & ~current_umask()


def set_mode(path: str | os.PathLike[str], mode: int, fd: int | None = None) -> bool:
    """Set ``path``'s permission bits (through ``fd`` when given and ``os.fchmod`` exists); never raises.

    Returns whether it worked. Where chmod means little (Windows only toggles
    read-only) or the file system refuses it, the file keeps the mode it has.
    """
    fchmod = getattr(os, "fchmod", None)
    if fd is not None and fchmod is not None:
        try:
            fchmod(fd, mode)
            return True
        except (OSError, NotImplementedError, ValueError):
            pass
    try:
        os.chmod(path, mode)
        return True
    except (OSError, NotImplementedError, ValueError):
        return False


class Stage:
    """A temporary sibling of a target file, put in the target's place only by :meth:`commit`.

    Why not :func:`atomic_open` alone: some writers must check something after
    the bytes are written and before the target changes (``add_file`` takes the
    bundle's manifest lock and checks its checksum first), and some write by
    path rather than through a file object (``torch.onnx.export``). Made by
    :func:`staging`, which removes the temporary unless it was committed.
    """

    def __init__(self, target: Path, path: Path, fd: int) -> None:
        self.target = target
        self.path = path
        self._fd: int | None = fd
        self._sealed = False
        self.committed = False

    @contextlib.contextmanager
    def writer(self, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
        """The temporary, open for writing (once); flushed, given its mode and fsynced when the block ends."""
        if self._fd is None:
            raise ValueError(f"{self.path} was already opened or closed; a stage is written once")
        fd, self._fd = self._fd, None
        try:
            with os.fdopen(fd, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                self._seal(fh.fileno())
        except OSError as exc:
            # write(), flush() and fsync() name no file ("No space left on device" alone): the target is named,
            # for the errors of writing only (a read error of the caller's own source keeps its words).
            if exc.filename is None and exc.errno in WRITE_ERRNOS:
                exc.filename = os.fspath(self.target)
            raise

    def _seal(self, fd: int) -> None:
        # mkstemp's 0600 would hide the file from other accounts; the fsync makes the rename durable.
        set_mode(self.path, new_file_mode(self.target), fd)
        os.fsync(fd)
        self._sealed = True

    def close(self) -> None:
        """Close the temporary's own descriptor (a writer by path needs no second handle open)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def commit(self) -> None:
        """Put the temporary in the target's place: mode and fsync first when a writer by path wrote it."""
        self.close()
        if not self._sealed:
            with open(self.path, "r+b") as fh:  # r+: Windows flushes only a handle open for writing
                self._seal(fh.fileno())
        replace_patiently(self.path, self.target)
        self.committed = True


#: The errors of writing to a disk: a full disk or quota, a file too large, a read-only filesystem.
WRITE_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG, errno.EROFS)
                         if e is not None)


@contextlib.contextmanager
def staging(path: str | os.PathLike[str]) -> Iterator[Stage]:
    """A :class:`Stage` for ``path`` (its folder made if missing); removed on leaving unless committed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    stage = Stage(target, Path(tmp), fd)
    try:
        yield stage
    finally:
        stage.close()
        if not stage.committed:
            with contextlib.suppress(OSError):  # (a read-only leftover must not hide the real error)
                os.unlink(tmp)


@contextlib.contextmanager
def staged_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` for a writer by path, with no handle of ours open on it (Windows refuses
    to replace or rename a file another handle holds). Removed on leaving unless moved away (``add_file``'s
    ``move=True`` takes it into a bundle)."""
    with staging(path) as stage:
        stage.close()
        yield stage.path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    The result has ``path``'s old permission bits when it replaces a file, else
    the mode ``open(path, "w")`` would give (see :func:`new_file_mode`).
    """
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open is for writing; got mode {mode!r}")
    with staging(path) as stage:
        with stage.writer(mode.replace("x", "w"), **kwargs) as fh:
            yield fh
        stage.commit()


#: How long :func:`replace_patiently` keeps trying, and the pause between tries (seconds).
REPLACE_RETRY_S = 1.0
_REPLACE_PAUSE_S = 0.2


def replace_patiently(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``os.replace``, tried again for about a second when the target is busy.

    Why: on Windows a file another program holds open (Excel on results.csv;
    an antivirus scanner, the search indexer or OneDrive for a moment after
    each write) cannot be replaced ("PermissionError: [WinError 5/32]"); pip
    retries the same way. A target with the read-only attribute (which Windows,
    unlike POSIX, will not replace) gets its write bit back once. Raises the last
    ``PermissionError`` if the target stays busy.
    """
    deadline = time.monotonic() + REPLACE_RETRY_S
    cleared = False
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if sys.platform == "win32" and not cleared and _read_only(dst):
                cleared = True
                with contextlib.suppress(OSError):
                    os.chmod(dst, stat.S_IWRITE | stat.S_IREAD)
                continue
            if time.monotonic() >= deadline:
                raise
            time.sleep(_REPLACE_PAUSE_S)


def sync_tree(folder: str | os.PathLike[str]) -> None:
    """fsync every regular file under ``folder``, then each folder (POSIX), deepest first.

    Why: a folder filled in a temporary place and renamed into view (a bundle,
    a Triton repository) is durable only if its files' data reached the disk
    before the rename; otherwise a power cut can leave the new name holding
    zero-length files (ext4 flushes data on a rename over a *file*, not on a
    folder's rename).
    """
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                # Windows flushes only a handle open for writing; POSIX syncs a read-only file through any handle.
                with open(path, "r+b" if os.name == "nt" else "rb") as fh:
                    os.fsync(fh.fileno())
        sync_folder(root)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync ``folder``'s entries (POSIX; Windows cannot open a folder for fsync): the renames made in it last
    through a power cut (a bundle update's file and manifest; results are rebuilt and need not)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # CIFS on older kernels, WSL's drvfs, Ceph and some FUSE mounts cannot sync a folder (EINVAL): the
        # renames are done, and failing the command over it would report an update that happened as failed.
        if exc.errno not in _FOLDER_SYNC_UNSUPPORTED:
            raise
        log.debug("%s: this filesystem cannot sync a folder (%s); its renames are not forced to disk", folder, exc)
    finally:
        os.close(fd)


_FOLDER_SYNC_UNSUPPORTED = {e for e in (errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", None),
                                        errno.EBADF, errno.EISDIR, errno.EACCES) if e is not None}


def replace_folder(filled: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the folder ``filled`` (a sibling of ``target``) in ``target``'s place, its contents synced first.

    An existing ``target`` is moved aside to ``.NAME.old`` and removed once the
    new folder is in place; a crash between the two renames leaves the old one
    there under that name.
    """
    sync_tree(filled)
    target = Path(target)
    if not target.exists():
        os.replace(filled, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(filled, target)
    shutil.rmtree(old, ignore_errors=True)


def _read_only(path: str | os.PathLike[str]) -> bool:
    try:
        return not os.stat(path).st_mode & stat.S_IWRITE
    except OSError:
        return False


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8", newline: str | None = None) -> None:
    """Write ``text`` atomically. ``encoding="utf-8-sig"`` adds the BOM Excel on Windows needs to read UTF-8.
    ``newline``: as ``open``'s (``""`` writes the line ends in ``text`` as they are, where Windows would turn
    each ``"\n"`` into ``"\r\n"``: a CSV that already ends its lines in CRLF)."""
    with atomic_open(path, "w", encoding=encoding, newline=newline) as fh:
        fh.write(text)


def read_user_text(path: str | os.PathLike[str], what: str, error: type[UopslError] = DataError) -> str:
    """A text file a person wrote (a CSV, an image list, a class file): UTF-8, with or without a byte-order mark.

    Notepad and Excel ("CSV UTF-8") on Windows start UTF-8 files with a BOM,
    which would otherwise become part of the first column name or make a JSON
    file invalid. Anything else (a legacy code page, UTF-16) is one ``error``
    naming the file, the byte and what to do; so is a file that cannot be read.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{p}: {what} not found; check the path") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, expected the {what} (a file)") from None
    except OSError as exc:
        raise error(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: the {what} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                    "(Excel: CSV UTF-8) and try again") from None


def readable_text(text: str) -> str:
    """``text`` as valid Unicode, for CSV, JSON lines, HTML and messages: the one rendering of a file name.

    Why: a file name written by an old camera, a FAT stick or a zip made on Windows can hold bytes that are
    not UTF-8; Python keeps them as lone surrogates, which no UTF-8 file can hold. They become U+FFFD, in the
    results and the report alike (a clinic matches the two). Not a guessed code page: a wrong guess would
    show a patient's name with another letter, where U+FFFD shows that a letter is unknown. The lossless
    form stays in a row's ``key``.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made
        return text.encode("utf-8", "replace").decode("utf-8")
    return raw.decode("utf-8", "replace")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """How write_json writes what JSON has no type for: numpy scalars and arrays as numbers and lists, paths as text
    (callers that hash a document before writing it convert it with this first)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Hex characters of the toolkit's short content digest, the first 8 bytes of a sha256: how result rows name
#: their thumbnails and heatmaps, checkpoints record their photographs (``images_seen.json``) and calibration
#: tables their images, so that one digest compares with all of them.
SHORT_DIGEST_CHARS = 16


def short_sha256(data: bytes) -> str:
    """The first :data:`SHORT_DIGEST_CHARS` hex characters of ``data``'s sha256."""
    return sha256_bytes(data)[:SHORT_DIGEST_CHARS]


def is_temporary_name(name: str, target: str | None = None) -> bool:
    """Whether ``name`` is a temporary :func:`staging` (so :func:`atomic_open`) makes: ``.NAME.XXXX.tmp``, of
    ``target`` when given."""
    return name.endswith(".tmp") and name.startswith(f".{target}." if target is not None else ".")


def temporary_target(name: str) -> str | None:
    """The file a temporary :func:`staging` makes is for: ``.NAME.XXXX.tmp`` -> ``NAME`` (mkstemp's random part
    has no dot); None for a name that is no such temporary."""
    if not is_temporary_name(name):
        return None
    parts = name[1:].rsplit(".", 2)
    return parts[0] if len(parts) == 3 and parts[0] else None


def remove_stale_temporaries(folder: str | os.PathLike[str], *, target: str | None = None,
                             of: Callable[[str], bool] | None = None, idle_s: float | None = None) -> int:
    """Delete the ``.NAME.XXXX.tmp`` files :func:`atomic_open` leaves when a process is killed mid-write.

    Why: ``kill -9`` or a power loss between ``mkstemp`` and ``os.replace``
    leaves a hidden temporary that nothing else ever removes. Call it only
    while holding the folder's :class:`FolderLock`, so no live writer's
    temporary is taken; or, where writers stage without that lock, with
    ``idle_s``: only temporaries unchanged for that long go (a live copy
    keeps writing). ``target``: only that file's temporaries; ``of``: only
    those of the files whose name it accepts (a command's own files, in a
    folder that may hold other programs'). Returns how many were removed;
    never raises.
    """
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for e in entries:
        if is_temporary_name(e.name, target) and (of is None or of(temporary_target(e.name) or "")):
            try:
                if e.is_file(follow_symlinks=False) and (
                        idle_s is None or now - e.stat(follow_symlinks=False).st_mtime >= idle_s):
                    os.unlink(e.path)
                    n += 1
            except OSError as exc:
                log.debug("cannot remove stale temporary %s: %s", e.path, exc)
    return n


def check_output_file(path: str | os.PathLike[str], option: str, example: str = "out.json") -> None:
    """Refuse (:class:`ConfigError`) an output file path that cannot be written, before the work that fills it.

    Why: a JSON report written after minutes of timing or of reading photographs failed only then, naming
    the temporary file of the atomic write. Checked: the path is not a folder, its nearest existing folder is
    a folder, and a file can be created there (a probe file, removed at once: permission bits alone do not
    say, e.g. on a read-only mount or as root). Missing folders on the way are made when the file is
    written. ``option`` names the setting in the message; ``example`` is the file name a folder path is
    told to add.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {target} is a folder; give a file path such as {target / example}")
    existing = target.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {target}: {existing} is a file, so no folder can hold {target.name} there; "
                          "choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".uopsl-write-probe-")
    except OSError as exc:
        raise ConfigError(f"{option} {target}: cannot create a file in {existing} ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def is_or_holds(outer: str | os.PathLike[str], inner: str | os.PathLike[str]) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it, links resolved: what replacing or deleting ``outer``
    would take with it (the checkpoint under a mistyped --out, the folder you are in)."""
    o, i = Path(os.path.realpath(outer)), Path(os.path.realpath(inner))
    return o == i or o in i.parents


def special_entry(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is not a plain file or folder of its own, else None.

    Why: a program that writes into a folder other people can write to must not follow a symbolic link
    planted there (it would truncate or append to the file the link names), nor open a named pipe (it
    blocks) or a device. Returns e.g. ``"a symbolic link (to /etc/passwd)"``; None for a regular file, a
    folder, or nothing there. A Windows junction or other reparse point counts as a link.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & stat.FILE_ATTRIBUTE_REPARSE_POINT:
        try:
            return f"a symbolic link (to {os.readlink(path)})"
        except (OSError, ValueError):
            return "a symbolic link"
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(st.st_mode)), "not a regular file")


def open_plain(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symbolic link, a pipe or a device at ``path``: a descriptor of a regular file.

    POSIX opens with ``O_NOFOLLOW`` (a link fails in the kernel, no gap between check and open) and
    ``O_NONBLOCK`` (a named pipe does not block the open), then checks the open file with ``fstat``;
    Windows, which has no ``O_NOFOLLOW``, checks with :func:`special_entry` first. Raises ``OSError``
    (``ELOOP`` for a link, ``EINVAL`` for anything else that is not a regular file) and the open's own
    errors (``FileNotFoundError`` ...). ``mode`` is masked by the umask, as ``open`` does.
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if not nofollow:
        what = special_entry(path)
        if what is not None:
            raise OSError(errno.ELOOP, f"{what}, not a regular file", str(path))
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | nofollow | nonblock | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{special_entry(path) or 'not a regular file'}, not a regular file",
                          str(path))
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FolderLock:
    """An exclusive, non-blocking lock on a folder, held through ``<folder>/<name>`` until :meth:`release`.

    Why a kernel lock rather than an ``O_EXCL`` marker file: the operating
    system drops it when the holder dies (``kill -9``, power loss), so there is
    never a stale lock to clean up by hand. POSIX uses ``fcntl.flock``, Windows
    ``msvcrt.locking``. The file holds the owner's pid, for the message the
    next process shows. Where the file system cannot lock at all (some network
    shares), :meth:`acquire` logs a warning and goes on unlocked rather than
    refusing to work.
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = ".lock") -> None:
        self.path = Path(folder) / name
        self.holder = ""  # after a failed acquire: what the holder wrote (its pid), when readable
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock: True when taken (or already held), False when another process holds it.

        Other OS errors (the file cannot be created) propagate. The lock file
        is truncated and given this pid only once the lock is ours.
        """
        if self._fd is not None:
            return True
        for _ in range(3):
            fd = open_plain(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())  # never through a link
            try:
                state = _lock_fd(fd)
            except BaseException:
                os.close(fd)
                raise
            if state is None:
                self.holder = _owner(fd)
                os.close(fd)
                return False
            if not state or _still_named(fd, self.path):
                break
            # The holder removed the file (and perhaps its folder: see release_and_remove) between our open
            # and our lock: this lock guards nothing. Open again; a removed folder makes open fail.
            _unlock_fd(fd)
            os.close(fd)
        else:
            raise OSError(errno.EAGAIN, "the lock file kept being removed", str(self.path))
        try:
            if not state:
                log.warning("%s: this file system cannot lock files; nothing stops a second process "
                            "from writing into the same folder", self.path)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (closing the file releases it); the file stays, empty of meaning."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                _unlock_fd(fd)
            os.close(fd)

    def release_and_unlink(self) -> None:
        """Release the lock and remove its file, for a lock that should leave nothing behind.

        As in :meth:`release_and_remove`: on POSIX the file goes while the lock is still held (a waiter
        that locked the removed file sees it is gone and opens the new one, see :meth:`acquire`); Windows
        refuses to remove an open file, so there it is released first.
        """
        if self._fd is not None:
            if sys.platform == "win32":
                self.release()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.release()

    def release_and_remove(self) -> bool:
        """Release the lock and remove the folder if it holds nothing but the lock file; True if removed.

        On POSIX the file and folder go while the lock is still held, and
        :meth:`acquire` checks that the file it locked is still there, so no
        process is left holding a lock on a removed file. Windows refuses to
        remove a file another process has open, which closes the same gap.
        """
        folder = self.path.parent
        removed = False
        try:
            if self._fd is not None and {e.name for e in os.scandir(folder)} <= {self.path.name}:
                if sys.platform == "win32":
                    self.release()
                os.unlink(self.path)
                os.rmdir(folder)
                removed = True
        except OSError as exc:  # someone wrote into it meanwhile, or it went away: leave it
            log.debug("kept %s (%s)", folder, exc)
        self.release()
        return removed


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed, not replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_WIN_LOCK_OFFSET = 1 << 20  # Windows locks a byte range: lock one far beyond the pid, so others can read it


def _owner(fd: int) -> str:
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 64).decode("ascii", "replace").strip()
    return ""


def _lock_fd(fd: int) -> bool | None:
    """Lock ``fd`` exclusively without waiting: True locked, None held elsewhere, False cannot lock here."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            return None if exc.errno in (errno.EACCES, errno.EDEADLK) else False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return None if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else False
    return True


def _unlock_fd(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key(s) {dup} in one object")
    return dict(pairs)


def load_json_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate keys.

    For files a device trusts (a bundle's manifest, an engine header): a person
    reading one sees a key's first value, ``json`` keeps the last, so a
    duplicated threshold could say one thing and do another. Raises
    ``ValueError`` (as ``json`` does) and ``RecursionError`` for runaway nesting.
    """
    return json.loads(text, object_pairs_hook=_unique_keys)
