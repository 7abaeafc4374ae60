"""Mutation audit (session 41) of the per-day report, the shared CLI plumbing and the worker pool.

Audited: ``runtime/report_days.py`` (a results folder split into day pages, their rewrite fingerprints and
the index), ``runtime/clikit.py`` (one-line errors, ``-v`` tracebacks, exit codes, logging set-up, SIGTERM
and the Windows console-close handler) and ``runtime/workerpool.py`` (the shared pools of preprocessing
processes). Each single-point mutant was run against the existing tests of its module; each test here pins a
behaviour one of the survivors changed (its docstring names the mutant and what a user would have suffered).
Expected values are worked out by hand from the inputs, never by calling the code under test another way.
No model is loaded, and at most one worker process is started.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor, Future
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import pytest

from uopsl.runtime import clikit, progress, reasons, report, report_days, workerpool
from uopsl.runtime.bundle import ClassSpec, Manifest
from uopsl.runtime.errors import ConfigError, ParityError
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, encode_jpeg, encode_png
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.report_days import DAYS_DIR, FINGERPRINTS, write_reports

# Noon UTC: the same local calendar day in every time zone from UTC-11 to UTC+11.
NOON = [datetime(2026, 11, d, 12, 0, tzinfo=timezone.utc) for d in (26, 27, 28)]
DAY = [n.astimezone().date().isoformat() for n in NOON]  # the local day by hand: what the page names are
LATER_NS = int(NOON[2].timestamp() + 86400) * 10**9  # image files written after every row's screening time


def _manifest(threshold: float = 0.6) -> Manifest:
    classes = (ClassSpec("normal", ("healthy retina",), threshold=0.5, referable=False),
               ClassSpec("dr", ("microaneurysms",), threshold=threshold, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(), files=(), model_name="uopsl",
                    content_sha256="cd" * 32)


def _row(i: int, when: datetime | None, *, dr: float = 0.1, sha: str | None = None, source: bool = True,
         status: str = "ok") -> dict[str, Any]:
    refer = status == "ok" and dr >= 0.6
    row: dict[str, Any] = {
        "id": f"p{i:03d}", "key": f"/drop/p{i:03d}.jpg|1000|{i}", "sha256": sha or f"{i:064x}", "status": status,
        "refer": refer if status == "ok" else None, "positive": ["dr"] if refer else [],
        "probs": {"normal": 1 - dr, "dr": dr} if status == "ok" else {}, "reasons": [], "error": "",
        "heatmap_class": "dr",
    }
    if source:
        row["source"] = f"/drop/p{i:03d}.jpg"
    if when is not None:
        row["screened_at"] = when.isoformat()
    return row


def _page(out: Path, name: str) -> str:
    return (out / DAYS_DIR / name).read_text(encoding="utf-8")


def _ino(out: Path, name: str) -> int:
    return (out / DAYS_DIR / name).stat().st_ino


def _index(out: Path) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


# -- report_days: what a page's rewrite fingerprint must cover ------------------------------------------------
def _two_days(**kw: Any) -> list[dict[str, Any]]:
    return [_row(0, NOON[0], **kw), _row(1, NOON[0], **kw), _row(2, NOON[1], **kw)]


def _images(out: Path, ids: list[str], grey: int, mtime_ns: int) -> None:
    """A thumbnail and a heatmap per id, all of one grey level, padded to one size, with the given mtime."""
    import os

    (out / THUMB_DIR).mkdir(exist_ok=True)
    (out / OVERLAY_DIR).mkdir(exist_ok=True)
    rgb = np.full((48, 48, 3), grey, np.uint8)
    jpg, png = encode_jpeg(rgb, 80), encode_png(rgb)
    for i in ids:
        for path, data in ((out / THUMB_DIR / f"{i}.jpg", jpg), (out / OVERLAY_DIR / f"{i}.png", png)):
            path.write_bytes(data + b"\0" * (4096 - len(data)))  # after the end marker: ignored by decoders
            os.utime(path, ns=(mtime_ns, mtime_ns))


def _embedded(page: str) -> list[str]:
    return re.findall(r"src=\"data:image/[a-z]+;base64,([^\"]+)\"", page)


@pytest.mark.parametrize("which", [THUMB_DIR, OVERLAY_DIR])
def test_an_image_replaced_by_one_of_the_same_size_makes_its_page_again(tmp_path: Path, which: str) -> None:
    """B26 (only the size of an embedded image in the fingerprint) and B27 (the heatmap left out of it): a
    thumbnail or heatmap written again (a photograph screened again with other results, same byte count) left
    the old day page embedding the old picture, next to the new scores. By hand: every file padded to 4096
    bytes, so only the modification time tells old from new; each grey level embeds differently."""
    import os

    rows = _two_days()
    ids = [r["id"] for r in rows]
    _images(tmp_path, ids, 60, LATER_NS)
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    name = f"{DAY[0]}.html"
    before, ino = _embedded(_page(tmp_path, name)), _ino(tmp_path, name)
    assert len(before) == 4, "two rows, a thumbnail and a heatmap each"
    rgb = np.full((48, 48, 3), 200, np.uint8)
    data = encode_jpeg(rgb, 80) if which == THUMB_DIR else encode_png(rgb)
    path = tmp_path / which / ("p000.jpg" if which == THUMB_DIR else "p000.png")
    path.write_bytes(data + b"\0" * (4096 - len(data)))
    os.utime(path, ns=(LATER_NS + 100 * 10**9,) * 2)
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    assert _ino(tmp_path, name) != ino, "the page embedding the replaced image was not made again"
    assert _embedded(_page(tmp_path, name)) != before


def test_a_photograph_screened_again_with_other_scores_makes_its_page_again(tmp_path: Path) -> None:
    """B32 (the rows left out of the fingerprint): a photograph screened again on the same day keeps its id,
    its page and its place, only its scores and verdict change; the day page went on showing the old verdict
    ("No referable finding") for a photograph now referred. By hand: dr 0.1 -> 0.9 crosses the 0.6 threshold."""
    rows = _two_days()
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    name = f"{DAY[0]}.html"
    ino = _ino(tmp_path, name)
    again = [_row(0, NOON[0], dr=0.9), *rows[1:]]
    write_reports(again, tmp_path, _manifest(), max_rows=2)
    assert _ino(tmp_path, name) != ino
    assert "<b id='n-refer'>1</b>" in _page(tmp_path, name)


def test_a_changed_bundle_makes_every_page_again(tmp_path: Path) -> None:
    """B31 (the manifest left out of the fingerprint): the same rows under a bundle with another threshold
    (a folder re-reported after a recalibration) kept the old days' pages, which state the old thresholds.
    By hand: 0.6 -> 0.75 is shown on the new pages."""
    rows = _two_days()
    write_reports(rows, tmp_path, _manifest(0.6), max_rows=2)
    inos = {n: _ino(tmp_path, n) for n in (f"{DAY[0]}.html", f"{DAY[1]}.html")}
    write_reports(rows, tmp_path, _manifest(0.75), max_rows=2)
    assert all(_ino(tmp_path, n) != ino for n, ino in inos.items())
    assert "0.75" in _page(tmp_path, f"{DAY[0]}.html")


def test_a_run_info_warning_reaches_pages_whose_rows_did_not_change(tmp_path: Path) -> None:
    """B29 (``or`` -> ``and`` in what of the run's details counts): with rows that name their files, every detail
    of the run was left out of the fingerprint, so a page made while a run was INCOMPLETE kept that banner after
    the run completed (and the reverse). By hand: the banner's text is the ``incomplete`` value."""
    rows = _two_days()
    write_reports(rows, tmp_path, _manifest(), {"incomplete": "stopped by Ctrl-C"}, max_rows=2)
    name = f"{DAY[0]}.html"
    assert "INCOMPLETE: stopped by Ctrl-C." in _page(tmp_path, name)
    write_reports(rows, tmp_path, _manifest(), {}, max_rows=2)
    assert "INCOMPLETE" not in _page(tmp_path, name)


def test_inputs_count_for_a_page_whose_rows_name_no_file(tmp_path: Path) -> None:
    """B28 (the command's inputs never in the fingerprint): a page of rows without a source (photographs
    passed in memory) names the run's inputs as its folders; screened under other inputs, it kept naming the
    old ones. By hand: the undated page lists ``inputs`` when no row has a source."""
    rows = [_row(0, NOON[0]), _row(1, NOON[0]), _row(2, None, source=False)]
    write_reports(rows, tmp_path, _manifest(), {"inputs": ["/clinic/monday"]}, max_rows=2)
    assert "/clinic/monday" in _page(tmp_path, "undated.html")
    write_reports(rows, tmp_path, _manifest(), {"inputs": ["/clinic/tuesday"]}, max_rows=2)
    page = _page(tmp_path, "undated.html")
    assert "/clinic/tuesday" in page and "/clinic/monday" not in page


def test_a_copy_found_on_a_later_day_is_named_on_the_earlier_days_page(tmp_path: Path) -> None:
    """B35 (copies on other pages left out of the fingerprint): a photograph filed again the next day (perhaps
    under another patient) must be flagged on both days' pages; the earlier page, whose own rows did not change,
    was kept and never named the copy. By hand: p010 on day 2 has p000's content hash."""
    same = "ab" * 32
    rows = [_row(0, NOON[0], sha=same), _row(1, NOON[0]), _row(2, NOON[1])]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    assert "Same photograph as" not in _page(tmp_path, f"{DAY[0]}.html")
    write_reports([*rows, _row(10, NOON[1], sha=same)], tmp_path, _manifest(), max_rows=2)
    assert f"Same photograph as <a href='{DAY[1]}.html#r-p010'>p010.jpg ({DAY[1]})</a>" in \
        _page(tmp_path, f"{DAY[0]}.html")


@pytest.mark.parametrize("module", [report, reasons], ids=["report", "reasons"])
def test_a_toolkit_fix_to_the_page_renderer_reaches_old_days(module: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """B60 (only report_days.py hashed as the rendering code): a fix to report.py, which renders every row of
    a day page, left a month of old pages with the old text; so would a fix to the advice in reasons.py. Stood
    in for by pointing the module's ``__file__`` at a copy whose content changes between two refreshes."""
    fake = tmp_path / "module_copy.py"
    fake.write_text(Path(module.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(module, "__file__", str(fake))
    report_days._code_hash.cache_clear()
    out = tmp_path / "out"
    out.mkdir()
    try:
        rows = _two_days()
        write_reports(rows, out, _manifest(), max_rows=2)
        ino = _ino(out, f"{DAY[0]}.html")
        fake.write_text(fake.read_text(encoding="utf-8") + "\n# a fixed advice text\n", encoding="utf-8")
        report_days._code_hash.cache_clear()
        write_reports(rows, out, _manifest(), max_rows=2)
        assert _ino(out, f"{DAY[0]}.html") != ino
    finally:
        report_days._code_hash.cache_clear()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_damaged_fingerprint_file_makes_the_pages_again_instead_of_failing(tmp_path: Path, content: str) -> None:
    """B37 (a fingerprint file that is not JSON) and B38 (JSON that is not an object): ``days/pages.json`` cut
    short by a power cut or edited by hand made every later report refresh fail, so ``watch`` stopped updating
    report.html. It must be taken as no fingerprints: every page written again, and a good file written."""
    rows = _two_days()
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    ino = _ino(tmp_path, f"{DAY[0]}.html")
    (tmp_path / DAYS_DIR / FINGERPRINTS).write_text(content, encoding="utf-8")
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    assert _ino(tmp_path, f"{DAY[0]}.html") != ino
    saved = json.loads((tmp_path / DAYS_DIR / FINGERPRINTS).read_text(encoding="utf-8"))
    assert sorted(saved["pages"]) == [f"{DAY[0]}.html", f"{DAY[1]}.html"]


def test_max_rows_below_one_is_refused_for_an_empty_folder_too(tmp_path: Path) -> None:
    """B02 (write_reports' own check weakened to ``< 0``): a page size of 0 is a caller's mistake; with no rows
    yet (a new ``watch`` folder) it was accepted, and refused only once the first photograph came in."""
    with pytest.raises(ConfigError, match="max_rows must be >= 1"):
        write_reports([], tmp_path, _manifest(), max_rows=0)


# -- report_days: the index ----------------------------------------------------------------------------------
def _index_days(index: str) -> list[str]:
    return re.findall(r"<tr><td>([^<]+)</td><td>\d+</td><td class='refer'>", index)


def test_the_index_lists_photographs_without_a_screening_time_after_every_day(tmp_path: Path) -> None:
    """B46 (the index's day table sorted with undated rows first): the table runs newest day first, and the
    line for rows without a screening time belongs at its end, not above today's line a clinic looks for."""
    rows = [_row(0, NOON[0]), _row(1, NOON[1]), _row(2, None)]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    assert _index_days(_index(tmp_path)) == [DAY[1], DAY[0], "no screening time"]


def test_the_index_names_ten_duplicate_groups_and_counts_the_rest(tmp_path: Path) -> None:
    """B47/B47b (the cap of 10 named duplicate groups off by one): 10 groups must be named in full with no
    "and 0 more"; 11 groups name 10 and say "and 1 more". By hand: group g is rows 2g and 2g+1."""
    for n_groups in (10, 11):
        out = tmp_path / str(n_groups)
        out.mkdir()
        rows = [_row(i, NOON[i % 2], sha=f"{i // 2:064x}") for i in range(2 * n_groups)]
        write_reports(rows, out, _manifest(), max_rows=n_groups)
        warn = re.search(r"<div class='warn' id='duplicates'>(.*?)</div>", _index(out), re.S)
        assert warn is not None
        text = warn.group(1)
        assert f"<b>{n_groups} photographs appear more than once</b>" in text
        assert text.count(" = ") == 10, "ten groups named"
        assert ("and 1 more" in text) is (n_groups == 11) and "and 0 more" not in text


def test_a_row_not_screened_ok_is_not_listed_as_referred(tmp_path: Path) -> None:
    """B51 (the referral list took any row with ``refer`` set): a row whose status is not ``ok`` (ungradable)
    but still carries ``refer: true`` (an old or hand-edited results file) is counted as ungradable on its day;
    listing it among the referred photographs too contradicted the counts. By hand: p001 only is referred."""
    odd = _row(0, NOON[0], status="ungradable")
    odd["refer"] = True
    rows = [odd, _row(1, NOON[0], dr=0.9), _row(2, NOON[1])]
    write_reports(rows, tmp_path, _manifest(), max_rows=2)
    referred, retakes = _index(tmp_path).split("Referred photographs")[1].split("Photographs to retake")
    assert re.findall(r"#r-(p\d+)'>", referred) == ["p001"]
    assert re.findall(r"#r-(p\d+)'>", retakes) == ["p000"]  # listed where its day counts it (session 53)


def test_the_index_names_only_referable_findings_of_a_referral(tmp_path: Path) -> None:
    """B55 (the Findings column listed every positive class): a referred photograph also positive for the
    non-referable ``normal`` class read "normal, dr" under Findings, as if "normal" were a reason to refer."""
    r = _row(0, NOON[0], dr=0.9)
    r["positive"] = ["normal", "dr"]
    write_reports([r, _row(1, NOON[0]), _row(2, NOON[1])], tmp_path, _manifest(), max_rows=2)
    cells = re.findall(r"#r-p000'>p000\.jpg</a></td><td>[^<]*</td><td>([^<]*)</td>", _index(tmp_path))
    assert cells == ["dr"]


# -- clikit --------------------------------------------------------------------------------------------------
@pytest.fixture
def cli_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No torchrun in the environment; logging, Python warning filters and bars put back afterwards."""
    import warnings

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    saved = list(warnings.filters)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logging.basicConfig(force=True)
        logging.getLogger().setLevel(logging.WARNING)
        warnings.filters[:] = saved
        progress.set_enabled(True)


@click.group()
@clikit.verbose_option
def _cli() -> None:
    pass


@_cli.command("do")
@click.option("--how", required=True)
@click.argument("files", nargs=-1)
def _do(how: str, files: tuple[str, ...]) -> None:
    import errno

    if how == "config":
        raise ConfigError("a bad setting")
    if how == "parity":
        raise ParityError("the int8 file failed its gates")
    if how == "rename":
        raise OSError(errno.EXDEV, "Invalid cross-device link", "/out/results.csv.tmp", None, "/mnt/results.csv")
    if how == "bare-os":
        raise OSError("quota exceeded on the share")
    if how == "bug":
        raise ZeroDivisionError("division by zero")
    if how == "echo":
        click.echo("patient \u041f\u0451\u0442\u0440")
    if how == "level":
        click.echo(f"level {logging.getLogger().level}")


def test_vv_shows_debug_lines_and_v_does_not(cli_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    """B67 (DEBUG only above ``-vv``): ``-vv`` is the documented way to see every step when a clinic reports a
    problem; it showed no more than ``-v``."""
    clikit.setup_logging(1)
    logging.getLogger("uopsl.runtime.s41").debug("a debug step")
    assert "a debug step" not in capsys.readouterr().err
    clikit.setup_logging(2)
    logging.getLogger("uopsl.runtime.s41").debug("a debug step")
    assert "DEBUG uopsl.runtime.s41: a debug step" in capsys.readouterr().err


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0"}, {"WORLD_SIZE": "two", "RANK": "1"}])
def test_a_run_without_torchrun_logs_bare_lines(env: dict[str, str], cli_state: None, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """B77 (one process taken for torchrun's rank 0) and B78 (an unparsable WORLD_SIZE not caught): a plain run
    prefixed every log line with "[rank 0]", and a stray WORLD_SIZE=two in a clinic's environment made every
    command fail before it started. Both are plain runs: bare lines, every progress bar shown."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    clikit.setup_logging(0)
    logging.getLogger("uopsl.runtime.s41").warning("a warning")
    assert capsys.readouterr().err == "WARNING uopsl.runtime.s41: a warning\n"
    assert progress.enabled() and clikit.speaks_for_the_run()


def test_vv_given_after_the_subcommand_shows_pydicoms_warnings(cli_state: None) -> None:
    """B74 (the earlier call's pydicom warning filter not removed): ``-v`` handling runs once per place the flag
    may stand, so ``uopsl-screen run -vv`` set logging up twice, at 0 and then at 2; the first call's "ignore
    pydicom" filter stayed and -vv never showed pydicom's warnings. Read with the filters as set up (no
    ``simplefilter``): only the filters decide what is recorded."""
    import warnings

    clikit.setup_logging(0)
    clikit.setup_logging(2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("from pydicom", UserWarning, "misc.py", 1, module="pydicom.misc", registry={})
    assert [str(w.message) for w in seen] == ["from pydicom"]
    clikit.setup_logging(0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("from pydicom", UserWarning, "misc.py", 1, module="pydicom.misc", registry={})
    assert seen == []


def test_pydicom_child_loggers_are_hidden_too(cli_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    """B84 (only the logger named exactly ``pydicom`` hidden): pydicom logs from child loggers as well
    (``pydicom.pixels...``); each such line, naming no file, came through between the rows' own reasons."""
    clikit.setup_logging(0)
    logging.getLogger("pydicom.pixels.decoders").warning("a decoder oddity")
    logging.getLogger("pydicomish").warning("not pydicom")
    err = capsys.readouterr().err
    assert "a decoder oddity" not in err and "not pydicom" in err


@pytest.mark.parametrize("flag", ["--verbose", "-vv"])
def test_every_spelling_of_verbose_shows_the_traceback(flag: str, cli_state: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """B88 (``--verbose`` not recognised) and B89 (``-vv`` not recognised): the error line says "rerun with -v
    for the traceback"; rerun as ``--verbose`` or ``-vv`` it still showed none."""
    assert clikit.main_entry(_cli, [flag, "do", "--how", "bug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err


def test_a_file_named_v_after_the_double_dash_is_no_verbose_flag(cli_state: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """B90 (arguments after ``--`` read as options): a file named ``-v`` passed after ``--`` turned on the
    traceback of an error that must be one line."""
    assert clikit.main_entry(_cli, ["do", "--how", "bug", "--", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: unexpected ZeroDivisionError: division by zero")


@pytest.mark.parametrize("how", ["config", "rename"])
def test_v_shows_the_traceback_of_a_toolkit_error_and_an_os_error(how: str, cli_state: None,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """B111 and B112 (the traceback of a UopslError or an OSError dropped under ``-v``): the module promises
    "the traceback only with -v"; for these two, which are most of what users report, -v showed nothing more."""
    assert clikit.main_entry(_cli, ["-v", "do", "--how", how]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip("\n").split("\n")[-1].startswith("error: ")
    assert clikit.main_entry(_cli, ["do", "--how", how]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_failed_gate_exits_1(cli_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    """B110 (every UopslError exit 2): ``uopsl validate`` exits 1 when a file failed its gates (ParityError),
    which a script reads as "ran, the file failed"; 2 says "nothing sensible could be done"."""
    assert clikit.main_entry(_cli, ["do", "--how", "parity"]) == 1
    assert capsys.readouterr().err == "error: the int8 file failed its gates\n"


def test_an_os_error_names_both_paths_or_its_own_words(cli_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    """B116 (the second path of a rename dropped) and B128 (an OSError without strerror shown by class name):
    a failed move across disks must name where it went to; an OSError raised with a message only (a network
    share's driver) read "error: OSError", hiding what the OS said."""
    assert clikit.main_entry(_cli, ["do", "--how", "rename"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: Invalid cross-device link: /out/results.csv.tmp -> /mnt/results.csv (check the path")
    assert clikit.main_entry(_cli, ["do", "--how", "bare-os"]) == 2
    assert capsys.readouterr().err.startswith("error: quota exceeded on the share (check the path")


def test_output_a_code_page_cannot_encode_is_escaped_and_the_policy_put_back(cli_state: None,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """B104 (stdout left strict) and B103 (the escaping policy left on afterwards): on Windows, ``uopsl info >
    info.txt`` writes in the ANSI code page, and a Cyrillic name crashed the command with "a bug"; an
    application calling main() in-process must get its own strict stdout back. Stood in for by a cp1252
    stream."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    assert clikit.main_entry(_cli, ["do", "--how", "echo"]) == 0
    out.flush()
    assert raw.getvalue() == b"patient \\u041f\\u0451\\u0442\\u0440\n"
    assert out.errors == "strict"


def test_sigterm_handling_is_put_back_after_the_command(cli_state: None) -> None:
    """B92 (the previous SIGTERM handler not restored): an application that calls main() in-process kept a
    handler raising KeyboardInterrupt on SIGTERM, so its own shutdown handling never ran again."""
    before = signal.getsignal(signal.SIGTERM)
    assert clikit.main_entry(_cli, ["do", "--how", "config"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_verbosity_before_the_subcommand_holds_inside_it(cli_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    """B121 (the subcommand's absent -v resetting logging): ``uopsl-screen -vv run ...`` ran at the default level,
    because the subcommand's own (absent) -v set logging up again. By hand: DEBUG is 10."""
    assert clikit.main_entry(_cli, ["-vv", "do", "--how", "level"]) == 0
    assert capsys.readouterr().out == f"level {logging.DEBUG}\n"


def test_option_given_tells_a_default_from_the_users_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """B65 (a default_map value taken as given): ``bench``, ``calibrate`` and ``quantize`` refuse an option the run
    would not use, but only one the user set; an application that runs them with a ``default_map`` (its own
    defaults) had every such run refused. (B66, a plain default taken as given, is caught by test_signing and
    test_bench_figures too.) By hand: only the command line and the environment are the user's."""
    seen: list[bool] = []

    @click.command()
    @click.option("--n", type=int, default=1, envvar="UOPSL_S41_N")
    def cmd(n: int) -> None:
        seen.append(clikit.option_given("n"))

    monkeypatch.delenv("UOPSL_S41_N", raising=False)
    cmd.main([], standalone_mode=False)
    cmd.main([], standalone_mode=False, default_map={"n": 5})
    cmd.main(["--n", "2"], standalone_mode=False)
    monkeypatch.setenv("UOPSL_S41_N", "3")
    cmd.main([], standalone_mode=False)
    assert seen == [False, False, True, True]


def test_a_logoff_is_handled_and_a_close_after_the_save_interrupts_nothing() -> None:
    """B95 (the logoff event not handled) and B96 (an interrupt sent after the command had saved): logging off
    Windows ended the run without writing results.csv and the report; and a close arriving once everything was
    written raised Ctrl-C into a command already done (exit 130/143 for a finished run)."""
    calls: list[int] = []
    got = clikit._Sigterm()
    handler = clikit.ConsoleCloseHandler(got, lambda: calls.append(1), grace_s=0.05)
    assert handler(5) == 1 and calls == [1] and got.received
    calls.clear()
    done = clikit.ConsoleCloseHandler(clikit._Sigterm(), lambda: calls.append(1), grace_s=5.0)
    done.done.set()
    assert done(2) == 1 and calls == []


def test_lazy_commands_are_listed_and_take_v_and_q(monkeypatch: pytest.MonkeyPatch) -> None:
    """B125 (lazy commands left out of the list) and B126 (a lazy command without the shared -v/-q): ``uopsl
    --help`` listed none of the lazily imported commands, and ``uopsl quantize ... -v`` was a usage error."""
    import types

    @click.command("tool")
    def tool() -> None:
        pass

    module = types.ModuleType("uopsl_s41_lazy")
    module.tool = tool  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uopsl_s41_lazy", module)
    group = clikit.LazyGroup(name="g", lazy={"tool": "uopsl_s41_lazy:tool"})
    ctx = click.Context(group)
    assert group.list_commands(ctx) == ["tool"]
    got = group.get_command(ctx, "tool")
    assert got is not None
    assert {o for p in got.params for o in getattr(p, "opts", ())} >= {"-v", "--verbose", "-q", "--quiet"}


# -- workerpool ----------------------------------------------------------------------------------------------
def _worker_settings() -> tuple[int, bool]:
    """In a worker: (OpenCV's thread count, SIGUSR1 ignored)."""
    import cv2

    usr1 = getattr(signal, "SIGUSR1", None)
    return cv2.getNumThreads(), usr1 is None or signal.getsignal(usr1) == signal.SIG_IGN


def test_a_worker_runs_opencv_on_one_thread_and_ignores_sigusr1() -> None:
    """B129 (OpenCV's thread pool left on) and B131 (SIGUSR1 left at its default): each of the n workers ran
    OpenCV with a thread per core, n x cores threads fighting for the cores the pipeline sized itself to; and
    SIGUSR1, which asks the parent for its threads' stacks (a hang being diagnosed), killed every worker it
    reached (its default action ends the process), breaking the pool. One worker process is started."""
    pool = workerpool.new_process_pool(1)
    try:
        assert pool.submit(_worker_settings).result(timeout=120) == (1, True)
    finally:
        workerpool.discard_pool(pool, terminate=True)


def _stand_in_pool(broken: bool) -> SimpleNamespace:
    proc = SimpleNamespace(terminated=False)
    proc.terminate = lambda: setattr(proc, "terminated", True)
    pool = SimpleNamespace(_processes={1: proc}, _broken=broken, _call_queue=None, shut=None, proc=proc)
    pool.shutdown = lambda wait, cancel_futures: setattr(pool, "shut", (wait, cancel_futures))
    return pool


def test_a_broken_shared_pool_replaced_at_first_use_has_its_workers_stopped() -> None:
    """B136 (the broken pool replaced but not discarded): its manager thread may have died with it (the CPython
    3.11 race in workerpool's docstring), so a worker left alive stays for the program's life, holding memory
    and a core under ``watch``. By hand: the stand-in's worker must be terminated and the pool shut down
    without waiting. No process starts (a pool starts its workers at its first task)."""
    n = 41
    old = _stand_in_pool(broken=True)
    with workerpool._lock:
        workerpool._shared[n] = old  # type: ignore[assignment]
    fresh = workerpool.worker_processes(n)
    try:
        assert fresh is not old and old.proc.terminated and old.shut == (False, True)
    finally:
        workerpool.forget_worker_processes(fresh)


def test_forgetting_one_pool_keeps_the_others_shared() -> None:
    """B141 (every shared pool forgotten): a run giving up on its pool of 2 workers also dropped the shared
    pool of 4 another run was using; the next run asking for 4 then started a second pool beside the first,
    twice the processes. By hand: only the forgotten stand-in leaves the shared table."""
    gone, kept = _stand_in_pool(False), _stand_in_pool(False)
    with workerpool._lock:
        workerpool._shared[42] = gone  # type: ignore[assignment]
        workerpool._shared[43] = kept  # type: ignore[assignment]
    try:
        workerpool.forget_worker_processes(gone)  # type: ignore[arg-type]
        assert 42 not in workerpool._shared and workerpool._shared.get(43) is kept
        assert gone.proc.terminated and not kept.proc.terminated
    finally:
        with workerpool._lock:
            workerpool._shared.pop(43, None)


def test_a_pool_that_is_not_broken_is_never_dead() -> None:
    """B143 (the broken flag not checked): a healthy pool whose manager thread has not started yet (none
    until the first task) or has ended after its work was done would be taken as dead, and a photograph
    waiting on it failed with "the worker pool broke"."""
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    for manager in (None, ended):
        assert not workerpool.pool_is_dead(SimpleNamespace(_broken=False, _executor_manager_thread=manager))
    assert workerpool.pool_is_dead(SimpleNamespace(_broken="a worker died", _executor_manager_thread=ended))


def test_a_result_that_arrives_as_the_pool_breaks_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """B144 (the done check dropped after a poll): a photograph whose result came in during the last poll, just
    as another task broke the pool, was thrown away with BrokenExecutor (and the photograph prepared again, or
    blamed for the break). By hand: the stand-in ``wait`` completes the future, the pool is dead, 7 comes back."""
    future: Future[int] = Future()
    monkeypatch.setattr(workerpool, "wait", lambda fs, timeout: future.set_result(7))
    dead = SimpleNamespace(_broken="a worker died", _executor_manager_thread=None)
    assert workerpool.wait_prepared(future, dead) == 7
    with pytest.raises(BrokenExecutor):
        monkeypatch.setattr(workerpool, "wait", lambda fs, timeout: None)
        workerpool.wait_prepared(Future(), dead)


def _broken_pool_with_feeder(feeder: threading.Thread | None) -> SimpleNamespace:
    reader = SimpleNamespace(closed=False)
    reader.close = lambda: setattr(reader, "closed", True)
    queue = SimpleNamespace(_reader=reader, _thread=feeder, cancel_join_thread=lambda: None)
    pool = _stand_in_pool(broken=True)
    pool._call_queue = queue
    return pool


def test_a_feeder_that_ends_within_the_grace_time_keeps_its_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """B151 (no grace time before closing the pipe) and B155 (a queue whose feeder never started): on a Python
    without the gh-94777 fix, the read end is closed only under a feeder still stuck after the grace time;
    closed under a feeder about to close it itself, one file closed twice from two threads can close another
    file that reused its number. A broken pool whose queue never started a feeder (nothing submitted yet) made
    discarding it fail with AttributeError, and its worker was never stopped. By hand: a feeder that ends after
    0.3 s, a grace of 10 s."""
    monkeypatch.setattr(workerpool, "FEEDER_FIXED", False)
    monkeypatch.setattr(workerpool, "FEEDER_GRACE_S", 10.0)
    release = threading.Event()
    feeder = threading.Thread(target=release.wait, args=(0.3,), daemon=True)
    feeder.start()
    pool = _broken_pool_with_feeder(feeder)
    workerpool.discard_pool(pool)  # type: ignore[arg-type]
    assert not pool._call_queue._reader.closed and pool.proc.terminated
    never = _broken_pool_with_feeder(None)
    workerpool.discard_pool(never)  # type: ignore[arg-type]
    assert never.proc.terminated and not never._call_queue._reader.closed


def test_shutting_down_the_shared_pools_waits_for_their_workers() -> None:
    """B154 (a healthy pool shut down without waiting): ``shutdown_worker_processes`` promises a long-running
    program that the workers are gone when it returns (before it forks, frees memory or exits its service);
    they were still running. One worker process is started."""
    pool = workerpool.worker_processes(1)
    assert pool.submit(workerpool.worker_alive).result(timeout=120) is True
    procs = list(pool._processes.values())  # type: ignore[attr-defined]
    workerpool.shutdown_worker_processes()
    assert procs and not any(p.is_alive() for p in procs)
