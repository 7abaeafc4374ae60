"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

One class serves the three ``ort-*`` registry names; ``providers`` picks the
execution providers. Graph optimisation is on (``all``) by default; the thread
count is settable because on small CPUs the screening pipeline shares the
cores with decoding and preprocessing.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from uopsl.runtime.backends.base import (ModelFileBackend, TensorSpec, cache_dir, check_gpu_index, installed_tensorrt,
                                         verified_model_path)
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.optional import dist_version, require

log = logging.getLogger(__name__)

#: ``providers`` shorthand -> ONNX Runtime execution providers, in priority order.
PROVIDER_SETS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_REGISTRY_NAME = {"cpu": "ort-cpu", "cuda": "ort-cuda", "tensorrt": "ort-trt"}
_OPT_LEVELS = ("disable", "basic", "extended", "all")

# ONNX type strings -> numpy dtypes (only what a contract model can carry).
_ORT_DTYPES: dict[str, Any] = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def available_providers() -> tuple[str, ...]:
    """The execution providers this ONNX Runtime build offers (empty when it is not installed)."""
    try:
        ort = require("onnxruntime", "the ONNX Runtime backend")
    except ImportError:
        return ()
    return tuple(ort.get_available_providers())


@dataclass(frozen=True)
class TrtProfile:
    """The batch range the TensorRT execution provider builds its engine for, on the model input.

    Without it ONNX Runtime builds for the first batch shape it sees and builds
    again whenever a batch falls outside the shapes seen so far (batch 8, then
    a last batch of 3, then batch 1 for ``screen()``): minutes each on a
    Jetson, in the middle of a clinic's run. With it, one engine covers
    ``min_batch``..``max_batch`` (tuned for ``opt_batch``), the native engines'
    defaults (``uopsl build-engine``); the backend splits larger batches.
    ``sample_shape``: one image's shape, (H, W, 3).
    """

    input_name: str
    sample_shape: tuple[int, ...]
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"TensorRT EP batch profile needs 1 <= min <= opt <= max, got min {self.min_batch}, "
                              f"opt {self.opt_batch}, max {self.max_batch}")
        if not self.sample_shape or any(d < 1 for d in self.sample_shape):
            raise ConfigError(f"TensorRT EP profile needs a positive sample shape, got {self.sample_shape}")
        if not self.input_name or any(c in self.input_name for c in ":,"):
            # ONNX Runtime splits the option strings on ',' and ':'.
            raise ConfigError(f"input name {self.input_name!r} cannot be written in a TensorRT EP shape option")

    def options(self) -> dict[str, str]:
        """ONNX Runtime's ``trt_profile_{min,opt,max}_shapes`` options (``name:1x224x224x3``)."""
        def shape(n: int) -> str:
            return f"{self.input_name}:" + "x".join(str(d) for d in (n, *self.sample_shape))

        return {"trt_profile_min_shapes": shape(self.min_batch), "trt_profile_opt_shapes": shape(self.opt_batch),
                "trt_profile_max_shapes": shape(self.max_batch)}


def provider_options(providers: list[str], device: int = 0, *, model_sha256: str = "", int8_qdq: bool = False,
                     ort_version: str = "", profile: TrtProfile | None = None) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` with the options this toolkit sets: the GPU ``device``, TensorRT EP engines cached on disk.

    Without a cache the TensorRT execution provider rebuilds its engine every
    time a session opens (minutes on a Jetson). The cache lives in the user
    cache folder (``UOPSL_CACHE_DIR``), one folder per model file
    (``model_sha256``): ONNX Runtime names a cached engine after the file's
    *name*, its tensor names and the library versions, never its weights
    (``TRTGenerateId``), and every bundle's file is called ``model.onnx``, so
    a shared folder would hand one model's engine to another model of the same
    architecture. The timing cache (kernel timings, not weights) is shared.
    ``int8_qdq``: the file holds Q/DQ nodes; TensorRT 8.x builds them only with
    its INT8 flag on (``trt_int8_enable``; no calibration table is needed).
    ``ort_version``: options newer than the installed ONNX Runtime are left
    out, since it refuses unknown ones and falls back to the next provider
    (timing cache and explicit shape profiles: 1.15; the timing cache's own
    path: 1.17; the CUDA provider's ``use_tf32``: 1.18). The CUDA provider
    runs FP32 convolutions and matrix products in TF32 on Ampere and newer
    GPUs unless ``use_tf32`` is 0: on an H200 that moved the demo model's
    probabilities by up to 0.011 from FP32 (session 23). uopsl turns it off, as
    it does for the TensorRT engines it builds; before 1.18 only the
    environment variable ``NVIDIA_TF32_OVERRIDE=0`` does that. (The TensorRT
    execution provider has no such option; its FP32 engines may use TF32.) ``profile``: the batch range of the TensorRT EP's engine
    (:class:`TrtProfile`); engines are cached in a folder per range, so an
    engine built for one range is never offered for another.
    """

    version = _version_tuple(ort_version)
    out: list[str | tuple[str, dict[str, str]]] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            # One folder per ONNX Runtime and TensorRT version: ONNX Runtime's docs ask to clear
            # these caches when either changes, and a folder per pair never serves a stale one.
            shared = cache_dir() / "ort-trt" / _runtime_versions()
            folder = shared / (model_sha256[:16] if model_sha256 else "unnamed-model")
            opts = {"device_id": str(device)}
            if int8_qdq:
                opts["trt_int8_enable"] = "True"
            if profile is not None and version >= (1, 15):
                opts.update(profile.options())
                folder = folder.with_name(f"{folder.name}-b{profile.min_batch}-{profile.opt_batch}-{profile.max_batch}")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only home: build every time rather than fail
                log.warning("TensorRT EP engine cache off: cannot create %s (%s); set UOPSL_CACHE_DIR", folder, exc)
                out.append((p, opts))
                continue
            opts.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder)})
            if version >= (1, 15):
                opts["trt_timing_cache_enable"] = "True"  # before 1.17 it lives beside the engines
            if version >= (1, 17):
                opts["trt_timing_cache_path"] = str(shared)
            out.append((p, opts))
        elif p == "CUDAExecutionProvider":
            cuda = {"device_id": str(device)}
            if version >= (1, 18):
                cuda["use_tf32"] = "0"  # FP32 means FP32, as for the engines uopsl builds (TF32 off there too)
            out.append((p, cuda))
        else:
            out.append(p)
    return out


def _version_tuple(version: str) -> tuple[int, ...]:
    """(1, 17, 3) from "1.17.3", "1.17.3+cu12" or "1.17.3rc1"; () when unparsable (no version-gated option is sent)."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def _tensorrt_version() -> str:
    """TensorRT's version: pip metadata, else the module's own (JetPack installs it with apt, without metadata)."""
    found = installed_tensorrt()
    if found:
        return found
    try:
        import tensorrt  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - absent or broken: the folder says unknown
        return "unknown"


def _runtime_versions() -> str:
    """``ort-<version>-trt-<version>`` of the installed ONNX Runtime and TensorRT (``unknown`` when not found)."""
    return f"ort-{dist_version('onnxruntime-gpu', 'onnxruntime') or 'unknown'}-trt-{_tensorrt_version()}"


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node.shape)
    dtype = _ORT_DTYPES.get(node.type)
    if dtype is None:
        raise BackendError(f"model tensor '{node.name}' has unsupported type {node.type}")
    return TensorSpec(node.name, shape, np.dtype(dtype))


class OrtBackend(ModelFileBackend):
    """ONNX Runtime session over one ONNX file of a bundle.

    providers: ``"auto"`` (TensorRT, CUDA, CPU: whichever this build has, best
    first), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, or an explicit provider list.
    threads: intra-op threads (None: ONNX Runtime's default, one per core).
    optimization: graph optimisation level (disable | basic | extended | all).
    precision: what the file computes in, for logs and reports (from the manifest).
    spin: let the intra-op threads busy-wait between operators (ONNX Runtime's
        default: lowest latency when inference has the cores to itself). False
        when other work shares the cores, e.g. the screening pipeline's image
        decoding: spinning threads then take CPU time the decoders need.
    trt_profile: the batch range of the TensorRT execution provider's engine
        (:class:`TrtProfile`; ``open_backend`` sets it from the manifest);
        batches above its maximum are run in chunks.

    On the CUDA provider a batch smaller than the previous call's is padded
    with blank images to that size (see :meth:`rows_for`); ``last_padded_to``
    says when the last call was.
    """

    #: A batch is padded to the previous call's size only up to this many rows, or four times its own.
    PAD_LIMIT = 32
    #: After this many padded calls in a row the smaller size becomes the shape kept (one search, once).
    PAD_RUN_LIMIT = 64

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: str | tuple[str, ...] | list[str] = "auto",
        threads: int | None = None,
        *,
        optimization: str = "all",
        precision: str = "fp32",
        spin: bool = True,
        device: int = 0,
        trt_profile: TrtProfile | None = None,
    ) -> None:
        super().__init__(path, threads, precision)
        self.spin = spin
        self.trt_profile = trt_profile
        self._chunk: int | None = None  # the largest batch one run takes (TensorRT EP with a profile)
        self.device = check_gpu_index(device)
        if optimization not in _OPT_LEVELS:
            raise ConfigError(f"optimization must be one of {_OPT_LEVELS}, got {optimization!r}")
        self.optimization = optimization
        self._providers_arg = providers
        self._session: Any = None
        self._last_rows = 0  # the batch size the session ran last (the CUDA provider tunes for it)
        self._padded_run = 0  # padded calls in a row
        #: the rows the last call ran as when it was padded (see :meth:`rows_for`), else 0
        self.last_padded_to = 0
        self.name = _REGISTRY_NAME.get(providers, "ort") if isinstance(providers, str) and providers != "auto" else "ort"

    # -- provider resolution -------------------------------------------------
    def _resolve_providers(self, have: tuple[str, ...]) -> list[str]:
        wanted = self._providers_arg
        if isinstance(wanted, str):
            if wanted == "auto":
                return [p for p in PROVIDER_SETS["tensorrt"] if p in have]
            if wanted not in PROVIDER_SETS:
                raise ConfigError(
                    f"providers must be 'auto', 'cpu', 'cuda', 'tensorrt' or a list of ONNX Runtime "
                    f"providers, got {wanted!r}"
                )
            first = PROVIDER_SETS[wanted][0]
            if first not in have:
                raise BackendError(
                    f"ONNX Runtime here offers {list(have)}, not {first}; install onnxruntime-gpu "
                    f"(with CUDA/cuDNN{' and TensorRT' if wanted == 'tensorrt' else ''}) or use --backend ort-cpu"
                )
            return [p for p in PROVIDER_SETS[wanted] if p in have]
        missing = [p for p in wanted if p not in have]
        if missing:
            raise BackendError(f"ONNX Runtime here offers {list(have)}; not available: {missing}")
        return list(wanted)

    # -- lifecycle -------------------------------------------------------------
    def load(self) -> None:
        ort = require("onnxruntime", "the ONNX Runtime backend")
        self._check_file()
        providers = self._resolve_providers(tuple(ort.get_available_providers()))
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        if not self.spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        trt_ep = "TensorrtExecutionProvider" in providers
        digest = (self.expected_sha256 or sha256_file(self.path)) if trt_ep else ""
        load_path = str(self.path)

        def session(profile: TrtProfile | None) -> Any:
            return ort.InferenceSession(load_path, sess_options=so, providers=provider_options(
                providers, self.device, model_sha256=digest, int8_qdq=self.precision.startswith("int8"),
                ort_version=str(getattr(ort, "__version__", "")), profile=profile))

        profile = self.trt_profile if trt_ep else None
        if trt_ep:
            log.info("%s: TensorRT EP engine for batches %s (built on first use on this GPU, minutes on a Jetson; "
                     "then cached under %s)", self.path.name,
                     f"{profile.min_batch}-{profile.max_batch}" if profile is not None else "as they come",
                     cache_dir() / "ort-trt")
        try:
            # The file the manifest lists is the file loaded (verified_model_path: opened and hashed once).
            with verified_model_path(self.path, self.expected_sha256) as load_path:
                try:
                    try:
                        self._session = session(profile)
                    except Exception as exc:  # noqa: BLE001 - retried once, then reported below
                        if profile is None or "profile" not in str(exc).lower():
                            raise
                        # ONNX Runtime wants a profile for every dynamic input of every TensorRT subgraph; when
                        # it splits this graph (a node TensorRT cannot run), the model input's profile is not
                        # enough.
                        log.warning("%s: the TensorRT EP refused the batch profile (%s); building per batch "
                                    "shape instead", self.path.name, str(exc).splitlines()[0][:200])
                        profile = None
                        self._session = session(None)
                except Exception as exc:  # ORT raises its own exception types; report them as one line
                    raise BackendError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        except BackendError:
            self._session = None
            raise
        used = self._session.get_providers()
        if providers and used and used[0] != providers[0] and self._providers_arg == "auto":
            # "auto" is whichever works, best first: the fallback is what it asks for (said, not hidden).
            log.warning("%s: ONNX Runtime could not start %s here and runs on %s instead", self.path.name,
                        providers[0], used[0])
        elif providers and used and used[0] != providers[0]:
            # ONNX Runtime lists CUDA/TensorRT whenever the GPU wheel is installed, even
            # when their libraries cannot load, and then quietly runs on the next
            # provider: a backend called ort-cuda would screen on the CPU.
            self._session = None
            raise BackendError(
                f"ONNX Runtime could not start {providers[0]} for {self.path.name} and fell back to "
                f"{used[0]} (usually CUDA, cuDNN or TensorRT libraries missing or of another version than "
                "this onnxruntime-gpu was built for; ONNX Runtime's log says which). Fix the GPU libraries, "
                "or choose --backend ort-cpu (or openvino) explicitly"
            )
        if used and used[0].startswith("Tensorrt") and profile is not None:
            self._chunk = profile.max_batch
        if self.name == "ort":
            self.name = "ort-trt" if used[0].startswith("Tensorrt") else "ort-cuda" if used[0].startswith("CUDA") else "ort-cpu"
        self._inputs = tuple(_spec(n) for n in self._session.get_inputs())
        self._outputs = tuple(_spec(n) for n in self._session.get_outputs())
        log.debug("loaded %s with providers %s", self.path.name, used)

    def close(self) -> None:
        self._session = None
        self._last_rows = self._padded_run = 0

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._session.get_providers()) if self._session is not None else ()

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "threads": self.threads, "graph_optimization": self.optimization,
                "providers": list(self.providers), "execution_mode": "sequential", "spin_wait": self.spin}

    def rows_for(self, n: int) -> int:
        """How many rows a batch of ``n`` images runs as: ``n``, or on the CUDA provider the previous call's size.

        ONNX Runtime's CUDA provider searches cuDNN's convolution algorithms again whenever the input's
        shape differs from the previous call's (its default ``EXHAUSTIVE`` search), often for shapes it
        has run before too: on an H200 each change of batch size cost 0.8-1.2 s for the demo's Lite0 at
        256 px, against 3.5 ms for a batch of 16 (session 40, ``benchmarks/results/gpu-h200-2026-12-04``;
        back to the one other shape a session had run, 108 ms). A screening run's batch that loses an ungradable
        photograph, and its last batch, would pay that twice. Padding with blank images to the previous
        size keeps one shape; the padded rows are dropped from the outputs (each image's outputs depend on
        that image alone). Not padded: a batch as large or larger (one search, then that size stays), and
        one whose previous size is above ``max(PAD_LIMIT, 4 n)`` (a validation's large batches must not
        make every later single photograph run as hundreds), and the call after
        ``PAD_RUN_LIMIT`` padded calls in a row: single photographs through the API after a batch of 16
        took 12.1 ms each padded against 9.0 ms (the H200 again), so a long run of them is worth one
        search; a screening run's full batches between its short ones reset the count.
        """
        last = self._last_rows
        if (n == 0 or n >= last or last > max(self.PAD_LIMIT, 4 * n) or self._padded_run >= self.PAD_RUN_LIMIT
                or self.providers[:1] != ("CUDAExecutionProvider",)):
            return n
        return last

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        n, shape = len(batch), batch.shape
        rows = self.rows_for(n)
        if rows > n:
            batch = np.concatenate([batch, np.zeros((rows - n, *batch.shape[1:]), batch.dtype)])
        step = self._chunk or rows or 1
        parts = []
        try:
            for start in range(0, max(rows, 1), step):
                parts.append(self._session.run(names, {self._inputs[0].name: batch[start:start + step]}))
        except Exception as exc:
            raise BackendError(f"{self.name}: inference failed on a batch of shape {shape}"
                               f"{f' (padded to {rows})' if rows > n else ''}: {exc}") from exc
        self._last_rows = rows
        self.last_padded_to = rows if rows > n else 0
        self._padded_run = self._padded_run + 1 if rows > n else 0
        if len(parts) == 1:
            return {name: (out[:n] if rows > n else out) for name, out in zip(names, parts[0])}
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
