"""Device probe (session 40): one photograph at a time through the Python API, as a device maker calls it.

``Screener(bundle, backend, batch_size=16).screen(path)`` on TVHL photographs, timed call by call (ms, wall):
100 calls after one warm-up call; then ``screen_many`` over 320 photographs (batches of 16); then 100 single
calls again (on ORT CUDA these run padded to 16 since 662773c; since 3ff3c60 the first 64 of them), each
listed (PROBE_AFTER sets how many; run 5: 200). With each phase's per-stage medians from the
results' own timings. Not part of the project. Usage: probe_single_latency.py BUNDLE PHOTO_DIR OUT.json BACKEND
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from uopsl.runtime.api import Screener


def stats(ms):
    a = np.asarray(ms, float)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


def singles(s, paths):
    lat, parts, statuses = [], {}, {}
    for p in paths:
        t0 = time.perf_counter()
        r = s.screen(p)
        lat.append((time.perf_counter() - t0) * 1e3)
        statuses[r.status] = statuses.get(r.status, 0) + 1
        for k, v in r.timings.items():
            parts.setdefault(k, []).append(v)
    return {"_calls": [round(x, 2) for x in lat], "wall_ms": stats(lat), "stage_p50_ms": {k: round(float(np.median(v)), 2) for k, v in parts.items()},
            "statuses": statuses, "padded_to": getattr(s.backend, "last_padded_to", None)}


def main():
    bundle, photos, out, backend = sys.argv[1:5]
    paths = sorted(Path(photos).glob("*.jpg"))
    res = {"photos": len(paths)}
    with Screener(bundle, backend=backend, batch_size=16) as s:
        res["backend"] = s.backend.describe()
        t0 = time.perf_counter()
        s.screen(paths[0])
        res["first_call_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        res["single"] = singles(s, paths[1:101])
        res["single"].pop("_calls")
        t0 = time.perf_counter()
        n = sum(1 for _ in s.screen_many(paths[101:421]))
        res["many"] = {"n": n, "seconds": round(time.perf_counter() - t0, 2)}
        after = int(os.environ.get("PROBE_AFTER", "100"))
        res["single_after_many"] = singles(s, paths[421:421 + after])
        res["single_after_many"]["calls_ms"] = res["single_after_many"].pop("_calls")
    Path(out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
