"""DICOM photographs (ophthalmic photography and secondary capture, as hospital cameras and PACS export them).

Files are written with pydicom (the test extra installs it): raw RGB in both VR encodings, 12-bit and
inverted greyscale, YBR colour, RLE, a wrapped JPEG and JPEG 2000 (which must give the pixels of the same
picture saved as its own file), and the files that are refused with a reason.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.dicomfile import is_dicom
from uopsl.runtime.errors import ImageDecodeError, ImageFormatError, ImageReaderMissingError, ImageTooLargeError
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess

pydicom = pytest.importorskip("pydicom", reason="pydicom is installed by the test extra (uopsl[dicom])")
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from dicomkit import dicom_file as _dicom  # noqa: E402
from dicomkit import encoded as _jpeg  # noqa: E402


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return draw_fake_fundus(256, seed=11)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_raw_rgb_pixels_are_read_as_stored(photo: np.ndarray, syntax: str) -> None:
    data = _dicom(photo, syntax=syntax)
    assert is_dicom(data)
    assert np.array_equal(decode(data), photo)
    cfg = PreprocessConfig(size=128)
    assert np.array_equal(preprocess(data, cfg).image, preprocess(photo, cfg).image)


def test_12bit_and_inverted_greyscale(photo: np.ndarray) -> None:
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    twelve = ((grey.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)
    got = decode(_dicom(twelve, photometric="MONOCHROME2", bits_stored=12))
    assert got.shape == (256, 256, 3) and np.abs(got[..., 0].astype(int) - grey).max() <= 1
    inverted = decode(_dicom(4095 - twelve, photometric="MONOCHROME1", bits_stored=12))
    assert np.abs(inverted.astype(int) - got).max() <= 1
    assert decode(_dicom(grey, photometric="MONOCHROME2"))[..., 1].tolist() == grey.tolist()


def test_ybr_colour_and_rle_come_back_as_rgb(photo: np.ndarray) -> None:
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(photo, "RGB", "YBR_FULL")
    assert np.abs(decode(_dicom(ybr, photometric="YBR_FULL")).astype(int) - photo).max() <= 2
    ds = pydicom.dcmread(io.BytesIO(_dicom(photo)))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(decode(buf.getvalue()), photo)


@pytest.mark.parametrize(("ext", "syntax"), [(".jpg", JPEGBaseline8Bit), (".jp2", JPEG2000Lossless)])
def test_a_wrapped_jpeg_gives_the_pixels_of_the_same_jpeg_file(ext: str, syntax: str) -> None:
    """The frame is handed to the runtime's own decoder: same checks, same reduced-scale decode, same pixels."""
    big = cv2.resize(draw_fake_fundus(256, seed=12), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    inner = _jpeg(big, ext)
    if ext == ".jp2":  # DICOM wraps the bare codestream, without the JP2 boxes
        inner = inner[inner.index(b"\xff\x4f\xff\x51"):]
    data = _dicom(big, syntax=syntax, photometric="YBR_FULL_422" if ext == ".jpg" else "RGB",
                  data=encapsulate([inner]))
    assert np.array_equal(decode(data), decode(inner))
    cfg = PreprocessConfig(size=224)
    a, b = preprocess(data, cfg), preprocess(inner, cfg)
    assert np.array_equal(a.image, b.image) and a.geometry == b.geometry


def test_files_that_are_not_one_photograph_are_refused(photo: np.ndarray) -> None:
    with pytest.raises(ImageFormatError, match="holding 2 frames.*export each frame") as err:
        decode(_dicom(np.stack([photo, photo]), frames=2, rows_cols=(256, 256)))
    assert err.value.reason == "unsupported_format"
    with pytest.raises(ImageFormatError, match="a DICOM file without a picture .*Basic Text SR"):
        decode(_dicom(None, sop_class="1.2.840.10008.5.1.4.1.1.88.11"))
    with pytest.raises(ImageReaderMissingError, match="compressed as JPEG-LS Lossless.*needs a pydicom plug-in"):
        decode(_dicom(photo, syntax=JPEGLSLossless, data=encapsulate([b"\xff\xd8\xff\xd9"])))
    with pytest.raises(ImageDecodeError, match="a damaged DICOM file"):
        decode(bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + bytes(60))


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_file_cut_short_is_damaged(photo: np.ndarray, wrapped: bool) -> None:
    data = (_dicom(photo, syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422", data=encapsulate([_jpeg(photo)]))
            if wrapped else _dicom(photo))
    for cut in (0.6, 0.95):
        with pytest.raises(ImageDecodeError, match="damaged|truncated|ends early") as err:
            preprocess(data[: int(len(data) * cut)], PreprocessConfig(size=128))
        assert err.value.reason == "undecodable"


@pytest.mark.parametrize("tag, wrapped, grey", [(b"\x28\x00\x02\x00US", False, False),   # SamplesPerPixel
                                              (b"\x28\x00\x04\x00CS", True, False),    # PhotometricInterpretation
                                              (b"\x28\x00\x01\x01US", False, True)])   # BitsStored
def test_a_header_value_of_an_unknown_value_representation_is_a_damaged_file(photo: np.ndarray, tag: bytes,
                                                                               wrapped: bool, grey: bool) -> None:
    """pydicom converts an element when first read: these three were read outside the catch-all and a damaged
    one (VR bytes that are no VR) gave an "internal error" row (the fuzz campaign of session 31)."""
    small = photo[:64, :64]
    if grey:
        small = (small[..., 1].astype(np.uint16) * 16)
    data = (_dicom(small, syntax=JPEGBaseline8Bit, data=encapsulate([_jpeg(small)])) if wrapped
            else _dicom(small, bits_stored=12 if grey else None))
    i = data.index(tag)
    bad = data[: i + 4] + b"U\xf2" + data[i + 6 :]
    with pytest.raises(ImageDecodeError, match="a damaged DICOM file .*Unknown Value Representation") as err:
        preprocess(bad, PreprocessConfig(size=128))
    assert err.value.reason == "undecodable"


def test_a_file_without_pixels_whose_sop_class_is_damaged_is_a_damaged_file(photo: np.ndarray) -> None:
    """The SOP class of a file without a picture was read outside the catch-all: an "internal error" row for a
    damaged value representation (second review of session 31)."""
    data = bytearray(_dicom(None, sop_class="1.2.840.10008.5.1.4.1.1.104.1"))
    i = data.find(b"\x08\x00\x16\x00UI", 132)
    data[i + 4 : i + 6] = b"ZZ"
    with pytest.raises(ImageDecodeError, match="a damaged DICOM file .*Unknown Value Representation 'ZZ'"):
        preprocess(bytes(data), PreprocessConfig(size=128))
    with pytest.raises(ImageFormatError, match=r"without a picture \(Encapsulated PDF Storage"):
        preprocess(_dicom(None, sop_class="1.2.840.10008.5.1.4.1.1.104.1"), PreprocessConfig(size=128))


def test_the_photometric_interpretation_is_read_whatever_its_case_and_padding(photo: np.ndarray) -> None:
    """A wrapped 8-bit JPEG labelled "rgb " is RGB as "RGB" is (its frame gets the Adobe RGB marker)."""
    small = photo[:64, :64]
    jpeg = _jpeg(small)
    assert jpeg[2:4] == b"\xff\xe0" and jpeg[6:11] == b"JFIF\x00"  # a JFIF marker would win over the label
    bare = jpeg[:2] + jpeg[4 + int.from_bytes(jpeg[4:6], "big"):]  # so the frame goes without it
    got = {label: decode(_dicom(small, syntax=JPEGBaseline8Bit, photometric=label, data=encapsulate([bare])))
           for label in ("RGB", "rgb ", "YBR_FULL_422")}
    assert np.array_equal(got["RGB"], got["rgb "])
    assert not np.array_equal(got["RGB"], got["YBR_FULL_422"])  # the label decides here: the test can fail


def test_a_picture_larger_than_the_limit_is_refused_from_its_header(photo: np.ndarray) -> None:
    data = _dicom(photo[:8, :8], rows_cols=(60000, 60000))  # 192 bytes of pixels that claim 3.6 gigapixels
    with pytest.raises(ImageTooLargeError, match="60000x60000 pixels exceeds the limit"):
        preprocess(data, PreprocessConfig(size=128))


def test_without_pydicom_the_row_says_what_to_install(photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dicom(photo[:64, :64])
    monkeypatch.setitem(sys.modules, "pydicom", None)  # what an environment without it gives: ImportError
    with pytest.raises(ImageReaderMissingError, match=r"pip install 'pydicom>=3,<4'\) and run again") as err:
        decode(data)
    assert err.value.reason == "reader_missing"


def test_a_folder_of_dicom_files_is_screened(tiny_bundle: Path, tmp_path: Path, photo: np.ndarray) -> None:  # noqa: F811
    """The walk takes .dcm files; a wrapped JPEG screens as its JPEG does; a row per file."""
    from uopsl.runtime.api import Screener

    inputs = tmp_path / "in"
    inputs.mkdir()
    inner = _jpeg(photo)
    (inputs / "eye.dcm").write_bytes(_dicom(photo, syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422",
                                            data=encapsulate([inner])))
    (inputs / "same.jpg").write_bytes(inner)
    (inputs / "series.dcm").write_bytes(_dicom(np.stack([photo, photo]), frames=2, rows_cols=(256, 256)))
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        s.screen_to(out, [str(inputs)])
    rows = {Path(r["source"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == ["eye.dcm", "same.jpg", "series.dcm"]
    assert rows["eye.dcm"]["status"] == rows["same.jpg"]["status"] != "error"
    assert rows["eye.dcm"]["probs"] == rows["same.jpg"]["probs"]
    assert rows["series.dcm"]["status"] == "error" and rows["series.dcm"]["reasons"] == ["unsupported_format"]


def test_a_rerun_after_installing_pydicom_screens_the_file(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                           photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reader_missing`` is not a property of the file: the row is not final, unlike ``unsupported_format``."""
    from uopsl.runtime.api import Screener

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "eye.dcm").write_bytes(_dicom(photo))
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "pydicom", None)
            s.screen_to(out, [str(inputs / "eye.dcm")])  # named directly: a row (a folder walk counts it)
        first = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [r["reasons"] for r in first] == [["reader_missing"]]
        assert "pip install 'pydicom>=3,<4'" in first[0]["error"]
        assert s.screen_to(out, [str(inputs / "eye.dcm")]).screened == 1
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[-1]["status"] != "error" and rows[-1]["probs"]


TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # real files shipped inside pydicom's wheel


@pytest.mark.parametrize("name", ["SC_jpeg_no_color_transform.dcm", "SC_rgb_jpeg.dcm"])
def test_a_jpeg_the_header_calls_rgb_keeps_its_colours(name: str) -> None:
    """libjpeg takes three components for YCbCr: these near-white pictures came out flat magenta."""
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom's test files")
    rgb = decode(path.read_bytes())
    means = rgb.reshape(-1, 3).mean(axis=0)
    assert means.min() > 230 and np.ptp(means) < 3, means


def test_an_older_pydicom_says_so(photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom 2 lacks the frame and colour functions used here: wrong rows, not errors, would follow."""
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    with pytest.raises(ImageReaderMissingError, match="needs the optional package pydicom 3 \\(an older"):
        decode(_dicom(photo[:32, :32]))


def test_a_deflated_file_is_refused_before_it_inflates_past_the_limit() -> None:
    """A few hundred KB of deflated zeros declaring an 8x8 picture inflated to gigabytes inside pydicom."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    small = np.zeros((8, 8, 3), np.uint8)
    bomb = _dicom(small, syntax=DeflatedExplicitVRLittleEndian, data=bytes(20 << 20))  # inflates to 20 MB
    assert len(bomb) < 64 << 10
    with pytest.raises(ImageTooLargeError, match="deflated DICOM file that inflates to more than"):
        preprocess(bomb, PreprocessConfig(size=64, max_pixels=100_000))
    fine = _dicom(draw_fake_fundus(64, seed=2), syntax=DeflatedExplicitVRLittleEndian)
    assert np.array_equal(decode(fine), draw_fake_fundus(64, seed=2))


def test_the_deflate_count_ends_at_the_streams_end_with_a_pad_byte_after_it() -> None:
    """pydicom pads a deflated dataset to an even length. When the stream's end came in the same 16 MB chunk of
    output that left input over, the pad byte stayed as unconsumed input and the size check looped for ever on
    empty output: screening hung on a deflated photograph of more than 16 MB of pixels (found in session 42,
    when a test file's header grew by a few bytes).

    The check runs in a child process: the old loop holds the interpreter lock, so a hung thread starved pytest
    itself, and only a process can be stopped from outside."""
    import subprocess
    import sys

    child = """
import zlib
import numpy as np
from uopsl.runtime.dicomfile import _check_inflated_size
from uopsl.runtime.errors import ImageTooLargeError
raw = (np.arange(17 << 20, dtype=np.uint32) * 2654435761 >> 13).astype(np.uint8).tobytes()  # 17 MB, varied
packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
stream = packer.compress(raw) + packer.flush() + b"\\x00"  # the pad byte after the stream's end
probe = zlib.decompressobj(-zlib.MAX_WBITS)  # the condition itself: the end reached with input left over
first = probe.decompress(stream, 1 << 24)
second = probe.decompress(probe.unconsumed_tail, 1 << 24)
print("condition", len(first) + len(second) == 17 << 20, probe.eof, probe.unconsumed_tail == b"\\x00")
_check_inflated_size(stream, 0, 4 << 20, "p.dcm")  # 24 MB + the 16 MB header allowance: fits
print("fits returned")
try:
    _check_inflated_size(stream, 0, 100_000, "p.dcm")  # 0.6 MB + 16 MB: too large
except ImageTooLargeError:
    print("too large refused")
"""
    try:  # a guard against the hang, not a timing check: the child takes a few seconds
        done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the deflate size check never returned")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["condition True True True", "fits returned", "too large refused"]


def test_undeclared_frames_and_signed_samples_are_refused(photo: np.ndarray) -> None:
    two = _dicom(photo, data=photo.tobytes() * 2)  # raw data for two pictures, NumberOfFrames absent
    with pytest.raises(ImageFormatError, match="holding 2 frames"):
        decode(two)
    jpegs = encapsulate([_jpeg(photo), _jpeg(photo)], has_bot=True)  # an offset table with two frames
    with pytest.raises(ImageFormatError, match="holding 2 frames"):
        decode(_dicom(photo, syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422", data=jpegs))
    ds = pydicom.dcmread(io.BytesIO(_dicom(photo[..., 0])))
    ds.PixelRepresentation = 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageFormatError, match="signed samples"):
        decode(buf.getvalue())


def test_undeclared_frames_without_an_offset_table_are_counted_by_their_starts(photo: np.ndarray) -> None:
    """Frames with an empty offset table and no NumberOfFrames: an RLE pair decoded as its first frame alone (the
    pair's second frame was never screened), and JPEG-LS or HTJ2K pairs were not counted at all."""
    from pydicom.encaps import generate_fragments

    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    pair = pydicom.dcmread(io.BytesIO(_dicom(grey, photometric="MONOCHROME2", frames=2,
                                             data=grey.tobytes() + grey[::-1].tobytes())))
    pair.compress(RLELossless)
    frames = list(generate_fragments(pair.PixelData))[1:]  # the first item is pydicom's offset table
    assert len(frames) == 2
    single = _dicom(grey, syntax=RLELossless, photometric="MONOCHROME2", data=encapsulate(frames[:1], has_bot=False))
    assert decode(single)[..., 0].tolist() == grey.tolist()  # one RLE frame alone still decodes
    two = _dicom(grey, syntax=RLELossless, photometric="MONOCHROME2", data=encapsulate(frames, has_bot=False))
    with pytest.raises(ImageFormatError, match="holding 2 frames"):
        decode(two)
    for syntax, start in ((JPEGLSLossless, b"\xff\xd8\xff\xf7"), ("1.2.840.10008.1.2.4.201", b"\xff\x4f\xff\x51")):
        fragments = encapsulate([start + bytes(30), start + bytes(30)], has_bot=False)
        with pytest.raises(ImageFormatError, match="holding 2 frames"):
            decode(_dicom(grey, syntax=syntax, photometric="MONOCHROME2", data=fragments))


def test_damaged_rle_pixel_data_is_a_damaged_file_not_a_missing_plug_in(photo: np.ndarray) -> None:
    """pydicom decodes RLE itself; when its decoder fails, the file is damaged. Until session 44 the row told
    the user to install JPEG plug-ins (pydicom's "all available plugins" wording), which cannot help."""
    import struct

    from pydicom.encaps import generate_fragments

    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    ds = pydicom.dcmread(io.BytesIO(_dicom(grey, photometric="MONOCHROME2")))
    ds.compress(RLELossless)
    frame = list(generate_fragments(ds.PixelData))[1]  # the first item is pydicom's offset table
    assert struct.unpack("<I", frame[:4])[0] == 1  # one segment: 8-bit grey
    short = frame[: 64 + 20] + b"\0" * (len(frame[: 64 + 20]) % 2)  # the segment cut short
    damaged = _dicom(grey, syntax=RLELossless, photometric="MONOCHROME2", data=encapsulate([short]))
    with pytest.raises(ImageDecodeError, match="damaged DICOM file: its RLE-compressed pixel data") as err:
        decode(damaged)
    assert err.value.reason == ImageDecodeError.reason and "plug-in" not in str(err.value)


def test_a_dataset_without_the_part10_header_is_read(photo: np.ndarray) -> None:
    """Some PACS write the bare dataset (no 128-byte preamble, no file meta)."""
    ds = pydicom.dcmread(io.BytesIO(_dicom(photo)))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    bare = buf.getvalue()
    bare = bare[bare.index(b"\x08\x00"):] if bare[128:132] == b"DICM" else bare
    assert bare[:2] == b"\x08\x00" and is_dicom(bare)
    assert np.array_equal(decode(bare), photo)


def test_a_12bit_jpeg_needs_a_plugin() -> None:
    path = TEST_FILES / "JPGExtended.dcm"
    if not path.is_file():
        pytest.skip("JPGExtended.dcm is not in this pydicom's test files")
    try:
        import pylibjpeg  # noqa: F401
    except ImportError:
        with pytest.raises(ImageReaderMissingError, match="JPEG Extended.*pip install pylibjpeg"):
            decode(path.read_bytes())
    else:
        assert decode(path.read_bytes()).shape[:2] == (1024, 256)


def test_the_commands_hide_pydicoms_own_log_lines_unless_vv(capsys: pytest.CaptureFixture[str]) -> None:
    """pydicom logs each oddity (and a decoder's failure with its traceback) besides the row's reason."""
    import logging

    from uopsl.runtime.clikit import setup_logging

    try:
        setup_logging(0)
        logging.getLogger("pydicom").warning("Expected explicit VR, but found implicit VR")
        logging.getLogger("uopsl.runtime.api").warning("a uopsl warning")
        err = capsys.readouterr().err
        assert "a uopsl warning" in err and "explicit VR" not in err
        setup_logging(2)
        logging.getLogger("pydicom").warning("Expected explicit VR, but found implicit VR")
        assert "explicit VR" in capsys.readouterr().err
        # -vv after the subcommand (a later call) shows pydicom's Python warnings too.
        setup_logging(0)
        setup_logging(2)
        with pytest.warns(UserWarning, match="from pydicom"):
            import warnings

            warnings.warn_explicit("from pydicom", UserWarning, "misc.py", 1, module="pydicom.misc")
    finally:
        logging.basicConfig(force=True)
        logging.getLogger().setLevel(logging.WARNING)


def test_a_whole_adobe_segment_keeps_its_own_transform(photo: np.ndarray) -> None:
    """Writers label YCbCr frames RGB; an Adobe segment saying YCbCr (transform 1) is the frame's own word."""
    jpeg = _jpeg(photo)
    assert jpeg[2:4] == b"\xff\xe0"  # OpenCV's JFIF segment, replaced by an Adobe one saying YCbCr
    adobe_ycc = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"
    frame = jpeg[:2] + adobe_ycc + jpeg[4 + int.from_bytes(jpeg[4:6], "big"):]
    data = _dicom(photo, syntax=JPEGBaseline8Bit, photometric="RGB", data=encapsulate([frame]))
    assert np.array_equal(decode(data), decode(frame))
    assert np.abs(decode(data).astype(int) - photo).mean() < 2


@pytest.mark.parametrize("layout", ["bare", "no_group_length"])
def test_the_deflate_cap_holds_for_every_layout(layout: str) -> None:
    """The cap once read the meta group's length at a fixed place: a bare file, or one without (0002,0000),
    went past it and inflated gigabytes."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    bomb = _dicom(np.zeros((8, 8, 3), np.uint8), syntax=DeflatedExplicitVRLittleEndian, data=bytes(20 << 20))
    assert bomb[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length, 12 bytes
    data = bomb[132:] if layout == "bare" else bomb[:132] + bomb[144:]
    assert is_dicom(data)
    with pytest.raises(ImageTooLargeError, match="deflated DICOM file that inflates to more than"):
        preprocess(data, PreprocessConfig(size=64, max_pixels=100_000))


def test_header_oddities_are_image_errors_not_program_failures(photo: np.ndarray) -> None:
    """An unknown transfer syntax, a palette without its colour table and a two-valued header field raised
    ValueError or TypeError: 'program failure' rows, and a stopped training cache."""
    known = _dicom(photo, syntax=JPEGBaseline8Bit, data=encapsulate([_jpeg(photo)]))
    unknown = known.replace(b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.98", 1)  # same length, no such syntax
    with pytest.raises(ImageFormatError, match=r"transfer syntax this pydicom does not know \(1.2.840.10008.1.2.4.98"):
        decode(unknown)
    with pytest.raises(ImageDecodeError, match="a damaged DICOM file"):
        decode(_dicom(photo[..., 0], photometric="PALETTE COLOR"))
    ds = pydicom.dcmread(io.BytesIO(_dicom(photo)))
    ds.SamplesPerPixel = [3, 3]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="a damaged DICOM file"):
        decode(buf.getvalue())


def test_a_jpeg_with_dicm_at_byte_128_is_a_jpeg(photo: np.ndarray) -> None:
    """A comment that happens to put 'DICM' at byte 128 made an ordinary JPEG a 'damaged DICOM file'."""
    jpeg = _jpeg(photo)
    text = b"x" * 122 + b"DICM" + b"note"  # SOI (2) + COM marker and length (4) + 122 bytes: DICM at 128
    com = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    data = jpeg[:2] + com + jpeg[2:]
    assert data[128:132] == b"DICM" and not is_dicom(data)
    assert np.array_equal(decode(data), decode(jpeg))


def test_a_folder_walk_counts_dicom_it_cannot_read_or_that_copies_a_photograph(
        tmp_path: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PACS export holds each photograph as .jpg and .dcm: screened once. Without pydicom, .dcm files are
    counted with what to install, not given error rows (a default install exited 1 on such folders)."""
    from uopsl.runtime.inputs import WalkState, walk_images

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "IMG1.jpg").write_bytes(_jpeg(photo))
    (folder / "IMG1.dcm").write_bytes(_dicom(photo[:32, :32]))
    (folder / "IMG2.dcm").write_bytes(_dicom(photo[:32, :32]))
    state = WalkState()
    assert [p.name for p in walk_images(folder, state)] == ["IMG1.jpg", "IMG2.dcm"]
    assert (state.dicom_copies, state.dicom_unread) == (1, 0)
    assert "1 DICOM file skipped (a photograph of the same name is beside each" in state.skipped_message()
    monkeypatch.setitem(sys.modules, "pydicom", None)
    state = WalkState()
    assert [p.name for p in walk_images(folder, state)] == ["IMG1.jpg"]
    assert (state.dicom_copies, state.dicom_unread) == (1, 1)
    assert "pip install 'pydicom>=3,<4' to screen them" in state.skipped_message()


def test_the_dicom_screen_benchmark_runs(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """benchmarks/dicom_screen.py, the command behind results.md's DICOM table: wrapped JPEGs give the JPEGs' rows."""
    import subprocess

    from tinybundle import fundus_jpeg

    for i in range(3):
        fundus_jpeg(tmp_path / "in" / f"p{i}.jpg", seed=i)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "dicom_screen.py"
    done = subprocess.run([sys.executable, str(script), str(tiny_bundle), "--images", str(tmp_path / "in"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["n"] == 3 and got["wrapped_vs_jpeg"]["identical_rows"] == 3
    assert got["raw_vs_jpeg"]["photographs"] == 3


def test_dicom_media_files_without_a_suffix_are_walked(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                       photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DICOM CD or USB export names its files IM000001 (PS3.12), a PACS export by instance UID: the walk reads
    the first bytes of such names only, takes the Part 10 files, and leaves DICOMDIR and other files out."""
    from uopsl.runtime.api import Screener
    from uopsl.runtime.inputs import WalkState, walk_images

    media = tmp_path / "DICOM" / "PAT00001"
    media.mkdir(parents=True)
    (tmp_path / "DICOM" / "DICOMDIR").write_bytes(_dicom(None))  # the media's index: a Part 10 file, no picture
    (media / "IM000001").write_bytes(_dicom(photo))
    uid = "1.2.826.0.1.3680043.8.498.10"  # its last part reads as a suffix of digits
    (media / uid).write_bytes(_dicom(photo, syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422",
                                     data=encapsulate([_jpeg(photo)])))
    (media / "IM000002").write_bytes(_dicom(photo))
    (media / "IM000002.jpg").write_bytes(_jpeg(photo))  # the same photograph exported twice: screened once
    (media / "README").write_bytes(b"exported by the camera's software\n" * 10)
    (media / "notes.123").write_bytes(bytes(200))
    (media / "IM000003").write_bytes(bytes(128) + b"DICM" + b"\x08\x00" + bytes(64))  # no file meta group
    (media / "EMPTY").write_bytes(b"")  # a copy that has just begun: too short to tell

    read: list[str] = []
    real_open = open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        read.append(Path(str(file)).name)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def walk(state: WalkState) -> list[str]:
        read.clear()
        with monkeypatch.context() as m:
            m.setattr("builtins.open", counting_open)
            return [p.name for p in walk_images(tmp_path, state)]

    state = WalkState()
    found = walk(state)
    assert found == [uid, "IM000001", "IM000002.jpg"]
    assert sorted(read) == sorted(["IM000001", "IM000002", "IM000003", uid, "README", "notes.123"]), \
        "only names without an image suffix are read, and DICOMDIR and files too short to tell are not"
    assert state.dicom_copies == 1
    assert state.skipped == {"(no suffix)": 4, ".123": 1}  # DICOMDIR, IM000003, README, EMPTY; notes.123
    assert walk(WalkState(sniffed=state.sniffed)) == found
    assert sorted(read) == ["IM000003", "README", "notes.123"], \
        "DICOM files are remembered; a 'no' only for a file not written lately (it may still become one)"
    monkeypatch.setattr("uopsl.runtime.inputs._SNIFF_SETTLED_NS", 0)
    cache = WalkState().sniffed
    walk(WalkState(sniffed=cache))
    assert walk(WalkState(sniffed=cache)) == found and read == [], "an unchanged file is read once"
    readme = media / "README"
    before = readme.stat()
    readme.write_bytes(_dicom(photo)[: before.st_size])  # replaced: same size, same modification time
    os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "README" in walk(WalkState(sniffed=cache)) and read == ["README"], "its change time moved"
    readme.write_bytes(b"exported by the camera's software\n" * 10)
    (media / "EMPTY").write_bytes(_dicom(photo))  # the copy finished
    assert "EMPTY" in walk(WalkState(sniffed=cache))

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pydicom", None)
        state = WalkState()
        assert [p.name for p in walk_images(tmp_path, state)] == ["IM000002.jpg"]
        assert state.dicom_unread == 3 and "pip install 'pydicom>=3,<4'" in state.skipped_message()

    (media / "EMPTY").unlink()
    out = tmp_path / "out"
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        s.screen_to(out, [str(tmp_path / "DICOM")])
    rows = {Path(r["source"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == [uid, "IM000001", "IM000002.jpg"]
    assert rows[uid]["probs"] == rows["IM000002.jpg"]["probs"], "the wrapped JPEG screens as the JPEG file does"
    assert all(r["status"] != "error" for r in rows.values())


def test_watch_takes_a_dicom_media_file_once_its_copy_is_long_enough(tmp_path: Path, photo: np.ndarray) -> None:
    """A file too short to tell at the first listing is read again later (here: at the full check)."""
    from uopsl.runtime.watch import StableFiles

    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], rescan_s=30)
    data = _dicom(photo)
    p = tmp_path / "IM000001"
    p.write_bytes(data[:64])
    assert tracker.poll() == []
    frozen = os.stat(tmp_path)
    p.write_bytes(data)  # written in place: the folder's time does not move
    os.utime(tmp_path, ns=(frozen.st_atime_ns, frozen.st_mtime_ns))
    now[0] = 10.0
    assert tracker.poll() == []
    now[0] = 31.0
    tracker.poll()
    now[0] = 32.0
    assert tracker.poll() == [p]


def test_watch_reads_a_dicom_media_file_once_and_forgets_files_removed(tmp_path: Path, photo: np.ndarray,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls list changed folders every half second and every folder at the full check: an unchanged file's
    first bytes are read once; what was read of a file no longer there is dropped at the next full check."""
    from uopsl.runtime.watch import StableFiles

    monkeypatch.setattr("uopsl.runtime.inputs._SNIFF_SETTLED_NS", 0)
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], rescan_s=30)
    (tmp_path / "IM000001").write_bytes(_dicom(photo))
    (tmp_path / "NOTES").write_bytes(bytes(300))
    read: list[str] = []
    real_open = open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        read.append(Path(str(file)).name)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", counting_open)
    taken = []
    for t in (0.0, 1.0, 2.0, 31.0, 32.0, 61.0):  # two full checks among them
        now[0] = t
        taken += tracker.poll()
    assert taken == [tmp_path / "IM000001"]
    assert sorted(read) == ["IM000001", "NOTES"]
    assert set(tracker._sniffed) == {str(tmp_path / "IM000001"), str(tmp_path / "NOTES")}
    (tmp_path / "NOTES").unlink()
    now[0] = 91.0
    tracker.poll()
    assert set(tracker._sniffed) == {str(tmp_path / "IM000001")}


def test_8bit_monochrome1_is_inverted_and_bad_headers_are_refused_with_a_reason(photo: np.ndarray) -> None:
    """Gaps session 42's audit left (D56, D43, D55, D22): each of these passed every test with its bug in."""
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    # 8-bit MONOCHROME1 (0 is white) must be inverted like the 12-bit case, not taken as stored.
    assert decode(_dicom(255 - grey, photometric="MONOCHROME1"))[..., 2].tolist() == grey.tolist()
    # Rows or Columns 0: a damaged file, not a ZeroDivisionError while counting frames.
    for rows_cols in ((0, 256), (256, 0)):
        with pytest.raises(ImageDecodeError, match="damaged DICOM"):
            decode(_dicom(grey, photometric="MONOCHROME2", rows_cols=rows_cols))
    # 32-bit samples are no photograph's.
    with pytest.raises(ImageFormatError, match="32-bit uint32 samples"):
        decode(_dicom(grey.astype(np.uint32), photometric="MONOCHROME2"))
    # The size message says width x height, as the header's Columns x Rows.
    with pytest.raises(ImageTooLargeError, match="5000x300 pixels exceeds the limit of 1000000"):
        preprocess(_dicom(photo[:8, :8], rows_cols=(300, 5000)), PreprocessConfig(size=128, max_pixels=1_000_000))


def test_a_long_pydicom_message_is_cut_to_one_readable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row's reason shows pydicom's words, but a reader's message can run to kilobytes (a value dumped in
    full, a plug-in list): the reason keeps its first 197 characters and says it was cut, on one line, so the
    CSV row and the report's cell stay readable. (Session 46's audit: the 200-character cap had no test.)"""
    photo = draw_fake_fundus(64, seed=47)
    data = _dicom(photo)
    said = "pydicom could not parse the header: " + "value 0x1234 " * 60 + "\n    and more on the next line"

    def damaged(*args: object, **kwargs: object) -> None:
        raise ValueError(said)

    monkeypatch.setattr(pydicom, "dcmread", damaged)
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    text = str(err.value)
    inner = text[text.index("(ValueError: ") + len("(ValueError: "):text.rindex(")")]
    assert "\n" not in text
    assert len(inner) == 200 and inner.endswith("...")
    assert inner[:-3] == " ".join(said.split())[:197]
