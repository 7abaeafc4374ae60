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
    failed_gate_headroom,
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
                                             ("sigmoid", "referable_sum", "probability")])
def test_referral_margin_sign_is_the_manifest_decision(head: str, rule: str, units: str) -> None:
    m = _manifest(head, rule)
    rng = np.random.default_rng(2)
    probs = rng.uniform(0.01, 0.99, (400, 3))
    if head == "softmax":
        probs /= probs.sum(axis=1, keepdims=True)
    probs[:5, 1] = m.thresholds[1]  # exactly at dr's threshold: referred under any_referable
    logits = np.log(probs / (1 - probs))
    margins, got_units = referral_margins(m, {"probs": probs, "logits": logits})
    refer = m.decide(probs)[1]
    assert got_units == units
    assert np.array_equal(margins >= 0, refer) and np.all(margins[~refer] < 0)
    assert refer[:5].all() or rule != "any_referable"
    thresholds, mask = m.thresholds.astype(np.float64), np.array([False, True, True])
    if units == "logit":  # the referable logit's distance from logit(threshold)
        want = (logits[:, mask] - np.log(thresholds[mask] / (1 - thresholds[mask]))).max(axis=1)
    elif rule == "any_referable":
        want = (probs[:, mask] - thresholds[mask]).max(axis=1)
    else:  # summed referable probability against the referral threshold (0.5)
        want = probs[:, mask].sum(axis=1) - 0.5
    assert np.allclose(np.abs(margins), np.abs(want), atol=1e-12)


def test_sigmoid_referral_reads_the_logits_not_the_saturated_probabilities() -> None:
    """float32 probabilities near 1 cannot give back a logit of 15; the margin must come from the logits."""
    m = _manifest()
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 20.0, (2000, 3)).astype(np.float32)
    noisy = (logits + rng.normal(0.0, 0.02, logits.shape)).astype(np.float32)
    ref = {"logits": logits, "probs": _sigmoid(logits.astype(np.float64)).astype(np.float32)}
    cand = {"logits": noisy, "probs": _sigmoid(noisy.astype(np.float64)).astype(np.float32)}
    entry = decision_headroom(m, ParityGates(), ref, cand)["referral"]
    assert entry["units"] == "logit"
    assert entry["error_rms"] < 0.03  # the injected error (max of two noisy logits), not float32 rounding
    assert entry["images_not_modelled"] == 0


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
    assert "whose two top classes are within 0.2 logit" in line and "observed" in line
    assert "limit is reached at" in line and "dB more precision needed" in line


def test_identical_candidate_and_no_referable_class() -> None:
    m = _manifest()
    logits = np.random.default_rng(4).normal(0.0, 1.0, (50, 3))
    out = {"logits": logits, "probs": _sigmoid(logits)}
    h = decision_headroom(m, ParityGates(), out, out)
    assert h["top1"]["error_rms"] == 0.0 and h["top1"]["expected_changes"] == 0.0
    assert h["top1"]["observed_changes"] == 0 and "precision_needed_db" not in h["top1"]
    plain = Manifest(classes=(ClassSpec("a", threshold=0.5), ClassSpec("b", threshold=0.5)), head="sigmoid",
                     preprocess=PreprocessConfig(size=64), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    two = {"logits": logits[:, :2], "probs": out["probs"][:, :2]}
    assert set(decision_headroom(plain, ParityGates(), two, two)) == {"top1"}
    lenient = decision_headroom(m, ParityGates(min_top1_agreement=0.0), out, out)["top1"]
    assert lenient["error_rms_allowed"] is None and lenient["allowed_note"].startswith("any error passes")
    assert "any error passes" in headroom_line("top1", lenient)
    assert decision_headroom(m, ParityGates(), {"logits": np.zeros((0, 3)), "probs": np.zeros((0, 3))},
                             {"logits": np.zeros((0, 3)), "probs": np.zeros((0, 3))}) == {}


def test_a_gate_that_allows_no_change() -> None:
    m = _manifest()
    rng = np.random.default_rng(6)
    logits = rng.normal(0.0, 2.0, (200, 3))
    noisy = logits + rng.normal(0.0, 0.05, logits.shape)
    h = decision_headroom(m, ParityGates(min_top1_agreement=1.0, max_flip_rate=0.0),
                          {"logits": logits, "probs": _sigmoid(logits)}, {"logits": noisy, "probs": _sigmoid(noisy)})
    for entry in h.values():
        assert entry["allowed_changes"] == 0.0 and entry["error_rms_allowed"] is None
        assert entry["allowed_note"].startswith("the gate allows no change") and "precision_needed_db" not in entry
    assert error_std_allowed(np.array([0.3, 1.0]), 0.0) == 0.0
    assert error_std_allowed(np.array([1e-12, 1.0]), 0.1) < 1e-12  # the lower bound follows the smallest margin


def test_an_overflowing_candidate_is_counted_not_modelled() -> None:
    """An FP16 file whose logits overflow still yields finite sigmoid probabilities: no crash, no NaN."""
    m = _manifest()
    logits = np.random.default_rng(7).normal(0.0, 2.0, (100, 3))
    bad = logits.copy()
    bad[:3, 1] = np.inf
    h = decision_headroom(m, ParityGates(), {"logits": logits, "probs": _sigmoid(logits)},
                          {"logits": bad, "probs": _sigmoid(bad)})
    for key in ("top1", "referral"):
        assert h[key]["images_not_modelled"] >= 1 and math.isfinite(h[key]["error_rms"])
        line = headroom_line(key, h[key])
        assert "not modelled" in line and "nan" not in line
    json.dumps(jsonable(h), allow_nan=False)
    empty = dict(h["top1"], error_rms=None, expected_changes=None)  # what strict JSON keeps of NaN
    assert "error RMS n/a predicts n/a" in headroom_line("top1", empty)


def test_failed_gate_headroom_follows_the_failed_checks() -> None:
    m = _manifest()
    rng = np.random.default_rng(8)
    logits = rng.normal(0.0, 1.0, (300, 3))
    noisy = logits + rng.normal(0.0, 0.3, logits.shape)
    h = decision_headroom(m, ParityGates(), {"logits": logits, "probs": _sigmoid(logits)},
                          {"logits": noisy, "probs": _sigmoid(noisy)})
    assert h["referral"]["units"] == "logit"
    cand = {"headroom": h, "checks": [{"name": "flip_rate", "passed": False},
                                      {"name": "top1_agreement", "passed": True}]}
    lines = failed_gate_headroom(cand)
    assert len(lines) == 1 and lines[0].startswith("referral: ") and "of the referral boundary" in lines[0]
    cand["checks"][1]["passed"] = False
    assert [line.split(":")[0] for line in failed_gate_headroom(cand)] == ["top1", "referral"]
    assert failed_gate_headroom({"checks": cand["checks"]}) == []  # an older report without headroom
