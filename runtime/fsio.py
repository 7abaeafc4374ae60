"""Atomic file writes and content hashes.

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
import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


_UMASK_LOCK = threading.Lock()


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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    The result has ``path``'s old permission bits when it replaces a file, else
    the mode ``open(path, "w")`` would give (see :func:`new_file_mode`).
    """
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open is for writing; got mode {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode.replace("x", "w"), **kwargs) as fh:
            yield fh
            fh.flush()
            set_mode(tmp, new_file_mode(target), fh.fileno())
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in reports; keep json.dumps total.
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
