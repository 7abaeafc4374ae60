"""Build DICOM Part-10 files for the reader tests with pydicom (installed by the test extra, ``uopsl[dicom]``).

Import it after ``pytest.importorskip("pydicom")``: it imports pydicom itself.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

OPHTHALMIC_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage


def dicom_dataset(pixels: np.ndarray | None, *, syntax: str = ExplicitVRLittleEndian, photometric: str = "RGB",
                  bits_stored: int | None = None, data: bytes | None = None, frames: int | None = None,
                  rows_cols: tuple[int, int] | None = None, sop_class: str = OPHTHALMIC_8BIT) -> Dataset:
    """A dataset holding ``pixels`` as stored (unsigned, interleaved colour); ``data`` replaces the pixel data
    (encapsulated frames); ``pixels`` None: no picture. A test edits it before :func:`saved` to add elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, "OP"
    ds.PatientID = "TEST-1"
    if pixels is not None:
        ds.Rows, ds.Columns = rows_cols or pixels.shape[:2]
        colour = pixels.shape[-1] == 3 and pixels.ndim >= 3
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        if colour:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = 8 * pixels.dtype.itemsize
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames is not None:
            ds.NumberOfFrames = frames
        ds.PixelData = data if data is not None else pixels.tobytes()
    return ds


def saved(ds: Dataset) -> bytes:
    """The Part-10 file of ``ds`` (preamble, DICM, file meta), as a camera or PACS writes it."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_file(pixels: np.ndarray | None, **kw: object) -> bytes:
    """:func:`dicom_dataset` saved as a file."""
    return saved(dicom_dataset(pixels, **kw))  # type: ignore[arg-type]


def encoded(rgb: np.ndarray, ext: str = ".jpg") -> bytes:
    """``rgb`` encoded by OpenCV (``.jpg``, ``.jp2``, ...): the codestream a compressed DICOM wraps."""
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok, ext
    return buf.tobytes()
