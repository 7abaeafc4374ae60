"""The Python API against what a device maker's app passes it (session 29's device-maker review, one test each).

Each case used to be taken quietly: a wrong quality_config turned every photograph into an error row, an
empty path screened the working folder, a one-photograph folder passed for a photograph, and a missing
HEIC stopped ``screen_many`` where a missing JPEG gets its row.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.inputs import check_inputs, iter_inputs
from uopsl.runtime.quality import QualityConfig


@pytest.mark.parametrize("bad", [{"min_brightness": 15.0}, "strict", 0.5])
def test_a_quality_config_that_is_not_one_is_refused_when_the_screener_is_made(tiny_bundle: Path,  # noqa: F811
                                                                               bad: object) -> None:
    with pytest.raises(ConfigError, match=r"quality_config must be a uopsl\.runtime\.quality\.QualityConfig or "
                                          rf"None .*got {type(bad).__name__}"):
        Screener(tiny_bundle, backend="ort-cpu", quality_config=bad)


def test_a_real_quality_config_is_used(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    photo = fundus_jpeg(tmp_path / "a.jpg")
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        assert s.screen(photo).status == "ok"
    # The same photograph with a brightness floor no fundus reaches: ungradable, too dark (not an error row).
    with Screener(tiny_bundle, backend="ort-cpu", threads=1,
                  quality_config=QualityConfig(min_brightness=170.0, max_brightness=200.0)) as s:
        r = s.screen(photo)
    assert r.status == "ungradable" and "too_dark" in r.reasons


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_path_is_refused_not_read_as_the_working_folder(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch, empty: str) -> None:
    fundus_jpeg(tmp_path / "someone_else.jpg")
    monkeypatch.chdir(tmp_path)  # "" used to be Path("."): this photograph was screened
    with pytest.raises(ConfigError, match="an empty path .* names no photograph"):
        check_inputs([empty])
    with pytest.raises(ConfigError, match="an empty path"):
        list(iter_inputs([empty]))
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        with pytest.raises(ConfigError, match="an empty path"):
            s.screen(empty)
        with pytest.raises(ConfigError, match="an empty path"):
            list(s.screen_many([empty]))
    assert len(list(iter_inputs(["."]))) == 1  # the current folder, said explicitly, is walked


def test_screen_refuses_a_folder_or_list_file_holding_one_photograph(tiny_bundle: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    one = tmp_path / "one"
    photo = fundus_jpeg(one / "a.jpg")
    listing = tmp_path / "todo.txt"
    listing.write_text(f"{photo}\n", encoding="utf-8")
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        with pytest.raises(ConfigError, match=r"screen\(\) takes one image; .*one is a folder \(use screen_many\)"):
            s.screen(one)
        with pytest.raises(ConfigError, match=r"todo\.txt is a list file \(use screen_many\)"):
            s.screen(str(listing))
        assert [r.status for r in s.screen_many([one, listing])] == ["ok", "ok"]  # where they belong
        assert s.screen(photo).status == "ok"


@pytest.mark.parametrize("name", ["missing.heic", "missing.HEIF", "missing.avif"])
def test_a_missing_heic_gets_its_row_like_a_missing_jpeg(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                         name: str) -> None:
    photo = fundus_jpeg(tmp_path / "a.jpg")
    check_inputs([tmp_path / name, tmp_path / "missing.jpg"])  # named like photographs: no stop
    with pytest.raises(ConfigError, match="does not exist"):
        check_inputs([tmp_path / "missing_folder"])
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        rows = list(s.screen_many([tmp_path / name, photo, os.fspath(tmp_path / "missing.jpg")]))
    assert [r.status for r in rows] == ["error", "ok", "error"]
    assert rows[0].reasons == rows[2].reasons == ("unreadable",)


def test_encoded_bytes_carry_the_sha256_their_file_has_and_arrays_none(tiny_bundle: Path,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    """A row screened from bytes had no sha256, so it could not be traced to the file they came from (a review,
    session 45). Decoded arrays have no file to match: their sha256 stays empty, as documented."""
    import hashlib

    import cv2

    photo = fundus_jpeg(tmp_path / "a.jpg")
    raw = photo.read_bytes()
    with Screener(tiny_bundle, backend="ort-cpu", threads=1) as s:
        from_file, from_bytes = s.screen(photo), s.screen(raw)
        from_array = s.screen(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB))
    assert from_bytes.status == "ok" and from_bytes.content_sha256 == hashlib.sha256(raw).hexdigest()
    assert from_bytes.to_row()["sha256"] == from_file.to_row()["sha256"] == from_file.content_sha256
    assert from_array.status == "ok" and from_array.content_sha256 == ""
