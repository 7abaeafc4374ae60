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


@pytest.mark.parametrize("key, value", [("input_shape", ["a", 64, 3]), ("input_shape", "64x64"),
                                        ("dla_core", True), ("max_batch", True), ("min_batch", "1"),
                                        ("dla_core", -1), ("min_batch", 0), ("precision", "INT8"),
                                        ("precision", "bf16"), ("precision", None), ("int8_mode", "calibrator"),
                                        ("int8_mode", None)])
def test_malformed_header_fields_say_rebuild(key: str, value: object) -> None:
    """Not a raw ValueError, and not a bool read as an integer (``"dla_core": true`` is not DLA core 1)."""
    d = _header().to_dict()
    d[key] = value
    with pytest.raises(BundleError, match=rf"x\.engine: engine header is malformed .*({key}|batch sizes).*rebuild "
                                          "the engine"):
        eh.EngineHeader.from_dict(d, source="x.engine")


def test_bad_precision_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="precision"):
        eh.write_engine(tmp_path / "x.engine", PLAN, _header(precision="int4"))


def test_a_header_a_reader_would_refuse_is_not_written(tmp_path: Path) -> None:
    """The writer checks what the reader checks, before writing: an unknown INT8 route or batch order leaves no
    engine file behind (not one that every later load refuses)."""
    for bad in (dict(int8_mode="calibrator"), dict(min_batch=4, opt_batch=2)):
        path = tmp_path / "bad.engine"
        with pytest.raises(BundleError, match="malformed"):
            eh.write_engine(path, PLAN, _header(**bad))
        assert not path.exists()


def test_every_precision_and_int8_route_a_build_writes_reads_back(tmp_path: Path) -> None:
    """The read checks accept every value ``uopsl build-engine`` writes (the routes ``export.tensorrt`` resolves)."""
    for precision, route in [("fp32", ""), ("fp16", ""), ("int8", "qdq"), ("int8", "legacy-calibrator"),
                             ("int8", "legacy-cache")]:
        path = tmp_path / f"{precision}-{route or 'float'}.engine"
        eh.write_engine(path, PLAN, _header(precision=precision, int8_mode=route))
        h = eh.read_header(path)
        assert (h.precision, h.int8_mode) == (precision, route)


@pytest.mark.parametrize("running, note", [("9.2.0", False), ("10.0.1", False), ("10.1.0", True), ("10.3.0", True)])
def test_q_dq_preference_is_noted_only_where_implicit_int8_is_deprecated(running: str, note: bool) -> None:
    """NVIDIA deprecated the calibrator APIs in 10.1; 9.x and 10.0 build implicit INT8 without a deprecation,
    so a rebuild there replays the legacy route with no advice to leave it (11.x has no such route at all)."""
    cmd = eh.rebuild_command(_header(), running_trt_version=running)
    assert "--int8-mode legacy-cache" in cmd.split("#")[0]
    assert ("prefers the Q/DQ model" in cmd) is note


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
        ("10.3.1", "10.3.0", True, False),  # ... not even an older patch release
        ("10.3.0", "10.3.1", True, True),
        ("8.6.2", "10.3.0", True, True),  # ... and the two cross-major pairs NVIDIA supports: 8 -> 10 (JetPack 6.1)
        ("10.3.0", "11.0.0", True, True),  # ... and 10 -> 11
        ("8.6.1", "11.0.0", True, False),  # ... but no other: 8 -> 11
        ("8.6.1", "9.2.0", True, False),  # ... nor 8 -> 9 (not in the support matrix's list)
        ("11.0.0", "10.3.0", True, False),
        ("8.5.2.2", "10.3.0", True, False),  # version compatibility starts with 8.6
        ("8.5.2.2", "8.5.3", True, False),
        ("8.6.1", "10.3.0", False, False),  # without the flag: exact version only
        ("10.0.0b6", "10.0.0", False, True),
    ],
)
def test_version_rule(built: str, running: str, compat: bool, ok: bool) -> None:
    assert (eh.version_mismatch(built, running, compat) is None) is ok


def test_version_compatible_messages_name_the_rule() -> None:
    why = eh.version_mismatch("8.6.1", "11.0.0", True)
    assert why is not None and "across majors only for 8.x -> 10.x, 10.x -> 11.x" in why and "8.x -> 11.x is not" in why
    why = eh.version_mismatch("8.5.2", "8.5.3", True)
    assert why is not None and "built with TensorRT 8.6 or later" in why and "8.5.2 built it" in why
    h = _header(tensorrt_version="8.6.2", version_compatible=True, int8_mode="qdq")
    eh.check_compatible(h, "10.3.0", "Orin", "8.7")  # JetPack 6.0 -> 6.1 with a version-compatible engine
    with pytest.raises(EngineMismatchError, match="compute capability 8.7.*compute capability 8.9"):
        eh.check_compatible(h, "10.3.0", "RTX 4090", "8.9")  # version compatibility never covers another GPU


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
    assert any("NVIDIA does not support moving an engine between GPU models" in r.getMessage()
               and "rebuild it on this device" in r.getMessage() for r in caplog.records)


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
    # an 8.x header from before build options were recorded: the same working command, plus the 10.x hint
    assert msg.endswith(expected + "  # TensorRT 10.3.0 prefers the Q/DQ model for INT8 (implicit INT8 is deprecated "
                        "since 10.1): leave out --int8-mode legacy-cache and the --calib options to build from it")
    assert eh.rebuild_command(h, path) == expected  # without the running version: exactly as before
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


FULL = eh.BuildOptions(gpu_fallback=False, strongly_typed=False, fp16_fallback=True, opt_level=4,
                       calib_source="images", calib_images="/data/cal set", calib_cache="/data/calib.cache",
                       calib_batch=4, calib_max_images=256, device=1)


def test_build_options_round_trip_and_old_headers(tmp_path: Path) -> None:
    path = tmp_path / "e.engine"
    eh.write_engine(path, PLAN, _header(extra={"build_seconds": 3.0, eh.BUILD_OPTIONS_KEY: FULL.to_dict()}))
    h = eh.read_header(path)
    assert h.build_options == FULL and h.extra["build_seconds"] == 3.0
    eh.write_engine(path, PLAN, _header(extra={"build_seconds": 3.0}))  # written before options were recorded
    assert eh.read_header(path).build_options is None
    blob = json.dumps({k: v for k, v in _header().to_dict().items() if k != "extra"}).encode()  # no extra at all
    path.write_bytes(struct.pack("<8sII", b"UOPSLENG", 1, len(blob)) + blob + PLAN)
    old = eh.read_header(path)
    assert old.extra == {} and old.build_options is None
    assert eh.rebuild_command(old) == ("uopsl build-engine BUNDLE --precision int8 --min-batch 1 --opt-batch 4 "
                                       "--max-batch 8 --workspace 512 --int8-mode legacy-cache --out ENGINE")


def test_rebuild_command_replays_every_recorded_option() -> None:
    h = _header(tensorrt_version="8.6.1", int8_mode="legacy-calibrator", dla_core=0, min_batch=2, opt_batch=2,
                max_batch=2, version_compatible=True, extra={eh.BUILD_OPTIONS_KEY: FULL.to_dict()})
    assert eh.rebuild_command(h, running_trt_version="8.6.2") == (
        "uopsl build-engine BUNDLE --precision int8 --min-batch 2 --opt-batch 2 --max-batch 2 --workspace 512 "
        "--int8-mode legacy-calibrator --calib-images '/data/cal set' --calib-max-images 256 "
        "--calib-cache /data/calib.cache --calib-batch 4 --dla-core 0 --no-gpu-fallback --no-strongly-typed "
        "--fp16-fallback --opt-level 4 --version-compatible --device 1 --out ENGINE")
    cache = eh.BuildOptions(calib_source="cache", calib_cache="/c/x.cache", calib_batch=8, strongly_typed=True)
    h = _header(tensorrt_version="10.3.0", extra={eh.BUILD_OPTIONS_KEY: cache.to_dict()})
    assert eh.rebuild_command(h, running_trt_version="10.4.0") == (
        "uopsl build-engine BUNDLE --precision int8 --min-batch 1 --opt-batch 4 --max-batch 8 --workspace 512 "
        "--int8-mode legacy-cache --calib-cache /c/x.cache --calib-batch 8 --strongly-typed --out ENGINE")
    table = eh.BuildOptions(calib_source="table", calib_batch=8)  # calibration.json is read from the bundle
    h = _header(extra={eh.BUILD_OPTIONS_KEY: table.to_dict()})
    assert "--int8-mode legacy-cache --calib-batch 8 --out" in eh.rebuild_command(h)
    tf32 = _header(precision="fp32", int8_mode="", extra={eh.BUILD_OPTIONS_KEY: {"tf32": True}})
    assert eh.rebuild_command(tf32).endswith("--out ENGINE  # built with tf32=True through the Python API "
                                             "(EngineBuildConfig); the CLI has no option for it, so this command "
                                             "builds with TF32 off")


def test_rebuild_command_leaves_out_what_the_new_tensorrt_refuses() -> None:
    h = _header(tensorrt_version="10.3.0", int8_mode="legacy-cache",
                extra={eh.BUILD_OPTIONS_KEY: eh.BuildOptions(strongly_typed=False, calib_source="cache",
                                                             calib_cache="/c/x.cache", calib_batch=8).to_dict()})
    cmd = eh.rebuild_command(h, running_trt_version="11.0.0")
    command, comment = cmd.split("  # ")
    assert command == ("uopsl build-engine BUNDLE --precision int8 --min-batch 1 --opt-batch 4 --max-batch 8 "
                       "--workspace 512 --out ENGINE")
    assert comment == (
        "built with --int8-mode legacy-cache under TensorRT 10.3.0; TensorRT 11.0.0 has no implicit INT8, so this "
        "builds from the bundle's Q/DQ model (run 'uopsl quantize BUNDLE --variant trt --images CALIBRATION_IMAGES' "
        "first if it has none); built with --no-strongly-typed; TensorRT 11.0.0 builds every network strongly "
        "typed, so it is left out")
    # Q/DQ on DLA rebuilt under 8.x: DLA there needs implicit INT8, so the route is left to build-engine
    h = _header(tensorrt_version="10.3.0", int8_mode="qdq", dla_core=0, min_batch=1, opt_batch=1, max_batch=1)
    cmd = eh.rebuild_command(h, running_trt_version="8.6.2")
    assert "--int8-mode" not in cmd.split("#")[0] and "runs no Q/DQ model" in cmd and "--dla-core 0" in cmd
    # a legacy-calibrator header without the images: a placeholder and a comment, not a command that fails silently
    h = _header(int8_mode="legacy-calibrator")
    cmd = eh.rebuild_command(h)
    assert "--int8-mode legacy-calibrator --calib-images CALIBRATION_IMAGES --out ENGINE  # the calibration images " \
           "are not recorded" in cmd


def test_rebuild_command_for_an_old_dynamic_dla_engine() -> None:
    h = _header(precision="fp16", int8_mode="", dla_core=0, min_batch=1, opt_batch=8, max_batch=16)
    command, comment = eh.rebuild_command(h).split("  # ")
    assert command == "uopsl build-engine BUNDLE --precision fp16 --workspace 512 --dla-core 0 --out ENGINE"
    assert comment.startswith("the old engine had batch 1-16 on DLA core 0, which DLA cannot run (no dynamic shapes: "
                              "its layers fell back to the GPU); with --dla-core and no batch options the batch is "
                              "fixed at 1")
    # run as printed, build-engine then builds the fixed batch of 1 (tests/test_tensorrt.py checks that build)
    assert "--min-batch" not in command and "--max-batch" not in command


def test_malformed_build_options_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    bad = {"gpu_fallback": "no", "opt_level": 9, "calib_source": "magic", "fp16_fallback": True, "calib_batch": True,
           "device": -1, "unknown_future_option": 1}
    h = _header(precision="fp16", int8_mode="", extra={eh.BUILD_OPTIONS_KEY: bad})
    opts = h.build_options
    assert opts == eh.BuildOptions(fp16_fallback=True)
    warned = sorted(r.getMessage().split(" build option ")[1].split("=")[0] for r in caplog.records)
    assert warned == ["calib_batch", "calib_source", "device", "gpu_fallback", "opt_level"]
    assert eh.rebuild_command(h).endswith("--fp16-fallback --out ENGINE")
    assert _header(extra={eh.BUILD_OPTIONS_KEY: "junk"}).build_options is None
    assert eh.rebuild_command(_header(extra=["not", "a", "dict"])).endswith("--int8-mode legacy-cache --out ENGINE")


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


def test_rebuild_command_leaves_out_what_the_running_tensorrt_cannot_build() -> None:
    """Third-read findings: FP16 on 11.x, strong typing before 10, opt level and version compatibility before 8.6."""
    fp16 = _header(precision="fp16", int8_mode="")
    cmd = eh.rebuild_command(fp16, running_trt_version="11.0.0")
    assert "--precision fp32" in cmd and "--precision fp16" not in cmd and "no FP16 builder flag" in cmd
    assert "--precision fp16" in eh.rebuild_command(fp16, running_trt_version="10.3.0")
    opts = eh.BuildOptions(strongly_typed=True, opt_level=3).to_dict()
    h = _header(precision="fp16", int8_mode="", version_compatible=True, extra={eh.BUILD_OPTIONS_KEY: opts})
    on_10 = eh.rebuild_command(h, running_trt_version="10.3.0")
    assert "--strongly-typed" in on_10 and "--opt-level 3" in on_10 and "--version-compatible" in on_10
    on_86 = eh.rebuild_command(h, running_trt_version="8.6.2")
    assert "--strongly-typed" not in on_86.split("#")[0] and "no strongly typed networks" in on_86
    assert "--opt-level 3" in on_86 and "--version-compatible" in on_86.split("#")[0]
    on_85 = eh.rebuild_command(h, running_trt_version="8.5.2")
    head = on_85.split("#")[0]
    assert "--opt-level" not in head and "--version-compatible" not in head
    assert "no builder optimisation level" in on_85 and "cannot build such engines" in on_85


def test_rebuild_command_targets_the_gpu_the_engine_is_opened_on() -> None:
    h = _header(precision="fp16", int8_mode="")
    assert "--device" not in eh.rebuild_command(h)
    assert "--device 1 " in eh.rebuild_command(h, device=1) + " "


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a": 1, "a": 2}'])
def test_hostile_header_json_is_a_bundle_error(tmp_path: Path, body: bytes) -> None:
    # Runaway nesting raised RecursionError past every handler; duplicate keys let a reader see another value.
    path = tmp_path / "h.engine"
    path.write_bytes(struct.pack("<8sII", b"UOPSLENG", 1, len(body)) + body + PLAN)
    with pytest.raises(BundleError, match="h.engine: engine header is not valid JSON"):
        eh.read_header(path)


def test_platform_recorded_and_checked() -> None:
    """Engines do not move between operating systems or CPU architectures (NVIDIA's support matrix): a header
    that records where it was built is refused elsewhere, before TensorRT's own bare deserialisation error."""
    assert eh.this_platform().count("-") >= 1 and eh.this_platform().split("-")[0]
    h = _header(tensorrt_version="10.3.0", platform="Linux-aarch64")
    eh.check_compatible(h, "10.3.0", "Orin", "8.7", running_platform="Linux-aarch64")
    with pytest.raises(EngineMismatchError, match=r"built on Linux-aarch64, this is Windows-AMD64; engines are not "
                                                  r"portable .*Rebuild it on this device: uopsl build-engine"):
        eh.check_compatible(h, "10.3.0", "Orin", "8.7", running_platform="Windows-AMD64")
    with pytest.raises(EngineMismatchError, match="built on Linux-aarch64, this is Linux-x86_64"):
        eh.check_compatible(h, "10.3.0", "Orin", "8.7", running_platform="Linux-x86_64")
    # A header from before the field existed reads back with platform "" and is not checked for it.
    old = {k: v for k, v in h.to_dict().items() if k != "platform"}
    back = eh.EngineHeader.from_dict(old)
    assert back.platform == ""
    eh.check_compatible(back, "10.3.0", "Orin", "8.7", running_platform="Windows-AMD64")
    # What is written is what is read.
    assert eh.EngineHeader.from_dict(h.to_dict()).platform == "Linux-aarch64"
