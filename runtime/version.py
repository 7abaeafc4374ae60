"""The toolkit version, recorded in every bundle, checkpoint and report."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def source_revision() -> dict[str, object]:
    """The git commit this toolkit runs from, when it runs from a git checkout (``pip install -e``).

    A validation report is signed against code, and ``0.1.0`` names many
    commits of a checkout. Returns ``{"git_commit": sha, "git_dirty": bool}``
    (dirty: tracked files changed since that commit), or ``{}`` for an
    installed wheel, no git, or a checkout of another project that merely
    contains this file.
    """
    return revision_of(Path(__file__))


def revision_of(file: Path) -> dict[str, object]:
    """:func:`source_revision` for ``file``, a ``runtime/version.py`` that may sit in a git checkout."""
    here = file.resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here.parent), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if not (top / "runtime" / "version.py").resolve() == here:
            return {}
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty}
