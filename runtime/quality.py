"""Quality gate: is a preprocessed fundus photograph gradable, and if not, why.

The screening pipeline calls :func:`assess` on every image after
:func:`uopsl.runtime.preprocess.preprocess` (and :func:`assess_error` on every
input that failed before it), so every input ends as a row with a verdict. The
gate reuses what preprocessing computed (the cropped model input, the FOV
geometry and fill, the mean FOV intensity) and measures the rest on a fixed
``WORK_SIDE`` x ``WORK_SIDE`` copy of the model input, so the figures do not
depend on the camera's resolution (noise, and sharpness a little, still depend
on the model's input size: the defaults were calibrated at 320). It costs about
1.3 ms of one CPU core per image at model size 224 and 1.7 ms at 320 (x86, one
thread; ``benchmarks/bench_preprocess.py``), and session 44's per-tile sharpness
added about 0.2 ms to that. With CLAHE on, it measures the
model input before CLAHE (``Preprocessed.unenhanced``).

Reasons (machine tags, in this order):

- ``no_fov``: no circular field of view was found, or less than
  ``min_fov_fill`` of the fitted circle is lit.
- ``several_fov``: the image holds more than one field of view of comparable
  size (both eyes side by side, a montage): the model input would show only
  the largest one, so a finding in the other eye would go unseen.
- ``too_dark`` / ``too_bright``: mean FOV intensity (0-255, RGB mean) outside
  ``[min_brightness, max_brightness]``.
- ``low_contrast``: standard deviation of the luminance of the lit field below
  ``min_contrast`` (a flat, washed-out field: haze, cataract, a fogged lens;
  also any nearly black one).
- ``blurred``: sharpness below ``min_sharpness``. Sharpness is the variance of
  the Laplacian of the green channel (smoothed, sigma 1.5 working pixels) on
  the lit retina, divided by the variance of the green channel's detail band
  (green minus its sigma-4 blur), both after subtracting what the estimated
  noise contributes. The ratio makes it independent of exposure and contrast:
  the raw Laplacian variance of a sharp but dark photograph is far below that
  of a blurred bright one (TVHL spans 1 to 340), so it cannot tell blur from
  exposure. The smoothing and the noise correction keep JPEG and camera noise
  from passing for detail. The raw figure is still reported as
  ``laplacian_var``. Because one ratio over the whole field is set by its
  strongest structures, a single sharp edge (a shadow's border) made a
  blurred photograph read as sharp (session 44: 239 of 256 blurred TVHL
  copies with one sharp shadow edge passed; 28 do now). So the same ratio
  is also taken per tile of an 8 x 8 grid over the measuring region, tiles
  with no detail above the noise left out, and the photograph is
  ``blurred`` when either the whole field's ratio or the tiles' figure
  (``sharpness_tiles``: the ratio a third of the way up the tiles' sorted
  ratios) is below the threshold. A blurred field stays blurred in most
  tiles whatever one edge does to a few, and a sharp photograph is sharp in
  more than two thirds of them (every gradable TVHL photograph and every
  synthetic one).
- ``noisy``: estimated noise standard deviation (Immerkaer's operator on the
  green channel, 0-255, at the working resolution) above ``max_noise``.
- ``grayscale``: colourfulness below ``min_colourfulness``: a colour fundus
  photograph is red-orange; a grayscale image (an OCT B-scan, a red-free
  photograph, a scanned print) is not what the model was trained on.
- ``not_fundus_colour``: the lit field's mean red over its mean blue is below
  ``min_red_blue`` (not judged on a field too dark to show colour). The retina is red-orange in every colour fundus camera;
  a blue-dominant picture is either one whose channels came in BGR order (an
  array from OpenCV's ``cv2.imread``, passed as if it were RGB) or not a
  fundus photograph at all (a review screened a night sky as ``ok`` and got
  a referral).
- ``too_small``: the original's short side is below ``min_side`` pixels.

The score is in [0, 1]: each criterion gives 0.5 exactly at its threshold,
rises to 1 at a comfortable margin past it and falls towards 0 beyond it (see
:func:`_margin_score`); the score is the worst criterion's. So
``gradable == (score >= 0.5) == (reasons == ())``. An image without a field of
view scores 0.

Default thresholds were calibrated on the 1058 TVHL fundus photographs
(``../shared/data/tvhl``, 512 px, two acquisition batches, one much darker)
and on degraded copies of them; see :class:`QualityConfig`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Callable

import cv2
import numpy as np

from uopsl.runtime.configs import config_from_dict
from uopsl.runtime.errors import ConfigError, ImageError
from uopsl.runtime.preprocess import Preprocessed, resize_square

# Side of the square copy of the model input on which texture is measured.
WORK_SIDE = 256
# Texture (sharpness, noise) is measured on the lit retina only: inside the FOV
# shrunk to _INNER of its radius (the rim is vignetted and catches flare), away
# from unlit parts (a camera's black corner mask, deep shadows: darker than
# _UNLIT x the mean FOV luminance). Elsewhere, beyond _FILL of the radius and
# on unlit pixels, the green channel is replaced by its mean before filtering,
# and the measured region keeps _ERODE pixels away from those replaced pixels,
# so no artificial step reaches the filters.
_INNER = 0.85
_FILL = 0.95
_UNLIT = 0.25
_ERODE = 6
# Smoothing before the Laplacian and the blur that defines the detail band (working pixels),
# chosen on TVHL: vessels (2-6 working pixels wide) dominate both bands.
_SHARP_PRE_SIGMA = 1.5
_SHARP_DETAIL_SIGMA = 4.0
# Sharpness per tile: an 8 x 8 grid of the working image (32 px tiles at WORK_SIDE 256). A tile counts when at
# least half of it lies in the measuring region; the tiles' figure is the ratio a third of the way up their
# sorted ratios (a lower quartile flagged 1 of 620 sharp synthetic photographs, whose sparse vessels leave
# tiles of smooth background).
_TILES = 8
_TILE_RANK = 1.0 / 3.0  # of the way up the sorted tile ratios
_MIN_TILES = 8
# Immerkaer (1996) noise operator: the difference of two Laplacians cancels image structure to first order.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def _smoothed_laplacian(x: np.ndarray) -> np.ndarray:
    return cv2.Laplacian(cv2.GaussianBlur(x, (0, 0), _SHARP_PRE_SIGMA), cv2.CV_32F, ksize=1)


def _detail(x: np.ndarray) -> np.ndarray:
    return x - cv2.GaussianBlur(x, (0, 0), _SHARP_DETAIL_SIGMA)


def _noise_gain(band: Callable[[np.ndarray], np.ndarray]) -> float:
    """Variance a filter passes from unit white noise (sum of its squared impulse response)."""
    impulse = np.zeros((65, 65), np.float32)
    impulse[32, 32] = 1.0
    return float((band(impulse).astype(np.float64) ** 2).sum())


# Camera and JPEG noise passes through both bands of the sharpness ratio; a blurred
# but noisy photo would look sharp. These gains let measure() subtract it.
_LAPLACIAN_NOISE_GAIN = _noise_gain(_smoothed_laplacian)
_DETAIL_NOISE_GAIN = _noise_gain(_detail)

#: Every reason tag :func:`assess` can give, in reporting order.
REASONS = ("no_fov", "several_fov", "too_dark", "too_bright", "low_contrast", "blurred", "noisy", "grayscale",
           "not_fundus_colour", "too_small")


#: A gradable photograph's score below this is shown as near the gate's limit (the report says to check it).
#: A check's sub-score is 0.5 at its threshold and 1.0 at its comfortable margin (:func:`assess`), so 0.6 is a
#: photograph whose weakest measure lies in the first fifth of that margin (dark TVHL photographs that a grader
#: would call poor pass the gate there: 38 of 574 gradable ones in a 600-photograph run, session 53).
BORDERLINE_SCORE = 0.6


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality gate, with the TVHL figures behind each default.

    With these defaults 1022 of the 1058 TVHL photographs (96.6 %) are
    gradable. 35 of the 36 flagged photographs come from the dark early DME
    batch, nearly all nearly black or hazy without visible vessels (one false
    'blurred': 0068_OD_f_1, a bright field with large exudates); the 36th is
    the OCT B-scan filed among the DR-graded ones (``no_fov``, ``grayscale``).

    min_fov_fill: least fraction of the FOV circle that must be lit. Real TVHL
        photographs reach down to 0.77 (a field with a dark, under-exposed
        quarter that is still gradable elsewhere); below 0.75 too much of the
        retina is missing.
    min_brightness: least mean FOV intensity (0-255). TVHL's early DME batch
        is dark (mean about 46) and its darkest photographs read 4-9: stretched,
        they show JPEG blocks and no vessels. From about 10 the vessels and the
        disc are recoverable. Flags 21 TVHL photographs (2 %).
    max_brightness: largest mean FOV intensity. The brightest real TVHL
        photograph reads 169; an over-exposed field (x2.5 + 40) reads 190-240.
    min_contrast: least standard deviation of the lit field's luminance
        (0-255). TVHL: median 16, 1st percentile 2.8 (nearly black fields);
        a hazy copy (field pulled 90 % towards its mean colour) reads 1.5-3.4.
    min_sharpness: least noise-corrected Laplacian-to-detail energy ratio
        (see the module docstring). TVHL spans 0.028-0.063 (median 0.052); the
        12 below 0.037 (1.1 %) are mostly hazy fields without visible vessels.
        Copies blurred with sigma = 1.5 % of the short side fall below it for
        all DR-graded photographs and about 80 % of the dark DME ones (their
        detail is already near the noise floor).
    max_noise: largest estimated noise sigma (0-255) at the working
        resolution. TVHL: at most 1.5; Gaussian noise of sigma 25 added to the
        512 px photograph reads 2.6-4.1.
    min_colourfulness: least mean chroma (max-min over RGB) over the mean RGB
        intensity of the lit field. TVHL photographs: at least 0.19; a
        grayscale image: 0.
    min_red_blue: least mean red over mean blue of the lit field. TVHL: at
        least 0.87 on every gradable photograph (median 2.93; below 0.8 only
        on four nearly black ones, which are too dark to judge); the
        synthetic photographs 3.2 and above. The same photographs decoded by
        OpenCV and passed as RGB (BGR order): flagged for 98.6 % of TVHL's
        (1,023 of the 1,037 not too dark) and every synthetic one
        (``benchmarks/check_colour_gate.py``).
    min_side: least short side of the original image in pixels: a 1000 px
        camera frame downscaled 4x; below it microaneurysms vanish.
    """

    min_fov_fill: float = 0.75
    min_brightness: float = 10.0
    max_brightness: float = 180.0
    min_contrast: float = 3.5
    min_sharpness: float = 0.037
    max_noise: float = 2.0
    min_colourfulness: float = 0.1
    min_side: int = 256
    min_red_blue: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_fov_fill <= 1.0:
            raise ConfigError(f"min_fov_fill must be in [0, 1], got {self.min_fov_fill}")
        if not 0.0 < self.min_brightness < self.max_brightness < 255.0:
            raise ConfigError(
                "need 0 < min_brightness < max_brightness < 255, got "
                f"{self.min_brightness} and {self.max_brightness}"
            )
        for name in ("min_contrast", "min_sharpness", "max_noise", "min_colourfulness", "min_red_blue"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_side < 1:
            raise ConfigError(f"min_side must be >= 1 pixel, got {self.min_side}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> QualityConfig:
        return config_from_dict(cls, d, "quality")


@dataclass(frozen=True)
class QualityVerdict:
    """The gate's decision on one image.

    gradable: no reason was found. score: 0-1, >= 0.5 exactly when gradable.
    reasons: machine tags from :data:`REASONS` (or an :class:`ImageError`'s
    ``reason`` for inputs that failed before the gate). metrics: the measured
    figures, by name, for reports and recalibration.
    """

    gradable: bool
    score: float
    reasons: tuple[str, ...]
    metrics: dict[str, float]


def _margin_score(value: float, threshold: float, comfortable: float) -> float:
    """0.5 at ``threshold``, 1 at ``comfortable``, linear in log(value) between, clipped to [0, 1].

    Works for lower bounds (comfortable > threshold) and upper bounds
    (comfortable < threshold) alike. Log scale because the metrics are ratios
    of energies or intensities.
    """
    lv, lt, lc = (math.log(max(x, 1e-12)) for x in (value, threshold, comfortable))
    return min(1.0, max(0.0, 0.5 + 0.5 * (lv - lt) / (lc - lt)))


@functools.lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _working_image(pre: Preprocessed) -> np.ndarray:
    img = pre.unenhanced if pre.unenhanced is not None else pre.image
    return img if img.shape[0] == WORK_SIDE else resize_square(img, WORK_SIDE)


def _masked_sums(x: np.ndarray, mask: np.ndarray) -> tuple[float, ...]:
    """Per-channel sums of ``x`` where the uint8 ``mask`` is set (exact integers for uint8 ``x``).

    Zeroing the rest (``bitwise_and``) and summing everything runs in SIMD;
    OpenCV's masked reductions (``cv2.mean(x, mask=...)``) are scalar loops,
    ~6x slower here, and numpy's ``x[mask]`` copies the selected pixels first.
    """
    sums = cv2.sumElems(cv2.bitwise_and(x, x, mask=mask))
    return tuple(float(v) for v in sums[: 1 if x.ndim == 2 else x.shape[2]])


def _masked_moments(x: np.ndarray, mask: np.ndarray, count: int) -> tuple[float, float]:
    """Mean and variance of a one-channel map over the ``count`` pixels where ``mask`` is set.

    Sums accumulate in double, so the figures agree with numpy's float32
    ``x[mask].mean()`` / ``.var()`` to ~1e-7 relative (the maps here have small means).
    """
    return _masked_map_moments(x, mask, count)[:2]


def _masked_map_moments(x: np.ndarray, mask: np.ndarray, count: int) -> tuple[float, float, np.ndarray]:
    """:func:`_masked_moments` and the masked map itself (``x`` where ``mask`` is set, 0 elsewhere)."""
    y = cv2.bitwise_and(x, x, mask=mask)
    mean = cv2.sumElems(y)[0] / count
    return mean, max(cv2.norm(y, cv2.NORM_L2SQR) / count - mean * mean, 0.0), y


def _tile_sharpness(lap: np.ndarray, detail: np.ndarray, inner: np.ndarray, noise: float,
                    whole: float) -> float:
    """The noise-corrected Laplacian-to-detail ratio a third of the way up the grid's tiles' ratios.

    ``lap`` and ``detail`` are already 0 outside the uint8 mask ``inner``. Tile means come from OpenCV's area
    shrink to the grid (an exact box average at an integer factor; numpy's blocked sums took ~20x longer);
    the maps have means near 0, so float32 moments lose nothing that matters. Tiles without detail above
    the noise are left out: they hold no evidence either way (a drawn picture's flat background would
    otherwise read as blur), and with fewer than ``_MIN_TILES`` tiles left the whole field's figure stands.
    """
    side = lap.shape[0] - lap.shape[0] % _TILES

    def tile_mean(x: np.ndarray) -> np.ndarray:
        return cv2.resize(x[:side, :side], (_TILES, _TILES), interpolation=cv2.INTER_AREA).astype(np.float64)

    fill = tile_mean(inner.astype(np.float32))
    keep = fill >= 0.5
    if int(np.count_nonzero(keep)) < _MIN_TILES:
        return whole

    def tile_var(y: np.ndarray) -> np.ndarray:
        mean = tile_mean(y)[keep] / fill[keep]
        return np.maximum(tile_mean(cv2.multiply(y, y))[keep] / fill[keep] - mean * mean, 0.0)

    lap_energy = tile_var(lap) - _LAPLACIAN_NOISE_GAIN * noise**2
    detail_energy = tile_var(detail) - _DETAIL_NOISE_GAIN * noise**2
    structured = detail_energy > 1e-6
    if int(np.count_nonzero(structured)) < _MIN_TILES:
        return whole
    ratios = np.sort(np.maximum(lap_energy[structured], 0.0) / detail_energy[structured])
    # numpy's default (linear) percentile, by hand: np.percentile costs ~0.15 ms on a few dozen values.
    pos = (ratios.size - 1) * _TILE_RANK
    lo = int(pos)
    hi = min(lo + 1, ratios.size - 1)
    return float(ratios[lo] + (ratios[hi] - ratios[lo]) * (pos - lo))


def measure(pre: Preprocessed) -> dict[str, float]:
    """Every figure the gate judges, by name (see :class:`QualityConfig` for their meaning).

    Masked statistics are sums over masked copies (see :func:`_masked_sums`)
    rather than numpy boolean indexing: those of uint8 images are exact, those
    of the float32 filter outputs agree with numpy's float32 reductions to ~1e-7.
    """
    g = pre.geometry
    img = _working_image(pre)
    fov, field, inner_circle = g.fov_masks(WORK_SIDE, (1.0, _FILL, _INNER))
    if not fov.any():  # degenerate geometry (the circle misses the frame): use the whole input
        fov = np.ones_like(fov)
    # Colour and contrast on the lit field inside _FILL of the radius: the
    # anti-aliased rim and a camera's black corner mask would otherwise dominate
    # the spread of a flat field.
    field = field & fov
    if not field.any():
        field = fov
    lum = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    n_field = int(np.count_nonzero(field))
    lum_mean = _masked_sums(lum, field.view(np.uint8))[0] / n_field
    # lum >= t for integer lum is lum >= ceil(t): an 8-bit compare (with the float, numpy casts lum to float64).
    lit = field & (lum >= math.ceil(max(1.0, _UNLIT * lum_mean)))
    # Opening drops specks; the extra erosion drops the blurred transition into unlit areas.
    lit = cv2.erode(cv2.morphologyEx(lit.view(np.uint8), cv2.MORPH_OPEN, _disk(2)), _disk(3)) > 0
    n_lit = int(np.count_nonzero(lit))
    fill, n_fill = (lit, n_lit) if n_lit >= 64 else (field, n_field)
    fill_u8 = fill.view(np.uint8)
    r, gr, b = cv2.split(img)  # OpenCV's per-pixel max/min are ~15x faster than numpy's axis reductions
    chroma = cv2.subtract(cv2.max(cv2.max(r, gr), b), cv2.min(cv2.min(r, gr), b))
    # Integer sums, so these two are exactly numpy's chroma[fill].mean() and img[fill].mean().
    channel_sums = _masked_sums(img, fill_u8)
    rgb_mean = sum(channel_sums) / (3 * n_fill)
    red_blue = channel_sums[0] / max(channel_sums[2], 1.0)
    colourfulness = (_masked_sums(chroma, fill_u8)[0] / n_fill) / max(rgb_mean, 1.0)
    contrast = math.sqrt(_masked_moments(lum, fill_u8, n_fill)[1])
    inner = inner_circle & (cv2.erode(fill_u8, _disk(_ERODE)) > 0)
    n_inner = int(np.count_nonzero(inner))
    if n_inner < 64:  # hardly any lit retina: measure what there is
        inner = fill = fov
        fill_u8, n_fill = fill.view(np.uint8), int(np.count_nonzero(fill))
        n_inner = n_fill
    inner_u8 = inner.view(np.uint8)
    # Outside the fill, green takes the fill's mean: numpy's float32 mean, which
    # for at most 256^2 uint8 values is the exact sum / count rounded to float32.
    green = gr.astype(np.float32)
    np.copyto(green, np.float32(_masked_sums(gr, fill_u8)[0] / n_fill), where=~fill)
    noise_map = cv2.filter2D(green, cv2.CV_32F, _NOISE_KERNEL)
    noise = math.sqrt(math.pi / 2.0) / 6.0 * _masked_sums(np.abs(noise_map), inner_u8)[0] / n_inner
    _, lap_var, lap = _masked_map_moments(_smoothed_laplacian(green), inner_u8, n_inner)
    _, detail_var, detail = _masked_map_moments(_detail(green), inner_u8, n_inner)
    lap_energy = lap_var - _LAPLACIAN_NOISE_GAIN * noise**2
    detail_energy = detail_var - _DETAIL_NOISE_GAIN * noise**2
    # No structure above the noise at all: nothing is sharp.
    sharpness = max(lap_energy, 0.0) / detail_energy if detail_energy > 1e-6 else 0.0
    sharpness_tiles = _tile_sharpness(lap, detail, inner_u8, noise, sharpness)
    raw_lap_var = _masked_moments(cv2.Laplacian(green, cv2.CV_32F, ksize=1), inner_u8, n_inner)[1]
    brightness = float(pre.mean_intensity)
    return {
        "fov_fill": float(g.fov_fill),
        "fov_count": float(g.fov_count),
        "brightness": brightness,
        "contrast": contrast,
        "sharpness": sharpness,
        "sharpness_tiles": sharpness_tiles,
        "laplacian_var": raw_lap_var,
        "noise": noise,
        "colourfulness": colourfulness,
        "red_blue": float(red_blue),
        "short_side": float(min(g.orig_h, g.orig_w)),
    }


def assess(pre: Preprocessed, config: QualityConfig | None = None) -> QualityVerdict:
    """Judge one preprocessed image; never raises for a bad image (bad config raises :class:`ConfigError`)."""
    cfg = config or QualityConfig()
    if not isinstance(cfg, QualityConfig):
        raise ConfigError(f"assess needs a QualityConfig or None, got {type(cfg).__name__}")
    m = measure(pre)
    c = cfg
    bad_colour = m["red_blue"] < c.min_red_blue and m["brightness"] >= c.min_brightness
    sharpness = min(m["sharpness"], m["sharpness_tiles"])  # the whole field's, or the tiles' when lower
    # (tag, failed, sub-score) per criterion; the comfortable margins are this module's choice.
    checks = [
        ("no_fov", not pre.geometry.fov_found or m["fov_fill"] < c.min_fov_fill,
         _margin_score(m["fov_fill"], c.min_fov_fill, 1.0) if pre.geometry.fov_found else 0.0),
        ("several_fov", pre.geometry.fov_count > 1, 0.0 if pre.geometry.fov_count > 1 else 1.0),
        ("too_dark", m["brightness"] < c.min_brightness,
         _margin_score(m["brightness"], c.min_brightness, 3.0 * c.min_brightness)),
        ("too_bright", m["brightness"] > c.max_brightness,
         _margin_score(m["brightness"], c.max_brightness, 0.75 * c.max_brightness)),
        ("low_contrast", m["contrast"] < c.min_contrast,
         _margin_score(m["contrast"], c.min_contrast, 2.0 * c.min_contrast)),
        ("blurred", sharpness < c.min_sharpness, _margin_score(sharpness, c.min_sharpness, 2.0 * c.min_sharpness)),
        ("noisy", m["noise"] > c.max_noise, _margin_score(m["noise"], c.max_noise, 0.5 * c.max_noise)),
        ("grayscale", m["colourfulness"] < c.min_colourfulness,
         _margin_score(m["colourfulness"], c.min_colourfulness, 2.0 * c.min_colourfulness)),
        # Pass or fail only: a colour balance says nothing about how gradable a fundus photograph is, so it
        # does not lower the score of one that passes. Not judged on a too-dark field, whose colour is JPEG
        # noise (four nearly black TVHL photographs read 0.67-0.79).
        ("not_fundus_colour", bad_colour,
         _margin_score(m["red_blue"], c.min_red_blue, 2.0 * c.min_red_blue) if bad_colour else 1.0),
        ("too_small", m["short_side"] < c.min_side, _margin_score(m["short_side"], c.min_side, 2.0 * c.min_side)),
    ]
    reasons = tuple(tag for tag, failed, _ in checks if failed)
    score = min(s for _, _, s in checks)
    if reasons:
        score = min(score, math.nextafter(0.5, 0.0))  # a failed check at its exact threshold
    return QualityVerdict(gradable=not reasons, score=float(score), reasons=reasons, metrics=m)


def assess_error(exc: ImageError) -> QualityVerdict:
    """The verdict for an input that could not be preprocessed (its tag is the error's ``reason``)."""
    reason = getattr(exc, "reason", None) or ImageError.reason
    return QualityVerdict(gradable=False, score=0.0, reasons=(str(reason),), metrics={})
