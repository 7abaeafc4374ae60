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
import sys
import threading
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

import cv2

from uopsl.runtime.heap import keep_freed_heap

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between checks that a pool can still complete the future being waited on.
POLL_S = 0.5
#: Whether this Python's pool unblocks its own call-queue feeder when broken (CPython gh-94777, 3.11.5+).
FEEDER_FIXED = sys.version_info >= (3, 11, 5)
#: How long :func:`discard_pool` lets a broken pool's feeder thread end by itself before unblocking it.
FEEDER_GRACE_S = 1.0


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
    the parent, which stops the run and the pool (a child of its own would print a traceback per worker).
    SIGINT arrives blocked (:class:`WorkerPool`), so a Ctrl-C while the worker was still importing is
    dropped here, not raised in the middle of an import."""
    cv2.setNumThreads(1)
    keep_freed_heap()  # this process only prepares photographs: keep their freed arrays' pages (runtime/heap.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):  # asks the parent for its threads' stacks (faulthandler); not a stop
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class WorkerPool(ProcessPoolExecutor):
    """A process pool whose workers start with SIGINT blocked.

    A worker spends its first second or so importing (the main script again, numpy, OpenCV) before its
    initializer can ignore Ctrl-C; a Ctrl-C in that time (the terminal sends it to every process of the
    group) would print a traceback per starting worker and break the pool. Workers are started by
    ``submit`` (in the thread that calls it), and a child inherits that thread's signal mask, so
    ``submit`` blocks SIGINT in the calling thread for its own duration (a Ctrl-C meanwhile reaches the
    parent just after).
    """

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not hasattr(signal, "pthread_sigmask"):  # Windows: no POSIX signals to block
            return super().submit(fn, *args, **kwargs)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def worker_alive(*_: object) -> bool:
    """A trivial task: a pool that returns it can start a worker and run work (and load its arguments)."""
    return True


def new_process_pool(n: int) -> ProcessPoolExecutor:
    """A pool of ``n`` worker processes of its own (not shared); :func:`discard_pool` lets it go."""
    return WorkerPool(n, mp_context=_CONTEXT, initializer=_worker_start)


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
    normally does that, but may have died first. A worker dying while the call queue's feeder thread is
    writing a large task into the full pipe (photographs passed in memory) leaves that thread blocked; on a
    Python without CPython's fix for gh-94777 (3.10, JetPack 6's Python; 3.11 before 3.11.5) the manager
    thread then waits for it forever and the interpreter's exit waits for the manager. There, a feeder
    still running :data:`FEEDER_GRACE_S` after a broken pool's workers were stopped has its pipe's read end
    closed, CPython's own fix: it gets EPIPE and ends. (Only then: the manager thread and the feeder close
    that end themselves when nothing is stuck, and one file closed twice from two threads can close
    another file that reused its number.) Private attributes, hence getattr.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    broken = bool(getattr(pool, "_broken", False))
    queue = getattr(pool, "_call_queue", None)
    with contextlib.suppress(Exception):
        if queue is not None:
            queue.cancel_join_thread()
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False, cancel_futures=True)
    if terminate or broken:
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.terminate()
        if queue is not None and not FEEDER_FIXED:
            _unblock_feeder(queue)


def _unblock_feeder(queue: Any) -> None:
    """Close the read end of a dead pool's call queue if its feeder thread is still writing into it."""
    feeder = getattr(queue, "_thread", None)
    if feeder is None:
        return
    feeder.join(FEEDER_GRACE_S)
    if feeder.is_alive():
        log.debug("closing the call queue of a broken worker pool under its blocked feeder thread (gh-94777)")
        with contextlib.suppress(Exception):
            queue._reader.close()


def shutdown_worker_processes() -> None:
    """Stop every shared preprocessing worker process (a long-running program that screens no more may
    call it). Waits for the workers to finish what they hold; a broken pool's are stopped instead (waiting
    on it could hang: see :func:`discard_pool`)."""
    with _lock:
        pools = list(_shared.values())
        _shared.clear()
    for pool in pools:
        if getattr(pool, "_broken", False):
            discard_pool(pool)
        else:
            pool.shutdown(wait=True, cancel_futures=True)
