"""A deliberately broken bundle must fail validation, with the flipped decisions listed.

Two export mistakes that checksums cannot catch (the files are consistent,
just wrong): class prototypes shuffled inside the ONNX graph, and a wrong
preprocessing parameter in the manifest. The bundle's operating thresholds sit
at the median of the reference's probabilities, as for a model whose operating
points were chosen on this very set, so a real error must flip decisions.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from uopsl.export.bundle_writer import add_file
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import read_manifest, write_manifest
from uopsl.train.reference import TorchReference


def _records(paths: list[Path]) -> list[ImageRecord]:
    return [ImageRecord(f"{p.parent.name}/{p.name}", p, (p.parent.name,)) for p in paths]


def _validate(bundle: Path, ckpt: Path, paths: list[Path], out: Path):  # noqa: ANN202 - ParityReport
    return validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), _records(paths), out,
                           ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=200, show_progress=False),
                           label_space=("normal", "a", "b"))


def _assert_fails_with_flips(result, paths: list[Path]) -> dict:  # noqa: ANN001 - ParityReport
    assert not result.passed and result.exit_code == 1
    cand = result.report["candidates"][0]
    flips = cand["clinical"]["flips"]
    assert not cand["passed"] and any(r.startswith("flip_rate") for r in cand["reasons"])
    assert flips["n"] == len(flips["items"]) > 0
    ids = {f"{p.parent.name}/{p.name}" for p in paths}
    for item in flips["items"]:
        assert item["id"] in ids and item["reference_refer"] != item["candidate_refer"]
    html = result.html_path.read_text(encoding="utf-8")
    assert "Flipped referral decisions" in html and flips["items"][0]["id"] in html
    assert "data:image/jpeg;base64," in html  # thumbnails embedded
    return cand


def test_shuffled_prototypes_fail_validation(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                             tmp_path: Path) -> None:
    ckpt, good = tiny_ckpt_bundle
    bundle = Path(shutil.copytree(good, tmp_path / "bundle"))
    model = onnx.load(str(bundle / "model.onnx"))
    k = len(read_manifest(bundle).classes)
    # The prototype matrix tau * E is the (K, d, 1) constant of the head's batched MatMul.
    mm_inputs = {t for n in model.graph.node if n.op_type == "MatMul" for t in n.input}
    protos = [i for i in model.graph.initializer
              if i.name in mm_inputs and len(i.dims) == 3 and i.dims[0] == k and i.dims[2] == 1]
    assert len(protos) == 1, [(i.name, list(i.dims)) for i in protos]
    value = numpy_helper.to_array(protos[0])
    protos[0].CopyFrom(numpy_helper.from_array(np.roll(value, 1, axis=0), protos[0].name))
    onnx.save(model, str(bundle / "model.onnx"))
    add_file(bundle, None, "model.onnx", "onnx", "fp32")  # consistent checksums: an export bug, not tampering
    paths = cast_sets["val"][:48]
    cand = _assert_fails_with_flips(_validate(bundle, ckpt, paths, tmp_path / "out"), paths)
    assert cand["numerical"]["max_abs_prob_diff"] > 1e-3
    # the failure is recorded in the bundle: `auto` will not take this file unasked
    from uopsl.runtime.bundle import parity_status

    entry = read_manifest(bundle).file("model.onnx")
    run = entry.info["parity"]["backends"]["ort-cpu"]
    assert run["passed"] is False and any("flip_rate" in r for r in run["reasons"])
    ok, why = parity_status(entry)
    assert not ok and "failed parity validation" in why


def test_wrong_manifest_preprocessing_fails_validation(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                       tmp_path: Path) -> None:
    ckpt, good = tiny_ckpt_bundle
    bundle = Path(shutil.copytree(good, tmp_path / "bundle"))
    manifest = read_manifest(bundle)
    write_manifest(bundle, replace(manifest, preprocess=replace(manifest.preprocess, clahe=True)))
    paths = cast_sets["val"][:48]
    result = _validate(bundle, ckpt, paths, tmp_path / "out")
    _assert_fails_with_flips(result, paths)
    assert result.report["preprocess"]["differences"] == {"clahe": [False, True]}
    assert "clahe" in result.html_path.read_text(encoding="utf-8")


def test_intact_bundle_passes_on_the_same_images(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                 tmp_path: Path) -> None:
    ckpt, bundle = tiny_ckpt_bundle
    result = _validate(bundle, ckpt, cast_sets["val"][:48], tmp_path / "out")
    assert result.passed and result.report["candidates"][0]["clinical"]["flips"]["n"] == 0
