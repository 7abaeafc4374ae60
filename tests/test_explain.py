"""``uopsl explain``: per-class predilection maps overlaid on the original photograph."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from imagekit import draw_fake_fundus
from trainhelpers import tiny_model
from uopsl.train.checkpoint import save_model
from uopsl.train.cli import cli


def test_explain_writes_one_panel_per_class_over_the_original(tmp_path: Path) -> None:
    model, meta = tiny_model(random_text=True)  # untrained: distinct prototypes give visibly distinct maps
    ckpt = tmp_path / "ckpt"
    save_model(ckpt, model, meta)
    photo = tmp_path / "eye.jpg"
    rgb = draw_fake_fundus(480, seed=3)[:, :400]  # not square: the panels keep the photograph's aspect
    assert cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    classes = list(model.config.classes)
    res = CliRunner().invoke(cli, ["explain", str(ckpt), str(photo), "--out", str(tmp_path / "maps")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "maps" / "eye_sites.png"
    assert res.output.strip() == str(out)
    panels = cv2.imread(str(out))
    width = 384  # uopsl.train.explain's default panel width
    assert panels.shape == (round(480 * width / 400), width * len(classes), 3)
    # each panel is the photograph under that class's own heatmap: panels differ from each other
    # (below the caption row, which differs anyway)
    split = [panels[40:, i * width:(i + 1) * width].astype(np.int16) for i in range(len(classes))]
    assert any(np.abs(split[0] - s).mean() > 0.5 for s in split[1:])
    # one class only, and an unknown class is a clean error
    res = CliRunner().invoke(cli, ["explain", str(ckpt), str(photo), "--out", str(tmp_path / "one"),
                                   "--classes", classes[1]])
    assert res.exit_code == 0 and cv2.imread(str(tmp_path / "one" / "eye_sites.png")).shape[1] == width
    res = CliRunner().invoke(cli, ["explain", str(ckpt), str(photo), "--out", str(tmp_path / "x"),
                                   "--classes", "no_such_class"])
    assert res.exit_code != 0 and "no_such_class" in str(res.exception or res.output)


def test_explain_maps_go_straight_onto_the_panel_grid(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each class's map was built at the photograph's full size, then shrunk to the 384 px panel: 192 MB per
    class for an 8000x6000 photograph. No map is larger than the panel now."""
    from uopsl.runtime.preprocess import Geometry

    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ckpt", model, meta)
    photo = tmp_path / "big.png"
    assert cv2.imwrite(str(photo), cv2.cvtColor(draw_fake_fundus(1600, seed=2), cv2.COLOR_RGB2BGR))
    shapes: list[tuple[int, ...]] = []
    real = Geometry.to_original

    def spy(self: Geometry, heatmap: np.ndarray) -> np.ndarray:
        out = real(self, heatmap)
        shapes.append(out.shape)
        return out

    monkeypatch.setattr(Geometry, "to_original", spy)
    res = CliRunner().invoke(cli, ["explain", str(tmp_path / "ckpt"), str(photo), "--out", str(tmp_path / "maps")])
    assert res.exit_code == 0, res.output
    assert shapes and set(shapes) == {(384, 384)}
