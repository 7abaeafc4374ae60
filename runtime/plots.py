"""ROC plots as PNG, drawn with OpenCV (no matplotlib on a device or in CI).

One renderer serves the evaluation (one curve per class) and the parity
reports (reference and candidate overlaid: same colour per class, candidate
dashed). The figure is drawn at twice its size with antialiased lines and text
and then area-downsampled, which gives clean edges with Hershey fonts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_bytes
from uopsl.runtime.metrics import RocCurve

RGB = tuple[int, int, int]

# Okabe-Ito (colour-blind safe) first, then distinct extras; cycled beyond.
PALETTE: tuple[RGB, ...] = (
    (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
    (0, 0, 0), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)

_SS = 2  # supersampling factor
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK: RGB = (33, 33, 33)
_GRID: RGB = (228, 228, 228)
_CHANCE: RGB = (150, 150, 150)


@dataclass(frozen=True, eq=False)
class RocSeries:
    """One curve of a plot.

    ``operating_point`` is an (fpr, tpr) pair to mark, e.g. the manifest
    threshold; ``auc_text`` replaces the default ``AUC 0.912`` legend suffix
    (e.g. to add an interval). ``color`` is RGB; ``None`` takes the palette.
    """

    label: str
    curve: RocCurve
    color: RGB | None = None
    dashed: bool = False
    operating_point: tuple[float, float] | None = None
    auc_text: str | None = None

    def legend(self) -> str:
        if self.auc_text is not None:
            return f"{self.label} ({self.auc_text})" if self.auc_text else self.label
        if not self.curve.defined:
            return f"{self.label} (AUC n/a: one class only)"
        return f"{self.label} (AUC {self.curve.auc:.3f})"


def per_class_series(
    curves: Mapping[str, RocCurve], operating_points: Mapping[str, tuple[float, float]] | None = None,
    order: Sequence[str] | None = None,
) -> list[RocSeries]:
    """One solid series per class, palette colours in order: the class's place in ``order`` (the model's
    classes) when given, so a class keeps its colour in every plot of the model, whichever classes a test set
    leaves out; else the curves' own order."""
    ops = operating_points or {}
    place = {name: i for i, name in enumerate(order or curves)}
    return [
        RocSeries(name, c, PALETTE[place.get(name, i) % len(PALETTE)], operating_point=ops.get(name))
        for i, (name, c) in enumerate(curves.items())
    ]


def overlay_series(
    reference: Mapping[str, RocCurve],
    candidate: Mapping[str, RocCurve],
    *,
    reference_label: str = "reference",
    candidate_label: str = "candidate",
    reference_points: Mapping[str, tuple[float, float]] | None = None,
    candidate_points: Mapping[str, tuple[float, float]] | None = None,
) -> list[RocSeries]:
    """Reference (solid) and candidate (dashed) curves per class, one colour per class.

    With a single class the labels are just the two model names.
    """
    missing = set(reference) ^ set(candidate)
    if missing:
        raise ConfigError(
            f"reference and candidate must have the same classes; only in one of them: {sorted(missing)}"
        )
    rp, cp = reference_points or {}, candidate_points or {}
    single = len(reference) == 1
    out: list[RocSeries] = []
    for i, name in enumerate(reference):
        color = PALETTE[i % len(PALETTE)]
        prefix = "" if single else f"{name} "
        out.append(RocSeries(f"{prefix}{reference_label}", reference[name], color, operating_point=rp.get(name)))
        out.append(
            RocSeries(f"{prefix}{candidate_label}", candidate[name], color, dashed=True, operating_point=cp.get(name))
        )
    return out


def render_roc(
    series: Sequence[RocSeries] | Mapping[str, RocCurve],
    *,
    title: str = "ROC",
    subtitle: str = "",
    size: int = 640,
) -> np.ndarray:
    """The ROC figure as an (H, W, 3) uint8 RGB image; ``size`` is the side of the square plot area."""
    items = _as_series(series)
    if not 240 <= size <= 4096:
        raise ConfigError(f"plot size must be 240..4096 pixels; got {size}")
    s = _SS * size / 640  # text and line scale relative to the default size
    left, right = int(86 * s), int(28 * s)
    top, bottom = int((74 if subtitle else 54) * s), int(70 * s)
    side = _SS * size
    width, height = left + side + right, top + side + bottom
    img = np.full((height, width, 3), 255, np.uint8)

    def px(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
        return np.stack([left + fpr * side, top + (1 - tpr) * side], axis=-1)

    lw = max(1, round(1.6 * s))
    for v in np.linspace(0, 1, 6):
        x, y = round(left + v * side), round(top + (1 - v) * side)
        cv2.line(img, (x, top), (x, top + side), _GRID, max(1, round(s)), cv2.LINE_AA)
        cv2.line(img, (left, y), (left + side, y), _GRID, max(1, round(s)), cv2.LINE_AA)
        tick = f"{v:.1f}"
        _text(img, tick, (x, top + side + int(10 * s)), 0.46 * s, _INK, ha="center")
        _text(img, tick, (left - int(10 * s), y), 0.46 * s, _INK, ha="right", va="middle")
        cv2.line(img, (x, top + side), (x, top + side + int(5 * s)), _INK, max(1, round(s)), cv2.LINE_AA)
        cv2.line(img, (left - int(5 * s), y), (left, y), _INK, max(1, round(s)), cv2.LINE_AA)
    _dashed(img, px(np.array([0.0, 1.0]), np.array([0.0, 1.0])), _CHANCE, max(1, round(1.2 * s)), 7 * s)
    cv2.rectangle(img, (left, top), (left + side, top + side), _INK, max(1, round(1.2 * s)), cv2.LINE_AA)

    for i, it in enumerate(items):
        color = it.color or PALETTE[i % len(PALETTE)]
        if not it.curve.defined:
            continue
        pts = px(it.curve.fpr, it.curve.tpr)
        if it.dashed:
            _dashed(img, pts, color, lw, 9 * s)
        else:
            cv2.polylines(img, [_fixed(pts)], False, color, lw, cv2.LINE_AA, shift=4)
        if it.operating_point is not None:
            fx, ty = (float(v) for v in it.operating_point)
            if math.isfinite(fx) and math.isfinite(ty):
                c = _fixed(px(np.array(fx), np.array(ty)).reshape(1, 2))[0]
                r = int(5.5 * s * 16)
                cv2.circle(img, (int(c[0]), int(c[1])), r, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
                cv2.circle(img, (int(c[0]), int(c[1])), r, color, -1 if not it.dashed else lw, cv2.LINE_AA, shift=4)

    _text(img, title, (left + side // 2, int(16 * s)), 0.72 * s, _INK, ha="center", bold=True)
    if subtitle:
        _text(img, subtitle, (left + side // 2, int(44 * s)), 0.5 * s, (90, 90, 90), ha="center")
    _text(img, "False positive rate (1 - specificity)", (left + side // 2, height - int(14 * s)), 0.55 * s, _INK,
          ha="center", va="bottom")
    ylabel = _text_image("True positive rate (sensitivity)", 0.55 * s, _INK)
    ylabel = cv2.rotate(ylabel, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = top + (side - ylabel.shape[0]) // 2
    x0 = int(10 * s)
    img[y0 : y0 + ylabel.shape[0], x0 : x0 + ylabel.shape[1]] = np.minimum(
        img[y0 : y0 + ylabel.shape[0], x0 : x0 + ylabel.shape[1]], ylabel
    )
    _legend(img, items, (left, top, side), s, lw)
    return cv2.resize(img, (width // _SS, height // _SS), interpolation=cv2.INTER_AREA)


def roc_plot(
    series: Sequence[RocSeries] | Mapping[str, RocCurve],
    path: str | os.PathLike[str],
    *,
    title: str = "ROC",
    subtitle: str = "",
    size: int = 640,
) -> Path:
    """Render a ROC figure and write it atomically as PNG; returns the path.

    ``series`` is a list of :class:`RocSeries` or ``{class name: RocCurve}``
    (one solid curve per class).
    """
    rgb = render_roc(series, title=title, subtitle=subtitle, size=size)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise ConfigError("OpenCV could not encode the ROC plot as PNG")
    target = Path(path)
    write_bytes(target, buf.tobytes())
    return target


# --------------------------------------------------------------------------- drawing helpers


def _as_series(series: Sequence[RocSeries] | Mapping[str, RocCurve]) -> list[RocSeries]:
    items = per_class_series(series) if isinstance(series, Mapping) else list(series)
    if not items:
        raise ConfigError("nothing to plot: pass at least one ROC curve")
    for it in items:
        if not isinstance(it, RocSeries) or not isinstance(it.curve, RocCurve):
            raise ConfigError(f"expected RocSeries holding a RocCurve (uopsl.runtime.metrics.roc_curve); got {it!r}")
    return items


def _fixed(pts: np.ndarray) -> np.ndarray:
    """Sub-pixel coordinates for OpenCV's ``shift=4`` (1/16 pixel)."""
    return np.round(np.asarray(pts) * 16).astype(np.int32).reshape(-1, 2)


def _dashed(img: np.ndarray, pts: np.ndarray, color: RGB, thickness: int, dash: float) -> None:
    """Polyline with dashes of ``dash`` pixels and gaps of 0.6 dash, following the path length."""
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    seg = np.diff(pts, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate(([0.0], np.cumsum(lengths)))
    total = cum[-1]
    if total <= 0:
        return
    period = dash * 1.6
    starts = np.arange(0.0, total, period)
    for a in starts:
        b = min(a + dash, total)
        inner = cum[(cum > a) & (cum < b)]
        positions = np.concatenate(([a], inner, [b]))
        xy = np.stack([np.interp(positions, cum, pts[:, 0]), np.interp(positions, cum, pts[:, 1])], axis=1)
        cv2.polylines(img, [_fixed(xy)], False, color, thickness, cv2.LINE_AA, shift=4)


def _text(
    img: np.ndarray, text: str, anchor: tuple[int, int], scale: float, color: RGB,
    *, ha: str = "left", va: str = "top", bold: bool = False,
) -> None:
    """Antialiased text; ``ha`` left/center/right and ``va`` top/middle/bottom place it around ``anchor``."""
    thickness = max(_SS, round(scale * (2.6 if bold else 1.9)))
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    x = anchor[0] - {"left": 0, "center": w // 2, "right": w}[ha]
    y = anchor[1] + {"top": h, "middle": h // 2, "bottom": 0}[va]
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, color, thickness, cv2.LINE_AA)


def _text_image(text: str, scale: float, color: RGB) -> np.ndarray:
    thickness = max(_SS, round(scale * 1.9))
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = thickness + 2
    canvas = np.full((h + base + 2 * pad, w + 2 * pad, 3), 255, np.uint8)
    cv2.putText(canvas, text, (pad, pad + h), _FONT, scale, color, thickness, cv2.LINE_AA)
    return canvas


def _legend_entries(items: Sequence[RocSeries]) -> list[tuple[str, RGB, str]]:
    """(label, colour, style) per legend row; style: solid | dashed | chance | point | hollow | none (an
    undefined curve: no line). A dashed curve's operating point is drawn hollow, so it gets its own row (the
    legend showed only the filled dot, and a reader of validate's overlay could not tell the two apart)."""
    entries: list[tuple[str, RGB, str]] = [("chance", _CHANCE, "chance")]
    for i, it in enumerate(items):
        style = ("dashed" if it.dashed else "solid") if it.curve.defined else "none"
        entries.append((it.legend(), it.color or PALETTE[i % len(PALETTE)], style))
    filled = any(it.operating_point is not None and not it.dashed for it in items)
    hollow = any(it.operating_point is not None and it.dashed for it in items)
    if filled:
        entries.append(("operating point" + (", solid curve" if hollow else ""), _INK, "point"))
    if hollow:
        entries.append(("operating point" + (", dashed curve" if filled else ""), _INK, "hollow"))
    return entries


def _legend(img: np.ndarray, items: Sequence[RocSeries], box: tuple[int, int, int], s: float, lw: int) -> None:
    """Legend in the lower-right corner of the plot area (where ROC curves rarely go), in as many columns as
    its entries need to stay inside the plot."""
    left, top, side = box
    entries = _legend_entries(items)
    scale = 0.46 * s
    sample = int(34 * s)
    gap = int(8 * s)
    pad = int(10 * s)
    row = int(22 * s)
    max_w = side - 2 * pad
    max_h = side - 2 * int(10 * s)
    # Many entries (an overlay of a dozen classes): smaller rows first, down to 65 %, then more columns, so
    # every entry stays inside the plot instead of running off the figure.
    if row * len(entries) + pad > max_h:
        shrink = max(0.65, (max_h - pad) / (row * len(entries)))
        row, scale, sample = int(row * shrink), scale * shrink, int(sample * shrink)
    per_column = max(1, (max_h - pad) // row)
    columns = [entries[i : i + per_column] for i in range(0, len(entries), per_column)]

    def column_widths(sc: float) -> list[int]:
        th = max(_SS, round(sc * 1.9))
        return [sample + gap + max(cv2.getTextSize(t, _FONT, sc, th)[0][0] for t, *_ in col) + pad for col in columns]

    col_w = column_widths(scale)
    if sum(col_w) + pad > max_w:  # long labels: shrink the text to fit
        frame = len(columns) * (sample + gap + pad)  # each column's width besides its text
        scale *= (max_w - pad - frame) / (sum(col_w) - frame)
        col_w = column_widths(scale)
    bw = sum(col_w) + pad
    bh = row * len(columns[0]) + pad
    x1, y1 = left + side - int(10 * s), top + side - int(10 * s)
    x0, y0 = x1 - bw, y1 - bh  # bh <= max_h: the box never climbs above the plot's top margin
    overlay = img.copy()
    cv2.rectangle(overlay, (x0, y0), (x1, y1), (255, 255, 255), -1)
    cv2.addWeighted(overlay, 0.88, img, 0.12, 0, dst=img)
    cv2.rectangle(img, (x0, y0), (x1, y1), (200, 200, 200), max(1, round(s)), cv2.LINE_AA)
    for k, (label, color, style) in enumerate(entries):
        c, j = divmod(k, per_column)
        cy = y0 + pad + row * j + row // 2 - int(2 * s)
        a = x0 + pad + sum(col_w[:c])
        b = a + sample
        if style == "solid":
            cv2.line(img, (a, cy), (b, cy), color, lw, cv2.LINE_AA)
        elif style in ("dashed", "chance"):
            width = lw if style == "dashed" else max(1, round(1.2 * s))
            _dashed(img, np.array([[a, cy], [b, cy]], np.float64), color, width, 7 * s)
        elif style == "point":
            cv2.circle(img, ((a + b) // 2, cy), int(5.5 * s), color, -1, cv2.LINE_AA)
        elif style == "hollow":  # as render_roc draws a dashed curve's point
            cv2.circle(img, ((a + b) // 2, cy), int(5.5 * s), color, lw, cv2.LINE_AA)
        _text(img, label, (b + gap, cy), scale, _INK if style != "none" else (120, 120, 120), va="middle")
