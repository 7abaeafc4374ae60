"""A three-class sigmoid manifest for tests of the parity figures and gates, which need classes but no model.

normal (threshold 0.5), dr (0.4, referable), dme (0.5, referable): with the default rule, an image is
referred when dr or dme is called.
"""

from __future__ import annotations

from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.preprocess import PreprocessConfig

NAMES = ("normal", "dr", "dme")


def manifest() -> Manifest:
    classes = (ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.4, referable=True),
               ClassSpec("dme", threshold=0.5, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(size=64),
                    files=(FileEntry("model.onnx", "onnx", "fp32"),))
