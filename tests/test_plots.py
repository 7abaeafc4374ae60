"""uopsl.runtime.plots: ROC PNGs drawn with OpenCV."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from uopsl.runtime import metrics as M
from uopsl.runtime import plots as P
from uopsl.runtime.errors import ConfigError


def _curve(seed: int, shift: float, n: int = 200) -> M.RocCurve:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return M.roc_curve(y, rng.normal(size=n) + shift * y)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"{path} is not a readable PNG"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _has_colour(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_per_class_plot_from_mapping(tmp_path: Path) -> None:
    curves = {"normal": _curve(0, 1.0), "dme": _curve(1, 2.5)}
    out = P.roc_plot(curves, tmp_path / "sub" / "roc.png", title="Evaluation")
    img = _read_rgb(out)
    assert img.shape[0] > 640 and img.shape[1] > 640
    assert [p.name for p in out.parent.iterdir()] == ["roc.png"]  # atomic: no temp file left
    for colour in P.PALETTE[:2]:
        assert _has_colour(img, colour) > 200  # each curve is drawn in its palette colour
    assert _has_colour(img, P.PALETTE[2]) == 0


def test_perfect_curve_runs_through_top_left_corner() -> None:
    perfect = M.roc_curve([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    img = P.render_roc([P.RocSeries("perfect", perfect, (230, 0, 0))], size=320)
    red = (img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)
    ys, xs = np.nonzero(red)
    # the curve is the left edge then the top edge of the plot area: an L through the top-left corner
    x_left, y_top = np.percentile(xs, 2), np.percentile(ys, 2)
    assert ((xs <= x_left + 3) & (ys >= y_top + 100)).sum() > 50  # vertical arm
    assert ((ys <= y_top + 3) & (xs >= x_left + 100)).sum() > 50  # horizontal arm


def test_overlay_dashed_candidate_and_operating_points(tmp_path: Path) -> None:
    ref = {"referable_dr": _curve(2, 1.5)}
    cand = {"referable_dr": _curve(2, 1.3)}
    series = P.overlay_series(
        ref, cand, reference_label="PyTorch", candidate_label="ORT INT8",
        reference_points={"referable_dr": (0.2, 0.9)}, candidate_points={"referable_dr": (0.25, 0.9)},
    )
    assert [s.label for s in series] == ["PyTorch", "ORT INT8"] and [s.dashed for s in series] == [False, True]
    assert series[0].color == series[1].color
    assert series[1].legend() == f"ORT INT8 (AUC {cand['referable_dr'].auc:.3f})"
    solid = P.render_roc([series[0]])
    dashed = P.render_roc([P.RocSeries("x", ref["referable_dr"], series[0].color, dashed=True)])
    assert _has_colour(dashed, series[0].color) < 0.85 * _has_colour(solid, series[0].color)  # gaps
    path = P.roc_plot(series, tmp_path / "parity_roc.png", title="Parity", subtitle="synthetic, 200 images")
    assert _read_rgb(path).shape == P.render_roc(series, title="Parity", subtitle="synthetic, 200 images").shape
    two = P.overlay_series({"a": ref["referable_dr"], "b": ref["referable_dr"]}, {"a": cand["referable_dr"],
                                                                                   "b": cand["referable_dr"]})
    assert [s.label for s in two] == ["a reference", "a candidate", "b reference", "b candidate"]


def test_rendering_is_deterministic_and_undefined_curve_is_listed_not_drawn() -> None:
    undefined = M.roc_curve(np.zeros(10), np.arange(10.0))
    series = [P.RocSeries("rare", undefined, (230, 0, 0)), P.RocSeries("ok", _curve(3, 1.0), auc_text="AUC 0.80 [0.7, 0.9]")]
    assert series[0].legend() == "rare (AUC n/a: one class only)"
    assert series[1].legend() == "ok (AUC 0.80 [0.7, 0.9])"
    a, b = P.render_roc(series), P.render_roc(series)
    np.testing.assert_array_equal(a, b)
    assert _has_colour(a, (230, 0, 0), tol=40) == 0


def test_long_labels_and_many_classes_fit() -> None:
    curves = {f"class_{i}_with_a_rather_long_descriptive_name": _curve(i, 0.3 * i) for i in range(12)}
    img = P.render_roc(curves, title="many", size=320)
    assert img.dtype == np.uint8 and img.ndim == 3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: P.render_roc([]), "nothing to plot"),
        (lambda: P.render_roc({"a": _curve(0, 1)}, size=100), "size"),
        (lambda: P.render_roc(["not a series"]), "RocSeries"),  # type: ignore[list-item]
        (lambda: P.overlay_series({"a": _curve(0, 1)}, {"b": _curve(0, 1)}), "same classes"),
    ],
)
def test_bad_arguments(call, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        call()


def test_plots_import_no_torch() -> None:
    code = "import sys, uopsl.runtime.plots; bad = [m for m in ('torch', 'onnx', 'matplotlib') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
