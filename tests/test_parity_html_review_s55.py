"""parity.html's summary as a signer reads it (a validation-engineer review, session 55).

The figures come from the same functions ``validate`` uses (:func:`rate_bound`, :func:`patient_rate_bound`,
the skipped-class entries); the page must show the bound the verdict can be judged on, and a drop that a class
too small to gate hides behind a gated gain.
"""

from __future__ import annotations

import numpy as np

from uopsl.export.parity_html import _class_calls_cell, _findings_cell, _finding_changes, _worst_drop
from uopsl.export.parity_metrics import _skip_entry, patient_rate_bound, rate_bound


def _changes_by_patient() -> dict:
    """16 of 335 images changed, in 15 of 133 patients whose image counts are uneven (1-4): the patient bound on
    the image rate (~27 %) is far above the image bound (7.2 %), as on TVHL in the review."""
    sizes = [5] * 29 + [4] * 11 + [2] * 53 + [1] * 40  # 133 patients, 335 images
    clusters = np.repeat(np.arange(len(sizes)), sizes)
    assert clusters.size == 335
    changed = np.zeros(335, bool)
    changed[np.searchsorted(clusters, np.arange(15))] = True  # the first image of patients 0-14
    changed[1] = True  # a second image of patient 0
    d = {**rate_bound(int(changed.sum()), 335), "n_patients": 15}
    d["by_patient"] = patient_rate_bound(changed, clusters)
    return d


def test_the_findings_column_and_heading_show_the_patient_bound_when_it_is_the_larger() -> None:
    fc = {**_changes_by_patient(), "applicable": True}
    image_bound, patient_bound = fc["upper95"], fc["by_patient"]["upper95_images"]
    assert round(image_bound, 3) == 0.072 and patient_bound > 0.2
    cell = _findings_cell(fc)
    assert f"&le;{patient_bound:.1%} by patient" in cell and f"{image_bound:.1%}" not in cell  # was "<= 7.2%"
    item = {"id": "x", "changed": ["dr"], "reference_findings": ["dr"], "candidate_findings": [],
            "referral_changed": False, "reference_probs": [0.5], "candidate_probs": [0.4]}
    heading = _finding_changes({**fc, "items": [item]}, {}, 10).split("</h3>", 1)[0]
    assert f"&le;{patient_bound:.1%} by patient upper 95 %" in heading


def test_the_findings_column_keeps_the_image_bound_without_patients() -> None:
    fc = {**rate_bound(16, 335), "applicable": True}
    assert _findings_cell(fc).endswith("(4.78%; &le;7.2%)")


def test_the_class_calls_column_carries_the_worst_class_bound() -> None:
    dr = _changes_by_patient()
    cell = _class_calls_cell({"value": dr["rate"]}, {"worst_class": "dr", "referable": {"dr": dr}})
    assert cell == f"{dr['rate']:.2%} (dr; &le;{dr['by_patient']['upper95_images']:.1%} by patient)"
    # No changed call: no class is "the worst", no bound to give
    assert _class_calls_cell({"value": 0.0}, {"worst_class": "dr", "referable": {"dr": rate_bound(0, 335)}}) \
        == "0.00%"


def _row(name: str, n_pos: int, n_neg: int, ref: float, cand: float) -> dict:
    reason = (f"only {n_pos} positive images" if n_pos < 10 else "")
    return {"name": name, "n_positive": n_pos, "n_negative": n_neg, "auc_reference": ref, "auc_candidate": cand,
            "not_evaluated": {"auc": reason} if reason else {}}


def test_the_worst_auc_drop_names_an_ungated_class_that_dropped_more() -> None:
    """The review's demo: the only gated class (normal) gained 0.0357; glaucoma, on 2 positives, lost 0.045."""
    glaucoma = _skip_entry("glaucoma", _row("glaucoma", 2, 22, 0.7727, 0.7273), "auc")
    amd = _skip_entry("amd", _row("amd", 5, 19, 0.8, 0.8105), "auc")
    assert glaucoma["drop"] == "0.0454"
    check = {"name": "auc_drop", "value": -0.03571, "skipped": [amd, glaucoma]}
    assert _worst_drop(check) == "-0.03571; not gated: glaucoma 0.0454"  # before: "-0.03571" alone
    # An ungated class that dropped less than the gated worst is not shown
    assert _worst_drop({"value": 0.05, "skipped": [glaucoma]}) == "0.05"
    # Nothing gated at all: said so, and the worst ungated drop beside it
    assert _worst_drop({"value": None, "skipped": [glaucoma]}).endswith("none gated</span>; not gated: glaucoma 0.0454")
    assert _worst_drop({"value": 0.001, "skipped": []}) == "0.001"


def _report(referred: int, n: int) -> dict:
    clinical = {"referral": {"referred_reference": referred, "referred_candidate": referred},
                "flips": {**rate_bound(0, n), "n_images": n}, "class_flips": {}, "finding_changes": None,
                "top1_agreement": 1.0}
    numerical = {"max_abs_prob_diff": 0.0, "p99_abs_prob_diff": 0.0, "logit_cosine_min": 1.0,
                 "site_map_corr_mean": 1.0}
    return {"candidates": [{"name": "ort-cpu:model.int8.onnx", "precision": "int8", "status": "pass",
                            "clinical": clinical, "numerical": numerical, "checks": []}]}


def test_a_reference_that_refers_every_image_is_said_to_make_the_referral_flips_one_sided() -> None:
    from uopsl.export.parity_html import _summary

    page = _summary(_report(24, 24))
    assert 'class="warn">The reference refers every image (24 of 24)' in page
    assert "refers no image (0 of 30)" in _summary(_report(0, 30))
    assert 'class="warn"' not in _summary(_report(12, 24))
