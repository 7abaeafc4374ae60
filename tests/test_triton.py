"""Triton model repository from a bundle: layout, config.pbtxt content and syntax, byte-identical models.

The bundle is built the way ``uopsl export`` builds one (tiny UOPSL model ->
DeployModel -> export_onnx -> write_bundle), plus an INT8 QDQ variant and a
TensorRT engine file whose "plan" is stand-in bytes (no TensorRT needed: the
writer only strips the uopsl header and copies the plan).

config.pbtxt is parsed with protobuf's own text-format parser against a subset
of Triton's ``ModelConfig`` schema, transcribed field for field (names,
numbers, enum values) from triton-inference-server/common
``protobuf/model_config.proto``: an unknown field, a misspelt enum or a wrong
type fails the parse, as it fails Triton's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinybundle import quantize_qdq_u8
from trainhelpers import CLASSES, tiny_model
from uopsl.export.bundle_writer import add_file, write_bundle
from uopsl.export.onnx_export import export_onnx
from uopsl.export.triton import write_triton_repository
from uopsl.runtime.bundle import ClassSpec, read_manifest
from uopsl.runtime.engine_header import EngineHeader, write_engine
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.train.model import DeployModel

SIZE = 64
THRESHOLDS = (0.4, 0.55, 0.7)
REFERABLE = (False, True, True)
FAKE_PLAN = bytes(range(256)) * 8


# -- Triton's ModelConfig (subset) as a protobuf schema ------------------------------------
def _model_config_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="uopsl_test_model_config.proto", package="inference",
                                             syntax="proto3")

    def enum(parent: Any, name: str, values: dict[str, int]) -> None:
        e = parent.enum_type.add(name=name)
        for n, v in values.items():
            e.value.add(name=n, number=v)

    def field(msg: Any, name: str, number: int, ftype: int, label: int = F.LABEL_OPTIONAL, type_name: str = "") -> None:
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name

    rep = F.LABEL_REPEATED
    enum(fdp, "DataType", {
        "TYPE_INVALID": 0, "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4, "TYPE_UINT64": 5,
        "TYPE_INT8": 6, "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11,
        "TYPE_FP64": 12, "TYPE_STRING": 13, "TYPE_BF16": 14,
    })
    group = fdp.message_type.add(name="ModelInstanceGroup")
    enum(group, "Kind", {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2, "KIND_MODEL": 3})
    sec = group.nested_type.add(name="SecondaryDevice")
    enum(sec, "SecondaryDeviceKind", {"KIND_NVDLA": 0})
    field(sec, "kind", 1, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind")
    field(sec, "device_id", 2, F.TYPE_INT64)
    field(group, "name", 1, F.TYPE_STRING)
    field(group, "kind", 4, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")
    field(group, "count", 2, F.TYPE_INT32)
    field(group, "gpus", 3, F.TYPE_INT32, rep)
    field(group, "secondary_devices", 8, F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup.SecondaryDevice")
    field(group, "profile", 5, F.TYPE_STRING, rep)
    inp = fdp.message_type.add(name="ModelInput")
    field(inp, "name", 1, F.TYPE_STRING)
    field(inp, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    field(inp, "dims", 4, F.TYPE_INT64, rep)
    out = fdp.message_type.add(name="ModelOutput")
    field(out, "name", 1, F.TYPE_STRING)
    field(out, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    field(out, "dims", 3, F.TYPE_INT64, rep)
    field(out, "label_filename", 4, F.TYPE_STRING)
    dyn = fdp.message_type.add(name="ModelDynamicBatching")
    field(dyn, "preferred_batch_size", 1, F.TYPE_INT32, rep)
    field(dyn, "max_queue_delay_microseconds", 2, F.TYPE_UINT64)
    opt = fdp.message_type.add(name="ModelOptimizationPolicy")
    acc_set = opt.nested_type.add(name="ExecutionAccelerators")
    acc = acc_set.nested_type.add(name="Accelerator")
    acc_entry = acc.nested_type.add(name="ParametersEntry")
    acc_entry.options.map_entry = True
    field(acc_entry, "key", 1, F.TYPE_STRING)
    field(acc_entry, "value", 2, F.TYPE_STRING)
    field(acc, "name", 1, F.TYPE_STRING)
    field(acc, "parameters", 2, F.TYPE_MESSAGE, rep,
          ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator.ParametersEntry")
    accel_type = ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator"
    field(acc_set, "gpu_execution_accelerator", 1, F.TYPE_MESSAGE, rep, accel_type)
    field(acc_set, "cpu_execution_accelerator", 2, F.TYPE_MESSAGE, rep, accel_type)
    field(opt, "execution_accelerators", 4, F.TYPE_MESSAGE,
          type_name=".inference.ModelOptimizationPolicy.ExecutionAccelerators")
    par = fdp.message_type.add(name="ModelParameter")
    field(par, "string_value", 1, F.TYPE_STRING)
    cfg = fdp.message_type.add(name="ModelConfig")
    entry = cfg.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_MESSAGE, type_name=".inference.ModelParameter")
    field(cfg, "name", 1, F.TYPE_STRING)
    field(cfg, "platform", 2, F.TYPE_STRING)
    field(cfg, "backend", 17, F.TYPE_STRING)
    field(cfg, "max_batch_size", 4, F.TYPE_INT32)
    field(cfg, "input", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInput")
    field(cfg, "output", 6, F.TYPE_MESSAGE, rep, ".inference.ModelOutput")
    field(cfg, "dynamic_batching", 11, F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching")
    field(cfg, "instance_group", 7, F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup")
    field(cfg, "optimization", 12, F.TYPE_MESSAGE, type_name=".inference.ModelOptimizationPolicy")
    field(cfg, "default_model_filename", 8, F.TYPE_STRING)
    field(cfg, "parameters", 14, F.TYPE_MESSAGE, rep, ".inference.ModelConfig.ParametersEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    desc = pool.FindMessageTypeByName("inference.ModelConfig")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


ModelConfig = _model_config_class()


def parse_text(text: str) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(text, ModelConfig())


def parse_config(path: Path) -> Any:
    return parse_text(path.read_text(encoding="utf-8"))


def enum_name(message: Any, field: str) -> str:
    return str(message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(message, field)].name)


def test_the_schema_check_has_teeth() -> None:
    from google.protobuf import text_format

    good = 'name: "m" max_batch_size: 2 instance_group [ { kind: KIND_GPU } ]'
    assert parse_text(good).max_batch_size == 2
    for bad in (good.replace("KIND_GPU", "KIND_GPUS"), good.replace("max_batch_size", "max_batch"),
                'name: "m" input [ { name: "x" dims: [ 3, "4" ] } ]', 'name: "m" dynamic_batching { delay: 1 }'):
        with pytest.raises(text_format.ParseError):
            parse_text(bad)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FP32 ONNX + INT8 QDQ ONNX + a TensorRT engine file (stand-in plan), all in the manifest."""
    root = tmp_path_factory.mktemp("triton")
    model, meta = tiny_model()
    deploy = DeployModel(model.eval(), SIZE)
    export_onnx(deploy, root / "fp32.onnx", SIZE)
    classes = [ClassSpec(n, (f"{n} phrase",), t, r) for n, t, r in zip(CLASSES, THRESHOLDS, REFERABLE)]
    out = root / "bundle"
    write_bundle(out, root / "fp32.onnx", classes, "sigmoid", meta.preprocess, class_bank=model.class_text.numpy(),
                 site_map_size=(deploy.h, deploy.w), opset=17, backbone="resnet18")
    quantize_qdq_u8(out / "model.onnx", root / "int8.onnx", SIZE)
    add_file(out, root / "int8.onnx", "model.int8.onnx", "onnx", "int8-qdq-u8")
    header = EngineHeader(tensorrt_version="10.13.0.35", gpu_name="NVIDIA Jetson AGX Orin", compute_capability="8.7",
                          precision="fp16", source_onnx="model.onnx", source_onnx_sha256=_sha(out / "model.onnx"),
                          min_batch=1,
                          opt_batch=2, max_batch=4, input_name="image", input_shape=(SIZE, SIZE, 3))
    write_engine(out / "model.fp16.engine", FAKE_PLAN, header)
    add_file(out, None, "model.fp16.engine", "engine", "fp16")
    return out


def _sha(path: Path) -> str:
    from uopsl.runtime.fsio import sha256_file

    return sha256_file(path)


@pytest.fixture(scope="module")
def repo(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The fixture's INT8 file and engine carry no parity record: served only when asked to.
    return write_triton_repository(bundle, tmp_path_factory.mktemp("repo") / "models", model_name="retina",
                                   include_unvalidated=True)


def _onnx_dims(path: Path) -> dict[str, list[int]]:
    import onnx

    g = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            for v in list(g.input) + list(g.output)}


# -- tests ---------------------------------------------------------------------------------
def test_layout_one_model_per_servable_file(repo: Path, bundle: Path) -> None:
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert models == ["retina", "retina_fp16_plan", "retina_int8"]
    for name, model_file in (("retina", "model.onnx"), ("retina_int8", "model.onnx"),
                             ("retina_fp16_plan", "model.plan")):
        folder = repo / name
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "labels.txt", "uopsl_manifest.json"]
        assert [p.name for p in (folder / "1").iterdir()] == [model_file]
        assert (folder / "labels.txt").read_text().splitlines() == list(CLASSES)
        assert (folder / "uopsl_manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
    marker = json.loads((repo / "uopsl_triton.json").read_text())
    assert marker["models"]["retina_int8"] == {
        "platform": "onnxruntime_onnx", "source": "model.int8.onnx", "precision": "int8-qdq-u8",
        "parity": "not validated: ort-cpu: model.int8.onnx has no parity record (run `uopsl validate` on this "
                  "bundle)"}
    assert marker["models"]["retina"]["parity"] == "" and marker["left_out"] == {}
    assert marker["options"]["include_unvalidated"] is True and marker["options"]["max_batch"] == 8
    assert not [p for p in repo.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_onnx_files_are_byte_identical_and_plan_is_stripped(repo: Path, bundle: Path) -> None:
    assert (repo / "retina/1/model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert (repo / "retina_int8/1/model.onnx").read_bytes() == (bundle / "model.int8.onnx").read_bytes()
    assert (repo / "retina_fp16_plan/1/model.plan").read_bytes() == FAKE_PLAN
    assert (bundle / "model.fp16.engine").read_bytes().endswith(FAKE_PLAN)


@pytest.mark.parametrize("name,source,kind", [("retina", "model.onnx", "KIND_AUTO"),
                                              ("retina_int8", "model.int8.onnx", "KIND_CPU")])
def test_onnx_config_matches_the_graph_and_manifest(repo: Path, bundle: Path, name: str, source: str,
                                                    kind: str) -> None:
    cfg = parse_config(repo / name / "config.pbtxt")
    dims = _onnx_dims(bundle / source)
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert [(i.name, enum_name(i, "data_type")) for i in cfg.input] == [("image", "TYPE_UINT8")]
    assert list(cfg.input[0].dims) == dims["image"][1:] == [SIZE, SIZE, 3]
    assert dims["image"][0] == -1  # the batch axis Triton adds is dynamic in the graph
    k = len(CLASSES)
    expected = {"probs": [k], "logits": [k], "site_maps": [k, 2, 2]}
    assert {o.name: list(o.dims) for o in cfg.output} == expected
    assert {o: dims[o][1:] for o in expected} == expected
    assert {enum_name(o, "data_type") for o in cfg.output} == {"TYPE_FP32"}
    assert [o.label_filename for o in cfg.output] == ["", "", ""]  # sigmoid: top-n scores are not calls
    assert cfg.HasField("dynamic_batching")
    assert [(g.count, enum_name(g, "kind")) for g in cfg.instance_group] == [(1, kind)]
    p = {key: v.string_value for key, v in cfg.parameters.items()}
    assert json.loads(p["uopsl_classes"]) == list(CLASSES)
    assert json.loads(p["uopsl_thresholds"]) == pytest.approx(THRESHOLDS)
    assert json.loads(p["uopsl_referable"]) == list(REFERABLE)
    assert json.loads(p["uopsl_preprocess"])["size"] == SIZE
    m = read_manifest(bundle)
    assert p["uopsl_source_sha256"] == m.file(source).sha256 and p["uopsl_precision"] == m.file(source).precision
    # The caution a client must show with results (this bundle states no use).
    assert json.loads(p["uopsl_intended_use"]) == {**m.intended_use.to_dict(), "warning": m.intended_use.warning()}


def test_engine_config_is_a_gpu_plan_bounded_by_its_profile(repo: Path) -> None:
    cfg = parse_config(repo / "retina_fp16_plan" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 4  # the profile's max, below the requested 8
    assert [enum_name(g, "kind") for g in cfg.instance_group] == ["KIND_GPU"]
    assert list(cfg.input[0].dims) == [SIZE, SIZE, 3]
    p = {key: v.string_value for key, v in cfg.parameters.items()}
    assert (p["uopsl_tensorrt_version"], p["uopsl_compute_capability"]) == ("10.13.0.35", "8.7")


def test_options_reach_the_config(bundle: Path, tmp_path: Path) -> None:
    repo = write_triton_repository(bundle, tmp_path / "r", max_batch=2, instance_count=3, dynamic_batching=False,
                                   onnx_device="gpu", include_unvalidated=True)
    cfg = parse_config(repo / "uopsl" / "config.pbtxt")  # the manifest's model name
    assert cfg.max_batch_size == 2 and not cfg.HasField("dynamic_batching")
    assert [(g.count, enum_name(g, "kind")) for g in cfg.instance_group] == [(3, "KIND_GPU")]
    assert enum_name(parse_config(repo / "uopsl_int8" / "config.pbtxt").instance_group[0], "kind") == "KIND_GPU"
    repo2 = write_triton_repository(bundle, tmp_path / "r2", max_queue_delay_us=500)
    assert parse_config(repo2 / "uopsl" / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds == 500


def test_gpu_indices_reach_the_gpu_models_only(bundle: Path, tmp_path: Path) -> None:
    """An engine runs only on the GPU model it was built on: a server with GPUs of several kinds lists them."""
    repo = write_triton_repository(bundle, tmp_path / "r", gpus=[0, 2], include_unvalidated=True)
    plan = parse_config(repo / "uopsl_fp16_plan" / "config.pbtxt").instance_group[0]
    assert enum_name(plan, "kind") == "KIND_GPU" and list(plan.gpus) == [0, 2]
    for cpu_or_auto in ("uopsl", "uopsl_int8"):  # KIND_AUTO / KIND_CPU: they may run on the CPU
        assert list(parse_config(repo / cpu_or_auto / "config.pbtxt").instance_group[0].gpus) == []
    on_gpu = write_triton_repository(bundle, tmp_path / "g", gpus=(g for g in [1]), onnx_device="gpu",
                                     include_unvalidated=True)  # any iterable, a generator included
    assert list(parse_config(on_gpu / "uopsl" / "config.pbtxt").instance_group[0].gpus) == [1]
    every = write_triton_repository(bundle, tmp_path / "all", include_unvalidated=True)
    assert list(parse_config(every / "uopsl_fp16_plan" / "config.pbtxt").instance_group[0].gpus) == []


def test_dla_engine_gets_a_secondary_device(bundle: Path, tmp_path: Path) -> None:
    b = shutil.copytree(bundle, tmp_path / "b")
    header = EngineHeader(tensorrt_version="8.6.2", gpu_name="Orin", compute_capability="8.7", precision="int8",
                          source_onnx="model.onnx", source_onnx_sha256=_sha(b / "model.onnx"), min_batch=1,
                          opt_batch=1, max_batch=1, dla_core=1)
    write_engine(b / "model.int8.dla1.engine", b"plan", header)
    add_file(b, None, "model.int8.dla1.engine", "engine", "int8")
    cfg = parse_config(write_triton_repository(b, tmp_path / "r", include_unvalidated=True)
                       / "uopsl_int8_dla1_plan" / "config.pbtxt")
    assert cfg.max_batch_size == 1
    assert [(enum_name(d, "kind"), d.device_id) for d in cfg.instance_group[0].secondary_devices] == [("KIND_NVDLA", 1)]


def test_a_repository_inside_its_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    """``uopsl triton b --out b/tr`` wrote a second, unlisted copy of the model files into the bundle that
    devices copy and verify whole (session 47's review); nothing is written."""
    from uopsl.runtime.errors import ConfigError

    b = shutil.copytree(bundle, tmp_path / "b")
    before = sorted(p.name for p in b.iterdir())
    with pytest.raises(ConfigError, match=r"is inside the bundle .*choose a folder outside the bundle"):
        write_triton_repository(b, b / "tr")
    assert sorted(p.name for p in b.iterdir()) == before


@pytest.mark.parametrize("victim", ["model.int8.onnx", "model.fp16.engine", "class_bank.npy"])
def test_tampered_bundle_is_refused_and_nothing_is_written(bundle: Path, tmp_path: Path, victim: str) -> None:
    b = shutil.copytree(bundle, tmp_path / "b")
    data = bytearray((b / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=victim.replace(".", r"\.")):
        write_triton_repository(b, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_existing_repository_needs_overwrite_and_a_foreign_folder_is_never_replaced(bundle: Path,
                                                                                    tmp_path: Path) -> None:
    repo = write_triton_repository(bundle, tmp_path / "r")
    with pytest.raises(ConfigError, match="overwrite"):
        write_triton_repository(bundle, repo)
    (repo / "uopsl" / "stale.txt").write_text("x")
    write_triton_repository(bundle, repo, model_name="again", overwrite=True, include_unvalidated=True)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["again", "again_fp16_plan", "again_int8"]
    foreign = tmp_path / "foreign"
    (foreign / "someone_elses_model" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not written by uopsl"):
        write_triton_repository(bundle, foreign, overwrite=True)
    assert (foreign / "someone_elses_model" / "1").is_dir()


@pytest.mark.parametrize("kwargs,match", [
    ({"max_batch": 0}, "max_batch"), ({"instance_count": 0}, "instance_count"),
    ({"onnx_device": "tpu"}, "onnx_device"), ({"model_name": "../up"}, "model name"),
    ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
    ({"gpus": [-1]}, "gpus"), ({"gpus": [0, 0]}, "gpus"), ({"gpus": [True]}, "gpus"),
])
def test_bad_arguments_are_config_errors(bundle: Path, tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        write_triton_repository(bundle, tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


def test_engine_built_for_another_input_size_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = shutil.copytree(bundle, tmp_path / "b")
    header = EngineHeader(tensorrt_version="10.13.0.35", gpu_name="g", compute_capability="8.9", precision="fp32",
                          source_onnx="model.onnx", source_onnx_sha256=_sha(b / "model.onnx"), min_batch=1,
                          opt_batch=1, max_batch=8, input_shape=(320, 320, 3))
    write_engine(b / "model.fp32.engine", b"plan", header)
    add_file(b, None, "model.fp32.engine", "engine", "fp32")
    with pytest.raises(BundleError, match=r"model\.fp32\.engine.*input shape \[320, 320, 3\]"):
        write_triton_repository(b, tmp_path / "r")


def test_strings_are_escaped_for_text_format(bundle: Path, tmp_path: Path) -> None:
    b = shutil.copytree(bundle, tmp_path / "b")
    m = read_manifest(b)
    from dataclasses import replace

    from uopsl.runtime.bundle import write_manifest

    odd = ('quote"d', "back\\slash", "ümlaut\ttab")
    write_manifest(b, replace(m, classes=tuple(replace(c, name=n) for c, n in zip(m.classes, odd))))
    cfg = parse_config(write_triton_repository(b, tmp_path / "r") / "uopsl" / "config.pbtxt")
    assert json.loads(cfg.parameters["uopsl_classes"].string_value) == list(odd)
    assert np.isclose(float(cfg.parameters["uopsl_referral_threshold"].string_value), m.referral_threshold)


# -- session-14 review: serve what the runtime would run; engines Triton can batch ------------------------------
def _add_engine(b: Path, path: str, precision: str = "fp16", **fields: Any) -> None:
    values: dict[str, Any] = {"tensorrt_version": "10.13.0.35", "gpu_name": "g", "compute_capability": "8.7",
                              "precision": precision, "source_onnx": "model.onnx",
                              "source_onnx_sha256": _sha(b / "model.onnx"), "min_batch": 1, "opt_batch": 1,
                              "max_batch": 8, "input_shape": (SIZE, SIZE, 3), **fields}
    write_engine(b / path, b"plan", EngineHeader(**values))
    add_file(b, None, path, "engine", precision)


def test_unvalidated_and_stale_files_are_left_out(bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The repository served INT8/FP16 files that never passed `uopsl validate`, and engines of an older model."""
    b = shutil.copytree(bundle, tmp_path / "b")
    _add_engine(b, "model.old.engine", "fp32", source_onnx_sha256="0" * 64)
    with caplog.at_level(logging.WARNING, logger="uopsl.export.triton"):
        repo = write_triton_repository(b, tmp_path / "r")
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["uopsl"]
    left = json.loads((repo / "uopsl_triton.json").read_text())["left_out"]
    assert sorted(left) == ["model.fp16.engine", "model.int8.onnx", "model.old.engine"]
    assert left["model.int8.onnx"].startswith("not validated where Triton runs it (ort-cpu): ort-cpu: model.int8.onnx "
                                              "has no parity record")
    assert left["model.old.engine"].startswith("stale: built from model.onnx with sha256 000000000000")
    assert "--include-unvalidated" in caplog.text
    again = write_triton_repository(b, tmp_path / "r2", include_unvalidated=True)  # never the stale engine
    assert "uopsl_old_plan" not in {p.name for p in again.iterdir()}


def test_a_fixed_batch_engine_is_served_without_triton_batching(bundle: Path, tmp_path: Path) -> None:
    """A DLA engine of batch 4 got max_batch_size 4 and dynamic batching: every lone request failed."""
    b = shutil.copytree(bundle, tmp_path / "b")
    _add_engine(b, "model.int8.dla0.engine", "int8", min_batch=4, opt_batch=4, max_batch=4, dla_core=0)
    _add_engine(b, "model.ranged.engine", "fp32", min_batch=2, opt_batch=4, max_batch=8)
    repo = write_triton_repository(b, tmp_path / "r", include_unvalidated=True)
    cfg = parse_config(repo / "uopsl_int8_dla0_plan" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, SIZE, SIZE, 3]
    assert {o.name: list(o.dims)[0] for o in cfg.output} == {"probs": 4, "logits": 4, "site_maps": 4}
    left = json.loads((repo / "uopsl_triton.json").read_text())["left_out"]
    assert "starts at batch 2" in left["model.ranged.engine"]


def test_version_compatible_engines_say_what_triton_needs(bundle: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    b = shutil.copytree(bundle, tmp_path / "b")
    _add_engine(b, "model.vc.engine", "fp32", version_compatible=True)
    with caplog.at_level(logging.INFO, logger="uopsl.export.triton"):
        repo = write_triton_repository(b, tmp_path / "r", include_unvalidated=True)
    p = parse_config(repo / "uopsl_vc_plan" / "config.pbtxt").parameters
    assert p["uopsl_version_compatible"].string_value == "true"
    assert "--backend-config=tensorrt,version-compatible=true" in caplog.text


def test_a_softmax_head_keeps_its_label_file(bundle: Path, tmp_path: Path) -> None:
    from uopsl.runtime.bundle import write_manifest

    b = shutil.copytree(bundle, tmp_path / "b")
    write_manifest(b, dataclasses.replace(read_manifest(b), head="softmax"))
    cfg = parse_config(write_triton_repository(b, tmp_path / "r") / "uopsl" / "config.pbtxt")
    assert [o.label_filename for o in cfg.output] == ["labels.txt", "", ""]


def test_the_triton_command(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.clikit import main_entry
    from uopsl.train.cli import cli

    def main(argv: list[str]) -> int:
        return main_entry(cli, argv, prog_name="uopsl")

    rc = main(["triton", str(bundle), "--out", str(tmp_path / "r"), "--model-name", "eye", "--max-batch", "2"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Triton model repository" in out and ": eye" in out
    assert "left out model.int8.onnx: not validated" in err
    assert parse_config(tmp_path / "r" / "eye" / "config.pbtxt").max_batch_size == 2
    rc = main(["triton", str(bundle), "--out", str(tmp_path / "r"), "--include-unvalidated", "--force"])
    assert rc == 0 and (tmp_path / "r" / "uopsl_int8").is_dir()
    rc = main(["triton", str(bundle), "--out", str(tmp_path / "r"), "--gpus", "0, 3", "--include-unvalidated", "--force"])
    assert rc == 0 and list(parse_config(tmp_path / "r" / "uopsl_fp16_plan" / "config.pbtxt").instance_group[0].gpus) == [0, 3]
    capsys.readouterr()
    assert main(["triton", str(bundle), "--out", str(tmp_path / "r2"), "--gpus", "first"]) == 2
    assert "--gpus" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_the_documented_triton_client_steps_give_the_screeners_decisions(bundle: Path, tmp_path: Path) -> None:
    """docs/deployment.md, "Serving with Triton": preprocess, gate, infer, decide; ONNX Runtime stands in for Triton."""
    import onnxruntime as ort

    from imagekit import draw_fake_fundus
    from uopsl.runtime.api import Screener
    from uopsl.runtime.preprocess import preprocess, read_bytes
    from uopsl.runtime.quality import assess

    import cv2

    photo = tmp_path / "eye.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(draw_fake_fundus(256, seed=11), cv2.COLOR_RGB2BGR))
    manifest = read_manifest(bundle)
    pre = preprocess(read_bytes(photo), manifest.preprocess)
    verdict = assess(pre)
    session = ort.InferenceSession(str(write_triton_repository(bundle, tmp_path / "r") / "uopsl" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {manifest.input_name: pre.image[None]})[0]
    positive, refer = manifest.decide(probs)
    with Screener(bundle, backend="ort-cpu") as screener:
        r = screener.screen(photo)
    assert verdict.gradable and r.gradable
    assert tuple(c for c, f in zip(manifest.class_names, positive[0]) if f) == r.positive
    assert bool(refer[0]) == r.refer
    assert [r.probs[c] for c in manifest.class_names] == pytest.approx(probs[0].tolist(), abs=1e-6)


def test_the_tensorrt_int8_onnx_asks_for_the_tensorrt_accelerator(bundle: Path, tmp_path: Path) -> None:
    """On Triton's CUDA provider an s8 Q/DQ file runs its Q/DQ pairs in float: correct, but no INT8 speed."""
    b = shutil.copytree(bundle, tmp_path / "b")
    quantize_qdq_u8(b / "model.onnx", tmp_path / "s8.onnx", SIZE)
    add_file(b, tmp_path / "s8.onnx", "model.int8.trt.onnx", "onnx", "int8-qdq-s8")
    repo = write_triton_repository(b, tmp_path / "r", include_unvalidated=True)
    cfg = parse_config(repo / "uopsl_int8_trt" / "config.pbtxt")
    (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and dict(accel.parameters) == {"precision_mode": "INT8",
                                                                   "trt_engine_cache_enable": "1"}
    assert not parse_config(repo / "uopsl_int8" / "config.pbtxt").HasField("optimization")


def test_a_file_is_served_where_it_passed_validation_only(bundle: Path, tmp_path: Path) -> None:
    """The gate asked for a PASS on every recorded backend, not on the one Triton runs the file on."""
    from uopsl.export.bundle_writer import record_parity
    from uopsl.runtime.bundle import PARITY_GATE_DEFAULTS

    from uopsl.runtime.cpuinfo import int8_cpu_class

    ok = {"passed": True, "verdict": "PASS", "reasons": [], "n_images": 150, "gates": dict(PARITY_GATE_DEFAULTS),
          "data": {"spec": "synthetic:test"}, "reference": "PyTorch",
          "machine": {"cpu_int8": int8_cpu_class()}}  # validate keeps the CPU class of a CPU INT8 verdict
    bad = {"passed": False, "verdict": "FAIL", "reasons": ["flip_rate 0.1 > 0.005"]}
    b = shutil.copytree(bundle, tmp_path / "b")
    record_parity(b, {"model.int8.onnx": {"ort-cpu": ok, "openvino": bad}})  # Triton's CPU instance is ORT
    repo = write_triton_repository(b, tmp_path / "r")
    cfg = parse_config(repo / "uopsl_int8" / "config.pbtxt")
    assert cfg.parameters["uopsl_parity"].string_value == "PASS on ort-cpu"
    assert enum_name(cfg.instance_group[0], "kind") == "KIND_CPU"
    # Moved to a GPU, the same file runs on ONNX Runtime's CUDA provider, where it was never validated.
    gpu = write_triton_repository(b, tmp_path / "r2", onnx_device="gpu")
    left = json.loads((gpu / "uopsl_triton.json").read_text())["left_out"]
    assert left["model.int8.onnx"].startswith("not validated where Triton runs it (ort-cuda): ort-cuda: ")
