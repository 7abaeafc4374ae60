"""Column names of a user's own CSV given on the command line (``csv:FILE:path_column=...,label_column=...``).

Before, a table whose columns were not called ``path`` and ``label``/``labels`` could only be read after
renaming its columns or from Python with a :class:`CsvLayout`; the error said so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_data import write_csv, write_image
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.train import data
from uopsl.train.commands.common import load_source


@pytest.fixture
def clinic_csv(tmp_path: Path) -> Path:
    """A table as a clinic's export names it: image_id, diagnosis, pid, side, and a modality column."""
    rows = [[f"img/{i}.png", ("normal", "dr")[i % 2], f"p{i // 2}", ("OD", "OS")[i % 2], "fundus"] for i in range(6)]
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    return write_csv(tmp_path / "export.csv", ["image_id", "diagnosis", "pid", "side", "modality"], rows)


def test_named_columns_read_a_table_made_elsewhere(clinic_csv: Path) -> None:
    src = load_source(f"csv:{clinic_csv}:path_column=image_id,label_column=diagnosis,patient_column=pid,"
                      "eye_column=side")
    assert src.counts() == {"normal": 3, "dr": 3} and not src.label_space.multi_label
    assert [(s.path.name, s.labels, s.patient, s.eye) for s in src.samples[:2]] == [
        ("0.png", ("normal",), "p0", "right"), ("1.png", ("dr",), "p0", "left")]
    # The same as a CsvLayout from Python, and the columns used are recorded in the source's options.
    layout = data.CsvLayout(path_column="image_id", label_column="diagnosis", patient_column="pid",
                            eye_column="side", modality_column="modality")
    assert data.read_csv(clinic_csv, layout).samples == src.samples
    assert src.options["path_column"] == "image_id" and src.options["label_column"] == "diagnosis"


def test_named_0_1_columns_and_joined_names(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    wide = write_csv(tmp_path / "wide.csv", ["file", "DR", "DME"], [["0.png", 1, 0], ["1.png", 1, 1], ["2.png", 0, 0]])
    src = load_source(f"csv:{wide}:path_column=file,label_columns=DR+DME,none_label=normal")
    assert [s.labels for s in src.samples] == [("DR",), ("DR", "DME"), ("normal",)] and src.label_space.multi_label
    joined = write_csv(tmp_path / "joined.csv", ["file", "findings"], [["0.png", "dr|dme"], ["1.png", "normal"]])
    src = load_source(f"csv:{joined}:path_column=file,multi_label_column=findings,separator=|")
    assert [s.labels for s in src.samples] == [("dr", "dme"), ("normal",)]


def test_a_named_label_form_is_not_mixed_with_an_inferred_one(tmp_path: Path) -> None:
    """A table with a 'label' column and the user's own label column: the named one is read, not both (two
    label forms would be a CsvLayout error the user did not cause)."""
    write_image(tmp_path / "0.png", seed=0)
    table = write_csv(tmp_path / "t.csv", ["path", "label", "grade"], [["0.png", "normal", "dr"]])
    assert load_source(f"csv:{table}:label_column=grade").samples[0].labels == ("dr",)


def test_a_named_modality_is_not_overruled_by_a_modality_column(clinic_csv: Path) -> None:
    src = load_source(f"csv:{clinic_csv}:path_column=image_id,label_column=diagnosis,modality=oct")
    assert {s.modality for s in src.samples} == {"oct"}
    assert {s.modality for s in load_source(f"csv:{clinic_csv}:path_column=image_id,label_column=diagnosis")
            .samples} == {"fundus"}


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        # Each names the columns the table has and shows the spec that would read it.
        ("", r"cannot tell the layout from columns \['image_id', 'diagnosis', 'pid', 'side', 'modality'\]; "
             r"expected a 'path' column .* e\.g\. csv:FILE:path_column=image_id,label_column=diagnosis"),
        (":path_column=image", r"path_column 'image' names none of the columns \['image_id'"),
        (":path_column=image_id", r"no label column is named, and none of the columns \['image_id'.* is a 'label'"),
        (":path_column=image_id,label_column=diagnosis,patient_column=patient",
         r"column\(s\) \['patient'\] named in the dataset spec are not in the CSV; columns found: \['image_id'"),
    ],
)
def test_columns_that_do_not_fit_the_table_are_one_error_naming_them(clinic_csv: Path, opts: str,
                                                                     match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_source(f"csv:{clinic_csv}{opts}")


def test_a_misspelt_field_is_refused_with_the_fields_listed(clinic_csv: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_source(f"csv:{clinic_csv}:path_colum=image_id")
    msg = str(err.value)
    assert "no option 'path_colum'" in msg and "path_column, label_column, label_columns" in msg
    with pytest.raises(ConfigError, match="CsvLayout has no field 'path_colum'"):
        data.CsvLayout.infer(["path", "label"], "t.csv", path_colum="x")


def test_a_layout_and_named_columns_together_are_refused(clinic_csv: Path) -> None:
    with pytest.raises(ConfigError, match="both a layout and columns"):
        data.read_csv(clinic_csv, data.CsvLayout(path_column="image_id", label_column="diagnosis"),
                      columns={"patient_column": "pid"})
