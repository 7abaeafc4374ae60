"""An output folder or drop folder that someone else has written into (the session-30 security review).

A results folder on a shared clinic drive can hold what another account planted: links in place of the
folder's own files, rows of the wrong types, a link to a photograph elsewhere in the drop folder. Each test
plants one and checks the outcome: what is refused with which words, what was left untouched, what is
screened again. ``docs/deployment.md``, "Results and drop folders: who may write them".
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import threading
from pathlib import Path

import pytest

from tinybundle import good_photos, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.cli import main
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import FolderLock, open_plain, special_entry
from uopsl.runtime.inputs import _safe_stem
from uopsl.runtime.results import JSONL, LOCK_NAME, RUN_JSON, ResultStore, row_problem, valid_image_id, write_csv
from uopsl.runtime.watch import StableFiles

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links and pipes need POSIX rights here")


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


def _victim(tmp_path: Path, name: str = "victim.conf") -> tuple[Path, bytes]:
    victim = tmp_path / "elsewhere" / name
    victim.parent.mkdir(parents=True, exist_ok=True)
    text = b"precious config\nsecond line"
    victim.write_bytes(text)
    return victim, text


@posix_only
@pytest.mark.parametrize("name", [LOCK_NAME, JSONL, RUN_JSON])
def test_a_planted_link_in_place_of_an_own_file_is_refused_and_its_target_kept(tmp_path: Path, name: str) -> None:
    victim, text = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    with pytest.raises(ConfigError) as e:
        ResultStore(out)
    assert f"{out / name} is a symbolic link (to {victim})" in str(e.value)
    assert "choose another --out" in str(e.value)
    assert victim.read_bytes() == text


@posix_only
def test_a_dangling_link_as_the_lock_file_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere" / "created-by-uopsl"
    target.parent.mkdir()
    (out / LOCK_NAME).symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        ResultStore(out)
    assert not target.exists()


@posix_only
def test_the_lock_itself_never_opens_through_a_link(tmp_path: Path) -> None:
    """The check before opening has a gap; the open itself refuses a link (``O_NOFOLLOW``)."""
    victim, text = _victim(tmp_path)
    (tmp_path / ".lock").symlink_to(victim)
    with pytest.raises(OSError):
        FolderLock(tmp_path).acquire()
    assert victim.read_bytes() == text
    with pytest.raises(OSError):
        os.close(open_plain(tmp_path / ".lock", os.O_RDONLY))


@posix_only
@pytest.mark.parametrize("name", ["thumbs", "overlays", "days"])
def test_a_linked_image_folder_is_refused_and_nothing_there_is_cleaned(tmp_path: Path, name: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keep = elsewhere / ".session.123.tmp"  # what remove_stale_temporaries would have taken
    keep.write_text("important")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match=f"{name} is a symbolic link"):
        ResultStore(out)
    assert keep.read_text() == "important" and sorted(p.name for p in elsewhere.iterdir()) == [keep.name]


def test_a_file_where_an_image_folder_belongs_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thumbs").write_text("not a folder")
    with pytest.raises(ConfigError, match="thumbs is a file, not a folder"):
        ResultStore(out)


@posix_only
@pytest.mark.parametrize("name", [RUN_JSON, JSONL])
def test_a_named_pipe_in_place_of_an_own_file_is_refused_without_blocking(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / name)
    outcome: list[BaseException | None] = []

    def open_store() -> None:
        try:
            ResultStore(out).close()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    t = threading.Thread(target=open_store, daemon=True)  # a blocked open would never return
    t.start()
    t.join(30)
    assert not t.is_alive(), "opening the folder blocked on the named pipe"
    assert isinstance(outcome[0], ConfigError) and "is a named pipe" in str(outcome[0])


@posix_only
def test_open_plain_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError, match="a named pipe, not a regular file"):
        open_plain(tmp_path / "pipe", os.O_RDONLY)
    assert special_entry(tmp_path / "pipe") == "a named pipe"
    assert special_entry(tmp_path) is None and special_entry(tmp_path / "absent") is None
    (tmp_path / "f").write_text("x")
    fd = open_plain(tmp_path / "f", os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"x" and os.get_blocking(fd)  # the non-blocking open does not stay so
    finally:
        os.close(fd)


GOOD_ROW = {"key": "/photos/a.jpg|10|1", "id": "a-0123abcd", "source": "/photos/a.jpg", "status": "ok",
            "refer": False, "gradable": True, "positive": ["normal"], "reasons": [],
            "probs": {"normal": 0.9, "dr": 0.01}, "timings_ms": {"infer_ms": 3.0}, "quality_score": 0.8,
            "preprocess_version": 7}


@pytest.mark.parametrize(("change", "problem"), [
    ({"probs": {"normal": "abc"}}, "probs does not map names to numbers"),
    ({"probs": {"normal": float("nan")}}, "probs does not map names to numbers"),
    ({"reasons": 5}, "reasons is not a list of names"),
    ({"positive": ["normal", 3]}, "positive is not a list of names"),
    ({"id": "/work/shared/data/tvhl/fundus/0002_OD_f_1"}, "an id that is not a file name of this folder"),
    ({"id": "../../etc/x"}, "an id that is not a file name of this folder"),
    ({"id": ".."}, "an id that is not a file name of this folder"),
    ({"key": 5}, "no key"),
    ({"status": ["ok"]}, "status is not text"),
    ({"refer": "no"}, "refer is not true or false"),
    ({"quality_score": "high"}, "quality_score is not a number"),
    ({"preprocess_version": "7"}, "preprocess_version is not a whole number"),
    ({"timings_ms": [1, 2]}, "timings_ms does not map names to numbers"),
])
def test_row_problem_names_each_field_of_the_wrong_type(change: dict, problem: str) -> None:
    assert row_problem(GOOD_ROW) is None
    assert row_problem({**GOOD_ROW, **change}) == problem


def test_the_pipelines_own_ids_are_valid() -> None:
    for name in ("IMG_0001.JPG", "çğüş hasta.jpg", "..jpg", "a b/c.png", "<img src=x>.jpg", "\r=2+5.jpg", ".jpg"):
        assert valid_image_id(f"{_safe_stem(name)}-0123abcd"), name


def test_rows_of_the_wrong_types_are_skipped_and_screened_again(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    bad = [{**GOOD_ROW, "key": "/photos/b.jpg|1|1", "reasons": 5, "status": "error"},
           {**GOOD_ROW, "key": "/photos/c.jpg|1|1", "probs": {"normal": "abc"}},
           {**GOOD_ROW, "key": "/photos/d.jpg|1|1", "id": "/elsewhere/secret"}]
    lines = [json.dumps(GOOD_ROW), *map(json.dumps, bad), "[" * 100000 + "]" * 100000]
    (out / JSONL).write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING), ResultStore(out) as store:
        assert store.n_rows == 1 and set(store.done) == {GOOD_ROW["key"]}
        rows = list(store.rows())
    assert [r["key"] for r in rows] == [GOOD_ROW["key"]]
    said = [r.getMessage() for r in caplog.records if "skipping a corrupt row" in r.getMessage()]
    assert len(said) == 4 and any("reasons is not a list of names" in m for m in said)
    assert any(":5: skipping a corrupt row (not JSON)" in m for m in said)  # nested past the stack: no crash
    assert all("its photograph is screened again" in m for m in said)


def test_a_carriage_return_in_a_file_name_stays_inside_its_csv_cell(tmp_path: Path) -> None:
    source = "ph/\r=2+5.jpg"
    write_csv(tmp_path / "r.csv", [{**GOOD_ROW, "source": source}, {**GOOD_ROW, "key": "k2", "source": "ok.jpg"}],
              ["normal", "dr"])
    text = (tmp_path / "r.csv").read_bytes().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["source"] for r in rows] == [source, "ok.jpg"]
    assert all(not line.startswith("=") for line in text.split("\r\n"))


@posix_only
def test_screening_a_folder_with_a_planted_results_file_exits_2_and_writes_nothing(
        tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    victim, text = _victim(tmp_path, "victim.rc")
    photos = tmp_path / "photos"
    good_photos(photos, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / JSONL).symlink_to(victim)
    code = main(["run", str(tiny_bundle), str(photos), "--out", str(out), "--backend", "ort-cpu", "--threads", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "results.jsonl is a symbolic link" in err and "Traceback" not in err
    assert victim.read_bytes() == text


def test_a_forged_row_whose_id_is_a_path_shows_no_picture_from_elsewhere(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    secret = tmp_path / "private" / "secret"
    secret.parent.mkdir()
    photos = tmp_path / "photos"
    [photo] = good_photos(photos, 1)
    out = tmp_path / "out"
    assert main(["run", str(tiny_bundle), str(photos), "--out", str(out), "--backend", "ort-cpu", "--threads", "1",
                 "--no-progress"]) in (0, 1)
    [row] = results_jsonl(out)
    # The forged row points at a real thumbnail placed outside the folder, under the name the report would use.
    (secret.parent / "secret.jpg").write_bytes((out / "thumbs" / f"{row['id']}.jpg").read_bytes())
    forged = {**row, "key": "/nowhere/innocent.jpg|1|1", "id": str(secret), "source": "innocent.jpg"}
    forged.pop("thumb_id", None)
    forged.pop("screened_at", None)
    with open(out / JSONL, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(forged) + "\n")
    assert main(["run", str(tiny_bundle), str(photos), "--out", str(out), "--backend", "ort-cpu", "--threads", "1",
                 "--no-progress"]) in (0, 1)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "innocent.jpg" not in report and report.count('class="thumb"') == 1  # the real photograph's only
    assert [r["source"] for r in results_jsonl(out) if r["key"] != forged["key"]] == [str(photo)]


@posix_only
def test_watch_walks_a_link_to_the_drop_folder_itself_once(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    photos = [drop / "a.jpg", drop / "b.jpg"]
    for p in photos:
        p.write_bytes(b"\xff\xd8x")
    (drop / "loop.jpg").symlink_to(drop, target_is_directory=True)
    now = [0.0]
    tracker = StableFiles(drop, settle_ms=0, clock=lambda: now[0], rescan_s=1000)
    taken: list[Path] = []
    for i in range(12):  # polls between full checks reuse listings: each one used to go a level deeper
        now[0] = float(i)
        taken += tracker.poll()
    assert sorted(taken) == photos
    assert max(len(k) for k in tracker._listings) <= len(str(drop / "loop.jpg"))


@posix_only
def test_watch_does_not_screen_a_link_to_a_photograph_outside_the_drop_folder(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    private = tmp_path / "private" / "secret_patient.jpg"
    private.parent.mkdir()
    private.write_bytes(b"\xff\xd8secret")
    drop = tmp_path / "drop"
    (drop / "day1").mkdir(parents=True)
    inside = drop / "day1" / "ok.jpg"
    inside.write_bytes(b"\xff\xd8ok")
    (drop / "link.jpg").symlink_to(private)
    (drop / "alias.jpg").symlink_to(inside)  # a link that stays inside is screened as before
    now = [0.0]
    tracker = StableFiles(drop, settle_ms=0, clock=lambda: now[0])
    taken: list[Path] = []
    with caplog.at_level(logging.WARNING):
        for i in range(4):
            now[0] = float(i)
            taken += tracker.poll()
    assert drop / "link.jpg" not in taken and inside in taken
    said = [r.getMessage() for r in caplog.records if "outside the watched folder" in r.getMessage()]
    assert len(said) == 1 and f"a link to {private}" in said[0]


def test_csv_lines_end_in_one_crlf_where_text_files_translate_line_ends(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows text mode turns each "\\n" into "\\r\\n": a CSV written with CRLF through it ended its lines in
    "\\r\\r\\n", an empty row after every row (the review of session 30's diff). Emulated here: a text-mode open
    that is not told ``newline`` translates as Windows does."""
    from uopsl.runtime import fsio

    real = os.fdopen

    def windows_fdopen(fd: int, mode: str = "r", *a: object, **k: object) -> object:
        if "b" not in mode and k.get("newline") is None:
            k["newline"] = "\r\n"
        return real(fd, mode, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr(fsio.os, "fdopen", windows_fdopen)
    write_csv(tmp_path / "r.csv", [GOOD_ROW, {**GOOD_ROW, "key": "k2"}], ["normal", "dr"])
    raw = (tmp_path / "r.csv").read_bytes()
    assert b"\r\r" not in raw and raw.count(b"\r\n") == 3 == raw.count(b"\n")


@posix_only
def test_a_link_planted_among_the_thumbnails_shows_no_picture_from_elsewhere(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    photos = tmp_path / "photos"
    good_photos(photos, 1)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(photos), "--out", str(out), "--backend", "ort-cpu", "--threads", "1",
            "--no-progress"]
    assert main(args) in (0, 1)
    [row] = results_jsonl(out)
    private = tmp_path / "private" / "secret.jpg"
    private.parent.mkdir()
    private.write_bytes((out / "thumbs" / f"{row['id']}.jpg").read_bytes())
    forged = {**row, "key": "/nowhere/innocent.jpg|1|1", "id": "innocent-0123abcd", "source": "innocent.jpg"}
    forged.pop("thumb_id", None)
    forged.pop("screened_at", None)
    with open(out / JSONL, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(forged) + "\n")
    (out / "thumbs" / "innocent-0123abcd.jpg").symlink_to(private)
    assert main(args) in (0, 1)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count('class="thumb"') == 1  # the real photograph's; the forged row shows none
