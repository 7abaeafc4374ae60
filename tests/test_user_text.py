"""Text files people write (CSV tables, image lists, class files) are read one way everywhere.

Notepad and Excel's "CSV UTF-8" start UTF-8 files with a byte-order mark; a
legacy code page (Excel's plain "CSV" on Windows) is not UTF-8 at all. Each
reader used to handle these its own way: a class file saved by Notepad was
"not valid JSON", the validation CSV raised a raw UnicodeDecodeError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uopsl.runtime.errors import ConfigError, DataError
from uopsl.runtime.fsio import read_user_text

BOM = b"\xef\xbb\xbf"


def test_read_user_text_strips_the_bom_and_names_what_is_wrong(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_bytes(BOM + "path,label\nä.jpg,dme\n".encode())
    assert read_user_text(p, "table") == "path,label\nä.jpg,dme\n"
    p.write_bytes("path,label\nä.jpg,dme\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"t\.csv: the table is not UTF-8 text \(byte 11: .*save it as UTF-8"):
        read_user_text(p, "table")
    with pytest.raises(DataError, match="missing.csv: table not found; check the path"):
        read_user_text(tmp_path / "missing.csv", "table")
    with pytest.raises(DataError, match="is a folder, expected the table"):
        read_user_text(tmp_path, "table")
    with pytest.raises(ConfigError, match="class file not found"):
        read_user_text(tmp_path / "c.toml", "class file", ConfigError)


def test_a_class_file_saved_with_a_bom_loads(tmp_path: Path) -> None:
    from uopsl.train import descriptions as D

    p = tmp_path / "classes.json"
    p.write_bytes(BOM + json.dumps({"classes": [D.get("rp").to_dict()]}).encode())
    assert [d.name for d in D.load_classes(p)] == ["rp"]
    t = tmp_path / "classes.toml"
    t.write_bytes(BOM + b'[[classes]]\nname = "dme"\n')
    assert [d.name for d in D.load_classes(t)] == ["dme"]
    t.write_bytes('[[classes]]\nname = "dme"\ndisplay = "Ödem"\n'.encode("cp1252"))
    with pytest.raises(ConfigError, match="the class file is not UTF-8 text"):
        D.load_classes(t)


def test_dataset_tables_with_a_bom_or_a_code_page(tmp_path: Path) -> None:
    from uopsl.train.datasets.core import read_table

    p = tmp_path / "labels.csv"
    p.write_bytes(BOM + b"path , label\n a.jpg , dme \n\n")
    header, rows = read_table(p, ["path", "label"])
    assert header == ["path", "label"] and [r.values for r in rows] == [{"path": "a.jpg", "label": "dme"}]
    p.write_bytes("path,label\nÖ.jpg,dme\n".encode("cp1252"))
    with pytest.raises(DataError, match="the CSV table is not UTF-8 text"):
        read_table(p, ["path", "label"])


def test_validation_csv_with_a_bom_or_a_code_page(tmp_path: Path) -> None:
    from uopsl.train.commands.validate import _csv_records

    p = tmp_path / "v.csv"
    p.write_bytes(BOM + b"path\na.jpg\nb.jpg\n")
    records, labels = _csv_records(p)
    assert labels is None and [Path(r.path).name for r in records] == ["a.jpg", "b.jpg"]
    p.write_bytes("path\nÖ.jpg\n".encode("cp1252"))
    with pytest.raises(DataError, match="the validation CSV is not UTF-8 text"):
        _csv_records(p)


def test_a_screening_list_in_a_code_page_is_one_error(tmp_path: Path) -> None:
    """A list saved in a Windows code page gave one 'missing file' row per non-ASCII name (M\ufffdller.png)."""
    from uopsl.runtime.inputs import iter_inputs

    good = tmp_path / "list.txt"
    good.write_bytes(BOM + "a.jpg\nMüller.png\n".encode())
    assert [Path(it.source).name for it in iter_inputs([good])] == ["a.jpg", "Müller.png"]
    bad = tmp_path / "old.txt"
    bad.write_bytes("a.jpg\nMüller.png\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=r"old\.txt: the image list is not UTF-8 text \(invalid"):
        list(iter_inputs([bad]))


def test_a_utf16_list_without_a_bom_is_one_error(tmp_path: Path) -> None:
    from uopsl.runtime.inputs import iter_inputs

    p = tmp_path / "u16.txt"
    p.write_bytes("a.jpg\nb.jpg\n".encode("utf-16-le"))
    with pytest.raises(ConfigError, match=r"u16\.txt, line 1: the image list holds NUL characters"):
        list(iter_inputs([p]))


def test_an_unlabelled_validation_csv_keeps_its_patient_column(tmp_path: Path) -> None:
    # A device's unlabelled photographs with their patients: the patient-level bootstrap and bounds need them.
    # The column was read only beside a label column, so these images counted as one patient each.
    from uopsl.train.commands.validate import _csv_records

    p = tmp_path / "v.csv"
    p.write_text("path,patient\na.jpg,p1\nb.jpg,p1\nc.jpg,\nd.jpg, p2 \n", encoding="utf-8")
    records, labels = _csv_records(p)
    assert labels is None and all(r.labels is None for r in records)
    assert [(Path(r.path).name, r.patient) for r in records] == [("a.jpg", "p1"), ("b.jpg", "p1"), ("c.jpg", None),
                                                                 ("d.jpg", "p2")]
    p.write_text("path\na.jpg\n", encoding="utf-8")
    assert [r.patient for r in _csv_records(p)[0]] == [None]

