"""The bundle's intended use: stated by its maker, kept by the manifest, shown by every report and run.

A clinic once could not tell a report made with the demo's synthetic-data model from a real screening.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.bundle import Manifest, read_manifest, verify_or_raise, write_manifest
from uopsl.runtime.errors import BundleError
from uopsl.runtime.intended_use import IntendedUse, check_choice
from uopsl.runtime.report import esc, render_report
from uopsl.runtime.results import model_sha256

STATEMENT = "Validated by Example Eye Care for adults with diabetes, Topcon NW400 photographs (study EEC-2026-04)."


def _copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out


def _with_use(bundle: Path, use: IntendedUse) -> Manifest:
    from dataclasses import replace

    write_manifest(bundle, replace(read_manifest(bundle), intended_use=use))
    return read_manifest(bundle)


# -- the statement itself ---------------------------------------------------------------------------------
def test_clinical_needs_a_statement_and_unknown_statuses_are_refused() -> None:
    with pytest.raises(BundleError, match="'clinical' needs a statement"):
        IntendedUse("clinical")
    with pytest.raises(BundleError, match="'clinical' needs a statement"):
        check_choice("clinical", "   \n ")  # whitespace is no statement
    with pytest.raises(BundleError, match=r"must be one of demonstration, research, clinical \(or unstated, where a "
                                          r"bundle states none\), got 'screening'"):
        IntendedUse("screening")  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="must be one of demonstration, research, clinical, got 'unstated'"):
        check_choice("unstated")  # an exporter states something
    assert check_choice("clinical", STATEMENT).for_patients


def test_statements_are_one_line_of_plain_text_of_bounded_length() -> None:
    use = IntendedUse("research", "  Internal\n study   only. ", "TVHL\tfundus photographs")
    assert (use.statement, use.trained_on) == ("Internal study only.", "TVHL fundus photographs")
    # Controls and formatting characters (a C1 CSI, a right-to-left override, a zero-width space) could make a
    # terminal or a page show other text than is stored.
    for bad in ("bell \x07", "csi \x9b2J", "right\u202eto left", "iso\u2066late", "zero\u200bwidth", "\ufeffbom",
                "ages \u200f18 - 65", "word\u2060joiner", "tag\U000e0041"):
        with pytest.raises(BundleError, match="control or formatting characters"):
            IntendedUse("research", bad)
    # What scripts need and cannot reorder stays: Persian's zero-width non-joiner, the joiner, the soft hyphen.
    for fine in ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u0915\u094d\u200d\u0937", "retino\u00adpathy"):
        assert IntendedUse("research", fine).statement == fine
    assert IntendedUse("research", "line\u2028separator").statement == "line separator"  # whitespace: folded
    with pytest.raises(BundleError, match="1001 characters long; at most 1000"):
        IntendedUse("research", "x" * 1001)
    with pytest.raises(BundleError, match="trained_on must be text"):
        IntendedUse("research", trained_on=3)  # type: ignore[arg-type]


def test_only_clinical_bundles_go_without_a_warning() -> None:
    assert IntendedUse("clinical", STATEMENT).warning() is None
    for status in ("demonstration", "research", "unstated"):
        use = IntendedUse(status, trained_on="400 synthetic photographs")  # type: ignore[arg-type]
        assert use.warning() and not use.for_patients
        assert "Trained on: 400 synthetic photographs." in use.describe()
    assert "synthetic" in IntendedUse("demonstration").warning()  # type: ignore[operator]
    assert STATEMENT in IntendedUse("clinical", STATEMENT).describe()


# -- the manifest -----------------------------------------------------------------------------------------
def test_a_stated_use_makes_format_3_and_an_unstated_one_keeps_older_runtimes_reading(tiny_bundle: Path,
                                                                                       tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    before = read_manifest(bundle)
    assert before.intended_use == IntendedUse() and not before.intended_use.stated
    raw = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert "intended_use" not in raw and raw["format_version"] == 2

    after = _with_use(bundle, IntendedUse("demonstration", trained_on="synthetic photographs"))
    raw = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert raw["format_version"] == 3
    assert raw["intended_use"] == {"status": "demonstration", "statement": "", "trained_on": "synthetic photographs"}
    assert after.intended_use.status == "demonstration"
    verify_or_raise(bundle)
    # The model did not change: results screened before stay tied to it.
    assert model_sha256(after) == model_sha256(before)
    assert after.content_sha256 != before.content_sha256


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: {**d, "format_version": 3}, "format_version 3 needs an intended_use statement"),
    (lambda d: {**d, "intended_use": {"status": "research", "statement": "", "trained_on": ""}},
     "intended_use needs format_version 3, the manifest says 2"),
    (lambda d: {**d, "format_version": 3, "intended_use": {"status": "unstated"}}, "'unstated' is not written"),
    (lambda d: {**d, "format_version": 3, "intended_use": {"status": "clinical"}}, "'clinical' needs a statement"),
    (lambda d: {**d, "format_version": 3, "intended_use": {"status": "research", "by": "x"}}, "unknown fields"),
    (lambda d: {**d, "format_version": 3, "intended_use": "research"}, "must be an object"),
])
def test_malformed_statements_are_refused_with_the_manifest_named(tiny_bundle: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    with pytest.raises(BundleError, match=f"manifest.json: .*{re.escape(message)}"):
        Manifest.from_dict(edit(raw))


# -- restating it on a finished bundle ---------------------------------------------------------------------
def test_restating_the_use_of_a_bundle_verifies_it_first_and_keeps_its_model(tiny_bundle: Path,
                                                                              tmp_path: Path) -> None:
    from uopsl.export.bundle_writer import set_intended_use

    bundle = _copy(tiny_bundle, tmp_path)
    before = read_manifest(bundle)
    m = set_intended_use(bundle, IntendedUse("clinical", STATEMENT))
    assert m.intended_use.statement == STATEMENT and m == read_manifest(bundle)
    assert model_sha256(m) == model_sha256(before)
    verify_or_raise(bundle)
    same = (bundle / "manifest.json").read_bytes()
    set_intended_use(bundle, IntendedUse("clinical", STATEMENT))  # nothing new: the manifest's bytes stay
    assert (bundle / "manifest.json").read_bytes() == same
    with pytest.raises(BundleError, match="must be stated"):
        set_intended_use(bundle, IntendedUse())

    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx: sha256 differs"):
        set_intended_use(bundle, IntendedUse("research"))
    assert (bundle / "manifest.json").read_bytes() == same  # a tampered bundle is not labelled


def test_intended_use_command_shows_and_restates_keeping_what_is_not_given(tiny_bundle: Path,
                                                                           tmp_path: Path) -> None:
    from uopsl.train.cli import cli

    bundle = _copy(tiny_bundle, tmp_path)
    run = CliRunner().invoke
    res = run(cli, ["intended-use", str(bundle)])
    assert res.exit_code == 0 and "unstated. This bundle does not state" in res.output
    res = run(cli, ["intended-use", str(bundle), "research", "--trained-on", "TVHL photographs"])
    assert res.exit_code == 0, res.output
    res = run(cli, ["intended-use", str(bundle), "clinical", "--use-statement", "  "])
    assert isinstance(res.exception, BundleError) and "needs a statement" in str(res.exception)
    res = run(cli, ["intended-use", str(bundle), "research", "--use-statement", "Internal pilot only; NOT validated"])
    assert res.exit_code == 0, res.output
    # A statement written for another use never becomes the clinical one.
    res = run(cli, ["intended-use", str(bundle), "clinical"])
    assert res.exit_code == 2 and "needs its own statement" in res.output
    res = run(cli, ["intended-use", str(bundle), "clinical", "--use-statement", STATEMENT])
    assert res.exit_code == 0, res.output
    use = read_manifest(bundle).intended_use
    assert (use.status, use.statement, use.trained_on) == ("clinical", STATEMENT, "TVHL photographs")
    res = run(cli, ["intended-use", str(bundle), "research"])  # and the clinical claim does not linger
    assert res.exit_code == 0 and read_manifest(bundle).intended_use.statement == ""
    res = run(cli, ["intended-use", str(bundle), "--trained-on", "x"])
    assert res.exit_code == 2 and "give the STATUS" in res.output


def test_export_refuses_clinical_without_a_statement_before_exporting(tmp_path: Path) -> None:
    from uopsl.train.cli import cli

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()  # never read: the statement is checked first
    res = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "b"), "--intended-use", "clinical"])
    assert isinstance(res.exception, BundleError) and "needs a statement" in str(res.exception)
    assert not (tmp_path / "b").exists()


# -- what users see ---------------------------------------------------------------------------------------
def _report(bundle: Path, out: Path) -> str:
    rows = [{"id": "a", "source": "a.jpg", "status": "ok", "refer": True, "positive": ["npdr"],
             "probs": {"normal": 0.1, "npdr": 0.9, "dme": 0.1}}]
    return render_report(rows, out, read_manifest(bundle), {})


@pytest.mark.parametrize("status", ["demonstration", "research"])
def test_reports_of_bundles_not_for_patients_open_with_a_banner_that_every_printed_sheet_repeats(
        tiny_bundle: Path, tmp_path: Path, status: str) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    use = _with_use(bundle, IntendedUse(status, trained_on="400 synthetic photographs")).intended_use  # type: ignore[arg-type]
    html = _report(bundle, tmp_path / "out")
    banner = re.search(r"<div class='use use-(\w+)' id='intended-use' role='note'>(.*?)</div>", html)
    assert banner and banner.group(1) == status
    assert use.short() in banner.group(2) and esc(use.warning()) in banner.group(2)
    assert "Trained on: 400 synthetic photographs." in banner.group(2)
    assert html.index("id='intended-use'") < html.index("<dl class='ident'>")  # before anything else
    assert re.search(r"<title>(.*?)</title>", html).group(1).startswith(f"{use.short()} - Screening report")  # type: ignore[union-attr]
    head = re.search(r"<tr class='pagehead'><th colspan='6'>(.*?)</th>", html)
    foot = re.search(r"<tfoot><tr><td colspan='6'>(.*?)</td>", html)
    for line in (head, foot):
        assert line and line.group(1).startswith(f"<b class='use-short'>{use.short()}</b> - Retinal screening report")


def test_a_clinical_bundle_shows_its_statement_and_no_banner(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    _with_use(bundle, IntendedUse("clinical", STATEMENT))
    html = _report(bundle, tmp_path / "out")
    assert "id='intended-use'" not in html and "class='use-short'" not in html
    assert f"<dt>Intended use</dt><dd>clinical, as the bundle&#x27;s maker states: {STATEMENT}</dd>" in html


def test_a_bundle_from_before_the_field_is_shown_as_unstated(tiny_bundle: Path, tmp_path: Path) -> None:
    html = _report(tiny_bundle, tmp_path / "out")
    assert "<div class='use use-unstated' id='intended-use'" in html
    assert "<dt>Intended use</dt><dd>not stated by the bundle</dd>" in html


def test_the_day_split_index_page_carries_the_banner_too(tiny_bundle: Path, tmp_path: Path) -> None:
    from uopsl.runtime.report_days import write_reports

    bundle = _copy(tiny_bundle, tmp_path)
    _with_use(bundle, IntendedUse("demonstration"))
    rows = [{"id": f"r{i}", "source": f"r{i}.jpg", "status": "ok", "refer": False, "positive": [],
             "probs": {"normal": 0.9, "npdr": 0.1, "dme": 0.1}, "screened_at": "2026-11-30T10:00:00+00:00"}
            for i in range(5)]
    out = tmp_path / "out"
    out.mkdir()
    index = write_reports(rows, out, read_manifest(bundle), {}, max_rows=2)
    pages = [index, *sorted((out / "days").glob("*.html"))]
    assert len(pages) >= 3
    short = IntendedUse("demonstration").short()
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "<div class='use use-demonstration' id='intended-use'" in html, page
        # Every printed sheet: each table's repeated header and footer lines open with the caution.
        tables = re.findall(r"<table[^>]*class='(?:results|days[^']*)'>.*?</table>", html, re.S)
        assert tables, page
        for t in tables:
            assert re.search(rf"<tr class='pagehead'><th colspan='\d'><b class='use-short'>{short}</b> - ", t), page
            assert re.search(rf"<tfoot[^>]*><tr><td colspan='\d'><b class='use-short'>{short}</b> - ", t), page


def test_a_manifest_with_a_wrong_kind_of_intended_use_is_refused_cleanly(tiny_bundle: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    bundle = _copy(tiny_bundle, tmp_path)
    with pytest.raises(BundleError, match="intended_use must be an IntendedUse, got str"):
        write_manifest(bundle, replace(read_manifest(bundle), intended_use="clinical"))  # type: ignore[arg-type]


def test_screener_and_info_say_what_the_bundle_may_be_used_for(tiny_bundle: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.runtime.api import Screener
    from uopsl.runtime.cli import cli as screen_cli

    bundle = _copy(tiny_bundle, tmp_path)
    use = _with_use(bundle, IntendedUse("research", trained_on="TVHL photographs")).intended_use
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.api"):
        s = Screener(bundle, backend="ort-cpu")
    assert s.intended_use == use and not s.intended_use.for_patients
    assert any(use.warning() in r.getMessage() for r in caplog.records)  # type: ignore[operator]
    res = CliRunner().invoke(screen_cli, ["info", str(bundle)])
    assert res.exit_code == 0, res.output
    assert f"use        {use.describe()}" in res.output
    res = CliRunner().invoke(screen_cli, ["info", str(bundle), "--json"])
    got = json.loads(res.output)["intended_use"]
    assert got == {"status": "research", "statement": "", "trained_on": "TVHL photographs", "warning": use.warning()}

    _with_use(bundle, IntendedUse("clinical", STATEMENT))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.api"):
        Screener(bundle, backend="ort-cpu")
    assert not caplog.records


def test_run_opens_its_summary_with_the_caution(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tinybundle import fundus_jpeg
    from uopsl.runtime.cli import main

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy(tiny_bundle, tmp_path)
    use = _with_use(bundle, IntendedUse("demonstration")).intended_use
    fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    argv = ["run", str(bundle), str(tmp_path / "in"), "--backend", "ort-cpu", "--no-overlays", "--no-report"]
    main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.rstrip().splitlines()
    # Just above the counts, which read like a screening; the report's path stays the last line.
    assert err[-3] == f"{use.short()}: {use.warning()}" and err[-2].startswith("1 image: ")
    assert err[-1].startswith("results: ")
    _with_use(bundle, IntendedUse("clinical", STATEMENT))
    assert main([*argv, "--out", str(tmp_path / "out2")]) == 0
    err = capsys.readouterr().err
    assert use.short() not in err and "\n1 image: " in "\n" + err


def test_each_results_row_records_the_use_stated_when_it_was_screened(tiny_bundle: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A restated bundle keeps its results folder, so the use is a row's, not the folder's."""
    import csv

    from tinybundle import fundus_jpeg
    from uopsl.runtime.cli import main

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy(tiny_bundle, tmp_path)
    _with_use(bundle, IntendedUse("demonstration"))
    fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    argv = ["run", str(bundle), str(tmp_path / "in"), "--backend", "ort-cpu", "--no-overlays", "--no-report",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    _with_use(bundle, IntendedUse("clinical", STATEMENT))
    fundus_jpeg(tmp_path / "in" / "b.jpg", seed=2)
    assert main(argv) == 0
    with open(tmp_path / "out" / "results.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((Path(r["source"]).name, r["intended_use"]) for r in rows) == [("a.jpg", "demonstration"),
                                                                                ("b.jpg", "clinical")]
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["intended_use"] for r in jsonl if "source" in r) == ["clinical", "demonstration"]


def test_watch_marks_every_result_line_unless_the_bundle_is_clinical(tiny_bundle: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """For hours of `watch`, the per-photograph line is all a clinic sees of each result (a review's note)."""
    from tinybundle import fundus_jpeg
    from uopsl.runtime.cli import main

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy(tiny_bundle, tmp_path)
    for status, statement, tag in (("demonstration", "", "[demonstration model] "), ("clinical", STATEMENT, "")):
        _with_use(bundle, IntendedUse(status, statement))  # type: ignore[arg-type]
        inbox = tmp_path / f"inbox-{status}"
        fundus_jpeg(inbox / "a.jpg", seed=1)
        assert main(["watch", str(bundle), str(inbox), "--out", str(tmp_path / f"out-{status}"), "--backend",
                     "ort-cpu", "--settle-ms", "50", "--poll", "0.05", "--timeout", "1"]) == 0
        lines = [x for x in capsys.readouterr().err.splitlines() if x.rstrip().endswith("a.jpg")]
        assert len(lines) == 1 and lines[0].startswith(tag) and lines[0].startswith("[") == bool(tag), lines
