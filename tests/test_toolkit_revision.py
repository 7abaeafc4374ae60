"""Reports name the code they were made with: the version, and the git commit of a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def test_reports_name_the_git_commit_they_were_made_from(tmp_path: Path) -> None:
    """``0.1.0`` names many commits of a checkout; a signed parity report names its code exactly."""
    import shutil

    from uopsl.runtime.version import revision_of

    def git(*args: str, cwd: Path) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "checkout"
    (repo / "runtime").mkdir(parents=True)
    version_file = repo / "runtime" / "version.py"
    version_file.write_text('__version__ = "0.1.0"\n')
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "x", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    assert revision_of(version_file) == {"git_commit": head, "git_dirty": False}
    version_file.write_text('__version__ = "0.1.1"\n')
    assert revision_of(version_file) == {"git_commit": head, "git_dirty": True}
    # A wheel's copy (no git), or this file inside some other project's repository, names no commit.
    loose = tmp_path / "site-packages" / "uopsl" / "runtime" / "version.py"
    loose.parent.mkdir(parents=True)
    loose.write_text("")
    assert revision_of(loose) == {}
    other = repo / "vendored" / "version.py"
    other.parent.mkdir()
    other.write_text("")
    assert revision_of(other) == {}
