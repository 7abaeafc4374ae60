"""Fundus photographs stored as DICOM (ophthalmic photography, secondary capture), read through pydicom.

Hospital fundus cameras and PACS export DICOM: a JPEG (or JPEG 2000) wrapped in
a header, or raw pixels. :func:`dicom_picture` returns what the rest of the
runtime decodes as any other file:

* the wrapped JPEG / JPEG 2000 bytes, unchanged, so that a DICOM photograph
  goes through exactly the checks, reduced-scale decoding and pixels of the
  same picture saved as a ``.jpg`` (or ``.j2k``);
* otherwise (raw pixels, RLE, or a codec a pydicom plug-in decodes) the
  picture as uint8 RGB: ``BitsStored`` sets the range of 10-16-bit data,
  MONOCHROME1 is inverted, YBR colour converted, palette colour applied.

Refused with a reason: several frames (a series or both eyes in one file; the
runtime screens one photograph per file), no picture at all (a report, an
encapsulated PDF), a picture larger than the pixel limit (checked from the
header before decoding), codecs nothing installed decodes (JPEG-LS, lossless
JPEG without a plug-in). pydicom is an optional dependency
(``pip install 'uopsl[dicom]'``); without it a DICOM file gets a
``reader_missing`` row, which a rerun screens again once it is installed.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from uopsl.runtime.errors import (
    ImageDecodeError,
    ImageFormatError,
    ImageReaderMissingError,
    ImageTooLargeError,
    MissingDependencyError,
)
from uopsl.runtime.optional import require

# Transfer syntaxes whose pixel data is a JPEG (baseline or extended) or a JPEG 2000 codestream that the
# runtime's own decoder reads; the frame's bytes are handed on as they are.
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})


def _said(exc: BaseException) -> str:
    """pydicom's message in one line (a row's reason is one line; its plug-in lists run over several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def is_dicom(data: bytes) -> bool:
    """A DICOM file (Part 10): a 128-byte preamble, then ``DICM``."""
    return data[128:132] == b"DICM"


def _pydicom(source: str | None) -> Any:
    try:
        return require("pydicom", "reading DICOM files")
    except MissingDependencyError as exc:
        raise ImageReaderMissingError(
            "a DICOM file: reading DICOM needs the optional package pydicom, which is not installed here; "
            "install it (pip install 'uopsl[dicom]') and run again, or export the photograph as JPEG",
            source=source) from exc


def dicom_picture(data: bytes, max_pixels: int, source: str | None = None) -> bytes | np.ndarray:
    """The photograph a DICOM file holds: the wrapped JPEG / JPEG 2000 bytes, or uint8 RGB (H, W, 3).

    Raises :class:`ImageError` subclasses saying why a file is not one screenable photograph.
    """
    pydicom = _pydicom(source)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        meta = ds.file_meta
        syntax = str(meta.get("TransferSyntaxUID", ""))
        has_pixels = "PixelData" in ds
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
        raise ImageDecodeError(f"a damaged DICOM file ({type(exc).__name__}: {_said(exc)})", source=source) from None
    if not has_pixels and "SOPClassUID" not in ds:
        # Every DICOM object names its SOP class; pydicom returns an empty dataset for a file cut short
        # inside its wrapped JPEG data.
        raise ImageDecodeError("a damaged DICOM file (cut short? it holds neither a SOP class nor a picture)",
                               source=source)
    if not has_pixels:
        uid = ds.get("SOPClassUID")
        name = str(getattr(uid, "name", "") or uid or "no SOP class")
        raise ImageFormatError(f"a DICOM file without a picture ({name}: a report or a document?); screen the "
                               "photograph's own file", source=source)
    if frames > 1:
        raise ImageFormatError(f"a DICOM file holding {frames} frames (the runtime screens one photograph per "
                               "file, and would see only the first); export each frame as its own file and screen "
                               "those", source=source)
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            f"{cols}x{rows} pixels exceeds the limit of {max_pixels}; export a smaller copy from the camera "
            "software (Python API: PreprocessConfig.max_pixels raises the limit)", source=source)
    if syntax in _JPEG_SYNTAXES or syntax in _J2K_SYNTAXES:
        try:
            return bytes(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
        except Exception as exc:  # noqa: BLE001
            raise ImageDecodeError(f"a damaged DICOM file: its JPEG data cannot be unwrapped ({_said(exc)})",
                                   source=source) from None
    try:
        pixels = ds.pixel_array  # raw, RLE, or any codec an installed plug-in decodes; YBR comes back as RGB
    except Exception as exc:  # noqa: BLE001 - no plug-in for the codec, or damaged pixel data
        codec = getattr(meta.get("TransferSyntaxUID"), "name", syntax) or "unknown"
        if getattr(meta.get("TransferSyntaxUID"), "is_compressed", False):
            raise ImageFormatError(f"a DICOM file compressed as {codec}, which cannot be decoded here ({_said(exc)}); "
                                   "export the photograph as JPEG", source=source) from None
        raise ImageDecodeError(f"a damaged DICOM file: its pixel data cannot be read ({_said(exc)})", source=source) from None
    return _as_rgb8(ds, np.asarray(pixels), pydicom, source)


def _as_rgb8(ds: Any, pixels: np.ndarray, pydicom: Any, source: str | None) -> np.ndarray:
    """uint8 RGB from pixel_array's output, by the header's photometric interpretation and stored bits."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = np.asarray(pydicom.pixels.apply_color_lut(pixels, ds))
        bits = 16 if pixels.dtype.itemsize > 1 else 8
    else:
        bits = int(ds.get("BitsStored", 8 * pixels.dtype.itemsize) or 8 * pixels.dtype.itemsize)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
        raise ImageFormatError(f"a DICOM picture of shape {pixels.shape} (expected rows x columns, with 1 or 3 "
                               "samples)", source=source)
    top = (1 << min(max(bits, 1), 16)) - 1
    values = np.clip(pixels.astype(np.int64), 0, top)  # a signed picture's negative values: below black
    if photometric == "MONOCHROME1":  # 0 is white
        values = top - values
    if top == 255:
        rgb8 = values.astype(np.uint8)
    else:
        rgb8 = ((values * 255 + top // 2) // top).astype(np.uint8)
    if rgb8.ndim == 3 and rgb8.shape[2] == 1:
        rgb8 = rgb8[..., 0]
    if rgb8.ndim == 2:
        rgb8 = np.repeat(rgb8[..., None], 3, axis=2)  # grey: the quality gate says it is no colour photograph
    return np.ascontiguousarray(rgb8)
