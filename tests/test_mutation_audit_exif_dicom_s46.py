"""Mutation audit (session 46) of the photograph readers: ``runtime/exif.py`` and ``runtime/dicomfile.py``.

Single-point mutants (a check dropped, a set member left out, a constant or branch changed) were applied one at
a time to a shadow copy of each module and run against tests/test_exif.py, test_dicom.py, test_image_files.py,
test_tiff_pages.py and session 42's audit of the same modules. Each test here kills a mutant that slipped past
all of those; its docstring names the mutant (X = exif.py, D = dicomfile.py) and what a clinic would suffer.
Expected values come from the Exif definition written with numpy indexing, hand-built containers, or pixel
arithmetic in the test, never from the code under test called another way. Files are built here: TIFF and WebP
containers by hand, JPEGs with cv2.imencode, DICOM with pydicom (the test extra installs it).
"""

from __future__ import annotations

import io
from typing import Literal

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from uopsl.runtime.exif import image_orientation
from uopsl.runtime.preprocess import decode

Order = Literal["little", "big"]


# -- builders (independent of the code under test) -------------------------------------------------------
def _entry(tag: int, typ: int, count: int, value: bytes, order: Order) -> bytes:
    return tag.to_bytes(2, order) + typ.to_bytes(2, order) + count.to_bytes(4, order) + value.ljust(4, b"\x00")


def _exif_block(orientation: int, order: Order = "little") -> bytes:
    """A TIFF block as an Exif body: IFD0 at offset 8 holding Make and Orientation."""
    head = (b"II*\x00" if order == "little" else b"MM\x00*") + (8).to_bytes(4, order)
    entries = [_entry(0x010F, 2, 4, b"Cam\x00", order), _entry(0x0112, 3, 1, orientation.to_bytes(2, order), order)]
    return head + len(entries).to_bytes(2, order) + b"".join(entries) + bytes(4)


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """The Exif specification's eight orientations written with numpy indexing."""
    t = img.transpose(1, 0, 2)
    return {1: img, 2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1],
            5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1]}[orientation]


def _tiff_file(rgb: np.ndarray, orientation: int) -> bytes:
    """An uncompressed little-endian RGB TIFF (one strip) whose IFD0 holds ``orientation``."""
    h, w = rgb.shape[:2]
    n_entries = 11
    bps_at = 8 + 2 + 12 * n_entries + 4
    pixels_at = bps_at + 6
    short, long_ = 3, 4
    entries = [
        _entry(256, short, 1, w.to_bytes(2, "little"), "little"),  # ImageWidth
        _entry(257, short, 1, h.to_bytes(2, "little"), "little"),  # ImageLength
        _entry(258, short, 3, bps_at.to_bytes(4, "little"), "little"),  # BitsPerSample -> 8, 8, 8
        _entry(259, short, 1, (1).to_bytes(2, "little"), "little"),  # Compression: none
        _entry(262, short, 1, (2).to_bytes(2, "little"), "little"),  # PhotometricInterpretation: RGB
        _entry(273, long_, 1, pixels_at.to_bytes(4, "little"), "little"),  # StripOffsets
        _entry(274, short, 1, orientation.to_bytes(2, "little"), "little"),  # Orientation
        _entry(277, short, 1, (3).to_bytes(2, "little"), "little"),  # SamplesPerPixel
        _entry(278, short, 1, h.to_bytes(2, "little"), "little"),  # RowsPerStrip
        _entry(279, long_, 1, (h * w * 3).to_bytes(4, "little"), "little"),  # StripByteCounts
        _entry(284, short, 1, (1).to_bytes(2, "little"), "little"),  # PlanarConfiguration: interleaved
    ]
    assert len(entries) == n_entries
    ifd = n_entries.to_bytes(2, "little") + b"".join(entries) + bytes(4)
    return b"II*\x00" + (8).to_bytes(4, "little") + ifd + b"\x08\x00" * 3 + np.ascontiguousarray(rgb).tobytes()


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + len(body).to_bytes(4, "little") + body + b"\x00" * (len(body) & 1)


def _extended_webp(rgb: np.ndarray, exif: bytes) -> tuple[bytes, bytes]:
    """(a lossless WebP of ``rgb`` from OpenCV, the same bitstream in an extended file with an EXIF chunk)."""
    ok, buf = cv2.imencode(".webp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok
    plain = buf.tobytes()
    assert plain[:4] == b"RIFF" and plain[8:16] == b"WEBPVP8L"  # a simple (not extended) lossless file
    h, w = rgb.shape[:2]
    vp8x = _riff_chunk(b"VP8X", b"\x08" + bytes(3) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + plain[12:] + _riff_chunk(b"EXIF", exif)
    return plain, b"RIFF" + len(body).to_bytes(4, "little") + body


# -- exif.py -------------------------------------------------------------------------------------------
def test_a_webp_exif_chunk_holding_the_bare_tiff_block_is_read() -> None:
    """X11 (the first 6 bytes of every WebP EXIF chunk dropped as if they were ``Exif\\0\\0``): the WebP container
    specification stores the TIFF block itself in the chunk, as libwebp's webpmux and ExifTool write it; only some
    writers keep the JPEG prefix, and only that form was tested. Stripped, the TIFF header was lost and a phone's
    WebP tagged Orientation 6 was screened sideways."""
    rgb = draw_fake_fundus(64, seed=46)[:, :40]  # 64 x 40: sideways shows in the shape
    plain, tagged = _extended_webp(rgb, _exif_block(6, "big"))
    assert image_orientation(tagged) == 6
    stored = decode(plain)
    assert stored.shape == (64, 40, 3)
    assert np.array_equal(decode(tagged), _upright(stored, 6))


@pytest.mark.parametrize("orientation", (3, 6, 8))
def test_a_tiff_is_turned_upright_once(orientation: int) -> None:
    """X15 (the TIFF Orientation tag also read by ``image_orientation``): OpenCV turns a TIFF itself, even with
    IMREAD_UNCHANGED, so reading the tag again turned the photograph twice: upside down for 6 and 8 (a fundus
    camera's TIFF export), as stored for 3. Here the decoded TIFF must be its stored pixels turned once."""
    rgb = draw_fake_fundus(48, seed=5)[:, :36].copy()
    rgb[:6, :10] = (255, 255, 255)  # a mark in one corner: no two orientations look alike
    assert np.array_equal(decode(_tiff_file(rgb, 1)), rgb)  # the control: the hand-built TIFF as stored
    assert np.array_equal(decode(_tiff_file(rgb, orientation)), _upright(rgb, orientation))


# -- dicomfile.py --------------------------------------------------------------------------------------
pydicom = pytest.importorskip("pydicom", reason="pydicom is installed by the test extra (uopsl[dicom])")
from pydicom.encaps import encapsulate, generate_fragments  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from dicomkit import dicom_dataset as _dataset  # noqa: E402
from dicomkit import dicom_file as _dicom  # noqa: E402
from dicomkit import encoded as _jpeg  # noqa: E402
from dicomkit import saved as _saved  # noqa: E402

from uopsl.runtime.errors import ImageDecodeError, ImageFormatError  # noqa: E402


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return draw_fake_fundus(64, seed=46)


def _two_frames(syntax: str, photo: np.ndarray) -> list[bytes]:
    if syntax == JPEGBaseline8Bit:
        return [_jpeg(photo), _jpeg(photo[::-1])]
    if syntax == JPEG2000Lossless:
        codestreams = [_jpeg(p, ".jp2") for p in (photo, photo[::-1])]
        return [c[c.index(b"\xff\x4f\xff\x51"):] for c in codestreams]  # the bare codestream, as DICOM wraps it
    return [b"\xff\xd8\xff\xc3" + bytes(30)] * 2  # lossless JPEG (process 14, SV1): SOI then SOF3


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000Lossless, JPEGLosslessSV1],
                         ids=["jpeg_baseline", "jpeg2000", "jpeg_lossless_sv1"])
def test_wrapped_frames_without_an_offset_table_or_frame_count_are_refused(photo: np.ndarray, syntax: str) -> None:
    """D08, D10, D09 (baseline JPEG, JPEG 2000 or lossless JPEG SV1 left out of the syntaxes whose fragments are
    counted by their SOI / SOC+SIZ start): both eyes wrapped in one file with an empty offset table and no
    NumberOfFrames. Not counted, the baseline and JPEG 2000 files were screened as their first frame alone (the
    second eye silently never screened); the lossless one got "install a plug-in", which would not help."""
    data = _dicom(photo, syntax=syntax, photometric="YBR_FULL_422" if syntax == JPEGBaseline8Bit else "RGB",
                  data=encapsulate(_two_frames(syntax, photo), has_bot=False))
    with pytest.raises(ImageFormatError, match="holding 2 frames") as err:
        decode(data)
    assert err.value.reason == "unsupported_format"


def test_an_odd_sized_8bit_picture_with_its_pad_byte_is_one_frame() -> None:
    """D27 (the frame count of raw data rounded up): DICOM pads odd-length pixel data with one byte, so an 8-bit
    grey picture with an odd pixel count (here 63 x 65) holds one byte more than its frame. Rounded up, that byte
    made a second frame and a valid photograph was refused as a series ("holding 2 frames")."""
    grey = cv2.cvtColor(draw_fake_fundus(65, seed=9)[:63], cv2.COLOR_RGB2GRAY)
    data = _dicom(grey, photometric="MONOCHROME2")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert len(ds.PixelData) == 63 * 65 + 1  # the pad byte is there
    got = decode(data)
    assert got.shape == (63, 65, 3) and np.array_equal(got[..., 0], grey) and np.array_equal(got[..., 2], grey)


def test_palette_colour_is_scaled_by_its_16bit_table_not_by_bits_stored() -> None:
    """D22 (palette colour scaled by BitsStored like grey data): the indices are 8-bit but the colour table's
    entries are 16-bit (as the standard's tables usually are). Scaled as 8-bit, every entry above 255 clipped to
    white: the picture came back a white sheet. Entry k holds k * 257 (16-bit), so the 8-bit colour is k."""
    idx = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 7 % 256).astype(np.uint8)
    ds = _dataset(idx, photometric="PALETTE COLOR")
    k = np.arange(256, dtype=np.uint16)
    tables = {"Red": k, "Green": 255 - k, "Blue": (k * 3) % 256}
    for name, table in tables.items():
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", (table.astype(np.uint16) * 257).astype("<u2").tobytes())
    got = decode(_saved(ds))
    want = np.stack([tables[c][idx] for c in ("Red", "Green", "Blue")], axis=-1).astype(np.uint8)
    assert np.array_equal(got, want)


def test_a_bare_dataset_of_16bit_samples_is_read_little_endian(photo: np.ndarray) -> None:
    """D03 (a bare explicit-VR little-endian dataset given the big-endian syntax when pydicom's reading is
    turned into a transfer syntax): 8-bit samples look the same either way, which is all that was tested; 12-bit
    grey in 16-bit words came back byte-swapped, a noise picture instead of the photograph."""
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    twelve = (grey.astype(np.uint16) * 16 + 7)  # 0..4087
    ds = pydicom.dcmread(io.BytesIO(_dicom(twelve, photometric="MONOCHROME2", bits_stored=12)))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    bare = buf.getvalue()
    bare = bare[bare.index(b"\x08\x00"):] if bare[128:132] == b"DICM" else bare
    assert bare[:2] == b"\x08\x00"
    want = ((twelve.astype(np.int64) * 255 + 2047) // 4095).astype(np.uint8)  # round(v * 255 / 4095)
    assert np.array_equal(decode(bare)[..., 1], want)


def test_two_16bit_colour_rle_frames_without_a_count_are_refused(photo: np.ndarray) -> None:
    """D30 (an RLE frame's header allowed at most 3 segments): 16-bit colour takes 6 segments, one per byte of
    each sample. Not counted, a two-frame 16-bit colour RLE file without NumberOfFrames or offsets was screened as
    its first frame alone."""
    rgb16 = photo.astype(np.uint16) * 257
    pair = _dataset(np.stack([rgb16, rgb16[::-1]]), frames=2)
    pair.Rows, pair.Columns = photo.shape[:2]
    pair.compress(RLELossless)
    frames = list(generate_fragments(pair.PixelData))[1:]  # the first item is pydicom's offset table
    assert len(frames) == 2 and int.from_bytes(frames[0][:4], "little") == 6  # six segments a frame
    single = _dicom(rgb16, syntax=RLELossless, data=encapsulate(frames[:1], has_bot=False))
    assert np.array_equal(decode(single), photo)  # the control: one such frame decodes
    with pytest.raises(ImageFormatError, match="holding 2 frames"):
        decode(_dicom(rgb16, syntax=RLELossless, data=encapsulate(frames, has_bot=False)))


def test_wrapped_pixel_data_cut_inside_its_first_item_is_a_damaged_file(photo: np.ndarray) -> None:
    """D18 (the unwrap failure caught as ValueError only): encapsulated pixel data cut inside its first item's
    length (a copy cut short, 6 bytes kept) makes pydicom's frame reader raise struct.error, no ValueError; it
    left the reader as an "internal error" row (and stopped a training cache) instead of a damaged file."""
    data = _dicom(photo, syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422", data=b"\xfe\xff\x00\xe0\x00\x00")
    with pytest.raises(ImageDecodeError, match="a damaged DICOM file: its JPEG data cannot be unwrapped") as err:
        decode(data)
    assert err.value.reason == "undecodable"


def test_a_wrapped_jpeg_without_a_frame_header_is_a_damaged_file(photo: np.ndarray) -> None:
    """D13 (a wrapped JPEG without a start-of-frame sent to pydicom instead of the runtime's decoder): pydicom's
    Pillow plug-in fails on it with "all available plugins", which reads as a missing plug-in: the row said
    ``reader_missing`` (install pylibjpeg, screen again) for a file no plug-in can read, and every rerun retried
    it. The frame is the start of a real JPEG cut before its frame header."""
    jpeg = _jpeg(photo)
    sof = jpeg.index(b"\xff\xc0")
    frame = jpeg[:sof] + b"\xff\xd9"  # SOI, JFIF, tables, then the end of image: no frame header
    data = _dicom(photo, syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422", data=encapsulate([frame]))
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    assert err.value.reason == "undecodable"


def test_a_damaged_rle_files_reason_is_one_line(photo: np.ndarray) -> None:
    """D32 (pydicom's message taken as it is): pydicom lists each plug-in's failure on its own indented line.
    A row's reason (results.jsonl, the CSV report, the console line) is one line; the damaged RLE file's reason
    ran over two, splitting the CSV row in spreadsheet tools that do not quote newlines."""
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    ds = pydicom.dcmread(io.BytesIO(_dicom(grey, photometric="MONOCHROME2")))
    ds.compress(RLELossless)
    frame = list(generate_fragments(ds.PixelData))[1]  # the first item is pydicom's offset table
    short = frame[: 64 + 20]  # the one segment cut short (an even length)
    data = _dicom(grey, syntax=RLELossless, photometric="MONOCHROME2", data=encapsulate([short]))
    with pytest.raises(ImageDecodeError, match="its RLE-compressed pixel data cannot be decoded") as err:
        decode(data)
    text = str(err.value)
    assert "\n" not in text and "  " not in text
    # pydicom's own words are kept, on the one line: read from pydicom itself, not quoted from one version of it
    with pytest.raises(Exception) as said:
        pydicom.dcmread(io.BytesIO(data)).pixel_array
    own = " ".join(str(said.value).split())
    assert "\n" in str(said.value) and len(own) > 40  # the several-line message this test is about
    assert own[:120] in text


def test_the_deflate_cap_holds_for_a_space_padded_transfer_syntax() -> None:
    """D02 (only NUL padding stripped from the file meta's transfer syntax): a UID padded with spaces (as some
    writers pad every text value) is still the Deflated syntax to pydicom, which inflates it; the size check did
    not recognise it and a few KB of deflated zeros were inflated whole, the decompression bomb the check exists
    to refuse. The meta group's length element is left out, so the longer value needs no other change."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from uopsl.runtime.errors import ImageTooLargeError
    from uopsl.runtime.preprocess import PreprocessConfig, preprocess

    bomb = _dicom(np.zeros((8, 8, 3), np.uint8), syntax=DeflatedExplicitVRLittleEndian, data=bytes(20 << 20))
    assert bomb[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length, 12 bytes: dropped below
    element = b"\x02\x00\x10\x00UI\x16\x00" + DeflatedExplicitVRLittleEndian.encode()
    data = bomb[:132] + bomb[144:]
    assert data.count(element) == 1
    padded = data.replace(element, b"\x02\x00\x10\x00UI\x18\x00" + DeflatedExplicitVRLittleEndian.encode() + b"  ")
    with pytest.raises(ImageTooLargeError, match="deflated DICOM file that inflates to more than"):
        preprocess(padded, PreprocessConfig(size=64, max_pixels=100_000))
