"""Preprocessing cost per photograph, with and without reduced-scale JPEG decoding.

    python benchmarks/bench_preprocess.py --tvhl ../shared/data/tvhl --n 100

Measures CPU time (single process) of ``preprocess`` + the quality gate on (a)
TVHL's 512 px JPEGs and (b) a camera-sized 3888x2592 JPEG (a synthetic
fundus, seed 0), each at model sizes 224 and 320, with ``fast_decode`` on and
off. CPU time is reported because the development box is shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

from uopsl.runtime.preprocess import PreprocessConfig, preprocess
from uopsl.runtime.quality import assess


def cpu_ms(datas: list[bytes], cfg: PreprocessConfig) -> tuple[float, float]:
    t_pre = t_q = 0.0
    for d in datas:
        t = time.process_time()
        p = preprocess(d, cfg)
        t_pre += time.process_time() - t
        t = time.process_time()
        assess(p)
        t_q += time.process_time() - t
    return 1e3 * t_pre / len(datas), 1e3 * t_q / len(datas)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    tvhl = [p.read_bytes() for p in sorted((args.tvhl / "fundus").glob("*.jpg"))[: args.n]]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from imagekit import draw_fake_fundus

    big = cv2.resize(draw_fake_fundus(512, seed=0), (3888, 2592), interpolation=cv2.INTER_CUBIC)
    camera = [cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()] * 10
    print("| images | model size | fast_decode | preprocess ms (CPU) | gate ms (CPU) |")
    print("|---|---|---|---|---|")
    for name, datas in (("TVHL 512 px JPEG", tvhl), ("camera 3888x2592 JPEG", camera)):
        for size in (224, 320):
            for fast in (True, False):
                pre, q = cpu_ms(datas, PreprocessConfig(size=size, fast_decode=fast))
                print(f"| {name} | {size} | {fast} | {pre:.1f} | {q:.1f} |")


if __name__ == "__main__":
    main()
