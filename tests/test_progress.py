"""One switch hides every progress bar: ``-q`` on both CLIs, or set_enabled in an application."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture (tiny_bundle)
from uopsl.runtime import progress
from uopsl.runtime.cli import main


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    progress.set_enabled(True)


def test_bar_draws_on_stderr_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.bar(total=3, desc="counting") as b:
        for _ in range(3):
            b.update(1)
    err = capsys.readouterr().err
    assert "counting" in err and "/3" in err


def test_hidden_bars_draw_nothing_and_still_iterate(capsys: pytest.CaptureFixture[str]) -> None:
    progress.set_enabled(False)
    assert not progress.enabled()
    assert list(progress.track(range(4), total=4, desc="hidden", terminal_only=False)) == [0, 1, 2, 3]
    b = progress.bar(total=2, desc="hidden")
    b.update(2)
    b.set_postfix(loss="0.1")
    b.close()
    assert isinstance(b, progress.NoBar) and b.n == 2
    assert capsys.readouterr().err == ""


def test_terminal_only_bars_stay_out_of_logs_and_hidden_ones_keep_their_length(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(progress.bar(range(3), terminal_only=True), progress.NoBar)  # stderr is no terminal here
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    assert not isinstance(progress.bar(range(3), terminal_only=True), progress.NoBar)
    progress.set_enabled(False)
    assert len(progress.bar([1, 2, 3])) == 3 and len(progress.bar(iter([1]))) == 0
    capsys.readouterr()


def test_show_false_hides_one_bar_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress.track(iter("ab"), desc="quiet rank", show=False)) == ["a", "b"]
    assert capsys.readouterr().err == ""
    assert progress.enabled()


def test_tqdm_disable_in_the_environment_is_respected() -> None:
    # tqdm reads TQDM_* when it is imported, hence a fresh interpreter.
    code = ("from uopsl.runtime.progress import track\n"
            "for _ in track(range(3), total=3, desc='env-hidden', terminal_only=False): pass\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    hidden = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert "env-hidden" in shown.stderr and "env-hidden" not in hidden.stderr


def test_screen_run_quiet_hides_the_bar_even_when_asked_for(tiny_bundle: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        fundus_jpeg(src / f"p{i}.jpg", seed=i)
    base = ["run", str(tiny_bundle), str(src), "--backend", "ort-cpu", "--no-overlays", "--progress"]
    assert main(base + ["--out", str(tmp_path / "loud")]) == 0
    assert "screening" in capsys.readouterr().err  # the bar is there without -q ...
    assert main(base + ["--out", str(tmp_path / "quiet"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "screening" not in err and "it/s" not in err and "img/s" not in err  # ... and gone with it
    assert len((tmp_path / "quiet" / "results.csv").read_text().splitlines()) == 4



def test_library_loops_draw_no_bar_into_a_log_file(capsys: pytest.CaptureFixture[str]) -> None:
    """`uopsl pretrain ... 2> train.log` got thousands of carriage-return bar redraws in the log."""
    for _ in progress.track(range(5), total=5, desc="calibrate"):
        pass
    assert capsys.readouterr().err == ""  # stderr is captured here, not a terminal


def test_uopsl_progress_forces_or_hides_bars(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An IDE console or `| tee` is no terminal: UOPSL_PROGRESS=always draws the library's bars there anyway."""
    monkeypatch.setenv("UOPSL_PROGRESS", "always")
    for _ in progress.track(range(3), total=3, desc="forced"):
        pass
    assert "forced" in capsys.readouterr().err
    monkeypatch.setenv("UOPSL_PROGRESS", "never")
    assert isinstance(progress.bar(total=3, desc="asked for"), progress.NoBar)  # even a bar asked for


def test_synth_progress_flag_forces_its_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.train.synthetic import SynthConfig, make_dataset

    make_dataset(tmp_path / "a", 2, 0, SynthConfig(size=64), workers=1, progress=True)
    assert "synth" in capsys.readouterr().err
    make_dataset(tmp_path / "b", 2, 0, SynthConfig(size=64), workers=1)  # default: only on a terminal
    assert "synth" not in capsys.readouterr().err


def test_uopsl_progress_always_forces_the_screening_runs_bar(tiny_bundle: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`uopsl-screen run ... | tee log` in an IDE: stderr is no terminal, the variable asks for the bar anyway."""
    photo = fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    monkeypatch.setenv("UOPSL_PROGRESS", "always")
    assert main(["run", str(tiny_bundle), str(photo), "--out", str(tmp_path / "o1"), "--backend", "ort-cpu",
                 "--no-overlays", "--no-report"]) == 0
    assert "screening" in capsys.readouterr().err
    monkeypatch.setenv("UOPSL_PROGRESS", "auto")  # not a terminal here: no bar
    assert main(["run", str(tiny_bundle), str(photo), "--out", str(tmp_path / "o2"), "--backend", "ort-cpu",
                 "--no-overlays", "--no-report"]) == 0
    assert "screening" not in capsys.readouterr().err
