#!/usr/bin/env bash
# Device run (session 23): onnxruntime-gpu from the carried parts, then benchmarks/gpu_check.sh on the
# carried demo bundle. Transport only; not part of the project.
set -u
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
date -u; nproc; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
mkdir -p /tmp/oc
want=$(cut -d' ' -f1 .whl/ortgpu.sha256)
have=$(cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 2>/dev/null | sha256sum | cut -d' ' -f1)
ls -la /tmp/oc
if [ "$have" = "$want" ]; then
  mkdir -p /tmp/site && cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 \
    | xz -d -T0 | tar x -C /tmp/site && export PYTHONPATH=/tmp/site && echo "onnxruntime-gpu 1.31.1 unpacked to /tmp/site"
else
  echo "onnxruntime-gpu parts missing or damaged ($have): the image's CPU onnxruntime only"
fi
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
LIBS=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 -c "import onnxruntime as o; print('ort', o.__version__, o.__file__, o.get_available_providers())"
D=.whl/demo
GPU_CHECK_BUDGET="${BUDGET:-430}" bash benchmarks/gpu_check.sh --bundle $D/bundle --checkpoint $D/finetune \
  --data "synthetic:$D/test" --work /tmp/gcw
rc=$?
echo "gpu_check rc=$rc"; date -u
cp /tmp/gcw/validate/parity.json "$OUT/parity.json" 2>/dev/null
# The runtime's own commands on the GPU machine: what auto picks, and a screening run on it.
export PYTHONPATH="/tmp/gcw/shim${PYTHONPATH:+:$PYTHONPATH}"
S='import sys; from uopsl.runtime.cli import main; sys.argv[0] = "uopsl-screen"; raise SystemExit(main())'
timeout 60 python3 -c "$S" info $D/bundle; echo "info rc=$?"
timeout 90 python3 -c "$S" bench $D/bundle --backend auto --precision auto --batch 1,8,16 --iters 30 \
  --json "$OUT/bench_auto.json"; echo "bench auto rc=$?"
timeout 90 python3 -c "$S" run $D/bundle $D/test/fundus --out /tmp/screen --backend auto --batch 16; echo "run rc=$?"
wc -l /tmp/screen/results.csv; head -3 /tmp/screen/results.csv
cut -d, -f1-3 /tmp/screen/results.csv | tail -n +2 | awk -F, '{print $NF}' | sort | uniq -c | head
grep -o '"backend": *"[a-z-]*"' /tmp/screen/results.jsonl | sort | uniq -c
cp /tmp/gcw/parity_gpu_junit.xml "$OUT/" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,temperature.gpu --format=csv,noheader; date -u
