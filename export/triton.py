"""Write a Triton Inference Server model repository from a verified uopsl bundle.

Every bundle file Triton can serve becomes one model of the repository::

    REPO/
      uopsl_triton.json           what was written, from which bundle (Triton ignores files here)
      <name>/config.pbtxt         the model configuration (protobuf text format)
      <name>/1/model.onnx         ONNX models: platform "onnxruntime_onnx"
      <name>/1/model.plan         TensorRT engines: platform "tensorrt_plan" (the raw plan)
      <name>/labels.txt           class names, one a line (``label_filename`` of a softmax ``probs``)
      <name>/uopsl_manifest.json  byte copy of the bundle manifest (thresholds, preprocessing...)

Model names: ``model.onnx`` -> ``<base>``, ``model.int8.onnx`` -> ``<base>_int8``,
``model.int8.trt.onnx`` -> ``<base>_int8_trt``, ``model.fp16.engine`` ->
``<base>_fp16_plan``, where ``<base>`` is ``model_name`` or the manifest's.

The configuration follows Triton's ``ModelConfig`` message
(triton-inference-server/common, ``protobuf/model_config.proto``): with
``max_batch_size`` > 0 the batch axis is implied, so ``dims`` list only the
per-sample shape (``image`` [H, W, 3] uint8; ``probs``/``logits`` [K];
``site_maps`` [K, h, w]). The shapes and types are read from the ONNX graph
itself and checked against the manifest, so the configuration cannot promise
what the model does not do. Class names, thresholds, the referral rule and the
preprocessing go into string ``parameters`` (clients read them from the model
configuration endpoint) and into the manifest copy.

TensorRT engines carry a uopsl header before the plan
(:mod:`uopsl.runtime.engine_header`); Triton needs the bare plan, so the header
is stripped here, and its facts (TensorRT version, GPU) become parameters: a
Triton server runs an engine only under the TensorRT version and on the GPU
architecture that built it (a version-compatible engine also under later
versions, once the server runs with ``--backend-config=tensorrt,version-compatible=true``).
The engine's optimisation profile bounds the batch, so its ``max_batch_size`` is
at most the profile's maximum; an engine of one fixed batch N > 1 (DLA) is
served with ``max_batch_size: 0`` and the batch in its dims (clients send
exactly N images), and one whose profile starts above 1 but varies is left out.

Only what the runtime itself would run is served: an engine built from an ONNX
file the bundle no longer holds is left out, and so is a reduced-precision file
(INT8, FP16) without a passing ``uopsl validate`` record on the runtime backend that
stands for how Triton runs it (:func:`_runtime_backends`), unless
``include_unvalidated`` (its ``uopsl_parity`` parameter then says why it is
not validated); a file that failed validation there, or that has no PASS
there and failed on another backend, is never served. The left-out files
and the options are recorded in ``uopsl_triton.json``.

Triton serves the model, not the screening: a client must preprocess the
photograph exactly as the runtime does (RGB, field-of-view crop and mask, never
a plain resize), apply the quality gate, and turn ``probs`` into decisions with
the bundle's thresholds and referral rule (``docs/deployment.md``, "Serving with
Triton", has a client).

The repository is assembled in a temporary sibling folder and renamed into
place, so a crash never leaves a half-written repository that Triton would load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from uopsl.runtime.bundle import MANIFEST, FileEntry, Manifest, content_hash
from uopsl.runtime.engine_header import read_header, read_plan
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.fsio import (
    is_or_holds,
    load_json_strict,
    new_dir_mode,
    replace_folder,
    set_mode,
    sha256_bytes,
    sha256_file,
    write_bytes,
    write_json,
    write_text,
)
from uopsl.runtime.optional import require
from uopsl.runtime.signing import open_trusted

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MANIFEST_COPY = "uopsl_manifest.json"
REPO_MARKER = "uopsl_triton.json"
VERSION = "1"
ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"

OnnxDevice = Literal["auto", "cpu", "gpu"]
_KIND = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}

# onnx.TensorProto element type -> Triton DataType (model_config.proto).
_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it: name, Triton type, per-sample dims (-1: variable)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository, before it is written."""

    name: str
    platform: str
    source: FileEntry
    filename: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    kind: str
    parameters: dict[str, str]
    secondary_dla: int | None = None
    fixed_batch: int | None = None  # an engine of one batch size: max_batch 0, the batch in the dims
    # ONNX Runtime's GPU accelerator: (name, parameters) of onnxruntime_backend's optimization block.
    gpu_accelerator: tuple[str, tuple[tuple[str, str], ...]] | None = None


def write_triton_repository(
    bundle_dir: str | os.PathLike[str],
    repo_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    max_batch: int = 8,
    instance_count: int = 1,
    dynamic_batching: bool = True,
    max_queue_delay_us: int = 0,
    onnx_device: OnnxDevice = "auto",
    overwrite: bool = False,
    include_unvalidated: bool = False,
    gpus: Iterable[int] = (),
) -> Path:
    """Write a Triton model repository at ``repo_dir`` serving every ONNX model and engine of the bundle.

    ``max_batch``: Triton's ``max_batch_size`` (engines: at most their profile's
    maximum). ``instance_count``: model instances per device. ``dynamic_batching``:
    let Triton group concurrent requests (``max_queue_delay_us`` is how long a
    request may wait for others). ``onnx_device``: where ONNX Runtime models run:
    ``auto`` puts the CPU INT8 variant (``int8-qdq-u8``) on the CPU and the
    others on a GPU when the server has one (``KIND_AUTO``); ``cpu``/``gpu``
    force it. TensorRT engines always run on the GPU. ``overwrite`` replaces a
    repository this function wrote before (never another folder).
    ``include_unvalidated``: also serve reduced-precision files without a
    parity record where Triton runs them (stale engines, files that failed
    validation there, and files without a PASS there that failed on another
    backend are never served). ``gpus``: the
    GPU indices that get instances of the models placed on a GPU (``KIND_GPU``:
    engines, ``--onnx-device gpu``); empty means every GPU, Triton's default.
    An engine runs only on the GPU model it was built on, so a server with
    GPUs of several kinds needs the indices of that kind.

    The bundle is verified first (sha256 of every file); a tampered bundle
    raises :class:`BundleError` and nothing is written. Returns ``repo_dir``.
    """
    gpus = tuple(gpus)  # once: a generator would be used up by the check
    _check_args(max_batch, instance_count, max_queue_delay_us, onnx_device, gpus)
    if max_queue_delay_us and not dynamic_batching:
        raise ConfigError(f"max_queue_delay_us ({max_queue_delay_us}) is how long dynamic batching holds a request; "
                          "without dynamic batching it means nothing: drop one of the two")
    bundle = Path(bundle_dir)
    manifest, _ = open_trusted(bundle)  # where this machine trusts signing keys, signed bundles only
    base = model_name if model_name is not None else manifest.model_name
    if not _NAME_RE.fullmatch(base):
        raise ConfigError(
            f"Triton model name {base!r} is not usable as a model folder and URL name; "
            "use letters, digits, '_', '-' and '.', starting with a letter or digit (--model-name)"
        )
    bad = [n for n in manifest.class_names if "\n" in n or "\r" in n]
    if bad:
        raise BundleError(f"{bundle}: class names {bad} contain line breaks, which {LABELS_FILE} (one name a line) "
                          "cannot hold; re-export the bundle with single-line class names")
    target = Path(os.path.abspath(repo_dir))  # "." has no name to swap under; the folder above holds it
    check_repository_target(target, overwrite, keep=(("the bundle", bundle),))
    entries = [f for f in manifest.files if f.kind in ("onnx", "engine")]
    if not entries:
        raise BundleError(
            f"{bundle}: the manifest lists no ONNX model or TensorRT engine (files: "
            f"{[f.path for f in manifest.files]}); re-export the bundle with 'uopsl export'"
        )
    skipped = [f.path for f in manifest.files if f.kind not in ("onnx", "engine")]
    if skipped:
        log.debug("not served by Triton (no model): %s", ", ".join(skipped))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        models, left_out = _plan_models(bundle, manifest, entries, base, max_batch, onnx_device, include_unvalidated)
        if gpus and not any(m.kind == "KIND_GPU" for m in models):
            raise ConfigError(
                f"gpus {list(gpus)} place the models Triton runs on a GPU (engines, ONNX files with onnx_device "
                f"'gpu'), and this repository has none ({', '.join(f'{m.name}: {m.kind}' for m in models)}; "
                "KIND_AUTO lets Triton choose the devices): pass --onnx-device gpu, or drop --gpus")
        manifest_bytes = (bundle / MANIFEST).read_bytes()
        # The copy every model carries must be the manifest just verified (its content hash covers every field).
        copied = load_json_strict(manifest_bytes.decode("utf-8"))
        if not isinstance(copied, dict) or copied.get("content_sha256") != manifest.content_sha256 \
                or content_hash(copied) != manifest.content_sha256:
            raise BundleError(f"{bundle / MANIFEST} changed while the repository was written; try again")
        labels = "".join(f"{n}\n" for n in manifest.class_names)
        for m in models:
            _write_model(tmp, bundle, m, manifest_bytes, labels, instance_count, dynamic_batching,
                         max_queue_delay_us, gpus)
        write_json(tmp / REPO_MARKER, {
            "bundle": str(bundle.resolve()), "manifest_sha256": sha256_bytes(manifest_bytes),
            "models": {m.name: {"platform": m.platform, "source": m.source.path, "precision": m.source.precision,
                                "parity": m.parameters.get("uopsl_parity", "")} for m in models},
            "left_out": left_out,
            "options": {"model_name": base, "max_batch": max_batch, "instance_count": instance_count,
                        "dynamic_batching": dynamic_batching, "max_queue_delay_us": max_queue_delay_us,
                        "onnx_device": onnx_device, "include_unvalidated": include_unvalidated,
                        "gpus": list(gpus)},
        })
        set_mode(tmp, new_dir_mode())  # once filled: mkdtemp's 0700 would hide the repository from Triton's account
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote Triton model repository %s: %s", target, ", ".join(f"{m.name} ({m.platform})" for m in models))
    return target


# -- checks -------------------------------------------------------------------------------
def _check_args(max_batch: int, instance_count: int, max_queue_delay_us: int, onnx_device: str,
                gpus: Sequence[int] = ()) -> None:
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch must be an integer >= 1 (Triton's max_batch_size), got {max_batch!r}")
    if not isinstance(instance_count, int) or instance_count < 1:
        raise ConfigError(f"instance_count must be an integer >= 1, got {instance_count!r}")
    if not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ConfigError(f"max_queue_delay_us must be an integer >= 0, got {max_queue_delay_us!r}")
    if onnx_device not in _KIND:
        raise ConfigError(f"onnx_device must be one of {sorted(_KIND)}, got {onnx_device!r}")
    listed = list(gpus)
    if any(not isinstance(g, int) or isinstance(g, bool) or g < 0 for g in listed) or len(set(listed)) != len(listed):
        raise ConfigError(f"gpus must be distinct GPU indices (integers >= 0), got {listed!r}")


def check_repository_target(target: Path, overwrite: bool,
                            keep: Sequence[tuple[str, str | os.PathLike[str]]] = ()) -> None:
    """Refuse (ConfigError) a repository path that is a file, or a non-empty folder without ``overwrite``
    or not written by uopsl, or that is or holds the folder you are in or one of ``keep`` ((what it is,
    path) pairs: the bundle it is written from, the checkpoint; replacing the repository deletes what it
    holds)."""
    for what, other in (("the folder you are in", Path.cwd()), *((f"{w} {p}", Path(p)) for w, p in keep)):
        if is_or_holds(target, other):
            raise ConfigError(f"Triton repository {target} is or holds {what}, which writing the repository "
                              "there would replace: choose another repository folder")
    for what, kept in keep:
        if what == "the bundle" and is_or_holds(kept, target):
            # A device copies the bundle folder whole: a repository inside it would ship unlisted, unverified
            # copies of the model files beside the verified ones (verify names them as not in the manifest).
            raise ConfigError(f"Triton repository {target} is inside the bundle {kept}, which devices copy and "
                              "verify as a whole: choose a folder outside the bundle")
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder; choose another Triton repository path")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{target} already exists and is not empty; pass --force (overwrite=True) to replace it")
    if not (target / REPO_MARKER).is_file():
        raise ConfigError(
            f"{target} was not written by uopsl (no {REPO_MARKER}); it may hold other Triton models, so it is "
            "not replaced: choose an empty or new folder"
        )


# -- what each model looks like -------------------------------------------------------------
def _failed_on(entry: FileEntry, backends: Sequence[str]) -> list[str]:
    """The ``backends`` on which ``uopsl validate`` recorded a FAIL for this very file content.

    An INT8 file's FAIL on a CPU backend recorded on the other kind of CPU does not count (CPUs with and
    without VNNI round 8-bit sums differently, so that verdict says nothing here, and the file is merely not
    validated); one whose record does not say which kind of CPU it came from still counts (the safe side).
    """
    from uopsl.runtime.bundle import PARITY_KEY, judged_on_other_cpu
    from uopsl.runtime.cpuinfo import CPU_BACKENDS

    rec = entry.info.get(PARITY_KEY)
    if not isinstance(rec, dict) or rec.get("sha256") != entry.sha256 or not isinstance(rec.get("backends"), dict):
        return []
    failed = []
    for b in backends:
        r = rec["backends"].get(b)
        if not isinstance(r, dict) or r.get("verdict") != "FAIL":
            continue
        if entry.precision.startswith("int8") and b in CPU_BACKENDS and judged_on_other_cpu(r):
            continue  # judged on the other kind of CPU; a FAIL from an unrecorded kind still counts
        failed.append(b)
    return failed


def _plan_models(bundle: Path, manifest: Manifest, entries: Sequence[FileEntry], base: str, max_batch: int,
                 onnx_device: str, include_unvalidated: bool) -> tuple[list[TritonModel], dict[str, str]]:
    """The models to write, and the bundle files left out with the reason for each."""
    from uopsl.runtime.backends import BACKEND_NAMES, engine_stale
    from uopsl.runtime.bundle import parity_status

    models: list[TritonModel] = []
    left_out: dict[str, str] = {}
    names: dict[str, str] = {}
    onnx_specs: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {}
    for f in manifest.files_of("onnx"):
        onnx_specs[f.path] = _onnx_io(bundle / f.path, manifest)
    for f in entries:
        name = _model_name(base, f)
        if name in names:
            raise BundleError(
                f"bundle files {names[name]!r} and {f.path!r} both map to the Triton model name {name!r}; "
                "rename one of them in the bundle"
            )
        names[name] = f.path
        params = _common_parameters(manifest, f)
        kind = "KIND_GPU"
        if f.kind == "onnx":
            kind = _KIND[onnx_device] if onnx_device != "auto" else (
                "KIND_CPU" if f.precision == "int8-qdq-u8" else "KIND_AUTO")
        if f.precision != "fp32":  # the runtime runs a reduced-precision file only after a parity PASS there
            runs_on = _runtime_backends(f, kind)
            verdicts = [(b, *parity_status(f, b, manifest=manifest)) for b in runs_on]
            missing = [f"{b}: {why}" for b, ok, why in verdicts if not ok]
            failed = _failed_on(f, runs_on)
            # A FAIL recorded on another backend counts too (a review: one that failed on ort-cpu was served on
            # the GPU under --include-unvalidated, its parameter reading "validated on ort-cpu"): the help promises
            # that a file that failed is never served, and much of an INT8 file's error is its own arithmetic.
            # (A PASS where Triton runs it stands on its own: another runtime's kernels round differently.)
            elsewhere = (_failed_on(f, [b for b in BACKEND_NAMES if b not in runs_on])
                         if missing and include_unvalidated else [])
            if failed or elsewhere:  # --include-unvalidated serves files nobody checked, never one that failed
                unproven = [b for b, ok, _ in verdicts if not ok]
                where = (f"where Triton runs it ({', '.join(failed)})" if failed else
                         f"on {', '.join(elsewhere)} (Triton would run it on {', '.join(runs_on)}; no PASS on "
                         f"{', '.join(unproven)})")
                left_out[f.path] = (f"failed parity validation {where}; --include-unvalidated does not serve a "
                                    "file that failed")
                log.warning("Triton: %s left out (%s)", f.path, left_out[f.path])
                continue
            if missing and not include_unvalidated:
                left_out[f.path] = f"not validated where Triton runs it ({', '.join(runs_on)}): {'; '.join(missing)}"
                log.warning("Triton: %s left out (%s); validate it there with `uopsl validate`, or pass "
                            "--include-unvalidated", f.path, left_out[f.path])
                continue
            params["uopsl_parity"] = (f"PASS on {', '.join(runs_on)}" if not missing
                                      else f"not validated: {'; '.join(missing)}")
        if f.kind == "onnx":
            inputs, outputs = onnx_specs[f.path]
            # The TensorRT-targeted INT8 file (s8 Q/DQ) only runs as INT8 through the TensorRT execution provider;
            # on the CUDA provider its Q/DQ pairs are emulated in float (the same numbers, no INT8 speed).
            accel = (("tensorrt", (("precision_mode", "INT8"), ("trt_engine_cache_enable", "1")))
                     if f.precision == "int8-qdq-s8" else None)
            models.append(TritonModel(name, ONNX_PLATFORM, f, "model.onnx", inputs, outputs, max_batch, kind, params,
                                      gpu_accelerator=accel))
            continue
        stale = engine_stale(bundle, manifest, f)
        if stale is not None:
            left_out[f.path] = stale
            log.warning("Triton: %s left out (%s)", f.path, stale)
            continue
        header = read_header(bundle / f.path)
        inputs, outputs = onnx_specs.get(header.source_onnx) or _contract_io(manifest)
        if header.input_shape and tuple(header.input_shape) != inputs[0].dims:
            raise BundleError(
                f"{f.path}: the engine was built for input shape {list(header.input_shape)} but the model takes "
                f"{list(inputs[0].dims)}; rebuild the engine from this bundle with 'uopsl build-engine'"
            )
        fixed: int | None = None
        if header.min_batch > 1 and header.min_batch == header.max_batch:
            # One fixed batch (a DLA engine): Triton's batcher would send 1..N images, outside the profile.
            # Without Triton batching the batch is part of the dims and clients send exactly N.
            fixed, batch = header.min_batch, 0
            log.warning("%s: the engine runs batches of exactly %d images; its Triton model has "
                        "max_batch_size 0 and dims [%d, ...]: each request must hold %d images",
                        f.path, fixed, fixed, fixed)
        elif header.min_batch > 1:
            left_out[f.path] = (f"its optimisation profile starts at batch {header.min_batch}, and Triton sends "
                                "batches from 1: rebuild it with --min-batch 1")
            log.warning("Triton: %s left out (%s)", f.path, left_out[f.path])
            continue
        else:
            batch = min(max_batch, header.max_batch)
            if batch < max_batch:
                log.warning("%s: its optimisation profile allows batches up to %d, so Triton's max_batch_size is "
                            "%d (not %d); rebuild it with --max-batch %d for larger batches",
                            f.path, header.max_batch, batch, max_batch, max_batch)
        params.update({
            "uopsl_tensorrt_version": header.tensorrt_version,
            "uopsl_gpu_name": header.gpu_name,
            "uopsl_compute_capability": header.compute_capability,
            "uopsl_engine_precision": header.precision,
            "uopsl_version_compatible": "true" if header.version_compatible else "false",
        })
        models.append(TritonModel(name, PLAN_PLATFORM, f, "model.plan", inputs, outputs, batch, "KIND_GPU",
                                  params, header.dla_core, fixed))
        if header.version_compatible:
            log.info("%s: a version-compatible engine (TensorRT %s or a later supported version); Triton loads it "
                     "only when started with --backend-config=tensorrt,version-compatible=true (it then runs "
                     "code from the engine file: serve engines you built)", name, header.tensorrt_version)
        else:
            log.info("%s: Triton must run TensorRT %s on a GPU of compute capability %s (built on %s)",
                     name, header.tensorrt_version, header.compute_capability, header.gpu_name)
    if not models:
        raise BundleError(f"{bundle}: no file of the bundle can be served: "
                          + "; ".join(f"{p}: {why}" for p, why in left_out.items()))
    return models, left_out


def _runtime_backends(entry: FileEntry, kind: str) -> tuple[str, ...]:
    """The uopsl runtime backends whose parity verdicts stand for how Triton runs ``entry`` on ``kind``.

    A TensorRT plan: ``tensorrt``. An ONNX file on the CPU: ``ort-cpu``; on a GPU: ``ort-cuda``, or
    ``ort-trt`` for the TensorRT-targeted INT8 file (its TensorRT accelerator); ``KIND_AUTO`` may be either.
    """
    if entry.kind == "engine":
        return ("tensorrt",)
    gpu = "ort-trt" if entry.precision == "int8-qdq-s8" else "ort-cuda"
    return {"KIND_CPU": ("ort-cpu",), "KIND_GPU": (gpu,)}.get(kind, ("ort-cpu", gpu))


def _model_name(base: str, entry: FileEntry) -> str:
    stem = Path(entry.path).name
    for ext in (".onnx", ".engine", ".plan"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    if stem == "model":
        stem = ""
    elif stem.startswith("model."):
        stem = stem[len("model."):]
    parts = [base] + ([re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")] if stem else [])
    if entry.kind == "engine":
        parts.append("plan")
    return "_".join(p for p in parts if p)


def _onnx_io(path: Path, manifest: Manifest) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Per-sample I/O specs from the ONNX graph, checked against the manifest's contract."""
    onnx = require("onnx", "writing a Triton model configuration")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ValueError...
        raise BundleError(f"{path}: not a readable ONNX model ({exc}); re-export the bundle") from exc
    try:
        # The exporter may declare non-batch output dims symbolically; inference makes them the static
        # sizes the graph computes, which is what the configuration must promise.
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - InferenceError and protobuf errors
        raise BundleError(f"{path}: ONNX shape inference failed ({exc}); re-export the bundle") from exc
    init = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init]
    inputs = tuple(_spec(v, path) for v in graph_inputs)
    outputs = tuple(_spec(v, path) for v in model.graph.output)
    _check_contract(path.name, inputs, outputs, manifest)
    return inputs, outputs


def _spec(value_info: Any, path: Path) -> TensorSpec:
    t = value_info.type.tensor_type
    if t.elem_type not in _ONNX_TO_TRITON:
        raise BundleError(f"{path}: tensor {value_info.name!r} has ONNX element type {t.elem_type}, "
                          "which Triton cannot serve")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if not dims or dims[0] > 0:
        raise BundleError(
            f"{path}: tensor {value_info.name!r} has shape {dims}; a batching Triton model needs a dynamic "
            "batch axis first. Re-export the bundle with 'uopsl export' (it writes a dynamic batch)"
        )
    return TensorSpec(value_info.name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:]))


def _contract_io(manifest: Manifest) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The deployed-model contract from the manifest alone (engines whose ONNX is not in the bundle)."""
    k, (h, w), size = len(manifest.classes), manifest.site_map_size, manifest.preprocess.size
    shapes = {"probs": (k,), "logits": (k,), "site_maps": (k, h, w)}
    outputs = tuple(TensorSpec(n, "TYPE_FP32", shapes[n]) for n in manifest.output_names if n in shapes)
    return (TensorSpec(manifest.input_name, "TYPE_UINT8", (size, size, 3)),), outputs


def _check_contract(source: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                    manifest: Manifest) -> None:
    """The graph must take and give what the manifest says (names, sizes, class count)."""
    expected_in, expected_out = _contract_io(manifest)
    got = {s.name: s for s in inputs + outputs}
    problems = []
    if [s.name for s in inputs] != [manifest.input_name]:
        problems.append(f"inputs {[s.name for s in inputs]}, manifest says [{manifest.input_name!r}]")
    for spec in expected_in + expected_out:
        have = got.get(spec.name)
        if have is None:
            problems.append(f"no tensor {spec.name!r}")
        elif have.dims != spec.dims:
            problems.append(f"{spec.name!r} has per-sample shape {list(have.dims)}, manifest implies {list(spec.dims)}")
    if problems:
        raise BundleError(f"{source} does not match its manifest: {'; '.join(problems)}; re-export the bundle")


def _common_parameters(manifest: Manifest, entry: FileEntry) -> dict[str, str]:
    return {
        "uopsl_classes": json.dumps(list(manifest.class_names)),
        "uopsl_thresholds": json.dumps([c.threshold for c in manifest.classes]),
        "uopsl_referable": json.dumps([c.referable for c in manifest.classes]),
        "uopsl_seen_in_training": json.dumps([c.seen_in_training for c in manifest.classes]),
        "uopsl_head": manifest.head,
        "uopsl_referral_rule": manifest.referral_rule,
        "uopsl_referral_threshold": repr(float(manifest.referral_threshold)),
        "uopsl_preprocess": json.dumps(manifest.preprocess.to_dict(), sort_keys=True),
        "uopsl_precision": entry.precision,
        "uopsl_source_file": entry.path,
        "uopsl_source_sha256": entry.sha256,
        "uopsl_toolkit_version": manifest.toolkit_version,
        # What the model may be used for: a client must show the caution with results unless it is clinical.
        "uopsl_intended_use": json.dumps({**manifest.intended_use.to_dict(),
                                          "warning": manifest.intended_use.warning()}, sort_keys=True),
        "uopsl_manifest": MANIFEST_COPY,
    }


# -- writing ---------------------------------------------------------------------------------
def _write_model(root: Path, bundle: Path, m: TritonModel, manifest_bytes: bytes, labels: str, instance_count: int,
                 dynamic_batching: bool, max_queue_delay_us: int, gpus: tuple[int, ...] = ()) -> None:
    folder = root / m.name
    (folder / VERSION).mkdir(parents=True)
    dest = folder / VERSION / m.filename
    src = bundle / m.source.path
    if m.platform == PLAN_PLATFORM:
        _, plan = read_plan(src, expected_sha256=m.source.sha256)  # the bytes the bundle was verified with
        write_bytes(dest, plan)
    else:
        shutil.copyfile(src, dest)
        # The bundle was verified before; this catches a file changed while we copied it.
        if sha256_file(dest) != m.source.sha256:
            raise BundleError(f"{src} changed while it was copied into the Triton repository; try again")
    write_bytes(folder / MANIFEST_COPY, manifest_bytes)
    write_text(folder / LABELS_FILE, labels)
    write_text(folder / CONFIG_FILE, render_config(m, instance_count, dynamic_batching, max_queue_delay_us, gpus))


def render_config(m: TritonModel, instance_count: int = 1, dynamic_batching: bool = True,
                  max_queue_delay_us: int = 0, gpus: tuple[int, ...] = ()) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``) for ``m``.

    ``gpus`` lists the GPUs of a ``KIND_GPU`` instance group (not of ``KIND_CPU`` ones, which Triton
    refuses with a list, nor of ``KIND_AUTO`` ones, which may land on the CPU).
    """
    lead = () if m.fixed_batch is None else (m.fixed_batch,)
    label = m.parameters.get("uopsl_head") == "softmax"  # top-n of sigmoid scores are rankings, not calls
    lines = [
        f"name: {_q(m.name)}",
        f"platform: {_q(m.platform)}",
        f"max_batch_size: {m.max_batch}",
        "input [",
        ",\n".join(_tensor(s, lead=lead) for s in m.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(s, label=label and s.name == "probs", lead=lead) for s in m.outputs),
        "]",
    ]
    if dynamic_batching and m.fixed_batch is None:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}"
                     if max_queue_delay_us else "dynamic_batching { }")
    if m.gpu_accelerator is not None:
        accel_name, accel_params = m.gpu_accelerator
        lines += ["optimization { execution_accelerators {", "  gpu_execution_accelerator : [ {",
                  f"    name : {_q(accel_name)}",
                  *(f"    parameters {{ key: {_q(k)} value: {_q(v)} }}" for k, v in accel_params),
                  "  } ]", "} }"]
    group = [f"    count: {instance_count}", f"    kind: {m.kind}"]
    if gpus and m.kind == "KIND_GPU":
        group.append(f"    gpus: [ {', '.join(str(g) for g in gpus)} ]")
    if m.secondary_dla is not None:
        group.append(f"    secondary_devices [ {{ kind: KIND_NVDLA device_id: {m.secondary_dla} }} ]")
    lines += ["instance_group [", "  {", *group, "  }", "]"]
    for key, value in m.parameters.items():
        lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    return "\n".join(lines) + "\n"


def _tensor(s: TensorSpec, label: bool = False, lead: tuple[int, ...] = ()) -> str:
    body = [f"    name: {_q(s.name)}", f"    data_type: {s.data_type}",
            f"    dims: [ {', '.join(str(d) for d in lead + s.dims)} ]"]
    if label:
        body.append(f"    label_filename: {_q(LABELS_FILE)}")
    return "  {\n" + "\n".join(body) + "\n  }"


def _q(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept; quotes, backslashes and controls escaped)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


__all__ = ["TensorSpec", "TritonModel", "render_config", "write_triton_repository"]
