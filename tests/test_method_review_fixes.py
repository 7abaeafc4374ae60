"""Training method fixes from the session-14 review of the code against DESIGN.md section 1.

(The torchrun gradient averaging is checked in ``test_train_model.py`` with two real processes.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainhelpers import CLASSES, tiny_dataset, tiny_items, tiny_model
from uopsl.runtime.errors import ConfigError
from uopsl.train.loops import TrainConfig
from uopsl.train.model import ModelConfig, UopslModel
from uopsl.train.stages import finetune, pretrain
from uopsl.train.torchdata import Item


def test_tokens_share_the_global_projection_and_train_in_stage_1(tmp_path: Path) -> None:
    """In the full variant nothing trained the fundus token projection before stage 2 (it stayed random)."""
    model, meta = tiny_model("uopsl")
    assert model.config.tokens == "global"
    feat = torch.randn(2, model.fundus.encoder.channels, 3, 3)
    tokens, glob, _ = model.fundus.from_features(feat)
    torch.testing.assert_close(tokens.mean(dim=1), glob)  # the tokens' mean is the global vector
    assert not any("tokens" in k for k in model.state_dict())  # one set of weights, listed once
    before = model.fundus.glob.weight.detach().clone()
    ds = tiny_dataset(tmp_path, n=12)
    cfg = TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False, freeze_encoder=True)
    trained = pretrain(model, ds, ds, cfg, tmp_path / "pre", meta)
    assert not torch.equal(trained.fundus.glob.weight, before)


def test_checkpoints_from_before_keep_their_separate_token_projection() -> None:
    old = ModelConfig(backbone="resnet18", init="random", classes=CLASSES, dim=32, sites=2).to_dict()
    del old["tokens"]
    cfg = ModelConfig.from_dict(old)
    assert cfg.tokens == "separate"
    model = UopslModel(cfg, np.zeros((len(CLASSES), cfg.text_dim), np.float32))
    assert isinstance(model.fundus.tokens, torch.nn.Conv2d) and "fundus.tokens.weight" in model.state_dict()
    with pytest.raises(ConfigError, match="tokens must be global or separate"):
        ModelConfig(tokens="shared")  # type: ignore[arg-type]


def test_a_frozen_encoder_keeps_its_batchnorm_statistics_in_pretraining(tmp_path: Path) -> None:
    model, meta = tiny_model("p_only")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    ds = tiny_dataset(tmp_path, n=12, augment=True)  # augmentation: no feature cache, the encoder runs
    cfg = TrainConfig(epochs=1, batch_size=4, save_every=0, augment=True, freeze_encoder=True)
    trained = pretrain(model, ds, None, cfg, tmp_path / "pre", meta)
    assert stats and all(torch.equal(stats[k], v) for k, v in trained.state_dict().items() if k in stats)


def test_a_freeze_lasts_one_stage(tmp_path: Path) -> None:
    """A model pre-trained with a frozen encoder stayed frozen when the same object was fine-tuned 'train all'."""
    model, meta = tiny_model("p_only")
    ds = tiny_dataset(tmp_path, n=12)
    pretrain(model, ds, None, TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False, freeze_encoder=True),
             tmp_path / "pre", meta)
    assert all(p.requires_grad for p in model.parameters())
    enc = [p.detach().clone() for p in model.fundus.encoder.parameters()]
    finetune(model, ds, None, TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False), tmp_path / "ft", meta)
    assert any(not torch.equal(a, b) for a, b in zip(enc, model.fundus.encoder.parameters()))


def test_classes_added_for_fine_tuning_are_seen() -> None:
    """A class added at `finetune --from` with labelled images stayed 'unseen': its delta never trained."""
    model, _ = tiny_model()
    text = np.random.default_rng(0).normal(size=(4, model.config.text_dim)).astype(np.float32)
    grown = model.with_classes(CLASSES + ("c",), text, seen_names=CLASSES + ("c",), to_train=True)
    assert grown.config.seen == (True, True, True, True) and bool(grown.seen.all())
    zero_shot = model.with_classes(CLASSES + ("c",), text, seen_names=CLASSES + ("c",))
    assert zero_shot.config.seen == (True, True, True, False)


def test_a_softmax_head_refuses_images_without_exactly_one_label(tmp_path: Path) -> None:
    from uopsl.train.workflow import run_finetune

    model, meta = tiny_model()
    from dataclasses import replace

    model.config = replace(model.config, head="softmax")
    items = tiny_items(tmp_path / "imgs", n=6)
    none = Item(items[0].path, np.zeros(len(CLASSES), np.float32))
    two = Item(items[1].path, np.array([0, 1, 1], np.float32))
    cfg = TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False)
    with pytest.raises(ConfigError, match=r"of the 8 training images 1 have none of the classes normal, a, b .* and "
                                          r"1 have several .*--head sigmoid"):
        run_finetune(model, meta, items + [none, two], None, cfg, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()


def test_pretraining_reads_the_oct_pool_as_bscans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OCT pool must go through bscan_input (whole, letterboxed), not the fundus field-of-view crop."""
    import uopsl.train.workflow as wf

    built: list[str] = []
    real = wf.ImageDataset

    def recording(items, pre, cache=None, augment=False, modality="fundus"):  # type: ignore[no-untyped-def]
        built.append(modality)
        return real(items, pre, cache, augment=augment, modality=modality)

    monkeypatch.setattr(wf, "ImageDataset", recording)
    model, meta = tiny_model("uopsl")
    items = tiny_items(tmp_path / "imgs", n=8)
    wf.run_pretrain(model, meta, items, items, TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False),
                    tmp_path / "pre", cache=tmp_path / "cache")
    assert built == ["fundus", "oct"]
