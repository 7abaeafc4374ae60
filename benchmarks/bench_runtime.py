"""Runtime benchmark: every backend and precision side by side on a ResNet-18 (or EfficientNet-Lite0) bundle.

What it measures (issue 5, "Done when"):

* batch-1 latency p50/p90/p99 and batch-8 throughput for ORT FP32, ORT INT8
  (QDQ u8), OpenVINO FP32 and OpenVINO INT8, in one process, one after another;
* which backend ``auto`` picks and its batch-1 latency against ORT FP32 (goal <= 0.6x);
* end-to-end throughput (read + decode + preprocess + quality gate + batched
  inference + decision) on real TVHL JPEGs at batch 8 against pure inference
  throughput at batch 8 (goal >= 80 %);
* INT8 vs FP32 agreement on the real photographs (max |dp|, decision agreement);
* resident memory while screening N synthetic photographs with ORT CPU FP32
  (``--memory-images``; goal: flat within 50 MB, <= 400 MB).

The bundle is a torchvision ResNet-18 (random weights, seed 0: speed does not
depend on the weights) wrapped to the deployed-model contract (uint8 NHWC in;
probs, logits, site_maps out; normalisation inside the graph); the INT8 file is
made with ``uopsl.export.quantize`` (CPU variant: u8 activations, s8
per-channel weights) from a minmax table calibrated on 32 preprocessed TVHL
photographs.

Usage::

    python benchmarks/bench_runtime.py --size 224 --out benchmarks/results/runtime_224.json
    python benchmarks/bench_runtime.py --size 224 --memory-images 5000 --skip-latency
    python benchmarks/bench_runtime.py --arch efficientnet_lite0 --size 320
    python benchmarks/bench_runtime.py --size 224 --worker-pool processes

Torch and onnx are used only to build the bundle; the timed code is the runtime's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TVHL = REPO.parent / "shared" / "data" / "tvhl"
CLASSES = (("normal", False), ("npdr", True), ("dme", True))

log = logging.getLogger("bench_runtime")


# -- bundle -----------------------------------------------------------------------------------
def build_bundle(root: Path, size: int, calib_images: list[Path], arch: str = "resnet18") -> Path:
    """Write a contract bundle (FP32 + INT8 QDQ u8) of ``arch`` at ``root``; reuse it if present.

    arch: ``resnet18`` (torchvision) or ``efficientnet_lite0`` (timm); random weights, seed 0.
    """
    from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest, describe_file, read_manifest, write_manifest
    from uopsl.runtime.preprocess import PreprocessConfig, preprocess_file

    if (root / "manifest.json").exists():
        m = read_manifest(root)
        if m.preprocess.size == size:
            return root
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)

    class Contract(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if arch == "resnet18":
                net = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
                self.body: nn.Module = nn.Sequential(*list(net.children())[:-2])
                self.fc = net.fc
            elif arch == "efficientnet_lite0":
                import timm

                net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=len(CLASSES))
                self.body = nn.Sequential(net.conv_stem, net.bn1, net.blocks, net.conv_head, net.bn2)
                self.fc = net.classifier
            else:
                raise SystemExit(f"unknown --arch {arch}")
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = (image.float().permute(0, 3, 1, 2) - self.mean) / self.std
            f = self.body(x)  # N, 512, h, w
            logits = self.fc(f.mean(dim=(2, 3)))
            cam = nn.functional.conv2d(f, self.fc.weight[:, :, None, None])  # N, K, h, w
            n, k, h, w = cam.shape
            maps = torch.softmax(cam.flatten(2), dim=2).reshape(n, k, h, w)
            return torch.sigmoid(logits), logits, maps

    model = Contract().eval()
    root.mkdir(parents=True, exist_ok=True)
    fp32 = root / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, size, size, 3, dtype=torch.uint8),), str(fp32), input_names=["image"],
                      output_names=["probs", "logits", "site_maps"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in ("image", "probs", "logits", "site_maps")})
    cfg = PreprocessConfig(size=size)
    calib = np.stack([preprocess_file(p, cfg).image for p in calib_images])
    _quantize(fp32, root / "model.int8.onnx", calib)
    thresholds = _thresholds(fp32, calib)
    hw = size // 32
    files = (FileEntry("model.onnx", "onnx", "fp32"), FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8"))
    m = Manifest(
        classes=tuple(ClassSpec(n, (n,), t, r) for (n, r), t in zip(CLASSES, thresholds)), head="sigmoid",
        preprocess=cfg,
        files=tuple(describe_file(root, f) for f in files), site_map_size=(hw, hw), model_name=f"{arch}-demo",
        backbone=f"{arch} (random weights, seed 0)", notes={"purpose": "runtime benchmark only"},
    )
    write_manifest(root, m)
    return root


def _thresholds(fp32: Path, calib: np.ndarray, quantile: float = 70.0) -> list[float]:
    """Per class, the ``quantile``-th percentile of the FP32 model's probabilities on the calibration photographs.

    A random-weight model's probabilities sit on one side of 0.5 for a whole class, so with 0.5
    thresholds every photograph gets the same call and the parity gates (sensitivity, AUC, flips)
    have nothing to measure (``uopsl validate`` says INCOMPLETE). At the 70th percentile about 30 %
    of photographs are called positive for each class, and the gates judge the INT8 file's calls.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    probs = np.concatenate([sess.run(["probs"], {"image": calib[i:i + 8]})[0] for i in range(0, len(calib), 8)])
    return [float(np.percentile(probs[:, k], quantile)) for k in range(probs.shape[1])]


def _quantize(fp32: Path, out: Path, calib: np.ndarray) -> None:
    """INT8 QDQ (CPU variant: u8 activations, s8 per-channel weights) with the toolkit's own quantizer."""
    from uopsl.calibration.dataset import CalibrationSet
    from uopsl.calibration.ranges import collect_statistics
    from uopsl.export.quantize import QuantizeConfig, quantize_model
    from uopsl.runtime.preprocess import PreprocessConfig

    cset = CalibrationSet.from_images(calib, PreprocessConfig(size=calib.shape[1]))
    table = collect_statistics(fp32, cset, show_progress=False).table("minmax")
    quantize_model(fp32, table, out, QuantizeConfig(variant="cpu"), calib_set=cset, show_progress=False)


# -- measurements ----------------------------------------------------------------------------
def agreement(bundle: Path, images: list[Path], out: Path, n: int = 200) -> dict[str, Any]:
    """``uopsl validate`` of every file on ORT CPU and OpenVINO against ORT FP32, on ``n`` real photographs.

    The reference is the bundle's own FP32 ONNX on ONNX Runtime (this benchmark model has random
    weights and no checkpoint); its decisions are the truth (the photographs have no labels in the
    model's class space). Gates: :class:`~uopsl.export.parity_metrics.ParityGates`' strict defaults
    (referral flips <= 0.5 %, per-class AUC drop <= 0.005, sensitivity drop <= 0.01, top-1 >= 99 %).
    The verdicts are recorded in the bundle, so ``auto`` may take a passing INT8 file.
    """
    from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
    from uopsl.runtime.backends import open_backend

    records = [ImageRecord(p.name, p, None) for p in images[:n]]
    with open_backend(bundle, "ort-cpu", "fp32", measure=False) as fp32:
        report = validate_bundle(bundle, fp32, records, out,
                                 ValidateConfig(backends=("ort-cpu", "openvino"), n_boot=200, show_progress=False,
                                                resume=False)).report
    res: dict[str, Any] = {}
    for c in report["candidates"]:
        if c.get("error"):
            res[c["name"]] = {"error": c["error"]}
            continue
        res[c["name"]] = {
            "max_abs_dprob": round(float(c["numerical"]["max_abs_prob_diff"]), 5),
            "top1_agreement": round(float(c["clinical"]["top1_agreement"]), 4),
            "referral_flips": int(c["clinical"]["flips"]["n"]), "images": report["data"]["n_used"],
            "gates_passed": c["passed"], "failed": c["reasons"],
        }
    return res


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MB (``VmHWM``: its peak)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_run(bundle: Path, n_images: int, workdir: Path, batch: int = 8, keep_heap: bool = True) -> dict[str, Any]:
    """Screen ``n_images`` synthetic photographs with ORT CPU FP32, sampling RSS; run in a fresh process.

    ``keep_heap``: with the heap setting `uopsl-screen` makes (runtime/heap.py); False: glibc's default, what
    an application using the Screener gets unless it asks."""
    from uopsl.runtime.bench import synthetic_jpeg

    folder = workdir / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    for i in range(have, n_images):
        (folder / f"syn{i:05d}.jpg").write_bytes(synthetic_jpeg(i))
    code = f"""
import json, sys, time
sys.path.insert(0, {str(REPO / 'benchmarks')!r})
from bench_runtime import rss_mb
from uopsl.runtime.api import Screener
from uopsl.runtime.heap import keep_freed_heap
if {keep_heap!r}:
    keep_freed_heap()
samples = []
t0 = time.perf_counter()
def on_result(r, n=[0]):
    n[0] += 1
    if n[0] % 250 == 0:
        samples.append((n[0], round(rss_mb(), 1)))
start = rss_mb()
with Screener({str(bundle)!r}, "ort-cpu", precision="fp32", batch_size={batch}) as s:
    loaded = rss_mb()
    summary = s.screen_to({str(workdir / 'out')!r}, [{str(folder)!r}], overlays=False, report=False,
                          on_result=on_result, finalize=False)
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child started
# by a parent that had PyTorch loaded (building the bundle) reported the parent's 2 GB as its peak.
print(json.dumps({{"rss_start_mb": round(start, 1), "rss_after_load_mb": round(loaded, 1), "samples": samples,
                  "peak_rss_mb": round(rss_mb("VmHWM"), 1),
                  "seconds": round(time.perf_counter() - t0, 1), "counts": summary.counts}}))
"""
    out = workdir / "out"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    steady = [mb for n, mb in res["samples"] if n >= 500]
    res["steady_growth_mb"] = round(max(steady) - min(steady), 1) if steady else None
    res["images"] = n_images
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", choices=("resnet18", "efficientnet_lite0"), default="resnet18")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "uopsl_bench")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--e2e-images", type=int, default=400)
    ap.add_argument("--memory-images", type=int, default=0, help="also run the resident-memory test on this many")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--worker-pool", choices=("auto", "threads", "processes"), default="threads",
                    help="the end-to-end run's preprocessing workers (uopsl-screen's --worker-pool)")
    ap.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="benchmark this bundle (e.g. a trained model's) instead of building the random-weight one; "
                         "its parity records come from `uopsl validate` against its checkpoint, run beforehand")
    ap.add_argument("--glibc-heap", action="store_true",
                    help="leave glibc's heap setting alone (uopsl-screen keeps freed heap pages: runtime/heap.py)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.glibc_heap:  # measure what `uopsl-screen bench` runs with
        from uopsl.runtime.heap import keep_freed_heap

        keep_freed_heap()

    fundus = sorted((TVHL / "fundus").glob("*.jpg"))
    if not fundus:
        print(f"no TVHL photographs under {TVHL}; they are needed for calibration and end-to-end timing",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    calib = [fundus[i] for i in rng.choice(len(fundus), 32, replace=False)]
    if args.bundle is not None:
        bundle = args.bundle
    else:
        bundle = build_bundle(args.work / f"{args.arch}_{args.size}", args.size, calib, args.arch)
    result: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "bundle": str(bundle),
                              "heap": "glibc default" if args.glibc_heap else "freed pages kept (M_TOP_PAD)"}

    if not args.skip_latency:
        from uopsl.runtime.backends import select_backend
        from uopsl.runtime.bench import BenchConfig, format_table, run_bench

        os.environ["UOPSL_CACHE_DIR"] = str(args.work / "cache")  # auto measures afresh for this bundle
        cfg = BenchConfig(batches=(1, 8), iters=args.iters, warmup=args.warmup, threads=args.threads,
                          e2e=True, e2e_images=args.e2e_images, worker_pool=args.worker_pool)
        t0 = time.time()
        # Parity first: `auto` takes the INT8 file only once it passed validation. A given bundle
        # keeps the records `uopsl validate` wrote against its own checkpoint.
        bench_agreement = agreement(bundle, fundus, args.work / "parity") if args.bundle is None else \
            {"note": "parity records from `uopsl validate` against the bundle's checkpoint (see its manifest)"}
        bench = run_bench(bundle, "ort-cpu,openvino", "fp32,int8", cfg, images=TVHL / "fundus")
        sel = select_backend(bundle, "auto", "auto", threads=args.threads)
        b1 = {(c["backend"], c["precision"]): c for c in bench["cases"] if c["batch"] == 1}
        auto_lat = b1[(sel.backend, sel.precision)]["p50_ms"]
        ort_lat = b1[("ort-cpu", "fp32")]["p50_ms"]
        bench["auto_vs_ort_fp32"] = {"backend": sel.backend, "precision": sel.precision, "reason": sel.reason,
                                     "auto_p50_ms": auto_lat, "ort_fp32_p50_ms": ort_lat,
                                     "ratio": round(auto_lat / ort_lat, 3)}
        bench["agreement_vs_ort_fp32"] = bench_agreement
        bench["wall_s"] = round(time.time() - t0, 1)
        print(format_table(bench))
        print(json.dumps({k: bench[k] for k in ("auto_vs_ort_fp32", "agreement_vs_ort_fp32")}, indent=2))
        result["bench"] = bench
    if args.memory_images:
        mem = memory_run(bundle, args.memory_images, args.work, keep_heap=not args.glibc_heap)
        print(json.dumps({"memory": mem}, indent=2))
        result["memory"] = mem
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
