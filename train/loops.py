"""Training loops for both stages, resumable, deterministic, single- or multi-process.

Multi-GPU and multi-node runs go through ``torchrun``: when ``WORLD_SIZE`` is
set the loop joins the process group (nccl on GPU, gloo on CPU), shards each
epoch's deterministic index permutation by rank, averages the gradients over
the ranks after every backward pass and gives every rank rank 0's buffers
(BatchNorm statistics) after every step: synchronous data parallelism, as
DistributedDataParallel does. (The losses call the model's branches directly,
not ``forward``, which DistributedDataParallel needs to see to synchronise;
wrapped, each rank trained a model of its own.) There is no other distributed
code path; one process is simply world size 1. The contrastive losses see the
process's own batch: ``--batch-size`` is per process.

Resume: the full training state (model, optimizer, RNG, position in the epoch)
is saved atomically every ``save_every`` steps and at each epoch end. Rerunning
the same command continues from it; a finished stage (model written, state
cleared) is not retrained.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import atomic_open
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime import progress as progress_bars
from uopsl.train import losses
from uopsl.train.checkpoint import clear_state, load_state, peek_state, save_state
from uopsl.train.model import UopslModel
from uopsl.train.torchdata import pixels_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one stage; saved with its checkpoint."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    lr_encoder: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0
    freeze_encoder: bool = False
    freeze_sites: bool = False
    augment: bool = True
    balanced: bool = True
    save_every: int = 50
    device: str = "auto"
    amp: bool = True
    w_fundus: float = 1.0
    w_oct: float = 1.0
    w_site: float = 1.0
    w_gen: float = 0.1
    # Stage 2 only: weight of the site loss on fundus (the site-pooled feature of
    # each class alone must score the image's classes). 0 keeps the published
    # recipe, where stage 2 trains only the fused classification.
    w_site_finetune: float = 0.0
    # Stage 2 only: weight of the site guide, which pulls each present class's
    # site map towards where the classifier's own global projection finds that
    # class's evidence (losses.site_guide; our addition, docs/method.md). On by
    # default: without it the maps land on the lesions only in some seeds.
    # 0 is the published recipe.
    w_site_guide: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):  # NaN passes every comparison below (and click's FloatRange): refuse it by name
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number, got {v}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0 or self.lr_encoder < 0:
            raise ConfigError(f"learning rates must be positive, got lr={self.lr}, lr_encoder={self.lr_encoder}")
        for name in ("w_site_finetune", "w_site_guide"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- distributed plumbing -----------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group if this process was started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        # nccl runs each rank's collectives on the current CUDA device; left at cuda:0, every rank of a
        # several-GPU machine would share GPU 0 (nccl refuses that) while its model sits on cuda:LOCAL_RANK.
        # A bare "cuda" (no index) means this rank's own GPU.
        torch.cuda.set_device(device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when PyTorch sees a GPU, else CPU) or a device name; a device that is not there is a
    ConfigError (one line, exit 2), not the RuntimeError PyTorch raises at the first ``.to()``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                              "False); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {name}: PyTorch sees {n} CUDA GPU{'s' if n != 1 else ''} "
                              f"(cuda:0{f'..cuda:{n - 1}' if n > 1 else ''}); use one of those or --device cpu")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: PyTorch sees no Apple GPU (torch.backends.mps.is_available() is False); "
                          "use --device cpu")
    return dev


# -- sampling -----------------------------------------------------------------
def epoch_order(targets: np.ndarray, epoch: int, seed: int, balanced: bool, length: int | None = None) -> np.ndarray:
    """Deterministic sample order for an epoch; class-balanced sampling with replacement if asked."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(targets)
    length = length or n
    if not balanced:
        reps = -(-length // n)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:length].numpy()
    freq = targets.sum(axis=0) + 1e-6
    # weight of an image: mean inverse frequency of its classes (images with no label: of "none")
    w = (targets / freq).sum(axis=1) / np.maximum(targets.sum(axis=1), 1)
    w = np.where(targets.sum(axis=1) > 0, w, 1.0 / max(1, int((targets.sum(axis=1) == 0).sum())))
    return torch.multinomial(torch.as_tensor(w, dtype=torch.float64), length, True, generator=g).numpy()


class PairDataset(Protocol):
    """What the training loop reads: (x, y) pairs by index and their targets (N, K).

    A :class:`~uopsl.train.torchdata.ImageDataset` or cached backbone features
    (``stages.FeatureDataset``).
    """

    @property
    def targets(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def batches(ds: PairDataset, order: np.ndarray, bs: int, d: Dist, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (step, x, y) from ``order``, sharded by rank, starting at step ``start``."""
    per_step = bs * d.world
    steps = len(order) // per_step
    for step in range(start, steps):
        idx = order[step * per_step : (step + 1) * per_step][d.rank :: d.world]
        xs, ys = zip(*(ds[int(i)] for i in idx))
        yield step, torch.stack(xs), torch.stack(ys)


def epoch_length(n: int, bs: int, d: Dist) -> int:
    """Samples drawn per epoch: the dataset, but at least one full batch on every rank.

    Without the floor a few-shot set smaller than a batch would train zero steps.
    """
    return max(n, bs * d.world)


def steps_per_epoch(n: int, bs: int, d: Dist) -> int:
    return epoch_length(n, bs, d) // (bs * d.world)


#: TrainConfig fields that say how a run is carried out, not what it trains: a resumed or reused run may differ
#: in them.
HOW_NOT_WHAT = ("device", "amp", "save_every")


def _tag_settings(stage: str, cfg: TrainConfig, *, legacy: bool = False) -> dict[str, Any]:
    """The settings :func:`run_tag` hashes (see there)."""
    settings = {k: v for k, v in cfg.to_dict().items() if legacy or k not in HOW_NOT_WHAT}
    if stage != "finetune" or not cfg.w_site_guide:
        settings.pop("w_site_guide")
    return settings


def run_tag(stage: str, cfg: TrainConfig, fingerprint: str, world: int, model: dict[str, Any] | None = None,
            *, legacy: bool = False) -> str:
    """What a resumed run must share with the interrupted one: stage, settings, data, world size, and
    (``model``) the architecture and how files become pixels.

    ``w_site_guide`` counts only where it acts (fine-tuning, weight > 0), so
    runs interrupted before the option existed resume (fine-tuning ones with
    ``--site-guide 0``, which is what they ran). ``legacy``: the tag of states
    saved before :data:`HOW_NOT_WHAT` was left out (session 25), which still resume.
    """
    # How a run is carried out is not what it trains: an interrupted run resumes with another --save-every, on
    # another device or with AMP switched (a review found each of them refused).
    settings = _tag_settings(stage, cfg, legacy=legacy)
    parts: list[Any] = [stage, settings, fingerprint, world] + ([model] if model is not None else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]  # without model: the tag runs had before


# -- the loop -------------------------------------------------------------------
class StageRunner:
    """Shared machinery of both stages: optimiser, AMP, checkpoints, CSV log, progress."""

    def __init__(self, model: UopslModel, cfg: TrainConfig, out: Path, stage: str, fingerprint: str,
                 preprocess: PreprocessConfig | None = None) -> None:
        """``preprocess``: how the run's photographs become model inputs, kept in the state: a run resumed at
        another ``--size`` trained one model at two resolutions (a review)."""
        self.cfg, self.out, self.stage = cfg, out, stage
        self.preprocess = preprocess
        self.device = pick_device(cfg.device)
        self.dist = setup_distributed(self.device)
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        enc_params: list[nn.Parameter] = []
        other: list[nn.Parameter] = []
        # What this stage freezes it gives back in finish(): a freeze lasts one stage, so a model object
        # pre-trained with a frozen encoder is not still frozen when it is then fine-tuned "train all".
        self._frozen_here: list[nn.Parameter] = []
        self._log_head: list[str] | None = None  # log.csv's header, once read or written (log_row)
        self._said_log_head = False
        for name, p in model.named_parameters():
            is_enc = ".encoder." in f".{name}"
            is_site = name.startswith(("sites.", "delta", "generator."))
            if (is_enc and cfg.freeze_encoder) or (is_site and cfg.freeze_sites):
                if p.requires_grad:
                    self._frozen_here.append(p)
                p.requires_grad_(False)
            elif p.requires_grad:
                (enc_params if is_enc else other).append(p)
        groups = [{"params": other, "lr": cfg.lr}]
        if enc_params:
            groups.append({"params": enc_params, "lr": cfg.lr_encoder})
        # Typed as any optimiser: QAT (qat.py) replaces this one with its own Adam.
        self.opt: torch.optim.Optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        # The module the loops switch between train and eval mode (the model itself; under torchrun the
        # gradients are averaged in step(), see the module docstring).
        self.ddp: nn.Module = model
        if self.dist.world > 1:
            self.broadcast_buffers()  # every rank starts from rank 0's statistics (the weights are seeded alike)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        arch = {"config": model.config.to_dict(),
                "inputs": pixels_version(stage == "pretrain" and model.config.uses_oct)}
        self.tag = run_tag(stage, cfg, fingerprint, self.dist.world, arch)
        self._legacy_tag = run_tag(stage, cfg, fingerprint, self.dist.world, arch, legacy=True)
        self.info: dict[str, Any] = {"tag": self.tag, "epoch": 0, "step": 0, "global_step": 0, "history": [],
                                     # Kept beside the tag (a hash) so that a refused resume can say what differs.
                                     "settings": _tag_settings(stage, cfg), "run_key": fingerprint,
                                     "world": self.dist.world,
                                     **({"preprocess": preprocess.to_dict()} if preprocess is not None else {})}
        self.saved_at: tuple[int, int] | None = None  # (epoch from 0, step) of the last checkpoint

    def _check_preprocess(self, peek: Mapping[str, Any]) -> None:
        """Refuse to resume a run whose photographs became other model inputs (another ``--size``, say)."""
        if self.preprocess is None:
            return
        there = peek.get("preprocess")
        if not isinstance(there, dict):  # saved before 0.2.3 recorded it: nothing to compare
            log.warning("%s: the interrupted run's state does not record its input preprocessing (saved by an "
                        "earlier uopsl); resuming it as if it were this command's (%s px): if it was started with "
                        "another --size, stop and start again in a new --out", self.out, self.preprocess.size)
            return
        changed = preprocess_changes(PreprocessConfig.from_dict(there), self.preprocess)
        if changed:
            raise ConfigError(
                f"{self.out} holds an interrupted {peek.get('stage', 'training')} run whose photographs became other "
                f"model inputs ({changed}); rerun with the same --size to resume it, or use a new --out folder")

    def _what_differs(self, peek: dict[str, Any]) -> str:
        """What the interrupted run's state records differently from this run, in words ("" when it records
        nothing to compare: states saved before 2026-12-02, or the same records and another tag)."""
        said = []
        there: dict[str, Any] = {}  # the settings each run records (their names in its *.config.json, "train")
        here: dict[str, Any] = dict(self.info["settings"])
        if isinstance(peek.get("settings"), dict):
            there.update(peek["settings"])
        key, mine = peek.get("run_key"), self.info["run_key"]
        if isinstance(key, str) and "|{" in key and "|{" in mine:  # a stage's own settings after the key (qat)
            (key, extra_there), (mine, extra_now) = key.split("|{", 1), mine.split("|{", 1)
            try:
                a, b = json.loads("{" + extra_there), json.loads("{" + extra_now)
            except ValueError:
                a, b = {}, {}
            if isinstance(a, dict) and isinstance(b, dict):
                there, here = {**a, **there}, {**b, **here}
        if there:  # states saved before 2026-12-02 record none; only what the state records is compared
            changed = sorted(k for k in there if there[k] != here.get(k))
            if changed:
                said.append("settings: " + ", ".join(f"{k} ({there.get(k)!r} there, {here.get(k)!r} now)"
                                                     for k in changed))
        if isinstance(key, str) and key.startswith("identity:") and mine.startswith("identity:"):
            try:
                a, b = json.loads(key[len("identity:"):]), json.loads(mine[len("identity:"):])
            except ValueError:
                a, b = {}, {}
            if a.get("model") != b.get("model"):
                said.append("starting weights (the checkpoint or --init file it starts from, or the model's options)")
            if a.get("data") != b.get("data"):
                said.append("data (--data, --val, --oct, --shots: other images, labels or order)")
        elif isinstance(key, str) and key != mine:  # a data fingerprint (a stage run outside the workflow)
            said.append("data or starting weights")
        if isinstance(peek.get("world"), int) and peek["world"] != self.dist.world:
            said.append(f"number of processes ({peek['world']} there, {self.dist.world} now)")
        return "; ".join(said)

    def resume(self) -> bool:
        peek = peek_state(self.out)
        if peek is None:
            # A fresh start: log.csv rows of this stage come from an attempt stopped before its first checkpoint
            # (or one trained again): kept, they appeared twice after this run's own.
            self._trim_log(fresh=True)
            return False
        if peek.get("tag") not in (self.tag, self._legacy_tag):  # before any tensor loads: another model's weights
            differ = self._what_differs(peek)
            raise ConfigError(
                f"{self.out} holds an interrupted {peek.get('stage', 'training')} run with "
                + (f"other {differ}" if differ else "other settings, data or model (or one made by an earlier "
                   "uopsl, whose models or preprocessing differ)")
                + "; rerun with the same settings to resume it, or use a new --out folder"
            )
        self._check_preprocess(peek)
        info = load_state(self.out, self.model, self.opt)
        if info is None:
            return False
        scaler = info.pop("amp_scaler", None)
        if self.amp and isinstance(scaler, dict) and scaler:  # none when saved without AMP (amp may change on resume)
            self.scaler.load_state_dict(scaler)
        # A state saved under the legacy tag is saved under today's from now, with today's records beside it.
        self.info = {**info, **{k: self.info[k] for k in ("tag", "settings", "run_key", "world", "preprocess")
                                if k in self.info}}
        self.saved_at = (int(info["epoch"]), int(info["step"]))
        self._trim_log()
        if info["epoch"] >= self.cfg.epochs:  # stopped after its last epoch, while writing the model
            log.info("resuming %s after its last epoch (%d of %d): writing its model", self.stage, info["epoch"],
                     self.cfg.epochs)
        else:
            log.info("resuming %s from %s", self.stage, checkpoint_words(int(info["epoch"]), int(info["step"])))
        return True

    def _trim_log(self, fresh: bool = False) -> None:
        """Drop log.csv rows of this stage written after the checkpoint being resumed (``fresh``: all of this
        stage's rows): they are run again."""
        path = self.out / "log.csv"
        if not self.dist.main or not path.is_file():
            return
        ep, step = (0, 0) if fresh else (self.info["epoch"] + 1, self.info["step"])  # rows count from 1
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        head, body = rows[0], rows[1:]
        try:
            i_stage, i_ep, i_step = head.index("stage"), head.index("epoch"), head.index("step")
        except ValueError:
            return

        def position(r: list[str]) -> tuple[int, int] | None:
            try:
                return int(r[i_ep]), int(r[i_step])
            except (ValueError, IndexError):  # a row cut short (a full disk, a power cut): no position
                return None

        # A row of this stage without a readable position is dropped with the later ones: it was being written
        # when the run stopped (it blocked every resume with "invalid literal for int()", a review).
        kept = [r for r in body if len(r) <= i_stage or r[i_stage] != self.stage
                or ((pos := position(r)) is not None and pos <= (ep, step))]
        cut = [r for r in body if len(r) > i_stage and r[i_stage] == self.stage and position(r) is None]
        if cut:
            log.warning("%s: dropped %d row(s) of %s cut short (written when the run stopped)", path, len(cut),
                        self.stage)
        if len(kept) != len(body):
            with atomic_open(path, "w", encoding="utf-8", newline="") as out:  # "\r\n", as log_row appends them
                csv.writer(out).writerows([head, *kept])

    def epoch_sums(self, start: int) -> tuple[dict[str, float], int]:
        """The loss sums and step count of the epoch so far: restored when it resumes mid-epoch."""
        part = self.info.get("partial")
        if start > 0 and isinstance(part, dict):
            return dict(part.get("sums") or {}), int(part.get("n") or 0)
        return {}, 0

    def note_partial(self, sums: dict[str, float], n: int) -> None:
        """Keep the epoch's sums in the state a checkpoint saves, so a resumed epoch reports its whole mean."""
        self.info["partial"] = {"sums": dict(sums), "n": n}

    def checkpoint(self, extra: Callable[[], None] | None = None) -> None:
        at = (int(self.info["epoch"]), int(self.info["step"]))
        if self.dist.main:
            # The loss scale AMP reached: resumed from its initial 65536, the first steps after a resume were
            # skipped as overflows until it backed off again.
            scaler = {"amp_scaler": self.scaler.state_dict()} if self.amp else {}
            save_state(self.out, self.model, self.opt, {**self.info, **scaler, "stage": self.stage})
            if extra:
                extra()
        if self.dist.world > 1:
            dist.barrier()
        # Only now: an interruption during the save named a checkpoint that was never written (a review).
        self.saved_at = at

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.dist.world > 1:
            self.average_gradients()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.dist.world > 1:
            self.broadcast_buffers()

    def average_gradients(self) -> None:
        """All-reduce the optimiser's gradients to their mean over the ranks (in place).

        A parameter that got a gradient on some ranks and none on others (a
        class absent from one rank's batch) gets zeros where it had none, so
        every rank reduces the same list; one that got none anywhere stays
        None and the optimiser skips it everywhere alike.
        """
        params = [p for group in self.opt.param_groups for p in group["params"]]
        if not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(present)
        grads = []
        for p, n in zip(params, present.tolist()):
            if n == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if not grads:  # no parameter got a gradient on any rank: nothing to average
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.dist.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_buffers(self) -> None:
        """Rank 0's BatchNorm running statistics on every rank, as DistributedDataParallel keeps buffers.

        Only BatchNorm's: the model's other buffers (class text, masks, normalisation) never change in
        training. One collective per dtype, not per buffer.
        """
        bufs = [b for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for b in m.buffers(recurse=False)]
        for dtype in sorted({b.dtype for b in bufs}, key=str):
            group = [b for b in bufs if b.dtype == dtype]
            flat = torch.cat([b.reshape(-1) for b in group])
            dist.broadcast(flat, 0)
            offset = 0
            for b in group:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def log_row(self, row: dict[str, Any]) -> None:
        """Append one step's row to ``log.csv`` (rank 0 only).

        ``global_step`` (steps of this stage across epochs) and ``wall_time`` (Unix seconds) are added after
        ``step`` and at the end: the step and time axes TensorBoard's scalar CSVs use, so a resumed run's rows
        can be plotted without rebuilding the step from epoch and step. A log.csv begun by an older version
        keeps its header (the new columns are left out of its rows rather than shifting them).
        """
        if not self.dist.main:
            return
        keys = list(row)
        at = keys.index("step") + 1 if "step" in keys else len(keys)
        row = {**{k: row[k] for k in keys[:at]}, "global_step": int(self.info["global_step"]),
               **{k: row[k] for k in keys[at:]}, "wall_time": round(time.time(), 3)}
        path = self.out / "log.csv"
        head = self._log_head or _csv_header(path)  # read once per runner, not per step
        if head is not None and not self._said_log_head:
            if dropped := [k for k in row if k not in head]:
                log.info("%s was begun by an earlier version: its rows leave out %s", path, ", ".join(dropped))
            self._said_log_head = True
        with open(path, "a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=head or list(row), extrasaction="ignore")
            if head is None:
                w.writeheader()
            w.writerow(row)
        self._log_head = head or list(row)

    def progress(self, total: int, initial: int, desc: str):  # type: ignore[no-untyped-def]
        return progress_bars.bar(total=total, initial=initial, desc=desc, show=self.dist.main, mininterval=1.0,
                                 terminal_only=True)  # a log file gets the per-epoch lines, not bar redraws

    def set_train_mode(self, eval_mode: bool = False) -> None:
        """Train mode for the epoch, except a frozen encoder (and ``eval_mode``: everything) in eval mode.

        A frozen encoder must not move its BatchNorm statistics (nor drop out): its outputs would change
        while its weights stay, unlike the cached features a frozen run without augmentation uses.
        """
        self.ddp.train(not eval_mode)
        if self.cfg.freeze_encoder:
            for m in self.model.modules():
                if hasattr(m, "trunk"):
                    m.eval()

    def finish(self) -> None:
        for p in self._frozen_here:
            p.requires_grad_(True)
        if self.dist.main:
            clear_state(self.out)


def preprocess_changes(there: PreprocessConfig, here: PreprocessConfig | None) -> str:
    """"size 64 there, 128 now": how a run's preprocessing differs from this command's ("" when it does not, or
    ``here`` is None)."""
    if here is None:
        return ""
    return ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in sorted(there.differences(here).items()))


def _csv_header(path: Path) -> list[str] | None:
    """The header row of the CSV file ``path``; None when it does not exist or is empty."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), None)
    except FileNotFoundError:
        return None


def checkpoint_words(epoch: int, step: int) -> str:
    """A checkpoint's place in words: "epoch 2 after step 3", or "the end of epoch 1" (saved as epoch 2
    after step 0, which read as if epoch 2 had begun)."""
    return f"the end of epoch {epoch}" if step == 0 and epoch > 0 else f"epoch {epoch + 1} after step {step}"


def run_epochs(runner: StageRunner, n_items: int, epoch_fn: Callable[[int, int, Any], dict[str, float]],
               on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> None:
    """Drive ``epoch_fn(epoch, start_step, progress)`` over the remaining epochs with checkpoints."""
    cfg = runner.cfg
    while runner.info["epoch"] < cfg.epochs:
        ep = runner.info["epoch"]
        total = steps_per_epoch(n_items, cfg.batch_size, runner.dist)
        bar = runner.progress(total, runner.info["step"], f"{runner.stage} {ep + 1}/{cfg.epochs}")
        def stopped(when: str) -> KeyboardInterrupt:
            saved = runner.saved_at
            if saved is not None:
                where = (f"its last checkpoint, {checkpoint_words(*saved)}, is in {runner.out}: run the same "
                         "command again to resume")
            else:  # "run it again to resume" promised a resume with nothing to resume from (a review)
                where = (f"no checkpoint was written yet to {runner.out}: the same command starts this stage again "
                         "from its beginning")
            return KeyboardInterrupt(f"{runner.stage} interrupted {when}; {where}")

        try:
            stats = epoch_fn(ep, runner.info["step"], bar)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (the CLI turns it into one): say what is saved
            bar.close()
            raise stopped(f"in epoch {ep + 1} of {cfg.epochs}") from exc
        bar.close()
        try:
            # Validation of the epoch and its checkpoint: a stop here said only "aborted" (review, session 31).
            if on_epoch_end:
                on_epoch_end(ep, stats)
            runner.info.update(epoch=ep + 1, step=0)
            runner.info.pop("partial", None)
            runner.info["history"].append({"epoch": ep + 1, **stats})
            runner.checkpoint()
        except KeyboardInterrupt as exc:
            raise stopped(f"at the end of epoch {ep + 1} of {cfg.epochs} (validating or saving it)") from exc


def train_loop(runner: StageRunner, ds: PairDataset, loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
               length: int | None = None, eval_mode: bool = False) -> Callable[[int, int, Any], dict[str, float]]:
    """An ``epoch_fn`` for :func:`run_epochs` that minimises ``loss_fn(x, y)['loss']`` over ``ds``.

    ``eval_mode``: the model stays in eval mode (frozen BatchNorm statistics, no
    dropout), as quantization-aware fine-tuning needs.
    """
    cfg = runner.cfg

    def epoch(ep: int, start: int, bar: Any) -> dict[str, float]:
        runner.set_train_mode(eval_mode)
        order = epoch_order(ds.targets, ep, cfg.seed, cfg.balanced,
                            epoch_length(length or len(ds), cfg.batch_size, runner.dist))
        sums, n = runner.epoch_sums(start)
        done_here = 0  # steps since this process started the epoch (the rate's own count)
        t0 = time.perf_counter()
        for step, x, y in batches(ds, order, cfg.batch_size, runner.dist, start):
            x, y = x.to(runner.device, non_blocking=True), y.to(runner.device, non_blocking=True)
            with torch.autocast(runner.device.type, enabled=runner.amp):
                parts = loss_fn(x, y)
            runner.step(parts["loss"])
            n += 1
            done_here += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            runner.note_partial(sums, n)
            runner.info.update(step=step + 1, global_step=runner.info["global_step"] + 1)
            rate = done_here * len(x) * runner.dist.world / max(time.perf_counter() - t0, 1e-9)
            runner.log_row({"stage": runner.stage, "epoch": ep + 1, "step": step + 1,
                            **{k: round(float(v.detach()), 5) for k, v in parts.items()}, "img_per_s": round(rate, 2)})
            bar.set_postfix(loss=f"{float(parts['loss'].detach()):.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
            if cfg.save_every and runner.info["global_step"] % cfg.save_every == 0:
                runner.checkpoint()
        return {k: v / max(n, 1) for k, v in sums.items()}

    return epoch


# -- stage-specific losses ---------------------------------------------------------
def pretrain_losses(model: UopslModel, cfg: TrainConfig, features: bool = False) -> Callable[..., dict[str, torch.Tensor]]:
    """Loss of one stage-1 step on a fundus batch and (for the full method) an OCT batch.

    ``features``: the batches are cached backbone features, not images.
    """

    def fn(xf: torch.Tensor, yf: torch.Tensor, xo: torch.Tensor | None = None, yo: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        e = model.prototypes()
        tau = model.tau
        tokens, glob, (h, w) = model.fundus.from_features(xf) if features else model.fundus(xf)
        parts = {"fundus": losses.soft_contrastive(glob, e, yf, tau)}
        if model.config.variant == "p_only":
            # P without OCT: the site loss is applied to fundus tokens instead, inside the FOV as in stage 2.
            z, _ = model.sites(tokens, model.site_queries(), model.inside_tokens(h, w, tokens.device))
            parts["site"] = losses.site_loss(z, e, yf, tau)
        if xo is not None and yo is not None and model.oct is not None:
            o = model.oct_forward(xo, features=features)
            parts["oct"] = losses.soft_contrastive(o["global"], e, yo, tau)
            parts["site"] = losses.site_loss(o["z"], e, yo, tau)
        if model.config.variant != "fundus_only":
            parts["gen"] = losses.generator_fit(model.delta, model.seen)
        weights = {"fundus": cfg.w_fundus, "oct": cfg.w_oct, "site": cfg.w_site, "gen": cfg.w_gen}
        parts["loss"] = sum(weights[k] * v for k, v in parts.items())  # type: ignore[assignment]
        return parts

    return fn


def finetune_losses(model: UopslModel, features: bool = False, w_site: float = 0.0, w_guide: float = 0.0,
                    w_gen: float = TrainConfig.w_gen) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss of one stage-2 step; ``features``: batches are cached backbone features, not images.

    No pos_weight: the class-balanced sampler already evens the classes out.
    ``w_site`` > 0 adds the site loss on the fundus tokens (as stage 1 applies
    it to OCT): the fused score can lean on the global vector alone, this term
    makes each class's site-pooled feature carry that class's evidence.
    ``w_guide`` > 0 adds the site guide: each present class's map must follow
    the evidence maps of the global projection (``losses.evidence_maps``).
    ``w_gen``: the generator fit's weight (``TrainConfig.w_gen``, as in stage 1).
    """
    guide = w_guide > 0 and model.config.variant != "fundus_only"
    reference = model.reference_class()

    def fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model.forward_features(x, token_globals=guide) if features else model(x, token_globals=guide)
        loss = losses.classification(out["logits"], y, model.config.head)
        parts = {"cls": loss}
        if model.config.variant != "fundus_only":
            parts["gen"] = losses.generator_fit(model.delta, model.seen)
            loss = loss + w_gen * parts["gen"]
            if w_site > 0:
                parts["site"] = losses.site_loss(out["site_features"], model.prototypes(), y, model.tau)
                loss = loss + w_site * parts["site"]
            if guide:
                h, w = out["site_maps"].shape[2:]
                inside = model.inside_tokens(h, w, x.device)
                # The maps again, on detached tokens: the guide moves the site attention only,
                # never the token projection or the encoder that the classifier reads.
                maps = model.sites.maps(out["tokens"].detach(), model.site_queries(), inside).float()
                with torch.no_grad():
                    target = losses.evidence_maps(out["token_globals"], model.prototypes(), reference, inside)
                parts["guide"] = losses.site_guide(maps, target, y, reference)
                loss = loss + w_guide * parts["guide"]
        parts["loss"] = loss
        return parts

    return fn


@torch.no_grad()
def predict(model: UopslModel, ds: Any, batch_size: int = 32, device: torch.device | None = None,
            use_sites: bool = True, with_maps: bool = False) -> dict[str, np.ndarray]:
    """Probabilities (and optionally site maps) for every item of ``ds``, in order.

    ``ds`` is an :class:`ImageDataset` or a dataset of cached backbone
    features (anything with a ``features`` tensor, see ``stages.FeatureDataset``).
    """
    device = device or next(model.parameters()).device
    feats = getattr(ds, "features", None)
    model.eval()
    probs, maps = [], []
    for i in range(0, len(ds), batch_size):
        if feats is not None:
            out = model.forward_features(feats[i : i + batch_size].float().to(device), use_sites)
        else:
            x = torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))]).to(device)
            out = model(x, use_sites=use_sites)
        probs.append(model.probs(out["logits"]).float().cpu().numpy())
        if with_maps:
            maps.append(out["site_maps"].float().cpu().numpy())
    res = {"probs": np.concatenate(probs)}
    if with_maps:
        res["site_maps"] = np.concatenate(maps)
    return res
