"""The sentence encoder draws no bars of its own and is loaded once per process and folder.

sentence-transformers drew a "Batches" bar per encode and transformers a "Loading weights" bar per load, on
stderr, whatever ``-q`` or ``UOPSL_PROGRESS=never`` said; and ``finetune --from`` with new classes loaded the
same encoder twice (the checkpoint's encoder checked, then the new descriptions encoded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uopsl.train import text


def test_encoding_and_loading_draw_no_third_party_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(text, "_LOADED", {}, raising=False)  # loaded here, not reused from another test
    monkeypatch.setenv("UOPSL_PROGRESS", "never")
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    # INFO (uopsl's default verbosity): sentence-transformers shows its bar at INFO unless told not to.
    with caplog.at_level(logging.INFO):
        vecs = text.TextEncoder(cache_dir=tmp_path).encode(["a healthy retina", "hard exudates near the fovea"])
    err = capfd.readouterr().err
    assert vecs.shape[0] == 2
    assert "Batches" not in err and "Loading weights" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # the switch is put back as it was


def test_the_users_own_hf_bar_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.utils import logging as hf_logging

    calls: list[str] = []
    monkeypatch.setattr(hf_logging, "disable_progress_bar", lambda: calls.append("off"))
    monkeypatch.setattr(hf_logging, "enable_progress_bar", lambda: calls.append("on"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user asked for huggingface's bars
    with text._no_transformers_bars():
        pass
    assert calls == []
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.setattr(hf_logging, "is_progress_bar_enabled", lambda: False)  # switched off by the user
    with text._no_transformers_bars():
        pass
    assert calls == []
    monkeypatch.setattr(hf_logging, "is_progress_bar_enabled", lambda: True)
    with pytest.raises(RuntimeError), text._no_transformers_bars():
        raise RuntimeError("a failed load")
    assert calls == ["off", "on"]  # put back after a failure too


class _CountingModel:
    """Stands in for SentenceTransformer: counts the models made, encodes to fixed vectors."""

    made: list[str] = []
    asked: list[dict[str, Any]] = []

    def __init__(self, folder: str, device: str = "cpu") -> None:
        type(self).made.append(folder)

    def encode(self, phrases: Sequence[str], **kwargs: Any) -> np.ndarray:
        type(self).asked.append(kwargs)
        return np.ones((len(phrases), 4), np.float32)

    def get_sentence_embedding_dimension(self) -> int:
        return 4


def test_one_encoder_folder_is_loaded_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sentence_transformers

    monkeypatch.setattr(text, "_LOADED", {}, raising=False)
    monkeypatch.setattr(_CountingModel, "made", [])
    monkeypatch.setattr(_CountingModel, "asked", [])
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _CountingModel)
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (tmp_path / "link").symlink_to(folder)
    # Two encoders (as finetune --from makes: the checkpoint's check, then the new classes), each with
    # phrases its own cache lacks, one naming the folder through a link.
    text.TextEncoder(str(folder), tmp_path / "c1").encode(["a"])
    text.TextEncoder(str(tmp_path / "link"), tmp_path / "c2").encode(["b"])
    assert len(_CountingModel.made) == 1
    (folder / "extra.bin").write_bytes(b"x")  # the encoder replaced in the same folder: loaded anew
    text.TextEncoder(str(folder), tmp_path / "c3").encode(["c"])
    assert len(_CountingModel.made) == 2
    assert [kw.get("show_progress_bar") for kw in _CountingModel.asked] == [False] * 3  # no "Batches" bar
