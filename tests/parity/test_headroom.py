"""Decision headroom: close calls of the reference, the candidate's error on them, and what a gate allows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from uopsl.export.parity_metrics import (
    ParityGates,
    decision_headroom,
    error_std_allowed,
    expected_changes,
    headroom_line,
    jsonable,
    referral_margins,
)
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.preprocess import PreprocessConfig


def _manifest(head: str = "sigmoid", rule: str = "any_referable") -> Manifest:
    classes = (ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.3, referable=True),
               ClassSpec("dme", threshold=0.6, referable=True))
    return Manifest(classes=classes, head=head, preprocess=PreprocessConfig(size=64), referral_rule=rule,
                    referral_threshold=0.5, files=(FileEntry("model.onnx", "onnx", "fp32"),))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_expected_changes_match_a_simulated_gaussian_error() -> None:
    rng = np.random.default_rng(0)
    margins = np.abs(rng.normal(0.0, 2.0, 20000))
    for std in (0.05, 0.2, 1.0):
        observed = int(np.sum(margins + rng.normal(0.0, std, margins.size) < 0))
        expected = expected_changes(margins, std)
        assert abs(expected - observed) < 4 * math.sqrt(expected) + 5, (std, expected, observed)
    assert expected_changes(margins, 0.0) == 0.0
    assert expected_changes(np.array([0.0, 1.0]), 0.0) == 0.5  # an exact tie goes either way


def test_allowed_error_solves_the_gate_and_names_its_limits() -> None:
    margins = np.abs(np.random.default_rng(1).normal(0.0, 1.0, 500))
    allowed = error_std_allowed(margins, 5.0)
    assert allowed is not None and 0 < allowed < 1
    assert expected_changes(margins, allowed) == pytest.approx(5.0, rel=1e-4)
    assert expected_changes(margins, allowed * 1.01) > 5.0  # the largest such error
    assert error_std_allowed(np.array([0.0, 1.0, 2.0]), 0.1) is None  # a tie alone exceeds the gate
    assert error_std_allowed(np.array([0.5, 1.0]), 1.0) == math.inf  # no error can change more than half
    smaller = error_std_allowed(margins, 1.0)
    assert smaller is not None and smaller < allowed  # a stricter gate allows less


@pytest.mark.parametrize("head,rule,units", [("sigmoid", "any_referable", "logit"),
                                             ("softmax", "any_referable", "probability"),
                                             ("sigmoid", "sum", "probability")])
def test_referral_margin_sign_is_the_manifest_decision(head: str, rule: str, units: str) -> None:
    m = _manifest(head, rule)
    rng = np.random.default_rng(2)
    probs = rng.uniform(0, 1, (400, 3))
    probs[:5, 1] = 0.3  # exactly at a threshold: referred
    if head == "softmax":
        probs /= probs.sum(axis=1, keepdims=True)
    margins, got_units = referral_margins(m, {"probs": probs})
    refer = m.decide(probs)[1]
    assert got_units == units
    assert np.array_equal(margins >= 0, refer) and np.all(margins[~refer] < 0)
    if units == "logit":  # the margin is the referable logit's distance from logit(threshold)
        i = int(np.flatnonzero(probs[:, 1] > 0.9)[0])
        z = np.log(probs[i, 1:] / (1 - probs[i, 1:])) - np.log(np.array([0.3, 0.6]) / np.array([0.7, 0.4]))
        assert margins[i] == pytest.approx(z.max())


def test_headroom_reads_a_noisy_candidate() -> None:
    m = _manifest()
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (3000, 3))
    noisy = logits + rng.normal(0.0, 0.1, logits.shape)
    ref = {"logits": logits, "probs": _sigmoid(logits)}
    cand = {"logits": noisy, "probs": _sigmoid(noisy)}
    h = decision_headroom(m, ParityGates(), ref, cand)
    top1, referral = h["top1"], h["referral"]
    # The error on a difference of two logits with independent noise 0.1 each: 0.1 * sqrt(2).
    assert top1["error_rms"] == pytest.approx(0.1 * math.sqrt(2), rel=0.05)
    assert top1["observed_changes"] == int(np.sum(logits.argmax(1) != noisy.argmax(1)))
    assert abs(top1["expected_changes"] - top1["observed_changes"]) < 4 * math.sqrt(top1["observed_changes"]) + 5
    assert top1["allowed_changes"] == pytest.approx(30.0)
    gaps = np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2]
    assert top1["close_calls"]["0.2"] == int(np.sum(gaps < 0.2))
    assert referral["units"] == "logit"
    assert referral["observed_changes"] == int(np.sum(m.decide(ref["probs"])[1] != m.decide(cand["probs"])[1]))
    assert referral["allowed_changes"] == pytest.approx(0.005 * 3000)
    for entry in (top1, referral):  # more error than the gate allows: the gap in dB is reported
        if entry["expected_changes"] > entry["allowed_changes"]:
            assert entry["precision_needed_db"] == pytest.approx(
                20 * math.log10(entry["error_rms"] / entry["error_rms_allowed"]))
    json.dumps(jsonable(h), allow_nan=False)
    line = headroom_line("top1", top1)
    assert "within 0.2 logit of their two top classes" in line and "observed" in line and "allows" in line


def test_identical_candidate_and_no_referable_class() -> None:
    m = _manifest()
    logits = np.random.default_rng(4).normal(0.0, 1.0, (50, 3))
    out = {"logits": logits, "probs": _sigmoid(logits)}
    h = decision_headroom(m, ParityGates(), out, out)
    assert h["top1"]["error_rms"] == 0.0 and h["top1"]["expected_changes"] == 0.0
    assert h["top1"]["observed_changes"] == 0 and "precision_needed_db" not in h["top1"]
    plain = Manifest(classes=(ClassSpec("a", 0.5), ClassSpec("b", 0.5)), head="sigmoid",
                     preprocess=PreprocessConfig(size=64), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    assert "referral" not in decision_headroom(plain, ParityGates(), out | {"logits": logits[:, :2],
                                                                          "probs": out["probs"][:, :2]},
                                               {"logits": logits[:, :2], "probs": out["probs"][:, :2]})
    lenient = decision_headroom(m, ParityGates(min_top1_agreement=0.0), out, out)["top1"]
    assert lenient["error_rms_allowed"] is None and lenient["allowed_note"].startswith("any error passes")
    assert "any error passes" in headroom_line("top1", lenient)
