"""What a reviewer training on a hospital's own data found (session 47), each fixed behaviour pinned."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime.clikit import main_entry
from uopsl.train.cli import cli

CLASSES = ("normal", "dr", "dme", "amd")
TINY_CLASSES = ("normal", "a", "b")  # trainhelpers.tiny_model's


def _checkpoint(root: Path, classes: tuple[str, ...] = CLASSES) -> Path:
    from trainhelpers import classes_checkpoint

    return classes_checkpoint(root, classes)


def test_evaluate_exits_1_when_images_could_not_be_read_and_draws_no_empty_intervals(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One unreadable photograph among the test set was left out of every figure with a warning and exit 0, so
    figures over fewer images than listed went on to be signed (``explain`` and ``uopsl-screen run`` exit 1 for
    the same). And ``--n-boot 0`` printed "(95% CI n/a-n/a)" where no interval was drawn."""
    from uopsl.train.synthetic import SynthConfig, make_dataset

    data = tmp_path / "syn"
    make_dataset(data, 12, 0, config=SynthConfig(size=64, seed=3), progress=False)
    with open(data / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["modality"] == "fundus"]
    (data / rows[0]["path"]).write_bytes(b"not a photograph at all")
    ck = _checkpoint(tmp_path / "ck")
    rc = main_entry(cli, ["evaluate", "--keep-ungradable",
                          str(ck), "--data", str(data), "--out", str(tmp_path / "ev"), "--n-boot", "0",
                          "--device", "cpu"], prog_name="uopsl")
    got = capsys.readouterr()
    assert rc == 1, got.err
    assert f"1 of the {len(rows)} images could not be read and are left out of every figure" in got.err
    assert "n/a-n/a" not in got.out and "macro AUC over" in got.out
    import json

    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["n_unreadable"] == 1
    # predictions.csv (the review: eval.json alone could not be audited): one row per evaluated image, from which
    # each class's confusion counts at its threshold come out as eval.json states them.
    assert report["predictions"] == "predictions.csv"
    with open(tmp_path / "ev" / "predictions.csv", newline="", encoding="utf-8") as fh:
        pred = list(csv.DictReader(fh))
    assert len(pred) == len(rows) - 1 == report["n_samples"]
    assert Path(rows[0]["path"]).name not in {Path(r["path"]).name for r in pred}
    for c in report["classes"]:
        label = np.array([int(r[f"label_{c['name']}"]) for r in pred])
        call = np.array([int(r[f"call_{c['name']}"]) for r in pred])
        p = np.array([float(r[f"p_{c['name']}"]) for r in pred])
        assert np.array_equal(call, (p >= c["threshold"]).astype(int)) or np.abs(p - c["threshold"]).min() < 1e-5
        got = {"tp": int((call & label).sum()), "fp": int((call & (1 - label)).sum()),
               "tn": int(((1 - call) & (1 - label)).sum()), "fn": int(((1 - call) & label).sum())}
        assert got == {k: c[k] for k in got}, c["name"]


def test_evaluate_says_when_class_names_differ_only_in_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model trained on labels NORMAL/DR/... (the descriptions are found whatever the case) evaluated on data
    labelled normal/dr/... was refused with "the data's normal, dr ... are not classes of the model", without
    saying that only the case differs."""
    from uopsl.train.synthetic import SynthConfig, make_dataset

    data = tmp_path / "syn"
    make_dataset(data, 12, 0, config=SynthConfig(size=64, seed=3), progress=False)
    ck = _checkpoint(tmp_path / "ck", tuple(c.upper() for c in CLASSES))
    rc = main_entry(cli, ["evaluate", "--keep-ungradable",
                          str(ck), "--data", str(data), "--out", str(tmp_path / "ev"), "--n-boot", "0",
                          "--device", "cpu"], prog_name="uopsl")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "named differently only in spelling or case: " in err
    assert "'normal' (data) is 'NORMAL' (model)" in err and "relabel the data with the model's names" in err


def test_one_photograph_filed_under_two_classes_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder per class holding the same file twice (``dme/0006.jpg`` and ``normal/copy_0006.jpg``) trained the
    picture as both classes without a word; a copy with the same labels is not a conflict."""
    import logging
    import shutil

    from trainhelpers import CLASSES as names
    from trainhelpers import tiny_items
    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.torchdata import Item
    from uopsl.train.workflow import dataset, warn_conflicting_copies

    items = tiny_items(tmp_path / "train", n=6)
    other = np.zeros_like(items[0].target)
    other[1 - int(np.argmax(items[0].target))] = 1.0  # the other class
    shutil.copy(items[0].path, tmp_path / "copy_other_label.png")
    shutil.copy(items[1].path, tmp_path / "copy_same_label.png")
    pre = PreprocessConfig(size=64)
    ds = dataset([*items, Item(tmp_path / "copy_other_label.png", other),
                  Item(tmp_path / "copy_same_label.png", items[1].target)], pre, tmp_path / "cache", False)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.workflow"):
        assert warn_conflicting_copies(ds, "training", names) == 1
    assert "1 training photograph(s) appear more than once with different labels" in caplog.text
    assert "copy_other_label.png" in caplog.text and "copy_same_label" not in caplog.text
    caplog.clear()
    assert warn_conflicting_copies(dataset(items, pre, tmp_path / "cache", False), "training", names) == 0
    assert not caplog.text


def _explain_setup(tmp_path: Path) -> tuple[Path, Path]:
    import cv2

    from imagekit import draw_fake_fundus
    from trainhelpers import tiny_model
    from uopsl.train.checkpoint import save_model

    model, meta = tiny_model(random_text=True)
    ckpt = tmp_path / "ckpt"
    save_model(ckpt, model, meta)
    photos = tmp_path / "in"
    (photos / "sub").mkdir(parents=True)
    for k, rel in enumerate(("a.jpg", "sub/a.jpg", "b.jpg")):
        assert cv2.imwrite(str(photos / rel), cv2.cvtColor(draw_fake_fundus(200, seed=k), cv2.COLOR_RGB2BGR))
    return ckpt, photos


def _index(out: Path) -> list[dict[str, str]]:
    with open(out / "maps.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_explain_again_on_one_photograph_keeps_its_maps_name(tmp_path: Path) -> None:
    """``explain ck in/`` named ``in/a.jpg``'s map ``a-<hash>_sites.png`` (two photographs are called a.jpg);
    ``explain ck in/a.jpg`` then drew the same photograph again as ``a_sites.png``, two maps of one photograph and
    maps.csv listing it twice."""
    from uopsl.train.explain import explain_inputs

    ckpt, photos = _explain_setup(tmp_path)
    out = tmp_path / "maps"
    first = explain_inputs(ckpt, [str(photos)], out)
    assert len(first.written) == 3
    before = sorted(p.name for p in out.glob("*.png"))
    again = explain_inputs(ckpt, [str(photos / "a.jpg")], out)
    assert sorted(p.name for p in out.glob("*.png")) == before
    assert [Path(d).name for _, d in again.written] == [Path(d).name for s, d in first.written
                                                        if Path(s) == photos / "a.jpg"]
    sources = [r["source"] for r in _index(out)]
    assert len(sources) == len(set(sources)) == 3


def test_explain_interrupted_keeps_the_index_of_the_maps_it_wrote(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during ``explain`` printed "aborted" and left maps with hashed names but no maps.csv to say which
    photograph each shows (it was written once, at the end)."""
    import uopsl.runtime.overlay as overlay
    from uopsl.train.explain import explain_inputs

    ckpt, photos = _explain_setup(tmp_path)
    calls = {"n": 0}
    real = overlay.render_overlay

    def stop_on_the_second_photograph(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > len(TINY_CLASSES):  # the first photograph's panels are drawn, then Ctrl-C
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(overlay, "render_overlay", stop_on_the_second_photograph)
    out = tmp_path / "maps"
    with pytest.raises(KeyboardInterrupt) as err:
        explain_inputs(ckpt, [str(photos)], out)
    assert str(err.value).startswith(f"interrupted: 1 of 3 maps written to {out} (listed in maps.csv)")
    index = _index(out)
    assert len(index) == 1 and (out / index[0]["png"]).is_file()
    assert sorted(p.name for p in out.glob("*.png")) == [index[0]["png"]]


def test_a_table_with_some_empty_patient_cells_is_told_to_fill_them(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The warning for images without a patient said "Give the table a patient column" to a table that has one,
    where only some rows left the cell empty."""
    import logging

    from fixtures_data import write_csv, write_image
    from uopsl.train.commands.common import load_source

    rows: list[list[object]] = [[f"img/{i}.png", "normal" if i % 2 else "dr", "" if i < 3 else f"P{i}"]
                                for i in range(20)]
    for r in rows:
        write_image(tmp_path / str(r[0]))
    table = write_csv(tmp_path / "t.csv", ["path", "label", "patient"], rows)
    with caplog.at_level(logging.WARNING):
        load_source(f"csv:{table}:split=test")
    assert "3 of 20 images name no patient" in caplog.text and "Fill in their patient cells" in caplog.text
    assert "Give the table a patient column" not in caplog.text


def test_a_short_row_is_said_to_end_early_not_to_have_an_empty_cell(tmp_path: Path) -> None:
    """A row with fewer fields than the header read "column 'label' is empty" (the cell is not empty: it is not
    there, often a line broken in two)."""
    from uopsl.runtime.errors import DataError
    from uopsl.train.datasets.core import read_table

    table = tmp_path / "t.csv"
    table.write_text("path,patient,label\nimg/0.png,P0,normal\nimg/1.png,P1\n", encoding="utf-8")
    _, rows = read_table(table, ["path", "label"])
    assert rows[0].require("label") == "normal"
    with pytest.raises(DataError, match=r"row 2.*the row has 2 field\(s\) and ends before column 'label'"):
        rows[1].require("label")
