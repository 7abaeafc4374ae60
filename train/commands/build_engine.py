"""``uopsl build-engine``: build a TensorRT engine from a bundle's ONNX, on the device that will run it.

The engine is written into the bundle (default ``model.<precision>.engine``)
and the manifest gets (or updates) its file entry: kind ``engine``, the
precision, the checksum, and the engine header in ``info``.

Which ONNX is built: FP32/FP16 use the bundle's FP32 ONNX. INT8 uses the
TensorRT Q/DQ model (precision ``int8-qdq-s8``) for ``--int8-mode qdq``
(the only INT8 route on TensorRT 11, the default on 10.x), and the FP32 ONNX
with the legacy calibrator for ``legacy-cache`` (ranges from the bundle's
``calibration.json`` or ``--calib-cache``) and ``legacy-calibrator``
(``--calib-images``). ``auto`` picks the Q/DQ model on TensorRT 10+, and on
8.x a legacy route when calibration data is at hand, else the Q/DQ model.

DLA (``--dla-core``): TensorRT's DLA does not support dynamic dimensions, so
a DLA engine has one fixed batch. With ``--dla-core`` and no batch options the
batch is fixed at ``DLA_DEFAULT_BATCH`` (1: one photograph at a time, the
lowest latency; logged); batch options left out take the value of those given;
a dynamic range (min != max) is a :class:`ConfigError` that says what to pass,
never a "DLA" engine that runs on the GPU. On TensorRT 8.x DLA does not run
Q/DQ models, so INT8 on DLA there takes the calibration-cache route
(``calibration.json`` or ``--calib-cache``) or the calibrator (``--calib-images``)
and fails, saying so, without calibration data.

The kernel timing cache defaults to one file per TensorRT version and GPU in
the user cache folder (``uopsl.runtime.fsio.user_cache_dir``: $UOPSL_CACHE_DIR, else
$XDG_CACHE_HOME/uopsl or ~/.cache/uopsl), so rebuilding
on the same device reuses the measured timings.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.fsio import user_cache_dir

log = logging.getLogger(__name__)


GPU_DEFAULT_BATCHES = (1, 8, 16)  # min, opt, max: a screening device, one photograph to a folder at a time
DLA_DEFAULT_BATCH = 1  # DLA needs one fixed batch; 1 keeps single-photograph latency lowest


def resolve_batches(min_batch: int | None, opt_batch: int | None, max_batch: int | None,
                    dla_core: int | None) -> tuple[int, int, int]:
    """The batch profile from the options given (None = left out), applying the documented defaults.

    Without ``--dla-core``: 1/8/16 for what is left out. With it, DLA needs
    min = opt = max (no dynamic shapes): nothing given -> ``DLA_DEFAULT_BATCH``;
    what is left out takes the one value given; two different values are a
    ConfigError that names them, rather than a silently narrowed range.
    """
    given = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    if dla_core is None:
        mn, opt, mx = (v if v is not None else d for v, d in zip(given.values(), GPU_DEFAULT_BATCHES))
        return mn, opt, mx
    values = {v for v in given.values() if v is not None}
    if not values:
        log.info("--dla-core %d without batch options: building for one fixed batch of %d (DLA does not support "
                 "dynamic shapes); pass --min-batch N --opt-batch N --max-batch N for another size",
                 dla_core, DLA_DEFAULT_BATCH)
        return (DLA_DEFAULT_BATCH,) * 3
    if len(values) > 1:
        got = " ".join(f"{k} {v}" for k, v in given.items() if v is not None)
        n = max(values)
        raise ConfigError(
            f"--dla-core {dla_core} with {got}: TensorRT's DLA does not support dynamic dimensions (the batch "
            "profile needs min = opt = max), so that engine would run on the GPU, not the DLA. Pass one fixed "
            f"size (e.g. --min-batch {n} --opt-batch {n} --max-batch {n}), or drop --dla-core for a dynamic-batch "
            "GPU engine"
        )
    n = values.pop()
    left_out = [k for k, v in given.items() if v is None]
    if left_out:
        log.info("--dla-core %d: %s left out, so they take the fixed batch %d too (DLA needs min = opt = max)",
                 dla_core, ", ".join(left_out), n)
    return n, n, n


def default_timing_cache(trt_version: str, compute_capability: str) -> Path:
    """Per-machine timing cache path: one per TensorRT version and GPU architecture."""
    return user_cache_dir() / f"trt-timing-{trt_version}-sm{compute_capability.replace('.', '')}.cache"


def default_engine_name(precision: str, dla_core: int | None) -> str:
    return f"model.{precision}" + (f".dla{dla_core}" if dla_core is not None else "") + ".engine"


def _onnx_entry(manifest: Any, precision: str) -> Any:
    for f in manifest.files_of("onnx"):
        if f.precision == precision:
            return f
    return None


def choose_inputs(bundle: Path, manifest: Any, precision: str, int8_mode: str, trt_major: int,
                  calib_cache: Path | None, calib_images: Path | None, *,
                  dla_core: int | None = None) -> tuple[Path, str]:
    """The ONNX to build from and the resolved INT8 mode (``auto`` stays for float precisions).

    ``dla_core`` on TensorRT 8.x: DLA there does not support explicit (Q/DQ)
    quantization, so ``auto`` takes a legacy route and refuses, saying what to
    give, when there is no calibration data; ``--int8-mode qdq`` is refused.
    """
    fp32 = _onnx_entry(manifest, "fp32")
    if precision != "int8":
        if fp32 is None:
            raise BundleError(f"{bundle}: the manifest lists no FP32 ONNX model to build from")
        return bundle / fp32.path, int8_mode
    qdq = _onnx_entry(manifest, "int8-qdq-s8")
    has_table = (bundle / "calibration.json").is_file()
    dla_without_qdq = dla_core is not None and trt_major < 9
    mode = int8_mode
    if dla_without_qdq and mode == "qdq":
        raise ConfigError(_dla_qdq_message(bundle, dla_core, trt_major, "--int8-mode qdq"))
    if mode == "auto":
        legacy = None
        if trt_major < 11 and fp32 is not None:
            if (calib_cache is not None and calib_cache.is_file()) or has_table:
                legacy = "legacy-cache"
            elif calib_images is not None:
                legacy = "legacy-calibrator"
        if legacy is None and dla_without_qdq:
            raise ConfigError(_dla_qdq_message(bundle, dla_core, trt_major, "no calibration data"))
        if legacy is not None and (trt_major < 10 or qdq is None):
            mode = legacy  # 8.x: the route JetPack 5 documents; 10.x: only when there is no Q/DQ model
            if trt_major >= 10:
                log.warning("INT8 on TensorRT %d.x from %s through implicit quantization (%s), which TensorRT 10 "
                            "deprecates and 11 removes: the bundle has no TensorRT Q/DQ model. For the route "
                            "TensorRT recommends, run 'uopsl quantize %s --variant trt --images "
                            "CALIBRATION_IMAGES' and build again", trt_major, fp32.path, mode, bundle)
        elif qdq is not None:
            mode = "qdq"
        else:
            raise BundleError(
                f"{bundle}: INT8 on TensorRT {trt_major}.x needs the TensorRT Q/DQ model (an 'int8-qdq-s8' ONNX: "
                "run 'uopsl quantize BUNDLE --variant trt --images CALIBRATION_IMAGES')"
                + ("" if trt_major >= 11 else ", or calibration data (--calib-cache / --calib-images / calibration.json)")
            )
    if mode == "qdq":
        if qdq is None:
            raise BundleError(f"{bundle}: --int8-mode qdq needs an 'int8-qdq-s8' ONNX in the bundle; "
                              "run 'uopsl quantize BUNDLE --variant trt --images CALIBRATION_IMAGES' first")
        return bundle / qdq.path, mode
    if fp32 is None:
        raise BundleError(f"{bundle}: the manifest lists no FP32 ONNX model to calibrate")
    return bundle / fp32.path, mode


def _dla_qdq_message(bundle: Path, dla_core: int | None, trt_major: int, got: str) -> str:
    return (
        f"{bundle}: INT8 on DLA core {dla_core} under TensorRT {trt_major}.x with {got}: DLA there does not "
        "support explicitly quantized (Q/DQ) models, so INT8 on DLA needs implicit INT8 from calibration data. "
        "Run 'uopsl calibrate BUNDLE --images CALIBRATION_IMAGES' (writes calibration.json), or pass "
        "--calib-cache FILE or --calib-images DIR, with --int8-mode auto (or legacy-cache / legacy-calibrator); "
        "or build --precision fp16 for DLA"
    )


def _legacy_calibration(bundle: Path, manifest: Any, mode: str, onnx: Path, calib_cache: Path | None,
                        calib_images: Path | None, batch: int, max_images: int | None) -> Any:
    from uopsl.export.tensorrt import LegacyCalibration
    from uopsl.runtime.fsio import sha256_file

    if mode == "legacy-cache":
        if calib_cache is not None and calib_cache.is_file():
            return LegacyCalibration(cache_file=str(calib_cache.resolve()), batch_size=batch)
        from uopsl.calibration.table import TABLE_FILE, CalibrationTable

        table = CalibrationTable.load(bundle / TABLE_FILE, model_sha256=sha256_file(onnx))
        from uopsl.train.commands.calibrate import refuse_table_of_other_preprocessing

        refuse_table_of_other_preprocessing(bundle, table, bundle / TABLE_FILE)
        amax = {name: table.amax(name) for name in table.tensor_names}
        algo = "minmax" if table.method == "minmax" else "entropy2"
        return LegacyCalibration(amax=amax, algorithm=algo, batch_size=batch, set_fingerprint=table.set_fingerprint)
    if calib_images is None:
        raise ConfigError("--int8-mode legacy-calibrator needs --calib-images (a folder, CSV, list or .npz set)")
    from uopsl.calibration.dataset import build_calibration_set

    cal = build_calibration_set(calib_images, manifest.preprocess, max_images=max_images)
    if len(cal) < batch:
        raise ConfigError(f"{calib_images}: {len(cal)} usable calibration images, fewer than one batch of {batch}")
    return LegacyCalibration(batches=cal.batches(batch), batch_size=batch,
                             cache_file=str(calib_cache.resolve()) if calib_cache is not None else None,
                             images=str(calib_images.resolve()), max_images=max_images,
                             set_fingerprint=cal.fingerprint)


@click.command("build-engine")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@click.option("--min-batch", type=click.IntRange(1), default=None,
              help="Smallest batch of the optimisation profile [default: 1; with --dla-core: 1, fixed].")
@click.option("--opt-batch", type=click.IntRange(1), default=None,
              help="Batch TensorRT tunes its kernels for [default: 8; with --dla-core: 1, fixed].")
@click.option("--max-batch", type=click.IntRange(1), default=None,
              help="Largest batch [default: 16; with --dla-core: 1, fixed].")
@click.option("--workspace", "workspace_mib", type=click.IntRange(1), default=1024, show_default=True, help="Builder workspace, MiB.")
@click.option("--dla-core", type=click.IntRange(0), default=None,
              help="Jetson DLA core (FP16/INT8; GPU fallback on). DLA has no dynamic shapes: the batch is fixed "
                   "(1 unless --min/--opt/--max-batch give one size N; a range is an error). INT8 on TensorRT 8.x "
                   "DLA needs calibration data (calibration.json, --calib-cache or --calib-images), not Q/DQ. "
                   "TensorRT 11 (no FP16 flag): INT8 from the Q/DQ model only.")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla-core: fail instead of running layers on the GPU.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kernel timing cache file [default: per TensorRT version and GPU in the user cache folder].")
@click.option("--no-timing-cache", is_flag=True, help="Do not read or write a timing cache.")
@click.option("--int8-mode", type=click.Choice(["auto", "qdq", "legacy-calibrator", "legacy-cache"]),
              default="auto", show_default=True)
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT 8.x calibration cache to use (legacy-cache) or to write (legacy-calibrator).")
@click.option("--calib-images", type=click.Path(exists=True, path_type=Path), default=None,
              help="Calibration images (folder, CSV, list or .npz set) for legacy-calibrator.")
@click.option("--calib-batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--calib-max-images", type=click.IntRange(1), default=512, show_default=True)
@click.option("--strongly-typed/--no-strongly-typed", default=None,
              help="Strongly typed network [default: yes for Q/DQ INT8 on TensorRT 10+].")
@click.option("--fp16-fallback", is_flag=True, help="Weakly typed INT8: float layers may use FP16.")
@click.option("--opt-level", "opt_level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level 0-5 (TRT >= 8.6).")
@click.option("--version-compatible", is_flag=True,
              help="TensorRT >= 8.6: the engine also runs under later TensorRT of the same major version, and "
                   "across majors only for the pairs NVIDIA supports: 8.6+ -> 10.x and 10.x -> 11.x (not 8.x -> "
                   "9.x or 11.x). It embeds a lean runtime that the loading process runs (uopsl allows it), is "
                   "slower, and never moves to another GPU architecture (compute capability).")
@click.option("--device", type=click.IntRange(0), default=0, show_default=True, help="CUDA device index.")
@click.option("--out", type=str, default=None,
              help="Engine file name inside the bundle [default: model.<precision>[.dla<N>].engine].")
def command(bundle: Path, precision: str, min_batch: int | None, opt_batch: int | None, max_batch: int | None,
            workspace_mib: int,
            dla_core: int | None, no_gpu_fallback: bool, timing_cache: Path | None, no_timing_cache: bool,
            int8_mode: str, calib_cache: Path | None, calib_images: Path | None, calib_batch: int,
            calib_max_images: int, strongly_typed: bool | None, fp16_fallback: bool, opt_level: int | None,
            version_compatible: bool, device: int, out: str | None) -> None:
    """Build a TensorRT engine for this GPU into BUNDLE and record it in the manifest."""
    from uopsl.export.bundle_writer import add_file
    from uopsl.export.tensorrt import EngineBuildConfig, build_engine, check_implicit_int8
    from uopsl.runtime.bundle import bundle_path_problem, read_manifest, verify_before_rewrite
    from uopsl.runtime.cuda_binding import load_cuda
    from uopsl.runtime.trt_compat import load_tensorrt

    if calib_cache is not None and not calib_cache.is_file() and (int8_mode == "legacy-cache" or calib_images is None):
        # A cache to read that is not there was ignored: the engine took calibration.json's ranges without a word
        # (a review).
        raise ConfigError(f"--calib-cache {calib_cache}: no such file. To build from a cache, give one made on this "
                          "device; to write one, give --calib-images too (--int8-mode legacy-calibrator); to use "
                          "the bundle's calibration.json, leave --calib-cache out")
    out_name = out or default_engine_name(precision, dla_core)
    problem = bundle_path_problem(out_name)
    if problem:
        raise ConfigError(f"--out must be a file name inside the bundle, got {out_name!r}: {problem}")
    # Checked before a minutes-long build, and because the build rewrites the manifest with a fresh checksum.
    # The engine itself may fail: a rebuild stopped between writing it and listing it leaves it so, and it is
    # built anew here either way.
    verify_before_rewrite(bundle, out_name)
    manifest = read_manifest(bundle)
    min_batch, opt_batch, max_batch = resolve_batches(min_batch, opt_batch, max_batch, dla_core)
    config = EngineBuildConfig(
        precision=precision,  # type: ignore[arg-type]
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_mib=workspace_mib,
        dla_core=dla_core, gpu_fallback=not no_gpu_fallback, int8_mode=int8_mode,  # type: ignore[arg-type]
        strongly_typed=strongly_typed, fp16_fallback=fp16_fallback, builder_optimization_level=opt_level,
        version_compatible=version_compatible, device=device,
    )
    _trt, api = load_tensorrt("uopsl build-engine")
    cuda = load_cuda("uopsl build-engine")
    onnx, mode = choose_inputs(bundle, manifest, precision, int8_mode, api.major, calib_cache, calib_images,
                               dla_core=dla_core)
    if mode != config.int8_mode:
        config = replace(config, int8_mode=mode)  # type: ignore[arg-type]
    calibration = None
    if mode in ("legacy-cache", "legacy-calibrator"):
        check_implicit_int8(api)  # before reading calibration data that TensorRT 11 could not use
        calibration = _legacy_calibration(bundle, manifest, mode, onnx, calib_cache, calib_images, calib_batch,
                                          calib_max_images)
    if not no_timing_cache:
        if timing_cache is None:
            _name, cc = cuda.device_properties(device)
            timing_cache = default_timing_cache(api.version_text, cc)
        config = replace(config, timing_cache=str(timing_cache))
    from uopsl.runtime.signing import warn_if_signed

    warn_if_signed(bundle, "an engine added now")  # said before minutes of building, not after
    info = build_engine(onnx, bundle / out_name, config, calibration, cuda=cuda)
    # The manifest as it is now, not as it was before minutes of building (a validate may have written it).
    add_file(bundle, None, out_name, "engine", precision,  # type: ignore[arg-type]
             # the calibration set, where known: uopsl validate checks the engine against its images
             info={**info.header.to_dict(), **({"calibration_fingerprint": calibration.set_fingerprint}
                                               if calibration is not None and calibration.set_fingerprint else {})})
    h = info.header
    click.echo(f"{bundle / out_name}: {h.precision}"
               + (f" ({h.int8_mode})" if h.int8_mode else "")
               + f", TensorRT {h.tensorrt_version}, {h.gpu_name} (sm {h.compute_capability}), "
               f"batch {h.min_batch}/{h.opt_batch}/{h.max_batch}, {h.plan_size / 2**20:.1f} MiB, "
               f"built in {info.seconds:.0f} s")
