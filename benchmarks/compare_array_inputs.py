"""How far is a photograph passed as an array (decoded by the caller) from the same photograph passed as its file?
(issue 5, the Python API)

A file's JPEG may be decoded at 1/2-1/8 scale by libjpeg (``PreprocessConfig.fast_decode``); an array decoded
elsewhere arrives at full size and takes the full-size path (as a PNG's pixels do). For each photograph: the mean
absolute difference of the two model inputs (grey levels), and whether the quality gate's verdict is the same.
With ``--bundle``, also the largest probability difference on ONNX Runtime (FP32).

Reproduce (docs/results.md, section 2, "Arrays and files"; ~1 min on 2 cores):

    python benchmarks/compare_array_inputs.py ../shared/data/tvhl/fundus --size 224 --size 256 --limit 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.quality import assess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--size", type=int, action="append", help="model input size (repeatable; default 224)")
    ap.add_argument("--limit", type=int, default=0, help="first N photographs in name order (0: all)")
    ap.add_argument("--bundle", type=Path, default=None, help="also compare a bundle's probabilities (its size)")
    args = ap.parse_args()
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[: args.limit] if args.limit else files
    sizes = args.size or [224]
    session = manifest = None
    if args.bundle is not None:
        import onnxruntime as ort

        from uopsl.runtime.bundle import read_manifest

        manifest = read_manifest(args.bundle)
        session = ort.InferenceSession(str(args.bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        sizes = [manifest.preprocess.size]
    for size in sizes:
        cfg = manifest.preprocess if manifest is not None else PreprocessConfig(size=size)
        diffs, verdicts_differ, dprob = [], 0, []
        for path in files:
            data = read_bytes(path)
            from_file = preprocess(data, cfg, source=str(path))
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            from_array = preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cfg, source=str(path))
            diffs.append(float(np.abs(from_file.image.astype(np.int16) - from_array.image.astype(np.int16)).mean()))
            verdicts_differ += assess(from_file).reasons != assess(from_array).reasons
            if session is not None:
                name = session.get_inputs()[0].name
                p = [session.run(["probs"], {name: x.image[None]})[0][0] for x in (from_file, from_array)]
                dprob.append(float(np.abs(p[0] - p[1]).max()))
        d = np.array(diffs)
        line = (f"{args.folder} at {cfg.size} px, {len(files)} photographs: model input |file - array| mean "
                f"{d.mean():.2f} grey levels (median {np.median(d):.2f}, max {d.max():.2f}); gate verdicts that "
                f"differ: {verdicts_differ}")
        if dprob:
            q = np.array(dprob)
            line += f"; max |prob diff| median {np.median(q):.3f}, max {q.max():.3f}"
        print(line)


if __name__ == "__main__":
    main()
