"""Layer-wise diagnosis of an INT8 QDQ model: where along the graph precision is lost.

Both graphs are run by ONNX Runtime with their intermediate tensors added as
graph outputs. A QDQ graph keeps the float graph's tensor names (the quantizer
inserts ``T -> QuantizeLinear -> DequantizeLinear -> T_DequantizeLinear_Output``
after a tensor ``T``), so every quantized layer's output is matched to its float
counterpart by name. For each quantized layer (a node fed by a
DequantizeLinear that computes new values: not Q/DQ, not a pure data-movement
op like Reshape or Transpose) the report gives:

* ``sqnr_db`` and ``cosine`` of its output (after its own Q/DQ, i.e. what the
  next layer sees) against the float model, on a few images: the error
  accumulated up to here;
* ``input_sqnr_db``: the SQNR of its worst activation input, and
  ``sqnr_drop_db = input_sqnr_db - sqnr_db``: the precision this layer itself
  loses (weights, its own output rounding);
* ``range_sqnr_db``: the float model's own output quantized with this
  tensor's calibrated scale and zero point (rounding and clipping of the range
  alone; a badly calibrated range shows up here).

Layers are sorted worst first (lowest SQNR). The suggested ``--exclude`` list
for ``uopsl quantize`` comes from the layers below the SQNR threshold that lose
at least ``min_drop_db`` themselves, biggest loss first (excluding a layer that
merely inherits its inputs' error would not help). A layer whose loss comes
from its output's range (``range_sqnr_db`` below the threshold) is suggested
together with the consumers of that output: a QDQ graph shares one Q/DQ pair
between a tensor's producer and its consumers, so the tensor stays float only
when all of them are excluded.

Both graphs run unoptimised (``ORT_DISABLE_ALL``), so every named tensor exists;
the Q/DQ pairs then run as float fake-quantization, which matches the integer
kernels to within their rounding.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

#: SQNR above this is reported as this value (the outputs agree to float rounding).
SQNR_CAP_DB = 120.0
_FLOAT_TYPES = (1, 10, 16)  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
#: Ops that only move or select values (they cannot lose precision of their own) and the Q/DQ ops.
_NOT_LAYERS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat",
    "Slice", "Gather", "Split", "Expand", "Identity", "Shape", "Cast", "MaxPool", "Pad", "Resize", "Tile",
})


@dataclass(frozen=True)
class LayerError:
    """Error of one quantized layer's output against the float model (see the module doc)."""

    node: str
    op_type: str
    output: str
    sqnr_db: float
    cosine: float
    input_sqnr_db: float
    sqnr_drop_db: float
    range_sqnr_db: float | None
    #: the nodes to exclude to remove this layer's own loss (itself, plus its output's consumers for a bad range)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerwiseReport:
    """Per-layer errors of ``quantized_model`` against ``float_model``, worst first, and what to exclude."""

    float_model: str
    quantized_model: str
    images: int
    layers: tuple[LayerError, ...]
    outputs: dict[str, dict[str, float]]
    suggested_exclude: tuple[str, ...]
    sqnr_threshold_db: float
    min_drop_db: float
    matched_tensors: int
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["suggested_command"] = self.suggested_command()
        return d

    def suggested_command(self, target: str = "BUNDLE", variant: str | None = None,
                          info: Mapping[str, Any] | None = None) -> str:
        """The ``uopsl quantize`` command line that keeps the suggested layers in float ('' when none).

        ``info``: the INT8 file's manifest entry; the command then also keeps every option the file was made
        with (the layers it already kept in float among them), so only the suggested layers change.
        """
        if not self.suggested_exclude:
            return ""
        if info is not None:
            from uopsl.export.quantize import remake_options  # quantize imports this module

            options = remake_options(info, self.suggested_exclude, variant=variant, images="CALIBRATION_IMAGES")
            return f"uopsl quantize {target} {options}"
        var = f" --variant {variant}" if variant else ""
        # --images: the calibration images, which bias correction (on by default) needs
        return (f"uopsl quantize {target}{var} --images CALIBRATION_IMAGES "
                f"--exclude {','.join(self.suggested_exclude)}")


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """``10 log10(signal / noise)`` capped at :data:`SQNR_CAP_DB` (no noise: the cap; no signal: 0 dB)."""
    if noise_energy <= 0.0:
        return SQNR_CAP_DB
    if signal_energy <= 0.0:
        return 0.0
    return float(min(SQNR_CAP_DB, 10.0 * math.log10(signal_energy / noise_energy)))


class _Accumulator:
    """Streaming sums for SQNR and cosine of one tensor pair over several images."""

    __slots__ = ("ref2", "err2", "dot", "test2")

    def __init__(self) -> None:
        self.ref2 = self.err2 = self.dot = self.test2 = 0.0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        r = np.asarray(ref, np.float64)
        t = np.asarray(test, np.float64)
        # Compared before flattening: (2, 3) against (3, 2) holds as many values, laid out differently.
        if r.shape != t.shape:
            raise BackendError(f"tensor shapes differ between the float and the INT8 graph: {r.shape} vs {t.shape}")
        r, t = r.ravel(), t.ravel()
        self.ref2 += float(r @ r)
        self.test2 += float(t @ t)
        self.dot += float(r @ t)
        d = r - t
        self.err2 += float(d @ d)

    @property
    def sqnr(self) -> float:
        return sqnr_db(self.ref2, self.err2)

    @property
    def cosine(self) -> float:
        if self.ref2 == 0.0 and self.test2 == 0.0:
            return 1.0
        if self.ref2 == 0.0 or self.test2 == 0.0:
            return 0.0
        return float(self.dot / math.sqrt(self.ref2 * self.test2))


@dataclass(frozen=True)
class _Plan:
    """Which tensors to read from each graph, and how they match."""

    matched: dict[str, str]  # float name -> INT8-graph name of the value the next layer sees
    qparams: dict[str, tuple[np.ndarray, np.ndarray]]  # float name -> (scale, zero point) of its Q/DQ
    layers: tuple[tuple[str, str, str, tuple[str, ...]], ...]  # (node, op, float output, float inputs)
    consumers: dict[str, tuple[str, ...]]  # float tensor -> names of the nodes reading it (float graph)
    graph_inputs: frozenset[str]


def _plan(float_model: Any, qmodel: Any, types: dict[str, int]) -> _Plan:
    f_inits = {i.name for i in float_model.graph.initializer}
    float_tensors = {t for n in float_model.graph.node if n.op_type != "Constant" for t in n.output
                     if t and t not in f_inits and types.get(t) in _FLOAT_TYPES}
    q_nodes = list(qmodel.graph.node)
    q_inits = {i.name for i in qmodel.graph.initializer}
    producer = {t: n for n in q_nodes for t in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in q_nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    onnx = require("onnx", "per-layer diagnosis")
    init_values = {i.name: i for i in qmodel.graph.initializer}
    matched: dict[str, str] = {}
    qparams: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in float_tensors:
        if t not in producer or producer[t].op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        seen = t
        for q in consumers.get(t, []):
            if q.op_type != "QuantizeLinear":
                continue
            dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None)
            if dq is not None:
                seen = dq.output[0]
                if len(q.input) >= 3 and q.input[1] in init_values and q.input[2] in init_values:
                    qparams[t] = (onnx.numpy_helper.to_array(init_values[q.input[1]]),
                                  onnx.numpy_helper.to_array(init_values[q.input[2]]))
                break
        matched[t] = seen

    def float_name(t: str) -> str | None:
        """The float tensor behind an INT8-graph input (through DQ <- Q); None for a weight."""
        node = producer.get(t)
        if node is not None and node.op_type == "DequantizeLinear":
            src = node.input[0]
            if src in q_inits:
                return None  # a quantized weight
            q = producer.get(src)
            if q is not None and q.op_type == "QuantizeLinear":
                inner = q.input[0]
                return None if inner in q_inits else inner
            return None
        if t in q_inits:
            return None
        return t

    layers = []
    for n in q_nodes:
        if n.op_type in _NOT_LAYERS or not n.output or n.output[0] not in matched:
            continue
        if not any(producer.get(t) is not None and producer[t].op_type == "DequantizeLinear" for t in n.input):
            continue  # left in float (excluded or not quantizable): not a quantized layer
        inputs = tuple(f for f in (float_name(t) for t in n.input if t) if f is not None)
        layers.append((n.name, n.op_type, n.output[0], inputs))
    graph_inputs = frozenset(i.name for i in qmodel.graph.input if i.name not in q_inits)
    readers: dict[str, list[str]] = {}
    for n in float_model.graph.node:
        for t in n.input:
            if n.name and n.name not in readers.setdefault(t, []):
                readers[t].append(n.name)
    return _Plan(matched=matched, qparams=qparams, layers=tuple(layers),
                 consumers={t: tuple(v) for t, v in readers.items()}, graph_inputs=graph_inputs)


def fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear of ``x`` (per-tensor scale; u8 or s8 by the zero point's type)."""
    info = np.iinfo(zero_point.dtype)
    s = np.asarray(scale, np.float64)
    z = np.asarray(zero_point, np.float64)
    q = np.clip(np.rint(np.asarray(x, np.float64) / s) + z, info.min, info.max)
    return (q - z) * s


def exact_qdq_options(ort: Any, optimize: bool = True) -> Any:
    """ONNX Runtime CPU session options that run a QDQ graph in its exact arithmetic, on any CPU.

    The quantizer measures INT8 files this way (bias correction, the
    sensitivity pass, weight rounding), never through this machine's integer
    kernels: on x86 without VNNI those sum pairs of u8 x s8 products in 16
    bits and saturate (``docs/results.md``, section 4, session 22: 5-10 dB of
    logits SQNR on the demo's EfficientNet-Lite0), so a correction fitted
    through them would fit one CPU's error into a file meant for every
    backend. (Float kernels still round a little differently from one CPU
    to another, so files made on two machines may differ in the last bit
    of a bias.) ``optimize``: other graph optimisations stay on (only the
    fusion of Q/DQ pairs into integer kernels, and the merging of chained
    Q/DQ pairs into one grid, are off); False: none at all.
    """
    opts = ort.SessionOptions()
    if optimize:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        opts.add_session_config_entry("session.disable_double_qdq_remover", "1")
    else:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return opts


def exposing_session(model: Any, names: Iterable[str], *, types: dict[str, int] | None = None,
                     optimize: bool = False, purpose: str = "per-layer diagnosis") -> Any:
    """A CPU session of a copy of ``model`` that also returns the intermediate tensors ``names``.

    QDQ graphs run in their exact arithmetic (float between Q/DQ pairs; see
    :func:`exact_qdq_options`), so the figures do not depend on this CPU's
    integer kernels. ``optimize=False`` runs the graph as written, so every
    tensor is observable; ``True`` lets ONNX Runtime fold and fuse the rest
    (faster; intermediate tensors inside a fusion may not be exposed).
    ``types``: element types of the exposed tensors (None: left for ONNX
    Runtime to infer).
    """
    onnx = require("onnx", purpose)
    ort = require("onnxruntime", purpose)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None)
                                  if types is not None else onnx.ValueInfoProto(name=name))
            existing.add(name)
    try:
        return ort.InferenceSession(m.SerializeToString(), exact_qdq_options(ort, optimize),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot run the graph with its intermediate tensors exposed "
                           f"({purpose}): {exc}") from exc


def read_counts(model: Any) -> dict[str, int]:
    """How many node inputs read each tensor of ``model`` (an initializer read twice is shared)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            counts[t] = counts.get(t, 0) + 1
    return counts


def truncated_model(model: Any, output: str, *, purpose: str = "per-layer diagnosis") -> Any:
    """``model`` cut down to the nodes ``output`` depends on, with ``output`` as its only output.

    ONNX Runtime runs every node of a graph whatever outputs are requested, so
    measuring an early layer on the whole model would cost a full pass.
    """
    onnx = require("onnx", purpose)
    producer = {t: n for n in model.graph.node for t in n.output}
    needed: set[str] = set()
    tensors: set[str] = set()
    stack = [output]
    while stack:
        t = stack.pop()
        if t in tensors:
            continue
        tensors.add(t)
        node = producer.get(t)
        if node is not None and node.name not in needed:
            needed.add(node.name)
            stack.extend(i for i in node.input if i)
    graph = onnx.helper.make_graph(
        [n for n in model.graph.node if n.name in needed], model.graph.name,
        list(model.graph.input), [onnx.ValueInfoProto(name=output)],
        [i for i in model.graph.initializer if i.name in tensors],
    )
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _elem_types(model: Any) -> dict[str, int]:
    onnx = require("onnx", "per-layer diagnosis")
    inferred = onnx.shape_inference.infer_shapes(model)
    return {vi.name: vi.type.tensor_type.elem_type for vi in
            [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
            if vi.type.HasField("tensor_type")}


def layerwise_errors(
    float_model: str | os.PathLike[str],
    quantized_model: str | os.PathLike[str],
    images: np.ndarray,
    *,
    sqnr_threshold_db: float = 30.0,
    min_drop_db: float = 3.0,
    max_suggestions: int = 5,
    batch_size: int = 1,
) -> LayerwiseReport:
    """Compare every quantized layer of ``quantized_model`` with ``float_model`` on ``images``.

    ``images``: uint8 (N, H, W, 3) model inputs (the runtime's preprocessing),
    a few suffice (errors are summed over them). Memory stays at one batch of
    all intermediate tensors.
    """
    onnx = require("onnx", "per-layer diagnosis")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0 or images.dtype != np.uint8:
        raise ConfigError(f"per-layer diagnosis needs uint8 images (N>0, H, W, 3); got {images.dtype} {images.shape}")
    if batch_size < 1 or max_suggestions < 0:
        raise ConfigError(f"batch_size must be >= 1 and max_suggestions >= 0, got {batch_size}, {max_suggestions}")
    fpath, qpath = Path(float_model), Path(quantized_model)
    try:
        fmodel, qmodel = onnx.load(str(fpath)), onnx.load(str(qpath))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ConfigError(f"cannot read {fpath} / {qpath} as ONNX ({exc})") from exc
    f_types = _elem_types(fmodel)
    plan = _plan(fmodel, qmodel, f_types)
    if not plan.layers:
        raise ConfigError(
            f"{qpath} has no quantized layer whose output matches a tensor of {fpath} by name; "
            "is it the QDQ model quantized from this FP32 model (uopsl quantize)?"
        )
    out_names = [o.name for o in fmodel.graph.output]
    f_names = sorted(set(plan.matched) | set(out_names))
    q_names = sorted(set(plan.matched.values()) | set(out_names))
    q_types = _elem_types(qmodel)
    fsess = exposing_session(fmodel, f_names, types=f_types)
    qsess = exposing_session(qmodel, q_names, types={n: q_types.get(n, 1) for n in q_names})
    f_input = fsess.get_inputs()[0].name
    q_input = qsess.get_inputs()[0].name
    seen = {t: _Accumulator() for t in plan.matched}
    own = {t: _Accumulator() for t in plan.qparams if np.size(plan.qparams[t][0]) == 1}
    outs = {t: _Accumulator() for t in out_names}
    for start in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[start:start + batch_size])
        try:
            fvals = dict(zip(f_names, fsess.run(f_names, {f_input: x})))
            qvals = dict(zip(q_names, qsess.run(q_names, {q_input: x})))
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"per-layer run failed on images {start}..{start + len(x) - 1}: {exc}") from exc
        for t, acc in seen.items():
            acc.add(fvals[t], qvals[plan.matched[t]])
        for t, acc in own.items():
            acc.add(fvals[t], fake_quantize(fvals[t], *plan.qparams[t]))
        for t, acc in outs.items():
            acc.add(fvals[t], qvals[t])

    def input_sqnr(inputs: tuple[str, ...]) -> float:
        vals = [SQNR_CAP_DB if t in plan.graph_inputs else seen[t].sqnr for t in inputs
                if t in plan.graph_inputs or t in seen]
        return min(vals) if vals else SQNR_CAP_DB

    layers = []
    for node, op, output, inputs in plan.layers:
        acc = seen[output]
        s_in = input_sqnr(inputs)
        r_sqnr = own[output].sqnr if output in own else None
        bad_range = r_sqnr is not None and r_sqnr < sqnr_threshold_db
        exclude = (node, *(c for c in plan.consumers.get(output, ()) if c != node)) if bad_range else (node,)
        layers.append(LayerError(node, op, output, round(acc.sqnr, 3), round(acc.cosine, 6), round(s_in, 3),
                                 round(s_in - acc.sqnr, 3), None if r_sqnr is None else round(r_sqnr, 3), exclude))
    layers.sort(key=lambda e: (e.sqnr_db, e.cosine))
    culprits = sorted((e for e in layers if e.sqnr_db < sqnr_threshold_db and e.sqnr_drop_db >= min_drop_db),
                      key=lambda e: -e.sqnr_drop_db)
    notes = []
    below = [e for e in layers if e.sqnr_db < sqnr_threshold_db]
    if below and not culprits:
        notes.append(f"{len(below)} layer(s) are below {sqnr_threshold_db:g} dB but none loses >= {min_drop_db:g} dB "
                     "by itself: precision is lost gradually; try per-channel weights or another calibration method")
    if not below:
        notes.append(f"every quantized layer keeps >= {sqnr_threshold_db:g} dB SQNR against float")
    report = LayerwiseReport(
        float_model=str(fpath), quantized_model=str(qpath), images=int(len(images)), layers=tuple(layers),
        outputs={t: {"sqnr_db": round(a.sqnr, 3), "cosine": round(a.cosine, 6)} for t, a in outs.items()},
        suggested_exclude=tuple(dict.fromkeys(n for e in culprits[:max_suggestions] for n in e.exclude)),
        sqnr_threshold_db=float(sqnr_threshold_db), min_drop_db=float(min_drop_db),
        matched_tensors=len(plan.matched), notes=tuple(notes),
    )
    log.info("per-layer: %d quantized layers of %s, worst %s (%.1f dB); suggested exclude: %s", len(layers),
             qpath.name, layers[0].node, layers[0].sqnr_db, ", ".join(report.suggested_exclude) or "none")
    return report
