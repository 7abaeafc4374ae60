"""The docs against the code (session 60 review, helper-244: a new contributor running every documented command).

- README: the ``[export]`` extra covers "calibration, quantization, build-engine (no PyTorch)", but
  ``uopsl quantize`` always imported torch (a manifest note's name was read from the training layer):
  "error: unexpected ModuleNotFoundError: No module named 'torch'", also with ``--rounding nearest``. The
  default GPTQ rounding does run in PyTorch; the README now says so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tinybundle import good_photos, make_tiny_bundle, tiny_bundle  # noqa: F401 - session fixture

_NO_TORCH = r"""
import importlib.abc, sys
BLOCKED = ("torch", "torchvision", "timm", "sentence_transformers", "safetensors")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: quantize must work without PyTorch")
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["uopsl", *sys.argv[1:]]
from uopsl.train.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print("LOADED:" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
print(f"EXIT:{code}")
"""


def test_quantize_runs_without_pytorch(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", int8=False)
    photos = tmp_path / "calib"
    good_photos(photos, 8)
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH)
    for step in (["calibrate", str(bundle), "--images", str(photos)],
                 ["quantize", str(bundle), "--variant", "cpu", "--images", str(photos), "--rounding", "nearest"]):
        done = subprocess.run([sys.executable, str(script), *step], capture_output=True, text=True, timeout=600)
        assert "EXIT:0" in done.stdout, step[0] + ": " + done.stdout + done.stderr
    assert "EXIT:0" in done.stdout, done.stdout + done.stderr  # before: EXIT:2, "No module named 'torch'"
    assert "LOADED:\n" in done.stdout, done.stdout
    assert (bundle / "model.int8.onnx").is_file()
    # The default GPTQ rounding runs in PyTorch: it says which extra to install, not "a bug".
    done = subprocess.run([sys.executable, str(script), "quantize", str(bundle), "--variant", "cpu", "--images",
                           str(photos)], capture_output=True, text=True, timeout=600)
    assert "EXIT:2" in done.stdout and "needs the Python package 'torch'" in done.stderr, done.stdout + done.stderr
    assert "train extra" in done.stderr and "a bug" not in done.stderr, done.stderr


def test_info_lists_per_backend_only_the_onnx_files_that_backend_runs(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """info listed model.int8.trt.onnx as usable on openvino, while validate said the runtime never runs it there."""
    import shutil

    from uopsl.export.bundle_writer import add_file
    from uopsl.runtime.backends import Availability, backend_table

    b = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    shutil.copy(b / "model.int8.onnx", b / "model.int8.trt.onnx")  # stands in for the s8 variant: only listed here
    add_file(b, None, "model.int8.trt.onnx", "onnx", "int8-qdq-s8")
    every = Availability(ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
                         openvino=True)
    notes = {name: note for name, ok, note in backend_table(b, availability=every)}
    assert notes["openvino"] == "model.onnx (fp32), model.int8.onnx (int8-qdq-u8)", notes["openvino"]
    assert notes["ort-cpu"] == notes["openvino"]
    assert notes["ort-trt"] == "model.onnx (fp32), model.int8.trt.onnx (int8-qdq-s8)", notes["ort-trt"]
    assert notes["ort-cuda"] == notes["ort-trt"]  # the GPU order puts the symmetric file first
