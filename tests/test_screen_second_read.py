"""Second review of ``uopsl-screen``'s runtime: one test per finding (1-6, 8-11; 7 is export/validate.py's).

Performance findings assert the structure (how often results.jsonl is read, how many stores are opened,
how many images are decoded), not timings.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from test_report_readability import _manifest, _row
from tinybundle import good_photos, results_csv, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import report as report_mod
from uopsl.runtime import results as results_mod
from uopsl.runtime.api import Screener
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.fsio import FolderLock
from uopsl.runtime.overlay import THUMB_DIR, encode_jpeg
from uopsl.runtime.inputs import item_for_data
from uopsl.runtime.report import find_duplicates, render_report
from uopsl.runtime.results import LOCK_NAME, ResultStore
from uopsl.runtime.watch import StableFiles, WatchConfig, watch_folder


_csv, _jsonl, _good = results_csv, results_jsonl, good_photos


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


# -- 1: watch --max-images ------------------------------------------------------------------------------------
def test_1_poll_with_a_limit_leaves_the_rest_untaken(tmp_path: Path) -> None:
    _good(tmp_path / "in", 3)
    clock = [0.0]
    tracker = StableFiles(tmp_path / "in", 0, clock=lambda: clock[0])
    assert tracker.poll() == []  # first sight
    clock[0] = 1.0
    first = tracker.poll(limit=2)
    assert len(first) == 2
    assert len(tracker.poll(limit=2)) == 1  # the third was not dropped
    assert tracker.poll() == []


def test_1_max_images_does_not_drop_or_hang_when_one_is_already_done(tiny_bundle: Path, tmp_path: Path) -> None:
    photos = _good(tmp_path / "src", 3)
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        shutil.copy2(photos[0], inbox / photos[0].name)
        s.screen_to(out, [inbox / photos[0].name], report=False)  # an earlier run screened the first
        for p in photos[1:]:
            shutil.copy2(p, inbox / p.name)
        t0 = time.monotonic()
        total = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, max_images=2, timeout_s=60,
                                                        refresh_s=100))
    assert time.monotonic() - t0 < 50  # stopped by max_images, not by the timeout
    assert (total.screened, total.skipped) == (2, 1)  # the skipped one does not count toward the limit
    assert len(_jsonl(out)) == 3 and len(_csv(out)) == 3  # none dropped


# -- 2: a card under a new path -------------------------------------------------------------------------------
def test_2_moved_photographs_read_the_jsonl_once_and_are_written_with_the_batch(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 5
    _good(tmp_path / "usb1", n)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        s.screen_to(out, [tmp_path / "usb1"])
        os.rename(tmp_path / "usb1", tmp_path / "usb2")
        scans, appends = [0], [0]
        real_scan, real_append = ResultStore._scan, ResultStore.append

        def counting_scan(self: ResultStore):  # type: ignore[no-untyped-def]
            scans[0] += 1
            return real_scan(self)

        def counting_append(self: ResultStore, rows):  # type: ignore[no-untyped-def]
            if rows or self._pending:
                appends[0] += 1
            return real_append(self, rows)

        monkeypatch.setattr(ResultStore, "_scan", counting_scan)
        monkeypatch.setattr(ResultStore, "append", counting_append)
        summary = s.screen_to(out, [tmp_path / "usb2"])
    assert summary.moved == n and summary.screened == 0
    assert scans[0] <= 2  # opening the store and the final CSV/report, not once per photograph
    assert appends[0] == 1  # all moved rows in one durable write, not one fsync each
    moved = [r for r in _jsonl(out) if "moved_from" in r]
    assert len(moved) == n
    rows = _csv(out)
    assert len(rows) == n and all(Path(r["source"]).parent == tmp_path / "usb2" for r in rows)


def test_2_find_moved_reads_the_row_at_its_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = _good(tmp_path / "a", 1)[0]
    from uopsl.runtime.fsio import sha256_file
    st = photo.stat()
    old_key = f"{tmp_path / 'gone' / photo.name}|{st.st_size}|{st.st_mtime_ns}"
    with ResultStore(tmp_path / "out") as store:
        store.append([{"key": f"/x/{i}.jpg|1|1", "status": "ok"} for i in range(50)])
        store.append([{"key": old_key, "status": "ok", "sha256": sha256_file(photo), "note": "é"}])
        store.append([{"key": f"/y/{i}.jpg|1|1", "status": "ok"} for i in range(50)])
    with ResultStore(tmp_path / "out") as store:
        monkeypatch.setattr(ResultStore, "rows", lambda self: pytest.fail("read the whole jsonl"))
        new_key = f"{photo}|{st.st_size}|{st.st_mtime_ns}"
        row = store.find_moved(new_key, photo)
    assert row is not None and row["key"] == old_key and row["note"] == "é"


# -- 3: watch reuses its store --------------------------------------------------------------------------------
def test_3_watch_opens_the_store_once(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    first, second, third = _good(tmp_path / "src", 3)
    inbox.mkdir()
    shutil.copy(first, inbox / "a.jpg")
    arrivals = iter([second, third])

    def on_result(r: object) -> None:  # each photograph screened brings the next: one poll each
        nxt = next(arrivals, None)
        if nxt is not None:
            shutil.copy(nxt, inbox / f"{nxt.stem}.jpg")

    opened = [0]
    real_init = ResultStore.__init__

    def counting_init(self: ResultStore, *a: object, **k: object) -> None:
        opened[0] += 1
        real_init(self, *a, **k)  # type: ignore[arg-type]

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        monkeypatch.setattr(ResultStore, "__init__", counting_init)
        total = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, max_images=3, timeout_s=60,
                                                        refresh_s=100), on_result=on_result)
    assert total.screened == 3 and len(_csv(out)) == 3
    assert opened[0] == 1  # the held store, not one per poll


def test_3_a_store_of_another_folder_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "in", 1)
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s, ResultStore(tmp_path / "a") as store:
        with pytest.raises(ConfigError, match="ResultStore open on .*, but writes to"):
            s.screen_to(tmp_path / "b", [tmp_path / "in"], store=store)


# -- 4: the report's image cache ------------------------------------------------------------------------------
def test_4_a_refresh_decodes_nothing_again_past_the_old_cache_size(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_URIS", OrderedDict())
    monkeypatch.setattr(report_mod, "_MAX_URIS", 4)  # stands for 4,096: more photographs than that
    (tmp_path / THUMB_DIR).mkdir()
    rows = []
    for i in range(6):
        (tmp_path / THUMB_DIR / f"p{i}.jpg").write_bytes(encode_jpeg(np.full((64, 64, 3), 20 * i, np.uint8)))
        rows.append(_row(f"p{i}.jpg", refer=False, probs={"dr": 0.1}))
    decodes = [0]
    real = report_mod.cv2.imdecode

    def counting(*a: object, **k: object) -> object:
        decodes[0] += 1
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(report_mod.cv2, "imdecode", counting)
    render_report(rows, tmp_path, _manifest())
    assert decodes[0] >= 6
    decodes[0] = 0
    for _ in range(3):  # watch's refreshes
        render_report(rows, tmp_path, _manifest())
    assert decodes[0] == 0


def test_4_the_cache_evicts_the_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_URIS", OrderedDict())
    monkeypatch.setattr(report_mod, "_MAX_URIS", 2)
    monkeypatch.setattr(report_mod, "_uri_capacity", 2)
    a, b, c = Path("/a.jpg"), Path("/b.jpg"), Path("/c.jpg")
    report_mod._uri_put(a, 1, 1, 1, "A")
    report_mod._uri_put(b, 1, 1, 1, "B")
    assert report_mod._uri_get(a, 1, 1, 1) == "A"  # a used last: b is the oldest now
    report_mod._uri_put(c, 1, 1, 1, "C")
    assert report_mod._uri_get(b, 1, 1, 1) is None
    assert report_mod._uri_get(a, 1, 1, 1) == "A" and report_mod._uri_get(c, 1, 1, 1) == "C"
    assert report_mod._uri_get(a, 1, 1, 2) is None  # another version of the file


# -- 5: in-memory inputs with one name ------------------------------------------------------------------------
def test_5_in_memory_inputs_sharing_a_name_keep_their_rows(tiny_bundle: Path, tmp_path: Path) -> None:
    photos = _good(tmp_path / "src", 3)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        summary = s.screen_to(out, [item_for_data(p.read_bytes()) for p in photos])
    assert summary.screened == 3 and summary.in_folder == 3
    assert len(_jsonl(out)) == 3 and len(_csv(out)) == 3
    assert len({r["id"] for r in _csv(out)}) == 3


# -- 6: the lock is released under the path resolved when it was taken --------------------------------------
def test_6_lock_released_after_the_working_folder_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    store = ResultStore("rel_out")
    real = os.path.realpath(tmp_path / "rel_out")
    assert real in results_mod._HELD
    monkeypatch.chdir(tmp_path / "elsewhere")
    store.close()
    assert real not in results_mod._HELD
    lock = FolderLock(tmp_path / "rel_out", LOCK_NAME)  # another opener (as another process) gets it
    assert lock.acquire()
    lock.release()


# -- 8: duplicates with and without a recorded hash -----------------------------------------------------------
def test_8_a_recorded_and_a_computed_hash_are_the_same_key(tmp_path: Path) -> None:
    data = encode_jpeg(np.full((32, 32, 3), 90, np.uint8))
    import hashlib
    digest = hashlib.sha256(data).hexdigest()
    rows = []
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        p = tmp_path / name
        p.write_bytes(data)
        st = p.stat()
        r = {"status": "ok", "key": f"{p}|{st.st_size}|{st.st_mtime_ns}", "source": str(p)}
        if i == 0:
            r["sha256"] = digest  # an old-style row that carries its own hash
        rows.append(r)
    assert find_duplicates(rows[:2]).groups == [[0, 1]]
    assert find_duplicates(rows).groups == [[0, 1, 2]]
    rows[1]["sha256"] = "sha256:" + digest.upper()  # any spelling of the same hash
    assert find_duplicates(rows).groups == [[0, 1, 2]]


# -- 9: Ctrl-C in watch keeps the batch's counts --------------------------------------------------------------
def test_9_ctrl_c_in_a_watch_batch_is_counted(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    _good(inbox, 3)
    seen = [0]

    def on_result(r: object) -> None:
        seen[0] += 1
        if seen[0] == 2:
            raise KeyboardInterrupt

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        total = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=60, refresh_s=100),
                             on_result=on_result)
    assert total.screened == len(_jsonl(out)) == 2
    assert sum(total.counts.values()) == 2 and total.in_folder == 2


# -- 10: a failing refresh does not hide the error that stopped the watch ------------------------------------
def test_10_the_original_error_is_raised(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    inbox = tmp_path / "in"
    _good(inbox, 1)

    def broken_backend(*a: object, **k: object) -> None:
        raise BackendError("the backend failed")

    def full_disk(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        monkeypatch.setattr(Screener, "screen_to", broken_backend)
        monkeypatch.setattr(Screener, "finalize", full_disk)
        with pytest.raises(BackendError, match="the backend failed"):
            watch_folder(s, inbox, tmp_path / "out", WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=30))
    assert "could not rewrite results.csv/report.html" in caplog.text


# -- 11: an output folder named as input ----------------------------------------------------------------------
def test_11_an_output_folder_named_as_input_is_a_clear_error(tiny_bundle: Path, tmp_path: Path) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    _good(photos, 2)
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        s.screen_to(out, [photos])
        with pytest.raises(ConfigError, match=r"is an output folder of uopsl-screen \(it holds results.jsonl\)"
                                              r".*name the folder the photographs are in"):
            s.screen_to(tmp_path / "out2", [out])
        (out / "results.jsonl").unlink()
        (out / LOCK_NAME).touch()
        with pytest.raises(ConfigError, match=r"it holds \.uopsl-screen\.lock"):
            s.screen_to(tmp_path / "out2", [out])
        with pytest.raises(ConfigError, match="is an output folder of uopsl-screen"):
            watch_folder(s, out, tmp_path / "out3", WatchConfig(timeout_s=1))
        # A photo folder that merely contains an output folder is still screened (the output folder is not).
        assert s.screen_to(photos / "screen", [photos]).screened == 2


def test_removing_an_unused_output_folder_never_leaves_a_lock_on_a_removed_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that found nothing removes the folder it created; another process that opened the lock file just
    before must not end up "holding" a lock on the removed file while a third one locks a new folder there."""
    import uopsl.runtime.fsio as fsio

    out = tmp_path / "out"
    out.mkdir()
    first = FolderLock(out, LOCK_NAME)
    assert first.acquire()
    second = FolderLock(out, LOCK_NAME)
    real_lock = fsio._lock_fd
    calls = [0]

    def lock_after_the_first_removed_it(fd: int) -> bool | None:
        calls[0] += 1
        if calls[0] == 1:  # the second process opened the file; now the first one finishes and cleans up
            assert first.release_and_remove()
        return real_lock(fd)

    monkeypatch.setattr(fsio, "_lock_fd", lock_after_the_first_removed_it)
    with pytest.raises(OSError):  # its lock guards a removed file: it opens again and finds no folder
        second.acquire()
    assert not second.held and not out.exists()
    # A folder someone wrote into meanwhile is kept, and so is its lock file.
    out.mkdir()
    lock = FolderLock(out, LOCK_NAME)
    assert lock.acquire()
    (out / "results.jsonl").write_text("")
    assert not lock.release_and_remove()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, "results.jsonl"])


def test_a_folder_another_run_removed_just_now_is_made_again(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Another uopsl-screen that found nothing removed the empty --out between our mkdir and our lock."""
    import uopsl.runtime.results as results
    from uopsl.runtime.errors import ConfigError
    from uopsl.runtime.results import ResultStore

    real = results._acquire
    calls = [0]

    def removed_first(out: Path, real_path: str) -> bool:
        calls[0] += 1
        if calls[0] == 1:
            shutil.rmtree(out)
            raise ConfigError(f"cannot write to output folder {out} (No such file or directory); choose another --out")
        return real(out, real_path)

    monkeypatch.setattr(results, "_acquire", removed_first)
    with ResultStore(tmp_path / "out") as store:
        store.append([{"key": "a.jpg|1|1", "status": "ok"}])
    assert calls[0] == 2 and (tmp_path / "out" / "results.jsonl").is_file()


def test_a_folder_whose_listing_failed_records_no_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """watch lists a folder again when its time changed; a failed listing must not record the time it saw."""
    from uopsl.runtime.inputs import WalkState, list_folder

    (tmp_path / "a.jpg").write_bytes(b"x")
    real = os.scandir

    def failing(path: object = ".") -> object:
        if Path(os.fspath(path)) == tmp_path:  # type: ignore[arg-type]
            raise OSError(5, "Input/output error")
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", failing)
    state = WalkState()
    assert list_folder(tmp_path, state) == [] and os.fspath(tmp_path) not in state.folders
    monkeypatch.setattr(os, "scandir", real)
    state = WalkState()
    assert list_folder(tmp_path, state) == [(tmp_path / "a.jpg", False)] and os.fspath(tmp_path) in state.folders


def test_checking_the_output_folder_writes_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    """`run` checks --out before the model loads; a model that then fails to load must leave no trace."""
    import json

    from uopsl.runtime.api import Screener

    _good(tmp_path / "in", 1)
    s = Screener(tiny_bundle, "ort-cpu", threads=1)
    s.check_output(tmp_path / "new", [tmp_path / "in"])
    assert not (tmp_path / "new").exists()
    with s:
        s.screen_to(tmp_path / "out", [tmp_path / "in"], report=False)
    run_json = tmp_path / "out" / "run.json"
    before = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**before, "bundle": "/elsewhere/bundle"}))
    s.check_output(tmp_path / "out", [tmp_path / "in"])
    assert json.loads(run_json.read_text())["bundle"] == "/elsewhere/bundle"  # left as it is
