"""``uopsl-screen`` against what a field clinic does to it (the clinic review's findings, one test each).

Each test reproduces a reviewer's case and checks the outcome: exact row
counts, exit codes and the words of the message. The numbers in the test names
are the review's findings (/tmp/s9/review_clinic.md at the time of writing).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from tinybundle import fundus_jpeg, good_photos, make_bad_zoo, results_csv, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import ScreeningInterrupted, Screener
from uopsl.runtime.bundle import read_manifest, write_manifest
from uopsl.runtime.cli import main
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.results import LOCK_NAME, RUN_JSON, ResultStore
from uopsl.runtime.watch import StableFiles, WatchConfig, watch_folder


_csv, _jsonl, _good = results_csv, results_jsonl, good_photos


def _run(bundle: Path, *args: str | Path, extra: tuple[str, ...] = ()) -> int:
    *inputs, out = args
    return main(["run", str(bundle), *map(str, inputs), "--out", str(out), "--backend", "ort-cpu", "--threads", "1",
                 "--no-progress", *extra])


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line of stderr (and that there is exactly one, with no traceback)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(autouse=True)
def _no_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def other_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The tiny bundle with other thresholds: same classes and files, another model in effect."""
    b = tmp_path / "other_bundle"
    shutil.copytree(tiny_bundle, b)
    m = read_manifest(b)
    classes = tuple(dataclasses.replace(c, threshold=0.9) for c in m.classes)
    write_manifest(b, dataclasses.replace(m, classes=classes, content_sha256=""))
    return b


# -- 1: a different bundle on an existing output folder ------------------------------------------------------
def test_1_another_bundle_is_refused_on_an_existing_folder(tiny_bundle: Path, other_bundle: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    sha = read_manifest(tiny_bundle).content_sha256
    rows = _jsonl(out)
    assert len(rows) == 3 and {r["bundle_sha256"] for r in rows} == {sha}
    assert json.loads((out / RUN_JSON).read_text())["bundle_sha256"] == sha
    before = (out / "results.jsonl").read_bytes()
    capsys.readouterr()

    fundus_jpeg(tmp_path / "in" / "new.jpg", seed=9)
    assert _run(other_bundle, tmp_path / "in", out) == 2
    line = _err_line(capsys)
    assert f"{out} holds 3 result(s) of another model (bundle {sha[:12]}" in line
    assert "choose a new output folder (--out), or move" in line
    assert (out / "results.jsonl").read_bytes() == before  # nothing screened, nothing mixed

    # The same bundle still resumes there, and a new folder takes the other bundle.
    assert _run(tiny_bundle, tmp_path / "in", out) == 0 and len(_jsonl(out)) == 4
    assert _run(other_bundle, tmp_path / "in", tmp_path / "out2") == 0
    assert {r["bundle_sha256"] for r in _jsonl(tmp_path / "out2")} == {read_manifest(other_bundle).content_sha256}


def test_1_rows_that_do_not_say_their_model_are_refused(tiny_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A folder from before rows named their bundle: its model cannot be confirmed, so it is not reused."""
    _good(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    rows = [{k: v for k, v in r.items() if k not in ("bundle_sha256", "model_sha256")} for r in _jsonl(out)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / RUN_JSON).unlink()
    capsys.readouterr()
    assert _run(tiny_bundle, tmp_path / "in", out) == 2
    assert "holds 2 result(s) from an older uopsl that did not record which model wrote them" in _err_line(capsys)


def test_1_a_bundle_validated_again_is_still_the_same_model(tiny_bundle: Path, tmp_path: Path) -> None:
    """`uopsl validate` rewrites the manifest (its content hash changes): the folder stays usable."""
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    _good(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run(b, tmp_path / "in", out) == 0
    m = read_manifest(b)
    files = tuple(dataclasses.replace(f, info={**f.info, "parity": {"backends": {}}}) for f in m.files)
    write_manifest(b, dataclasses.replace(m, files=files, created="2031-01-01T00:00:00+00:00", content_sha256=""))
    assert read_manifest(b).content_sha256 != m.content_sha256
    fundus_jpeg(tmp_path / "in" / "new.jpg", seed=5)
    assert _run(b, tmp_path / "in", out) == 0
    rows = _jsonl(out)
    assert len(rows) == 3 and len({r["model_sha256"] for r in rows}) == 1
    assert [r["bundle_sha256"] for r in rows] == [m.content_sha256] * 2 + [read_manifest(b).content_sha256]


def test_1_check_output_fails_before_the_model_loads(tiny_bundle: Path, other_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "in", 1)
    assert _run(tiny_bundle, tmp_path / "in", tmp_path / "out") == 0
    s = Screener(other_bundle, "ort-cpu")  # not opened: no backend loaded
    with pytest.raises(ConfigError, match="another model"):
        s.check_output(tmp_path / "out")
    assert s.selection is None


# -- 2: the output folder inside the input folder ------------------------------------------------------------
def test_2_output_folder_inside_the_input_is_never_screened(tiny_bundle: Path, tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    _good(inside, 3)
    out = inside / "screen"
    for _ in range(2):
        assert _run(tiny_bundle, inside, out, extra=("--overlays",)) == 0
    assert len(list((out / "thumbs").iterdir())) == 3 and len(list((out / "overlays").iterdir())) == 3
    assert len(_jsonl(out)) == 3 and len(_csv(out)) == 3
    # Another tool's (or an older session's) output folder inside the inputs is left out too.
    assert _run(tiny_bundle, inside, tmp_path / "elsewhere") == 0
    assert len(_csv(tmp_path / "elsewhere")) == 3


def test_2_watch_does_not_screen_its_own_outputs(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "wdrop"
    _good(inbox, 2)
    out = inbox / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=2.0, refresh_s=0),
                               overlays=True)
    assert summary.screened == 2 and len(_jsonl(out)) == 2 and len(_csv(out)) == 2


# -- 3: file names that are not UTF-8 ------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that stores raw name bytes")
def test_3_a_non_utf8_file_name_gets_its_row_and_resumes(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    (ok,) = _good(folder, 1)
    latin1 = folder / os.fsdecode(b"caf\xe9_OD.jpg")  # as an old camera or a FAT stick writes it
    shutil.copy(ok, latin1)
    out = tmp_path / "out"
    assert _run(tiny_bundle, folder, out) == 0
    rows = _jsonl(out)
    assert len(rows) == 2
    row = next(r for r in rows if "caf" in r["source"])
    assert row["status"] == "ok" and row["source"] == str(folder / "caf\ufffd_OD.jpg")  # shown with U+FFFD
    assert row["source_path"] == str(latin1) and row["key"].startswith(os.path.realpath(latin1) + "|")  # lossless
    (out / "results.jsonl").read_bytes().decode("utf-8")  # the file stays valid UTF-8
    assert sorted(Path(r["source"]).name for r in _csv(out)) == ["caf\ufffd_OD.jpg", "img0000.jpg"]
    assert "caf\ufffd_OD.jpg" in (out / "report.html").read_text("utf-8")
    assert _run(tiny_bundle, folder, out) == 0 and len(_jsonl(out)) == 2  # resumes past it


# -- 4: symbolic-link loops and links to a parent folder -----------------------------------------------------
def test_4_symlink_loops_become_error_rows_and_no_folder_is_walked_twice(tiny_bundle: Path, tmp_path: Path) -> None:
    haz = tmp_path / "haz"
    fundus_jpeg(haz / "uploop" / "a.jpg")
    (haz / "uploop" / "sub").mkdir()
    os.symlink("..", haz / "uploop" / "sub" / "up")
    (haz / "loop").mkdir()
    os.symlink("loop2.jpg", haz / "loop" / "loop1.jpg")
    os.symlink("loop1.jpg", haz / "loop" / "loop2.jpg")
    os.symlink("loopdir", haz / "loop" / "loopdir")  # a loop without an image name
    out = tmp_path / "out"
    assert _run(tiny_bundle, haz, out) == 1
    by_name = {Path(r["source"]).name: r for r in _csv(out)}
    assert sorted(by_name) == ["a.jpg", "loop1.jpg", "loop2.jpg", "loopdir"]
    assert by_name["a.jpg"]["status"] == "ok"
    for name in ("loop1.jpg", "loop2.jpg", "loopdir"):
        assert by_name[name]["status"] == "error" and by_name[name]["reasons"] == "unreadable"
        assert "Too many levels of symbolic links" in by_name[name]["error"]


# -- 5: OS errors and bugs: one line, exit 2 -----------------------------------------------------------------
def test_5_unusable_output_folders_exit_2_with_one_line(tiny_bundle: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (photo,) = _good(tmp_path / "in", 1)
    assert _run(tiny_bundle, photo, photo / "sub") == 2
    assert _err_line(capsys) == (f"error: cannot create output folder {photo / 'sub'} (Not a directory); "
                                 "choose another --out")
    with pytest.raises(ConfigError, match="exists and is not a folder; choose another --out"):
        ResultStore(photo)  # (the CLI's --out option already refuses a file)

    def read_only(*a: object, **k: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert _run(tiny_bundle, photo, tmp_path / "ro") == 2
    assert _err_line(capsys) == (f"error: cannot write to output folder {tmp_path / 'ro'} (Read-only file system); "
                                 "choose another --out")


def test_5_os_errors_and_bugs_inside_a_run_exit_2_with_one_line(tiny_bundle: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (photo,) = _good(tmp_path / "in", 1)

    def disk_full(self: Screener, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "results.csv"))

    monkeypatch.setattr(Screener, "screen_to", disk_full)
    assert _run(tiny_bundle, photo, tmp_path / "out") == 2
    assert _err_line(capsys).startswith(f"error: No space left on device: {tmp_path / 'out' / 'results.csv'} (free some space")

    def bug(self: Screener, *a: object, **k: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(Screener, "screen_to", bug)
    assert _run(tiny_bundle, photo, tmp_path / "out") == 2
    assert _err_line(capsys).startswith("error: unexpected RecursionError: maximum recursion depth exceeded")


def test_5_a_complete_folder_is_not_opened_for_writing_and_a_list_may_name_itself(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "photos", 2)
    lst = tmp_path / "self.txt"
    lst.write_text("self.txt\nphotos/img0000.jpg\n./self.txt\nphotos/img0001.jpg\n")
    out = tmp_path / "out"
    assert _run(tiny_bundle, lst, out) == 0  # once a RecursionError and a traceback
    assert len(_jsonl(out)) == 2
    err = capsys.readouterr().err
    assert f"{lst}, line 1: self.txt is a list file already being read (a list cannot include itself)" in err
    assert f"{lst}, line 3: ./self.txt is a list file already being read" in err

    modes: list[str] = []
    real_open = ResultStore._open  # results.jsonl is only ever opened through it (never through a link)

    def spy(self: ResultStore, mode: str) -> object:
        modes.append(mode)
        return real_open(self, mode)

    monkeypatch.setattr(ResultStore, "_open", spy)
    ResultStore(out).close()
    assert modes and set(modes) == {"rb"}  # nothing to repair: read-only media stay readable


# -- 6: stale thumbnails and overlays ------------------------------------------------------------------------
def test_6_a_replaced_photo_does_not_keep_the_old_pictures(tiny_bundle: Path, tmp_path: Path) -> None:
    p1, p2 = _good(tmp_path / "rep", 2)
    zoo = make_bad_zoo(tmp_path / "zoo")
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "rep", out, extra=("--overlays",)) == 0
    ids = {Path(r["source"]).name: r["id"] for r in _jsonl(out)}
    assert all((out / "thumbs" / f"{i}.jpg").is_file() and (out / "overlays" / f"{i}.png").is_file()
               for i in ids.values())
    shutil.copy(zoo["not_an_image.jpg"][0], p1)  # unreadable now: no thumbnail, no heatmap
    shutil.copy(zoo["non_fundus.png"][0], p2)  # ungradable now: its own thumbnail, no heatmap
    assert _run(tiny_bundle, tmp_path / "rep", out, extra=("--overlays",)) == 1
    # Other content under the same names: the earlier rows stay listed with their own pictures, and the new
    # rows get ids of their own, with only the pictures their own verdicts allow.
    rows = _csv(out)
    assert [(r["status"], r["file_replaced"]) for r in rows] == [
        ("ok", "yes"), ("error", ""), ("ok", "yes"), ("ungradable", "")]
    i1, i2 = ids["img0000.jpg"], ids["img0001.jpg"]
    assert [r["id"] for r in rows][::2] == [i1, i2]
    n1, n2 = rows[1]["id"], rows[3]["id"]
    assert n1 != i1 and n2 != i2
    assert all((out / "thumbs" / f"{i}.jpg").is_file() and (out / "overlays" / f"{i}.png").is_file() for i in (i1, i2))
    assert not (out / "thumbs" / f"{n1}.jpg").exists() and not (out / "overlays" / f"{n1}.png").exists()
    assert (out / "thumbs" / f"{n2}.jpg").is_file() and not (out / "overlays" / f"{n2}.png").exists()


# -- 7: failures that are not a property of the photograph are retried ----------------------------------------
def test_7_inference_errors_are_retried_content_errors_are_not(tiny_bundle: Path, tmp_path: Path) -> None:
    good = _good(tmp_path / "in", 2)
    zoo = make_bad_zoo(tmp_path / "zoo")
    bad = shutil.copy(zoo["not_an_image.jpg"][0], tmp_path / "in" / "text.jpg")
    missing = tmp_path / "in" / "gone.jpg"  # unreadable: retried every time
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=4) as s:
        real = s.backend.infer

        def out_of_memory(x: np.ndarray) -> dict[str, np.ndarray]:
            raise BackendError("ort-cpu: inference failed (injected out of memory)")

        s.backend.infer = out_of_memory  # type: ignore[method-assign]
        first = s.screen_to(out, [tmp_path / "in", missing], report=False)
        assert first.counts == {"ok": 0, "ungradable": 0, "error": 4}
        s.backend.infer = real  # type: ignore[method-assign]
        second = s.screen_to(out, [tmp_path / "in", missing], report=False)
    assert (second.screened, second.skipped) == (3, 1)  # the two photographs and the missing file; not text.jpg
    latest = {Path(r["source"]).name: r for r in _csv(out)}
    assert {n: r["status"] for n, r in latest.items()} == {
        good[0].name: "ok", good[1].name: "ok", Path(bad).name: "error", "gone.jpg": "error"}
    assert latest["gone.jpg"]["reasons"] == "unreadable" and latest[Path(bad).name]["reasons"] == "undecodable"


# -- 8: a mistyped input, an empty folder --------------------------------------------------------------------
def test_8_a_missing_input_or_no_photographs_exit_2(tiny_bundle: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tiny_bundle, tmp_path / "nonexistent" / "photos", tmp_path / "out_typo") == 2
    assert _err_line(capsys) == (f"error: input {tmp_path / 'nonexistent' / 'photos'} does not exist; expected a "
                                 "photograph, a folder or a .list/.lst/.txt list file: check the path")
    assert not (tmp_path / "out_typo").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.docx").write_bytes(b"x")
    assert _run(tiny_bundle, tmp_path / "empty", tmp_path / "out_empty") == 2
    line = _err_line(capsys)
    assert line.startswith(f"error: no photographs found in {tmp_path / 'empty'} (looked for .bmp, .dcm, .dicom, .jfif,")
    assert "1 file skipped (not an image type: .docx 1" in line
    assert not (tmp_path / "out_empty").exists()  # the folder the run created is gone again, run.json with it
    (tmp_path / "kept").mkdir()  # a folder the user made stays, and gets no run.json for a run that wrote nothing
    assert _run(tiny_bundle, tmp_path / "empty", tmp_path / "kept") == 2
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "run.json").exists()
    # The parents a run had to create go with it, up to the first folder that was there before.
    assert _run(tiny_bundle, tmp_path / "empty", tmp_path / "kept" / "2026" / "11" / "29") == 2
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "2026").exists()
    (tmp_path / "kept" / "2026").mkdir()
    (tmp_path / "kept" / "2026" / "notes.txt").write_text("mine")
    assert _run(tiny_bundle, tmp_path / "empty", tmp_path / "kept" / "2026" / "12" / "01") == 2
    assert sorted(os.listdir(tmp_path / "kept" / "2026")) == ["notes.txt"]


# -- 9: the same photograph by another path ------------------------------------------------------------------
def test_9_one_photo_through_three_paths_is_one_row(tiny_bundle: Path, tmp_path: Path) -> None:
    (p,) = _good(tmp_path / "photos", 1)
    os.symlink(tmp_path / "photos", tmp_path / "photolink")
    out = tmp_path / "out"
    assert _run(tiny_bundle, p, tmp_path / "photos" / ".." / "photos" / p.name, tmp_path / "photolink" / p.name,
                out) == 0
    assert len(_jsonl(out)) == 1 and len(_csv(out)) == 1


def test_9_a_card_back_under_another_path_resumes(tiny_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "usb1", 3)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "usb1", out) == 0
    os.rename(tmp_path / "usb1", tmp_path / "usb2")  # the stick mounted elsewhere (mtimes kept)
    capsys.readouterr()
    assert _run(tiny_bundle, tmp_path / "usb2", out) == 0
    assert "(0 screened now, 3 from an earlier run)" in capsys.readouterr().err
    rows = _csv(out)
    assert len(rows) == 3 and all(Path(r["source"]).parent == tmp_path / "usb2" for r in rows)
    assert all((out / "thumbs" / f"{r['id']}.jpg").is_file() for r in rows)  # the pictures followed
    moved = [r for r in _jsonl(out) if "moved_from" in r]
    assert len(moved) == 3 and all(Path(r["moved_from"]).parent == (tmp_path / "usb1").resolve() for r in moved)


def test_8b_a_renamed_photograph_keeps_its_row_under_the_new_name(tiny_bundle: Path, tmp_path: Path) -> None:
    """A clinic renames a screened photograph (the patient's number added): same content, other name, old
    name gone. It was screened again and listed under both names, and the report asked whether a photograph
    had been filed under the wrong patient (a clinic-persona test with watch). Now its row moves."""
    _good(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    first = sorted((tmp_path / "in").iterdir())[0]
    renamed = first.with_name("patient_0042_" + first.name)
    os.rename(first, renamed)
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    rows = _csv(out)
    assert sorted(Path(r["source"]).name for r in rows) == sorted(p.name for p in (tmp_path / "in").iterdir())
    moved = [r for r in _jsonl(out) if "moved_from" in r]
    assert [Path(r["moved_from"]).name for r in moved] == [first.name]
    assert "more than once" not in (out / "report.html").read_text(encoding="utf-8")  # no duplicate warning


def test_8c_many_rows_of_one_size_fall_back_to_the_name(tiny_bundle: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every photograph of an uncompressed format has the same size: looking at every row of that size for each
    new file would cost a stat per row, the square of the folder. Beyond MOVED_BY_SIZE_UP_TO rows of a size,
    only a file of the same name is looked for (a card mounted elsewhere still is; a rename is not)."""
    from uopsl.runtime import results

    monkeypatch.setattr(results, "MOVED_BY_SIZE_UP_TO", 0)
    _good(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    first = sorted((tmp_path / "in").iterdir())[0]
    os.rename(first, first.with_name("renamed_" + first.name))
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    assert not [r for r in _jsonl(out) if "moved_from" in r]  # screened again: the size alone is not looked at
    os.rename(tmp_path / "in", tmp_path / "usb2")
    assert _run(tiny_bundle, tmp_path / "usb2", out) == 0
    assert len([r for r in _jsonl(out) if "moved_from" in r]) == 2  # same names: still found


def test_9_a_copy_of_screened_photographs_is_not_a_move(tiny_bundle: Path, tmp_path: Path) -> None:
    # The originals are still there: each copy gets a row of its own (flagged as a duplicate), and the
    # originals keep theirs. Only a path that is gone may hand its row over (the test above).
    _good(tmp_path / "usb1", 3)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "usb1", out) == 0
    shutil.copytree(tmp_path / "usb1", tmp_path / "usb2")
    _run(tiny_bundle, tmp_path / "usb2", out)
    rows = _csv(out)
    assert sorted(Path(r["source"]).parent.name for r in rows) == ["usb1"] * 3 + ["usb2"] * 3
    assert not [r for r in _jsonl(out) if "moved_from" in r]


# -- 10: Ctrl-C ----------------------------------------------------------------------------------------------
def test_10_ctrl_c_saves_csv_and_report_and_says_how_to_continue(tiny_bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "in", 6)
    out = tmp_path / "out"
    real = Screener._write_images
    calls = [0]

    def interrupt_at_the_fourth(self: Screener, *a: object, **k: object) -> dict[str, str]:
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Screener, "_write_images", interrupt_at_the_fourth)
    assert _run(tiny_bundle, tmp_path / "in", out, extra=("--batch", "1")) == 130
    err = capsys.readouterr().err
    assert (f"interrupted after 3 of 6 photographs (saved in {out}; results.csv and report.html list them); "
            "run the same command again to continue") in err
    assert len(_csv(out)) == 3 and (out / "report.html").is_file()
    monkeypatch.setattr(Screener, "_write_images", real)
    assert _run(tiny_bundle, tmp_path / "in", out) == 0 and len(_csv(out)) == 6 and len(_jsonl(out)) == 6


def test_10_the_api_raises_a_keyboard_interrupt_with_the_summary(tiny_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "in", 4)

    def stop(r: object) -> None:
        raise KeyboardInterrupt

    # on_result hears of a result once its batch (2) is saved (since 0.2.11): the stop lands after 2 of 4.
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        with pytest.raises(ScreeningInterrupted, match="interrupted after 2 of 4 photographs") as info:
            s.screen_to(tmp_path / "out", [tmp_path / "in"], on_result=stop)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.summary.screened == 2
    assert len(_csv(tmp_path / "out")) == 2
    # The report says so at the top: a printed page must not pass for the whole session (a clinic-persona test).
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "INCOMPLETE: the run was stopped after 2 of 4 photographs." in page
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        s.screen_to(tmp_path / "out", [tmp_path / "in"])
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "INCOMPLETE" not in page and len(_csv(tmp_path / "out")) == 4


def test_10b_a_run_that_fails_leaves_a_report_that_says_it_did_not_end(tiny_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "in", 3)

    def fail(r: object) -> None:
        raise RuntimeError("disk went away")

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        with pytest.raises(RuntimeError, match="disk went away"):
            s.screen_to(tmp_path / "out", [tmp_path / "in"], on_result=fail)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "INCOMPLETE: the run stopped on an error (RuntimeError: disk went away)." in page


def test_10c_a_file_run_without_validation_is_named_on_the_report(tiny_bundle: Path, tmp_path: Path) -> None:
    """``--precision int8`` runs an INT8 file that did not pass ``uopsl validate`` (the tiny bundle's has no
    record): the console warned once; the report now says it too."""
    _good(tmp_path / "in", 2)
    with Screener(tiny_bundle, "ort-cpu", precision="int8", threads=1) as s:
        s.screen_to(tmp_path / "out", [tmp_path / "in"])
        assert s.selection is not None and s.selection.validated is False
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Not validated: model.int8.onnx (int8-qdq-u8 on ort-cpu) has not passed `uopsl validate`" in page
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:  # the FP32 file: nothing to say
        s.screen_to(tmp_path / "out2", [tmp_path / "in"])
    assert "Not validated" not in (tmp_path / "out2" / "report.html").read_text(encoding="utf-8")


# -- 11: rows from earlier runs for other inputs -------------------------------------------------------------
def test_11_rows_from_other_inputs_in_the_folder_are_announced(tiny_bundle: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    _good(tmp_path / "monday", 3)
    _good(tmp_path / "tuesday", 2, start=10)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        first = s.screen_to(out, [tmp_path / "monday"], report=False)
        with caplog.at_level(logging.WARNING):
            second = s.screen_to(out, [tmp_path / "tuesday"], report=False)
    assert (first.in_folder, first.other_inputs) == (3, 0)
    assert (second.total, second.in_folder, second.other_inputs) == (2, 5, 3)
    assert f"{out} lists 5 photographs: 3 from earlier runs into this folder for other inputs" in caplog.text


# -- 15: files the walk does not take ------------------------------------------------------------------------
def test_15_skipped_files_are_counted_and_named_and_jfif_is_taken(tiny_bundle: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    (src,) = _good(tmp_path / "src", 1)
    fmt = tmp_path / "fmt"
    fmt.mkdir()
    for name in ("a.jpg", "d.jfif", "e.HEIC", "f.jpg ", "g.psd", "h.psd"):
        shutil.copy(src, fmt / name)
    # A phone's real HEIC photograph: a row saying it was not screened and what to do, not a console count
    # the printed report never showed (a clinic review); e.HEIC, a JPEG so named, is judged by its content.
    (fmt / "i.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    # ... but not a phone's HEIC beside the JPEG exported from it (a review): the JPEG is screened, the HEIC counted.
    (fmt / "a.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s, caplog.at_level(logging.WARNING):
        summary = s.screen_to(tmp_path / "out", [fmt], report=False)
    assert summary.counts["ok"] == 4 and summary.total == 5  # a.jpg, d.jfif, e.HEIC and "f.jpg "; i.heic
    assert summary.counts["error"] == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    heic = next(r for r in rows if r["source"].endswith("i.heic"))
    assert heic["status"] == "error" and "HEIC" in heic["error"] and "JPEG" in heic["error"], heic
    assert summary.skipped_files == {".psd": 2, ".heic": 1}
    assert "3 files skipped (not an image type: .psd 2, .heic 1; e.g. a.heic, g.psd, h.psd;" in caplog.text


# -- 16: watch and an empty file -----------------------------------------------------------------------------
def test_16_watch_takes_an_empty_file_once_it_stayed_empty_long_enough(tiny_bundle: Path, tmp_path: Path) -> None:
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=500, clock=lambda: now[0])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert tracker.poll() == []
    now[0] = 4.9
    assert tracker.poll() == []  # an empty file may be a write that has not started
    now[0] = 5.0
    assert tracker.poll() == [empty]  # 10 x settle_ms: a failed camera write, reported
    now[0] = 60.0
    assert tracker.poll() == []
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        summary = s.screen_to(tmp_path / "out", [empty], require_images=False)
    (row,) = _jsonl(tmp_path / "out")
    assert summary.counts["error"] == 1 and row["reasons"] == ["undecodable"] and "file is empty" in row["error"]


# -- 17: a list file saved by Notepad ------------------------------------------------------------------------
def test_17_a_list_file_with_a_bom_and_crlf_keeps_its_first_entry(tiny_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "photos", 2)
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xef\xbb\xbfphotos/img0000.jpg\r\nphotos/img0001.jpg\r\n# comment\r\n")
    assert _run(tiny_bundle, lst, tmp_path / "out") == 0
    assert sorted(Path(r["source"]).name for r in _csv(tmp_path / "out")) == ["img0000.jpg", "img0001.jpg"]


# -- 19: one writer per output folder ------------------------------------------------------------------------
_HOLDER = """
import sys, time
from uopsl.runtime.results import ResultStore
with ResultStore(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_19_a_second_process_on_the_same_folder_exits_2(tiny_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "in", 1)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert _run(tiny_bundle, tmp_path / "in", out) == 2
        assert _err_line(capsys) == (f"error: another uopsl-screen (pid {holder.pid}) is writing to {out}; wait for "
                                     "it to finish, or use another output folder (--out)")
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).is_file()  # the file stays behind; the kernel dropped the dead holder's lock
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_19_the_lock_is_reentrant_in_its_thread_only(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "out"):
        ResultStore(tmp_path / "out").close()  # watch holds it while each screen_to takes it again
        failure: list[BaseException] = []

        def other() -> None:
            try:
                ResultStore(tmp_path / "out").close()
            except ConfigError as exc:
                failure.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(failure) == 1 and "another screening in this process is writing to" in str(failure[0])
    ResultStore(tmp_path / "out").close()  # released


# -- 20: watch refreshes whatever stops it -------------------------------------------------------------------
def test_20_ctrl_c_inside_a_watch_batch_still_refreshes_the_csv(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    first, second = _good(tmp_path / "src", 2)
    inbox.mkdir()
    shutil.copy(first, inbox / "a.jpg")
    out = tmp_path / "out"

    def on_result(r: object) -> None:
        if Path(r.source).name == "a.jpg":  # type: ignore[attr-defined]
            shutil.copy(second, inbox / "b.jpg")  # arrives after a.jpg was screened and refreshed
        else:
            raise KeyboardInterrupt  # Ctrl-C inside the batch after that refresh

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=20, refresh_s=0),
                     on_result=on_result)
    assert len(_jsonl(out)) == 2 and len(_csv(out)) == 2


# -- 21: the CSV in Excel --------------------------------------------------------------------------------------
def test_21_csv_has_a_bom_yes_no_and_traceability_columns(tiny_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "in", 1)
    make_bad_zoo(tmp_path / "in")
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "in", out) == 1
    assert (out / "results.csv").read_bytes().startswith(b"\xef\xbb\xbfid,source,")
    rows = _csv(out)
    assert {r["gradable"] for r in rows} == {"yes", "no"} and {r["refer"] for r in rows} <= {"yes", "no", ""}
    sha = read_manifest(tiny_bundle).content_sha256
    assert all(r["bundle_sha256"] == sha and r["screened_at"].endswith("+00:00") for r in rows)


# -- 22: -v after the subcommand -------------------------------------------------------------------------------
def test_22_verbose_and_quiet_after_the_subcommand(tiny_bundle: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "in", 1)
    assert _run(tiny_bundle, tmp_path / "in", tmp_path / "out", extra=("-v",)) == 0
    assert _run(tiny_bundle, tmp_path / "in", tmp_path / "out", extra=("-q",)) == 0
    assert "No such option" not in capsys.readouterr().err
    # With -v after the subcommand, an error shows its traceback too.
    assert main(["run", str(tmp_path / "nobundle"), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err


# -- 23: temporaries a killed run left -----------------------------------------------------------------------
def test_23_leftover_temporaries_are_removed(tiny_bundle: Path, tmp_path: Path) -> None:
    _good(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    left = [out / "thumbs" / ".img0000-1.jpg.e6s2kwcr.tmp", out / "overlays" / ".img0000-1.png.x1.tmp",
            out / ".results.csv.abc.tmp"]
    for p in left:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"partial")
    assert _run(tiny_bundle, tmp_path / "in", out) == 0
    assert not any(p.exists() for p in left)


# -- device review 19: a backend that keeps failing ------------------------------------------------------------
def test_device19_repeated_inference_failures_raise_and_say_reopen(tiny_bundle: Path, tmp_path: Path) -> None:
    good = _good(tmp_path / "in", 5)
    from tinybundle import fail_after_first_batch

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1, max_inference_failures=3) as s:
        real = s.backend.infer
        fail_after_first_batch(s.backend, "tensorrt: cudaStreamSynchronize failed (an illegal memory access)")
        with pytest.raises(BackendError, match="inference failed 3 times in a row .*close the Screener and open a "
                                               "new one"):
            s.screen_to(tmp_path / "out", [tmp_path / "in"])
        rows = _jsonl(tmp_path / "out")
        assert [r["status"] for r in rows] == ["ok", "error", "error"]  # kept; the error rows are retried later
        assert len(_csv(tmp_path / "out")) == 3
        s.backend.infer = real  # type: ignore[method-assign]
        summary = s.screen_to(tmp_path / "out", [tmp_path / "in"])
    assert (summary.screened, summary.skipped) == (len(good) - 1, 1) and summary.exit_code == 0


def test_device19_one_failure_between_successes_only_costs_its_rows(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = _good(tmp_path / "in", 6)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1, max_inference_failures=2) as s:
        real = s.backend.infer
        calls = [0]

        def flaky(x: np.ndarray) -> dict[str, np.ndarray]:
            calls[0] += 1
            if calls[0] % 2 == 0:
                raise BackendError("transient")
            return real(x)

        s.backend.infer = flaky  # type: ignore[method-assign]
        results = list(s.screen_many(paths))
    assert [r.status for r in results] == ["ok", "error"] * 3


@pytest.mark.parametrize("suffix", [".heic", ".heif", ".hif", ".avif", ".HEIC"])
def test_each_phone_photo_type_is_walked_unless_its_exported_jpeg_is_beside_it(tmp_path: Path, suffix: str) -> None:
    """Every suffix of PHOTO_SUFFIXES_NOT_READ gets a row of its own, and a phone photo beside the JPEG
    exported from it is left out whatever the case of either name (a mutation audit: dropping .avif, or
    comparing the names case-sensitively, left every test green). Camera RAW stays out (its TIFF thumbnail
    would be graded)."""
    from uopsl.runtime.inputs import WalkState, walk_images

    (tmp_path / f"alone{suffix}").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (tmp_path / f"IMG_1{suffix}").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    fundus_jpeg(tmp_path / "img_1.jpg")
    (tmp_path / "raw.dng").write_bytes(b"II*\x00" + bytes(64))
    state = WalkState()
    names = sorted(p.name for p in walk_images(tmp_path, state))
    assert names == sorted([f"alone{suffix}", "img_1.jpg"])
    assert dict(state.skipped) == {suffix.lower(): 1, ".dng": 1}


def test_10c_ctrl_c_pressed_until_it_stops_says_what_is_saved_and_how_to_finish(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A session-45 review: Ctrl-C three times (the first stops the run, the next two land in the rewrites of
    # results.csv and the report) printed only "aborted" and left no report, saying neither that the rows were
    # saved nor that the same command finishes the job.
    _good(tmp_path / "in", 3)
    out = tmp_path / "out"

    def always_stopped(self: Screener, *a: object, **k: object) -> list[dict[str, str]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Screener, "finalize", always_stopped)
    assert _run(tiny_bundle, tmp_path / "in", out) == 130
    err = capsys.readouterr().err
    assert (f"stopped while writing results.csv and the report: the 3 photographs screened are saved in "
            f"{out / 'results.jsonl'}") in err and "run the same command again to finish them" in err
    assert "aborted" not in err and len(_jsonl(out)) == 3
    monkeypatch.undo()
    assert _run(tiny_bundle, tmp_path / "in", out) == 0 and len(_csv(out)) == 3 and (out / "report.html").is_file()


def test_10d_a_closed_screener_says_it_was_closed_not_that_it_was_never_opened(tiny_bundle: Path,
                                                                              tmp_path: Path) -> None:
    # A device-maker review (session 45): screening after close() said "the Screener is not open", which sent
    # people looking for a missing open() rather than for the thread that closed a shared Screener.
    from uopsl.runtime.errors import ConfigError

    _good(tmp_path / "in", 1)
    photo = next((tmp_path / "in").iterdir())
    s = Screener(tiny_bundle, "ort-cpu", threads=1)
    with pytest.raises(ConfigError, match="is not open"):
        s.screen(photo)
    with s:
        assert s.screen(photo).status == "ok"
    with pytest.raises(ConfigError, match="the Screener was closed"):
        s.screen(photo)
    with s:  # opened again
        assert s.screen(photo).status == "ok"
