"""Keeping freed heap memory for the next photograph (glibc's ``M_TOP_PAD``).

Why: preparing one photograph allocates and frees a few arrays of a few hundred kB to 1 MB (the
decoded image, the float copy of an area resize, the quality gate's maps). By default glibc hands
the top of the heap back to the kernel after them, and the next photograph faults the same pages
in again: ~290-560 minor page faults per TVHL photograph at 224 px on the project's x86 box
(photographs spread over the set). Asking glibc to keep a pad at the top of the heap removes them
(``tests/test_heap.py`` checks the faults). A one-off timing in session 32 suggested ~1 ms of CPU saved
a photograph; ``benchmarks/bench_runtime.py`` with and without it (sessions 33-34, eight runs) found no
difference in end-to-end throughput beyond the runs' own spread (``benchmarks/README.md``), so this is
kept because it costs nothing measurable (resident memory stayed flat), not as a speed-up.

It is a setting of the whole process, so the library never makes it behind a caller's back:
``uopsl-screen`` makes it for its own process and the preprocessing worker processes make it for
themselves; an application embedding :class:`uopsl.runtime.api.Screener` may call
:func:`keep_freed_heap` once at start-up, before it starts threads (glibc documents ``mallopt`` as
unsafe while other threads allocate), or start Python with ``MALLOC_TOP_PAD_`` set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from uopsl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: ``M_TOP_PAD`` of glibc's ``malloc.h``.
M_TOP_PAD = -2
#: Bytes kept at the top of the heap: well above one photograph's transient arrays (a few MB at
#: camera size), small beside the runtime's ~330 MB. Pages are kept only once touched, so resident
#: memory grows by what the photographs really used, not by this figure.
DEFAULT_PAD = 64 << 20
#: The environment variable through which glibc reads the same setting at start-up.
ENV = "MALLOC_TOP_PAD_"


def keep_freed_heap(pad_bytes: int = DEFAULT_PAD) -> bool:
    """Ask glibc to keep ``pad_bytes`` of freed memory at the top of the heap; True when it took the setting.

    Does nothing (False) where the C library is not glibc (macOS, Windows, musl's ``mallopt`` is a stub
    that refuses), and when ``MALLOC_TOP_PAD_`` is set: whoever set it chose the value.
    """
    if isinstance(pad_bytes, bool) or not isinstance(pad_bytes, int) or not 0 <= pad_bytes < 2**31:
        raise ConfigError(f"pad_bytes must be an int in [0, 2**31), got {pad_bytes!r}")
    if not sys.platform.startswith("linux") or os.environ.get(ENV) is not None:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    taken = bool(mallopt(M_TOP_PAD, pad_bytes))
    log.debug("heap: keep %d bytes of freed memory at the top (M_TOP_PAD): %s", pad_bytes,
              "set" if taken else "refused by this C library")
    return taken
