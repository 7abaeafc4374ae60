"""What an image file's bytes say before they are decoded: format, pixel size, completeness.

The decoder (OpenCV) is only reached once these checks pass, so:

* a decompression bomb (a few bytes that declare a huge picture) is refused from
  its header, for every format the runtime accepts (:func:`header_size`); a
  format whose header is not read here is refused as unsupported rather than
  decoded blind (:func:`image_format`);
* a JPEG is complete when its end-of-image marker follows the image data,
  whatever comes after it (phones append trailers and whole videos, transfers
  add padding), a JPEG 2000 when its tile-parts lead to the end-of-codestream
  marker: :func:`is_truncated`;
* a WebP whose image data ends in more zero bytes than an encoder writes (a copy
  or save interrupted, the rest of the file left zero) is known before libwebp
  decodes those zeros into a smeared or black picture (:func:`webp_zero_fill`);
  the uncompressed formats (BMP, TIFF, PNM) decode such a tail into black rows,
  which :mod:`uopsl.runtime.preprocess` judges from the picture and the zero
  bytes the file ends in (:func:`trailing_zero_bytes`);
* a JPEG variant libjpeg cannot scale while decoding (lossless) is known before
  a reduced-scale decode is asked for (:func:`jpeg_frame`);
* a TIFF whose first page (all OpenCV decodes) is not its one photograph is
  known (:func:`tiff_pictures`);
* the depth 16-bit samples were written at, where OpenCV does not apply it: a
  TIFF's (:func:`tiff_sample_max`), a PNG's sBIT (:func:`png_significant_bits`),
  a JPEG 2000's (:func:`j2k_precision`).

Everything here reads bytes only, never raises on malformed input (``None`` or
``False`` instead) and is cheap: headers are parsed, image data is not touched
except for one ``find`` of the end-of-image marker and the zero bytes at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from uopsl.runtime.exif import jpeg_segments

ImageFormat = Literal["jpeg", "png", "bmp", "tiff", "bigtiff", "webp", "jp2", "j2k", "pnm"]

_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk's type and its fixed CRC
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K = b"\xff\x4f\xff\x51"  # SOC then SIZ
_SOS, _EOI = 0xDA, 0xD9
# Start-of-frame markers (not DHT C4, JPG C8, DAC CC) and the lossless ones among them.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})

#: What the runtime accepts, for messages.
SUPPORTED = "JPEG, PNG, TIFF, BMP, WebP, JPEG 2000, PNM or DICOM"


def image_format(data: bytes) -> ImageFormat | None:
    """The container format from the first bytes (not the file name); None when it is none of :data:`SUPPORTED`."""
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == _PNG:
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        return "bigtiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:12] == _JP2:
        return "jp2"
    if data[:4] == _J2K:
        return "j2k"
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n#":
        return "pnm"
    return None


def other_format(data: bytes) -> str | None:
    """The name of a known image format the runtime does not read (a phone's HEIC, GIF, ...), or None.

    DICOM is read (:mod:`uopsl.runtime.dicomfile`) before the format is asked for."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF (a phone's photo format)"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"8BPS":
        return "Photoshop (PSD)"
    if data[:4] == b"\x76\x2f\x31\x01":
        return "OpenEXR"
    if data[:2] == b"#?" and (b"RADIANCE" in data[:16] or b"RGBE" in data[:16]):
        return "Radiance HDR"
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) the header declares, without decoding; None when it cannot be read."""
    try:
        fmt = image_format(data)
        if fmt == "png" and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if fmt == "bmp" and len(data) >= 22 and int.from_bytes(data[14:18], "little") == 12:
            # An OS/2 core header: 16-bit unsigned sizes (read as 32-bit they refused a 256x256 picture as huge).
            return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
        if fmt == "bmp" and len(data) >= 26:
            w = int.from_bytes(data[18:22], "little", signed=True)
            h = int.from_bytes(data[22:26], "little", signed=True)
            return abs(w), abs(h)
        if fmt in ("tiff", "bigtiff"):
            return _tiff_size(data, big=fmt == "bigtiff")
        if fmt == "jpeg":
            frame = jpeg_frame(data)
            return None if frame is None else frame[:2]
        if fmt == "webp":
            return _webp_size(data)
        if fmt == "jp2":
            return _jp2_size(data)
        if fmt == "j2k":
            return _siz_size(data, 2)
        if fmt == "pnm":
            return _pnm_size(data)
    except (IndexError, ValueError):
        return None
    return None


def jpeg_frame(data: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, precision in bits, lossless) from a JPEG's start-of-frame segment; None if absent."""
    for marker, i, _ in jpeg_segments(data):
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            w, h = int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            return w, h, data[i + 4], marker in _LOSSLESS_SOF
    return None


def jpeg_scan_start(data: bytes) -> int | None:
    """Offset of a JPEG's first start-of-scan marker (after all header segments); None if not found."""
    i = 2
    for _marker, offset, length in jpeg_segments(data):
        i = offset + 2 + length
    while i + 1 < len(data) and data[i] == 0xFF and data[i + 1] == 0xFF:  # fill bytes
        i += 1
    return i if data[i : i + 2] == b"\xff\xda" else None


def is_truncated(data: bytes) -> bool:
    """Whether a JPEG, PNG or JPEG 2000 was cut short (the end marker of its image data is missing).

    JPEG: inside entropy-coded data a 0xFF byte is always followed by 0x00 or a
    restart marker, so the first end-of-image marker after the first scan is the
    image's own; what follows it (a camera trailer, padding, a phone's motion
    video) does not matter. PNG: the IEND chunk. JPEG 2000: :func:`j2k_complete`
    (OpenJPEG decodes a codestream cut short, or whose end was zero-filled, from
    the quality layers it finds and only warns: the detail of the retina came out
    wrong, the picture looked whole). Other formats: False (their decoders refuse
    short data themselves).
    """
    fmt = image_format(data)
    if fmt == "jpeg":
        start = jpeg_scan_start(data)
        if start is None:  # no scan found by the header walk: the end of the file must be the marker
            return data.rstrip(b"\x00")[-2:] != b"\xff\xd9"
        # Any end marker after the scan starts; searched from the end, where it sits in an ordinary file.
        return data.rfind(b"\xff\xd9", start) < 0
    if fmt == "png":
        return data.rfind(_PNG_IEND) < 0
    if fmt in ("jp2", "j2k"):
        return j2k_complete(data) is False
    return False


def _jp2_codestream(data: bytes) -> tuple[int, int] | None:
    """(start, end) of the codestream in a JP2 file's contiguous-codestream box; None when the box walk fails.

    Boxes: a 4-byte length (1: an 8-byte length follows the type; 0: to the end of the file), a 4-byte type.
    """
    at = 0
    while at + 8 <= len(data):
        size, kind, head = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8], 8
        if size == 1:
            if at + 16 > len(data):
                return None
            size, head = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:
            size = len(data) - at
        if size < head:
            return None
        if kind == b"jp2c":
            return at + head, at + size
        at += size
    return None


def j2k_complete(data: bytes) -> bool | None:
    """Whether a JPEG 2000 codestream (raw, or in a JP2 file) holds all its tile-parts up to its end marker.

    Each tile-part's SOT segment gives its length (Psot, from the SOT marker to the end of its data), so the
    walk from the first SOT lands on the next tile-part or, after the last, on the end-of-codestream marker
    (EOC, FF D9); a tile-part whose length is 0 runs to that marker (compressed data never holds FF followed
    by a byte above 8F, so it is found by search, as a JPEG's end marker is). A file cut short, or whose end
    was zero-filled, lands on zeros or beyond the data: False. A walk that ends exactly at the end of the data
    is complete (only the end marker is missing). None: the header layout is not one this walk reads (the
    decoder then decides, as before).
    """
    try:
        if data[:4] == _J2K:
            start, end = 0, len(data)
        elif data[:12] == _JP2:
            span = _jp2_codestream(data)
            if span is None:
                return None
            start, end = span
        else:
            return None
        if data[start : start + 4] != _J2K:
            return None
        stop = min(end, len(data))
        at = start + 2
        while data[at : at + 2] != b"\xff\x90":  # main header segments (each with its length) up to the first SOT
            if at + 4 > stop:
                return False
            if data[at] != 0xFF:
                return None
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        while True:
            marker = data[at : at + 2] if at + 2 <= stop else b""
            if marker == b"\xff\xd9" or at == stop:  # at the end of the data: every tile-part is there, only the
                return True  # end marker is missing (some writers leave it out; OpenJPEG decodes the picture)
            if marker != b"\xff\x90" or at + 12 > stop:
                return False
            length = int.from_bytes(data[at + 6 : at + 10], "big")
            if length == 0:  # the last tile-part: it runs to the end marker
                return data.rfind(b"\xff\xd9", at + 12, stop) >= 0
            if length < 14:  # shorter than its own SOT segment and a start-of-data marker
                return False
            at += length
    except IndexError:
        return None


def _zeros_before(data: bytes, end: int) -> int:
    """How many zero bytes come just before offset ``end`` of ``data``.

    Read from ``end`` back in growing pieces, as an array: most files end in another byte, and
    ``bytes.rstrip(b"\\x00")`` takes 3 ns a byte (a 12 KB run of black rows cost a third of a BMP's decode).
    """
    buf = np.frombuffer(data, np.uint8, count=end)
    at, size = end, 4096
    while at > 0:
        start = max(0, at - size)
        nonzero = buf[start:at] != 0
        if nonzero.any():
            return end - at + int(nonzero[::-1].argmax())
        at, size = start, 2 * size
    return end


def trailing_zero_bytes(data: bytes) -> int:
    """How many zero bytes the file ends in."""
    return _zeros_before(data, len(data))


# Zero bytes a WebP encoder leaves at the end of its image data, per 16x16 block of the picture, at most: 2 bits,
# and never below _WEBP_MIN_ZEROS bytes. A lossless stream ends in a few zero bytes at most; a lossy one codes the
# flat blocks it ends on (a black surround, a padded band) in a fraction of a bit of zeros each. The libwebp
# OpenCV 5.1 bundles (benchmarks/check_damaged_photos.py --webp-margins): TVHL photographs at qualities 1-95
# and lossless 0.11 bits per block at most; 400 photographs and noise pictures given a flat band or a padded canvas 0.81
# (the photographs 0.52); the worst of a wider search of noise pictures 1.3. TVHL photographs as the review wrote
# them (lossless) and zero-filled from 70-95 % of the file end in 7-570 zero bits per block (at quality 90:
# 0.7-105; the smallest files zero-filled from 95 % are the ones let through).
_WEBP_ZERO_BITS_PER_BLOCK = 2
_WEBP_MIN_ZEROS = 128


def webp_zero_fill(data: bytes) -> tuple[int, int] | None:
    """(zero bytes, most an encoder writes) when a WebP's image data ends in more zero bytes than that; else None.

    libwebp reads zeros as valid data: a lossy picture decodes the blocks after the damage as smooth smears
    of the rows above (no detail: an exudate, a haemorrhage is not there), a lossless one as black with stray
    copies; neither fails nor warns. The zeros are counted at the end of the first VP8 / VP8L chunk (its own
    length, not its padding byte); the limit is :data:`_WEBP_ZERO_BITS_PER_BLOCK` per 16x16 block of the
    header's size. None also for a file whose chunks cannot be walked (the decoder decides, as before).
    """
    if image_format(data) != "webp":
        return None
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        end = at + 8 + size
        if kind in (b"VP8 ", b"VP8L"):
            if end > len(data) or size == 0 or data[end - 1] != 0:
                return None
            zeros = min(size, _zeros_before(data, end))
            wh = _webp_size(data)  # the picture's size: from this chunk, or the extended header's canvas
            blocks = 1 if wh is None else -(-wh[0] // 16) * -(-wh[1] // 16)
            limit = max(_WEBP_MIN_ZEROS, blocks * _WEBP_ZERO_BITS_PER_BLOCK // 8)
            return (zeros, limit) if zeros > limit else None
        at = end + (size & 1)
    return None


def _ifd_entries(data: bytes, ifd: int, *, big: bool) -> Iterator[tuple[int, int, int, int, Literal["little", "big"]]]:
    """(tag, type, count, offset of the value field, byte order) of each entry of the TIFF IFD at ``ifd``.

    BigTIFF: 8-byte entry count, 20-byte entries with 8-byte values; classic: 2, 12, 4.
    Stops at the end of the data (a truncated IFD yields what is there).
    """
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    if big:
        n, first, entry, value_at = int.from_bytes(data[ifd : ifd + 8], order), ifd + 8, 20, 12
    else:
        n, first, entry, value_at = int.from_bytes(data[ifd : ifd + 2], order), ifd + 2, 12, 8
    for k in range(min(n, 4096)):
        e = first + entry * k
        if e + entry > len(data):
            return
        yield (int.from_bytes(data[e : e + 2], order), int.from_bytes(data[e + 2 : e + 4], order),
               int.from_bytes(data[e + 4 : e + value_at], order), e + value_at, order)


def _ifd_offsets(data: bytes, *, big: bool) -> Iterator[int]:
    """The offsets of a TIFF's IFDs along its chain, one per page (or thumbnail, or mask).

    Stops at the chain's end (offset 0), a pointer outside the data, a loop, or :data:`_MAX_IFDS` IFDs.
    """
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    size, count_size, entry = (8, 8, 20) if big else (4, 2, 12)
    at = int.from_bytes(data[8:16] if big else data[4:8], order)
    seen: set[int] = set()
    while 0 < at < len(data) and at not in seen and len(seen) < _MAX_IFDS:
        seen.add(at)
        yield at
        n = int.from_bytes(data[at : at + count_size], order)
        nxt = at + count_size + entry * min(n, 4096)
        at = int.from_bytes(data[nxt : nxt + size], order) if nxt + size <= len(data) else 0


# More IFDs than any photograph file chains (a page each, plus thumbnails and masks); a longer chain stops here.
_MAX_IFDS = 1024
# Entries read along a chain at most: a crafted file of overlapping 4096-entry IFDs would otherwise cost seconds.
_MAX_ENTRIES = 1 << 16


def _first_ifd(data: bytes, *, big: bool) -> Iterator[tuple[int, int, int, int, Literal["little", "big"]]]:
    """:func:`_ifd_entries` of a TIFF's first IFD (the page OpenCV decodes)."""
    for at in _ifd_offsets(data, big=big):
        yield from _ifd_entries(data, at, big=big)
        return


@dataclass(frozen=True)
class TiffPictures:
    """What a TIFF's IFD chain holds, for deciding whether OpenCV's first-IFD decode is the photograph.

    full_size: pictures of their own: an IFD with a width and height, not flagged a reduced copy or a mask
    (NewSubfileType bits 0 and 2, SubfileType 2), and more than a quarter of the largest picture's pixels
    (an Exif thumbnail page is often not flagged; a half-size preview is a quarter). first / largest: (width, height) of the first IFD and of
    the largest one (first None: the first IFD has no size). complete: the whole chain was read.
    """

    full_size: int
    first: tuple[int, int] | None
    largest: tuple[int, int]
    complete: bool


def tiff_pictures(data: bytes) -> TiffPictures | None:
    """The pictures a TIFF (classic or BigTIFF) chains; None when it is no TIFF or no IFD has a size.

    OpenCV decodes the first IFD only, so a file holding a series, or both eyes, would be screened by its
    first picture alone, and a file whose first IFD is a thumbnail by the thumbnail.
    """
    fmt = image_format(data)
    if fmt not in ("tiff", "bigtiff"):
        return None
    big = fmt == "bigtiff"
    sizes: list[tuple[int, int, bool]] = []  # (width, height, flagged a reduced copy or a mask)
    first: tuple[int, int] | None = None
    entries = 0
    complete = True
    try:
        for k, at in enumerate(_ifd_offsets(data, big=big)):
            kind = 0
            dims: dict[int, int] = {}
            for tag, typ, _count, value, order in _ifd_entries(data, at, big=big):
                entries += 1
                nbytes = {3: 2, 4: 4, 16: 8}.get(typ, 4)  # SHORT, LONG, LONG8
                if tag == 254:  # NewSubfileType: a LONG (a few writers use a SHORT or a LONG8)
                    kind = int.from_bytes(data[value : value + nbytes], order) & 0b101
                elif tag == 255 and typ == 3:  # SubfileType, SHORT: 2 = reduced resolution
                    kind = 1 if int.from_bytes(data[value : value + 2], order) == 2 else kind
                elif tag in (256, 257):
                    dims[tag] = int.from_bytes(data[value : value + nbytes], order)
            if len(dims) == 2:
                sizes.append((dims[256], dims[257], kind != 0))
                if k == 0:
                    first = (dims[256], dims[257])
            if entries > _MAX_ENTRIES:
                complete = False
                break
    except (IndexError, ValueError):
        complete = False
    if not sizes:
        return None
    width, height, _ = max(sizes, key=lambda s: s[0] * s[1])
    full = sum(1 for w, h, flagged in sizes if not flagged and 4 * w * h > width * height)
    return TiffPictures(full, first, (width, height), complete)


def _tiff_size(data: bytes, *, big: bool) -> tuple[int, int] | None:
    size: dict[int, int] = {}
    for tag, typ, _count, at, order in _first_ifd(data, big=big):
        if tag in (256, 257):
            nbytes = {3: 2, 4: 4, 16: 8}.get(typ, 4)
            size[tag] = int.from_bytes(data[at : at + nbytes], order)
    return (size[256], size[257]) if len(size) == 2 else None


@dataclass(frozen=True)
class TiffDepth:
    """What a classic TIFF's first picture declares about its sample range.

    ``bits``: BitsPerSample (the first sample's; None when the tag is absent);
    ``max_sample``: MaxSampleValue when it is below 65535, else None.
    """

    bits: int | None
    max_sample: int | None

    def declared_max(self) -> int | None:
        """The largest sample value declared below 16 bits: MaxSampleValue, else 2**bits - 1 for 9-15 bits."""
        if self.max_sample is not None:
            return self.max_sample
        bits = 16 if self.bits is None else self.bits
        return (1 << bits) - 1 if 8 < bits < 16 else None


def tiff_depth(data: bytes) -> TiffDepth | None:
    """BitsPerSample and MaxSampleValue of a classic TIFF's first picture, or None when it is no readable TIFF."""
    try:
        if data[:4] not in (b"II*\x00", b"MM\x00*"):
            return None
        found: dict[int, int] = {}
        for tag, typ, count, at, order in _first_ifd(data, big=False):
            if tag in (258, 281) and typ == 3:  # SHORT values: inline when they fit in 4 bytes, else at an offset
                where = at if count * 2 <= 4 else int.from_bytes(data[at : at + 4], order)
                found[tag] = int.from_bytes(data[where : where + 2], order)
    except (IndexError, ValueError):
        return None
    top = found.get(281, 0)
    return TiffDepth(found.get(258), top if 0 < top < 65535 else None)


def tiff_sample_max(data: bytes) -> int | None:
    """The largest sample value a classic TIFF declares below 16 bits (MaxSampleValue, else BitsPerSample), or None.

    In the file's own sample units. Cameras and DICOM exports store 10-, 12- or 14-bit data in 16-bit TIFFs
    and say so in these tags; a file that says nothing is read over the full 16-bit range. (A file packed at
    9-15 bits per sample comes out of OpenCV shifted up to 16 bits: :func:`uopsl.runtime.preprocess.decode`
    scales this figure by the same shift.)
    """
    depth = tiff_depth(data)
    return None if depth is None else depth.declared_max()


def png_significant_bits(data: bytes, *, alpha: bool = False) -> int | None:
    """The significant bits of a 16-bit PNG's colour samples (its sBIT chunk), when below 16; else None.

    The PNG specification has an encoder scale fewer bits up to the full 16 and
    record the original depth in sBIT; some scientific and medical cameras
    instead store 10-14-bit data unscaled and only declare it there.
    :func:`uopsl.runtime.preprocess.decode` tells the two apart by the pixels.
    ``alpha``: the alpha plane's own figure instead (its last sBIT byte; None without an alpha plane).
    """
    try:
        if data[:8] != _PNG or data[12:16] != b"IHDR" or data[24] != 16:
            return None
        colour = data[25]
        channels = {0: 1, 2: 3, 4: 1, 6: 3}.get(colour)  # the colour bytes; an alpha plane's byte follows them
        if channels is None or (alpha and colour not in (4, 6)):
            return None
        expected = channels + (colour in (4, 6))
        at = 8
        while at + 8 <= len(data):
            length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                return None
            if kind == b"sBIT":
                body = data[at + 8 : at + 8 + length]
                # libpng ignores an sBIT chunk of the wrong length ("bad length"), or with a byte of 0 or
                # above the bit depth ("invalid"): so does this.
                if len(body) != expected or any(b == 0 or b > 16 for b in body):
                    return None
                bits = body[channels] if alpha else max(body[:channels])
                return bits if 0 < bits < 16 else None
            at += 12 + length
    except IndexError:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: key frame start code, then 14-bit sizes
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # lossless: 14-bit width-1 and height-1, packed
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jp2_size(data: bytes) -> tuple[int, int] | None:
    at = data.find(b"ihdr", 12, 4096)  # the image header box sits inside the first header box
    if at < 0:
        return None
    return int.from_bytes(data[at + 8 : at + 12], "big"), int.from_bytes(data[at + 4 : at + 8], "big")


def j2k_precision(data: bytes) -> tuple[int, bool] | None:
    """(bits, signed) of a JPEG 2000 file's first component, from the JP2 header or the codestream's SIZ.

    OpenCV returns 9-16-bit samples unscaled in uint16, so the file's own depth says what white is (as a
    TIFF's BitsPerSample does); it refuses signed samples. None when neither header can be read.
    """
    try:
        fmt = image_format(data)
        if fmt == "jp2":
            at = data.find(b"ihdr", 12, 4096)
            bpc = data[at + 14] if at >= 0 else 255
            if bpc != 255:  # 255: the depth varies by component; the codestream has each
                return (bpc & 0x7F) + 1, bool(bpc & 0x80)
            siz = data.find(_J2K)
            siz = siz + 2 if siz >= 0 else -1
        elif fmt == "j2k":
            siz = 2
        else:
            return None
        if siz < 0 or data[siz : siz + 2] != b"\xff\x51":
            return None
        ssiz = data[siz + 40]  # after Lsiz, Rsiz, eight 4-byte sizes and offsets, Csiz
        return (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
    except IndexError:
        return None


def _siz_size(data: bytes, siz: int) -> tuple[int, int] | None:
    """Image size from a JPEG 2000 codestream's SIZ segment (its marker at ``siz``)."""
    x, y = int.from_bytes(data[siz + 6 : siz + 10], "big"), int.from_bytes(data[siz + 10 : siz + 14], "big")
    x0, y0 = int.from_bytes(data[siz + 14 : siz + 18], "big"), int.from_bytes(data[siz + 18 : siz + 22], "big")
    if len(data) < siz + 22 or x < x0 or y < y0:
        return None
    return x - x0, y - y0


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    tokens: list[bytes] = []
    for line in data[:4096].split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 3:
            break
    if len(tokens) < 3 or not (tokens[1].isdigit() and tokens[2].isdigit()):
        return None
    return int(tokens[1]), int(tokens[2])
