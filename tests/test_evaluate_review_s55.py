"""Session-55 validation-engineer review of ``uopsl evaluate`` (/tmp/s55/review_validation.md, D3-D5, D8, D9, S5,
S10): classes the data do not grade are not evaluated (D4), eval.json carries its provenance and roc.png its
case counts (D3), classes with too few cases are flagged (D5), ``held_out`` (S10), the per-class console summary
(S5), the referral notes name the referral rule (D9), and a CSV's report folder is checked against its
photographs' folders (D8)."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import logging
from pathlib import Path

import numpy as np
import pytest

from fixtures_data import make_tvhl, write_csv, write_image
from uopsl.export.parity_metrics import MIN_CASES_PER_CLASS, NO_LABELS, NO_REFERRAL_LABELS
from uopsl.export.validate import images_digest
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import ConfigError
from uopsl.train.cli import cli
from uopsl.train.evaluate import _roc_series, evaluate, referral_figures
from uopsl.runtime import metrics


def _uopsl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main_entry(cli, argv, prog_name="uopsl")
    got = capsys.readouterr()
    return rc, got.out, got.err


def _scores(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probs, multi-hot targets) for ``k`` classes; class 2 (when there) has no positive: like TVHL's amd."""
    rng = np.random.default_rng(seed)
    t = np.zeros((n, k), np.float32)
    t[np.arange(n), rng.integers(0, 2, n)] = 1  # normal or dr, one each
    p = np.clip(0.5 * t + rng.random((n, k)) * 0.6, 0, 1).astype(np.float32)
    return p, t


# -- D4: classes outside the data's label space ------------------------------------------------------------------


def test_a_class_the_data_do_not_grade_gets_no_figures_and_the_graded_ones_keep_theirs() -> None:
    """TVHL grades normal/dr: evaluate reported amd specificity 0.000 (its 64 unlabelled images counted as
    negatives) and a referral specificity; now amd is not evaluated, with validate's reason, and the referral
    call is n/a because a referable class is ungraded. normal and dr keep exactly the figures they had."""
    names = ["normal", "dr", "amd"]
    p, t = _scores(60, 3)
    patients = [f"p{i // 2}" for i in range(60)]
    old = evaluate(p, t, [0.5, 0.5, 0.5], names, None, n_boot=30, patients=patients, referable=[False, True, True])
    new = evaluate(p, t, [0.5, 0.5, 0.5], names, None, n_boot=30, patients=patients, referable=[False, True, True],
                   label_space=("normal", "dr"))
    amd = new["classes"][2]
    assert amd["labelled"] is False and amd["not_evaluated"] == NO_LABELS
    for m in ("auc", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert amd[m]["estimate"] is None and amd[m]["method"] == "not evaluated", m
    assert amd["n_negative"] is None and amd["tn"] is None
    assert amd["n_called_positive"] == int((p[:, 2] >= 0.5).sum())
    assert old["classes"][2]["specificity"]["estimate"] is not None  # what the review saw: a figure nobody graded
    assert new["class_coverage"]["left_out"] == {"amd": NO_LABELS}
    assert new["label_space"] == ["normal", "dr"]
    about_amd = [n for n in new["notes"] if n.startswith("amd: ")]
    assert any(n.startswith("amd: ") for n in old["notes"])  # auc undefined, sensitivity undefined...
    assert len(about_amd) == 1 and about_amd[0].startswith("amd: not evaluated (no labels for this class in the data")
    ref = new["referral"]
    assert ref["applicable"] is False and ref["not_evaluated"] == NO_REFERRAL_LABELS
    assert "sensitivity" not in ref and "specificity" not in ref and ref["n_images"] == 60
    assert old["referral"]["applicable"] is True and old["referral"]["specificity"]["estimate"] is not None
    for k in (0, 1):  # the graded classes: the same figures, intervals and counts as before
        a, b = old["classes"][k], new["classes"][k]
        assert {m: a[m] for m in a} == {m: b[m] for m in a}, names[k]
    assert new["macro"] == old["macro"]
    # labels covering every class: nothing set aside, the referral call evaluated as before
    full = evaluate(p, t, [0.5] * 3, names, None, n_boot=30, patients=patients, referable=[False, True, True],
                    label_space=names)
    assert all(c["labelled"] for c in full["classes"]) and full["referral"]["applicable"] is True
    assert full["referral"]["specificity"] == old["referral"]["specificity"]
    assert [{m: c[m] for m in o} for c, o in zip(full["classes"], old["classes"])] == old["classes"]


def test_evaluate_command_on_tvhl_referable_dr_leaves_out_what_tvhl_does_not_grade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The review's command on a TVHL-shaped folder: task=referable_dr grades normal and dr; amd is not evaluated
    (the console says so) and the referral line is 'not evaluated' instead of a specificity."""
    from trainhelpers import classes_checkpoint

    ck = classes_checkpoint(tmp_path / "ck", ("normal", "dr", "amd"))
    tvhl = make_tvhl(tmp_path / "tvhl")
    rc, out, err = _uopsl(["evaluate", "--keep-ungradable",
                           str(ck), "--data", f"tvhl:{tvhl}:task=referable_dr", "--out",
                           str(tmp_path / "ev"), "--n-boot", "10", "--device", "cpu"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    rows = {c["name"]: c for c in report["classes"]}
    assert rows["amd"]["specificity"]["estimate"] is None and rows["amd"]["not_evaluated"] == NO_LABELS
    assert rows["dr"]["specificity"]["estimate"] is not None
    assert report["referral"]["applicable"] is False
    assert "referral (dr or amd at its threshold): not evaluated, the labels do not cover every referable class" \
        in out
    assert "  amd     not evaluated: no labels for this class in the data" in out.splitlines()
    assert "the data do not label the model's amd" in err


# -- D3: provenance ------------------------------------------------------------------------------------------------


def _csv_set(root: Path, labels: list[str], folder: Path | None = None) -> Path:
    """A CSV with absolute paths to photographs in ``folder`` (default root/img), one patient per two rows."""
    folder = folder or root / "img"
    rows = []
    for i, label in enumerate(labels):
        p = write_image(folder / f"{i}.jpg", seed=i)
        rows.append([str(p), label, f"p{i // 2}"])
    return write_csv(root / "labels.csv", ["path", "label", "patient"], rows)


def test_eval_json_records_what_ties_it_to_the_model_the_data_and_the_machine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from trainhelpers import classes_checkpoint

    ck = classes_checkpoint(tmp_path / "ck", ("normal", "dr"))
    table = _csv_set(tmp_path / "data", ["normal", "dr"] * 4)
    spec = f"csv:{table}"
    args = ["evaluate", "--keep-ungradable",
            str(ck), "--data", spec, "--out", str(tmp_path / "ev"), "--n-boot", "10", "--seed", "7",
            "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/uopsl", *args])  # in process, sys.argv is pytest's own
    rc, _, err = _uopsl(args, capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["created"][:4].isdigit() and report["created"].endswith("+00:00")
    assert report["toolkit_version"] and isinstance(report["toolkit_source"], dict)
    assert report["machine"]["device"] == "cpu" and report["machine"]["versions"]["torch"]
    weights = hashlib.sha256((ck / "model.safetensors").read_bytes()).hexdigest()
    assert report["checkpoint_weights_sha256"] == weights
    ctx = report["context"]
    assert ctx["data"] == spec and ctx["seed"] == 7 and ctx["n_boot"] == 10
    assert ctx["command"] == "uopsl " + " ".join(args)
    data = report["data"]
    assert data["spec"] == spec and data["label_space"] == ["normal", "dr"] and data["source_fingerprint"]
    with open(tmp_path / "ev" / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    shas = [hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in rows]
    assert data["image_sha256"] == shas and data["n_images"] == 8
    labels = [tuple(c for c in ("normal", "dr") if r[f"label_{c}"] == "1") for r in rows]
    assert data["images_sha256"] == images_digest(shas, labels)


def test_the_roc_legend_gives_each_class_its_positives_and_negatives() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((40, 2)) < 0.3).astype(np.float64)
    s = np.clip(0.4 * y + rng.random((40, 2)) * 0.6, 0, 1)
    rep = evaluate(s, y, [0.5, 0.5], ["a", "b"], None, n_boot=20, patients=[f"p{i // 2}" for i in range(40)])
    curves = {n: metrics.roc_curve(y[:, k], s[:, k]) for k, n in enumerate(("a", "b"))}
    for it, row in zip(_roc_series(curves, rep), rep["classes"]):
        assert f"; n+ {row['n_positive']}, n- {row['n_negative']} (" in it.legend(), it.legend()
        assert f"({row['n_positive_patients']}/{row['n_negative_patients']} patients)" in it.legend()
    rep0 = evaluate(s, y, [0.5, 0.5], ["a", "b"], None, n_boot=0)  # no interval drawn: the counts all the same
    n_pos = int(y[:, 0].sum())
    assert n_pos >= MIN_CASES_PER_CLASS and 40 - n_pos >= MIN_CASES_PER_CLASS
    assert _roc_series(curves, rep0)[0].legend() == f"a (AUC {curves['a'].auc:.3f}; n+ {n_pos}, n- {40 - n_pos})"
    few = evaluate(s[:12], y[:12], [0.5, 0.5], ["a", "b"], None, n_boot=0)
    few_curves = {n: metrics.roc_curve(y[:12, k], s[:12, k]) for k, n in enumerate(("a", "b"))}
    assert _roc_series(few_curves, few)[0].legend().endswith(", too few)")


# -- D5: too few cases ------------------------------------------------------------------------------------------


def test_a_class_with_too_few_positive_patients_is_flagged_and_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    """The review's case: 3 dr images of 2 patients among 40 normals gave an AUC interval excluding 0.5 and no
    warning. Counted by patient where the patients are known; the figures are still reported."""
    n = 43
    t = np.zeros((n, 2), np.float32)
    t[:40, 0] = 1
    t[40:, 1] = 1
    p = np.random.default_rng(1).random((n, 2)).astype(np.float32)
    patients = [f"n{i}" for i in range(40)] + ["d0", "d0", "d1"]
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        rep = evaluate(p, t, [0.5, 0.5], ["normal", "dr"], None, n_boot=20, patients=patients,
                       referable=[False, True])
    dr = rep["classes"][1]
    assert dr["too_few_cases"] is True and dr["n_positive_patients"] == 2 and dr["n_negative_patients"] == 40
    assert dr["too_few_cases_reason"].startswith("only 2 positive patients: fewer than 10")
    assert dr["auc"]["estimate"] is not None  # reported all the same
    assert rep["referral"]["too_few_cases"] is True
    assert rep["min_cases_per_class"]["positive"] == MIN_CASES_PER_CLASS and rep["min_cases_per_class"]["unit"] == \
        "patient" and rep["min_cases_per_class"]["flagged"] == ["normal", "dr", "referral"]
    assert "dr (2 positive patients)" in caplog.text and "too_few_cases" in caplog.text
    # Patients unknown: images count; 12 of each side is enough.
    t2 = np.zeros((24, 1), np.float32)
    t2[:12] = 1
    rep2 = evaluate(np.linspace(0, 1, 24, dtype=np.float32)[:, None], t2, [0.5], ["dr"], None, n_boot=0)
    assert rep2["classes"][0]["too_few_cases"] is False and "n_positive_patients" not in rep2["classes"][0]
    assert rep2["min_cases_per_class"]["unit"] == "image" and rep2["min_cases_per_class"]["flagged"] == []


# -- S10: held_out --------------------------------------------------------------------------------------------


def test_eval_json_says_whether_the_photographs_are_held_out(tmp_path: Path) -> None:
    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.checkpoint import save_model
    from uopsl.train.torchdata import cache_images
    from uopsl.train.workflow import record_images_seen, run_evaluate

    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ck", model, meta)
    items = tiny_items(tmp_path / "imgs", n=12)
    unknown = run_evaluate(tmp_path / "ck", items, None, n_boot=0, device="cpu", keep_ungradable=True)
    assert unknown["held_out"] is None and "does not record" in unknown["held_out_note"]
    _, _, digests = cache_images([it.path for it in items[:3]], meta.preprocess, None, "fundus")
    record_images_seen(tmp_path / "ck", {"train": list(digests), "validation": []})
    seen = run_evaluate(tmp_path / "ck", items, tmp_path / "ev", n_boot=0, device="cpu", keep_ungradable=True)
    assert seen["held_out"] is False and seen["held_out_note"].startswith("3 of 12 evaluated photographs")
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["held_out"] is False
    fresh = run_evaluate(tmp_path / "ck", items[3:], None, n_boot=0, device="cpu", keep_ungradable=True)
    assert fresh["held_out"] is True
    record_images_seen(tmp_path / "ck", {"train": list(digests[:0]), "earlier": None})
    assert run_evaluate(tmp_path / "ck", items[3:], None, n_boot=0, device="cpu",
                        keep_ungradable=True)["held_out"] is None


# -- S5: the console summary --------------------------------------------------------------------------------------


def test_the_console_gives_each_class_its_counts_and_figures_and_where_the_thresholds_came_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainhelpers import classes_checkpoint

    ck = classes_checkpoint(tmp_path / "ck", ("normal", "dr"))
    table = _csv_set(tmp_path / "data", ["normal", "dr"] * 4)
    rc, out, err = _uopsl(["evaluate", "--keep-ungradable",
                           str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / "ev"),
                           "--n-boot", "0", "--device", "cpu"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    lines = out.splitlines()
    head = [i for i, ln in enumerate(lines) if ln.startswith("per class at its threshold, thresholds ")]
    assert len(head) == 1 and "0.5 for every class (the checkpoint stores no thresholds" in lines[head[0]], out
    for c, line in zip(report["classes"], lines[head[0] + 1:]):
        sens, spec = c["sensitivity"]["estimate"], c["specificity"]["estimate"]
        assert line == (f"  {c['name']:<6}  n+ 4/n- 4 (4/4 patients): sensitivity {sens:.3f}, specificity "
                        f"{spec:.3f} at 0.5  [too few cases]"), out


# -- D9: the referral notes --------------------------------------------------------------------------------------


def test_referral_notes_name_the_referral_rule_and_leave_out_the_auc_of_the_decision() -> None:
    p = np.array([[0.9, 0.9], [0.8, 0.95], [0.7, 0.99], [0.6, 0.97]], np.float32)
    t = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], np.float32)
    r = referral_figures(p, t, [0.5, 0.2], [False, True], ["normal", "dr"], n_boot=20)
    assert r["referred"] == 4 and r["npv"]["estimate"] is None
    assert any(n.startswith("npv undefined: every case is referred (any_referable") for n in r["notes"]), r["notes"]
    assert not any("threshold 0.5" in n or n.startswith(("auc", "f1")) for n in r["notes"]), r["notes"]
    none = referral_figures(p, t, [0.5, 1.0], [False, True], ["normal", "dr"], n_boot=0)
    assert "ppv undefined: no case is referred (any_referable: no referable class reaches its threshold)" \
        in none["notes"]


# -- D8: --out beside a CSV whose photographs live elsewhere -----------------------------------------------------


def test_an_out_beside_a_csv_is_taken_when_its_photographs_live_elsewhere(tmp_path: Path) -> None:
    from uopsl.train.commands.common import check_out_outside_data, load_source

    table = _csv_set(tmp_path / "lists", ["normal", "dr"], folder=tmp_path / "photos" / "set1")
    src = load_source(f"csv:{table}")
    check_out_outside_data(tmp_path / "lists" / "ev", src)  # was: "is inside the data folder .../lists"
    check_out_outside_data(tmp_path / "photos" / "ev", src)  # beside the photographs' folder, not in it
    with pytest.raises(ConfigError, match=r"is inside .*photos/set1, a folder holding photographs that "
                                          r".*labels\.csv lists"):
        check_out_outside_data(tmp_path / "photos" / "set1" / "ev", src)


def test_a_threshold_chosen_on_few_validation_cases_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """S4: finetune chose glaucoma's threshold on 2 validation positives and the bundle quoted "sensitivity 1.0"
    without a word; the record's note and one warning now say how few cases it rests on (figures unchanged)."""
    import logging

    from uopsl.train.evaluate import choose_operating_points

    rng = np.random.default_rng(0)
    y = np.zeros((30, 2))
    y[:2, 0] = 1  # glaucoma: 2 positives, 28 negatives
    y[:15, 1] = 1  # dr: 15 and 15
    p = (0.6 * y + 0.4 * rng.random((30, 2))).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.evaluate"):
        few, enough = choose_operating_points(y, p, [True, True], 0.9, names=["glaucoma", "dr"])
    assert few.method == "target_sensitivity" and few.sensitivity == 1.0
    assert "chosen on only 2 positive and 28 negative validation images" in few.note
    assert "sensitivity by 50% and its specificity by 4%" in few.note
    assert "chosen on only" not in enough.note
    assert sum("glaucoma (2+/28-)" in m and "dr" not in m for m in caplog.messages) == 1
