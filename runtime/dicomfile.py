"""Fundus photographs stored as DICOM (ophthalmic photography, secondary capture), read through pydicom.

Hospital fundus cameras and PACS export DICOM: a JPEG (or JPEG 2000) wrapped in
a header, or raw pixels. :func:`dicom_picture` returns what the rest of the
runtime decodes as any other file:

* the wrapped 8-bit JPEG / JPEG 2000 bytes, so that a DICOM photograph goes
  through the checks, reduced-scale decoding and pixels of the same picture
  saved as a ``.jpg`` (or ``.j2k``). One change: a JPEG the header calls RGB
  (no colour transform) gets an Adobe marker saying so, which libjpeg would
  otherwise take for YCbCr;
* otherwise (raw pixels, RLE, or a codec a pydicom plug-in decodes: 12-bit
  JPEG, JPEG-LS, lossless JPEG) the picture as uint8 RGB: ``BitsStored`` sets
  the range of 9-16-bit data, MONOCHROME1 is inverted, YBR colour converted,
  palette colour applied.

Refused with a reason: several frames (a series or both eyes in one file; the
runtime screens one photograph per file), no picture at all (a report, an
encapsulated PDF), a picture larger than the pixel limit (from the header,
before anything is decoded; a Deflated-syntax file is first refused when what
it inflates to, counted and discarded, exceeds what such a picture needs),
signed or wider-than-16-bit samples
(no photograph stores those), files cut short. pydicom 3 is an optional
dependency (the ``dicom`` extra: :func:`uopsl.runtime.optional.extra_hint`); without it, or without the plug-in
a codec needs, the row's reason is ``reader_missing``, which a rerun screens
again once it is installed.
"""

from __future__ import annotations

import io
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

from uopsl.runtime.errors import (
    ImageDecodeError,
    ImageFormatError,
    ImageReaderMissingError,
    ImageTooLargeError,
    MissingDependencyError,
    too_many_pixels,
)
from uopsl.runtime.exif import jpeg_segments
from uopsl.runtime.imagefile import jpeg_frame
from uopsl.runtime.optional import extra_hint, require

# Transfer syntaxes whose pixel data is a JPEG (baseline or extended) or a JPEG 2000 codestream.
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_DEFLATED = "1.2.840.10008.1.2.1.99"
# Syntaxes whose frames start with a JPEG SOI marker (lossless JPEG and JPEG-LS too) or a JPEG 2000 / HTJ2K
# codestream's SOC + SIZ markers: a fragment starting so starts a frame (frames without NumberOfFrames).
_SOI_SYNTAXES = _JPEG_SYNTAXES | {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                                  "1.2.840.10008.1.2.4.81"}
_SOC_SYNTAXES = _J2K_SYNTAXES | {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_RLE = "1.2.840.10008.1.2.5"
# An APP14 "Adobe" segment with transform 0: the three components are R, G and B, not YCbCr.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
# Bytes a raw picture at the pixel limit may take (16-bit RGB), plus the header's own elements.
_BYTES_PER_PIXEL = 6
_HEADER_ALLOWANCE = 16 << 20
# Plug-ins pydicom names when it cannot decode a compressed transfer syntax.
_PLUGINS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or pyjpegls for JPEG-LS)"


def _said(exc: BaseException) -> str:
    """pydicom's message in one line (a row's reason is one line; its plug-in lists run over several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


#: Bytes :func:`is_part10` needs: the 128-byte preamble, ``DICM``, and the first tag's group.
PART10_HEAD = 134


def is_part10(head: bytes) -> bool:
    """A DICOM Part 10 file's start: a 128-byte preamble, ``DICM``, then the file meta group (0x0002)."""
    return head[128:132] == b"DICM" and head[132:134] == b"\x02\x00"


def is_dicom(data: bytes) -> bool:
    """A DICOM file: Part 10 (a 128-byte preamble, then ``DICM``), or a bare dataset as some PACS write it.

    A bare dataset starts with its first element: group 0x0002 (file meta) or 0x0008 (identification),
    little-endian, followed by an explicit VR (two capital letters) or an implicit 4-byte length.
    """
    if is_part10(data):
        return True
    if len(data) < 12 or data[:2] not in (b"\x02\x00", b"\x08\x00") or int.from_bytes(data[2:4], "little") > 0x1000:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(data[4:8], "little") < 1 << 16  # implicit VR: a short first value


def _checked_pydicom() -> Any:
    pydicom = require("pydicom", "reading DICOM files")
    major = str(getattr(pydicom, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 3:
        raise MissingDependencyError(f"reading DICOM files needs pydicom 3, found {pydicom.__version__}")
    return pydicom


def _pydicom(source: str | None) -> Any:
    try:
        return _checked_pydicom()
    except MissingDependencyError as exc:
        found = "an older pydicom is installed" if "found" in str(exc) else "pydicom is not installed here"
        raise ImageReaderMissingError(
            f"a DICOM file: reading DICOM needs the optional package pydicom 3 ({found}); install it "
            f"({extra_hint('dicom')}) and run again, or export the photograph as JPEG", source=source) from None


# Explicit VRs whose length is 4 bytes after 2 reserved ones (the others have a 2-byte length).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def _file_meta(data: bytes) -> tuple[str, int]:
    """(transfer syntax UID, offset where the dataset starts) from the file meta group, wherever it is.

    After the preamble and ``DICM`` (Part 10), or at the start of a bare file that begins with it. Walked
    element by element (always explicit VR little endian), not by its group length, which a file may lack.
    ("", offset) when there is no meta group or no transfer syntax in it.
    """
    at = 132 if data[128:132] == b"DICM" else 0
    syntax = ""
    while at + 8 <= len(data) and data[at : at + 2] == b"\x02\x00":
        element, vr = int.from_bytes(data[at + 2 : at + 4], "little"), data[at + 4 : at + 6]
        if vr in _LONG_VRS:
            n, value = int.from_bytes(data[at + 8 : at + 12], "little"), at + 12
        else:
            n, value = int.from_bytes(data[at + 6 : at + 8], "little"), at + 8
        if element == 0x0010:
            syntax = data[value : value + n].rstrip(b"\x00 ").decode("ascii", "replace")
        at = value + n
    return syntax, at


def _check_inflated_size(data: bytes, start: int, max_pixels: int, source: str | None) -> None:
    """Refuse a Deflated-syntax file whose dataset inflates past what a picture at the pixel limit needs.

    pydicom inflates the whole dataset while reading it, before Rows and Columns can be looked at: a few
    hundred KB of zeros would otherwise take gigabytes. Counted in chunks, so the check holds little itself.
    """
    cap = max_pixels * _BYTES_PER_PIXEL + _HEADER_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = data[start:]
    try:
        # Stop at the stream's end too: bytes after it (the pad byte that makes a deflated dataset's length even)
        # stay in unconsumed_tail once the output limit was reached in the same call, and decompress() then
        # returns nothing for ever.
        while pending and total <= cap and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 24))  # 16 MB of output at a time
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageDecodeError(f"a damaged DICOM file (its deflated data: {exc})", source=source) from None
    if total > cap:
        raise ImageTooLargeError(f"a deflated DICOM file that inflates to more than {cap >> 20} MB, more than a "
                                 f"picture of the pixel limit ({max_pixels}) needs: is it a photograph?",
                                 source=source)


def dicom_picture(data: bytes, max_pixels: int, source: str | None = None) -> bytes | np.ndarray:
    """The photograph a DICOM file holds: the wrapped JPEG / JPEG 2000 bytes, or uint8 RGB (H, W, 3).

    Raises :class:`ImageError` subclasses saying why a file is not one screenable photograph.
    """
    pydicom = _pydicom(source)
    bare = data[128:132] != b"DICM"
    meta_syntax, dataset_start = _file_meta(data)
    if meta_syntax == _DEFLATED:
        _check_inflated_size(data, dataset_start, max_pixels, source)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=bare)
        if "TransferSyntaxUID" not in ds.file_meta:
            # What pydicom found reading it, so that pixel_array knows how the raw pixels are laid out.
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                              pydicom.uid.ExplicitVRLittleEndian if little else
                                              pydicom.uid.ExplicitVRBigEndian)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        has_pixels = "PixelData" in ds
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        signed = int(ds.get("PixelRepresentation", 0) or 0) != 0
        # pydicom converts an element when it is first read: every header value used below is read here, inside
        # this catch-all, so that a damaged one (a value representation of stray bytes) is a damaged file.
        samples, allocated = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        stored = ds.get("BitsStored")
        stored = None if stored is None or stored == "" else int(stored)
        sop = ds.get("SOPClassUID")
        sop_name = None if sop is None else str(getattr(sop, "name", "") or sop)
        uid = ds.file_meta.get("TransferSyntaxUID")
        known = not syntax or getattr(uid, "is_transfer_syntax", False)
        encapsulated = bool(uid.is_encapsulated) if known and syntax else False
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
        raise ImageDecodeError(f"a damaged DICOM file ({type(exc).__name__}: {_said(exc)})", source=source) from None
    if not known:
        raise ImageFormatError(f"a DICOM file in a transfer syntax this pydicom does not know ({syntax}); export the "
                               "photograph as JPEG", source=source)
    if not has_pixels and sop is None:
        # Every DICOM object names its SOP class; pydicom returns an empty dataset for a file cut short
        # inside its wrapped JPEG data.
        raise ImageDecodeError("a damaged DICOM file (cut short? it holds neither a SOP class nor a picture)",
                               source=source)
    if not has_pixels:
        raise ImageFormatError(f"a DICOM file without a picture ({sop_name}: a report or a document?); screen the "
                               "photograph's own file", source=source)
    if rows * cols > max_pixels:
        raise too_many_pixels(cols, rows, max_pixels, source)
    if signed:
        raise ImageFormatError("a DICOM picture with signed samples (PixelRepresentation 1), which no photograph "
                               "stores; export the photograph as JPEG", source=source)
    try:
        found = (_encapsulated_frames(pydicom, ds.PixelData, syntax) if encapsulated
                 else _raw_frames(len(ds.PixelData), rows * cols * samples * allocated))
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"a damaged DICOM file ({type(exc).__name__}: {_said(exc)})", source=source) from None
    frames = max(frames, found)
    if frames > 1:
        raise ImageFormatError(f"a DICOM file holding {frames} frames (the runtime screens one photograph per "
                               "file, and would see only the first); export each frame as its own file and screen "
                               "those", source=source)
    if syntax in _JPEG_SYNTAXES or syntax in _J2K_SYNTAXES:
        try:
            frame = bytes(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
        except Exception as exc:  # noqa: BLE001
            raise ImageDecodeError(f"a damaged DICOM file: its JPEG data cannot be unwrapped ({_said(exc)})",
                                   source=source) from None
        if syntax in _J2K_SYNTAXES:
            return frame
        head = jpeg_frame(frame)
        if head is None:
            return frame  # no frame header: the decoder says the file is damaged
        if head[2] == 8:
            return _as_rgb_jpeg(frame) if photometric == "RGB" else frame
        # A 12-bit JPEG (extended process): the runtime's libjpeg reads 8 bits; a pydicom plug-in may read it.
    return _as_rgb8(ds, _pixel_array(ds, syntax, source), pydicom, source, photometric=photometric, stored=stored)


def _encapsulated_frames(pydicom: Any, pixel_data: bytes, syntax: str) -> int:
    """Frames an encapsulated pixel data element holds by its offset table, else by fragments that start one.

    A file holding several frames without NumberOfFrames breaks the standard, but exists; its first frame
    alone would be screened.
    """
    try:
        offsets = pydicom.encaps.parse_basic_offsets(pixel_data)
        if len(offsets) > 1:
            return len(offsets)
        _, starts = pydicom.encaps.parse_fragments(pixel_data)
    except Exception:  # noqa: BLE001 - a damaged element is reported when the frame is unwrapped
        return 1
    # Each fragment: an item tag (4 bytes) and its length (4 bytes), then the data.
    if syntax == _RLE:
        # One fragment per RLE frame (PS3.5 A.4.2), each starting with its 64-byte header: 1-15 segments, the
        # first at offset 64.
        return max(1, sum(1 <= int.from_bytes(pixel_data[s + 8 : s + 12], "little") <= 15
                          and pixel_data[s + 12 : s + 16] == b"\x40\x00\x00\x00" for s in starts))
    soi = b"\xff\xd8" if syntax in _SOI_SYNTAXES else b"\xff\x4f\xff\x51" if syntax in _SOC_SYNTAXES else None
    if soi is None:
        return 1
    return max(1, sum(pixel_data[s + 8 : s + 8 + len(soi)] == soi for s in starts))


def _raw_frames(data_bytes: int, bits_per_frame: int) -> int:
    """How many pictures raw pixel data holds by its length (pydicom would infer frames from an excess)."""
    if bits_per_frame <= 0:
        return 1
    return max(1, (8 * data_bytes) // bits_per_frame)


def _as_rgb_jpeg(frame: bytes) -> bytes:
    """A JPEG whose header calls it RGB, marked so for libjpeg (an Adobe APP14 segment with transform 0).

    libjpeg takes three components for YCbCr unless a JFIF, an Adobe marker or the component ids say
    otherwise; the DICOM header is the only place such a frame says RGB. A JFIF marker (YCbCr) or a whole
    Adobe segment (its own transform) wins over the header, as in pydicom; a short Adobe segment, which
    libjpeg ignores, does not.
    """
    for marker, i, length in jpeg_segments(frame):
        if marker == 0xE0 and frame[i + 4 : i + 9] == b"JFIF\x00":
            return frame
        if marker == 0xEE and frame[i + 4 : i + 9] == b"Adobe" and length >= 14:
            return frame  # a whole Adobe segment states the transform itself (writers label YCbCr frames RGB)
    return frame[:2] + _ADOBE_RGB + frame[2:]


def _pixel_array(ds: Any, syntax: str, source: str | None) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)  # raw, RLE, or any codec a plug-in decodes; YBR comes back as RGB
    except Exception as exc:  # noqa: BLE001 - no plug-in for the codec, or damaged pixel data
        uid = ds.file_meta.get("TransferSyntaxUID")
        codec = str(getattr(uid, "name", "") or syntax or "an unknown syntax")
        text = str(exc)
        if syntax == _RLE and "missing dependencies" not in text:
            # pydicom decodes RLE itself, with no plug-in, so a failure there is damaged data: telling the
            # user to install plug-ins would send them after a fix that cannot help.
            raise ImageDecodeError(f"a damaged DICOM file: its RLE-compressed pixel data cannot be decoded "
                                   f"({_said(exc)})", source=source) from None
        # pydicom's words when no installed plug-in decodes the codec (or this variant of it, as 12-bit JPEG).
        if any(k in text for k in ("missing dependencies", "all available plugins", "no pixel data decoders")):
            raise ImageReaderMissingError(f"a DICOM file compressed as {codec}: decoding it needs a pydicom plug-in "
                                          f"that is not installed ({_PLUGINS}), or export the photograph as JPEG",
                                          source=source) from None
        if getattr(uid, "is_compressed", False):
            raise ImageFormatError(f"a DICOM file compressed as {codec}, which cannot be decoded here "
                                   f"({_said(exc)}); export the photograph as JPEG", source=source) from None
        raise ImageDecodeError(f"a damaged DICOM file: its pixel data cannot be read ({_said(exc)})",
                               source=source) from None


@lru_cache(maxsize=32)
def _to_8bit(bits: int, inverted: bool) -> np.ndarray:
    """uint8 lookup table from 0..2**bits-1 (rounded), reversed for MONOCHROME1 (0 is white)."""
    top = (1 << bits) - 1
    lut = ((np.arange(top + 1, dtype=np.int64) * 255 + top // 2) // top).astype(np.uint8)
    return lut[::-1].copy() if inverted else lut


def _as_rgb8(ds: Any, pixels: np.ndarray, pydicom: Any, source: str | None, *, photometric: str,
             stored: int | None) -> np.ndarray:
    """uint8 RGB from pixel_array's output, by the header's photometric interpretation and stored bits.

    Through a lookup table on the native dtype: one temporary of the pixels' own size, not int64 copies.
    """
    try:
        if photometric == "PALETTE COLOR":
            pixels = np.asarray(pydicom.pixels.apply_color_lut(pixels, ds))
            bits = 8 * pixels.dtype.itemsize
        else:
            bits = stored or 8 * pixels.dtype.itemsize
    except Exception as exc:  # noqa: BLE001 - no colour table, or a damaged one (pydicom raises many types)
        raise ImageDecodeError(f"a damaged DICOM file ({type(exc).__name__}: {_said(exc)})", source=source) from None
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
        raise ImageFormatError(f"a DICOM picture of shape {pixels.shape} (expected rows x columns, with 1 or 3 "
                               "samples)", source=source)
    if not 1 <= bits <= 16 or pixels.dtype.kind not in "ub":
        raise ImageFormatError(f"a DICOM picture of {bits}-bit {pixels.dtype} samples (a photograph has 8-16-bit "
                               "unsigned ones); export the photograph as JPEG", source=source)
    if pixels.dtype == np.bool_:
        pixels = pixels.view(np.uint8)  # 1-bit data: indices, not a mask
    inverted = photometric == "MONOCHROME1"
    if bits == 8 and pixels.dtype == np.uint8 and not inverted:
        rgb8 = pixels
    else:
        top = (1 << bits) - 1
        rgb8 = _to_8bit(bits, inverted)[np.minimum(pixels, top) if int(pixels.max(initial=0)) > top else pixels]
    if rgb8.ndim == 3 and rgb8.shape[2] == 1:
        rgb8 = rgb8[..., 0]
    if rgb8.ndim == 2:
        rgb8 = np.repeat(rgb8[..., None], 3, axis=2)  # grey: the quality gate says it is no colour photograph
    return np.ascontiguousarray(rgb8)
