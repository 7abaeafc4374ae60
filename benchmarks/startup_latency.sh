#!/usr/bin/env bash
# Wall time of `uopsl-screen run` on ONE photograph, process start to exit: what a camera that starts the
# runtime per photograph waits. Usage: benchmarks/startup_latency.sh BUNDLE PHOTO [N]
# With OLD=DIR (a folder holding an older checkout as `uopsl`, put first on PYTHONPATH), old and current code
# alternate, run by run, so a load change hits both. One line per run: backend precision code rc seconds load.
set -uo pipefail
B=${1:?bundle folder}; IMG=${2:?one photograph}; N=${3:-9}
codes="new"; [ -n "${OLD:-}" ] && codes="old new"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for cfg in "auto auto" "openvino fp32" "openvino int8"; do
  set -- $cfg
  for i in $(seq "$N"); do
    for code in $codes; do
      pp=""; [ "$code" = old ] && pp=$OLD
      rm -rf "$tmp/out"
      s=$(date +%s.%N)
      PYTHONPATH=$pp uopsl-screen run "$B" "$IMG" --out "$tmp/out" --backend "$1" --precision "$2" -q >/dev/null 2>&1
      rc=$?
      e=$(date +%s.%N)
      echo "$1 $2 $code $rc $(echo "$e - $s" | bc) $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
