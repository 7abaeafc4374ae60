"""Mutation audit (session 43) of ``uopsl.train.datasets.core``.

Single-point mutants (C01..C28: reversed or loosened comparisons, dropped conditions, dropped counts, swapped
and/or) were applied one at a time to a scratch copy of ``train/datasets/core.py`` and run against the dataset
reader tests (test_data, test_dataset_readers_review, test_dataset_specs, test_duplicates, test_user_text and the
session-42 audit). Against those, C02, C04, C07, C10 and C11 survived (C01, C03, C05, C06, C08, C09 were caught);
C12..C28 could not be run against them before the session deadline. Every mutant C01..C28 fails at least one test
here (checked one by one); each docstring names its mutants. Expected values are worked out by hand in each test.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train.datasets.core import (
    Collector,
    DatasetSource,
    LabelSpace,
    Row,
    Sample,
    StemIndex,
    fingerprint,
    order_classes,
    parse_eye,
    read_table,
    scan_class_folders,
    semicolon_hint,
)


def _img(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_sample_refuses_an_eye_outside_left_right() -> None:
    """C01: a Sample with eye='OD' (not normalised) was accepted, so per-eye splits would see a third eye."""
    with pytest.raises(ConfigError, match="eye"):
        Sample(Path("a.png"), ("dr",), eye="OD")


def test_label_space_refuses_empty_and_twice_repeated_classes() -> None:
    """C02, C03: an empty space or a class named twice was accepted; encoded vectors would not map to one class."""
    with pytest.raises(ConfigError, match="at least one"):
        LabelSpace(())
    with pytest.raises(ConfigError, match="repeated"):
        LabelSpace(("dr", "normal", "dr"))


def test_single_label_encode_refuses_zero_classes_and_strict_refuses_unknown() -> None:
    """C04, C05: a single-label sample with no class encoded as an all-zero target, and an unknown name was
    silently dropped under strict=True: training on wrong targets without a word."""
    space = LabelSpace(("normal", "dr"), multi_label=False)
    with pytest.raises(DataError, match="exactly one"):
        space.encode(())
    with pytest.raises(DataError, match="not in the label space"):
        LabelSpace(("normal", "dr")).encode(("amd",))
    assert LabelSpace(("normal", "dr")).encode(("amd", "dr"), strict=False).tolist() == [0.0, 1.0]


def test_decode_threshold_is_inclusive_and_length_checked() -> None:
    """C06, C07: a score exactly at the threshold was not reported, and a too-short vector decoded silently."""
    space = LabelSpace(("normal", "dr", "amd"))
    assert space.decode(np.array([0.5, 0.49, 0.7])) == ("normal", "amd")
    with pytest.raises(ConfigError, match="2 entries"):
        space.decode(np.array([0.1, 0.9]))


def _source(tmp_path: Path) -> DatasetSource:
    samples = tuple(
        Sample(_img(tmp_path / f"{i}.png", b"x" * (i + 1)), ("dr",) if i % 2 else ("normal",), patient=p)
        for i, p in enumerate(["p1", "p1", "p2", None])
    )
    sizes = (1, 2, 3, 4)
    space = LabelSpace(("normal", "dr"))
    return DatasetSource("d", tmp_path, samples, space, fingerprint(samples, tmp_path, sizes), sizes,
                         links=((0, 1), (2, 3)))


def test_subset_range_links_and_patient_count(tmp_path: Path) -> None:
    """C08, C09, C10: index N passed the range check (IndexError), links were lost on a subset (copies of one
    photograph could land on both sides of a later split) and describe() counted images, not patients."""
    src = _source(tmp_path)
    with pytest.raises(ConfigError, match="out of range"):
        src.subset([4])
    sub = src.subset([3, 2, 0])
    assert sub.links == ((1, 0),)
    assert src.describe()["n_patients"] == 2


def test_fingerprint_hashes_patient_and_checks_sizes(tmp_path: Path) -> None:
    """C11, C12: moving an image to another patient kept the fingerprint (a changed split went unnoticed), and a
    sizes list of the wrong length was zipped short instead of refused."""
    p = _img(tmp_path / "a.png")
    a = fingerprint([Sample(p, ("dr",), patient="p1")], tmp_path, [1])
    b = fingerprint([Sample(p, ("dr",), patient="p2")], tmp_path, [1])
    assert a != b
    with pytest.raises(ConfigError, match="2 sizes for 1 samples"):
        fingerprint([Sample(p, ("dr",))], tmp_path, [1, 1])


def test_row_integer_refuses_values_outside_allowed(tmp_path: Path) -> None:
    """C13: an integer grade outside the allowed set (e.g. DR grade 7) was accepted as a label."""
    row = Row(tmp_path / "t.csv", 1, 2, {"g": "7", "h": "2.0", "k": "1.5"})
    assert row.integer("h", [0, 1, 2]) == 2
    with pytest.raises(DataError, match="expected one of"):
        row.integer("g", [0, 1, 2])
    with pytest.raises(DataError, match="expected one of"):
        row.integer("k", [0, 1, 2])


def test_read_table_refuses_one_extra_field(tmp_path: Path) -> None:
    """C14: a row with one unquoted comma too many (a path with a comma) was read with its tail cut off."""
    t = tmp_path / "t.csv"
    t.write_text("path,label\na.png,dr,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="3 fields but the header has 2 columns"):
        read_table(t, ["path", "label"])


def test_semicolon_hint_only_for_one_semicolon_column() -> None:
    """C15: a normal multi-column header got the 'semicolon-separated' error instead of the missing-column one."""
    assert semicolon_hint("t.csv", ["path", "label"]) is None
    assert semicolon_hint("t.csv", ["a;b"]) is not None
    assert semicolon_hint("t.csv", ["path"]) is None


def test_single_label_collector_refuses_a_row_without_label(tmp_path: Path) -> None:
    """C16: a single-label task accepted a sample with no label at all."""
    c = Collector("d", tmp_path, LabelSpace(("normal", "dr"), multi_label=False))
    with pytest.raises(DataError, match="0 labels"):
        c.add(Sample(_img(tmp_path / "a.png"), ()), "row 1")


def test_repeated_row_with_other_eye_is_an_error(tmp_path: Path) -> None:
    """C17: two rows naming one image as left and right eye: the second was dropped silently as a duplicate."""
    p = _img(tmp_path / "a.png")
    c = Collector("d", tmp_path, None)
    c.add(Sample(p, ("dr",), eye="left"), "row 1")
    with pytest.raises(DataError, match="eye 'right' here, 'left' there"):
        c.add(Sample(p, ("dr",), eye="right"), "row 2")


def test_missing_error_counts_two_missing_and_names_the_first(tmp_path: Path) -> None:
    """C18, C25: with two missing images the error left out '2 of 3 rows', or named the last, not the first."""
    c = Collector("d", tmp_path, None)
    c.add(Sample(_img(tmp_path / "ok.png"), ("dr",)), "row 1")
    c.add(Sample(tmp_path / "gone1.png", ("dr",)), "row 2")
    c.add(Sample(tmp_path / "gone2.png", ("dr",)), "row 3")
    with pytest.raises(DataError) as info:
        c.build({})
    msg = str(info.value)
    assert msg.startswith("row 2: image file") and "gone1.png" in msg
    assert "2 of 3 rows name a missing image" in msg


def test_skip_counts_missing_images(tmp_path: Path) -> None:
    """C27: missing='skip' left rows out without counting them in dropped['missing_image']."""
    c = Collector("d", tmp_path, None, missing="skip")
    c.add(Sample(_img(tmp_path / "ok.png"), ("dr",)), "row 1")
    assert c.add(Sample(tmp_path / "gone.png", ("dr",)), "row 2") is False
    assert c.build({}).dropped == {"missing_image": 1}


def test_two_spellings_of_one_class_are_refused(tmp_path: Path) -> None:
    """C19: 'DR' and 'dr' trained as two classes with one description."""
    c = Collector("d", tmp_path, None)
    c.add(Sample(_img(tmp_path / "a.png"), ("dr",)), "row 1")
    c.add(Sample(_img(tmp_path / "b.png"), ("DR",)), "row 2")
    with pytest.raises(ConfigError, match="spelled differently"):
        c.build({})


def test_class_folder_scan_skips_junk_counts_nested_and_refuses_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """C20, C21, C26: Thumbs.db was warned about as a skipped file, files in sub-folders were not counted in
    dropped, and a class folder outside the allowed labels was read."""
    _img(tmp_path / "dr" / "a.png")
    _img(tmp_path / "dr" / "Thumbs.db")
    _img(tmp_path / "dr" / "sub" / "b.png")
    _img(tmp_path / "dr" / "sub" / "c.png")
    counter: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING):
        got = list(scan_class_folders(tmp_path, None, "d", counter))
    dropped = dict(counter)
    assert [(n, p.name, s) for n, p, s in got] == [("dr", "a.png", 1)]
    assert dropped == {"file_in_subfolder": 2}
    assert "type not read" not in caplog.text
    with pytest.raises(DataError, match="unknown label 'dr'"):
        list(scan_class_folders(tmp_path, ["normal"], "d"))


def test_stem_index_finds_by_stem_of_a_name_with_other_extension(tmp_path: Path) -> None:
    """C22: 'x.jpg' listed in a table while the mirror holds 'x.png' was reported missing."""
    _img(tmp_path / "IM_1.png")
    assert StemIndex(tmp_path).find("im_1.jpg") == tmp_path / "IM_1.png"


def test_parse_eye_empty_unknown_and_lenient() -> None:
    """C23, C24: an empty eye cell became 'left', and an unknown eye word was not refused (or lenient mode raised)."""
    assert parse_eye("  ") is None
    assert parse_eye("OS") == "left"
    with pytest.raises(DataError, match="not recognised"):
        parse_eye("both", where="t.csv")
    assert parse_eye("both", strict=False) is None


def test_order_classes_vocabulary_first_then_alphabetical() -> None:
    """C28: user class names sorted before the vocabulary, changing the index of every class in the model."""
    assert order_classes(["zeta", "dr", "alpha", "normal", "dr"]) == ("normal", "dr", "alpha", "zeta")
