"""Bad command-line input a review found accepted, or refused only after the work, or refused with a wrong hint.

Each was reproduced before the fix: ``--threads 100000`` started that many inference threads and exhausted the
machine's process table; ``--out BUNDLE`` wrote patients' results into the bundle folder that devices copy
whole (and ``export --force`` deletes); ``watch --timeout nan`` never stopped; ``validate --sqnr-threshold nan``
failed after the whole run; a one-class ``--classes`` file failed with advice to change the opset; a checkpoint
given as a bundle (or a bundle as a checkpoint) was called a folder "not copied whole"; an unwritable ``--json``
was found only after the timing, naming the temporary file; a bench on photographs none of which decoded did
not say which files or why.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from tinybundle import fundus_jpeg, make_tiny_bundle
from trainhelpers import tiny_model

from uopsl.runtime import cli as screen_cli
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import BundleError, CheckpointError, ConfigError, command_word
from uopsl.runtime.fsio import check_output_file
from uopsl.runtime.model_folders import check_output_outside_model_folders, enclosing_model_folders, folder_kind
from uopsl.runtime.parallelism import check_parallelism, parallelism_limit, usable_cores


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("b49") / "bundle")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from uopsl.train.checkpoint import save_model

    model, meta = tiny_model()
    folder = tmp_path_factory.mktemp("c49") / "ckpt"
    save_model(folder, model, meta)
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    fundus_jpeg(tmp_path / "photos" / "a.jpg")
    return tmp_path / "photos"


def _screen(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main_entry(screen_cli.cli, argv, prog_name="uopsl-screen")
    return rc, capsys.readouterr().err


def _uopsl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from uopsl.train.cli import cli

    rc = main_entry(cli, argv, prog_name="uopsl")
    return rc, capsys.readouterr().err


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- thread and worker counts --------------------------------------------------------------------------
def test_the_limit_is_generous_and_follows_the_cores() -> None:
    assert parallelism_limit() == max(64, 8 * usable_cores())
    check_parallelism("threads", parallelism_limit())  # the limit itself is accepted
    check_parallelism("threads", None)
    with pytest.raises(ConfigError, match=r"threads 100000 is more than can be used here: this (machine has|process "
                                          r"may run on) \d+ "):
        check_parallelism("threads", 100_000)
    for bad, words in ((0, "at least 1"), (True, "whole number"), (2.5, "whole number")):
        with pytest.raises(ConfigError, match=words):
            check_parallelism("workers", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [
    ["run", "{bundle}", "{photos}", "--out", "{out}", "--threads", "100000"],
    ["run", "{bundle}", "{photos}", "--out", "{out}", "--workers", "100000"],
    ["watch", "{bundle}", "{photos}", "--out", "{out}", "--threads", "100000", "--timeout", "1"],
    ["bench", "{bundle}", "--threads", "100000", "--iters", "1"],
    ["bench", "{bundle}", "--workers", "100000", "--iters", "1"],
])
def test_screen_refuses_a_thread_count_the_machine_cannot_hold(argv: list[str], bundle: Path, photos: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(bundle=bundle, photos=photos, out=tmp_path / "out") for a in argv]
    rc, err = _screen(args, capsys)
    assert rc == 2 and "100000 is more than can be used here" in err and f"give at most {parallelism_limit()}" in err
    if argv[0] != "bench":
        assert not (tmp_path / "out").exists()  # refused before the output folder was made


def test_validate_and_synth_refuse_it_too(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _uopsl(["validate", str(bundle), "--onnx-reference", "--data", str(tmp_path), "--out",
                      str(tmp_path / "v"), "--threads", "100000"], capsys)
    assert rc == 2 and "Invalid value for '--threads': 100000 is more than" in err
    rc, err = _uopsl(["synth", "--out", str(tmp_path / "s"), "--workers", "100000"], capsys)
    assert rc == 2 and "Invalid value for '--workers': 100000 is more than" in err
    assert not (tmp_path / "v").exists() and not (tmp_path / "s").exists()


def test_the_library_refuses_it_where_the_threads_are_made(bundle: Path) -> None:
    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.runtime.bench import BenchConfig
    from uopsl.runtime.pipeline import PipelineConfig
    from uopsl.train.synthetic import SynthConfig, make_dataset

    huge = parallelism_limit() + 1
    for make in (lambda: PipelineConfig(workers=huge), lambda: BenchConfig(threads=huge),
                 lambda: BenchConfig(workers=huge), lambda: OrtBackend(bundle / "model.onnx", "cpu", huge)):
        with pytest.raises(ConfigError, match="more than can be used here"):
            make()
    with pytest.raises(ConfigError, match="workers .* more than can be used here"):
        make_dataset(Path("/nonexistent-never-made"), 1, 1, SynthConfig(), workers=huge)


# -- outputs inside a bundle or a checkpoint -----------------------------------------------------------
def test_model_folders_are_told_apart_by_their_files(bundle: Path, checkpoint: Path, tmp_path: Path) -> None:
    assert folder_kind(bundle) == "bundle" and folder_kind(checkpoint) == "checkpoint"
    other = tmp_path / "web"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "a web app", "icons": []}')  # not a uopsl manifest
    assert folder_kind(other) is None and enclosing_model_folders(other / "results") == []
    # uopsl's key names nested in another program's record, or a checkpoint's file names with other content
    (other / "manifest.json").write_text('{"assets": {"files": []}, "meta": {"format_version": 2}}')
    (other / "checkpoint.json").write_text('{"name": "a game save"}')
    (other / "model.safetensors").write_bytes(b"\0" * 16)
    assert folder_kind(other) is None
    assert enclosing_model_folders(bundle / "a" / "b") == [("bundle", bundle.resolve())]
    assert enclosing_model_folders(checkpoint) == [("checkpoint", checkpoint.resolve())]
    link = tmp_path / "link"
    link.symlink_to(bundle, target_is_directory=True)
    with pytest.raises(ConfigError, match=r"--out .*link/out is inside the bundle folder"):
        check_output_outside_model_folders(link / "out")  # links resolved


@pytest.mark.parametrize("inside", [False, True])
def test_run_refuses_to_write_results_into_the_bundle(bundle: Path, photos: Path, tmp_path: Path, inside: bool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "my bundle"))
    before = _listing(copy)
    out = copy / "results" if inside else copy
    rc, err = _screen(["run", str(copy), str(photos), "--out", str(out)], capsys)
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert rc == 2 and f"{'is inside' if inside else 'is'} the bundle folder" in line
    assert "devices copy and verify it whole" in line
    assert f"--out '{tmp_path / 'my bundle-results'}'" in line  # a path with a space, quoted to paste
    assert _listing(copy) == before  # nothing written into the bundle


def test_watch_and_the_api_refuse_it_too(bundle: Path, photos: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.api import Screener

    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    before = _listing(copy)
    rc, err = _screen(["watch", str(copy), str(photos), "--out", str(copy / "w"), "--timeout", "1"], capsys)
    assert rc == 2 and "is inside the bundle folder" in err
    with Screener(copy, "ort-cpu") as s, pytest.raises(ConfigError, match="is the bundle folder"):
        s.screen_to(copy, [str(photos)])
    assert _listing(copy) == before


def test_reports_and_benchmarks_refuse_model_folders(bundle: Path, checkpoint: Path, photos: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    ck = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    before = _listing(copy), _listing(ck)
    rc, err = _screen(["bench", str(copy), "--json", str(copy / "bench.json"), "--iters", "1"], capsys)
    assert rc == 2 and "--json" in err and "is inside the bundle folder" in err
    rc, err = _uopsl(["validate", str(copy), "--onnx-reference", "--data", str(photos), "--out", str(copy / "v")],
                     capsys)
    assert rc == 2 and "is inside the bundle folder" in err
    rc, err = _uopsl(["evaluate", str(ck), "--data", str(photos), "--out", str(ck)], capsys)
    assert rc == 2 and "is the checkpoint folder" in err and "results in it would travel with the model" in err
    rc, err = _uopsl(["explain", str(ck), str(photos / "a.jpg"), "--out", str(ck / "maps")], capsys)
    assert rc == 2 and "is inside the checkpoint folder" in err
    rc, err = _uopsl(["duplicates", f"folder:{photos}", "--out", str(copy / "dups.json")], capsys)
    assert rc == 2 and "is inside the bundle folder" in err
    assert (_listing(copy), _listing(ck)) == before


# -- numbers that are not numbers ----------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [("--timeout", "nan"), ("--timeout", "inf"), ("--poll", "nan")])
def test_watch_refuses_a_timeout_that_never_ends(option: str, value: str, bundle: Path, photos: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _screen(["watch", str(bundle), str(photos), "--out", str(tmp_path / "w"), option, value], capsys)
    assert rc == 2 and f"Invalid value for '{option}': '{value}' is not a finite number" in err
    assert not (tmp_path / "w").exists()


def test_the_configs_refuse_nan_from_python() -> None:
    from uopsl.export.validate import ValidateConfig
    from uopsl.runtime.watch import WatchConfig

    for field_, value in (("timeout_s", math.nan), ("poll_s", math.inf), ("refresh_s", math.nan)):
        with pytest.raises(ConfigError, match=f"{field_} must be a finite number"):
            WatchConfig(**{field_: value})
    with pytest.raises(ConfigError, match="timeout_s must be >= 0"):
        WatchConfig(timeout_s=-1.0)
    for field_ in ("sqnr_threshold_db", "min_drop_db"):
        with pytest.raises(ConfigError, match=f"{field_} must be a finite number of dB"):
            ValidateConfig(**{field_: math.nan})


def test_validate_refuses_a_nan_sqnr_threshold_before_the_run(bundle: Path, photos: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _uopsl(["validate", str(bundle), "--onnx-reference", "--data", str(photos), "--out",
                      str(tmp_path / "v"), "--per-layer", "--sqnr-threshold", "nan"], capsys)
    assert rc == 2 and "'nan' is not a finite number" in err and not (tmp_path / "v").exists()


@pytest.mark.parametrize("argv", [["finetune", "--lr", "nan"], ["duplicates", "x", "--threshold", "nan"],
                                  ["calibrate", ".", "--images", "x", "--percentile", "nan"]])
def test_training_commands_refuse_nan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _uopsl(argv, capsys)
    assert rc == 2 and "'nan' is not a finite number" in err


# -- one class, and the wrong kind of model folder -----------------------------------------------------
def test_a_one_class_bank_exports_for_a_sigmoid_model(checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import onnxruntime as ort

    classes = tmp_path / "one.toml"
    classes.write_text('[[classes]]\nname = "b"\n')  # one trained class, its own prototype
    rc, err = _uopsl(["export", str(checkpoint), "--out", str(tmp_path / "b1"), "--classes", str(classes)], capsys)
    assert rc == 0, err
    sess = ort.InferenceSession(str(tmp_path / "b1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [[d if isinstance(d, int) else "batch" for d in o.shape] for o in sess.get_outputs()] == [
        ["batch", 1], ["batch", 1], ["batch", 1, 2, 2]]
    probs = sess.run(["probs"], {"image": np.zeros((2, 64, 64, 3), np.uint8)})[0]
    assert probs.shape == (2, 1) and np.isfinite(probs).all()


def test_a_one_class_bank_is_refused_for_a_softmax_model(tmp_path: Path) -> None:
    from uopsl.train.workflow import _check_class_set_change

    with pytest.raises(ConfigError, match="softmax head, whose probabilities over one class are always 1"):
        _check_class_set_change(("normal", "dr"), (False, True), ("dr",), {}, "softmax", "one.toml")
    _check_class_set_change(("normal", "dr"), (False, True), ("dr",), {}, "sigmoid", "one.toml")


def test_a_checkpoint_given_as_a_bundle_is_told_to_export_first(checkpoint: Path, photos: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.bundle import read_manifest

    with pytest.raises(BundleError, match=r"is a training checkpoint .* not a deployment bundle: export it"):
        read_manifest(checkpoint)
    rc, err = _screen(["run", str(checkpoint), str(photos), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and f"uopsl export {checkpoint} --out {checkpoint}-bundle" in err and "copied whole" not in err


def test_a_bundle_given_as_a_checkpoint_is_named_as_one(bundle: Path) -> None:
    from uopsl.train.checkpoint import read_meta

    with pytest.raises(CheckpointError, match="is a deployment bundle .*give the checkpoint folder it was exported"):
        read_meta(bundle)


# -- output files checked before the work --------------------------------------------------------------
def test_an_output_file_that_cannot_be_written_is_refused_first(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match=r"--json .*a-file/sub/b.json: .*a-file is a file"):
        check_output_file(tmp_path / "a-file" / "sub" / "b.json", "--json")
    with pytest.raises(ConfigError, match=r"is a folder; give a file path such as .*bench.json"):
        check_output_file(tmp_path, "--json", "bench.json")
    check_output_file(tmp_path / "new" / "deeper" / "b.json", "--json")  # missing folders are fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the probe left nothing, made nothing

    def read_only(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(ConfigError, match=r"cannot create a file in .* \(Permission denied\); choose a folder"):
        check_output_file(tmp_path / "b.json", "--out")


def test_bench_checks_its_json_path_before_timing(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def not_reached(*_a: object, **_k: object) -> None:
        raise AssertionError("the benchmark ran before the --json path was checked")

    monkeypatch.setattr("uopsl.runtime.bench.run_bench", not_reached)
    (tmp_path / "f").write_text("x")
    rc, err = _screen(["bench", str(bundle), "--json", str(tmp_path / "f" / "bench.json")], capsys)
    assert rc == 2 and "is a file, so no folder can hold bench.json there" in err


def test_duplicates_checks_its_out_path_before_reading(photos: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _uopsl(["duplicates", f"folder:{photos}", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "is a folder; give a file path such as" in err and "duplicates.json" in err


def test_bench_names_the_photographs_that_did_not_preprocess(bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not a jpeg")
    (junk / "b.png").write_bytes(b"nor a png")
    rc, err = _screen(["bench", str(bundle), "--images", str(junk), "--iters", "1", "--no-e2e"], capsys)
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert rc == 2 and "none of the 2 benchmark image(s) could be preprocessed" in line
    assert "a.jpg: not an image file" in line and "b.png: not an image file" in line
    assert "leave it out to time synthetic ones" in line


def test_command_word_quotes_only_what_needs_it() -> None:
    assert command_word("/data/bundle-1") == "/data/bundle-1"
    assert command_word("/data/my photos", windows=False) == "'/data/my photos'"
    assert command_word("/data/$HOME x", windows=False) == "'/data/$HOME x'"  # nothing expanded when pasted
    assert command_word(r"C:\My Photos", windows=True) == '"C:\\My Photos"'
    assert command_word('a"b', windows=True) == '"a\\"b"'
    assert command_word("", windows=False) == "''"



def test_ctrl_c_in_a_command_that_says_nothing_tells_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in validate, quantize, evaluate, synth or export printed a bare "aborted"."""
    import click

    @click.group()
    def group() -> None:
        pass

    @group.command("work")
    def work() -> None:
        raise KeyboardInterrupt

    assert main_entry(group, ["work"], prog_name="uopsl") == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted (Ctrl-C) before the command finished: run the same command again to finish it"


def test_bench_refuses_a_batch_size_given_twice(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _screen(["bench", str(bundle), "--batch", "1,8,1", "--iters", "1"], capsys)
    assert rc == 2 and "a batch size is given twice in 1,8,1; give each once" in err


def test_output_cut_off_by_a_closed_pipe_exits_141(bundle: Path) -> None:
    """``uopsl-screen info BUNDLE | head -1`` exited 1 ("some photographs failed") without a word."""
    import subprocess
    import sys

    import os

    code = "import sys; from uopsl.runtime.cli import main; sys.exit(main(['info', sys.argv[1]]))"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written (as after `head -1`'s line)
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(bundle)], stdout=write_end, stderr=subprocess.PIPE,
                              timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr.decode()


@pytest.mark.parametrize("option", ["--rounding-images", "--adaround-iterations", "--sensitivity-images", "--size"])
def test_quantize_names_its_options_not_the_api_fields(option: str, bundle: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``--rounding-images 0`` was refused as "rounding_images must be >= 1", a Python field name."""
    rc, err = _uopsl(["quantize", str(bundle), option, "0"], capsys)
    assert rc == 2 and f"Invalid value for '{option}': 0 is not in the range x>=1" in err
    assert "_" not in err.split("Invalid value for")[1].split(":")[0]


def test_the_api_refuses_a_bundle_output_whatever_the_inputs_are(bundle: Path, photos: Path, tmp_path: Path) -> None:
    """The check ran only for a list of inputs: a generator of paths wrote results into the bundle."""
    from uopsl.runtime.api import Screener

    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    before = _listing(copy)
    with Screener(copy, "ort-cpu") as s:
        with pytest.raises(ConfigError, match="is inside the bundle folder"):
            s.screen_to(copy / "results", (str(p) for p in photos.iterdir()))
        with pytest.raises(ConfigError, match="is inside the bundle folder"):
            s.check_output(copy / "results")  # no inputs given
    assert _listing(copy) == before


def test_the_suggestion_is_outside_every_model_folder_and_of_the_right_kind(bundle: Path, checkpoint: Path,
                                                                             tmp_path: Path) -> None:
    ck = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    inner = Path(shutil.copytree(bundle, ck / "bundle"))  # `uopsl export ck --out ck/bundle` is accepted
    with pytest.raises(ConfigError) as info:
        check_output_outside_model_folders(inner / "res")
    said = str(info.value)
    assert "is inside the bundle folder" in said and said.endswith(f"Choose a folder outside it, e.g. --out "
                                                                   f"{tmp_path / 'ck-results'}")
    check_output_outside_model_folders(tmp_path / "ck-results")  # the suggestion itself is accepted
    with pytest.raises(ConfigError) as info:
        check_output_outside_model_folders(inner / "bench.json", "--json", is_file=True)
    assert str(info.value).endswith(f"Choose a file outside it, e.g. --json {tmp_path / 'bench.json'}")


def test_a_model_folder_output_is_refused_before_the_write_probe(bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The writability probe created and deleted a file inside the bundle before the refusal."""
    def no_probe(*_a: object, **_k: object) -> None:
        raise AssertionError("a probe file was written before the model-folder check")

    monkeypatch.setattr("tempfile.mkstemp", no_probe)
    rc, err = _screen(["bench", str(bundle), "--json", str(bundle / "bench.json")], capsys)
    assert rc == 2 and "is inside the bundle folder" in err


def test_exit_codes_of_help_version_and_a_library_exit(capsys: pytest.CaptureFixture[str]) -> None:
    """Only click's closed-pipe exit becomes 141; --help, --version and another SystemExit keep their codes."""
    import click

    assert main_entry(screen_cli.cli, ["--help"], prog_name="uopsl-screen") == 0
    assert main_entry(screen_cli.cli, ["--version"], prog_name="uopsl-screen") == 0
    assert main_entry(screen_cli.cli, ["run", "--help"], prog_name="uopsl-screen") == 0
    capsys.readouterr()

    @click.group()
    def group() -> None:
        pass

    @group.command("work")
    def work() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        main_entry(group, ["work"], prog_name="uopsl")
    assert info.value.code == 3


def test_help_shows_the_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.train.cli import cli

    main_entry(screen_cli.cli, ["run", "--help"], prog_name="uopsl-screen")
    out = " ".join(capsys.readouterr().out.split())
    assert f"[1<=x<={parallelism_limit()}]" in out
    main_entry(cli, ["validate", "--help"], prog_name="uopsl")
    out = " ".join(capsys.readouterr().out.split())
    assert "--sqnr-threshold FLOAT " in out and "FLOAT RANGE" not in out.split("--sqnr-threshold")[1][:20]


def test_command_word_quotes_a_backslash_for_a_posix_shell() -> None:
    """A POSIX shell reads a backslash as an escape (C:\\data pasted bare is C:data); Windows paths keep theirs."""
    assert command_word(r"C:\data", windows=False) == r"'C:\data'"
    assert command_word(r"C:\data", windows=True) == r"C:\data"


def test_a_folder_that_cannot_be_looked_at_is_no_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ancestor this account may not enter raised PermissionError out of the walk up from --out."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert folder_kind(locked) is None
    check_output_outside_model_folders(locked / "out")  # nothing to refuse, and no error


def test_keygen_refuses_to_put_a_private_key_into_a_bundle_or_checkpoint(bundle: Path, checkpoint: Path,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Session 50: `keygen --out BUNDLE/keys` left the private key in a folder devices copy whole (and `export
    --force` would then have deleted it); a checkpoint is shared whole as well."""
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    ck = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    before = _listing(copy), _listing(ck)
    rc, err = _uopsl(["keygen", "--out", str(copy / "keys")], capsys)
    assert rc == 2 and "inside the bundle folder" in err and "the private key would travel with it" in err
    rc, err = _uopsl(["keygen", "--out", str(ck)], capsys)
    assert rc == 2 and "the checkpoint folder" in err
    assert (_listing(copy), _listing(ck)) == before
    rc, _ = _uopsl(["keygen", "--out", str(tmp_path / "keys")], capsys)
    assert rc == 0 and (tmp_path / "keys" / "uopsl-signing.key").is_file()
