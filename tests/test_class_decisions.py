"""Operating points of a re-exported class bank: a zero-shot class never refers a patient by accident."""

from __future__ import annotations

import logging

import pytest

from uopsl.runtime.errors import ConfigError
from uopsl.train.descriptions import OperatingPointOverride as Op
from uopsl.train.workflow import class_decisions

KNOWN = ("normal", "dr", "dme")
THRESHOLDS = (0.4, 0.2, 0.3)
REFERABLE = (False, True, True)


def test_known_classes_keep_their_validated_points_and_new_ones_only_show() -> None:
    t, r = class_decisions(("normal", "dr", "rp"), KNOWN, THRESHOLDS, REFERABLE, {}, "c.toml")
    assert (t, r) == ([0.4, 0.2, 0.5], [False, True, False])


def test_new_classes_are_listed_as_never_referring(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        class_decisions(("dr", "rp", "macular_hole"), KNOWN, THRESHOLDS, REFERABLE, {}, "c.toml")
    assert "['rp', 'macular_hole'] are reported with their probabilities but never refer a patient" in caplog.text


def test_a_referable_new_class_needs_a_threshold() -> None:
    with pytest.raises(ConfigError, match=r"c.toml: class 'rp' is new .* add threshold"):
        class_decisions(("dr", "rp"), KNOWN, THRESHOLDS, REFERABLE, {"rp": Op(None, True)}, "c.toml")


def test_a_referable_new_class_with_a_threshold_refers_and_says_to_validate(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        t, r = class_decisions(("dr", "rp"), KNOWN, THRESHOLDS, REFERABLE, {"rp": Op(0.62, True)}, "c.toml")
    assert (t, r) == ([0.2, 0.62], [True, True])
    assert "refer patients at the thresholds given in c.toml" in caplog.text and "uopsl validate" in caplog.text


def test_the_file_can_override_a_known_class(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        t, r = class_decisions(KNOWN, KNOWN, THRESHOLDS, REFERABLE, {"dme": Op(0.35, False)}, "c.toml")
    assert (t, r) == ([0.4, 0.2, 0.35], [False, True, False])
    assert "class 'dme': operating point from c.toml replaces the checkpoint's" in caplog.text


def test_export_refuses_a_referable_zero_shot_class_without_threshold_in_one_line(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainhelpers import tiny_model

    from uopsl.runtime.clikit import main_entry
    from uopsl.train.checkpoint import save_model
    from uopsl.train.cli import cli

    model, meta = tiny_model()  # classes normal, a, b
    save_model(tmp_path / "ck", model, meta)
    (tmp_path / "c.toml").write_text(
        '[[classes]]\nname = "normal"\n[[classes]]\nname = "a"\n'
        '[[classes]]\nname = "retinal_detachment"\nphrases = ["grey, elevated retina"]\nreferable = true\n')
    rc = main_entry(cli, ["export", str(tmp_path / "ck"), "--out", str(tmp_path / "bundle"),
                          "--classes", str(tmp_path / "c.toml")], prog_name="uopsl")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert "'retinal_detachment' is new" in errors[0] and "add threshold" in errors[0]
    assert not (tmp_path / "bundle").exists()
