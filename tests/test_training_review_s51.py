"""What a review of training as an ML engineer runs it found (session 51): resume, logs, leftovers, messages.

The loop-level tests drive ``StageRunner`` with the toy model of ``test_mutation_audit_loops_s42``; the
command-level ones run ``uopsl pretrain`` on a few 64 px photographs.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_mutation_audit_loops_s42 import CPU, Toy, _log_rows, _runner

from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train import loops
from uopsl.train.checkpoint import save_model
from uopsl.train.cli import cli
from uopsl.train.loops import StageRunner, checkpoint_words
from uopsl.train.workflow import finished_run, new_model, tidy_finished


def _sized(tmp_path: Path, size: int) -> StageRunner:
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    return StageRunner(Toy(), CPU, out, "finetune", "fp", PreprocessConfig(size=size))  # type: ignore[arg-type]


# -- D1: the input size is part of what a run is ------------------------------------------------------------------
def test_an_interrupted_run_is_not_resumed_at_another_size(tmp_path: Path) -> None:
    r = _sized(tmp_path, 64)
    r.info.update(epoch=1, step=1)
    r.checkpoint()
    with pytest.raises(ConfigError, match=r"other model inputs \(size 64 there, 96 now\); rerun with the same --size"):
        _sized(tmp_path, 96).resume()
    assert _sized(tmp_path, 64).resume() is True


def test_a_state_saved_before_the_size_was_recorded_resumes_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = _runner(tmp_path)  # no preprocessing given: the state records none, as states saved before 0.2.3
    r.info.update(epoch=1, step=1)
    r.checkpoint()
    caplog.set_level(logging.WARNING, logger="uopsl.train.loops")
    assert _sized(tmp_path, 96).resume() is True
    assert any("does not record its input preprocessing" in m.getMessage() for m in caplog.records)


def test_a_finished_run_is_not_reused_for_another_size(tmp_path: Path) -> None:
    model, meta = new_model(("normal", "dr"), backbone="resnet18", init="random", dim=16, sites=1, size=64, seed=0)
    out = tmp_path / "ck"
    want = {"stage": "pretrain", "model": "m", "settings": "s", "data": "d"}
    save_model(out, model, replace(meta, stage="pretrain", metrics={"run_identity": want}))
    assert finished_run(out, "pretrain", want, None, PreprocessConfig(size=64)) is True
    with pytest.raises(ConfigError, match=r"input preprocessing \(size 64 there, 128 now\)"):
        finished_run(out, "pretrain", want, None, PreprocessConfig(size=128))


# -- D2: a log row cut short ---------------------------------------------------------------------------------------
def test_a_log_row_cut_short_is_dropped_on_resume_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = _runner(tmp_path)
    r.info.update(epoch=1, step=2)
    r.checkpoint()
    run = tmp_path / "run"
    with open(run / "log.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("stage", "epoch", "step", "loss"), ("finetune", 1, 1, 0.5), ("finetune", 2, 1, 0.4)])
        fh.write("finetune,2,")  # a full disk or a power cut mid-row
    caplog.set_level(logging.WARNING, logger="uopsl.train.loops")
    assert _runner(tmp_path).resume() is True
    assert [(d["epoch"], d["step"]) for d in _log_rows(run)] == [("1", "1"), ("2", "1")]
    assert any("cut short" in m.getMessage() for m in caplog.records)


# -- M1: the interruption names the checkpoint on disk ------------------------------------------------------------
def test_a_checkpoint_interrupted_while_saving_is_not_named_as_written(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    r = _runner(tmp_path)
    r.info.update(epoch=0, step=2)
    r.checkpoint()
    r.info.update(epoch=1, step=1)

    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loops, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        r.checkpoint()
    assert r.saved_at == (0, 2)


def test_checkpoint_words() -> None:
    assert checkpoint_words(1, 0) == "the end of epoch 1"
    assert checkpoint_words(1, 3) == "epoch 2 after step 3"
    assert checkpoint_words(0, 5) == "epoch 1 after step 5"


# -- D3: what interrupted attempts leave -------------------------------------------------------------------------
def test_a_finished_run_keeps_no_temporaries_or_best_weights_of_interrupted_attempts(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    out.mkdir()
    old = time.time() - 3600
    left = [out / ".state.safetensors.a1b2c3.tmp", out / ".model.safetensors.x9.tmp", out / "best.safetensors"]
    kept = [out / "model.safetensors", out / ".notes.txt.q1.tmp", out / ".state.safetensors.live.tmp"]
    for f in [*left, *kept]:
        f.write_bytes(b"x")
    for f in [*left[:2], kept[1]]:
        os.utime(f, (old, old))
    tidy_finished(out)
    assert [f.name for f in left if f.exists()] == []
    assert all(f.exists() for f in kept)


# -- commands ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fundus_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_data import make_folder_dataset

    return make_folder_dataset(tmp_path_factory.mktemp("pool") / "fundus", {"normal": 3, "dr": 3})


def _pretrain(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main_entry(cli, ["pretrain", "--size", "64", "--epochs", "1", "--device", "cpu", "--backbone", "resnet18",
                          "--init", "random", "--dim", "16", "--sites", "1", *args], prog_name="uopsl")
    return rc, capsys.readouterr().err


def test_an_oct_pool_without_oct_scans_is_refused_before_anything_is_written(
        fundus_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _pretrain(["--fundus", f"folder:{fundus_pool}", "--oct", f"folder:{fundus_pool}",
                         "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "holds no OCT B-scans (6 image(s), modality fundus)" in err, err
    assert not (tmp_path / "o").exists()


def test_out_naming_a_file_is_refused_first(fundus_pool: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "notes.json"
    f.write_text("{}", encoding="utf-8")
    rc, err = _pretrain(["--fundus", f"folder:{fundus_pool}", "--variant", "p_only", "--out", str(f)], capsys)
    assert rc == 2 and f"--out {f} is a file" in err, err


def test_pretrain_logs_each_epoch(fundus_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uopsl.train.stages")
    rc, err = _pretrain(["--fundus", f"folder:{fundus_pool}", "--variant", "p_only", "--out", str(tmp_path / "p"),
                         "--epochs", "2", "--no-augment"], capsys)
    assert rc == 0, err
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pretrain epoch")]
    assert [ln.split(":")[0] for ln in lines] == ["pretrain epoch 1/2", "pretrain epoch 2/2"] and "loss" in lines[0]


def test_a_pickled_init_file_is_refused_without_torch_s_advice_to_run_it(tmp_path: Path) -> None:
    import torch

    from uopsl.runtime.errors import CheckpointError
    from uopsl.train.backbones import load_state_file

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("payload ran",))

    f = tmp_path / "evil.pt"
    torch.save({"a": Payload()}, f)
    with pytest.raises(CheckpointError) as got:
        load_state_file(f)
    assert "weights_only" not in str(got.value)
    assert re.search(r"holds a Python object \(\S*print\) besides tensors", str(got.value)), got.value


def test_python_m_uopsl_train_is_the_uopsl_command() -> None:
    """``torchrun -m uopsl.train`` failed: "No module named uopsl.train.__main__"."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "uopsl.train", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("uopsl "), proc.stderr
