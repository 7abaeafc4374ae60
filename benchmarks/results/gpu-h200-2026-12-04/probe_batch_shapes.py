"""Device probe (session 40): why ORT CUDA inference read ~15x slower right after bench's end-to-end run.

Times single infer calls (ms, each listed) on the demo bundle through the runtime's ORT CUDA backend, as bench
opens it: steady batch 16; the first and second call at batch sizes never seen before; batch 16 again right after
them; then the same first-call costs in plain ONNX Runtime sessions with each cuDNN algorithm search setting
(EXHAUSTIVE is ONNX Runtime's default). Not part of the project. Usage: probe_batch_shapes.py BUNDLE OUT.json
"""
import json
import os
import sys
import time

import numpy as np

from uopsl.runtime.backends import open_and_enter
from uopsl.runtime.bench import synthetic_jpeg, time_end_to_end
from uopsl.runtime.bundle import read_manifest

def calls(infer, x, n):
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); infer(x); t.append(round((time.perf_counter() - t0) * 1e3, 2))
    return t


def shape_walk(infer, size):
    img = lambda b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    r = {"steady16": calls(infer, img(16), 25)[5:]}
    for b in (8, 7, 5, 3, 13):
        r[f"b{b}_first_two"] = calls(infer, img(b), 2)
        r[f"b16_after_b{b}"] = calls(infer, img(16), 3)
    r["b8_again"] = calls(infer, img(8), 2)
    return r



def main():
    global rng
    bundle, out_path = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    res = {}


    b = open_and_enter(bundle, sys.argv[3] if len(sys.argv) > 3 else "ort-cuda", "fp32", None, measure=False, spin=False, batch=16)
    m = read_manifest(bundle)
    size = m.preprocess.size
    try:
        res["backend"] = b.describe()
        x16 = rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)
        before = calls(b.infer, x16, 25)[5:]
        blobs = [synthetic_jpeg(i) for i in range(64)]
        e2e = time_end_to_end(b, m, [blobs[i % 64] for i in range(int(os.environ.get("PROBE_E2E", "3000")))], 16, None, "auto")
        res["runtime_e2e"] = {"before16": before, "e2e": e2e, "after16": calls(b.infer, x16, 20),
                              "after16_again": calls(b.infer, x16, 20)}
        res["runtime_backend"] = shape_walk(b.infer, size)
    finally:
        b.__exit__(None, None, None)

    import onnxruntime as ort  # noqa: E402

    for mode in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        opts = {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": mode}
        t0 = time.perf_counter()
        s = ort.InferenceSession(f"{bundle}/model.onnx", providers=[("CUDAExecutionProvider", opts)])
        name = s.get_inputs()[0].name
        r = {"session_open_ms": round((time.perf_counter() - t0) * 1e3, 1)}
        r.update(shape_walk(lambda x: s.run(None, {name: x}), size))
        res[f"ort_{mode.lower()}"] = r
        s = None

    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    for k, v in res.items():
        if isinstance(v, dict):
            print(k)
            for kk, vv in v.items():
                print("  ", kk, vv if not isinstance(vv, list) or len(vv) < 8 else f"p50 {np.median(vv):.2f} max {max(vv)}")
        else:
            print(k, v)


if __name__ == "__main__":
    main()
