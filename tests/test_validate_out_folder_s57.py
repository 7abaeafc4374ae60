"""What `uopsl validate` leaves in its --out folder and where the manifest says the report is (a validation
review, session 57): the record's path was relative to the working folder, another bundle's report in --out was
replaced without a word, and ROC plots of candidates an earlier run judged stayed beside the new report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from test_validate_release import N, _records, _run, bundle  # noqa: F401 - fixture
from validatekit import PatchedModels, cycled_labels, image_keys, photos  # noqa: F401 - module fixtures
from uopsl.runtime.bundle import PARITY_KEY, read_manifest


def test_the_record_names_the_report_relative_to_the_bundle(bundle: Path, photos: list[Path],  # noqa: F811
                                                            image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    labels = cycled_labels(N)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the command ran from another folder than the bundle's or the report's
    out = tmp_path / "reports" / "v1"
    _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), out)
    rec = next(f for f in read_manifest(bundle).files if f.path == "model.onnx").info[PARITY_KEY]
    where = rec["backends"]["ort-cpu"]["report"]
    assert where == os.path.relpath(out / "parity.json", bundle) and not os.path.isabs(where)
    assert (bundle / where).resolve() == (out / "parity.json").resolve()


def test_another_models_report_is_replaced_with_a_warning_and_old_roc_plots_go(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels = cycled_labels(N)
    out = tmp_path / "out"
    out.mkdir()
    (out / "parity.json").write_text(json.dumps({"created": "2026-12-01T00:00:00+00:00", "bundle": {
        "path": "other-bundle", "files": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32",
                                           "sha256": "0" * 64}]}}))
    (out / "roc_openvino_model.int8.onnx.png").write_bytes(b"an earlier run's plot")
    (out / "notes.txt").write_text("the user's own file")
    with caplog.at_level(logging.WARNING, logger="uopsl.export.validate"):
        res = _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), out)
    said = [r.getMessage() for r in caplog.records if "held the report of another model" in r.getMessage()]
    assert len(said) == 1 and "other-bundle" in said[0] and "2026-12-01" in said[0], caplog.text
    assert not (out / "roc_openvino_model.int8.onnx.png").exists() and (out / "notes.txt").is_file()
    # The same review: "class-decision agreement", "logit cos" and "site-map corr" were nowhere defined.
    html = " ".join(res.html_path.read_text(encoding="utf-8").split())
    assert "Class-decision agreement: the share of calls, one per image and class (every class" in html
    assert "Logit cos: the cosine between an image's two logit vectors" in html.replace("&#x27;", "'")
    written = {c["roc_png"] for c in res.report["candidates"] if c.get("roc_png")}
    assert written and all((out / name).is_file() for name in written)
    # The same bundle again: its own report is replaced without a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uopsl.export.validate"):
        _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), out)
    assert "held the report of another model" not in caplog.text


def test_the_same_model_again_with_fewer_candidates_warns_of_the_records_left_behind(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The session's review of the first fix: re-validating the same bundle into the same --out on fewer backends
    left the other backends' records naming a report that no longer holds them, without a word."""
    labels = cycled_labels(N)
    out = tmp_path / "out"
    _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), out)
    old = json.loads((out / "parity.json").read_text())
    old["candidates"].append({**old["candidates"][0], "name": "openvino:model.int8.onnx"})  # as if judged there too
    (out / "parity.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="uopsl.export.validate"):
        _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), out)
    said = [r.getMessage() for r in caplog.records if "which this run does not judge" in r.getMessage()]
    assert len(said) == 1 and "held verdicts on openvino:model.int8.onnx" in said[0], caplog.text
    assert "another model" not in caplog.text


def test_the_record_and_info_give_the_patients_behind_the_images(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        tmp_path: Path) -> None:
    """A validation review: manifest records and `uopsl-screen info` gave images only (335), though the bounds
    and intervals were by patient (133)."""
    from test_validate_release import _two_eyes

    from uopsl.runtime.cli import _parity_records

    labels = cycled_labels(N)
    patients = _two_eyes(N)
    n_patients = len({p for p in patients if p}) + sum(p is None for p in patients)
    _run(bundle, _records(photos, labels, patients), PatchedModels(image_keys, monkeypatch, labels), tmp_path / "o")
    m = read_manifest(bundle)
    entry = next(f for f in m.files if f.path == "model.onnx")
    assert entry.info[PARITY_KEY]["backends"]["ort-cpu"]["n_patients"] == n_patients
    (line,) = _parity_records(entry, m)
    assert f"{N} images ({n_patients} patients) of test table" in line, line
    # Without patients the record says nothing of them.
    _run(bundle, _records(photos, labels), PatchedModels(image_keys, monkeypatch, labels), tmp_path / "o2")
    entry = next(f for f in read_manifest(bundle).files if f.path == "model.onnx")
    assert "n_patients" not in entry.info[PARITY_KEY]["backends"]["ort-cpu"]
