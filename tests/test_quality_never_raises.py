"""The quality gate's promise: ``assess`` never raises for a bad picture, and its verdict is well formed.

``runtime/quality.py`` says so in ``assess``'s docstring and the pipeline relies on it (a raise there would
fail the photograph's whole batch instead of flagging one row), but no test held it to that (session 38's
gate audit: mutant Q22 survived). Each picture here is one a field clinic can produce (a lens cap, a
blown-out flash, a test card, a sensor full of noise, a strip cut from a scan) or a degenerate geometry for
the field-of-view search; whatever ``preprocess`` accepts, ``assess`` must judge with finite figures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from uopsl.runtime.preprocess import PreprocessConfig, preprocess
from uopsl.runtime.quality import assess

_RNG = np.random.default_rng(7)


def _flat(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def _checkerboard(h: int, w: int, cell: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def _disc(h: int, w: int, cy: float, cx: float, r: float, rgb: tuple[int, int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rgb
    return img


#: (name, picture): none of them is a gradable fundus photograph
PICTURES = [
    ("lens cap (black)", _flat(480, 640, (0, 0, 0))),
    ("blown-out flash (white)", _flat(480, 640, (255, 255, 255))),
    ("flat grey card", _flat(480, 640, (128, 128, 128))),
    ("flat fundus-coloured card", _flat(480, 640, (180, 80, 30))),
    ("sensor noise", _RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)),
    ("checkerboard", _checkerboard(480, 640, 8)),
    ("one lit pixel", np.pad(np.full((1, 1, 3), 255, np.uint8), ((240, 239), (320, 319), (0, 0)))),
    ("thin strip", _RNG.integers(0, 256, (64, 4000, 3), dtype=np.uint8)),
    ("tall strip", _RNG.integers(0, 256, (4000, 64, 3), dtype=np.uint8)),
    ("disc off the corner", _disc(480, 640, -150.0, -150.0, 300.0, (180, 80, 30))),
    # a lit rim around a black centre: the lit area survives the opening but not the gate's deeper erosion,
    # so the inner measuring region is empty unless the gate falls back to the whole field (the noise and
    # sharpness figures divide by its size)
    ("lit rim, black centre", _disc(480, 640, 240.0, 320.0, 200.0, (150, 70, 30))
     - _disc(480, 640, 240.0, 320.0, 185.0, (150, 70, 30))),
    ("flat disc", _disc(480, 640, 240.0, 320.0, 200.0, (180, 80, 30))),
    ("disc of noise", _disc(480, 640, 240.0, 320.0, 200.0, (255, 255, 255))
     & _RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)),
]


@pytest.mark.parametrize(("name", "picture"), PICTURES, ids=[p[0] for p in PICTURES])
@pytest.mark.parametrize("size", [64, 224])
def test_assess_never_raises_and_flags_what_is_no_fundus_photograph(name: str, picture: np.ndarray,
                                                                     size: int) -> None:
    # Each picture gets past preprocessing (a picture refused there would test nothing here: replace it).
    verdict = assess(preprocess(picture, PreprocessConfig(size=size)))
    assert set(verdict.metrics) >= {"fov_fill", "brightness", "contrast", "sharpness", "noise", "colourfulness",
                                    "red_blue", "short_side"}
    bad = {k: v for k, v in verdict.metrics.items() if not math.isfinite(v)}
    assert not bad, f"{name}: non-finite figures {bad}"
    assert 0.0 <= verdict.score <= 1.0
    assert verdict.reasons and all(isinstance(r, str) for r in verdict.reasons)
    assert not verdict.gradable and verdict.score < 0.5, f"{name} passed the gate: {verdict.metrics}"
