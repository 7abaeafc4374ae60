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
DeLong's p-value, since the differences are small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from uopsl.runtime.metrics import delong_test, paired_auc_difference, roc_auc
from uopsl.train.model import UopslModel

READINGS = ("raw", "vs_healthy")
NEGATIVES = ("all", "healthy")
ARMS = ("site_attention", "no_site_attention")


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
    """One class, reading and set of negatives: AUC with and without site attention, and their difference."""

    with_sites: float | None
    without: float | None
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, Any]:
        return {"with_sites": self.with_sites, "without": self.without, "difference": self.difference,
                "difference_ci95": [self.low, self.high], "delong_p": self.p_value,
                "n_positive": self.n_positive, "n_negative": self.n_negative}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def compare(y: np.ndarray, with_sites: np.ndarray, without: np.ndarray, n_boot: int = 1000,
            seed: int = 0) -> SiteComparison:
    """AUCs of two score vectors on the same binary labels; the difference with a paired bootstrap interval.

    Undefined (None) where the labels hold only one class.
    """
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return SiteComparison(None, None, None, None, None, None, pos, neg)
    diff = paired_auc_difference(y, without, with_sites, n_boot=n_boot, seed=seed)
    p = delong_test(y, without, with_sites).p_value
    return SiteComparison(_finite(roc_auc(y, with_sites)), _finite(roc_auc(y, without)), _finite(diff.estimate),
                          _finite(diff.low), _finite(diff.high), _finite(p), pos, neg)


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
                     seed: int = 0) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{reading: {negatives: {class: SiteComparison.to_dict()}}}`` over :data:`READINGS` x :data:`NEGATIVES`.

    The healthy class itself has no ``vs_healthy`` reading (it would score 0)
    and no ``healthy`` negatives; those entries are left out.
    """
    t = np.asarray(targets) > 0
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
                block[name] = compare(t[rows, k], with_sites[reading][rows, k], without[reading][rows, k],
                                      n_boot=n_boot, seed=seed).to_dict()
            out[reading][negatives] = block
    return out
