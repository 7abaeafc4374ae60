"""A stop that lands while screened rows are appended to results.jsonl waits for the append (session 52).

Before, Ctrl-C or SIGTERM inside the append dropped that batch's rows, which the stop message had already
counted: a docs review saw "interrupted after 184 of 1058 photographs (... results.csv and report.html list
them)" over 180 rows. Now the append finishes first, and every photograph counted is in the results.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from tinybundle import good_photos, results_csv, results_jsonl, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.cli import main
from uopsl.runtime.results import ResultStore
from uopsl.runtime.stopping import interrupts_deferred


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


def _signal_during_the_second_append(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    real = ResultStore._write_rows
    calls = [0]

    def write_then_stop(self: ResultStore, fh, pending, rows) -> None:  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 2 and rows:
            real(self, fh, pending, list(rows[:1]))
            signal.raise_signal(signum)  # half-way: one row written, the rest of the batch not yet
            real(self, fh, [], list(rows[1:]))
            return
        real(self, fh, pending, rows)

    monkeypatch.setattr(ResultStore, "_write_rows", write_then_stop)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_during_the_append_keeps_every_row_it_counts(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str],
                                                             signum: int, code: int) -> None:
    good_photos(tmp_path / "in", 8)
    out = tmp_path / "out"
    _signal_during_the_second_append(monkeypatch, signum)
    rc = main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu",
               "--threads", "1", "--no-progress", "--batch", "2"])
    err = capsys.readouterr().err
    assert rc == code, err
    rows = results_jsonl(out)
    assert len(rows) == 4 == len(results_csv(out)), err  # the second batch whole: its stop waited for it
    assert f"interrupted after 4 of 8 photographs (saved in {out}; results.csv and report.html list them)" in err
    monkeypatch.undo()
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu",
                 "--threads", "1", "--no-progress"]) == 0
    assert len(results_jsonl(out)) == 8


def test_the_deferred_stop_is_raised_when_the_block_ends_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"] and signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_nothing_is_deferred_or_touched() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def other() -> None:
        with interrupts_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [before]


def test_a_default_sigterm_still_ends_the_process_after_the_block(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = ("import signal, sys\n"
              "from uopsl.runtime.stopping import interrupts_deferred\n"
              "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
              "with interrupts_deferred():\n"
              "    signal.raise_signal(signal.SIGTERM)\n"
              "    open(sys.argv[1], 'w').write('finished')\n"
              "print('not reached')\n")
    done = tmp_path / "done.txt"
    got = subprocess.run([sys.executable, "-c", script, str(done)], capture_output=True, text=True, timeout=60,
                         env={**os.environ})
    assert got.returncode == -signal.SIGTERM and done.read_text() == "finished" and "not reached" not in got.stdout


def test_a_second_stop_while_one_is_held_is_handled_at_once() -> None:
    """A write stalled on a dead share must still be broken off by pressing Ctrl-C again (a code review)."""
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            reached.append("held")
            signal.raise_signal(signal.SIGINT)
            reached.append("not reached")
    assert reached == ["held"]


def test_a_block_that_fails_lets_its_error_through() -> None:
    """A full disk during the append stays the error: a held stop raised over it said "saved" (a code review)."""
    with pytest.raises(OSError, match="No space left"):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGTERM if hasattr(signal, "SIGTERM") else signal.SIGINT)
            raise OSError(28, "No space left on device")


def test_a_placeholder_left_installed_passes_the_stop_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt landing while the handlers are put back can leave the placeholder installed for another
    signal; it must then act as the handler it replaced, not swallow every later SIGTERM (a code review)."""
    got: list[int] = []
    monkeypatch.setattr(signal, "SIGTERM", signal.SIGTERM)
    old = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        real_signal = signal.signal
        left: list[object] = []

        def restore_but_keep_the_placeholder(sig: int, handler: object) -> object:
            if sig == signal.SIGTERM and not callable(getattr(handler, "__self__", None)) \
                    and getattr(handler, "__name__", "") != "note" and left == []:
                left.append(signal.getsignal(sig))  # the restore of SIGTERM never happens
                return left[0]
            return real_signal(sig, handler)

        with interrupts_deferred():
            monkeypatch.setattr(signal, "signal", restore_but_keep_the_placeholder)
        monkeypatch.setattr(signal, "signal", real_signal)
        assert getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "note"
        signal.raise_signal(signal.SIGTERM)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)
