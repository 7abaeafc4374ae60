"""Heatmap overlays: the predilection map of a class, jet-coloured and blended onto a downscaled original.

Only rendered when asked for (``--overlays``): it runs after inference on the
thumbnail the workers kept, never on the full-resolution original.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import sha256_bytes, write_bytes

OVERLAY_DIR = "overlays"
THUMB_DIR = "thumbs"


def render_overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend ``heat`` (h, w, any scale; same grid as ``rgb``) over ``rgb`` with the jet colormap.

    The map is scaled to its own maximum (it is a relative map of where the
    model looked, not a probability); near-zero attention leaves the photo as is.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or heat.shape != rgb.shape[:2]:
        raise ConfigError(f"overlay needs an HxWx3 image and an HxW map, got {rgb.shape} and {heat.shape}")
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else np.zeros_like(heat)
    u8 = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (alpha * norm)[:, :, None]
    # rgb * (1 - w) + colour * w, rounded half up, computed in place: the same operations in the same order and
    # precision (float32, or float64 for a float64 map) as the plain expression, so the same pixels, without its
    # five temporary full-size arrays (at 384 px they outgrow the cache: 5.7 against 1.6 ms; at 256 px no change).
    ftype = np.result_type(weight.dtype, np.float32)
    out = rgb.astype(ftype)
    out *= 1.0 - weight
    tint = colour.astype(ftype)
    tint *= weight
    out += tint
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


#: zlib level of overlay PNGs. Level 1 encodes an overlay in about two thirds of level 3's time, for files ~6 %
#: larger (docs/results.md, section 5, "Overlay cost"); PNG is lossless at every level, so only the size changes.
PNG_COMPRESSION = 1


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ConfigError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError("JPEG encoding failed")
    return buf.tobytes()


def write_overlay(out_dir: str | os.PathLike[str], image_id: str, rgb: np.ndarray, heat: np.ndarray) -> str:
    """Write ``overlays/<id>.png`` atomically; returns :func:`content_id` of what was written."""
    data = encode_png(render_overlay(rgb, heat))
    write_bytes(Path(out_dir) / OVERLAY_DIR / f"{image_id}.png", data)
    return content_id(data)


def write_thumbnail(out_dir: str | os.PathLike[str], image_id: str, rgb: np.ndarray) -> str:
    """Write ``thumbs/<id>.jpg`` (for the report) atomically; returns :func:`content_id` of what was written."""
    data = encode_jpeg(rgb)
    write_bytes(Path(out_dir) / THUMB_DIR / f"{image_id}.jpg", data)
    return content_id(data)


def content_id(data: bytes) -> str:
    """The first 16 hex digits of ``data``'s sha256: how a result row names its thumbnail and heatmap, so the
    report knows them by content rather than by file time (see ``uopsl.runtime.report._trusted_image``)."""
    return sha256_bytes(data)[:16]
