"""``uopsl calibrate``: measure activation ranges of an FP32 ONNX model -> calibration.json.

MODEL is an ONNX file or a bundle folder (its ``model.onnx`` and the
manifest's preprocessing are used, and the table goes to ``BUNDLE/calibration.json``
and into the manifest). An ONNX file that a bundle's manifest lists counts as
that bundle.
The preprocessed calibration set is cached (``--set-cache``, default in the
user cache folder), and calibration itself is skipped when the output table
already matches the model hash, set fingerprint and method (``--force`` redoes it).
Exit code 1 when some images were skipped (the table is still written).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from uopsl.calibration.dataset import CalibrationSet, build_calibration_set
from uopsl.calibration.table import TABLE_FILE, CalibrationTable
from uopsl.runtime.bundle import MANIFEST, read_manifest, verify_before_rewrite
from uopsl.runtime.clikit import FiniteFloatRange, option_given
from uopsl.runtime.signing import warn_if_signed
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.fsio import sha256_file, staged_path, user_cache_dir
from uopsl.runtime.optional import require
from uopsl.runtime.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelSource:
    """What a MODEL argument (ONNX file or bundle folder) resolves to."""

    model: Path
    bundle: Path | None
    preprocess: PreprocessConfig


def resolve_model(model: Path, size: int | None, preprocess_from: Path | None) -> ModelSource:
    """Model file, bundle folder (if any) and preprocessing config for a command's MODEL argument.

    An ONNX file that a bundle's manifest lists counts as that bundle.
    Preprocessing comes from, in order: ``--preprocess`` (a bundle folder, a
    manifest.json or a JSON file of PreprocessConfig fields), the bundle's
    manifest, else the defaults; ``--size`` overrides the size; without any,
    the size is the model's static input size.
    """
    bundle: Path | None = None
    cfg: PreprocessConfig | None = None
    if model.is_dir():
        bundle = model
        manifest = read_manifest(bundle)
        fp32 = [f for f in manifest.files_of("onnx") if f.precision == "fp32"]
        model = bundle / (fp32[0].path if fp32 else DEFAULT_MODEL_FILE)
        cfg = manifest.preprocess
        if not model.is_file():
            raise ConfigError(f"{bundle}: the bundle has no FP32 ONNX model ({model.name} is missing)")
    elif (model.parent / MANIFEST).is_file():
        # An ONNX file inside a bundle: the bundle's preprocessing and table, as for the folder itself.
        try:
            manifest = read_manifest(model.parent)
        except BundleError as exc:  # some other tool's manifest.json: the model is a plain ONNX file
            log.debug("%s is not a uopsl bundle manifest (%s)", model.parent / MANIFEST, exc)
        else:
            entry = next((f for f in manifest.files if f.path == model.name), None)
            if entry is not None and entry.precision != "fp32":
                raise ConfigError(
                    f"{model} is the bundle's {entry.precision} file; calibration and quantization start from the "
                    f"FP32 model: give the bundle folder {model.parent} (or its FP32 ONNX file)")
            if entry is not None:
                bundle, cfg = model.parent, manifest.preprocess
    if preprocess_from is not None:
        if preprocess_from.is_dir() or preprocess_from.name == MANIFEST:
            cfg = read_manifest(preprocess_from if preprocess_from.is_dir() else preprocess_from.parent).preprocess
        else:
            try:
                given = json.loads(preprocess_from.read_text(encoding="utf-8"))
                cfg = PreprocessConfig.from_dict(given)
                if "decode_min_ratio" not in given:
                    log.warning("%s gives no decode_min_ratio / decode_min_side: using the JPEG decode rule of "
                                "configs stored before they existed (ratio %g, no floor); add both for today's "
                                "(ratio %g, floor %d px)", preprocess_from, cfg.decode_min_ratio,
                                PreprocessConfig.decode_min_ratio, PreprocessConfig.decode_min_side)
            except (OSError, json.JSONDecodeError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{preprocess_from}: expected a bundle folder, a manifest.json or a JSON object of "
                    f"preprocessing parameters ({exc})"
                ) from exc
    graph = _graph(model)
    _refuse_quantized(model, graph)
    model_size = model_input_size(model, graph)
    if cfg is None:
        cfg = PreprocessConfig(size=size or model_size or PreprocessConfig().size)
    elif size is not None and size != cfg.size:
        cfg = PreprocessConfig.from_dict({**cfg.to_dict(), "size": size})
    if model_size is not None and cfg.size != model_size:
        raise ConfigError(f"{model}: the model takes {model_size} px images, but preprocessing gives {cfg.size} px")
    return ModelSource(model, bundle, cfg)


def check_out(source: ModelSource, out: Path, table: Path | None = None) -> None:
    """Refuse an ``--out`` that would overwrite the source model (or the table the command reads), or that
    cannot be written (:func:`uopsl.runtime.fsio.check_output_file`), before any work."""
    from uopsl.runtime.fsio import check_output_file

    real = out.resolve()
    if real == source.model.resolve():
        raise ConfigError(f"--out {out} is the model being read ({source.model}); choose another --out "
                          "(or leave it at its default)")
    if table is not None and real == table.resolve():
        raise ConfigError(f"--out {out} is the calibration table being read; choose another --out "
                          "(or leave it at its default)")
    check_output_file(out, "--out", "model.int8.onnx" if table is not None else "calibration.json")


def bundle_target(source: ModelSource, out: Path, kind: str) -> Path | None:
    """The bundle folder ``out`` belongs to (a file written straight into MODEL's bundle), else None.

    MODEL may name the bundle folder or an ONNX file the bundle lists
    (:func:`resolve_model`); either way a table or INT8 file written into the
    bundle must enter the manifest, or the bundle's checksums, ``validate``
    and the runtime never see it. An ``out`` that would overwrite the manifest,
    the source model or a bundle file of another kind is refused (ConfigError),
    before any work.
    """
    bundle = source.bundle
    if bundle is None or out.resolve().parent != bundle.resolve():
        return None
    listed = {f.path: f for f in read_manifest(bundle).files}
    entry = listed.get(out.name)
    if (out.name == MANIFEST or out.resolve() == source.model.resolve()
            or (entry is not None and (entry.kind != kind or entry.precision == "fp32"))):
        what = "the manifest" if out.name == MANIFEST else f"the bundle's {entry.kind if entry else 'model'} file"
        raise ConfigError(f"--out {out} would overwrite {what}; choose another name (or leave --out at its default)")
    if kind == "calibration" and out.name != TABLE_FILE:
        # Every INT8 consumer of a bundle reads calibration.json: a second table there was listed, took over the
        # manifest's calibration fingerprint, and was read by nothing (a review).
        raise ConfigError(f"--out {out} would put a second calibration table into the bundle {bundle}, which its "
                          f"INT8 consumers would not read (they read {TABLE_FILE}): leave --out out to "
                          f"replace {TABLE_FILE}, or write the table outside the bundle")
    return bundle


def refuse_other_preprocessing(bundle: Path, cfg: PreprocessConfig, what: str) -> None:
    """Refuse to put into ``bundle`` something measured on images preprocessed otherwise than it screens them.

    A table or INT8 file measured with ``--preprocess``/``--size`` other than the bundle's own fits inputs its
    runtime never gives (CLAHE on or off, another size, another JPEG decode rule): in a review its ranges were
    up to 1.7x off, and the bundle verified as if nothing were wrong.
    """
    diffs = cfg.differences(read_manifest(bundle).preprocess)
    if diffs:
        said = ", ".join(f"{k} {a!r} (bundle: {b!r})" for k, (a, b) in diffs.items())
        raise ConfigError(f"{bundle}: {what} would be measured on images preprocessed otherwise than the bundle "
                          f"screens them ({said}); drop --preprocess/--size to use the bundle's own, or write it "
                          "outside the bundle with --out")


def refuse_table_of_other_preprocessing(bundle: Path, table: Any, table_path: Path) -> None:
    """Refuse a calibration table whose images were preprocessed otherwise than ``bundle`` screens them."""
    why = table.preprocess_mismatch(read_manifest(bundle).preprocess)
    if why:
        raise ConfigError(f"{table_path}: its ranges were measured on images preprocessed otherwise than the bundle "
                          f"{bundle} screens them ({why}); calibrate again with the bundle's preprocessing: "
                          f"uopsl calibrate {bundle} --images ...")


_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear"}


def _graph(model: Path) -> Any:
    """The model's ONNX graph (weights stored outside the file are not read), or one clear ConfigError."""
    onnx = require("onnx", "reading the model")
    try:
        return onnx.load(str(model), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ConfigError(f"{model}: not a readable ONNX model ({exc})") from exc


def _refuse_quantized(model: Path, graph: Any) -> None:
    """An already quantized graph is no source for ranges or for another quantization: say so, not later."""
    found = sorted({n.op_type for n in graph.node} & _QDQ_OPS)
    if found:
        raise ConfigError(f"{model} is already quantized (it holds {', '.join(found)}); calibration and quantization "
                          "start from the FP32 model: give that ONNX file (or its bundle folder)")


def model_input_size(model: Path, graph: Any = None) -> int | None:
    """The static H (= W) of the model's NHWC input, or None when dynamic (``graph``: already loaded)."""
    graph = _graph(model) if graph is None else graph
    inits = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] and dims[1] == dims[2]:
        return int(dims[1])
    return None


def default_set_cache(images: str, preprocess: PreprocessConfig, max_images: int | None = None, seed: int = 0,
                      require_fov: bool = True) -> Path:
    """Where the preprocessed set of ``images`` is cached (per source, preprocessing and draw).

    The draw is part of the key, so ``calibrate`` and ``quantize`` drawing different sets from one
    folder keep one cached set each instead of rebuilding over each other.
    """
    base = user_cache_dir() / "calibration-sets"
    draw = f"|{max_images}|{seed}|{require_fov}" if (max_images, seed, require_fov) != (None, 0, True) else ""
    key = hashlib.sha256(f"{Path(images).resolve()}|{preprocess}{draw}".encode()).hexdigest()[:20]
    return base / f"{key}.npz"


def _say_stale_int8(bundle: Path, table_sha256: str) -> None:
    """Warn about the bundle's INT8 files that were quantized from another table than the one just written.

    They still run, and their parity records still hold for them (each file is validated on its own), but
    the bundle no longer has one table behind every INT8 consumer: re-make them from this one.
    """
    stale = [f for f in read_manifest(bundle).files_of("onnx")
             if f.precision.startswith("int8") and f.info.get("calibration_sha256") != table_sha256]
    if stale:
        from uopsl.export.quantize import remake_options

        # One command per file, as it was made (its variant): `uopsl quantize BUNDLE` alone re-made only the CPU
        # file, and failed without --images under the default rounding (a review).
        # All of its recorded options, the layers it kept in float among them (a review: a file made with
        # --auto-exclude 2 was re-made with those two layers quantized).
        how = "; ".join(f"`uopsl quantize {bundle} "
                        f"{remake_options(f.info, variant='trt' if f.precision == 'int8-qdq-s8' else 'cpu')}`"
                        + (f" for {f.path}" if len(stale) > 1 else "") for f in stale)
        log.warning("%s: %s %s quantized from another calibration table than the new one; re-make %s with %s "
                    "(IMAGES: the calibration images) and validate again, so that every INT8 file comes from one "
                    "table", bundle, ", ".join(f.path for f in stale), "was" if len(stale) == 1 else "were",
                    "it" if len(stale) == 1 else "them", how)


def load_set(images: str, source: ModelSource, *, max_images: int | None, seed: int, require_fov: bool,
             set_cache: Path | None, use_cache: bool) -> CalibrationSet:
    """Build (or load) the calibration set; skipped images are logged (warnings) with their reason."""
    cache = (set_cache or default_set_cache(images, source.preprocess, max_images, seed, require_fov)
             ) if use_cache else None
    calib_set = build_calibration_set(
        images, source.preprocess, max_images=max_images, seed=seed, require_fov=require_fov, cache=cache
    )
    balance = calib_set.class_balance()
    if balance:
        click.echo(f"class balance: {json.dumps(balance)}")
        if source.bundle is not None:
            classes = read_manifest(source.bundle).class_names
            absent = [c for c in classes if c not in balance]
            # labels of the set that are no class of the bundle (TVHL's npdr and pdr for a bundle's dr): said, so
            # that "no image labelled dr" does not read as "no diabetic retinopathy in the set" (a review)
            other = sorted(label for label in balance if label not in classes)
            if absent:
                log.warning("the calibration set has no image labelled %s: the ranges are measured without that "
                            "class's photographs; add some if the deployed model will see them%s",
                            ", ".join(absent), f" (its labels {', '.join(other)} are not classes of this bundle, "
                            "so they are not counted for any)" if other else "")
    return calib_set


def _calibrate_into_bundle(bundle: Path, out: Path, model: Path, calib_set: CalibrationSet, method: str,
                           percentile: float, force: bool, batch_size: int) -> CalibrationTable:
    """The table measured (or the bundle's, still current) and listed in ``bundle``'s manifest as ``out``.

    A new table is written beside its place and moved in by ``add_file`` together with the manifest that
    lists it: written in place first, a full disk before the manifest left a table failing its checksum,
    and the bundle's every model refused (a review).
    """
    from uopsl.calibration.onnx_file import model_sha256
    from uopsl.calibration.ranges import calibrate
    from uopsl.calibration.table import load_if_current
    from uopsl.export.bundle_writer import add_file

    current = None if force else load_if_current(
        out, model_sha256=model_sha256(model), set_fingerprint=calib_set.fingerprint, method=method,
        percentile=percentile if method == "percentile" else None, image_digests=calib_set.digests)
    if current is not None:
        add_file(bundle, None, out.name, "calibration", calibration_fingerprint=current.set_fingerprint)
        return current
    table = calibrate(model, calib_set, method=method, percentile=percentile, batch_size=batch_size)
    with staged_path(out) as tmp:
        table.save(tmp)
        add_file(bundle, tmp, out.name, "calibration", move=True, calibration_fingerprint=table.set_fingerprint)
    log.info("calibration table (%s, %d tensors) written to %s", method, len(table.ranges), out)
    return table


@click.command("calibrate")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--images", required=True,
              help="Calibration images: a folder, a CSV (path[,label] columns), a text list, or a .npz set.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="entropy",
              show_default=True, help="Range method.")
@click.option("--percentile", type=FiniteFloatRange(50.0, 100.0, min_open=True), default=99.99, show_default=True,
              help="Percentile of |x| kept by the percentile method, in percent (99.99, not 0.9999).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Table to write [default: BUNDLE/calibration.json, or MODEL.calibration.json].")
@click.option("--size", type=click.IntRange(1), default=None, help="Model input size (default: the model's or the manifest's).")
@click.option("--preprocess", "preprocess_from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Preprocessing from a bundle folder, a manifest.json or a JSON file of its parameters.")
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="Use at most this many images (seeded random draw).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--require-fov/--allow-no-fov", default=True, show_default=True,
              help="Skip photographs without a detected field of view (the quality gate refuses them).")
@click.option("--set-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to cache the preprocessed set. Default: a file in calibration-sets/ of the user cache folder "
                   "($UOPSL_CACHE_DIR, else $XDG_CACHE_HOME/uopsl, else ~/.cache/uopsl).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the set cache.")
@click.option("--force", is_flag=True, help="Recalibrate even if --out already matches model, set and method.")
def command(model: Path, images: str, method: str, percentile: float, out: Path | None, size: int | None,
            preprocess_from: Path | None, max_images: int | None, seed: int, batch_size: int, require_fov: bool,
            set_cache: Path | None, no_cache: bool, force: bool) -> int:
    """Measure activation ranges of MODEL (ONNX file or bundle folder) on calibration images.

    Exit code 1 when some images were skipped (each is named in a warning, with its reason) although the table
    was written; 2 for a usage or bundle error.
    """
    from uopsl.calibration.ranges import calibrate, set_warnings
    from uopsl.calibration.table import TABLE_FILE

    if option_given("percentile") and method != "percentile":
        raise click.UsageError(f"--percentile is the percentile method's cut, and --method {method} does not use it: "
                               "drop --percentile, or use --method percentile")
    if no_cache and set_cache is not None:
        raise click.UsageError("--no-cache neither reads nor writes a set cache, and --set-cache names one: "
                               "drop one of the two")

    source = resolve_model(model, size, preprocess_from)
    if out is None:
        out = source.bundle / TABLE_FILE if source.bundle else source.model.with_suffix(".calibration.json")
    check_out(source, out)
    bundle = bundle_target(source, out, "calibration")
    if bundle is not None:  # never re-sign a manifest that fails its own checksums (but the table, written anew)
        force = verify_before_rewrite(bundle, out.name) or force
        refuse_other_preprocessing(bundle, source.preprocess, "its calibration table")
    calib_set = load_set(images, source, max_images=max_images, seed=seed, require_fov=require_fov,
                         set_cache=set_cache, use_cache=not no_cache)
    before = sha256_file(out) if out.is_file() else None
    if bundle is None:
        table = calibrate(source.model, calib_set, method=method, percentile=percentile, out=out,
                          force=force, batch_size=batch_size)
    else:  # the bundle's manifest lists the table, with the set it came from
        table = _calibrate_into_bundle(bundle, out, source.model, calib_set, method, percentile, force, batch_size)
        click.echo(f"{bundle}: manifest lists {out.name}")
        after = sha256_file(out)
        if after != before:
            # Said once the table changed (measuring takes seconds to minutes): a table reused as it was
            # leaves the manifest, and so the signature, as they were.
            warn_if_signed(bundle, f"the calibration table listed now ({out.name})")
            _say_stale_int8(bundle, after)
    n_skipped = len(calib_set.skipped)
    reused = not force and before is not None and sha256_file(out) == before
    click.echo(
        f"{out}: {table.method} ranges of {len(table.ranges)} tensors from {table.num_images} images "
        f"({n_skipped} skipped); set fingerprint {table.set_fingerprint[:16]}"
        # The fingerprint covers the pixels, not the labels or the files skipped: the table's own notes (class
        # balance, skipped count) stay those of the run that measured it, which the counts above may not match.
        + ("; ranges reused from the table already there (same model, images and method; its notes describe the "
           "run that measured it, --force to measure again)" if reused else "")
    )
    for said in set_warnings(table.num_images, int(table.notes.get("skipped_images") or 0)):
        log.warning("%s: %s", out, said)
    return 1 if n_skipped else 0
