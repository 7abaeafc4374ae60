"""TIFF files holding several pictures: OpenCV decodes the first IFD only, so a file with both eyes (or a
series) was screened by its first picture and the rest never seen. Thumbnails and masks are not pictures."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import imagefile
from uopsl.runtime.errors import ImageFormatError
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess


def _tiff(pages: list[tuple[np.ndarray, int | None]], *, big: bool = False, loop: bool = False,
          motorola: bool = False, subfile_type: int = 4, sized: bool = True) -> bytes:
    """An uncompressed 8-bit RGB TIFF (BigTIFF with ``big``), one IFD per ``(rgb, NewSubfileType)``.

    ``NewSubfileType`` None leaves the tag out; ``subfile_type``: its TIFF type (3 SHORT, 4 LONG, 16 LONG8,
    BigTIFF only). ``sized`` False leaves ImageWidth and ImageLength out of every IFD but the first. ``loop``: the last
    IFD points back to the first. ``motorola``: big-endian ("MM") instead of little-endian ("II").
    """
    o = ">" if motorola else "<"
    word, count_fmt, off_fmt = (o + "Q", o + "Q", o + "Q") if big else (o + "I", o + "H", o + "I")
    head = 16 if big else 8
    entry_size = 20 if big else 12
    blobs: list[bytes] = []
    ifds: list[list[tuple[int, int, int, int]]] = []
    for rgb, subfile in pages:
        h, w, _ = rgb.shape
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
                   (273, 4, 1, -1), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, rgb.size), (284, 3, 1, 1)]
        if subfile is not None:
            entries.append((254, subfile_type, 1, subfile))
        if not sized and ifds:
            entries = [e for e in entries if e[0] not in (256, 257)]
        ifds.append(sorted(entries))
        blobs.append(np.ascontiguousarray(rgb, np.uint8).tobytes())
    # Layout: header, then each IFD followed by its strip.
    offsets: list[int] = []
    at = head
    for entries, blob in zip(ifds, blobs):
        offsets.append(at)
        at += struct.calcsize(count_fmt) + entry_size * len(entries) + struct.calcsize(off_fmt) + len(blob)
    magic = b"MM\0" if motorola else b"II"
    out = bytearray(magic + (b"+" if motorola else b"+\0") + struct.pack(o + "HHQ", 8, 0, head) if big
                    else magic + (b"*" if motorola else b"*\0") + struct.pack(o + "I", head))
    for k, (entries, blob) in enumerate(zip(ifds, blobs)):
        ifd_size = struct.calcsize(count_fmt) + entry_size * len(entries) + struct.calcsize(off_fmt)
        strip_at = offsets[k] + ifd_size
        out += struct.pack(count_fmt, len(entries))
        for tag, typ, count, value in entries:
            value = strip_at if value == -1 else value
            # Values sit left-justified in the value field (a SHORT in its first 2 bytes, a LONG in its first 4).
            field = struct.pack(o + {3: "H", 4: "I", 16: "Q"}[typ], value).ljust(8 if big else 4, b"\0")
            out += struct.pack(o + "HH", tag, typ) + struct.pack(word, count) + field
        nxt = offsets[k + 1] if k + 1 < len(offsets) else (offsets[0] if loop else 0)
        out += struct.pack(off_fmt, nxt) + blob
    return bytes(out)


def _full(data: bytes) -> int | None:
    """Full-size pictures :func:`imagefile.tiff_pictures` counts (None: no TIFF, or no IFD with a size)."""
    got = imagefile.tiff_pictures(data)
    return None if got is None else got.full_size


def _fundus(seed: int, size: int = 128) -> np.ndarray:
    return draw_fake_fundus(size, seed=seed)


def test_the_builder_writes_tiffs_opencv_reads() -> None:
    """The test files are real TIFFs: OpenCV decodes a single page to its pixels, classic and BigTIFF."""
    img = _fundus(1)
    for big in (False, True):
        got = cv2.imdecode(np.frombuffer(_tiff([(img, None)], big=big), np.uint8), cv2.IMREAD_COLOR)
        assert got is not None and np.array_equal(cv2.cvtColor(got, cv2.COLOR_BGR2RGB), img)


@pytest.mark.parametrize("big", [False, True])
def test_pictures_are_counted_and_thumbnails_and_masks_are_not(big: bool) -> None:
    a, b, thumb = _fundus(1), _fundus(2), cv2.resize(_fundus(1), (32, 32))
    assert _full(_tiff([(a, None)], big=big)) == 1
    assert _full(_tiff([(a, 0), (thumb, 1)], big=big)) == 1  # reduced resolution
    assert _full(_tiff([(a, 0), (a, 4)], big=big)) == 1  # transparency mask
    assert _full(_tiff([(a, 2), (b, 2)], big=big)) == 2  # pages of a multi-page file
    assert _full(_tiff([(a, None), (b, None), (thumb, 1), (a, None)], big=big)) == 3


@pytest.mark.parametrize("big", [False, True])
def test_big_endian_files_and_a_subfile_type_written_as_a_short_or_long8(big: bool) -> None:
    """NewSubfileType is a LONG; a SHORT sits in the value field's first two bytes, which in a big-endian
    file read as a LONG give 65,536 times the value (a thumbnail counted as a picture); a LONG8's first four
    bytes are its high half, 0."""
    a, thumb = _fundus(1), cv2.resize(_fundus(1), (32, 32))
    for typ in (4, 3, 16) if big else (4, 3):
        data = _tiff([(a, 0), (thumb, 1)], big=big, motorola=True, subfile_type=typ)
        got = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert got is not None and np.array_equal(cv2.cvtColor(got, cv2.COLOR_BGR2RGB), a)
        assert _full(data) == 1
        assert _full(_tiff([(a, 2), (a, 2)], big=big, motorola=True, subfile_type=typ)) == 2


def test_a_looping_or_broken_chain_ends() -> None:
    a = _fundus(1)
    assert _full(_tiff([(a, None), (a, None)], loop=True)) == 2
    one = bytearray(_tiff([(a, None)]))
    nxt = 8 + 2 + 12 * 10
    one[nxt : nxt + 4] = struct.pack("<I", len(one) + 1000)  # next IFD past the end of the file
    assert _full(bytes(one)) == 1
    assert _full(b"II*\0" + struct.pack("<I", 0)) is None  # no IFD at all
    # Overlapping IFDs of 4,096 entries each: reading stops after 65,536 entries and says the count is partial.
    n_ifds, count = 20, 4096
    ifd_size = 2 + 12 * count + 4
    crafted = bytearray(b"II*\0" + struct.pack("<I", 8) + bytes(n_ifds * ifd_size))
    for k in range(n_ifds):
        at = 8 + k * ifd_size
        crafted[at : at + 2] = struct.pack("<H", count)
        crafted[at + 2 : at + 14] = struct.pack("<HHII", 256, 4, 1, 64)  # a size, so the IFD counts
        crafted[at + 14 : at + 26] = struct.pack("<HHII", 257, 4, 1, 64)
        nxt = at + ifd_size if k + 1 < n_ifds else 0
        crafted[at + 2 + 12 * count : at + ifd_size] = struct.pack("<I", nxt)
    got = imagefile.tiff_pictures(bytes(crafted))
    assert got is not None and not got.complete and got.full_size < n_ifds
    assert _full(b"\xff\xd8\xff") is None  # not a TIFF


def test_a_tiff_with_two_photographs_is_refused_on_every_decode_path(tmp_path: Path) -> None:
    """A multi-page file written by libtiff (through OpenCV) as well as the hand-built one."""
    left, right = _fundus(1, 256), _fundus(2, 256)
    path = tmp_path / "both_eyes.tif"
    assert cv2.imwritemulti(str(path), [cv2.cvtColor(x, cv2.COLOR_RGB2BGR) for x in (left, right)])
    for data in (path.read_bytes(), _tiff([(left, None), (right, None)])):
        for read in (decode, lambda d: preprocess(d, PreprocessConfig(size=128))):
            with pytest.raises(ImageFormatError, match="a TIFF holding 2 full-size pictures.*save each page") as err:
                read(data)
            assert err.value.reason == "unsupported_format"


def test_camera_thumbnails_pass_and_a_thumbnail_first_is_refused() -> None:
    """An Exif-style thumbnail page is often not flagged, or has no size (a JPEG thumbnail); a file whose first
    page is the reduced copy would have been screened by the copy."""
    img = _fundus(3, 256)
    small = cv2.resize(img, (64, 48))
    assert np.array_equal(decode(_tiff([(img, None), (small, None)])), img)  # unflagged, 1/21 of the pixels
    assert np.array_equal(decode(_tiff([(img, None), (small, None)], sized=False)), img)  # no size at all
    with pytest.raises(ImageFormatError, match=r"first page is a reduced copy \(64x48\) and whose photograph is "
                                               r"on a later page \(256x256\)"):
        decode(_tiff([(small, 1), (img, 0)]))
    with pytest.raises(ImageFormatError, match="2 full-size pictures"):
        decode(_tiff([(img, None), (cv2.resize(img, (200, 200)), None)]))  # two of similar size: two pictures
    half = cv2.resize(img, (128, 128))  # an unflagged half-size preview: a quarter of the pixels
    assert np.array_equal(decode(_tiff([(img, None), (half, None)])), img)
    with pytest.raises(ImageFormatError, match=r"first page is a reduced copy \(128x128\)"):
        decode(_tiff([(half, None), (img, None)]))


def test_a_tiff_with_a_thumbnail_is_screened_as_before() -> None:
    img = _fundus(3, 256)
    data = _tiff([(img, 0), (cv2.resize(img, (64, 64)), 1)])
    assert np.array_equal(decode(data), img)
    single = preprocess(_tiff([(img, None)]), PreprocessConfig(size=128))
    assert np.array_equal(preprocess(data, PreprocessConfig(size=128)).image, single.image)


def test_a_screening_run_lists_the_file_with_its_reason(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    from uopsl.runtime.api import Screener

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "pair.tif").write_bytes(_tiff([(_fundus(1, 256), None), (_fundus(2, 256), None)]))
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        s.screen_to(out, [str(inputs)])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["status"] == "error" and rows[0]["reasons"] == ["unsupported_format"]
    assert "2 full-size pictures" in rows[0]["error"]
