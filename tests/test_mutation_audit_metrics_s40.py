"""Mutation audit (session 40) of the clinical metrics: ``runtime/metrics.py``.

The figures a validation engineer signs (AUC, sensitivity, specificity, PPV, NPV with their intervals, the
paired AUC difference, the macro figures and the notes that qualify them) were put through single-point
mutants in a scratch copy of the module, and each test here pins a behaviour that a mutant slipped past
every test that exercises the module (``test_metrics``, ``test_interval_methods``, the evaluate, plot,
zero-shot, validate and earlier audit tests). The mutant ids are those of the audit's list, named in each
docstring. The expected figures are worked out by hand in the test (Wilson's bound at 100 %, a confusion
matrix, the chance that a resample misses a case, numpy's percentile of known replicates) or follow from
an identity that needs no reference (two identical eyes of a patient carry the information of one).
The numbers are hand-made, so the file runs in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from uopsl.runtime import metrics as M
from uopsl.runtime.errors import ConfigError

Z975 = 1.959963984540054  # standard normal 97.5 % quantile


def _wilson_low_at_100(n: float) -> float:
    """Wilson's lower bound at p = 1: the centre (1 + z^2/2n) less the half width z^2/2n, over 1 + z^2/n."""
    return n / (n + Z975 * Z975)


# -- input checks ------------------------------------------------------------------------------------------
def test_a_label_of_one_half_is_refused_not_read_as_positive() -> None:
    """M01: a range check (``a < 0 or a > 1``) in place of "only 0 and 1" let a soft label of 0.5 through, and
    ``astype(bool)`` then counted it as a positive case: the AUC and sensitivity of such a file are wrong
    without a word."""
    with pytest.raises(ConfigError, match="only 0 and 1"):
        M.roc_auc([0, 0.5, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="only 0 and 1"):
        M.classification_report(np.array([[1.0, 0.0], [0.5, 1.0]]), np.full((2, 2), 0.5), 0.5, ["a", "b"],
                                n_boot=0)


def test_an_infinite_score_is_refused() -> None:
    """M04: only NaN was refused; a score of +inf (an overflowed logit) ranked above every case and a
    threshold of inf could be chosen from it. The module's rule is "non-finite values raise"."""
    for bad in (np.inf, -np.inf):
        with pytest.raises(ConfigError, match="non-finite"):
            M.roc_auc([0, 1, 1], [0.1, bad, 0.3])


def test_a_nan_threshold_is_refused() -> None:
    """M19: without the check a NaN threshold called no case positive (``score >= nan`` is False), and the
    report read sensitivity 0 instead of an error."""
    with pytest.raises(ConfigError, match="NaN"):
        M.rates_at_threshold([0, 1], [0.2, 0.4], math.nan)


def test_a_predicted_class_beyond_every_true_class_widens_the_matrix() -> None:
    """M26: K is one more than the largest index in truth *or* prediction. Taking the truth's alone (K = 2
    here) put the prediction 2 of a class-0 case into row 1 (key 0 * 2 + 2), so the matrix and macro-F1 were
    wrong. By hand: rows = truth, columns = prediction -> [[1, 0, 1], [0, 1, 0], [0, 0, 0]]; F1 per class:
    class 0 2 * 1 / (2 + 1) = 2/3, class 1 1, class 2 (predicted once, never true) 0; mean 5/9."""
    assert M.confusion_matrix([0, 1, 0], [0, 1, 2]).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert M.macro_f1([0, 1, 0], [0, 1, 2]) == pytest.approx(5 / 9, abs=1e-12)


def test_multilabel_predictions_of_another_shape_are_refused() -> None:
    """M28: without the shape check a single predicted row (1, K) broadcast against (N, K) truth and gave a
    macro-F1 for predictions that were never made."""
    y = np.array([[1, 0], [0, 1], [1, 1]])
    with pytest.raises(ConfigError, match="shape"):
        M.macro_f1(y, np.array([[1, 0]]))


def test_a_two_dimensional_strata_of_the_wrong_length_is_refused_with_clusters() -> None:
    """M86: with clusters, a 2-D strata one row short reached ``np.maximum.at`` and failed there with a numpy
    error instead of the ConfigError that says what is wrong."""
    with pytest.raises(ConfigError, match="strata must be"):
        list(M.bootstrap_weights(4, n_boot=2, strata=np.zeros((3, 2)), clusters=[0, 0, 1, 1]))


# -- patients and clusters ---------------------------------------------------------------------------------
def test_empty_patient_ids_are_each_their_own_patient() -> None:
    """M44, M46: an empty id (a CSV's empty cell) is no patient, like None: each such image is resampled
    alone. Read as a patient id, every image without one became one big "patient" (M44); and with no known
    patient at all the function returns None, so the caller resamples images (M46 returned codes)."""
    codes = M.patient_codes(["p1", "", "", "p1", None])
    assert codes is not None and codes.tolist() == [0, 1, 2, 0, 3]
    assert M.patient_codes(["", None, ""]) is None


def test_a_cluster_mixing_two_dimensional_strata_takes_the_union_of_its_labels() -> None:
    """M50: with a 2-D strata (multi-hot rows) a cluster whose cases differ is resampled in the stratum of the
    column-wise maximum (the union of its labels). Patient A has one eye with class 0 and one with class 1:
    its stratum is (1, 1), shared with B, so every resample draws exactly two of {A, B}. Taking the minimum
    put A with the healthy patients C, D and left B alone."""
    rows = np.array([[1, 0], [0, 1], [1, 1], [1, 1], [0, 0], [0, 0], [0, 0], [1, 0], [1, 0]])
    clusters = ["A", "A", "B", "B", "C", "D", "D", "E", "F"]
    w = np.concatenate(list(M.bootstrap_weights(9, n_boot=200, seed=3, strata=rows, clusters=clusters)))
    first = {"A": 0, "B": 2, "C": 4, "D": 5, "E": 7, "F": 8}
    for pair in (("A", "B"), ("C", "D"), ("E", "F")):
        np.testing.assert_array_equal(w[:, first[pair[0]]] + w[:, first[pair[1]]], 2.0)
    assert len(set(w[:, 0])) > 1  # A itself is drawn 0, 1 or 2 times


# -- paired AUC difference ---------------------------------------------------------------------------------
def _two_models(n: int = 40, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 4), np.zeros(n - n // 4)].astype(bool)
    a = rng.normal(size=n) + 1.0 * y
    b = a + rng.normal(scale=0.5, size=n)
    return y, a, b


def test_paired_difference_with_two_identical_eyes_per_patient_equals_one_eye_each() -> None:
    """M58: the paired difference ignored ``clusters``. Two identical eyes per patient carry the information
    of one: resampled by patient, the doubled data must give exactly the interval of the single eyes (same
    seed, same draws; doubled weights leave an AUC unchanged). Resampled by image, the doubled data looks
    twice as large and the interval comes out narrower."""
    y, a, b = _two_models()
    single = M.paired_auc_difference(y, a, b, n_boot=300, seed=2)
    y2, a2, b2 = np.repeat(y, 2), np.repeat(a, 2), np.repeat(b, 2)
    pid = np.repeat(np.arange(y.size), 2)
    by_patient = M.paired_auc_difference(y2, a2, b2, n_boot=300, seed=2, clusters=pid)
    assert by_patient.estimate == pytest.approx(single.estimate, abs=1e-12)
    assert (by_patient.low, by_patient.high) == pytest.approx((single.low, single.high), abs=1e-12)
    by_image = M.paired_auc_difference(y2, a2, b2, n_boot=300, seed=2)
    assert by_image.high - by_image.low < by_patient.high - by_patient.low


def test_paired_difference_is_resampled_within_each_class() -> None:
    """M59: ``stratified=True`` (the default) resamples positives and negatives separately, so every resample
    keeps the 2 positives' count and the difference is defined in all of them. Unstratified, a resample of 30
    misses both positives with chance (28/30)^30 = 0.126, and those resamples are dropped."""
    y = np.r_[np.ones(2), np.zeros(28)].astype(bool)
    rng = np.random.default_rng(0)
    a = rng.random(30) + 0.3 * y
    b = a + rng.normal(scale=0.1, size=30)
    strat = M.paired_auc_difference(y, a, b, n_boot=400, seed=0)
    assert strat.n_valid == strat.n_boot == 400
    free = M.paired_auc_difference(y, a, b, n_boot=400, seed=0, stratified=False)
    assert 0.05 < 1 - free.n_valid / 400 < 0.25  # about 0.126 dropped


# -- percentile bootstrap ----------------------------------------------------------------------------------
def test_the_percentile_interval_interpolates_between_replicates() -> None:
    """M88: the interval is numpy's default (linear) percentile of the replicates. A statistic that numbers
    its calls gives the point estimate 0 and replicates 1..10 (one block); by hand the 2.5 % point lies at
    1 + 0.025 * 9 = 1.225 and the 97.5 % point at 1 + 0.975 * 9 = 9.775 (the 'lower' rule gave 1 and 9)."""
    calls = [0]

    def counter(w: np.ndarray) -> np.ndarray:
        start = calls[0]
        calls[0] += w.shape[0]
        return np.arange(start, start + w.shape[0], dtype=np.float64)

    iv = M.bootstrap_ci(counter, 5, n_boot=10, seed=0)
    assert iv.estimate == 0.0 and iv.n_valid == 10
    assert (iv.low, iv.high) == pytest.approx((1.225, 9.775), abs=1e-12)


# -- classification report ---------------------------------------------------------------------------------
def test_clustered_ppv_and_npv_at_100_percent_count_their_own_patients() -> None:
    """M72: a cluster-bootstrapped proportion at 100 % gets Wilson on its own denominator's patients. 3
    diseased patients (6 eyes, all called) and 9 healthy ones (18 eyes, none called): PPV's cases are the
    called eyes (3 patients), NPV's the eyes not called (9 patients). By hand the lower bounds are
    3 / (3 + z^2) and 9 / (9 + z^2); the mutant swapped the two sets of cases."""
    y = np.repeat([1, 1, 1] + [0] * 9, 2)
    s = np.where(y == 1, 0.9, 0.1)
    pid = np.repeat(np.arange(12), 2)
    rep = M.classification_report(y, np.stack([1 - s, s], 1), 0.5, ["no", "yes"], n_boot=200, clusters=pid)
    yes = rep["classes"][1]
    for m, patients in (("sensitivity", 3), ("specificity", 9), ("ppv", 3), ("npv", 9)):
        assert yes[m]["estimate"] == 1.0 and yes[m]["method"] == M.WILSON_EFFECTIVE_N, m
        assert yes[m]["low"] == pytest.approx(_wilson_low_at_100(patients), abs=1e-9), m
        assert yes[m]["high"] == 1.0, m


def test_macro_figures_are_not_stratified_when_asked_not_to_be() -> None:
    """M74: ``stratified=False`` must reach the macro bootstrap too (it took the class strata regardless). One
    case of class 2 in 30: an unstratified resample misses it with chance (29/30)^30 = 0.362, the macro AUC
    and sensitivity are then undefined and dropped; stratified, every resample keeps it."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(15, int), np.ones(14, int), [2]]
    s = rng.dirichlet(np.ones(3), 30) + 0.5 * np.eye(3)[y]
    names = ["a", "b", "c"]
    free = M.classification_report(y, s, 0.4, names, n_boot=300, seed=0, stratified=False)["macro"]
    for m in ("auc", "sensitivity"):
        assert 0.25 < 1 - free[m]["n_valid"] / 300 < 0.5, m
    strat = M.classification_report(y, s, 0.4, names, n_boot=300, seed=0)["macro"]
    assert strat["auc"]["n_valid"] == strat["sensitivity"]["n_valid"] == 300


def test_clustered_accuracy_is_a_patient_bootstrap_not_a_wilson_interval() -> None:
    """M76: with patients holding several images, top-1 accuracy is bootstrapped by patient (Wilson assumes
    independent images). Two identical eyes per patient: the patient bootstrap of the doubled data must equal
    the plain bootstrap of the single eyes (same seed, same draws); the mutant gave Wilson on 2N images, an
    interval about 1 / sqrt(2) as wide."""
    rng = np.random.default_rng(3)
    n = 60
    y = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    right = rng.random(n) < 0.7
    s = rng.dirichlet(np.ones(3), n) * 0.1
    s[np.arange(n), np.where(right, y, (y + 1) % 3)] += 1.0
    names = ["a", "b", "c"]
    single = M.classification_report(y, s, 0.5, names, n_boot=300, seed=4,
                                     proportion_method=M.BOOTSTRAP)["macro"]["accuracy"]
    doubled = M.classification_report(np.repeat(y, 2), np.repeat(s, 2, axis=0), 0.5, names, n_boot=300, seed=4,
                                      clusters=np.repeat(np.arange(n), 2))["macro"]["accuracy"]
    assert doubled["method"] == single["method"] == M.BOOTSTRAP
    assert doubled["estimate"] == pytest.approx(right.mean(), abs=1e-12)
    assert (doubled["low"], doubled["high"]) == pytest.approx((single["low"], single["high"]), abs=1e-12)


def test_the_ppv_note_follows_the_called_cases_not_the_positives() -> None:
    """M79: PPV is undefined when no case reaches the threshold (TP + FP = 0), whatever the positives. Class
    "a" has 2 positives and no score at 0.95: its PPV is null and said so. Class "b" has no positive but 2
    calls: its PPV is 0 of 2, defined, and no PPV note (the mutant keyed the note on TP + FN)."""
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.96], [0.2, 0.97], [0.5, 0.1], [0.1, 0.2]])
    rep = M.classification_report(y, s, 0.95, ["a", "b"], n_boot=0)
    a, b = rep["classes"]
    assert a["ppv"]["estimate"] is None
    assert "ppv undefined: no case reaches the threshold 0.95" in a["notes"]
    assert b["ppv"]["estimate"] == 0.0
    assert not any(x.startswith("ppv undefined") for x in b["notes"])


def test_the_npv_and_f1_notes_follow_their_own_denominators() -> None:
    """M89, M90: NPV is undefined when every case reaches the threshold (TN + FN = 0) and F1 when there is no
    true and no predicted positive (2TP + FP + FN = 0). Class "a" is called in every case: NPV null, said so.
    Class "b" has no negatives but two cases below the threshold: NPV 0 of 2, defined, no NPV note (M89 keyed
    the note on TN + FP). Class "c" has no positive and no call: F1 null, said so. Class "d" has no positive
    but one call: F1 = 0 / 1, defined, no F1 note (M90 keyed it on TP + FN)."""
    y = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0]])
    s = np.array([[0.9, 0.9, 0.01, 0.9], [0.3, 0.01, 0.01, 0.01], [0.6, 0.02, 0.01, 0.01], [0.2, 0.9, 0.01, 0.01]])
    a, b, c, d = M.classification_report(y, s, 0.05, ["a", "b", "c", "d"], n_boot=0)["classes"]
    assert a["npv"]["estimate"] is None and "npv undefined: every case reaches the threshold 0.05" in a["notes"]
    assert b["npv"]["estimate"] == 0.0 and not any(x.startswith("npv undefined") for x in b["notes"])
    assert c["f1"]["estimate"] is None and "f1 undefined: no true and no predicted positives" in c["notes"]
    assert d["f1"]["estimate"] == 0.0 and not any(x.startswith("f1 undefined") for x in d["notes"])


def test_a_requested_bootstrap_stays_a_bootstrap_with_patients() -> None:
    """M95, M96: ``proportion_method="percentile bootstrap"`` asks for the bootstrap of the proportions. With
    patients and a sensitivity of 100 % it stays a (zero-width, noted) bootstrap: M95 replaced it by the
    effective-n Wilson interval the caller did not ask for, and M96 added a note that the proportions were
    bootstrapped "instead of the percentile bootstrap interval"."""
    y = np.repeat([1, 1, 1] + [0] * 9, 2)
    s = np.where(y == 1, 0.9, 0.1)
    pid = np.repeat(np.arange(12), 2)
    rep = M.classification_report(y, np.stack([1 - s, s], 1), 0.5, ["no", "yes"], n_boot=200, clusters=pid,
                                  proportion_method=M.BOOTSTRAP)
    sens = rep["classes"][1]["sensitivity"]
    assert sens["method"] == M.BOOTSTRAP and (sens["estimate"], sens["low"], sens["high"]) == (1.0, 1.0, 1.0)
    assert any(x.startswith("sensitivity: every bootstrap resample gave 1") for x in rep["classes"][1]["notes"])
    assert rep["proportion_intervals"] == M.BOOTSTRAP
    assert not any("instead of the" in x for x in rep["notes"])


def test_report_arguments_that_name_nothing_are_refused() -> None:
    """M114, M116: an empty class name (a blank cell of a class file) must be refused, and so must an unknown
    proportion method even where the proportions are bootstrapped (patients known), where M116 let "wald"
    through silently and the notes then named a "wald interval" that was never computed."""
    y = np.array([0, 1, 0, 1])
    s = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    with pytest.raises(ConfigError, match="non-empty"):
        M.classification_report(y, s, 0.5, ["", "dr"], n_boot=0)
    with pytest.raises(ConfigError, match="proportion_method"):
        M.classification_report(y, s, 0.5, ["no", "dr"], n_boot=0, clusters=[0, 0, 1, 1], proportion_method="wald")


def test_an_operating_point_without_negatives_says_why_specificity_is_missing() -> None:
    """M123: with positives only the threshold is still chosen (sensitivity 2 of 3 at 0.6, by hand) but the
    specificity is undefined, and the record must say so; the mutant left the note empty."""
    op = M.threshold_for_sensitivity([1, 1, 1], np.array([0.9, 0.6, 0.3], np.float32), target=0.6)
    assert op.threshold == pytest.approx(0.6, abs=1e-7) and op.sensitivity == pytest.approx(2 / 3)
    assert math.isnan(op.specificity) and op.note == "no negative cases: specificity undefined"


def test_auc_interval_takes_its_alpha_and_seed() -> None:
    """M146, M147, M148: ``alpha`` and ``seed`` reach the bootstrap. The same resamples (same seed) give a 50 %
    interval strictly inside the 95 % one; the mutants returned the 95 % interval for any alpha (auc_ci and
    the paired difference) or the seed-0 interval for any seed."""
    y, a, b = _two_models(60, seed=3)
    wide, narrow = M.auc_ci(y, a, n_boot=300, seed=5), M.auc_ci(y, a, n_boot=300, seed=5, alpha=0.5)
    assert wide.low < narrow.low < narrow.estimate < narrow.high < wide.high and narrow.alpha == 0.5
    pw = M.paired_auc_difference(y, a, b, n_boot=300, seed=5)
    pn = M.paired_auc_difference(y, a, b, n_boot=300, seed=5, alpha=0.5)
    assert pw.low < pn.low < pn.high < pw.high
    one, again, other = (M.auc_ci(y, a, n_boot=200, seed=sd) for sd in (1, 1, 2))
    assert (one.low, one.high) == (again.low, again.high) != (other.low, other.high)


def _wilson(x: int, n: float, z: float) -> tuple[float, float]:
    """Wilson (1927) score interval from the textbook formula."""
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def test_the_report_alpha_reaches_every_interval() -> None:
    """M149, M150, M151, M152: ``alpha=0.1`` asks for 90 % intervals throughout the report. By hand with
    z = 1.6449 (the 95 % quantile): the per-class sensitivity and the top-1 accuracy are Wilson intervals of
    their counts, a clustered 100 % is n_eff / (n_eff + z^2) with its 3 patients, and the bootstrap AUC
    interval (same resamples) lies inside the 95 % one. Each mutant kept 0.05 for one of them."""
    z90 = 1.6448536269514722
    y = np.array([0] * 6 + [1] * 5 + [2] * 5)
    called = np.array([0, 0, 0, 0, 1, 2, 1, 1, 1, 0, 2, 2, 2, 2, 1, 0])  # right: 4, 3, 3 of 6, 5, 5
    rng = np.random.default_rng(2)
    s = rng.random((16, 3)) * 0.3
    s[np.arange(16), called] += 1.0
    names = ["a", "b", "c"]
    r90 = M.classification_report(y, s, 0.9, names, n_boot=300, seed=1, alpha=0.1)
    r95 = M.classification_report(y, s, 0.9, names, n_boot=300, seed=1)
    sens_b = r90["classes"][1]["sensitivity"]  # class b: 3 of its 5 cases score >= 0.9
    assert (sens_b["low"], sens_b["high"]) == pytest.approx(_wilson(3, 5, z90), abs=1e-9)
    acc = r90["macro"]["accuracy"]
    assert acc["estimate"] == pytest.approx(10 / 16) and acc["method"] == M.WILSON
    assert (acc["low"], acc["high"]) == pytest.approx(_wilson(10, 16, z90), abs=1e-9)
    for j in range(3):
        a90, a95 = r90["classes"][j]["auc"], r95["classes"][j]["auc"]
        assert a95["low"] <= a90["low"] and a90["high"] <= a95["high"]
        assert (a90["low"], a90["high"]) != (a95["low"], a95["high"]), j
    yc = np.repeat([1, 1, 1] + [0] * 9, 2)
    sc = np.where(yc == 1, 0.9, 0.1)
    rc = M.classification_report(yc, np.stack([1 - sc, sc], 1), 0.5, ["no", "yes"], n_boot=200, alpha=0.1,
                                 clusters=np.repeat(np.arange(12), 2))
    assert rc["classes"][1]["sensitivity"]["low"] == pytest.approx(3 / (3 + z90 * z90), abs=1e-9)


# -- round three: curves, counts and notes -----------------------------------------------------------------
def test_a_curve_without_negatives_has_no_false_positive_rate() -> None:
    """M155: with positives only, the false-positive rate has no denominator and is NaN (the module's
    convention), while the true-positive rate is defined: 0, 1/3, 2/3, 1 over the thresholds inf, 0.9, 0.6,
    0.3. The mutant drew the curve along fpr = 0, a perfect-looking ROC from data with no negatives."""
    c = M.roc_curve([1, 1, 1], [0.3, 0.9, 0.6])
    assert np.all(np.isnan(c.fpr)) and c.fpr.size == 4
    np.testing.assert_allclose(c.tpr, [0, 1 / 3, 2 / 3, 1], atol=1e-12)
    assert math.isnan(c.auc) and not c.defined


def test_a_proportion_interval_needs_an_alpha_strictly_between_0_and_1() -> None:
    """M173: alpha = 0 asks for a 100 % interval (z = infinity: the bisection stopped at its bracket and gave
    a near-[0, 1] interval) and alpha = 1 for a 0 % one; both are mistakes and raise."""
    for alpha in (0.0, 1.0, 1.5):
        for method in (M.WILSON, M.CLOPPER_PEARSON):
            with pytest.raises(ConfigError, match="alpha"):
                M.proportion_interval(3, 10, alpha=alpha, method=method)


def test_the_class_table_counts_negatives_as_true_negatives_plus_false_positives() -> None:
    """M178: a class's negatives are TN + FP. Class "dr": TP 2, FN 0, TN 3, FP 1 -> 4 negatives (the mutant
    said TN + FN = 3). Class "amd": its 2 negatives are both called (TN 0, FP 2) and no positive is missed
    (FN 0): specificity is 0 of 2, defined, and there is no "no negative cases" note (the mutant counted 0
    negatives and wrote one)."""
    y = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [0, 1], [0, 1]])
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.2, 0.9], [0.1, 0.9], [0.3, 0.9]])
    dr, amd = M.classification_report(y, s, 0.5, ["dr", "amd"], n_boot=0)["classes"]
    assert (dr["tp"], dr["fn"], dr["tn"], dr["fp"]) == (2, 0, 3, 1)
    assert (dr["n_positive"], dr["n_negative"]) == (2, 4)
    assert (amd["tp"], amd["fn"], amd["tn"], amd["fp"]) == (4, 0, 0, 2)
    assert (amd["n_positive"], amd["n_negative"]) == (4, 2)
    assert amd["specificity"]["estimate"] == 0.0
    assert not any(x.startswith("specificity undefined") for x in amd["notes"])


def test_an_undefined_figure_gets_its_reason_not_a_bootstrap_tally() -> None:
    """M181: a class without positives has no AUC; its note says why ("only one class"). Every resample leaves
    it undefined too, and the mutant added "50 of 50 bootstrap resamples left it undefined", a second note
    that reads as a sampling problem where there is none to sample."""
    y = np.array([[1, 0]] * 4 + [[0, 0]] * 4)
    s = np.linspace(0.1, 0.9, 16).reshape(8, 2)
    rep = M.classification_report(y, s, 0.5, ["dr", "amd"], n_boot=50)
    amd = rep["classes"][1]
    assert amd["auc"]["estimate"] is None
    assert any(x.startswith("auc undefined: only one class") for x in amd["notes"])
    assert not any(x.startswith("auc:") for x in amd["notes"])


def test_a_label_with_one_class_has_no_single_unit_side() -> None:
    """M203: ``single_unit_side`` names a side held by one image or patient; with one class only there is no
    other side to speak of (the AUC is undefined for that reason, said elsewhere). The mutant reported "the
    negative cases come from one image" for an all-positive label (zero-shot notes print it)."""
    assert M.single_unit_side(np.ones(5, bool), None) == ""
    assert M.single_unit_side(np.ones(4, bool), np.array([0, 0, 1, 1])) == ""
    assert M.single_unit_side(np.zeros(5, bool), None) == ""
    assert "positive cases come from one image" in M.single_unit_side(np.array([1, 0, 0], bool), None)
