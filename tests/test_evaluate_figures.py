"""What `uopsl evaluate` reports for publication, from a clinical researcher's review."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime import metrics
from uopsl.train.evaluate import _roc_series, choose_operating_points, evaluate, referral_figures


def _refer_by_hand(p: np.ndarray, thr: list[float], ref: list[bool]) -> np.ndarray:
    """Manifest.decide's rule (any_referable): float32 probability >= float32 threshold, any referable class."""
    return np.array([any(p[i, k] >= np.float32(thr[k]) for k in range(len(thr)) if ref[k]) for i in range(len(p))])


def test_eval_json_states_the_referral_call_the_device_makes(tmp_path: Path) -> None:
    """Per-class figures only: a paper quoting their specificity (about 0.65) overstated the device's referral,
    which refers on any referable class (0.28 in the review). The referral figures are now in eval.json."""
    rng = np.random.default_rng(3)
    n = 300
    t = (rng.random((n, 3)) < [0.5, 0.2, 0.15]).astype(np.float64)
    p = np.clip(0.35 * t + rng.random((n, 3)) * 0.65, 0, 1).astype(np.float32)
    thr, ref = [0.6, 0.3, 0.25], [False, True, True]
    rep = evaluate(p, t, thr, ["normal", "dr", "dme"], tmp_path, n_boot=50, referable=ref)
    r = rep["referral"]
    called = _refer_by_hand(p, thr, ref)
    truth = t[:, 1:].max(axis=1) > 0.5
    assert r["applicable"] and r["rule"] == "any_referable" and r["referable_classes"] == ["dr", "dme"]
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (int((called & truth).sum()), int((called & ~truth).sum()),
                                                    int((~called & ~truth).sum()), int((~called & truth).sum()))
    assert r["referred"] == int(called.sum())
    assert r["specificity"]["estimate"] == pytest.approx((~called & ~truth).sum() / (~truth).sum())
    per_class_spec = [c["specificity"]["estimate"] for c in rep["classes"][1:]]
    assert r["specificity"]["estimate"] < min(per_class_spec)  # what the per-class table alone hides
    assert r["sensitivity"]["method"] == "wilson score" and r["npv"]["low"] <= r["npv"]["estimate"]
    # A model without referable classes refers nothing, and says so.
    assert referral_figures(p, t, thr, [False] * 3, ["normal", "dr", "dme"])["applicable"] is False
    assert (tmp_path / "roc.png").is_file()


def test_a_threshold_exactly_at_a_score_refers_as_the_device_does() -> None:
    p = np.array([[0.7], [np.nextafter(np.float32(0.7), np.float32(0))]], np.float32)
    r = referral_figures(p, np.array([[1.0], [1.0]]), [0.7], [True], ["dr"], n_boot=0)
    assert (r["tp"], r["fn"]) == (1, 1)  # float32(0.7) >= 0.7 in float32, one step below is not


def test_a_referable_threshold_that_separates_nothing_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """A referable class whose validation scores do not rank positives first got a 'validated' threshold with
    specificity 0 and no word; non-referable classes already warned and fell back."""
    y = np.array([[1], [1], [0], [0], [1], [0]], np.float64)
    flat = np.full((6, 1), 0.4, np.float32)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        (op,) = choose_operating_points(y, flat, [True], 0.9, names=["dr"])
    assert op.method == "target_sensitivity" and op.specificity == 0.0
    assert "not a useful operating point" in op.note and "not a useful operating point" in caplog.text
    caplog.clear()
    good = np.array([[0.9], [0.8], [0.1], [0.2], [0.7], [0.3]], np.float32)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        (op,) = choose_operating_points(y, good, [True], 0.9, names=["dr"])
    assert "not a useful" not in op.note and "not a useful" not in caplog.text


def test_the_roc_plot_marks_each_operating_point_and_the_auc_interval() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((80, 2)) < 0.4).astype(np.float64)
    s = np.clip(0.4 * y + rng.random((80, 2)) * 0.6, 0, 1)
    rep = metrics.classification_report(y, s, [0.5, 0.5], ["a", "b"], n_boot=50, seed=0, include_curves=True)
    curves = {n: metrics.roc_curve(y[:, k], s[:, k]) for k, n in enumerate(("a", "b"))}
    series = _roc_series(curves, rep)
    for it, row in zip(series, rep["classes"]):
        assert it.operating_point == pytest.approx((1 - row["specificity"]["estimate"], row["sensitivity"]["estimate"]))
        assert it.legend().startswith(f"{row['name']} (AUC {row['auc']['estimate']:.3f}, 95 % CI ")
    assert "+inf" in rep["roc_thresholds_note"] and rep["roc"]["a"]["thresholds"][0] is None
    json.dumps(rep)  # strict JSON
