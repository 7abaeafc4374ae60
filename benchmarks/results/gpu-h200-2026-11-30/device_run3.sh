#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
mkdir -p "$OUT"; exec > >(tee -a "$OUT/device3.log") 2>&1
date -u; git log --oneline -1 2>/dev/null
want=$(cut -d' ' -f1 .whl/ortgpu.sha256)
have=$(cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$have" = "$want" ] && mkdir -p /tmp/site && cat /tmp/oc/ortgpu.part0 /tmp/oc/ortgpu.part1 /tmp/oc/ortgpu.part2 /tmp/oc/ortgpu.part3 | xz -d -T0 | tar x -C /tmp/site && echo "onnxruntime-gpu unpacked"
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
mkdir -p /tmp/shim/uopsl && for d in runtime calibration export train; do ln -sfn $PWD/$d /tmp/shim/uopsl/$d; done
export PYTHONPATH="/tmp/shim:/tmp/site" PYTHONUNBUFFERED=1
S='import sys; from uopsl.runtime.cli import main; sys.argv[0] = "uopsl-screen"; raise SystemExit(main())'
B=.whl/demo/bundle
timeout 60 python3 -c "$S" bench $B --batch 1,16 --iters 20 --e2e-images 3000 --json "$OUT/e2e_auto_default.json" 2>&1 | grep -v "^INFO\|plugin EP"; date -u
mkdir -p /tmp/photos && for i in $(seq 0 15); do for f in .whl/demo/test/fundus/*.jpg; do cp "$f" "/tmp/photos/r${i}_$(basename $f)"; done; done; ls /tmp/photos | wc -l
t0=$(date +%s.%N)
timeout 120 python3 -c "$S" run $B /tmp/photos --out /tmp/screen_run --batch 16 --no-overlays 2>&1 | grep -E "images:|backend:|worker"; echo "run rc=${PIPESTATUS[0]} seconds=$(python3 -c "import time; print(round(time.time() - $t0, 1))")"
wc -l /tmp/screen_run/results.csv; cut -d, -f23,24 /tmp/screen_run/results.csv | sort | uniq -c; date -u
