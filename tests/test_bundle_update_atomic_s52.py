"""A failed or interrupted bundle update leaves a bundle that verifies (session 52).

A storage review found: ``uopsl calibrate`` put its new table in place and then met a full disk writing the
manifest; ``uopsl quantize`` put its INT8 file in place before the manifest listed it (a kill there). Either
left a listed file failing its checksum, and ``uopsl-screen run`` refused the whole bundle, FP32 included.
Now the new file waits beside its place until the new manifest is written, and both move in by rename.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from test_int8_review_s51 import _uopsl, bundle  # noqa: F401 - the fixture is used by name
from tinybundle import fundus_jpeg

from uopsl.export import bundle_writer
from uopsl.runtime import bundle as bundle_mod
from uopsl.runtime.bundle import read_manifest, verify


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    for i in range(4):
        fundus_jpeg(tmp_path / "imgs" / f"p{i}.jpg", seed=i)
    return tmp_path / "imgs"


def _all_verify(bundle: Path) -> list[str]:
    return [f"{c.path}: {c.reason}" for c in verify(bundle) if not c.ok]


def _disk_full_writing_the_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle_mod.staging

    def staging(path):  # type: ignore[no-untyped-def]
        if Path(path).name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(bundle_mod, "staging", staging)


def _leftovers(bundle: Path) -> list[str]:
    return sorted(p.name for p in bundle.iterdir() if p.name.endswith(".tmp"))


def test_calibrate_on_a_full_disk_leaves_the_old_table_listed(bundle: Path, photos: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    _disk_full_writing_the_manifest(monkeypatch)
    rc, out = _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--no-cache",
                      "--force"], capsys)
    assert rc == 2 and "No space left on device" in out, out
    assert _all_verify(bundle) == [] and _leftovers(bundle) == []
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before


def test_quantize_on_a_full_disk_leaves_the_old_int8_file_listed(bundle: Path, photos: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--no-cache"], capsys)[0] == 0
    old = (bundle / "model.int8.onnx").read_bytes()
    _disk_full_writing_the_manifest(monkeypatch)
    rc, out = _uopsl(["quantize", str(bundle), "--rounding", "nearest", "--no-bias-correction"], capsys)
    assert rc == 2 and "No space left on device" in out, out
    assert _all_verify(bundle) == [] and _leftovers(bundle) == []
    assert (bundle / "model.int8.onnx").read_bytes() == old and not (bundle / "model.int8.quantize.json").exists()


def test_quantize_stopped_before_the_manifest_leaves_the_old_file_in_place(bundle: Path, photos: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The review's power-loss script: the process ends as add_file begins (here: an exception, so the test
    process lives on; the bundle's files are what a kill would leave, temporaries apart)."""
    assert _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--no-cache"], capsys)[0] == 0
    old = (bundle / "model.int8.onnx").read_bytes()

    def power_lost(*a: object, **k: object) -> None:
        raise SystemExit(137)

    monkeypatch.setattr(bundle_writer, "add_file", power_lost)
    with pytest.raises(SystemExit):
        _uopsl(["quantize", str(bundle), "--rounding", "nearest", "--no-bias-correction"], capsys)
    assert _all_verify(bundle) == [] and (bundle / "model.int8.onnx").read_bytes() == old


def test_quantize_moves_its_file_in_and_lists_it(bundle: Path, photos: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--no-cache"], capsys)[0] == 0
    rc, out = _uopsl(["quantize", str(bundle), "--rounding", "nearest", "--no-bias-correction"], capsys)
    assert rc == 0, out
    assert _all_verify(bundle) == [] and _leftovers(bundle) == []
    entry = read_manifest(bundle).file("model.int8.onnx")
    assert entry.info.get("table_sha256") or entry.info.get("calibration_sha256")
    assert oct(os.stat(bundle / "model.int8.onnx").st_mode & 0o777) == oct(0o666 & ~_umask())
    assert (bundle / "model.int8.quantize.json").is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_add_file_move_renames_a_temporary_in_the_bundle_and_copies_one_from_elsewhere(bundle: Path,
                                                                                      tmp_path: Path) -> None:
    data = (bundle / "model.int8.onnx").read_bytes() + b"\0"
    here = bundle / ".model.int8.onnx.mine.tmp"
    here.write_bytes(data)
    bundle_writer.add_file(bundle, here, "model.int8.onnx", "onnx", "int8-qdq-u8", move=True)
    assert not here.exists() and (bundle / "model.int8.onnx").read_bytes() == data and _all_verify(bundle) == []
    away = tmp_path / "elsewhere.onnx"
    away.write_bytes(data + b"\0")
    bundle_writer.add_file(bundle, away, "model.int8.onnx", "onnx", "int8-qdq-u8", move=True)
    assert away.exists() and (bundle / "model.int8.onnx").read_bytes() == data + b"\0" and _all_verify(bundle) == []


def test_a_cache_folder_that_cannot_be_written_is_warned_about_not_fatal(bundle: Path, photos: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The review's read-only or full cache disk: calibrate (and quantize --images) ended with exit 2 after
    every image was read, naming no cache. The cache is optional: it is skipped with a warning that says so."""
    import logging

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be", encoding="utf-8")
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(blocker / "uopsl"))
    caplog.set_level(logging.WARNING, logger="uopsl.calibration.dataset")
    rc, out = _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--force"], capsys)
    assert rc == 0, out
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "calibration set not cached: cannot write" in said and "going on without it" in said, said
    assert _all_verify(bundle) == []


def test_a_bundle_update_syncs_the_bundle_folder_after_its_renames(bundle: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Renames reach the disk only with their folder: without this, a power cut could undo the new manifest
    and keep the new file (or the reverse) on some filesystems (the storage review read this in the code)."""
    synced: list[Path] = []
    real = bundle_writer.sync_folder

    def record(folder):  # type: ignore[no-untyped-def]
        synced.append(Path(folder))
        real(folder)

    monkeypatch.setattr(bundle_writer, "sync_folder", record)
    monkeypatch.setattr(bundle_mod, "sync_folder", record)
    data = (bundle / "model.int8.onnx").read_bytes() + b"\0"
    new = tmp_path / "new.onnx"
    new.write_bytes(data)
    bundle_writer.add_file(bundle, new, "model.int8.onnx", "onnx", "int8-qdq-u8")
    assert synced == [bundle]
    bundle_mod.write_manifest(bundle, read_manifest(bundle))
    assert synced == [bundle, bundle]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux) to see open handles")
def test_no_handle_is_open_on_a_file_being_replaced(bundle: Path, photos: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Windows refuses to replace or rename a file another handle holds open: calibrate and quantize into a
    bundle kept the staged file's own descriptor open while it was replaced (a code review). Linux allows it,
    so the test looks for the open handle itself."""
    real = os.replace
    held: list[str] = []

    def replace(src, dst):  # type: ignore[no-untyped-def]
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target in (os.path.realpath(src), os.path.realpath(dst)):
                held.append(f"{target} (fd {fd})")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--no-cache",
                   "--force"], capsys)[0] == 0
    assert _uopsl(["quantize", str(bundle), "--rounding", "nearest", "--no-bias-correction"], capsys)[0] == 0
    assert held == []


def test_the_int8_log_line_names_the_bundle_file_not_its_temporary(bundle: Path, photos: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import logging

    assert _uopsl(["calibrate", str(bundle), "--images", str(photos), "--allow-no-fov", "--no-cache"], capsys)[0] == 0
    caplog.set_level(logging.INFO, logger="uopsl.export.quantize")
    assert _uopsl(["quantize", str(bundle), "--rounding", "nearest", "--no-bias-correction"], capsys)[0] == 0
    said = [r.getMessage() for r in caplog.records if "INT8 model" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(f"written to {bundle / 'model.int8.onnx'}"), said
