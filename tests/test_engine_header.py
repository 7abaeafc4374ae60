"""Engine header: write/read round trip, truncation and corruption, the compatibility rule and its messages."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from uopsl.runtime import engine_header as eh
from uopsl.runtime.errors import BundleError, EngineMismatchError

PLAN = bytes(range(256)) * 40  # stands in for a serialized TensorRT plan


def _header(**kw: object) -> eh.EngineHeader:
    base = dict(
        tensorrt_version="8.5.2.2", gpu_name="Orin", compute_capability="8.7", precision="int8",
        source_onnx="model.int8.onnx", source_onnx_sha256="ab" * 32, min_batch=1, opt_batch=4, max_batch=8,
        dla_core=None, int8_mode="legacy-cache", workspace_mib=512, input_name="image", input_shape=(64, 64, 3),
        built_at="2025-01-01T00:00:00+00:00",
    )
    base.update(kw)
    return eh.EngineHeader(**base)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "model.int8.engine"
    written = eh.write_engine(path, PLAN, _header())
    data = path.read_bytes()
    assert data[:8] == b"UOPSLENG"
    fmt, n = struct.unpack_from("<II", data, 8)
    assert fmt == eh.HEADER_FORMAT
    meta = json.loads(data[16:16 + n])
    assert meta["tensorrt_version"] == "8.5.2.2" and meta["compute_capability"] == "8.7"
    assert data[16 + n:] == PLAN  # the plan follows the header unchanged

    h = eh.read_header(path)
    assert h == written
    assert h.plan_size == len(PLAN) and len(h.plan_sha256) == 64
    assert h.input_shape == (64, 64, 3) and h.dla_core is None
    h2, plan = eh.read_plan(path)
    assert plan == PLAN and h2 == h


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "e.engine"
    eh.write_engine(path, PLAN, _header())
    eh.write_engine(path, PLAN[:100], _header(precision="fp16"))
    assert eh.read_header(path).precision == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.engine"]


@pytest.mark.parametrize("cut", [0, 5, 15, 40])
def test_truncated_header_names_the_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.engine"
    eh.write_engine(path, PLAN, _header())
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(BundleError, match="cut.engine"):
        eh.read_header(path)


def test_truncated_plan_and_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.engine"
    eh.write_engine(path, PLAN, _header())
    full = path.read_bytes()
    path.write_bytes(full[:-10])
    eh.read_header(path)  # the header itself is intact
    with pytest.raises(BundleError, match=r"p\.engine.*truncated"):
        eh.read_plan(path)
    flipped = bytearray(full)
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(BundleError, match=r"p\.engine.*sha256"):
        eh.read_plan(path)


def test_not_an_engine_and_bad_json(tmp_path: Path) -> None:
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"ftrt" + PLAN)  # a bare TensorRT plan without our header
    with pytest.raises(BundleError, match="not a uopsl engine file"):
        eh.read_header(bare)
    bad = tmp_path / "bad.engine"
    blob = b"{not json"
    bad.write_bytes(struct.pack("<8sII", b"UOPSLENG", 1, len(blob)) + blob + PLAN)
    with pytest.raises(BundleError, match="bad.engine.*not valid JSON"):
        eh.read_header(bad)
    newer = tmp_path / "newer.engine"
    newer.write_bytes(struct.pack("<8sII", b"UOPSLENG", 99, 2) + b"{}")
    with pytest.raises(BundleError, match="format 99"):
        eh.read_header(newer)
    missing = tmp_path / "missing.engine"
    blob = json.dumps({"tensorrt_version": "10.0.1"}).encode()
    missing.write_bytes(struct.pack("<8sII", b"UOPSLENG", 1, len(blob)) + blob)
    with pytest.raises(BundleError, match="lacks"):
        eh.read_header(missing)
    with pytest.raises(BundleError, match="not found"):
        eh.read_header(tmp_path / "nope.engine")


def test_unknown_keys_from_newer_toolkit_are_ignored(tmp_path: Path) -> None:
    d = _header().to_dict()
    d["future_field"] = 1
    blob = json.dumps(d).encode()
    path = tmp_path / "f.engine"
    path.write_bytes(struct.pack("<8sII", b"UOPSLENG", 1, len(blob)) + blob + PLAN)
    assert eh.read_header(path).tensorrt_version == "8.5.2.2"


def test_bad_precision_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="precision"):
        eh.write_engine(tmp_path / "x.engine", PLAN, _header(precision="int4"))


@pytest.mark.parametrize(
    "built, running, compat, ok",
    [
        ("8.5.2", "8.5.2", False, True),
        ("8.5.2.2", "8.5.2.2", False, True),
        ("8.5.2.2", "8.5.2", False, True),  # build number unknown on one side
        ("8.5.2.2", "8.5.2.1", False, False),
        ("8.6.1", "8.6.2", False, False),
        ("10.3.0", "10.4.0", False, False),
        ("10.3.0", "10.4.0", True, True),  # version compatible: later minor of the same major
        ("10.4.0", "10.3.0", True, False),  # ... never an older runtime
        ("10.3.0", "11.0.0", True, False),  # ... nor another major
        ("10.0.0b6", "10.0.0", False, True),
    ],
)
def test_version_rule(built: str, running: str, compat: bool, ok: bool) -> None:
    assert (eh.version_mismatch(built, running, compat) is None) is ok


def test_parse_version() -> None:
    assert eh.parse_version("8.6.1") == (8, 6, 1)
    assert eh.parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert eh.parse_version("10.0.0b6") == (10, 0, 0)
    with pytest.raises(BundleError):
        eh.parse_version("banana")


def test_compatible_passes_and_warns_on_other_board(caplog: pytest.LogCaptureFixture) -> None:
    h = _header()
    eh.check_compatible(h, "8.5.2.2", "Orin", "8.7")
    assert not caplog.records
    eh.check_compatible(h, "8.5.2.2", "Jetson Orin NX", "8.7")
    assert any("timed on the other GPU" in r.getMessage() for r in caplog.records)


def test_mismatch_message_says_built_running_and_rebuild(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    path = bundle / "model.int8.engine"
    h = eh.write_engine(path, PLAN, _header())
    with pytest.raises(EngineMismatchError) as exc:
        eh.check_compatible(h, "10.3.0", "NVIDIA GeForce RTX 4090", "8.9", engine_path=path)
    msg = str(exc.value)
    assert "TensorRT 8.5.2.2 built it, TensorRT 10.3.0 is running" in msg
    assert "built on Orin (compute capability 8.7)" in msg and "NVIDIA GeForce RTX 4090 (compute capability 8.9)" in msg
    expected = (f"uopsl build-engine {bundle} --precision int8 --min-batch 1 --opt-batch 4 --max-batch 8 "
                "--workspace 512 --int8-mode legacy-cache --out model.int8.engine")
    assert msg.endswith(expected)
    assert isinstance(exc.value, BundleError)  # EngineMismatchError is a BundleError: exit code 2 in the CLIs


def test_only_gpu_mismatch_and_dla_in_command() -> None:
    h = _header(precision="fp16", int8_mode="", dla_core=1, tensorrt_version="10.3.0", workspace_mib=0)
    with pytest.raises(EngineMismatchError) as exc:
        eh.check_compatible(h, "10.3.0", "Xavier", "7.2")
    msg = str(exc.value)
    assert "built it" not in msg  # the TensorRT version matches; only the GPU is named
    assert "built on Orin (compute capability 8.7), this is Xavier (compute capability 7.2)" in msg
    assert "--dla-core 1" in msg and "uopsl build-engine BUNDLE --precision fp16" in msg
    assert "--int8-mode" not in msg and "--workspace" not in msg


def test_header_is_numpy_free() -> None:
    import subprocess
    import sys

    code = ("import sys; import uopsl.runtime.engine_header; "
            "bad = [m for m in ('numpy', 'tensorrt', 'torch', 'onnx') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_replace_keeps_frozen_dataclass() -> None:
    h = _header()
    assert replace(h, precision="fp32").precision == "fp32"
    with pytest.raises(AttributeError):
        h.precision = "fp16"  # type: ignore[misc]
