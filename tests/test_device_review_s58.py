"""The runtime as a device maker embeds it (session 58 review, helper-232).

- ``backend="tensorrt"`` with every engine refused for this device raised a plain BundleError, though the API
  documents EngineMismatchError for it: ``except EngineMismatchError: rebuild()`` after a JetPack upgrade never ran;
- ``--backend ort-trt`` without its provider said what was missing and not what to install;
- ``auto`` on a device with TensorRT, an engine that fits but lacks a PASS, and no ONNX Runtime said only
  "pip install onnxruntime" (on a Jetson, the wrong wheel, and a CPU fallback);
- ``screen_many`` over a list stopped at a mistyped folder after yielding the rows before it;
- a ``.txt`` input read as a list gave rows for its words, and nothing named the list or the line;
- ``Screener(None)`` raised a bare TypeError.

No TensorRT and no GPU: availability and the engine check are injected as in tests/test_backends.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_backends import _with_engines
from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture

from uopsl.runtime.api import ConfigError, Screener
from uopsl.runtime.backends import Availability, RefusedHere, select_backend
from uopsl.runtime.errors import BackendError, BundleError, EngineMismatchError, MissingDependencyError
from uopsl.runtime.inputs import iter_inputs

GPU = Availability(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"), openvino=True, tensorrt=True)


def test_explicit_tensorrt_whose_every_engine_is_foreign_raises_engine_mismatch(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "b"
    m = _with_engines(tiny_bundle, validated=True, write_to=root)
    with pytest.raises(EngineMismatchError) as err:
        select_backend(root, "tensorrt", manifest=m, availability=GPU,
                       engine_check=lambda p: RefusedHere("TensorRT 8.6.2.3 built it, TensorRT 10.3.0.30 is running"))
    msg = str(err.value)
    assert "model.fp16.engine: TensorRT 8.6.2.3 built it" in msg and "model.int8.engine: TensorRT 8.6.2.3" in msg
    assert "build one on this device with 'uopsl build-engine BUNDLE'" in msg, msg


def test_an_engine_that_cannot_be_read_or_checked_is_no_engine_mismatch(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """A review of the fix: a damaged engine file or a failing CUDA binding came back as EngineMismatchError too,
    so a device's `except EngineMismatchError: rebuild()` would rebuild for a fault a rebuild does not mend."""
    root = tmp_path / "b"
    m = _with_engines(tiny_bundle, validated=True, write_to=root)
    with pytest.raises(BundleError) as err:  # the real check: these engine files are a few bytes, no uopsl header
        select_backend(root, "tensorrt", manifest=m, availability=GPU)
    assert not isinstance(err.value, EngineMismatchError), err.value
    assert "model.fp16.engine:" in str(err.value)
    with pytest.raises(BundleError) as err:  # one refused here, one that cannot be checked: not all a rebuild's
        select_backend(root, "tensorrt", manifest=m, availability=GPU,
                       engine_check=lambda p: RefusedHere("built for sm_87") if "int8" in p.name
                       else "MissingDependencyError: cuda-python is broken")
    assert not isinstance(err.value, EngineMismatchError), err.value


def test_explicit_tensorrt_with_an_engine_awaiting_validation_stays_a_bundle_error(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """One engine fits but lacks a PASS: the remedy is to validate it, not to rebuild, so not the mismatch type."""
    root = tmp_path / "b"
    m = _with_engines(tiny_bundle, validated=False, write_to=root)
    with pytest.raises(BundleError) as err:
        select_backend(root, "tensorrt", manifest=m, availability=GPU,
                       engine_check=lambda p: "built for sm_87" if "int8" in p.name else None)
    assert not isinstance(err.value, EngineMismatchError), err.value
    with pytest.raises(BundleError) as none:  # no engine at all: nothing was refused for this device
        select_backend(tiny_bundle, "tensorrt", availability=GPU, engine_check=lambda p: None)
    assert not isinstance(none.value, EngineMismatchError) and "the bundle has none" in str(none.value)


def test_ort_trt_without_its_provider_says_what_to_install(tiny_bundle: Path) -> None:  # noqa: F811
    cpu = Availability(ort_providers=("AzureExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(MissingDependencyError) as err:
        select_backend(tiny_bundle, "ort-trt", availability=cpu)
    msg = str(err.value)
    assert "offers AzureExecutionProvider, CPUExecutionProvider" in msg, msg  # not a Python list
    assert "pip install onnxruntime-gpu" in msg and "tensorrt" in msg.lower() and "Jetson" in msg, msg


def test_auto_without_onnx_runtime_names_the_unvalidated_engine_first(
        tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    root = tmp_path / "b"
    m = _with_engines(tiny_bundle, validated=False, write_to=root)
    trt_only = Availability(ort_providers=(), openvino=False, tensorrt=True)
    with caplog.at_level(logging.ERROR), pytest.raises(BackendError) as err:
        select_backend(root, manifest=m, availability=trt_only, engine_check=lambda p: None, measure=False)
    msg = str(err.value)
    todo = msg.split("To screen: ", 1)[1]
    assert todo.startswith("run the TensorRT engine that fits here unvalidated with --precision"), msg
    # validate runs its reference on ONNX Runtime: installing it comes first (a review of the first wording)
    assert todo.index("install ONNX Runtime") < todo.index("then validate the engine on this device"), msg
    assert "on a Jetson, the onnxruntime-gpu wheel" in todo, msg

    # A machine with neither: installing a runtime comes first, building an engine only on a GPU device.
    bare = Availability(ort_providers=(), openvino=False, tensorrt=False)
    with pytest.raises(BackendError) as err:
        select_backend(tiny_bundle, availability=bare, measure=False)
    todo = str(err.value).split("To screen: ", 1)[1]
    assert todo.startswith("install ONNX Runtime"), todo
    assert "on a GPU device with TensorRT, build an engine there" in todo, todo


def test_screen_many_over_a_list_refuses_a_mistyped_folder_before_screening_any(
        tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    good = fundus_jpeg(tmp_path / "good.jpg", seed=1)
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        with pytest.raises(ConfigError, match="does not exist"):
            s.screen_many([str(good), str(tmp_path / "no_such_folder"), str(good)])  # raised by the call itself
        # A missing file named like a photograph still gets its row, in order, and the list goes on.
        rows = list(s.screen_many([str(tmp_path / "missing.jpg"), str(good)]))
    assert [r.status for r in rows] == ["error", "ok"], [(r.status, r.reasons) for r in rows]


def test_a_list_file_naming_missing_files_says_which_list_and_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = fundus_jpeg(tmp_path / "good.jpg", seed=1)
    notes = tmp_path / "notes.txt"
    notes.write_text(f"hello\n# a comment\n{good.name}\nworld is\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="uopsl"):
        items = list(iter_inputs([notes]))
    assert [Path(i.source).name for i in items] == ["hello", "good.jpg", "world is"]
    said = [r.getMessage() for r in caplog.records if "name no file" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "notes.txt: 2 of its 3 entries name no file (line 1: hello, line 4: world is)" in said[0], said
    assert "read as a list of photographs" in said[0] and ".list/.lst/.txt" in said[0], said

    caplog.clear()
    listed = tmp_path / "photos.lst"
    listed.write_text(f"{good.name}\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="uopsl"):
        assert len(list(iter_inputs([listed]))) == 1
    assert "name no file" not in caplog.text and "names no file" not in caplog.text, caplog.text


@pytest.mark.parametrize("bad", [None, 5, ["a", "b"]])
def test_a_bundle_that_is_not_a_path_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="bundle must be the path of a bundle folder"):
        Screener(bad)  # type: ignore[arg-type]


def test_the_roc_legend_explains_the_hollow_point_of_a_dashed_curve() -> None:
    """validate's overlay draws the candidate's (dashed) operating point hollow; the legend showed only the filled
    dot (a left-alone item of session 57's review)."""
    import numpy as np

    from uopsl.runtime.metrics import roc_curve
    from uopsl.runtime.plots import RocSeries, _legend_entries, render_roc

    y = np.array([0, 0, 1, 1], bool)
    curve = roc_curve(y, np.array([0.1, 0.4, 0.35, 0.8]))
    both = [RocSeries("ref", curve, (200, 0, 0), operating_point=(0.5, 0.5)),
            RocSeries("cand", curve, (200, 0, 0), dashed=True, operating_point=(0.5, 1.0))]
    rows = [(label, style) for label, _, style in _legend_entries(both)]
    assert ("operating point, solid curve", "point") in rows and ("operating point, dashed curve", "hollow") in rows
    only_candidate = [(label, style) for label, _, style in _legend_entries([RocSeries("ref", curve, (200, 0, 0)),
                                                                           both[1]])]
    assert ("operating point", "hollow") in only_candidate and not any(s == "point" for _, s in only_candidate)
    assert render_roc(both).shape[2] == 3  # draws with the new row
