#!/usr/bin/env bash
# Device run 3 (session 40): the same measurements as device_run.sh's steps 2 and 3 after OrtBackend began
# padding a smaller batch to the previous call's size on the CUDA provider (one input shape, so no new cuDNN
# algorithm search per batch). Transport as device_run.sh.
set -u
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"; exec > >(tee -a "$OUT/device3.log") 2>&1
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
S='import sys; from uopsl.runtime.cli import main; sys.argv[0] = "uopsl-screen"; raise SystemExit(main())'
quiet() { grep -v "^INFO\|plugin EP\|Fallback mode"; }
echo "== bench, ORT CUDA FP32, batches 1,8,16, end to end at 16"; date -u
timeout 120 python3 -c "$S" bench $B --backend ort-cuda --precision fp32 --batch 1,8,16 --iters 30 --e2e-images 3000 \
  --json "$OUT/e2e_cuda_default_padded.json" 2>&1 | quiet; echo "bench rc=${PIPESTATUS[0]}"
timeout 90 python3 -c "$S" bench $B --backend ort-cuda --precision fp32 --batch 16 --iters 30 --e2e-images 3000 \
  --images $TV/fundus --json "$OUT/e2e_cuda_tvhl_padded.json" 2>&1 | quiet; echo "bench tvhl rc=${PIPESTATUS[0]}"
for ov in overlays no-overlays; do
  echo "== run on the 1,058 TVHL photographs, --$ov"; date -u
  t0=$(date +%s.%N)
  timeout 120 python3 -c "$S" run $B $TV/fundus --out /tmp/screen_$ov --batch 16 --$ov --no-progress 2>&1 | grep -E "images:"
  echo "run $ov rc=${PIPESTATUS[0]} seconds=$(python3 -c "import time; print(round(time.time() - $t0, 1))")"
  grep -c ort-cuda /tmp/screen_$ov/results.csv
done
cmp <(cut -d, -f1-8 /tmp/screen_overlays/results.csv | sort) <(cut -d, -f1-8 /tmp/screen_no-overlays/results.csv | sort) && echo "the two runs' id..probabilities columns agree"
cp /tmp/screen_no-overlays/results.csv "$OUT/tvhl_results_padded.csv"; date -u
