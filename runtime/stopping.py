"""Whether the command is writing its outputs, for stop requests that would otherwise cut that write short.

Why: a stop that comes from outside (Windows closing the console window, :mod:`uopsl.runtime.clikit`)
interrupts the main thread as Ctrl-C does. An interrupt that lands while results.csv and report.html are
being rewritten abandons that rewrite, and the process then ends without them, although finishing it was
the point of the stop. :func:`saving_outputs` marks the rewrite; such a stop waits for it to end first.
(An interrupt can still land as a rewrite begins; ``run`` and ``watch`` then write once more.)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

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
