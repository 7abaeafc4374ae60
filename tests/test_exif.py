"""Exif orientation: read defensively, applied the same way on the full-scale and the reduced-scale JPEG decode.

Fixtures are JPEGs made here with cv2.imencode, with an APP1 Exif segment
spliced in (the entropy-coded data is untouched, so a spliced file decodes to
exactly the stored pixels of the plain one before orientation is applied).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.bench import synthetic_fundus
from uopsl.runtime.exif import apply_orientation, jpeg_orientation, tiff_orientation
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess
from uopsl.runtime.quality import QualityConfig

Order = Literal["little", "big"]
ORDERS: tuple[Order, ...] = ("little", "big")
ORIENTATIONS = tuple(range(1, 9))
# The camera-sized frame of the colleague's report (fast_decode takes the 1/4 path on it at 320 px:
# its short side would allow 1/8, but its field of view would then be enlarged).
BIG_H, BIG_W = 2560, 2880


# -- fixture builders ---------------------------------------------------------------------
def _entry(tag: int, typ: int, count: int, value: bytes, order: Order) -> bytes:
    return tag.to_bytes(2, order) + typ.to_bytes(2, order) + count.to_bytes(4, order) + value.ljust(4, b"\x00")


def _tiff(orientation: int | None, order: Order = "little", *, next_ifd: int = 0, typ: int = 3, count: int = 1) -> bytes:
    """A TIFF block with IFD0 = (Make, Orientation, XResolution) at offset 8, like a camera writes."""
    bo = b"II*\x00" if order == "little" else b"MM\x00*"
    entries = [_entry(0x010F, 2, 4, b"Cam\x00", order)]  # Make, inline ASCII
    if orientation is not None:
        width = 4 if typ == 4 else 2
        entries.append(_entry(0x0112, typ, count, orientation.to_bytes(width, order), order))
    data_at = 8 + 2 + 12 * (len(entries) + 1) + 4
    entries.append(_entry(0x011A, 5, 1, data_at.to_bytes(4, order), order))  # XResolution -> a RATIONAL after the IFD
    ifd = len(entries).to_bytes(2, order) + b"".join(entries) + next_ifd.to_bytes(4, order)
    return bo + (8).to_bytes(4, order) + ifd + (72).to_bytes(4, order) + (1).to_bytes(4, order)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def _with_exif(jpeg: bytes, block: bytes, *, before: bytes = b"") -> bytes:
    """``jpeg`` with ``before`` and an APP1 Exif segment holding ``block`` inserted after its APP0 (JFIF)."""
    assert jpeg[:4] == b"\xff\xd8\xff\xe0", "cv2.imencode writes SOI then a JFIF APP0"
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:app0_end] + before + _segment(0xE1, b"Exif\x00\x00" + block) + jpeg[app0_end:]


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _upright_by_definition(img: np.ndarray, orientation: int) -> np.ndarray:
    """The Exif specification's eight orientations written with numpy indexing (independent of cv2)."""
    t = img.transpose(1, 0, 2)
    return {
        1: img, 2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1],
        5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1],
    }[orientation]


def _upright_point(x: float, y: float, w: int, h: int, orientation: int) -> tuple[float, float]:
    """Where the stored point (x, y) of a w x h image lies in the upright image (continuous coordinates)."""
    return {
        1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
        5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x),
    }[orientation]


@pytest.fixture(scope="module")
def camera_jpeg() -> tuple[bytes, float, float]:
    """A 2880x2560 JPEG with an off-centre field and a bright mark (no two orientations look alike).

    Returns the bytes and the field centre in stored pixels.
    """
    field = cv2.resize(draw_fake_fundus(512, seed=3), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(field, (700, 560), (820, 680), (255, 255, 255), -1)  # up-left of the centre, off the diagonals
    canvas = np.zeros((BIG_H, BIG_W, 3), np.uint8)
    x0, y0 = 200, 400
    canvas[y0 : y0 + 2048, x0 : x0 + 2048] = field
    return _jpeg(canvas), x0 + 1024.0, y0 + 1024.0


# -- reading the tag --------------------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_orientation_is_read_in_both_byte_orders(orientation: int, order: Order) -> None:
    base = _jpeg(draw_fake_fundus(64))
    assert jpeg_orientation(base) == 1  # no Exif at all
    assert jpeg_orientation(_with_exif(base, _tiff(orientation, order))) == orientation
    # An XMP APP1 before the Exif one is skipped; a LONG-typed tag is accepted.
    xmp = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")
    assert jpeg_orientation(_with_exif(base, _tiff(orientation, order), before=xmp)) == orientation
    assert tiff_orientation(_tiff(orientation, order, typ=4)) == orientation


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_apply_orientation_is_the_exif_definition_and_opencvs(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    img = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    got = apply_orientation(img, orientation)
    assert np.array_equal(got, _upright_by_definition(img, orientation))
    assert got.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))
    # OpenCV's own handling (IMREAD_COLOR applies the tag) turns the same file the same way.
    data = _with_exif(_jpeg(draw_fake_fundus(96, seed=orientation)[:, :80]), _tiff(orientation, "big"))
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    assert np.array_equal(decode(data), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_decode_agrees_with_pil_exif_transpose(orientation: int) -> None:
    pil_image = pytest.importorskip("PIL.Image")
    pil_ops = pytest.importorskip("PIL.ImageOps")
    data = _with_exif(_jpeg(draw_fake_fundus(96, seed=orientation)[:, :72]), _tiff(orientation, "little"))
    ours = decode(data)
    theirs = np.asarray(pil_ops.exif_transpose(pil_image.open(io.BytesIO(data))).convert("RGB"))
    assert ours.shape == theirs.shape == ((72, 96, 3) if orientation >= 5 else (96, 72, 3))
    # Same geometry; the two libjpeg builds may round a few pixels differently.
    assert np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean() < 1.0


# -- the same upright image on both decode paths ------------------------------------------------
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_fast_and_full_decode_give_the_same_upright_image(
    orientation: int, camera_jpeg: tuple[bytes, float, float]
) -> None:
    plain, scx, scy = camera_jpeg
    order: Order = "big" if orientation % 2 else "little"
    data = _with_exif(plain, _tiff(orientation, order))
    cfg = PreprocessConfig(size=320)
    fast = preprocess(data, cfg, keep_original=True)
    full = preprocess(data, PreprocessConfig(size=320, fast_decode=False), keep_original=True)
    assert fast.original is not None and full.original is not None
    assert fast.original.shape[0] * 4 == full.original.shape[0], "the reduced (1/4) decode path was not taken"
    upright = (BIG_W, BIG_H, 3) if orientation >= 5 else (BIG_H, BIG_W, 3)
    assert fast.original_shape == full.original_shape == full.original.shape == upright
    # Each path turns exactly its own stored pixels upright.
    stored = preprocess(plain, cfg, keep_original=True)
    assert stored.original is not None
    assert np.array_equal(fast.original, _upright_by_definition(stored.original, orientation))
    # Geometry is in the upright image's full-resolution pixels, on both paths.
    ex, ey = _upright_point(scx, scy, BIG_W, BIG_H, orientation)
    for g in (fast.geometry, full.geometry):
        assert g.fov_found
        assert (g.orig_h, g.orig_w) == upright[:2]
        assert abs(g.cx - ex) <= 8 and abs(g.cy - ey) <= 8 and abs(g.radius - stored.geometry.radius) <= 8, g
    # Same model input within JPEG tolerance (the bug: ~10.8 grey levels apart at orientation 6)...
    diff = np.abs(fast.image.astype(np.int16) - full.image.astype(np.int16))
    assert diff.mean() < 2.0, diff.mean()
    # ...and it is the stored model input turned upright, not the stored one.
    want = _upright_by_definition(stored.image, orientation).astype(np.int16)
    assert np.abs(fast.image.astype(np.int16) - want).mean() < 2.0
    if orientation != 1:
        assert np.abs(stored.image.astype(np.int16) - want).mean() > 2.0  # the mark moved: the check has teeth


@pytest.mark.parametrize("orientation", (1, 3, 6, 7))
def test_small_jpeg_full_path_is_exactly_the_upright_stored_pixels(orientation: int) -> None:
    rgb = draw_fake_fundus(448, seed=5)[:, 24:]  # 448 x 424: below fast_decode's threshold (the 256 px floor)
    plain = _jpeg(rgb)
    data = _with_exif(plain, _tiff(orientation, "big"))
    upright = _upright_by_definition(decode(plain), orientation)
    assert np.array_equal(decode(data), upright)
    got = preprocess(data, PreprocessConfig(size=128))
    want = preprocess(np.ascontiguousarray(upright), PreprocessConfig(size=128))
    assert got.original_shape == upright.shape
    assert got.geometry == want.geometry
    assert np.array_equal(got.image, want.image)


# -- malformed Exif: orientation 1, never an error, never slow ---------------------------------
def _ifd_with_count(count: int) -> bytes:
    return b"II*\x00" + (8).to_bytes(4, "little") + count.to_bytes(2, "little") + _entry(0x0112, 3, 1, b"\x06", "little")


MALFORMED_TIFF: dict[str, bytes] = {
    "empty": b"",
    "header cut": _tiff(6)[:6],
    "bad byte order": b"XX" + _tiff(6)[2:],
    "bad magic": b"II\x2b\x00" + _tiff(6)[4:],
    "big-endian mark, little-endian magic": b"MM*\x00" + _tiff(6)[4:],
    # a valid big-endian directory behind a wrong magic number (session 46's audit, X22: only the mark was checked)
    "big-endian, bad magic": b"MM\x00\x2b" + _tiff(6, "big")[4:],
    "ifd offset past end": _tiff(6)[:4] + (10_000).to_bytes(4, "little") + _tiff(6)[8:],
    "ifd offset 0xffffffff": _tiff(6)[:4] + b"\xff\xff\xff\xff" + _tiff(6)[8:],
    "ifd offset into header": _tiff(6)[:4] + (2).to_bytes(4, "little") + _tiff(6)[8:],
    "directory cut": _tiff(6)[:20],
    "huge entry count": _ifd_with_count(0xFFFF),
    "zero entries": _ifd_with_count(0),
    "huge value count": _tiff(6, count=0xFFFFFFFF),
    "value count 2": _tiff(6, count=2),
    "ascii type": _tiff(6, typ=2),
    "value 0": _tiff(0),
    "value 9": _tiff(9),
    "value 0xffff": _tiff(0xFFFF),
    "no orientation tag, ifd loops to itself": _tiff(None, next_ifd=8),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_TIFF))
def test_malformed_tiff_block_means_orientation_1(name: str) -> None:
    assert tiff_orientation(MALFORMED_TIFF[name]) == 1


def test_ifd_chain_is_not_followed() -> None:
    # IFD0 says 6 and points back at itself (a loop): the answer is IFD0's, at once.
    assert tiff_orientation(_tiff(6, "big", next_ifd=8)) == 6


def _malformed_jpegs() -> dict[str, bytes]:
    base = _jpeg(draw_fake_fundus(64))
    good = _with_exif(base, _tiff(6))
    exif_at = good.index(b"Exif") - 4
    seg_len = int.from_bytes(good[exif_at + 2 : exif_at + 4], "big")
    filler = b"".join(_segment(0xE2, bytes(60_000)) for _ in range(290))  # 17.4 MB of APP2 before the Exif
    cases = {
        "not a jpeg": b"\x89PNG\r\n\x1a\n" + good[2:],
        "soi only": b"\xff\xd8",
        "exif segment cut by the file end": good[: exif_at + 20],
        "exif length beyond the file": good[: exif_at + 2] + b"\xff\xff" + good[exif_at + 4 : exif_at + 2 + seg_len],
        "segment length 0": base[:2] + b"\xff\xe0\x00\x00" + good[2:],
        "segment length 1": base[:2] + b"\xff\xe0\x00\x01" + good[2:],
        "garbage instead of a marker": base[:2] + b"\x00\x11\x22\x33" + good[2:],
        "exif after the image data": base[:-2] + _segment(0xE1, b"Exif\x00\x00" + _tiff(6)) + b"\xff\xd9",
        "exif beyond the scan cap": _with_exif(base, _tiff(6), before=filler),
        "exif with a bad tiff block": _with_exif(base, _ifd_with_count(0xFFFF)),
    }
    for k in range(2000):  # truncations and random byte flips of a good header
        rng = np.random.default_rng(k)
        head = bytearray(good[: exif_at + 4 + seg_len + 8])
        for pos in rng.integers(2, len(head), size=int(rng.integers(1, 6))):
            head[pos] = int(rng.integers(0, 256))
        cases[f"fuzz {k}"] = bytes(head[: int(rng.integers(2, len(head) + 1))])
    return cases


def test_malformed_jpeg_exif_is_orientation_1_never_an_error_and_fast() -> None:
    cases = _malformed_jpegs()
    t0 = time.process_time()
    got = {name: jpeg_orientation(data) for name, data in cases.items()}
    cpu = time.process_time() - t0
    named = {k: v for k, v in got.items() if not k.startswith("fuzz")}
    # Stray bytes before a marker are skipped as libjpeg skips them (it decodes that file): the Exif segment
    # after them is read (session 31; the walk stopped there, and missed a frame header the same way).
    assert named.pop("garbage instead of a marker") == 6
    assert named == dict.fromkeys(named, 1)
    assert all(v in ORIENTATIONS for v in got.values())  # fuzzed headers may still hold a valid tag
    # ~2000 headers of a few hundred bytes each; the scan cap bounds the 300 KB case.
    assert cpu < 2.0, f"{len(cases)} malformed headers took {cpu:.2f} s of CPU"


def test_scan_cap_leaves_room_for_large_segments_before_the_exif() -> None:
    # The control for "exif beyond the scan cap" (16 MiB): 180 KB of APP2 (an ICC profile) before it is fine.
    filler = b"".join(_segment(0xE2, bytes(60_000)) for _ in range(3))
    assert jpeg_orientation(_with_exif(_jpeg(draw_fake_fundus(64)), _tiff(8, "big"), before=filler)) == 8


def test_malformed_exif_still_decodes_as_stored() -> None:
    base = _jpeg(draw_fake_fundus(64))
    assert np.array_equal(decode(_with_exif(base, _ifd_with_count(0xFFFF))), decode(base))
    assert np.array_equal(decode(_with_exif(base, _tiff(9, "big"))), decode(base))


# -- end to end: the model, the thumbnail and the overlay all use the upright photograph --------
@pytest.mark.parametrize(("h", "w", "scale"), [(896, 1024, 2), (451, 513, 1)], ids=["reduced", "full"])
@pytest.mark.parametrize("orientation", (1, 6, 7))
def test_screener_sees_the_upright_photograph(orientation: int, h: int, w: int, scale: int, tiny_bundle: Path) -> None:
    from uopsl.runtime.api import Screener

    # The tiny bundle (64 px) decodes 1024 x 896 at 1/2 (not below the 256 px decode floor); odd sides keep 513 x 451 on the full-scale path.
    canvas = np.zeros((h, w, 3), np.uint8)
    left = (w - h) // 2
    canvas[:, left : left + h] = cv2.resize(synthetic_fundus(3, 512), (h, h), interpolation=cv2.INTER_CUBIC)
    plain = _jpeg(canvas)
    data = _with_exif(plain, _tiff(orientation, "big"))
    stored = preprocess(plain, PreprocessConfig(size=64), keep_original=True).original
    assert stored is not None and stored.shape == (h // scale, w // scale, 3), "not the decode path meant"
    upright = np.ascontiguousarray(_upright_by_definition(stored, orientation))
    # The pixel array is the decoded image (1/2 scale on the reduced path): let the gate's
    # minimum side, measured on the original, pass it as it passes the full-size file.
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2, workers=1,
                  quality_config=QualityConfig(min_side=200)) as s:
        by_bytes, by_pixels = s.screen_many([data, upright], thumbnail_side=128)
    assert by_bytes.status == by_pixels.status == "ok", (by_bytes.reasons, by_pixels.reasons)
    assert by_bytes.probs == by_pixels.probs  # the same model input, to the bit
    assert by_bytes.thumbnail is not None and by_pixels.thumbnail is not None
    assert np.array_equal(by_bytes.thumbnail, by_pixels.thumbnail)
    g, p = by_bytes.geometry, by_pixels.geometry
    assert g is not None and p is not None
    assert (g.orig_h, g.orig_w) == ((w, h) if orientation >= 5 else (h, w))
    k = scale  # the array's geometry is in decoded pixels, the file's in full-resolution ones
    assert (g.cx, g.cy, g.radius, g.x0, g.y0, g.side) == (k * p.cx, k * p.cy, k * p.radius, k * p.x0, k * p.y0, k * p.side)
    # The overlay is drawn on the thumbnail's grid: the same upright shape.
    assert by_bytes.heatmap(shape=by_bytes.thumbnail.shape[:2]).shape == by_bytes.thumbnail.shape[:2]


def test_orientation_after_large_icc_segments_is_applied() -> None:
    """Exif written after 5 x 64 KiB ICC segments (past the old 256 KiB cap) was ignored: the photograph sideways."""
    rgb = draw_fake_fundus(96, seed=3)[:, :80]  # not square, so sideways shows in the shape
    icc = b"".join(_segment(0xE2, b"ICC_PROFILE\x00" + bytes(65_000)) for _ in range(5))
    data = _with_exif(_jpeg(rgb), _tiff(6), before=icc)
    assert len(data) > 300_000 and jpeg_orientation(data) == 6
    assert decode(data).shape[:2] == (80, 96)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import zlib

    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def test_png_and_webp_exif_orientation() -> None:
    """A phone's PNG or WebP with Orientation 6 was screened sideways (only JPEG tags were read)."""
    from uopsl.runtime.exif import image_orientation, webp_orientation

    rgb = draw_fake_fundus(96, seed=4)[:, :80]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    png = buf.tobytes()
    ihdr_end = 8 + 8 + 13 + 4
    tagged = png[:ihdr_end] + _png_chunk(b"eXIf", _tiff(6, "big")) + png[ihdr_end:]
    assert image_orientation(tagged) == 6 and image_orientation(png) == 1
    np.testing.assert_array_equal(decode(tagged), _upright_by_definition(decode(png), 6))
    exif = b"EXIF" + len(b"Exif\x00\x00" + _tiff(8)).to_bytes(4, "little") + b"Exif\x00\x00" + _tiff(8)
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\x08" + bytes(3) + (79).to_bytes(3, "little") + (95).to_bytes(3, "little")
    body = b"WEBP" + vp8x + b"ICCP" + (3).to_bytes(4, "little") + b"abc\x00" + exif
    webp = b"RIFF" + len(body).to_bytes(4, "little") + body
    assert webp_orientation(webp) == 8  # after an odd-sized chunk and its padding byte
    assert image_orientation(webp) == 8  # the dispatcher reads WebP too


def test_a_png_exif_chunk_after_the_image_data_is_applied_as_opencv_and_pil_apply_it() -> None:
    """PNG asks for eXIf before IDAT, but OpenCV's IMREAD_COLOR and PIL's exif_transpose also apply one after it:
    such a photograph was shown turned and screened as stored (session 46's mutation audit, X09)."""
    import io

    from PIL import Image, ImageOps

    from uopsl.runtime.exif import image_orientation

    rgb = draw_fake_fundus(96, seed=4)[:, :80]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    png = buf.tobytes()
    iend = png.rindex(b"IEND") - 4
    late = png[:iend] + _png_chunk(b"eXIf", _tiff(6, "big")) + png[iend:]
    assert image_orientation(late) == 6
    turned = decode(late)
    np.testing.assert_array_equal(turned, _upright_by_definition(decode(png), 6))
    # What the viewers show: the same turn, by OpenCV's own Exif handling and by PIL's.
    shown = cv2.imdecode(np.frombuffer(late, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape == turned.shape
    np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(late)))), turned)
    # Past IEND nothing is read: a chunk after the end is not part of the picture.
    assert image_orientation(png + _png_chunk(b"eXIf", _tiff(6, "big"))) == 1


@pytest.mark.parametrize("order", ["little", "big"])
def test_orientation_as_the_last_directory_entry_is_read(order: Order) -> None:
    """Writers sort IFD0 by tag: Orientation (0x0112) is the last entry when no later tag is written."""
    bo = b"II*\x00" if order == "little" else b"MM\x00*"
    entries = _entry(0x010F, 2, 4, b"Cam\x00", order) + _entry(0x0112, 3, 1, (6).to_bytes(2, order), order)
    block = bo + (8).to_bytes(4, order) + (2).to_bytes(2, order) + entries + bytes(4)
    assert tiff_orientation(block) == 6
    assert tiff_orientation(block[:-4 - 12] + bytes(4)) == 1  # claiming two entries, holding one: truncated
