"""Mutation audit (session 44) of the ROC figures, the ONNX reference and the CPU-class detection.

Audited: ``runtime/plots.py`` (where a ROC curve, its operating point, ticks, labels and legend land on the
figure, and what the PNG file is), ``export/onnx_reference.py`` (what the torch-free reference computes and
reports) and ``runtime/cpuinfo.py`` (which INT8 CPU class is read from which flags, and which classes match).
Each test pins a behaviour that a single-point mutant of those modules changed while the rest of the suite
still passed (the mutant ids, B01..., are in each docstring and in the session's report). Expected values are
worked out by hand from the documented layout (a ``size`` px plot area drawn at twice its size: margins
86/28 px left/right, 54 px top (74 with a subtitle) and 70 px bottom at ``size`` 640) or by a plain
re-implementation written out in the test, never by calling the code under test another way.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
import pytest

from uopsl.export.onnx_reference import OnnxReference, ReferenceProof, check_reference_chain, require_onnxruntime
from uopsl.runtime import cpuinfo
from uopsl.runtime import plots as P
from uopsl.runtime.bundle import PARITY_GATE_DEFAULTS, ClassSpec, FileEntry, Manifest, describe_file, write_manifest
from uopsl.runtime.errors import BundleError, ConfigError, MissingDependencyError
from uopsl.runtime.metrics import RocCurve
from uopsl.runtime.preprocess import PreprocessConfig

RED = (230, 0, 0)
GREEN = (0, 170, 0)


def _curve(fpr: list[float], tpr: list[float]) -> RocCurve:
    """A ROC curve given point by point (both classes present, AUC by the trapezoid rule)."""
    f, t = np.array(fpr, np.float64), np.array(tpr, np.float64)
    auc = float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2))
    return RocCurve(f, t, np.linspace(1.0, 0.0, len(f)), auc, 5, 5)


PERFECT = _curve([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])  # up the left edge, along the top edge


def _at(fpr: float, tpr: float, size: int = 640, subtitle: bool = False) -> tuple[int, int]:
    """Where (fpr, tpr) lands in the final image, by hand: x = 86 + fpr * size, y = top + (1 - tpr) * size at
    the default scale (margins scale with size / 640)."""
    k = size / 640
    top = (74 if subtitle else 54) * k
    return round(86 * k + fpr * size), round(top + (1 - tpr) * size)


def _near(img: np.ndarray, rgb: tuple[int, int, int], x: int, y: int, r: int, tol: int = 40) -> int:
    """How many pixels within a (2r+1)-square around (x, y) are within ``tol`` of ``rgb``."""
    box = img[y - r : y + r + 1, x - r : x + r + 1].astype(int)
    return int((np.abs(box - np.array(rgb)).max(axis=-1) <= tol).sum())


def _count(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


class _Texts:
    """Records every cv2.putText call: (text, org, scale, thickness), in the supersampled (2x) canvas."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, int], float, int]] = []

    def __call__(self, img: np.ndarray, text: str, org: tuple[int, int], font: int, scale: float,
                 color: Any, thickness: int = 1, *a: Any) -> Any:
        self.calls.append((text, (int(org[0]), int(org[1])), float(scale), int(thickness)))
        return _REAL_PUT_TEXT(img, text, org, font, scale, color, thickness, *a)

    def of(self, text: str) -> list[tuple[tuple[int, int], float, int]]:
        return [(o, s, t) for x, o, s, t in self.calls if x == text]


_REAL_PUT_TEXT = cv2.putText


@pytest.fixture()
def texts(monkeypatch: pytest.MonkeyPatch) -> _Texts:
    spy = _Texts()
    monkeypatch.setattr(P.cv2, "putText", spy)
    return spy


# Supersampled layout at size 640 (scale s = 2): left 172, top 108 (no subtitle), side 1280.
_L, _T, _S = 172, 108, 1280


# -- where the operating point is drawn ---------------------------------------------------------------------
def test_the_operating_point_is_a_disk_at_fpr_across_and_tpr_up_in_the_curves_colour() -> None:
    """B04, B08, B56: the point (fpr 0.5, tpr 0.3) must be a filled disk of about 11 px in the curve's colour at
    x = 86 + 0.5 * 640 = 406, y = 54 + 0.7 * 640 = 502. With the pair swapped it sat at (0.3, 0.5), with the
    radius not in OpenCV's 1/16-px units it was a dot under one pixel, or it was drawn in black: a reader of the
    evaluation figure would have read another sensitivity/specificity than the manifest threshold's."""
    img = P.render_roc([P.RocSeries("m", PERFECT, RED, operating_point=(0.5, 0.3))])
    x, y = _at(0.5, 0.3)
    assert (x, y) == (406, 502)
    assert _near(img, RED, x, y, 3, tol=12) == 49  # the whole 7x7 core of a radius-5.5 disk is the colour
    assert _near(img, RED, x, y, 8, tol=40) < 17 * 17  # and it is a disk of about that size, not a blob
    sx, sy = _at(0.3, 0.5)
    assert _near(img, RED, sx, sy, 8) == 0  # nothing at the swapped position


def test_a_candidates_operating_point_is_a_ring_and_the_references_a_filled_disk() -> None:
    """B07: in a parity overlay the reference's point is filled and the dashed candidate's is an open ring, so
    two points at nearly the same place stay told apart; swapped, the legend's meaning was reversed."""
    x, y = _at(0.5, 0.3)
    solid = P.render_roc([P.RocSeries("r", PERFECT, RED, operating_point=(0.5, 0.3))])
    ring = P.render_roc([P.RocSeries("c", PERFECT, RED, dashed=True, operating_point=(0.5, 0.3))])
    assert _near(solid, RED, x, y, 1, tol=12) == 9
    assert _near(ring, (255, 255, 255), x, y, 1, tol=3) == 9  # open centre
    assert _near(ring, RED, x, y, 7, tol=40) > 30  # the ring itself


@pytest.mark.parametrize("point", [(math.nan, 0.5), (0.5, math.nan), (math.inf, 0.2), (0.4, -math.inf)])
def test_a_non_finite_operating_point_is_not_drawn_and_casts_nothing(point: tuple[float, float]) -> None:
    """B05, B06: an operating point with a NaN or infinite rate (a class without negatives or positives) is
    skipped. Drawn anyway, NaN is cast to int32 (numpy warns 'invalid value'; the result is undefined in C): on
    x86 it lands off the image, on ARM (a Jetson) such casts give 0, a stray disk at the plot's edge."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = P.render_roc([P.RocSeries("m", PERFECT, GREEN, operating_point=point)])
    x0, y0 = _at(0.1, 0.9)
    x1, y1 = _at(0.9, 0.1)
    inner = img[y0:y1, x0:x1]  # well inside the plot area, away from the curve on its edges
    assert _count(inner, GREEN, tol=60) == 0


def test_an_undefined_curve_is_not_drawn_and_casts_nothing() -> None:
    """B09: a class with no positive image has a NaN true-positive rate; its curve must be skipped, not cast
    from NaN (numpy warns; on ARM such casts give 0, and a false curve would run along the plot's top)."""
    undefined = RocCurve(np.linspace(0, 1, 5), np.full(5, np.nan), np.linspace(1, 0, 5), math.nan, 0, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = P.render_roc([P.RocSeries("rare", undefined, GREEN), P.RocSeries("ok", PERFECT, RED)])
    assert _count(img, GREEN, tol=60) == 0


# -- the curve, the chance line and the colours ---------------------------------------------------------------
def test_a_solid_curve_is_open_not_closed_back_to_its_start() -> None:
    """B51: a closed polyline adds a segment from (1, 1) back to (0, 0): a false diagonal in the curve's colour
    that reads as a second, chance-level curve."""
    img = P.render_roc([P.RocSeries("p", PERFECT, RED)])
    for v in (0.3, 0.5, 0.7):
        x, y = _at(v, v)
        assert _near(img, RED, x, y, 4, tol=60) == 0, v


def test_the_chance_line_runs_from_bottom_left_to_top_right() -> None:
    """B41: the grey dashed chance line is the diagonal tpr = fpr; drawn as the other diagonal it says a
    classifier at (0.2, 0.8) is at chance."""
    img = P.render_roc([P.RocSeries("p", PERFECT, RED)])
    px = img.astype(int)
    grey = (px.max(axis=-1) < 205) & (px.min(axis=-1) > 100) & (px.max(axis=-1) - px.min(axis=-1) < 8)

    def grey_near(f: float, t: float) -> int:
        x, y = _at(f, t)
        return int(grey[y - 9 : y + 10, x - 9 : x + 10].sum())

    assert all(grey_near(v, v) > 10 for v in (0.15, 0.3, 0.7))
    assert all(grey_near(f, t) == 0 for f, t in ((0.15, 0.85), (0.3, 0.7), (0.7, 0.3)))


def test_a_dash_over_a_corner_follows_the_corner() -> None:
    """B49: a dash that spans a vertex of the curve runs along both segments through the vertex; joined
    straight from end to end it cut the corner of a ROC step. By hand: dashes of 9 * s = 18 px every 28.8 px
    (supersampled), a vertical segment of 585 px = 20 periods + 9 px, so dash 21 is centred on the corner at
    (fpr 0.25, tpr 0.1 + 585 / 1280), which lands at (246, 337.5) in the final image."""
    y1 = 0.1 + 585 / 1280
    step = RocCurve(np.array([0.25, 0.25, 0.75]), np.array([0.1, y1, y1]), np.array([3.0, 2.0, 1.0]), 0.5, 5, 5)
    img = P.render_roc([P.RocSeries("d", step, RED, dashed=True)])
    assert _near(img, RED, 246, 338, 1, tol=12) >= 6  # the corner's 3x3 block is mostly the full colour

def test_series_without_a_colour_take_the_palette_in_order_on_curve_and_legend_alike() -> None:
    """B10, B11: a series without a colour takes PALETTE[i]; the curve and its legend sample must use the same
    one (off by one on either, the legend named the wrong curve)."""
    a = _curve([0.0, 0.1, 1.0], [0.0, 0.8, 1.0])
    b = _curve([0.0, 0.4, 1.0], [0.0, 0.6, 1.0])
    img = P.render_roc([P.RocSeries("a", a), P.RocSeries("b", b)])
    assert _count(img, P.PALETTE[0]) > 100 and _count(img, P.PALETTE[1]) > 100
    assert _count(img, P.PALETTE[2], tol=40) == 0


# -- figure size, margins and the file ----------------------------------------------------------------------
class _Reached(Exception):
    pass


@pytest.mark.parametrize("size", [240, 4096])
def test_plot_sizes_at_the_documented_limits_are_accepted(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """B13, B14: 240..4096 pixels, ends included (the check passes and drawing starts: stopped there, to keep
    a 4096 px figure out of the test's memory)."""

    def stop(*a: Any, **k: Any) -> Any:
        raise _Reached

    monkeypatch.setattr(P.np, "full", stop)
    with pytest.raises(_Reached):
        P.render_roc([P.RocSeries("p", PERFECT, RED)], size=size)


@pytest.mark.parametrize("size", [239, 4097])
def test_plot_sizes_outside_the_limits_are_refused(size: int) -> None:
    """B15: without the upper limit a typo (size 64000) allocated a figure of tens of gigabytes."""
    with pytest.raises(ConfigError, match=r"240\.\.4096 pixels; got " + str(size)):
        P.render_roc([P.RocSeries("p", PERFECT, RED)], size=size)


def test_a_subtitle_adds_twenty_pixels_of_top_margin_and_is_drawn_there(texts: _Texts) -> None:
    """B16, B17: at size 640 the figure is 764 px high, 784 with a subtitle (top margin 54 -> 74 px); the
    subtitle is written centred above the plot. Swapped margins let a subtitle overlap the title; an inverted
    test left the subtitle out of the figure."""
    plain = P.render_roc([P.RocSeries("p", PERFECT, RED)])
    sub = P.render_roc([P.RocSeries("p", PERFECT, RED)], subtitle="dots: operating thresholds")
    assert plain.shape == (764, 754, 3) and sub.shape == (784, 754, 3)
    ((org, scale, thick),) = texts.of("dots: operating thresholds")
    assert org[1] < 148  # above the plot area (its top at 74 px, 148 supersampled)
    assert "" not in [t for t, *_ in texts.calls]  # no empty subtitle drawn for the figure without one


def test_roc_plot_writes_a_png_of_the_requested_size_and_title(tmp_path: Path, texts: _Texts) -> None:
    """B19, B20, B52: the file is a PNG (signature), at ``size`` 320 it is 382 x 377 px (margins halved), and
    the title passed is the one drawn. Dropped arguments gave a 640 px figure titled 'ROC'; a JPEG under a
    .png name is lossy and not what reports link to."""
    out = P.roc_plot([P.RocSeries("p", PERFECT, RED)], tmp_path / "f" / "roc.png", title="Site B", size=320)
    data = out.read_bytes()
    assert out == tmp_path / "f" / "roc.png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (382, 377, 3)
    assert [t for t, *_ in texts.calls].count("Site B") == 1 and "ROC" not in [t for t, *_ in texts.calls]


# -- ticks, axis labels, title ---------------------------------------------------------------------------------
def test_ticks_are_0_0_to_1_0_in_steps_of_0_2_with_tpr_rising_upward(texts: _Texts) -> None:
    """B38, B39, B40, B55: six ticks per axis, one decimal; on the y axis 1.0 is at the top (y = top) and 0.0 at
    the bottom, right-aligned 20 px (supersampled) left of the plot; x ticks are centred under their grid line."""
    P.render_roc([P.RocSeries("p", PERFECT, RED)])
    for k in range(6):
        label = f"{k / 5:.1f}"
        calls = texts.of(label)
        assert len(calls) == 2, (label, calls)
        (xo, xs, xt), (yo, ys, yt) = sorted(calls, key=lambda c: c[0][0], reverse=True)  # x tick is the right one
        (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, ys, yt)
        assert yo[0] + w == _L - 20  # right-aligned against the axis
        assert yo[1] == _T + round((1 - k / 5) * _S) + h // 2  # 1.0 at the top, 0.0 at the bottom
        (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, xs, xt)
        assert xo[0] == _L + round(k / 5 * _S) - w // 2 and xo[1] > _T + _S  # centred, below the plot


def test_axis_labels_say_which_rate_is_which_and_the_title_is_centred(texts: _Texts) -> None:
    """B42, B43, B54: x is 'False positive rate (1 - specificity)' (under the plot), y is 'True positive rate
    (sensitivity)'; the title is centred over the plot area. Swapped labels make every figure read backwards."""
    P.render_roc([P.RocSeries("p", PERFECT, RED)], title="Evaluation")
    ((xo, _, _),) = texts.of("False positive rate (1 - specificity)")
    assert xo[1] > _T + _S
    assert len(texts.of("True positive rate (sensitivity)")) == 1
    ((to, ts, tt),) = texts.of("Evaluation")
    (w, _), _ = cv2.getTextSize("Evaluation", cv2.FONT_HERSHEY_SIMPLEX, ts, tt)
    assert to[0] == _L + _S // 2 - w // 2


def _upright_label(scale: float, thickness: int) -> np.ndarray:
    """'True positive rate (sensitivity)' in dark ink on white, horizontal, reading left to right (own drawing)."""
    text = "True positive rate (sensitivity)"
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = thickness + 2
    canvas = np.full((h + base + 2 * pad, w + 2 * pad), 255, np.uint8)
    _REAL_PUT_TEXT(canvas, text, (pad, pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, 0, thickness, cv2.LINE_AA)
    return canvas


def test_the_y_label_is_drawn_reading_bottom_to_top_in_the_left_margin() -> None:
    """B44, B45: the y label must be visible (darkened onto the figure, not lightened away) in the left margin,
    and read from bottom to top as in every ROC figure. Turned the back-to-front way it reads top to bottom."""
    img = cv2.cvtColor(P.render_roc([P.RocSeries("p", PERFECT, RED)]), cv2.COLOR_RGB2GRAY)
    band = img[54 : 54 + 640, 4:40]  # left of the tick labels (they end 10 px left of x = 86)
    assert int((band < 128).sum()) > 300  # ink is there
    upright = _upright_label(1.1, 2)  # 0.55 * s at s = 2, thickness max(2, round(1.1 * 1.9)) = 2
    upright = cv2.resize(upright, (upright.shape[1] // 2, upright.shape[0] // 2), interpolation=cv2.INTER_AREA)
    # turn the band back by a quarter clockwise: a label written bottom-to-top then reads left to right
    back = cv2.rotate(np.ascontiguousarray(band), cv2.ROTATE_90_CLOCKWISE)
    score_upright = float(cv2.matchTemplate(back, upright, cv2.TM_CCOEFF_NORMED).max())
    score_flipped = float(cv2.matchTemplate(back, cv2.rotate(upright, cv2.ROTATE_180), cv2.TM_CCOEFF_NORMED).max())
    assert score_upright > 0.8 and score_upright > score_flipped + 0.2, (score_upright, score_flipped)


# -- the legend ------------------------------------------------------------------------------------------------
def test_the_legend_lists_operating_point_when_any_series_has_one(texts: _Texts) -> None:
    """B33, B34: a parity overlay where only the reference has a point still explains the dot ('operating
    point'); with 'all' it did not."""
    P.render_roc([P.RocSeries("ref", PERFECT, RED, operating_point=(0.2, 0.9)),
                  P.RocSeries("cand", PERFECT, GREEN, dashed=True)])
    assert len(texts.of("operating point")) == 1
    texts.calls.clear()
    P.render_roc([P.RocSeries("ref", PERFECT, RED)])
    assert texts.of("operating point") == []


def test_legend_text_keeps_the_tick_size_when_it_fits_and_shrinks_inside_the_plot_when_not(texts: _Texts) -> None:
    """B36: short labels are written at the tick size (0.46 * s = 0.92 supersampled); a label too long for the
    plot area is shrunk so the legend stays inside it. Reversed, short labels were blown up and long ones ran
    off the left of the figure."""
    P.render_roc([P.RocSeries("dr", PERFECT, RED)])
    ((_, scale, _),) = texts.of("dr (AUC 1.000)")
    assert scale == pytest.approx(0.92)
    texts.calls.clear()
    long = "referable diabetic retinopathy with clinically significant macular oedema, site B, cohort 2024"
    P.render_roc([P.RocSeries(long, PERFECT, RED)])
    ((org, scale, thick),) = texts.of(f"{long} (AUC 1.000)")
    (w, _), _ = cv2.getTextSize(f"{long} (AUC 1.000)", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    assert scale < 0.92 and _L <= org[0] and org[0] + w <= _L + _S


def test_a_tall_legend_shrinks_its_rows_to_stay_inside_the_plot(texts: _Texts) -> None:
    """B37, and session 44: 34 entries do not fit 44 px rows (supersampled) in the 1280 px plot, so rows shrink
    to 35 px (at most to 65 %) and the box ends 20 px above the plot's foot. Before session 44 the box was
    pinned below the plot's top and its last rows ran off the figure."""
    series = [P.RocSeries(f"class {i}", PERFECT, RED) for i in range(33)]
    P.render_roc(series)
    # rows: int(44 * min(1, max(0.65, (1240 - 20) / (44 * 34)))) = int(44 * 0.8155) = 35; box height
    # 35 * 34 + 20 = 1210 above the box's foot at top + 1280 - 20, so its top is at top + 50
    for k, label in enumerate(["chance"] + [f"class {i} (AUC 1.000)" for i in range(33)]):
        ((org, scale, thick),) = texts.of(label)
        (_, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        assert org[1] - h // 2 == _T + 50 + 20 + 35 * k + 17 - 4, label
    assert org[1] < _T + 1280  # the last row inside the plot


def test_a_legend_too_long_for_one_column_takes_two(texts: _Texts) -> None:
    """Session 44: 70 entries at the smallest rows (int(44 * 0.65) = 28 px) fit 43 to a column (1220 // 28), so
    the rest start a second column to the right of the first, at the first row's height."""
    series = [P.RocSeries(f"c{i}", PERFECT, RED) for i in range(69)]
    P.render_roc(series)
    first, second = texts.of("chance")[0][0], texts.of("c42 (AUC 1.000)")[0][0]
    last_of_first = texts.of("c41 (AUC 1.000)")[0][0]
    assert second[0] > first[0] and abs(second[1] - first[1]) <= 2  # top of the next column
    assert last_of_first[1] - first[1] == 42 * 28 and last_of_first[0] == first[0]
    for label in ["chance"] + [f"c{i} (AUC 1.000)" for i in range(69)]:
        (org, _, _), = texts.of(label)
        assert _T < org[1] < _T + 1280 and org[0] < 2 * 86 + 1280, label


def test_an_empty_auc_text_leaves_the_bare_label() -> None:
    """B30, B31: ``auc_text=""`` asks for no AUC suffix; it gave 'name ()' or fell back to the default AUC."""
    assert P.RocSeries("PyTorch", PERFECT, auc_text="").legend() == "PyTorch"


# -- series builders -------------------------------------------------------------------------------------------
def test_per_class_series_carry_their_operating_points() -> None:
    """B25: ``per_class_series(curves, operating_points)`` must mark each class's point; dropped, the
    evaluation figure lost its manifest thresholds without a word."""
    (a, b) = P.per_class_series({"dr": PERFECT, "dme": PERFECT}, {"dme": (0.1, 0.8)})
    assert a.operating_point is None and b.operating_point == (0.1, 0.8)


def test_overlay_refuses_a_class_only_the_candidate_has() -> None:
    """B26: the class check is symmetric: a candidate with an extra class must be refused (it named only the
    reference's extras, and the candidate's extra class silently vanished from the figure)."""
    with pytest.raises(ConfigError, match=r"only in one of them: \['dme'\]"):
        P.overlay_series({"dr": PERFECT}, {"dr": PERFECT, "dme": PERFECT})


def test_overlay_gives_the_candidate_its_own_operating_point() -> None:
    """B28: the dashed candidate must be marked at the candidate's point, not the reference's (the figure
    otherwise hid the threshold shift the parity report is about)."""
    ref, cand = P.overlay_series({"dr": PERFECT}, {"dr": PERFECT}, reference_points={"dr": (0.2, 0.9)},
                                 candidate_points={"dr": (0.3, 0.8)})
    assert ref.operating_point == (0.2, 0.9) and cand.operating_point == (0.3, 0.8)


def test_overlay_colours_follow_the_class_order_from_the_first_palette_colour() -> None:
    """B29: class k of an overlay is PALETTE[k] for both its curves, as in the evaluation figure of the same
    model (``per_class_series``), so a class keeps its colour from one report to the next."""
    series = P.overlay_series({"dr": PERFECT, "dme": PERFECT}, {"dr": PERFECT, "dme": PERFECT})
    assert [s.color for s in series] == [P.PALETTE[0], P.PALETTE[0], P.PALETTE[1], P.PALETTE[1]]


# == runtime/cpuinfo.py: which CPU class is read from which flags ===============================================

_X86_CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"
                "flags\t\t: fpu vme de pse tsc msr sse sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
                "bugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu\n")
_ARM_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 62.50\n"
                "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                "lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n")


def _class_of(monkeypatch: pytest.MonkeyPatch, machine: str, cpuinfo_text: str | None = None,
              flags: str | None = None, error: OSError | None = None) -> str:
    """int8_cpu_class() on a machine named ``machine`` whose /proc/cpuinfo reads ``cpuinfo_text`` (or whose
    flags are ``flags``, or whose /proc/cpuinfo raises ``error``)."""
    monkeypatch.setattr(cpuinfo.platform, "machine", lambda: machine)
    if flags is not None:
        monkeypatch.setattr(cpuinfo, "_cpu_flags", lambda: frozenset(flags.split()))
    else:
        def fake_open(path: str, *a: Any, **k: Any) -> io.StringIO:
            assert path == "/proc/cpuinfo"
            if error is not None:
                raise error
            return io.StringIO(cpuinfo_text or "")

        monkeypatch.setattr(cpuinfo, "open", fake_open, raising=False)
    cpuinfo.int8_cpu_class.cache_clear()
    try:
        return cpuinfo.int8_cpu_class()
    finally:
        cpuinfo.int8_cpu_class.cache_clear()


def test_flags_are_read_from_the_x86_flags_line_and_the_arm_features_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """B57, B58, B61: x86 lists ``flags\\t\\t: ...`` and ARM ``Features\\t: ...`` (capital F); the last flag on
    the line counts too. Missed, a Jetson (asimddp) read as plain 'arm64' and matched any CPU, and a VNNI Xeon
    whose vnni flag ends the line read as 'x86-no-vnni'."""
    assert _class_of(monkeypatch, "x86_64", _X86_CPUINFO) == "x86-vnni"
    assert _class_of(monkeypatch, "aarch64", _ARM_CPUINFO) == "arm64-dotprod"
    assert _class_of(monkeypatch, "aarch64", _ARM_CPUINFO.replace(" asimddp", "")) == "arm64-no-dotprod"


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), IsADirectoryError(21, "Is a dir")])
def test_an_unreadable_proc_cpuinfo_gives_the_generic_class(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    """B60: any OSError reading /proc/cpuinfo (a sandbox denying it) means 'flags unknown' (the generic 'x86'),
    not a crash of every ``auto`` selection and ``validate`` run."""
    assert _class_of(monkeypatch, "x86_64", error=error) == "x86"


@pytest.mark.parametrize("flag", ["avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"])
def test_each_vnni_flag_alone_makes_an_x86_cpu_vnni(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    """B62, B63: each of the four flags names 32-bit 8-bit sums; a CPU showing only one of them must not be
    taken for a saturating (no-VNNI) one."""
    assert _class_of(monkeypatch, "x86_64", flags=f"fpu sse2 avx2 {flag}") == "x86-vnni"


@pytest.mark.parametrize(("machine", "flags", "expect"), [
    ("i686", "fpu sse2 avx2", "x86-no-vnni"),
    ("i386", "fpu sse2", "x86-no-vnni"),
    ("arm64", "fp asimd asimddp", "arm64-dotprod"),
    ("arm64", "fp asimd", "arm64-no-dotprod"),
    ("riscv64", "rv64imafdc", "riscv64"),
    ("ppc64le", "", "ppc64le"),
    ("aarch64", "", "arm64"),  # flags unreadable: the generic class, which matches any ARM record
])
def test_machine_names_map_to_their_class(monkeypatch: pytest.MonkeyPatch, machine: str, flags: str,
                                          expect: str) -> None:
    """B64, B66, B68, B70: 32-bit x86 names and ``arm64`` are told apart by their flags like x86_64 and aarch64; an
    other architecture keeps its own name, which matches only itself (as 'unknown' it matched every CPU)."""
    assert _class_of(monkeypatch, machine, flags=flags) == expect


@pytest.mark.parametrize(("recorded", "here", "same"), [
    ("x86-vnni", "x86-vnni", True),
    ("x86-vnni", "x86-no-vnni", False),
    ("arm64-dotprod", "arm64-no-dotprod", False),
    ("x86", "x86-vnni", True),  # recorded where flags were unreadable: cannot tell, taken to match
    ("arm64", "arm64-no-dotprod", True),
    ("unknown", "x86-no-vnni", True),
    ("x86-no-vnni", "unknown", True),
    ("riscv64", "x86-vnni", False),
])
def test_which_recorded_cpu_classes_carry_over(recorded: str, here: str, same: bool) -> None:
    """B72, B74: a generic class on either side (flags unreadable: Windows, macOS) matches; two known different
    classes do not. Without the recorded side, a verdict validated on a Windows box was refused on Linux."""
    assert cpuinfo.same_int8_arithmetic(recorded, here) is same


def test_an_openvino_int8_pass_does_not_carry_to_another_kind_of_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """B75: OpenVINO runs INT8 on this CPU too (with VNNI or without), so its INT8 PASS judged on a VNNI CPU is
    not trusted on a CPU without; dropped from the CPU backends, ``auto`` served it on the wrong kind of CPU."""
    from uopsl.runtime import bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "int8_cpu_class", lambda: "x86-no-vnni")
    run = _pass_run(machine={"arch": "x86_64", "onnxruntime": "1.0.0", "cpu_int8": "x86-vnni"})
    entry = FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", sha256=SHA,
                      info={"parity": {"sha256": SHA, "backends": {"openvino": run}}})
    ok, why = bundle_mod.parity_status(entry, "openvino")
    assert not ok and "passed on openvino on a x86-vnni CPU, and this one is x86-no-vnni" in why
    monkeypatch.setattr(bundle_mod, "int8_cpu_class", lambda: "x86-vnni")
    assert bundle_mod.parity_status(entry, "openvino")[0]  # the same kind of CPU: trusted


# == export/onnx_reference.py: what the reference is and reports ================================================

SHA = "ab" * 32


def _pass_run(**over: Any) -> dict[str, Any]:
    """A PyTorch-referenced PASS on ort-cpu that ``auto`` trusts (default gates, 1e-4 prob tolerance, 300 images)."""
    return {"passed": True, "verdict": "PASS", "n_images": 300,
            "gates": {**PARITY_GATE_DEFAULTS, "max_prob_diff": 1e-4}, "data": {"spec": "csv:site.csv"},
            "reference": "PyTorch", "reasons": [],
            "machine": {"arch": "x86_64", "onnxruntime": "1.0.0"}, "created": "2026-11-29T10:00:00+00:00",
            "reference_kind": "pytorch", "reference_source": "pytorch:ckpt", **over}


def _bundle(root: Path, record: bool = True) -> tuple[Path, Manifest]:
    """A bundle whose model.onnx (stand-in bytes: the chain only hashes it) carries ``_pass_run`` if ``record``."""
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"stand-in for the FP32 model: the chain of trust only hashes it")
    entry = describe_file(root, FileEntry("model.onnx", "onnx", "fp32"))
    if record:
        entry = FileEntry(entry.path, entry.kind, entry.precision, sha256=entry.sha256, size=entry.size,
                          info={"parity": {"sha256": entry.sha256, "backends": {"ort-cpu": _pass_run()}}})
    m = Manifest(classes=(ClassSpec("dr", threshold=0.5, referable=True),), head="sigmoid",
                 preprocess=PreprocessConfig(size=64), files=(entry,), site_map_size=(8, 8), model_name="t",
                 backbone="t")
    write_manifest(root, m)
    return root, m


def _reference(record: dict[str, Any] | None = None, threads: int | None = None,
               ort: str = "1.17.0") -> OnnxReference:
    proof = ReferenceProof(FileEntry("model.onnx", "onnx", "fp32", sha256=SHA), SHA,
                           MappingProxyType(record if record is not None else _pass_run()))
    return OnnxReference("/bundle", proof, PreprocessConfig(size=64), ort, threads)


def test_the_reference_fingerprint_keys_file_content_and_onnx_runtime_version() -> None:
    """B92, B93: the output cache is keyed by the file's full sha256 and the ONNX Runtime version. Without
    either, outputs cached from another file content or another ONNX Runtime were reused as the reference."""
    assert _reference().fingerprint == f"onnx:model.onnx@{SHA}|onnxruntime 1.17.0|ort-cpu"
    assert _reference(ort="1.18.0").fingerprint != _reference().fingerprint


def test_the_reference_records_its_full_sha256_and_excludes_itself() -> None:
    """B94, B95: each verdict records the reference file's full sha256 (auto re-checks the chain with it), and
    the FP32 file on ort-cpu is never a candidate (it would pass against itself)."""
    ref = _reference()
    assert ref.reference_sha256 == SHA and ref.reference_file == "model.onnx"
    assert ref.reference_source == f"onnx:model.onnx@{SHA[:12]} on ort-cpu"
    ((excluded),) = ref.excluded_candidates
    assert (excluded.file, excluded.backend, excluded.reason) == ("model.onnx", "ort-cpu", "the reference itself")


def test_describe_counts_threads_and_images_as_written() -> None:
    """B96, B99: '1 thread' / '4 threads'; a record without an image count says '?' rather than 0 images."""
    one = _reference(threads=1).describe()
    assert "CPU, 1 thread, which passed on ort-cpu against PyTorch on 300 images" in one
    assert ", 4 threads, " in _reference(threads=4).describe()
    run = _pass_run()
    del run["n_images"]
    assert "against PyTorch on ? images" in _reference(run).describe()


def test_from_bundle_keeps_the_requested_threads(tmp_path: Path) -> None:
    """B87, B88: ``--threads`` must reach the reference's ONNX Runtime session (dropped, it took every core,
    which on a device shared with screening starves the decoders)."""
    bundle, _ = _bundle(tmp_path / "b")
    ref = OnnxReference.from_bundle(bundle, 3)
    assert ref.threads == 3 and ", 3 threads, " in ref.describe()


@pytest.mark.parametrize(("machine", "said"), [
    ({"onnxruntime": "0.9.0"}, ["onnxruntime 0.9.0 there, 1.17.0 here"]),  # no arch recorded: not compared
    ("x86_64", []),  # not a mapping (a damaged record): nothing to compare, no crash
])
def test_the_runtime_warning_compares_only_what_was_recorded(machine: Any, said: list[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """B90, B97: a proving record that lacks a field, or whose machine is not a mapping, must not crash the
    reference (it did, with KeyError / AttributeError); what is recorded is still compared."""
    with caplog.at_level(logging.WARNING, logger="uopsl"):
        _reference(_pass_run(machine=machine)).warn_if_another_runtime()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(said)
    for m, s in zip(messages, said):
        assert s in m and "arch" not in m.split("(")[1]


def test_an_unknown_local_architecture_is_not_reported_as_a_difference(monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """B91: where this machine's architecture cannot be read (platform.machine() is ''), there is nothing to
    compare: no warning that the reference runs on ' ' here."""
    monkeypatch.setattr("uopsl.export.onnx_reference.platform.machine", lambda: "")
    with caplog.at_level(logging.WARNING, logger="uopsl"):
        _reference(_pass_run(machine={"arch": "x86_64", "onnxruntime": "1.17.0"})).warn_if_another_runtime()
    assert not caplog.records


@pytest.mark.parametrize("damage", ["missing", "directory"])
def test_an_unreadable_reference_file_is_a_bundle_error_naming_it(tmp_path: Path, damage: str) -> None:
    """B83, B84: the FP32 file missing or not a file is a BundleError ('cannot be read ... copy the bundle
    again'), not a raw FileNotFoundError / IsADirectoryError traceback."""
    bundle, _ = _bundle(tmp_path / "b")
    (bundle / "model.onnx").unlink()
    if damage == "directory":
        (bundle / "model.onnx").mkdir()
    with pytest.raises(BundleError, match=r"model\.onnx: the FP32 reference file cannot be read .*copy the bundle"):
        check_reference_chain(bundle)


def test_missing_onnxruntime_is_a_missing_dependency_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """B100: the error class is MissingDependencyError (an ImportError: callers that offer another backend
    catch it), with the install hint."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        require_onnxruntime()


def test_the_chain_is_judged_on_the_manifest_given_not_a_fresh_read(tmp_path: Path) -> None:
    """B85: ``validate --onnx-reference`` on a device that trusts signing keys passes the signature-verified
    manifest; the chain must be judged on that one. Re-reading manifest.json from disk judged whatever file
    lies there now (here: one without the PASS record, so a valid signed bundle was refused)."""
    bundle, signed = _bundle(tmp_path / "b")
    _, unrecorded = _bundle(tmp_path / "plain", record=False)
    write_manifest(bundle, unrecorded)  # the disk now holds a manifest without the record
    proof = check_reference_chain(bundle, signed)
    assert proof.entry.path == "model.onnx" and proof.record["n_images"] == 300
    with pytest.raises(ConfigError, match="model.onnx has no parity record"):
        check_reference_chain(bundle)
