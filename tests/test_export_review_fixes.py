"""The export stage at its edges (session 13 review): what `export --force`, `calibrate` and `quantize` may
overwrite, what the manifest must record, and bad inputs that must be one clear line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tinymodel import calibrate_cli, fundus_png_folder
from tinybundle import make_tiny_bundle
from uopsl.runtime.bundle import read_manifest, verify_or_raise
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import BundleError
from uopsl.runtime.fsio import sha256_file

SIZE = 64


_cli = calibrate_cli


def _images(folder: Path, n: int = 6) -> Path:
    return fundus_png_folder(folder, n)


@pytest.fixture()
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    return make_tiny_bundle(tmp_path / "bundle", size=SIZE)


# -- export --force replaces a bundle, never anything else -------------------------------------------------------
def test_force_replaces_only_a_bundle_or_an_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.export.bundle_writer import check_replaceable

    runs = tmp_path / "runs"
    (runs / "ft").mkdir(parents=True)
    (runs / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"not a uopsl bundle \(it holds no manifest.json\)"):
        check_replaceable(runs)
    with pytest.raises(BundleError, match="is or holds .*ft, which replacing it would delete"):
        check_replaceable(runs, keep=[runs / "ft"])
    monkeypatch.chdir(runs / "ft")
    with pytest.raises(BundleError, match="is or holds the folder you are in"):
        check_replaceable(runs)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    check_replaceable(make_tiny_bundle(tmp_path / "b", size=SIZE))
    (tmp_path / "b" / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="not a readable uopsl manifest .* remove the folder yourself"):
        check_replaceable(tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        check_replaceable(tmp_path / "file")
    assert (runs / "notes.txt").read_text() == "mine"


def test_force_refuses_a_bundle_holding_files_its_manifest_does_not_list(tmp_path: Path) -> None:
    """Results screened into a bundle before 0.2.1 refused that, or a signing key kept there, would be deleted with
    the bundle: --force names them and deletes nothing; a signed bundle's signature is the bundle's own."""
    from uopsl.export.bundle_writer import check_replaceable

    b = make_tiny_bundle(tmp_path / "b", size=SIZE)
    (b / "signature.json").write_text("{}")
    check_replaceable(b)
    (b / "screen").mkdir()
    (b / "screen" / "results.jsonl").write_text('{"id": "patient 1"}\n')
    (b / "keys").mkdir()
    (b / "keys" / "uopsl-signing.key").write_text("secret")
    with pytest.raises(BundleError, match=r"also holds 2 file\(s\) its manifest does not list \(keys/uopsl-signing"
                                          r".key, screen/results.jsonl\), which replacing it would delete"):
        check_replaceable(b)
    for i in range(6):
        (b / f"note{i}.txt").write_text("x")
    with pytest.raises(BundleError, match=r"holds 8 file\(s\) .* and 3 more\)"):
        check_replaceable(b)
    assert (b / "screen" / "results.jsonl").read_text() == '{"id": "patient 1"}\n'


def test_export_force_onto_the_runs_folder_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's repro: `uopsl export runs/ft --out runs --force` used to wipe the checkpoint."""
    from dataclasses import replace

    from trainhelpers import tiny_model
    from uopsl.train.checkpoint import save_model
    from uopsl.train.workflow import run_export

    model, meta = tiny_model()
    ckpt = tmp_path / "runs" / "ft"
    save_model(ckpt, model, replace(meta, stage="finetune", thresholds=(0.5, 0.5, 0.5)))
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="holds .*ft, which replacing it would delete"):
        run_export(ckpt, tmp_path / "runs", force=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("theirs")
    with pytest.raises(BundleError, match="not a uopsl bundle"):
        run_export(ckpt, tmp_path / "other", force=True)
    with pytest.raises(BundleError, match="which replacing it would delete"):
        run_export(ckpt, ckpt, force=True)
    assert (ckpt / "checkpoint.json").is_file() and (tmp_path / "runs" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "other" / "notes.txt").read_text() == "theirs"
    # --out . is the folder you are in: refused before the export (it used to fail with a ValueError after it).
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")  # put back after the test: its tmp_path is removed once it passes
    with pytest.raises(BundleError, match="the folder you are in"):
        run_export(ckpt, Path("."), force=True)


def test_export_refuses_opset_13_before_any_work() -> None:
    from uopsl.export.onnx_export import MIN_OPSET, export_onnx
    from uopsl.runtime.errors import ConfigError

    assert MIN_OPSET == 14
    with pytest.raises(ConfigError, match="opset must be in 14..20"):
        export_onnx(object(), "/nonexistent/m.onnx", 64, 13)


# -- calibrate and quantize: what they read stays as it was -------------------------------------------------------
def test_an_int8_file_is_no_source_for_calibration_or_quantization(bundle: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(tmp_path / "imgs")
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax"]) == 0
    assert main_entry(_cli(), ["quantize", str(bundle), "--rounding", "nearest", "--no-bias-correction"]) == 0
    table_before = (bundle / "calibration.json").read_bytes()
    capsys.readouterr()
    assert main_entry(_cli(), ["calibrate", str(bundle / "model.int8.onnx"), "--images", str(images)]) == 2
    assert "is the bundle's int8-qdq-u8 file; calibration and quantization start from the FP32 model" in \
        capsys.readouterr().err
    assert (bundle / "calibration.json").read_bytes() == table_before
    # The same INT8 graph copied out of the bundle: refused for what it holds.
    shutil.copy(bundle / "model.int8.onnx", tmp_path / "loose.onnx")
    assert main_entry(_cli(), ["calibrate", str(tmp_path / "loose.onnx"), "--images", str(images)]) == 2
    assert "is already quantized (it holds DequantizeLinear, QuantizeLinear)" in capsys.readouterr().err


def test_out_never_overwrites_the_model_or_the_table_read(bundle: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "imgs")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(bundle / "model.onnx", plain / "m.onnx")
    model_bytes = (plain / "m.onnx").read_bytes()
    assert main_entry(_cli(), ["calibrate", str(plain / "m.onnx"), "--images", str(images),
                               "--out", str(plain / "m.onnx")]) == 2
    assert main_entry(_cli(), ["calibrate", str(plain / "m.onnx"), "--images", str(images), "--method", "minmax"]) == 0
    table = (plain / "m.calibration.json").read_bytes()
    assert main_entry(_cli(), ["quantize", str(plain / "m.onnx"), "--out", str(plain / "m.onnx"),
                               "--no-bias-correction", "--rounding", "nearest"]) == 2
    assert main_entry(_cli(), ["quantize", str(plain / "m.onnx"), "--out", str(plain / "m.calibration.json"),
                               "--no-bias-correction", "--rounding", "nearest"]) == 2
    assert (plain / "m.onnx").read_bytes() == model_bytes and (plain / "m.calibration.json").read_bytes() == table


# -- the manifest records what was done, and only when something changed ------------------------------------------
def test_int8_entries_record_their_table_and_reduce_range_and_a_new_table_names_them(
        bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = _images(tmp_path / "imgs")
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax"]) == 0
    assert main_entry(_cli(), ["quantize", str(bundle), "--reduce-range", "--rounding", "nearest",
                               "--no-bias-correction"]) == 0
    info = {f.path: f for f in read_manifest(bundle).files}["model.int8.onnx"].info
    assert info["reduce_range"] is True and info["calibration_sha256"] == sha256_file(bundle / "calibration.json")
    # The same calibration again: the table is reused and the manifest is not rewritten (same bundle hash).
    manifest_before = (bundle / "manifest.json").read_bytes()
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax"]) == 0
    assert (bundle / "manifest.json").read_bytes() == manifest_before
    # Another method: a new table, and the INT8 file made from the old one is named.
    with caplog.at_level("WARNING"):
        assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "percentile"]) == 0
    assert "model.int8.onnx was quantized from another calibration table than the new one" in caplog.text
    verify_or_raise(bundle)
    listed = [f.path for f in read_manifest(bundle).files]
    assert listed.index("calibration.json") < listed.index("model.int8.onnx"), "the table kept its place"


def test_quantize_draws_the_set_calibrate_drew(bundle: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    images = _images(tmp_path / "imgs", n=8)
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax",
                               "--max-images", "5", "--seed", "3"]) == 0
    with caplog.at_level("WARNING"):
        assert main_entry(_cli(), ["quantize", str(bundle), "--images", str(images), "--max-images", "5",
                                   "--seed", "3", "--rounding", "nearest"]) == 0
    assert "not the set the table was calibrated on" not in caplog.text
    caches = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(caches) == 1, "one draw, one cached set (the two commands no longer rebuild over each other)"


# -- bad inputs are one line, before the work --------------------------------------------------------------------
@pytest.mark.parametrize("args, said", [
    (["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["--percentile", "0.9999", "--method", "percentile"], "Invalid value for '--percentile'"),
    (["--max-images", "0"], "Invalid value for '--max-images'"),
])
def test_bad_numbers_are_refused_by_the_option(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               args: list[str], said: str) -> None:
    images = _images(tmp_path / "imgs", n=2)
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), *args]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_csv_from_excel_and_lists_that_are_not_utf8(bundle: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(tmp_path / "imgs", n=3)
    bom = tmp_path / "set.csv"
    bom.write_text("path,label\n" + "".join(f"{p.name},normal\n" for p in sorted(images.iterdir())),
                   encoding="utf-8-sig")  # what Excel's "CSV UTF-8" writes
    shutil.copy(bom, images / "set.csv")
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images / "set.csv"),
                               "--method", "minmax"]) == 0
    latin = images / "list.txt"
    latin.write_bytes("img0.png\n# caf\xe9\n".encode("latin-1"))
    capsys.readouterr()
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(latin), "--method", "minmax"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "save it as UTF-8" in err and "Traceback" not in err


def test_auto_exclude_beyond_the_layers_is_refused_before_the_sensitivity_pass(bundle: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch,
                                                                                capsys: pytest.CaptureFixture[str]
                                                                                ) -> None:
    import uopsl.export.quantize as q

    images = _images(tmp_path / "imgs", n=2)
    assert main_entry(_cli(), ["calibrate", str(bundle), "--images", str(images), "--method", "minmax"]) == 0
    monkeypatch.setattr(q, "_sensitivities", lambda *a: pytest.fail("the sensitivity pass ran"))
    capsys.readouterr()
    assert main_entry(_cli(), ["quantize", str(bundle), "--images", str(images), "--auto-exclude", "999"]) == 2
    assert "--auto-exclude 999 asks for more layers than the" in capsys.readouterr().err
    assert not (bundle / "model.int8.onnx").exists()
    assert "model.int8.onnx" not in [f["path"] for f in json.loads((bundle / "manifest.json").read_text())["files"]]


# -- one writer of the manifest at a time ---------------------------------------------------------------------------
def test_manifest_updates_from_several_writers_all_land(bundle: Path) -> None:
    """quantize cpu and trt side by side (or a validate during a build) each rewrite the whole manifest."""
    import threading

    from uopsl.export.bundle_writer import add_file

    for i in range(16):
        (bundle / f"extra{i}.bin").write_bytes(bytes([i]) * 10)

    def writer(names: range) -> None:
        for i in names:
            add_file(bundle, None, f"extra{i}.bin", "other")

    threads = [threading.Thread(target=writer, args=(range(k, 16, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed = {f.path for f in read_manifest(bundle).files}
    assert {f"extra{i}.bin" for i in range(16)} <= listed
    verify_or_raise(bundle)
    assert not (bundle / ".manifest.lock").exists(), "a copied bundle carries no lock file"


def test_a_stuck_manifest_writer_is_named_not_waited_for_forever(bundle: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    import uopsl.export.bundle_writer as bw

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from uopsl.runtime.fsio import FolderLock; "
         f"lock = FolderLock({str(bundle)!r}, '.manifest.lock'); assert lock.acquire(); print('held', flush=True); "
         "sys.stdin.readline()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(bw, "_LOCK_WAIT_S", 0.3)
        (bundle / "late.bin").write_bytes(b"x")
        with pytest.raises(BundleError, match=rf"pid {holder.pid} has been updating .*manifest.json"):
            bw.add_file(bundle, None, "late.bin", "other")
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    bw.add_file(bundle, None, "late.bin", "other")
    assert "late.bin" in {f.path for f in read_manifest(bundle).files}


def test_force_replaces_a_bundle_with_its_quantize_records_and_stopped_writes(tmp_path: Path) -> None:
    """Session 50: `uopsl quantize`'s NAME.quantize.json and the temporaries of a write that was killed are the
    bundle's own, so --force replaces the bundle with them (a crash review left `.manifest.json.XXXX.tmp`)."""
    from uopsl.export.bundle_writer import check_replaceable

    b = make_tiny_bundle(tmp_path / "b", size=SIZE, int8=True)
    (b / "model.int8.quantize.json").write_text("{}")
    (b / ".manifest.json.abcd1234.tmp").write_text("{")
    (b / ".model.int8.onnx.x9y8.tmp").write_bytes(b"partial")
    check_replaceable(b)
    (b / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"holds 1 file\(s\) its manifest does not list \(notes.txt\)"):
        check_replaceable(b)


def test_a_manifest_update_removes_what_stopped_writes_left(tmp_path: Path) -> None:
    """A killed `validate`, `calibrate` or `quantize` left hidden temporaries in the bundle that every copy carried to
    devices (17 MB for an INT8 file). The next manifest update removes the manifest's own at once (they are made
    only under its lock) and a staged file once it has been idle (a live copy keeps writing)."""
    import os
    import time

    from uopsl.export.bundle_writer import _STALE_STAGE_S, manifest_update

    b = make_tiny_bundle(tmp_path / "b", size=SIZE)
    (b / ".manifest.json.abcd1234.tmp").write_text("{")
    old, live = b / ".model.int8.onnx.old1.tmp", b / ".model.int8.onnx.live.tmp"
    old.write_bytes(b"killed")
    live.write_bytes(b"being copied")
    then = time.time() - _STALE_STAGE_S - 5
    os.utime(old, (then, then))
    with manifest_update(b):
        pass
    assert sorted(p.name for p in b.iterdir() if p.name.startswith(".")) == [live.name]


def test_verify_names_a_stopped_writes_temporaries_as_such(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime import cli as screen_cli
    from uopsl.runtime.clikit import main_entry

    b = make_tiny_bundle(tmp_path / "b", size=SIZE)
    (b / ".manifest.json.abcd1234.tmp").write_text("{")
    assert main_entry(screen_cli.cli, ["verify", str(b)], prog_name="uopsl-screen") == 0
    err = capsys.readouterr().err
    assert "1 temporary file(s) left by a uopsl write that was stopped (.manifest.json.abcd1234.tmp)" in err
    assert "not in the manifest" not in err
