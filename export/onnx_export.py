"""torch -> ONNX for the deployed-model contract, with constants folded and the result checked.

The caller (the train layer) hands over a module that already has the contract
(uint8 NHWC RGB in; ``probs``, ``logits``, ``site_maps`` out) and its
constants pre-multiplied (see ``uopsl.train.model.DeployModel``). This module
exports it with the TorchScript-based exporter in eval mode, which folds
BatchNorm into the preceding convolutions and folds constant sub-graphs, then
runs ``onnx.checker`` with full shape inference and reports the op histogram.

Opset: 17 by default. ONNX Runtime's static INT8 (QDQ) and TensorRT 8.5+
both read it, and it is <= 20 as the TensorRT parsers of JetPack 5/6 require.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from uopsl.runtime.bundle import INPUT_NAME, OUTPUT_NAMES
from uopsl.runtime.errors import ConfigError, ExportError
from uopsl.runtime.fsio import staging
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

_Model = TypeVar("_Model")  # an onnx.ModelProto (onnx is an optional import)

MIN_OPSET = 14  # opset 13 leaves the outputs' class dimension symbolic after shape inference
MAX_OPSET = 20
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportReport:
    """What the exported graph holds: op counts (after folding) and I/O shapes."""

    path: str
    opset: int
    op_count: int
    ops: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, list[int | str]] = field(default_factory=dict)
    outputs: dict[str, list[int | str]] = field(default_factory=dict)
    initializers: int = 0


def export_onnx(module: object, path: str | os.PathLike[str], size: int, opset: int = DEFAULT_OPSET) -> ExportReport:
    """Export ``module`` (a torch ``nn.Module`` with the deployed contract) to ``path`` atomically."""
    torch = require("torch", "ONNX export")
    onnx = require("onnx", "ONNX export")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be in {MIN_OPSET}..{MAX_OPSET} (ONNX Runtime INT8 and TensorRT), got {opset}")
    target = Path(path)
    module.eval()  # type: ignore[attr-defined]
    dummy = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    axes = {n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)}
    with staging(target) as stage:
        stage.close()  # torch and onnx write the temporary by its name
        tmp = str(stage.path)
        with torch.no_grad():
            torch.onnx.export(
                module, (dummy,), tmp, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL, dynamo=False,
            )
        model = onnx.load(tmp)
        try:
            onnx.checker.check_model(model, full_check=True)
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"the exported graph fails onnx.checker / shape inference: {exc}") from exc
        inferred = _tidy(inferred, onnx)
        onnx.checker.check_model(inferred, full_check=True)
        symbolic = {o.name: _dims(o) for o in inferred.graph.output if o.name in ("probs", "logits")
                    and any(not isinstance(d, int) or d <= 0 for d in _dims(o)[1:])}
        if symbolic:  # the runtime and Triton check the class count against the manifest: a name is no count
            raise ConfigError(f"opset {opset}: shape inference left outputs without fixed sizes ({symbolic}); "
                              f"export with another opset ({MIN_OPSET}..{MAX_OPSET}, default {DEFAULT_OPSET})")
        inferred.doc_string = "uopsl deployed model: uint8 NHWC RGB in; probs, logits, site_maps out"
        onnx.save(inferred, tmp)
        stage.commit()  # the mode open(target, "w") would give, fsynced, then renamed
    report = _report(inferred, target, opset)
    if report.ops.get("BatchNormalization"):
        log.warning("%d BatchNormalization nodes were not folded", report.ops["BatchNormalization"])
    log.info("exported %s: %d ops after folding (%s)", target, report.op_count,
             ", ".join(f"{k} {v}" for k, v in sorted(report.ops.items(), key=lambda kv: -kv[1])[:8]))
    return report


#: Constant-node attributes turned into initializers, with the element type ONNX gives each form.
_CONSTANT_FORMS = {"value": None, "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                   "value_ints": np.int64}


def constants_to_initializers(model: _Model, onnx: object) -> int:
    """Turn ``Constant`` nodes (a ``value`` tensor, or ``value_float(s)``/``value_int(s)``) into initializers; returns how many.

    Why: ONNX Runtime's quantizer takes a Constant node's output for an activation
    and needs a calibrated range for it, which no calibration gives a constant;
    as an initializer it is a weight. A plain ``torch.onnx.export`` leaves scalar
    constants (``x * 0.5``) as such nodes; ``uopsl export`` and ``uopsl quantize`` convert them.
    """
    g = model.graph  # type: ignore[attr-defined]
    numpy_helper = onnx.numpy_helper  # type: ignore[attr-defined]
    keep, n = [], 0
    for node in g.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name in _CONSTANT_FORMS:
            v = onnx.helper.get_attribute_value(attr)  # type: ignore[attr-defined]
            # value: a tensor; value_float(s) / value_int(s): the scalar or 1-D forms (float32 / int64, as ONNX says)
            arr = numpy_helper.to_array(v) if attr.name == "value" else np.asarray(v, dtype=_CONSTANT_FORMS[attr.name])
            g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            n += 1
        else:
            keep.append(node)
    if n:
        del g.node[:]
        g.node.extend(keep)
    return n


def _tidy(model: _Model, onnx: object) -> _Model:
    """Turn Constant nodes into initializers and drop Identity nodes (the exporter leaves both).

    The graph outputs keep the static shapes found by shape inference, so the
    file itself says ``probs`` is (batch, K) rather than a symbolic name.
    """
    g = model.graph  # type: ignore[attr-defined]
    constants_to_initializers(model, onnx)
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name
    del g.node[:]
    g.node.extend(keep)
    shapes = {v.name: v for v in g.value_info}
    for o in g.output:
        if o.name in shapes:
            o.type.CopyFrom(shapes[o.name].type)
            o.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def _dims(value_info: object) -> list[int | str]:
    t = value_info.type.tensor_type  # type: ignore[attr-defined]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]


def _report(model: object, path: Path, opset: int) -> ExportReport:
    g = model.graph  # type: ignore[attr-defined]
    ops = Counter(n.op_type for n in g.node)
    return ExportReport(
        path=str(path), opset=opset, op_count=sum(ops.values()), ops=dict(ops),
        inputs={i.name: _dims(i) for i in g.input}, outputs={o.name: _dims(o) for o in g.output},
        initializers=len(g.initializer),
    )


def describe_onnx(path: str | os.PathLike[str]) -> ExportReport:
    """Op histogram and I/O shapes of an existing ONNX file."""
    onnx = require("onnx", "reading an ONNX graph")
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return _report(model, Path(path), opset)
