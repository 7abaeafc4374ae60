"""Session 36's mutation audit of ``uopsl.train.evaluate``: tests for the mutants that survived.

Each test names the single-point bug it catches (applied alone to a scratch
copy, the test failed; on the unmodified code it passes). Expected values are
worked out by hand in the comments.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from uopsl.runtime import metrics as M
from uopsl.train import evaluate as E


def test_a_class_positive_in_every_validation_image_falls_back_for_both_kinds_of_class(
        caplog: pytest.LogCaptureFixture) -> None:
    """Mutant: only "no positives" fell back; a class present in every validation image then got a
    target-sensitivity threshold (referable) or a Youden threshold from a curve without negatives."""
    y = np.ones((6, 2))  # every image has both classes: no negatives for either
    p = np.tile(np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]], np.float32), (1, 2))
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        recs = E.choose_operating_points(y, p, [True, False], 0.9, names=["dr", "amd"])
    for r in recs:
        assert (r.method, r.threshold) == ("fallback", E.FALLBACK_THRESHOLD)
        assert (r.n_positive, r.n_negative) == (6, 0)
        assert "no negatives" in r.note
        # At 0.5: scores 0.9..0.5 are called (5 of 6); specificity undefined without negatives.
        assert r.sensitivity == pytest.approx(5 / 6) and math.isnan(r.specificity)
    assert sum("falls back" in m for m in caplog.messages) == 2


def test_a_referable_threshold_that_calls_every_negative_is_flagged_even_with_a_good_auc(
        caplog: pytest.LogCaptureFixture) -> None:
    """Mutant: ``specificity < 0`` for ``<= 0``: a threshold with specificity exactly 0 went unflagged.

    10 positives, target 0.9: 9 must reach the threshold, so it is the 9th highest positive score, 0.1.
    Both negatives (0.2, 0.3) lie above it: specificity 0. AUC = 8 * 2 / (10 * 2) = 0.8 > 0.5, so only the
    specificity rule can flag it.
    """
    pos = [0.9] * 8 + [0.1, 0.05]
    neg = [0.2, 0.3]
    y = np.array([1] * 10 + [0] * 2, float)[:, None]
    p = np.array(pos + neg, np.float32)[:, None]
    assert M.roc_auc(y[:, 0] > 0.5, p[:, 0]) == pytest.approx(0.8)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        (r,) = E.choose_operating_points(y, p, [True], 0.9, names=["dr"])
    assert r.method == "target_sensitivity"
    assert r.threshold == pytest.approx(0.1) and r.sensitivity == pytest.approx(0.9) and r.specificity == 0.0
    assert "not a useful operating point" in r.note and "specificity 0" in r.note
    assert any("not a useful operating point" in m for m in caplog.messages)


def test_only_referable_classes_record_a_target_sensitivity() -> None:
    """Mutant: every class's target sensitivity was kept, so a non-referable class's fallback record read as a
    threshold chosen for a sensitivity target (the Youden branch passes None itself; the fallback takes it).
    Column 0 has no validation positive (fallback for both kinds); column 1 separates perfectly (Youden)."""
    y = np.array([[0, 1], [0, 1], [0, 0], [0, 0]], float)
    p = np.array([[0.9, 0.8], [0.8, 0.9], [0.2, 0.2], [0.1, 0.1]], np.float32)
    (ref,) = E.choose_operating_points(y[:, :1], p[:, :1], [True], 0.85, names=["dr"])
    other, youden = E.choose_operating_points(y, p, [False, False], 0.85, names=["amd", "normal"])
    assert (ref.method, ref.target_sensitivity) == ("fallback", 0.85)
    assert (other.method, other.target_sensitivity) == ("fallback", None)
    assert other.to_dict()["target_sensitivity"] is None
    assert (youden.method, youden.target_sensitivity) == ("youden", None)


def test_coverage_names_only_data_classes_that_have_images() -> None:
    """Mutant: ``data_only`` kept labels counted zero times, so the coverage warned about a class the data
    never used (a zero count is what a label file's unused column gives)."""
    t = np.array([[1, 0], [0, 1], [0, 1]], float)
    cov = E.class_coverage(t, ["normal", "dr"], {"normal": 1, "dr": 2, "pdr": 0, "cataract": 3})
    assert cov.data_only == {"cataract": 3}
    assert cov.problems() == ("the data's cataract (3 images) is not a class of the model (those labels are "
                              "dropped: an image with no model class counts as a negative for every model class)")


def test_a_class_present_in_every_image_is_not_among_the_evaluated_classes() -> None:
    """Mutant: ``keep`` took every class with a positive, so a class every test image has (no negatives, no
    AUC) was listed as evaluated beside the coverage saying it was left out."""
    t = np.array([[1, 1], [1, 0], [1, 1], [1, 0]], float)
    p = np.array([[0.9, 0.8], [0.8, 0.1], [0.7, 0.7], [0.6, 0.2]], np.float32)
    rep = E.evaluate(p, t, [0.5, 0.5], ["normal", "dr"], None, n_boot=20)
    assert rep["evaluated_classes"] == ["dr"]
    assert rep["class_coverage"]["evaluated"] == ["dr"]
    assert rep["class_coverage"]["left_out"] == {"normal": E.NO_NEGATIVES}


def test_attention_outside_the_weighed_cells_does_not_count_as_mass_in_the_mask() -> None:
    """Mutant: the ratio's numerator summed the mask over the whole grid while its denominator took the
    mask's share of the weighed cells only.

    2 x 2 grid, the map may weigh the top row; the mask covers every cell, so its share of the top row is 1.
    An even map puts 0.5 of its mass on the top row: ratio 0.5 / 1 = 0.5 (the mutant: 1.0 / 1 = 1.0).
    """
    att = np.full((2, 2), 0.25)
    cover = np.ones((2, 2))
    inside = np.array([[True, True], [False, False]])
    assert E.site_concentration(att, cover, inside) == pytest.approx(0.5)
    assert E.site_concentration(att, cover) == pytest.approx(1.0)


def _geom(orig: int, x0: int, y0: int, side: int, size: int) -> "E.Geometry":
    return E.Geometry(orig_h=orig, orig_w=orig, cx=orig / 2, cy=orig / 2, radius=orig / 2, x0=x0, y0=y0,
                      side=side, size=size, fov_found=True, fov_fill=1.0)


def test_a_crop_reaching_past_the_frame_keeps_the_mask_where_the_padding_put_the_image() -> None:
    """Mutant: a crop starting left of / above the frame (negative ``x0``, ``y0``: a clipped field whose circle
    reaches past the photograph, zero-padded) copied the mask to the crop's corner instead of after the padding.

    Independent construction: pad the 96 px mask by hand with 16 px on the left and top (a 128 px picture the
    crop starts at 0 in); both must give the same grid. The lesion covers one token's original window in the
    padded frame, so on the padded picture the grid holds a single 1.
    """
    mask = np.zeros((96, 96), np.uint8)
    mask[1:33, 33:65] = 1  # padded frame [17, 49) x [49, 81): exactly the window of token (1, 2) (see above)
    padded = np.zeros((128, 128), np.uint8)
    padded[16:112, 16:112] = mask
    want = E.mask_to_grid(padded, _geom(128, 0, 0, 128, 64), 4, 4)
    got = E.mask_to_grid(mask, _geom(96, -16, -16, 128, 64), 4, 4)
    assert want[1, 2] == pytest.approx(1.0) and want.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_an_image_whose_mask_lies_outside_the_weighed_cells_is_not_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Mutant: images were kept whatever their mask's share of the weighed cells, so a mask wholly outside the
    field (no ratio: NaN) still counted in ``n_images`` and pulled ``mass_in_mask`` towards its own value.

    Image 0: the lesion is token (1, 2)'s window, inside the weighed cells, and its map is all on it: mass 1
    over the mask's share of the 15 weighed cells, 1/15, gives 15. Image 1: the lesion is token
    (0, 0)'s window, the one cell left out: not measured. So n_images 1 and mass_in_mask 1.0 (the mutant: 2
    images, mass (1 + 1/16) / 2).
    """
    inside = np.ones((4, 4), bool)
    inside[0, 0] = False
    on = np.zeros((128, 128), np.uint8)
    on[17:49, 49:81] = 1
    off = np.zeros((128, 128), np.uint8)
    off[:17, :17] = 1  # token (0, 0)'s window [-15, 17) clipped to the frame
    np.savez(tmp_path / "on.npz", a=on)
    np.savez(tmp_path / "off.npz", a=off)
    maps = np.full((2, 2, 4, 4), 1 / 16, np.float32)
    maps[0, 1] = 0.0
    maps[0, 1, 1, 2] = 1.0
    targets = np.array([[0, 1], [0, 1]], np.float32)
    g = _geom(128, 0, 0, 128, 64)
    rep = E.site_concentration_report(maps, targets, ("normal", "a"), [tmp_path / "on.npz", tmp_path / "off.npz"],
                                      [g, g], inside)
    assert E.mask_to_grid(off, g, 4, 4)[inside].sum() == pytest.approx(0.0)
    assert rep["a"]["n_images"] == 1
    assert rep["a"]["mean"] == pytest.approx(15.0) and rep["a"]["mass_in_mask"] == pytest.approx(1.0)


def test_fewer_referable_flags_than_classes_is_a_config_error_naming_both_counts() -> None:
    """Mutant: only the names were counted, so a class file one referable flag short ended in an IndexError
    from inside the loop instead of a message saying what was given and what was expected."""
    from uopsl.runtime.errors import ConfigError

    y = np.array([[1, 0], [0, 1]], float)
    p = np.array([[0.9, 0.1], [0.1, 0.9]], np.float32)
    with pytest.raises(ConfigError, match=r"one name and one referable flag per class \(2\); got 2 names and 1 flags"):
        E.choose_operating_points(y, p, [True], 0.9, names=["dr", "normal"])
