"""``fsio.staging``: a temporary that takes its target's place only when committed.

Three writers share it: ``atomic_open`` (every results.csv, report and cache
write), ``add_file`` (which must take the bundle's manifest lock and check the
manifest between writing and replacing) and ``export_onnx`` (torch and onnx
write by path). The promises checked here: nothing of an uncommitted stage is
left behind and the target is untouched; a commit fsyncs the temporary before
the rename, whether a file object or a writer by path wrote it, so a power cut
after the rename cannot leave an empty model or results file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from uopsl.runtime.fsio import staging


def test_an_uncommitted_stage_leaves_the_target_and_the_folder_as_they_were(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    with staging(target) as stage:
        with stage.writer("w") as fh:
            fh.write("new\n")
        assert stage.path.parent == tmp_path and stage.path.read_text() == "new\n"
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_an_error_inside_the_stage_removes_the_temporary_and_propagates(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="export failed"):
        with staging(target) as stage:
            stage.close()
            stage.path.write_bytes(b"half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_a_commit_after_a_file_object_wrote_fsyncs_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         durability_log: list[tuple[str, ...]]) -> None:
    target = tmp_path / "a.bin"
    events = durability_log
    with staging(target) as stage:
        with stage.writer("wb") as fh:
            fh.write(b"abc")
        tmp = str(stage.path)
        stage.commit()
    monkeypatch.undo()
    assert events == [("fsync", tmp), ("replace", tmp, str(target))]
    assert target.read_bytes() == b"abc" and not Path(tmp).exists()


def test_a_commit_after_a_writer_by_path_fsyncs_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        durability_log: list[tuple[str, ...]]) -> None:
    """The writer-by-path case (``torch.onnx.export``): the commit opens the temporary itself to fsync it."""
    target = tmp_path / "m.onnx"
    events = durability_log
    with staging(target) as stage:
        stage.close()
        stage.path.write_bytes(b"graph")
        tmp = str(stage.path)
        stage.commit()
    monkeypatch.undo()
    assert events == [("fsync", tmp), ("replace", tmp, str(target))]
    assert target.read_bytes() == b"graph"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_committed_file_gets_the_mode_a_plain_write_gives_not_mkstemps(tmp_path: Path) -> None:
    """mkstemp makes 0600; a new file must get 0o666 & ~umask (0644 under umask 022), by either writer."""
    old = os.umask(0o022)
    try:
        for name, by_path in (("a", False), ("b", True)):
            with staging(tmp_path / name) as stage:
                if by_path:
                    stage.close()
                    stage.path.write_bytes(b"x")
                else:
                    with stage.writer() as fh:
                        fh.write(b"x")
                stage.commit()
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)


def test_a_stage_is_written_once(tmp_path: Path) -> None:
    with staging(tmp_path / "x") as stage:
        with stage.writer() as fh:
            fh.write(b"1")
        with pytest.raises(ValueError, match="written once"):
            with stage.writer():
                pass


def test_export_onnx_fsyncs_the_graph_before_it_takes_the_targets_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       durability_log: list[tuple[str, ...]]) -> None:
    """Before session 37 the exporter renamed its temporary without an fsync (a power cut on a Jetson just after
    ``uopsl export`` could leave a zero-length model.onnx under its final name)."""
    from tinymodel import TinyScreen
    from uopsl.export.onnx_export import export_onnx

    target = tmp_path / "m.onnx"
    events = durability_log
    export_onnx(TinyScreen(3), target, 64)
    monkeypatch.undo()
    renames = [e for e in events if e[0] == "replace" and e[2] == str(target)]
    assert len(renames) == 1
    tmp = renames[0][1]
    assert ("fsync", tmp) in events[:events.index(renames[0])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# -- folders filled in a temporary place, then renamed into view --------------------------------------------
def _synced_before_rename(events: list[tuple[str, ...]], target: Path) -> tuple[set[str], set[str]]:
    """(files and folders under ``target`` now, "." included; those fsynced under the temporary folder before its
    rename onto ``target``), as paths relative to the folder."""
    renames = [e for e in events if e[0] == "replace" and e[2] == str(target)]
    assert len(renames) == 1, renames
    tmp = os.path.realpath(renames[0][1])
    before = events[:events.index(renames[0])]
    synced = {os.path.relpath(e[1], tmp) for e in before
              if e[0] == "fsync" and (e[1] == tmp or e[1].startswith(tmp + os.sep))}
    now = {str(p.relative_to(target)) for p in target.rglob("*")} | {"."}
    return now, synced


def test_replace_folder_syncs_every_file_and_folder_and_swaps_an_old_folder_out(
        tmp_path: Path, durability_log: list[tuple[str, ...]]) -> None:
    from uopsl.runtime.fsio import replace_folder

    target = tmp_path / "bundle"
    (target / "sub").mkdir(parents=True)
    (target / "old.txt").write_text("old")
    filled = tmp_path / ".bundle.new"
    (filled / "1" / "2").mkdir(parents=True)
    (filled / "a.onnx").write_bytes(b"a")
    (filled / "1" / "2" / "b.plan").write_bytes(b"b")
    replace_folder(filled, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # neither the filled name nor .bundle.old
    assert (target / "a.onnx").read_bytes() == b"a" and (target / "1" / "2" / "b.plan").read_bytes() == b"b"
    assert [e[2] for e in durability_log if e[0] == "replace"] == [str(tmp_path / ".bundle.old"), str(target)]
    now, synced = _synced_before_rename(durability_log, target)
    assert now == {".", "a.onnx", "1", "1/2", "1/2/b.plan"}
    assert synced == now


@pytest.fixture
def tiny_export(tmp_path: Path) -> tuple[Path, Any, Any, Any]:
    """A real fine-tuned tiny model's FP32 ONNX (site maps of fixed size, as a bundle needs), its model and
    metadata, and the deployed module."""
    from trainhelpers import tiny_model
    from uopsl.export.onnx_export import export_onnx
    from uopsl.train.model import DeployModel

    model, meta = tiny_model()
    deploy = DeployModel(model.eval(), 64)
    export_onnx(deploy, tmp_path / "src.onnx", 64)
    return tmp_path / "src.onnx", model, meta, deploy


def _write_bundle(target: Path, tiny_export: tuple[Path, Any, Any, Any]) -> None:
    from trainhelpers import CLASSES
    from uopsl.export.bundle_writer import write_bundle
    from uopsl.runtime.bundle import ClassSpec

    src, model, meta, deploy = tiny_export
    classes = [ClassSpec(n, (f"{n} phrase",), 0.5, True) for n in CLASSES]
    write_bundle(target, src, classes, "sigmoid", meta.preprocess, class_bank=model.class_text.numpy(),
                 site_map_size=(deploy.h, deploy.w), opset=17, backbone="resnet18")


def test_an_exported_bundle_is_synced_before_it_is_renamed_into_place(
        tmp_path: Path, tiny_export: tuple[Path, Any, Any, Any], durability_log: list[tuple[str, ...]]) -> None:
    """Before session 37 model.onnx and the class bank were renamed into view unsynced: a power cut just after
    ``uopsl export`` could leave a bundle whose files are empty (verify would name them; the export was lost)."""
    durability_log.clear()
    target = tmp_path / "bundle"
    _write_bundle(target, tiny_export)
    now, synced = _synced_before_rename(durability_log, target)
    assert {"model.onnx", "class_bank.npy", "manifest.json"} <= now
    assert now <= synced


def test_a_triton_repository_is_synced_before_it_is_renamed_into_place(
        tmp_path: Path, tiny_export: tuple[Path, Any, Any, Any], durability_log: list[tuple[str, ...]]) -> None:
    from uopsl.export.triton import write_triton_repository

    _write_bundle(tmp_path / "bundle", tiny_export)
    durability_log.clear()
    target = tmp_path / "models"
    write_triton_repository(tmp_path / "bundle", target, model_name="retina")
    now, synced = _synced_before_rename(durability_log, target)
    assert any(n.endswith("config.pbtxt") for n in now)
    assert now <= synced


def test_a_read_only_file_in_a_filled_folder_does_not_stop_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    durability_log: list[tuple[str, ...]]) -> None:
    """A file copied in without write permission (a read-only source kept its mode) is synced all the same: POSIX
    fsyncs through a read-only handle, and opening it for writing would fail for a non-root account."""
    from uopsl.runtime.fsio import replace_folder

    filled = tmp_path / ".out.new"
    filled.mkdir()
    (filled / "model.onnx").write_bytes(b"m")
    os.chmod(filled / "model.onnx", 0o444)
    opened: list[str] = []
    real_open = open

    def spy(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(mode)
        return real_open(file, mode, *args, **kwargs)

    import builtins

    monkeypatch.setattr(builtins, "open", spy)
    replace_folder(filled, tmp_path / "out")
    monkeypatch.setattr(builtins, "open", real_open)
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"m"
    assert opened == ["rb"]
