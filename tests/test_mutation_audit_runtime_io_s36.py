"""Mutation audit (session 36) of the runtime's image readers and the screening pipeline's bookkeeping.

Each test pins a behaviour a single-point bug in ``runtime/`` once slipped past the rest of the suite
(the audit's report names the bug each one catches). Expected values are derived by hand, or by a plain
re-implementation written out in the test, never by calling the code under test a second way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime.errors import ImageTooLargeError
from uopsl.runtime.fsio import atomic_open, write_text
from uopsl.runtime.imagefile import header_size
from uopsl.runtime.input_keys import key_path
from uopsl.runtime.preprocess import check_image_bytes, decode
from uopsl.runtime.results import ResultStore


# -- durability: what results.py and fsio.py promise ------------------------------------------------------
def test_an_atomic_write_fsyncs_its_temporary_before_renaming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               durability_log: list[tuple[str, ...]]) -> None:
    """fsio's contract: "written to a temporary file in the same folder, flushed, then renamed over the target".

    Without the fsync a power loss after the rename can leave results.csv empty (the rename is journalled, the
    data not yet). Order checked: the temporary's fsync, then the rename of that same temporary.
    """
    events = durability_log
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    write_text(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "new\n"
    assert [e[0] for e in events] == ["fsync", "replace"]
    tmp = events[0][1]
    assert os.path.dirname(tmp) == os.path.realpath(tmp_path) and os.path.basename(tmp).startswith(".results.csv.")
    assert os.path.realpath(events[1][1]) == tmp and events[1][2] == str(target)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A write that fails halfway (a full disk, an exception while rendering a report) leaves the target as it
    was and removes its temporary: nothing else cleans ``.NAME.XXXX.tmp`` in a bundle or a checkpoint folder,
    and each failed try would leave one more."""
    target = tmp_path / "report.html"
    target.write_text("old report")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(target, "w") as fh:
            fh.write("half a new report")
            raise RuntimeError("disk full")
    assert target.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# -- resume bookkeeping ------------------------------------------------------------------------------------
def test_a_key_whose_latest_row_does_not_refer_is_not_counted_as_referred(tmp_path: Path) -> None:
    """``referred`` holds the keys whose LATEST row refers (a resumed run counts the earlier decisions by it).

    One file version screened twice (a row from an earlier preprocessing version that referred, then the row
    of this version that does not) is one photograph without a referral, in the open store and after reopening;
    a third row referring again brings it back. Keys: ``path|size|mtime_ns``.
    """
    key = f"{tmp_path}/in/a.jpg|1234|5"
    other = f"{tmp_path}/in/b.jpg|99|5"
    row = {"source": "a.jpg", "status": "ok", "sha256": "ab" * 32}
    out = tmp_path / "out"
    with ResultStore(out) as store:
        store.append([{**row, "key": key, "refer": True}, {**row, "key": other, "refer": True, "sha256": "cd" * 32}])
        assert store.referred == {key, other}
        store.append([{**row, "key": key, "refer": False}])
        assert store.referred == {other}
    with ResultStore(out) as store:
        assert store.referred == {other} and store.done[key] == "ok"
        store.append([{**row, "key": key, "refer": True}])
        assert store.referred == {key, other}


def test_a_last_line_that_is_json_but_no_row_is_cut_not_completed(tmp_path: Path) -> None:
    """Reopening cuts a last line without its newline unless it is a whole row: "a JSON object with a key".
    A JSON object without a key is no row: completing it kept a line every later run warns about as corrupt;
    it is dropped, and the rows before it are kept byte for byte."""
    out = tmp_path / "out"
    out.mkdir()
    good = '{"key":"/p/a.jpg|1|2","source":"a.jpg","status":"ok"}\n'
    (out / "results.jsonl").write_text(good + '{"source":"b.jpg","status":"ok"}', encoding="utf-8")
    with ResultStore(out) as store:
        assert store.n_rows == 1
    assert (out / "results.jsonl").read_text(encoding="utf-8") == good


def test_a_key_path_keeps_every_bar_of_a_file_name(tmp_path: Path) -> None:
    """A key is ``path|size|mtime_ns`` and a path may hold ``|`` (a file named after a form field): only the
    LAST two fields are size and time. Split from the left, ``id|42.jpg`` became ``id``: the row was filed
    under another path, and the retimed and moved-photograph lookups compared the wrong name."""
    assert key_path("/photos/left|right/eye|1.jpg|2048|1700000000000000000") == "/photos/left|right/eye|1.jpg"
    assert key_path("/photos/p|q.jpg|missing") == "/photos/p|q.jpg"
    # Through a real store: the row of a photograph named with bars is found under its own path.
    photo = tmp_path / "id|42.jpg"
    photo.write_bytes(b"x" * 7)
    st = photo.stat()
    key = f"{photo}|{st.st_size}|{st.st_mtime_ns}"
    with ResultStore(tmp_path / "out") as store:
        digest = hashlib.sha256(b"x" * 7).hexdigest()
        store.append([{"key": key, "source": str(photo), "status": "ok", "sha256": digest, "refer": False}])
        assert [r["source"] for r in store.latest_rows()] == [str(photo)]
        assert store.find_retimed(f"{photo}|7|1", photo) is not None  # same path and size, another time


def test_a_new_file_time_carries_the_row_over_only_for_the_same_bytes(tmp_path: Path) -> None:
    """find_retimed: a file whose time moved (a FAT card after a daylight-saving change) keeps its row only
    when its bytes are those screened (sha256). Another photograph of the same size under the same name (a
    camera that restarted its numbering; uncompressed formats give every photograph one size) is new and
    must be screened, not given the earlier patient's result."""
    photo = tmp_path / "IMG_0001.jpg"
    first, second = b"A" * 64, b"B" * 64  # same size, other content
    photo.write_bytes(first)
    st = photo.stat()
    key = f"{photo}|64|{st.st_mtime_ns}"
    with ResultStore(tmp_path / "out") as store:
        store.append([{"key": key, "source": str(photo), "status": "ok", "refer": True,
                       "sha256": hashlib.sha256(first).hexdigest()}])
        moved_time = f"{photo}|64|{st.st_mtime_ns + 3_600_000_000_000}"
        kept = store.find_retimed(moved_time, photo)
        assert kept is not None and kept["key"] == key  # same bytes, an hour later: the same photograph
        photo.write_bytes(second)
        assert store.find_retimed(moved_time, photo) is None  # other bytes: screened again


def test_a_damaged_copy_in_between_does_not_make_the_photograph_another_one(tmp_path: Path) -> None:
    """replaced_photograph: "the ok/ungradable row of ANOTHER photograph screened earlier under path".

    IMG_7.jpg screened (sha A), then overwritten by a half-copied file (an ``undecodable`` error row, sha B),
    then by the complete photograph A again: that is the photograph screened first, not another patient's
    (no new id, no "both are listed" warning). Only a decoded and judged row stands for a photograph; a
    third content C is another photograph, and the one it replaces is the ok row.
    """
    path = f"{tmp_path}/in/IMG_7.jpg"
    sha_a, sha_b, sha_c = "aa" * 32, "bb" * 32, "cc" * 32
    with ResultStore(tmp_path / "out") as store:
        store.append([
            {"key": f"{path}|500|1", "source": path, "status": "ok", "refer": False, "sha256": sha_a},
            {"key": f"{path}|250|2", "source": path, "status": "error", "reasons": ["undecodable"], "sha256": sha_b},
        ])
        assert store.replaced_photograph(path, sha_a) is None
        earlier = store.replaced_photograph(path, sha_c)
        assert earlier is not None and earlier["key"] == f"{path}|500|1" and earlier["status"] == "ok"


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny FP32 bundle alone (no INT8 file to quantize: this module needs only a model that runs)."""
    from tinybundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def test_a_rerun_names_earlier_ungradable_photographs_with_the_unreadable_ones(tmp_path: Path,
                                                                             fp32_bundle: Path) -> None:
    """RunSummary.earlier_failed: inputs "whose row from an earlier run is ungradable or unreadable" (a rerun
    names what still needs a retake, not only what it screened). An ungradable photograph is the commonest
    retake; a rerun that skipped it must still name it, with the reasons its row recorded."""
    import cv2

    from tinybundle import fundus_jpeg
    from uopsl.runtime.api import Screener

    photos = tmp_path / "in"
    fundus_jpeg(photos / "a_good.jpg", seed=1)
    yy, xx = np.mgrid[0:320, 0:320]
    checker = (((yy // 12) + (xx // 12)) % 2 * 200 + 30).astype(np.uint8)  # no fundus: ungradable
    assert cv2.imwrite(str(photos / "b_checker.png"), np.dstack([checker, checker // 2, 255 - checker]))
    (photos / "c_empty.jpg").write_bytes(b"")  # unreadable, for good (a content error: not retried)
    out = tmp_path / "out"
    with Screener(fp32_bundle, "ort-cpu", threads=1, batch_size=4, workers=1) as s:
        first = s.screen_to(out, [photos], report=False)
        assert first.screened == 3 and first.counts == {"ok": 1, "ungradable": 1, "error": 1}
        rows = {Path(r["source"]).name: r for r in
                (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())}
        again = s.screen_to(out, [photos], report=False)
    assert again.screened == 0 and again.skipped == 3
    real = os.path.realpath(photos)
    assert again.earlier_failed == [
        (f"{real}/b_checker.png", "ungradable", tuple(rows["b_checker.png"]["reasons"])),
        (f"{real}/c_empty.jpg", "error", ("undecodable",)),
    ]
    assert rows["b_checker.png"]["reasons"] and rows["b_checker.png"]["status"] == "ungradable"


# -- image headers ----------------------------------------------------------------------------------------
def _bmp_header(width: int, height: int, pixel_bytes: int = 16) -> bytes:
    """A BMP (BITMAPINFOHEADER, 24-bit) declaring ``width`` x ``height``; a negative height is a top-down BMP."""
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, pixel_bytes, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + pixel_bytes, 0, 0, 54) + dib + bytes(pixel_bytes)


def test_a_top_down_bmp_bomb_is_refused_from_its_header() -> None:
    """A top-down BMP stores its height negated. Its size is |width| x |height|: taken signed, a 30000 x -30000
    header is -9e8 pixels, under any limit, and the decoder was asked for 2.7 GB from 70 bytes."""
    assert header_size(_bmp_header(3, -2)) == (3, 2)
    assert header_size(_bmp_header(3, 2)) == (3, 2)
    with pytest.raises(ImageTooLargeError, match="30000x30000 pixels exceeds the limit of 120000000"):
        check_image_bytes(_bmp_header(30000, -30000), max_pixels=120_000_000)


# -- DICOM ------------------------------------------------------------------------------------------------
def _grey_dicom(pixels: np.ndarray, bits_stored: int) -> bytes:
    """A Part-10 MONOCHROME2 DICOM file of uint16 ``pixels`` declaring ``bits_stored`` (pydicom writes it)."""
    import pydicom  # the test extra installs it (uopsl[dicom])
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "OP"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).BitsStored == bits_stored
    return buf.getvalue()


def test_12bit_dicom_grey_levels_are_rounded_not_truncated_to_8_bits() -> None:
    """Every 12-bit level v becomes round(v * 255 / 4095) (never an exact half: 4095 is odd, 510 v even).

    The suite allowed one grey level of error, so a table that truncated (v = 2048 -> 127 instead of 128)
    passed: a whole picture one level darker on average than the same photograph saved as 8 bits.
    """
    v = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    got = decode(_grey_dicom(v, 12))
    expected = (v.astype(np.int64) * 510 + 4095) // 8190  # floor(v * 255 / 4095 + 1/2)
    assert got.shape == (64, 64, 3)
    assert got[32, 0, 0] == 128  # v = 2048: 127.53 rounds up
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)
