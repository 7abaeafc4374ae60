"""Resuming training, from a review that stopped runs at the moments between two writes.

Each case was found by killing real runs (SIGTERM between the last epoch and the thresholds, SIGKILL between
the two files of a training state, a stop before the first checkpoint); here the same moments are simulated.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from trainhelpers import tiny_dataset, tiny_model
from uopsl.train.checkpoint import UNFINISHED_KEY, read_meta, save_model
from uopsl.train.loops import StageRunner, TrainConfig
from uopsl.train.stages import finetune
from uopsl.train.workflow import finished_run


def _stop_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real = StageRunner.step
    calls = {"n": 0}

    def step(self: StageRunner, loss: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated stop")
        real(self, loss)

    monkeypatch.setattr(StageRunner, "step", step)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _log_steps(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "log.csv", newline="", encoding="utf-8") as fh:
        return [(r["epoch"], r["step"]) for r in csv.DictReader(fh)]


def _stopped_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, TrainConfig, torch.nn.Module, Any]:
    """(data, settings, the uninterrupted run's model, meta), with ``tmp_path / "run"`` the same run stopped
    after global step 8 (its checkpoint: epoch 2, step 2)."""
    ds = tiny_dataset(tmp_path, n=24, augment=False)
    cfg = TrainConfig(epochs=2, batch_size=4, save_every=1, seed=7, augment=False)
    ref, meta = tiny_model()
    ref, _ = finetune(ref, ds, None, cfg, tmp_path / "ref", meta)
    _stop_at(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", meta)
    monkeypatch.undo()
    return ds, cfg, ref, meta


def test_a_torn_training_state_resumes_from_the_tensors_own_position(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """state.safetensors and state.json were renamed one after the other: killed between them, the new tensors
    met the old position and the resumed run trained those steps again. The position now travels inside the
    tensor file."""
    ds, cfg, ref, meta = _stopped_run(tmp_path, monkeypatch)
    sj = tmp_path / "run" / "state.json"
    torn = json.loads(sj.read_text())
    assert (torn["epoch"], torn["step"]) == (1, 2)  # saved after global step 8: epoch 2, step 2
    torn.update(step=torn["step"] - 2, global_step=torn["global_step"] - 2)  # the json of two steps before
    sj.write_text(json.dumps(torn))
    model, _ = finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", meta)
    assert _same(model, ref)
    assert _log_steps(tmp_path / "run") == _log_steps(tmp_path / "ref")


def test_an_interrupted_run_resumes_with_another_save_interval(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--save-every (like --device and --amp) says how a run is carried out, not what it trains; changing it
    refused the resume ("other settings")."""
    ds, _cfg, ref, meta = _stopped_run(tmp_path, monkeypatch)
    model, _ = finetune(tiny_model()[0], ds, None, TrainConfig(epochs=2, batch_size=4, save_every=5, seed=7,
                                                               augment=False), tmp_path / "run", meta)
    assert _same(model, ref)


def test_a_run_stopped_before_its_first_checkpoint_logs_each_step_once(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset(tmp_path, n=24, augment=False)
    cfg = TrainConfig(epochs=2, batch_size=4, save_every=0, seed=7, augment=False)  # checkpoints at epoch ends
    finetune(tiny_model()[0], ds, None, cfg, tmp_path / "ref", tiny_model()[1])
    _stop_at(monkeypatch, 4)  # in the first epoch: nothing saved yet
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", tiny_model()[1])
    monkeypatch.undo()
    assert len(_log_steps(tmp_path / "run")) == 3 and not (tmp_path / "run" / "state.json").exists()
    finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", tiny_model()[1])
    assert _log_steps(tmp_path / "run") == _log_steps(tmp_path / "ref")
    raw = (tmp_path / "run" / "log.csv").read_bytes()
    assert b"\r\n" in raw and b"\r\r" not in raw and raw.count(b"\n") == raw.count(b"\r\n")


def test_a_stage_saved_before_its_run_was_completed_is_not_taken_as_finished(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The stage saves its weights and clears its state; the workflow then adds the thresholds (fine-tuning)
    and the run's identity. Stopped in between, a rerun reused the checkpoint as finished: a fine-tuned model
    without thresholds (0.5 for every class at export). Such a checkpoint is marked until it is completed."""
    ds = tiny_dataset(tmp_path, n=12, augment=False)
    model, meta = tiny_model()
    finetune(model, ds, None, TrainConfig(epochs=1, batch_size=4, augment=False), tmp_path / "ft", meta)
    assert read_meta(tmp_path / "ft").metrics.get(UNFINISHED_KEY) is True
    assert not (tmp_path / "ft" / "state.json").exists() and not list((tmp_path / "ft").glob("best*"))
    want = {"stage": "finetune", "model": "m", "settings": "s", "data": "d"}
    with caplog.at_level(logging.WARNING):
        assert finished_run(tmp_path / "ft", "finetune", want) is False
    assert "stopped after its last epoch, before it was completed (thresholds and identity); training it again" \
        in caplog.text
    # Completed (what the workflow writes): the marker is gone and the run is reused.
    done = read_meta(tmp_path / "ft")
    metrics = {k: v for k, v in done.metrics.items() if k != UNFINISHED_KEY}
    from dataclasses import replace

    from uopsl.runtime.errors import ConfigError
    from uopsl.train.workflow import run_export

    with pytest.raises(ConfigError, match="stopped after its last epoch.*thresholds were not chosen yet.*run the same "
                                          "uopsl finetune command again"):
        run_export(tmp_path / "ft", tmp_path / "bundle")  # before: exported with 0.5 for every class
    save_model(tmp_path / "ft", model, replace(done, metrics={**metrics, "run_identity": want}))
    assert finished_run(tmp_path / "ft", "finetune", want) is True


def test_a_state_saved_under_the_earlier_tag_still_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """States saved before session 25 carry a tag over every setting, how the run is carried out included."""
    ds, cfg, ref, meta = _stopped_run(tmp_path, monkeypatch)
    sj = tmp_path / "run" / "state.json"
    info = json.loads(sj.read_text())
    runner = StageRunner(tiny_model()[0], cfg, tmp_path / "probe", "finetune", meta.data_fingerprint)
    assert info["tag"] == runner.tag != runner._legacy_tag
    sj.write_text(json.dumps({**info, "tag": runner._legacy_tag}))
    # As such a state was written: the tensors without the info inside (load_state then reads state.json).
    from safetensors.torch import load_file, save_file

    st = tmp_path / "run" / "state.safetensors"
    save_file(load_file(str(st)), str(st))
    model, _ = finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", meta)
    assert _same(model, ref)


def test_the_amp_loss_scale_is_saved_and_restored_with_the_training_state(tmp_path: Path) -> None:
    """A resumed AMP run started again from the initial loss scale (65536) and skipped its first steps as
    overflows until the scale backed off. The scaler's state now travels with the training state. (CPU: the
    scaler is swapped for a CPU one with AMP marked on; the CUDA path is test_gpu_training's.)"""
    meta = tiny_model()[1]
    cfg = TrainConfig(epochs=1, batch_size=4, augment=False)

    def runner() -> StageRunner:
        r = StageRunner(tiny_model()[0], cfg, tmp_path / "run", "finetune", meta.data_fingerprint)
        r.amp, r.scaler = True, torch.amp.GradScaler("cpu", init_scale=65536.0)
        return r

    first = runner()
    first.scaler.scale(torch.ones(()))  # the scale exists from the first scaled loss on
    first.scaler.update(new_scale=512.0)
    first.scaler._growth_tracker = torch.tensor(37, dtype=torch.int32)  # steps since the last back-off
    first.checkpoint()
    second = runner()
    assert second.resume()
    assert second.scaler.get_scale() == 512.0 and second.scaler.state_dict()["_growth_tracker"] == 37
    assert "amp_scaler" not in second.info  # restored into the scaler, not carried as run info
    # Resumed without AMP (how a run is carried out may change on resume): the saved scale is left alone.
    third = StageRunner(tiny_model()[0], cfg, tmp_path / "run", "finetune", meta.data_fingerprint)
    assert third.resume() and not third.scaler.is_enabled()


def test_the_best_epoch_file_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """best.safetensors was written in place: a kill mid-write left a truncated file, which the resumed run
    loaded at its end. It now goes through the checkpoint's atomic writer."""
    import uopsl.train.stages as stages

    written: list[str] = []
    real = stages.save_tensors

    def spy(path: Path, tensors: dict[str, torch.Tensor], meta: Any = None) -> None:
        written.append(Path(path).name)
        real(path, tensors, meta)

    monkeypatch.setattr(stages, "save_tensors", spy)
    ds = tiny_dataset(tmp_path, n=8, augment=False)
    finetune(tiny_model()[0], ds, ds, TrainConfig(epochs=2, batch_size=4, augment=False), tmp_path / "ft",
             tiny_model()[1])
    assert "best.safetensors" in written


def test_a_finished_run_whose_metadata_is_damaged_is_not_trained_over(tmp_path: Path) -> None:
    """A truncated checkpoint.json made the rerun train the whole stage again over the good weights, with no
    word (review of session 31, by killing real runs); it is refused, naming the file."""
    from uopsl.runtime.errors import ConfigError

    ds = tiny_dataset(tmp_path, n=12, augment=False)
    model, meta = tiny_model()
    finetune(model, ds, None, TrainConfig(epochs=1, batch_size=4, augment=False), tmp_path / "ft", meta)
    want = {"stage": "finetune", "model": "m", "settings": "s", "data": "d"}
    meta_file = tmp_path / "ft" / "checkpoint.json"
    meta_file.write_bytes(meta_file.read_bytes()[:-5])
    weights = (tmp_path / "ft" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"checkpoint\.json.*malformed.*neither reused nor trained over: restore"):
        finished_run(tmp_path / "ft", "finetune", want)
    assert (tmp_path / "ft" / "model.safetensors").read_bytes() == weights
    # Nothing finished there (no checkpoint.json), or an interrupted run's (a state to resume): nothing to refuse.
    meta_file.unlink()
    assert finished_run(tmp_path / "ft", "finetune", want) is False


def test_a_stop_while_an_epoch_is_validated_or_saved_says_what_is_saved(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between an epoch's last step and its checkpoint (validation, saving) a Ctrl-C printed only "aborted"
    (review of session 31); it now says where the last checkpoint is, or (session 58) that there is none yet and
    the same command starts the stage again."""
    ds = tiny_dataset(tmp_path, n=12, augment=False)
    model, meta = tiny_model()

    def stop(self: StageRunner) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(StageRunner, "checkpoint", stop)
    with pytest.raises(KeyboardInterrupt, match=r"finetune interrupted at the end of epoch 1 of 2 \(validating or "
                                                r"saving it\); no checkpoint was written yet to .*the same "
                                                r"command starts this stage again from its beginning"):
        finetune(model, ds, None, TrainConfig(epochs=2, batch_size=4, augment=False), tmp_path / "ft", meta)


def test_a_stop_while_the_thresholds_are_chosen_says_the_model_is_saved(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainhelpers import tiny_items

    import uopsl.train.workflow as workflow

    items = tiny_items(tmp_path / "imgs", 12)
    model, meta = tiny_model()

    def stop(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "predict", stop)
    with pytest.raises(KeyboardInterrupt, match="finetune stopped while choosing the operating thresholds .*the "
                                                "trained model is in .*run the same command again to complete it"):
        workflow.run_finetune(model, meta, items[:9], items[9:], TrainConfig(epochs=1, batch_size=4, augment=False),
                              tmp_path / "ft")


def test_a_damaged_state_json_resumes_from_the_copy_inside_the_tensors(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A truncated state.json was refused with advice to delete a good state (review of session 31): its info is
    also inside state.safetensors, which load_state trusts; the run now resumes, and ends as the uninterrupted
    one."""
    ds, cfg, ref, meta = _stopped_run(tmp_path, monkeypatch)
    sj = tmp_path / "run" / "state.json"
    sj.write_bytes(sj.read_bytes()[:-5])
    with caplog.at_level(logging.WARNING):
        model, _ = finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", meta)
    assert "read from the copy inside state.safetensors" in caplog.text
    assert _same(model, ref)
    assert _log_steps(tmp_path / "run") == _log_steps(tmp_path / "ref")


def test_a_refused_resume_names_what_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another --lr, --epochs or --seed on an interrupted run all gave the same "other settings, data or model"
    (review of session 31); the state now records what it was trained with, and the refusal names it."""
    from dataclasses import replace

    from uopsl.runtime.errors import ConfigError

    ds, cfg, _, meta = _stopped_run(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=r"interrupted finetune run with other settings: lr \(0\.001 there, 0\.01 now\), "
                                          r"seed \(7 there, 8 now\); rerun with the same settings"):
        finetune(tiny_model()[0], ds, None, replace(cfg, lr=0.01, seed=8), tmp_path / "run", meta)
    with pytest.raises(ConfigError, match=r"other data or starting weights; rerun"):
        finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", meta, run_key='identity:{"data": "x"}')
    # The same settings still resume.
    finetune(tiny_model()[0], ds, None, cfg, tmp_path / "run", meta)
