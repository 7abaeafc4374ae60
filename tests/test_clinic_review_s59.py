"""Fixes from session 59's review by a clinic's IT person running `uopsl-screen watch` beside a fundus camera
and printing the report for the nurse each day."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.watch import WatchConfig, watch_folder


@pytest.mark.parametrize("linked", [False, True])
def test_a_watch_stopped_inside_a_batch_names_the_files_of_that_batch_it_did_not_screen(
        tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, linked: bool) -> None:  # noqa: F811
    """A review's watch stopped 1.6 s into a batch of 39 photographs: 7 rows, exit 0, and no word of the other 32
    (they had been taken from the folder, so the 'seen but not screened' warning left them out). A folder
    watched through a link (macOS /tmp, a linked drop folder) must name only the unscreened ones too."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    if linked:
        (tmp_path / "link").symlink_to(inbox, target_is_directory=True)
    for i in range(6):
        fundus_jpeg(inbox / f"p{i}.jpg", seed=i)
    results: list[object] = []

    def stop_after_two(r: object) -> None:
        results.append(r)
        if len(results) == 2:
            raise KeyboardInterrupt

    cfg = WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=30, refresh_s=0)
    with caplog.at_level(logging.WARNING), Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, tmp_path / "link" if linked else inbox, tmp_path / "out", cfg,
                               on_result=stop_after_two)
    assert summary.screened == 2
    said = [r.getMessage() for r in caplog.records if "seen but not screened" in r.getMessage()]
    assert said and said[0].startswith("4 files seen but not screened"), caplog.text
    assert "being screened as it stopped" in said[0]
    rows = {Path(str(getattr(r, "source"))).name for r in results}
    assert all(f"p{i}.jpg" in said[0] for i in range(6) if f"p{i}.jpg" not in rows)


def test_a_folder_screened_into_on_two_days_gets_a_page_per_day_below_the_page_limit(tmp_path: Path) -> None:
    """Below 1,000 photographs the report was one list over every day: each day's printout repeated yesterday's
    referrals, and yesterday's retakes stood in the 'retake now' box (a review of a clinic's day 2)."""
    from datetime import timedelta

    from test_report_days import DAY1, DAY2, _manifest, _pages, _row, _shown_ids
    from uopsl.runtime.report_days import screening_day, write_reports

    rows = ([_row(i, DAY1 + timedelta(minutes=i)) for i in range(3)]
            + [_row(10, DAY1 + timedelta(minutes=5), status="ungradable")]
            + [_row(20 + i, DAY2 + timedelta(minutes=i)) for i in range(2)])
    index = write_reports(rows, tmp_path, _manifest()).read_text(encoding="utf-8")
    pages = _pages(tmp_path)
    d1, d2 = (screening_day(_row(0, d)) for d in (DAY1, DAY2))
    assert set(pages) == {f"{d1}.html", f"{d2}.html"} and "days/" in index
    today = pages[f"{d2}.html"]
    assert sorted(_shown_ids(today)) == sorted(r["id"] for r in rows[4:])
    assert "id='retakes'" not in today and "id='retakes'" in pages[f"{d1}.html"]


def test_the_retake_list_leaves_out_a_photograph_retaken_under_its_name_and_names_folders_that_clash(
        tmp_path: Path) -> None:
    from test_report_days import DAY1, _manifest, _row
    from uopsl.runtime.report import render_report

    from datetime import timedelta

    old = {**_row(1, DAY1, status="ungradable"), "file_replaced": True, "reasons": ["too_dark"],
           "replaced_at": (DAY1 + timedelta(minutes=3)).isoformat()}
    later = {**_row(4, DAY1, status="ungradable"), "file_replaced": True, "reasons": ["too_dark"],
             "replaced_at": (DAY1 + timedelta(days=40)).isoformat()}  # the name reused for another patient?
    a = {**_row(2, DAY1, status="ungradable"), "source": "/drop/Garcia Maria/IMG_0001.jpg", "reasons": ["too_dark"]}
    b = {**_row(3, DAY1, status="ungradable"), "source": "/drop/Lopez Juan/IMG_0001.jpg", "reasons": ["blurred"]}
    page = render_report([old, a, b, later], tmp_path, _manifest())
    box = page[page.index("id='retakes'"):page.index("</div>", page.index("id='retakes'"))]
    assert "Retake or copy again now (3)" in box and "p001.jpg" not in box and "p004.jpg" in box
    assert "retaken under the same name" in page  # its own count card, not "ungradable (retake)"
    assert "Garcia Maria/IMG_0001.jpg" in box and "Lopez Juan/IMG_0001.jpg" in box


def test_the_console_summary_names_clashing_files_with_their_folder_and_counts_a_retake_as_done(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from uopsl.runtime.api import RunSummary
    from uopsl.runtime.cli import _echo_summary

    s = RunSummary(tmp_path, counts={"ok": 1, "ungradable": 3, "error": 0}, screened=4, retaken=1)
    failed = [("/d/Garcia Maria/IMG_0001.jpg", "ungradable", ("too_dark",)),
              ("/d/Lopez Juan/IMG_0001.jpg", "ungradable", ("blurred",))]
    _echo_summary(s, tmp_path, failed)
    err = capsys.readouterr().err
    assert "Garcia Maria/IMG_0001.jpg (too dark)" in err and "Lopez Juan/IMG_0001.jpg" in err
    assert "1 photograph retaken under the same name" in err and "more in the report" not in err
    assert s.exit_code == 1 and RunSummary(tmp_path, counts={"ok": 1, "ungradable": 1}, retaken=1).exit_code == 0


def test_a_watch_counts_a_retake_saved_under_the_failed_photographs_name_as_done(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """The retake screened fine, yet the summary said '1 ungradable (retake)' and the watch exited 1."""
    import threading
    import time

    import cv2
    import numpy as np

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cv2.imwrite(str(inbox / "IMG_0001.jpg"), np.full((320, 320, 3), 20, np.uint8))  # too dark: ungradable
    good = fundus_jpeg(tmp_path / "good.jpg", seed=3)
    cfg = WatchConfig(settle_ms=100, poll_s=0.05, max_images=2, timeout_s=30, refresh_s=0)
    result: dict = {}
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        t = threading.Thread(target=lambda: result.update(s=watch_folder(s, inbox, tmp_path / "out", cfg)))
        t.start()
        for _ in range(200):  # until the dark photograph has its row
            if (tmp_path / "out" / "results.jsonl").is_file() and (tmp_path / "out" / "results.jsonl").stat().st_size:
                break
            time.sleep(0.05)
        (inbox / "IMG_0001.jpg.part").write_bytes(good.read_bytes())
        (inbox / "IMG_0001.jpg.part").replace(inbox / "IMG_0001.jpg")
        t.join(60)
    assert not t.is_alive()
    summary = result["s"]
    assert summary.counts.get("ungradable") == 1 and summary.counts.get("ok") == 1 and summary.retaken == 1
    assert summary.exit_code == 0


def test_the_index_of_a_small_folder_of_two_days_says_why_and_lists_only_what_is_still_to_retake(
        tmp_path: Path) -> None:
    from dataclasses import replace
    from datetime import timedelta

    from test_report_days import DAY1, DAY2, _manifest, _row
    from uopsl.runtime.report_days import write_reports

    rows = [_row(1, DAY1), {**_row(2, DAY1, status="ungradable"), "file_replaced": True,
                            "replaced_at": (DAY1 + timedelta(minutes=2)).isoformat()},
            _row(3, DAY2 + timedelta(minutes=1), status="ungradable")]
    index = write_reports(rows, tmp_path, _manifest()).read_text(encoding="utf-8")
    assert "screened on more than one day" in index and "too many for one page" not in index
    retakes = index[index.index("<h2>Photographs to retake or copy again (1)</h2>"):]
    assert rows[2]["source"].rsplit("/", 1)[-1] in retakes and rows[1]["source"].rsplit("/", 1)[-1] not in retakes
    m = _manifest()
    none = replace(m, classes=tuple(replace(c, referable=False) for c in m.classes))
    assert "id='refers-no-one'" in write_reports(rows, tmp_path, none).read_text(encoding="utf-8")


def test_a_retake_after_a_watch_restart_counts_as_done_and_done_files_are_not_named_as_unscreened(
        tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """The review of the change: a retake saved after `watch` restarted still gave exit 1 ('... earlier run'), and
    a watch stopped in its first batch after a restart named files screened by earlier runs as unscreened."""
    import threading
    import time

    import cv2
    import numpy as np

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cv2.imwrite(str(inbox / "IMG_0001.jpg"), np.full((320, 320, 3), 20, np.uint8))  # too dark: ungradable
    for i in range(3):
        fundus_jpeg(inbox / f"a{i}.jpg", seed=10 + i)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        s.screen_to(out, [inbox])  # an earlier session
        for i in range(2):
            fundus_jpeg(inbox / f"z{i}.jpg", seed=20 + i)
        results: list[object] = []

        def stop_after_one(r: object) -> None:
            results.append(r)
            raise KeyboardInterrupt

        cfg = WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=30, refresh_s=0)
        with caplog.at_level(logging.WARNING):
            watch_folder(s, inbox, out, cfg, on_result=stop_after_one)
        said = [r.getMessage() for r in caplog.records if "seen but not screened" in r.getMessage()]
        assert said and said[0].startswith("1 file seen but not screened"), said
        good = fundus_jpeg(tmp_path / "good.jpg", seed=3)
        cfg = WatchConfig(settle_ms=100, poll_s=0.05, max_images=2, timeout_s=30, refresh_s=0)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(s=watch_folder(s, inbox, out, cfg)))
        t.start()
        time.sleep(1.0)  # the restarted watch has taken the folder (the dark photograph: an earlier run's row)
        (inbox / "IMG_0001.jpg.part").write_bytes(good.read_bytes())
        (inbox / "IMG_0001.jpg.part").replace(inbox / "IMG_0001.jpg")
        t.join(60)
    assert not t.is_alive()
    summary = result["s"]
    assert summary.retaken == 1 and summary.exit_code == 0, (summary.counts, summary.retaken)
    assert not [e for e in summary.earlier_failed if e[0].endswith("IMG_0001.jpg")]


def test_a_folder_renamed_during_a_watch_keeps_its_photographs_screened_now(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """A review: 'New Patient' renamed to 'Garcia Maria' during the watch; the summary then read '0 screened now,
    2 from an earlier run' for two photographs this watch had screened minutes before."""
    import threading
    import time

    inbox = tmp_path / "inbox"
    (inbox / "New Patient").mkdir(parents=True)
    for i in range(2):
        fundus_jpeg(inbox / "New Patient" / f"p{i}.jpg", seed=30 + i)
    cfg = WatchConfig(settle_ms=100, poll_s=0.05, timeout_s=6, refresh_s=0, rescan_s=0.2)
    result: dict = {}
    jsonl = tmp_path / "out" / "results.jsonl"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        t = threading.Thread(target=lambda: result.update(s=watch_folder(s, inbox, tmp_path / "out", cfg)))
        t.start()
        for _ in range(200):
            if jsonl.is_file() and len(jsonl.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        (inbox / "New Patient").rename(inbox / "Garcia Maria")
        t.join(60)
    assert not t.is_alive()
    summary = result["s"]
    moved = [r for r in (json.loads(x) for x in jsonl.read_text().splitlines()) if r.get("moved_from")]
    assert len(moved) == 2, jsonl.read_text()
    assert (summary.screened, summary.skipped) == (2, 0) and summary.counts.get("ok") == 2
