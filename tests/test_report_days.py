"""A results folder too big for one report page: report.html becomes an index and each screening day has pages.

What a clinic running ``watch`` for weeks relies on: every photograph is on exactly one day page, most
urgent first; the index's links all lead somewhere; a refresh rewrites only the pages whose photographs
changed (today's), so the month behind them is not rewritten every few seconds; and a folder that fits on
one page keeps the one self-contained report.html it always had.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.bundle import ClassSpec, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, encode_jpeg, encode_png
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.report_days import DAYS_DIR, FINGERPRINTS, plan_pages, screening_day, write_reports

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# Noon UTC on three days: the same local day in every time zone from UTC-11 to UTC+11.
DAY1, DAY2, DAY3 = (datetime(2026, 11, d, 12, 0, tzinfo=timezone.utc) for d in (26, 27, 28))


def _manifest() -> Manifest:
    classes = (ClassSpec("normal", ("healthy retina",), threshold=0.5, referable=False),
               ClassSpec("dr", ("microaneurysms",), threshold=0.6, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(), files=(), model_name="uopsl",
                    content_sha256="cd" * 32)


def _row(i: int, when: datetime | None, *, status: str = "ok", dr: float = 0.1, sha: str | None = None,
         folder: str = "/drop") -> dict[str, Any]:
    refer = status == "ok" and dr >= 0.6
    row: dict[str, Any] = {
        "id": f"p{i:03d}", "source": f"{folder}/p{i:03d}.jpg", "key": f"{folder}/p{i:03d}.jpg|1000|{i}",
        "sha256": sha or f"{i:064x}", "status": status, "refer": refer if status == "ok" else None,
        "positive": ["dr"] if refer else [], "probs": {"normal": 1 - dr, "dr": dr} if status == "ok" else {},
        "reasons": ["blurred"] if status == "ungradable" else [], "error": "", "heatmap_class": "dr",
    }
    if when is not None:
        row["screened_at"] = when.isoformat()
    return row


def _pages(out: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((out / DAYS_DIR).glob("*.html"))}


def _shown_ids(page: str) -> list[str]:
    return re.findall(r"<tr class='result [^']*' data-status='\w+' id='r-(p\d+)'>", page)


def test_a_folder_that_fits_one_page_keeps_one_self_contained_report(tmp_path: Path) -> None:
    rows = [_row(i, DAY1 + timedelta(minutes=i)) for i in range(5)]  # one day (two split: test_clinic_review_s59)
    (tmp_path / DAYS_DIR).mkdir()
    (tmp_path / DAYS_DIR / "2026-11-01.html").write_text("an old day page", encoding="utf-8")
    (tmp_path / DAYS_DIR / FINGERPRINTS).write_text("{}", encoding="utf-8")
    path = write_reports(rows, tmp_path, _manifest(), max_rows=5)
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html" and len(_shown_ids(page)) == 5
    assert not (tmp_path / DAYS_DIR).exists(), "pages of an earlier split report are removed, and their folder"
    # A file the user put into the folder stays, and so does the folder.
    (tmp_path / DAYS_DIR).mkdir()
    (tmp_path / DAYS_DIR / "notes.txt").write_text("mine", encoding="utf-8")
    write_reports(rows, tmp_path, _manifest(), max_rows=5)
    assert (tmp_path / DAYS_DIR / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_each_photograph_is_on_exactly_one_page_of_its_day_most_urgent_first(tmp_path: Path) -> None:
    rows = ([_row(i, DAY1 + timedelta(minutes=i), dr=0.05 * i) for i in range(3)]
            + [_row(10 + i, DAY2 + timedelta(minutes=i), dr=(0.9 if i == 4 else 0.1 + 0.01 * i)) for i in range(7)]
            + [_row(30, DAY3, status="ungradable"), _row(31, None)])
    write_reports(rows, tmp_path, _manifest(), max_rows=4)
    pages = _pages(tmp_path)
    d1, d2, d3 = (screening_day(_row(0, d)) for d in (DAY1, DAY2, DAY3))
    assert set(pages) == {f"{d1}.html", f"{d2}.html", f"{d2}-2.html", f"{d3}.html", "undated.html"}
    shown = [i for page in pages.values() for i in _shown_ids(page)]
    assert sorted(shown) == sorted(r["id"] for r in rows), "every row once, none twice"
    # Day 2's seven photographs: the referred one first, then in screening order (not by score), 4 + 3.
    assert _shown_ids(pages[f"{d2}.html"]) == ["p014", "p010", "p011", "p012"]
    assert _shown_ids(pages[f"{d2}-2.html"]) == ["p013", "p015", "p016"]
    assert f"Retinal screening report &middot; {d2}, part 1 of 2" in pages[f"{d2}.html"]
    # Row times on a day's page are clock times of that day (the page names the day).
    local = DAY1.astimezone()
    assert f"screened {local:%H:%M}</span>" in pages[f"{d1}.html"]
    assert f"screened {local:%Y-%m-%d}" not in pages[f"{d1}.html"]


def test_index_counts_days_newest_first_and_every_link_leads_to_a_page_and_row(tmp_path: Path) -> None:
    rows = ([_row(i, DAY1 + timedelta(minutes=i), dr=0.9 if i == 0 else 0.1) for i in range(3)]
            + [_row(10 + i, DAY2 + timedelta(minutes=i), dr=0.95 if i < 2 else 0.1) for i in range(3)]
            + [_row(20, DAY2 + timedelta(hours=1), status="ungradable")])
    write_reports(rows, tmp_path, _manifest(), max_rows=3)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    pages = _pages(tmp_path)
    d1, d2 = (screening_day(_row(0, d)) for d in (DAY1, DAY2))
    day_rows = re.findall(r"<tr><td>([\d-]+)</td><td>(\d+)</td><td class='refer'>(\d+)</td><td>(\d+)</td>"
                          r"<td>(\d+)</td><td>(\d+)</td>", index)
    assert day_rows == [(str(d2), "4", "2", "1", "1", "0"), (str(d1), "3", "1", "2", "0", "0")]
    assert "<b id='n-refer'>3</b>" in index and "<b>7</b>images" in index
    # Referred photographs, newest first, each linked to its row on its day's page.
    referred = re.findall(r"<a href='days/([^'#]+)#r-(p\d+)'>",
                          index.split("Referred photographs")[1].split("Photographs to retake")[0])
    assert referred == [(f"{d2}.html", "p011"), (f"{d2}.html", "p010"), (f"{d1}.html", "p000")]
    # And the photographs to retake (session 53: a split folder's index listed referrals only).
    retakes = index.split("<h2>Photographs to retake or copy again (1)</h2>")[1]
    assert re.findall(r"<a href='days/([^'#]+)#r-(p\d+)'>", retakes) == [(f"{d2}.html", "p020")]
    assert "<td>blurred</td>" in retakes
    for href in set(re.findall(r"href='days/([^'#]+)(?:#r-(p\d+))?'", index)):
        page, anchor = href
        assert page in pages, f"the index links to a missing page {page}"
        assert not anchor or f"id='r-{anchor}'" in pages[page]
    # Each day page links back to the index and to its neighbours, which exist.
    for name, page in pages.items():
        links = re.findall(r"<a href='([^']+)'>", page.split("<p class='nav noprint'>")[1].split("</p>")[0])
        assert links[0] == "../report.html"
        assert all((tmp_path / DAYS_DIR / link).is_file() for link in links[1:]), name


def test_a_refresh_rewrites_only_the_pages_whose_photographs_changed(tmp_path: Path) -> None:
    old = [_row(i, DAY1 + timedelta(minutes=i)) for i in range(4)]
    today = [_row(10 + i, DAY2 + timedelta(minutes=i)) for i in range(2)]
    write_reports(old + today, tmp_path, _manifest(), max_rows=4)
    d1, d2 = (f"{screening_day(_row(0, d))}.html" for d in (DAY1, DAY2))
    inode = {n: (tmp_path / DAYS_DIR / n).stat().st_ino for n in (d1, d2)}
    index_inode = (tmp_path / "report.html").stat().st_ino

    write_reports(old + today + [_row(12, DAY2 + timedelta(hours=2), dr=0.8)], tmp_path, _manifest(), max_rows=4)
    assert (tmp_path / DAYS_DIR / d1).stat().st_ino == inode[d1], "yesterday's page was rewritten"
    assert (tmp_path / DAYS_DIR / d2).stat().st_ino != inode[d2], "today's page was not rewritten"
    assert (tmp_path / "report.html").stat().st_ino != index_inode
    assert "p012" in _shown_ids((tmp_path / DAYS_DIR / d2).read_text(encoding="utf-8"))

    # The same rows again: nothing but the index is written.
    inode = {n: (tmp_path / DAYS_DIR / n).stat().st_ino for n in (d1, d2)}
    write_reports(old + today + [_row(12, DAY2 + timedelta(hours=2), dr=0.8)], tmp_path, _manifest(), max_rows=4)
    assert {n: (tmp_path / DAYS_DIR / n).stat().st_ino for n in (d1, d2)} == inode

    # An image an old page embeds was replaced: that page is made again (it embeds the file).
    (tmp_path / THUMB_DIR).mkdir()
    rgb = np.full((40, 40, 3), 90, np.uint8)
    (tmp_path / THUMB_DIR / "p001.jpg").write_bytes(encode_jpeg(rgb, 80))
    write_reports(old + today + [_row(12, DAY2 + timedelta(hours=2), dr=0.8)], tmp_path, _manifest(), max_rows=4)
    assert (tmp_path / DAYS_DIR / d1).stat().st_ino != inode[d1]

    # A lost fingerprint file, or a deleted page, makes the pages again rather than trusting what is there.
    (tmp_path / DAYS_DIR / d2).unlink()
    write_reports(old + today + [_row(12, DAY2 + timedelta(hours=2), dr=0.8)], tmp_path, _manifest(), max_rows=4)
    assert (tmp_path / DAYS_DIR / d2).is_file()


def test_pages_of_days_that_no_longer_have_photographs_are_removed(tmp_path: Path) -> None:
    rows = [_row(i, DAY1) for i in range(3)] + [_row(10 + i, DAY2) for i in range(3)]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    d1 = str(screening_day(_row(0, DAY1)))
    assert {f"{d1}.html", f"{d1}-2.html"} <= set(_pages(tmp_path))
    # The same photographs screened again on day 3 (results keep the latest row per photograph).
    rows = [_row(i, DAY3) for i in range(3)] + [_row(10 + i, DAY2) for i in range(3)]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    assert not any(name.startswith(d1) for name in _pages(tmp_path))


def test_a_photograph_found_on_two_days_is_named_on_both_pages_and_the_index(tmp_path: Path) -> None:
    same = "ab" * 32
    rows = ([_row(0, DAY1, sha=same, folder="/drop/alice"), _row(1, DAY1)]
            + [_row(10, DAY2, sha=same, folder="/drop/bob"), _row(11, DAY2)])
    write_reports(rows, tmp_path, _manifest(), max_rows=3)
    pages = _pages(tmp_path)
    d1, d2 = (f"{screening_day(_row(0, d))}" for d in (DAY1, DAY2))
    assert f"Same photograph as <a href='{d2}.html#r-p010'>p010.jpg ({d2})</a>" in pages[f"{d1}.html"]
    assert f"Same photograph as <a href='{d1}.html#r-p000'>p000.jpg ({d1})</a>" in pages[f"{d2}.html"]
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "1 photograph appears more than once" in index and f"days/{d2}.html#r-p010" in index


def test_file_names_with_markup_are_escaped_on_the_index(tmp_path: Path) -> None:
    rows = [_row(i, DAY1, dr=0.9, folder="/drop/<b>x") for i in range(2)] + [_row(5, DAY2)]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "/drop/<b>x" not in index and "/drop/&lt;b&gt;x" in index


def test_page_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_rows must be >= 1"):
        write_reports([_row(0, DAY1)], tmp_path, _manifest(), max_rows=0)
    with pytest.raises(ConfigError, match="max_rows must be >= 1"):
        plan_pages([_row(0, DAY1)], ["dr"], 0)


def test_screen_to_splits_a_big_folder_into_pages_that_embed_the_runs_images(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the API a clinic's tools use: the day pages embed the thumbnails the run wrote."""
    import uopsl.runtime.report_days as report_days
    from uopsl.runtime.api import Screener

    photos = [fundus_jpeg(tmp_path / "in" / f"g{i}.jpg", seed=i) for i in range(3)]
    monkeypatch.setattr(report_days, "ONE_PAGE_MAX_ROWS", 2)
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        s.screen_to(tmp_path / "out", photos, overlays=True)
    pages = _pages(tmp_path / "out")
    assert len(pages) == 2, "one day's three photographs on pages of two"
    shown = [i for p in pages.values() for i in re.findall(r"id='r-(g\d-[0-9a-f]{8})'", p)]
    assert sorted(x.split("-")[0] for x in shown) == ["g0", "g1", "g2"]
    assert all(p.count('<img class="thumb" alt="" src="data:image/jpeg;base64,') == len(
        re.findall(r"id='r-", p)) for p in pages.values())
    index = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "too many for one page" in index


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_index_and_a_day_page_render_in_headless_chromium(tmp_path: Path) -> None:
    rows = [_row(i, DAY1 + timedelta(minutes=i), dr=0.9 if i % 2 else 0.2) for i in range(3)] + [_row(9, DAY2)]
    (tmp_path / THUMB_DIR).mkdir()
    (tmp_path / OVERLAY_DIR).mkdir()
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[16:48, 16:48] = (200, 80, 40)
    for r in rows:
        (tmp_path / THUMB_DIR / f"{r['id']}.jpg").write_bytes(encode_jpeg(rgb, 80))
        (tmp_path / OVERLAY_DIR / f"{r['id']}.png").write_bytes(encode_png(rgb))
        os.utime(tmp_path / THUMB_DIR / f"{r['id']}.jpg", (DAY2.timestamp(), DAY2.timestamp()))
        os.utime(tmp_path / OVERLAY_DIR / f"{r['id']}.png", (DAY2.timestamp(), DAY2.timestamp()))
    write_reports(rows, tmp_path, _manifest(), max_rows=3)
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]
    index = subprocess.run([*common, (tmp_path / "report.html").as_uri()], check=True, capture_output=True,
                           timeout=120, text=True).stdout
    assert index.count('<td class="refer">') == 2, "one line per day"
    day = str(screening_day(_row(0, DAY1)))
    page = subprocess.run([*common, (tmp_path / DAYS_DIR / f"{day}.html").as_uri()], check=True,
                          capture_output=True, timeout=120, text=True).stdout
    assert len(re.findall(r'<tr class="result [^"]*" data-status="ok"', page)) == 3
    assert page.count('<img class="thumb" alt="" src="data:image/jpeg;base64,') == 3


# -- review of the split (session 13): what the fingerprint must cover, and what the index must say -----------
def _inodes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (out / DAYS_DIR).glob("*.html")}


def test_pages_are_made_again_when_the_rendering_code_or_the_time_zone_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import uopsl.runtime.report_days as report_days

    rows = [_row(i, DAY1 + timedelta(minutes=i)) for i in range(2)] + [_row(9, DAY2)]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    before = _inodes(tmp_path)
    monkeypatch.setattr(report_days, "_code_hash", lambda: "a toolkit with a fixed advice text")
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    after = _inodes(tmp_path)
    assert all(after[n] != before[n] for n in before), "old days must show the fixed text too"

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        write_reports(rows, tmp_path, _manifest(), max_rows=2)
        day = screening_day(rows[0])
        page = (tmp_path / DAYS_DIR / f"{day}.html").read_text(encoding="utf-8")
        assert "screened 17:30</span>" in page, "12:00 UTC is 17:30 in India"
        assert all(_inodes(tmp_path)[n] != after[n] for n in after)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_other_arguments_to_run_do_not_make_the_month_again(tmp_path: Path) -> None:
    rows = [_row(i, DAY1) for i in range(2)] + [_row(9, DAY2)]
    write_reports(rows, tmp_path, _manifest(), {"inputs": ["/drop/a"]}, max_rows=2)
    before = _inodes(tmp_path)
    write_reports(rows, tmp_path, _manifest(), {"inputs": ["/drop/b", "/drop/c"]}, max_rows=2)
    assert _inodes(tmp_path) == before


def test_the_index_warns_of_rows_of_another_model_and_an_incomplete_duplicate_check(tmp_path: Path) -> None:
    rows = [_row(0, DAY1, dr=0.9), _row(1, DAY1), _row(9, DAY2)]
    rows[1]["model_sha256"] = "ff" * 32
    rows[2]["sha256"] = ""
    rows[2]["key"] = "/drop/p009.jpg|missing"  # no content hash and no file to read: it cannot be compared
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "id='other-bundle'><b>1 photograph(s) were screened with another model bundle</b>" in index
    assert "Duplicate check: 1 photograph(s) could not be compared" in index


def test_a_busy_day_refresh_decodes_only_the_new_photographs_images(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import uopsl.runtime.report as report

    rows = [_row(i, DAY1 + timedelta(seconds=i), dr=0.01 * (i % 50)) for i in range(100)] + [_row(500, DAY2)]
    (tmp_path / THUMB_DIR).mkdir()
    (tmp_path / OVERLAY_DIR).mkdir()
    rgb = np.full((16, 16, 3), 120, np.uint8)
    for r in rows + [_row(200, DAY1)]:
        (tmp_path / THUMB_DIR / f"{r['id']}.jpg").write_bytes(encode_jpeg(rgb, 80))
        (tmp_path / OVERLAY_DIR / f"{r['id']}.png").write_bytes(encode_png(rgb))
    monkeypatch.setattr(report, "_MAX_URIS", 4)  # a small floor, so the test needs few photographs
    report._URIS.clear()
    write_reports(rows, tmp_path, _manifest(), max_rows=10)
    made = []
    real = report._uri_put
    monkeypatch.setattr(report, "_uri_put", lambda path, *a: made.append(path.name) or real(path, *a))
    # A new referral on day 1 comes first and moves every one of the day's 100 rows to another part.
    write_reports(rows + [_row(200, DAY1 + timedelta(hours=1), dr=0.95)], tmp_path, _manifest(), max_rows=10)
    assert sorted(made) == ["p200.jpg", "p200.png"], f"{len(made)} images made again for one new photograph"


def test_a_photograph_copied_many_times_lists_a_few_copies_and_how_many(tmp_path: Path) -> None:
    same = "ee" * 32
    rows = [_row(i, DAY1, sha=same) for i in range(15)] + [_row(100 + i, DAY2, sha=same) for i in range(15)]
    write_reports(rows, tmp_path, _manifest(), max_rows=20)
    page = _pages(tmp_path)[f"{screening_day(rows[0])}.html"]
    notes = re.findall(r"<div class='dup'>Same photograph as (.*?)</div>", page)
    assert len(notes) == 15
    for n in notes:  # each of the 30 copies lists 10 of the 29 others by row number and name, and counts the rest
        listed = re.findall(r"#\d+ \((p\d{3}\.jpg)\)", n)
        assert len(set(listed)) == 10 and n.endswith(" and 19 more") and n.count("#") == 10, n


def test_parts_of_a_day_go_on_numbering_and_referrals_are_newest_first_across_time_zones(tmp_path: Path) -> None:
    rows = [_row(i, DAY1 + timedelta(minutes=i)) for i in range(5)] + [_row(9, DAY2)]
    write_reports(rows, tmp_path, _manifest(), max_rows=3)
    d1 = screening_day(rows[0])
    part2 = (tmp_path / DAYS_DIR / f"{d1}-2.html").read_text(encoding="utf-8")
    assert re.findall(r"<td class='n'[^>]*>(\d+)</td>", part2) == ["4", "5"]
    # Two referrals written with different offsets: 10:00+05:30 (04:30 UTC) is older than 05:00 UTC.
    a, b = _row(20, None, dr=0.9), _row(21, None, dr=0.9)
    a["screened_at"], b["screened_at"] = "2026-11-26T10:00:00+05:30", "2026-11-26T05:00:00+00:00"
    write_reports(rows + [a, b], tmp_path, _manifest(), max_rows=3)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"#r-(p02\d)'>", index.split("Referred photographs")[1]) == ["p021", "p020"]


def test_a_capped_referral_list_says_where_the_rest_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clinic review: "Referred photographs (1020, the newest 500 listed)" did not say where the others were."""
    import uopsl.runtime.report_days as report_days

    monkeypatch.setattr(report_days, "_MAX_REFERRALS", 2)
    rows = [_row(i, DAY1 + timedelta(minutes=i), dr=0.9) for i in range(3)] + [_row(10, DAY2, dr=0.95)]
    write_reports(rows, tmp_path, _manifest(), max_rows=3)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert ("Referred photographs (4, the newest 2 listed here; the other 2 are on their day's pages, linked "
            "above)") in index
    monkeypatch.setattr(report_days, "_MAX_REFERRALS", 3)
    write_reports(rows, tmp_path, _manifest(), max_rows=3)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "the newest 3 listed here; the other 1 is on its day's page, linked above)" in index
