"""Quality gate: real TVHL photographs pass, degraded copies are flagged with the right reason."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from imagekit import SurveyRow, draw_fake_fundus
from uopsl.runtime.errors import (
    ConfigError,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
)
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess, read_bytes
from uopsl.runtime.quality import REASONS, QualityConfig, QualityVerdict, assess, assess_error, measure

OCT_FILED_AS_FUNDUS = "fundus/1258_OI_f_2.jpg"


def _jpeg(rgb: np.ndarray) -> bytes:
    """Re-encode like a camera would (quality 90), so degraded copies carry JPEG artefacts too."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _haze(rgb: np.ndarray) -> np.ndarray:
    """Flatten the field towards its mean colour (cataract / fogged lens), keeping the black surround."""
    g = preprocess(rgb).geometry
    yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    inside = (xx + 0.5 - g.cx) ** 2 + (yy + 0.5 - g.cy) ** 2 <= g.radius**2
    out = rgb.astype(np.float32)
    out[inside] = 0.1 * out[inside] + 0.9 * out[inside].mean(axis=0)
    return out.astype(np.uint8)


def _noise(rgb: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rgb + rng.normal(0.0, 25.0, rgb.shape), 0, 255).astype(np.uint8)


def _crop(rgb: np.ndarray) -> np.ndarray:
    """The central 60 %: retina to the edges, no field-of-view boundary left."""
    h, w = rgb.shape[:2]
    return rgb[h // 5 : h - h // 5, w // 5 : w - w // 5]


# name -> (degradation, the reason it must raise). Blur sigma 1.5 % of the short side (~8 px at 512).
DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "blurred": (lambda a: cv2.GaussianBlur(a, (0, 0), 0.015 * min(a.shape[:2])), "blurred"),
    "darkened": (lambda a: (a * 0.08).astype(np.uint8), "too_dark"),
    "over_exposed": (lambda a: np.clip(a.astype(np.float32) * 2.5 + 40, 0, 255).astype(np.uint8), "too_bright"),
    "cropped": (_crop, "no_fov"),
    "noise": (_noise, "noisy"),
    "hazy": (_haze, "low_contrast"),
    "grayscale": (lambda a: cv2.cvtColor(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB), "grayscale"),
    "downscaled": (lambda a: cv2.resize(a, (a.shape[1] // 3, a.shape[0] // 3), interpolation=cv2.INTER_AREA),
                   "too_small"),
    # Both eyes side by side (an export some cameras and PACS make): the model would see one of them.
    "two_eyes": (lambda a: np.hstack([a, a[:, ::-1]]), "several_fov"),
    # An array from cv2.imread passed as RGB (a review: screened "ok", with other findings).
    "bgr_order": (lambda a: np.ascontiguousarray(a[..., ::-1]), "not_fundus_colour"),
}


def _check_invariants(v: QualityVerdict) -> None:
    assert 0.0 <= v.score <= 1.0
    assert v.gradable == (not v.reasons) == (v.score >= 0.5), v
    assert set(v.reasons) <= set(REASONS), v.reasons
    assert list(v.reasons) == sorted(v.reasons, key=REASONS.index), "reasons come in REASONS order"


# -- real photographs ---------------------------------------------------------------------------
def test_most_real_photographs_are_gradable(tvhl_fundus_survey: list[SurveyRow]) -> None:
    rows = tvhl_fundus_survey
    for r in rows:
        _check_invariants(r.verdict)
    gradable = sum(r.verdict.gradable for r in rows)
    flagged = {r.path: r.verdict.reasons for r in rows if not r.verdict.gradable}
    # Calibrated on this set: 1022/1058 (96.6 %) gradable; the flagged are the nearly
    # black early-DME photographs, hazy fields without visible vessels, and the OCT scan.
    assert gradable / len(rows) >= 0.95, f"{gradable}/{len(rows)} gradable; flagged: {flagged}"
    assert {"no_fov", "grayscale"} <= set(flagged[OCT_FILED_AS_FUNDUS])


def test_flagged_real_photographs_are_the_dark_batch_or_poor(tvhl_fundus_survey: list[SurveyRow]) -> None:
    """The DR-graded batch (normal/npdr/pdr, mean ~78) is almost entirely gradable; the dark DME batch carries the flags."""
    graded = [r for r in tvhl_fundus_survey if r.label in ("normal", "npdr", "pdr")]
    assert len(graded) > 300
    ungradable = [r.path for r in graded if not r.verdict.gradable and r.path != OCT_FILED_AS_FUNDUS]
    assert len(ungradable) / len(graded) <= 0.01, ungradable
    too_dark = [r for r in tvhl_fundus_survey if "too_dark" in r.verdict.reasons]
    assert too_dark and all(r.verdict.metrics["brightness"] < 10.0 for r in too_dark)


def _real_sample(tvhl_dir: Path, n: int = 6) -> list[Path]:
    """Every k-th 'normal' photograph of the DR-graded batch (sorted by path): typical, well exposed images."""
    with open(tvhl_dir / "fundus.csv", newline="", encoding="utf-8") as fh:
        normal = sorted(row["path"] for row in csv.DictReader(fh) if row["label"] == "normal")
    return [tvhl_dir / p for p in normal[:: len(normal) // n][:n]]


@pytest.fixture(scope="module")
def real_sample(tvhl_dir: Path) -> list[tuple[str, np.ndarray]]:
    return [(p.name, decode(read_bytes(p))) for p in _real_sample(tvhl_dir)]


def test_real_originals_pass(real_sample: list[tuple[str, np.ndarray]]) -> None:
    for name, rgb in real_sample:
        v = assess(preprocess(_jpeg(rgb)))
        assert v.gradable, f"{name}: {v.reasons} {v.metrics}"


@pytest.mark.parametrize("degradation", sorted(DEGRADATIONS))
def test_degraded_real_copies_are_flagged(degradation: str, real_sample: list[tuple[str, np.ndarray]]) -> None:
    fn, reason = DEGRADATIONS[degradation]
    for name, rgb in real_sample:
        v = assess(preprocess(_jpeg(fn(rgb))))
        _check_invariants(v)
        assert reason in v.reasons, f"{degradation} copy of {name}: reasons {v.reasons}, metrics {v.metrics}"


# -- synthetic photographs (run without the real data) --------------------------------------------
@pytest.fixture(scope="module")
def synthetic() -> np.ndarray:
    return draw_fake_fundus(512, seed=4)


def test_synthetic_original_passes(synthetic: np.ndarray) -> None:
    v = assess(preprocess(_jpeg(synthetic)))
    assert v.gradable, (v.reasons, v.metrics)
    assert v.score > 0.5


@pytest.mark.parametrize("degradation", sorted(DEGRADATIONS))
def test_degraded_synthetic_copies_are_flagged(degradation: str, synthetic: np.ndarray) -> None:
    fn, reason = DEGRADATIONS[degradation]
    v = assess(preprocess(_jpeg(fn(synthetic))))
    _check_invariants(v)
    assert reason in v.reasons, (v.reasons, v.metrics)


# -- properties -----------------------------------------------------------------------------------
def test_metrics_do_not_depend_on_camera_resolution(synthetic: np.ndarray) -> None:
    """Figures are measured at a fixed working size: the same photograph at 1x and 3x reads the same."""
    small = measure(preprocess(synthetic))
    large = measure(preprocess(cv2.resize(synthetic, (1536, 1536), interpolation=cv2.INTER_CUBIC)))
    for key in ("brightness", "contrast", "sharpness", "colourfulness", "fov_fill"):
        assert large[key] == pytest.approx(small[key], rel=0.05), key
    assert large["short_side"] == 1536 and small["short_side"] == 512


def test_clahe_does_not_change_the_verdict(synthetic: np.ndarray) -> None:
    plain = preprocess(synthetic)
    enhanced = preprocess(synthetic, PreprocessConfig(clahe=True))
    assert assess(enhanced).metrics == assess(plain).metrics


def test_blur_lowers_sharpness_monotonically(synthetic: np.ndarray) -> None:
    values = [measure(preprocess(cv2.GaussianBlur(synthetic, (0, 0), s) if s else synthetic))["sharpness"]
              for s in (0, 2, 4, 8)]
    assert values == sorted(values, reverse=True), values


def test_thresholds_are_parameters(synthetic: np.ndarray) -> None:
    pre = preprocess(synthetic)
    m = measure(pre)
    strict = QualityConfig(min_brightness=m["brightness"] + 1.0, max_brightness=254.0)
    assert assess(pre, strict).reasons == ("too_dark",)
    lenient = QualityConfig(max_noise=100.0, min_side=1)
    assert assess(preprocess(_jpeg(_noise(synthetic))), lenient).gradable


@pytest.mark.parametrize(("field", "metric", "reason", "upper"), [
    ("min_contrast", "contrast", "low_contrast", False),
    ("min_sharpness", "sharpness", "blurred", False),
    ("max_noise", "noise", "noisy", True),
    ("min_colourfulness", "colourfulness", "grayscale", False),
    ("min_brightness", "brightness", "too_dark", False),
    ("max_brightness", "brightness", "too_bright", True),
    ("min_red_blue", "red_blue", "not_fundus_colour", False),
])
def test_each_threshold_passes_at_its_value_and_fails_just_past_it(synthetic: np.ndarray, field: str, metric: str,
                                                                   reason: str, upper: bool) -> None:
    # Pins each comparison itself (a test audit found the noise limit could be doubled unnoticed without TVHL).
    pre = preprocess(synthetic)
    value = measure(pre)[metric]
    assert assess(pre, QualityConfig(**{field: value})).gradable
    past = math.nextafter(value, -math.inf if upper else math.inf)
    assert assess(pre, QualityConfig(**{field: past})).reasons == (reason,)


def test_score_is_half_exactly_at_a_threshold(synthetic: np.ndarray) -> None:
    pre = preprocess(synthetic)
    m = measure(pre)
    at = QualityConfig(min_contrast=m["contrast"])
    v = assess(pre, at)
    assert v.gradable and v.score == pytest.approx(0.5)
    above = QualityConfig(min_contrast=math.nextafter(m["contrast"], math.inf))
    v = assess(pre, above)
    assert v.reasons == ("low_contrast",) and v.score < 0.5


@pytest.mark.parametrize("n", [3, 6])
def test_a_row_of_photographs_is_refused(n: int, real_sample: list[tuple[str, np.ndarray]]) -> None:
    """A montage is not one eye: however its fields merge at detection size, the gate refuses it."""
    for name, rgb in real_sample:
        v = assess(preprocess(_jpeg(np.hstack([rgb] * n))))
        _check_invariants(v)
        assert not v.gradable and set(v.reasons) & {"no_fov", "several_fov"}, f"{n} x {name}: {v.reasons}"


def test_two_eyes_geometry_describes_the_largest_field(synthetic: np.ndarray) -> None:
    small = cv2.resize(synthetic, (384, 384), interpolation=cv2.INTER_AREA)
    frame = np.zeros((512, 1024, 3), np.uint8)
    frame[:, 512:] = synthetic
    frame[64:448, 40:424] = small
    pre = preprocess(frame)
    g = pre.geometry
    assert g.fov_count == 2 and g.fov_found
    assert g.cx > 512, "the crop is the larger field"
    v = assess(pre)
    assert v.reasons == ("several_fov",) and v.score == 0.0 and v.metrics["fov_count"] == 2.0


def test_no_field_scores_zero() -> None:
    board = np.kron((np.indices((16, 16)).sum(axis=0) % 2) * 255, np.ones((32, 32))).astype(np.uint8)
    v = assess(preprocess(cv2.cvtColor(board, cv2.COLOR_GRAY2RGB)))
    assert "no_fov" in v.reasons and v.score == 0.0


def test_config_validation_and_round_trip() -> None:
    cfg = QualityConfig(min_sharpness=0.05, min_side=512)
    assert QualityConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown quality parameters"):
        QualityConfig.from_dict({"min_sharpnes": 0.05})
    with pytest.raises(ConfigError, match="min_brightness < max_brightness"):
        QualityConfig(min_brightness=100.0, max_brightness=50.0)
    with pytest.raises(ConfigError, match="min_sharpness must be > 0"):
        QualityConfig(min_sharpness=0.0)
    with pytest.raises(ConfigError, match="QualityConfig"):
        assess(preprocess(draw_fake_fundus(128)), {"min_side": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc,reason",
    [
        (ImageDecodeError("truncated", source="a.jpg"), "undecodable"),
        (ImageTooSmallError("1x1", source="b.png"), "too_small"),
        (ImageTooLargeError("too big", source="c.tif"), "too_large"),
        (ImageError("unreadable"), "unreadable"),
    ],
)
def test_assess_error_turns_errors_into_verdicts(exc: ImageError, reason: str) -> None:
    v = assess_error(exc)
    assert v == QualityVerdict(gradable=False, score=0.0, reasons=(reason,), metrics={})



def test_masked_sums_are_numpys_exactly() -> None:
    """The gate's masked sums of uint8 images are exact: its means are numpy's own values."""
    from uopsl.runtime.quality import _masked_moments, _masked_sums

    rng = np.random.default_rng(0)
    for i in range(50):
        img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        mask = rng.random((256, 256)) < rng.uniform(0.001, 1.0)
        n = int(mask.sum())
        if n == 0:
            continue
        sums = _masked_sums(img, mask.view(np.uint8))
        assert sums == tuple(float(img[mask][:, c].sum()) for c in range(3)), i
        assert sum(sums) / (3 * n) == float(img[mask].mean())
        assert _masked_sums(img[:, :, 1], mask.view(np.uint8))[0] / n == float(img[:, :, 1][mask].mean())
        x = rng.normal(0.0, 5.0, (256, 256)).astype(np.float32)
        mean, var = _masked_moments(x, mask.view(np.uint8), n)
        assert mean == pytest.approx(float(x[mask].astype(np.float64).mean()), rel=1e-6, abs=1e-9)
        assert var == pytest.approx(float(x[mask].astype(np.float64).var()), rel=1e-6)


def test_blue_dominant_pictures_are_not_fundus_photographs_unless_too_dark_to_tell(synthetic: np.ndarray) -> None:
    """A review screened scikit-image's rocket launch (a dark blue sky filling the frame, which the field-of-view
    search took for a retina) as "ok" and referred it for DME and glaucoma."""
    rocket = pytest.importorskip("skimage.data").rocket()
    v = assess(preprocess(_jpeg(rocket)))
    assert v.reasons == ("not_fundus_colour",) and v.metrics["red_blue"] < 0.7, (v.reasons, v.metrics)
    bgr = np.ascontiguousarray(synthetic[..., ::-1])
    dark = assess(preprocess((bgr * 0.03).astype(np.uint8)))
    assert "too_dark" in dark.reasons and "not_fundus_colour" not in dark.reasons  # its colour is noise
    # Passing it costs nothing: the colour balance does not lower a gradable photograph's score, even just
    # above the limit (a graded sub-score would be about 0.5 there).
    pre = preprocess(synthetic)
    m = measure(pre)
    near = assess(pre, QualityConfig(min_red_blue=m["red_blue"] * 0.999))
    assert near.gradable and near.score == assess(pre, QualityConfig(min_red_blue=1e-6)).score > 0.6


def test_the_colour_check_changes_no_verdict_on_real_photographs(tvhl_fundus_survey: list[SurveyRow]) -> None:
    assert [r.path for r in tvhl_fundus_survey if "not_fundus_colour" in r.verdict.reasons] == []
    assert len(tvhl_fundus_survey) > 1000


def _shadowed_blur(rgb: np.ndarray) -> np.ndarray:
    """Blurred (sigma 3 % of the short side) with its lower 38 % darkened to 40 %: one sharp shadow edge."""
    out = cv2.GaussianBlur(rgb, (0, 0), 0.03 * min(rgb.shape[:2]))
    cut = int(rgb.shape[0] * 0.62)
    out[cut:] = (out[cut:] * 0.4).astype(np.uint8)
    return out


def test_one_sharp_edge_does_not_make_a_blurred_photograph_sharp(real_sample: list[tuple[str, np.ndarray]]) -> None:
    """Until session 44 the whole field's sharpness ratio was the only blur figure, and one sharp shadow edge
    across a blurred photograph dominated it: 239 of 256 such TVHL copies passed as gradable
    (``benchmarks/check_gate_blind_spots.py``). The tiles' figure stays low where the field is blurred; it
    still misses some (28 of those 256 pass; here one of the six, 1354_OI_f_2, reads 0.0375)."""
    threshold = QualityConfig().min_sharpness
    flagged = whole_field_fooled = 0
    for name, rgb in real_sample:
        v = assess(preprocess(_jpeg(_shadowed_blur(rgb))))
        _check_invariants(v)
        flagged += "blurred" in v.reasons
        assert ("blurred" in v.reasons) == (min(v.metrics["sharpness"], v.metrics["sharpness_tiles"]) < threshold)
        whole_field_fooled += v.metrics["sharpness"] >= threshold
    assert flagged >= len(real_sample) - 1, flagged
    assert whole_field_fooled >= len(real_sample) // 2  # the case the tiles exist for: the whole field reads sharp


def test_tile_sharpness_is_a_third_of_the_way_up_the_structured_tiles() -> None:
    """The tiles' figure by hand: 8 x 8 tiles of 32 px; a tile counts when half of it is in the measuring region
    and it has detail; its ratio is the Laplacian map's variance over the detail map's (noise 0 here); the
    figure is numpy's linear percentile at 100 / 3 of the counted tiles' ratios."""
    from uopsl.runtime.quality import _tile_sharpness

    rng = np.random.default_rng(3)
    sign = np.where((np.indices((32, 32)).sum(axis=0) % 2) == 0, 1.0, -1.0)  # mean 0, variance 1 in a tile
    lap = np.zeros((256, 256), np.float32)
    detail = np.zeros((256, 256), np.float32)
    inner = np.ones((256, 256), np.uint8)
    expected = []
    for i in range(8):
        for j in range(8):
            a, b = rng.uniform(0.1, 2.0), rng.uniform(0.5, 3.0)
            tile = np.s_[32 * i : 32 * i + 32, 32 * j : 32 * j + 32]
            if (i, j) in {(0, 0), (0, 1)}:  # under half inside: left out
                inner[32 * i : 32 * i + 17, 32 * j : 32 * j + 32] = 0
            elif (i, j) in {(7, 7), (7, 6), (6, 7)}:  # flat: no detail, left out
                b = 0.0
            else:
                expected.append(a * a / (b * b))
            lap[tile], detail[tile] = a * sign, b * sign
    lap *= inner
    detail *= inner
    got = _tile_sharpness(lap, detail, inner, 0.0, whole=-1.0)
    assert len(expected) == 59
    assert got == pytest.approx(float(np.percentile(expected, 100.0 / 3.0)), rel=1e-5)
    few = np.zeros_like(inner)
    few[:64, :96] = 1  # six tiles: fewer than eight, so the whole field's figure stands
    assert _tile_sharpness(lap * few, detail * few, few, 0.0, whole=0.123) == 0.123


def test_a_drawn_field_with_a_flat_background_is_not_called_blurred() -> None:
    """Tiles with no detail hold no evidence of blur: counted as 0 they called this drawn 1000 px field (flat
    between its vessels) blurred at 320 px, though every vessel in it is sharp."""
    pre = preprocess(draw_fake_fundus(1000, seed=0), PreprocessConfig(size=320))
    v = assess(pre)
    assert v.gradable, (v.reasons, v.metrics)
    assert v.metrics["sharpness_tiles"] >= QualityConfig().min_sharpness
