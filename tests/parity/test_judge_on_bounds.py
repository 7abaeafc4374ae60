"""``--judge-on bounds``: a verdict a signer can state at 95 % confidence, not only on these images.

By default the gates compare point estimates, so 0 flips of 120 images is a PASS although the exact upper
bound on the flip rate is then 2.5 %, five times the gate. Judged on the bounds, the same images FAIL, and
the figure each check compares is the bound the report prints beside the estimate.
"""

from __future__ import annotations

import numpy as np
import pytest

from uopsl.export.parity_metrics import (
    ON_BOUNDS,
    ON_ESTIMATES,
    PASS,
    ParityGates,
    binomial_upper_bound,
    clinical,
    patient_rate_bound,
    judge,
    min_images_for_zero_changes,
    numerical,
    truth_from_labels,
)
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import PreprocessConfig

NAMES = ("normal", "dr", "dme")


def _manifest() -> Manifest:
    classes = (ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.4, referable=True),
               ClassSpec("dme", threshold=0.5, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(size=64),
                    files=(FileEntry("model.onnx", "onnx", "fp32"),))


def _population(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Half diseased (dr and dme), half healthy; scores overlapping enough for AUCs below 1."""
    sick = np.arange(n) < n // 2
    ref = np.empty((n, 3))
    ref[:, 0] = np.where(sick, 0.2, 0.8) + rng.normal(0, 0.25, n)
    ref[:, 1] = np.where(sick, 0.7, 0.3) + rng.normal(0, 0.25, n)
    ref[:, 2] = np.where(sick, 0.7, 0.3) + rng.normal(0, 0.25, n)
    labels = [("dr", "dme") if s else ("normal",) for s in sick]
    return np.clip(ref, 0.001, 0.999), labels


def _judge(ref: np.ndarray, cand: np.ndarray, labels: list[tuple[str, ...]], on: str, n_boot: int = 300,
           patients: list[str | None] | None = None) -> tuple[dict[str, object], dict[str, object]]:
    m = _manifest()
    clin = clinical(m, truth_from_labels(m, labels, NAMES), ref, cand, [f"i{i}" for i in range(len(ref))],
                    n_boot=n_boot, seed=0, patients=patients)
    v = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin, on=on)
    return {"verdict": v, **{c.name: c for c in v.checks}}, clin


def test_identical_outputs_on_too_few_images_pass_on_estimates_and_fail_on_bounds() -> None:
    ref, labels = _population(120, np.random.default_rng(0))
    est, clin = _judge(ref, ref.copy(), labels, ON_ESTIMATES)
    assert est["verdict"].status == PASS  # type: ignore[attr-defined]
    bnd, _ = _judge(ref, ref.copy(), labels, ON_BOUNDS)
    assert bnd["verdict"].status == "FAIL"  # type: ignore[attr-defined]
    flips = bnd["flip_rate"]
    # The figure compared is the exact bound the report prints: 1 - 0.05^(1/120) = 2.47 %, five times 0.5 %.
    assert flips.value == pytest.approx(binomial_upper_bound(0, 120)) == pytest.approx(clin["flips"]["upper95"])
    assert flips.value == pytest.approx(1 - 0.05 ** (1 / 120)) and flips.passed is False
    assert flips.detail.startswith("upper 95 % bound by image; 0 referral decision(s) flipped")
    # Top-1 agreement is judged on its lower bound (1 - the disagreement's upper bound).
    assert bnd["top1_agreement"].value == pytest.approx(1 - binomial_upper_bound(0, 120))
    assert bnd["top1_agreement"].passed is False
    # No change at all: both drops' intervals are [0, 0] for the AUC (a paired bootstrap of equal scores) and
    # Newcombe's interval for sensitivity, which does not collapse: its low end is below zero.
    assert bnd["auc_drop"].value == pytest.approx(0.0) and bnd["auc_drop"].passed is True
    assert bnd["sensitivity_drop"].value > 0.0


def test_enough_images_without_a_change_pass_on_bounds() -> None:
    # The flip gate's bound reaches 0.5 % from min_images_for_zero_changes(0.005) images (598); top-1's 1 %
    # from half that. 600 images without a change: every change-rate bound within its gate.
    n = min_images_for_zero_changes(0.005)
    assert n is not None and n <= 600
    ref, labels = _population(600, np.random.default_rng(1))
    bnd, _ = _judge(ref, ref.copy(), labels, ON_BOUNDS)
    rates = {name: bnd[name] for name in ("flip_rate", "class_flip_rate", "finding_change_rate", "top1_agreement")}
    assert all(c.passed for c in rates.values()), rates  # type: ignore[attr-defined]
    # The sensitivity drop's Newcombe interval is still wider than 1 point at 300 positives (~1.3 points):
    # the bound verdict says so instead of passing on an estimate of 0.
    assert bnd["sensitivity_drop"].passed is False and 0.01 < bnd["sensitivity_drop"].value < 0.02


def test_the_auc_and_sensitivity_bounds_are_the_far_ends_of_their_intervals() -> None:
    rng = np.random.default_rng(2)
    ref, labels = _population(200, rng)
    cand = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0.001, 0.999)
    bnd, clin = _judge(ref, cand, labels, ON_BOUNDS)
    est, _ = _judge(ref, cand, labels, ON_ESTIMATES)
    rows = {r["name"]: r for r in clin["per_class"]}
    # candidate minus reference: the largest drop is minus the low end, and it is never below the estimate
    auc_bounds = {k: -rows[k]["auc_difference"]["low"] for k in NAMES}
    assert bnd["auc_drop"].value == pytest.approx(max(auc_bounds.values()))
    assert bnd["auc_drop"].value >= est["auc_drop"].value  # type: ignore[attr-defined]
    sens_bounds = [-rows[k]["sensitivity_difference"]["low"] for k in ("dr", "dme")]
    sens_bounds.append(-clin["referral"]["sensitivity_difference"]["low"])
    assert bnd["sensitivity_drop"].value == pytest.approx(max(sens_bounds))
    assert bnd["sensitivity_drop"].value >= est["sensitivity_drop"].value  # type: ignore[attr-defined]
    worst = max(r["decision_changes"]["upper95"] for r in clin["per_class"] if r["referable"])
    assert bnd["class_flip_rate"].value == pytest.approx(worst)
    assert bnd["finding_change_rate"].value == pytest.approx(clin["finding_changes"]["upper95"])


def test_an_undefined_interval_leaves_the_class_not_evaluated_on_bounds() -> None:
    # Without bootstrap replicates the AUC interval is undefined: on estimates the gate still holds, on
    # bounds it cannot vouch, so the verdict cannot be PASS and the check names the reason.
    ref, labels = _population(600, np.random.default_rng(3))
    est, _ = _judge(ref, ref.copy(), labels, ON_ESTIMATES, n_boot=0)
    assert est["auc_drop"].status == PASS  # type: ignore[attr-defined]
    bnd, _ = _judge(ref, ref.copy(), labels, ON_BOUNDS, n_boot=0)
    auc = bnd["auc_drop"]
    assert auc.passed is None and auc.status == "INCOMPLETE"  # type: ignore[attr-defined]
    assert {s["class"] for s in auc.skipped} == set(NAMES)  # type: ignore[attr-defined]
    assert all("95 % interval is undefined (no bootstrap replicates)" in s["reason"]
               for s in auc.skipped)  # type: ignore[attr-defined]
    assert bnd["verdict"].status != PASS  # type: ignore[attr-defined]


def test_an_unknown_basis_is_refused() -> None:
    ref, labels = _population(20, np.random.default_rng(4))
    with pytest.raises(ConfigError, match="judge on one of"):
        _judge(ref, ref, labels, "worst-case")


def test_with_patients_known_each_rate_is_also_bounded_over_patients_and_bounds_gate_the_larger() -> None:
    # 120 images of 60 patients (two eyes each, rows 2i and 2i + 1): images of one patient are correlated, so
    # 0 changes bound the rate at 1 - 0.05^(1/60) = 4.87 % over patients, not 2.47 % over images.
    ref, labels = _population(120, np.random.default_rng(5))
    labels = [labels[2 * (i // 2)] for i in range(120)]  # both eyes of a patient carry the patient's labels
    patients: list[str | None] = [f"p{i // 2}" for i in range(120)]
    ref[[10, 11], 2] = 0.9  # patient p5 is referred for dme in both eyes, so its referral cannot change
    cand = ref.copy()
    cand[[10, 11], 1] = np.where(ref[[10, 11], 1] >= 0.4, 0.01, 0.99)  # p5's dr call changes in both eyes
    bnd, clin = _judge(ref, cand, labels, ON_BOUNDS, patients=patients)
    flips = clin["flips"]
    assert flips["by_patient"] == {"changes": 0, "n": 60, "rate": 0.0, "upper95": binomial_upper_bound(0, 60)}
    assert bnd["flip_rate"].value == pytest.approx(1 - 0.05 ** (1 / 60))
    assert bnd["flip_rate"].detail.startswith("upper 95 % bound by patient; 0 referral decision(s) flipped")
    dr = next(r for r in clin["per_class"] if r["name"] == "dr")["decision_changes"]
    assert (dr["changes"], dr["n"], dr["by_patient"]["changes"], dr["by_patient"]["n"]) == (2, 120, 1, 60)
    assert bnd["class_flip_rate"].value == pytest.approx(binomial_upper_bound(1, 60))
    assert "by patient; largest: class dr (2 call(s) changed)" in bnd["class_flip_rate"].detail
    assert clin["finding_changes"]["by_patient"]["changes"] == 1
    top1 = clin["top1_disagreement"]
    assert bnd["top1_agreement"].value == pytest.approx(1 - max(top1["upper95"], top1["by_patient"]["upper95"]))
    # Estimates are unchanged by the patients: the same rates as without them.
    est, _ = _judge(ref, cand, labels, ON_ESTIMATES, patients=patients)
    plain, _ = _judge(ref, cand, labels, ON_ESTIMATES)
    assert [c.value for c in est["verdict"].checks] == [c.value for c in plain["verdict"].checks]  # type: ignore[attr-defined]


def test_each_image_its_own_patient_bounds_alike_and_unknown_patients_add_nothing() -> None:
    changed = np.array([True, False, False, True, False])
    assert patient_rate_bound(changed, None) is None
    own = patient_rate_bound(changed, np.arange(5))
    assert own is not None and own["changes"] == 2 and own["n"] == 5
    assert own["upper95"] == pytest.approx(binomial_upper_bound(2, 5))
    ref, labels = _population(40, np.random.default_rng(6))
    _, clin = _judge(ref, ref.copy(), labels, ON_ESTIMATES)
    assert "by_patient" not in clin["flips"] and "by_patient" not in clin["top1_disagreement"]
