"""The decision-headroom figures when the Gaussian error model underpredicts a failed gate (session 57).

A validation review: top-1 failed with 4 changes observed (3.35 allowed, 1.0 predicted), and the report said
"precision needed 0.0 dB" with "the gate's limit is reached at 0.0409" against an error RMS of 0.0125: a
comfortable margin for a gate that had failed.
"""

from __future__ import annotations

import numpy as np

from uopsl.export.parity_html import _headroom
from uopsl.export.parity_metrics import _headroom_entry, headroom_line


def _close_calls_broken(observed: int, allowed: float) -> dict:
    margin = np.r_[np.full(96, 5.0), np.full(4, 0.01)]
    error = np.r_[np.zeros(96), np.full(4, -0.02)]  # every close call flips, nothing else moves
    return _headroom_entry(margin, error, observed, allowed, "logit")


def test_a_failed_gate_within_the_modelled_error_gets_no_zero_db_figure() -> None:
    e = _close_calls_broken(observed=4, allowed=1.0)
    assert e["error_rms"] < e["error_rms_allowed"]  # the model says the error is small enough ...
    assert e["observed_changes"] > e["allowed_changes"]  # ... and the gate failed
    assert e["precision_needed_db"] is None
    assert e["model_note"].startswith("4 change(s) observed where the error RMS predicts 0.0 and the gate allows 1")
    line = headroom_line("top1", e)
    assert "yet 4 change(s) observed" in line and "dB" not in line, line
    html = _headroom({"top1": e})
    assert "more than a Gaussian spread predicts" in html and ">0.0<" not in html


def test_a_passing_gate_within_the_modelled_error_still_reads_zero_db() -> None:
    e = _close_calls_broken(observed=1, allowed=1.0)
    assert e["precision_needed_db"] == 0.0 and "model_note" not in e
