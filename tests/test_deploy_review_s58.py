"""The deployment flow as an engineer takes a checkpoint to devices (session 58 review, helper-235): INT8 files,
validation reports, signing, Triton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_review_fixes_s30 import _with_verdict
from test_triton import bundle  # noqa: F401 - module fixture: FP32 + INT8 ONNX + an engine, no parity records
from uopsl.export.triton import REPO_MARKER, write_triton_repository


def test_a_file_that_failed_on_another_backend_is_not_served_on_the_gpu_either(
        bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """--include-unvalidated served an INT8 file that had FAILED on ort-cpu as a GPU model, its parameter
    reading "not validated: ... (validated on ort-cpu ...)", though the help says a failed file is never
    served."""
    b = _with_verdict(bundle, tmp_path / "b", "FAIL")
    repo = write_triton_repository(b, tmp_path / "r", onnx_device="gpu", include_unvalidated=True)
    marker = json.loads((repo / REPO_MARKER).read_text())
    assert "uopsl_int8" not in marker["models"] and not (repo / "uopsl_int8").exists()
    why = marker["left_out"]["model.int8.onnx"]
    assert why.startswith("failed parity validation on ort-cpu (Triton would run it on ort-cuda; no PASS on "
                          "ort-cuda)"), why
    # A PASS on ort-cpu is not a failure: the GPU model is served when asked, marked not validated there.
    ok = _with_verdict(bundle, tmp_path / "ok", "PASS")
    repo2 = write_triton_repository(ok, tmp_path / "r2", onnx_device="gpu", include_unvalidated=True)
    assert "uopsl_int8" in json.loads((repo2 / REPO_MARKER).read_text())["models"]


def test_a_failed_gate_well_below_the_limit_is_not_said_to_be_at_it() -> None:
    """The headroom note said "the error is at the gate's limit, where a file fails about as often as it passes"
    for an error 5.5 dB below the limit whose failure had a chance of 0.1 under the model."""
    import numpy as np

    from uopsl.export.parity_metrics import _headroom_entry, error_std_allowed

    margin = np.random.default_rng(1).uniform(-3, 3, 335)
    z = np.random.default_rng(2).normal(0, 1, 335)
    error = 0.5 * error_std_allowed(margin, 3.35) * z / np.sqrt(np.mean(z * z))  # about 6 dB below the limit
    e = _headroom_entry(margin, error, 4, 3.35, "logit")
    assert e["precision_needed_db"] is None and e["changes_chance"] >= 0.05, e
    assert "dB below the gate's limit" in e["model_note"] and "an unlucky draw" in e["model_note"], e["model_note"]
    assert "at the gate's limit" not in e["model_note"] and "underpredicts" not in e["model_note"]


def test_a_re_make_command_keeps_the_options_the_file_was_made_with() -> None:
    """`validate --per-layer` and `calibrate`'s stale-file warning suggested `uopsl quantize BUNDLE --variant cpu
    --images ... --exclude <new layers>`: the layers an --auto-exclude run had kept in float were quantized again
    by it, and a --no-bias-correction or --reduce-range file was re-made another way."""
    from uopsl.export.layerwise import LayerwiseReport
    from uopsl.export.quantize import remake_options

    info = {"variant": "cpu", "per_channel": True, "float_head": True, "bias_corrected_layers": 0, "fitted_on": {},
            "excluded_nodes": ["/Gather", "/trunk/conv_stem/Conv", "/trunk/blocks.0.0/conv_dw/Conv", "/head/MatMul"],
            "auto_excluded": ["/trunk/conv_stem/Conv", "/trunk/blocks.0.0/conv_dw/Conv"],
            "weight_rounding": "nearest", "reduce_range": True}
    # Every node kept in float, a non-layer one given by the user among them (a review of the first version
    # dropped all but /trunk/ nodes); nearest rounding without bias correction needs no images.
    flags = remake_options(info)
    assert flags == ("--variant cpu --exclude /Gather,/trunk/conv_stem/Conv,/trunk/blocks.0.0/conv_dw/Conv,"
                     "/head/MatMul --rounding nearest --no-bias-correction --reduce-range"), flags
    rep = LayerwiseReport(float_model="m.onnx", quantized_model="m.int8.onnx", images=8, layers=(), outputs={},
                          suggested_exclude=("/trunk/blocks.1.0/conv_pw/Conv",), sqnr_threshold_db=20.0,
                          min_drop_db=3.0, matched_tensors=0)
    cmd = rep.suggested_command("b", "cpu", {**info, "bias_corrected_layers": 47,
                                             "fitted_on": {"bias_correction": {"images": 32}}})
    assert cmd == ("uopsl quantize b --variant cpu --exclude /Gather,/trunk/conv_stem/Conv,"
                   "/trunk/blocks.0.0/conv_dw/Conv,/head/MatMul,/trunk/blocks.1.0/conv_pw/Conv --rounding nearest "
                   "--reduce-range --images CALIBRATION_IMAGES"), cmd
    trt = remake_options({"variant": "trt", "per_channel": False, "float_head": False, "bias_corrected_layers": 3,
                          "excluded_nodes": ["/head/MatMul"], "weight_rounding": "gptq",
                          "fitted_on": {"rounding": {"images": 8}}})
    assert trt == ("--variant trt --per-tensor --quantize-head --exclude /head/MatMul --rounding-images 8 "
                   "--images IMAGES"), trt  # gptq: the default rounding
    # An entry without a recorded variant takes the caller's (its precision's), not cpu
    assert rep.suggested_command("b", "trt", {}).startswith("uopsl quantize b --variant trt "), \
        rep.suggested_command("b", "trt", {})


def test_signing_with_the_public_key_says_so(bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    from uopsl.runtime.errors import ConfigError
    from uopsl.runtime.signing import generate_keypair, sign_bundle

    _private, public, _key_id = generate_keypair(tmp_path / "keys")
    with pytest.raises(ConfigError, match=r"is a public key; signing needs the private key of the pair"):
        sign_bundle(bundle, public)
    assert not (bundle / "signature.json").exists()


def test_a_signed_bundle_changed_since_signing_says_so_without_a_trusted_key(
        bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """`uopsl-screen verify` without a key said only "not checked" for a bundle whose manifest had changed after
    it was signed."""
    import shutil

    from uopsl.runtime.bundle import read_manifest, write_manifest
    from uopsl.runtime.signing import check_signature, generate_keypair, sign_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    private, _public, _kid = generate_keypair(tmp_path / "keys")
    sign_bundle(b, private)
    assert check_signature(b).problem == "not checked (no trusted key given)"  # as signed: nothing more to say
    m = read_manifest(b)
    write_manifest(b, type(m)(**{**m.__dict__, "notes": {**m.notes, "edited": "1"}}))
    problem = check_signature(b).problem
    assert problem.startswith("not checked (no trusted key given); and the bundle is not what was signed: "
                              "manifest field(s) notes changed since signing"), problem


def test_a_failed_int8_file_gets_a_next_step() -> None:
    from uopsl.train.commands.validate import int8_next_step

    fail = {"name": "ort-cpu:model.int8.onnx", "precision": "int8-qdq-u8", "verdict": "FAIL", "passed": False}
    ok = {"name": "ort-cpu:model.onnx", "precision": "fp32", "verdict": "FAIL", "passed": False}
    said = int8_next_step({"candidates": [fail, ok], "per_layer": {}})
    assert said.startswith("model.int8.onnx failed: the same command with --per-layer"), said
    assert "--auto-exclude N" in said and "another --method" in said
    assert int8_next_step({"candidates": [ok], "per_layer": {}}) == ""  # FP32 failing: not an INT8 matter
    assert int8_next_step({"candidates": [fail], "per_layer": {"model.int8.onnx": {}}}) == ""  # already said
    assert int8_next_step({"candidates": [{**fail, "verdict": "PASS", "passed": True}], "per_layer": {}}) == ""
    engine = {"name": "tensorrt:model.int8.engine", "precision": "int8", "verdict": "FAIL", "passed": False}
    assert int8_next_step({"candidates": [engine], "per_layer": {}}) == ""  # --per-layer skips engines


def test_info_names_an_int8_file_quantized_from_another_table() -> None:
    """`calibrate` warned once that the INT8 files came from another table; an identical rerun, `info` and
    `validate` said nothing after that."""
    from types import SimpleNamespace

    from uopsl.runtime.cli import _other_table

    def entry(precision: str, made_from: str | None) -> SimpleNamespace:
        return SimpleNamespace(precision=precision, info={} if made_from is None else {"calibration_sha256": made_from})

    assert "quantized from another calibration table" in _other_table(entry("int8-qdq-u8", "old"), {"new"})
    assert _other_table(entry("int8-qdq-u8", "new"), {"new"}) == ""
    assert _other_table(entry("int8-qdq-s8", None), {"new"}) == ""  # made before the table's digest was kept
    assert _other_table(entry("int8-qdq-u8", "old"), set()) == ""  # no table in the bundle: nothing to compare
    assert _other_table(entry("fp32", "old"), {"new"}) == ""


@pytest.mark.parametrize("manifest_part", ["x", [1, 2], 5, [{}], None])
def test_a_malformed_signature_without_a_trusted_key_is_reported_not_raised(
        bundle: Path, tmp_path: Path, manifest_part: object) -> None:  # noqa: F811
    """A review of the change: reading the unauthenticated content raised AttributeError/TypeError ("a bug",
    exit 2) for a signature.json whose content was not the expected shape."""
    import shutil

    from uopsl.runtime.signing import SIGNATURE_FILE, check_signature, generate_keypair, sign_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    private, _public, _kid = generate_keypair(tmp_path / "keys")
    sign_bundle(b, private)
    doc = json.loads((b / SIGNATURE_FILE).read_text())
    doc["payload"]["content"]["manifest"] = manifest_part
    (b / SIGNATURE_FILE).write_text(json.dumps(doc))
    problem = check_signature(b).problem
    assert problem.startswith("not checked (no trusted key given)"), problem
    assert "the signed content is malformed" in problem, problem


@pytest.mark.parametrize("backends", [None, [1], "ort-cpu"])
def test_onnx_reference_with_a_malformed_record_is_a_config_error(
        bundle: Path, tmp_path: Path, backends: object) -> None:  # noqa: F811
    import shutil

    from uopsl.export.bundle_writer import add_file
    from uopsl.export.onnx_reference import check_reference_chain
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.errors import ConfigError

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    e = read_manifest(b).file("model.onnx")
    add_file(b, None, e.path, e.kind, e.precision, info={**e.info, "parity": {"sha256": e.sha256,
                                                                              "backends": backends}})
    with pytest.raises(ConfigError, match="--onnx-reference needs model.onnx to carry a recorded PASS"):
        check_reference_chain(b)
