"""GPU parity: PyTorch on CUDA vs ONNX Runtime CPU and CUDA, and TensorRT FP16/INT8 engines vs PyTorch.

Skipped with a reason where there is no CUDA GPU, no onnxruntime-gpu or no
TensorRT. Tolerances (stated, never widened):

* PyTorch on CUDA (TF32 off) vs ORT CPU FP32: |dp| <= 1e-4, the CPU parity tolerance.
* ORT CUDA FP32 vs PyTorch FP32: |dp| <= 2e-3. The reference runs with TF32
  off; ONNX Runtime's CUDA provider may run FP32 convolutions and matmuls in
  TF32 (10-bit mantissa) on Ampere and later GPUs, ~1e-3 relative. Since
  session 24 the backend sets ``use_tf32=0`` (ONNX Runtime >= 1.18), which
  should bring it near the CPU's 1e-4; that has not run on a GPU yet, so the
  bound stays the one measured (tighten it once a GPU run shows the figure).
* TensorRT FP16 vs PyTorch FP32: |dp| <= 5e-3 (FP16 keeps 11 significant bits).
* every GPU candidate: the default clinical gates (flips <= 0.5 %, AUC drop
  <= 0.005, sensitivity drop <= 1 point); INT8 engines are held to these only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.optional import available
from uopsl.runtime.preprocess import PreprocessConfig

FP32_PROB_TOLERANCE = 1e-4  # as tests/parity/test_fp32_parity.py: FP32 on both sides, TF32 off in the reference
ORT_CUDA_PROB_TOLERANCE = 2e-3
TRT_FP16_PROB_TOLERANCE = 5e-3


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _has_ort_cuda() -> bool:
    from uopsl.runtime.backends.onnxruntime import available_providers

    return "CUDAExecutionProvider" in available_providers()


# Decided at collection, so skipped tests build no fixtures.
needs_cuda = pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU visible to PyTorch")
needs_ort_cuda = pytest.mark.skipif(not _has_ort_cuda(), reason="ONNX Runtime here has no CUDA provider (onnxruntime-gpu)")
needs_trt = pytest.mark.skipif(not available("tensorrt"),
                               reason="TensorRT is not importable here (the trt extra of pyproject.toml, or JetPack on a Jetson)")


@pytest.fixture(scope="module")
def gpu_ckpt_bundle(tmp_path_factory: pytest.TempPathFactory, cast_sets: dict) -> tuple[Path, Path]:
    """(checkpoint, FP32 bundle) of the tiny UOPSL model with random class prototypes: GPU machines may lack
    the packaged text encoder, and these tests describe no new classes."""
    from paritykit import export_checkpoint, tiny_checkpoint

    root = tmp_path_factory.mktemp("gpu")
    ckpt = tiny_checkpoint(root / "ckpt", random_text=True)
    return ckpt, export_checkpoint(ckpt, root / "bundle", cast_sets["val"][:48])


def _records(cast_sets: dict) -> list[ImageRecord]:
    return [ImageRecord(f"{p.parent.name}/{p.name}", p, (p.parent.name,)) for p in cast_sets["val"]]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("backend", "tolerance"), [
    pytest.param("ort-cpu", FP32_PROB_TOLERANCE, id="ort-cpu"),
    pytest.param("ort-cuda", ORT_CUDA_PROB_TOLERANCE, id="ort-cuda", marks=needs_ort_cuda),
])
def test_pytorch_cuda_vs_ort_fp32(backend: str, tolerance: float, gpu_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                  tmp_path: Path) -> None:
    """The model as trained on a GPU (its reference on CUDA, TF32 off) against the deployed FP32 graph on ONNX
    Runtime's CPU and CUDA providers. ``passed`` includes the flip gate: on 48 images, no decision changed."""
    from uopsl.train.reference import TorchReference

    ckpt, bundle = gpu_ckpt_bundle
    result = validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cuda"), _records(cast_sets)[:48],
                             tmp_path / "out", ValidateConfig(keep_ungradable=True, backends=(backend,), show_progress=False, record=False),
                             label_space=("normal", "a", "b"))
    cands = [c for c in result.report["candidates"] if c["precision"] == "fp32"]
    assert cands, result.report["skipped_candidates"]
    for cand in cands:
        assert "error" not in cand, cand
        assert cand["numerical"]["max_abs_prob_diff"] <= tolerance, cand["numerical"]
        assert cand["clinical"]["flips"]["n"] == 0, cand["clinical"]
        assert cand["passed"], cand["reasons"]


@pytest.mark.gpu
@pytest.mark.trt
@needs_cuda
@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engine_vs_pytorch(precision: str, screen_model: tuple, cast_sets: dict, tmp_path: Path) -> None:
    from paritykit import CLASSES, add_int8, model_inputs, write_contract_bundle
    from uopsl.export.bundle_writer import add_file
    from uopsl.export.tensorrt import EngineBuildConfig, build_engine
    from uopsl.train.reference import TorchReference

    module, thresholds = screen_model
    bundle = write_contract_bundle(tmp_path / "bundle", module, CLASSES, thresholds, (8, 8))
    onnx_file = bundle / "model.onnx"
    config = EngineBuildConfig(precision=precision, min_batch=1, opt_batch=8, max_batch=16)  # type: ignore[arg-type]
    if precision == "int8":
        add_int8(bundle, model_inputs(cast_sets["fit"]), variant="trt")
        onnx_file = bundle / "model.int8.trt.onnx"
        config = EngineBuildConfig(precision="int8", int8_mode="qdq", min_batch=1, opt_batch=8, max_batch=16)
    name = f"model.{precision}.engine"
    info = build_engine(onnx_file, bundle / name, config)
    add_file(bundle, None, name, "engine", precision, info=info.header.to_dict())  # type: ignore[arg-type]
    reference = TorchReference(module, PreprocessConfig(size=64), device="cuda")
    result = validate_bundle(bundle, reference, _records(cast_sets), tmp_path / "out",
                             ValidateConfig(keep_ungradable=True, backends=("tensorrt",), batch_size=16, show_progress=False, record=False),
                             label_space=CLASSES)
    cand = next(c for c in result.report["candidates"] if c["file"] == name)
    assert "error" not in cand, cand
    if precision == "fp16":
        assert cand["numerical"]["max_abs_prob_diff"] <= TRT_FP16_PROB_TOLERANCE, cand["numerical"]
    assert cand["passed"], cand["reasons"]
    shutil.rmtree(tmp_path / "bundle", ignore_errors=True)
