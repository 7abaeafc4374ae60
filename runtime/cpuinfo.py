"""What kind of 8-bit arithmetic this CPU does, so a CPU INT8 verdict is trusted only where it was earned.

ONNX Runtime and OpenVINO run u8 x s8 convolutions with different
instructions on different x86 CPUs: with VNNI (AVX512-VNNI, AVX-VNNI, AMX)
the products are summed in 32 bits; without it (AVX2, AVX-512 without VNNI)
pairs are first summed in 16 bits (``VPMADDUBSW``), which can saturate.
OpenVINO's documentation says the only way to find out whether a model is hit
is to run it on both kinds of CPU, and ONNX Runtime's advises 7-bit weights
(``reduce_range``) without VNNI. So an INT8 file that passed ``uopsl
validate`` on one kind has not been shown to pass on the other; the verdict
records :func:`int8_cpu_class` and ``auto`` compares it with this machine's
(:func:`uopsl.runtime.bundle.parity_status`). ARM CPUs are told apart by the
dot-product extension (``asimddp``).
"""

from __future__ import annotations

import functools
import platform

# Classes that say only the architecture: this machine's flags could not be read (not Linux), so
# nothing can be compared (see :func:`same_int8_arithmetic`).
_GENERIC = frozenset({"x86", "arm64", "unknown"})
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})
#: The backends whose INT8 arithmetic is this CPU's.
CPU_BACKENDS = ("ort-cpu", "openvino")


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def int8_cpu_class() -> str:
    """``x86-vnni``, ``x86-no-vnni``, ``arm64-dotprod``, ``arm64-no-dotprod``; ``x86``/``arm64``/``unknown`` when unknown."""
    machine = platform.machine().lower()
    flags = _cpu_flags()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if not flags:
            return "x86"
        return "x86-vnni" if flags & _VNNI_FLAGS else "x86-no-vnni"
    if machine in ("aarch64", "arm64"):
        if not flags:
            return "arm64"
        return "arm64-dotprod" if "asimddp" in flags else "arm64-no-dotprod"
    return machine or "unknown"


def same_int8_arithmetic(recorded: str, here: str) -> bool:
    """Whether INT8 results measured on a ``recorded`` CPU class carry over to ``here``.

    Equal classes do; a generic class on either side (flags unreadable) cannot
    be told apart and is taken to match, so a Windows or macOS machine that
    validated its own files keeps using them.
    """
    return recorded == here or recorded in _GENERIC or here in _GENERIC
