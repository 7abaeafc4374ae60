"""Shared test fixtures: the real TVHL data, a synthetic fundus, and the bad-input zoo.

- ``tvhl_dir``: the real TVHL subset at ``../shared/data/tvhl`` (relative to the
  repository root); tests that use it skip, with the reason, where it is absent.
  It is read in place, never copied.
- ``tvhl_fundus_survey``: every TVHL fundus photograph preprocessed and gated
  once per session (geometry, output shape and verdict per image).
- ``fake_fundus``: a function drawing a small fundus-like RGB image (black
  surround, lit circular field, disc, vessels) for tests that need a plausible
  photograph without the real data.
- ``bad_inputs``: a factory writing the bad-file zoo (empty, truncated, text
  named .jpg, 1x1, 9000x7000, decompression bomb, checkerboard, landscape, ...)
  into a folder and returning, per file, what the toolkit must do with it: raise
  a given :class:`~uopsl.runtime.errors.ImageError` subclass, or preprocess and
  get an ungradable verdict with a given reason. Batch tests (screening
  pipeline, CLI) can feed the whole zoo and check every file gets its row.
- ``tiny_onnx``, ``tiny_calib_set``, ``tiny_minmax_table``: a TinyScreen ONNX model
  at 64 px (stem, depthwise, pointwise and 3x3 layers), 16 calibration images and
  their minmax table, for the INT8 weight-rounding tests.
- ``durability_log``: records each ``os.fsync`` (as the file its descriptor
  names, Linux only) and each ``os.replace``, in order, for the tests of what
  an atomic write promises (the temporary fsynced before it is renamed).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from imagekit import (
    TVHL_DIR,
    SurveyRow,
    draw_fake_fundus,
    BadInput,
    _write_zoo_file,
    BAD_INPUT_NAMES,
)
from tinymodel import export_tiny_onnx, random_fundus_batch
from uopsl.runtime.preprocess import preprocess_file
from uopsl.runtime.quality import assess

def pytest_configure(config: pytest.Config) -> None:
    """Tests see no signing keys configured on the machine running them (a developer's own trusted-keys folder
    or UOPSL_TRUSTED_KEYS would make every unsigned test bundle refused); tests of the policy set their own.
    Nor do they see or fill the user's uopsl cache folder.

    Set once, before any fixture of any scope. Subprocesses inherit the environment; they still read the
    machine's own folder (/etc/uopsl/trusted-keys), which CI machines do not have.
    """
    import os

    import uopsl.runtime.signing as signing

    import faulthandler
    import signal
    import sys
    import tempfile

    if hasattr(signal, "SIGUSR1"):  # .ci/run sends it to a run that hangs: every thread's stack, to stderr
        # A copy of the real stderr, taken while pytest's capture is suspended: during a test, fd 2 is
        # pytest's capture file, which the kill that follows would throw away.
        faulthandler.register(signal.SIGUSR1, file=os.dup(sys.__stderr__.fileno()), all_threads=True, chain=False)
    for name in ("UOPSL_TRUSTED_KEYS", "UOPSL_TRUSTED_KEYS_DIR"):
        os.environ.pop(name, None)
    # Every uopsl cache (runtime.fsio.user_cache_dir: timing caches, OpenVINO blobs, calibration sets, text
    # embeddings, CPU measurements) goes under pytest's own cache folder, never the user's: a fake TensorRT's
    # timing cache or a test model's OpenVINO blob must not land in the caches a real device reads, and a warm
    # user cache must not change what a test sees. Kept between runs (the mypy and stub caches are slow to
    # make); `pytest --cache-clear` empties it. Subprocesses inherit it.
    os.environ.pop("UOPSL_CACHE", None)
    cache = getattr(config, "cache", None)
    os.environ["UOPSL_CACHE_DIR"] = (str(cache.mkdir("uopsl")) if cache is not None
                                     else tempfile.mkdtemp(prefix="uopsl-test-cache-"))
    # The folders tests make for trusted keys must not be writable by the group: the runtime refuses such a
    # folder (runtime/signing.py), and some systems give users umask 002. Tests of umask handling set their own.
    if os.name == "posix":
        os.umask(os.umask(0o022) | 0o022)
    import warnings

    # A folder that does not exist reads as "no keys" (one that cannot be listed would stop every run). Inside a
    # fresh owner-only temporary folder, nobody else can create it meanwhile.
    signing._system_dir_for_tests = Path(tempfile.mkdtemp(prefix="uopsl-tests-")) / "no-trusted-keys"
    try:
        machine_keys = signing._keys_in_folder(signing.system_keys_dir(), required=False)
    except Exception:  # noqa: BLE001 - a broken folder is as bad as keys, for the subprocess tests
        machine_keys = ("?",)
    if machine_keys:
        warnings.warn(f"this machine trusts bundle signing keys ({signing.system_keys_dir()}): tests that start "
                      "uopsl in a subprocess read them and refuse the suite's unsigned bundles", stacklevel=1)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Name what is still running when the tests end: a non-daemon thread or a child process that never
    ends keeps the interpreter from exiting after the summary (a CI run once timed out that way), and
    this line is then the only clue. The shared preprocessing pool's workers are expected (kept until
    exit, when they are stopped)."""
    import multiprocessing
    import threading

    from uopsl.runtime import workerpool

    import time

    pools = list(workerpool._shared.values())
    managers = {getattr(pool, "_executor_manager_thread", None) for pool in pools}
    shared = {p for pool in pools for p in (getattr(pool, "_processes", None) or {}).values()}
    deadline = time.monotonic() + 5  # pools let go without waiting (discard_pool) may still be ending
    while True:
        threads = [t for t in threading.enumerate()
                   if t is not threading.main_thread() and not t.daemon and t.is_alive() and t not in managers]
        children = [p for p in multiprocessing.active_children() if p not in shared]
        if not (threads or children) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    threads = [t.name for t in threads]
    children = [f"{type(p).__name__} {p.pid}" for p in children]
    if threads or children:
        terminalreporter.write_line(f"still running at the end of the tests: threads {threads}, "
                                    f"child processes {children}")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Put the root logger's handlers and level back after each test.

    The CLIs configure logging onto the stderr they see (``logging.basicConfig(force=True)``); called
    in-process under ``capsys`` that is pytest's capture stream, closed after the test. A later test whose
    command logs without configuring logging again would then write to a closed file.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _working_folder_kept() -> Iterator[None]:
    """Fail a test that leaves the working folder changed (``monkeypatch.chdir`` puts it back).

    Why: a passed test's ``tmp_path`` is removed at once (pyproject's retention policy), so a test that
    ``os.chdir``-ed into it left every later test in a deleted folder: ``os.getcwd()`` raised
    FileNotFoundError in 71 of them (session 60's first CI). Requested first (autouse), so this runs after
    the test's own fixtures have been torn down.
    """
    before = os.getcwd()
    yield
    try:
        now = os.getcwd()
    except FileNotFoundError:
        now = "(a folder that no longer exists)"
    if now != before:
        os.chdir(before)
        pytest.fail(f"the test left the working folder at {now} (it was {before}): use monkeypatch.chdir")


@pytest.fixture(scope="session")
def tvhl_dir() -> Path:
    """The real TVHL data folder (``fundus.csv``, ``fundus/``, ``oct.csv``, ``oct/``); skips where absent."""
    if not (TVHL_DIR / "fundus.csv").is_file():
        pytest.skip(f"real TVHL data not found at {TVHL_DIR} (expected ../shared/data/tvhl next to the repository)")
    return TVHL_DIR


@pytest.fixture(scope="session")
def tvhl_fundus_survey(tvhl_dir: Path) -> list[SurveyRow]:
    """Every fundus photograph listed in TVHL's ``fundus.csv``, preprocessed (default config) and gated.

    One pass (about 10-15 ms an image) shared by the preprocessing and quality
    tests. A photograph that raises is a test failure, not a row.
    """
    with open(tvhl_dir / "fundus.csv", newline="", encoding="utf-8") as fh:
        entries = [(row["path"], row["label"]) for row in csv.DictReader(fh)]
    rows = []
    for rel, label in entries:
        pre = preprocess_file(tvhl_dir / rel)
        rows.append(SurveyRow(rel, label, pre.image.shape, str(pre.image.dtype), pre.geometry, assess(pre)))
    return rows


@pytest.fixture(scope="session")
def fake_fundus() -> Callable[..., np.ndarray]:
    """:func:`draw_fake_fundus` (``fake_fundus(size=256, seed=0, field=0.45)`` -> uint8 RGB)."""
    return draw_fake_fundus


@pytest.fixture
def bad_inputs(tmp_path: Path) -> Callable[..., dict[str, BadInput]]:
    """Factory: ``bad_inputs(names=BAD_INPUT_NAMES, folder=tmp_path / "bad")`` -> ``{name: BadInput}``.

    Writes the requested zoo files into ``folder`` (created) and returns what
    each must produce. ``missing.jpg`` is deliberately not written.
    """

    def make(names: Iterable[str] = BAD_INPUT_NAMES, folder: Path | None = None) -> dict[str, BadInput]:
        target = folder if folder is not None else tmp_path / "bad"
        target.mkdir(parents=True, exist_ok=True)
        return {name: _write_zoo_file(name, target) for name in names}

    return make



@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    return export_tiny_onnx(tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx", num_classes=3, size=64)


@pytest.fixture(scope="session")
def tiny_calib_set():  # type: ignore[no-untyped-def]
    from uopsl.calibration.dataset import CalibrationSet

    return CalibrationSet.from_images(random_fundus_batch(16, 64, seed=1))


@pytest.fixture(scope="session")
def tiny_minmax_table(tiny_onnx: Path, tiny_calib_set):  # type: ignore[no-untyped-def]
    from uopsl.calibration.ranges import collect_statistics

    return collect_statistics(tiny_onnx, tiny_calib_set, batch_size=8, show_progress=False).table("minmax")


@pytest.fixture
def durability_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """``("fsync", file)`` and ``("replace", src, dst)`` events, in order; skips where /proc/self/fd is missing."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names descriptors through /proc/self/fd (Linux)")
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events
