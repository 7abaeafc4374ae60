"""Files and folders uopsl writes get ordinary permissions, not mkstemp's/mkdtemp's owner-only ones.

A new file gets what ``open(path, "w")`` would give (``0o666 & ~umask``), a
folder what ``mkdir`` would (``0o777 & ~umask``), and a file that an atomic
write replaces keeps its permission bits. Otherwise a bundle copied with
``cp -a`` to a device cannot be read by the service account that screens, and
clinic staff cannot read a report another account wrote.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from uopsl.runtime import fsio
from uopsl.runtime.fsio import write_bytes, write_json, write_text

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits; Windows chmod only toggles "
                                                           "read-only")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[object]:
    """Set the process umask for one test (``umask(0o022)`` by default) and restore it afterwards."""
    old = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    try:
        yield set_umask
    finally:
        os.umask(old)


# -- fsio --------------------------------------------------------------------------------------
@posix_only
@pytest.mark.parametrize("write", [
    lambda p: write_json(p, {"a": 1}),
    lambda p: write_text(p, "x\n"),
    lambda p: write_bytes(p, b"x"),
], ids=["write_json", "write_text", "write_bytes"])
def test_new_files_get_the_mode_open_would_give(tmp_path: Path, umask: object, write: object) -> None:
    target = tmp_path / "out" / "f.json"
    write(target)  # type: ignore[operator]
    assert mode(target) == 0o644
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


@posix_only
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: object) -> None:
    target = tmp_path / "results.csv"
    write_text(target, "old\n")
    target.chmod(0o600)
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o600
    target.chmod(0o664)  # wider than the umask allows: kept too
    write_bytes(target, b"newer\n")
    assert mode(target) == 0o664


@posix_only
def test_a_restrictive_umask_is_honoured(tmp_path: Path, umask: object) -> None:
    umask(0o077)  # type: ignore[operator]
    write_text(tmp_path / "private.txt", "x")
    assert mode(tmp_path / "private.txt") == 0o600
    assert fsio.new_dir_mode() == 0o700


@posix_only
def test_current_umask_reads_without_changing_it(umask: object, monkeypatch: pytest.MonkeyPatch) -> None:
    umask(0o027)  # type: ignore[operator]
    assert fsio.current_umask() == 0o027
    assert fsio.current_umask() == 0o027  # nothing cached, nothing left changed

    def no_proc(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(fsio, "open", no_proc, raising=False)  # the umask()-and-restore fallback
    assert fsio.current_umask() == 0o027
    umask(0o002)  # type: ignore[operator]
    assert fsio.current_umask() == 0o002
    assert os.umask(0o002) == 0o002


def test_chmod_failures_never_break_a_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("chmod not allowed here")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse, raising=False)
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert fsio.set_mode(tmp_path / "a.txt", 0o644) is False


@posix_only
def test_without_fchmod_chmod_is_used(tmp_path: Path, umask: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fchmod", raising=False)
    write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o644


# -- export: ONNX file, bundle folder, Triton repository ---------------------------------------------
@posix_only
def test_exported_bundle_and_triton_repository_are_readable(tmp_path: Path, umask: object) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from trainhelpers import CLASSES, tiny_model
    from uopsl.export.bundle_writer import add_file, write_bundle
    from uopsl.export.onnx_export import export_onnx
    from uopsl.export.triton import write_triton_repository
    from uopsl.runtime.bundle import ClassSpec, verify_or_raise
    from uopsl.train.model import DeployModel

    size = 64
    model, meta = tiny_model()
    deploy = DeployModel(model.eval(), size)
    onnx_file = tmp_path / "fp32.onnx"
    export_onnx(deploy, onnx_file, size)
    assert mode(onnx_file) == 0o644
    classes = [ClassSpec(n, (f"{n} phrase",), 0.5, True) for n in CLASSES]

    def bundle(out: Path, overwrite: bool = False) -> Path:
        write_bundle(out, onnx_file, classes, "sigmoid", meta.preprocess, class_bank=model.class_text.numpy(),
                     site_map_size=(deploy.h, deploy.w), opset=17, overwrite=overwrite)
        return out

    out = bundle(tmp_path / "bundle")
    assert mode(out) == 0o755
    assert {p.name: mode(p) for p in out.iterdir()} == {
        "manifest.json": 0o644, "model.onnx": 0o644, "class_bank.npy": 0o644}
    add_file(out, onnx_file, "model.copy.onnx", "onnx", "fp32")  # rewrites the manifest, copies a file
    assert mode(out / "manifest.json") == 0o644 and mode(out / "model.copy.onnx") == 0o644
    verify_or_raise(out)

    repo = write_triton_repository(out, tmp_path / "models")
    assert mode(repo) == 0o755
    for p in repo.rglob("*"):
        assert mode(p) == (0o755 if p.is_dir() else 0o644), p

    # A rewritten manifest keeps the mode its owner gave it; a re-exported (--force) bundle is a new folder with
    # new files, so one left owner-only by an older uopsl (0700) becomes readable again.
    out.chmod(0o700)
    (out / "manifest.json").chmod(0o640)
    add_file(out, None, "model.copy.onnx", "onnx", "fp32")
    assert mode(out / "manifest.json") == 0o640
    bundle(out, overwrite=True)
    assert mode(out) == 0o755
    assert mode(out / "manifest.json") == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
