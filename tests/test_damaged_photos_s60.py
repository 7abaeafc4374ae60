"""Damaged files screened as photographs (session 60 review): a file of the right size whose end is zero bytes.

A power cut or an interrupted copy leaves the file's last part zero. JPEG and PNG were refused (no end
marker); a BMP, an uncompressed TIFF or a PPM decoded into black rows below a straight cut through the
retina, a WebP into smears or black, a JPEG 2000 into wrong detail, and all came back ``ok`` with a verdict.
Each test also keeps the intact photograph, or a real look-alike, screened as before.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from uopsl.runtime import imagefile
from uopsl.runtime.errors import ImageDecodeError
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl" / "fundus"


def _bgr(size: int = 320, seed: int = 3, **kw: float) -> np.ndarray:
    return np.asarray(cv2.cvtColor(draw_fake_fundus(size, seed=seed, **kw), cv2.COLOR_RGB2BGR), np.uint8)


def _imdecode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return np.asarray(img, np.uint8)


def _tiff(bgr: np.ndarray) -> bytes:
    """An uncompressed RGB TIFF, one strip, IFD at offset 8 (Pillow's layout; the review's files)."""
    h, w = bgr.shape[:2]
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 8 + 2 + 12 * 9 + 4), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4 + 6), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, w * h * 3)]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        field = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + field
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4) + struct.pack("<HHH", 8, 8, 8) \
        + np.ascontiguousarray(bgr[:, :, ::-1]).tobytes()


def _encode(fmt: str, bgr: np.ndarray) -> bytes:
    if fmt == "tiff":
        return _tiff(bgr)
    ok, buf = cv2.imencode({"bmp": ".bmp", "ppm": ".ppm"}[fmt], bgr)
    assert ok
    return buf.tobytes()


def _zero_from_row(data: bytes, fmt: str, w: int, h: int, row: int, column: int) -> bytes:
    """The file with its bytes zero from picture row ``row``, pixel ``column`` (in storage order) to its end."""
    row_bytes = (3 * w + 3) // 4 * 4 if fmt == "bmp" else 3 * w
    pixels_at = len(data) - row_bytes * h
    stored = h - 1 - row if fmt == "bmp" else row  # a BMP is stored from the bottom row up
    at = pixels_at + stored * row_bytes + 3 * column
    return data[:at] + bytes(len(data) - at)


def _zero_tail(data: bytes, percent: float) -> bytes:
    at = int(len(data) * percent / 100)
    return data[:at] + bytes(len(data) - at)


@pytest.mark.parametrize("fmt", ["bmp", "tiff", "ppm"])
@pytest.mark.parametrize("row", [0.3, 0.7])
def test_a_raster_whose_end_is_zero_bytes_is_a_damaged_file(fmt: str, row: float) -> None:
    """0002_OD_f_1 as a TIFF missing its bottom 30 % came back ok, quality 0.53; a BMP (stored bottom up) loses its
    top. The error says what was found, what a photograph looks like instead, and what to do."""
    bgr = _bgr()
    h, w = bgr.shape[:2]
    data = _encode(fmt, bgr)
    assert decode(data).shape == (h, w, 3)
    damaged = _zero_from_row(data, fmt, w, h, int(row * h), w // 2)
    with pytest.raises(ImageDecodeError) as err:
        decode(damaged, source=f"eye.{fmt}")
    text = str(err.value)
    assert "stops partway through row" in text and "zero bytes" in text and "straight cut" in text
    assert "edge of its circle" in text and "copy it again" in text
    assert f"the {'top' if fmt == 'bmp' else 'bottom'} " in text  # a BMP's end is the top of its picture
    for size in (224, 512):
        with pytest.raises(ImageDecodeError, match="stops partway"):
            preprocess(damaged, PreprocessConfig(size=size))


def test_only_data_stopping_inside_a_row_is_refused_not_a_padded_clipped_field() -> None:
    """A field clipped by the sensor and padded into a square frame ends in the same straight cut and black rows
    (after JPEG, with faint ringing along the cut): its rows end together, so it is screened; the same file
    zero-filled from the middle of a row is refused."""
    full = _bgr(320, field=0.6)  # the circle runs past the frame: clipped top and bottom
    padded = np.zeros((400, 320, 3), np.uint8)
    padded[40:360] = full
    rippled = _imdecode(cv2.imencode(".jpg", padded, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    one_side = _bgr(400)[:, 40:360].copy()  # clipped straight at the top only, the circle's edge below
    one_side[:100] = 0
    for picture in (padded, rippled, one_side):
        for fmt in ("bmp", "tiff", "ppm"):
            assert decode(_encode(fmt, picture)).shape == (400, 320, 3), fmt
    for fmt in ("bmp", "tiff", "ppm"):
        damaged = _zero_from_row(_encode(fmt, padded), fmt, 320, 400, 300, 150)
        with pytest.raises(ImageDecodeError, match="stops partway"):
            decode(damaged)


@pytest.mark.parametrize("quality", [None, 90], ids=["lossless", "lossy"])
def test_a_webp_whose_end_is_zero_bytes_is_a_damaged_file(quality: int | None) -> None:
    """libwebp decodes zeros without complaint: lossy blocks as smears of the rows above, lossless as black."""
    params = [] if quality is None else [cv2.IMWRITE_WEBP_QUALITY, quality]
    data = cv2.imencode(".webp", _bgr(), params)[1].tobytes()
    assert decode(data).shape == (320, 320, 3)
    for percent in (70, 95):
        with pytest.raises(ImageDecodeError, match=r"ends in [\d,]+ zero bytes, where an encoder writes at most") as e:
            decode(_zero_tail(data, percent))
        assert "copy it again" in str(e.value)


def test_a_webp_of_a_flat_band_keeps_its_own_zero_bytes() -> None:
    """A lossy WebP ends a flat band (black padding, a white border) in zero bytes of its own, a fraction of a
    bit per block: screened; the same file with a tenth of it zero-filled is refused."""
    bgr = np.zeros((1024, 1024, 3), np.uint8)
    bgr[:512, :512] = _bgr(512)
    data = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 90])[1].tobytes()
    assert data.rstrip(b"\x00") != data  # it does end in zeros
    assert decode(data).shape == (1024, 1024, 3)
    with pytest.raises(ImageDecodeError, match="zero bytes"):
        decode(_zero_tail(data, 90))


def test_a_jpeg2000_cut_short_or_zero_filled_is_a_damaged_file() -> None:
    """OpenJPEG decodes the quality layers it finds and only warns ("Stream does not end with EOC"): the picture
    looked whole, with wrong detail. A raw codestream (DICOM wraps those) is walked the same way; one whose
    tile-parts are all there but whose end marker was left out (some writers do) is complete."""
    jp2 = cv2.imencode(".jp2", _bgr())[1].tobytes()
    at = jp2.find(b"jp2c")
    codestream = jp2[at + 4 :]
    assert codestream[:2] == b"\xff\x4f"
    for data in (jp2, codestream):
        assert not imagefile.is_truncated(data)
        assert decode(data).shape == (320, 320, 3)
        assert not imagefile.is_truncated(codestream[:-2])
        for damaged in (_zero_tail(data, 85), data[: len(data) * 85 // 100], _zero_tail(data, 99.5)):
            assert imagefile.is_truncated(damaged)
            with pytest.raises(ImageDecodeError, match="JPEG 2000 codestream does not reach its end"):
                decode(damaged)


@pytest.mark.skipif(not TVHL.is_dir(), reason="../shared/data/tvhl not present")
@pytest.mark.parametrize("name", ["0002_OD_f_1.jpg", "1958_OI_f_4.jpg"])
def test_tvhl_photographs_zero_filled_as_the_review_wrote_them(name: str) -> None:
    """The review's files: the first 70 / 85 % of the file, then zeros to the same size (0002: black rows above and
    below its circle, 1958: its field clipped by the frame)."""
    bgr = _imdecode((TVHL / name).read_bytes())
    for fmt in ("bmp", "tiff", "ppm"):
        data = _encode(fmt, bgr)
        assert decode(data).shape == (512, 512, 3), fmt
        for percent in (70, 85):
            with pytest.raises(ImageDecodeError, match="stops partway"):
                decode(_zero_tail(data, percent))
    webp = cv2.imencode(".webp", bgr)[1].tobytes()
    assert decode(webp).shape == (512, 512, 3)
    with pytest.raises(ImageDecodeError, match="zero bytes"):
        decode(_zero_tail(webp, 95))
