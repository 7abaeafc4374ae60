"""A pass counts from 30 patients where the data names them (session 59: an auditor's review found a release
pass, recorded in the manifest, on 150 images of 5 patients, with a 95 % bound over patients of 45 %)."""

from __future__ import annotations

from pathlib import Path

import pytest

from uopsl.export.parity_metrics import ParityGates
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import MIN_PARITY_IMAGES, MIN_PARITY_PATIENTS, parity_run_problem
from uopsl.train.reference import TorchReference


def test_the_patient_floor_applies_only_where_patients_are_known() -> None:
    gates = ParityGates().to_dict()
    assert parity_run_problem(gates, MIN_PARITY_IMAGES) is None
    assert parity_run_problem(gates, MIN_PARITY_IMAGES, MIN_PARITY_PATIENTS) is None
    weak = parity_run_problem(gates, 150, 5) or ""
    assert "images of only 5 patients" in weak and f"from {MIN_PARITY_PATIENTS} patients" in weak
    assert "only 150 images" not in weak
    assert parity_run_problem(gates, 150, MIN_PARITY_PATIENTS - 1) is not None


def test_validate_names_the_patient_floor_among_the_reasons_a_pass_is_not_a_release_pass(
        tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict, tmp_path: Path) -> None:
    ckpt, bundle = tiny_ckpt_bundle
    records = [ImageRecord(f"{p.parent.name}/{p.name}", p, (p.parent.name,), patient=f"P{i % 5}")
               for i, p in enumerate(cast_sets["val"][:48])]
    config = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=50, show_progress=False,
                            record=False)
    report = validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), records, tmp_path / "out", config,
                             label_space=("normal", "a", "b")).report
    assert report["data"]["patients"]["n_patients"] == 5
    assert not report["release_pass"]
    assert any("images of only 5 patients" in r for r in report["release_pass_reasons"]), report["release_pass_reasons"]


def test_validate_gives_the_same_report_for_the_same_images_in_another_order(
        tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict, tmp_path: Path) -> None:
    """The bootstrap draws by position: the INT8 file's AUC-difference interval ended at -0.00561 in one row
    order and -0.00700 in the other, under --judge-on bounds enough to move a verdict."""
    ckpt, bundle = tiny_ckpt_bundle
    records = [ImageRecord(f"{p.parent.name}/{p.name}", p, (p.parent.name,), patient=f"P{i % 40}")
               for i, p in enumerate(cast_sets["val"][:48])]
    config = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=50, show_progress=False,
                            record=False)
    reports = [validate_bundle(bundle, TorchReference.from_checkpoint(ckpt, "cpu"), order, tmp_path / name, config,
                               label_space=("normal", "a", "b")).report
               for name, order in (("a", records), ("b", records[::-1]))]
    a, b = ({k: v for k, v in r.items() if k not in ("created", "cache")} for r in reports)
    assert a["candidates"] == b["candidates"] and a["data"] == b["data"]


def test_validate_records_its_working_folder_and_batch_and_leaves_thumbnails_out_on_request(
        tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths in parity.json (bundle, data spec, --out) named nothing without the folder they were relative
    to, and the batch size (outputs move by ~1e-7 with it) was not in parity.json; parity.html embedded patient
    photographs with no way to leave them out."""
    import json

    from test_validate_cli import _uopsl, _val_folder

    ckpt, bundle = tiny_ckpt_bundle
    monkeypatch.chdir(tmp_path)
    args = [str(bundle), "--checkpoint", str(ckpt), "--data", str(_val_folder(cast_sets)), "--backends", "ort-cpu",
            "--n-boot", "0", "--device", "cpu", "--no-record", "--limit", "24", "--batch-size", "5"]
    _uopsl([*args, "--out", "out", "--max-thumbnails", "0"])
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    ctx = report["context"]
    assert ctx["working_folder"] == str(tmp_path) and ctx["batch_size"] == 5 and ctx["threads"] is None
    assert json.loads((tmp_path / "out" / "parity_config.json").read_text())["config"]["max_thumbnails"] == 0


def test_a_fail_on_images_of_few_patients_does_not_replace_a_release_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run the floor calls too weak to vouch for a file records only a FAIL; its FAIL on 150 images of 5
    patients replaced a release PASS, taking `auto` off the file (the review of the change)."""
    from types import SimpleNamespace

    import uopsl.export.parity_record as pr
    from uopsl.runtime.bundle import PARITY_GATE_DEFAULTS

    passed = {"verdict": "PASS", "gates": dict(PARITY_GATE_DEFAULTS), "n_images": 400, "n_patients": 200,
              "data": {"spec": "tvhl:x"}, "created": "2026-12-01"}
    monkeypatch.setattr(pr, "recorded_verdict", lambda entry, backend: passed)
    manifest = SimpleNamespace(file=lambda path: object())
    fail = {"verdict": "FAIL", "checks": [], "file": "model.int8.onnx", "backend": "ort-cpu"}
    kept = pr.kept_release_pass(manifest, fail, 150, 5)  # type: ignore[arg-type]
    assert kept is not None and "images of only 5 patients" in kept[1] and kept[2] is False
    assert pr.kept_release_pass(manifest, fail, 150, 60) is None  # type: ignore[arg-type]
    assert pr.kept_release_pass(manifest, fail, 150) is None  # type: ignore[arg-type]
