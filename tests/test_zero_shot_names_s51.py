"""``uopsl zero-shot``: class names under any spelling, and a report that says what each class was scored with.

A review (session 51): ``--classes normal,DR,retinitis_pigmentosa`` scored the trained class ``dr`` as a new
zero-shot class (built-in phrases, no trained bias) and found none of the 13 ``dr`` or 7 ``rp`` photographs:
"AUC undefined", exit 0. And zero_shot.json named neither the class file nor the phrases behind its AUCs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fixtures_data import write_csv
from trainhelpers import tiny_items, tiny_model

from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import ConfigError
from uopsl.train.checkpoint import save_model
from uopsl.train.cli import cli
from uopsl.train.commands.zero_shot import resolve_names


def test_a_trained_class_is_found_under_any_spelling_and_a_new_one_as_the_data_spell_it(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    got = resolve_names(("Healthy", "DR", "retinitis pigmentosa", "stargardt"), ("normal", "dr", "dme"),
                        ["normal", "dr", "rp"])
    assert got == ("normal", "dr", "rp", "stargardt")
    assert any("no photograph of the data is labelled 'stargardt'" in r.getMessage() for r in caplog.records)


def test_one_class_under_two_spellings_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"names 'dr' more than once \(under other spellings: 'dr', "
                                          r"'diabetic retinopathy'\)"):
        resolve_names(("dr", "diabetic retinopathy"), ("normal", "dr"), ["dr"])


def _csv(root: Path, upper: bool) -> Path:
    """tiny_items' photographs (normal, a, b in turn), labelled in upper case when ``upper``."""
    items = tiny_items(root / "img", n=18)
    names = ("normal", "a", "b")
    rows = [[str(it.path), names[int(it.target.argmax())].upper() if upper else names[int(it.target.argmax())],
             f"p{i}"] for i, it in enumerate(items)]
    return write_csv(root / "labels.csv", ["path", "label", "patient"], rows)


def _zero_shot(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main_entry(cli, ["zero-shot", "--keep-ungradable", *argv, "--n-boot", "100"], prog_name="uopsl")
    got = capsys.readouterr()
    return rc, got.out + got.err


def test_other_spellings_score_the_trained_classes_on_their_photographs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    plain = _csv(tmp_path / "plain", upper=False)
    upper = _csv(tmp_path / "upper", upper=True)
    rc, out = _zero_shot([str(tmp_path / "ck"), "--data", f"csv:{plain}", "--classes", "normal,a,b",
                          "--out", str(tmp_path / "zs1")], capsys)
    assert rc == 0, out
    rc, out = _zero_shot([str(tmp_path / "ck"), "--data", f"csv:{upper}", "--classes", "Healthy,A,b",
                          "--out", str(tmp_path / "zs2")], capsys)
    assert rc == 0 and "AUC undefined" not in out, out
    one, two = (json.loads((tmp_path / d / "zero_shot.json").read_text()) for d in ("zs1", "zs2"))
    assert two["classes"] == ["normal", "a", "b"] and two["seen"] == [True, True, True]
    assert two["site_attention"] == pytest.approx(one["site_attention"], abs=1e-12)
    assert two["phrases"] == {"normal": ["a healthy retina"], "a": ["a yellow spot at the centre"],
                              "b": ["a blue spot at the centre"]}
    assert two["classes_file"] is None


def test_the_report_names_the_class_file_and_warns_when_a_trained_class_is_described_anew(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import hashlib

    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    table = _csv(tmp_path / "data", upper=False)
    cf = tmp_path / "classes.toml"
    cf.write_text('[[classes]]\nname = "a"\nphrases = ["a bright yellow disc in the middle"]\n', encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="uopsl.train.workflow")
    rc, out = _zero_shot([str(tmp_path / "ck"), "--data", f"csv:{table}", "--classes", "normal,a,b",
                          "--classes-file", str(cf), "--out", str(tmp_path / "zs")], capsys)
    assert rc == 0, out
    res = json.loads((tmp_path / "zs" / "zero_shot.json").read_text())
    assert res["classes_file"] == {"path": str(cf), "sha256": hashlib.sha256(cf.read_bytes()).hexdigest()}
    assert res["phrases"]["a"] == ["a bright yellow disc in the middle"]
    assert res["phrases"]["b"] == ["a blue spot at the centre"]  # not in the file: the trained phrases
    note = [n for n in res["notes"] if "scored with the phrases of" in n]
    assert len(note) == 1 and "'a'" in note[0]
    assert any("'a' was scored with the phrases of" in r.getMessage() for r in caplog.records)
