"""The overlay blend computed in place gives the pixels of the documented expression, and PNGs stay lossless.

``render_overlay`` was rewritten (session 41) to blend without temporary full-size arrays, for speed; the
pixels a clinician sees must not change. The reference here is the expression the function used before,
written out: ``clip(rgb * (1 - w) + colour * w + 0.5)`` with ``w = 0.45 * heat / max(heat)``, evaluated by numpy
in the map's own precision (float32 maps in float32, float64 maps in float64). ``colour`` was jet until session 56;
it is now the toolkit's heat colours (``overlay.HEAT_RGB``, checked in test_overlay_colormap_s56.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from uopsl.runtime import overlay
from uopsl.runtime.overlay import encode_png, render_overlay


def _reference(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else np.zeros_like(heat)
    u8 = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = overlay.HEAT_RGB[u8]
    w = (alpha * norm)[:, :, None]
    return np.clip(rgb.astype(np.float32) * (1.0 - w) + colour.astype(np.float32) * w + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_blend_gives_the_same_pixels_as_the_documented_expression(dtype: type) -> None:
    """Random photographs and maps of many shapes and scales (a tiny peak, a huge one, an all-zero map), in the
    two precisions site maps come in (ONNX Runtime's float32; float64 from ``uopsl explain``): pixel for pixel
    equal. A blend done in float32 for a float64 map makes the float64 case fail."""
    rng = np.random.default_rng(7)
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        heat = (rng.random((h, w)) * rng.choice([0.0, 1e-20, 1.0, 3e5])).astype(dtype)
        got = render_overlay(rgb, heat)
        assert got.dtype == np.uint8 and got.shape == rgb.shape
        assert np.array_equal(got, _reference(rgb, heat)), (h, w)


def test_blend_leaves_its_inputs_untouched() -> None:
    """Computed in place, but on copies: the thumbnail the report also shows and the map keep their values."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    heat = rng.random((40, 30)).astype(np.float32)
    rgb0, heat0 = rgb.copy(), heat.copy()
    render_overlay(rgb, heat)
    assert np.array_equal(rgb, rgb0) and np.array_equal(heat, heat0)


def test_overlay_png_is_lossless_at_the_chosen_level() -> None:
    """The faster zlib level changes the file's size, never its pixels: a real-looking overlay decodes exactly."""
    assert 0 <= overlay.PNG_COMPRESSION <= 9
    rng = np.random.default_rng(5)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (7, 7), 2)
    img = render_overlay(rgb, cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (31, 31), 8))
    back = cv2.imdecode(np.frombuffer(encode_png(img), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(back, img)
