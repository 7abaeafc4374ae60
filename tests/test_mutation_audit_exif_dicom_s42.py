"""Mutation audit (session 42) of the photograph readers: ``runtime/exif.py`` and ``runtime/dicomfile.py``.

Single-point mutants (a bound moved by one, a check dropped, a branch swapped, an exception class narrowed)
were applied one at a time to a shadow copy of each module and the tests that exercise it were run against it
(tests/test_exif.py, test_dicom.py, test_image_files.py, test_preprocess.py, the session 36 runtime audit and
the pipeline and robustness suites). Each test here kills a mutant that slipped past all of those; its
docstring names the mutant and what a clinic would have suffered. Expected values are worked out by hand or by
a plain re-implementation written in the test (the Exif definition in numpy indexing, the grey-level rounding),
never by calling the code under test a second way. Files are built here: JPEGs with cv2.imencode and spliced
segments, DICOM with pydicom (the test extra installs it).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from uopsl.runtime.exif import jpeg_orientation
from uopsl.runtime.imagefile import jpeg_frame
from uopsl.runtime.preprocess import decode

Order = Literal["little", "big"]


# -- builders (independent of the code under test) -------------------------------------------------------
def _entry(tag: int, typ: int, count: int, value: bytes, order: Order) -> bytes:
    return tag.to_bytes(2, order) + typ.to_bytes(2, order) + count.to_bytes(4, order) + value.ljust(4, b"\x00")


def _orientation_entry(value: int, order: Order) -> bytes:
    return _entry(0x0112, 3, 1, value.to_bytes(2, order), order)


def _tiff(entries: list[bytes], order: Order = "little", *, tail: bytes = b"\x00\x00\x00\x00") -> bytes:
    """A TIFF block: header, IFD0 at offset 8 holding ``entries``, then ``tail`` (the next-IFD offset)."""
    head = (b"II*\x00" if order == "little" else b"MM\x00*") + (8).to_bytes(4, order)
    return head + len(entries).to_bytes(2, order) + b"".join(entries) + tail


def _make(order: Order) -> bytes:
    return _entry(0x010F, 2, 4, b"Cam\x00", order)  # Make, inline ASCII


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def _exif_segment(block: bytes) -> bytes:
    return _segment(0xE1, b"Exif\x00\x00" + block)


def _jpeg(rgb: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _after_app0(jpeg: bytes, insert: bytes) -> bytes:
    """``jpeg`` (SOI, JFIF APP0, ...) with ``insert`` placed right after its APP0 segment."""
    assert jpeg[:4] == b"\xff\xd8\xff\xe0"
    end = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:end] + insert + jpeg[end:]


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """The Exif specification's eight orientations written with numpy indexing."""
    t = img.transpose(1, 0, 2)
    return {1: img, 2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1],
            5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1]}[orientation]


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return _jpeg(draw_fake_fundus(64, seed=7)[:, :48])  # 64 x 48: sideways shows in the shape


# -- exif.py: the JPEG segment walk ----------------------------------------------------------------------
def test_a_fill_byte_before_the_exif_and_frame_markers_is_skipped(small_jpeg: bytes) -> None:
    """E06 (a fill byte 0xFF skipped as two bytes): any number of 0xFF may precede a marker (libjpeg skips them).
    Stepping two bytes landed on the marker code itself, so an odd run of fill bytes hid the segment after it:
    the Exif tag (a photograph screened sideways) and the frame header (the size checked before decoding)."""
    data = _after_app0(small_jpeg, b"\xff" + _exif_segment(_tiff([_make("big"), _orientation_entry(6, "big")], "big")))
    assert jpeg_orientation(data) == 6
    assert decode(data).shape == (48, 64, 3)
    sof = next(i for i in range(2, len(small_jpeg)) if small_jpeg[i] == 0xFF and small_jpeg[i + 1] == 0xC0)
    padded = small_jpeg[:sof] + b"\xff" + small_jpeg[sof:]  # one fill byte before the start-of-frame marker
    frame = jpeg_frame(padded)
    assert frame is not None and frame[:3] == (48, 64, 8)


@pytest.mark.parametrize("marker", [0x01, 0xD0, 0xD7])
def test_markers_without_a_length_are_stepped_over(small_jpeg: bytes, marker: int) -> None:
    """E08, E09 (RST7 or TEM read as a segment with a length): TEM and RST0-RST7 stand alone, and libjpeg steps
    over them in a header. Read with a length, the two bytes after them (here the Exif marker, 0xFFE1) sent the
    walk 65 KB on: the Exif tag after them was missed and the photograph screened as stored."""
    block = _tiff([_make("little"), _orientation_entry(8, "little")])
    data = _after_app0(small_jpeg, bytes((0xFF, marker)) + _exif_segment(block))
    assert jpeg_orientation(data) == 8
    assert np.array_equal(decode(data), _upright(decode(small_jpeg), 8))


def test_the_walk_resumes_at_the_byte_after_a_segment(small_jpeg: bytes) -> None:
    """E14 (the next segment looked for at ``offset + length`` instead of ``offset + 2 + length``): the walk then
    read a segment's last two payload bytes as a marker. A comment (or an ICC profile: binary data) ending in
    FF D9 read as the end of the image: the Exif tag after it and the frame size were never found."""
    comment = _segment(0xFE, b"exported by the camera\xff\xd9")
    block = _tiff([_make("big"), _orientation_entry(6, "big")], "big")
    data = _after_app0(small_jpeg, comment + _exif_segment(block))
    assert jpeg_orientation(data) == 6
    frame = jpeg_frame(data)
    assert frame is not None and frame[:2] == (48, 64)



def test_only_an_app1_segment_holds_the_exif_orientation(small_jpeg: bytes) -> None:
    """E18 (any APPn starting ``Exif\\0\\0`` taken): the Exif tag lives in APP1 only; OpenCV and PIL ignore the same
    bytes in another segment (here APP2). Read from there, the photograph was turned where every viewer shows it
    as stored: the clinic's screen and the report's thumbnail disagreed with the image the model saw."""
    block = _tiff([_make("little"), _orientation_entry(6, "little")])
    data = _after_app0(small_jpeg, _segment(0xE2, b"Exif\x00\x00" + block))
    assert jpeg_orientation(data) == 1
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applying the orientation itself
    assert bgr is not None and bgr.shape == (64, 48, 3)
    assert decode(data).shape == (64, 48, 3)


@pytest.mark.parametrize("head", [
    b"\x08\x00\x00\x20AE\x04\x00abcd",  # element 0x2000 of group 0x0008: beyond the 0x1000 bound
    b"\x08\x00\x10\x00abcd\x00\x00\x00\x00",  # lower-case "VR" with a long implicit length
    b"\x08\x00\x10\x00\x01\x02\x03\x04\x00\x00\x00\x00",  # an implicit length of 0x04030201
    b"\x08\x00\x10\x00AE\x04\x00",  # 8 bytes: too short to tell
], ids=["element", "lowercase", "implicit_length", "short"])
def test_bytes_that_only_start_like_a_bare_dataset_are_not_dicom(head: bytes) -> None:
    """D03-D06 (a bound of the bare-dataset sniff dropped or loosened): a file taken for DICOM goes to pydicom,
    and without pydicom installed its row says "install pydicom", a reason a rerun retries for ever, instead of
    the file being refused as not an image."""
    from uopsl.runtime.dicomfile import is_dicom

    assert not is_dicom(head)
    assert is_dicom(b"\x08\x00\x10\x00AE\x04\x00abcd")  # the control: a plausible explicit-VR first element


# -- dicomfile.py ----------------------------------------------------------------------------------------
pydicom = pytest.importorskip("pydicom", reason="pydicom is installed by the test extra (uopsl[dicom])")
from pydicom.uid import DeflatedExplicitVRLittleEndian  # noqa: E402

from dicomkit import dicom_dataset as _dataset  # noqa: E402
from dicomkit import dicom_file as _dicom  # noqa: E402
from dicomkit import saved as _saved  # noqa: E402

from uopsl.runtime.errors import ImageDecodeError, ImageTooLargeError  # noqa: E402

@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return draw_fake_fundus(64, seed=21)


def test_a_deflated_file_with_a_long_meta_element_after_its_syntax_is_read(photo: np.ndarray) -> None:
    """D10 (only OB given a 4-byte length in the file meta walk): (0002,0026) Source Presentation Address is a UR,
    whose length also takes 4 bytes after 2 reserved ones. Read with a 2-byte length the walk stopped inside the
    element, the deflated data was inflated from the wrong byte, and a good photograph was a "damaged" file."""
    ds = _dataset(photo, syntax=DeflatedExplicitVRLittleEndian)
    ds.file_meta.SourcePresentationAddress = "http://pacs.example/studies/1"
    data = _saved(ds)
    assert b"\x02\x00\x26\x00UR\x00\x00" in data[:400]  # the element is there, after the transfer syntax
    assert np.array_equal(decode(data), photo)


def test_a_deflated_16bit_photograph_at_the_pixel_limit_with_a_large_header_is_read() -> None:
    """D12, D13 (the inflation cap counted 1 byte a pixel, or 1 MB for the header's own elements): the cap must
    leave room for what a genuine picture at the limit needs, 16-bit RGB (6 bytes a pixel) plus a header with a
    few MB of its own (a private block, an embedded icon). Smaller, a deflated photograph at the limit was
    refused as a decompression bomb ("is it a photograph?")."""
    side = 1900  # 3.61 Mpx: 21.7 MB of 16-bit RGB, more than 1 byte a pixel + 16 MB
    tile = (np.arange(19 * 19 * 3, dtype=np.uint32).reshape(19, 19, 3) * 1117 % 65536).astype(np.uint16)
    pixels = np.tile(tile, (side // 19, side // 19, 1))
    ds = _dataset(pixels, syntax=DeflatedExplicitVRLittleEndian)
    ds.private_block(0x0009, "UOPSL AUDIT", create=True).add_new(0x01, "OB", bytes(2 << 20))
    data = _saved(ds)
    got = decode(data, max_pixels=side * side)
    want = ((tile.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
    assert got.shape == (side, side, 3)
    assert np.array_equal(got[:19, :19], want) and np.array_equal(got[-19:, -19:], want)
    with pytest.raises(ImageTooLargeError):  # the control: one pixel fewer allowed, the header refuses it
        decode(data, max_pixels=side * side - 1)


def test_a_deflated_file_whose_compressed_data_is_damaged_is_a_damaged_file(photo: np.ndarray) -> None:
    """D14 (zlib's error not caught by the inflation count): a deflated DICOM whose first compressed block is
    invalid (block type 3) raised zlib.error out of the reader: an "internal error" row (and a stopped training
    cache) instead of a refused file."""
    data = _dicom(photo, syntax=DeflatedExplicitVRLittleEndian)
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000): the meta group's length
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # where the deflated dataset starts
    bad = data[:meta_end] + b"\xff" + data[meta_end + 1:]  # BFINAL 1, BTYPE 11: no such block type
    with pytest.raises(ImageDecodeError, match=r"a damaged DICOM file \(its deflated data: .*invalid block type"):
        decode(bad)
