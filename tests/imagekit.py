"""Image helpers shared by tests: the TVHL location, a fake fundus, the bad-input zoo.

Fixtures built on them live in conftest.py; tests import the helpers from here
(``from imagekit import ...``): a module named ``conftest`` is ambiguous once a
sub-folder has its own conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.errors import ImageDecodeError, ImageError, ImageReadError, ImageTooLargeError, ImageTooSmallError
from uopsl.runtime.preprocess import Geometry
from uopsl.runtime.quality import QualityVerdict

TVHL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"


@dataclass(frozen=True)
class SurveyRow:
    """One real fundus photograph after preprocessing and the quality gate (the pixels are not kept)."""

    path: str  # relative to the TVHL folder, as in fundus.csv
    label: str
    image_shape: tuple[int, ...]
    image_dtype: str
    geometry: Geometry
    verdict: QualityVerdict


def draw_fake_fundus(size: int = 256, seed: int = 0, *, field: float = 0.45) -> np.ndarray:
    """A fundus-like uint8 RGB image: lit circular field (radius ``field`` x size) on black.

    Orange-red retina with illumination falloff, a bright optic disc, a few dark
    vessels and mild camera noise; deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    r = np.hypot(xx - c, yy - c) / (field * size)
    falloff = np.clip(1.0 - 0.5 * r**2, 0.0, 1.0)
    img = np.zeros((size, size, 3), np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 200 * falloff, 95 * falloff, 40 * falloff
    disc = (xx - c - 0.2 * size) ** 2 + (yy - c) ** 2 < (0.05 * size) ** 2
    img[disc] = (250, 220, 150)
    for k in range(6):  # vessels: dark arcs leaving the disc
        angle = 2 * np.pi * k / 6 + rng.uniform(-0.3, 0.3)
        pts = np.array([[c + 0.2 * size + t * size * np.cos(angle + 0.4 * t), c + t * size * np.sin(angle + 0.4 * t)]
                        for t in np.linspace(0, 0.45, 30)], np.int32)
        cv2.polylines(img, [pts], False, (90, 25, 15), max(1, size // 128), cv2.LINE_AA)
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    img[r > 1.0] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class BadInput:
    """One file of the zoo and what must happen to it.

    error: the :class:`ImageError` subclass that reading + preprocessing must
    raise, or None when the file preprocesses and the quality gate must call it
    ungradable with ``reason`` among its reasons. ``reason`` is the tag the
    screening row must carry either way (for errors, the error's ``reason``).
    """

    name: str
    path: Path
    description: str
    error: type[ImageError] | None
    reason: str


def _write_rgb(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params or []):
        raise RuntimeError(f"cv2.imwrite failed for {path}")


def _encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for {ext}")
    return buf.tobytes()


def _checkerboard(size: int = 512, square: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    board = (((yy // square) + (xx // square)) % 2 * 255).astype(np.uint8)
    return cv2.cvtColor(board, cv2.COLOR_GRAY2RGB)


def _landscape(h: int = 480, w: int = 640) -> np.ndarray:
    """Blue sky fading to a green field: smooth, bright to the edges, no circular field."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    sky = np.array([120, 170, 235], np.float32)
    ground = np.array([60, 130, 50], np.float32)
    mix = np.clip((t - 0.55) * 8, 0, 1)[..., None]
    img = (1 - mix) * sky + mix * ground
    return np.broadcast_to(img, (h, w, 3)).astype(np.uint8).copy()


def _png_bomb() -> bytes:
    """A valid 1x1 PNG whose header claims 100000 x 100000 pixels (CRC left stale)."""
    data = bytearray(_encode(".png", np.zeros((1, 1), np.uint8)))
    data[16:20] = (100_000).to_bytes(4, "big")
    data[20:24] = (100_000).to_bytes(4, "big")
    return bytes(data)


def _write_zoo_file(name: str, folder: Path) -> BadInput:
    p = folder / name
    if name == "empty.jpg":
        p.write_bytes(b"")
        return BadInput(name, p, "zero-byte file", ImageDecodeError, ImageDecodeError.reason)
    if name == "truncated.jpg":
        data = _encode(".jpg", cv2.cvtColor(draw_fake_fundus(256, seed=1), cv2.COLOR_RGB2BGR))
        p.write_bytes(data[: len(data) // 2])
        return BadInput(name, p, "JPEG cut in half (no end-of-image marker)", ImageDecodeError,
                        ImageDecodeError.reason)
    if name == "text.jpg":
        p.write_text("This is not an image, whatever its name says.\n" * 20, encoding="utf-8")
        return BadInput(name, p, "a text file named .jpg", ImageDecodeError, ImageDecodeError.reason)
    if name == "directory.jpg":
        p.mkdir()
        return BadInput(name, p, "a folder named like an image", ImageReadError, ImageReadError.reason)
    if name == "missing.jpg":
        return BadInput(name, p, "a path that does not exist", ImageReadError, ImageReadError.reason)
    if name == "tiny_1x1.png":
        _write_rgb(p, np.full((1, 1, 3), 128, np.uint8))
        return BadInput(name, p, "a 1x1 image", ImageTooSmallError, ImageTooSmallError.reason)
    if name == "bomb_100000x100000.png":
        p.write_bytes(_png_bomb())
        return BadInput(name, p, "PNG header claiming 10^10 pixels (decompression bomb)", ImageTooLargeError,
                        ImageTooLargeError.reason)
    if name == "huge_9000x7000.png":
        # Grey, single channel: cheap to write; decoded it is a 189 MB RGB array.
        if not cv2.imwrite(str(p), np.full((7000, 9000), 128, np.uint8)):
            raise RuntimeError(f"cv2.imwrite failed for {p}")
        return BadInput(name, p, "a 9000x7000 featureless image (63 Mpx, under the default limit)", None, "no_fov")
    if name == "checkerboard.png":
        _write_rgb(p, _checkerboard())
        return BadInput(name, p, "a generated checkerboard (not a fundus photograph)", None, "no_fov")
    if name == "landscape.jpg":
        _write_rgb(p, _landscape())
        return BadInput(name, p, "a smooth sky-and-field 'landscape' (no field of view)", None, "no_fov")
    if name == "strip_16x2000.png":
        _write_rgb(p, np.full((16, 2000, 3), 90, np.uint8))
        return BadInput(name, p, "a 2000x16 strip (decodable, far too small a side)", None, "too_small")
    raise KeyError(f"unknown bad input {name!r}; expected one of {BAD_INPUT_NAMES}")


#: Every file the zoo can write. The 9000x7000 one costs about a second and
#: 0.5 GB to preprocess; pass ``names=CHEAP_BAD_INPUTS`` to leave it out.
BAD_INPUT_NAMES = (
    "empty.jpg", "truncated.jpg", "text.jpg", "directory.jpg", "missing.jpg", "tiny_1x1.png",
    "bomb_100000x100000.png", "huge_9000x7000.png", "checkerboard.png", "landscape.jpg", "strip_16x2000.png",
)
CHEAP_BAD_INPUTS = tuple(n for n in BAD_INPUT_NAMES if n != "huge_9000x7000.png")


