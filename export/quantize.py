"""INT8 QDQ quantization of the FP32 ONNX model from the one calibration table.

Two variants come from the same :class:`~uopsl.calibration.table.CalibrationTable`:

* ``cpu`` (manifest precision ``int8-qdq-u8``): asymmetric u8 activations and
  symmetric s8 weights, the layout ONNX Runtime and OpenVINO run fastest on
  x86 (u8 x s8 dot products);
* ``trt`` (``int8-qdq-s8``): symmetric s8 activations with zero point 0 and
  symmetric s8 weights, what TensorRT's explicit quantization accepts. Weights
  keep float values behind a Q/DQ pair and biases stay float, because the
  TensorRT 8.x ONNX parser (JetPack 5) refuses a DequantizeLinear fed by an
  initializer or an int32 bias; Conv/Gemm/MatMul get no output Q/DQ pair
  of their own, so TensorRT can fuse the activation that follows (the node
  reading such an output still quantizes it as its own input, where that
  node is quantized).

The table's ranges are fed to ONNX Runtime's ``QDQQuantizer`` directly: ONNX
Runtime never re-calibrates. Two of its defaults are overridden on purpose:

* the graph outputs (``probs``, ``logits``, ``site_maps``) stay float: a
  Q/DQ pair there would round the probabilities that the screening decision
  thresholds (to 1/255 over [0, 1]) and cost nothing to skip;
* a Softmax output keeps its calibrated range instead of ONNX Runtime's fixed
  [0, 1]: the attention over ~100 sites has values near 0.01, which a [0, 1]
  u8 grid would flatten to three levels.

An excluded node (``--exclude`` or auto-excluded) computes in float: its
weights are not quantized, it reads the float tensors rather than its
neighbours' dequantized copies (otherwise ONNX Runtime would fuse
DQ -> node -> Q into an integer kernel anyway), and a Relu/Clip feeding it
stays in the graph instead of being folded into a u8 range.

Three defaults bring INT8 closer to the FP32 model's decisions
(docs/results.md, section 4, has the figures):

* ``float_head``: the layers after the encoder (``@head``) stay float; they
  cost a few percent of the compute;
* ``bias_correction``: after quantization each layer's per-channel output
  mean is corrected on the calibration images
  (:mod:`uopsl.export.bias_correction`);
* ``rounding="gptq"``: each weight goes onto the int8 grid so that its
  layer's output on the calibration images stays closest to FP32 (error
  feedback through the layer's input statistics, :mod:`uopsl.export.gptq`);
  same scales and speed as nearest rounding. ``nearest`` (the quantizer's
  own) and ``adaround`` (:mod:`uopsl.export.adaround`) are the alternatives.

Rounding and bias correction run on the calibration images (``calib_set``),
rounding first.

``--auto-exclude N`` runs a per-layer sensitivity pass: each compute layer is
quantized alone, the model is run on (a subset of) the calibration set, and
the error of its outputs against FP32 is measured; the N most harmful layers
stay float. The chosen list is returned in :class:`QuantizeResult` for the
bundle manifest.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from uopsl.calibration.dataset import CalibrationSet
from uopsl.runtime.progress import track
from uopsl.export.adaround import AdaRoundConfig, adaround
from uopsl.export.gptq import gptq
from uopsl.export.bias_correction import correct_biases
from uopsl.export.onnx_export import constants_to_initializers
from uopsl.export.layerwise import exact_qdq_options
from uopsl.calibration.table import CalibrationTable
from uopsl.calibration.ranges import activation_tensors
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.calibration.onnx_file import model_sha256
from uopsl.runtime.fsio import sha256_file, write_bytes
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

Variant = Literal["cpu", "trt"]
VARIANTS: tuple[str, ...] = ("cpu", "trt")
PRECISION: dict[str, str] = {"cpu": "int8-qdq-u8", "trt": "int8-qdq-s8"}
Rounding = Literal["nearest", "gptq", "adaround"]
ROUNDINGS: tuple[str, ...] = ("nearest", "gptq", "adaround")
# ``uopsl export`` names every node of the image encoder ``/trunk/...`` (the
# DeployModel attribute); the compute nodes after it form the head group.
TRUNK_PREFIX = "/trunk/"
HEAD_GROUP = "@head"
MAX_OPSET = 20  # highest opset ONNX Runtime static INT8 and TensorRT 10.0+ parse; TensorRT 8.5/8.6 parse up to 17 (onnx-tensorrt operators.md)
# Ops whose quantization changes arithmetic (the candidates of the sensitivity pass).
# Data-movement ops (Reshape, Transpose, ...) only inherit their neighbours' encoding.
LAYER_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Softmax",
    "AveragePool", "GlobalAveragePool", "LeakyRelu", "LayerNormalization", "InstanceNormalization",
})


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize.

    variant: ``cpu`` (u8 activations) or ``trt`` (s8 symmetric, zero point 0).
    per_channel: one weight scale per output channel (better for depthwise
        convolutions); False for one scale per weight tensor.
    exclude: node names or op types to keep in float.
    auto_exclude: number of most sensitive layers to keep in float (0: none).
    sensitivity_images: images of the calibration set used by the sensitivity
        pass (a seeded subset; it runs the model once per candidate layer).
    reduce_range: 7-bit weights, for x86 CPUs without VNNI (see ONNX Runtime docs).
    float_head: keep the layers after the encoder (``HEAD_GROUP``: token
        projection, site attention, prototype head) in float. They are a few
        percent of the compute, and the prototype head's ``tau * cos`` turns
        their rounding into large probability changes.
    bias_correction: empirical bias correction on the calibration images
        (:mod:`uopsl.export.bias_correction`); needs ``calib_set``.
    correction_images: images of the calibration set used by the correction.
    rounding: how weights go onto the int8 grid: ``nearest``; ``gptq``, each
        layer's output kept closest to FP32 on the calibration images by
        error feedback (:mod:`uopsl.export.gptq`); ``adaround``, the same goal
        by optimising up/down per weight (:mod:`uopsl.export.adaround`). Both
        need ``calib_set`` and run before the bias correction.
    rounding_images: images of the calibration set used by ``gptq``/``adaround``.
    adaround_iterations: AdaRound's optimisation steps per layer.
    """

    variant: str = "cpu"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    auto_exclude: int = 0
    sensitivity_images: int = 32
    reduce_range: bool = False
    float_head: bool = True
    bias_correction: bool = True
    correction_images: int = 32
    rounding: Rounding = "gptq"
    rounding_images: int = 32
    adaround_iterations: int = 500

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"quantization variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.auto_exclude < 0:
            raise ConfigError(f"auto_exclude must be >= 0, got {self.auto_exclude}")
        if self.sensitivity_images < 1:
            raise ConfigError(f"sensitivity_images must be >= 1, got {self.sensitivity_images}")
        if self.correction_images < 1:
            raise ConfigError(f"correction_images must be >= 1, got {self.correction_images}")
        if self.adaround_iterations < 1:
            raise ConfigError(f"adaround_iterations must be >= 1, got {self.adaround_iterations}")
        if self.rounding_images < 1:
            raise ConfigError(f"rounding_images must be >= 1, got {self.rounding_images}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.variant == "trt" and self.reduce_range:
            raise ConfigError("reduce_range (7-bit weights) is for x86 CPUs; the trt variant uses full s8 weights")
        object.__setattr__(self, "exclude", tuple(self.exclude))


@dataclass(frozen=True)
class LayerSensitivity:
    """Output error when only ``node`` is quantized, on the sensitivity images.

    probs_max_abs: max |prob - prob_fp32| over images and classes (ranking key).
    logits_cosine: mean over images of cos(logits, logits_fp32) (tie-break: lower is worse).
    """

    node: str
    op_type: str
    probs_max_abs: float
    logits_cosine: float


@dataclass(frozen=True)
class QuantizeResult:
    """What was written and how: goes into the bundle manifest (see :meth:`manifest_info`)."""

    path: str
    variant: str
    precision: str
    per_channel: bool
    excluded_nodes: tuple[str, ...]
    requested_exclude: tuple[str, ...]
    auto_excluded: tuple[str, ...]
    sensitivities: tuple[LayerSensitivity, ...]
    calibration_method: str
    calibration_percentile: float | None
    model_sha256: str
    set_fingerprint: str
    quantize_nodes: int
    sha256: str
    float_head: tuple[str, ...] = ()
    bias_corrected: int = 0
    rounding: str = "nearest"
    rounded_layers: int = 0
    reduce_range: bool = False
    table_sha256: str = ""  # sha256 of the calibration table's file, when the caller read it from one
    # The images each fitting step used, by step (``rounding``, ``bias_correction``, ``sensitivity``):
    # {"images": n, "fingerprint": ...} of the seeded subset it drew; only steps that ran. These change the
    # weights and the float layers, and may come from another set than the table's.
    fitted_on: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_info(self) -> dict[str, Any]:
        """The facts a bundle's ``FileEntry.info`` records for this INT8 file."""
        return {
            "variant": self.variant,
            "per_channel": self.per_channel,
            "excluded_nodes": list(self.excluded_nodes),
            "auto_excluded": list(self.auto_excluded),
            "float_head": bool(self.float_head),
            "bias_corrected_layers": self.bias_corrected,
            "weight_rounding": self.rounding,
            "rounded_layers": self.rounded_layers,
            "calibration_method": self.calibration_method,
            "calibration_percentile": self.calibration_percentile,
            "calibration_fingerprint": self.set_fingerprint,
            "calibration_sha256": self.table_sha256,
            "fitted_on": {step: dict(v) for step, v in self.fitted_on.items()},
            "reduce_range": self.reduce_range,
            "source_sha256": self.model_sha256,
            # Bias correction, weight rounding and the sensitivity pass measured the file in its exact QDQ
            # arithmetic (since session 22; before, bias correction used the quantizing CPU's integer kernels,
            # and files made on x86 without VNNI carry that CPU's error). Absent from older records.
            "fitted_in": "exact-qdq",
        }


class CalibrationImagesNeeded(ConfigError):
    """Bias correction or GPTQ/AdaRound rounding asked for without calibration images; ``needs``: which of them
    (the command line says it in its own words: ``uopsl quantize`` catches it)."""

    def __init__(self, message: str, needs: tuple[str, ...]) -> None:
        super().__init__(message)
        self.needs = needs


# -- model preparation ---------------------------------------------------------

def _load_prepared(model_path: Path) -> Any:
    """Load, name unnamed nodes, shape-infer in memory (tensor names are kept, so the table applies)."""
    onnx = require("onnx", "INT8 quantization")
    quant_utils = require("onnxruntime.quantization.quant_utils", "INT8 quantization")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ConfigError(f"{model_path}: not a readable ONNX model ({exc})") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 13 <= opset <= MAX_OPSET:
        raise ConfigError(
            f"{model_path}: opset {opset}; INT8 QDQ export needs 13 <= opset <= {MAX_OPSET} "
            "(per-channel Q/DQ from 13; TensorRT 8.5/8.6 parse up to opset 17, 10.0 up to 20). Re-export with `uopsl export --opset 17`"
        )
    constants_to_initializers(model, onnx)  # a model from a plain torch.onnx.export (uopsl export did it already)
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    _materialise_shared_initializers(model)
    model = onnx.shape_inference.infer_shapes(model)
    quant_utils.add_infer_metadata(model)  # tells ORT the shapes are already inferred
    return model


def _materialise_shared_initializers(model: Any) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer under the output's name.

    The torch exporter shares identical constants (e.g. the zero biases of
    folded BatchNorms) through Identity nodes; ONNX Runtime's quantizer then
    sees a Conv bias that is not an initializer, cannot quantize it, and the
    Conv is never fused into an integer kernel (slower than FP32).
    """
    inits = {i.name: i for i in model.graph.initializer}
    sources: set[str] = set()
    for node in [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy_ = copy.deepcopy(inits[node.input[0]])
        copy_.name = node.output[0]
        model.graph.initializer.append(copy_)
        model.graph.node.remove(node)
        sources.add(node.input[0])
    _drop_unused_initializers(model, sources)


def _drop_unused_initializers(model: Any, candidates: set[str] | None = None) -> None:
    """Remove initializers (of ``candidates``, or all) that no node, graph input or output uses."""
    graph = model.graph
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output} | {i.name for i in graph.input}
    for init in [i for i in graph.initializer if i.name not in used and (candidates is None or i.name in candidates)]:
        graph.initializer.remove(init)


def remake_options(info: Mapping[str, Any], extra_exclude: Sequence[str] = (), *, variant: str | None = None,
                   images: str = "IMAGES") -> str:
    """The ``uopsl quantize`` options that make an INT8 file again as its manifest entry (``info``) records it,
    with ``extra_exclude`` kept in float too: variant (``variant`` where the entry has none), weight scales,
    every node it kept in float (given, chosen by ``--auto-exclude``, and the head, which ``--exclude``
    repeats harmlessly), rounding and its image count, bias correction, 7-bit weights; and ``--images
    IMAGES`` where rounding or bias correction needs them. Why: suggested re-make commands gave only
    ``--variant``, so following one quantized again the layers an ``--auto-exclude`` run had kept in float
    (a review). Not recorded, so not carried: ``--adaround-iterations``."""
    float_head = bool(info.get("float_head", True))
    kept = [str(n) for n in info.get("excluded_nodes") or ()]
    kept += [n for n in extra_exclude if n not in kept]
    flags = [f"--variant {info.get('variant') or variant or 'cpu'}"]
    if info.get("per_channel") is False:
        flags.append("--per-tensor")
    if not float_head:
        flags.append("--quantize-head")
    if kept:
        flags.append(f"--exclude {','.join(kept)}")
    rounding = info.get("weight_rounding")
    rounding = rounding if isinstance(rounding, str) else QuantizeConfig.rounding
    if rounding != QuantizeConfig.rounding:
        flags.append(f"--rounding {rounding}")
    recorded = info.get("fitted_on")
    fitted: Mapping[str, Any] = recorded if isinstance(recorded, Mapping) else {}
    step = fitted.get("rounding")
    n_rounding = step.get("images") if isinstance(step, Mapping) else None
    if rounding != "nearest" and isinstance(n_rounding, int) and n_rounding != QuantizeConfig.rounding_images:
        flags.append(f"--rounding-images {n_rounding}")
    corrected = info.get("bias_corrected_layers") != 0 or "bias_correction" in fitted
    if not corrected:
        flags.append("--no-bias-correction")
    if info.get("reduce_range"):
        flags.append("--reduce-range")
    if rounding != "nearest" or corrected:
        flags.append(f"--images {images}")
    return " ".join(flags)


def head_nodes(model: Any) -> tuple[str, ...]:
    """Compute nodes after the encoder of a model written by ``uopsl export`` (empty for other models)."""
    nodes = list(model.graph.node)
    if not any(n.name.startswith(TRUNK_PREFIX) for n in nodes):
        return ()
    first_trunk = min(i for i, n in enumerate(nodes) if n.name.startswith(TRUNK_PREFIX))
    return tuple(n.name for i, n in enumerate(nodes)
                 if i > first_trunk and n.op_type in LAYER_OPS and not n.name.startswith(TRUNK_PREFIX))


def resolve_exclusions(model: Any, items: Iterable[str]) -> tuple[str, ...]:
    """Node names for ``items`` (each a node name, an op type or ``@head``); unknown items are an error."""
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    out: list[str] = []
    for item in items:
        if item == HEAD_GROUP:
            matched = list(head_nodes(model))
            if not matched:
                raise ConfigError(f"--exclude {HEAD_GROUP}: this model has no encoder nodes named "
                                  f"{TRUNK_PREFIX}... (it was not written by `uopsl export`), so its head is unknown")
        elif item in names:
            matched = [item]
        else:
            matched = [n.name for n in nodes if n.op_type == item]
        if not matched:
            types = sorted({n.op_type for n in nodes})
            raise ConfigError(
                f"--exclude {item!r} is neither a node name nor an op type of this model; "
                f"op types present: {types}; node names look like {sorted(names)[:3]}"
            )
        out.extend(m for m in matched if m not in out)
    return tuple(out)


def _tensors_range(table: CalibrationTable) -> Any:
    calib = require("onnxruntime.quantization.calibrate", "INT8 quantization")
    data = {
        name: calib.TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in table.ranges.items()
    }
    # MinMax: the ranges are final; nothing is re-derived from histograms.
    return calib.TensorsData(calib.CalibrationMethod.MinMax, data)


def _quantize_proto(
    model: Any,
    table: CalibrationTable,
    config: QuantizeConfig,
    *,
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] = (),
) -> Any:
    """One QDQ pass on a copy of the prepared model; returns the quantized ModelProto."""
    qdq = require("onnxruntime.quantization.qdq_quantizer", "INT8 quantization")
    qu = require("onnxruntime.quantization.quant_utils", "INT8 quantization")
    registry = require("onnxruntime.quantization.registry", "INT8 quantization")
    model = copy.deepcopy(model)  # the quantizer edits the proto in place
    nodes_to_exclude = _with_feeding_activations(model, nodes_to_exclude)
    softmax_outputs = [n.output[0] for n in model.graph.node if n.op_type == "Softmax" and n.output[0] in table]
    extra: dict[str, Any] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": config.variant == "trt",
        "TensorQuantOverrides": {
            name: [{"rmin": np.float32(table.range(name)[0]), "rmax": np.float32(table.range(name)[1])}]
            for name in softmax_outputs
        },
    }
    if config.variant == "trt":
        extra.update({
            "AddQDQPairToWeight": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
            "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "Gemm", "MatMul"],
        })
    op_types = sorted(set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry))
    quantizer = qdq.QDQQuantizer(
        model,
        config.per_channel,
        config.reduce_range,
        qu.QuantType.QInt8,
        qu.QuantType.QInt8 if config.variant == "trt" else qu.QuantType.QUInt8,
        _tensors_range(table),
        list(nodes_to_quantize),
        list(nodes_to_exclude),
        op_types,
        extra,
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    out = quantizer.model.model
    _keep_outputs_float(out)
    _float_inputs_for(out, set(nodes_to_exclude))
    return out


def _with_feeding_activations(model: Any, excluded: Sequence[str]) -> list[str]:
    """``excluded`` plus the Relu/Clip nodes whose output an excluded node reads.

    With u8 activations ONNX Runtime deletes a Relu/Clip and lets the
    QuantizeLinear's range do the clamping; an excluded node reading the float
    tensor (see :func:`_float_inputs_for`) would then skip the activation. Kept
    in float, the activation stays in the graph.
    """
    names = set(excluded)
    if not names:
        return list(excluded)
    readers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for t in n.input:
            readers.setdefault(t, set()).add(n.name)
    extra = [n.name for n in model.graph.node
             if n.op_type in ("Relu", "Clip") and n.name not in names and readers.get(n.output[0], set()) & names]
    return list(excluded) + extra


def _float_inputs_for(model: Any, excluded: set[str]) -> None:
    """Feed excluded nodes the float tensors instead of their neighbours' dequantized copies.

    ONNX Runtime leaves an excluded node between the DQ of its producer's
    output and the Q of its consumer's input; its graph optimizer then fuses
    DQ -> node -> Q into an integer kernel anyway. Reading the float tensor
    (the Q's input) keeps the excluded node in float for every runtime.
    """
    if not excluded:
        return
    nodes = list(model.graph.node)
    producer = {t: n for n in nodes for t in n.output}
    for node in nodes:
        if node.name not in excluded:
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    # Pairs that fed only excluded nodes are now dead.
    changed = True
    while changed:
        used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        for n in dead:
            model.graph.node.remove(n)
        changed = bool(dead)
    _drop_unused_initializers(model)


def _keep_outputs_float(model: Any) -> None:
    """Remove the Q/DQ pair ONNX Runtime puts on graph outputs (see module doc); edits in place."""
    outputs = {o.name for o in model.graph.output}
    nodes = list(model.graph.node)
    producer = {t: n for n in nodes for t in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    remove: list[Any] = []
    for name in outputs:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = q.input[0]
        remove.append(dq)
        if all(c is dq for c in consumers.get(q.output[0], [])):
            remove.append(q)
        # The float tensor takes the output's name again, wherever it is read.
        for n in nodes:
            for i, t in enumerate(n.output):
                if t == src:
                    n.output[i] = name
            for i, t in enumerate(n.input):
                if t == src:
                    n.input[i] = name
    for n in remove:
        model.graph.node.remove(n)
    # Scales and zero points of the removed pairs, and the bounds of Clip/Relu nodes the
    # quantizer folded into the u8 range (ONNX Runtime warns about each on every load).
    used = {t for n in model.graph.node for t in n.input} | outputs
    for n in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(n)
    _drop_unused_initializers(model)


# -- sensitivity -----------------------------------------------------------------
def _session(model_bytes: bytes) -> Any:
    """A CPU session that runs a QDQ model in its exact arithmetic (the sensitivity ranking must not be this
    CPU's: see :func:`uopsl.export.layerwise.exact_qdq_options`)."""
    ort = require("onnxruntime", "INT8 quantization")
    try:
        return ort.InferenceSession(model_bytes, exact_qdq_options(ort), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot load the quantized model: {exc}") from exc


def _run(sess: Any, images: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    name = sess.get_inputs()[0].name
    probs, logits = [], []
    for start in range(0, len(images), batch_size):
        p, lg = sess.run(["probs", "logits"], {name: images[start : start + batch_size]})
        probs.append(p)
        logits.append(lg)
    return np.concatenate(probs), np.concatenate(logits)


def output_error(reference: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """``(max |probs diff|, mean cosine of logits)`` between two ``(probs, logits)`` runs."""
    p0, l0 = (np.asarray(a, np.float64) for a in reference)
    p1, l1 = (np.asarray(a, np.float64) for a in test)
    max_abs = float(np.max(np.abs(p1 - p0))) if p0.size else 0.0
    a, b = l0.reshape(len(l0), -1), l1.reshape(len(l1), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.maximum(denom, 1e-30), 1.0)
    return max_abs, float(np.mean(cos))


def layer_sensitivities(
    model: str | os.PathLike[str],
    table: CalibrationTable,
    calib_set: CalibrationSet,
    config: QuantizeConfig = QuantizeConfig(),
    *,
    show_progress: bool = True,
) -> list[LayerSensitivity]:
    """Quantize each compute layer alone and measure the output error; most harmful first."""
    path = Path(model)
    prepared = _load_prepared(path)
    return _sensitivities(prepared, path, table, calib_set, config,
                          resolve_exclusions(prepared, config.exclude), show_progress)


def _sensitivities(prepared: Any, path: Path, table: CalibrationTable, calib_set: CalibrationSet,
                   config: QuantizeConfig, excluded: Sequence[str], show_progress: bool) -> list[LayerSensitivity]:
    output_names = {o.name for o in prepared.graph.output}
    if not {"probs", "logits"} <= output_names:
        raise ConfigError(
            f"{path}: the sensitivity pass compares the outputs 'probs' and 'logits' (the deployed-model "
            f"contract); this model has {sorted(output_names)}"
        )
    images = calib_set.subset(config.sensitivity_images).images
    reference = _run(_session(prepared.SerializeToString()), images)
    candidates = [n for n in prepared.graph.node if n.op_type in LAYER_OPS and n.name not in excluded]
    out: list[LayerSensitivity] = []
    for node in track(candidates, total=len(candidates), desc="sensitivity", show=show_progress):
        qmodel = _quantize_proto(prepared, table, config, nodes_to_quantize=[node.name])
        max_abs, cos = output_error(reference, _run(_session(qmodel.SerializeToString()), images))
        out.append(LayerSensitivity(node.name, node.op_type, max_abs, cos))
    out.sort(key=lambda s: (-s.probs_max_abs, s.logits_cosine))
    return out


# -- the entry point ------------------------------------------------------------
def count_quantize_nodes(model: Any) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")


def quantize_model(
    model: str | os.PathLike[str],
    table: CalibrationTable,
    out: str | os.PathLike[str],
    config: QuantizeConfig = QuantizeConfig(),
    *,
    calib_set: CalibrationSet | None = None,
    show_progress: bool = True,
    shown_as: str | os.PathLike[str] | None = None,
) -> QuantizeResult:
    """Write the INT8 QDQ model for ``config.variant`` to ``out`` (atomically) and describe it.

    ``table`` must have been measured on this very model (sha256 checked).
    ``calib_set`` (the calibration images) is needed for ``config.auto_exclude > 0``
    and for ``config.bias_correction``. ``shown_as``: the name the log gives
    the file when ``out`` is a temporary that will be moved there (``uopsl
    quantize`` into a bundle).
    """
    onnx = require("onnx", "INT8 quantization")
    path = Path(model)
    model_sha = model_sha256(path)
    if table.model_sha256 != model_sha:
        raise ConfigError(
            f"the calibration table was measured on a model with sha256 {table.model_sha256[:12]}..., but {path} "
            f"has sha256 {model_sha[:12]}...; recalibrate it with `uopsl calibrate {path}`"
        )
    prepared = _load_prepared(path)
    # Every activation the quantizer may quantize needs a range; ONNX Runtime's QDQ quantizer fails on a missing
    # one with a bare KeyError deep inside (a table edited by hand, or written by other code for this model).
    activations = activation_tensors(prepared)
    missing = [t for t in activations if t not in table]
    if missing:
        raise ConfigError(
            f"the calibration table holds no range for {len(missing)} of the {len(activations)} activation tensors "
            f"of {path} (e.g. {', '.join(missing[:3])}); it was not measured on this graph, or was edited: "
            f"recalibrate it with `uopsl calibrate {path}`")
    requested = resolve_exclusions(prepared, config.exclude)
    wanted = []  # (what uses the calibration images, how to turn it off)
    if config.bias_correction:
        wanted.append(("bias correction", "--no-bias-correction (bias_correction=False)"))
    if config.rounding != "nearest":
        wanted.append((f"--rounding {config.rounding}", "--rounding nearest (rounding='nearest')"))
    if wanted and calib_set is None:
        what, offs = " and ".join(w for w, _ in wanted), " and ".join(o for _, o in wanted)
        raise CalibrationImagesNeeded(
            f"{what} use{'s' if len(wanted) == 1 else ''} the calibration images: pass them (`uopsl quantize "
            f"--images DIR`, or calib_set=...) or turn off with {offs}", tuple(w for w, _ in wanted))
    head = head_nodes(prepared) if config.float_head else ()
    if config.float_head and not head:
        log.info("%s has no encoder nodes named %s...; float_head keeps nothing in float", path, TRUNK_PREFIX)
    requested += tuple(h for h in head if h not in requested)
    sens: list[LayerSensitivity] = []
    auto: tuple[str, ...] = ()
    if config.auto_exclude:
        if calib_set is None:
            raise ConfigError("--auto-exclude needs the calibration images (--images) for its sensitivity pass")
        n_candidates = sum(1 for n in prepared.graph.node if n.op_type in LAYER_OPS and n.name not in requested)
        if config.auto_exclude > n_candidates:  # before the sensitivity pass, not after it
            raise ConfigError(
                f"--auto-exclude {config.auto_exclude} asks for more layers than the {n_candidates} candidate "
                f"layers ({', '.join(sorted(LAYER_OPS))} not already kept in float) of this model"
            )
        sens = _sensitivities(prepared, path, table, calib_set, config, requested, show_progress)
        auto = tuple(s.node for s in sens[: config.auto_exclude])
        log.info("auto-excluded (most sensitive) layers: %s", ", ".join(auto))
    excluded = requested + tuple(a for a in auto if a not in requested)
    fitted: dict[str, dict[str, Any]] = {}

    def used(step: str, n: int) -> CalibrationSet:
        """The seeded subset a step draws (each step draws its own, seed 0), recorded as what it fitted on."""
        assert calib_set is not None  # checked above for every step that draws one
        sub = calib_set.subset(n)
        # from_set: the set it was drawn from, so that validate knows whether these images are the table's
        fitted[step] = {"images": len(sub), "fingerprint": sub.fingerprint, "from_set": calib_set.fingerprint}
        return sub

    if sens:
        used("sensitivity", config.sensitivity_images)
    qmodel = _quantize_proto(prepared, table, config, nodes_to_exclude=excluded)
    rounded = 0
    if config.rounding == "gptq" and calib_set is not None:
        rounded = len(gptq(prepared, qmodel, used("rounding", config.rounding_images).images,
                           show_progress=show_progress))
    elif config.rounding == "adaround" and calib_set is not None:
        rounded = len(adaround(prepared, qmodel, used("rounding", config.rounding_images).images,
                               AdaRoundConfig(iterations=config.adaround_iterations), show_progress=show_progress))
    corrected = 0
    if config.bias_correction and calib_set is not None:
        corrected = correct_biases(prepared, qmodel, used("bias_correction", config.correction_images).images,
                                   show_progress=show_progress)
    try:
        onnx.checker.check_model(qmodel, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker errors are several types
        raise BackendError(f"the quantized model fails onnx.checker ({exc}); report this with the model") from exc
    data = qmodel.SerializeToString()
    write_bytes(out, data)
    n_q = count_quantize_nodes(qmodel)
    log.info("%s INT8 model (%s, %d QuantizeLinear, %d nodes kept float) written to %s",
             config.variant, PRECISION[config.variant], n_q, len(excluded), shown_as or out)
    return QuantizeResult(
        path=str(out),
        variant=config.variant,
        precision=PRECISION[config.variant],
        per_channel=config.per_channel,
        excluded_nodes=excluded,
        requested_exclude=tuple(config.exclude),
        auto_excluded=auto,
        sensitivities=tuple(sens),
        calibration_method=table.method,
        calibration_percentile=table.percentile,
        model_sha256=model_sha,
        set_fingerprint=table.set_fingerprint,
        quantize_nodes=n_q,
        sha256=sha256_file(out),
        float_head=head,
        bias_corrected=corrected,
        rounding=config.rounding,
        rounded_layers=rounded,
        reduce_range=config.reduce_range,
        fitted_on=fitted,
    )
