"""Watch a folder a fundus camera writes into and screen each new photograph once it is complete.

Cameras and network shares write files progressively, so a file is taken only
when its size and modification time have stayed the same for ``settle_ms``
(with 0, a new file at once: a camera that renames finished photographs into place).
An empty file is usually a write that has not started yet, so it must stay
empty ten times as long; then it is taken anyway, and its row says "file is
empty", so a camera write that failed is not invisible. Hidden and temporary
names (``.x.jpg``, ``x.jpg.part``) are never taken: only files with an image suffix count, and DICOM
files named the way DICOM media and PACS exports name them (no suffix, or an instance UID), which are
recognised by their first bytes.
The output folder is never watched, even inside the watched folder (its
thumbnails would otherwise be screened, and theirs, without end). Polling (no
inotify) keeps it portable to network shares and Windows. A file rewritten
later gets a new key (size, mtime) and is screened again; the outputs keep its
latest row.

A drop folder grows for months, so a poll does not look at every file. It
reads each folder's modification time and lists again only the folders whose
time changed (a file created, removed or renamed in it), and a folder that
changed in the last 3 s at every poll (a second file created in the same
timestamp tick would not move its time again: 2 s on FAT, a few ms on Linux
before 6.13); it then reads the size and time of the files of the folders it
listed and of those not yet settled. Every ``rescan_s`` it lists every folder
and looks at every file: a photograph rewritten in place, which changes no
folder, is seen then (and at once in the ``rescan_s`` after it was taken: a
copy that paused and went on), as is a new one on a file system whose folder
times do not move (some network shares, FAT's root folder), or in a folder
that could not be listed before. With more than ``check_all_up_to`` folders
(one per patient, kept for years), folders unchanged for an hour are left to
that full check too.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from uopsl.runtime.api import EARLIER_FAILED_KEPT, RunSummary, Screener, stale_outputs_set_aside
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.pipeline import ScreenResult
from uopsl.runtime.report import local_day
from uopsl.runtime.input_keys import key_path
from uopsl.runtime.inputs import WalkState, folder_ident, is_output_folder, list_folder, output_folder_named
from uopsl.runtime.results import FINAL_STATUSES, ResultStore, is_final

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchConfig:
    """settle_ms: how long size+mtime must stay unchanged (0: a new file is taken when first seen, for a camera
    that renames finished photographs into place). poll_s: folder scan interval (a poll comes sooner when a
    file's settle time ends before it).
    max_images: stop after screening this many new images (None: never). Photographs
    already in the output folder (skipped, or found under a new path) do not
    count: the watch goes on until this many were screened now.
    timeout_s: stop after this many seconds (None: never; Ctrl-C stops).
    refresh_s: rewrite results.csv/report.html at most this often while watching; when a rewrite takes
        longer than a tenth of that (a folder of 10^5 photographs: seconds), the next waits ten times
        as long as it took (:func:`refresh_gap`), so rewriting never takes more than about a tenth of
        the time: the rows themselves are in results.jsonl as soon as each batch is screened.
    rescan_s: walk the whole folder tree at least this often (see the module doc).
    """

    settle_ms: int = 1000
    poll_s: float = 0.5
    max_images: int | None = None
    timeout_s: float | None = None
    refresh_s: float = 10.0
    rescan_s: float = 30.0

    def __post_init__(self) -> None:
        timed = {"settle_ms": self.settle_ms, "poll_s": self.poll_s, "refresh_s": self.refresh_s,
                 "rescan_s": self.rescan_s, "timeout_s": 0.0 if self.timeout_s is None else self.timeout_s}
        for name, value in timed.items():
            if not math.isfinite(value):  # NaN passed every comparison below: --timeout nan watched for ever
                raise ConfigError(f"{name} must be a finite number, got {value}"
                                  + (" (leave timeout_s at None to watch until stopped)" if name == "timeout_s" else ""))
        if self.timeout_s is not None and self.timeout_s < 0:
            raise ConfigError(f"timeout_s must be >= 0 or None, got {self.timeout_s}")
        if self.settle_ms < 0 or self.poll_s <= 0 or self.refresh_s < 0 or self.rescan_s < 0:
            raise ConfigError(
                f"settle_ms >= 0, poll_s > 0, refresh_s >= 0 and rescan_s >= 0 expected, got {self.settle_ms}, "
                f"{self.poll_s}, {self.refresh_s}, {self.rescan_s}"
            )
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {self.max_images}")


@dataclass
class _Listing:
    """One folder as last listed: its signature then, when it was listed, and its entries."""

    sig: tuple[int, int] | None  # (st_mtime_ns, st_ino) read before listing; None when it could not be listed
    changed_at: float  # StableFiles' clock when its signature last changed (or it was first seen)
    files: list[Path]
    folders: list[Path]
    #: The folder's identity when listed (:func:`folder_ident`): a later walk that keeps this listing marks it
    #: visited, so a link to it found in the same walk is not listed as a folder of its own (None: not listed).
    ident: tuple[int, int] | str | None = None


class StableFiles:
    """Tracks files in a folder and reports those whose size and mtime have settled.

    exclude: folders never looked into (the output folder). empty_settle_ms:
    how long an empty file must stay empty before it is reported (default ten
    times ``settle_ms``, at least one second). rescan_s: look at every folder
    and file at least this often; in between, only at folders (their times)
    and at files not yet settled (module doc). check_all_up_to: up to this
    many folders, every folder's time is read at every poll; beyond it (a
    folder per patient, for years), only those changed in the last ``hot_s``
    seconds, the others at the full check. take_new_at_once: with ``settle_ms`` 0, a
    file not known before is taken at its first sighting (:func:`watch_folder` sets it);
    without it, size and mtime must also be the same at a second sighting.
    """

    def __init__(self, folder: Path, settle_ms: int, clock: Callable[[], float] = time.monotonic, *,
                 exclude: Sequence[str | os.PathLike[str]] = (), empty_settle_ms: int | None = None,
                 rescan_s: float = 30.0, hot_s: float = 3600.0, check_all_up_to: int = 2000,
                 take_new_at_once: bool = False) -> None:
        self.folder = folder
        self.settle_s = settle_ms / 1000.0
        self.empty_settle_s = (empty_settle_ms / 1000.0 if empty_settle_ms is not None
                               else max(10 * self.settle_s, 1.0))
        self.clock = clock
        self.exclude = tuple(exclude)
        self.rescan_s = rescan_s
        self.hot_s = hot_s
        self.check_all_up_to = check_all_up_to
        self.take_new_at_once = take_new_at_once
        self._state: dict[Path, tuple[int, int, float]] = {}
        self._taken: dict[Path, tuple[int, int]] = {}
        # When each was taken: for rescan_s after that it is checked at every poll, since a copy that
        # paused longer than settle_ms (a half-copied photograph, screened as truncated) goes on soon.
        self._taken_at: dict[Path, float] = {}
        # Files whose screening failed for a reason outside their content (a lock, a failed inference):
        # taken again once this time has passed, with a doubling wait (see retry_later).
        self._retry_at: dict[Path, float] = {}
        self._retries: dict[Path, int] = {}
        # Results name files by their real path (a relative or linked watch folder lists them otherwise).
        self._by_real: dict[str, Path] = {}
        self._said: set[str] = set()  # warnings already given (a folder that cannot be listed: once, not every poll)
        self._sniffed: dict[str, tuple[int, int, int, bool]] = {}  # DICOM media files found by content (WalkState)
        self._listings: dict[str, _Listing] = {}
        self._root = os.path.normcase(os.path.realpath(folder))
        self._watch: list[Path] = []  # files looked at between full checks (not yet taken, or taken lately)
        self._checked_at: float | None = None  # last full check (every folder and file)
        self.listings = 0  # how many folder listings were made (for tests and benchmarks)

    def poll(self, limit: int | None = None) -> list[Path]:
        """Files that are complete and not yet returned in their current version.

        limit: return at most this many; the others stay untaken and come in
        a later poll (a file is marked taken only when returned).
        """
        now = self.clock()
        full = self._checked_at is None or now - self._checked_at >= self.rescan_s
        files: list[Path] = []
        new: list[Path] = []
        seen: set[str] = set()
        walk = WalkState(exclude=self.exclude, said=self._said, sniffed=self._sniffed)
        self._scan(self.folder, walk, now, full, files, new, seen)
        for folder in set(self._listings) - seen:
            del self._listings[folder]
        if full:  # every folder was listed: what was read of files no longer there is dropped
            self._sniffed = {p: v for p, v in self._sniffed.items() if p in walk.sniff_seen}
        if full:
            self._checked_at = now
        ready: list[Path] = []
        # Between full checks only new files and those still to settle (or taken lately) are looked at.
        # (A new name may have a stale entry: a file removed and written again between two full checks.)
        candidates = files if full else list(dict.fromkeys(self._watch + new))
        for p in candidates:
            try:
                st = p.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):  # a photograph's name now holding a folder (or a device)
                continue
            sig = (st.st_size, st.st_mtime_ns)
            old = self._state.get(p)
            if old is None or (old[0], old[1]) != sig:
                self._state[p] = (*sig, now)
                # With settle 0, a name not known before is taken now: a camera that renames a finished
                # photograph into place gets its row a poll sooner; a copy caught midway gets an error row and is
                # screened again once whole, as a copy pausing longer than any settle time does. A file seen to
                # change is being written where it lies: it must still be seen unchanged once more, a poll later.
                if old is not None or not self.take_new_at_once:
                    continue
                old = self._state[p]
            wait = self._wait(st.st_size)
            due = self._taken.get(p) != sig or now >= self._retry_at.get(p, math.inf)
            if now - old[2] >= wait and due and (limit is None or len(ready) < limit):
                self._taken[p] = sig
                self._taken_at[p] = now
                self._retry_at.pop(p, None)
                real = os.path.realpath(p)
                if not self._inside(real):
                    self._say_outside(p, real)  # taken, not returned: looked at again only when it changes
                    continue
                self._by_real[real] = p
                ready.append(p)
        self._watch = list(dict.fromkeys(p for p in candidates if not self._quiet(p, now)))
        if full:
            for gone in set(self._state) - set(files):
                self._state.pop(gone, None)
                self._taken.pop(gone, None)
                self._taken_at.pop(gone, None)
                self._retry_at.pop(gone, None)
                self._retries.pop(gone, None)
            self._by_real = {r: p for r, p in self._by_real.items() if p in self._state}
        return ready

    def untake(self, paths: Sequence[Path]) -> None:
        """Hand back files returned by :meth:`poll` that were not screened after all (the watch stopped while
        screening their batch): :meth:`waiting` lists them again, and a later poll takes them."""
        for p in paths:
            self._taken.pop(p, None)
            self._taken_at.pop(p, None)

    def waiting(self) -> list[Path]:
        """Files seen whose current version has not been taken: still being written, or not unchanged long enough
        yet (``settle_ms``; an empty file ``empty_settle_ms``). What a stopped watch leaves unscreened."""
        return sorted(p for p, (size, mtime, _) in self._state.items() if self._taken.get(p) != (size, mtime))

    def due_in(self) -> float | None:
        """Seconds until a file still to settle (or to retry) may be taken; None when none will be before a
        poll finds something new. A file that could be taken now waits for the next poll as before (a file seen
        to change with settle 0, one left over by ``limit``): waking for it would poll without pause."""
        now = self.clock()
        due = math.inf
        for p in self._watch:
            known = self._state.get(p)
            if known is None:
                continue
            at = (known[2] + self._wait(known[0]) if self._taken.get(p) != known[:2]
                  else self._retry_at.get(p, math.inf))
            if now < at < due:
                due = at
        return None if due == math.inf else due - now

    def _wait(self, size: int) -> float:
        """How long a file of this size must stay unchanged."""
        return self.settle_s if size > 0 else self.empty_settle_s

    def _inside(self, real: str) -> bool:
        """Whether the resolved path ``real`` lies inside the watched folder (resolved)."""
        real = os.path.normcase(real)
        return real == self._root or real.startswith(self._root.rstrip(os.sep) + os.sep)

    def _say_outside(self, p: Path, real: str) -> None:
        # Why not screen it: whoever can drop files could otherwise link any photograph the screening
        # account can read (another clinic's, a private folder) into the shared report.
        said = f"outside:{p}"
        if said not in self._said:
            self._said.add(said)
            log.warning("not screening %s: a link to %s, outside the watched folder %s (watch screens only "
                        "files inside it; screen that file with uopsl-screen run if it belongs here)",
                        p, real, self.folder)

    def retry_later(self, p: Path) -> None:
        """Take ``p`` again later although it has not changed: its screening failed for a reason outside
        its content (the camera software still held it open, a network share's lock, a failed inference).

        The wait doubles with each failure of the same file (``RETRY_FIRST_S`` up to ``RETRY_MAX_S``), so a
        file that stays locked is not read at every poll; a file that changes is taken at once as before.
        """
        p = self._tracked(p)
        n = self._retries.get(p, 0)
        self._retries[p] = n + 1
        self._retry_at[p] = self.clock() + min(RETRY_FIRST_S * 2 ** n, RETRY_MAX_S)

    def settled(self, p: Path) -> None:
        """``p`` got a final result: no more retries for it."""
        p = self._tracked(p)
        self._retry_at.pop(p, None)
        self._retries.pop(p, None)

    def forget(self, p: Path) -> None:
        """``p`` is gone: if a file appears under its name again, it is new."""
        p = self._tracked(p)
        for d in (self._state, self._taken, self._taken_at, self._retry_at, self._retries):
            d.pop(p, None)

    def _tracked(self, p: Path) -> Path:
        """The path this tracker lists for ``p`` (a result's real path)."""
        return self._by_real.get(os.path.realpath(p), p)

    def _scan(self, folder: Path, state: WalkState, now: float, full: bool, files: list[Path], new: list[Path],
              seen: set[str]) -> None:
        """Collect the image files under ``folder``, listing again only the folders that changed (all at a full check)."""
        key = os.fspath(folder)
        seen.add(key)
        known = self._listings.get(key)
        # Changed lately: a second file created in the same timestamp tick as the change (FAT: 2 s; Linux before
        # 6.13: a few ms) would not move the folder's time again, so it is listed at every poll for a while.
        settling = known is not None and now - known.changed_at < _SETTLE_S
        hot = (known is None or full or settling or len(self._listings) <= self.check_all_up_to
               or now - known.changed_at < self.hot_s)
        relisted = False
        if hot:
            st: os.stat_result | None
            try:
                st = os.stat(folder)
                sig: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
            except OSError:
                st, sig = None, None
            if full or known is None or known.sig is None or sig != known.sig or settling:
                entries = list_folder(folder, state)
                self.listings += 1
                relisted = True
                listed = state.folders.get(key)  # None: left out or not listable: tried again at the next poll
                changed = known is None or listed != known.sig
                listing = _Listing(listed, now if changed or known is None else known.changed_at,
                                   [p for p, is_dir in entries if not is_dir], [p for p, is_dir in entries if is_dir],
                                   folder_ident(folder, st) if listed is not None and st is not None else None)
                # Every file of a folder listed again is looked at: a new name, or another photograph written
                # (or renamed) over an old name.
                new.extend(listing.files)
                self._listings[key] = known = listing
        if known is None:
            return
        if not relisted and known.ident is not None:
            # Kept from an earlier poll: this walk has still been here. Without it, a link in the drop folder to
            # the folder itself (or to a parent) was listed as a new folder at each poll, one level deeper each
            # time, and its photographs counted again under every longer name.
            state.visited.add(known.ident)
        if full:
            files.extend(known.files)
        for sub in known.folders:
            self._scan(sub, state, now, full, files, new, seen)

    def _quiet(self, p: Path, now: float) -> bool:
        """Taken as it is now, longer than rescan_s ago: left to the next full check (a rewrite in place)."""
        known = self._state.get(p)
        return (known is not None and p not in self._retry_at and self._taken.get(p) == known[:2]
                and now - self._taken_at.get(p, now) >= self.rescan_s)


_SETTLE_S = 3.0  # after a folder changed, list it at every poll this long (FAT stores times to 2 s)
#: First wait before a file whose screening failed outside its content is taken again, and the longest.
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0


def watch_folder(
    screener: Screener,
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: WatchConfig | None = None,
    *,
    overlays: bool = False,
    on_result: Callable[[ScreenResult], None] | None = None,
) -> RunSummary:
    """Screen images appearing in ``folder`` into ``out_dir`` until stopped (Ctrl-C, max_images, timeout).

    The output folder is locked for the whole session (a second process gets
    a :class:`ConfigError`), and results.csv/report.html are rewritten at the
    end whatever stops the watch, so they always list every row written.
    """
    cfg = config or WatchConfig()
    src = Path(folder)
    if not src.is_dir():
        raise ConfigError(f"watch folder {src} does not exist or is not a folder")
    if is_output_folder(src):
        raise output_folder_named(src)
    out = Path(out_dir)
    total = RunSummary(out, backend=screener.backend.describe(), bundle_sha256=screener.identity.bundle_sha256)
    # path -> (status, referred, sha256, screened|skipped, local day screened)
    latest: dict[str, tuple[str, bool, str, str, str]] = {}

    answered: set[str] = set()  # the files of the batch being screened that got a row, or were found gone

    def seen(r: ScreenResult) -> None:
        """Count a file screened again (half-copied, then whole; or copied twice) once, as its report row does."""
        path = key_path(r.key) or r.key
        answered.add(_same_file(path))
        if is_final(r.status, r.reasons):
            tracker.settled(Path(path))
        else:
            tracker.retry_later(Path(path))
        count_once(path, r.status, bool(r.refer), r.content_sha256, "screened", _local_day(None))
        if on_result is not None:
            on_result(r)

    def kept(row: dict[str, Any]) -> None:
        """An earlier row carried over to a file taken again (touched, copied over with the same bytes), or to
        a file moved to another folder (``moved_from``): moved inside this session, it was counted under its
        old path, which its row no longer lists."""
        answered.add(_same_file(key_path(str(row["key"])) or str(row["key"])))
        old = str(row.get("moved_from") or "")
        before = latest.pop(old, None) if old else None
        if before is not None:
            uncount(before)
            if before[3] == "screened":
                # Screened in this session, then moved: it stays "screened now", though the batch counts the
                # carried row as an earlier run's (a review: a folder renamed during the watch turned "2 screened
                # now" into "2 from an earlier run").
                total.screened += 1
                total.skipped -= 1
        count_once(key_path(str(row["key"])) or str(row["key"]), str(row.get("status")), bool(row.get("refer")),
                   str(row.get("sha256") or ""), before[3] if before is not None else "skipped",
                   _local_day(row.get("screened_at")))

    def uncount(entry: tuple[str, bool, str, str, str]) -> None:
        status, refer, _, how, _day = entry
        setattr(total, how, getattr(total, how) - 1)
        total.counts[status] = total.counts.get(status, 0) - 1
        total.refer -= refer

    def count_once(path: str, status: str, refer: bool, sha: str, how: str, day: str) -> None:
        """Count a file taken again this session (half-copied, then whole; copied twice; touched) once, as its
        report row does: the batch's own counts (added after this) hold the new entry, so the earlier one
        goes. ``how``: whether the new entry counts as ``screened`` or ``skipped`` (an earlier result)."""
        before = latest.get(path)
        latest[path] = (status, refer, sha, how, day)
        if before is not None and (before[0] not in FINAL_STATUSES or before[2] == sha):
            uncount(before)
        elif before is not None and before[0] in ("ungradable", "error") and before[4] and before[4] == day:
            # Another photograph saved under the failed one's name the same day: the retake. Both rows stay (the
            # earlier one marked file_replaced), but the earlier no longer asks for a retake (a review: "1
            # ungradable (retake)" and exit 1 after the retake had been screened fine). On another day the name
            # may be another patient's (cameras restart their numbering): the failed row still counts, as the
            # report's retake list keeps it (report.retaken).
            total.retaken += 1

    def still_there(r: ScreenResult) -> bool:
        """False for a file that could not be read because it is gone (filed away by the camera software just
        after it settled): no row for the old name; it is screened where it went."""
        if r.status != "error" or "unreadable" not in r.reasons:
            return True
        path = Path(key_path(r.key) or r.key)
        if os.path.lexists(path):
            return True
        log.info("%s went away before it was read; not recorded", path)
        answered.add(_same_file(str(path)))
        tracker.forget(path)
        return False

    with ResultStore(out, screener.identity) as held:
        tracker = StableFiles(src, cfg.settle_ms, time.monotonic, exclude=[out], rescan_s=cfg.rescan_s,
                              take_new_at_once=True)
        t_start = time.monotonic()
        last_refresh = 0.0
        gap = cfg.refresh_s  # grows with what a rewrite of the outputs costs (refresh_gap)
        said_gap = cfg.refresh_s
        dirty = False
        said_failed = ""  # the last failed rewrite's error, said once until a rewrite succeeds
        log.info("watching %s (settle %d ms); Ctrl-C to stop", src, cfg.settle_ms)
        try:
            while True:
                # Only as many as are still to screen are taken; the rest stay for the next poll.
                ready = tracker.poll(None if cfg.max_images is None else cfg.max_images - total.screened)
                if ready:
                    dirty = True  # before screening: an interrupt inside must still refresh
                    answered.clear()
                    try:
                        s = screener.screen_to(out, ready, overlays=overlays, finalize=False, on_result=seen,
                                               require_images=False, store=held, keep=still_there,
                                               on_kept=kept, on_done=kept)
                    except KeyboardInterrupt as exc:  # ScreeningInterrupted: what the batch did is saved
                        _add(total, getattr(exc, "summary", None))
                        # The batch's files without a row go back to the waiting list, which the stop names: a
                        # review's watch stopped 1.6 s into a batch of 39 said nothing of the 32 left (exit 0).
                        tracker.untake([p for p in ready if _same_file(str(p)) not in answered])
                        raise
                    _add(total, s)
                now = time.monotonic()
                if dirty and now - last_refresh >= gap:
                    try:
                        n_listed = _refresh(screener, out, held)
                    except OSError as exc:
                        # A full disk, a share gone for a moment: screening goes on (each row is in results.jsonl,
                        # whose own failure does stop the watch) and the rewrite is tried again after the gap.
                        # It stopped the watch for the rest of the day, rows still fitting (a review).
                        said_failed = _refresh_failed(exc, out, said_failed)
                        last_refresh = time.monotonic()
                    else:
                        if said_failed:
                            log.warning("results.csv and report.html in %s are up to date again", out)
                            said_failed = ""
                        last_refresh, dirty = time.monotonic(), False
                        gap = refresh_gap(cfg.refresh_s, last_refresh - now)
                        if gap > 2 * said_gap:
                            log.info("rewriting results.csv and the report took %.1f s (%d photographs in %s): they "
                                     "are rewritten at most every %.0f s from now on, so that screening keeps the CPU "
                                     "(each result is in %s as soon as it is screened)", last_refresh - now, n_listed,
                                     out, gap, "results.jsonl")
                            said_gap = gap
                elif screener.busy_outputs and now - last_refresh >= gap:
                    # An output another program held open (Excel): only it is tried again, at each refresh.
                    try:
                        screener.finalize(out, held, only_busy=True)
                    except OSError as exc:
                        said_failed = _refresh_failed(exc, out, said_failed)
                    last_refresh = time.monotonic()
                if cfg.max_images is not None and total.screened >= cfg.max_images:
                    break
                pause = next_pause(cfg.poll_s, tracker.due_in())
                if cfg.timeout_s is not None:
                    left = t_start + cfg.timeout_s - time.monotonic()
                    if left <= 0:
                        break
                    pause = min(pause, left)  # --timeout 5 --poll 30 stops after 5 s, not 30
                time.sleep(pause)
        except KeyboardInterrupt:
            log.info("stopped by the user")
        except BaseException:
            # The original error is the one to show: a failing rewrite only logs a warning here.
            screener._finalize_quietly(out, held, True, None)
            raise
        _say_waiting(tracker.waiting(), tracker.settle_s, tracker.empty_settle_s, cfg.max_images is not None)
        # An earlier session's failed photograph screened since with a result (its retake) is not named as failed.
        total.earlier_failed = [e for e in total.earlier_failed if latest.get(e[0], ("",))[0] != "ok"]
        try:
            total.in_folder = _refresh(screener, out, held)  # always: rows appended since the last refresh
        except KeyboardInterrupt:  # a stop landing as the rewrite began: it is what a stop asks for
            log.warning("stopped while writing the outputs: writing them once more")
            total.in_folder = _refresh(screener, out, held)
        total.not_updated = screener.busy_outputs
    return total


def _local_day(when: Any) -> str:
    """The local calendar day of a row's time (now where ``when`` is None), as YYYY-MM-DD; "" when unreadable."""
    day = datetime.now().astimezone().date() if when is None else local_day(when)
    return "" if day is None else day.isoformat()


def _same_file(path: str) -> str:
    """``path`` in one spelling, to match a result's path (a key holds the resolved path) with the file a poll
    returned (under the watched folder's own spelling, which may go through a link)."""
    return os.path.normcase(os.path.realpath(path))


def _say_waiting(waiting: Sequence[Path], settle_s: float, empty_settle_s: float, capped: bool) -> None:
    """Warn, as a watch stops, of the files it saw but did not screen (not settled yet, or past ``--max-images``
    when ``capped``): they have no row yet, and without a word a technician reads the summary as the whole folder
    (a review: an empty file dropped just before ``--timeout 2`` got neither a row nor a mention)."""
    if not waiting:
        return
    n = len(waiting)
    names = ", ".join(str(p) for p in waiting[:5]) + (f" and {n - 5} more" if n > 5 else "")
    log.warning("%d file%s seen but not screened before the watch stopped (still being written, not yet unchanged "
                "for %g s, an empty file for %g s, being screened as it stopped%s): %s. The next watch of this "
                "folder, or uopsl-screen run, "
                "screens %s", n, "" if n == 1 else "s", settle_s, empty_settle_s,
                ", or past --max-images" if capped else "", names, "it" if n == 1 else "them")


def _add(total: RunSummary, s: RunSummary | None) -> None:
    """Add one batch's counts to the session's."""
    if s is None:
        return
    total.screened += s.screened
    total.skipped += s.skipped  # already in the results folder from an earlier run
    total.moved += s.moved
    total.retaken += s.retaken
    total.refer += s.refer
    for k, v in s.counts.items():
        total.counts[k] = total.counts.get(k, 0) + v
    # Photographs an earlier session left to retake: the summary names them, as run's does (a restarted watch
    # said only "3 more in the report", a review).
    total.earlier_failed.extend(s.earlier_failed[:max(0, EARLIER_FAILED_KEPT - len(total.earlier_failed))])


#: The shortest pause between polls when a file is due sooner (the least ``--poll``): never a busy loop.
MIN_PAUSE_S = 0.01


def next_pause(poll_s: float, due_in: float | None) -> float:
    """Seconds to sleep before the next poll: ``poll_s``, or less when a file may be taken sooner
    (``due_in``, :meth:`StableFiles.due_in`), but not under :data:`MIN_PAUSE_S` (unless ``poll_s`` is)."""
    return poll_s if due_in is None else min(poll_s, max(due_in, MIN_PAUSE_S))


#: A watch spends at most about 1 / REFRESH_COST_FACTOR of its time rewriting results.csv and the report.
REFRESH_COST_FACTOR = 10.0


def refresh_gap(refresh_s: float, last_cost_s: float) -> float:
    """Seconds from the end of one rewrite of the outputs to the earliest next one.

    ``refresh_s`` as configured, or ten times what the last rewrite took when that is longer: with 100,000
    rows a rewrite costs ~10 s of CPU (``benchmarks/bench_results_folder.py``), and at ``refresh_s`` = 10
    a busy camera kept a core rewriting them.
    """
    return max(refresh_s, REFRESH_COST_FACTOR * last_cost_s)


def _refresh_failed(exc: OSError, out: Path, said: str) -> str:
    """Warn that results.csv/report.html could not be rewritten (once per distinct error); the error's text."""
    text = f"{exc.strerror or exc}"  # not the file: a temporary's name changes at every try
    if text != said:
        log.warning("results.csv and report.html in %s NOT updated (%s); screening goes on, every result is in "
                    "results.jsonl, and the rewrite is tried again (free some space if the disk is full)", out, text)
    return text


def _refresh(screener: Screener, out: Path, store: ResultStore) -> int:
    """Rewrite results.csv and report.html; returns how many photographs they list. A file the rewrite left
    as it was (a full disk) is set aside as out-of-date, as ``run`` does: a watch is a long session."""
    with stale_outputs_set_aside(out):
        return len(screener.finalize(out, store))
