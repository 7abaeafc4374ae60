"""Screening under failures a clinic and a device meet (session-15 review of the pipeline, store and watch)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

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


def _rerun_rows(bundle: Path, out: Path, photos: list[Path]) -> int:
    """Screen ``photos`` into ``out`` again; the number of rows, each key once (else an AssertionError)."""
    with Screener(bundle, "ort-cpu", threads=1, batch_size=2) as s:
        s.screen_to(out, photos, report=False)
    keys = [r["key"] for r in results_jsonl(out)]
    assert len(keys) == len(set(keys)), "a row written twice"
    return len(keys)


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
    assert _rerun_rows(tiny_bundle, out, photos) == 6  # and the rerun completes it, each row once


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
    assert _rerun_rows(tiny_bundle, out, photos) == 8


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


@pytest.mark.parametrize("relative", [False, True])
def test_watch_screens_again_a_photograph_it_could_not_read(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch, relative: bool) -> None:
    # A Windows sharing violation while the camera application still holds the file: the first read fails,
    # the file does not change. Before: an "unreadable" row for the whole session, and exit 1. (Relative: the
    # retry followed the listed path, the results the real one, and never met.)
    inbox = tmp_path / "inbox"
    good_photos(inbox, 1)
    real, calls = pipeline_mod.read_bytes, []

    def read_bytes(path, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 1:
            raise ImageReadError("cannot read file (Permission denied)", source=str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(pipeline_mod, "read_bytes", read_bytes)
    monkeypatch.setattr("uopsl.runtime.watch.RETRY_FIRST_S", 0.2)
    monkeypatch.chdir(tmp_path)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, Path("inbox") if relative else inbox, tmp_path / "out",
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


# -- Windows: results.csv open in Excel ------------------------------------------------------------------------
def _excel_holds(monkeypatch: pytest.MonkeyPatch, held: set[str]) -> None:
    """Windows will not replace a file Excel holds open (PermissionError, WinError 32); simulated here."""
    from uopsl.runtime import fsio

    real = os.replace
    monkeypatch.setattr(fsio, "REPLACE_RETRY_S", 0.3)

    def replace(src, dst):  # type: ignore[no-untyped-def]
        if os.path.realpath(dst) in held:
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used by "
                                  "another process", os.fspath(src), 32, os.fspath(dst))
        return real(src, dst)

    monkeypatch.setattr(fsio.os, "replace", replace)


def test_run_with_results_csv_open_in_excel_screens_writes_the_report_and_says_so(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    # Before: every photograph screened, then exit 2 with an old report and a message about permissions.
    from uopsl.runtime.cli import main

    out = tmp_path / "out"
    good_photos(tmp_path / "in", 2)
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu"]) == 0
    good_photos(tmp_path / "in", 2, start=2)
    held = {os.path.realpath(out / "results.csv")}
    _excel_holds(monkeypatch, held)
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu"]) == 0
    err = capsys.readouterr().err
    assert "NOT updated: " in err and "results.csv is open in another program (Excel?)" in err
    assert (out / "results.csv").read_bytes() == before  # left as Excel shows it
    assert (out / "report.html").read_text(encoding="utf-8").count("img0003") >= 1  # the report has the new rows
    held.clear()
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu"]) == 0
    assert len(results_csv(out)) == 4 and "NOT updated" not in capsys.readouterr().err


def test_watch_keeps_screening_while_results_csv_is_open_in_excel(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    held: set[str] = {os.path.realpath(out / "results.csv")}
    _excel_holds(monkeypatch, held)
    results: list[str] = []

    def drop_more(r) -> None:  # type: ignore[no-untyped-def]
        results.append(r.status)
        if len(results) == 1:
            good_photos(inbox, 1, start=1)  # the camera goes on while results.csv is held
        if len(results) == 2:
            held.clear()  # the nurse closes Excel

    good_photos(inbox, 1)
    (out).mkdir()
    (out / "results.csv").write_text("held\n", encoding="utf-8")
    with caplog.at_level(logging.INFO), Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=2.5, refresh_s=0.2),
                               on_result=drop_more)
    assert results == ["ok", "ok"] and summary.exit_code == 0 and summary.not_updated == ()
    assert caplog.text.count("is open in another program (Excel?)") == 1  # once, not at every refresh
    assert "results.csv updated again" in caplog.text
    assert len(results_csv(out)) == 2


def test_a_list_of_paths_copied_with_explorers_copy_as_path(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    photos = good_photos(tmp_path / "in", 2)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f'"{p}"\r\n' for p in photos), encoding="utf-8")
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        summary = s.screen_to(tmp_path / "out", [lst], report=False)
    assert summary.counts["ok"] == 2 and summary.exit_code == 0


def test_folders_without_a_file_index_are_each_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows reports st_ino 0 for some network and FAT folders: every subfolder after the first was taken
    # for "a link to a folder already walked", and an --out on the same share excluded the photographs.
    import stat as stat_mod

    from uopsl.runtime.inputs import WalkState, iter_inputs

    share = tmp_path / "share"
    good_photos(share / "patientA", 1)
    good_photos(share / "patientB", 1, start=1)
    good_photos(share, 1, start=2)
    (tmp_path / "out").mkdir()
    real = os.stat

    class NoIndex:
        def __init__(self, st: os.stat_result) -> None:
            self._st = st

        def __getattr__(self, k: str) -> object:
            return 0 if k == "st_ino" else getattr(self._st, k)

    def stat(p, *a, **k):  # type: ignore[no-untyped-def]
        st = real(p, *a, **k)
        return NoIndex(st) if stat_mod.S_ISDIR(st.st_mode) and str(os.fspath(p)).startswith(str(tmp_path)) else st

    monkeypatch.setattr(os, "stat", stat)
    found = sorted(it.path.name for it in iter_inputs([share], state=WalkState(exclude=[tmp_path / "out"])))
    assert found == ["img0000.jpg", "img0001.jpg", "img0002.jpg"]


def test_info_redirected_to_a_file_in_a_windows_code_page(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A redirected stdout on Windows is cp1252 with strict errors: a Cyrillic bundle path crashed `info` ("a bug").
    import io
    import sys

    from uopsl.runtime.cli import main

    bundle = tmp_path / "пакет"
    shutil.copytree(tiny_bundle, bundle)
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    rc = main(["info", str(bundle)])
    out.flush()
    assert rc == 0
    assert b"\\u043f\\u0430\\u043a\\u0435\\u0442" in raw.getvalue()


def test_a_card_whose_file_times_moved_an_hour_is_not_screened_again(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # A FAT camera card after a daylight-saving change: every file an hour "older", the same photographs.
    from uopsl.runtime.cli import main

    photos = good_photos(tmp_path / "card", 3)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(tmp_path / "card"), "--out", str(out), "--backend", "ort-cpu"]
    assert main(args) == 0
    for p in photos:
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns - 3600 * 10**9, st.st_mtime_ns - 3600 * 10**9))
    (tmp_path / "card" / "img0001.jpg").write_bytes((tmp_path / "card" / "img0002.jpg").read_bytes())  # new content
    capsys.readouterr()
    assert main(args) == 0
    assert "(1 screened now, 2 from an earlier run)" in capsys.readouterr().err
    assert len(results_csv(out)) == 4  # the three, and the earlier photograph img0001.jpg held (both listed)


# -- from the review of this session's own changes ---------------------------------------------------------
def test_a_photograph_without_finite_probabilities_is_its_own_error(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # One NaN row (an FP16 overflow) used to stop the whole run as "the manifest does not fit the model".
    import numpy as np

    from uopsl.runtime.backends.onnxruntime import OrtBackend

    real = OrtBackend._infer

    def one_nan(self, batch):  # type: ignore[no-untyped-def]
        out = real(self, batch)
        out["probs"] = out["probs"].copy()
        out["probs"][0, 1] = np.nan
        return out

    monkeypatch.setattr(OrtBackend, "_infer", one_nan)
    photos = good_photos(tmp_path / "in", 4)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        rows = list(s.screen_many(photos))
    assert [r.status for r in rows] == ["error", "ok", "error", "ok"]
    assert rows[0].reasons == ("inference_error",) and "not finite" in rows[0].error


def test_an_empty_quoted_list_entry_is_no_path(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    # '""' (an empty spreadsheet cell) became the list's own folder and screened all of it.
    (p,) = good_photos(tmp_path / "in", 1)
    good_photos(tmp_path / "in", 3, start=1)  # others in the same folder, not listed
    lst = tmp_path / "in" / "list.txt"
    lst.write_text(f'""\n"{p}"\n', encoding="utf-8")
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        summary = s.screen_to(tmp_path / "out", [lst], report=False)
    assert summary.total == 1


def test_a_store_whose_write_failed_takes_no_more_rows(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.runtime.errors import ConfigError

    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        identity = s.identity
    with ResultStore(tmp_path / "out", identity) as store:
        _fail_fsync(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))  # 1: run.json
        with pytest.raises(OSError):
            store.append([{"key": "a|1|1", "status": "ok"}])
        monkeypatch.undo()
        with pytest.raises(ConfigError, match="an earlier write failed .*open the folder again"):
            store.append([{"key": "b|1|1", "status": "ok"}])


def test_main_puts_the_stdout_policy_back(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import io
    import sys

    from uopsl.runtime.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    main(["verify", str(tiny_bundle)])
    assert out.errors == "strict"


def _watch_while(tiny_bundle: Path, tmp_path: Path, change: Any) -> tuple[Any, list[dict[str, str]]]:
    """Watch an inbox of two photographs for 2.5 s while ``change(photos)`` runs a second in; summary and rows."""
    import time

    inbox = tmp_path / "inbox"
    photos = good_photos(inbox, 2)

    def later() -> None:
        time.sleep(1.0)
        change(photos)

    t = threading.Thread(target=later, daemon=True)
    t.start()
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, inbox, tmp_path / "out", WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=2.5,
                                                                      refresh_s=0, rescan_s=0.2))
    t.join()
    return summary, results_csv(tmp_path / "out")


def test_watch_counts_a_touched_photograph_once(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    def touch(photos: list[Path]) -> None:
        photos[1].write_bytes(photos[1].read_bytes())  # copied over again, the same bytes
        st = photos[0].stat()
        os.utime(photos[0], ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))  # an hour older (FAT, DST)

    summary, rows = _watch_while(tiny_bundle, tmp_path, touch)
    assert summary.total == 2 and summary.refer <= 2 and len(rows) == 2
    assert summary.screened + summary.skipped == 2


def test_watch_counts_a_photograph_moved_to_another_folder_once(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    # Filed into a patient's folder by the camera software after it was screened: its row moves with it
    # (moved_from); the session's totals counted it under both paths.
    def file_away(photos: list[Path]) -> None:
        (photos[0].parent / "patient7").mkdir()
        os.rename(photos[0], photos[0].parent / "patient7" / photos[0].name)

    summary, rows = _watch_while(tiny_bundle, tmp_path, file_away)
    assert len(rows) == 2 and any("patient7" in r["source"] for r in rows)
    assert summary.moved == 1
    assert summary.total == 2 and summary.screened + summary.skipped == 2, summary


def test_a_retimed_row_does_not_carry_where_it_once_came_from(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    # A card seen under a new mount point got rows with moved_from; a later time shift must not apply that
    # old path again (it hid a newer photograph screened there since).
    (p,) = good_photos(tmp_path / "usb1", 1)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        s.screen_to(out, [tmp_path / "usb1"], report=False)
        os.rename(tmp_path / "usb1", tmp_path / "usb2")
        s.screen_to(out, [tmp_path / "usb2"], report=False)  # moved: moved_from usb1
        good_photos(tmp_path / "usb1", 1, start=5)  # a new card at the old mount point, same file name
        s.screen_to(out, [tmp_path / "usb1"], report=False)
        moved = tmp_path / "usb2" / p.name
        st = moved.stat()
        os.utime(moved, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
        s.screen_to(out, [tmp_path / "usb2"], report=False)
    sources = sorted(Path(r["source"]).parent.name for r in results_csv(out))
    assert sources == ["usb1", "usb2"]
    assert "moved_from" not in results_jsonl(out)[-1]


def test_a_backend_returning_nan_for_everything_stops_the_run(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU in a failed state can return NaN for every photograph: error rows for a whole card otherwise.
    import numpy as np

    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.runtime.errors import BackendError

    real = OrtBackend._infer

    def all_nan(self, batch):  # type: ignore[no-untyped-def]
        out = real(self, batch)
        out["probs"] = np.full_like(out["probs"], np.nan)
        return out

    monkeypatch.setattr(OrtBackend, "_infer", all_nan)
    photos = good_photos(tmp_path / "in", 10)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        seen: list[str] = []
        with pytest.raises(BackendError, match="inference failed 3 times in a row .*no finite probability"):
            for r in s.screen_many(photos):
                seen.append(r.status)
    assert seen == ["error"] * 4  # two batches written as errors; the third stops the run
