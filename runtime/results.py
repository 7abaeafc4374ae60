"""Results on disk: an append-only ``results.jsonl`` that survives crashes, and the derived ``results.csv``.

Why append-only JSON lines: a run can be killed at any moment (power loss in a
field clinic). Rows are appended per batch and fsync'ed, so at most the batch
in flight is lost; a half-written last line is detected and cut off when the
store is reopened. Each row carries the input's ``key`` (absolute path, size,
mtime), so a rerun skips what is already there. ``results.csv`` (and the HTML
report) are regenerated atomically from the jsonl at the end, keeping one row
per input file (the latest, when a file was replaced and screened again).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from uopsl.runtime.fsio import write_text

log = logging.getLogger(__name__)

JSONL = "results.jsonl"
CSV = "results.csv"


def _source_path(row: dict[str, Any]) -> str:
    return str(row.get("key", "")).split("|")[0] or str(row.get("source", ""))


class ResultStore:
    """The results of one output folder.

    ``done`` maps every key already screened to its status and ``referred``
    holds the keys whose latest row refers, so a resumed run can count what an
    earlier one decided. ``append`` writes a batch of rows durably (flush + fsync).
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / JSONL
        self._repair_tail()
        self.done: dict[str, str] = {}
        self.referred: set[str] = set()
        for r in self.rows():
            if "key" in r:
                self._note(r)
        self._fh: io.TextIOWrapper | None = None

    def _repair_tail(self) -> None:
        # A crash mid-write leaves a last line without its newline: cut it off,
        # or the next append would glue a new row onto it.
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # Find the last newline by scanning back in blocks.
            pos = size
            while pos > 0:
                step = min(65536, pos)
                fh.seek(pos - step)
                block = fh.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            log.warning("%s: dropping a partly written last row (%d bytes) left by an interrupted run",
                        self.path, size - pos)
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())

    def rows(self) -> Iterator[dict[str, Any]]:
        """All parseable rows, in the order written (corrupt lines are skipped with a warning)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: skipping a corrupt row", self.path, n)
                    continue
                if isinstance(row, dict):
                    yield row

    def _note(self, row: dict[str, Any]) -> None:
        key = row["key"]
        self.done[key] = row.get("status", "")
        if row.get("refer"):
            self.referred.add(key)
        else:
            self.referred.discard(key)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows and make them durable before returning."""
        if not rows:
            return
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across batches
        for r in rows:
            self._fh.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._note(r)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest_rows(self) -> list[dict[str, Any]]:
        """One row per input file (the last one written for its path), in first-seen order."""
        by_path: dict[str, dict[str, Any]] = {}
        for r in self.rows():
            by_path.pop(_source_path(r), None)  # re-insert: order follows the latest row
            by_path[_source_path(r)] = r
        return list(by_path.values())


def csv_columns(class_names: Sequence[str]) -> list[str]:
    return [
        "id", "source", "status", "refer", "positive",
        *[f"p_{c}" for c in class_names],
        "gradable", "quality_score", "reasons", "error", "heatmap_class",
        "read_ms", "preprocess_ms", "quality_ms", "infer_ms",
    ]


def write_csv(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], class_names: Sequence[str]) -> int:
    """Write ``rows`` (jsonl records) as CSV atomically; returns the number of rows."""
    cols = csv_columns(class_names)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    n = 0
    for r in rows:
        flat: dict[str, Any] = {k: r.get(k) for k in ("id", "source", "status", "gradable", "error", "heatmap_class")}
        flat["refer"] = "" if r.get("refer") is None else ("yes" if r["refer"] else "no")
        flat["positive"] = ";".join(r.get("positive") or [])
        flat["reasons"] = ";".join(r.get("reasons") or [])
        q = r.get("quality_score")
        flat["quality_score"] = "" if q is None else q
        for c in class_names:
            v = (r.get("probs") or {}).get(c)
            flat[f"p_{c}"] = "" if v is None else f"{v:.6f}"
        for t, v in (r.get("timings_ms") or {}).items():
            flat[t] = f"{v:.2f}"
        w.writerow(flat)
        n += 1
    write_text(path, buf.getvalue())
    return n
