"""Numpy cache files cut short or emptied (a partial copy, a backup or sync that stopped) are made again.

``numpy.load`` raises EOFError for an empty file and zipfile.BadZipFile for a ``.npz`` cut short, neither
an OSError nor a ValueError; the duplicate-signature cache let them through and stopped the run with a
traceback (session 40's audit of the splits), and so did the validation's batch cache, the calibration set
cache (instead of its DataError) and the training image cache. ``runtime.fsio.NUMPY_FILE_ERRORS`` names
them once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tinybundle import fundus_jpeg
from uopsl.calibration.dataset import CalibrationSet
from uopsl.export.validate import _BatchCache
from uopsl.runtime.errors import DataError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train.torchdata import cache_images

CUTS = [0, 40]  # empty, and cut inside the header


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("keep", CUTS)
def test_a_cut_batch_of_the_validation_cache_is_computed_again(tmp_path: Path, keep: int,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cache = _BatchCache(tmp_path / "batches", {"model": "m", "images": 2})
    cache.put(0, {"probs": np.array([[0.25, 0.75]], np.float32)}, {"n": 1})
    assert cache.get(0) is not None
    cut(cache._path(0), keep)
    with caplog.at_level(logging.WARNING):
        assert cache.get(0) is None
    assert "ignoring unreadable cached batch" in caplog.text


@pytest.mark.parametrize("keep", CUTS)
def test_a_cut_calibration_set_cache_is_a_data_error(tmp_path: Path, keep: int) -> None:
    pre = PreprocessConfig(size=64)
    path = CalibrationSet.from_images(np.zeros((2, 64, 64, 3), np.uint8), pre).save(tmp_path / "set.npz")
    cut(path, keep)
    with pytest.raises(DataError, match="not a calibration set cache"):
        CalibrationSet.load(path)


@pytest.mark.parametrize("which", ["img", "ok", "sha"])
@pytest.mark.parametrize("keep", CUTS)
def test_a_cut_training_image_cache_is_made_again(tmp_path: Path, which: str, keep: int,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    photos = [fundus_jpeg(tmp_path / f"p{i}.jpg", 160, seed=i) for i in range(3)]
    pre = PreprocessConfig(size=64)
    want = cache_images(photos, pre, tmp_path / "cache")
    (victim,) = (tmp_path / "cache").glob(f"{which}-*.npy")
    cut(victim, keep)
    with caplog.at_level(logging.WARNING):
        got = cache_images(photos, pre, tmp_path / "cache")
    assert "ignoring the unreadable image cache" in caplog.text
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    caplog.clear()
    again = cache_images(photos, pre, tmp_path / "cache")  # rewritten: read back without a word
    assert "image cache" not in caplog.text
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(want[0]))


def test_a_training_image_cache_of_other_arrays_is_made_again(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Readable files that do not hold these photographs at this size (a cache copied over by hand) are not used."""
    photos = [fundus_jpeg(tmp_path / f"p{i}.jpg", 160, seed=i) for i in range(3)]
    pre = PreprocessConfig(size=64)
    want = cache_images(photos, pre, tmp_path / "cache")
    (img,) = (tmp_path / "cache").glob("img-*.npy")
    np.save(img, np.zeros((2, 64, 64, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        got = cache_images(photos, pre, tmp_path / "cache")
    assert "do not match 3 photographs at 64 px" in caplog.text
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
