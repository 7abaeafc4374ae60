"""Evaluation of a trained model: operating thresholds, clinical metrics, ROC plots, site-map checks.

Thresholds are chosen on validation data only: for referable classes the
highest threshold that reaches the target sensitivity (e.g. 0.90), for the
others the threshold maximising Youden's J. They are stored in the checkpoint
and from there in the bundle manifest, so the device decides exactly as
evaluated. Metrics come from :mod:`uopsl.runtime.metrics` (the same code the
parity validation uses).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.runtime import metrics, plots
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_json
from uopsl.runtime.preprocess import Geometry

log = logging.getLogger(__name__)


def choose_thresholds(y_val: np.ndarray, p_val: np.ndarray, referable: Sequence[bool], target_sensitivity: float = 0.9) -> list[float]:
    """Per-class operating thresholds from validation probabilities (0.5 where a class has no positives)."""
    out = []
    for k in range(p_val.shape[1]):
        y, p = y_val[:, k] > 0.5, p_val[:, k].astype(np.float32)
        if y.sum() == 0 or (~y).sum() == 0:
            out.append(0.5)
            continue
        if referable[k]:
            t = metrics.threshold_for_sensitivity(y, p, target_sensitivity).threshold
        else:
            c = metrics.roc_curve(y, p)
            j = np.nanargmax(c.tpr - c.fpr)
            t = float(c.thresholds[j])
        out.append(float(t) if np.isfinite(t) else 0.5)
    return out


def evaluate(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float], names: Sequence[str], out: Path | None,
             n_boot: int = 1000, seed: int = 0, title: str = "") -> dict[str, Any]:
    """Clinical metrics (with bootstrap CIs) of ``probs`` against multi-hot ``targets``; writes eval.json + roc.png."""
    keep = [k for k in range(targets.shape[1]) if 0 < targets[:, k].sum() < len(targets)]
    report = metrics.classification_report(targets, probs, list(thresholds), list(names), n_boot=n_boot, seed=seed,
                                           include_curves=out is not None)
    report["evaluated_classes"] = [names[k] for k in keep]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "eval.json", report)
        curves = {names[k]: metrics.roc_curve(targets[:, k], probs[:, k]) for k in keep}
        plots.roc_plot(curves, out / "roc.png", title=title or "ROC")
    return report


def mask_to_grid(mask: np.ndarray, geometry: Geometry, h: int, w: int) -> np.ndarray:
    """Fraction of each (h, w) token cell covered by ``mask`` (original-image coordinates).

    The mask goes through the same crop as the image (``geometry``), then is
    area-averaged onto the token grid.
    """
    m = (mask > 0).astype(np.float32)
    crop = np.zeros((geometry.side, geometry.side), np.float32)
    sx0, sy0, dx0, dy0 = max(0, geometry.x0), max(0, geometry.y0), max(0, -geometry.x0), max(0, -geometry.y0)
    cw = min(geometry.orig_w - sx0, geometry.side - dx0)
    ch = min(geometry.orig_h - sy0, geometry.side - dy0)
    if cw > 0 and ch > 0:
        crop[dy0 : dy0 + ch, dx0 : dx0 + cw] = m[sy0 : sy0 + ch, sx0 : sx0 + cw]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def site_concentration(att: np.ndarray, cover: np.ndarray) -> float:
    """Attention mass inside the true site mask divided by the mask's area fraction (1 = chance)."""
    a = att / max(float(att.sum()), 1e-12)
    frac = float(cover.mean())
    if frac <= 0:
        return float("nan")
    return float((a * cover).sum() / frac)


def site_concentration_report(maps: np.ndarray, targets: np.ndarray, names: Sequence[str],
                              masks: Sequence[str | Path | None], geometries: Sequence[Geometry | None]) -> dict[str, Any]:
    """Where the predilection maps point, measured against true site masks (synthetic data carries them).

    maps (N, K, h, w) site maps on the model's token grid; masks[i] a site-mask
    ``.npz`` (class name -> mask in the original image's pixels, see
    :func:`uopsl.train.synthetic.load_masks`) or None; geometries[i] the crop
    that took image i to the model input. Per class: the mean of
    :func:`site_concentration` over the images that have the class and its
    mask (1 = chance), and how many images that is. Classes never masked
    (e.g. ``normal``) are left out.
    """
    from uopsl.train.synthetic import load_masks

    if not len(maps) == len(targets) == len(masks) == len(geometries):
        raise ConfigError(f"site_concentration_report needs one map, target, mask and geometry per image, got "
                          f"{len(maps)}, {len(targets)}, {len(masks)} and {len(geometries)}")
    ratios: dict[str, list[float]] = {}
    h, w = maps.shape[2:]
    for i, (mfile, geom) in enumerate(zip(masks, geometries)):
        if not mfile or geom is None:
            continue
        per_class = load_masks(mfile)
        for k, name in enumerate(names):
            if name in per_class and targets[i, k] > 0:
                r = site_concentration(maps[i, k], mask_to_grid(per_class[name], geom, h, w))
                if np.isfinite(r):
                    ratios.setdefault(name, []).append(r)
    return {n: {"mean": float(np.mean(ratios[n])), "n_images": len(ratios[n])} for n in names if n in ratios}
