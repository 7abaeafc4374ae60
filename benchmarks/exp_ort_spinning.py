"""ONNX Runtime with and without intra-op spin-waiting (and OpenVINO with and without CPU pinning), screening.

Each setting twice, interleaved, on the ResNet-18 224 px bundle that ``bench_runtime.py`` builds
(run that first with ``--work W``): batch-1 p50 latency and batch-8 throughput of pure inference
(16 preprocessed TVHL photographs), and end-to-end throughput of the screening pipeline on 200 TVHL
JPEGs at batch 8. ``OrtBackend(spin=False)`` is what ``Screener`` and ``uopsl-screen bench`` use.

    python benchmarks/bench_runtime.py --size 224 --iters 50 --warmup 5 --e2e-images 200 --work /tmp/rt224
    python benchmarks/exp_ort_spinning.py /tmp/rt224/resnet18_224
"""
import glob
import json
import sys
from pathlib import Path
import numpy as np
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.bench import time_backend, time_end_to_end
from uopsl.runtime.preprocess import preprocess_file
b = Path(sys.argv[1]); m = read_manifest(b)
paths = [Path(p) for p in sorted(glob.glob(str(Path(__file__).resolve().parents[2] / 'shared/data/tvhl/fundus/*.jpg')))]
imgs = np.stack([preprocess_file(p, m.preprocess).image for p in paths[:16]])
src = [paths[i % len(paths)] for i in range(200)]
for f, prec in (('model.int8.onnx','int8-qdq-u8'), ('model.onnx','fp32')):
    for spin in (True, False, True, False):
        with OrtBackend(b/f, 'cpu', None, precision=prec, spin=spin) as be:
            rows = time_backend(be, (1, 8), 30, 5, imgs)
            e = time_end_to_end(be, m, src, 8)
        print(json.dumps({'file': f, 'spin': spin, 'b1_p50_ms': rows[0]['p50_ms'], 'b8_ips': rows[1]['throughput_ips'],
                          'e2e_ips': e['throughput_ips'], 'ratio': round(e['throughput_ips']/rows[1]['throughput_ips'],3)}), flush=True)
import openvino as ov
from uopsl.runtime.backends.openvino import OpenVinoBackend
orig = ov.Core.compile_model
for pin in (None, False, None, False):
    def patched(self, model, device, config=None, _pin=pin):
        config = dict(config or {})
        if _pin is not None:
            config["ENABLE_CPU_PINNING"] = _pin
        return orig(self, model, device, config)
    ov.Core.compile_model = patched
    with OpenVinoBackend(b/'model.int8.onnx', 'CPU', None, precision='int8-qdq-u8') as be:
        rows = time_backend(be, (1, 8), 30, 5, imgs)
        e = time_end_to_end(be, m, src, 8)
    print(json.dumps({'file': 'ov int8', 'pin': pin, 'b1_p50_ms': rows[0]['p50_ms'], 'b8_ips': rows[1]['throughput_ips'],
                      'e2e_ips': e['throughput_ips'], 'ratio': round(e['throughput_ips']/rows[1]['throughput_ips'],3)}), flush=True)
