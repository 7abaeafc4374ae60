"""How far this CPU's INT8 kernels compute a QDQ file from the file's own arithmetic.

A QDQ INT8 file defines its arithmetic exactly: dequantize, compute in float,
quantize. ONNX Runtime and OpenVINO on CPUs with VNNI reproduce it up to
rounding. On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) both sum
pairs of u8 x s8 products in 16 bits first, which saturates. On this
project's EfficientNet-Lite0 demo model the kernels of such a CPU sat 5-10 dB
(logits SQNR) from the file's arithmetic, a larger error than the
quantization itself, while a file with 7-bit weights (``uopsl quantize
--reduce-range``) stayed 26-29 dB from it (``docs/results.md``, section 4,
session 22).

``uopsl validate`` runs every CPU INT8 file a second time in its exact
arithmetic (ONNX Runtime with the fusion of Q/DQ pairs into integer kernels
switched off) and reports both distances, so a validation engineer can tell
a file that quantized badly from a CPU that computes it badly, and gets the
remedy for the second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from uopsl.export.layerwise import exact_qdq_options, sqnr_db
from uopsl.runtime.backends.base import verified_model_path
from uopsl.runtime.errors import BackendError
from uopsl.runtime.optional import require

#: The CPU's kernels count as faithful to the file while they stay at least this close to its exact
#: arithmetic (logits SQNR); VNNI CPUs and 7-bit weights sit far above it, the saturating case far below.
FAITHFUL_DB = 20.0


class ExactRunner:
    """A QDQ file run in its exact arithmetic on the CPU (whatever this CPU's integer kernels do)."""

    def __init__(self, path: Path, threads: int | None = None, expected_sha256: str | None = None) -> None:
        """``expected_sha256``: the manifest's, checked just before and after loading (as the backends do), so
        the file measured is the file validated."""
        ort = require("onnxruntime", "the INT8 arithmetic check of `uopsl validate`")
        opts = exact_qdq_options(ort)
        if threads:
            opts.intra_op_num_threads = int(threads)
        with verified_model_path(path, expected_sha256) as load_path:
            try:
                self._session = ort.InferenceSession(load_path, opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                raise BackendError(f"ONNX Runtime cannot load {path} in its exact arithmetic: {exc}") from exc
        self._input = self._session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(["logits"], {self._input: batch})[0], np.float32)


def _sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    r = np.asarray(reference, np.float64)
    return sqnr_db(float((r**2).sum()), float(((np.asarray(test, np.float64) - r) ** 2).sum()))


def arithmetic_check(reference_logits: np.ndarray, candidate_logits: np.ndarray, exact_logits: np.ndarray,
                     *, backend: str, cpu_int8: str, reduce_range: bool,
                     precision: str = "int8-qdq-u8") -> dict[str, Any]:
    """The three distances (logits SQNR, dB) and, where this CPU's kernels are the larger error, what to do.

    ``file_db``: the file's exact arithmetic against the reference (the quantization's own error, plus any
    export or preprocessing difference from the reference), ``file_top1`` its top-1 agreement with the
    reference; ``backend_db``: what ``backend`` computed against
    the reference; ``kernels_db``: what it computed against the file's exact arithmetic (this CPU's and
    backend's own error). ``precision``: the file's (an ``int8-qdq-s8`` file is the TensorRT variant, which
    no CPU backend runs unasked).
    """
    file_db = _sqnr(reference_logits, exact_logits)
    backend_db = _sqnr(reference_logits, candidate_logits)
    kernels_db = _sqnr(exact_logits, candidate_logits)
    ref_top = np.asarray(reference_logits).argmax(axis=1)
    out: dict[str, Any] = {"file_db": round(file_db, 2), "backend_db": round(backend_db, 2),
                           "kernels_db": round(kernels_db, 2),
                           # the top-1 agreement the file itself reaches (what a faithful CPU would show)
                           "file_top1": float((np.asarray(exact_logits).argmax(axis=1) == ref_top).mean()),
                           "cpu_int8": cpu_int8, "reduce_range": reduce_range,
                           "faithful_db": FAITHFUL_DB, "faithful": kernels_db >= FAITHFUL_DB, "note": None}
    if kernels_db >= FAITHFUL_DB or kernels_db >= file_db:
        return out
    if cpu_int8 == "x86-no-vnni":
        where = "this CPU (x86 without VNNI: its 8-bit kernels sum u8 x s8 pairs in 16 bits and saturate)"
    elif cpu_int8 == "x86":
        where = "this x86 CPU (its flags could not be read; without VNNI its 8-bit kernels saturate)"
    else:
        where = f"this CPU ({cpu_int8})"
    if precision.endswith("s8"):
        remedy = "this is the TensorRT (s8) file; CPUs run the u8 file of the cpu variant"
    elif reduce_range or cpu_int8 not in ("x86-no-vnni", "x86"):
        remedy = "CPUs like it need FP32 for this file (auto runs FP32 unless this file passes here)"
    else:
        remedy = ("for CPUs like it, quantize with --reduce-range (7-bit weights) and validate that file on one"
                  + ("" if cpu_int8 == "x86-no-vnni" else ", if this CPU lacks VNNI"))
    out["note"] = (f"{backend} computes this file {kernels_db:.1f} dB from the file's exact arithmetic on {where}, "
                   f"a larger error than the file's own ({file_db:.1f} dB from the reference): {remedy}")
    return out
