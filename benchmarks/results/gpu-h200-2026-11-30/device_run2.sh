#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
mkdir -p "$OUT"; exec > >(tee -a "$OUT/device2.log") 2>&1
date -u
want=$(cut -d' ' -f1 .whl/ortgpu.sha256)
have=$(cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$have" = "$want" ]; then
  mkdir -p /tmp/site && cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 | xz -d -T0 | tar x -C /tmp/site
  export PYTHONPATH=/tmp/site; echo "onnxruntime-gpu unpacked"
else echo "onnxruntime-gpu parts missing"; fi
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p /tmp/shim/uopsl && for d in runtime calibration export train; do ln -sfn $PWD/$d /tmp/shim/uopsl/$d; done
export PYTHONPATH="/tmp/shim:$PYTHONPATH" PYTHONUNBUFFERED=1
S='import sys; from uopsl.runtime.cli import main; sys.argv[0] = "uopsl-screen"; raise SystemExit(main())'
B=.whl/demo/bundle
for be in ort-cuda ort-cpu; do for pool in threads processes; do
  timeout 100 python3 -c "$S" bench $B --backend $be --precision fp32 --batch 16 --iters 20 --e2e-images 2000 \
    --worker-pool $pool --json "$OUT/e2e_${be}_${pool}.json" 2>&1 | grep -v "^INFO\|plugin EP"; echo "rc=$? $be $pool"; date -u
done; done
timeout 60 python3 -c "$S" bench $B --backend ort-cuda --precision fp32 --batch 16 --iters 20 --e2e-images 2000 \
  --worker-pool processes --workers 8 --json "$OUT/e2e_ort-cuda_processes8.json" 2>&1 | grep -v "^INFO\|plugin EP"; date -u
