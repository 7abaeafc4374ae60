"""Which file names are photographs the runtime decodes: their suffixes, and how a name's suffix is read.

Why a module of its own: the folder walk (:mod:`uopsl.runtime.inputs`), the bundle check that tells a folder of
photographs given in the bundle's place (:mod:`uopsl.runtime.bundle`), training's folder datasets and calibration
sets all ask the same question. inputs imports bundle (through results), so the answer lives here, below both.
"""

from __future__ import annotations

from pathlib import Path

# .jfif/.jpe: what Windows and some cameras call a JPEG file. .dcm/.dicom: DICOM (read with pydicom, an optional
# dependency; a folder walk without it counts them, a file named directly gets a row saying what to install).
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".jp2", ".webp",
                            ".ppm", ".pgm"}) | DICOM_SUFFIXES


def image_suffix(name: str) -> str:
    """The lower-case suffix of ``name``, trailing spaces ignored (``"f.jpg "`` is a JPEG that a tool misnamed)."""
    return Path(name.rstrip()).suffix.lower()
