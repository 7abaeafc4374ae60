"""Re-exporting a trained model with a class file (new classes without retraining), from a review by a
researcher and a device maker adding a disease."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import ConfigError
from uopsl.train.checkpoint import save_model
from uopsl.train.workflow import new_model, run_export


def _checkpoint(out: Path, classes: tuple[str, ...], head: str = "sigmoid") -> Path:
    model, meta = new_model(classes, backbone="resnet18", init="random", dim=32, sites=2, size=64, head=head, seed=0)
    thr = tuple(0.3 + 0.01 * i for i in range(len(classes)))
    save_model(out, model, replace(meta, stage="finetune", thresholds=thr))
    return out


def _toml(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f'[[classes]]\nname = "{n}"\n' for n in names))
    return path


def test_a_trained_class_named_by_an_alias_is_kept_as_trained(tmp_path: Path) -> None:
    """A folder named diabetic_retinopathy trains that name; the class file's entry (either spelling) was read
    as the canonical 'dr', matched nothing trained, and became an unvalidated zero-shot class that never
    refers, while the trained one was dropped."""
    ck = _checkpoint(tmp_path / "ck", ("normal", "glaucoma", "diabetic_retinopathy"))
    plain = read_manifest(run_export(ck, tmp_path / "plain"))
    for spelling in ("diabetic_retinopathy", "dr", "Diabetic retinopathy"):
        out = run_export(ck, tmp_path / f"b_{spelling[:3]}",
                         classes_file=_toml(tmp_path / "c.toml", ["normal", "glaucoma", spelling, "rp"]), force=True)
        m = read_manifest(out)
        assert m.class_names == ("normal", "glaucoma", "diabetic_retinopathy", "rp"), spelling
        kept = {c.name: c for c in m.classes}["diabetic_retinopathy"]
        before = {c.name: c for c in plain.classes}["diabetic_retinopathy"]
        assert kept.seen_in_training and (kept.threshold, kept.referable) == (before.threshold, before.referable)
        np.testing.assert_array_equal(np.load(out / "class_bank.npy")[2], np.load(tmp_path / "plain" /
                                                                                  "class_bank.npy")[2])


def test_a_softmax_models_class_set_changes_only_with_new_thresholds(tmp_path: Path) -> None:
    """Every softmax probability shares one denominator: adding rp moved dr's probabilities (25 of 64 calls
    flipped in the review) while the validated thresholds were kept."""
    ck = _checkpoint(tmp_path / "ck", ("normal", "dr", "dme"), head="softmax")
    with pytest.raises(ConfigError, match=r"softmax head.*adding rp.*Give threshold = \.\.\. for normal, dr, dme"):
        run_export(ck, tmp_path / "b", classes_file=_toml(tmp_path / "c.toml", ["normal", "dr", "dme", "rp"]))
    with pytest.raises(ConfigError, match=r"dropping dme"):
        run_export(ck, tmp_path / "b", classes_file=_toml(tmp_path / "d.toml", ["normal", "dr"]))
    given = tmp_path / "g.toml"
    given.write_text("".join(f'[[classes]]\nname = "{n}"\nthreshold = 0.4\n' for n in ("normal", "dr", "dme"))
                     + '[[classes]]\nname = "rp"\n')
    m = read_manifest(run_export(ck, tmp_path / "b", classes_file=given))
    assert [c.threshold for c in m.classes][:3] == pytest.approx([0.4] * 3)
    # The same class set, reordered or as it was: nothing moves, nothing asked.
    run_export(ck, tmp_path / "same", classes_file=_toml(tmp_path / "s.toml", ["dme", "normal", "dr"]))


def test_a_class_file_that_leaves_out_trained_classes_names_them(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    ck = _checkpoint(tmp_path / "ck", ("normal", "dr", "dme"))
    with caplog.at_level(logging.WARNING):
        run_export(ck, tmp_path / "b", classes_file=_toml(tmp_path / "c.toml", ["normal", "dr"]))
    assert "leaves out trained class(es) dme (referable: dme, which then refer nobody)" in caplog.text


def test_a_truncated_text_cache_is_ignored_not_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.train.text import TextEncoder

    first = TextEncoder(cache_dir=tmp_path)
    want = first.prototypes((("a healthy retina",),))
    (cache,) = tmp_path.glob("*.npz")  # written as it encodes
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        again = TextEncoder(cache_dir=tmp_path).prototypes((("a healthy retina",),))
    assert "ignoring unreadable text cache" in caplog.text
    np.testing.assert_allclose(again, want, atol=1e-6)


def test_zero_shot_reads_new_phrases_for_a_trained_class_under_its_alias(tmp_path: Path) -> None:
    from uopsl.train import bank as banks

    known = {"diabetic_retinopathy": ("old phrase",), "normal": ("a healthy retina",)}
    f = tmp_path / "c.toml"
    f.write_text('[[classes]]\nname = "dr"\nphrases = ["new phrase"]\n')
    (dr, normal) = banks.resolve(["diabetic_retinopathy", "normal"], f, known)
    assert dr.phrases == ("new phrase",) and normal.phrases == ("a healthy retina",)


def test_a_class_files_display_names_reach_the_report(tmp_path: Path) -> None:
    """`display` was accepted, checked and then dropped: the report showed neither it nor anything for rp."""
    from uopsl.runtime.report import _finding, _legend

    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    f = tmp_path / "c.toml"
    f.write_text('[[classes]]\nname = "normal"\n[[classes]]\nname = "dr"\ndisplay = "Diabetic retinopathy (any)"\n'
                 '[[classes]]\nname = "rd"\ndisplay = "Retinal detachment (RD)"\nphrases = ["a detached retina"]\n')
    m = read_manifest(run_export(ck, tmp_path / "b", classes_file=f))
    assert m.display_name("rd") == "Retinal detachment (RD)" and m.display_name("normal") is None
    legend = _legend(m, {"rd"})
    assert "Retinal detachment (RD)" in legend and "Diabetic retinopathy (any)" in legend
    assert _finding("dr", m.display_name("dr")) == "<b>dr</b> (Diabetic retinopathy (any))"
    # Shown whole: the built-in words' name-prefix trimming cut "Glaucomatous ..." to "tous ...".
    assert _finding("glaucoma", "Glaucomatous optic neuropathy") == "<b>glaucoma</b> (Glaucomatous optic neuropathy)"
    assert read_manifest(run_export(ck, tmp_path / "plain")).display_name("dr") is None
