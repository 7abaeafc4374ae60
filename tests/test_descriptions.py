"""uopsl.train.descriptions: coverage of the dictionary and the user class-file loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uopsl.runtime.errors import ConfigError
from uopsl.train import descriptions as D

REQUIRED = (
    "normal", "dr", "npdr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr", "referable_dr", "dme",
    "amd", "early_amd", "late_amd", "glaucoma", "cataract", "pathologic_myopia", "rp", "macular_hole", "csc",
    "rvo", "hypertensive_retinopathy", "cnv", "drusen", "dme_cysts", "subretinal_fluid", "erm",
)
SYNTHETIC = ("normal", "dr", "dme", "amd", "glaucoma", "rp", "macular_hole")
TVHL = ("normal", "npdr", "pdr", "dme")


def test_required_classes_are_covered() -> None:
    assert set(REQUIRED) <= set(D.names())
    for name in SYNTHETIC + TVHL:
        assert D.get(name).name == name


@pytest.mark.parametrize("name", D.names())
def test_each_builtin_class_is_well_formed(name: str) -> None:
    d = D.get(name)
    assert len(d.phrases) >= 3
    assert len(d.modalities) == len(d.phrases) and set(d.modalities) <= set(D.MODALITIES)
    # both sides can build a prototype from phrases written for them (no fallback needed)
    assert d.modality_phrases("fundus", fallback=False) and d.modality_phrases("oct", fallback=False)
    assert d.display and d.display[0].isupper()
    assert all(p == p.strip() and len(p.split()) >= 3 for p in d.phrases)


def test_no_duplicate_names_or_phrases_across_dictionary() -> None:
    assert len(set(D.names())) == len(D.names())
    phrases = [p.lower() for n in D.names() for p in D.get(n).phrases]
    assert len(set(phrases)) == len(phrases)
    assert not set(D.ALIASES) & set(D.names())
    assert set(D.ALIASES.values()) <= set(D.names())


def test_get_normalises_names_and_aliases() -> None:
    assert D.get(" Macular Hole ").name == "macular_hole"
    assert D.get("retinitis-pigmentosa").name == "rp"
    assert D.get("Diabetic macular edema").name == "dme"
    with pytest.raises(ConfigError, match="Did you mean glaucoma"):
        D.get("glaucom")
    with pytest.raises(ConfigError, match="--classes FILE"):
        D.get("tennis_elbow")


def test_modality_phrases() -> None:
    d = D.DiseaseDescription("x", "X", ("a b c", "d e f", "g h i"), ("fundus", "both", "fundus"))
    assert d.fundus_phrases == ("a b c", "d e f", "g h i")
    assert d.oct_phrases == ("d e f",)
    only_fundus = D.DiseaseDescription("y", "Y", ("a b c",), ("fundus",))
    assert only_fundus.modality_phrases("oct") == ("a b c",)  # fallback: all phrases
    assert only_fundus.modality_phrases("oct", fallback=False) == ()
    with pytest.raises(ConfigError, match="'fundus' or 'oct'"):
        d.modality_phrases("both")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("Bad Name", "X", ("p",), ("both",)), "not valid"),
        (("x", "X", (), ()), "no phrases"),
        (("x", "X", ("p", "q"), ("both",)), "one modality per phrase"),
        (("x", "X", ("p",), ("retina",)), "expected one of"),
        (("x", "X", ("  ",), ("both",)), "non-empty string"),
        (("x", "X", ("Same phrase", "same  phrase"), ("both", "oct")), "given twice"),
        (("x", "", ("p",), ("both",)), "display"),
    ],
)
def test_description_validation(args: tuple, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=match):
        D.DiseaseDescription(*args)


# --------------------------------------------------------------------------- user files

TOML_OK = """
[[classes]]
name = "dme"

[[classes]]
name = "Retinal detachment"
phrases = [
  "grey, elevated retina with undulating folds",
  { text = "neurosensory retina lifted off the pigment epithelium", modality = "oct" },
]

[[classes]]
name = "glaucoma"
display = "Glaucomatous optic neuropathy"
phrases = ["deep excavation of the optic cup"]
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_classes_toml(tmp_path: Path) -> None:
    got = D.load_classes(_write(tmp_path, "classes.toml", TOML_OK))
    assert [d.name for d in got] == ["dme", "retinal_detachment", "glaucoma"]
    assert got[0] == D.get("dme")  # built-in by name
    rd = got[1]
    assert rd.display == "Retinal detachment" and rd.modalities == ("both", "oct")
    assert rd.oct_phrases == rd.phrases and rd.fundus_phrases == ("grey, elevated retina with undulating folds",)
    assert got[2].phrases == ("deep excavation of the optic cup",) and got[2].display.startswith("Glaucomatous")


def test_load_classes_json_round_trip(tmp_path: Path) -> None:
    descs = [D.get("rp"), D.get("csc")]
    p = _write(tmp_path, "c.json", json.dumps({"classes": [d.to_dict() for d in descs]}))
    assert list(D.load_classes(p)) == descs
    bare = _write(tmp_path, "bare.json", json.dumps([{"name": "new_thing", "phrases": ["a b c"]}]))
    assert D.load_classes(bare)[0].display == "New thing"


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("c.toml", '[[classes]]\nname = "x"\nphrases = []\n', "'phrases' is empty"),
        ("c.toml", '[[classes]]\nname = "dme"\nphrases = []\n', "drop the key"),
        ("c.toml", '[[classes]]\nname = "a"\nphrases = ["p q"]\n[[classes]]\nname = "A"\nphrases = ["r s"]\n',
         "already defined by class #1"),
        ("c.toml", '[[classes]]\nname = "rp"\n[[classes]]\nname = "retinitis pigmentosa"\n', "already defined"),
        ("c.toml", '[[classes]]\nname = "brand_new"\n', "not a built-in class"),
        ("c.toml", '[[classes]]\nname = "x"\nphrase = ["p"]\n', r"unknown keys \['phrase'\]"),
        ("c.toml", '[[classes]]\nname = "x"\nphrases = [{text = "p", modality = "retina"}]\n', "modality must be"),
        ("c.toml", '[[classes]]\nname = "x"\nphrases = [""]\n', "non-empty string"),
        ("c.toml", '[[classes]]\nname = "x"\nphrases = ["p q", "P q"]\n', "given twice"),
        ("c.toml", '[[classes]]\nname = "9x"\nphrases = ["p"]\n', "not valid"),
        ("c.toml", '[[classes]]\nname = "x"\nphrases = "p"\n', "must be a list"),
        ("c.toml", "classes = [\n", "not valid TOML"),
        ("c.toml", 'other = 1\n', "unknown top-level keys"),
        ("c.toml", '', "non-empty list of classes"),
        ("c.json", '{"classes": [}', "not valid JSON"),
        ("c.json", '[3]', "expected a table"),
        ("c.yaml", 'classes: []', "end in .toml or .json"),
    ],
)
def test_load_classes_errors(tmp_path: Path, name: str, text: str, match: str) -> None:
    p = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=match) as info:
        D.load_classes(p)
    assert name in str(info.value) or name.endswith(".yaml")


def test_load_classes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        D.load_classes(tmp_path / "nope.toml")


def test_shared_phrase_across_classes_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _write(tmp_path, "c.json", json.dumps([{"name": "a", "phrases": ["x y z"]}, {"name": "b", "phrases": ["x y z"]}]))
    assert len(D.load_classes(p)) == 2
    assert "describes both 'a' and 'b'" in caplog.text


def test_descriptions_import_no_torch() -> None:
    code = "import sys, uopsl.train.descriptions; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_class_file_operating_points(tmp_path: Path) -> None:
    text = ('[[classes]]\nname = "dme"\nthreshold = 0.3\n'
            '[[classes]]\nname = "Retinitis Pigmentosa"\nreferable = true\nthreshold = 0.62\n'
            '[[classes]]\nname = "new_thing"\nphrases = ["a b c"]\nreferable = false\n'
            '[[classes]]\nname = "glaucoma"\n')
    p = _write(tmp_path, "c.toml", text)
    points = D.load_operating_points(p)
    assert points == {"dme": D.OperatingPointOverride(0.3, None), "rp": D.OperatingPointOverride(0.62, True),
                      "new_thing": D.OperatingPointOverride(None, False)}
    assert [d.name for d in D.load_classes(p)] == ["dme", "rp", "new_thing", "glaucoma"]  # descriptions unaffected


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ('threshold = 1.0', "between 0 and 1"),
        ('threshold = 0', "between 0 and 1"),
        ('threshold = "0.5"', "between 0 and 1"),
        ('threshold = true', "between 0 and 1"),
        ('referable = "yes"', "must be true or false"),
        ('referable = 1', "must be true or false"),
    ],
)
def test_class_file_operating_point_errors(tmp_path: Path, entry: str, match: str) -> None:
    p = _write(tmp_path, "c.toml", f'[[classes]]\nname = "dme"\n{entry}\n')
    with pytest.raises(ConfigError, match=match) as info:
        D.load_operating_points(p)
    assert "c.toml" in str(info.value) and "'dme'" in str(info.value)
