"""Validation photographs that made the checkpoint a fine-tune starts from are named (a review of the splits)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from trainhelpers import tiny_items, tiny_model

import uopsl.train.workflow as wf
from uopsl.train.loops import TrainConfig
from uopsl.train.torchdata import ImageDataset


class _Stop(Exception):
    pass


def test_validation_photographs_the_starting_checkpoint_learnt_are_named(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """`uopsl pretrain` and then `finetune --from` on one folder (the README's recipe did) chose the thresholds on
    photographs pre-training had learnt from their labels, and nothing said so."""
    items = tiny_items(tmp_path / "imgs", n=12)
    model, meta = tiny_model(random_text=True)
    val = ImageDataset(items[8:], meta.preprocess, tmp_path / "cache")
    pretrained_on = [int(d) for d in ImageDataset(items[6:], meta.preprocess, tmp_path / "cache").digests]

    def stop(*a: object, **k: object) -> object:
        raise _Stop

    monkeypatch.setattr(wf, "finetune", stop)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, augment=False)
    with caplog.at_level(logging.WARNING, logger="uopsl.train.workflow"), pytest.raises(_Stop):
        wf.run_finetune(model, meta, items[:8], items[8:], cfg, tmp_path / "ft", seen_before=pretrained_on)
    assert "4 of 4 validation photographs (same file content) were used to make the checkpoint this fine-tune " \
           "starts from (--from)" in caplog.text
    assert wf.warn_validation_seen_before(val, pretrained_on[:1] + pretrained_on[3:]) == 3
    caplog.clear()
    for unknown_or_apart in (None, (), pretrained_on[:2]):  # not recorded, a fresh model, other photographs
        with caplog.at_level(logging.WARNING, logger="uopsl.train.workflow"), pytest.raises(_Stop):
            wf.run_finetune(*tiny_model(random_text=True), items[:8], items[8:], cfg, tmp_path / "ft",
                            seen_before=unknown_or_apart)
        assert "fine-tune starts from" not in caplog.text
