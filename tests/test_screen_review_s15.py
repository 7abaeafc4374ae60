"""Screening under failures a clinic and a device meet (session-15 review of the pipeline, store and watch)."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from tinybundle import good_photos, results_csv, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import pipeline as pipeline_mod
from uopsl.runtime import results as results_mod
from uopsl.runtime.api import Screener
from uopsl.runtime.errors import BackendClosedError, ImageReadError
from uopsl.runtime.results import ResultStore
from uopsl.runtime.watch import RETRY_FIRST_S, StableFiles, WatchConfig, watch_folder


def _fail_fsync(monkeypatch: pytest.MonkeyPatch, on_call: int, exc: BaseException) -> None:
    real, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        real(fd)  # the rows reached the disk's cache; the failure comes after (a slow card, a full disk)
        if calls[0] == on_call:
            raise exc

    monkeypatch.setattr(results_mod.os, "fsync", fsync)


def test_a_failed_write_releases_the_folder_and_writes_no_row_twice(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the failing batch was appended again by the cleanup, and the folder lock stayed held for the
    # life of the process (an embedded Screener refused every later run into that folder).
    photos = good_photos(tmp_path / "in", 6)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        _fail_fsync(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(OSError, match="No space left"):
            s.screen_to(out, photos, report=False)
        monkeypatch.undo()
        keys = [r["key"] for r in results_jsonl(out)]
        assert len(keys) == len(set(keys))
        opened: list[int] = []

        def other_thread() -> None:
            with ResultStore(out, s.identity) as store:
                opened.append(store.n_rows)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert opened, "another thread could not take the folder after the failure"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:  # and the rerun completes it
        s.screen_to(out, photos, report=False)
    keys = [r["key"] for r in results_jsonl(out)]
    assert len(keys) == len(set(keys)) == 6


def test_an_interrupt_during_fsync_writes_no_row_twice(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    photos = good_photos(tmp_path / "in", 8)
    out = tmp_path / "out"
    _fail_fsync(monkeypatch, 3, KeyboardInterrupt())
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        with pytest.raises(KeyboardInterrupt):
            s.screen_to(out, photos, report=False)
    monkeypatch.undo()
    keys = [r["key"] for r in results_jsonl(out)]
    assert len(keys) == len(set(keys))
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        s.screen_to(out, photos, report=False)
    keys = [r["key"] for r in results_jsonl(out)]
    assert len(keys) == len(set(keys)) == 8


def test_a_complete_last_row_without_its_newline_is_kept(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                         caplog: pytest.LogCaptureFixture) -> None:
    photos = good_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        s.screen_to(out, photos, report=False)
        jsonl = out / "results.jsonl"
        jsonl.write_bytes(jsonl.read_bytes().rstrip(b"\n"))  # an editor that strips the last line end
        with caplog.at_level(logging.WARNING):
            summary = s.screen_to(out, photos, report=False)
    assert summary.screened == 0 and summary.skipped == 2
    assert "the last row had no line end; adding it" in caplog.text
    assert len(results_jsonl(out)) == 2


def test_screen_many_kept_after_close_stops_instead_of_writing_failures(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    # Before: every later photograph became an "inference_error" row, then a BackendError blamed the GPU.
    photos = good_photos(tmp_path / "in", 12)
    s = Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2)
    s.open()
    it = s.screen_many(photos)
    first = next(it)
    assert first.status == "ok"
    s.close()
    with pytest.raises(BackendClosedError, match="the backend is not open"):
        rest = list(it)
        assert all(r.status == "ok" for r in rest)  # (rows already inferred before the close)


# -- watch -------------------------------------------------------------------------------------------------
def test_the_tracker_takes_a_failed_file_again_with_a_doubling_wait(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=100, clock=lambda: now[0])
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"x" * 10)
    tracker.poll()
    now[0] = 1.0
    assert tracker.poll() == [p]
    tracker.retry_later(p)  # locked by the camera software: unreadable
    now[0] = 1.0 + RETRY_FIRST_S - 0.01
    assert tracker.poll() == []
    now[0] = 1.0 + RETRY_FIRST_S
    assert tracker.poll() == [p]
    tracker.retry_later(p)  # still locked: twice the wait
    now[0] += 2 * RETRY_FIRST_S - 0.01
    assert tracker.poll() == []
    now[0] += 0.01
    assert tracker.poll() == [p]
    tracker.settled(p)  # screened at last
    now[0] += 1000
    assert tracker.poll() == []


def test_watch_screens_again_a_photograph_it_could_not_read(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A Windows sharing violation while the camera application still holds the file: the first read fails,
    # the file does not change. Before: an "unreadable" row for the whole session, and exit 1.
    inbox = tmp_path / "inbox"
    (p,) = good_photos(inbox, 1)
    real, calls = pipeline_mod.read_bytes, []

    def read_bytes(path, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 1:
            raise ImageReadError("cannot read file (Permission denied)", source=str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(pipeline_mod, "read_bytes", read_bytes)
    monkeypatch.setattr("uopsl.runtime.watch.RETRY_FIRST_S", 0.2)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, inbox, tmp_path / "out",
                               WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=2.0, refresh_s=0))
    assert len(calls) == 2
    (row,) = results_csv(tmp_path / "out")
    assert row["status"] == "ok" and summary.exit_code == 0 and summary.counts.get("error", 0) == 0


def test_watch_keeps_no_row_for_a_photograph_filed_away_before_it_was_read(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = tmp_path / "inbox"
    (p,) = good_photos(inbox, 1)
    (inbox / "patient7").mkdir()
    real_poll, moved = StableFiles.poll, []

    def poll(self, limit=None):  # type: ignore[no-untyped-def]
        ready = real_poll(self, limit)
        for q in ready:
            if q == p and not moved:  # the camera software files it away a moment after it settled
                os.rename(q, inbox / "patient7" / q.name)
                moved.append(q)
        return ready

    monkeypatch.setattr(StableFiles, "poll", poll)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, inbox, tmp_path / "out", WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=1.5,
                                                                     refresh_s=0, rescan_s=0.2))
    rows = results_csv(tmp_path / "out")
    assert moved and [Path(r["source"]).parent.name for r in rows] == ["patient7"]
    assert rows[0]["status"] == "ok" and summary.exit_code == 0
    assert json.dumps(results_jsonl(tmp_path / "out")).count("unreadable") == 0
