"""``uopsl validate`` end to end: data forms, reports, exit codes, resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from uopsl.runtime.bundle import read_manifest, write_manifest
from uopsl.runtime.clikit import LazyGroup, main_entry
from uopsl.train.commands.validate import limit_records, resolve_data


def _uopsl(argv: list[str]) -> int:
    """Run the command as ``uopsl validate`` would (same LazyGroup plumbing and exit-code mapping)."""
    import click

    @click.group(cls=LazyGroup, lazy={"validate": "uopsl.train.commands.validate:command"})
    def cli() -> None:
        pass

    # --keep-ungradable: these tests' photographs are smaller than the runtime's quality gate takes (256 px).
    return main_entry(cli, ["validate", "--keep-ungradable", *argv], prog_name="uopsl")


def _strict_json(path: Path) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"{path} holds {name}: not strict JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


def _val_folder(cast_sets: dict) -> Path:
    return cast_sets["val"][0].parent.parent  # val/<class>/*.png


def test_labelled_folder_passes_and_writes_self_contained_reports(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                                   tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, shared = tiny_ckpt_bundle
    bundle = Path(shutil.copytree(shared, tmp_path / "bundle"))  # validate records its verdict in the manifest
    out = tmp_path / "out"
    args = [str(bundle), "--checkpoint", str(ckpt), "--data", str(_val_folder(cast_sets)), "--out", str(out),
            "--backends", "ort-cpu", "--n-boot", "100", "--device", "cpu"]
    # a 60-image run passes, but too few images to vouch for the file: it records nothing and says so in a line
    assert _uopsl([*args[:6], str(tmp_path / "out60"), *args[7:], "--limit", "60"]) == 0
    printed = capsys.readouterr().out
    assert "PASS ort-cpu:model.onnx" in printed and "not recorded in the manifest" in printed
    assert "only 60 images" in printed and "parity" not in read_manifest(bundle).file("model.onnx").info
    assert _uopsl(args) == 0  # all 120 images
    assert "PASS ort-cpu:model.onnx" in capsys.readouterr().out
    # the verdict is in the manifest, tied to the file's checksum, and the bundle still verifies
    from uopsl.runtime.bundle import parity_status, verify_or_raise

    entry = verify_or_raise(bundle).file("model.onnx")
    record = entry.info["parity"]
    assert record["sha256"] == entry.sha256 and set(record["backends"]) == {"ort-cpu"}
    run = record["backends"]["ort-cpu"]
    assert run["passed"] is True and run["n_images"] == 120 and run["gates"]["min_top1_agreement"] == 0.99
    assert run["verdict"] == "PASS" and run["data"]["spec"] == str(_val_folder(cast_sets))
    assert parity_status(entry)[0] and parity_status(entry, "ort-cpu")[0]
    assert not parity_status(entry, "openvino")[0]  # never run there
    report = _strict_json(out / "parity.json")
    assert report["passed"] and report["data"]["truth"] == "labels" and report["data"]["n_used"] == 120
    assert report["gates"] == {"max_flip_rate": 0.005, "max_class_flip_rate": 0.005, "max_auc_drop": 0.005,
                               "max_finding_change_rate": 0.01,
                               "max_sensitivity_drop": 0.01, "max_prob_diff": None, "min_top1_agreement": 0.99}
    config = _strict_json(out / "parity_config.json")
    assert config["context"]["checkpoint"] == str(ckpt) and config["config"]["backends"] == ["ort-cpu"]
    html = (out / "parity.html").read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "data:image/png;base64," in html and (out / "roc_ort-cpu_model.onnx.png").is_file()
    headroom = report["candidates"][0]["headroom"]  # FP32: nothing near a boundary moves
    assert set(headroom) == {"top1", "referral"} and headroom["top1"]["observed_changes"] == 0
    assert headroom["top1"]["error_rms"] < 1e-3 and "Decision headroom" in html
    # a rerun with the same inputs reuses the cached outputs: the reference is not run again
    from uopsl.train.reference import TorchReference

    def no_inference(self, batch):  # noqa: ANN001, ANN202
        raise AssertionError("the rerun should have read the cached outputs")

    monkeypatch.setattr(TorchReference, "infer", no_inference)
    assert _uopsl(args) == 0
    again = _strict_json(out / "parity.json")
    assert again["candidates"][0]["numerical"] == report["candidates"][0]["numerical"]


def test_unlabelled_images_use_the_reference_decisions(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                       tmp_path: Path) -> None:
    ckpt, bundle = tiny_ckpt_bundle
    flat = tmp_path / "photos"
    flat.mkdir()
    for p in cast_sets["val"][:60]:  # the reference's calls give every class MIN_CASES_PER_CLASS of each
        shutil.copy(p, flat / p.name)
    (flat / "broken.png").write_bytes(b"not an image")  # a bad file gets a row, it does not stop the run
    out = tmp_path / "out"
    before = (bundle / "manifest.json").read_bytes()
    assert _uopsl([str(bundle), "--checkpoint", str(ckpt), "--data", str(flat), "--out", str(out),
                   "--backends", "ort-cpu", "--device", "cpu", "--no-resume", "--no-record"]) == 0
    assert (bundle / "manifest.json").read_bytes() == before  # --no-record leaves the bundle as it was
    report = _strict_json(out / "parity.json")
    assert report["data"]["truth"] == "reference_decisions" and report["data"]["n_used"] == 60
    assert [s["id"] for s in report["skipped_images"]] == ["broken.png"]
    assert any("no labels" in n for n in report["notes"])


def test_broken_bundle_exits_1_and_usage_errors_exit_2(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, good = tiny_ckpt_bundle
    bundle = Path(shutil.copytree(good, tmp_path / "bundle"))
    m = read_manifest(bundle)
    write_manifest(bundle, replace(m, preprocess=replace(m.preprocess, fov_margin=0.3)))
    base = [str(bundle), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--backends", "ort-cpu",
            "--device", "cpu"]
    data = [str(p) for p in cast_sets["val"][:48]]
    csv = tmp_path / "set.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{Path(p).parent.name}\n" for p in data), encoding="utf-8")
    assert _uopsl([*base, "--data", str(csv)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL ort-cpu:model.onnx" in printed
    report = _strict_json(tmp_path / "out" / "parity.json")
    failed = {c["name"] for c in report["candidates"][0]["checks"] if c["passed"] is False}
    for gate, line in (("flip_rate", "referral: "), ("top1_agreement", "top1: ")):  # the headroom says why
        assert (line in printed) == (gate in failed), printed
    assert _uopsl([*base, "--data", str(csv), "--gates", "flips=0.01,speed=3"]) == 2
    assert "unknown gate 'speed'" in capsys.readouterr().err
    assert _uopsl([*base, "--data", str(tmp_path / "nowhere")]) == 2
    assert _uopsl([*base, "--data", str(csv), "--backends", "cuda-magic"]) == 2


def test_a_checkpoint_the_bundle_did_not_come_from_is_refused(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The verdicts gate `auto`, so they must be against the exported model; another one is a study, not recorded."""
    from paritykit import tiny_checkpoint

    from uopsl.train.checkpoint import CHECKPOINT_DIGEST_NOTE, checkpoint_digest

    ckpt, shared = tiny_ckpt_bundle
    bundle = Path(shutil.copytree(shared, tmp_path / "bundle"))
    m = read_manifest(bundle)  # as `uopsl export` writes it: the checkpoint's weights digest in the notes
    write_manifest(bundle, replace(m, notes={**m.notes, CHECKPOINT_DIGEST_NOTE: checkpoint_digest(ckpt)}))
    other = tiny_checkpoint(tmp_path / "other", seed=1)
    base = [str(bundle), "--data", str(_val_folder(cast_sets)), "--backends", "ort-cpu", "--limit", "8",
            "--n-boot", "0", "--device", "cpu"]
    capsys.readouterr()
    assert _uopsl([*base, "--checkpoint", str(other), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the checkpoint this bundle was exported from" in err
    assert "--other-checkpoint" in err and not (tmp_path / "o1" / "parity.json").exists()
    before = (bundle / "manifest.json").read_bytes()
    assert _uopsl([*base, "--checkpoint", str(other), "--out", str(tmp_path / "o2"), "--other-checkpoint"]) in (0, 1)
    assert (bundle / "manifest.json").read_bytes() == before  # a comparison with another model records nothing
    assert _strict_json(tmp_path / "o2" / "parity.json")["context"]["other_checkpoint"] is True
    full = [str(bundle), "--data", str(_val_folder(cast_sets)), "--backends", "ort-cpu", "--n-boot", "0",
            "--device", "cpu"]  # all 120 images: enough for a pass to be recorded
    assert _uopsl([*full, "--checkpoint", str(ckpt), "--out", str(tmp_path / "o3")]) == 0
    assert "parity" in read_manifest(bundle).file("model.onnx").info  # the right checkpoint: recorded
    # --other-checkpoint never records, even where the bundle cannot tell (no digest, as before this check)
    old = Path(shutil.copytree(shared, tmp_path / "old"))
    before = (old / "manifest.json").read_bytes()
    assert _uopsl([str(old), "--checkpoint", str(other), "--data", str(_val_folder(cast_sets)), "--backends",
                   "ort-cpu", "--limit", "8", "--n-boot", "0", "--device", "cpu", "--out", str(tmp_path / "o4"),
                   "--other-checkpoint"]) in (0, 1)
    assert (old / "manifest.json").read_bytes() == before


def test_data_forms(cast_sets: dict, tmp_path: Path) -> None:
    folder = _val_folder(cast_sets)
    records, space, _ = resolve_data(str(folder))
    assert space == ("normal", "a", "b") or set(space) == {"normal", "a", "b"}
    assert len(records) == 120 and records[0].labels is not None
    unlabelled = tmp_path / "paths.csv"
    unlabelled.write_text("path\n" + "\n".join(str(p) for p in cast_sets["val"][:3]) + "\n", encoding="utf-8")
    recs, space2, _ = resolve_data(str(unlabelled))
    assert space2 is None and [r.labels for r in recs] == [None] * 3
    multi = tmp_path / "multi.csv"
    multi.write_text("path,labels\n" + "\n".join(f"{p},a;b" for p in cast_sets["val"][:2]) + "\n", encoding="utf-8")
    recs, space3, _ = resolve_data(str(multi))
    assert recs[0].labels == ("a", "b") and set(space3 or ()) == {"a", "b"}
    sub = limit_records(records, 10, seed=0)
    assert len(sub) == 10 and sub == limit_records(records, 10, seed=0) and sub == sorted(sub, key=records.index)


def test_bootstrap_seed_changes_the_interval_not_the_images(tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--bootstrap-seed re-checks an interval on the very same images; --seed alone keeps seeding both."""
    ckpt, bundle = tiny_ckpt_bundle
    base = [str(bundle), "--checkpoint", str(ckpt), "--data", str(_val_folder(cast_sets)), "--backends", "ort-cpu",
            "--limit", "60", "--seed", "3", "--n-boot", "50", "--device", "cpu", "--no-record"]
    assert _uopsl([*base, "--out", str(tmp_path / "a")]) == 0
    assert _uopsl([*base, "--out", str(tmp_path / "b"), "--bootstrap-seed", "7"]) == 0
    printed = capsys.readouterr().out
    # once per report: how many images 0 changes needs to show each rate gate, next to this run's size
    assert ("referral flips 598, class-call flips 598, images with a changed finding 299, top-1 changes 299 images; "
            "this run has 60") in printed
    a, b = _strict_json(tmp_path / "a" / "parity.json"), _strict_json(tmp_path / "b" / "parity.json")
    assert a["bootstrap"] == {**b["bootstrap"], "seed": 3} and b["bootstrap"]["seed"] == 7
    assert a["bootstrap"]["n_boot"] == 50 and a["bootstrap"]["alpha"] == 0.05
    assert a["context"]["seed"] == b["context"]["seed"] == 3 and b["context"]["bootstrap_seed"] == 7
    assert len(a["data"]["image_ids"]) == 60 and a["data"]["image_ids"] == b["data"]["image_ids"]
    row = next(r for r in a["candidates"][0]["clinical"]["per_class"] if r["auc_difference"])
    assert row["auc_difference"]["n_boot"] == 50 and row["auc_difference"]["alpha"] == 0.05
    html = (tmp_path / "a" / "parity.html").read_text(encoding="utf-8")
    assert "<th>n+ (images)</th><th>n- (images)</th>" in html and "seed 3" in html


def test_judge_on_bounds_says_what_120_images_cannot_show_and_keeps_the_recorded_pass(
        tiny_ckpt_bundle: tuple[Path, Path], cast_sets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The 120 images that PASS above (no flip) cannot show a flip rate under 0.5 % at 95 % confidence (bound
    # 2.5 %): judged on the bounds the file is INCOMPLETE, not FAIL, so the manifest keeps its PASS (a FAIL
    # would replace it, and the FP32 file's PASS is what a device's --onnx-reference rests on).
    ckpt, shared = tiny_ckpt_bundle
    bundle = Path(shutil.copytree(shared, tmp_path / "bundle"))
    out = tmp_path / "out"
    args = [str(bundle), "--checkpoint", str(ckpt), "--data", str(_val_folder(cast_sets)), "--out", str(out),
            "--backends", "ort-cpu", "--n-boot", "100", "--device", "cpu"]
    assert _uopsl(args) == 0
    capsys.readouterr()
    assert _uopsl([*args, "--judge-on", "bounds"]) == 1
    printed = capsys.readouterr().out
    assert "INCOMPLETE ort-cpu:model.onnx" in printed and "not shown at 95 %" in printed
    report = _strict_json(out / "parity.json")
    assert report["judged_on"] == "bounds" and report["candidates"][0]["judged_on"] == "bounds"
    assert report["verdict"] == "INCOMPLETE"
    flips = next(c for c in report["candidates"][0]["checks"] if c["name"] == "flip_rate")
    assert flips["value"] == pytest.approx(report["candidates"][0]["clinical"]["flips"]["upper95"])
    assert flips["value"] > 0.02 and flips["passed"] is None and flips["status"] == "INCOMPLETE"
    run = read_manifest(bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"]
    assert run["verdict"] == "PASS" and "judged_on" not in run  # the estimates' PASS stays
    assert any(k["kept_verdict"] == "PASS" for k in report["record"]["kept"])
    assert "Judged on the 95 % bounds" in (out / "parity.html").read_text(encoding="utf-8")
    assert _uopsl([str(bundle), "--checkpoint", str(ckpt), "--data", str(_val_folder(cast_sets)), "--out",
                   str(tmp_path / "bad"), "--judge-on", "worst"]) == 2
