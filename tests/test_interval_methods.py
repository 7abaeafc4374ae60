"""Which interval each figure gets, and what is resampled (review of the statistics, findings 5, 6, 7, 10, 11, 13).

* proportions: Wilson score (or Clopper-Pearson), not a percentile bootstrap that collapses at 0 or 100 %;
* multi-label reports: each class resampled within its own label, not within the joint label pattern;
* clusters (patients): whole clusters resampled, and the interval widens when two eyes share a patient;
* DeLong: no p = 0 from a zero variance estimate;
* ``uopsl evaluate``: threshold fallbacks logged and recorded, class indices for a softmax head.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime import metrics as M
from uopsl.runtime.errors import ConfigError
from uopsl.train import evaluate as E

Z975 = 1.959963984540054  # standard normal 97.5 % quantile


def _wilson(x: int, n: int, z: float = Z975) -> tuple[float, float]:
    """Wilson (1927) score interval, written out from the textbook formula."""
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


# --------------------------------------------------------------------------- proportions (finding 5)


def test_normal_quantile() -> None:
    assert M._normal_quantile(0.975) == pytest.approx(Z975, abs=1e-12)
    assert M._normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    assert M._normal_quantile(0.995) == pytest.approx(2.5758293035489004, abs=1e-12)


@pytest.mark.parametrize(("x", "n"), [(0, 10), (3, 10), (10, 10), (17, 40), (1, 1000), (5, 5)])
def test_wilson_interval_matches_the_formula(x: int, n: int) -> None:
    iv = M.proportion_interval(x, n)
    lo, hi = _wilson(x, n)
    assert iv.method == M.WILSON and iv.estimate == x / n and (iv.n_boot, iv.n_valid) == (0, 0)
    assert iv.low == pytest.approx(max(lo, 0.0), abs=1e-12) and iv.high == pytest.approx(min(hi, 1.0), abs=1e-12)
    assert iv.low < iv.high  # never zero width, not even at 0 or n


def test_clopper_pearson_closed_forms_and_scipy() -> None:
    # At x = n the exact lower bound is (alpha/2)^(1/n): 5 of 5 gives 0.478 (the review's figure).
    iv = M.proportion_interval(5, 5, method=M.CLOPPER_PEARSON)
    assert iv.low == pytest.approx(0.025 ** (1 / 5), abs=1e-9) and iv.high == 1.0
    assert iv.low == pytest.approx(0.478, abs=1e-3)
    zero = M.proportion_interval(0, 120, method=M.CLOPPER_PEARSON)
    assert zero.low == 0.0 and zero.high == pytest.approx(1 - 0.025 ** (1 / 120), abs=1e-9)
    stats = pytest.importorskip("scipy.stats")
    for x, n in [(3, 10), (17, 40), (1, 1000), (999, 1000), (250, 500)]:
        iv = M.proportion_interval(x, n, alpha=0.1, method=M.CLOPPER_PEARSON)
        assert iv.low == pytest.approx(stats.beta.ppf(0.05, x, n - x + 1), abs=1e-9)
        assert iv.high == pytest.approx(stats.beta.ppf(0.95, x + 1, n - x), abs=1e-9)


def test_proportion_interval_rejects_bad_counts() -> None:
    assert math.isnan(M.proportion_interval(0, 0).estimate)
    for x, n in [(3, 2), (-1, 4), (1.5, 4)]:
        with pytest.raises(ConfigError, match="0 <= successes <= total"):
            M.proportion_interval(x, n)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="method"):
        M.proportion_interval(1, 2, method="bootstrap")


def test_report_proportions_do_not_collapse_at_100_percent() -> None:
    # The review's input: 5 positives, all detected. The percentile bootstrap gave sensitivity 1.0 [1.0, 1.0].
    y = np.array([1] * 5 + [0] * 15)
    s = np.r_[np.full(5, 0.9), np.linspace(0.0, 0.6, 15)]
    rep = M.classification_report(y, np.stack([1 - s, s], 1), 0.5, ["no", "yes"], n_boot=1000, seed=0)
    sens = rep["classes"][1]["sensitivity"]
    assert sens["estimate"] == 1.0 and sens["method"] == M.WILSON
    assert sens["low"] == pytest.approx(5 / (5 + Z975**2), abs=1e-9) and sens["high"] == 1.0
    assert rep["proportion_intervals"] == M.WILSON
    # AUC stays bootstrapped; a perfect separation gives a zero-width interval, and the report says so.
    auc = rep["classes"][1]["auc"]
    assert auc["method"] == M.BOOTSTRAP and auc["low"] == auc["high"] == 1.0
    assert any("zero width" in n for n in rep["classes"][1]["notes"])
    old = M.classification_report(y, np.stack([1 - s, s], 1), 0.5, ["no", "yes"], n_boot=1000, seed=0,
                                  proportion_method=M.BOOTSTRAP)
    assert (old["classes"][1]["sensitivity"]["low"], old["classes"][1]["sensitivity"]["high"]) == (1.0, 1.0)
    cp = M.classification_report(y, np.stack([1 - s, s], 1), 0.5, ["no", "yes"], n_boot=10,
                                 proportion_method=M.CLOPPER_PEARSON)
    assert cp["classes"][1]["sensitivity"]["low"] == pytest.approx(0.025 ** (1 / 5), abs=1e-9)


def test_single_label_accuracy_gets_a_wilson_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.random((90, 3))
    p[np.arange(90), y] += 0.4
    rep = M.classification_report(y, p, 0.5, ["a", "b", "c"], n_boot=50)
    correct = int(np.sum(p.argmax(1) == y))
    acc = rep["macro"]["accuracy"]
    lo, hi = _wilson(correct, 90)
    assert acc["estimate"] == pytest.approx(correct / 90) and acc["method"] == M.WILSON
    assert (acc["low"], acc["high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert rep["macro"]["f1"]["method"] == M.BOOTSTRAP


# --------------------------------------------------------------------------- multi-label strata (finding 6)


def _review_multilabel() -> tuple[np.ndarray, np.ndarray]:
    """The review's t_boot.py input: N=60, K=8 random labels, 43 patterns, 30 of them singletons."""
    rng = np.random.default_rng(3)
    y = (rng.random((60, 8)) < 0.3).astype(int)
    s = np.clip(y * 0.3 + rng.random((60, 8)) * 0.8, 0, 1)
    return y, s


def test_multilabel_class_intervals_are_stratified_by_the_class_alone() -> None:
    y, s = _review_multilabel()
    rep = M.classification_report(y, s, 0.5, [f"c{k}" for k in range(8)], n_boot=1000, seed=0)
    c0 = rep["classes"][0]["auc"]
    own = M.auc_ci(y[:, 0], s[:, 0], n_boot=1000, seed=0)  # resampled within c0's own label
    assert (c0["estimate"], c0["low"], c0["high"]) == (own.estimate, own.low, own.high)
    # The joint-pattern bootstrap gave [0.757, 0.870] (width 0.113); stratifying by c0 alone gives ~0.21.
    assert c0["low"] == pytest.approx(0.697, abs=2e-3) and c0["high"] == pytest.approx(0.909, abs=2e-3)
    assert c0["high"] - c0["low"] > 0.2


def test_two_dimensional_strata_freeze_singleton_patterns_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    y, _ = _review_multilabel()
    _, counts = np.unique(y, axis=0, return_counts=True)
    singletons = int(np.sum(counts == 1))
    M._SAID.clear()  # said once per process (session 58): an earlier test may have said it
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.metrics"):
        w = np.concatenate(list(M.bootstrap_weights(60, n_boot=200, seed=0, strata=y)))
        again = np.concatenate(list(M.bootstrap_weights(60, n_boot=200, seed=1, strata=y)))
    assert f"{singletons} of {len(counts)} strata hold a single case" in caplog.text
    # validate printed it three times (a review): once is enough
    assert sum("strata hold a single" in r.getMessage() for r in caplog.records) == 1, caplog.text
    assert again.shape == w.shape
    # The pitfall documented: every case whose label pattern is unique has weight 1 in every resample.
    _, inverse, cnt = np.unique(y, axis=0, return_inverse=True, return_counts=True)
    alone = cnt[inverse.reshape(-1)] == 1
    assert alone.sum() == singletons == 30
    assert np.all(w[:, alone] == 1) and not np.all(w[:, ~alone] == 1, axis=0).any()


def test_multilabel_macro_drops_resamples_that_lose_a_class() -> None:
    rng = np.random.default_rng(1)
    n = 40
    y = np.stack([rng.integers(0, 2, n), np.zeros(n, int)], axis=1)
    y[7, 1] = 1  # class 1 has a single positive
    s = rng.random((n, 2))
    rep = M.classification_report(y, s, 0.5, ["common", "rare"], n_boot=300, seed=0)
    # The macro figures share one unstratified bootstrap: count independently the resamples keeping every class.
    w = np.concatenate(list(M.bootstrap_weights(n, n_boot=300, seed=0)))
    pos0, neg0 = w @ (y[:, 0] == 1), w @ (y[:, 0] == 0)
    keeps = (w[:, 7] > 0) & (pos0 > 0) & (neg0 > 0)
    assert rep["macro"]["auc"]["n_valid"] == int(keeps.sum()) < 300
    assert any(n.startswith("macro.auc:") and "dropped" in n for n in rep["notes"])


# --------------------------------------------------------------------------- clusters (finding 7)


def test_cluster_bootstrap_gives_a_cluster_one_weight_and_keeps_cluster_strata() -> None:
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 4, 50)
    cluster = np.repeat(np.arange(50), sizes)
    n = cluster.size
    y = rng.random(n) < 0.3  # eye-level labels: some patients are mixed
    order = rng.permutation(n)  # the ids need not be contiguous
    cluster, y = cluster[order], y[order]
    ids = np.array([f"patient-{c}" for c in cluster])
    w = np.concatenate(list(M.bootstrap_weights(n, n_boot=300, seed=1, strata=y, clusters=ids)))
    assert w.shape == (300, n)
    for c in range(50):
        members = np.flatnonzero(cluster == c)
        assert np.all(w[:, members] == w[:, members[:1]])  # both eyes of a patient: one weight
    # Mixed patients count as positive: the number of positive (any-positive) patients is kept in every resample.
    any_pos = np.array([y[cluster == c].any() for c in range(50)])
    first = np.array([np.flatnonzero(cluster == c)[0] for c in range(50)])
    per_cluster = w[:, first]
    np.testing.assert_array_equal(per_cluster[:, any_pos].sum(1), any_pos.sum())
    np.testing.assert_array_equal(per_cluster[:, ~any_pos].sum(1), (~any_pos).sum())
    assert len(set(w[:, y].sum(1))) > 1  # the number of positive eyes varies, the patients do not
    again = np.concatenate(list(M.bootstrap_weights(n, n_boot=300, seed=1, strata=y, clusters=ids)))
    np.testing.assert_array_equal(w, again)


def test_cluster_ids_are_checked() -> None:
    with pytest.raises(ConfigError, match="one id per case"):
        list(M.bootstrap_weights(4, n_boot=2, clusters=[1, 2, 3]))
    with pytest.raises(ConfigError, match=r"clusters\[2\] is None"):
        list(M.bootstrap_weights(4, n_boot=2, clusters=["a", "b", None, "a"]))
    with pytest.raises(ConfigError, match="NaN"):
        list(M.bootstrap_weights(3, n_boot=2, clusters=[1.0, math.nan, 2.0]))


def _two_eyes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The review's t_cluster.py generator, first data set: 60 patients x 2 eyes, shared label and score effect."""
    rng = np.random.default_rng(0)
    dis = rng.random(60) < 0.3
    lat = rng.normal(size=60)
    y = np.repeat(dis, 2)
    s = np.repeat(lat, 2) + rng.normal(scale=0.4, size=120) + 1.2 * y
    return y, s, np.repeat(np.arange(60), 2)


def test_patient_clusters_widen_the_auc_interval_on_two_eyes_per_patient() -> None:
    y, s, pid = _two_eyes()
    by_image = M.auc_ci(y, s, n_boot=1000, seed=0)
    by_patient = M.auc_ci(y, s, n_boot=1000, seed=0, clusters=pid)
    assert by_patient.estimate == by_image.estimate == M.roc_auc(y, s)
    assert (by_patient.high - by_patient.low) > 1.15 * (by_image.high - by_image.low)
    # Independent check: a plain patient bootstrap (positive and negative patients resampled separately).
    rng = np.random.default_rng(5)
    pos_p, neg_p = np.flatnonzero(y[::2]), np.flatnonzero(~y[::2])
    vals = []
    for _ in range(1000):
        pick = np.r_[rng.choice(pos_p, pos_p.size), rng.choice(neg_p, neg_p.size)]
        idx = np.concatenate([[2 * p, 2 * p + 1] for p in pick])
        vals.append(M.roc_auc(y[idx], s[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    assert by_patient.high - by_patient.low == pytest.approx(hi - lo, rel=0.2)
    # The paired difference accepts the same clusters (two eyes a patient); its interval holds its estimate.
    d = M.paired_auc_difference(y, s, s + 0.1 * np.sin(np.arange(120)), n_boot=200, clusters=pid)
    assert d.low <= d.estimate <= d.high


def test_report_with_clusters_bootstraps_the_proportions_and_says_so() -> None:
    y, s, pid = _two_eyes()
    probs = np.stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))], axis=1)
    rep = M.classification_report(y.astype(int), probs, 0.5, ["no", "yes"], n_boot=300, seed=0, clusters=pid)
    assert rep["bootstrap"]["unit"] == "cluster" and rep["bootstrap"]["n_units"] == 60
    assert rep["proportion_intervals"] == M.BOOTSTRAP
    assert rep["classes"][1]["sensitivity"]["method"] == M.BOOTSTRAP
    assert any("cluster bootstrap instead of the wilson score" in n for n in rep["notes"])
    single = M.classification_report(y.astype(int), probs, 0.5, ["no", "yes"], n_boot=300, seed=0,
                                     clusters=np.arange(120))  # every case its own cluster: independent
    assert single["proportion_intervals"] == M.WILSON


def test_clustered_proportion_at_100_percent_counts_each_patient_once() -> None:
    # 3 diseased patients (6 eyes), all detected; 9 healthy patients. The cluster bootstrap gives [1, 1] again.
    y = np.repeat([1, 1, 1] + [0] * 9, 2)
    healthy = np.repeat([0.1, 0.6, 0.1, 0.6, 0.6, 0.1, 0.1, 0.6, 0.1], 2)  # whole patients called or not
    s = np.r_[np.full(6, 0.9), healthy]
    pid = np.repeat(np.arange(12), 2)
    rep = M.classification_report(y, np.stack([1 - s, s], 1), 0.5, ["no", "yes"], n_boot=300, clusters=pid)
    sens = rep["classes"][1]["sensitivity"]
    assert sens["estimate"] == 1.0 and sens["method"] == M.WILSON_EFFECTIVE_N
    assert sens["low"] == pytest.approx(3 / (3 + Z975**2), abs=1e-9) and sens["high"] == 1.0  # n_eff = 3 patients
    assert any("effective sample size 3" in n for n in rep["classes"][1]["notes"])
    spec = rep["classes"][1]["specificity"]  # 10 of 18 healthy eyes below 0.5: a real cluster bootstrap
    assert spec["estimate"] == pytest.approx(10 / 18) and spec["method"] == M.BOOTSTRAP
    assert spec["low"] < 10 / 18 < spec["high"]


# --------------------------------------------------------------------------- DeLong (finding 10)


def test_delong_zero_variance_with_different_aucs_gives_no_p_value() -> None:
    y = [1, 1, 0, 0, 0]
    r = M.delong_test(y, np.full(5, 0.5), [0.9, 0.8, 0.1, 0.2, 0.3])  # the review's input
    assert (r.auc_a, r.auc_b, r.difference) == (0.5, 1.0, 0.5)
    assert r.se == 0.0 and math.isnan(r.z) and math.isnan(r.p_value)
    assert "variance estimate is zero" in r.note and "2 positives, 3 negatives" in r.note
    same = M.delong_test(y, [0.9, 0.8, 0.1, 0.2, 0.3], [0.9, 0.8, 0.1, 0.2, 0.3])
    assert (same.se, same.z, same.p_value, same.note) == (0.0, 0.0, 1.0, "")


# --------------------------------------------------------------------------- thresholds (finding 11)


def test_threshold_fallbacks_are_logged_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    y = np.zeros((8, 4))
    y[:4, 0] = 1  # normal: Youden
    y[:4, 1] = 1  # dr: referable, target sensitivity
    y[:4, 3] = 1  # anti: scores anti-correlated, Youden's J peaks at +inf
    # amd (column 2) has no validation positives
    p = np.zeros((8, 4), np.float32)
    p[:, 0] = [0.9, 0.8, 0.7, 0.2, 0.3, 0.1, 0.25, 0.05]
    p[:, 1] = [0.9, 0.6, 0.4, 0.3, 0.35, 0.1, 0.2, 0.05]
    p[:, 2] = np.linspace(0.1, 0.8, 8)
    p[:, 3] = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    names = ["normal", "dr", "amd", "anti"]
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        recs = E.choose_operating_points(y, p, [False, True, True, False], 0.75, names=names)
    assert [r.method for r in recs] == ["youden", "target_sensitivity", "fallback", "fallback"]
    # What each record says it achieved, recomputed at its threshold.
    for r, k in ((recs[0], 0), (recs[1], 1)):
        rates = M.rates_at_threshold(y[:, k], p[:, k], r.threshold)
        assert (r.sensitivity, r.specificity) == (rates.sensitivity, rates.specificity)
        assert (r.n_positive, r.n_negative) == (4, 4)
    assert recs[1].threshold == pytest.approx(0.4) and recs[1].sensitivity == 0.75
    j = [M.rates_at_threshold(y[:, 0], p[:, 0], t) for t in p[:, 0]]
    assert recs[0].sensitivity + recs[0].specificity - 1 == max(r.sensitivity + r.specificity - 1 for r in j)
    amd, anti = recs[2], recs[3]
    assert amd.threshold == anti.threshold == E.FALLBACK_THRESHOLD == 0.5
    assert math.isnan(amd.sensitivity) and amd.specificity == 0.5  # 0.1 ... 0.4 of 0.1 ... 0.8 are below 0.5
    assert (anti.sensitivity, anti.specificity) == (0.0, 0.0)
    assert "no positive" in amd.note and "+inf" in anti.note
    assert "class 'amd' (referable): operating threshold falls back to 0.5" in caplog.text
    assert "class 'anti' (not referable): operating threshold falls back to 0.5" in caplog.text
    assert "Youden's J peaks" in caplog.text
    d = amd.to_dict()
    assert d["sensitivity"] is None and d["method"] == "fallback" and json.dumps(d)
    # choose_thresholds (the old entry point) gives the same numbers.
    assert E.choose_thresholds(y, p, [False, True, True, False], 0.75) == [r.threshold for r in recs]


def test_finetune_stores_the_records_and_evaluate_reports_them(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from trainhelpers import tiny_items, tiny_model

    from uopsl.train.checkpoint import read_meta
    from uopsl.train.loops import TrainConfig
    from uopsl.train.workflow import run_evaluate, run_finetune

    items = tiny_items(tmp_path / "imgs", n=12)  # classes normal, a, b cycling
    val = [it for i, it in enumerate(items) if i % 3 != 2]  # no validation image of class b
    model, meta = tiny_model()
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, freeze_encoder=True, augment=False)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        run_finetune(model, meta, items, val, cfg, tmp_path / "ft")
    assert "class 'b' (referable): operating threshold falls back to 0.5" in caplog.text
    saved = read_meta(tmp_path / "ft")
    points = saved.metrics["operating_points"]
    assert [p["name"] for p in points] == ["normal", "a", "b"]
    assert [p["threshold"] for p in points] == list(saved.thresholds)
    assert points[2]["method"] == "fallback" and points[2]["n_positive"] == 0 and points[2]["n_negative"] == 8
    assert points[1]["method"] == "target_sensitivity" and points[1]["n_positive"] == 4
    # uopsl evaluate copies them into eval.json; two images per patient -> the bootstrap resamples patients.
    test_items = [replace(it, group=f"p{i // 2}") for i, it in enumerate(items)]
    rep = run_evaluate(tmp_path / "ft", test_items, tmp_path / "ev", n_boot=50, device="cpu", keep_ungradable=True)
    written = json.loads((tmp_path / "ev" / "eval.json").read_text())
    # ... each saying its figures are the validation photographs', not this evaluation's (a review, session 30).
    assert [{k: v for k, v in r.items() if k != "figures_on"} for r in written["operating_points"]] == points
    assert all(r["figures_on"].startswith("the validation photographs") for r in written["operating_points"])
    assert written["bootstrap"]["unit"] == "patient" and written["bootstrap"]["n_patients"] == 6
    assert rep["head"] == "sigmoid" and rep["task"] == "multilabel"
    # An old checkpoint (no records) still loads and evaluates, with a note.
    raw = json.loads((tmp_path / "ft" / "checkpoint.json").read_text())
    del raw["metrics"]["operating_points"]
    (tmp_path / "ft" / "checkpoint.json").write_text(json.dumps(raw))
    old = run_evaluate(tmp_path / "ft", items, None, n_boot=0, device="cpu", keep_ungradable=True)
    assert old["operating_points"] is None and any("does not record" in n for n in old["notes"])
    assert old["bootstrap"]["unit"] == "image"


def test_bootstrap_clusters() -> None:
    codes = E.bootstrap_clusters(["p1", "p2", "", None, "p1"])
    assert codes is not None and codes.tolist() == [0, 1, 2, 3, 0]
    assert E.bootstrap_clusters(["p1", "p2", "", None]) is None  # nobody has two images: resample images


# --------------------------------------------------------------------------- softmax head (finding 13)


def _quadratic_kappa(t: np.ndarray, p: np.ndarray, k: int) -> float:
    """Cohen's quadratic weighted kappa straight from its definition."""
    o = np.zeros((k, k))
    np.add.at(o, (t, p), 1)
    w = np.subtract.outer(np.arange(k), np.arange(k)) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    return float(1 - (w * o).sum() / (w * e).sum())


def test_evaluate_softmax_head_passes_class_indices_and_kappa_for_dr_grades() -> None:
    from uopsl.train.datasets.fundus_sets import DR_GRADE_NAMES

    rng = np.random.default_rng(4)
    n, k = 200, 5
    grade = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), np.clip(grade + rng.integers(-1, 2, n), 0, k - 1)] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = np.eye(k, dtype=np.float32)[grade]
    rep = E.evaluate(probs, targets, [0.3] * k, DR_GRADE_NAMES, None, n_boot=100, head="softmax")
    pred = probs.argmax(1)
    assert rep["task"] == "multiclass"
    assert rep["confusion_matrix"]["matrix"] == M.confusion_matrix(grade, pred, k).tolist()
    assert rep["macro"]["accuracy"]["estimate"] == pytest.approx(np.mean(pred == grade))
    assert rep["macro"]["quadratic_kappa"]["estimate"] == pytest.approx(_quadratic_kappa(grade, pred, k), abs=1e-12)
    assert rep["bootstrap"]["unit"] == "image"
    # Not a graded label space: argmax figures but no kappa.
    other = E.evaluate(probs, targets, [0.3] * k, ["a", "b", "c", "d", "e"], None, n_boot=20, head="softmax")
    assert other["task"] == "multiclass" and "quadratic_kappa" not in other["macro"]
    # A sigmoid head keeps the one-vs-rest figures, as before.
    multi = E.evaluate(probs, targets, [0.3] * k, DR_GRADE_NAMES, None, n_boot=20)
    assert multi["task"] == "multilabel" and multi["confusion_matrix"] is None


def test_evaluate_softmax_head_with_multi_label_rows_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]], np.float32)
    probs = np.full((4, 3), 1 / 3)
    probs[:, 0] += np.array([0.1, -0.1, -0.1, 0.1])
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        rep = E.evaluate(probs, targets, [0.3] * 3, ["a", "b", "c"], None, n_boot=0, head="softmax")
    assert rep["task"] == "multilabel" and "1 of 4 images do not carry exactly one label" in caplog.text


@pytest.mark.parametrize(("k", "n"), [(1, 2), (1, 120), (3, 57), (10, 300), (49, 50), (50, 1000)])
def test_the_exact_upper_bound_leaves_the_tail_it_claims(k: int, n: int) -> None:
    """Session 50: validate's change-rate bound and the runtime's proportion intervals share one Clopper-Pearson
    computation (``clopper_pearson_upper``); checked here against the binomial sum it inverts, written out with
    ``math.comb``: at the 95 % upper bound, seeing ``k`` or fewer changes has probability 0.05."""
    from uopsl.export.parity_metrics import binomial_upper_bound

    p = M.clopper_pearson_upper(k, n, 0.95)
    tail = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert tail == pytest.approx(0.05, abs=1e-9)
    assert binomial_upper_bound(k, n) == p
    assert M.clopper_pearson_upper(0, n, 0.95) == pytest.approx(1 - 0.05 ** (1 / n), abs=1e-15)
    assert M.clopper_pearson_upper(n, n, 0.95) == 1.0
    # the two-sided interval's upper end at alpha = 0.1 is the one-sided 95 % bound
    assert M.proportion_interval(k, n, alpha=0.1, method=M.CLOPPER_PEARSON).high == pytest.approx(p, abs=1e-15)
