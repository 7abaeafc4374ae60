"""An interrupted training run is resumed only by the same run: same images, starting weights and settings.

Before session 22 the resume key held the checkpoint's data fingerprint, which is pre-training's fundus pool:
a fine-tune started with ``--from`` on other photographs, a pre-training with another OCT pool, or a QAT run on
other photographs or from another teacher would continue the interrupted run's state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainhelpers import tiny_items, tiny_model

from uopsl.runtime.errors import ConfigError
from uopsl.train.loops import StageRunner, TrainConfig
from uopsl.train.workflow import resume_key, run_finetune, run_identity, run_pretrain


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real = StageRunner.step
    calls = {"n": 0}

    def step(self: StageRunner, loss: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt("simulated power loss")
        real(self, loss)

    monkeypatch.setattr(StageRunner, "step", step)


CFG = TrainConfig(epochs=2, batch_size=4, save_every=1, seed=3, device="cpu", amp=False, augment=False)


def test_a_finetune_restarted_on_other_photographs_is_refused_and_the_same_one_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = tiny_items(tmp_path / "imgs", n=20)
    a, b, val = items[:8], items[8:16], items[16:]
    straight = run_finetune(*tiny_model(), a, val, CFG, tmp_path / "straight")[0]

    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(*tiny_model(), a, val, CFG, tmp_path / "run")
    assert (tmp_path / "run" / "state.json").is_file()
    monkeypatch.undo()
    # Same checkpoint (same data fingerprint), other photographs: refused, nothing loaded or overwritten.
    state = (tmp_path / "run" / "state.json").read_bytes()
    with pytest.raises(ConfigError, match=r"holds an interrupted finetune run with other data \(--data, --val"):
        run_finetune(*tiny_model(), b, val, CFG, tmp_path / "run")
    # Other validation photographs choose another epoch: another run too.
    with pytest.raises(ConfigError, match="holds an interrupted finetune run"):
        run_finetune(*tiny_model(), a, b[:4], CFG, tmp_path / "run")
    # Other starting weights (another --from checkpoint of the same data).
    with pytest.raises(ConfigError, match="holds an interrupted finetune run"):
        run_finetune(*tiny_model(seed=1), a, val, CFG, tmp_path / "run")
    assert (tmp_path / "run" / "state.json").read_bytes() == state
    resumed = run_finetune(*tiny_model(), a, val, CFG, tmp_path / "run")[0]
    for (k, x), y in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_a_pretraining_restarted_with_another_oct_pool_is_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    items = tiny_items(tmp_path / "imgs", n=24)
    fundus, oct_a, oct_b = items[:8], items[8:16], items[16:]  # the OCT pools: other photographs, read as OCT
    model, meta = tiny_model(variant="uopsl")
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(model, meta, fundus, oct_a, CFG, tmp_path / "pre")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="holds an interrupted pretrain run"):
        run_pretrain(*tiny_model(variant="uopsl"), fundus, oct_b, CFG, tmp_path / "pre")
    run_pretrain(*tiny_model(variant="uopsl"), fundus, oct_a, CFG, tmp_path / "pre")
    assert not (tmp_path / "pre" / "state.json").exists()


def test_the_resume_key_is_the_run_identity(tmp_path: Path) -> None:
    items = tiny_items(tmp_path / "imgs", n=6)
    model, _ = tiny_model()
    key = resume_key(run_identity("finetune", CFG, model, items[:3], items[3:]))
    assert key == resume_key(run_identity("finetune", CFG, tiny_model()[0], items[:3], items[3:]))
    assert key != resume_key(run_identity("finetune", CFG, model, items[:2], items[3:]))
    assert key != resume_key(run_identity("finetune", CFG, model, items[:3], items[4:]))


def test_the_same_photographs_elsewhere_are_the_same_run(tmp_path: Path) -> None:
    """A data folder moved or copied (another disk, a job's scratch folder, a torchrun rank's own copy) keeps the
    key, as the dataset fingerprint does; other photographs under the same names do not."""
    import shutil
    from dataclasses import replace

    items = tiny_items(tmp_path / "a" / "imgs", n=6)
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    moved = [replace(it, path=tmp_path / "elsewhere" / "b" / "imgs" / Path(it.path).name) for it in items]
    model = tiny_model()[0]
    assert run_identity("finetune", CFG, model, items[:4], items[4:]) == \
        run_identity("finetune", CFG, model, moved[:4], moved[4:])
    other = tiny_items(tmp_path / "c" / "imgs", n=7)[1:]  # the same names, other pictures
    for a, b in zip(items, other):
        Path(b.path).replace(tmp_path / "c" / "imgs" / Path(a.path).name)
    renamed = [replace(it, path=tmp_path / "c" / "imgs" / Path(it.path).name) for it in items]
    assert run_identity("finetune", CFG, model, items[:4], items[4:])["data"] != \
        run_identity("finetune", CFG, model, renamed[:4], renamed[4:])["data"]

