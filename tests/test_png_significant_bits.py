"""16-bit PNGs holding fewer significant bits: the specification has them scaled up to 16 bits and declared
in sBIT, but some cameras write 10-14-bit data unscaled (0-4095) and only declare it. Those came out 16x too
dark (``too_dark``); a scaled file, however dark, must still read as it is."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from uopsl.runtime import imagefile
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess


def _png16(rgb16: np.ndarray, sbit: bytes | None = None, *, after_idat: bool = False) -> bytes:
    """A 16-bit PNG of ``rgb16`` (RGB order) with an sBIT chunk carrying ``sbit`` (before IDAT, or after it)."""
    img = cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR) if rgb16.ndim == 3 else rgb16
    ok, buf = cv2.imencode(".png", img)
    assert ok
    data = buf.tobytes()
    if sbit is None:
        return data
    chunk = struct.pack(">I", len(sbit)) + b"sBIT" + sbit + struct.pack(">I", zlib.crc32(b"sBIT" + sbit))
    at = data.index(b"IEND") - 4 if after_idat else 8 + 25  # after IHDR (8 signature + 25 chunk bytes)
    return data[:at] + chunk + data[at:]


def _twelve_bit(img: np.ndarray) -> np.ndarray:
    return ((img.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)


def test_the_declared_bits_are_read_from_the_header() -> None:
    img16 = _twelve_bit(draw_fake_fundus(64, seed=1))
    assert imagefile.png_significant_bits(_png16(img16, b"\x0c\x0c\x0c")) == 12
    assert imagefile.png_significant_bits(_png16(img16, b"\x0a\x0c\x0b")) == 12  # the widest channel
    assert imagefile.png_significant_bits(_png16(img16[..., 0], b"\x0e")) == 14  # grey
    assert imagefile.png_significant_bits(_png16(img16, b"\x10\x10\x10")) is None  # all 16 bits
    assert imagefile.png_significant_bits(_png16(img16)) is None  # nothing declared
    assert imagefile.png_significant_bits(_png16(img16, b"\x0c\x0c\x0c", after_idat=True)) is None  # misplaced
    assert imagefile.png_significant_bits(_png16(img16, b"\x0c")) is None  # too short for RGB
    assert imagefile.png_significant_bits(_png16(img16, b"\x0c\x0c\x0c\x0c")) is None  # too long: libpng ignores it
    assert imagefile.png_significant_bits(_png16(img16, b"\x0c\x00\x0c")) is None  # a 0 byte: libpng ignores it
    assert imagefile.png_significant_bits(_png16(img16, b"\x0c\x11\x0c")) is None  # 17 bits in a 16-bit file
    ok, eight = cv2.imencode(".png", draw_fake_fundus(64, seed=1))
    assert ok and imagefile.png_significant_bits(eight.tobytes()) is None  # 8-bit: nothing to scale


def test_unscaled_12bit_data_is_read_over_its_declared_range() -> None:
    img = draw_fake_fundus(256, seed=2)
    data = _png16(_twelve_bit(img), b"\x0c\x0c\x0c")
    assert np.abs(decode(data).astype(int) - img).max() <= 1
    undeclared = decode(_png16(_twelve_bit(img)))
    assert undeclared.max() <= 16  # as before: the full 16-bit range, dark
    cfg = PreprocessConfig(size=128)
    assert np.array_equal(preprocess(data, cfg).image, preprocess(img, cfg).image)


@pytest.mark.parametrize("scaling", ["shift", "replicate"])
def test_scaled_data_is_read_as_it_is(scaling: str) -> None:
    """What the specification asks for: 12 bits scaled up (by a shift, or repeating the high bits)."""
    twelve = _twelve_bit(draw_fake_fundus(128, seed=3)).astype(np.uint32)
    scaled = (twelve << 4) if scaling == "shift" else (twelve << 4) | (twelve >> 8)
    plain = decode(_png16(scaled.astype(np.uint16)))
    assert np.array_equal(decode(_png16(scaled.astype(np.uint16), b"\x0c\x0c\x0c")), plain)
    dark = (scaled // 32).astype(np.uint16) & 0xFFF0  # a dark but scaled photograph: every value below 4096
    assert dark.max() < 4096
    assert np.array_equal(decode(_png16(dark, b"\x0c\x0c\x0c")), decode(_png16(dark)))  # not brightened 16x


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_the_specifications_rounded_scaling_is_read_as_it_is(bits: int) -> None:
    """PNG's recommended scaling, v * 65535 / (2**bits - 1) rounded, sets low bits too: a dark photograph
    scaled so (every sample below 2**bits) was once taken for unscaled data and brightened up to 69x."""
    top = (1 << bits) - 1
    # As dark as it must be for every scaled sample to stay below 2**bits: 1/64 of full scale at 10 bits.
    dark = draw_fake_fundus(128, seed=4).astype(np.int64) * ((1 << (2 * bits - 16)) - 1) // 255
    scaled = ((dark * 65535 + top // 2) // top).astype(np.uint16)
    assert scaled.max() <= top and (scaled & ((1 << (16 - bits)) - 1)).any()  # the case the old rule missed
    sbit = bytes([bits]) * 3
    assert np.array_equal(decode(_png16(scaled, sbit)), decode(_png16(scaled)))


def test_the_alpha_plane_keeps_its_own_range() -> None:
    """Only the colour planes are read over the declared range: half-transparent stays half-transparent."""
    img = draw_fake_fundus(64, seed=5)
    twelve = _twelve_bit(img)
    rgba = np.dstack([cv2.cvtColor(twelve, cv2.COLOR_RGB2BGR), np.full(twelve.shape[:2], 32768, np.uint16)])
    ok, buf = cv2.imencode(".png", rgba)
    assert ok
    data = buf.tobytes()
    chunk_body = b"\x0c\x0c\x0c\x10"
    chunk = struct.pack(">I", 4) + b"sBIT" + chunk_body + struct.pack(">I", zlib.crc32(b"sBIT" + chunk_body))
    data = data[:33] + chunk + data[33:]
    got = decode(data).astype(int)
    expected = (img.astype(int) * 32768 + 32767) // 65535  # composited over black at half opacity
    assert np.abs(got - expected).max() <= 2


def _rgba16_png(rgb16: np.ndarray, alpha16: np.ndarray, sbit: bytes) -> bytes:
    ok, buf = cv2.imencode(".png", np.dstack([cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR), alpha16]))
    assert ok
    data = buf.tobytes()
    chunk = struct.pack(">I", len(sbit)) + b"sBIT" + sbit + struct.pack(">I", zlib.crc32(b"sBIT" + sbit))
    return data[:33] + chunk + data[33:]


def _grey_alpha16_png(grey16: np.ndarray, alpha16: np.ndarray, sbit: bytes) -> bytes:
    """A 16-bit grey + alpha PNG (colour type 4), written by hand: OpenCV's encoder does not write that type."""
    h, w = grey16.shape
    rows = np.dstack([grey16, alpha16]).astype(">u2").reshape(h, w * 2)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + chunk(b"sBIT", sbit) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_an_unscaled_alpha_plane_is_read_over_its_own_declared_range() -> None:
    """A camera that leaves its colour unscaled may leave an opaque alpha at 4095 too: that is opaque, not 6 %
    opaque (the photograph came out black: too_dark). Each plane answers "scaled or not" for itself."""
    img = draw_fake_fundus(64, seed=6)
    twelve = _twelve_bit(img)
    opaque12 = np.full(img.shape[:2], 4095, np.uint16)
    assert imagefile.png_significant_bits(_rgba16_png(twelve, opaque12, b"\x0c\x0c\x0c\x0c"), alpha=True) == 12
    assert imagefile.png_significant_bits(_png16(twelve, b"\x0c\x0c\x0c"), alpha=True) is None  # no alpha plane
    both = decode(_rgba16_png(twelve, opaque12, b"\x0c\x0c\x0c\x0c"))
    assert np.abs(both.astype(int) - img).max() <= 1
    shifted = twelve << 4  # colour scaled as the specification asks, alpha left unscaled
    assert np.abs(decode(_rgba16_png(shifted, opaque12, b"\x0c\x0c\x0c\x0c")).astype(int) - img).max() <= 1
    # The alpha declared 12 bits but scaled (opaque = 65535): read as it is.
    scaled_alpha = decode(_rgba16_png(twelve, np.full(img.shape[:2], 65535, np.uint16), b"\x0c\x0c\x0c\x0c"))
    assert np.array_equal(scaled_alpha, both)
    half12 = np.full(img.shape[:2], 2047, np.uint16)  # unscaled half opacity
    half = decode(_rgba16_png(twelve, half12, b"\x0c\x0c\x0c\x0c")).astype(int)
    assert np.abs(half - (img.astype(int) * 2047 + 2047) // 4095).max() <= 2
    # An RGBA sBIT of 3 bytes is one libpng ignores ("bad length"): so is it here, for both planes.
    assert imagefile.png_significant_bits(_rgba16_png(twelve, opaque12, b"\x0c\x0c\x0c")) is None
    grey = (twelve[..., 1]).astype(np.uint16)
    got = decode(_grey_alpha16_png(grey, opaque12, b"\x0c\x0c"))
    assert np.abs(got[..., 0].astype(int) - img[..., 1]).max() <= 1
