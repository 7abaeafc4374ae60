"""uopsl.runtime.metrics against hand-computed values (what scikit-learn returns) and properties."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest

from uopsl.runtime import metrics as M
from uopsl.runtime.errors import ConfigError

# scikit-learn's roc_curve/roc_auc_score documentation example.
Y4 = np.array([0, 0, 1, 1])
S4 = np.array([0.1, 0.4, 0.35, 0.8])


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC by its definition over all positive/negative pairs (ties one half)."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


# --------------------------------------------------------------------------- ROC / AUC


def test_roc_curve_matches_sklearn_example() -> None:
    c = M.roc_curve(Y4, S4)
    np.testing.assert_allclose(c.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(c.tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(c.thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    assert c.auc == 0.75 and c.defined and c.reason == ""
    assert M.roc_auc(Y4, S4) == 0.75


def test_ties_count_one_half() -> None:
    # pairs (pos, neg): (.5,.5) tie -> .5, (.5,.2) 1, (.9,.5) 1, (.9,.2) 1  => 3.5 / 4
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9])
    assert M.roc_auc(y, s) == pytest.approx(0.875, abs=1e-15)
    c = M.roc_curve(y, s)
    # the tied group moves the curve diagonally: (0, .5) -> (.5, 1)
    np.testing.assert_allclose(c.fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(c.tpr, [0, 0.5, 1, 1])


def test_auc_equals_pairwise_definition_and_trapezoid_with_many_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 12, 300).astype(float)  # heavy ties
    c = M.roc_curve(y, s)
    assert c.auc == pytest.approx(_pairwise_auc(y, s), abs=1e-12)
    assert _trapezoid(c.fpr, c.tpr) == pytest.approx(c.auc, abs=1e-12)


def test_auc_properties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20000)
    s = rng.normal(size=y.size) + y
    assert M.roc_auc(y, y.astype(float)) == 1.0
    assert M.roc_auc(y, -y.astype(float)) == 0.0
    assert abs(M.roc_auc(y, rng.random(y.size)) - 0.5) < 0.02  # 5 standard errors at N = 20000
    a = M.roc_auc(y, s)
    for transformed in (np.exp(s), 3 * s + 1, np.argsort(np.argsort(s)).astype(float)):
        assert M.roc_auc(y, transformed) == pytest.approx(a, abs=1e-12)
    assert M.roc_auc(1 - y, s) == pytest.approx(1 - a, abs=1e-12)


def test_float32_scores_accepted_and_bool_labels() -> None:
    assert M.roc_auc(Y4.astype(bool), S4.astype(np.float32)) == 0.75


def test_one_class_only_is_nan_with_reason() -> None:
    c = M.roc_curve(np.zeros(5), np.arange(5.0))
    assert math.isnan(c.auc) and not c.defined
    assert "0 positives, 5 negatives" in c.reason
    assert np.isnan(c.tpr).all() and c.fpr[-1] == 1.0
    assert math.isnan(M.roc_auc(np.ones(3), [0.1, 0.2, 0.3]))


def test_per_class_auc_multilabel_and_multiclass() -> None:
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3], [0.1, 0.7]])
    multi_hot = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    np.testing.assert_allclose(M.per_class_auc(multi_hot, s), [1.0, M.roc_auc([0, 1, 1, 1], s[:, 1])])
    idx = np.array([0, 1, 0, 1])
    np.testing.assert_allclose(M.per_class_auc(idx, s), [1.0, 1.0])
    one_class = M.per_class_auc(np.array([[1, 0], [1, 1], [1, 0], [1, 1]]), s)
    assert math.isnan(one_class[0]) and one_class[1] == 1.0  # pos .8 .7 above neg .1 .3
    curves = M.per_class_roc(idx, s)
    assert [c.auc for c in curves] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.roc_auc(np.zeros((3, 2)), np.zeros(3)), "1-D"),
        (lambda: M.roc_auc([0, 1, 1], [0.1, 0.2]), r"shape \(3,\)"),
        (lambda: M.roc_auc([0, 1, 2], [0.1, 0.2, 0.3]), "only 0 and 1"),
        (lambda: M.roc_auc([0, 1], [0.1, np.nan]), "non-finite"),
        (lambda: M.roc_auc([], []), "non-empty"),
        (lambda: M.per_class_auc([0, 3], np.zeros((2, 3))), "class index 3"),
        (lambda: M.per_class_auc(np.zeros((2, 2)), np.zeros((2, 3))), "2 columns"),
        (lambda: M.per_class_auc([0, 1, 1], np.zeros((2, 2))), "3 cases"),
        (lambda: M.confusion_matrix([0, 1], [0, 1, 1]), "must match"),
        (lambda: M.confusion_matrix([0, 1.5], [0, 1]), "integer"),
        (lambda: M.rates_at_threshold([0, 1], [0.2, 0.4], "high"), "number"),
    ],
)
def test_bad_input_raises_config_error(call, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        call()


# --------------------------------------------------------------------------- operating points


def test_rates_at_threshold_by_hand() -> None:
    r = M.rates_at_threshold(Y4, S4, 0.35)  # positive: .4, .35, .8
    assert (r.tp, r.fp, r.tn, r.fn) == (2, 1, 1, 0)
    assert (r.sensitivity, r.specificity, r.npv) == (1.0, 0.5, 1.0)
    assert r.ppv == pytest.approx(2 / 3) and r.f1 == pytest.approx(0.8) and r.balanced_accuracy == 0.75
    none_positive = M.rates_at_threshold(Y4, S4, 0.9)
    assert math.isnan(none_positive.ppv) and none_positive.sensitivity == 0.0


def test_threshold_for_sensitivity_highest_threshold_and_ties() -> None:
    # positives .9 .7 .7 .2 ; negatives .8 .7 .1
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.7, 0.7, 0.2, 0.8, 0.7, 0.1], np.float32)
    op = M.threshold_for_sensitivity(y, s, 0.25)
    assert (op.threshold, op.sensitivity, op.specificity) == (pytest.approx(0.9), 0.25, 1.0)
    # 2 of 4 needed; the tie at .7 cannot be split, so sensitivity jumps to 3/4
    # and the negative tied at .7 becomes a false positive.
    op = M.threshold_for_sensitivity(y, s, 0.5)
    assert op.threshold == pytest.approx(0.7) and op.sensitivity == 0.75
    assert op.specificity == pytest.approx(1 / 3)
    op = M.threshold_for_sensitivity(y, s, 1.0)
    assert op.threshold == pytest.approx(0.2) and op.sensitivity == 1.0


def test_threshold_for_sensitivity_is_exact_on_float32_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = (rng.random(500) + 0.3 * y).astype(np.float32)
    for target in (0.8, 0.9, 0.95):
        op = M.threshold_for_sensitivity(y, s, target)
        assert np.float32(op.threshold) == op.threshold  # representable in the bundle's float32 thresholds
        again = M.rates_at_threshold(y, s, np.float32(op.threshold))
        assert again.sensitivity == op.sensitivity >= target
        # the next higher candidate misses the target (highest threshold rule)
        higher = s[(y == 1) & (s > op.threshold)]
        if higher.size:
            assert M.rates_at_threshold(y, s, higher.min()).sensitivity < target


def test_threshold_for_sensitivity_exact_fraction() -> None:
    y = np.r_[np.ones(10), np.zeros(5)]
    s = np.r_[np.arange(10, 0, -1) / 10, np.zeros(5)]
    assert M.threshold_for_sensitivity(y, s, 0.9).threshold == pytest.approx(0.2)  # 9 of 10 exactly


def test_threshold_for_sensitivity_undefined_and_bad_target() -> None:
    op = M.threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    assert math.isnan(op.threshold) and "no positive" in op.note
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="target sensitivity"):
            M.threshold_for_sensitivity(Y4, S4, bad)


# --------------------------------------------------------------------------- agreement


YT = np.array([0, 1, 2, 2, 1, 0])
YP = np.array([0, 2, 2, 2, 1, 1])


def test_confusion_f1_balanced_accuracy_kappa_by_hand() -> None:
    np.testing.assert_array_equal(M.confusion_matrix(YT, YP), [[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    np.testing.assert_array_equal(M.confusion_matrix([0, 0], [0, 0], n_classes=3), [[2, 0, 0], [0, 0, 0], [0, 0, 0]])
    # F1: class 0 2/3, class 1 1/2, class 2 4/5
    assert M.macro_f1(YT, YP) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert M.balanced_accuracy(YT, YP) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # observed weighted disagreement 2, expected 8  => 1 - 2/8
    assert M.quadratic_weighted_kappa(YT, YP) == pytest.approx(0.75)


def test_macro_f1_leaves_out_classes_absent_from_both() -> None:
    assert M.macro_f1([0, 0, 1], [0, 0, 1], n_classes=5) == 1.0


def test_multilabel_macro_f1_by_hand() -> None:
    t = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    p = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    # class 0: tp1 fn1 -> 2/3; class 1: tp2 fp1 -> 4/5; class 2: undefined, left out
    assert M.macro_f1(t, p) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_kappa_properties() -> None:
    rng = np.random.default_rng(2)
    g = rng.integers(0, 5, 200)
    assert M.quadratic_weighted_kappa(g, g) == pytest.approx(1.0)
    assert math.isnan(M.quadratic_weighted_kappa([1, 1, 1], [1, 1, 1]))
    assert abs(M.quadratic_weighted_kappa(g, rng.integers(0, 5, 200))) < 0.2
    assert M.quadratic_weighted_kappa(g, 4 - g) < -0.9  # systematic reversal
    assert M.quadratic_weighted_kappa(g, np.clip(g + 1, 0, 4)) > M.quadratic_weighted_kappa(g, np.clip(g + 3, 0, 4))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_weights_stratified_keep_class_counts_and_are_seeded() -> None:
    y = np.array([0] * 7 + [1] * 3)
    blocks = list(M.bootstrap_weights(10, n_boot=50, seed=4, strata=y))
    w = np.concatenate(blocks)
    assert w.shape == (50, 10)
    np.testing.assert_array_equal(w[:, y == 1].sum(1), 3)
    np.testing.assert_array_equal(w[:, y == 0].sum(1), 7)
    again = np.concatenate(list(M.bootstrap_weights(10, n_boot=50, seed=4, strata=y)))
    np.testing.assert_array_equal(w, again)
    other = np.concatenate(list(M.bootstrap_weights(10, n_boot=50, seed=5, strata=y)))
    assert not np.array_equal(w, other)
    free = np.concatenate(list(M.bootstrap_weights(10, n_boot=200, seed=4)))
    np.testing.assert_array_equal(free.sum(1), 10)
    assert len(set(free[:, y == 1].sum(1))) > 1


def test_auc_interval_agrees_with_delong_standard_error() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 600)
    s = rng.normal(size=600) + 1.2 * y
    iv = M.auc_ci(y, s, n_boot=2000, seed=0)
    assert iv.estimate == M.roc_auc(y, s) and iv.low < iv.estimate < iv.high and iv.n_valid == 2000
    # Against constant scores (AUC 0.5, zero variance) DeLong's se is that of AUC(s) alone.
    d = M.delong_test(y, s, np.zeros(600))
    width = 2 * 1.959964 * d.se
    assert (iv.high - iv.low) == pytest.approx(width, rel=0.15)


def test_bootstrap_ci_generic_and_n_boot_zero() -> None:
    flips = np.array([0, 0, 1, 0, 0, 0, 0, 1, 0, 0], float)
    iv = M.bootstrap_ci(lambda w: w @ flips / w.sum(1), 10, n_boot=500, seed=0)
    assert iv.estimate == pytest.approx(0.2) and 0.0 <= iv.low < 0.2 < iv.high <= 0.6
    assert iv == M.bootstrap_ci(lambda w: w @ flips / w.sum(1), 10, n_boot=500, seed=0)
    nob = M.bootstrap_ci(lambda w: w @ flips / w.sum(1), 10, n_boot=0)
    assert nob.estimate == pytest.approx(0.2) and math.isnan(nob.low) and nob.n_valid == 0
    with pytest.raises(ConfigError, match="n_boot"):
        M.bootstrap_ci(lambda w: w.sum(1), 10, n_boot=-1)
    with pytest.raises(ConfigError, match="alpha"):
        M.bootstrap_ci(lambda w: w.sum(1), 10, alpha=1.5)
    with pytest.raises(ConfigError, match="strata"):
        M.bootstrap_ci(lambda w: w.sum(1), 10, strata=np.zeros(3))


def test_unstratified_bootstrap_drops_undefined_replicates() -> None:
    y = np.array([1] + [0] * 9)
    s = np.linspace(0, 1, 10)
    iv = M.auc_ci(y, s, n_boot=300, seed=0, stratified=False)
    assert iv.estimate == 0.0 and 0 < iv.n_valid < 300  # resamples without the one positive are undefined


def test_paired_auc_difference() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 400)
    ref = rng.normal(size=400) + y
    same = M.paired_auc_difference(y, ref, np.exp(ref), n_boot=300, seed=0)  # monotone: identical decisions
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    worse = ref + rng.normal(scale=2.0, size=400)
    d = M.paired_auc_difference(y, ref, worse, n_boot=1000, seed=0)
    assert d.estimate == pytest.approx(M.roc_auc(y, worse) - M.roc_auc(y, ref))
    assert d.high < 0  # a clear loss is detected
    # paired is much tighter than two independent intervals
    wa = M.auc_ci(y, ref, n_boot=1000).high - M.auc_ci(y, ref, n_boot=1000).low
    mild = M.paired_auc_difference(y, ref, ref + rng.normal(scale=0.05, size=400), n_boot=1000)
    assert mild.high - mild.low < wa / 4


# --------------------------------------------------------------------------- DeLong


def _delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong et al. 1988 directly from the pairwise kernel (O(mn))."""
    v10, v01 = [], []
    for s in (a, b):
        d = s[y == 1][:, None] - s[y == 0][None, :]
        psi = (d > 0) + 0.5 * (d == 0)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10, s01 = np.cov(v10), np.cov(v01)
    cov = s10 / len(v10[0]) + s01 / len(v01[0])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return float(v10[1].mean() - v10[0].mean()), float(math.sqrt(var))


def test_delong_matches_definition_with_ties() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    a = np.round(rng.normal(size=120) + y, 1)
    b = np.round(rng.normal(size=120) + 0.5 * y, 1)
    r = M.delong_test(y, a, b)
    diff, se = _delong_by_definition(y, a, b)
    assert r.difference == pytest.approx(diff, abs=1e-12) and r.se == pytest.approx(se, rel=1e-10)
    assert r.auc_a == pytest.approx(M.roc_auc(y, a)) and r.auc_b == pytest.approx(M.roc_auc(y, b))
    assert r.z == pytest.approx(diff / se) and r.p_value == pytest.approx(math.erfc(abs(diff / se) / math.sqrt(2)))


def test_delong_edge_cases() -> None:
    same = M.delong_test(Y4, S4, S4)
    assert (same.se, same.z, same.p_value) == (0.0, 0.0, 1.0)
    few = M.delong_test([1, 0, 0], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3])
    assert math.isnan(few.p_value) and ">= 2 cases" in few.note


# --------------------------------------------------------------------------- report


def _toy_multiclass(n: int = 300, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, (p / p.sum(1, keepdims=True)).astype(np.float32)


def test_classification_report_multiclass_matches_point_functions() -> None:
    y, p = _toy_multiclass()
    rep = M.classification_report(y, p, [0.4, 0.5, 0.3], ["normal", "npdr", "pdr"], n_boot=200, seed=1, ordinal=True)
    json.dumps(rep, allow_nan=False)
    assert rep["task"] == "multiclass" and rep["n_samples"] == 300
    assert rep["bootstrap"]["strata"].startswith("class; F1, PPV, NPV, accuracy and kappa: none")
    pred = p.argmax(1)
    assert rep["confusion_matrix"]["matrix"] == M.confusion_matrix(y, pred, 3).tolist()
    assert rep["macro"]["f1"]["estimate"] == pytest.approx(M.macro_f1(y, pred, 3))
    assert rep["macro"]["balanced_accuracy"]["estimate"] == pytest.approx(M.balanced_accuracy(y, pred, 3))
    assert rep["macro"]["quadratic_kappa"]["estimate"] == pytest.approx(M.quadratic_weighted_kappa(y, pred, 3))
    aucs = M.per_class_auc(y, p)
    assert rep["macro"]["auc"]["estimate"] == pytest.approx(aucs.mean())
    for j, (c, t) in enumerate(zip(rep["classes"], [0.4, 0.5, 0.3])):
        r = M.rates_at_threshold(y == j, p[:, j], t)
        assert c["auc"]["estimate"] == pytest.approx(aucs[j])
        assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (r.tp, r.fp, r.tn, r.fn)
        for m in ("sensitivity", "specificity", "ppv", "npv", "f1"):
            assert c[m]["estimate"] == pytest.approx(getattr(r, m))
            assert c[m]["low"] <= c[m]["estimate"] <= c[m]["high"]
        assert c["notes"] == []
    again = M.classification_report(y, p, [0.4, 0.5, 0.3], ["normal", "npdr", "pdr"], n_boot=200, seed=1, ordinal=True)
    assert again == rep


def test_classification_report_multilabel_undefined_class_is_null_with_note() -> None:
    rng = np.random.default_rng(8)
    y = np.stack([rng.integers(0, 2, 80), np.zeros(80, int)], axis=1)  # class 'rare' never positive
    s = rng.random((80, 2))
    rep = M.classification_report(y, s, 0.5, ["dme", "rare"], n_boot=100, seed=0, include_curves=True)
    text = json.dumps(rep, allow_nan=False)
    rare = rep["classes"][1]
    assert rare["auc"]["estimate"] is None and rare["sensitivity"]["estimate"] is None
    assert any("auc undefined" in n and "0 positives" in n for n in rare["notes"])
    assert any(n.startswith("rare: ") for n in rep["notes"])
    assert rep["macro"]["auc"]["estimate"] == pytest.approx(M.roc_auc(y[:, 0], s[:, 0]))
    # Per-class figures are stratified by the class's own label, never by the joint label pattern (review finding 6).
    assert rep["confusion_matrix"] is None
    assert rep["bootstrap"]["strata"] == ("per class: the class's own label; macro: none; F1, PPV, NPV, "
                                         "accuracy and kappa: none (they move with the class mix)")
    assert "quadratic_kappa" not in rep["macro"]
    assert rep["roc"]["dme"]["fpr"][0] == 0.0 and "Infinity" not in text


def test_classification_report_dataclass() -> None:
    y, p = _toy_multiclass(60, 2)
    iv = M.Interval(0.5, 0.4, 0.6, 10, 10)
    cr = M.ClassReport("x", 1, 2, 0.5, 1, 0, 2, 0, iv, iv, iv, iv, iv, iv, ("n",))
    d = cr.to_dict()
    assert d["auc"] == {"estimate": 0.5, "low": 0.4, "high": 0.6, "n_valid": 10, "method": "percentile bootstrap"}
    assert d["notes"] == ["n"]
    with pytest.raises(AttributeError):
        cr.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_names": ["a"]}, "class_names must be 2"),
        ({"class_names": ["a", "a"]}, "unique"),
        ({"thresholds": [0.5, 0.5, 0.5]}, "thresholds"),
        ({"thresholds": [0.5, float("nan")]}, "thresholds"),
        ({"ordinal": True, "multihot": True}, "ordinal"),
        ({"scores": np.zeros(10)}, r"\(N, K\)"),
        ({"n_boot": -3}, "n_boot"),
    ],
)
def test_classification_report_bad_arguments(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    y = np.array([0, 1] * 5)
    args = {"thresholds": 0.5, "class_names": ["a", "b"], "scores": np.random.default_rng(0).random((10, 2))}
    if kwargs.pop("multihot", False):
        y = np.eye(2, dtype=int)[y]
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        M.classification_report(y, **args)


def test_runtime_metrics_imports_no_torch() -> None:
    code = (
        "import sys, uopsl.runtime.metrics; "
        "bad = [m for m in ('torch', 'onnx', 'matplotlib', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_binary_as_two_classes_is_consistent() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 50)
    s1 = rng.random(50)
    aucs = M.per_class_auc(y, np.stack([1 - s1, s1], 1))
    assert aucs[0] == pytest.approx(aucs[1]) == pytest.approx(M.roc_auc(y, s1))
    pred = (s1 >= 0.5).astype(int)
    assert M.balanced_accuracy(y, pred) == pytest.approx(M.rates_at_threshold(y, s1, 0.5).balanced_accuracy)


def test_every_macro_figure_averages_the_evaluated_classes_only() -> None:
    """A class without positives in the data (review, session 13) pulled macro F1 towards 0 and added its
    specificity, while the report said the macro figures covered the other classes."""
    rng = np.random.default_rng(0)
    n = 60
    y = np.zeros((n, 3), np.int64)
    y[:30, 0] = 1
    y[30:, 1] = 1  # class 2 ("b") has no positive image
    s = np.clip(y * 0.5 + rng.uniform(0, 0.7, (n, 3)), 0, 1)  # some false positives in every class, b's too
    rep = M.classification_report(y, s, [0.5, 0.5, 0.5], ["normal", "a", "b"], n_boot=0)
    per = {c["name"]: c for c in rep["classes"]}
    for m in ("f1", "specificity", "sensitivity", "auc"):
        expected = np.mean([per[c][m]["estimate"] for c in ("normal", "a")])
        assert rep["macro"][m]["estimate"] == pytest.approx(expected), m


def test_an_auc_from_one_positive_patient_has_no_interval_and_says_why() -> None:
    """Review (session 13): TVHL's pdr (2 photographs of one patient) got AUC 0.213 [0.163, 0.266]: every
    stratified resample kept that patient, so the interval showed only the negatives' spread."""
    rng = np.random.default_rng(1)
    n = 40
    y = np.zeros((n, 2), np.int64)
    y[:, 0] = 1
    y[:2, 0], y[:2, 1] = 0, 1  # class "pdr": two images, one patient
    s = rng.uniform(0, 1, (n, 2))
    patients = np.array([0, 0] + list(range(1, n - 1)))
    rep = M.classification_report(y, s, [0.5, 0.5], ["normal", "pdr"], n_boot=200, clusters=patients)
    pdr = rep["classes"][1]
    assert pdr["auc"]["estimate"] is not None and pdr["auc"]["low"] is None and pdr["auc"]["high"] is None
    assert any("auc: interval undefined: the positive cases come from one patient" in x for x in pdr["notes"])
    # Without patients, two positive images are two units: the interval is estimated.
    rep = M.classification_report(y, s, [0.5, 0.5], ["normal", "pdr"], n_boot=200)
    assert rep["classes"][1]["auc"]["low"] is not None
    one = y.copy()
    one[1, 1], one[1, 0] = 0, 1  # one positive image
    assert M.classification_report(one, s, [0.5, 0.5], ["normal", "pdr"], n_boot=200)["classes"][1]["auc"]["low"] is None


def test_mixed_patients_rule_is_stated_once_in_the_report_not_logged_per_figure(caplog) -> None:
    """Session 34: the demo's `validate` printed the same INFO line on mixed clusters ~25 times (once per
    stratified figure per file); the rule now sits in the report's bootstrap block, the counts at DEBUG."""
    rng = np.random.default_rng(4)
    n = 60
    y = np.zeros((n, 2), np.int64)
    y[np.arange(n), rng.integers(0, 2, n)] = 1
    s = rng.uniform(0, 1, (n, 2))
    patients = np.repeat(np.arange(n // 2), 2)  # two eyes a patient; some with one eye of each class
    with caplog.at_level(logging.INFO, logger="uopsl.runtime.metrics"):
        rep = M.classification_report(y, s, [0.5, 0.5], ["normal", "dr"], n_boot=50, clusters=patients)
    assert rep["bootstrap"]["mixed_clusters"] == M.MIXED_CLUSTERS
    assert not [r for r in caplog.records if "more than one stratum" in r.getMessage()]
    with caplog.at_level(logging.DEBUG, logger="uopsl.runtime.metrics"):
        M.classification_report(y, s, [0.5, 0.5], ["normal", "dr"], n_boot=50, clusters=patients)
    assert [r for r in caplog.records if "more than one stratum" in r.getMessage() and r.levelno == logging.DEBUG]
    # Without patients there are no clusters to mix, and the block says nothing about them.
    assert "mixed_clusters" not in M.classification_report(y, s, [0.5, 0.5], ["normal", "dr"], n_boot=50)["bootstrap"]


def test_accuracy_with_patients_known_is_not_surer_than_without() -> None:
    """Review (session 13): the class-stratified bootstrap froze the class mix, so with patients known the
    accuracy interval of a softmax head came out narrower than the Wilson interval without them."""
    rng = np.random.default_rng(3)
    n = 150
    patients = np.arange(n) // 2  # two photographs of each patient, of the patient's class
    y = rng.choice(3, n // 2, p=[0.5, 0.3, 0.2])[patients]
    right = rng.uniform(0, 1, n) < np.array([0.95, 0.6, 0.2])[y]  # how often each class is called right differs
    s = rng.dirichlet(np.ones(3), n) * 0.1
    called = np.where(right, y, (y + 1) % 3)
    s[np.arange(n), called] += 1.0
    plain = M.classification_report(y, s, [0.5] * 3, ["a", "b", "c"], n_boot=0)["macro"]["accuracy"]
    grouped = M.classification_report(y, s, [0.5] * 3, ["a", "b", "c"], n_boot=400, seed=1,
                                      clusters=patients)["macro"]["accuracy"]
    assert grouped["estimate"] == pytest.approx(plain["estimate"])
    assert grouped["high"] - grouped["low"] >= 0.9 * (plain["high"] - plain["low"]), (grouped, plain)


def test_thresholds_are_compared_as_the_runtime_holds_them() -> None:
    """A review: the manifest keeps thresholds in float32 (0.7 -> 0.69999999); an output of exactly that value
    was positive on the device and a false negative in evaluate's figures."""
    t32 = float(np.float32(0.7))
    assert t32 < 0.7
    report = M.classification_report([[1], [0]], np.array([[t32], [0.1]]), [0.7], ["dr"], n_boot=0)
    dr = report["classes"][0]
    assert (dr["tp"], dr["fn"]) == (1, 0) and dr["threshold"] == t32
    rates = M.rates_at_threshold([1, 0], [t32, 0.1], 0.7)
    assert (rates.tp, rates.fn, rates.threshold) == (1, 0, t32)


def test_prevalence_dependent_intervals_let_the_class_mix_vary() -> None:
    """A statistician's review (session 30): resampling within each label froze the prevalence, and the F1, PPV,
    NPV, accuracy and kappa intervals, which move with it, covered 60-86 % at 95 % (benchmarks/interval_coverage.py). They are now bootstrapped
    without strata; AUC, sensitivity and specificity keep the stratified resamples."""
    rng = np.random.default_rng(0)
    n = 400
    patients = np.repeat(np.arange(200), 2)  # two eyes each, independent here
    y = rng.random(n) < 0.05
    called = np.where(y, rng.random(n) < 0.95, rng.random(n) > 0.80)
    Y, S = y[:, None].astype(int), called[:, None].astype(float)
    kw = {"n_boot": 500, "clusters": patients}
    strat = M.classification_report(Y, S, 0.5, ["a"], **kw)["classes"][0]
    free = M.classification_report(Y, S, 0.5, ["a"], stratified=False, **kw)["classes"][0]
    wilson = M.classification_report(Y, S, 0.5, ["a"], n_boot=500)["classes"][0]["ppv"]
    for m in ("ppv", "npv", "f1"):
        assert (strat[m]["low"], strat[m]["high"]) == (free[m]["low"], free[m]["high"]), m
    # Independent eyes: the clustered PPV interval is about as wide as Wilson's (0.44 times it before).
    assert (strat["ppv"]["high"] - strat["ppv"]["low"]) > 0.8 * (wilson["high"] - wilson["low"])
    assert (strat["auc"]["low"], strat["auc"]["high"]) != (free["auc"]["low"], free["auc"]["high"])
    grades = rng.integers(0, 5, 300)
    scores = np.eye(5)[np.clip(grades + rng.integers(-1, 2, 300), 0, 4)] + rng.random((300, 5)) * 0.1
    names = [f"g{i}" for i in range(5)]
    macro_s = M.classification_report(grades, scores, 0.5, names, n_boot=300, ordinal=True)["macro"]
    macro_f = M.classification_report(grades, scores, 0.5, names, n_boot=300, ordinal=True,
                                      stratified=False)["macro"]
    for m in ("quadratic_kappa", "f1"):
        assert (macro_s[m]["low"], macro_s[m]["high"]) == (macro_f[m]["low"], macro_f[m]["high"]), m


def test_a_side_held_by_one_patient_is_said_in_the_report_not_only_in_the_log() -> None:
    """A referral evaluated on data where one patient held every non-referable image: the bootstrap logged that
    a stratum held a single cluster, and eval.json printed a specificity interval without a word (a review of
    the outputs, session 30)."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(12)].astype(int)
    patients = np.r_[np.repeat(np.arange(20), 2), np.full(12, 99)]
    s = np.clip(y * 0.4 + rng.random(52) * 0.6, 0, 1)
    row = M.classification_report(y[:, None], s[:, None], 0.5, ["refer"], n_boot=200, clusters=patients)["classes"][0]
    assert ("specificity: its 12 negative images come from one patient; the interval cannot show how the figure "
            "varies between patients") in row["notes"]
    assert not any(n.startswith("sensitivity: its") for n in row["notes"])  # 20 positive patients
