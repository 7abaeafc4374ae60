"""Static check: the whole package (runtime, calibration, export, train) type-checks cleanly with mypy.

mypy runs on the symlinked ``uopsl/`` view of the four source folders
(:mod:`mypyview`), so calls across packages are checked against the project's
own types rather than read as Any. The TensorRT modules import tensorrt
lazily; without its stubs those imports are missing and ignored here
(test_trt_typecheck.py checks them against the stubs). A probe module with
deliberate type errors, put inside the view, proves the check is real.

A first run (empty mypy cache) takes 40-60 s on 2 CPU cores, hence ``slow``;
later runs reuse the mypy cache in pytest's cache folder and take about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mypyview import cache_dir, make_view, run_mypy

pytestmark = pytest.mark.slow

PROBE = '''
from __future__ import annotations
from uopsl.train.model import UopslModel, fov_token_mask

def wrong_argument() -> None:
    fov_token_mask("7", 7)

def buffer_type(m: UopslModel) -> str:
    return m.seen
'''


def _mypy_package(view: Path, request: pytest.FixtureRequest) -> tuple[int, str]:
    """(exit status, output) of mypy over the package ``uopsl`` of ``view``."""
    proc = run_mypy(["-p", "uopsl"], cache_dir(request, "mypy-uopsl"), [view], view.parent)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode not in (0, 1) or "mypy: error" in out or "No module named mypy" in out:
        pytest.fail(f"mypy did not run (exit {proc.returncode}):\n{out[-3000:]}")
    return proc.returncode, out


def test_package_typechecks(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code, out = _mypy_package(make_view(tmp_path), request)
    assert code == 0, f"mypy reports type errors in the uopsl package:\n{out}"


def test_a_type_error_in_the_package_is_reported(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    view = make_view(tmp_path)
    (view / "uopsl" / "typecheck_probe.py").write_text(PROBE)
    code, out = _mypy_package(view, request)
    probe = [ln for ln in out.splitlines() if "typecheck_probe.py" in ln and ": error:" in ln]
    assert code == 1 and any('Argument 1 to "fov_token_mask" has incompatible type "str"; expected "int"' in ln
                             for ln in probe), f"mypy did not check the view's modules against uopsl's types:\n{out}"
    assert any('Incompatible return value type (got "Tensor", expected "str")' in ln for ln in probe), (
        f"mypy did not resolve torch or UopslModel's declared buffers:\n{out}")
