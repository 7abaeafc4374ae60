"""The UOPSL model, its deploy graph, checkpoints, resume and torchrun (CPU, tiny sizes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trainhelpers import CLASSES, tiny_dataset, tiny_model
from uopsl.runtime.errors import CheckpointError, ConfigError
from uopsl.train.checkpoint import load_model, save_model
from uopsl.train.loops import StageRunner, TrainConfig
from uopsl.train.model import DeployModel, ModelConfig, UopslModel
from uopsl.train.stages import finetune


def attention_model(attention: str, variant: str = "uopsl") -> UopslModel:
    """The tiny model with the given site-attention form (same weights for every form but the temperature)."""
    model, _ = tiny_model(variant)
    torch.manual_seed(0)
    return UopslModel(replace(model.config, attention=attention), model.class_text.numpy())  # type: ignore[arg-type]


def test_imagenet_weights_load_and_classify_sample_photos() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    from uopsl.train.backbones import TFLITE_MEAN, TFLITE_STD, build_classifier

    model = build_classifier("efficientnet_lite0", "imagenet").eval()
    mean, std = np.array(TFLITE_MEAN, np.float32), np.array(TFLITE_STD, np.float32)
    top = {}
    for name in ("chelsea", "coffee"):
        im = cv2.resize(getattr(skimage_data, name)(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = torch.from_numpy((im - mean) / std).permute(2, 0, 1)[None]
        with torch.no_grad():
            top[name] = int(model(x).argmax())
    assert 281 <= top["chelsea"] <= 285, top  # tabby/tiger/Persian/Siamese/Egyptian cat
    assert top["coffee"] in (967, 968), top  # espresso / cup


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        ModelConfig(backbone="vgg99")


@pytest.mark.parametrize("attention", ["cosine", "dot"])
@pytest.mark.parametrize("variant", ["uopsl", "p_only", "fundus_only"])
def test_deploy_graph_equals_training_model(variant: str, attention: str) -> None:
    model = attention_model(attention, variant).eval()
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = model.probs(model(x.permute(0, 3, 1, 2).float())["logits"])
        probs, logits, maps = DeployModel(model, 64)(x)
    assert torch.allclose(probs, ref, atol=1e-5), (probs - ref).abs().max()
    assert maps.shape == (3, len(CLASSES), 2, 2)
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(3, len(CLASSES)), atol=1e-5)


def test_cosine_attention_logits_are_bounded_by_the_temperature_after_training(tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path, n=12)
    model, meta = tiny_model()
    assert model.config.attention == "cosine"  # the default for new models
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.05, save_every=0, augment=False)
    model, _ = finetune(model, ds, None, cfg, tmp_path / "run", meta)
    model.eval()
    temp = float(model.sites.temperature.detach())
    assert temp != pytest.approx(10.0, abs=1e-4)  # the temperature is learned, i.e. gradients reach it
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        out = model(x)
        logits = model.sites.logits(out["tokens"], model.site_queries())
        model.sites.log_temp.fill_(math.log(1e4))  # however large the learned value, the cap holds
        capped = model.sites.logits(out["tokens"], model.site_queries())
    assert logits.abs().max() <= temp * (1 + 1e-5)
    assert capped.abs().max() <= model.config.attention_temp_max * (1 + 1e-5)
    assert float(model.sites.temperature.detach()) == model.config.attention_temp_max
    # bounded logits -> no single token can take all of a map: each map keeps mass on every token
    assert float(out["site_maps"].min()) > 0


def test_config_without_attention_key_loads_as_dot_and_computes_as_before(tmp_path: Path) -> None:
    assert ModelConfig().attention == "cosine"
    assert ModelConfig.from_dict({}).attention == "dot"
    with pytest.raises(ConfigError, match="attention"):
        ModelConfig(attention="flash")  # type: ignore[arg-type]
    model = attention_model("dot").eval()
    _, meta = tiny_model()
    save_model(tmp_path, model, replace(meta, model=model.config))
    ckpt = tmp_path / "checkpoint.json"
    raw = json.loads(ckpt.read_text())
    for key in ("attention", "attention_temp_init", "attention_temp_max"):  # a checkpoint older than the field
        del raw["model"][key]
    ckpt.write_text(json.dumps(raw))
    loaded, meta2 = load_model(tmp_path)  # strict: the old state dict has no temperature
    assert meta2.model.attention == "dot" and not hasattr(loaded.sites, "log_temp")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        a, b = model(x), loaded.eval()(x)
    # Same weights, same code path; two instances differ only by the memory alignment of their
    # tensors, which changes the SIMD summation order (~1e-7), not the function.
    assert torch.allclose(a["logits"], b["logits"], atol=1e-6) and torch.allclose(a["site_maps"], b["site_maps"], atol=1e-6)


def test_new_class_bank_keeps_known_classes_and_scores_unseen_ones() -> None:
    model, _ = tiny_model()
    model.eval()
    x = torch.rand(2, 3, 64, 64) * 255
    extra = np.random.default_rng(5).standard_normal((1, 384)).astype(np.float32)
    text = np.concatenate([model.class_text.numpy(), extra])
    bigger = model.with_classes(CLASSES + ("unseen",), text, seen_names=CLASSES).eval()
    with torch.no_grad():
        a = model(x)["logits"]
        b = bigger(x)["logits"]
    assert torch.allclose(a, b[:, :3], atol=1e-5)
    assert not bool(bigger.seen[3]) and torch.count_nonzero(bigger.delta[3]) == 0


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    model, meta = tiny_model()
    save_model(tmp_path, model, meta)
    loaded, meta2 = load_model(tmp_path)
    assert meta2.model == meta.model
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_checkpoint_with_foreign_weights_is_refused(tmp_path: Path) -> None:
    model, meta = tiny_model()
    save_model(tmp_path, model, meta)
    other, meta_b = tiny_model()
    from dataclasses import replace

    bad = replace(meta_b, model=replace(meta_b.model, dim=16))
    save_model(tmp_path / "b", other, bad)
    (tmp_path / "b" / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "b")


def test_interrupted_finetune_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset(tmp_path, n=24, augment=True)
    cfg = TrainConfig(epochs=2, batch_size=4, save_every=1, seed=7)

    ref_model, meta = tiny_model()
    ref_model, _ = finetune(ref_model, ds, None, cfg, tmp_path / "ref", meta)

    model, meta = tiny_model()
    real_step = StageRunner.step
    calls = {"n": 0}

    def crashing_step(self: StageRunner, loss: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 8:  # mid second epoch (6 steps per epoch)
            raise KeyboardInterrupt("simulated power loss")
        real_step(self, loss)

    monkeypatch.setattr(StageRunner, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, ds, None, cfg, tmp_path / "run", meta)
    assert (tmp_path / "run" / "state.json").is_file()
    monkeypatch.setattr(StageRunner, "step", real_step)
    model2, meta = tiny_model()  # a fresh process would rebuild the model from scratch
    model2, res = finetune(model2, ds, None, cfg, tmp_path / "run", meta)
    assert not (tmp_path / "run" / "state.json").exists()
    for (k, a), b in zip(ref_model.state_dict().items(), model2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_a_resumed_run_logs_each_step_once_and_reports_whole_epoch_means(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after a logged step but before the next checkpoint: the rerun repeats that step; its log row and the
    epoch's mean loss must come out as in an uninterrupted run (a review found a duplicated row and a mean
    over the resumed steps only)."""
    import csv

    ds = tiny_dataset(tmp_path, n=24, augment=False)
    cfg = TrainConfig(epochs=2, batch_size=4, save_every=2, seed=7, augment=False)
    ref_model, meta = tiny_model()
    _, ref = finetune(ref_model, ds, None, cfg, tmp_path / "ref", meta)

    real_step = StageRunner.step
    calls = {"n": 0}

    def crashing_step(self: StageRunner, loss: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 10:  # second epoch, step 4: checkpoint after step 2 of it (global 8), step 3 logged
            raise KeyboardInterrupt("simulated power loss")
        real_step(self, loss)

    model, meta = tiny_model()
    monkeypatch.setattr(StageRunner, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt) as stopped:
        finetune(model, ds, None, cfg, tmp_path / "run", meta)
    # what the user reads on Ctrl-C / SIGTERM: where the run can pick up from
    assert "finetune interrupted in epoch 2 of 2; its last checkpoint, epoch 2 after step 2" in str(stopped.value)
    assert "run the same command again to resume" in str(stopped.value)
    monkeypatch.setattr(StageRunner, "step", real_step)
    model2, meta = tiny_model()
    _, res = finetune(model2, ds, None, cfg, tmp_path / "run", meta)

    def steps(folder: Path) -> list[tuple[str, str]]:
        with open(folder / "log.csv", newline="") as fh:
            return [(r["epoch"], r["step"]) for r in csv.DictReader(fh)]

    assert steps(tmp_path / "run") == steps(tmp_path / "ref") and len(steps(tmp_path / "ref")) == 12
    for got, want in zip(res["history"], ref["history"]):
        assert got["epoch"] == want["epoch"] and got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_resume_with_other_settings_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset(tmp_path, n=12)
    model, meta = tiny_model()

    def boom(self: StageRunner, loss: torch.Tensor) -> None:
        raise KeyboardInterrupt

    cfg = TrainConfig(epochs=1, batch_size=4, save_every=1, augment=False)
    real = StageRunner.step
    calls = {"n": 0}

    def second(self: StageRunner, loss: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(self, loss)

    monkeypatch.setattr(StageRunner, "step", second)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, ds, None, cfg, tmp_path / "run", meta)
    monkeypatch.setattr(StageRunner, "step", real)
    with pytest.raises(ConfigError, match=r"other settings: augment \(False there, True now\), lr \(0\.001 there, 0\.5 now\)"):
        finetune(tiny_model()[0], ds, None, TrainConfig(epochs=1, batch_size=4, lr=0.5), tmp_path / "run", meta)


def test_torchrun_two_processes_end_with_identical_weights_and_one_writer(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path), "cpu"]  # gloo; test_gpu_training runs nccl
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert a == b
    # Pre-training (BatchNorm in train mode, augmentation on, two epochs, nothing reloaded): one model too.
    assert (tmp_path / "pre_rank0.txt").read_text() == (tmp_path / "pre_rank1.txt").read_text()
    # The checkpoint is written by rank 0 only (run_finetune used to save it again on every rank).
    assert (tmp_path / "saved_by_rank0.txt").is_file() and not (tmp_path / "saved_by_rank1.txt").exists()
    assert (tmp_path / "ckpt" / "checkpoint.json").is_file()


def test_a_set_smaller_than_one_batch_still_trains(tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path, n=6)
    model, meta = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, save_every=0, augment=False)
    model, res = finetune(model, ds, None, cfg, tmp_path / "run", meta)
    assert "loss" in res["history"][0]  # at least one optimisation step ran
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("bias"))


def test_predict_on_cached_features_matches_the_image_path(tmp_path: Path) -> None:
    from uopsl.train.loops import predict
    from uopsl.train.stages import FeatureDataset

    ds = tiny_dataset(tmp_path, n=12)
    model, _ = tiny_model()
    model.eval()
    direct = predict(model, ds, with_maps=True)
    cached = predict(model, FeatureDataset.compute(model.fundus.encoder, ds, torch.device("cpu")), with_maps=True)
    # Features are cached as float16: probabilities agree to ~1e-4, not bit for bit.
    assert np.abs(direct["probs"] - cached["probs"]).max() < 1e-3
    assert direct["site_maps"].shape == cached["site_maps"].shape


def test_feature_cache_is_reused_only_for_the_same_images_and_encoder(tmp_path: Path) -> None:
    import cv2

    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.stages import FeatureDataset, features_fingerprint
    from uopsl.train.torchdata import ImageDataset

    cpu = torch.device("cpu")
    ds = tiny_dataset(tmp_path, n=8)
    model, _ = tiny_model()
    model.eval()
    path = tmp_path / "features.safetensors"
    first = FeatureDataset.cached(path, model.fundus.encoder, ds, cpu)
    stamp = path.stat().st_mtime_ns
    again = FeatureDataset.cached(path, model.fundus.encoder, ds, cpu)
    assert path.stat().st_mtime_ns == stamp, "same images, same encoder: the file is read, not rewritten"
    assert torch.equal(first.features, again.features)
    # Same number of images, other pixels: encoded again (a stale cache would hand back the old features).
    other_items = [replace(it, path=tmp_path / f"other{i}.png") for i, it in enumerate(ds.items)]
    for it, new in zip(ds.items, other_items):
        cv2.imwrite(str(new.path), cv2.flip(cv2.imread(str(it.path)), 0))
    other = ImageDataset(other_items, PreprocessConfig(size=64), tmp_path / "cache2")
    assert features_fingerprint(model.fundus.encoder, other) != features_fingerprint(model.fundus.encoder, ds)
    fresh = FeatureDataset.cached(path, model.fundus.encoder, other, cpu)
    assert torch.equal(fresh.features, FeatureDataset.compute(model.fundus.encoder, other, cpu).features)
    assert not torch.equal(fresh.features, first.features)
    # Other encoder weights: encoded again too.
    changed, _ = tiny_model(seed=1)
    assert features_fingerprint(changed.fundus.encoder, other) != features_fingerprint(model.fundus.encoder, other)
    # The same files under another preprocessing (here the JPEG decode rule): encoded again as well.
    other_rule = ImageDataset(other_items, PreprocessConfig(size=64, decode_min_ratio=2.0, decode_min_side=0),
                              tmp_path / "cache3")
    assert features_fingerprint(model.fundus.encoder, other_rule) != features_fingerprint(model.fundus.encoder, other)


@pytest.mark.parametrize("damage", ["empty", "cut short", "no features tensor", "rows of another pool"])
def test_a_damaged_feature_cache_is_encoded_again_and_replaced(tmp_path: Path, damage: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A cache cut short (a copy interrupted, a power cut before session 38's fsync) raised SafetensorError
    ("header too small") out of ``cached``: every later run sharing the cache stopped. It is now logged,
    computed again and replaced."""
    from safetensors.torch import save_file

    from uopsl.train.stages import FeatureDataset, features_fingerprint

    cpu = torch.device("cpu")
    ds, encoder = tiny_dataset(tmp_path, n=6), tiny_model()[0].eval().fundus.encoder
    path = tmp_path / "features.safetensors"
    good = FeatureDataset.cached(path, encoder, ds, cpu)
    whole = path.read_bytes()
    fingerprint = features_fingerprint(encoder, ds)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "cut short":
        path.write_bytes(whole[: len(whole) // 2])
    elif damage == "no features tensor":
        save_file({"other": torch.zeros(2)}, str(path), metadata={"fingerprint": fingerprint})
    else:
        save_file({"features": good.features[:3].contiguous()}, str(path), metadata={"fingerprint": fingerprint})
    with caplog.at_level("WARNING", logger="uopsl.train.stages"):
        again = FeatureDataset.cached(path, encoder, ds, cpu)
    assert torch.equal(again.features, good.features)
    assert str(path) in caplog.text and "encoding again" in caplog.text
    assert path.read_bytes() == whole, "the damaged cache is replaced by a readable one"
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".features")) == []


def test_the_feature_cache_is_fsynced_before_it_is_renamed_into_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability_log: list[tuple[str, ...]]) -> None:
    from uopsl.train.stages import FeatureDataset

    ds = tiny_dataset(tmp_path, n=4)
    model, _ = tiny_model()
    model.eval()
    path = tmp_path / "cache" / "features.safetensors"
    durability_log.clear()
    FeatureDataset.cached(path, model.fundus.encoder, ds, torch.device("cpu"))
    monkeypatch.undo()
    renames = [e for e in durability_log if e[0] == "replace" and e[2] == str(path)]
    assert len(renames) == 1, durability_log
    tmp = renames[0][1]
    assert ("fsync", tmp) in durability_log[: durability_log.index(renames[0])], durability_log


def test_torchrun_completes_a_run_stopped_after_its_last_epoch_without_training_again(tmp_path: Path) -> None:
    """Under torchrun each rank decided alone from checkpoint.json, which rank 0 rewrites when it completes a
    run; so the ranks trained the whole stage again (before that: a late rank trained alone and hung). Rank 0
    now decides for all: a fine-tune and a pre-training stopped after their last epoch are completed, on both
    ranks, from the saved weights."""
    from uopsl.train.checkpoint import UNFINISHED_KEY, read_meta

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    worker = str(Path(__file__).parent / "ddp_complete_worker.py")

    def torchrun(mode: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
               worker, str(tmp_path), mode]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    proc = torchrun("stop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("ft", "pre"):
        assert {p.name for p in tmp_path.glob(f"{stage}_stopped_rank*.txt")} == {f"{stage}_stopped_rank0.txt",
                                                                                 f"{stage}_stopped_rank1.txt"}
        assert read_meta(tmp_path / stage).metrics.get(UNFINISHED_KEY) is True
    trained = {s: (tmp_path / s / "model.safetensors").read_bytes() for s in ("ft", "pre")}
    proc = torchrun("complete")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob("trained_again_rank*.txt"))
    for stage in ("ft", "pre"):
        assert (tmp_path / f"{stage}_rank0.txt").read_text() == (tmp_path / f"{stage}_rank1.txt").read_text()
        assert UNFINISHED_KEY not in read_meta(tmp_path / stage).metrics
        assert (tmp_path / stage / "model.safetensors").read_bytes() == trained[stage]
    thresholds = read_meta(tmp_path / "ft").thresholds
    assert len(thresholds) == 3
    assert (tmp_path / "thresholds_rank0.txt").read_text() == (tmp_path / "thresholds_rank1.txt").read_text() \
        == repr(thresholds)
