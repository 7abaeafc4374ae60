"""EXIF orientation of JPEG (and PNG, WebP) photographs: read the tag, turn the pixels upright.

Cameras (and phones on fundus adapters) store pixels in sensor order and
record how to turn them upright in the Exif ``Orientation`` tag (0x0112).
Image viewers, PIL's ``ImageOps.exif_transpose`` and OpenCV's ``IMREAD_COLOR``
apply it; OpenCV's ``IMREAD_UNCHANGED`` does not. Preprocessing decodes every
JPEG with OpenCV's orientation handling off and applies :func:`apply_orientation`
with the tag read here, so the full-scale and the reduced-scale (DCT-scaled)
decodes give the same upright image, and the model, the field-of-view geometry,
the overlays and the report all see what the photographer saw.

The reader is deliberately small and defensive: it walks the JPEG's marker
segments (at most ``_MAX_SCAN`` bytes, stopping at the start of the image
data), takes the first APP1 segment that starts with ``Exif\\0\\0``, and looks
up the tag in IFD0 of its TIFF block only (no IFD chain is followed, so offset
loops cannot occur). Anything malformed, truncated or out of range means
orientation 1 (as stored); it never raises and its work is bounded by the cap.
The segment walk (:func:`jpeg_segments`) also gives preprocessing the frame size
before decoding (the pixel limit, the reduced-scale choice).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import cv2
import numpy as np

ORIENTATION_TAG = 0x0112
# Bytes of a JPEG scanned for the Exif segment. The walk jumps from segment to segment
# (its cost is the number of segments, not of bytes), so the cap only bounds a corrupt
# header: the Exif APP1 usually comes first, but some software writes several 64 KiB
# ICC or XMP segments before it (a tag after 256 KiB was missed: a photograph sideways).
_MAX_SCAN = 16 * 1024 * 1024
# Chunks of a PNG walked for eXIf: a 100 MB photograph in 8 KiB IDAT chunks has ~13,000; the cap bounds a corrupt
# or hostile file of empty chunks (each step advances at least 12 bytes).
_MAX_PNG_CHUNKS = 200_000
_EXIF_HEADER = b"Exif\x00\x00"
_SOS, _EOI = 0xDA, 0xD9
_TYPE_SHORT, _TYPE_LONG = 3, 4


def jpeg_segments(data: bytes, limit: int | None = None) -> Iterator[tuple[int, int, int]]:
    """``(marker, offset, length)`` of each JPEG marker segment before the image data.

    ``offset`` is that of the segment's 0xFF byte, ``length`` its stored length
    (the two length bytes and the payload; the payload may run past the end of
    ``data``: callers check). Markers without a length and fill bytes are
    skipped, and so are stray bytes between segments (a stuffed ``FF 00``
    among them included), as libjpeg skips them (``next_marker``:
    "extraneous bytes before marker"): a walk that stopped
    there missed the frame header libjpeg then reads, and a 692-byte file
    declaring 16000x16000 pixels was decoded (1.9 GB) before its size was
    refused. Stops quietly at the first scan (SOS) or the end of image, at a
    length below 2, or after ``limit`` bytes, so a corrupt header ends the
    walk instead of raising or looping.
    """
    if data[:2] != b"\xff\xd8":
        return
    end = len(data) if limit is None else min(len(data), limit)
    i = 2
    while i + 4 <= end:
        if data[i] != 0xFF:
            i = data.find(b"\xff", i, end)  # stray bytes (corrupt data or segment lengths): on to the next marker
            if i < 0:
                return
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x00:  # a stuffed zero (FF 00) among stray bytes is no marker: libjpeg scans on past it
            i += 2
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (_SOS, _EOI):
            return  # image data (or the end): metadata and frame headers come before it
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return
        yield marker, i, length
        i += 2 + length


def jpeg_orientation(data: bytes) -> int:
    """The Exif Orientation (1-8) of JPEG bytes; 1 when absent, malformed or not a JPEG."""
    end = min(len(data), _MAX_SCAN)
    for marker, i, length in jpeg_segments(data, _MAX_SCAN):
        if marker == 0xE1 and data[i + 4 : i + 10] == _EXIF_HEADER:
            # The whole segment must be present (not cut by the file end or the cap).
            return tiff_orientation(data[i + 10 : i + 2 + length]) if i + 2 + length <= end else 1
    return 1


def png_orientation(data: bytes) -> int:
    """The Orientation of a PNG's ``eXIf`` chunk (PNG 1.5); 1 when absent.

    The chunk should precede the image data, but one after it is read too: OpenCV's ``IMREAD_COLOR`` and PIL's
    ``exif_transpose`` both apply it, so a viewer shows that photograph turned, and the model must see it so
    (a mutation audit, session 46). The walk jumps from chunk to chunk, at most ``_MAX_PNG_CHUNKS`` of them.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return 1
    i = 8
    for _ in range(_MAX_PNG_CHUNKS):
        if i + 8 > len(data):
            break
        length, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        if kind == b"eXIf":
            return tiff_orientation(data[i + 8 : i + 8 + length])
        if kind == b"IEND":
            break
        i += 12 + length
    return 1


def webp_orientation(data: bytes) -> int:
    """The Orientation of an extended WebP's ``EXIF`` chunk (some writers keep the ``Exif\\0\\0`` prefix); 1 when absent."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return 1
    i = 12
    while i + 8 <= min(len(data), _MAX_SCAN):
        kind, length = data[i : i + 4], int.from_bytes(data[i + 4 : i + 8], "little")
        if kind == b"EXIF":
            block = data[i + 8 : i + 8 + length]
            return tiff_orientation(block[6:] if block.startswith(_EXIF_HEADER) else block)
        i += 8 + length + (length & 1)  # chunks are padded to an even size
    return 1


def image_orientation(data: bytes) -> int:
    """The Exif Orientation of a JPEG, PNG or WebP file (TIFF orientation is applied by the decoder itself)."""
    if data[:2] == b"\xff\xd8":
        return jpeg_orientation(data)
    if data[:4] == b"\x89PNG":
        return png_orientation(data)
    return webp_orientation(data)


def tiff_orientation(block: bytes) -> int:
    """The Orientation tag of a TIFF block's IFD0 (the body of an Exif segment); 1 when absent or malformed."""
    if len(block) < 8:
        return 1
    order: Literal["little", "big"]
    if block[:4] == b"II*\x00":
        order = "little"
    elif block[:4] == b"MM\x00*":
        order = "big"
    else:
        return 1
    ifd = int.from_bytes(block[4:8], order)
    if ifd < 8 or ifd + 2 > len(block):
        return 1
    count = int.from_bytes(block[ifd : ifd + 2], order)
    if count == 0 or ifd + 2 + 12 * count > len(block):
        return 1  # empty or truncated directory (a huge count lands here)
    for k in range(count):
        e = ifd + 2 + 12 * k
        if int.from_bytes(block[e : e + 2], order) != ORIENTATION_TAG:
            continue
        typ = int.from_bytes(block[e + 2 : e + 4], order)
        n = int.from_bytes(block[e + 4 : e + 8], order)
        if n != 1 or typ not in (_TYPE_SHORT, _TYPE_LONG):
            return 1
        value = int.from_bytes(block[e + 8 : e + (10 if typ == _TYPE_SHORT else 12)], order)
        return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` (H x W or H x W x C) turned upright for Exif ``orientation`` (as PIL's exif_transpose).

    1 (or any value outside 2-8) returns ``img`` itself; 5-8 swap height and width.
    """
    if orientation == 2:
        return cv2.flip(img, 1)  # mirrored left-right
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)  # mirrored top-bottom
    if orientation == 5:
        return cv2.transpose(img)  # mirrored along the main diagonal
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)  # mirrored along the anti-diagonal
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img
