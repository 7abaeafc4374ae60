#!/usr/bin/env python
"""Fuzz the screening runtime's image-reading path: every mutated file must give one clean row.

The per-photograph function the worker pool runs is ``uopsl.runtime.pipeline.prepare_item`` (read, decode,
preprocess, quality gate). This script builds seed files in every format the runtime accepts, mutates them
(byte flips, truncation, chunk insertion/deletion, format-aware header edits, structured DICOM variants) and
runs each mutant through ``prepare_item`` and the header parsers of ``uopsl.runtime.imagefile`` / ``exif`` /
``dicomfile`` in a long-lived worker subprocess with an address-space limit; a mutant that hangs or kills the
worker gets a fresh one. Everything is reproducible from ``--seed`` and the mutant's index::

    python benchmarks/fuzz_inputs.py --seed 1 --n 3400 --out /tmp/fuzz          # campaign
    python benchmarks/fuzz_inputs.py --seed 1 --replay 1234 --out /tmp/fuzz     # rebuild and rerun mutant 1234 alone

Seeds read one TVHL photograph and the OCT folder from ``../shared/data/tvhl`` (``UOPSL_TVHL`` overrides).
Session 31's campaign (seeds 1 and 2, 3,400 + 3,000 mutants) is in ``docs/results.md``, section 5.

Classes (one per mutant, first that applies): c timeout, d worker killed / out of memory, b internal error
(an exception prepare_item turned into an ``internal_error`` row, a non-image UopslError reason, an exception
that escaped, or a header parser that raised), d_rss (clean row but peak RSS above --rss-flag-mb), e (Python
warning or native stderr output), a (clean result or clean reason row). Output: ``results.jsonl`` (one line
per mutant), ``summary.json`` and, for every non-(a) mutant, its file under ``repro/``.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

TVHL = Path(os.environ.get("UOPSL_TVHL", Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"))
SEED_PHOTO = TVHL / "fundus" / "0002_OD_f_1.jpg"
SEED_OCT = TVHL / "oct"
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 30000, 65500,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


# ---------------------------------------------------------------------------------------------------- seeds
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_insert_after_ihdr(data: bytes, chunk: bytes) -> bytes:
    return data[:33] + chunk + data[33:]


def _dicom_base(rows: int, cols: int, spp: int, bits: int, photometric: str, pixel: bytes, syntax: str,
                frames: int = 1, stored: int | None = None):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # ophthalmic photography 8 bit
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(rows), photometric, syntax])
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = stored or bits
    ds.HighBit = (stored or bits) - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel
    return pydicom, ds


def _dicom_bytes(ds, *, implicit: bool = False, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=preamble)
    return buf.getvalue()


def build_seeds() -> dict[str, bytes]:
    """name -> bytes, in every format the runtime accepts (built from a TVHL photograph)."""
    import cv2
    import numpy as np
    from PIL import Image

    big = cv2.imread(str(SEED_PHOTO), cv2.IMREAD_COLOR)  # 512x512 BGR
    small = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    pil = Image.fromarray(rgb)
    seeds: dict[str, bytes] = {}

    def pil_bytes(img, fmt, **kw) -> bytes:
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    def cv_bytes(ext, img, params=()) -> bytes:
        ok, enc = cv2.imencode(ext, img, list(params))
        assert ok, ext
        return enc.tobytes()

    seeds["jpeg_baseline.jpg"] = SEED_PHOTO.read_bytes()  # 512 px: the reduced-scale decode path
    seeds["jpeg_progressive.jpg"] = pil_bytes(pil, "JPEG", quality=85, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds["jpeg_exif6.jpg"] = pil_bytes(pil, "JPEG", quality=85, exif=exif.tobytes())
    seeds["png_rgb8.png"] = cv_bytes(".png", small)
    seeds["png_rgb16.png"] = cv_bytes(".png", small.astype(np.uint16) * 257)
    rgba = cv2.cvtColor(small, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 200
    seeds["png_rgba.png"] = cv_bytes(".png", rgba)
    seeds["png_grey.png"] = cv_bytes(".png", grey)
    twelve = cv_bytes(".png", small.astype(np.uint16) * 16 + small // 16)  # 12-bit data left unscaled, declared in sBIT
    seeds["png_sbit12.png"] = _png_insert_after_ihdr(twelve, _png_chunk(b"sBIT", bytes([12, 12, 12])))
    seeds["png_exif.png"] = _png_insert_after_ihdr(seeds["png_rgb8.png"], _png_chunk(b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()))
    seeds["tiff_rgb.tif"] = pil_bytes(pil, "TIFF")
    seeds["tiff_lzw.tif"] = pil_bytes(pil, "TIFF", compression="tiff_lzw")
    seeds["tiff_multipage.tif"] = pil_bytes(pil, "TIFF", save_all=True, append_images=[pil.transpose(Image.FLIP_LEFT_RIGHT)])
    import tifffile

    b = io.BytesIO()
    tifffile.imwrite(b, (rgb.astype(np.uint16) * 16), photometric="rgb", extratags=[(281, "H", 1, 4095, False)])
    seeds["tiff_rgb16_12bit.tif"] = b.getvalue()
    b = io.BytesIO()
    tifffile.imwrite(b, rgb, photometric="rgb", bigtiff=True)
    seeds["bigtiff_rgb.tif"] = b.getvalue()
    seeds["webp_lossy.webp"] = pil_bytes(pil, "WEBP", quality=80)
    seeds["webp_lossless.webp"] = pil_bytes(pil, "WEBP", lossless=True)
    seeds["webp_exif.webp"] = pil_bytes(pil, "WEBP", quality=80, exif=exif.tobytes())
    seeds["jp2_rgb.jp2"] = pil_bytes(pil, "JPEG2000", quality_mode="rates", quality_layers=[20])
    seeds["j2k_rgb.j2k"] = pil_bytes(pil, "JPEG2000", no_jp2=True, quality_mode="rates", quality_layers=[20])
    seeds["jp2_16bit.jp2"] = cv_bytes(".jp2", small.astype(np.uint16) * 257)
    seeds["pnm_p6.ppm"] = cv_bytes(".ppm", small)
    seeds["pnm_p5.pgm"] = cv_bytes(".pgm", grey)
    tiny = cv2.resize(small, (48, 48))
    seeds["pnm_p3.ppm"] = b"P3\n# fuzz\n48 48\n255\n" + " ".join(
        str(v) for v in cv2.cvtColor(tiny, cv2.COLOR_BGR2RGB).ravel()).encode() + b"\n"
    seeds["bmp_rgb24.bmp"] = cv_bytes(".bmp", small)
    seeds["bmp_pal8.bmp"] = pil_bytes(pil.convert("P"), "BMP")
    # DICOM
    from pydicom.encaps import encapsulate
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             JPEG2000Lossless, JPEGBaseline8Bit, RLELossless)

    _, ds = _dicom_base(256, 256, 3, 8, "RGB", rgb.tobytes(), ExplicitVRLittleEndian)
    seeds["dicom_rgb8.dcm"] = _dicom_bytes(ds)
    g16 = (grey.astype(np.uint16) * 16)
    _, ds = _dicom_base(256, 256, 1, 16, "MONOCHROME2", g16.tobytes(), ExplicitVRLittleEndian, stored=12)
    seeds["dicom_mono16.dcm"] = _dicom_bytes(ds)
    _, ds = _dicom_base(256, 256, 3, 8, "RGB", rgb.tobytes() * 2, ExplicitVRLittleEndian, frames=2)
    seeds["dicom_multiframe.dcm"] = _dicom_bytes(ds)
    jpg = seeds["jpeg_progressive.jpg"].replace(b"", b"")  # progressive is not baseline; use a baseline one
    jpg = pil_bytes(pil, "JPEG", quality=85)
    _, ds = _dicom_base(256, 256, 3, 8, "YBR_FULL_422", encapsulate([jpg]), JPEGBaseline8Bit)
    seeds["dicom_jpeg.dcm"] = _dicom_bytes(ds)
    _, ds = _dicom_base(256, 256, 3, 8, "RGB", encapsulate([seeds["j2k_rgb.j2k"]]), JPEG2000Lossless)
    seeds["dicom_j2k.dcm"] = _dicom_bytes(ds)
    _, ds = _dicom_base(256, 256, 3, 8, "RGB", rgb.tobytes(), ExplicitVRLittleEndian)
    ds.compress(RLELossless, rgb, generate_instance_uid=False)
    seeds["dicom_rle.dcm"] = _dicom_bytes(ds)
    _, ds = _dicom_base(256, 256, 1, 8, "MONOCHROME2", grey.tobytes(), DeflatedExplicitVRLittleEndian)
    seeds["dicom_deflated.dcm"] = _dicom_bytes(ds)
    _, ds = _dicom_base(256, 256, 3, 8, "RGB", rgb.tobytes(), ImplicitVRLittleEndian)
    del ds.file_meta
    seeds["dicom_bare_implicit.dcm"] = _dicom_bytes(ds, implicit=True, preamble=False)
    return seeds


def fmt_of(name: str) -> str:
    return name.split("_", 1)[0]


# ---------------------------------------------------------------------------------------------------- mutators
def _put(data: bytearray, at: int, value: int, size: int, order: str) -> None:
    if 0 <= at and at + size <= len(data):
        data[at : at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, order)


def m_flip(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    head = rng.random() < 0.7
    for _ in range(rng.choice([1, 1, 2, 4, 8, 16])):
        i = rng.randrange(min(len(b), 1024) if head else len(b))
        if rng.random() < 0.5:
            b[i] ^= 1 << rng.randrange(8)
        else:
            b[i] = rng.randrange(256)
    return bytes(b)


def m_truncate(rng: random.Random, d: bytes) -> bytes:
    r = rng.random()
    cut = rng.randrange(len(d)) if r < 0.5 else rng.randrange(min(len(d), 2048)) if r < 0.8 else len(d) - rng.randrange(1, 64)
    out = d[: max(0, cut)]
    if rng.random() < 0.3 and out[:2] == b"\xff\xd8":
        out += b"\xff\xd9"  # a cut JPEG closed by an end marker (libjpeg fills the rest)
    return out


def m_insert(rng: random.Random, d: bytes) -> bytes:
    at = rng.randrange(min(len(d), 4096)) if rng.random() < 0.6 else rng.randrange(len(d))
    kind = rng.randrange(4)
    n = rng.choice([1, 2, 3, 4, 16, 100, 4096])
    chunk = (bytes(rng.randrange(256) for _ in range(n)) if kind == 0 else b"\x00" * n if kind == 1
             else b"\xff" * n if kind == 2 else d[(s := rng.randrange(len(d))) : s + n])
    return d[:at] + chunk + d[at:]


def m_delete(rng: random.Random, d: bytes) -> bytes:
    at = rng.randrange(min(len(d), 4096)) if rng.random() < 0.6 else rng.randrange(len(d))
    n = rng.choice([1, 2, 4, 8, 64, 1000])
    return d[:at] + d[at + n :]


def m_duplicate(rng: random.Random, d: bytes) -> bytes:
    s = rng.randrange(len(d))
    n = rng.choice([4, 16, 256, 4096])
    at = rng.randrange(len(d))
    return d[:at] + d[s : s + n] * rng.choice([1, 2, 8]) + d[at:]


def m_magic(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    at = rng.randrange(min(len(b), 512))
    _put(b, at, rng.choice(INTERESTING), rng.choice([1, 2, 4]), rng.choice(["little", "big"]))
    return bytes(b)


GENERIC = [m_flip, m_flip, m_flip, m_truncate, m_insert, m_delete, m_duplicate, m_magic]


# --- format-aware edits
def _jpeg_segments(d: bytes):
    i = 2
    while i + 4 <= len(d) and d[i] == 0xFF:
        m = d[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in (0xD9, 0xDA):
            yield m, i, int.from_bytes(d[i + 2 : i + 4], "big")
            return
        ln = int.from_bytes(d[i + 2 : i + 4], "big")
        yield m, i, ln
        i += 2 + ln


def t_jpeg(rng: random.Random, d: bytes) -> bytes:
    segs = list(_jpeg_segments(d))
    sof = next((s for s in segs if s[0] in (0xC0, 0xC1, 0xC2)), None)
    b = bytearray(d)
    op = rng.randrange(10)
    if op == 0 and sof:  # frame size
        w, h = rng.choice([(0, 0), (0, 256), (65535, 65535), (30000, 30000), (20000, 20000), (1, 65535), (8, 8), (16, 16), (65535, 1)])
        _put(b, sof[1] + 5, h, 2, "big")
        _put(b, sof[1] + 7, w, 2, "big")
    elif op == 1 and segs:  # a segment length of 0, 1, 2 or huge
        s = rng.choice(segs)
        _put(b, s[1] + 2, rng.choice([0, 1, 2, 3, 0xFFFF]), 2, "big")
    elif op == 2 and sof:  # garbage bytes before the frame header (libjpeg skips them), optionally a bigger frame
        n = rng.choice([1, 2, 5])
        if rng.random() < 0.6:
            _put(b, sof[1] + 5, rng.choice([20000, 30000, 16000]), 2, "big")
            _put(b, sof[1] + 7, rng.choice([20000, 30000, 16000]), 2, "big")
        b = b[: sof[1]] + bytes([rng.randrange(0xFF)] * n) + b[sof[1] :]
    elif op == 3 and sof:  # precision / component count / marker kind
        which = rng.randrange(3)
        if which == 0:
            b[sof[1] + 4] = rng.choice([0, 1, 7, 12, 16, 255])
        elif which == 1:
            b[sof[1] + 9] = rng.choice([0, 2, 4, 255])
        else:
            b[sof[1] + 1] = rng.choice([0xC3, 0xC5, 0xC9, 0xCA, 0xCB, 0xCF, 0xC1])
    elif op == 4:  # Exif orientation variants
        ori = rng.choice([0, 1, 5, 7, 8, 9, 255, 0xFFFF])
        typ = rng.choice([3, 3, 4, 1, 7])
        cnt = rng.choice([1, 1, 2, 0, 0xFFFFFFFF])
        nent = rng.choice([1, 1, 0xFFFF, 0])
        ifd_off = rng.choice([8, 8, 0, 7, 0xFFFFFFFF, 20])
        tiff = b"II*\x00" + struct.pack("<I", ifd_off) + struct.pack("<H", nent) + struct.pack("<HHI", 0x0112, typ, cnt) + struct.pack("<I", ori) + b"\x00" * 4
        app1 = b"Exif\x00\x00" + tiff
        seg = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
        b = b[:2] + seg + b[2:]
    elif op == 5:  # drop or move the end marker
        i = d.rfind(b"\xff\xd9")
        b = bytearray(d[:i] + (d[i + 2 :] if rng.random() < 0.5 else b"\xff\xd9" + d[i + 2 :]))
        if rng.random() < 0.5:
            b += b"\x00" * rng.choice([1, 100, 5000])
    elif op == 6:  # a trailer after EOI (phones), or a second JPEG
        b += rng.choice([d, b"\x00" * 1000, bytes(rng.randrange(256) for _ in range(500))])
    elif op == 7 and segs:  # remove a whole segment (DHT, DQT, SOF ...)
        s = rng.choice([s for s in segs if s[0] != 0xDA] or segs)
        b = b[: s[1]] + b[s[1] + 2 + s[2] :]
    elif op == 8:  # inject a marker without a length / restart markers / fill bytes in the header
        at = segs[rng.randrange(len(segs))][1] if segs else 2
        b = b[:at] + rng.choice([b"\xff\x01", b"\xff\xd0", b"\xff\xff\xff", b"\xff\xd8", b"\xff\xd9"]) + b[at:]
    else:  # corrupt entropy data near the start of the scan
        sos = d.find(b"\xff\xda")
        if sos > 0:
            for _ in range(rng.choice([1, 8, 64])):
                i = sos + rng.randrange(12, 400)
                if i < len(b):
                    b[i] = rng.randrange(256)
    return bytes(b)


def _png_chunks(d: bytes):
    at = 8
    while at + 8 <= len(d):
        ln = int.from_bytes(d[at : at + 4], "big")
        yield d[at + 4 : at + 8], at, ln
        if d[at + 4 : at + 8] == b"IEND":
            return
        at += 12 + ln


def t_png(rng: random.Random, d: bytes) -> bytes:
    chunks = list(_png_chunks(d))
    b = bytearray(d)
    op = rng.randrange(8)
    fix_crc = rng.random() < 0.8
    ihdr_changed = False
    if op == 0:  # IHDR size
        w, h = rng.choice([(0, 0), (0, 256), (65535, 65535), (2**31, 2**31), (2**31 - 1, 1), (2**32 - 1, 1), (10000, 10000), (11000, 11000), (1, 120000000), (16, 16)])
        _put(b, 16, w, 4, "big")
        _put(b, 20, h, 4, "big")
        ihdr_changed = True
    elif op == 1:  # bit depth / colour type / interlace
        _put(b, 24 + rng.randrange(5), rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255]), 1, "big")
        ihdr_changed = True
    elif op == 2 and chunks:  # a chunk length huge / off by one
        kind, at, ln = rng.choice(chunks)
        _put(b, at, rng.choice([0, ln + 1, ln - 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000]), 4, "big")
    elif op == 3:  # sBIT variants
        body = bytes(rng.choice([0, 1, 8, 12, 15, 16, 17, 255]) for _ in range(rng.choice([1, 3, 4, 5])))
        b = bytearray(_png_insert_after_ihdr(bytes(b), _png_chunk(b"sBIT", body)))
    elif op == 4:  # eXIf with odd orientation / IFD
        ori = rng.choice([0, 3, 6, 9, 0xFFFF])
        nent = rng.choice([1, 0xFFFF])
        tiff = b"MM\x00*" + struct.pack(">I", rng.choice([8, 0xFFFFFFF0])) + struct.pack(">H", nent) + struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">H", ori) + b"\x00\x00" + b"\x00" * 4
        b = bytearray(_png_insert_after_ihdr(bytes(b), _png_chunk(b"eXIf", tiff)))
    elif op == 5:  # IDAT duplicated or dropped, IEND removed
        idats = [c for c in chunks if c[0] == b"IDAT"]
        if idats:
            kind, at, ln = rng.choice(idats)
            seg = bytes(b[at : at + 12 + ln])
            b = bytearray(d[:at] + (seg * rng.choice([0, 2, 3])) + d[at + 12 + ln :])
    elif op == 6:  # a zlib bomb: a big but legal picture of zeros in a few KB
        side = rng.choice([4000, 8000, 10000])
        raw = zlib.compress(b"\x00" * ((side * 3 + 1) * 64), 9)  # 64 rows' worth; the rest is missing
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        b = bytearray(d[:8] + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))
        fix_crc = False
    else:  # PLTE / tRNS / iCCP junk before IDAT
        kind = rng.choice([b"PLTE", b"tRNS", b"iCCP", b"zTXt", b"gAMA", b"cHRM"])
        body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 6, 300, 769])))
        b = bytearray(_png_insert_after_ihdr(bytes(b), _png_chunk(kind, body)))
    if ihdr_changed and fix_crc:
        _put(b, 29, zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF, 4, "big")
    return bytes(b)


def _tiff_info(d: bytes):
    big = d[2:4] in (b"+\x00", b"\x00+")
    order = "little" if d[:2] == b"II" else "big"
    ifd = int.from_bytes(d[8:16] if big else d[4:8], order)
    cs, es, vs = (8, 20, 8) if big else (2, 12, 4)
    n = int.from_bytes(d[ifd : ifd + cs], order)
    entries = [(ifd + cs + es * k) for k in range(min(n, 500)) if ifd + cs + es * (k + 1) <= len(d)]
    return big, order, ifd, cs, es, vs, n, entries


def t_tiff(rng: random.Random, d: bytes) -> bytes:
    big, order, ifd, cs, es, vs, n, entries = _tiff_info(d)
    b = bytearray(d)
    off_size = 8 if big else 4
    first_at = 8 if big else 4
    nxt = ifd + cs + es * n
    op = rng.randrange(10)
    tag_at = {int.from_bytes(d[e : e + 2], order): e for e in entries}

    def set_tag(tag: int, value: int, typ: int | None = None) -> None:
        e = tag_at.get(tag)
        if e is None:
            return
        if typ is not None:
            _put(b, e + 2, typ, 2, order)
        t = int.from_bytes(b[e + 2 : e + 4], order)
        size = {1: 1, 3: 2, 8: 2, 4: 4, 9: 4, 16: 8}.get(t, 4)
        _put(b, e + 4 + (8 if big else 4), 0, vs, order)
        _put(b, e + 4 + (8 if big else 4), value, min(size, vs), order)

    if op == 0:  # first IFD offset: itself, past the end, 0, odd
        _put(b, first_at, rng.choice([0, 1, len(d), len(d) + 100, 0xFFFFFFFF, first_at, 7]), off_size, order)
    elif op == 1:  # next-IFD pointer: a loop to itself, to the header, past the end
        _put(b, nxt, rng.choice([ifd, first_at - 4 if not big else 0, len(d) - 2, 0xFFFFFFFF, ifd + 1]), off_size, order)
    elif op == 2:  # entry count
        _put(b, ifd, rng.choice([0, 1, 0xFFFF, 4097, n + 1]), cs, order)
    elif op == 3:  # width / height
        w, h = rng.choice([(0, 0), (65535, 65535), (30000, 30000), (20000, 20000), (2**31, 2), (1, 2**32 - 1), (16, 16)])
        set_tag(256, w)
        set_tag(257, h)
    elif op == 4:  # width typed as something else (BYTE, SSHORT, LONG8, RATIONAL)
        set_tag(rng.choice([256, 257]), rng.choice([256, 20000]), rng.choice([1, 8, 16, 5, 9, 0, 99]))
    elif op == 5:  # bits per sample, sample format, samples per pixel, photometric, compression, planar
        tag = rng.choice([258, 339, 277, 262, 259, 284, 281, 338])
        val = {258: [0, 1, 4, 7, 12, 24, 32, 64, 0xFFFF], 339: [0, 2, 3, 4, 6], 277: [0, 1, 2, 4, 5, 255],
               262: [0, 1, 3, 4, 5, 6, 8, 32844, 0xFFFF], 259: [0, 2, 5, 6, 7, 8, 32773, 34712, 0xFFFF],
               284: [0, 2, 3], 281: [0, 1, 255, 4096], 338: [0, 1, 2, 3]}[tag]
        if tag in tag_at:
            set_tag(tag, rng.choice(val))
        else:  # add it: replace an unimportant entry
            e = rng.choice(entries) if entries else None
            if e is not None:
                _put(b, e, tag, 2, order)
                _put(b, e + 2, 3, 2, order)
                _put(b, e + 4, 1, 4 if not big else 8, order)
                _put(b, e + 4 + (8 if big else 4), rng.choice(val), 2, order)
    elif op == 6:  # strip offsets / byte counts / rows per strip
        tag = rng.choice([273, 279, 278, 322, 323, 324, 325])
        if tag in tag_at:
            set_tag(tag, rng.choice([0, 1, len(d), len(d) + 1, 0x7FFFFFFF, 0xFFFFFFFF]))
        e = tag_at.get(273)
        if e is not None and rng.random() < 0.3:  # the strip count
            _put(b, e + 4, rng.choice([0, 0xFFFF, 0x7FFFFFFF]), 4 if not big else 8, order)
    elif op == 7:  # duplicate a width/height entry with a bigger value right after the original
        e = tag_at.get(256)
        if e is not None:
            ent = bytearray(b[e : e + es])
            _put(ent, 4 + (8 if big else 4), rng.choice([30000, 16000, 8]), 2, order)
            if rng.random() < 0.5:  # the big one first: the header reader takes the last of two
                b = b[:e] + ent + b[e:]
            else:
                b = b[: e + es] + ent + b[e + es :]
            _put(b, ifd, n + 1, cs, order)
            # every offset after the insertion shifts by es: fix the ones in the header only (enough for a probe)
    elif op == 8:  # chain a second IFD: a copy of the first (a second page) or a copy looping back
        copy = bytes(b[ifd : ifd + cs + es * n]) + (ifd).to_bytes(off_size, order)
        new_at = len(b)
        b += copy
        _put(b, nxt, new_at, off_size, order)
    else:  # a NewSubfileType flag on the first page (a reduced copy)
        if 254 in tag_at:
            set_tag(254, rng.choice([1, 4, 5, 0xFFFFFFFF]))
        elif entries:
            e = entries[0]
            _put(b, e, 254, 2, order)
            _put(b, e + 2, 4, 2, order)
            _put(b, e + 4, 1, 4 if not big else 8, order)
            _put(b, e + 4 + (8 if big else 4), 1, 4, order)
    return bytes(b)


def t_webp(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    op = rng.randrange(5)
    kind = d[12:16]
    if op == 0:
        _put(b, 4, rng.choice([0, 4, len(d), 0xFFFFFFFF, len(d) * 2]), 4, "little")  # RIFF size
    elif op == 1:
        _put(b, 16, rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, int.from_bytes(d[16:20], "little") + 2]), 4, "little")
    elif op == 2 and kind == b"VP8 ":
        _put(b, 26, rng.choice([0, 16383, 0xFFFF, 1]), 2, "little")
        _put(b, 28, rng.choice([0, 16383, 0xFFFF, 1]), 2, "little")
    elif op == 2 and kind == b"VP8L":
        _put(b, 21, rng.choice([0, 0xFFFFFFFF, 0x0FFFFFFF, (16383 | (16383 << 14))]), 4, "little")
    elif op == 2 and kind == b"VP8X":
        _put(b, 24, rng.choice([0, 0xFFFFFF, 16383, 255]), 3, "little")
        _put(b, 27, rng.choice([0, 0xFFFFFF, 16383, 255]), 3, "little")
    elif op == 3:  # an extended header around a simple file, with a canvas that differs
        if kind in (b"VP8 ", b"VP8L"):
            cw, ch = rng.choice([(255, 255), (16383, 16383), (0xFFFFFF, 0xFFFFFF), (0, 0)])
            vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([rng.choice([0, 8, 0x10, 0xFF]), 0, 0, 0]) + cw.to_bytes(3, "little") + ch.to_bytes(3, "little")
            body = b"WEBP" + vp8x + d[12:]
            b = bytearray(b"RIFF" + struct.pack("<I", len(body)) + body)
    else:  # EXIF chunk with odd orientation
        tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<H", rng.choice([0, 6, 9, 0xFFFF])) + b"\x00\x00" + b"\x00" * 4
        ch = b"EXIF" + struct.pack("<I", rng.choice([len(tiff), 0xFFFFFFF0])) + tiff
        b = bytearray(d + ch)
        _put(b, 4, len(b) - 8, 4, "little")
    return bytes(b)


def t_jpeg2000(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    siz = d.find(b"\xff\x51")
    ihdr = d.find(b"ihdr")
    op = rng.randrange(7)
    if op == 0 and siz >= 0:  # SIZ image size (codestream)
        v = rng.choice([0, 1, 30000, 20000, 0x7FFFFFFF, 0xFFFFFFFF, 16])
        _put(b, siz + 6, v, 4, "big")
        _put(b, siz + 10, rng.choice([v, 16, 30000]), 4, "big")
    elif op == 1 and ihdr >= 0:  # ihdr size (JP2 box), the codestream left as is
        _put(b, ihdr + 4, rng.choice([0, 16, 256, 30000, 0xFFFFFFFF]), 4, "big")
        _put(b, ihdr + 8, rng.choice([0, 16, 256, 30000, 0xFFFFFFFF]), 4, "big")
    elif op == 2 and siz >= 0:  # tile size / offsets
        _put(b, siz + 22, rng.choice([0, 1, 2, 7, 0xFFFFFFFF]), 4, "big")
        _put(b, siz + 26, rng.choice([0, 1, 2, 7, 0xFFFFFFFF]), 4, "big")
        if rng.random() < 0.3:
            _put(b, siz + 14, rng.choice([1, 255, 0x7FFFFFFF]), 4, "big")
    elif op == 3 and siz >= 0:  # component count / depth / subsampling
        which = rng.randrange(3)
        if which == 0:
            _put(b, siz + 38, rng.choice([0, 1, 2, 4, 16384, 0xFFFF]), 2, "big")
        elif which == 1:
            b[siz + 40] = rng.choice([0x00, 0x07, 0x0B, 0x0F, 0x1F, 0x25, 0x87, 0x8F, 0xFF])
        else:
            b[siz + 41 + rng.randrange(2)] = rng.choice([0, 2, 255])
    elif op == 4:  # a box length of 0 / 1 (extended) / huge
        starts = [i for i in range(0, min(len(d), 200)) if d[i + 4 : i + 8] in (b"jP  ", b"ftyp", b"jp2h", b"ihdr", b"colr", b"jp2c")]
        if starts:
            _put(b, rng.choice(starts), rng.choice([0, 1, 7, 8, 0xFFFFFFFF]), 4, "big")
    elif op == 5 and ihdr >= 0:  # ihdr depth byte
        b[ihdr + 14] = rng.choice([0, 7, 11, 15, 0x87, 0x8F, 255, 31, 37])
    else:  # COD: decomposition levels / code-block size
        cod = d.find(b"\xff\x52")
        if cod > 0:
            _put(b, cod + 9, rng.choice([0, 32, 33, 255]), 1, "big")
            if rng.random() < 0.5:
                _put(b, cod + 10, rng.choice([0, 8, 15, 255]), 1, "big")
    return bytes(b)


def t_pnm(rng: random.Random, d: bytes) -> bytes:
    # split the header tokens off (binary forms: magic, w, h, maxval, one whitespace byte)
    magic = d[:2]
    m = re.match(rb"(P[1-6])(\s|#[^\n]*\n)*(\d+)(\s|#[^\n]*\n)+(\d+)(\s|#[^\n]*\n)+(\d+)\s", d)
    if not m:
        return m_flip(rng, d)
    body = d[m.end() :]
    w, h, mx = int(m.group(3)), int(m.group(5)), int(m.group(7))
    op = rng.randrange(6)
    if op == 0:
        w, h = rng.choice([(0, 0), (65535, 65535), (30000, 30000), (2**31, 2), (99999999999, 1), (10000, 10000)])
    elif op == 1:
        mx = rng.choice([0, 1, 256, 65535, 65536, 2**32])
    elif op == 2:  # comments in odd places, odd whitespace
        sep = rng.choice([b"#c\n", b"\t", b"\r", b"\x0b", b"\x0c", b"#" + b"x" * 5000 + b"\n", b"  \n#\n"])
        return magic + sep + str(w).encode() + sep + str(h).encode() + sep + str(mx).encode() + b"\n" + body
    elif op == 3:
        return magic + b" " + rng.choice([b"-5", b"+256", b"0x100", b"2.5", b"", b"\xef\xbc\x91"]) + b" " + str(h).encode() + b" " + str(mx).encode() + b"\n" + body
    elif op == 4:
        magic = rng.choice([b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7"])
    else:
        body = body[: rng.randrange(len(body) + 1)]
    return magic + b"\n" + str(w).encode() + b" " + str(h).encode() + b"\n" + str(mx).encode() + b"\n" + body


def t_bmp(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    op = rng.randrange(6)
    if op == 0:
        _put(b, 18, rng.choice([0, 1, -1, 65535, 30000, 20000, 2**31 - 1, -(2**31)]), 4, "little")
        _put(b, 22, rng.choice([0, 1, -1, 65535, 30000, 20000, -30000, 2**31 - 1, -(2**31)]), 4, "little")
    elif op == 1:  # the OS/2 1.x core header (12 bytes, 16-bit sizes)
        w, h = rng.choice([(256, 256), (30000, 30000), (32000, 32000), (20000, 20000), (65535, 65535), (16, 16)])
        bpp = int.from_bytes(d[28:30], "little")
        pal = d[54 : int.from_bytes(d[10:14], "little")]
        pal3 = b"".join(pal[i : i + 3] for i in range(0, len(pal), 4))
        pixels = d[int.from_bytes(d[10:14], "little") :]
        head = struct.pack("<IHHHH", 12, w, h, 1, bpp)
        off = 14 + 12 + len(pal3)
        b = bytearray(b"BM" + struct.pack("<IHHI", off + len(pixels), 0, 0, off) + head + pal3 + pixels)
    elif op == 2:  # bits per pixel / compression
        _put(b, 28, rng.choice([0, 1, 2, 4, 7, 8, 16, 24, 32, 64, 0xFFFF]), 2, "little")
        if rng.random() < 0.5:
            _put(b, 30, rng.choice([0, 1, 2, 3, 4, 5, 6, 99]), 4, "little")
    elif op == 3:  # pixel data offset / palette size / header size
        which = rng.randrange(3)
        if which == 0:
            _put(b, 10, rng.choice([0, 14, len(d), 0xFFFFFFFF]), 4, "little")
        elif which == 1:
            _put(b, 46, rng.choice([0, 1, 256, 257, 2**31, 0xFFFFFFFF]), 4, "little")
        else:
            _put(b, 14, rng.choice([0, 12, 16, 39, 64, 108, 124, 0xFFFFFFFF]), 4, "little")
    elif op == 4:  # an RLE8 picture: big and legal-sized, its data ending early
        w, h = rng.choice([(10000, 10000), (10900, 11000), (4000, 4000)])
        pal = bytes(range(256)) * 4
        data = b"\x00\x01"  # end of bitmap at once
        off = 14 + 40 + 1024
        head = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
        b = bytearray(b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off) + head + pal + data)
    else:
        b = bytearray(d[: rng.randrange(54, len(d))])
    return bytes(b)


TARGETED = {"jpeg": t_jpeg, "png": t_png, "tiff": t_tiff, "bigtiff": t_tiff, "webp": t_webp, "jp2": t_jpeg2000,
            "j2k": t_jpeg2000, "pnm": t_pnm, "bmp": t_bmp}


def dicom_variant(rng: random.Random, base: str) -> bytes:
    """A structured DICOM mutant: a seed dataset with one to three header values made odd (pydicom writes it)."""
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(SEEDS[base]), force=True)
    edits = []
    bad_frames = None
    for _ in range(rng.choice([1, 1, 2, 3])):
      k = rng.randrange(12)
      try:
        if k == 0:
            ds.Rows, ds.Columns = rng.choice([(0, 0), (65535, 65535), (11000, 11000), (1, 1), (16, 65535), (257, 256)])
        elif k == 1:
            ds.NumberOfFrames = 9999999998  # a placeholder, replaced in the written bytes (pydicom refuses bad IS)
            bad_frames = rng.choice(["0", "-1", "2", "1000000", "abc", "1.5", "", "2147483648", "99999999999"])
        elif k == 2:
            ds.BitsAllocated = rng.choice([0, 1, 7, 12, 24, 32, 64, 65535])
        elif k == 3:
            ds.BitsStored = rng.choice([0, 1, 9, 17, 32, 65535])
        elif k == 4:
            ds.SamplesPerPixel = rng.choice([0, 2, 4, 255])
        elif k == 5:
            ds.PhotometricInterpretation = rng.choice(["MONOCHROME1", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "ARGB", "", "XYZ", "RGB"])
        elif k == 6:
            pd = ds.PixelData
            ds.PixelData = rng.choice([pd[: len(pd) // 2], pd + pd[: 1000], b"", pd[:-1], pd * 3])
        elif k == 7:
            ds.PixelRepresentation = rng.choice([1, 2, 65535])
        elif k == 8:
            ds.file_meta.TransferSyntaxUID = rng.choice(["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90",
                                                         "1.2.840.10008.1.2.4.80", "1.2.3.4", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.70"])
        elif k == 9:
            ds.PlanarConfiguration = rng.choice([1, 2, 65535])
        elif k == 10:
            ds.HighBit = rng.choice([0, 7, 15, 31, 65535])
        else:
            for tag in rng.sample(["SOPClassUID", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation"], 2):
                if tag in ds:
                    delattr(ds, tag)
        edits.append(k)
      except Exception:  # pydicom refused the value: leave this edit out
        pass
    buf = io.BytesIO()
    try:
        syn = ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")
        implicit = str(syn) == "1.2.840.10008.1.2"
        ds.save_as(buf, implicit_vr=implicit, little_endian=str(syn) != "1.2.840.10008.1.2.2", enforce_file_format=False)
        if bad_frames is not None:
            return buf.getvalue().replace(b"9999999998", bad_frames.ljust(10).encode()[:10], 1)
    except Exception:  # pydicom refused to write it: fall back to a byte mutant
        return m_flip(rng, SEEDS[base])
    return buf.getvalue()


def _deflate_bomb(rng: random.Random) -> bytes:
    """A Deflated-syntax DICOM whose dataset inflates to a lot."""
    meta_ts = b"1.2.840.10008.1.2.1.99\x00"
    meta = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(meta_ts)) + meta_ts
    grp = b"\x02\x00\x00\x00UL" + struct.pack("<HI", 4, len(meta))
    n = rng.choice([50, 800, 1200]) << 20
    rows = cols = 1024
    ds = (b"\x28\x00\x10\x00US\x02\x00" + struct.pack("<H", rows) + b"\x28\x00\x11\x00US\x02\x00" + struct.pack("<H", cols)
          + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", n))
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = co.compress(ds)
    zero = b"\x00" * (1 << 20)
    for _ in range(n >> 20):
        body += co.compress(zero)
    body += co.flush()
    return b"\x00" * 128 + b"DICM" + grp + meta + body


SEEDS: dict[str, bytes] = {}


def make_mutant(seed: int, index: int) -> tuple[str, str, bytes]:
    """(seed file name, mutator name, bytes) of mutant ``index`` of campaign ``seed``: deterministic."""
    rng = random.Random(f"{seed}:{index}")
    names = sorted(SEEDS)
    base = names[index % len(names)]
    data = SEEDS[base]
    fmt = fmt_of(base)
    r = rng.random()
    if fmt == "dicom" and r < 0.45:
        if rng.random() < 0.03:
            return base, "dicom_deflate_bomb", _deflate_bomb(rng)
        return base, "dicom_variant", dicom_variant(rng, base)
    if fmt in TARGETED and r < 0.45:
        mut = TARGETED[fmt]
    else:
        mut = rng.choice(GENERIC)
    out = mut(rng, data)
    if rng.random() < 0.15:  # a second, generic mutation on top
        m2 = rng.choice(GENERIC)
        out = m2(rng, out) if out else out
        return base, f"{mut.__name__}+{m2.__name__}", out
    return base, mut.__name__, out


# ---------------------------------------------------------------------------------------------------- worker
def worker_main(args: argparse.Namespace) -> None:
    """Read file paths on stdin, run the header parsers and prepare_item on each, answer JSON lines."""
    import logging
    import resource
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (args.mem_mb << 20, args.mem_mb << 20))
    errpath = Path(args.out) / "worker_stderr.log"
    errfd = os.open(errpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(errfd, 2)
    import cv2

    cv2.setNumThreads(1)  # as the pipeline runs it (opencv_single_threaded)
    from uopsl.runtime import dicomfile, exif, imagefile
    from uopsl.runtime.pipeline import PrepareSpec, prepare_item
    from uopsl.runtime.inputs import item_for_path
    from uopsl.runtime.preprocess import PreprocessConfig

    specs = [PrepareSpec(PreprocessConfig(size=224), thumbnail_side=0),
             PrepareSpec(PreprocessConfig(size=320, clahe=True), thumbnail_side=256)]
    captured: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info:
                captured.append("".join(traceback.format_exception(*record.exc_info)))

    plog = logging.getLogger("uopsl.runtime.pipeline")
    plog.setLevel(logging.DEBUG)
    plog.addHandler(Grab())
    plog.propagate = False
    parsers = [
        ("image_format", imagefile.image_format), ("other_format", imagefile.other_format),
        ("header_size", imagefile.header_size), ("jpeg_frame", imagefile.jpeg_frame),
        ("jpeg_scan_start", imagefile.jpeg_scan_start), ("is_truncated", imagefile.is_truncated),
        ("tiff_pictures", imagefile.tiff_pictures), ("tiff_sample_max", imagefile.tiff_sample_max),
        ("png_significant_bits", imagefile.png_significant_bits),
        ("png_significant_bits_alpha", lambda d: imagefile.png_significant_bits(d, alpha=True)),
        ("j2k_precision", imagefile.j2k_precision), ("image_orientation", exif.image_orientation),
        ("jpeg_orientation", exif.jpeg_orientation), ("is_dicom", dicomfile.is_dicom),
        ("dicom_file_meta", dicomfile._file_meta),
    ]
    status = Path("/proc/self/status")
    for line in sys.stdin:
        req = json.loads(line)
        path = req["path"]
        data = Path(path).read_bytes()
        res: dict = {"parser_errors": [], "slow_parsers": []}
        for name, fn in parsers:
            t = time.perf_counter()
            try:
                fn(data)
            except Exception as exc:  # noqa: BLE001
                res["parser_errors"].append({"parser": name, "exc": f"{type(exc).__name__}: {exc}"[:300],
                                             "tb": traceback.format_exc()[-1500:]})
            dt = time.perf_counter() - t
            if dt > 0.5:
                res["slow_parsers"].append([name, round(dt, 2)])
        spec = specs[req["spec"]]
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        err_before = os.fstat(2).st_size
        captured.clear()
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            try:
                out = prepare_item(item_for_path(path), spec)
                res.update(error=out.error[:400], reasons=list(out.reasons), runnable=out.runnable,
                           gradable=None if out.verdict is None else out.verdict.gradable)
            except BaseException as exc:  # noqa: BLE001 - an escape is what we are looking for
                res.update(escaped=f"{type(exc).__name__}: {exc}"[:400], tb=traceback.format_exc()[-3000:])
        res["secs"] = round(time.perf_counter() - t, 3)
        res["warnings"] = sorted({f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})"[:300] for w in ws})
        if captured:
            res["tb"] = captured[-1][-3000:]
        hwm = next((l for l in status.read_text().splitlines() if l.startswith("VmHWM")), "VmHWM: 0 kB")
        res["peak_rss_mb"] = int(hwm.split()[1]) // 1024
        sys.stderr.flush()
        err_after = os.fstat(2).st_size
        if err_after > err_before:
            with open(errpath, "rb") as fh:
                fh.seek(err_before)
                res["stderr"] = fh.read(min(err_after - err_before, 600)).decode("utf-8", "replace")
        print(json.dumps(res), flush=True)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--out", self.args.out, "--mem-mb", str(self.args.mem_mb)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def kill(self) -> int | None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            rc = self.proc.wait()
            self.proc = None
            return rc
        return None

    def run(self, path: str, spec: int, timeout: float) -> tuple[str, dict]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"path": path, "spec": spec}) + "\n")
        self.proc.stdin.flush()
        # the first call after a start also pays the imports
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 10)
        if not ready:
            self.kill()
            return "timeout", {}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.kill()
            return "died", {"returncode": rc, "signal": signal.Signals(-rc).name if rc and rc < 0 else None}
        return "ok", json.loads(line)


def classify(state: str, res: dict, rss_flag_mb: int) -> str:
    if state == "timeout":
        return "c"
    if state == "died":
        return "d"
    if res.get("escaped") or res.get("parser_errors") or "internal_error" in res.get("reasons", []):
        return "b"
    reasons = res.get("reasons", [])
    if reasons and any(r[:1].isupper() for r in reasons):  # a UopslError's class name, not an image reason
        return "b"
    if "too_large" in reasons and "out of memory" in res.get("error", ""):
        return "d"
    if res.get("peak_rss_mb", 0) > rss_flag_mb or res.get("secs", 0) > 5 or res.get("slow_parsers"):
        return "d_rss"
    if res.get("warnings") or res.get("stderr"):
        return "e"
    return "a"


def signature(cls: str, base: str, res: dict) -> str:
    """What makes two defects the same: the class, and the last frame of the traceback or the message."""
    if cls == "b":
        if res.get("parser_errors"):
            pe = res["parser_errors"][0]
            return f"b parser {pe['parser']} {pe['exc'].split(':')[0]} @ {_last_frame(pe['tb'])}"
        tb = res.get("tb", "")
        return f"b {(res.get('escaped') or res.get('error', '')).split(':')[0]} @ {_last_frame(tb)} reasons={res.get('reasons')}"
    if cls == "e":
        w = res.get("warnings", [])
        if w:
            return f"e {fmt_of(base)} warning " + re.sub(r"\d+", "N", w[0].split(" (")[0])[:70]
        text = re.sub(r"\[ ?(WARN|ERROR):\d+@[\d.]+\] global ", "", res.get("stderr", "").splitlines()[0] if res.get("stderr") else "")
        return f"e {fmt_of(base)} stderr " + re.sub(r"\d+", "N", text)[:60]
    if cls == "d_rss":
        return f"d_rss {fmt_of(base)} reasons={res.get('reasons')}"
    return f"{cls} {fmt_of(base)} {res.get('signal') or ''}"


def _last_frame(tb: str) -> str:
    frames = [l.strip() for l in tb.splitlines() if l.strip().startswith("File ")]
    return frames[-1].replace("File ", "") if frames else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=1000, help="mutants to run")
    ap.add_argument("--start", type=int, default=0, help="first mutant index")
    ap.add_argument("--out", default="fuzz-out")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per mutant")
    ap.add_argument("--mem-mb", type=int, default=3072, help="address-space limit of the worker (MB)")
    ap.add_argument("--rss-flag-mb", type=int, default=1024, help="flag clean rows that peaked above this")
    ap.add_argument("--replay", type=int, nargs="*", help="rerun only these mutant indices (verbose)")
    ap.add_argument("--formats", default="", help="comma-separated seed prefixes to restrict to (jpeg,png,...)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)
    out = Path(args.out)
    (out / "repro").mkdir(parents=True, exist_ok=True)
    (out / "seeds").mkdir(exist_ok=True)
    SEEDS.update(build_seeds())
    if args.formats:
        keep = tuple(args.formats.split(","))
        for k in [k for k in SEEDS if not k.startswith(keep)]:
            del SEEDS[k]
    for name, data in SEEDS.items():
        (out / "seeds" / name).write_bytes(data)
    worker = Worker(args)
    indices = args.replay if args.replay is not None else range(args.start, args.start + args.n)
    per_fmt: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    defects: dict[str, dict] = {}
    scratch = out / "scratch"
    scratch.mkdir(exist_ok=True)
    t0 = time.time()
    with open(out / ("replay.jsonl" if args.replay is not None else "results.jsonl"), "a") as log:
        # the seeds themselves first: every one must give a clean row
        for name in sorted(SEEDS) if args.replay is None and args.start == 0 else []:
            state, res = worker.run(str(out / "seeds" / name), 0, args.timeout)
            print(f"seed {name}: {state} {res.get('reasons')} {res.get('error', '')[:100]}", flush=True)
        for idx in indices:
            base, mut, data = make_mutant(args.seed, idx)
            ext = Path(base).suffix
            path = scratch / f"m{idx}{ext}"
            path.write_bytes(data)
            spec = idx % 2
            state, res = worker.run(str(path), spec, args.timeout)
            cls = classify(state, res, args.rss_flag_mb)
            fmt = fmt_of(base)
            per_fmt[fmt][cls] += 1
            row = {"index": idx, "seed_file": base, "mutator": mut, "spec": spec, "size": len(data), "state": state,
                   "class": cls, **res}
            log.write(json.dumps(row) + "\n")
            if cls != "a":
                keep = out / "repro" / f"{args.seed}_{idx}_{cls}{ext}"
                keep.write_bytes(data)
                sig = signature(cls, base, res)
                d = defects.setdefault(sig, {"count": 0, "examples": []})
                d["count"] += 1
                if len(d["examples"]) < 5:
                    d["examples"].append({"index": idx, "file": str(keep), "mutator": mut, "seed_file": base,
                                          "error": res.get("error") or res.get("escaped"), "reasons": res.get("reasons"),
                                          "peak_rss_mb": res.get("peak_rss_mb"), "secs": res.get("secs"),
                                          "tb_tail": (res.get("tb") or (res.get("parser_errors") or [{}])[0].get("tb", ""))[-800:],
                                          "warnings": res.get("warnings"), "stderr": res.get("stderr")})
                if args.replay is not None:
                    print(json.dumps(row, indent=1))
            path.unlink()
            if (idx - args.start) % 200 == 199:
                print(f"{idx + 1} done, {time.time() - t0:.0f}s, " + json.dumps({k: dict(v) for k, v in per_fmt.items()}), flush=True)
    worker.kill()
    summary = {"seed": args.seed, "start": args.start, "n": len(list(indices)), "seconds": round(time.time() - t0),
               "per_format": {k: dict(v) for k, v in sorted(per_fmt.items())},
               "totals": dict(sum(per_fmt.values(), collections.Counter())),
               "defects": dict(sorted(defects.items(), key=lambda kv: -kv[1]["count"]))}
    name = "summary.json" if args.replay is None else "replay_summary.json"
    (out / name).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("per_format", "totals", "seconds")}, indent=1))
    for sig, d in summary["defects"].items():
        print(f"{d['count']:5d}  {sig}")


if __name__ == "__main__":
    main()
