"""``worker_pool="auto"`` prepares a small run in threads, also on a GPU backend (a session-53 review).

Before, ``auto`` chose processes for any GPU backend with 2+ cores whatever the number of photographs: a
one-photograph ``uopsl-screen run`` spawned a worker process that imported numpy, cv2 and uopsl before
preparing it (1.29 s against 0.83 s with threads). An explicit ``processes`` is still honoured, and inputs
whose number is not known ahead (a stream, a folder) keep the old choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

import tinybundle
from tinybundle import fundus_jpeg
from uopsl.runtime import pipeline
from uopsl.runtime.api import Screener
from uopsl.runtime.cli import cli
from uopsl.runtime.pipeline import PipelineConfig, ScreeningPipeline

tiny_bundle = tinybundle.tiny_bundle  # the session fixture (bound so that pyflakes sees it used)


def test_auto_picks_threads_for_fewer_photographs_than_a_batch_per_worker_process() -> None:
    auto = PipelineConfig(batch_size=8, workers=4, worker_pool="auto")
    assert auto.small_run_limit() == 32  # a batch of 8 for each of 4 workers
    for gpu in ("ort-cuda", "ort-trt", "tensorrt"):
        assert auto.pool_for(gpu, 1) == auto.pool_for(gpu, 31) == "threads"
        assert auto.pool_for(gpu, 32) == auto.pool_for(gpu, 10_000) == "processes"
        assert auto.pool_for(gpu, None) == auto.pool_for(gpu) == "processes"  # not known ahead: as before
    assert auto.pool_for("ort-cpu", 10_000) == auto.pool_for("openvino", None) == "threads"
    assert PipelineConfig(batch_size=1, workers=4, worker_pool="auto").pool_for("tensorrt", 4) == "processes"


def test_an_explicit_pool_is_honoured_however_few_the_photographs() -> None:
    assert PipelineConfig(workers=4, worker_pool="processes").pool_for("tensorrt", 1) == "processes"
    assert PipelineConfig(workers=4, worker_pool="processes").pool_for("ort-cpu", 1) == "processes"
    assert PipelineConfig(workers=4, worker_pool="threads").pool_for("tensorrt", 10_000) == "threads"
    assert PipelineConfig(workers=4, worker_pool="processes").pool_choice("tensorrt", 1) == \
        ("processes", "worker_pool='processes' asked for")


@pytest.mark.parametrize(("cores", "limit"), [(2, 16), (4, 24), (16, 64)])
def test_the_limit_follows_the_default_number_of_worker_processes(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                                   limit: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    cfg = PipelineConfig(worker_pool="auto")  # batch 8; processes: the cores less one, 2 to 8
    assert cfg.small_run_limit() == limit
    assert cfg.pool_for("ort-cuda", limit - 1) == "threads"
    assert cfg.pool_for("ort-cuda", limit) == "processes"
    pool, why = cfg.pool_choice("ort-cuda", 1)
    assert pool == "threads" and why.startswith("auto: 1 photograph(s), fewer than one batch (8)")


@pytest.fixture
def pools_used(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Makes ``ort-cpu`` count as a GPU backend and records, per pipeline run, whether it asked for worker
    processes; the work itself runs in a thread pool either way (no process is spawned)."""
    monkeypatch.setattr(pipeline, "GPU_BACKENDS", frozenset({"ort-cpu"}))
    used: list[bool] = []

    def spy(self: ScreeningPipeline, processes: bool) -> ThreadPoolExecutor:
        used.append(processes)
        return ThreadPoolExecutor(1)

    monkeypatch.setattr(ScreeningPipeline, "_worker_pool", spy)
    return used


def test_a_one_photograph_cli_run_on_a_gpu_backend_uses_threads(tmp_path: Path, tiny_bundle: Path,
                                                                 pools_used: list[bool],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    photo = fundus_jpeg(tmp_path / "p0.jpg", seed=0)
    runner = CliRunner()
    common = ["--backend", "ort-cpu", "--workers", "2", "--no-overlays", "--no-report"]
    with caplog.at_level(logging.DEBUG, logger="uopsl.runtime.pipeline"):
        res = runner.invoke(cli, ["run", str(tiny_bundle), str(photo), "--out", str(tmp_path / "a"), *common])
    assert res.exit_code == 0, res.output
    assert pools_used == [False]  # --worker-pool auto (the default), one photograph: threads
    assert "worker pool: 2 threads (auto: 1 photograph(s), fewer than one batch (8) for each of 2 worker " \
           "processes (16))" in caplog.text
    res = runner.invoke(cli, ["run", str(tiny_bundle), str(photo), "--out", str(tmp_path / "b"),
                              "--worker-pool", "processes", *common])
    assert res.exit_code == 0, res.output
    assert pools_used == [False, True]  # asked for: honoured


def test_the_api_counts_only_what_it_knows_without_walking(tmp_path: Path, tiny_bundle: Path,
                                                          pools_used: list[bool]) -> None:
    photos = [fundus_jpeg(tmp_path / "photos" / f"p{i}.jpg", seed=i) for i in range(3)]

    def stream() -> Iterator[Path]:
        yield from photos

    with Screener(tiny_bundle, "ort-cpu", threads=1, workers=2, worker_pool="auto") as s:
        assert s.screen(photos[0]).status == "ok"
        s.screen_to(tmp_path / "files", photos, report=False)  # 3 files named: fewer than 16
        s.screen_to(tmp_path / "folder", [tmp_path / "photos"], report=False)  # a folder: not counted
        s.screen_to(tmp_path / "stream", stream(), report=False)  # a stream: not counted
    assert pools_used == [False, False, True, True]
    with Screener(tiny_bundle, "ort-cpu", threads=1, workers=2, worker_pool="processes") as s:
        s.screen_to(tmp_path / "asked", photos[:1], report=False)
        assert s.screen(photos[1]).status == "ok"
    assert pools_used[4:] == [True, True]
