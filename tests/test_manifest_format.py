"""Manifest format versions: a bundle made before the JPEG decode rule stays readable by older runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.bundle import FORMAT_VERSION, Manifest, read_manifest
from uopsl.runtime.errors import BundleError


def test_bundles_without_a_use_statement_are_version_2_and_old_ones_stay_version_1_when_rewritten(
        tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert "intended_use" not in raw
    assert raw["format_version"] == 2 and FORMAT_VERSION == 3
    assert {"decode_min_ratio", "decode_min_side"} <= set(raw["preprocess"])
    # The same manifest as a toolkit from before the decode rule wrote it.
    old = {**raw, "format_version": 1,
           "preprocess": {k: v for k, v in raw["preprocess"].items() if not k.startswith("decode_min_")}}
    m = Manifest.from_dict(old)
    assert (m.preprocess.decode_min_ratio, m.preprocess.decode_min_side) == (2.0, 0)
    again = m.to_dict()  # what record_parity / add_file / build-engine write back
    assert again["format_version"] == 1
    assert again["preprocess"] == old["preprocess"]


@pytest.mark.parametrize(("version", "advice"), [(4, "upgrade uopsl on this device"), (0, "re-export the bundle")])
def test_unknown_format_versions_say_what_to_do(tiny_bundle: Path, tmp_path: Path, version: int, advice: str) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "format_version": version}), encoding="utf-8")
    with pytest.raises(BundleError, match=f"format version {version} is not supported.*{advice}"):
        read_manifest(tmp_path)
