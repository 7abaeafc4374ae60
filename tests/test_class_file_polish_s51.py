"""Class files and re-export: what a review of adding a disease by its description found (session 51)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from uopsl.export.bundle_writer import add_file
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import ConfigError
from uopsl.train import descriptions
from uopsl.train.checkpoint import save_model
from uopsl.train.workflow import new_model, run_export


def test_a_key_repeated_in_one_json_object_is_refused(tmp_path: Path) -> None:
    """``{"name": "rp", ..., "name": "zzz"}`` exported a class zzz without a word (json keeps the last key)."""
    f = tmp_path / "c.json"
    f.write_text('{"classes": [{"name": "rp", "phrases": ["bone spicules"], "name": "zzz"}]}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON .*the key 'name' appears twice in one object"):
        descriptions.load_classes(f)


def test_a_misspelt_built_in_class_gets_a_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[classes]]\nname = "glaucomma"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'glaucomma' has no 'phrases' and is not a built-in class \(did you mean "
                                          r"glaucoma\?\)"):
        descriptions.load_classes(f)


def test_an_empty_class_list_says_so(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{"classes": []}', encoding="utf-8")
    with pytest.raises(ConfigError, match="got an empty list$"):
        descriptions.load_classes(f)


def test_export_force_names_the_files_the_old_bundle_took_with_it(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The INT8 file and calibration table of a quantized bundle fit its old model: --force drops them, and
    said only "2 files verified"."""
    model, meta = new_model(("normal", "dr"), backbone="resnet18", init="random", dim=32, sites=2, size=64,
                            head="sigmoid", seed=0)
    ck = tmp_path / "ck"
    save_model(ck, model, replace(meta, stage="finetune", thresholds=(0.4, 0.3)))
    out = run_export(ck, tmp_path / "b")
    (tmp_path / "int8.onnx").write_bytes((out / "model.onnx").read_bytes())
    add_file(out, tmp_path / "int8.onnx", "model.int8.onnx", "onnx", "int8-qdq-u8")
    with pytest.raises(ConfigError, match="already exists; pass --force to replace it"):
        run_export(ck, out)
    caplog.set_level(logging.WARNING, logger="uopsl.train.workflow")
    run_export(ck, out, force=True)
    assert [f.path for f in read_manifest(out).files if f.path == "model.int8.onnx"] == []
    assert any("replaced: its model.int8.onnx went with it" in r.getMessage() for r in caplog.records), caplog.text


def test_explain_takes_a_trained_class_under_another_spelling_and_says_how_to_draw_a_new_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from test_train_review_fixes import _checkpoint, _photo, _uopsl

    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    photo = _photo(tmp_path / "in" / "a.jpg", 1)
    rc, _, err = _uopsl(["explain", str(ck), str(photo), "--out", str(tmp_path / "maps"), "--classes",
                         "Diabetic Retinopathy"], capsys)
    assert rc == 0, err
    with open(tmp_path / "maps" / "maps.csv", newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 1
    rc, _, err = _uopsl(["explain", str(ck), str(photo), "--out", str(tmp_path / "maps2"), "--classes", "rp"],
                        capsys)
    assert rc == 2 and "'rp' is not a class of" in err and "(its classes: normal, dr)" in err, err
    assert "uopsl export --classes FILE" in err and "heatmap('rp')" in err and "['rp']" not in err, err


def test_info_shows_a_class_file_s_display_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.cli import cli as screen_cli
    from uopsl.runtime.clikit import main_entry

    model, meta = new_model(("normal", "dr"), backbone="resnet18", init="random", dim=32, sites=2, size=64,
                            head="sigmoid", seed=0)
    ck = tmp_path / "ck"
    save_model(ck, model, replace(meta, stage="finetune", thresholds=(0.4, 0.3)))
    cf = tmp_path / "c.toml"
    cf.write_text('[[classes]]\nname = "normal"\n[[classes]]\nname = "dr"\ndisplay = "Diabetische Retinopathie"\n',
                  encoding="utf-8")
    out = run_export(ck, tmp_path / "b", classes_file=cf)
    capsys.readouterr()
    assert main_entry(screen_cli, ["info", str(out)], prog_name="uopsl-screen") == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert lines["dr"].endswith("shown as: Diabetische Retinopathie") and "shown as" not in lines["normal"]


def test_an_export_says_each_note_on_its_class_file_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The file was read three or four times per export, and each read logged its notes again."""
    model, meta = new_model(("normal", "dr"), backbone="resnet18", init="random", dim=32, sites=2, size=64,
                            head="sigmoid", seed=0)
    ck = tmp_path / "ck"
    save_model(ck, model, replace(meta, stage="finetune", thresholds=(0.4, 0.3)))
    cf = tmp_path / "c.toml"
    cf.write_text('[[classes]]\nname = "normal"\n[[classes]]\nname = "dr"\n[[classes]]\nname = "amd"\n'
                  'phrases = ["yellow drusen", "pale spots"]\n[[classes]]\nname = "rp"\n'
                  'phrases = ["pale spots", "bone spicules"]\n', encoding="utf-8")
    caplog.set_level(logging.INFO, logger="uopsl.train.descriptions")
    run_export(ck, tmp_path / "b", classes_file=cf)
    said = [r.getMessage() for r in caplog.records if r.name == "uopsl.train.descriptions"]
    assert said.count(f"{cf}: class 'amd' replaces the built-in phrases") == 1, said
    assert sum("'pale spots' describes both 'amd' and 'rp'" in m for m in said) == 1, said
