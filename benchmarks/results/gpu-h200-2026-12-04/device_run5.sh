#!/usr/bin/env bash
# Device run 5 (session 40): probe_single_latency.py with 200 single calls after screen_many, ORT CUDA only,
# code 3ff3c60 (after 64 padded calls in a row the backend takes the smaller shape).
# Transport as device_run.sh.
set -u
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"; exec > >(tee -a "$OUT/device5.log") 2>&1
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
for b in ort-cuda; do
  echo "== single photographs, $b"; date -u
  PROBE_AFTER=200 timeout 120 python3 benchmarks/results/gpu-h200-2026-12-04/probe_single_latency.py $B $TV/fundus "$OUT/single_latency_after64_$b.json" $b \
    2>&1 | grep -v "^INFO\|plugin EP\|Demonstration model"; echo "probe $b rc=${PIPESTATUS[0]}"
done
date -u
