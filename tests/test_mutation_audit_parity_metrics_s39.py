"""Mutation audit (session 39) of the parity figures and gates: ``export/parity_metrics.py``.

The figures a validation engineer signs (AUC, sensitivity, specificity, flipped referrals, changed findings,
top-1 agreement, their exact bounds and the verdict drawn from them) were put through single-point mutants
in a scratch copy of the module; each test here pins a behaviour that a mutant slipped past every test that
exercises the module (``tests/parity/`` and the ``validate`` tests). The mutant ids are those of the audit's
list, named in each docstring. Every expected figure is worked out by hand in the test or by a reference
library (scipy's beta quantile for the exact bounds); nothing is copied from the module's output. The
numbers are hand-made (no model, no photographs), so the file runs in a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from threeclass import NAMES
from threeclass import manifest as _manifest
from uopsl.export.parity_metrics import (
    ParityGates,
    binomial_upper_bound,
    min_images_for_zero_changes,
    parse_gates,
    patient_rate_bound,
)
from uopsl.runtime.bundle import Manifest
from uopsl.runtime.errors import ConfigError


def _cp_upper(k: int, n: int) -> float:
    """The exact one-sided 95 % Clopper-Pearson upper bound from scipy: the 0.95 quantile of Beta(k + 1, n - k)."""
    return 1.0 if k == n else float(beta.ppf(0.95, k + 1, n - k))


# -- gates -------------------------------------------------------------------------------------------------
def test_a_gate_given_as_true_or_false_is_refused() -> None:
    """M02: a bool is an int to Python; ``ParityGates(max_flip_rate=True)`` read as a 100 % flip gate (every
    file passes it) and ``False`` as a 0 gate. A gate is a number, so both are refused."""
    for value in (True, False):
        with pytest.raises(ConfigError, match="max_flip_rate must be a number"):
            ParityGates(max_flip_rate=value)
        with pytest.raises(ConfigError, match="min_top1_agreement must be a number"):
            ParityGates(min_top1_agreement=value)


def test_empty_items_in_the_gates_text_are_skipped() -> None:
    """M04: a trailing comma or a doubled one (``--gates "flips=0.01,"``, easy to type in a shell script) names
    no gate; it must be skipped, not refused as 'key=value pairs' (which stopped the validation)."""
    assert parse_gates("flips=0.01,") == ParityGates(max_flip_rate=0.01)
    assert parse_gates(",auc=0.002, ,sens=0.02,,") == ParityGates(max_auc_drop=0.002, max_sensitivity_drop=0.02)


# -- exact bounds ------------------------------------------------------------------------------------------
def test_more_changes_than_images_is_refused() -> None:
    """M09: 5 changes in 3 images is a caller's bug (counts swapped, or counted over other images); the bound
    must refuse it, not return a number computed from logs of negative counts."""
    for changes, n in ((5, 3), (1, 0), (-1, 4)):
        with pytest.raises(ConfigError, match="0 <= changes <= n"):
            binomial_upper_bound(changes, n)
    assert binomial_upper_bound(3, 3) == 1.0


def test_a_limit_of_one_is_shown_by_one_image() -> None:
    """M16: a gate that allows every image to change (limit 1) is shown by a single image (the bound of 0 of 1
    is 0.95 <= 1); no image at all shows nothing (its bound is undefined), so the answer is 1, not 0."""
    assert min_images_for_zero_changes(1.0) == 1
    assert binomial_upper_bound(0, 1) == pytest.approx(0.95)


def test_the_patient_widened_bound_is_a_rate_and_stops_at_one() -> None:
    """M11: the patient bound on the image rate is the patient-count bound times max / mean images per
    patient; widened past 1 it is no rate (a report read 'upper bound 187 %'), so it stops at 1. Patient 0
    holds 9 images and patients 1..9 one each: 18 images, mean 1.8, factor 9 / 1.8 = 5; one patient of 10
    changed bounds the patient rate at the Beta(2, 9) 0.95 quantile (about 0.39), times 5 is over 1."""
    clusters = np.array([0] * 9 + list(range(1, 10)))
    changed = clusters == 1
    b = patient_rate_bound(changed, clusters)
    assert b is not None and (b["changes"], b["n"]) == (1, 10)
    assert b["upper95"] == pytest.approx(_cp_upper(1, 10), abs=1e-9)
    assert _cp_upper(1, 10) * 5 > 1.0
    assert b["upper95_images"] == 1.0


# -- numerical figures -------------------------------------------------------------------------------------
def test_numerical_figures_by_hand() -> None:
    """M20, M21, M23, M25, M26: the figures of the numerical parity table on outputs whose answers are known.

    Probabilities: 100 images of one class, the candidate off by 0, 1, ..., 99 thousandths; numpy's (linear)
    99th percentile of 0..99 sits at rank 0.99 * 99 = 98.01, so 0.09801 (the 95th: 0.09405). Logits: rows at
    right angles (cosine 0), two all-zero rows (cosine 1: the same output, not an unrelated one) and rows
    pointing the same way ((3, 4) against (6, 8): cosine 1): one 0 and 99 ones, mean 0.99, minimum 0. Site
    maps: a map against itself shifted by 10 (Pearson r = 1: correlation ignores an offset), one against its
    reverse (r = -1), a constant pair (undefined, left out) and 97 scaled ones (r = 1): over the 99 defined
    rows the mean is (98 - 1) / 99 and the minimum -1."""
    from uopsl.export.parity_metrics import numerical

    n = 100
    ref_p = np.full((n, 1), 0.5)
    cand_p = ref_p + np.arange(n)[:, None] / 1000.0
    ref_l = np.zeros((n, 2))
    cand_l = np.zeros((n, 2))
    ref_l[0], cand_l[0] = (1.0, 0.0), (0.0, 1.0)  # at right angles: 0
    ref_l[2:], cand_l[2:] = (3.0, 4.0), (6.0, 8.0)  # the same direction: 1; row 1 is zero in both: 1
    maps_ref = np.tile(np.array([1.0, 2.0, 3.0, 4.0]), (n, 1))
    maps_cand = maps_ref * 3.0  # r = 1
    maps_cand[0] = maps_ref[0] + 10.0  # r = 1 (only an offset)
    maps_cand[1] = maps_ref[1][::-1]  # r = -1
    maps_ref[2], maps_cand[2] = 7.0, 7.0  # constant: undefined
    out = numerical({"probs": ref_p, "logits": ref_l, "site_maps": maps_ref.reshape(n, 2, 2)},
                    {"probs": cand_p, "logits": cand_l, "site_maps": maps_cand.reshape(n, 2, 2)})
    assert out["max_abs_prob_diff"] == pytest.approx(0.099)
    assert out["p99_abs_prob_diff"] == pytest.approx(0.09801)
    assert out["mean_abs_prob_diff"] == pytest.approx(0.0495)
    assert out["logit_cosine_min"] == pytest.approx(0.0, abs=1e-12)
    assert out["logit_cosine_mean"] == pytest.approx((n - 1) / n)
    assert out["max_abs_logit_diff"] == pytest.approx(4.0)  # 8 - 4
    assert out["site_map_corr_min"] == pytest.approx(-1.0)
    assert out["site_map_corr_mean"] == pytest.approx((98 - 1) / 99)


# -- clinical figures --------------------------------------------------------------------------------------
def _swapping_calls() -> tuple[Manifest, dict, list[str]]:  # type: ignore[type-arg]
    """40 images, two per patient (p0..p19). Images 0..19 have DR, 20..39 are normal (no DME anywhere).

    The reference calls DR on 0..17 (2 missed: 18, 19) and on 20, 21, 22 (3 false positives). The candidate
    loses 0, 1, 2 (true positive -> false negative), gains 18 (false negative -> true positive), drops 20
    (false positive -> true negative) and adds 30, 31 (true negative -> false positive). Image 25's 'normal'
    call (not referable) changes too. DR is the only referable call made, so the referral is the DR call.
    """
    n = 40
    ref = np.full((n, 3), 0.1)
    ref[20:, 0] = 0.9  # 'normal' called on the normal images
    ref[[*range(18), 20, 21, 22], 1] = 0.9
    cand = ref.copy()
    cand[[0, 1, 2, 20], 1] = 0.1
    cand[[18, 30, 31], 1] = 0.9
    cand[25, 0] = 0.1
    labels = [("dr",)] * 20 + [("normal",)] * 20
    ids = [f"i{i}" for i in range(n)]
    patients: list[str | None] = [f"p{i // 2}" for i in range(n)]
    from uopsl.export.parity_metrics import clinical, truth_from_labels

    m = _manifest()
    clin = clinical(m, truth_from_labels(m, labels, NAMES), ref, cand, ids, n_boot=0, patients=patients)
    return m, clin, ids


def test_changed_calls_are_counted_in_each_direction() -> None:
    """M30: a net sensitivity change of -2 positives hides 3 lost and 1 gained; the positives lost (what
    ``--judge-on bounds`` gates for a sensitivity) are the 3, not the 1 gained, and among the negatives 2
    became false positives and 1 false positive went away. Each count carries its exact bound (scipy)."""
    _, clin, _ = _swapping_calls()
    dr = next(r for r in clin["per_class"] if r["name"] == "dr")
    lost = dr["lost_positives"]
    assert (lost["changes"], lost["n"]) == (3, 20)
    assert lost["upper95"] == pytest.approx(_cp_upper(3, 20), abs=1e-9)
    # The lost positives' patients: p0 (images 0, 1) and p1 (image 2), of the 10 patients holding a positive.
    assert (lost["by_patient"]["changes"], lost["by_patient"]["n"]) == (2, 10)
    sens = dr["sensitivity_changes"]
    assert (sens["changes"], sens["n"], sens["tp_to_fn"], sens["fn_to_tp"]) == (4, 20, 3, 1)
    spec = dr["specificity_changes"]
    assert (spec["changes"], spec["n"], spec["tn_to_fp"], spec["fp_to_tn"]) == (3, 20, 2, 1)
    # The paired difference of the sensitivities: 1 gained less 3 lost, of 20 positives.
    assert dr["sensitivity_difference"]["estimate"] == pytest.approx(-0.1)


def test_flips_are_split_by_direction_and_counted_by_patient() -> None:
    """M43, M44: 7 referrals flip: 3 to 'refer' (images 18, 30, 31) and 4 to 'no referral' (0, 1, 2,
    20). They fall on 5 patients (p0, p1, p9, p10, p15), not 7. The images with a changed referable finding
    are the same 7 on the same 5 patients: image 25's changed 'normal' call (patient p12) is no referable
    finding. The worst referable class is dr (7 calls changed), not dme (none)."""
    _, clin, _ = _swapping_calls()
    flips = clin["flips"]
    assert (flips["n"], flips["to_refer"], flips["to_no_refer"]) == (7, 3, 4)
    assert flips["rate"] == pytest.approx(7 / 40) and flips["upper95"] == pytest.approx(_cp_upper(7, 40), abs=1e-9)
    assert flips["n_patients"] == 5
    found = clin["finding_changes"]
    assert (found["changes"], found["n"], found["n_patients"]) == (7, 40, 5)
    assert (found["by_patient"]["changes"], found["by_patient"]["n"]) == (5, 20)
    assert clin["class_flips"]["worst_class"] == "dr"
    assert clin["class_flips"]["max_rate"] == pytest.approx(7 / 40)


def test_each_changed_finding_lists_both_models_findings() -> None:
    """M48: each listed image says which referable calls changed, the reference's and the candidate's
    referable findings, and whether the referral changed with it. Image 18: DR newly called, so the
    reference found nothing, the candidate DR, and the referral changed."""
    _, clin, _ = _swapping_calls()
    items = {it["id"]: it for it in clin["finding_changes"]["items"]}
    assert sorted(items, key=lambda s: int(s[1:])) == ["i0", "i1", "i2", "i18", "i20", "i30", "i31"]
    i18 = items["i18"]
    assert (i18["changed"], i18["reference_findings"], i18["candidate_findings"]) == (["dr"], [], ["dr"])
    assert i18["referral_changed"] is True
    i0 = items["i0"]
    assert (i0["reference_findings"], i0["candidate_findings"], i0["referral_changed"]) == (["dr"], [], True)


def test_an_empty_patient_id_counts_as_unknown() -> None:
    """M32: a CSV's empty patient cell reads as ``""``; like None it is an image without a patient, so the report
    counts it among ``n_images_without_patient`` (the bootstrap already gives it a cluster of its own). Here
    p1 holds two images and the two without an id are one patient each: 3 patients, 2 images unaccounted."""
    from uopsl.export.parity_metrics import patient_facts

    assert patient_facts(["p1", "", None, "p1"]) == {"known": True, "n_patients": 3, "n_images_without_patient": 2}
    assert patient_facts(["", None]) == {"known": False, "n_patients": None, "n_images_without_patient": 2}


def test_a_referral_without_a_positive_image_says_so() -> None:
    """M41: with no referable finding in the labels, the referral's sensitivity is undefined because there is
    no positive image, which is what the report must say (with the check dropped it read 'only 0 positive
    images ... validate on more', as if a few more normal images would do). 12 labelled normal images."""
    from uopsl.export.parity_metrics import clinical, truth_from_labels

    m = _manifest()
    ref = np.tile([0.9, 0.1, 0.1], (12, 1))
    truth = truth_from_labels(m, [("normal",)] * 12, NAMES)
    referral = clinical(m, truth, ref, ref.copy(), [f"i{i}" for i in range(12)], n_boot=0)["referral"]
    assert (referral["n_positive"], referral["n_negative"]) == (0, 12)
    assert referral["not_evaluated"]["sensitivity"] == "no positive image in the data"
    assert "specificity" not in referral["not_evaluated"]  # 12 negatives: computed (below the floor, not gated)


def test_a_patient_list_of_the_wrong_length_is_refused() -> None:
    """M80: one patient id per image; a list one short (a CSV with a missing row) must be refused by name,
    not misalign the patients with the images or crash on an index deep in the figures."""
    from uopsl.export.parity_metrics import clinical, truth_from_labels

    m = _manifest()
    ref = np.tile([0.9, 0.1, 0.1], (4, 1))
    truth = truth_from_labels(m, [("normal",)] * 4, NAMES)
    with pytest.raises(ConfigError, match=r"patients must hold one id per image \(4\); got 3"):
        clinical(m, truth, ref, ref.copy(), ["a", "b", "c", "d"], n_boot=0, patients=["p1", "p1", "p2"])


# -- decision headroom -------------------------------------------------------------------------------------
def test_a_close_call_is_strictly_inside_its_margin() -> None:
    """M54: "within 0.2 logit" counts the images whose two top logits are less than 0.2 apart; a gap of exactly
    0.05, 0.1, 0.2 or 0.5 is not within that margin. Gaps 0.2, 0.1, 0.5 and 0.05 (the second logit 0, so
    each gap is the first logit exactly): 0 under 0.05, 1 under 0.1, 2 under 0.2, 3 under 0.5."""
    from uopsl.export.parity_metrics import decision_headroom

    logits = np.array([[0.2, 0.0, -1.0], [0.1, 0.0, -1.0], [0.5, 0.0, -1.0], [0.05, 0.0, -1.0]])
    out = {"logits": logits, "probs": 1.0 / (1.0 + np.exp(-logits))}
    top1 = decision_headroom(_manifest(), ParityGates(), out, out)["top1"]
    assert top1["close_calls"] == {"0.05": 0, "0.1": 1, "0.2": 2, "0.5": 3}


# -- the verdict -------------------------------------------------------------------------------------------
def _judged(ref: np.ndarray, cand: np.ndarray, labels: list[tuple[str, ...]], on: str) -> dict:  # type: ignore[type-arg]
    from uopsl.export.parity_metrics import clinical, judge, numerical, truth_from_labels

    m = _manifest()
    clin = clinical(m, truth_from_labels(m, labels, NAMES), ref, cand, [f"i{i}" for i in range(len(ref))],
                    n_boot=200, seed=0)
    v = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin, on=on)
    return {"verdict": v, **{c.name: c for c in v.checks}}


def _referral_only_loss() -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """200 images: 0..89 have DR and DME (both called by both models), 90..99 DR only, 100..199 are normal.

    The reference misses DR on image 99 but refers it through a false DME call, which the candidate drops: the
    referral loses a positive (1 of 100: a drop of exactly the 0.01 gate) while no class loses one (DR was
    missed by both, and image 99 is a DME negative). On image 0 the candidate swaps which of DR and DME
    scores highest, a top-1 change with no call changed: top-1 changes 2 of 200 (images 0 and 99), referral
    flips 1 of 200 (image 99).
    """
    n = 200
    ref = np.full((n, 3), 0.1)
    ref[100:, 0] = 0.9
    ref[:90, 1:] = 0.9
    ref[90:99, 1] = 0.9
    ref[99, 2] = 0.9
    ref[0, 1] = 0.95
    cand = ref.copy()
    cand[99, 2] = 0.1
    cand[0, 1], cand[0, 2] = 0.9, 0.95
    labels = [("dr", "dme")] * 90 + [("dr",)] * 10 + [("normal",)] * 100
    return ref, cand, labels


def test_the_referrals_own_sensitivity_drop_is_gated() -> None:
    """M68: the referral's sensitivity drop is the reference's less the candidate's (1.0 - 0.99 = 0.01 here,
    at the gate); read the other way round it is -0.01 and the largest drop would be a class's 0. A second
    lost positive (image 98's DR call dropped too, its referral with it) is a drop of 0.02 that must FAIL."""
    from uopsl.export.parity_metrics import FAIL, ON_ESTIMATES

    ref, cand, labels = _referral_only_loss()
    sens = _judged(ref, cand, labels, ON_ESTIMATES)["sensitivity_drop"]
    assert sens.value == pytest.approx(0.01) and sens.passed is True and sens.detail.startswith(
        "largest: referral, 1 of 100 positives lost")
    cand[98, 1] = 0.1
    sens = _judged(ref, cand, labels, ON_ESTIMATES)["sensitivity_drop"]
    assert sens.status == FAIL and sens.value == pytest.approx(0.02) and sens.detail.startswith(
        "largest: referral, 2 of 100 positives lost")


def test_judged_on_bounds_the_referral_and_top1_use_their_own_counts() -> None:
    """M72, M73: on the bounds, the sensitivity gate takes the largest bound on lost positives over the
    referable classes and the referral: here the referral's (1 of 100, the Beta(2, 99) 0.95 quantile, about
    4.7 %), above DR's 0 of 100 and DME's 0 of 90. The top-1 gate's bound is that of top-1's own changes (2 of
    200), not of the referral flips (1 of 200)."""
    from uopsl.export.parity_metrics import ON_BOUNDS

    ref, cand, labels = _referral_only_loss()
    bnd = _judged(ref, cand, labels, ON_BOUNDS)
    sens = bnd["sensitivity_drop"]
    assert sens.value == pytest.approx(_cp_upper(1, 100), abs=1e-9)
    assert "(referral)" in sens.detail and "1 of 100 positives lost" in sens.detail
    assert bnd["top1_agreement"].value == pytest.approx(1.0 - _cp_upper(2, 200), abs=1e-9)
    assert bnd["flip_rate"].value == pytest.approx(_cp_upper(1, 200), abs=1e-9)
