"""The decision-headroom figures when a gate fails with the modelled error below its limit (session 57).

A validation review: top-1 failed with 4 changes observed (3.35 allowed, 1.0 predicted), and the report said
"precision needed 0.0 dB" with "the gate's limit is reached at 0.0409" against an error RMS of 0.0125: a
comfortable margin for a gate that had failed. A second review: the first fix called every such failure an
underprediction, though a file at the limit fails about half the time, and gave the note to a gate that passed
within the gates' float tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from uopsl.export.parity_html import _headroom
from uopsl.export.parity_metrics import _headroom_entry, headroom_line, poisson_tail


def _close_calls_broken(observed: int, allowed: float) -> dict:
    margin = np.r_[np.full(96, 5.0), np.full(4, 0.01)]
    error = np.r_[np.zeros(96), np.full(4, -0.02)]  # every close call flips, nothing else moves
    return _headroom_entry(margin, error, observed, allowed, "logit")


def test_poisson_tail() -> None:
    assert poisson_tail(0, 2.0) == 1.0 and poisson_tail(3, 0.0) == 0.0
    assert poisson_tail(4, 1.0) == pytest.approx(1 - math.exp(-1) * (1 + 1 + 1 / 2 + 1 / 6))
    assert poisson_tail(4, 3.28) == pytest.approx(0.42, abs=0.01)  # the second review's example


def test_a_failed_gate_the_model_cannot_explain_gets_no_db_figure_but_a_note() -> None:
    e = _close_calls_broken(observed=4, allowed=1.0)
    assert e["error_rms"] < e["error_rms_allowed"]  # the model says the error is small enough ...
    assert e["observed_changes"] > e["allowed_changes"]  # ... and the gate failed
    assert e["precision_needed_db"] is None and e["changes_chance"] < 0.05
    assert e["model_note"].startswith("4 change(s) observed where the error RMS predicts 0.0 and the gate allows 1 "
                                      "(a chance of ")
    assert "the model underpredicts the changes here" in e["model_note"]
    line = headroom_line("top1", e)
    assert "yet 4 change(s) observed" in line and "dB" not in line, line
    html = _headroom({"top1": e})
    assert "the model underpredicts" in html and ">0.0<" not in html


def test_a_failed_gate_at_the_limit_is_said_to_be_chance() -> None:
    """The second review's case: 335 images, a gate allowing 3.35 changes, the error RMS at 0.98 of the limit,
    4 changes: as likely as not under the model (P(>= 4 | 3.3) = 0.42), no underprediction."""
    from uopsl.export.parity_metrics import error_std_allowed

    margin = np.random.default_rng(1).uniform(-3, 3, 335)
    z = np.random.default_rng(2).normal(0, 1, 335)
    error = 0.98 * error_std_allowed(margin, 3.35) * z / np.sqrt(np.mean(z * z))
    e = _headroom_entry(margin, error, 4, 3.35, "logit")
    assert e["error_rms"] < e["error_rms_allowed"] and e["changes_chance"] > 0.3, e
    assert e["precision_needed_db"] is None
    assert "the error is at the gate's limit, where a file fails about as often as it passes" in e["model_note"]
    assert "underpredicts" not in e["model_note"]


def test_a_passing_gate_gets_no_note() -> None:
    e = _close_calls_broken(observed=1, allowed=1.0)
    assert e["precision_needed_db"] == 0.0 and "model_note" not in e
    # The gates' float tolerance: (1 - 0.9) * 30 is 2.999999999999999, and 3 changes pass that gate.
    e = _close_calls_broken(observed=3, allowed=(1 - 0.9) * 30)
    assert e["precision_needed_db"] == 0.0 and "model_note" not in e
