"""Session 36's mutation audit of ``uopsl.train.checkpoint``: tests for the mutants that survived.

Each test names the single-point bug it catches (applied alone to a scratch copy, the test failed; on the
unmodified code it passes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainhelpers import tiny_model
from uopsl.runtime.errors import CheckpointError
from uopsl.train import checkpoint as C


def test_weights_missing_a_tensor_are_refused_naming_it(tmp_path: Path) -> None:
    """Mutant: only unexpected keys were refused, so a weights file missing a tensor loaded with that tensor left
    at its random initialisation: another model than the one trained, without a word."""
    model, meta = tiny_model(random_text=True)
    C.save_model(tmp_path / "ck", model, meta)
    tensors = C.load_tensors(tmp_path / "ck" / "model.safetensors")
    dropped = next(k for k in tensors if k.startswith("fundus.") and k.endswith(".weight"))
    del tensors[dropped]
    C.save_tensors(tmp_path / "ck" / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"weights do not fit the configured model \(missing \[") as e:
        C.load_model(tmp_path / "ck")
    assert dropped in str(e.value)


def _two_widths(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A saved tiny model (token width 32) and a fresh one of the same backbone at width 16."""
    from dataclasses import replace

    from uopsl.train.model import UopslModel

    a, meta = tiny_model(random_text=True)
    C.save_model(tmp_path / "a", a, meta)
    src = C.load_tensors(tmp_path / "a" / "model.safetensors")
    b = UopslModel(replace(meta.model, dim=16), src["class_text"].numpy())
    return src, b


def test_init_from_copies_what_fits_and_names_every_source_tensor_it_left(tmp_path: Path) -> None:
    """Mutants: the shape check dropped (stage 2 at another width then failed in ``load_state_dict``), and the
    skipped list taken from the target model's keys instead of the source's.

    By hand: a source tensor is copied when the target has the name with the same shape; every other source
    tensor is reported, and only those.
    """
    import torch

    src, b = _two_widths(tmp_path)
    # A tensor only the source has, and one only the target has: reported / not reported.
    src["extra.tensor"] = torch.zeros(2)
    del src["delta"]
    C.save_tensors(tmp_path / "a" / "model.safetensors", src)
    own = b.state_dict()
    fits = {k for k, v in src.items() if k in own and own[k].shape == v.shape}
    assert fits and len(fits) < len(src)  # the backbone fits, the width-32 projections do not
    skipped = C.init_from(b, tmp_path / "a")
    assert skipped == sorted(set(src) - fits)
    assert "extra.tensor" in skipped and "delta" not in skipped
    after = b.state_dict()
    assert all(torch.equal(after[k], src[k]) for k in fits)


def test_init_from_leaves_the_prefixes_it_is_told_to_skip(tmp_path: Path) -> None:
    """Mutant: ``skip_prefixes`` ignored, so a stage told to keep its own encoder got the source's."""
    import torch

    src, b = _two_widths(tmp_path)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    skipped = C.init_from(b, tmp_path / "a", skip_prefixes=("fundus.",))
    after = b.state_dict()
    trunk = [k for k in src if k.startswith("fundus.") and k.endswith(".weight") and k in after]
    assert trunk and all(k in skipped for k in trunk)
    assert all(torch.equal(after[k], before[k]) for k in trunk)
    assert not all(torch.equal(after[k], src[k]) for k in trunk)


def _state_pair(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    return model, opt


def test_a_resumed_state_restores_the_random_stream_and_the_optimiser_step(tmp_path: Path) -> None:
    """Mutants: the RNG state not restored (a resumed run draws other augmentations and batches than an
    uninterrupted one), and Adam's step counter saved as zero (its bias correction restarts)."""
    import torch

    model, opt = _state_pair()
    torch.manual_seed(123)
    C.save_state(tmp_path, model, opt, {"epoch": 1, "step": 3})
    expected = torch.rand(4)  # what the uninterrupted run draws next
    torch.manual_seed(999)  # a new process
    fresh, fresh_opt = _state_pair(seed=7)
    info = C.load_state(tmp_path, fresh, fresh_opt)
    assert info is not None and (info["epoch"], info["step"]) == (1, 3)
    assert torch.equal(torch.rand(4), expected)
    steps = [float(s["step"]) for s in fresh_opt.state_dict()["state"].values()]
    assert steps == [3.0, 3.0]
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_clearing_a_state_removes_both_files(tmp_path: Path) -> None:
    """Mutant: only state.json was removed; the tensors stayed and a later run of another kind found them."""
    model, opt = _state_pair()
    C.save_state(tmp_path, model, opt, {"epoch": 0})
    assert {p.name for p in tmp_path.iterdir()} == {"state.json", "state.safetensors"}
    C.clear_state(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_torn_state_json_is_written_again_from_the_tensors_copy(tmp_path: Path) -> None:
    """Mutant: the torn quick-look copy was read around but left torn, so every later look warned again."""
    import json

    model, opt = _state_pair()
    C.save_state(tmp_path, model, opt, {"epoch": 2, "step": 9})
    (tmp_path / "state.json").write_text('{"epoch": 2, "st')
    info = C.peek_state(tmp_path)
    assert info is not None and (info["epoch"], info["step"]) == (2, 9)
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 9


def test_metadata_written_before_a_field_existed_reads_as_documented() -> None:
    """Mutants: an old checkpoint.json without ``text_model`` or ``stage`` read as no encoder / a pre-training
    checkpoint (the defaults are the packaged encoder and ``finetune``)."""
    from uopsl.train.text import DEFAULT_MODEL

    _, meta = tiny_model(random_text=True)
    d = meta.to_dict()
    del d["text_model"], d["stage"]
    old = C.CheckpointMeta.from_dict(d)
    assert (old.text_model, old.stage) == (DEFAULT_MODEL, "finetune")


def test_a_weights_file_without_class_prototypes_is_not_a_uopsl_model(tmp_path: Path) -> None:
    """Mutant: the ``class_text`` check dropped: a torchvision state dict saved as model.safetensors failed with
    a bare KeyError instead of saying what the file is not."""
    model, meta = tiny_model(random_text=True)
    C.save_model(tmp_path / "ck", model, meta)
    tensors = C.load_tensors(tmp_path / "ck" / "model.safetensors")
    del tensors["class_text"]
    C.save_tensors(tmp_path / "ck" / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="has no class_text; not a uopsl model"):
        C.load_model(tmp_path / "ck")
