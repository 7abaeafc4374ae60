"""Fundus preprocessing: decode, find the field of view, crop, pad, resize, optional CLAHE.

This is the only preprocessing in the toolkit. Training, calibration, evaluation
and the device runtime all call :func:`preprocess`, so the model always sees the
same pixels. Input normalisation (mean/std) is *not* done here: it is folded
into the exported model's first convolution, so the runtime hands the model
uint8 RGB NHWC.

Field-of-view detection lives in :mod:`uopsl.runtime.fov`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any, Literal

import cv2
import numpy as np

from uopsl.runtime.configs import config_from_dict
from uopsl.runtime.errors import (
    ConfigError,
    ImageDecodeError,
    ImageFormatError,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    too_many_pixels,
)
from uopsl.runtime.dicomfile import dicom_picture, is_dicom
from uopsl.runtime.exif import apply_orientation, image_orientation, jpeg_orientation
from uopsl.runtime.fov import find_fov
from uopsl.runtime.imagefile import (
    SUPPORTED,
    header_size,
    image_format,
    is_truncated,
    j2k_precision,
    jpeg_frame,
    other_format,
    png_significant_bits,
    TiffPictures,
    tiff_depth,
    tiff_pictures,
    trailing_zero_bytes,
    webp_zero_fill,
)

log = logging.getLogger(__name__)

# Bumped whenever the same input bytes and parameters give other pixels (caches of
# preprocessed images key on it): 2 = reduced-scale JPEG decoding, 3 = JPEGs turned
# upright by their Exif Orientation tag on every decode path, 4 = 16-bit images scaled by the
# full 16-bit range (not their own peak), JPEGs ending in libjpeg's grey fill refused, the Exif
# orientation of PNG and WebP files applied, 5 = straight cuts inside the frame left out of
# the field-of-view fit (clipped fields padded into a larger frame are found), grey or white
# padding trimmed before detection (only where a corner pixel is that bright), and the circle
# refitted without hull bridges to a mark outside the field (a header band, a label), 6 = then also without
# the hull points on thin lit marks joined to the field (burned-in text, a notch mark), 7 = a TIFF holding
# several pictures (or a thumbnail first) refused, a 16-bit PNG's unscaled sBIT depth and a JPEG 2000's depth
# read, DICOM files read (pydicom), 8 = TIFFs packed at 9-15 bits per sample read on the decoder's 16-bit
# scale (they came out saturated), 9 = a PNG's eXIf chunk after the image data applied (OpenCV and viewers
# apply it; it was ignored), 10 = damaged files screened as photographs refused: a BMP, TIFF or PNM whose end was
# zero-filled (black rows after a straight cut through the field), a WebP whose image data ends in zeros, a JPEG
# 2000 cut short or zero-filled (a folder screened before keeps no 'ok' row for them). (The reduced-decode rule
# lives in config fields, decode_min_ratio and decode_min_side, so a config keeps its
# pixels without a bump.)
PREPROCESS_VERSION = 10

# The reduced-decode ratio of configs stored before PreprocessConfig.decode_min_ratio existed.
LEGACY_DECODE_MIN_RATIO = 2.0
# A decoded image smaller than this on its short side cannot hold a fundus.
MIN_DECODE_SIDE = 16
# Most a reduced-scale decode may leave the field of view to be enlarged by the final resize
# (TVHL at 256 px: a 242 px field, 1.06x); a narrower field makes preprocess decode finer.
_MAX_ENLARGE = 1.1
# Largest crop side shrunk through float32 by resize_square (2-core x86 box: 460-1000 px
# crops 20-30 % cheaper than the uint8 kernel, 1500 px even, 2300 px 30 % dearer).
_FLOAT_AREA_MAX_SIDE = 1024


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters; stored in every checkpoint and bundle manifest.

    size: side of the square model input in pixels.
    clahe: apply CLAHE to the L channel (LAB) after resizing.
    clahe_clip: CLAHE clip limit. clahe_grid: CLAHE tile grid (tiles per side).
    fov_threshold: largest brightness step (0-255, max over RGB, after blur)
        above the surround (the median of the darkest frame corner) that
        separates the field of view from it; the step used is 0.4 x (the
        image's 60th brightness percentile - surround), clipped to [3, this].
    fov_min_fill: fraction of the fitted circle (inside the frame) that the
        bright mask must fill for the FOV to count as found (dark lesions and
        under-exposed areas leave holes; a checkerboard fills about 0.5).
    fov_margin: extra border around the FOV circle, as a fraction of its radius.
    mask_outside: set pixels outside the FOV circle to black (removes flare).
    max_pixels: refuse images with more pixels than this (memory guard).
    fast_decode: decode large JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
        scaling) when the reduced image keeps a short side of at least
        ``decode_min_ratio`` x the model size (x (1 + fov_margin)) and at
        least ``decode_min_side``; a 10-megapixel camera JPEG then decodes
        several times faster. Geometry stays in full-resolution pixels.
    decode_min_ratio: that least ratio (>= 1). 1.0 (the default) decodes a
        512 px photograph at 1/2 scale for a 224 or 256 px model, which cuts
        ~1 ms of CPU per photograph.
    decode_min_side: and never a short side below this many pixels. The
        default, 256, is the quality gate's working side: below it the gate's
        texture measures see a softer image (a 64 px model on 320 px
        photographs: sharpness 9 % lower at ratio 1 without this floor).
    Configs stored without the two decode fields (written before they existed)
    read back as ratio 2.0 and side 0, the rule they were trained and
    validated with, so their pixels do not change under a newer runtime.
    """

    size: int = 320
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    fov_threshold: float = 10.0
    fov_min_fill: float = 0.6
    fov_margin: float = 0.0
    mask_outside: bool = True
    max_pixels: int = 120_000_000
    fast_decode: bool = True
    decode_min_ratio: float = 1.0
    decode_min_side: int = 256

    def __post_init__(self) -> None:
        if not 32 <= self.size <= 4096:
            raise ConfigError(f"preprocess size must be in 32..4096, got {self.size}")
        if not 1.0 <= self.decode_min_ratio <= 64.0:
            raise ConfigError(
                f"decode_min_ratio must be in [1, 64] (a reduced decode never goes below the model size), "
                f"got {self.decode_min_ratio}"
            )
        if not 0 <= self.decode_min_side <= 65536:
            raise ConfigError(f"decode_min_side must be in [0, 65536] pixels, got {self.decode_min_side}")
        if not 0.0 <= self.fov_min_fill <= 1.0:
            raise ConfigError(f"fov_min_fill must be in [0, 1], got {self.fov_min_fill}")
        if not 0.0 <= self.fov_threshold < 255.0:
            raise ConfigError(f"fov_threshold must be in [0, 255), got {self.fov_threshold}")
        if self.fov_margin < 0 or self.fov_margin > 1:
            raise ConfigError(f"fov_margin must be in [0, 1], got {self.fov_margin}")
        if self.clahe_clip <= 0 or self.clahe_grid < 1:
            raise ConfigError(
                f"clahe_clip must be > 0 and clahe_grid >= 1, got {self.clahe_clip}, {self.clahe_grid}"
            )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        if self.uses_legacy_decode_rule:
            # Written as before the fields existed: older runtimes read it, and caches keyed on
            # the dict (calibration sets, training caches) still match for the same pixels.
            del d["decode_min_ratio"], d["decode_min_side"]
        return d

    def differences(self, other: PreprocessConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (this value, other's value)}`` for each field where the two configs differ."""
        a, b = asdict(self), asdict(other)
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    @property
    def uses_legacy_decode_rule(self) -> bool:
        """The JPEG decode rule of configs stored before ``decode_min_ratio`` existed (ratio 2, no floor)."""
        return self.decode_min_ratio == LEGACY_DECODE_MIN_RATIO and self.decode_min_side == 0

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PreprocessConfig:
        given = [k for k in ("decode_min_ratio", "decode_min_side") if k in d]
        if len(given) == 1:
            raise ConfigError(
                f"preprocessing gives {given[0]} without {'decode_min_side' if given[0] == 'decode_min_ratio' else 'decode_min_ratio'}; "
                "the JPEG decode rule needs both (or neither: the rule of configs stored before they existed, "
                f"ratio {LEGACY_DECODE_MIN_RATIO:g} and no floor)"
            )
        if not given:  # stored before the decode fields existed: keep the 2x rule it was made with
            d = {**d, "decode_min_ratio": LEGACY_DECODE_MIN_RATIO, "decode_min_side": 0}
        return config_from_dict(cls, d, "preprocessing")


@dataclass(frozen=True)
class Geometry:
    """Where the model input came from in the original image.

    The model input is the square ``[x0, x0+side) x [y0, y0+side)`` of the
    original (parts outside the original are black padding), resized to
    ``size``. ``cx, cy, radius`` is the FOV circle in original pixels.
    "Original" is the decoded image turned upright by its Exif orientation
    (what :func:`decode` returns), so overlays drawn with it land on the
    photograph as a viewer shows it.
    """

    orig_h: int
    orig_w: int
    cx: float
    cy: float
    radius: float
    x0: int
    y0: int
    side: int
    size: int
    fov_found: bool
    fov_fill: float
    # Separate fields of view of comparable size in the image (2+: both eyes side by
    # side, a montage; the other fields above describe the largest).
    fov_count: int = 1

    def fov_mask(self, size: int | None = None, *, shrink: float = 1.0) -> np.ndarray:
        """Boolean ``(size, size)`` mask of the model-input pixels that show the field of view.

        A pixel counts when its centre lies inside the FOV circle (radius scaled
        by ``shrink``) *and* inside the original frame, so the zero padding of a
        clipped field never enters brightness or texture statistics. ``size``
        defaults to the model input size; any other size describes the same
        crop resampled (the quality gate works at a fixed size).
        """
        return self.fov_masks(size, (shrink,))[0]

    def fov_masks(self, size: int | None = None, shrinks: tuple[float, ...] = (1.0,)) -> tuple[np.ndarray, ...]:
        """:meth:`fov_mask` for several ``shrinks`` at once (one distance map; the quality gate needs three)."""
        n = self.size if size is None else int(size)
        if n < 1 or not all(0.0 < s <= 1.0 for s in shrinks):
            raise ConfigError(f"fov_mask needs size >= 1 and shrink in (0, 1], got {n}, {shrinks}")
        step = self.side / n  # original pixels per mask pixel
        centres = (np.arange(n, dtype=np.float64) + 0.5) * step
        ox, oy = self.x0 + centres, self.y0 + centres  # original coordinates of pixel centres
        dx2 = (ox - self.cx) ** 2
        dy2 = (oy - self.cy) ** 2
        # Outside the frame the squared distance is infinite, so one comparison
        # also drops the padding (no n x n boolean temporaries to AND together).
        dx2[(ox < 0) | (ox >= self.orig_w)] = np.inf
        dy2[(oy < 0) | (oy >= self.orig_h)] = np.inf
        d2 = np.add.outer(dy2, dx2)
        masks = []
        for shrink in shrinks:
            r = self.radius * shrink
            masks.append(d2 <= r * r)
        return tuple(masks)

    def to_original(self, heatmap: np.ndarray) -> np.ndarray:
        """Map a 2-D map over the model input onto the original image grid.

        ``heatmap`` is (h, w): a site map of tokens (a power-of-two stride,
        :func:`token_stride`), or a map at the model's own resolution (stride
        1). Token j of a stride-s grid is placed where it looks, on model pixel
        ``s * j`` (see below).
        Returns a float32 (orig_h, orig_w) array; pixels outside the crop are 0.
        """
        if heatmap.ndim != 2:
            raise ConfigError(f"heatmap must be 2-D, got shape {heatmap.shape}")
        # Where a token looks: every registered backbone downsamples with stride-2 layers padded
        # symmetrically, so token j of a stride-s grid is centred on model pixel s*j (not on the middle of
        # the cell [s*j, s*(j+1)), (s-1)/2 pixels further on: 15.5 at stride 32). A crop pixel x (centre
        # x + 0.5) is at model position (x + 0.5) * size / side, i.e. at token (that - 0.5) / s.
        h, w = heatmap.shape
        sx, sy = token_stride(self.size, w), token_stride(self.size, h)
        ax, ay = self.size / (self.side * sx), self.size / (self.side * sy)
        warp = np.array([[ax, 0.0, 0.5 * ax - 0.5 / sx], [0.0, ay, 0.5 * ay - 0.5 / sy]], np.float32)
        full = cv2.warpAffine(heatmap.astype(np.float32), warp, (self.side, self.side),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        out = np.zeros((self.orig_h, self.orig_w), np.float32)
        sx0, sy0 = max(0, -self.x0), max(0, -self.y0)
        dx0, dy0 = max(0, self.x0), max(0, self.y0)
        w = min(self.side - sx0, self.orig_w - dx0)
        h = min(self.side - sy0, self.orig_h - dy0)
        if w > 0 and h > 0:
            out[dy0 : dy0 + h, dx0 : dx0 + w] = full[sy0 : sy0 + h, sx0 : sx0 + w]
        return out


def token_stride(size: int, n: int) -> float:
    """Model pixels per token of an ``n``-token grid over a ``size``-pixel input: a power of two.

    Every registered backbone halves the resolution in stride-2 layers, each
    rounding up (a 300 px input gives 10 tokens of stride 32, not 30), so the
    stride is the smallest power of two ``s`` with ``ceil(size / s) == n``;
    1 for a map at the model's own resolution. A grid no power of two gives
    (a map of another kind) gets the power of two nearest ``size / n``.
    """
    if n <= 0 or size <= 0:
        raise ConfigError(f"token_stride needs a positive size and grid, got {size} and {n}")
    s = 1
    while s <= size:
        if -(-size // s) == n:
            return float(s)
        s *= 2
    return float(2 ** max(0, round(math.log2(size / n))))


@dataclass(frozen=True)
class Preprocessed:
    """A model-ready image (uint8 HWC RGB, ``size x size``) and the geometry used."""

    image: np.ndarray
    geometry: Geometry
    original_shape: tuple[int, int, int]
    mean_intensity: float  # of the FOV in the model input, 0-255 (for the quality gate)
    original: np.ndarray | None = None  # decoded RGB (at the decode scale, see fast_decode), if keep_original
    # The model input before CLAHE (only when CLAHE was applied): the quality gate
    # measures exposure, contrast and sharpness on it (CLAHE inflates the last two).
    unenhanced: np.ndarray | None = None


#: Largest file :func:`read_bytes` reads: above an uncompressed 16-bit RGB image of
#: PreprocessConfig's default pixel limit (720 MB); a disk image or a video named .jpg
#: would otherwise be read whole, on every preprocessing thread at once.
MAX_FILE_BYTES = 1 << 30


def read_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a file, turning OS errors into :class:`ImageReadError` with the path.

    Only regular files are read: a named pipe (or a device) called ``x.jpg``
    would block the read for ever, so it is opened without blocking and refused.
    A file larger than ``max_bytes`` is refused (:class:`ImageTooLargeError`) before it is read.
    """
    fd = -1
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        st = os.fstat(fd)
        mode = st.st_mode
        if stat.S_ISREG(mode) and st.st_size > max_bytes:
            raise ImageTooLargeError(f"the file is {st.st_size / 1e9:.1f} GB, more than any photograph this program "
                                     f"reads ({max_bytes / 1e9:.1f} GB): is it a photograph?", source=str(path))
        if stat.S_ISDIR(mode):
            raise ImageReadError("is a directory, not an image file", source=str(path))
        if not stat.S_ISREG(mode):
            raise ImageReadError("is not a regular file (a pipe, socket or device): copy the photograph itself",
                                 source=str(path))
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object owns it now
            return fh.read()
    except IsADirectoryError as exc:
        raise ImageReadError("is a directory, not an image file", source=str(path)) from exc
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise ImageReadError(f"is a link to {os.readlink(path)}, which does not exist", source=str(path)) from exc
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})", source=str(path)) from exc
    except OSError as exc:
        if os.path.isdir(path):  # a folder a walk could not open or list (no permission)
            raise ImageReadError(f"is a folder that cannot be opened ({exc.strerror or exc}): the photographs in "
                                 "it were NOT screened; make it readable and run again", source=str(path)) from exc
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})", source=str(path)) from exc
    finally:
        if fd >= 0:
            os.close(fd)


# libjpeg fills the part of a JPEG it could not decode (data cut short, then closed by an end-of-image
# marker; a zeroed or foreign block) with grey 128, and only warns. The last block of the stored
# raster is then exactly that grey; a photograph's corner (black surround, JPEG noise) never is.
_FILL_GREY = 128
_FILL_TAIL = (2, 16)  # rows x columns at the end of the stored raster that must all be fill


def _ends_in_fill(img: np.ndarray) -> bool:
    """Whether a JPEG decoded in stored order (before any orientation) ends in libjpeg's grey fill.

    A flat background of exactly that grey (Ben Graham's Kaggle preprocessing, grey padding) decodes to
    128 as well; it surrounds the picture, so it is at the start of the raster too, where a fill never is.
    """
    rows, cols = _FILL_TAIL
    if img.shape[0] < rows or img.shape[1] < cols:
        return False
    return bool((img[-rows:, -cols:] == _FILL_GREY).all()) and not bool((img[:rows, :cols] == _FILL_GREY).all())


def _damaged(source: str | None) -> ImageDecodeError:
    return ImageDecodeError("the image data ends early (the bottom of the picture is missing: libjpeg filled it "
                            "with grey); the file is damaged", source=source)


# Formats whose pixels are stored as they are (TIFF: uncompressed, as most writers store a photograph): zero bytes
# decode to black pixels, so a file whose end was zero-filled (a copy interrupted, a power cut while saving) decodes
# without complaint into a picture whose rows stop in a straight cut, and the gate passed it (session 60 review:
# 0002_OD_f_1 as a TIFF missing its bottom 30 %: ok, quality 0.53). A compressed TIFF fails to decode instead.
_RAW_RASTERS = frozenset({"bmp", "tiff", "bigtiff", "pnm"})
# Lit: brighter than this on the 8-bit scale (the field-of-view threshold's default), in the brightest channel.
_CUT_LIT = 10


@dataclass(frozen=True)
class _ZeroFilledCut:
    """Where a zero-filled end shows in a picture: ``side`` (top or bottom), ``rows`` black rows there, the
    ``row`` the data stops in and the ``column`` it stops at, and the ``length`` of the cut through lit pixels."""

    side: str
    rows: int
    row: int
    column: int
    length: int


def _brightest(row: np.ndarray) -> np.ndarray:
    """A picture row's brightest sample per pixel (the row itself for a grey picture).

    Channel by channel: ``row.max(axis=1)`` over 3 samples costs 6 times as much."""
    if row.ndim == 1:
        return row
    out = row[:, 0]
    for c in range(1, row.shape[1]):
        out = np.maximum(out, row[:, c])
    return out


def _black_rows(img: np.ndarray, *, top: bool) -> int:
    """How many exactly black rows (every sample 0) ``img`` has at its top or bottom; its height if all are.

    Read 16 rows at a time from that end: a photograph has a few such rows at most, and reading the whole
    picture for them doubled the cost of a BMP's decode.
    """
    h = img.shape[0]
    flat = img.reshape(h, -1)
    for start in range(0, h, 16):
        rows = flat[start : start + 16] if top else flat[max(0, h - start - 16) : h - start][::-1]
        lit = rows.any(axis=1)
        if lit.any():
            return start + int(lit.argmax())
    return h


def _zero_filled_cut(img: np.ndarray, tail: int, lit: float) -> _ZeroFilledCut | None:
    """The trace of a zero-filled end in a decoded BMP, TIFF or PNM, or None.

    A raster is stored row after row, each row left to right (a BMP from the bottom up, so its end is the top
    of the picture). A file whose bytes turned to zeros from some point on therefore decodes into exactly
    black rows at one end, after a row that holds data up to a column and only zeros after it. Refused when
    all of this holds, each for a reason:

    * that row's data stops inside the field: it has a lit pixel (``lit``: in ``img``'s units) before the
      stop, about as many as the next row in has there (a faint row of JPEG ringing along a padded
      photograph's straight edge has few), and the next row in goes on lit past the stop (at least
      sqrt(r) pixels: along the straight edge of a clipped field padded into a frame, the rows end
      together);
    * the cut, lit pixels before the stop plus those past it one row in, is long: at least the longer of
      r / 2 and 6 sqrt(r) (r: half the height of the non-black rows), the length at which the field-of-view
      fit takes a straight stretch for a cut (:func:`uopsl.runtime.fov._straight_cuts`). Where a
      photograph's black surround starts, the circle's edge is a chord a few pixels in: about 2 sqrt(2 r k)
      long k rows in, under 4 sqrt(r) for the two rows read here;
    * the file ends in at least as many zero bytes (``tail``) as the black part holds pixels.

    The rows at the end of a photograph's surround, masked or padded, end together (a circle's edge or a
    straight clip); a row stopping partway through the field, with its neighbour lit past the stop, is
    the trace of data that stopped in the middle of a row. (Data stopping at a row's end, or in the black
    left of the field, leaves a straight cut across whole rows, as a clipped field padded into a frame
    has: that is not refused.)
    """
    h, w = img.shape[:2]
    if h < 3 or w < 2 or tail < w or not (img.dtype == np.uint8 or img.dtype == np.uint16):
        return None
    first = _black_rows(img, top=True)
    if first == h:
        return None  # all black: the quality gate's to judge
    last = h - 1 - _black_rows(img, top=False)
    if first == 0 and last == h - 1:
        return None
    r = (last - first + 1) / 2.0
    min_cut, min_past = max(0.5 * r, 6.0 * math.sqrt(r), 8.0), max(4.0, math.sqrt(r))
    for side, rows, edge, inner in (("bottom", h - 1 - last, last, last - 1), ("top", first, first, first + 1)):
        if rows == 0 or not first <= inner <= last:
            continue
        row = _brightest(img[edge])
        stop = int(np.flatnonzero(row)[-1]) + 1
        if stop == w or tail < rows * w + (w - stop):
            continue  # the row holds data to its end, or the file's zeros are fewer than the black pixels
        inner_row = _brightest(img[inner])
        past = int(np.count_nonzero(inner_row[stop:] > lit))
        if past < min_past:
            continue  # the rows end together: a circle's edge, a straight clip
        before = int(np.count_nonzero(row[:stop] > lit))
        before_inner = int(np.count_nonzero(inner_row[:stop] > lit))
        if before and 2 * before >= before_inner and before + past >= min_cut:
            return _ZeroFilledCut(side, rows, edge, stop, before + past)
    return None


def _zero_filled(cut: _ZeroFilledCut, h: int, tail: int, source: str | None) -> ImageDecodeError:
    where = "above" if cut.side == "top" else "below"
    return ImageDecodeError(
        f"the image data stops partway through row {cut.row + 1} of {h} (at pixel {cut.column + 1}) and the file "
        f"ends in {tail:,} zero bytes: the {cut.side} {cut.rows} rows ({100 * cut.rows / h:.0f} %) are black "
        f"{where} a straight cut through the field of view ({cut.length} pixels), where a photograph's black "
        "surround ends in the edge of its circle; the file is damaged (a copy or save that was interrupted): "
        "copy it again from the camera or the original", source=source)


def _to_uint8(img: np.ndarray, sample_max: int | None = None, *, alpha_max: int | None = None) -> np.ndarray:
    """8-bit samples; ``alpha_max``: a 4th (alpha) plane's own range, when it differs from the colour's."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if img.dtype == np.uint16 and alpha_max is not None and img.ndim == 3 and img.shape[2] == 4:
        out = np.empty(img.shape, np.uint8)
        out[..., :3] = _to_uint8(img[..., :3], sample_max)
        out[..., 3] = cv2.convertScaleAbs(img[..., 3], alpha=255.0 / float(alpha_max))
        return out
    if img.dtype == np.uint16:
        # The range the file declares (a TIFF's MaxSampleValue or BitsPerSample: 12-bit camera data), else
        # the full 16 bits, never the picture's own brightest pixel: guessing the depth from it brightened
        # a dark photograph past the gate's too-dark check. A PNG's declared depth counts only for data left
        # unscaled (_png_sample_max).
        return cv2.convertScaleAbs(img, alpha=255.0 / float(sample_max or 65535))
    if np.issubdtype(img.dtype, np.floating):
        # NaN/inf samples (NaN becomes 0, +inf 255 below) must not pick the scale: np.nanmax warned on a picture of
        # NaN only, and an inf made [0, 1] data read as [0, 255]. No copy of the picture for it.
        top = float(np.max(img, where=np.isfinite(img), initial=-np.inf))
        scale = 255.0 if top <= 1.0 else 1.0
        with np.errstate(over="ignore"):  # +inf becomes float max, times 255 overflows to inf: clipped to 255
            return np.clip(np.nan_to_num(img) * scale + 0.5, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _png_scaled_values(bits: int) -> np.ndarray:
    """(65536,) bool: the 16-bit values an encoder scaling ``bits``-bit samples as PNG describes can write.

    The specification's recommended scaling (v * 65535 / (2**bits - 1), rounded), left-bit replication, and a
    plain left shift.
    """
    top = (1 << bits) - 1
    v = np.arange(top + 1, dtype=np.int64)
    ok = np.zeros(65536, bool)
    ok[(v * 65535 + top // 2) // top] = True
    replicated = np.zeros_like(v)
    for shift in range(16 - bits, -bits, -bits):
        replicated |= (v << shift) if shift >= 0 else (v >> -shift)
    ok[replicated & 0xFFFF] = True
    ok[v << (16 - bits)] = True
    return ok


def _png_sample_max(data: bytes, img: np.ndarray, *, alpha: bool = False) -> int | None:
    """The largest sample value of a 16-bit PNG that stores fewer significant bits unscaled, else None.

    A PNG declaring ``s`` significant bits (sBIT) holds them scaled up to 16 bits (rounded linear scaling,
    bit replication or a shift): every sample is then one of the values those scalings give. Data left
    unscaled (a 12-bit camera writing 0-4095) has no sample above ``2**s - 1``, and a photograph's samples
    are not all on that grid: only then is it read over its declared range. A scaled file, however dark,
    is read as it is. ``alpha``: the same rule for the alpha plane, which declares its own depth (an
    opaque plane left unscaled is all ``2**s - 1``, which no scaling writes).
    """
    if img.dtype != np.uint16 or (alpha and not (img.ndim == 3 and img.shape[2] in (2, 4))):
        return None
    bits = png_significant_bits(data, alpha=alpha)
    if bits is None:
        return None
    top = (1 << bits) - 1
    if alpha:
        plane = img[..., -1]
    else:
        plane = img[..., :3] if img.ndim == 3 and img.shape[2] >= 3 else img  # OpenCV's BGR(A)
    if int(plane.max()) > top or bool(_png_scaled_values(bits)[plane].all()):
        return None
    return top


def _packed_grey_tiff(bits: int, samples: tuple[int, ...]) -> bytes:
    """A one-row, uncompressed, little-endian grey TIFF of ``samples`` packed at ``bits`` bits each (MSB first)."""
    import struct

    acc = 0
    for v in samples:
        acc = (acc << bits) | v
    nbits = bits * len(samples)
    pad = -nbits % 8
    pixels = (acc << pad).to_bytes((nbits + pad) // 8, "big")
    entries = [(256, 3, len(samples)), (257, 3, 1), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 3, 1), (279, 4, len(pixels))]
    strip_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = strip_at if tag == 273 else value
        field = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, 1) + field
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + pixels


@functools.lru_cache(maxsize=8)
def _tiff_unpack_shift(bits: int) -> int:
    """How many bits OpenCV shifts samples stored at ``bits`` (9-15) bits per sample up by when it decodes them.

    OpenCV 4.10 and 5.1 move them to the top of 16 bits (a 12-bit 4095 comes back as 65520); read from the
    decoder itself, once, so another OpenCV that leaves them where they are is read correctly too.
    """
    top = (1 << bits) - 1
    img = cv2.imdecode(np.frombuffer(_packed_grey_tiff(bits, (1, top)), np.uint8),
                       cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if img is not None and img.dtype == np.uint16 and img.size == 2:
        got = [int(v) for v in img.reshape(-1)]
        for shift in range(16 - bits + 1):
            if got == [1 << shift, top << shift]:
                return shift
    log.debug("could not tell how OpenCV %s scales %d-bit TIFF samples; assuming to 16 bits", cv2.__version__, bits)
    return 16 - bits


def _tiff_sample_max(data: bytes) -> int | None:
    """The range of a decoded TIFF's samples: what it declares (:meth:`TiffDepth.declared_max`), on the decoder's scale.

    A file packed at 9-15 bits per sample comes back shifted up to 16 bits; dividing by the declared 4095
    saturated such a 12-bit photograph to white (session 36). A MaxSampleValue above what BitsPerSample can
    hold is not believed.
    """
    depth = tiff_depth(data)
    top = None if depth is None else depth.declared_max()
    if top is None or depth is None or depth.bits is None or not 8 < depth.bits < 16:
        return top
    return min(top, (1 << depth.bits) - 1) << _tiff_unpack_shift(depth.bits)


def _check_pixels(w: int, h: int, max_pixels: int, source: str | None) -> None:
    if w * h > max_pixels:
        raise too_many_pixels(w, h, max_pixels, source)


def decode(data: bytes, *, source: str | None = None, max_pixels: int = 120_000_000) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, TIFF incl. 16-bit, BMP, ...; DICOM with pydicom) to uint8 HWC RGB.

    Grayscale is replicated to three channels, RGBA is composited over black.
    A JPEG, PNG or WebP is turned upright by its Exif Orientation tag
    (:mod:`uopsl.runtime.exif`), as a viewer shows it and as the reduced-scale
    decode of ``fast_decode`` does; OpenCV turns a TIFF itself; other formats
    are returned as stored.
    Raises :class:`ImageDecodeError` for empty, truncated or non-image data, and for a file whose end was
    zero-filled (:func:`check_image_bytes`; a BMP, TIFF or PNM from its picture: :func:`_zero_filled_cut`).
    """
    if is_dicom(data):
        inner = dicom_picture(data, max_pixels, source)
        if isinstance(inner, np.ndarray):
            return inner
        data = inner  # the JPEG or JPEG 2000 it wraps, decoded as that file would be
    return _decode_checked(data, check_image_bytes(data, max_pixels, source), max_pixels, source)


def _decode_checked(data: bytes, fmt: str, max_pixels: int, source: str | None) -> np.ndarray:
    """:func:`decode` of bytes :func:`check_image_bytes` passed (``fmt``: what it found)."""
    j2k = j2k_precision(data) if fmt in ("j2k", "jp2") else None
    if j2k is not None and j2k[1]:
        raise ImageFormatError(f"a JPEG 2000 picture with signed {j2k[0]}-bit samples (no photograph stores "
                               "those); export the photograph as an ordinary JPEG", source=source)
    buf = np.frombuffer(data, np.uint8)
    # IMREAD_UNCHANGED ignores the Exif orientation; it is applied below, for JPEGs only.
    img = _imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR, source)
    if img is None:
        frame = jpeg_frame(data) if fmt == "jpeg" else None
        if frame is not None and (frame[2] != 8 or frame[3]):
            kind = f"{frame[2]}-bit {'lossless ' if frame[3] else ''}JPEG"
            raise ImageFormatError(f"a {kind} (the runtime reads 8-bit JPEGs); export the photograph as an "
                                   "ordinary JPEG or a PNG", source=source)
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes; the header says {fmt}, but the "
                               "data cannot be decoded)", source=source)
    _check_pixels(img.shape[1], img.shape[0], max_pixels, source)
    if fmt == "jpeg" and _ends_in_fill(img):
        raise _damaged(source)
    if fmt == "tiff":
        sample_max = _tiff_sample_max(data)
    elif fmt == "png":
        sample_max = _png_sample_max(data, img)
    else:  # a JPEG 2000's depth from its header (9-15 bits come back unscaled), nothing for the others
        sample_max = (1 << j2k[0]) - 1 if j2k is not None and 8 < j2k[0] < 16 else None
    if fmt in _RAW_RASTERS:
        tail = trailing_zero_bytes(data)
        lit = _CUT_LIT if img.dtype == np.uint8 else _CUT_LIT * (sample_max or 65535) / 255.0
        cut = _zero_filled_cut(img, tail, lit)
        if cut is not None:
            raise _zero_filled(cut, img.shape[0], tail, source)
    # A PNG's alpha plane has its own sBIT depth, and its own answer to "scaled or not".
    alpha_max = None
    if fmt == "png":
        alpha_max = _png_sample_max(data, img, alpha=True)
        if alpha_max is None and sample_max is not None:
            alpha_max = 65535
    return apply_orientation(_to_rgb(_to_uint8(img, sample_max, alpha_max=alpha_max), source), image_orientation(data))


# Formats whose unreadable header (an odd but valid layout) still goes to the decoder, as before the header
# readers existed: libjpeg, libpng and libtiff read the size themselves and the pixel limit is checked on
# what they return. The others are refused without a readable size.
_SIZE_CHECKED_AFTER_DECODE = frozenset({"jpeg", "png", "bmp", "tiff"})


def _check_tiff_pictures(p: TiffPictures, source: str | None) -> None:
    """OpenCV decodes a TIFF's first IFD only: refuse a file where that is not its one photograph."""
    if p.full_size > 1:
        many = f"{p.full_size}" if p.complete else f"at least {p.full_size}"
        raise ImageFormatError(f"a TIFF holding {many} full-size pictures (the runtime screens one photograph per "
                               "file, and would see only the first); save each page as its own file and screen "
                               "those", source=source)
    w, h = p.largest
    if p.first is None or 4 * p.first[0] * p.first[1] <= w * h:
        first = "has no picture size" if p.first is None else f"is a reduced copy ({p.first[0]}x{p.first[1]})"
        raise ImageFormatError(f"a TIFF whose first page {first} and whose photograph is on a later page "
                               f"({w}x{h}); the runtime would screen that first page: save the photograph as its "
                               "own file", source=source)


def check_image_bytes(data: bytes, max_pixels: int, source: str | None = None) -> str:
    """What :func:`decode` checks before decoding; returns the format (:func:`imagefile.image_format`).

    Empty, cut short (a JPEG, PNG or JPEG 2000 without the end of its image data), a WebP whose image data
    ends in zeros (:func:`imagefile.webp_zero_fill`), in a
    format the runtime does not read, a TIFF holding several pictures, or declaring more than ``max_pixels``
    pixels (a decompression bomb is refused before it is allocated): an
    :class:`ImageError` saying which.
    """
    if not data:
        raise ImageDecodeError("file is empty (0 bytes)", source=source)
    fmt = image_format(data)
    if fmt is None:
        other = other_format(data)
        if other is not None:
            raise ImageFormatError(f"a {other} file (the runtime reads {SUPPORTED}); export the photograph as an "
                                   "ordinary JPEG and screen that", source=source)
        raise ImageDecodeError(f"not an image file ({len(data)} bytes; expected {SUPPORTED}, judged from the "
                               "content, not the name)", source=source)
    if is_truncated(data):
        if fmt in ("jp2", "j2k"):
            raise ImageDecodeError("image data is truncated: the JPEG 2000 codestream does not reach its "
                                   "end-of-codestream marker (the file was cut short or its end zero-filled; "
                                   "OpenJPEG would decode the rest as a picture with wrong detail); the file is "
                                   "damaged: copy it again from the camera or the original", source=source)
        raise ImageDecodeError("image data is truncated (no end-of-image marker)", source=source)
    zero_fill = webp_zero_fill(data) if fmt == "webp" else None
    if zero_fill is not None:
        raise ImageDecodeError(f"the WebP image data ends in {zero_fill[0]:,} zero bytes, where an encoder writes "
                               f"at most {zero_fill[1]:,} for a picture this size: its end was zero-filled (a copy "
                               "or save that was interrupted) and would be decoded as a smeared or black picture; "
                               "the file is damaged: copy it again from the camera or the original", source=source)
    pictures = tiff_pictures(data) if fmt in ("tiff", "bigtiff") else None
    if pictures is not None:
        _check_tiff_pictures(pictures, source)
    header = header_size(data)
    if header is not None:
        _check_pixels(header[0], header[1], max_pixels, source)
    elif fmt not in _SIZE_CHECKED_AFTER_DECODE:
        # No other guard: OpenCV would decode it blind (a 38-byte WebP asked for 1.1 GiB).
        raise ImageDecodeError(f"the {fmt} header cannot be read (damaged file)", source=source)
    return fmt


def _imdecode(buf: np.ndarray, flags: int, source: str | None) -> np.ndarray | None:
    """``cv2.imdecode``, with OpenCV's own refusals as image errors.

    Formats whose header :func:`_header_size` does not read (PPM, Sun raster,
    WebP, JPEG 2000, BigTIFF) reach OpenCV's pixel limit, which raises
    ``cv2.error`` instead of returning None; a training run, a validation or a
    calibration must skip such a file, not stop.
    """
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error as exc:
        text = str(exc)
        if any(k in text for k in ("CV_IO_MAX_IMAGE", "pixels <=", "Insufficient memory", "Failed to allocate")):
            raise ImageTooLargeError("image is larger than OpenCV decodes (its header states too many pixels)",
                                     source=source) from None
        said = (text.strip().splitlines() or [""])[-1]
        said = said.split("error: ", 1)[-1].split(" in function", 1)[0]  # without OpenCV's build path
        raise ImageDecodeError(f"not a decodable image (OpenCV: {said[:160]})", source=source) from None
    except MemoryError:
        raise ImageTooLargeError("not enough memory to decode this image", source=source) from None


def _too_small(w: int, h: int, source: str | None) -> None:
    raise ImageTooSmallError(
        f"{w}x{h} pixels is too small for a fundus photograph (need >= {MIN_DECODE_SIDE} px a side)", source=source)


def _to_rgb(img: np.ndarray, source: str | None) -> np.ndarray:
    """A decoded uint8 OpenCV image (gray, BGR or BGRA) as HWC RGB."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        rgb = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB).astype(np.float32)
        return (rgb * alpha + 0.5).astype(np.uint8)
    raise ImageDecodeError(f"unsupported channel count {channels}", source=source)


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _dct_scales(w: int, h: int, below: int = 16) -> tuple[int, ...]:
    """The JPEG DCT scales (8, 4, 2) under ``below`` that divide both sides, largest first."""
    return tuple(f for f in (8, 4, 2) if f < below and w % f == 0 and h % f == 0)


def _jpeg_reduction(data: bytes, cfg: PreprocessConfig,
                    frame: tuple[int, int, int, bool] | None | Literal[False] = False) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) keeping the short side >= decode_min_ratio x size and >= decode_min_side.

    ``frame``: :func:`imagefile.jpeg_frame` of ``data`` when the caller has it (``False``: read it here).
    """
    if not cfg.fast_decode or data[:2] != b"\xff\xd8":
        return 1
    if frame is False:
        frame = jpeg_frame(data)
    if frame is None or frame[3] or frame[2] != 8:  # libjpeg scales 8-bit DCT frames only (not lossless)
        return 1
    w, h = frame[:2]
    # DCT scaling is itself a band-limited downscale (it keeps the low-frequency
    # coefficients), so decoding down to the model size loses little the final
    # resize would keep. The field of view spans about the short side, so at
    # ratio 1 the final resize stays near 1:1 (TVHL at 224 px: 512 -> 256
    # decoded, crop ~242 -> 224; a field narrower than the short side is
    # enlarged a little). On the 1,058 TVHL photographs against a full decode
    # (docs/results.md, "Preprocessing cost"): model inputs 0.9 grey levels apart
    # on average, no gate verdict changes at 224 px, 9 at 256 px.
    need = max(cfg.decode_min_ratio * cfg.size * (1.0 + cfg.fov_margin), cfg.decode_min_side)
    return next((f for f in _dct_scales(w, h) if min(w, h) / f >= need), 1)


def _finer_scale(size: tuple[int, int], scale: int, fov_side_full: float, cfg: PreprocessConfig) -> int:
    """``scale``, or a finer DCT scale when the field of view would be enlarged by more than _MAX_ENLARGE
    (``size``: the JPEG's stored width and height)."""
    if fov_side_full / scale * _MAX_ENLARGE >= cfg.size:
        return scale
    w, h = size
    return next((f for f in _dct_scales(w, h, below=scale) if fov_side_full / f * _MAX_ENLARGE >= cfg.size), 1)


def _decode_at(data: bytes, fmt: str, size: tuple[int, int], scale: int, cfg: PreprocessConfig,
               source: str | None) -> tuple[np.ndarray, int]:
    """Checked bytes (``fmt``, stored ``size`` from :func:`check_image_bytes` and the frame) decoded in full
    (scale 1) or at 1/``scale`` by DCT scaling, and the scale it was decoded at.

    The scale is checked against the pixels libjpeg returned (ceil of the stored size / scale): a frame
    it does not scale comes back in full, and its geometry must not be multiplied.
    """
    if scale == 1:
        return _decode_checked(data, fmt, cfg.max_pixels, source), 1
    rgb = _decode_reduced(data, scale, source)
    w, h = size
    if sorted(rgb.shape[:2]) != sorted((-(-h // scale), -(-w // scale))):
        log.debug("%s: libjpeg did not decode at 1/%d (got %s); decoding in full", source, scale, rgb.shape[:2])
        return _decode_checked(data, fmt, cfg.max_pixels, source), 1
    return rgb, scale


def _decode_reduced(data: bytes, scale: int, source: str | None) -> np.ndarray:
    """A JPEG decoded at 1/``scale`` (DCT scaling), turned upright exactly as :func:`decode` does.

    OpenCV's own orientation handling is switched off so that both paths use
    the same tag reader and the same transform (:mod:`uopsl.runtime.exif`).
    """
    img = _imdecode(np.frombuffer(data, np.uint8), _REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION, source)
    if img is None or img.ndim != 3:
        raise ImageDecodeError(f"not a decodable JPEG ({len(data)} bytes)", source=source)
    if _ends_in_fill(img):
        raise _damaged(source)
    return apply_orientation(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), jpeg_orientation(data))


def _square_crop(rgb: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` square at (x0, y0): a view when it lies in the frame, else a zero-padded copy."""
    h, w = rgb.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        return rgb[y0 : y0 + side, x0 : x0 + side]
    crop = np.zeros((side, side, 3), np.uint8)
    sx0, sy0, dx0, dy0 = max(0, x0), max(0, y0), max(0, -x0), max(0, -y0)
    cw, ch = min(w - sx0, side - dx0), min(h - sy0, side - dy0)
    if cw > 0 and ch > 0:
        crop[dy0 : dy0 + ch, dx0 : dx0 + cw] = rgb[sy0 : sy0 + ch, sx0 : sx0 + cw]
    return crop


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 image resized to ``size`` x ``size``: area averaging to shrink, bilinear to enlarge.

    Gives exactly the pixels of ``cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)``
    (``INTER_LINEAR`` when enlarging). A shrink by a non-integer factor, OpenCV's
    slow general area kernel, runs on a float32 copy instead: OpenCV uses the
    same float kernel for uint8 and float32 input, and the single rounding at
    the end (``convertScaleAbs``: round half to even, saturate) is the one its
    uint8 kernel applies, so the result is bit-identical (the tests check it
    over many ratios) at ~25 % less CPU. Beyond ``_FLOAT_AREA_MAX_SIDE`` (a
    full-resolution camera crop) the float copy costs more than it saves.
    """
    n = img.shape[0]
    if img.ndim < 2 or img.shape[1] != n or img.dtype != np.uint8:
        raise ConfigError(f"resize_square needs a square uint8 image, got {img.dtype} of shape {img.shape}")
    if n <= size:
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    if n % size == 0 or n > _FLOAT_AREA_MAX_SIDE:  # integer factor: OpenCV's fast box path (integer arithmetic)
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    out = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return cv2.convertScaleAbs(out)


def preprocess(
    data: bytes | np.ndarray,
    config: PreprocessConfig | None = None,
    *,
    source: str | None = None,
    keep_original: bool = False,
) -> Preprocessed:
    """Turn image bytes (or an RGB uint8 array) into the model input and its geometry.

    Raises :class:`ImageError` subclasses for unusable input; a photo without a
    recognisable field of view is *not* an error here (``geometry.fov_found`` is
    False, the quality gate decides).
    """
    cfg = config or PreprocessConfig()
    if isinstance(data, bytes) and is_dicom(data):
        # The JPEG or JPEG 2000 it wraps (decoded, and scaled down, as that file would be), or its pixels.
        data = dicom_picture(data, cfg.max_pixels, source)
    if isinstance(data, np.ndarray):
        rgb = data
        if rgb.ndim in (2, 3):
            _check_pixels(rgb.shape[1], rgb.shape[0], cfg.max_pixels, source)
            if min(rgb.shape[:2]) < MIN_DECODE_SIDE:  # before OpenCV, which fails on an empty array
                _too_small(rgb.shape[1], rgb.shape[0], source)
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(_to_uint8(rgb), cv2.COLOR_GRAY2RGB)
        elif rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ImageDecodeError(f"expected an HxWx3 RGB array, got shape {rgb.shape}", source=source)
        rgb = _to_uint8(rgb)
        scale, fmt, stored = 1, "", (0, 0)
    else:
        # The header is read once: format, completeness, pixel limit, and the JPEG frame for the decode scale.
        fmt = check_image_bytes(data, cfg.max_pixels, source)
        frame = jpeg_frame(data) if fmt == "jpeg" else None
        stored = frame[:2] if frame is not None else (0, 0)
        scale = _jpeg_reduction(data, cfg, frame)
        rgb, scale = _decode_at(data, fmt, stored, scale, cfg, source)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_DECODE_SIDE:
        _too_small(w, h, source)
    cx, cy, r, fill, _, fields = find_fov(rgb, cfg.fov_threshold)
    found = fill >= cfg.fov_min_fill and r >= 0.2 * min(h, w)
    if found and scale > 1 and isinstance(data, bytes) and not cfg.uses_legacy_decode_rule:
        # The decode scale was chosen from the frame's short side; a field of view much
        # narrower than the frame would then be enlarged. Decode finer (once) instead.
        finer = _finer_scale(stored, scale, 2 * r * (1.0 + cfg.fov_margin) * scale, cfg)
        if finer != scale:
            rgb, scale = _decode_at(data, fmt, stored, finer, cfg, source)
            h, w = rgb.shape[:2]
            cx, cy, r, fill, _, fields = find_fov(rgb, cfg.fov_threshold)
            found = fill >= cfg.fov_min_fill and r >= 0.2 * min(h, w)
    if not found:
        cx, cy, r = w / 2.0, h / 2.0, min(h, w) / 2.0
    half = r * (1.0 + cfg.fov_margin)
    side = max(2, int(round(2 * half)))
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    out = resize_square(_square_crop(rgb, x0, y0, side), cfg.size)
    # Geometry in the original's full-resolution pixels, whatever scale was decoded.
    geom = Geometry(
        orig_h=h * scale, orig_w=w * scale, cx=cx * scale, cy=cy * scale, radius=r * scale, x0=x0 * scale,
        y0=y0 * scale, side=side * scale, size=cfg.size, fov_found=bool(found), fov_fill=float(fill),
        fov_count=fields,
    )
    # FOV statistics on the model input (cheap) rather than the full original.
    fov = geom.fov_mask().view(np.uint8)
    masked = cv2.bitwise_and(out, out, mask=fov)
    if found and cfg.mask_outside:
        out = masked
    # The value of np.mean(cv2.mean(out, mask=fov)[:3]) (cv2.mean: sum x (1 / count)), from
    # plain sums of the masked copy: OpenCV's masked mean is a scalar loop, ~6x slower.
    n_fov = cv2.countNonZero(fov)
    mean_intensity = sum(v * (1.0 / n_fov) for v in cv2.sumElems(masked)[:3]) / 3 if n_fov else 0.0
    unenhanced = None
    if cfg.clahe:
        unenhanced = out
        lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)
        clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(cfg.clahe_grid, cfg.clahe_grid))
        lab[:, :, 0] = clahe.apply(lab[:, :, 0])
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        if found and cfg.mask_outside:
            out = cv2.bitwise_and(out, out, mask=fov)
    return Preprocessed(
        image=np.ascontiguousarray(out),
        geometry=geom,
        original_shape=(h * scale, w * scale, 3),
        mean_intensity=mean_intensity,
        original=rgb if keep_original else None,
        unenhanced=unenhanced,
    )


def preprocess_file(
    path: str | os.PathLike[str], config: PreprocessConfig | None = None, *, keep_original: bool = False
) -> Preprocessed:
    """:func:`preprocess` on a file path; errors name the file."""
    return preprocess(read_bytes(path), config, source=str(path), keep_original=keep_original)
