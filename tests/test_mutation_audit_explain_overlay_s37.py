"""Mutation audit (session 37) of ``uopsl explain`` and the screening overlays and thumbnails.

Each test pins a behaviour a single-point bug in ``train/explain.py`` or ``runtime/overlay.py`` once slipped
past the rest of the suite (results.md section 7 names the bugs). Expected values are derived by hand, or by
a plain re-implementation written out in the test (the overlay colours are read from OpenCV itself and checked
against their documented ends: until session 56 jet, dark blue at 0 and dark red at 255; since then the lighter
part of viridis, green-teal at 0 and yellow at 255).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from imagekit import draw_fake_fundus
from trainhelpers import tiny_model
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.inputs import MAPS_MARKER
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, encode_jpeg, encode_png, render_overlay, write_overlay, \
    write_thumbnail
from uopsl.train.checkpoint import save_model
from uopsl.train.explain import INDEX, explain_inputs


# -- render_overlay: the blend a clinician sees ------------------------------------------------------------
def _heat_rgb(u8: int) -> np.ndarray:
    """Written out from runtime/overlay.py's docstring: OpenCV's viridis from its first entry whose Rec.601 and
    Rec.709 luma are both at least 128, stretched over 0-255 (nearest entry)."""
    viridis = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_VIRIDIS)[:, 0, ::-1]
    v = viridis.astype(np.float64)
    start = next(k for k in range(256) if min(v[k] @ (0.299, 0.587, 0.114), v[k] @ (0.2126, 0.7152, 0.0722)) >= 128)
    return v[int(np.rint(start + (255 - start) * u8 / 255))]


def test_the_heat_colour_ends_read_from_opencv_are_green_teal_and_yellow() -> None:
    """The test's own colour source, checked against the documented ends (so a wrong channel order in the tests
    below would show here first): green-teal at 0 (green over blue over red), yellow at 255 (red and green high,
    blue low)."""
    low, high = _heat_rgb(0), _heat_rgb(255)
    assert low[1] > low[2] > low[0] and low[1] > 150
    assert high[0] > 240 and high[1] > 220 and high[2] < 60


def test_overlay_blends_the_heat_colours_in_proportion_to_the_map_scaled_to_its_own_peak() -> None:
    """docstring: the map is scaled to its maximum, blended with weight ``alpha * norm`` (alpha 0.45 by default),
    and near-zero attention leaves the photograph as it is. By hand, grey 100 under a map (0, 1, 2) (peak 2):
    norm (0, 0.5, 1); colour index round(norm * 255) = (0, 128, 255); weight (0, 0.225, 0.45)."""
    rgb = np.full((1, 3, 3), 100, np.uint8)
    heat = np.array([[0.0, 1.0, 2.0]], np.float32)
    out = render_overlay(rgb, heat).astype(np.float64)
    assert out[0, 0].tolist() == [100, 100, 100]
    for x, (idx, w) in ((1, (128, 0.225)), (2, (255, 0.45))):
        expect = np.floor(100 * (1 - w) + _heat_rgb(idx) * w + 0.5)
        assert out[0, x].tolist() == expect.tolist(), x
    assert out[0, 2, 0] > out[0, 2, 2] and out[0, 2, 1] > out[0, 2, 2]  # the peak is yellow, not blue


def test_a_map_that_is_zero_everywhere_leaves_the_photograph_untouched() -> None:
    """A class the model attends nowhere (peak 0) must not paint the photograph in the map's bottom colour."""
    rgb = draw_fake_fundus(32, seed=1)
    assert np.array_equal(render_overlay(rgb, np.zeros((32, 32), np.float32)), rgb)


def test_overlay_refuses_a_map_of_another_size() -> None:
    """A 7x7 site map handed over unscaled would be broadcast or crash inside NumPy; the caller must scale it."""
    with pytest.raises(ConfigError, match="HxW map"):
        render_overlay(np.zeros((16, 16, 3), np.uint8), np.zeros((7, 7), np.float32))


# -- encoding: RGB in, RGB in the file --------------------------------------------------------------------
def test_an_encoded_png_holds_the_rgb_it_was_given_in_the_right_channels() -> None:
    """OpenCV encodes BGR: the overlay PNG of a red picture must decode (imdecode gives BGR) to red, exactly."""
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[0, 0] = (10, 20, 30)
    back = cv2.imdecode(np.frombuffer(encode_png(rgb), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(back, rgb)


def test_a_thumbnail_jpeg_keeps_red_red() -> None:
    """The report's thumbnails: a red fundus must not come out blue (JPEG is lossy: channels compared, not
    bytes)."""
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 220
    bgr = cv2.imdecode(np.frombuffer(encode_jpeg(rgb), np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert bgr[..., 2].mean() > 180 and bgr[..., 0].mean() < 40


def test_overlay_and_thumbnail_ids_are_the_first_16_hex_digits_of_the_written_files_sha256(tmp_path: Path) -> None:
    """A row names its images by content; the report shows an image only if the file's hash matches. An id of
    other bytes (the uncompressed overlay, say) would hide every overlay from the report."""
    rgb = draw_fake_fundus(32, seed=2)
    heat = np.outer(np.arange(32), np.ones(32)).astype(np.float32)
    oid = write_overlay(tmp_path, "x", rgb, heat)
    tid = write_thumbnail(tmp_path, "x", rgb)
    assert oid == hashlib.sha256((tmp_path / OVERLAY_DIR / "x.png").read_bytes()).hexdigest()[:16]
    assert tid == hashlib.sha256((tmp_path / THUMB_DIR / "x.jpg").read_bytes()).hexdigest()[:16]


# -- explain ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, meta = tiny_model(random_text=True)
    folder = tmp_path_factory.mktemp("ck") / "ckpt"
    save_model(folder, model, meta)
    return folder


def _photo(path: Path, seed: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(draw_fake_fundus(200, seed=seed), cv2.COLOR_RGB2BGR))
    return path


def test_one_chosen_class_is_drawn_with_its_own_map(ckpt: Path, tmp_path: Path) -> None:
    """``--classes b`` must draw b's map: the panel must equal b's panel of the run that draws every class
    (same model, same photograph; b is the third class)."""
    photo = _photo(tmp_path / "eye.jpg")
    explain_inputs(ckpt, [photo], tmp_path / "all", width=128)
    explain_inputs(ckpt, [photo], tmp_path / "one", classes=["b"], width=128)
    # maps.csv says which classes each PNG shows (session 59: a rerun with other --classes replaced it unsaid)
    assert (tmp_path / "one" / INDEX).read_text().splitlines()[1].endswith(",b")
    every = cv2.imread(str(tmp_path / "all" / "eye_sites.png"))
    one = cv2.imread(str(tmp_path / "one" / "eye_sites.png"))
    assert every.shape[1] == 3 * 128 and one.shape[1] == 128
    assert np.array_equal(one, every[:, 2 * 128:])
    assert not np.array_equal(one, every[:, :128])


def test_each_panel_is_captioned_with_the_class_probability(ckpt: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The caption says ``<class> p=<probability>``, the sigmoid of the logit (the tiny model's head is
    sigmoid), not the logit itself. Expected values: the model's logits put through 1 / (1 + e^-x) here."""
    from uopsl.runtime.preprocess import preprocess_file
    from uopsl.train.checkpoint import load_model

    photo = _photo(tmp_path / "eye.jpg")
    model, meta = load_model(ckpt)
    model.eval()
    assert model.config.head == "sigmoid"
    pre = preprocess_file(photo, meta.preprocess)
    with torch.no_grad():
        logits = model(torch.from_numpy(pre.image).permute(2, 0, 1)[None].float())["logits"][0].tolist()
    want = [f"{c} p={1 / (1 + math.exp(-z)):.2f}" for c, z in zip(model.config.classes, logits)]
    texts: list[str] = []
    real = cv2.putText

    def spy(img, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        texts.append(text)
        return real(img, text, *args, **kwargs)

    monkeypatch.setattr(cv2, "putText", spy)
    explain_inputs(ckpt, [photo], tmp_path / "maps", width=128)
    assert [t for t in texts if " p=" in t] == want


def test_the_same_photograph_named_twice_gets_one_map_under_its_plain_name(ckpt: Path, tmp_path: Path) -> None:
    """Named twice (or through a link) is one photograph: one map, ``eye_sites.png``, not two hashed copies."""
    photo = _photo(tmp_path / "in" / "eye.jpg")
    link = tmp_path / "in2" / "eye.jpg"
    link.parent.mkdir()
    link.symlink_to(photo)
    res = explain_inputs(ckpt, [photo, link, photo], tmp_path / "maps", width=64)
    assert [d.name for _, d in res.written] == ["eye_sites.png"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(["eye_sites.png", INDEX, MAPS_MARKER])


def test_maps_csv_records_the_resolved_path_so_a_rerun_from_elsewhere_keeps_the_plain_name(
        ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run once with a relative path, again with the absolute one: the same photograph keeps ``eye_sites.png``
    (maps.csv holds the resolved path; a path as typed would look like another photograph, and the rerun
    would write a second, hashed map)."""
    photo = _photo(tmp_path / "in" / "eye.jpg")
    monkeypatch.chdir(tmp_path / "in")
    explain_inputs(ckpt, ["eye.jpg"], tmp_path / "maps", width=64)
    lines = (tmp_path / "maps" / INDEX).read_text().splitlines()
    assert lines[0] == "png,source,classes" and len(lines) == 2
    assert lines[1].startswith(f"eye_sites.png,{os.path.realpath(photo)},")
    monkeypatch.chdir(tmp_path)
    res = explain_inputs(ckpt, [photo], tmp_path / "maps", width=64)
    assert [d.name for _, d in res.written] == ["eye_sites.png"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(["eye_sites.png", INDEX, MAPS_MARKER])


def test_explain_refuses_an_output_folder_that_is_the_photo_folder(ckpt: Path, tmp_path: Path) -> None:
    """``--out photos`` would skip every photograph as output; the message must say why, before anything is
    written, not "no photographs found"."""
    _photo(tmp_path / "photos" / "eye.jpg")
    with pytest.raises(ConfigError, match="is the input"):
        explain_inputs(ckpt, [tmp_path / "photos"], tmp_path / "photos", width=64)
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["eye.jpg"]
