"""``--data KIND:PATH[:key=value,...]``: every wrong spec is one clean error line, and ``csv:FILE`` works.

A user walkthrough hit Python tracebacks for an unknown reader option
(``synthetic:DIR:task=four_class``) and for ``csv:FILE`` (``read_csv`` needed a
``layout`` the command line cannot give). These tests go through
:func:`parse_spec`/:func:`load_source` and through the real ``uopsl`` command.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from fixtures_data import write_csv, write_image
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train import data
from uopsl.train.cli import cli
from uopsl.train.commands.common import load_source, parse_spec
from uopsl.train.synthetic import SynthConfig, make_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``uopsl synth`` folder: 6 fundus images of 64 px, 3 patients, labels.csv."""
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, 6, config=SynthConfig(size=64, seed=0), write_masks=False, progress=False)
    return root


@pytest.fixture
def path_label_csv(tmp_path: Path) -> Path:
    """The ``path,label`` form ``uopsl calibrate --images`` and ``uopsl validate --data`` accept."""
    rows = [[f"img/{i}.png", ("normal", "dr")[i % 2]] for i in range(4)]
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    return write_csv(tmp_path / "table.csv", ["path", "label"], rows)


def _uopsl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``uopsl ARGV`` with the console script's error mapping; (exit code, stderr)."""
    rc = main_entry(cli, argv, prog_name="uopsl")
    return rc, capsys.readouterr().err


# -- unknown option, wrong value, missing option ---------------------------------------------------


def test_unknown_option_names_it_the_accepted_options_and_an_example(synth: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_source(f"synthetic:{synth}:task=four_class")
    msg = str(err.value)
    assert "no option 'task'" in msg and "task=four_class" in msg
    accepted = [k for k in inspect.signature(data.read_synthetic).parameters][1:]
    assert accepted == ["classes", "modality", "missing"]
    assert all(k in msg for k in accepted) and "split" in msg
    assert "Example: synthetic:DIR:" in msg


def test_csv_option_that_cannot_be_written_on_the_command_line(path_label_csv: Path) -> None:
    with pytest.raises(ConfigError, match="'layout' takes a CsvLayout"):
        load_source(f"csv:{path_label_csv}:layout=label")


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ("missing=maybe", r"missing='maybe': expected one of error\|skip"),
        ("modality=xray", "modality must be one of"),
        ("classes=+", "expected names joined with '\\+'"),
        ("split=holdout", "split must be train, val or test, got 'holdout'"),
        ("split=val,split_seed=x", "split_seed must be an integer, got 'x'"),
        ("fold=1-3", "fold must look like I/K"),
        ("modality=fundus,oops", "option 'oops' in .* is not key=value"),
    ],
)
def test_bad_values_are_config_errors(synth: Path, opts: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_source(f"synthetic:{synth}:{opts}")


def test_values_take_the_readers_types(synth: Path) -> None:
    classes = ("normal", "dr", "dme", "amd", "glaucoma")
    src = load_source(f"synthetic:{synth}:classes={'+'.join(classes)},missing=skip,modality=fundus")
    assert src.label_space.classes == classes and len(src) == 6
    kind, path, opts = parse_spec(f"synthetic:{synth}:classes=normal+dr,split=test")
    assert (kind, path, opts) == ("synthetic", synth, {"classes": "normal+dr", "split": "test"})


def test_a_required_reader_option_left_out_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def read_needy(root: Path, layout: str, *, missing: str = "error") -> data.DatasetSource:
        raise AssertionError("not reached")

    monkeypatch.setitem(data.READERS, "needy", read_needy)
    with pytest.raises(ConfigError, match="dataset kind 'needy' needs the option 'layout'; it accepts layout, missing"):
        data.load_dataset("needy", tmp_path)


def test_load_dataset_rejects_unknown_options_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'aptos' has no option 'vocabulary'.*accepts task, missing"):
        data.load_dataset("aptos", tmp_path, vocabulary="raw")
    with pytest.raises(ConfigError, match="no such file or folder"):
        data.load_dataset("aptos", tmp_path / "absent")


# -- paths -----------------------------------------------------------------------------------------


def test_missing_path_is_said_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^nosuch: no such file or folder .*KIND:PATH"):
        parse_spec("nosuch")
    with pytest.raises(ConfigError, match=r"^nosuch: no such file or folder \(dataset 'synthetic:nosuch'\)$"):
        load_source("synthetic:nosuch")
    (tmp_path / "t.csv").write_text("path,label\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot tell the dataset kind .*csv:t\.csv"):
        parse_spec("t.csv")
    # A user's own folder holding a labels.csv is not taken for synthetic data (a research review's finding).
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "labels.csv").write_text("path,label\na.jpg,dr\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"own/labels\.csv is not a `uopsl synth` table .*csv:own/labels\.csv"):
        parse_spec("own")


# -- csv kind --------------------------------------------------------------------------------------


def test_csv_with_path_and_label_columns_reads_without_options(path_label_csv: Path) -> None:
    src = load_source(f"csv:{path_label_csv}")
    assert len(src) == 4 and src.counts() == {"normal": 2, "dr": 2} and not src.label_space.multi_label
    assert src.samples[0].path == path_label_csv.parent / "img" / "0.png"


def test_csv_reads_the_toolkits_own_labels_csv(synth: Path) -> None:
    src = load_source(f"csv:{synth / 'labels.csv'}:fold=1/2,fold_seed=1")  # 3 patients: seed 0 leaves fold 1 empty
    full = data.read_synthetic(synth)
    assert src.label_space.multi_label and 0 < len(src) < len(full)
    by_path = {s.path: s for s in full.samples}
    for s in src.samples:  # patient, eye and modality columns are used, labels ';'-split
        ref = by_path[s.path]
        assert (s.labels, s.patient, s.eye, s.modality) == (ref.labels, ref.patient, ref.eye, ref.modality)


def test_csv_without_a_usable_header_says_which_columns_it_needs(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", ["file", "diagnosis"], [["a.png", "dr"]])
    with pytest.raises(DataError, match=r"columns \['file', 'diagnosis'\]; expected a 'path' column and a 'label'"):
        load_source(f"csv:{table}")
    assert data.CsvLayout.infer(["path", "labels", "label"]).label_column == "label"


def test_publisher_split_goes_to_the_reader(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("NORMAL", "DME"):
            write_image(tmp_path / split / cls / f"{cls}-1{split == 'test':d}-1.jpeg")
    assert {s.extra["split"] for s in load_source(f"oct2017:{tmp_path}:split=test").samples} == {"test"}
    with pytest.raises(ConfigError, match="no option 'split_seed'"):
        load_source(f"oct2017:{tmp_path}:split=test,split_seed=1")



def test_idrid_holds_out_validation_by_fold_of_its_train_split(tmp_path: Path) -> None:
    """`uopsl --help`'s advice for idrid (no val part): notfold/fold of split=train, disjoint, together whole."""
    import fixtures_data as fx

    fx.make_idrid(tmp_path)
    whole = {s.path for s in load_source(f"idrid:{tmp_path}:split=train").samples}
    train = {s.path for s in load_source(f"idrid:{tmp_path}:split=train,notfold=1/2").samples}
    val = {s.path for s in load_source(f"idrid:{tmp_path}:split=train,fold=1/2").samples}
    assert train and val and not train & val and train | val == whole
    assert "notfold=1/5" in (cli.epilog or "") and "split=train,fold=1/5" in (cli.epilog or "")

# -- through the real command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("synthetic:{synth}:task=four_class", "no option 'task'"),
        ("csv:{synth}/labels.csv:missing=maybe", "expected one of error|skip"),
        ("{tmp}/nosuch", "nosuch: no such file or folder"),
    ],
)
def test_cli_bad_spec_is_one_line_exit_2(spec: str, needle: str, synth: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ckpt").mkdir()
    data_spec = spec.format(synth=synth, tmp=tmp_path)
    rc, err = _uopsl(["zero-shot", str(tmp_path / "ckpt"), "--classes", "dr", "--data", data_spec,
                      "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and needle in err


def test_cli_evaluate_reads_csv_and_refuses_unknown_option(synth: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The walkthrough's commands, on a real (tiny, random) checkpoint."""
    from trainhelpers import tiny_model
    from uopsl.train.checkpoint import save_model

    model, meta = tiny_model()
    save_model(tmp_path / "ckpt", model, meta)  # classes normal, a, b: the synthetic data label only normal
    base = ["evaluate", "--keep-ungradable",
            str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--n-boot", "10", "--device", "cpu"]
    rc, err = _uopsl([*base, "--data", f"synthetic:{synth}:task=four_class"], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "dataset kind 'synthetic' has no option 'task'" in err
    rc, err = _uopsl([*base, "--data", f"csv:{synth / 'labels.csv'}"], capsys)
    assert rc == 2 and "covers 1 of 3 classes (normal)" in err  # a "macro AUC" of normal alone is refused
    import dataclasses

    import numpy as np

    from uopsl.train.model import UopslModel

    names = ("normal", "dr", "dme", "amd")  # the synthetic data's classes
    cfg = dataclasses.replace(meta.model, classes=names)
    meta = dataclasses.replace(meta, model=cfg, phrases=tuple((n,) for n in names))
    save_model(tmp_path / "ckpt", UopslModel(cfg, np.zeros((len(names), 384), np.float32)), meta)
    rc, err = _uopsl([*base, "--data", f"csv:{synth / 'labels.csv'}"], capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "eval.json").is_file()
