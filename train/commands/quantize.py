"""``uopsl quantize``: FP32 ONNX + calibration table -> INT8 QDQ ONNX (CPU u8 or TensorRT s8 variant).

MODEL is an ONNX file or a bundle folder. Defaults: the table next to the
model (``BUNDLE/calibration.json`` or ``MODEL.calibration.json``); the output
``model.int8.onnx`` (cpu) or ``model.int8.trt.onnx`` (trt) beside the model.
A JSON record of the result (variant, excluded nodes, per-layer sensitivities)
is written next to the output as ``<out>.quantize.json``. An output written
into MODEL's bundle is added to the bundle's manifest (with its checksum and
``manifest_info``), replacing an earlier entry of the same name.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, replace
from pathlib import Path

import click

from uopsl.calibration.table import TABLE_FILE, CalibrationTable
from uopsl.export.quantize import ROUNDINGS, VARIANTS, QuantizeConfig
from uopsl.runtime.bundle import verify_before_rewrite
from uopsl.runtime.clikit import option_given
from uopsl.runtime.errors import ConfigError
from uopsl.calibration.onnx_file import model_sha256
from uopsl.calibration.ranges import FEW_IMAGES, set_warnings
from uopsl.runtime.fsio import sha256_file, staged_path, write_json
from uopsl.runtime.signing import warn_if_signed
from uopsl.train.commands.calibrate import (
    bundle_target,
    check_out,
    load_set,
    refuse_other_preprocessing,
    refuse_table_of_other_preprocessing,
    resolve_model,
)

log = logging.getLogger(__name__)


def default_output(model: Path, variant: str) -> Path:
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem
    return model.with_name(f"{stem}.int8.onnx" if variant == "cpu" else f"{stem}.int8.trt.onnx")


def record_path(out: Path) -> Path:
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{stem}.quantize.json")


def warn_qat_defaults(bundle: Path | None, bias_correction: bool, rounding: str) -> None:
    """Warn when a ``uopsl qat`` model gets bias correction or GPTQ/AdaRound rounding by default.

    QAT fine-tunes under simulated nearest rounding without bias correction, towards the ORIGINAL model's
    outputs. Both steps pull each layer towards the QAT model's own FP32 outputs, which QAT moved away from
    the original's, and undo part of what it learned (docs/results.md, session 46). An option given on the
    command line is the user's choice and is not warned about.
    """
    from uopsl.runtime.bundle import TEACHER_DIGEST_NOTE, read_manifest  # not train.checkpoint: it needs torch

    if bundle is None or not read_manifest(bundle).notes.get(TEACHER_DIGEST_NOTE):
        return
    defaults = []
    if bias_correction and not option_given("bias_correction"):
        defaults.append("--bias-correction")
    if rounding != "nearest" and not option_given("rounding"):
        defaults.append(f"--rounding {rounding}")
    if defaults:
        log.warning("%s comes from a `uopsl qat` checkpoint, which was fine-tuned for nearest rounding without bias "
                    "correction; the defaults %s pull it towards its own FP32 outputs, not the original model's "
                    "(on the demo model the plain INT8 file's logits sat 19.9 dB from the original's, with them "
                    "16.8-17.1 dB). Give --rounding nearest --no-bias-correction, or give either option to keep it",
                    bundle, " and ".join(defaults))


def _refuse_unused_options(images: str | None, rounding: str, auto_exclude: int) -> None:
    """A usage error for an option given on the command line that this run would not use (the user meant
    something by it: a silently ignored --max-images draws another set than they think)."""
    ctx = click.get_current_context()
    unused = [(name, why) for name, why in (
        ("max_images", "draws from --images, and none are given"),
        ("seed", "seeds the --max-images draw from --images, and none are given"),
        ("require_fov", "filters --images, and none are given"),
        ("size", "sizes --images, and none are given"),
        ("preprocess_from", "preprocesses --images, and none are given"),
    ) if images is None and option_given(name)]
    if rounding == "nearest":
        unused += [(n, "is for --rounding gptq or adaround") for n in ("rounding_images", "adaround_iterations")
                   if option_given(n)]
    elif rounding == "gptq" and option_given("adaround_iterations"):
        unused.append(("adaround_iterations", "is for --rounding adaround"))
    if auto_exclude == 0 and option_given("sensitivity_images"):
        unused.append(("sensitivity_images", "is for the --auto-exclude sensitivity pass, which is off"))
    if unused:
        opts = {p.name: p.opts[-1] if p.name != "require_fov" else "--require-fov/--allow-no-fov"
                for p in ctx.command.params}
        raise click.UsageError("; ".join(f"{opts.get(n, n)} {why}" for n, why in unused) + ": drop it, or give "
                               "what it applies to")


@click.command("quantize")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--table", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibration table [default: BUNDLE/calibration.json or MODEL.calibration.json].")
@click.option("--variant", type=click.Choice(VARIANTS), default=QuantizeConfig.variant, show_default=True,
              help="cpu: u8 activations, s8 weights (ORT/OpenVINO on x86); trt: s8 symmetric, zero point 0.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--exclude", multiple=True,
              help="Node name or op type to keep in float (repeat, or separate with commas); @head: the head "
                   "after the encoder (kept in float by default).")
@click.option("--auto-exclude", type=click.IntRange(0), default=0, show_default=True,
              help="Keep the N layers whose quantization hurts the outputs most in float (needs --images).")
@click.option("--images", default=None,
              help="Calibration images for weight rounding, bias correction and --auto-exclude (same forms as "
                   "`calibrate`; give the same --max-images, --seed and --allow-no-fov to draw the same set).")
@click.option("--max-images", type=click.IntRange(1), default=None, help="Use at most this many of --images "
              "(seeded random draw, as `calibrate` draws them).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --max-images draw.")
@click.option("--require-fov/--allow-no-fov", default=True, show_default=True,
              help="Skip photographs of --images without a detected field of view (as `calibrate` does).")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Correct each layer's per-channel output mean on the calibration images (needs --images).")
@click.option("--rounding", type=click.Choice(ROUNDINGS), default=QuantizeConfig.rounding,
              show_default=True,
              help="How weights go onto the int8 grid: nearest; gptq (error feedback through each layer's inputs on "
                   "the calibration images, seconds to a minute); adaround (optimised up/down per weight, minutes). "
                   "gptq/adaround need --images.")
@click.option("--rounding-images", type=click.IntRange(1), default=32, show_default=True,
              help="Calibration images used by --rounding gptq/adaround.")
@click.option("--adaround-iterations", type=click.IntRange(1), default=500, show_default=True,
              help="AdaRound optimisation steps per layer.")
@click.option("--float-head/--quantize-head", default=True, show_default=True,
              help="Keep the layers after the encoder (token projection, site attention, prototypes) in float.")
@click.option("--sensitivity-images", type=click.IntRange(1), default=32, show_default=True,
              help="Images used by the --auto-exclude sensitivity pass.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights, for x86 CPUs without VNNI (cpu variant).")
@click.option("--size", type=click.IntRange(1), default=None, help="Model input size for --images.")
@click.option("--preprocess", "preprocess_from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Preprocessing for --images from a bundle folder, a manifest.json or a JSON file.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="INT8 model to write [default: model.int8.onnx / model.int8.trt.onnx beside MODEL].")
def command(model: Path, table: Path | None, variant: str, per_channel: bool, exclude: tuple[str, ...],
            auto_exclude: int, images: str | None, max_images: int | None, seed: int, require_fov: bool,
            bias_correction: bool, rounding: str, rounding_images: int,
            adaround_iterations: int,
            float_head: bool,
            sensitivity_images: int, reduce_range: bool, size: int | None, preprocess_from: Path | None,
            out: Path | None) -> int:
    """Quantize MODEL (ONNX file or bundle folder) to INT8 QDQ with its calibration table."""
    from uopsl.export.quantize import CalibrationImagesNeeded, quantize_model

    _refuse_unused_options(images, rounding, auto_exclude)

    source = resolve_model(model, size, preprocess_from)
    out = out or default_output(source.model, variant)
    if table is None:
        table = source.bundle / TABLE_FILE if source.bundle else source.model.with_suffix(".calibration.json")
    check_out(source, out, table)
    bundle = bundle_target(source, out, "onnx")
    if bundle is not None:  # before any work: never re-sign a manifest that fails its own checksums
        verify_before_rewrite(bundle, out.name)  # the INT8 file is written anew either way
    warn_qat_defaults(source.bundle, bias_correction, rounding)
    calib_table = CalibrationTable.load(table, model_sha256=model_sha256(source.model))
    for said in set_warnings(calib_table.num_images, int(calib_table.notes.get("skipped_images") or 0)):
        log.warning("%s: %s", table, said)
    if bundle is not None:  # into the bundle: the table's ranges and the --images set must be the bundle's pixels
        refuse_table_of_other_preprocessing(bundle, calib_table, table)
        if images is not None:
            refuse_other_preprocessing(bundle, source.preprocess, "its INT8 file")
    config = QuantizeConfig(
        variant=variant,
        per_channel=per_channel,
        exclude=tuple(x.strip() for item in exclude for x in item.split(",") if x.strip()),
        auto_exclude=auto_exclude,
        sensitivity_images=sensitivity_images,
        reduce_range=reduce_range,
        float_head=float_head,
        bias_correction=bias_correction,
        rounding=rounding,  # type: ignore[arg-type]  # click.Choice checked it
        rounding_images=rounding_images,
        adaround_iterations=adaround_iterations,
    )
    calib_set = None
    if images is not None:
        calib_set = load_set(images, source, max_images=max_images, seed=seed, require_fov=require_fov,
                             set_cache=None, use_cache=True)
        if calib_set.fingerprint != calib_table.set_fingerprint:
            log.warning("--images is not the set the table was calibrated on (fingerprints differ); "
                        "weight rounding, bias correction and the sensitivity pass use it anyway (the manifest "
                        "records what each step drew from it, fitted_on)")
    with contextlib.ExitStack() as stack:
        # Into a bundle, the model is written beside its place and moved in by add_file together with the
        # manifest that lists it: written in place first, a full disk or a kill before the manifest left a
        # listed file failing its checksum, and every model of the bundle refused (a review).
        target = stack.enter_context(staged_path(out)) if bundle is not None else out
        try:
            result = quantize_model(source.model, calib_table, target, config, calib_set=calib_set, shown_as=out)
        except CalibrationImagesNeeded as exc:  # in the command's own words (the library names the API's too)
            needs = exc.needs
            raise ConfigError(f"{' and '.join(needs)} use{'s' if len(needs) == 1 else ''} the calibration images: "
                              "pass them with --images (the set `uopsl calibrate` was given), or turn "
                              f"{'it' if len(needs) == 1 else 'them'} off with "
                              + " and ".join(o for o, on in (("--no-bias-correction", bias_correction),
                                                             ("--rounding nearest", rounding != "nearest")) if on)
                              ) from None
        # Which table file (a later recalibration tells), and the file's own name rather than the temporary's.
        result = replace(result, path=str(out), table_sha256=sha256_file(table))
        if bundle is not None:  # listed with its checksum, so verify, validate and the backends see it
            from uopsl.export.bundle_writer import add_file

            add_file(bundle, target, out.name, "onnx", result.precision,  # type: ignore[arg-type]
                     info=result.manifest_info(), move=True)
    # After the file: a record never describes a model that is not there.
    write_json(record_path(out), {"config": asdict(config), "result": result.to_dict(),
                                  "manifest_info": result.manifest_info()})
    if bundle is not None:
        # Said once the file is listed (as calibrate does): a command that stops earlier voids nothing.
        warn_if_signed(bundle, f"an INT8 file listed now ({out.name})")
        click.echo(f"{bundle}: manifest lists {out.name} ({result.precision}); "
                   f"run `uopsl validate {bundle} ...` before a device's `auto` backend will use it")
    click.echo(f"{out}: {result.precision} ({'per-channel' if per_channel else 'per-tensor'} weights, "
               f"{result.quantize_nodes} QuantizeLinear) from {calib_table.method} ranges")
    def drawn(step: str) -> str:
        """How many images a step fitted on (a review: "on the calibration images" came right after the
        warning that --images was not the table's set)."""
        n = (result.fitted_on.get(step) or {}).get("images")
        return f"{n} images of --images" if isinstance(n, int) else "--images"

    if result.rounded_layers:
        click.echo(f"{result.rounding}: rounding of {result.rounded_layers} layers chosen on {drawn('rounding')}")
    if result.bias_corrected:
        click.echo(f"bias correction: {result.bias_corrected} layers corrected on {drawn('bias_correction')}")
    n_sens = (result.fitted_on.get("sensitivity") or {}).get("images")
    if result.auto_excluded and isinstance(n_sens, int) and n_sens < FEW_IMAGES:
        log.warning("--auto-exclude ranked the layers on %d image%s, fewer than %d: the ranking may not hold for "
                    "the photographs the device will see; give more --images (or --sensitivity-images)", n_sens,
                    "" if n_sens == 1 else "s", FEW_IMAGES)
    if result.excluded_nodes:
        auto = set(result.auto_excluded)
        click.echo(f"kept in float ({len(result.excluded_nodes)} nodes): "
                   + ", ".join(n + (" (auto-excluded)" if n in auto else "") for n in result.excluded_nodes))
    for s in result.sensitivities[: max(auto_exclude, 5)]:
        click.echo(f"  sensitivity {s.node} ({s.op_type}): max|dprob| {s.probs_max_abs:.2e}, "
                   f"logits cos {s.logits_cosine:.6f}")
    return 0
