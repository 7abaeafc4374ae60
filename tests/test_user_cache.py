"""One cache folder for every cache: $UOPSL_CACHE_DIR, then $UOPSL_CACHE, then $XDG_CACHE_HOME/uopsl, then ~/.cache/uopsl."""

from __future__ import annotations

from pathlib import Path

import pytest

from uopsl.runtime.fsio import user_cache_dir


def test_the_cache_folder_follows_the_variables_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("UOPSL_CACHE_DIR", "UOPSL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "uopsl"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "uopsl"
    monkeypatch.setenv("UOPSL_CACHE", str(tmp_path / "old"))
    assert user_cache_dir() == tmp_path / "old"
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "new"))
    assert user_cache_dir() == tmp_path / "new"


def test_every_cache_lives_under_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, the calibration-set cache ignored UOPSL_CACHE_DIR and the text cache ignored it and XDG_CACHE_HOME.
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "c"))
    from uopsl.runtime.backends import cache_dir
    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.commands.build_engine import default_timing_cache
    from uopsl.train.commands.calibrate import default_set_cache
    from uopsl.train.text import default_cache_dir

    for path in (cache_dir(), default_timing_cache("10.3.0", "8.7"), default_set_cache(str(tmp_path), PreprocessConfig()),
                 default_cache_dir()):
        assert tmp_path / "c" in (Path(path), *Path(path).parents), path
