"""CPU time of field-of-view detection per photograph, this runtime against an older copy, interleaved.

    python benchmarks/fov_cost.py --tvhl ../shared/data/tvhl --runtime DIR [--n 400] [--rounds 3]

``DIR`` holds an older ``uopsl/runtime`` (``git archive REV runtime | tar -x -C DIR/uopsl``). Each round
times ``find_fov`` on the first ``--n`` TVHL photographs, decoded as ``preprocess`` decodes them for a
224 px model, once per runtime (separate processes, alternating; OpenCV single-threaded; the best of three
warm passes after a first one); the best of each runtime's rounds is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import sys, time
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
from pathlib import Path
import cv2
import uopsl.runtime.preprocess as P
assert not sys.argv[1] or P.__file__.startswith(sys.argv[1]), P.__file__
cv2.setNumThreads(1)
cfg = P.PreprocessConfig(size=224)
imgs = []
for p in sorted(Path(sys.argv[2]).glob("*.jpg"))[: int(sys.argv[3])]:
    d = p.read_bytes(); fr = P.jpeg_frame(d)
    imgs.append(P._decode_at(d, "jpeg", fr[:2], P._jpeg_reduction(d, cfg, fr), cfg, None)[0])
best = float("inf")
for _ in range(4):  # the first pass warms caches and allocators; the screening loop runs warm
    t = time.process_time()
    for im in imgs:
        P.find_fov(im)
    best = min(best, (time.process_time() - t) / len(imgs) * 1e3)
print(best)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--runtime", type=Path, required=True, help="folder holding the older uopsl/runtime")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"older": [], "this": []}
    for _ in range(args.rounds):
        for name, root in (("older", str(args.runtime.resolve())), ("this", "")):
            out = subprocess.run([sys.executable, "-c", _CHILD, root, str(args.tvhl / "fundus"), str(args.n)],
                                 capture_output=True, text=True, check=True).stdout
            times[name].append(float(out.strip()))
    for name, v in times.items():
        print(f"{name} runtime: find_fov {min(v):.3f} ms per photograph (rounds: {', '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
