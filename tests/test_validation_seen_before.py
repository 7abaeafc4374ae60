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


def test_an_earlier_fine_tunes_validation_photographs_are_not_called_learnt(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """`finetune --from` a fine-tuned checkpoint, validating on that fine-tune's own validation photographs: the
    warning said the model had learnt them (a review); it learnt only its pre-training and training photographs."""
    items = tiny_items(tmp_path / "imgs", n=12)
    model, meta = tiny_model(random_text=True)
    digests = [int(d) for d in ImageDataset(items, meta.preprocess, tmp_path / "cache").digests]
    ckpt = tmp_path / "ft1"
    wf.record_images_seen(ckpt, {"earlier": digests[:2], "train": digests[2:6], "validation": digests[8:],
                                 "qat": digests[6:8]})
    assert wf.earlier_images(ckpt) == sorted(digests)
    assert wf.earlier_images(ckpt, wf.LEARNT_ROLES) == sorted(digests[:6])
    wf.record_images_seen(tmp_path / "unsure", {"earlier": None, "train": digests[2:6], "validation": digests[8:]})
    assert wf.earlier_images(tmp_path / "unsure", wf.LEARNT_ROLES) is None
    assert wf.earlier_images(tmp_path / "unsure", ("train",)) == sorted(digests[2:6])

    def stop(*a: object, **k: object) -> object:
        raise _Stop

    monkeypatch.setattr(wf, "finetune", stop)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, augment=False)
    for val_from, named in ((8, 0), (4, 2)):  # ft1's validation photographs; two of its training ones
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uopsl.train.workflow"), pytest.raises(_Stop):
            wf.run_finetune(*tiny_model(random_text=True), items[:4], items[val_from:val_from + 4], cfg,
                            tmp_path / "ft2", seen_before=wf.earlier_images(ckpt),
                            learnt_before=wf.earlier_images(ckpt, wf.LEARNT_ROLES))
        said = f"{named} of 4 validation photographs (same file content) were used to make the checkpoint"
        assert (said in caplog.text) == bool(named) and ("fine-tune starts from" in caplog.text) == bool(named)


def test_finetune_from_passes_only_the_learnt_photographs_to_the_warning(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`uopsl finetune --from CKPT` records everything that made CKPT but warns only about what it learnt."""
    import hashlib
    from dataclasses import replace

    from trainhelpers import tiny_synth

    from uopsl.runtime.clikit import main_entry
    from uopsl.train.checkpoint import save_model
    from uopsl.train.cli import cli

    pool = tiny_synth(tmp_path / "pool", 8)
    pre = tmp_path / "pre"
    model, meta = tiny_model()
    save_model(pre, model, replace(meta, stage="finetune"))
    files = sorted(pool.rglob("*.jpg"))
    digests = [int.from_bytes(hashlib.sha256(p.read_bytes()).digest()[:8], "big") for p in files]
    wf.record_images_seen(pre, {"train": digests[:3], "validation": digests[3:6], "qat": digests[6:]})
    got: dict[str, object] = {}

    def capture(*a: object, **k: object) -> object:
        got.update(k)
        raise _Stop

    monkeypatch.setattr(wf, "run_finetune", capture)
    # main_entry turns the stop into an exit code; the call's arguments are what this test reads.
    main_entry(cli, ["finetune", "--data", str(pool), "--from", str(pre), "--out", str(tmp_path / "ft"),
                     "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-augment"], prog_name="uopsl")
    assert len(files) >= 8 and got["seen_before"] == sorted(set(digests))
    assert got["learnt_before"] == sorted(set(digests[:3]))


def test_a_pretrained_checkpoints_photographs_count_as_learnt(tmp_path: Path) -> None:
    """A mutation audit (session 34): leaving "pretrain" out of LEARNT_ROLES went unnoticed, and `finetune --from`
    a pre-trained checkpoint (the README's recipe) would then never warn. The roles come from a real run_pretrain."""
    items = tiny_items(tmp_path / "imgs", n=8)
    model, meta = tiny_model("p_only", seed=1, random_text=True)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, augment=False)
    wf.run_pretrain(model, meta, items, None, cfg, tmp_path / "pre")
    learnt = wf.earlier_images(tmp_path / "pre", wf.LEARNT_ROLES)
    assert learnt is not None and len(learnt) == 8 and learnt == wf.earlier_images(tmp_path / "pre")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_the_runs_device_reaches_the_torchrun_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      stage: str) -> None:
    """A mutation audit (session 34): run_pretrain not passing its device on went unnoticed; on a CUDA machine a
    `--device cpu` run under torchrun would then set up nccl and fail."""
    seen: list[str] = []

    def decide(out: Path, st: str, want: dict[str, str], device: str = "auto") -> None:
        seen.append(device)
        raise _Stop

    monkeypatch.setattr(wf, "trained_unfinished", decide)
    items = tiny_items(tmp_path / "imgs", n=8)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, augment=False)
    with pytest.raises(_Stop):
        if stage == "pretrain":
            wf.run_pretrain(*tiny_model("p_only", seed=1, random_text=True), items, None, cfg, tmp_path / "o")
        else:
            wf.run_finetune(*tiny_model(random_text=True), items[:4], items[4:], cfg, tmp_path / "o")
    assert seen == ["cpu"]
