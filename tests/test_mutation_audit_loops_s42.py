"""Mutation audit of ``train/loops.py`` (session 42, helper G): the training loops' plumbing.

Audited: ``TrainConfig``'s refusals, ``pick_device`` and ``setup_distributed`` (which GPU, which backend),
``epoch_order`` / ``batches`` / ``epoch_length`` (the order, the rank shards, the resume position),
``run_tag`` (what a resume must share), ``StageRunner`` (optimiser groups, freezing, AMP, resume, the log
trimming, checkpoints), ``run_epochs`` / ``train_loop`` (epochs, save points, history, log rows, the stop
message) and ``predict``. Single-point mutants were run against the existing training tests; each test here
kills survivors, named in its docstring. The loop is driven with a toy module (a few scalar parameters, named
like the model's encoder, site and head parameters) and a dataset of index-valued items, so every expected
order, group and save point is worked out by hand or by a plain re-implementation; no test trains a network.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from uopsl.runtime.errors import ConfigError
from uopsl.train import loops
from uopsl.train.loops import (Dist, StageRunner, TrainConfig, batches, epoch_length, epoch_order, pick_device,
                               predict, run_epochs, run_tag, setup_distributed, steps_per_epoch, train_loop)


# -- a toy model and dataset -----------------------------------------------------------------------------------
class _Config:
    uses_oct = False

    def to_dict(self) -> dict[str, Any]:
        return {"toy": 1}


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))


class _Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()


class Toy(nn.Module):
    """Parameters named as the model's: ``fundus.encoder.*`` (encoder), ``sites.*`` and ``delta`` (site), the
    rest (head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = _Config()
        self.fundus = _Branch()
        self.sites = nn.Linear(1, 1)
        self.delta = nn.Parameter(torch.zeros(1))
        self.head = nn.Linear(1, 1)
        self.bias = nn.Parameter(torch.zeros(1))


class _Items:
    """Item i is (tensor([i]), its target row): a batch says which items it holds."""

    def __init__(self, n: int, k: int = 2) -> None:
        self.targets = np.zeros((n, k), np.float32)
        self.targets[np.arange(n), np.arange(n) % k] = 1.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(i)]), torch.from_numpy(self.targets[i])


CPU = TrainConfig(epochs=2, batch_size=2, seed=3, balanced=False, save_every=0, device="cpu", amp=False)


def _runner(tmp_path: Path, cfg: TrainConfig = CPU, stage: str = "finetune", key: str = "fp",
            model: nn.Module | None = None) -> StageRunner:
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    return StageRunner(model or Toy(), cfg, out, stage, key)  # type: ignore[arg-type]


def _perm_order(n: int, epoch: int, seed: int, length: int) -> list[int]:
    """The documented unbalanced order, re-implemented: whole permutations from the (seed, epoch) generator."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    out: list[int] = []
    while len(out) < length:
        out += torch.randperm(n, generator=g).tolist()
    return out[:length]


def _log_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "log.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- settings ---------------------------------------------------------------------------------------------------
def test_the_config_refuses_zero_epochs_batches_and_learning_rate_at_the_limits() -> None:
    """G02-G06: ``epochs < 1`` / ``batch_size < 1`` (with ``or``) and ``lr <= 0`` / ``lr_encoder < 0`` at their
    limits. Mutated, ``--epochs 0`` saved an untrained model as trained, ``--lr 0`` trained nothing, and a batch
    of one or a frozen-by-rate encoder (``--lr-encoder 0``) was refused."""
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr_encoder": -1e-9}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)  # type: ignore[arg-type]
    ok = TrainConfig(epochs=1, batch_size=1, lr=1e-9, lr_encoder=0.0)
    assert (ok.epochs, ok.batch_size, ok.lr_encoder) == (1, 1, 0.0)


# -- devices and processes --------------------------------------------------------------------------------------
def test_pick_device_takes_the_ranks_gpu_and_refuses_one_past_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """G09-G11: ``auto`` is the process's own GPU (``LOCAL_RANK``); ``cuda:N`` with N = the GPU count is refused
    (``>=``, not ``>``); ``cuda`` without a GPU is refused. Mutated, every torchrun rank trained on GPU 0, or a
    GPU that is not there failed at the first ``.to()`` with PyTorch's traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == torch.device("cuda", 1)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device cuda:2: PyTorch sees 2 CUDA GPUs \(cuda:0\.\.cuda:1\)"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        pick_device("cuda")


def test_pick_device_refuses_an_apple_gpu_that_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """G13: the ``mps`` check. Mutated, ``--device mps`` on a machine without one failed later with a traceback."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="PyTorch sees no Apple GPU"):
        pick_device("mps")


def test_setup_distributed_joins_only_under_torchrun_with_the_right_backend_and_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """G14-G16: world size 1 joins nothing; under torchrun a bare ``cuda`` device is this rank's GPU
    (``LOCAL_RANK``) and the backend is nccl on GPU, gloo on CPU. Mutated, a single process waited for a process
    group that never forms, or every rank of a several-GPU machine ran nccl on GPU 0 (refused by nccl)."""
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(loops.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(loops.dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(loops.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(loops.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("gpu", i)))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_distributed(torch.device("cpu")) == Dist() and calls == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = setup_distributed(torch.device("cuda"))
    assert calls == [("gpu", 1), ("init", "nccl")] and d == Dist(1, 2, 1) and not d.main
    calls.clear()
    setup_distributed(torch.device("cuda", 0))
    assert calls == [("gpu", 0), ("init", "nccl")]
    calls.clear()
    setup_distributed(torch.device("cpu"))
    assert calls == [("init", "gloo")]


# -- order, shards, lengths -----------------------------------------------------------------------------------------
def test_the_unbalanced_order_follows_the_seed_and_the_epoch() -> None:
    """G17-G19: the generator is seeded from both the seed and the epoch, and an epoch longer than the set is
    made of whole passes cut to its length. Mutated, every epoch drew the same order, ``--seed`` changed
    nothing, or an epoch came out shorter than asked."""
    t = np.zeros((3, 2), np.float32)
    for seed, ep in ((0, 0), (0, 1), (1, 0), (5, 3)):
        got = epoch_order(t, ep, seed, balanced=False, length=7).tolist()
        assert got == _perm_order(3, ep, seed, 7)
        assert sorted(got[:3]) == sorted(got[3:6]) == [0, 1, 2]


def test_batches_give_each_rank_its_interleaved_share_and_start_where_asked() -> None:
    """G22-G25: a step takes ``batch_size x world`` items of the order, rank r every world-th from r; a resumed
    epoch starts at its step; no partial batch. Mutated, ranks trained on overlapping or skipped items, or a
    resumed epoch trained its first steps again."""
    order = np.arange(10) * 10
    ds = _Items(100)
    got = [(s, x[:, 0].long().tolist()) for s, x, _ in batches(ds, order, 2, Dist(1, 2, 1))]
    assert got == [(0, [10, 30]), (1, [50, 70])]
    got = [(s, x[:, 0].long().tolist()) for s, x, _ in batches(ds, order, 2, Dist(0, 2, 0), start=1)]
    assert got == [(1, [40, 60])]
    got = [(s, x[:, 0].long().tolist()) for s, x, _ in batches(ds, order, 3, Dist())]
    assert got == [(0, [0, 10, 20]), (1, [30, 40, 50]), (2, [60, 70, 80])]  # 90: no partial batch


def test_an_epoch_is_at_least_one_batch_per_rank() -> None:
    """G26-G28: ``max(n, batch x world)`` and its steps. Mutated, a few-shot set under one batch per rank trained
    zero steps, or a two-process run was told twice its steps."""
    assert epoch_length(3, 4, Dist(0, 2, 0)) == 8 and epoch_length(20, 4, Dist(0, 2, 0)) == 20
    assert steps_per_epoch(20, 4, Dist(0, 2, 0)) == 2 and steps_per_epoch(3, 4, Dist()) == 1


# -- what a resume must share ------------------------------------------------------------------------------------------
def test_the_resume_tag_covers_what_is_trained_and_not_how() -> None:
    """G29-G36: stage, settings, data key, world size and architecture change the tag; device, AMP and the save
    interval do not (but do in the legacy tag). Mutated, a run resumed on another world size or architecture
    loaded a state made for another, or a resume on another device or ``--save-every`` was refused."""
    cfg = TrainConfig()
    base = run_tag("finetune", cfg, "fp", 1, {"a": 1})
    for other in (run_tag("pretrain", cfg, "fp", 1, {"a": 1}), run_tag("finetune", cfg, "fq", 1, {"a": 1}),
                  run_tag("finetune", cfg, "fp", 2, {"a": 1}), run_tag("finetune", cfg, "fp", 1, {"a": 2}),
                  run_tag("finetune", replace(cfg, lr=0.5), "fp", 1, {"a": 1})):
        assert other != base
    for how in (replace(cfg, device="cpu"), replace(cfg, amp=False), replace(cfg, save_every=7)):
        assert run_tag("finetune", how, "fp", 1, {"a": 1}) == base
        assert run_tag("finetune", how, "fp", 1, {"a": 1}, legacy=True) != \
            run_tag("finetune", cfg, "fp", 1, {"a": 1}, legacy=True)


# -- the runner --------------------------------------------------------------------------------------------------------
def _names(runner: StageRunner, group: int) -> set[str]:
    ids = {id(p) for p in runner.opt.param_groups[group]["params"]}
    return {n for n, p in runner.model.named_parameters() if id(p) in ids}


def test_the_optimiser_gives_the_encoder_its_own_rate_and_the_decay_to_both(tmp_path: Path) -> None:
    """G43-G45: group 0 (head, sites) at ``lr``, group 1 (encoder) at ``lr_encoder``, AdamW with
    ``weight_decay``. Mutated, the encoder trained at the head's rate (or the reverse), or without the decay
    asked for."""
    r = _runner(tmp_path, replace(CPU, lr=0.01, lr_encoder=0.002, weight_decay=0.03))
    assert isinstance(r.opt, torch.optim.AdamW) and len(r.opt.param_groups) == 2
    assert [g["lr"] for g in r.opt.param_groups] == [0.01, 0.002]
    assert [g["weight_decay"] for g in r.opt.param_groups] == [0.03, 0.03]
    assert _names(r, 1) == {n for n, _ in r.model.named_parameters() if n.startswith("fundus.encoder.")}
    assert {"delta", "bias", "sites.weight", "head.weight"} <= _names(r, 0)


def test_freezing_takes_the_named_parameters_out_for_the_stage_only(tmp_path: Path) -> None:
    """G39-G41: ``freeze_sites`` freezes ``sites.*``, ``delta`` (and the generator) and nothing else;
    ``freeze_encoder`` the encoder; both are given back by ``finish``, except a parameter frozen before the
    stage. Mutated, the site residual went on training under ``--freeze-sites``, or one flag froze the other's
    parameters."""
    model = Toy()
    model.head.bias.requires_grad_(False)  # frozen by someone else: stays frozen and out of the optimiser
    r = _runner(tmp_path, replace(CPU, freeze_sites=True), model=model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"sites.weight", "sites.bias", "delta", "head.bias"}
    assert len(r.opt.param_groups) == 2 and "delta" not in _names(r, 0) and "head.bias" not in _names(r, 0)
    r.finish()
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {"head.bias"}
    r = _runner(tmp_path, replace(CPU, freeze_encoder=True), model=model)
    assert len(r.opt.param_groups) == 1 and "delta" in _names(r, 0)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == \
        {"head.bias"} | {n for n, _ in model.named_parameters() if n.startswith("fundus.encoder.")}
    r.finish()
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {"head.bias"}


def test_the_runner_seeds_the_global_rng_and_keeps_amp_off_on_the_cpu(tmp_path: Path) -> None:
    """G37, G46: ``torch.manual_seed(seed)`` and AMP only on CUDA. Mutated, augmentation and dropout draws
    ignored ``--seed``, or a CPU run with the default ``amp=True`` trained in bfloat16 autocast."""
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(99)
    r = _runner(tmp_path, replace(CPU, seed=5, amp=True))
    assert torch.equal(torch.rand(4), want)
    assert r.amp is False and not r.scaler.is_enabled()


def test_a_refused_resume_says_whether_weights_data_or_process_count_differ(tmp_path: Path) -> None:
    """G50-G52: the refusal names starting weights and data separately (each only when it differs) and the
    number of processes. Mutated, a user was told the data differ when only ``--from`` did, or not told why."""
    key = 'identity:{"model": "m1", "data": "d1"}'
    first = _runner(tmp_path, key=key)
    first.checkpoint()
    with pytest.raises(ConfigError) as exc:
        _runner(tmp_path, key='identity:{"model": "m2", "data": "d1"}').resume()
    assert "other starting weights" in str(exc.value) and "data (--data" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        _runner(tmp_path, key='identity:{"model": "m1", "data": "d2"}').resume()
    assert "other data (--data" in str(exc.value) and "starting weights" not in str(exc.value)
    sj = tmp_path / "run" / "state.json"
    sj.write_text(json.dumps({**json.loads(sj.read_text()), "world": 2, "tag": "another"}))
    with pytest.raises(ConfigError, match=r"other number of processes \(2 there, 1 now\); rerun"):
        _runner(tmp_path, key=key).resume()


def test_a_state_resumed_under_the_legacy_tag_is_saved_under_todays(tmp_path: Path) -> None:
    """G54, G57: a state of the earlier tag resumes and its next checkpoint carries today's tag and records.
    Mutated, it was refused, or kept the legacy tag (and the old records the refusal message reads)."""
    from safetensors.torch import load_file, save_file

    first = _runner(tmp_path)
    first.info.update(epoch=1, step=0)
    first.checkpoint()
    run = tmp_path / "run"
    sj, st = run / "state.json", run / "state.safetensors"
    save_file(load_file(str(st)), str(st))  # as states were written then: no info inside the tensors
    old = {k: v for k, v in json.loads(sj.read_text()).items() if k not in ("settings", "run_key", "world")}
    sj.write_text(json.dumps({**old, "tag": first._legacy_tag}))
    second = _runner(tmp_path)
    assert second.resume() and second.info["epoch"] == 1
    assert second.info["tag"] == second.tag and second.info.get("run_key") == "fp" and second.info.get("world") == 1
    second.checkpoint()
    assert json.loads(sj.read_text())["tag"] == second.tag


def test_a_stop_after_a_resume_names_the_checkpoint_it_resumed_from(tmp_path: Path) -> None:
    """G58, G79: ``saved_at`` is set on resume; the stop message counts epochs from 1. Mutated, a run stopped
    again before its next checkpoint said no checkpoint had been written (the user might start afresh), or
    named the wrong epoch."""
    first = _runner(tmp_path, replace(CPU, epochs=3))
    first.info.update(epoch=1, step=3, global_step=6)
    first.checkpoint()
    second = _runner(tmp_path, replace(CPU, epochs=3))
    assert second.resume()

    def stop(ep: int, start: int, bar: Any) -> dict[str, float]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as exc:
        run_epochs(second, 6, stop)
    assert str(exc.value).startswith("finetune interrupted in epoch 2 of 3; its last checkpoint, epoch 2 after "
                                     "step 3, is in ")


def test_the_log_of_another_stage_is_kept_when_this_stage_trims_its_own(tmp_path: Path) -> None:
    """G60-G63: on resume this stage's rows after the checkpoint go (the checkpoint's own row stays); on a fresh
    start all of this stage's rows go; another stage's rows always stay. Mutated, the pre-training log in a
    shared folder was erased, or rows were duplicated or lost."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [("pretrain", 1, s) for s in (1, 2, 3, 4)] + [("finetune", e, s) for e in (1, 2) for s in (1, 2, 3)]

    def write() -> None:
        with open(run / "log.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("stage", "epoch", "step", "loss"), *[(*r, 0.5) for r in rows]])

    write()
    r = _runner(tmp_path)
    assert r.resume() is False
    assert [(d["stage"], d["epoch"], d["step"]) for d in _log_rows(run)] == [("pretrain", "1", str(s))
                                                                            for s in (1, 2, 3, 4)]
    write()
    r.info.update(epoch=1, step=2)  # saved after step 2 of epoch 2
    r.checkpoint()
    assert _runner(tmp_path).resume() is True
    got = [(d["stage"], int(d["epoch"]), int(d["step"])) for d in _log_rows(run)]
    assert got == rows[:4] + [("finetune", 1, 1), ("finetune", 1, 2), ("finetune", 1, 3), ("finetune", 2, 1),
                              ("finetune", 2, 2)]


# -- the loops ------------------------------------------------------------------------------------------------------
def test_run_epochs_records_each_epoch_with_its_validation_and_saves_at_its_end(tmp_path: Path) -> None:
    """G73-G78: every epoch once, from the saved position; the history entry is written after ``on_epoch_end``
    (so it holds the validation score) and a checkpoint follows every epoch even with ``save_every=0``.
    Mutated, an extra epoch ran, the history lacked the score that chose the best epoch, or a run stopped in
    epoch 2 without ``--save-every`` started again from epoch 1."""
    r = _runner(tmp_path, replace(CPU, epochs=3))
    called: list[tuple[int, int]] = []
    saved: list[tuple[int, int]] = []
    real = r.checkpoint

    def spy(extra: Any = None) -> None:
        saved.append((r.info["epoch"], r.info["step"]))
        real(extra)

    r.checkpoint = spy  # type: ignore[method-assign]

    def epoch(ep: int, start: int, bar: Any) -> dict[str, float]:
        called.append((ep, start))
        r.info["step"] = 4
        return {"loss": float(ep)}

    def on_end(ep: int, stats: dict[str, float]) -> None:
        stats["val_score"] = 10.0 + ep

    run_epochs(r, 8, epoch, on_end)
    assert called == [(0, 0), (1, 0), (2, 0)] and saved == [(1, 0), (2, 0), (3, 0)]
    assert r.info["history"] == [{"epoch": e + 1, "loss": float(e), "val_score": 10.0 + e} for e in range(3)]
    assert "partial" not in r.info
    assert json.loads((tmp_path / "run" / "state.json").read_text())["epoch"] == 3


def _recording_loss(model: Toy, seen: list[list[int]], losses: list[float],
                    modes: list[bool] | None = None) -> Any:
    def fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(x[:, 0].long().tolist())
        if modes is not None:
            modes.append(model.training)
        loss = ((model.bias - x.mean() / 10) ** 2).sum()
        losses.append(float(loss.detach()))
        return {"loss": loss}

    return fn


def test_train_loop_draws_the_seeded_order_saves_every_n_global_steps_and_logs_each_step(tmp_path: Path) -> None:
    """G81-G83, G85-G90, G95: the order is ``epoch_order`` with the config's seed and ``balanced``; a checkpoint
    every ``save_every`` global steps (counted across epochs) besides each epoch end; one log row per step
    numbered from 1 under one header; the history's loss is the epoch's mean. Mutated, ``--seed`` or
    ``--no-balanced`` were ignored, checkpoints came at other steps (a resume repeated or skipped steps), or
    the log and history misnumbered or misaveraged."""
    cfg = replace(CPU, save_every=2)
    model = Toy()
    r = _runner(tmp_path, cfg, model=model)
    seen: list[list[int]] = []
    losses: list[float] = []
    saved: list[tuple[int, int, int]] = []
    real = r.checkpoint

    def spy(extra: Any = None) -> None:
        saved.append((r.info["epoch"], r.info["step"], r.info["global_step"]))
        real(extra)

    r.checkpoint = spy  # type: ignore[method-assign]
    run_epochs(r, 6, train_loop(r, _Items(6), _recording_loss(model, seen, losses)))
    want = [_perm_order(6, ep, 3, 6) for ep in (0, 1)]
    assert seen == [w[i:i + 2] for w in want for i in (0, 2, 4)]
    assert saved == [(0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 3, 6), (2, 0, 6)]
    rows = _log_rows(tmp_path / "run")
    assert [(d["stage"], d["epoch"], d["step"]) for d in rows] == [("finetune", str(e), str(s))
                                                                   for e in (1, 2) for s in (1, 2, 3)]
    assert [float(d["loss"]) for d in rows] == pytest.approx([round(v, 5) for v in losses])
    assert [h["loss"] for h in r.info["history"]] == pytest.approx([np.mean(losses[:3]), np.mean(losses[3:])])
    assert r.info["global_step"] == 6


def test_train_loop_honours_the_epoch_length_and_eval_mode(tmp_path: Path) -> None:
    """G83, G84, G91, G92: ``length`` sets the epoch's draws (QAT and pre-training pass it) and ``eval_mode``
    keeps the model in eval mode (QAT: frozen BatchNorm statistics); a frozen encoder stays in eval mode while
    the rest trains. Mutated, QAT moved the statistics it was calibrated on, or trained on fewer draws."""
    model = Toy()
    r = _runner(tmp_path, replace(CPU, epochs=1), model=model)
    seen: list[list[int]] = []
    modes: list[bool] = []
    run_epochs(r, 10, train_loop(r, _Items(6), _recording_loss(model, seen, [], modes), length=10, eval_mode=True))
    order = _perm_order(6, 0, 3, 10)
    assert seen == [order[i:i + 2] for i in range(0, 10, 2)] and modes == [False] * 5
    model2 = Toy()
    r2 = _runner(tmp_path / "b", replace(CPU, epochs=1, freeze_encoder=True), model=model2)
    trunk_modes: list[bool] = []

    def fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        trunk_modes.append(model2.training and not model2.fundus.encoder.training)
        return {"loss": ((model2.bias - x.mean()) ** 2).sum()}

    run_epochs(r2, 4, train_loop(r2, _Items(4), fn))
    assert trunk_modes == [True, True]


# -- predict ---------------------------------------------------------------------------------------------------------
class _Scorer(nn.Module):
    """probs = sigmoid(x); records the calls predict makes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor, use_sites: bool = True) -> dict[str, torch.Tensor]:
        self.calls.append((len(x), use_sites, self.training))
        logits = x.reshape(len(x), -1)[:, :1] * self.w
        return {"logits": logits, "site_maps": logits[:, :, None, None]}

    def forward_features(self, x: torch.Tensor, use_sites: bool = True) -> dict[str, torch.Tensor]:
        return self.forward(x, use_sites)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def test_predict_scores_every_item_in_order_in_eval_mode_with_the_site_choice(tmp_path: Path) -> None:
    """G98-G100: batches cover every item once, in order; the model is in eval mode; ``use_sites`` reaches the
    model on both the image and the cached-feature path. Mutated, the last short batch was lost or repeated,
    BatchNorm statistics moved while scoring, or the global-only reading scored with the sites."""
    m = _Scorer()
    m.train()
    got = predict(m, _Items(5), batch_size=2, use_sites=False, with_maps=True)  # type: ignore[arg-type]
    want = torch.sigmoid(torch.arange(5.0)).numpy()[:, None]
    np.testing.assert_allclose(got["probs"], want, rtol=1e-6)
    assert got["site_maps"].shape == (5, 1, 1, 1)
    assert m.calls == [(2, False, False), (2, False, False), (1, False, False)]

    class Feats:
        features = torch.arange(5.0)[:, None]

        def __len__(self) -> int:
            return 5

    m.calls.clear()
    got = predict(m, Feats(), batch_size=4)  # type: ignore[arg-type]
    np.testing.assert_allclose(got["probs"], want, rtol=1e-6)
    assert m.calls == [(4, True, False), (1, True, False)]
