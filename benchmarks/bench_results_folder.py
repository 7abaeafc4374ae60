"""CPU and memory of a results folder that has grown: what each `run` into it and each `watch` refresh costs.

A camera's drop folder screened by ``watch`` for a year, or a clinic that screens every session into one
``--out``, leaves ``results.jsonl`` with 10^4-10^5 rows. Every ``run`` opens that folder (the rows are read
to know what is done), and every ``run`` and every ``watch`` refresh rewrites ``results.csv`` and the
report from it. This script builds such a folder and measures those steps, each in a fresh process (so
that each process's peak resident memory is its own):

- ``open``: :class:`uopsl.runtime.results.ResultStore` opened on the folder (what a ``run`` starts with);
- ``rows``: :meth:`ResultStore.latest_rows` (one row per photograph, ready to display);
- ``csv``: :func:`uopsl.runtime.results.write_csv` of those rows;
- ``refresh``: :meth:`uopsl.runtime.api.Screener.finalize` (rows, CSV and the report split by day), the second
  of two calls (the report's pages are then unchanged but for the index: what ``watch`` pays per refresh).

The rows: one real row (a small bundle of ``tests/tinybundle.py`` screening one synthetic photograph),
copied with distinct paths, sizes and hashes over 28 days; every copy shares the real row's thumbnail and
heatmap (``bench_report_refresh.py`` measures the report's images).

    python benchmarks/bench_results_folder.py --n 20000,100000 [--out /tmp/rows]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, n: int) -> Path:
    """A bundle and a results folder of ``n`` + 1 rows under ``folder``; returns the results folder."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tinybundle import good_photos, make_tiny_bundle  # noqa: PLC0415 - test helpers, torch for the model

    from uopsl.runtime.api import Screener

    bundle = make_tiny_bundle(folder / "bundle")
    photos = folder / "photos"
    good_photos(photos, 1)
    out = folder / f"out{n}"
    with Screener(bundle) as s:
        s.screen_to(out, [photos])
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    with (out / "results.jsonl").open("a", encoding="utf-8") as fh:
        for i in range(n):
            r = dict(first)
            day = 1 + i % 28
            r.update(id=f"old{i:06d}-{i:08x}", source=f"archive/day{day:02d}/old{i:06d}.jpg",
                     key=f"{folder}/archive/day{day:02d}/old{i:06d}.jpg|{20000 + i}|{1796227774195288667 + i}",
                     sha256=f"{i:064x}", screened_at=f"2026-11-{day:02d}T10:{i % 60:02d}:00.000+00:00")
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    return out


def measure(out: Path, step: str) -> dict[str, float]:
    """CPU seconds of ``step`` on ``out`` and this process's peak resident memory (MB)."""
    from uopsl.runtime.api import Screener
    from uopsl.runtime.results import ResultStore, write_csv

    bundle = out.parent / "bundle"
    with Screener(bundle) as s:
        t = time.process_time()
        store = ResultStore(out, s.identity)
        cpu = {"open": time.process_time() - t}
        with store:
            if step == "rows":
                t = time.process_time()
                store.latest_rows()
                cpu["rows"] = time.process_time() - t
            elif step == "csv":
                rows = store.latest_rows()
                t = time.process_time()
                write_csv(out / "bench.csv", rows, s.manifest.class_names)
                cpu["csv"] = time.process_time() - t
            elif step == "refresh":
                s.finalize(out, store)
                t = time.process_time()
                s.finalize(out, store)
                cpu["refresh"] = time.process_time() - t
    # VmHWM, not getrusage's ru_maxrss: that one is kept across execve, so the child would report the peak of
    # the parent that forked it (which holds PyTorch, used to build the bundle).
    status = Path("/proc/self/status").read_text()
    cpu["peak_mb"] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="20000,100000", help="comma-separated row counts")
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--measure", nargs=2, metavar=("FOLDER", "STEP"), help=argparse.SUPPRESS)  # the child
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return
    scratch = args.out or Path(tempfile.mkdtemp(prefix="uopsl-rows-"))
    print("| rows | open (CPU s) | latest_rows | write_csv | finalize (refresh) | peak MB open / refresh |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        out = build(scratch / f"n{n}", n)
        got = {}
        for step in ("open", "rows", "csv", "refresh"):
            proc = subprocess.run([sys.executable, __file__, "--measure", str(out), step], check=True,
                                  capture_output=True, text=True)
            got[step] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {n + 1:,} | {got['open']['open']:.2f} | {got['rows']['rows']:.2f} | {got['csv']['csv']:.2f} "
              f"| {got['refresh']['refresh']:.2f} | {got['open']['peak_mb']:.0f} / {got['refresh']['peak_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
