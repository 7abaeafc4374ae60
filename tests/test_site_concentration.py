"""Where predilection maps point against true site masks (``uopsl evaluate`` reports it on synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from uopsl.runtime.preprocess import Geometry
from uopsl.train.evaluate import site_concentration, site_concentration_report

# A 128 px original cropped whole (x0 = y0 = 0) into a 64 px model input: a 4 x 4 grid has stride 16, so
# token j looks at model pixel 16j, original pixel 32j + 1, and is measured on the original window
# [32j - 15, 32j + 17) (two original pixels per model pixel keep the windows on whole pixels).
SIDE = 128


def _geometry() -> Geometry:
    return Geometry(orig_h=SIDE, orig_w=SIDE, cx=SIDE / 2, cy=SIDE / 2, radius=SIDE / 2, x0=0, y0=0, side=SIDE,
                    size=SIDE // 2, fov_found=True, fov_fill=1.0)


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
    lesion[17:49, 49:81] = 1  # exactly the window of token (1, 2)
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
    assert (rep["a"]["mean"], rep["a"]["n_images"]) == (pytest.approx(8.5), 2)
    assert (rep["b"]["mean"], rep["b"]["n_images"]) == (pytest.approx(1.0), 1)
    assert rep["a"]["mass_in_mask"] == pytest.approx((1.0 + 1 / 16) / 2)
    assert rep["a"]["class_prior"] == pytest.approx(16.0) and rep["a"]["on_other_sites"] is None


def test_a_class_absent_from_an_image_is_not_measured_there(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lesion = np.zeros((SIDE, SIDE), np.uint8)
    lesion[:16, :16] = 1
    np.savez(tmp_path / "m.npz", a=lesion)
    maps = np.full((1, 2, 4, 4), 1 / 16, np.float32)
    rep = site_concentration_report(maps, np.array([[1, 0]], np.float32), ("normal", "a"), [tmp_path / "m.npz"],
                                    [_geometry()])
    assert rep == {}


def test_evaluate_keeps_masks_in_step_when_an_image_cannot_be_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The dataset drops unreadable photographs; each remaining one is still scored against its own mask."""
    import cv2

    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.checkpoint import save_model
    from uopsl.train.workflow import run_evaluate

    items = tiny_items(tmp_path / "imgs", n=6)
    items[1].path.write_bytes(b"not an image")
    masks = []
    for i, it in enumerate(items):
        h, w = cv2.imread(str(it.path)).shape[:2] if i != 1 else (96, 96)
        m = np.zeros((h, w), np.uint8)
        m[: h // 2] = 1 if i % 2 == 0 else 0
        m[h // 2 :] = 0 if i % 2 == 0 else 1  # even images: top half; odd: bottom half
        np.savez(tmp_path / f"m{i}.npz", a=m, b=m)
        masks.append(tmp_path / f"m{i}.npz")
    model, meta = tiny_model("uopsl")
    save_model(tmp_path / "ck", model, meta)
    rep = run_evaluate(tmp_path / "ck", items, None, n_boot=0, masks=masks, device="cpu", keep_ungradable=True)
    conc = rep["site_concentration"]
    # images 1 (unreadable) and 0, 3 (normal) are not measured: a at 4, b at 2 and 5
    assert conc["a"]["n_images"] == 1 and conc["b"]["n_images"] == 2
    with pytest.raises(Exception, match="one entry per item"):
        run_evaluate(tmp_path / "ck", items, None, n_boot=0, masks=masks[:-1], device="cpu", keep_ungradable=True)


def test_chance_is_one_over_the_cells_the_map_may_weigh() -> None:
    """Maps that weigh the field of view only scored 1.23 for an even spread on an 8 x 8 grid (chance was 'one')."""
    inside = np.ones((4, 4), bool)
    inside[0, 0] = inside[0, 3] = inside[3, 0] = inside[3, 3] = False  # the corners outside the field of view
    even = inside / inside.sum()
    cover = np.zeros((4, 4), np.float32)
    cover[1, 1] = 1.0
    assert site_concentration(even, cover, inside) == pytest.approx(1.0)
    assert site_concentration(even, cover) == pytest.approx(16 / 12)  # the grid-wide share: above 1 by construction


def test_yardsticks_a_fixed_map_and_other_classes_sites(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Fixed sites make a fixed map score high; a class's maps are also scored on the other classes' sites."""
    names = ("a", "b")
    ma, mb = np.zeros((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE), np.uint8)
    ma[17:49, 17:49] = 1  # token (1, 1)'s window
    mb[81:113, 81:113] = 1  # token (3, 3)'s window
    np.savez(tmp_path / "a.npz", a=ma)
    np.savez(tmp_path / "b.npz", b=mb)
    maps = np.zeros((2, 2, 4, 4), np.float32)
    maps[:, 0, 1, 1] = 1.0  # class a's map always on a's site
    maps[:, 1, 1, 1] = 1.0  # class b's map also on a's site: it has not found b's
    targets = np.array([[1, 0], [0, 1]], np.float32)
    rep = site_concentration_report(maps, targets, names, [tmp_path / "a.npz", tmp_path / "b.npz"],
                                    [_geometry(), _geometry()])
    assert rep["a"]["mean"] == pytest.approx(16.0) and rep["a"]["on_other_sites"] == pytest.approx(0.0)
    assert rep["b"]["mean"] == pytest.approx(0.0) and rep["b"]["on_other_sites"] == pytest.approx(16.0)
    assert rep["a"]["class_prior"] == pytest.approx(16.0)  # its own mean mask: one cell
    assert rep["a"]["pooled_prior"] == pytest.approx(8.0)  # half the pooled map lies on a's cell


def test_a_token_is_measured_on_the_window_it_looks_at() -> None:
    # Token j of a stride-32 grid looks at model pixel 32*j; the cells [32j, 32j+32) put every mask
    # 15.5 pixels off the tokens (session-15 review: concentrations understated, amd 6.5 -> 11 on the demo).
    from uopsl.train.evaluate import mask_to_grid

    size, grid = 256, 8
    g = Geometry(orig_h=size, orig_w=size, cx=size / 2, cy=size / 2, radius=size / 2, x0=0, y0=0, side=size,
                 size=size, fov_found=True, fov_fill=1.0, fov_count=1)
    mask = np.zeros((size, size), np.uint8)
    mask[96 - 16:96 + 16, 128 - 16:128 + 16] = 1  # the 32 x 32 window around model pixel (y 96, x 128): token (3, 4)
    cover = mask_to_grid(mask, g, grid, grid)
    assert cover[3, 4] == pytest.approx(1.0, abs=0.05)
    assert cover.sum() == pytest.approx(1.0, abs=0.05)


def test_the_last_token_of_a_padded_grid_keeps_its_part_of_the_mask() -> None:
    # 300 px: 10 tokens of stride 32 cover 320 px; token 9's window [272.5, 304.5) holds 27.5 px of image.
    from uopsl.train.evaluate import mask_to_grid

    g = Geometry(orig_h=300, orig_w=300, cx=150, cy=150, radius=150, x0=0, y0=0, side=300, size=300,
                 fov_found=True, fov_fill=1.0, fov_count=1)
    cover = mask_to_grid(np.ones((300, 300), np.uint8), g, 10, 10)
    assert cover[5, 9] == pytest.approx(27.5 / 32, abs=0.02) and cover[5, 5] == pytest.approx(1.0, abs=1e-3)
