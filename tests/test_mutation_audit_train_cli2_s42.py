"""Mutation audit (session 42) of the training-side CLI commands ``export``, ``keygen``/``sign``, ``evaluate`` and
``finetune`` (``train/commands/export.py``, ``sign.py``, ``evaluate.py``, ``finetune.py``).

What users depend on: every option reaches the library function it names, unchanged (a flag that silently does
nothing is the worst case); a bad argument is one line and exit 2; outputs go where the user said; nothing is
overwritten unasked; the printed summary says what the library returned. Single-point mutants were applied to a
scratch copy of one module at a time and run against the tests that drive these commands; each test here pins a
behaviour a mutant slipped past them with (its docstring names the mutant id(s) of the audit's list).

No model is trained or exported: the commands run in-process (``click.testing.CliRunner`` on the ``uopsl`` group,
or ``main_entry`` for the exit code and the one-line error) and the heavy library call (``run_export``,
``run_evaluate``, ``new_model``/``from_checkpoint``/``run_finetune``, ``write_triton_repository``) is replaced by a
recorder that keeps what it received and either stops the run or returns a hand-made result. Every expected
value is worked out by hand from the option's help text, the data written in the test, or arithmetic shown here.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fixtures_data import make_folder_dataset
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest, describe_file, write_manifest
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import user_cache_dir
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train.cli import cli


class _Stop(Exception):
    """Raised by a recorder once it has what the command passed on: nothing heavy runs."""


def _uopsl(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``uopsl ARGS`` in this process, with the console script's exit-code mapping (ConfigError, usage: 2)."""
    rc = main_entry(cli, args, prog_name="uopsl")
    got = capsys.readouterr()
    return rc, got.out, got.err


def _invoke(args: list[str], **kw: Any) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=True, **kw)


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error: ")]


def _onnx_bundle(root: Path, size: int = 64) -> Path:
    """A bundle whose one file is a one-node FP32 ONNX model (parsable, no external data), real checksums."""
    import onnx
    from onnx import TensorProto, helper

    root.mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Cast", ["image"], ["probs"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", size, size, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(root / "model.onnx"))
    write_manifest(root, Manifest(classes=(ClassSpec("normal"), ClassSpec("dr", referable=True)), head="sigmoid",
                                  preprocess=PreprocessConfig(size=size),
                                  files=(describe_file(root, FileEntry("model.onnx", "onnx", "fp32")),)))
    return root


# == export ==========================================================================================================
STATEMENT = "Validated by Example Eye Care for adults with diabetes, Topcon NW400 photographs (study EEC-2026-04)."


def _record_export(monkeypatch: pytest.MonkeyPatch, returns: Path | None = None) -> dict[str, Any]:
    """Replace ``run_export`` by a recorder; it stops the run, or returns ``returns`` as the written bundle."""
    import uopsl.train.workflow as wf

    got: dict[str, Any] = {}

    def fake(checkpoint: Path, out: Path, classes_file: Path | None = None, opset: int = 17, force: bool = False,
             text_model: str | None = None, use_status: str | None = None, use_statement: str = "",
             trained_on: str = "") -> Path:
        got.update(checkpoint=checkpoint, out=out, classes_file=classes_file, opset=opset, force=force,
                   text_model=text_model, use_status=use_status, use_statement=use_statement, trained_on=trained_on)
        if returns is None:
            raise _Stop
        return returns

    monkeypatch.setattr(wf, "run_export", fake)
    return got


def test_export_passes_every_option_to_run_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """E02, E03, E11-E17: each option of ``uopsl export`` must reach ``run_export`` as given. A mutant that
    dropped --opset exported opset 17 for a user who asked for 18; one that dropped --force refused the
    replacement asked for; one that dropped --text-model, --intended-use, --use-statement or --trained-on wrote
    a bundle whose manifest did not say what the user stated (a clinical statement lost without a word); one that
    refused --text-model even with --classes made the documented pairing unusable."""
    got = _record_export(monkeypatch)
    ck, out, classes = tmp_path / "ck", tmp_path / "bundle", tmp_path / "classes.toml"
    ck.mkdir()
    classes.write_text('[[classes]]\nname = "normal"\n', encoding="utf-8")
    res = _invoke(["export", str(ck), "--out", str(out), "--classes", str(classes), "--opset", "18", "--force",
                   "--text-model", "encoders/minilm", "--intended-use", "clinical", "--use-statement", STATEMENT,
                   "--trained-on", "TVHL photographs"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert got == {"checkpoint": ck, "out": out, "classes_file": classes, "opset": 18, "force": True,
                   "text_model": "encoders/minilm", "use_status": "clinical", "use_statement": STATEMENT,
                   "trained_on": "TVHL photographs"}


def test_export_defaults_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """E19, E26: without options the bundle is opset 17 (``--help``: above 17 the file does not parse on
    TensorRT 8.x, so a default of 18 broke every JetPack 6.0 device), nothing is replaced, and the intended use
    is left to the checkpoint (None: demonstration for synthetic-only training, else research); a mutant default
    of "research" stamped synthetic-only models as research models."""
    got = _record_export(monkeypatch)
    ck = tmp_path / "ck"
    ck.mkdir()
    res = _invoke(["export", str(ck), "--out", str(tmp_path / "b")])
    assert isinstance(res.exception, _Stop), res.output
    assert got == {"checkpoint": ck, "out": tmp_path / "b", "classes_file": None, "opset": 17, "force": False,
                   "text_model": None, "use_status": None, "use_statement": "", "trained_on": ""}


@pytest.mark.parametrize("opset, accepted", [("13", False), ("14", True), ("20", True), ("21", False)])
def test_export_opset_is_14_to_20(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opset: str, accepted: bool) -> None:
    """E20, E21: ``--opset`` is an IntRange(14, 20); outside it is a usage error (exit 2) before any export."""
    got = _record_export(monkeypatch)
    ck = tmp_path / "ck"
    ck.mkdir()
    res = _invoke(["export", str(ck), "--out", str(tmp_path / "b"), "--opset", opset])
    if accepted:
        assert isinstance(res.exception, _Stop) and got["opset"] == int(opset)
    else:
        assert res.exit_code == 2 and "--opset" in res.output and not got


def _uopsl_repo(root: Path) -> Path:
    """A non-empty Triton repository folder as uopsl writes it (its marker file present)."""
    from uopsl.export.triton import REPO_MARKER

    (root / "uopsl" / "1").mkdir(parents=True)
    (root / REPO_MARKER).write_text("{}", encoding="utf-8")
    return root


def test_export_force_lets_an_earlier_triton_repository_be_replaced_and_is_passed_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """E08, E18, E25: ``--force`` replaces the repository an earlier export wrote: a mutant that checked the
    target as if --force were absent refused the very replacement asked for (exit 2), one that wrote it with
    overwrite=False failed after minutes of export work. Without --force the same folder is one line, exit 2.
    The summary names the bundle written and counts its classes (2) and files (1)."""
    import uopsl.export.triton as tr

    bundle = _onnx_bundle(tmp_path / "made")
    got = _record_export(monkeypatch, returns=bundle)
    written: list[tuple[Path, Path, bool]] = []

    def fake_write(b: Path, repo: Path, overwrite: bool = False, **kw: object) -> Path:
        written.append((b, repo, overwrite))
        return repo

    monkeypatch.setattr(tr, "write_triton_repository", fake_write)
    ck, repo = tmp_path / "ck", _uopsl_repo(tmp_path / "repo")
    ck.mkdir()
    rc, out, err = _uopsl(["export", str(ck), "--out", str(tmp_path / "b"), "--triton", str(repo)], capsys)
    assert rc == 2 and not got and len(_errors(err)) == 1 and "pass --force" in err, err
    rc, out, err = _uopsl(["export", str(ck), "--out", str(tmp_path / "b"), "--triton", str(repo), "--force"], capsys)
    assert rc == 0, err
    assert written == [(bundle, repo, True)]
    assert f"bundle {bundle}: 2 classes, 1 files verified" in out
    assert f"Triton model repository written to {repo}" in out


def test_export_never_writes_a_triton_repository_over_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """E09, E10: a repository path that is (or holds) the checkpoint folder is refused before exporting:
    writing the repository there replaces what the folder holds, so a mistyped ``--triton`` deleted the trained
    model. Mutants that left the checkpoint out of the check (or skipped it) went on to export."""
    got = _record_export(monkeypatch)
    ck = tmp_path / "runs" / "ck"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"weights")
    for target in (ck, tmp_path / "runs"):
        rc, _, err = _uopsl(["export", str(ck), "--out", str(tmp_path / "b"), "--triton", str(target)], capsys)
        assert rc == 2 and len(_errors(err)) == 1 and "is or holds the checkpoint" in err, err
    assert not got and (ck / "model.safetensors").read_bytes() == b"weights"


def test_export_refuses_a_relative_triton_path_inside_an_absolute_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """E22: the paths are compared resolved; compared as written, ``--out /abs/b --triton b/triton`` (the same
    folder, typed two ways) passed, and the repository was written inside the bundle folder, whose manifest lists
    every file (the bundle then failed verification on devices)."""
    got = _record_export(monkeypatch)
    (tmp_path / "ck").mkdir()
    monkeypatch.chdir(tmp_path)
    rc, _, err = _uopsl(["export", "ck", "--out", str(tmp_path / "b"), "--triton", "b/triton"], capsys)
    assert rc == 2 and "choose a repository folder beside it" in err and not got, err


def test_export_verifies_the_bundle_it_reports_as_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """E23: the summary says "files verified"; a mutant that only read the manifest printed it for a bundle
    whose model file no longer matched its checksum."""
    bundle = _onnx_bundle(tmp_path / "made")
    (bundle / "model.onnx").write_bytes(b"changed after the manifest was written")
    _record_export(monkeypatch, returns=bundle)
    (tmp_path / "ck").mkdir()
    rc, out, err = _uopsl(["export", str(tmp_path / "ck"), "--out", str(tmp_path / "b")], capsys)
    assert rc == 2 and "verified" not in out and "model.onnx" in err, out + err


# == keygen / sign ===================================================================================================
def test_keygen_and_sign_refuse_two_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """S02: ``--password-env`` and ``--password-prompt`` together are a usage error (exit 2, one line); a mutant
    without the check silently took the prompt and ignored the variable the user's script set."""
    monkeypatch.setenv("KEYPW", "correct horse")
    rc, _, err = _uopsl(["keygen", "--out", str(tmp_path / "k"), "--password-env", "KEYPW", "--password-prompt"],
                        capsys)
    assert rc == 2 and "not both" in err and not (tmp_path / "k").exists(), err


def test_keygen_asks_for_the_password_twice(tmp_path: Path) -> None:
    """S04: a new key's password is typed twice (click's confirmation); a mutant that asked once encrypted the
    key with whatever typo was typed, and the key could never be used."""
    res = _invoke(["keygen", "--out", str(tmp_path / "k"), "--password-prompt"], input="first try\nfirst tyr\n")
    assert res.exit_code != 0 and not (tmp_path / "k" / "uopsl-signing.key").exists(), res.output
    res = _invoke(["keygen", "--out", str(tmp_path / "k"), "--password-prompt"], input="long phrase\nlong phrase\n")
    assert res.exit_code == 0 and b"ENCRYPTED" in (tmp_path / "k" / "uopsl-signing.key").read_bytes(), res.output


@pytest.mark.parametrize("value", [None, ""])
def test_keygen_refuses_an_unset_or_empty_password_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str],
                                                            value: str | None) -> None:
    """S06: ``--password-env VAR`` with VAR empty must be refused; a mutant that refused only an unset one wrote
    an unencrypted private key (an empty password encrypts nothing) without the "not encrypted" note, for a
    user who asked for encryption."""
    if value is None:
        monkeypatch.delenv("uopsl_key_pw", raising=False)
    else:
        monkeypatch.setenv("uopsl_key_pw", value)
    rc, out, err = _uopsl(["keygen", "--out", str(tmp_path / "k"), "--password-env", "uopsl_key_pw"], capsys)
    assert rc == 2 and len(_errors(err)) == 1 and "--password-env uopsl_key_pw" in err, out + err
    assert not (tmp_path / "k" / "uopsl-signing.key").exists()


def test_the_password_variable_is_read_by_the_name_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """S22: environment variable names are case-sensitive; ``--password-env key_pw`` reads ``key_pw`` (a mutant
    that read another spelling refused a set variable, or took another one's password). The key is encrypted with
    it and signs with it."""
    monkeypatch.setenv("key_pw", "correct horse battery")
    monkeypatch.delenv("KEY_PW", raising=False)
    rc, out, err = _uopsl(["keygen", "--out", str(tmp_path / "k"), "--password-env", "key_pw"], capsys)
    assert rc == 0 and "not encrypted" not in out + err, out + err
    key = tmp_path / "k" / "uopsl-signing.key"
    assert b"ENCRYPTED" in key.read_bytes()
    bundle = _onnx_bundle(tmp_path / "bundle")
    rc, out, err = _uopsl(["sign", str(bundle), "--key", str(key), "--password-env", "key_pw"], capsys)
    assert rc == 0 and (bundle / "signature.json").is_file(), out + err


def test_keygen_uses_the_name_given_and_says_an_unencrypted_key_on_stderr(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """S15, S16, S18: ``--name`` names both files (default ``uopsl-signing``); a mutant that ignored it wrote
    ``uopsl-signing.key`` for a user who keeps several keys, and the second keygen was refused. The
    unencrypted-key note is a warning, on stderr (a script capturing stdout for the key id must not get it)."""
    rc, out, err = _uopsl(["keygen", "--out", str(tmp_path / "k"), "--name", "clinic-2026"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["clinic-2026.key", "clinic-2026.pub"]
    assert "not encrypted" in err and "not encrypted" not in out
    rc, _, err = _uopsl(["keygen", "--out", str(tmp_path / "d")], capsys)
    assert rc == 0 and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["uopsl-signing.key",
                                                                             "uopsl-signing.pub"], err


def test_the_replaced_release_note_names_an_earlier_other_signature_only(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """S11, S12: the "this replaces release X ... publish 'release X' in their revocation lists" note is for a
    bundle that held another signature. Mutants printed it on a first signature (revoke 'release ', an empty
    id) or when signing again gave the very same id (same key, same second: the user was told to revoke the
    release they had just made). Signing with another key names the first signature's id."""
    import datetime as real_dt
    import types

    import uopsl.runtime.signing as signing
    from uopsl.runtime.signing import current_signature_id, generate_keypair

    class _Frozen(real_dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # one clock second for every signature below
            return real_dt.datetime(2026, 12, 5, 10, 0, 0, tzinfo=tz)

    frozen = types.ModuleType("datetime")
    frozen.__dict__.update(vars(real_dt))
    frozen.datetime = _Frozen  # type: ignore[attr-defined]
    monkeypatch.setattr(signing, "_dt", frozen)
    maker, _, _ = generate_keypair(tmp_path / "keys", "maker")
    other, _, _ = generate_keypair(tmp_path / "keys", "other")
    bundle = _onnx_bundle(tmp_path / "bundle")
    rc, out, err = _uopsl(["sign", str(bundle), "--key", str(maker)], capsys)
    first = current_signature_id(bundle)
    assert rc == 0 and len(first) == 64 and f"signature id {first}" in out, out + err
    assert "replaces release" not in out + err
    rc, out, err = _uopsl(["sign", str(bundle), "--key", str(maker)], capsys)  # the same payload: the same id
    assert rc == 0 and current_signature_id(bundle) == first and "replaces release" not in out + err, out + err
    rc, out, err = _uopsl(["sign", str(bundle), "--key", str(other)], capsys)
    assert rc == 0 and current_signature_id(bundle) != first
    assert f"note: this replaces release {first}," in out, out + err


# == evaluate ========================================================================================================
SYNTH_CLASSES = ("normal", "dr", "dme", "amd")


def _checkpoint(root: Path, classes: tuple[str, ...] = SYNTH_CLASSES) -> Path:
    """A small random checkpoint with ``classes`` (read_meta is all the command reads before run_evaluate)."""
    from trainhelpers import classes_checkpoint

    return classes_checkpoint(root, classes)


@pytest.fixture(scope="module")
def ck4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose classes are four of the synthetic data's (normal, dr, dme, amd)."""
    return _checkpoint(tmp_path_factory.mktemp("ck4") / "ck")


@pytest.fixture(scope="module")
def synth_mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``uopsl synth`` folder with 6 fundus photographs and 3 OCT scans, site masks written."""
    from uopsl.train.synthetic import SynthConfig, make_dataset

    root = tmp_path_factory.mktemp("synth") / "syn"
    make_dataset(root, 6, 3, config=SynthConfig(size=64, seed=0), write_masks=True, progress=False)
    return root


def _table(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _fundus_counts(root: Path) -> Counter[str]:
    """Images per label among the fundus rows of the generator's table (labels ';'-joined), counted here."""
    return Counter(n for r in _table(root) if r["modality"] == "fundus" for n in r["labels"].split(";") if n)


def _record_evaluate(monkeypatch: pytest.MonkeyPatch, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replace ``run_evaluate`` by a recorder; it stops the run, or returns ``report``."""
    import uopsl.train.workflow as wf

    got: dict[str, Any] = {}

    def fake(ckpt: Path, items: list[Any], out: Path | None, n_boot: int = 1000, seed: int = 0,
             cache: Path | None = None, device: str = "auto", masks: Any = None, check: Any = None,
             data_counts: Any = None, **more: Any) -> dict[str, Any]:
        got.update(ckpt=ckpt, items=items, out=out, n_boot=n_boot, seed=seed, cache=cache, device=device,
                   masks=masks, check=check, data_counts=data_counts, **more)
        if report is None:
            raise _Stop
        return report

    monkeypatch.setattr(wf, "run_evaluate", fake)
    return got


def test_evaluate_passes_each_option_and_only_the_fundus_photographs(tmp_path: Path, synth_mixed: Path, ck4: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """V06, V07, V09-V12, V24: --n-boot, --seed and --device reach ``run_evaluate`` (mutants evaluated with 1000
    resamples, seed 0 or the auto device whatever was asked), the preprocessed-image cache goes under --out, and
    only the fundus photographs are evaluated: a mutant that took the OCT scans too scored them as photographs;
    one that counted their labels reported OCT-only labels (glaucoma here) as data the model lacks; one that
    kept their site masks handed over more masks than images (the run then stopped with an error)."""
    got = _record_evaluate(monkeypatch)
    ck, out = ck4, tmp_path / "ev"
    res = _invoke(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(out), "--n-boot", "7",
                   "--seed", "5", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    fundus = [r for r in _table(synth_mixed) if r["modality"] == "fundus"]
    assert (got["ckpt"], got["out"], got["n_boot"], got["seed"], got["device"]) == (ck, out, 7, 5, "cpu")
    assert got["cache"] == out / "cache"
    assert sorted(Path(it.path).name for it in got["items"]) == sorted(Path(r["path"]).name for r in fundus)
    assert got["data_counts"] == dict(_fundus_counts(synth_mixed))
    assert got["masks"] is not None and len(got["masks"]) == len(got["items"]) == len(fundus)


def test_evaluate_defaults_are_the_documented_ones(tmp_path: Path, synth_mixed: Path, ck4: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """V21, V22 (and V20): 1000 bootstrap resamples, seed 0 and the auto device (``--help``); ``--n-boot 0``
    (no intervals, a quick look) is allowed by IntRange(0), ``-1`` is a usage error."""
    got = _record_evaluate(monkeypatch)
    ck = ck4
    res = _invoke(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(tmp_path / "ev")])
    assert isinstance(res.exception, _Stop), res.output
    assert (got["n_boot"], got["seed"], got["device"]) == (1000, 0, "auto")
    res = _invoke(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(tmp_path / "ev"), "--n-boot", "0"])
    assert isinstance(res.exception, _Stop) and got["n_boot"] == 0
    res = _invoke(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(tmp_path / "ev"), "--n-boot", "-1"])
    assert res.exit_code == 2 and "--n-boot" in res.output


def test_evaluate_on_data_without_fundus_photographs_is_one_line(tmp_path: Path, synth_mixed: Path, ck4: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """V05: OCT scans only (``modality=oct``) are refused by name with what the data hold (3 oct); a mutant that
    let an empty item list through crashed on stacking no targets (not one line, not exit 2)."""
    got = _record_evaluate(monkeypatch)
    n_oct = sum(r["modality"] == "oct" for r in _table(synth_mixed))
    rc, _, err = _uopsl(["evaluate", str(ck4), "--data",
                         f"synthetic:{synth_mixed}:modality=oct", "--out", str(tmp_path / "ev")], capsys)
    assert rc == 2 and len(_errors(err)) == 1 and "Traceback" not in err, err
    assert f"holds no fundus photographs to evaluate ({n_oct} oct)" in err and not got


def test_evaluate_refusal_names_only_the_data_classes_with_photographs(tmp_path: Path, synth_mixed: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """V31: a refused evaluation lists "the data's" classes that have fundus photographs; a mutant listed every
    class of the reader's label space, glaucoma included, which only the OCT scans carry, so the user looked
    for glaucoma photographs that are not there."""
    ck = _checkpoint(tmp_path / "ck", ("normal", "retinal_detachment"))
    counts = _fundus_counts(synth_mixed)
    rc, _, err = _uopsl(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(tmp_path / "ev")], capsys)
    assert rc == 2 and len(_errors(err)) == 1, err
    order = [c for c in ("normal", "dr", "dme", "amd", "glaucoma") if counts.get(c)]  # the generator's class order
    assert "glaucoma" not in order
    assert f"the data's {', '.join(order)}; " in err, err


def test_the_check_after_unreadable_images_keeps_the_data_only_labels_and_warns_once(
        tmp_path: Path, synth_mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """V15, V16: the check ``run_evaluate`` calls on the readable images (unreadable ones may take a class
    away) refuses with the same account as the first, including the data's labels the model lacks (a mutant lost
    them: "amd (2 images) is not a class of the model" vanished from the refusal); and when the readable images
    still cover enough it stays quiet (the first check already warned; a mutant warned twice)."""
    from uopsl.train.evaluate import ClassCoverage

    got = _record_evaluate(monkeypatch)
    ck = _checkpoint(tmp_path / "ck", ("normal", "dr", "dme"))  # the data's amd is no class of this model
    amd = _fundus_counts(synth_mixed)["amd"]
    res = _invoke(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(tmp_path / "ev")])
    assert isinstance(res.exception, _Stop), res.output
    check = got["check"]
    said: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = said.append  # type: ignore[method-assign]  # (the CLI's logging set-up replaces caplog's)
    logger = logging.getLogger("uopsl.train.commands.evaluate")
    logger.addHandler(handler)
    try:
        check(ClassCoverage(("normal", "dr", "dme"), ("normal", "dr"), {"dme": "no positive image in the data"}, {}))
    finally:
        logger.removeHandler(handler)
    assert not said
    with pytest.raises(ConfigError) as err:
        check(ClassCoverage(("normal", "dr", "dme"), ("normal",), {"dr": "no positive image in the data",
                                                                   "dme": "no positive image in the data"}, {}))
    assert "covers 1 of 3 classes (normal)" in str(err.value)
    assert f"amd ({amd} images) is not a class of the model" in str(err.value)


def _report(**extra: Any) -> dict[str, Any]:
    return {"macro": {"auc": {"estimate": 0.8124, "low": 0.7, "high": 0.90049}}, **extra}


def test_evaluate_prints_the_coverage_and_figures_of_the_report(tmp_path: Path, synth_mixed: Path, ck4: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """V17, V18, V26, V30: the summary line gives the coverage eval.json records (after unreadable images were
    dropped: here 2 of 4, where the data first covered 4 of 4; a mutant repeated the first count) and three
    decimals; a report without a coverage record falls back on the first count (a mutant crashed on it)."""
    ck, out = ck4, tmp_path / "ev"
    cov = {"model_classes": list(SYNTH_CLASSES), "evaluated": ["normal", "amd"],
           "left_out": {"dr": "no positive image in the data", "dme": "no positive image in the data"}}
    _record_evaluate(monkeypatch, _report(class_coverage=cov))
    rc, printed, err = _uopsl(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(out)], capsys)
    assert rc == 0, err
    assert printed.splitlines()[0] == (f"macro AUC over 2 of 4 classes (normal, amd): 0.812 (95% CI 0.700-0.900); "
                                       f"report in {out}/eval.json")
    _record_evaluate(monkeypatch, _report())
    rc, printed, err = _uopsl(["evaluate", str(ck), "--data", str(synth_mixed), "--out", str(out)], capsys)
    assert rc == 0, err
    assert printed.startswith("macro AUC over 4 of 4 classes (normal, dr, dme, amd): 0.812 ")


def test_evaluate_prints_the_referral_call_and_the_site_concentration(tmp_path: Path, synth_mixed: Path, ck4: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """V25, V27 (V19): the referral line gives sensitivity then specificity as the report has them (a mutant
    swapped them: a referral rule that misses disease read as a sensitive one), "n/a" where a bound is missing;
    a report with site concentration figures gets its line (name, mean, then the two fixed-map priors)."""
    referral = {"applicable": True, "referable_classes": ["dr", "dme"], "n_positive": 5, "n_negative": 3,
                "sensitivity": {"estimate": 0.6, "low": 0.25, "high": 0.875},
                "specificity": {"estimate": 0.99951, "low": None, "high": None}}
    conc = {"dr": {"mean": 2.854, "class_prior": 3.3, "pooled_prior": 3.016}}
    _record_evaluate(monkeypatch, _report(referral=referral, site_concentration=conc))
    rc, printed, err = _uopsl(["evaluate", str(ck4), "--data", str(synth_mixed), "--out",
                               str(tmp_path / "ev")], capsys)
    assert rc == 0, err
    lines = printed.splitlines()
    assert lines[1] == ("referral (dr or dme at its threshold; 5 referable, 3 not): sensitivity 0.600 (0.250-0.875), "
                        "specificity 1.000")  # no interval drawn: none shown (session 47; was "(n/a-n/a)")
    assert lines[2].startswith("site concentration (") and lines[2].endswith(": dr 2.85 (3.30, 3.02)")


# == finetune ========================================================================================================
@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    """One small random model (normal, a, b) that the recorders hand back instead of building or loading one."""
    from trainhelpers import tiny_model

    return tiny_model(random_text=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 photographs in class folders (normal 7, a 7, b 6), no patient ids: split one by one."""
    return make_folder_dataset(tmp_path_factory.mktemp("ft") / "photos", {"normal": 7, "a": 7, "b": 6})


def _record_finetune(monkeypatch: pytest.MonkeyPatch, tiny: tuple[Any, Any],
                     returns: Any = None) -> dict[str, Any]:
    """Replace ``new_model``, ``from_checkpoint`` and ``run_finetune`` by recorders; ``run_finetune`` stops the
    run, or returns ``returns(meta)`` as the fine-tuned (model, meta)."""
    import uopsl.train.workflow as wf

    got: dict[str, Any] = {}

    def new_model(classes: Any, **kw: Any) -> tuple[Any, Any]:
        got["new_model"] = {"classes": tuple(classes), **kw}
        return tiny

    def from_checkpoint(ckpt: Path, classes: Any = None, variant: Any = None, classes_file: Any = None,
                        text_model: Any = None) -> tuple[Any, Any]:
        got["from_checkpoint"] = {"ckpt": ckpt, "classes": tuple(classes or ()), "variant": variant,
                                  "classes_file": classes_file, "text_model": text_model}
        return tiny

    def run_finetune(model: Any, meta: Any, train_items: Any, val_items: Any, cfg: Any, out: Path,
                     cache: Any = None, target_sensitivity: float = 0.9, select: str = "auc", identity: Any = None,
                     seen_before: Any = (), learnt_before: Any = None) -> tuple[Any, Any]:
        got.update(meta=meta, train=list(train_items), val=list(val_items or ()), cfg=cfg, out=out, cache=cache,
                   target_sensitivity=target_sensitivity)
        if returns is None:
            raise _Stop
        return model, returns(meta)

    monkeypatch.setattr(wf, "new_model", new_model)
    monkeypatch.setattr(wf, "from_checkpoint", from_checkpoint)
    monkeypatch.setattr(wf, "run_finetune", run_finetune)
    return got


def test_finetune_passes_every_option_on(tmp_path: Path, photos: Path, tiny: tuple[Any, Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """F12-F15, F25-F29, F33, F34: each option of a fresh ``uopsl finetune`` must reach the model it builds and
    the training run. Mutants dropped --freeze-sites, --site-loss, --site-guide or --seed from the training
    settings, --variant, --size, --text-model, --classes-file or --seed from the new model, --cache or
    --target-sensitivity from the run: each trained something other than what the user asked for, without a
    word."""
    got = _record_finetune(monkeypatch, tiny)
    out, cache, cf = tmp_path / "ft", tmp_path / "cache", tmp_path / "classes.toml"
    cf.write_text('[[classes]]\nname = "a"\nphrases = ["a yellow spot"]\n', encoding="utf-8")
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--out", str(out), "--freeze-sites", "--site-loss", "0.5",
                   "--site-guide", "0.25", "--seed", "3", "--target-sensitivity", "0.8", "--cache", str(cache),
                   "--variant", "p_only", "--backbone", "resnet18", "--init", "random", "--size", "96",
                   "--text-model", "encoders/minilm", "--classes-file", str(cf), "--epochs", "2", "--batch-size", "4",
                   "--lr", "0.01", "--lr-encoder", "0.002", "--no-augment", "--save-every", "7",
                   "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    cfg = got["cfg"]
    assert (cfg.freeze_sites, cfg.w_site_finetune, cfg.w_site_guide, cfg.seed) == (True, 0.5, 0.25, 3)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_encoder, cfg.freeze_encoder, cfg.augment, cfg.save_every,
            cfg.device) == (2, 4, 0.01, 0.002, False, False, 7, "cpu")
    nm = got["new_model"]
    assert (nm["classes"], nm["variant"], nm["backbone"], nm["init"], nm["size"], nm["text_model"],
            nm["classes_file"], nm["seed"]) == (("normal", "a", "b"), "p_only", "resnet18", "random", 96,
                                                "encoders/minilm", cf, 3)
    assert (got["out"], got["cache"], got["target_sensitivity"]) == (out, cache, 0.8)
    # --freeze-encoder on its own (with --lr-encoder it is refused: the rate would be unused, session 58)
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--out", str(tmp_path / "ft2"), "--backbone", "resnet18",
                   "--init", "random", "--size", "96", "--freeze-encoder", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert got["cfg"].freeze_encoder is True


def test_finetune_defaults_are_the_documented_ones(tmp_path: Path, photos: Path, tiny: tuple[Any, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """F24, F37, F39, F41 (and the other defaults): target sensitivity 0.9, the site guide on at weight 1 and
    the site loss off (TrainConfig's own documented defaults), 320 px, the uopsl variant, the packaged sentence
    encoder, seed 0, the cache in the user cache folder; and ``--init`` left at imagenet becomes random for a backbone without
    offline weights (a mutant passed "imagenet" on, and the checkpoint claimed weights it never had)."""
    from uopsl.train.text import DEFAULT_MODEL

    got = _record_finetune(monkeypatch, tiny)
    out = tmp_path / "ft"
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--out", str(out), "--backbone", "resnet18",
                   "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    cfg, nm = got["cfg"], got["new_model"]
    assert (cfg.freeze_sites, cfg.w_site_finetune, cfg.w_site_guide, cfg.seed) == (False, 0.0, 1.0, 0)
    assert (nm["variant"], nm["init"], nm["size"], nm["text_model"], nm["classes_file"], nm["seed"]) == \
        ("uopsl", "random", 320, DEFAULT_MODEL, None, 0)
    # Not under --out since session 58: the cache is a copy of every photograph and a checkpoint is shared whole.
    assert (got["cache"], got["target_sensitivity"]) == (user_cache_dir() / "images", 0.9)


@pytest.mark.parametrize("args, option", [
    (["--target-sensitivity", "0.49"], "--target-sensitivity"),
    (["--site-loss", "-0.1"], "--site-loss"),
    (["--shots", "0"], "--shots"),
    (["--size", "63"], "--size"),
])
def test_finetune_refuses_values_outside_the_documented_ranges(tmp_path: Path, photos: Path, args: list[str],
                                                               option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """F38, F40, F42: an operating point below 50 % sensitivity, a negative site-loss weight, zero shots or a
    63 px input are usage errors (exit 2) before any data are read; mutants widened the ranges."""
    rc, _, err = _uopsl(["finetune", "--data", f"folder:{photos}", "--out", str(tmp_path / "ft"), *args], capsys)
    assert rc == 2 and option in err and not (tmp_path / "ft").exists(), err


def test_finetunes_validation_part_is_15_percent_drawn_with_the_seed(tmp_path: Path, photos: Path,
                                                                     tiny: tuple[Any, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """F04-F06: without --val, 15 % of --data's patients validate (``--help``), drawn with --seed, and the
    model trains on the rest: mutants trained on the 15 % and validated on the 85 %, swapped the two parts, or
    drew the same part whatever the seed."""
    import uopsl.train.data as datamod

    calls: list[dict[str, Any]] = []
    real = datamod.patient_split

    def spy(samples: Any, fractions: Any = (0.7, 0.15, 0.15), seed: int = 0, links: Any = None) -> Any:
        parts = real(samples, fractions=fractions, seed=seed, links=links)
        calls.append({"samples": list(samples), "fractions": tuple(fractions), "seed": seed, "parts": parts})
        return parts

    monkeypatch.setattr(datamod, "patient_split", spy)
    got = _record_finetune(monkeypatch, tiny)
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--out", str(tmp_path / "ft"), "--seed", "4",
                   "--backbone", "resnet18", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output
    (call,) = calls
    assert call["fractions"] == (0.85, 0.15, 0.0) and call["seed"] == 4
    parts, samples = call["parts"], call["samples"]
    assert [it.path for it in got["train"]] == [samples[i].path for i in parts.train]
    assert [it.path for it in got["val"]] == [samples[i].path for i in parts.val]
    assert 0 < len(got["val"]) < len(got["train"])


def test_finetune_shots_take_n_per_class_with_the_seed(tmp_path: Path, photos: Path, tiny: tuple[Any, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """F08, F09: ``--shots 2`` trains on two labelled images per class (here 3 classes: 6 images), drawn with
    --seed; mutants ignored the option (a full-data run reported as a few-shot one) or drew with seed 0."""
    import uopsl.train.data as datamod

    seeds: list[tuple[int, int]] = []
    real = datamod.take_shots

    def spy(samples: Any, n_per_class: int, seed: int = 0, classes: Any = None) -> Any:
        seeds.append((n_per_class, seed))
        return real(samples, n_per_class, seed=seed, classes=classes)

    monkeypatch.setattr(datamod, "take_shots", spy)
    got = _record_finetune(monkeypatch, tiny)
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--out", str(tmp_path / "ft"), "--shots", "2",
                   "--seed", "5", "--backbone", "resnet18", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output
    assert seeds == [(2, 5)]
    per_class = Counter(Path(it.path).parent.name for it in got["train"])
    assert per_class == {"normal": 2, "a": 2, "b": 2}


def test_finetune_splits_and_trains_on_the_fundus_photographs_only(tmp_path: Path, synth_mixed: Path,
                                                                   tiny: tuple[Any, Any],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """F02, F10: stage 2 reads fundus photographs; the validation split is drawn among them alone (a mutant drew
    it over the OCT scans too, so the 15 % share and the patients on each side were those of another set). A
    class of the data's label space that no fundus photograph has (glaucoma: OCT only here), not named by the
    user, is warned about; a mutant treated it as named and refused the run."""
    import uopsl.train.data as datamod

    seen: list[list[str]] = []
    real = datamod.patient_split

    def spy(samples: Any, fractions: Any = (0.7, 0.15, 0.15), seed: int = 0, links: Any = None) -> Any:
        seen.append([s.modality for s in samples])
        return real(samples, fractions=fractions, seed=seed, links=links)

    monkeypatch.setattr(datamod, "patient_split", spy)
    got = _record_finetune(monkeypatch, tiny)
    rc, _, err = _uopsl(["finetune", "--data", str(synth_mixed), "--out", str(tmp_path / "ft"), "--backbone",
                         "resnet18", "--device", "cpu"], capsys)
    assert "unexpected _Stop" in err, err  # the recorder was reached: nothing refused the run
    n_fundus = sum(r["modality"] == "fundus" for r in _table(synth_mixed))
    assert seen == [["fundus"] * n_fundus]
    assert "glaucoma" in got["new_model"]["classes"]
    assert "is labelled glaucoma: it is trained from the description and negatives only" in err, err


def test_finetune_classes_and_val_are_used(tmp_path: Path, photos: Path, tiny: tuple[Any, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """F11, F46-F48: ``--classes`` names the model's classes (a mutant used every class of the data), ``--val``
    is the validation set (a mutant split --data instead), a named class only the validation images have is
    trained from its description with a warning (a mutant refused it), and finetune.config.json records the
    validation set the run used."""
    import json

    got = _record_finetune(monkeypatch, tiny)
    train_dir = make_folder_dataset(tmp_path / "train", {"normal": 3, "a": 3, "b": 2})
    val_dir = make_folder_dataset(tmp_path / "val", {"normal": 2, "a": 1, "retinal_detachment": 2})
    out = tmp_path / "ft"
    res = _invoke(["finetune", "--data", f"folder:{train_dir}", "--val", f"folder:{val_dir}", "--out", str(out),
                   "--classes", "normal,a,retinal_detachment", "--backbone", "resnet18", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert got["new_model"]["classes"] == ("normal", "a", "retinal_detachment")
    assert len(got["train"]) == 8 and len(got["val"]) == 5
    assert all(Path(it.path).is_relative_to(val_dir) for it in got["val"])
    config = json.loads((out / "finetune.config.json").read_text(encoding="utf-8"))
    assert (config["val"]["root"], config["val"]["n_images"]) == (str(val_dir), 5)
    assert (config["data"]["root"], config["data"]["n_images"]) == (str(train_dir), 8)


def test_finetune_refuses_a_device_that_is_not_there_before_writing(tmp_path: Path, photos: Path,
                                                                     tiny: tuple[Any, Any],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """F16: a device name that is no device is one line, exit 2, before --out is made; a mutant without the early
    check created the folder and its finetune.config.json first (and failed later, leaving them behind)."""
    got = _record_finetune(monkeypatch, tiny)
    rc, _, err = _uopsl(["finetune", "--data", f"folder:{photos}", "--out", str(tmp_path / "ft"), "--backbone",
                         "resnet18", "--device", "gpu0"], capsys)
    assert rc == 2 and len(_errors(err)) == 1 and "--device gpu0" in err, err
    assert not (tmp_path / "ft").exists() and "cfg" not in got


def test_finetune_from_passes_its_options_to_the_checkpoint_loader(tmp_path: Path, photos: Path,
                                                                   tiny: tuple[Any, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """F17-F20, F22, F23, F49: with --from, --variant, --classes-file and --text-model go to ``from_checkpoint``
    (mutants dropped them: a re-targeted class file ignored, a mismatched variant or encoder not checked);
    --size and --backbone equal to the checkpoint's are accepted (mutants refused any given value); the model's
    data fingerprint becomes this run's data (not the pre-training data); the config records where it started."""
    import json

    got = _record_finetune(monkeypatch, tiny)
    ck, cf, out = tmp_path / "pre", tmp_path / "classes.toml", tmp_path / "ft"
    ck.mkdir()
    cf.write_text('[[classes]]\nname = "a"\n', encoding="utf-8")
    size, backbone = str(tiny[1].preprocess.size), tiny[1].model.backbone  # 64, resnet18
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--from", str(ck), "--out", str(out), "--variant",
                   "uopsl", "--classes-file", str(cf), "--text-model", "encoders/minilm", "--size", size,
                   "--backbone", backbone, "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert got["from_checkpoint"] == {"ckpt": ck, "classes": ("normal", "a", "b"), "variant": "uopsl",
                                      "classes_file": cf, "text_model": "encoders/minilm"}
    assert "new_model" not in got
    meta = got["meta"]
    assert meta.data_fingerprint != tiny[1].data_fingerprint
    assert meta.data_fingerprint == meta.training_data[-2]["fingerprint"]  # the finetune record (then validation)
    assert json.loads((out / "finetune.config.json").read_text(encoding="utf-8"))["from"] == str(ck)


def test_finetune_config_records_the_shots(tmp_path: Path, photos: Path, tiny: tuple[Any, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """F32: finetune.config.json records ``--shots`` (a few-shot run must say so; a mutant wrote null)."""
    import json

    _record_finetune(monkeypatch, tiny)
    res = _invoke(["finetune", "--data", f"folder:{photos}", "--out", str(tmp_path / "ft"), "--shots", "3",
                   "--backbone", "resnet18", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output
    assert json.loads((tmp_path / "ft" / "finetune.config.json").read_text(encoding="utf-8"))["shots"] == 3


def test_finetune_prints_each_threshold_with_what_it_achieved(tmp_path: Path, photos: Path, tiny: tuple[Any, Any],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """F43-F45, F51, F52: the closing lines give each class's threshold in class order, and per class what it
    achieved on the validation images (Youden's points too), 0.000 printed as a number (a sensitivity of zero is
    the alarm, a mutant printed "n/a"), the "not a useful" note kept and other notes not appended."""
    ops = [{"name": "normal", "method": "youden", "n_positive": 3, "n_negative": 4, "sensitivity": 0.0,
            "specificity": 1.0, "note": "not a useful threshold: nothing is found"},
           {"name": "a", "method": "target_sensitivity", "n_positive": 2, "n_negative": 5, "sensitivity": 0.9,
            "specificity": None, "note": "chosen for 90 % sensitivity"},
           {"name": "b", "method": "default", "note": "no validation images"}]
    _record_finetune(monkeypatch, tiny, returns=lambda meta: replace(meta, thresholds=(0.5, 0.25, 0.75),
                                                                       metrics={"operating_points": ops}))
    out = tmp_path / "ft"
    rc, printed, err = _uopsl(["finetune", "--data", f"folder:{photos}", "--out", str(out), "--backbone", "resnet18",
                               "--device", "cpu"], capsys)
    assert rc == 0, err
    assert printed.splitlines() == [
        f"fine-tuned model written to {out} (thresholds: normal 0.500, a 0.250, b 0.750)",
        "  normal: youden, on 3 + 4 validation images sensitivity 0.000, specificity 1.000 "
        "(not a useful threshold: nothing is found)",
        "  a: target sensitivity, on 2 + 5 validation images sensitivity 0.900, specificity n/a",
        "  b: no validation images",
    ]
