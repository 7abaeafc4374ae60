"""INT8 QDQ quantization from the calibration table: variants, exclusions, auto-exclude, CLIs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tinymodel import calibrate_cli, exact_int8_options, export_tiny_onnx, fundus_png_folder, random_fundus_batch
from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.ranges import ActivationStats, collect_statistics
from uopsl.calibration.table import CalibrationTable
from uopsl.export.quantize import LAYER_OPS, QuantizeConfig, layer_sensitivities, quantize_model
from uopsl.runtime.clikit import LazyGroup, main_entry
from uopsl.runtime.errors import ConfigError

SIZE = 64
CLASSES = 3
# Structural tests look at the quantizer's own output, without the data-driven bias correction.
RAW = {"bias_correction": False, "rounding": "nearest"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)  # TinyScreen's convolutions draw from the global generator
    return export_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx", num_classes=CLASSES, size=SIZE)


@pytest.fixture(scope="module")
def calib_set() -> CalibrationSet:
    return CalibrationSet.from_images(random_fundus_batch(24, SIZE, seed=1))


@pytest.fixture(scope="module")
def stats(tiny: Path, calib_set: CalibrationSet) -> ActivationStats:
    return collect_statistics(tiny, calib_set, batch_size=6, show_progress=False)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return random_fundus_batch(16, SIZE, seed=7)


def _run(path: str | Path, images: np.ndarray) -> list[np.ndarray]:
    """The model's outputs in its exact arithmetic (an INT8 file as defined, not this CPU's kernels)."""
    return ort.InferenceSession(str(path), exact_int8_options(), providers=["CPUExecutionProvider"]).run(
        None, {"image": images})


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _quantize_nodes_of(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]


def _fused_ops(path: Path, tmp_path: Path) -> list[str]:
    """Op types of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


# -- variants ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["cpu", "trt"])
def test_qdq_model_passes_the_checker_runs_and_keeps_float_outputs(tmp_path, tiny, stats, held_out, variant) -> None:
    result = quantize_model(tiny, stats.table("entropy"), tmp_path / "q.onnx", QuantizeConfig(variant=variant, **RAW),
                            show_progress=False)
    model = onnx.load(result.path)
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= 20
    assert result.quantize_nodes > 0 and result.precision == {"cpu": "int8-qdq-u8", "trt": "int8-qdq-s8"}[variant]
    producers = {t: n.op_type for n in model.graph.node for t in n.output}
    assert [o.name for o in model.graph.output] == ["probs", "logits", "site_maps"]
    assert all(producers[o.name] != "DequantizeLinear" for o in model.graph.output)
    probs, logits, site_maps = _run(result.path, held_out)
    assert probs.shape == (16, CLASSES) and logits.shape == (16, CLASSES) and site_maps.shape[:2] == (16, CLASSES)
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in (probs, logits, site_maps))
    assert result.sha256 and result.model_sha256 == stats.model_sha256


@pytest.mark.parametrize("variant", ["cpu", "trt"])
def test_int8_probs_stay_close_to_fp32(tmp_path, tiny, stats, calib_set, held_out, variant) -> None:
    # Tolerance: 1.5 % of the FP32 logits' range on held-out images (not the calibration set).
    # An 8-bit grid step is 1/255 = 0.4 % of a tensor's range; the logits sit behind five
    # quantized stages, so a few steps of accumulated error is what INT8 costs. Probabilities
    # move at most 0.25x that (sigmoid slope). Observed for this seed: 0.5-0.8 %; entropy's
    # clipping on 24 noise images can reach ~2.4 % for other weight draws.
    ref = _run(tiny, held_out)
    span = float(ref[1].max() - ref[1].min())
    for method in ("minmax", "entropy", "percentile"):
        q = quantize_model(tiny, stats.table(method), tmp_path / f"{method}.onnx", QuantizeConfig(variant=variant),
                           calib_set=calib_set, show_progress=False)
        probs, logits, site_maps = _run(q.path, held_out)
        logit_err = float(np.abs(logits - ref[1]).max())
        prob_err = float(np.abs(probs - ref[0]).max())
        assert logit_err <= 0.015 * span, (method, logit_err / span)
        assert 0.0 < prob_err <= 0.25 * 0.015 * span, (method, prob_err)  # > 0: really quantized
        # Site maps are attention weights (~1/64 each here): the calibrated Softmax range keeps them.
        assert np.abs(site_maps - ref[2]).max() <= 0.05 * float(ref[2].max())


def test_the_table_ranges_are_the_quantization_ranges(tmp_path, tiny, stats) -> None:
    """ONNX Runtime must not re-calibrate: each activation scale comes from the table."""
    table = stats.table("percentile")
    name = "/features/features.8/Clip_output_0"  # a ReLU6 output feeding a Conv: range (0, hi)
    lo, hi = table.range(name)
    cpu = onnx.load(quantize_model(tiny, table, tmp_path / "cpu.onnx", QuantizeConfig(variant="cpu", **RAW),
                                   show_progress=False).path)
    trt = onnx.load(quantize_model(tiny, table, tmp_path / "trt.onnx", QuantizeConfig(variant="trt", **RAW),
                                   show_progress=False).path)
    for model, expected in ((cpu, (max(hi, 0.0) - min(lo, 0.0)) / 255), (trt, table.amax(name) / 127)):
        qs = _quantize_nodes_of(model, name)
        assert qs, "the tensor is quantized"
        inits = _inits(model)
        for q in qs:
            assert float(inits[q.input[1]]) == pytest.approx(expected, rel=1e-6)


def test_minmax_table_reproduces_onnxruntime_own_static_quantization(tmp_path, tiny, calib_set, stats) -> None:
    """Same data, same minmax ranges: our table through the QDQ quantizer equals quantize_static."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib_set.batches(6))

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {"image": b}

    ref_path = tmp_path / "ort.onnx"
    quantize_static(str(tiny), str(ref_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ours = onnx.load(quantize_model(tiny, stats.table("minmax"), tmp_path / "ours.onnx", QuantizeConfig(**RAW),
                                   show_progress=False).path)
    ref = onnx.load(str(ref_path))
    softmax_out = {n.output[0] for n in ref.graph.node if n.op_type == "Softmax"}

    forced = {f"{t}_scale" for t in softmax_out}

    def scales(m: onnx.ModelProto) -> dict[str, float]:
        inits = _inits(m)
        # ONNX Runtime forces Softmax outputs (and the data-movement ops that share their
        # scale) to [0, 1]; we keep the calibrated range (see export.quantize).
        return {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node
                if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].ndim == 0
                and n.input[1] not in forced}

    a, b = scales(ours), scales(ref)
    # The tensors computed from the uint8 input alone carry their bounds from the input's type (0..255), not
    # the calibration images' brightest pixel: wider than ONNX Runtime's measured ranges, by design.
    from uopsl.calibration.ranges import input_bound_ranges

    pinned = set(input_bound_ranges(onnx.load(str(tiny))))
    common = set(a) & set(b) - pinned
    assert len(common) >= 8
    for t in common:
        assert a[t] == pytest.approx(b[t], rel=1e-5), t
    assert set(a) & set(b) & pinned  # the first convolution's input is among the quantized tensors
    for t in set(a) & set(b) & pinned:
        assert a[t] >= b[t] * (1 - 1e-6), t


def test_trt_variant_is_symmetric_s8_with_zero_points_0_and_float_bias(tmp_path, tiny, stats) -> None:
    model = onnx.load(quantize_model(tiny, stats.table("entropy"), tmp_path / "trt.onnx",
                                     QuantizeConfig(variant="trt", **RAW), show_progress=False).path)
    inits = _inits(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zps = [inits[n.input[2]] for n in qdq]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    # TensorRT 8.x parses a DequantizeLinear only on activations: weights keep a float Q/DQ pair,
    # biases stay float (no int32 DQ).
    for n in qdq:
        if n.op_type == "DequantizeLinear":
            assert n.input[0] not in inits, f"{n.name} dequantizes an initializer"
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert inits[conv.input[2]].dtype == np.float32


def test_cpu_variant_is_u8_activations_s8_weights_and_runs_integer_kernels(tmp_path, tiny, stats) -> None:
    out = quantize_model(tiny, stats.table("entropy"), tmp_path / "cpu.onnx", QuantizeConfig(variant="cpu", **RAW),
                         show_progress=False)
    model = onnx.load(out.path)
    inits = _inits(model)
    dq_of_weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].dtype == np.uint8 for n in act_q)
    weight_zps = [inits[n.input[2]] for n in dq_of_weights if inits[n.input[0]].dtype == np.int8]
    assert weight_zps and all(not z.any() for z in weight_zps)
    fused = _fused_ops(Path(out.path), tmp_path)
    assert fused.count("QLinearConv") == 4 and "Conv" not in fused


@pytest.mark.parametrize("per_channel", [True, False])
def test_per_channel_or_per_tensor_weight_scales(tmp_path, tiny, stats, per_channel) -> None:
    model = onnx.load(quantize_model(tiny, stats.table("minmax"), tmp_path / "q.onnx",
                                     QuantizeConfig(per_channel=per_channel, **RAW), show_progress=False).path)
    inits = _inits(model)
    conv0 = next(n for n in model.graph.node if n.name == "/features/features.0/Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv0.input[1])
    assert inits[dq.input[1]].shape == ((16,) if per_channel else ())


# -- exclusions -----------------------------------------------------------------------
def _runs_in_float(model: onnx.ModelProto, node_name: str) -> bool:
    """No input of the node is a dequantized tensor (so no runtime can fuse it into an int8 kernel)."""
    node = next(n for n in model.graph.node if n.name == node_name)
    producers = {t: n.op_type for n in model.graph.node for t in n.output}
    return all(producers.get(t) != "DequantizeLinear" for t in node.input)


@pytest.mark.parametrize("variant", ["cpu", "trt"])
def test_excluded_nodes_and_op_types_have_no_qdq(tmp_path, tiny, stats, held_out, variant) -> None:
    table = stats.table("minmax")
    r = quantize_model(tiny, table, tmp_path / "a.onnx",
                       QuantizeConfig(variant=variant, exclude=("/features/features.3/Conv", "/Add"), **RAW),
                       show_progress=False)
    model = onnx.load(r.path)
    onnx.checker.check_model(model, full_check=True)
    assert r.excluded_nodes == ("/features/features.3/Conv", "/Add")
    assert _runs_in_float(model, "/features/features.3/Conv") and _runs_in_float(model, "/Add")
    assert not _runs_in_float(model, "/features/features.6/Conv")  # the others stay quantized
    # The excluded Conv reads a ReLU6 output that the u8 variant folds into a quantization
    # range: reading the float tensor must not skip the activation. Same tolerance as above.
    ref = _run(tiny, held_out)[1]
    assert np.abs(_run(r.path, held_out)[1] - ref).max() <= 0.015 * float(ref.max() - ref.min())
    by_type = quantize_model(tiny, table, tmp_path / "b.onnx", QuantizeConfig(variant=variant, exclude=("Conv",), **RAW),
                             show_progress=False)
    model = onnx.load(by_type.path)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert len(by_type.excluded_nodes) == 4 and set(by_type.excluded_nodes) == set(convs)
    assert all(_runs_in_float(model, c) for c in convs)


def test_unknown_exclusions_are_refused(tmp_path, tiny, stats) -> None:
    with pytest.raises(ConfigError, match="neither a node name nor an op type"):
        quantize_model(tiny, stats.table("minmax"), tmp_path / "q.onnx", QuantizeConfig(exclude=("Convv",), **RAW),
                       show_progress=False)
    assert not (tmp_path / "q.onnx").exists()


def test_auto_exclude_keeps_the_n_most_sensitive_layers_in_float(tmp_path, tiny, stats, calib_set) -> None:
    table = stats.table("entropy")
    config = QuantizeConfig(auto_exclude=2, sensitivity_images=8, exclude=("/Sigmoid",))
    r = quantize_model(tiny, table, tmp_path / "q.onnx", config, calib_set=calib_set, show_progress=False)
    assert len(r.auto_excluded) == 2
    assert r.excluded_nodes == ("/Sigmoid", *r.auto_excluded)
    sens = r.sensitivities
    assert [s.node for s in sens[:2]] == list(r.auto_excluded)
    assert [s.probs_max_abs for s in sens] == sorted((s.probs_max_abs for s in sens), reverse=True)
    model = onnx.load(str(tiny))
    candidates = {n.name for n in model.graph.node if n.op_type in LAYER_OPS} - {"/Sigmoid"}
    assert {s.node for s in sens} == candidates
    assert all(0.0 <= s.probs_max_abs < 0.01 and s.logits_cosine > 0.99 for s in sens)
    assert max(s.probs_max_abs for s in sens) > 0.0
    q = onnx.load(r.path)
    assert all(_runs_in_float(q, n) for n in r.auto_excluded)
    info = r.manifest_info()
    assert info["excluded_nodes"] == list(r.excluded_nodes) and info["auto_excluded"] == list(r.auto_excluded)
    json.dumps(r.to_dict())  # the record is JSON-serialisable
    # The standalone pass ranks the same way.
    again = layer_sensitivities(tiny, table, calib_set, config, show_progress=False)
    assert [s.node for s in again] == [s.node for s in sens]


def test_auto_exclude_needs_images_and_enough_layers(tmp_path, tiny, stats, calib_set) -> None:
    with pytest.raises(ConfigError, match="--images"):
        quantize_model(tiny, stats.table("minmax"), tmp_path / "q.onnx", QuantizeConfig(auto_exclude=1),
                       show_progress=False)
    with pytest.raises(ConfigError, match="more layers than"):
        quantize_model(tiny, stats.table("minmax"), tmp_path / "q.onnx", QuantizeConfig(auto_exclude=99),
                       calib_set=calib_set.subset(2), show_progress=False)


def test_a_table_from_another_model_is_refused(tmp_path, tiny, stats) -> None:
    other = export_tiny_onnx(tmp_path / "other.onnx", num_classes=CLASSES, size=SIZE, seed=5)
    with pytest.raises(ConfigError, match="recalibrate"):
        quantize_model(other, stats.table("minmax"), tmp_path / "q.onnx", show_progress=False)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="variant"):
        QuantizeConfig(variant="gpu")
    with pytest.raises(ConfigError, match="auto_exclude"):
        QuantizeConfig(auto_exclude=-1)
    with pytest.raises(ConfigError, match="reduce_range"):
        QuantizeConfig(variant="trt", reduce_range=True)


# -- CLIs -------------------------------------------------------------------------------
def _cli() -> LazyGroup:
    return calibrate_cli()


def _image_folder(folder: Path, n: int = 6) -> Path:
    return fundus_png_folder(folder, n, broken=True)


def test_calibrate_and_quantize_commands_on_a_model_file(tmp_path, tiny, monkeypatch, capsys, caplog) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    images = _image_folder(tmp_path / "imgs")
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny.read_bytes())
    # One image is broken: the table is written and the exit code says something failed.
    assert main_entry(_cli(), ["calibrate", str(model), "--images", str(images), "--method", "percentile"]) == 1
    table = CalibrationTable.load(tmp_path / "m.calibration.json", model_sha256=None)
    assert table.method == "percentile" and table.num_images == 6
    assert list((tmp_path / "cache").rglob("*.npz")), "the preprocessed set is cached"
    # Without --images: nothing that needs the calibration images may be on.
    rc = main_entry(_cli(), ["quantize", str(model), "--variant", "trt", "--per-tensor", "--exclude", "Softmax,/Add",
                             "--no-bias-correction", "--rounding", "nearest"])
    assert rc == 0
    record = json.loads((tmp_path / "m.int8.trt.quantize.json").read_text())
    assert record["result"]["precision"] == "int8-qdq-s8" and record["result"]["per_channel"] is False
    assert record["manifest_info"]["excluded_nodes"] == ["/Softmax", "/Add"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.int8.trt.onnx")))
    capsys.readouterr()
    assert main_entry(_cli(), ["quantize", str(model), "--auto-exclude", "1", "--images", str(images),
                               "--rounding", "gptq", "--rounding-images", "4"]) == 0
    record = json.loads((tmp_path / "m.int8.quantize.json").read_text())
    assert len(record["result"]["auto_excluded"]) == 1
    # The float nodes in words, the chosen one marked (session 58: it printed a JSON list); how many images each
    # step drew, and that a sensitivity ranking on few images may not hold
    captured = capsys.readouterr()
    said = captured.out
    assert "layers chosen on 4 images of --images" in said, said
    assert re.search(r"--auto-exclude ranked the layers on \d+ images, fewer than 32", caplog.text), caplog.text
    n_float = len(record["result"]["excluded_nodes"])
    assert f"kept in float ({n_float} nodes): " in said and "[" not in said.split("kept in float", 1)[1].splitlines()[0]
    assert f"{record['result']['auto_excluded'][0]} (auto-excluded)" in said, said
    assert record["config"]["rounding"] == "gptq" and record["config"]["rounding_images"] == 4
    float_nodes = set(record["result"]["excluded_nodes"])
    assert record["manifest_info"]["weight_rounding"] == "gptq"
    assert record["manifest_info"]["rounded_layers"] == sum(1 for n in onnx.load(str(model)).graph.node
                                                             if n.op_type == "Conv" and n.name not in float_nodes)
    # A bad option value is one clean error line, exit code 2.
    capsys.readouterr()
    assert main_entry(_cli(), ["quantize", str(model), "--exclude", "NoSuchOp"]) == 2
    assert "NoSuchOp" in capsys.readouterr().err


def test_commands_accept_a_bundle_folder(tmp_path, monkeypatch) -> None:
    from tinybundle import make_tiny_bundle

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = make_tiny_bundle(tmp_path / "bundle", size=SIZE)
    images = _image_folder(tmp_path / "imgs")
    (images / "broken.jpg").unlink()
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax"]) == 0
    from uopsl.runtime.fsio import sha256_file

    table = CalibrationTable.load(bundle / "calibration.json", model_sha256=sha256_file(bundle / "model.onnx"))
    assert table.notes["preprocess"]["size"] == SIZE
    assert main_entry(_cli(), ["quantize", str(bundle), "--images", str(images)]) == 0
    assert (bundle / "model.int8.onnx").is_file() and (bundle / "model.int8.quantize.json").is_file()
    # Both outputs enter the manifest with their checksums: verify covers them, the runtime sees the INT8 file.
    from uopsl.runtime.bundle import read_manifest, verify_or_raise

    manifest = verify_or_raise(bundle)
    files = {f.path: f for f in manifest.files}
    assert files["calibration.json"].kind == "calibration" and manifest.calibration_fingerprint == table.set_fingerprint
    assert files["model.int8.onnx"].precision == "int8-qdq-u8" and files["model.int8.onnx"].info["weight_rounding"]
    assert files["model.int8.onnx"].sha256 == sha256_file(bundle / "model.int8.onnx")
    # The TensorRT variant, quantized through the FP32 file inside the bundle, is listed too; requantizing replaces.
    assert main_entry(_cli(), ["quantize", str(bundle / "model.onnx"), "--variant", "trt", "--images", str(images)]) == 0
    assert main_entry(_cli(), ["quantize", str(bundle), "--images", str(images), "--rounding", "nearest"]) == 0
    listed = [f.path for f in read_manifest(bundle).files]
    assert listed.count("model.int8.onnx") == 1 and "model.int8.trt.onnx" in listed
    verify_or_raise(bundle)
    good_manifest = (bundle / "manifest.json").read_text()
    # --out may not overwrite the source model, the manifest or a file of another kind; nothing is written then.
    for target in ("model.onnx", "manifest.json", "calibration.json"):
        before = (bundle / target).read_bytes()
        assert main_entry(_cli(), ["quantize", str(bundle), "--out", str(bundle / target), "--rounding", "nearest",
                                   "--no-bias-correction"]) == 2
        assert (bundle / target).read_bytes() == before
    # A manifest that fails its checksums is refused, not re-signed with the new file.
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["classes"][0]["threshold"] = 0.01
    (bundle / "manifest.json").write_text(json.dumps(raw))
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax",
                               "--force"]) == 2
    assert json.loads((bundle / "manifest.json").read_text()) == raw
    (bundle / "manifest.json").write_text(good_manifest)
    # Written elsewhere, the file stays out of the bundle.
    assert main_entry(_cli(), ["quantize", str(bundle), "--out", str(tmp_path / "elsewhere.int8.onnx"), "--rounding",
                               "nearest", "--no-bias-correction"]) == 0
    assert "elsewhere.int8.onnx" not in [f.path for f in read_manifest(bundle).files]
    # Another tool's manifest.json beside a plain ONNX file does not make it a bundle.
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(bundle / "model.onnx", plain / "m.onnx")
    (plain / "manifest.json").write_text('{"name": "not a uopsl bundle"}')
    assert main_entry(_cli(), ["calibrate", str(plain / "m.onnx"), "--images", str(images), "--method", "minmax",
                               "--size", str(SIZE)]) == 0
    assert (plain / "m.calibration.json").is_file()


# -- a realistic backbone (slow) -------------------------------------------------------
def export_resnet18_contract(path: Path, size: int = 96, num_classes: int = 4, seed: int = 0) -> Path:
    """torchvision resnet18 (random init) wrapped to the deployed-model contract."""
    import torch
    import torchvision
    from torch import nn

    class ResNetScreen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            r = torchvision.models.resnet18(weights=None)
            self.trunk = nn.Sequential(*list(r.children())[:-2])
            self.fc = nn.Linear(512, num_classes)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
            self.eval()

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            f = self.trunk((image.permute(0, 3, 1, 2).float() - self.mean) / self.std)
            logits = self.fc(f.mean((2, 3)))
            cam = torch.einsum("nchw,kc->nkhw", f, self.fc.weight)
            n, k, h, w = cam.shape
            site = torch.softmax(cam.reshape(n, k, h * w), -1).reshape(n, k, h, w)
            return torch.softmax(logits, 1), logits, site

    torch.onnx.export(
        ResNetScreen(), (torch.zeros(1, size, size, 3, dtype=torch.uint8),), str(path), input_names=["image"],
        output_names=["probs", "logits", "site_maps"], opset_version=17, dynamo=False,
        dynamic_axes={n: {0: "batch"} for n in ("image", "probs", "logits", "site_maps")},
    )
    return path


@pytest.mark.slow
def test_resnet18_contract_model_quantizes_to_integer_kernels(tmp_path) -> None:
    model = export_resnet18_contract(tmp_path / "r18.onnx")
    cs = CalibrationSet.from_images(random_fundus_batch(16, 96, seed=2))
    st = collect_statistics(model, cs, batch_size=8, show_progress=False)
    table = st.table("entropy")
    cpu = quantize_model(model, table, tmp_path / "cpu.onnx", QuantizeConfig(variant="cpu", **RAW), show_progress=False)
    onnx.checker.check_model(onnx.load(cpu.path), full_check=True)
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(model)).graph.node)
    # Every convolution runs as an integer kernel (the exporter's shared zero biases are
    # materialised; a float bias would leave each Conv in float, slower than FP32).
    fused = _fused_ops(Path(cpu.path), tmp_path)
    assert n_conv == 20 and fused.count("QLinearConv") == n_conv
    trt = quantize_model(model, table, tmp_path / "trt.onnx", QuantizeConfig(variant="trt", **RAW), show_progress=False)
    inits = _inits(onnx.load(trt.path))
    zps = [inits[n.input[2]] for n in onnx.load(trt.path).graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    # Calibrated ranges matter: the same model with every range shrunk 20x is far worse.
    images = random_fundus_batch(8, 96, seed=3)
    ref = _run(model, images)[0]
    broken = CalibrationTable(
        ranges={k: (lo / 20, hi / 20) for k, (lo, hi) in table.ranges.items()}, method="minmax",
        model_sha256=table.model_sha256, set_fingerprint=table.set_fingerprint, num_images=table.num_images,
    )
    bad = quantize_model(model, broken, tmp_path / "bad.onnx", QuantizeConfig(**RAW), show_progress=False)
    err_good = np.abs(_run(cpu.path, images)[0] - ref).max()
    err_bad = np.abs(_run(bad.path, images)[0] - ref).max()
    assert err_good < 0.5 * err_bad


# -- bias correction and the float head --------------------------------------------------
def _channel_mean(model_path: str | Path, tensor: str, images: np.ndarray) -> np.ndarray:
    m = onnx.load(str(model_path))
    m.graph.output.append(onnx.ValueInfoProto(name=tensor))
    out = ort.InferenceSession(m.SerializeToString(), exact_int8_options(), providers=["CPUExecutionProvider"]).run(
        [tensor], {"image": images})
    return np.asarray(out[0], np.float64).mean(axis=(0, 2, 3))


@pytest.mark.parametrize("variant", ["cpu", "trt"])
def test_bias_correction_removes_each_layers_mean_shift_on_the_calibration_images(
        tmp_path, tiny, stats, calib_set, variant) -> None:
    table = stats.table("minmax")
    raw = quantize_model(tiny, table, tmp_path / "raw.onnx", QuantizeConfig(variant=variant, **RAW),
                         show_progress=False)
    fixed = quantize_model(tiny, table, tmp_path / "bc.onnx", QuantizeConfig(variant=variant),
                           calib_set=calib_set, show_progress=False)
    convs = [n for n in onnx.load(str(tiny)).graph.node if n.op_type == "Conv"]
    assert fixed.bias_corrected == len(convs) and raw.bias_corrected == 0
    assert fixed.manifest_info()["bias_corrected_layers"] == len(convs)
    qconv = {n.name: n for n in onnx.load(fixed.path).graph.node if n.op_type == "Conv"}
    rconv = {n.name: n for n in onnx.load(raw.path).graph.node if n.op_type == "Conv"}
    images = calib_set.images
    shifts_raw, shifts_fixed = [], []
    for conv in convs:
        ref = _channel_mean(tiny, conv.output[0], images)
        shifts_raw.append(np.abs(_channel_mean(raw.path, rconv[conv.name].output[0], images) - ref).max())
        shifts_fixed.append(np.abs(_channel_mean(fixed.path, qconv[conv.name].output[0], images) - ref).max())
    # Sequential correction leaves each layer's mean shift at the rounding of its stored bias: half a
    # bias step (s_x * s_w, int32 biases of the cpu variant) or float precision (trt variant's float biases).
    fixed_model = onnx.load(fixed.path)
    producer = {t: n for n in fixed_model.graph.node for t in n.output}
    inits = _inits(fixed_model)
    for conv, before, after in zip(convs, shifts_raw, shifts_fixed):
        bias_dq = producer.get(qconv[conv.name].input[2])
        step = float(np.max(inits[bias_dq.input[1]])) if bias_dq is not None else 0.0
        assert (bias_dq is not None) == (variant == "cpu")
        assert after <= 0.5 * step + 1e-4 * max(1.0, before), (conv.name, before, after, step)
    assert max(shifts_raw) > 10 * max(shifts_fixed), (shifts_raw, shifts_fixed)


def test_bias_correction_needs_the_calibration_images(tmp_path, tiny, stats) -> None:
    with pytest.raises(ConfigError, match=r"bias correction and --rounding gptq use the calibration images.*"
                                          r"--no-bias-correction .* and --rounding nearest"):
        quantize_model(tiny, stats.table("minmax"), tmp_path / "q.onnx", show_progress=False)
    with pytest.raises(ConfigError, match=r"^bias correction uses the calibration images"):
        quantize_model(tiny, stats.table("minmax"), tmp_path / "q.onnx", QuantizeConfig(rounding="nearest"),
                       show_progress=False)


@pytest.fixture(scope="module")
def uopsl_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UOPSL model written by `uopsl export` (its encoder nodes are named /trunk/...)."""
    from trainhelpers import tiny_model
    from uopsl.train.checkpoint import save_model
    from uopsl.train.workflow import run_export

    root = tmp_path_factory.mktemp("uopsl")
    model, meta = tiny_model()
    save_model(root / "ckpt", model, meta)
    return run_export(root / "ckpt", root / "bundle") / "model.onnx"


def test_float_head_keeps_every_layer_after_the_encoder_in_float(tmp_path, uopsl_onnx) -> None:
    from uopsl.export.quantize import HEAD_GROUP, TRUNK_PREFIX, head_nodes

    images = random_fundus_batch(8, _input_size(uopsl_onnx), seed=4)
    cs = CalibrationSet.from_images(images)
    table = collect_statistics(uopsl_onnx, cs, batch_size=4, show_progress=False).table("minmax")
    model = onnx.load(str(uopsl_onnx))
    head = head_nodes(model)
    assert head and not any(h.startswith(TRUNK_PREFIX) for h in head)
    assert {"MatMul", "Softmax"} <= {n.op_type for n in model.graph.node if n.name in head}
    r = quantize_model(uopsl_onnx, table, tmp_path / "q.onnx", QuantizeConfig(), calib_set=cs, show_progress=False)
    assert r.float_head == head and r.manifest_info()["float_head"] is True
    q = onnx.load(r.path)
    producer = {t: n for n in q.graph.node for t in n.output}
    for node in q.graph.node:
        if node.name in head:  # reads float tensors and float weights
            assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear" for t in node.input), node.name
    trunk_convs = [n for n in q.graph.node if n.op_type == "Conv" and n.name.startswith(TRUNK_PREFIX)]
    assert trunk_convs and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in trunk_convs)
    # The same nodes through --exclude @head, with the head otherwise quantized.
    same = quantize_model(uopsl_onnx, table, tmp_path / "q2.onnx",
                          QuantizeConfig(float_head=False, exclude=(HEAD_GROUP,), **RAW), show_progress=False)
    assert set(same.excluded_nodes) >= set(head)
    with pytest.raises(ConfigError, match="@head"):
        quantize_model(_tiny_copy(tmp_path), _table_for(tmp_path), tmp_path / "q3.onnx",
                       QuantizeConfig(exclude=(HEAD_GROUP,), **RAW), show_progress=False)


def _input_size(path: Path) -> int:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value)


def _tiny_copy(tmp_path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    return export_tiny_onnx(tmp_path / "plain.onnx", num_classes=CLASSES, size=SIZE)


def _table_for(tmp_path: Path) -> CalibrationTable:
    cs = CalibrationSet.from_images(random_fundus_batch(4, SIZE, seed=5))
    return collect_statistics(tmp_path / "plain.onnx", cs, batch_size=4, show_progress=False).table("minmax")


def test_bias_correction_gives_layers_sharing_a_bias_initializer_their_own_copy() -> None:
    """Two Convs reading one float bias (a user's ONNX, trt-style float biases): each is corrected alone."""
    from onnx import TensorProto, helper

    from uopsl.export.bias_correction import correct_biases

    rng = np.random.default_rng(0)
    wa, wb = rng.normal(size=(4, 4, 3, 3)).astype(np.float32), rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)

    def graph(quantized: bool) -> onnx.ModelProto:
        nodes, inits = [], [numpy_helper.from_array(bias, "B")]
        for name, w in (("A", wa), ("Bc", wb)):
            if quantized:  # weights behind a DequantizeLinear, coarsely rounded: a biased output
                scale = np.float32(np.abs(w).max() / 7)
                inits += [numpy_helper.from_array(np.round(w / scale).astype(np.int8), f"w{name}_q"),
                          numpy_helper.from_array(np.array(scale, np.float32), f"w{name}_s")]
                nodes.append(helper.make_node("DequantizeLinear", [f"w{name}_q", f"w{name}_s"], [f"w{name}"],
                                              name=f"dq{name}"))
            else:
                inits.append(numpy_helper.from_array(w, f"w{name}"))
        nodes += [helper.make_node("Conv", ["x", "wA", "B"], ["a"], name="A", pads=[1, 1, 1, 1]),
                  helper.make_node("Conv", ["a", "wBc", "B"], ["y"], name="Bc")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    float_model, qmodel = graph(False), graph(True)
    images = rng.normal(size=(8, 4, 8, 8)).astype(np.float32) + 0.5
    assert correct_biases(float_model, qmodel, images, show_progress=False) == 2
    biases = {n.name: n.input[2] for n in qmodel.graph.node if n.op_type == "Conv"}
    assert biases["A"] != biases["Bc"]  # each layer got its own initializer
    onnx.checker.check_model(qmodel)

    def means(m: onnx.ModelProto, t: str) -> np.ndarray:
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        m2.graph.output.append(onnx.ValueInfoProto(name=t))
        return ort.InferenceSession(m2.SerializeToString(), exact_int8_options(),
                                    providers=["CPUExecutionProvider"]).run([t], {"x": images})[0].mean(axis=(0, 2, 3))

    for t in ("a", "y"):
        assert np.abs(means(qmodel, t) - means(float_model, t)).max() < 1e-4, t


@pytest.mark.parametrize("variant", ["cpu", "trt"])
def test_a_model_with_constant_nodes_quantizes(tmp_path: Path, variant: str) -> None:
    # A plain torch.onnx.export leaves scalar constants (x * 0.5 + 1.0) as Constant nodes; ONNX Runtime's
    # quantizer took them for activations without a range and `uopsl quantize` stopped with "a bug".
    import torch
    from torch import nn

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 3)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.conv(image.float().permute(0, 3, 1, 2) / 255.0) * 0.5 + 1.0
            logits = self.fc(h.mean((2, 3)))
            return torch.sigmoid(logits), logits

    path = tmp_path / "scaled.onnx"
    torch.onnx.export(Scaled().eval(), (torch.zeros(1, 32, 32, 3, dtype=torch.uint8),), str(path),
                      input_names=["image"], output_names=["probs", "logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "b"}, "probs": {0: "b"}, "logits": {0: "b"}})
    assert any(n.op_type == "Constant" for n in onnx.load(str(path)).graph.node)
    table = collect_statistics(path, CalibrationSet.from_images(random_fundus_batch(8, 32, seed=2)),
                               show_progress=False).table("minmax")
    result = quantize_model(path, table, tmp_path / "q.onnx", QuantizeConfig(variant=variant, **RAW),
                            show_progress=False)
    assert result.quantize_nodes > 0
    x = random_fundus_batch(4, 32, seed=3)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {"image": x})[0]
    q = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(["probs"], {"image": x})[0]
    assert np.abs(q - ref).max() < 0.05
