"""Progress bars for the loops a person waits for, and the one switch that hides them all.

Every bar in uopsl comes from :func:`bar`, so ``-q`` (``uopsl ... -q``,
``uopsl-screen ... -q``: "only warnings and errors") hides every one of them
through :func:`set_enabled`, and an embedding application can do the same.
Bars draw on stderr with tqdm when it is installed (the ``runtime`` extra
installs it); without tqdm, or when hidden, :func:`bar` returns an object with
the same small interface that draws nothing, so callers never test for None.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any, Generic, TypeVar

from uopsl.runtime.optional import available

T = TypeVar("T")

_enabled = True


def set_enabled(flag: bool) -> None:
    """Show (True, the default) or hide (False) every progress bar created from now on."""
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    """Whether new progress bars are drawn (see :func:`set_enabled`)."""
    return _enabled


class NoBar(Generic[T]):
    """What :func:`bar` returns when nothing is drawn: iterates ``iterable`` and ignores updates.

    It has the part of tqdm's interface this package uses (update, set_postfix, close, len, iteration).
    """

    def __init__(self, iterable: Iterable[T] | None = None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable if self.iterable is not None else ())

    def __len__(self) -> int:
        return len(self.iterable) if isinstance(self.iterable, Sized) else 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
        initial: int = 0, leave: bool = False, mininterval: float = 0.1, show: bool = True,
        terminal_only: bool = False) -> Any:
    """A tqdm bar over ``iterable`` (or one updated by hand), or a :class:`NoBar`.

    Nothing is drawn when ``show`` is False (the caller's own reason: a worker
    rank, a short loop), when bars are switched off (:func:`set_enabled`,
    ``UOPSL_PROGRESS=never``), or when tqdm is not installed. ``terminal_only``:
    draw only when stderr is a terminal or a Jupyter kernel runs us (for loops
    that also run inside long unattended jobs, whose logs a bar would fill with
    carriage returns), unless ``UOPSL_PROGRESS=always`` (an IDE console, ``| tee``).
    """
    mode = os.environ.get("UOPSL_PROGRESS", "auto").strip().lower()
    if not (show and _enabled and available("tqdm")) or mode == "never":
        return NoBar(iterable)
    if terminal_only and not terminal_wants_bars():
        return NoBar(iterable)
    from tqdm.auto import tqdm

    # ``disable`` is never passed: tqdm (>= 4.66) reads TQDM_DISABLE from the environment
    # only for the arguments a caller leaves out.
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                mininterval=mininterval, dynamic_ncols=True)


def terminal_wants_bars() -> bool:
    """Whether a terminal-only bar is drawn here: stderr is a terminal, Jupyter runs us, or ``UOPSL_PROGRESS=always``.

    For commands that decide on their own bar before drawing it (``uopsl-screen run`` without
    ``--progress``), so that the environment variable forces theirs too.
    """
    mode = os.environ.get("UOPSL_PROGRESS", "auto").strip().lower()
    if mode == "never":
        return False
    return mode == "always" or _stderr_is_terminal() or "ipykernel" in sys.modules


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def track(items: Iterable[T], *, total: float | None = None, desc: str = "", show: bool = True,
          terminal_only: bool = True, mininterval: float = 0.1) -> Iterable[T]:
    """``items``, drawn as a progress bar while the loop runs (see :func:`bar`).

    Terminal-only by default: the library's long loops (training, calibration, quantization, validation)
    also run in jobs whose stderr is a log file, which a bar would fill with carriage-return lines.
    """
    return bar(items, total=total, desc=desc, show=show, terminal_only=terminal_only,  # type: ignore[no-any-return]
               mininterval=mininterval)
