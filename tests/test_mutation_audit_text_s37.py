"""Mutation audit (session 37) of the text side: the phrase encoder's cache, class banks and class files.

Each test pins a behaviour a single-point bug in ``train/text.py``, ``train/bank.py`` or
``train/descriptions.py`` once slipped past the rest of the suite (results.md section 7 names the bugs).
The encoder is a stand-in for sentence-transformers that gives each phrase its own vector (a hash of the
phrase), so expected embeddings are computed by hand in the test.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uopsl.runtime.errors import ConfigError
from uopsl.train import text


def _vector(phrase: str) -> np.ndarray:
    """The stand-in's embedding of ``phrase``: 8 numbers from its sha256, unit length."""
    raw = np.frombuffer(hashlib.sha256(phrase.encode()).digest()[:8], np.uint8).astype(np.float32) - 127.5
    return raw / np.linalg.norm(raw)


class _HashModel:
    """Stands in for SentenceTransformer: one fixed unit vector per phrase; counts the phrases it encodes."""

    encoded: list[str] = []

    def __init__(self, folder: str, device: str = "cpu") -> None:
        pass

    def encode(self, phrases: Sequence[str], **kwargs: Any) -> np.ndarray:
        type(self).encoded.extend(phrases)
        return np.stack([_vector(p) for p in phrases])

    def get_sentence_embedding_dimension(self) -> int:
        return 8


@pytest.fixture
def encoder_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import sentence_transformers

    monkeypatch.setattr(text, "_LOADED", {})
    monkeypatch.setattr(_HashModel, "encoded", [])
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _HashModel)
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (folder / "weights.bin").write_bytes(b"1234")
    return folder


def test_phrases_that_differ_only_in_case_get_their_own_embeddings(encoder_folder: Path, tmp_path: Path) -> None:
    """The cache key is the phrase as written: "DME" and "dme" are two phrases to the encoder."""
    out = text.TextEncoder(str(encoder_folder), tmp_path / "cache").encode(["DME", "dme"])
    assert np.allclose(out[0], _vector("DME"), atol=1e-6) and np.allclose(out[1], _vector("dme"), atol=1e-6)


def test_an_encoder_retrained_in_place_gets_a_fresh_cache(encoder_folder: Path, tmp_path: Path) -> None:
    """Weights replaced by others of the same size (only the file time differs) must not be served the old
    weights' embeddings from the cache: the phrase is encoded again."""
    cache = tmp_path / "cache"
    text.TextEncoder(str(encoder_folder), cache).encode(["macular oedema"])
    text.TextEncoder(str(encoder_folder), cache).encode(["macular oedema"])
    assert _HashModel.encoded == ["macular oedema"]  # unchanged folder: from the cache
    st = (encoder_folder / "weights.bin").stat()
    os.utime(encoder_folder / "weights.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    text.TextEncoder(str(encoder_folder), cache).encode(["macular oedema"])
    assert _HashModel.encoded == ["macular oedema", "macular oedema"]
    assert len(list(cache.glob("*.npz"))) == 2  # one cache file per version of the folder


def test_two_encoder_folders_with_the_same_files_do_not_share_a_cache(encoder_folder: Path, tmp_path: Path) -> None:
    """Two copies of a folder (same names, sizes and times) may hold different weights after one is edited
    and set back in time; the folder's own path is part of the cache's key, so each encodes its phrases."""
    twin = tmp_path / "other" / "enc"
    twin.mkdir(parents=True)
    for name in ("modules.json", "weights.bin"):
        src = encoder_folder / name
        (twin / name).write_bytes(src.read_bytes())
        st = src.stat()
        os.utime(twin / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache = tmp_path / "cache"
    text.TextEncoder(str(encoder_folder), cache).encode(["drusen"])
    text.TextEncoder(str(twin), cache).encode(["drusen"])
    assert _HashModel.encoded == ["drusen", "drusen"]


def test_a_cache_folder_that_cannot_be_written_is_a_warning_not_a_failure(
        encoder_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="uopsl.train.text"):
        out = text.TextEncoder(str(encoder_folder), blocker).encode(["cotton wool spots"])
    assert np.allclose(out[0], _vector("cotton wool spots"), atol=1e-6)
    assert any("cannot write text cache" in r.getMessage() for r in caplog.records)


def test_encoding_nothing_and_a_class_without_phrases_are_clear_errors(encoder_folder: Path, tmp_path: Path) -> None:
    enc = text.TextEncoder(str(encoder_folder), tmp_path / "cache")
    with pytest.raises(ConfigError, match="no phrases to encode"):
        enc.encode([])
    with pytest.raises(ConfigError, match="every class needs at least one description phrase"):
        enc.prototypes([["hard exudates"], []])


def test_a_folder_with_config_json_only_is_a_sentence_transformers_folder(tmp_path: Path) -> None:
    """A plain transformers folder (config.json, no modules.json) is accepted, as the message promises."""
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert text.TextEncoder(str(folder), tmp_path / "cache").model_dir == folder
    with pytest.raises(ConfigError, match="neither"):
        text.TextEncoder(str(tmp_path / "cache"), tmp_path / "cache")


# -- class banks -------------------------------------------------------------------------------------------
def _class_file(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def test_a_class_file_describes_a_class_asked_for_by_another_spelling(tmp_path: Path) -> None:
    """Asked for as ``diabetic_macular_edema`` (a folder's name), described in the file as ``dme``: the file's
    phrases win over the built-in ones (the file is keyed by canonical names)."""
    from uopsl.train.bank import resolve

    f = _class_file(tmp_path / "c.toml", '[[classes]]\nname = "dme"\nphrases = ["our own oedema phrase"]\n')
    (desc,) = resolve(["diabetic_macular_edema"], f)
    assert desc.phrases == ("our own oedema phrase",)


def test_a_class_neither_in_the_file_nor_built_in_names_the_file(tmp_path: Path) -> None:
    from uopsl.train.bank import resolve

    f = _class_file(tmp_path / "c.toml", '[[classes]]\nname = "dme"\n')
    with pytest.raises(ConfigError, match=r"'retinal_detachment' is neither described in .*c\.toml \(which "
                                          r"describes dme\) nor built in: add it to that file"):
        resolve(["retinal_detachment"], f)


def test_a_bank_marks_as_seen_exactly_the_classes_it_is_told(encoder_folder: Path, tmp_path: Path) -> None:
    """``seen`` None: every class was trained on; ``()`` (a zero-shot file's default): none was; a list: those.
    The seen flags decide which classes zero-shot reports as unseen."""
    from uopsl.train.bank import build, from_file

    cache = tmp_path / "cache"
    names = ["dme", "rp"]
    assert build(names, text_model=str(encoder_folder), cache_dir=cache).seen == (True, True)
    assert build(names, text_model=str(encoder_folder), cache_dir=cache, seen=()).seen == (False, False)
    assert build(names, text_model=str(encoder_folder), cache_dir=cache, seen=["dme"]).seen == (True, False)
    f = _class_file(tmp_path / "c.toml", '[[classes]]\nname = "dme"\n[[classes]]\nname = "rp"\n')
    assert from_file(f, text_model=str(encoder_folder), cache_dir=cache).seen == (False, False)


# -- class files ------------------------------------------------------------------------------------------
def test_classes_giving_phrases_are_those_with_phrases_by_canonical_name(tmp_path: Path) -> None:
    """What a re-export reads to decide which trained classes the file describes anew: only entries that give
    ``phrases``, under their canonical name (a long form given with phrases is the trained ``dme``; were it
    missed, the file's new phrases would be dropped silently for the old prototype)."""
    from uopsl.train.descriptions import classes_giving_phrases

    f = _class_file(tmp_path / "c.toml", '[[classes]]\nname = "Diabetic macular edema"\nphrases = ["new words"]\n'
                                         '[[classes]]\nname = "rp"\n')
    assert classes_giving_phrases(f) == frozenset({"dme"})


def test_a_built_in_class_listed_with_a_display_name_only_keeps_its_phrases_and_takes_the_name(
        tmp_path: Path) -> None:
    from uopsl.train.descriptions import get, load_classes

    f = _class_file(tmp_path / "c.toml", '[[classes]]\nname = "dme"\ndisplay = "Diabetic oedema (DMO)"\n')
    (d,) = load_classes(f)
    assert d.display == "Diabetic oedema (DMO)" and d.phrases == get("dme").phrases


def test_a_trained_class_gets_a_readable_display_name() -> None:
    """The report shows the display name: ``macular_hole`` reads "Macular hole"."""
    from uopsl.train.descriptions import trained_description

    d = trained_description("macular_hole", ["a full-thickness defect at the fovea"])
    assert d.display == "Macular hole" and d.modalities == ("both",)


def test_phrases_in_a_class_file_are_trimmed(tmp_path: Path) -> None:
    """A phrase typed with stray spaces is the same phrase: a trained class's phrases restated with them must
    compare equal to the trained ones (or the re-export would demand a new threshold)."""
    from uopsl.train.descriptions import load_classes

    f = _class_file(tmp_path / "c.json", '{"classes": [{"name": "rd", "phrases": ["  grey detached retina  ", '
                                         '{"text": " folds ", "modality": "oct"}]}]}')
    (d,) = load_classes(f)
    assert d.phrases == ("grey detached retina", "folds")


def test_a_class_file_must_be_toml_or_json_by_its_name(tmp_path: Path) -> None:
    from uopsl.train.descriptions import load_classes

    f = _class_file(tmp_path / "classes.txt", '{"classes": [{"name": "dme"}]}')
    with pytest.raises(ConfigError, match=r"class files must end in \.toml or \.json; got '\.txt'"):
        load_classes(f)
