"""A command asked of the wrong CLI says where it is (a validation-engineer review, session 55): ``uopsl-screen
validate`` answered only "No such command", though a device validates with ``uopsl validate --onnx-reference``."""

from __future__ import annotations

from click.testing import CliRunner

from uopsl.runtime.cli import cli as screen_cli
from uopsl.train.cli import cli as train_cli


def test_uopsl_screen_points_to_uopsl_for_validate_and_build_engine() -> None:
    res = CliRunner().invoke(screen_cli, ["validate", "bundle"])
    assert res.exit_code == 2
    assert "No such command 'validate' in uopsl-screen" in res.output
    assert "uopsl validate BUNDLE --onnx-reference" in res.output
    res = CliRunner().invoke(screen_cli, ["build-engine"])
    assert res.exit_code == 2 and "uopsl build-engine BUNDLE" in res.output


def test_uopsl_points_to_uopsl_screen_for_the_screening_commands() -> None:
    for name in ("run", "watch", "verify", "info", "bench"):
        res = CliRunner().invoke(train_cli, [name, "x"])
        assert res.exit_code == 2 and f"screening is `uopsl-screen {name}`" in res.output, name


def test_a_misspelt_command_and_the_real_ones_are_untouched() -> None:
    res = CliRunner().invoke(screen_cli, ["valdate"])
    assert res.exit_code == 2 and "No such command 'valdate'." in res.output and "uopsl validate" not in res.output
    assert CliRunner().invoke(screen_cli, ["verify", "--help"]).exit_code == 0
    assert CliRunner().invoke(train_cli, ["validate", "--help"]).exit_code == 0
