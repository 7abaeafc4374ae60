"""Deterministic seeds: the same command with the same seed trains the same model.

torch seeds its default generator at random when a process starts here, and
before session 8 nothing re-seeded it before the model's heads were
initialised, so two runs of `uopsl pretrain` (or the demo) trained different
models. `new_model` now draws its initial weights from its own seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from trainhelpers import tiny_synth

from uopsl.runtime.clikit import main_entry
from uopsl.train.cli import cli
from uopsl.train.workflow import new_model

SMALL = dict(backbone="resnet18", init="random", dim=32, sites=2, size=64)


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_new_model_weights_depend_on_its_seed_only() -> None:
    torch.manual_seed(123)
    a, _ = new_model(("normal", "dr", "dme"), seed=5, **SMALL)  # type: ignore[arg-type]
    after_a = torch.rand(1)
    torch.manual_seed(999)
    b, _ = new_model(("normal", "dr", "dme"), seed=5, **SMALL)  # type: ignore[arg-type]
    c, _ = new_model(("normal", "dr", "dme"), seed=6, **SMALL)  # type: ignore[arg-type]
    assert _digest(a.state_dict()) == _digest(b.state_dict()) != _digest(c.state_dict())
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_a)  # the caller's random state is left as it was


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_synth(tmp_path_factory.mktemp("synth_det"), 8, 4)


def test_pretrain_twice_with_one_seed_gives_identical_weights(synth: Path, tmp_path: Path) -> None:
    digests = []
    for run in ("one", "two"):
        torch.manual_seed(len(digests) * 1000 + 7)  # a different global state before each run
        rc = main_entry(cli, ["pretrain", "--fundus", f"synthetic:{synth}", "--oct", f"synthetic:{synth}",
                              "--out", str(tmp_path / run), "--backbone", "resnet18", "--init", "random",
                              "--size", "64", "--epochs", "1", "--device", "cpu", "--seed", "3"], prog_name="uopsl")
        assert rc == 0
        digests.append(hashlib.sha256((tmp_path / run / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
