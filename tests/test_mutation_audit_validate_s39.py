"""Mutation audit (session 39) of ``uopsl validate``: the parity engine (``export/validate.py``) and its HTML
report (``export/parity_html.py``).

Each test pins a behaviour that a single-point bug in one of the two modules slipped past the rest of the suite
with (the mutant ids are those of the audit's list, named in each docstring). The models are stand-ins as in
``test_validate_verdicts.py``: the bundle's files are placeholder bytes with real checksums and every model is a
table keyed by each preprocessed image, so each probability is set by the test and no ONNX model runs. Expected
values are worked out by hand in the test (counts of the images built, the backends a machine lacks, the bytes
of a digest's text), never read back from the code under test. The follow-up round (the list's second half) also
calls the page's and the record's small helpers directly (``_num``, ``_bound``, ``_headroom``, ``_judged_on``,
``_recorded``, ...), where a whole run would only hide the figure under test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import validatekit
from validatekit import (
    CPU, DEMO_CLASSES, NAMES, PRE, PatchedModels, Table, cycled_labels, image_key, placeholder_bundle,
)
from uopsl.export import parity_record as record_mod
from uopsl.export import validate as validate_mod
from uopsl.export.parity_metrics import ParityGates
from uopsl.export.validate import (
    ImageRecord,
    ValidateConfig,
    images_digest,
    plan_candidates,
    unknown_labels,
    validate_bundle,
)
from uopsl.runtime.backends import Availability
from uopsl.runtime.bundle import FileEntry, Manifest, describe_file, read_manifest, write_manifest
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes

# validatekit's module fixtures: 120 synthetic fundus photographs and the key of each preprocessed one.
photos = validatekit.photos
image_keys = validatekit.image_keys




@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return placeholder_bundle(tmp_path / "bundle", model_name="audit-s39")


def _records(photos: Sequence[Path], labels: Sequence[tuple[str, ...] | None],
             patients: Sequence[str | None] | None = None) -> list[ImageRecord]:
    pats = list(patients) if patients is not None else [None] * len(photos)
    return [ImageRecord(p.stem, p, lab, patient=pid) for p, lab, pid in zip(photos, labels, pats)]


def _run(bundle: Path, records: list[ImageRecord], models: PatchedModels, out: Path, *,
         label_space: Sequence[str] | None = NAMES, **cfg: Any) -> Any:
    # keep_ungradable: the kit's 96 px photographs are too small for the runtime's quality gate.
    config = ValidateConfig(**{"backends": ("ort-cpu",), "gates": ParityGates(), "n_boot": 0,
                               "show_progress": False, "keep_ungradable": True, **cfg})
    return validate_bundle(bundle, models.reference, records, out, config, label_space=label_space,
                           context={"data": "test table"}, availability=CPU)


def _cand(report: Mapping[str, Any], file: str) -> dict[str, Any]:
    return next(c for c in report["candidates"] if c["file"] == file)


# -- which candidates run, and which are listed as not run ---------------------------------------------------
def test_every_backend_this_machine_lacks_is_listed_for_a_bundle_with_onnx_files(bundle: Path) -> None:
    """M01, M02: with ``--backends all`` on a CPU-only machine that has TensorRT's Python module, the report lists
    each GPU/OpenVINO backend that could have run the bundle's ONNX files as not run here, and TensorRT as having
    no engine file in this bundle; nothing is silently left out. Only ort-cpu runs, on both files."""
    m = read_manifest(bundle)
    av = Availability(("CPUExecutionProvider",), tensorrt=True)
    runs, skipped = plan_candidates(bundle, m, ("all",), av)
    assert [(r.backend, r.file) for r in runs] == [("ort-cpu", "model.onnx"), ("ort-cpu", "model.int8.onnx")]
    assert [s["name"] for s in skipped] == ["ort-cuda", "ort-trt", "openvino", "tensorrt"]
    assert skipped[-1]["reason"] == "the bundle has no engine file"
    # Without TensorRT here and no engine in the bundle, TensorRT is not worth a line (nothing it could run).
    _, skipped = plan_candidates(bundle, m, ("all",), CPU)
    assert [s["name"] for s in skipped] == ["ort-cuda", "ort-trt", "openvino"]


def test_ort_cpu_runs_each_int8_variant_not_only_the_one_the_runtime_would_pick(tmp_path: Path) -> None:
    """M04: on ort-cpu every ONNX file is a candidate, the TensorRT-style s8 file included (each INT8 variant is
    worth measuring there); only the GPU/OpenVINO backends are narrowed to what the runtime would run."""
    root = tmp_path / "b3"
    root.mkdir()
    names = {"model.onnx": "fp32", "model.int8.onnx": "int8-qdq-u8", "model.int8.trt.onnx": "int8-qdq-s8"}
    for name in names:
        (root / name).write_bytes(f"{name} stand-in".encode())
    files = tuple(describe_file(root, FileEntry(n, "onnx", p)) for n, p in names.items())
    write_manifest(root, Manifest(classes=DEMO_CLASSES, head="sigmoid", preprocess=PRE, files=files,
                                  model_name="three-files"))
    runs, skipped = plan_candidates(root, read_manifest(root), ("ort-cpu",), CPU)
    assert [(r.name, r.precision) for r in runs] == [(f"ort-cpu:{n}", p) for n, p in names.items()]
    assert skipped == []


# -- labels the bundle does not know, and the images' content digest ------------------------------------------
def test_an_unknown_label_is_counted_once_per_image_that_carries_it() -> None:
    """M05: the refusal and the report count the IMAGES carrying each unknown label; a label listed twice for one
    image (a CSV cell ``cataract;cataract``) is one image, not two."""
    recs = [ImageRecord("a", Path("a.jpg"), ("cataract", "cataract")), ImageRecord("b", Path("b.jpg"), ("cataract",)),
            ImageRecord("c", Path("c.jpg"), ("dr",)), ImageRecord("d", Path("d.jpg"), None)]
    assert unknown_labels(NAMES, recs) == {"cataract": 2}


def test_the_images_digest_is_the_documented_text_with_sorted_labels() -> None:
    """M08, M09: data.images_sha256 is the sha256 of one JSON line per image, ``[file sha256, labels sorted]``
    (null: unlabelled), each ended by a newline, as IMAGES_DIGEST_METHOD tells a signer to recompute it; the
    order in which a CSV listed an image's labels does not change it."""
    text = '["aa",["amd","dr"]]\n["bb",null]\n'
    want = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert images_digest(["aa", "bb"], [("dr", "amd"), None]) == want
    assert images_digest(["aa", "bb"], [("amd", "dr"), None]) == want


# -- the outputs a model returns, and the output cache ---------------------------------------------------------
def test_outputs_with_another_number_of_classes_are_refused_as_another_model() -> None:
    """M11: a reference or candidate returning 4 classes for a 5-class bundle (a checkpoint of another model) is
    refused with the question whether checkpoint and bundle are the same model, whatever the batch size."""
    four = {"probs": np.full((3, 4), 0.5, np.float32), "logits": np.zeros((3, 4), np.float32)}
    with pytest.raises(BundleError, match=r"'probs' has shape \(3, 4\), expected \(3, 5\).*same model"):
        validate_mod._check_outputs("the reference", four, 3, 5)
    five = {"probs": np.full((3, 5), 0.5, np.float32), "logits": np.zeros((3, 5), np.float32)}
    assert validate_mod._check_outputs("the reference", five, 3, 5)["probs"].shape == (3, 5)


class _Fingerprinted(Table):
    """A reference with a fingerprint, which turns the output cache on."""

    fingerprint = "audit-s39-reference"


def test_a_first_run_computes_everything_without_a_cache_warning_and_a_rerun_reads_it_all(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """M10, H21: a batch not yet in the cache is simply computed; no "unreadable cached batch" warning on a first
    run (40 images in batches of 16: 3 batches). The rerun takes all 3 from the cache, and its page says all (not
    some) came from it."""
    labels = cycled_labels(40)
    models = PatchedModels(image_keys, monkeypatch, labels)
    models.reference = _Fingerprinted(image_keys, lambda: models.ref)
    with caplog.at_level("WARNING", logger="uopsl.export.validate"):
        first = _run(bundle, _records(photos[:40], labels), models, tmp_path / "out", record=False)
    assert not [r for r in caplog.records if "cached batch" in r.getMessage()]
    assert first.report["cache"] == {"enabled": True, "batches": 3, "batches_from_cache": 0,
                                     "outputs_from_cache": "none"}
    again = _run(bundle, _records(photos[:40], labels), models, tmp_path / "out", record=False)
    assert again.report["cache"]["batches_from_cache"] == 3 and again.report["cache"]["outputs_from_cache"] == "all"
    assert ("All the model outputs came from the output cache of an earlier run"
            in again.html_path.read_text(encoding="utf-8"))



class _Failing(Table):
    """A candidate that loads but whose every inference call raises (a GPU out of memory)."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("out of memory")


def test_a_candidate_that_failed_keeps_its_failure_when_the_outputs_come_from_the_cache(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M14: the INT8 file's inference failed in the first run; the rerun reads every batch from the cache and
    must still report that failure (FAIL, not judged), not judge the file on outputs it never produced."""
    labels = cycled_labels(20)
    models = PatchedModels(image_keys, monkeypatch, labels)
    models.reference = _Fingerprinted(image_keys, lambda: models.ref)
    monkeypatch.setattr(validate_mod, "open_candidate", lambda bundle, spec, threads, manifest: (
        _Failing(image_keys, lambda: models.ref) if spec.file == "model.int8.onnx"
        else Table(image_keys, lambda: models.files[spec.file])))
    for out in ("first", "first"):  # the same folder: the second run reads the cache
        res = _run(bundle, _records(photos[:20], labels), models, tmp_path / out, record=False)
        int8 = _cand(res.report, "model.int8.onnx")
        assert int8["verdict"] == "FAIL" and int8["judged"] is False, out
        assert int8["error"] == "inference failed: out of memory"
    assert res.report["cache"]["outputs_from_cache"] == "all"


def test_labels_for_some_images_only_are_refused(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """M16: with a label space every image needs its labels; one unlabelled image among labelled ones would
    count as a negative for every class (a wrong truth), so the run is refused before anything is written."""
    models = PatchedModels(image_keys, monkeypatch, cycled_labels(4))
    records = _records(photos[:4], [("dr",), None, ("normal",), ("amd",)])
    with pytest.raises(ConfigError, match="label_space is given but some images have no labels"):
        _run(bundle, records, models, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_reference_with_its_own_preprocessing_gets_its_own_batch_and_the_report_says_which_is_which(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M13, M18: a checkpoint preprocessing at 48 px for a bundle whose manifest says 32 px: the reference is fed
    the 48 px images (its table only knows those), the candidates the 32 px ones, and the report's differences
    read [reference, bundle] = [48, 32] per the HTML's column order (reference (checkpoint), bundle manifest)."""
    own = PreprocessConfig(size=48)
    labels = cycled_labels(10)
    models = PatchedModels(image_keys, monkeypatch, labels)
    keys48 = {image_key(preprocess(read_bytes(p), own, source=str(p)).image): i for i, p in enumerate(photos[:10])}

    class _Own(Table):
        preprocess = own

    models.reference = _Own(keys48, lambda: models.ref)
    res = _run(bundle, _records(photos[:10], labels), models, tmp_path / "out", record=False)
    assert res.report["preprocess"]["differences"] == {"size": [48, 32]}
    assert res.report["reference"]["preprocess"]["size"] == 48
    html = res.html_path.read_text(encoding="utf-8")
    assert "<td>size</td><td>48</td><td>32</td>" in html


def test_a_reference_without_a_fingerprint_is_never_served_cached_outputs(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M20: the cache is keyed by the reference's fingerprint; a reference without one (a runtime backend, another
    checkpoint's stand-in) gets no cache at all, so a second run into the same folder with other reference outputs
    is judged on those outputs, not on the first run's."""
    labels = cycled_labels(20)
    models = PatchedModels(image_keys, monkeypatch, labels)
    first = _run(bundle, _records(photos[:20], labels), models, tmp_path / "out", record=False)
    assert first.report["cache"]["enabled"] is False
    assert first.report["cache"]["why_disabled"] == "the reference has no fingerprint to key its outputs by"
    assert not (tmp_path / "out" / ".parity-cache").exists()
    models.ref = models.ref * 0.5  # every reference probability halved: the referable calls move
    again = _run(bundle, _records(photos[:20], labels), models, tmp_path / "out", record=False)
    assert again.report["cache"]["batches_from_cache"] == 0
    assert _cand(again.report, "model.onnx")["numerical"]["max_abs_prob_diff"] > 0.1


# -- the HTML report -----------------------------------------------------------------------------------------
def _two_flips(photos: Sequence[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
               n: int = 20) -> tuple[PatchedModels, list[ImageRecord]]:
    """``n`` images whose INT8 file loses image 0's dr call and gains an amd call on image 1 (two referral flips,
    two changed findings)."""
    labels = cycled_labels(n)
    labels[0], labels[1] = ("dr",), ("normal",)
    models = PatchedModels(image_keys, monkeypatch, labels)
    cand = models.ref.copy()
    dr, amd = NAMES.index("dr"), NAMES.index("amd")
    cand[0, dr] = DEMO_CLASSES[dr].threshold * 0.4
    cand[1, amd] = DEMO_CLASSES[amd].threshold + (1 - DEMO_CLASSES[amd].threshold) * 0.6
    models.files["model.int8.onnx"] = cand
    return models, _records(photos[:n], labels)


def test_the_flipped_images_table_says_who_called_what_and_escapes_the_image_names(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """H08, H09, H17, H23, H27: two referral flips built by hand. Image 0 (labelled dr, named ``<b>x</b>`` as a file
    name may be) loses its dr call in the INT8 file: truth refer, reference refer, candidate no referral; image 1
    (labelled normal) gains an amd call: truth no referral, reference no referral, candidate refer. The changed
    findings table lists dr (reference dr, candidate none) and amd (reference none, candidate amd); the name is
    shown as text, never as markup."""
    models, records = _two_flips(photos, image_keys, monkeypatch)
    records[0] = ImageRecord("<b>x</b>", photos[0], records[0].labels)
    res = _run(bundle, records, models, tmp_path / "out", record=False)
    html = res.html_path.read_text(encoding="utf-8")
    assert "<b>x</b>" not in html
    section = html.split("ort-cpu:model.int8.onnx —", 1)[1]
    one, two = "&lt;b&gt;x&lt;/b&gt;", photos[1].stem
    assert f"<td>{one}</td><td>refer</td><td>refer</td><td>no referral</td>" in section
    assert f"<td>{two}</td><td>no referral</td><td>no referral</td><td>refer</td>" in section
    assert f"<td>{one}</td><td>dr</td><td>dr</td><td>none</td><td>yes</td>" in section
    assert f"<td>{two}</td><td>amd</td><td>none</td><td>amd</td><td>yes</td>" in section
    # A FAIL (2 flips in 20 images, over the 0.5 % gate) exits 1: the page never calls it "not a release pass"
    # with an exit code of 0, which is for a PASS under looser gates or on too few images.
    assert res.status == "FAIL" and res.report["release_pass_reasons"]
    assert "Not a release pass" not in html and "The exit code is 0" not in html


def test_an_incomplete_candidate_is_shown_as_incomplete_not_as_a_pass(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """H03, H18, H22, H26: on 20 images all labelled normal no referable class has a positive image, so both
    files are INCOMPLETE; the page marks each in the INCOMPLETE style (amber), never the PASS one (green), and the
    banner counts the two candidates not evaluated in full. The run did not record and gave no patient ids: the
    page says both."""
    labels = [("normal",)] * 20
    models = PatchedModels(image_keys, monkeypatch, labels)
    res = _run(bundle, _records(photos[:20], labels), models, tmp_path / "out", record=False)
    assert [c["verdict"] for c in res.report["candidates"]] == ["INCOMPLETE", "INCOMPLETE"]
    html = res.html_path.read_text(encoding="utf-8")
    assert html.count('<span class="incomplete">INCOMPLETE</span>') >= 4  # summary row and heading, per file
    assert '<span class="pass">INCOMPLETE</span>' not in html
    assert "Recording was off: nothing was written into the manifest." in html  # record=False
    assert "The data carry no patient ids: the AUC bootstrap resamples images." in html  # no patient ids given
    assert ("INCOMPLETE: 0 of 2 candidates evaluated in full and within the gates; 2 not evaluated in full "
            "(see each gate's detail)") in html


def test_the_int8_arithmetic_line_says_not_faithful_only_when_it_is_not() -> None:
    """H11: the CPU's INT8 kernels 12 dB from the file's exact arithmetic, under the 20 dB a faithful CPU reaches,
    are flagged "not faithful"; at 35 dB nothing is flagged."""
    from uopsl.export.parity_html import _arithmetic

    base = {"file_db": 30.0, "file_top1": 1.0, "cpu_int8": "avx512-vnni", "faithful_db": 20.0, "note": ""}
    assert "(below 20 dB: not faithful)" in _arithmetic({**base, "kernels_db": 12.0, "faithful": False})
    assert "not faithful" not in _arithmetic({**base, "kernels_db": 35.0, "faithful": True})


def test_the_summary_shows_the_measured_figures_when_the_verdict_was_judged_on_the_bounds(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """H06: judged on the bounds, a candidate identical to the reference has a sensitivity bound above 0 (the
    exact upper bound of 0 lost of 24 positives per class), but the summary's "worst sens. drop" column shows the
    measured figure, 0, as its heading promises (the bounds are in each candidate's gate table)."""
    labels = cycled_labels(120)
    models = PatchedModels(image_keys, monkeypatch, labels)
    res = _run(bundle, _records(photos[:120], labels), models, tmp_path / "out", record=False, judge_on="bounds")
    fp32 = _cand(res.report, "model.onnx")
    bound = next(c for c in fp32["checks"] if c["name"] == "sensitivity_drop")["value"]
    assert bound > 0.0
    summary = res.html_path.read_text(encoding="utf-8").split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    rows = [r for r in summary.split("<tr>") if r.startswith("<td>ort-cpu:model.onnx</td>")]
    assert len(rows) == 1 and rows[0].endswith("<td>0</td><td>100.00%</td></tr>")


def test_outputs_csv_defuses_an_image_name_a_spreadsheet_would_run_as_a_formula(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M38: outputs.csv follows results.csv's conventions: an image named ``=HYPERLINK(...)`` (a file name is
    anyone's choice) is written as text, prefixed with ``'``, in the id column, never as a live formula."""
    import csv

    labels = cycled_labels(10)
    models = PatchedModels(image_keys, monkeypatch, labels)
    records = _records(photos[:10], labels)
    records[0] = ImageRecord('=HYPERLINK("http://x","y")', photos[0], labels[0])
    res = _run(bundle, records, models, tmp_path / "out", record=False)
    text = (tmp_path / "out" / "outputs.csv").read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["id"] == '\'=HYPERLINK("http://x","y")' and rows[1]["id"] == photos[1].stem
    assert res.report["data"]["image_ids"][0] == '=HYPERLINK("http://x","y")'  # the report keeps the name


# -- follow-up round (session 39): helpers whose single-point bugs the first round did not reach ------------
def test_a_batch_size_of_zero_and_an_excluded_candidate_without_a_reason_are_refused() -> None:
    """M48, M53: ``batch_size=0`` (no image would ever be run) is refused as a configuration error, and so is an
    excluded candidate with an empty reason (the report's "not run here" line would give the reader nothing)."""
    with pytest.raises(ConfigError, match="batch_size"):
        ValidateConfig(batch_size=0)
    with pytest.raises(ConfigError, match="needs a file and a reason"):
        validate_mod.ExcludedCandidate("model.int8.onnx", "ort-cpu", "")


class _Notes:
    def __init__(self, notes: dict[str, str]) -> None:
        self.notes = notes


def test_the_original_checkpoint_of_a_qat_bundle_matches_it() -> None:
    """M42: a bundle exported from a ``uopsl qat`` checkpoint records its weights and its teacher's (the original
    checkpoint's); validating against that original checkpoint matches the bundle, a third checkpoint does not."""
    m = _Notes({"checkpoint_weights_sha256": "a" * 64, "checkpoint_teacher_weights_sha256": "b" * 64})
    facts = validate_mod._checkpoint_facts
    assert facts({"checkpoint_weights_sha256": "b" * 64}, m)["checkpoint_matches_bundle"] is True
    assert facts({"checkpoint_weights_sha256": "a" * 64}, m)["checkpoint_matches_bundle"] is True
    assert facts({"checkpoint_weights_sha256": "c" * 64}, m)["checkpoint_matches_bundle"] is False


def test_a_record_for_earlier_bytes_of_a_file_is_not_its_verdict() -> None:
    """M46: a parity record whose sha256 is not the file's current content (the file was re-exported since) is
    no verdict on the file as it is: nothing is "kept" from it."""
    rec = {"passed": True, "verdict": "PASS"}
    old = FileEntry("model.onnx", "onnx", "fp32", sha256="1" * 64,
                    info={"parity": {"sha256": "0" * 64, "backends": {"ort-cpu": rec}}})
    assert record_mod.recorded_verdict(old, "ort-cpu") is None
    same = FileEntry("model.onnx", "onnx", "fp32", sha256="1" * 64,
                     info={"parity": {"sha256": "1" * 64, "backends": {"ort-cpu": rec}}})
    assert record_mod.recorded_verdict(same, "ort-cpu") == rec


def test_the_per_layer_diagnosis_uses_exactly_the_configured_number_of_images(
        bundle: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """M45: ``per_layer_images=3`` with 6 images feeds the layer-wise diagnosis 3 images, not 4."""
    from uopsl.export import layerwise
    from uopsl.runtime.errors import UopslError

    seen: list[int] = []

    def fake(fp32: Path, int8: Path, inputs: np.ndarray, **kw: Any) -> Any:
        seen.append(len(inputs))
        raise UopslError("stand-in files")

    monkeypatch.setattr(layerwise, "layerwise_errors", fake)
    m = read_manifest(bundle)
    specs, _ = plan_candidates(bundle, m, ("ort-cpu",), CPU)
    cfg = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), per_layer=True, per_layer_images=3, show_progress=False)
    out = validate_mod._per_layer(bundle, m, specs, _records(photos[:6], cycled_labels(6)), cfg)
    assert seen == [3] and out == {"model.int8.onnx": {"error": "stand-in files"}}


def test_the_html_figures_show_missing_and_non_finite_numbers_as_na_and_zero_as_a_value() -> None:
    """H02, H28: a NaN or infinite figure (an undefined AUC, an overflowed output) reads "n/a", never "nan" or
    "inf"; in the context table a 0 (``--limit 0``) reads 0 and False reads "no", not the "-" of a missing value."""
    from uopsl.export.parity_html import _num, _value

    na = '<span class="na">n/a</span>'
    assert _num(float("nan")) == na and _num(float("inf"), ".2e") == na and _num(None) == na
    assert _num(0.25, ".2%") == "25.00%"
    assert _value(0) == "0" and _value(False) == "no" and _value(True) == "yes"
    assert _value(None) == _value("") == _value([]) == '<span class="na">-</span>'


def test_a_bound_names_the_spread_of_images_per_patient_only_when_there_is_one() -> None:
    """H04: "1-3 images each" appears when patients have from 1 to 3 images; with 2 images each there is no
    spread to name."""
    from uopsl.export.parity_html import _bound

    def b(lo: int, hi: int) -> dict[str, Any]:
        return {"changes": 1, "n": 40, "upper95": 0.1,
                "by_patient": {"changes": 1, "n": 20, "upper95_images": 0.2,
                               "images_per_patient": {"min": lo, "max": hi}}}

    assert "; patients 1/20, 1-3 images each " in _bound(b(1, 3))
    assert "; patients 1/20 " in _bound(b(2, 2)) and "images each" not in _bound(b(2, 2))


def test_lost_positives_are_shown_under_sensitivity_not_under_specificity() -> None:
    """H05: the "lost" line (positives the candidate no longer calls) belongs to sensitivity; the specificity
    cell of the same row has none."""
    from uopsl.export.parity_html import _rate_cell

    ch = {"changes": 0, "n": 30, "upper95": 0.1}
    row = {"sensitivity_reference": 0.9, "sensitivity_candidate": 0.85, "sensitivity_changes": ch,
           "specificity_reference": 0.95, "specificity_candidate": 0.95, "specificity_changes": ch,
           "lost_positives": {"changes": 2, "n": 20, "upper95": 0.3}}
    assert "<br>lost 2/20 " in _rate_cell(row, "sensitivity")
    assert "lost" not in _rate_cell(row, "specificity")


def test_the_headroom_table_reads_expected_then_observed_changes() -> None:
    """H12: the column is "changes expected / observed": 1.5 expected (a prediction, one decimal) then 4 observed."""
    from uopsl.export.parity_html import _headroom

    h = {"units": "probability", "close_calls": {"0.01": 3}, "error_rms": 0.002, "expected_changes": 1.5,
         "observed_changes": 4, "allowed_changes": 0.5, "error_rms_allowed": 0.001, "precision_needed_db": 6.0}
    assert "<td>1.5 / 4</td>" in _headroom({"top1": h})


def test_the_layer_table_highlights_the_suggested_layers_only() -> None:
    """H13: the layers the diagnosis suggests excluding are the highlighted rows; the others are not."""
    from uopsl.export.parity_html import _per_layer as layers_html

    def layer(name: str) -> dict[str, Any]:
        return {"node": name, "op_type": "Conv", "sqnr_db": 10.0, "cosine": 0.99, "input_sqnr_db": 30.0,
                "sqnr_drop_db": 20.0, "range_sqnr_db": 25.0}

    d = {"images": 8, "layers": [layer("conv_a"), layer("conv_b")], "sqnr_threshold_db": 20.0,
         "min_drop_db": 3.0, "outputs": {}, "suggested_exclude": ["conv_a"], "suggested_command": "uopsl quantize"}
    page = layers_html({"model.int8.onnx": d})
    assert '<tr class="hl"><td>conv_a</td>' in page
    assert "<tr><td>conv_b</td>" in page


def test_the_toolkit_revision_shows_twelve_characters_of_the_commit() -> None:
    """H20: the page names the toolkit's git commit by its first 12 characters (as ``git log`` can be searched
    with), and says when the tree had local changes."""
    from uopsl.export.parity_html import _revision_words

    assert _revision_words({"git_commit": "0123456789abcdef0123"}) == " (git 0123456789ab)"
    assert _revision_words({"git_commit": "0123456789abcdef0123", "git_dirty": True}) == (
        " (git 0123456789ab, with local changes)")


def test_the_page_says_which_figures_the_verdict_compared() -> None:
    """H25: judged on the bounds, the page says so in bold; judged on the estimates (the default), it says the
    bounds are reported, not gated."""
    from uopsl.export.parity_html import _judged_on

    assert _judged_on("bounds").startswith("<p><b>Judged on the 95 % bounds</b>")
    assert "Judged on the point estimates (the default)" in _judged_on("estimates")
    assert "Judged on the point estimates (the default)" in _judged_on(None)


def test_a_run_under_the_minimum_of_used_images_is_no_release_pass_whatever_was_listed(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M29: 101 images listed, 2 of them unreadable: 99 used, under the 100 a pass counts from. The run passes
    its gates but is no release pass and records no PASS, because the images USED are too few."""
    labels = cycled_labels(99)
    models = PatchedModels(image_keys, monkeypatch, labels)
    bad = []
    for name in ("broken1.jpg", "broken2.jpg"):
        (tmp_path / name).write_bytes(b"not a jpeg")
        bad.append(ImageRecord(Path(name).stem, tmp_path / name, ("normal",)))
    res = _run(bundle, _records(photos[:99], labels) + bad, models, tmp_path / "out", record=True)
    assert res.report["data"]["n_images"] == 101 and res.report["data"]["n_used"] == 99
    assert res.status == "PASS" and res.report["release_pass"] is False
    assert any("only 99 images" in r for r in res.report["release_pass_reasons"])
    assert not any(f.info.get("parity") for f in read_manifest(bundle).files)


def test_a_reference_preprocessing_change_recomputes_the_cached_outputs(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M22: the same fingerprinted reference first preprocessing at 48 px, then at 40 px, into the same folder:
    the second run's reference sees other pixels, so no batch may come from the cache."""
    labels = cycled_labels(10)
    models = PatchedModels(image_keys, monkeypatch, labels)
    keys = {s: {image_key(preprocess(read_bytes(p), PreprocessConfig(size=s), source=str(p)).image): i
                for i, p in enumerate(photos[:10])} for s in (48, 40)}
    for size in (48, 40):
        class _Own(_Fingerprinted):
            preprocess = PreprocessConfig(size=size)

        models.reference = _Own(keys[size], lambda: models.ref)
        res = _run(bundle, _records(photos[:10], labels), models, tmp_path / "out", record=False)
        assert res.report["cache"]["batches_from_cache"] == 0, size
        assert res.report["preprocess"]["differences"] == {"size": [size, 32]}


def test_thumbnails_are_limited_to_max_thumbnails_per_table(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """M27: with ``max_thumbnails=1`` and two flipped images, only the first flipped image gets a thumbnail (it
    heads both the flips and the changed-findings tables: 2 thumbnails on the page, not 4)."""
    models, records = _two_flips(photos, image_keys, monkeypatch)
    res = _run(bundle, records, models, tmp_path / "out", record=False, max_thumbnails=1)
    assert res.html_path.read_text(encoding="utf-8").count('<img class="thumb"') == 2


def test_a_default_run_records_no_judged_on_key(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """M43: judged on the estimates (the default), the manifest's record of a FAIL has no ``judged_on`` (a
    re-validation as before must leave the manifest byte for byte, as it was before the option existed)."""
    models, records = _two_flips(photos, image_keys, monkeypatch)
    res = _run(bundle, records, models, tmp_path / "out", record=True)
    assert _cand(res.report, "model.int8.onnx")["verdict"] == "FAIL"
    rec = read_manifest(bundle).file("model.int8.onnx").info["parity"]["backends"]["ort-cpu"]
    assert rec["verdict"] == "FAIL" and "judged_on" not in rec


def test_the_summary_names_no_worst_class_when_no_call_changed(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """H07: a candidate identical to the reference changes no call; its summary row shows a class flip rate of
    0.00% without naming a class (with none changed, no class is "the worst")."""
    labels = cycled_labels(20)
    models = PatchedModels(image_keys, monkeypatch, labels)
    res = _run(bundle, _records(photos[:20], labels), models, tmp_path / "out", record=False)
    summary = res.html_path.read_text(encoding="utf-8").split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    row = next(r for r in summary.split("<tr>") if r.startswith("<td>ort-cpu:model.onnx</td>"))
    assert "<td>0.00%</td>" in row
    assert not any(f"({name})" in row for name in NAMES)


def test_long_tables_stop_at_max_rows_and_say_how_many_more(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """H10, H16: rendered with ``max_rows=1``, the flips table shows image 0 only (image 1's row is in
    parity.json, "1 more"), and of the 2 unreadable images only the first is listed."""
    from uopsl.export.parity_html import render_html

    models, records = _two_flips(photos, image_keys, monkeypatch)
    for name in ("broken1.jpg", "broken2.jpg"):
        (tmp_path / name).write_bytes(b"not a jpeg")
        records.append(ImageRecord(Path(name).stem, tmp_path / name, ("normal",)))
    res = _run(bundle, records, models, tmp_path / "out", record=False)
    assert [s["id"] for s in res.report["skipped_images"]] == ["broken1", "broken2"]
    page = render_html(res.report, {}, max_rows=1)
    section = page.split("ort-cpu:model.int8.onnx —", 1)[1]
    assert f"<td>{photos[0].stem}</td><td>refer</td><td>refer</td><td>no referral</td>" in section
    assert f"<td>{photos[1].stem}</td><td>no referral</td>" not in section.split("Images with a changed", 1)[0]
    assert "<td>broken1</td>" in page and "<td>broken2</td>" not in page


def test_a_report_from_before_the_default_gates_flag_is_not_said_to_have_other_gates(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """H15: a report without ``gates_are_default`` (written before the field) is rendered without the red "gates
    differ from the strict defaults" line; a report that says False gets it."""
    from uopsl.export.parity_html import render_html

    labels = cycled_labels(10)
    models = PatchedModels(image_keys, monkeypatch, labels)
    report = dict(_run(bundle, _records(photos[:10], labels), models, tmp_path / "out", record=False).report)
    report.pop("gates_are_default")
    assert "The gates differ from the strict defaults" not in render_html(report)
    assert "The gates differ from the strict defaults" in render_html({**report, "gates_are_default": False})


def test_a_manifest_record_keeps_the_first_six_reasons() -> None:
    """M44: a candidate failing on eight counts keeps its first six reasons in the manifest's record (the
    manifest is the bundle's identity, kept small; parity.json has them all)."""
    reasons = [f"gate {i} over its limit" for i in range(8)]
    cand = {"file": "model.int8.onnx", "backend": "ort-cpu", "passed": False, "verdict": "FAIL", "reasons": reasons}
    data = {"spec": "t", "image_ids_sha256": "0" * 64, "images_sha256": "1" * 64, "classes_with_truth": ["dr"]}
    reference = {"describe": "table", "fingerprint": None, "kind": "unknown", "source": None}
    report = {"data": {**data, "n_used": 20, "truth": "labels"}, "reference": reference,
              "gates": ValidateConfig().gates.to_dict(), "judged_on": ValidateConfig().judge_on,
              "bootstrap": {"seed": 0}, "created": "2026-12-04T00:00:00+00:00"}
    recs = record_mod.parity_records([cand], report, Path("parity.json"))
    assert recs["model.int8.onnx"]["ort-cpu"]["reasons"] == reasons[:6]
