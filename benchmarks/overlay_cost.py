"""CPU time of the image writes of a screening run (thumbnail, and overlay when asked), per photograph.

Usage: python benchmarks/overlay_cost.py BUNDLE LIST_FILE OUT_PREFIX

Runs ``Screener(BUNDLE, "ort-cpu").screen_to`` over the photographs in LIST_FILE (one path a line) twice,
without and with overlays, into OUT_PREFIX-no and OUT_PREFIX-ov, and prints the median thread CPU time of
``Screener._write_images`` per photograph (docs/results.md, section 5, "Overlay cost").
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

from uopsl.runtime.api import Screener


def main(bundle: str, list_file: str, prefix: str) -> None:
    real = Screener._write_images
    times: list[float] = []

    def timed(self: Screener, *a: object) -> dict[str, str]:
        t0 = time.thread_time()
        written = real(self, *a)  # type: ignore[arg-type]
        times.append(time.thread_time() - t0)
        return written

    Screener._write_images = timed  # type: ignore[method-assign]
    paths = [Path(line.strip()) for line in Path(list_file).read_text().splitlines() if line.strip()]
    for overlays in (False, True):
        times.clear()
        out = Path(prefix + ("-ov" if overlays else "-no"))
        shutil.rmtree(out, ignore_errors=True)
        with Screener(bundle, "ort-cpu") as s:
            s.screen_to(out, paths, overlays=overlays)
        what = "thumbnail and overlay" if overlays else "thumbnail only"
        sys.stdout.write(f"{what}: {len(times)} photographs, median {1e3 * statistics.median(times):.2f} ms, "
                         f"total {sum(times):.2f} s\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
