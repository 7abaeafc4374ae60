"""benchmarks/preprocess_stages.py: the worker share by stage, and its what-if rules measured against the shipped one."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from imagekit import draw_fake_fundus
from scriptkit import load_benchmark
from uopsl.runtime import fov, preprocess as prep, quality


def _script() -> ModuleType:
    return load_benchmark("preprocess_stages")


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "fundus"
    folder.mkdir(parents=True)
    for i in range(3):
        rgb = draw_fake_fundus(512, seed=i)
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return tmp_path / "data"


def _what_if_line(out: str) -> tuple[float, int, int]:
    m = re.search(r"mean \|difference\| ([\d.]+) grey levels .* changed: (\d+) of (\d+)", out)
    assert m, out
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def test_shipped_rule_prints_stages_without_a_comparison(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _script().main(["--tvhl", str(photos), "--passes", "1"])
    out = capsys.readouterr().out
    assert out.startswith("3 photographs at 224 px")
    for stage in ("header", "decode", "find_fov", "rest of preprocessing", "gate", "worker share"):
        assert re.search(rf"^  {re.escape(stage)} +\d+\.\d\d$", out, re.M), stage
    assert "what-if" not in out


def test_gate_work_side_leaves_model_inputs_alone(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The gate's work side is measured after the model input is made: the comparison must see no pixel move.
    _script().main(["--tvhl", str(photos), "--passes", "1", "--work-side", "224"])
    diff, _, n = _what_if_line(capsys.readouterr().out)
    assert (diff, n) == (0.0, 3)


def test_linear_shrink_moves_model_inputs_and_every_patch_is_undone(
    photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = (fov._DETECT_SIDE, quality.WORK_SIDE, prep.resize_square)
    _script().main(["--tvhl", str(photos), "--passes", "1", "--linear-shrink", "--detect-side", "128",
                    "--work-side", "224"])
    diff, _, n = _what_if_line(capsys.readouterr().out)
    assert n == 3 and diff > 0
    # The runtime is the shipped one again for whatever runs next in this process.
    assert (fov._DETECT_SIDE, quality.WORK_SIDE, prep.resize_square) == shipped


def test_what_if_context_swaps_the_shrink_kernel() -> None:
    mod = _script()
    img = np.random.default_rng(0).integers(0, 256, (242, 242, 3), dtype=np.uint8)
    area = prep.resize_square(img, 224)
    with mod._what_if(fov._DETECT_SIDE, quality.WORK_SIDE, True):
        linear = prep.resize_square(img, 224)
    np.testing.assert_array_equal(linear, cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(linear, area)
    np.testing.assert_array_equal(prep.resize_square(img, 224), area)


@pytest.mark.parametrize("argv", [["--detect-side", "16"], ["--work-side", "9000"], ["--passes", "0"], ["--n", "-1"]])
def test_bad_options_are_refused(photos: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _script().main(["--tvhl", str(photos), *argv])
    assert exc.value.code == 2


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fundus").mkdir()
    with pytest.raises(SystemExit) as exc:
        _script().main(["--tvhl", str(tmp_path)])
    assert exc.value.code == 2
