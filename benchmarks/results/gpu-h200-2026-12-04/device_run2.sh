#!/usr/bin/env bash
# Device run 2 (session 40): probe_batch_shapes.py on ORT CUDA (why inference read slower after the end-to-end
# run), and the TVHL screening run without overlay PNGs (as session 23's run of 1,920 photographs).
# Transport as device_run.sh: onnxruntime-gpu and the TVHL photographs from /tmp/oc, the demo in .whl/main.
set -u
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"; exec > >(tee -a "$OUT/device2.log") 2>&1
M=.whl/main; date -u
have=$(cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$have" = "$(cut -d' ' -f1 $M/ortgpu.sha256)" ] || { echo "onnxruntime-gpu parts missing ($have)"; exit 3; }
mkdir -p /tmp/site && cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 \
  | xz -d -T0 | tar x -C /tmp/site && tar xJf $M/ortgpu_py.tar.xz -C /tmp/site
TV=/tmp/tvhl; mkdir -p $TV && cat /tmp/oc/tvhl.part0 /tmp/oc/tvhl.part1 /tmp/oc/tvhl.part2 /tmp/oc/tvhl.part3 | tar x -C $TV
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
mkdir -p /tmp/shim/uopsl && for d in runtime calibration export train; do ln -sfn "$PWD/$d" /tmp/shim/uopsl/$d; done
export PYTHONPATH="/tmp/shim:/tmp/site" PYTHONUNBUFFERED=1
B=$M/demo/bundle
echo "== probe"; date -u
timeout 240 python3 benchmarks/results/gpu-h200-2026-12-04/probe_batch_shapes.py $B "$OUT/probe_batch_shapes.json" ort-cuda 2>&1 \
  | grep -v "^INFO\|plugin EP"; echo "probe rc=${PIPESTATUS[0]}"
echo "== run without overlays"; date -u
S='import sys; from uopsl.runtime.cli import main; sys.argv[0] = "uopsl-screen"; raise SystemExit(main())'
t0=$(date +%s.%N)
timeout 120 python3 -c "$S" run $B $TV/fundus --out /tmp/screen_nov --batch 16 --no-overlays --no-progress 2>&1 | grep -E "images:|rc="
echo "run rc=${PIPESTATUS[0]} seconds=$(python3 -c "import time; print(round(time.time() - $t0, 1))")"
grep -c ort-cuda /tmp/screen_nov/results.csv; date -u
