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
import statistics
import time
from pathlib import Path

import cv2

from uopsl.runtime import fov, preprocess as prep
from uopsl.runtime.quality import assess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    cfg = prep.PreprocessConfig(size=args.size)
    datas = [p.read_bytes() for p in sorted((args.tvhl / "fundus").glob("*.jpg"))]
    for _ in range(args.passes):
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
    med = {k: statistics.median(v) for k, v in ms.items()}
    rest = med["preprocess"] - med["header"] - med["decode"] - med["find_fov"]
    print(f"{len(datas)} photographs at {args.size} px, CPU ms per photograph (median of the last pass):")
    for k in ("header", "decode", "find_fov"):
        print(f"  {k:<22} {med[k]:.2f}")
    print(f"  {'rest of preprocessing':<22} {rest:.2f}")
    print(f"  {'preprocess (whole)':<22} {med['preprocess']:.2f}")
    print(f"  {'gate':<22} {med['gate']:.2f}")
    print(f"  {'worker share':<22} {med['preprocess'] + med['gate']:.2f}")


if __name__ == "__main__":
    main()
