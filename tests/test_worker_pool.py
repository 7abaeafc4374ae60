"""Preparing photographs in worker processes: same results as threads, a dead worker is a clear error.

Why processes exist: on a 16-core GPU machine (session 23) worker threads stopped scaling at ~1.5x, capping
the pipeline far below the GPU; ``PipelineConfig.pool_for`` picks processes for GPU backends.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinybundle import fundus_jpeg, make_bad_zoo, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.backends import open_backend
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.cli import cli
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.pipeline import PipelineConfig, ScreeningPipeline
from uopsl.runtime.inputs import InputItem, item_for_path
from uopsl.runtime.workerpool import shutdown_worker_processes


def test_worker_pool_setting_is_checked_and_auto_follows_the_backend() -> None:
    with pytest.raises(ConfigError, match="worker_pool must be one of auto, threads, processes, got 'fork'"):
        PipelineConfig(worker_pool="fork")
    assert PipelineConfig().worker_pool == "threads"  # the library spawns no process unasked (the CLI: auto)
    auto = PipelineConfig(workers=4, worker_pool="auto")
    assert auto.pool_for("ort-cuda") == auto.pool_for("tensorrt") == auto.pool_for("ort-trt") == "processes"
    assert auto.pool_for("ort-cpu") == auto.pool_for("openvino") == "threads"
    assert PipelineConfig(workers=1).pool_for("tensorrt") == "threads"  # one worker: nothing to gain
    assert PipelineConfig(workers=4, worker_pool="processes").pool_for("ort-cpu") == "processes"
    assert PipelineConfig(workers=4, worker_pool="threads").pool_for("tensorrt") == "threads"
    assert PipelineConfig(workers=3).workers_for("processes") == PipelineConfig(workers=3).workers_for("threads") == 3


@pytest.mark.parametrize(("cores", "threads", "processes"), [(1, 1, 1), (2, 2, 2), (4, 4, 3), (16, 4, 8)])
def test_default_worker_counts(monkeypatch: pytest.MonkeyPatch, cores: int, threads: int, processes: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    cfg = PipelineConfig(worker_pool="auto")
    assert (cfg.workers_for("threads"), cfg.workers_for("processes")) == (threads, processes)
    assert cfg.pool_for("tensorrt") == ("processes" if cores >= 2 else "threads")


def test_processes_give_the_rows_threads_give_bad_files_included(tmp_path: Path, tiny_bundle: Path) -> None:
    zoo = make_bad_zoo(tmp_path / "zoo")
    good = [fundus_jpeg(tmp_path / "good" / f"g{i}.jpg", seed=i) for i in range(6)]
    inputs = good[:3] + [p for p, _ in zoo.values()] + good[3:]
    rows = {}
    for pool in ("threads", "processes"):
        with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=4, workers=2, worker_pool=pool) as s:
            rows[pool] = list(s.screen_many(inputs))
    a, b = rows["threads"], rows["processes"]
    assert [r.source for r in b] == [str(p) for p in inputs]
    assert [(r.status, r.reasons, r.error, r.refer, r.positive) for r in a] == \
           [(r.status, r.reasons, r.error, r.refer, r.positive) for r in b]
    for x, y in zip(a, b):
        assert x.probs == y.probs and x.content_sha256 == y.content_sha256  # the same arithmetic, bit for bit
        if x.site_maps is not None:
            assert np.array_equal(x.site_maps, y.site_maps) and x.geometry == y.geometry
    assert {r.status for r in b} == {"ok", "ungradable", "error"}


class _KillsItsWorker:
    """Unpickling this ends the process that does it: a worker dying mid-run (killed for memory, say)."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os._exit, (3,))


def test_a_photograph_that_kills_its_worker_gets_an_error_row_and_the_run_goes_on(
        tmp_path: Path, tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    good = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(6)]
    killer = InputItem(source="killer", key="killer", id="killer", data=_KillsItsWorker())  # type: ignore[arg-type]
    items = [item_for_path(p) for p in good[:3]] + [killer] + [item_for_path(p) for p in good[3:]]
    cfg = PipelineConfig(batch_size=2, workers=2, worker_pool="processes")
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        pipe = ScreeningPipeline(backend, m, cfg)
        rows = list(pipe.run(items))
        assert [r.source for r in rows] == [i.source for i in items]  # one row each, in order
        by = {r.source: r for r in rows}
        assert by["killer"].status == "error" and by["killer"].reasons == ("decoder_crash",)
        assert "stopped the worker process" in by["killer"].error
        assert [by[str(p)].status for p in good] == ["ok"] * 6
        # the pool in use afterwards is a working one
        assert [r.status for r in pipe.run([item_for_path(p) for p in good[:2]])] == ["ok"] * 2


def test_a_pool_shut_down_or_broken_between_results_is_replaced_in_input_order(
        tmp_path: Path, tiny_bundle: Path) -> None:
    """submit() on a broken or shut-down pool raises at once; those inputs must still get their rows."""
    m = read_manifest(tiny_bundle)
    good = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(10)]
    cfg = PipelineConfig(batch_size=2, workers=2, worker_pool="processes", prefetch_batches=1)
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        rows = []
        for r in ScreeningPipeline(backend, m, cfg).run([item_for_path(p) for p in good]):
            rows.append(r)
            if len(rows) == 2:
                shutdown_worker_processes()  # what another thread may do; every later submit() is refused
        assert [r.source for r in rows] == [str(p) for p in good]
        assert [r.status for r in rows] == ["ok"] * 10


def test_an_unpicklable_quality_config_is_refused_up_front(tmp_path: Path, tiny_bundle: Path) -> None:
    fundus_path = fundus_jpeg(tmp_path / "p.jpg", seed=0)
    m = read_manifest(tiny_bundle)
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        pipe = ScreeningPipeline(backend, m, PipelineConfig(workers=2, worker_pool="processes"),
                                 quality_config=lambda pre: None)
        with pytest.raises(ConfigError, match="quality_config that can be pickled"):
            list(pipe.run([item_for_path(fundus_path)]))


def test_a_run_whose_workers_keep_dying_stops_after_the_restart_limit(
        tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uopsl.runtime.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "MAX_POOL_RESTARTS", 2)
    m = read_manifest(tiny_bundle)
    good = fundus_jpeg(tmp_path / "g.jpg", seed=0)
    killers = [InputItem(source=f"k{i}", key=f"k{i}", id=f"k{i}", data=_KillsItsWorker()) for i in range(3)]  # type: ignore[arg-type]
    cfg = PipelineConfig(batch_size=1, workers=2, worker_pool="processes", prefetch_batches=1)
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        got = []
        with pytest.raises(BackendError, match="stopped 3 times in this run") as info:
            for r in ScreeningPipeline(backend, m, cfg).run(killers + [item_for_path(good)]):
                got.append((r.source, r.reasons))
        # k0 and k1 got their error rows but wait in the batch (failed rows flush with the next runnable one):
        # every input without a result is in .unscreened, nothing is lost.
        unscreened = {i.source for i in info.value.unscreened}  # type: ignore[attr-defined]
        assert not ({s for s, _ in got} & unscreened) and {s for s, _ in got} | unscreened == {"k0", "k1", "k2", str(good)}
        assert all(reasons == ("decoder_crash",) for _, reasons in got)


def test_cli_run_and_bench_take_the_worker_pool(tmp_path: Path, tiny_bundle: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        fundus_jpeg(photos / f"p{i}.jpg", seed=i)
    runner = CliRunner()
    res = runner.invoke(cli, ["run", str(tiny_bundle), str(photos), "--out", str(tmp_path / "out"),
                              "--backend", "ort-cpu", "--worker-pool", "processes", "--no-overlays", "--no-report"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "out" / "results.csv").read_text(encoding="utf-8-sig").splitlines()) == 4
    res = runner.invoke(cli, ["run", str(tiny_bundle), str(photos), "--out", str(tmp_path / "o2"),
                              "--worker-pool", "fork"])
    assert res.exit_code == 2 and "fork" in res.output
    out = tmp_path / "bench.json"
    res = runner.invoke(cli, ["bench", str(tiny_bundle), "--backend", "ort-cpu", "--precision", "fp32", "--batch", "2",
                              "--iters", "2", "--warmup", "0", "--e2e-images", "8", "--worker-pool", "processes",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    import json

    e2e = json.loads(out.read_text())["e2e"][0]
    assert e2e["worker_pool"] == "processes" and e2e["statuses"] == {"ok": 8}
    res = runner.invoke(cli, ["bench", str(tiny_bundle), "--backend", "ort-cpu", "--precision", "fp32", "--batch", "2",
                              "--iters", "2", "--warmup", "0", "--e2e-images", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["e2e"][0]["worker_pool"] == "threads"  # auto, on a CPU backend


def test_a_script_without_a_main_guard_is_told_the_rule(tmp_path: Path, tiny_bundle: Path) -> None:
    import subprocess
    import sys

    photo = fundus_jpeg(tmp_path / "p.jpg", seed=1)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from uopsl.runtime.api import Screener\n"
        f"with Screener({str(tiny_bundle)!r}, 'ort-cpu', workers=2, worker_pool='processes') as s:\n"
        f"    print(s.screen({str(photo)!r}).status)\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr, proc.stderr[-2000:]
    guarded = tmp_path / "guarded.py"
    guarded.write_text("if __name__ == '__main__':\n" + "".join(
        "    " + line + "\n" for line in script.read_text(encoding="utf-8").splitlines()), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _manager_dies_first(self, cause):  # type: ignore[no-untyped-def]
    """What CPython 3.11's race can leave (submit() and a worker's death at once): the manager thread marks
    the pool broken and dies before it fails the pending futures or stops the remaining workers."""
    executor = self.executor_reference()
    if executor is not None:
        executor._broken = "simulated"
    raise RuntimeError("simulated: dictionary changed size during iteration")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_pool_whose_manager_thread_died_neither_hangs_the_run_nor_leaves_workers(
        tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures.process as cfp
    import multiprocessing

    from uopsl.runtime import workerpool

    monkeypatch.setattr(cfp._ExecutorManagerThread, "terminate_broken", _manager_dies_first)
    monkeypatch.setattr(workerpool, "POLL_S", 0.05)
    shutdown_worker_processes()
    m = read_manifest(tiny_bundle)
    good = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(4)]
    killer = InputItem(source="killer", key="killer", id="killer", data=_KillsItsWorker())  # type: ignore[arg-type]
    items = [item_for_path(p) for p in good[:2]] + [killer] + [item_for_path(p) for p in good[2:]]
    cfg = PipelineConfig(batch_size=2, workers=2, worker_pool="processes")
    rows: list = []
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        # in a thread, so that a regression fails here instead of hanging the suite
        runner = threading.Thread(target=lambda: rows.extend(ScreeningPipeline(backend, m, cfg).run(items)),
                                  daemon=True)
        runner.start()
        runner.join(120)
        assert not runner.is_alive(), "the run waited forever on a pool that can no longer complete its work"
    assert [r.source for r in rows] == [i.source for i in items]
    assert [r.reasons for r in rows if r.source == "killer"] == [("decoder_crash",)]
    assert [r.status for r in rows if r.source != "killer"] == ["ok"] * 4
    live = workerpool.worker_processes(2)
    ours = set((live._processes or {}).values())  # type: ignore[attr-defined]
    for _ in range(40):  # terminated workers are reaped by active_children()
        strays = [p for p in multiprocessing.active_children()
                  if isinstance(p, workerpool.WorkerProcess) and p not in ours]
        if not strays:
            break
        time.sleep(0.05)
    assert strays == []
    shutdown_worker_processes()


def test_wait_prepared_gives_up_on_a_future_a_dead_pool_will_never_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import BrokenExecutor, Future

    from uopsl.runtime import workerpool

    monkeypatch.setattr(workerpool, "POLL_S", 0.01)

    class _Pool:
        _broken: object = False
        _executor_manager_thread = None

    pool = _Pool()
    done: Future[int] = Future()
    done.set_result(7)
    assert workerpool.wait_prepared(done, pool) == 7
    from concurrent.futures import CancelledError

    cancelled: Future[int] = Future()  # cancelled by a shutdown: done, though wait() never reports it
    cancelled.cancel()
    with pytest.raises(CancelledError):
        workerpool.wait_prepared(cancelled, pool)
    timed_out: Future[int] = Future()  # the task's own TimeoutError (the builtin is the futures' one from 3.11)
    timed_out.set_exception(TimeoutError("the task's own"))
    with pytest.raises(TimeoutError, match="the task's own"):
        workerpool.wait_prepared(timed_out, pool)
    pool._broken = "a child process terminated abruptly"
    with pytest.raises(BrokenExecutor, match="broke while this photograph waited"):
        workerpool.wait_prepared(Future(), pool)


def test_a_pool_another_run_already_replaced_is_kept() -> None:
    """Two runs on one shared pool both see it break; the second must not replace (and so cancel the work
    of) the pool the first one just made."""
    from uopsl.runtime import workerpool

    first = workerpool.worker_processes(3)
    second = workerpool.replace_worker_processes(3, first)
    assert second is not first and first._shutdown_thread  # type: ignore[attr-defined]
    assert workerpool.replace_worker_processes(3, first) is second
    assert not second._shutdown_thread  # type: ignore[attr-defined]
    assert workerpool.worker_processes(3) is second
    shutdown_worker_processes()


def test_a_photograph_that_crashes_behind_another_in_its_task_costs_one_restart(
        tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The break is first blamed on the innocent photograph ahead of it in the task; that costs no restart."""
    import uopsl.runtime.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "MAX_POOL_RESTARTS", 1)
    m = read_manifest(tiny_bundle)
    good = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(5)]
    killer = InputItem(source="killer", key="killer", id="killer", data=_KillsItsWorker())  # type: ignore[arg-type]
    items = [item_for_path(good[0]), killer] + [item_for_path(p) for p in good[1:]]
    cfg = PipelineConfig(batch_size=1, workers=2, worker_pool="processes", prefetch_batches=1)
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        pipe = ScreeningPipeline(backend, m, cfg)
        assert pipe._window(True) == (8, 2)  # the killer shares its task with good[0], behind it
        rows = list(pipe.run(items))
    assert [r.source for r in rows] == [i.source for i in items]
    assert [r.reasons for r in rows if r.source == "killer"] == [("decoder_crash",)]
    assert [r.status for r in rows if r.source != "killer"] == ["ok"] * 5


def test_a_program_exits_though_a_pool_manager_died_with_a_worker_alive(tmp_path: Path) -> None:
    """CI once ran out of time after every test passed: multiprocessing's exit join waited on such a worker."""
    import subprocess
    import sys

    script = tmp_path / "orphan.py"
    script.write_text(
        "import concurrent.futures.process as cfp, os, time\n"
        "from concurrent.futures import wait\n"
        "def dies(self, cause):\n"
        "    raise RuntimeError('simulated')\n"
        "if __name__ == '__main__':\n"
        "    cfp._ExecutorManagerThread.terminate_broken = dies\n"
        "    from uopsl.runtime.workerpool import worker_processes\n"
        "    pool = worker_processes(2)\n"
        "    wait([pool.submit(time.sleep, 0.3) for _ in range(2)])\n"
        "    pool.submit(os._exit, 3)\n"
        "    for _ in range(100):\n"
        "        if sum(p.is_alive() for p in pool._processes.values()) == 1:\n"
        "            break\n"
        "        time.sleep(0.05)\n"
        "    print('left alive:', sum(p.is_alive() for p in pool._processes.values()))\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and proc.stdout.strip() == "left alive: 1", proc.stderr[-2000:]


class _CannotTravel:
    """An input whose data cannot be pickled to a worker process."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("this object cannot be pickled")


def test_several_inputs_travel_per_task_and_one_that_cannot_travel_costs_only_its_own_row(
        tmp_path: Path, tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    cfg = PipelineConfig(batch_size=4, workers=2, worker_pool="processes")
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        pipe = ScreeningPipeline(backend, m, cfg)
        assert pipe._window(True) == (12, 3)  # 4 x 3 ahead, 3 per task: two tasks per worker in flight
        assert pipe._window(False) == (12, 1)
        good = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(8)]
        odd = InputItem(source="odd", key="odd", id="odd", data=_CannotTravel())  # type: ignore[arg-type]
        items = [item_for_path(p) for p in good[:4]] + [odd] + [item_for_path(p) for p in good[4:]]
        rows = list(pipe.run(items))
    assert [r.source for r in rows] == [i.source for i in items]
    by = {r.source: r for r in rows}
    assert by["odd"].status == "error" and by["odd"].reasons == ("internal_error",)
    assert "cannot be pickled" in by["odd"].error
    assert [by[str(p)].status for p in good] == ["ok"] * 8


@pytest.mark.parametrize(("batch", "prefetch", "workers", "expected"),
                         [(8, 2, 8, (32, 2)), (16, 2, 8, (48, 3)), (1, 1, 2, (8, 2)), (64, 2, 2, (192, 8))])
def test_inputs_per_task_leave_two_tasks_per_worker(batch: int, prefetch: int, workers: int,
                                                    expected: tuple[int, int], tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    cfg = PipelineConfig(batch_size=batch, prefetch_batches=prefetch, workers=workers, worker_pool="processes")
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        assert ScreeningPipeline(backend, m, cfg)._window(True) == expected


def test_a_quality_config_a_worker_cannot_load_is_refused_not_blamed_on_photographs(
        tmp_path: Path, tiny_bundle: Path) -> None:
    """A gate class defined under the script's main guard pickles in the parent, but a spawned worker does not
    have it and dies on every task: each photograph would be blamed in turn (``decoder_crash`` rows). The
    run refuses it instead; the same class at the script's top level loads in the workers and screens."""
    import subprocess
    import sys

    photos = [fundus_jpeg(tmp_path / f"p{i}.jpg", seed=i) for i in range(3)]
    body = (
        "class StricterGate(QualityConfig):\n"
        "    pass\n"
        f"with Screener({str(tiny_bundle)!r}, 'ort-cpu', workers=2, worker_pool='processes',\n"
        "              quality_config=StricterGate()) as s:\n"
        f"    print(*[r.status for r in s.screen_many({[str(p) for p in photos]!r})])\n")
    head = "from uopsl.runtime.api import Screener\nfrom uopsl.runtime.quality import QualityConfig\n"
    guarded = tmp_path / "guarded_class.py"
    guarded.write_text(head + "if __name__ == '__main__':\n" + "".join("    " + line + "\n"
                                                                       for line in body.splitlines()))
    proc = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and proc.stdout == ""  # no row made: before, each photograph got decoder_crash
    assert "ConfigError: the quality_config (StricterGate) cannot be loaded in a worker process" in proc.stderr, \
        proc.stderr[-2000:]
    top_level = tmp_path / "top_level_class.py"
    top_level.write_text(head + body.replace("with Screener", "if __name__ == '__main__':\n  with Screener")
                         .replace("\n              quality_config", "\n                quality_config")
                         .replace("\n    print", "\n      print"))
    proc = subprocess.run([sys.executable, str(top_level)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "ok", "ok"], proc.stderr[-2000:]


def test_discard_pool_unblocks_a_stuck_feeder_only_where_python_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython gh-94777 (fixed in 3.11.5; not in 3.10, JetPack 6's Python): a worker dies while the call
    queue's feeder writes a large task; the manager thread then waits on that feeder forever, and the
    interpreter's exit on the manager. Where Python lacks the fix, discard_pool closes the parent's read end of
    a broken pool's pipe, but only under a feeder still running after the grace time (closing it under a
    feeder that closes it too could close another file). (On 3.10.13 by hand, 8 MB tasks and a worker
    killed: the program ended in 4-5 s with this, and hung until killed without it.)"""
    import threading
    from types import SimpleNamespace

    from uopsl.runtime import workerpool

    monkeypatch.setattr(workerpool, "FEEDER_GRACE_S", 0.05)

    def fake(broken: bool, feeder_stuck: bool) -> SimpleNamespace:
        release = threading.Event()
        feeder = threading.Thread(target=release.wait, args=(None if feeder_stuck else 0,), daemon=True)
        feeder.start()
        reader = SimpleNamespace(closed=False)
        reader.close = lambda: (setattr(reader, "closed", True), release.set())
        queue = SimpleNamespace(_reader=reader, _thread=feeder, cancelled=False)
        queue.cancel_join_thread = lambda: setattr(queue, "cancelled", True)
        proc = SimpleNamespace(terminated=False)
        proc.terminate = lambda: setattr(proc, "terminated", True)
        pool = SimpleNamespace(_processes={1: proc}, _broken=broken, _call_queue=queue, shut=None, proc=proc)
        pool.shutdown = lambda wait, cancel_futures: setattr(pool, "shut", (wait, cancel_futures))
        return pool

    monkeypatch.setattr(workerpool, "FEEDER_FIXED", False)  # a Python without the fix
    for broken, stuck, expected in ((True, True, True), (True, False, False), (False, True, False)):
        pool = fake(broken, stuck)
        workerpool.discard_pool(pool)  # type: ignore[arg-type]
        assert pool._call_queue._reader.closed is expected, (broken, stuck)
        assert pool.shut == (False, True) and pool._call_queue.cancelled and pool.proc.terminated is broken
        pool._call_queue._reader.close()  # ends a fake feeder still waiting
    monkeypatch.setattr(workerpool, "FEEDER_FIXED", True)  # 3.11.5+: the pool's own manager does it
    pool = fake(True, True)
    workerpool.discard_pool(pool)  # type: ignore[arg-type]
    assert not pool._call_queue._reader.closed
    pool._call_queue._reader.close()
    # shutdown_worker_processes() must not wait on a broken shared pool: it discards it.
    monkeypatch.setattr(workerpool, "FEEDER_FIXED", False)
    stuck = fake(True, True)
    with workerpool._lock:
        workerpool._shared[99] = stuck  # type: ignore[assignment]
    shutdown_worker_processes()
    assert stuck.shut == (False, True) and stuck._call_queue._reader.closed and 99 not in workerpool._shared


def _sigint_state() -> tuple[bool, bool]:
    """In a worker: (SIGINT ignored, SIGINT blocked)."""
    import signal

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.SIGINT in blocked


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="no POSIX signal masks (Windows)")
def test_ctrl_c_while_workers_start_neither_kills_them_nor_breaks_the_pool() -> None:
    """A terminal's Ctrl-C reaches every process of the group; a worker still importing (before its initializer
    ignores SIGINT) died with a traceback and broke the pool. Workers now start with SIGINT blocked."""
    import signal

    from uopsl.runtime import workerpool

    pool = workerpool.new_process_pool(2)
    try:
        futures = [pool.submit(_sigint_state) for _ in range(2)]
        for proc in list(pool._processes.values()):  # type: ignore[attr-defined]
            os.kill(proc.pid, signal.SIGINT)  # at once: the worker is starting up
        assert [f.result(timeout=120) for f in futures] == [(True, False)] * 2  # ignored, and unblocked again
        assert not pool._broken  # type: ignore[attr-defined]
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the parent's mask is restored
    finally:
        workerpool.discard_pool(pool, terminate=True)


def test_a_fresh_pool_broken_during_its_check_is_tried_once_more(
        tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool is shared: another run's crashing photograph can break the fresh pool while this run checks it.
    That alone must not end this run with "worker processes stop as they start"; a second fresh pool decides."""
    from concurrent.futures import BrokenExecutor

    import uopsl.runtime.pipeline as pipeline_mod

    class BreaksAtOnce:
        _broken = True

        def submit(self, *args: object, **kwargs: object) -> object:
            raise BrokenExecutor("broken by another run's photograph")

    real_replace = pipeline_mod.replace_worker_processes
    handed: list[object] = []

    def replace(n: int, failed: object) -> object:
        pool = BreaksAtOnce() if not handed else real_replace(n, failed)
        handed.append(pool)
        return pool

    monkeypatch.setattr(pipeline_mod, "replace_worker_processes", replace)
    monkeypatch.setattr(pipeline_mod, "forget_worker_processes", lambda pool: None)
    m = read_manifest(tiny_bundle)
    with open_backend(tiny_bundle, "ort-cpu", "fp32", 1, manifest=m, measure=False) as backend:
        pipe = ScreeningPipeline(backend, m, PipelineConfig(workers=2, worker_pool="processes"))
        item = item_for_path(fundus_jpeg(tmp_path / "p.jpg", seed=0))
        pool = pipe._fresh_processes(object(), RuntimeError("a worker died"), item)  # type: ignore[arg-type]
    assert len(handed) == 2 and pool is handed[1] and not isinstance(pool, BreaksAtOnce)
    shutdown_worker_processes()
