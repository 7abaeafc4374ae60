"""Mutation audit (session 40) of the TensorRT-facing code that runs without TensorRT or a GPU.

Audited: ``runtime/engine_header.py`` (the version rule, the recorded build options, the rebuild command and
:func:`check_compatible`) and ``runtime/trt_compat.py`` (what :func:`api_for` decides about a TensorRT module,
the shared logger's error log, the ONNX parser's error lines, the CUDA-binding adapters over cuda-python and
pycuda). The session 36 audit (tests/test_mutation_audit_calib_trt_s36.py) already pins the header's format
check, the opt-batch bound, ``read_plan``'s manifest hash, 10.1's deprecation and the opset ceiling; this file
pins what single-point bugs slipped past every test that exercises these modules (the mutant ids are those of
the audit's list). No TensorRT, CUDA binding or GPU: the TensorRT module is tests/test_tensorrt.py's fake, the
bindings are small stand-ins written here, and every expected value is worked out by hand in the test from
NVIDIA's rules as the module docstrings cite them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import test_tensorrt as tt
from uopsl.runtime import engine_header as eh
from uopsl.runtime.errors import BundleError, EngineMismatchError


def _header(**kw: object) -> eh.EngineHeader:
    base = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="fp16",
                source_onnx="model.onnx", source_onnx_sha256="ab" * 32, min_batch=1, opt_batch=4, max_batch=8)
    base.update(kw)
    return eh.EngineHeader(**base)  # type: ignore[arg-type]


# -- engine header: recorded build options -----------------------------------------------------------------------
def test_build_options_keep_every_value_the_cli_accepts_and_drop_the_ones_it_refuses(
        caplog: pytest.LogCaptureFixture) -> None:
    """E04, E05, E06: the bounds of the recorded options are the CLI's: ``--opt-level`` 0..5 (TensorRT's builder
    optimisation levels), ``--calib-batch`` >= 1, ``--device`` a plain integer >= 0. Level 5 read as damaged
    dropped ``--opt-level 5`` from the rebuild command (another engine); a calib batch of 0 replayed a command
    that fails; ``"device": true`` read as GPU 1 sent the rebuild to another GPU."""
    for level in (0, 5):
        assert eh.BuildOptions.from_extra({eh.BUILD_OPTIONS_KEY: {"opt_level": level}}).opt_level == level
        h = _header(extra={eh.BUILD_OPTIONS_KEY: {"opt_level": level}})
        assert f"--opt-level {level} --out ENGINE" in eh.rebuild_command(h, running_trt_version="10.3.0")
    for ok in ({"calib_batch": 1}, {"calib_max_images": 1}, {"device": 0}, {"device": 2}):
        assert eh.BuildOptions.from_extra({eh.BUILD_OPTIONS_KEY: ok}) == eh.BuildOptions(**ok)  # type: ignore[arg-type]
    assert not caplog.records
    bad = {"opt_level": 6, "calib_batch": 0, "calib_max_images": 0, "device": True}
    assert eh.BuildOptions.from_extra({eh.BUILD_OPTIONS_KEY: bad}) == eh.BuildOptions()
    warned = sorted(r.getMessage().split(" build option ")[1].split("=")[0] for r in caplog.records)
    assert warned == sorted(bad)
    # "device": true is left out, so the command targets the default GPU 0 (no --device), never GPU 1.
    assert "--device" not in eh.rebuild_command(_header(extra={eh.BUILD_OPTIONS_KEY: {"device": True}}))


# -- engine header: the version rule ---------------------------------------------------------------------------
def test_a_version_is_at_least_major_and_minor_and_a_suffix_ends_it() -> None:
    """E16, E17: parse_version documents "at most four numeric parts" read up to a pre-release suffix ("0b6"
    ends the numeric part), and needs at least major.minor. "10" alone is no TensorRT version (read as (10,), the
    exact rule would take it for 10.0.0); a number after the suffix is not a build number."""
    assert eh.parse_version("10.0.0b6.7") == (10, 0, 0)
    assert eh.parse_version("8.6.1rc2.4") == (8, 6, 1)
    assert eh.parse_version("10.13.0.35") == (10, 13, 0, 35)
    for text in ("10", "11", ""):
        with pytest.raises(BundleError, match="cannot read the TensorRT version"):
            eh.parse_version(text)


def test_a_missing_patch_number_reads_as_zero() -> None:
    """E23: the exact-version rule compares major.minor.patch with a missing part read as 0, so a version text of
    "10.3" is TensorRT 10.3.0 and an engine built under it runs under 10.3.0 (and not under 10.3.1)."""
    assert eh.version_mismatch("10.3", "10.3.0") is None
    assert eh.version_mismatch("10.3.0", "10.3") is None
    assert eh.version_mismatch("10.3", "10.3.1") is not None


# -- engine header: the rebuild command ------------------------------------------------------------------------
def test_a_qdq_dla_engine_rebuilt_under_10_keeps_its_qdq_route() -> None:
    """R06: only TensorRT 8.x's DLA runs no Q/DQ model (the 8.x rebuild leaves the route to build-engine). An
    engine built from the Q/DQ model on DLA under 10.3 and rebuilt under 10.x replays ``--int8-mode qdq``,
    with no comment. Expected command by hand from the header's fields."""
    h = _header(precision="int8", int8_mode="qdq", dla_core=0, min_batch=1, opt_batch=1, max_batch=1)
    assert eh.rebuild_command(h, running_trt_version="10.4.0") == (
        "uopsl build-engine BUNDLE --precision int8 --min-batch 1 --opt-batch 1 --max-batch 1 --int8-mode qdq "
        "--dla-core 0 --out ENGINE")


def test_an_engine_built_on_gpu_1_and_opened_on_gpu_0_is_rebuilt_for_gpu_0() -> None:
    """R13: ``device`` is the GPU the engine is meant to run on; only None falls back to the GPU it was built on.
    Given 0, the command must not carry the recorded ``--device 1`` (check_compatible passes the device it
    checked, 0 by default), or the rebuilt engine is built on the other GPU again."""
    h = _header(extra={eh.BUILD_OPTIONS_KEY: eh.BuildOptions(device=1).to_dict()})
    assert eh.rebuild_command(h, device=0).endswith("--max-batch 8 --out ENGINE")
    assert eh.rebuild_command(h).endswith("--device 1 --out ENGINE")
    with pytest.raises(EngineMismatchError) as info:
        eh.check_compatible(h, "10.3.0", "RTX 4090", "8.9", running_platform="Linux-x86_64")
    assert "--device" not in str(info.value)


def test_the_bundle_is_named_only_when_the_engines_folder_holds_a_manifest(tmp_path: Path) -> None:
    """R15: ``uopsl build-engine`` takes a bundle folder; an engine lying in a folder without manifest.json (a
    copy in /tmp, say) gets the placeholder BUNDLE, not that folder, which build-engine would refuse."""
    loose = tmp_path / "copies" / "model.fp16.engine"
    loose.parent.mkdir()
    assert eh.rebuild_command(_header(), loose).startswith("uopsl build-engine BUNDLE --precision fp16")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert eh.rebuild_command(_header(), bundle / "model.fp16.engine").startswith(
        f"uopsl build-engine {bundle} --precision fp16")


# -- engine header: check_compatible -----------------------------------------------------------------------------
class _TwoGpus:
    """A CUDA binding stand-in on a machine with two GPUs: 0 is an Orin (8.7), 1 an RTX 4090 (8.9)."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def device_properties(self, device: int = 0) -> tuple[str, str]:
        self.asked.append(device)
        return {0: ("Orin", "8.7"), 1: ("NVIDIA GeForce RTX 4090", "8.9")}[device]


def _probing(monkeypatch: pytest.MonkeyPatch) -> _TwoGpus:
    from uopsl.runtime import cuda_binding

    cuda = _TwoGpus()
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: cuda)
    return cuda


def test_the_gpu_checked_is_the_one_the_engine_will_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """C05, C06: check_compatible(device=1) asks the CUDA binding about GPU 1 (not 0), and its rebuild command
    names ``--device 1``. An Orin (8.7) engine matches GPU 0 and not GPU 1 (8.9)."""
    cuda = _probing(monkeypatch)
    h = _header()
    eh.check_compatible(h, "10.3.0", device=0, running_platform="Linux-aarch64")
    with pytest.raises(EngineMismatchError) as info:
        eh.check_compatible(h, "10.3.0", device=1, running_platform="Linux-aarch64")
    assert cuda.asked == [0, 1]
    msg = str(info.value)
    assert "this is NVIDIA GeForce RTX 4090 (compute capability 8.9)" in msg
    assert msg.endswith("--max-batch 8 --device 1 --out ENGINE")


def test_a_given_compute_capability_is_not_replaced_by_the_probed_one(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """C07: arguments the caller gives are used; only the ones left as None are probed. Given compute capability
    8.7 with the name left to the probe (GPU 0: an Orin), an 8.7 engine passes, also when the probe would have
    said 8.9 (GPU 1): the given 8.7 decides, and the other board's name gets the warning, not a refusal."""
    cuda = _probing(monkeypatch)
    eh.check_compatible(_header(), "10.3.0", None, "8.7", device=1, running_platform="Linux-aarch64")
    assert cuda.asked == [1]
    assert any("same compute capability 8.7" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


# -- trt_compat: what api_for decides --------------------------------------------------------------------------
def test_tensorrt_9_uses_tensor_names_and_11_is_known() -> None:
    """T02, T04, T09: "uses tensor names from 9.x on, where bindings are deprecated" (module docstring): 9.x gets the
    tensor-name I/O and the 10.x family. The "newer than this toolkit knows" note is for majors above 11 only;
    11.x is supported and must not log it at every load."""
    from uopsl.runtime import trt_compat

    a9 = trt_compat.api_for(tt.fake_trt("9.2.0"))
    assert (a9.io_api, a9.family) == ("tensors", "10")
    assert trt_compat.api_for(tt.fake_trt("8.6.1")).io_api == "bindings"
    assert trt_compat.api_for(tt.fake_trt("11.0.0")).notes == ()
    assert trt_compat.api_for(tt.fake_trt("11.9.0")).notes == ()
    assert len(trt_compat.api_for(tt.fake_trt("12.0.0")).notes) == 1


def test_tensorrt_11_never_uses_weak_precision_flags_even_where_the_enum_keeps_them() -> None:
    """T03, T08: 11.x removed BuilderFlag.FP16/INT8 and implicit INT8 (module docstring table); the rule is by
    version, so an 11.x whose enum still lists the names (a deprecated leftover) gets neither the weak precision
    flags nor the calibrators."""
    from uopsl.runtime import trt_compat

    t11 = tt.fake_trt("11.0.0")
    t11.BuilderFlag = tt._enum("BuilderFlag", {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 3, "TF32": 6,
                                                "VERSION_COMPATIBLE": 18})
    t11.IInt8EntropyCalibrator2 = tt.fake_trt("10.3.0").IInt8EntropyCalibrator2
    a11 = trt_compat.api_for(t11)
    assert not a11.weak_precision_flags and not a11.implicit_int8 and a11.always_strongly_typed


# -- trt_compat: builder helpers -----------------------------------------------------------------------------
def _parser_error(desc: str, node: int, **more: str) -> Any:
    """TensorRT 8.x's ParserError: desc() and node() only (node -1: "not tied to a node"); ``more`` adds
    10.x's getters (node_name, node_operator) returning the values given."""
    return SimpleNamespace(desc=lambda: desc, node=lambda: node, **{k: (lambda v=v: v) for k, v in more.items()})


class _Parser:
    def __init__(self, *errors: Any) -> None:
        self.errors = errors
        self.num_errors = len(errors)

    def get_error(self, i: int) -> Any:
        return self.errors[i]


def test_a_parser_error_tied_to_no_node_names_no_node() -> None:
    """T19, G27: node -1 is the parser's "no node"; the line is then just the description, not "node -1: ..." or
    "node -1 '' (): ...", which would send the reader looking for a node that does not exist (10.x gives an
    empty name and operator there). Node 0 is a real node and is named."""
    from uopsl.runtime import trt_compat

    no_node_10 = _parser_error("Model has no graph", -1, node_name="", node_operator="")  # 10.x: "" for no node
    lines = trt_compat.parser_errors(_Parser(_parser_error("Failed to parse onnx file", -1),
                                             _parser_error("Unsupported op", 0), no_node_10))
    assert lines == ["Failed to parse onnx file", "node 0: Unsupported op", "Model has no graph"]


def test_a_timing_cache_from_another_gpu_or_version_is_not_used() -> None:
    """T21: the timing cache is attached with ignore_mismatch=False, so TensorRT rejects a cache written by
    another GPU or TensorRT version (and the builder says to delete it) instead of timing tactics from it."""
    from uopsl.runtime import trt_compat

    class Config:
        def __init__(self) -> None:
            self.given: list[tuple[bytes, bool]] = []

        def create_timing_cache(self, data: bytes) -> bytes:
            return bytes(data)

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            self.given.append((cache, ignore_mismatch))
            return True

    cfg = Config()
    assert trt_compat.load_timing_cache(cfg, b"cache") == b"cache"
    assert cfg.given == [(b"cache", False)]


# -- trt_compat: engine I/O ----------------------------------------------------------------------------------------
class _BindingsEngine:
    """TensorRT 8.x's engine with the output at binding 0 and the input at binding 1 (binding order is the
    exporter's, not "input first"); get_profile_shape(profile, binding) knows only profile 0's input."""

    num_bindings = 2
    names = ("probs", "image")

    def get_binding_name(self, i: int) -> str:
        return self.names[i]

    def binding_is_input(self, i: int) -> bool:
        return i == 1

    def get_binding_dtype(self, i: int) -> object:
        return "DataType.FLOAT"

    def get_binding_shape(self, i: int) -> tuple[int, ...]:
        return (-1, 3) if i == 0 else (-1, 8, 8, 3)

    def get_profile_shape(self, profile: int, binding: int) -> list[tuple[int, ...]]:
        if (profile, binding) != (0, 1):
            raise IndexError(f"no profile {profile} for binding {binding}")
        return [(1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3)]


def test_an_8x_engine_reads_profile_0_of_its_input_binding() -> None:
    """T27: TensorRT 8's ``get_profile_shape(profile_index, binding)``: the profile is 0 and the binding is the
    input's index (1 here). With the arguments swapped an engine whose input is not binding 0 asks for profile
    1 and cannot be opened."""
    from uopsl.runtime import trt_compat

    trt = tt.fake_trt("8.6.1")
    trt.nptype = lambda dt: (_ for _ in ()).throw(TypeError("fallback by name"))  # "DataType.FLOAT" -> float32
    io = trt_compat.engine_io(trt, trt_compat.api_for(trt), _BindingsEngine())
    probs, image = io.tensors()
    assert (probs.name, probs.is_input, probs.profile) == ("probs", False, None)
    assert (image.name, image.index, image.is_input) == ("image", 1, True)
    assert image.profile == ((1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3))


# -- trt_compat: the cuda-python adapter -------------------------------------------------------------------------
class _Cudart:
    """cuda-python's runtime calling convention, recording what it was asked: every call returns (err, value...)."""

    class cudaMemcpyKind:  # noqa: N801 - the binding's spelling
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.copies: list[tuple[int, int, int, int, object]] = []
        self.mallocs: list[int] = []
        self.err: object = 0

    def cudaGetErrorString(self, err: object) -> tuple[int, bytes]:  # noqa: N802
        return 0, b"out of memory"

    def cudaMalloc(self, n: int) -> tuple[object, int]:  # noqa: N802
        self.mallocs.append(n)
        return self.err, 0xD000

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: object) -> tuple[int]:  # noqa: N802
        self.copies.append((dst, src, n, kind, stream))
        return (0,)


def test_a_device_to_host_copy_goes_from_the_device_pointer_into_the_host_array() -> None:
    """T38: cudaMemcpyAsync(dst, src, count, kind, stream): for D2H the destination is the host array's address
    and the source the device pointer. Swapped, the results would be copied the wrong way (host garbage written
    over the engine's output, the returned array never filled)."""
    import numpy as np

    from uopsl.runtime import cuda_binding

    rt = _Cudart()
    host = np.zeros(6, np.float32)
    cuda_binding.CudaPythonApi(rt).dtoh_async(host, 0xD000, 42)
    assert rt.copies == [(host.ctypes.data, 0xD000, 24, 2, 42)]  # 6 float32 = 24 bytes, DeviceToHost = 2


def test_a_zero_byte_allocation_asks_cuda_for_one_byte() -> None:
    """T35: cudaMalloc(0) gives a null pointer, which TensorRT refuses as a tensor address; the adapter asks for at
    least one byte (an empty output of a batch still needs a valid address)."""
    from uopsl.runtime import cuda_binding

    rt = _Cudart()
    api = cuda_binding.CudaPythonApi(rt)
    assert api.malloc(0) == 0xD000 and api.malloc(5) == 0xD000
    assert rt.mallocs == [1, 5]


def test_an_error_code_without_int_conversion_is_read_from_its_value() -> None:
    """T39: cuda-bindings' own fast enums may not convert with int(); their ``.value`` is the code. Read as 0
    (success), a failed cudaMalloc would hand back a garbage pointer instead of raising."""
    from uopsl.runtime import cuda_binding, trt_compat

    class FastEnum:
        name = "cudaErrorMemoryAllocation"
        value = 2

    assert cuda_binding._error_code(FastEnum()) == 2
    rt = _Cudart()
    rt.err = FastEnum()
    with pytest.raises(trt_compat.BackendError, match=r"cudaMalloc failed \(cudaErrorMemoryAllocation, 2\)"):
        cuda_binding.CudaPythonApi(rt).malloc(8)


def test_cuda_version_numbers_read_as_major_minor() -> None:
    """T28, T29: CUDA's version integer is 1000 * major + 10 * minor (12020 is 12.2, 11040 is 11.4); 0 is what
    cudaDriverGetVersion reports with no driver installed, which must read "none", not "0.0"."""
    from uopsl.runtime import cuda_binding

    assert [cuda_binding._cuda_version_text(v) for v in (12020, 11040, 13000, 0, "x")] == [
        "12.2", "11.4", "13.0", "none", "unknown"]


# -- trt_compat: the pycuda adapter ---------------------------------------------------------------------------------
class _PycudaError(Exception):
    pass


class _TwoDeviceDriver:
    """``pycuda.driver`` on a two-GPU machine: one context stack for this thread; each allocation records which
    device's context was current when it was made."""

    Error = _PycudaError

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.allocs: list[int | None] = []
        self.freed: list[int] = []
        drv = self

        class Context:
            @staticmethod
            def pop() -> None:
                drv.stack.pop()

        self.Context = Context

    def init(self) -> None:
        pass

    def Device(self, n: int) -> object:  # noqa: N802 - pycuda's spelling
        drv = self

        class Ctx:
            def push(self) -> None:
                drv.stack.append(n)

        class Dev:
            def retain_primary_context(self) -> Ctx:
                return Ctx()

        return Dev()

    def mem_alloc(self, n: int) -> object:
        drv = self
        ptr = 0x1000 * (len(self.allocs) + 1)
        self.allocs.append(self.stack[-1] if self.stack else None)

        class Allocation:
            def __int__(self) -> int:
                return ptr

            def free(self) -> None:
                if ptr in drv.freed:
                    raise _PycudaError("cuMemFree failed: invalid argument (freed twice)")
                drv.freed.append(ptr)

        return Allocation()


def test_pycuda_makes_the_other_devices_context_current_inside_a_nested_block() -> None:
    """T40, T49: inside ``current(0)``, a ``current(1)`` block must push device 1's primary context: reusing the
    one already pushed (device 0's) puts device 1's engine buffers on GPU 0. Back in the outer block, a call
    goes to the block's device 0 again, not to the device last made current (1)."""
    from uopsl.runtime import cuda_binding

    drv = _TwoDeviceDriver()
    api = cuda_binding.PycudaApi(drv)
    with api.current(0):
        api.malloc(8)
        with api.current(1):
            api.malloc(8)
            assert drv.stack == [0, 1]
        api.malloc(8)
    assert drv.allocs == [0, 1, 0] and drv.stack == []


def test_pycuda_frees_an_allocation_once() -> None:
    """T42: ``free`` forgets the allocation it frees, so a second free of the same pointer (a close after a
    failed load, say) does nothing instead of freeing the memory twice."""
    from uopsl.runtime import cuda_binding

    drv = _TwoDeviceDriver()
    api = cuda_binding.PycudaApi(drv)
    ptr = api.malloc(8)
    api.free(ptr)
    api.free(ptr)
    assert drv.freed == [ptr] and drv.stack == []


def test_pycuda_deactivate_undoes_the_latest_activate_first() -> None:
    """T43: activate/deactivate nest like a stack: the first deactivate pops what the latest activate pushed
    (device 1), the second the earlier one, and nothing stays pushed (pycuda aborts at exit on a non-empty
    context stack)."""
    from uopsl.runtime import cuda_binding

    drv = _TwoDeviceDriver()
    api = cuda_binding.PycudaApi(drv)
    api.activate(0)
    api.activate(1)
    assert drv.stack == [0, 1]
    api.deactivate()
    assert drv.stack == [0]
    api.malloc(8)  # runs in device 0's context again
    api.deactivate()
    assert drv.stack == [] and drv.allocs == [0]


def test_pycuda_event_time_is_end_since_start() -> None:
    """T46: pycuda's ``Event.time_since(event)``: "Use this method as end.time_since(start)". An event recorded
    at 2.0 ms and one at 7.5 ms are 5.5 ms apart, a positive duration (swapped: -5.5 ms in every timing)."""
    from uopsl.runtime import cuda_binding

    class Event:
        def __init__(self, t: float) -> None:
            self.t = t

        def time_since(self, other: Event) -> float:
            return self.t - other.t

    api = cuda_binding.PycudaApi(_TwoDeviceDriver())
    assert api.event_elapsed_ms(Event(2.0), Event(7.5)) == 5.5


def test_the_binding_version_is_the_nearest_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """T45: the version a driver-mismatch message names is that of the module actually imported, or else of its
    nearest parent package: cuda.bindings 13.0.3 for cuda.bindings.runtime, not a stale ``cuda`` namespace's."""
    import sys
    import types

    from uopsl.runtime import cuda_binding

    for name, version in (("cuda", "12.0.0"), ("cuda.bindings", "13.0.3"), ("cuda.bindings.runtime", None)):
        mod = types.ModuleType(name)
        if version:
            mod.__version__ = version  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, mod)
    assert cuda_binding._package_version("cuda.bindings.runtime", "cuda-bindings") == "13.0.3"


def test_pycuda_calls_outside_a_block_go_to_the_device_last_made_current() -> None:
    """T50: a call outside any ``current`` block (a backend closing from another thread) pushes the context of
    the device the adapter was last made current for (GPU 1 here), not device 0's."""
    from uopsl.runtime import cuda_binding

    drv = _TwoDeviceDriver()
    api = cuda_binding.PycudaApi(drv)
    with api.current(1):
        api.malloc(8)
    api.malloc(8)
    assert drv.allocs == [1, 1] and drv.stack == []


def test_out_of_memory_advice_comes_from_the_error_name_alone() -> None:
    """T51: where CUDA's description is missing (cudaGetErrorString failed), the error's name still decides the
    advice: cudaErrorMemoryAllocation (and the driver API's CUDA_ERROR_OUT_OF_MEMORY) say to free GPU memory or
    lower --max-batch, not the generic "check the GPU and its driver"."""
    from uopsl.runtime import cuda_binding, trt_compat

    class NoText(_Cudart):
        def cudaGetErrorString(self, err: object) -> tuple[int, bytes]:  # noqa: N802
            raise RuntimeError("no description")

    class Err:
        name = "cudaErrorMemoryAllocation"
        value = 2

    rt = NoText()
    rt.err = Err()
    with pytest.raises(trt_compat.BackendError) as info:
        cuda_binding.CudaPythonApi(rt).malloc(8)
    assert "no description; free GPU memory" in str(info.value) and "smaller --max-batch" in str(info.value)
    assert cuda_binding._advice("CUDA_ERROR_OUT_OF_MEMORY").startswith("free GPU memory")


def test_no_binding_names_why_the_preferred_one_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """T53: when no CUDA binding imports, the message quotes why the first one tried (cuda-python's current
    layout) failed: an installed cuda-python that cannot load its library says so, rather than the last
    fallback's plain "no module named pycuda"."""
    from uopsl.runtime import cuda_binding
    from uopsl.runtime.errors import MissingDependencyError

    why = {"cuda.bindings.runtime": OSError("libcudart.so.13: cannot open shared object file"),
           "cuda.cudart": ModuleNotFoundError("No module named 'cuda.cudart'"),
           "pycuda.driver": ModuleNotFoundError("No module named 'pycuda'")}

    def require(name: str, purpose: str) -> object:
        raise MissingDependencyError(f"{purpose} needs {name}") from why[name]

    monkeypatch.setattr(cuda_binding, "require", require)
    with pytest.raises(MissingDependencyError) as info:
        cuda_binding.load_cuda("running a TensorRT engine")
    assert "(OSError: libcudart.so.13: cannot open shared object file)" in str(info.value)
    assert "No module named 'pycuda'" not in str(info.value)


class _RefusingContext:
    """An execution context whose every call returns False, as TensorRT's do on refusal (no exception)."""

    def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
        return False

    def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
        return False

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return False

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        return False

    def execute_async_v3(self, stream_handle: int) -> bool:
        return False


def test_tensorrt_refusals_reported_by_return_value_are_errors() -> None:
    """G01-G05: TensorRT says no by returning False (set_binding_shape, set_input_shape, set_tensor_address,
    execute_async_v2/v3), not by raising. Each False must become a BackendError; ignored, the batch runs with
    the old shape or addresses (or not at all) and stale output buffers come back as results. The shape error
    names the profile's min and max (not opt): (1, 8, 8, 3) and (4, 8, 8, 3)."""
    import numpy as np

    from uopsl.runtime import trt_compat
    from uopsl.runtime.errors import BackendError

    profile = ((1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3))
    image = trt_compat.IOTensor("image", 1, True, np.dtype("uint8"), (-1, 8, 8, 3), profile)
    ctx = _RefusingContext()
    for io in (trt_compat.BindingsIO(None, None), trt_compat.TensorsIO(None, None)):
        with pytest.raises(BackendError, match=r"rejected input shape \(5, 8, 8, 3\) for 'image' \(engine profile "
                                               r"min \(1, 8, 8, 3\), max \(4, 8, 8, 3\)\)"):
            io.set_input_shape(ctx, image, (5, 8, 8, 3))
    bindings = trt_compat.BindingsIO(None, None)
    bindings._tensors = [image]
    with pytest.raises(BackendError, match="execute_async_v2 failed"):
        bindings.execute(ctx, {"image": 0xD000}, 42)
    with pytest.raises(BackendError, match="refused the device address of 'image'"):
        trt_compat.TensorsIO(None, None).execute(ctx, {"image": 0xD000}, 42)

    class AddressesTaken(_RefusingContext):
        def set_tensor_address(self, name: str, ptr: int) -> bool:
            return True

    with pytest.raises(BackendError, match="execute_async_v3 failed"):
        trt_compat.TensorsIO(None, None).execute(AddressesTaken(), {"image": 0xD000}, 42)


def test_the_mismatch_message_and_warning_start_with_the_engine_path(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """F20: with several engines in a bundle the message must say which one cannot run: it starts with the
    engine's path (the generic "TensorRT engine" only when no path is given), as does the other-board warning."""
    path = tmp_path / "model.fp16.engine"
    with pytest.raises(EngineMismatchError) as info:
        eh.check_compatible(_header(), "10.3.0", "Xavier", "7.2", engine_path=path, running_platform="Linux-aarch64")
    assert str(info.value).startswith(f"{path} (fp16) cannot run here: ")
    eh.check_compatible(_header(), "10.3.0", "Jetson Orin NX", "8.7", engine_path=path,
                        running_platform="Linux-aarch64")
    assert [r.getMessage().split(" was built on ")[0] for r in caplog.records] == [str(path)]
    with pytest.raises(EngineMismatchError, match=r"^TensorRT engine \(fp16\) cannot run here"):
        eh.check_compatible(_header(), "10.3.0", "Xavier", "7.2", running_platform="Linux-aarch64")


def test_a_header_longer_than_the_cap_is_refused_by_read_plan_too(tmp_path: Path) -> None:
    """F01: the JSON length field is capped at MAX_JSON_BYTES (1 MiB) for every reader: read_header only reads
    that far, and read_plan, which has the whole file, must refuse the same file rather than accept a header
    read_header calls corrupt. Laid out by hand: b"UOPSLENG", uint32 1, uint32 N, little-endian."""
    import json
    import struct

    d = _header().to_dict()
    d["extra"] = {"pad": "x" * (1 << 20)}
    blob = json.dumps(d).encode()
    assert len(blob) > eh.MAX_JSON_BYTES
    path = tmp_path / "big.engine"
    path.write_bytes(struct.pack("<8sII", b"UOPSLENG", 1, len(blob)) + blob + b"PLAN")
    for read in (eh.read_header, eh.read_plan):
        with pytest.raises(BundleError, match=f"engine header says {len(blob)} bytes of JSON"):
            read(path)


@pytest.mark.parametrize("code, name", [(34, "cudaErrorStubLibrary"), (35, "cudaErrorInsufficientDriver"),
                                        (36, "cudaErrorCallRequiresNewerDriver"), (100, "cudaErrorNoDevice")])
def test_a_plain_integer_driver_error_is_named_and_gets_the_driver_hint(code: int, name: str) -> None:
    """G13, G20: a binding that returns plain integers (no ``.name``) still gets the error's name from the
    driver_types.h table, and every "cannot use the driver at all" code, the stub library (34, a container
    without the driver mounted) included, says the binding cannot use this machine's driver."""
    from uopsl.runtime import cuda_binding, trt_compat

    rt = _Cudart()
    rt.err = code
    with pytest.raises(trt_compat.BackendError) as info:
        cuda_binding.CudaPythonApi(rt).malloc(8)
    msg = str(info.value)
    assert msg.startswith(f"CUDA cudaMalloc failed ({name}, {code}): ")
    assert "cannot use this machine's driver" in msg and cuda_binding.DRIVER_MISMATCH_HINT in msg


class _TensorsEngine:
    """TensorRT 10's engine with the output first and the input second; get_tensor_profile_shape(name, profile)
    knows only profile 0 of the input."""

    num_io_tensors = 2
    names = ("probs", "image")

    def __init__(self, trt: object) -> None:
        self.trt = trt

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> object:
        modes = self.trt.TensorIOMode  # type: ignore[attr-defined]
        return modes.INPUT if name == "image" else modes.OUTPUT

    def get_tensor_dtype(self, name: str) -> object:
        return self.trt.DataType.UINT8 if name == "image" else self.trt.DataType.FLOAT  # type: ignore[attr-defined]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 8, 8, 3) if name == "image" else (-1, 3)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        if (name, profile) != ("image", 0):
            raise IndexError(f"no profile {profile} for {name}")
        return [(1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3)]


def test_a_10x_engine_reads_profile_0_of_its_input() -> None:
    """G21: ``get_tensor_profile_shape(name, profile_index)`` with profile 0, whatever the input's position
    among the I/O tensors (second here); the tensor's position is not a profile index."""
    import numpy as np

    from uopsl.runtime import trt_compat

    trt = tt.fake_trt("10.3.0")
    io = trt_compat.engine_io(trt, trt_compat.api_for(trt), _TensorsEngine(trt))
    probs, image = io.tensors()
    assert (probs.name, probs.is_input, probs.profile, probs.dtype) == ("probs", False, None, np.float32)
    assert (image.name, image.index, image.is_input, image.dtype) == ("image", 1, True, np.uint8)
    assert image.profile == ((1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3))


def test_a_parser_error_detail_that_fails_does_not_hide_the_error() -> None:
    """G26: a detail the parser cannot give (node_name() raising, as some 10.x bindings do for errors tied to no
    node) is left out; the error's description and node are still listed, not replaced by the detail's
    exception."""
    from uopsl.runtime import trt_compat

    def no_name() -> str:
        raise RuntimeError("no node name")

    detailless = _parser_error("Unsupported mode", 3, node_operator="Resize")
    detailless.node_name = no_name
    lines = trt_compat.parser_errors(_Parser(detailless))
    assert lines == ["node 3 (Resize): Unsupported mode"]


def test_optional_capabilities_follow_the_modules_attributes() -> None:
    """H12, H13: DLA and the TF32 flag are read from the module (DeviceType.DLA, BuilderFlag.TF32), not
    assumed: without them the builder says "offers no DLA device type" up front, or leaves TF32 alone, instead
    of failing on a missing attribute in the middle of a build."""
    from uopsl.runtime import trt_compat

    full = trt_compat.api_for(tt.fake_trt("10.3.0"))
    assert full.dla and full.tf32_flag
    bare = tt.fake_trt("10.3.0")
    bare.DeviceType = tt._enum("DeviceType", {"GPU": 0})
    bare.BuilderFlag = tt._enum("BuilderFlag", {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 3, "VERSION_COMPATIBLE": 18})
    api = trt_compat.api_for(bare)
    assert not api.dla and not api.tf32_flag and api.weak_precision_flags


def test_a_capture_reads_the_errors_of_the_thread_that_opened_it() -> None:
    """H04: ``cap.errors`` are the errors of the thread that opened the capture, wherever they are read: read
    from a worker thread that logged an error of its own, they are still the capturing thread's."""
    import threading

    from uopsl.runtime import trt_compat

    log = trt_compat.TrtErrorLog()
    with log.capture() as cap:
        log.add("engine A: deserialisation failed")
    seen: list[list[str]] = []

    def worker() -> None:
        log.add("engine B: out of memory")
        seen.append(cap.errors)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert seen == [["engine A: deserialisation failed"]]


def test_nptype_falls_back_to_the_name_table_on_a_key_error() -> None:
    """H17: ``trt.nptype`` raises TypeError or KeyError for types it has no numpy entry for (the docstring); a
    KeyError too must fall back to the name table (DataType.INT64 -> int64, DataType.BOOL -> bool), not escape
    as a raw KeyError from opening the engine."""
    import numpy as np

    from uopsl.runtime import trt_compat

    trt = tt.fake_trt("10.3.0")

    def nptype(dt: object) -> type:
        raise KeyError(dt)

    trt.nptype = nptype
    assert trt_compat.nptype(trt, tt.Flag("DataType.INT64")) == np.int64
    assert trt_compat.nptype(trt, tt.Flag("DataType.BOOL")) == np.bool_


def test_loading_a_tensorrt_newer_than_known_warns(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """H18: a TensorRT above 11.x is run with the 11.x rules; load_tensorrt says so at WARNING (the level a
    device maker sees by default), once, and not for a known version."""
    import sys

    from uopsl.runtime import trt_compat

    monkeypatch.setitem(sys.modules, "tensorrt", tt.fake_trt("10.3.0"))
    trt_compat.load_tensorrt("building an engine")
    monkeypatch.setitem(sys.modules, "tensorrt", tt.fake_trt("12.1.0"))
    _, api = trt_compat.load_tensorrt("building an engine")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert api.family == "11" and warned == ["TensorRT 12.1.0 is newer than this toolkit knows "
                                             "(8.5, 8.6, 10.x and 11.x); using the 11.x rules"]
