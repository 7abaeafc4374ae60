"""Keeping freed heap pages between photographs (runtime/heap.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.heap import ENV, keep_freed_heap

_FAULTS = r"""
import json, resource, sys
from pathlib import Path
import cv2
cv2.setNumThreads(1)
from uopsl.runtime.heap import keep_freed_heap
from uopsl.runtime.preprocess import PreprocessConfig, preprocess
from uopsl.runtime.quality import assess
taken = keep_freed_heap() if sys.argv[2] == "keep" else None
blobs = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.jpg"))[::17][:60]]  # spread over the set
cfg = PreprocessConfig(size=224)
for b in blobs[:10]:
    assess(preprocess(b, cfg))
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for b in blobs[10:]:
    assess(preprocess(b, cfg))
print(json.dumps({"taken": taken, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 50}))
"""


def test_bad_pads_are_refused() -> None:
    for bad in (-1, 2**31, 1.5, True, "64M"):
        with pytest.raises(ConfigError, match="pad_bytes must be an int"):
            keep_freed_heap(bad)  # type: ignore[arg-type]


def test_a_users_own_setting_and_other_systems_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "131072")
    assert keep_freed_heap() is False
    monkeypatch.delenv(ENV)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_heap() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's M_TOP_PAD: Linux only")
def test_preparing_photographs_stops_faulting_pages_in(tvhl_dir: Path) -> None:
    """By default glibc trimmed the heap after each photograph and the next one faulted ~400 pages in again
    (~20-30 % of its CPU); with the pad kept, preparing TVHL photographs faults (almost) none."""
    env = {k: v for k, v in __import__("os").environ.items() if k != ENV}

    def run(mode: str) -> dict[str, float]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, str(tvhl_dir / "fundus"), mode], env=env,
                             capture_output=True, text=True, check=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, kept = run("default"), run("keep")
    if not kept["taken"]:
        pytest.skip("this C library refuses M_TOP_PAD (not glibc): nothing to measure")
    if default["faults"] < 20:
        pytest.skip(f"this glibc does not trim between photographs here ({default['faults']:.0f} faults each)")
    assert kept["faults"] <= default["faults"] / 10, (default, kept)


def test_the_program_keeps_the_heap_an_application_calling_main_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import uopsl.runtime.cli as cli

    calls: list[int] = []
    monkeypatch.setattr(cli, "keep_freed_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["uopsl-screen", "--version"])
    assert cli.main() == 0 and calls == [1]
    assert cli.main(["--version"]) == 0 and calls == [1]


def test_preprocessing_worker_processes_keep_their_heap_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutation audit (session 34): dropping the call from the worker processes' initializer went unnoticed."""
    import signal

    import cv2

    import uopsl.runtime.workerpool as workerpool

    calls: list[int] = []
    monkeypatch.setattr(workerpool, "keep_freed_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # this is the test process, not a worker
    monkeypatch.setattr(signal, "pthread_sigmask", lambda *a: set(), raising=False)
    threads = cv2.getNumThreads()
    try:
        workerpool._worker_start()
    finally:
        cv2.setNumThreads(threads)
    assert calls == [1]
