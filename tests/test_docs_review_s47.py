"""What a reviewer following the documentation literally found (session 47), each fixed behaviour pinned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.bundle import MANIFEST, content_hash
from uopsl.runtime.cli import main as screen_main


def test_info_keeps_a_long_class_names_column_apart(tmp_path: Path, tiny_bundle: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """deployment.md's class-file example has ``retinal_detachment``: ``info`` printed it glued to its threshold
    ("retinal_detachment threshold" had no column gap, a name of 17+ characters overflowing the 16 given)."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    raw = json.loads((b / MANIFEST).read_text())
    long_name = "retinal_detachment_x"
    raw["classes"][0]["name"] = long_name
    raw["content_sha256"] = content_hash(raw)
    (b / MANIFEST).write_text(json.dumps(raw))
    assert screen_main(["info", str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if " threshold " in line and line.startswith("  ")]
    assert len(rows) == len(raw["classes"]) >= 2
    columns = {line.index(" threshold ") for line in rows}
    assert len(columns) == 1 and rows[0].startswith(f"  {long_name} threshold ")
