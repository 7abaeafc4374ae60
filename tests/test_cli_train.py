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


def test_imagenet_init_is_what_the_backbone_has(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--init imagenet by name, for a backbone without offline weights, is refused; left at its default, the
    encoder starts random and the checkpoint says so (it used to say imagenet)."""
    import json

    import fixtures_data as fx

    fx.make_folder_dataset(tmp_path / "photos", {"normal": 4, "dr": 4})
    common = [sys.executable, "-m", "uopsl.train.cli", "finetune", "--data", f"folder:{tmp_path / 'photos'}",
              "--backbone", "resnet18", "--size", "64", "--device", "cpu", "--epochs", "1", "--batch-size", "4"]
    asked = subprocess.run([*common, "--init", "imagenet", "--out", str(tmp_path / "a")], capture_output=True,
                           text=True, timeout=300)
    assert asked.returncode == 2 and "Traceback" not in asked.stderr
    assert "--init imagenet: no offline ImageNet weights exist for resnet18" in asked.stderr
    assert not (tmp_path / "a").exists()
    default = subprocess.run([*common, "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stderr[-2000:]
    assert "resnet18 has no offline ImageNet weights" in default.stderr
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["model"]["init"] == "random"
    # Each threshold with what it gave on the validation images (or why none was chosen), not the bare number.
    ops = json.loads((tmp_path / "b" / "checkpoint.json").read_text())["metrics"]["operating_points"]
    for op in ops:
        assert f"\n  {op['name']}: " in default.stdout, default.stdout
