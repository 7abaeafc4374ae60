"""A gate's classes that could not be evaluated: each reason said once (session 51).

The quick demo's console repeated "(a gate counts a class from 10 positive and 10 negative images; validate on
more)" and "its drop 0 is reported, not gated" for every class of every gate of every file: 560 characters per
gate line to say one thing. parity.json keeps each class's full reason; the words a person reads group them.
"""

from __future__ import annotations

import numpy as np

from uopsl.export.parity_metrics import (
    FEW_CASES_RULE,
    INCOMPLETE,
    MIN_CASES_PER_CLASS,
    ParityGates,
    clinical,
    few_cases,
    judge,
    numerical,
    skipped_text,
    truth_from_labels,
)
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.preprocess import PreprocessConfig

NAMES = ("normal", "dr", "dme", "glaucoma")


def _manifest() -> Manifest:
    return Manifest(classes=(ClassSpec("normal", threshold=0.5), *(ClassSpec(n, threshold=0.5, referable=True)
                                                                   for n in NAMES[1:])),
                    head="sigmoid", preprocess=PreprocessConfig(size=32), files=(FileEntry("model.onnx", "onnx", "fp32"),))


def _judged(labels: list[tuple[str, ...]], cand_shift: float = 0.0):  # type: ignore[no-untyped-def]
    m = _manifest()
    ref = np.array([[0.9 if n in lab else 0.1 for n in NAMES] for lab in labels])
    cand = np.clip(ref + cand_shift * np.linspace(-1, 1, len(labels))[:, None], 0, 1)
    clin = clinical(m, truth_from_labels(m, labels, NAMES), ref, cand, [str(i) for i in range(len(labels))],
                    n_boot=0)
    return judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": cand, "logits": cand}), clin)


def _few_labels() -> list[tuple[str, ...]]:
    """40 normal photographs, 6 dr, 5 dme, 2 glaucoma: every referable class below the minimum."""
    return [("normal",)] * 40 + [("dr",)] * 6 + [("dme",)] * 5 + [("glaucoma",)] * 2


def test_the_minimum_is_said_once_for_every_class_below_it() -> None:
    v = _judged(_few_labels())
    assert v.status == INCOMPLETE
    auc = next(r for r in v.reasons if r.startswith("auc_drop"))
    assert auc.count("a gate counts a class from") == 1, auc
    assert auc.count("reported, not gated") == 1, auc
    assert ("not evaluated for dr (6 positive images), dme (5 positive images), glaucoma (2 positive images): "
            + FEW_CASES_RULE) in auc
    assert auc.endswith("; their drops are reported, not gated: dr 0, dme 0, glaucoma 0"), auc
    sens = next(r for r in v.reasons if r.startswith("sensitivity_drop"))
    assert sens.count("a gate counts a class from") == 1, sens
    # the referral (13 positives, 40 negatives) is evaluated: only the three classes are listed
    assert "referral" not in sens.split("not evaluated for", 1)[1]


def test_parity_json_keeps_each_class_s_full_reason() -> None:
    v = _judged(_few_labels())
    auc = {c.name: c for c in v.checks}["auc_drop"]
    by_class = {s["class"]: s for s in auc.skipped}
    assert set(by_class) == {"dr", "dme", "glaucoma"}
    assert by_class["dr"]["reason"] == few_cases(6, 40 + 5 + 2) + "; its drop 0 is reported, not gated"
    assert by_class["glaucoma"]["cases"] == "2 positive images" and by_class["glaucoma"]["drop"] == "0"
    assert all(s["group"] == FEW_CASES_RULE for s in auc.skipped)
    assert str(MIN_CASES_PER_CLASS) in FEW_CASES_RULE


def test_different_reasons_stay_apart_and_one_drop_is_named() -> None:
    # no glaucoma image at all (no positive: no AUC, no drop), dr below the minimum
    labels = [("normal",)] * 40 + [("dr",)] * 6 + [("dme",)] * 12
    v = _judged(labels)
    auc = next(r for r in v.reasons if r.startswith("auc_drop"))
    assert "dr (6 positive images): " + FEW_CASES_RULE in auc
    assert "glaucoma (no positive image in the data)" in auc
    assert auc.endswith("; dr's drop 0 is reported, not gated"), auc


def test_classes_sharing_a_plain_reason_are_named_together() -> None:
    text = skipped_text([{"class": "amd", "reason": "no positive image in the data"},
                         {"class": "rp", "reason": "no positive image in the data"},
                         {"class": "csc", "reason": "no positive image in the data"}])
    assert text == "amd, rp and csc (no positive image in the data)"


def test_entries_read_back_from_an_older_parity_json_render_as_before() -> None:
    old = [{"class": "dr", "reason": few_cases(6, 40) + "; its drop 0.01 is reported, not gated"}]
    assert skipped_text(old) == f"dr ({old[0]['reason']})"
