"""Training, explain and export as an ML engineer at a clinic network uses them (session 58 review, helper-233).

- the preprocessed-image cache (a copy of every training and validation photograph) went into the checkpoint
  folder, which is shared whole; ``--out`` and ``--cache`` inside a bundle or another checkpoint were accepted;
- ``explain`` maps written among the photographs were screened by ``uopsl-screen run`` as photographs;
- ``explain`` drew an OCT scan with "dr p=0.65" where the screener's quality gate calls it ungradable;
- an export whose thresholds were chosen on no data (0.5 defaults) referred patients on them;
- a bare TVHL folder was read as folder: (classes fundus and oct); OCT-only fine-tuning failed late as "the
  dataset is empty"; random bytes or text as --init were "Python objects besides tensors" or "(101)";
- an interrupted run's folder read "no checkpoint.json; expected a checkpoint folder written by uopsl";
- --lr-encoder with --freeze-encoder and --site-loss with a fundus_only model were accepted without a word.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from imagekit import draw_fake_fundus
from trainhelpers import tiny_model
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import CheckpointError, ConfigError
from uopsl.runtime.inputs import MAPS_MARKER, iter_inputs
from uopsl.train.backbones import load_state_file
from uopsl.train.checkpoint import read_meta, save_model
from uopsl.train.cli import cli
from uopsl.train.commands.common import check_out_folder, image_cache, parse_spec
from uopsl.train.workflow import run_export, untested_not_referable


def _photo(path: Path, seed: int = 3, grey: bool = False) -> Path:
    rgb = draw_fake_fundus(320, seed=seed)
    if grey:
        rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


# -- where a training run writes ----------------------------------------------------------------------------
def test_the_image_cache_defaults_to_the_user_cache_and_an_old_one_in_out_is_pointed_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "usercache"))
    out = tmp_path / "ft"
    assert image_cache(out, None) == tmp_path / "usercache" / "images"
    assert image_cache(out, tmp_path / "mine") == tmp_path / "mine"
    (out / "cache").mkdir(parents=True)
    np.save(out / "cache" / "img-0123.npy", np.zeros((1, 2, 2, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        image_cache(out, None)
    assert "holds preprocessed copies of the training photographs" in caplog.text, caplog.text
    assert (out / "cache" / "img-0123.npy").is_file()  # pointed out, never deleted


def test_training_out_and_cache_stay_out_of_model_folders(tmp_path: Path) -> None:
    model, meta = tiny_model()
    ckpt = tmp_path / "ckpt"
    save_model(ckpt, model, meta)
    check_out_folder(ckpt)  # the run's own checkpoint folder (a resume) is fine
    with pytest.raises(ConfigError, match=r"--out .*sub is inside the checkpoint folder .*ckpt.* e\.g\. --out"):
        check_out_folder(ckpt / "sub")
    with pytest.raises(ConfigError, match="--cache .* is inside --out"):
        check_out_folder(tmp_path / "new", tmp_path / "new" / "cache")
    with pytest.raises(ConfigError, match="--cache .*checkpoint folder"):
        check_out_folder(tmp_path / "new", ckpt / "cache")
    check_out_folder(tmp_path / "new", tmp_path / "elsewhere")
    bundle = run_export(ckpt, tmp_path / "bundle")
    with pytest.raises(ConfigError, match=r"--out .*bundle is the bundle folder"):
        check_out_folder(bundle)  # a bundle is never a run's own folder (a review of the first fix)


# -- explain -------------------------------------------------------------------------------------------------
def test_explain_maps_among_the_photographs_are_left_out_of_a_screening_walk(tmp_path: Path) -> None:
    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ckpt", model, meta)
    photos = tmp_path / "photos"
    _photo(photos / "eye.jpg")
    res = CliRunner().invoke(cli, ["explain", str(tmp_path / "ckpt"), str(photos), "--out", str(photos / "maps")])
    assert res.exit_code == 0, res.output
    assert (photos / "maps" / "eye_sites.png").is_file() and (photos / "maps" / MAPS_MARKER).is_file()
    taken = [Path(i.source).name for i in iter_inputs([photos])]
    assert taken == ["eye.jpg"], taken
    with pytest.raises(ConfigError, match=r"is an output folder of uopsl explain \(it holds \.uopsl-maps\)"):
        list(iter_inputs([photos / "maps"]))


def test_explain_marks_a_photograph_the_quality_gate_refuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.train.explain import explain_inputs

    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ckpt", model, meta)
    good, grey = _photo(tmp_path / "in" / "good.jpg"), _photo(tmp_path / "in" / "grey.jpg", grey=True)
    with caplog.at_level(logging.WARNING):
        result = explain_inputs(tmp_path / "ckpt", [good, grey], tmp_path / "maps")
    assert [Path(s).name for s, _ in result.written] == ["good.jpg", "grey.jpg"]
    assert [(Path(s).name, "grayscale" in r) for s, r in result.ungradable] == [("grey.jpg", True)], result.ungradable
    assert "1 of 2 photographs fail the quality gate" in caplog.text and "grey.jpg (" in caplog.text, caplog.text
    # The mark is on the picture: the caption row of the ungradable map differs from the gradable one's there.
    g, u = (cv2.imread(str(tmp_path / "maps" / n)) for n in ("good_sites.png", "grey_sites.png"))
    red = lambda img: int(((img[36:56, :, 2] > 200) & (img[36:56, :, 1] < 120)).sum())  # noqa: E731 - BGR
    assert red(u) > 50 and red(g) == 0, (red(u), red(g))


# -- export ----------------------------------------------------------------------------------------------------
def test_untested_thresholds_refer_no_patient(caplog: pytest.LogCaptureFixture) -> None:
    names = ["normal", "a", "b"]
    prov = [{"source": "chosen on no data (a default, not an operating point)"},
            {"source": "chosen on no data (fallback 0.5: every validation image is positive for it)"},
            {"source": "checkpoint validation data"}]
    with caplog.at_level(logging.WARNING):
        assert untested_not_referable(names, [False, True, True], prov) == [False, False, True]
    assert "a has no threshold chosen on data" in caplog.text and "refers no patient on it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert untested_not_referable(names, [False, True, False], prov[:2] + [prov[0]]) == [False, False, False]
    assert "refers no patient on it" in caplog.text  # that no class refers at all, export says (REFERS_NO_ONE)


def test_a_checkpoint_without_thresholds_exports_a_bundle_that_refers_nobody(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ckpt", model, replace(meta, referable=(False, True, True)))
    with caplog.at_level(logging.WARNING):
        m = read_manifest(run_export(tmp_path / "ckpt", tmp_path / "bundle"))
    assert [(c.name, c.referable) for c in m.classes] == [("normal", False), ("a", False), ("b", False)]
    assert m.refers_no_one and "no class of this bundle is referable, so it refers no patient" in caplog.text


# -- data specs, --init files, interrupted folders, unused options -------------------------------------------
def test_a_bare_tvhl_folder_is_named_as_tvhl(tmp_path: Path) -> None:
    root = tmp_path / "tvhl"
    for part in ("fundus", "oct"):
        (root / part).mkdir(parents=True)
        (root / f"{part}.csv").write_text("path,patient,label\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"TVHL dataset's layout.*tvhl:.*task=referable_dr"):
        parse_spec(str(root))


def test_oct_only_finetune_data_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from trainhelpers import tiny_synth

    data = tiny_synth(tmp_path / "syn", n_fundus=0, n_oct=6)
    out = tmp_path / "ft"
    res = CliRunner().invoke(cli, ["finetune", "--data", f"synthetic:{data}", "--out", str(out), "--backbone",
                                   "resnet18", "--init", "random", "--size", "64", "--device", "cpu"])
    assert res.exit_code != 0
    msg = str(res.exception or res.output)
    assert "holds no fundus photographs (6 oct)" in msg and "finetune trains on fundus photographs" in msg, msg
    assert not out.exists()


@pytest.mark.parametrize("content, said", [(bytes(range(7, 207)) * 20, "is not a torch weights file"),
                                           (b"hello world\n", "it starts with b'hell'")], ids=["bytes", "text"])
def test_an_init_file_that_is_no_torch_file_is_named_so(tmp_path: Path, content: bytes, said: str) -> None:
    f = tmp_path / "w.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=said) as err:
        load_state_file(f)
    assert "Python objects" not in str(err.value)


def test_a_weights_file_holding_an_object_names_it(tmp_path: Path) -> None:
    import argparse

    import torch

    f = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(x=1)}, f)
    with pytest.raises(CheckpointError, match=r"holds a Python object \(argparse\.Namespace\)"):
        load_state_file(f)


def test_an_interrupted_run_folder_says_so(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"epoch": 0, "step": 5}), encoding="utf-8")
    (out / "finetune.config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"holds an interrupted training run \(finetune stopped at epoch 1 "
                                              r"after step 5\).*run the command that started it again"):
        read_meta(out)
    # The state's own stage (QAT writes no config file), and the end of an epoch in a resume's words.
    (out / "state.json").write_text(json.dumps({"epoch": 1, "step": 0, "stage": "qat"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"\(qat stopped at the end of epoch 1\)"):
        read_meta(out)
    with pytest.raises(CheckpointError, match="no checkpoint.json; expected a checkpoint folder"):
        read_meta(tmp_path)  # no state: still a foreign folder


def _class_photos(root: Path) -> Path:
    for c in ("normal", "dr"):
        for i in range(3):
            _photo(root / c / f"{c}{i}.jpg", seed=i + (10 if c == "dr" else 0))
    return root


@pytest.mark.parametrize("extra, said", [
    (["--freeze-encoder", "--lr-encoder", "0.01"], "--lr-encoder 0.01 with --freeze-encoder"),
    (["--variant", "fundus_only", "--site-loss", "1"], "--site-loss with a fundus_only model"),
    (["--variant", "fundus_only", "--site-guide", "2"], "--site-guide with a fundus_only model"),
], ids=["lr-encoder", "site-loss", "site-guide"])
def test_an_option_the_run_would_not_use_is_refused(tmp_path: Path, extra: list[str], said: str) -> None:
    photos = _class_photos(tmp_path / "photos")
    out = tmp_path / "ft"
    res = CliRunner().invoke(cli, ["finetune", "--data", f"folder:{photos}", "--out", str(out), "--backbone",
                                   "resnet18", "--init", "random", "--size", "64", "--device", "cpu", *extra])
    assert res.exit_code != 0 and said in str(res.exception or res.output), res.output + repr(res.exception)
    assert not (out / "finetune.config.json").exists()


def test_unused_options_are_not_refused_where_a_run_already_is_nor_a_weight_of_zero(tmp_path: Path) -> None:
    """A folder an earlier version trained with such options must still resume and be reused by its command
    (the options are part of the run's identity); pretrain refuses the pair too."""
    from uopsl.train.commands import common

    seen: list[str] = []
    out = tmp_path / "ft"
    out.mkdir()
    (out / "state.json").write_text("{}", encoding="utf-8")

    @click_command_with(["--freeze-encoder", "--lr-encoder", "0.01"])
    def check() -> None:
        common.refuse_unused_options(out, {"freeze_encoder": True, "lr_encoder": 0.01})
        seen.append("resumable run: not refused")
        common.refuse_unused_options(tmp_path / "new", {"w_site_guide": 0.0}, "fundus_only")
        seen.append("weight 0: not refused")

    check()
    assert seen == ["resumable run: not refused", "weight 0: not refused"]
    res = CliRunner().invoke(cli, ["pretrain", "--fundus", f"folder:{_class_photos(tmp_path / 'p')}", "--out",
                                   str(tmp_path / "pre"), "--variant", "p_only", "--freeze-encoder", "--lr-encoder",
                                   "0.01", "--device", "cpu"])
    assert res.exit_code != 0 and "--lr-encoder 0.01 with --freeze-encoder" in str(res.exception or res.output), \
        res.output


def click_command_with(args: list[str]):  # type: ignore[no-untyped-def]
    """Run the decorated function inside a click context where ``args`` were given on the command line."""
    import click

    def wrap(fn):  # type: ignore[no-untyped-def]
        @click.command()
        @click.option("--freeze-encoder", is_flag=True)
        @click.option("--lr-encoder", type=float, default=1e-4)
        @click.option("--site-guide", "w_site_guide", type=float, default=1.0)
        def cmd(freeze_encoder: bool, lr_encoder: float, w_site_guide: float) -> None:
            fn()

        return lambda: cmd.main([*args, "--site-guide", "0"], standalone_mode=False)

    return wrap


def test_a_folder_dataset_leaves_out_an_explain_maps_folder_beside_its_classes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A review of the fix: validate's and training's class-folder reader took maps/ for a class of its own."""
    from uopsl.train.commands.common import load_source

    photos = _class_photos(tmp_path / "photos")
    _photo(photos / "maps" / "normal0_sites.png")
    (photos / "maps" / MAPS_MARKER).write_text("x", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        src = load_source(f"folder:{photos}")
    assert sorted({s.labels[0] for s in src.samples}) == ["dr", "normal"], src.label_space.classes
    assert "not read as a class folder: it is an output folder of uopsl explain" in caplog.text, caplog.text
