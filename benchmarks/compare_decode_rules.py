"""What a bundle's screening calls would lose or gain from another JPEG decode rule, before switching.

Preprocesses every photograph under ``--images`` twice: with the bundle's own
``PreprocessConfig`` and with the same config under another reduced-decode rule
(``--ratio`` / ``--side``, the defaults of configs made today). Reports, for
the bundle's FP32 ONNX model on ONNX Runtime CPU:

* CPU per photograph of preprocessing + quality gate under each rule (one
  thread, best of ``--rounds``);
* how far the model inputs move (mean absolute grey levels), how many gate
  verdicts change, the sharpness ratio;
* max / mean |probability change| over the photographs both rules decode,
  and the referral calls, class calls and top-1 classes that change among
  those the gate passes under both rules (screening decides nothing on the
  others);
* photographs only one rule could decode.

    python benchmarks/compare_decode_rules.py BUNDLE --images ../shared/data/tvhl/fundus

Configs stored before ``decode_min_ratio`` existed read back with the old
rule (ratio 2, side 0), so this is the check to run before re-exporting such a
checkpoint with the new one. Needs only the runtime (numpy, OpenCV, ONNX Runtime).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import UopslError
from uopsl.runtime.inputs import walk_images
from uopsl.runtime.preprocess import PreprocessConfig, Preprocessed, preprocess, read_bytes
from uopsl.runtime.quality import QualityVerdict, assess


def _cpu_ms(blobs: list[bytes], cfg: PreprocessConfig, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for data in blobs:
            try:
                assess(preprocess(data, cfg))
            except UopslError:
                pass
        best = min(best, (time.process_time() - t0) / len(blobs) * 1e3)
    return best


def _prepare(blobs: list[bytes], cfg: PreprocessConfig) -> list[tuple[Preprocessed, QualityVerdict] | None]:
    out: list[tuple[Preprocessed, QualityVerdict] | None] = []
    for data in blobs:
        try:
            pre = preprocess(data, cfg)
        except UopslError:
            out.append(None)
            continue
        out.append((pre, assess(pre)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, required=True, help="a folder of photographs (recursive)")
    ap.add_argument("--ratio", type=float, default=PreprocessConfig.decode_min_ratio)
    ap.add_argument("--side", type=int, default=PreprocessConfig.decode_min_side)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-images", type=int, default=0, help="0: all")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    saved = cv2.getNumThreads()
    cv2.setNumThreads(1)  # CPU figures per photograph on one thread
    try:
        return _compare(args)
    finally:
        cv2.setNumThreads(saved)


def _compare(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    m = read_manifest(args.bundle)
    own = m.preprocess
    other = dataclasses.replace(own, decode_min_ratio=args.ratio, decode_min_side=args.side)
    paths = sorted(walk_images(args.images))
    if args.max_images:
        paths = paths[: args.max_images]
    if not paths:
        print(f"no photographs under {args.images}", file=sys.stderr)
        return 2
    blobs = [read_bytes(p) for p in paths]
    a, b = _prepare(blobs, own), _prepare(blobs, other)
    both = [i for i in range(len(blobs)) if a[i] is not None and b[i] is not None]
    if not both:
        print(f"none of the {len(blobs)} files under {args.images} decodes under both rules", file=sys.stderr)
        return 2
    fp32 = [f.path for f in m.files_of("onnx") if f.precision == "fp32"]
    if not fp32:
        print(f"{args.bundle}: the manifest lists no FP32 ONNX model", file=sys.stderr)
        return 2
    sess = ort.InferenceSession(str(args.bundle / fp32[0]), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def probs(side: list[tuple[Preprocessed, QualityVerdict] | None]) -> np.ndarray:
        chunks = []
        for k in range(0, len(both), 16):
            x = np.stack([side[i][0].image for i in both[k : k + 16]])  # type: ignore[index]
            chunks.append(sess.run(["probs"], {name: x})[0])
        return np.concatenate(chunks)

    pa, pb = probs(a), probs(b)
    pos_a, ref_a = m.decide(pa)
    pos_b, ref_b = m.decide(pb)
    va = [a[i][1] for i in both]  # type: ignore[index]
    vb = [b[i][1] for i in both]  # type: ignore[index]
    graded = np.array([x.gradable and y.gradable for x, y in zip(va, vb)], bool)
    pixel = [float(np.abs(a[i][0].image.astype(np.int16) - b[i][0].image.astype(np.int16)).mean()) for i in both]  # type: ignore[index]
    sharp = np.array([y.metrics["sharpness"] / max(x.metrics["sharpness"], 1e-12) for x, y in zip(va, vb)])
    res = {
        "bundle": str(args.bundle), "images": len(blobs), "compared": len(both), "size": own.size,
        "own_rule": {"decode_min_ratio": own.decode_min_ratio, "decode_min_side": own.decode_min_side},
        "other_rule": {"decode_min_ratio": other.decode_min_ratio, "decode_min_side": other.decode_min_side},
        "cpu_ms_own": round(_cpu_ms(blobs, own, args.rounds), 3),
        "cpu_ms_other": round(_cpu_ms(blobs, other, args.rounds), 3),
        "mean_abs_pixel_change": round(float(np.mean(pixel)), 3),
        "gate_verdict_changes": sum(x.gradable != y.gradable for x, y in zip(va, vb)),
        "ungradable_own": sum(not x.gradable for x in va), "ungradable_other": sum(not y.gradable for y in vb),
        "sharpness_ratio_median": round(float(np.median(sharp)), 4),
        "sharpness_ratio_p5_p95": [round(float(v), 4) for v in np.percentile(sharp, [5, 95])],
        "max_abs_prob_change": round(float(np.abs(pa - pb).max()), 5),
        "mean_abs_prob_change": round(float(np.abs(pa - pb).mean()), 5),
        "gradable_both": int(graded.sum()),
        "referral_changes": int(np.sum((ref_a != ref_b) & graded)),
        "class_call_changes": int(np.sum((pos_a != pos_b) & graded[:, None])),
        "class_calls": int(graded.sum()) * pos_a.shape[1],
        "top1_changes": int(np.sum((pa.argmax(1) != pb.argmax(1)) & graded)),
        "decoded_by_own_rule_only": sum(a[i] is not None and b[i] is None for i in range(len(blobs))),
        "decoded_by_other_rule_only": sum(a[i] is None and b[i] is not None for i in range(len(blobs))),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
