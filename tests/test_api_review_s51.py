"""The Python API as a device maker embeds it (session 51 review): a refilled frame buffer, empty arrays, a
bundle updated under a running Screener."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture

from uopsl.runtime.api import BundleError, Screener
from uopsl.runtime.bundle import read_manifest, write_manifest


def _frames(tmp_path: Path, n: int = 12) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(fundus_jpeg(tmp_path / f"f{i}.jpg", seed=i))), cv2.COLOR_BGR2RGB)
            for i in range(n)]


def test_a_frame_buffer_refilled_for_every_frame_gives_each_frame_its_own_result(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """screen_many reads ahead: it kept a reference to the array, so later frames' pixels were screened under
    earlier frames' keys (15 of 16 results wrong in the review)."""
    frames = _frames(tmp_path)
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        expected = [s.screen(f) for f in frames]
        buf = np.empty_like(frames[0])

        def camera():  # type: ignore[no-untyped-def]
            for f in frames:
                buf[...] = f
                yield buf

        got = list(s.screen_many(camera()))
    assert [g.key for g in got] == [e.key for e in expected]
    assert [g.probs for g in got] == [e.probs for e in expected]


@pytest.mark.parametrize("shape", [(0, 0), (0, 50), (5, 5)])
def test_an_empty_or_tiny_greyscale_array_is_too_small_not_an_internal_error(
        tiny_bundle: Path, shape: tuple[int, int]) -> None:  # noqa: F811
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        r = s.screen(np.zeros(shape, np.uint8))
    assert r.reasons == ("too_small",) and "too small for a fundus photograph" in r.error, (r.reasons, r.error)


def test_reopening_after_a_bundle_update_says_the_bundle_changed(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    s = Screener(b, backend="ort-cpu")
    s.open()
    s.close()
    m = read_manifest(b)
    write_manifest(b, type(m)(**{**m.__dict__, "notes": {**m.notes, "update": "2"}}))
    with pytest.raises(BundleError, match="changed since this Screener read it .*make a new Screener"):
        s.open()
    with Screener(b, backend="ort-cpu") as fresh:  # a new Screener runs the bundle as it is now
        assert fresh.manifest.notes["update"] == "2" and fresh.screen(np.zeros((5, 5), np.uint8)).status == "error"
