"""``uopsl-screen`` on a small disk with bad power (session 60 review, helper-243).

Each test reproduces one finding and fails on the code before its fix.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tinybundle import good_photos, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import ScreenResult, Screener
from uopsl.runtime.results import ResultStore


def test_no_verdict_is_told_before_its_row_is_saved(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """watch printed "REFER drop/0035_OD_f_1.jpg" and then "No space left on device": 19 verdicts shown, 18 rows."""
    photos = good_photos(tmp_path / "in", 5)
    out = tmp_path / "out"
    told: list[str] = []
    real_append = ResultStore.append
    saved: list[str] = []

    def full_after_first(self: ResultStore, rows: Any) -> None:
        if saved and rows:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "results.jsonl"))
        real_append(self, rows)
        saved.extend(str(r["key"]) for r in rows)

    monkeypatch.setattr(ResultStore, "append", full_after_first)
    with Screener(tiny_bundle, backend="ort-cpu", batch_size=2, threads=1) as s:
        with pytest.raises(OSError) as err:
            s.screen_to(out, [str(p) for p in photos], report=False, on_result=lambda r: told.append(r.key))
    assert err.value.errno == errno.ENOSPC
    assert len(saved) == 2 and len(results_jsonl(out)) == 2
    assert told == saved, (told, saved)  # before: the third photograph's verdict was told, then the write failed


def test_each_saved_result_is_told_once(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    photos = good_photos(tmp_path / "in", 5)
    told: list[ScreenResult] = []
    with Screener(tiny_bundle, backend="ort-cpu", batch_size=2, threads=1) as s:
        s.screen_to(tmp_path / "out", [str(p) for p in photos], report=False, on_result=told.append)
    assert sorted(r.key for r in told) == sorted(str(r["key"]) for r in results_jsonl(tmp_path / "out"))
    assert len(told) == 5


def _damage(good: bytes) -> bytes:
    """What a power cut leaves of a copy: the file at full size, its last 40 % zeros."""
    cut = int(len(good) * 0.6)
    return good[:cut] + bytes(len(good) - cut)


def test_a_damaged_file_copied_again_with_its_time_kept_is_screened_again(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    (photo,) = good_photos(tmp_path / "in", 1)
    good = photo.read_bytes()
    stat = photo.stat()
    photo.write_bytes(_damage(good))
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        first = s.screen_to(out, [str(photo)], report=False)
        assert first.counts["error"] == 1 and first.screened == 1, first.counts
        again = s.screen_to(out, [str(photo)], report=False)  # unchanged: its row stands, not screened again
        assert again.screened == 0 and again.skipped == 1
        photo.write_bytes(good)  # `cp -p` of the good file: same size, same time, so the same key
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        third = s.screen_to(out, [str(photo)], report=False)
    assert third.screened == 1 and third.counts["ok"] == 1, (third.screened, third.counts)  # before: skipped
    rows = results_jsonl(out)
    assert [r["status"] for r in rows] == ["error", "ok"] and rows[0]["key"] == rows[1]["key"]


def test_a_lost_results_jsonl_does_not_silently_replace_the_earlier_list(
        tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """The jsonl lost (fsck after a power cut, or deleted to free space): results.csv went from 60 rows to 2."""
    from uopsl.runtime.cli import main

    photos = good_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = ["--backend", "ort-cpu", "--threads", "1", "--no-progress", "--no-overlays"]
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), *args]) == 0
    listed = (out / "results.csv").read_bytes()
    (out / "results.jsonl").unlink()
    new = good_photos(tmp_path / "later", 1, start=5)
    capsys.readouterr()
    assert main(["run", str(tiny_bundle), str(new[0]), "--out", str(out), *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "results.csv listing 3 photograph(s) but no results.jsonl row" in err[0], err
    assert (out / "results.csv").read_bytes() == listed and not (out / "results.jsonl").exists()
    assert len(photos) == 3
    # An empty list (a header only) protects nothing: the folder is used.
    (out / "results.csv").write_text((out / "results.csv").read_text().splitlines()[0] + "\n")
    assert main(["run", str(tiny_bundle), str(new[0]), "--out", str(out), *args]) == 0
    assert len(results_jsonl(out)) == 1


def test_an_input_folder_taken_out_mid_run_stops_the_run_without_retake_rows(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Before: 220 rows "cannot open file" (a retake each), which stayed after the stick came back elsewhere."""
    from uopsl.runtime.errors import ConfigError

    stick = tmp_path / "usb"
    good_photos(stick, 12)
    out = tmp_path / "out"
    taken: list[bool] = []

    def take_out(r: ScreenResult) -> None:
        if not taken:
            stick.rename(tmp_path / "usb2")  # the stick pulled, to come back under another mount point
            taken.append(True)

    with Screener(tiny_bundle, backend="ort-cpu", batch_size=2, threads=1, workers=1) as s:
        with pytest.raises(ConfigError) as err:
            s.screen_to(out, [str(stick)], report=False, on_result=take_out)
    assert f"{stick} went away during the run" in str(err.value) and "run the same command again" in str(err.value)
    rows = results_jsonl(out)
    assert rows and all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert len(rows) < 12
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:  # back under another name: nothing to retake
        again = s.screen_to(out, [str(tmp_path / "usb2")], report=False)
    assert again.counts.get("error", 0) == 0 and again.screened + again.skipped == 12


def test_a_report_that_could_not_be_rewritten_is_not_left_to_pass_for_the_new_list(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """A full disk let results.csv through (39 rows) and not report.html, which still showed "30 images"."""
    import uopsl.runtime.api as api

    good_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        s.screen_to(out, [str(tmp_path / "in")])
        earlier = (out / "report.html").read_bytes()
        good_photos(tmp_path / "in", 3, start=2)
        real = api.write_reports
        monkeypatch.setattr(api, "write_reports", _full_disk_reports(out))
        with pytest.raises(OSError):
            s.screen_to(out, [str(tmp_path / "in")])
        assert not (out / "report.html").exists()  # before: the 2-photograph report, unmarked
        assert (out / "report.out-of-date.html").read_bytes() == earlier
        assert "renamed report.out-of-date.html" in caplog.text
        assert len((out / "results.csv").read_text().splitlines()) == 6  # rewritten: kept where it is
        monkeypatch.setattr(api, "write_reports", real)
        s.screen_to(out, [str(tmp_path / "in")])
    assert (out / "report.html").exists() and not (out / "report.out-of-date.html").exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX wording; Windows keeps the Excel advice")
def test_a_results_file_that_cannot_be_replaced_on_posix_does_not_blame_excel(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    import uopsl.runtime.api as api

    good_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        s.screen_to(out, [str(tmp_path / "in")], report=False)

        def immutable(*a: Any, **k: Any) -> None:  # what replacing a `chattr +i` file raises
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(out / "results.csv"))

        monkeypatch.setattr(api, "write_csv", immutable)
        good_photos(tmp_path / "in", 1, start=1)
        s.screen_to(out, [str(tmp_path / "in")], report=False)
    assert "could not be replaced (Operation not permitted: a read-only or immutable file?)" in caplog.text
    assert "Excel" not in caplog.text


# -- the review of the change (helper-247) ---------------------------------------------------------------------
def test_a_sub_folder_moved_away_mid_run_keeps_its_rows_and_the_run_goes_on(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Camera software filing a session away is no card taken out: the lost photographs stay named."""
    good_photos(tmp_path / "in" / "s1", 12)
    good_photos(tmp_path / "in" / "s2", 2, start=12)
    moved: list[bool] = []

    def file_away(r: ScreenResult) -> None:
        if not moved and "/s1/" in r.key:
            (tmp_path / "in" / "s1").rename(tmp_path / "filed")
            moved.append(True)

    with Screener(tiny_bundle, backend="ort-cpu", batch_size=2, threads=1, workers=1) as s:
        summary = s.screen_to(tmp_path / "out", [str(tmp_path / "in")], report=False, on_result=file_away)
    assert moved and summary.counts.get("error", 0) > 0, summary.counts
    rows = results_jsonl(tmp_path / "out")
    assert len(rows) == 14 and all("unreadable" in r["reasons"] for r in rows if r["status"] == "error")


def test_a_stop_landing_while_a_batch_is_written_still_tells_its_saved_rows(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import signal

    from uopsl.runtime.api import ScreeningInterrupted

    good_photos(tmp_path / "in", 4)
    real_append = ResultStore.append

    def ctrl_c_while_writing(self: ResultStore, rows: Any) -> None:
        if rows:
            signal.raise_signal(signal.SIGINT)  # held by interrupts_deferred until the write is done
        real_append(self, rows)

    monkeypatch.setattr(ResultStore, "append", ctrl_c_while_writing)
    told: list[str] = []
    with Screener(tiny_bundle, backend="ort-cpu", batch_size=2, threads=1) as s:
        with pytest.raises(ScreeningInterrupted):
            s.screen_to(tmp_path / "out", [str(tmp_path / "in")], report=False, on_result=lambda r: told.append(r.key))
    saved = [str(r["key"]) for r in results_jsonl(tmp_path / "out")]
    assert saved and told == saved, (told, saved)


def test_a_damaged_photograph_on_a_card_mounted_elsewhere_is_not_screened_twice(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    card = tmp_path / "card"
    (good, bad) = good_photos(card, 2)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # cut short: a damaged file
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        first = s.screen_to(out, [str(card)], report=False)
        assert first.counts["error"] == 1
        card.rename(tmp_path / "card2")
        again = s.screen_to(out, [str(tmp_path / "card2")])
    assert again.screened == 0, again.counts  # before: the damaged one screened again, listed twice
    assert len((out / "results.csv").read_text(encoding="utf-8-sig").splitlines()) == 3


def _full_disk_reports(out: Path) -> Any:
    def disk_full(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "report.html"))
    return disk_full


def test_watch_sets_a_report_it_could_not_rewrite_aside_too(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import uopsl.runtime.api as api
    from uopsl.runtime import watch

    good_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        s.screen_to(out, [str(tmp_path / "in")])
        good_photos(tmp_path / "in", 1, start=2)
        with ResultStore(out, s.identity) as store:
            s.screen_to(out, [str(tmp_path / "in")], finalize=False, store=store)
            monkeypatch.setattr(api, "write_reports", _full_disk_reports(out))
            with pytest.raises(OSError):
                watch._refresh(s, out, store)
    assert not (out / "report.html").exists() and (out / "report.out-of-date.html").exists()


def test_day_pages_a_full_disk_kept_from_being_rewritten_are_set_aside_and_only_those(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Day pages are written before the index, so a full disk usually stops on one: it kept an earlier state,
    unmarked. A page whose content did not change (the month behind today) stays where it is."""
    import uopsl.runtime.report_days as report_days

    monkeypatch.setattr(report_days, "ONE_PAGE_MAX_ROWS", 2)  # stands in for 1,000 photographs
    good_photos(tmp_path / "in", 3)
    out, days = tmp_path / "out", tmp_path / "out" / "days"
    real_open = report_days.atomic_open

    def full_for_day_pages(path: Any, *a: Any, **k: Any) -> Any:
        if Path(path).parent == days:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, *a, **k)

    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        s.screen_to(out, [str(tmp_path / "in")], report=False)
        jsonl = out / "results.jsonl"  # screened a week ago: their day's pages do not change again
        jsonl.write_text(re.sub(r'"screened_at": ?"[^"]+"', '"screened_at":"2026-12-01T10:00:00.000+00:00"',
                                jsonl.read_text()))
        good_photos(tmp_path / "in", 1, start=3)
        s.screen_to(out, [str(tmp_path / "in")])
        good_photos(tmp_path / "in", 1, start=4)
        monkeypatch.setattr(report_days, "atomic_open", full_for_day_pages)
        with pytest.raises(OSError):
            s.screen_to(out, [str(tmp_path / "in")])
        kept = {p.name: p.read_bytes() for p in days.iterdir() if p.name.endswith(".html")
                and ".out-of-date." not in p.name}
        aside = [p.name for p in days.iterdir() if p.name.endswith(".out-of-date.html")]
        assert any(name.startswith("2026-12-01") for name in kept), sorted(kept)  # not due: left in place
        assert aside and not any(name.startswith("2026-12-01") for name in aside), aside
        assert aside, sorted(p.name for p in days.iterdir())  # before: the pages stayed, listing an earlier state
        assert not (out / "report.html").exists() and (out / "report.out-of-date.html").exists()
        monkeypatch.setattr(report_days, "atomic_open", real_open)
        s.screen_to(out, [str(tmp_path / "in")])
    for name, content in kept.items():  # what stayed was already what the complete write shows
        assert (days / name).read_bytes() == content, name
    assert not [p for p in days.iterdir() if ".out-of-date." in p.name]
    assert not (out / "report.out-of-date.html").exists()


def test_an_out_of_date_copy_that_cannot_be_removed_never_fails_a_run(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Windows: the renamed CSV open in Excel made every later run exit 2 after writing everything."""
    good_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out / "results.out-of-date.csv").mkdir(parents=True)  # a copy that cannot be removed
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        s.screen_to(out, [str(tmp_path / "in")])
    assert (out / "results.csv").is_file() and (out / "results.out-of-date.csv").exists()


def test_the_not_updated_line_names_a_read_only_file_too(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`chattr +i results.csv`: the summary said only "open in another program (Excel?)"."""
    import uopsl.runtime.api as api
    from uopsl.runtime.cli import main

    good_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["--backend", "ort-cpu", "--threads", "1", "--no-progress", "--no-overlays"]
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), *args]) == 0

    def immutable(*a: Any, **k: Any) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(out / "results.csv"))

    monkeypatch.setattr(api, "write_csv", immutable)
    monkeypatch.setattr(api, "_held_open", lambda path: True)
    good_photos(tmp_path / "in", 1, start=1)
    capsys.readouterr()
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), *args]) == 0
    err = capsys.readouterr().err
    assert f"NOT updated: {out / 'results.csv'} is open in another program (Excel?), or read-only or immutable" in err
