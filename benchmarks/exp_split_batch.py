"""One session on every core, or one single-thread session per core each taking part of a batch (an experiment).

Why: on a 2-core box the screening pipeline's decoding workers share the cores with inference. ONNX
Runtime's intra-op threads meet at a barrier after every parallel operator, so a worker scheduled onto
one core stalls the other inference thread until it is done: the end-to-end rate falls below what the two
workloads' CPU times allow (session 51, an AVX2 box: ORT FP32 end to end 0.77 of pure inference where
perfect overlap allows ~0.88). Split sessions meet once per batch instead.

Per file (ORT FP32 and INT8, ``spin=False`` as the pipeline opens them), each arm twice, interleaved: pure
batch-8 images/s on 16 preprocessed TVHL photographs, end-to-end images/s on N TVHL JPEGs at batch 8, and
the ratio of each end-to-end rate to the *shipped* arm's pure rate (the goal's denominator). One JSON line
per arm and repetition.

    python benchmarks/bench_runtime.py --size 224 --work /tmp/rt224 --e2e-images 200
    python benchmarks/exp_split_batch.py /tmp/rt224/resnet18_224 --images 1058
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bench import time_backend, time_end_to_end
from exp_ort_spinning import TVHL, tvhl_inputs  # a sibling script (python benchmarks/exp_split_batch.py)



class SplitBackend:
    """``parts`` single-thread ORT sessions of one file; a batch is cut into ``parts`` slices run at once.

    ONNX Runtime releases the GIL while it runs, so the slices compute in parallel on separate cores.
    """

    def __init__(self, path: Path, precision: str, parts: int) -> None:
        self.name = "ort-cpu"
        self._stack = contextlib.ExitStack()
        self.sessions = [self._stack.enter_context(OrtBackend(path, "cpu", 1, precision=precision, spin=False))
                         for _ in range(parts)]
        self._pool = ThreadPoolExecutor(parts, thread_name_prefix="split")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        slices = [s for s in np.array_split(batch, len(self.sessions)) if len(s)]
        outs = list(self._pool.map(lambda a: a[0].infer(a[1]), zip(self.sessions, slices)))
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def __enter__(self) -> SplitBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()
        self._stack.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bench_runtime.py's bundle folder (WORK/resnet18_224)")
    ap.add_argument("--tvhl", type=Path, default=TVHL, help="the TVHL dataset folder (its fundus/*.jpg are read)")
    ap.add_argument("--images", type=int, default=400, help="photographs screened end to end per arm")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    manifest, images, sources = tvhl_inputs(args.bundle, args.tvhl, args.images)
    parts = os.cpu_count() or 2
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8-qdq-u8")):
        for rep in range(args.repeats):
            shipped_pure = None
            for arm in ("shipped", "split"):
                be: Any = (OrtBackend(args.bundle / name, "cpu", None, precision=precision, spin=False)
                           if arm == "shipped" else SplitBackend(args.bundle / name, precision, parts))
                with be:
                    pure = time_backend(be, (8,), 30, 5, images)[0]["throughput_ips"]
                    e2e = time_end_to_end(be, manifest, sources, 8)["throughput_ips"]
                shipped_pure = pure if arm == "shipped" else shipped_pure
                print(json.dumps({"file": name, "arm": arm, "repeat": rep, "pure_b8_ips": pure, "e2e_ips": e2e,
                                  "ratio_own": round(e2e / pure, 3),
                                  "ratio_vs_shipped_pure": round(e2e / shipped_pure, 3)}), flush=True)


if __name__ == "__main__":
    main()
