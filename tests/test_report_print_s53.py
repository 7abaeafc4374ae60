"""report.html printed and read aloud: a session-53 review of the page as a clinic prints and files it (A4, often
black and white) and as a screen reader reads it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from test_report_readability import _manifest, _referred, _row
from uopsl.runtime.bundle import ClassSpec
from uopsl.runtime.report import PageInfo, render_report, report_parts

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _retake(name: str, reasons: list[str], status: str = "ungradable") -> dict[str, Any]:
    return _row(name, status, reasons=reasons)


def test_a_decodable_but_unusable_image_is_not_called_unreadable() -> None:
    # A 1x1 PNG read "Unreadable file" (defined on the page as "could not be opened") over advice to copy the
    # full-size photograph.
    page = render_report([_retake("tiny.png", ["too_small"], "error"), _retake("big.tif", ["too_large"], "error"),
                          _retake("both.jpg", ["several_fov"], "error"),
                          _retake("empty.jpg", ["undecodable"], "error")], "/nonexistent", _manifest())
    verdicts = re.findall(r"<div class='verdict v-error'>([^<]*)</div>", page)
    assert verdicts == ["Unusable image"] * 3 + ["Unreadable file"]
    assert "<b class='v-error'>Unusable image</b>: the file opened but cannot be screened" in page


def test_the_retakes_are_listed_by_name_at_the_top_and_each_groups_rows_are_given() -> None:
    rows = [_referred() for _ in range(3)] + [_retake("dark.jpg", ["too_dark", "low_contrast"]),
                                              _retake("cut.jpg", ["undecodable"], "error")]
    rows += [_row("fine.jpg", refer=False, probs={"dr": 0.1})]
    for k, r in enumerate(rows):
        r["id"] = f"p{k}"
    page = render_report(rows, "/nonexistent", _manifest())
    top = page[:page.index("<table id='results'")]
    assert ("In the table below: refer: rows #1-#3; retake or copy again: rows #4-#5; no referable finding: "
            "row #6.") in top
    box = re.search(r"<div class='retakes' id='retakes'>.*?</div>", top, flags=re.S)
    assert box is not None and "Retake or copy again now (2)" in box.group(0)
    assert re.findall(r"<li><a href='#r-(p\d)'>#(\d)</a> ([^<]*)</li>", box.group(0)) == [
        ("p3", "4", "dark.jpg: too dark"), ("p4", "5", "cut.jpg: damaged file")]
    # A page of part 5 numbers from 4001, and a long list is cut with the rows of the rest.
    many = [_retake(f"d{k}.jpg", ["blurred"]) for k in range(103)]
    part = "".join(report_parts(many, "/nonexistent", _manifest(), page=PageInfo(label="part 5", first=4001)))
    assert "Retake or copy again now (103)" in part and part.count("<li>") == 100
    assert "<p>and 3 more, rows #4101-#4103</p>" in part
    assert "no retake" not in render_report([_referred()], "/nonexistent", _manifest()).lower()
    assert "class='retakes'" not in render_report([_referred()], "/nonexistent", _manifest())


def test_the_order_is_explained_and_each_group_has_a_heading_row() -> None:
    page = render_report([_referred(), _retake("dark.jpg", ["too_dark"])], "/nonexistent", _manifest())
    assert "that is a count, not a measure of how severe or urgent a case is" in page
    heads = re.findall(r"<tr class='group' id='(g-\w+)'><th colspan='6' scope='colgroup'>([^<]*)<", page)
    assert heads == [("g-refer", "Refer: 1 photograph"),
                     ("g-retake", "Retake or copy again (ungradable, unreadable or not screened): 1 photograph")]


def test_a_screen_reader_hears_names_not_thumbnail_and_heatmap() -> None:
    rows = [_referred(), _retake("dark.jpg", ["too_dark"])]
    page = render_report(rows, "/nonexistent", _manifest())
    assert "<caption class='sr'>Screening results" in page
    assert page.count("<th scope='col'>") == 6 and page.count("<th scope='row' class='src'>") == 2
    assert "<span class='sr'>no image</span>" in page  # no picture files here: said, not "em dash"
    # Each count card's link holds its words: links were read as bare numbers ("39").
    assert "<a href='#g-refer'><b id='n-refer'>1</b>refer</a>" in page
    assert "<a href='#g-retake'><b>1</b>ungradable (retake)</a>" in page
    assert ".sr { position: absolute; width: 1px; height: 1px; overflow: hidden;" in page


def test_a_gradable_photograph_near_the_quality_limit_says_so() -> None:
    rows = [_row(f"q{q}.jpg", refer=True, probs={"dr": 0.9}, positive=["dr"], quality_score=q)
            for q in (0.56, 0.6, 0.93)] + [_row("dark.jpg", "ungradable", reasons=["too_dark"], quality_score=0.3)]
    page = render_report(rows, "/nonexistent", _manifest())
    flagged = re.findall(r"class='fname' title='[^']*'>([^<]*)<.*?(Quality near the limit \(score ([\d.]+))?</div>",
                         page, flags=re.S)
    assert page.count("Quality near the limit") == 1
    assert "Quality near the limit (score 0.56; below 0.50 is ungradable)" in page and flagged


def test_a_folder_given_relative_is_shown_where_the_key_says_the_file_is() -> None:
    row = _row("x.jpg", folder="bad", refer=False, probs={"dr": 0.1})
    row["key"] = "/clinic/usb/bad/x.jpg|1000|1"
    page = render_report([row], "/nonexistent", _manifest())
    assert "<span class='dir'>/<wbr>clinic/<wbr>usb/<wbr>bad</span>" in page
    other = dict(row, key="/elsewhere/y.jpg|1000|1")  # a key naming another file: the row's own text stays
    assert "<span class='dir'>bad</span>" in render_report([other], "/nonexistent", _manifest())


def test_scores_wrap_under_a_long_class_name_and_row_numbers_have_room_for_five_digits() -> None:
    page = render_report([_referred()], "/nonexistent", _manifest())
    assert ".probs .val { white-space: nowrap; }" in page and "white-space: nowrap; overflow-wrap: normal" not in page
    assert "col.c-n { width: 4.2em; }" in page and "col.c-n { width: 3.6em; }" in page
    assert "td.n { color: var(--mute); white-space: nowrap;" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_in_chromium_no_number_or_score_runs_out_of_its_cell(tmp_path: Path) -> None:
    # Laid out by the browser: a five-digit row number and a 24-letter class name with its score and
    # threshold must fit their cells (before: "4991" ran into the file name; the threshold ran off the page).
    long_classes = tuple(replace(c, name="hypertensive_retinopathy") if c.name == "glaucoma" else c
                         for c in _manifest().classes)
    m = _manifest(classes=(*long_classes, ClassSpec("pathologic_myopia", ("x",), threshold=0.024, referable=True)))
    rows = [_row(f"{k:04d}_OI_f_1.jpg", refer=True, positive=["hypertensive_retinopathy"],
                 probs={"normal": 0.3, "dr": 0.1, "amd": 0.05, "hypertensive_retinopathy": 0.979,
                        "pathologic_myopia": 0.117}) for k in range(4)]
    page = "".join(report_parts(rows, tmp_path, m, page=PageInfo(label="part 100", first=99991)))
    probe = ("<script>const bad=[];document.querySelectorAll('td.n, td.probs').forEach(function(c){"
             "if(c.scrollWidth>c.clientWidth+1)bad.push(c.className+':'+c.textContent.slice(0,30));});"
             "document.body.setAttribute('data-overflow', bad.length ? bad.join('|') : 'none');</script>")
    html = tmp_path / "r.html"
    html.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--window-size=820,1200", "--dump-dom",
                          html.as_uri()], check=True, capture_output=True, timeout=120, text=True).stdout
    found = re.search(r'data-overflow="([^"]*)"', dom)
    assert found is not None, "the probe did not run"
    assert found.group(1) == "none"
