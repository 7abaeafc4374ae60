"""benchmarks/compare_decode_rules.py: the before-you-switch check of a bundle's JPEG decode rule."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import cv2

from imagekit import draw_fake_fundus
from scriptkit import load_benchmark
from tinybundle import tiny_bundle  # noqa: F401 - session fixture


def _script() -> ModuleType:
    return load_benchmark("compare_decode_rules")


def _photos(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        rgb = draw_fake_fundus(512, seed=i)
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def test_same_rule_changes_nothing_and_another_rule_is_measured(tiny_bundle: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "in", 6)
    mod = _script()
    same = tmp_path / "same.json"
    assert mod.main([str(tiny_bundle), "--images", str(tmp_path / "in"), "--rounds", "1", "--json", str(same)]) == 0
    r = json.loads(same.read_text(encoding="utf-8"))
    assert r["compared"] == 6 and r["own_rule"] == r["other_rule"]
    assert r["mean_abs_pixel_change"] == 0 and r["max_abs_prob_change"] == 0
    assert r["referral_changes"] == r["class_call_changes"] == r["top1_changes"] == r["gate_verdict_changes"] == 0
    other = tmp_path / "other.json"
    assert mod.main([str(tiny_bundle), "--images", str(tmp_path / "in"), "--rounds", "1", "--ratio", "2",
                     "--side", "0", "--json", str(other)]) == 0
    o = json.loads(other.read_text(encoding="utf-8"))
    assert o["other_rule"] == {"decode_min_ratio": 2.0, "decode_min_side": 0}
    assert o["mean_abs_pixel_change"] > 0  # 1/2 against 1/4 scale for the 64 px tiny model
    assert o["cpu_ms_own"] > 0 and o["cpu_ms_other"] > 0


def test_no_photographs_is_exit_2(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _script().main([str(tiny_bundle), "--images", str(tmp_path / "empty")]) == 2


def test_nothing_decodable_is_exit_2_and_opencv_threads_are_restored(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg at all")
    before = cv2.getNumThreads()
    assert _script().main([str(tiny_bundle), "--images", str(tmp_path / "junk")]) == 2
    assert cv2.getNumThreads() == before
