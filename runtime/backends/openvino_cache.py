"""The OpenVINO backend's compiled-model cache.

A camera or ``uopsl-screen run`` loads the model on
every start, and compiling an INT8 file is most of that load, so the compiled
model is kept in the per-user cache folder,
``<cache>/openvino`` where ``<cache>`` is ``$UOPSL_CACHE_DIR``, else
``$XDG_CACHE_HOME/uopsl``, else ``~/.cache/uopsl``
(:func:`uopsl.runtime.fsio.user_cache_dir`, shared with uopsl's other caches),
never in the bundle (checksummed, perhaps read-only). ``UOPSL_OPENVINO_CACHE=0``
(or ``off``/``false``/``no``) turns it off; so does ``cache=False``. A folder that
cannot be made or written (read-only home, full disk), or one that others can
write, leaves the cache off for that load with one INFO line saying why; the
load itself never fails for the cache's sake. Measured (session 56, 2-core
EPYC, medians of 9 loads in fresh processes, OpenVINO 2026.4,
``benchmarks/openvino_cache_load.py``): the quick demo's INT8 file 393 ->
183 ms, its FP32 file 247 -> 179 ms, a ResNet-18 at 224 px INT8 240 -> 154
ms; the ResNet-18's FP32 file gains nothing (246 -> 255 ms: it compiles in
~50 ms, and checking its 45 MB blob costs ~30 ms). A first load, which
compiles and writes the entry, takes 25-90 ms more than before.

Why it is more than OpenVINO's ``CACHE_DIR`` pointed at that folder (each
measured with OpenVINO 2026.4, session 56):

* OpenVINO does not check a blob's bytes: 16 bytes flipped in a cached blob
  loaded "from cache" and moved probabilities by up to 0.65 (the quick demo's
  INT8 file; 0.2 for the tests' tiny FP32 model). (A blob cut short or with a
  garbled header it does notice, and recompiles.) So each entry records its
  files' sha256, and a file that does not match is thrown away and the model
  compiled afresh.
* OpenVINO writes a blob under its final name while it compiles (another
  process may read it half-written), and it memory-maps the blob it loads for
  the compiled model's life, so in one shared folder there is no moment at
  which a blob can be checked and then used as checked. So OpenVINO only ever
  sees a private folder per load (``.load-*``): a hard link to the entry's
  file, checked through that link (a copy where the file system has no hard
  links), or, for a fresh compile, the blob OpenVINO writes, published by
  renaming the complete folder into place. The private folder is removed after
  the load (on POSIX the mapping outlives the name; elsewhere a later load
  sweeps it once it is an hour old and no longer open). Published files are
  never written again: OpenVINO writes blobs read-only and removes one it
  rejects before writing a new one (2026.4, measured), so a checked file stays
  as checked while it is mapped. Power loss mid-publication leaves a file whose
  sha256 fails, which is rebuilt.
* ``compile_model(path)`` keys the cache on the *path* (a model swapped at the
  same path was served the old blob), so the backend keeps compiling the
  :class:`openvino.Model` it read, which OpenVINO keys on its content (weights
  included). The entry folder is keyed again on the file's sha256, the device
  and its name, the compile config (inference precision pin and threads
  included) and OpenVINO's version, so a blob is only offered where it was made.

The cache is as trusted as the folder it is in: someone who can write it can
make this machine screen with another model whatever the bundle's signature
says. So a folder owned by another user or writable by group or others is not
used (POSIX), and devices whose cache folder others can reach should set
``UOPSL_OPENVINO_CACHE=0``. Entries unused for :data:`CACHE_MAX_AGE_DAYS` are
removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from uopsl.runtime.backends.base import cache_dir
from uopsl.runtime.fsio import sha256_file

# A child of the backend's logger: its messages read as the backend's, and one level setting covers both.
log = logging.getLogger("uopsl.runtime.backends.openvino.cache")


#: environment variable that turns the compiled-model cache off: ``0``, ``off``, ``false`` or ``no``
CACHE_ENV = "UOPSL_OPENVINO_CACHE"
_CACHE_OFF = frozenset({"0", "off", "false", "no"})
_CACHE_ON = frozenset({"", "1", "on", "true", "yes"})
#: a cache entry not used for this many days is removed when a new entry is written
CACHE_MAX_AGE_DAYS = 60
#: a private load folder older than this is a leftover (a crashed load; on Windows, a file a process still maps)
_STALE_LOAD_S = 3600.0
_ENTRY_FILE = "entry.json"
_ENTRY_FORMAT = 1
_LOAD_PREFIX = ".load-"
#: the file names an entry may list (OpenVINO's are ``<decimal hash>.blob``): no separators, nothing hidden
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")


def openvino_cache_dir() -> Path:
    """Where compiled OpenVINO models are cached: ``openvino`` in the user cache folder (module docstring).

    Under :func:`uopsl.runtime.fsio.user_cache_dir` like every other uopsl cache, so ``UOPSL_CACHE_DIR`` moves
    them all at once (a device with a read-only home points it at writable storage).
    """
    return cache_dir() / "openvino"


def openvino_cache_enabled() -> bool:
    """Whether ``UOPSL_OPENVINO_CACHE`` leaves the compiled-model cache on (unset: on).

    A value that is neither on nor off keeps it on with a warning: a mistyped setting should not stop a
    screening run, and the cache never changes results (module docstring).
    """
    value = os.environ.get(CACHE_ENV, "").strip().lower()
    if value in _CACHE_OFF:
        return False
    if value not in _CACHE_ON:
        log.warning("%s=%r is not understood (expected 0/off/false/no to turn the OpenVINO cache off, or "
                    "1/on/true/yes); the cache stays on", CACHE_ENV, os.environ.get(CACHE_ENV))
    return True


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst`` and return the sha256 of the bytes written (one pass over the file)."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while block := fin.read(1 << 20):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _link_hashing(src: Path, dst: Path) -> str:
    """Hard-link ``src`` as the new name ``dst`` and return the sha256 of what ``dst`` now names; a copy where
    the file system has no hard links (FAT, some network shares).

    A link, not a copy: copying a ResNet-18's 45 MB FP32 blob cost 50 ms on the 2-core box, more than
    compiling it saved. Checking through ``dst`` checks the very file OpenVINO then maps.
    """
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError:
        return _copy_hashing(src, dst)
    return sha256_file(dst)


def _remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a cache folder, best effort. OpenVINO writes its blobs read-only (0o440), which Windows will not
    delete until the read-only flag is cleared (POSIX deletes by the folder's permissions): cleared first."""
    if os.name == "nt":
        for folder, _dirs, names in os.walk(path):
            for name in names:
                try:
                    os.chmod(os.path.join(folder, name), stat.S_IREAD | stat.S_IWRITE)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


def _unusable(root: Path) -> str | None:
    """Why ``root`` cannot hold the cache, after creating it (None: it can).

    Another user's folder, or one group or others can write, is refused (POSIX): whoever can write the cache
    decides what this machine computes, whatever the bundle's signature says.
    """
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = root.stat()
    except OSError as exc:
        return f"cannot create {root} ({exc})"
    if hasattr(os, "geteuid"):
        if st.st_uid != os.geteuid():
            return f"{root} belongs to another user (uid {st.st_uid}, this process runs as {os.geteuid()})"
        if st.st_mode & 0o022:
            return f"{root} is writable by group or others (mode {st.st_mode & 0o777:o}; chmod 700 it)"
    return None


def _sweep(root: Path, *, entries: bool) -> None:
    """Remove what no load will use: private load folders older than an hour and, with ``entries``, entries
    not used for :data:`CACHE_MAX_AGE_DAYS` (a ``.load-*`` folder still in use elsewhere survives: it is young,
    and on Windows a mapped file cannot be removed). Best effort: nothing here stops a load."""
    now = time.time()
    try:
        children = list(os.scandir(root))
    except OSError:
        return
    for child in children:
        try:
            if child.name.startswith(_LOAD_PREFIX):
                if now - child.stat(follow_symlinks=False).st_mtime > _STALE_LOAD_S:
                    _remove_tree(child.path)
            elif entries and _ENTRY_NAME.fullmatch(child.name):
                if now - os.stat(os.path.join(child.path, _ENTRY_FILE)).st_mtime > CACHE_MAX_AGE_DAYS * 86400:
                    _remove_tree(child.path)
        except OSError:
            continue


class CacheSlot:
    """One load's use of the cache: the entry it may reuse (``entry``) and the private folder OpenVINO reads
    and writes during the load (``private``; module docstring says why OpenVINO never sees the entry itself).

    ``key``: what the entry is keyed on (JSON; written into the entry for whoever reads the folder).
    """

    def __init__(self, root: Path, key: dict[str, Any], private: Path) -> None:
        self.root = root
        self.key = key
        self.entry = root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.private = private
        #: name -> sha256 of the verified entry files linked into ``private`` (empty: nothing reusable)
        self.staged: dict[str, str] = {}

    @classmethod
    def open(cls, root: Path, key: dict[str, Any]) -> CacheSlot | None:
        """The slot for ``key`` with the entry's files linked in when they check out; None (one INFO line
        saying why) when the cache folder cannot be used."""
        why = _unusable(root)
        if why is None:
            _sweep(root, entries=False)
            try:
                private = Path(tempfile.mkdtemp(prefix=_LOAD_PREFIX, dir=root))
            except OSError as exc:
                why = f"cannot write in {root} ({exc})"
        if why is not None:
            log.info("OpenVINO compiled-model cache not used: %s; compiling without it (set UOPSL_CACHE_DIR to a "
                     "folder only this user can write, or %s=0 to stop trying)", why, CACHE_ENV)
            return None
        slot = cls(root, key, private)
        slot._stage()
        return slot

    def discard(self, why: str) -> None:
        """Remove the entry (damaged, or not one OpenVINO takes), saying why in one INFO line."""
        log.info("OpenVINO cache entry %s not used: %s; compiling afresh and caching the result", self.entry.name,
                 why)
        _remove_tree(self.entry)

    def _stage(self) -> None:
        """Link the entry's files into the private folder, each checked against the sha256 the entry records.
        A damaged entry is removed; one that cannot be read just now (disk full, removed meanwhile) is left."""
        try:
            meta = json.loads((self.entry / _ENTRY_FILE).read_text("utf-8"))
        except FileNotFoundError:
            if self.entry.exists():  # published entries always hold entry.json: a removal cut short
                self.discard(f"no {_ENTRY_FILE}")
            return
        except (OSError, ValueError) as exc:
            self.discard(f"unreadable {_ENTRY_FILE} ({exc})")
            return
        files = meta.get("files") if isinstance(meta, dict) and meta.get("format") == _ENTRY_FORMAT else None
        if not (isinstance(files, dict) and files and all(
                isinstance(n, str) and _FILE_NAME.fullmatch(n) and n != _ENTRY_FILE and isinstance(d, str)
                for n, d in files.items())):
            self.discard(f"{_ENTRY_FILE} is not one this version writes")
            return
        staged: dict[str, str] = {}
        for name, digest in sorted(files.items()):
            try:
                got = _link_hashing(self.entry / name, self.private / name)
            except FileNotFoundError:
                self._clear_private()
                if self.entry.exists():
                    self.discard(f"{name} is missing")
                return
            except OSError as exc:  # a copy that does not fit (disk full), a read error: compile without it
                log.info("OpenVINO cache entry %s cannot be read for this load (%s); compiling", self.entry.name, exc)
                self._clear_private()
                return
            if got != digest:
                self._clear_private()
                self.discard(f"{name} is damaged (its sha256 is not the one recorded)")
                return
            staged[name] = got
        self.staged = staged
        try:
            os.utime(self.entry / _ENTRY_FILE)  # last used, for the age sweep
        except OSError:
            pass

    def _clear_private(self) -> None:
        for f in list(self.private.iterdir()) if self.private.is_dir() else ():
            try:
                f.unlink()
            except OSError:
                pass

    def finish(self, hit: bool) -> None:
        """After a load whose model file checked out: publish what a fresh compile wrote, unless the entry
        was used (``hit``). Best effort: the compiled model is already loaded."""
        if hit:
            return
        if self.staged:
            self.discard("OpenVINO did not take its blob (another OpenVINO build or CPU, or another model)")
        try:
            names = sorted(f.name for f in self.private.iterdir() if f.is_file())
            files = {n: sha256_file(self.private / n) for n in names}
            for n, d in self.staged.items():  # the entry's files, which OpenVINO did not take
                if files.get(n) == d:
                    (self.private / n).unlink()
                    del files[n]
            if not files:
                log.debug("OpenVINO wrote no cache file (device without caching, or the disk is full)")
                return
            if not all(_FILE_NAME.fullmatch(n) and n != _ENTRY_FILE for n in files):
                log.debug("OpenVINO cache files %s not cached: unexpected names", sorted(files))
                return
            meta = {"format": _ENTRY_FORMAT, "files": files, "key": self.key,
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (self.private / _ENTRY_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), "utf-8")
            # One rename publishes a complete entry; it fails where another load published first.
            os.rename(self.private, self.entry)
        except OSError as exc:
            log.debug("compiled model not cached (%s): %s", self.entry, exc)
            return
        log.debug("compiled model cached in %s", self.entry)
        _sweep(self.root, entries=True)

    def close(self) -> None:
        """Remove the private folder (on POSIX a blob OpenVINO maps stays readable to it; elsewhere the sweep
        removes it once no process has it open)."""
        _remove_tree(self.private)
