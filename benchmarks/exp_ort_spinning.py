"""ONNX Runtime with and without intra-op spin-waiting (and OpenVINO with and without CPU pinning), screening.

Each setting twice, interleaved, on the ResNet-18 224 px bundle that ``bench_runtime.py`` builds
under its ``--work`` folder (run that first): batch-1 p50 latency and batch-8 throughput of pure
inference (16 preprocessed TVHL photographs), and end-to-end throughput of the screening pipeline on
200 TVHL JPEGs at batch 8. ``OrtBackend(spin=False)`` is what ``Screener`` and ``uopsl-screen bench``
use. One JSON line per setting and repetition.

    python benchmarks/bench_runtime.py --size 224 --iters 50 --warmup 5 --e2e-images 200 --work /tmp/rt224
    python benchmarks/exp_ort_spinning.py /tmp/rt224/resnet18_224
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.backends.base import Backend
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bench import time_backend, time_end_to_end
from uopsl.runtime.bundle import Manifest, read_manifest
from uopsl.runtime.preprocess import preprocess_file

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"


def measure(backend: Backend, manifest: Manifest, images: np.ndarray, sources: list[Path]) -> dict[str, Any]:
    """Batch-1 p50, batch-8 images/s, end-to-end images/s at batch 8 and their ratio."""
    rows = time_backend(backend, (1, 8), 30, 5, images)
    e2e = time_end_to_end(backend, manifest, sources, 8)
    return {"b1_p50_ms": rows[0]["p50_ms"], "b8_ips": rows[1]["throughput_ips"], "e2e_ips": e2e["throughput_ips"],
            "ratio": round(e2e["throughput_ips"] / rows[1]["throughput_ips"], 3)}


def tvhl_inputs(bundle: Path, tvhl: Path, n: int) -> tuple[Manifest, np.ndarray, list[Path]]:
    """The bundle's manifest, 16 TVHL photographs preprocessed for pure inference, and ``n`` TVHL JPEG paths
    (cycled) for the end-to-end runs (also ``exp_split_batch.py``'s)."""
    manifest = read_manifest(bundle)
    paths = sorted((tvhl / "fundus").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"{tvhl / 'fundus'}: no .jpg photographs")
    images = np.stack([preprocess_file(p, manifest.preprocess).image for p in paths[:16]])
    return manifest, images, [paths[i % len(paths)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bench_runtime.py's bundle folder (WORK/resnet18_224)")
    ap.add_argument("--tvhl", type=Path, default=TVHL, help="the TVHL dataset folder (its fundus/*.jpg are read)")
    ap.add_argument("--images", type=int, default=200, help="photographs screened end to end per setting")
    args = ap.parse_args()
    manifest, images, sources = tvhl_inputs(args.bundle, args.tvhl, args.images)
    for name, precision in (("model.int8.onnx", "int8-qdq-u8"), ("model.onnx", "fp32")):
        for spin in (True, False, True, False):
            with OrtBackend(args.bundle / name, "cpu", None, precision=precision, spin=spin) as be:
                row = measure(be, manifest, images, sources)
            print(json.dumps({"file": name, "spin": spin, **row}), flush=True)

    import openvino as ov

    from uopsl.runtime.backends.openvino import OpenVinoBackend

    original = ov.Core.compile_model
    try:
        for pin in (None, False, None, False):
            def patched(self: Any, model: Any, device: Any, config: Any = None, _pin: bool | None = pin) -> Any:
                config = dict(config or {})
                if _pin is not None:
                    config["ENABLE_CPU_PINNING"] = _pin
                return original(self, model, device, config)

            ov.Core.compile_model = patched
            with OpenVinoBackend(args.bundle / "model.int8.onnx", "CPU", None, precision="int8-qdq-u8") as be:
                row = measure(be, manifest, images, sources)
            print(json.dumps({"file": "ov int8", "pin": pin, **row}), flush=True)
    finally:
        ov.Core.compile_model = original


if __name__ == "__main__":
    main()
