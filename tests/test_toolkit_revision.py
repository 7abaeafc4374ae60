"""Reports name the code they were made with: the version, and the git commit of a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def test_reports_name_the_git_commit_they_were_made_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    (repo / "README.md").write_text("docs only\n")
    git("add", "README.md", cwd=repo)
    assert revision_of(version_file) == {"git_commit": head, "git_dirty": False}  # not the package's code
    (repo / "runtime" / "new_module.py").write_text("")  # a new, untracked module is a change to the code
    assert revision_of(version_file) == {"git_commit": head, "git_dirty": True}
    (repo / "runtime" / "new_module.py").unlink()
    version_file.write_text('__version__ = "0.1.1"\n')
    assert revision_of(version_file) == {"git_commit": head, "git_dirty": True}
    # A hook's or an IDE's GIT_DIR / GIT_INDEX_FILE does not redirect the lookup.
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "no-such-index"))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-such-repo"))
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
