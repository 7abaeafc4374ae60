"""The toolkit version, recorded in every bundle, checkpoint and report."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from pathlib import Path

__version__ = "0.2.9"


@functools.lru_cache(maxsize=1)
def source_revision() -> dict[str, object]:
    """The git commit this toolkit runs from, when it runs from a git checkout (``pip install -e``).

    A validation report is signed against code, and a version number names many
    commits of a checkout. Returns ``{"git_commit": sha, "git_dirty": bool}``
    (dirty: the package's code changed since that commit, new files included), or ``{}`` for an
    installed wheel, no git, or a checkout of another project that merely
    contains this file.
    """
    return revision_of(Path(__file__))


def revision_of(file: Path) -> dict[str, object]:
    """:func:`source_revision` for ``file``, a ``runtime/version.py`` that may sit in a git checkout."""
    here = file.resolve()
    # GIT_DIR / GIT_INDEX_FILE inherited from a hook or an IDE would point git at another repository or index.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # status must not rewrite the user's index (older git ignores it)
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window per call under pythonw (Windows)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here.parent), *args], capture_output=True, encoding="utf-8",
                              errors="surrogateescape", env=env, timeout=10, check=True,
                              creationflags=flags).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if not (top / "runtime" / "version.py").resolve() == here:
            return {}
        commit = git("rev-parse", "HEAD")
        # Changes to the package's code only (tracked or new files), not to docs or tests.
        dirty = bool(git("status", "--porcelain", "--untracked-files=all", "--",
                         *(f":(top){p}" for p in _PACKAGE_FOLDERS)))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        logging.getLogger(__name__).debug("no git revision for %s: %s", here, exc)
        return {}
    return {"git_commit": commit, "git_dirty": dirty}


_PACKAGE_FOLDERS = ("runtime", "calibration", "export", "train", "pyproject.toml")
