"""Clinical metrics for screening models: ROC/AUC, operating points, agreement, bootstrap intervals.

numpy only. The training evaluation, the parity validation (export layer) and
the runtime all report the same numbers, so the one implementation lives in
the lowest layer.

Conventions (shared by every function here):

- A case is called positive when ``score >= threshold``, the rule of
  :meth:`uopsl.runtime.bundle.Manifest.decide`.
- AUC is the Mann-Whitney statistic: the probability that a random positive
  scores above a random negative, a tie counting one half. It equals the
  trapezoidal area under :func:`roc_curve`.
- A value that is undefined for the data (AUC or specificity with one class
  only in ``y_true``, PPV with no predicted positives, ...) is ``NaN``, never an
  exception, so one rare class cannot stop a report half-way; reports carry a
  note saying why. Malformed input (wrong shapes, NaN scores, labels out of
  range) raises :class:`~uopsl.runtime.errors.ConfigError`.
- Internally every metric is computed from per-sample weights of shape
  ``(B, N)``: the point estimate uses one row of ones and a bootstrap replicate
  is a row of resampling multiplicities. The point estimate and the interval
  therefore come from the same code.
- Intervals: a simple proportion of independent cases (sensitivity,
  specificity, PPV, NPV, accuracy) gets the Wilson score interval, which
  stays honest at 0 % and 100 % where a percentile bootstrap collapses to
  zero width; everything else (AUC, F1, means over classes, kappa) gets a
  percentile bootstrap. Cases that are not independent (two eyes of one
  patient) are resampled as whole clusters (``clusters=``), and then the
  proportions are bootstrapped too, since Wilson assumes independence.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from uopsl.runtime.errors import ConfigError

log = logging.getLogger(__name__)
#: Warnings already given in this process (see :func:`bootstrap_weights`' note on strata).
_SAID: set[str] = set()

Task = Literal["binary", "multilabel", "multiclass"]
WeightedStatistic = Callable[[np.ndarray], np.ndarray]

# Upper bound on rows x samples of one bootstrap weight block (float64: 32 MB).
_MAX_WEIGHT_CELLS = 4_000_000


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class RocCurve:
    """A binary ROC curve with one point per distinct score.

    ``thresholds`` is descending; point ``i`` is the rate pair when cases with
    ``score >= thresholds[i]`` are called positive. ``thresholds[0]`` is ``+inf``
    (nothing positive), so the curve starts at (0, 0) and ends at (1, 1). Tied
    scores move the curve diagonally. Rates are NaN when their denominator
    class is absent, and then ``auc`` is NaN too.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    n_positive: int
    n_negative: int

    @property
    def defined(self) -> bool:
        return self.n_positive > 0 and self.n_negative > 0

    @property
    def reason(self) -> str:
        """Why the AUC is undefined; empty when it is defined."""
        return _one_class_reason(self.n_positive, self.n_negative)


@dataclass(frozen=True)
class BinaryRates:
    """Confusion counts and rates of a binary decision at one threshold (NaN where undefined)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float

    @property
    def balanced_accuracy(self) -> float:
        return (self.sensitivity + self.specificity) / 2.0


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen for a target sensitivity, with what it achieves on the data it was chosen on."""

    threshold: float
    target_sensitivity: float
    sensitivity: float
    specificity: float
    n_positive: int
    n_negative: int
    note: str = ""


#: :attr:`Interval.method` of a percentile bootstrap interval.
BOOTSTRAP = "percentile bootstrap"
#: :attr:`Interval.method` of the Wilson score interval of a proportion.
WILSON = "wilson score"
#: :attr:`Interval.method` of the exact (Clopper-Pearson) interval of a proportion.
CLOPPER_PEARSON = "clopper-pearson"
#: :attr:`Interval.method` of a clustered proportion at 0 or 100 %: Wilson with each cluster counted once.
WILSON_EFFECTIVE_N = "wilson score, effective n"
#: :attr:`Interval.method` of :func:`clustered_proportion_interval`: Wilson on the design-effect sample size.
WILSON_DESIGN_EFFECT = "wilson score, design-effect n"


@dataclass(frozen=True)
class Interval:
    """A point estimate with a ``1 - alpha`` interval, and how the interval was obtained (``method``).

    ``method`` is :data:`BOOTSTRAP` (percentile bootstrap: ``n_valid`` counts
    the replicates in which the statistic was defined, and the interval comes
    from those only, NaN when none was) or, for a proportion of independent
    cases, :data:`WILSON` or :data:`CLOPPER_PEARSON` (closed form, so
    ``n_boot = n_valid = 0``). The method travels with the figures because a
    reader compares intervals of different kinds otherwise.
    """

    estimate: float
    low: float
    high: float
    n_boot: int
    n_valid: int
    alpha: float = 0.05
    method: str = BOOTSTRAP

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``."""
        return {
            "estimate": _json_float(self.estimate),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "n_valid": self.n_valid,
            "method": self.method,
        }


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated AUCs on the same cases; ``difference = auc_b - auc_a``."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    n_positive: int
    n_negative: int
    note: str = ""


@dataclass(frozen=True)
class ClassReport:
    """One class of :func:`classification_report`: counts at the threshold and metrics with intervals."""

    name: str
    n_positive: int
    n_negative: int
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    auc: Interval
    sensitivity: Interval
    specificity: Interval
    ppv: Interval
    npv: Interval
    f1: Interval
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "threshold": _json_float(self.threshold),
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
        }
        for metric in _CLASS_METRICS:
            d[metric] = getattr(self, metric).to_dict()
        d["notes"] = list(self.notes)
        return d


_CLASS_METRICS = ("auc", "sensitivity", "specificity", "ppv", "npv", "f1")


# --------------------------------------------------------------------------- input checks


def _binary_labels(y: Any, name: str = "y_true") -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ConfigError(
            f"{name} must be a non-empty 1-D array of 0/1 labels; got shape {a.shape}. "
            "Pass one label per case."
        )
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise ConfigError(f"{name} must hold 0/1 labels; got dtype {a.dtype}")
    bad = ~np.isin(a, (0, 1))
    if bad.any():
        raise ConfigError(
            f"{name} must hold only 0 and 1; got {int(bad.sum())} other values "
            f"(e.g. {a[bad][:3].tolist()}). Binarise the labels first."
        )
    return a.astype(bool)


def _int_labels(y: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array of class indices; got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ConfigError(f"{name} must hold integer class indices; got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ConfigError(f"{name} must hold integer class indices; got non-integer values")
    a = a.astype(np.int64)
    if a.min() < 0:
        raise ConfigError(f"{name} holds negative class indices (min {a.min()}); expected 0..K-1")
    if n_classes is not None and a.max() >= n_classes:
        raise ConfigError(
            f"{name} holds class index {a.max()} but there are only {n_classes} classes (0..{n_classes - 1})"
        )
    return a


def _scores_1d(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 1 or s.shape[0] != n:
        raise ConfigError(f"{name} must have shape ({n},) to match y_true; got {s.shape}")
    return _finite(s, name)


def _scores_2d(scores: Any, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ConfigError(f"{name} must be a non-empty (N, K) array of per-class scores; got shape {s.shape}")
    return _finite(s, name)


def _finite(s: np.ndarray, name: str) -> np.ndarray:
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number):
        raise ConfigError(f"{name} must be numeric; got dtype {s.dtype}")
    # float32 -> float64 is exact, so a threshold taken from these values
    # compares identically against the model's float32 outputs.
    s = s.astype(np.float64, copy=False)
    bad = ~np.isfinite(s)
    if bad.any():
        raise ConfigError(
            f"{name} holds {int(bad.sum())} non-finite values (NaN or inf); "
            "drop the rows of images that failed before computing metrics"
        )
    return s


def _label_matrix(y_true: Any, k: int) -> tuple[np.ndarray, Task, np.ndarray | None]:
    """(N, K) bool truth from multi-hot (N, K) or class indices (N,); also the task and the indices."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape[1] != k:
            raise ConfigError(f"y_true is multi-hot with {y.shape[1]} columns but scores have {k} classes")
        flat = _binary_labels(y.reshape(-1), "y_true (multi-hot)")
        return flat.reshape(y.shape), "multilabel", None
    idx = _int_labels(y, "y_true", k)
    return np.eye(k, dtype=bool)[idx], "multiclass", idx


def _check_rows(y: np.ndarray, s: np.ndarray) -> None:
    if y.shape[0] != s.shape[0]:
        raise ConfigError(f"y_true has {y.shape[0]} cases but scores have {s.shape[0]} rows; they must match")


def _one_class_reason(n_pos: int, n_neg: int) -> str:
    if n_pos > 0 and n_neg > 0:
        return ""
    return f"only one class in y_true ({n_pos} positives, {n_neg} negatives)"


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- weighted kernels


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=np.asarray(den) > 0)
    return out


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where every entry is NaN (no warning)."""
    ok = np.isfinite(x)
    return _safe_div(np.where(ok, x, 0.0).sum(-1), ok.sum(-1))


class _WeightedAuc:
    """Mann-Whitney AUC of one score column under per-sample weights (B, N) -> (B,).

    Sorting is done once; each call groups the weights by distinct score and
    counts, per positive weight, the negative weight below it plus half the tied.
    """

    def __init__(self, positive: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(scores, kind="mergesort")
        s = scores[order]
        self._order = order
        self._pos = positive[order].astype(np.float64)
        self._starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))

    def __call__(self, w: np.ndarray) -> np.ndarray:
        ws = w[:, self._order]
        p = np.add.reduceat(ws * self._pos, self._starts, axis=1)
        q = np.add.reduceat(ws, self._starts, axis=1) - p
        below = np.cumsum(q, axis=1) - q
        num = np.sum(p * (below + 0.5 * q), axis=1)
        return _safe_div(num, p.sum(axis=1) * q.sum(axis=1))


def _binary_indicators(positive: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N, ..., 4) float indicators of tp, fp, tn, fn."""
    return np.stack(
        [positive & predicted, ~positive & predicted, ~positive & ~predicted, positive & ~predicted], axis=-1
    ).astype(np.float64)


def _rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
    }


class _WeightedConfusion:
    """Confusion matrices (B, K, K) (rows: truth, columns: prediction) under weights (B, N)."""

    def __init__(self, truth: np.ndarray, predicted: np.ndarray, k: int) -> None:
        keys = truth * k + predicted
        order = np.argsort(keys, kind="mergesort")
        sk = keys[order]
        self._k = k
        self._order = order
        self._starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
        self._cells = sk[self._starts]

    def __call__(self, w: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat(w[:, self._order], self._starts, axis=1)
        out = np.zeros((w.shape[0], self._k * self._k))
        out[:, self._cells] = sums
        return out.reshape(w.shape[0], self._k, self._k)


def _macro_f1_from_confusion(c: np.ndarray) -> np.ndarray:
    # sklearn's multiclass convention: average over classes present in truth or prediction.
    tp = np.diagonal(c, axis1=1, axis2=2)
    support = c.sum(axis=2) + c.sum(axis=1)
    return _nanmean_last(_safe_div(2 * tp, support))


def _balanced_accuracy_from_confusion(c: np.ndarray) -> np.ndarray:
    tp = np.diagonal(c, axis1=1, axis2=2)
    return _nanmean_last(_safe_div(tp, c.sum(axis=2)))


def _accuracy_from_confusion(c: np.ndarray) -> np.ndarray:
    return _safe_div(np.trace(c, axis1=1, axis2=2), c.sum(axis=(1, 2)))


def _quadratic_kappa_from_confusion(c: np.ndarray) -> np.ndarray:
    k = c.shape[-1]
    grades = np.arange(k, dtype=np.float64)
    weight = (grades[:, None] - grades[None, :]) ** 2
    total = c.sum(axis=(1, 2))
    observed = (c * weight).sum(axis=(1, 2))
    expected = _safe_div((c.sum(axis=2)[:, :, None] * c.sum(axis=1)[:, None, :] * weight).sum(axis=(1, 2)), total)
    return 1.0 - _safe_div(observed, expected)


def _ones(n: int) -> np.ndarray:
    return np.ones((1, n))


# --------------------------------------------------------------------------- point metrics


def roc_curve(y_true: Any, scores: Any) -> RocCurve:
    """Binary ROC curve and exact AUC (ties count one half, as in the Mann-Whitney statistic).

    ``y_true``: (N,) 0/1 or bool; ``scores``: (N,) higher means more likely positive.
    With one class only, the curve's undefined rate is NaN and ``auc`` is NaN
    (see :attr:`RocCurve.reason`).
    """
    y = _binary_labels(y_true)
    s = _scores_1d(scores, y.shape[0])
    order = np.argsort(-s, kind="mergesort")
    s_desc = s[order]
    last = np.flatnonzero(np.concatenate((s_desc[1:] != s_desc[:-1], [True])))
    tps = np.cumsum(y[order])[last].astype(np.float64)
    fps = (last + 1) - tps
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = np.concatenate(([0.0], tps)) / n_pos if n_pos else np.full(last.size + 1, np.nan)
    fpr = np.concatenate(([0.0], fps)) / n_neg if n_neg else np.full(last.size + 1, np.nan)
    thresholds = np.concatenate(([np.inf], s_desc[last]))
    auc = float(_WeightedAuc(y, s)(_ones(y.shape[0]))[0])
    if n_pos == 0 or n_neg == 0:
        log.debug("ROC AUC undefined: %s", _one_class_reason(n_pos, n_neg))
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auc=auc, n_positive=n_pos, n_negative=n_neg)


def roc_auc(y_true: Any, scores: Any) -> float:
    """Exact binary AUC (Mann-Whitney, ties one half); NaN with one class only."""
    y = _binary_labels(y_true)
    s = _scores_1d(scores, y.shape[0])
    return float(_WeightedAuc(y, s)(_ones(y.shape[0]))[0])


def per_class_roc(y_true: Any, scores: Any) -> list[RocCurve]:
    """One-vs-rest ROC curve per column of ``scores`` (N, K).

    ``y_true`` is multi-hot (N, K) (multi-label) or class indices (N,) (single-label).
    """
    s = _scores_2d(scores)
    y, _, _ = _label_matrix(y_true, s.shape[1])
    _check_rows(y, s)
    return [roc_curve(y[:, k], s[:, k]) for k in range(s.shape[1])]


def per_class_auc(y_true: Any, scores: Any) -> np.ndarray:
    """(K,) one-vs-rest AUC per class; NaN for a class that is absent or universal in ``y_true``."""
    s = _scores_2d(scores)
    y, _, _ = _label_matrix(y_true, s.shape[1])
    _check_rows(y, s)
    ones = _ones(s.shape[0])
    return np.array([_WeightedAuc(y[:, k], s[:, k])(ones)[0] for k in range(s.shape[1])])


def rates_at_threshold(y_true: Any, scores: Any, threshold: float) -> BinaryRates:
    """Sensitivity, specificity, PPV, NPV and F1 when ``score >= threshold`` is called positive."""
    y = _binary_labels(y_true)
    s = _scores_1d(scores, y.shape[0])
    t = _threshold(threshold)
    counts = _binary_indicators(y, s >= t).sum(axis=0)
    tp, fp, tn, fn = (float(c) for c in counts)
    r = _rates(np.array(tp), np.array(fp), np.array(tn), np.array(fn))
    return BinaryRates(
        threshold=t, tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn), **{k: float(v) for k, v in r.items()}
    )


def _threshold(t: Any) -> float:
    try:
        v = float(t)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"threshold must be a number; got {t!r}") from exc
    if math.isnan(v):
        raise ConfigError("threshold must be a number; got NaN")
    return _as_runtime_threshold(v)


def _as_runtime_threshold(t: Any) -> Any:
    """``t`` rounded through float32, as :attr:`uopsl.runtime.bundle.Manifest.thresholds` holds it, so a
    figure counts the calls the runtime makes (a review: 0.7 is 0.69999999 in float32, and an output of exactly
    that was a positive on the device but a false negative in ``eval.json``). Chosen thresholds are float32
    values already; hand-set ones such as 0.7 are not."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float32).astype(np.float64)
    return float(np.float32(t)) if math.isfinite(t) else t


def threshold_for_sensitivity(y_true: Any, scores: Any, target: float = 0.9) -> OperatingPoint:
    """The highest threshold whose sensitivity on these (validation) cases reaches ``target``.

    The threshold is always the score of a positive case. Ties: cases scoring
    exactly the threshold are called positive (``>=``), so a group of tied
    scores is never split: the achieved sensitivity can exceed the target, and
    negatives tied with that positive count as false positives. The target is
    reached when ``TP >= target * n_positive`` (with a 1e-9 relative slack so
    0.9 of 10 positives means 9). Pass the model's own float32 scores: the
    threshold is then exactly representable in the bundle's float32
    thresholds. With no positive cases the threshold is NaN (see ``note``).
    """
    try:
        target = float(target)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"target sensitivity must be a number in (0, 1]; got {target!r}") from exc
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target sensitivity must be in (0, 1]; got {target}")
    curve = roc_curve(y_true, scores)
    n_pos, n_neg = curve.n_positive, curve.n_negative
    if n_pos == 0:
        return OperatingPoint(
            threshold=math.nan, target_sensitivity=target, sensitivity=math.nan, specificity=math.nan,
            n_positive=0, n_negative=n_neg, note="no positive cases: a sensitivity target cannot be met",
        )
    tp = curve.tpr * n_pos
    i = int(np.flatnonzero(tp[1:] >= target * n_pos * (1 - 1e-9))[0]) + 1
    spec = 1.0 - float(curve.fpr[i]) if n_neg else math.nan
    note = "" if n_neg else "no negative cases: specificity undefined"
    return OperatingPoint(
        threshold=float(curve.thresholds[i]), target_sensitivity=target, sensitivity=float(curve.tpr[i]),
        specificity=spec, n_positive=n_pos, n_negative=n_neg, note=note,
    )


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class.

    ``K`` is ``n_classes`` or one more than the largest index seen.
    """
    t, p, k = _paired_int_labels(y_true, y_pred, n_classes)
    return _WeightedConfusion(t, p, k)(_ones(t.shape[0]))[0].astype(np.int64)


def _paired_int_labels(y_true: Any, y_pred: Any, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    if n_classes is not None and (not isinstance(n_classes, (int, np.integer)) or n_classes < 1):
        raise ConfigError(f"n_classes must be a positive integer; got {n_classes!r}")
    t = _int_labels(y_true, "y_true", n_classes)
    p = _int_labels(y_pred, "y_pred", n_classes)
    if t.shape != p.shape:
        raise ConfigError(f"y_true has shape {t.shape} but y_pred has {p.shape}; they must match")
    k = int(n_classes) if n_classes is not None else int(max(t.max(), p.max())) + 1
    return t, p, k


def macro_f1(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Unweighted mean F1 over classes.

    Single-label: ``y_true``/``y_pred`` are (N,) class indices; classes absent
    from both are left out (scikit-learn's convention). Multi-label: both are
    (N, K) 0/1; a class with no true and no predicted positive has undefined F1
    and is left out (scikit-learn would count it as 0 with a warning).
    """
    t = np.asarray(y_true)
    if t.ndim == 2:
        yt = _binary_labels(t.reshape(-1), "y_true (multi-hot)").reshape(t.shape)
        p = np.asarray(y_pred)
        if p.shape != t.shape:
            raise ConfigError(f"y_pred must have the shape of y_true {t.shape}; got {p.shape}")
        yp = _binary_labels(p.reshape(-1), "y_pred (multi-hot)").reshape(p.shape)
        counts = _binary_indicators(yt, yp).sum(axis=0)  # (K, 4)
        tp, fp, _, fn = counts.T
        return float(_nanmean_last(_safe_div(2 * tp, 2 * tp + fp + fn)[None, :])[0])
    tt, pp, k = _paired_int_labels(y_true, y_pred, n_classes)
    return float(_macro_f1_from_confusion(_WeightedConfusion(tt, pp, k)(_ones(tt.shape[0])))[0])


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` ((N,) class indices; binary is K=2)."""
    t, p, k = _paired_int_labels(y_true, y_pred, n_classes)
    return float(_balanced_accuracy_from_confusion(_WeightedConfusion(t, p, k)(_ones(t.shape[0])))[0])


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights for ordinal grades (N,) in 0..K-1.

    1 for perfect agreement, 0 for chance agreement. NaN when chance
    disagreement is zero (both raters used a single grade).
    """
    t, p, k = _paired_int_labels(y_true, y_pred, n_classes)
    return float(_quadratic_kappa_from_confusion(_WeightedConfusion(t, p, k)(_ones(t.shape[0])))[0])


# --------------------------------------------------------------------------- proportions


def _normal_quantile(p: float) -> float:
    """Standard normal quantile by bisection on ``erfc`` (numpy only; exact to rounding, cost negligible)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``: the CDF at ``x`` of Beta(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    return 0.5 * (lo + hi)


def clopper_pearson_upper(successes: int, total: int, confidence: float) -> float:
    """Exact (Clopper-Pearson) one-sided upper ``confidence`` bound of a proportion seen as ``successes`` in
    ``total`` (``0 <= successes <= total``, ``total >= 1``): the ``confidence`` quantile of
    Beta(successes + 1, total - successes); 1 when every case succeeded, ``1 - (1 - confidence) ** (1 / total)``
    (its closed form) when none did."""
    if successes >= total:
        return 1.0
    if successes == 0:
        return 1.0 - (1.0 - confidence) ** (1.0 / total)
    return _beta_quantile(confidence, successes + 1, total - successes)


def _wilson_bounds(p: float, n: float, alpha: float) -> tuple[float, float]:
    """Wilson score bounds of proportion ``p`` on ``n`` cases (``n`` may be an effective, non-integer size)."""
    z = _normal_quantile(1.0 - alpha / 2.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1.0 + z2 / n)
    half = z / (1.0 + z2 / n) * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _wilson_on_effective_n(p: float, sizes: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(low, high, n_eff): Wilson bounds of ``p`` on ``n_eff = n**2 / sum(n_c**2)`` for clusters of ``sizes``
    cases, the effective size of cases fully correlated within each cluster (for two eyes per patient, the
    number of patients), the ends kept exact at 0 and 1."""
    n = float(sizes.sum())
    n_eff = n * n / float(np.sum(sizes * sizes))
    lo, hi = _wilson_bounds(p, n_eff, alpha)
    return (0.0 if p == 0 else min(lo, p)), (1.0 if p == 1 else max(hi, p)), n_eff


def single_unit_side(pos: np.ndarray, cluster_of: np.ndarray | None) -> str:
    """Why a bootstrap interval of an AUC cannot be estimated ("" when it can): one side comes from a single unit.

    ``cluster_of``: one id per case (its patient), or None when every case is its own unit.
    """
    if not pos.any() or pos.all():
        return ""
    units = np.arange(len(pos)) if cluster_of is None else cluster_of
    unit = "image" if cluster_of is None else "patient"
    for side, mask in (("positive", pos), ("negative", ~pos)):
        if len(np.unique(units[mask])) < 2:
            return (f"the {side} cases come from one {unit}, which every resample keeps, so no interval reflects "
                    "how the figure would vary with other cases")
    return ""


def _clustered_zero_width(iv: Interval, cases: np.ndarray, cluster_of: np.ndarray) -> tuple[Interval, str] | None:
    """A Wilson interval on the effective sample size for a cluster-bootstrapped proportion of zero width.

    At 0 % or 100 % every cluster resample gives the same rate, the failure a
    closed-form interval avoids; with clusters Wilson on the ``n`` cases would
    overstate the information. Each cluster is then counted once in the
    denominator (``n_eff = n**2 / sum(n_c**2)``, the design effect of fully
    correlated cases, the most conservative one): for two eyes per patient,
    the number of patients. ``cases``: the denominator's cases (bool mask).
    """
    if not (iv.n_valid and iv.low == iv.high and math.isfinite(iv.estimate)) or not cases.any():
        return None
    sizes = np.bincount(cluster_of[cases]).astype(np.float64)
    n = float(sizes.sum())
    lo, hi, n_eff = _wilson_on_effective_n(iv.estimate, sizes, iv.alpha)
    note = (f"every cluster-bootstrap resample gave {iv.estimate:g} (zero width); replaced by the Wilson interval on "
            f"the effective sample size {n_eff:.3g} ({int(n)} cases, each cluster counted once)")
    return Interval(iv.estimate, lo, hi, iv.n_boot, iv.n_valid, iv.alpha, WILSON_EFFECTIVE_N), note


def proportion_interval(successes: int, total: int, *, alpha: float = 0.05, method: str = WILSON) -> Interval:
    """``successes / total`` with a ``1 - alpha`` interval for a proportion of independent cases.

    ``method``: :data:`WILSON` (default) or :data:`CLOPPER_PEARSON`. Why not
    the bootstrap: at 0 % or 100 % every resample gives the same rate, so a
    percentile bootstrap collapses to zero width (5 of 5 positives detected
    reads "sensitivity 1.0 [1.0, 1.0]"), and at small n it under-covers
    generally. The Wilson score interval (Wilson 1927) inverts the score test:
    it never leaves [0, 1], is not degenerate at 0 or n, and its coverage is
    close to the nominal level on average (Agresti & Coull 1998, Newcombe
    1998), which is what a report of many proportions wants. Clopper-Pearson
    inverts the exact binomial test: its coverage is at least the nominal
    level for every true proportion, at the price of a wider interval; choose
    it where a one-sided guarantee matters (e.g. "at most x % flips").
    With ``total = 0`` the estimate and interval are NaN. Both assume
    independent cases: for clustered cases (two eyes of a patient) use the
    cluster bootstrap (``clusters=`` of :func:`bootstrap_ci`).
    """
    try:
        x, n = int(successes), int(total)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"successes and total must be counts; got {successes!r} and {total!r}") from exc
    if x != successes or n != total or n < 0 or not 0 <= x <= n:
        raise ConfigError(
            f"need integer counts with 0 <= successes <= total; got successes={successes!r}, total={total!r}"
        )
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1) (0.05 gives a 95 % interval); got {alpha}")
    if method not in (WILSON, CLOPPER_PEARSON):
        raise ConfigError(f"method must be {WILSON!r} or {CLOPPER_PEARSON!r}; got {method!r}")
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0, alpha, method)
    p = x / n
    if method == WILSON:
        lo, hi = _wilson_bounds(p, n, alpha)
    else:
        lo = _beta_quantile(alpha / 2.0, x, n - x + 1) if x > 0 else 0.0
        hi = _beta_quantile(1.0 - alpha / 2.0, x + 1, n - x) if x < n else 1.0
    # The closed forms are exact at the boundaries; keep them exact despite rounding.
    lo = 0.0 if x == 0 else min(lo, p)
    hi = 1.0 if x == n else max(hi, p)
    return Interval(estimate=p, low=lo, high=hi, n_boot=0, n_valid=0, alpha=alpha, method=method)


def clustered_proportion_interval(hits: Any, clusters: Any, *, alpha: float = 0.05) -> tuple[Interval, float]:
    """The share of ``hits`` among cases grouped in ``clusters`` (one id per case, e.g. its patient) with a
    ``1 - alpha`` Wilson interval on the cases' effective sample size, and that size.

    Why: two photographs of one patient are not two independent cases (the same retina, camera and grader),
    so a Wilson interval on the number of images is too narrow where patients hold several. The effective size
    is ``n_eff = p (1 - p) / V``, ``V`` the cluster-robust variance of the ratio estimator
    (``m / (m - 1) * sum_c (x_c - p n_c)**2 / n**2`` over ``m`` clusters of ``n_c`` cases, ``x_c`` hits; Kish's
    design effect ``n / n_eff``), kept between ``n**2 / sum_c n_c**2`` and ``n``. The lower limit is the
    effective size of cases fully correlated within each cluster (the largest design effect possible when every
    case shares one marginal rate): the number of patients where each holds as many images, fewer where they
    hold unequal numbers; it also overrides a smaller estimate from few clusters. The upper limit: clustering
    is never taken to add information (a design effect below 1 is chance). At 0 or 100 %, or with one cluster,
    there is no spread to estimate ``V`` from, and the lower limit is used: the conservative choice
    :func:`classification_report` makes for a cluster-bootstrapped proportion of zero width. No
    degrees-of-freedom correction (Korn & Graubard's ``t`` with ``m - 1``): with few patients the interval is
    somewhat narrow. Closed form, so it needs no resampling and no seed. NaN without cases.
    """
    h = np.asarray(hits, bool).reshape(-1)
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1) (0.05 gives a 95 % interval); got {alpha}")
    n = int(h.size)
    code = _cluster_codes(clusters, n)  # one id per case; None or NaN refused
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0, alpha, WILSON_DESIGN_EFFECT), math.nan
    sizes = np.bincount(code).astype(np.float64)
    x_c = np.bincount(code, weights=h.astype(np.float64))
    m = int(sizes.size)
    p = float(h.mean())
    lo, hi, floor = _wilson_on_effective_n(p, sizes, alpha)
    if m == 1 or p in (0.0, 1.0):  # no spread between clusters to estimate the variance from: the floor
        return Interval(p, lo, hi, 0, 0, alpha, WILSON_DESIGN_EFFECT), floor
    var = (m / (m - 1)) * float(np.sum((x_c - p * sizes) ** 2)) / (n * n)
    # var 0 with 0 < p < 1: every cluster at exactly p, a design effect of 0, capped at n like any below 1
    n_eff = float(n) if var <= 0.0 else min(float(n), max(floor, p * (1.0 - p) / var))
    lo, hi = _wilson_bounds(p, n_eff, alpha)
    lo, hi = min(lo, p), max(hi, p)
    return Interval(p, lo, hi, 0, 0, alpha, WILSON_DESIGN_EFFECT), n_eff


# --------------------------------------------------------------------------- bootstrap


def _strata_codes(strata: Any, n: int) -> np.ndarray:
    """(N,) int stratum code per case: ``np.unique`` order of the values (1-D) or of the rows (2-D)."""
    a = np.asarray(strata)
    if a.shape[:1] != (n,) or a.ndim > 2 or a.ndim == 0:
        raise ConfigError(f"strata must be (N,) or (N, K) with N = {n}; got shape {a.shape}")
    _, inverse = np.unique(a, axis=0, return_inverse=True) if a.ndim == 2 else np.unique(a, return_inverse=True)
    return np.asarray(inverse).reshape(-1)


def _strata_groups(strata: Any, n: int) -> list[np.ndarray]:
    """Case indices of each stratum: cases with equal ``strata`` values (1-D) or equal rows (2-D).

    A 2-D ``strata`` is read as one stratum per distinct *row*: for a
    multi-hot label matrix that is the joint label pattern. Beware: with
    several classes most patterns are rare, a pattern held by one case is a
    stratum of one, and that case then enters every resample exactly once,
    so its sampling variability is lost and the interval is too narrow
    (60 cases and 8 classes gave 30 such singletons and intervals about half
    the right width). Per-class figures should be stratified on that class's
    own 0/1 column instead (:func:`classification_report` does so).
    """
    inverse = _strata_codes(strata, n)
    return [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]


def patient_codes(patients: Sequence[str | None]) -> np.ndarray | None:
    """(N,) int cluster code per image for a bootstrap by patient, or None when no image has a patient id.

    Images of one patient (two eyes, repeat visits) are correlated: resampled
    one by one, they give intervals that are too narrow. An image without a
    patient id (None or ``""``) gets a code of its own, i.e. it is resampled
    alone.
    """
    codes: dict[str, int] = {}
    out = np.empty(len(patients), np.int64)
    known = 0
    for i, pid in enumerate(patients):
        if pid is None or str(pid) == "":
            out[i] = -1
            continue
        known += 1
        out[i] = codes.setdefault(str(pid), len(codes))
    if not known:
        return None
    unknown = out < 0
    out[unknown] = len(codes) + np.arange(int(unknown.sum()))
    return out


def _cluster_codes(clusters: Any, n: int) -> np.ndarray:
    """(N,) int cluster code per case from any hashable ids; None or NaN ids are refused."""
    a = np.asarray(clusters)
    if a.ndim != 1 or a.shape[0] != n:
        raise ConfigError(
            f"clusters must hold one id per case, shape ({n},); got shape {a.shape}. "
            "Pass e.g. the patient id of every image."
        )
    if a.dtype != object:
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise ConfigError("clusters holds NaN or inf ids; give every case an id (a case alone: an id of its own)")
        _, inverse = np.unique(a, return_inverse=True)
        return np.asarray(inverse, np.int64).reshape(-1)
    codes: dict[Any, int] = {}
    out = np.empty(n, np.int64)
    for i, v in enumerate(a.tolist()):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(
                f"clusters[{i}] is {v!r}; every case needs a cluster id. Give a case whose patient is unknown "
                "an id of its own (it is then resampled alone)"
            )
        try:
            out[i] = codes.setdefault(v, len(codes))
        except TypeError as exc:
            raise ConfigError(f"clusters[{i}] = {v!r} is not a usable id (unhashable)") from exc
    return out


#: How a stratified cluster bootstrap places a cluster whose cases differ (a patient with one diseased eye).
MIXED_CLUSTERS = ("a cluster whose cases fall in different strata is resampled in the stratum of its largest value "
                  "(0/1 labels: as positive when any of its cases is; grades: its worst case's)")


def _cluster_strata_groups(strata: Any, cluster_of: np.ndarray, n: int) -> tuple[list[np.ndarray], int]:
    """Cluster indices of each stratum, and how many clusters hold cases of more than one stratum.

    A cluster whose cases share one stratum belongs to it. A cluster that
    mixes strata is put in the stratum of its largest value: for 0/1 labels,
    a cluster counts as positive when any of its cases is (a patient with
    one diseased eye is a diseased patient); for grades, the worse eye's; for
    a 2-D ``strata`` the column-wise maximum of its rows (the union of the
    cases' labels). Positive and negative *clusters* are then resampled
    within their strata, so every replicate has the original number of
    positive clusters; the number of positive *cases* varies a little.
    """
    n_clusters = int(cluster_of.max()) + 1
    a = np.asarray(strata)
    if a.shape[:1] != (n,) or a.ndim > 2 or a.ndim == 0:
        raise ConfigError(f"strata must be (N,) or (N, K) with N = {n}; got shape {a.shape}")
    if a.ndim == 1:
        codes = _strata_codes(a, n)
        key = np.full(n_clusters, -1, np.int64)
        np.maximum.at(key, cluster_of, codes)
        low = np.full(n_clusters, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(low, cluster_of, codes)
        mixed = int(np.sum(low != key))
        _, inv = np.unique(key, return_inverse=True)
    else:
        if a.dtype != bool and not np.issubdtype(a.dtype, np.number):
            raise ConfigError(f"a 2-D strata with clusters must be numeric (e.g. multi-hot); got dtype {a.dtype}")
        v = a.astype(np.float64)
        key2 = np.full((n_clusters, a.shape[1]), -np.inf)
        np.maximum.at(key2, cluster_of, v)
        low2 = np.full((n_clusters, a.shape[1]), np.inf)
        np.minimum.at(low2, cluster_of, v)
        mixed = int(np.sum(np.any(low2 != key2, axis=1)))
        _, inv = np.unique(key2, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    return [np.flatnonzero(inv == g) for g in range(int(inv.max()) + 1)], mixed


def _resampling_plan(n: int, strata: Any, clusters: Any) -> tuple[list[np.ndarray], np.ndarray | None, int]:
    """(groups of resampling units per stratum, case -> unit map or None, number of units)."""
    if clusters is None:
        groups = _strata_groups(strata, n) if strata is not None else [np.arange(n)]
        return groups, None, n
    cluster_of = _cluster_codes(clusters, n)
    n_clusters = int(cluster_of.max()) + 1
    if strata is None:
        return [np.arange(n_clusters)], cluster_of, n_clusters
    groups, mixed = _cluster_strata_groups(strata, cluster_of, n)
    if mixed:
        # DEBUG: every stratified figure of a report comes here (the demo's `validate` logged it 26 times). Each
        # report states the rule once: classification_report's "bootstrap" block (MIXED_CLUSTERS), validate's
        # bootstrap.method.
        log.debug(
            "bootstrap: %d of %d clusters hold cases of more than one stratum; each was resampled in the "
            "stratum of its largest value (0/1 labels: as positive when any of its cases is)", mixed, n_clusters,
        )
    return groups, cluster_of, n_clusters


def bootstrap_weights(
    n: int, *, n_boot: int, seed: int = 0, strata: Any = None, clusters: Any = None
) -> Iterator[np.ndarray]:
    """Yield blocks of bootstrap multiplicities, each (b, n) float64, ``n_boot`` rows in all.

    Each row counts how often each case is drawn in one resample. Without
    ``clusters`` a resample draws ``n`` cases with replacement. With
    ``strata`` the cases are resampled within each stratum, so every
    replicate keeps the original stratum sizes (class counts): a 1-D
    ``strata`` gives one stratum per distinct value; a 2-D one ((N, K), e.g.
    multi-hot labels) one per distinct *row*, i.e. per joint label pattern.
    A 2-D strata is still accepted, for statistics that must share one
    resample across classes, but mind its pitfall: rare patterns become
    strata of one case, which enters every resample exactly once, and the
    interval comes out too narrow. Stratify on one class's own 0/1 column
    (or on a coarse 1-D code such as a few classes' patterns), or not at
    all. A warning is logged whenever a stratum holds a single unit.

    ``clusters`` ((N,) ids, e.g. the patient of each image): whole clusters
    are resampled, so both eyes of a patient are drawn together and carry the
    same weight in every row; a resample draws as many clusters as there are
    (within each stratum, when stratified). Cases of one patient are not
    independent, and resampling them one by one gives intervals that are too
    narrow. With ``strata`` each cluster is assigned a stratum: the one its
    cases share, or, when they differ, the largest of their values (for 0/1
    labels: positive when any of its cases is positive; logged). A case whose
    cluster is unknown should get an id of its own. None or NaN ids raise.

    Deterministic for a given ``(n, n_boot, seed, strata, clusters)``.
    """
    rng = np.random.default_rng(seed)
    groups, unit_of_case, n_units = _resampling_plan(n, strata, clusters)
    single = sum(1 for g in groups if g.size == 1)
    if n_boot > 0 and single and len(groups) > 1:
        # Said once per process: validate and evaluate draw several bootstraps over the same strata, and the
        # warning came three times with a remedy (the strata) that their users cannot choose (a review).
        said = (f"bootstrap: {single} of {len(groups)} strata hold a single "
                f"{'case' if unit_of_case is None else 'cluster'}, which enters every resample exactly once, so "
                "intervals leave out its sampling variability and are slightly narrow (more images of each label "
                "pattern avoid it; in the Python API, stratify on fewer, larger groups)")
        # Keyed by the data too: a service bootstrapping another data set with the same counts hears it again.
        key = said + "|" + hashlib.sha256(b"|".join(np.ascontiguousarray(g).tobytes() for g in groups)).hexdigest()
        if key not in _SAID:
            _SAID.add(key)
            log.warning("%s", said)
    rows = max(1, _MAX_WEIGHT_CELLS // max(n, n_units))
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        u = np.zeros((b, n_units))
        for members in groups:
            m = members.size
            draws = rng.integers(0, m, size=(b, m)) + (np.arange(b)[:, None] * m)
            u[:, members] = np.bincount(draws.ravel(), minlength=b * m).reshape(b, m)
        yield u if unit_of_case is None else u[:, unit_of_case]
        done += b


def bootstrap_many(
    statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    strata: Any = None,
    clusters: Any = None,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of several statistics from the same resamples.

    ``statistic(weights)`` maps per-sample weights (B, n) to named (B,) values
    (NaN where undefined); it is called once with a row of ones for the point
    estimates, then on blocks of resampling multiplicities. Sharing the
    resamples keeps the intervals of one report paired with each other.
    ``strata`` and ``clusters``: see :func:`bootstrap_weights` (with
    ``clusters`` the total weight of a row varies, so a statistic must
    normalise by ``w.sum(1)``, not by ``n``).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be a positive number of cases; got {n!r}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError(f"n_boot must be an integer >= 0 (0 skips the intervals); got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1) (0.05 gives a 95 % interval); got {alpha}")
    point = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in statistic(_ones(n)).items()}
    reps: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for w in bootstrap_weights(n, n_boot=n_boot, seed=seed, strata=strata, clusters=clusters):
        for k, v in statistic(w).items():
            reps[k].append(np.asarray(v, np.float64).reshape(-1))
    out: dict[str, Interval] = {}
    for k, est in point.items():
        r = np.concatenate(reps[k]) if reps[k] else np.empty(0)
        r = r[np.isfinite(r)]
        lo, hi = (
            (float(x) for x in np.percentile(r, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
            if r.size
            else (math.nan, math.nan)
        )
        out[k] = Interval(estimate=est, low=lo, high=hi, n_boot=int(n_boot), n_valid=int(r.size), alpha=alpha)
    return out


def bootstrap_ci(
    statistic: WeightedStatistic,
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    strata: Any = None,
    clusters: Any = None,
) -> Interval:
    """Percentile bootstrap interval of one statistic ``weights (B, n) -> (B,)``; see :func:`bootstrap_many`.

    Example, the rate of flipped decisions: ``bootstrap_ci(lambda w: w @ flips / w.sum(1), n)``. (For a
    simple proportion of independent cases :func:`proportion_interval` is better: it does not collapse at 0.)
    """
    return bootstrap_many(
        lambda w: {"v": statistic(w)}, n, n_boot=n_boot, seed=seed, alpha=alpha, strata=strata, clusters=clusters
    )["v"]


def auc_ci(
    y_true: Any,
    scores: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
    clusters: Any = None,
) -> Interval:
    """Binary AUC with a percentile bootstrap interval (resampled within each class when ``stratified``).

    ``clusters`` ((N,) ids, e.g. patients): resample whole clusters, positive
    clusters (any positive case) and negative ones separately when
    ``stratified``; see :func:`bootstrap_weights`.
    """
    y = _binary_labels(y_true)
    s = _scores_1d(scores, y.shape[0])
    return bootstrap_ci(
        _WeightedAuc(y, s), y.shape[0], n_boot=n_boot, seed=seed, alpha=alpha, strata=y if stratified else None,
        clusters=clusters,
    )


def paired_auc_difference(
    y_true: Any,
    scores_reference: Any,
    scores_candidate: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
    clusters: Any = None,
) -> Interval:
    """``AUC(candidate) - AUC(reference)`` on the same cases, with a paired bootstrap interval.

    Both score sets are resampled with the same case multiplicities, so the
    interval reflects only the disagreement between the two models (the parity
    check: a deployed model against its PyTorch reference). A negative
    estimate means the candidate lost AUC. ``clusters``: resample whole
    clusters (e.g. patients); see :func:`bootstrap_weights`.
    """
    y = _binary_labels(y_true)
    ref = _WeightedAuc(y, _scores_1d(scores_reference, y.shape[0], "scores_reference"))
    cand = _WeightedAuc(y, _scores_1d(scores_candidate, y.shape[0], "scores_candidate"))
    return bootstrap_ci(
        lambda w: cand(w) - ref(w), y.shape[0], n_boot=n_boot, seed=seed, alpha=alpha,
        strata=y if stratified else None, clusters=clusters,
    )


# --------------------------------------------------------------------------- DeLong


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def delong_test(y_true: Any, scores_a: Any, scores_b: Any) -> DeLongResult:
    """DeLong's test for two correlated AUCs (same cases), fast midrank form (Sun & Xu 2014).

    Two-sided p-value from the normal approximation. Needs at least two cases
    of each class (else NaN, with a note). The variance estimate can be zero:
    identical AUC components (the same scores twice) give ``se = 0, z = 0,
    p = 1`` when the AUCs are equal. When they differ, ``se = 0`` only means
    that both placement-value vectors are constant (e.g. one score set
    separates the classes perfectly and the other is constant, typical of a
    handful of cases); the normal approximation then has nothing to say, so
    ``z`` and ``p`` are NaN with a note, never ``p = 0``. (A variance that is
    not finite is treated the same way.) The test treats cases as independent;
    with clustered cases (two eyes per patient) its p-value is too small.
    """
    y = _binary_labels(y_true)
    a = _scores_1d(scores_a, y.shape[0], "scores_a")
    b = _scores_1d(scores_b, y.shape[0], "scores_b")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        nan = math.nan
        return DeLongResult(
            auc_a=roc_auc(y, a), auc_b=roc_auc(y, b), difference=nan, se=nan, z=nan, p_value=nan,
            n_positive=m, n_negative=n,
            note=f"DeLong needs >= 2 cases of each class; got {m} positives and {n} negatives",
        )
    aucs, v_pos, v_neg = [], [], []
    for s in (a, b):
        x, z = s[y], s[~y]
        r_all = _midranks(np.concatenate((x, z)))
        r_x, r_z = _midranks(x), _midranks(z)
        aucs.append((r_all[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v_pos.append((r_all[:m] - r_x) / n)
        v_neg.append(1.0 - (r_all[m:] - r_z) / m)
    cov = np.cov(np.array(v_pos)) / m + np.cov(np.array(v_neg)) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[1] - aucs[0])
    note = ""
    if not math.isfinite(var):
        se, z_stat, p = math.nan, math.nan, math.nan
        note = f"DeLong variance estimate is not finite ({var}); no p-value"
    else:
        se = math.sqrt(max(var, 0.0))
        if se > 1e-15:
            z_stat = diff / se
            p = math.erfc(abs(z_stat) / math.sqrt(2.0))
        elif abs(diff) < 1e-15:
            se, z_stat, p = 0.0, 0.0, 1.0
        else:
            se, z_stat, p = 0.0, math.nan, math.nan
            note = (
                f"DeLong variance estimate is zero although the AUCs differ by {diff:+.4g} "
                f"({m} positives, {n} negatives): both AUCs' placement values are constant (e.g. perfect "
                "separation against constant scores), so the normal approximation gives no p-value; "
                "use more cases or an exact permutation test"
            )
    if note:
        log.debug("delong_test: %s", note)
    return DeLongResult(
        auc_a=float(aucs[0]), auc_b=float(aucs[1]), difference=diff, se=se, z=z_stat, p_value=p,
        n_positive=m, n_negative=n, note=note,
    )


# --------------------------------------------------------------------------- report


def _class_names(class_names: Sequence[str], k: int) -> tuple[str, ...]:
    names = tuple(class_names) if not isinstance(class_names, str) else ()
    if len(names) != k or not all(isinstance(c, str) and c for c in names):
        raise ConfigError(f"class_names must be {k} non-empty strings (one per score column); got {class_names!r}")
    if len(set(names)) != k:
        raise ConfigError(f"class_names must be unique; got {list(names)}")
    return names


def _thresholds(thresholds: float | Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64) if not isinstance(thresholds, str) else np.array([np.nan])
    if t.ndim == 0:
        t = np.full(k, float(t))
    if t.shape != (k,) or not np.all(np.isfinite(t)):
        raise ConfigError(f"thresholds must be one finite number or {k} (one per class); got {thresholds!r}")
    return _as_runtime_threshold(t)


_PROPORTIONS = ("sensitivity", "specificity", "ppv", "npv")
#: Per-class figures that move with the share of positives, bootstrapped without stratification (see
#: :func:`classification_report`); sensitivity, specificity and AUC do not, and keep the stratified resamples.
_PREVALENCE_DEPENDENT = ("f1", "ppv", "npv")
_PROPORTION_METHODS = (WILSON, CLOPPER_PEARSON, BOOTSTRAP)


def _mean_over(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean over the columns ``keep`` (K,) of ``values`` (B, K); NaN in a row where any of them is NaN.

    A macro figure is the mean over the classes for which it is defined in the
    data. A resample that leaves one of those classes undefined (possible
    when it is not stratified by that class) would average a different set of
    classes, a different statistic; it is undefined instead, and dropped from
    the interval (and counted: ``n_valid``).
    """
    if not keep.any():
        return np.full(values.shape[0], np.nan)
    return values[:, keep].mean(axis=1)


def classification_report(
    y_true: Any,
    scores: Any,
    thresholds: float | Sequence[float] | np.ndarray,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    stratified: bool = True,
    ordinal: bool = False,
    include_curves: bool = False,
    clusters: Any = None,
    proportion_method: str = WILSON,
) -> dict[str, Any]:
    """Per-class and macro clinical metrics with ``1 - alpha`` intervals, as a JSON-ready dict.

    ``y_true``: multi-hot (N, K) for a multi-label (sigmoid) head or class
    indices (N,) for a single-label (softmax) head. ``scores``: (N, K)
    probabilities. ``thresholds``: the per-class operating points (or one for
    all); class ``k`` is called positive when ``scores[:, k] >= thresholds[k]``.

    Per class (one-vs-rest): AUC, sensitivity, specificity, PPV, NPV, F1 at the
    threshold. Macro: mean AUC, sensitivity and specificity over classes where
    defined; multi-label macro-F1 and balanced accuracy are means of the
    per-class values at the thresholds; single-label macro-F1, balanced
    accuracy, top-1 accuracy and the confusion matrix use ``argmax`` and
    ``ordinal=True`` adds the quadratic weighted kappa of grades 0..K-1.

    Intervals (the method of each is in its ``method`` key):

    * sensitivity, specificity, PPV, NPV and single-label accuracy are simple
      proportions of independent cases and get the ``proportion_method``
      interval (:func:`proportion_interval`: Wilson score by default), which
      does not collapse to zero width at 0 % or 100 % as the bootstrap does;
      ``proportion_method="percentile bootstrap"`` restores the bootstrap;
    * everything else gets a percentile bootstrap (``n_boot`` resamples from
      ``seed``). Each class's figures come from a bootstrap of their own,
      resampled within that class's own 0/1 label when ``stratified``. (A
      single bootstrap stratified by the joint multi-label pattern would
      freeze every case whose pattern is unique, and its intervals came out
      about half as wide as they should.) The macro figures share one
      bootstrap: stratified by class for class indices; for multi-label
      data no single stratification keeps every class's count, so it
      resamples cases freely and drops the resamples that lose a class the
      data has (counted in ``n_valid``, noted). Stratifying keeps the share
      of positives fixed, which is right for AUC, sensitivity and
      specificity but narrows the intervals of figures that move with it:
      F1, PPV and NPV per class, and top-1 accuracy, macro-F1 and the
      quadratic kappa, get resamples of their own without stratification.

    ``clusters`` ((N,) ids, e.g. the patient of each image): every bootstrap
    resamples whole clusters (see :func:`bootstrap_weights`), and since the
    closed-form proportion intervals assume independent cases, the
    proportions are then bootstrapped too (when some cluster holds more than
    one case). A cluster-bootstrapped proportion at 0 or 100 % would again
    have zero width; it gets the Wilson interval on the effective sample size
    instead, each cluster counted once (:data:`WILSON_EFFECTIVE_N`, noted).
    Undefined values are ``None`` in the dict, with the reason under
    ``notes``.
    """
    s = _scores_2d(scores)
    k = s.shape[1]
    y, task, idx = _label_matrix(y_true, k)
    _check_rows(y, s)
    names = _class_names(class_names, k)
    thr = _thresholds(thresholds, k)
    if ordinal and task != "multiclass":
        raise ConfigError("ordinal=True (quadratic kappa) needs class indices (N,) for y_true, not multi-hot labels")
    if proportion_method not in _PROPORTION_METHODS:
        raise ConfigError(f"proportion_method must be one of {_PROPORTION_METHODS}; got {proportion_method!r}")
    n = s.shape[0]
    cluster_of = _cluster_codes(clusters, n) if clusters is not None else None
    n_units = n if cluster_of is None else int(cluster_of.max()) + 1
    clustered = cluster_of is not None and n_units < n
    closed_form = proportion_method != BOOTSTRAP and not clustered
    indicators = _binary_indicators(y, s >= thr[None, :])  # (N, K, 4): tp, fp, tn, fn
    flat = indicators.reshape(n, 4 * k)
    counts = indicators.sum(axis=0).astype(np.int64)  # (K, 4)
    aucs = [_WeightedAuc(y[:, j], s[:, j]) for j in range(k)]
    conf = _WeightedConfusion(idx, np.argmax(s, axis=1), k) if idx is not None else None
    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "clusters": clusters}

    per_class: list[dict[str, Interval]] = []
    zero_width: dict[str, list[str]] = {name: [] for name in names}
    for j in range(k):

        def class_statistic(w: np.ndarray, ind: np.ndarray = indicators[:, j, :],
                            auc: _WeightedAuc = aucs[j]) -> dict[str, np.ndarray]:
            c = w @ ind
            r = _rates(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
            out = {"auc": auc(w), "f1": r["f1"]}
            if not closed_form:
                out.update({m: r[m] for m in _PROPORTIONS})
            return out

        ci = bootstrap_many(class_statistic, n, strata=y[:, j] if stratified else None, **boot)
        if stratified:
            # Resampling within the class's label keeps its prevalence fixed, which F1, PPV and NPV depend on:
            # their intervals came out too narrow (95 % intervals covering 60-62 % at a screening prevalence
            # of 5 %: benchmarks/interval_coverage.py). They get resamples of their own that let the mix vary.
            def mix_statistic(w: np.ndarray, ind: np.ndarray = indicators[:, j, :]) -> dict[str, np.ndarray]:
                c = w @ ind  # the counts alone: the AUC, which needs no second pass, is not computed again
                r = _rates(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
                return {m: r[m] for m in _PREVALENCE_DEPENDENT if m == "f1" or not closed_form}

            ci.update(bootstrap_many(mix_statistic, n, strata=None, **boot))
        single = single_unit_side(y[:, j] > 0, cluster_of)
        if single and math.isfinite(ci["auc"].estimate) and ci["auc"].n_boot:
            # Every stratified resample keeps that one patient (or image): the interval would show only the
            # other side's spread and look far surer than one case allows. Undefined, and said so.
            a = ci["auc"]
            ci["auc"] = Interval(a.estimate, math.nan, math.nan, a.n_boot, a.n_valid, a.alpha, a.method)
            zero_width[names[j]].append(f"auc: interval undefined: {single}")
        if clustered and cluster_of is not None and ci["sensitivity"].n_boot:
            # A side held by one patient: the rate over its images is bootstrapped as that patient alone, every
            # resample the same, so its interval says nothing of other patients (logged by the bootstrap too,
            # where a report's reader never sees it).
            is_pos = y[:, j] > 0
            for m, side in (("sensitivity", is_pos), ("specificity", ~is_pos)):
                if side.any() and len(np.unique(cluster_of[side])) < 2:
                    zero_width[names[j]].append(
                        f"{m}: its {int(side.sum())} {'positive' if m == 'sensitivity' else 'negative'} images come "
                        "from one patient; the interval cannot show how the figure varies between patients")
        if clustered and cluster_of is not None and proportion_method != BOOTSTRAP:
            pos, called = y[:, j], s[:, j] >= thr[j]
            for m, cases in zip(_PROPORTIONS, (pos, ~pos, called, ~called)):
                fixed = _clustered_zero_width(ci[m], cases, cluster_of)
                if fixed is not None:
                    ci[m] = fixed[0]
                    zero_width[names[j]].append(f"{m}: {fixed[1]}")
        if closed_form:
            tp, fp, tn, fn = (int(c) for c in counts[j])
            for m, (x, total) in zip(_PROPORTIONS, ((tp, tp + fn), (tn, tn + fp), (tp, tp + fp), (tn, tn + fn))):
                ci[m] = proportion_interval(x, total, alpha=alpha, method=proportion_method)
        per_class.append(ci)

    n_pos, n_neg = counts[:, 0] + counts[:, 3], counts[:, 2] + counts[:, 1]
    point_auc = np.array([a(_ones(n))[0] for a in aucs])
    point_f1 = _rates(*(counts[:, i].astype(np.float64) for i in range(4)))["f1"]
    # Every one-vs-rest macro figure averages the same classes, those with positives and negatives here (what
    # the reports call the evaluated classes): a class without positives would pull macro F1 to 0 and add a
    # specificity the macro AUC does not share.
    evaluable = (n_pos > 0) & (n_neg > 0)
    defined = {
        "auc": np.isfinite(point_auc) & evaluable,
        "sensitivity": evaluable,
        "specificity": evaluable,
        "f1": np.isfinite(point_f1) & evaluable,
        "balanced_accuracy": evaluable,
    }

    def macro_statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        c4 = (w @ flat).reshape(w.shape[0], k, 4)
        rates = _rates(*(c4[..., i] for i in range(4)))
        out = {
            "auc": _mean_over(np.stack([a(w) for a in aucs], axis=1), defined["auc"]),
            "sensitivity": _mean_over(rates["sensitivity"], defined["sensitivity"]),
            "specificity": _mean_over(rates["specificity"], defined["specificity"]),
        }
        if conf is None:
            out["f1"] = _mean_over(rates["f1"], defined["f1"])
            out["balanced_accuracy"] = _mean_over(
                (rates["sensitivity"] + rates["specificity"]) / 2, defined["balanced_accuracy"]
            )
        else:
            c = conf(w)
            out["f1"] = _macro_f1_from_confusion(c)
            out["balanced_accuracy"] = _balanced_accuracy_from_confusion(c)
            out["accuracy"] = _accuracy_from_confusion(c)
            if ordinal:
                out["quadratic_kappa"] = _quadratic_kappa_from_confusion(c)
        return out

    macro_strata = idx if (stratified and conf is not None) else None
    macro = bootstrap_many(macro_statistic, n, strata=macro_strata, **boot)
    if macro_strata is not None and conf is not None:  # stratified by class: class indices, a confusion
        # Resampling within each true class freezes the class mix, which top-1 accuracy, macro-F1 and the
        # quadratic kappa depend on (the accuracy's interval came out narrower with patients known than the
        # Wilson interval without them; the kappa's covered 86 %: benchmarks/interval_coverage.py): these get
        # resamples of their own, unstratified (whole patients when they are known).
        mixed = conf

        def macro_mix_statistic(w: np.ndarray) -> dict[str, np.ndarray]:
            c = mixed(w)
            out = {"f1": _macro_f1_from_confusion(c), "accuracy": _accuracy_from_confusion(c)}
            if ordinal:
                out["quadratic_kappa"] = _quadratic_kappa_from_confusion(c)
            return out

        macro.update(bootstrap_many(macro_mix_statistic, n, strata=None, **boot))
    macro_notes: list[str] = []
    if conf is not None and closed_form:
        correct = int(np.trace(conf(_ones(n))[0]))
        macro["accuracy"] = proportion_interval(correct, n, alpha=alpha, method=proportion_method)
    elif conf is not None and clustered and cluster_of is not None and proportion_method != BOOTSTRAP:
        fixed = _clustered_zero_width(macro["accuracy"], np.ones(n, bool), cluster_of)
        if fixed is not None:
            macro["accuracy"] = fixed[0]
            macro_notes.append(f"macro.accuracy: {fixed[1]}")

    reports = [_class_report(names[j], thr[j], counts[j], per_class[j], zero_width[names[j]]) for j in range(k)]
    notes = [f"{r.name}: {note}" for r in reports for note in r.notes]
    notes += _bootstrap_notes("macro", macro) + macro_notes

    if stratified:
        strata_text = ("class" if task == "multiclass" else "per class: the class's own label; macro: none") \
            + "; F1, PPV, NPV, accuracy and kappa: none (they move with the class mix)"
    else:
        strata_text = None
    report: dict[str, Any] = {
        "task": task,
        "n_samples": n,
        "n_classes": k,
        "class_names": list(names),
        "decision_rule": "class k positive when score_k >= threshold_k"
        + ("; confusion matrix, macro-F1, balanced accuracy and accuracy use argmax" if conf else ""),
        "bootstrap": {
            "method": "percentile",
            "n_boot": int(n_boot),
            "seed": int(seed),
            "alpha": alpha,
            "stratified": bool(stratified),
            "strata": strata_text,
            "unit": "case" if cluster_of is None else "cluster",
            "n_units": n_units,
            **({"mixed_clusters": MIXED_CLUSTERS} if stratified and cluster_of is not None else {}),
        },
        "proportion_intervals": proportion_method if closed_form else BOOTSTRAP,
        "classes": [r.to_dict() for r in reports],
        "macro": {m: v.to_dict() for m, v in macro.items()},
        "confusion_matrix": None,
        "notes": notes,
    }
    if clustered and proportion_method != BOOTSTRAP:
        notes.append(
            f"sensitivity, specificity, ppv, npv{', accuracy' if conf else ''}: cluster bootstrap instead of "
            f"the {proportion_method} interval, which assumes independent cases ({n} cases in {n_units} clusters)"
        )
    if conf is not None:
        report["confusion_matrix"] = {
            "rows": "true class",
            "columns": "predicted class (argmax)",
            "labels": list(names),
            "matrix": conf(_ones(n))[0].astype(np.int64).tolist(),
        }
    if include_curves:
        curves = [roc_curve(y[:, j], s[:, j]) for j in range(k)]
        report["roc"] = {
            names[j]: {
                "fpr": [_json_float(v) for v in c.fpr],
                "tpr": [_json_float(v) for v in c.tpr],
                "thresholds": [_json_float(v) for v in c.thresholds],
            }
            for j, c in enumerate(curves)
        }
        # JSON has no infinity: the first point of every curve (no case called positive) is the +inf threshold.
        report["roc_thresholds_note"] = "the first threshold of each curve is +inf (no case called positive): null"
    return report


def _class_report(name: str, threshold: float, counts: np.ndarray, ci: Mapping[str, Interval],
                  extra_notes: Sequence[str] = ()) -> ClassReport:
    tp, fp, tn, fn = (int(c) for c in counts)
    n_pos, n_neg = tp + fn, tn + fp
    notes: list[str] = []
    if not (n_pos and n_neg):
        notes.append(f"auc undefined: {_one_class_reason(n_pos, n_neg)}")
    if not n_pos:
        notes.append("sensitivity undefined: no positive cases")
    if not n_neg:
        notes.append("specificity undefined: no negative cases")
    if not tp + fp:
        notes.append(f"ppv undefined: no case reaches the threshold {threshold:g}")
    if not tn + fn:
        notes.append(f"npv undefined: every case reaches the threshold {threshold:g}")
    if not 2 * tp + fp + fn:
        notes.append("f1 undefined: no true and no predicted positives")
    metrics = {m: ci[m] for m in _CLASS_METRICS}
    notes += _bootstrap_notes("", metrics)
    notes += list(extra_notes)
    return ClassReport(
        name=name, n_positive=n_pos, n_negative=n_neg, threshold=float(threshold), tp=tp, fp=fp, tn=tn, fn=fn,
        notes=tuple(notes), **metrics,
    )


def _bootstrap_notes(prefix: str, metrics: Mapping[str, Interval]) -> list[str]:
    out = []
    for m, iv in metrics.items():
        if iv.method != BOOTSTRAP or not iv.n_boot or not math.isfinite(iv.estimate):
            continue
        label = f"{prefix}.{m}" if prefix else m
        if iv.n_valid < iv.n_boot:
            out.append(
                f"{label}: {iv.n_boot - iv.n_valid} of {iv.n_boot} bootstrap resamples left it undefined "
                "and were dropped from its interval"
            )
        if iv.n_valid and iv.low == iv.high:
            out.append(
                f"{label}: every bootstrap resample gave {iv.low:g}, so its interval has zero width; that "
                "understates the uncertainty (few cases, or perfect separation)"
            )
    return out
