"""Training on a CUDA GPU: AMP steps, checkpoints the CPU reads, torchrun with nccl (two GPUs).

Marked ``gpu`` and skipped with a reason where PyTorch sees no CUDA GPU (CI has none). The CPU suite runs the
same code on the CPU; these check what only a GPU exercises: autocast with the gradient scaler, batches and
cached features placed on the device, weights saved from the device, and the nccl process group.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainhelpers import tiny_dataset, tiny_model
from uopsl.train.checkpoint import load_model
from uopsl.train.loops import StageRunner, TrainConfig, predict
from uopsl.train.stages import finetune

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")

# The checkpoint read on the CPU against the same weights on the GPU, both in FP32 with TF32 off: only kernel
# rounding differs (~1e-6); the bound is the FP32 parity tolerance of tests/parity.
FP32_PROB_TOLERANCE = 1e-4


@pytest.mark.gpu
@needs_cuda
def test_finetune_with_amp_on_cuda_trains_and_saves_weights_the_cpu_reads(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool, float]] = []
    real_step = StageRunner.step

    def spy(self: StageRunner, loss: torch.Tensor) -> None:
        seen.append((self.device.type, bool(self.amp), float(self.scaler.get_scale()) if self.amp else 1.0))
        real_step(self, loss)

    monkeypatch.setattr(StageRunner, "step", spy)
    ds = tiny_dataset(tmp_path, n=24)
    model, meta = tiny_model(random_text=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=8, save_every=0, augment=False, device="cuda", amp=True)
    model, result = finetune(model, ds, None, cfg, tmp_path / "run", meta)

    assert seen and all(dev == "cuda" and amp for dev, amp, _ in seen), seen
    assert all(scale > 0 for _, _, scale in seen)
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k].detach().cpu()) for k in before if after[k].is_floating_point())

    loaded, _ = load_model(tmp_path / "run")
    assert next(loaded.parameters()).device.type == "cpu"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        on_gpu = predict(model.eval(), ds, device=torch.device("cuda"))["probs"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    on_cpu = predict(loaded.eval(), ds, device=torch.device("cpu"))["probs"]
    assert np.abs(on_gpu - on_cpu).max() <= FP32_PROB_TOLERANCE


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs one GPU per rank and PyTorch sees fewer than 2 "
                    "here (with one rank torchrun runs no process group at all)")
def test_torchrun_with_nccl_two_gpus_end_with_identical_weights(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path), "auto"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "backend.txt").read_text() == "nccl"
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()
    assert (tmp_path / "pre_rank0.txt").read_text() == (tmp_path / "pre_rank1.txt").read_text()
    assert (tmp_path / "saved_by_rank0.txt").is_file() and not (tmp_path / "saved_by_rank1.txt").exists()
