"""Backend registry and ``auto`` selection.

``open_backend(bundle, name, precision, threads)`` turns a bundle folder into a
ready-to-enter :class:`Backend` for one of the registry names

=============  ====================================================  =====================
name           what                                                  files it runs
=============  ====================================================  =====================
ort-cpu        ONNX Runtime, CPU execution provider                  model.onnx / INT8 QDQ
ort-cuda       ONNX Runtime, CUDA execution provider                 model.onnx (/ fp16)
ort-trt        ONNX Runtime, TensorRT execution provider             model.onnx / INT8 QDQ
openvino       OpenVINO on the CPU (optional extra)                  model.onnx / INT8 QDQ
tensorrt       native TensorRT (engine built for this GPU)           *.engine
=============  ====================================================  =====================

``auto`` picks, in this order: a TensorRT engine whose header matches this GPU
and TensorRT version; else ONNX Runtime CUDA; else OpenVINO INT8, then ONNX
Runtime INT8, each *when that runtime's validation passed the file and INT8 is
faster than FP32 on this CPU*; else ONNX Runtime CPU FP32. Whether INT8 pays
off depends on the CPU (VNNI) and the model (depthwise convolutions gain little),
so it is measured once on this machine (a few batch-1 runs of each) and the
answer cached per model file, CPU and library version (see
:func:`cpu_int8_speedup`). The choice and the reason are logged and returned
(``backend.selection``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from uopsl.runtime.backends.base import (GPU_BACKENDS, Backend, ModelFileBackend, TensorSpec, cache_dir, check_gpu_index,
                                         installed_tensorrt)
from uopsl.runtime.bundle import FileEntry, Manifest, parity_status, read_manifest
from uopsl.runtime.errors import (BackendError, BundleError, ConfigError, EngineMismatchError, MissingDependencyError,
                                  UopslError)
from uopsl.runtime.fsio import sha256_file, write_json
from uopsl.runtime.optional import CUDA_MODULES, available, extra_hint, import_optional, install_hint, installed

log = logging.getLogger(__name__)

BACKEND_NAMES = ("ort-cpu", "ort-cuda", "ort-trt", "openvino", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
#: INT8 is chosen on a CPU only when it is at least this much faster than FP32
#: (INT8 costs a little accuracy; a few percent of speed is not worth it).
INT8_MIN_SPEEDUP = 1.15

_INT8_CPU_ORDER = ("int8-qdq-u8", "int8-qdq-s8")  # CPU kernels want u8 activations
_INT8_GPU_ORDER = ("int8-qdq-s8", "int8-qdq-u8")  # TensorRT wants symmetric s8


@dataclass(frozen=True)
class Availability:
    """What this machine offers; injected in tests to exercise ``auto``."""

    ort_providers: tuple[str, ...] = ()
    openvino: bool = False
    tensorrt: bool = False
    #: TensorRT's library (libnvinfer) can be found. ONNX Runtime's GPU wheel lists its TensorRT provider
    #: whether or not TensorRT is installed (seen on the session-23 GPU machine), and the provider fails
    #: only when a session starts; True where not probed (tests that inject providers).
    nvinfer: bool = True

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers

    @property
    def ort_trt_listed(self) -> bool:
        return "TensorrtExecutionProvider" in self.ort_providers

    @property
    def ort_trt(self) -> bool:
        return self.ort_trt_listed and self.nvinfer


@dataclass(frozen=True)
class Selection:
    """The backend ``open_backend`` chose: registry name, precision, bundle file and why.

    ``validated``: for a reduced-precision file (INT8, FP16), whether ``uopsl validate`` passed it on this
    backend. ``auto`` takes no INT8 or FP16 file or engine that did not; an explicit ``precision=`` runs an
    unvalidated file with a warning. None for an FP32 file, the reference precision.
    ``not_validated_because``: when ``validated`` is False, why (no parity record here, a FAIL, a changed file).
    """

    backend: str
    precision: str
    file: str
    reason: str
    validated: bool | None = None
    not_validated_because: str = ""


def detect_availability(*, imports: bool = True) -> Availability:
    """Probe the installed runtimes (never raises; nothing is loaded onto a GPU).

    ``imports=False``: OpenVINO, TensorRT and the CUDA bindings count as available when they can be found, without
    importing them (importing OpenVINO alone cost ~0.1 s of every one-photograph ``run``, a review, session 53);
    a broken install then shows when the backend loads, and :func:`open_and_enter` chooses again without it.
    ONNX Runtime is always imported: its providers are known only then, and most runs use it. ``info`` and
    ``validate`` import everything, so their tables show a broken install as absent.
    """
    from uopsl.runtime.backends.onnxruntime import available_providers

    found = available if imports else installed
    providers = available_providers()
    return Availability(
        ort_providers=providers,
        openvino=found("openvino"),
        # The modules load_cuda imports: a bare `cuda` namespace (cuda-pathfinder, cuda-core) is no binding, and
        # cuda-python 13 has no cuda.cudart.
        tensorrt=found("tensorrt") and any(found(m) for m in CUDA_MODULES),
        nvinfer=nvinfer_found(imports=imports) if "TensorrtExecutionProvider" in providers else False,
    )


_NVINFER_NAMES = ("nvinfer", "nvinfer_11", "nvinfer_10", "nvinfer_8")  # Linux, then Windows DLL names


def nvinfer_found(*, imports: bool = True) -> bool:
    """Whether TensorRT's runtime library can be found: the ``tensorrt`` Python package (it loads its own
    libraries; imported, or only found with ``imports=False``), the loader's cache and standard folders
    (``ctypes.util.find_library``: JetPack, apt), or a folder of ``LD_LIBRARY_PATH``. Never raises."""
    import ctypes.util
    import glob

    if (available if imports else installed)("tensorrt"):
        return True
    try:
        if any(ctypes.util.find_library(n) for n in _NVINFER_NAMES):
            return True
    except Exception:  # noqa: BLE001 - find_library runs ldconfig/gcc; a broken one means "not found"
        pass
    return any(glob.glob(os.path.join(d, "libnvinfer.so*"))
               for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d)


# -- engine compatibility ------------------------------------------------------
EngineCheck = Callable[[Path], "str | None"]


class RefusedHere(str):
    """A reason an engine cannot run that rebuilding it on this device removes: built by another TensorRT, for
    another GPU or platform (:class:`EngineMismatchError`), or from a model file the bundle no longer holds.
    Other reasons (an unreadable file, a CUDA binding that fails) are plain ``str``: rebuilding would not help,
    so they must not be reported as :class:`EngineMismatchError`."""


def engine_mismatch(path: Path, device: int = 0) -> str | None:
    """Why the TensorRT engine at ``path`` cannot run on GPU ``device`` here, or None when it matches; a
    :class:`RefusedHere` when the engine was built for another TensorRT, GPU or platform."""
    try:
        from uopsl.runtime import engine_header  # owned by the TensorRT layer; may be absent
    except ImportError:
        return "uopsl.runtime.engine_header is not available in this build"
    try:
        engine_header.check_compatible(engine_header.read_header(path), engine_path=path, device=device)
    except EngineMismatchError as exc:
        return RefusedHere(exc)
    except UopslError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure to inspect means 'do not pick it'
        return f"{type(exc).__name__}: {exc}"
    return None


def engine_stale(root: Path, manifest: Manifest, entry: FileEntry, device: int = 0) -> str | None:
    """Why the engine ``entry`` was built from a model the bundle no longer holds, or None.

    The engine header records the ONNX file and its sha256 at build time. Re-running
    ``uopsl quantize`` or ``uopsl export`` replaces that file but leaves the engine
    (and its own checksum and parity record) in the manifest, so ``verify`` and the
    parity check alone would still trust an engine of the old model.
    """
    try:
        from uopsl.runtime import engine_header

        header = engine_header.read_header(root / entry.path)
    except Exception:  # noqa: BLE001 - an unreadable header is engine_check's to report
        return None
    if not header.source_onnx:
        return None
    rebuild = engine_header.rebuild_command(header, root / entry.path, installed_tensorrt(), device)
    source = next((f for f in manifest.files if f.path == header.source_onnx), None)
    if source is None:
        return RefusedHere(f"stale: built from {header.source_onnx}, which the bundle no longer lists; "
                           f"rebuild it on this device: {rebuild}")
    if header.source_onnx_sha256 and source.sha256 and source.sha256 != header.source_onnx_sha256:
        return RefusedHere(f"stale: built from {header.source_onnx} with sha256 {header.source_onnx_sha256[:12]}"
                           f"..., but the bundle's {header.source_onnx} is now {source.sha256[:12]}... (re-exported "
                           f"or re-quantized since); rebuild it on this device: {rebuild}")
    return None


# -- CPU INT8 decision -------------------------------------------------------------
def cpu_name() -> str:
    """The CPU model string (used to key cached measurements)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _lib_versions() -> str:
    out = []
    for mod in ("onnxruntime", "openvino"):
        try:
            out.append(f"{mod}={import_optional(mod).__version__}")
        except Exception:  # noqa: BLE001
            out.append(f"{mod}=absent")
    return ",".join(out)


def _measure_speedup(fp32: Path, int8: Path, fp32_precision: str, int8_precision: str,
                     threads: int | None, iters: int = 8, runtime: str = "openvino") -> float:
    """ORT CPU FP32 batch-1 median latency divided by the INT8 file's on ``runtime`` (on a blank image)."""
    import numpy as np

    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.runtime.backends.openvino import OpenVinoBackend

    def median_ms(backend: Backend) -> float:
        with backend:
            spec = backend.inputs[0]
            shape = tuple(1 if s is None else s for s in spec.shape)
            x = np.full(shape, 64, spec.dtype)
            for _ in range(2):
                backend.infer(x)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                backend.infer(x)
                times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    # Without spin-waiting, as the Screener runs ONNX Runtime (spinning moves batch-1 latency by up to ~1 ms).
    ort_ms = median_ms(OrtBackend(fp32, "cpu", threads, precision=fp32_precision, spin=False))
    int8_backend: Backend = (OpenVinoBackend(int8, "CPU", threads, precision=int8_precision) if runtime == "openvino"
                             else OrtBackend(int8, "cpu", threads, precision=int8_precision, spin=False))
    int8_ms = median_ms(int8_backend)
    log.info("measured batch-1 latency: ORT CPU FP32 %.1f ms, %s INT8 %.1f ms", ort_ms, _RUNTIME_LABEL[runtime],
             int8_ms)
    return ort_ms / int8_ms


_RUNTIME_LABEL = {"openvino": "OpenVINO", "ort-cpu": "ONNX Runtime"}


def cpu_int8_speedup(
    root: Path, fp32: FileEntry, int8: FileEntry, threads: int | None = None, *, measure: bool = True,
    runtime: str = "openvino",
) -> tuple[float | None, str]:
    """How much faster the INT8 file on ``runtime`` (OpenVINO or ONNX Runtime) is than ONNX Runtime FP32 here.

    Returns the speed-up and where the figure came from.

    Order: this machine's cache; else a measurement now (``measure=True``),
    cached under the two files' checksums, the CPU model and library versions;
    else a figure the bundle recorded (``info["cpu_int8_speedup"]`` of the INT8
    file, measured by export on ``info["cpu_int8_speedup_cpu"]``). Returns
    ``(None, why)`` when nothing is known.
    """
    key = "|".join([fp32.sha256 or fp32.path, int8.sha256 or int8.path, cpu_name(), _lib_versions(), str(threads)]
                   + ([] if runtime == "openvino" else [runtime])  # the runtime names only the ORT INT8 case
                   + ["no-spin"])  # figures measured with spin-waiting (before session 14) are measured again
    cache = cache_dir() / "cpu_int8_speedup.json"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return float(known[key]), f"measured earlier on this machine (cache {cache})"
    recorded = int8.info.get("cpu_int8_speedup") if runtime == "openvino" else None  # export records OpenVINO's
    recorded_cpu = int8.info.get("cpu_int8_speedup_cpu", "")
    if recorded is not None and recorded_cpu == cpu_name():
        return float(recorded), "recorded in the bundle for this CPU model"
    if measure:
        try:
            speedup = _measure_speedup(root / fp32.path, root / int8.path, fp32.precision, int8.precision, threads,
                                       runtime=runtime)
        except UopslError as exc:
            return None, f"could not measure ({exc})"
        known[key] = round(speedup, 3)
        try:
            write_json(cache, known)
        except OSError as exc:
            log.warning("cannot cache the INT8 measurement in %s: %s", cache, exc)
        return speedup, "measured now on this machine"
    if recorded is not None:
        return float(recorded), f"recorded in the bundle for another CPU ({recorded_cpu or 'unknown'})"
    return None, "never measured on this machine (measurement disabled)"


# -- file choice ------------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed once per file version (one selection asks for OpenVINO, then ONNX Runtime)."""
    st = os.stat(path)
    return _sha256_of_version(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def validated_file(root: Path, entry: FileEntry, runtime: str, manifest: Manifest) -> tuple[bool, str]:
    """:func:`parity_status`, and, when it passes, the file's bytes still have the sha256 it was validated with.

    Why hash here: ``parity_status`` compares the record with the manifest's
    sha256, and with verification off (``--no-verify``, ``Screener(verify=False)``)
    nothing else compares the manifest with the file, so a file changed after
    its PASS would inherit it. One file is hashed, only when a PASS is about
    to be trusted (tens of milliseconds for an INT8 file).
    """
    ok, why = parity_status(entry, runtime, manifest=manifest)
    if not ok:
        return ok, why
    try:
        actual = _file_sha256(root / entry.path)
    except OSError as exc:
        return False, f"{entry.path} cannot be read ({exc.strerror or exc})"
    if actual != entry.sha256:
        return False, (f"{entry.path} is not the file that passed validation (its sha256 differs from the "
                       "manifest's: changed after export); run `uopsl-screen verify`")
    return True, why


def _validated_cpu_int8(root: Path, manifest: Manifest, runtime: str) -> tuple[FileEntry | None, str]:
    """The first CPU INT8 ONNX file validated on ``runtime`` (a bundle may hold several, one per calibration).

    Returns (file, "") or, when none passed, (None, why the first one did not), or (None, "") without any.
    """
    first_why = ""
    for p in _INT8_CPU_ORDER:
        for f in manifest.files_of("onnx"):
            if f.precision != p:
                continue
            ok, why = validated_file(root, f, runtime, manifest)
            if ok:
                return f, ""
            first_why = first_why or why
    return None, first_why


def _onnx_file(manifest: Manifest, precision: str, gpu: bool, tensorrt: bool = False) -> FileEntry | None:
    """The bundle's ONNX file for ``precision``; INT8 in the order the runtime prefers.

    ``tensorrt``: for ONNX Runtime's TensorRT provider, which takes symmetric s8 Q/DQ only (TensorRT's explicit
    quantization has zero point 0): the CPU variant's u8 activations are not offered to it.
    """
    onnx = manifest.files_of("onnx")
    if precision == "int8":
        for p in ("int8-qdq-s8",) if tensorrt else _INT8_GPU_ORDER if gpu else _INT8_CPU_ORDER:
            for f in onnx:
                if f.precision == p:
                    return f
        return None
    for f in onnx:
        if f.precision == precision:
            return f
    return None


_WARNED: set[tuple[str, str, str]] = set()


def _warn_once(root: Path, entry: FileEntry, msg: str, *args: object) -> None:
    """``log.warning`` once per process for this engine version and message: `bench` selects three times per
    run (its plan, each case, the backend it opens) and said each skipped engine three times."""
    key = (str(root.resolve() / entry.path), entry.sha256, msg % args)
    if key in _WARNED:
        log.debug(msg, *args)
        return
    if len(_WARNED) > 1000:  # a watch that runs for months: bounded
        _WARNED.clear()
    _WARNED.add(key)
    log.warning(msg, *args)


def auto_needs_pass(precision: str) -> bool:
    """Whether ``auto`` runs a file of ``precision`` only with a parity PASS on the backend that would run it:
    every INT8 file and FP16 engine, any precision but FP32. FP16 too: its rounding can move a finding across
    a threshold as INT8's can, and Triton (export/triton.py) serves neither unvalidated. FP32 engines are built
    with TF32 off, so they are the reference precision, as ORT FP32 is."""
    return precision != "fp32"


def _engines(manifest: Manifest, precision: str) -> list[FileEntry]:
    order = {"int8": 0, "fp16": 1, "fp32": 2}
    engines = [f for f in manifest.files_of("engine") if precision == "auto" or f.precision == precision]
    return sorted(engines, key=lambda f: order.get(f.precision, 3))


def _precision_word(p: str) -> str:
    return "int8" if p.startswith("int8") else p


def _need_onnx(manifest: Manifest, backend: str, precision: str) -> FileEntry:
    gpu = backend in ("ort-cuda", "ort-trt")
    f = _onnx_file(manifest, precision, gpu, tensorrt=backend == "ort-trt")
    if f is None:
        have = [f"{x.path} ({x.precision})" for x in manifest.files_of("onnx")]
        hint = ("; TensorRT takes the symmetric INT8 variant only: make it with `uopsl quantize BUNDLE --variant trt`"
                if backend == "ort-trt" and precision == "int8" else "")
        raise BundleError(
            f"backend {backend} at precision {precision} needs an ONNX file of that precision; the bundle has {', '.join(have) or 'none'}"
            f"{hint}. Choose another precision (--precision; precision= in the Python API) or re-export the "
            "bundle with it"
        )
    return f


def select_backend(
    bundle: str | os.PathLike[str],
    name: str = "auto",
    precision: str = "auto",
    *,
    manifest: Manifest | None = None,
    threads: int | None = None,
    availability: Availability | None = None,
    engine_check: EngineCheck | None = None,
    measure: bool | None = None,
    device: int = 0,
) -> Selection:
    """Decide which backend, precision and bundle file to use (loads nothing except for the INT8 probe).

    ``measure`` allows the one-off CPU INT8 timing (default: on, unless the
    environment sets ``UOPSL_AUTO_MEASURE=0``).
    """
    if name != "auto" and name not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r}; expected 'auto' or one of {BACKEND_NAMES}")
    check_gpu_index(device)
    if engine_check is None:
        engine_check = functools.partial(engine_mismatch, device=device)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    root = Path(bundle)
    m = manifest or read_manifest(root)
    av = availability or detect_availability(imports=False)
    if measure is None:
        measure = os.environ.get("UOPSL_AUTO_MEASURE", "1") != "0"
    notes: list[str] = []

    chosen_int8: dict[str, FileEntry] = {}

    def cpu_int8_wins(runtime: str = "openvino") -> tuple[bool, str]:
        fp32 = _onnx_file(m, "fp32", False)
        label = _RUNTIME_LABEL[runtime]
        int8, why_not = _validated_cpu_int8(root, m, runtime)
        if int8 is None:
            return False, (f"{label} INT8 not chosen unasked: {why_not}" if why_not
                           else "the bundle has no INT8 ONNX file")
        chosen_int8[runtime] = int8
        if fp32 is None:
            return True, "the bundle has no FP32 ONNX file"
        speedup, source = cpu_int8_speedup(root, fp32, int8, threads, measure=measure, runtime=runtime)
        if speedup is None:
            return False, f"{label} INT8 speed on this CPU unknown ({source}); FP32 is the safe default"
        verdict = speedup >= INT8_MIN_SPEEDUP
        rel = "faster" if verdict else "not enough faster (needs %.2fx)" % INT8_MIN_SPEEDUP
        return verdict, f"{label} INT8 ({int8.path}) is {speedup:.2f}x ORT FP32 on this CPU, {rel} ({source})"

    # -- explicit backend ------------------------------------------------------------
    if name == "tensorrt":
        if not av.tensorrt and not m.files_of("engine"):
            # Installing TensorRT alone would not do (a review: "needs TensorRT ... pip install" while `info` said
            # "the bundle has no TensorRT engine"): both are said. Still the MissingDependencyError (an ImportError)
            # that the Python API documents for a backend that cannot run here.
            raise MissingDependencyError(
                f"backend tensorrt runs a TensorRT engine built on this device, and {root} has none (nor is TensorRT "
                f"installed here): install TensorRT and a CUDA binding ({extra_hint('trt')}; on a Jetson: sudo apt "
                "install python3-libnvinfer), then build an engine with 'uopsl build-engine BUNDLE'; or use "
                "--backend ort-cuda or ort-cpu (backend= in the Python API)")
        if not av.tensorrt:
            raise MissingDependencyError(f"backend tensorrt needs TensorRT and a CUDA binding: {extra_hint('trt')} "
                              "(on a Jetson: sudo apt install python3-libnvinfer, and cuda-python of JetPack's CUDA)")
        reasons = []
        unvalidated = 0  # engines that fit this device but have no PASS here
        refused_here = 0  # engines a rebuild on this device would replace (RefusedHere)
        for e in _engines(m, precision):
            # The engine's fit first: after a JetPack upgrade that is the cause, not a missing record.
            why = engine_check(root / e.path) or engine_stale(root, m, e, device)
            if why is not None:
                reasons.append(f"{e.path}: {why}")
                refused_here += isinstance(why, RefusedHere)
                continue
            if precision == "auto" and auto_needs_pass(e.precision):
                ok, why_not = validated_file(root, e, "tensorrt", m)
                if not ok:
                    reasons.append(f"{e.path}: {e.precision.upper()} is not used unasked: {why_not}")
                    unvalidated += 1
                    continue
            return Selection("tensorrt", e.precision, e.path, f"engine {e.path} matches this GPU and TensorRT")
        if reasons and unvalidated == len(reasons):  # engines that fit, none validated here
            todo = ("validate them on this device first (uopsl validate BUNDLE --onnx-reference --backends tensorrt "
                    "--data DIR --out DIR), or run one unvalidated with --precision fp16|int8 "
                    "(precision= in the Python API)")
        else:
            todo = ("build one on this device with 'uopsl build-engine BUNDLE' or use --backend ort-cuda "
                    "(backend= in the Python API)")
        message = (f"no TensorRT engine of precision {precision} in {root} can run here"
                   + (f" ({'; '.join(reasons)})" if reasons else " (the bundle has none)") + f"; {todo}")
        if reasons and refused_here == len(reasons):
            # Every engine was refused for this device (another TensorRT, GPU, platform or model file): the
            # documented type, so a device can catch it and rebuild (a review: a JetPack upgrade raised a plain
            # BundleError, and `except EngineMismatchError: rebuild()` never ran).
            raise EngineMismatchError(message)
        raise BundleError(message)
    if name in ("ort-cpu", "ort-cuda", "ort-trt", "openvino"):
        if name == "openvino" and not av.openvino:
            raise MissingDependencyError(f"backend openvino needs OpenVINO: {extra_hint('openvino')}")
        if name == "ort-cuda" and not av.ort_cuda:
            raise MissingDependencyError(f"backend ort-cuda needs onnxruntime-gpu and a CUDA GPU; this ONNX Runtime "
                                         f"offers {', '.join(av.ort_providers) or 'no provider'}. On a GPU machine: "
                                         "pip uninstall onnxruntime, then pip install onnxruntime-gpu (with both "
                                         "installed the CPU package hides the CUDA provider)")
        if name == "ort-trt" and av.ort_trt_listed and not av.ort_trt:
            raise MissingDependencyError("backend ort-trt needs TensorRT's library (libnvinfer), which is not "
                                         "found here although ONNX Runtime lists its TensorRT provider: install "
                                         f"TensorRT ({extra_hint('trt')}, or JetPack on a Jetson) or put its "
                                         "lib folder on LD_LIBRARY_PATH")
        if name == "ort-trt" and not av.ort_trt:
            raise MissingDependencyError(
                "backend ort-trt needs onnxruntime-gpu with its TensorRT provider and TensorRT's library; this "
                f"ONNX Runtime offers {', '.join(av.ort_providers) or 'no provider'}. On a GPU machine: pip "
                "uninstall onnxruntime, then pip install onnxruntime-gpu and TensorRT "
                f"({extra_hint('trt')}); on a Jetson, JetPack's TensorRT and the onnxruntime-gpu wheel built for "
                "it (see docs/deployment.md)")
        p = precision
        why = f"{p} requested"
        if p == "auto":
            if name == "openvino":
                wins, why = cpu_int8_wins()
                p = "int8" if wins else "fp32"
            else:
                p, why = "fp32", "fp32 is the default precision of ONNX Runtime backends"
        f = chosen_int8["openvino"] if p == "int8" and "openvino" in chosen_int8 else _need_onnx(m, name, p)
        return Selection(name, f.precision, f.path, f"{name} requested; {why}")

    # -- auto --------------------------------------------------------------------------------
    fitting_unvalidated: str | None = None  # the precision of the first engine that fits here but lacks a PASS
    if av.tensorrt and precision in ("auto", "int8", "fp16", "fp32"):
        for e in _engines(m, precision):
            why = engine_check(root / e.path) or engine_stale(root, m, e, device)
            if why is not None:
                # Loud: after a JetPack upgrade every engine lands here and screening
                # quietly falls back to a slower backend unless someone reads this.
                _warn_once(root, e, "TensorRT engine %s not used: %s", e.path, why)
                notes.append(f"engine {e.path} skipped: {why}")
                continue
            if precision == "auto" and auto_needs_pass(e.precision):
                validated, why_not = validated_file(root, e, "tensorrt", m)
                if not validated:
                    # A warning too: an engine built on the device and not yet validated would
                    # otherwise leave a Jetson screening on the CPU with nothing on the console.
                    _warn_once(root, e, "TensorRT engine %s (%s) not used: it has not passed `uopsl validate` here "
                               "(%s); validate it on this device (uopsl validate BUNDLE --onnx-reference --backends "
                               "tensorrt --data DIR --out DIR)", e.path, e.precision, why_not)
                    notes.append(f"engine {e.path} skipped: {e.precision.upper()} is not used unasked: {why_not}")
                    fitting_unvalidated = fitting_unvalidated or e.precision
                    continue
            return Selection("tensorrt", e.precision, e.path, "; ".join(
                [*notes, f"TensorRT engine {e.path} ({e.precision}) matches this GPU and TensorRT version"]))
    elif m.files_of("engine"):
        notes.append("TensorRT engines present but TensorRT/CUDA binding not installed")
    if av.ort_cuda:
        p = "fp32" if precision == "auto" else precision
        gpu_file = _onnx_file(m, p, True)
        if gpu_file is not None:
            return Selection("ort-cuda", gpu_file.precision, gpu_file.path, "; ".join(
                [*notes, f"ONNX Runtime CUDA provider available, running {gpu_file.path} ({gpu_file.precision})"]))
        notes.append(f"ONNX Runtime CUDA available but no {p} ONNX file")
    if precision in ("auto", "int8") and av.openvino:
        if precision == "int8":
            int8_file = _onnx_file(m, "int8", False)
            if int8_file is not None:
                return Selection("openvino", int8_file.precision, int8_file.path,
                                 "; ".join([*notes, "int8 requested; OpenVINO runs INT8 QDQ best on CPUs"]))
        else:
            wins, why = cpu_int8_wins()
            if wins:
                f = chosen_int8["openvino"]
                return Selection("openvino", f.precision, f.path, "; ".join([*notes, why]))
            notes.append(why)
    elif precision in ("auto", "int8") and not av.openvino and _onnx_file(m, "int8", False) is not None:
        notes.append(f"an INT8 file is present but OpenVINO is not installed ({extra_hint('openvino')})")
    ort_cpu = "CPUExecutionProvider" in av.ort_providers
    if precision == "auto" and ort_cpu and _onnx_file(m, "int8", False) is not None:
        # The same file on ONNX Runtime: validated there on its own record (the runtimes round
        # differently, so one's pass says nothing of the other's) and timed against ORT FP32.
        wins, why = cpu_int8_wins("ort-cpu")
        if wins:
            f = chosen_int8["ort-cpu"]
            return Selection("ort-cpu", f.precision, f.path, "; ".join([*notes, why]))
        notes.append(why)
    p = "fp32" if precision == "auto" else precision
    if not ort_cpu:
        # The last resort is ONNX Runtime's CPU provider; where it is missing (a core install, a Jetson
        # given only TensorRT) OpenVINO runs the same file, or nothing here can, and that is said now
        # rather than by the first photograph.
        ov_file = _onnx_file(m, p, False) if av.openvino and p == "fp32" else None
        if ov_file is not None:
            return Selection("openvino", ov_file.precision, ov_file.path, "; ".join(
                [*notes, f"ONNX Runtime is not installed; OpenVINO runs {ov_file.path} "
                         f"({_precision_word(ov_file.precision)})"]))
        # The remedies in the order a device maker should take them: an engine that fits here runs on the GPU;
        # installing ONNX Runtime would make auto screen on the CPU, and on a Jetson the PyPI wheel is the wrong one
        # (a review: a Jetson with an unvalidated FP16 engine was told only to pip install onnxruntime).
        install = (f"install ONNX Runtime ({install_hint('onnxruntime')}; on a Jetson, the onnxruntime-gpu wheel "
                   f"built for its JetPack, docs/deployment.md) or OpenVINO ({extra_hint('openvino')})")
        if fitting_unvalidated:
            # Validating needs ONNX Runtime (the reference runs on it), so it comes after installing it.
            todo = (f"run the TensorRT engine that fits here unvalidated with --precision {fitting_unvalidated} "
                    f"(precision= in the Python API); or {install}, then validate the engine on this device (uopsl "
                    "validate BUNDLE --onnx-reference --backends tensorrt --data DIR --out DIR)")
        elif av.tensorrt:
            todo = f"build a TensorRT engine on this device (uopsl build-engine BUNDLE); or {install}"
        else:
            todo = f"{install}; or, on a GPU device with TensorRT, build an engine there (uopsl build-engine BUNDLE)"
        raise BackendError("no installed backend can run this bundle here: ONNX Runtime is not installed"
                           + (f" ({'; '.join(notes)})" if notes else "") + f". To screen: {todo}")
    f = _need_onnx(m, "ort-cpu", p)
    return Selection("ort-cpu", f.precision, f.path, "; ".join([*notes, f"ONNX Runtime CPU {_precision_word(f.precision)}"]))


def open_backend(
    bundle: str | os.PathLike[str],
    name: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    *,
    manifest: Manifest | None = None,
    availability: Availability | None = None,
    measure: bool | None = None,
    spin: bool = True,
    device: int = 0,
    batch: int = 8,
) -> Backend:
    """Select (see :func:`select_backend`) and construct a backend; enter it with ``with``.

    The returned backend carries ``selection`` (a :class:`Selection`, with the reason).
    ``spin=False``: ONNX Runtime's threads do not busy-wait between operators
    (see :class:`~uopsl.runtime.backends.onnxruntime.OrtBackend`); the
    screening pipeline asks for it because its decoders share the cores.
    ``batch``: the largest batch the caller will send; the TensorRT execution
    provider builds one engine for batches 1 to max(16, batch), tuned for 8
    (for ``batch`` itself above 16), so run, watch and bench share it (see
    :class:`~uopsl.runtime.backends.onnxruntime.TrtProfile`).
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    root = Path(bundle)
    m = manifest or read_manifest(root)
    sel = select_backend(root, name, precision, manifest=m, threads=threads, availability=availability, measure=measure,
                         device=device)
    if sel.precision != "fp32":
        ok, why = validated_file(root, m.file(sel.file), sel.backend, m)
        if not ok and precision != "auto":
            # Asked for by name (auto takes no unvalidated INT8 or FP16 file): run it, but say so where it is seen (a
            # review: a file that FAILED the release gate ran with nothing above DEBUG).
            log.warning("%s on %s is not a validated file: %s; running it because precision %r was asked for, "
                        "so its results may differ from the validated model's", sel.file, sel.backend, why, precision)
            sel = replace(sel, reason=f"{sel.reason}; NOT validated here: {why}")
        sel = replace(sel, validated=ok, not_validated_because="" if ok else why)
    # One short line at INFO (what uopsl-screen shows); the reasoning is for -vv and engineers.
    log.info("backend: %s %s (%s)", sel.backend, sel.precision, sel.file)
    log.debug("backend choice: %s", sel.reason)
    return construct_backend(root, sel, m, threads, spin=spin, device=device, batch=batch)


def construct_backend(root: Path, sel: Selection, m: Manifest, threads: int | None = None, *, spin: bool = True,
                      device: int = 0, batch: int = 8) -> Backend:
    """The backend for a made choice (not entered): the one place backends are built for a bundle's file.

    ``uopsl validate`` builds its candidates here too, so the file it judges runs exactly as ``run``,
    ``watch`` and ``bench`` run it (the same TensorRT EP profile and engine cache, the same check of the model file).
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    path = root / sel.file
    backend: Backend
    if sel.backend == "openvino":
        from uopsl.runtime.backends.openvino import OpenVinoBackend

        backend = OpenVinoBackend(path, "CPU", threads, precision=sel.precision)
    elif sel.backend == "tensorrt":
        try:
            from uopsl.runtime.backends.tensorrt import TensorRTBackend  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise BundleError(f"the native TensorRT backend is not available in this build ({exc})") from exc
        backend = TensorRTBackend(path, device=device)
    else:
        from uopsl.runtime.backends.onnxruntime import OrtBackend, TrtProfile

        providers = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}[sel.backend]
        size = m.preprocess.size
        # One range for run (batch 8), watch (batch 1) and bench: one engine build per device, not one each.
        opt = 8 if batch <= 16 else batch
        profile = TrtProfile(m.input_name, (size, size, 3), 1, opt, max(16, batch)) if providers == "tensorrt" else None
        backend = OrtBackend(path, providers, threads, precision=sel.precision, spin=spin, device=device,
                             trt_profile=profile)
    backend.selection = sel
    backend.expected_sha256 = m.file(sel.file).sha256 or None
    return backend


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def open_and_enter(bundle: str | os.PathLike[str], name: str = "auto", precision: str = "auto",
                   threads: int | None = None, **kwargs: Any) -> Backend:
    """:func:`open_backend`, entered; for ``auto``, a GPU choice that cannot start gives way to the CPU.

    ONNX Runtime lists its GPU providers whenever the GPU wheel is installed, even where no GPU or no
    matching CUDA works, so ``auto`` can pick what cannot start. It then chooses again with the GPU
    providers and TensorRT taken away (a warning says why). Likewise an OpenVINO, TensorRT or CUDA binding
    that is installed but does not import (``auto`` finds them without importing them): chosen again without
    it. A backend named explicitly is never replaced.
    Leave the returned backend with ``backend.__exit__(None, None, None)`` (or a ``with`` block that does
    not enter it again).
    """
    if kwargs.get("manifest") is None:
        kwargs["manifest"] = read_manifest(bundle)
    b = open_backend(bundle, name, precision, threads, **kwargs)
    try:
        b.__enter__()
        return _checked(b, kwargs["manifest"], bundle)
    except (BackendError, MissingDependencyError) as exc:
        openvino_broken = b.name == "openvino" and isinstance(exc, MissingDependencyError)
        if name != "auto" or not (b.name in GPU_BACKENDS or openvino_broken):
            raise
        log.warning("backend %s could not start (%s); choosing again without %s", b.name, exc,
                    "OpenVINO" if openvino_broken else "the GPU")
    av = kwargs.pop("availability", None) or detect_availability(imports=False)
    if openvino_broken:
        fallback = replace(av, openvino=False)
    else:
        fallback = replace(av, ort_providers=tuple(p for p in av.ort_providers if p not in _GPU_PROVIDERS),
                           tensorrt=False)
    b = open_backend(bundle, "auto", precision, threads, availability=fallback, **kwargs)
    b.__enter__()
    return _checked(b, kwargs["manifest"], bundle)


def output_mismatch(outputs: Sequence[TensorSpec], m: Manifest) -> str | None:
    """How a loaded model's outputs disagree with its manifest, or None.

    The manifest says which output holds the probabilities and how many classes
    there are; a model whose outputs say otherwise (a manifest from another
    export, names in another order) would be screened wrongly or fail at the
    first batch. Dynamic dimensions are not compared.
    """
    k = len(m.classes)
    have = {o.name: o.shape for o in outputs}
    missing = [n for n in m.output_names if n not in have]
    if missing:
        return f"the model has no output {missing} (it has {sorted(have)})"
    expect = {m.output_names[0]: (k,), m.output_names[1]: (k,), m.output_names[2]: (k, *m.site_map_size)}
    for n, dims in expect.items():
        shape = have[n]
        if shape and (len(shape) != len(dims) + 1
                      or any(d is not None and d != e for d, e in zip(shape[1:], dims, strict=True))):
            return f"output {n!r} has shape {tuple(shape)}, the manifest implies (batch, {', '.join(map(str, dims))})"
    return None


def input_mismatch(inputs: Sequence[TensorSpec], m: Manifest) -> str | None:
    """How a loaded model's input disagrees with its manifest, or None.

    The manifest's preprocessing sets the side of the square photographs the runtime sends; a model built for
    another side would refuse every batch at inference, each photograph's row reading as a program failure.
    Dynamic dimensions are not compared, nor names (an engine's input keeps the ONNX name it was built from).
    """
    if len(inputs) != 1:
        return f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), the runtime sends one"
    shape = inputs[0].shape
    expect = (m.preprocess.size, m.preprocess.size, 3)
    if shape and (len(shape) != 4 or any(d is not None and d != e for d, e in zip(shape[1:], expect, strict=True))):
        return (f"the model's input {inputs[0].name!r} has shape {tuple(shape)}, the manifest's preprocessing "
                f"(size {m.preprocess.size}) sends (batch, {', '.join(map(str, expect))})")
    return None


def _checked(b: Backend, m: Manifest, bundle: str | os.PathLike[str]) -> Backend:
    problem = input_mismatch(b.inputs, m) or output_mismatch(b.outputs, m)
    if problem is None:
        return b
    b.__exit__(None, None, None)
    raise BundleError(f"bundle {bundle}: {problem}: the manifest does not belong to this model file; "
                      "export the bundle again or copy it again from its source")


def backend_table(bundle: str | os.PathLike[str], manifest: Manifest | None = None,
                  availability: Availability | None = None) -> list[tuple[str, bool, str]]:
    """For ``info``: (backend, usable here, note) for every registry name."""
    root = Path(bundle)
    m = manifest or read_manifest(root)
    av = availability or detect_availability()
    rows: list[tuple[str, bool, str]] = []
    has_ort_cpu = "CPUExecutionProvider" in av.ort_providers
    rows.append(("ort-cpu", has_ort_cpu, _onnx_run_on(m, "ort-cpu") if has_ort_cpu else
                 f"needs ONNX Runtime: {install_hint('onnxruntime')} (or onnxruntime-gpu); it would run "
                 f"{_onnx_run_on(m, 'ort-cpu')}"))
    rows.append(("ort-cuda", av.ort_cuda, _onnx_run_on(m, "ort-cuda") if av.ort_cuda else
                 "needs onnxruntime-gpu and a CUDA GPU"))
    rows.append(("ort-trt", av.ort_trt, _onnx_run_on(m, "ort-trt") if av.ort_trt else
                 "needs TensorRT's library (libnvinfer), not found here" if av.ort_trt_listed else
                 "needs onnxruntime-gpu built with TensorRT"))
    rows.append(("openvino", av.openvino, _onnx_run_on(m, "openvino") if av.openvino else extra_hint("openvino")))
    engines = m.files_of("engine")
    if not engines:
        rows.append(("tensorrt", False, "the bundle has no TensorRT engine"))
    elif not av.tensorrt:
        for e in engines:  # what each engine was built for is in its header, readable without TensorRT
            rows.append(("tensorrt", False, f"{e.path} ({e.precision}, {_built_for(root / e.path)}): needs TensorRT "
                                            f"and a CUDA binding ({extra_hint('trt')})"))
    else:
        for e in engines:
            # What `auto` checks too: the machine, and that the engine was built from the bundle's model as it is.
            why = engine_mismatch(root / e.path) or engine_stale(root, m, e)
            note = "matches this machine" if why is None else why
            if why is None and auto_needs_pass(e.precision):
                ok, why_not = validated_file(root, e, "tensorrt", m)
                if not ok:
                    note += f"; {e.precision.upper()} is not used unasked: {why_not}"
            rows.append(("tensorrt", why is None, f"{e.path} ({e.precision}, {_built_for(root / e.path)}): {note}"))
    return rows


def _onnx_run_on(m: Manifest, backend: str) -> str:
    """The ONNX files the backend selection runs on ``backend`` (one per precision), for ``info``.

    Why not every ONNX file: OpenVINO and the CPU never take the TensorRT variant where the u8 one exists, nor
    ONNX Runtime's TensorRT provider the u8 one; listing them all named files ``validate`` then skipped as
    "the runtime never runs this file" (a review)."""
    gpu = backend in ("ort-cuda", "ort-trt")
    files = [_onnx_file(m, p, gpu, tensorrt=backend == "ort-trt") for p in ("fp32", "fp16", "int8")]
    named = list(dict.fromkeys(f"{f.path} ({f.precision})" for f in files if f is not None))
    return ", ".join(named) or "no ONNX file it takes"


def _built_for(path: Path) -> str:
    """What an engine's header says it was built for: GPU, TensorRT, batch range (DLA core)."""
    try:
        from uopsl.runtime import engine_header

        h = engine_header.read_header(path)
    except Exception as exc:  # noqa: BLE001 - info describes; engine_mismatch decides
        return f"header unreadable: {exc}"
    dla = f", DLA core {h.dla_core}" if h.dla_core is not None else ""
    return (f"built for {h.gpu_name} (compute {h.compute_capability}{dla}) with TensorRT {h.tensorrt_version}, "
            f"batch {h.min_batch}-{h.max_batch}")


__all__ = [
    "BACKEND_NAMES",
    "PRECISIONS",
    "Availability",
    "Backend",
    "ModelFileBackend",
    "RefusedHere",
    "Selection",
    "TensorSpec",
    "backend_table",
    "cpu_int8_speedup",
    "detect_availability",
    "engine_mismatch",
    "open_and_enter",
    "open_backend",
    "select_backend",
]
