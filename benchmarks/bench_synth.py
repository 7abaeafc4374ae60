"""Throughput of the synthetic retina generator on ONE CPU core.

Goal (issue 2): >= 50 fundus images/s at 512 px on one core.

    python benchmarks/bench_synth.py                # 300 images, 512 px, seed 0
    python benchmarks/bench_synth.py --n 500 --size 512 --json out.json

The process is pinned to one core (where the OS allows), OpenCV runs single-
threaded, and labels follow the default :class:`SynthConfig` mix (30 % normal,
seen classes). Reported per stage, each as images/s:

* ``fundus``: :func:`generate_fundus` without site masks (the goal's figure);
* ``fundus+masks``: with site masks;
* ``fundus+masks+encode``: plus JPEG encoding and the mask ``.npz`` (what
  ``make_dataset`` does per image, minus the file write);
* ``oct``: :func:`generate_oct` with masks at the default B-scan size.

Both wall-clock and process CPU time are given: on a shared machine the CPU
figure is the one that reflects the generator (wall time includes waiting for
the core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from uopsl.train.synthetic import SynthConfig, generate_fundus, generate_oct, npz_bytes, sample_labels  # noqa: E402


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity on this OS)"


def _rate(n: int, fn: Callable[[int], object]) -> dict[str, float]:
    fn(0)  # warm-up: noise textures and OpenCV code paths
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"wall_img_s": round(n / wall, 1), "cpu_img_s": round(n / cpu, 1), "ms_per_img_cpu": round(1000 * cpu / n, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="images per stage")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    pin = _pin_one_core()
    cv2.setNumThreads(1)
    cfg = SynthConfig(size=args.size, seed=args.seed)
    label_rng = np.random.default_rng(args.seed)
    labels = [sample_labels(label_rng, cfg) for _ in range(args.n)]
    oh, ow = cfg.oct_shape

    def fundus(masks: bool, encode: bool) -> Callable[[int], object]:
        def run(i: int) -> object:
            im = generate_fundus(np.random.default_rng([args.seed, i]), labels[i], args.size, with_masks=masks)
            if encode:
                cv2.imencode(".jpg", cv2.cvtColor(im.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
                if im.masks:
                    npz_bytes(im.masks)
            return im
        return run

    results = {
        "fundus": _rate(args.n, fundus(False, False)),
        "fundus+masks": _rate(args.n, fundus(True, False)),
        "fundus+masks+encode": _rate(args.n, fundus(True, True)),
        "oct": _rate(args.n, lambda i: generate_oct(np.random.default_rng([args.seed, i]), labels[i], ow, oh)),
    }
    meta = {
        "size": args.size, "oct_shape": [oh, ow], "n": args.n, "seed": args.seed, "cores": pin,
        "cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
        "numpy": np.__version__, "opencv": cv2.__version__,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    print(f"synthetic generator, {args.size} px, n={args.n}, {pin}")
    for name, r in results.items():
        print(f"  {name:22s} {r['cpu_img_s']:7.1f} img/s (CPU time)  {r['wall_img_s']:7.1f} img/s (wall)  "
              f"{r['ms_per_img_cpu']:6.2f} ms/img")
    goal = results["fundus"]["cpu_img_s"]
    print(f"goal >= 50 fundus img/s on one core: {'met' if goal >= 50 else 'NOT met'} ({goal} img/s CPU time)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"results": results, "meta": meta}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
