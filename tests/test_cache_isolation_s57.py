"""The test suite keeps out of the user's uopsl cache folder (session 57).

Before, tests wrote into ``~/.cache/uopsl``: a fake TensorRT's timing cache named for TensorRT 11.0 on sm 8.7 (a
Jetson Orin's), test models' OpenVINO blobs and calibration sets, all where a developer's real device reads its
caches; and a warm user cache could change what a test saw (a test meant to encode class phrases afresh read them
from it). ``conftest.pytest_configure`` now points ``UOPSL_CACHE_DIR`` at pytest's own cache folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from uopsl.runtime.fsio import user_cache_dir


def _default_user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uopsl"


def test_the_suite_uses_no_user_cache_folder() -> None:
    here = user_cache_dir()
    assert here != _default_user_cache()
    assert not here.resolve().is_relative_to(_default_user_cache().resolve())
    assert "UOPSL_CACHE" not in os.environ  # the older variable would not override UOPSL_CACHE_DIR, but is not left set


def test_a_subprocess_of_the_suite_uses_the_same_cache_folder() -> None:
    out = subprocess.run([sys.executable, "-c", "from uopsl.runtime.fsio import user_cache_dir; print(user_cache_dir())"],
                         capture_output=True, text=True, check=True)
    child = Path(out.stdout.strip())
    assert child == user_cache_dir() and child != _default_user_cache()
