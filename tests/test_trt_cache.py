"""TensorRT 8.x calibration cache: exact text format, version integers, round trip, malformed input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from uopsl.calibration import trt_cache
from uopsl.runtime.errors import ConfigError, DataError


def test_exact_format() -> None:
    # 1/127 scale for amax 1.0; bits of float32(1/127) = 0x3c010204.
    text = trt_cache.format_cache({"image": 1.0, "conv1:0": 127.0, "dead": 0.0, "denormal": 1e-37}, "8.6.1")
    # A tensor with no range gets scale 1.0, as in ONNX Runtime's Q/DQ files: zero scales are suspected in TensorRT
    # 8.5/8.6 INT8 build failures (NVIDIA/TensorRT#4446, #3020), and a scale under float32's smallest normal is no better.
    assert text == ("TRT-8601-EntropyCalibration2\nimage: 3c010204\nconv1:0: 3f800000\ndead: 3f800000\n"
                    "denormal: 3f800000\n")


def test_scale_bits_are_float32_big_endian() -> None:
    amax = 2.5
    scale = np.float32(amax) / np.float32(127)  # what TensorRT computes (amax / 127.0f)
    assert trt_cache.amax_to_scale(amax) == float(scale)
    assert trt_cache.scale_hex(float(scale)) == struct.pack(">f", scale).hex()


def test_values_from_public_caches_decode() -> None:
    # Lines quoted from caches TensorRT wrote (TRT-7000 sample table, TRT-100300 cache).
    assert trt_cache.hex_scale("3c008912") == pytest.approx(0.00784518, rel=1e-6)
    assert trt_cache.hex_scale("3c010a14") * 127 == pytest.approx(1.00024412, rel=1e-7)  # input range ~1
    parsed = trt_cache.parse_cache("TRT-100300-EntropyCalibration2\ninput_1:0: 3c010a14\n"
                                   "conv1/convolution:0: 3d0b7086\n(Unnamed Layer* 64) [Shuffle]_output: 0\n")
    assert parsed.version == 100300 and parsed.algorithm == "EntropyCalibration2"
    assert set(parsed.scales) == {"input_1:0", "conv1/convolution:0", "(Unnamed Layer* 64) [Shuffle]_output"}
    assert parsed.scales["(Unnamed Layer* 64) [Shuffle]_output"] == 0.0


@pytest.mark.parametrize("version, tag", [("8.5.2.2", 8502), ("8.6.1", 8601), ("8.4.1", 8401),
                                          ("10.3.0", 100300), ("10.13.0.35", 101300), ("11.0.0", 110000)])
def test_version_int(version: str, tag: int) -> None:
    assert trt_cache.version_int(version) == tag


def test_round_trip_within_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    amax = {f"/features/features.{i}/Conv_output_0": float(v) for i, v in enumerate(rng.uniform(1e-4, 300, 200))}
    amax["name: with colon"] = 3.25
    path = trt_cache.write_cache(tmp_path / "calib.cache", amax, "8.5.2", algorithm="MinMaxCalibration")
    cache = trt_cache.read_cache(path)
    assert cache.version == 8502 and cache.algorithm == "MinMaxCalibration"
    assert list(cache.scales) == list(amax)
    got = np.array([cache.amax(k) for k in amax])
    want = np.array(list(amax.values()))
    # Two float32 roundings (amax and amax/127), then x127 in double: relative error < 2^-22.
    np.testing.assert_allclose(got, want, rtol=2.0 ** -22, atol=0)
    assert cache.amax("name: with colon") == pytest.approx(3.25, rel=2.0 ** -22)


def test_rejects_bad_ranges_and_names() -> None:
    for bad in (float("nan"), float("inf"), -1.0, 1e39):
        with pytest.raises(ConfigError, match="amax"):
            trt_cache.format_cache({"t": bad}, "8.6.1")
    with pytest.raises(ConfigError, match="multi-line"):
        trt_cache.format_cache({"a\nb": 1.0}, "8.6.1")
    with pytest.raises(ConfigError, match="empty"):
        trt_cache.format_cache({}, "8.6.1")
    with pytest.raises(ConfigError, match="algorithm"):
        trt_cache.format_cache({"t": 1.0}, "8.6.1", algorithm="Percentile")


def test_rejects_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="header"):
        trt_cache.parse_cache("not a cache\nx: 3c010204\n")
    with pytest.raises(DataError, match="line 3"):
        trt_cache.parse_cache("TRT-8601-EntropyCalibration2\nx: 3c010204\ny 3c010204\n")
    with pytest.raises(DataError, match="line 2"):
        trt_cache.parse_cache("TRT-8601-EntropyCalibration2\nx: 3c0102045\n")  # 9 hex digits
    with pytest.raises(DataError, match="empty"):
        trt_cache.parse_cache("\n\n")
    with pytest.raises(DataError, match="not found"):
        trt_cache.read_cache(tmp_path / "none.cache")
    with pytest.raises(ConfigError, match="no tensor"):
        trt_cache.parse_cache("TRT-8601-EntropyCalibration2\nx: 3c010204\n").amax("y")


def test_from_calibration_table_amax(tmp_path: Path) -> None:
    """The writer takes any Mapping of amax, e.g. built from the calibration table."""
    from uopsl.calibration.table import CalibrationTable

    table = CalibrationTable(ranges={"image": (0.0, 255.0), "relu": (-0.5, 6.0)}, method="minmax",
                             model_sha256="0" * 64, set_fingerprint="f" * 64, num_images=4)
    amax = {n: table.amax(n) for n in table.tensor_names}
    cache = trt_cache.parse_cache(trt_cache.format_cache(amax, "8.6.1"))
    assert cache.amax("image") == pytest.approx(255.0, rel=2.0 ** -22)
    assert cache.scales["relu"] == pytest.approx(table.scale("relu"), rel=2.0 ** -23)
