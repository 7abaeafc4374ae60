"""Lazy imports of optional heavy dependencies, with errors that say what to install.

Importing any uopsl module never needs a GPU, TensorRT or OpenVINO; the modules
that use them call :func:`require` at the point of use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, ModuleType

from uopsl.runtime.errors import MissingDependencyError

# The third-party packages of each extra of uopsl's pyproject.toml that a message can name on its own
# (tests/test_packaging.py keeps them equal). Messages name these, not the extra of uopsl itself: uopsl is
# not published on PyPI, so naming the bare extra there would fetch whatever package holds the name.
EXTRA_PACKAGES: dict[str, tuple[str, ...]] = {
    "dicom": ("pydicom>=3,<4",),
    "sign": ("cryptography>=41",),
    "openvino": ("openvino>=2024.0",),
    "trt": ("tensorrt-cu12>=10,<11", "cuda-python>=12,<13"),
    "export": ("onnx>=1.15", "onnxruntime>=1.17"),
}


def extra_hint(extra: str) -> str:
    """How to install uopsl's ``extra``: its packages by name where few, else the extra from uopsl's own source.

    ``pip install 'pydicom>=3,<4'`` for ``dicom``; for ``train`` (many packages, some pinned to local wheels)
    the extra installed from the folder or wheel uopsl came from.
    """
    packages = EXTRA_PACKAGES.get(extra)
    if packages:
        return "pip install " + " ".join(f"'{p}'" for p in packages)
    return (f"install uopsl's {extra} extra from the folder or wheel uopsl came from: pip install '.[{extra}]' in "
            f"its source folder, or pip install './uopsl-<version>-py3-none-any.whl[{extra}]' (uopsl is not on PyPI)")


# The CUDA bindings the TensorRT backend can use, in the order it tries them (cuda_binding.load_cuda): cuda-python
# 12.6+ / 13, cuda-python before 12.6 (13 removed cuda.cudart), pycuda. Availability probes the same modules.
CUDA_MODULES = ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver")

#: Which CUDA binding to install (its major must not exceed the driver's CUDA major; on a Jetson, JetPack's minor).
CUDA_HINT = ("pip install 'cuda-python>=12,<13' on a CUDA 12 driver (on a Jetson JetPack's own CUDA minor: "
             "'cuda-python==12.6.*' on JetPack 6.1/6.2, '==12.2.*' on JetPack 6.0), plain cuda-python on CUDA 13, "
             "'cuda-python>=11.8,<12' on CUDA 11; or pip install pycuda")
# module name -> how to get it (pip, or the JetPack package on Jetson)
_HINTS: dict[str, str] = {
    "tensorrt": f"{extra_hint('trt')} (desktop) or install JetPack's python3-libnvinfer (Jetson)",
    "cuda": CUDA_HINT,
    "cuda.bindings": CUDA_HINT,
    "pycuda": "pip install pycuda",
    "openvino": extra_hint("openvino"),
    "onnxruntime": "pip install 'onnxruntime>=1.17'",
    "onnx": extra_hint("export"),
    "torch": extra_hint("train"),
    "torchvision": extra_hint("train"),
    "timm": extra_hint("train"),
    "safetensors": extra_hint("train"),
    "sentence_transformers": extra_hint("train"),
    "tqdm": "pip install tqdm",
    "cryptography": extra_hint("sign"),
}


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends, then deliver it (main thread only; elsewhere a no-op).

    Why: ONNX Runtime's extension imports numpy from C++ and turns any failure, a KeyboardInterrupt
    included, into ``ImportError: import numpy failed``, and leaves itself half-registered (the next
    import fails with "already registered"). A Ctrl-C in the first half second of ``uopsl-screen run``
    then read as "onnxruntime is not installed": the run stopped with a wrong install hint, or ``auto``
    quietly took another backend and screened everything. Python runs signal handlers in the main
    thread, whichever thread the signal reached, so replacing the handler there covers them all.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[FrameType | None] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler set outside Python, which could not be put back
        yield
        return
    try:
        signal.signal(signal.SIGINT, lambda _sig, frame: caught.append(frame))
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])  # the program's own handler (a graceful stop), or KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


def import_optional(name: str) -> ModuleType:
    """``importlib.import_module(name)``, with a Ctrl-C held back until the import ends (see
    :func:`_ctrl_c_after`), and OpenVINO imported without its usage telemetry.

    Why: ``import openvino`` (2024 and later) reports a ``general_import`` event to Google Analytics
    from a forked process, and writes a client ID under ``~/intel``, unless the user ran OpenVINO's
    ``opt_in_out --opt_out``. A screening toolkit that runs offline in clinics should contact nobody, and
    forking a process that holds inference threads is unsafe. OpenVINO's converter falls back to its own
    no-op telemetry stub when ``openvino_telemetry`` cannot be imported, so it is hidden for that one
    import; a program that imported ``openvino_telemetry`` itself keeps it (its choice).
    """
    if name in sys.modules:  # the common case: no handler swapping for an import already done
        return importlib.import_module(name)
    with _ctrl_c_after():
        return _import_quietly(name)


def _import_quietly(name: str) -> ModuleType:
    if name.split(".")[0] != "openvino" or "openvino" in sys.modules or "openvino_telemetry" in sys.modules:
        return importlib.import_module(name)
    # A None entry makes `import openvino_telemetry` raise ImportError.
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(name)
    finally:
        if "openvino_telemetry" in sys.modules and sys.modules["openvino_telemetry"] is None:
            del sys.modules["openvino_telemetry"]


def require(name: str, purpose: str) -> ModuleType:
    """Import ``name`` or raise :class:`MissingDependencyError` naming what to install."""
    try:
        return import_optional(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = _HINTS.get(name) or _HINTS.get(top) or f"pip install {top}"
        package = name if name in _HINTS else top  # 'cryptography', not the submodule uopsl imports from it
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{package}', which is not importable here "
            f"({exc.__class__.__name__}: {exc}). Install it: {hint}."
        ) from exc


def optional_hint(name: str) -> str | None:
    """What to install for ``name`` when it is one of the optional packages a uopsl extra provides, else None.

    Why: a command whose extra is not installed (``uopsl finetune`` where only the runtime is) fails on an
    import deep in the code; the command line says what to install instead of calling it a bug, but only for
    these packages: a missing module of uopsl itself is a broken install, and a hint would hide it.
    """
    return _HINTS.get(name) or _HINTS.get(name.split(".")[0])


def install_hint(name: str) -> str:
    """What to install for the Python package ``name`` (the versions pyproject.toml takes, where it pins them)."""
    return _HINTS.get(name) or _HINTS.get(name.split(".")[0]) or f"pip install {name.split('.')[0]}"


def available(name: str) -> bool:
    """True when ``name`` imports; never raises."""
    try:
        import_optional(name)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def installed(name: str) -> bool:
    """True when ``name`` can be found on the path, without importing it (a millisecond); never raises.

    Why: importing OpenVINO to learn that it is there costs ~0.1 s of every ``uopsl-screen run``, most of
    which never use it. A package found here may still fail to import (a broken install): whoever then
    imports it (:func:`require`) says so, and ``auto`` chooses again without it.
    """
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:  # noqa: BLE001 - a parent package that fails to import, a bad __spec__: not usable
        return False


def dist_version(*dists: str) -> str | None:
    """The version of the first of ``dists`` installed by pip, without importing it (None when none is).

    Packages installed outside pip (JetPack's ``python3-libnvinfer``) have no
    metadata and read as None.
    """
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except Exception:  # noqa: BLE001 - not installed as a dist, or broken metadata: try the next name
            continue
    return None
