"""The heatmaps' colour map (session 56): lightness rising with heat, readable on a black-and-white print.

Until session 56 overlays were jet: dark blue for low attention, bright cyan and yellow in the middle, dark red
for the peak. Clinics print report.html in black and white, where jet's peak printed as dark as its low end (a
hot spot came out as a dark core in a light ring). The overlays are now the lighter part of viridis, blended
with a weight rising with heat; report.html carries a colour scale in the same colours; ``uopsl explain`` draws
with the same function. Grey here is what a printer makes of a colour: OpenCV's RGB to grey (Rec.601 luma) and,
where said, Rec.709 luma.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from uopsl.runtime.bundle import ClassSpec, Manifest
from uopsl.runtime.overlay import OVERLAY_DIR, content_id, encode_png, render_overlay, write_overlay
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.report import render_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PACKAGE = Path(__file__).resolve().parents[1]
LUMA_709 = np.array([0.2126, 0.7152, 0.0722])


def _grey(rgb: np.ndarray) -> np.ndarray:
    """A printer's grey of RGB uint8 pixels: OpenCV's conversion (Rec.601 luma), as int."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(int)


def _ramp_greys(background: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Rec.601 and Rec.709 greys along a heat ramp 0..1 of ``levels`` steps overlaid on a flat grey image."""
    heat = np.tile(np.linspace(0.0, 1.0, levels, dtype=np.float32), (3, 1))
    out = render_overlay(np.full((3, levels, 3), background, np.uint8), heat)
    return _grey(out)[1], np.rint(out[1].astype(np.float64) @ LUMA_709).astype(int)


# -- the blend, in grey --------------------------------------------------------------------------------------
@pytest.mark.parametrize("background", [0, 64, 128])
def test_over_a_neutral_background_the_grey_rises_with_heat_step_by_step(background: int) -> None:
    """A ramp of 17 heat levels (0, 1/16, ..., 1) over a flat grey: each level prints at least as light as the one
    below it, in both lumas, and the peak prints clearly lighter than the background. Jet over mid-grey printed
    its peak at 87 (41 levels darker than the background); whole viridis dipped 6 levels below it first."""
    for grey in _ramp_greys(background, 17):
        assert (np.diff(grey) >= 0).all(), grey.tolist()
        assert grey[0] == background and grey[-1] >= background + 35, grey.tolist()


def test_no_level_of_a_fine_ramp_prints_darker_than_the_photograph_under_it() -> None:
    """256 heat levels over mid-grey: no level falls below the background (a dark ring round a hot spot, on
    paper), the peak is the lightest, and a fall from one level to the next is at most the one grey level that
    rounding each of three channels to 8 bits can cost (the exact blend rises: the colours are all at least as
    light as mid-grey)."""
    for grey in _ramp_greys(128, 256):
        assert grey.min() == 128 and grey[-1] == grey.max() >= 165, grey.tolist()
        assert (np.maximum.accumulate(grey) - grey).max() <= 1, grey.tolist()


def test_the_heat_colours_lighten_steadily_and_none_is_darker_than_mid_grey() -> None:
    """The map itself: CIE L* and both lumas never step back over its 256 entries, rise by more than 25 L*
    from low to peak, and every entry is at least as light as mid-grey (so blending it never darkens a mid-grey
    photograph: the premise of the tests above)."""
    from uopsl.runtime.overlay import HEAT_RGB

    lut = np.asarray(HEAT_RGB, np.float64)
    lin = np.where(lut / 255 <= 0.04045, lut / 255 / 12.92, ((lut / 255 + 0.055) / 1.055) ** 2.4) @ LUMA_709
    lstar = np.where(lin > 216 / 24389, 116 * np.cbrt(lin) - 16, 24389 / 27 * lin)
    luma601, luma709 = lut @ (0.299, 0.587, 0.114), lut @ LUMA_709
    for series in (lstar, luma601, luma709):
        assert (np.diff(series) >= 0).all()
    assert lstar[-1] - lstar[0] > 25
    assert min(luma601.min(), luma709.min()) >= 128


def test_attention_near_zero_leaves_the_photograph_as_it_was() -> None:
    """The weight rises with heat: where a map is under 1 % of its peak no pixel moves by more than a grey
    level. A uniform blend would tint (and, with a dark low end, darken) the whole photograph."""
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    heat = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 4.0**2)).astype(np.float32)
    out = render_overlay(rgb, heat).astype(int)
    far = heat < 0.01
    assert far.sum() > 2000
    assert np.abs(out[far] - rgb[far].astype(int)).max() <= 1


# -- real photographs ----------------------------------------------------------------------------------------
def _photo(tvhl_dir: Path, name: str) -> np.ndarray:
    bgr = cv2.imread(str(tvhl_dir / "fundus" / name))
    assert bgr is not None, name
    return cv2.cvtColor(cv2.resize(bgr, (384, 384), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def _centre_spot(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian hot spot at the centre of the field of view (the macula) and the field of view's mask."""
    bright = (_grey(rgb) > 15).astype(np.uint8)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros_like(bright)
    cv2.drawContours(mask, [cv2.convexHull(max(contours, key=cv2.contourArea))], -1, 1, cv2.FILLED)
    mask = cv2.erode(mask, np.ones((9, 9), np.uint8)).astype(bool)
    ys, xs = np.nonzero(mask)
    sigma = 0.12 * np.sqrt(mask.sum() / np.pi)
    yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
    heat = np.exp(-((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2) / (2 * sigma**2)).astype(np.float32)
    return heat, mask


@pytest.mark.parametrize("name", ["0748_OD_f_1.jpg", "0676_OI_f_1.jpg", "0002_OD_f_1.jpg"])
def test_over_a_real_fundus_photograph_the_hot_spot_prints_lighter_than_the_cold_ring_round_it(
        tvhl_dir: Path, name: str) -> None:
    """Two bright orange-red photographs and a dark one (TVHL), a hot spot on the macula: in grey the hot core
    (heat >= 0.8) is lighter than the cold ring round it (0.05-0.2), and the overlay itself adds at least 20
    grey levels more at the core than at the ring (the photograph's own difference taken out). In colour the
    core moves at least 15 CIE a*b* units from the photograph (yellow on the orange retina). Jet made the core
    darker than the ring on both bright photographs (by 5 and 14 levels of its own)."""
    rgb = _photo(tvhl_dir, name)
    heat, mask = _centre_spot(rgb)
    n = heat / heat.max()
    hot, cold = mask & (n >= 0.8), mask & (n >= 0.05) & (n <= 0.2)
    out = render_overlay(rgb, heat)
    g, g0 = _grey(out).astype(float), _grey(rgb).astype(float)
    assert g[hot].mean() > g[cold].mean()
    added = (g[hot].mean() - g[cold].mean()) - (g0[hot].mean() - g0[cold].mean())
    assert added >= 20, added
    lab1 = cv2.cvtColor(out.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[hot][:, 1:].mean(0)
    lab0 = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[hot][:, 1:].mean(0)
    assert float(np.hypot(*(lab1 - lab0))) >= 15


# -- one colour map ------------------------------------------------------------------------------------------
def test_the_peak_is_painted_in_the_last_heat_colour_and_the_colours_come_from_viridis() -> None:
    """``render_overlay`` at full weight paints the peak exactly in ``HEAT_RGB[255]``, viridis's top entry, and
    the low end is viridis's first entry at least as light as mid-grey, so the scale the report draws from
    ``HEAT_RGB`` is the one the overlays are in."""
    from uopsl.runtime.overlay import HEAT_RGB, VIRIDIS_START

    viridis = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_VIRIDIS)[:, 0, ::-1]
    assert HEAT_RGB[255].tolist() == viridis[255].tolist() == [253, 231, 37]
    assert HEAT_RGB[0].tolist() == viridis[VIRIDIS_START].tolist()
    below = viridis[VIRIDIS_START - 1].astype(np.float64)
    assert min(below @ (0.299, 0.587, 0.114), below @ LUMA_709) < 128  # the start is the first light enough
    heat = np.array([[0.0, 1.0]], np.float32)
    out = render_overlay(np.zeros((1, 2, 3), np.uint8), heat, alpha=1.0)
    assert out[0, 1].tolist() == HEAT_RGB[255].tolist() and out[0, 0].tolist() == [0, 0, 0]


def test_no_module_of_the_toolkit_colours_a_heatmap_but_overlay_py() -> None:
    """One colour map for the toolkit: OpenCV colour maps are applied in runtime/overlay.py only (``uopsl
    explain`` and the report call it); a second place would drift back to its own colours."""
    users = sorted(str(p.relative_to(PACKAGE)) for folder in ("runtime", "train", "export", "calibration")
                   for p in (PACKAGE / folder).rglob("*.py")
                   if re.search(r"applyColorMap|COLORMAP_", p.read_text(encoding="utf-8")))
    assert users == ["runtime/overlay.py"]


def test_explain_draws_its_panels_with_the_overlay_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``uopsl explain`` gets its colours from ``render_overlay`` (one call per class panel), and names the peak's
    colour on each panel as the overlays' colour map names it."""
    from imagekit import draw_fake_fundus
    from trainhelpers import tiny_model
    from uopsl.runtime import overlay
    from uopsl.train.checkpoint import save_model
    from uopsl.train.explain import explain_inputs

    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ck", model, meta)
    photo = tmp_path / "in" / "eye.jpg"
    photo.parent.mkdir()
    assert cv2.imwrite(str(photo), cv2.cvtColor(draw_fake_fundus(160, seed=4), cv2.COLOR_RGB2BGR))
    calls: list[tuple[int, ...]] = []
    real = overlay.render_overlay

    def spy(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
        calls.append(heat.shape)
        return real(rgb, heat, alpha)

    said: list[str] = []
    real_text = cv2.putText

    def text_spy(img: Any, text: str, *a: Any, **k: Any) -> Any:
        said.append(text)
        return real_text(img, text, *a, **k)

    monkeypatch.setattr(overlay, "render_overlay", spy)
    monkeypatch.setattr(cv2, "putText", text_spy)
    explain_inputs(tmp_path / "ck", [photo], tmp_path / "maps", width=96)
    assert len(calls) == len(model.config.classes)
    assert said.count(f"{overlay.PEAK_COLOUR}: this map's own peak") == len(model.config.classes)


# -- the report's colour scale -------------------------------------------------------------------------------
def _manifest() -> Manifest:
    classes = (ClassSpec("normal", ("healthy retina",), threshold=0.2, referable=False),
               ClassSpec("dr", ("microaneurysms",), threshold=0.5, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(), files=(), model_name="uopsl",
                    backbone="efficientnet_lite0", created="2026-11-29T12:04:00+00:00", content_sha256="ab" * 32)


def _row(rid: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "source": f"/clinic/{rid}.jpg", "key": f"/clinic/{rid}.jpg|1|1", "status": "ok",
            "refer": True, "positive": ["dr"], "probs": {"normal": 0.1, "dr": 0.9}, "reasons": [], "error": "",
            "heatmap_class": "dr", **extra}


def _scale_stops(page: str) -> list[str]:
    found = re.findall(r"<span class='heatscale'>low<span class='bar' role='img' aria-label='[^']*' "
                       r"style='background: linear-gradient\(to right, ([#0-9a-f, ]+)\)'></span>high</span>", page)
    assert len(found) == 1, "one colour scale, 'low [bar] high', in the page"
    return [s.strip() for s in found[0].split(",")]


def test_the_report_has_a_colour_scale_from_low_to_high_in_the_overlay_colours() -> None:
    """report.html explains the heatmaps' colours with an inline gradient (no image file, no external resource):
    its ends are the map's own end colours, its grey rises from left to right as the overlays' does (so it reads
    on a black-and-white print), and the words say which end is which; jet's "red: most attention" is gone."""
    from uopsl.runtime.overlay import HEAT_RGB

    page = render_report([_row("a")], "/nonexistent", _manifest())
    stops = _scale_stops(page)
    rgb = np.array([[int(s[k:k + 2], 16) for k in (1, 3, 5)] for s in stops], np.float64)
    assert rgb[0].tolist() == HEAT_RGB[0].tolist() and rgb[-1].tolist() == HEAT_RGB[255].tolist()
    grey = rgb @ (0.299, 0.587, 0.114)
    assert (np.diff(grey) > 0).all() and grey[-1] - grey[0] > 60
    assert "site attention, from green to yellow, lighter where higher" in page
    assert "red: most attention" not in page
    assert "url(" not in page and "<link" not in page and "@import" not in page  # nothing fetched: works offline
    assert ".heatscale .bar {" in page  # its size and border come with the inlined style sheet


def test_overlays_name_their_colours_and_an_older_one_in_the_report_says_red_is_most(tmp_path: Path) -> None:
    """A folder screened again after an upgrade keeps its earlier rows and their jet overlays: the report cannot
    tell them from the pixels, so overlay files now name their colour map (a PNG text chunk that leaves the
    pixels as they are), and a heatmap naming none is captioned with jet's meaning, not left under the new
    scale."""
    from uopsl.runtime.overlay import COLOURS, PNG_COLOURS_HEAD, png_colours

    rgb = np.full((48, 48, 3), 120, np.uint8)
    heat = np.outer(np.arange(48), np.ones(48)).astype(np.float32)
    new_id = write_overlay(tmp_path, "new", rgb, heat)
    new_file = tmp_path / OVERLAY_DIR / "new.png"
    assert png_colours(new_file.read_bytes()[:PNG_COLOURS_HEAD]) == COLOURS
    back = cv2.imdecode(np.frombuffer(new_file.read_bytes(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(back, render_overlay(rgb, heat))
    old_bytes = encode_png(render_overlay(rgb, heat))  # as written before session 56 (the pixels do not matter)
    assert png_colours(old_bytes) is None
    (tmp_path / OVERLAY_DIR / "old.png").write_bytes(old_bytes)
    page = render_report([_row("new", overlay_id=new_id), _row("old", overlay_id=content_id(old_bytes))],
                         tmp_path, _manifest())
    cells = dict(re.findall(r"title='/clinic/(\w+)\.jpg'.*?<td class='img'>.*?</td><td class='img'>(.*?)</td>",
                            page, flags=re.S))
    assert set(cells) == {"new", "old"} and all('class="heatmap"' in c for c in cells.values())
    assert "older colours: red = most attention" in cells["old"]
    assert "older colours" not in cells["new"] and "other colours" not in cells["new"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_in_chromium_the_scale_is_painted_low_on_the_left_and_lighter_to_the_right(tmp_path: Path) -> None:
    """The gradient is drawn by the browser, not only written: in a headless Chromium screenshot of the report,
    pixels of the low colour lie left of pixels of the peak colour on one line, and the grey between them rises
    (sampled at five points, each a few pixels wide against the browser's dithering)."""
    from uopsl.runtime.overlay import HEAT_RGB

    (tmp_path / "report.html").write_text(render_report([_row("a")], "/nonexistent", _manifest()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,1600",
                    "--force-device-scale-factor=2", (tmp_path / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = cv2.imread(str(shot))[..., ::-1].astype(int)

    def near(colour: np.ndarray) -> np.ndarray:
        return (np.abs(img - colour.astype(int)).max(axis=2) <= 6)

    low, peak = near(HEAT_RGB[0]), near(HEAT_RGB[255])
    rows = np.nonzero(low.any(axis=1) & peak.any(axis=1))[0]
    assert rows.size, "the scale's two end colours are not on one line of the screenshot"
    y = int(rows[rows.size // 2])
    x0, x1 = int(np.nonzero(low[y])[0].min()), int(np.nonzero(peak[y])[0].max())
    assert x1 - x0 > 100  # 8em at twice the pixels
    line = cv2.cvtColor(img[y:y + 1].astype(np.uint8), cv2.COLOR_RGB2GRAY)[0].astype(float)
    samples = [line[x - 2:x + 3].mean() for x in np.linspace(x0 + 3, x1 - 3, 5).astype(int)]
    assert all(b > a for a, b in zip(samples, samples[1:])), samples


def test_a_change_to_the_heat_colours_alone_refreshes_the_day_pages(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The day pages' colour scale comes from runtime/overlay.py: a change there must make them be redrawn
    (their fingerprint hashes the rendering code; overlay.py was not part of it)."""
    from uopsl.runtime import overlay, report_days

    report_days._code_hash.cache_clear()  # once per process: computed again for each arm here
    before = report_days._code_hash()
    changed = tmp_path / "overlay.py"
    changed.write_bytes(Path(overlay.__file__).read_bytes() + b"\n# other colours\n")
    monkeypatch.setattr(overlay, "__file__", str(changed))
    report_days._code_hash.cache_clear()
    try:
        assert report_days._code_hash() != before
    finally:
        monkeypatch.undo()
        report_days._code_hash.cache_clear()


def test_an_overlay_that_cannot_be_read_gets_no_caption_about_older_colours(tmp_path: Path) -> None:
    """None meant both 'names no colours' (jet) and 'cannot be read'; the second got the jet caption too."""
    from uopsl.runtime import report

    unreadable = tmp_path / "a-directory.png"
    unreadable.mkdir()
    assert report._overlay_colours(unreadable) is None
    old = tmp_path / "old.png"
    old.write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    assert report._overlay_colours(old) == report.OLDER_COLOURS
