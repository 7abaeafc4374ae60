"""Whether the command is writing its outputs, for stop requests that would otherwise cut that write short.

Why: a stop that comes from outside (Windows closing the console window, :mod:`uopsl.runtime.clikit`)
interrupts the main thread as Ctrl-C does. An interrupt that lands while results.csv and report.html are
being rewritten abandons that rewrite, and the process then ends without them, although finishing it was
the point of the stop. :func:`saving_outputs` marks the rewrite; such a stop waits for it to end first.
(An interrupt can still land as a rewrite begins; ``run`` and ``watch`` then write once more.)

:func:`interrupts_deferred` covers the short appends of screened rows to results.jsonl: a Ctrl-C or SIGTERM that
landed inside one dropped that batch's rows while the stop message counted them (a review saw "interrupted after
184" over 180 saved rows). Inside it such a stop waits the few milliseconds the append takes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

# Re-entrant: an application's own signal handler may call Screener.finalize while the main thread is
# inside this module.
_lock = threading.RLock()
_idle = threading.Condition(_lock)
_active: set[object] = set()  # one token per rewrite under way (a set, so an interrupt anywhere leaks none)


@contextlib.contextmanager
def saving_outputs() -> Iterator[None]:
    """Inside: the outputs are being written (nestable; any thread)."""
    token = object()
    try:
        with _lock:
            _active.add(token)
        yield
    finally:
        with _lock:
            _active.discard(token)
            if not _active:
                _idle.notify_all()


def wait_until_saved(deadline: float) -> bool:
    """Wait until no output is being written, or until ``time.monotonic()`` reaches ``deadline``; whether it is so."""
    with _lock:
        while _active:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _idle.wait(left)
        return True


#: The stop signals :func:`interrupts_deferred` holds back (SIGBREAK: Windows consoles' Ctrl-Break).
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, n))


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Inside: Ctrl-C, SIGTERM (and Ctrl-Break) are noted, and handled as they would have been once the block ends.

    For writes of a few milliseconds that must not be cut in two. Only the main thread receives signals (and
    only it may set handlers): elsewhere this does nothing. A handler installed outside Python (``signal``
    cannot restore it) is left in place, undeferred. Rules that keep a stop from being lost:

    * a second stop while one is held is handled at once (a write stalled on a dead share or a pulled USB
      stick can still be broken off by pressing Ctrl-C again);
    * a block that fails (a full disk) lets its error through and drops the held stop: the error ends the
      command anyway, and a KeyboardInterrupt raised over it hid the failure behind "interrupted ... saved";
    * the placeholder handler passes a stop on once the block has ended, so one left installed by an
      interrupt landing while the handlers are put back still stops the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[tuple[int, FrameType | None]] = []
    before: dict[int, Any] = {}
    holding = [True]

    def deliver(signum: int, frame: FrameType | None) -> None:
        old = before.get(signum, signal.SIG_DFL)
        if callable(old):
            old(signum, frame)  # Python's SIGINT handler, or clikit's SIGTERM one: KeyboardInterrupt
        elif old == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)  # what it would have done: ends the process

    def note(signum: int, frame: FrameType | None) -> None:
        if not holding[0] or noted:  # after the block, or a second stop: now
            deliver(signum, frame)
            return
        noted.append((signum, frame))

    failed = False
    try:
        for sig in _STOP_SIGNALS:
            old = signal.getsignal(sig)
            if old is None:  # set by C code: cannot be put back
                continue
            before[sig] = old
            signal.signal(sig, note)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        holding[0] = False
        try:
            for sig, old in before.items():
                signal.signal(sig, old)
        finally:
            if noted and not failed:
                deliver(*noted[0])
