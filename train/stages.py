"""The two UOPSL stages as functions: :func:`pretrain` (unpaired fundus + OCT) and :func:`finetune` (fundus only).

Both write a checkpoint folder (see :mod:`uopsl.train.checkpoint`) and resume
an interrupted run of the same settings. With a frozen encoder and no
augmentation, backbone features are computed once and cached in memory
(the linear-probe regime of the label-efficiency and real-data experiments),
which makes a training step cost only the head.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from uopsl.runtime.errors import DataError
from uopsl.runtime.fsio import staging
from uopsl.train import losses
from uopsl.train.checkpoint import (UNFINISHED_KEY, UNFINISHED_RUN_KEY, CheckpointMeta, load_tensors, save_model,
                                    save_tensors)
from uopsl.train.loops import (
    StageRunner,
    TrainConfig,
    batches,
    epoch_length,
    epoch_order,
    finetune_losses,
    predict,
    pretrain_losses,
    run_epochs,
    train_loop,
)
from uopsl.train.model import UopslModel
from uopsl.train.torchdata import ImageDataset, pixels_version

log = logging.getLogger(__name__)


class FeatureDataset:
    """Backbone features of a dataset, computed once with a frozen encoder: (N, C, h, w) float16."""

    def __init__(self, features: torch.Tensor, targets: np.ndarray) -> None:
        if len(features) != len(targets):
            raise DataError(f"{len(features)} feature maps for {len(targets)} targets")
        self.features = features
        self.targets = targets

    @classmethod
    def compute(cls, encoder: torch.nn.Module, ds: ImageDataset, device: torch.device, batch_size: int = 32) -> FeatureDataset:
        encoder.eval()
        feats = []
        with torch.no_grad():
            for i in range(0, len(ds), batch_size):
                x = torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))]).to(device)
                feats.append(encoder(x).half().cpu())
        return cls(torch.cat(feats), ds.targets)

    @classmethod
    def cached(cls, path: Path, encoder: torch.nn.Module, ds: ImageDataset, device: torch.device) -> FeatureDataset:
        """:meth:`compute`, kept in a safetensors file so later runs (folds, ablations) skip the encoder.

        The file is reused only when its fingerprint matches (see
        :func:`features_fingerprint`): a pool of the same size but other images,
        sizes or encoder weights is encoded again, never served stale features.
        """
        from safetensors.torch import save_file

        fingerprint = features_fingerprint(encoder, ds)
        if path.is_file():
            stored = _read_feature_cache(path, fingerprint, len(ds))
            if stored is not None:
                return cls(stored, ds.targets)
        f = cls.compute(encoder, ds, device)
        # A temporary of this run's own (runs sharing one cache may encode the same pool at once),
        # fsynced before the rename: a power cut must not leave a cache that every later run trips on.
        with staging(path) as stage:
            stage.close()  # safetensors writes by path
            save_file({"features": f.features.contiguous()}, str(stage.path), metadata={"fingerprint": fingerprint})
            stage.commit()
        return f

    def subset(self, idx: np.ndarray) -> FeatureDataset:
        return FeatureDataset(self.features[torch.as_tensor(idx)], self.targets[idx])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i].float(), torch.from_numpy(self.targets[i])


def _read_feature_cache(path: Path, fingerprint: str, rows: int) -> torch.Tensor | None:
    """The cached features, or None when the file was made for other inputs or cannot be read.

    A cache is a convenience: a damaged one (a copy cut short, a disk error) is
    logged and computed again rather than stopping every run that shares it.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("fingerprint") != fingerprint:
                log.info("%s was computed for other images or encoder weights; encoding again", path)
                return None
            features: torch.Tensor = fh.get_tensor("features")
    except (SafetensorError, OSError) as exc:
        log.warning("%s cannot be read (%s); encoding again and replacing it", path, exc)
        return None
    if features.ndim < 1 or features.shape[0] != rows:
        log.warning("%s holds %s rows of features for a pool of %d images; encoding again and replacing it",
                    path, features.shape[0] if features.ndim else 0, rows)
        return None
    return features


def features_fingerprint(encoder: torch.nn.Module, ds: ImageDataset) -> str:
    """What a feature cache depends on: each image file (path, size, mtime), the preprocessing, the encoder weights."""
    h = hashlib.sha256()
    h.update(repr(tuple(ds.images.shape[1:])).encode())
    inputs: list[Any] = [ds.pre.to_dict(), *pixels_version(ds.modality == "oct")]
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for it in ds.items:
        st = os.stat(it.path)
        h.update(f"{os.path.abspath(it.path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


AnyDataset: TypeAlias = ImageDataset | FeatureDataset


@contextlib.contextmanager
def head_only_threads(active: bool) -> Iterator[None]:
    """One intra-op thread while training only the head on cached features.

    The head's ops are small (a 1x1 projection, attention over ~100 tokens);
    with several threads, OpenMP synchronisation costs more than the work, and
    on a busy machine spinning threads made each step ~10x slower.
    """
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_features(ds: AnyDataset, encoder: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> AnyDataset:
    """With a frozen encoder and no augmentation, train on cached features (the head is all that learns)."""
    if isinstance(ds, FeatureDataset) or not (cfg.freeze_encoder and not cfg.augment):
        return ds
    return FeatureDataset.compute(encoder, ds, device)


def pretrain(model: UopslModel, fundus: AnyDataset, oct_ds: AnyDataset | None, cfg: TrainConfig, out: Path,
             meta: CheckpointMeta, run_key: str = "") -> UopslModel:
    """Stage 1 on two unpaired pools; writes ``out/model.safetensors`` + ``checkpoint.json``.

    ``run_key``: what an interrupted run in ``out`` must share with this one to be resumed (the workflow passes
    its run identity: starting weights, settings, every image of both pools); default: the checkpoint's data
    fingerprint, which covers the fundus pool only.
    """
    if model.config.uses_oct and oct_ds is None:
        raise DataError("the full UOPSL variant needs an OCT pool for pre-training (or use --variant p_only)")
    out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(model, cfg, out, "pretrain", run_key or meta.data_fingerprint, meta.preprocess)
    runner.resume()
    fundus = as_features(fundus, model.fundus.encoder, cfg, runner.device)
    if model.oct is not None and oct_ds is not None:
        oct_ds = as_features(oct_ds, model.oct.encoder, cfg, runner.device)
    loss_fn = pretrain_losses(model, cfg, features=isinstance(fundus, FeatureDataset))
    use_oct = model.config.uses_oct and oct_ds is not None
    length = epoch_length(max(len(fundus), len(oct_ds) if use_oct and oct_ds is not None else 0),
                          cfg.batch_size, runner.dist)

    def epoch(ep: int, start: int, bar: Any) -> dict[str, float]:
        runner.set_train_mode()
        fo = epoch_order(fundus.targets, ep, cfg.seed, cfg.balanced, length)
        oo = epoch_order(oct_ds.targets, ep, cfg.seed + 1, cfg.balanced, length) if use_oct and oct_ds is not None else None
        ob = batches(oct_ds, oo, cfg.batch_size, runner.dist, start) if oo is not None and oct_ds is not None else None
        sums, n = runner.epoch_sums(start)
        done_here = 0  # steps since this process started the epoch (the rate's own count)
        t0 = time.perf_counter()
        for step, xf, yf in batches(fundus, fo, cfg.batch_size, runner.dist, start):
            xo = yo = None
            if ob is not None:
                _, xo, yo = next(ob)
                xo, yo = xo.to(runner.device), yo.to(runner.device)
            with torch.autocast(runner.device.type, enabled=runner.amp):
                parts = loss_fn(xf.to(runner.device), yf.to(runner.device), xo, yo)
            runner.step(parts["loss"])
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            runner.note_partial(sums, n)
            runner.info.update(step=step + 1, global_step=runner.info["global_step"] + 1)
            done_here += 1
            # Fundus photographs per second, as finetune counts them (an OCT batch rides along with each).
            rate = done_here * len(xf) * runner.dist.world / max(time.perf_counter() - t0, 1e-9)
            runner.log_row({"stage": "pretrain", "epoch": ep + 1, "step": step + 1,
                            **{k: round(float(v.detach()), 5) for k, v in parts.items()}, "img_per_s": round(rate, 2)})
            bar.set_postfix(loss=f"{float(parts['loss'].detach()):.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
            if cfg.save_every and runner.info["global_step"] % cfg.save_every == 0:
                runner.checkpoint()
        return {k: v / max(n, 1) for k, v in sums.items()}

    def on_epoch_end(ep: int, stats: dict[str, float]) -> None:
        if runner.dist.main:  # one line per epoch, as finetune's: a run under nohup was silent until it ended
            log.info("pretrain epoch %d/%d: %s", ep + 1, cfg.epochs,
                     ", ".join(f"{k} {v:.4f}" for k, v in stats.items()))

    with head_only_threads(isinstance(fundus, FeatureDataset)):
        run_epochs(runner, length, epoch, on_epoch_end)
    if runner.dist.main:  # marked unfinished until the workflow records the run's identity
        save_model(out, model, replace(meta, stage="pretrain", train_config=cfg.to_dict(),
                                       metrics={"history": runner.info["history"], UNFINISHED_KEY: True,
                                                UNFINISHED_RUN_KEY: run_key}))
    runner.finish()
    return model


def effective_finetune_config(cfg: TrainConfig, model: UopslModel, warn: bool = False) -> TrainConfig:
    """``cfg`` as fine-tuning ``model`` runs it: the site guide off where there is no site attention to
    train (``fundus_only``) or it is held fixed (``freeze_sites``), so saved configs say what ran."""
    if cfg.w_site_guide > 0 and (cfg.freeze_sites or model.config.variant == "fundus_only"):
        if warn:
            log.warning("the site guide is off for this run (%s)",
                        "site attention frozen" if cfg.freeze_sites else "fundus_only has no site attention")
        return replace(cfg, w_site_guide=0.0)
    return cfg


def finetune(model: UopslModel, train_ds: AnyDataset, val_ds: AnyDataset | None, cfg: TrainConfig, out: Path,
             meta: CheckpointMeta, select: Any = None, run_key: str = "") -> tuple[UopslModel, dict[str, Any]]:
    """Stage 2 on fundus images; keeps the epoch with the best validation score.

    ``run_key``: as :func:`pretrain`'s (the workflow's run identity covers the validation images too, which
    choose the kept epoch).

    ``select(probs, targets) -> float`` scores an epoch on ``val_ds`` (higher is
    better; default: negative validation loss). The OCT branch is dropped.
    """
    model.oct = None
    out.mkdir(parents=True, exist_ok=True)
    cfg = effective_finetune_config(cfg, model, warn=True)
    runner = StageRunner(model, cfg, out, "finetune", run_key or meta.data_fingerprint, meta.preprocess)
    runner.resume()
    log.info("finetune: %d training and %s validation images", len(train_ds),
             len(val_ds) if val_ds is not None else "no")
    src_train: Any = as_features(train_ds, model.fundus.encoder, cfg, runner.device)
    src_val: Any = None if val_ds is None else as_features(val_ds, model.fundus.encoder, cfg, runner.device)
    feats = isinstance(src_train, FeatureDataset)

    loss_fn = finetune_losses(model, features=feats, w_site=cfg.w_site_finetune, w_guide=cfg.w_site_guide,
                              w_gen=cfg.w_gen)

    best_file = out / "best.safetensors"
    state = {"best": runner.info.get("best", -np.inf)}

    def on_epoch_end(ep: int, stats: dict[str, float]) -> None:
        if src_val is None:
            score = -stats.get("loss", 0.0)
        else:
            probs = predict(model, src_val, device=runner.device)["probs"]
            p = torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)
            head = model.config.head  # logits the head's loss reads back: log-odds (sigmoid), log-probabilities (softmax)
            score = select(probs, src_val.targets) if select else -float(
                losses.classification(torch.logit(p) if head == "sigmoid" else torch.log(p),
                                      torch.from_numpy(src_val.targets), head))
        stats["val_score"] = float(score)
        better = score > state["best"]
        if better and runner.dist.main:
            state["best"] = float(score)
            runner.info["best"] = float(score)
            runner.info["best_epoch"] = ep + 1
            save_tensors(best_file, model.state_dict())  # atomic: a kill mid-write left a truncated file to load
        if runner.dist.main:  # one line per epoch on the console: what a researcher watches
            what = ((f"validation {getattr(select, '__name__', 'score').replace('_', ' ')}" if select
                     else "validation loss (negated)") if src_val is not None
                    else "training loss (negated; no validation images)")
            log.info("finetune epoch %d/%d: loss %.4f, %s %.3f%s", ep + 1, cfg.epochs, stats.get("loss", float("nan")),
                     what, score, " (best so far: kept)" if better else f" (best {state['best']:.3f}, "
                     f"epoch {runner.info.get('best_epoch', '?')})")

    with head_only_threads(feats):
        run_epochs(runner, len(src_train), train_loop(runner, src_train, loss_fn), on_epoch_end)
    if best_file.is_file():
        model.load_state_dict(load_tensors(best_file), strict=True)
    result = {"history": runner.info["history"], "best_epoch": runner.info.get("best_epoch"),
              "best_val_score": runner.info.get("best")}
    if runner.dist.main:  # marked unfinished until the workflow adds the thresholds and the run's identity
        save_model(out, model, replace(meta, stage="finetune", train_config=cfg.to_dict(),
                                       metrics={**result, UNFINISHED_KEY: True, UNFINISHED_RUN_KEY: run_key}))
    # The state goes first: resumed without the best epoch's file, a run would end on the last epoch's weights.
    runner.finish()
    if runner.dist.world > 1:  # every rank has loaded the best epoch's weights before rank 0 removes them
        torch.distributed.barrier()
    if runner.dist.main:
        best_file.unlink(missing_ok=True)
    return model, result
