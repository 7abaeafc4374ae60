"""The HTML report a clinic reads: one self-contained page (inline CSS, base64 images), readable offline, printable.

Sorted by urgency: referable first, then ungradable and unreadable images
(they need a new photograph), then the rest; within each group by the highest
referable-class probability. Per image: thumbnail, heatmap overlay (when
overlays were rendered), probabilities, verdict and reasons.
"""

from __future__ import annotations

import base64
import html
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2

from uopsl.runtime.bundle import Manifest
from uopsl.runtime.fsio import atomic_open
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, encode_jpeg
from uopsl.runtime.version import __version__

REPORT = "report.html"
_THUMB = 160

_CSS = """
:root { --ref:#b3261e; --ung:#8a5a00; --ok:#1e6b34; --mute:#5f6368; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #202124; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
.meta { color: var(--mute); margin-bottom: 1em; }
.summary { display: flex; gap: 1em; flex-wrap: wrap; margin: 1em 0; }
.card { border: 1px solid #dadce0; border-radius: 6px; padding: .6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.6em; }
.card.refer b { color: var(--ref); } .card.ungradable b, .card.error b { color: var(--ung); } .card.ok b { color: var(--ok); }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #e0e0e0; padding: .4em .5em; text-align: left; vertical-align: top; }
th { background: #f1f3f4; position: sticky; top: 0; }
td.img img { width: 120px; height: auto; display: block; border-radius: 3px; }
.verdict { font-weight: 600; white-space: nowrap; }
.v-refer { color: var(--ref); } .v-ungradable, .v-error { color: var(--ung); } .v-routine { color: var(--ok); }
.probs { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .9em; white-space: nowrap; }
.probs .pos { font-weight: 700; }
.src { word-break: break-all; font-size: .85em; color: var(--mute); max-width: 22em; }
.reasons { font-size: .9em; }
.note { color: var(--mute); font-size: .85em; margin-top: 1.5em; }
@media print {
  body { margin: 0; font-size: 10pt; }
  th { position: static; }
  tr { page-break-inside: avoid; }
  td.img img { width: 90px; }
  .noprint { display: none; }
}
"""


def _data_uri(path: Path, side: int = _THUMB) -> str:
    """A small base64 JPEG of the image at ``path`` (empty string when missing)."""
    if not path.is_file():
        return ""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return ""
    h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    if s < 1.0:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    data = encode_jpeg(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), 75)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def max_referable_prob(row: dict[str, Any], referable: Sequence[str]) -> float:
    probs = row.get("probs") or {}
    vals = [float(probs[c]) for c in referable if c in probs]
    return max(vals) if vals else -1.0


def urgency_key(row: dict[str, Any], referable: Sequence[str]) -> tuple[int, float]:
    """Sort key: referable (0), ungradable or unreadable (1), the rest (2); then by referable probability."""
    if row.get("status") == "ok" and row.get("refer"):
        group = 0
    elif row.get("status") in ("ungradable", "error"):
        group = 1
    else:
        group = 2
    return group, -max_referable_prob(row, referable)


def _verdict(row: dict[str, Any]) -> tuple[str, str]:
    status = row.get("status")
    if status == "error":
        return "v-error", "Unreadable"
    if status == "ungradable":
        return "v-ungradable", "Ungradable - retake"
    if row.get("refer"):
        return "v-refer", "Refer"
    return "v-routine", "No referable finding"


def report_parts(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                 run_info: dict[str, Any] | None = None) -> Iterator[str]:
    """The report page, piece by piece (a report of thousands of images never sits in memory whole)."""
    out = Path(out_dir)
    referable = [c.name for c in manifest.classes if c.referable]
    zero_shot = {c.name for c in manifest.classes if not c.seen_in_training}
    counts = Counter("refer" if r.get("status") == "ok" and r.get("refer") else r.get("status", "error") for r in rows)
    n_ok = sum(1 for r in rows if r.get("status") == "ok")
    info = dict(run_info or {})
    e = html.escape
    yield from [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Screening report - {len(rows)} images</title><style>{_CSS}</style></head><body>",
        "<h1>Retinal screening report</h1>",
        "<div class='meta'>"
        + e(f"Model {manifest.model_name}" + (f" ({manifest.backbone})" if manifest.backbone else ""))
        + e(f" - classes: {', '.join(manifest.class_names)} - referable: {', '.join(referable) or 'none'}")
        + e(f" - rule: {manifest.referral_rule}")
        + (e(f" - * zero-shot (no training images, scores not validated): {', '.join(sorted(zero_shot))}")
           if zero_shot else "")
        + (e(f" - backend: {info['backend']}") if info.get("backend") else "")
        + e(f" - generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by uopsl {__version__}")
        + "</div>",
        "<div class='summary'>",
        f"<div class='card total'><b>{len(rows)}</b>images</div>",
        f"<div class='card refer'><b id='n-refer'>{counts.get('refer', 0)}</b>refer</div>",
        f"<div class='card ok'><b>{n_ok - counts.get('refer', 0)}</b>no referable finding</div>",
        f"<div class='card ungradable'><b>{counts.get('ungradable', 0)}</b>ungradable</div>",
        f"<div class='card error'><b>{counts.get('error', 0)}</b>unreadable</div>",
        "</div>",
        "<table id='results'><thead><tr><th>#</th><th>Image</th><th>Heatmap</th><th>Verdict</th>"
        "<th>Probabilities</th><th>Reasons</th><th>Source</th></tr></thead><tbody>",
    ]
    for i, r in enumerate(sorted(rows, key=lambda r: urgency_key(r, referable)), 1):
        cls, word = _verdict(r)
        rid = str(r.get("id", ""))
        thumb = _data_uri(out / THUMB_DIR / f"{rid}.jpg")
        over = _data_uri(out / OVERLAY_DIR / f"{rid}.png")
        positive = set(r.get("positive") or [])
        probs = r.get("probs") or {}
        prob_html = "<br>".join(
            f"<span class='{'pos' if c in positive else ''}'>{e(c)}{'*' if c in zero_shot else ''} {float(p):.3f}</span>"
            for c, p in probs.items()
        ) or "&mdash;"
        reasons = list(r.get("reasons") or [])
        if r.get("error"):
            reasons.append(str(r["error"]))
        if r.get("status") == "ok" and positive:
            reasons.insert(0, "positive: " + ", ".join(sorted(positive)))
        hm = f" ({e(r['heatmap_class'])})" if over and r.get("heatmap_class") else ""
        thumb_img = f'<img alt="thumbnail" src="{thumb}">' if thumb else "&mdash;"
        over_img = f'<img alt="heatmap" src="{over}">' if over else "&mdash;"
        reasons_html = "<br>".join(e(x) for x in reasons) or "&mdash;"
        yield (
            f"<tr class='result {cls}' data-status='{e(str(r.get('status')))}'><td>{i}</td>"
            f"<td class='img'>{thumb_img}</td><td class='img'>{over_img}{hm}</td>"
            f"<td class='verdict {cls}'>{e(word)}</td><td class='probs'>{prob_html}</td>"
            f"<td class='reasons'>{reasons_html}</td>"
            f"<td class='src'>{e(str(r.get('source', '')))}</td></tr>"
        )
    yield "</tbody></table>"
    yield (
        "<p class='note'>Screening support only: a referral decision comes from the model's operating "
        "thresholds in the bundle manifest and must be confirmed by a qualified grader. Ungradable and "
        "unreadable images need a new photograph. Heatmaps show where the model's predilection-site "
        "attention was highest, not lesion segmentations.</p></body></html>"
    )


def render_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                  run_info: dict[str, Any] | None = None) -> str:
    """The report page as one string."""
    return "\n".join(report_parts(rows, out_dir, manifest, run_info))


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                 run_info: dict[str, Any] | None = None) -> Path:
    """Write ``report.html`` atomically into ``out_dir``; returns its path."""
    path = Path(out_dir) / REPORT
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for part in report_parts(rows, out_dir, manifest, run_info):
            fh.write(part)
            fh.write("\n")
    return path


__all__ = ["REPORT", "max_referable_prob", "render_report", "report_parts", "urgency_key", "write_report"]
