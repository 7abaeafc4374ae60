"""Spawned worker processes that prepare photographs: the shared pools, their replacement and their end.

Why a module of its own: :class:`concurrent.futures.ProcessPoolExecutor` has failure modes a screening
run must survive and a program's exit must not wait on. On CPython 3.11 the pool's manager thread marks
a pool broken without the lock that ``submit`` takes, so a photograph submitted as a worker dies can be
accepted into a pool that is already being torn down: its future never completes, and the manager thread
can die (``RuntimeError: dictionary changed size during iteration``) before it stops the workers. A
worker left that way waits for work forever, and ``multiprocessing`` joins every live child at exit, so
the program never ends (CI ran out of time that way). Hence: every worker is daemonic (a process of our
own class, :class:`WorkerProcess`), which ``multiprocessing``'s exit handler terminates instead of joining,
and :func:`wait_prepared` gives up on a future whose pool can no longer complete it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.context
import signal
import threading
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

import cv2

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between checks that a pool can still complete the future being waited on.
POLL_S = 0.5


class WorkerProcess(multiprocessing.context.SpawnProcess):
    """A preprocessing worker: a spawned, daemonic process.

    Daemonic because ``multiprocessing``'s exit handler terminates daemonic children and joins the others:
    a worker whose pool's manager thread died is never told to stop, and joining it would keep the program
    from ending. By then Python's own exit has stopped every healthy pool (``concurrent.futures`` joins
    their manager threads first), so only such leftovers are terminated. A worker starts no process of
    its own, which a daemonic process may not.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _WorkerContext(multiprocessing.context.SpawnContext):
    # Spawned, not forked: the parent holds ONNX Runtime, CUDA and TensorRT threads and state that a
    # forked child would inherit half-copied.
    Process = WorkerProcess


_CONTEXT = _WorkerContext()
_shared: dict[int, ProcessPoolExecutor] = {}
_lock = threading.Lock()


def _worker_start() -> None:
    """Initializer of a worker process: OpenCV single-threaded (as the threads run it), and Ctrl-C left to
    the parent, which stops the run and the pool (a child of its own would print a traceback per worker)."""
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):  # asks the parent for its threads' stacks (faulthandler); not a stop
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def worker_alive() -> bool:
    """A trivial task: a pool that returns it can start a worker and run work."""
    return True


def new_process_pool(n: int) -> ProcessPoolExecutor:
    """A pool of ``n`` worker processes of its own (not shared); :func:`discard_pool` lets it go."""
    return ProcessPoolExecutor(n, mp_context=_CONTEXT, initializer=_worker_start)


def worker_processes(n: int) -> ProcessPoolExecutor:
    """The shared pool of ``n`` preprocessing workers, started at first use and kept for later runs.

    Kept because starting one costs ~0.5-1 s (each process imports numpy and OpenCV), which a device
    screening a few photographs at a time would pay again and again. It ends with the program, or with
    :func:`shutdown_worker_processes`.
    """
    broken = None
    with _lock:
        pool = _shared.get(n)
        if pool is None or getattr(pool, "_broken", False):
            broken = pool
            pool = new_process_pool(n)
            _shared[n] = pool
    if broken is not None:
        discard_pool(broken)
    return pool


def replace_worker_processes(n: int, failed: object) -> ProcessPoolExecutor:
    """The shared pool of ``n`` workers, a new one if it is still ``failed`` (a pool that broke or was shut
    down under a run). A pool another run has already put in its place is kept: replacing it would cancel
    that run's work."""
    with _lock:
        old = _shared.get(n)
        if old is failed or old is None:
            _shared.pop(n, None)
        else:
            old = None
    if old is not None:
        discard_pool(old)
    return worker_processes(n)


def forget_worker_processes(pool: ProcessPoolExecutor) -> None:
    """Stop sharing ``pool`` (one that cannot run work) and stop its workers."""
    with _lock:
        for n, shared in list(_shared.items()):
            if shared is pool:
                del _shared[n]
    discard_pool(pool, terminate=True)


def pool_is_dead(pool: object) -> bool:
    """True when ``pool`` will complete no more futures: broken, and its manager thread gone."""
    if not getattr(pool, "_broken", False):
        return False
    manager = getattr(pool, "_executor_manager_thread", None)
    return manager is None or not manager.is_alive()


def wait_prepared(future: Future[T], pool: object) -> T:
    """``future.result()``, but a future that ``pool`` can no longer complete raises
    :class:`BrokenExecutor` instead of waiting forever (the CPython 3.11 race in the module docstring)."""
    # future.done(), not wait(): a future cancelled by a shutdown is done but never reaches the state wait()
    # looks for, so waiting on it alone would never end.
    while not future.done():
        wait([future], timeout=POLL_S)
        if not future.done() and pool_is_dead(pool):
            raise BrokenExecutor("the worker pool broke while this photograph waited for a worker")
    return future.result()  # the task's result or its own exception (a TimeoutError or a cancellation included)


def discard_pool(pool: ProcessPoolExecutor, terminate: bool = False) -> None:
    """Let go of a pool that broke, hangs or is done, without waiting for it.

    A broken pool's workers are terminated (``terminate`` forces it for any pool): its manager thread
    normally does that, but may have died first. Before Python 3.12 a worker dying while the call queue's
    pipe is full can leave that queue's feeder thread blocked and the interpreter's exit waiting on it
    (CPython gh-94777); not joining that thread avoids it. Private attributes, hence getattr.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    with contextlib.suppress(Exception):
        queue = getattr(pool, "_call_queue", None)
        if queue is not None:
            queue.cancel_join_thread()
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False, cancel_futures=True)
    if terminate or getattr(pool, "_broken", False):
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.terminate()


def shutdown_worker_processes() -> None:
    """Stop every shared preprocessing worker process (a long-running program that screens no more may
    call it). Waits for the workers to finish what they hold."""
    with _lock:
        pools = list(_shared.values())
        _shared.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
