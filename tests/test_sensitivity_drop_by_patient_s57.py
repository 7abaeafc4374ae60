"""The sensitivity-drop interval of `uopsl validate` with the patients known (session 57).

Since session 56 each sensitivity's own interval is a Wilson interval on the design-effect sample size, but the
paired interval of the candidate's minus the reference's sensitivity (Newcombe's method 10) still counted images:
with two photographs per patient the drop read as known more precisely than either sensitivity it is the
difference of. Newcombe's construction is the MOVER; given each proportion's cluster-adjusted limits it is
Zou & Donner's (2004) interval for clustered data.
"""

from __future__ import annotations

import numpy as np
import pytest

from uopsl.export.parity_metrics import (
    NEWCOMBE_PAIRED,
    NEWCOMBE_PAIRED_CLUSTERED,
    _sensitivity_difference,
    clinical,
    paired_proportion_difference,
    truth_from_labels,
)
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.metrics import WILSON, clustered_proportion_interval, proportion_interval
from uopsl.runtime.preprocess import PreprocessConfig


def _calls(n_pos: int = 40, lost: int = 6, gained: int = 1, missed_by_both: int = 5) -> tuple[np.ndarray, ...]:
    """Labels and calls on ``n_pos`` positives: ``lost`` found by the reference only, ``gained`` by the candidate
    only, ``missed_by_both`` by neither, the rest by both."""
    kind = np.repeat(np.arange(4), (lost, gained, missed_by_both, n_pos - lost - gained - missed_by_both))
    ref = (kind == 0) | (kind == 3)
    cand = (kind == 1) | (kind == 3)
    return np.ones(n_pos, bool), ref, cand


def test_one_image_per_patient_gives_the_image_level_interval() -> None:
    y, ref, cand = _calls()
    plain = _sensitivity_difference(y, ref, cand)
    singles = _sensitivity_difference(y, ref, cand, np.arange(y.size))
    assert plain["method"] == NEWCOMBE_PAIRED and singles["method"] == NEWCOMBE_PAIRED_CLUSTERED
    assert (singles["estimate"], singles["low"], singles["high"]) == pytest.approx(
        (plain["estimate"], plain["low"], plain["high"]), abs=1e-12)


def test_two_images_per_patient_with_the_same_calls_widen_the_interval() -> None:
    """Each patient's second photograph repeating the first's calls adds no information: the interval must be
    wider than the one that counts 80 images, and about as wide as the one of the 40 patients."""
    y, ref, cand = _calls()
    y2, ref2, cand2 = (np.repeat(a, 2) for a in (y, ref, cand))
    patients = np.repeat(np.arange(y.size), 2)
    by_image = _sensitivity_difference(y2, ref2, cand2)  # the old reading, patients ignored
    by_patient = _sensitivity_difference(y2, ref2, cand2, patients)
    of_patients = _sensitivity_difference(y, ref, cand)
    assert by_patient["estimate"] == pytest.approx(by_image["estimate"])
    assert by_patient["high"] - by_patient["low"] > 1.25 * (by_image["high"] - by_image["low"])
    assert by_patient["low"] == pytest.approx(of_patients["low"], abs=0.02)
    assert by_patient["high"] == pytest.approx(of_patients["high"], abs=0.02)
    # The limits handed in are each sensitivity's own reported interval.
    r = clustered_proportion_interval(ref2, patients)[0]
    c = clustered_proportion_interval(cand2, patients)[0]
    counts = (int(np.sum(ref2 & cand2)), int(np.sum(ref2 & ~cand2)), int(np.sum(~ref2 & cand2)),
              int(np.sum(~ref2 & ~cand2)))
    again = paired_proportion_difference(*counts, limits=(r, c), method=NEWCOMBE_PAIRED_CLUSTERED)
    assert (again["low"], again["high"]) == (by_patient["low"], by_patient["high"])


def test_limits_given_as_the_plain_wilson_ones_change_nothing_and_must_fit_the_table() -> None:
    a, b, c, d = 30, 6, 1, 3
    n = a + b + c + d
    plain = paired_proportion_difference(a, b, c, d)
    limits = (proportion_interval(a + b, n, method=WILSON), proportion_interval(a + c, n, method=WILSON))
    assert paired_proportion_difference(a, b, c, d, limits=limits) == plain
    with pytest.raises(ConfigError, match="the first proportion's limits are for 0.775 .* the table gives 0.9"):
        paired_proportion_difference(a, b, c, d, limits=limits[::-1])
    with pytest.raises(ConfigError, match="at alpha 0.1; the table gives .* at alpha 0.05"):
        paired_proportion_difference(a, b, c, d, limits=(proportion_interval(a + b, n, alpha=0.1, method=WILSON),
                                                         limits[1]))


def test_validate_reports_the_patient_level_interval_for_a_class_and_the_referral() -> None:
    m = Manifest(classes=(ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.5, referable=True)),
                 head="sigmoid", preprocess=PreprocessConfig(size=32), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    labels = [("dr",)] * 40 + [("normal",)] * 40
    ref = np.array([[0.1, 0.9] if lab == ("dr",) else [0.9, 0.1] for lab in labels])
    cand = ref.copy()
    cand[:6, 1] = 0.3  # 6 DR photographs (3 patients) missed by the candidate
    patients = [f"p{i // 2}" for i in range(len(labels))]
    ids = [str(i) for i in range(len(labels))]
    truth = truth_from_labels(m, labels, ("normal", "dr"))
    with_p = clinical(m, truth, ref, cand, ids, n_boot=0, patients=patients)
    without = clinical(m, truth, ref, cand, ids, n_boot=0)
    for get in (lambda c: c["per_class"][1]["sensitivity_difference"], lambda c: c["referral"]["sensitivity_difference"]):
        wide, narrow = get(with_p), get(without)
        assert wide["method"] == NEWCOMBE_PAIRED_CLUSTERED and narrow["method"] == NEWCOMBE_PAIRED
        assert wide["estimate"] == narrow["estimate"] == pytest.approx(-6 / 40)
        assert wide["low"] < narrow["low"] and wide["high"] >= narrow["high"]


@pytest.mark.parametrize("known", [True, False])
def test_parity_json_names_the_method_and_unit_of_the_drop_interval(known: bool) -> None:
    from uopsl.export.validate import ValidateConfig, _confidence_section

    sec = _confidence_section(ValidateConfig(), 100, {"known": known, "n_patients": 50 if known else None})
    drop = sec["sensitivity_difference"]
    assert (drop["method"], drop["unit"]) == ((NEWCOMBE_PAIRED_CLUSTERED, "patient") if known
                                              else (NEWCOMBE_PAIRED, "image"))
    assert ("sensitivity drop combines those two sensitivities' limits" in sec["independence_note"]) if known \
        else "independence_note" not in sec


def test_the_sensitivity_gate_names_the_lost_positives_and_the_net_change() -> None:
    """A validation review: the terminal, the manifest and the report's "worst sens. drop" said 0.02154 (14 of 650
    positives lost) while the sensitivity a signer computes went 0.180 -> 0.163 (3 gained offset 3 of the 14)."""
    from uopsl.export.parity_metrics import ParityGates, judge, numerical

    m = Manifest(classes=(ClassSpec("normal", threshold=0.5), ClassSpec("dme", threshold=0.5, referable=True)),
                 head="sigmoid", preprocess=PreprocessConfig(size=32), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    labels = [("dme",)] * 650 + [("normal",)] * 266
    ref = np.array([[0.1, 0.9] if i < 117 else [0.1, 0.2] if i < 650 else [0.9, 0.1] for i in range(len(labels))])
    cand = ref.copy()
    cand[:14, 1] = 0.3  # 14 found positives lost
    cand[117:120, 1] = 0.8  # 3 missed ones gained: 106 of 650 found
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dme")), ref, cand, [str(i) for i in range(len(labels))],
                    n_boot=0)
    check = {c.name: c for c in judge(ParityGates(), numerical({"probs": ref, "logits": ref},
                                                                 {"probs": cand, "logits": cand}), clin).checks}
    sens = check["sensitivity_drop"]
    assert sens.value == pytest.approx(14 / 650) and sens.passed is False
    assert sens.detail.startswith("largest: ") and "14 of 650 positives lost" in sens.detail
    assert sens.detail.endswith(f"the net sensitivity change is {106 / 650 - 117 / 650:+.4g}"), sens.detail


def test_each_rate_comes_with_its_confusion_counts_in_json_and_html() -> None:
    """A validation review: neither parity.json nor parity.html gave TP / FN / TN / FP; a signer rebuilt them from
    outputs.csv to check a sensitivity."""
    from uopsl.export.parity_html import _rate_cell

    m = Manifest(classes=(ClassSpec("normal", threshold=0.5), ClassSpec("dme", threshold=0.5, referable=True)),
                 head="sigmoid", preprocess=PreprocessConfig(size=32), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    labels = [("dme",)] * 30 + [("normal",)] * 20
    ref = np.array([[0.1, 0.9] if i < 25 else [0.1, 0.2] if i < 30 else [0.9, 0.1] for i in range(50)])
    cand = ref.copy()
    cand[:2, 1] = 0.3  # 2 positives lost
    cand[30, 1] = 0.7  # 1 false positive
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dme")), ref, cand, [str(i) for i in range(50)], n_boot=0)
    row = clin["per_class"][1]
    assert row["counts_reference"] == {"tp": 25, "fn": 5, "tn": 20, "fp": 0}
    assert row["counts_candidate"] == {"tp": 23, "fn": 7, "tn": 19, "fp": 1}
    assert row["sensitivity_candidate"] == pytest.approx(23 / 30)
    assert clin["referral"]["counts_candidate"]["tp"] == 23
    assert "25 of 30 / 23 of 30" in _rate_cell(row, "sensitivity")
    assert "20 of 20 / 19 of 20" in _rate_cell(row, "specificity")


def _dr_amd(n_amd: int) -> tuple[Manifest, list[tuple[str, ...]], np.ndarray]:
    """A sigmoid model over normal, dr and amd (both referable), 30 dr and 30 normal photographs and ``n_amd`` amd
    ones (too few to gate), and the reference's probabilities: each photograph's own class called."""
    m = Manifest(classes=(ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.5, referable=True),
                          ClassSpec("amd", threshold=0.5, referable=True)),
                 head="sigmoid", preprocess=PreprocessConfig(size=32), files=(FileEntry("model.onnx", "onnx", "fp32"),))
    labels = [("dr",)] * 30 + [("normal",)] * 30 + [("amd",)] * n_amd
    ref = np.array([[0.1, 0.9, 0.1] if lab == ("dr",) else [0.9, 0.1, 0.1] if lab == ("normal",) else [0.1, 0.1, 0.9]
                    for lab in labels])
    return m, labels, ref


def test_a_fails_gates_not_evaluated_in_full_are_marked_and_not_quoted_as_failures() -> None:
    """A validation review: `uopsl-screen info`'s auto line said the INT8 file "failed parity validation on openvino
    (top1_agreement 0.9583 < 0.99 ...; auc_drop -0.02143 <= 0.005 but not evaluated for dr (6 positive images)
    ...)": the second was no failure."""
    from uopsl.export.parity_metrics import FAIL, ParityGates, judge, numerical
    from uopsl.runtime.bundle import INCOMPLETE_MARK, _record_problem

    m, labels, ref = _dr_amd(3)
    cand = ref.copy()
    cand[:5, 1] = 0.2  # 5 of 30 DR calls lost: a FAIL
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dr", "amd")), ref, cand,
                    [str(i) for i in range(len(labels))], n_boot=0)
    v = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin)
    assert v.status == FAIL
    failures = [r for r in v.reasons if not r.startswith(INCOMPLETE_MARK)]
    marked = [r for r in v.reasons if r.startswith(INCOMPLETE_MARK)]
    assert failures and marked and v.reasons == tuple(failures + marked), v.reasons
    assert [r.split(" ")[0] for r in failures] == ["flip_rate", "class_flip_rate", "finding_change_rate",
                                                   "sensitivity_drop"]
    assert [r[len(INCOMPLETE_MARK):].split(" ")[0] for r in marked] == ["auc_drop"] and "but not evaluated" in marked[0]
    why = _record_problem("model.int8.onnx", "openvino", {"passed": False, "verdict": "FAIL",
                                                          "reasons": [*marked, *failures]})
    assert why is not None and INCOMPLETE_MARK not in why and "auc_drop" not in why, why
    assert why.startswith("model.int8.onnx failed parity validation on openvino (" + failures[0])


def test_a_class_too_small_to_gate_reports_the_gates_own_measure() -> None:
    """A class with too few positives is reported, not gated; its sensitivity figure sat in the column "worst
    share of positives lost" as a net drop, 0 for a class that lost 2 positives and gained 2 (a review)."""
    from uopsl.export.parity_metrics import ParityGates, judge, numerical

    m, labels, ref = _dr_amd(8)
    ref[-4:, 2] = 0.2  # 4 amd positives missed by the reference
    cand = ref.copy()
    cand[60:62, 2] = 0.2  # 2 found ones lost ...
    cand[-2:, 2] = 0.8  # ... and 2 missed ones gained: net 0
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dr", "amd")), ref, cand,
                    [str(i) for i in range(len(labels))], n_boot=0)
    sens = {c.name: c for c in judge(ParityGates(), numerical({"probs": ref, "logits": ref},
                                                                {"probs": cand, "logits": cand}), clin).checks}["sensitivity_drop"]
    (amd,) = [e for e in sens.skipped if e["class"] == "amd"]
    assert amd["drop"] == f"{2 / 8:.4g}", amd
