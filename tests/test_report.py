"""The HTML report: urgency order, self-contained, renders in headless Chromium with one row per image."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, make_bad_zoo, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.report import render_report, urgency_key

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _row(i: int, status: str, refer: bool | None, npdr: float | None) -> dict:
    probs = {} if npdr is None else {"normal": 0.5, "npdr": npdr, "dme": 0.1}
    return {"id": f"r{i}", "source": f"/x/r{i}.jpg", "key": f"k{i}", "status": status, "refer": refer,
            "probs": probs, "positive": ["npdr"] if refer else [], "reasons": [], "error": ""}


def test_urgency_order_referable_then_ungradable_then_the_rest_each_in_screening_order(tiny_bundle: Path) -> None:
    # Not by score within a group (until session 45): scores of different classes are not comparable.
    m = read_manifest(tiny_bundle)
    rows = [_row(0, "ok", False, 0.30), _row(1, "ok", True, 0.70), _row(2, "ungradable", None, None),
            _row(3, "ok", True, 0.95), _row(4, "error", None, None), _row(5, "ok", False, 0.45)]
    referable = [c.name for c in m.classes if c.referable]
    order = [r["id"] for r in sorted(rows, key=lambda r: urgency_key(r, referable))]
    assert order == ["r1", "r3", "r2", "r4", "r0", "r5"]
    page = render_report(rows, "/nonexistent", m)
    assert [int(x) for x in re.findall(r"/x/r(\d)\.jpg", page)] == [int(i[1:]) for i in order]
    # Each count card leads to its group's first row (a review: the first retake of 400 sat at row 367).
    # Each group opens with a heading row (session 53: paper and screen readers had no group headings).
    assert re.findall(r"<tr class='group' id='(g-\w+)'><th colspan='6' scope='colgroup'>[^<]*<span class='order'>"
                      r"[^<]*</span></th></tr>\s*<tr class='result[^>]*><td class='n'>(\d+)</td>", page) == [
        ("g-refer", "1"), ("g-retake", "3"), ("g-routine", "5")]
    for target in ("g-refer", "g-retake", "g-routine"):
        assert f"<a href='#{target}'>" in page
    quiet = render_report([_row(0, "ok", False, 0.30)], "/nonexistent", m)
    assert "href='#g-refer'" not in quiet and "href='#g-routine'" in quiet  # no link to an empty group


def test_zero_shot_classes_are_marked_as_not_validated(tiny_bundle: Path) -> None:
    from dataclasses import replace

    m = read_manifest(tiny_bundle)
    rows = [_row(0, "ok", True, 0.9)]
    assert "zero-shot" not in render_report(rows, "/nonexistent", m)
    marked = replace(m, classes=tuple(replace(c, seen_in_training=c.name != "npdr") for c in m.classes))
    page = render_report(rows, "/nonexistent", marked)
    assert "zero-shot (no training images, scores not validated): npdr" in page
    assert "npdr* <span class='val'>0.900" in page and "dme* " not in page


def test_rows_from_two_model_files_are_named_in_the_header(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    rows = [{**_row(i, "ok", False, 0.3), "backend": "ort-cpu", "precision": p, "model_file": f}
            for i, (p, f) in enumerate([("int8-qdq-u8", "model.int8.onnx")] * 3 + [("fp32", "model.onnx")] * 2)]
    page = render_report(rows, "/nonexistent", m, {"backend": "ort-cpu (fp32, model.onnx)"})
    assert "model.int8.onnx (int8-qdq-u8 on ort-cpu): 3 photographs" in page
    assert "model.onnx (fp32 on ort-cpu): 2 photographs" in page
    assert "<dt>Backend</dt>" not in page, "one backend line would claim every row"
    one = render_report(rows[3:], "/nonexistent", m, {"backend": "ort-cpu (fp32, model.onnx)"})
    assert "<dt>Backend</dt><dd>ort-cpu (fp32, model.onnx)</dd>" in one and "Model files" not in one


def test_csv_findings_model_file_and_formula_like_names(tiny_bundle: Path, tmp_path: Path) -> None:
    import csv

    from uopsl.runtime.results import write_csv

    m = read_manifest(tiny_bundle)
    referable = [c.name for c in m.classes if c.referable]
    assert "normal" not in referable and "npdr" in referable
    rows = [{**_row(0, "ok", True, 0.9), "positive": ["normal", "npdr"], "source": "=cmd|calc!A1.jpg",
             "backend": "ort-cpu", "precision": "fp32", "model_file": "model.onnx"},
            {**_row(1, "ungradable", None, None), "positive": [], "source": "@x.jpg", "file_replaced": True}]
    write_csv(tmp_path / "r.csv", rows, m.class_names, referable=referable)
    with open(tmp_path / "r.csv", encoding="utf-8-sig", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert got[0]["positive"] == "normal;npdr" and got[0]["findings"] == "npdr"
    assert got[0]["source"] == "'=cmd|calc!A1.jpg" and got[1]["source"] == "'@x.jpg"
    assert (got[0]["backend"], got[0]["precision"], got[0]["model_file"]) == ("ort-cpu", "fp32", "model.onnx")
    assert (got[0]["file_replaced"], got[1]["file_replaced"], got[1]["findings"]) == ("", "yes", "")
    # What to do, in the report's words, for the main cause (a clinic review: the CSV had only the codes).
    rows = [{**_row(2, "ungradable", None, None), "reasons": ["low_contrast", "too_dark"], "sha256": "a" * 64},
            {**_row(3, "error", None, None), "reasons": ["unreadable"], "error": "file is empty (0 bytes)"},
            {**_row(4, "ok", False, 0.1), "reasons": [], "sha256": "a" * 64, "source": "copy of 2.jpg"}]
    write_csv(tmp_path / "a.csv", rows, m.class_names, referable=referable)
    with open(tmp_path / "a.csv", encoding="utf-8-sig", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert got[0]["advice"] == "Too dark: check the flash and the pupil dilation, then retake."
    assert got[1]["advice"] and got[2]["advice"] == ""
    # A byte-identical copy names the row above it (the report showed duplicates; the CSV did not).
    assert (got[0]["same_as"], got[1]["same_as"], got[2]["same_as"]) == ("", "", got[0]["source"])
    # Not for files without a result (every empty file has the same bytes), and every sha256 form matches.
    rows = [{**_row(5, "error", None, None), "reasons": ["unreadable"], "sha256": "e" * 64},
            {**_row(6, "error", None, None), "reasons": [], "sha256": "e" * 64},
            {**_row(7, "ok", False, 0.1), "sha256": "sha256:" + "B" * 64},
            {**_row(8, "ok", False, 0.1), "content_sha256": "b" * 64}]
    write_csv(tmp_path / "b.csv", rows, m.class_names, referable=referable)
    with open(tmp_path / "b.csv", encoding="utf-8-sig", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [g["same_as"] for g in got] == ["", "", "", got[2]["source"]]
    assert got[1]["advice"] == "No result: take or copy the photograph again."  # an old row without reasons
    # Three copies all name the first one (not the row just above), and a photograph screened again under its
    # own name (the same source twice) is no copy of itself (a mutation audit: neither was pinned).
    rows = [{**_row(9, "ok", False, 0.1), "sha256": "c" * 64, "source": "a.jpg"},
            {**_row(10, "ok", False, 0.1), "sha256": "c" * 64, "source": "b.jpg"},
            {**_row(11, "ok", False, 0.1), "sha256": "c" * 64, "source": "c.jpg"},
            {**_row(12, "ok", False, 0.1), "sha256": "d" * 64, "source": "d.jpg"},
            {**_row(13, "ok", False, 0.1), "sha256": "d" * 64, "source": "d.jpg"}]
    write_csv(tmp_path / "c.csv", rows, m.class_names, referable=referable)
    with open(tmp_path / "c.csv", encoding="utf-8-sig", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [g["same_as"] for g in got] == ["", "a.jpg", "a.jpg", "", ""]


def test_csv_for_spreadsheets_with_a_decimal_comma(tiny_bundle: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Excel set to a decimal-comma locale opens a comma-separated file as one column and 0.9 as text."""
    import csv

    from uopsl.runtime.cli import main
    from uopsl.runtime.errors import ConfigError
    from uopsl.runtime.results import write_csv

    m = read_manifest(tiny_bundle)
    referable = [c.name for c in m.classes if c.referable]
    rows = [{**_row(0, "ok", True, 0.9), "positive": ["normal", "npdr"], "reasons": ["dark", "blurred"],
             "quality_score": 0.8123, "timings_ms": {"infer_ms": 12.5}}]
    write_csv(tmp_path / "eu.csv", rows, m.class_names, referable=referable, style="semicolon")
    with open(tmp_path / "eu.csv", encoding="utf-8-sig", newline="") as fh:
        got = next(csv.DictReader(fh, delimiter=";"))
    assert (got["p_npdr"], got["p_normal"], got["quality_score"], got["infer_ms"]) == ("0,900000", "0,500000",
                                                                                       "0,8123", "12,50")
    assert got["positive"] == "normal,npdr" and got["reasons"] == "dark,blurred" and got["findings"] == "npdr"
    with pytest.raises(ConfigError, match="CSV style must be one of comma, semicolon"):
        write_csv(tmp_path / "x.csv", rows, m.class_names, style="tab")
    # The CLI takes it as --csv, or once per clinic PC from UOPSL_CSV.
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    monkeypatch.setenv("UOPSL_CSV", "Semicolon")  # as typed on a clinic PC: any case
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend",
                 "ort-cpu", "--no-overlays", "--no-report"]) == 0
    header = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert header.startswith("id;source;status;")


@pytest.fixture(scope="module")
def report_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    good = [fundus_jpeg(root / "in" / f"g{i}.jpg", seed=i) for i in range(5)]
    zoo = make_bad_zoo(root / "in" / "bad")
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        s.screen_to(root / "out", [*good, *(p for p, _ in zoo.values())], overlays=True)
    return root / "out"


def test_report_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page and "@media print" in page
    assert page.count("<tr class='result") == 15  # 5 good + 10 zoo entries


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    url = (report_dir / "report.html").as_uri()
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2000, 1280) and img.std() > 10  # not a blank page
    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True).stdout
    rows = re.findall(r'<tr class="result [^"]*" data-status="(\w+)"', dom)
    assert len(rows) == 15
    assert rows.count("error") == 6 and rows.count("ungradable") == 2 and rows.count("ok") == 7
    # Images decoded by the browser: every <img> in the DOM carries a data URI.
    assert dom.count('<img class="thumb"') == 9  # all that decoded (6 errors have none)


def test_a_probability_at_its_threshold_reads_as_the_decision_made_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """Stored at 6 decimals, a score one float32 step below its threshold read "0.370000 < 0.370000" and a score
    equal to it could read below it: chosen thresholds are a validation image's exact score. Results keep the
    float32 the model gave, exactly, and the report compares in float32 as Manifest.decide does."""
    import csv
    from dataclasses import replace as dc_replace

    import numpy as np

    from uopsl.runtime.report import _probs_html
    from uopsl.runtime.results import probability_text, probability_value, write_csv

    m = read_manifest(tiny_bundle)
    name = next(c.name for c in m.classes if c.referable)
    t = np.float32(0.3700000047683716)
    m = dc_replace(m, classes=tuple(dc_replace(c, threshold=float(t)) if c.name == name else c for c in m.classes))
    below = np.nextafter(t, np.float32(0))
    for v in (t, below):
        assert np.float32(probability_value(v)) == v and np.float32(probability_text(v)) == v
    positive, _ = m.decide(np.array([[float(t) if c == name else 0.0 for c in m.class_names],
                                     [float(below) if c == name else 0.0 for c in m.class_names]]))
    k = m.class_names.index(name)
    assert positive[0, k] and not positive[1, k]
    at = _probs_html({"status": "ok", "probs": {name: probability_value(t)}}, m, set(), {name})
    under = _probs_html({"status": "ok", "probs": {name: probability_value(below)}}, m, set(), set())
    assert "0.370 <span class='cmp'>&ge; 0.370</span>" in at
    assert "0.36999997 <span class='cmp'>&lt; 0.37000000</span>" in under
    rows = [{**_row(0, "ok", True, 0.9), "probs": {name: probability_value(below)}}]
    write_csv(tmp_path / "r.csv", rows, m.class_names)
    with open(tmp_path / "r.csv", encoding="utf-8-sig", newline="") as fh:
        got = next(csv.DictReader(fh))
    assert np.float32(got[f"p_{name}"]) == below and got[f"p_{name}"] == "0.36999997"
