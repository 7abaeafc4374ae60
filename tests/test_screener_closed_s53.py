"""A Screener closed by another thread: one exception type for both moments the close can land (session 53)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinybundle import good_photos, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener, ScreenerClosedError
from uopsl.runtime.errors import BackendClosedError, ConfigError


def test_a_close_before_the_call_is_a_backend_closed_error_and_still_a_config_error(tiny_bundle: Path,  # noqa: F811
                                                                                  tmp_path: Path) -> None:
    # Before: ConfigError when the close landed before screen(), BackendClosedError (the backend's) when it landed
    # during a screen_many; a device's `except BackendClosedError` missed the first.
    photo = good_photos(tmp_path / "in", 1)[0]
    s = Screener(tiny_bundle, "ort-cpu", threads=1)
    with s:
        assert s.screen(photo).status == "ok"
    with pytest.raises(BackendClosedError, match="the Screener was closed") as caught:
        s.screen(photo)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ScreenerClosedError)
    with pytest.raises(BackendClosedError, match="the Screener was closed"):
        list(s.screen_many([photo]))


def test_a_close_during_screen_many_is_a_backend_closed_error_too(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    photos = good_photos(tmp_path / "in", 8)
    s = Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2)
    s.open()
    it = s.screen_many(photos)
    assert next(it).status == "ok"
    s.close()
    with pytest.raises(BackendClosedError):
        list(it)


def test_never_opened_is_a_config_error_only(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    photo = good_photos(tmp_path / "in", 1)[0]
    with pytest.raises(ConfigError, match="is not open") as caught:
        Screener(tiny_bundle, "ort-cpu", threads=1).screen(photo)
    assert not isinstance(caught.value, BackendClosedError)
