"""ONNX Runtime's ``session.x64quantprecision`` on this CPU: fidelity to an INT8 file's exact arithmetic, and speed.

On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels sum pairs of products in 16 bits and saturate. The
session option ``session.x64quantprecision=1`` makes it take a slower path that does not overflow. This script
measures, per INT8 file of a bundle, with and without the option: the logits SQNR against the file's exact
arithmetic (no graph optimisation) and against the FP32 file, top-1 agreement with FP32, and median latency at
batch 1 and 8 (2 threads, no spin-waiting, as the Screener runs ONNX Runtime). docs/results.md, section 4,
"INT8 on a CPU without VNNI" (session 22: measured, not adopted).

    python benchmarks/exp_x64quantprecision.py D/bundle model.int8.onnx model.int8.rr.onnx \\
        --images D/data/test/fundus --n 120
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.cpuinfo import int8_cpu_class
from uopsl.runtime.preprocess import preprocess_file


def session(path: Path, mode: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if mode == "exact":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif mode == "x64quantprecision":
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def logits(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.concatenate([s.run(["logits"], {"image": x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def latency_ms(s: ort.InferenceSession, x: np.ndarray, batch: int, iters: int) -> float:
    xb = x[:batch]
    for _ in range(3):
        s.run(["logits"], {"image": xb})
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        s.run(["logits"], {"image": xb})
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def sqnr_db(test: np.ndarray, ref: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return float(10 * np.log10((r**2).sum() / ((test.astype(np.float64) - r) ** 2).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("files", nargs="+", help="INT8 ONNX files of the bundle")
    ap.add_argument("--images", type=Path, required=True, help="folder of photographs")
    ap.add_argument("--n", type=int, default=120, help="photographs (the first N by name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    pre = read_manifest(a.bundle).preprocess
    paths = sorted(p for p in a.images.iterdir() if p.is_file())[: a.n]
    x = np.stack([preprocess_file(p, pre).image for p in paths])
    fp32 = session(a.bundle / "model.onnx", "default", a.threads)
    ref = logits(fp32, x)
    print(f"CPU class {int8_cpu_class()}; {len(x)} photographs; FP32 batch 1 {latency_ms(fp32, x, 1, a.iters):.2f} ms, "
          f"batch 8 {latency_ms(fp32, x, 8, a.iters):.2f} ms")
    for f in a.files:
        exact = logits(session(a.bundle / f, "exact", a.threads), x)
        for mode in ("default", "x64quantprecision"):
            s = session(a.bundle / f, mode, a.threads)
            got = logits(s, x)
            print(f"{f} {mode}: {sqnr_db(got, exact):.1f} dB from its exact arithmetic, {sqnr_db(got, ref):.1f} dB "
                  f"from FP32, top-1 {(got.argmax(1) == ref.argmax(1)).mean():.3f}; batch 1 "
                  f"{latency_ms(s, x, 1, a.iters):.2f} ms, batch 8 {latency_ms(s, x, 8, a.iters):.2f} ms")


if __name__ == "__main__":
    main()
