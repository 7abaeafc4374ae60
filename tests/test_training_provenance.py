"""Checkpoints record what each stage trained on; bundles describe it and never state a synthetic-only model clinical."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from trainhelpers import tiny_model, tiny_synth

from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.train.checkpoint import CheckpointMeta, save_model
from uopsl.train.cli import cli
from uopsl.train.workflow import describe_training_data, resolve_use, synthetic_only, with_training_data


def _record(stage: str, synthetic: bool, n: int = 10, modality: str = "fundus") -> dict[str, object]:
    return {"stage": stage, "source": "pool", "reader": "synthetic" if synthetic else "tvhl", "modality": modality,
            "n_images": n, "n_patients": n, "fingerprint": "f" * 8, "synthetic": synthetic}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prov")
    pool = tiny_synth(root / "pool", 8, 4)
    pre = root / "pre"
    model, meta = tiny_model()
    save_model(pre, model, replace(meta, stage="pretrain"))  # as a checkpoint from before the records
    out = root / "ft"
    assert main_entry(cli, ["finetune", "--data", str(pool), "--from", str(pre), "--out", str(out), "--epochs", "1",
                            "--batch-size", "4", "--device", "cpu", "--no-augment"], prog_name="uopsl") == 0
    return out


def test_finetune_records_its_validation_images_too(tmp_path: Path) -> None:
    """The images that chose the operating thresholds are recorded (they teach no class)."""
    pool, val = tiny_synth(tmp_path / "pool", 8, 0), tiny_synth(tmp_path / "val", 6, 0)
    pre = tmp_path / "pre"
    model, meta = tiny_model()
    save_model(pre, model, replace(meta, stage="pretrain"))
    assert main_entry(cli, ["finetune", "--data", str(pool), "--val", f"synthetic:{val}", "--from", str(pre),
                            "--out", str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                            "--no-augment"], prog_name="uopsl") == 0
    records = json.loads((tmp_path / "ft" / "checkpoint.json").read_text())["training_data"]
    assert [(r["stage"], r["n_images"]) for r in records] == [("finetune", 8), ("validation", 6)]


def test_finetune_records_its_data_in_the_checkpoint(finetuned: Path) -> None:
    records = json.loads((finetuned / "checkpoint.json").read_text())["training_data"]
    assert len(records) == 1
    r = records[0]
    assert (r["stage"], r["reader"], r["modality"], r["synthetic"]) == ("finetune", "synthetic", "fundus", True)
    assert r["n_images"] == 8 and r["fingerprint"]  # the training part of the pool (8 of 8 here: none left to validate)


def test_a_finetune_from_a_checkpoint_fingerprints_its_own_data(finetuned: Path) -> None:
    """The bundle's ``training_data_fingerprint`` is the fine-tuning set's, not the starting checkpoint's."""
    saved = json.loads((finetuned / "checkpoint.json").read_text())
    assert saved["data_fingerprint"] == saved["training_data"][0]["fingerprint"]
    assert saved["data_fingerprint"] != tiny_model()[1].data_fingerprint


def test_a_synthetic_only_model_exports_as_a_demonstration_and_never_as_clinical(
        finetuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def export(out: Path, *extra: str) -> int:
        return main_entry(cli, ["export", str(finetuned), "--out", str(out), *extra], prog_name="uopsl")

    assert export(tmp_path / "b") == 0
    use = read_manifest(tmp_path / "b").intended_use
    assert use.status == "demonstration"
    assert use.trained_on.startswith("finetune: ") and "8 fundus photographs (synthetic[fundus][train])" in use.trained_on
    capsys.readouterr()
    assert export(tmp_path / "c", "--intended-use", "clinical", "--use-statement", "validated at X") == 2
    assert "only ever learned from synthetic fundus photographs" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    assert export(tmp_path / "d", "--intended-use", "research", "--trained-on", "our own words") == 0
    use = read_manifest(tmp_path / "d").intended_use
    assert (use.status, use.trained_on) == ("research", "our own words")
    # Restating it later cannot make it clinical either: the bundle keeps the records it was judged by.
    assert read_manifest(tmp_path / "b").notes["training_data"][0]["synthetic"] is True
    capsys.readouterr()
    assert main_entry(cli, ["intended-use", str(tmp_path / "b"), "clinical", "--use-statement", "validated at X"],
                      prog_name="uopsl") == 2
    assert "only ever learned from synthetic fundus photographs" in capsys.readouterr().err
    assert read_manifest(tmp_path / "b").intended_use.status == "demonstration"


def test_pretrain_records_oct_only_where_the_variant_learns_from_it(tmp_path: Path) -> None:
    pool = tiny_synth(tmp_path / "pool", 6, 4)
    common = ["--fundus", f"synthetic:{pool}", "--oct", f"synthetic:{pool}", "--backbone", "resnet18", "--init",
              "random", "--size", "64", "--epochs", "1", "--device", "cpu"]
    for variant, modalities in (("p_only", ["fundus"]), ("uopsl", ["fundus", "oct"])):
        out = tmp_path / variant
        assert main_entry(cli, ["pretrain", *common, "--variant", variant, "--out", str(out)], prog_name="uopsl") == 0
        records = json.loads((out / "checkpoint.json").read_text())["training_data"]
        assert [(r["stage"], r["modality"]) for r in records] == [("pretrain", m) for m in modalities], variant
        assert all(r["synthetic"] for r in records)


def test_use_defaults_follow_what_the_model_learned_from() -> None:
    _, meta = tiny_model()
    assert not synthetic_only(meta) and resolve_use(meta).status == "research"  # an older checkpoint: no records
    real = with_training_data(meta, _record("pretrain", True, modality="oct"), _record("finetune", False, 700))
    assert not synthetic_only(real)
    use = resolve_use(real, "clinical", "Validated at X on 2,000 patients.")
    assert use.for_patients and use.trained_on == ("pretrain: 10 OCT B-scans (synthetic, pool); "
                                                   "finetune: 700 fundus photographs (pool)")
    # Distilling a synthetic model on real photographs (QAT) teaches it no disease; nor does a real OCT pool
    # teach it what a real fundus photograph looks like.
    distilled = with_training_data(meta, _record("finetune", True), _record("qat", False),
                                   _record("pretrain", False, modality="oct"), _record("validation", False))
    assert synthetic_only(distilled) and resolve_use(distilled).status == "demonstration"
    with pytest.raises(ConfigError, match="cannot be stated for clinical use"):
        resolve_use(distilled, "clinical", "Validated at X.")
    with pytest.raises(ConfigError, match="needs the intended use it describes"):
        resolve_use(real, None, "a statement")
    with pytest.raises(BundleError, match="needs a statement"):
        resolve_use(real, "clinical")
    assert describe_training_data(meta) == ""
    many = with_training_data(meta, *[_record("finetune", False, modality="fundus") for _ in range(20)])
    line = describe_training_data(many)
    assert len(line) <= 300 and line.endswith("more stages (see the checkpoint)")
    assert resolve_use(many).trained_on == line


def test_training_records_round_trip_and_bad_ones_are_refused() -> None:
    _, meta = tiny_model()
    meta = with_training_data(meta, _record("finetune", True))
    assert CheckpointMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    with pytest.raises(ValueError, match="training_data must be a list of objects"):
        CheckpointMeta.from_dict({**meta.to_dict(), "training_data": ["finetune"]})
    assert CheckpointMeta.from_dict({k: v for k, v in meta.to_dict().items() if k != "training_data"}).training_data == ()
