"""Mutation audit (session 43) of ``export/layerwise.py`` (``uopsl.export.layerwise``).

Single-point mutants (L01-L24 run; L25-L58 written but not run before the deadline) were applied in a scratch tree
that shadows only this module, and tests/parity/test_layerwise.py plus tests/test_mutation_audit_export_s36.py were
run against each. The tests below close the gaps among the survivors: the cosine of all-zero tensors, the refusal of
mismatched shapes, the refusal of empty image sets and of bad ``batch_size`` / ``max_suggestions``, and the notes
that explain a report without suggestions. Expected values are worked out by hand in each docstring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime.errors import BackendError, ConfigError

from test_mutation_audit_export_s36 import _two_branch_models  # the same hand-built QDQ graph


def test_cosine_of_zero_tensors_and_shape_mismatch() -> None:
    """L04, L05, L06: two all-zero tensors agree (cosine 1.0: a ReLU that is dead in both graphs is no error); one
    zero and one nonzero tensor have cosine 0.0 (either way round, never a division by zero); tensors of different
    sizes are refused with BackendError instead of numpy broadcasting or a bare ValueError."""
    from uopsl.export.layerwise import _Accumulator

    both = _Accumulator()
    both.add(np.zeros(3), np.zeros(3))
    assert both.cosine == 1.0
    for ref, test in ((np.zeros(3), np.ones(3)), (np.ones(3), np.zeros(3))):
        acc = _Accumulator()
        acc.add(ref, test)
        assert acc.cosine == 0.0
    with pytest.raises(BackendError, match="shapes differ"):
        _Accumulator().add(np.zeros((2, 3)), np.zeros((2, 4)))


def test_argument_checks_come_before_reading_the_models(tmp_path: Path) -> None:
    """L10, L12, L13, L14: no images, batch_size 0 and max_suggestions -1 are refused by name before any file is
    read; max_suggestions 0 is allowed (so the missing files are what is reported). A user passing an empty set
    would otherwise get an IndexError deep in the report, and batch_size 0 a silently empty range loop."""
    from uopsl.export.layerwise import layerwise_errors

    missing = tmp_path / "none.onnx"
    imgs = np.zeros((1, 4, 4, 1), np.uint8)
    with pytest.raises(ConfigError, match="uint8 images"):
        layerwise_errors(missing, missing, np.zeros((0, 4, 4, 1), np.uint8))
    with pytest.raises(ConfigError, match="batch_size must be"):
        layerwise_errors(missing, missing, imgs, batch_size=0)
    with pytest.raises(ConfigError, match="batch_size must be"):
        layerwise_errors(missing, missing, imgs, max_suggestions=-1)
    with pytest.raises(ConfigError, match="cannot read"):
        layerwise_errors(missing, missing, imgs, max_suggestions=0)


def test_notes_explain_a_report_without_suggestions(tmp_path: Path) -> None:
    """L19, L20: sa = 0.25 clips a above 63.75 and sb = 0.75 clips b above 191.25 on pixels up to 255, so all three
    layers are below 30 dB (checked by the s36 audit). With the default bar A and B are culprits: no note. With
    min_drop_db = 1000 nobody is a culprit: one note, "3 layer(s) are below 30 dB but none loses >= 1000 dB". With a
    threshold of -1000 dB no layer is below: the single "every quantized layer keeps >= -1000 dB" note."""
    from uopsl.export.layerwise import layerwise_errors

    fpath, qpath = _two_branch_models(tmp_path, 0.25, 0.75)
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    assert layerwise_errors(fpath, qpath, images).notes == ()
    gradual = layerwise_errors(fpath, qpath, images, min_drop_db=1000.0)
    assert gradual.suggested_exclude == ()
    assert len(gradual.notes) == 1 and gradual.notes[0].startswith("3 layer(s) are below 30 dB but none loses >= 1000")
    fine = layerwise_errors(fpath, qpath, images, sqnr_threshold_db=-1000.0)
    assert fine.notes == ("every quantized layer keeps >= -1000 dB SQNR against float",)


def test_limits_of_the_threshold_the_drop_bar_and_the_range_check(tmp_path: Path) -> None:
    """L15, L16, L17: re-implemented here, a_q = min(round(x / 0.25), 255) * 0.25, b_q likewise with 0.75 (exact in
    float32), s = 10 log10(sum x^2 / sum err^2); A and B read the exact x (120 dB), so each loses 120 - s. A layer
    exactly at the threshold is not below it (B drops out of the suggestions); a layer losing exactly min_drop_db is
    a culprit (B stays); a range 5 dB under the threshold is a bad range (A is suggested with C, the other reader
    of a, whose Q/DQ pair it shares: without C the tensor a would stay quantized and the exclusion would not help)."""
    from uopsl.export.layerwise import layerwise_errors

    fpath, qpath = _two_branch_models(tmp_path, 0.25, 0.75)
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    x = images.astype(np.float64)

    def sq(test: np.ndarray) -> float:
        return min(120.0, 10 * np.log10((x**2).sum() / ((test - x) ** 2).sum()))

    s_a = sq(np.minimum(np.round(x / 0.25), 255) * 0.25)
    s_b = sq(np.minimum(np.round(x / 0.75), 255) * 0.75)
    assert s_a < s_b < 30.0
    at_b = layerwise_errors(fpath, qpath, images, sqnr_threshold_db=round(s_b, 3))
    assert at_b.suggested_exclude == ("A", "C")
    bar_b = layerwise_errors(fpath, qpath, images, min_drop_db=round(120.0 - s_b, 3))
    assert bar_b.suggested_exclude == ("A", "C", "B")
    near = layerwise_errors(fpath, qpath, images, sqnr_threshold_db=s_a + 5.0, max_suggestions=1)
    assert near.suggested_exclude == ("A", "C")
