"""Mutation audit (session 49) of the bad-input fixes of db83029 and 4a7b5e2.

Audited: ``runtime/model_folders.py`` (folder_kind, enclosing_model_folders,
check_output_outside_model_folders), ``runtime/parallelism.py`` (usable_cores, parallelism_limit,
check_parallelism), ``runtime/clikit.py`` (ParallelCount, FiniteFloatRange, FiniteFloat, _finite, the
``except SystemExit`` branch of _main_entry, _INTERRUPTED), ``runtime/fsio.py`` (check_output_file),
``runtime/errors.py`` (command_word) and ``runtime/bench.py`` (the names and failures of _time_preprocess, the
duplicate-batch check of BenchConfig). 62 hand-written single-point mutants were run, each on a scratch copy
of the package, against test_cli_bad_input_s49, test_bench_figures, test_runtime_review_fixes,
test_review_fixes_s30, test_screen_robustness, test_cli_messages, test_mutation_audit_api_watch_bench_s38 and
test_mutation_audit_days_clikit_pool_s41.

Caught by those tests (33): M02 (checkpoint fields and-ed to or), M12 (the path itself not examined), M15/M16
(innermost/outermost swapped), M17 (is/is inside), M18 (bundle/checkpoint reasons swapped), M19 (file
suggestion beside the innermost folder), M20 (no early return); P04 (max->min), P05 (< 0), P06 (>= limit),
P07 (bool accepted); C01 (help range), C02 (option named twice), C05 (isnan only), C07 (FiniteFloat without
the check), C09/C10/C13 (SystemExit: condition flipped, return 1, stdout not remembered), C11 (the command's
own Ctrl-C words dropped: test_screen_robustness); F01 (folder not refused), F02/F04 (nearest existing
folder), F05 (probe not removed), F06 (errno in the message), F08 (no example name); E01 (empty word), E03
(nt/posix flipped), E04 (double quote not escaped); B03 (names[0]), B06 (count of timed images), B07
(duplicates check inverted), B08 (run_bench passed no names).

Equivalent (4): M14 (``folder.is_dir()`` dropped: folder_kind of a file or a missing path reads nothing and
says None), C03 (ParallelCount's ``min=0``: convert and _describe_range are its own, min is never read),
C04 (``int(number)`` -> ``number``: click.INT.convert already returns an int), F03 (the walk's stop at the
root dropped: the root always exists, so the loop ends there anyway).

Survived and killed here (25): M01, M03 -> test_a_checkpoint_needs_its_weights_a_model_and_a_stage;
M04 (bool format_version), M05, M06, M07 (files, preprocess, classes not required) ->
test_a_bundle_needs_every_top_level_field_of_uopsl_s_manifest; M08 (>=), M09 (reads only the limit) ->
test_the_record_size_limit_is_exact; M10 (non-object JSON), M11 (RecursionError uncaught) ->
test_records_that_are_no_json_object_are_no_model_folder; M13 (links not resolved) ->
test_links_are_resolved_to_the_real_model_folder; P01 (affinity ignored), P02 (AttributeError not caught),
P03 (None cores) -> test_usable_cores_follow_the_affinity_mask_then_the_core_count; P08 (cores > total), P09
("1 CPU cores") -> test_the_limit_message_says_what_limits_the_count; C06 (range hint "1.5"), C08
(FiniteFloat's example) -> test_a_non_finite_number_is_answered_with_the_option_s_range; C12 (an unwrapped
KeyboardInterrupt without _INTERRUPTED) -> test_an_interrupt_click_did_not_wrap_says_what_to_do; F07 (probe
descriptor left open) -> test_the_write_probe_closes_its_file; E02 (``windows=None`` read as False) ->
test_command_word_quotes_for_this_machine_s_shell; B01 (four failures named), B02 (images numbered from 0),
B05 (no "...") -> test_bench_names_at_most_three_failures_then_dots; B04 ("..." after a complete list) ->
test_bench_adds_no_dots_when_every_failure_is_named.

No defect was found in the shipped code. Expected values are written out by hand; no model is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from uopsl.runtime import bench, errors, model_folders, parallelism
from uopsl.runtime import cli as screen_cli
from uopsl.runtime.clikit import FINITE_FLOAT, FiniteFloatRange, main_entry
from uopsl.runtime.errors import ConfigError, UopslError, command_word
from uopsl.runtime.fsio import check_output_file
from uopsl.runtime.model_folders import check_output_outside_model_folders, enclosing_model_folders, folder_kind
from uopsl.runtime.parallelism import check_parallelism, usable_cores

# The top-level fields of the manifest.json `uopsl export` writes (values trimmed; folder_kind reads the types).
MANIFEST = {"format_version": 3, "files": [{"path": "model.onnx", "sha256": "0" * 64}],
            "preprocess": {"size": 64}, "classes": [{"name": "normal"}], "head": "sigmoid"}
# The checkpoint.json a training stage writes beside model.safetensors (trimmed the same way).
CHECKPOINT = {"model": {"variant": "uopsl"}, "stage": "pretrain"}


def _folder(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(content)
    return root


def _bundle(root: Path, manifest: object = None) -> Path:
    return _folder(root, {"manifest.json": json.dumps(MANIFEST if manifest is None else manifest)})


def _checkpoint(root: Path, meta: object = None, weights: bool = True) -> Path:
    _folder(root, {"checkpoint.json": json.dumps(CHECKPOINT if meta is None else meta)})
    if weights:
        (root / "model.safetensors").write_bytes(b"\0" * 16)
    return root


# -- model folders -------------------------------------------------------------------------------------
def test_a_checkpoint_needs_its_weights_a_model_and_a_stage(tmp_path: Path) -> None:
    """M01 (weights file not required), M03 (stage not required): a folder holding only a checkpoint.json (a
    copy of the record, or another program's) was taken for a checkpoint and refused as an output folder."""
    assert folder_kind(_checkpoint(tmp_path / "ok")) == "checkpoint"
    assert folder_kind(_checkpoint(tmp_path / "no-weights", weights=False)) is None
    assert folder_kind(_checkpoint(tmp_path / "no-stage", {"model": {"variant": "uopsl"}})) is None
    assert folder_kind(_checkpoint(tmp_path / "stage-not-text", {"model": {}, "stage": 2})) is None
    assert folder_kind(_checkpoint(tmp_path / "no-model", {"stage": "pretrain"})) is None
    check_output_outside_model_folders(tmp_path / "no-weights" / "results")  # accepted: no model folder


@pytest.mark.parametrize("change", ["format_version=true", "no files", "no preprocess", "no classes",
                                    "files not a list", "preprocess not an object"])
def test_a_bundle_needs_every_top_level_field_of_uopsl_s_manifest(change: str, tmp_path: Path) -> None:
    """M04 (a boolean format_version), M05, M06, M07 (one of files, preprocess, classes not required): another
    program's manifest.json sharing some of uopsl's field names made its folder a "bundle"."""
    assert folder_kind(_bundle(tmp_path / "real")) == "bundle"
    m = dict(MANIFEST)
    if change == "format_version=true":
        m["format_version"] = True
    elif change.startswith("no "):
        del m[change[3:]]
    elif change == "files not a list":
        m["files"] = {"model.onnx": "0" * 64}
    else:
        m["preprocess"] = [64]
    assert folder_kind(_bundle(tmp_path / "other", m)) is None
    assert enclosing_model_folders(tmp_path / "other" / "results") == []


def test_the_record_size_limit_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """M08 (a record of exactly the limit refused), M09 (only the first limit bytes read, so a record above the
    limit was parsed when its excess was blank)."""
    text = json.dumps(MANIFEST)
    monkeypatch.setattr(model_folders, "_MAX_RECORD_BYTES", len(text))
    assert folder_kind(_bundle(tmp_path / "at-limit")) == "bundle"
    _folder(tmp_path / "over", {"manifest.json": text + " "})  # one byte over, valid JSON all the same
    assert folder_kind(tmp_path / "over") is None


@pytest.mark.parametrize("content", ["[1, 2]", '"a bundle"', "[" * 100_000], ids=["array", "string", "deep"])
def test_records_that_are_no_json_object_are_no_model_folder(content: str, tmp_path: Path) -> None:
    """M10 (a JSON array or string returned as the record: AttributeError, "a bug"), M11 (deeply nested JSON
    let its RecursionError out): the output check crashed instead of accepting the folder."""
    _folder(tmp_path / "b", {"manifest.json": content})
    _folder(tmp_path / "c", {"checkpoint.json": content, "model.safetensors": b"\0"})
    for folder in (tmp_path / "b", tmp_path / "c"):
        assert folder_kind(folder) is None
        check_output_outside_model_folders(folder / "results")  # accepted


def test_links_are_resolved_to_the_real_model_folder(tmp_path: Path) -> None:
    """M13 (the path made absolute, links not resolved): the folder was reported by its link's name, and
    the suggestion was a place beside the link, not beside the bundle."""
    real = _bundle(tmp_path / "models" / "bundle")
    link = tmp_path / "elsewhere" / "link"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    assert enclosing_model_folders(link / "out") == [("bundle", real.resolve())]
    with pytest.raises(ConfigError) as info:
        check_output_outside_model_folders(link / "out")
    assert f"is inside the bundle folder {real.resolve()};" in str(info.value)
    assert str(info.value).endswith(f"e.g. --out {real.resolve().parent / 'bundle-results'}")


# -- thread and worker counts --------------------------------------------------------------------------
def test_usable_cores_follow_the_affinity_mask_then_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """P01 (the machine's cores counted, not the process's affinity), P02 (no sched_getaffinity, as on
    Windows and macOS: AttributeError), P03 (no core count known: None instead of 1)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cores() == 16
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1

    def refused(pid: int) -> set[int]:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_getaffinity", refused, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert usable_cores() == 4


@pytest.mark.parametrize("cores, total, has", [
    (1, 1, "this machine has 1 CPU core"),
    (8, 8, "this machine has 8 CPU cores"),
    (2, 8, "this process may run on 2 of the machine's 8 CPU cores"),
])
def test_the_limit_message_says_what_limits_the_count(cores: int, total: int, has: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """P08 (all cores usable read as an affinity limit), P09 ("1 CPU cores")."""
    monkeypatch.setattr(parallelism, "usable_cores", lambda: cores)
    monkeypatch.setattr(os, "cpu_count", lambda: total)
    with pytest.raises(ConfigError) as info:
        check_parallelism("--threads", 65)
    assert str(info.value) == (f"--threads 65 is more than can be used here: {has}; give at most 64 (more than the "
                               "cores only slows the run), or leave it out for the default")


# -- NaN and infinity on the command line --------------------------------------------------------------
def _param(command: click.Command, name: str) -> click.Parameter:
    return next(p for p in command.params if p.name == name)


def test_a_non_finite_number_is_answered_with_the_option_s_range() -> None:
    """C06 (every range told "give one such as 1.5", outside --timeout's and --poll's ranges alike), C08
    (--sqnr-threshold's example changed): the hint must be a value the option accepts."""
    watch = screen_cli.cli.commands["watch"]
    for name, value, where in (("timeout_s", "nan", "a number in the range x>=0"),
                               ("poll_s", "inf", "a number in the range x>=0.01")):
        with pytest.raises(click.BadParameter) as info:
            _param(watch, name).type.convert(value, None, None)
        assert info.value.message == f"{value!r} is not a finite number; give {where}"
    with pytest.raises(click.BadParameter) as info:
        FiniteFloatRange(0.0, 1.0, min_open=True).convert("nan", None, None)  # infinities: out of range
    assert info.value.message == "'nan' is not a finite number; give a number in the range 0.0<x<=1.0"
    with pytest.raises(click.BadParameter) as info:
        FINITE_FLOAT.convert("inf", None, None)
    assert info.value.message == "'inf' is not a finite number; give a number such as 30"
    assert FINITE_FLOAT.convert("-12.5", None, None) == -12.5  # unbounded: negative thresholds are numbers


# -- Ctrl-C --------------------------------------------------------------------------------------------
def test_an_interrupt_click_did_not_wrap_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    """C12: a KeyboardInterrupt reaching main_entry unwrapped (not as click's Abort) printed a bare word."""
    class Interrupted(click.Group):
        def main(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            raise KeyboardInterrupt

    assert main_entry(Interrupted(), ["x"], prog_name="uopsl") == 130
    assert capsys.readouterr().err.strip() == ("interrupted (Ctrl-C) before the command finished: run the same "
                                              "command again to finish it")


# -- output files, quoting -----------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc")
def test_the_write_probe_closes_its_file(tmp_path: Path) -> None:
    """F07: the probe file's descriptor was left open, one per check (and on Windows the probe could not be
    deleted while open)."""
    before = len(os.listdir("/proc/self/fd"))
    for k in range(5):
        check_output_file(tmp_path / f"r{k}.json", "--json")
    assert len(os.listdir("/proc/self/fd")) == before
    assert list(tmp_path.iterdir()) == []


def test_command_word_quotes_for_this_machine_s_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """E02: ``windows=None`` must mean this machine; read as False, Windows users were offered single quotes,
    which cmd keeps as part of the path."""
    monkeypatch.setattr(errors, "os", SimpleNamespace(name="nt"))
    assert command_word(r"C:\My Photos\out") == '"C:\\My Photos\\out"'
    monkeypatch.setattr(errors, "os", SimpleNamespace(name="posix"))
    assert command_word("/data/my photos") == "'/data/my photos'"


# -- bench: the photographs that did not preprocess ----------------------------------------------------
def _failing_preprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def preprocess(data: bytes, cfg: object) -> object:
        raise UopslError(f"not an image file ({data.decode()})")

    monkeypatch.setattr(bench, "preprocess", preprocess)


def test_bench_names_at_most_three_failures_then_dots(monkeypatch: pytest.MonkeyPatch) -> None:
    """B01 (four named), B02 (numbered from 0), B05 (no "..." for the ones left unnamed)."""
    _failing_preprocess(monkeypatch)
    with pytest.raises(ConfigError) as info:
        bench.time_preprocess([b"a", b"b", b"c", b"d", b"e"], SimpleNamespace(preprocess=None), warmup=0)
    assert str(info.value) == ("none of the 5 benchmark image(s) could be preprocessed (image 1: not an image file "
                               "(a); image 2: not an image file (b); image 3: not an image file (c); ...); give "
                               "--images fundus photographs, or leave it out to time synthetic ones")


def test_bench_adds_no_dots_when_every_failure_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """B04: "; ..." after a list that already names every photograph."""
    _failing_preprocess(monkeypatch)
    with pytest.raises(ConfigError) as info:
        bench.time_preprocess([b"a", b"b"], SimpleNamespace(preprocess=None), warmup=1, names=["x.jpg", "y.png"])
    assert str(info.value) == ("none of the 2 benchmark image(s) could be preprocessed (x.jpg: not an image file "
                               "(a); y.png: not an image file (b)); give --images fundus photographs, or leave it "
                               "out to time synthetic ones")
