"""Latency of `uopsl-screen watch`: a photograph renamed into the watched folder -> its row in results.jsonl.

Usage: python benchmarks/watch_latency.py BUNDLE [FUNDUS_DIR]   (FUNDUS_DIR: ../shared/data/tvhl/fundus)

Per configuration (defaults; --settle-ms 700; --settle-ms 0; --settle-ms 0 --poll 0.05) two watches are started,
each sent DROPS photographs (default 8) after a warm-up one: each is copied under a hidden name (which watch
ignores) and renamed into place, as a camera that writes then renames does, and its row is awaited in 5 ms
polls. Drops are spaced unevenly so they land at different phases of the poll. With OLD=DIR (a folder holding
an older checkout as ``uopsl``, put first on PYTHONPATH) old and current code alternate watch by watch.
Prints median, min and max latency per configuration and code.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [("defaults", []), ("settle 700", ["--settle-ms", "700"]), ("settle 0", ["--settle-ms", "0"]),
           ("settle 0 poll 0.05", ["--settle-ms", "0", "--poll", "0.05"])]


def _rows(out: Path) -> int:
    try:
        with open(out / "results.jsonl", "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def one_watch(bundle: str, photos: list[Path], old: str | None, args: list[str], drops: int, root: Path) -> list[float]:
    """Latencies (s) of ``drops`` photographs sent to one watch, after a warm-up photograph."""
    shutil.rmtree(root, ignore_errors=True)
    src, out = root / "in", root / "out"
    src.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=old or "")
    p = subprocess.Popen(["uopsl-screen", "watch", bundle, str(src), "--out", str(out), "--no-overlays", "-q", *args,
                          "--timeout", "120"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lat = []
    try:
        for i, photo in enumerate(photos[:drops + 1]):
            tmp = src / f".{photo.name}.part"
            shutil.copyfile(photo, tmp)
            before = _rows(out)
            t0 = time.monotonic()
            os.rename(tmp, src / photo.name)
            while _rows(out) <= before:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"no row 60 s after {photo.name} ({args}): "
                                     f"{p.stderr.read1().decode(errors='replace')[-500:] if p.stderr else ''}")
                time.sleep(0.005)
            if i:  # the first waited for the model to load
                lat.append(time.monotonic() - t0)
            time.sleep(0.37 + (0.11 * i) % 0.5)
    finally:
        p.terminate()
        p.wait(30)
    return lat


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bundle = sys.argv[1]
    photos = sorted(Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/tvhl/fundus").glob("*.jpg"))
    drops = int(os.environ.get("DROPS", "8"))
    old = os.environ.get("OLD")
    codes = {"old": old, "new": None} if old else {"new": None}
    if len(photos) < 2 * len(codes) * (drops + 1):
        sys.exit(f"need {2 * len(codes) * (drops + 1)} photographs, found {len(photos)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in CONFIGS:
            res: dict[str, list[float]] = {c: [] for c in codes}
            at = 0
            for _ in range(2):
                for code, path in codes.items():
                    res[code] += one_watch(bundle, photos[at:], path, args, drops, Path(tmp) / code)
                    at += drops + 1
            print(f"{name:20s} " + "  ".join(
                f"{c}: median {1000 * statistics.median(v):.0f} ms (min {1000 * min(v):.0f}, max {1000 * max(v):.0f}, "
                f"n={len(v)})" for c, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
