"""Under torchrun, every line a rank other than 0 writes names its rank.

Log records had ``[rank N]`` on their first line only, and the lines :func:`main_entry` writes itself (the
error line, click's usage errors, the ``-v`` traceback) had none: a failure on every rank printed the same
``error: ...`` line once per rank, none telling which. A library's Python warning and a progress bar named
no rank either. Rank 0 speaks for the run: its error and closing lines stay as they were.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from uopsl.runtime import progress
from uopsl.runtime.clikit import main_entry, setup_logging, verbose_option
from uopsl.runtime.errors import ConfigError
from uopsl.train.cli import cli


@pytest.fixture
def torchrun(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two ranks' environment; logging, Python warnings and bars put back afterwards."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    logging.captureWarnings(False)  # an earlier test's setup_logging may have left it on
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logging.basicConfig(force=True)
        progress.set_enabled(True)


def _rank(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


@click.group()
@verbose_option
def _group() -> None:
    pass


@_group.command("fail")
@click.option("--how", type=click.Choice(["config", "os", "bug"]), required=True)
def _fail(how: str) -> None:
    if how == "config":
        raise ConfigError("a bad setting\nover two lines")
    if how == "os":
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/x")
    raise ZeroDivisionError("division by zero")


@pytest.mark.parametrize("how", ["config", "os", "bug"])
def test_a_failing_rank_1_prefixes_its_error_line(how: str, torchrun: None, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _rank(monkeypatch, 1)
    assert main_entry(_group, ["fail", "--how", how]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("[rank 1] ") for ln in lines), err
    assert any(ln.startswith("[rank 1] error: ") for ln in lines), err


def test_rank_1_prefixes_a_usage_error_and_the_traceback_of_v(torchrun: None, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _rank(monkeypatch, 1)
    assert main_entry(_group, ["fail"]) == 2  # --how missing: click's own usage error
    err = capsys.readouterr().err
    assert "Missing option '--how'" in err
    assert all(ln.startswith("[rank 1] ") for ln in err.splitlines() if ln.strip()), err
    assert main_entry(_group, ["-v", "fail", "--how", "bug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert all(ln.startswith("[rank 1] ") for ln in err.splitlines() if ln.strip()), err


def test_rank_0_and_a_plain_run_keep_the_bare_error_line(torchrun: None, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _rank(monkeypatch, 0)
    assert main_entry(_group, ["fail", "--how", "config"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "error: a bad setting over two lines"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main_entry(_group, ["fail", "--how", "config"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "error: a bad setting over two lines"


def test_finetune_failing_on_rank_1_names_its_rank(torchrun: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The real command: a data spec that is not there fails on every rank, each saying so once."""
    _rank(monkeypatch, 1)
    rc = main_entry(cli, ["finetune", "--data", f"folder:{tmp_path / 'none'}", "--out", str(tmp_path / "ft"),
                          "--epochs", "1", "--device", "cpu"], prog_name="uopsl")
    err = capsys.readouterr().err
    assert rc == 2 and "[rank 1] error: " in err, err
    assert all(ln.startswith("[rank 1] ") for ln in err.splitlines() if ln.strip()), err


def test_rank_1_log_records_warnings_and_bars(torchrun: None, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _rank(monkeypatch, 1)
    setup_logging(0)
    try:
        raise ValueError("inner")
    except ValueError:
        logging.getLogger("uopsl.train.loops").warning("a step failed", exc_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "[rank 1] WARNING uopsl.train.loops: a step failed" in err
    assert "[rank 1] ValueError: inner" in err  # the traceback's lines too
    assert "a library's warning" in err
    assert all(ln.startswith("[rank 1] ") for ln in err.splitlines() if ln.strip()), err
    assert not progress.enabled()  # a bar cannot carry the prefix; rank 0's shows the progress
    _rank(monkeypatch, 0)
    setup_logging(0)
    assert progress.enabled()
