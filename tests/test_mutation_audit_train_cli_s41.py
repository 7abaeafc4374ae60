"""Mutation audit (session 41) of the training-side CLI commands' option handling.

Audited: ``train/commands/common.py`` (dataset specs, the split/fold selectors, the class and ``--out`` checks,
the shared training options), ``train/commands/build_engine.py``, ``train/commands/calibrate.py``,
``train/commands/quantize.py`` and ``train/commands/validate.py``: what each refuses (one line, exit 2, never a
silently "corrected" value), whether each option reaches the library function it names, and the documented
defaults. Single-point mutants were applied to a scratch copy of one module at a time and run against the tests
that exercise it; each test here pins a behaviour that a mutant slipped past them with (its docstring names the
mutant id(s) of the audit's list).

No model is trained or built: the commands run in-process (``click.testing.CliRunner`` on the command, or
``main_entry`` for the exit code and the one-line error) and the heavy library function (``build_engine``,
``calibrate``, ``quantize_model``, ``validate_bundle``) is replaced by a recorder that keeps what it received
and stops the run. TensorRT and CUDA are small stand-ins (no GPU). Every expected value is worked out by hand
from the option's help text, the module docstring or the arithmetic written in the test.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from fixtures_data import make_folder_dataset, write_image
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest, describe_file, read_manifest, write_manifest
from uopsl.runtime.clikit import LazyGroup, main_entry
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.preprocess import PreprocessConfig


class _Stop(Exception):
    """Raised by a recorder once it has what the command passed on: nothing heavy runs."""


def _uopsl(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``uopsl ARGS`` in this process, with the CLI's exit-code mapping (ConfigError and usage errors: 2)."""
    group = LazyGroup(name="uopsl", lazy={
        "build-engine": "uopsl.train.commands.build_engine:command",
        "calibrate": "uopsl.train.commands.calibrate:command",
        "quantize": "uopsl.train.commands.quantize:command",
        "validate": "uopsl.train.commands.validate:command",
    })
    rc = main_entry(group, args, prog_name="uopsl")
    out = capsys.readouterr()
    return rc, out.out, out.err


def _run(command: click.Command, args: list[str]) -> Any:
    """The command run by CliRunner; returns click's Result (its ``exception`` is the recorder's _Stop)."""
    return CliRunner().invoke(command, args, catch_exceptions=True)


def _placeholder_bundle(root: Path, *, qdq: bool = False, table: bool = False, size: int = 32) -> Path:
    """A bundle whose files are placeholder bytes with real checksums (nothing reads them as models here)."""
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"fp32 stand-in")
    entries = [FileEntry("model.onnx", "onnx", "fp32")]
    if qdq:
        (root / "model.int8.onnx").write_bytes(b"qdq stand-in")
        entries.append(FileEntry("model.int8.onnx", "onnx", "int8-qdq-s8"))
    if table:
        (root / "calibration.json").write_text("{}", encoding="utf-8")
    write_manifest(root, Manifest(classes=(ClassSpec("normal"), ClassSpec("dr", referable=True)), head="sigmoid",
                                  preprocess=PreprocessConfig(size=size),
                                  files=tuple(describe_file(root, f) for f in entries)))
    return root


# -- common.py: dataset specs ------------------------------------------------------------------------------------
def test_an_existing_folder_whose_name_holds_a_colon_and_an_equals_sign_is_a_path_not_options(tmp_path: Path) -> None:
    """C05: without the "exists as written" test, ``folder:DIR`` for a folder named ``scans:set=v2`` was cut into
    the path ``scans`` and an option ``set=v2``: the user's existing folder was refused as missing (or read as
    another folder with an option they never wrote)."""
    from uopsl.train.commands.common import load_source, parse_spec

    root = make_folder_dataset(tmp_path / "scans:set=v2", {"normal": 2, "dr": 3})
    assert parse_spec(f"folder:{root}") == ("folder", root, {})
    src = load_source(f"folder:{root}")
    assert len(src) == 5 and src.root == root


def test_spaces_after_the_commas_of_a_spec_are_not_part_of_the_option_names(tmp_path: Path) -> None:
    """C07: a spec typed ``...:classes=normal+dr, modality=fundus`` (a space after the comma, as one writes a
    list) was refused with "has no option ' modality'", an error that shows nothing wrong to the eye."""
    from uopsl.train.commands.common import load_source, parse_spec

    root = make_folder_dataset(tmp_path / "photos", {"normal": 2, "dr": 3})
    assert parse_spec(f"folder:{root}:classes=normal+dr, modality=fundus")[2] == {"classes": "normal+dr",
                                                                                 "modality": "fundus"}
    src = load_source(f"folder:{root}:classes=normal+dr, modality=fundus")
    assert len(src) == 5 and src.label_space.classes == ("normal", "dr")


@pytest.mark.parametrize("selector", ["fold=0/3", "notfold=0/3", "fold=4/3"])
def test_a_fold_number_outside_1_to_k_is_refused(tmp_path: Path, selector: str) -> None:
    """C16 (and the upper end): folds are numbered 1..K; ``fold=0/3`` under a mutant that allowed 0 took
    ``folds[-1]``, the third fold, without a word, so a user counting from 0 trained or tested on a part
    other than the one they named."""
    from uopsl.train.commands.common import load_source

    root = make_folder_dataset(tmp_path / "photos", {"normal": 3, "dr": 3})
    with pytest.raises(ConfigError, match=rf"{selector.split('=')[0]}={selector.split('=')[1]}: I must be in 1\.\.K"):
        load_source(f"folder:{root}:{selector}")



def test_a_class_only_the_validation_images_show_is_warned_about_not_refused(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """C26, C44: a named class with no training image but some validation images is trained from its description
    (a warning, check_classes_in_data's docstring); a mutant that counted it missing refused a run the held-out
    images made meaningful."""
    import logging

    from uopsl.train.commands.common import check_classes_in_data, load_source

    train = load_source(f"folder:{make_folder_dataset(tmp_path / 'train', {'normal': 2, 'dr': 2})}")
    val = load_source(f"folder:{make_folder_dataset(tmp_path / 'val', {'normal': 1, 'amd': 2})}")
    with caplog.at_level(logging.WARNING):
        check_classes_in_data([(train, "fundus")], ("normal", "dr", "amd"), held_out=[(val, "fundus")])
    assert "no training image is labelled amd (the validation images have 2 of amd)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="no training image is labelled amd"):
        check_classes_in_data([(train, "fundus")], ("normal", "dr", "amd"))  # and without them: refused
    assert "validation images have" not in caplog.text  # C44: not said to be in validation images it has none of


def test_an_init_other_than_imagenet_is_kept_as_given_whatever_the_backbone(tmp_path: Path) -> None:
    """C30: only ``--init imagenet`` depends on the backbone having offline weights; ``random`` or a weights
    file must come back unchanged (no click context is even needed), where a mutant (``or`` -> ``and``) sent
    them into the imagenet handling and refused or replaced the user's weights file."""
    from uopsl.train.commands.common import resolve_init

    weights = str(tmp_path / "model.safetensors")
    for backbone in ("resnet18", "efficientnet_lite0"):
        assert resolve_init(backbone, "random") == "random"
        assert resolve_init(backbone, weights) == weights
    assert resolve_init("efficientnet_lite0", "imagenet") == "imagenet"  # it has the weights package


def test_an_out_equal_to_the_data_folder_is_refused_and_a_sibling_folder_is_not(tmp_path: Path) -> None:
    """C32, C33: ``--out`` equal to the data folder is refused (the report would be read as a class next time);
    a folder beside it whose name merely starts alike (``photos2`` next to ``photos``) is not inside it and must
    be accepted; mutants dropped the first check or compared bare prefixes."""
    from uopsl.train.commands.common import check_out_outside_data, load_source

    src = load_source(f"folder:{make_folder_dataset(tmp_path / 'photos', {'normal': 1, 'dr': 1})}")
    with pytest.raises(ConfigError, match="is inside the data folder"):
        check_out_outside_data(tmp_path / "photos", src)
    with pytest.raises(ConfigError, match="is inside the data folder"):
        check_out_outside_data(tmp_path / "photos" / "report", src)
    check_out_outside_data(tmp_path / "photos2", src)
    check_out_outside_data(tmp_path / "report", src)


def test_a_class_listed_twice_is_refused(tmp_path: Path) -> None:
    """C35: ``--classes normal,dr,dr`` must be refused, not trained as a model with two ``dr`` outputs."""
    from uopsl.train.commands.common import split_classes

    assert split_classes(" normal , dr ") == ("normal", "dr") and split_classes(None) is None
    with pytest.raises(ConfigError, match="a class is listed twice in 'normal,dr,dr'"):
        split_classes("normal,dr,dr")


def _train_options_command() -> click.Command:
    from uopsl.train.commands.common import train_options

    @click.command()
    @train_options
    def cmd(**kw: Any) -> None:
        click.echo(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}, sort_keys=True))

    return cmd


def test_the_shared_training_options_have_the_documented_defaults_and_ranges() -> None:
    """C36, C39, C40: pretrain and finetune share these options; the defaults are the ``--help`` ones (10
    epochs, batch 16, lr 1e-3 / 1e-4, augmentation on, seed 0, device auto, a checkpoint every 50 steps),
    ``--epochs 0`` is a usage error (exit 2) rather than a run that trains nothing, and ``--save-every 0`` (epoch
    ends only) is allowed."""
    cmd = _train_options_command()
    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"epochs": 10, "batch_size": 16, "lr": 1e-3, "lr_encoder": 1e-4,
                                      "freeze_encoder": False, "augment": True, "seed": 0, "device": "auto",
                                      "save_every": 50, "cache_dir": None}
    for bad in (["--epochs", "0"], ["--batch-size", "0"], ["--save-every", "-1"]):
        res = CliRunner().invoke(cmd, bad)
        assert res.exit_code == 2 and bad[0] in res.output, (bad, res.output)
    res = CliRunner().invoke(cmd, ["--save-every", "0", "--no-augment"])
    assert res.exit_code == 0 and json.loads(res.output)["save_every"] == 0 and not json.loads(res.output)["augment"]

# -- build_engine.py ---------------------------------------------------------------------------------------------
def test_a_dla_batch_of_zero_is_refused_not_raised_to_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """B05: the one batch size given with --dla-core is the engine's fixed batch as given; a mutant that took
    the largest of it and the DLA default turned ``--max-batch 0`` (a typo) into a batch-1 engine without a
    word, where the value must be refused (exit 2) before TensorRT is even loaded."""
    from uopsl.train.commands.build_engine import resolve_batches

    assert resolve_batches(None, None, 4, 0) == (4, 4, 4)  # one value given: all three take it
    assert resolve_batches(None, None, 0, 0) == (0, 0, 0)  # not raised: the build config refuses it
    bundle = _placeholder_bundle(tmp_path / "b")
    rc, _out, err = _uopsl(["build-engine", str(bundle), "--dla-core", "0", "--max-batch", "0"], capsys)
    # Since session 45 the command line refuses it itself (click's range check names the option).
    # click's usage error: the usage line, a help hint and the one error line; no traceback.
    assert rc == 2 and "Error: Invalid value for '--max-batch': 0 is not in the range x>=1." in err, err
    assert "Traceback" not in err


def test_auto_int8_on_tensorrt_11_without_a_qdq_model_asks_for_one_even_with_calibration_data(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """B10: TensorRT 11 has no implicit INT8, so ``auto`` there must never pick a legacy route from a
    calibration table; a mutant that did (``<= 11``) sent the user to an implicit-INT8 error about --int8-mode
    instead of saying that the Q/DQ model is missing and how to make it."""
    from uopsl.train.commands.build_engine import choose_inputs

    bundle = _placeholder_bundle(tmp_path / "b", table=True)
    manifest = read_manifest(bundle)
    with pytest.raises(BundleError, match=r"INT8 on TensorRT 11\.x needs the TensorRT Q/DQ model") as info:
        choose_inputs(bundle, manifest, "int8", "auto", 11, None, None)
    assert "calibration data" not in str(info.value)  # 11.x: no legacy route to offer
    # 10.x with the same bundle: the table is usable, the legacy-cache route is taken from the FP32 file.
    caplog.set_level("WARNING", logger="uopsl.train.commands.build_engine")
    assert choose_inputs(bundle, manifest, "int8", "auto", 10, None, None) == (bundle / "model.onnx", "legacy-cache")
    # ... and says that route is implicit quantization, deprecated, and how to make the Q/DQ model (session 45).
    assert "TensorRT 10 deprecates and 11 removes" in caplog.text and "--variant trt" in caplog.text
    caplog.clear()
    choose_inputs(bundle, manifest, "int8", "auto", 8, None, None)
    assert "deprecates" not in caplog.text  # 8.x: the route JetPack 5 documents


def test_a_calib_batch_of_zero_is_refused_before_tensorrt_loads(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """B14: ``--calib-batch 0`` (the option is a plain int) must be one line, exit 2; with the check loosened to
    ``< 0`` it went on to load TensorRT and, on the calibrator route, to ask for batches of zero images."""
    bundle = _placeholder_bundle(tmp_path / "b")
    rc, _out, err = _uopsl(["build-engine", str(bundle), "--calib-batch", "0"], capsys)
    # Since session 45 the command line's range check (click's usage error) refuses it.
    assert rc == 2 and "Error: Invalid value for '--calib-batch': 0 is not in the range x>=1." in err, err


def test_no_calibration_images_and_a_negative_dla_core_are_refused_before_tensorrt_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Session 43: ``--calib-max-images 0`` went on to ask for TensorRT (and, with it, calibrated on no
    photograph), and ``--dla-core -1`` logged a fixed-batch plan for core -1 before the refusal."""
    bundle = _placeholder_bundle(tmp_path / "b")
    rc, _out, err = _uopsl(["build-engine", str(bundle), "--calib-max-images", "0"], capsys)
    assert rc == 2 and "Error: Invalid value for '--calib-max-images': 0 is not in the range x>=1." in err, err
    rc, _out, err = _uopsl(["build-engine", str(bundle), "--dla-core", "-1"], capsys)
    assert rc == 2 and "'--dla-core': -1 is not in the range x>=0" in err, err
    assert "fixed batch" not in err


class _BuildRecorder:
    """Stand-ins for TensorRT, CUDA and ``build_engine``: keeps the config and paths the command passed on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, major: int = 10, version: str = "10.3.0") -> None:
        from uopsl.export import tensorrt
        from uopsl.runtime import cuda_binding, trt_compat

        self.calls: dict[str, Any] = {"device_properties": []}
        api = types.SimpleNamespace(major=major, version_text=version, implicit_int8=major < 11)
        recorder = self

        class Cuda:
            def device_properties(self, device: int) -> tuple[str, str]:
                recorder.calls["device_properties"].append(device)
                return "Orin", "8.7"

        def build(onnx: Path, out: Path, config: Any, calibration: Any, *, cuda: Any) -> Any:
            recorder.calls.update(onnx=onnx, out=out, config=config, calibration=calibration)
            raise _Stop

        monkeypatch.setattr(trt_compat, "load_tensorrt", lambda purpose: (object(), api))
        monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: Cuda())
        monkeypatch.setattr(tensorrt, "build_engine", build)

    def run(self, args: list[str]) -> Any:
        from uopsl.train.commands.build_engine import command

        result = _run(command, args)
        assert isinstance(result.exception, _Stop), (result.output, result.exception)
        return self.calls["config"]


def test_every_builder_option_reaches_the_engine_build_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B21, B24, B38 (B17-B20 are caught elsewhere too): each builder option must reach ``EngineBuildConfig`` as
    given (a dropped one builds another engine than asked: weakly typed instead of --strongly-typed, no FP16
    fallback, the default optimisation level, an engine that is not version compatible, or one timed and built on
    GPU 0 when --device 1 was named); the default timing cache is named after the TensorRT version and that device's
    compute capability."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _BuildRecorder(monkeypatch)
    bundle = _placeholder_bundle(tmp_path / "b", qdq=True)
    config = rec.run([str(bundle), "--precision", "int8", "--no-strongly-typed", "--fp16-fallback", "--opt-level",
                      "5", "--version-compatible", "--device", "1", "--workspace", "512"])
    assert config.strongly_typed is False and config.fp16_fallback is True
    assert config.builder_optimization_level == 5 and config.version_compatible is True
    assert config.device == 1 and rec.calls["device_properties"] == [1]
    assert config.workspace_mib == 512
    assert config.timing_cache == str(tmp_path / "cache" / "trt-timing-10.3.0-sm87.cache")
    assert rec.calls["out"] == bundle / "model.int8.engine" and rec.calls["onnx"] == bundle / "model.int8.onnx"
    assert config.int8_mode == "qdq"  # auto, resolved: 10.x with a Q/DQ model and no calibration data


def test_the_builder_defaults_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B01, B30-B33 (caught elsewhere too; pinned here in one place): without options an engine is FP16, batch
    1/8/16, a 1024 MiB workspace, GPU 0, weakly typed left to the builder (None), GPU fallback on, the timing cache
    in the user cache folder; a mutated default built another engine than ``--help`` promises."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _BuildRecorder(monkeypatch)
    bundle = _placeholder_bundle(tmp_path / "b")
    config = rec.run([str(bundle)])
    assert (config.precision, config.min_batch, config.opt_batch, config.max_batch) == ("fp16", 1, 8, 16)
    assert config.workspace_mib == 1024 and config.device == 0 and rec.calls["device_properties"] == [0]
    assert config.strongly_typed is None and config.fp16_fallback is False and config.version_compatible is False
    assert config.builder_optimization_level is None and config.gpu_fallback is True and config.dla_core is None
    assert config.timing_cache == str(tmp_path / "cache" / "trt-timing-10.3.0-sm87.cache")


def test_a_named_timing_cache_is_used_and_no_timing_cache_means_none(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """B22, B23: ``--timing-cache FILE`` is the file used (not the per-device default), and
    ``--no-timing-cache`` reads and writes none; a mutant that ignored either wrote the user's measured
    timings elsewhere, or read a cache the user had asked to bypass."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _BuildRecorder(monkeypatch)
    bundle = _placeholder_bundle(tmp_path / "b")
    mine = tmp_path / "mine.cache"
    assert rec.run([str(bundle), "--timing-cache", str(mine)]).timing_cache == str(mine)
    assert rec.calls["device_properties"] == []  # no default to name: the device is not asked
    assert rec.run([str(bundle), "--no-timing-cache"]).timing_cache is None



@pytest.mark.parametrize(("method", "algorithm"), [("minmax", "minmax"), ("entropy", "entropy2"),
                                                   ("percentile", "entropy2")])
def test_a_tables_ranges_go_to_tensorrt_under_the_calibrator_its_method_matches(tmp_path: Path, method: str,
                                                                               algorithm: str) -> None:
    """B26, B41: the legacy-cache route hands the table's ranges to TensorRT 8.x as a calibration cache whose header
    names a calibrator; a minmax table must say MinMax (TensorRT refuses a cache of another algorithm type), the
    others EntropyCalibration2. Amax per tensor: max(|min|, |max|) of its range."""
    from uopsl.calibration.table import CalibrationTable
    from uopsl.runtime.fsio import sha256_file
    from uopsl.train.commands.build_engine import _legacy_calibration

    bundle = _placeholder_bundle(tmp_path / "b")
    CalibrationTable(ranges={"image": (0.0, 255.0), "conv": (-6.0, 3.0)}, method=method,
                     model_sha256=sha256_file(bundle / "model.onnx"), set_fingerprint="f" * 64, num_images=64,
                     percentile=99.9 if method == "percentile" else None).save(bundle / "calibration.json")
    cal = _legacy_calibration(bundle, read_manifest(bundle), "legacy-cache", bundle / "model.onnx", None, None, 4,
                              None)
    assert cal.algorithm == algorithm and cal.batch_size == 4
    assert dict(cal.amax) == {"image": 255.0, "conv": 6.0}
    # B41: a --calib-cache that does not exist (yet) is no cache to use: the table's ranges are.
    absent = _legacy_calibration(bundle, read_manifest(bundle), "legacy-cache", bundle / "model.onnx",
                                 tmp_path / "absent.cache", None, 4, None)
    assert absent.cache_file is None and dict(absent.amax) == {"image": 255.0, "conv": 6.0}


def test_fewer_calibration_images_than_one_batch_are_refused(tmp_path: Path) -> None:
    """B25: the calibrator route needs at least one whole batch; a mutant that only refused an empty set handed
    TensorRT 3 images in batches of 4, i.e. no batch at all, and the "calibrated" engine had no ranges."""
    from uopsl.calibration.dataset import CalibrationSet
    from uopsl.train.commands.build_engine import _legacy_calibration

    bundle = _placeholder_bundle(tmp_path / "b")
    manifest = read_manifest(bundle)
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    npz = CalibrationSet.from_images(images, manifest.preprocess).save(tmp_path / "set.npz")
    with pytest.raises(ConfigError, match="3 usable calibration images, fewer than one batch of 4"):
        _legacy_calibration(bundle, manifest, "legacy-calibrator", bundle / "model.onnx", None, npz, 4, None)
    cal = _legacy_calibration(bundle, manifest, "legacy-calibrator", bundle / "model.onnx", None, npz, 3, None)
    assert cal.batch_size == 3

# -- calibrate.py and quantize.py --------------------------------------------------------------------------------
def _onnx(path: Path, size: int = 64) -> Path:
    """A one-node FP32 ONNX model with a static ``size`` px NHWC uint8 input (enough for the commands' checks)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["image"], ["probs"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", size, size, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _onnx_bundle(root: Path, size: int = 64) -> Path:
    """A bundle whose FP32 file is :func:`_onnx`'s model, preprocessing at the model's size."""
    root.mkdir(parents=True)
    _onnx(root / "model.onnx", size)
    write_manifest(root, Manifest(classes=(ClassSpec("normal"), ClassSpec("dr", referable=True)), head="sigmoid",
                                  preprocess=PreprocessConfig(size=size),
                                  files=(describe_file(root, FileEntry("model.onnx", "onnx", "fp32")),)))
    return root


class _CalibRecorder:
    """Stand-ins for the calibration set builder and ``calibrate``/``quantize_model``: they record and stop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from uopsl.calibration import ranges
        from uopsl.export import quantize
        from uopsl.train.commands import calibrate as calibrate_cmd

        self.calls: dict[str, Any] = {}
        recorder = self

        def build_set(images: str, preprocess: Any, **kw: Any) -> Any:
            recorder.calls["set"] = {"images": images, "preprocess": preprocess, **kw}
            return types.SimpleNamespace(class_balance=lambda: {}, skipped=[], fingerprint="f" * 64)

        def stop(name: str) -> Callable[..., Any]:
            def record(*args: Any, **kw: Any) -> Any:
                recorder.calls[name] = (args, kw)
                raise _Stop
            return record

        monkeypatch.setattr(calibrate_cmd, "build_calibration_set", build_set)
        monkeypatch.setattr(ranges, "calibrate", stop("calibrate"))
        monkeypatch.setattr(quantize, "quantize_model", stop("quantize"))

    def run(self, command_name: str, args: list[str]) -> dict[str, Any]:
        from uopsl.train.commands import calibrate as calibrate_cmd
        from uopsl.train.commands import quantize as quantize_cmd

        command = calibrate_cmd.command if command_name == "calibrate" else quantize_cmd.command
        result = _run(command, args)
        assert isinstance(result.exception, _Stop), (result.output, result.exception)
        return self.calls


def _table_for(model: Path, path: Path) -> Path:
    """A calibration table of ``model`` (matched by its sha256), as `uopsl calibrate` would leave it."""
    from uopsl.calibration.onnx_file import model_sha256
    from uopsl.calibration.table import CalibrationTable

    CalibrationTable(ranges={"image": (0.0, 255.0), "probs": (0.0, 255.0)}, method="entropy",
                     model_sha256=model_sha256(model), set_fingerprint="f" * 64, num_images=64).save(path)
    return path


def test_calibrate_size_overrides_the_bundles_and_a_size_the_model_cannot_take_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """K04, K05: ``--size`` overrides the manifest's size (resolve_model's docstring), and a size the model's
    static input cannot take is one line, exit 2. A mutant that kept the manifest's size ignored ``--size 48``
    on a 64 px bundle without a word; one without the check measured a plain model's ranges on 48 px images
    that the model cannot even take."""
    bundle = _onnx_bundle(tmp_path / "b", 64)
    model = _onnx(tmp_path / "m.onnx", 64)
    for target in (bundle, model):
        rc, _out, err = _uopsl(["calibrate", str(target), "--images", str(tmp_path), "--size", "48"], capsys)
        assert rc == 2 and "takes 64 px images, but preprocessing gives 48 px" in err, err
        assert len(err.strip().splitlines()) == 1


def test_calibrate_passes_each_option_to_the_set_and_to_calibrate(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """K11-K13, K19: --percentile, --batch-size, --seed, --max-images, --allow-no-fov and --no-cache must
    reach the set builder and ``calibrate`` as given; a dropped one measured ranges at another cut, drew another
    set than a later ``quantize --seed`` draws, or wrote a set cache the user had asked for none of."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _CalibRecorder(monkeypatch)
    model = _onnx(tmp_path / "m.onnx")
    calls = rec.run("calibrate", [str(model), "--images", "imgs", "--method", "percentile", "--percentile", "99.5",
                                  "--batch-size", "3", "--seed", "7", "--max-images", "5", "--allow-no-fov",
                                  "--no-cache"])
    assert calls["set"]["images"] == "imgs" and calls["set"]["preprocess"].size == 64
    assert (calls["set"]["max_images"], calls["set"]["seed"], calls["set"]["require_fov"]) == (5, 7, False)
    assert calls["set"]["cache"] is None
    _args, kw = calls["calibrate"]
    assert kw["method"] == "percentile" and kw["percentile"] == 99.5 and kw["batch_size"] == 3
    assert kw["out"] == tmp_path / "m.calibration.json" and kw["force"] is False


def test_calibrate_defaults_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """K12, K13 (and the other defaults): entropy ranges, a 99.99 % cut kept for the percentile method, batches of 8,
    every image (no draw), seed 0, photographs without a field of view skipped, the set cached under the user
    cache folder, the table beside the model."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _CalibRecorder(monkeypatch)
    model = _onnx(tmp_path / "m.onnx")
    calls = rec.run("calibrate", [str(model), "--images", "imgs"])
    assert (calls["set"]["max_images"], calls["set"]["seed"], calls["set"]["require_fov"]) == (None, 0, True)
    assert calls["set"]["cache"].parent == tmp_path / "cache" / "calibration-sets"
    _args, kw = calls["calibrate"]
    assert (kw["method"], kw["percentile"], kw["batch_size"]) == ("entropy", 99.99, 8)
    assert kw["out"] == tmp_path / "m.calibration.json"


@pytest.mark.parametrize("value", ["0.9999", "50", "100.5"])
def test_calibrate_refuses_a_percentile_outside_50_to_100(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          value: str) -> None:
    """K23: --percentile is in percent, in (50, 100]; ``0.9999`` (a fraction, the usual slip) must be a usage
    error (exit 2), not a table whose ranges keep 0.01 % of each activation."""
    model = _onnx(tmp_path / "m.onnx")
    rc, _out, err = _uopsl(["calibrate", str(model), "--images", str(tmp_path), "--method", "percentile",
                            "--percentile", value], capsys)
    assert rc == 2 and "--percentile" in err and value in err, err


def test_quantize_passes_each_option_to_the_config_and_the_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Q12, Q14 (Q11, Q18, Q23 are caught elsewhere too): every option of ``uopsl quantize`` must reach
    ``QuantizeConfig`` or the set draw as given (comma-separated --exclude split and trimmed); a dropped one
    quantized with its default instead: per channel weights after --per-tensor, a quantized head after --float-head
    was left on, another draw of images than the table's."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _CalibRecorder(monkeypatch)
    model = _onnx(tmp_path / "m.onnx")
    _table_for(model, tmp_path / "m.calibration.json")
    calls = rec.run("quantize", [str(model), "--variant", "trt", "--per-tensor", "--exclude", "Softmax, /Add",
                                 "--exclude", "Sigmoid", "--auto-exclude", "2", "--sensitivity-images", "9",
                                 "--images", "imgs", "--max-images", "5", "--seed", "7", "--allow-no-fov",
                                 "--no-bias-correction", "--rounding", "adaround", "--rounding-images", "11",
                                 "--adaround-iterations", "13", "--quantize-head"])
    (src, _table, out, config), kw = calls["quantize"]
    assert src == model and out == tmp_path / "m.int8.trt.onnx" and kw["calib_set"] is not None
    assert config.variant == "trt" and config.per_channel is False
    assert config.exclude == ("Softmax", "/Add", "Sigmoid")
    assert (config.auto_exclude, config.sensitivity_images) == (2, 9)
    assert config.bias_correction is False and config.float_head is False
    assert (config.rounding, config.rounding_images, config.adaround_iterations) == ("adaround", 11, 13)
    assert (calls["set"]["max_images"], calls["set"]["seed"], calls["set"]["require_fov"]) == (5, 7, False)
    # 7-bit weights are for the cpu variant (the trt one refuses them)
    (_src, _table, _out, config), _kw = rec.run("quantize", [str(model), "--reduce-range"])["quantize"]
    assert config.variant == "cpu" and config.reduce_range is True


def test_quantize_defaults_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Q28 (and the other defaults): the cpu variant written as ``model.int8.onnx`` beside the model,
    per-channel weights, the head kept in float, bias correction on, 32 rounding and sensitivity images, 500
    AdaRound steps, no layer auto-excluded, and the set drawn as ``calibrate`` draws it (all images, seed 0,
    photographs without a field of view skipped)."""
    from uopsl.export.quantize import QuantizeConfig

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    rec = _CalibRecorder(monkeypatch)
    model = _onnx(tmp_path / "m.onnx")
    _table_for(model, tmp_path / "m.calibration.json")
    calls = rec.run("quantize", [str(model), "--images", "imgs"])
    (_src, _table, out, config), _kw = calls["quantize"]
    assert out == tmp_path / "m.int8.onnx" and config.variant == "cpu"
    assert config.per_channel is True and config.float_head is True and config.bias_correction is True
    assert (config.rounding_images, config.sensitivity_images, config.adaround_iterations) == (32, 32, 500)
    assert config.auto_exclude == 0 and config.exclude == () and config.reduce_range is False
    assert config.rounding == QuantizeConfig.rounding
    assert (calls["set"]["max_images"], calls["set"]["seed"], calls["set"]["require_fov"]) == (None, 0, True)


@pytest.mark.parametrize(("args", "said"), [
    (["--rounding", "nearest", "--adaround-iterations", "9"],
     "--adaround-iterations is for --rounding gptq or adaround"),
    (["--rounding", "gptq", "--adaround-iterations", "9"], "--adaround-iterations is for --rounding adaround"),
    (["--allow-no-fov"], "--require-fov/--allow-no-fov filters --images, and none are given"),
    (["--size", "64"], "--size sizes --images, and none are given"),
])
def test_quantize_refuses_an_option_its_run_would_not_use(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: list[str], said: str) -> None:
    """Q09 (Q08 and the --images options are caught elsewhere too): an option this run would not use is a usage
    error (exit 2) that names it, never silently ignored; a mutant that dropped a case let ``--adaround-iterations``
    with gptq (or nearest) rounding run as if the user had not asked for anything."""
    model = _onnx(tmp_path / "m.onnx")
    rc, _out, err = _uopsl(["quantize", str(model), *args], capsys)
    assert rc == 2 and said in err, err



def test_quantize_never_writes_over_another_fp32_model_of_the_bundle(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """K08: a bundle may list a second FP32 ONNX file; ``--out`` naming it must be refused (one line, exit 2)
    before any work. A mutant that only compared the entry's kind (onnx = onnx) let the INT8 file replace that
    FP32 model and its manifest entry."""
    bundle = _onnx_bundle(tmp_path / "b", 64)
    (bundle / "other.onnx").write_bytes(b"another fp32 model")
    m = read_manifest(bundle)
    write_manifest(bundle, Manifest(classes=m.classes, head=m.head, preprocess=m.preprocess,
                                    files=(*m.files, describe_file(bundle, FileEntry("other.onnx", "onnx", "fp32")))))
    rc, _out, err = _uopsl(["quantize", str(bundle), "--out", str(bundle / "other.onnx")], capsys)
    assert rc == 2 and "would overwrite the bundle's onnx file" in err, err
    assert (bundle / "other.onnx").read_bytes() == b"another fp32 model"



def test_the_calibrator_route_draws_at_most_512_images_unless_told(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """B31: ``--calib-max-images`` defaults to 512 (``--help``); a mutant default of None fed TensorRT's
    calibrator every image of a large folder (hours on a Jetson) when the user left it out."""
    from uopsl.calibration import dataset
    from uopsl.calibration.dataset import CalibrationSet

    drawn: list[Any] = []
    real = dataset.build_calibration_set

    def build(images: Any, preprocess: Any, **kw: Any) -> Any:
        drawn.append(kw.get("max_images"))
        return real(images, preprocess, **kw)

    monkeypatch.setattr(dataset, "build_calibration_set", build)
    rec = _BuildRecorder(monkeypatch, major=8, version="8.5.2")
    bundle = _placeholder_bundle(tmp_path / "b")
    images = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    npz = CalibrationSet.from_images(images, read_manifest(bundle).preprocess).save(tmp_path / "set.npz")
    args = [str(bundle), "--precision", "int8", "--calib-images", str(npz), "--calib-batch", "2", "--no-timing-cache"]
    rec.run(args)
    assert drawn == [512] and rec.calls["config"].int8_mode == "legacy-calibrator"
    assert rec.calls["calibration"].max_images == 512 and rec.calls["calibration"].batch_size == 2
    rec.run([*args, "--calib-max-images", "3"])
    assert drawn == [512, 3] and rec.calls["calibration"].max_images == 3


def test_the_set_cache_key_tells_draws_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """K15: the cached set's key holds the draw (max images, seed, field-of-view rule), so ``calibrate --seed 7``
    and ``quantize --seed 8`` on one folder keep one set each; a key without the seed served one draw's images
    to the other. The default draw keeps the key of sets cached before draws were keyed."""
    from uopsl.train.commands.calibrate import default_set_cache

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    pre = PreprocessConfig(size=64)
    keys = {default_set_cache("imgs", pre, m, s, f) for m, s, f in
            [(None, 0, True), (5, 0, True), (5, 7, True), (5, 8, True), (5, 7, False), (None, 7, True)]}
    assert len(keys) == 6
    assert default_set_cache("imgs", pre) == default_set_cache("imgs", pre, None, 0, True)
    assert default_set_cache("imgs", pre).parent == tmp_path / "cache" / "calibration-sets"


def test_a_forced_recalibration_is_not_said_to_reuse_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """K22: with ``--force`` the ranges are measured again even when they come out byte-identical; a mutant
    still printed "ranges reused from the table already there", telling the user their --force did nothing."""
    from uopsl.calibration import ranges

    rec = _CalibRecorder(monkeypatch)
    model = _onnx(tmp_path / "m.onnx")
    out = tmp_path / "m.calibration.json"
    out.write_text("{}", encoding="utf-8")  # the same bytes before and after
    table = types.SimpleNamespace(method="entropy", ranges={"image": (0.0, 1.0)}, num_images=64,
                                  set_fingerprint="f" * 64, notes={})
    monkeypatch.setattr(ranges, "calibrate", lambda *a, **kw: table)
    assert rec.calls == {}
    for force, reused in ((["--force"], False), ([], True)):
        rc, printed, err = _uopsl(["calibrate", str(model), "--images", "imgs", *force], capsys)
        assert rc == 0, err
        assert ("ranges reused from the table already there" in printed) is reused, printed


def test_quantize_into_a_bundle_refuses_a_damaged_bundle_and_images_preprocessed_otherwise(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Q20, Q22: writing into a bundle first verifies it (never re-list files into a manifest whose checksums
    fail), and ``--images`` measured with a ``--size`` other than the bundle's is refused (its INT8 file would be
    fitted on pixels the runtime never gives). Mutants dropped either check and went on to the work."""
    import onnx

    bundle = _onnx_bundle(tmp_path / "b", 64)
    dynamic = onnx.load(str(bundle / "model.onnx"))  # the model's H and W made dynamic: only the bundle says 64
    for i, name in ((1, "H"), (2, "W")):
        dynamic.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    onnx.save(dynamic, str(bundle / "model.onnx"))
    m = read_manifest(bundle)
    write_manifest(bundle, Manifest(classes=m.classes, head=m.head, preprocess=m.preprocess,
                                    files=(describe_file(bundle, FileEntry("model.onnx", "onnx", "fp32")),)))
    _table_for(bundle / "model.onnx", bundle / "calibration.json")
    rc, _out, err = _uopsl(["quantize", str(bundle), "--images", str(tmp_path), "--size", "48"], capsys)
    assert rc == 2 and "its INT8 file would be measured on images preprocessed otherwise" in err, err
    dynamic.doc_string = "changed after listing"  # still a readable model, but not the bytes the manifest lists
    onnx.save(dynamic, str(bundle / "model.onnx"))
    rc, _out, err = _uopsl(["quantize", str(bundle)], capsys)
    assert rc == 2 and f"bundle {bundle} failed verification: model.onnx" in err, err


# -- validate.py -------------------------------------------------------------------------------------------------
def test_validate_takes_only_the_fundus_images_of_a_dataset_with_their_patients(tmp_path: Path) -> None:
    """V01: a bundle screens fundus photographs; a dataset's OCT scans (tvhl, synthetic with modality=both)
    must be left out of the parity records, where a mutant compared the models on OCT scans as if they were
    fundus photographs."""
    from uopsl.train.commands.validate import _records_from_source
    from uopsl.train.datasets.core import Sample

    root = tmp_path / "data"
    samples = [Sample(root / "a.png", ("dr",), patient="P1"), Sample(root / "b.png", ("normal",), patient=None),
               Sample(root / "c.png", ("dme",), patient="P2", modality="oct")]
    src = types.SimpleNamespace(samples=samples, root=root, options={},
                                label_space=types.SimpleNamespace(classes=("normal", "dr", "dme")))
    records, space = _records_from_source(src)
    assert [(r.id, r.labels, r.patient) for r in records] == [("a.png", ("dr",), "P1"),
                                                                     ("b.png", ("normal",), None)]
    assert space == ("normal", "dr", "dme")


def test_validate_passes_each_option_to_the_parity_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """V14, V15, V17-V21, V25, V26, V34, V37, V38: each option of ``uopsl validate`` must reach ``validate_bundle``
    as given: the bootstrap seed (default: --seed), the --limit draw's seed, the batch size, the bootstrap
    replicates, the bounds-based judging, --no-resume, and no recording when the reference may not record; a dropped
    one ran another check than the one the report then names."""
    import contextlib

    from uopsl.export import validate as validate_lib
    from uopsl.train.commands import validate as validate_cmd

    got: dict[str, Any] = {}

    def record(bundle: Path, reference: Any, records: list[Any], out: Path, config: Any, **kw: Any) -> Any:
        got.update(records=records, config=config, **kw)
        raise _Stop

    monkeypatch.setattr(validate_lib, "validate_bundle", record)
    monkeypatch.setattr(validate_cmd, "torch_reference",
                        lambda bundle, ck, device, other: (contextlib.nullcontext(), {"checkpoint": str(ck)}, False))
    bundle = _placeholder_bundle(tmp_path / "b")
    for i in range(6):
        write_image(tmp_path / "photos" / f"{i}.png", seed=i)
    (tmp_path / "ck").mkdir()
    base = [str(bundle), "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "photos"),
            "--out", str(tmp_path / "rep")]
    res = _run(validate_cmd.command, [*base, "--limit", "4", "--seed", "3", "--bootstrap-seed", "9",
                                      "--batch-size", "5", "--n-boot", "7", "--judge-on", "bounds", "--no-resume",
                                      "--backends", " ort-cpu , openvino "])
    assert isinstance(res.exception, _Stop), (res.output, res.exception)
    config, context = got["config"], got["context"]
    assert (config.seed, config.batch_size, config.n_boot, config.judge_on) == (9, 5, 7, "bounds")
    assert config.resume is False and config.record is False  # this reference may not record
    assert config.backends == ("ort-cpu", "openvino")
    assert (context["seed"], context["bootstrap_seed"], context["limit"]) == (3, 9, 4)
    assert context["limit_drawn_from"] == 6  # the pool the 4 were drawn from (a review: not recorded before)
    # --limit 4 of 6 with seed 3: numpy's draw, sorted back into folder order
    want = sorted(int(i) for i in np.random.default_rng(3).choice(6, 4, replace=False))
    assert [r.id for r in got["records"]] == [f"{i}.png" for i in want]
    res = _run(validate_cmd.command, base)
    assert isinstance(res.exception, _Stop), (res.output, res.exception)
    config = got["config"]
    assert (config.seed, config.batch_size, config.n_boot, config.judge_on, config.resume) == (
        0, 16, 1000, "estimates", True)
    assert len(got["records"]) == 6


def test_a_synthetic_sets_declared_classes_give_way_to_the_classes_the_spec_names(tmp_path: Path) -> None:
    """V03: the generator's ``synth_config.json`` widens the label space to every class it draws, unless the
    spec names its classes (``classes=normal+dr``): then those are the space. A mutant that ignored classes=
    scored a bundle on classes the user had deliberately left out (reported as classes without a positive
    image)."""
    from uopsl.train.commands.validate import declared_classes

    (tmp_path / "synth_config.json").write_text(json.dumps({"config": {"classes": ["dr", "amd"]}}),
                                                encoding="utf-8")

    def src(classes: Any) -> Any:
        return types.SimpleNamespace(root=tmp_path, label_space=types.SimpleNamespace(classes=("normal", "dr")),
                                     options={"reader": "synthetic", "classes": classes})

    assert declared_classes(src(("normal", "dr"))) == ("normal", "dr")
    assert set(declared_classes(src(None))) == {"normal", "dr", "amd"}  # declared: amd too, without an image
