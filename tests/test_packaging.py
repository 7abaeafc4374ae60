"""A plain (non-editable) install ships every module of the four code folders, the runtime stays light, and
modules import downward: each layer only the layers below it, and no runtime module itself through others."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "uopsl/runtime", "calibration": "uopsl/calibration", "export": "uopsl/export", "train": "uopsl/train"}
_LAZY_COMMAND = re.compile(r"^uopsl\.([a-z_]+)(\.[A-Za-z_.]+)?:[A-Za-z_]+$")


def _nodes(node: ast.AST, typing_too: bool) -> Iterator[ast.AST]:
    """Every node below ``node``, inside functions too; those under ``if TYPE_CHECKING:`` (never run) only
    with ``typing_too``."""
    for child in ast.iter_child_nodes(node):
        typing_only = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
        for n in child.orelse if typing_only and not typing_too else [child]:
            yield n
            yield from _nodes(n, typing_too)


def _imports(py: Path, *, typing_too: bool) -> Iterator[tuple[int, list[str]]]:
    """(line, modules) of each import in ``py``, lazy ones inside functions and lazily loaded commands
    ("uopsl.x.y:command" strings) included, those for type checkers only with ``typing_too``. ``from a.b import
    c`` names ``a.b`` and ``a.b.c``, since ``c`` may be a module (``from uopsl import export``)."""
    for node in _nodes(ast.parse(py.read_text(encoding="utf-8")), typing_too):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            yield node.lineno, [a.name for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _LAZY_COMMAND.match(node.value):
            yield node.lineno, [node.value.split(":")[0]]


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
    rank = {"runtime": 0, "calibration": 1, "export": 2, "train": 3}
    upward = []
    for folder, own in rank.items():
        for py in sorted((ROOT / folder).rglob("*.py")):
            for line, names in _imports(py, typing_too=True):
                above = [n for n in names if n.startswith("uopsl.") and rank.get(n.split(".")[1], -1) > own]
                if above:
                    upward.append(f"{py.relative_to(ROOT)}:{line} imports {above[0]}")
    assert not upward, "a layer imports a layer above it:\n" + "\n".join(upward)


def test_runtime_modules_import_one_another_without_a_cycle() -> None:
    """No runtime module imports itself back through others, lazy imports inside functions included.

    Why: a lazy import that is there only to dodge a cycle (results, report, inputs and bundle had three) hides
    which module owns what, and moved to the top of its file it fails in whichever order the modules are first
    imported. A name that two such modules need belongs in a module below both (``image_suffixes``,
    ``input_keys``, ``reasons``; the backends' shared plumbing in ``backends/base``; TensorRT's version parsing in
    ``trt_version``). Imports under ``if TYPE_CHECKING:`` never run and are not counted.
    """
    modules = {py: ".".join(("uopsl", "runtime", *py.relative_to(ROOT / "runtime").with_suffix("").parts))
               .removesuffix(".__init__") for py in sorted((ROOT / "runtime").rglob("*.py"))}
    known = set(modules.values())
    graph = {name: {n for _, names in _imports(py, typing_too=False) for n in names if n in known} - {name}
             for py, name in modules.items()}

    def reached(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    assert "uopsl.runtime.bundle" in graph["uopsl.runtime.results"]  # the walk sees imports at all
    reach = {m: reached(m) for m in graph}
    cycles = {frozenset(o for o in graph if o == m or (o in reach[m] and m in reach[o]))
              for m in graph if m in reach[m]}
    new = sorted(sorted(c) for c in cycles)
    edges = [f"{a} imports {b}" for c in new for a in c for b in sorted(graph[a]) if b in c]
    assert not new, "runtime modules import each other (move what both need into a module below both):\n" + \
        "\n".join(edges)


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
