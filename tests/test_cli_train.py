"""The ``uopsl`` command line: every subcommand is registered, imports light, and has help."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from uopsl.train.cli import cli


def test_every_registered_command_loads_and_has_help() -> None:
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"pretrain", "finetune", "evaluate", "zero-shot", "explain", "export"} <= set(names)
    runner = CliRunner()
    for name in names:
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "Usage:" in res.output


def test_help_does_not_import_torch_or_onnx() -> None:
    code = (
        "import sys, click; from uopsl.train.cli import cli; ctx = click.Context(cli);"
        "[cli.get_command(ctx, n) for n in cli.list_commands(ctx)];"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_bad_dataset_spec_is_one_clean_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "uopsl.train.cli", "evaluate", str(tmp_path), "--data", str(tmp_path / "nope.csv"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
