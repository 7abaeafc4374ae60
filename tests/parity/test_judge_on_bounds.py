"""``--judge-on bounds``: a verdict a signer can state at 95 % confidence, not only on these images.

By default the gates compare point estimates, so 0 flips of 120 images is a PASS although the exact upper
bound on the flip rate is then 2.5 %, five times the gate. Judged on the bounds, a figure over its gate still
FAILs; a figure within its gate whose bound is not is INCOMPLETE ("not shown at 95 %": too few images, not a
worse file), and PASS needs every bound within its gate.
"""

from __future__ import annotations

import numpy as np
import pytest

from uopsl.export.parity_metrics import (
    FAIL,
    INCOMPLETE,
    ON_BOUNDS,
    ON_ESTIMATES,
    PASS,
    ParityGates,
    binomial_upper_bound,
    clinical,
    judge,
    judged_bound,
    numerical,
    paired_proportion_difference,
    patient_rate_bound,
    truth_from_labels,
)
from test_gate_limits import NAMES, _manifest  # the same three-class sigmoid bundle
from uopsl.runtime.errors import ConfigError


def _population(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Half diseased (dr and dme, called), half healthy; scores overlapping enough for AUCs below 1."""
    sick = np.arange(n) < n // 2
    ref = np.empty((n, 3))
    ref[:, 0] = np.where(sick, 0.2, 0.8) + rng.normal(0, 0.25, n)
    ref[:, 1] = np.where(sick, 0.7, 0.3) + rng.normal(0, 0.25, n)
    ref[:, 2] = np.where(sick, 0.7, 0.3) + rng.normal(0, 0.25, n)
    labels = [("dr", "dme") if s else ("normal",) for s in sick]
    return np.clip(ref, 0.001, 0.999), labels


def _judge(ref: np.ndarray, cand: np.ndarray, labels: list[tuple[str, ...]], on: str, n_boot: int = 300,
           patients: list[str | None] | None = None) -> tuple[dict, dict]:  # type: ignore[type-arg]
    m = _manifest()
    clin = clinical(m, truth_from_labels(m, labels, NAMES), ref, cand, [f"i{i}" for i in range(len(ref))],
                    n_boot=n_boot, seed=0, patients=patients)
    v = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin, on=on)
    return {"verdict": v, **{c.name: c for c in v.checks}}, clin


def test_identical_outputs_on_too_few_images_are_not_shown_within_the_gates() -> None:
    ref, labels = _population(120, np.random.default_rng(0))
    est, _ = _judge(ref, ref.copy(), labels, ON_ESTIMATES)
    assert est["verdict"].status == PASS
    bnd, clin = _judge(ref, ref.copy(), labels, ON_BOUNDS)
    # Not a FAIL: nothing changed, the images are too few to show it at 95 % (a FAIL would replace the FP32
    # file's PASS in the manifest, and with it the device's ONNX reference).
    assert bnd["verdict"].status == INCOMPLETE
    flips = bnd["flip_rate"]
    assert flips.status == INCOMPLETE and flips.passed is None
    # The figure compared is the exact bound the report prints: 1 - 0.05^(1/120) = 2.47 %, five times 0.5 %.
    assert flips.value == pytest.approx(binomial_upper_bound(0, 120)) == pytest.approx(clin["flips"]["upper95"])
    assert flips.detail == ("upper 95 % bound by image (referral); estimate 0: within the gate on these images, "
                            "not shown at 95 %")
    # the bound is named before its figure: "flip_rate 0.02466 > 0.005 (upper 95 % bound ..." read as a rate of 2.5 %
    assert ("flip_rate upper 95 % bound 0.02466 > 0.005 (by image (referral); estimate 0: within the gate on these "
            "images, not shown at 95 %)") in " | ".join(bnd["verdict"].reasons)
    assert bnd["top1_agreement"].value == pytest.approx(1 - binomial_upper_bound(0, 120))
    assert bnd["top1_agreement"].status == INCOMPLETE
    # Equal scores: the AUC drop's paired bootstrap interval is [0, 0], shown within the gate.
    assert bnd["auc_drop"].value == pytest.approx(0.0) and bnd["auc_drop"].status == PASS
    assert f"{bnd['auc_drop'].value:.4g}" == "0"  # minus a low end of 0.0 read "-0" in the reasons
    # Sensitivity: no positive lost of 60, bound 1 - 0.05^(1/60) = 4.87 % (the worst of dr, dme, referral).
    assert bnd["sensitivity_drop"].value == pytest.approx(binomial_upper_bound(0, 60))
    assert "0 of 60 positives lost" in bnd["sensitivity_drop"].detail


def test_enough_images_without_a_change_pass_on_bounds() -> None:
    # 600 images, 300 positives: 0 changes bound every rate within its gate (0.5 % from 598 images, 1 % from
    # 299), and no lost positive of 300 bounds the sensitivity drop at 0.99 %.
    ref, labels = _population(600, np.random.default_rng(1))
    bnd, _ = _judge(ref, ref.copy(), labels, ON_BOUNDS)
    assert bnd["verdict"].status == PASS, bnd["verdict"].reasons
    assert bnd["flip_rate"].value == pytest.approx(binomial_upper_bound(0, 600)) and bnd["flip_rate"].value <= 0.005
    assert bnd["sensitivity_drop"].value == pytest.approx(binomial_upper_bound(0, 300))
    assert bnd["sensitivity_drop"].value <= 0.01


def test_a_figure_over_its_gate_fails_on_bounds_even_without_an_interval() -> None:
    # A review: with --n-boot 0 the AUC interval is undefined, and the bounds mode used to skip the class, so an
    # AUC drop of 0.09 that FAILs on the estimates read INCOMPLETE ("reported, not gated") on the bounds.
    rng = np.random.default_rng(7)
    ref, labels = _population(1000, rng)
    cand = ref.copy()
    for side in (ref[:, 1] >= 0.4, ref[:, 1] < 0.4):  # scramble dr's scores within each side: no call changes
        idx = np.flatnonzero(side)
        cand[idx, 1] = rng.permutation(ref[idx, 1])
    est, _ = _judge(ref, cand, labels, ON_ESTIMATES, n_boot=0)
    assert est["auc_drop"].status == FAIL and est["auc_drop"].value > 0.05
    bnd, _ = _judge(ref, cand, labels, ON_BOUNDS, n_boot=0)
    assert bnd["auc_drop"] == est["auc_drop"] and bnd["verdict"].status == FAIL


def test_an_undefined_interval_leaves_a_class_within_the_gate_not_evaluated() -> None:
    ref, labels = _population(600, np.random.default_rng(3))
    bnd, _ = _judge(ref, ref.copy(), labels, ON_BOUNDS, n_boot=0)
    auc = bnd["auc_drop"]
    assert auc.passed is None and auc.status == INCOMPLETE and auc.value is None
    assert {s["class"] for s in auc.skipped} == set(NAMES)
    assert all(s["reason"] == "its 95 % interval is undefined (no bootstrap replicates)" for s in auc.skipped)
    assert bnd["verdict"].status == INCOMPLETE


def test_the_auc_bound_is_the_far_end_of_its_interval_and_sensitivity_counts_lost_positives() -> None:
    rng = np.random.default_rng(2)
    ref, labels = _population(400, rng)
    cand = np.clip(ref + rng.normal(0, 0.01, ref.shape), 0.001, 0.999)
    bnd, clin = _judge(ref, cand, labels, ON_BOUNDS)
    est, _ = _judge(ref, cand, labels, ON_ESTIMATES)
    rows = {r["name"]: r for r in clin["per_class"]}
    assert est["auc_drop"].status == PASS and est["sensitivity_drop"].status == PASS
    # AUC: minus the low end of the candidate-minus-reference interval, never below the estimate.
    assert bnd["auc_drop"].value == pytest.approx(max(-rows[k]["auc_difference"]["low"] for k in NAMES))
    assert est["auc_drop"].value < bnd["auc_drop"].value <= 0.005 and bnd["auc_drop"].status == PASS
    # Sensitivity: the net drop is 0 (a gained positive offsets the lost one), the lost positives are not.
    positive = np.array(["dr" in lab for lab in labels])
    for k, threshold in ((1, 0.4), (2, 0.5)):
        lost = positive & (ref[:, k] >= threshold) & (cand[:, k] < threshold)
        assert rows[NAMES[k]]["lost_positives"]["changes"] == int(lost.sum())
        assert rows[NAMES[k]]["lost_positives"]["n"] == 200
    # The estimate too counts the positive lost (since session 45; before, it judged the net drop, 0 here).
    assert rows["dme"]["lost_positives"]["changes"] == 1
    assert est["sensitivity_drop"].value == pytest.approx(1 / 200) and est["sensitivity_drop"].status == PASS
    worst = max(d["upper95"] for d in [rows["dr"]["lost_positives"], rows["dme"]["lost_positives"],
                                        clin["referral"]["lost_positives"]])
    assert bnd["sensitivity_drop"].value == pytest.approx(worst) == pytest.approx(binomial_upper_bound(1, 200))
    assert bnd["sensitivity_drop"].status == INCOMPLETE and "1 of 200 positives lost" in bnd["sensitivity_drop"].detail


def test_patients_bound_each_rate_whatever_their_images_correlation() -> None:
    # 120 images of 60 patients (two eyes each): 0 changes bound the rate at 4.87 % over patients.
    ref, labels = _population(120, np.random.default_rng(5))
    labels = [labels[2 * (i // 2)] for i in range(120)]
    patients: list[str | None] = [f"p{i // 2}" for i in range(120)]
    ref[[10, 11], 2] = 0.9  # patient p5 is referred for dme in both eyes, so its referral cannot change
    cand = ref.copy()
    cand[[10, 11], 1] = np.where(ref[[10, 11], 1] >= 0.4, 0.01, 0.99)  # p5's dr call changes in both eyes
    bnd, clin = _judge(ref, cand, labels, ON_BOUNDS, patients=patients)
    by_patient = clin["flips"]["by_patient"]
    assert (by_patient["changes"], by_patient["n"]) == (0, 60)
    assert by_patient["images_per_patient"] == {"min": 2, "max": 2, "mean": 2.0}
    assert by_patient["upper95_images"] == pytest.approx(binomial_upper_bound(0, 60))  # equal sizes: factor 1
    assert bnd["flip_rate"].value == pytest.approx(1 - 0.05 ** (1 / 60))
    assert bnd["flip_rate"].detail.startswith("upper 95 % bound by patient (referral)")
    dr = next(r for r in clin["per_class"] if r["name"] == "dr")["decision_changes"]
    assert (dr["changes"], dr["n"], dr["by_patient"]["changes"], dr["by_patient"]["n"]) == (2, 120, 1, 60)
    # The estimate (2 of 120 = 1.7 %) is over the 0.5 % gate already: FAIL, judged as on the estimates.
    assert bnd["class_flip_rate"].status == FAIL and bnd["class_flip_rate"].value == pytest.approx(2 / 120)
    est, _ = _judge(ref, cand, labels, ON_ESTIMATES, patients=patients)
    plain, _ = _judge(ref, cand, labels, ON_ESTIMATES)
    assert [c.value for c in est["verdict"].checks] == [c.value for c in plain["verdict"].checks]


def test_unequal_patients_widen_the_patient_bound_by_their_largest_share() -> None:
    # Patients of 1 and 9 images: a change in a 9-image patient weighs 9 images. The patient count's bound is
    # scaled by max / mean images (9 / 5), which keeps it a bound on the image rate (a review's simulation:
    # unscaled, it fell below the true rate in 13 % of draws instead of 5 %).
    clusters = np.repeat(np.arange(200), np.where(np.arange(200) % 2 == 0, 1, 9))
    changed = np.zeros(len(clusters), bool)
    changed[clusters == 1] = True  # one 9-image patient, every image changed
    b = patient_rate_bound(changed, clusters)
    assert b is not None and (b["changes"], b["n"]) == (1, 200)
    assert b["images_per_patient"] == {"min": 1, "max": 9, "mean": 5.0}
    assert b["upper95_images"] == pytest.approx(binomial_upper_bound(1, 200) * 9 / 5)
    image = {"changes": 9, "n": 1000, "rate": 0.009, "upper95": binomial_upper_bound(9, 1000), "by_patient": b}
    assert judged_bound(image) == (pytest.approx(b["upper95_images"]), "by patient")
    # Positives only (``within``): the patients holding a positive image, and their images among the positives.
    within = clusters < 10
    sub = patient_rate_bound(changed, clusters, within)
    assert sub is not None and (sub["changes"], sub["n"]) == (1, 10)
    assert patient_rate_bound(changed, None) is None
    assert patient_rate_bound(changed, clusters, np.zeros(len(clusters), bool)) is None


def test_newcombe_interval_does_not_collapse_without_discordant_pairs() -> None:
    # Newcombe's method 10 with its corrected phi (Altman et al. 2000): uncorrected, 25 + 25 concordant pairs
    # gave phi = 1 and [0, 0], which the bounds mode would have read as a proven zero drop.
    d = paired_proportion_difference(25, 0, 0, 25)
    assert d["estimate"] == 0.0 and d["low"] < -0.03 and d["high"] > 0.03
    assert d["low"] == pytest.approx(-d["high"])
    # A negative cross product is not corrected; a small positive one (<= n/2) counts as 0.
    assert paired_proportion_difference(0, 10, 10, 0)["low"] < paired_proportion_difference(0, 10, 10, 0)["high"]
    near = paired_proportion_difference(1, 5, 5, 1)  # ad - bc = -24 < 0
    assert near["low"] < 0 < near["high"]
    # Discordant pairs only one way: the interval excludes 0 on that side.
    lost = paired_proportion_difference(40, 10, 0, 50)  # 10 positives lost by the second
    assert lost["estimate"] == pytest.approx(-0.1) and lost["high"] < 0


def test_an_unknown_basis_is_refused() -> None:
    ref, labels = _population(20, np.random.default_rng(4))
    with pytest.raises(ConfigError, match="judge on one of"):
        _judge(ref, ref, labels, "worst-case")


def test_figures_never_read_as_their_limit_or_as_one() -> None:
    """A review: 0.98996 failed as "top1_agreement 0.99 < 0.99", and 0.99995 read "estimate 1"."""
    from uopsl.export.parity_metrics import GateCheck, _incomplete_reason, _relation

    assert _relation(GateCheck("top1_agreement", 0.98996, 0.99, False)) == "top1_agreement 0.98996 < 0.99"
    assert _relation(GateCheck("flip_rate", 0.008333333, 0.005, False)) == "flip_rate 0.008333 > 0.005"
    unproven = GateCheck("top1_agreement", 0.9998, 0.99995, None, "lower 95 % bound", (), INCOMPLETE)
    assert _incomplete_reason(unproven) == "top1_agreement lower 95 % bound 0.9998 < 0.99995"
    partly = GateCheck("auc_drop", 0.0049996, 0.005, True, "", ({"class": "amd", "reason": "few"},), INCOMPLETE)
    assert _incomplete_reason(partly).startswith("auc_drop 0.0049996 <= 0.005 but not evaluated for amd (few)")


def test_all_intervals_undefined_says_so_in_the_detail() -> None:
    ref, labels = _population(600, np.random.default_rng(3))
    bnd, _ = _judge(ref, ref.copy(), labels, ON_BOUNDS, n_boot=0)
    # each class named, the reason said once for all of them (session 51)
    assert bnd["auc_drop"].detail == ("no drop in any class; not evaluated for " + ", ".join(NAMES[:-1])
                                      + f" and {NAMES[-1]} (its 95 % interval is undefined (no bootstrap replicates))")
    assert [s["class"] for s in bnd["auc_drop"].skipped] == list(NAMES)


def test_the_html_summary_shows_the_measured_figures_and_the_note_what_was_gated() -> None:
    # A review: judged on the bounds, the summary's "worst sens. drop" read the lost-positives bound (0.0487)
    # for a model that changed nothing, and the note said the Newcombe interval was gated.
    from dataclasses import asdict

    from uopsl.export.parity_html import _candidate, _summary

    ref, labels = _population(120, np.random.default_rng(0))
    bnd, clin = _judge(ref, ref.copy(), labels, ON_BOUNDS)
    est, _ = _judge(ref, ref.copy(), labels, ON_ESTIMATES)
    cand = {"name": "ort-cpu:model.onnx", "precision": "fp32", "verdict": INCOMPLETE, "passed": False,
            "judged_on": ON_BOUNDS, "clinical": clin, "checks": [asdict(c) for c in bnd["verdict"].checks],
            "estimate_checks": [asdict(c) for c in est["verdict"].checks],
            "numerical": numerical({"probs": ref, "logits": ref}, {"probs": ref, "logits": ref})}
    row = _summary({"candidates": [cand]}).split("<tr>")[2]
    cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
    assert cells[4] == "0.00%" and cells[10] == "0" and cells[11] == "0"  # class calls, AUC drop, sens. drop
    page = _candidate(cand, {}, 50)
    assert "lost positives' bound (sensitivity)" in page and "gated by its low end" not in page
    assert "lost 0/60 (&le;4.9%)" in page


def test_a_class_the_data_cannot_evaluate_keeps_the_bounds_verdict_incomplete() -> None:
    """A mutation audit (session 34): judged on the bounds, ignoring the classes the data could not evaluate
    (no labels, too few cases) went unnoticed; such a run would read PASS where estimates read INCOMPLETE."""
    ref, labels = _population(600, np.random.default_rng(1))  # 600 images: every bound within its gate
    m = _manifest()
    space = [n for n in NAMES if n != "dme"]  # the data have no dme labels
    clin = clinical(m, truth_from_labels(m, [tuple(x for x in lab if x != "dme") for lab in labels], space),
                    ref, ref.copy(), [f"i{i}" for i in range(len(ref))], n_boot=300, seed=0)
    num = numerical({"probs": ref, "logits": ref}, {"probs": ref, "logits": ref})
    assert judge(ParityGates(), num, clin, on=ON_ESTIMATES).status == INCOMPLETE
    verdict = judge(ParityGates(), num, clin, on=ON_BOUNDS)
    checks = {c.name: c for c in verdict.checks}
    assert checks["auc_drop"].passed is True and checks["auc_drop"].status == INCOMPLETE
    assert {s["class"] for s in checks["auc_drop"].skipped} == {"dme"}
    assert checks["sensitivity_drop"].status == INCOMPLETE
    assert verdict.status == INCOMPLETE and any("not evaluated for dme" in r for r in verdict.reasons), verdict.reasons


def test_the_fewest_images_for_a_limit_that_is_itself_a_bound_are_exact() -> None:
    """A mutation audit (session 34): the search below the closed form's float answer (one image too many for
    about half of these limits) was not pinned."""
    from uopsl.export.parity_metrics import min_images_for_zero_changes

    for n in (2, 3, 10, 11, 120, 598):
        assert min_images_for_zero_changes(binomial_upper_bound(0, n)) == n


def test_a_run_with_no_candidate_is_never_a_pass() -> None:
    """A mutation audit (session 34): overall_status([]) reading PASS went unnoticed (validate_bundle refuses an
    empty list earlier; direct callers do not)."""
    from uopsl.export.parity_metrics import overall_status

    assert overall_status([]) == FAIL
    assert overall_status([PASS, INCOMPLETE]) == INCOMPLETE and overall_status([PASS]) == PASS


def test_the_summary_shows_the_flip_bound_the_bounds_verdict_gates() -> None:
    # A session-45 review: the summary's "referral flips (upper 95 %)" read <= 2.5 % (by image) beside an
    # INCOMPLETE made on the 4.87 % bound by patient.
    from uopsl.export.parity_html import _flip_bound

    by_image = {"changes": 0, "n": 120, "rate": 0.0, "upper95": 0.0247}
    assert _flip_bound(by_image) == "2.5%"
    assert _flip_bound({**by_image, "by_patient": {"upper95_images": 0.0487}}) == "4.9% by patient"
    assert _flip_bound({**by_image, "by_patient": {"upper95_images": 0.01}}) == "2.5%"
