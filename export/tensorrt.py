"""Build TensorRT engines (FP32, FP16, INT8) from a bundle's ONNX, on the device that will run them.

TensorRT engines are specific to the TensorRT version and GPU that built them,
so they are built where they run (``uopsl build-engine`` on the Jetson or the
desktop GPU), never shipped from the export machine. The engine file gets a
header (:mod:`uopsl.runtime.engine_header`) with what it was built for.

INT8 routes (``EngineBuildConfig.int8_mode``):

* ``qdq``: build from the Q/DQ model (the bundle's ``int8-qdq-s8`` ONNX:
  symmetric s8, zero point 0). TensorRT 10.x builds it strongly typed by
  default (no precision flags; the Q/DQ nodes say what runs in INT8); 8.x and
  10.x without strong typing set ``BuilderFlag.INT8``. The only route on 11.x.
* ``legacy-calibrator``: implicit INT8 from the FP32 ONNX with
  ``IInt8EntropyCalibrator2`` fed by calibration images (8.x; deprecated in 10.x).
* ``legacy-cache``: implicit INT8 with a calibration cache written from the
  calibration table's ranges, so no calibration runs on the device (8.x, 10.x).
* ``auto``: ``qdq`` when the ONNX holds Q/DQ nodes; otherwise a legacy route
  when calibration data is given and this TensorRT still has calibrators.

TensorRT 11 removed implicit INT8 and the FP16 builder flag; asking for either
there is a :class:`ConfigError` that says what to do instead. From 10.12 on,
``BuilderFlag.FP16``/``INT8`` are deprecated in favour of strongly typed
networks; a build that still sets them gets one warning saying so.

DLA (Jetson): TensorRT's DLA does not support dynamic dimensions, so a DLA
engine has one fixed batch (``min_batch == opt_batch == max_batch``; anything
else is a :class:`ConfigError`, never a "DLA" engine that runs on the GPU).
On TensorRT 8.x DLA does not run explicitly quantized (Q/DQ) models either, so
INT8 on DLA there takes a legacy (calibration) route.

The ONNX parser of each TensorRT release documents the highest opset it
imports (onnx-tensorrt ``docs/operators.md``: "TensorRT 8.5 [and 8.6] supports
operators up to Opset 17", "TensorRT 10.0 supports operators in the inclusive
range of opset 9 to opset 20"); a model above that gets a warning naming the
opset to export with.

All version differences are decided by :func:`plan_build` from a
:class:`TrtApi`, so they are unit-tested without TensorRT. The engine header
records the resolved build options (:class:`uopsl.runtime.engine_header.BuildOptions`)
so that the rebuild command printed on a mismatch rebuilds the same engine.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from uopsl.calibration import trt_cache
from uopsl.runtime.engine_header import BUILD_OPTIONS_KEY, BuildOptions, EngineHeader, now_utc, this_platform, write_engine
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.fsio import sha256_file, write_bytes
from uopsl.runtime.cuda_binding import CudaApi, load_cuda
from uopsl.runtime.trt_compat import (
    TrtApi,
    create_with_logger,
    dims,
    load_timing_cache,
    load_tensorrt,
    make_logger,
    network_flags,
    nptype,
    parser_errors,
    serialize_timing_cache,
    set_workspace,
    shape_of,
)

if TYPE_CHECKING:  # pragma: no cover - typing only; checked against tensorrt-stubs in CI
    import tensorrt

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
Int8Mode = Literal["auto", "qdq", "legacy-calibrator", "legacy-cache"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
INT8_MODES: tuple[str, ...] = ("auto", "qdq", "legacy-calibrator", "legacy-cache")
LEGACY_MODES = ("legacy-calibrator", "legacy-cache")


@dataclass(frozen=True)
class EngineBuildConfig:
    """How to build one engine. Defaults suit a screening device (batch 1-16, FP16).

    precision: fp32 | fp16 | int8 (what the engine computes in).
    min_batch / opt_batch / max_batch: the optimisation profile of the dynamic
        batch axis; TensorRT tunes kernels for ``opt_batch``.
    workspace_mib: builder scratch memory limit (MiB).
    timing_cache: file of measured kernel timings, read before and written
        after the build so rebuilds on the same device are much faster.
    dla_core: run on this Jetson DLA core (FP16/INT8 only), with layers DLA
        cannot run falling back to the GPU when ``gpu_fallback``. Needs one
        fixed batch (min_batch == opt_batch == max_batch): DLA has no dynamic shapes.
    int8_mode: see the module docstring.
    strongly_typed: build a strongly typed network (Q/DQ on 10.x+); None = yes
        for Q/DQ INT8 on TensorRT 10+, no otherwise.
    fp16_fallback: for weakly typed INT8 builds, let layers that stay in float
        use FP16 kernels (faster, a little less exact). Off: they run FP32.
    tf32: allow TF32 kernels in float layers (Ampere+). Off, so "fp32" means FP32.
    builder_optimization_level: 0-5 (TensorRT >= 8.6; None = TensorRT's default 3).
    version_compatible: the engine also runs under later TensorRT of the same
        major version and, per NVIDIA's support matrix, 8.6+ -> 10.x and
        10.x -> 11.x (built with >= 8.6; slower engines; the plan embeds a lean
        runtime that the loading runtime must be allowed to run; never another
        GPU architecture). See :func:`uopsl.runtime.engine_header.version_mismatch`.
    device: CUDA device index.
    """

    precision: Precision = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    workspace_mib: int = 1024
    timing_cache: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    int8_mode: Int8Mode = "auto"
    strongly_typed: bool | None = None
    fp16_fallback: bool = False
    tf32: bool = False
    builder_optimization_level: int | None = None
    version_compatible: bool = False
    device: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("min_batch", "opt_batch", "max_batch", "workspace_mib"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                f"batch sizes must satisfy min <= opt <= max, got min {self.min_batch}, "
                f"opt {self.opt_batch}, max {self.max_batch}"
            )
        if self.dla_core is not None:
            if isinstance(self.dla_core, bool) or not isinstance(self.dla_core, int) or self.dla_core < 0:
                raise ConfigError(f"dla_core must be an integer >= 0 or None, got {self.dla_core!r}")
            if not self.min_batch == self.opt_batch == self.max_batch:
                raise ConfigError(
                    f"dla_core {self.dla_core} with a dynamic batch (min {self.min_batch}, opt {self.opt_batch}, "
                    f"max {self.max_batch}): TensorRT's DLA does not support dynamic dimensions, so every layer on "
                    "the batch axis would run on the GPU and the engine would be DLA in name only. Give one fixed "
                    "batch size (min_batch = opt_batch = max_batch, e.g. 1; CLI: --min-batch N --opt-batch N "
                    "--max-batch N), or drop dla_core for a dynamic-batch GPU engine"
                )
        if self.int8_mode not in INT8_MODES:
            raise ConfigError(f"int8_mode must be one of {INT8_MODES}, got {self.int8_mode!r}")
        if self.int8_mode != "auto" and self.precision != "int8":
            raise ConfigError(f"int8_mode {self.int8_mode!r} applies to --precision int8 only, not {self.precision}")
        if self.strongly_typed and self.precision == "fp16":
            raise ConfigError(
                "a strongly typed network takes its types from the ONNX, so the FP32 ONNX builds an FP32 engine; "
                "drop --strongly-typed for FP16"
            )
        if self.strongly_typed and self.int8_mode in LEGACY_MODES:
            raise ConfigError("implicit INT8 (legacy calibrator/cache) cannot be strongly typed; use --int8-mode qdq")
        if self.builder_optimization_level is not None and not 0 <= self.builder_optimization_level <= 5:
            raise ConfigError(f"builder_optimization_level must be 0-5, got {self.builder_optimization_level}")
        if self.device < 0:
            raise ConfigError(f"device must be >= 0, got {self.device}")

    @property
    def workspace_bytes(self) -> int:
        return self.workspace_mib << 20


@dataclass(frozen=True)
class LegacyCalibration:
    """Data for implicit INT8 (TensorRT 8.x/10.x).

    batches: uint8 NHWC batches of exactly ``batch_size`` preprocessed images
        (legacy-calibrator); iterated once.
    amax: per-tensor absolute maxima from the calibration table (legacy-cache).
    cache_file: a TensorRT cache to use (legacy-cache, when ``amax`` is not
        given) or where to save the cache the calibrator computes.
    algorithm: entropy2 (TensorRT's recommended CNN calibrator) or minmax.
    images / max_images: where ``batches`` came from (a folder, CSV, list or
        .npz set) and the image cap; only recorded in the engine header so that
        the rebuild command can give the calibrator the same images again.
    set_fingerprint: the calibration set's fingerprint (calibration.json's, or the
        ``--calib-images`` set's), which ``uopsl build-engine`` records on the
        engine's manifest entry so that ``uopsl validate`` knows its calibration images.
    """

    batches: Iterable[np.ndarray] | None = None
    amax: Mapping[str, float] | None = None
    cache_file: str | None = None
    algorithm: str = "entropy2"
    batch_size: int = 8
    images: str | None = None
    max_images: int | None = None
    set_fingerprint: str | None = None

    @property
    def has_cache(self) -> bool:
        return self.amax is not None or (self.cache_file is not None and Path(self.cache_file).is_file())


@dataclass(frozen=True)
class BuildPlan:
    """The version-specific decisions for one build (pure data; see :func:`plan_build`)."""

    strongly_typed: bool
    set_flags: tuple[str, ...]
    clear_flags: tuple[str, ...]
    int8_mode: str  # "" for float engines
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    """What :func:`build_engine` produced."""

    path: Path
    header: EngineHeader
    seconds: float
    timing_cache: Path | None
    warnings: tuple[str, ...] = field(default=())


def onnx_has_qdq(path: str | os.PathLike[str]) -> bool:
    """True when the ONNX file holds QuantizeLinear/DequantizeLinear nodes.

    Op types are stored as plain strings in the protobuf, so a byte search is
    exact enough and avoids loading the onnx package on a device.
    """
    return b"QuantizeLinear" in Path(path).read_bytes()


def onnx_opset(path: str | os.PathLike[str]) -> int | None:
    """The default-domain opset of the ONNX file at ``path``, or None when it cannot be read.

    Reads only ``ModelProto.opset_import`` (field 8: ``OperatorSetIdProto``
    with domain = field 1, version = field 2) from the protobuf wire format,
    skipping the graph by its length, so a device needs no onnx package. Any
    file that is not such a protobuf gives None (the parser then reports it).
    """
    try:
        return _opset_from_bytes(Path(path).read_bytes())
    except OSError:
        return None


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each top-level field; ValueError on anything malformed."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(data, i)
            yield number, wire, value
        elif wire == 2:
            n, i = _varint(data, i)
            if i + n > len(data):
                raise ValueError("truncated field")
            yield number, wire, data[i:i + n]
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > len(data):
                raise ValueError("truncated field")
        else:
            raise ValueError(f"wire type {wire}")


def _opset_from_bytes(data: bytes) -> int | None:
    try:
        found: int | None = None
        for number, wire, value in _fields(data):
            if number != 8 or wire != 2:
                continue
            assert isinstance(value, bytes)
            domain, version = "", None
            for n2, w2, v2 in _fields(value):
                if n2 == 1 and w2 == 2 and isinstance(v2, bytes):
                    domain = v2.decode("utf-8", "replace")
                elif n2 == 2 and w2 == 0 and isinstance(v2, int):
                    version = v2
            if domain in ("", "ai.onnx") and version is not None:
                found = version
        return found
    except ValueError:
        return None


def parser_max_opset(api: TrtApi) -> int | None:
    """The highest ONNX opset this TensorRT's ONNX parser documents, or None where we have no statement.

    From onnx-tensorrt ``docs/operators.md`` of each release: 8.5 and 8.6
    "support operators up to Opset 17"; 10.0 "supports operators in the
    inclusive range of opset 9 to opset 20" (later 10.x raise it, e.g. 10.15:
    24). ``uopsl export`` writes opset 13-20, so only 8.x and 10.0 can be below it.
    """
    if api.major == 8:
        return 17
    if api.version[:2] == (10, 0):
        return 20
    return None


# BuilderFlag.FP16/INT8: "[DEPRECATED] Deprecated in TensorRT 10.12. Superseded by strong typing"
# (tensorrt-stubs 10.13, BuilderFlag), removed in 11.x (10.x -> 11.x migration guide).
WEAK_FLAGS_DEPRECATED_SINCE = (10, 12)


def plan_build(api: TrtApi, config: EngineBuildConfig, *, onnx_qdq: bool,
               calibration: LegacyCalibration | None = None, onnx_opset: int | None = None) -> BuildPlan:
    """Decide network typing, builder flags and the INT8 route for this TensorRT; ConfigError if impossible.

    ``onnx_opset``: the model's opset (:func:`onnx_opset`), to warn when it is
    above what this TensorRT's ONNX parser documents; None skips the check.
    """
    warnings: list[str] = []
    set_flags: list[str] = []
    clear_flags: list[str] = []
    int8_mode = ""
    v = api.version_text
    if config.precision == "fp16" and not api.weak_precision_flags:
        raise ConfigError(
            f"TensorRT {v} has no FP16 builder flag (removed in 11.x: networks are strongly typed, and the "
            "bundle's ONNX is FP32; uopsl writes no FP16 ONNX). Build --precision fp32, or --precision int8 from "
            "the Q/DQ model (`uopsl quantize BUNDLE --variant trt` first)"
        )
    ceiling = parser_max_opset(api)
    if onnx_opset is not None and ceiling is not None and onnx_opset > ceiling:
        warnings.append(
            f"the ONNX model has opset {onnx_opset}, above opset {ceiling}, the highest TensorRT {v}'s ONNX parser "
            "documents (onnx-tensorrt operators.md); parsing may fail or import operators wrongly. Re-export the "
            "bundle with 'uopsl export CHECKPOINT --out BUNDLE --opset 17' (the export default, which every "
            "TensorRT this toolkit supports parses)"
        )
    if config.precision == "int8":
        int8_mode = _int8_route(api, config, onnx_qdq, calibration)
        if int8_mode in LEGACY_MODES and api.implicit_int8_deprecated:
            warnings.append(f"implicit INT8 calibration is deprecated since TensorRT 10.1; "
                            f"prefer the Q/DQ model (--int8-mode qdq) on TensorRT {v}")
        if int8_mode == "qdq" and config.dla_core is not None and api.family == "8":
            raise ConfigError(
                f"INT8 from the Q/DQ model on DLA core {config.dla_core}: DLA under TensorRT {v} does not support "
                "explicit quantization (Q/DQ), so those layers would leave the DLA. Build implicit INT8 from "
                "calibration data instead (--int8-mode legacy-cache with the bundle's calibration.json or "
                "--calib-cache FILE, or --int8-mode legacy-calibrator --calib-images DIR), or --precision fp16"
            )
    strongly = _strong_typing(api, config, int8_mode)
    if strongly and config.precision == "int8" and config.fp16_fallback:
        warnings.append("--fp16-fallback has no effect on a strongly typed network (the Q/DQ model's types decide "
                        "each layer's precision)" + ("; build with --no-strongly-typed to use it"
                                                     if api.weak_precision_flags else ""))
    if not strongly:
        if config.precision == "fp16":
            set_flags.append("FP16")
        elif config.precision == "int8":
            set_flags.append("INT8")
            if config.fp16_fallback:
                set_flags.append("FP16")
    weak = [f for f in ("FP16", "INT8") if f in set_flags]
    if weak and api.version[:2] >= WEAK_FLAGS_DEPRECATED_SINCE:
        if "INT8" in weak:  # with --fp16-fallback, FP16 goes too: a strongly typed Q/DQ model needs neither
            instead = ("build INT8 from the Q/DQ model strongly typed (--int8-mode qdq, the default on 10.x, "
                       "without --no-strongly-typed" + (" or --fp16-fallback)" if "FP16" in weak else ")"))
        else:  # uopsl writes no FP16 ONNX for a strongly typed FP16 build
            instead = "build --precision fp32, or --precision int8 from the Q/DQ model (11.x builds no FP16 engine here)"
        warnings.append(
            f"{' and '.join('BuilderFlag.' + f for f in weak)} {'is' if len(weak) == 1 else 'are'} deprecated since "
            f"TensorRT 10.12 in favour of strongly typed networks and removed in TensorRT 11; this engine still "
            f"builds on TensorRT {v}; to build it on 11.x too, {instead}"
        )
    if config.precision != "fp16" and not config.tf32 and api.tf32_flag:
        clear_flags.append("TF32")
    if config.dla_core is not None:
        if not api.dla:
            raise ConfigError(f"TensorRT {v} offers no DLA device type; drop --dla-core")
        if config.precision == "fp32":
            if api.weak_precision_flags:
                raise ConfigError("DLA runs FP16 and INT8 only; build with --precision fp16 or int8 for --dla-core")
            # 11.x: no precision flags; the ONNX's tensor types decide (TensorRT 11.4 "Strongly Typed Networks
            # for DLA"), and the bundle's ONNX is FP32 throughout: every layer would leave the DLA, an engine
            # named for a DLA core that runs on the GPU (as a batch range with --dla-core would be).
            raise ConfigError(
                f"DLA runs FP16 and INT8 layers only, and under TensorRT {v} the ONNX's own types decide: the "
                "bundle's FP32 ONNX would run wholly on the GPU. For the DLA build --precision int8 from the Q/DQ "
                "model (`uopsl quantize BUNDLE --variant trt` first); for the GPU, leave --dla-core out")
        if config.precision == "int8" and strongly and api.weak_precision_flags:
            # 10.x: a strongly typed Q/DQ network keeps every layer outside a Q/DQ pair (the input's cast, the
            # float head, excluded layers) in FP32, which the DLA does not run. Weak typing with FP16 may.
            warnings.append(
                f"strongly typed INT8 on DLA core {config.dla_core} under TensorRT {v}: layers the Q/DQ model keeps "
                "in float stay FP32, which DLA does not run, so they "
                + ("run on the GPU" if config.gpu_fallback else "fail to build (no --gpu-fallback)")
                + "; --no-strongly-typed --fp16-fallback lets them run FP16 on the DLA (check the layer placement "
                "with the engine inspector either way)")
        if config.gpu_fallback:
            set_flags.append("GPU_FALLBACK")
    if config.version_compatible:
        if not api.version_compatible_flag:
            raise ConfigError(f"version-compatible engines need TensorRT 8.6 or later; this is {v}")
        set_flags.append("VERSION_COMPATIBLE")
    if config.builder_optimization_level is not None and not api.builder_optimization_level:
        raise ConfigError(f"builder_optimization_level needs TensorRT 8.6 or later; this is {v}")
    return BuildPlan(strongly, tuple(set_flags), tuple(clear_flags), int8_mode, tuple(warnings))


def check_implicit_int8(api: TrtApi) -> None:
    """ConfigError unless this TensorRT still has implicit INT8 calibration (8.x, 10.x; removed in 11)."""
    if not api.implicit_int8:
        raise ConfigError(
            f"TensorRT {api.version_text} has no implicit INT8 calibration (removed in TensorRT 11): INT8 engines "
            "are built from the Q/DQ model only. Give the bundle's TensorRT INT8 ONNX (int8-qdq-s8, made by "
            "'uopsl quantize') with --int8-mode qdq"
        )


def _int8_route(api: TrtApi, config: EngineBuildConfig, onnx_qdq: bool,
                calibration: LegacyCalibration | None) -> str:
    mode = config.int8_mode
    if mode == "auto":
        if onnx_qdq:
            return "qdq"
        check_implicit_int8(api)
        if calibration is not None and calibration.has_cache:
            return "legacy-cache"
        if calibration is not None and calibration.batches is not None:
            return "legacy-calibrator"
        raise ConfigError(
            "INT8 from a float ONNX needs calibration data (a calibration table or cache, or calibration images) "
            "or the Q/DQ model (the bundle's int8-qdq-s8 ONNX); got neither"
        )
    if mode == "qdq":
        if not onnx_qdq:
            raise ConfigError("--int8-mode qdq needs an ONNX with QuantizeLinear/DequantizeLinear nodes (the bundle's "
                              "int8-qdq-s8 file); this ONNX has none")
        return "qdq"
    check_implicit_int8(api)
    if onnx_qdq:
        raise ConfigError(f"--int8-mode {mode} calibrates a float ONNX, but this ONNX already holds Q/DQ nodes; "
                          "use --int8-mode qdq with it, or give the FP32 ONNX")
    if mode == "legacy-cache" and (calibration is None or not calibration.has_cache):
        raise ConfigError("--int8-mode legacy-cache needs the calibration table's ranges or an existing cache file")
    if mode == "legacy-calibrator" and (calibration is None or calibration.batches is None):
        raise ConfigError("--int8-mode legacy-calibrator needs calibration images")
    return mode


def _strong_typing(api: TrtApi, config: EngineBuildConfig, int8_mode: str) -> bool:
    if api.always_strongly_typed:
        if config.strongly_typed is False:
            raise ConfigError(f"TensorRT {api.version_text} builds every network strongly typed; drop --no-strongly-typed")
        return True
    if config.strongly_typed is None:
        return int8_mode == "qdq" and api.strongly_typed_flag and api.family != "8"
    if config.strongly_typed and not api.strongly_typed_flag:
        raise ConfigError(f"strongly typed networks need TensorRT 10 or later; this is {api.version_text}")
    if config.strongly_typed and int8_mode in LEGACY_MODES:
        # EngineBuildConfig refuses a legacy mode given by name; this is int8_mode auto resolved to one (a float
        # ONNX with calibration data). Strongly typed, TensorRT would set no INT8 flag, never call the calibrator
        # and build an FP32 engine labelled INT8.
        raise ConfigError(
            f"INT8 from this float ONNX goes through implicit calibration ({int8_mode}), which cannot be strongly "
            "typed: TensorRT would build an FP32 engine. Drop strongly_typed (--strongly-typed) or give the Q/DQ "
            "model (the bundle's int8-qdq-s8 ONNX, --int8-mode qdq)"
        )
    return config.strongly_typed


# -- the build ------------------------------------------------------------------------------
def build_engine(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: EngineBuildConfig,
    calibration: LegacyCalibration | None = None,
    *,
    cuda: CudaApi | None = None,
) -> EngineInfo:
    """Build an engine from ``onnx_path`` and write it (header + plan) atomically to ``out_path``.

    ``cuda``: the CUDA binding (default: whichever is installed; tests pass a fake).
    Raises ConfigError for settings this TensorRT cannot honour, BackendError when
    parsing or building fails (with every parser error and TensorRT's error log).
    """
    onnx_path = Path(onnx_path)
    out_path = Path(out_path)
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX file {onnx_path} does not exist")
    trt, api = load_tensorrt("building a TensorRT engine")
    data = onnx_path.read_bytes()
    onnx_qdq = b"QuantizeLinear" in data  # as onnx_has_qdq, without reading the file twice
    opset = _opset_from_bytes(data)
    del data
    plan = plan_build(api, config, onnx_qdq=onnx_qdq, calibration=calibration, onnx_opset=opset)
    for w in plan.warnings:
        log.warning(w)
    cuda = cuda or load_cuda("building a TensorRT engine")
    gpu_name, cc = cuda.device_properties(config.device)
    cuda.activate(config.device)
    t0 = time.perf_counter()
    calibrator: Any = None
    try:
        logger = make_logger(trt)
        builder: tensorrt.Builder = create_with_logger(trt, api, "Builder", logger)
        network = builder.create_network(network_flags(trt, api, plan.strongly_typed))
        parser: tensorrt.OnnxParser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = parser_errors(parser) or logger.errors or ["(no details reported)"]
            raise BackendError(
                f"TensorRT {api.version_text} cannot parse {onnx_path.name}: {len(errors)} error(s): "
                + " | ".join(errors)
            )
        input_name, sample_shape, input_dtype = _input_of(trt, network, config)
        if input_dtype == np.uint8:
            _check_uint8_input(trt, network, input_name, onnx_path)
        bconfig: tensorrt.IBuilderConfig = builder.create_builder_config()
        set_workspace(trt, api, bconfig, config.workspace_bytes)
        for name in plan.set_flags:
            bconfig.set_flag(_flag(trt, api, name))
        for name in plan.clear_flags:
            bconfig.clear_flag(_flag(trt, api, name))
        profile = builder.create_optimization_profile()
        refused = ConfigError(f"TensorRT {api.version_text} refused the batch profile min/opt/max "
                              f"{config.min_batch}/{config.opt_batch}/{config.max_batch} for input '{input_name}'; "
                              "give 1 <= --min-batch <= --opt-batch <= --max-batch")
        try:
            # The Python binding raises where the C++ set_shape returns false (pyCore.cpp: opt_profile_set_shape).
            profile.set_shape(input_name, dims(trt, (config.min_batch, *sample_shape)),
                              dims(trt, (config.opt_batch, *sample_shape)),
                              dims(trt, (config.max_batch, *sample_shape)))
        except RuntimeError as exc:
            raise ConfigError(f"{refused} ({exc})") from exc
        if bconfig.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid
            raise refused
        if config.builder_optimization_level is not None:
            bconfig.builder_optimization_level = config.builder_optimization_level
        if config.dla_core is not None:
            _use_dla(trt, api, builder, bconfig, config.dla_core)
        if plan.int8_mode in LEGACY_MODES:
            assert calibration is not None  # plan_build guarantees it for legacy modes
            fixed = shape_of(network.get_input(0).shape)[0]
            if fixed >= 0 and fixed != calibration.batch_size:
                raise ConfigError(f"input '{input_name}' has a fixed batch of {fixed}, so INT8 calibration must "
                                  f"use batches of {fixed}, not {calibration.batch_size}: build with --calib-batch "
                                  f"{fixed}")
            calibrator = _legacy_calibrator(trt, api, cuda, plan.int8_mode, calibration,
                                            sample_shape, input_dtype, network)
            setattr(bconfig, "int8_calibrator", calibrator)  # removed from 11.x stubs; 8.x/10.x only
            cal_profile = builder.create_optimization_profile()
            shape = dims(trt, (calibration.batch_size, *sample_shape))
            cal_refused = (f"TensorRT {api.version_text} refused the calibration profile (batch "
                           f"{calibration.batch_size}) for input '{input_name}'")
            try:
                cal_profile.set_shape(input_name, shape, shape, shape)
            except RuntimeError as exc:
                raise ConfigError(f"{cal_refused} ({exc})") from exc
            if bconfig.set_calibration_profile(cal_profile) is False:  # documented to return a bool
                raise ConfigError(cal_refused)
        cache_path = Path(config.timing_cache) if config.timing_cache else None
        if cache_path is not None:
            _attach_timing_cache(bconfig, cache_path)
        log.info("building a %s TensorRT %s engine from %s for %s (sm %s); this takes minutes",
                 config.precision, api.version_text, onnx_path.name, gpu_name, cc)
        serialized = builder.build_serialized_network(network, bconfig)
        if calibrator is not None:
            _check_calibration(calibrator)
            calibration = _without_lost_cache(calibrator, calibration)
        if serialized is None:
            detail = " | ".join(logger.errors[-5:]) or "no error reported"
            raise BackendError(f"TensorRT {api.version_text} failed to build the engine from {onnx_path.name}: {detail}")
        plan_bytes = bytes(memoryview(serialized))
        if cache_path is not None and not _save_timing_cache(bconfig, cache_path):
            cache_path = None
    finally:
        try:
            if calibrator is not None:
                calibrator.release()
        except Exception:  # noqa: BLE001 - a failed free must not hide the build's own error or skip deactivate
            log.warning("could not free the calibrator's GPU buffers", exc_info=True)
        finally:
            cuda.deactivate()
    seconds = time.perf_counter() - t0
    header = EngineHeader(
        tensorrt_version=api.version_text,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=config.precision,
        source_onnx=onnx_path.name,
        source_onnx_sha256=sha256_file(onnx_path),
        min_batch=config.min_batch,
        opt_batch=config.opt_batch,
        max_batch=config.max_batch,
        dla_core=config.dla_core,
        int8_mode=plan.int8_mode,
        strongly_typed=plan.strongly_typed,
        version_compatible=config.version_compatible,
        workspace_mib=config.workspace_mib,
        input_name=input_name,
        input_shape=tuple(sample_shape),
        built_at=now_utc(),
        platform=this_platform(),
        extra={"build_seconds": round(seconds, 1), "flags": list(plan.set_flags), "onnx_opset": opset,
               BUILD_OPTIONS_KEY: recorded_options(config, plan, calibration).to_dict()},
    )
    written = write_engine(out_path, plan_bytes, header)
    log.info("wrote %s (%.1f MiB) in %.0f s", out_path, len(plan_bytes) / 2**20, seconds)
    return EngineInfo(out_path, written, seconds, cache_path, plan.warnings)


def recorded_options(config: EngineBuildConfig, plan: BuildPlan,
                     calibration: LegacyCalibration | None) -> BuildOptions:
    """The build options the engine header records, so that ``rebuild_command`` replays them.

    ``strongly_typed`` is kept as requested (None = the version's default), so a
    rebuild under another TensorRT takes that version's default again; the
    resolved value is the header's own ``strongly_typed``. The calibration
    source is recorded only for the legacy INT8 routes, which need it.
    """
    source, cache, images, batch, max_images = "", None, None, None, None
    if plan.int8_mode in LEGACY_MODES and calibration is not None:
        batch = calibration.batch_size
        if plan.int8_mode == "legacy-calibrator":
            source, images, max_images = "images", calibration.images, calibration.max_images
            cache = calibration.cache_file  # where the computed cache was written, if anywhere
        elif calibration.amax is not None:
            source = "table"
        else:
            source, cache = "cache", calibration.cache_file
    return BuildOptions(
        gpu_fallback=config.gpu_fallback, strongly_typed=config.strongly_typed, fp16_fallback=config.fp16_fallback,
        opt_level=config.builder_optimization_level, tf32=config.tf32, calib_source=source, calib_cache=cache,
        calib_images=images, calib_batch=batch, calib_max_images=max_images, device=config.device,
    )


def _flag(trt: Any, api: TrtApi, name: str) -> Any:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise ConfigError(f"TensorRT {api.version_text} has no BuilderFlag.{name}")
    return flag


def _input_of(trt: Any, network: tensorrt.INetworkDefinition,
              config: EngineBuildConfig) -> tuple[str, tuple[int, ...], np.dtype]:
    """Name, per-sample shape and dtype of the single network input; the batch axis must fit the profile."""
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise ConfigError(f"a uopsl model has one input (a uint8 NHWC image batch); this ONNX has {names}")
    tensor = network.get_input(0)
    shape = shape_of(tensor.shape)
    if len(shape) < 2:
        raise ConfigError(f"input '{tensor.name}' has shape {shape}; expected (batch, H, W, 3)")
    sample = shape[1:]
    if any(d < 0 for d in sample):
        raise ConfigError(f"input '{tensor.name}' has dynamic dimensions besides the batch: {shape}; "
                          "export the ONNX with a fixed image size")
    if shape[0] >= 0 and not config.min_batch == config.max_batch == shape[0]:
        raise ConfigError(f"input '{tensor.name}' has a fixed batch of {shape[0]}; re-export the ONNX with a dynamic "
                          f"batch or build with --min-batch/--opt-batch/--max-batch {shape[0]}")
    return str(tensor.name), sample, nptype(trt, tensor.dtype)


def _check_uint8_input(trt: Any, network: tensorrt.INetworkDefinition, name: str, onnx_path: Path) -> None:
    """Refuse a network whose uint8 input reaches any layer but a cast, before a build that would fail obscurely.

    TensorRT converts a uint8 network input only in a cast (an identity layer on 8.5); every other layer,
    even a transpose or reshape, rejects it (``DataType.UINT8``'s documentation; NVIDIA/TensorRT#3985,
    where the build gives a network without outputs). Bundles exported before uopsl cast first have
    Transpose -> Cast there.
    """
    allowed = {getattr(trt.LayerType, n) for n in ("CAST", "IDENTITY") if hasattr(trt.LayerType, n)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        reads = any((t := layer.get_input(j)) is not None and t.name == name for j in range(layer.num_inputs))
        if reads and layer.type not in allowed:
            kind = getattr(layer.type, "name", str(layer.type))
            raise ConfigError(
                f"{onnx_path.name}: the uint8 input '{name}' goes into a {kind} layer ({layer.name}) before it is "
                "converted to float; TensorRT reads a uint8 input only in a cast. The bundle was exported by an "
                "older uopsl: export it again with this version (`uopsl export CHECKPOINT --out NEW_BUNDLE`; the "
                "model's numbers do not change), calibrate, quantize and validate it again, then build the engine"
            )


def _use_dla(trt: Any, api: TrtApi, builder: tensorrt.Builder, bconfig: tensorrt.IBuilderConfig,
             core: int) -> None:
    cores = int(builder.num_DLA_cores)
    if core >= cores:
        why = " (Jetson Orin Nano and desktop GPUs have none; AGX Orin, Orin NX and Xavier do): leave out --dla-core"
        if cores == 0 and api.version[:2] >= (10, 8):
            # NVIDIA's "Working with DLA" (11.3/11.4.1): "TensorRT 10.7 was the last release that supported DLA";
            # none in 10.8-11.3, 11.4.0 on Windows on ARM only; Jetson AGX Orin from 11.4.1 on JetPack 7.2.2+.
            # JetPack 6 ships 10.3. 10.8+ still defines DeviceType.DLA, so only the core count tells.
            why = (f" (TensorRT {api.version_text} may be why: DLA needs TensorRT 10.7 or older, as on JetPack 6, "
                   "or 11.4.1+ on JetPack 7.2.2+; Orin Nano and desktop GPUs have none): leave out --dla-core")
        raise ConfigError(f"--dla-core {core} requested but this device has {cores} DLA core(s)"
                          + (why if cores == 0 else f"; use 0..{cores - 1}"))
    bconfig.default_device_type = trt.DeviceType.DLA
    bconfig.DLA_core = core


def _attach_timing_cache(bconfig: tensorrt.IBuilderConfig, path: Path) -> None:
    data = b""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        pass  # the first build: a new cache
    except OSError as exc:  # a cache only saves time: an unreadable one (or folder) must not stop the build
        log.warning("cannot read the timing cache %s (%s); starting a new one", path, exc)
    else:
        log.info("timing cache: %s (%d KiB)", path, len(data) >> 10)
    try:
        load_timing_cache(bconfig, data)
    except BackendError:
        if not data:
            raise
        log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one (it will be overwritten)",
                    path)
        load_timing_cache(bconfig, b"")


def _save_timing_cache(bconfig: tensorrt.IBuilderConfig, path: Path) -> bool:
    """Write the builder's timing cache to ``path``; False (with a warning) where it cannot be written.

    It is written after a build that took minutes and before the engine itself: a cache folder that is read-only
    or full (the default one is in the user's home, $UOPSL_CACHE_DIR elsewhere) must cost the next build its
    head start, not this build its engine.
    """
    try:
        write_bytes(path, serialize_timing_cache(bconfig))
    except (OSError, BackendError) as exc:  # BackendError: TensorRT gave no cache
        log.warning("could not save the timing cache to %s (%s); the engine is written anyway, the next build "
                    "times its kernels again (--timing-cache PATH elsewhere, or $UOPSL_CACHE_DIR)", path, exc)
        return False
    return True


def _without_lost_cache(calibrator: Any, calibration: LegacyCalibration | None) -> LegacyCalibration | None:
    """``calibration`` as the engine header should record it: without its ``cache_file`` when the calibrator could
    not save the cache TensorRT computed there (the header's rebuild command must not name a file that was never
    written). The engine is sound and is still written; the lost cache is a warning, not an error."""
    err = getattr(calibrator, "cache_write_error", None)
    if err is None or calibration is None:
        return calibration
    log.warning("could not save the INT8 calibration cache to %s (%s); the engine is written anyway, but a later "
                "build calibrates again (--calib-cache PATH somewhere writable keeps it)", calibration.cache_file, err)
    return replace(calibration, cache_file=None)


def _check_calibration(calibrator: Any) -> None:
    """Raise what the calibrator's callbacks raised inside TensorRT (which swallows it), or a calibration that saw no batch."""
    err = getattr(calibrator, "error", None)
    if err is not None:
        raise BackendError(f"INT8 calibration failed after {calibrator.used} images: {err}; no engine or "
                           "calibration cache was written (fix the cause, e.g. GPU memory, and build again)") from err
    if getattr(calibrator, "expects_batches", False):
        if calibrator.used == 0:
            raise BackendError("INT8 calibration used no image: every calibration batch was shorter than the "
                               "calibration batch size; give more images or a smaller batch size")
        log.info("INT8 calibration: %d images used, %d dropped (a short last batch)", calibrator.used,
                 calibrator.dropped)


def _legacy_calibrator(trt: Any, api: TrtApi, cuda: CudaApi, mode: str, calibration: LegacyCalibration,
                       sample_shape: tuple[int, ...], input_dtype: np.dtype,
                       network: tensorrt.INetworkDefinition) -> Any:
    from uopsl.export.tensorrt_calibrator import make_calibrator

    cache: bytes | None = None
    batches = None
    cache_out = calibration.cache_file
    if mode == "legacy-cache":
        if calibration.amax is not None:
            algo = "MinMaxCalibration" if calibration.algorithm == "minmax" else "EntropyCalibration2"
            text = trt_cache.format_cache(calibration.amax, api.version_text, algo)
            _report_cache_coverage(trt, calibration.amax, network)
            cache = text.encode("utf-8")
            cache_out = None
        else:
            assert calibration.cache_file is not None  # has_cache checked by plan_build
            parsed = trt_cache.read_cache(calibration.cache_file)
            # TensorRT takes a cache only from a calibrator of the algorithm its header names.
            algorithm = _CACHE_ALGORITHMS.get(parsed.algorithm)
            if algorithm is None:
                raise ConfigError(
                    f"calibration cache {calibration.cache_file} was written by TensorRT's {parsed.algorithm} "
                    f"calibrator, which uopsl does not build ({', '.join(_CACHE_ALGORITHMS)}); give the bundle's "
                    "calibration table instead (--int8-mode legacy-cache without --calib-cache), or calibrate "
                    "again (--int8-mode legacy-calibrator --calib-images DIR)")
            _report_cache_coverage(trt, {k: v * trt_cache.INT8_MAX for k, v in parsed.scales.items()}, network)
            text = Path(calibration.cache_file).read_text(encoding="utf-8")
            running = trt_cache.version_int(api.version_text)
            if parsed.version != running:
                log.info("calibration cache %s was written by TensorRT tag %d; handing its scales to TensorRT %s "
                         "under its own tag %d (TensorRT refuses another version's header; the scales do not "
                         "depend on it)", calibration.cache_file, parsed.version, api.version_text, running)
                text = trt_cache.retag_cache(text, api.version_text)
            cache = text.encode("utf-8")
            cache_out = None
            return make_calibrator(trt, cuda, input_shape=(calibration.batch_size, *sample_shape),
                                   input_dtype=input_dtype, cache=cache, algorithm=algorithm)
    else:
        batches = calibration.batches
    return make_calibrator(trt, cuda, input_shape=(calibration.batch_size, *sample_shape), input_dtype=input_dtype,
                           batches=batches, cache=cache, cache_out=cache_out, algorithm=calibration.algorithm)


#: Cache header algorithm -> the calibrator that must hand it to TensorRT.
_CACHE_ALGORITHMS = {"EntropyCalibration2": "entropy2", "MinMaxCalibration": "minmax"}


def _report_cache_coverage(trt: Any, amax: Mapping[str, float], network: tensorrt.INetworkDefinition) -> None:
    """Log float network tensors without a range: TensorRT runs those layers in float. Integer, boolean and
    uint8 tensors (the image input, shapes) never have one and are not counted."""
    floats = {getattr(trt.DataType, n) for n in ("FLOAT", "HALF", "BF16") if hasattr(trt.DataType, n)}
    names: set[str] = set()
    tensors = [network.get_layer(i).get_output(j) for i in range(network.num_layers)
               for j in range(network.get_layer(i).num_outputs)]
    tensors += [network.get_input(i) for i in range(network.num_inputs)]
    for t in tensors:
        if t.dtype in floats:
            names.add(t.name)
    missing = sorted(names - set(amax))
    if missing:
        log.warning("the calibration ranges cover %d of %d network tensors; TensorRT keeps the other %d in float "
                    "(first: %s)", len(names) - len(missing), len(names), len(missing), ", ".join(missing[:5]))


__all__ = [
    "INT8_MODES",
    "PRECISIONS",
    "BuildPlan",
    "EngineBuildConfig",
    "EngineInfo",
    "LegacyCalibration",
    "build_engine",
    "check_implicit_int8",
    "onnx_has_qdq",
    "onnx_opset",
    "parser_max_opset",
    "plan_build",
    "recorded_options",
]
