"""End-to-end throughput against pure inference, by the number of preprocessing worker threads (or their priority).

The pipeline's default is one worker per core (at most 4). On a small CPU the inference threads and the
workers share the same cores, so more workers may only add contention. For each INT8 backend this opens
the backend once, then, round after round (settings interleaved, so drifting load hits all alike):
pure batch-8 inference on preprocessed TVHL photographs, and the whole pipeline on ``--images`` TVHL
JPEGs at batch 8 with each worker count. Reports the median of the rounds.

    python benchmarks/exp_e2e_workers.py --size 224 --rounds 3
    python benchmarks/exp_e2e_workers.py --bundle runs/some/bundle --workers 1,2,3
    python benchmarks/exp_e2e_workers.py --size 224 --rounds 4 --workers 2 --nice 0,10,19

``--nice``: the workers' Linux nice value (each worker thread lowers its own priority when it starts), so
the inference threads win the cores when both are ready and the workers fill the gaps; every worker
count is run at every nice value. Linux only (threads have their own nice value there); an experiment,
not a pipeline option.

Without ``--bundle`` it builds (or reuses) ``bench_runtime.py``'s random-weight ResNet-18 bundle in
``--work``; speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

import uopsl.runtime.pipeline as pipeline_mod
from uopsl.runtime.backends import open_backend
from uopsl.runtime.bench import time_backend, time_end_to_end
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.pipeline import PipelineConfig
from uopsl.runtime.preprocess import preprocess, read_bytes

sys.path.insert(0, str(Path(__file__).parent))
from bench_runtime import TVHL, build_bundle  # noqa: E402


_NICE = [0]


class _NicePool(concurrent.futures.ThreadPoolExecutor):
    """The pipeline's worker pool, each worker thread at nice ``_NICE[0]`` (read when the pool starts)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        nice = _NICE[0]

        def lower() -> None:
            if nice:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)

        super().__init__(max_workers, thread_name_prefix=thread_name_prefix, initializer=lower)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "uopsl_bench")
    ap.add_argument("--backends", default="ort-cpu,openvino")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (comma-separated)")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nice", default="0", help="worker nice values to compare (comma-separated; Linux)")
    args = ap.parse_args()
    nices = [int(n) for n in args.nice.split(",")]
    if nices != [0]:
        if not sys.platform.startswith("linux"):
            raise SystemExit("--nice needs Linux (per-thread nice values)")
        pipeline_mod.ThreadPoolExecutor = _NicePool  # type: ignore[misc]
    fundus = sorted((TVHL / "fundus").glob("*.jpg"))
    rng = np.random.default_rng(0)
    if args.bundle is None:
        calib = [fundus[i] for i in rng.choice(len(fundus), 32, replace=False)]
        bundle = build_bundle(args.work / f"resnet18_{args.size}", args.size, calib, "resnet18")
    else:
        bundle = args.bundle
    m = read_manifest(bundle)
    sources = [fundus[i % len(fundus)] for i in range(args.images)]
    batch_images = np.stack([preprocess(read_bytes(p), m.preprocess).image for p in fundus[:64]])
    workers = [int(w) for w in args.workers.split(",")]
    settings = [(w, n) for w in workers for n in nices]
    print(f"bundle {bundle} ({m.preprocess.size} px); default workers here: {PipelineConfig().n_workers}")
    print("| backend | pure batch-8 img/s | " + " | ".join(
        f"e2e img/s, {w} worker{'s' if w > 1 else ''}{f', nice {n}' if nices != [0] else ''} (ratio)"
        for w, n in settings) + " |")
    print("|---|---|" + "---|" * len(settings))
    for name in args.backends.split(","):
        b = open_backend(bundle, name, "int8", None, manifest=m, measure=False, spin=False, batch=8)
        pure: list[float] = []
        e2e: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
        with b:
            for r in range(args.rounds):
                pure.append(next(x["throughput_ips"] for x in time_backend(b, (8,), 30, 3, batch_images)))
                for w, n in settings if r % 2 == 0 else settings[::-1]:  # alternate the order between rounds
                    _NICE[0] = n
                    e2e[(w, n)].append(time_end_to_end(b, m, sources, 8, w)["throughput_ips"])
        p = statistics.median(pure)
        cells = [f"{statistics.median(v):.1f} ({statistics.median(v) / p:.2f}; rounds "
                 f"{', '.join(f'{x:.0f}' for x in v)})" for v in e2e.values()]
        print(f"| {name} INT8 | {p:.1f} (rounds {', '.join(f'{x:.0f}' for x in pure)}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
