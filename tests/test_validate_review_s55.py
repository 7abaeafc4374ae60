"""``uopsl validate``: a validation engineer's review (session 55), defects D1 and D2.

D1. validate did not notice images that made the checkpoint (its ``images_seen.json``: training, or the
    validation images its operating thresholds were chosen on): now it warns, says so in ``parity.json``
    (``notes``, ``data.held_out``, ``data.images_seen_in_training``), the PASS is not a release pass, and
    nothing is recorded in the manifest. And a FAIL from a run on fewer than MIN_PARITY_IMAGES images (30
    threshold-choosing images in the review) replaced a 200-image PASS of the FP32 file, which broke
    ``--onnx-reference``: such a FAIL no longer replaces a release-sized PASS (it is still recorded where
    there was no PASS, and a FAIL that is a defect, non-finite outputs, is recorded whatever the size).
D2. Byte-identical copies under other names or patient ids counted as more images (n, the bounds, the
    100-image minimum, one changed decision counted twice): now the first of each content is kept, the copies
    are left out of every figure and listed.

The models are stand-ins as in ``test_validate_signoff.py``: tables keyed by each preprocessed image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_validate_signoff import _bundle, _cand, _checkpoint, _csv, _fake_torch
from validatekit import (  # noqa: F401 - photos, image_keys: module fixtures
    CPU, NAMES, N, PatchedModels, cycled_labels, image_keys, photos, uopsl_validate,
)
from uopsl.export.onnx_reference import check_reference_chain
from uopsl.export.parity_metrics import FAIL, PASS, ParityGates
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import MIN_PARITY_IMAGES, PARITY_KEY, read_manifest
from uopsl.runtime.errors import DataError

VAL = 30  # images whose scores chose the thresholds in the review's quick demo


def _run(bundle: Path, records: Sequence[ImageRecord], models: PatchedModels, out: Path,
         context: Mapping[str, Any] | None = None) -> Any:
    cfg = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), gates=ParityGates(), n_boot=0,
                         show_progress=False)
    return validate_bundle(bundle, models.reference, list(records), out, cfg, label_space=NAMES,
                           context=dict(context or {"data": "test table"}), availability=CPU)


def _records(photos: Sequence[Path], labels: Sequence[tuple[str, ...]],
             patients: Sequence[str | None] | None = None) -> list[ImageRecord]:
    pats = list(patients) if patients is not None else [f"P{i // 2}" for i in range(len(photos))]
    return [ImageRecord(p.stem, p, lab, patient=pid) for p, lab, pid in zip(photos, labels, pats)]


def _digest(path: Path) -> int:
    """How training records a photograph: the first 8 bytes of its file's sha256 (big-endian)."""
    return int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "big")


def _seen_checkpoint(folder: Path, roles: Mapping[str, Sequence[Path] | None]) -> Path:
    """A checkpoint folder whose images_seen.json, written by training's own writer, lists ``roles``."""
    from uopsl.train.workflow import record_images_seen

    ckpt = _checkpoint(folder)
    record_images_seen(ckpt, {r: None if ps is None else [_digest(p) for p in ps] for r, ps in roles.items()})
    return ckpt


def _recorded(bundle: Path, file: str) -> dict[str, Any] | None:
    rec = read_manifest(bundle).file(file).info.get(PARITY_KEY)
    return None if rec is None else rec["backends"].get("ort-cpu")


def _as_pytorch(models: PatchedModels) -> None:
    """The table reference declared as the checkpoint (PyTorch), so its PASS of model.onnx proves the ONNX
    reference (``--onnx-reference``)."""
    models.reference.reference_kind = "pytorch"  # type: ignore[attr-defined]
    models.reference.fingerprint = "fake-checkpoint"  # type: ignore[attr-defined]


# -- D1: images that made the checkpoint --------------------------------------------------------------------

def _setup(tmp_path: Path, image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch
           ) -> tuple[Path, list[tuple[str, ...]], PatchedModels]:
    """A fresh bundle, N cycled labels, and models patched to answer for them."""
    labels = cycled_labels(N)
    return _bundle(tmp_path / "bundle"), labels, PatchedModels(image_keys, monkeypatch, labels)


def test_the_seen_roles_are_trainings_own() -> None:
    """validate reads images_seen.json without training code: its names must stay training's."""
    from uopsl.export import validate as validate_mod
    from uopsl.train import workflow

    assert validate_mod.SEEN_FILE == workflow.SEEN_FILE
    assert validate_mod.SEEN_ROLES == workflow.SEEN_ROLES


def test_images_that_made_the_checkpoint_are_named_and_nothing_is_recorded(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    # the first 30 chose the thresholds, 10 more were trained on; a role recorded twice counts once overall
    ckpt = _seen_checkpoint(tmp_path / "ckpt", {"validation": photos[:VAL], "train": photos[VAL:VAL + 10],
                                                "earlier": photos[VAL:VAL + 10]})
    res = _run(bundle, _records(photos, labels), models, tmp_path / "out", {"data": "t", "checkpoint": str(ckpt)})
    rep = res.report
    assert res.status == PASS  # the verdict itself is reported as measured
    data = rep["data"]
    assert data["held_out"] is False and data["n_images_seen_in_training"] == VAL + 10
    assert data["images_seen_in_training"] == {"earlier": 10, "train": 10, "validation": VAL}
    assert data["images_seen"]["checkpoint"] == str(ckpt) and data["images_seen"]["of"] == N
    note = next(n for n in rep["notes"] if "were used to make this checkpoint" in n)
    assert note.startswith(f"{VAL + 10} of {N} images (same file content) were used to make this checkpoint")
    assert f"{VAL} in validation (thresholds, best epoch)" in note and "10 in fine-tuning" in note
    assert "operating thresholds were chosen on the validation images" in note
    # nothing recorded: neither the PASS nor a FAIL judged on threshold images is a release verdict
    rec = rep["record"]
    assert rec["recorded"] == [] and rec["withheld"].startswith(f"{VAL + 10} of {N} images made the checkpoint")
    assert rec["note"].startswith("nothing recorded in the manifest: ")
    assert {k["name"] for k in rec["not_recorded"]} == {"ort-cpu:model.onnx", "ort-cpu:model.int8.onnx"}
    assert _recorded(bundle, "model.onnx") is None and _recorded(bundle, "model.int8.onnx") is None
    assert rep["release_pass"] is False
    assert any("images made the checkpoint" in r and "not held out" in r for r in rep["release_pass_reasons"])
    assert rep["headline"].startswith("PASS (not a release pass: ")
    html = res.html_path.read_text(encoding="utf-8")
    assert "were used to make this checkpoint" in html


def test_held_out_images_are_said_to_be_and_recorded(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    (tmp_path / "other.jpg").write_bytes(photos[0].read_bytes() + b"\0")  # another photograph's content
    other = [tmp_path / "other.jpg"]
    ckpt = _seen_checkpoint(tmp_path / "ckpt", {"train": other, "validation": other})
    res = _run(bundle, _records(photos, labels), models, tmp_path / "out", {"data": "t", "checkpoint": str(ckpt)})
    data = res.report["data"]
    assert data["held_out"] is True and data["n_images_seen_in_training"] == 0
    assert data["images_seen_in_training"] == {}
    assert res.report["release_pass"] is True and "withheld" not in res.report["record"]
    assert _recorded(bundle, "model.onnx")["verdict"] == PASS


def test_a_checkpoint_without_a_record_is_noted_and_its_verdicts_recorded(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    ckpt = _checkpoint(tmp_path / "ckpt")  # no images_seen.json (made before uopsl recorded them)
    res = _run(bundle, _records(photos, labels), models, tmp_path / "out", {"data": "t", "checkpoint": str(ckpt)})
    data = res.report["data"]
    assert data["held_out"] is None and data["images_seen_in_training"] is None
    assert "does not record which photographs made it" in data["images_seen"]["why_not_known"]
    assert any("does not record which photographs made it" in n for n in res.report["notes"])
    assert _recorded(bundle, "model.onnx")["verdict"] == PASS


def test_cli_says_the_images_made_the_checkpoint_and_records_nothing(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command passes its --checkpoint on: the review's run on the 30 threshold images said nothing."""
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    _fake_torch(monkeypatch, models)
    ckpt = _seen_checkpoint(tmp_path / "ckpt", {"validation": photos[:VAL]})
    data = _csv(tmp_path / "val.csv", photos[:VAL], [lab[0] for lab in labels[:VAL]])
    capsys.readouterr()
    code = uopsl_validate([str(bundle), "--checkpoint", str(ckpt), "--data", str(data), "--out",
                           str(tmp_path / "out"), "--backends", "ort-cpu", "--n-boot", "0"])
    printed = capsys.readouterr().out
    assert code in (0, 1)
    assert (f"nothing recorded in the manifest: {VAL} of {VAL} images made the checkpoint ({VAL} in validation "
            "(thresholds, best epoch))") in printed
    report = json.loads((tmp_path / "out" / "parity.json").read_text(encoding="utf-8"))
    assert any(n.startswith(f"{VAL} of {VAL} images (same file content) were used to make this checkpoint")
               for n in report["notes"])
    assert report["data"]["held_out"] is False and report["context"]["checkpoint"] == str(ckpt)
    assert _recorded(bundle, "model.onnx") is None


# -- D1: a small run's FAIL and a release-sized PASS ----------------------------------------------------------
def _flip_fp32(models: PatchedModels, labels: Sequence[tuple[str, ...]], images: Sequence[int]) -> None:
    """model.onnx calls each of ``images``' labelled class negative (a changed finding)."""
    for i in images:
        k = NAMES.index(labels[i][0])
        models.files["model.onnx"][i, k] = models.ref[i, k] * 0.01


def test_a_small_runs_fail_does_not_replace_a_release_sized_pass(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    _as_pytorch(models)
    full = _run(bundle, _records(photos, labels), models, tmp_path / "full")
    assert full.status == PASS and _recorded(bundle, "model.onnx")["n_images"] == N
    check_reference_chain(bundle)  # the FP32 file proves the ONNX reference
    pass_record = _recorded(bundle, "model.onnx")
    _flip_fp32(models, labels, [3])
    small = _run(bundle, _records(photos[:VAL], labels[:VAL]), models, tmp_path / "small")
    assert small.status == FAIL and _cand(small.report, "model.onnx")["verdict"] == FAIL  # still reported
    assert _recorded(bundle, "model.onnx") == pass_record  # the manifest keeps the PASS
    check_reference_chain(bundle)  # and --onnx-reference still runs
    rec = small.report["record"]
    kept = [k for k in rec["kept"] if k["name"] == "ort-cpu:model.onnx"]
    assert [(k["verdict"], k["kept_verdict"]) for k in kept] == [(FAIL, PASS)]
    assert (f"a FAIL from a run too small to vouch for the file (only {VAL} images (a pass counts from "
            f"{MIN_PARITY_IMAGES}" in kept[0]["why"] and "does not replace a PASS" in kept[0]["why"])
    assert f"the manifest keeps its PASS on {N} images" in rec["note"]
    assert "ort-cpu:model.onnx" not in rec["recorded"]
    # the INT8 file, which passed on both runs: its small-run PASS is still not recorded, its 120-image PASS stays
    assert _recorded(bundle, "model.int8.onnx")["n_images"] == N


def test_a_small_runs_fail_is_recorded_where_there_was_no_pass(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    _flip_fp32(models, labels, [3])
    small = _run(bundle, _records(photos[:VAL], labels[:VAL]), models, tmp_path / "small")
    assert small.status == FAIL
    assert _recorded(bundle, "model.onnx")["verdict"] == FAIL and _recorded(bundle, "model.onnx")["n_images"] == VAL


def test_a_small_runs_non_finite_fail_replaces_a_pass(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """NaN outputs are a defect of the file, not a noisy figure: recorded whatever the number of images."""
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    assert _run(bundle, _records(photos, labels), models, tmp_path / "full").status == PASS
    models.files["model.onnx"][3, 0] = np.nan
    small = _run(bundle, _records(photos[:VAL], labels[:VAL]), models, tmp_path / "small")
    assert _cand(small.report, "model.onnx")["verdict"] == FAIL
    assert _recorded(bundle, "model.onnx")["verdict"] == FAIL


# -- D2: one photograph counted once ---------------------------------------------------------------------------
def _copies(photos: Sequence[Path], folder: Path) -> list[Path]:
    folder.mkdir()
    return [Path(shutil.copyfile(p, folder / f"copy_{p.name}")) for p in photos]


def test_byte_identical_copies_count_once(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """90 photographs and 20 copies under other names and patient ids: 110 'images' recorded a PASS before."""
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    models.reference.fingerprint = "table"  # type: ignore[attr-defined]  # keys the output cache
    models.files["model.int8.onnx"][3, NAMES.index(labels[3][0])] *= 0.01  # one changed finding, on image 3
    keep = 90
    copies = _copies(photos[:20], tmp_path / "copies")
    records = (_records(photos[:keep], labels[:keep])
               + [ImageRecord(f"copy{i}", p, labels[i], patient=f"Z{i}") for i, p in enumerate(copies)])
    res = _run(bundle, records, models, tmp_path / "out")
    data = res.report["data"]
    assert data["n_images"] == keep + 20 and data["n_used"] == keep and data["n_duplicate_content"] == 20
    # the images are judged in id order (session 59: figures independent of the data's row order), so of each
    # pair the copy named first by id stays
    assert len(set(data["image_sha256"])) == keep and "i003" not in data["image_ids"] and "copy3" in data["image_ids"]
    dup = data["duplicate_content"]
    assert dup["n_dropped"] == 20 and dup["n_with_other_patient"] == 20
    assert dup["dropped"][0] == {"id": photos[0].stem, "same_as": "copy0", "patient": "P0", "same_as_patient": "Z0"}
    note = next(n for n in res.report["notes"] if "byte-identical copies" in n)
    assert note.startswith("20 image(s) left out: byte-identical copies of earlier images")
    assert f"every figure counts the {keep} distinct photographs of the {keep + 20} compared" in note
    # every output left is one photograph's: outputs.csv has one row per distinct image
    assert res.report["outputs_csv"]["rows"] == keep
    again = _run(bundle, records, models, tmp_path / "out")  # the outputs from the cache: the same images left
    assert again.report["cache"]["outputs_from_cache"] == "all"
    assert again.report["data"]["image_ids"] == data["image_ids"]
    # one changed photograph is one change, not two
    assert _cand(res.report, "model.int8.onnx")["clinical"]["finding_changes"]["changes"] == 1
    # the release minimum counts distinct photographs: 90 < 100, so the PASS is not recorded
    assert _cand(res.report, "model.onnx")["verdict"] == PASS
    assert _recorded(bundle, "model.onnx") is None
    assert any(f"only {keep} images" in r for r in res.report["release_pass_reasons"])
    assert any(k["name"] == "ort-cpu:model.onnx" and f"only {keep} images" in k["why"]
               for k in res.report["record"]["not_recorded"])


def test_copies_with_other_labels_are_refused(photos: list[Path], image_keys: dict[str, int],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    (copy,) = _copies(photos[:1], tmp_path / "copies")
    records = [*_records(photos[:20], labels[:20]), ImageRecord("copy0", copy, ("glaucoma",))]
    assert labels[0] != ("glaucoma",)
    with pytest.raises(DataError, match=r"image i000 \(.*\) is a byte-identical copy of image copy0 .*their labels "
                                        r"disagree \(\['normal'\] here, \['glaucoma'\] there\)"):
        _run(bundle, records, models, tmp_path / "out")


def test_copies_are_found_by_content_not_by_id(photos: list[Path], image_keys: dict[str, int],
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two different photographs under one id are two photographs (a guard: the ids are display names)."""
    bundle, labels, models = _setup(tmp_path, image_keys, monkeypatch)
    records = [*_records(photos[:20], labels[:20]), ImageRecord(photos[0].stem, photos[21], labels[21])]
    res = _run(bundle, records, models, tmp_path / "out")
    assert res.report["data"]["n_used"] == 21 and res.report["data"]["n_duplicate_content"] == 0
