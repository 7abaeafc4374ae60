"""Limits and contracts a mutation audit (session 34) found unpinned: each test fails with the mutant it names.

The audit put 41 single-point changes into a scratch copy of the parity gates, backend selection, bundle
checks, results store, calibration ranges and watch; 10 survived every relevant test file, 2 of them
equivalent. The parity and backend ones are in ``tests/parity/test_judge_on_bounds.py`` and
``tests/test_backends.py``; the bundle and results ones are here.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.export.parity_metrics import ParityGates
from uopsl.runtime.bundle import MIN_PARITY_IMAGES, parity_run_problem, read_manifest, verify_before_rewrite
from uopsl.runtime.errors import BundleError
from uopsl.runtime.input_keys import file_key
from uopsl.runtime.results import MOVED_BY_SIZE_UP_TO, ResultStore, is_final


def test_a_parity_pass_counts_from_exactly_min_parity_images() -> None:
    """Mutant: ``n <= MIN_PARITY_IMAGES`` refused. 100 images is a round number people will use."""
    gates = ParityGates().to_dict()
    assert parity_run_problem(gates, MIN_PARITY_IMAGES) is None
    assert f"only {MIN_PARITY_IMAGES - 1} images" in (parity_run_problem(gates, MIN_PARITY_IMAGES - 1) or "")


def test_a_rewrite_is_refused_when_another_file_fails_too(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Mutant: ``all`` -> ``any`` in verify_before_rewrite: calibrate, quantize or build-engine would rewrite the
    manifest beside a damaged model file. Only the file being replaced may be bad."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    onnx = [f.path for f in read_manifest(b).files_of("onnx")]
    replacing, other = onnx[-1], onnx[0]
    assert replacing != other
    with open(b / replacing, "ab") as fh:
        fh.write(b"\0")
    assert verify_before_rewrite(b, replacing) is True
    with open(b / other, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=other):
        verify_before_rewrite(b, replacing)


def test_an_error_row_is_final_only_when_every_reason_is_the_contents() -> None:
    """An equivalent mutant today (every error row has one reason), pinned as the contract: one transient reason
    beside a content one means the photograph is tried again on the next run."""
    assert is_final("error", ("undecodable",))
    assert not is_final("error", ("undecodable", "inference_error"))


def test_a_renamed_photograph_is_found_among_exactly_the_limit_of_rows_of_its_size(tmp_path: Path) -> None:
    """Mutant: ``>= MOVED_BY_SIZE_UP_TO`` gives up: on a card where exactly that many screened photographs share
    one size, a renamed one would be screened and listed twice."""
    data = b"\xff\xd8" + b"x" * 998
    new = tmp_path / "cards" / "IMG_0001_patient42.jpg"
    new.parent.mkdir()
    new.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    gone = tmp_path / "gone"  # the old mount point: none of these files exists any more
    rows = [{"key": f"{gone}/IMG_{i:04d}.jpg|{len(data)}|1", "status": "ok", "sha256": sha if i == 1 else f"{i:064x}"}
            for i in range(MOVED_BY_SIZE_UP_TO)]
    with ResultStore(tmp_path / "out") as store:
        store.append(rows)
        found = store.find_moved(file_key(new), new)
    assert found is not None and found["key"] == rows[1]["key"]
