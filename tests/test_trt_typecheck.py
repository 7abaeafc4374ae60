"""Static check: the TensorRT-facing modules type-check with mypy against tensorrt-stubs (TensorRT 10.13).

``../shared/tools/trt-stubs.sh DIR`` downloads the ``tensorrt-stubs`` wheel and
patches three things mypy cannot parse; the prepared stubs are kept in the
pytest cache so later runs need no network. Without network (and no cached
stubs) the test is skipped with the reason.

mypy runs on a symlinked ``uopsl/`` view of the source folders, so the
project's own types (EngineHeader, TrtApi, ...) resolve too; the editable
install's import hook is invisible to mypy. Errors inside the stubs and in
other engineers' modules are not judged here, only lines naming our files.
Two probe modules prove the check is real: a misuse of the TensorRT 10 API
and of a project dataclass must both be reported.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mypyview import REPO, make_view, run_mypy
from mypyview import cache_dir as _cache_dir

STUBS_SCRIPT = REPO.parent / "shared" / "tools" / "trt-stubs.sh"
MODULES = (
    "uopsl.export.tensorrt",
    "uopsl.export.tensorrt_calibrator",
    "uopsl.runtime.backends.tensorrt",
    "uopsl.runtime.trt_compat",
    "uopsl.runtime.cuda_binding",
    "uopsl.runtime.engine_header",
    "uopsl.calibration.trt_cache",
    "uopsl.train.commands.build_engine",
)
OUR_FILES = tuple("uopsl/" + m.split(".", 1)[1].replace(".", "/") + ".py" for m in MODULES)

PROBE = '''
from __future__ import annotations
from typing import TYPE_CHECKING
from uopsl.runtime.engine_header import EngineHeader
if TYPE_CHECKING:
    import tensorrt

def stubs_probe(e: tensorrt.ICudaEngine) -> int:
    return e.num_bindings  # removed in TensorRT 10: the stubs must flag it

def project_probe(h: EngineHeader) -> int:
    return h.no_such_field
'''


@pytest.fixture(scope="module")
def stubs(request: pytest.FixtureRequest) -> Path:
    if not STUBS_SCRIPT.is_file():
        pytest.skip(f"{STUBS_SCRIPT} not found (the shared tools folder is not next to the repository)")
    cache = _cache_dir(request, "trt-stubs-10.13")
    if not (cache / "tensorrt" / "__init__.pyi").is_file():
        proc = subprocess.run(["bash", str(STUBS_SCRIPT), str(cache)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not (cache / "tensorrt" / "__init__.pyi").is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"could not download/prepare tensorrt-stubs (no network?): {last}")
    return cache


def test_tensorrt_modules_typecheck(stubs: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    view = make_view(tmp_path)
    (view / "trt_probe.py").write_text(PROBE)
    args = ["--no-error-summary", "--show-absolute-path", "--hide-error-context"]
    for m in (*MODULES, "trt_probe"):
        args += ["-m", m]
    proc = run_mypy(args, _cache_dir(request, "mypy-trt"), [stubs, view], tmp_path)
    lines = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode not in (0, 1) or any(ln.startswith("mypy: error") for ln in lines):
        pytest.fail("mypy did not run:\n" + "\n".join(lines[-20:]))
    probe = [ln for ln in lines if "trt_probe.py" in ln and ": error:" in ln]
    assert any('"ICudaEngine" has no attribute "num_bindings"' in ln for ln in probe), (
        "mypy did not use the tensorrt stubs, so the check would pass vacuously:\n" + "\n".join(lines[-10:]))
    assert any('"EngineHeader" has no attribute "no_such_field"' in ln for ln in probe), (
        "mypy did not resolve the project's own modules:\n" + "\n".join(lines[-10:]))
    ours = [ln for ln in lines if ": error:" in ln and any(f in ln.replace(os.sep, "/") for f in OUR_FILES)]
    assert not ours, "mypy errors in the TensorRT-facing modules:\n" + "\n".join(ours)
