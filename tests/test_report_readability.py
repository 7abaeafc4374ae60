"""report.html as a field-clinic nurse reads and prints it, and the terminal summary of ``uopsl-screen``.

The clinic review (numbers in the test names' docstrings) found a report that needed an engineer to read:
scores without thresholds, machine reason tags, a stale thumbnail next to an "Unreadable" verdict, a file
name printed as "bad/UPPER.J" / "PG", no identity on printed pages. Each test pins the rendered text.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import quality
from uopsl.runtime import report as report_mod
from uopsl.runtime.bundle import ClassSpec, Manifest
from uopsl.runtime.errors import ImageError
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, encode_jpeg, encode_png
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.reasons import REASON_TEXT, order_reasons
from uopsl.runtime.report import find_duplicates, render_report, write_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
SHA = "3975d2dbe11b6c07170f181b56c88df153f0689336d8a594a32ca06613316582"


def _manifest(**kw: Any) -> Manifest:
    classes = (
        ClassSpec("normal", ("healthy optic disc with a sharp margin",), threshold=0.105, referable=False),
        ClassSpec("dr", ("microaneurysms and dot-and-blot retinal hemorrhages", "hard exudates"), threshold=0.879,
                  referable=True),
        ClassSpec("amd", ("yellow drusen clustered at the macula",), threshold=0.012, referable=True),
        ClassSpec("glaucoma", ("enlarged cup-to-disc ratio",), threshold=0.0136, referable=True),
    )
    base = Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(), files=(), model_name="uopsl",
                    backbone="efficientnet_lite0", created="2026-11-29T12:04:00+00:00", content_sha256=SHA)
    return replace(base, **kw)


def _row(name: str, status: str = "ok", *, refer: bool | None = None, probs: dict[str, float] | None = None,
         positive: list[str] | None = None, reasons: list[str] | None = None, error: str = "",
         folder: str = "/clinic/photos", **extra: Any) -> dict[str, Any]:
    return {"id": Path(name).stem, "source": f"{folder}/{name}", "key": f"{folder}/{name}|1000|1",
            "status": status, "refer": refer, "positive": positive or [], "probs": probs or {},
            "reasons": reasons or [], "error": error, "heatmap_class": "amd" if status == "ok" else "", **extra}


def _referred() -> dict[str, Any]:
    # bad/dup_a.jpg of the review: dr 0.564 plain, amd 0.038 bold; "normal" was listed as positive.
    return _row("dup_a.jpg", refer=True, probs={"normal": 0.40, "dr": 0.564, "amd": 0.038, "glaucoma": 0.002},
                positive=["normal", "amd"])


def _cell(page: str, cls: str, n: int = 0) -> str:
    """The n-th ``<td class='cls'>`` cell's inner HTML."""
    cells = re.findall(rf"<td class='{cls}'>(.*?)</td>", page, flags=re.S)
    return cells[n]


# -- 12: thresholds, legend, findings, what Refer means ------------------------------------------------------
def test_each_score_shows_its_threshold_and_bold_means_a_finding() -> None:
    """12: "dr 0.564" plain next to a bold "amd 0.038" is explained by the thresholds beside them."""
    page = render_report([_referred()], "/nonexistent", _manifest())
    probs = _cell(page, "probs")
    assert "dr <span class='val'>0.564 <span class='cmp'>&lt; 0.879</span></span>" in probs
    # A finding is said in words too (a screen reader does not announce bold; session 53).
    assert ("<span class='pos'>amd <span class='val'>0.038 <span class='cmp'>&ge; 0.012</span></span>"
            "<span class='sr'> finding</span></span>") in probs
    assert probs.count("<span class='sr'> finding</span>") == 1
    # normal is above its threshold but not referable: never bold, and shown without a comparison, which read
    # like a finding on a referred row (session 53's review).
    assert "<span>normal <span class='val'>0.400 <span class='cmp'>(not referable)</span></span></span>" in probs
    assert "0.105" not in probs
    assert "Score vs threshold" in page


def test_threshold_and_score_that_round_alike_get_more_decimals() -> None:
    """12: "0.879 < 0.879" would contradict itself; the pair gets decimals until it differs."""
    row = _row("a.jpg", refer=False, probs={"normal": 0.01, "dr": 0.8791, "amd": 0.001, "glaucoma": 0.001})
    probs = _cell(render_report([row], "/nonexistent", _manifest()), "probs")
    assert "dr <span class='val'>0.87910 <span class='cmp'>&lt; 0.87914</span>" in _cell(
        render_report([row], "/nonexistent", _manifest(classes=tuple(
            replace(c, threshold=0.87914) if c.name == "dr" else c for c in _manifest().classes))), "probs")
    assert "glaucoma <span class='val'>0.001 <span class='cmp'>&lt; 0.014</span>" in probs


def test_non_referable_class_is_never_a_finding_of_a_referred_eye() -> None:
    """12: "positive: glaucoma, normal" on a referred eye listed a healthy-retina class as a finding."""
    page = render_report([_referred()], "/nonexistent", _manifest())
    res = _cell(page, "res")
    assert "Found: <b>amd</b> (age-related macular degeneration)" in res
    assert "normal" not in res and "positive:" not in page


def test_legend_comes_from_the_manifest_and_refer_and_rule_are_said_in_words() -> None:
    """12: class names, descriptions and thresholds from ClassSpec; Refer and 'rule: any_referable' in words."""
    m = _manifest(classes=(*_manifest().classes,
                           ClassSpec("x_new", ("<img src=x onerror=alert(1)>",), threshold=0.3, referable=False)))
    page = render_report([_referred()], "/nonexistent", m)
    legend = re.search(r"<table class='legend'>.*?</table>", page, flags=re.S)
    assert legend is not None
    text = legend.group(0)
    assert "<b>dr</b></td><td class='desc'>diabetic retinopathy<div class='desc'>microaneurysms and " \
           "dot-and-blot retinal hemorrhages; hard exudates</div></td><td>0.879</td><td>yes</td>" in text
    assert "<b>normal</b>" in text and "<td>0.105</td><td>no</td>" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in page  # descriptions are escaped
    assert "Refer the patient to an eye specialist as your local protocol says" in page
    assert "it does not diagnose" in page
    assert ("A photograph is referred when at least one referable class (dr, amd, glaucoma) scores at or above "
            "its threshold (rule: any_referable).") in page
    summed = render_report([_referred()], "/nonexistent", _manifest(referral_rule="referable_sum",
                                                                    referral_threshold=0.5))
    assert "add up to 0.50 or more (rule: referable_sum)" in summed
    assert "sum <span class='val'>0.604 <span class='cmp'>&ge; 0.500</span>" in summed


def test_example_uses_a_class_of_this_bundle() -> None:
    """12: the "how to read a score" example names this bundle's own first referable class and threshold."""
    page = render_report([], "/nonexistent", _manifest())
    assert "<span class='probs'>dr 0.440 &lt; 0.879</span> is below it" in page
    assert "<b>dr 0.940 &ge; 0.879</b></span> in bold is at or above it, a finding" in page


# -- 13: reasons in words ------------------------------------------------------------------------------------
def test_every_reason_tag_has_a_sentence() -> None:
    """13: every tag of the quality gate and of the error classes has a label and advice (no raw tags)."""
    tags = set(quality.REASONS) | {"inference_error", "internal_error"}

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for c in cls.__subclasses__() for s in subclasses(c))]

    tags |= {c.reason for c in subclasses(ImageError)}
    missing = sorted(t for t in tags if t not in REASON_TEXT)
    assert not missing, missing
    assert all(t.advice.endswith(".") and t.label for t in REASON_TEXT.values())


def test_ungradable_reasons_main_cause_first_with_tags_for_engineers() -> None:
    """13: the black frame's "no_fov, too_dark, low_contrast, blurred, grayscale" reads "Too dark" first."""
    tags = ["no_fov", "too_dark", "low_contrast", "blurred", "grayscale"]
    assert order_reasons(tags)[0] == "too_dark"
    assert order_reasons(["no_fov", "too_bright"])[0] == "too_bright"
    assert order_reasons(["no_fov", "grayscale"])[0] == "grayscale"  # an OCT B-scan: the wrong kind of image
    row = _row("black.jpg", "ungradable", reasons=tags)
    res = _cell(render_report([row], "/nonexistent", _manifest()), "res")
    assert res.startswith("<div class='verdict v-ungradable'>Ungradable - retake</div>")
    assert ("<div class='main' title='too_dark'>Too dark: check the flash and the pupil dilation, then retake."
            "</div>") in res
    assert "<span title='blurred'>blurred</span>" in res
    assert "<div class='tags'>codes: too_dark, grayscale, no_fov, low_contrast, blurred</div>" in res


def test_error_rows_say_what_to_do_and_keep_the_message_small() -> None:
    """13: "undecodable" + raw message becomes advice; the message stays in small print for engineers."""
    rows = [_row("trunc.jpg", "error", reasons=["undecodable"], error="/clinic/photos/trunc.jpg: image data is truncated"),
            _row("gone.jpg", "error", reasons=["inference_error"], error="inference failed: out of memory"),
            _row("odd.jpg", "error", reasons=["BackendError"], error="no backend")]
    page = render_report(rows, "/nonexistent", _manifest())
    res = [_cell(page, "res", i) for i in range(3)]
    assert "Unreadable file" in res[0] and "The file is damaged or not an image" in res[0]
    assert "<div class='tags'>detail: /clinic/photos/trunc.jpg: image data is truncated</div>" in res[0]
    assert "Not screened - program failure" in res[1] and "run the same command again" in res[1]
    assert "Could not be screened (BackendError)" in res[2]


# -- 6: thumbnails and heatmaps only where they belong -----------------------------------------------------
def _images(out: Path, rid: str, age_s: float = 0.0, overlay_age_s: float | None = None) -> None:
    img = np.full((64, 64, 3), 120, np.uint8)
    (out / THUMB_DIR).mkdir(parents=True, exist_ok=True)
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    t, o = out / THUMB_DIR / f"{rid}.jpg", out / OVERLAY_DIR / f"{rid}.png"
    t.write_bytes(encode_jpeg(img))
    o.write_bytes(encode_png(img))
    now = time.time()
    os.utime(t, (now - age_s, now - age_s))
    oa = age_s if overlay_age_s is None else overlay_age_s
    os.utime(o, (now - oa, now - oa))


def _shown(page: str) -> list[tuple[bool, bool]]:
    rows = re.findall(r"<tr class='result.*?</tr>", page, flags=re.S)
    return [('class="thumb"' in r, 'class="heatmap"' in r) for r in rows]


def test_stale_thumbnail_and_heatmap_are_not_shown_next_to_another_verdict(tmp_path: Path) -> None:
    """6: a photograph replaced by a truncated or black one kept showing the old thumbnail and heatmap."""
    for rid in ("p1", "p2", "p3", "p4"):
        _images(tmp_path, rid)
    rows = [_row("p1.jpg", "error", reasons=["undecodable"]),     # unreadable now: neither
            _row("p2.jpg", "ungradable", reasons=["too_dark"]),   # its own thumbnail, never a heatmap
            _row("p3.jpg", refer=False, probs={"dr": 0.1}),       # ok: both
            _row("p4.jpg", "error", reasons=["inference_error"])]  # decoded, model failed: its thumbnail
    page = render_report(rows, tmp_path, _manifest())
    by_name = dict(zip(re.findall(r"class='fname' title='[^']*'>([^<]*)<", page), _shown(page)))
    assert by_name == {"p1.jpg": (False, False), "p2.jpg": (True, False), "p3.jpg": (True, True),
                       "p4.jpg": (True, False)}


def test_files_older_than_the_rows_screening_time_are_not_trusted(tmp_path: Path) -> None:
    """6: with ``screened_at`` in the row, a thumbnail from an earlier run (older) is left out."""
    _images(tmp_path, "old", age_s=3600)
    _images(tmp_path, "new", age_s=0)
    _images(tmp_path, "mixed", age_s=0, overlay_age_s=3600)  # heatmap from a run with --overlays, thumbnail newer
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    rows = [_row("old.jpg", refer=False, probs={"dr": 0.2}, screened_at=stamp),
            _row("new.jpg", refer=False, probs={"dr": 0.1}, screened_at=stamp),
            _row("mixed.jpg", refer=False, probs={"dr": 0.05})]
    page = render_report(rows, tmp_path, _manifest())
    assert _shown(page) == [(False, False), (True, True), (True, False)]
    assert re.search(r"<span class='when'>screened (\d{4}-\d\d-\d\d )?\d\d:\d\d</span>", page)


def test_images_the_row_names_by_content_are_shown_whatever_their_file_times(tmp_path: Path) -> None:
    """A FAT output drive shifts every file time by an hour at a daylight-saving change (and a file server
    stamps its own clock): rows since session 15 name their images' content, and the report trusts that."""
    from uopsl.runtime.fsio import sha256_file

    _images(tmp_path, "shifted", age_s=3600)  # written with the row, read an hour older after the change
    _images(tmp_path, "replaced", age_s=0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    shifted = _row("shifted.jpg", refer=False, probs={"dr": 0.2}, screened_at=stamp)
    shifted["thumb_id"] = sha256_file(tmp_path / THUMB_DIR / "shifted.jpg")[:16]
    shifted["overlay_id"] = sha256_file(tmp_path / OVERLAY_DIR / "shifted.png")[:16]
    replaced = _row("replaced.jpg", refer=False, probs={"dr": 0.1}, screened_at=stamp)
    replaced["thumb_id"] = replaced["overlay_id"] = "0123456789abcdef"  # files of another photograph
    page = render_report([shifted, replaced], tmp_path, _manifest())
    assert _shown(page) == [(True, True), (False, False)]


def test_thumbnail_is_read_without_cv2_imread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """24: cv2.imread cannot open non-ASCII paths on Windows; np.fromfile + cv2.imdecode can."""
    out = tmp_path / "ünïcødé_眼底"
    _images(out, "眼底-1")

    def no_imread(*a: Any, **k: Any) -> None:
        raise AssertionError("cv2.imread used")

    monkeypatch.setattr(cv2, "imread", no_imread)
    row = _row("眼底.jpg", refer=False, probs={"dr": 0.1})
    row["id"] = "眼底-1"
    assert _shown(render_report([row], out, _manifest())) == [(True, True)]


def test_a_replaced_thumbnail_is_read_again(tmp_path: Path) -> None:
    """Perf: images are cached for watch's refreshes, but only while the file is unchanged (size, mtime)."""
    row = _row("p.jpg", refer=False, probs={"dr": 0.1})
    thumb = tmp_path / THUMB_DIR / "p.jpg"
    thumb.parent.mkdir(parents=True)
    uris = []
    for level, age in ((30, 60.0), (220, 0.0)):
        thumb.write_bytes(encode_jpeg(np.full((400, 400, 3), level, np.uint8)))
        os.utime(thumb, (time.time() - age, time.time() - age))
        page = render_report([row], tmp_path, _manifest())
        uris.append(re.findall(r'class="thumb" alt="" src="([^"]+)"', page))
    assert len(uris[0]) == len(uris[1]) == 1 and uris[0] != uris[1]
    assert report_mod._data_uri(thumb) == uris[1][0]  # served from the cache, the same bytes


# -- 25: identical photographs -------------------------------------------------------------------------------
def test_identical_photographs_under_two_names_are_flagged(tmp_path: Path) -> None:
    """25: bad/dup_a.jpg and bad/dup_b.jpg (same bytes) were two independent "Refer" rows."""
    data = encode_jpeg(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    rows = []
    for name, content in (("dup_a.jpg", data), ("dup_b.jpg", data), ("other.jpg", data[:-10] + b"0123456789"),
                          ("empty1.jpg", b""), ("empty2.jpg", b"")):
        p = tmp_path / name
        p.write_bytes(content)
        st = p.stat()
        status = "error" if not content else "ok"
        rows.append({**_row(name, status, refer=bool(content), probs={"dr": 0.9} if content else {},
                            folder=str(tmp_path)),
                     "key": f"{p}|{st.st_size}|{st.st_mtime_ns}"})
    check = find_duplicates(rows)
    assert check.groups == [[0, 1]] and check.unchecked == 0  # same size, other bytes: not a duplicate
    page = render_report(rows, tmp_path / "out", _manifest())
    assert "<div class='warn' id='duplicates'><b>1 photograph appears more than once</b>" in page
    assert "#1 dup_a.jpg = #2 dup_b.jpg" in page
    assert "<div class='dup'>Same photograph as #2 (dup_b.jpg)</div>" in page
    assert "<div class='dup'>Same photograph as #1 (dup_a.jpg)</div>" in page
    (tmp_path / "dup_b.jpg").write_bytes(data + b"x")  # changed since screening: not compared
    assert find_duplicates(rows).groups == []


def test_rows_with_a_content_hash_are_compared_by_it() -> None:
    """25: when rows carry their own hash, no file is read."""
    rows = [_row("a.jpg", sha256="ab" * 32), _row("b.jpg", sha256="ab" * 32), _row("c.jpg", sha256="cd" * 32)]
    assert find_duplicates(rows).groups == [[0, 1]]


# -- 14: identity and print ----------------------------------------------------------------------------------
def test_identity_bundle_hash_local_time_and_input_folders() -> None:
    """14: bundle hash and creation date, model, version, local time with offset, input folders."""
    rows = [_referred(), _row("b.jpg", folder="/clinic/day2", refer=False, probs={"dr": 0.1})]
    page = render_report(rows, "/tmp/out", _manifest(), {"backend": "ort-cpu (fp32, model.onnx)"})
    assert "<dt>Bundle</dt><dd>content 3975d2dbe11b (sha256 of the manifest), created 2026-11-29" in page
    assert re.search(r"<dt>Generated</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d \(UTC[+-]\d\d:\d\d\) on ", page)
    assert "<dt>Model</dt><dd>uopsl (efficientnet_lite0), toolkit " in page
    assert "<dt>Photographs from</dt><dd>/clinic/photos (1)<br>/clinic/day2 (1)</dd>" in page
    assert "<dt>Backend</dt><dd>ort-cpu (fp32, model.onnx)</dd>" in page


def test_file_name_first_bold_and_wrapped_anywhere_with_a_footer_on_every_page() -> None:
    """14: "Source" was the last column, grey, break-all ("bad/UPPER.J" / "PG"); no footer on printed pages."""
    page = render_report([_row("UPPER.JPG", folder="bad", refer=False, probs={"dr": 0.1})], "/o", _manifest())
    row = re.search(r"<tr class='result.*?</tr>", page, flags=re.S)
    assert row is not None
    cells = re.findall(r"<t[dh](?: scope='row')? class='(\w+)'", row.group(0))
    assert cells[:2] == ["n", "src"] and "<th scope='row' class='src'>" in row.group(0)  # the row's header
    assert "<span class='fname' title='bad/UPPER.JPG'>UPPER.JPG</span><span class='dir'>bad</span>" in row.group(0)
    assert "break-all" not in page and "th.src { overflow-wrap: anywhere;" in page
    assert "th.src .fname { font-weight: 700;" in page
    start = page.index("<thead><tr class='pagehead'>")
    thead = page[start:page.index("</thead>", start)]
    tfoot = page[page.index("<tfoot>"):page.index("</tfoot>")]
    ident = "Retinal screening report - 1 image - generated "
    assert ident in thead and ident in tfoot and "bundle 3975d2dbe11b" in tfoot
    assert "thead tr.pagehead { display: table-row; }" in page
    assert "size: A4 portrait; margin: 12mm 10mm;" in page and "counter(pages)" in page
    assert "class='noprint'" in page  # the print hint is screen-only


def test_file_name_with_markup_is_escaped_everywhere(tmp_path: Path) -> None:
    """House rule: a file name with <script> must not execute (name, folder, title, duplicate notes, details)."""
    evil = "<script>alert(1)</script>'\".jpg"
    rows = [_row(evil, "error", reasons=["undecodable"], error=f"x/{evil}: bad", folder="<b>dir</b>"),
            _row(evil, refer=True, probs={"dr": 0.9}, positive=["dr"], folder="<i>", sha256="ab" * 32),
            _row("b.jpg", refer=True, probs={"dr": 0.9}, positive=["dr"], sha256="ab" * 32)]
    m = _manifest(model_name="<script>m</script>", backbone="<b>")
    page = render_report(rows, tmp_path, m, {"backend": "<script>", "inputs": ["<script>in</script>"]})
    assert "<script" not in page and "<b>dir" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#x27;&quot;.jpg" in page
    assert "title='&lt;b&gt;dir&lt;/b&gt;/&lt;script&gt;" in page


def test_a_photograph_found_under_a_new_path_says_where_it_was() -> None:
    """9 (report side): a card mounted elsewhere keeps its earlier result; the row says where it was screened."""
    row = _row("a.jpg", refer=False, probs={"dr": 0.1}, folder="/media/usb2", moved_from="/media/usb1/a.jpg")
    assert ("<span class='dir'>moved from /<wbr>media/<wbr>usb1/<wbr>a.jpg</span>"
            in render_report([row], "/o", _manifest()))


def test_a_folder_breaks_between_its_names_not_inside_one() -> None:
    """Printed, the narrow column broke '/tmp/s46/demo/data/test/fundus' as '.../test/fun dus' (seen in a PDF
    rendering of the demo's report, session 46): each separator is now a break opportunity, and names are
    still escaped."""
    row = _row("a.jpg", refer=False, probs={"dr": 0.1}, folder="/clinic/day 1/<b>fundus")
    page = render_report([row], "/o", _manifest())
    assert "<span class='dir'>/<wbr>clinic/<wbr>day 1/<wbr>&lt;b&gt;fundus</span>" in page


def test_undecodable_file_name_bytes_do_not_crash_the_report(tmp_path: Path) -> None:
    """3 (report side): a Latin-1 name from an old camera ('caf\\xe9') is shown, not a UnicodeEncodeError; its
    unknown letter as U+FFFD, as in results.csv (session 48: the report guessed Windows-1252 there)."""
    row = _row("caf\udce9_OD.jpg", refer=False, probs={"dr": 0.1})
    path = write_report([row], tmp_path, _manifest())
    assert "caf\ufffd_OD.jpg" in path.read_text(encoding="utf-8")


def test_a_thousand_rows_render_fast(tmp_path: Path) -> None:
    """1,000+ rows: no per-row work beyond a few stat calls when there are no images."""
    rows = [_row(f"img{i:05d}.jpg", ["ok", "ungradable", "error"][i % 3], refer=i % 2 == 0,
                 probs={"normal": 0.1, "dr": (i % 97) / 97, "amd": 0.01, "glaucoma": 0.02}, positive=["dr"],
                 reasons=["blurred"] if i % 3 else []) for i in range(1500)]
    t0 = time.perf_counter()
    page = render_report(rows, tmp_path, _manifest())
    assert time.perf_counter() - t0 < 15 and page.count("<tr class='result") == 1500


# -- 18, 22: the terminal ------------------------------------------------------------------------------------
def _summary(counts: dict[str, int], refer: int, screened: int, skipped: int = 0) -> SimpleNamespace:
    return SimpleNamespace(counts=counts, refer=refer, screened=screened, skipped=skipped,
                           total=sum(counts.values()), not_updated=())


def test_summary_names_failed_files_and_ends_with_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    """18, 22: "1 images" -> "1 image"; up to 5 failed files by name; the last line is the report's path."""
    from uopsl.runtime.cli import _echo_summary

    _echo_summary(_summary({"ok": 1, "ungradable": 0, "error": 0}, 1, 1), Path("out"))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("1 image: 1 refer, 0 no referable finding") and err[-1] == "report: out/report.html"
    failed = [(f"bad/f{i}.jpg", "error", ("undecodable",)) for i in range(6)] + [("b.jpg", "ungradable", ("no_fov", "too_dark"))]
    _echo_summary(_summary({"ok": 2, "ungradable": 1, "error": 6}, 1, 7, 2), Path("o"), failed)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("9 images: 1 refer, 1 no referable finding, 1 ungradable, 6 unreadable or not screened "
                      "(7 screened now, 2 from an earlier run)")
    assert err[1] == ("  retake or check: f0.jpg (damaged file), f1.jpg (damaged file), f2.jpg (damaged file), "
                      "f3.jpg (damaged file), f4.jpg (damaged file), 2 more in the report")
    assert err[2] == "report: o/report.html"
    _echo_summary(_summary({"ok": 1}, 0, 1), Path("o"), report=False)
    assert capsys.readouterr().err.splitlines()[-1] == "results: o/results.csv"


def test_run_ends_with_the_report_path_and_names_the_bad_files(tiny_bundle: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """18: the run said "-> out_bad" and did not say which files failed."""
    from tinybundle import fundus_jpeg
    from uopsl.runtime.cli import main

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    good = fundus_jpeg(tmp_path / "in" / "good.jpg")
    (tmp_path / "in" / "text.jpg").write_text("not a photograph")
    out = tmp_path / "out"
    assert main(["run", str(tiny_bundle), str(good), str(tmp_path / "in" / "text.jpg"), "--out", str(out),
                 "--backend", "ort-cpu", "--threads", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"report: {out / 'report.html'}"
    assert err[-2] == "  retake or check: text.jpg (damaged file)"
    assert err[-3].startswith("2 images: ") and err[-3].endswith(", 0 ungradable, 1 unreadable or not screened "
                                                                 "(2 screened now, 0 from an earlier run)")
    # A rerun screens nothing again, and still names the photograph that needs a look (it said "1 more in
    # the report" before, naming nothing).
    assert main(["run", str(tiny_bundle), str(good), str(tmp_path / "in" / "text.jpg"), "--out", str(out),
                 "--backend", "ort-cpu", "--threads", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-3].endswith("(0 screened now, 2 from an earlier run)")
    assert err[-2] == "  retake or check: text.jpg (damaged file; earlier run)"
    # A newline in a file name stays on the line, escaped.
    (tmp_path / "in" / "bad\nname.jpg").write_text("not a photograph")
    assert main(["run", str(tiny_bundle), str(tmp_path / "in" / "bad\nname.jpg"), "--out", str(tmp_path / "out2"),
                 "--backend", "ort-cpu", "--threads", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == "  retake or check: bad\\nname.jpg (damaged file)"


def test_backend_choice_is_one_short_info_line_and_the_reason_is_debug(tiny_bundle: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """18: the INFO line "INT8 not chosen unasked: ... flip_rate 0.008 > 0.005" was jargon for a nurse."""
    from uopsl.runtime.backends import open_backend

    with caplog.at_level(logging.DEBUG, logger="uopsl.runtime.backends"):
        open_backend(tiny_bundle, "ort-cpu", measure=False)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert info == ["backend: ort-cpu fp32 (model.onnx)"]
    assert any(m.startswith("backend choice: ort-cpu requested") for m in debug)


def test_watch_out_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    """22: ``watch --out`` had no help text."""
    from uopsl.runtime.cli import main

    assert main(["watch", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--out DIRECTORY Output folder (results.csv, results.jsonl, report.html, run.json, thumbs/, overlays/, days/)" in out


# -- print, in a real browser ----------------------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_printed_pages_repeat_the_identity_line(tmp_path: Path) -> None:
    """14: the table's thead/tfoot repeat on every A4 page, and each page says "page N of M".

    The page count needs only Chromium; the text of each page is checked where poppler's pdftotext exists.
    """
    rows = [_row(f"img{i:03d}.jpg", refer=i % 3 == 0, probs={"normal": 0.1, "dr": 0.5, "amd": 0.02,
                                                            "glaucoma": 0.001}, positive=["amd"] if i % 3 == 0 else [])
            for i in range(80)]
    html_path = write_report(rows, tmp_path, _manifest())
    pdf = tmp_path / "report.pdf"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={tmp_path / 'profile'}", "--no-pdf-header-footer", f"--print-to-pdf={pdf}",
                    html_path.as_uri()], check=True, capture_output=True, timeout=120)
    data = pdf.read_bytes()
    pages = len(re.findall(rb"/Type\s*/Page[^s]", data))
    assert pages >= 3, pages
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        return
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    per_page = [p for p in text.split("\f") if p.strip()]
    assert len(per_page) == pages
    for n, p in enumerate(per_page, 1):
        flat = " ".join(p.split())
        assert flat.count("Retinal screening report - 80 images - generated") == 2, flat[:300]  # header + footer
        assert "screening support, not a diagnosis" in flat
        if _chromium_major() >= 131:  # older Chromium prints no @page margin boxes
            assert f"page {n} of {pages}" in flat
    assert "img000.jpg" in text and "img079.jpg" in text


def _chromium_major() -> int:
    """Chromium's major version (0 when it cannot be read)."""
    import re as _re

    out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = _re.search(r"(\d+)\.\d+\.\d+", out)
    return int(m.group(1)) if m else 0



def test_an_unreadable_file_reads_checked_not_screened(tmp_path: Path) -> None:
    """A clinic review: "screened 05:40" under an empty file that was never screened."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    rows = [_row("empty.jpg", "error", error="file is empty (0 bytes)", screened_at=stamp),
            _row("good.jpg", refer=False, probs={"dr": 0.1}, screened_at=stamp)]
    page = render_report(rows, tmp_path, _manifest())
    whens = re.findall(r"<span class='when'>(\w+) ", page)
    assert sorted(whens) == ["checked", "screened"], whens


def test_one_rendering_of_an_undecodable_name_for_rows_report_and_messages() -> None:
    """Session 48: the report, the results rows and the console each had their own copy of this (the report's
    guessed Windows-1252 where the rows wrote U+FFFD); now all three call fsio.readable_text."""
    from uopsl.runtime.fsio import readable_text
    from uopsl.runtime.inputs import display_path
    from uopsl.runtime.report import esc
    from uopsl.runtime.results import _display

    name = os.fsdecode(b"M\xfcller_OD.jpg")
    assert readable_text(name) == display_path(name) == _display(name) == esc(name) == "M\ufffdller_OD.jpg"
    assert readable_text("a\ud800b") == "a?b"  # a lone surrogate no undecodable byte made: no crash either
    assert readable_text("Müller") == "Müller"
