"""Synthetic retinas: fundus photographs and OCT B-scans with lesions at known predilection sites.

The embedded default dataset of the toolkit: the demo, the tests and the
training experiments run on it without any download. Each class draws its
lesions where the disease puts them (its *predilection site*), and the
generator can return the true site of every class as a mask with the image's
geometry, so a test can check that a model's learned site-attention maps land
on them.

Classes (:data:`DISEASE_CLASSES`; ``normal`` means "no disease label"):

============== ================================================ ===============================================
class          fundus photograph                                OCT B-scan (horizontal, through the fovea)
============== ================================================ ===============================================
dr             microaneurysms + dot/blot haemorrhages in the    hyperreflective foci in the inner retina
               posterior pole (inside the vascular arcades)
dme            hard exudates (circinate ring / clusters) and    intraretinal cysts + retinal thickening at
               a thickening haze at the macula                  the fovea (foveal pit flattened)
amd            drusen at the macula                             drusen: dome-shaped elevations of the RPE
glaucoma       enlarged cup-to-disc ratio, nerve-fibre-layer    thinned nerve-fibre (and ganglion-cell) layer
               wedge defect at the disc
rp (unseen)    bone-spicule pigment in the mid-periphery,       loss of the outer layers (ONL, ellipsoid zone)
               attenuated vessels, waxy pale disc               outside a central island
macular_hole   round dark-red defect at the fovea with a        full-thickness foveal defect with cystic
(unseen)       grey cuff                                        edges
============== ================================================ ===============================================

The unseen classes are reserved for zero-shot tests: :class:`SynthConfig`
leaves them out unless asked. Severity varies per image (subtle cases exist),
and everything a model could use as a shortcut (exposure, colour balance,
vignetting, field-of-view size and position, camera dust, optic-disc
crescents) is drawn independently of the labels.

Determinism: every image gets its own random stream derived from
``(seed, modality, index)``, so a dataset is byte-identical for a seed whatever
the number of workers, and a resumed run regenerates exactly the missing files.

Only numpy and OpenCV are used; importing this module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.runtime.configs import config_from_dict
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import atomic_open, write_bytes, write_json
from uopsl.runtime.parallelism import check_parallelism
from uopsl.runtime import progress as progress_bars

log = logging.getLogger(__name__)

NORMAL = "normal"
SEEN_CLASSES: tuple[str, ...] = ("dr", "dme", "amd", "glaucoma")
UNSEEN_CLASSES: tuple[str, ...] = ("rp", "macular_hole")
DISEASE_CLASSES: tuple[str, ...] = SEEN_CLASSES + UNSEEN_CLASSES
ALL_CLASSES: tuple[str, ...] = (NORMAL,) + DISEASE_CLASSES
MODALITIES: tuple[str, ...] = ("fundus", "oct")
EYES: tuple[str, ...] = ("right", "left")

# Where each class's lesions are, in words (documentation and reports).
PREDILECTION_SITES: dict[str, str] = {
    "dr": "posterior pole inside the vascular arcades",
    "dme": "macula (fovea and parafovea)",
    "amd": "macula, under the retinal pigment epithelium",
    "glaucoma": "optic disc and the peripapillary nerve-fibre layer",
    "rp": "mid-periphery (fundus); outer retina outside the central island (OCT)",
    "macular_hole": "fovea",
}

# Bumped whenever a change alters the pixels, the masks or the table: a folder made by another version is not
# resumed. 2: the 18:01-18:29 changes of session 1 (brighter disc, severity-scaled lesions, distractors,
# illumination). 3 (session 14): the glaucoma mask reaches as far as the wedge's darkening (0.34 R, not 0.30 R:
# 22 % of it lay outside), patient ids carry the seed (two folders' F00000 are not one patient); same pixels.
GENERATOR_VERSION = 3
CSV_COLUMNS: tuple[str, ...] = ("path", "patient", "eye", "modality", "labels", "masks")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`make_dataset` draws. Saved as ``synth_config.json`` next to the data.

    size: side of the square fundus photographs in pixels.
    classes: disease classes that may be drawn (``normal`` is implicit). The
        unseen classes (:data:`UNSEEN_CLASSES`) are only drawn when listed here.
    p_normal: probability that an image carries no disease label.
    class_weights: relative frequency of each class in ``classes`` as the
        primary label (``None``: uniform).
    p_extra: probability that a diseased image gets one more, random class.
    co_occurrence: ``(a, b, p)``: an image with ``a`` also gets ``b`` with
        probability ``p`` (e.g. DME mostly comes with DR). Ignored where ``b``
        is not in ``classes``.
    severity: range of the per-class lesion strength (0 = invisible, 1 =
        florid); drawn uniformly per image and class, so subtle cases exist.
    seed: the dataset seed; same seed and settings give identical bytes.
    fundus_format: ``jpg`` (like real cameras) or ``png`` (lossless).
    jpeg_quality: JPEG quality of the fundus photographs.
    oct_width, oct_height: B-scan size; ``None`` derives it from ``size``
        (width = size, height = 7/16 of it, about the aspect of a 6 mm scan).
    """

    size: int = 512
    classes: tuple[str, ...] = SEEN_CLASSES
    p_normal: float = 0.3
    class_weights: tuple[float, ...] | None = None
    p_extra: float = 0.15
    co_occurrence: tuple[tuple[str, str, float], ...] = (("dr", "dme", 0.3), ("dme", "dr", 0.5))
    severity: tuple[float, float] = (0.15, 1.0)
    seed: int = 0
    fundus_format: str = "jpg"
    jpeg_quality: int = 92
    oct_width: int | None = None
    oct_height: int | None = None

    def __post_init__(self) -> None:
        # Sequences from JSON or the CLI arrive as lists; store tuples so the config stays hashable.
        for name in ("classes", "class_weights", "severity"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.co_occurrence, list):
            object.__setattr__(self, "co_occurrence", tuple(tuple(t) for t in self.co_occurrence))
        if not 64 <= self.size <= 4096:
            raise ConfigError(f"synthetic image size must be in 64..4096 pixels, got {self.size}")
        if not self.classes:
            raise ConfigError(f"classes must name at least one of {list(DISEASE_CLASSES)}, got none")
        unknown = [c for c in self.classes if c not in DISEASE_CLASSES]
        if unknown:
            raise ConfigError(
                f"unknown synthetic classes {unknown}; expected a subset of {list(DISEASE_CLASSES)} "
                f"('{NORMAL}' is implicit: it is drawn with probability p_normal)"
            )
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes lists a class twice: {list(self.classes)}")
        for name in ("p_normal", "p_extra"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
        if self.class_weights is not None:
            w = self.class_weights
            if len(w) != len(self.classes) or any(not (x >= 0) for x in w) or sum(w) <= 0:
                raise ConfigError(
                    f"class_weights must be {len(self.classes)} non-negative numbers (one per class "
                    f"{list(self.classes)}) with a positive sum, got {list(w)}"
                )
        for item in self.co_occurrence:
            if len(item) != 3 or item[0] not in DISEASE_CLASSES or item[1] not in DISEASE_CLASSES \
                    or not 0.0 <= float(item[2]) <= 1.0:
                raise ConfigError(
                    f"co_occurrence entries must be (class, class, probability) with classes from "
                    f"{list(DISEASE_CLASSES)}, got {item!r}"
                )
        lo, hi = self.severity
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"severity must be a range (lo, hi) with 0 < lo <= hi <= 1, got {self.severity}")
        if self.fundus_format not in ("jpg", "png"):
            raise ConfigError(f"fundus_format must be 'jpg' or 'png', got {self.fundus_format!r}")
        if not 50 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 50..100, got {self.jpeg_quality}")
        for name in ("oct_width", "oct_height"):
            v = getattr(self, name)
            if v is not None and not 32 <= v <= 4096:
                raise ConfigError(f"{name} must be in 32..4096 pixels or None, got {v}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")

    @property
    def oct_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the OCT B-scans."""
        w = self.oct_width or self.size
        return (self.oct_height or max(32, round(w * 7 / 16))), w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SynthConfig:
        return config_from_dict(cls, d, "synthetic config")


@dataclass(frozen=True)
class SynthImage:
    """One generated image.

    image: fundus RGB uint8 (H, W, 3) or OCT grayscale uint8 (H, W).
    masks: per disease class present, a uint8 0/1 (H, W) site mask: where that
        class's lesions are. Empty for a normal image or when masks were not asked for.
    labels: the disease classes (empty tuple = normal).
    meta: JSON-able geometry and draw parameters (eye, field of view, fovea,
        disc, severities...).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    labels: tuple[str, ...]
    modality: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label_string(self) -> str:
        """The CSV form: classes joined with ';', or 'normal'."""
        return label_string(self.labels)


def label_string(labels: Sequence[str]) -> str:
    """Labels as written in ``labels.csv``: ';'-joined class names, ``normal`` when none."""
    return ";".join(labels) if labels else NORMAL


def _check_labels(labels: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(labels, str):
        labels = [x for x in labels.split(";") if x]
    unknown = [c for c in labels if c not in ALL_CLASSES]
    if unknown:
        raise ConfigError(f"unknown labels {unknown}; expected names from {list(ALL_CLASSES)}")
    disease = [c for c in labels if c != NORMAL]
    if NORMAL in labels and disease:
        raise ConfigError(f"'{NORMAL}' means no disease and cannot be combined with {disease}")
    return tuple(c for c in DISEASE_CLASSES if c in disease)


def sample_labels(rng: np.random.Generator, config: SynthConfig) -> tuple[str, ...]:
    """Draw one image's disease labels (empty tuple = normal) from the config's probabilities."""
    if rng.random() < config.p_normal:
        return ()
    classes = config.classes
    w = np.asarray(config.class_weights or [1.0] * len(classes), np.float64)
    chosen = {classes[int(rng.choice(len(classes), p=w / w.sum()))]}
    if len(classes) > 1 and rng.random() < config.p_extra:
        rest = [i for i, c in enumerate(classes) if c not in chosen and w[i] > 0]
        if rest:
            wr = w[rest]
            chosen.add(classes[rest[int(rng.choice(len(rest), p=wr / wr.sum()))]])
    for a, b, p in config.co_occurrence:
        if a in chosen and b in classes and b not in chosen and rng.random() < float(p):
            chosen.add(b)
    return tuple(c for c in DISEASE_CLASSES if c in chosen)


def _severities(
    rng: np.random.Generator,
    labels: tuple[str, ...],
    severity: Mapping[str, float] | None,
    severity_range: tuple[float, float],
) -> dict[str, float]:
    out = {}
    for c in labels:
        given = None if severity is None else severity.get(c)
        if given is not None and not 0.0 <= given <= 1.0:
            raise ConfigError(f"severity of {c!r} must be in [0, 1], got {given}")
        out[c] = float(given) if given is not None else float(rng.uniform(*severity_range))
    return out


def _check_eye(rng: np.random.Generator, eye: str | None) -> str:
    if eye is None:
        return EYES[int(rng.integers(2))]
    if eye not in EYES:
        raise ConfigError(f"eye must be 'right', 'left' or None, got {eye!r}")
    return eye


# --------------------------------------------------------------------------- drawing helpers

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
# An RGB triple in albedo units (1.0 = a white reflector).
Colour = Sequence[float] | np.ndarray
# Paint colours are stored halved in uint8 so that bright deposits (albedo > 1) fit.
_PAINT_SCALE = 2.0


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


class _Paint:
    """Premultiplied colour + alpha canvases composited over the albedo.

    OpenCV's anti-aliased drawing blends the new colour with what is already
    on the canvas, which is exactly the 'over' operator on premultiplied colour.
    Only the bounding box of what was drawn is blurred and composited.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.rgb = np.zeros((*shape, 3), np.uint8)
        self.alpha = np.zeros(shape, np.uint8)
        self.box = [np.inf, np.inf, -np.inf, -np.inf]  # x0, y0, x1, y1

    def _colours(self, colour: Colour, alpha: float, x0: float, y0: float, x1: float, y1: float,
                 ) -> tuple[tuple[float, ...], float]:
        b = self.box
        b[0], b[1], b[2], b[3] = min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)
        a = float(np.clip(alpha, 0.0, 1.0))
        return tuple(float(np.clip(c * a / _PAINT_SCALE, 0, 1)) * 255 for c in colour), a * 255

    def circle(self, x: float, y: float, r: float, colour: Colour, alpha: float) -> None:
        c, a = self._colours(colour, alpha, x - r, y - r, x + r, y + r)
        rr = max(1, int(round(r * _ONE)))
        cv2.circle(self.rgb, _pt(x, y), rr, c, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(self.alpha, _pt(x, y), rr, a, -1, cv2.LINE_AA, _SHIFT)

    def ellipse(self, x: float, y: float, ax: float, ay: float, angle: float,
                colour: Colour, alpha: float) -> None:
        r = max(ax, ay)
        c, a = self._colours(colour, alpha, x - r, y - r, x + r, y + r)
        axes = (max(1, int(round(ax * _ONE))), max(1, int(round(ay * _ONE))))
        cv2.ellipse(self.rgb, _pt(x, y), axes, angle, 0, 360, c, -1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(self.alpha, _pt(x, y), axes, angle, 0, 360, a, -1, cv2.LINE_AA, _SHIFT)

    def polyline(self, pts: np.ndarray, width: float, colour: Colour, alpha: float) -> None:
        lo, hi = pts.min(0) - width, pts.max(0) + width
        c, a = self._colours(colour, alpha, lo[0], lo[1], hi[0], hi[1])
        p = [np.round(pts * _ONE).astype(np.int32)]
        t = max(1, int(round(width)))
        cv2.polylines(self.rgb, p, False, c, t, cv2.LINE_AA, _SHIFT)
        cv2.polylines(self.alpha, p, False, a, t, cv2.LINE_AA, _SHIFT)

    def composite(self, albedo: np.ndarray, blur: float = 0.0) -> None:
        x0, y0, x1, y1 = self.box
        if not x0 < x1:
            return
        h, w = self.alpha.shape
        pad = 2 + 3 * blur
        sl = (slice(max(0, int(y0 - pad)), min(h, int(y1 + pad) + 1)),
              slice(max(0, int(x0 - pad)), min(w, int(x1 + pad) + 1)))
        rgb: np.ndarray = self.rgb[sl]
        alpha: np.ndarray = self.alpha[sl]
        if rgb.size == 0:
            return
        if blur > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
            alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
        a = albedo[sl]
        a *= 1.0 - alpha[..., None].astype(np.float32) * np.float32(1.0 / 255.0)
        a += rgb.astype(np.float32) * np.float32(_PAINT_SCALE / 255.0)


class _Masks:
    """Per-class site masks (uint8 0/1); every draw is a no-op when masks are off."""

    def __init__(self, shape: tuple[int, int], labels: Sequence[str], enabled: bool) -> None:
        self.shape = shape
        self.enabled = enabled
        self.maps: dict[str, np.ndarray] = {c: np.zeros(shape, np.uint8) for c in labels} if enabled else {}

    def circle(self, cls: str, x: float, y: float, r: float) -> None:
        if self.enabled:
            cv2.circle(self.maps[cls], _pt(x, y), max(1, int(round(r * _ONE))), 1, -1, cv2.LINE_8, _SHIFT)

    def ellipse(self, cls: str, x: float, y: float, ax: float, ay: float, angle: float) -> None:
        if self.enabled:
            axes = (max(1, int(round(ax * _ONE))), max(1, int(round(ay * _ONE))))
            cv2.ellipse(self.maps[cls], _pt(x, y), axes, angle, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)

    def polyline(self, cls: str, pts: np.ndarray, width: float) -> None:
        if self.enabled:
            cv2.polylines(self.maps[cls], [np.round(pts * _ONE).astype(np.int32)], False, 1,
                          max(1, int(round(width))), cv2.LINE_8, _SHIFT)

    def region(self, cls: str, sl: tuple[slice, slice], where: np.ndarray) -> None:
        if self.enabled:
            self.maps[cls][sl][where] = 1

    def finish(self, inside: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if inside is not None:
            for m in self.maps.values():
                m &= inside
        return self.maps


@lru_cache(maxsize=8)
def _noise_tile(h: int, w: int, channels: int, kind: str) -> np.ndarray:
    """A fixed noise texture to crop from: cheaper than drawing fresh noise per image.

    Camera noise and OCT speckle carry no label information, so reusing one
    texture at a random offset (64 x 64 of them) costs no realism that matters, and
    drawing 0.8 M normal deviates per image would take most of the time budget.
    """
    rng = np.random.default_rng(0x5EED + h * 7919 + w * 104729 + channels)
    shape = (h + 64, w + 64, channels) if channels > 1 else (h + 64, w + 64)
    tile: np.ndarray
    if kind == "normal":
        tile = rng.standard_normal(shape, dtype=np.float32)
    else:  # speckle: gamma-distributed multiplicative noise, grains elongated laterally
        tile = rng.gamma(1.4, 1 / 1.4, shape).astype(np.float32)
        tile = np.asarray(cv2.GaussianBlur(tile, (5, 3), sigmaX=1.0, sigmaY=0.6), np.float32)
        tile = tile / np.float32(tile.mean())
    tile.flags.writeable = False
    return tile


def _noise_crop(rng: np.random.Generator, h: int, w: int, channels: int, kind: str) -> np.ndarray:
    tile = _noise_tile(h, w, channels, kind)
    oy, ox = (int(v) for v in rng.integers(0, 64, 2))
    return tile[oy : oy + h, ox : ox + w]


def _smooth_field(rng: np.random.Generator, grid: int, out_hw: tuple[int, int], channels: int = 1) -> np.ndarray:
    """Low-frequency random field (zero mean, unit-ish std) upsampled to ``out_hw``."""
    shape = (grid, grid, channels) if channels > 1 else (grid, grid)
    small = rng.standard_normal(shape).astype(np.float32)
    return cv2.resize(small, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_CUBIC)


def _roi(x: float, y: float, rad: float, h: int, w: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Slices of the box ``rad`` around (x, y), clipped to the frame, with pixel offsets from (x, y)."""
    x0, x1 = max(0, int(np.floor(x - rad))), min(w, int(np.ceil(x + rad)) + 1)
    y0, y1 = max(0, int(np.floor(y - rad))), min(h, int(np.ceil(y + rad)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1, dtype=np.float32) - np.float32(x)
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(y))[:, None]
    return (slice(y0, y1), slice(x0, x1)), dx[None, :], dy


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# --------------------------------------------------------------------------- fundus


@dataclass(frozen=True)
class _Eye:
    """Fundus geometry in pixels."""

    size: int
    cx: float  # field-of-view circle
    cy: float
    R: float
    fx: float  # fovea
    fy: float
    dx: float  # optic disc centre
    dy: float
    rd: float  # disc radius (horizontal)
    disc_aspect: float  # vertical / horizontal
    side: int  # +1: disc right of the fovea (right eye), -1: left eye

    def inside(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Points inside the field of view (``margin`` pixels in from its rim) and the frame."""
        r = self.R - margin
        ok = (x - self.cx) ** 2 + (y - self.cy) ** 2 <= r * r
        m = max(0.0, margin)
        return ok & (x >= m) & (y >= m) & (x < self.size - m) & (y < self.size - m)


def _fundus_eye(rng: np.random.Generator, size: int, eye: str) -> _Eye:
    s = float(size)
    R = s * rng.uniform(0.40, 0.58)
    cx = s / 2 + rng.uniform(-0.04, 0.04) * s
    cy = s / 2 + rng.uniform(-0.05, 0.05) * s
    side = 1 if eye == "right" else -1
    fx = cx + rng.uniform(-0.06, 0.06) * R - side * 0.03 * R
    fy = cy + rng.uniform(-0.06, 0.06) * R
    dd = rng.uniform(0.58, 0.70) * R
    dx, dy = fx + side * dd, fy - rng.uniform(0.0, 0.08) * R
    rd = rng.uniform(0.10, 0.125) * R
    # A large, clipped field can push the disc out of the frame; real cameras
    # keep it in view, so slide the whole posterior pole back inside.
    over = dx + side * 1.6 * rd - (s - 1 if side > 0 else 0)
    if over * side > 0:
        fx, dx = fx - over, dx - over
    return _Eye(size, cx, cy, R, fx, fy, dx, dy, rd, float(rng.uniform(1.04, 1.14)), side)


def _sample_points(
    rng: np.random.Generator, eye: _Eye, n: int, centre: tuple[float, float], spread: tuple[float, float],
    *, kind: str = "gauss", margin: float = 0.0, avoid: Sequence[tuple[float, float, float]] = (),
) -> np.ndarray:
    """``n`` points around ``centre`` inside the field of view, outside the ``avoid`` circles.

    kind: 'gauss' (normal with std ``spread``), 'ellipse' (uniform in the
    ellipse of semi-axes ``spread``), 'ring' (radius uniform in ``spread`` =
    (inner, outer), about the centre).
    """
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    out: list[np.ndarray] = []
    have = 0
    for _ in range(8):
        m = 3 * (n - have) + 8
        if kind == "gauss":
            p = rng.standard_normal((m, 2)) * np.asarray(spread) + np.asarray(centre)
        else:
            ang = rng.uniform(0, 2 * np.pi, m)
            if kind == "ellipse":
                rad = np.sqrt(rng.uniform(0, 1, m))
                p = np.stack([np.cos(ang) * rad * spread[0], np.sin(ang) * rad * spread[1]], 1)
            else:
                rad = np.sqrt(rng.uniform(spread[0] ** 2, spread[1] ** 2, m))
                p = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
            p = p + np.asarray(centre)
        ok = eye.inside(p[:, 0], p[:, 1], margin)
        for ax, ay, ar in avoid:
            ok &= (p[:, 0] - ax) ** 2 + (p[:, 1] - ay) ** 2 > ar * ar
        p = p[ok][: n - have]
        out.append(p)
        have += len(p)
        if have >= n:
            break
    return np.concatenate(out).astype(np.float32)


def _resample(pts: np.ndarray, step: float) -> np.ndarray:
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] < step:
        return pts
    t = np.arange(0.0, s[-1], step)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], 1)


@dataclass
class _Vessel:
    pts: np.ndarray  # (n, 2) pixels, from the root outwards
    width: float  # at the root, pixels
    vein: bool
    taper: float = 0.45  # width lost from root to tip (fraction)


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float,
          wander: float) -> np.ndarray:
    """Random-walk polyline of about ``length`` pixels (heading drifts by ``wander`` rad per step)."""
    n = max(2, int(length / step))
    heading = angle + np.cumsum(rng.normal(0.0, wander, n))
    steps = np.stack([np.cos(heading), np.sin(heading)], 1) * step
    return np.concatenate([start[None, :], start[None, :] + np.cumsum(steps, axis=0)])


def _vessel_tree(rng: np.random.Generator, eye: _Eye, attenuation: float) -> list[_Vessel]:
    """Branching arcades from the disc: temporal arcades around the macula, nasal vessels, small branches."""
    R, side = eye.R, eye.side
    step = 0.015 * R
    w_vein, w_art = 0.020 * R * attenuation, 0.0145 * R * attenuation
    u_f = abs(eye.fx - eye.dx)  # horizontal disc-fovea distance
    trunks: list[_Vessel] = []
    for up in (-1, 1):  # superior (up=-1) and inferior arcades
        a_h = rng.uniform(0.32, 0.42) * R  # arcade height above/below the fovea
        for vein in (True, False):
            k = u_f / (a_h * rng.uniform(0.9, 1.12)) ** 2
            v = np.linspace(0.0, 1.2 * R, 240)
            u = k * v**2
            pts = np.stack([eye.dx - side * u + rng.uniform(-0.15, 0.15) * eye.rd,
                            eye.dy + up * v], 1)
            pts = _resample(pts, step)
            trunks.append(_Vessel(pts, w_vein if vein else w_art, vein))
        for vein in (True, False):  # nasal arcades spread up/down and nasally
            k = rng.uniform(0.5, 1.6) / R
            v = np.linspace(0.0, 1.2 * R, 120)
            pts = np.stack([eye.dx + side * k * v**2, eye.dy + up * v], 1)
            trunks.append(_Vessel(_resample(pts, step), 0.8 * (w_vein if vein else w_art), vein))
    for vein in (True, False):  # straight nasal vessel pair
        ang = (0.0 if side > 0 else np.pi) + rng.normal(0, 0.2)
        pts = _walk(rng, np.array([eye.dx, eye.dy]), ang, 0.9 * R, step, 0.05)
        trunks.append(_Vessel(pts, 0.6 * (w_vein if vein else w_art), vein))
    for _ in range(int(rng.integers(2, 4))):  # small papillomacular vessels towards the fovea
        ang = np.arctan2(eye.fy - eye.dy, eye.fx - eye.dx) + rng.normal(0, 0.35)
        pts = _walk(rng, np.array([eye.dx, eye.dy]), ang, 0.5 * u_f, step, 0.08)
        trunks.append(_Vessel(pts, 0.35 * w_art, bool(rng.random() < 0.5)))

    # tortuosity: two slow waves per trunk (one per axis), growing from zero at the disc
    for t in trunks:
        s = np.arange(len(t.pts))[:, None] * step
        amp = rng.uniform(0.003, 0.008) * R * np.minimum(1.0, s / (0.15 * R))
        freq = 2 * np.pi / (rng.uniform(0.15, 0.4, 2) * R)
        t.pts = t.pts + amp * np.sin(s * freq + rng.uniform(0, 2 * np.pi, 2))

    faz2 = (0.07 * R) ** 2  # foveal avascular zone
    r_out2 = (1.02 * R) ** 2  # a vessel ends just outside the field of view (OpenCV clips at the frame)
    out: list[_Vessel] = []
    frontier = trunks
    for depth in range(3):
        nxt: list[_Vessel] = []
        # one vectorised pass over all vessels of this generation: inside the field, outside the FAZ
        allp = np.concatenate([t.pts for t in frontier]) if frontier else np.zeros((0, 2))
        px, py = allp[:, 0], allp[:, 1]
        ok = ((px - eye.cx) ** 2 + (py - eye.cy) ** 2 < r_out2) & ((px - eye.fx) ** 2 + (py - eye.fy) ** 2 > faz2)
        start = 0
        for t in frontier:
            n = len(t.pts)
            seg = ok[start : start + n]
            start += n
            first_bad = int(seg.argmin())
            if not seg[first_bad]:
                t.pts = t.pts[:first_bad]
            if len(t.pts) < 2:
                continue
            out.append(t)
            if depth == 2 or t.width * 0.6 < 0.7:
                continue
            n = len(t.pts)
            k = int(rng.integers(2, 5)) if depth == 0 else int(rng.integers(0, 3))
            if k == 0 or n < 4:
                continue
            # all of this parent's branches at once: root index, side, angle, width, length
            idx = rng.integers(max(1, n // 8), n - 2, k)
            d = t.pts[idx + 1] - t.pts[idx]
            ang = np.arctan2(d[:, 1], d[:, 0]) + np.where(rng.random(k) < 0.5, -1.0, 1.0) * rng.uniform(0.45, 1.1, k)
            widths = t.width * (1 - t.taper * idx / n) * rng.uniform(0.5, 0.75, k)
            steps = (rng.uniform(0.15, 0.4, k) * R * (0.6 if depth else 1.0) / step).astype(int) + 2
            heading = ang[:, None] + np.cumsum(rng.normal(0.0, 0.07, (k, int(steps.max()))), axis=1)
            paths = t.pts[idx][:, None, :] + np.cumsum(
                np.stack([np.cos(heading), np.sin(heading)], 2) * step, axis=1)
            for j in range(k):
                pts = np.concatenate([t.pts[idx[j]][None], paths[j, : steps[j]]])
                nxt.append(_Vessel(pts, float(widths[j]), t.vein, taper=0.5))
        frontier = nxt
    return out


def _draw_vessels(canvas: np.ndarray, vessels: list[_Vessel], k_vein: Sequence[float], k_art: Sequence[float]) -> None:
    """Draw vessels on a transmission canvas (255 = clear) absorbing ``k`` per channel, tapering in chunks."""
    for v in vessels:
        n = len(v.pts)
        k = k_vein if v.vein else k_art
        pts = np.round(v.pts * 4).astype(np.int32)
        chunks = 1 if v.width < 2.0 or n < 8 else (3 if n > 24 else 2)
        for c in range(chunks):
            a, b = c * (n - 1) // chunks, (c + 1) * (n - 1) // chunks + 1
            w = v.width * (1 - v.taper * a / n)
            strength = min(1.0, w)  # sub-pixel vessels: fainter, not thinner
            colour = (255.0 * (1.0 - k[0] * strength), 255.0 * (1.0 - k[1] * strength), 255.0 * (1.0 - k[2] * strength))
            cv2.polylines(canvas, [pts[a:b]], False, colour, max(1, int(w + 0.5)), cv2.LINE_AA, 2)


def _fundus_albedo(rng: np.random.Generator, eye: _Eye) -> tuple[np.ndarray, np.ndarray]:
    """Background reflectance (H, W, 3) and the illumination at 64 x 64 (smooth: upsampled by the camera stage)."""
    S, R = eye.size, eye.R
    L = 64
    scale = S / L
    # base fundus colour: orange-red with pigmentation variation (RGB, relative units)
    red = rng.uniform(0.72, 0.95)
    base = np.array([red, red * rng.uniform(0.36, 0.56), red * rng.uniform(0.10, 0.26)], np.float32)
    c = (np.arange(L, dtype=np.float32) + 0.5) * scale - 0.5
    gx, gy = c[None, :], c[:, None]
    tex = _smooth_field(rng, 10, (L, L), 3) * rng.uniform(0.03, 0.07)
    tex += _smooth_field(rng, 40, (L, L), 1)[..., None] * rng.uniform(0.015, 0.035)
    alb = base * (1.0 + tex)
    # macular pigment: darker, browner towards the fovea
    sig = rng.uniform(0.10, 0.15) * R
    g = np.exp(-((gx - eye.fx) ** 2 + (gy - eye.fy) ** 2) / (2 * sig * sig))
    depth = rng.uniform(0.12, 0.32)
    alb *= 1.0 - depth * g[..., None] * np.array([1.0, 1.35, 1.25], np.float32)
    # illumination: vignetting about a jittered centre plus a gentle gradient
    ix, iy = eye.cx + rng.normal(0, 0.08) * R, eye.cy + rng.normal(0, 0.08) * R
    rr = np.sqrt((gx - ix) ** 2 + (gy - iy) ** 2) / R
    fall = rng.uniform(0.3, 0.65)
    illum = 1.0 - fall * np.minimum(rr, 1.3) ** rng.uniform(1.8, 3.5)
    ang = rng.uniform(0, 2 * np.pi)
    illum *= 1.0 + rng.uniform(0.0, 0.15) * ((gx - eye.cx) * np.cos(ang) + (gy - eye.cy) * np.sin(ang)) / R
    illum = np.maximum(illum, 0.25).astype(np.float32)
    if rng.random() < 0.25:  # bluish-white sheen near the rim (young eyes, flash haze)
        ang = rng.uniform(0, 2 * np.pi)
        hx, hy = eye.cx + 0.85 * R * np.cos(ang), eye.cy + 0.85 * R * np.sin(ang)
        haze = np.exp(-((gx - hx) ** 2 + (gy - hy) ** 2) / (2 * (0.3 * R) ** 2)) * rng.uniform(0.1, 0.3)
        alb += haze[..., None] * np.array([0.6, 0.8, 1.0], np.float32)
    alb_full: np.ndarray = cv2.resize(alb.astype(np.float32), (S, S), interpolation=cv2.INTER_CUBIC)
    return alb_full, illum


def _draw_disc(rng: np.random.Generator, eye: _Eye, albedo: np.ndarray, cdr: float, waxy: float,
               nfl_loss: float, masks: _Masks, glaucoma: float | None) -> None:
    """Optic disc with cup, peripapillary nerve-fibre sheen and (glaucoma) a wedge defect."""
    S, R, rd = eye.size, eye.R, eye.rd
    f32 = np.float32
    # 1. peripapillary nerve-fibre sheen: strongest above and below the disc, striated
    reach = 0.34 * R
    roi = _roi(eye.dx, eye.dy, reach, S, S)
    if roi is None:
        return
    sl, ox, oy = roi
    a = albedo[sl]
    u = ox * f32(-eye.side)  # temporal offset
    dist = np.sqrt(ox * ox + oy * oy) + f32(1e-3)
    phi = np.arctan2(oy, u)  # 0 = temporal, +pi/2 = inferior
    outside = dist > f32(1.05 * rd)
    fibres = f32(0.7) + f32(0.3) * np.cos(phi * f32(int(rng.integers(36, 64))) + f32(rng.uniform(0, 6.3)))
    amp = f32(rng.uniform(0.025, 0.06) * (1.0 - 0.6 * nfl_loss))
    sheen = amp * (oy / dist) ** 2 * fibres * np.exp((f32(rd) - dist) / f32(0.1 * R)) * outside
    if glaucoma is not None:
        centre = (1 if rng.random() < 0.6 else -1) * np.deg2rad(rng.uniform(40, 75))
        half = np.deg2rad(rng.uniform(8, 16) * (0.7 + 0.6 * glaucoma))
        dphi = np.abs((phi - f32(centre) + f32(np.pi)) % f32(2 * np.pi) - f32(np.pi))
        wedge = _smoothstep((f32(half) - dphi) / f32(0.3 * half)) * outside * (dist < f32(reach))
        sheen *= f32(1.0) - wedge
        dark = f32(0.04 + 0.08 * glaucoma) * wedge * np.exp((f32(rd) - dist) / f32(0.3 * R))
        a *= (f32(1.0) - dark)[..., None]
        masks.region("glaucoma", sl, (wedge > 0.5) & (dist < f32(reach)))
    a += sheen[..., None] * np.array([0.6, 0.62, 0.58], f32)
    # 2. disc: bright yellow-orange rim, whiter cup offset slightly temporally; soft margin
    roi = _roi(eye.dx, eye.dy, 1.6 * rd * eye.disc_aspect, S, S)
    if roi is None:
        return
    sl, ox, oy = roi
    a = albedo[sl]
    u = ox * f32(-eye.side)
    rho = np.sqrt((ox / f32(rd)) ** 2 + (oy / f32(rd * eye.disc_aspect)) ** 2)
    p = _smoothstep((f32(1.0) - rho) / f32(0.14) + f32(0.5))
    # the disc reflects two to three times the fundus: it is the brightest structure even in the dim periphery
    rim = np.array([1.5, 1.05 + 0.25 * waxy, 0.55 + 0.2 * waxy], f32) * f32(rng.uniform(0.85, 1.1))
    a *= (f32(1.0) - p)[..., None]
    a += p[..., None] * rim
    cu, cv_ = rng.uniform(0.0, 0.15) * rd, rng.uniform(-0.05, 0.05) * rd
    cup_v = rd * eye.disc_aspect * cdr * rng.uniform(1.0, 1.1)
    rho_c = np.sqrt(((u - f32(cu)) / f32(rd * cdr)) ** 2 + ((oy - f32(cv_)) / f32(cup_v)) ** 2)
    q = _smoothstep((f32(1.0) - rho_c) / f32(0.3) + f32(0.5)) * p
    a += q[..., None] * (np.array([0.2, 0.35, 0.35], f32) * f32(rng.uniform(0.7, 1.1)))
    if glaucoma is not None:
        masks.region("glaucoma", sl, rho <= 1.15)
    # peripapillary atrophy crescent on the temporal margin (label-independent distractor)
    if rng.random() < 0.3:
        cres = _smoothstep(f32(1.0) - np.abs(rho - f32(1.15)) / f32(0.12)) * _smoothstep(u / f32(0.6 * rd))
        a *= (f32(1.0) - f32(0.3) * cres)[..., None]
        a += cres[..., None] * np.array([0.45, 0.38, 0.25], f32)


def _fundus_lesions(rng: np.random.Generator, eye: _Eye, sev: Mapping[str, float], sharp: _Paint,
                    soft: _Paint, masks: _Masks) -> None:
    """Draw each labelled class's lesions at its site; severity ``s`` scales counts (as s**1.5) and contrast."""
    R = eye.R
    margin = 0.012 * R  # site masks extend this far around each lesion (tiny dots stay visible when pooled)
    disc_avoid = ((eye.dx, eye.dy, 1.6 * eye.rd),)
    if "dr" in sev:
        s = sev["dr"]
        amount, fade = s**1.5, 0.5 + 0.5 * s
        # posterior pole: the ellipse inside the arcades, centred between fovea and disc
        cen = (eye.fx + 0.3 * (eye.dx - eye.fx), eye.fy + 0.3 * (eye.dy - eye.fy))
        spread = (0.62 * R, 0.42 * R)
        n_ma = int(round(1 + 40 * amount * rng.uniform(0.7, 1.3)))
        for x, y in _sample_points(rng, eye, n_ma, cen, spread, kind="ellipse", avoid=disc_avoid):
            r = rng.uniform(0.006, 0.012) * R
            sharp.circle(x, y, r, (0.45, 0.06, 0.05), rng.uniform(0.55, 0.9) * fade)
            masks.circle("dr", x, y, r + margin)
        n_h = int(round(amount * rng.uniform(0, 16)))
        for x, y in _sample_points(rng, eye, n_h, cen, spread, kind="ellipse", avoid=disc_avoid):
            r = rng.uniform(0.015, 0.04) * R
            for _ in range(int(rng.integers(2, 5))):  # irregular blot: a few overlapping ellipses
                jx, jy = rng.normal(0, 0.4 * r, 2)
                soft.ellipse(x + jx, y + jy, r * rng.uniform(0.5, 1.0), r * rng.uniform(0.4, 0.9),
                             rng.uniform(0, 180), (0.38, 0.04, 0.03), rng.uniform(0.6, 0.9) * fade)
            masks.circle("dr", x, y, 1.6 * r + margin)
        if s > 0.6 and rng.random() < 0.5:  # cotton-wool spots along the arcades
            for x, y in _sample_points(rng, eye, int(rng.integers(1, 4)), cen, spread, kind="ellipse",
                                       avoid=disc_avoid):
                r = rng.uniform(0.02, 0.035) * R
                soft.ellipse(x, y, r, 0.7 * r, rng.uniform(0, 180), (1.0, 0.95, 0.85), 0.55)
                masks.circle("dr", x, y, r + margin)
    if "dme" in sev:
        s = sev["dme"]
        amount, fade = s**1.5, 0.5 + 0.5 * s
        # thickening: greyish haze over the macula, foveal reflex lost
        r_t = rng.uniform(0.09, 0.14) * R
        soft.circle(eye.fx, eye.fy, r_t, (0.75, 0.62, 0.45), 0.04 + 0.2 * s)
        masks.circle("dme", eye.fx, eye.fy, r_t)
        # hard exudates: circinate ring(s) and clusters around the fovea
        n_ex = int(round(3 + 55 * amount * rng.uniform(0.7, 1.3)))
        ring_c = (eye.fx + rng.normal(0, 0.05) * R, eye.fy + rng.normal(0, 0.05) * R)
        ring_r = rng.uniform(0.08, 0.2) * R
        span = rng.uniform(0.4, 1.0) * 2 * np.pi
        start = rng.uniform(0, 2 * np.pi)
        ang = start + rng.uniform(0, span, n_ex)
        rad = ring_r * (1 + rng.normal(0, 0.12, n_ex))
        pts = np.stack([ring_c[0] + rad * np.cos(ang), ring_c[1] + rad * np.sin(ang)], 1)
        pts = pts[eye.inside(pts[:, 0], pts[:, 1], margin)]
        colour = np.array([1.15, 1.0, 0.45]) * rng.uniform(0.9, 1.05)
        for x, y in pts:
            r = rng.uniform(0.004, 0.014) * R * (0.7 + 0.6 * s)
            sharp.circle(x, y, r, colour, rng.uniform(0.6, 0.95) * fade)
            masks.circle("dme", x, y, r + margin)
    if "amd" in sev:
        s = sev["amd"]
        amount, fade = s**1.5, 0.5 + 0.5 * s
        n = int(round(2 + 42 * amount * rng.uniform(0.7, 1.3)))
        sd = rng.uniform(0.06, 0.11) * R
        colour = np.array([1.05, 0.88, 0.5]) * rng.uniform(0.9, 1.05)
        for x, y in _sample_points(rng, eye, n, (eye.fx, eye.fy), (sd, sd)):
            r = rng.uniform(0.006, 0.014 + 0.014 * s) * R
            soft.circle(x, y, r, colour, rng.uniform(0.35, 0.8) * fade)
            masks.circle("amd", x, y, r + margin)
        if s > 0.6 and rng.random() < 0.5:  # pigment clumping
            for x, y in _sample_points(rng, eye, int(rng.integers(2, 6)), (eye.fx, eye.fy), (sd, sd)):
                r = rng.uniform(0.005, 0.012) * R
                sharp.circle(x, y, r, (0.2, 0.12, 0.08), 0.6)
                masks.circle("amd", x, y, r + margin)
    if "rp" in sev:
        s = sev["rp"]
        n = int(round(6 + 110 * s**1.5 * rng.uniform(0.7, 1.3)))
        centre = (0.7 * eye.fx + 0.3 * eye.dx, 0.7 * eye.fy + 0.3 * eye.dy)
        for x, y in _sample_points(rng, eye, n, centre, (0.5 * R, 0.9 * R), kind="ring", margin=0.03 * R):
            # bone spicule: a few short branching dark strokes from one point
            for _ in range(int(rng.integers(2, 5))):
                a_sp = rng.uniform(0, 2 * np.pi)
                ln = rng.uniform(0.01, 0.03) * R
                mid = (x + 0.5 * ln * np.cos(a_sp) + rng.normal(0, 0.2 * ln), y + 0.5 * ln * np.sin(a_sp))
                pts = np.array([[x, y], mid, [x + ln * np.cos(a_sp), y + ln * np.sin(a_sp)]])
                sharp.polyline(pts, max(1.0, 0.004 * R), (0.12, 0.07, 0.05), rng.uniform(0.45, 0.85) * (0.4 + 0.6 * s))
                masks.polyline("rp", pts, max(1.0, 0.004 * R) + 2 * margin)
    if "macular_hole" in sev:
        s = sev["macular_hole"]
        r = rng.uniform(0.025, 0.04) * R * (0.6 + 0.7 * s)
        x, y = eye.fx + rng.normal(0, 0.01) * R, eye.fy + rng.normal(0, 0.01) * R
        for k in range(3):  # cuff of detached, greyish retina fading outwards
            soft.circle(x, y, (2.1 - 0.3 * k) * r, (0.72, 0.6, 0.5), (0.05 + 0.1 * s))
        sharp.circle(x, y, r, (0.5, 0.1, 0.06), 0.35 + 0.55 * s)
        for _ in range(int(rng.integers(2, 6))):  # yellow deposits at the base
            jx, jy = rng.normal(0, 0.35 * r, 2)
            sharp.circle(x + jx, y + jy, 0.12 * r, (1.1, 0.95, 0.5), 0.7)
        masks.circle("macular_hole", x, y, 2.1 * r + margin)


def _distractors(rng: np.random.Generator, eye: _Eye, sharp: _Paint, soft: _Paint) -> None:
    """Label-independent findings that look a little like lesions, so that "any spot" is not a label."""
    R = eye.R
    for _ in range(int(rng.integers(1, 5)) if rng.random() < 0.35 else 0):  # dust on the lens: blurry, dark
        (x, y), = _sample_points(rng, eye, 1, (eye.cx, eye.cy), (0.6 * R, 0.6 * R))
        soft.circle(x, y, rng.uniform(0.01, 0.03) * R, (0.2, 0.15, 0.12), rng.uniform(0.08, 0.2))
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.2 else 0):  # small benign pale dots
        (x, y), = _sample_points(rng, eye, 1, (eye.cx, eye.cy), (0.45 * R, 0.45 * R))
        sharp.circle(x, y, rng.uniform(0.004, 0.008) * R, (1.0, 0.9, 0.6), rng.uniform(0.25, 0.5))
    if rng.random() < 0.15:  # choroidal naevus: flat, slate-grey, soft-edged
        (x, y), = _sample_points(rng, eye, 1, (eye.cx, eye.cy), (0.5 * R, 0.5 * R))
        soft.circle(x, y, rng.uniform(0.02, 0.045) * R, (0.3, 0.25, 0.22), rng.uniform(0.15, 0.3))


def generate_fundus(
    rng: np.random.Generator,
    labels: Sequence[str] | str = (),
    size: int = 512,
    *,
    eye: str | None = None,
    severity: Mapping[str, float] | None = None,
    severity_range: tuple[float, float] = (0.15, 1.0),
    with_masks: bool = True,
) -> SynthImage:
    """Draw one fundus photograph (RGB uint8, ``size x size``) with the labels' lesions.

    labels: disease class names (or ';'-joined string); empty or ``('normal',)``
        for a healthy eye. eye: 'right' (disc on the right) / 'left'; None draws one.
    severity: per-class lesion strength in [0, 1]; classes not given are drawn
        uniformly from ``severity_range``.
    with_masks: also return the per-class site masks (a little slower).
    """
    labs = _check_labels(labels)
    if not 64 <= size <= 4096:
        raise ConfigError(f"fundus size must be in 64..4096 pixels, got {size}")
    side = _check_eye(rng, eye)
    sev = _severities(rng, labs, severity, severity_range)
    e = _fundus_eye(rng, size, side)
    S, R = size, e.R
    albedo, illum = _fundus_albedo(rng, e)
    masks = _Masks((S, S), labs, with_masks)

    glauc = sev.get("glaucoma")
    rp = sev.get("rp", 0.0)
    cdr = 0.55 + 0.33 * glauc if glauc is not None else rng.uniform(0.2, 0.52)
    _draw_disc(rng, e, albedo, cdr, waxy=rp, nfl_loss=glauc or 0.0, masks=masks, glaucoma=glauc)

    sharp, soft = _Paint((S, S)), _Paint((S, S))
    if not ({"dme", "macular_hole"} & set(labs)) and rng.random() < 0.6:  # foveal light reflex
        sharp.circle(e.fx, e.fy, rng.uniform(0.006, 0.012) * R, (1.2, 1.2, 1.1), rng.uniform(0.15, 0.35))
    _fundus_lesions(rng, e, sev, sharp, soft, masks)
    _distractors(rng, e, sharp, soft)
    soft.composite(albedo, blur=max(0.6, 0.003 * S))
    sharp.composite(albedo, blur=0.0)

    # vessels lie in the inner retina, over every lesion drawn here: applied as a transmission map later
    trans = np.full((S, S, 3), 255, np.uint8)
    contrast = rng.uniform(0.8, 1.1) * (1.0 - 0.45 * rp)
    vessels = _vessel_tree(rng, e, attenuation=1.0 - 0.5 * rp)
    _draw_vessels(trans, vessels, [0.42 * contrast, 0.72 * contrast, 0.6 * contrast],
                  [0.25 * contrast, 0.5 * contrast, 0.42 * contrast])
    trans = np.asarray(cv2.GaussianBlur(trans, (3, 3), 0.7))

    # camera: exposure, field-of-view aperture, noise, colour balance and gamma (all label-independent).
    # Noise is added to the reflectance, so it scales with the light like shot noise and the surround stays black.
    exposure = float(rng.uniform(0.55, 1.25))
    fov = np.zeros((S, S), np.uint8)
    cv2.circle(fov, _pt(e.cx, e.cy), int(round(R * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
    cv2.scaleAdd(_noise_crop(rng, S, S, 3, "normal"), float(rng.uniform(0.006, 0.02)), albedo, dst=albedo)
    gains = rng.uniform(0.9, 1.1, 3) * (exposure * 255.0)  # white balance, exposure, to grey levels
    illum3 = cv2.resize(illum[..., None] * gains.astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR)
    cv2.multiply(albedo, illum3, dst=albedo)
    out = cv2.convertScaleAbs(albedo)  # saturating; values are >= 0 but for noise at the rim
    aperture = cv2.multiply(trans, cv2.merge([fov, fov, fov]), scale=1.0 / 255.0)  # black outside the field
    out = cv2.multiply(out, aperture, scale=1.0 / 255.0)
    gamma = np.clip(255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.85, 1.15), 0, 255)
    out = cv2.LUT(out, gamma.astype(np.uint8))
    inside = (fov >= 128).astype(np.uint8)
    meta = {
        "eye": side, "size": S,
        "fov": [round(e.cx, 2), round(e.cy, 2), round(R, 2)],
        "fovea": [round(e.fx, 2), round(e.fy, 2)],
        "disc": [round(e.dx, 2), round(e.dy, 2), round(e.rd, 2)],
        "cdr": round(float(cdr), 3), "exposure": round(exposure, 3),
        "severity": {k: round(v, 3) for k, v in sev.items()},
    }
    return SynthImage(out, masks.finish(inside), labs, "fundus", meta)


# --------------------------------------------------------------------------- OCT

# Layers from the top of the B-scan down; the boundary i separates layer i and i+1.
_OCT_LAYERS = ("vitreous", "nfl", "gcl", "ipl", "inl", "opl", "onl", "elm", "is", "ez", "oz", "rpe",
               "drusen", "choroid", "sclera")
_L = {n: i for i, n in enumerate(_OCT_LAYERS)}
# Relative reflectivity of each layer.
_OCT_REFLECT = np.array([0.03, 0.78, 0.38, 0.55, 0.2, 0.5, 0.13, 0.5, 0.22, 0.88, 0.4, 0.95,
                         0.5, 0.55, 0.18], np.float32)
# Thickness of each retinal layer (nfl .. rpe) away from the fovea, as a fraction of the scan height.
_OCT_THICK = {"nfl": 0.018, "gcl": 0.024, "ipl": 0.02, "inl": 0.022, "opl": 0.014, "onl": 0.05,
              "elm": 0.004, "is": 0.012, "ez": 0.009, "oz": 0.009, "rpe": 0.016}


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def generate_oct(
    rng: np.random.Generator,
    labels: Sequence[str] | str = (),
    width: int = 512,
    height: int = 224,
    *,
    eye: str | None = None,
    severity: Mapping[str, float] | None = None,
    severity_range: tuple[float, float] = (0.15, 1.0),
    with_masks: bool = True,
) -> SynthImage:
    """Draw one horizontal macular OCT B-scan through the fovea (grayscale uint8, ``height x width``).

    Layers (NFL .. RPE, choroid), a foveal pit and speckle; class findings at
    their sites (see the module docstring). Arguments as :func:`generate_fundus`.
    """
    labs = _check_labels(labels)
    if not (32 <= width <= 4096 and 32 <= height <= 4096):
        raise ConfigError(f"OCT size must be in 32..4096 pixels a side, got {width}x{height}")
    side = _check_eye(rng, eye)
    sev = _severities(rng, labs, severity, severity_range)
    H, W = height, width
    x = np.arange(W, dtype=np.float32)
    xn = x / W
    xf = W * (0.5 + rng.uniform(-0.06, 0.06))
    nasal = 1.0 if side == "right" else -1.0  # nasal side (thicker NFL) is to the right for a right eye
    scale = rng.uniform(0.85, 1.15) * H
    t = {k: np.full(W, v * scale, np.float32) for k, v in _OCT_THICK.items()}
    # foveal pit: inner layers vanish at the centre, ganglion cells pile up around it, ONL thickens
    pit_sigma = rng.uniform(0.045, 0.065) * W
    pit = _gauss(x, xf, pit_sigma)
    dme = sev.get("dme")
    pit_depth = rng.uniform(0.9, 1.0) * (1.0 - 0.75 * dme if dme is not None else 1.0)
    for k in ("nfl", "gcl", "ipl", "inl", "opl"):
        t[k] *= 1.0 - pit_depth * pit
    ring = _gauss(np.abs(x - xf), 0.11 * W, 0.05 * W)
    t["gcl"] *= 1.0 + 0.7 * ring
    t["inl"] *= 1.0 + 0.3 * ring
    t["onl"] *= 1.0 + 0.6 * pit
    t["nfl"] *= 1.0 + 0.9 * np.clip((x - xf) * nasal / (0.5 * W), -0.6, 1.0)
    masks = _Masks((H, W), labs, with_masks)

    if dme is not None:
        thick = _gauss(x, xf + rng.normal(0, 0.02) * W, rng.uniform(0.09, 0.14) * W)
        for k, gain in (("inl", 1.5), ("onl", 2.0), ("opl", 0.8)):
            t[k] *= 1.0 + gain * dme * thick
    if "glaucoma" in sev:
        g = sev["glaucoma"]
        t["nfl"] *= 1.0 - 0.8 * g
        t["gcl"] *= 1.0 - 0.5 * g
    rp = sev.get("rp")
    if rp is not None:
        island = (0.32 - 0.22 * rp) * W
        loss = _smoothstep((np.abs(x - xf) - island) / (0.06 * W))
        for k in ("elm", "is", "ez", "oz"):
            t[k] *= 1.0 - loss
        t["onl"] *= 1.0 - (0.5 + 0.3 * rp) * loss
    hole = sev.get("macular_hole")
    if hole is not None:
        hw = (0.025 + 0.03 * hole) * W
        cuff = _gauss(np.abs(x - xf), hw * 1.5, hw * 0.8)
        for k in ("inl", "onl", "opl"):
            t[k] *= 1.0 + 1.2 * cuff
    drusen = np.zeros(W, np.float32)
    if "amd" in sev:
        a = sev["amd"]
        for _ in range(1 + int(round(4 * a * rng.uniform(0.6, 1.2)))):
            c = xf + float(np.clip(rng.normal(0.0, 0.08), -0.18, 0.18)) * W  # clustered at the fovea
            half = rng.uniform(0.02, 0.06) * W
            h = rng.uniform(0.012, 0.03) * H * (0.5 + a)
            drusen = np.maximum(drusen, h * np.sqrt(np.clip(1.0 - ((x - c) / half) ** 2, 0, None)))

    # boundaries (top to bottom); Bruch's membrane is the reference curve
    bm = H * rng.uniform(0.58, 0.72) + H * rng.uniform(0.0, 0.5) * (xn - 0.5) ** 2 \
        + H * rng.uniform(-0.12, 0.12) * (xn - 0.5)
    ch_thick = rng.uniform(0.08, 0.14) * H * (1.0 + 0.2 * _smooth_field(rng, 6, (1, W))[0])
    bounds = [bm + ch_thick, bm, bm - drusen]
    y_top = bm - drusen
    for k in ("rpe", "oz", "ez", "is", "elm", "onl", "opl", "inl", "ipl", "gcl", "nfl"):
        y_top = y_top - t[k]
        bounds.append(y_top)
    b = np.stack(bounds[::-1]).astype(np.float32)  # (14, W): ILM first
    yy = (np.arange(H, dtype=np.float32) + 0.5)[:, None]
    idx = np.zeros((H, W), np.uint8)
    for row in b:
        idx += yy >= row[None, :]
    refl = _OCT_REFLECT * rng.uniform(0.9, 1.1, len(_OCT_REFLECT)).astype(np.float32)
    img = refl[idx]
    # choroid: vessel lumens (dark blobs) and signal decay with depth
    lumen = _smooth_field(rng, 24, (H, W))
    below = np.maximum(yy - bm[None, :], 0.0)
    img *= np.where(idx == _L["choroid"], 1.0 - 0.45 * np.clip(lumen, 0.0, 1.5), 1.0)
    img *= np.exp(-below / (rng.uniform(0.12, 0.2) * H))
    # retinal vessels in the inner retina cast shadows down to the choroid
    for _ in range(int(rng.integers(2, 6))):
        vx = float(rng.uniform(0.05, 0.95) * W)
        if abs(vx - xf) < 0.1 * W:
            continue
        vw = rng.uniform(0.006, 0.012) * W
        vy = float(np.interp(vx, x, b[_L["nfl"]]) + 0.3 * float(np.interp(vx, x, t["gcl"])))
        shadow = 1.0 - 0.6 * _gauss(x, vx, vw)
        img *= np.where(yy > vy + vw * 0.5, shadow[None, :], 1.0)
        cv2.ellipse(img, _pt(vx, vy), (int(vw * _ONE), int(0.6 * vw * _ONE)), 0, 0, 360, 0.85, -1, cv2.LINE_AA, _SHIFT)

    ilm, opl_bottom = b[0], b[_L["opl"]]
    inner_top = b[_L["gcl"] - 1]  # NFL/GCL boundary
    if dme is not None:
        n = 2 + int(round(10 * dme * rng.uniform(0.7, 1.3)))
        for _ in range(n):
            cx = float(xf + rng.uniform(-0.15, 0.15) * W)
            lo, hi = float(np.interp(cx, x, b[_L["inl"] - 1])), float(np.interp(cx, x, b[_L["onl"]]))
            if hi - lo < 3:
                continue
            cy = rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo))
            ry = rng.uniform(0.15, 0.35) * (hi - lo) * (0.6 + 0.6 * dme)
            rx = ry * rng.uniform(0.8, 1.8)
            cv2.ellipse(img, _pt(cx, cy), (int(rx * _ONE), int(ry * _ONE)), 0, 0, 360, 0.02, -1, cv2.LINE_AA, _SHIFT)
            masks.ellipse("dme", cx, cy, rx + 2, ry + 2, 0)
        zone = thick * dme > 0.15
        masks.region("dme", (slice(0, H), slice(0, W)),
                     zone[None, :] & (yy >= ilm[None, :]) & (yy < b[_L["rpe"] - 1][None, :]))
    if "dr" in sev:
        d = sev["dr"]
        for _ in range(4 + int(round(22 * d * rng.uniform(0.7, 1.3)))):
            cx = float(xf + rng.uniform(-0.35, 0.35) * W)
            lo, hi = float(np.interp(cx, x, inner_top)), float(np.interp(cx, x, opl_bottom))
            if hi - lo < 2:
                continue
            cy = rng.uniform(lo, hi)
            r = rng.uniform(0.003, 0.006) * W
            cv2.circle(img, _pt(cx, cy), max(1, int(r * _ONE)), float(rng.uniform(0.8, 1.0)), -1, cv2.LINE_AA, _SHIFT)
            masks.circle("dr", cx, cy, r + 3)
    if "glaucoma" in sev:
        masks.region("glaucoma", (slice(0, H), slice(0, W)),
                     (yy >= ilm[None, :] - 2) & (yy < b[_L["ipl"] - 1][None, :] + 2))
    if rp is not None:
        zone = loss > 0.5
        masks.region("rp", (slice(0, H), slice(0, W)),
                     zone[None, :] & (yy >= b[_L["onl"] - 1][None, :]) & (yy < b[_L["rpe"]][None, :]))
        for _ in range(int(10 + 30 * rp)):  # migrated pigment: hyperreflective clumps in the outer retina
            cx = float(rng.uniform(0, W))
            if abs(cx - xf) < island + 0.03 * W:
                continue
            cy = float(np.interp(cx, x, b[_L["rpe"] - 1])) - rng.uniform(0, 0.02) * H
            cv2.circle(img, _pt(cx, cy), int(rng.uniform(1, 2.5) * _ONE), 1.0, -1, cv2.LINE_AA, _SHIFT)
    if "amd" in sev:
        zone = drusen > 0.7
        masks.region("amd", (slice(0, H), slice(0, W)),
                     zone[None, :] & (yy >= b[_L["rpe"] - 1][None, :] - 2) & (yy < bm[None, :] + 2))
    if hole is not None:
        base_y = float(np.interp(xf, x, b[_L["rpe"] - 1]))  # top of the RPE stays intact
        top_y = float(min(np.interp(xf - 2 * hw, x, ilm), np.interp(xf + 2 * hw, x, ilm))) - 2
        top_hw = hw * rng.uniform(0.4, 0.8)
        poly = np.array([[xf - top_hw, top_y], [xf + top_hw, top_y], [xf + hw, base_y], [xf - hw, base_y]])
        cv2.fillPoly(img, [np.round(poly * _ONE).astype(np.int32)], float(_OCT_REFLECT[0]), cv2.LINE_AA, _SHIFT)
        for sgn in (-1, 1):  # cystic edges
            cx = xf + sgn * hw * rng.uniform(1.2, 1.8)
            cy = float(np.interp(cx, x, b[_L["opl"]])) + 2
            cv2.ellipse(img, _pt(cx, cy), (int(0.4 * hw * _ONE), int(0.25 * hw * _ONE)), 0, 0, 360, 0.03,
                        -1, cv2.LINE_AA, _SHIFT)
        if rng.random() < 0.5:  # operculum floating above the hole
            cv2.ellipse(img, _pt(xf, top_y - rng.uniform(0.03, 0.08) * H), (int(top_hw * _ONE), int(2 * _ONE)),
                        0, 0, 360, 0.6, -1, cv2.LINE_AA, _SHIFT)
        if masks.enabled:
            m = masks.maps["macular_hole"]
            cv2.fillPoly(m, [np.round(poly * _ONE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
            masks.ellipse("macular_hole", xf, 0.5 * (top_y + base_y), 2.0 * hw, 0.5 * (base_y - top_y) + 2, 0)

    # optics and detector: axial blur, speckle, noise floor, log-like display curve
    img = np.asarray(cv2.GaussianBlur(img, (3, 5), sigmaX=0.6, sigmaY=1.0))
    img *= _noise_crop(rng, H, W, 1, "speckle")
    img += np.abs(_noise_crop(rng, H, W, 1, "normal")) * np.float32(rng.uniform(0.03, 0.06))
    gain = rng.uniform(0.75, 1.05) * 255.0
    np.multiply(img, np.float32(gain), out=img)
    np.clip(img, 0, 255, out=img)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.55, 0.8), 0, 255).astype(np.uint8)
    out = cv2.LUT(img.astype(np.uint8), lut)
    meta = {"eye": side, "width": W, "height": H, "fovea_x": round(float(xf), 2),
            "severity": {k: round(v, 3) for k, v in sev.items()}}
    return SynthImage(out, masks.finish(), labs, "oct", meta)


# --------------------------------------------------------------------------- dataset


def _stream(seed: int, modality: str, index: int, purpose: int) -> np.random.Generator:
    # purpose 0: labels (cheap to recompute on resume), 1: pixels
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(MODALITIES.index(modality), index, purpose)))


@dataclass(frozen=True)
class _Job:
    modality: str
    index: int
    labels: tuple[str, ...]
    eye: str
    patient: str
    image: str  # relative paths
    masks: str  # '' when no mask file


def _jobs(config: SynthConfig, n_fundus: int, n_oct: int, write_masks: bool) -> list[_Job]:
    jobs = []
    for modality, n in (("fundus", n_fundus), ("oct", n_oct)):
        ext = config.fundus_format if modality == "fundus" else "png"
        for i in range(n):
            labels = sample_labels(_stream(config.seed, modality, i, 0), config)
            stem = f"{modality[0]}{i:06d}"
            jobs.append(_Job(
                modality, i, labels,
                eye=EYES[i % 2], patient=f"{modality[0].upper()}{config.seed}-{i // 2:05d}",
                image=f"{modality}/{stem}.{ext}",
                masks=f"masks/{stem}.npz" if write_masks and labels else "",
            ))
    return jobs


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Compressed ``.npz`` bytes readable by ``np.load``, byte-identical for identical arrays.

    ``np.savez_compressed`` stamps the current time into the zip entries, so
    the same masks would give different files on every run.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, arr.getvalue(), compresslevel=6)
    return buf.getvalue()


def _render(job: _Job, config: SynthConfig, out_dir: Path) -> None:
    rng = _stream(config.seed, job.modality, job.index, 1)
    want_masks = bool(job.masks)
    sev = config.severity
    if job.modality == "fundus":
        im = generate_fundus(rng, job.labels, config.size, eye=job.eye, severity_range=sev, with_masks=want_masks)
        bgr = cv2.cvtColor(im.image, cv2.COLOR_RGB2BGR)
        if config.fundus_format == "jpg":
            ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        else:
            ok, enc = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        h, w = config.oct_shape
        im = generate_oct(rng, job.labels, w, h, eye=job.eye, severity_range=sev, with_masks=want_masks)
        ok, enc = cv2.imencode(".png", im.image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array
        raise RuntimeError(f"OpenCV could not encode {job.image}")
    # masks first: an image file on disk means its row is complete
    if want_masks:
        write_bytes(out_dir / job.masks, npz_bytes(im.masks))
    write_bytes(out_dir / job.image, enc.tobytes())


def _render_many(jobs: Sequence[_Job], config: SynthConfig, out_dir: str) -> int:
    cv2.setNumThreads(1)
    for job in jobs:
        _render(job, config, Path(out_dir))
    return len(jobs)




def _chunks(seq: Sequence[_Job], n: int) -> Iterator[Sequence[_Job]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _settings_difference(old: Any, new: Any, prefix: str = "") -> str:
    """The settings that differ, as ``name X there, Y now`` (the first four), for a one-line refusal."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{prefix or 'settings'} {json.dumps(old)} there, {json.dumps(new)} now"
    parts = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            name = f"{prefix}.{k}" if prefix else str(k)
            parts.append(_settings_difference(old.get(k), new.get(k), name)
                         if isinstance(old.get(k), dict) and isinstance(new.get(k), dict)
                         else f"{name} {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now")
    shown = "; ".join(parts[:4])
    return shown + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


def make_dataset(
    out_dir: str | os.PathLike[str],
    n_fundus: int,
    n_oct: int = 0,
    config: SynthConfig | None = None,
    *,
    write_masks: bool = True,
    workers: int = 1,
    progress: bool | None = None,
) -> Path:
    """Generate a dataset folder and return the path of its ``labels.csv``.

    Layout: ``fundus/f000000.jpg`` (or .png), ``oct/o000000.png``,
    ``masks/<stem>.npz`` (one uint8 array per class present; none for normal
    images), ``synth_config.json`` and ``labels.csv`` with columns
    ``path,patient,eye,modality,labels,masks`` (paths relative to the CSV;
    ``labels`` ';'-joined, ``normal`` when none; ``masks`` empty when none).
    Images are paired into patients (right eye, left eye).

    Byte-identical for the same config whatever ``workers``. Resumable: files
    already on disk are kept (they are written atomically, so a file present is
    complete), and a rerun over a complete folder does nothing. A folder made
    with other settings is refused rather than mixed.
    """
    cfg = config or SynthConfig()
    for name, n in (("n_fundus", n_fundus), ("n_oct", n_oct)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {n!r}")
    if n_fundus + n_oct == 0:
        raise ConfigError("make_dataset needs n_fundus + n_oct >= 1, got 0 images to generate")
    check_parallelism("workers", workers)
    out = Path(out_dir)
    settings = {"generator_version": GENERATOR_VERSION, "n_fundus": int(n_fundus), "n_oct": int(n_oct),
                "write_masks": bool(write_masks), "config": cfg.to_dict()}
    settings_path, csv_path = out / "synth_config.json", out / "labels.csv"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; expected a new or empty folder")
    if settings_path.exists():
        try:
            old = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{settings_path} is unreadable ({exc}); delete the folder or choose another --out") from exc
        new = json.loads(json.dumps(settings))
        if old != new:
            raise ConfigError(
                f"{out} already holds a synthetic dataset made with other settings ({settings_path}: "
                f"{_settings_difference(old, new)}). Choose another output folder or delete this one."
            )
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no synth_config.json; choose an empty or new folder")

    jobs = _jobs(cfg, n_fundus, n_oct, write_masks)
    todo = [j for j in jobs if not (out / j.image).exists() or (j.masks and not (out / j.masks).exists())]
    if not todo and csv_path.exists():
        log.info("%s is complete (%d images); nothing to do", out, len(jobs))
        return csv_path
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, settings)
    log.info("generating %d of %d synthetic images in %s (%d worker(s))", len(todo), len(jobs), out, workers)
    bar = progress_bars.bar(total=len(todo), desc="synth", unit="img", show=progress is not False,
                            terminal_only=progress is None)  # --progress forces it, as uopsl-screen run's does
    try:
        if workers == 1 or len(todo) < 8:
            cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for job in todo:
                    _render(job, cfg, out)
                    bar.update(1)
            finally:
                cv2.setNumThreads(cv2_threads)
        else:
            # spawn, not fork: the caller may hold torch/OpenMP threads, which fork can deadlock
            chunk = max(1, min(32, len(todo) // (4 * workers)))
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_render_many, part, cfg, str(out)) for part in _chunks(todo, chunk)]
                for fut in as_completed(futures):
                    done = fut.result()
                    bar.update(done)
    finally:
        bar.close()
    with atomic_open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for j in jobs:
            writer.writerow([j.image, j.patient, j.eye, j.modality, label_string(j.labels), j.masks])
    log.info("wrote %s (%d rows)", csv_path, len(jobs))
    return csv_path


def load_masks(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a site-mask ``.npz`` written by :func:`make_dataset` (class name -> uint8 HxW)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
