"""Session 50: a model file swapped for the moment of its load and put back (a security review did it 9 times of 9
against ONNX Runtime and 3 of 3 against OpenVINO, with a signed bundle: the device screened with an unsigned model
and the report said "signature checked"). The backends now load the bytes they hashed (Linux: through the open
handle) and refuse a file that changed while it was loaded."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinybundle import export_tiny_onnx, make_tiny_bundle

from uopsl.runtime.backends import base
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import BackendError

SIZE = 64


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    root = make_tiny_bundle(tmp_path / "b", size=SIZE)
    export_tiny_onnx(tmp_path / "evil.onnx", num_classes=3, size=SIZE, head="sigmoid", seed=1)  # another model
    assert (tmp_path / "evil.onnx").read_bytes() != (root / "model.onnx").read_bytes()
    return root


def _swap_in(root: Path) -> None:
    os.replace(root / "model.onnx", root.parent / "aside.onnx")
    os.replace(root.parent / "evil.onnx", root / "model.onnx")


def _put_back(root: Path) -> None:
    os.replace(root / "model.onnx", root.parent / "evil.onnx")
    os.replace(root.parent / "aside.onnx", root / "model.onnx")


def _backends() -> list[str]:
    return ["ort", *(["openvino"] if importlib.util.find_spec("openvino") is not None else [])]


def _patch_loader(kind: str, monkeypatch: pytest.MonkeyPatch, during: Any) -> None:
    if kind == "ort":
        import onnxruntime as ort

        real = ort.InferenceSession

        def load(path: str, *args: Any, **kwargs: Any) -> Any:
            during(path)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(ort, "InferenceSession", load)
    else:
        import openvino as ov

        real_read = ov.Core.read_model

        def read(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
            during(path)
            return real_read(self, path, *args, **kwargs)

        monkeypatch.setattr(ov.Core, "read_model", read)


def _open(kind: str, root: Path) -> base.Backend:
    if kind == "ort":
        from uopsl.runtime.backends.onnxruntime import OrtBackend

        b: base.Backend = OrtBackend(root / "model.onnx", "cpu", threads=1)
    else:
        from uopsl.runtime.backends.openvino import OpenVinoBackend

        b = OpenVinoBackend(root / "model.onnx", threads=1, batch_check=False)
    b.expected_sha256 = read_manifest(root).file("model.onnx").sha256  # type: ignore[attr-defined]
    return b


@pytest.mark.parametrize("kind", _backends())
def test_a_model_swapped_for_the_load_and_put_back_is_refused(bundle: Path, kind: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []  # what the runtime reads by the path it was given, with the other model swapped in

    def during(path: str) -> None:
        _swap_in(bundle)
        seen.append(Path(path).read_bytes())

    _patch_loader(kind, monkeypatch, during)
    signed = (bundle / "model.onnx").read_bytes()
    b = _open(kind, bundle)
    try:
        with pytest.raises(BackendError, match="replaced or written while it was loaded"):
            with b:
                pass
    finally:
        if seen:
            _put_back(bundle)
    if sys.platform.startswith("linux"):
        assert seen == [signed]  # the runtime was handed the signed bytes, whatever was renamed over the name
    assert (bundle / "model.onnx").read_bytes() == signed


def test_without_a_pinned_path_the_swap_is_still_refused(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the runtime must load by name (no /proc: Windows, macOS), a swap put back after the load is seen by
    the file's times and inode; the runtime may have read the other model, so the load is refused."""
    monkeypatch.setattr(base, "_pinned_path", lambda fd: None)
    seen: list[bytes] = []

    def during(path: str) -> None:
        _swap_in(bundle)
        seen.append(Path(path).read_bytes())
        _put_back(bundle)

    _patch_loader("ort", monkeypatch, during)
    b = _open("ort", bundle)
    with pytest.raises(BackendError, match="replaced or written while it was loaded"):
        with b:
            pass
    assert seen == [(bundle.parent / "evil.onnx").read_bytes()]  # it did read the other model: hence the refusal


def test_an_untouched_model_loads_and_runs_from_its_handle(bundle: Path) -> None:
    with _open("ort", bundle) as b:
        out = b.infer(np.zeros((1, SIZE, SIZE, 3), np.uint8))
    assert np.isfinite(out["probs"]).all()
    with base.verified_model_path(bundle / "model.onnx", read_manifest(bundle).file("model.onnx").sha256) as p:
        assert Path(p).read_bytes() == (bundle / "model.onnx").read_bytes()
    with pytest.raises(BackendError, match="its sha256 differs"), base.verified_model_path(bundle / "model.onnx",
                                                                                          "0" * 64):
        pass
