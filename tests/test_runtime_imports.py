"""``uopsl.runtime`` never imports torch or onnx (not even transitively) and stays Python 3.10 compatible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, tiny_bundle  # noqa: F401 - session fixture

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"

_SCRIPT = r"""
import importlib, pkgutil, sys
import uopsl.runtime as rt
# Every module, the TensorRT backend included: TensorRT and the CUDA bindings load when an engine opens.
for m in pkgutil.walk_packages(rt.__path__, "uopsl.runtime."):
    importlib.import_module(m.name)
from uopsl.runtime.api import Screener
from uopsl.runtime.cli import main
bundle, image, out = sys.argv[1:4]
with Screener(bundle, "auto") as s:
    r = s.screen(image)
    assert r.status == "ok", r
    s.screen_to(out, [image], overlays=True)
assert main(["info", bundle]) == 0
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "torchvision", "timm", "tensorrt", "pycuda"))
print("FORBIDDEN:" + ",".join(bad))
"""


def test_runtime_never_imports_torch_or_onnx(tiny_bundle: Path, tmp_path: Path) -> None:
    image = fundus_jpeg(tmp_path / "a.jpg")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tiny_bundle), str(image), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env={"UOPSL_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FORBIDDEN:"))
    assert line == "FORBIDDEN:", f"uopsl.runtime pulled in {line[10:]}"


@pytest.mark.skipif(shutil.which("vermin") is None, reason="vermin not installed (pip install vermin)")
def test_runtime_is_python_310_compatible() -> None:
    proc = subprocess.run(["vermin", "-t=3.10-", "--no-tips", "--violations", str(RUNTIME)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openvino_is_imported_without_its_usage_telemetry(tmp_path: Path) -> None:
    """``import openvino`` reports to Google Analytics from a forked process and writes a client ID under
    ~/intel unless opted out; uopsl's imports of it (availability checks, the backend) must do neither."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:  # not importorskip: importing it here would send the event
        pytest.skip("OpenVINO is not installed (pip install 'openvino>=2024.0')")
    code = (
        "import multiprocessing, sys, threading\n"
        "from uopsl.runtime.optional import available, require\n"
        "assert available('openvino')\n"
        "ov = require('openvino', 'a test')\n"
        "import openvino.tools.ovc.telemetry_utils as tu\n"
        "print(tu.tm.__name__)\n"
        "print(sorted(t.name for t in threading.enumerate()), multiprocessing.active_children())\n"
        "import openvino_telemetry\n"  # hidden only for that import: the program's own use still works
        "print('telemetry importable afterwards')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["openvino.tools.ovc.telemetry_stub", "['MainThread'] []",
                                        "telemetry importable afterwards"]
    assert not (tmp_path / "intel").exists()


_CTRL_C_DURING_IMPORT = r"""
import os, signal, sys, threading
from uopsl.runtime.optional import available, import_optional
threading.Timer(0.01, lambda: os.kill(os.getpid(), signal.SIGINT)).start()  # onnxruntime takes far longer
try:
    got = available("onnxruntime") if sys.argv[1] == "available" else import_optional("onnxruntime")
    print("RESULT", got)
except KeyboardInterrupt:
    print("RESULT KeyboardInterrupt")
except BaseException as exc:
    print("RESULT", type(exc).__name__, exc)
# A program's own handler (a graceful stop) is called once the import is done, not bypassed.
events = []
signal.signal(signal.SIGINT, lambda *a: events.append("handler"))
sys.path.insert(0, sys.argv[2])
threading.Timer(0.01, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
import_optional("slow_to_import")
events.append("imported")
print("EVENTS", ",".join(events))
"""


@pytest.mark.parametrize("how", ["import_optional", "available"])
def test_ctrl_c_while_onnxruntime_imports_stays_a_ctrl_c(how: str, tmp_path: Path) -> None:
    """ONNX Runtime turns a KeyboardInterrupt during its import into ``ImportError: import numpy failed``:
    a Ctrl-C early in a run read as "onnxruntime is not installed" (a wrong install hint, or ``auto`` quietly
    taking another backend). The import now holds the Ctrl-C back and delivers it after."""
    pytest.importorskip("onnxruntime")
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(0.5)\n")
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_DURING_IMPORT, how, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert "RESULT KeyboardInterrupt" in lines, proc.stdout + proc.stderr[-2000:]
    assert "EVENTS handler,imported" in lines, proc.stdout + proc.stderr[-2000:]
