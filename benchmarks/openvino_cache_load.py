"""How long the OpenVINO backend takes to load a bundle's model, with and without its compiled-model cache.

Each load runs in a fresh process, as a ``uopsl-screen run`` start does (the manifest's sha256 set, as
``open_backend`` sets it), in rounds of three: without the cache (``cache=False``: what every load did before
session 56), a cold load (an empty cache folder: compiles and writes the entry) and a warm one (from the
entry). Prints one line per load and the medians; the outputs of the three are compared bit for bit on a
batch of synthetic photographs once per file.

    python benchmarks/openvino_cache_load.py BUNDLE [--files model.int8.onnx model.onnx] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_ONE_LOAD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from uopsl.runtime.backends.openvino import OpenVinoBackend
from uopsl.runtime.bundle import read_manifest
bundle, name, cache, probe = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
b = OpenVinoBackend(bundle / name, "CPU", None, cache=cache)
b.expected_sha256 = read_manifest(bundle).file(name).sha256
t = time.perf_counter()
b.__enter__()
load = time.perf_counter() - t
out = {"load_s": load, "from_cache": b.loaded_from_cache}
if probe:
    size = read_manifest(bundle).preprocess.size
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    out["probs"] = b.infer(x)["probs"].tolist()
b.__exit__(None, None, None)
print(json.dumps(out))
"""


def _load(bundle: Path, name: str, cache: bool, cache_dir: Path, probe: bool) -> dict:
    env = {**os.environ, "UOPSL_CACHE_DIR": str(cache_dir)}
    env.pop("UOPSL_OPENVINO_CACHE", None)
    done = subprocess.run([sys.executable, "-c", _ONE_LOAD, str(bundle), name, "1" if cache else "0",
                           "1" if probe else ""], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--files", nargs="+", default=["model.int8.onnx", "model.onnx"])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    for name in args.files:
        times: dict[str, list[float]] = {"no cache": [], "cold": [], "warm": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.rounds):
                probe = i == 0
                cache_dir = Path(tmp) / f"round{i}"  # empty: the cold load compiles and writes the entry
                plain = _load(args.bundle, name, False, cache_dir, probe)
                cold = _load(args.bundle, name, True, cache_dir, probe)
                warm = _load(args.bundle, name, True, cache_dir, probe)
                if cold["from_cache"] is not False or warm["from_cache"] is not True:
                    raise SystemExit(f"{name}: the cache did not work as expected (cold {cold['from_cache']}, "
                                     f"warm {warm['from_cache']}): is {cache_dir} usable?")
                if probe:
                    same = plain["probs"] == cold["probs"] == warm["probs"]
                    print(f"{name}: outputs of the three loads identical: {same}")
                for k, r in (("no cache", plain), ("cold", cold), ("warm", warm)):
                    times[k].append(r["load_s"])
                    print(f"{name} {k} {i} {r['load_s']:.4f} {os.getloadavg()[0]:.2f}")
        print(f"{name} medians of {args.rounds}: " + ", ".join(
            f"{k} {1000 * statistics.median(v):.0f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
