"""Evaluation of a trained model: operating thresholds, clinical metrics, ROC plots, site-map checks.

Thresholds are chosen on validation data only: for referable classes the
highest threshold that reaches the target sensitivity (e.g. 0.90), for the
others the threshold maximising Youden's J. They are stored in the checkpoint
and from there in the bundle manifest, so the device decides exactly as
evaluated. Where no threshold can be chosen (a class without validation
positives or negatives, or a Youden's J that peaks at "call nothing
positive") the threshold falls back to :data:`FALLBACK_THRESHOLD` with a
warning, and the per-class :class:`OperatingPointRecord` (how each threshold
was obtained and what it achieved on validation) is stored next to the
thresholds, so nobody mistakes a fallback for a validated operating point.

Metrics come from :mod:`uopsl.runtime.metrics` (the same code the parity
validation uses). The bootstrap resamples patients, not images, when the
images' patients are known: two eyes of one patient are not independent, and
resampling them one by one gives intervals that are too narrow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.export.parity_metrics import MIN_CASES_PER_CLASS, NO_LABELS, NO_REFERRAL_LABELS
from uopsl.runtime import metrics, plots
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_json
from uopsl.runtime.preprocess import Geometry, token_stride

log = logging.getLogger(__name__)


#: The threshold a class gets when none can be chosen on validation data (logged, and recorded as ``fallback``).
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class OperatingPointRecord:
    """How one class's operating threshold was obtained, and what it achieved on the validation images.

    ``method``: ``target_sensitivity`` (referable: the highest threshold
    reaching the target), ``youden`` (others: maximal Youden's J),
    ``fallback`` (no threshold could be chosen: :data:`FALLBACK_THRESHOLD`,
    with the reason in ``note``) or ``default`` (no validation images at all).
    ``sensitivity`` / ``specificity`` are those of ``threshold`` on the
    validation images (NaN where undefined).
    """

    name: str
    threshold: float
    method: str
    n_positive: int
    n_negative: int
    sensitivity: float
    specificity: float
    target_sensitivity: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {"name": self.name, "threshold": float(self.threshold), "method": self.method,
                "n_positive": self.n_positive, "n_negative": self.n_negative,
                "sensitivity": num(self.sensitivity), "specificity": num(self.specificity),
                "target_sensitivity": num(self.target_sensitivity), "note": self.note}


def _fallback(name: str, y: np.ndarray, p: np.ndarray, referable: bool, target: float | None,
              why: str) -> OperatingPointRecord:
    r = metrics.rates_at_threshold(y, p, FALLBACK_THRESHOLD)
    log.warning("class %r (%s): operating threshold falls back to %g because %s; on the validation images it gives "
                "sensitivity %s and specificity %s. It is not a validated operating point%s: add validation "
                "images with and without the class, or set the threshold in a class file", name,
                "referable" if referable else "not referable", FALLBACK_THRESHOLD, why,
                "n/a" if math.isnan(r.sensitivity) else f"{r.sensitivity:.3f}",
                "n/a" if math.isnan(r.specificity) else f"{r.specificity:.3f}",
                " (a bundle exported from this checkpoint refers no patient on it unless a class file gives it "
                "a threshold)" if referable else "")
    return OperatingPointRecord(name, FALLBACK_THRESHOLD, "fallback", int(y.sum()), int((~y).sum()), r.sensitivity,
                                r.specificity, target, f"fallback {FALLBACK_THRESHOLD:g}: {why}")


def choose_operating_points(y_val: np.ndarray, p_val: np.ndarray, referable: Sequence[bool],
                            target_sensitivity: float = 0.9, *,
                            names: Sequence[str] | None = None) -> list[OperatingPointRecord]:
    """Per-class operating thresholds from validation probabilities, each with how it was obtained.

    Referable classes: the highest threshold reaching ``target_sensitivity``;
    the others: the threshold maximising Youden's J. A class without
    validation positives or negatives, or whose J peaks at the ``+inf``
    threshold (its scores do not rank positives above negatives), gets
    :data:`FALLBACK_THRESHOLD` and a warning naming the class and the reason.
    ``names`` label the warnings and records (default ``class <k>``).
    """
    k_all = p_val.shape[1]
    labels = list(names) if names is not None else [f"class {k}" for k in range(k_all)]
    if len(labels) != k_all or len(referable) < k_all:
        raise ConfigError(f"need one name and one referable flag per class ({k_all}); got {len(labels)} names "
                          f"and {len(referable)} flags")
    out = []
    for k in range(k_all):
        name = labels[k]
        y, p = y_val[:, k] > 0.5, p_val[:, k].astype(np.float32)
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        target = float(target_sensitivity) if referable[k] else None
        if n_pos == 0 or n_neg == 0:
            why = ("the validation images hold no positive for it" if n_pos == 0
                   else "every validation image is positive for it (no negatives)")
            out.append(_fallback(name, y, p, bool(referable[k]), target, why))
            continue
        if referable[k]:
            op = metrics.threshold_for_sensitivity(y, p, target_sensitivity)
            note = op.note
            auc = metrics.roc_auc(y, p)
            if op.specificity <= 0.0 or not auc > 0.5:
                # Still the threshold that reaches the target (a referable class must not miss it), but one that
                # calls every validation image, or a score that does not rank positives first: said, not silent.
                why = (f"its validation AUC is {auc:.3f} (the scores do not rank positives above negatives)"
                       if not auc > 0.5 else "it calls every validation negative positive (specificity 0)")
                log.warning("class %r (referable): the threshold %.6g reaching sensitivity %.2f is not a useful "
                            "operating point: %s. Every such image would be referred; check the class's training "
                            "and validation labels", name, op.threshold, target_sensitivity, why)
                note = "; ".join(x for x in (note, f"not a useful operating point: {why}") if x)
            out.append(OperatingPointRecord(name, float(op.threshold), "target_sensitivity", n_pos, n_neg,
                                            op.sensitivity, op.specificity, target, note))
            continue
        c = metrics.roc_curve(y, p)
        youden = c.tpr - c.fpr
        j = int(np.nanargmax(youden))
        t = float(c.thresholds[j])
        if not np.isfinite(t):
            why = (f"Youden's J peaks ({youden[j]:.3g}) at the +inf threshold, i.e. calling no image positive: "
                   "its scores do not rank validation positives above negatives")
            out.append(_fallback(name, y, p, False, None, why))
            continue
        out.append(OperatingPointRecord(name, t, "youden", n_pos, n_neg, float(c.tpr[j]), 1.0 - float(c.fpr[j]),
                                        None, f"Youden's J {youden[j]:.4g}"))
    return _few_cases_noted(out)


def _few_cases_noted(points: list[OperatingPointRecord]) -> list[OperatingPointRecord]:
    """``points``, each threshold chosen on fewer than :data:`MIN_CASES_PER_CLASS` validation positives or
    negatives saying so in its note, with one warning naming them.

    Why: the threshold travels into the bundle with the sensitivity it reached ("sensitivity 1.0 on 2
    positives"), which reads as a validated operating point; one image more or less moves that figure by half.
    A fallback says its own reason already.
    """
    few = []
    for i, r in enumerate(points):
        if r.method == "fallback" or (r.n_positive >= MIN_CASES_PER_CLASS and r.n_negative >= MIN_CASES_PER_CLASS):
            continue
        words = (f"chosen on only {r.n_positive} positive and {r.n_negative} negative validation images (fewer "
                 f"than {MIN_CASES_PER_CLASS} on a side): one image changes its validation sensitivity by "
                 f"{1 / max(1, r.n_positive):.0%} and its specificity by {1 / max(1, r.n_negative):.0%}")
        points[i] = replace(r, note="; ".join(x for x in (r.note, words) if x))
        few.append(f"{r.name} ({r.n_positive}+/{r.n_negative}-)")
    if few:
        log.warning("operating thresholds chosen on fewer than %d validation positives or negatives: %s; their "
                    "validation sensitivity and specificity travel into the bundle but say little: validate on more "
                    "images, or choose these thresholds on a larger validation set", MIN_CASES_PER_CLASS,
                    ", ".join(few))
    return points


def choose_thresholds(y_val: np.ndarray, p_val: np.ndarray, referable: Sequence[bool], target_sensitivity: float = 0.9,
                      *, names: Sequence[str] | None = None) -> list[float]:
    """Per-class operating thresholds (see :func:`choose_operating_points`, which also says how each was chosen)."""
    return [r.threshold for r in choose_operating_points(y_val, p_val, referable, target_sensitivity, names=names)]


def default_operating_points(names: Sequence[str], why: str) -> list[OperatingPointRecord]:
    """Records for thresholds set to :data:`FALLBACK_THRESHOLD` without any validation data (logged once)."""
    log.warning("no operating thresholds chosen (%s): every class gets %g, which is not a validated operating point",
                why, FALLBACK_THRESHOLD)
    return [OperatingPointRecord(n, FALLBACK_THRESHOLD, "default", 0, 0, math.nan, math.nan, None,
                                 f"{FALLBACK_THRESHOLD:g} for every class: {why}") for n in names]


def bootstrap_clusters(patients: Sequence[str | None]) -> np.ndarray | None:
    """Integer patient code per image for the cluster bootstrap; None when no patient has two images.

    Not :func:`uopsl.export.parity_metrics.patient_clusters`, which keeps the codes whenever any patient is
    known (a parity report says the bootstrap ran by patient even when each has one image).

    An image of unknown patient gets a code of its own (:func:`uopsl.runtime.metrics.patient_codes`). None
    is returned when that makes every image its own cluster (patients unknown, or one image each): the
    bootstrap then resamples images, exactly as without patients.
    """
    codes = metrics.patient_codes(patients)
    return codes if codes is not None and len(np.unique(codes)) < len(codes) else None


def _graded(names: Sequence[str]) -> bool:
    """Whether the label space is ordered grades: the project's DR grading (``DR_GRADE_NAMES``, in order)."""
    from uopsl.train.datasets.fundus_sets import DR_GRADE_NAMES

    return tuple(names) == DR_GRADE_NAMES


@dataclass(frozen=True)
class ClassCoverage:
    """Which of a model's classes test data can evaluate, and which it cannot (and why).

    A class is evaluated (its AUC enters the macro figures) when the data hold
    images with and without it. ``left_out`` maps each other model class to
    the reason; ``data_only`` maps the data's classes the model does not have
    to their image counts (those labels are ignored by the evaluation).
    """

    model_classes: tuple[str, ...]
    evaluated: tuple[str, ...]
    left_out: dict[str, str]
    data_only: dict[str, int]

    def summary(self) -> str:
        """``"1 of 2 classes (normal)"``."""
        m = len(self.model_classes)
        return f"{len(self.evaluated)} of {m} class{'es' if m != 1 else ''} ({', '.join(self.evaluated) or 'none'})"

    def usable(self) -> bool:
        """Whether a macro figure over the evaluated classes means anything.

        Not when no class can be evaluated, nor when only one of several can
        (a "macro AUC" of a two-class model over ``normal`` alone).
        """
        return len(self.evaluated) >= min(2, len(self.model_classes))

    def to_dict(self) -> dict[str, Any]:
        return {"model_classes": list(self.model_classes), "evaluated": list(self.evaluated),
                "left_out": dict(self.left_out), "data_classes_not_in_model": dict(self.data_only)}

    def problems(self) -> str:
        """``"model class(es) without positives in the data: dr; ..."``; ``""`` when every class is evaluated."""
        parts = []
        unlabelled = [n for n, why in self.left_out.items() if why == NO_LABELS]
        no_pos = [n for n, why in self.left_out.items() if why == NO_POSITIVES]
        no_neg = [n for n, why in self.left_out.items() if why == NO_NEGATIVES]
        if unlabelled:
            parts.append(f"the data do not label the model's {', '.join(unlabelled)} (not evaluated: an image "
                         "without such a label is no negative for it; data that do grade it without a positive "
                         "image say so with classes= in the spec)")
        if no_pos:
            parts.append(f"the model's {', '.join(no_pos)} {'has' if len(no_pos) == 1 else 'have'} no positive "
                         "image in the data")
        if no_neg:
            parts.append(f"every image is positive for the model's {', '.join(no_neg)} (no negatives)")
        if self.data_only:
            parts.append("the data's " + ", ".join(f"{n} ({c} image{'s' if c != 1 else ''})"
                                                  for n, c in self.data_only.items())
                         + (" is not a class" if len(self.data_only) == 1 else " are not classes")
                         + " of the model (those labels are dropped: an image with no model class counts as a "
                         "negative for every model class)")
        return "; ".join(parts)


NO_POSITIVES = "no positive image in the data"
NO_NEGATIVES = "no negative image in the data (every image has it)"


def class_coverage(targets: np.ndarray, names: Sequence[str],
                   data_counts: dict[str, int] | None = None,
                   label_space: Sequence[str] | None = None) -> ClassCoverage:
    """Which model classes ``targets`` (N, K multi-hot over ``names``) can evaluate; see :class:`ClassCoverage`.

    ``data_counts``: images per class name as the data label them (any
    names); those not among ``names`` are reported as ``data_only``.
    ``label_space``: the classes the data grade (None: every model class);
    a model class outside it is left out as :data:`NO_LABELS`, as
    ``uopsl validate`` leaves it out.
    """
    t = np.asarray(targets).reshape(-1, len(names)) > 0.5
    n = len(t)
    graded = None if label_space is None else set(label_space)
    evaluated, left_out = [], {}
    for k, name in enumerate(names):
        pos = int(t[:, k].sum())
        if graded is not None and name not in graded:
            left_out[name] = NO_LABELS
        elif 0 < pos < n:
            evaluated.append(name)
        else:
            left_out[name] = NO_POSITIVES if pos == 0 else NO_NEGATIVES
    data_only = {c: int(v) for c, v in (data_counts or {}).items() if c not in names and v > 0}
    return ClassCoverage(tuple(names), tuple(evaluated), left_out, data_only)


def evaluate(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float], names: Sequence[str], out: Path | None,
             n_boot: int = 1000, seed: int = 0, title: str = "", *, patients: Sequence[str | None] | None = None,
             head: str = "sigmoid", ordinal: bool | None = None, data_counts: dict[str, int] | None = None,
             write_report: bool = True, referable: Sequence[bool] | None = None,
             label_space: Sequence[str] | None = None) -> dict[str, Any]:
    """Clinical metrics (with CIs) of ``probs`` against multi-hot ``targets``; writes eval.json + roc.png.

    ``patients`` (one id per row, None or "" when unknown): the bootstrap
    resamples patients; ``report["bootstrap"]["unit"]`` says which was done.
    ``head="softmax"`` with exactly one label per row: the labels are passed
    as class indices, so the argmax confusion matrix, accuracy, argmax
    macro-F1 and balanced accuracy are reported, and, for a graded label
    space (``ordinal``; default: the classes are the DR grades
    ``DR_GRADE_NAMES`` in order), the quadratic weighted kappa. A sigmoid
    (multi-label) head, or rows without exactly one label, keep the
    one-vs-rest figures at the thresholds. ``data_counts``: images per label
    in the data, so the coverage names labels the model lacks.
    ``write_report=False``: write roc.png only (a caller that adds to the
    report writes eval.json itself, once). ``referable`` (one flag per
    class): also ``report["referral"]``, the device's referral call
    (:func:`referral_figures`).

    ``label_space``: the classes the data grade (None: every model class).
    A model class outside it is not evaluated, as ``uopsl validate`` leaves
    it out: an image without its label is not a negative for it (TVHL grades
    DR and DME, not AMD), so it gets no sensitivity, specificity, PPV, NPV,
    F1 or AUC, only the reason (:func:`not_evaluated_record`); the referral
    figures need every referable class graded. Every graded class's record
    says whether it has fewer than :data:`MIN_CASES_PER_CLASS` positive or
    negative cases (patients when known; :func:`few_cases_flags`): its
    figures are reported, flagged ``too_few_cases``, with a warning.
    """
    unlabelled = [k for k, n in enumerate(names) if label_space is not None and n not in set(label_space)]
    stray = [names[k] for k in unlabelled if np.asarray(targets)[:, k].any()]
    if stray:
        raise ConfigError(f"images carry the label(s) {', '.join(stray)}, which the data's label space "
                          f"({', '.join(label_space or ())}) does not hold; pass the label space the labels come from")
    keep = [k for k in range(targets.shape[1])
            if k not in unlabelled and 0 < targets[:, k].sum() < len(targets)]
    hot = np.asarray(targets) > 0.5
    one_label = bool(np.all(hot.sum(axis=1) == 1))
    y_true: np.ndarray = hot.astype(np.int64)
    if head == "softmax" and one_label:
        y_true = np.argmax(hot, axis=1)
    elif head == "softmax":
        log.warning("softmax head, but %d of %d images do not carry exactly one label: reporting one-vs-rest "
                    "figures only (no argmax confusion matrix, accuracy or kappa)", int(np.sum(hot.sum(1) != 1)),
                    len(hot))
    single = head == "softmax" and one_label
    graded = _graded(names) if ordinal is None else bool(ordinal)
    if graded and not single:
        log.warning("quadratic kappa needs a softmax head with one label per image; not computed")
        graded = False
    clusters = bootstrap_clusters(patients) if patients is not None else None
    report = metrics.classification_report(y_true, probs, list(thresholds), list(names), n_boot=n_boot, seed=seed,
                                           include_curves=out is not None, ordinal=graded, clusters=clusters)
    report["head"] = head
    boot = report["bootstrap"]
    if clusters is not None:
        boot["unit"] = "patient"
        boot["n_patients"] = boot.pop("n_units")
    else:
        boot["unit"] = "image"
        boot["n_images"] = boot.pop("n_units")
        if patients is not None:
            boot["note"] = "resampled images: no patient has two images here (or the patients are unknown)"
        else:
            boot["note"] = "resampled images: the images' patients were not given"
    for k, row in enumerate(report["classes"]):
        row["labelled"] = k not in unlabelled
    if unlabelled:
        _set_aside_unlabelled(report, [names[k] for k in unlabelled], probs, thresholds, names, label_space or ())
    if referable is not None:
        report["referral"] = referral_figures(probs, targets, thresholds, referable, names, clusters=clusters,
                                              n_boot=n_boot, seed=seed, label_space=label_space)
    report["evaluated_classes"] = [names[k] for k in keep]
    report["label_space"] = list(label_space) if label_space is not None else None
    # What the macro figures cover: the classes with positives and negatives here; the others and why.
    report["class_coverage"] = class_coverage(targets, names, data_counts, label_space).to_dict()
    few_cases_flags(report, targets, patients, referable)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        curves = {names[k]: metrics.roc_curve(targets[:, k], probs[:, k]) for k in keep}
        if curves:  # the plot first: eval.json is the last thing written, so it never describes a failed run
            # A class with no positive or no negative image here has no curve: named under the title, so the
            # picture alone does not read as the model's every class (eval.json's left_out says it too).
            absent = [n for n in names if n not in curves]
            shown = ", ".join(absent)
            if len(shown) > 40:  # the subtitle is one line the width of the plot
                shown = f"{len(absent)} classes (eval.json, class_coverage)"
            plots.roc_plot(_roc_series(curves, report), out / "roc.png", title=title or "ROC",
                           subtitle="dots: the operating thresholds" + (f"; no curve: {shown}" if absent else ""))
        else:
            log.warning("no class has positive and negative images here: no ROC curve to plot")
        if write_report:
            write_json(out / "eval.json", report)
    return report


#: The figures a class outside the data's label space does not get (its record keeps their keys, estimate None).
NOT_EVALUATED_METHOD = "not evaluated"


def not_evaluated_record(row: dict[str, Any], reason: str, n_called: int) -> dict[str, Any]:
    """A class record of :func:`uopsl.runtime.metrics.classification_report` for a class the data do not grade:
    its name and threshold, how many images reach the threshold (a fact of the model, not a figure), no counts
    or figures, and the reason (every metric keeps its key, with estimate None and method ``not evaluated``)."""
    empty = {"estimate": None, "low": None, "high": None, "n_valid": 0, "method": NOT_EVALUATED_METHOD}
    return {"name": row["name"], "n_positive": None, "n_negative": None, "threshold": row["threshold"],
            "tp": None, "fp": None, "tn": None, "fn": None,
            **{m: dict(empty) for m in ("auc", "sensitivity", "specificity", "ppv", "npv", "f1")},
            "notes": [f"not evaluated: {reason}"], "labelled": False, "not_evaluated": reason,
            "n_called_positive": int(n_called)}


def _set_aside_unlabelled(report: dict[str, Any], unlabelled: Sequence[str], probs: np.ndarray,
                          thresholds: Sequence[float], names: Sequence[str], label_space: Sequence[str]) -> None:
    """Replace the records of the classes the data do not grade (:func:`not_evaluated_record`), drop their
    notes and ROC points, and say once why (``report["notes"]``)."""
    p = np.asarray(probs, np.float32)
    thr = np.asarray(list(thresholds), np.float32)
    rows = report["classes"]
    for k, name in enumerate(names):
        if name in unlabelled:
            rows[k] = not_evaluated_record(rows[k], NO_LABELS, int((p[:, k] >= thr[k]).sum()))
    report["notes"] = [n for n in report["notes"] if not any(n.startswith(f"{u}: ") for u in unlabelled)]
    report["notes"].append(f"{', '.join(unlabelled)}: not evaluated ({NO_LABELS}; the data grade "
                           f"{', '.join(label_space) or 'nothing'}): an image without such a label is no negative, "
                           "so no sensitivity, specificity, PPV, NPV or AUC is given for "
                           + ("it" if len(unlabelled) == 1 else "them"))
    for name in unlabelled:
        (report.get("roc") or {}).pop(name, None)


def few_cases_flags(report: dict[str, Any], targets: np.ndarray, patients: Sequence[str | None] | None,
                    referable: Sequence[bool] | None = None) -> list[str]:
    """Flag each graded class (and the referral call) with fewer than :data:`MIN_CASES_PER_CLASS` positive or
    negative cases, counting patients where the images' patients are known; returns the flagged names.

    The rule is ``uopsl validate``'s (there, such a class is not gated): a sensitivity over 3 positives moves by
    33 points with one case, and a percentile bootstrap over 2 positive patients draws one of 3 combinations,
    so its interval looks far surer than the data allow. The figures stay in the report; each record gets
    ``too_few_cases`` (and ``too_few_cases_reason`` when true), plus ``n_positive_patients`` and
    ``n_negative_patients`` when patients are known (a patient with a positive and a negative eye counts on
    both sides); a warning names the classes, and ``report["min_cases_per_class"]`` states the rule.
    """
    truth = np.asarray(targets) > 0.5
    codes = metrics.patient_codes(list(patients)) if patients is not None else None
    unit = "image" if codes is None else "patient"
    rule = f"uopsl validate's minimum per class, counted here by {unit}"
    flagged: list[str] = []
    said: list[str] = []

    def flag(rec: dict[str, Any], pos: np.ndarray, name: str) -> None:
        if codes is not None:
            n_pos, n_neg = len(np.unique(codes[pos])), len(np.unique(codes[~pos]))
            rec["n_positive_patients"], rec["n_negative_patients"] = n_pos, n_neg
        else:
            n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        short = [f"{k} {side} {unit}{'s' if k != 1 else ''}" for k, side in ((n_pos, "positive"), (n_neg, "negative"))
                 if k < MIN_CASES_PER_CLASS]
        rec["too_few_cases"] = bool(short)
        if short:
            rec["too_few_cases_reason"] = (f"only {' and '.join(short)}: fewer than {MIN_CASES_PER_CLASS} on a "
                                           f"side ({rule}); the figures are reported, but one case moves them "
                                           "by 0.1 or more")
            flagged.append(name)
            said.append(f"{name} ({' and '.join(short)})")

    for k, rec in enumerate(report.get("classes", [])):
        if rec.get("labelled") is not False:
            flag(rec, truth[:, k], str(rec["name"]))
    ref = report.get("referral")
    if isinstance(ref, dict) and ref.get("applicable") and referable is not None:
        flag(ref, np.asarray(truth[:, np.asarray(list(referable), bool)].any(axis=1), bool), "referral")
    report["min_cases_per_class"] = {
        "positive": MIN_CASES_PER_CLASS, "negative": MIN_CASES_PER_CLASS, "unit": unit,
        "rule": f"a class (and the referral call) with fewer than {MIN_CASES_PER_CLASS} positive or negative "
                f"{unit}s is flagged too_few_cases: its figures are reported, but one case moves them by 0.1 or "
                f"more and their intervals understate that ({rule}; validate does not gate such a class)",
        "flagged": flagged}
    if said:
        log.warning("too few cases for the figures of %s to mean much: fewer than %d positive or negative %ss (%s); "
                    "they are reported, flagged too_few_cases in eval.json; evaluate on more %ss", ", ".join(said),
                    MIN_CASES_PER_CLASS, unit, rule, unit)
    return flagged


def _roc_series(curves: dict[str, metrics.RocCurve], report: dict[str, Any]) -> list[plots.RocSeries]:
    """One curve per class, each with its operating point (1 - specificity, sensitivity at the threshold) and
    its AUC with the report's 95 % interval in the legend."""
    rows = {c["name"]: c for c in report.get("classes", [])}
    points: dict[str, tuple[float, float]] = {}
    for name in curves:
        row = rows.get(name, {})
        sens, spec = (row.get(m, {}).get("estimate") for m in ("sensitivity", "specificity"))
        if isinstance(sens, float) and isinstance(spec, float) and math.isfinite(sens) and math.isfinite(spec):
            points[name] = (1.0 - spec, sens)
    series = plots.per_class_series(curves, points, order=[str(c["name"]) for c in report.get("classes", [])])
    out = []
    for it in series:
        row = rows.get(it.label, {})
        auc = row.get("auc", {})
        est, lo, hi = auc.get("estimate"), auc.get("low"), auc.get("high")
        if all(isinstance(v, float) and math.isfinite(v) for v in (est, lo, hi)):
            text = f"AUC {est:.3f}, 95 % CI {lo:.3f}-{hi:.3f}"
        else:
            text = f"AUC {it.curve.auc:.3f}" if it.curve.defined else "AUC n/a"
        # How many cases each curve stands on (ASCII: the plot's font has no minus sign); patients when known.
        text += f"; n+ {row.get('n_positive')}, n- {row.get('n_negative')}"
        if row.get("n_positive_patients") is not None:
            text += f" ({row['n_positive_patients']}/{row['n_negative_patients']} patients)"
        if row.get("too_few_cases"):
            text += ", too few"
        out.append(replace(it, auc_text=text))
    return out


def referral_figures(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float], referable: Sequence[bool],
                     names: Sequence[str], *, clusters: np.ndarray | None = None, n_boot: int = 1000,
                     seed: int = 0, label_space: Sequence[str] | None = None) -> dict[str, Any]:
    """How the device's referral call performs: a photograph is referred when any referable class reaches its
    threshold (the rule ``uopsl export`` writes, ``any_referable``), truth = any referable label.

    Each referable threshold is chosen on its own at the target sensitivity, so the combined call refers more
    often than any one class does: its specificity can sit far below every class's, and a per-class table
    alone overstates what the device does. Sensitivity, specificity, PPV and NPV with the same intervals as
    the per-class figures (Wilson; patients resampled when ``clusters`` are given). The call is 0/1, so no
    AUC is given for it. ``label_space``: the classes the data grade (None: all); when it leaves out a
    referable class the truth is unknown (an image without that label may still need referral), so only how
    many images the call refers is given (``applicable`` false, with :data:`NO_REFERRAL_LABELS`), as
    ``uopsl validate`` does.
    """
    ref = np.asarray(list(referable), bool)
    base: dict[str, Any] = {"rule": "any_referable",
                            "rule_text": "referred when any referable class's probability >= its threshold",
                            "referable_classes": [n for n, r in zip(names, ref) if r]}
    if ref.size != len(names) or not ref.any():
        return {**base, "applicable": False, "note": "no class of this model is referable: nothing is referred"}
    # As Manifest.decide: float32 probabilities against float32 thresholds, `>=`.
    p = np.asarray(probs, np.float32).astype(np.float64)
    thr = np.asarray(list(thresholds), np.float32).astype(np.float64)
    called = np.asarray((p >= thr[None, :])[:, ref].any(axis=1), bool)
    ungraded = [n for n, r in zip(names, ref) if r and label_space is not None and n not in set(label_space)]
    if ungraded:
        return {**base, "applicable": False, "not_evaluated": NO_REFERRAL_LABELS,
                "note": f"not evaluated: {NO_REFERRAL_LABELS} (the data do not grade {', '.join(ungraded)}; an image "
                        "without such a label may still need referral), so no sensitivity, specificity, PPV or NPV",
                "n_images": int(len(called)), "referred": int(called.sum())}
    truth = np.asarray((np.asarray(targets) > 0.5)[:, ref].any(axis=1), bool)
    rep = metrics.classification_report(truth.astype(np.int64)[:, None], called.astype(np.float64)[:, None], [0.5],
                                        ["referral"], n_boot=n_boot, seed=seed, clusters=clusters,
                                        include_curves=False)
    row = rep["classes"][0]
    return {**base, "applicable": True, "n_positive": row["n_positive"], "n_negative": row["n_negative"],
            "referred": int(called.sum()), **{k: row[k] for k in ("tp", "fp", "tn", "fn")},
            **{k: row[k] for k in _REFERRAL_FIGURES}, "notes": _referral_notes(row)}


#: What :func:`referral_figures` reports of the 0/1 referral call (no AUC or F1: the call is no score).
_REFERRAL_FIGURES = ("sensitivity", "specificity", "ppv", "npv")


def _referral_notes(row: dict[str, Any]) -> list[str]:
    """The notes of the referral call's figures, worded for the call: "no case is referred (any_referable)"
    where the metrics code, which scored the 0/1 call at 0.5, says "no case reaches the threshold 0.5" (there
    is no such threshold: each referable class has its own); notes on the AUC and F1 of the call, which the
    report does not give, are left out."""
    out = []
    for note in row.get("notes", []):
        figure = note.split(":", 1)[0].split(" ", 1)[0]
        if figure not in _REFERRAL_FIGURES:
            continue
        if note.startswith("ppv undefined: no case reaches the threshold"):
            note = "ppv undefined: no case is referred (any_referable: no referable class reaches its threshold)"
        elif note.startswith("npv undefined: every case reaches the threshold"):
            note = ("npv undefined: every case is referred (any_referable: for each, some referable class reaches "
                    "its threshold)")
        out.append(note)
    return out


def mask_to_grid(mask: np.ndarray, geometry: Geometry, h: int, w: int) -> np.ndarray:
    """Fraction of each token's window covered by ``mask`` (original-image coordinates), on the (h, w) grid.

    The mask goes through the same crop as the image (``geometry``), then is
    area-averaged onto windows of one stride centred where each token looks:
    token j of a stride-s grid is centred on model pixel s*j
    (:meth:`~uopsl.runtime.preprocess.Geometry.to_original`), not on the middle
    of the cell [s*j, s*(j+1)), which lies (s-1)/2 pixels further on (15.5 at
    stride 32; the figures before session 15 used those cells).
    """
    m = (mask > 0).astype(np.float32)
    crop = np.zeros((geometry.side, geometry.side), np.float32)
    sx0, sy0, dx0, dy0 = max(0, geometry.x0), max(0, geometry.y0), max(0, -geometry.x0), max(0, -geometry.y0)
    cw = min(geometry.orig_w - sx0, geometry.side - dx0)
    ch = min(geometry.orig_h - sy0, geometry.side - dy0)
    if cw > 0 and ch > 0:
        crop[dy0 : dy0 + ch, dx0 : dx0 + cw] = m[sy0 : sy0 + ch, sx0 : sx0 + cw]
    # Move the mask (s-1)/2 model pixels down and right (border: no mask), so that cell j holds token j's window.
    sx, sy = token_stride(geometry.size, w), token_stride(geometry.size, h)
    # Window j is [s*j - (s-1)/2, s*j + (s+1)/2) model pixels: the crop, scaled so one stride is one cell,
    # moved by (s-1)/2 (border: no mask), then area-averaged cell by cell.
    k = geometry.size / geometry.side  # model pixels per crop pixel
    span_x, span_y = int(round(w * sx / k)), int(round(h * sy / k))  # the grid's extent in crop pixels
    shifted = cv2.warpAffine(crop, np.array([[1, 0, (sx - 1) / 2 / k], [0, 1, (sy - 1) / 2 / k]], np.float32),
                             (span_x, span_y), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0.0)
    return cv2.resize(shifted, (w, h), interpolation=cv2.INTER_AREA)


def site_concentration(att: np.ndarray, cover: np.ndarray, inside: np.ndarray | None = None) -> float:
    """Attention mass inside the true site mask divided by the mask's share of the cells the map may weigh.

    ``inside`` (bool, the grid's shape): the cells the site attention may weigh
    (the field of view of a model with ``fov_token_mask``); ``None``: all of
    them. 1 = a map spread evenly over those cells. Taking the mask's share of
    the whole grid while the map only weighs the field of view (the definition
    before session 14, :func:`site_concentration` without ``inside``) puts
    chance at about 1.23 on an 8 x 8 grid.
    """
    a = att / max(float(att.sum()), 1e-12)
    region = np.ones_like(cover, dtype=bool) if inside is None else np.asarray(inside, bool)
    frac = float(cover[region].sum()) / max(int(region.sum()), 1)
    if frac <= 0:
        return float("nan")
    return float((a * cover * region).sum() / frac)


CONCENTRATION_LEGEND = ("site concentration (attention mass in the true site mask / the mask's share of the field "
                        "of view; 1 = a map spread evenly; in brackets a fixed map per class and one fixed map for "
                        "all classes, which look at no image)")


def concentration_summary(report: dict[str, Any]) -> str:
    """One line of :func:`site_concentration_report`'s figures: ``dr 2.85 (3.30, 3.02), ...`` (see the legend)."""
    return ", ".join(f"{name} {v['mean']:.2f} ({v['class_prior']:.2f}, {v['pooled_prior']:.2f})"
                     for name, v in report.items())


def site_concentration_report(maps: np.ndarray, targets: np.ndarray, names: Sequence[str],
                              masks: Sequence[str | Path | None], geometries: Sequence[Geometry | None],
                              inside: np.ndarray | None = None) -> dict[str, Any]:
    """Where the predilection maps point, measured against true site masks (synthetic data carries them).

    maps (N, K, h, w) site maps on the model's token grid; masks[i] a site-mask
    ``.npz`` (class name -> mask in the original image's pixels, see
    :func:`uopsl.train.synthetic.load_masks`) or None; geometries[i] the crop
    that took image i to the model input; ``inside`` the (h, w) cells the maps
    may weigh (see :func:`site_concentration`). Classes never masked (e.g.
    ``normal``) are left out. Per class, over the images that have the class
    and its mask:

    - ``mean``: the mean :func:`site_concentration` (1 = a map spread evenly);
      ``mean_over_grid``: the same with the mask's share of the whole grid (the
      figure reported before session 14);
    - ``mass_in_mask``: the attention mass inside the mask (0-1);
    - the same ratio for maps that ignore the image, as yardsticks: because the
      synthetic sites sit at fixed places of the field of view (the macula,
      the disc), a fixed map scores high without looking at the image.
      ``class_prior``: the class's own mean mask over these images (the best
      one fixed map per class can do here: an oracle); ``pooled_prior``: one
      fixed map for every class, the mean of all classes' masks;
    - ``on_other_sites``: this class's maps scored against the masks of the
      other classes, on images that have those and not this one (a map that
      finds its own class's sites scores lower there than on its own).
    """
    from uopsl.train.synthetic import load_masks

    if not len(maps) == len(targets) == len(masks) == len(geometries):
        raise ConfigError(f"site_concentration_report needs one map, target, mask and geometry per image, got "
                          f"{len(maps)}, {len(targets)}, {len(masks)} and {len(geometries)}")
    h, w = maps.shape[2:]
    region = np.ones((h, w), bool) if inside is None else np.asarray(inside, bool)
    pairs: list[tuple[int, int, np.ndarray]] = []  # (image, class, mask cover on the grid)
    for i, (mfile, geom) in enumerate(zip(masks, geometries)):
        if not mfile or geom is None:
            continue
        per_class = load_masks(mfile)
        for k, name in enumerate(names):
            if name in per_class and targets[i, k] > 0:
                cover = mask_to_grid(per_class[name], geom, h, w)
                if float(cover[region].sum()) > 0:  # a mask wholly outside the cells the map weighs: no ratio
                    pairs.append((i, k, cover))
    if not pairs:
        return {}
    priors = {k: np.mean([c for _, kk, c in pairs if kk == k], axis=0) * region for k in {k for _, k, _ in pairs}}
    pooled = np.mean([c for _, _, c in pairs], axis=0) * region
    out: dict[str, Any] = {}
    for k, name in enumerate(names):
        own = [(i, c) for i, kk, c in pairs if kk == k]
        if not own:
            continue
        ratios = [site_concentration(maps[i, k], c, inside) for i, c in own]
        grid = [site_concentration(maps[i, k], c) for i, c in own]
        mass = [float((maps[i, k] / max(float(maps[i, k].sum()), 1e-12) * c).sum()) for i, c in own]
        others = [site_concentration(maps[i, k], c, inside) for i, kk, c in pairs
                  if kk != k and targets[i, k] <= 0]
        out[name] = {
            "mean": float(np.nanmean(ratios)), "n_images": len(own),
            "mean_over_grid": float(np.nanmean(grid)),
            "mass_in_mask": float(np.mean(mass)),
            "class_prior": float(np.nanmean([site_concentration(priors[k], c, inside) for _, c in own])),
            "pooled_prior": float(np.nanmean([site_concentration(pooled, c, inside) for _, c in own])),
            "on_other_sites": float(np.nanmean(others)) if others else None,
        }
    return out
