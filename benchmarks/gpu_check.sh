#!/usr/bin/env bash
# One prepared GPU check (installs nothing, <= 8 minutes): the parity suite's GPU tests, `uopsl-screen bench`
# on every backend available, and `uopsl validate` of a demo bundle (built here unless --bundle is given).
# All figures go to ONE JSON: $OUT/gpu_check.json when OUT is set, else ./gpu_check.json.
# Without a GPU it still runs (small model, short timings) and records that no GPU was found.
#
#   benchmarks/gpu_check.sh                      # demo bundle
#   benchmarks/gpu_check.sh --bundle B --checkpoint C --data tvhl:../shared/data/tvhl:task=referable_dr
#
# Extra arguments go to benchmarks/gpu_check.py (see --help). PYTHON selects the interpreter.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-python3}"
command -v "$py" >/dev/null 2>&1 || py=python
budget="${GPU_CHECK_BUDGET:-450}"
# The helper keeps its own deadline (budget) and saves the JSON after every step; the outer
# timeout is the hard stop 8 minutes after start, in case a step hangs in native code.
timeout -k 10 470 "$py" "$here/gpu_check.py" --repo "$repo" --budget "$budget" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_check: hard time limit reached; the JSON holds every step finished before it" >&2
fi
exit "$rc"
