"""The toolkit version, recorded in every bundle, checkpoint and report."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from pathlib import Path

__version__ = "0.2.11"


@functools.lru_cache(maxsize=1)
def source_revision() -> dict[str, object]:
    """The git commit this toolkit runs from, when it runs from a git checkout (``pip install -e``).

    A validation report is signed against code, and a version number names many
    commits of a checkout. Returns ``{"git_commit": sha, "git_dirty": bool}``
    (dirty: the package's code changed since that commit, new files included), or ``{}`` for an
    installed wheel, no git, or a checkout of another project that merely
    contains this file. Either way ``code_sha256`` (:func:`code_digest`) is added where the code can be read.
    """
    code = code_digest()
    return {**revision_of(Path(__file__)), **({"code_sha256": code} if code else {})}


#: How :func:`code_digest` is computed (for a signer who recomputes it).
CODE_DIGEST_METHOD = ("sha256 of the UTF-8 lines 'uopsl.<part>/<path inside it> <sha256 of the file>' of every .py "
                      "file of uopsl.runtime, uopsl.calibration, uopsl.export and uopsl.train that is installed, "
                      "sorted, each ended by a newline")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """One digest of the Python code of every uopsl part installed here (:data:`CODE_DIGEST_METHOD`); "" when it
    cannot be read.

    Why: a version names every change made until the next bump, and a wheel has no git commit; a report signed
    against code must name the code itself (a review: "0.2.9" named 13 commits' worth of different code).
    """
    import hashlib
    import importlib.util

    lines = []
    try:
        for part in ("runtime", "calibration", "export", "train"):
            spec = importlib.util.find_spec(f"uopsl.{part}")
            if spec is None or not spec.submodule_search_locations:
                continue
            for folder in spec.submodule_search_locations:
                root = Path(folder)
                for f in root.rglob("*.py"):
                    lines.append(f"uopsl.{part}/{f.relative_to(root).as_posix()} "
                                 f"{hashlib.sha256(f.read_bytes()).hexdigest()}\n")
    except (OSError, ImportError, ValueError) as exc:
        logging.getLogger(__name__).debug("no code digest: %s", exc)
        return ""
    return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest() if lines else ""


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
