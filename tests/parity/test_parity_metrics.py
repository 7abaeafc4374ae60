"""Gates, truth and comparison figures on hand-made numbers (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uopsl.export.parity_metrics import (
    ParityGates,
    clinical,
    jsonable,
    judge,
    numerical,
    parse_gates,
    row_correlation,
    truth_from_labels,
    truth_from_reference,
)
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import PreprocessConfig


def _manifest() -> Manifest:
    classes = (ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.4, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(size=64),
                    files=(FileEntry("model.onnx", "onnx", "fp32"),))


def test_gates_parse_validate_and_default() -> None:
    assert ParityGates().is_default and parse_gates(None) == ParityGates()
    assert parse_gates("findings=0.005").max_finding_change_rate == 0.005
    g = parse_gates("flips=0.01, auc_drop=0.02,sens=0,prob=1e-4,top1=0.95")
    assert (g.max_flip_rate, g.max_auc_drop, g.max_sensitivity_drop, g.max_prob_diff) == (0.01, 0.02, 0.0, 1e-4)
    assert g.min_top1_agreement == 0.95 and ParityGates().min_top1_agreement == 0.99
    assert parse_gates("prob=off", g).max_prob_diff is None and not g.is_default
    for bad, match in (("speed=1", "unknown gate"), ("flips", "key=value"), ("auc=abc", "needs a number"),
                       ("flips=2", r"\[0, 1\]"),
                       # the same gate twice kept the last value without a word (a review, session 45)
                       ("flips=0.005,flips=0.1", r"sets max_flip_rate twice \('flips' twice\)"),
                       ("auc=0.005,auc_drop=0.02", "sets max_auc_drop twice .as 'auc' and as 'auc_drop'")):
        with pytest.raises(ConfigError, match=match):
            parse_gates(bad)


def test_flips_auc_and_sensitivity_are_counted_under_the_manifest_rule() -> None:
    m = _manifest()
    # six images ten times over: every class with MIN_CASES_PER_CLASS positives and negatives
    ref = np.tile(np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.45], [0.8, 0.2], [0.1, 0.9], [0.6, 0.3]]), (10, 1))
    cand = ref.copy()
    cand[2::6, 1] = 0.35  # referable class drops below its 0.4 threshold: a referral flip (refer -> not) in each six
    truth = truth_from_labels(m, [("normal",), ("dr",), ("dr",), ("normal",), ("dr",), ("normal",)] * 10,
                              ("normal", "dr"))
    assert truth.refer is not None and truth.refer.tolist() == [False, True, True, False, True, False] * 10
    ids = [f"img{i}" for i in range(60)]
    clin = clinical(m, truth, ref, cand, ids, n_boot=50)
    assert clin["flips"]["n"] == 10 and clin["flips"]["items"][0]["id"] == "img2"
    assert clin["flips"]["to_no_refer"] == 10 and clin["flips"]["rate"] == pytest.approx(1 / 6)
    dr = clin["per_class"][1]
    assert dr["sensitivity_reference"] == 1.0 and dr["sensitivity_candidate"] == pytest.approx(2 / 3)
    assert dr["auc_reference"] == 1.0 and dr["auc_candidate"] == 1.0  # still ranked above every negative
    verdict = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin)
    assert not verdict.passed
    names = {c.name: c for c in verdict.checks}
    assert names["flip_rate"].passed is False and names["auc_drop"].passed is True
    assert names["sensitivity_drop"].passed is False and names["sensitivity_drop"].value == pytest.approx(1 / 3)
    assert names["class_flip_rate"].passed is False and names["class_flip_rate"].value == pytest.approx(1 / 6)
    assert judge(ParityGates(max_flip_rate=0.2, max_class_flip_rate=0.2, max_finding_change_rate=0.2,
                             max_sensitivity_drop=0.34), numerical(
        {"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin).passed


def test_images_with_any_changed_finding_are_gated_per_image() -> None:
    """A review: three images with one changed call each, in three classes and under unchanged referrals,
    passed every 0.5 % per-class gate while 1.5 % of the images had a changed screening decision."""
    names = ("normal", "dr", "amd", "glaucoma")
    m = Manifest(classes=(ClassSpec("normal", threshold=0.5),
                          *(ClassSpec(c, threshold=0.5, referable=True) for c in names[1:])),
                 head="sigmoid", preprocess=PreprocessConfig(size=64), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    n = 200
    y = np.zeros((n, 4), bool)
    y[:, 0] = True
    y[:60, 1], y[60:100, 2], y[100:130, 3], y[:130, 0] = True, True, True, False
    ref = np.where(y, 0.9, 0.1)
    ref[0, 2] = ref[1, 3] = 0.55  # second findings of images referred for DR anyway
    ref[100, 1] = 0.45
    cand = ref.copy()
    cand[0, 2] = cand[1, 3] = 0.45
    cand[100, 1] = 0.55  # gained, on an image referred for glaucoma anyway
    truth = truth_from_labels(m, [tuple(c for c, v in zip(names, r) if v) for r in y], names)
    clin = clinical(m, truth, ref, cand, [str(i) for i in range(n)], n_boot=20)
    assert clin["flips"]["n"] == 0 and clin["class_flips"]["max_rate"] == pytest.approx(0.005)
    verdict = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin)
    checks = {c.name: c for c in verdict.checks}
    assert checks["flip_rate"].passed and checks["class_flip_rate"].passed
    assert checks["finding_change_rate"].passed is False and checks["finding_change_rate"].value == pytest.approx(0.015)
    assert verdict.status == "FAIL" and "finding_change_rate 0.015 > 0.01 (3 image(s)" in verdict.reasons[0]
    looser = judge(ParityGates(max_finding_change_rate=0.015),
                   numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin)
    assert {c.name: c for c in looser.checks}["finding_change_rate"].passed


def test_top1_agreement_is_a_gate_of_its_own() -> None:
    """A changed top class fails the gate even when no decision crosses its threshold."""
    m = _manifest()
    # half the images referred, half not: every gate can be evaluated (a reference that refers every image
    # leaves the AUC undefined, and the verdict would be INCOMPLETE)
    # ... and MIN_CASES_PER_CLASS images called normal, so that class counts as evaluated too
    ref = np.array([[0.9, 0.8]] + [[0.1, 0.9]] * 49 + [[0.9, 0.2]] * 10 + [[0.1, 0.2]] * 40)
    cand = ref.copy()
    cand[0] = [0.8, 0.9]  # both classes stay above their thresholds: no flip, but another top class
    truth = truth_from_reference(m, ref)
    clin = clinical(m, truth, ref, cand, [f"i{i}" for i in range(100)], n_boot=20)
    assert clin["flips"]["n"] == 0 and clin["top1_agreement"] == pytest.approx(0.99)
    nums = numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand})
    assert judge(ParityGates(), nums, clin).passed  # 99 % is the limit, and passes
    strict = judge(ParityGates(min_top1_agreement=0.995), nums, clin)
    top1 = {c.name: c for c in strict.checks}["top1_agreement"]
    assert not strict.passed and top1.passed is False and "top1_agreement 0.99 < 0.995" in strict.reasons[0]


def test_truth_without_labels_and_partial_labels() -> None:
    m = _manifest()
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    t = truth_from_reference(m, probs)
    assert t.source == "reference_decisions" and t.refer.tolist() == [False, True] and "no labels" in t.notes[0]
    partial = truth_from_labels(m, [("normal",), ("amd",)], ("normal", "amd"))
    assert partial.defined.tolist() == [True, False] and partial.refer is None and len(partial.notes) == 2


def test_numerical_figures_and_strict_json() -> None:
    a = {"probs": np.array([[0.1, 0.9]]), "logits": np.array([[1.0, 2.0]]), "site_maps": np.ones((1, 2, 2, 2))}
    b = {"probs": np.array([[0.1, 0.8]]), "logits": np.array([[2.0, 4.0]]), "site_maps": np.ones((1, 2, 2, 2))}
    num = numerical(a, b)
    assert num["max_abs_prob_diff"] == pytest.approx(0.1) and num["logit_cosine_min"] == pytest.approx(1.0)
    assert math.isnan(num["site_map_corr_mean"]) and "constant" in num["notes"][0]
    assert jsonable(num)["site_map_corr_mean"] is None
    assert np.isnan(row_correlation(np.ones((1, 4)), np.arange(4.0)[None]))[0]


def test_candidates_follow_the_runtime_selection(screen_bundle) -> None:  # noqa: ANN001 - Path fixture
    from uopsl.export.validate import plan_candidates
    from uopsl.runtime.backends import Availability
    from uopsl.runtime.bundle import read_manifest

    m = read_manifest(screen_bundle)
    gpu_box = Availability(("CUDAExecutionProvider", "CPUExecutionProvider"), openvino=True, tensorrt=False)
    runs, skipped = plan_candidates(screen_bundle, m, ("all",), gpu_box)
    assert [c.name for c in runs] == [
        "ort-cpu:model.onnx", "ort-cpu:model.int8.onnx", "ort-cuda:model.onnx", "ort-cuda:model.int8.onnx",
        "openvino:model.onnx", "openvino:model.int8.onnx"]
    assert {s["name"] for s in skipped} == {"ort-trt"}  # no engines in the bundle: tensorrt is not mentioned
    runs, skipped = plan_candidates(screen_bundle, m, ("tensorrt", "ort-cpu"), Availability(("CPUExecutionProvider",)))
    assert [c.backend for c in runs] == ["ort-cpu", "ort-cpu"] and skipped[0]["name"] == "tensorrt"


def test_an_auc_difference_from_a_single_positive_image_has_no_interval() -> None:
    """A review: every stratified resample keeps the one positive, so the interval showed only how the
    negatives vary (-0.126 to -0.050 around -0.085) and read as a precise figure."""
    m = _manifest()
    rng = np.random.default_rng(4)
    ref = rng.uniform(0.0, 1.0, (40, 2))
    cand = np.clip(ref + rng.normal(0.0, 0.05, ref.shape), 0.0, 1.0)
    labels = [("dr",)] + [("normal",)] * 39
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dr")), ref, cand, [str(i) for i in range(40)],
                    n_boot=100)
    dr = clin["per_class"][1]["auc_difference"]
    assert dr["low"] is None and dr["high"] is None and math.isfinite(dr["estimate"])
    assert "interval undefined: the positive cases come from one image" in dr["note"]
    normal = clin["per_class"][0]["auc_difference"]  # 39 positives, 1 negative: the same on the other side
    assert normal["low"] is None and "the negative cases come from one image" in normal["note"]
    two = clinical(m, truth_from_labels(m, [("dr",)] * 2 + [("normal",)] * 38, ("normal", "dr")), ref, cand,
                   [str(i) for i in range(40)], n_boot=100)
    assert two["per_class"][1]["auc_difference"]["low"] is not None and "note" not in two["per_class"][1]["auc_difference"]
