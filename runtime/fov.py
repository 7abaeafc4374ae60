"""Finding the circular field of view of a fundus photograph (used by :func:`uopsl.runtime.preprocess.preprocess`).

Fundus cameras image a circular field on a black background. The field of
view (FOV) is often clipped by the sensor (the circle is larger than
the frame, only its corners are cut). We threshold a blurred brightness map,
take the mask boundary that is *not* on the image border, and fit a circle to
it by least squares; a frame filled edge to edge (no boundary) uses the
inscribed circle of the frame. The fit is accepted only when the lit region is
compact (its boundary at most ``_MAX_EDGE_RATIO`` times a disc's), its free edge
is an arc of the fitted circle and the mask fills that circle, so a
checkerboard, a landscape photo or an OCT B-scan is reported as
``fov_found=False`` (the quality gate turns that into an 'ungradable' verdict).
So is a circle that the frame shows less than half of (a strip cut from a much
larger disc, or a row of photographs merged into one lit band). A second lit
region of comparable size (both eyes side by side, a montage) is counted in
:attr:`uopsl.runtime.preprocess.Geometry.fov_count`: the geometry describes the largest field, and the
quality gate refuses the image, since one model input would show one eye of
several.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from uopsl.runtime.errors import ConfigError

# Work on a copy at most this large for FOV detection (speed; the fit is sub-pixel anyway).
_DETECT_SIDE = 256
# Most boundary a lit region may have, relative to a disc of the same area, to be a
# field of view (1058 TVHL photographs: at most 3.8, a nearly black one full of
# JPEG blocks; a 16x16 checkerboard: 8.7).
_MAX_EDGE_RATIO = 5.0
# Largest median distance of the free edge from the fitted circle, relative to its
# radius (TVHL photographs: at most 0.045, partly shadowed fields; the OCT B-scan
# filed among them and a sky-over-field landscape: 0.10-0.15).
_MAX_ARC_RESIDUAL = 0.07
# Least part of the fitted circle's area that the frame must show (TVHL photographs,
# clipped above and below: at least 0.78; a 3072x512 row of six photographs, merged
# into one lit band at detection size: 0.23).
_MIN_VISIBLE_CIRCLE = 0.5
# A lit region at least this fraction of the largest one's area is another field of view
# (TVHL photographs: the second largest region is at most 0.016 of the largest; two
# photographs side by side: 0.99).
_OTHER_FIELD_RATIO = 0.25
# Frames at least this much longer than wide are also searched half by half for two fields
# of view that touch (cameras: 4:3 to 16:9, 1.78; both eyes side by side: 2 and more).
_SPLIT_ASPECT = 1.6
# Padding of one colour at least this bright (any channel) is trimmed before detection (_bright_margins);
# JPEG moves a flat band by a few levels, hence the tolerance.
_PAD_MIN_LEVEL = 60
_PAD_TOLERANCE = 8
_PAD_RING = 16
# Hull points over dark pixels, at least this share of the fitted ones, that lie at least _BRIDGE_OUTSIDE x r
# outside the circle fitted on the lit points are bridges to a mark outside the field (_without_bridges).
_MIN_BRIDGE = 0.05
_BRIDGE_OUTSIDE = 0.03
_NEAR = 2  # "lit" means a lit pixel within this many pixels of a hull point
# Lit parts of the mask thinner than 2 x _THIN + 1 pixels (at _DETECT_SIDE) count as dark in the bridge test's
# second pass: burned-in text, a date line or a camera's notch mark joined to the field (_without_bridges).
_THIN = 7
# Least lit part of the circle fitted in such a half for it to count as a field of its own.
_HALF_FIELD_MIN_FILL = 0.5


def _fit_circle(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float] | None:
    # Algebraic (Kasa) least-squares fit: x^2 + y^2 + D x + E y + F = 0.
    if len(xs) < 8:
        return None
    a = np.stack([xs, ys, np.ones_like(xs)], axis=1)
    b = -(xs**2 + ys**2)
    try:
        (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    except np.linalg.LinAlgError:
        return None
    cx, cy = -d / 2.0, -e / 2.0
    r2 = cx * cx + cy * cy - f
    if not np.isfinite(r2) or r2 <= 0:
        return None
    return float(cx), float(cy), float(np.sqrt(r2))


def percentile_u8(img: np.ndarray, q: float) -> float:
    """``np.percentile(img, q)`` (its default 'linear' method) of a uint8 image, from a histogram.

    Same value to the last bit (the two order statistics are read off the
    cumulative histogram and blended with numpy's own formula), without
    numpy's float copy and partition: ~8x cheaper on the 256 px detection image.
    """
    if img.dtype != np.uint8 or img.size == 0:
        raise ConfigError(f"percentile_u8 needs a non-empty uint8 image, got {img.dtype} of size {img.size}")
    n = img.size
    if n < 1 << 24:  # calcHist counts in float32: exact below 2^24 pixels, and 2x faster than bincount
        hist = cv2.calcHist([img.reshape(-1, 1) if img.ndim != 2 else img], [0], None, [256], [0, 256])
        cum = np.cumsum(hist.ravel().astype(np.int64))
    else:
        cum = np.cumsum(np.bincount(img.ravel(), minlength=256))
    virtual = (n - 1) * (q / 100)
    lo = math.floor(virtual)
    gamma = virtual - lo
    a = int(np.searchsorted(cum, lo, side="right"))  # the value at sorted position lo
    b = int(np.searchsorted(cum, min(lo + 1, n - 1), side="right"))
    diff = b - a
    return float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma)


def _medians_u8(blocks: tuple[np.ndarray, ...]) -> list[float]:
    """``sorted(np.median(b) for b in blocks)`` for equal-shaped uint8 blocks, in one sort (same values)."""
    s = np.sort(np.stack(blocks).reshape(len(blocks), -1), axis=1)
    m = s.shape[1]
    return sorted(float(v) for v in (s[:, (m - 1) // 2].astype(np.float64) + s[:, m // 2]) / 2)


def detect_fov(rgb: np.ndarray, threshold: float = 10.0) -> tuple[float, float, float, float, np.ndarray]:
    """Find the circular field of view.

    Returns ``(cx, cy, radius, fill, mask)`` in the image's own pixels, where
    ``fill`` is the fraction of the fitted circle (inside the frame) covered by
    the bright mask and ``mask`` is the detection mask at reduced resolution
    (of the frame inside a grey or white padding, when the image has one).
    """
    return find_fov(rgb, threshold)[:5]


# The 64 x 64 grid of _visible_circle_fraction over a disc's box (-1..1), and the grid cells in the disc:
# fixed, so computed once (half of that function's ~19 us per photograph).
_GRID = (np.arange(64) + 0.5) / 64 * 2 - 1
_GRID_DISC = np.add.outer(_GRID * _GRID, _GRID * _GRID) <= 1.0
_GRID_DISC_COUNT = int(np.count_nonzero(_GRID_DISC))


def _visible_circle_fraction(cx: float, cy: float, r: float, w: int, h: int) -> float:
    """Part of the disc (cx, cy, r) that lies inside the frame [0, w) x [0, h), on a 64 x 64 grid of its box."""
    xs, ys = cx + r * _GRID, cy + r * _GRID
    in_frame = np.outer((ys >= 0) & (ys < h), (xs >= 0) & (xs < w))
    return float(np.count_nonzero(_GRID_DISC & in_frame)) / _GRID_DISC_COUNT


def find_fov(rgb: np.ndarray, threshold: float = 10.0) -> tuple[float, float, float, float, np.ndarray, int]:
    """:func:`detect_fov`, plus how many separate fields of view of comparable size the image holds.

    The count is 1 for an ordinary photograph (and for one without a field of
    view); 2 or more when other lit regions reach ``_OTHER_FIELD_RATIO`` of the
    largest one's area (both eyes side by side, a montage), or when each half of
    a frame at least ``_SPLIT_ASPECT`` times longer than wide holds a field of
    its own (two fields that fill their halves touch and light one region).
    """
    margins = _bright_margins(rgb)
    if any(pad for pad, _ in margins):
        # Detection assumes a surround darker than the field; a grey or white padding (a dataset mirror's, a
        # viewer's letterbox) is not one. Detect on the frame inside it (the rows JPEG blurred across the
        # padding's edge blacked out, not cut off: cut off, they would make whatever touches them look
        # clipped by the sensor); the geometry stays in rgb's pixels.
        h, w = rgb.shape[:2]
        (top, t_ring), (bottom, b_ring), (left, l_ring), (right, r_ring) = margins
        view = rgb[top : h - bottom, left : w - right].copy()
        vh, vw = view.shape[:2]
        view[:t_ring], view[vh - b_ring :], view[:, :l_ring], view[:, vw - r_ring :] = 0, 0, 0, 0
        cx, cy, r, fill, mask, fields = _find_fov_framed(view, threshold)
        if fill == 0.0:  # no field: the whole frame's fallback, as without padding
            return w / 2.0, h / 2.0, min(h, w) / 2.0, 0.0, mask, fields
        return cx + left, cy + top, r, fill, mask, fields
    return _find_fov_framed(rgb, threshold)


def _find_fov_framed(rgb: np.ndarray, threshold: float) -> tuple[float, float, float, float, np.ndarray, int]:
    found = _find_fov_once(rgb, threshold)
    h, w = rgb.shape[:2]
    if found[5] == 1 and max(h, w) >= _SPLIT_ASPECT * min(h, w) and _own_field_in_each_half(rgb, threshold):
        return found[:5] + (2,)
    return found


def _bright_margins(rgb: np.ndarray) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Uniform bright padding at each edge (top, bottom, left, right) of an RGB image: for each, how many
    rows (columns) are padding, and how many after those JPEG blurred across the padding's edge.

    Padding is a run of edge rows each within ``_PAD_TOLERANCE`` grey levels of itself in every channel and
    at least ``_PAD_MIN_LEVEL`` bright (grey or white); then up to ``_PAD_RING`` rows whose median stays
    near its colour (JPEG rings across the edge for up to a 16-pixel chroma block), and two more: the row
    where padding meets the picture is a blend of both. A camera's own surround is dark (TVHL's grey ones
    read 17-40) and is left to the detector: photographs whose four corner pixels are darker never take
    this path. At most a third of each side; rows are read in small chunks, so a large photograph whose
    edge is not uniform costs little.
    """
    h, w = rgb.shape[:2]
    none = ((0, 0), (0, 0), (0, 0), (0, 0))
    if rgb.ndim != 3 or h < 16 or w < 16:
        return none
    corners = rgb[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]]
    if int(corners.max()) < _PAD_MIN_LEVEL:
        return none
    if all(int(np.ptp(line.reshape(-1, 3), axis=0).max()) <= _PAD_TOLERANCE for line in (rgb[h // 2], rgb[:, w // 2])):
        return none  # uniform across the middle both ways: no picture is padded here (a blank or grey frame)

    def run(band: np.ndarray) -> tuple[int, int]:
        """(padding rows, rows blurred across its edge) at the start of ``band`` (rows, pixels, 3)."""
        m = 0
        while m < len(band):
            b = band[m : m + 8].astype(np.int16)
            uniform = ((b.max(axis=1) - b.min(axis=1)).max(axis=1) <= _PAD_TOLERANCE) & \
                      (b.max(axis=(1, 2)) >= _PAD_MIN_LEVEL)
            if not uniform.all():
                m += int(np.argmin(uniform))
                break
            m += len(b)
        if m == 0:
            return 0, 0
        colour = np.median(band[m - 1].astype(np.int16), axis=0)
        near = np.abs(np.median(band[m : m + _PAD_RING].astype(np.int16), axis=1) - colour).max(axis=1) \
            <= 3 * _PAD_TOLERANCE
        ring = len(near) if near.all() else int(np.argmin(near))
        return m, min(ring + 2, len(band) - m)

    top = run(rgb[: h // 3])
    bottom = run(rgb[h - 1 : h - 1 - h // 3 : -1])
    if top[0] >= h // 3 and bottom[0] >= h // 3:  # uniform from top to bottom: no picture to pad, nothing to trim
        return none
    left = run(rgb[:, : w // 3].transpose(1, 0, 2))
    right = run(rgb[:, w - 1 : w - 1 - w // 3 : -1].transpose(1, 0, 2))
    if left[0] >= w // 3 and right[0] >= w // 3:
        return none
    return top, bottom, left, right


def _own_field_in_each_half(rgb: np.ndarray, threshold: float) -> bool:
    """Whether both halves of ``rgb`` (split across its long side) hold a field of view centred away from the cut.

    One field in the middle of a wide frame is cut in two by the split, and
    each half's fit finds a circle centred on the cut; two photographs side by
    side give each half its own circle, centred about a radius from it.
    """
    h, w = rgb.shape[:2]
    wide = w >= h
    half = (w if wide else h) // 2
    for part, seam in ((rgb[:, :half] if wide else rgb[:half], half), (rgb[:, half:] if wide else rgb[half:], 0)):
        cx, cy, r, fill, _, _ = _find_fov_once(part, threshold)
        ph, pw = part.shape[:2]
        if fill < _HALF_FIELD_MIN_FILL or r < 0.25 * min(ph, pw) or abs((cx if wide else cy) - seam) < 0.5 * r:
            return False
    return True


def _find_fov_once(rgb: np.ndarray, threshold: float) -> tuple[float, float, float, float, np.ndarray, int]:
    h, w = rgb.shape[:2]
    scale = min(1.0, _DETECT_SIDE / max(h, w))
    if scale < 1.0:
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    else:  # already small (a reduced-scale decode): a same-size resize would only copy
        small = rgb
    if small.ndim == 3:  # per-pixel max over channels (cv2: numpy's axis reduction is ~15x slower)
        chans = cv2.split(small)
        peak = cv2.max(cv2.max(chans[0], chans[1]), chans[2])
    else:
        peak = small
    bright = cv2.GaussianBlur(peak, (5, 5), 0)
    # Very dark photographs (under-exposed fields read 5-10) need a lower cut than
    # the default; the black surround of a camera stays at 0-3 after JPEG.
    # Some cameras leave a grey (not black) surround: measure it in the corners
    # (second darkest, since a clipped field can cover a corner or two).
    level = percentile_u8(bright, 60)
    k = max(2, min(bright.shape) // 25)
    corners = _medians_u8((bright[:k, :k], bright[:k, -k:], bright[-k:, :k], bright[-k:, -k:]))
    surround = corners[1]
    cut = surround + float(np.clip(0.4 * (level - surround), 3.0, threshold))
    if surround > 0.6 * level:
        # No darker surround at all: not a fundus field of view.
        return w / 2.0, h / 2.0, min(h, w) / 2.0, 0.0, np.zeros_like(bright, np.uint8), 1
    # bright > cut as 0/1: for 8-bit input OpenCV compares with floor(cut), which for integer pixels is
    # the same test (v > c exactly when v > floor(c)), ~2.5x cheaper than numpy's compare and cast.
    mask = cv2.threshold(bright, cut, 1, cv2.THRESH_BINARY)[1]
    # Labels without statistics, areas by bincount: ~3x cheaper than connectedComponentsWithStats.
    n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return w / 2.0, h / 2.0, min(h, w) / 2.0, 0.0, mask, 1
    fields = 1
    if n == 2:  # one lit region (the usual case): it is the mask
        area = cv2.countNonZero(mask)
    else:
        areas = np.bincount(labels.ravel(), minlength=n)
        largest = 1 + int(np.argmax(areas[1:]))
        area = int(areas[largest])
        fields = int(np.count_nonzero(areas[1:] >= _OTHER_FIELD_RATIO * area))
        mask = (labels == largest).astype(np.uint8)
    # A field of view is one compact lit region; a pattern (checkerboard, text,
    # a grid) has a boundary many times that of a disc of the same area.
    all_edges, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    perimeter = sum(cv2.arcLength(c, True) for c in all_edges)
    if perimeter > _MAX_EDGE_RATIO * 2.0 * np.sqrt(np.pi * float(area)):
        return w / 2.0, h / 2.0, min(h, w) / 2.0, 0.0, mask, 1
    # The field is convex: its hull closes dark lesions or under-exposed areas
    # that reach the rim, which would otherwise bend the circle fit.
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    hull_mask = np.zeros_like(mask)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    sh, sw = mask.shape
    contours, _ = cv2.findContours(hull_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    # Points on the frame border are where the sensor clipped the circle, not its edge; so are the
    # points of a straight cut inside the frame (a clipped field padded to a square or a wider frame).
    inner = (pts[:, 0] > 1) & (pts[:, 0] < sw - 2) & (pts[:, 1] > 1) & (pts[:, 1] < sh - 2)
    enough = 0.05 * 2 * (sh + sw)
    hull_area = cv2.countNonZero(hull_mask)
    on_cut, cuts = _straight_cuts(pts, hull.reshape(-1, 2), hull_area, (sh, sw))
    fit = None
    if cuts and (inner & ~on_cut).sum() >= enough:
        fit = _fit_circle(pts[inner & ~on_cut, 0] + 0.5, pts[inner & ~on_cut, 1] + 0.5)
        # A cut is a chord of the field: both its ends lie on the circle (a horizon or the edge of a
        # rectangular picture does not end there). Otherwise everything is judged as before, cut included.
        if fit is not None and all(abs(math.hypot(x + 0.5 - fit[0], y + 0.5 - fit[1]) - fit[2]) <= _MAX_ARC_RESIDUAL * fit[2]
                                   for x0, y0, x1, y1 in cuts for x, y in ((x0, y0), (x1, y1))):
            inner &= ~on_cut
        else:
            fit = None
    if fit is None:
        fit = _fit_circle(pts[inner, 0] + 0.5, pts[inner, 1] + 0.5)
    if fit is not None and inner.sum() >= enough:
        fit, inner = _without_bridges(pts, inner, mask, fit, enough)
    if fit is not None and inner.sum() >= enough:
        # The free edge must be an arc of the fitted circle (a horizon, a straight
        # border or an irregular blob is not).
        fcx, fcy, fr = fit
        dist = np.hypot(pts[inner, 0] + 0.5 - fcx, pts[inner, 1] + 0.5 - fcy)
        if float(np.median(np.abs(dist - fr))) > _MAX_ARC_RESIDUAL * fr:
            return w / 2.0, h / 2.0, min(h, w) / 2.0, 0.0, mask, 1
    else:
        # Filled edge to edge (or nearly): use the circle around the hull's box.
        x, y, bw, bh = cv2.boundingRect(hull_mask)
        fit = (x + bw / 2.0, y + bh / 2.0, max(bw, bh) / 2.0)
    cx, cy, r = fit
    if _visible_circle_fraction(cx, cy, r, sw, sh) < _MIN_VISIBLE_CIRCLE:
        return w / 2.0, h / 2.0, min(h, w) / 2.0, 0.0, mask, 1
    yy, xx = np.arange(sh)[:, None], np.arange(sw)  # np.ogrid's values, without its ~7 us of Python
    inside = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    # Counts instead of boolean indexing (same ratios of integers, no gathered copies).
    n_inside = np.count_nonzero(inside)
    fill = np.count_nonzero(mask.view(bool) & inside) / n_inside if n_inside else 0.0
    # A hull reaching well outside the circle means the bright area is not a circle.
    outside_frac = (hull_area - np.count_nonzero(hull_mask.view(bool) & inside)) / max(1.0, float(hull_area))
    if outside_frac > 0.05:
        fill = min(fill, 1.0 - outside_frac)
    return cx / scale, cy / scale, r / scale, fill, mask, fields


def _without_bridges(pts: np.ndarray, inner: np.ndarray, mask: np.ndarray, fit: tuple[float, float, float],
                     enough: float) -> tuple[tuple[float, float, float], np.ndarray]:
    """The circle refitted without the hull's bridges to something outside the field, and the points it used.

    A label, a header band or burned-in text that touches the field joins its lit region; the hull then
    spans the dark gap between them with straight chords, whose points pull the circle towards the mark
    (a grey header band moved it in two thirds of TVHL photographs, and the gate passed them). Hull
    points over dark pixels are such bridges, or chords across a shadowed rim. Refitted on the lit points
    alone, a bridge to an outside mark lies outside the new circle, a shadow chord inside it: only the
    first case takes the refit, so photographs with neither (or with shadows only) keep their circle.

    Text is lit, so the hull also runs along the letters' own outline, which stays in that fit. A second
    pass then leaves out, on the same terms, the bridges left over together with the hull points lit only
    by thin parts of the mask (narrower than ``2 * _THIN + 1`` detection pixels: strokes, a line of text, a
    camera's notch mark). It runs only where the first pass had enough bridges to try: a mark joined to the
    field through dark gaps leaves them, and most photographs skip the morphology. Why two passes, and
    why the second keeps the first's bridges: a shadowed rim's lit speckles are thin too, and counted in
    the first pass they outvote a header band's bridges; without the bridges, large text's refit fails.
    The cost is that a borderline first-pass point set can be tipped by the thin points it is judged with
    (``docs/results.md``, section 2, has the figures of each choice).
    """
    xs, ys = pts[:, 0].astype(np.intp), pts[:, 1].astype(np.intp)
    # Lit means lit within _NEAR pixels (the hull's outline runs a pixel or two off a rasterised circle's).
    box = 2 * _NEAR + 1
    first = inner & (cv2.dilate(mask, np.ones((box, box), np.uint8))[ys, xs] == 0)
    if int(first.sum()) < _MIN_BRIDGE * int(inner.sum()):
        # Too few bridges to try. A mark that joins the field through dark gaps (text, a notch) leaves more,
        # so the thin-mark pass is skipped too, and with it the morphology (~0.1 ms; 74 % of TVHL photographs).
        return fit, inner
    fit, inner = _refit_without(pts, inner, first, fit, enough)
    # Solid means near a part of the mask that a (2t + 1)-pixel square fits in (an opening: the erosion's
    # cores, grown by t + _NEAR). Square elements: OpenCV runs them as two 1-D passes (a disc costs ~5x more).
    # Solid implies lit: a core's square lies within t + _NEAR of the point, so the point is within _NEAR of
    # a lit pixel; the second set therefore holds the first pass's points if its refit was refused, plus thin ones.
    t = max(1, round(_THIN * max(mask.shape) / _DETECT_SIDE))
    # OpenCV erodes as if the frame continued lit beyond its border, so a field clipped by the frame keeps its
    # cut edge, and a mark glued to the border counts as solid from half the thickness (t + 1 pixels).
    solid = cv2.erode(mask, np.ones((2 * t + 1, 2 * t + 1), np.uint8))
    second = inner & (cv2.dilate(solid, np.ones((2 * t + box, 2 * t + box), np.uint8))[ys, xs] == 0)
    # Equal sets: the first pass refused its refit and no thin mark adds a point, so the answer is known.
    if not np.array_equal(second, first):
        fit, inner = _refit_without(pts, inner, second, fit, enough)
    return fit, inner


def _refit_without(pts: np.ndarray, inner: np.ndarray, off: np.ndarray, fit: tuple[float, float, float],
                   enough: float) -> tuple[tuple[float, float, float], np.ndarray]:
    """``fit`` refitted on ``inner`` without the points ``off``, if those are enough of them (_MIN_BRIDGE) and
    lie outside the refitted circle (a median of _BRIDGE_OUTSIDE x r); else ``fit`` and ``inner`` unchanged."""
    if int(off.sum()) < _MIN_BRIDGE * int(inner.sum()):
        return fit, inner
    kept = inner & ~off
    if kept.sum() < enough:
        return fit, inner
    refit = _fit_circle(pts[kept, 0] + 0.5, pts[kept, 1] + 0.5)
    if refit is None:
        return fit, inner
    cx, cy, r = refit
    outside = np.hypot(pts[off, 0] + 0.5 - cx, pts[off, 1] + 0.5 - cy) - r
    if float(np.median(outside)) <= _BRIDGE_OUTSIDE * r:
        return fit, inner
    return refit, kept


def _straight_cuts(pts: np.ndarray, hull: np.ndarray, hull_area: int,
                   frame: tuple[int, int]) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Which contour points ``pts`` (N x 2) lie on a long horizontal or vertical stretch of the convex ``hull``
    inside the ``frame`` (h, w), and each stretch's ends (x0, y0, x1, y1); stretches along the frame's
    border are left to the caller's border test.

    Such a stretch is a cut, not the circle: a field clipped by the sensor and then padded (a square
    dataset mirror, a letterboxed export) keeps its straight clipped edges inside the frame, and a
    circle fitted through them comes out too small and fails the arc check (the whole photograph
    then reads "no field of view"). A stretch is a run of consecutive hull edges within a 2-pixel
    band (the hull splits a rasterised straight edge into pieces a pixel apart). A rasterised circle
    is flat within 2 pixels for about 4.5 sqrt(r) pixels at its top, bottom and sides; a stretch counts
    as a cut from the longer of r / 2 and 6 sqrt(r) (r from the hull's area). Only axis-aligned stretches count:
    a slanted chord the hull draws across a shadowed rim is fitted as before, a horizontal or vertical one is
    left out like a cut when its ends lie on the circle (TVHL ``0073_OI_f_1``, whose dim right side left a
    vertical edge: its circle moved onto the visible rim).
    """
    on_cut = np.zeros(len(pts), bool)
    ends: list[tuple[int, int, int, int]] = []
    n = len(hull)
    if n < 3 or hull_area <= 0:
        return on_cut, ends
    r = math.sqrt(hull_area / math.pi)
    min_len = max(0.5 * r, 6.0 * math.sqrt(r), 8.0)
    v = hull.astype(np.int64)
    w = np.concatenate((v[1:], v[:1]))  # edge i: vertex i -> i + 1 (np.roll costs more than the rest here)
    d = np.abs(w - v)
    # flat[i, c]: edge i keeps coordinate c within a pixel, off the frame's border; most hulls have no
    # stretch long enough, which the flat edges' total length shows without a loop.
    flat_all = (d <= 1) & (np.minimum(v, w) > 1) & (np.maximum(v, w) < np.array([frame[1], frame[0]]) - 2)
    total = (d[:, ::-1] * flat_all).sum(axis=0)
    for along in (0, 1):  # 0: horizontal stretches (x varies), 1: vertical ones
        flat = flat_all[:, 1 - along]
        if total[1 - along] < min_len or flat.all():
            continue
        first = int(np.argmin(flat)) + 1  # walk from after a non-flat edge, so no stretch wraps around
        flat_r = np.concatenate((flat[first:], flat[:first]))
        span_r = np.concatenate((d[first:, along], d[:first, along])) * flat_r
        if np.bincount(np.cumsum(~flat_r), weights=span_r).max() < min_len:
            continue  # no run of consecutive flat edges is long enough (a circle's top and bottom together were)
        a, b, fl = v[:, along].tolist(), v[:, 1 - along].tolist(), flat.tolist()
        i = 0
        while i < n:
            e = (first + i) % n
            if not fl[e]:
                i += 1
                continue
            lo_a = hi_a = a[e]
            lo_b = hi_b = b[e]
            k = 0
            while i + k < n and fl[(e + k) % n]:
                j = (e + k + 1) % n
                if max(hi_b, b[j]) - min(lo_b, b[j]) > 2:
                    break
                lo_a, hi_a, lo_b, hi_b = min(lo_a, a[j]), max(hi_a, a[j]), min(lo_b, b[j]), max(hi_b, b[j])
                k += 1
            if hi_a - lo_a >= min_len:
                ca, cb = pts[:, along], pts[:, 1 - along]
                on_cut |= (cb >= lo_b - 1) & (cb <= hi_b + 1) & (ca >= lo_a) & (ca <= hi_a)
                mid = (lo_b + hi_b) // 2
                ends.append((lo_a, mid, hi_a, mid) if along == 0 else (mid, lo_a, mid, hi_a))
            i += max(k, 1)
    return on_cut, ends
