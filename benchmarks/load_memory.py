"""Resident memory of one ONNX Runtime session loaded from a path or from bytes (why backends load by path).

    python benchmarks/load_memory.py MODEL.onnx

Each way runs in a fresh process (peak = VmHWM, now = VmRSS after the session is made and the bytes
dropped). ONNX Runtime keeps a session's model bytes for its life when it is made from bytes, so
loading the bytes the bundle check hashed costs about the file's size for as long as the model is open.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

_PROBE = r"""
import re, sys, hashlib, onnxruntime as ort
path, mode = sys.argv[1], sys.argv[2]
so = ort.SessionOptions()
so.intra_op_num_threads = 2
if mode == "bytes":
    data = open(path, "rb").read()
    hashlib.sha256(data).hexdigest()
    s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    del data
else:
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
status = open("/proc/self/status").read()
kb = lambda k: int(re.search(k + r":\s+(\d+)", status).group(1)) / 1024
print(f"{kb('VmHWM'):.1f} {kb('VmRSS'):.1f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    args = ap.parse_args()
    print("| loaded from | peak MB | resident MB |")
    print("|---|---|---|")
    for mode in ("path", "bytes"):
        out = subprocess.run([sys.executable, "-c", _PROBE, args.model, mode], check=True, capture_output=True,
                             text=True).stdout.split()
        print(f"| {mode} | {out[0]} | {out[1]} |")


if __name__ == "__main__":
    main()
