"""Mutation audit (session 50) of session 50's new code: what a validate run records in the manifest and says
about it (``export/parity_record.py``), ``validate_bundle``'s new steps (``export/validate.py``), ``export
--force``'s refusal of files a bundle's manifest does not list (``bundle_writer.check_replaceable``) and
``keygen``'s refusal of an ``--out`` inside a model folder (``train/commands/sign.py``).

Each test pins a behaviour that a single-point change (the audit's mutant id in the docstring) slipped past the
rest of the suite with. The models are stand-ins as in ``test_mutation_audit_validate_s39.py``: placeholder
bundle files with real checksums and tables of probabilities keyed by each preprocessed image, so no ONNX model
runs. A manifest that cannot be written is simulated at ``bundle_writer.manifest_update`` (the lock every
manifest write takes), since the tests may run as root, for whom a read-only folder is writable.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import validatekit
from validatekit import CPU, NAMES, PRE, PatchedModels, Table, cycled_labels, image_key, placeholder_bundle
from uopsl.export import bundle_writer
from uopsl.export.parity_metrics import ParityGates
from uopsl.export.validate import ExcludedCandidate, ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import parity_run_problem, read_manifest
from uopsl.runtime.errors import BackendError, BundleError
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes

# validatekit's module fixtures: 120 synthetic fundus photographs and the key of each preprocessed one.
photos = validatekit.photos
image_keys = validatekit.image_keys

N = validatekit.N
BOTH = ["ort-cpu:model.onnx", "ort-cpu:model.int8.onnx"]
LOOSE = ParityGates(max_flip_rate=0.5, max_class_flip_rate=0.5, max_finding_change_rate=0.5, max_auc_drop=0.5,
                    max_sensitivity_drop=0.5)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return placeholder_bundle(tmp_path / "bundle", model_name="audit-s50")


def _records(photos: Sequence[Path], labels: Sequence[tuple[str, ...] | None]) -> list[ImageRecord]:
    return [ImageRecord(p.stem, p, lab) for p, lab in zip(photos, labels)]


def _run(bundle: Path, records: list[ImageRecord], reference: Any, out: Path, *,
         context: Mapping[str, Any] | None = None, **cfg: Any) -> Any:
    # keep_ungradable: the kit's 96 px photographs are too small for the runtime's quality gate.
    config = ValidateConfig(**{"backends": ("ort-cpu",), "gates": ParityGates(), "n_boot": 0,
                               "show_progress": False, "keep_ungradable": True, **cfg})
    return validate_bundle(bundle, reference, records, out, config, label_space=NAMES,
                           context=dict(context or {"data": "test table"}), availability=CPU)


def _held(bundle: Path, file: str) -> dict[str, Any]:
    """The verdict the manifest holds for ``file`` on ort-cpu."""
    return read_manifest(bundle).file(file).info["parity"]["backends"]["ort-cpu"]


def _noisy(models: PatchedModels, sd: float = 0.35) -> None:
    """The INT8 file's probabilities moved across many thresholds: a FAIL."""
    rng = np.random.default_rng(0)
    models.files["model.int8.onnx"] = np.clip(models.ref * np.exp(rng.normal(0.0, sd, models.ref.shape)), 1e-4,
                                              1 - 1e-4)


def _manifest_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every manifest write fails as on a read-only bundle (record_parity takes this lock first)."""

    def refuse(root: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(Path(root) / "manifest.json"))

    monkeypatch.setattr(bundle_writer, "manifest_update", refuse)


# -- what a record holds ---------------------------------------------------------------------------------------
def test_a_record_counts_the_images_used_and_those_dropped_for_unknown_labels(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """P05, P07: ``n_images`` is the number of images the verdict rests on (one unreadable file of the 111 left
    after the drop is not among them), and ``data.n_dropped_unknown_labels`` the 10 images left out for a label
    that is no class of the bundle; a run that dropped none records no such key."""
    labels = cycled_labels(N)
    with_unknown = [("cataract",) if i % 12 == 0 else lab for i, lab in enumerate(labels)]  # 10 of 120
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_text("not a photograph")
    models = PatchedModels(image_keys, monkeypatch, labels)
    records = [*_records(photos, with_unknown), ImageRecord("broken", unreadable, ("dr",))]
    res = _run(bundle, records, models.reference, tmp_path / "drop", unknown_labels="drop")
    assert res.report["data"]["n_images"] == 111 and res.report["data"]["n_used"] == 110
    assert res.report["record"]["recorded"] == BOTH
    for file in ("model.onnx", "model.int8.onnx"):
        held = _held(bundle, file)
        assert held["n_images"] == 110
        assert held["data"]["n_dropped_unknown_labels"] == 10
    _run(bundle, _records(photos, labels), models.reference, tmp_path / "all")
    assert _held(bundle, "model.onnx")["n_images"] == N
    assert "n_dropped_unknown_labels" not in _held(bundle, "model.onnx")["data"]


def test_a_record_keeps_the_bootstrap_seed_of_its_run(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """P09: the record's ``bootstrap_seed`` is the run's (--bootstrap-seed 7), not a constant."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    res = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out", seed=7)
    assert res.report["bootstrap"]["seed"] == 7 and res.report["record"]["recorded"] == BOTH
    assert _held(bundle, "model.onnx")["bootstrap_seed"] == 7 and _held(bundle, "model.int8.onnx")["bootstrap_seed"] == 7


# -- what the report says about the record ---------------------------------------------------------------------
def test_kept_pytorch_lists_only_the_verdicts_kept_because_they_were_judged_against_pytorch(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """P14: an INCOMPLETE run's verdicts kept behind complete ones are listed in ``kept``, but none of them in
    ``kept_pytorch`` (the table's reference declares no kind: nothing was kept as PyTorch's)."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    assert _run(bundle, _records(photos, labels), models.reference, tmp_path / "full").status == "PASS"
    normal = [("normal",)] * N
    models.ref = models.files["model.onnx"] = models.files["model.int8.onnx"] = validatekit.confident(normal)
    rec = _run(bundle, _records(photos, normal), models.reference, tmp_path / "inc").report["record"]
    assert [(k["name"], k["verdict"], k["kept_verdict"]) for k in rec["kept"]] == [
        (BOTH[0], "INCOMPLETE", "PASS"), (BOTH[1], "INCOMPLETE", "PASS")]
    assert rec["kept_pytorch"] == []


def test_the_kept_verdicts_lead_the_record_note(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """P21: with a kept verdict and an unjudged candidate, the note says first what the manifest kept instead of
    this run's verdict, then which candidate could not be run here."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    _run(bundle, _records(photos, labels), models.reference, tmp_path / "full")
    normal = [("normal",)] * N
    models.ref = models.files["model.onnx"] = validatekit.confident(normal)

    def opener(bundle_: Path, spec: Any, threads: Any, manifest: Any) -> Table:
        if spec.file == "model.int8.onnx":
            raise BackendError("out of memory (stand-in)")
        return Table(image_keys, lambda: models.files[spec.file])

    monkeypatch.setattr("uopsl.export.validate.open_candidate", opener)
    rec = _run(bundle, _records(photos, normal), models.reference, tmp_path / "inc").report["record"]
    assert [k["name"] for k in rec["kept"]] == [BOTH[0]]
    assert [k["name"] for k in rec["not_recorded"]] == [BOTH[1]]
    kept_at = rec["note"].find("not recorded in the manifest: ort-cpu:model.onnx INCOMPLETE here")
    unjudged_at = rec["note"].find("not recorded (could not be run here")
    assert kept_at == 0 and unjudged_at > kept_at


def test_recording_off_still_names_the_run_problem(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """P16: ``record.run_problem`` says why a run would record only a FAIL (here: 40 images) even when recording
    is off (--no-record), as before the record moved to its own module."""
    labels = cycled_labels(40)
    models = PatchedModels(image_keys, monkeypatch, labels)
    rec = _run(bundle, _records(photos[:40], labels), models.reference, tmp_path / "out", record=False
               ).report["record"]
    weak = parity_run_problem(ParityGates().to_dict(), 40)
    assert weak and rec["enabled"] is False and rec["run_problem"] == weak


def test_a_reference_with_non_finite_outputs_records_nothing_and_says_why_once(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """P17, V17: nothing is judged against a reference that overflowed; the record says the reference's outputs
    could not be used, and does not list the candidates as "could not be run here" (they ran)."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    models.ref = models.ref.copy()
    models.ref[3, 1] = np.nan
    before = (bundle / "manifest.json").read_bytes()
    res = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out")
    rec = res.report["record"]
    assert res.status == "FAIL" and all(c["judged"] is False for c in res.report["candidates"])
    assert rec["note"] == "nothing recorded in the manifest: the reference's outputs could not be used"
    assert rec["recorded"] == [] and rec["kept"] == [] and rec["not_recorded"] == []
    assert (bundle / "manifest.json").read_bytes() == before


# -- the manifest write ----------------------------------------------------------------------------------------
def test_a_run_with_nothing_to_record_never_touches_the_manifest(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """P23: a run under loosened gates that passed offers nothing to the manifest, so a read-only bundle is no
    error: the record names no write failure and the headline says nothing was recorded."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    _manifest_read_only(monkeypatch)
    res = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out", gates=LOOSE)
    rec = json.loads(res.json_path.read_text(encoding="utf-8"))["record"]
    assert res.status == "PASS" and rec["recorded"] == []
    assert "error" not in rec and "could not be written" not in (rec["note"] or "")
    assert {k["name"] for k in rec["not_recorded"]} == set(BOTH)
    assert res.report["headline"].endswith("; nothing recorded)")


def test_an_unwritable_manifest_adds_to_the_verdicts_a_weak_run_held_back(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """P26: a small run holds back the FP32 file's PASS (a run like this records only a FAIL) and offers the INT8
    file's FAIL, which the manifest cannot take: ``not_recorded`` lists both, each with its own reason."""
    labels = cycled_labels(40)
    models = PatchedModels(image_keys, monkeypatch, labels)
    _noisy(models)
    _manifest_read_only(monkeypatch)
    res = _run(bundle, _records(photos[:40], labels), models.reference, tmp_path / "out")
    rec = json.loads(res.json_path.read_text(encoding="utf-8"))["record"]
    why = {k["name"]: k["why"] for k in rec["not_recorded"]}
    assert set(why) == set(BOTH) and rec["recorded"] == [] and "Permission denied" in rec["error"]
    assert "a run like this records only a FAIL" in why[BOTH[0]]
    assert why[BOTH[1]].startswith("the manifest could not be written (")


def test_a_rerun_with_the_same_verdicts_lists_them_as_recorded(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """P24: the same validation a second later gives the same verdicts; the manifest keeps its records (and its
    bytes: ``created`` is the first run's), and the report lists them as recorded, not as verdicts the manifest
    "did not take" because only their time differs."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    first = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out")
    assert first.report["record"]["recorded"] == BOTH
    before = (bundle / "manifest.json").read_bytes()
    time.sleep(1.1)  # `created` has whole seconds
    again = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out")  # the record names it
    assert again.report["created"] != first.report["created"]
    rec = again.report["record"]
    assert rec["recorded"] == BOTH and rec["kept"] == [] and rec["note"] is None
    assert (bundle / "manifest.json").read_bytes() == before
    assert _held(bundle, "model.onnx")["created"] == first.report["created"]


def test_the_log_names_no_recorded_verdict_when_the_manifest_took_none(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """P29: "... holds these parity verdicts" (once "parity verdicts recorded in ...") is logged for what the manifest took, and not at all when it took
    nothing (both files changed while they were validated)."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    real = bundle_writer._record_parity
    monkeypatch.setattr(bundle_writer, "_record_parity",
                        lambda root, records, validated: real(root, records, {k: "0" * 64 for k in validated}))
    with caplog.at_level(logging.INFO, logger="uopsl"):
        rec = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out").report["record"]
    assert rec["recorded"] == [] and [k["name"] for k in rec["kept"]] == BOTH
    assert not [r for r in caplog.records if "holds these parity verdicts" in r.getMessage()]
    monkeypatch.setattr(bundle_writer, "_record_parity", real)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="uopsl"):
        _run(bundle, _records(photos, labels), models.reference, tmp_path / "again")
    said = [r.getMessage() for r in caplog.records if "holds these parity verdicts" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("model.onnx on ort-cpu PASS, model.int8.onnx on ort-cpu PASS")


def test_the_headline_says_nothing_was_recorded_when_the_manifest_could_not_be_written(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """V18: a PASS against another checkpoint is no release pass, and its headline says what the manifest holds:
    after a failed write, "nothing recorded" (parity.json and the returned report), not the verdicts the report
    expected to record before writing."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    _manifest_read_only(monkeypatch)
    res = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out",
               context={"data": "test table", "other_checkpoint": True})
    on_disk = json.loads(res.json_path.read_text(encoding="utf-8"))
    want = ("PASS (not a release pass: judged against another checkpoint than the bundle's (--other-checkpoint: a "
            "study); nothing recorded)")
    assert res.status == "PASS" and on_disk["headline"] == res.report["headline"] == want


def test_a_mislabelled_pytorch_reference_is_reported_as_kept_behind_the_pytorch_verdict(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """V21: a reference declaring kind "pytorch" with an ONNX source counts as ONNX (runtime.bundle's rule, which
    record_parity applies): the report says in advance that the PyTorch verdicts stay, as ``kept_pytorch`` with
    that reason, not as verdicts the manifest "did not take" after the write."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    torch_ref = Table(image_keys, lambda: models.ref)
    torch_ref.reference_kind = "pytorch"  # type: ignore[attr-defined]
    torch_ref.fingerprint = "torch-weights-1"  # type: ignore[attr-defined]
    assert _run(bundle, _records(photos, labels), torch_ref, tmp_path / "torch").report["record"]["recorded"] == BOTH
    odd = Table(image_keys, lambda: models.ref)
    odd.reference_kind = "pytorch"  # type: ignore[attr-defined]
    odd.reference_source = "onnx:model.onnx@0123456789ab on ort-cpu"  # type: ignore[attr-defined]
    odd.excluded_candidates = (ExcludedCandidate("model.onnx", "ort-cpu", "the reference itself"),)  # type: ignore[attr-defined]
    rec = _run(bundle, _records(photos, labels), odd, tmp_path / "odd").report["record"]
    assert [k["name"] for k in rec["kept_pytorch"]] == [BOTH[1]]
    assert "the manifest keeps the verdict judged against PyTorch" in rec["kept"][0]["why"]
    assert _held(bundle, "model.int8.onnx")["reference_kind"] == "pytorch"


# -- validate_bundle's steps -----------------------------------------------------------------------------------
def test_a_candidate_with_many_non_finite_outputs_lists_the_first_fifty(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """V13: 60 images with a NaN: the entry counts 60 and lists the first 50 ids, in the order of the run."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    models.files["model.int8.onnx"] = models.ref.copy()
    models.files["model.int8.onnx"][:60, 2] = np.nan
    res = _run(bundle, _records(photos, labels), models.reference, tmp_path / "out", record=False)
    entry = next(c for c in res.report["candidates"] if c["file"] == "model.int8.onnx")
    assert entry["verdict"] == "FAIL" and entry["non_finite"]["n"] == 60 and entry["non_finite"]["of"] == N
    assert entry["non_finite"]["ids"] == [f"i{i:03d}" for i in range(50)]


def test_a_reference_with_its_own_preprocessing_is_named_in_the_notes(
        bundle: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """V20: the report's notes (and the log) say that the manifest's preprocessing differs from the reference's,
    field by field, and that each side was fed its own."""
    own = PreprocessConfig(size=PRE.size, clahe=not PRE.clahe)
    few = photos[:12]
    labels = cycled_labels(len(few))
    keys = {image_key(preprocess(read_bytes(p), PRE, source=str(p)).image): i for i, p in enumerate(few)}
    own_keys = {image_key(preprocess(read_bytes(p), own, source=str(p)).image): i for i, p in enumerate(few)}
    models = PatchedModels(keys, monkeypatch, labels)
    reference = Table(own_keys, lambda: models.ref)
    reference.preprocess = own  # type: ignore[attr-defined]
    res = _run(bundle, _records(few, labels), reference, tmp_path / "out", record=False)
    assert res.report["preprocess"]["differences"] == {"clahe": [own.clahe, PRE.clahe]}
    notes = [n for n in res.report["notes"] if n.startswith("the manifest's preprocessing differs from the reference")]
    assert notes == [f"the manifest's preprocessing differs from the reference's (checkpoint) in clahe: reference "
                     f"{own.clahe!r}, bundle {PRE.clahe!r}; each side was fed its own preprocessing"]


# -- export --force: files the manifest does not list ----------------------------------------------------------
def test_force_refuses_a_bundle_holding_even_one_unlisted_file(tmp_path: Path) -> None:
    """C01: a single signing key kept in the bundle folder is enough to refuse (it would be deleted)."""
    from uopsl.export.bundle_writer import check_replaceable

    b = placeholder_bundle(tmp_path / "b", model_name="audit-s50")
    check_replaceable(b)
    (b / "uopsl-signing.key").write_text("secret")
    with pytest.raises(BundleError, match=r"also holds 1 file\(s\) its manifest does not list \(uopsl-signing\.key\)"):
        check_replaceable(b)


@pytest.mark.parametrize("n, shown", [
    (5, "(a.txt, b.txt, c.txt, d.txt, e.txt)"),
    (6, "(a.txt, b.txt, c.txt, d.txt, e.txt and 1 more)"),
    (8, "(a.txt, b.txt, c.txt, d.txt, e.txt and 3 more)"),
])
def test_force_names_the_first_five_unlisted_files_and_counts_the_rest(tmp_path: Path, n: int, shown: str) -> None:
    """C03, C04: the refusal names the first five unlisted files (sorted) and counts the others; exactly five are
    all named, with no "and 0 more"."""
    from uopsl.export.bundle_writer import check_replaceable

    b = placeholder_bundle(tmp_path / "b", model_name="audit-s50")
    for name in "abcdefgh"[:n]:
        (b / f"{name}.txt").write_text("x")
    with pytest.raises(BundleError) as err:
        check_replaceable(b)
    assert f"holds {n} file(s) its manifest does not list {shown}, which replacing it would delete" in str(err.value)


# -- keygen --out inside a model folder ------------------------------------------------------------------------
def test_keygen_names_the_innermost_model_folder_it_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    """K02: for --out inside a bundle that itself lies in a checkpoint folder, the refusal names the bundle (the
    folder the key would be copied with first), and writes nothing."""
    from uopsl.runtime.clikit import main_entry
    from uopsl.train.cli import cli

    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"weights stand-in")
    (ck / "checkpoint.json").write_text(json.dumps({"model": {}, "stage": "finetune"}))
    b = placeholder_bundle(ck / "bundle", model_name="audit-s50")
    before = sorted(p.name for p in ck.rglob("*"))
    rc = main_entry(cli, ["keygen", "--out", str(b / "keys")], prog_name="uopsl")
    err = capsys.readouterr().err
    assert rc == 2 and f"inside the bundle folder {b}," in err and "the checkpoint folder" not in err
    assert sorted(p.name for p in ck.rglob("*")) == before


# -- the audit's behaviour review: what the refactored validate_bundle asks of its reference, and when -----------
class _Asks:
    """A reference (the kit's table) whose ``device`` or ``reference_kind`` cannot be answered."""

    def __init__(self, table: Any, *, fingerprint: str = "", kind_fails: bool = False) -> None:
        self._table, self.fingerprint, self._kind_fails = table, fingerprint, kind_fails

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._table.infer(batch)

    @property
    def device(self) -> str:
        raise RuntimeError("device is not known until the model is loaded")

    @property
    def reference_kind(self) -> str:
        if self._kind_fails:
            raise RuntimeError("kind unknown")
        return ""


def test_a_reference_is_asked_its_device_only_for_the_cache_key(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The review's D1: the refactor asked every reference for its ``device``, though only the output cache's
    key needs it (a reference with a fingerprint, resuming): a run without a cache failed where it had passed."""
    labels = cycled_labels(N)
    models = PatchedModels(image_keys, monkeypatch, labels)
    assert _run(bundle, _records(photos, labels), _Asks(models.reference), tmp_path / "a").status == "PASS"
    assert _run(bundle, _records(photos, labels), _Asks(models.reference, fingerprint="f"), tmp_path / "b",
                resume=False).status == "PASS"


def test_the_label_warning_comes_before_the_reference_is_asked_about_itself(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The review's D2: labels that are no class of the bundle are warned about even when the reference then fails
    to say what it is."""
    labels = cycled_labels(N)
    with_unknown = [("cataract",) if i % 12 == 0 else lab for i, lab in enumerate(labels)]
    models = PatchedModels(image_keys, monkeypatch, labels)
    with caplog.at_level(logging.WARNING, logger="uopsl"), pytest.raises(RuntimeError, match="kind unknown"):
        _run(bundle, _records(photos, with_unknown), _Asks(models.reference, kind_fails=True), tmp_path / "out",
             unknown_labels="negative")
    assert any("not classes of this bundle" in r.getMessage() for r in caplog.records)
