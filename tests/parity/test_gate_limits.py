"""Every parity gate just inside and just past its limit, and each figure's direction (hand-made numbers).

A test-suite audit (session 15) found that reversing the per-class sensitivity drop, reversing the AUC drop,
counting flips one way only, or doubling every gate's limit left the suite green without the TVHL photographs.
"""

from __future__ import annotations

import numpy as np
import pytest

from threeclass import NAMES
from threeclass import manifest as _manifest
from uopsl.export.parity_metrics import ParityGates, clinical, judge, numerical, truth_from_labels, truth_from_reference


def _checks(gates: ParityGates, ref: np.ndarray, cand: np.ndarray, truth) -> dict:  # type: ignore[no-untyped-def,type-arg]
    m = _manifest()
    clin = clinical(m, truth, ref, cand, [f"i{i}" for i in range(len(ref))], n_boot=0)
    v = judge(gates, numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin)
    return {"verdict": v, "clin": clin, **{c.name: c for c in v.checks}}


def _population(n: int) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Half diseased (dr and dme, both called), half healthy (nothing called); well separated scores."""
    ref = np.tile(np.array([[0.1, 0.9, 0.9]]), (n, 1))
    ref[n // 2:] = [0.9, 0.1, 0.1]
    labels = [("dr", "dme")] * (n // 2) + [("normal",)] * (n - n // 2)
    return ref, labels


def test_a_class_losing_sensitivity_fails_even_when_the_referral_does_not_change() -> None:
    # Before: the drop was taken the wrong way round and the referral's (unchanged here) hid it.
    ref, labels = _population(20)
    cand = ref.copy()
    cand[:2, 1] = 0.3  # 2 of 10 dr calls lost; dme still refers those images
    c = _checks(ParityGates(), ref, cand, truth_from_labels(_manifest(), labels, NAMES))
    assert c["clin"]["flips"]["n"] == 0
    assert c["sensitivity_drop"].value == pytest.approx(0.2) and c["sensitivity_drop"].passed is False
    # Session 57: the detail says how many positives were lost and the net change a signer computes.
    assert c["sensitivity_drop"].detail == ("largest: dr, 2 of 10 positives lost; positives gained do not offset "
                                            "them: the net sensitivity change is -0.2") and not c["verdict"].passed


def test_a_class_gaining_sensitivity_is_no_drop() -> None:
    ref, labels = _population(20)
    ref[:2, 1] = 0.3  # the reference misses 2 dr images the candidate finds
    cand = ref.copy()
    cand[:2, 1] = 0.9
    c = _checks(ParityGates(max_class_flip_rate=1.0), ref, cand, truth_from_labels(_manifest(), labels, NAMES))
    assert c["sensitivity_drop"].value == pytest.approx(0.0) and c["sensitivity_drop"].passed is True  # referral's 0


def test_the_auc_drop_is_reference_minus_candidate() -> None:
    ref, labels = _population(20)
    ref[:, 2] = np.linspace(0.9, 0.1, 20)  # dme ranks every diseased image above every healthy one
    cand = ref.copy()
    cand[9, 2], cand[10, 2] = cand[10, 2], cand[9, 2]  # one diseased/healthy pair swapped: AUC 1 -> 0.99
    gates = ParityGates(max_class_flip_rate=1.0, max_flip_rate=1.0, max_sensitivity_drop=1.0, min_top1_agreement=0.0)
    worse = _checks(gates, ref, cand, truth_from_labels(_manifest(), labels, NAMES))
    assert worse["auc_drop"].value == pytest.approx(0.01) and worse["auc_drop"].passed is False
    assert worse["auc_drop"].detail == "largest drop: class dme"
    better = _checks(gates, cand, ref, truth_from_labels(_manifest(), labels, NAMES))  # the other way round
    assert better["auc_drop"].value == pytest.approx(0.0) and better["auc_drop"].passed  # dr's and normal's 0


def test_flips_are_counted_both_ways() -> None:
    ref, _ = _population(20)
    cand = ref.copy()
    cand[0, 1:] = 0.1  # refer -> no refer
    cand[15, 1] = 0.9  # no refer -> refer
    c = _checks(ParityGates(), ref, cand, truth_from_reference(_manifest(), ref))
    flips = c["clin"]["flips"]
    assert flips["n"] == 2 and sorted(f["id"] for f in flips["items"]) == ["i0", "i15"]
    assert flips["to_no_refer"] == 1 and c["flip_rate"].value == pytest.approx(0.1)


@pytest.mark.parametrize(("n_flips", "passes"), [(2, True), (3, False)])
def test_the_flip_gate_at_its_limit_and_one_past_it(n_flips: int, passes: bool) -> None:
    # 400 images, limit 0.5 %: 2 flips is exactly the limit and passes, 3 (0.75 %) fail.
    ref, _ = _population(400)
    cand = ref.copy()
    cand[:n_flips, 1:] = 0.1
    c = _checks(ParityGates(), ref, cand, truth_from_reference(_manifest(), ref))
    assert c["flip_rate"].value == pytest.approx(n_flips / 400) and c["flip_rate"].passed is passes


@pytest.mark.parametrize(("diff", "passes"), [(0.01, True), (0.0101, False)])
def test_the_probability_gate_at_its_limit_and_one_past_it(diff: float, passes: bool) -> None:
    ref, _ = _population(20)
    cand = ref.copy()
    cand[3, 0] += diff
    c = _checks(ParityGates(max_prob_diff=0.01), ref, cand, truth_from_reference(_manifest(), ref))
    assert c["max_prob_diff"].passed is passes


@pytest.mark.parametrize(("limit", "passes"), [(0.95, True), (0.951, False)])
def test_the_top1_gate_at_its_limit_and_one_past_it(limit: float, passes: bool) -> None:
    ref, _ = _population(20)
    cand = ref.copy()
    cand[0] = [0.1, 0.8, 0.9]  # the top class moves from dr (first of two equal) to dme: 1 image of 20
    c = _checks(ParityGates(min_top1_agreement=limit), ref, cand, truth_from_reference(_manifest(), ref))
    assert c["top1_agreement"].value == pytest.approx(0.95) and c["top1_agreement"].passed is passes
