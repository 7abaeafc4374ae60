"""Layer-wise diagnosis: a layer quantized with a ruined range is found, named and fixable by excluding it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from paritykit import add_int8, model_inputs
from uopsl.export.layerwise import SQNR_CAP_DB, fake_quantize, layerwise_errors, sqnr_db
from uopsl.export.quantize import _load_prepared, resolve_exclusions
from uopsl.runtime.errors import ConfigError

CONV0 = "/features/features.0/Conv"  # first convolution of TinyScreen (its ReLU6 output is quantized)


def _conv0_output(bundle: Path) -> str:
    graph = onnx.load(str(bundle / "model.onnx")).graph
    conv = next(n for n in graph.node if n.name == CONV0)
    clip = next(n for n in graph.node if conv.output[0] in n.input)
    return clip.output[0]  # the tensor the quantizer puts a Q/DQ pair on (Conv + ReLU6 fused)


def test_ruined_range_is_the_first_suggested_exclusion(screen_bundle: Path, cast_sets: dict, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(screen_bundle, tmp_path / "bundle"))
    x = model_inputs(cast_sets["fit"])
    target = _conv0_output(bundle)

    def ruin(table):  # noqa: ANN001, ANN202 - CalibrationTable
        return replace(table, ranges={**table.ranges, target: (0.0, 0.05)})  # activations reach ~5: all clipped

    # Bias correction off: it would partly compensate the clipped layer's mean, and this test is about
    # the report naming a broken range as it is.
    add_int8(bundle, x, table_edit=ruin, bias_correction=False)
    report = layerwise_errors(bundle / "model.onnx", bundle / "model.int8.onnx", x[:6])
    sqnrs = [r.sqnr_db for r in report.layers]
    assert sqnrs == sorted(sqnrs)  # worst first
    assert report.suggested_exclude and report.suggested_exclude[0] == CONV0, report.to_dict()
    conv = next(r for r in report.layers if r.node == CONV0)
    assert conv.sqnr_drop_db > 20 and conv.range_sqnr_db is not None and conv.range_sqnr_db < 10
    assert f"--exclude {CONV0}" in report.suggested_command()
    # the suggestion is a command `uopsl quantize` accepts as printed (bias correction needs the images)
    assert "--images CALIBRATION_IMAGES" in report.suggested_command()
    # every suggestion is a name `uopsl quantize --exclude` accepts
    prepared = _load_prepared(bundle / "model.onnx")
    assert resolve_exclusions(prepared, report.suggested_exclude) == report.suggested_exclude
    # following the suggestion repairs the model
    add_int8(bundle, x, table_edit=ruin, exclude=report.suggested_exclude, bias_correction=False)
    fixed = layerwise_errors(bundle / "model.onnx", bundle / "model.int8.onnx", x[:6])
    assert fixed.outputs["logits"]["sqnr_db"] > report.outputs["logits"]["sqnr_db"] + 20
    assert CONV0 not in {r.node for r in fixed.layers}  # left in float: no longer a quantized layer


def test_well_quantized_model_gets_no_suggestion(screen_bundle: Path, cast_sets: dict) -> None:
    x = model_inputs(cast_sets["val"][:4])
    report = layerwise_errors(screen_bundle / "model.onnx", screen_bundle / "model.int8.onnx", x)
    assert report.matched_tensors >= len(report.layers) > 0
    assert report.outputs["probs"]["cosine"] > 0.999
    assert report.suggested_exclude == () and report.suggested_command() == ""


def test_helpers_and_input_checks(screen_bundle: Path) -> None:
    assert sqnr_db(1.0, 0.0) == SQNR_CAP_DB and sqnr_db(0.0, 1.0) == 0.0
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    v = np.array([-1.0, 0.0, 0.26, 3.0])
    assert np.allclose(fake_quantize(v, np.array(0.1, np.float32), np.array(0, np.uint8)), [0.0, 0.0, 0.3, 3.0])
    with pytest.raises(ConfigError, match="uint8"):
        layerwise_errors(screen_bundle / "model.onnx", screen_bundle / "model.int8.onnx", np.zeros((1, 64, 64, 3)))
    with pytest.raises(ConfigError, match="no quantized layer"):
        layerwise_errors(screen_bundle / "model.onnx", screen_bundle / "model.onnx", np.zeros((1, 64, 64, 3), np.uint8))


def test_a_transposed_tensor_is_refused_not_compared_value_by_value() -> None:
    """(2, 3) against (3, 2) holds as many values laid out differently; comparing them flattened would report
    a layout error as quantization noise (the shape check ran after flattening until session 44)."""
    from uopsl.export.layerwise import _Accumulator
    from uopsl.runtime.errors import BackendError

    ref = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(BackendError, match=r"\(2, 3\) vs \(3, 2\)"):
        _Accumulator().add(ref, ref.T.copy())
    same = _Accumulator()
    same.add(ref, ref.copy())
    assert same.sqnr == SQNR_CAP_DB and same.cosine == pytest.approx(1.0)
