"""The parts a dataset spec names (split=, fold=): one patient, one part, whatever else the spec selects
(a review found TVHL patients split across task=, modality= and the stages they feed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fixtures_data import write_csv, write_image
from uopsl.runtime.errors import ConfigError
from uopsl.train.commands.common import check_classes_in_data, load_source


def _patients(spec: str) -> set[str]:
    return {s.patient for s in load_source(spec).samples if s.patient is not None}


def test_a_patient_is_in_one_part_whatever_task_and_modality_select(tvhl_dir: Path) -> None:
    """Before: 13 of 26 patients of task=referable_dr,split=test were in task=four_class,split=train, and 17 had
    their OCT scans in modality=oct,split=train."""
    test = _patients(f"tvhl:{tvhl_dir}:task=referable_dr,split=test")
    assert len(test) > 10
    for other in ("task=four_class,split=train", "task=four_class,split=val", "modality=oct,split=train",
                  "task=dme,modality=both,split=train", "task=referable_dr,split=train"):
        assert not test & _patients(f"tvhl:{tvhl_dir}:{other}"), other
    assert test <= _patients(f"tvhl:{tvhl_dir}:task=four_class,modality=both,split=test")
    folds = [_patients(f"tvhl:{tvhl_dir}:task=four_class,fold={i}/3") for i in (1, 2, 3)]
    for i in (1, 2, 3):
        held = _patients(f"tvhl:{tvhl_dir}:task=referable_dr,fold={i}/3")
        assert held <= folds[i - 1] and not held & _patients(f"tvhl:{tvhl_dir}:modality=oct,notfold={i}/3")
    # split= and fold= draw apart (one number for both made split=train,fold=1/2 about 5:2)
    train = load_source(f"tvhl:{tvhl_dir}:split=train")
    half = load_source(f"tvhl:{tvhl_dir}:split=train,fold=1/2")
    assert 0.35 < len(half) / len(train) < 0.65


def _table(root: Path, rows: list[list[object]]) -> Path:
    for r in rows:
        write_image(root / str(r[0]))
    return write_csv(root / "t.csv", ["path", "label"], rows)


def test_a_table_without_patients_splits_by_file_not_by_row_and_says_so(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    rows: list[list[object]] = [[f"img/{i}.png", "normal" if i % 2 else "dr"] for i in range(40)]
    a = _table(tmp_path / "a", rows)
    b = _table(tmp_path / "b", rows[::-1])  # the same table sorted otherwise (Excel)
    with caplog.at_level(logging.WARNING):
        part_a = {s.path.name for s in load_source(f"csv:{a}:split=test").samples}
    assert "40 of 40 images name no patient" in caplog.text
    assert part_a == {s.path.name for s in load_source(f"csv:{b}:split=test").samples}


def test_seeds_without_their_selector_and_empty_parts_are_refused(tmp_path: Path) -> None:
    table = _table(tmp_path, [["img/0.png", "normal"], ["img/1.png", "dr"]])
    with pytest.raises(ConfigError, match="split_seed= seeds split=, and this spec has none"):
        load_source(f"csv:{table}:split_seed=3")
    with pytest.raises(ConfigError, match="fold_seed= seeds fold= or notfold="):
        load_source(f"csv:{table}:fold_seed=3")
    with pytest.raises(ConfigError, match=r"holds no image \(2 images before it"):
        for seed in range(20):  # two images: some seed leaves the 15 % test part empty
            load_source(f"csv:{table}:split=test,split_seed={seed}")


def test_classes_the_training_data_never_shows_are_refused_and_labels_no_class_takes_are_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fundus = load_source(f"csv:{_table(tmp_path / 'f', [['img/0.png', 'normal'], ['img/1.png', 'dr']])}")
    with pytest.raises(ConfigError, match=r"no training image is labelled DR; DR \(the data has 'dr'\)"):
        check_classes_in_data([(fundus, "fundus")], ["normal", "DR"])
    with caplog.at_level(logging.WARNING):
        check_classes_in_data([(fundus, "fundus")], ["normal"])
        # Classes of the reader's own label space (not named by the user) that the data lacks: said, not refused.
        check_classes_in_data([(fundus, "fundus")], ["normal", "dr", "glaucoma"], named=False)
    assert "label(s) dr (1 images) are no class of the model (normal)" in caplog.text
    assert "is labelled glaucoma: it is trained from the description and negatives only" in caplog.text
    # Pre-training: a class needs a positive in one pool or the other (CNV only in OCT is fine).
    for name in ("0.png", "1.png"):
        write_image(tmp_path / "o" / "img" / name)
    oct_table = write_csv(tmp_path / "o" / "t.csv", ["path", "label", "modality"],
                          [["img/0.png", "cnv", "oct"], ["img/1.png", "normal", "oct"]])
    octs = load_source(f"csv:{oct_table}")
    check_classes_in_data([(fundus, "fundus"), (octs, "oct")], ["normal", "dr", "cnv"])
    with pytest.raises(ConfigError, match="no training image is labelled amd"):
        check_classes_in_data([(fundus, "fundus"), (octs, "oct")], ["normal", "dr", "amd"])
