"""Where predilection maps point against true site masks (``uopsl evaluate`` reports it on synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from uopsl.runtime.preprocess import Geometry
from uopsl.train.evaluate import site_concentration, site_concentration_report

SIDE = 64  # original image and crop: the identity geometry, so grid cells are 16 x 16 px on a 4 x 4 grid


def _geometry() -> Geometry:
    return Geometry(orig_h=SIDE, orig_w=SIDE, cx=SIDE / 2, cy=SIDE / 2, radius=SIDE / 2, x0=0, y0=0, side=SIDE,
                    size=SIDE, fov_found=True, fov_fill=1.0)


def test_site_concentration_is_one_for_a_uniform_map_and_inverse_area_when_all_mass_is_inside() -> None:
    cover = np.zeros((4, 4), np.float32)
    cover[1, 2] = 1.0
    assert site_concentration(np.full((4, 4), 1 / 16), cover) == pytest.approx(1.0)
    peak = np.zeros((4, 4))
    peak[1, 2] = 1.0
    assert site_concentration(peak, cover) == pytest.approx(16.0)
    assert np.isnan(site_concentration(peak, np.zeros((4, 4))))


def test_report_averages_over_images_with_the_class_and_its_mask(tmp_path) -> None:  # type: ignore[no-untyped-def]
    names = ("normal", "a", "b")
    lesion = np.zeros((SIDE, SIDE), np.uint8)
    lesion[16:32, 32:48] = 1  # exactly grid cell (1, 2)
    np.savez(tmp_path / "m0.npz", a=lesion)
    np.savez(tmp_path / "m1.npz", a=lesion, b=lesion)
    maps = np.full((4, 3, 4, 4), 1 / 16, np.float32)
    maps[0, 1] = 0.0
    maps[0, 1, 1, 2] = 1.0  # image 0: all of a's mass on the lesion -> 16
    targets = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 1], [1, 0, 0]], np.float32)  # image 1: a uniform map -> 1
    masks = [tmp_path / "m0.npz", tmp_path / "m1.npz", None, None]  # image 2 has no mask file: not counted
    geoms = [_geometry(), _geometry(), None, None]
    rep = site_concentration_report(maps, targets, names, masks, geoms)
    assert set(rep) == {"a", "b"}  # normal has no mask
    assert rep["a"] == {"mean": pytest.approx(8.5), "n_images": 2}
    assert rep["b"] == {"mean": pytest.approx(1.0), "n_images": 1}


def test_a_class_absent_from_an_image_is_not_measured_there(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lesion = np.zeros((SIDE, SIDE), np.uint8)
    lesion[:16, :16] = 1
    np.savez(tmp_path / "m.npz", a=lesion)
    maps = np.full((1, 2, 4, 4), 1 / 16, np.float32)
    rep = site_concentration_report(maps, np.array([[1, 0]], np.float32), ("normal", "a"), [tmp_path / "m.npz"],
                                    [_geometry()])
    assert rep == {}
