"""`uopsl validate` tells a file that quantized badly from a CPU that computes it badly.

Each CPU INT8 file also runs in its exact QDQ arithmetic; the report gives the distance of each from the
reference and from each other (logits SQNR), and where this CPU's kernels are the larger error (x86 without VNNI,
whose 8-bit kernels saturate) it says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tinybundle import CLASSES, fundus_jpeg, make_tiny_bundle
from validatekit import CPU

from uopsl.export.int8_arithmetic import FAITHFUL_DB, ExactRunner, arithmetic_check
from uopsl.export.validate import ValidateConfig, validate_bundle
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import BackendError
from uopsl.runtime.preprocess import preprocess_file


def _logits(n: int = 40, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32) * 3.0


def _noisy(x: np.ndarray, db: float, seed: int) -> np.ndarray:
    """``x`` plus white noise ``db`` below its energy."""
    noise = np.random.default_rng(seed).normal(size=x.shape)
    noise *= np.sqrt((x.astype(np.float64) ** 2).sum() / (noise**2).sum() / 10 ** (db / 10))
    return (x + noise).astype(np.float32)


def test_faithful_kernels_get_no_advice() -> None:
    ref = _logits()
    exact = _noisy(ref, 24.0, 1)
    kernels = _noisy(exact, 40.0, 2)
    a = arithmetic_check(ref, kernels, exact, backend="ort-cpu", cpu_int8="x86-vnni", reduce_range=False)
    assert a["file_db"] == pytest.approx(24.0, abs=0.5) and a["kernels_db"] == pytest.approx(40.0, abs=0.5)
    assert a["faithful"] and a["note"] is None


def test_saturating_kernels_on_x86_without_vnni_are_told_to_use_7_bit_weights() -> None:
    ref = _logits()
    exact = _noisy(ref, 23.6, 1)
    kernels = _noisy(exact, 9.0, 2)
    a = arithmetic_check(ref, kernels, exact, backend="openvino", cpu_int8="x86-no-vnni", reduce_range=False)
    assert not a["faithful"] and a["kernels_db"] < FAITHFUL_DB
    assert a["note"] == ("openvino computes this file 9.0 dB from the file's exact arithmetic on this CPU (x86 without "
                         "VNNI: its 8-bit kernels sum u8 x s8 pairs in 16 bits and saturate), a larger error than the "
                         "file's own (23.6 dB from the reference): for CPUs like it, quantize with --reduce-range "
                         "(7-bit weights) and validate that file on one")
    # A file that already has 7-bit weights: nothing left to quantize differently, FP32 is the answer.
    a = arithmetic_check(ref, kernels, exact, backend="ort-cpu", cpu_int8="x86-no-vnni", reduce_range=True)
    assert "CPUs like it need FP32 for this file" in a["note"] and "--reduce-range" not in a["note"]
    # Another CPU class: named, not diagnosed as VNNI's absence.
    a = arithmetic_check(ref, kernels, exact, backend="ort-cpu", cpu_int8="arm64-no-dotprod", reduce_range=False)
    assert "this CPU (arm64-no-dotprod)" in a["note"] and "VNNI" not in a["note"]
    # An x86 CPU whose flags could not be read (Windows, macOS): the likely cause, said as likely.
    a = arithmetic_check(ref, kernels, exact, backend="ort-cpu", cpu_int8="x86", reduce_range=False)
    assert "its flags could not be read" in a["note"] and a["note"].endswith(
        "quantize with --reduce-range (7-bit weights) and validate that file on one, if this CPU lacks VNNI")
    # The TensorRT (s8) file, which ort-cpu also runs in validate: 7-bit weights are no option for it.
    a = arithmetic_check(ref, kernels, exact, backend="ort-cpu", cpu_int8="x86-no-vnni", reduce_range=False,
                         precision="int8-qdq-s8")
    assert "this is the TensorRT (s8) file" in a["note"] and "--reduce-range" not in a["note"]


def test_kernels_far_off_but_closer_than_a_bad_quantization_get_no_advice() -> None:
    # The file itself is the larger error: a better quantization, not another CPU, is what helps.
    ref = _logits()
    exact = _noisy(ref, 8.0, 1)
    kernels = _noisy(exact, 15.0, 2)
    a = arithmetic_check(ref, kernels, exact, backend="ort-cpu", cpu_int8="x86-no-vnni", reduce_range=False)
    assert not a["faithful"] and a["note"] is None


def test_the_exact_runner_computes_the_qdq_graph_as_written(tmp_path: Path) -> None:
    root = make_tiny_bundle(tmp_path / "bundle", int8=True)
    pre = read_manifest(root).preprocess
    x = np.stack([preprocess_file(fundus_jpeg(tmp_path / f"p{i}.jpg", size=96, seed=i), pre).image for i in range(6)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every Q/DQ pair as written
    as_written = ort.InferenceSession(str(root / "model.int8.onnx"), opts,
                                      providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    sha = read_manifest(root).file("model.int8.onnx").sha256
    np.testing.assert_allclose(ExactRunner(root / "model.int8.onnx", expected_sha256=sha).logits(x), as_written,
                               rtol=0, atol=1e-5)
    # Another file under that name is not measured (validate logs it and goes on without the check).
    with pytest.raises(BackendError, match="is not the file the bundle's manifest lists"):
        ExactRunner(root / "model.int8.onnx", expected_sha256="0" * 64)


def test_validate_reports_the_arithmetic_of_each_cpu_int8_candidate(tmp_path: Path) -> None:
    from tinymodel import TinyScreen
    from uopsl.train.commands.validate import resolve_data
    from uopsl.train.reference import TorchReference

    root = make_tiny_bundle(tmp_path / "bundle", int8=True)
    rows = ["path,label"]
    for i in range(24):
        p = fundus_jpeg(tmp_path / "photos" / f"i{i:03d}.jpg", size=96, seed=i)
        rows.append(f"{p.name},{CLASSES[i % len(CLASSES)].name}")
    (tmp_path / "photos" / "set.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    records, space, _ = resolve_data(str(tmp_path / "photos" / "set.csv"))
    reference = TorchReference(TinyScreen(len(CLASSES), seed=0), read_manifest(root).preprocess, device="cpu",
                               fingerprint="tinyscreen-seed0", source="TinyScreen(seed=0)")
    result = validate_bundle(root, reference, records, tmp_path / "run",
                             ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=0, show_progress=False, record=False),
                             label_space=space, availability=CPU)
    by_file = {c["file"]: c for c in result.report["candidates"]}
    assert "arithmetic" not in by_file["model.onnx"]  # FP32: nothing to check
    a = by_file["model.int8.onnx"]["arithmetic"]
    assert {"file_db", "backend_db", "kernels_db", "cpu_int8", "reduce_range", "faithful", "note"} <= set(a)
    assert a["reduce_range"] is False  # no reduce_range in the tiny bundle's record: 8-bit weights
    # The three distances, computed here independently: the file as written (no graph optimisation at all), what
    # ONNX Runtime's default session computes, and the PyTorch reference.
    pre = read_manifest(root).preprocess
    x = np.stack([preprocess_file(r.path, pre).image for r in records])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(str(root / "model.int8.onnx"), opts,
                                 providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    kernels = ort.InferenceSession(str(root / "model.int8.onnx"),
                                   providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    ref = reference.infer(x)["logits"]

    def sqnr(r: np.ndarray, t: np.ndarray) -> float:
        r64 = r.astype(np.float64)
        err = ((t.astype(np.float64) - r64) ** 2).sum()
        return 120.0 if err == 0 else min(120.0, 10 * np.log10((r64**2).sum() / err))

    assert a["file_db"] == pytest.approx(sqnr(ref, exact), abs=0.05)
    assert a["kernels_db"] == pytest.approx(sqnr(exact, kernels), abs=0.5)  # threads may round differently
    assert a["backend_db"] == pytest.approx(sqnr(ref, kernels), abs=0.5)
    assert a["file_top1"] == pytest.approx(float((exact.argmax(1) == ref.argmax(1)).mean()))
    on_disk = json.loads(result.json_path.read_text())
    assert any(c.get("arithmetic") == a for c in on_disk["candidates"])
    assert "INT8 arithmetic (logits SQNR): the file" in result.html_path.read_text()


def test_the_quantizer_measures_int8_files_in_their_exact_arithmetic(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ONNX Runtime session bias correction, GPTQ and the sensitivity pass open runs Q/DQ pairs as written,
    never this CPU's integer kernels (on x86 without VNNI those saturate; the figures they fit would be one
    CPU's). Checked on the sessions themselves, so it holds on any CPU."""
    from tinymodel import export_tiny_onnx, random_fundus_batch

    from uopsl.calibration.dataset import CalibrationSet
    from uopsl.calibration.ranges import collect_statistics
    from uopsl.export.quantize import QuantizeConfig, quantize_model

    model = export_tiny_onnx(tmp_path / "tiny.onnx")
    calib = CalibrationSet.from_images(random_fundus_batch(8, 64, seed=1))
    table = collect_statistics(model, calib, batch_size=8, show_progress=False).table("minmax")
    opened: list[tuple[str, str, str]] = []
    real = ort.InferenceSession

    def entry(o: ort.SessionOptions, key: str) -> str:
        try:
            return str(o.get_session_config_entry(key))
        except RuntimeError:  # not set
            return ""

    def spy(model_arg, sess_options=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        o = sess_options or ort.SessionOptions()
        opened.append((str(o.graph_optimization_level), entry(o, "session.disable_quant_qdq"),
                       entry(o, "session.disable_double_qdq_remover")))
        return real(model_arg, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    quantize_model(model, table, tmp_path / "q.onnx", QuantizeConfig(auto_exclude=1, sensitivity_images=4,
                                                                     rounding_images=4),
                   calib_set=calib, show_progress=False)
    assert len(opened) > 10  # the sensitivity pass alone opens one per layer
    for level, no_fusion, no_merge in opened:
        assert level.endswith("ORT_DISABLE_ALL") or (no_fusion, no_merge) == ("1", "1"), (level, no_fusion, no_merge)

