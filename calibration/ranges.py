"""Activation range collection: minmax, entropy (KL) and percentile, from one pass.

The FP32 ONNX model is run with ONNX Runtime over the calibration set with
every floating-point activation exposed as an extra graph output. For each
tensor we keep, in bounded memory (no activations are stored):

* the exact running min and max;
* a signed histogram of ``NUM_BINS`` bins over ``[-R, R]``, where ``R`` is a
  power of two covering the largest ``|x|`` seen so far. When a batch exceeds
  ``R`` the range doubles and adjacent bin pairs merge, which is exact because
  the old bin edges are a subset of the new ones (no re-binning error).

From these one pass yields all three methods (so a comparison of methods costs
one inference pass, not three):

* ``minmax``: the observed ``(min, max)``;
* ``entropy``: TensorRT's calibration (8-bit inference with TensorRT, GTC 2017,
  as implemented by NVIDIA's pytorch-quantization): on the histogram of
  ``|x|``, choose the threshold whose 128-level quantized distribution has the
  smallest KL divergence from the clipped reference distribution. A tensor
  with too few values for its histogram (the logits: images x classes) keeps
  its minmax range, since KL between near-empty histograms is noise;
* ``percentile``: the given percentile (default 99.99) of ``|x|``.

Entropy and percentile yield a symmetric limit ``amax``; the tensor's range is
its observed ``(min, max)`` clipped to ``[-amax, amax]``, so a ReLU output
keeps its zero minimum (what an asymmetric u8 encoding wants) while
``max(|min|, |max|)`` equals ``amax`` (what a symmetric s8 encoding wants).
Clipped ranges are therefore never wider than the minmax ones.

One exception to measuring: the tensors computed from the uint8 input image by
a cast, layout ops (transpose, reshape) and arithmetic with constants (the
mean subtraction) have ranges bounded from the input's type alone, exactly
for what ``uopsl export`` writes (:func:`input_bound_ranges`), and the table
holds those for each of its methods (TensorRT's own legacy calibrator, which
does not read the table, measures them as it always does). A
measured range there is wrong in two ways: entropy on the cast input, whose
histogram is dominated by the black border, chose [0, 20] on test images (a
TensorRT 8.x implicit-INT8 engine reading the cache could run the transpose
in INT8 on it and clip every pixel above 20), and any method's range ends at
the brightest pixel of the calibration images, clipping brighter optic discs
in the field.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.onnx_file import model_sha256
from uopsl.runtime.progress import track
from uopsl.calibration.table import METHODS, CalibrationTable, load_if_current
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

NUM_BINS = 8192  # signed bins over [-R, R]: >= 2048 bins over [0, amax] for |x|, as TensorRT uses
KL_LEVELS = 128  # quantized levels of a symmetric int8 encoding (one sign)
DEFAULT_PERCENTILE = 99.99
# Entropy needs a populated histogram: below this many values per signed bin, minmax is used.
ENTROPY_MIN_VALUES_PER_BIN = 4
# Ops whose outputs are constants, not activations.
_CONSTANT_OPS = frozenset({"Constant", "ConstantOfShape"})


class ActivationHistogram:
    """Running min/max and an exact-merge signed histogram of one tensor (see module doc)."""

    def __init__(self, num_bins: int = NUM_BINS) -> None:
        if num_bins < 4 * KL_LEVELS or num_bins % 4:
            raise ConfigError(f"num_bins must be a multiple of 4 and >= {4 * KL_LEVELS}, got {num_bins}")
        self.num_bins = num_bins
        self.lo = math.inf
        self.hi = -math.inf
        self.limit = 0.0  # R; 0 until a non-zero value is seen
        self.hist = np.zeros(num_bins, np.int64)
        self.count = 0
        self.nonfinite = 0

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, np.float32).ravel()
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite += int(x.size - finite.sum())
            x = x[finite]
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.count += x.size
        peak = max(abs(lo), abs(hi))
        if peak > 0 and self.limit == 0.0:
            # Exact zeros counted so far sit in the bin right of 0; move them with the new limit.
            zeros = int(self.hist.sum())
            self.limit = 2.0 ** math.ceil(math.log2(peak))
            self.hist[:] = 0
            self.hist[self.num_bins // 2] = zeros
        while peak > self.limit:
            self._double()
        if self.limit == 0.0:
            self.hist[self.num_bins // 2] += x.size
            return
        nb = self.num_bins
        # float32 is exact enough for a bin index below 2**24; it halves the memory traffic.
        t = x * np.float32(nb / (2.0 * self.limit))
        t += np.float32(nb // 2)
        idx = t.astype(np.intp)
        np.clip(idx, 0, nb - 1, out=idx)
        self.hist += np.bincount(idx, minlength=nb)

    def _double(self) -> None:
        # Bins [2m, 2m+1] over [-R, R] become bin nb/4 + m over [-2R, 2R]; the edges line up exactly.
        nb = self.num_bins
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        self.hist = np.zeros(nb, np.int64)
        self.hist[nb // 4 : nb // 4 + nb // 2] = merged
        self.limit *= 2.0

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Histogram of ``|x|`` over ``[0, R]`` (``num_bins / 2`` bins) and its bin width."""
        half = self.num_bins // 2
        pos = self.hist[half:]
        neg = self.hist[:half][::-1]
        return pos + neg, (self.limit / half if self.limit > 0 else 0.0)

    def range(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """The tensor's ``(min, max)`` under ``method``; ``(0, 0)`` for a tensor never observed."""
        if self.count == 0:
            return 0.0, 0.0
        lo, hi = self.lo, self.hi
        if method == "minmax" or self.limit == 0.0:
            return lo, hi
        h, width = self.abs_histogram()
        if method == "entropy":
            if self.count < ENTROPY_MIN_VALUES_PER_BIN * self.num_bins:
                # KL between histograms with fewer values than bins measures sampling noise
                # (e.g. logits: images x classes values); such tensors keep their observed range.
                return lo, hi
            amax = entropy_amax(h, width)
        elif method == "percentile":
            amax = percentile_amax(h, width, percentile)
        else:
            raise ConfigError(f"calibration method must be one of {METHODS}, got {method!r}")
        clipped = max(lo, -amax), min(hi, amax)
        if clipped[0] >= clipped[1] and lo < hi:
            # The symmetric limit falls below the whole range (a tensor far from 0): clipping
            # would empty it, so keep the observed range.
            return lo, hi
        return clipped


def entropy_amax(abs_hist: np.ndarray, bin_width: float, *, levels: int = KL_LEVELS,
                 max_candidates: int | None = None) -> float:
    """TensorRT-style KL threshold on a histogram of ``|x|`` (bins of ``bin_width`` from 0).

    For each candidate threshold ``i`` bins (every ``i`` from ``levels`` to
    the last non-empty bin): the reference ``P`` is the histogram up to ``i``
    with everything beyond added to its last bin; ``Q`` merges ``P``'s bins
    into ``levels`` quantized bins (bin ``j`` goes to ``floor(j * levels /
    i)``) and spreads each back evenly over its non-empty source bins. The
    threshold with the smallest KL(P||Q) wins, the largest among ties. Like
    pytorch-quantization, the first bin is set to the second so that the
    spike of exact zeros after a ReLU does not decide the threshold. This is
    NVIDIA pytorch-quantization's ``_compute_amax_entropy`` (stride 1, start
    bin 128) bin for bin, on a histogram that ends at the largest ``|x|``;
    the KL curve has several local minima, so a coarser search can land
    several percent away (up to 14 % was measured with every 4th-7th bin).

    Every candidate is scored because the search is exact only then, and it
    is cheap when vectorised: KL(P||Q) needs only prefix sums of ``h``,
    ``h log h`` and the non-empty-bin count, plus one term per quantized bin,
    so a candidate costs O(``levels``), not O(``i``). The few candidates
    within rounding of the minimum are then re-scored bin by bin (as scipy's
    ``entropy`` does) so that near-ties break as in the reference. Candidates
    whose first ``i`` bins are all empty (no value below the threshold) are
    skipped; the reference would score them NaN. One departure from the
    reference: candidates whose first ``i - 1`` bins are empty are skipped
    too. Their P is a single spike (every value clipped into the last bin),
    so is Q, and KL is 0 by construction; the reference picks them, which on
    a tensor far from zero (a sigmoid gate in (0.06, 0.99)) kept its range
    one bin wide just past its smallest value and clipped 100 % of the
    values. A tensor with values in the histogram's second bin (next to
    zero: most ReLU outputs, any tensor that crosses zero) has no such
    candidate, so its threshold is the reference's; one whose only values
    near zero are exact zeros (which the first bin held, and the reference
    overwrites with the second) can move, to a threshold that keeps its
    values (a gate in (0.06, 0.99) with 30 % exact zeros: 0.060 -> 0.990).

    ``max_candidates``: score only about that many candidates, every
    ``stride`` bins (the old, approximate search; the result can then differ
    from the exact one by several strides). ``None`` (default): every bin.
    """
    h = np.asarray(abs_hist, np.float64)
    used = np.flatnonzero(h)
    if used.size == 0 or bin_width <= 0:
        return 0.0
    n = int(used[-1]) + 1
    if n <= levels:
        return n * bin_width  # everything fits in `levels` bins: nothing worth clipping
    h = h[:n].copy()
    h[0] = h[1]
    if max_candidates is None:
        candidates = np.arange(levels, n + 1)
    else:
        if max_candidates < 1:
            raise ConfigError(f"max_candidates must be >= 1 or None (every bin); got {max_candidates}")
        stride = max(1, -(-(n - levels) // max_candidates))
        candidates = np.arange(levels, n + 1, stride)
        if candidates[-1] != n:
            candidates = np.append(candidates, n)
    # Candidates in chunks: each costs a few (chunk, levels + 1) arrays, so memory stays bounded for any bin count.
    chunk = 4096
    kl = np.concatenate([_kl_all_candidates(h, candidates[c : c + chunk], levels)
                         for c in range(0, candidates.size, chunk)])
    finite = np.isfinite(kl)
    if not finite.any():
        # Every candidate is undefined or infinite: the reference keeps the last one (np.argmin over
        # the reversed curve). Keep every value instead when none scored at all.
        scored = ~np.isnan(kl)
        return float(candidates[np.flatnonzero(scored)[-1]] if scored.any() else n) * bin_width
    best = float(kl[finite].min())
    # Rounding of the prefix-sum form is ~1e-13 of the summed log-counts; re-score near-ties exactly.
    tol = 1e-9 * max(1.0, abs(best))
    near = np.flatnonzero(finite & (kl <= best + tol))
    exact = np.array([_kl_candidate(h, int(candidates[c]), levels) for c in near])
    pick = near[len(exact) - 1 - int(np.argmin(exact[::-1]))]  # the largest among ties
    return float(candidates[pick]) * bin_width


def _kl_all_candidates(h: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """KL(P||Q) of :func:`entropy_amax` for every candidate at once (inf: P > 0 where Q = 0; NaN: unscored).

    With ``T = sum(h)`` (the reference keeps the tail), ``S_i = sum(h[:i])``
    (the sum of Q before normalising) and Q constant (``sum_g / count_g``)
    over the non-empty bins of quantized bin ``g``:
    ``KL = (sum ref log ref - sum_g sum_g log(sum_g / count_g) - tail log q_last) / T - log T + log S_i``.
    """
    i = candidates.astype(np.int64)
    csum = np.concatenate(([0.0], np.cumsum(h)))
    xlogx = np.zeros_like(h)
    pos = h > 0
    xlogx[pos] = h[pos] * np.log(h[pos])
    cxlogx = np.concatenate(([0.0], np.cumsum(xlogx)))
    cnz = np.concatenate(([0], np.cumsum(pos)))
    total = csum[-1]
    below = csum[i]  # S_i
    tail = total - below
    last = h[i - 1]
    ref_last = last + tail
    with np.errstate(divide="ignore", invalid="ignore"):
        safe_last = np.where(ref_last > 0, ref_last, 1.0)
        sum_plogp = cxlogx[i - 1] + np.where(ref_last > 0, ref_last * np.log(safe_last), 0.0)
        # Quantized bin g covers source bins [ceil(g i / L), ceil((g + 1) i / L)).
        edges = (np.arange(levels + 1, dtype=np.int64)[None, :] * i[:, None] + levels - 1) // levels
        gsum = csum[edges[:, 1:]] - csum[edges[:, :-1]]
        gcnt = (cnz[edges[:, 1:]] - cnz[edges[:, :-1]]).astype(np.float64)
        filled = gsum > 0
        qval = np.where(filled, gsum / np.where(gcnt > 0, gcnt, 1.0), 1.0)
        sum_plogq = np.sum(np.where(filled, gsum * np.log(qval), 0.0), axis=1)
        # The tail sits in bin i - 1, which is in the last quantized bin (floor((i-1) L / i) = L - 1).
        sum_plogq += np.where(tail > 0, tail * np.log(qval[:, -1]), 0.0)
        kl = (sum_plogp - sum_plogq) / total - math.log(total) + np.log(np.where(below > 0, below, 1.0))
    kl = np.where((last == 0) & (tail > 0), np.inf, kl)
    # A candidate below which only its own last bin holds values makes P one spike, and Q the same spike:
    # KL 0 by construction, whatever lies beyond. On a tensor whose values all sit away from 0 (a sigmoid
    # gate) the first such candidate, just past the smallest |x|, won and clipped every other value to it.
    spike = cnz[i - 1] == 0
    return np.where((below > 0) & ~spike, kl, np.nan)


def _kl_candidate(h: np.ndarray, i: int, levels: int) -> float:
    """KL(P||Q) of one candidate computed bin by bin, the way scipy.stats.entropy sums it."""
    ref = h[:i].copy()
    ref[-1] += h[i:].sum()
    nonzero = h[:i] > 0
    q_idx = (np.arange(i) * levels) // i
    sums = np.bincount(q_idx, weights=h[:i], minlength=levels)
    counts = np.bincount(q_idx, weights=nonzero, minlength=levels)
    q = np.where(nonzero, sums[q_idx] / np.maximum(counts[q_idx], 1.0), 0.0)
    p = ref / ref.sum()
    q = q / q.sum()
    m = p > 0
    if np.any(q[m] == 0):
        return math.inf
    return float(np.sum(np.where(m, p * np.log(np.where(m, p, 1.0) / np.where(m, q, 1.0)), 0.0)))


def percentile_amax(abs_hist: np.ndarray, bin_width: float, percentile: float) -> float:
    """Upper edge of the bin where the cumulative share of ``|x|`` reaches ``percentile``.

    ONNX Runtime and pytorch-quantization return that bin's lower edge
    (``hist_edges[idx]``); this returns the upper one, one bin (``R / 4096``
    here) wider, on purpose: (1) at least ``percentile`` % of the values lie
    inside ``[-amax, amax]``, which is what "keep the 99.99th percentile"
    promises, whereas the lower edge keeps strictly less; (2) ``percentile =
    100`` then reproduces the minmax range instead of clipping the largest
    values' bin; (3) the difference is far below one INT8 step (measured
    +0.0003 at 99.99 on N(0, 1), where a step is amax / 127 = 0.03), so
    matching those tools' edge would change every percentile table, and the
    INT8 results recorded with them, for no accuracy reason. To compare a
    table with theirs, subtract ``bin_width``.
    """
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    h = np.asarray(abs_hist, np.float64)
    total = h.sum()
    if total <= 0 or bin_width <= 0:
        return 0.0
    cdf = np.cumsum(h) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    return (min(idx, h.size - 1) + 1) * bin_width


@dataclass
class ActivationStats:
    """Histograms of every activation of one model over one calibration set."""

    histograms: dict[str, ActivationHistogram]
    model_sha256: str
    set_fingerprint: str
    num_images: int
    notes: dict[str, Any]

    #: exact ranges of the tensors computed from the uint8 input alone (:func:`input_bound_ranges`); they
    #: replace the measured ones in every method's table
    pinned: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the calibration images' file digests (:attr:`CalibrationSet.digests`; None: not known)
    image_digests: tuple[str, ...] | None = None

    def ranges(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> dict[str, tuple[float, float]]:
        if method not in METHODS:
            raise ConfigError(f"calibration method must be one of {METHODS}, got {method!r}")
        return {name: self.pinned.get(name) or h.range(method, percentile) for name, h in self.histograms.items()}

    def table(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> CalibrationTable:
        """The calibration table for ``method`` (no inference: computed from the histograms)."""
        return CalibrationTable(
            ranges=self.ranges(method, percentile),
            method=method,
            model_sha256=self.model_sha256,
            set_fingerprint=self.set_fingerprint,
            num_images=self.num_images,
            percentile=percentile if method == "percentile" else None,
            notes=self.notes,
            image_digests=self.image_digests,
        )


#: ops that move or copy values without changing them: the output's range is the input's
_LAYOUT_OPS = frozenset({"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_ARITHMETIC_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def input_bound_ranges(model: Any) -> dict[str, tuple[float, float]]:
    """Bounds of the tensors computed from uint8 graph inputs by Cast, layout ops and arithmetic with
    constants, before any op with weights (name -> (lo, hi)).

    Why: these ranges follow from the input's type and need no images. Interval arithmetic over the
    constant's values gives bounds every input stays within. With one constant per op, or one op of
    per-channel constants (the mean subtraction ``uopsl export`` leaves: std is folded into the first
    convolution), an image holding 0 and 255 in every channel reaches them: they are exact. A chain of two
    per-channel ops takes the union over channels at each step, so its bounds may be wider than any image
    reaches, never narrower. Arithmetic is followed in float32 only (what ONNX Runtime computes it in;
    float32 rounding is monotonic, so the float32 results at the end points bound every other input's);
    after a cast to float16 or bfloat16 only the cast and layout ops are pinned.
    """
    onnx = require("onnx", "calibration")
    numpy_helper = onnx.numpy_helper
    constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name == "value_float":
                    constants[node.output[0]] = np.asarray(a.f, np.float32)
                elif a.name == "value_floats":
                    constants[node.output[0]] = np.asarray(list(a.floats), np.float32)
    known: dict[str, tuple[float, float]] = {}
    float32_chain: set[str] = set()  # tensors of ``known`` in float32, where arithmetic is followed
    uint8 = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    casts = 0
    for node in model.graph.node:  # topologically ordered (ONNX requires it)
        if not node.output or not node.output[0]:
            continue
        out = node.output[0]
        if node.op_type in _LAYOUT_OPS and node.input and node.input[0] in uint8:
            uint8.add(out)  # an Identity or Transpose before the cast keeps the pixels uint8
        elif node.op_type == "Cast" and node.input and node.input[0] in uint8:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to in floats:
                known[out] = (0.0, 255.0)  # 0..255 is exact in float32, float16 and bfloat16
                casts += 1
                if to == onnx.TensorProto.FLOAT:
                    float32_chain.add(out)
        elif node.op_type in _LAYOUT_OPS and node.input and node.input[0] in known:
            known[out] = known[node.input[0]]
            if node.input[0] in float32_chain:
                float32_chain.add(out)
        elif node.op_type in _ARITHMETIC_OPS and len(node.input) == 2:
            a, b = node.input
            if a in float32_chain and b in constants:
                rng = _interval(node.op_type, known[a], constants[b], tensor_first=True)
            elif b in float32_chain and a in constants:
                rng = _interval(node.op_type, known[b], constants[a], tensor_first=False)
            else:
                continue
            if rng is not None:
                known[out] = rng
                float32_chain.add(out)
    if uint8 and not casts:
        log.warning("calibration: the uint8 input reaches no Cast to float through layout ops, so no range is "
                    "pinned from its type; every range is measured (a model not exported by `uopsl export`?)")
    return known


def _interval(op: str, rng: tuple[float, float], const: np.ndarray,
              tensor_first: bool) -> tuple[float, float] | None:
    """The float32 range of ``op`` between a float32 tensor in ``rng`` and every value of ``const`` (None: not
    bounded). Each candidate end point is computed in float32, as the model computes it."""
    c = np.asarray(const, np.float64).ravel()
    if c.size == 0 or not np.all(np.isfinite(c)):
        return None
    c = c.astype(np.float32)
    lo, hi = np.float32(rng[0]), np.float32(rng[1])
    with np.errstate(over="ignore"):  # an overflow gives inf, refused below
        if op == "Add":
            vals = np.concatenate([lo + c, hi + c])
        elif op == "Sub":
            vals = np.concatenate([lo - c, hi - c]) if tensor_first else np.concatenate([c - hi, c - lo])
        elif op == "Mul":
            vals = np.concatenate([lo * c, hi * c])
        elif tensor_first:  # Div by constants
            if np.any(c == 0):
                return None
            vals = np.concatenate([lo / c, hi / c])
        else:  # a constant divided by the tensor: unbounded where the tensor can be 0
            if lo <= 0 <= hi:
                return None
            vals = np.concatenate([c / lo, c / hi])
    if not np.all(np.isfinite(vals)):
        return None
    return float(vals.min()), float(vals.max())


def activation_tensors(model: Any) -> dict[str, int]:
    """Float activations of an ONNX ``ModelProto`` (name -> ONNX elem type), in graph order.

    These are the outputs of every non-constant node whose type shape
    inference knows to be float32/float16/bfloat16: the tensors a QDQ
    quantizer may need a range for. Initializers are weights, not activations.
    """
    onnx = require("onnx", "calibration")
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _CONSTANT_OPS:
            continue
        for name in node.output:
            if name and name not in inits and types.get(name) in floats:
                out[name] = types[name]
    return out


def _augmented_session(model_path: Path) -> tuple[Any, list[str], str, tuple[Any, ...],
                                                  dict[str, tuple[float, float]]]:
    onnx = require("onnx", "calibration")
    ort = require("onnxruntime", "calibration")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types for a bad file
        raise ConfigError(f"{model_path}: not a readable ONNX model ({exc}); export it with `uopsl export`") from exc
    tensors = activation_tensors(model)
    existing = {o.name for o in model.graph.output}
    for name, elem in tensors.items():
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    opts = ort.SessionOptions()
    # Unoptimised graph: every tensor of the FP32 model exists under its own name.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise BackendError(f"{model_path}: ONNX Runtime cannot load the model for calibration ({exc})") from exc
    inp = sess.get_inputs()[0]
    if inp.type != "tensor(uint8)":
        raise ConfigError(
            f"{model_path}: input {inp.name!r} is {inp.type}; calibration feeds the deployed-model contract "
            "(uint8 RGB NHWC images). Export the model with `uopsl export`"
        )
    return sess, list(tensors), inp.name, tuple(inp.shape), {n: r for n, r in input_bound_ranges(model).items()
                                                             if n in tensors}


#: Fewer calibration images than this, or more than SKIPPED_SHARE of them skipped, and calibrate and quantize
#: say so: a table from a handful of photographs measures that handful.
FEW_IMAGES = 32
SKIPPED_SHARE = 0.25


def set_warnings(num_images: int, skipped: int) -> list[str]:
    """What a reader of a table measured on ``num_images`` images (``skipped`` more refused) should be told."""
    said = []
    if skipped and skipped > SKIPPED_SHARE * (num_images + skipped):
        said.append(f"{skipped} of the {num_images + skipped} calibration images were skipped (unreadable or "
                    "ungradable; the table's notes count them by reason): the ranges come from the rest")
    if num_images < FEW_IMAGES:
        said.append(f"the ranges were measured on {num_images} image{'s' if num_images != 1 else ''}, fewer than "
                    f"{FEW_IMAGES}: they may not cover the photographs the model will see (100-500 photographs of "
                    "the deployed population are usual)")
    return said


def collect_statistics(
    model: str | os.PathLike[str],
    calib_set: CalibrationSet,
    *,
    batch_size: int = 8,
    num_bins: int = NUM_BINS,
    show_progress: bool = True,
) -> ActivationStats:
    """Run the FP32 model over the set and histogram every float activation (one pass)."""
    path = Path(model)
    model_hash = model_sha256(path)  # first: a file with external data is refused before the pass, not after it
    sess, tensors, input_name, shape, pinned = _augmented_session(path)
    size = calib_set.preprocess.size
    hw = shape[1:3] if len(shape) == 4 else ()
    if len(shape) != 4 or shape[3] != 3 or any(isinstance(d, int) and d != size for d in hw):
        raise ConfigError(
            f"{path}: input {input_name!r} has shape {list(shape)}, but the calibration images are "
            f"(N, {size}, {size}, 3); build the set with the model's size (--size or the bundle's manifest)"
        )
    hists = {name: ActivationHistogram(num_bins) for name in tensors}
    n_batches = -(-len(calib_set) // batch_size)
    batches: Iterable[np.ndarray] = track(
        calib_set.batches(batch_size), total=n_batches, desc="calibrate", show=show_progress
    )
    for batch in batches:
        try:
            outs = sess.run(tensors, {input_name: batch})
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"{path}: ONNX Runtime failed on a calibration batch of shape {batch.shape}: {exc}") from exc
        for name, arr in zip(tensors, outs):
            hists[name].update(arr)
    bad = {n: h.nonfinite for n, h in hists.items() if h.nonfinite}
    never = [n for n in bad if hists[n].count == 0]
    if never:
        raise ConfigError(f"{path}: {len(never)} activation tensor(s) had no finite value on any of the "
                          f"{len(calib_set)} calibration images (e.g. {never[0]}: {bad[never[0]]} NaN or infinite "
                          "values): the model computes NaN/inf there, and no range can be measured; check the model")
    if bad:
        log.warning("non-finite activations ignored in %d tensors (e.g. %s); the table's notes list them",
                    len(bad), next(iter(bad.items())))
    log.info("collected ranges of %d activation tensors over %d images", len(hists), len(calib_set))
    notes = {
        "preprocess": calib_set.preprocess.to_dict(),
        "skipped_images": len(calib_set.skipped),
        # Why, by reason: the table outlives the console that named each file. Not the files' names: the table
        # ships in the bundle, and photograph names can name patients.
        "skipped_reasons": dict(Counter(k.reason for k in calib_set.skipped).most_common()),
        "class_balance": calib_set.class_balance(),
        "histogram_bins": num_bins,
    }
    if bad:
        notes["nonfinite_values"] = bad  # tensor -> NaN/inf values left out of its range
    if pinned:
        notes["exact_from_input"] = sorted(pinned)  # their ranges come from the uint8 input's type
        log.info("%d tensor(s) computed from the uint8 input alone get their exact ranges, not measured ones: %s",
                 len(pinned), ", ".join(sorted(pinned)))
    return ActivationStats(hists, model_hash, calib_set.fingerprint, len(calib_set), notes, pinned,
                           calib_set.digests)


def calibrate(
    model: str | os.PathLike[str],
    calib_set: CalibrationSet,
    *,
    method: str = "entropy",
    percentile: float = DEFAULT_PERCENTILE,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    batch_size: int = 8,
    show_progress: bool = True,
) -> CalibrationTable:
    """Calibrate ``model`` on ``calib_set`` and (with ``out``) write the table atomically.

    When ``out`` already holds a table for the same model hash, set
    fingerprint, method and percentile, it is returned without running the
    model (logged as skipped) unless ``force``.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration method must be one of {METHODS}, got {method!r}")
    pct = percentile if method == "percentile" else None
    if out is not None and not force:
        cached = load_if_current(
            out, model_sha256=model_sha256(model), set_fingerprint=calib_set.fingerprint, method=method, percentile=pct,
            image_digests=calib_set.digests,
        )
        if cached is not None:
            return cached
    stats = collect_statistics(model, calib_set, batch_size=batch_size, show_progress=show_progress)
    table = stats.table(method, percentile)
    if out is not None:
        table.save(out)
        log.info("calibration table (%s, %d tensors) written to %s", method, len(table.ranges), out)
    return table
