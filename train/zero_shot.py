"""Zero-shot readings: how classes known only by their description are scored, with and without sites.

A class bank may hold classes no image taught (``uopsl zero-shot``). Each is
scored two ways, each with and without site attention (the latter is the plain
prototype-similarity, "CLIP" reading):

* ``raw``: ``cos(fused_k, e_k)``, what the model's logits rank by;
* ``vs_healthy``: ``cos(fused_k, e_k) - cos(fused_k, e_healthy)``: the class's
  description against the healthy class's on the same pooled feature (a
  negative prompt, as CheXzero does for chest X-rays). It needs a healthy
  class (``normal`` or an alias) in the bank.

and each against two sets of negatives: every image without the class, and
healthy eyes only (images labelled with the healthy class alone). The two
questions differ: on the synthetic benchmark a new disease is told from a
healthy retina far better than from other diseases at the same sites
(``docs/results.md``, section 3, session 8). Every comparison of site
attention against the plain reading comes with a paired bootstrap interval and
DeLong's p-value, since the differences are small. When the images' patients
are known, the bootstrap resamples whole patients (two eyes of one patient are
not independent); DeLong's p treats images as independent and says so. A
comparison with fewer than :data:`SMALL_SAMPLE` positives or negatives is
flagged (``small_sample``), and a p-value DeLong cannot give (zero variance
estimate) is ``None`` with the reason, never 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.metrics import delong_test, paired_auc_difference, roc_auc, single_unit_side
from uopsl.train.model import UopslModel

log = logging.getLogger(__name__)

READINGS = ("raw", "vs_healthy")
NEGATIVES = ("all", "healthy")
ARMS = ("site_attention", "no_site_attention")
#: Below this many positives or negatives a comparison's interval and p-value are flagged as unreliable.
SMALL_SAMPLE = 10


@torch.no_grad()
def reading_scores(model: UopslModel, ds: Any, batch_size: int = 32,
                   device: torch.device | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{arm: {reading: (N, K) scores}}`` for both arms of :data:`ARMS` (with and without site attention).

    Readings: ``raw``, and ``vs_healthy`` when the bank has a healthy class.
    Cosines, not probabilities: a float32 sigmoid saturates at 1.0 for the
    large logits an untrained (no-site) reading can give, and the ties it
    makes move an AUC. ``ds`` as :func:`uopsl.train.loops.predict` takes it:
    images, or cached backbone features (anything with a ``features``
    tensor); the encoder runs once per image for both arms.
    """
    device = device or next(model.parameters()).device
    feats = getattr(ds, "features", None)
    model.eval()
    ref = model.reference_class()
    e = model.prototypes()
    parts: dict[str, dict[str, list[np.ndarray]]] = {arm: {"raw": [], "vs_healthy": []} for arm in ARMS}
    for i in range(0, len(ds), batch_size):
        if feats is not None:
            f = feats[i : i + batch_size].float().to(device)
        else:
            x = torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))]).to(device)
            f = model.fundus.encoder(x)
        tokens, glob, (h, w) = model.fundus.from_features(f)
        inside = model.inside_tokens(h, w, tokens.device)
        for arm in ARMS:
            fused, _, _ = model.fused_features(tokens, glob, arm == "site_attention", inside)
            fn = F.normalize(fused, dim=-1)
            cos = (fn * e.unsqueeze(0)).sum(-1)
            parts[arm]["raw"].append(cos.float().cpu().numpy())
            if ref is not None:
                parts[arm]["vs_healthy"].append((cos - (fn * e[ref]).sum(-1)).float().cpu().numpy())
    return {arm: {r: np.concatenate(v) for r, v in by.items() if v} for arm, by in parts.items()}


@dataclass(frozen=True)
class SiteComparison:
    """One class, reading and set of negatives: AUC with and without site attention, and their difference.

    ``p_value`` is None where DeLong's test gives none (one class only, fewer
    than two cases of a class, or a zero variance estimate); ``notes`` says
    why, and flags small samples and zero-width intervals.
    """

    with_sites: float | None
    without: float | None
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n_positive: int
    n_negative: int
    notes: tuple[str, ...] = ()
    bootstrap_unit: str = "image"

    @property
    def small_sample(self) -> bool:
        """Fewer than :data:`SMALL_SAMPLE` positives or negatives: interval and p-value are unreliable."""
        return min(self.n_positive, self.n_negative) < SMALL_SAMPLE

    def to_dict(self) -> dict[str, Any]:
        return {"with_sites": self.with_sites, "without": self.without, "difference": self.difference,
                "difference_ci95": [self.low, self.high], "delong_p": self.p_value,
                "n_positive": self.n_positive, "n_negative": self.n_negative,
                "small_sample": self.small_sample, "bootstrap_unit": self.bootstrap_unit, "notes": list(self.notes)}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def compare(y: np.ndarray, with_sites: np.ndarray, without: np.ndarray, n_boot: int = 1000,
            seed: int = 0, *, clusters: Any = None) -> SiteComparison:
    """AUCs of two score vectors on the same binary labels; the difference with a paired bootstrap interval.

    Undefined (None) where the labels hold only one class. ``clusters``: one
    id per image (its patient; an image of unknown patient needs an id of its
    own): the bootstrap then resamples whole patients, positive patients (any
    positive image) and negative ones separately.
    """
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    unit = "image"
    n_clusters = len(y)
    if clusters is not None:
        n_clusters = len(set(np.asarray(clusters).tolist()))
        unit = "patient" if n_clusters < len(y) else "image"
    if pos == 0 or neg == 0:
        return SiteComparison(None, None, None, None, None, None, pos, neg, bootstrap_unit=unit)
    diff = paired_auc_difference(y, without, with_sites, n_boot=n_boot, seed=seed,
                                 clusters=clusters if unit == "patient" else None)
    dl = delong_test(y, without, with_sites)
    notes = []
    if min(pos, neg) < SMALL_SAMPLE:
        notes.append(f"small sample ({pos} positives, {neg} negatives; fewer than {SMALL_SAMPLE} of a class): "
                     "the interval and p-value are unreliable")
    if dl.note:
        notes.append(f"DeLong p n/a: {dl.note}")
    if unit == "patient":
        notes.append(f"DeLong's p treats the {len(y)} images as independent; they come from {n_clusters} patients, "
                     "so it is too small (the bootstrap interval resamples patients)")
    p_value = _finite(dl.p_value)
    if not dl.note and dl.se == 0:  # DeLong's variance estimate is 0 (both readings rank every pair alike)
        p_value = None
        notes.append("DeLong p n/a: its variance estimate is 0 (both readings order every positive-negative pair "
                     "the same way, e.g. both AUCs at 1)")
    if diff.n_valid and diff.low == diff.high:
        notes.append(f"every bootstrap resample gave the same difference {diff.low:+.4g}: the zero-width interval "
                     "understates the uncertainty")
    low, high = _finite(diff.low), _finite(diff.high)
    single = single_unit_side(y, np.asarray(clusters) if unit == "patient" else None)
    if single:  # every resample keeps that one case: the interval would show the other side's spread only
        low = high = None
        notes.append(f"interval undefined: {single}")
    return SiteComparison(_finite(roc_auc(y, with_sites)), _finite(roc_auc(y, without)), _finite(diff.estimate),
                          low, high, p_value, pos, neg, tuple(notes), unit)


def healthy_only(targets: np.ndarray, reference: int | None) -> np.ndarray | None:
    """(N,) bool: images whose only label is the healthy class; None without a healthy class.

    "Only" among the columns of ``targets`` (the bank's classes): labels the
    bank does not hold were dropped when the items were read.
    """
    if reference is None:
        return None
    t = np.asarray(targets) > 0
    return t[:, reference] & (t.sum(axis=1) == 1)


def site_comparisons(targets: np.ndarray, names: tuple[str, ...] | list[str], reference: int | None,
                     with_sites: dict[str, np.ndarray], without: dict[str, np.ndarray], n_boot: int = 1000,
                     seed: int = 0, *, clusters: Any = None) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{reading: {negatives: {class: SiteComparison.to_dict()}}}`` over :data:`READINGS` x :data:`NEGATIVES`.

    The healthy class itself has no ``vs_healthy`` reading (it would score 0)
    and no ``healthy`` negatives; those entries are left out. ``clusters``:
    one patient id per image (see :func:`compare`). Comparisons flagged as
    small samples, and p-values DeLong could not give, are logged as warnings.
    """
    t = np.asarray(targets) > 0
    ids = None if clusters is None else np.asarray(clusters)
    if ids is not None and ids.shape != (len(t),):
        raise ConfigError(f"clusters must hold one id per image ({len(t)}); got shape {ids.shape}")
    small: list[str] = []
    healthy = healthy_only(t, reference)
    # Which images may serve as negatives: all of them, or the healthy-only ones (plus the class's positives).
    negative_sets: dict[str, np.ndarray | None] = {"all": None}
    if healthy is not None:
        negative_sets["healthy"] = healthy
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for reading in READINGS:
        if reading not in with_sites:
            continue
        out[reading] = {}
        for negatives, allowed in negative_sets.items():
            block: dict[str, dict[str, Any]] = {}
            for k, name in enumerate(names):
                if k == reference and (reading == "vs_healthy" or allowed is not None):
                    continue
                rows = np.ones(len(t), bool) if allowed is None else (allowed | t[:, k])
                c = compare(t[rows, k], with_sites[reading][rows, k], without[reading][rows, k],
                            n_boot=n_boot, seed=seed, clusters=None if ids is None else ids[rows])
                where = f"{name} ({reading} reading, {negatives} negatives)"
                if c.with_sites is not None and c.small_sample:
                    small.append(f"{where}: {c.n_positive}+/{c.n_negative}-")
                for note in c.notes:
                    if note.startswith("DeLong p n/a"):
                        log.warning("%s: %s", where, note)
                block[name] = c.to_dict()
            out[reading][negatives] = block
    if small:
        log.warning("comparisons with fewer than %d positives or negatives (interval and DeLong p unreliable): %s",
                    SMALL_SAMPLE, "; ".join(small))
    return out
