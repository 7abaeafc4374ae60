"""Messages of the training CLI that a fresh-eyes walkthrough found wrong: what a user reads must be true."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainhelpers import tiny_model, tiny_synth

from uopsl.runtime.clikit import main_entry
from uopsl.train.checkpoint import save_model
from uopsl.train.cli import cli


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_synth(tmp_path_factory.mktemp("synth"), 8, 4)


def test_finetune_refuses_a_size_the_checkpoint_does_not_have(synth: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()  # 64 px
    save_model(tmp_path / "pre", model, meta)
    rc = main_entry(cli, ["finetune", "--data", str(synth), "--from", str(tmp_path / "pre"), "--size", "96",
                          "--out", str(tmp_path / "ft"), "--epochs", "1", "--device", "cpu"], prog_name="uopsl")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert "--size 96 differs from" in errors[0] and "input size 64" in errors[0]
    assert "8 fundus, 4 oct" in err  # the pools are counted apart (it said "12 images")
    assert not (tmp_path / "ft" / "model.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet50"], "--backbone resnet50 differs from"),
    (["--init", "random"], "--init random with --from: the weights come from"),
])
def test_finetune_refuses_options_a_checkpoint_would_override(synth: Path, tmp_path: Path, args: list[str],
                                                              message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With --from, the checkpoint's encoder and weights are used: --backbone or --init were silently ignored."""
    model, meta = tiny_model()
    save_model(tmp_path / "pre", model, meta)
    rc = main_entry(cli, ["finetune", "--data", str(synth), "--from", str(tmp_path / "pre"), *args,
                          "--out", str(tmp_path / "ft"), "--epochs", "1", "--device", "cpu"], prog_name="uopsl")
    err = capsys.readouterr().err
    assert rc == 2 and message in err and not (tmp_path / "ft" / "model.safetensors").exists()


def test_zero_shot_says_when_a_class_has_no_images(synth: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    names = "normal,dr,rp"  # built-in descriptions; the synthetic pool has no retinitis pigmentosa
    rc = main_entry(cli, ["zero-shot", "--keep-ungradable",
                          str(tmp_path / "ck"), "--data", f"synthetic:{synth}", "--classes", names,
                          "--out", str(tmp_path / "zs")], prog_name="uopsl")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "rp: AUC undefined" in out and "None" not in out


def test_export_over_an_existing_folder_stops_before_exporting(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    (tmp_path / "bundle").mkdir()
    rc = main_entry(cli, ["export", str(tmp_path / "ck"), "--out", str(tmp_path / "bundle")], prog_name="uopsl")
    err = capsys.readouterr().err
    assert rc == 2 and "already exists; pass --force" in err and "overwrite=True" not in err
    assert not any((tmp_path / "bundle").iterdir()) and not list(tmp_path.glob("*.export.json"))


def test_pretrain_uopsl_without_oct_stops_before_loading_anything(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc = main_entry(cli, ["pretrain", "--fundus", str(tmp_path / "not-read"), "--out", str(tmp_path / "pre")],
                    prog_name="uopsl")
    err = capsys.readouterr().err
    assert rc == 2 and "pass --oct" in err and "not-read" not in err  # the fundus pool was not even opened


def test_cli_choices_match_the_runtime_names() -> None:
    """The CLI spells its choices out (importing backends and the pipeline would slow ``--help``), so a
    backend, precision or worker pool added to the runtime must be added there too."""
    from uopsl.runtime import cli
    from uopsl.runtime.backends import BACKEND_NAMES, PRECISIONS
    from uopsl.runtime.pipeline import WORKER_POOLS

    assert cli.BACKEND_CHOICES == ["auto", *BACKEND_NAMES]
    assert cli.PRECISION_CHOICES == list(PRECISIONS)
    assert cli.WORKER_POOL_CHOICES == list(WORKER_POOLS)
    for command in ("run", "bench"):  # bench's --backend also takes lists and 'all': a string it parses itself
        options = {p.name: p for p in cli.cli.commands[command].params}
        assert list(options["worker_pool"].type.choices) == cli.WORKER_POOL_CHOICES
    assert list({p.name: p for p in cli.cli.commands["run"].params}["backend"].type.choices) == cli.BACKEND_CHOICES


def test_validate_help_spells_every_default_gate() -> None:
    """``uopsl validate --help`` shows the default gates; a gate added to ParityGates must appear there."""
    from click.testing import CliRunner

    from uopsl.export.parity_metrics import ParityGates, parse_gates
    from uopsl.train.commands.validate import DEFAULT_GATES_TEXT

    assert parse_gates(DEFAULT_GATES_TEXT) == ParityGates()
    named = {item.split("=")[0] for item in DEFAULT_GATES_TEXT.split(",")}
    assert len(named) == len([v for v in ParityGates().to_dict().values() if v is not None])
    out = CliRunner().invoke(cli, ["validate", "--help"], terminal_width=400).output
    assert DEFAULT_GATES_TEXT in " ".join(out.split())
    # --judge-on spells the choices judge() takes (the command imports parity_metrics only when it runs).
    from uopsl.export.parity_metrics import JUDGE_ON
    from uopsl.train.commands.validate import command

    (option,) = [p for p in command.params if p.name == "judge_on"]
    assert tuple(option.type.choices) == JUDGE_ON and option.default == JUDGE_ON[0]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_rank_0_speaks_for_the_run_and_the_others_only_warn(
        rank: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every rank runs the same command: each printed every line, so two processes showed each line twice."""
    import logging

    from uopsl.runtime.clikit import setup_logging

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    try:
        setup_logging(0)
        logging.getLogger("uopsl.train.stages").info("finetune: 24 training images")
        logging.getLogger("uopsl.train.stages").warning("a warning")
        err = capsys.readouterr().err
        assert f"[rank {rank}] WARNING uopsl.train.stages: a warning" in err
        assert ("finetune: 24 training images" in err) is (rank == "0")
        setup_logging(2)  # -vv: every rank's lines, for a distributed problem
        logging.getLogger("uopsl.train.stages").info("finetune: 24 training images")
        assert f"[rank {rank}] INFO" in capsys.readouterr().err
        from uopsl.runtime.clikit import speaks_for_the_run

        assert speaks_for_the_run() is (rank == "0")  # the commands' closing lines (click.echo), once per run
    finally:
        # What setup_logging changed for the process, back as the other tests expect it.
        from uopsl.runtime import progress

        logging.basicConfig(force=True)
        logging.getLogger().setLevel(logging.WARNING)
        logging.captureWarnings(False)
        progress.set_enabled(True)


def test_onnxruntime_quantizer_info_lines_are_shown_at_vv_only(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo printed 27 'INFO root: Increased scale[...] for weight ...' lines from ONNX Runtime's quantizer,
    which logs on the root logger; its warnings and uopsl's own lines must still show."""
    import logging
    import os

    from uopsl.runtime.clikit import setup_logging

    ort_file = os.path.join(os.sep, "site-packages", "onnxruntime", "quantization", "qdq_quantizer.py")

    def emit(level: int, msg: str, pathname: str = ort_file) -> None:
        root = logging.getLogger()
        root.handle(root.makeRecord("root", level, pathname, 1, msg, (), None))

    try:
        setup_logging(0)
        emit(logging.INFO, "Increased scale[0] for weight `w` by ratio 2.0")
        emit(logging.WARNING, "an ORT quantizer warning")
        emit(logging.WARNING, "Please consider pre-processing before quantization. See https://github.com/...")
        emit(logging.INFO, "a root line from elsewhere", pathname="/app/main.py")
        logging.getLogger("uopsl.export").info("a uopsl line")
        err = capsys.readouterr().err
        assert "Increased scale" not in err and "pre-processing" not in err
        assert "an ORT quantizer warning" in err and "a root line from elsewhere" in err and "a uopsl line" in err
        setup_logging(2)
        emit(logging.INFO, "Increased scale[0] for weight `w` by ratio 2.0")
        assert "Increased scale" in capsys.readouterr().err
    finally:
        logging.basicConfig(force=True)
        logging.getLogger().setLevel(logging.WARNING)


def test_photographs_given_where_the_bundle_goes_say_the_bundle_comes_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A clinic review: swapped arguments read 'no manifest.json; is this a uopsl bundle folder?'."""
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.errors import BundleError

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(BundleError, match=r"not a uopsl bundle folder; it holds photographs: the bundle comes first "
                                          r"\(uopsl-screen run BUNDLE PHOTOS\.\.\. --out FOLDER\)"):
        read_manifest(photos)
    # A folder without photographs (a half-copied bundle) is not told about run's arguments (a review).
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"not a uopsl bundle folder; was it copied whole\?"):
        read_manifest(tmp_path / "half")


def test_a_command_replaces_console_handlers_only_and_keeps_log_files_and_capture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Session 43: the commands configured logging with ``basicConfig(force=True)``, which removed every root
    handler: a program that runs ``uopsl.runtime.cli.main`` in-process lost its log file, and pytest's log
    capture went deaf after any command (assertions that nothing was logged then held vacuously)."""
    import logging
    import sys

    from uopsl.runtime.clikit import _CliHandler, setup_logging

    root = logging.getLogger()
    log_file = logging.FileHandler(tmp_path / "app.log")
    console = logging.StreamHandler()  # what the host's basicConfig() left: a plain console handler
    root.addHandler(log_file)
    root.addHandler(console)
    try:
        setup_logging(0)
        setup_logging(0)  # a second command in the same process
        assert log_file in root.handlers and caplog.handler in root.handlers
        assert console not in root.handlers  # replaced, so no line is printed twice
        assert [getattr(h, "stream", None) is sys.stderr for h in root.handlers if type(h) is _CliHandler] == [True]
        logging.getLogger("uopsl.test").warning("kept everywhere")
        assert capsys.readouterr().err.count("kept everywhere") == 1
        assert "kept everywhere" in (tmp_path / "app.log").read_text()
        assert any(r.getMessage() == "kept everywhere" for r in caplog.records)
        assert log_file.filters == []  # the console's filters are not put on the host's handlers
    finally:
        root.removeHandler(log_file)
        log_file.close()
        logging.basicConfig(force=True)
        logging.getLogger().setLevel(logging.WARNING)
