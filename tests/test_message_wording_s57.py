"""User-facing messages name things in words, not Python reprs (a session-57 review of the clinic CLI): "validated
on ['openvino']", "batch sizes must be >= 1, got (0,)", "the bundle has ['model.onnx (fp32)', ...]"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.backends import Availability, select_backend
from uopsl.runtime.bench import BenchConfig
from uopsl.runtime.bundle import PARITY_KEY, parity_status, read_manifest
from uopsl.runtime.errors import BundleError, ConfigError


def test_a_file_validated_on_other_backends_names_them_in_words(tiny_bundle: Path) -> None:  # noqa: F811
    entry = next(f for f in read_manifest(tiny_bundle).files if f.path == "model.int8.onnx")
    entry = replace(entry, info={**entry.info, PARITY_KEY: {"sha256": entry.sha256,
                                                            "backends": {"openvino": {}, "ort-cpu": {}}}})
    ok, why = parity_status(entry, "ort-cuda")
    assert not ok and "(validated on openvino, ort-cpu; run `uopsl validate --backends ort-cuda`)" in why, why


def test_a_missing_precision_lists_the_bundles_files_in_words(tiny_bundle: Path) -> None:  # noqa: F811
    with pytest.raises(BundleError) as err:
        select_backend(tiny_bundle, "ort-cpu", "fp16", availability=Availability(("CPUExecutionProvider",)))
    assert "the bundle has model.onnx (fp32), model.int8.onnx (int8-qdq-u8)" in str(err.value), err.value
    assert "[" not in str(err.value)


def test_a_batch_size_below_one_is_quoted_as_typed() -> None:
    with pytest.raises(ConfigError, match=r"^batch sizes must be >= 1, got 0$"):
        BenchConfig(batches=(0,))
    with pytest.raises(ConfigError, match=r"^batch sizes must be >= 1, got 1,0,8$"):
        BenchConfig(batches=(1, 0, 8))


def test_tensorrt_asked_for_a_bundle_without_engines_says_so_besides_the_install(tiny_bundle: Path) -> None:  # noqa: F811
    """The review: `bench --backend tensorrt` said only "needs TensorRT ... pip install" while `info` said "the bundle
    has no TensorRT engine": installing TensorRT would not have been enough."""
    from uopsl.runtime.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError) as err:  # still an ImportError, as the API documents
        select_backend(tiny_bundle, "tensorrt", availability=Availability(("CPUExecutionProvider",)))
    msg = str(err.value)
    assert "has none (nor is TensorRT installed here)" in msg and "uopsl build-engine BUNDLE" in msg, msg


@pytest.mark.parametrize("dtype, hint", [
    (np.float32, "floats in 0..1: (a * 255).round().astype(np.uint8); floats in 0..255: a.round().clip(0, 255)"),
    (np.uint16, "16-bit data: (a >> 8).astype(np.uint8); 12-bit data in 16-bit words: (a >> 4)"),
    (np.int32, "values in 0..255: a.clip(0, 255).astype(np.uint8)"),
])
def test_a_bad_array_given_to_screen_is_the_array_with_a_hint_for_its_type(
        tiny_bundle: Path, dtype: type, hint: str) -> None:  # noqa: F811
    """The review: screen() said "array 0 is float32" (the index means something only among screen_many's inputs),
    offered only the 0..1 float conversion (wrong for floats in 0..255) and `>> 4` for any 16-bit array."""
    from uopsl.runtime.api import Screener

    with Screener(tiny_bundle, backend="ort-cpu") as s:
        with pytest.raises(ConfigError) as err:
            s.screen(np.zeros((64, 64, 3), dtype))
        assert str(err.value).startswith(f"the array is {np.dtype(dtype)}; expected uint8 RGB") and hint in str(err.value)
        with pytest.raises(ConfigError, match=r"^array 1 is float64"):
            list(s.screen_many([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3))]))
        with pytest.raises(ConfigError, match=r"^cannot screen an int; "):
            s.screen(7)  # type: ignore[arg-type]


def test_help_says_what_no_verify_and_quiet_do() -> None:
    """The review: --no-verify's help said "Skip the bundle checksum verification" though the model file is still
    checked (and refused when damaged, docs/deployment.md), and -q's said "Only warnings and errors" though the
    final summary stays (as the README says)."""
    from click.testing import CliRunner

    from uopsl.runtime.cli import cli

    run_help = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "other than the model file that runs (which is always checked as it loads)" in run_help, run_help
    top = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
    assert "Only warnings, errors and the final summary." in top, top


def test_validate_says_it_leaves_oct_images_out_and_refuses_oct_only_data(
        tvhl_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A validation review: with `modality=oct` the 330 OCT rows vanished, then "--limit 60 is more than the 0
    image(s) the data hold" and "no images to validate on"; with `modality=both` they were dropped without a word."""
    import logging

    from uopsl.train.commands.validate import resolve_data

    with pytest.raises(ConfigError, match=r"holds no fundus photograph, only \d+ OCT image\(s\): validate judges "
                                          r"the bundle on fundus photographs"):
        resolve_data(f"tvhl:{tvhl_dir}:task=dme,modality=oct")
    with caplog.at_level(logging.WARNING):
        records, _, _ = resolve_data(f"tvhl:{tvhl_dir}:task=dme,modality=both")
    assert records and all("oct" not in str(r.path).split("/")[-2:] for r in records)
    assert any(r.getMessage().endswith("OCT image(s) left out: validate judges the bundle on fundus photographs, the "
                                       "only images its model screens") for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resolve_data(f"tvhl:{tvhl_dir}:task=dme")
    assert "left out" not in caplog.text


def test_validate_help_gives_the_interrupt_exit_code_and_the_report_reads_as_sentences() -> None:
    from click.testing import CliRunner

    from uopsl.export.parity_html import _outputs_words
    from uopsl.train.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["validate", "--help"]).output.split())
    assert "130 when stopped with Ctrl-C (the manifest is left as it was" in text, text
    some = _outputs_words({"cache": {"outputs_from_cache": "some"}})
    assert "Some of the model outputs came from the output cache" in some and "outputs some" not in some
