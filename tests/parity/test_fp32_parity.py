"""PyTorch reference vs ONNX Runtime (and OpenVINO) FP32: probabilities within 1e-4, decisions identical.

Tolerance: |p_onnx - p_torch| <= 1e-4 for every image and class (FP32 on both
sides; the exported graph is the same folded graph, so only kernel rounding
differs, typically ~1e-6). Stated here, never widened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from paritykit import TVHL
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.optional import available
from uopsl.train.reference import TorchReference

FP32_PROB_TOLERANCE = 1e-4


def _fp32_candidates(report: dict) -> list[dict]:
    return [c for c in report["candidates"] if c["precision"] == "fp32"]


def _assert_fp32_parity(report: dict, verdict: str = "PASS") -> None:
    cands = _fp32_candidates(report)
    assert cands, report["skipped_candidates"]
    for c in cands:
        assert "error" not in c, c
        assert c["numerical"]["max_abs_prob_diff"] <= FP32_PROB_TOLERANCE, (c["name"], c["numerical"])
        assert c["numerical"]["logit_cosine_min"] > 0.99999, c["numerical"]
        assert c["numerical"]["site_map_corr_min"] > 0.9999, c["numerical"]
        assert c["clinical"]["flips"]["n"] == 0 and c["clinical"]["top1_agreement"] == 1.0
        assert c["verdict"] == verdict and c["passed"] == (verdict == "PASS"), c["reasons"]
        assert not any(k["passed"] is False for k in c["checks"]), c["reasons"]  # nothing exceeded, whatever the data


def test_pytorch_vs_onnx_fp32_on_labelled_images(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                 tmp_path: Path) -> None:
    ckpt, bundle = tiny_ckpt_bundle
    records = [ImageRecord(f"{p.parent.name}/{p.name}", p, (p.parent.name,)) for p in cast_sets["val"][:48]]
    config = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=200, show_progress=False, record=False)
    result = validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), records, tmp_path / "out", config,
                             label_space=("normal", "a", "b"))
    _assert_fp32_parity(result.report)
    assert result.report["data"]["truth"] == "labels" and result.report["data"]["n_used"] == 48
    assert result.passed and result.exit_code == 0


def test_pytorch_vs_onnx_fp32_on_generator_images(tiny_ckpt_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    synthetic = pytest.importorskip("uopsl.train.synthetic", reason="the synthetic generator is not in this build")
    from uopsl.train.commands.validate import resolve_data

    ckpt, bundle = tiny_ckpt_bundle
    # 48 images: 'normal' gets MIN_CASES_PER_CLASS positives and negatives
    data = synthetic.make_dataset(tmp_path / "synth", 48, config=synthetic.SynthConfig(size=160, seed=3),
                                  progress=False).parent
    records, space, _ = resolve_data(str(data))
    assert space is not None and len(records) == 48
    # data labelled for other classes on purpose: said, not refused
    config = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=200, show_progress=False, record=False,
                            unknown_labels="negative")
    result = validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), records, tmp_path / "out", config,
                             label_space=space)
    # the generator's disease classes are not the tiny model's: only 'normal' gets clinical metrics, with a note;
    # the AUC and sensitivity gates cannot be evaluated for 'a' and 'b', so the verdict is INCOMPLETE, not PASS
    _assert_fp32_parity(result.report, "INCOMPLETE")
    assert result.report["data"]["classes_with_truth"] == ["normal"]
    assert any("without labels" in n for n in result.report["notes"])
    checks = {k["name"]: k for k in result.report["candidates"][0]["checks"]}
    assert [s["class"] for s in checks["auc_drop"]["skipped"]] == ["a", "b"]
    assert checks["auc_drop"]["skipped"][0]["reason"] == "no labels for this class in the data"
    assert [s["class"] for s in checks["sensitivity_drop"]["skipped"]] == ["a", "b", "referral"]
    assert result.exit_code == 1 and result.status == "INCOMPLETE"


@pytest.mark.skipif(not TVHL.is_dir(), reason=f"real TVHL images not found at {TVHL} (read-only shared data)")
def test_pytorch_vs_onnx_fp32_on_real_tvhl_images(tiny_ckpt_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    from uopsl.train import data

    ckpt, bundle = tiny_ckpt_bundle
    src = data.read_tvhl(TVHL, task="four_class")
    # 133 photographs: the reference calls each class positive and negative on MIN_CASES_PER_CLASS of them
    records = [ImageRecord(s.path.name, s.path, s.labels) for s in src.samples[::8]]
    result = validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), records, tmp_path / "out",
                             ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=200, show_progress=False, record=False))
    _assert_fp32_parity(result.report)
    assert result.report["data"]["truth"] == "reference_decisions"  # TVHL's classes are not the tiny model's


@pytest.mark.skipif(not available("openvino"), reason="OpenVINO is not installed (pip install 'uopsl[openvino]')")
def test_pytorch_vs_openvino_fp32(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict, tmp_path: Path) -> None:
    ckpt, bundle = tiny_ckpt_bundle
    records = [ImageRecord(p.name, p, None) for p in cast_sets["val"][:24]]
    result = validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), records, tmp_path / "out",
                             ValidateConfig(keep_ungradable=True, backends=("openvino",), n_boot=0, show_progress=False, record=False))
    assert not result.report["candidates"][0].get("error"), result.report["candidates"][0]
    _assert_fp32_parity(result.report)
