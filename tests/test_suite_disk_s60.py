"""The suite's own disk use (session 60: a CI run failed with "No space left on device").

Hundreds of tests copy a demo checkpoint or bundle (40-260 MB each) into their tmp_path; with pytest's
default retention ("all") every one stayed on disk until the session ended, about 10 GB by the end on
this machine, and the CI machine's disk filled at 90 %. A passed test's tmp_path is now removed at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest


_EARLIER: list[Path] = []


def test_a_passed_tests_tmp_path_is_not_kept(request: pytest.FixtureRequest) -> None:
    assert request.config.getini("tmp_path_retention_policy") == "failed"
    assert int(request.config.getini("tmp_path_retention_count")) <= 1  # no earlier session's leftovers either


def test_writes_a_file_into_its_tmp_path(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.bin").write_bytes(b"x" * 4096)
    _EARLIER.append(tmp_path)


def test_the_earlier_tests_tmp_path_is_gone() -> None:
    """Runs after the test above in file order; alone (-k) there is nothing to check."""
    if not _EARLIER:
        pytest.skip("run with test_writes_a_file_into_its_tmp_path, which comes first in this file")
    assert not _EARLIER[0].exists(), f"{_EARLIER[0]} is still on disk after its test passed"
