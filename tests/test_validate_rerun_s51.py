"""A validate rerun from the cache says which runtime settings computed the outputs it judged (session 51).

Until session 51 a rerun whose outputs all came from the cache reported ``runtime_settings: null``: the backends
were not opened, and the verdict named no settings it holds for. The cached batches now keep them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_validate_release import _run
from test_validate_signoff import _bundle, _cand
from validatekit import (  # noqa: F401 - photos, image_keys: module fixtures
    N,
    PatchedModels,
    Table,
    cycled_labels,
    image_keys,
    photos,
)

from uopsl.export import validate as validate_mod
from uopsl.export.validate import ImageRecord


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _bundle(tmp_path / "bundle")


class _Described(Table):
    """A stand-in backend that describes its settings, as the real ones do."""

    threads = 2

    def settings(self) -> dict[str, object]:
        return {"backend": "ort-cpu", "threads": self.threads, "graph_optimization": "all"}


def _records(photos: list[Path]) -> list[ImageRecord]:
    labels = cycled_labels(N)
    return [ImageRecord(p.stem, p, lab) for p, lab in zip(photos, labels)]


def _described(monkeypatch: pytest.MonkeyPatch, models: PatchedModels, keys: dict[str, int]) -> None:
    monkeypatch.setattr(validate_mod, "open_candidate", lambda bundle, spec, threads, manifest: _Described(
        keys, lambda: models.files[spec.file]))


def test_a_rerun_from_the_cache_reports_the_settings_that_computed_its_outputs(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    models.reference.fingerprint = "table-v1"  # type: ignore[attr-defined]  # enables the output cache
    _described(monkeypatch, models, image_keys)
    first = _run(bundle, _records(photos), models, tmp_path / "out").report
    assert first["cache"]["outputs_from_cache"] == "none"
    want = {"backend": "ort-cpu", "threads": 2, "graph_optimization": "all"}
    assert _cand(first, "model.int8.onnx")["runtime_settings"] == want

    def not_opened(*a: object, **k: object) -> None:
        raise AssertionError("a rerun from the cache opens no candidate")

    monkeypatch.setattr(validate_mod, "open_candidate", not_opened)
    again = _run(bundle, _records(photos), models, tmp_path / "out").report
    assert again["cache"]["outputs_from_cache"] == "all"
    for file in ("model.onnx", "model.int8.onnx"):
        assert _cand(again, file)["runtime_settings"] == want


def test_outputs_computed_under_two_settings_list_both(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    models.reference.fingerprint = "table-v1"  # type: ignore[attr-defined]
    _described(monkeypatch, models, image_keys)
    _run(bundle, _records(photos), models, tmp_path / "out")
    cached = sorted((tmp_path / "out" / ".parity-cache").glob("batch_*.npz"))
    assert len(cached) > 1
    for f in cached[len(cached) // 2:]:
        f.unlink()  # the rerun computes these again, with other threads
    monkeypatch.setattr(_Described, "threads", 1)
    caplog.set_level("WARNING", logger="uopsl.export.validate")
    again = _run(bundle, _records(photos), models, tmp_path / "out").report
    assert again["cache"]["outputs_from_cache"] == "some"
    got = _cand(again, "model.onnx")["runtime_settings"]
    assert got == {"mixed": [{"backend": "ort-cpu", "threads": 2, "graph_optimization": "all"},
                             {"backend": "ort-cpu", "threads": 1, "graph_optimization": "all"}]}
    assert any("different runtime settings" in r.getMessage() for r in caplog.records)
    assert np.isfinite(_cand(again, "model.onnx")["numerical"]["max_abs_prob_diff"])


def test_a_temporary_names_the_file_it_was_for() -> None:
    from uopsl.runtime.fsio import temporary_target

    assert temporary_target(".model.int8.onnx.k3j2_a.tmp") == "model.int8.onnx"
    assert temporary_target(".roc_ort-cpu_model.onnx.png.q1.tmp") == "roc_ort-cpu_model.onnx.png"
    assert temporary_target("model.onnx") is None and temporary_target(".x.tmp") is None


def test_a_rerun_removes_the_temporaries_a_killed_run_left_and_nothing_else(
        bundle: Path, photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    import os
    import time

    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    models.reference.fingerprint = "table-v1"  # type: ignore[attr-defined]
    out = tmp_path / "out"
    _run(bundle, _records(photos), models, out)
    old = time.time() - 3600
    left = [out / ".parity.json.k3j2ab.tmp", out / ".outputs.csv.x8y7z6.tmp",
            out / ".roc_ort-cpu_model.int8.onnx.png.q1w2e3.tmp", out / ".parity-cache" / ".batch_000000.npz.a1.tmp"]
    kept = [out / ".parity.html.live01.tmp",  # a run writing it now (touched a moment ago)
            out / ".notes.txt.abc123.tmp", out / "mine.tmp"]  # not validate's
    for f in [*left, *kept]:
        f.write_bytes(b"partial")
    for f in [*left, *kept[1:]]:
        os.utime(f, (old, old))
    _run(bundle, _records(photos), models, out)
    assert [f.name for f in left if f.exists()] == []
    assert all(f.exists() for f in kept)
