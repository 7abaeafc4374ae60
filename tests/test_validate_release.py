"""``uopsl validate`` as a release gate: a validation engineer's review (items 1-8).

1. patients: each image's patient reaches the run (also a cached one); the AUC bootstrap resamples patients,
   the report counts them and the patients behind the flips and changed findings, says which resampling was
   done, and notes that the exact bounds assume independent images;
2. ``record.recorded`` lists what the manifest holds after the run, and the verdicts it kept instead, with why;
3. a class of a synthetic set's own class list without a positive image reads "no positive image", and the
   referral figures are computed;
4. a class with fewer than MIN_CASES_PER_CLASS positives or negatives does not count as evaluated;
5. a PASS under looser gates or on too few images says "not a release pass" (headline, release_pass);
6. ``outputs.csv``: every image's outputs, from which the figures are recomputed; its sha256 in parity.json;
7. the reference-output cache is keyed by the torch version and the reference's device, and parity.json says
   whether the outputs came from it;
8. each sensitivity difference has a paired (Newcombe) interval, reported, not gated.

The models are stand-ins as in ``test_validate_signoff.py``: tables keyed by each preprocessed image.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_validate_signoff import _bundle, _cand, _checkpoint, _csv, _fake_torch
from validatekit import (  # noqa: F401 - photos, image_keys: module fixtures
    CPU, NAMES, THRESHOLDS, N, PatchedModels, Table, cycled_labels, image_keys, photos, uopsl_validate,
)
from uopsl.export import parity_record as record_mod
from uopsl.export import validate as validate_mod
from uopsl.export.bundle_writer import record_parity
from uopsl.export.parity_metrics import (
    FAIL,
    INCOMPLETE,
    MIN_CASES_PER_CLASS,
    PASS,
    ParityGates,
    clinical,
    judge,
    numerical,
    paired_proportion_difference,
    patient_clusters,
    truth_from_labels,
)
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import MIN_PARITY_IMAGES, ClassSpec, FileEntry, Manifest, read_manifest
from uopsl.runtime.metrics import paired_auc_difference, roc_auc
from uopsl.runtime.preprocess import PreprocessConfig


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _bundle(tmp_path / "bundle")


def _run(bundle: Path, records: list[ImageRecord], models: PatchedModels, out: Path, *, n_boot: int = 0,
         gates: ParityGates | None = None, label_space: Sequence[str] | None = NAMES, resume: bool = True,
         context: dict[str, Any] | None = None) -> Any:
    cfg = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), gates=gates or ParityGates(), n_boot=n_boot, show_progress=False,
                         resume=resume)
    return validate_bundle(bundle, models.reference, records, out, cfg, label_space=label_space,
                           context=context or {"data": "test table"}, availability=CPU)


def _records(photos: Sequence[Path], labels: Sequence[tuple[str, ...] | None],
             patients: Sequence[str | None] | None = None) -> list[ImageRecord]:
    pats = list(patients) if patients is not None else [None] * len(photos)
    return [ImageRecord(p.stem, p, lab, patient=pid) for p, lab, pid in zip(photos, labels, pats)]


def _two_eyes(n: int) -> list[str | None]:
    """Patient ids pairing images 2k and 2k + 1 (both eyes), the last 4 images without an id."""
    return [f"P{i // 2:03d}" if i < n - 4 else None for i in range(n)]


def _noisy(models: PatchedModels, seed: int = 0) -> None:
    """The INT8 file's probabilities moved a little everywhere and across some thresholds (a real difference)."""
    rng = np.random.default_rng(seed)
    p = models.ref * np.exp(rng.normal(0.0, 0.35, models.ref.shape))
    models.files["model.int8.onnx"] = np.clip(p, 1e-4, 1 - 1e-4)


# -- item 1: patients ----------------------------------------------------------------------------------------
def test_patient_clusters_give_an_image_without_a_patient_one_of_its_own() -> None:
    codes = patient_clusters(["a", "b", None, "a", "", "c"])
    assert codes is not None and codes.tolist() == [0, 1, 3, 0, 4, 2]
    assert patient_clusters([None, ""]) is None and patient_clusters(None) is None


def test_the_auc_bootstrap_resamples_patients_and_the_report_counts_them(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    _noisy(models)
    patients = _two_eyes(N)
    res = _run(bundle, _records(photos, labels, patients), models, tmp_path / "out", n_boot=200)
    rep = res.report
    assert rep["data"]["patients"] == {"known": True, "n_patients": 62, "n_images_without_patient": 4}
    assert rep["data"]["image_patients"] == patients
    assert rep["bootstrap"]["unit"] == "patient" and rep["bootstrap"]["n_patients"] == 62
    assert "resampled by patient (62 patients" in rep["bootstrap"]["method"]
    assert "4 image(s) without a patient id each count as a patient of their own" in rep["bootstrap"]["method"]
    assert "no patient ids" not in rep["bootstrap"]["method"]
    assert "treat every image as independent" in rep["confidence"]["independence_note"]
    int8 = _cand(rep, "model.int8.onnx")
    clin = int8["clinical"]
    # the interval is the cluster bootstrap's, by patient (the runtime's, with the same seed)
    codes = patient_clusters(patients)
    ids = rep["data"]["image_ids"]
    order = [int(i[1:]) for i in ids]
    y = np.array([NAMES[k] in labels[i] for i in order for k in [1]])
    ref, cand = models.ref[order, 1], models.files["model.int8.onnx"][order, 1].astype(np.float32)
    want = paired_auc_difference(y, ref.astype(np.float32), cand, n_boot=200, seed=0, clusters=codes)
    dr = next(r for r in clin["per_class"] if r["name"] == "dr")
    assert dr["auc_difference"]["unit"] == "patient"
    assert dr["auc_difference"]["low"] == pytest.approx(want.low) and dr["auc_difference"]["high"] == pytest.approx(
        want.high)
    by_image = paired_auc_difference(y, ref.astype(np.float32), cand, n_boot=200, seed=0)
    assert (by_image.low, by_image.high) != pytest.approx((want.low, want.high))
    # the patients behind the flips and the changed findings
    flipped = [it["id"] for it in clin["flips"]["items"]]
    assert flipped and clin["flips"]["n_patients"] == len({patients[int(i[1:])] or i for i in flipped})
    changed = [it["id"] for it in clin["finding_changes"]["items"]]
    assert clin["finding_changes"]["n_patients"] == len({patients[int(i[1:])] or i for i in changed})
    assert clin["patients"]["n_patients"] == 62
    html = res.html_path.read_text(encoding="utf-8")
    assert "62 patients" in html and "the AUC bootstrap resamples patients" in html
    assert f"({clin['flips']['n_patients']} patient" in html


def test_without_patient_ids_the_report_says_it_resampled_images(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    rep = _run(bundle, _records(photos, labels), models, tmp_path / "out", n_boot=20).report
    assert rep["bootstrap"]["unit"] == "image" and rep["data"]["patients"]["known"] is False
    assert "resampled by image, because the data carry no patient ids" in rep["bootstrap"]["method"]
    assert "validate has no patient ids" not in json.dumps(rep)
    assert "n_patients" not in _cand(rep, "model.int8.onnx")["clinical"]["flips"]


def test_patients_reach_a_cached_run(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The outputs come from the cache, the patients from the records: a rerun with patient ids resamples them."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    models.reference.fingerprint = "table-v1"  # type: ignore[attr-defined]  # enables the output cache
    first = _run(bundle, _records(photos, labels), models, tmp_path / "out", n_boot=20).report
    assert first["cache"]["outputs_from_cache"] == "none" and first["bootstrap"]["unit"] == "image"

    def no_inference(batch: np.ndarray) -> dict[str, np.ndarray]:
        raise AssertionError("the rerun should have read the cached outputs")

    monkeypatch.setattr(models.reference, "infer", no_inference)
    again = _run(bundle, _records(photos, labels, _two_eyes(N)), models, tmp_path / "out", n_boot=20).report
    assert again["cache"] == {"enabled": True, "batches": 8, "batches_from_cache": 8, "outputs_from_cache": "all"}
    assert again["bootstrap"]["unit"] == "patient" and again["data"]["patients"]["n_patients"] == 62


def test_cli_reads_the_patient_column_and_says_how_many(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.train.commands.validate import resolve_data

    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    _fake_torch(monkeypatch, models)
    data = tmp_path / "set.csv"
    patients = _two_eyes(N)
    data.write_text("path,label,patient\n" + "".join(f"{p},{NAMES[i % 5]},{patients[i] or ''}\n"
                                                      for i, p in enumerate(photos)), encoding="utf-8")
    records, _space, _ = resolve_data(str(data))
    assert [r.patient for r in records] == patients
    capsys.readouterr()
    assert uopsl_validate([str(bundle), "--checkpoint", str(_checkpoint(tmp_path / "ckpt")), "--data", str(data),
                           "--out", str(tmp_path / "out"), "--backends", "ort-cpu", "--n-boot", "0",
                           "--no-record"]) == 0
    printed = capsys.readouterr().out
    assert "120 images (0 unreadable; ungradable ones kept by --keep-ungradable) of 62 patients" in printed
    assert ("AUC intervals resampled by patient (62 patients); change rates bounded by image and by patient; "
            "sensitivity and specificity intervals on the effective number of images (patients' images "
            "correlated)") in printed


# -- item 2: what the manifest holds ------------------------------------------------------------------------
def test_recorded_lists_what_was_written_and_kept_lists_what_stayed(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    full = _run(bundle, _records(photos, labels), models, tmp_path / "full")
    assert full.status == PASS and full.report["record"]["recorded"] == ["ort-cpu:model.onnx",
                                                                          "ort-cpu:model.int8.onnx"]
    before = read_manifest(bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"]
    # all images normal: INCOMPLETE, which the manifest does not let replace the complete PASS
    normal = [("normal",)] * N
    models.ref = models.files["model.onnx"] = models.files["model.int8.onnx"] = PatchedModels(
        image_keys, monkeypatch, normal).ref
    res = _run(bundle, _records(photos, normal), models, tmp_path / "inc")
    assert res.status == INCOMPLETE
    assert read_manifest(bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"] == before
    rec = res.report["record"]
    assert rec["recorded"] == [] and rec["recorded_verdicts"] == []
    assert [(k["name"], k["verdict"], k["kept_verdict"]) for k in rec["kept"]] == [
        ("ort-cpu:model.onnx", "INCOMPLETE", "PASS"), ("ort-cpu:model.int8.onnx", "INCOMPLETE", "PASS")]
    assert all("an incomplete run does not replace a complete verdict" in k["why"] for k in rec["kept"])
    assert "ort-cpu:model.onnx INCOMPLETE here, the manifest keeps its PASS on 120 images" in rec["note"]
    html = res.html_path.read_text(encoding="utf-8")
    assert "Recorded in the manifest: nothing." in html and "an incomplete run does not replace" in html


def test_a_manifest_that_cannot_be_written_is_reported_as_such(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(bundle / "manifest.json"))

    monkeypatch.setattr(record_mod, "record_parity", read_only)
    res = _run(bundle, _records(photos, labels), models, tmp_path / "out")
    rec = json.loads(res.json_path.read_text())["record"]
    assert rec["recorded"] == [] and "Permission denied" in rec["error"]
    assert {k["name"] for k in rec["not_recorded"]} == {"ort-cpu:model.onnx", "ort-cpu:model.int8.onnx"}
    assert "nothing recorded: the manifest could not be written" in rec["note"]


def test_a_verdict_the_manifest_did_not_take_is_not_listed_as_recorded(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Read back from the manifest: a file that changed while it was validated keeps its old record."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)

    def changed_meanwhile(root: Any, records: Any, validated: Any) -> Any:
        return record_parity(root, records, {k: "0" * 64 if k == "model.int8.onnx" else v
                                             for k, v in validated.items()})

    monkeypatch.setattr(record_mod, "record_parity", changed_meanwhile)
    rec = _run(bundle, _records(photos, labels), models, tmp_path / "out").report["record"]
    assert rec["recorded"] == ["ort-cpu:model.onnx"]
    assert [k["name"] for k in rec["kept"]] == ["ort-cpu:model.int8.onnx"]
    assert "parity" not in read_manifest(bundle).file("model.int8.onnx").info


# -- item 3: a synthetic set's own class list ---------------------------------------------------------------
def _synthetic(folder: Path, photos: Sequence[Path], labels: Sequence[str], classes: Sequence[str]) -> Path:
    (folder / "fundus").mkdir(parents=True)
    rows = ["path,patient,eye,modality,labels,masks"]
    for i, (p, lab) in enumerate(zip(photos, labels)):
        shutil.copy(p, folder / "fundus" / p.name)
        rows.append(f"fundus/{p.name},S{i // 2},{'right' if i % 2 == 0 else 'left'},fundus,{lab},")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "synth_config.json").write_text(json.dumps({"generator_version": 3, "config": {
        "classes": list(classes)}}), encoding="utf-8")
    return folder


def test_a_synthetic_class_without_positives_reads_no_positive_image(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    from uopsl.train.commands.validate import resolve_data

    labels = [NAMES[i % 4] for i in range(N)]  # normal, dr, dme, amd: no glaucoma image
    data = _synthetic(tmp_path / "synth", photos, labels, ("dr", "dme", "amd", "glaucoma"))
    records, space, _ = resolve_data(str(data))
    assert space == NAMES and records[3].patient == "S1"
    # without the generator's class list the labels present are all there is (as before)
    (data / "synth_config.json").unlink()
    assert resolve_data(str(data))[1] == ("normal", "dr", "dme", "amd")
    models = PatchedModels(image_keys, monkeypatch, [(lab,) for lab in labels])
    res = _run(bundle, records, models, tmp_path / "out", label_space=space)
    int8 = _cand(res.report, "model.int8.onnx")
    glaucoma = next(r for r in int8["clinical"]["per_class"] if r["name"] == "glaucoma")
    assert glaucoma["not_evaluated"]["auc"] == "no positive image in the data"
    referral = int8["clinical"]["referral"]
    assert referral["sensitivity_reference"] == 1.0 and referral["n_positive"] == 90
    checks = {k["name"]: k for k in int8["checks"]}
    assert [s["class"] for s in checks["sensitivity_drop"]["skipped"]] == ["glaucoma"]


def test_synthetic_classes_read_the_generator_config(tmp_path: Path) -> None:
    from uopsl.train.datasets.generic import synthetic_classes

    (tmp_path / "synth_config.json").write_text(json.dumps({"config": {"classes": ["glaucoma", "dr"]}}))
    assert synthetic_classes(tmp_path) == ("normal", "dr", "glaucoma")
    assert synthetic_classes(tmp_path / "labels.csv") == ("normal", "dr", "glaucoma")
    (tmp_path / "synth_config.json").write_text("{not json")
    assert synthetic_classes(tmp_path) is None and synthetic_classes(tmp_path / "none") is None


# -- item 4: minimum cases per gated class ---------------------------------------------------------------------
def _two_class_manifest() -> Manifest:
    return Manifest(classes=(ClassSpec("normal", threshold=0.5), ClassSpec("dr", threshold=0.5, referable=True)),
                    head="sigmoid", preprocess=PreprocessConfig(size=32),
                    files=(FileEntry("model.onnx", "onnx", "fp32"),))


@pytest.mark.parametrize("n_dr, status", [(MIN_CASES_PER_CLASS - 1, INCOMPLETE), (MIN_CASES_PER_CLASS, PASS)])
def test_a_class_needs_min_cases_to_count_as_evaluated(n_dr: int, status: str) -> None:
    m = _two_class_manifest()
    labels = [("dr",)] * n_dr + [("normal",)] * 40
    ref = np.array([[0.1, 0.9] if lab == ("dr",) else [0.9, 0.1] for lab in labels])
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dr")), ref, ref.copy(),
                    [str(i) for i in range(len(labels))], n_boot=0)
    v = judge(ParityGates(), numerical({"probs": ref, "logits": ref}, {"probs": ref, "logits": ref}), clin)
    assert v.status == status, v.reasons
    if status == INCOMPLETE:
        checks = {c.name: c for c in v.checks}
        why = f"only {n_dr} positive images (a gate counts a class from {MIN_CASES_PER_CLASS} positive"
        assert [s["class"] for s in checks["auc_drop"].skipped] == ["normal", "dr"]
        assert [s["class"] for s in checks["sensitivity_drop"].skipped] == ["dr", "referral"]
        assert all(why in s["reason"] for s in checks["sensitivity_drop"].skipped)
        assert "its drop 0 is reported, not gated" in checks["auc_drop"].skipped[1]["reason"]


def test_the_report_states_the_minimum(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    labels = cycled_labels(N)
    res = _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), tmp_path / "out")
    assert res.report["min_cases_per_class"]["positive"] == MIN_CASES_PER_CLASS == 10
    assert "from 10 positive and 10 negative images" in res.html_path.read_text(encoding="utf-8")


# -- item 5: not a release pass -------------------------------------------------------------------------------
def test_a_pass_under_looser_gates_is_not_a_release_pass(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = [NAMES[i % 5] for i in range(N)]
    models = PatchedModels(image_keys, monkeypatch, [(lab,) for lab in labels])
    models.files["model.int8.onnx"][[1, 6], 1] = THRESHOLDS[1] * 0.5  # 2 DR images no longer referred
    _fake_torch(monkeypatch, models)
    data = _csv(tmp_path / "set.csv", photos, labels)
    ckpt = _checkpoint(tmp_path / "ckpt")
    base = [str(bundle), "--checkpoint", str(ckpt), "--data", str(data), "--backends", "ort-cpu", "--n-boot", "0"]
    capsys.readouterr()
    assert uopsl_validate([*base, "--out", str(tmp_path / "loose"), "--gates",
                           "flips=0.05,class_flips=0.05,findings=0.05,sens=0.1"]) == 0  # the gates asked for
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("PASS (not a release pass: gates looser than the defaults: max_flip_rate=0.05 "
                           "(default 0.005)"), last
    # the line is "<headline>: <parity.json>, <parity.html>", the headline ending in what the manifest got
    assert last == ("PASS (not a release pass: gates looser than the defaults: max_flip_rate=0.05 (default 0.005), "
                    "max_class_flip_rate=0.05 (default 0.005), max_finding_change_rate=0.05 (default 0.01), "
                    "max_sensitivity_drop=0.1 (default 0.01); nothing recorded): "
                    f"{tmp_path / 'loose' / 'parity.json'}, {tmp_path / 'loose' / 'parity.html'}"), last
    rep = json.loads((tmp_path / "loose" / "parity.json").read_text())
    assert rep["verdict"] == PASS and rep["release_pass"] is False
    assert rep["release_pass_reasons"][0].startswith("gates looser than the defaults")
    assert rep["headline"].startswith("PASS (not a release pass: ") and rep["headline"].endswith("nothing recorded)")
    assert last == f"{rep['headline']}: {tmp_path / 'loose' / 'parity.json'}, {tmp_path / 'loose' / 'parity.html'}"
    html = (tmp_path / "loose" / "parity.html").read_text(encoding="utf-8")
    assert "banner pass'>PASS (not a release pass" in html and "Not a release pass: gates looser" in html
    # The default gates fail it: the reasons name the file, the backend and the gate (a review: "the verdict is
    # FAIL" alone gave a release script nothing).
    assert uopsl_validate([*base, "--out", str(tmp_path / "strict")]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FAIL: ")  # the verdict, not "PASS (not..."
    rep = json.loads((tmp_path / "strict" / "parity.json").read_text())
    assert rep["verdict"] == "FAIL" and rep["headline"] == "FAIL"
    assert rep["release_pass"] is False and len(rep["release_pass_reasons"]) == 1
    why = rep["release_pass_reasons"][0]
    assert why.startswith("the verdict is FAIL: ort-cpu:model.int8.onnx FAIL (") and "flip" in why, why
    assert "ort-cpu:model.onnx" not in why  # the FP32 file passed
    # too few images, default gates
    few = _csv(tmp_path / "few.csv", photos[:60], labels[:60])
    models.files["model.int8.onnx"] = models.ref.copy()
    assert uopsl_validate([*base[:4], str(few), *base[5:], "--out", str(tmp_path / "few")]) == 0
    rep = json.loads((tmp_path / "few" / "parity.json").read_text())
    assert rep["release_pass"] is False and rep["release_pass_reasons"] == [
        "only 60 images (a pass counts from 100; validate on more images)"]
    # the full set with the default gates: a release pass, and the headline is the verdict alone
    assert uopsl_validate([*base, "--out", str(tmp_path / "full")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS: ")
    rep = json.loads((tmp_path / "full" / "parity.json").read_text())
    assert rep["release_pass"] is True and rep["release_pass_reasons"] == [] and rep["headline"] == "PASS"
    # A review of the labels: an unchanged file read "largest drop: dr"; the gates table showed the FP32
    # tolerance as n/a; nothing said what the bundle may be used for.
    int8 = next(c for c in rep["candidates"] if c["file"] == "model.int8.onnx")
    checks = {c["name"]: c for c in int8["checks"]}
    assert checks["auc_drop"]["detail"] == "no drop in any class" and checks["auc_drop"]["value"] == 0.0
    assert not any("largest drop" in c["detail"] for c in int8["checks"])
    html = (tmp_path / "full" / "parity.html").read_text(encoding="utf-8")
    assert "none, but the FP32 file on ort-cpu: 1e-4" in html
    assert "Intended use of this bundle:" in html and rep["bundle"]["intended_use"]["status"]


# -- item 6: outputs.csv ---------------------------------------------------------------------------------------
def test_outputs_csv_lets_a_signer_recompute_the_figures(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    _noisy(models, seed=3)
    patients = _two_eyes(N)
    res = _run(bundle, _records(photos, labels, patients), models, tmp_path / "out")
    rep = json.loads(res.json_path.read_text())
    raw = (tmp_path / "out" / "outputs.csv").read_bytes()
    assert rep["outputs_csv"]["file"] == "outputs.csv" and rep["outputs_csv"]["sha256"] == hashlib.sha256(
        raw).hexdigest()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM, as results.csv
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == rep["outputs_csv"]["rows"] == N and [r["id"] for r in rows] == rep["data"]["image_ids"]
    assert [r["patient"] or None for r in rows] == rep["data"]["image_patients"]
    assert rows[0]["labels"] == "normal"
    assert list(rows[0])[:3] == ["id", "patient", "labels"] and "ort-cpu:model.int8.onnx:p_dr" in rows[0]
    m = read_manifest(bundle)
    int8 = _cand(rep, "model.int8.onnx")["clinical"]
    for source, want in (("reference", None), ("ort-cpu:model.int8.onnx", int8)):
        p = np.array([[float(r[f"{source}:p_{c}"]) for c in NAMES] for r in rows])
        refer = np.array([r[f"{source}:refer"] == "yes" for r in rows])
        assert (m.decide(p)[1] == refer).all()
        if want is None:
            ref_p, ref_refer = p, refer
            continue
        assert int((refer != ref_refer).sum()) == want["flips"]["n"]  # the flips, from the CSV alone
        y = np.array(["dr" in r["labels"].split(";") for r in rows])
        dr = next(r for r in want["per_class"] if r["name"] == "dr")
        assert roc_auc(y, p[:, 1]) == dr["auc_candidate"] and roc_auc(y, ref_p[:, 1]) == dr["auc_reference"]
        logits = np.array([[float(r[f"{source}:logit_{c}"]) for c in NAMES] for r in rows])
        assert np.array_equal(logits.astype(np.float32).astype(np.float64), logits)  # the float32 values, exact


# -- item 7: the cache key -------------------------------------------------------------------------------------
def test_the_cache_is_keyed_by_the_torch_version_and_the_reference_device(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    ref = models.reference
    ref.fingerprint, ref.device = "table-v1", "cpu"  # type: ignore[attr-defined]
    records = _records(photos, labels)
    assert _run(bundle, records, models, tmp_path / "out").report["cache"]["outputs_from_cache"] == "none"
    assert _run(bundle, records, models, tmp_path / "out").report["cache"]["outputs_from_cache"] == "all"
    key = json.loads((tmp_path / "out" / ".parity-cache" / "key.json").read_text())["key"]
    assert key["reference_device"] == "cpu" and "torch" in key
    ref.device = "cuda:0"  # type: ignore[attr-defined]  # --device cuda: other kernels, outputs recomputed
    assert _run(bundle, records, models, tmp_path / "out").report["cache"]["outputs_from_cache"] == "none"
    monkeypatch.setattr(validate_mod, "_torch_version", lambda: "99.0")  # a PyTorch upgrade
    assert _run(bundle, records, models, tmp_path / "out").report["cache"]["outputs_from_cache"] == "none"
    rep = _run(bundle, records, models, tmp_path / "out", resume=False).report
    assert rep["cache"]["enabled"] is False and rep["cache"]["why_disabled"] == "--no-resume"
    assert "were computed by this run" in (tmp_path / "out" / "parity.html").read_text(encoding="utf-8")


# -- item 8: a paired interval of each sensitivity difference -----------------------------------------------------
def test_paired_proportion_difference() -> None:
    # no discordant pair: the estimate is 0 and the interval does not collapse onto it
    none = paired_proportion_difference(40, 0, 0, 10)
    assert none["estimate"] == 0.0 and none["low"] < -0.01 and none["high"] > 0.01
    # large n: close to the paired Wald interval, candidate minus reference
    a, b, c, d = 400, 30, 10, 560
    n = a + b + c + d
    got = paired_proportion_difference(a, b, c, d)
    diff = (c - b) / n
    half = 1.959964 * np.sqrt((b + c) - (b - c) ** 2 / n) / n
    assert got["estimate"] == pytest.approx(diff)
    assert got["low"] == pytest.approx(diff - half, abs=0.004) and got["high"] == pytest.approx(diff + half, abs=0.004)
    # swapping the two sides mirrors the interval
    swapped = paired_proportion_difference(a, c, b, d)
    assert (swapped["low"], swapped["high"]) == pytest.approx((-got["high"], -got["low"]))
    assert paired_proportion_difference(0, 3, 0, 0)["low"] >= -1.0


def test_sensitivity_differences_are_reported_not_gated(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    dr = [i for i, lab in enumerate(labels) if lab == ("dr",)][:3]
    models.files["model.int8.onnx"][dr, 1] = THRESHOLDS[1] * 0.5  # 3 of 24 DR images missed
    rep = _run(bundle, _records(photos, labels), models, tmp_path / "out").report
    row = next(r for r in _cand(rep, "model.int8.onnx")["clinical"]["per_class"] if r["name"] == "dr")
    diff = row["sensitivity_difference"]
    assert diff["estimate"] == pytest.approx(-3 / 24) and diff["low"] < -3 / 24 < diff["high"] < 0.05
    assert diff["method"].startswith("Newcombe")
    assert rep["confidence"]["sensitivity_difference"]["gated"] is False


# -- the release pass and the headline, unit by unit ----------------------------------------------------------
def _release_report(verdict: str, candidates: Sequence[dict[str, Any]] = (), *,
                    n_used: int = MIN_PARITY_IMAGES) -> dict[str, Any]:
    """What ``_set_release`` reads of a report: the verdict, the candidates, the gates, the images used, the record."""
    return {"verdict": verdict, "candidates": list(candidates), "gates": ParityGates().to_dict(),
            "data": {"n_used": n_used},
            "record": {"enabled": True, "recorded": ["ort-cpu:model.onnx"],
                       "recorded_verdicts": [{"name": "ort-cpu:model.onnx", "verdict": verdict}]}}


@pytest.mark.parametrize("verdict", [FAIL, INCOMPLETE])
def test_a_run_that_did_not_pass_has_its_verdict_as_the_headline(verdict: str) -> None:
    """Not a release pass, with the reason, but the headline is the verdict: never "PASS (not a release pass..."."""
    rep = _release_report(verdict, [
        {"name": "ort-cpu:model.onnx", "passed": True, "verdict": PASS, "reasons": []},
        {"name": "ort-cpu:model.int8.onnx", "passed": False, "verdict": verdict, "reasons": ["flip rate 0.02"]}])
    validate_mod._set_release(rep, None, {"data": "test table"})
    assert rep["headline"] == verdict
    assert rep["release_pass"] is False
    assert rep["release_pass_reasons"] == [f"the verdict is {verdict}: ort-cpu:model.int8.onnx {verdict} "
                                           "(flip rate 0.02)"]


def test_a_pass_against_another_checkpoint_is_not_a_release_pass_even_under_the_default_gates() -> None:
    """Default gates and enough images (no weak run): another checkpoint alone withholds the release pass."""
    rep = _release_report(PASS, [{"name": "ort-cpu:model.onnx", "passed": True, "verdict": PASS, "reasons": []}])
    validate_mod._set_release(rep, None, {"data": "test table", "other_checkpoint": True})
    why = "judged against another checkpoint than the bundle's (--other-checkpoint: a study)"
    assert rep["release_pass"] is False and rep["release_pass_reasons"] == [why]
    assert "another checkpoint" in rep["release_pass_reasons"][0]
    assert rep["headline"] == f"PASS (not a release pass: {why}; recorded: ort-cpu:model.onnx PASS)"
    # the same run on the bundle's own checkpoint is a release pass, the verdict alone its headline
    rep = _release_report(PASS, [{"name": "ort-cpu:model.onnx", "passed": True, "verdict": PASS, "reasons": []}])
    validate_mod._set_release(rep, None, {"data": "test table", "other_checkpoint": False})
    assert rep["release_pass"] is True and rep["release_pass_reasons"] == [] and rep["headline"] == PASS


# -- what the report says of the runtime and the bundle ---------------------------------------------------------
class _SettingsUnreadable(Table):
    """A candidate that loads and runs but whose ``settings()`` raises (a backend that cannot describe itself)."""

    def settings(self) -> dict[str, object]:
        raise RuntimeError("the session's options are gone")


def test_a_candidate_whose_settings_cannot_be_read_is_still_judged(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    monkeypatch.setattr(validate_mod, "open_candidate", lambda bundle, spec, threads, manifest: _SettingsUnreadable(
        image_keys, lambda: models.files[spec.file]))
    res = _run(bundle, _records(photos, labels), models, tmp_path / "out")
    assert res.status == PASS
    for file in ("model.onnx", "model.int8.onnx"):
        c = _cand(res.report, file)
        assert c["verdict"] == PASS and c["passed"] is True and "error" not in c, c.get("error")
        assert c["runtime_settings"] == {"error": "settings not read: the session's options are gone"}
    assert res.report["record"]["recorded"] == ["ort-cpu:model.onnx", "ort-cpu:model.int8.onnx"]


def test_the_report_carries_the_manifests_operating_points(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    points = [{"name": "dr", "threshold": 0.3, "method": "target_sensitivity", "target_sensitivity": 0.9,
               "n_positive": 31, "n_negative": 69, "source": "validation split"},
              {"name": "glaucoma", "threshold": 0.5, "method": "fixed", "source": "chosen on no data"}]
    root = _bundle(tmp_path / "bundle", notes={"operating_points": points})
    assert read_manifest(root).notes["operating_points"] == points
    labels = cycled_labels(N)
    res = _run(root, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), tmp_path / "out")
    assert res.report["bundle"]["operating_points"] == points
    assert json.loads(res.json_path.read_text())["bundle"]["operating_points"] == points
    html = res.html_path.read_text(encoding="utf-8")
    assert "Operating thresholds" in html
    assert "dr 0.3 (target sensitivity 0.90 on 31 positive / 69 negative validation images)" in html
