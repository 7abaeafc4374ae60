"""Where a photograph's worker CPU goes, stage by stage: header, decode, field of view, the rest of
preprocessing, and the quality gate (thread CPU time, one OpenCV thread, as a screening worker runs it).

    python benchmarks/preprocess_stages.py --tvhl ../shared/data/tvhl --size 224

Each photograph is prepared twice: once stage by stage (header and decode as ``preprocess`` does them,
then ``find_fov`` on the decoded image), once whole (``preprocess``, then ``assess``); "rest of
preprocessing" is the whole minus the first three stages' medians. The last of ``--passes`` passes is
reported (the earlier ones warm caches). The header and decode stages call ``preprocess``'s own private
steps, so a change to how ``preprocess`` reads a file must be made here too; ``bench_preprocess.py
--profile`` lists the same cost by function without that coupling.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime import fov, preprocess as prep, quality
from uopsl.runtime.quality import assess


def _linear_resize_square(img: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def _inputs_and_verdicts(datas: list[bytes], cfg: prep.PreprocessConfig) -> list[tuple[np.ndarray, bool]]:
    """Each photograph's model input and gate verdict under whatever rule the runtime has now."""
    out = []
    for data in datas:
        pre = prep.preprocess(data, cfg)
        out.append((pre.image, assess(pre).gradable))
    return out


@contextlib.contextmanager
def _what_if(detect_side: int, work_side: int, linear_shrink: bool) -> Iterator[None]:
    """The runtime's field-of-view side, gate work side and crop shrink replaced, and restored on exit."""
    saved = fov._DETECT_SIDE, quality.WORK_SIDE, prep.resize_square
    fov._DETECT_SIDE, quality.WORK_SIDE = detect_side, work_side
    if linear_shrink:
        prep.resize_square = _linear_resize_square
    try:
        yield
    finally:
        fov._DETECT_SIDE, quality.WORK_SIDE, prep.resize_square = saved


def _stage_medians(datas: list[bytes], cfg: prep.PreprocessConfig, passes: int) -> dict[str, float]:
    for _ in range(passes):
        ms: dict[str, list[float]] = {k: [] for k in ("header", "decode", "find_fov", "preprocess", "gate")}
        for data in datas:
            t0 = time.thread_time()
            fmt = prep.check_image_bytes(data, cfg.max_pixels)
            frame = prep.jpeg_frame(data)
            scale = prep._jpeg_reduction(data, cfg, frame)
            t1 = time.thread_time()
            rgb, _ = prep._decode_at(data, fmt, frame[:2] if frame else (0, 0), scale, cfg, None)
            t2 = time.thread_time()
            fov.find_fov(rgb, cfg.fov_threshold)
            t3 = time.thread_time()
            pre = prep.preprocess(data, cfg)
            t4 = time.thread_time()
            assess(pre)
            t5 = time.thread_time()
            for k, v in zip(ms, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                ms[k].append(1e3 * v)
    return {k: statistics.median(v) for k, v in ms.items()}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--n", type=int, default=0, help="only the first N photographs in name order (0: all)")
    ap.add_argument("--detect-side", type=int, default=fov._DETECT_SIDE,
                    help="what-if: find the field of view on a copy this large (shipped: %(default)s)")
    ap.add_argument("--work-side", type=int, default=quality.WORK_SIDE,
                    help="what-if: measure the gate on a copy this large (shipped: %(default)s)")
    ap.add_argument("--linear-shrink", action="store_true",
                    help="what-if: shrink the crop to the model size bilinearly (shipped: area averaging)")
    args = ap.parse_args(argv)
    if not (32 <= args.detect_side <= 4096 and 32 <= args.work_side <= 4096):
        ap.error(f"--detect-side and --work-side must be in 32..4096, got {args.detect_side} and {args.work_side}")
    if args.passes < 1 or args.n < 0:
        ap.error(f"--passes must be >= 1 and --n >= 0, got {args.passes} and {args.n}")
    cv2.setNumThreads(1)
    cfg = prep.PreprocessConfig(size=args.size)
    paths = sorted((args.tvhl / "fundus").glob("*.jpg"))
    datas = [p.read_bytes() for p in (paths[: args.n] if args.n else paths)]
    if not datas:
        ap.error(f"no *.jpg under {args.tvhl / 'fundus'}")
    what_if = args.detect_side != fov._DETECT_SIDE or args.work_side != quality.WORK_SIDE or args.linear_shrink
    shipped = _inputs_and_verdicts(datas, cfg) if what_if else []
    with _what_if(args.detect_side, args.work_side, args.linear_shrink):
        med = _stage_medians(datas, cfg, args.passes)
        rest = med["preprocess"] - med["header"] - med["decode"] - med["find_fov"]
        lines = [f"{len(datas)} photographs at {args.size} px, CPU ms per photograph (median of the last pass):"]
        lines += [f"  {k:<22} {med[k]:.2f}" for k in ("header", "decode", "find_fov")]
        lines += [f"  {'rest of preprocessing':<22} {rest:.2f}", f"  {'preprocess (whole)':<22} {med['preprocess']:.2f}",
                  f"  {'gate':<22} {med['gate']:.2f}", f"  {'worker share':<22} {med['preprocess'] + med['gate']:.2f}"]
        if what_if:
            ours = _inputs_and_verdicts(datas, cfg)
            diffs = [float(np.abs(a.astype(np.int16) - b).mean()) for (a, _), (b, _) in zip(ours, shipped)]
            changed = sum(x != y for (_, x), (_, y) in zip(ours, shipped))
            lines += [f"what-if: detect side {args.detect_side}, gate work side {args.work_side}, "
                      f"{'bilinear' if args.linear_shrink else 'area'} shrink; against the shipped rule:",
                      f"  model input mean |difference| {statistics.mean(diffs):.2f} grey levels "
                      f"(largest photograph {max(diffs):.2f}); gate verdicts changed: {changed} of {len(datas)}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
