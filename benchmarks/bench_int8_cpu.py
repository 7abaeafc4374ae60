"""INT8 (ORT CPU, QDQ u8) vs FP32 on real TVHL fundus images, per calibration method.

Usage: python benchmarks/bench_int8_cpu.py [--backbone resnet18|efficientnet_lite0] [--n 100] [--size 320] [--out DIR]

Calibration set: --n images drawn (seed 0) from patients with an even id;
evaluation set: --n images drawn (seed 0) from patients with an odd id
(patient-disjoint). One statistics pass yields the three tables.
Latency: ORT CPU EP, 1 intra-op thread, batch 1, median of 30 runs after 5 warm-ups.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from uopsl.calibration.dataset import build_calibration_set
from uopsl.calibration.ranges import collect_statistics
from uopsl.export.quantize import QuantizeConfig, quantize_model
from uopsl.runtime.preprocess import PreprocessConfig

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"


class ContractScreen(nn.Module):
    """uint8 NHWC in; probs (softmax), logits, site_maps (per-class CAM softmax) out."""

    def __init__(self, trunk: nn.Module, channels: int, k: int, mean, std) -> None:
        super().__init__()
        self.trunk, self.fc = trunk, nn.Linear(channels, k)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def forward(self, image):
        f = self.trunk((image.float().permute(0, 3, 1, 2) - self.mean) / self.std)
        logits = self.fc(f.mean((2, 3)))
        cam = torch.einsum("nchw,kc->nkhw", f, self.fc.weight)
        n, k, h, w = cam.shape
        return torch.softmax(logits, 1), logits, torch.softmax(cam.reshape(n, k, h * w), -1).reshape(n, k, h, w)


def build(backbone: str, k: int) -> nn.Module:
    torch.manual_seed(0)
    if backbone == "resnet18":
        import torchvision

        r = torchvision.models.resnet18(weights=None)
        trunk = nn.Sequential(*list(r.children())[:-2])
        return ContractScreen(trunk, 512, k, [0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255])
    from uopsl.train.backbones import Encoder

    enc = Encoder(backbone, init="imagenet")
    return ContractScreen(enc, enc.channels, k, [0.0] * 3, [1.0] * 3)


def export(model: nn.Module, path: Path, size: int) -> Path:
    torch.onnx.export(
        model, (torch.zeros(1, size, size, 3, dtype=torch.uint8),), str(path), input_names=["image"],
        output_names=["probs", "logits", "site_maps"], opset_version=17, dynamo=False,
        dynamic_axes={n: {0: "batch"} for n in ("image", "probs", "logits", "site_maps")},
    )
    return path


def split_lists(out: Path) -> tuple[Path, Path]:
    rows = list(csv.DictReader((TVHL / "fundus.csv").open()))
    paths = {}
    for parity, name in ((0, "calib"), (1, "eval")):
        p = out / f"{name}.csv"
        with p.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label"])
            for r in rows:
                if int(r["patient"]) % 2 == parity:
                    w.writerow([str(TVHL / r["path"]), r["label"]])
        paths[name] = p
    return paths["calib"], paths["eval"]


def latencies_ms(paths: list[str], image: np.ndarray, runs: int = 40) -> list[float]:
    """Median batch-1 latency of each model, timed round-robin so machine load hits all alike."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(p, o, providers=["CPUExecutionProvider"]) for p in paths]
    for s in sessions:
        for _ in range(5):
            s.run(None, {"image": image})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for s, t in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(None, {"image": image})
            t.append(time.perf_counter() - t0)
    return [round(1000 * float(np.median(t)), 1) for t in times]


def run_all(path: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = [s.run(["probs", "logits"], {"image": images[i : i + 8]}) for i in range(0, len(images), 8)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--auto-exclude", type=int, default=2)
    ap.add_argument("--auto-method", default="percentile")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cal/measure"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = PreprocessConfig(size=a.size)
    calib_csv, eval_csv = split_lists(a.out)
    t0 = time.time()
    cal = build_calibration_set(calib_csv, cfg, max_images=a.n, seed=0, cache=a.out / "calib.npz", show_progress=False)
    ev = build_calibration_set(eval_csv, cfg, max_images=a.n, seed=0, cache=a.out / "eval.npz", show_progress=False)
    print(f"sets: calib {len(cal)} ({len(cal.skipped)} skipped) {cal.class_balance()}; "
          f"eval {len(ev)} ({len(ev.skipped)} skipped) {ev.class_balance()}; {time.time() - t0:.1f}s")
    fp32 = str(export(build(a.backbone, 4), a.out / f"{a.backbone}.onnx", a.size))
    t0 = time.time()
    stats = collect_statistics(fp32, cal, batch_size=8, show_progress=False)
    print(f"statistics pass over {len(cal)} images: {time.time() - t0:.1f}s, {len(stats.histograms)} tensors")
    p0, l0 = run_all(fp32, ev.images)
    print(f"fp32 logits spread over eval images: std per class {np.round(l0.std(0), 4).tolist()}, "
          f"max prob {p0.max():.3f}")
    rows = [{"model": "fp32", "path": fp32}]
    for method in ("minmax", "entropy", "percentile"):
        table = stats.table(method)
        for auto in sorted({0, a.auto_exclude}):
            if auto and method != a.auto_method:
                continue
            out = str(a.out / f"{a.backbone}.{method}.ae{auto}.int8.onnx")
            t0 = time.time()
            r = quantize_model(fp32, table, out, QuantizeConfig(variant="cpu", auto_exclude=auto, sensitivity_images=16),
                               calib_set=cal, show_progress=False)
            tq = time.time() - t0
            p1, l1 = run_all(out, ev.images)
            rows.append({
                "model": f"int8 cpu {method}" + (f" auto-exclude {auto}" if auto else ""),
                "path": out,
                "max_abs_prob_diff": round(float(np.abs(p1 - p0).max()), 5),
                "mean_abs_prob_diff": round(float(np.abs(p1 - p0).mean()), 5),
                "top1_agreement": float((p1.argmax(1) == p0.argmax(1)).mean()),
                "quantize_s": round(tq, 1),
                "auto_excluded": list(r.auto_excluded),
            })
    for row, ms in zip(rows, latencies_ms([r["path"] for r in rows], ev.images[:1])):
        row["latency_ms_b1"] = ms
        del row["path"]
    for row in rows:
        print(json.dumps(row))
    print(f"machine: {platform.processor() or platform.machine()}, python {sys.version.split()[0]}, "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
