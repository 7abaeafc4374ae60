"""Image files as cameras, phones and file transfers leave them (session-14 review of awkward files).

Trailing data after a JPEG's end marker, damaged JPEGs that libjpeg fills with
grey, 16-bit files, decompression bombs in every accepted format, formats the
runtime does not read, lossless JPEGs and oversized files.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import imagefile
from uopsl.runtime import preprocess as P
from uopsl.runtime.errors import ImageDecodeError, ImageFormatError, ImageTooLargeError
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess
from uopsl.runtime.quality import assess

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl" / "fundus"


def _jpeg(rgb: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params or [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def _encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok, ext
    return buf.tobytes()


def _cut_and_closed(data: bytes, fraction: float) -> bytes:
    """The file cut short inside its image data and closed with an end-of-image marker (a broken copy)."""
    start = imagefile.jpeg_scan_start(data)
    assert start is not None
    at = start + int((len(data) - start) * fraction)
    return data[:at] + b"\xff\xd9"


@pytest.mark.parametrize("tail", [b"SEFH" + bytes(40) + b"SEFT", b"\r\n", b"\xff" * 64,
                                  b"\x00\x00\x00\x18ftypmp42" + b"\xff\xd9\xff\xd8" * 100])
def test_data_after_the_jpeg_end_marker_is_not_damage(tail: bytes) -> None:
    """Phones append trailers and motion-photo videos; transfers add padding: all were 'damaged file'."""
    data = _jpeg(draw_fake_fundus(256, seed=1))
    assert not imagefile.is_truncated(data + tail)
    np.testing.assert_array_equal(decode(data + tail), decode(data))
    assert imagefile.is_truncated(data[: len(data) // 2])  # cut short: still refused
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode(data[: len(data) // 2] + tail[:2].replace(b"\xff", b"\x00"))


def test_png_with_trailing_bytes_and_a_cut_png() -> None:
    png = _encode(".png", draw_fake_fundus(128, seed=2))
    assert decode(png + b"trailer").shape == (128, 128, 3)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode(png[:-20])


@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.95])
def test_a_jpeg_cut_short_and_closed_is_refused_on_every_decode_path(fraction: float) -> None:
    """libjpeg fills what it could not decode with grey and only warns; the gate passed such photographs."""
    data = _cut_and_closed(_jpeg(draw_fake_fundus(512, seed=4)), fraction)
    with pytest.raises(ImageDecodeError, match="ends early"):
        decode(data)
    for size in (224, 320):  # 224: decoded at 1/2 scale; 320: in full
        with pytest.raises(ImageDecodeError, match="ends early"):
            preprocess(data, PreprocessConfig(size=size))


@pytest.mark.skipif(not TVHL.is_dir(), reason="../shared/data/tvhl not present")
def test_no_real_photograph_looks_like_grey_fill() -> None:
    paths = sorted(TVHL.glob("*.jpg"))[:300]
    assert len(paths) == 300
    for p in paths:
        data = p.read_bytes()
        assert preprocess(data, PreprocessConfig(size=224)).image.shape == (224, 224, 3), p  # 1/2-scale decode
        decode(data)


def test_a_dark_16bit_photograph_stays_too_dark() -> None:
    """16-bit data used to be scaled by its own peak: a too-dark photograph came out gradable."""
    dark = (draw_fake_fundus(320, seed=5).astype(np.float64) * 0.06).round().astype(np.uint8)
    png8 = _encode(".png", cv2.cvtColor(dark, cv2.COLOR_RGB2BGR))
    png16 = _encode(".png", cv2.cvtColor(dark.astype(np.uint16) * 257, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode(png16), decode(png8))
    cfg = PreprocessConfig(size=320)
    v8, v16 = assess(preprocess(png8, cfg)), assess(preprocess(png16, cfg))
    assert "too_dark" in v8.reasons and v16.reasons == v8.reasons


def test_header_sizes_of_every_accepted_format() -> None:
    img = cv2.cvtColor(draw_fake_fundus(96, seed=6)[:, :80], cv2.COLOR_RGB2BGR)
    for ext in (".jpg", ".png", ".bmp", ".tif", ".webp", ".jp2", ".ppm"):
        data = _encode(ext, img)
        assert imagefile.header_size(data) == (80, 96), ext
        assert decode(data).shape == (96, 80, 3), ext
    assert imagefile.header_size(_encode(".webp", img[:, :, :1].repeat(3, 2))) == (80, 96)


def _webp_vp8x(width: int, height: int) -> bytes:
    body = b"VP8X" + (10).to_bytes(4, "little") + bytes(4) + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body


def _j2k(width: int, height: int) -> bytes:
    siz = b"\xff\x51" + (41).to_bytes(2, "big") + bytes(2) + width.to_bytes(4, "big") + height.to_bytes(4, "big") \
        + bytes(8) + width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes(8) + (3).to_bytes(2, "big")
    return b"\xff\x4f" + siz + bytes(64)


@pytest.mark.parametrize("data", [_webp_vp8x(16383, 12000), _j2k(12000, 12000), b"P6\n60000 60000\n255\n" + bytes(64)],
                         ids=["webp", "j2k", "ppm"])
def test_bombs_are_refused_from_the_header(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 38-byte WebP cost 1.1 GiB and a 4 KB JPEG 2000 2.1 GiB before the pixel limit was checked."""
    monkeypatch.setattr(P, "_imdecode", lambda *a, **k: pytest.fail("decoded before the size was checked"))
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode(data)


def _jpeg_with_stray_byte_before_its_frame(width: int, height: int) -> bytes:
    data = bytearray(_jpeg(np.full((64, 64, 3), 90, np.uint8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data[:sof]) + b"\x00" + bytes(data[sof:])


def test_a_stray_byte_before_the_jpeg_frame_does_not_hide_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg skips stray bytes before a marker; the header walk stopped there, so a 700-byte file declaring
    16000x16000 pixels was decoded (1.9 GB) before the limit was checked (fuzz campaign, session 31)."""
    bomb = _jpeg_with_stray_byte_before_its_frame(16000, 16000)
    assert imagefile.header_size(bomb) == (16000, 16000)
    monkeypatch.setattr(P, "_imdecode", lambda *a, **k: pytest.fail("decoded before the size was checked"))
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode(bomb)


def test_a_stuffed_zero_among_stray_bytes_does_not_send_the_walk_astray(monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg discards FF 00 while it looks for a marker; the walk read it as a segment and jumped by the next
    two bytes onto a fake 64 x 64 frame header in a comment, while libjpeg decoded the real 4000 x 4000 one
    (second review of session 31)."""
    base = _jpeg(np.full((64, 64, 3), 90, np.uint8))
    sof = base.find(b"\xff\xc0")
    end = sof + 2 + int.from_bytes(base[sof + 2 : sof + 4], "big")
    real = bytearray(base[sof:end])
    real[5:9] = (4000).to_bytes(2, "big") + (4000).to_bytes(2, "big")
    head = base[:sof] + b"\x12\xff\x00"
    fake_at = len(head) + 2 + len(real) + 4 + 3
    jump = fake_at - (sof + 3)
    com = b"\xff\xfe" + (2 + 3 + end - sof).to_bytes(2, "big") + b"xxx" + base[sof:end]
    data = head + jump.to_bytes(2, "big") + bytes(real) + com + base[end:]
    assert imagefile.header_size(data) == (4000, 4000)
    monkeypatch.setattr(P, "_imdecode", lambda *a, **k: pytest.fail("decoded before the size was checked"))
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode(data, max_pixels=1_000_000)


def test_a_jpeg_with_a_stray_byte_is_still_read_as_libjpeg_reads_it() -> None:
    data = _jpeg_with_stray_byte_before_its_frame(64, 64)
    assert imagefile.jpeg_frame(data)[:3] == (64, 64, 8)
    assert decode(data).shape == (64, 64, 3)


def test_an_os2_bitmap_has_16_bit_sizes() -> None:
    """A BMP with the 12-byte core header stores 16-bit sizes: read as 32-bit, 256x256 became 16777472x1572865
    and a picture OpenCV reads was refused as too large (fuzz campaign, session 31)."""
    w, h = 256, 200
    row = (w * 3 + 3) // 4 * 4
    pixels = np.zeros((h, row), np.uint8)
    pixels[:, : w * 3] = np.tile([40, 90, 200], w)
    core = (12).to_bytes(4, "little") + w.to_bytes(2, "little") + h.to_bytes(2, "little") \
        + (1).to_bytes(2, "little") + (24).to_bytes(2, "little")
    head = b"BM" + (14 + 12 + pixels.size).to_bytes(4, "little") + bytes(4) + (26).to_bytes(4, "little")
    data = head + core + pixels.tobytes()
    assert imagefile.header_size(data) == (w, h)
    assert decode(data).shape == (h, w, 3)
    assert imagefile.header_size(data[:22]) == (w, h)  # the sizes are all a cut-short core header needs


def test_a_float_tiff_without_a_finite_sample_is_read_without_warnings() -> None:
    """np.nanmax over an all-NaN float TIFF warned "All-NaN slice encountered" on the console (fuzz, session 31)."""
    nan = _encode(".tiff", np.full((64, 64, 3), np.nan, np.float32))
    unit = np.full((64, 64, 3), 0.5, np.float32)
    unit[0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = decode(nan)
        # Finite samples in [0, 1] beside an infinite one are still read as [0, 1] data (no overflow warning).
        half = decode(_encode(".tiff", unit))
    assert img.shape == (64, 64, 3) and int(img.max()) == 0
    assert int(np.median(half)) == 128 and tuple(half[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize(("data", "name"), [
    (b"\x00\x00\x00\x18ftypheic" + bytes(64), "HEIC"),
    (b"8BPS" + bytes(64), "Photoshop"),
    (b"GIF89a" + bytes(64), "GIF"),
])
def test_known_formats_the_runtime_does_not_read(data: bytes, name: str) -> None:
    with pytest.raises(ImageFormatError, match=f"a {name}.*export the photograph as an ordinary JPEG") as err:
        decode(data)
    assert err.value.reason == "unsupported_format"
    with pytest.raises(ImageDecodeError, match=r"not an image file \(11 bytes"):
        decode(b"hello world")


def test_a_lossless_jpeg_is_not_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg cannot scale a lossless frame: it came back full size and the geometry was doubled."""
    data = _jpeg(draw_fake_fundus(512, seed=7))
    cfg = PreprocessConfig(size=224)
    assert P._jpeg_reduction(data, cfg) == 2
    sof = data.index(b"\xff\xc0")
    lossless = data[:sof] + b"\xff\xc3" + data[sof + 2 :]
    assert imagefile.jpeg_frame(lossless) == (512, 512, 8, True) and P._jpeg_reduction(lossless, cfg) == 1
    # And if a decoder ever returns another size than asked for, the geometry follows what it returned.
    monkeypatch.setattr(P, "_decode_reduced", lambda d, s, src: decode(d))
    pre = preprocess(data, cfg)
    assert (pre.geometry.orig_w, pre.geometry.orig_h) == (512, 512) and pre.original_shape == (512, 512, 3)


def test_a_12bit_jpeg_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(draw_fake_fundus(128, seed=8))
    sof = data.index(b"\xff\xc0")
    twelve = data[: sof + 4] + b"\x0c" + data[sof + 5 :]  # the frame's sample precision
    monkeypatch.setattr(P, "_imdecode", lambda *a, **k: None)  # as OpenCV builds without 12-bit support answer
    with pytest.raises(ImageFormatError, match="a 12-bit JPEG"):
        decode(twelve)


def test_a_file_larger_than_any_photograph_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "disk.jpg"
    with open(big, "wb") as fh:
        fh.truncate(5000)  # sparse
    with pytest.raises(ImageTooLargeError, match="is it a photograph"):
        P.read_bytes(big, max_bytes=4096)
    assert len(P.read_bytes(big)) == 5000


def test_a_webp_whose_size_cannot_be_read_is_not_decoded_blind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_imdecode", lambda *a, **k: pytest.fail("decoded without a size"))
    with pytest.raises(ImageDecodeError, match="the webp header cannot be read"):
        decode(b"RIFF\x20\x00\x00\x00WEBPXYZW" + bytes(24))


def test_a_photograph_on_a_grey_background_is_not_taken_for_fill() -> None:
    """Ben Graham's preprocessing (the common Kaggle copies of APTOS/EyePACS) leaves grey 128 around the field."""
    img = draw_fake_fundus(256, seed=12)
    field = img.max(axis=2) > 10
    img[~field] = 128
    data = _jpeg(img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert decode(data).shape == (256, 256, 3)
    assert preprocess(data, PreprocessConfig(size=224)).image.shape == (224, 224, 3)


def _tiff16(rgb16: np.ndarray, max_sample: int | None = None) -> bytes:
    """A minimal uncompressed little-endian RGB TIFF of uint16 samples, with MaxSampleValue when given."""
    import struct

    h, w, _ = rgb16.shape
    pixels = rgb16.astype("<u2").tobytes()
    entries: list[tuple[int, int, int, int | bytes]] = [
        (256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, struct.pack("<3H", 16, 16, 16)), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    if max_sample is not None:
        entries.append((281, 3, 3, struct.pack("<3H", *(max_sample,) * 3)))
    entries.sort()
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * len(entries) + 4
    extra = b""
    body = b""
    for tag, typ, count, value in entries:
        if isinstance(value, bytes):
            field = struct.pack("<I", extra_at + len(extra))
            extra += value
        elif tag == 273:
            field = b"STRP"  # patched below, once the strip's offset is known
        else:
            field = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, typ, count) + field
    strip_at = extra_at + len(extra)
    body = body.replace(b"STRP", struct.pack("<I", strip_at))
    return b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)) + body + b"\0" * 4 + extra + pixels


def test_a_16bit_tiff_that_declares_12bit_data_is_scaled_by_it() -> None:
    """12-bit camera data in a 16-bit TIFF came out 16x too dark once 16-bit files were read over the full range."""
    img = draw_fake_fundus(64, seed=9)
    twelve = ((img.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)
    declared = decode(_tiff16(twelve, max_sample=4095))
    assert np.abs(declared.astype(int) - img).max() <= 1
    silent = decode(_tiff16(twelve))  # no tag: the full 16-bit range, dark (the gate says so)
    assert silent.max() <= 16


def _tiff_packed(rgb: np.ndarray, bits: int, max_sample: int | None = None) -> bytes:
    """A minimal uncompressed little-endian RGB TIFF with samples packed at ``bits`` bits, MSB first (TIFF 6.0:
    FillOrder 1; rows padded to whole bytes), with MaxSampleValue when given."""
    import struct

    h, w, _ = rgb.shape
    rows = b""
    for row in rgb.reshape(h, w * 3).astype(np.int64):
        acc = 0
        for v in row:
            acc = (acc << bits) | int(v)
        pad = -(bits * w * 3) % 8
        rows += (acc << pad).to_bytes((bits * w * 3 + pad) // 8, "big")
    entries: list[tuple[int, int, int, int | bytes]] = [
        (256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, struct.pack("<3H", bits, bits, bits)), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(rows))]
    if max_sample is not None:
        entries.append((281, 3, 1, max_sample))
    entries.sort()
    extra_at = 8 + 2 + 12 * len(entries) + 4
    extra = struct.pack("<3H", bits, bits, bits)
    body = b""
    for tag, typ, count, value in entries:
        if isinstance(value, bytes):
            field = struct.pack("<I", extra_at)
        elif tag == 273:
            field = struct.pack("<I", extra_at + len(extra))
        else:
            field = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, typ, count) + field
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + body + b"\0" * 4 + extra + rows


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_a_tiff_packed_below_16_bits_is_scaled_by_its_own_depth(bits: int) -> None:
    """Session 36: OpenCV returns samples packed at 10-14 bits shifted to the top of 16 bits (a 12-bit 4095 as
    65520), and the decoder divided them by the declared 4095: 94 % of a 12-bit photograph came out 255."""
    top = (1 << bits) - 1
    rng = np.random.default_rng(bits)
    vals = rng.integers(0, top + 1, (6, 10, 3))
    want = (vals * 255 + top // 2) // top  # v * 255 / top, rounded (top is odd: no ties)
    got = decode(_tiff_packed(vals, bits))
    np.testing.assert_array_equal(got, want)
    assert (got == 255).mean() < 0.05


def test_a_packed_tiffs_max_sample_value_is_read_on_the_same_scale() -> None:
    """10-bit data in a 12-bit TIFF that says so (MaxSampleValue 1023) spans the whole 8-bit range; a
    MaxSampleValue beyond what 12 bits hold is not believed (the file's 12 bits are)."""
    rng = np.random.default_rng(7)
    ten = rng.integers(0, 1024, (6, 10, 3))
    got = decode(_tiff_packed(ten, 12, max_sample=1023))
    np.testing.assert_array_equal(got, (ten * 255 + 511) // 1023)
    twelve = rng.integers(0, 4096, (6, 10, 3))
    got = decode(_tiff_packed(twelve, 12, max_sample=60000))
    np.testing.assert_array_equal(got, (twelve * 255 + 2047) // 4095)


def test_the_packed_tiff_shift_is_read_from_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenCV that returned packed samples unshifted would be read unshifted (the probe asks the decoder)."""
    probe = P._tiff_unpack_shift.__wrapped__
    ones = cv2.imdecode(np.frombuffer(_tiff_packed(np.ones((1, 1, 3), np.int64), 12), np.uint8), cv2.IMREAD_UNCHANGED)
    assert int(ones.max()) == 1 << probe(12)  # what this OpenCV does to a 12-bit 1
    monkeypatch.setattr(P.cv2, "imdecode", lambda buf, flags: np.array([[1, 4095]], np.uint16))
    assert probe(12) == 0
    monkeypatch.setattr(P.cv2, "imdecode", lambda buf, flags: None)
    assert probe(12) == 4  # undecidable: what OpenCV 4.10 and 5.1 do


def test_results_from_an_earlier_decoding_are_screened_again(tiny_bundle: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A rerun skipped rows by file and model only: an upgrade's decoding fixes never reached an existing folder."""
    import json

    from tinybundle import fundus_jpeg
    from uopsl.runtime.api import Screener

    photos = [fundus_jpeg(tmp_path / "in" / f"{i}.jpg") for i in range(2)]
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        assert s.screen_to(out, [str(p) for p in photos]).screened == 2
        assert s.screen_to(out, [str(p) for p in photos]).screened == 0  # same decoding: skipped
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert {r["preprocess_version"] for r in rows} == {P.PREPROCESS_VERSION}
        rows[0]["preprocess_version"] = P.PREPROCESS_VERSION - 1
        del rows[1]["preprocess_version"]  # a row written before the field existed
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        with caplog.at_level(logging.WARNING, logger="uopsl.runtime.api"):
            assert s.screen_to(out, [str(p) for p in photos]).screened == 2
        assert "2 photograph(s) were screened by an earlier uopsl" in caplog.text


def _jp2_16bit(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jp2", img)
    assert ok
    return buf.tobytes()


def test_jpeg2000_depth_is_read_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV returns 9-15-bit JPEG 2000 samples unscaled: the header's depth says what white is (a 12-bit
    picture was read over 16 bits, 16x too dark), and signed samples are refused by name."""
    data = _jp2_16bit(np.zeros((32, 32, 3), np.uint16))
    assert imagefile.j2k_precision(data) == (16, False)
    codestream = data[data.index(b"\xff\x4f\xff\x51"):]
    assert imagefile.j2k_precision(codestream) == (16, False)
    twelve_bit_header = bytearray(codestream)
    twelve_bit_header[2 + 40] = 11  # Ssiz of the first component: unsigned, 12 bits
    assert imagefile.j2k_precision(bytes(twelve_bit_header)) == (12, False)
    img = draw_fake_fundus(64, seed=6)
    twelve = ((img.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)
    stored = _jp2_16bit(cv2.cvtColor(twelve, cv2.COLOR_RGB2BGR))  # OpenCV writes 16-bit: declare 12 by hand
    monkeypatch.setattr(P, "j2k_precision", lambda _data: (12, False))
    diff = np.abs(decode(stored).astype(int) - img)  # read over 16 bits it would be 16x darker (diff up to 240)
    assert diff.mean() < 0.5 and diff.max() <= 3  # OpenCV's JPEG 2000 encoder rounds a little
    monkeypatch.setattr(P, "j2k_precision", lambda _data: (12, True))
    with pytest.raises(ImageFormatError, match="signed 12-bit samples"):
        decode(stored)
