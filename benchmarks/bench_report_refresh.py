"""Size and CPU of the report of a results folder that ``watch`` has filled for weeks.

Builds a scratch results folder of ``--n`` rows spread over ``--days`` days (about 8 % referred, 5 %
ungradable, 1 % unreadable), each with a thumbnail and, when screened ``ok``, a heatmap: one real
thumbnail and heatmap made from a TVHL photograph, hard-linked under every row's id (each is still
decoded and re-encoded on its own; the report caches by path). Then measures:

- the one-page report of every row (what ``report.html`` was before it was split by day): its first
  write, and a refresh with 20 new photographs (the report's image cache is warm then, as under ``watch``);
- the split report (``uopsl.runtime.report_days``): the first write (every page), a refresh after
  ``--new`` photographs arrived today (what ``watch`` does every ``refresh_s``), and a refresh with
  nothing new;

CPU seconds of this process (the image cache is emptied before each first write), the bytes written, and
the memory the report's image cache holds afterwards (it lives as long as ``watch`` runs).

    python benchmarks/bench_report_refresh.py --tvhl ../shared/data/tvhl --n 20000 --days 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.bundle import ClassSpec, Manifest
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, encode_jpeg, encode_png
from uopsl.runtime.preprocess import PreprocessConfig, decode, read_bytes
from uopsl.runtime import report
from uopsl.runtime.report import write_report
from uopsl.runtime.report_days import DAYS_DIR, write_reports


def _manifest() -> Manifest:
    classes = (ClassSpec("normal", ("healthy retina",), threshold=0.5, referable=False),
               ClassSpec("dr", ("microaneurysms",), threshold=0.6, referable=True),
               ClassSpec("dme", ("hard exudates at the macula",), threshold=0.4, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(), files=(), model_name="uopsl",
                    backbone="efficientnet_lite0", created="2026-11-01T08:00:00+00:00", content_sha256="ab" * 32)


def _rows(n: int, days: int, start: datetime, rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        when = start + timedelta(seconds=float(days * 86400 * i / n))
        u = rng.random()
        status = "error" if u < 0.01 else "ungradable" if u < 0.06 else "ok"
        refer = status == "ok" and rng.random() < 0.085
        dr = float(rng.uniform(0.6, 1.0) if refer else rng.uniform(0.0, 0.6))
        rows.append({
            "id": f"IMG_{i:06d}-{i * 2654435761 % 2**32:08x}", "source": f"/media/drop/{when:%Y-%m-%d}/IMG_{i:06d}.jpg",
            "key": f"/media/drop/{when:%Y-%m-%d}/IMG_{i:06d}.jpg|150000|{int(when.timestamp() * 1e9)}",
            "sha256": f"{i:064x}", "status": status, "refer": refer if status == "ok" else None,
            "positive": ["dr"] if refer else [], "probs": {"normal": 1 - dr, "dr": dr, "dme": 0.1} if status == "ok" else {},
            "reasons": ["blurred"] if status == "ungradable" else ["undecodable"] if status == "error" else [],
            "error": "not a decodable image" if status == "error" else "", "screened_at": when.isoformat(),
            "heatmap_class": "dr" if status == "ok" else "", "backend": "ort-cpu", "precision": "fp32",
            "model_file": "model.onnx",
        })
    return rows


def _images(out: Path, rows: list[dict[str, Any]], photo: Path) -> None:
    """One thumbnail and heatmap, hard-linked under every row's id, stamped after the rows' times."""
    rgb = decode(read_bytes(photo))
    (out / THUMB_DIR).mkdir(parents=True)
    (out / OVERLAY_DIR).mkdir()
    thumb_src, over_src = out / "thumb.jpg", out / "overlay.png"
    import cv2

    small = cv2.resize(rgb, (384, 384), interpolation=cv2.INTER_AREA)
    thumb_src.write_bytes(encode_jpeg(small, 85))
    heat = small.copy()
    heat[..., 0] = np.maximum(heat[..., 0], 128)
    over_src.write_bytes(encode_png(heat))
    for r in rows:
        if r["status"] == "error":
            continue
        os.link(thumb_src, out / THUMB_DIR / f"{r['id']}.jpg")
        if r["status"] == "ok":
            os.link(over_src, out / OVERLAY_DIR / f"{r['id']}.png")


def _cpu(fn: Any) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _cache_mb() -> float:
    return sum(len(uri) for *_, uri in report._URIS.values()) / 1e6


def _bytes(out: Path) -> int:
    total = (out / "report.html").stat().st_size
    days = out / DAYS_DIR
    if days.is_dir():
        total += sum(p.stat().st_size for p in days.iterdir())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--n", type=int, default=20000, help="rows in the results folder")
    ap.add_argument("--days", type=int, default=30, help="days they were screened over")
    ap.add_argument("--new", type=int, default=20, help="photographs arriving today between two refreshes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    photo = sorted((args.tvhl / "fundus").glob("*.jpg"))[0]
    m = _manifest()
    # Start at local midnight, days ago, so today holds the last day's rows.
    today = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    start = (today - timedelta(days=args.days - 1)).astimezone(timezone.utc)
    rows = _rows(args.n + args.new, args.days, start, rng)
    first, later = rows[: args.n], rows
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        _images(out, rows, photo)
        report._URIS.clear()
        one = _cpu(lambda: write_report(first, out, m))
        one_bytes = (out / "report.html").stat().st_size
        one_warm = _cpu(lambda: write_report(later, out, m))
        one_cache = _cache_mb()
        (out / "report.html").unlink()
        report._URIS.clear()
        cold = _cpu(lambda: write_reports(first, out, m))
        cold_bytes = _bytes(out)
        warm_same = _cpu(lambda: write_reports(first, out, m))
        pages = sorted(os.listdir(out / DAYS_DIR))
        before = {p: (out / DAYS_DIR / p).stat().st_mtime_ns for p in pages}
        warm_new = _cpu(lambda: write_reports(later, out, m))
        rewritten = [p for p in pages if p.endswith(".html") and (out / DAYS_DIR / p).stat().st_mtime_ns != before[p]]
        index_bytes = (out / "report.html").stat().st_size
        split_cache = _cache_mb()
        biggest = max((out / DAYS_DIR / p).stat().st_size for p in os.listdir(out / DAYS_DIR) if p.endswith(".html"))
    print(f"{args.n} rows over {args.days} days (+{args.new} new today), one TVHL photograph's thumbnail and heatmap")
    print("| report | CPU s | bytes written |")
    print("|---|---|---|")
    print(f"| one page, every row (before): first write | {one:.2f} | {one_bytes / 1e6:.1f} MB |")
    print(f"| one page, every row (before): refresh, {args.new} new today | {one_warm:.2f} | {one_bytes / 1e6:.1f} MB |")
    print(f"| split by day: first write (every page) | {cold:.2f} | {cold_bytes / 1e6:.1f} MB in {len(pages) - 1} pages + index |")
    print(f"| split by day: refresh, nothing new | {warm_same:.2f} | index {index_bytes / 1e3:.0f} KB |")
    print(f"| split by day: refresh, {args.new} new today | {warm_new:.2f} | pages rewritten: {', '.join(rewritten)} |")
    print(f"largest page: {biggest / 1e6:.1f} MB; index: {index_bytes / 1e3:.0f} KB")
    print(f"image cache held afterwards: one page {one_cache:.0f} MB, split by day {split_cache:.0f} MB")


if __name__ == "__main__":
    main()
