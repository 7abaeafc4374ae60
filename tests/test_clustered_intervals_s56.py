"""Sensitivity and specificity intervals by patient in ``uopsl validate`` (session 56).

Before: the Wilson intervals of each sensitivity and specificity in parity.json treated every image as
independent, also where the report knew that patients held several images (``uopsl evaluate`` resamples
patients): two photographs of one retina read as two cases, and the interval was too narrow. Now they are
computed on the cases' effective number (Kish's design effect of the clustering), which equals the old
interval where each patient holds one image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from uopsl.export.parity_metrics import _rates
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.metrics import (
    WILSON_DESIGN_EFFECT,
    clustered_proportion_interval,
    proportion_interval,
)


def test_one_case_per_cluster_is_the_plain_wilson_interval() -> None:
    hits = np.array([1] * 15 + [0] * 5, bool)
    iv, n_eff = clustered_proportion_interval(hits, np.arange(20))
    plain = proportion_interval(15, 20)
    assert n_eff == 20 and (iv.low, iv.high, iv.estimate) == pytest.approx((plain.low, plain.high, plain.estimate))
    assert iv.method == WILSON_DESIGN_EFFECT


def test_copies_within_a_patient_add_no_information() -> None:
    """Two identical calls per patient: 40 images carry what 20 patients do."""
    hits = np.repeat(np.array([1] * 15 + [0] * 5, bool), 2)
    iv, n_eff = clustered_proportion_interval(hits, np.repeat(np.arange(20), 2))
    plain_20, plain_40 = proportion_interval(15, 20), proportion_interval(30, 40)
    assert n_eff == pytest.approx(20)
    assert (iv.low, iv.high) == pytest.approx((plain_20.low, plain_20.high))
    assert iv.high - iv.low > plain_40.high - plain_40.low  # what the image-level interval understated


def test_independent_looking_pairs_keep_between_the_limits() -> None:
    """Pairs whose calls disagree as often as chance: the effective size stays within [patients, images]."""
    rng = np.random.default_rng(0)
    hits = rng.random(200) < 0.8
    iv, n_eff = clustered_proportion_interval(hits, np.repeat(np.arange(100), 2))
    assert 100 <= n_eff <= 200
    assert iv.low < hits.mean() < iv.high


@pytest.mark.parametrize("value", [0, 1])
def test_at_0_or_100_percent_each_patient_counts_once(value: int) -> None:
    sizes = [3, 1, 1, 2, 1, 2]  # 10 images of 6 patients
    clusters = np.repeat(np.arange(6), sizes)
    iv, n_eff = clustered_proportion_interval(np.full(10, bool(value)), clusters)
    assert n_eff == pytest.approx(100 / sum(s * s for s in sizes))
    assert iv.estimate == value and (iv.high if value else iv.low) == value
    plain = proportion_interval(10 * value, 10)
    assert iv.high - iv.low > plain.high - plain.low


def test_no_case_and_bad_input() -> None:
    iv, n_eff = clustered_proportion_interval(np.zeros(0, bool), np.zeros(0))
    assert math.isnan(iv.estimate) and math.isnan(n_eff)
    with pytest.raises(ConfigError, match="one id per case"):
        clustered_proportion_interval(np.ones(3, bool), np.arange(2))
    with pytest.raises(ConfigError, match="alpha must be in"):
        clustered_proportion_interval(np.ones(3, bool), np.arange(3), alpha=1.5)


def test_validate_rates_use_the_patients_where_known() -> None:
    """parity_metrics._rates: 19 detected positives of 10 patients read wider than 19 independent ones."""
    truth = np.array([True] * 19 + [False] * 21)
    called = truth.copy()
    patients = np.concatenate([np.repeat(np.arange(10), [2] * 9 + [1]), np.arange(10, 31)])
    by_image, by_patient = _rates(truth, called), _rates(truth, called, patients)
    assert by_image["sensitivity_ci95"][0] == pytest.approx(proportion_interval(19, 19).low)
    assert by_patient["sensitivity_ci95"][0] < by_image["sensitivity_ci95"][0]
    # the negatives are one image each: the same interval both ways
    assert by_patient["specificity_ci95"] == pytest.approx(by_image["specificity_ci95"])


def test_a_zero_variance_estimate_is_a_design_effect_below_one_not_full_correlation() -> None:
    """Every patient at exactly the overall rate (one of two eyes detected each): the cluster-robust variance is
    0, a design effect of 0, capped at the number of images like any design effect below 1. It was sent to the
    fully-correlated floor instead, so one more detected singleton halved the interval (a review)."""
    hits = np.tile([True, False], 10)
    clusters = np.repeat(np.arange(10), 2)
    iv, n_eff = clustered_proportion_interval(hits, clusters)
    assert n_eff == 20
    plain = proportion_interval(10, 20)
    assert (iv.low, iv.high) == pytest.approx((plain.low, plain.high))
    iv2, n_eff2 = clustered_proportion_interval(np.append(hits, True), np.append(clusters, 10))
    assert abs(n_eff2 - n_eff) < 3  # one more image moves the effective size by about one


@pytest.mark.parametrize("ids", [[None, "a", "b"], [float("nan"), 1.0, 2.0]])
def test_missing_cluster_ids_are_refused(ids: list[object]) -> None:
    with pytest.raises(ConfigError, match="cluster id|NaN"):
        clustered_proportion_interval(np.ones(3, bool), np.array(ids, dtype=object if None in ids else float))
