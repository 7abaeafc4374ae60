"""An output folder holding a finished model is reused only by the same run, and never overwritten by another."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from trainhelpers import tiny_model, tiny_synth

from uopsl.runtime.clikit import main_entry
from uopsl.train.checkpoint import read_meta, save_model
from uopsl.train.cli import cli


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pools")
    return tiny_synth(root / "a", 8, 4), tiny_synth(root / "b", 10, 4)


@pytest.fixture(scope="module")
def pre(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pre") / "pre"
    model, meta = tiny_model()
    save_model(folder, model, replace(meta, stage="pretrain"))
    return folder


def _finetune(data: Path, pre: Path, out: Path, *extra: str) -> int:
    return main_entry(cli, ["finetune", "--data", str(data), "--from", str(pre), "--out", str(out), "--epochs", "1",
                            "--batch-size", "4", "--device", "cpu", "--no-augment", *extra], prog_name="uopsl")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_finished_run_is_reused_only_for_the_same_data_and_settings(
        pools: tuple[Path, Path], pre: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pools
    out = tmp_path / "ft"
    assert _finetune(a, pre, out) == 0
    first = _files(out)
    assert "run_identity" in json.loads((out / "checkpoint.json").read_text())["metrics"]
    capsys.readouterr()
    assert _finetune(a, pre, out) == 0  # the same command again: nothing to do
    said = capsys.readouterr()
    assert "already complete (same data and settings); reusing it" in said.err
    assert f"fine-tuned model already complete in {out}" in said.out and "written to" not in said.out
    assert _files(out) == first
    # Another data set, more epochs, or another starting model, into the same folder: refused, nothing changes.
    other_start = tmp_path / "pre2"
    model2, meta2 = tiny_model(seed=1)
    save_model(other_start, model2, replace(meta2, stage="pretrain"))
    for data, start, extra, what in ((b, pre, (), "data"), (a, pre, ("--epochs", "2"), "settings"),
                                     (a, other_start, (), "model")):
        assert _finetune(data, start, out, *extra) == 2
        err = capsys.readouterr().err
        assert f"holds a finished finetune run that differs from this command's in its {what}" in err and "new --out" in err, err
        if what == "settings":  # the setting that changed is named (session 47's review), nothing else
            assert "(settings: epochs 1 -> 2)" in err, err
        assert _files(out) == first


def test_a_folder_of_another_stage_is_not_overwritten(pools: tuple[Path, Path], pre: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = pools
    copy = tmp_path / "pre_copy"
    shutil.copytree(pre, copy)
    before = _files(copy)
    assert read_meta(copy).stage == "pretrain"
    assert _finetune(a, pre, copy) == 2
    err = capsys.readouterr().err
    assert "holds a finished pretrain model; finetune would overwrite it" in err and "pre_copy-finetune" in err
    assert _files(copy) == before, "not even finetune.config.json is written"
