"""The key a results folder resumes by: ``path|size|mtime_ns`` for a file (``path|missing`` once it is gone),
``sha1:<hex>`` for an in-memory image (:func:`uopsl.runtime.inputs.item_for_data`).

Why a module of its own: :mod:`uopsl.runtime.inputs` gives each input its key and :mod:`uopsl.runtime.results`
reads keys back (which photographs are done, which one moved or was replaced). inputs imports results, so the
key's format, made and read, lives here, below both.
"""

from __future__ import annotations

import os


def file_key(path: str | os.PathLike[str]) -> str:
    """Resolved path + size + mtime (ns): a new or replaced file gets a new key.

    Resolved (symbolic links, ``..`` and ``.`` removed) so the same photograph
    named through ``./a/../a/x.jpg`` or a linked folder is one input, screened
    once. ``os.path.realpath`` rather than ``Path.resolve``: it never raises on
    a symbolic-link loop (Python 3.10 raises RuntimeError there).
    """
    try:
        p = os.path.realpath(os.fspath(path))
    except (OSError, ValueError):  # a link it may not read (/proc/1/cwd), a NUL byte: the path as given
        p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return f"{p}|missing"
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def key_path(key: str) -> str:
    """The path part of a key ``path|size|mtime_ns`` or ``path|missing`` (paths may hold ``|``); "" for in-memory."""
    if key.startswith("sha1:"):
        return ""
    if key.endswith("|missing"):
        return key[: -len("|missing")]
    parts = key.rsplit("|", 2)
    return parts[0] if len(parts) == 3 else key


def key_size(key: str) -> int | None:
    """The size part of a key; None for a missing file or an in-memory input."""
    parts = key.rsplit("|", 2)
    if len(parts) != 3 or key.startswith("sha1:"):
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None
