#!/usr/bin/env bash
# Device run (session 40, 2026-12-04): transport and the checks still open since session 23's GPU run.
# Earlier calls left onnxruntime-gpu 1.31.1 (xz tar, 4 parts) and the TVHL fundus photographs (tar, 4 parts)
# in /tmp/oc; this call carries the demo (bundle, fine-tuned checkpoint, 120 synthetic test photographs) in
# .whl/main. Not part of the project: the checks themselves are benchmarks/gpu_check.sh and uopsl-screen.
#   1. benchmarks/gpu_check.sh on the demo bundle: GPU tests, bench on every backend, uopsl validate
#      (ORT CUDA FP32 against PyTorch with TF32 off since session 24: never run on a GPU before);
#   2. the end-to-end ceiling on ORT CUDA with several photographs per task (session 24; not measured on a GPU);
#   3. uopsl-screen run on all 1,058 real TVHL fundus photographs, then the same command again (resume).
set -u
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"; exec > >(tee -a "$OUT/device.log") 2>&1
M=.whl/main
date -u; nproc; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
ls -la /tmp/oc 2>/dev/null
have=$(cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$have" = "$(cut -d' ' -f1 $M/ortgpu.sha256)" ]; then
  mkdir -p /tmp/site && cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 \
    | xz -d -T0 | tar x -C /tmp/site && tar xJf $M/ortgpu_py.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site \
    && echo "onnxruntime-gpu 1.31.1 unpacked to /tmp/site"
else
  echo "onnxruntime-gpu parts missing or damaged ($have): the image's CPU onnxruntime only"
fi
TV=/tmp/tvhl
mkdir -p $TV && cat /tmp/oc/tvhl.part0 /tmp/oc/tvhl.part1 /tmp/oc/tvhl.part2 /tmp/oc/tvhl.part3 2>/dev/null | tar x -C $TV
echo "TVHL fundus photographs: $(ls $TV/fundus 2>/dev/null | wc -l)"
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
python3 -c "import onnxruntime as o; print('ort', o.__version__, o.__file__, o.get_available_providers())"
D=$M/demo
T0=$(date +%s)
echo "== 1. gpu_check"; date -u
GPU_CHECK_BUDGET="${BUDGET:-200}" bash benchmarks/gpu_check.sh --bundle $D/bundle --checkpoint $D/finetune \
  --data "synthetic:$D/test" --work /tmp/gcw
echo "gpu_check rc=$? after $(( $(date +%s) - T0 )) s"
cp /tmp/gcw/validate/parity.json "$OUT/parity.json" 2>/dev/null
cp /tmp/gcw/parity_gpu_junit.xml "$OUT/" 2>/dev/null
mkdir -p /tmp/shim/uopsl && for d in runtime calibration export train; do ln -sfn "$PWD/$d" /tmp/shim/uopsl/$d; done
export PYTHONPATH="/tmp/shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S='import sys; from uopsl.runtime.cli import main; sys.argv[0] = "uopsl-screen"; raise SystemExit(main())'
B=$D/bundle
quiet() { grep -v "^INFO\|plugin EP"; }
timeout 60 python3 -c "$S" info $B 2>&1 | quiet; echo "info rc=${PIPESTATUS[0]}"
echo "== 2. end-to-end ceiling, ORT CUDA FP32, batch 16"; date -u
for w in default 12; do
  extra=(); [ "$w" != default ] && extra=(--workers "$w")
  timeout 90 python3 -c "$S" bench $B --backend ort-cuda --precision fp32 --batch 16 --iters 20 --e2e-images 3000 \
    "${extra[@]}" --json "$OUT/e2e_cuda_$w.json" 2>&1 | quiet; echo "bench workers=$w rc=${PIPESTATUS[0]}"
done
timeout 90 python3 -c "$S" bench $B --backend ort-cuda --precision fp32 --batch 16 --iters 20 --e2e-images 3000 \
  --images $TV/fundus --json "$OUT/e2e_cuda_tvhl.json" 2>&1 | quiet; echo "bench tvhl rc=${PIPESTATUS[0]}"
echo "== 3. uopsl-screen run on the TVHL photographs, twice"; date -u
for pass in 1 2; do
  t0=$(date +%s.%N)
  timeout 150 python3 -c "$S" run $B $TV/fundus --out /tmp/screen_tvhl --batch 16 --no-progress 2>&1 | quiet
  echo "run pass=$pass rc=${PIPESTATUS[0]} seconds=$(python3 -c "import time; print(round(time.time() - $t0, 1))")"
  python3 - <<'PY'
import csv, collections
rows = list(csv.DictReader(open("/tmp/screen_tvhl/results.csv", newline="", encoding="utf-8-sig")))
ids = [r["id"] for r in rows]
print("rows", len(rows), "distinct", len(set(ids)))
for key in ("status", "backend", "precision", "refer", "gradable"):
    if rows and key in rows[0]:
        print(key, dict(collections.Counter(r[key] for r in rows)))
PY
done
cp /tmp/screen_tvhl/results.csv "$OUT/tvhl_results.csv" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,temperature.gpu --format=csv,noheader; date -u
echo "device_run done after $(( $(date +%s) - T0 )) s"
