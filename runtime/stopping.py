"""Whether the command is writing its outputs, for stop requests that would otherwise cut that write short.

Why: a stop that comes from outside (Windows closing the console window, :mod:`uopsl.runtime.clikit`)
interrupts the main thread as Ctrl-C does. An interrupt that lands while results.csv and report.html are
being rewritten abandons that rewrite, and the process then ends without them, although finishing it was
the point of the stop. :func:`saving_outputs` marks the rewrite; such a stop waits for it to end first.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_idle = threading.Condition(_lock)


@contextlib.contextmanager
def saving_outputs() -> Iterator[None]:
    """Inside: the outputs are being written (nestable; any thread)."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _idle.notify_all()


def wait_until_saved(deadline: float) -> bool:
    """Wait until no output is being written, or until ``time.monotonic()`` reaches ``deadline``; whether it is so."""
    with _lock:
        while _depth > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _idle.wait(left)
        return True
