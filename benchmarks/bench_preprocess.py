"""Preprocessing cost per photograph, with and without reduced-scale JPEG decoding.

    python benchmarks/bench_preprocess.py --tvhl ../shared/data/tvhl --n 100
    python benchmarks/bench_preprocess.py --tvhl ../shared/data/tvhl --n 100 --profile 224

Measures CPU time (single process) of ``preprocess`` + the quality gate on (a)
TVHL's 512 px JPEGs and (b) a camera-sized 3888x2592 JPEG (a synthetic
fundus, seed 0), each at model sizes 224 and 320, with ``fast_decode`` on and
off. CPU time is reported because the development box is shared; each figure
is the best of ``--rounds`` passes (the least disturbed by other jobs).
``--profile SIZE`` instead lists where the CPU goes (cProfile, own time per
photograph of the costliest calls) on the TVHL photographs at that model size.
``--cv-threads`` sets OpenCV's thread count (default 1, as the screening
pipeline's worker threads would want; OpenCV's own default is one per core).
``--pipeline SIZE`` instead measures the whole screening pipeline's CPU per
photograph (read, hash, decode, preprocess, gate, worker threads, results)
with an instant backend, on the first ``--n`` TVHL photographs at that model
size, in four interleaved settings: the JPEG decode rule of old configs
(ratio 2, no floor) or today's, and OpenCV left at its own thread count or
single-threaded as ``ScreeningPipeline.run`` now keeps it (the former
simulated by switching that off); median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.runtime.preprocess import PreprocessConfig, preprocess
from uopsl.runtime.quality import assess


def cpu_ms(datas: list[bytes], cfg: PreprocessConfig, rounds: int = 1) -> tuple[float, float]:
    """Best-of-``rounds`` CPU milliseconds per photograph of (preprocess, quality gate)."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        t_pre = t_q = 0.0
        for d in datas:
            t = time.process_time()
            p = preprocess(d, cfg)
            t_pre += time.process_time() - t
            t = time.process_time()
            assess(p)
            t_q += time.process_time() - t
        best = (min(best[0], 1e3 * t_pre / len(datas)), min(best[1], 1e3 * t_q / len(datas)))
    return best


def profile(datas: list[bytes], cfg: PreprocessConfig, top: int = 25) -> None:
    """Print the ``top`` calls by own CPU time, in ms per photograph (cProfile adds some overhead)."""
    for d in datas[:5]:
        assess(preprocess(d, cfg))
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for d in datas:
        assess(preprocess(d, cfg))
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = sorted(((tt, ct, nc, f"{Path(fn).name}:{line}({name})" if fn != "~" else name)
                   for (fn, line, name), (_, nc, tt, ct, _) in stats.items()), reverse=True)
    print(f"| call (model size {cfg.size}) | own ms/photo | incl. ms/photo | calls/photo |")
    print("|---|---|---|---|")
    for tt, ct, nc, name in rows[:top]:
        print(f"| {name} | {1e3 * tt / len(datas):.3f} | {1e3 * ct / len(datas):.3f} | {nc / len(datas):.1f} |")


class _InstantBackend:
    """Answers every batch at once, so only the pipeline's own CPU is measured."""

    def __init__(self, k: int) -> None:
        self.k = k

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        b = x.shape[0]
        return {"probs": np.full((b, self.k), 0.1, np.float32), "logits": np.zeros((b, self.k), np.float32),
                "site_maps": np.zeros((b, self.k, 8, 8), np.float32)}


def pipeline_cpu(paths: list[Path], size: int, rounds: int) -> None:
    """CPU ms per photograph of ScreeningPipeline.run with an instant backend, four settings interleaved."""
    import uopsl.runtime.pipeline as pipeline_mod
    from uopsl.runtime.bundle import ClassSpec, Manifest

    @contextlib.contextmanager
    def leave_opencv_alone() -> Iterator[None]:
        yield

    classes = tuple(ClassSpec(name=f"c{i}") for i in range(5))
    new = PreprocessConfig(size=size)
    old = dataclasses.replace(new, decode_min_ratio=2.0, decode_min_side=0)
    settings: dict[str, tuple[PreprocessConfig, Any]] = {
        "old rule, OpenCV threads as they are": (old, leave_opencv_alone),
        "old rule, OpenCV single-threaded": (old, pipeline_mod.opencv_single_threaded),
        "new rule, OpenCV threads as they are": (new, leave_opencv_alone),
        "new rule, OpenCV single-threaded (today)": (new, pipeline_mod.opencv_single_threaded),
    }
    real = pipeline_mod.opencv_single_threaded
    cv2.setNumThreads(-1)  # OpenCV's own default (one thread per core)
    results: dict[str, list[float]] = {k: [] for k in settings}
    try:
        for _ in range(rounds):
            for name, (cfg, cv_ctx) in settings.items():
                m = Manifest(classes=classes, head="sigmoid", preprocess=cfg, files=())
                pipeline_mod.opencv_single_threaded = cv_ctx
                pipe = pipeline_mod.ScreeningPipeline(_InstantBackend(len(classes)), m,  # type: ignore[arg-type]
                                                      pipeline_mod.PipelineConfig(batch_size=8))
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                n = sum(1 for _ in pipe.run(paths))
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                results[name].append(1e3 * (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n)
    finally:
        pipeline_mod.opencv_single_threaded = real
    print(f"| pipeline, {len(paths)} TVHL photographs, model size {size} | CPU ms per photograph (median of {rounds}) | rounds |")
    print("|---|---|---|")
    for name, v in results.items():
        print(f"| {name} | {statistics.median(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="passes per figure; the best is reported")
    ap.add_argument("--cv-threads", type=int, default=1, help="cv2.setNumThreads (OpenCV's default: one per core)")
    ap.add_argument("--profile", type=int, metavar="SIZE", help="profile the TVHL photographs at this model size")
    ap.add_argument("--pipeline", type=int, metavar="SIZE",
                    help="the screening pipeline's CPU per photograph at this model size (instant backend)")
    args = ap.parse_args()
    if args.pipeline:
        pipeline_cpu(sorted((args.tvhl / "fundus").glob("*.jpg"))[: args.n], args.pipeline, args.rounds)
        return
    cv2.setNumThreads(args.cv_threads)
    tvhl = [p.read_bytes() for p in sorted((args.tvhl / "fundus").glob("*.jpg"))[: args.n]]
    if args.profile:
        profile(tvhl, PreprocessConfig(size=args.profile))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from imagekit import draw_fake_fundus

    big = cv2.resize(draw_fake_fundus(512, seed=0), (3888, 2592), interpolation=cv2.INTER_CUBIC)
    camera = [cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()] * 10
    print("| images | model size | fast_decode | preprocess ms (CPU) | gate ms (CPU) | total ms (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, datas in (("TVHL 512 px JPEG", tvhl), ("camera 3888x2592 JPEG", camera)):
        for size in (224, 256, 320):
            for fast in (True, False):
                pre, q = cpu_ms(datas, PreprocessConfig(size=size, fast_decode=fast), args.rounds)
                print(f"| {name} | {size} | {fast} | {pre:.2f} | {q:.2f} | {pre + q:.2f} |")


if __name__ == "__main__":
    main()
