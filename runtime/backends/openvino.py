"""OpenVINO backend for x86 CPUs (the laptops and mini-PCs many clinics use).

OpenVINO reads the bundle's ONNX files directly, including the QDQ INT8 graph,
whose Quantize/Dequantize pairs it turns into its own INT8 kernels (often much
faster than ONNX Runtime's on the same file). It is an optional extra
(the ``openvino`` extra), imported only when this backend loads.

Inference precision is pinned to f32 by default: on CPUs with bf16 support
(this project's AMD EPYC test machine included) OpenVINO 2026 otherwise computes
an FP32 model in bf16, which would make the deployed decisions drift from the
validated ones without anyone asking for it.

Batch self-check: OpenVINO 2026.4's CPU plugin computes a ``Mul -> ReduceSum ->
Add(bias)`` head (what the tiny contract model exports) wrongly for batches
larger than one: the bias is broadcast along the wrong axis, while batch-1
results match ONNX Runtime to 1e-7. So after compiling, the backend runs two
distinct images as one batch and one at a time; if the outputs disagree it logs
a warning and from then on runs batches one image at a time (slower, correct).
The comparison runs before the first batch of more than one image, not at load:
it costs three inferences (150-300 ms on a 2-core box), and a camera that sends
one photograph per start, or ``watch`` (batch 1), never needs it.

Compiled models are cached between loads (:mod:`uopsl.runtime.backends.openvino_cache`:
where, why it checks every cached file, how to turn it off).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from uopsl.runtime.backends.base import ModelFileBackend, TensorSpec, verified_model_path
from uopsl.runtime.backends.openvino_cache import CacheSlot, openvino_cache_dir, openvino_cache_enabled
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

_HINTS = ("LATENCY", "THROUGHPUT")


_CONTRACT_NAMES = ("image", "probs", "logits", "site_maps")


def _spec(port: Any) -> TensorSpec:
    pshape = port.get_partial_shape()
    shape = tuple(int(d.get_length()) if d.is_static else None for d in pshape)
    # A port can carry several names (OpenVINO keeps internal aliases such as
    # '/ReduceSum_output_0'); prefer the deployed-model contract's name.
    names = set(port.get_names())
    name = next((n for n in _CONTRACT_NAMES if n in names), port.get_any_name())
    return TensorSpec(name, shape, np.dtype(port.get_element_type().to_dtype()))



def openvino_cause(exc: BaseException) -> str:
    """The line of an OpenVINO error that says what went wrong.

    OpenVINO's texts open with where in its C++ sources the error was raised ("Exception from
    src/inference/src/cpp/core.cpp:84:"), which tells a user nothing; the cause ("Model can't be parsed")
    comes after, often last.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith("Exception from ") and not ln.startswith("Check '")]
    return (said[-1] if said else lines[0] if lines else type(exc).__name__)[:300]


class OpenVinoBackend(ModelFileBackend):
    """An OpenVINO compiled model over one ONNX file.

    device: OpenVINO device name ("CPU"; "GPU" for Intel iGPUs where the plugin is present).
    threads: inference threads (None: OpenVINO's default, all physical cores).
    hint: OpenVINO performance hint, LATENCY (one request at a time, what the
        screening pipeline does) or THROUGHPUT.
    inference_precision: "f32" (default, see the module docstring) or "bf16"/"f16".
    precision: what the file computes in, for logs and reports (from the manifest).
    cache: reuse and keep compiled models in :func:`openvino_cache_dir` (:mod:`.openvino_cache`); False, or
        ``UOPSL_OPENVINO_CACHE=0``, compiles every load.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "CPU",
        threads: int | None = None,
        *,
        hint: str = "LATENCY",
        inference_precision: str = "f32",
        precision: str = "fp32",
        batch_check: bool = True,
        cache: bool = True,
    ) -> None:
        super().__init__(path, threads, precision)
        if hint not in _HINTS:
            raise ConfigError(f"hint must be one of {_HINTS}, got {hint!r}")
        self.device = device
        self.hint = hint
        self.inference_precision = inference_precision
        self.batch_check = batch_check
        #: True when the batch self-check failed and batches run image by image
        self.split_batches = False
        #: whether batched outputs still have to be compared with single-image ones (before the first batch > 1)
        self._batching_unchecked = False
        self.cache = cache
        #: after load: whether the compiled model came from the cache (None: the cache was off or unusable)
        self.loaded_from_cache: bool | None = None
        self._compiled: Any = None
        self._request: Any = None

    def load(self) -> None:
        ov = require("openvino", "the OpenVINO backend")
        self._check_file()
        core = ov.Core()
        if self.device not in core.available_devices:
            raise BackendError(
                f"OpenVINO device {self.device!r} is not available here (available: {core.available_devices})"
            )
        # The precision on every device: the GPU plugin's default is f16, the CPU's bf16 where the CPU has it.
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.device == "CPU" and self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        slot = self._cache_slot(ov, core, config)
        self.loaded_from_cache = None
        try:
            # The file the manifest lists is the file compiled (verified_model_path: opened and hashed once).
            with verified_model_path(self.path, self.expected_sha256) as load_path:
                try:
                    model = core.read_model(load_path)
                    self._compiled = self._compile(core, model, config, slot)
                except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
                    raise BackendError(f"OpenVINO cannot compile {self.path} for {self.device}: {openvino_cause(exc)}; "
                                       "if the file is damaged, copy the bundle again or export it again") from exc
            if slot is not None and self.loaded_from_cache is not None:
                slot.finish(self.loaded_from_cache)  # only once the file is known unchanged through the load
        finally:
            if slot is not None:
                slot.close()
        self._request = self._compiled.create_infer_request()
        self._inputs = tuple(_spec(p) for p in self._compiled.inputs)
        self._outputs = tuple(_spec(p) for p in self._compiled.outputs)
        log.debug("compiled %s for OpenVINO %s (%s; %s)", self.path.name, self.device, config,
                  {None: "no cache", True: "from the cache", False: "not cached before"}[self.loaded_from_cache])
        self.split_batches = False
        self._batching_unchecked = self.batch_check and self._batch_checkable()

    def _cache_slot(self, ov: Any, core: Any, config: dict[str, Any]) -> CacheSlot | None:
        """This load's cache slot, keyed on all that decides the compiled model; None when the cache is off."""
        if not (self.cache and openvino_cache_enabled()):
            return None
        try:
            digest = self.expected_sha256 or sha256_file(self.path)  # the manifest's is verified by the load
        except OSError:
            return None  # the load reports the unreadable file
        try:
            device_name = str(core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001 - a plugin without the property: the device name alone
            device_name = "unknown"
        key = {"model_sha256": digest, "device": self.device, "device_name": device_name,
               "openvino": str(ov.get_version()), "config": {k: str(v) for k, v in sorted(config.items())}}
        try:
            root = openvino_cache_dir()
        except (OSError, RuntimeError, KeyError) as exc:
            # No home folder to put it in (HOME unset and a uid without a passwd entry, as containers run):
            # Path.home() raises RuntimeError. The load must not fail for the cache's sake.
            log.info("OpenVINO compiled-model cache not used: no cache folder (%s); compiling without it (set "
                     "UOPSL_CACHE_DIR to a folder only this user can write)", exc)
            return None
        return CacheSlot.open(root, key)

    def _compile(self, core: Any, model: Any, config: dict[str, Any], slot: CacheSlot | None) -> Any:
        """``model`` compiled, through the cache's private folder when there is one (a failure there is
        retried without the cache); sets :attr:`loaded_from_cache`."""
        if slot is None:
            return core.compile_model(model, self.device, config)
        try:
            compiled = core.compile_model(model, self.device, {**config, "CACHE_DIR": str(slot.private)})
        except Exception as exc:  # noqa: BLE001 - retried without the cache; a second failure is the model's
            log.info("OpenVINO could not compile %s with its cache (%s); compiling without it", self.path.name,
                     openvino_cause(exc))
            compiled = core.compile_model(model, self.device, config)
            if slot.staged:  # the model compiles, so the entry was at fault
                slot.discard("OpenVINO failed on it")
            return compiled
        try:
            self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # noqa: BLE001 - a plugin that does not say: treated as a fresh compile
            self.loaded_from_cache = False
        return compiled

    #: largest disagreement between batched and single-image outputs the self-check accepts
    BATCH_CHECK_ATOL = 1e-3

    def _batch_checkable(self) -> bool:
        """Whether the file takes batches the self-check must compare; a fixed batch above one fails here, at
        load, since no single-image run exists to compare with."""
        spec = self._inputs[0]
        if spec.shape and spec.shape[0] == 1:
            return False  # static batch of one: nothing to check
        if spec.shape and spec.shape[0] is not None:
            # No single-image run to compare with, and the CPU plugin's known batched-head error would go unseen
            # (measured on such a file: probabilities 0.07 off ONNX Runtime's).
            raise BackendError(
                f"{self.path.name} has a fixed batch of {spec.shape[0]}: the OpenVINO backend checks batched against "
                "single-image outputs (its CPU plugin gets some heads wrong for batches > 1) and cannot here. Export "
                "the model with a dynamic batch (uopsl export does), or use --backend ort-cpu")
        return True

    def _check_batching(self) -> None:
        spec = self._inputs[0]
        shape = tuple(2 if i == 0 else (s if s is not None else 64) for i, s in enumerate(spec.shape))
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, shape, dtype=np.uint8) if spec.dtype == np.uint8 else rng.random(shape).astype(spec.dtype)
        batched = self._run(x)
        singles = [self._run(x[i : i + 1]) for i in range(2)]
        worst = 0.0
        for name, value in batched.items():
            ref = np.concatenate([s[name] for s in singles])
            if value.shape == ref.shape and np.issubdtype(value.dtype, np.floating):
                worst = max(worst, float(np.nanmax(np.abs(value.astype(np.float64) - ref))))
        if worst > self.BATCH_CHECK_ATOL:
            self.split_batches = True
            log.warning(
                "OpenVINO computes batched outputs of %s differently from single-image ones (max difference %.3g); "
                "running one image at a time (correct, slower). Known CPU plugin issue with Mul+ReduceSum+Add heads",
                self.path.name, worst,
            )

    def close(self) -> None:
        self._request = None
        self._compiled = None

    def _label(self) -> str:
        return f"openvino-{self.device.lower()}"

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "threads": self.threads, "device": self.device, "hint": self.hint,
                "inference_precision": self.inference_precision}

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._batching_unchecked and batch.shape[0] > 1:
            self._check_batching()  # infer() holds the backend's lock: one check, before any batched result
            self._batching_unchecked = False
        if self.split_batches and batch.shape[0] > 1:
            parts = [self._run(batch[i : i + 1]) for i in range(batch.shape[0])]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            res = self._request.infer({0: batch})
        except Exception as exc:
            raise BackendError(f"openvino: inference failed on a batch of shape {batch.shape}: {exc}") from exc
        # The request reuses its output buffers on the next call: copy out.
        return {spec.name: np.array(res[port]) for spec, port in zip(self._outputs, self._compiled.outputs)}
