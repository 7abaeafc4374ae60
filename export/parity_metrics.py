"""Parity metrics and gates: how far a deployed model's outputs and decisions are from the reference's.

Two families, both computed on the same images fed to both models:

* numerical: max and 99th-percentile |prob difference|, cosine similarity of
  the logit vectors, Pearson correlation of the site maps (per image);
* clinical: per-class AUC of reference and candidate against the truth and
  their paired bootstrap difference, sensitivity/specificity at the manifest's
  operating thresholds (each with its Wilson 95 % interval, reported), referral
  decisions that flip (made by :meth:`uopsl.runtime.bundle.Manifest.decide`,
  the one decision rule), images with any changed referable finding, and top-1
  agreement.

The truth is the dataset's labels when it has them; without labels the
reference's own decisions stand in for the truth, so "sensitivity" then reads
"share of the reference's positive calls the candidate keeps" and the
reference's own AUC is 1 by construction. Reports say which truth was used.

:class:`ParityGates` turns the figures into a verdict with three states: PASS
(every gate evaluated for every class it applies to, all within their
limits), FAIL (a gate is exceeded) and INCOMPLETE (nothing exceeded, but a gate
could not be evaluated for some class: no labels for it, no positive image
among these images, or fewer than :data:`MIN_CASES_PER_CLASS` positive or
negative images); only PASS lets a file be used unasked. By default gates
compare point estimates (the bootstrap interval and the exact upper bounds on
the change rates are reported, not gated): a release gate must be reproducible
and should not depend on the bootstrap seed. The upper bounds are there so that
a signer sees what "0 changes" on a small set can and cannot show. A signer who
must claim more (each rate *is* within its gate, at 95 % confidence) judges on
the bounds as well (:data:`ON_BOUNDS`, ``uopsl validate --judge-on bounds``):
then 0 flips of 120 images is not shown within the 0.5 % flip gate (its bound
is 2.5 %), and the verdict is INCOMPLETE (:func:`judge`). With the images'
patients known, the AUC bootstrap resamples patients and each change rate is
also bounded over patients (:func:`patient_rate_bound`), and the Wilson and
Newcombe intervals are computed on the design-effect sample size (since
sessions 56 and 57); the report says how (:data:`INDEPENDENCE_NOTE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from uopsl.runtime.bundle import INCOMPLETE_MARK, Manifest, parity_gates_problem
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.metrics import (
    WILSON,
    WILSON_DESIGN_EFFECT,
    Interval,
    clopper_pearson_upper,
    clustered_proportion_interval,
    paired_auc_difference,
    patient_codes,
    proportion_interval,
    rates_at_threshold,
    roc_auc,
    single_unit_side,
)

TRUTH_LABELS = "labels"
TRUTH_REFERENCE = "reference_decisions"

#: Verdicts of a candidate and of a run (see the module doc).
PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"
#: Confidence of the exact upper bounds on change rates (one-sided).
CONFIDENCE = 0.95
#: What a verdict compares with the gates: the measured figures (the default), or those and their bounds
#: (:func:`judge`, :func:`_gate_bounds`): the exact one-sided 95 % upper bounds of the change rates (flips,
#: class calls, findings, top-1 disagreement) and of the positives lost, and the far end of each AUC drop's
#: two-sided 95 % interval (one-sided 97.5 %).
ON_ESTIMATES, ON_BOUNDS = "estimates", "bounds"
JUDGE_ON = (ON_ESTIMATES, ON_BOUNDS)
#: Two-sided level of the paired bootstrap interval of each AUC difference (0.05: a 95 % interval).
BOOTSTRAP_ALPHA = 0.05
#: Two-sided level and method of the intervals of each sensitivity and specificity (reported, never gated).
PROPORTION_ALPHA = 0.05
PROPORTION_METHOD = WILSON
#: ... and with the images' patients known: Wilson on the effective number of cases (each patient's images
#: correlated; :func:`uopsl.runtime.metrics.clustered_proportion_interval`).
PROPORTION_METHOD_PATIENTS = WILSON_DESIGN_EFFECT

#: Fewest positive and fewest negative images a class (and the referral decision) needs before the AUC and
#: sensitivity gates count it as evaluated; with fewer, the class is listed as not evaluated and the verdict is
#: INCOMPLETE, as for a class without labels. Why: on a handful of cases these figures say nothing a gate can
#: vouch for. With 3 positives one changed call moves sensitivity by 33 points, and a sensitivity of 3/3 has
#: the Wilson 95 % interval [0.44, 1]; an AUC on 2 positives moves by up to 0.5 with one image, so "AUC drop
#: 0" there hides any loss. 10 of each is a floor that stops a gate from passing on such counts, not a
#: sample-size calculation (10/10 still has the interval [0.72, 1]): the intervals in the report say how much
#: more a run shows. The figures themselves are still computed and reported.
MIN_CASES_PER_CLASS = 10

# Why a figure could not be computed for a class; the gate lists the class with this reason.
NO_LABELS = "no labels for this class in the data"
NO_REFERRAL_LABELS = "the labels do not cover every referable class"
_NO_POSITIVE = {TRUTH_LABELS: "no positive image in the data",
                TRUTH_REFERENCE: "the reference called no image positive (no labels: its decisions are the truth)"}
_NO_NEGATIVE = {TRUTH_LABELS: "no negative image in the data",
                TRUTH_REFERENCE: "the reference called every image positive (no labels: its decisions are the truth)"}


@dataclass(frozen=True)
class ParityGates:
    """Limits a candidate must stay within; strict defaults suited to a screening release.

    max_flip_rate: share of images whose referral decision (refer yes/no) differs
        from the reference's (0.005 = 0.5 %).
    max_class_flip_rate: largest share, over the referable classes, of images
        whose positive/negative call for that class differs from the
        reference's. The screening report shows each class's call to the
        clinician ("positive: amd, glaucoma"), and a changed call can hide
        behind an unchanged referral (an image referred for DR anyway), so the
        referral flips alone do not cover it. Same default as the flip gate.
        It is the worst single class, not the share of images with any
        changed finding (which can be larger): that is ``max_finding_change_rate``.
    max_finding_change_rate: share of images with at least one referable
        class's call changed (:func:`finding_changes`), the export issue's
        "screening decisions flipped at the operating thresholds <= 1 %" read
        per image: one patient whose AMD call changed and another whose DME
        call changed are two images, which the worst-class gate counts once
        each in different classes (a review passed 3 such images of 200,
        1.5 %, under the 0.5 % gates).
    max_auc_drop: largest allowed ``AUC(reference) - AUC(candidate)`` of any class.
    max_sensitivity_drop: largest allowed sensitivity loss at the manifest
        thresholds, of any referable class and of the referral decision
        (0.01 = 1 point). Sensitivity is the disease-detection figure; a
        non-referable class (e.g. ``normal``) is covered by the AUC gate and
        the referral flips, and its figures are reported.
    max_prob_diff: optional numerical gate on max |prob difference| (None: not gated;
        the right figure depends on the precision, e.g. 1e-4 for FP32).
    min_top1_agreement: smallest allowed share of images whose highest-scoring
        class is the reference's (0.99 = 99 %). It applies to sigmoid
        (multi-label) heads too, where a swap between two classes that are
        both above threshold changes no screening decision: the gate still
        counts it (it is the export issue's gate), and on small sets one swap
        is a large share (24 images: 4 %), so validate on enough images.
    """

    # The defaults are uopsl.runtime.bundle.PARITY_GATE_DEFAULTS (the runtime judges records against them).
    max_flip_rate: float = 0.005
    max_class_flip_rate: float = 0.005
    max_finding_change_rate: float = 0.01
    max_auc_drop: float = 0.005
    max_sensitivity_drop: float = 0.01
    max_prob_diff: float | None = None
    min_top1_agreement: float = 0.99

    def __post_init__(self) -> None:
        for name in self.to_dict():
            v = getattr(self, name)
            if v is None and name == "max_prob_diff":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"gate {name} must be a number in [0, 1], got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_default(self) -> bool:
        return self == ParityGates()

    @property
    def looser_than_default(self) -> str | None:
        """Which gates are looser than the defaults (None: the defaults or stricter); such a run records no pass."""
        return parity_gates_problem(self.to_dict())


#: ``--gates`` keys: the field names and short aliases.
GATE_ALIASES: dict[str, str] = {
    "flips": "max_flip_rate", "flip_rate": "max_flip_rate", "class_flips": "max_class_flip_rate",
    "class_flip_rate": "max_class_flip_rate", "findings": "max_finding_change_rate",
    "finding_changes": "max_finding_change_rate", "auc": "max_auc_drop", "auc_drop": "max_auc_drop",
    "sens": "max_sensitivity_drop", "sensitivity": "max_sensitivity_drop", "prob": "max_prob_diff",
    "prob_diff": "max_prob_diff", "top1": "min_top1_agreement", "top1_agreement": "min_top1_agreement",
}


def parse_gates(text: str | None, base: ParityGates | None = None) -> ParityGates:
    """``"flips=0.01,auc=0.01"`` -> :class:`ParityGates` (unnamed gates keep ``base``'s values)."""
    values = (base or ParityGates()).to_dict()
    if not text:
        return ParityGates(**values)
    given: dict[str, str] = {}  # gate -> the key that set it: a gate named twice is refused, not the last one kept
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"--gates takes key=value pairs like flips=0.005,class_flips=0.005,auc=0.005; "
                              f"got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        name = GATE_ALIASES.get(key, key)
        if name not in values:
            raise ConfigError(
                f"unknown gate {key!r}; expected one of {sorted(set(values) | set(GATE_ALIASES))}"
            )
        if name in given:
            how = f"{key!r} twice" if given[name] == key else f"as {given[name]!r} and as {key!r}"
            raise ConfigError(f"--gates sets {name} twice ({how}): {text!r}; give each gate once")
        given[name] = key
        if raw.lower() in ("none", "off") and name == "max_prob_diff":
            values[name] = None
            continue
        try:
            values[name] = float(raw)
        except ValueError:
            raise ConfigError(f"gate {key} needs a number, got {raw!r}") from None
    return ParityGates(**values)


@dataclass(frozen=True)
class Truth:
    """What the decisions are scored against.

    positive: (N, K) bool per manifest class; only columns with ``defined[k]``
    mean anything. refer: (N,) bool referral truth, or None when the labels do
    not cover every referable class.
    """

    source: str
    positive: np.ndarray
    defined: np.ndarray
    refer: np.ndarray | None
    notes: tuple[str, ...] = ()


def truth_from_labels(manifest: Manifest, labels: Sequence[Sequence[str]], label_space: Sequence[str]) -> Truth:
    """Per-class truth for the manifest's classes from each image's label names.

    A manifest class absent from the dataset's label space has no truth (its
    clinical metrics are skipped, with a note); the referral truth needs every
    referable class to be in the label space.
    """
    names = manifest.class_names
    space = set(label_space)
    defined = np.array([n in space for n in names], bool)
    pos = np.array([[n in set(lab) for n in names] for lab in labels], bool).reshape(len(labels), len(names))
    notes = []
    missing = [n for n, d in zip(names, defined) if not d]
    if missing:
        notes.append(f"bundle classes without labels in the data (no clinical metrics for them): {missing}")
    referable = manifest.referable_mask
    refer: np.ndarray | None = None
    if referable.any() and defined[referable].all():
        refer = np.asarray(pos[:, referable].any(axis=1), bool)
    elif referable.any():
        notes.append("the labels do not cover every referable class: referral sensitivity/specificity not computed")
    return Truth(TRUTH_LABELS, pos, defined, refer, tuple(notes))


def truth_from_reference(manifest: Manifest, reference_probs: np.ndarray) -> Truth:
    """The reference's own decisions as the truth (data without labels)."""
    pos, refer = manifest.decide(reference_probs)
    note = ("no labels: the reference model's own decisions are the truth; sensitivity/specificity measure "
            "agreement with the reference and its AUC is 1 by construction")
    return Truth(TRUTH_REFERENCE, pos, np.ones(pos.shape[1], bool), refer, (note,))


# -- exact bounds on change rates -------------------------------------------------------------
def binomial_upper_bound(changes: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Exact (Clopper-Pearson) one-sided upper confidence bound on a rate seen as ``changes`` in ``n``.

    Why: a point rate of 0 changes in 120 images reads as "0 %", yet rates up to
    2.5 % would give 0 changes in 120 images more than 5 % of the time; the
    bound says how large the true rate may still be. It is the ``p`` at which
    ``P(X <= changes | n, p) = 1 - confidence`` (the ``confidence`` quantile of
    Beta(changes + 1, n - changes): :func:`uopsl.runtime.metrics.clopper_pearson_upper`, numpy only).
    0 changes has the closed form ``1 - (1 - confidence) ** (1 / n)``. NaN when ``n`` is 0.
    """
    if not isinstance(n, (int, np.integer)) or not isinstance(changes, (int, np.integer)) or not 0 <= changes <= n:
        raise ConfigError(f"binomial_upper_bound needs integers 0 <= changes <= n, got changes={changes!r}, n={n!r}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1) (0.95 for a 95 % bound), got {confidence!r}")
    if int(n) == 0:
        return math.nan
    return clopper_pearson_upper(int(changes), int(n), confidence)


def rate_bound(changes: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``{"changes", "n", "rate", "upper95"}``: a change count with its point rate and exact upper bound."""
    return {"changes": int(changes), "n": int(n), "rate": changes / n if n else math.nan,
            "upper95": binomial_upper_bound(int(changes), int(n), confidence)}


def patient_rate_bound(changed: np.ndarray, clusters: np.ndarray | None,
                       within: np.ndarray | None = None) -> dict[str, Any] | None:
    """:func:`rate_bound` over patients (patients with a change of all patients), and from it a bound on the
    image rate that holds however one patient's images are correlated (``upper95_images``).

    Why it holds: the share of a patient's images that change is at most 1, and 0 when none does, so its
    expectation is at most the patient's chance ``q`` of showing a change. The image rate is the mean of those
    shares weighted by images, so at most ``max images / mean images`` times the patients' mean ``q``; and
    patients are independent, so the exact bound on the count of patients with a change bounds that mean
    (patients of unequal risk only make it conservative: Hoeffding 1956). With equally many images per
    patient the factor is 1. ``within``: only these images (e.g. the positives, for a sensitivity).
    None when the patients are unknown (``clusters`` None: :func:`patient_clusters`) or no image is left.
    """
    if clusters is None:
        return None
    keep = np.ones(len(clusters), bool) if within is None else np.asarray(within, bool)
    codes = clusters[keep]
    if codes.size == 0:
        return None
    _, sizes = np.unique(codes, return_counts=True)
    hit = np.unique(codes[np.asarray(changed, bool)[keep]])
    bound = rate_bound(len(hit), len(sizes))
    factor = float(sizes.max()) / float(sizes.mean())
    bound["images_per_patient"] = {"min": int(sizes.min()), "max": int(sizes.max()),
                                   "mean": round(float(sizes.mean()), 4)}
    bound["upper95_images"] = min(1.0, bound["upper95"] * factor)
    return bound


def judged_bound(d: Mapping[str, Any]) -> tuple[float, str]:
    """The bound ``--judge-on bounds`` gates for a change rate (the larger of by image and by patient) and which.

    The image bound holds for independent images, the patient one (:func:`patient_rate_bound`) for any
    correlation within a patient; the larger holds either way.
    """
    by_patient = d.get("by_patient")
    if isinstance(by_patient, Mapping) and float(by_patient["upper95_images"]) > float(d["upper95"]):
        return float(by_patient["upper95_images"]), "by patient"
    return float(d["upper95"]), "by image"


def one_sided_referrals(report: Mapping[str, Any]) -> str:
    """A warning when the reference refers every image or none ("" otherwise): a referral can then flip only
    one way, and "0 referral flips" says little (the demo model referred 335 of 335 TVHL photographs, and the
    summary showed 0 flips as reassurance; a review, session 55)."""
    for c in report.get("candidates") or ():
        clin = c.get("clinical") or {}
        k, n = (clin.get("referral") or {}).get("referred_reference"), (clin.get("flips") or {}).get("n_images")
        if isinstance(k, int) and isinstance(n, int) and n > 0 and k in (0, n):
            what = "every image" if k == n else "no image"
            return (f"the reference refers {what} ({k} of {n}): a referral can only flip one way, so the referral "
                    "flips say little about these images; judge the model by the class calls and the images with "
                    "a changed finding, and validate on data with referable and non-referable photographs")
    return ""


def min_images_for_zero_changes(limit: float, confidence: float = CONFIDENCE) -> int | None:
    """Fewest images on which 0 changes would show, with ``confidence``, a rate of at most ``limit``.

    Why: below this size a run that sees no change at all still cannot show
    that the rate is within the gate (0.5 %: 598 images; 1 %: 299). None when
    ``limit`` is 0 (no sample size can show it).
    """
    if not 0.0 <= limit <= 1.0:
        raise ConfigError(f"limit must be a rate in [0, 1], got {limit!r}")
    if limit <= 0.0:
        return None
    if limit >= 1.0:
        return 1
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log1p(-limit)))
    while binomial_upper_bound(0, n, confidence) > limit:  # guard the float rounding of the closed form
        n += 1
    while n > 1 and binomial_upper_bound(0, n - 1, confidence) <= limit:
        n -= 1
    return n


def zero_change_sample_sizes(gates: ParityGates, confidence: float = CONFIDENCE) -> dict[str, int | None]:
    """:func:`min_images_for_zero_changes` for each gate on a rate of changes (referral, class calls, top-1)."""
    return {"max_flip_rate": min_images_for_zero_changes(gates.max_flip_rate, confidence),
            "max_class_flip_rate": min_images_for_zero_changes(gates.max_class_flip_rate, confidence),
            "max_finding_change_rate": min_images_for_zero_changes(gates.max_finding_change_rate, confidence),
            "min_top1_agreement": min_images_for_zero_changes(round(1.0 - gates.min_top1_agreement, 12), confidence)}


def zero_change_line(sizes: Mapping[str, int | None], n: int, confidence: float = CONFIDENCE,
                     n_patients: int | None = None) -> str:
    """One sentence: from how many images 0 changes shows each rate gate, next to this run's size (and, with
    the patients known, that counting them by patient takes as many patients: :func:`patient_rate_bound`)."""
    names = {"max_flip_rate": "referral flips", "max_class_flip_rate": "class-call flips",
             "max_finding_change_rate": "images with a changed finding", "min_top1_agreement": "top-1 changes"}
    parts = [f"{names.get(k, k)} {v}" if v is not None else f"{names.get(k, k)} never (limit 0)"
             for k, v in sizes.items()]
    return (f"0 changes shows a rate within the gate with {confidence:.0%} confidence only from: "
            + ", ".join(parts) + f" images; this run has {n}"
            + (f" (by patient, as many patients where each holds as many images, more where they differ: this "
               f"run has {n_patients})" if n_patients else ""))


def nonfinite_images(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N,) bool: the images with a NaN or an infinity in any of ``outputs``' arrays.

    Why: an FP16/INT8 overflow shows up as non-finite outputs; such a model
    must fail with the images named, not abort the whole validation.
    """
    bad: np.ndarray | None = None
    for a in outputs.values():
        rows = ~np.isfinite(_rows(a)).all(axis=1)
        bad = rows if bad is None else bad | rows
    return np.zeros(0, bool) if bad is None else bad


def nonfinite_reason(bad: np.ndarray, ids: Sequence[str]) -> str:
    """The FAIL reason for outputs that are not finite on the images ``bad`` marks."""
    first = ids[int(np.flatnonzero(bad)[0])] if bad.any() else "-"
    return f"{int(bad.sum())} of {len(bad)} images gave non-finite outputs (NaN or inf; first: {first})"


# -- numerical -------------------------------------------------------------------------------
def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a.reshape(a.shape[0], -1)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair; 1 where both rows are zero, 0 where only one is."""
    x, y = _rows(a), _rows(b)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    dot = np.sum(x * y, axis=1)
    out = np.where((nx > 0) & (ny > 0), dot / np.maximum(nx * ny, 1e-300), 0.0)
    return np.where((nx == 0) & (ny == 0), 1.0, out)


def row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair; NaN where a row is constant (e.g. fundus-only site maps)."""
    x, y = _rows(a), _rows(b)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    sx, sy = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(x * y, axis=1) / (sx * sy)
    return np.where((sx > 1e-12) & (sy > 1e-12), r, np.nan)


def jsonable(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python numbers, recursively (reports are strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def numerical(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Output-level differences (see the module doc); NaN where a figure cannot be computed."""
    dp = np.abs(np.asarray(candidate["probs"], np.float64) - np.asarray(reference["probs"], np.float64))
    out: dict[str, Any] = {
        "max_abs_prob_diff": float(dp.max()) if dp.size else math.nan,
        "p99_abs_prob_diff": float(np.percentile(dp, 99)) if dp.size else math.nan,
        "mean_abs_prob_diff": float(dp.mean()) if dp.size else math.nan,
    }
    cos = row_cosine(reference["logits"], candidate["logits"])
    out["logit_cosine_mean"] = float(cos.mean()) if cos.size else math.nan
    out["logit_cosine_min"] = float(cos.min()) if cos.size else math.nan
    out["max_abs_logit_diff"] = float(np.max(np.abs(_rows(reference["logits"]) - _rows(candidate["logits"]))))
    rm, cm = reference.get("site_maps"), candidate.get("site_maps")
    notes = []
    if rm is None or cm is None:
        corr = np.full(len(dp), np.nan)
        notes.append("site maps missing from one of the models")
    elif rm.shape != cm.shape:
        corr = np.full(len(dp), np.nan)
        notes.append(f"site maps differ in shape: reference {rm.shape[1:]}, candidate {cm.shape[1:]}")
    else:
        corr = row_correlation(rm, cm)
        if corr.size and np.isnan(corr).all():
            notes.append("site maps are constant (e.g. the fundus-only variant): correlation undefined")
    out["site_map_corr_mean"] = float(np.nanmean(corr)) if np.isfinite(corr).any() else math.nan
    out["site_map_corr_min"] = float(np.nanmin(corr)) if np.isfinite(corr).any() else math.nan
    out["notes"] = notes
    return out


# -- clinical ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flip:
    """One image whose referral decision differs between reference and candidate."""

    id: str
    reference_refer: bool
    candidate_refer: bool
    reference_probs: tuple[float, ...]
    candidate_probs: tuple[float, ...]
    truth_refer: bool | None = None


def _rates(truth: np.ndarray, predicted: np.ndarray, cluster_of: np.ndarray | None = None) -> dict[str, Any]:
    r = rates_at_threshold(truth, predicted.astype(np.float64), 0.5)
    pos, called = np.asarray(truth, bool), np.asarray(predicted, bool)
    return {"sensitivity": r.sensitivity, "specificity": r.specificity, "tp": r.tp, "fp": r.fp, "tn": r.tn, "fn": r.fn,
            "sensitivity_ci95": _proportion_ci(called[pos], None if cluster_of is None else cluster_of[pos]),
            "specificity_ci95": _proportion_ci(~called[~pos], None if cluster_of is None else cluster_of[~pos])}


def _proportion_ci(hits: np.ndarray, cluster_of: np.ndarray | None) -> list[float] | None:
    """``[low, high]``: the two-sided 95 % Wilson score interval of the share of ``hits`` among its cases (None
    without cases); with ``cluster_of`` (each case's patient), on the cases' effective sample size
    (:func:`uopsl.runtime.metrics.clustered_proportion_interval`), which equals the plain one where every
    patient holds one case.

    Why: a sensitivity of 1.000 on 19 positives reads as certainty; its interval
    (0.83-1.00) says what 19 positives can show, and 19 positive images of 10 patients show less.
    Reported for the reference and the candidate alike, never gated (the gates compare the two point values).
    """
    if hits.size == 0:
        return None
    if cluster_of is None:
        iv = proportion_interval(int(hits.sum()), int(hits.size), alpha=PROPORTION_ALPHA, method=PROPORTION_METHOD)
    else:
        iv, _ = clustered_proportion_interval(hits, cluster_of, alpha=PROPORTION_ALPHA)
    return [float(iv.low), float(iv.high)]


def _with_intervals(row: dict[str, Any], ref: Mapping[str, Any], cand: Mapping[str, Any]) -> None:
    """Copy the reference's and the candidate's sensitivity/specificity intervals into a report row, and the
    confusion counts behind them (``counts_reference``, ``counts_candidate``: tp, fn, tn, fp), so a signer can
    check each rate against its counts without rebuilding them from outputs.csv (a review)."""
    for metric in ("sensitivity", "specificity"):
        row[f"{metric}_reference_ci95"] = ref[f"{metric}_ci95"]
        row[f"{metric}_candidate_ci95"] = cand[f"{metric}_ci95"]
    for who, rates in (("reference", ref), ("candidate", cand)):
        row[f"counts_{who}"] = {k: int(rates[k]) for k in ("tp", "fn", "tn", "fp")}


def _call_changes(y: np.ndarray, ref_call: np.ndarray, cand_call: np.ndarray,
                  clusters: np.ndarray | None = None) -> dict[str, Any]:
    """Gross changes of the positive/negative call among positives and among negatives of ``y``.

    Net sensitivity can stay put while calls swap (a true positive lost, a
    false negative gained): these counts show both directions, each with its
    exact upper bound over the images it is a share of.
    """
    changed = ref_call != cand_call
    pos, neg = y.astype(bool), ~y.astype(bool)
    lost = pos & ref_call & ~cand_call
    return {
        # The positives whose positive call the candidate lost, of all positives: what ``--judge-on bounds``
        # gates for a sensitivity (its exact bound; a net drop lets a gained positive offset a lost one).
        "lost_positives": _with_patients(rate_bound(int(np.sum(lost)), int(pos.sum())), lost, clusters, pos),
        "sensitivity_changes": {**rate_bound(int(np.sum(changed & pos)), int(pos.sum())),
                                "tp_to_fn": int(np.sum(pos & ref_call & ~cand_call)),
                                "fn_to_tp": int(np.sum(pos & ~ref_call & cand_call))},
        "specificity_changes": {**rate_bound(int(np.sum(changed & neg)), int(neg.sum())),
                                "tn_to_fp": int(np.sum(neg & ~ref_call & cand_call)),
                                "fp_to_tn": int(np.sum(neg & ref_call & ~cand_call))},
    }


# Why a class with too few cases is not gated, said once for every such class (see few_cases).
FEW_CASES_RULE = (f"too few to gate (a gate counts a class from {MIN_CASES_PER_CLASS} positive and "
                  f"{MIN_CASES_PER_CLASS} negative images; validate on more)")


def _few_counts(n_positive: int, n_negative: int) -> str:
    """"6 positive images", "3 positive images and 1 negative image": the sides below :data:`MIN_CASES_PER_CLASS`."""
    return " and ".join(f"{k} {side} image{'s' if k != 1 else ''}"
                        for k, side in ((n_positive, "positive"), (n_negative, "negative")) if k < MIN_CASES_PER_CLASS)


def few_cases(n_positive: int, n_negative: int) -> str:
    """Why a class with these counts does not count as evaluated by the AUC and sensitivity gates ("" when it does).

    See :data:`MIN_CASES_PER_CLASS`.
    """
    counts = _few_counts(n_positive, n_negative)
    if not counts:
        return ""
    return (f"only {counts} (a gate counts a class from {MIN_CASES_PER_CLASS} positive and "
            f"{MIN_CASES_PER_CLASS} negative images; validate on more)")


def patient_clusters(patients: Sequence[str | None] | None) -> np.ndarray | None:
    """(N,) int cluster code per image for the bootstrap, or None when no image has a patient id
    (:func:`uopsl.runtime.metrics.patient_codes`); with None the bootstrap resamples images, which the
    report says."""
    return None if patients is None else patient_codes(patients)


def patient_facts(patients: Sequence[str | None]) -> dict[str, Any]:
    """Whether the images' patients are known, how many patients, and how many images have no patient id
    (``n_patients`` None when none is known); ``data.patients`` of the report and ``clinical()["patients"]``."""
    codes = patient_clusters(patients)
    without = sum(1 for p in patients if p is None or str(p) == "")
    if codes is None:
        return {"known": False, "n_patients": None, "n_images_without_patient": without}
    return {"known": True, "n_patients": int(len(np.unique(codes))), "n_images_without_patient": without}


#: What the report says next to the exact bounds and the Wilson intervals when the images' patients are known.
INDEPENDENCE_NOTE = ("the exact (Clopper-Pearson) upper bounds on the change rates treat every image as "
                     "independent; images of one patient are correlated, so each rate is also bounded over "
                     "patients (by_patient: patients with a change of all patients, widened by max / mean images "
                     "per patient in upper95_images, a bound that holds however one patient's images are "
                     "correlated), and --judge-on bounds gates the larger. The Wilson intervals of sensitivity "
                     "and specificity are computed on the effective number of images (Kish's design effect of "
                     "the patients' clustering; at 0 or 100 %, as if each patient's images were fully correlated), "
                     "and the Newcombe interval of the sensitivity drop combines those two sensitivities' limits "
                     "(MOVER with cluster-adjusted limits, Zou & Donner 2004); the AUC bootstrap resamples patients")

#: :func:`paired_proportion_difference`'s method, as the report names it.
NEWCOMBE_PAIRED = "Newcombe (1998) method 10 for paired proportions (Wilson score limits combined with phi)"
#: The same with each proportion's Wilson limits on its design-effect sample size (the patients' clustering).
NEWCOMBE_PAIRED_CLUSTERED = ("Newcombe (1998) method 10 for paired proportions, each proportion's Wilson limits on "
                             "its design-effect sample size over patients (MOVER with cluster-adjusted limits, "
                             "Zou & Donner 2004), combined with phi")


def paired_proportion_difference(both: int, first_only: int, second_only: int, neither: int,
                                 alpha: float = PROPORTION_ALPHA, *,
                                 limits: tuple[Interval, Interval] | None = None,
                                 method: str = NEWCOMBE_PAIRED) -> dict[str, Any]:
    """``p_second - p_first`` of two proportions measured on the same cases, with its two-sided interval.

    The table: ``both`` cases positive under the two, ``first_only``, ``second_only`` and ``neither``. Why
    this method: the difference of a candidate's and the reference's sensitivity is paired (the same
    positives), and a percentile bootstrap of it collapses to [0, 0] when no call changed, reading as
    certainty; Newcombe's method 10 (Statistics in Medicine 17:2635-2650, 1998) combines the Wilson score
    limits of each proportion through their correlation (phi, with Newcombe's correction of its numerator; 0
    where a margin is empty), does not collapse, and stays within [-1, 1]. It assumes independent cases: with
    several images per patient it is too narrow, unless ``limits`` gives each proportion's interval computed
    with the clustering (``first``'s, then ``second``'s; :func:`_sensitivity_difference` passes Wilson limits
    on the design-effect sample size): Newcombe's construction is the method of variance estimates recovery
    (MOVER), which Zou & Donner (2004, Controlled Clinical Trials 25:3-12) apply to clustered data by giving
    it cluster-adjusted limits of each proportion. ``method`` names what was done. NaN when there is no case.
    """
    counts = [int(both), int(first_only), int(second_only), int(neither)]
    if any(k < 0 for k in counts):
        raise ConfigError(f"paired_proportion_difference needs counts >= 0; got {counts}")
    a, b, c, d = counts
    n = a + b + c + d
    if n == 0:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "method": method}
    p1, p2 = (a + b) / n, (a + c) / n
    if limits is None:
        i1 = proportion_interval(a + b, n, alpha=alpha, method=WILSON)
        i2 = proportion_interval(a + c, n, alpha=alpha, method=WILSON)
    else:
        i1, i2 = limits
        for i, p, which in ((i1, p1, "first"), (i2, p2, "second")):
            if not (math.isclose(i.estimate, p) and i.low <= i.estimate <= i.high
                    and math.isclose(i.alpha, alpha)):
                raise ConfigError(
                    f"the {which} proportion's limits are for {i.estimate} in [{i.low}, {i.high}] at alpha {i.alpha}; "
                    f"the table gives {p}, at alpha {alpha}: pass the intervals of the table's two proportions, "
                    "first then second, at the same alpha (clustered_proportion_interval of each call)")
    den = float(a + b) * float(c + d) * float(a + c) * float(b + d)
    # Newcombe's corrected phi (as Altman et al., Statistics with Confidence, 2000, work it): a positive
    # ad - bc less n / 2 (0 when that is negative); uncorrected, a table without discordant pairs gives
    # phi = 1 and an interval of [0, 0].
    cross = float(a * d - b * c)
    cross = cross - n / 2.0 if cross > n / 2.0 else (cross if cross < 0 else 0.0)
    phi = cross / math.sqrt(den) if den > 0 else 0.0
    # Newcombe's distances below (delta) and above (eps) p1 - p2; for p2 - p1 (the candidate's minus the
    # reference's) they swap sides.
    delta = math.sqrt(max(0.0, (p1 - i1.low) ** 2 - 2 * phi * (p1 - i1.low) * (i2.high - p2) + (i2.high - p2) ** 2))
    eps = math.sqrt(max(0.0, (i1.high - p1) ** 2 - 2 * phi * (i1.high - p1) * (p2 - i2.low) + (p2 - i2.low) ** 2))
    diff = (c - b) / n
    return {"estimate": diff, "low": max(-1.0, diff - eps), "high": min(1.0, diff + delta), "method": method}


def _by_patient(changed: np.ndarray, clusters: np.ndarray | None, within: np.ndarray | None = None
                ) -> dict[str, Any]:
    """``{"by_patient": ...}`` (:func:`patient_rate_bound`) when the patients are known, else nothing."""
    bound = patient_rate_bound(changed, clusters, within)
    return {} if bound is None else {"by_patient": bound}


def _with_patients(d: dict[str, Any], changed: np.ndarray, clusters: np.ndarray | None,
                   within: np.ndarray | None = None) -> dict[str, Any]:
    d.update(_by_patient(changed, clusters, within))
    return d


def _sensitivity_difference(y: np.ndarray, ref_call: np.ndarray, cand_call: np.ndarray,
                            cluster_of: np.ndarray | None = None) -> dict[str, Any]:
    """The candidate's sensitivity minus the reference's among the positives of ``y``, with its paired interval;
    with ``cluster_of`` (each image's patient), each sensitivity's limits are those of its own interval in the
    report (Wilson on the design-effect sample size): the interval of the difference then reflects the patients'
    clustering too (generally wider; one end can move in by a little, as MOVER combines the two limits through
    their correlation)."""
    pos = y.astype(bool)
    r, c = ref_call[pos].astype(bool), cand_call[pos].astype(bool)
    counts = (int(np.sum(r & c)), int(np.sum(r & ~c)), int(np.sum(~r & c)), int(np.sum(~r & ~c)))
    if cluster_of is None or not pos.any():
        return paired_proportion_difference(*counts)
    limits = (clustered_proportion_interval(r, cluster_of[pos], alpha=PROPORTION_ALPHA)[0],
              clustered_proportion_interval(c, cluster_of[pos], alpha=PROPORTION_ALPHA)[0])
    return paired_proportion_difference(*counts, limits=limits, method=NEWCOMBE_PAIRED_CLUSTERED)


def clinical(
    manifest: Manifest,
    truth: Truth,
    reference_probs: np.ndarray,
    candidate_probs: np.ndarray,
    ids: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = BOOTSTRAP_ALPHA,
    reference_logits: np.ndarray | None = None,
    candidate_logits: np.ndarray | None = None,
    patients: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Clinical comparison of two probability sets under the manifest's decision rule.

    Top-1 agreement is taken from the logits when both are given: float32
    probabilities saturate (sigmoid logits 18 and 20 both give 1.0), which
    hides real swaps and invents others; probabilities are the fallback, and
    ``top1_source`` says which was used. Each figure a gate could not use
    carries the reason in its row's ``not_evaluated`` (no labels for the class,
    no positive/negative image among these, or fewer than
    :data:`MIN_CASES_PER_CLASS` of either).

    ``patients`` (one id per image, None or ``""`` when unknown): the AUC
    bootstrap resamples patients (:func:`patient_clusters`), ``patients``
    counts them, and the flips and changed findings say how many patients
    they touch. The exact bounds count images, with a bound over patients beside each change rate; the Wilson
    intervals and the sensitivity-drop intervals are computed on the design-effect sample size
    (:func:`uopsl.runtime.metrics.clustered_proportion_interval`), as ``patients["note"]`` says.
    """
    ref = np.asarray(reference_probs, np.float64)
    cand = np.asarray(candidate_probs, np.float64)
    ref_pos, ref_refer = manifest.decide(ref)
    cand_pos, cand_refer = manifest.decide(cand)
    n = len(ids)
    if patients is not None and len(patients) != n:
        raise ConfigError(f"patients must hold one id per image ({n}); got {len(patients)}")
    cluster_of = patient_clusters(patients)
    no_pos, no_neg = _NO_POSITIVE[truth.source], _NO_NEGATIVE[truth.source]
    per_class = []
    for k, spec in enumerate(manifest.classes):
        flips_k = int(np.sum(ref_pos[:, k] != cand_pos[:, k]))
        row: dict[str, Any] = {"name": spec.name, "threshold": spec.threshold, "referable": spec.referable,
                               "decision_flips": flips_k,
                               "decision_changes": _with_patients(rate_bound(flips_k, n),
                                                                  ref_pos[:, k] != cand_pos[:, k], cluster_of)}
        if not truth.defined[k]:
            row["note"] = NO_LABELS
            row["not_evaluated"] = {"auc": NO_LABELS, "sensitivity": NO_LABELS, "specificity": NO_LABELS}
            per_class.append(row)
            continue
        y = truth.positive[:, k]
        row["n_positive"], row["n_negative"] = int(y.sum()), int((~y).sum())
        row["auc_reference"] = roc_auc(y, ref[:, k])
        row["auc_candidate"] = roc_auc(y, cand[:, k])
        missing: dict[str, str] = {}
        if y.any() and not y.all():
            diff = paired_auc_difference(y, ref[:, k], cand[:, k], n_boot=n_boot, seed=seed, alpha=alpha,
                                         clusters=cluster_of)
            # Interval.to_dict leaves n_boot and alpha out: a signer needs them next to the interval.
            row["auc_difference"] = {**diff.to_dict(), "n_boot": diff.n_boot, "alpha": diff.alpha,
                                     "unit": "image" if cluster_of is None else "patient"}
            single = single_unit_side(y, cluster_of)
            if single:  # every resample keeps that one image: a tight interval that means nothing (a review)
                row["auc_difference"].update(low=None, high=None, note=f"interval undefined: {single}")
        else:
            row["auc_difference"] = None
            missing["auc"] = no_pos if not y.any() else no_neg
            row["note"] = f"AUC undefined: {missing['auc']}"
        if not y.any():
            missing["sensitivity"] = no_pos
        if y.all():
            missing["specificity"] = no_neg
        few = few_cases(row["n_positive"], row["n_negative"])
        if few:  # the figures are reported; the gates do not count them (MIN_CASES_PER_CLASS)
            missing.setdefault("auc", few)
            missing.setdefault("sensitivity", few)
        rr, cr = _rates(y, ref_pos[:, k], cluster_of), _rates(y, cand_pos[:, k], cluster_of)
        row["sensitivity_reference"], row["sensitivity_candidate"] = rr["sensitivity"], cr["sensitivity"]
        row["specificity_reference"], row["specificity_candidate"] = rr["specificity"], cr["specificity"]
        _with_intervals(row, rr, cr)
        row["sensitivity_difference"] = _sensitivity_difference(y, ref_pos[:, k], cand_pos[:, k], cluster_of)
        row.update(_call_changes(y, ref_pos[:, k], cand_pos[:, k], cluster_of))
        if missing:
            row["not_evaluated"] = missing
        per_class.append(row)
    referable = manifest.referable_mask
    referral: dict[str, Any] = {"rule": manifest.referral_rule, "referred_reference": int(ref_refer.sum()),
                                "referred_candidate": int(cand_refer.sum()), "applicable": bool(referable.any())}
    if truth.refer is not None:
        rr, cr = _rates(truth.refer, ref_refer, cluster_of), _rates(truth.refer, cand_refer, cluster_of)
        referral.update({"n_positive": int(truth.refer.sum()), "n_negative": int((~truth.refer).sum()),
                         "sensitivity_reference": rr["sensitivity"], "sensitivity_candidate": cr["sensitivity"],
                         "specificity_reference": rr["specificity"], "specificity_candidate": cr["specificity"]})
        _with_intervals(referral, rr, cr)
        referral["sensitivity_difference"] = _sensitivity_difference(truth.refer, ref_refer, cand_refer, cluster_of)
        referral.update(_call_changes(truth.refer, ref_refer, cand_refer, cluster_of))
        missing = {}
        if not truth.refer.any():
            missing["sensitivity"] = no_pos
        if truth.refer.all():
            missing["specificity"] = no_neg
        few = few_cases(referral["n_positive"], referral["n_negative"])
        if few:
            missing.setdefault("sensitivity", few)
        if missing:
            referral["not_evaluated"] = missing
    elif referable.any():
        unlabelled = [c.name for c, d, r in zip(manifest.classes, truth.defined, referable) if r and not d]
        why = f"{NO_REFERRAL_LABELS} (no labels for {', '.join(unlabelled)})"
        referral["not_evaluated"] = {"sensitivity": why, "specificity": why}
    flipped = [int(i) for i in np.flatnonzero(ref_refer != cand_refer)]
    flips = [
        Flip(ids[i], bool(ref_refer[i]), bool(cand_refer[i]), tuple(float(v) for v in ref[i]),
             tuple(float(v) for v in cand[i]), None if truth.refer is None else bool(truth.refer[i]))
        for i in flipped
    ]
    if reference_logits is not None and candidate_logits is not None:
        top1_source = "logits"
        top_ref, top_cand = _rows(reference_logits).argmax(axis=1), _rows(candidate_logits).argmax(axis=1)
    else:
        top1_source = "probs"
        top_ref, top_cand = ref.argmax(axis=1), cand.argmax(axis=1)
    top1_changes = int(np.sum(top_ref != top_cand))
    class_flips = {r["name"]: r["decision_changes"] for r in per_class if r["referable"]}
    worst = max(class_flips, key=lambda name: class_flips[name]["changes"]) if class_flips else None
    findings = finding_changes(manifest, ref, cand, ref_pos, cand_pos, ref_refer, cand_refer, ids)
    flips_out: dict[str, Any] = {"n": len(flips), "rate": len(flips) / n if n else math.nan,
                                 "upper95": binomial_upper_bound(len(flips), n), "n_images": n,
                                 **_by_patient(ref_refer != cand_refer, cluster_of),
                                 "to_refer": int(np.sum(~ref_refer & cand_refer)),
                                 "to_no_refer": int(np.sum(ref_refer & ~cand_refer)),
                                 "items": [asdict(f) for f in flips]}
    units: dict[str, Any] = {**patient_facts(patients or [None] * n), "n_images": n}
    if cluster_of is not None:
        units["note"] = INDEPENDENCE_NOTE
        # The patients behind the changes (an image without a patient id counts as one of its own).
        mask = manifest.referable_mask
        changed = ((ref_pos[:, mask] != cand_pos[:, mask]).any(axis=1) if mask.any() else np.zeros(n, bool))
        flips_out["n_patients"] = int(len(np.unique(cluster_of[flipped])))
        findings["n_patients"] = int(len(np.unique(cluster_of[changed])))
        findings.update(_by_patient(changed, cluster_of))
    return {
        "truth": truth.source,
        "patients": units,
        "per_class": per_class,
        "referral": referral,
        "top1_agreement": float(np.mean(top_ref == top_cand)) if n else math.nan,
        "top1_source": top1_source,
        "top1_disagreement": _with_patients(rate_bound(top1_changes, n), top_ref != top_cand, cluster_of),
        "class_decision_agreement": float(np.mean(ref_pos == cand_pos)) if n else math.nan,
        "class_flips": {"referable": class_flips, "worst_class": worst,
                        "max_rate": class_flips[worst]["rate"] if worst is not None else None},
        "finding_changes": findings,
        "flips": flips_out,
    }


def finding_changes(manifest: Manifest, reference_probs: np.ndarray, candidate_probs: np.ndarray,
                    reference_positive: np.ndarray, candidate_positive: np.ndarray, reference_refer: np.ndarray,
                    candidate_refer: np.ndarray, ids: Sequence[str]) -> dict[str, Any]:
    """The images whose call for at least one referable class differs from the reference's (gated by
    ``max_finding_change_rate``).

    The ``class_flip_rate`` gate takes the worst single class: the largest
    share of images whose call for one referable class changed. A patient
    whose AMD call changed and another whose DME call changed count once each
    in their own class, so the share of images with ANY changed finding can be
    larger than that figure (up to the number of referable classes times
    it); this one is gated on its own, and a signer reads it here with its
    exact upper bound and the images listed (``items``: each image's changed classes, both models' referable
    findings and probabilities, and whether its referral changed too).
    """
    mask = manifest.referable_mask
    names = [c.name for c in manifest.classes]
    n = len(ids)
    referable = [k for k in range(len(names)) if mask[k]]
    if referable:
        changed = reference_positive[:, referable] != candidate_positive[:, referable]
        rows = np.flatnonzero(changed.any(axis=1))
    else:
        changed, rows = np.zeros((n, 0), bool), np.zeros(0, int)
    items = []
    for i in (int(r) for r in rows):
        items.append({
            "id": ids[i],
            "changed": [names[k] for j, k in enumerate(referable) if changed[i, j]],
            "reference_findings": [names[k] for k in referable if reference_positive[i, k]],
            "candidate_findings": [names[k] for k in referable if candidate_positive[i, k]],
            "referral_changed": bool(reference_refer[i] != candidate_refer[i]),
            "reference_probs": [float(v) for v in reference_probs[i]],
            "candidate_probs": [float(v) for v in candidate_probs[i]],
        })
    return {**rate_bound(len(items), n), "applicable": bool(referable), "items": items}


# -- decision headroom ---------------------------------------------------------------------------
# Reference margins below these are "close calls" in the report (in the margin's own units).
CLOSE_CALL_MARGINS = (0.05, 0.1, 0.2, 0.5)


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _normal_tail(z: np.ndarray) -> np.ndarray:
    """P(N(0, 1) > z), elementwise (erfc keeps the far tail accurate)."""
    return 0.5 * _erfc(np.asarray(z, np.float64) / math.sqrt(2.0))


def expected_changes(margins: np.ndarray, error_std: float) -> float:
    """How many decisions an error of ``error_std`` on each margin is expected to change.

    ``margins``: each image's distance from its decision boundary (>= 0). The
    error on a margin is taken as Gaussian with mean 0 and the given standard
    deviation, so an image changes with probability ``P(error > margin)``.
    """
    m = np.abs(np.asarray(margins, np.float64))
    if error_std <= 0:
        return float(np.sum(m == 0) * 0.5)
    return float(_normal_tail(m / error_std).sum())


def error_std_allowed(margins: np.ndarray, allowed: float) -> float | None:
    """The error std at which :func:`expected_changes` reaches ``allowed`` decisions (a file there
    passes about half the time; below it, more often).

    ``inf`` when no error size can reach it (``allowed`` >= half the images),
    ``0`` when the gate allows no change at all (any error may break it),
    ``None`` when even a vanishing error exceeds it (exact ties count half each).
    """
    m = np.abs(np.asarray(margins, np.float64))
    if m.size and not np.isfinite(m).all():
        raise ConfigError("margins must be finite; drop the images whose decision cannot change first")
    if expected_changes(m, 0.0) > allowed:
        return None
    if m.size == 0 or allowed >= 0.5 * m.size:
        return math.inf
    if allowed <= 0:
        return 0.0
    positive = m[m > 0]
    # At lo every non-tied image is ~40 standard deviations from its boundary (P < 1e-300), so
    # expected_changes(lo) is the ties' share, which the check above kept within the gate.
    lo, hi = float(positive.min()) / 40.0, float(positive.max()) * 1e6
    for _ in range(200):  # expected_changes rises monotonically with the error std: bisect on its log
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if expected_changes(m, mid) <= allowed else (lo, mid)
        if hi / lo < 1 + 1e-6:
            break
    return lo


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        p = np.asarray(p, np.float64)
        return np.log(p) - np.log1p(-p)


def referral_margins(manifest: Manifest, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """Each image's signed distance from the referral boundary (>= 0: referred), and its units.

    Sigmoid heads under ``any_referable`` are measured in logits, from the
    model's own ``logits`` output (``max_k logit_k - logit(threshold_k)`` over
    referable classes): a quantized model's error is about the same size at
    every probability there, and float32 probabilities near 0 or 1 are too
    coarse to recover it. Otherwise in probability (the referable class's
    ``p - threshold``, or the summed referable probability minus the referral
    threshold). The sign is always :meth:`Manifest.decide`'s. A margin is
    infinite where the decision cannot change (a threshold of 0 or 1).
    """
    mask = manifest.referable_mask
    probs = np.asarray(outputs["probs"], np.float64)
    units = "probability"
    if manifest.referral_rule == "any_referable":
        if manifest.head == "sigmoid" and "logits" in outputs:
            units = "logit"
            logits = _rows(outputs["logits"]).astype(np.float64)
            margin = (logits[:, mask] - _logit(manifest.thresholds[mask])[None, :]).max(axis=1)
        else:
            margin = (probs[:, mask] - manifest.thresholds[mask][None, :]).max(axis=1)
    else:
        margin = probs[:, mask].sum(axis=1) - manifest.referral_threshold
    refer = manifest.decide(probs)[1]
    return np.where(refer, np.abs(margin), -np.abs(margin)), units


def _top_two_gap(logits: np.ndarray, order: np.ndarray) -> np.ndarray:
    rows = np.arange(len(logits))
    return logits[rows, order[:, 0]] - logits[rows, order[:, 1]]


def _headroom_entry(margins: np.ndarray, errors: np.ndarray, observed: int, allowed: float, units: str) -> dict[str, Any]:
    """The report entry of one decision; only images with finite margins and errors are modelled."""
    finite = np.isfinite(margins) & np.isfinite(errors)
    m, e = margins[finite], errors[finite]
    rms = float(np.sqrt(np.mean(e**2))) if m.size else math.nan  # a bias counts as error too
    needed = error_std_allowed(m, allowed) if m.size else None
    if not m.size:
        note = "no image has a finite margin and error"
    elif needed is None:
        note = "no error is small enough: the reference has exact ties"
    elif needed == 0:
        note = "the gate allows no change: any error can break it"
    elif not math.isfinite(needed):
        note = "any error passes: the gate allows half the images or more"
    else:
        note = ""
    entry: dict[str, Any] = {
        "units": units,
        "close_calls": {f"{t:g}": int(np.sum(np.abs(m) < t)) for t in CLOSE_CALL_MARGINS},
        "error_rms": rms,
        "expected_changes": expected_changes(m, rms) if m.size else math.nan,
        "observed_changes": int(observed),
        "allowed_changes": round(float(allowed), 9),  # (1 - 0.99) * 200 is 2.0000000000000018 in floats
        # JSON has no infinity: the limits are said in words.
        "error_rms_allowed": needed if needed is not None and 0 < needed < math.inf else None,
        "allowed_note": note,
        "images_not_modelled": int(np.sum(~finite)),
    }
    if needed is not None and 0 < needed < math.inf and rms > 0:
        db = 20.0 * math.log10(rms / needed)
        if db <= 0 and observed > allowed + 1e-9:  # the gates' own tolerance (_EPS) on a count
            # The error is within what the model allows, yet the gate failed. "0 dB needed" read as a margin (a
            # review); the note says instead whether the model can explain the changes at all.
            lam = float(entry["expected_changes"])
            chance = poisson_tail(int(observed), lam)
            entry["precision_needed_db"] = None
            entry["changes_chance"] = chance
            said = (f"{int(observed)} change(s) observed where the error RMS predicts {lam:.1f} and the gate "
                    f"allows {allowed:.3g}")
            entry["model_note"] = (
                f"{said} (a chance of {chance:.2g} under the model): the model underpredicts the changes here "
                "(the error is larger where the decisions are close than its spread over all images, or changes "
                "fall on images it does not model), so no precision figure says what would pass"
                if chance < MODEL_NOTE_CHANCE else
                f"{said}: the error is at the gate's limit, where a file fails about as often as it passes (a "
                f"chance of {chance:.2g} of this many), so another table or rounding may pass"
                if -db < AT_LIMIT_DB else
                # A review: 5.5 dB below the limit read "at the gate's limit ... fails about as often as it passes".
                f"{said}: the error is {-db:.1f} dB below the gate's limit, and this many changes still have a "
                f"chance of {chance:.2g} under the model: an unlucky draw, so another table or rounding may pass")
        else:
            entry["precision_needed_db"] = float(max(0.0, db))
    return entry


#: Below this chance of as many changes as observed, the headroom model is said to underpredict them.
MODEL_NOTE_CHANCE = 0.05
#: An error RMS within this many dB below the gate's limit is said to be at the limit (where the expected
#: number of changes is close to the allowed one, so a file fails about as often as it passes).
AT_LIMIT_DB = 1.0


def poisson_tail(k: int, lam: float) -> float:
    """P(X >= ``k``) for X Poisson with mean ``lam``: how likely as many changes as observed are when the headroom
    model expects ``lam``. The model's count is a sum of per-image chances, whose spread the Poisson law's
    exceeds, so this chance is on the high side: the model is said to underpredict only when it clearly does."""
    if k <= 0:
        return 1.0
    if not lam > 0:
        return 0.0
    term = math.exp(-lam)
    below = term
    for i in range(1, k):
        term *= lam / i
        below += term
    return float(min(1.0, max(0.0, 1.0 - below)))


def decision_headroom(manifest: Manifest, gates: ParityGates, reference: Mapping[str, np.ndarray],
                      candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """How close the reference's own decisions sit to their boundaries, against the candidate's error.

    For the top-1 and referral gates: the reference's margin per image (the gap
    between its two highest logits; the distance from the referral boundary,
    :func:`referral_margins`), how many images are close calls, the RMS over
    all images of the candidate's error on their margins, the number of
    changed decisions that error predicts (:func:`expected_changes`, Gaussian
    errors) next to the number observed (counted as the gates count them),
    and the error RMS at which the prediction reaches the gate's limit
    (:func:`error_std_allowed`). Images whose margin or error is not finite
    (an overflowing candidate, a threshold of 0 or 1) are counted, not
    modelled. The figures tell a file that a more precise one could pass
    from one whose model has too many close calls on these images.
    """
    out: dict[str, Any] = {}
    ref_p, cand_p = np.asarray(reference["probs"], np.float64), np.asarray(candidate["probs"], np.float64)
    n = len(ref_p)
    if n == 0:
        return out
    ref_l, cand_l = _rows(reference["logits"]), _rows(candidate["logits"])
    if ref_l.shape[1] >= 2:
        order = np.argsort(-ref_l, axis=1, kind="stable")[:, :2]
        gap_ref, gap_cand = _top_two_gap(ref_l, order), _top_two_gap(cand_l, order)
        with np.errstate(invalid="ignore"):
            error = gap_cand - gap_ref
        observed = int(np.sum(ref_l.argmax(axis=1) != cand_l.argmax(axis=1)))  # as clinical()'s top-1 counts
        out["top1"] = _headroom_entry(gap_ref, error, observed, (1.0 - gates.min_top1_agreement) * n, "logit")
    if manifest.referable_mask.any():
        m_ref, units = referral_margins(manifest, reference)
        m_cand, _ = referral_margins(manifest, candidate)
        with np.errstate(invalid="ignore"):
            error = m_cand - m_ref
        observed = int(np.sum(manifest.decide(ref_p)[1] != manifest.decide(cand_p)[1]))
        out["referral"] = _headroom_entry(m_ref, error, observed, gates.max_flip_rate * n, units)
    return out


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def headroom_line(name: str, entry: Mapping[str, Any]) -> str:
    """One sentence for a CLI: close calls, the error measured and the error the gate allows."""
    close = entry["close_calls"]
    key = "0.2" if entry["units"] == "logit" else "0.05"
    allowed = entry.get("error_rms_allowed")
    if allowed is None:
        need = entry.get("allowed_note") or "no allowed error could be computed"
    else:
        need = f"the gate's limit is reached at {allowed:.3g}"
        if entry.get("precision_needed_db"):
            need += f" ({entry['precision_needed_db']:.1f} dB more precision needed)"
        elif entry.get("model_note"):
            need += f", yet {entry['model_note']}"
    skipped = entry.get("images_not_modelled") or 0
    where = (f"image(s) whose two top classes are within {key} {entry['units']}" if name == "top1"
             else f"image(s) within {key} {entry['units']} of the referral boundary")
    return (f"{name}: {close[key]} {where}; error RMS "
            f"{_fmt(entry['error_rms'], '.3g')} predicts {_fmt(entry['expected_changes'], '.1f')} change(s) "
            f"({entry['observed_changes']} observed); {need}"
            + (f"; {skipped} image(s) with a non-finite margin or error not modelled" if skipped else ""))


def failed_gate_headroom(candidate: Mapping[str, Any]) -> list[str]:
    """:func:`headroom_line` for each failed gate that has a headroom figure (a ``validate`` report's candidate)."""
    failed = {c["name"] for c in candidate.get("checks", ()) if c.get("passed") is False}
    headroom = candidate.get("headroom") or {}
    return [headroom_line(key, headroom[key])
            for gate, key in (("top1_agreement", "top1"), ("flip_rate", "referral")) if gate in failed and key in headroom]


# -- verdict -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateCheck:
    """One gate applied to one candidate.

    ``passed``: whether the classes it could be evaluated for are within the
    limit (None when it could be evaluated for none, or, judged on the bounds,
    when the figures are within it and their bound, ``value``, is not). ``skipped``: the classes
    it applies to but could not be evaluated for, each ``{"class", "reason"}`` (and ``group``,
    ``cases``, ``drop``: :func:`_skip_entry`);
    ``status`` is INCOMPLETE when any was skipped, so a gate never passes on a
    subset without saying so. ``detail`` says the same in words.
    """

    name: str
    value: float | None
    limit: float
    passed: bool | None
    detail: str = ""
    skipped: tuple[dict[str, str], ...] = ()
    status: str = PASS


@dataclass(frozen=True)
class Verdict:
    """A candidate's verdict: ``status`` PASS, FAIL or INCOMPLETE; ``passed`` is ``status == PASS``.

    ``reasons``: each exceeded gate, then each gate not evaluated in full. ``estimate_checks``: judged on
    the bounds, the same gates on the measured figures (what a report shows as the figures); else empty.
    """

    passed: bool
    checks: tuple[GateCheck, ...] = field(default=())
    reasons: tuple[str, ...] = field(default=())
    status: str = PASS
    estimate_checks: tuple[GateCheck, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.status not in (PASS, FAIL, INCOMPLETE) or self.passed != (self.status == PASS):
            raise ConfigError(f"a verdict is PASS, FAIL or INCOMPLETE with passed == (status == PASS); got "
                              f"status={self.status!r}, passed={self.passed!r}")


_EPS = 1e-12  # a figure equal to its limit passes, whatever the float rounding


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def _check(name: str, value: float | None, limit: float, detail: str, skipped: Sequence[dict[str, str]] = (),
           *, at_least: bool = False) -> GateCheck:
    """A :class:`GateCheck` with its status; ``value`` None or NaN: nothing evaluated. ``skipped``: entries of
    :func:`_skip_entry` or :func:`_plain_skip`."""
    if value is None or not _finite(value):
        passed: bool | None = None
    else:
        passed = bool(value >= limit - _EPS) if at_least else bool(value <= limit + _EPS)
    if skipped:
        detail = (detail + "; " if detail else "") + "not evaluated for " + skipped_text(skipped)
    status = FAIL if passed is False else INCOMPLETE if passed is None or skipped else PASS
    return GateCheck(name, None if passed is None else float(value),  # type: ignore[arg-type]
                     limit, passed, detail, tuple(skipped), status)


def _figure(value: float, other: float) -> str:
    """``value`` in 4 significant digits, or more where those would read as ``other`` (its limit) or as 1 when
    it is neither: "top1_agreement 0.99 < 0.99" for 0.98996 said nothing."""
    for digits in (4, 6, 8, 10, 12):
        text = f"{value:.{digits}g}"
        if (value == other or float(text) != other) and (value == 1.0 or float(text) != 1.0):
            return text
    return repr(value)


def _relation(c: GateCheck) -> str:
    """``"name value < limit"`` for a check whose figure is on the wrong side of its limit."""
    assert c.value is not None  # only called for a check that compared a figure
    return (f"{c.name} {_figure(c.value, c.limit)} {'<' if c.name == 'top1_agreement' else '>'} "
            f"{_figure(c.limit, c.value)}")


def _largest_drop(name: str | None, worst: float | None, prefix: str) -> str:
    """"largest drop: class dr", or, where nothing dropped, that no figure fell (it read "largest drop: dr" at 0)."""
    if worst is None or not worst > 0:
        return "no drop in any class" if prefix else "no drop"
    return f"largest drop: {prefix}{name}"


def _largest_loss(name: str | None, worst: float | None, row: Mapping[str, Any] | None) -> str:
    """The sensitivity gate's detail: whose positives were lost, how many, and the net change of sensitivity.

    Why both: the gate judges the share of positives whose call was lost (:func:`sensitivity_loss`), which a
    positive gained does not offset; a signer computing TP / (TP + FN) gets the net change and could not
    reconcile "sensitivity_drop 0.02154" with a sensitivity 0.180 -> 0.163 (a review).
    """
    if worst is None or not worst > 0 or row is None:
        return _largest_drop(name, worst, "")
    lost = row.get("lost_positives")
    net = float(row["sensitivity_candidate"] - row["sensitivity_reference"])
    if not (isinstance(lost, Mapping) and _finite(lost.get("rate"))):
        return f"largest drop: {name} (net sensitivity change {net:+.4g})"
    return (f"largest: {name}, {lost.get('changes', '?')} of {lost.get('n', '?')} positives lost; positives "
            f"gained do not offset them: the net sensitivity change is {net:+.4g}")


def _worst(items: Sequence[tuple[str, float]]) -> tuple[str, float] | tuple[None, None]:
    return max(items, key=lambda d: d[1]) if items else (None, None)


def judge(gates: ParityGates, numeric: Mapping[str, Any], clin: Mapping[str, Any], *,
          on: str = ON_ESTIMATES) -> Verdict:
    """Apply ``gates`` to one candidate's figures: PASS, FAIL or INCOMPLETE (see the module doc).

    The AUC gate applies to every class, the sensitivity gate to every
    referable class and to the referral decision, the class-flip gate to every
    referable class; a class the data cannot evaluate (no labels for it, no
    positive image) is listed in its check and makes the verdict INCOMPLETE
    unless another gate FAILs. A gate that applies to nothing (a bundle
    without referable classes) has nothing to check and passes.

    ``on``: :data:`ON_ESTIMATES` compares the measured figures with the gates.
    :data:`ON_BOUNDS` (:data:`JUDGE_ON`) first does the same, so a figure over
    its gate FAILs as before; a gate whose figures are within it must then
    also have its 95 % bound within it (:func:`_bound_check`), or it is
    INCOMPLETE: "within the gate on these images, not shown at 95 %" says that
    the data are too few, not that the file is worse, and an INCOMPLETE does
    not replace a complete verdict in the manifest (a FAIL would, and the FP32
    file's FAIL would end its role as the device's reference). ``max_prob_diff``
    is a maximum over the images either way.
    """
    if on not in JUDGE_ON:
        raise ConfigError(f"judge on one of {JUDGE_ON}; got {on!r}")
    estimates = _estimate_checks(gates, numeric, clin)
    checks = [_bound_check(c, clin) for c in estimates] if on == ON_BOUNDS else estimates
    failed = [f"{_relation(c)} ({c.detail})" for c in checks if c.passed is False]
    incomplete = [_incomplete_reason(c) for c in checks if c.status == INCOMPLETE]
    status = FAIL if failed else INCOMPLETE if incomplete else PASS
    if failed:  # after a FAIL's exceeded gates, its gates not evaluated in full say so (INCOMPLETE_MARK)
        incomplete = [INCOMPLETE_MARK + r for r in incomplete]
    return Verdict(status == PASS, tuple(checks), tuple(failed + incomplete), status,
                   tuple(estimates) if on == ON_BOUNDS else ())


def _evaluated(r: Mapping[str, Any], metric: str) -> bool:
    """Whether a row's figure counts: computed for both, and not set aside (too few cases: MIN_CASES_PER_CLASS)."""
    return (_finite(r.get(f"{metric}_reference")) and _finite(r.get(f"{metric}_candidate"))
            and metric not in (r.get("not_evaluated") or {}))


def _estimate_checks(gates: ParityGates, numeric: Mapping[str, Any], clin: Mapping[str, Any]) -> list[GateCheck]:
    """Every gate on the measured figures (the verdict of ``--judge-on estimates``)."""
    checks: list[GateCheck] = []
    rows = clin["per_class"]
    fl = clin["flips"]
    checks.append(_check("flip_rate", fl["rate"], gates.max_flip_rate, f"{fl['n']} referral decision(s) flipped"))
    referable = [r for r in rows if r["referable"]]
    if referable:
        rates = [(r["name"], float(r["decision_changes"]["rate"])) for r in referable]
        name, worst = _worst(rates)
        flips_k = next(r["decision_flips"] for r in referable if r["name"] == name)
        checks.append(_check("class_flip_rate", worst, gates.max_class_flip_rate,
                             f"largest: class {name} ({flips_k} call(s) changed)"))
    else:
        checks.append(GateCheck("class_flip_rate", None, gates.max_class_flip_rate, True,
                                "no referable class in the bundle: nothing to gate"))
    found = clin.get("finding_changes") or {}
    if referable and _finite(found.get("rate")):
        checks.append(_check("finding_change_rate", float(found["rate"]), gates.max_finding_change_rate,
                             f"{found.get('changes', '?')} image(s) with a referable class's call changed"))
    else:
        checks.append(GateCheck("finding_change_rate", None, gates.max_finding_change_rate, True,
                                "no referable class in the bundle: nothing to gate"))

    def skipped_of(items: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, str]]:
        return [_skip_entry(r["name"], r, metric) for r in items]

    drops = [(r["name"], r["auc_reference"] - r["auc_candidate"]) for r in rows if _evaluated(r, "auc")]
    name, worst = _worst(drops)
    checks.append(_check("auc_drop", worst, gates.max_auc_drop, _largest_drop(name, worst, "class ") if drops else "",
                         skipped_of([r for r in rows if r["name"] not in dict(drops)], "auc")))
    sens_rows = [r for r in referable if _evaluated(r, "sensitivity")]
    sens = [(r["name"], sensitivity_loss(r)) for r in sens_rows]
    skipped = skipped_of([r for r in referable if r not in sens_rows], "sensitivity")
    ref = clin["referral"]
    if _evaluated(ref, "sensitivity"):
        sens.append(("referral", sensitivity_loss(ref)))
    elif ref.get("applicable", bool(referable)):
        skipped.append(_skip_entry("referral", ref, "sensitivity"))
    if sens or skipped:
        name, worst = _worst(sens)
        by_name = {**{r["name"]: r for r in sens_rows}, "referral": ref}
        checks.append(_check("sensitivity_drop", worst, gates.max_sensitivity_drop,
                             _largest_loss(name, worst, by_name.get(name or "")) if sens else "", skipped))
    else:
        checks.append(GateCheck("sensitivity_drop", None, gates.max_sensitivity_drop, True,
                                "no referable class in the bundle: nothing to gate"))
    top1 = clin.get("top1_agreement")
    source = clin.get("top1_source", "probs")
    checks.append(_check("top1_agreement", float(top1) if isinstance(top1, (int, float)) and _finite(top1) else None,
                         gates.min_top1_agreement,
                         f"share of images with the same top class (from the {source})" if _finite(top1)
                         else "no images compared", at_least=True))
    if gates.max_prob_diff is not None:
        checks.append(_check("max_prob_diff", numeric["max_abs_prob_diff"], gates.max_prob_diff,
                             "max |candidate - reference| over images and classes"))
    return checks


def sensitivity_loss(row: Mapping[str, Any]) -> float:
    """What the sensitivity gate judges for one class or the referral: the share of positives whose positive
    call the candidate lost (``lost_positives``), or the net drop where no such count was made.

    The net drop (reference minus candidate sensitivity) lets a positive the candidate gained offset one it
    lost: a file that missed a true positive's referral passed at "no drop" while the report said one lost
    case fails it. The lost share is never below the net drop.
    """
    net = float(row["sensitivity_reference"] - row["sensitivity_candidate"])
    lost = row.get("lost_positives")
    if isinstance(lost, Mapping) and _finite(lost.get("rate")):
        return max(float(lost["rate"]), net)
    return net


def _gate_bounds(name: str, clin: Mapping[str, Any]) -> tuple[list[tuple[str, float, str]], list[tuple[str, str]]]:
    """The 95 % bounds of gate ``name``'s figures that count: ``([(what, bound, how)], [(class, why undefined)])``.

    Change rates: :func:`judged_bound` (by image or by patient). AUC drop: the far end of the paired bootstrap
    interval (two-sided 95 %). Sensitivity drop: the exact bound on the share of positives whose call was lost
    (``lost_positives``), which a net drop cannot undercut (a gained positive does not offset a lost one).
    Top-1: the bound on disagreement (1 minus it is the agreement's lower bound).
    """
    rows = clin["per_class"]
    referable = [r for r in rows if r["referable"]]
    if name == "flip_rate":
        b, how = judged_bound(clin["flips"])
        return [("referral", b, how)], []
    if name == "class_flip_rate":
        return [(f"class {r['name']}", *judged_bound(r["decision_changes"])) for r in referable], []
    if name == "finding_change_rate":
        b, how = judged_bound(clin["finding_changes"])
        return [("findings", b, how)], []
    if name == "top1_agreement":
        b, how = judged_bound(clin["top1_disagreement"])
        return [("top-1", b, how)], []
    out: list[tuple[str, float, str]] = []
    undefined: list[tuple[str, str]] = []
    if name == "auc_drop":
        for r in rows:
            if not _evaluated(r, "auc"):
                continue
            low: Any = (r.get("auc_difference") or {}).get("low")
            if _finite(low):
                # 0.0 - x, not -x: a low end of 0.0 must not read "-0"
                out.append((f"class {r['name']}", 0.0 - float(low), "by the bootstrap interval"))
            else:
                note = (r.get("auc_difference") or {}).get("note") or "no bootstrap replicates"
                undefined.append((r["name"], f"its 95 % interval is undefined ({note})"))
        return out, undefined
    if name == "sensitivity_drop":
        ref = clin["referral"]
        for what, r in [*((r["name"], r) for r in referable), ("referral", ref)]:
            if not _evaluated(r, "sensitivity"):
                continue
            lost = r.get("lost_positives")
            if isinstance(lost, Mapping) and _finite(lost.get("upper95")):
                b, how = judged_bound(lost)
                out.append((what, b, f"{how}, {lost['changes']} of {lost['n']} positives lost"))
            else:
                undefined.append((what, "no count of lost positives"))
        return out, undefined
    return [], []


def _bound_check(c: GateCheck, clin: Mapping[str, Any]) -> GateCheck:
    """``c`` (a gate judged on the estimates) judged on the 95 % bounds as well (see :func:`judge`)."""
    if c.passed is False or c.name == "max_prob_diff" or (c.passed is True and c.value is None):
        return c  # over the gate already (the estimate says enough), a maximum, or a gate with nothing to gate
    bounds, undefined = _gate_bounds(c.name, clin)
    at_least = c.name == "top1_agreement"
    left = [_plain_skip(k, w) for k, w in undefined]
    skipped = [*c.skipped, *left]
    if not bounds:
        # (c.detail already names the classes the estimate skipped; these are the intervals left undefined)
        detail = ((c.detail + "; " if c.detail else "") + "not evaluated for " + skipped_text(left)) if left \
            else c.detail
        return GateCheck(c.name, None, c.limit, None, detail, tuple(skipped), INCOMPLETE)
    what, worst, how = max(bounds, key=lambda t: t[1])
    value = 1.0 - worst if at_least else worst
    shown = value >= c.limit - _EPS if at_least else value <= c.limit + _EPS
    word = "lower" if at_least else "upper"
    detail = f"{word} 95 % bound {how} ({what}); estimate {_figure(c.value, c.limit)}" if c.value is not None \
        else f"{word} 95 % bound {how} ({what})"
    if not shown:
        detail += ": within the gate on these images, not shown at 95 %"
    if skipped:
        detail += "; not evaluated for " + skipped_text(skipped)
    status = PASS if shown and not skipped else INCOMPLETE
    return GateCheck(c.name, float(value), c.limit, True if shown else None, detail, tuple(skipped), status)


def _plain_skip(name: str, why: str) -> dict[str, str]:
    """A skipped class whose reason is its own (no case counts, no drop): see :func:`_skip_entry`."""
    return {"class": name, "reason": why, "group": why, "cases": "", "drop": ""}


def _skip_entry(name: str, row: Mapping[str, Any], metric: str) -> dict[str, str]:
    """Why ``row``'s ``metric`` is not gated, with its drop when it could be computed (a signer still sees it).

    ``reason`` says it all for this class alone (as parity.json has always had it); ``group`` is the part
    several classes can share (too few cases: :data:`FEW_CASES_RULE`), ``cases`` this class's counts where
    those are the reason, ``drop`` the drop reported, not gated ("" where none was computed), so that
    :func:`skipped_text` says a reason once for every class it applies to.
    """
    why = str((row.get("not_evaluated") or {}).get(metric) or f"{metric} undefined")
    entry = _plain_skip(name, why)
    n_pos, n_neg = row.get("n_positive"), row.get("n_negative")
    if isinstance(n_pos, int) and isinstance(n_neg, int) and why == few_cases(n_pos, n_neg):
        entry.update(group=FEW_CASES_RULE, cases=_few_counts(n_pos, n_neg))
    a, b = row.get(f"{metric}_reference"), row.get(f"{metric}_candidate")
    if a is not None and b is not None and _finite(a) and _finite(b):
        # The gate's own measure: for sensitivity the share of positives lost (sensitivity_loss), not the net
        # drop, which a gain offsets (the report set one beside the other in one column; a review).
        drop = sensitivity_loss(row) if metric == "sensitivity" else float(a) - float(b)
        entry["drop"] = f"{drop:.4g}"
        entry["reason"] += f"; its drop {entry['drop']} is reported, not gated"
    return entry


def skipped_text(skipped: Sequence[Mapping[str, str]]) -> str:
    """The classes a gate could not evaluate, each reason said once.

    "dr (6 positive images), glaucoma (2 positive images): too few to gate (...); their drops are reported,
    not gated: dr 0, glaucoma 0.04". Listed one by one with the reason repeated, four classes took 560
    characters of a demo's console to say one thing.
    """
    groups: dict[str, list[Mapping[str, str]]] = {}
    for s in skipped:
        groups.setdefault(s.get("group") or s["reason"], []).append(s)
    parts = []
    for why, members in groups.items():
        if any(m.get("cases") for m in members):
            parts.append(", ".join(f"{m['class']} ({m['cases']})" if m.get("cases") else m["class"]
                                   for m in members) + f": {why}")
        else:
            parts.append(f"{_and([m['class'] for m in members])} ({why})")
    text = "; ".join(parts)
    drops = [s for s in skipped if s.get("drop")]
    if len(drops) == 1:
        text += f"; {drops[0]['class']}'s drop {drops[0]['drop']} is reported, not gated"
    elif drops:
        text += "; their drops are reported, not gated: " + ", ".join(f"{s['class']} {s['drop']}" for s in drops)
    return text


def _and(names: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _incomplete_reason(c: GateCheck) -> str:
    """Why ``c`` did not vouch in full: the classes it skipped with their reasons, or (judged on bounds) that a
    figure within the gate was not shown within it at 95 %."""
    skipped = skipped_text(c.skipped)
    if c.passed is None and c.value is not None:  # _bound_check: the bound is over the gate
        # The figure compared is the bound, and the line says so before it: "flip_rate 0.013 > 0.005 (upper 95 %
        # bound ...; estimate 0 ...)" was read as a flip rate of 1.3 % (a review).
        word = "lower" if c.name == "top1_agreement" else "upper"
        prefix = f"{word} 95 % bound"
        rest = c.detail[len(prefix):].strip() if c.detail.startswith(prefix) else c.detail
        relation = _relation(c)[len(c.name) + 1:]
        return f"{c.name} {prefix} {relation}" + (f" ({rest})" if rest else "")
    if c.passed is None:
        return f"{c.name} not evaluated for {skipped}" if skipped else f"{c.name} not evaluated ({c.detail})"
    relation = ">=" if c.name == "top1_agreement" else "<="
    assert c.value is not None  # passed is not None: a figure was compared
    return (f"{c.name} {_figure(c.value, c.limit)} {relation} {_figure(c.limit, c.value)} but not evaluated for "
            f"{skipped}")


def overall_status(statuses: Sequence[str]) -> str:
    """A run's verdict from its candidates': FAIL if any failed, else INCOMPLETE if any was, else PASS."""
    if FAIL in statuses or not statuses:
        return FAIL
    return INCOMPLETE if INCOMPLETE in statuses else PASS
