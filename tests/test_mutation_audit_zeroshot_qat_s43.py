"""Mutation audit (session 43) of ``uopsl.train.zero_shot`` and ``uopsl.train.qat``.

Single-point mutants (Z01-Z33) were run in a scratch tree shadowing one module against
tests/test_zero_shot_readings.py (non-CLI tests), the zero-shot test of test_mutation_audit_train_s35.py and the
fast unit tests of tests/test_qat.py. These tests close the gaps the survivors showed; expected values are worked
out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from uopsl.runtime.errors import ConfigError
from uopsl.train.qat import QatConfig, _conv_bn_pairs, _Range, _SimConv
from uopsl.train.zero_shot import SiteComparison, compare


def test_ten_of_each_class_is_not_a_small_sample() -> None:
    """Z01: ``<=`` for ``<`` at SMALL_SAMPLE would flag a comparison with exactly 10 positives as unreliable."""
    assert SiteComparison(0.5, 0.5, 0.0, 0.0, 0.0, None, 10, 10).small_sample is False
    assert SiteComparison(0.5, 0.5, 0.0, 0.0, 0.0, None, 9, 10).small_sample is True


def test_labels_of_one_class_give_no_auc() -> None:
    """Z03: with ``and`` for ``or`` a class without positives would go through DeLong and the bootstrap, and the
    report would carry spurious 'small sample' and 'DeLong p n/a' notes (logged as warnings) for an undefined AUC."""
    y = np.zeros(12, int)
    s = np.linspace(0.0, 1.0, 12)
    c = compare(y, s, s[::-1].copy(), n_boot=20)
    assert (c.with_sites, c.without, c.difference, c.p_value) == (None, None, None, None)
    assert (c.n_positive, c.n_negative) == (0, 12)
    assert c.notes == () and (c.low, c.high) == (None, None)


def test_few_positives_among_many_negatives_are_flagged_small() -> None:
    """Z04: ``max`` for ``min`` would not flag 4 positives against 30 negatives as a small sample in the notes."""
    rng = np.random.default_rng(0)
    y = np.array([1] * 4 + [0] * 30)
    a, b = rng.normal(size=34) + y, rng.normal(size=34) + y
    c = compare(y, a, b, n_boot=50)
    assert any(n.startswith("small sample (4 positives, 30 negatives") for n in c.notes)


def test_bias_learning_rate_must_be_positive() -> None:
    """Z22: a zero or negative ``bias_lr`` would be accepted and the biases would never (or wrongly) learn."""
    with pytest.raises(ConfigError, match="bias_lr"):
        QatConfig(bias_lr=0.0)


def test_a_range_that_saw_no_data_refuses_to_freeze() -> None:
    """Z25: without the check an unseen layer would get a grid from +inf/-inf instead of a clear error."""
    with pytest.raises(ConfigError, match="no calibration data"):
        _Range().freeze()


def test_conv_subclasses_and_convless_encoders_are_refused() -> None:
    """Z27, Z33: a padding Conv2d subclass would be simulated wrongly, and an encoder without convs silently."""
    class SameConv(nn.Conv2d):
        pass

    with pytest.raises(ConfigError, match="SameConv"):
        _conv_bn_pairs(nn.Sequential(SameConv(3, 4, 1)))
    with pytest.raises(ConfigError, match="no Conv2d"):
        _conv_bn_pairs(nn.Sequential(nn.ReLU()))


def test_a_batchnorm_of_another_width_is_not_folded_into_the_conv() -> None:
    """Z28: a BatchNorm whose channel count differs from the conv's output would be folded into it (wrong shapes)."""
    conv, bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5)
    pairs = _conv_bn_pairs(nn.Sequential(conv, bn))
    assert pairs == [("0", conv, None)]


def test_a_batchnorm_without_running_statistics_is_refused() -> None:
    """Z32: a BatchNorm without running statistics would crash in the fold with a TypeError, not a clear message."""
    sim = _SimConv(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False), None)
    with pytest.raises(ConfigError, match="track_running_stats"):
        sim.folded()
    assert torch.is_tensor(_SimConv(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), None).folded()[0])
