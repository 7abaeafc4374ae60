"""A plain (non-editable) install ships every module of the four code folders, and the runtime stays light."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "uopsl/runtime", "calibration": "uopsl/calibration", "export": "uopsl/export", "train": "uopsl/train"}


def test_wheel_contains_every_module(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools installed")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("uopsl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for folder, pkg in FOLDERS.items():
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.relative_to(ROOT / folder).as_posix()
            if f"{pkg}/{rel}" not in names:
                missing.append(f"{folder}/{rel}")
    assert not missing, f"not packaged (add the sub-package to pyproject.toml): {missing}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "uopsl = uopsl.train.cli:main" in text and "uopsl-screen = uopsl.runtime.cli:main" in text


def test_each_layer_imports_only_the_layers_below_it() -> None:
    """runtime < calibration < export < train (docs: "How we write code"), lazy imports inside functions and the
    lazily loaded commands ("uopsl.x.y:command" strings) included: a device installs the runtime alone, and a
    calibration that imported export code would drag torch in."""
    import ast
    import re

    rank = {"runtime": 0, "calibration": 1, "export": 2, "train": 3}
    lazy = re.compile(r"^uopsl\.([a-z_]+)(\.[A-Za-z_.]+)?:[A-Za-z_]+$")
    upward = []
    for folder, own in rank.items():
        for py in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # `from uopsl import export` names the layer in the imported names
                    names = ([f"uopsl.{a.name}" for a in node.names] if node.module == "uopsl" else [node.module])
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and lazy.match(node.value):
                    names = [node.value.split(":")[0]]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "uopsl" and len(parts) > 1 and rank.get(parts[1], -1) > own:
                        upward.append(f"{py.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not upward, "a layer imports a layer above it:\n" + "\n".join(upward)


def test_install_hints_name_the_extras_packages_not_uopsl_on_pypi() -> None:
    """uopsl is not on PyPI: ``pip install 'uopsl[dicom]'`` in a message would fetch whatever package holds the
    name there (the docs review of session 31). Messages name the extra's own packages, as pyproject pins them."""
    import tomllib

    from uopsl.runtime.optional import EXTRA_PACKAGES, extra_hint

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, packages in EXTRA_PACKAGES.items():
        assert set(packages) <= set(extras[extra]), extra
        assert extra_hint(extra) == "pip install " + " ".join(f"'{p}'" for p in packages)
    assert "uopsl is not on PyPI" in extra_hint("train")
    said = [f"{p.relative_to(ROOT)}:{n}" for layer in ("runtime", "export", "calibration", "train")
            for p in sorted((ROOT / layer).rglob("*.py"))
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if "install 'uopsl[" in line or 'install "uopsl[' in line]
    assert said == []
    # One place says which versions each extra takes (runtime/optional.py, kept equal to pyproject.toml above):
    # a message spelling them out itself would drift from pyproject unseen.
    specs = [p for packages in EXTRA_PACKAGES.values() for p in packages]
    spelled = [f"{f.relative_to(ROOT)}:{n}" for layer in ("runtime", "export", "calibration", "train")
               for f in sorted((ROOT / layer).rglob("*.py")) if f.name != "optional.py"
               for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
               if any(spec in line for spec in specs)]
    assert spelled == []
