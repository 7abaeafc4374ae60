"""The validation verdict: which runs may vouch for a file, PASS / FAIL / INCOMPLETE, non-finite outputs, exact
bounds on change rates, per-class call flips, top-1 from the logits, and the facts a signer needs in the report.

The inputs reproduce the validation review's scratch scripts (``/tmp/s9/rev_valid/t_*.py``): the demo bundle's
classes and thresholds, an all-normal data set, one NaN in an output, a candidate that swaps AMD calls behind
unchanged referrals, and saturated sigmoid logits. The end-to-end runs use a bundle whose model files are
stand-ins: ``open_candidate`` is replaced by table look-ups keyed by each preprocessed image, so every
probability is set by the test and no ONNX model runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from validatekit import (  # noqa: F401 - photos, image_keys: module fixtures
    DEMO_CLASSES, NAMES, PRE, THRESHOLDS, N, Table, confident, image_keys, logits_of, photos,
)
from uopsl.export import validate as validate_mod
from uopsl.export.parity_metrics import (
    INCOMPLETE,
    ParityGates,
    binomial_upper_bound,
    clinical,
    decision_headroom,
    judge,
    min_images_for_zero_changes,
    numerical,
    parse_gates,
    truth_from_labels,
)
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.backends import Availability
from uopsl.runtime.bundle import (
    MIN_PARITY_IMAGES,
    PARITY_GATE_DEFAULTS,
    ClassSpec,
    FileEntry,
    Manifest,
    describe_file,
    parity_status,
    read_manifest,
    write_manifest,
)
from uopsl.runtime.cpuinfo import int8_cpu_class


def _manifest(files: tuple[FileEntry, ...] = (FileEntry("model.onnx", "onnx", "fp32"),)) -> Manifest:
    return Manifest(classes=DEMO_CLASSES, head="sigmoid", preprocess=PRE, files=files, model_name="demo-like")


def _outputs(p: np.ndarray) -> dict[str, np.ndarray]:
    return {"probs": np.asarray(p, np.float64), "logits": logits_of(p)}


def _single_labels(n: int) -> list[tuple[str, ...]]:
    return [(NAMES[i % len(NAMES)],) for i in range(n)]


# -- end-to-end fixtures --------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A bundle with an FP32 and an INT8 'model' (stand-in bytes: the models are tables, see the module doc)."""
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"fp32 stand-in")
    (root / "model.int8.onnx").write_bytes(b"int8 stand-in")
    files = tuple(describe_file(root, f) for f in (FileEntry("model.onnx", "onnx", "fp32"),
                                                    FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8")))
    write_manifest(root, _manifest(files))
    return root


class _Models:
    """The reference and the two candidates' probabilities, changeable between runs."""

    def __init__(self, keys: Mapping[str, int], monkeypatch: pytest.MonkeyPatch, labels: list[tuple[str, ...]]) -> None:
        self.ref = confident(labels)
        self.files = {"model.onnx": self.ref.copy(), "model.int8.onnx": self.ref.copy()}
        self.reference = Table(keys, lambda: self.ref)
        monkeypatch.setattr(validate_mod, "open_candidate",
                            lambda bundle, spec, threads, manifest: Table(keys, lambda: self.files[spec.file]))


def _run(bundle: Path, photos: list[Path], labels: list[tuple[str, ...]], models: _Models, out: Path,
         gates: ParityGates | None = None, label_space: tuple[str, ...] | None = NAMES):  # noqa: ANN202
    records = [ImageRecord(p.stem, p, lab) for p, lab in zip(photos, labels)]
    cfg = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), gates=gates or ParityGates(), n_boot=20, show_progress=False)
    return validate_bundle(bundle, models.reference, records, out, cfg, label_space=label_space,
                           context={"data": "test table"}, availability=Availability(("CPUExecutionProvider",)))


def _cand(report: Mapping[str, Any], file: str) -> dict[str, Any]:
    return next(c for c in report["candidates"] if c["file"] == file)


def _status(bundle: Path, file: str) -> tuple[bool, str]:
    return parity_status(read_manifest(bundle).file(file), "ort-cpu")


# -- finding 1: a weaker run never turns a FAIL into a trusted PASS -----------------------------------------
def test_the_runtime_and_export_share_the_default_gates() -> None:
    assert ParityGates().to_dict() == dict(PARITY_GATE_DEFAULTS) and MIN_PARITY_IMAGES == 100


def _record(**over: Any) -> dict[str, Any]:
    return {"passed": True, "verdict": "PASS", "reasons": [], "gates": dict(PARITY_GATE_DEFAULTS), "n_images": 120,
            "data": {"spec": "synthetic:test"}, "reference": "PyTorch", "created": "2026-11-29",
            "machine": {"cpu_int8": int8_cpu_class()}, **over}  # what validate records for a CPU backend


def _entry(run: Mapping[str, Any]) -> FileEntry:
    return FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", sha256="ab", info={
        "parity": {"sha256": "ab", "backends": {"openvino": dict(run)}}})


@pytest.mark.parametrize(("run", "ok", "says"), [
    (_record(), True, "passed parity validation: openvino on 120 images"),
    # stricter gates vouch too; a gate that is off by default may be switched on
    (_record(gates={**PARITY_GATE_DEFAULTS, "max_flip_rate": 0.001, "min_top1_agreement": 0.999,
                    "max_prob_diff": 1e-3}), True, "passed parity validation"),
    # the review's runs: 4 images, and `--limit 10 --gates top1=0,flips=1,auc=1,sens=1`
    (_record(n_images=4), False, "only 4 images (a pass counts from 100"),
    (_record(n_images=10, gates={**PARITY_GATE_DEFAULTS, "min_top1_agreement": 0.0, "max_flip_rate": 1.0}), False,
     "gates looser than the defaults: max_flip_rate=1 (default 0.005), min_top1_agreement=0 (default 0.99); only 10"),
    # a record written before the gates, data and reference were all stored
    ({"passed": True, "reasons": [], "n_images": 200, "gates": {k: v for k, v in PARITY_GATE_DEFAULTS.items()
                                                                  if k != "max_class_flip_rate"}},
     False, "written by an older uopsl (it lacks data, reference, gate max_class_flip_rate); re-run `uopsl validate"),
    (_record(passed=False, verdict="INCOMPLETE", reasons=["auc_drop not evaluated: ..."]), False,
     "was incomplete parity validation on openvino (auc_drop not evaluated"),
    (_record(passed=False, verdict="FAIL", reasons=["flip_rate 0.03 > 0.005"]), False,
     "failed parity validation on openvino (flip_rate 0.03 > 0.005)"),
])
def test_parity_status_trusts_only_complete_strong_runs(run: dict[str, Any], ok: bool, says: str) -> None:
    got, why = parity_status(_entry(run), "openvino")
    assert got is ok and says in why, why


def test_a_small_or_loosened_run_never_replaces_a_fail(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    labels = _single_labels(N)
    models = _Models(image_keys, monkeypatch, labels)
    lost = [i for i, lab in enumerate(labels) if lab == ("dr",)][2:7]  # 5 DR images the INT8 file stops referring
    models.files["model.int8.onnx"][lost, 1] = THRESHOLDS[1] * 0.5
    full = _run(bundle, photos, labels, models, tmp_path / "full")
    assert full.status == "FAIL" and _cand(full.report, "model.int8.onnx")["verdict"] == "FAIL"
    assert not _status(bundle, "model.int8.onnx")[0] and _status(bundle, "model.onnx")[0]
    # 90 images the INT8 file gets right (every class with MIN_CASES_PER_CLASS positives): PASS on them, but
    # fewer than MIN_PARITY_IMAGES, too few to vouch; the FAIL stays
    right = [i for i in range(N) if i not in lost][:90]
    small = _run(bundle, [photos[i] for i in right], [labels[i] for i in right], models, tmp_path / "small")
    assert small.status == "PASS" and small.exit_code == 0
    assert "only 90 images" in small.report["record"]["note"] and small.report["record"]["recorded"] == []
    ok, why = _status(bundle, "model.int8.onnx")
    assert not ok and "failed parity validation on ort-cpu (flip_rate 0.04167 > 0.005" in why
    # all images, gates loosened until the file passes: reported as PASS, recorded as nothing
    loose = parse_gates("flips=0.05,class_flips=0.05,findings=0.05,sens=0.25")
    loosened = _run(bundle, photos, labels, models, tmp_path / "loose", gates=loose)
    assert loosened.status == "PASS" and "gates looser than the defaults" in loosened.report["record"]["note"]
    assert not _status(bundle, "model.int8.onnx")[0]
    html = (tmp_path / "loose" / "parity.html").read_text(encoding="utf-8")
    assert "max_flip_rate=0.05 (default 0.005)" in html and "records only a FAIL, never a pass" in html
    # the file fixed, default gates, all images: recorded, with what parity_status needs to trust it
    models.files["model.int8.onnx"] = models.ref.copy()
    fixed = _run(bundle, photos, labels, models, tmp_path / "fixed")
    assert fixed.status == "PASS" and fixed.report["record"]["note"] is None
    ok, why = _status(bundle, "model.int8.onnx")
    assert ok and "ort-cpu on 120 images" in why
    run = read_manifest(bundle).file("model.int8.onnx").info["parity"]["backends"]["ort-cpu"]
    assert run["gates"] == dict(PARITY_GATE_DEFAULTS) and run["n_images"] == 120 and run["verdict"] == "PASS"
    assert run["data"]["spec"] == "test table" and run["reference"] == "Table"
    # a 3-image run cannot evaluate amd or glaucoma: INCOMPLETE, and it does not erase the complete PASS
    tiny = _run(bundle, photos[:3], labels[:3], models, tmp_path / "tiny")
    assert tiny.status == "INCOMPLETE" and tiny.exit_code == 1 and _status(bundle, "model.int8.onnx")[0]


# -- finding 2: gates that could not be evaluated make the verdict INCOMPLETE ---------------------------------
def test_all_normal_data_is_incomplete_not_pass(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """t_parity.py (a): no diseased image; a candidate scaling every disease probability by 0.01 passed."""
    labels = [("normal",)] * N
    models = _Models(image_keys, monkeypatch, labels)
    models.files["model.int8.onnx"][:, 1:] *= 0.01
    res = _run(bundle, photos, labels, models, tmp_path / "out")
    assert res.status == "INCOMPLETE" and not res.passed and res.exit_code == 1
    int8 = _cand(res.report, "model.int8.onnx")
    checks = {k["name"]: k for k in int8["checks"]}
    assert int8["verdict"] == "INCOMPLETE" and int8["passed"] is False
    assert checks["auc_drop"]["status"] == "INCOMPLETE" and checks["auc_drop"]["passed"] is None
    assert _class_reasons(checks["auc_drop"]["skipped"]) == [
        {"class": "normal", "reason": "no negative image in the data"}] + [
        {"class": n, "reason": "no positive image in the data"} for n in NAMES[1:]]
    assert [s["class"] for s in checks["sensitivity_drop"]["skipped"]] == [*NAMES[1:], "referral"]
    assert ("not evaluated for dr, dme, amd, glaucoma and referral (no positive image in the data)"
            == checks["sensitivity_drop"]["detail"])
    assert checks["flip_rate"]["status"] == "PASS"  # what could be evaluated passed, and that is not enough
    # recorded as not passing, with the reason
    ok, why = _status(bundle, "model.int8.onnx")
    assert not ok and "was incomplete parity validation on ort-cpu (auc_drop not evaluated for normal (no negative image" in why
    html = res.html_path.read_text(encoding="utf-8")
    assert "banner incomplete" in html and "n/a: no positive image in the data" in html
    assert json.loads(res.json_path.read_text())["verdict"] == "INCOMPLETE"


def _class_reasons(skipped: Any) -> list[dict[str, str]]:
    """A check's skipped classes as (class, reason): the entries' other keys serve the words that group them."""
    return [{"class": s["class"], "reason": s["reason"]} for s in skipped]


def test_a_class_without_positives_is_listed_even_when_the_others_pass() -> None:
    """The review's --limit 10 run: amd had 0 positives, yet the gate line read PASS, largest drop: dr."""
    m = _manifest()
    labels = [lab for lab in _single_labels(60) if lab != ("amd",)]
    ref = confident(labels)
    clin = clinical(m, truth_from_labels(m, labels, NAMES), ref, ref.copy(), [str(i) for i in range(len(labels))],
                    n_boot=0)
    v = judge(ParityGates(), numerical(_outputs(ref), _outputs(ref)), clin)
    sens = {c.name: c for c in v.checks}["sensitivity_drop"]
    assert v.status == INCOMPLETE and sens.passed is True and sens.value == 0.0 and sens.status == INCOMPLETE
    assert _class_reasons(sens.skipped) == [{"class": "amd", "reason": "no positive image in the data"}]
    assert v.reasons == ("auc_drop 0 <= 0.005 but not evaluated for amd (no positive image in the data)",
                         "sensitivity_drop 0 <= 0.01 but not evaluated for amd (no positive image in the data)")


def test_no_labels_and_no_positives_are_told_apart() -> None:
    m = _manifest()
    # no amd or glaucoma image, and no labels for them; MIN_CASES_PER_CLASS positives of each other class
    labels = [("normal",), ("dr",), ("dme",), ("normal",)] * 10
    ref = confident(labels)
    clin = clinical(m, truth_from_labels(m, labels, ("normal", "dr", "dme")), ref, ref, [str(i) for i in range(40)],
                    n_boot=0)
    auc = {c.name: c for c in judge(ParityGates(), numerical(_outputs(ref), _outputs(ref)), clin).checks}["auc_drop"]
    assert _class_reasons(auc.skipped) == [{"class": "amd", "reason": "no labels for this class in the data"},
                                           {"class": "glaucoma", "reason": "no labels for this class in the data"}]
    assert "not evaluated for amd and glaucoma (no labels for this class in the data)" in auc.detail
    assert clin["referral"]["not_evaluated"]["sensitivity"] == (
        "the labels do not cover every referable class (no labels for amd, glaucoma)")


# -- finding 3: non-finite outputs fail the model that gave them, they do not abort the run -------------------
def test_a_nan_in_a_candidate_fails_it_and_the_others_are_still_judged(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = _single_labels(60)  # MIN_CASES_PER_CLASS positives of every class, fewer than MIN_PARITY_IMAGES
    models = _Models(image_keys, monkeypatch, _single_labels(N))
    models.files["model.int8.onnx"][3, 1] = np.nan  # t_parity.py (b): an overflowed output
    models.files["model.int8.onnx"][7, 2] = np.inf
    res = _run(bundle, photos[:60], labels, models, tmp_path / "out")
    int8, fp32 = _cand(res.report, "model.int8.onnx"), _cand(res.report, "model.onnx")
    assert int8["verdict"] == "FAIL" and int8["reasons"] == [
        "2 of 60 images gave non-finite outputs (NaN or inf; first: i003)"]
    assert int8["non_finite"] == {"n": 2, "of": 60, "ids": ["i003", "i007"]}
    assert fp32["verdict"] == "PASS" and fp32["clinical"]["flips"]["n"] == 0  # judged as usual
    assert res.status == "FAIL" and res.json_path.is_file() and "2 of 60 images gave non-finite" in (
        res.html_path.read_text(encoding="utf-8"))
    ok, why = _status(bundle, "model.int8.onnx")  # the FAIL is recorded: `auto` stays off the file
    assert not ok and "non-finite" in why
    # 60 images: the FP32 PASS is not recorded (too few to vouch), the FAIL above is
    assert "parity" not in read_manifest(bundle).file("model.onnx").info
    assert res.report["record"]["recorded"] == ["ort-cpu:model.int8.onnx"]
    assert "ort-cpu:model.onnx PASS; a run like this records only a FAIL, never a pass" in res.report["record"]["note"]


def test_a_nan_in_the_reference_fails_the_run_with_a_report(bundle: Path, photos: list[Path],
                                                            image_keys: dict[str, int],
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """t_nan.py: one NaN at probs[0, 1] of the reference aborted with ConfigError and no parity.json."""
    labels = _single_labels(6)
    models = _Models(image_keys, monkeypatch, _single_labels(N))
    models.ref[0, 1] = np.nan
    before = (bundle / "manifest.json").read_bytes()
    res = _run(bundle, photos[:6], labels, models, tmp_path / "out")
    report = json.loads(res.json_path.read_text())
    assert res.status == "FAIL" and res.exit_code == 1 and report["verdict"] == "FAIL"
    assert report["reasons"] == ["the reference: 1 of 6 images gave non-finite outputs (NaN or inf; first: i000)"]
    assert all(c["verdict"] == "FAIL" and c["judged"] is False for c in report["candidates"])
    assert (bundle / "manifest.json").read_bytes() == before  # the files are not blamed for the reference
    assert "the reference could not be used" in res.html_path.read_text(encoding="utf-8")


# -- finding 4: exact upper bounds on change rates ------------------------------------------------------------
def test_exact_upper_bounds_and_the_sizes_a_gate_needs() -> None:
    assert binomial_upper_bound(0, 120) == pytest.approx(1 - 0.05 ** (1 / 120), abs=1e-15)  # 2.47 %
    assert binomial_upper_bound(0, 120) == pytest.approx(0.0246554, abs=1e-7)
    assert binomial_upper_bound(5, 5) == 1.0 and np.isnan(binomial_upper_bound(0, 0))
    # Clopper-Pearson one-sided 95 %: the 0.95 quantile of Beta(k + 1, n - k) (values from scipy.stats.beta.ppf)
    assert binomial_upper_bound(1, 10) == pytest.approx(0.3941633, abs=1e-7)
    assert binomial_upper_bound(20, 40) == pytest.approx(0.6389083, abs=1e-7)
    assert min_images_for_zero_changes(0.005) == 598 and min_images_for_zero_changes(0.01) == 299
    assert min_images_for_zero_changes(0.0) is None
    assert binomial_upper_bound(0, 598) <= 0.005 < binomial_upper_bound(0, 597)


def test_upper_bounds_match_scipy_over_many_counts() -> None:
    stats = pytest.importorskip("scipy.stats")
    for n in (1, 7, 24, 120, 598, 2000):
        for k in sorted({0, 1, 2, n // 3, n // 2, n - 1}):
            if 0 <= k < n:
                assert binomial_upper_bound(k, n) == pytest.approx(stats.beta.ppf(0.95, k + 1, n - k), abs=1e-9)


def test_report_shows_the_bounds_next_to_each_rate(bundle: Path, photos: list[Path], image_keys: dict[str, int],
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    labels = _single_labels(N)
    models = _Models(image_keys, monkeypatch, labels)
    res = _run(bundle, photos, labels, models, tmp_path / "out")
    clin = _cand(res.report, "model.onnx")["clinical"]
    assert clin["flips"]["n"] == 0 and clin["flips"]["upper95"] == pytest.approx(0.0246554, abs=1e-7)
    assert clin["top1_disagreement"]["changes"] == 0 and clin["top1_disagreement"]["n"] == N
    dr = clin["per_class"][1]
    assert dr["sensitivity_changes"]["n"] == dr["n_positive"] == 24
    assert dr["sensitivity_changes"]["upper95"] == pytest.approx(1 - 0.05 ** (1 / 24))
    assert dr["specificity_changes"]["n"] == 96
    assert res.report["confidence"]["zero_change_min_images"] == {
        "max_flip_rate": 598, "max_class_flip_rate": 598, "max_finding_change_rate": 299, "min_top1_agreement": 299}
    html = res.html_path.read_text(encoding="utf-8")
    assert "0/120 (&le;2.5%)" in html and "this run has 120" in html
    # the bound is reported, not gated: 0 changes in 120 images passes the 0.5 % point gate
    assert res.status == "PASS"


# -- finding 8: a gate on per-class call flips of referable classes -------------------------------------------
def _amd_swap() -> tuple[Manifest, list[tuple[str, ...]], np.ndarray, np.ndarray]:
    """t_classflips.py: 400 images; every AMD case is also referred for DR; 10 TPs and 10 FNs swap around AMD's
    threshold, so referral, AUC and sensitivity are unchanged while 20 of 40 AMD patients get another finding."""
    m = _manifest()
    ia, idr, t = NAMES.index("amd"), NAMES.index("dr"), THRESHOLDS[NAMES.index("amd")]
    rng = np.random.default_rng(0)
    lab = [("dr", "amd") if i < 40 else ("dr",) if i < 200 else ("normal",) for i in range(400)]
    ref = np.full((400, len(NAMES)), 1e-4)
    ref[:, 0] = 0.9
    ref[:200, idr] = 0.99
    ref[:40, ia] = rng.uniform(t * 1.5, 0.9, 40)
    ref[:10, ia], ref[10:20, ia] = t * 1.01, t * 0.99
    ref[40:, ia] = rng.uniform(0, t * 0.5, 360)
    cand = ref.copy()
    cand[:10, ia], cand[10:20, ia] = t * 0.99, t * 1.01
    return m, lab, ref, cand


def test_changed_class_calls_fail_even_behind_unchanged_referrals() -> None:
    m, lab, ref, cand = _amd_swap()
    clin = clinical(m, truth_from_labels(m, lab, NAMES), ref, cand, [str(i) for i in range(400)], n_boot=0)
    nums = numerical(_outputs(ref), _outputs(cand))
    v = judge(ParityGates(), nums, clin)
    checks = {c.name: c for c in v.checks}
    assert v.status == "FAIL" and checks["flip_rate"].value == 0 and checks["auc_drop"].value == 0
    assert checks["class_flip_rate"].passed is False and checks["class_flip_rate"].value == pytest.approx(20 / 400)
    assert "largest: class amd (20 call(s) changed)" in checks["class_flip_rate"].detail
    amd = clin["per_class"][NAMES.index("amd")]
    assert clin["class_flips"]["worst_class"] == "amd" and clin["class_flips"]["referable"]["amd"]["changes"] == 20
    assert amd["sensitivity_changes"]["changes"] == 20 and amd["sensitivity_changes"]["n"] == 40
    assert (amd["sensitivity_changes"]["tp_to_fn"], amd["sensitivity_changes"]["fn_to_tp"]) == (10, 10)
    # configurable through --gates like the others
    loose = parse_gates("class_flips=0.06,findings=0.06")
    assert loose.max_class_flip_rate == 0.06 and parse_gates("class_flip_rate=0.01").max_class_flip_rate == 0.01
    loose_checks = {c.name: c for c in judge(loose, nums, clin).checks}
    assert loose_checks["class_flip_rate"].status == "PASS"
    # Ten amd positives lost their call (and ten others gained one): the net sensitivity is unchanged, but
    # the gate judges the positives lost, 10 of 40, so looser flip gates do not pass the file (since session 45;
    # before, the net drop of 0 left it INCOMPLETE, from dme and glaucoma, which have no positive image here).
    assert loose_checks["sensitivity_drop"].value == pytest.approx(10 / 40)
    assert loose_checks["sensitivity_drop"].status == "FAIL" and judge(loose, nums, clin).status == "FAIL"


# -- finding 12: top-1 from the logits --------------------------------------------------------------------------
def test_top1_comes_from_the_logits_not_saturated_probabilities() -> None:
    """Sigmoid logits [18, 20] vs [20, 18] are a real swap, yet float32 gives probs [1, 1] for both (argmax 0);
    [18, 20] vs [16, 20] keep their order, yet give argmax 0 vs 1."""
    m = Manifest(classes=(ClassSpec("a", threshold=0.5, referable=True), ClassSpec("b", threshold=0.5)),
                 head="sigmoid", preprocess=PRE, files=(FileEntry("model.onnx", "onnx", "fp32"),))
    easy = [[2.0, -2.0], [-2.0, 2.0]] * 10
    labels = [("a",), ("b",)] * 10 + [("b",)]
    truth = truth_from_labels(m, labels, ("a", "b"))
    ids = [str(i) for i in range(21)]

    def sigmoid32(x: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-x.astype(np.float32)))).astype(np.float32)

    ref_l = np.array(easy + [[18.0, 20.0]])
    for row, logit_changes, prob_changes in (([20.0, 18.0], 1, 0), ([16.0, 20.0], 0, 1)):
        cand_l = np.array(easy + [row])
        ref_p, cand_p = sigmoid32(ref_l), sigmoid32(cand_l)
        assert ref_p[-1].tolist() == [1.0, 1.0]  # saturated
        by_logits = clinical(m, truth, ref_p, cand_p, ids, n_boot=0, reference_logits=ref_l, candidate_logits=cand_l)
        by_probs = clinical(m, truth, ref_p, cand_p, ids, n_boot=0)
        assert by_logits["top1_source"] == "logits" and by_probs["top1_source"] == "probs"
        assert by_logits["top1_disagreement"]["changes"] == logit_changes
        assert by_probs["top1_disagreement"]["changes"] == prob_changes  # the old, wrong count
        head = decision_headroom(m, ParityGates(), {"probs": ref_p, "logits": ref_l},
                                 {"probs": cand_p, "logits": cand_l})
        assert head["top1"]["observed_changes"] == logit_changes
        check = {c.name: c for c in judge(ParityGates(), numerical({"probs": ref_p, "logits": ref_l},
                                                                     {"probs": cand_p, "logits": cand_l}),
                                          by_logits).checks}["top1_agreement"]
        assert check.value == pytest.approx(1 - logit_changes / 21) and "(from the logits)" in check.detail


# -- finding 14: what a signer needs ---------------------------------------------------------------------------
def test_report_keeps_the_bootstrap_settings_image_ids_and_class_counts(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    labels = _single_labels(30)
    models = _Models(image_keys, monkeypatch, _single_labels(N))
    res = _run(bundle, photos[:30], labels, models, tmp_path / "out")
    report = json.loads(res.json_path.read_text())
    assert report["bootstrap"]["n_boot"] == 20 and report["bootstrap"]["alpha"] == 0.05
    assert report["bootstrap"]["seed"] == 0
    assert report["data"]["image_ids"] == [f"i{i:03d}" for i in range(30)]
    assert report["data"]["image_ids_sha256"] == hashlib.sha256("\n".join(report["data"]["image_ids"]).encode()).hexdigest()
    row = _cand(report, "model.onnx")["clinical"]["per_class"][3]
    assert (row["name"], row["n_positive"], row["n_negative"]) == ("amd", 6, 24)
    assert row["auc_difference"]["n_boot"] == 20 and row["auc_difference"]["alpha"] == 0.05
    html = res.html_path.read_text(encoding="utf-8")
    assert "<th>n+ (images)</th><th>n- (images)</th>" in html and "<td>6</td><td>24</td>" in html


def test_repeating_a_validation_leaves_the_manifest_bytes_alone(bundle: Path, photos: list[Path],
                                                                image_keys: dict[str, int],
                                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same verdict again only differs in its time: the manifest (and its content hash, which screening
    results are tied to) stays as it was."""
    labels = _single_labels(N)
    models = _Models(image_keys, monkeypatch, labels)
    models.files["model.int8.onnx"][:, 1] = 0.0  # FAIL: recorded
    _run(bundle, photos, labels, models, tmp_path / "out")
    first = (bundle / "manifest.json").read_bytes()
    assert "model.int8.onnx" in json.loads(first)["files"][1]["path"] and b'"verdict": "FAIL"' in first
    _run(bundle, photos, labels, models, tmp_path / "out")
    assert (bundle / "manifest.json").read_bytes() == first


def test_a_candidate_that_cannot_load_here_leaves_its_earlier_pass_alone(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """GPU out of memory or missing CUDA libraries say nothing about the file: no FAIL over a valid PASS."""
    labels = _single_labels(N)
    models = _Models(image_keys, monkeypatch, labels)
    assert _run(bundle, photos, labels, models, tmp_path / "pass").status == "PASS"
    assert _status(bundle, "model.int8.onnx")[0]

    def broken(bundle_: Path, spec: Any, threads: Any, manifest: Any) -> Table:
        if spec.file == "model.int8.onnx":
            raise RuntimeError("CUDA out of memory")
        return Table(image_keys, lambda: models.files[spec.file])

    monkeypatch.setattr(validate_mod, "open_candidate", broken)
    again = _run(bundle, photos, labels, models, tmp_path / "oom")
    cand = _cand(again.report, "model.int8.onnx")
    assert cand["verdict"] == "FAIL" and "cannot load" in cand["error"] and again.exit_code != 0
    assert "model.int8.onnx" not in again.report["record"]["recorded"]
    assert "could not be run here, so not judged" in again.report["record"]["note"]
    ok, why = _status(bundle, "model.int8.onnx")
    assert ok and "passed parity validation" in why


def test_a_candidate_whose_probabilities_are_not_probabilities_fails_alone(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # Logits read as probabilities (finite, outside [0, 1]) ended the whole run without a report.
    labels = _single_labels(N)
    models = _Models(image_keys, monkeypatch, labels)
    models.files["model.int8.onnx"] = models.files["model.int8.onnx"] * 4.0 - 1.0
    result = _run(bundle, photos, labels, models, tmp_path / "out")
    bad = _cand(result.report, "model.int8.onnx")
    assert bad["verdict"] == "FAIL" and "outside [0, 1]" in bad["reasons"][0]
    assert _cand(result.report, "model.onnx")["verdict"] == "PASS"
    assert (tmp_path / "out" / "parity.html").is_file()


def test_an_fp32_file_off_by_more_than_the_fp32_tolerance_fails_on_ort_cpu(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """No decision moves, yet the FP32 file is 1e-3 off: its ort-cpu PASS would make it a device's reference."""
    labels = _single_labels(N)
    models = _Models(image_keys, monkeypatch, labels)
    models.files["model.onnx"] = np.clip(models.ref + 1e-3, 0.0, 1.0)
    models.files["model.int8.onnx"] = models.files["model.onnx"].copy()
    res = _run(bundle, photos, labels, models, tmp_path / "out")
    fp32, int8 = _cand(res.report, "model.onnx"), _cand(res.report, "model.int8.onnx")
    checks = {c["name"]: c for c in fp32["checks"]}
    assert fp32["verdict"] == "FAIL" and checks["max_prob_diff"]["limit"] == 1e-4
    assert checks["max_prob_diff"]["value"] == pytest.approx(1e-3, rel=1e-3)
    assert {c["name"] for c in fp32["checks"] if c["passed"] is False} == {"max_prob_diff"}
    assert int8["verdict"] == "PASS" and "max_prob_diff" not in {c["name"] for c in int8["checks"]}
    assert not _status(bundle, "model.onnx")[0] and _status(bundle, "model.int8.onnx")[0]


def test_records_from_before_the_finding_gate_count_where_the_class_gate_implies_it() -> None:
    """A review: every record written before the finding gate lacked it, so `auto` stopped using every validated
    INT8 file. With two referable classes, the 0.5 % class gate already bounds the images with a changed finding
    by 1 %, the new limit; with more it does not, and those are validated again."""
    from uopsl.runtime.preprocess import PreprocessConfig

    old = _record(gates={k: v for k, v in PARITY_GATE_DEFAULTS.items() if k != "max_finding_change_rate"})

    def manifest(n_referable: int) -> Manifest:
        classes = (ClassSpec("normal"), *(ClassSpec(f"c{i}", referable=True) for i in range(n_referable)))
        return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(size=64), files=())

    ok, why = parity_status(_entry(old), "openvino", manifest=manifest(2))
    assert ok, why
    ok, why = parity_status(_entry(old), "openvino", manifest=manifest(4))
    assert not ok and "lacks gate max_finding_change_rate" in why
    loose_class = _record(gates={**{k: v for k, v in PARITY_GATE_DEFAULTS.items() if k != "max_finding_change_rate"},
                                 "max_class_flip_rate": 0.01})
    assert not parity_status(_entry(loose_class), "openvino", manifest=manifest(2))[0]
    assert not parity_status(_entry(old), "openvino")[0]  # without the manifest nothing is implied
