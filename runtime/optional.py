"""Lazy imports of optional heavy dependencies, with errors that say what to install.

Importing any uopsl module never needs a GPU, TensorRT or OpenVINO; the modules
that use them call :func:`require` at the point of use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from uopsl.runtime.errors import MissingDependencyError

# module name -> how to get it (pip extra, or the JetPack package on Jetson)
_HINTS: dict[str, str] = {
    "tensorrt": "pip install 'uopsl[trt]' (desktop) or install JetPack's python3-libnvinfer (Jetson)",
    "cuda": "pip install 'cuda-python>=12,<13' on a CUDA 12 driver (JetPack 6), plain cuda-python on CUDA 13; pycuda works as well",
    "cuda.bindings": "pip install 'cuda-python>=12,<13' on a CUDA 12 driver (JetPack 6), plain cuda-python on CUDA 13; pycuda works as well",
    "pycuda": "pip install pycuda",
    "openvino": "pip install 'uopsl[openvino]'",
    "onnxruntime": "pip install 'uopsl[runtime]'",
    "onnx": "pip install 'uopsl[export]'",
    "torch": "pip install 'uopsl[train]'",
    "torchvision": "pip install 'uopsl[train]'",
    "timm": "pip install 'uopsl[train]'",
    "safetensors": "pip install 'uopsl[train]'",
    "sentence_transformers": "pip install 'uopsl[train]'",
    "tqdm": "pip install tqdm",
    "cryptography": "pip install 'uopsl[sign]'",
}


def require(name: str, purpose: str) -> ModuleType:
    """Import ``name`` or raise :class:`MissingDependencyError` naming what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = _HINTS.get(name) or _HINTS.get(top) or f"pip install {top}"
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{name}', which is not importable here "
            f"({exc.__class__.__name__}: {exc}). Install it: {hint}."
        ) from exc


def available(name: str) -> bool:
    """True when ``name`` imports; never raises."""
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


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
