"""Real photographs screened as DICOM files and as the JPEGs they came from: the same rows?

Wraps each fundus JPEG under ``--images`` (TVHL's, say) two ways, as a hospital
camera or PACS would export it (Ophthalmic Photography 8 Bit Image Storage):

* ``wrapped``: the JPEG's own bytes encapsulated (JPEG Baseline transfer syntax);
* ``raw``: its pixels, decoded in full by the runtime, stored uncompressed.

Then screens the JPEG folder and both DICOM folders with ``uopsl-screen``'s
Python API (``Screener.screen_to``, ONNX Runtime FP32 on the CPU) and reports,
against the JPEG rows: identical probabilities, status and reasons; the largest
|probability change|; referral calls that change; and the CPU seconds each
screening took. A wrapped JPEG should give the JPEG's row exactly (same bytes,
same decoder). A raw file cannot use libjpeg's reduced-scale decode, so for a
model smaller than half the photograph its pixels differ slightly.

    python benchmarks/dicom_screen.py BUNDLE --images ../shared/data/tvhl/fundus --out /tmp/dicom_screen

Needs pydicom (``pip install 'uopsl[dicom]'``) to write the files.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from uopsl.runtime.api import Screener
from uopsl.runtime.inputs import walk_images
from uopsl.runtime.preprocess import decode, read_bytes

OPHTHALMIC_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def dicom_file(rgb: np.ndarray, *, wrapped_jpeg: bytes | None) -> bytes:
    """An Ophthalmic Photography DICOM file of ``rgb``: the JPEG bytes encapsulated, or raw pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OPHTHALMIC_8BIT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if wrapped_jpeg is not None else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = OPHTHALMIC_8BIT, meta.MediaStorageSOPInstanceUID, "OP"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422" if wrapped_jpeg is not None else "RGB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([wrapped_jpeg]) if wrapped_jpeg is not None else np.ascontiguousarray(rgb).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def screen(bundle: Path, folder: Path, out: Path) -> tuple[dict[str, dict], float]:
    """Rows by photograph stem, and the process CPU seconds the screening took."""
    t0 = time.process_time()
    with Screener(bundle, backend="ort-cpu", precision="fp32") as s:
        s.screen_to(out, [str(folder)], report=False)
    cpu = time.process_time() - t0
    rows = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[Path(r["source"]).stem.removesuffix("_raw")] = r
    return rows, cpu


def compare(ref: dict[str, dict], got: dict[str, dict], classes: list[str]) -> dict[str, object]:
    same = 0
    max_dp = 0.0
    refer_flips = 0
    status_changes = 0
    for k, a in ref.items():
        b = got[k]
        if (a["status"], a.get("reasons"), a.get("probs")) == (b["status"], b.get("reasons"), b.get("probs")):
            same += 1
        status_changes += a["status"] != b["status"]
        if a.get("probs") and b.get("probs"):
            max_dp = max(max_dp, max(abs(a["probs"][c] - b["probs"][c]) for c in classes))
            refer_flips += bool(a.get("refer")) != bool(b.get("refer"))
    return {"photographs": len(ref), "identical_rows": same, "status_changes": status_changes,
            "max_abs_prob_change": max_dp, "referral_calls_changed": refer_flips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=0, help="first N photographs only (0: all)")
    args = ap.parse_args()
    paths = sorted(walk_images(args.images))
    if args.n:
        paths = paths[: args.n]
    folders = {k: args.out / k for k in ("jpeg", "wrapped", "raw")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for p in paths:
        data = read_bytes(p)
        (folders["jpeg"] / f"{p.stem}.jpg").write_bytes(data)
        (folders["wrapped"] / f"{p.stem}.dcm").write_bytes(dicom_file(decode(data), wrapped_jpeg=data))
        (folders["raw"] / f"{p.stem}_raw.dcm").write_bytes(dicom_file(decode(data), wrapped_jpeg=None))
    results: dict[str, object] = {"bundle": str(args.bundle), "images": str(args.images), "n": len(paths)}
    rows = {}
    for k, folder in folders.items():
        rows[k], cpu = screen(args.bundle, folder, args.out / f"screen_{k}")
        results[f"cpu_s_{k}"] = round(cpu, 2)
    classes = list(next(r for r in rows["jpeg"].values() if r.get("probs"))["probs"])
    results["wrapped_vs_jpeg"] = compare(rows["jpeg"], rows["wrapped"], classes)
    results["raw_vs_jpeg"] = compare(rows["jpeg"], rows["raw"], classes)
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
