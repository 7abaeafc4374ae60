"""How fast the screening pipeline can go when inference costs nothing, by worker count.

On the GPU machine of session 23 (16 cores, H200) ``uopsl-screen bench`` measured end-to-end throughput of
about 110 photographs/s against 5,800/s of pure ORT CUDA inference, below what ONE preprocessing thread
does alone (~230/s). This isolates the pipeline: the bundle's backend is opened once, run on one batch, and
then replaced by a stub that returns those outputs at once, so every second measured is decoding,
preprocessing, quality gate, result building and the pipeline's own hand-offs.

For each setting (worker count x ``sys.setswitchinterval``) it reports photographs/s, process CPU seconds
per photograph, and the speed-up over one worker. Settings are interleaved over ``--rounds`` rounds
(medians reported), so drifting load hits all alike.

    python benchmarks/exp_pipeline_ceiling.py BUNDLE --workers 1,2,4,8,16 --images 1000
    python benchmarks/exp_pipeline_ceiling.py BUNDLE --switch 0.005,0.0002 --backend ort-cuda --real
    python benchmarks/exp_pipeline_ceiling.py BUNDLE --prep-only --workers 1,4,16
    python benchmarks/exp_pipeline_ceiling.py BUNDLE --pool processes --workers 8 --max-per-task 1,4,8

``--max-per-task``: with worker processes, the most photographs one task carries (the pipeline's
``MAX_PER_TASK``; 1 is how session 23 ran), to see what sending several per task buys on this machine.

``--prep-only``: no pipeline, only its per-photograph work (decode, preprocess, quality gate) mapped over the
photographs by a pool of threads and by a pool of processes (spawned, started before timing), to see how far
each scales on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.backends import open_backend
from uopsl.runtime.bench import synthetic_jpeg
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.pipeline import PipelineConfig, ScreeningPipeline
from uopsl.runtime.inputs import item_for_data, item_for_path
from uopsl.runtime.preprocess import preprocess, read_bytes


class _Instant:
    """Stands in for the backend: the outputs of one real batch, cut or tiled to each batch's size."""

    def __init__(self, backend: Any, batch: np.ndarray) -> None:
        self._b = backend
        self._out = backend.infer(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = len(batch)
        return {k: np.resize(v, (n, *v.shape[1:])) for k, v in self._out.items()}


def _prep(blob: bytes, cfg: Any) -> float:
    from uopsl.runtime.pipeline import assess

    pre = preprocess(blob, cfg)
    return assess(pre).score


def prep_only(blobs: list[bytes], cfg: Any, workers: list[int], rounds: int) -> list[dict[str, Any]]:
    import concurrent.futures as cf
    import multiprocessing as mp

    rows = []
    for kind in ("thread", "process"):
        for w in workers:
            pool: cf.Executor = (cf.ThreadPoolExecutor(w) if kind == "thread"
                                 else cf.ProcessPoolExecutor(w, mp_context=mp.get_context("spawn")))
            with pool:
                list(pool.map(_prep, blobs[: 4 * w], [cfg] * (4 * w)))  # start every worker, warm imports
                speeds = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    list(pool.map(_prep, blobs, [cfg] * len(blobs), chunksize=1))
                    speeds.append(len(blobs) / (time.perf_counter() - t0))
            rows.append({"kind": kind, "workers": w, "ips": round(statistics.median(speeds), 1),
                         "rounds": [round(x, 1) for x in speeds]})
            print(f"| {kind} | {w} | {rows[-1]['ips']:.1f} | {rows[-1]['ips'] / rows[0]['ips']:.2f}x |", flush=True)
    return rows


def run_once(backend: Any, manifest: Any, items: list[Any], batch: int, workers: int,
             pool: str = "threads") -> tuple[float, float]:
    """Photographs/s, and this process's CPU ms per photograph (with worker processes: the parent's share)."""
    pipe = ScreeningPipeline(backend, manifest, PipelineConfig(batch_size=batch, workers=workers, worker_pool=pool))
    for _ in pipe.run(items[:batch]):  # warm the pool and the page cache
        pass
    c0, t0 = time.process_time(), time.perf_counter()
    n = sum(1 for _ in pipe.run(items))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / dt, cpu / n * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--real", action="store_true", help="Keep the real backend (no stub): the end-to-end figure.")
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--switch", default=str(sys.getswitchinterval()),
                    help="sys.setswitchinterval values to compare (seconds, comma-separated)")
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--folder", type=Path, default=None, help="JPEGs to screen [default: synthetic 512 px JPEGs]")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--prep-only", action="store_true")
    ap.add_argument("--max-per-task", default=None,
                    help="comma-separated values of the pipeline's MAX_PER_TASK to compare [default: its own]")
    ap.add_argument("--pool", choices=("threads", "processes"), default="threads",
                    help="the pipeline's worker pool (processes: the CPU column is the parent's alone)")
    args = ap.parse_args()
    m = read_manifest(args.bundle)
    if args.prep_only:
        blobs = [synthetic_jpeg(i, 512) for i in range(64)]
        blobs = [blobs[i % 64] for i in range(args.images)]
        print(f"per-photograph work only (decode + preprocess + gate), {m.preprocess.size} px, {args.images} "
              f"synthetic 512 px JPEGs, {os.cpu_count()} cores, {args.rounds} rounds (medians)")
        print("| pool | workers | photographs/s | vs 1 thread |")
        print("|---|---|---|---|")
        rows = prep_only(blobs, m.preprocess, [int(w) for w in args.workers.split(",")], args.rounds)
        if args.json:
            args.json.write_text(json.dumps({"prep_only": rows, "cores": os.cpu_count()}, indent=1))
        return 0
    if args.folder:
        files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        items = [item_for_path(files[i % len(files)]) for i in range(args.images)]
        first = [read_bytes(p) for p in files[: args.batch]]
    else:
        blobs = [synthetic_jpeg(i, 512) for i in range(64)]
        items = [item_for_data(blobs[i % len(blobs)], f"synthetic{i}") for i in range(args.images)]
        first = blobs[: args.batch]
    batch = np.stack([preprocess(b, m.preprocess).image for b in first])
    import uopsl.runtime.pipeline as pipeline_mod

    workers = [int(w) for w in args.workers.split(",")]
    switches = [float(s) for s in args.switch.split(",")]
    default_max = pipeline_mod.MAX_PER_TASK
    maxes = [int(m) for m in args.max_per_task.split(",")] if args.max_per_task else [default_max]
    settings = [(w, s, m) for m in maxes for s in switches for w in workers]
    res: dict[tuple[int, float, int], list[tuple[float, float]]] = {k: [] for k in settings}
    default_switch = sys.getswitchinterval()
    with open_backend(args.bundle, args.backend, args.precision, None, manifest=m, measure=False) as b:
        backend: Any = b if args.real else _Instant(b, batch)
        for r in range(args.rounds):
            for w, s, mx in settings if r % 2 == 0 else settings[::-1]:
                sys.setswitchinterval(s)
                pipeline_mod.MAX_PER_TASK = mx
                try:
                    res[(w, s, mx)].append(run_once(backend, m, items, args.batch, w, args.pool))
                finally:
                    sys.setswitchinterval(default_switch)
                    pipeline_mod.MAX_PER_TASK = default_max
    one = {(s, mx): statistics.median(x[0] for x in res[(workers[0], s, mx)]) for s in switches for mx in maxes}
    print(f"bundle {args.bundle} ({m.preprocess.size} px), {'real ' + args.backend if args.real else 'instant'} "
          f"inference, worker {args.pool}, batch {args.batch}, {args.images} photographs, {os.cpu_count()} cores, "
          f"{args.rounds} rounds (medians)")
    print("| switch interval | max per task | workers | photographs/s | CPU ms per photograph | vs first worker count |")
    print("|---|---|---|---|---|---|")
    rows = []
    for w, s, mx in settings:
        ips = statistics.median(x[0] for x in res[(w, s, mx)])
        cpu = statistics.median(x[1] for x in res[(w, s, mx)])
        rows.append({"workers": w, "switch_s": s, "max_per_task": mx, "ips": round(ips, 1), "cpu_ms": round(cpu, 2),
                     "rounds": [round(x[0], 1) for x in res[(w, s, mx)]]})
        print(f"| {s * 1000:g} ms | {mx} | {w} | {ips:.1f} | {cpu:.2f} | {ips / one[(s, mx)]:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cores": os.cpu_count(), "real": args.real,
                                         "backend": args.backend, "images": args.images}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
