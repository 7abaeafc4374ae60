"""mypy over the four source folders as the installed package ``uopsl``: what the type-check tests share.

The editable install maps ``uopsl.runtime`` (and ``calibration``, ``export``,
``train``) onto the repository's folders with an import hook that mypy cannot
see, so a folder checked on its own reads every ``from uopsl.x import y`` as
Any. A view holding a ``uopsl/`` of symlinks to the four folders, put on
``MYPYPATH``, gives mypy the package as it is installed and the project's own
types across packages. The mypy cache lives in pytest's cache, so a run after
the first rechecks only what changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "calibration", "train")


def cache_dir(request: pytest.FixtureRequest, name: str) -> Path:
    """pytest's cache folder, or the user cache folder when the cache plugin is off (-p no:cacheprovider)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(name))
    base = Path(os.environ.get("UOPSL_CACHE_DIR") or Path.home() / ".cache" / "uopsl")
    (base / name).mkdir(parents=True, exist_ok=True)
    return base / name


def make_view(root: Path) -> Path:
    """``root/view`` holding ``uopsl/{runtime,export,calibration,train}`` as symlinks; returns the view folder."""
    view = root / "view"
    (view / "uopsl").mkdir(parents=True)
    for pkg in PACKAGES:
        os.symlink(REPO / pkg, view / "uopsl" / pkg, target_is_directory=True)
    return view


def run_mypy(args: list[str], cache: Path, mypypath: list[Path], cwd: Path,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m mypy`` with the project's config and ``cache``, ``mypypath`` on MYPYPATH, in ``cwd``."""
    env = {**os.environ, "MYPYPATH": os.pathsep.join(str(p) for p in mypypath)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(cache),
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
