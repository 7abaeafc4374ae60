"""Build tiny deployment bundles for runtime tests (torch is fine here; the runtime never imports it).

``make_tiny_bundle`` writes the contract model from :mod:`tinymodel`, an
optional INT8 QDQ variant (ONNX Runtime's static quantizer, u8 activations) and
a manifest written with :mod:`uopsl.runtime.bundle`, with real checksums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinymodel import export_tiny_onnx, random_fundus_batch
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
        preprocess=PreprocessConfig(size=size),
        files=tuple(describe_file(root, f) for f in files),
        site_map_size=(size // 8, size // 8),
        model_name="tiny",
        backbone="tiny-cnn",
    )
    write_manifest(root, manifest)
    return root


def fundus_jpeg(path: str | Path, size: int = 96, seed: int = 0, brightness: int = 0) -> Path:
    """A synthetic fundus-like JPEG (bright disc on black) at ``path``."""
    import cv2

    img = random_fundus_batch(1, size, seed=seed)[0].astype(np.int16) + brightness
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path
