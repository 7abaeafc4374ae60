"""Heatmap overlays: the predilection map of a class, coloured and blended onto a downscaled original.

Only rendered when asked for (``--overlays``): it runs after inference on the
thumbnail the workers kept, never on the full-resolution original.

Colours (session 56): the lighter part of viridis (its entries 160-255), green-teal for low attention to
yellow for the peak (:data:`HEAT_RGB`), for every heatmap the toolkit draws (``uopsl-screen`` overlays, the
report's colour scale, ``uopsl explain``). Until then it was jet, whose lightness rises and falls again
(dark blue, bright cyan and yellow, dark red): printed in black and white, as clinics print the report, a
hot spot came out as a dark core in a light ring, like a cold spot or the dark macula (over the 20 bright
orange-red photographs of 40 TVHL ones, the hot core printed darker than the ring round it in all 20), and
the bright bands drew edges the map does not have. Viridis is perceptually uniform, its lightness rises
steadily, and its hues (teal, green, yellow) are not the retina's: inferno and magma add some 10 grey levels
more but their reds and oranges are the retina's own (the hot core's colour distance from the retina, CIE
a*b*: 18 and 13 against viridis's 28 on the bright photographs). Its lighter part rather than the whole
because the blend weight rises with heat (low attention leaves the photograph as it was), and a colour
darker than the photograph darkens it where it is blended: viridis's dark purple end drew a dark ring, 6
grey levels deep on a mid-grey, round every hot spot. Figures and the script:
``benchmarks/colormap_grey_contrast.py``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import short_sha256, write_bytes

OVERLAY_DIR = "overlays"
THUMB_DIR = "thumbs"

#: Grey level (0-255) that every heat colour is at least as light as, in both Rec.601 and Rec.709 luma.
#: Why: the overlay's grey is ``(1 - w) * photo + w * colour`` with ``w`` rising with heat, so it rises with heat
#: wherever the photograph is no lighter than the colours, and only there. Mid-grey covers most of a retina (40
#: TVHL photographs at 384 px: its 90th grey percentile has median 106, highest 170); on the optic disc and bright
#: exudates, lighter than that, low attention can darken a little, and the peak (grey 215) stands out less.
MID_GREY = 128
_LUMA_601 = np.array([0.299, 0.587, 0.114])  # what OpenCV's (and most printers') RGB to grey conversion uses
_LUMA_709 = np.array([0.2126, 0.7152, 0.0722])


def _heat_palette() -> tuple[np.ndarray, int]:
    """Viridis from its first entry as light as :data:`MID_GREY` up, stretched over 256 entries (RGB, uint8).

    Entries are viridis's own (indexed, not interpolated), so lightness stays non-decreasing: OpenCV's 8-bit
    viridis steps back by a hair twice (after entries 94 and 145), both below the start.
    """
    viridis = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_VIRIDIS)[:, 0, ::-1]
    luma = np.minimum(viridis @ _LUMA_601, viridis @ _LUMA_709)
    start = int(np.argmax(luma >= MID_GREY))
    lut = np.ascontiguousarray(viridis[np.rint(np.linspace(start, 255, 256)).astype(np.intp)])
    lut.setflags(write=False)
    return lut, start


#: The heat colours, RGB uint8, shape (256, 3): entry ``k`` colours attention ``k / 255`` of the map's peak.
#: ``VIRIDIS_START``: the viridis entry (of 256) they start at (160: green-teal, RGB 40, 174, 128).
HEAT_RGB, VIRIDIS_START = _heat_palette()
#: Words for the two ends, for text drawn next to a heatmap (explain's panels, the report's scale).
LOW_COLOUR, PEAK_COLOUR = "green", "yellow"
#: Names this colouring in each overlay PNG (a tEXt chunk), so that a report can tell an overlay written with
#: other colours (jet, before session 56: a folder resumed after an upgrade keeps its earlier overlays).
COLOURS_KEY, COLOURS = "uopsl-colours", f"viridis-{VIRIDIS_START}-255"


_HEAT_LUT_CV = np.ascontiguousarray(HEAT_RGB.reshape(256, 1, 3))  # a user colour map for cv2.applyColorMap


def heat_colours(index: np.ndarray) -> np.ndarray:
    """RGB uint8 colours (h, w, 3) of an (h, w) uint8 array of heat indices 0-255: the toolkit's one colour map.

    Looked up by OpenCV with :data:`HEAT_RGB` as a user colour map (in RGB order, so no channel swap after):
    0.07 ms at 384 px, against 1.5 ms for NumPy's ``HEAT_RGB[index]``, the same pixels.
    """
    return cv2.applyColorMap(index, _HEAT_LUT_CV)


def heat_scale_hex(stops: int = 9) -> list[str]:
    """``stops`` colours (``#rrggbb``) evenly from low to peak: a legend's gradient in the map's own colours."""
    if stops < 2:
        raise ConfigError(f"a colour scale needs at least 2 stops, got {stops}")
    return ["#%02x%02x%02x" % tuple(int(v) for v in HEAT_RGB[round(k * 255 / (stops - 1))]) for k in range(stops)]


def render_overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend ``heat`` (h, w, any scale; same grid as ``rgb``) over ``rgb`` in the heat colours (:data:`HEAT_RGB`).

    The map is scaled to its own maximum (it is a relative map of where the
    model looked, not a probability). The blend weight is ``alpha`` times that
    scaled heat, so near-zero attention leaves the photo as is rather than
    tinting (and, with a dark colour, darkening) the whole photograph.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or heat.shape != rgb.shape[:2]:
        raise ConfigError(f"overlay needs an HxWx3 image and an HxW map, got {rgb.shape} and {heat.shape}")
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else np.zeros_like(heat)
    u8 = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = heat_colours(u8)
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


_PNG_HEAD = 33  # the 8-byte signature and the IHDR chunk (4 length + 4 type + 13 data + 4 CRC), always first


def mark_colours(png: bytes) -> bytes:
    """``png`` with a tEXt chunk naming :data:`COLOURS` right after its header, where :func:`png_colours` looks.

    Why: overlay files outlive the code that drew them (a resumed or watched folder keeps its earlier ones), and
    the pixels alone do not say which colour map they are in. Decoders skip tEXt chunks: the pixels are unchanged.
    """
    if png[12:16] != b"IHDR":
        raise ConfigError("not a PNG from encode_png: no IHDR chunk first")
    text = COLOURS_KEY.encode("latin-1") + b"\0" + COLOURS.encode("latin-1")
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    return png[:_PNG_HEAD] + chunk + png[_PNG_HEAD:]


#: Bytes of a PNG's start that :func:`png_colours` needs: the header and the chunk :func:`mark_colours` adds.
PNG_COLOURS_HEAD = _PNG_HEAD + 12 + len(COLOURS_KEY) + 1 + 64


def png_colours(head: bytes) -> str | None:
    """The colour map an overlay PNG names (``head``: its first :data:`PNG_COLOURS_HEAD` bytes or more), or None
    for one that names none: an overlay written before session 56, in jet."""
    at = _PNG_HEAD
    if len(head) < at + 8 or head[at + 4:at + 8] != b"tEXt":
        return None
    (size,) = struct.unpack(">I", head[at:at + 4])
    key, _, value = head[at + 8:at + 8 + size].partition(b"\0")
    if key != COLOURS_KEY.encode("latin-1") or len(head) < at + 8 + size:
        return None
    return value.decode("latin-1")


def write_overlay(out_dir: str | os.PathLike[str], image_id: str, rgb: np.ndarray, heat: np.ndarray) -> str:
    """Write ``overlays/<id>.png`` atomically, marked with its colour map (:func:`mark_colours`); returns
    :func:`content_id` of what was written."""
    data = mark_colours(encode_png(render_overlay(rgb, heat)))
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
    return short_sha256(data)
