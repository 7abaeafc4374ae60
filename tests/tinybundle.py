"""Build tiny deployment bundles for runtime tests (torch is fine here; the runtime never imports it).

``make_tiny_bundle`` writes the contract model from :mod:`tinymodel`, an
optional INT8 QDQ variant (ONNX Runtime's static quantizer, u8 activations) and
a manifest written with :mod:`uopsl.runtime.bundle`, with real checksums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinymodel import export_tiny_onnx, random_fundus_batch
from uopsl.runtime.backends.base import Backend, TensorSpec
from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest, describe_file, write_manifest
from uopsl.runtime.preprocess import PreprocessConfig

CLASSES = (
    ClassSpec("normal", ("healthy retina",), threshold=0.5, referable=False),
    ClassSpec("npdr", ("microaneurysms", "dot haemorrhages"), threshold=0.5, referable=True),
    ClassSpec("dme", ("hard exudates near the macula",), threshold=0.5, referable=True),
)


def quantize_qdq_u8(fp32: Path, out: Path, size: int, n: int = 8) -> Path:
    """Static QDQ INT8 (u8 activations, s8 weights) with a few synthetic calibration images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(random_fundus_batch(n, size, seed=1)[:, None])

        def get_next(self):  # type: ignore[no-untyped-def]
            x = next(self._it, None)
            return None if x is None else {"image": x}

    quantize_static(str(fp32), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def make_tiny_bundle(root: str | Path, *, num_classes: int = 3, size: int = 64, head: str = "sigmoid",
                     int8: bool = False, seed: int = 0) -> Path:
    """Write a complete bundle folder at ``root`` and return it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    export_tiny_onnx(root / "model.onnx", num_classes=num_classes, size=size, head=head, seed=seed)
    files = [FileEntry("model.onnx", "onnx", "fp32")]
    if int8:
        quantize_qdq_u8(root / "model.onnx", root / "model.int8.onnx", size)
        files.append(FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8"))
    classes = CLASSES[:num_classes] if num_classes <= len(CLASSES) else CLASSES + tuple(
        ClassSpec(f"class{i}", referable=True) for i in range(len(CLASSES), num_classes))
    manifest = Manifest(
        classes=classes,
        head=head,  # type: ignore[arg-type]
        preprocess=PreprocessConfig(size=size, max_pixels=HUGE_LIMIT),
        files=tuple(describe_file(root, f) for f in files),
        site_map_size=(size // 8, size // 8),
        model_name="tiny",
        backbone="tiny-cnn",
    )
    write_manifest(root, manifest)
    return root


def fundus_jpeg(path: str | Path, size: int = 320, seed: int = 0) -> Path:
    """A synthetic fundus-like JPEG at ``path`` that passes the quality gate (seeds 0-30 do)."""
    from uopsl.runtime.bench import synthetic_jpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synthetic_jpeg(seed, size))
    return path


def make_bad_zoo(folder: str | Path, size: int = 320) -> dict[str, tuple[Path, str]]:
    """Write the bad-input zoo; returns name -> (path, expected status).

    Expected status is ``error`` (cannot be read or decoded, or too small/large
    for the bundle's ``max_pixels`` of :func:`make_tiny_bundle`), ``ungradable``
    (decodes, but is no colour fundus photograph: the quality gate says so) or
    ``ok`` (unusual encoding of a fundus-like photograph).
    """
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from uopsl.runtime.bench import synthetic_fundus

    fundus = synthetic_fundus(5, size)
    bgr = cv2.cvtColor(fundus, cv2.COLOR_RGB2BGR)
    zoo: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, status: str) -> None:
        (folder / name).write_bytes(data)
        zoo[name] = (folder / name, status)

    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    put("zero_byte.jpg", b"", "error")
    put("truncated.jpg", jpeg[: len(jpeg) // 2], "error")
    put("not_an_image.jpg", b"%PDF-1.4 this is not a photograph\n" * 20, "error")
    put("one_pixel.png", cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(), "error")
    # 'huge' relative to the tiny bundle's max_pixels (HUGE_LIMIT); cheap to write and decode.
    put("huge.png", cv2.imencode(".png", np.zeros((1100, 1100, 3), np.uint8))[1].tobytes(), "error")
    put("grayscale.png", cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))[1].tobytes(), "ungradable")
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    put("rgba.png", cv2.imencode(".png", rgba)[1].tobytes(), "ok")
    put("sixteen_bit.tiff", cv2.imencode(".tiff", bgr.astype(np.uint16) * 257)[1].tobytes(), "ok")
    yy, xx = np.mgrid[0:size, 0:size]
    checker = (((yy // 12) + (xx // 12)) % 2 * 200 + 30).astype(np.uint8)
    put("non_fundus.png", cv2.imencode(".png", np.dstack([checker, checker // 2, 255 - checker]))[1].tobytes(), "ungradable")
    zoo["missing.jpg"] = (folder / "does_not_exist" / "missing.jpg", "error")
    return zoo


#: ``max_pixels`` of the tiny bundle: the zoo's 'huge' image exceeds it.
HUGE_LIMIT = 1_000_000


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FP32 + INT8 (QDQ u8) bundle shared by the runtime tests (read-only: copy before tampering)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", int8=True)


def results_csv(out: Path) -> list[dict[str, str]]:
    """The rows of ``out/results.csv`` as written by ``uopsl-screen`` (UTF-8 with a BOM, for Excel)."""
    import csv

    with open(out / "results.csv", encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def results_jsonl(out: Path) -> list[dict]:
    """Every row of ``out/results.jsonl``, in the order written."""
    import json

    return [json.loads(line) for line in (out / "results.jsonl").read_text("utf-8").splitlines() if line.strip()]


def good_photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` gradable fundus-like JPEGs ``img0000.jpg``... in ``folder`` (30 distinct images, cycled)."""
    return [fundus_jpeg(folder / f"img{i:04d}.jpg", seed=i % 30) for i in range(start, start + n)]


def screen_run_in_progress(bundle: Path, photos: Path, out: Path, rows: int = 6, **popen: object):  # type: ignore[no-untyped-def]
    """``uopsl-screen run`` started in a subprocess (slowed: batch 2, one worker, one thread), returned once
    ``rows`` results are written, so a test can stop it halfway (kill, SIGINT, SIGTERM); the caller waits on it.

    Returns (the process, the command's arguments after ``uopsl-screen``, to rerun it with ``main()`` here).
    """
    import os
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "uopsl.runtime.cli", "run", str(bundle), str(photos), "--out", str(out),
           "--backend", "ort-cpu", "--batch", "2", "--workers", "1", "--threads", "1", "--overlays"]
    proc = subprocess.Popen(cmd, env={**os.environ, "UOPSL_AUTO_MEASURE": "0"}, **popen)  # type: ignore[call-overload]
    jsonl = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= rows:
            break
        time.sleep(0.01)
    return proc, cmd[3:]


def fail_after_first_batch(backend: object, message: str) -> None:
    """Make ``backend.infer`` answer its first call and raise ``BackendError(message)`` on every later one (a GPU
    that goes into a sticky error state)."""
    from uopsl.runtime.errors import BackendError

    real, calls = backend.infer, [0]  # type: ignore[attr-defined]

    def sticky(x: np.ndarray) -> dict[str, np.ndarray]:
        calls[0] += 1
        if calls[0] == 1:
            return real(x)  # type: ignore[no-any-return]
        raise BackendError(message)

    backend.infer = sticky  # type: ignore[attr-defined]


class TinyStubBackend(Backend):
    """A backend taking the tiny bundle's 64 px uint8 input without a model: subclasses give ``_infer``
    (a constant answer, a failure) so a pipeline test does not depend on what a model scores."""

    name = "stub"

    def load(self) -> None: ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("image", (None, 64, 64, 3), np.dtype(np.uint8)),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return ()
