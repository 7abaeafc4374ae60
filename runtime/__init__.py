"""uopsl.runtime: the device-side layer (numpy, OpenCV, click, ONNX Runtime; never torch or onnx).

Everything a screening device needs lives here: bundle loading and verification,
preprocessing, the quality gate, inference backends, the screening pipeline,
reports and the ``uopsl-screen`` CLI. Heavy optional back-ends (TensorRT, CUDA
bindings, OpenVINO) are imported lazily through :mod:`uopsl.runtime.optional`.
"""

from uopsl.runtime.version import __version__

__all__ = ["__version__"]
