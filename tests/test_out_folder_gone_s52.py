"""A results folder removed or moved while screening, and a watch whose report cannot be rewritten (session 52).

A storage review found: ``rm -rf OUT`` (or ``mv OUT``) during ``run`` ended with the normal summary, exit 1,
and a fresh report.html of "0 images" where OUT had been: every row of the session went with the unlinked
results.jsonl (``watch`` the same, exit 0). And a ``watch`` whose periodic rewrite of results.csv/report.html
met a full disk stopped for good, though its rows still fitted.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest
from tinybundle import good_photos, results_csv, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import watch as watch_mod
from uopsl.runtime.api import Screener
from uopsl.runtime.cli import main
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.watch import WatchConfig, watch_folder


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_run_stops_with_a_clear_error_when_its_folder_goes(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                           how: str) -> None:
    good_photos(tmp_path / "in", 6)
    out = tmp_path / "out"
    seen = [0]

    def take_the_folder(r: object) -> None:
        seen[0] += 1
        if seen[0] == 3:  # after the first batch of two was appended
            if how == "removed":
                shutil.rmtree(out)
            else:
                out.rename(tmp_path / "elsewhere")

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        with pytest.raises(ConfigError, match=rf"the output folder {out} was removed or moved while screening: "
                                              r"the rows written since are not in it"):
            s.screen_to(out, [tmp_path / "in"], on_result=take_the_folder)
    # No fresh report of "0 images", header-only CSV or rows where the folder was (the check runs once per batch,
    # before its pictures: the rest of the batch's pictures may make the folder again, nothing else).
    assert not any((out / name).exists() for name in ("report.html", "results.csv", "results.jsonl", "run.json"))
    if how == "moved":
        assert len(results_jsonl(tmp_path / "elsewhere")) >= 2  # the rows went with the folder
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu",
                 "--threads", "1", "--no-progress"]) == 0
    assert len(results_csv(out)) == 6


def test_run_from_the_command_line_exits_2_with_one_line(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    good_photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    real = Screener._write_images
    calls = [0]

    def remove_after_two(self: Screener, *a: object, **k: object) -> dict[str, str]:
        calls[0] += 1
        if calls[0] == 3:
            shutil.rmtree(out)
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Screener, "_write_images", remove_after_two)
    rc = main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu",
               "--threads", "1", "--no-progress", "--batch", "2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "was removed or moved while screening" in errors[0] and "Traceback" not in err
    assert not (out / "report.html").exists()


def test_watch_stops_when_its_folder_goes(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    inbox = tmp_path / "inbox"
    first, second = good_photos(tmp_path / "src", 2)
    inbox.mkdir()
    shutil.copy(first, inbox / "a.jpg")
    out = tmp_path / "out"

    def on_result(r: object) -> None:
        if Path(r.source).name == "a.jpg":  # type: ignore[attr-defined]
            shutil.copy(second, inbox / "b.jpg")
        else:  # a.jpg's row is in the folder by now: b.jpg's would go with the removed file
            shutil.rmtree(out)

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        with pytest.raises(ConfigError, match="was removed or moved while screening: the rows written since"):
            watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=20, refresh_s=0),
                         on_result=on_result)
    assert not (out / "report.html").exists()


def test_watch_keeps_screening_when_a_rewrite_of_the_report_fails(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    inbox = tmp_path / "inbox"
    photos = good_photos(tmp_path / "src", 3)
    inbox.mkdir()
    shutil.copy(photos[0], inbox / "a.jpg")
    out = tmp_path / "out"
    real = watch_mod._refresh
    refreshes = [0]

    def full_disk_twice(screener: Screener, out_: Path, store: object) -> int:
        refreshes[0] += 1
        if refreshes[0] <= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(out_ / "report.html"))
        return real(screener, out_, store)  # type: ignore[arg-type]

    def on_result(r: object) -> None:
        name = Path(r.source).name  # type: ignore[attr-defined]
        nxt = {"a.jpg": "b.jpg", "b.jpg": "c.jpg"}.get(name)
        if nxt:
            shutil.copy(photos[1 if nxt == "b.jpg" else 2], inbox / nxt)

    monkeypatch.setattr(watch_mod, "_refresh", full_disk_twice)
    caplog.set_level(logging.WARNING, logger="uopsl.runtime.watch")
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        summary = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, max_images=3, timeout_s=30, refresh_s=0),
                               on_result=on_result)
    assert summary.screened == 3 and len(results_jsonl(out)) == 3 and len(results_csv(out)) == 3
    said = [r.getMessage() for r in caplog.records]
    assert sum("NOT updated (No space left on device)" in m for m in said) == 1, said  # once per distinct error
    assert any("up to date again" in m for m in said), said


# -- a full disk names the file and says what to do ----------------------------------------------------------------
def test_a_full_disk_while_writing_names_the_file(tmp_path: Path) -> None:
    from uopsl.runtime.fsio import atomic_open

    target = tmp_path / "report.html"
    with pytest.raises(OSError) as got:
        with atomic_open(target, "w") as fh:
            fh.write("<html>")
            raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file named
    assert got.value.errno == errno.ENOSPC and got.value.filename == str(target)
    assert not list(tmp_path.iterdir())  # the temporary went


def test_run_on_a_full_disk_names_results_jsonl_and_says_to_free_space(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.results import ResultStore

    good_photos(tmp_path / "in", 2)
    out = tmp_path / "out"

    def full(self: ResultStore, *a: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ResultStore, "_write_rows", full)
    rc = main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu",
               "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(errors) == 1, err
    assert f"No space left on device: {out / 'results.jsonl'} (free some space on that disk, then run the same " \
           "command again: what was saved before is kept" in errors[0], errors[0]


def test_a_full_disk_at_the_start_asks_for_space_not_another_folder(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from uopsl.runtime import results

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(ConfigError, match=r"\(No space left on device\); free some space on that disk, or choose "
                                          r"another --out"):
        results.prepare_folder(tmp_path / "out")


def test_a_torn_last_row_read_in_the_failing_run_is_not_called_corrupt(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """After a write failed mid-row, the same run's rewrite read the torn row and warned "skipping a corrupt
    row (not JSON); its photograph is screened again", which is not what happened in that run."""
    from uopsl.runtime.results import ResultStore

    row = {"id": "r0", "source": "/x/r0.jpg", "key": "/x/r0.jpg|10|1", "status": "ok"}
    with ResultStore(tmp_path / "out") as store:
        store.append([row])
        with open(tmp_path / "out" / "results.jsonl", "ab") as fh:
            fh.write(b'{"id": "r1", "sou')  # cut short
        caplog.set_level(logging.WARNING, logger="uopsl.runtime.results")
        assert [r["id"] for r in store.latest_rows()] == ["r0"]
    assert not [r for r in caplog.records if "corrupt" in r.getMessage()]


def test_a_rerun_says_when_earlier_rows_lost_their_pictures(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """thumbs/ and overlays/ are most of a results folder, so they are what is deleted to free space; the
    rerun skipped every photograph as done and wrote a report without pictures, without a word."""
    good_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        s.screen_to(out, [tmp_path / "in"])
        shutil.rmtree(out / "thumbs")
        caplog.set_level(logging.WARNING, logger="uopsl.runtime.api")
        s.screen_to(out, [tmp_path / "in"])
    said = [r.getMessage() for r in caplog.records if "no longer in" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"3 thumbnail(s) or heatmap(s) of photographs screened earlier are "
                                                 f"no longer in {out}"), said


def test_an_empty_run_json_is_warned_about_once_per_run(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    good_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu", "--threads",
            "1", "--no-progress"]
    assert main(args) == 0
    (out / "run.json").write_bytes(b"")  # a power cut's empty file
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("run.json: unreadable") == 1, err


def test_a_restarted_watch_names_the_photographs_an_earlier_session_left_to_retake(
        tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from tinybundle import make_bad_zoo

    inbox = tmp_path / "inbox"
    good_photos(inbox, 1)
    make_bad_zoo(inbox)
    out = tmp_path / "out"
    args = ["watch", str(tiny_bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu", "--threads", "1",
            "--settle-ms", "0", "--poll", "0.05", "--timeout", "3"]
    assert main(args) == 1
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "retake or check: grayscale.png (not a colour photograph; earlier run)" in err, err


def test_a_folder_that_reads_not_found_for_a_moment_is_looked_at_again(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mapped network drive that blinks reads "not found" for a moment on Windows: that alone stopped a
    watch (a code review). The folder is looked at again before it is called gone."""
    from uopsl.runtime import results
    from uopsl.runtime.results import ResultStore

    monkeypatch.setattr(results, "GONE_RECHECK_S", 0.01)
    row = {"id": "r0", "source": "/x/r0.jpg", "key": "/x/r0.jpg|10|1", "status": "ok"}
    with ResultStore(tmp_path / "out") as store:
        store.append([row])
        real = results.os.stat
        blinks = [1]

        def stat(path, *a, **k):  # type: ignore[no-untyped-def]
            if blinks[0] and str(path).endswith("results.jsonl"):
                blinks[0] -= 1
                raise FileNotFoundError(2, "The network name cannot be found", str(path))
            return real(path, *a, **k)

        monkeypatch.setattr(results.os, "stat", stat)
        store.check_in_place()  # no error: the second look finds it
        assert blinks == [0] and not store.gone
