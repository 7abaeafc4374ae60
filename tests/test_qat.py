"""Quantization-aware fine-tuning (``uopsl.train.qat``): the simulation, its fidelity, the stage and the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tinymodel import random_fundus_batch
from trainhelpers import CLASSES, tiny_dataset
from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.ranges import collect_statistics
from uopsl.export.onnx_export import export_onnx
from uopsl.export.quantize import QuantizeConfig, quantize_model
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train import qat
from uopsl.train.checkpoint import CheckpointMeta, load_model, read_meta, save_model
from uopsl.train.model import DeployModel, ModelConfig, UopslModel

SIZE = 64


def lite0_model(seed: int = 0, init: str = "random") -> tuple[UopslModel, CheckpointMeta]:
    """A small UOPSL model on EfficientNet-Lite0; ``init="imagenet"``: the real weights (offline package)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="efficientnet_lite0", init=init, classes=CLASSES, dim=32, sites=2)  # type: ignore[arg-type]
    text = np.random.default_rng(seed).standard_normal((3, 384)).astype(np.float32)
    model = UopslModel(cfg, text).eval()
    if init == "random":  # random BatchNorm statistics, so the fold is not the identity
        g = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    meta = CheckpointMeta(model=cfg, preprocess=PreprocessConfig(size=SIZE), phrases=(("n",), ("a",), ("b",)),
                          thresholds=(0.5, 0.4, 0.3), referable=(False, True, True), data_fingerprint="tiny")
    return model, meta


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).mean() / ((ref - x) ** 2).mean()))


def test_weights_land_on_the_per_channel_int8_grid_and_pass_gradients_straight_through() -> None:
    w = (torch.randn(6, 4, 3, 3) * torch.linspace(0.01, 3.0, 6).view(6, 1, 1, 1)).requires_grad_()
    q = qat.fake_quant_weight(w)
    scale = w.detach().abs().reshape(6, -1).amax(1) / 127
    ints = q.detach() / scale.view(6, 1, 1, 1)
    assert torch.allclose(ints, ints.round(), atol=1e-3)
    assert float(ints.abs().max()) <= 127 + 1e-3
    assert float((q - w).abs().max()) <= float(scale.max()) / 2 + 1e-6
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize(("lo", "hi", "scale", "zero"), [(-1.0, 3.0, 4 / 255, 64), (0.5, 6.0, 6 / 255, 0),
                                                        (-2.0, -1.0, 2 / 255, 255)])
def test_uint8_grid_holds_zero_like_onnx_runtime(lo: float, hi: float, scale: float, zero: int) -> None:
    s, z = qat.uint8_grid(lo, hi)
    assert s == pytest.approx(scale) and z == zero


def test_inside_the_context_the_encoder_computes_in_int8_and_leaves_as_it_was() -> None:
    model, _ = lite0_model()
    x = as_input(random_fundus_batch(4, SIZE, seed=3))
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(x)["logits"]
        with qat.SimulatedInt8(model) as sim:
            assert list(model.state_dict()) == keys  # checkpoints and resume see the usual model
            # The encoder's last output is read in float by the head: no uint8 grid there, one before it
            # (session 43's audit, Z30).
            assert sim.outputs[-1].output_range is None and sim.outputs[-2].output_range is not None
            recording = model(x)["logits"]  # grids not fixed yet: folded float arithmetic, weights rounded
            sim.calibrate(x)
            simulated = model(x)["logits"]
        after = model(x)["logits"]
    assert torch.equal(before, after)
    assert not torch.allclose(simulated, before, atol=1e-4)
    assert sqnr_db(before.numpy(), recording.numpy()) > sqnr_db(before.numpy(), simulated.numpy())
    assert len(sim.layers) == sum(isinstance(m, torch.nn.Conv2d) for m in model.fundus.encoder.trunk.modules())


def test_simulation_reproduces_what_onnx_runtime_computes_from_the_quantized_file(tmp_path: Path) -> None:
    """The point of the module: its rounding errors are the deployed INT8 file's, not just any noise.

    ImageNet weights: realistic activation and weight ranges. Before session 46 (grids measured with rounded
    weights, float biases and residual sums) this sat 23.2 dB from the file, 5.6 dB closer than FP32 sits, and
    failed here; now 30.0 dB (docs/results.md, benchmarks/qat_simulation_fidelity.py).
    """
    model, _ = lite0_model(init="imagenet")
    calib = random_fundus_batch(16, SIZE, seed=1)
    x = random_fundus_batch(16, SIZE, seed=2)
    fp32 = tmp_path / "model.onnx"
    export_onnx(DeployModel(model, SIZE), fp32, SIZE)
    table = collect_statistics(fp32, CalibrationSet.from_images(calib), batch_size=8, show_progress=False).table("minmax")
    int8 = tmp_path / "model.int8.onnx"
    quantize_model(fp32, table, int8, QuantizeConfig(bias_correction=False, rounding="nearest"), show_progress=False)
    with OrtBackend(fp32, "cpu", 1) as b:
        l_fp = b.infer(x)["logits"]
    # The file's exact arithmetic (what VNNI CPUs, OpenVINO and TensorRT compute): on x86 without VNNI, ONNX
    # Runtime's integer kernels saturate and sit ~9 dB from it (docs/results.md, section 4, session 22).
    with OrtBackend(int8, "cpu", 1, optimization="disable") as b:
        l_q = b.infer(x)["logits"]
    with torch.no_grad(), qat.SimulatedInt8(model) as sim:
        sim.calibrate(as_input(calib))
        l_s = model(as_input(x))["logits"].numpy()
    err_q, err_s = (l_q - l_fp).ravel(), (l_s - l_fp).ravel()
    # The simulation sits much closer to the INT8 file than either sits to FP32, and errs the same way.
    assert sqnr_db(l_q, l_s) > sqnr_db(l_fp, l_q) + 6.0
    assert np.corrcoef(err_q, err_s)[0, 1] > 0.8


def test_qat_lowers_the_simulated_error_and_writes_a_checkpoint_with_the_same_thresholds(tmp_path: Path) -> None:
    model, meta = lite0_model(init="imagenet")
    ds = tiny_dataset(tmp_path / "data", n=24, augment=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        target = model(x)["logits"]
        with qat.SimulatedInt8(model) as sim:
            sim.calibrate(x[:8])
            before = float(((model(x)["logits"] - target) ** 2).mean())
    # 8 epochs: after 4 the error had fallen below 0.6x on an AVX-512 CPU but only to 0.69x on an AVX2 one (their float
    # kernels round differently); after 8, 0.49x on the AVX2 CPU.
    cfg = qat.QatConfig(epochs=8, batch_size=8, lr=3e-6, calib_images=8, augment=False, save_every=0)
    trained, result = qat.qat_finetune(model, meta, ds, cfg, tmp_path / "out")
    # Re-simulated as a deployment would be: grids measured anew on the trained weights.
    with torch.no_grad(), qat.SimulatedInt8(trained) as sim:
        sim.calibrate(x[:8])
        after = float(((trained(x)["logits"] - target) ** 2).mean())
    assert after < 0.6 * before
    saved = read_meta(tmp_path / "out")
    assert saved.stage == "qat" and saved.thresholds == meta.thresholds and saved.referable == meta.referable
    assert saved.train_config["qat"]["epochs"] == 8 and len(result["history"]) == 8
    reloaded, _ = load_model(tmp_path / "out")
    for (name, a), b in zip(trained.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    # Only the encoder trained: the deployed head is the original one.
    original, _ = lite0_model(init="imagenet")
    assert torch.equal(trained.bias, original.bias)
    assert torch.equal(trained.fundus.glob.weight, original.fundus.glob.weight)  # the token projection too


def _dies_at_step(monkeypatch: pytest.MonkeyPatch, step: int):  # type: ignore[no-untyped-def]
    """Make QAT's loss raise KeyboardInterrupt (a power loss) at its ``step``-th call; returns the real loss."""
    real = qat.distillation_loss
    calls = {"n": 0}

    def dying(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(qat, "distillation_loss", dying)
    return real


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset(tmp_path / "data", n=24, augment=False)
    cfg = qat.QatConfig(epochs=2, batch_size=8, lr=1e-3, calib_images=8, augment=False, save_every=1)
    model, meta = lite0_model()
    straight, _ = qat.qat_finetune(model, meta, ds, cfg, tmp_path / "straight")

    real = _dies_at_step(monkeypatch, 4)
    model, meta = lite0_model()
    with pytest.raises(KeyboardInterrupt):
        qat.qat_finetune(model, meta, ds, cfg, tmp_path / "resumed")
    monkeypatch.setattr(qat, "distillation_loss", real)
    # Other QAT settings (even one TrainConfig does not hold) do not resume someone else's run.
    model, meta = lite0_model()
    with pytest.raises(ConfigError, match=r"holds an interrupted qat run with other settings: bias_lr \(.* there, 0\.0001 now\); rerun"):
        qat.qat_finetune(model, meta, ds, replace(cfg, bias_lr=1e-4), tmp_path / "resumed")
    model, meta = lite0_model()
    resumed, _ = qat.qat_finetune(model, meta, ds, cfg, tmp_path / "resumed")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lr and bias_lr must be > 0, got 0.0 and 3e-06"):
        qat.QatConfig(lr=0.0)
    with pytest.raises(ConfigError, match="calib_images must be >= 1"):
        qat.QatConfig(calib_images=0)
    model, meta = lite0_model()
    ds = tiny_dataset(tmp_path / "data", n=6)
    with pytest.raises(ConfigError, match="at least calib_images=64 images, got 6"):
        qat.qat_finetune(model, meta, ds, qat.QatConfig(), tmp_path / "out")
    # One photograph short is short too (session 43's audit, Z29: a check one off let it through to an IndexError).
    with pytest.raises(ConfigError, match="at least calib_images=7 images, got 6"):
        qat.qat_finetune(model, meta, ds, qat.QatConfig(calib_images=7), tmp_path / "out")


def _checkpoint_and_folder(tmp_path: Path) -> tuple[UopslModel, CheckpointMeta]:
    """A Lite0 checkpoint in ``tmp_path/ckpt`` and a folder-per-class dataset of 12 tiny photographs in
    ``tmp_path/folder``."""
    from trainhelpers import tiny_items

    model, meta = lite0_model()
    save_model(tmp_path / "ckpt", model, meta)
    for it in tiny_items(tmp_path / "imgs", n=12):
        cls = CLASSES[int(np.argmax(it.target))]
        (tmp_path / "folder" / cls).mkdir(parents=True, exist_ok=True)
        Path(it.path).rename(tmp_path / "folder" / cls / Path(it.path).name)
    return model, meta


def test_cli_writes_the_qat_checkpoint(tmp_path: Path) -> None:
    from uopsl.train.cli import cli

    model, meta = _checkpoint_and_folder(tmp_path)
    res = CliRunner().invoke(cli, ["qat", str(tmp_path / "ckpt"), "--data", f"folder:{tmp_path / 'folder'}",
                                    "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "4",
                                    "--calib-images", "4", "--no-augment"])
    assert res.exit_code == 0, res.output
    assert "QAT checkpoint written to" in res.output
    assert read_meta(tmp_path / "out").stage == "qat"
    # Its bundle is validated against the ORIGINAL checkpoint (docs/deployment.md): export carries that digest.
    from uopsl.runtime.bundle import read_manifest
    from uopsl.train.checkpoint import bundle_source_mismatch, checkpoint_digest
    from uopsl.train.workflow import run_export

    assert read_meta(tmp_path / "out").train_config["teacher_weights_sha256"] == checkpoint_digest(tmp_path / "ckpt")
    notes = read_manifest(run_export(tmp_path / "out", tmp_path / "bundle")).notes
    assert bundle_source_mismatch(tmp_path / "ckpt", notes) is None  # the original
    assert bundle_source_mismatch(tmp_path / "out", notes) is None  # the QAT checkpoint itself
    stranger = lite0_model()[0]
    with torch.no_grad():
        next(stranger.parameters()).add_(1.0)  # other weights: another model
    save_model(tmp_path / "stranger", stranger, meta)
    assert bundle_source_mismatch(tmp_path / "stranger", notes) is not None


def test_quantize_warns_when_a_qat_bundle_would_get_the_defaults_that_undo_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bias correction and GPTQ pull a QAT model towards its own FP32 outputs (docs/results.md, session 46)."""
    from uopsl.train.cli import cli
    from uopsl.train.workflow import run_export

    _checkpoint_and_folder(tmp_path)
    folder = str(tmp_path / "folder")
    assert CliRunner().invoke(cli, ["qat", str(tmp_path / "ckpt"), "--data", f"folder:{folder}", "--out",
                                    str(tmp_path / "out"), "--epochs", "1", "--batch-size", "4",
                                    "--calib-images", "4", "--no-augment"]).exit_code == 0
    bundles = {"qat": run_export(tmp_path / "out", tmp_path / "qat_bundle"),
               "original": run_export(tmp_path / "ckpt", tmp_path / "bundle")}
    for b in bundles.values():
        res = CliRunner().invoke(cli, ["calibrate", str(b), "--images", folder, "--method", "minmax",
                                       "--allow-no-fov", "--no-cache"])
        assert res.exit_code == 0, res.output

    def warned(which: str, *options: str) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="uopsl.train.commands.quantize"):
            res = CliRunner().invoke(cli, ["quantize", str(bundles[which]), "--images", folder, "--allow-no-fov",
                                           *options])
        assert res.exit_code == 0, res.output
        return [r.getMessage() for r in caplog.records if "uopsl qat" in r.getMessage()]

    (said,) = warned("qat")
    assert "--bias-correction and --rounding gptq" in said and "--rounding nearest --no-bias-correction" in said
    (said,) = warned("qat", "--no-bias-correction")  # GPTQ still by default
    assert "--rounding gptq" in said and "--bias-correction" not in said
    assert warned("qat", "--rounding", "nearest", "--no-bias-correction") == []
    assert warned("qat", "--bias-correction", "--rounding", "gptq") == []  # given: the user's choice
    assert warned("original") == []  # not a QAT model


def test_cli_resumes_only_the_same_teacher_and_photographs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The resume key held the teacher checkpoint's data fingerprint, which says nothing of QAT's own --data."""
    from uopsl.runtime.clikit import main_entry
    from uopsl.train.cli import cli

    model, meta = _checkpoint_and_folder(tmp_path)

    def args(*more: str) -> list[str]:
        return ["qat", str(tmp_path / "ckpt"), "--data", f"folder:{tmp_path / 'folder'}", "--out",
                str(tmp_path / "out"), "--epochs", "2", "--batch-size", "4", "--calib-images", "4", "--no-augment",
                "--save-every", "1", *more]

    real = _dies_at_step(monkeypatch, 3)
    assert main_entry(cli, args(), prog_name="uopsl") != 0
    assert (tmp_path / "out" / "state.json").is_file()
    monkeypatch.setattr(qat, "distillation_loss", real)
    state = (tmp_path / "out" / "state.json").read_bytes()
    # Fewer of the photographs (same checkpoint, same settings): another run.
    assert main_entry(cli, args("--images", "8"), prog_name="uopsl") == 2
    assert "holds an interrupted qat run with other data (--data" in capsys.readouterr().err
    # Another teacher of the same data fingerprint.
    other = lite0_model(seed=1)[0]
    save_model(tmp_path / "ckpt", other, meta)
    assert main_entry(cli, args(), prog_name="uopsl") == 2
    assert "holds an interrupted qat run with other starting weights (the checkpoint" in capsys.readouterr().err
    assert (tmp_path / "out" / "state.json").read_bytes() == state  # refused before anything was written
    save_model(tmp_path / "ckpt", model, meta)
    assert main_entry(cli, args(), prog_name="uopsl") == 0
    assert not (tmp_path / "out" / "state.json").exists() and read_meta(tmp_path / "out").stage == "qat"


def test_cli_reuses_its_finished_run_and_never_writes_over_another_model(tmp_path: Path) -> None:
    """Session 30's training review: qat had no check on --out, so it wrote over a finished fine-tune there, even
    the checkpoint it distils from (which validate needs afterwards), and trained again on every rerun."""
    from uopsl.train.cli import cli

    _checkpoint_and_folder(tmp_path)
    base = ["qat", str(tmp_path / "ckpt"), "--data", f"folder:{tmp_path / 'folder'}", "--epochs", "1",
            "--batch-size", "4", "--calib-images", "4", "--no-augment"]
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "ckpt")])
    assert res.exit_code == 2 and "the original model must stay as it is" in res.output
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    written = (tmp_path / "out" / "model.safetensors").read_bytes()
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "out")])
    assert res.exit_code == 0 and "not trained again" in res.output
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == written
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "out"), "--lr", "1e-3"])
    assert res.exit_code != 0 and "holds a finished qat run that differs from this command's in its settings" in str(res.exception)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == written
    # A folder holding a finished model of another stage (the fine-tune a user meant to keep).
    import shutil

    shutil.copytree(tmp_path / "ckpt", tmp_path / "finetuned")
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "finetuned")])
    assert res.exit_code != 0 and "qat would overwrite it" in str(res.exception)
    assert (tmp_path / "finetuned" / "model.safetensors").read_bytes() == before
