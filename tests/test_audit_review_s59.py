"""Fixes from session 59's review by a quality auditor deciding whether uopsl's figures can be signed:
reproducible, traceable and correct."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.bundle import MANIFEST


def test_info_does_not_show_a_verdict_from_a_manifest_that_fails_its_checksum(
        tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """A FAIL edited into a PASS by hand: the manifest line read CHECKSUM FAILS, and the record line beside it
    a plain PASS (a changed model file already read 'PASS, not trusted')."""
    from uopsl.runtime.cli import main

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    raw = json.loads((b / MANIFEST).read_text())
    entry = next(f for f in raw["files"] if f["kind"] == "onnx")
    entry.setdefault("info", {})["parity"] = {
        "sha256": entry["sha256"],
        "backends": {"ort-cpu": {"passed": True, "verdict": "PASS", "reasons": [], "n_images": 500}}}
    (b / MANIFEST).write_text(json.dumps(raw))
    assert main(["info", str(b)]) == 2
    out = capsys.readouterr().out
    record = next(line for line in out.splitlines() if "ort-cpu" in line and "500 images" in line)
    assert "PASS, not trusted" in record and "[checksum fails]" in record
    assert "the manifest holding the records fails its checksum" in out
    assert main(["info", str(b), "--json"]) == 2
    parity = json.loads(capsys.readouterr().out)["parity"][entry["path"]]
    assert parity["backends"] == {} and "fails its checksum" in parity["summary"]


def test_the_data_fingerprint_does_not_depend_on_the_order_of_the_images() -> None:
    from uopsl.export.validate import images_digest

    shas, labels = ["a" * 64, "b" * 64, "c" * 64], [("dr",), None, ("normal", "dr")]
    assert images_digest(shas, labels) == images_digest(shas[::-1], labels[::-1])
    assert images_digest(shas, labels) != images_digest(shas, [("dr",), None, ("normal",)])


def test_evaluate_gives_the_same_figures_for_the_same_photographs_in_another_row_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same 100 photographs in two row orders: macro AUC interval 0.557-0.740 in one, 0.553-0.723 in the
    other, both 'seed 0', and two data fingerprints."""
    from fixtures_data import write_csv, write_image
    from trainhelpers import classes_checkpoint
    from uopsl.runtime.clikit import main_entry
    from uopsl.train.cli import cli

    ck = classes_checkpoint(tmp_path / "ck", ("normal", "dr"))
    rows = [[str(write_image(tmp_path / "img" / f"{i}.jpg", seed=i)), ("normal", "dr")[i % 3 == 0], f"p{i}"]
            for i in range(24)]
    reports = []
    for name, order in (("a", rows), ("b", rows[::-1])):
        table = write_csv(tmp_path / f"{name}.csv", ["path", "label", "patient"], order)
        rc = main_entry(cli, ["evaluate", "--keep-ungradable",
                              str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / f"ev_{name}"),
                              "--n-boot", "50", "--device", "cpu"], prog_name="uopsl")
        assert rc == 0, capsys.readouterr().err
        reports.append(json.loads((tmp_path / f"ev_{name}" / "eval.json").read_text()))
    a, b = reports
    assert a["macro"] == b["macro"] and a["classes"] == b["classes"]
    assert a["data"]["images_sha256"] == b["data"]["images_sha256"]


def test_evaluate_and_zero_shot_take_the_photographs_validate_takes(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """evaluate scored 989 TVHL photographs where validate judged 916 of the same spec (31 byte-identical copies
    and 42 ungradable photographs), with no word of why the figures differed."""
    import logging

    import cv2
    import numpy as np

    from tinybundle import fundus_jpeg
    from dataclasses import replace

    from uopsl.train.checkpoint import save_model
    from uopsl.train.torchdata import Item
    from uopsl.train.workflow import new_model, run_evaluate, run_zero_shot

    model, meta = new_model(("normal", "dr"), backbone="resnet18", init="random", dim=32, sites=2, size=64,
                            head="sigmoid", seed=0)
    ck = tmp_path / "ck"
    save_model(ck, model, replace(meta, stage="finetune", thresholds=(0.5, 0.5)))
    paths = [fundus_jpeg(tmp_path / "img" / f"{i}.jpg", seed=i) for i in range(8)]
    copy = tmp_path / "img" / "copy_of_0.jpg"
    copy.write_bytes(paths[0].read_bytes())
    grey = tmp_path / "img" / "grey.jpg"
    cv2.imwrite(str(grey), np.full((320, 320, 3), 128, np.uint8))
    target = [np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)]
    items = [Item(p, target[i % 2], f"p{i}") for i, p in enumerate(paths)]
    items += [Item(copy, target[0], "p99"), Item(grey, target[1], "p98")]
    with caplog.at_level(logging.WARNING):
        report = run_evaluate(ck, items, None, n_boot=0, device="cpu")
    screened = report["data"]["screened"]
    assert report["data"]["n_images"] == 8 and screened["n_listed"] == 10 and screened["n_scored"] == 8
    assert screened["n_duplicate_content"] == 1 and screened["duplicates"][0]["copy_of"] == str(paths[0])
    assert screened["n_ungradable"] == 1 and screened["ungradable"][0]["image"] == str(grey)
    assert "byte-identical copies" in caplog.text and "ungradable by the runtime's quality gate" in caplog.text
    every = run_evaluate(ck, items, None, n_boot=0, device="cpu", keep_ungradable=True)
    assert every["data"]["n_images"] == 9 and every["data"]["screened"]["quality_gate"] is None
    zs = run_zero_shot(ck, items, ("normal", "dr"), None, n_boot=0)
    assert zs["screened"]["n_scored"] == 8 and zs["bootstrap"]["n_units"] == 8


def test_reports_name_the_code_that_ran_by_its_digest() -> None:
    """'0.2.9' named 13 commits' worth of different code, and an installed wheel records no git commit."""
    import hashlib
    import importlib.util

    from uopsl.export.parity_html import _revision_words
    from uopsl.runtime.version import code_digest, source_revision

    lines = []
    for part in ("runtime", "calibration", "export", "train"):
        spec = importlib.util.find_spec(f"uopsl.{part}")
        assert spec is not None and spec.submodule_search_locations
        root = Path(list(spec.submodule_search_locations)[0])
        lines += [f"uopsl.{part}/{f.relative_to(root).as_posix()} {hashlib.sha256(f.read_bytes()).hexdigest()}\n"
                  for f in root.rglob("*.py")]
    assert code_digest() == hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    assert source_revision()["code_sha256"] == code_digest()
    assert _revision_words({"code_sha256": "ab" * 32}) == f" (code sha256 {'ab' * 6})"


def test_parity_html_says_when_it_holds_photographs_of_the_data() -> None:
    from uopsl.export.parity_html import _photographs_note

    assert _photographs_note({"roc:model.onnx": "data:"}) == []
    note = "".join(_photographs_note({"thumb:a": "data:", "thumb:b": "data:", "roc:x": "data:"}))
    assert "holds 2 photographs of the data" in note and "--max-thumbnails 0" in note


def test_eval_json_takes_the_sha256s_the_screened_view_read_instead_of_reading_the_files_again(
        tmp_path: Path) -> None:
    from uopsl.train.provenance import data_facts

    gone = tmp_path / "gone.jpg"  # never written: a second read would find nothing
    here = tmp_path / "here.jpg"
    here.write_bytes(b"abc")
    facts = data_facts([gone, here], [("dr",), ()], known={str(gone): "f" * 64})
    assert facts["image_sha256"] == ["f" * 64, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
