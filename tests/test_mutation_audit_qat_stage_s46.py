"""Mutation audit (session 46) of the QAT stage: ``qat_finetune`` / ``distillation_loss`` in ``uopsl.train.qat`` and
the ``uopsl qat`` command (``uopsl.train.commands.qat``).

Single-point mutants (Q01-Q27 in the stage, C01-C22 in the command) were run in a scratch tree shadowing
``uopsl.train`` against tests/test_qat.py and tests/test_review_fixes_s30.py. These tests close the gaps the
survivors showed. Each run is tiny (EfficientNet-Lite0 at 64 px, a handful of photographs, one or two epochs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from test_qat import _checkpoint_and_folder, lite0_model
from trainhelpers import tiny_dataset
from uopsl.train import qat
from uopsl.train.checkpoint import UNFINISHED_KEY, UNFINISHED_RUN_KEY, read_meta
from uopsl.train.torchdata import ImageDataset
from uopsl.train.workflow import RUN_IDENTITY_KEY


class _Logits(nn.Module):
    """A stand-in model whose logits are ``scale * x``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.scale * x}


def test_distillation_loss_is_the_mean_squared_logit_difference() -> None:
    """Q01, Q02: the student must be pulled towards the TEACHER's logits by their mean squared difference (the
    history reports it as ``logit_mse``). Against the student's own logits the loss is 0 and nothing trains; an L1
    loss would train towards another optimum and report a number that is not the MSE."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    student, teacher = _Logits(2.0), _Logits(1.0)
    out = qat.distillation_loss(student, teacher, x)
    # (2x - x)^2 averaged: (1 + 4 + 9 + 16) / 4
    assert float(out["loss"].detach()) == pytest.approx(7.5)
    assert float(out["logit_mse"]) == pytest.approx(7.5)
    out["loss"].backward()
    assert student.scale.grad is not None and float(student.scale.grad) == pytest.approx(15.0)  # 2 * mean(x^2)
    assert teacher.scale.grad is None and not out["logit_mse"].requires_grad


def _unaugmented(ds: ImageDataset) -> ImageDataset:
    view = copy.copy(ds)
    view.augment = False
    return view


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``qat_finetune`` run with every photograph used for calibration, augmentation on, a teacher handed over
    in train mode with metrics of its own run, an encoder weight rate of 1e-12 and a bias rate of 1e-2; records what
    the stage calibrated on and what the loss saw."""
    tmp = tmp_path_factory.mktemp("qat_api")
    ds = tiny_dataset(tmp / "data", n=8, augment=True)
    view = _unaugmented(ds)
    plain = torch.stack([view[i][0] for i in range(len(view))])
    model, meta = lite0_model()
    reference = copy.deepcopy(model).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # as load_model hands it over
    meta = replace(meta, metrics={"auc": 0.9, UNFINISHED_KEY: True, UNFINISHED_RUN_KEY: "identity:teacher",
                                  RUN_IDENTITY_KEY: {"stage": "finetune", "model": "t", "settings": "s", "data": "d"}})
    seen: dict[str, Any] = {"calib": [], "teacher_matches": [], "augment": []}
    real_calibrate, real_loss = qat.SimulatedInt8.calibrate, qat.distillation_loss

    def calibrate(self: qat.SimulatedInt8, images: torch.Tensor, batch_size: int = 16) -> None:
        seen["calib"].append(images.clone())
        real_calibrate(self, images, batch_size)

    def loss(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            seen["teacher_matches"].append(torch.allclose(teacher(x)["logits"], reference(x)["logits"], atol=1e-5))
        seen["augment"].append(ds.augment)
        return real_loss(student, teacher, x)

    mp = pytest.MonkeyPatch()
    mp.setattr(qat.SimulatedInt8, "calibrate", calibrate)
    mp.setattr(qat, "distillation_loss", loss)
    try:
        cfg = qat.QatConfig(epochs=1, batch_size=8, lr=1e-12, bias_lr=1e-2, calib_images=8, augment=True,
                            save_every=0)
        trained, result = qat.qat_finetune(model, meta, ds, cfg, tmp / "out")
    finally:
        mp.undo()
    return {"seen": seen, "plain": plain, "ds": ds, "original": original, "trained": trained, "result": result,
            "out": tmp / "out"}


def test_a_set_of_exactly_calib_images_photographs_is_enough(api_run: dict[str, Any]) -> None:
    """Q05: ``<=`` for ``<`` refused QAT on exactly ``calib_images`` photographs (8 of 8 here)."""
    assert read_meta(api_run["out"]).stage == "qat"
    assert len(api_run["result"]["history"]) == 1


def test_the_grids_come_from_the_first_calib_images_photographs_unaugmented(api_run: dict[str, Any]) -> None:
    """Q16, Q18: the simulated uint8 grids are measured on the first ``calib_images`` photographs WITHOUT
    augmentation (what calibration of the deployed file sees; a resumed run must measure the same grids). Jittered
    photographs or one photograph fewer give other grids than the INT8 file gets."""
    (calib,) = api_run["seen"]["calib"]
    assert calib.shape[0] == 8
    assert torch.equal(calib, api_run["plain"])


def test_training_keeps_the_callers_augmentation(api_run: dict[str, Any]) -> None:
    """Q17: switching augmentation off for the calibration view must not switch it off on the caller's dataset
    (QAT would then train without the jitter asked for, and the dataset object stays altered afterwards)."""
    assert api_run["seen"]["augment"] and all(api_run["seen"]["augment"])
    assert api_run["ds"].augment is True


def test_the_teacher_computes_the_original_models_deployed_outputs(api_run: dict[str, Any]) -> None:
    """Q07: the teacher must run in eval mode whatever mode the model came in (``load_model`` returns train mode):
    in train mode its BatchNorms normalise each batch by itself, so the student would be pulled towards outputs the
    FP32 model never computes (and the teacher's running statistics would drift)."""
    assert api_run["seen"]["teacher_matches"] and all(api_run["seen"]["teacher_matches"])


def test_the_bias_rate_moves_the_biases_and_the_weight_rate_the_weights(api_run: dict[str, Any]) -> None:
    """Q08, Q11, Q14: ``--lr`` is the encoder weights' rate, ``--bias-lr`` the encoder biases' and BatchNorm shifts',
    and nothing outside the encoder trains. With the rates swapped, or the runner's single-rate optimiser left in
    place, ``--bias-lr`` acts on the wrong tensors or not at all; with every parameter trainable the float head
    (which the deployed model computes in float, unchanged) moves."""
    original, trained = api_run["original"], api_run["trained"].state_dict()
    moved_bias = moved_weight = 0.0
    for name, before in original.items():
        if name.startswith("oct."):
            continue  # dropped: see test_the_qat_checkpoint_drops_the_oct_branch
        change = float((trained[name].float() - before.float()).abs().max()) if before.numel() else 0.0
        if not name.startswith("fundus.encoder."):
            assert change == 0.0, name  # the head and the prototypes
        elif name.endswith("bias"):
            moved_bias = max(moved_bias, change)
        elif name.endswith("weight"):
            moved_weight = max(moved_weight, change)
    assert moved_bias > 1e-3  # one Adam step at 1e-2
    assert moved_weight < 1e-6  # one Adam step at 1e-12


def test_the_qat_checkpoint_drops_the_oct_branch(api_run: dict[str, Any]) -> None:
    """Q06: QAT distils the fundus model; like a fine-tuned checkpoint it must not carry (and double its size with)
    the OCT branch, which it neither trains nor deploys."""
    from uopsl.train.checkpoint import load_tensors

    names = list(load_tensors(api_run["out"] / "model.safetensors"))
    assert any(n.startswith("fundus.encoder.") for n in names)
    assert not [n for n in names if n.startswith("oct.")]


def test_the_checkpoint_keeps_the_teachers_metrics_but_not_its_run_state(api_run: dict[str, Any]) -> None:
    """Q22, Q23, Q26: the QAT checkpoint keeps the teacher's metrics (its thresholds' provenance) and adds its own
    history, but neither the teacher's run identity (read as its own, the same command was refused as another run:
    the pre-2026-12-02 bug) nor the teacher's "stopped before completing" marks (a finished QAT model would be taken
    for an interrupted one)."""
    metrics = read_meta(api_run["out"]).metrics
    assert metrics["auc"] == 0.9
    assert RUN_IDENTITY_KEY not in metrics  # no identity was given to this run
    assert UNFINISHED_KEY not in metrics and UNFINISHED_RUN_KEY not in metrics
    history = metrics["qat"]["history"]
    assert len(history) == 1 and history == api_run["result"]["history"]
    assert metrics["qat"]["qat"]["bias_lr"] == 1e-2


def _digest(path: Path) -> int:
    return int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "big")


def test_out_may_neither_hold_nor_lie_inside_the_checkpoint(tmp_path: Path) -> None:
    """C01, C02: --out the folder that holds CHECKPOINT (one of its parents), or a folder inside it, is refused before
    anything is written: the teacher must stay as it is for ``uopsl validate``. The test of tests/test_qat.py tries
    only --out = CHECKPOINT itself."""
    from uopsl.train.cli import cli

    _checkpoint_and_folder(tmp_path / "ws")
    ckpt = tmp_path / "ws" / "ckpt"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    base = ["qat", str(ckpt), "--data", f"folder:{tmp_path / 'ws' / 'folder'}", "--epochs", "1", "--batch-size", "4",
            "--calib-images", "4", "--no-augment"]
    for out in (tmp_path / "ws", ckpt / "qat", ckpt / ".." / "ckpt"):
        res = CliRunner().invoke(cli, [*base, "--out", str(out)])
        assert res.exit_code == 2 and "the original model must stay as it is" in res.output, out
    assert not (ckpt / "qat").exists() and not (tmp_path / "ws" / "checkpoint.json").exists()
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``uopsl qat`` on the first 6 of 12 photographs, 2 epochs, its own --cache and --bias-lr, from a teacher
    that records the photographs that made it; then the same command again."""
    from uopsl.train.cli import cli
    from uopsl.train.commands.common import items_for, load_source
    from uopsl.train.workflow import record_images_seen

    tmp = tmp_path_factory.mktemp("qat_cli")
    _checkpoint_and_folder(tmp)
    spec = f"folder:{tmp / 'folder'}"
    items = items_for(load_source(spec), ("normal", "a", "b"), "fundus")
    teacher_seen = [_digest(Path(it.path)) for it in items[6:9]]
    record_images_seen(tmp / "ckpt", {"train": teacher_seen})
    args = ["qat", str(tmp / "ckpt"), "--data", spec, "--out", str(tmp / "out"), "--images", "6", "--epochs", "2",
            "--batch-size", "6", "--calib-images", "3", "--lr", "1e-3", "--bias-lr", "2e-3", "--no-augment",
            "--cache", str(tmp / "mycache")]
    augment: list[bool] = []
    real = qat.qat_finetune

    def spy(model: Any, meta: Any, ds: Any, *a: Any, **k: Any) -> Any:
        augment.append(ds.augment)
        return real(model, meta, ds, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(qat, "qat_finetune", spy)
    try:
        first = CliRunner().invoke(cli, args)
        stamp = (tmp / "out" / "model.safetensors").stat().st_mtime_ns
        calls = len(augment)
        again = CliRunner().invoke(cli, args)
    finally:
        mp.undo()
    return {"tmp": tmp, "first": first, "again": again, "items": items, "teacher_seen": teacher_seen,
            "augment": augment, "calls_before_rerun": calls, "stamp": stamp}


def test_cli_trains_on_the_first_n_photographs_and_records_them(cli_run: dict[str, Any]) -> None:
    """C07, C09, C11, C18, C19: --images N takes the first N photographs; the checkpoint's training-data records
    end with QAT's (stage qat, N photographs: it feeds the bundle's "trained on" line and the synthetic-only check),
    and images_seen.json lists QAT's photographs and the teacher's own (``uopsl evaluate`` warns from them when
    evaluation photographs made the model)."""
    assert cli_run["first"].exit_code == 0, cli_run["first"].output
    out = cli_run["tmp"] / "out"
    record = read_meta(out).training_data[-1]
    assert record["stage"] == "qat" and record["n_images"] == 6 and record["modality"] == "fundus"
    roles = json.loads((out / "images_seen.json").read_text())["roles"]
    first6 = sorted(f"{_digest(Path(it.path)):016x}" for it in cli_run["items"][:6])
    assert roles["qat"] == first6
    assert roles["earlier"] == sorted(f"{d:016x}" for d in cli_run["teacher_seen"])


def test_cli_passes_its_settings_and_cache_on(cli_run: dict[str, Any]) -> None:
    """C14, C15, C22: --cache is where the preprocessed photographs go (not OUT/cache), --no-augment trains without
    jitter, and --bias-lr is the rate the biases get (saved with the settings)."""
    out = cli_run["tmp"] / "out"
    assert any((cli_run["tmp"] / "mycache").rglob("*")) and not (out / "cache").exists()
    assert cli_run["augment"][:1] == [False]
    saved = read_meta(out).train_config["qat"]
    assert (saved["lr"], saved["bias_lr"], saved["calib_images"], saved["augment"]) == (1e-3, 2e-3, 3, False)


def test_cli_prints_the_last_epochs_error(cli_run: dict[str, Any]) -> None:
    """C20: the summary line quotes the LAST epoch's simulated logit MSE, the one the written model has."""
    history = read_meta(cli_run["tmp"] / "out").metrics["qat"]["history"]
    last, first = f"{history[-1]['logit_mse']:.5f}", f"{history[0]['logit_mse']:.5f}"
    assert len(history) == 2 and last != first  # the test tells the epochs apart
    said = re.search(r"last epoch: ([0-9.]+)\)", cli_run["first"].output)
    assert said is not None and said.group(1) == last


def test_cli_does_not_train_a_finished_run_again(cli_run: dict[str, Any]) -> None:
    """C13: the same command on its finished --out says so and stops: it neither trains again (minutes to hours on
    real data) nor rewrites the checkpoint."""
    assert cli_run["again"].exit_code == 0, cli_run["again"].output
    assert "not trained again" in cli_run["again"].output
    assert "QAT checkpoint written" not in cli_run["again"].output
    assert len(cli_run["augment"]) == cli_run["calls_before_rerun"] == 1
    assert (cli_run["tmp"] / "out" / "model.safetensors").stat().st_mtime_ns == cli_run["stamp"]
