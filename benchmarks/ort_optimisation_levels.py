"""How far ONNX Runtime's graph optimisation level moves an INT8 file's outputs (why a parity verdict records it).

Runs the bundle's ``model.int8.onnx`` on ONNX Runtime's CPU provider at optimisation levels ``all`` (what the
runtime and ``uopsl validate`` use), ``basic`` and ``disable``, on the first N photographs of a folder, and
prints the largest probability difference from ``all``.

Usage::

    python benchmarks/ort_optimisation_levels.py demo/bundle demo/data/test/fundus --limit 120
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.inputs import walk_images
from uopsl.runtime.preprocess import preprocess_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("photos", type=Path)
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--file", default="model.int8.onnx")
    args = ap.parse_args()
    m = read_manifest(args.bundle)
    photos = list(walk_images(args.photos))[: args.limit]
    x = np.stack([preprocess_file(p, m.preprocess).image for p in photos])
    out = {}
    for level in ("all", "basic", "disable"):
        with OrtBackend(args.bundle / args.file, "cpu", 2, optimization=level) as b:
            out[level] = np.concatenate([b.infer(x[i:i + 8])["probs"] for i in range(0, len(x), 8)])
    for level in ("basic", "disable"):
        print(f"{args.file}: {level} vs all: max |dp| {float(np.abs(out[level] - out['all']).max()):.4f} "
              f"on {len(x)} photographs")


if __name__ == "__main__":
    main()
