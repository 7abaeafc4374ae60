"""What a reviewer installing and upgrading the runtime found (session 47), each fixed behaviour pinned.

An IT administrator installed only the runtime, rolled a runtime back over a results folder, and ran the
training commands where only the runtime was installed. Each test fails on the code before the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.backends import Availability, select_backend
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import BackendError, ConfigError, MissingDependencyError
from uopsl.runtime.optional import optional_hint, require
from uopsl.runtime.results import ModelIdentity, ResultStore

NAMES = ("normal", "dr")


# -- backend selection without ONNX Runtime -------------------------------------------------------------------
def test_auto_without_onnx_runtime_says_nothing_runs_here_and_what_to_install(tiny_bundle: Path) -> None:
    """A core install (the wheel without its runtime extra) has no ONNX Runtime. ``auto`` fell back to ort-cpu
    all the same: ``info`` printed "auto ort-cpu fp32" two lines below "ort-cpu no", and ``run`` said it picked
    ort-cpu before failing. Now the selection itself says nothing here can run the bundle, and what to install."""
    with pytest.raises(BackendError, match="ONNX Runtime is not installed") as err:
        select_backend(tiny_bundle, "auto", "auto", availability=Availability(()), measure=False)
    assert "pip install 'onnxruntime>=1.17'" in str(err.value) and "openvino" in str(err.value)


def test_auto_without_onnx_runtime_runs_the_fp32_file_on_openvino_where_it_is_installed(tiny_bundle: Path) -> None:
    """OpenVINO reads the same FP32 ONNX file, so a machine with OpenVINO and no ONNX Runtime still screens."""
    sel = select_backend(tiny_bundle, "auto", "auto", availability=Availability((), openvino=True), measure=False)
    assert (sel.backend, sel.precision, sel.file) == ("openvino", "fp32", "model.onnx")
    assert "ONNX Runtime is not installed" in sel.reason


def test_auto_with_onnx_runtime_still_ends_on_its_cpu_provider(tiny_bundle: Path) -> None:
    sel = select_backend(tiny_bundle, "auto", "auto", availability=Availability(("CPUExecutionProvider",)),
                         measure=False)
    assert (sel.backend, sel.precision) == ("ort-cpu", "fp32")


# -- a command whose extra is not installed -------------------------------------------------------------------
def _group(missing: str) -> click.Group:
    @click.group()
    def group() -> None:
        pass

    @group.command()
    def train() -> None:
        raise ModuleNotFoundError(f"No module named '{missing}'", name=missing)

    return group


def test_a_missing_training_package_is_an_install_line_not_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    """``uopsl finetune`` where only the runtime is installed reported "unexpected ModuleNotFoundError ... (a bug:
    rerun with -v ... and report it)". A package one of uopsl's extras provides gets what to install."""
    assert main_entry(_group("torch"), ["train"], prog_name="uopsl") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: this command needs the Python package 'torch', which is not installed here")
    assert f"Install it: {optional_hint('torch')}" in err and "bug" not in err


def test_a_missing_module_no_extra_provides_is_still_reported_as_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    """A module of uopsl itself missing is a broken install: an install hint would send the user the wrong way."""
    assert main_entry(_group("uopsl.train.gone"), ["train"], prog_name="uopsl") == 2
    err = capsys.readouterr().err.strip()
    assert "unexpected ModuleNotFoundError" in err and "report it" in err and "Install it" not in err


def test_a_missing_package_is_named_by_its_package_not_the_submodule_imported_from_it() -> None:
    """``cryptography.hazmat.primitives.serialization`` was named as the package to install."""
    with pytest.raises(MissingDependencyError) as err:
        require("uopsl_no_such_package.hazmat.primitives", "signing")
    assert "needs the Python package 'uopsl_no_such_package'," in str(err.value)
    assert "pip install uopsl_no_such_package" in str(err.value)


# -- results folders and preprocessing versions ---------------------------------------------------------------
def _row(key: str, version: int | None) -> dict[str, object]:
    row: dict[str, object] = {"key": key, "status": "ok", "bundle_sha256": "1" * 64, "model_sha256": "m" * 64}
    if version is not None:
        row["preprocess_version"] = version
    return row


def _folder(out: Path, *rows: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _identity(version: int, model: str = "m") -> ModelIdentity:
    return ModelIdentity("1" * 64, "review", NAMES, model_sha256=model * 64, preprocess_version=version)


def test_a_folder_a_newer_runtime_screened_is_refused_not_screened_again(tmp_path: Path) -> None:
    """Rolling the runtime back (or two clinic machines at different versions sharing a folder) screened the
    newer rows again with the older decoding, replacing them, while the warning said they came from "an earlier
    uopsl". The folder is now refused, naming both versions and what to do; nothing in it changes."""
    out = tmp_path / "out"
    _folder(out, _row("/p/a.jpg|10|1", 9), _row("/p/b.jpg|10|1", 10), _row("/p/c.jpg|10|1", None))
    before = (out / "results.jsonl").read_bytes()
    with pytest.raises(ConfigError) as err:
        ResultStore(out, _identity(9))
    text = str(err.value)
    assert "holds 1 result(s) screened by a newer uopsl (preprocessing version 10;" in text
    assert "has version 9" in text and "Upgrade uopsl" in text and "--out" in text
    assert (out / "results.jsonl").read_bytes() == before


def test_a_folder_of_this_or_earlier_versions_still_opens(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _folder(out, _row("/p/a.jpg|10|1", 8), _row("/p/b.jpg|10|1", 9), _row("/p/c.jpg|10|1", None))
    ResultStore(out, _identity(9)).close()
    ResultStore(out, _identity(0)).close()  # 0: this caller does not check versions


def test_only_a_photographs_latest_row_counts(tmp_path: Path) -> None:
    """A photograph screened by a newer runtime and then again by this one (its latest row) is this version's."""
    out = tmp_path / "out"
    _folder(out, _row("/p/a.jpg|10|1", 10), _row("/p/a.jpg|10|1", 9))
    ResultStore(out, _identity(9)).close()


def test_another_models_folder_counts_photographs_not_rows(tmp_path: Path) -> None:
    """The refusal said "holds 10 result(s)" for a folder of 5 photographs each screened twice (an upgrade's
    re-screen appends a row): it counts photographs."""
    out = tmp_path / "out"
    _folder(out, *[_row(f"/p/{i}.jpg|10|1", 9) for i in range(5)] * 2)
    with pytest.raises(ConfigError, match=r"holds 5 result\(s\) of another model"):
        ResultStore(out, _identity(9, model="n"))


# -- versions -------------------------------------------------------------------------------------------------
def test_version_names_the_bundle_formats_and_the_preprocessing_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Every build said "0.1.0": an administrator could not tell which bundles a device reads. ``--version``
    now names them and the preprocessing version results folders record, and the package metadata agrees."""
    import tomllib

    from uopsl.runtime.bundle import SUPPORTED_FORMAT_VERSIONS
    from uopsl.runtime.cli import cli
    from uopsl.runtime.preprocess import PREPROCESS_VERSION
    from uopsl.runtime.version import __version__

    assert main_entry(cli, ["--version"], prog_name="uopsl-screen") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"uopsl-screen {__version__} (reads bundle formats "
                           f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}; preprocessing version "
                           f"{PREPROCESS_VERSION}")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__ != "0.1.0"


def _resealed(tmp_path: Path, tiny_bundle: Path, edit: dict[str, object], *, seal: bool) -> Path:
    import shutil

    from uopsl.runtime.bundle import MANIFEST, content_hash

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    raw = json.loads((b / MANIFEST).read_text())
    raw.update(edit)
    if seal:
        raw["content_sha256"] = content_hash(raw)
    (b / MANIFEST).write_text(json.dumps(raw))
    return b


@pytest.mark.parametrize("edit", [{"format_version": 4}, {"preprocess_rule": 10}])
def test_an_edited_manifest_is_called_edited_not_newer(tmp_path: Path, tiny_bundle: Path,
                                                        edit: dict[str, object]) -> None:
    """A format version changed by hand (the seal not renewed) read "not supported ...; upgrade uopsl on this
    device", sending an administrator after an upgrade that cannot help. The broken seal is said first."""
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.errors import BundleError

    with pytest.raises(BundleError) as err:
        read_manifest(_resealed(tmp_path, tiny_bundle, edit, seal=False))
    text = str(err.value)
    assert "content differs from its checksum (edited or corrupted)" in text
    assert "copy the bundle again from its source" in text


def test_a_sealed_manifest_with_fields_this_runtime_does_not_know_says_upgrade(tmp_path: Path,
                                                                               tiny_bundle: Path) -> None:
    """A newer exporter's field read "malformed manifest (TypeError: Manifest.__init__() got an unexpected keyword
    argument ...); re-export the bundle or restore the original file": Python's internals and the wrong advice."""
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.errors import BundleError

    b = _resealed(tmp_path, tiny_bundle, {"preprocess_rule": 10, "toolkit_version": "9.0.0"}, seal=True)
    with pytest.raises(BundleError) as err:
        read_manifest(b)
    text = str(err.value)
    assert "does not know: preprocess_rule;" in text and "toolkit 9.0.0" in text and "upgrade uopsl" in text
    assert "TypeError" not in text and "re-export the bundle or restore" not in text
    sealed_newer = _resealed(tmp_path / "n", tiny_bundle, {"format_version": 4}, seal=True)
    with pytest.raises(BundleError, match="bundle format version 4 is not supported .*upgrade uopsl"):
        read_manifest(sealed_newer)


def test_info_says_when_a_newer_uopsl_made_the_bundle(tmp_path: Path, tiny_bundle: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle made by uopsl 9.0.0 in a format this runtime reads was shown as "toolkit 9.0.0" without a word."""
    from uopsl.runtime.cli import main as screen_main
    from uopsl.runtime.version import __version__

    b = _resealed(tmp_path, tiny_bundle, {"toolkit_version": "9.0.0"}, seal=True)
    assert screen_main(["info", str(b)]) == 0
    assert f"made by uopsl 9.0.0, newer than this runtime ({__version__})" in capsys.readouterr().out
    same = _resealed(tmp_path / "same", tiny_bundle, {"toolkit_version": __version__}, seal=True)
    assert screen_main(["info", str(same)]) == 0
    assert "newer than this runtime" not in capsys.readouterr().out
