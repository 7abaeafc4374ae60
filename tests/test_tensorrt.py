"""TensorRT builder, runtime backend and version dispatch, exercised with FAKE tensorrt modules.

No TensorRT and no GPU are needed: :func:`fake_trt` builds a stand-in
``tensorrt`` module that exposes the attributes TensorRT 8.5, 8.6, 10.x or
11.x has (flags, enums, calibrator classes, bindings vs tensor-name I/O) and
records every call, and :class:`FakeCuda` implements the CUDA binding over
numpy "device memory". The fake engine computes a simple known function of
its input, so the backend's copy/execute/copy path is checked end to end.

What this does NOT prove: that real TensorRT accepts these calls (that needs
the ``trt``/``gpu`` tests at the bottom, skipped here).
"""

from __future__ import annotations

import ctypes
import json
import logging
import platform
import shlex
import struct
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uopsl.calibration.trt_cache import version_int as trt_cache_version_int
from uopsl.runtime import cuda_binding, trt_compat
from uopsl.runtime.engine_header import read_header, read_plan, write_engine
from uopsl.runtime.errors import BackendError, ConfigError, EngineMismatchError, MissingDependencyError

H = W = 8
K = 3
FAKE_ONNX_MAGIC = b"FAKEONNX"


# -- fake TensorRT ---------------------------------------------------------------------------
class Flag:
    def __init__(self, name: str, value: int = 0) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Flag.{self.name}"


def _enum(name: str, members: dict[str, int]) -> type:
    return type(name, (), {k: Flag(k, v) for k, v in members.items()})


class FakeGpu:
    """Device memory shared by the fake CUDA binding and the fake TensorRT engine."""

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.next = 0x1000

    def alloc(self, n: int) -> int:
        ptr = self.next
        self.next += n + 256
        self.mem[ptr] = np.zeros(n, np.uint8)
        return ptr


def fake_onnx(path: Path, *, qdq: bool = False, batch: int = -1, dtype: str = "uint8", bad: bool = False,
              size: int = H, first: str = "CAST") -> Path:
    """``first``: the TensorRT layer type that reads the input (bundles before session 15: SHUFFLE, a transpose)."""
    spec = {"input": "image", "shape": [batch, size, size, 3], "dtype": dtype, "bad": bad, "first": first}
    body = json.dumps(spec).encode() + (b" QuantizeLinear DequantizeLinear" if qdq else b"")
    path.write_bytes(FAKE_ONNX_MAGIC + body)
    return path


def fake_trt(version: str, gpu: FakeGpu | None = None, *, dla_cores: int = 0, build_fails: bool = False) -> Any:
    """A stand-in ``tensorrt`` module with the attributes of ``version``; ``mod.calls`` records what happened."""
    major, minor = (int(x) for x in version.split(".")[:2])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    calls: dict[str, Any] = {"deserialize": [], "networks": [], "configs": [], "calibration": []}
    mod.calls = calls
    gpu = gpu or FakeGpu()
    vint = trt_cache_version_int(version)  # the tag of the caches this TensorRT writes and accepts

    flags = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "TF32": 6}
    if (major, minor) >= (8, 6):
        flags["VERSION_COMPATIBLE"] = 18
    if major >= 11:
        del flags["FP16"], flags["INT8"]
    mod.BuilderFlag = _enum("BuilderFlag", flags)
    ncf = {"EXPLICIT_BATCH": 0}
    if major < 10:
        ncf["EXPLICIT_PRECISION"] = 1
    else:
        ncf["STRONGLY_TYPED"] = 1
    mod.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ncf)
    mod.MemoryPoolType = _enum("MemoryPoolType", {"WORKSPACE": 0})
    mod.DeviceType = _enum("DeviceType", {"GPU": 0, "DLA": 1})
    mod.TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    mod.DataType = _enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "UINT8": 5})
    np_of = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8}
    dt_of = {"uint8": mod.DataType.UINT8, "float32": mod.DataType.FLOAT}
    mod.nptype = lambda dt: np_of[dt.name]
    mod.Dims = lambda shape: tuple(int(d) for d in shape)

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Flag(n, i) for i, n in enumerate(
                ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]))

        def __init__(self) -> None:
            pass

    mod.ILogger = ILogger

    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
            pass

        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        mod.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    mod.LayerType = _enum("LayerType", {"CONVOLUTION": 0, "SHUFFLE": 1, "IDENTITY": 2, "CAST": 3})

    class Layer:
        def __init__(self, out: Tensor, kind: str = "CONVOLUTION", reads: Tensor | None = None) -> None:
            self.num_outputs = 1
            self._out = out
            self.type = getattr(mod.LayerType, kind)
            self.name = f"/{kind.lower()}_0"
            self._in = [reads or Tensor("prev", (-1, 4), mod.DataType.FLOAT)]

        def get_output(self, i: int) -> Tensor:
            return self._out

        @property
        def num_inputs(self) -> int:
            return len(self._in)

        def get_input(self, i: int) -> Tensor:
            return self._in[i]

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.layers = [Layer(Tensor("conv_out", (-1, 4), mod.DataType.FLOAT)),
                           Layer(Tensor("probs", (-1, K), mod.DataType.FLOAT))]

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class ParserError:
        def __init__(self, desc: str, node: int) -> None:
            self._desc, self._node = desc, node

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        if major >= 10:
            def node_name(self) -> str:
                return f"/layer{self._node}/Op"

            def node_operator(self) -> str:
                return "FancyOp"

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            data = Path(path).read_bytes()
            spec = json.loads(data[len(FAKE_ONNX_MAGIC):].split(b" Quantize")[0])
            if spec["bad"]:
                self.errors = [ParserError("No importer registered for op: FancyOp", 7),
                               ParserError("Failed to parse onnx file", -1)]
                return False
            image = Tensor(spec["input"], tuple(spec["shape"]), dt_of[spec["dtype"]])
            self.network.inputs.append(image)
            first = Layer(Tensor("image_f", tuple(spec["shape"]), mod.DataType.FLOAT), spec.get("first", "CAST"), image)
            self.network.layers.insert(0, first)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, Any, Any]] = {}

        def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return b"TIMING:" + str(len(self.data)).encode()

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.cleared: set[str] = set()
            self.pool: dict[str, int] = {}
            self.profiles: list[Profile] = []
            self.calibration_profile: Profile | None = None
            self.timing: TimingCache | None = None
            self.default_device_type = mod.DeviceType.GPU
            self.DLA_core = -1
            self.builder_optimization_level = 3
            if major < 11:
                self.int8_calibrator = None

        def set_flag(self, f: Flag) -> None:
            self.flags.add(f.name)

        def clear_flag(self, f: Flag) -> None:
            self.cleared.add(f.name)

        def set_memory_pool_limit(self, pool: Flag, n: int) -> None:
            self.pool[pool.name] = n

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def set_calibration_profile(self, p: Profile) -> bool:
            self.calibration_profile = p
            return True

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data == b"OTHER-GPU":
                return False
            self.timing = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self.timing is not None
            return self.timing

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self.num_DLA_cores = dla_cores

        def create_network(self, flags: int = 0) -> Network:
            net = Network(flags)
            calls["networks"].append(net)
            return net

        def create_builder_config(self) -> Config:
            cfg = Config()
            calls["configs"].append(cfg)
            return cfg

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> Any:
            if build_fails:
                self.logger.log(ILogger.Severity.ERROR, "out of memory while timing tactics")
                return None
            cal = getattr(config, "int8_calibrator", None)
            if cal is not None:  # what TensorRT does with an implicit-INT8 calibrator
                cache = cal.read_calibration_cache()
                calls["calibration"].append(("cache", cache))
                algo = "MinMaxCalibration" if isinstance(cal, mod.IInt8MinMaxCalibrator) else "EntropyCalibration2"
                if cache is not None and bytes(cache).split(b"\n")[0].decode() != f"TRT-{vint}-{algo}":
                    # Reported on Jetson (TensorRT 10 given an 8.6 cache): refused, then no data to calibrate.
                    self.logger.log(ILogger.Severity.ERROR, "Calibration table does not match calibrator "
                                    "algorithm type")
                    return None
                if cache is None:
                    # pyInt8.cpp: an exception in a callback is printed and read as "no more batches".
                    def swallowed(fn: Any, *args: Any) -> Any:
                        try:
                            return fn(*args)
                        except Exception as exc:  # noqa: BLE001 - what TensorRT's wrapper does
                            calls["calibration"].append(("swallowed", repr(exc)))
                            return None

                    while (ptrs := swallowed(cal.get_batch, ["image"])) is not None:
                        calls["calibration"].append(("batch", ptrs))
                    swallowed(cal.write_calibration_cache,
                              f"TRT-{major}-EntropyCalibration2\nimage: 3c010204\n".encode())
            (mn, opt, mx) = config.profiles[0].shapes[network.inputs[0].name]
            plan = {"version": version, "min": mn[0], "opt": opt[0], "max": mx[0], "sample": list(mn[1:]),
                    "dtype": network.inputs[0].dtype.name}
            return memoryview(b"FAKEPLAN" + json.dumps(plan).encode())

    mod.Builder = Builder
    mod.OnnxParser = OnnxParser

    # -- runtime side --------------------------------------------------------------------
    def outputs_for(n: int) -> dict[str, tuple[int, ...]]:
        return {"probs": (n, K), "logits": (n, K), "site_maps": (n, K, 2, 2)}

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.batch = -1
            self.addresses: dict[str, int] = {}
            self.executions = 0

        def _set(self, shape: tuple[int, ...]) -> bool:
            e = self.engine
            if not e.plan["min"] <= shape[0] <= e.plan["max"] or list(shape[1:]) != e.plan["sample"]:
                return False
            self.batch = shape[0]
            return True

        def _shape(self, name: str) -> tuple[int, ...]:
            if name == "image":
                return (self.batch, *self.engine.plan["sample"])
            return outputs_for(self.batch)[name]

        def _run(self) -> bool:
            n = self.batch
            e = self.engine
            in_dtype = np.dtype(e.plan["dtype"].lower().replace("float", "float32"))
            sample = tuple(e.plan["sample"])
            x = gpu.mem[self.addresses["image"]][: n * int(np.prod(sample)) * in_dtype.itemsize].view(in_dtype)
            x = x.reshape(n, *sample).astype(np.float32)
            mean = x.mean(axis=(1, 2, 3)) / 255.0  # the fake model: probs[:, k] = mean brightness * (k + 1) / K
            probs = (mean[:, None] * (np.arange(K) + 1) / K).astype(np.float32)
            outs = {"probs": probs, "logits": (probs * 10).astype(np.float32),
                    "site_maps": np.broadcast_to(probs[:, :, None, None], (n, K, 2, 2)).astype(np.float32)}
            for name, arr in outs.items():
                raw = np.ascontiguousarray(arr).view(np.uint8).ravel()
                gpu.mem[self.addresses[name]][: raw.size] = raw
            self.executions += 1
            return True

        if major < 9:  # 8.x bindings API
            def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
                return self._set(tuple(shape))

            def get_binding_shape(self, index: int) -> tuple[int, ...]:
                return self._shape(e_names[index])

            def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
                self.addresses = dict(zip(e_names, bindings))
                calls["execute"] = ("v2", stream_handle)
                return self._run()
        else:
            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                return self._set(tuple(shape))

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self._shape(name)

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream_handle: int) -> bool:
                calls["execute"] = ("v3", stream_handle)
                return self._run()

    e_names = ["image", "probs", "logits", "site_maps"]

    class Engine:
        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan

        def create_execution_context(self) -> Context:
            return Context(self)

        def _dtype(self, name: str) -> Flag:
            return getattr(mod.DataType, self.plan["dtype"]) if name == "image" else mod.DataType.FLOAT

        def _shape(self, name: str) -> tuple[int, ...]:
            return (-1, *self.plan["sample"]) if name == "image" else (-1, *outputs_for(1)[name][1:])

        def _profile(self) -> list[tuple[int, ...]]:
            s = self.plan["sample"]
            return [(self.plan[k], *s) for k in ("min", "opt", "max")]

        if major < 9:
            num_bindings = 4

            def get_binding_name(self, i: int) -> str:
                return e_names[i]

            def binding_is_input(self, i: int) -> bool:
                return i == 0

            def get_binding_dtype(self, i: int) -> Flag:
                return self._dtype(e_names[i])

            def get_binding_shape(self, i: int) -> tuple[int, ...]:
                return self._shape(e_names[i])

            def get_profile_shape(self, profile: int, i: int) -> list[tuple[int, ...]]:
                return self._profile()
        else:
            num_io_tensors = 4

            def get_tensor_name(self, i: int) -> str:
                return e_names[i]

            def get_tensor_mode(self, name: str) -> Flag:
                return mod.TensorIOMode.INPUT if name == "image" else mod.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name: str) -> Flag:
                return self._dtype(name)

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self._shape(name)

            def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
                return self._profile()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self.engine_host_code_allowed = False
            self.DLA_core = -1
            self.num_DLA_cores = dla_cores
            calls["runtime"] = self

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            calls["deserialize"].append(len(plan))
            meta = json.loads(bytes(plan)[8:])
            if meta["version"] != version:
                self.logger.log(ILogger.Severity.ERROR, "Serialization assertion: version tag mismatch")
                return None
            return Engine(meta)

    mod.Runtime = Runtime
    return mod


class FakeCuda(cuda_binding.CudaApi):
    """The CUDA binding over numpy 'device memory'; events return fixed times."""

    name = "fake-cuda"

    def __init__(self, gpu: FakeGpu, gpu_name: str = "Orin", cc: str = "8.7") -> None:
        self.gpu, self.gpu_name, self.cc = gpu, gpu_name, cc
        self.host: list[int] = []
        self.streams = 0
        self.active = 0

    def device_properties(self, device: int = 0) -> tuple[str, str]:
        return self.gpu_name, self.cc

    def activate(self, device: int = 0) -> None:
        self.active += 1

    def deactivate(self) -> None:
        self.active -= 1

    def malloc(self, nbytes: int) -> int:
        return self.gpu.alloc(nbytes)

    def free(self, ptr: int) -> None:
        del self.gpu.mem[ptr]

    def host_alloc(self, nbytes: int) -> cuda_binding.PinnedBuffer:
        self.host.append(nbytes)
        return cuda_binding.PinnedBuffer(np.zeros(nbytes, np.uint8), nbytes)

    def host_free(self, buf: cuda_binding.PinnedBuffer) -> None:
        self.host.remove(buf.handle)

    def stream_create(self) -> Any:
        self.streams += 1
        return object()

    def stream_destroy(self, stream: Any) -> None:
        self.streams -= 1

    def stream_handle(self, stream: Any) -> int:
        return 77

    def stream_synchronize(self, stream: Any) -> None:
        pass

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.gpu.mem[dst][: raw.size] = raw

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        flat = dst.reshape(-1).view(np.uint8)
        flat[:] = self.gpu.mem[src][: flat.size]

    def event_create(self) -> Any:
        return [0.0]

    def event_record(self, event: Any, stream: Any) -> None:
        event[0] += 1

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return 1.5

    def event_destroy(self, event: Any) -> None:
        pass


VERSIONS = ("8.5.2.2", "8.6.1", "10.3.0", "11.0.0")


@pytest.fixture()
def gpu() -> FakeGpu:
    return FakeGpu()


def install(monkeypatch: pytest.MonkeyPatch, version: str, gpu: FakeGpu, **kw: Any) -> Any:
    mod = fake_trt(version, gpu, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


# -- version dispatch -------------------------------------------------------------------------
def test_api_for_each_version() -> None:
    a85, a86, a10, a11 = (trt_compat.api_for(fake_trt(v)) for v in VERSIONS)
    assert (a85.family, a86.family, a10.family, a11.family) == ("8", "8", "10", "11")
    assert a85.io_api == a86.io_api == "bindings" and a10.io_api == a11.io_api == "tensors"
    assert a85.explicit_batch_flag and a86.explicit_batch_flag and not a10.explicit_batch_flag
    assert not a85.strongly_typed_flag and a10.strongly_typed_flag and a11.always_strongly_typed
    assert a85.weak_precision_flags and a10.weak_precision_flags and not a11.weak_precision_flags
    assert a85.implicit_int8 and a10.implicit_int8 and not a11.implicit_int8
    assert not a85.implicit_int8_deprecated and a10.implicit_int8_deprecated
    assert not trt_compat.api_for(fake_trt("10.0.1")).implicit_int8_deprecated  # "Deprecated in TensorRT 10.1"
    assert not a85.builder_optimization_level and a86.builder_optimization_level
    assert not a85.version_compatible_flag and a86.version_compatible_flag and a11.version_compatible_flag
    assert a85.version == (8, 5, 2, 2)


def test_api_for_refuses_old_and_warns_new() -> None:
    with pytest.raises(ConfigError, match="older than 8.5"):
        trt_compat.api_for(fake_trt("8.4.3"))
    no_version = types.ModuleType("tensorrt")
    with pytest.raises(BackendError, match="__version__"):
        trt_compat.api_for(no_version)
    future = trt_compat.api_for(fake_trt("12.1.0"))
    assert future.family == "11" and future.notes


def test_network_flags_per_version() -> None:
    t85, t10, t11 = fake_trt("8.5.2"), fake_trt("10.3.0"), fake_trt("11.0.0")
    assert trt_compat.network_flags(t85, trt_compat.api_for(t85), False) == 1  # EXPLICIT_BATCH
    assert trt_compat.network_flags(t10, trt_compat.api_for(t10), False) == 0  # explicit batch is implied
    assert trt_compat.network_flags(t10, trt_compat.api_for(t10), True) == 2  # STRONGLY_TYPED
    assert trt_compat.network_flags(t11, trt_compat.api_for(t11), True) == 2
    with pytest.raises(ConfigError, match="TensorRT 10"):
        trt_compat.network_flags(t85, trt_compat.api_for(t85), True)
    # 11.x deprecated the flag ("deprecated and ignored": every network is strongly typed); one that drops it builds.
    t11_later = fake_trt("11.9.0")
    t11_later.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
    assert trt_compat.network_flags(t11_later, trt_compat.api_for(t11_later), True) == 0


def test_workspace_pool_api_and_legacy_attribute() -> None:
    t = fake_trt("8.6.1")
    api = trt_compat.api_for(t)
    cfg = t.Builder(None).create_builder_config()
    trt_compat.set_workspace(t, api, cfg, 256 << 20)
    assert cfg.pool == {"WORKSPACE": 256 << 20}
    del t.MemoryPoolType  # a TensorRT before 8.4 only had max_workspace_size
    old = trt_compat.api_for(t)
    trt_compat.set_workspace(t, old, cfg, 64 << 20)
    assert cfg.max_workspace_size == 64 << 20


def test_nptype_fallback_by_name() -> None:
    t = fake_trt("10.3.0")
    assert trt_compat.nptype(t, t.DataType.UINT8) == np.uint8
    t.nptype = lambda dt: (_ for _ in ()).throw(TypeError("no numpy type"))
    assert trt_compat.nptype(t, Flag("DataType.HALF")) == np.float16
    with pytest.raises(BackendError, match="numpy"):
        trt_compat.nptype(t, Flag("DataType.FP8"))


def test_logger_forwards_and_keeps_errors(caplog: pytest.LogCaptureFixture) -> None:
    t = fake_trt("10.3.0")
    logger = trt_compat.make_logger(t)
    sev = t.ILogger.Severity
    logger.log(sev.ERROR, "bad thing")
    logger.log(sev.WARNING, "careful")
    logger.log(sev.VERBOSE, "chatter")
    assert logger.errors == ["bad thing"]
    assert isinstance(logger, t.ILogger)
    assert any("careful" in r.getMessage() for r in caplog.records)


# -- cuda-python adapter over a fake cudart ---------------------------------------------------
class FakeCudart:
    """cuda-python's calling convention: every call returns (err, value...)."""

    class cudaMemcpyKind:  # noqa: N801 - the binding's spelling
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.keep: list[Any] = []
        self.copies: list[tuple[int, int, int, int]] = []
        self.fail_malloc = False

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:  # noqa: N802
        return 0, types.SimpleNamespace(name=b"Orin\x00\x00junk", major=8, minor=7)

    def cudaMalloc(self, n: int) -> tuple[int, int | None]:  # noqa: N802
        return (2, None) if self.fail_malloc else (0, 0xD000)

    def cudaMallocHost(self, n: int) -> tuple[int, int]:  # noqa: N802
        buf = (ctypes.c_uint8 * n)()
        self.keep.append(buf)
        return 0, ctypes.addressof(buf)

    def cudaGetErrorString(self, err: int) -> tuple[int, bytes]:  # noqa: N802
        return 0, b"out of memory"

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: Any) -> tuple[int]:  # noqa: N802
        self.copies.append((dst, src, n, kind))
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, 42

    def cudaEventElapsedTime(self, a: Any, b: Any) -> tuple[int, float]:  # noqa: N802
        return 0, 0.25


def test_cuda_python_adapter_unpacks_tuples_and_reports_errors() -> None:
    rt = FakeCudart()
    cuda = cuda_binding.CudaPythonApi(rt)
    assert cuda.device_properties(0) == ("Orin", "8.7")
    assert cuda.malloc(100) == 0xD000
    buf = cuda.host_alloc(64)
    buf.array[:] = 7
    assert buf.view(np.float32, (4, 4)).shape == (4, 4)
    assert bytes((ctypes.c_uint8 * 64).from_address(buf.handle))[:2] == b"\x07\x07"  # a view of the pinned memory
    stream = cuda.stream_create()
    assert cuda.stream_handle(stream) == 42
    cuda.htod_async(0xD000, buf.array[:16], stream)
    assert rt.copies[-1] == (0xD000, buf.handle, 16, 1)
    assert cuda.event_elapsed_ms(None, None) == 0.25
    rt.fail_malloc = True
    with pytest.raises(BackendError, match=r"cudaMalloc failed \(2\): out of memory"):
        cuda.malloc(100)


def test_load_cuda_missing_names_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match="cuda-python") as exc:
        cuda_binding.load_cuda("running a TensorRT engine")
    assert "\n" not in str(exc.value)


# -- build planning (pure) -------------------------------------------------------------------
from uopsl.export.tensorrt import (  # noqa: E402 - grouped with the tests that use them
    EngineBuildConfig,
    LegacyCalibration,
    build_engine,
    onnx_has_qdq,
    plan_build,
)


def api(version: str) -> trt_compat.TrtApi:
    return trt_compat.api_for(fake_trt(version))


@pytest.mark.parametrize("kw, match", [
    (dict(min_batch=4, opt_batch=2), "min <= opt <= max"),
    (dict(max_batch=0), "max_batch"),
    (dict(workspace_mib=0), "workspace_mib"),
    (dict(precision="int4"), "precision"),
    (dict(dla_core=-1), "dla_core"),
    (dict(dla_core=0), r"dla_core 0 with a dynamic batch \(min 1, opt 8, max 16\): TensorRT's DLA does not support "
                       r"dynamic dimensions.*min_batch = opt_batch = max_batch"),
    (dict(dla_core=1, min_batch=4, opt_batch=4, max_batch=8), "DLA in name only"),
    (dict(precision="fp16", int8_mode="qdq"), "int8 only"),
    (dict(precision="fp16", strongly_typed=True), "strongly typed"),
    (dict(precision="int8", int8_mode="legacy-cache", strongly_typed=True), "cannot be strongly typed"),
    (dict(builder_optimization_level=6), "0-5"),
    (dict(int8_mode="magic"), "int8_mode"),
])
def test_config_validation(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EngineBuildConfig(**kw)


def test_plan_fp16_and_fp32() -> None:
    p = plan_build(api("8.5.2"), EngineBuildConfig(precision="fp16"), onnx_qdq=False)
    assert p.set_flags == ("FP16",) and not p.strongly_typed and p.clear_flags == () and p.int8_mode == ""
    p = plan_build(api("10.3.0"), EngineBuildConfig(precision="fp32"), onnx_qdq=False)
    assert p.set_flags == () and p.clear_flags == ("TF32",)
    with pytest.raises(ConfigError, match="no FP16 builder flag"):
        plan_build(api("11.0.0"), EngineBuildConfig(precision="fp16"), onnx_qdq=False)
    assert plan_build(api("11.0.0"), EngineBuildConfig(precision="fp32"), onnx_qdq=False).strongly_typed


def test_plan_int8_routes_per_version() -> None:
    cfg = EngineBuildConfig(precision="int8")
    cal_cache = LegacyCalibration(amax={"image": 255.0})
    cal_imgs = LegacyCalibration(batches=[np.zeros((8, H, W, 3), np.uint8)])
    # 8.x: Q/DQ is weakly typed with the INT8 flag; float ONNX + data -> legacy routes.
    p = plan_build(api("8.6.1"), cfg, onnx_qdq=True)
    assert (p.int8_mode, p.strongly_typed, p.set_flags) == ("qdq", False, ("INT8",))
    assert plan_build(api("8.5.2"), cfg, onnx_qdq=False, calibration=cal_cache).int8_mode == "legacy-cache"
    assert plan_build(api("8.5.2"), cfg, onnx_qdq=False, calibration=cal_imgs).int8_mode == "legacy-calibrator"
    with pytest.raises(ConfigError, match="needs calibration data"):
        plan_build(api("8.5.2"), cfg, onnx_qdq=False)
    # 10.x: Q/DQ strongly typed by default (no precision flags), weakly typed on request (+FP16 fallback).
    p = plan_build(api("10.3.0"), cfg, onnx_qdq=True)
    assert (p.int8_mode, p.strongly_typed, p.set_flags) == ("qdq", True, ())
    p = plan_build(api("10.3.0"), EngineBuildConfig(precision="int8", strongly_typed=False, fp16_fallback=True),
                   onnx_qdq=True)
    assert (p.strongly_typed, p.set_flags) == (False, ("INT8", "FP16"))
    p = plan_build(api("10.3.0"), EngineBuildConfig(precision="int8", int8_mode="legacy-cache"), onnx_qdq=False,
                   calibration=cal_cache)
    assert p.int8_mode == "legacy-cache" and p.set_flags == ("INT8",) and "deprecated" in p.warnings[0]
    # 11.x: only Q/DQ; implicit INT8 is an error that says so.
    assert plan_build(api("11.0.0"), cfg, onnx_qdq=True).strongly_typed
    for mode in ("legacy-calibrator", "legacy-cache"):
        with pytest.raises(ConfigError, match="no implicit INT8 calibration.*removed in TensorRT 11"):
            plan_build(api("11.0.0"), EngineBuildConfig(precision="int8", int8_mode=mode), onnx_qdq=False,  # type: ignore[arg-type]
                       calibration=cal_cache)
    with pytest.raises(ConfigError, match="no implicit INT8"):
        plan_build(api("11.0.0"), cfg, onnx_qdq=False, calibration=cal_cache)
    with pytest.raises(ConfigError, match="always|every network strongly typed"):
        plan_build(api("11.0.0"), EngineBuildConfig(precision="int8", strongly_typed=False), onnx_qdq=True)


def test_plan_int8_mismatched_inputs() -> None:
    with pytest.raises(ConfigError, match="has none"):
        plan_build(api("10.3.0"), EngineBuildConfig(precision="int8", int8_mode="qdq"), onnx_qdq=False)
    with pytest.raises(ConfigError, match="already holds Q/DQ"):
        plan_build(api("8.6.1"), EngineBuildConfig(precision="int8", int8_mode="legacy-cache"), onnx_qdq=True,
                   calibration=LegacyCalibration(amax={"x": 1.0}))
    with pytest.raises(ConfigError, match="calibration images"):
        plan_build(api("8.6.1"), EngineBuildConfig(precision="int8", int8_mode="legacy-calibrator"), onnx_qdq=False,
                   calibration=LegacyCalibration(amax={"x": 1.0}))
    with pytest.raises(ConfigError, match="TensorRT 10 or later"):
        plan_build(api("8.6.1"), EngineBuildConfig(precision="int8", strongly_typed=True), onnx_qdq=True)
    # int8_mode auto resolving to implicit calibration: strongly typed, TensorRT would set no INT8 flag and
    # build an FP32 engine labelled INT8 (the config check alone sees only "auto").
    for calibration in (LegacyCalibration(amax={"x": 1.0}),
                        LegacyCalibration(batches=[np.zeros((8, H, W, 3), np.uint8)])):
        with pytest.raises(ConfigError, match=r"implicit calibration \(legacy-.*cannot be strongly typed.*FP32 engine"):
            plan_build(api("10.3.0"), EngineBuildConfig(precision="int8", strongly_typed=True), onnx_qdq=False,
                       calibration=calibration)


DLA1 = dict(min_batch=1, opt_batch=1, max_batch=1)  # DLA needs one fixed batch


def test_plan_dla_version_compat_opt_level() -> None:
    p = plan_build(api("8.5.2"), EngineBuildConfig(precision="fp16", dla_core=0, **DLA1), onnx_qdq=False)
    assert p.set_flags == ("FP16", "GPU_FALLBACK") and p.warnings == ()
    p = plan_build(api("8.5.2"), EngineBuildConfig(precision="fp16", dla_core=1, gpu_fallback=False, min_batch=4,
                                                   opt_batch=4, max_batch=4), onnx_qdq=False)
    assert p.set_flags == ("FP16",) and p.warnings == ()
    with pytest.raises(ConfigError, match="8.6 or later"):
        plan_build(api("8.5.2"), EngineBuildConfig(version_compatible=True), onnx_qdq=False)
    assert "VERSION_COMPATIBLE" in plan_build(api("8.6.1"), EngineBuildConfig(version_compatible=True),
                                              onnx_qdq=False).set_flags
    with pytest.raises(ConfigError, match="builder_optimization_level needs TensorRT 8.6"):
        plan_build(api("8.5.2"), EngineBuildConfig(builder_optimization_level=5), onnx_qdq=False)


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_plan_fp32_on_dla_is_refused_where_precision_flags_exist(version: str) -> None:
    with pytest.raises(ConfigError, match="DLA runs FP16 and INT8 only"):
        plan_build(api(version), EngineBuildConfig(precision="fp32", dla_core=0, **DLA1), onnx_qdq=False)


def test_plan_fp32_on_dla_under_11_is_refused_and_int8_is_the_dla_route() -> None:
    """TensorRT 11 has no FP16 flag (the ONNX's types decide) and the bundle's ONNX is FP32: an fp32 build with
    --dla-core ran wholly on the GPU under a DLA name, and its warning suggested an FP16 ONNX that build-engine
    had no way to take (a review, session 28)."""
    with pytest.raises(ConfigError, match=r"would run wholly on the GPU.*--precision int8 from the Q/DQ model"):
        plan_build(api("11.4.0"), EngineBuildConfig(precision="fp32", dla_core=0, **DLA1), onnx_qdq=False)
    p = plan_build(api("11.4.0"), EngineBuildConfig(precision="int8", dla_core=0, **DLA1), onnx_qdq=True)
    assert p.strongly_typed and p.set_flags == ("GPU_FALLBACK",)
    with pytest.raises(ConfigError, match="uopsl writes no FP16 ONNX"):
        plan_build(api("11.4.0"), EngineBuildConfig(precision="fp16"), onnx_qdq=False)


def test_plan_dla_int8_on_8x_refuses_qdq_and_takes_the_cache_route() -> None:
    """DLA under TensorRT 8.x runs no Q/DQ model: the legacy cache route is used, Q/DQ is a ConfigError."""
    cal = LegacyCalibration(amax={"image": 255.0})
    for version in ("8.5.2", "8.6.1"):
        with pytest.raises(ConfigError, match=rf"DLA under TensorRT {version} does not support explicit "
                                              r"quantization \(Q/DQ\).*--int8-mode legacy-cache"):
            plan_build(api(version), EngineBuildConfig(precision="int8", dla_core=0, **DLA1), onnx_qdq=True)
        p = plan_build(api(version), EngineBuildConfig(precision="int8", dla_core=0, **DLA1), onnx_qdq=False,
                       calibration=cal)
        assert (p.int8_mode, p.set_flags) == ("legacy-cache", ("INT8", "GPU_FALLBACK"))
    p = plan_build(api("10.3.0"), EngineBuildConfig(precision="int8", dla_core=0, **DLA1), onnx_qdq=True)
    assert (p.int8_mode, p.strongly_typed, p.set_flags) == ("qdq", True, ("GPU_FALLBACK",))
    # Strongly typed, the Q/DQ model's float layers stay FP32, which DLA does not run: the plan says so.
    dla_warning, = p.warnings
    assert "stay FP32, which DLA does not run, so they run on the GPU" in dla_warning
    assert "--no-strongly-typed --fp16-fallback" in dla_warning
    p = plan_build(api("10.3.0"), EngineBuildConfig(precision="int8", dla_core=0, strongly_typed=False,
                                                    fp16_fallback=True, **DLA1), onnx_qdq=True)
    assert (p.strongly_typed, p.set_flags, p.warnings) == (False, ("INT8", "FP16", "GPU_FALLBACK"), ())
    p = plan_build(api("11.0.0"), EngineBuildConfig(precision="int8", dla_core=0, **DLA1), onnx_qdq=True)
    assert not any("DLA does not run" in w for w in p.warnings)  # 11.x: no FP16 flag to offer instead


def _deprecations(p: Any) -> list[str]:
    return [w for w in p.warnings if "deprecated since TensorRT 10.12" in w]


def test_plan_warns_once_about_weak_precision_flags_from_10_12() -> None:
    assert _deprecations(plan_build(api("10.11.0"), EngineBuildConfig(precision="fp16"), onnx_qdq=False)) == []
    fp16 = _deprecations(plan_build(api("10.12.0"), EngineBuildConfig(precision="fp16"), onnx_qdq=False))
    assert len(fp16) == 1 and fp16[0].startswith("BuilderFlag.FP16 is deprecated since TensorRT 10.12 in favour of "
                                                 "strongly typed networks and removed in TensorRT 11")
    assert "11.x builds no FP16 engine here" in fp16[0] and "--precision fp32" in fp16[0]
    weak = plan_build(api("10.13.0"), EngineBuildConfig(precision="int8", strongly_typed=False, fp16_fallback=True),
                      onnx_qdq=True)
    assert weak.set_flags == ("INT8", "FP16")
    msg, = _deprecations(weak)  # one warning for both flags
    assert msg.startswith("BuilderFlag.FP16 and BuilderFlag.INT8 are deprecated") and "--int8-mode qdq" in msg
    legacy = plan_build(api("10.13.0"), EngineBuildConfig(precision="int8", int8_mode="legacy-cache"), onnx_qdq=False,
                        calibration=LegacyCalibration(amax={"image": 255.0}))
    assert len(_deprecations(legacy)) == 1 and "deprecated since TensorRT 10.1;" in legacy.warnings[0]
    strongly = plan_build(api("10.13.0"), EngineBuildConfig(precision="int8"), onnx_qdq=True)  # the route 11.x keeps
    assert strongly.set_flags == () and _deprecations(strongly) == []
    # 11.x: the flags are gone; FP16 is refused, INT8 takes the strongly typed Q/DQ route or is refused.
    with pytest.raises(ConfigError, match="no FP16 builder flag"):
        plan_build(api("11.0.0"), EngineBuildConfig(precision="fp16"), onnx_qdq=False)
    p11 = plan_build(api("11.0.0"), EngineBuildConfig(precision="int8", fp16_fallback=True), onnx_qdq=True)
    assert (p11.strongly_typed, p11.set_flags) == (True, ())
    assert p11.warnings == ("--fp16-fallback has no effect on a strongly typed network (the Q/DQ model's types "
                            "decide each layer's precision)",)  # it was dropped without a word


def test_plan_warns_when_opset_is_above_the_parser() -> None:
    def opset_warnings(version: str, opset: int | None) -> list[str]:
        p = plan_build(api(version), EngineBuildConfig(precision="fp32"), onnx_qdq=False, onnx_opset=opset)
        return [w for w in p.warnings if "opset" in w]

    w, = opset_warnings("8.6.1", 18)
    assert w.startswith("the ONNX model has opset 18, above opset 17, the highest TensorRT 8.6.1's ONNX parser "
                        "documents") and "uopsl export CHECKPOINT --out BUNDLE --opset 17" in w
    assert len(opset_warnings("8.5.2", 20)) == 1
    assert opset_warnings("8.6.1", 17) == [] and opset_warnings("8.6.1", None) == []
    assert opset_warnings("10.0.1", 20) == [] and len(opset_warnings("10.0.1", 21)) == 1
    assert opset_warnings("10.3.0", 20) == []  # later 10.x parse more than export ever writes (13-20)


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not out[-1] & 0x80:
            return bytes(out)


def _pb_field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _pb_varint(number << 3) + _pb_varint(payload)
    return _pb_varint(number << 3 | 2) + _pb_varint(len(payload)) + payload


def test_onnx_opset_reads_the_protobuf(tmp_path: Path) -> None:
    from uopsl.export.tensorrt import onnx_opset

    # ModelProto: ir_version (1), producer (2), graph (7, skipped by length), opset_import (8) x2
    graph = _pb_field(1, _pb_field(4, b"Conv")) + b"\x00" * 300  # bytes that are not a valid message at top level
    body = (_pb_field(1, 8) + _pb_field(2, b"pytorch") + _pb_field(7, graph)
            + _pb_field(8, _pb_field(1, b"com.microsoft") + _pb_field(2, 1))
            + _pb_field(8, _pb_field(1, b"") + _pb_field(2, 18)))
    (tmp_path / "m.onnx").write_bytes(body)
    assert onnx_opset(tmp_path / "m.onnx") == 18
    (tmp_path / "t.onnx").write_bytes(body[:-3])  # truncated
    assert onnx_opset(tmp_path / "t.onnx") is None
    assert onnx_opset(fake_onnx(tmp_path / "fake.onnx")) is None
    assert onnx_opset(tmp_path / "missing.onnx") is None
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", f32, [1])],
                     [h.make_tensor_value_info("y", f32, [1])])
    for v in (13, 17, 20):
        onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", v)]), str(tmp_path / f"o{v}.onnx"))
        assert onnx_opset(tmp_path / f"o{v}.onnx") == v


def test_onnx_has_qdq(tmp_path: Path) -> None:
    assert onnx_has_qdq(fake_onnx(tmp_path / "q.onnx", qdq=True))
    assert not onnx_has_qdq(fake_onnx(tmp_path / "f.onnx"))


# -- the build flow with a fake TensorRT ------------------------------------------------------
@pytest.mark.parametrize("version, flags, net_flags", [
    ("8.5.2.2", {"FP16"}, 1),
    ("8.6.1", {"FP16"}, 1),
    ("10.3.0", {"FP16"}, 0),
])
def test_build_fp16_flow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu, version: str,
                         flags: set[str], net_flags: int) -> None:
    trt = install(monkeypatch, version, gpu)
    onnx = fake_onnx(tmp_path / "model.onnx")
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"previous timings")
    cfg = EngineBuildConfig(precision="fp16", min_batch=1, opt_batch=4, max_batch=8, workspace_mib=256,
                            timing_cache=str(tc), builder_optimization_level=None if version.startswith("8.5") else 4)
    cuda = FakeCuda(gpu)
    info = build_engine(onnx, tmp_path / "model.fp16.engine", cfg, cuda=cuda)
    net, = trt.calls["networks"]
    config, = trt.calls["configs"]
    assert net.flags == net_flags
    assert config.flags == flags and config.cleared == set()
    assert config.pool == {"WORKSPACE": 256 << 20}
    assert config.profiles[0].shapes == {"image": ((1, H, W, 3), (4, H, W, 3), (8, H, W, 3))}
    assert config.timing.data == b"previous timings"  # loaded before the build ...
    assert tc.read_bytes() == b"TIMING:16"  # ... and the updated cache saved after it
    assert config.builder_optimization_level == (3 if version.startswith("8.5") else 4)
    assert config.default_device_type.name == "GPU"
    h = read_header(info.path)
    assert (h.tensorrt_version, h.gpu_name, h.compute_capability, h.precision) == (version, "Orin", "8.7", "fp16")
    assert (h.min_batch, h.opt_batch, h.max_batch, h.input_name, h.input_shape) == (1, 4, 8, "image", (H, W, 3))
    assert h.source_onnx == "model.onnx" and len(h.source_onnx_sha256) == 64 and h.workspace_mib == 256
    assert h.platform == f"{platform.system()}-{platform.machine()}"
    assert read_plan(info.path)[1].startswith(b"FAKEPLAN")
    assert cuda.active == 0  # activate/deactivate balanced


@pytest.mark.parametrize("first, builds", [("CAST", True), ("IDENTITY", True), ("SHUFFLE", False)])
def test_a_uint8_input_must_go_straight_into_a_cast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                                    first: str, builds: bool) -> None:
    # Bundles exported before session 15 had image -> Transpose -> Cast: TensorRT rejects a uint8 input
    # anywhere but in a cast (an identity layer is TensorRT 8.5's cast), so the build is refused up front.
    trt = install(monkeypatch, "10.3.0", gpu)
    onnx = fake_onnx(tmp_path / "model.onnx", first=first)
    cfg = EngineBuildConfig(precision="fp16", min_batch=1, opt_batch=1, max_batch=1)
    if builds:
        build_engine(onnx, tmp_path / "m.engine", cfg, cuda=FakeCuda(gpu))
        assert (tmp_path / "m.engine").is_file()
    else:
        with pytest.raises(ConfigError, match=r"uint8 input 'image' goes into a SHUFFLE layer.*export it again"):
            build_engine(onnx, tmp_path / "m.engine", cfg, cuda=FakeCuda(gpu))
        assert not (tmp_path / "m.engine").exists() and trt.calls["configs"] == []


def test_build_int8_qdq_strongly_typed_on_10_and_11(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     gpu: FakeGpu) -> None:
    onnx = fake_onnx(tmp_path / "model.int8.onnx", qdq=True)
    for version in ("10.3.0", "11.0.0"):
        trt = install(monkeypatch, version, gpu)
        info = build_engine(onnx, tmp_path / f"{version}.engine", EngineBuildConfig(precision="int8"),
                            cuda=FakeCuda(gpu))
        net, = trt.calls["networks"]
        config, = trt.calls["configs"]
        assert net.flags == 2 and config.flags == set() and config.cleared == {"TF32"}
        assert info.header.int8_mode == "qdq" and info.header.strongly_typed
        assert not hasattr(config, "int8_calibrator") or config.int8_calibrator is None


def test_build_int8_legacy_cache_on_8x(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    trt = install(monkeypatch, "8.6.1", gpu)
    onnx = fake_onnx(tmp_path / "model.onnx")
    cal = LegacyCalibration(amax={"image": 255.0, "conv_out": 6.0}, batch_size=4)
    info = build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="int8"), cal, cuda=FakeCuda(gpu))
    config, = trt.calls["configs"]
    assert config.flags == {"INT8"} and trt.calls["networks"][0].flags == 1
    kind, cache = trt.calls["calibration"][0]
    def hex_scale(amax: float) -> str:  # float32 bits of amax / 127.0f, computed independently with numpy
        return struct.pack(">f", np.float32(amax) / np.float32(127)).hex()

    assert kind == "cache" and cache.decode().splitlines() == [
        "TRT-8601-EntropyCalibration2", f"image: {hex_scale(255.0)}", f"conv_out: {hex_scale(6.0)}"]
    assert config.calibration_profile.shapes["image"] == ((4, H, W, 3),) * 3
    assert info.header.int8_mode == "legacy-cache"


def test_build_int8_legacy_calibrator_feeds_batches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   gpu: FakeGpu) -> None:
    trt = install(monkeypatch, "8.5.2", gpu)
    onnx = fake_onnx(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, (2, H, W, 3), dtype=np.uint8) for _ in range(3)]
    batches.append(batches[0][:1])  # a short last batch is dropped, not padded
    out_cache = tmp_path / "calib.cache"
    cal = LegacyCalibration(batches=batches, batch_size=2, cache_file=str(out_cache), algorithm="minmax")
    cuda = FakeCuda(gpu)
    build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="int8"), cal, cuda=cuda)
    fed = [c for c in trt.calls["calibration"] if c[0] == "batch"]
    assert len(fed) == 3
    ptr = fed[-1][1][0]
    assert ptr not in gpu.mem  # the calibrator's device buffer was freed after the build
    # Staged through page-locked memory (pycuda's async copy requires it), freed with the stream.
    assert cuda.host == [] and cuda.streams == 0
    assert out_cache.read_text().startswith("TRT-8-EntropyCalibration2")  # what TensorRT handed back, saved
    assert isinstance(trt.calls["configs"][0].int8_calibrator, trt.IInt8MinMaxCalibrator)


def test_an_unwritable_calibration_cache_keeps_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         gpu: FakeGpu, caplog: pytest.LogCaptureFixture) -> None:
    """A calibration cache that cannot be saved (a read-only folder, a full disk) costs the copy for later builds,
    not the engine that minutes of calibration produced: the build warns, writes the engine, and its header's
    rebuild options do not name a cache file that was never written."""
    trt = install(monkeypatch, "8.6.1", gpu)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, (2, H, W, 3), dtype=np.uint8) for _ in range(2)]
    (tmp_path / "a-file").write_text("not a folder")
    out_cache = tmp_path / "a-file" / "calib.cache"  # no folder can be made there
    cal = LegacyCalibration(batches=batches, batch_size=2, cache_file=str(out_cache), algorithm="entropy2",
                            images="/data/cal")
    with caplog.at_level(logging.WARNING):
        info = build_engine(fake_onnx(tmp_path / "model.onnx"), tmp_path / "e.engine",
                            EngineBuildConfig(precision="int8"), cal, cuda=FakeCuda(gpu))
    assert len([c for c in trt.calls["calibration"] if c[0] == "batch"]) == 2
    assert info.path.is_file() and not out_cache.exists()
    lost = [r for r in caplog.records if "could not save the INT8 calibration cache" in r.getMessage()]
    assert len(lost) == 1 and str(out_cache) in lost[0].getMessage()
    h = read_header(info.path)
    assert h.build_options is not None and h.int8_mode == "legacy-calibrator"
    assert (h.build_options.calib_source, h.build_options.calib_images, h.build_options.calib_cache) == (
        "images", "/data/cal", None)


@pytest.mark.parametrize("bad_at", [0, 2])
def test_a_calibration_batch_error_fails_the_build_instead_of_being_swallowed(
        bad_at: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    """TensorRT reads an exception in get_batch as "no more batches": first batch -> "no scaling factors",
    a later one -> an engine calibrated on part of the set. Both must fail the build, and no cache be saved."""
    install(monkeypatch, "8.6.1", gpu)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, (2, H, W, 3), dtype=np.uint8) for _ in range(4)]
    batches[bad_at] = rng.integers(0, 255, (2, H + 1, W, 3), dtype=np.uint8)  # another size
    out_cache = tmp_path / "calib.cache"
    cal = LegacyCalibration(batches=batches, batch_size=2, cache_file=str(out_cache), algorithm="entropy2")
    with pytest.raises(BackendError, match=rf"INT8 calibration failed after {2 * bad_at} images: calibration batch "
                                           r"has shape"):
        build_engine(fake_onnx(tmp_path / "model.onnx"), tmp_path / "e.engine", EngineBuildConfig(precision="int8"),
                     cal, cuda=FakeCuda(gpu))
    assert not out_cache.exists() and not (tmp_path / "e.engine").exists()


def test_a_calibration_with_only_short_batches_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     gpu: FakeGpu) -> None:
    install(monkeypatch, "8.6.1", gpu)
    batches = [np.zeros((1, H, W, 3), np.uint8)]
    cal = LegacyCalibration(batches=batches, batch_size=2, algorithm="entropy2")
    with pytest.raises(BackendError, match="used no image"):
        build_engine(fake_onnx(tmp_path / "model.onnx"), tmp_path / "e.engine", EngineBuildConfig(precision="int8"),
                     cal, cuda=FakeCuda(gpu))


def test_build_int8_legacy_cache_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.calibration import trt_cache

    """A review: after a JetPack 6.0 -> 6.1 upgrade the rebuild command hands TensorRT 10.3 the cache 8.6 wrote,
    which TensorRT refuses by its header; and a MinMax cache went through an entropy calibrator."""
    caplog.set_level("INFO")
    trt = install(monkeypatch, "10.3.0", gpu)
    cache = trt_cache.write_cache(tmp_path / "old.cache", {"image_f": 255.0, "conv_out": 6.0, "probs": 1.0}, "8.6.1")
    cal = LegacyCalibration(cache_file=str(cache), batch_size=2)
    build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                 EngineBuildConfig(precision="int8", int8_mode="legacy-cache"), cal, cuda=FakeCuda(gpu))
    old = cache.read_text()
    # The same scale lines under the running version's tag; the file itself is left as it was.
    assert trt.calls["calibration"] == [("cache", old.replace("TRT-8601-", "TRT-100300-", 1).encode())]
    assert cache.read_text() == old and old.startswith("TRT-8601-EntropyCalibration2\n")
    assert any("written by TensorRT tag 8601" in r.getMessage() for r in caplog.records)
    assert any("deprecated since TensorRT 10.1" in r.getMessage() for r in caplog.records)
    # Only float tensors need a range: the uint8 image input is not reported as kept in float.
    assert not any("calibration ranges cover" in r.getMessage() for r in caplog.records)

    minmax = trt_cache.write_cache(tmp_path / "mm.cache", {"image_f": 255.0, "conv_out": 6.0}, "10.3.0",
                                   "MinMaxCalibration")
    trt.calls["calibration"].clear()
    build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e2.engine",
                 EngineBuildConfig(precision="int8", int8_mode="legacy-cache"),
                 LegacyCalibration(cache_file=str(minmax), batch_size=2), cuda=FakeCuda(gpu))
    assert trt.calls["calibration"] == [("cache", minmax.read_bytes())]  # taken: a MinMax calibrator handed it

    legacy = trt_cache.write_cache(tmp_path / "lg.cache", {"image_f": 255.0}, "10.3.0", "LegacyCalibration")
    with pytest.raises(ConfigError, match="LegacyCalibration calibrator, which uopsl does not build"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e3.engine",
                     EngineBuildConfig(precision="int8", int8_mode="legacy-cache"),
                     LegacyCalibration(cache_file=str(legacy), batch_size=2), cuda=FakeCuda(gpu))


def test_parser_errors_are_all_listed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    install(monkeypatch, "10.3.0", gpu)
    onnx = fake_onnx(tmp_path / "broken.onnx", bad=True)
    with pytest.raises(BackendError) as exc:
        build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="fp16"), cuda=FakeCuda(gpu))
    msg = str(exc.value)
    assert "cannot parse broken.onnx: 2 error(s)" in msg
    assert "node 7 '/layer7/Op' (FancyOp): No importer registered for op: FancyOp" in msg
    assert "Failed to parse onnx file" in msg
    install(monkeypatch, "8.6.1", gpu)  # 8.x parser errors have no node name/operator
    with pytest.raises(BackendError, match=r"node 7: No importer registered"):
        build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="fp16"), cuda=FakeCuda(gpu))
    assert not (tmp_path / "e.engine").exists()


def test_build_failure_reports_tensorrt_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    install(monkeypatch, "10.3.0", gpu, build_fails=True)
    with pytest.raises(BackendError, match="failed to build.*out of memory while timing"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(), cuda=FakeCuda(gpu))


def test_build_dla_and_input_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    trt = install(monkeypatch, "8.5.2", gpu, dla_cores=2)
    onnx = fake_onnx(tmp_path / "m.onnx")
    info = build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="fp16", dla_core=1, **DLA1),
                        cuda=FakeCuda(gpu))
    config, = trt.calls["configs"]
    assert config.default_device_type.name == "DLA" and config.DLA_core == 1 and "GPU_FALLBACK" in config.flags
    assert config.profiles[0].shapes == {"image": ((1, H, W, 3),) * 3}  # static: DLA has no dynamic shapes
    assert info.header.dla_core == 1
    with pytest.raises(ConfigError, match="has 2 DLA core"):
        build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="fp16", dla_core=2, **DLA1),
                     cuda=FakeCuda(gpu))
    install(monkeypatch, "10.3.0", gpu)
    with pytest.raises(ConfigError, match="has 0 DLA core.*Jetson"):
        build_engine(onnx, tmp_path / "e.engine", EngineBuildConfig(precision="fp16", dla_core=0, **DLA1),
                     cuda=FakeCuda(gpu))
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        build_engine(fake_onnx(tmp_path / "fixed.onnx", batch=1), tmp_path / "e.engine", EngineBuildConfig(),
                     cuda=FakeCuda(gpu))
    # A review: TensorRT 11.0-11.4.0 has no DLA on Jetson, so "none on this board" would blame the wrong thing.
    install(monkeypatch, "11.0.0", gpu)
    with pytest.raises(ConfigError, match=r"has 0 DLA core.*TensorRT 11\.0\.0 may be why.*11\.4\.1"):
        build_engine(fake_onnx(tmp_path / "q.onnx", qdq=True), tmp_path / "e.engine",
                     EngineBuildConfig(precision="int8", dla_core=0, **DLA1), cuda=FakeCuda(gpu))


def test_profiles_tensorrt_refuses_are_errors_not_obscure_build_failures(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path, gpu: FakeGpu) -> None:
    """A review: the return values of add_optimization_profile (-1: invalid) and set_calibration_profile were
    ignored, and a fixed-batch ONNX calibrated with another batch failed only inside the build."""
    from uopsl.calibration import trt_cache

    trt = install(monkeypatch, "8.6.1", gpu)
    cache = trt_cache.write_cache(tmp_path / "c.cache", {"image_f": 255.0, "conv_out": 6.0, "probs": 1.0}, "8.6.1")
    fixed = dict(min_batch=2, opt_batch=2, max_batch=2)
    with pytest.raises(ConfigError, match="fixed batch of 2.*--calib-batch 2"):
        build_engine(fake_onnx(tmp_path / "f.onnx", batch=2), tmp_path / "e.engine",
                     EngineBuildConfig(precision="int8", int8_mode="legacy-cache", **fixed),
                     LegacyCalibration(cache_file=str(cache), batch_size=8), cuda=FakeCuda(gpu))
    build_engine(fake_onnx(tmp_path / "f.onnx", batch=2), tmp_path / "e.engine",
                 EngineBuildConfig(precision="int8", int8_mode="legacy-cache", **fixed),
                 LegacyCalibration(cache_file=str(cache), batch_size=2), cuda=FakeCuda(gpu))
    make_config = trt.Builder.create_builder_config

    def refusing(method: str, value: Any) -> None:
        def create(self: Any) -> Any:
            cfg = make_config(self)
            setattr(cfg, method, lambda *a: value)
            return cfg

        monkeypatch.setattr(trt.Builder, "create_builder_config", create)

    refusing("add_optimization_profile", -1)
    with pytest.raises(ConfigError, match="refused the batch profile min/opt/max 1/4/8"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(opt_batch=4,
                     max_batch=8), cuda=FakeCuda(gpu))
    refusing("set_calibration_profile", False)
    with pytest.raises(ConfigError, match="refused the calibration profile"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                     EngineBuildConfig(precision="int8", int8_mode="legacy-cache"),
                     LegacyCalibration(cache_file=str(cache), batch_size=2), cuda=FakeCuda(gpu))
    # The Python binding raises from set_shape itself (pyCore.cpp, opt_profile_set_shape) where C++ returns false.
    monkeypatch.setattr(trt.Builder, "create_builder_config", make_config)
    make_profile = trt.Builder.create_optimization_profile

    def raising_profile(self: Any) -> Any:
        prof = make_profile(self)

        def set_shape(*a: Any) -> None:
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

        prof.set_shape = set_shape
        return prof

    monkeypatch.setattr(trt.Builder, "create_optimization_profile", raising_profile)
    with pytest.raises(ConfigError, match="refused the batch profile min/opt/max 1/4/8.*inconsistent"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(opt_batch=4,
                     max_batch=8), cuda=FakeCuda(gpu))
    made = {"n": 0}

    def second_raises(self: Any) -> Any:  # the batch profile passes, the calibration profile is refused
        made["n"] += 1
        return make_profile(self) if made["n"] == 1 else raising_profile(self)

    monkeypatch.setattr(trt.Builder, "create_optimization_profile", second_raises)
    with pytest.raises(ConfigError, match="refused the calibration profile \\(batch 2\\).*inconsistent"):
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                     EngineBuildConfig(precision="int8", int8_mode="legacy-cache"),
                     LegacyCalibration(cache_file=str(cache), batch_size=2), cuda=FakeCuda(gpu))


def test_build_logs_deprecation_once_and_records_opset_and_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                    gpu: FakeGpu,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import uopsl.export.tensorrt as tx

    install(monkeypatch, "10.13.0", gpu)
    monkeypatch.setattr(tx, "_opset_from_bytes", lambda data: 18)  # the fake ONNX is not a protobuf
    info = build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine",
                        EngineBuildConfig(precision="fp16", builder_optimization_level=2), cuda=FakeCuda(gpu))
    deprecations = [r for r in caplog.records if "deprecated since TensorRT 10.12" in r.getMessage()]
    assert len(deprecations) == 1 and deprecations[0].levelname == "WARNING"
    assert not any("opset" in r.getMessage() for r in caplog.records)  # 10.13 parses opset 18
    h = read_header(info.path)
    assert h.extra["onnx_opset"] == 18 and h.extra["flags"] == ["FP16"]
    assert h.build_options is not None and h.build_options.opt_level == 2 and h.build_options.gpu_fallback
    assert h.build_options.calib_source == "" and h.build_options.strongly_typed is None
    install(monkeypatch, "8.6.1", gpu)
    caplog.clear()
    build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(precision="fp16"),
                 cuda=FakeCuda(gpu))
    assert [r.getMessage()[:47] for r in caplog.records if r.levelname == "WARNING"] == [
        "the ONNX model has opset 18, above opset 17, th"]


def test_recorded_options_per_calibration_source() -> None:
    from uopsl.export.tensorrt import BuildPlan, recorded_options

    cfg = EngineBuildConfig(precision="int8", int8_mode="legacy-cache", fp16_fallback=True, gpu_fallback=False)
    plan = BuildPlan(False, ("INT8", "FP16"), ("TF32",), "legacy-cache")
    table = recorded_options(cfg, plan, LegacyCalibration(amax={"x": 1.0}, batch_size=4))
    assert (table.calib_source, table.calib_cache, table.calib_batch, table.fp16_fallback, table.gpu_fallback) == (
        "table", None, 4, True, False)
    cache = recorded_options(cfg, plan, LegacyCalibration(cache_file="/c/calib.cache", batch_size=8))
    assert (cache.calib_source, cache.calib_cache, cache.calib_images) == ("cache", "/c/calib.cache", None)
    cal = LegacyCalibration(batches=[], cache_file="/c/out.cache", images="/data/cal", max_images=64, batch_size=2)
    imgs = recorded_options(replace(cfg, int8_mode="legacy-calibrator"), replace(plan, int8_mode="legacy-calibrator"),
                            cal)
    assert (imgs.calib_source, imgs.calib_images, imgs.calib_max_images, imgs.calib_cache, imgs.calib_batch) == (
        "images", "/data/cal", 64, "/c/out.cache", 2)
    q = recorded_options(EngineBuildConfig(precision="int8"), replace(plan, int8_mode="qdq"), None)
    assert (q.calib_source, q.calib_batch) == ("", None)


def test_timing_cache_from_another_gpu_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   gpu: FakeGpu) -> None:
    trt = install(monkeypatch, "10.3.0", gpu)
    tc = tmp_path / "tc.cache"
    tc.write_bytes(b"OTHER-GPU")
    build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig(timing_cache=str(tc)),
                 cuda=FakeCuda(gpu))
    assert trt.calls["configs"][0].timing.data == b""
    assert tc.read_bytes() == b"TIMING:0"


def test_missing_tensorrt_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(MissingDependencyError) as exc:
        build_engine(fake_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine", EngineBuildConfig())
    msg = str(exc.value)
    assert "\n" not in msg and "tensorrt-cu12" in msg and "python3-libnvinfer" in msg


# -- the runtime backend ----------------------------------------------------------------------
from uopsl.runtime.backends.tensorrt import TensorRTBackend  # noqa: E402


def build_fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu, version: str,
                      **cfg: Any) -> tuple[Any, Path]:
    trt = install(monkeypatch, version, gpu)
    config = EngineBuildConfig(**{"precision": "fp16", "min_batch": 2, "opt_batch": 4, "max_batch": 4, **cfg})
    path = build_engine(fake_onnx(tmp_path / "model.onnx"), tmp_path / "model.fp16.engine", config,
                        cuda=FakeCuda(gpu)).path
    return trt, path


def expected_probs(batch: np.ndarray) -> np.ndarray:
    mean = batch.astype(np.float32).mean(axis=(1, 2, 3)) / 255.0
    return (mean[:, None] * (np.arange(K) + 1) / K).astype(np.float32)


@pytest.mark.parametrize("version, api_name", [("8.5.2.2", "v2"), ("10.3.0", "v3"), ("11.0.0", "v3")])
def test_backend_runs_batches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu, version: str,
                              api_name: str) -> None:
    trt, path = build_fake_engine(monkeypatch, tmp_path, gpu, version,
                                  **({"precision": "fp32"} if version.startswith("11") else {}))
    cuda = FakeCuda(gpu)
    rng = np.random.default_rng(1)
    with TensorRTBackend(path, cuda=cuda) as backend:
        assert backend.inputs[0].shape == (None, H, W, 3) and backend.inputs[0].dtype == np.uint8
        assert [o.name for o in backend.outputs] == ["probs", "logits", "site_maps"]
        assert backend.batch_range == (2, 4)
        for n in (1, 3, 4, 10):  # 1: padded to the minimum 2; 10: split into 4 + 4 + 2
            batch = rng.integers(0, 255, (n, H, W, 3), dtype=np.uint8)
            out = backend.infer(batch)
            assert out["probs"].shape == (n, K) and out["site_maps"].shape == (n, K, 2, 2)
            np.testing.assert_allclose(out["probs"], expected_probs(batch), rtol=1e-6)
            np.testing.assert_allclose(out["logits"], out["probs"] * 10, rtol=1e-6)
        assert trt.calls["execute"] == (api_name, 77)
        assert backend.last_chunks == 3
        assert backend.last_timings == {"h2d": 4.5, "compute": 4.5, "d2h": 4.5}  # 3 chunks x 1.5 ms each
        assert "TensorRT " + version in backend.describe()
    assert gpu.mem == {} and cuda.host == [] and cuda.streams == 0 and cuda.active == 0  # all released


def test_bench_reports_transfer_and_compute_columns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     gpu: FakeGpu) -> None:
    """uopsl-screen bench turns last_timings into per-part p50 columns."""
    from uopsl.runtime.bench import time_backend

    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    images = np.zeros((4, H, W, 3), np.uint8)
    with TensorRTBackend(path, cuda=FakeCuda(gpu)) as backend:
        rows = time_backend(backend, (1, 4, 8), iters=2, warmup=1, images=images)
    assert [r["batch"] for r in rows] == [1, 4, 8]
    assert all(r["h2d_p50_ms"] == r["compute_p50_ms"] == r["d2h_p50_ms"] == 1.5 for r in rows[:2])
    # A batch above the engine's maximum (4) runs as several engine runs: the row says so, it was silent.
    assert rows[2]["chunks"] == 2 and rows[2]["compute_p50_ms"] == 3.0 and rows[2]["compute_p99_ms"] == 3.0
    assert all(r["engine_batch_range"] == [2, 4] for r in rows) and rows[0]["chunks"] == 1
    assert all("host_p50_ms" in r for r in rows)  # the call's time outside the device events


def test_backend_reject_mode_and_input_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    with TensorRTBackend(path, oversize="reject", cuda=FakeCuda(gpu)) as backend:
        with pytest.raises(BackendError, match="exceeds the engine's maximum batch 4"):
            backend.infer(np.zeros((5, H, W, 3), np.uint8))
        with pytest.raises(BackendError, match="must be uint8"):
            backend.infer(np.zeros((1, H, W, 3), np.float32))
        with pytest.raises(BackendError, match="shape"):
            backend.infer(np.zeros((1, H + 1, W, 3), np.uint8))
    with pytest.raises(ConfigError, match="oversize"):
        TensorRTBackend(path, oversize="drop")  # type: ignore[arg-type]


def test_backend_float_engine_input_is_cast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    trt = install(monkeypatch, "10.3.0", gpu)
    path = build_engine(fake_onnx(tmp_path / "model.onnx", dtype="float32"), tmp_path / "f.engine",
                        EngineBuildConfig(min_batch=1, opt_batch=2, max_batch=2), cuda=FakeCuda(gpu)).path
    batch = np.random.default_rng(2).integers(0, 255, (2, H, W, 3), dtype=np.uint8)
    with TensorRTBackend(path, cuda=FakeCuda(gpu)) as backend:
        assert backend.inputs[0].dtype == np.uint8
        np.testing.assert_allclose(backend.infer(batch)["probs"], expected_probs(batch), rtol=1e-6)
    assert trt.calls["deserialize"]


def test_backend_checks_header_before_deserialising(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   gpu: FakeGpu) -> None:
    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "8.5.2.2")
    trt = install(monkeypatch, "8.6.1", gpu)  # the device was upgraded to another TensorRT
    with pytest.raises(EngineMismatchError) as exc:
        TensorRTBackend(path, cuda=FakeCuda(gpu)).load()
    assert trt.calls["deserialize"] == []  # refused from the header alone
    msg = str(exc.value)
    assert "TensorRT 8.5.2.2 built it, TensorRT 8.6.1 is running" in msg and "uopsl build-engine" in msg
    trt = install(monkeypatch, "8.5.2.2", gpu)
    with pytest.raises(EngineMismatchError, match="compute capability 8.7.*compute capability 8.9"):
        TensorRTBackend(path, cuda=FakeCuda(gpu, "RTX 4090", "8.9")).load()
    assert trt.calls["deserialize"] == []
    assert gpu.mem == {}


def test_backend_deserialise_failure_and_dla(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    header, plan = read_plan(path)
    # a header that lies about the plan's TensorRT version: TensorRT itself refuses it
    write_engine(path, plan.replace(b'"10.3.0"', b'"10.2.0"'), header)
    with pytest.raises(BackendError, match="could not deserialise.*version tag mismatch.*uopsl build-engine"):
        TensorRTBackend(path, cuda=FakeCuda(gpu)).load()
    write_engine(path, plan, replace(header, dla_core=0))
    with pytest.raises(BackendError, match="DLA core 0, but this device has 0"):
        TensorRTBackend(path, cuda=FakeCuda(gpu)).load()
    write_engine(path, plan, replace(header, version_compatible=True))
    trt = install(monkeypatch, "10.3.0", gpu)
    with TensorRTBackend(path, cuda=FakeCuda(gpu)):
        assert trt.calls["runtime"].engine_host_code_allowed is True


def test_backend_missing_tensorrt_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu) -> None:
    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as exc:
        TensorRTBackend(path, cuda=FakeCuda(gpu)).load()
    assert "\n" not in str(exc.value) and "tensorrt-cu12" in str(exc.value)


def test_check_compatible_probes_the_running_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     gpu: FakeGpu) -> None:
    """engine_header.check_compatible(header) alone asks TensorRT and the CUDA binding (used by 'auto')."""
    from uopsl.runtime import engine_header

    _, path = build_fake_engine(monkeypatch, tmp_path, gpu, "10.3.0")
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    engine_header.check_compatible(engine_header.read_header(path))
    install(monkeypatch, "10.4.0", gpu)
    with pytest.raises(EngineMismatchError, match="10.4.0 is running"):
        engine_header.check_compatible(engine_header.read_header(path))


# -- the CLI ----------------------------------------------------------------------------------
def _bundle(tmp_path: Path, with_qdq: bool = False, table: bool = False, size: int = H) -> Path:
    from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest, describe_file, write_manifest
    from uopsl.runtime.preprocess import PreprocessConfig

    root = tmp_path / "bundle"
    root.mkdir()
    fake_onnx(root / "model.onnx", size=size)
    files = [FileEntry("model.onnx", "onnx", "fp32")]
    if with_qdq:
        fake_onnx(root / "model.int8.onnx", qdq=True, size=size)
        files.append(FileEntry("model.int8.onnx", "onnx", "int8-qdq-s8"))
    if table:
        from uopsl.calibration.table import CalibrationTable
        from uopsl.runtime.fsio import sha256_file

        CalibrationTable(ranges={"image": (0.0, 255.0), "conv_out": (-1.0, 3.0)}, method="entropy",
                         model_sha256=sha256_file(root / "model.onnx"), set_fingerprint="f" * 64,
                         num_images=4).save(root / "calibration.json")
    m = Manifest(classes=(ClassSpec("normal"), ClassSpec("dr", referable=True)), head="sigmoid",
                 preprocess=PreprocessConfig(size=max(size, 32)), files=tuple(describe_file(root, f) for f in files))
    write_manifest(root, m)
    return root


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    import click

    from uopsl.runtime.clikit import LazyGroup, main_entry

    @click.group(cls=LazyGroup, lazy={"build-engine": "uopsl.train.commands.build_engine:command"})
    def cli() -> None:
        pass

    rc = main_entry(cli, args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("version, expect_mode, expect_onnx", [
    ("8.5.2", "legacy-cache", "model.onnx"),  # 8.x with a calibration table: the cache route
    ("10.3.0", "qdq", "model.int8.onnx"),
    ("11.0.0", "qdq", "model.int8.onnx"),
])
def test_cli_build_engine_updates_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                           capsys: pytest.CaptureFixture[str], version: str, expect_mode: str,
                                           expect_onnx: str) -> None:
    from uopsl.runtime.bundle import read_manifest, verify

    install(monkeypatch, version, gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _bundle(tmp_path, with_qdq=True, table=True)
    rc, out, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--max-batch", "8"], capsys)
    assert rc == 0, err
    assert "model.int8.engine: int8 (" + expect_mode + ")" in out
    m = read_manifest(bundle)
    entry = m.file("model.int8.engine")
    assert entry.kind == "engine" and entry.precision == "int8"
    assert entry.info["tensorrt_version"] == version and entry.info["int8_mode"] == expect_mode
    assert entry.info["source_onnx"] == expect_onnx and entry.info["max_batch"] == 8
    assert all(c.ok for c in verify(bundle))
    assert (tmp_path / "cache" / f"trt-timing-{version}-sm87.cache").is_file()
    # a rebuild replaces the entry instead of adding a second one
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--no-timing-cache"], capsys)
    assert rc == 0, err
    assert [f.path for f in read_manifest(bundle).files].count("model.int8.engine") == 1


def test_cli_rebuild_repairs_an_engine_stopped_before_listing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                gpu: FakeGpu, capsys: pytest.CaptureFixture[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A rebuild stopped between writing the engine and listing it leaves the listed engine failing its
    checksum; build-engine refused such a bundle as corrupt ('copy it again'), though building the engine
    anew is what repairs it. Another file's damage still stops it."""
    from uopsl.runtime.bundle import verify

    install(monkeypatch, "10.3.0", gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _bundle(tmp_path, with_qdq=True, table=True)
    args = ["build-engine", str(bundle), "--precision", "int8", "--no-timing-cache"]
    assert _cli(args, capsys)[0] == 0
    (bundle / "model.int8.engine").write_bytes(b"a half-finished rebuild's engine, never listed")
    with caplog.at_level(logging.WARNING):
        rc, _, err = _cli(args, capsys)
    assert rc == 0, err
    assert "model.int8.engine does not match the manifest" in caplog.text
    assert all(c.ok for c in verify(bundle))
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"x")
    rc, _, err = _cli(args, capsys)
    assert rc == 2 and "model.onnx" in err


def test_cli_legacy_calibrator_from_a_calibration_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      gpu: FakeGpu, capsys: pytest.CaptureFixture[str]) -> None:
    """8.x, no table, --calib-images: calibration images come through uopsl.calibration.dataset."""
    from uopsl.calibration.dataset import CalibrationSet
    from uopsl.runtime.bundle import read_manifest

    trt = install(monkeypatch, "8.5.2", gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    bundle = _bundle(tmp_path, size=32)
    images = np.random.default_rng(3).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    npz = CalibrationSet.from_images(images, read_manifest(bundle).preprocess).save(tmp_path / "set.npz")
    rc, out, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--calib-images", str(npz),
                         "--calib-batch", "2", "--calib-cache", str(tmp_path / "calib.cache"), "--no-timing-cache"],
                        capsys)
    assert rc == 0, err
    assert "int8 (legacy-calibrator)" in out
    assert [c[0] for c in trt.calls["calibration"]] == ["cache", "batch", "batch"]  # 5 images: 2 + 2, 1 dropped
    assert (tmp_path / "calib.cache").is_file()
    info = read_manifest(bundle).file("model.int8.engine").info
    assert info["source_onnx"] == "model.onnx"
    # the set TensorRT calibrated on, so that uopsl validate can say the engine's images are not the table's
    assert info["calibration_fingerprint"] == CalibrationSet.load(npz).fingerprint


def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    rc, _, err = _cli(["build-engine", str(bundle)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: uopsl build-engine needs the Python package 'tensorrt'")
    assert "tensorrt-cu12" in err and "python3-libnvinfer" in err
    install(monkeypatch, "11.0.0", gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--int8-mode", "legacy-cache"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "removed in TensorRT 11" in err
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8"], capsys)
    assert rc == 2 and "needs the TensorRT Q/DQ model" in err
    rc, _, err = _cli(["build-engine", str(bundle), "--out", "../escape.engine"], capsys)
    assert rc == 2 and "inside the bundle" in err


def test_resolve_batches_dla_default_and_refusal(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from uopsl.train.commands.build_engine import resolve_batches

    caplog.set_level(logging.INFO)
    assert resolve_batches(None, None, None, None) == (1, 8, 16)
    assert resolve_batches(2, None, None, None) == (2, 8, 16)
    assert resolve_batches(None, None, None, 0) == (1, 1, 1)
    assert "--dla-core 0 without batch options: building for one fixed batch of 1" in caplog.text
    assert resolve_batches(None, 4, None, 1) == (4, 4, 4)
    assert "--min-batch, --max-batch left out, so they take the fixed batch 4" in caplog.text
    assert resolve_batches(8, 8, 8, 0) == (8, 8, 8)
    with pytest.raises(ConfigError) as exc:
        resolve_batches(None, 2, 4, 0)
    assert str(exc.value).startswith("--dla-core 0 with --opt-batch 2 --max-batch 4: TensorRT's DLA does not support "
                                     "dynamic dimensions (the batch profile needs min = opt = max)")
    assert "--min-batch 4 --opt-batch 4 --max-batch 4" in str(exc.value)


def test_cli_dla_fixes_the_batch_or_refuses_a_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    trt = install(monkeypatch, "8.6.1", gpu, dla_cores=2)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    bundle = _bundle(tmp_path)
    rc, out, err = _cli(["build-engine", str(bundle), "--dla-core", "0", "--no-timing-cache"], capsys)
    assert rc == 0, err
    config = trt.calls["configs"][-1]
    assert config.profiles[0].shapes == {"image": ((1, H, W, 3),) * 3}
    assert (config.default_device_type.name, config.DLA_core, config.flags) == ("DLA", 0, {"FP16", "GPU_FALLBACK"})
    assert "model.fp16.dla0.engine: fp16" in out and "batch 1/1/1" in out
    rc, out, err = _cli(["build-engine", str(bundle), "--dla-core", "1", "--max-batch", "4", "--no-gpu-fallback",
                         "--no-timing-cache"], capsys)
    assert rc == 0, err
    config = trt.calls["configs"][-1]
    assert config.profiles[0].shapes == {"image": ((4, H, W, 3),) * 3} and config.flags == {"FP16"}
    built = len(trt.calls["configs"])
    rc, _, err = _cli(["build-engine", str(bundle), "--dla-core", "0", "--min-batch", "1", "--max-batch", "16"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: --dla-core 0 with --min-batch 1 --max-batch 16: TensorRT's DLA does not support "
                          "dynamic dimensions")
    assert "would run on the GPU, not the DLA" in err and "--min-batch 16 --opt-batch 16 --max-batch 16" in err
    assert len(trt.calls["configs"]) == built  # nothing was built
    rc, _, err = _cli(["build-engine", str(bundle), "--no-timing-cache"], capsys)  # no DLA: the GPU defaults
    assert rc == 0, err
    assert trt.calls["configs"][-1].profiles[0].shapes == {"image": ((1, H, W, 3), (8, H, W, 3), (16, H, W, 3))}


def test_cli_help_says_what_dla_and_version_compatible_do(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(["build-engine", "--help"], capsys)
    assert rc == 0
    flat = "".join(out.split())  # click wraps (and may break at hyphens)
    assert "[default:16;with--dla-core:1,fixed]" in flat and "arangeisanerror" in flat
    assert "8.6+->10.xand10.x->11.x(not8.x->9.xor11.x)" in flat and "nevermovestoanotherGPUarchitecture" in flat


def test_cli_dla_int8_on_8x_takes_the_cache_route(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.bundle import read_manifest

    trt = install(monkeypatch, "8.6.1", gpu, dla_cores=1)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    (tmp_path / "a").mkdir()
    bundle = _bundle(tmp_path / "a", with_qdq=True)  # Q/DQ model, no calibration table
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--dla-core", "0", "--no-timing-cache"],
                      capsys)
    assert rc == 2 and err.count("\n") == 1
    assert ("INT8 on DLA core 0 under TensorRT 8.x with no calibration data: DLA there does not support explicitly "
            "quantized (Q/DQ) models") in err and "uopsl calibrate BUNDLE --images CALIBRATION_IMAGES" in err
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--int8-mode", "qdq", "--dla-core", "0"],
                      capsys)
    assert rc == 2 and "with --int8-mode qdq: DLA there does not support explicitly quantized" in err
    assert trt.calls["configs"] == []
    (tmp_path / "b").mkdir()
    bundle = _bundle(tmp_path / "b", with_qdq=True, table=True)
    rc, out, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--dla-core", "0", "--no-timing-cache"],
                        capsys)
    assert rc == 0, err
    config, = trt.calls["configs"]
    assert config.flags == {"INT8", "GPU_FALLBACK"} and config.calibration_profile is not None
    info = read_manifest(bundle).file("model.int8.dla0.engine").info
    assert (info["int8_mode"], info["source_onnx"], info["dla_core"]) == ("legacy-cache", "model.onnx", 0)
    assert info["extra"]["build_options"]["calib_source"] == "table"
    install(monkeypatch, "10.3.0", gpu, dla_cores=1)  # 10.x DLA takes the Q/DQ model
    rc, out, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--dla-core", "0", "--no-timing-cache"],
                        capsys)
    assert rc == 0 and "int8 (qdq)" in out, err


def _run_printed(command: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a command printed by rebuild_command through the CLI, as a shell would (the # comment dropped)."""
    args = shlex.split(command, comments=True)
    assert args[:2] == ["uopsl", "build-engine"], command
    return _cli(args[1:], capsys)


_SAME = ("precision", "min_batch", "opt_batch", "max_batch", "dla_core", "int8_mode", "strongly_typed",
         "version_compatible", "workspace_mib", "source_onnx", "source_onnx_sha256", "input_shape")


def test_printed_rebuild_command_rebuilds_the_same_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          gpu: FakeGpu, capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.calibration.dataset import CalibrationSet
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.engine_header import rebuild_command

    trt = install(monkeypatch, "8.6.1", gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _bundle(tmp_path, size=32)
    images = np.random.default_rng(3).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    CalibrationSet.from_images(images, read_manifest(bundle).preprocess).save(tmp_path / "set.npz")
    monkeypatch.chdir(tmp_path)  # relative paths given on the command line are recorded absolute
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--min-batch", "2", "--opt-batch", "2",
                       "--max-batch", "4", "--workspace", "256", "--calib-images", "set.npz", "--calib-batch", "2",
                       "--calib-max-images", "4", "--calib-cache", "calib.cache", "--no-strongly-typed",
                       "--fp16-fallback", "--opt-level", "4", "--version-compatible", "--no-timing-cache"], capsys)
    assert rc == 0, err
    path = bundle / "model.int8.engine"
    h1 = read_header(path)
    cmd = rebuild_command(h1, path)
    q = shlex.quote
    assert cmd == (f"uopsl build-engine {q(str(bundle))} --precision int8 --min-batch 2 --opt-batch 2 --max-batch 4 "
                   f"--workspace 256 --int8-mode legacy-calibrator --calib-images {q(str(tmp_path / 'set.npz'))} "
                   f"--calib-max-images 4 --calib-cache {q(str(tmp_path / 'calib.cache'))} --calib-batch 2 "
                   "--no-strongly-typed --fp16-fallback --opt-level 4 --version-compatible --out model.int8.engine")
    first = trt.calls["configs"][-1]
    assert first.flags == {"INT8", "FP16", "VERSION_COMPATIBLE"} and first.builder_optimization_level == 4
    monkeypatch.chdir(bundle)  # the printed command does not depend on the working folder
    rc, _, err = _run_printed(cmd, capsys)
    assert rc == 0, err
    second = trt.calls["configs"][-1]
    assert second is not first
    for attr in ("flags", "cleared", "pool", "builder_optimization_level", "default_device_type", "DLA_core"):
        assert getattr(second, attr) == getattr(first, attr), attr
    assert second.profiles[0].shapes == first.profiles[0].shapes == {
        "image": ((2, 32, 32, 3), (2, 32, 32, 3), (4, 32, 32, 3))}
    assert second.calibration_profile.shapes == first.calibration_profile.shapes
    kinds = [c[0] for c in trt.calls["calibration"]]  # both builds on 4 of the 6 images (--calib-max-images), batch 2
    assert kinds == ["cache", "batch", "batch"] * 2
    h2 = read_header(path)
    assert {k: getattr(h2, k) for k in _SAME} == {k: getattr(h1, k) for k in _SAME}
    assert h2.build_options == h1.build_options and rebuild_command(h2, path) == cmd


def test_mismatch_command_replays_dla_and_adapts_the_int8_route(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                gpu: FakeGpu,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The command in an EngineMismatchError, run as printed, rebuilds under the new TensorRT."""
    trt = install(monkeypatch, "8.6.1", gpu, dla_cores=1)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: FakeCuda(gpu))
    bundle = _bundle(tmp_path, with_qdq=True, table=True)
    rc, _, err = _cli(["build-engine", str(bundle), "--precision", "int8", "--dla-core", "0", "--no-gpu-fallback",
                       "--max-batch", "2", "--no-timing-cache"], capsys)
    assert rc == 0, err
    path = bundle / "model.int8.dla0.engine"
    first = trt.calls["configs"][-1]

    def printed(version: str) -> str:
        install(monkeypatch, version, gpu, dla_cores=1)
        with pytest.raises(EngineMismatchError) as exc:
            TensorRTBackend(path, cuda=FakeCuda(gpu)).load()
        return str(exc.value).split("Rebuild it on this device: ", 1)[1]

    cmd = printed("8.6.2")  # same major: every option replayed, no comment
    assert cmd == (f"uopsl build-engine {bundle} --precision int8 --min-batch 2 --opt-batch 2 --max-batch 2 "
                   "--workspace 1024 --int8-mode legacy-cache --calib-batch 8 --dla-core 0 --no-gpu-fallback "
                   "--out model.int8.dla0.engine")
    rc, _, err = _run_printed(cmd, capsys)
    assert rc == 0, err
    again = trt.calls["configs"][-1]
    assert (again.flags, again.DLA_core, again.profiles[0].shapes) == (first.flags, 0, first.profiles[0].shapes)
    assert again.flags == {"INT8"}
    cmd = printed("10.3.0")  # 10.x: the route still works, the comment says Q/DQ is preferred
    assert "--int8-mode legacy-cache" in cmd
    assert cmd.endswith("  # TensorRT 10.3.0 prefers the Q/DQ model for INT8 (implicit INT8 is deprecated since "
                        "10.1): leave out --int8-mode legacy-cache and the --calib options to build from it")
    cmd = printed("11.0.0")  # 11.x: no implicit INT8, so no route that would fail
    assert "--int8-mode" not in cmd.split("#")[0] and "TensorRT 11.0.0 has no implicit INT8" in cmd
    install(monkeypatch, "11.0.0", gpu, dla_cores=1)
    rc, out, err = _run_printed(cmd, capsys)
    assert rc == 0 and "int8 (qdq)" in out, err


# -- real TensorRT / GPU (skipped where absent) ----------------------------------------------
def _real_trt() -> Any:
    from uopsl.runtime.optional import available

    if not available("tensorrt"):
        pytest.skip("TensorRT is not installed here (pip install 'tensorrt-cu12>=10,<11' or JetPack)")
    if not any(available(m) for m in ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver")):
        pytest.skip("no CUDA binding (cuda-python or pycuda) installed")
    return cuda_binding.load_cuda("the TensorRT GPU test")


@pytest.mark.trt
@pytest.mark.gpu
def test_real_tensorrt_build_and_run(tmp_path: Path) -> None:
    cuda = _real_trt()
    pytest.importorskip("torch", reason="the tiny ONNX model is exported with torch")
    from tinymodel import export_tiny_onnx

    onnx = export_tiny_onnx(tmp_path / "model.onnx", size=64)
    info = build_engine(onnx, tmp_path / "model.fp32.engine",
                        EngineBuildConfig(precision="fp32", min_batch=1, opt_batch=2, max_batch=4,
                                          timing_cache=str(tmp_path / "tc.cache")), cuda=cuda)
    import onnxruntime as ort

    batch = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    ref = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(["probs"], {"image": batch})[0]
    with TensorRTBackend(info.path) as backend:
        out = backend.infer(batch)
    np.testing.assert_allclose(out["probs"], ref, atol=1e-4)  # FP32 engine (TF32 off) vs ORT CPU FP32


@pytest.mark.parametrize("option, value", [
    ("--min-batch", "0"), ("--opt-batch", "-1"), ("--max-batch", "0"), ("--workspace", "0"), ("--calib-batch", "0"),
    ("--calib-max-images", "0"), ("--opt-level", "6"), ("--opt-level", "-1"), ("--device", "-1"),
])
def test_cli_build_engine_refuses_out_of_range_numbers_before_looking_for_tensorrt(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    # A usage error (exit 2) naming the option and the value, from the command line itself: no TensorRT is
    # installed here, so a later refusal would have said "install TensorRT" first and hidden the typo.
    rc, out, err = _cli(["build-engine", str(_bundle(tmp_path)), option, value], capsys)
    assert rc == 2
    assert option in err and value in err and "range" in err
    assert "tensorrt" not in err.lower()
