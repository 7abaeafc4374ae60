"""Mutation audit (session 35): clinically meaningful numbers that a plausible one-token bug could change while
every other test still passed. Each test states its expected value from a hand computation or an independent
argument, never from the code's own output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinybundle import TinyStubBackend, fundus_jpeg, make_bad_zoo, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import metrics as M
from uopsl.runtime.report import urgency_key


def test_f1_counts_false_negatives_by_hand() -> None:
    """F1 = 2TP / (2TP + FP + FN), the harmonic mean of PPV and sensitivity.

    Threshold 0.5 on 5 cases: TP = 2 (0.9, 0.8), FN = 1 (0.2), FP = 1 (0.7), TN = 1 (0.1), so PPV = 2/3,
    sensitivity = 2/3 and F1 = 4/6 = 2/3 (a formula without FN would give 4/5)."""
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.2, 0.7, 0.1])
    r = M.rates_at_threshold(y, s, 0.5)
    assert (r.tp, r.fp, r.tn, r.fn) == (2, 1, 1, 1)
    assert r.f1 == pytest.approx(2 / 3, abs=1e-12)
    assert r.f1 == pytest.approx(2 * r.ppv * r.sensitivity / (r.ppv + r.sensitivity), abs=1e-12)
    rep = M.classification_report(np.stack([1 - y, y], axis=1), np.stack([1 - s, s], axis=1), 0.5,
                                  ["normal", "dr"], n_boot=0)
    assert rep["classes"][1]["f1"]["estimate"] == pytest.approx(2 / 3, abs=1e-12)


def test_threshold_for_a_target_one_rounding_step_above_k_over_n() -> None:
    """The documented slack (TP >= target * n_positive with 1e-9 relative slack) makes a target that is k/n up
    to floating-point rounding mean k of n. 0.1 * 7 is 0.7000000000000001, so target * 10 is just above 7: the
    slack still reads it as 7 of 10 positives. Positives score 0.1, 0.2, ..., 1.0 (float32, as a model gives
    them): the highest threshold catching 7 of 10 is the 7th highest positive score, 0.4 (8 of 10: 0.3)."""
    target = 0.1 * 7
    assert target > 0.7  # the premise: one rounding step above 7/10
    pos = np.arange(1, 11, dtype=np.float32) / np.float32(10)
    neg = np.full(10, 0.05, np.float32)
    y = np.r_[np.ones(10, int), np.zeros(10, int)]
    op = M.threshold_for_sensitivity(y, np.r_[pos, neg], target=target)
    assert op.threshold == float(np.float32(0.4))
    assert op.sensitivity == 0.7 and op.specificity == 1.0


def test_multiclass_macro_bootstrap_keeps_every_class_in_every_resample() -> None:
    """Class indices are resampled within each true class (report["bootstrap"]["strata"] says "class"): every
    resample then holds both of the rare class's 2 cases' worth of positives, so the macro AUC, sensitivity and
    specificity are defined in all of them (n_valid == n_boot). Unstratified, a resample of 30 cases misses
    both with probability (28/30)**30 ~ 0.13, i.e. ~25 of 200 resamples would be dropped."""
    rng = np.random.default_rng(7)
    idx = np.r_[np.zeros(14, int), np.ones(14, int), np.full(2, 2)]
    s = rng.dirichlet(np.ones(3), size=30)
    rep = M.classification_report(idx, s, 0.4, ["a", "b", "c"], n_boot=200, seed=0)
    assert rep["bootstrap"]["stratified"] is True
    for m in ("auc", "sensitivity", "specificity"):
        assert rep["macro"][m]["n_valid"] == 200, m


def test_macro_figures_leave_out_a_class_that_has_no_negatives() -> None:
    """A class positive in every case has no specificity and no AUC; the macro figures average the classes with
    positives and negatives only (a, b), as for a class without positives.

    a: positives score 0.9, 0.4, 0.8 -> sensitivity 2/3; negatives 0.1, 0.6, 0.2 -> specificity 2/3;
       TP 2, FP 1, FN 1 -> F1 2/3.
    b: positives score 0.4, 0.7, 0.2 -> sensitivity 1/3; negatives 0.1, 0.1, 0.1 -> specificity 1;
       TP 1, FP 0, FN 2 -> F1 2/4 = 1/2.
    u: every case positive (sensitivity 1, F1 1, specificity undefined): left out.
    Macro sensitivity (2/3 + 1/3) / 2 = 1/2, specificity (2/3 + 1) / 2 = 5/6, F1 (2/3 + 1/2) / 2 = 7/12,
    balanced accuracy ((2/3 + 2/3) / 2 + (1/3 + 1) / 2) / 2 = 2/3."""
    y = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 1]])
    s = np.array([[0.9, 0.1, 0.9], [0.4, 0.4, 0.9], [0.1, 0.7, 0.9], [0.6, 0.1, 0.9], [0.8, 0.1, 0.9],
                  [0.2, 0.2, 0.9]])
    rep = M.classification_report(y, s, 0.5, ["a", "b", "u"], n_boot=0)
    per = {c["name"]: c for c in rep["classes"]}
    assert per["a"]["sensitivity"]["estimate"] == pytest.approx(2 / 3)
    assert per["b"]["sensitivity"]["estimate"] == pytest.approx(1 / 3)
    assert per["u"]["specificity"]["estimate"] is None
    macro = rep["macro"]
    assert macro["sensitivity"]["estimate"] == pytest.approx(1 / 2, abs=1e-12)
    assert macro["specificity"]["estimate"] == pytest.approx(5 / 6, abs=1e-12)
    assert macro["f1"]["estimate"] == pytest.approx(7 / 12, abs=1e-12)
    assert macro["balanced_accuracy"]["estimate"] == pytest.approx(2 / 3, abs=1e-12)


def test_urgency_within_referrals_counts_findings_not_scores() -> None:
    """Within the referred group more referable findings come first, and otherwise the screening order stays:
    scores of different classes are not comparable (session 45: a review found a dr 0.76 call, 9x its threshold,
    listed above an amd 0.64 call, 160x its threshold, because the table sorted by the highest score)."""
    referable = ["npdr", "dme"]
    rows = [
        {"id": "a", "status": "ok", "refer": True, "positive": ["npdr"], "probs": {"npdr": 0.60, "dme": 0.05}},
        {"id": "b", "status": "ok", "refer": True, "positive": ["dme"], "probs": {"npdr": 0.20, "dme": 0.95}},
        {"id": "c", "status": "ok", "refer": False, "positive": ["normal"], "probs": {"npdr": 0.05, "dme": 0.30}},
        {"id": "d", "status": "ungradable", "refer": False, "probs": {}},
        {"id": "e", "status": "ok", "refer": True, "positive": ["normal", "npdr", "dme"],
         "probs": {"npdr": 0.5, "dme": 0.5}},
    ]
    assert urgency_key(rows[4], referable) == (0, -2) and urgency_key(rows[1], referable) == (0, -1)
    assert urgency_key(rows[2], referable) == (2, 0) and urgency_key(rows[3], referable) == (1, 0)
    assert [r["id"] for r in sorted(rows, key=lambda r: urgency_key(r, referable))] == ["e", "a", "b", "d", "c"]


def test_no_decision_on_an_ungradable_photograph_even_when_the_model_runs_on_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """``infer_ungradable`` records the model's probabilities on an ungradable photograph "for information; no
    decision is made" (PipelineConfig): its ``refer`` stays None and it has no positive classes, so it cannot be
    counted as a referral. A backend answering 0.99 for every class (above every threshold of the tiny bundle,
    so a gradable photograph is referred) makes the point without depending on what a model scores."""
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.pipeline import PipelineConfig, ScreeningPipeline

    m = read_manifest(tiny_bundle)
    k = len(m.classes)
    assert all(c.threshold < 0.99 for c in m.classes) and m.referable_mask.any()

    class Constant(TinyStubBackend):
        name = "constant"

        def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {m.output_names[0]: np.full((len(batch), k), 0.99, np.float32)}

    zoo = make_bad_zoo(tmp_path / "zoo")
    gray = zoo["grayscale.png"][0]
    good = fundus_jpeg(tmp_path / "good.jpg", seed=1)
    with Constant() as b:
        pipe = ScreeningPipeline(b, m, PipelineConfig(batch_size=2, workers=1, infer_ungradable=True))
        ungradable, ok = list(pipe.run([gray, good]))
    assert ok.status == "ok" and ok.refer is True and set(ok.positive) == set(m.class_names)
    assert ungradable.status == "ungradable" and ungradable.probs  # the model did run on it
    assert ungradable.refer is None and ungradable.positive == ()


def _two_class_manifest(rule: str = "any_referable", referral_threshold: float = 0.5):
    from uopsl.runtime.bundle import ClassSpec, Manifest
    from uopsl.runtime.preprocess import PreprocessConfig

    classes = (ClassSpec("normal", threshold=0.5), ClassSpec("npdr", threshold=0.3, referable=True),
               ClassSpec("dme", threshold=0.3, referable=True))
    return Manifest(classes=classes, head="sigmoid" if rule == "any_referable" else "softmax",
                    preprocess=PreprocessConfig(), files=(), referral_rule=rule,  # type: ignore[arg-type]
                    referral_threshold=referral_threshold, content_sha256="ab" * 32)


def test_a_row_without_a_result_is_never_placed_or_shown_as_a_referral() -> None:
    """Only a gradable photograph ("ok") can be referred or show a finding; a row of another status that carries
    ``refer``/``positive`` (a results file of another version, say) sorts with the ungradable and unreadable
    rows, is counted as ungradable, and shows no bold finding - as its verdict cell, "Ungradable - retake", says."""
    from uopsl.runtime.report import render_report, verdict_counts

    m = _two_class_manifest()
    referable = ["npdr", "dme"]
    odd = {"id": "u", "source": "/x/u.jpg", "key": "ku", "status": "ungradable", "refer": True,
           "probs": {"normal": 0.1, "npdr": 0.9, "dme": 0.1}, "positive": ["npdr"], "reasons": ["blurred"],
           "error": ""}
    routine = {"id": "o", "source": "/x/o.jpg", "key": "ko", "status": "ok", "refer": False,
               "probs": {"normal": 0.9, "npdr": 0.1, "dme": 0.1}, "positive": ["normal"], "reasons": [], "error": ""}
    assert urgency_key(odd, referable) == (1, 0)
    assert verdict_counts([odd, routine]) == {"ungradable": 1, "routine": 1}
    page = render_report([routine, odd], "/nonexistent", m)
    assert "Ungradable - retake" in page and "class='pos'" not in page


def test_report_sum_at_exactly_the_referral_threshold_reads_at_or_above() -> None:
    """referable_sum refers when the referable scores add up to the threshold *or more* (Manifest.decide: >=).
    npdr 0.25 + dme 0.25 = 0.5 exactly (both are exact in binary): referred, and the report must show the sum
    as reaching the threshold, not below it."""
    from uopsl.runtime.report import render_report

    m = _two_class_manifest("referable_sum", 0.5)
    probs = {"normal": 0.5, "npdr": 0.25, "dme": 0.25}
    _, refer = m.decide(np.array([[probs[c] for c in m.class_names]]))
    assert refer.tolist() == [True]
    row = {"id": "s", "source": "/x/s.jpg", "key": "ks", "status": "ok", "refer": True, "probs": probs,
           "positive": [], "reasons": [], "error": ""}
    page = render_report([row], "/nonexistent", m)
    assert "sum <span class='val'>0.500 <span class='cmp'>&ge; 0.500</span>" in page
