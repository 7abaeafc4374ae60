"""CPU of ``uopsl-screen watch``'s folder polling on a drop folder that has grown large.

Creates ``--n`` small ``.jpg`` files in ``--folders`` subfolders of a scratch
folder (they are never decoded: only the polling is measured), lets a
:class:`~uopsl.runtime.watch.StableFiles` take them all, then reports the CPU
of one poll (median of ``--polls``): when nothing changed, when one new
photograph arrived (its folder is listed again), and the full check every
``rescan_s`` (every folder and file). Before session 12 every poll cost about
what the full check costs now.

    python benchmarks/bench_watch_poll.py --n 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from uopsl.runtime.watch import StableFiles


def cpu_ms(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="photographs in the drop folder")
    ap.add_argument("--folders", type=int, default=20, help="subfolders they are spread over (days)")
    ap.add_argument("--polls", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.n):
            p = root / f"day{i % args.folders:03d}" / f"img{i:06d}.jpg"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(b"\xff\xd8" + bytes(100))
        folders = sorted(p for p in root.iterdir())
        old = time.time() - 7200  # the folders last changed two hours ago (past hot_s and the racy window)
        for f in [*folders, root]:
            os.utime(f, (old, old))
        clock = [0.0]
        tracker = StableFiles(root, settle_ms=0, clock=lambda: clock[0], rescan_s=30.0, hot_s=3600.0)
        first = cpu_ms(tracker.poll)
        clock[0] = 1.0
        taken = len(tracker.poll())
        clock[0] = 3700.0  # past hot_s, and past the grace period in which taken files are still looked at
        tracker.poll()  # a full check
        idle, arrival, full = [], [], []
        for k in range(args.polls):
            clock[0] += 1.0
            idle.append(cpu_ms(tracker.poll))
            folder = folders[k % len(folders)]
            (folder / f"new{k}.jpg").write_bytes(b"\xff\xd8new")
            # As if the poll came 10 s later: a folder changed within the last 3 s is listed at every poll
            # (a timestamp tick may hide a second file), which costs what this poll costs, each time.
            then = time.time() - 10
            os.utime(folder, (then, then))
            clock[0] += 1.0
            arrival.append(cpu_ms(tracker.poll))
            clock[0] += 30.0
            full.append(cpu_ms(tracker.poll))
    print("| photographs | folders | first poll ms | poll, nothing new, ms | poll after a new photograph, ms "
          "| full check (every 30 s), ms |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.n} ({taken} taken) | {args.folders} | {first:.1f} | {statistics.median(idle):.2f} "
          f"| {statistics.median(arrival):.2f} | {statistics.median(full):.1f} |")


if __name__ == "__main__":
    main()
