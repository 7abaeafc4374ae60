"""What backend selection, ``info`` and ``build-engine`` say about TensorRT engines, in the cases no test reached.

A mutation audit in session 29 found these paths untested (a mutant survived in each):

- ``select_backend(root, "tensorrt")`` with one engine built for another GPU and one that fits but has no
  parity PASS: the remedy it names must be to build an engine on this device, not only to validate (the
  validate-only advice is for bundles whose every engine fits and lacks a PASS);
- ``backend_table`` (``info``) must put "FP16 is not used unasked" on the unvalidated engine's row and not on
  the row of the engine that passed;
- ``uopsl build-engine`` on a signed bundle must warn that the signature will be voided before it builds,
  so the warning is there even when the (minutes-long) build then fails.

No TensorRT and no GPU: availability, the engine check and the ``tensorrt`` module are faked as in
tests/test_backends.py and tests/test_tensorrt.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import test_tensorrt as tt
from test_backends import _validated_only, _with_engines
from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import backends as B
from uopsl.runtime import cuda_binding
from uopsl.runtime.backends import Availability, select_backend
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import BundleError
from uopsl.runtime.signing import SIGNATURE_FILE, generate_keypair, sign_bundle

GPU = Availability(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"), openvino=True, tensorrt=True)


# -- select_backend: which remedy the error names ------------------------------------------------------
def test_explicit_tensorrt_with_a_foreign_engine_and_an_unvalidated_one_says_to_build_one(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Only when every engine fits and lacks a PASS is 'validate them' the remedy; one built for another GPU
    among them means no engine here can be validated into use, so the error says to build one."""
    root = tmp_path / "b"
    m = _with_engines(tiny_bundle, validated=False, write_to=root)

    def int8_is_foreign(path: Path) -> str | None:
        return "built for sm_87" if "int8" in path.name else None

    with pytest.raises(BundleError) as err:
        select_backend(root, "tensorrt", manifest=m, availability=GPU, engine_check=int8_is_foreign)
    msg = str(err.value)
    assert "model.int8.engine: built for sm_87" in msg, msg
    assert "model.fp16.engine: FP16 is not used unasked" in msg, msg
    assert "build one on this device with 'uopsl build-engine BUNDLE' or use --backend ort-cuda" in msg, msg
    assert "backend= in the Python API" in msg, msg  # a Screener user has no --backend (a review, session 45)
    assert "validate them on this device first" not in msg, msg

    # Every engine fits and none passed: then validating is the remedy (the other branch, for contrast).
    with pytest.raises(BundleError, match="validate them on this device first") as err:
        select_backend(root, "tensorrt", manifest=m, availability=GPU, engine_check=lambda p: None)
    assert "build one on this device" not in str(err.value)
    assert "precision= in the Python API" in str(err.value)


# -- backend_table: the 'not used unasked' note goes on the engine without a PASS ----------------------
def test_info_notes_only_the_unvalidated_engine_as_not_used_unasked(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "b"
    m = _validated_only(_with_engines(tiny_bundle, validated=False, write_to=root), "model.int8.engine")
    monkeypatch.setattr(B, "engine_mismatch", lambda path, device=0: None)  # both engines fit this machine
    rows = B.backend_table(root, manifest=m, availability=GPU)
    trt = {note.split(" ", 1)[0]: (usable, note) for name, usable, note in rows if name == "tensorrt"}
    assert set(trt) == {"model.fp16.engine", "model.int8.engine"}, rows
    usable16, note16 = trt["model.fp16.engine"]
    usable8, note8 = trt["model.int8.engine"]
    assert usable16 and usable8
    assert "matches this machine; FP16 is not used unasked:" in note16, note16
    assert "not used unasked" not in note8, note8
    assert note8.endswith("matches this machine"), note8


# -- build-engine on a signed bundle ---------------------------------------------------------------
def _signed_fake_bundle(tmp_path: Path) -> Path:
    bundle = tt._bundle(tmp_path)
    private, _public, _id = generate_keypair(tmp_path / "keys", "maker")
    sign_bundle(bundle, private)
    assert (bundle / SIGNATURE_FILE).is_file()
    return bundle


def _signed_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "is signed" in r.getMessage()]


def test_build_engine_warns_on_a_signed_bundle_before_a_build_that_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The warning is said before minutes of building, not after: a build that fails still leaves it said."""
    gpu = tt.FakeGpu()
    tt.install(monkeypatch, "10.3.0", gpu, build_fails=True)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: tt.FakeCuda(gpu))
    bundle = _signed_fake_bundle(tmp_path)
    with caplog.at_level(logging.WARNING):
        rc, _out, err = tt._cli(["build-engine", str(bundle), "--precision", "fp16", "--no-timing-cache"], capsys)
    assert rc != 0 and "out of memory while timing tactics" in (err + caplog.text), err
    said = _signed_warnings(caplog)
    assert len(said) == 1, caplog.text
    assert "an engine added now" in said[0] and "uopsl sign" in said[0]
    assert not (bundle / "model.fp16.engine").exists()


def test_build_engine_warns_on_a_signed_bundle_and_not_on_an_unsigned_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    gpu = tt.FakeGpu()
    trt = tt.install(monkeypatch, "10.3.0", gpu)
    monkeypatch.setattr(cuda_binding, "load_cuda", lambda purpose: tt.FakeCuda(gpu))
    bundle = _signed_fake_bundle(tmp_path)
    said_at_build: list[list[str]] = []
    build = trt.Builder.build_serialized_network

    def recording(self, network, config):  # type: ignore[no-untyped-def]
        said_at_build.append(_signed_warnings(caplog))  # what had been warned when the build began
        return build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", recording)
    args = ["build-engine", str(bundle), "--precision", "fp16", "--no-timing-cache"]
    with caplog.at_level(logging.WARNING):
        rc, _out, err = tt._cli(args, capsys)
    assert rc == 0, err
    assert len(said_at_build) == 1 and len(said_at_build[0]) == 1, said_at_build
    assert f"{bundle} is signed: an engine added now" in said_at_build[0][0]
    assert read_manifest(bundle).file("model.fp16.engine").kind == "engine"

    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    (unsigned / SIGNATURE_FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc, _out, err = tt._cli(args[:1] + [str(unsigned)] + args[2:], capsys)
    assert rc == 0, err
    assert _signed_warnings(caplog) == []
