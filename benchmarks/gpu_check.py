"""One prepared GPU check: parity tests, backend benchmarks and a parity validation, all figures in ONE JSON.

Run through ``benchmarks/gpu_check.sh`` (which bounds the wall time). Installs
nothing. Each step is guarded (own subprocess where it could crash, own time
budget) and the JSON is rewritten after every step, so a step that fails or a
run that is killed still leaves every figure measured so far.

Steps:

1. environment: date, GPU name / driver / memory (``nvidia-smi``), CUDA as
   PyTorch sees it, versions of torch, onnxruntime (+ providers), TensorRT,
   OpenVINO, the uopsl commit;
2. demo bundle (unless ``--bundle``/``--checkpoint`` are given): a random-weight
   UOPSL model (EfficientNet-Lite0 at 320 px on a GPU machine; ResNet-18 at
   96 px in the quick CPU profile) saved as a checkpoint and exported as the
   deployed graph (DeployModel -> ONNX -> bundle), its operating thresholds at
   the median of its own probabilities on the demo images; INT8 QDQ variants
   (CPU u8 and TensorRT s8) from a calibration on the demo images; TensorRT
   FP16 and INT8 engines where TensorRT is present;
3. the suite's GPU tests (``pytest -m "gpu or trt" tests/parity tests/test_gpu_training.py``: parity on
   CUDA and TensorRT, training with AMP on CUDA, torchrun with nccl where there are two GPUs);
4. ``uopsl-screen bench`` on every backend available (one subprocess each);
5. ``uopsl validate`` of the bundle against its checkpoint on every backend,
   with the layer-wise INT8 diagnosis.

Without a GPU it still runs (the "quick" profile: small model, short timings)
and records that no GPU was found; the GPU tests then report their skips.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = "uopsl-gpu-check/1"
PACKAGES = {"runtime": "runtime", "calibration": "calibration", "export": "export", "train": "train"}


# -- recording -------------------------------------------------------------------------------------
class Recorder:
    """The one JSON: rewritten atomically after every step."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.data: dict[str, Any] = {"format": FORMAT, "started": _now(), "finished": None, "steps": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def step(self, name: str, fn: Callable[[], Any], *, min_seconds: float = 5.0) -> Any:
        """Run ``fn`` guarded; record status, seconds, result or error; never raises."""
        entry: dict[str, Any] = {"name": name, "status": "running", "seconds": 0.0}
        self.data["steps"].append(entry)
        if self.left() < min_seconds:
            entry.update(status="skipped", reason=f"time budget spent ({self.left():.0f} s left)")
            self.save()
            return None
        self.save()
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a failing step must not stop the check
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=6)[-3000:])
            result = None
        else:
            entry["status"] = "ok"
            if isinstance(result, dict) and result.get("status") in ("skipped", "failed"):
                entry["status"] = result["status"]
                entry["reason"] = result.get("reason", "")
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.save()
        return result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run(cmd: list[str], timeout: float, env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """A subprocess with a time limit; returns rc, seconds and the tails of its output."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), env=env,
                           cwd=str(cwd) if cwd else None)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        err = f"timed out after {timeout:.0f} s"
    except OSError as exc:
        rc, out, err = None, "", f"cannot start {cmd[0]}: {exc}"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - t0, 2),
            "stdout_tail": (out or "")[-2500:], "stderr_tail": (err or "")[-2500:]}


# -- environment ------------------------------------------------------------------------------------
def make_importable(repo: Path, work: Path) -> dict[str, str]:
    """Environment in which ``import uopsl`` works: as installed, or through a symlink shim (installs nothing)."""
    env = dict(os.environ)
    probe = subprocess.run([sys.executable, "-c", "import uopsl.runtime, uopsl.export"], capture_output=True,
                           env=env, cwd=str(work))
    if probe.returncode == 0:
        return env
    shim = work / "shim" / "uopsl"
    shim.mkdir(parents=True, exist_ok=True)
    for name, folder in PACKAGES.items():
        link = shim / name
        if not link.exists():
            link.symlink_to(repo / folder, target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), env.get("PYTHONPATH", "")]))
    return env


def environment(repo: Path, env: dict[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = {"date": _now(), "host": platform.node(), "python": platform.python_version(),
                            "platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "ld_library_path": env.get("LD_LIBRARY_PATH", "")}
    smi = shutil.which("nvidia-smi")
    info["gpu_found"] = False
    if smi:
        q = run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                 "--format=csv,noheader"], 30, env)
        if q["rc"] == 0 and q["stdout_tail"].strip():
            gpus = []
            for line in q["stdout_tail"].strip().splitlines():
                parts = [x.strip() for x in line.split(",")]
                gpus.append(dict(zip(("name", "driver", "memory", "compute_capability"), parts)))
            info.update(gpu_found=True, gpus=gpus, gpu_name=gpus[0]["name"], driver=gpus[0]["driver"])
        else:
            info["nvidia_smi"] = q["stderr_tail"] or q["stdout_tail"]
    else:
        info["nvidia_smi"] = "nvidia-smi not found"
    code = (
        "import json, importlib\n"
        "v = {}\n"
        "for m in ('torch', 'torchvision', 'onnxruntime', 'onnx', 'tensorrt', 'openvino', 'numpy', 'cv2', "
        "'cuda', 'pycuda'):\n"
        "    try:\n"
        "        mod = importlib.import_module(m); v[m] = getattr(mod, '__version__', 'present')\n"
        "    except Exception as e:\n"
        "        v[m] = None\n"
        "try:\n"
        "    import onnxruntime as ort; v['onnxruntime_providers'] = ort.get_available_providers()\n"
        "    v['onnxruntime_file'] = ort.__file__; v['onnxruntime_device'] = ort.get_device()\n"
        "except Exception: pass\n"
        "try:\n"
        "    import torch\n"
        "    v['torch_cuda'] = torch.version.cuda; v['torch_cuda_available'] = torch.cuda.is_available()\n"
        "    if torch.cuda.is_available(): v['torch_gpu'] = torch.cuda.get_device_name(0)\n"
        "except Exception: pass\n"
        "try:\n"
        "    from uopsl.runtime.version import __version__; v['uopsl'] = __version__\n"
        "except Exception as e: v['uopsl'] = f'not importable: {e}'\n"
        "print(json.dumps(v))\n"
    )
    r = run([sys.executable, "-c", code], 120, env)
    try:
        info["versions"] = json.loads(r["stdout_tail"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        info["versions"] = {"error": r["stderr_tail"]}
    if not info["gpu_found"] and info["versions"].get("torch_cuda_available"):
        info.update(gpu_found=True, gpu_name=info["versions"].get("torch_gpu"))
    g = run(["git", "-C", str(repo), "rev-parse", "HEAD"], 10, env)
    info["commit"] = g["stdout_tail"].strip() if g["rc"] == 0 else None
    d = run(["git", "-C", str(repo), "status", "--porcelain"], 10, env)
    info["working_tree_dirty"] = bool(d["stdout_tail"].strip()) if d["rc"] == 0 else None
    return info


# -- demo bundle (runs in a subprocess: torch, export, quantization) ----------------------------------------
DEMO_CODE = r'''
import json, sys, time
from pathlib import Path
import numpy as np
args = json.loads(sys.argv[1])
work = Path(args["work"]); out = {}
import torch
torch.manual_seed(0)
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.bundle import ClassSpec
from uopsl.train.model import ModelConfig, UopslModel, DeployModel
from uopsl.train.checkpoint import CheckpointMeta, save_model
from uopsl.export.onnx_export import export_onnx
from uopsl.export.bundle_writer import write_bundle, add_file
classes = ("normal", "dr", "dme")
size = args["size"]
t0 = time.time()
# demo images: the synthetic generator (labelled) when present, else synthetic photographs (unlabelled)
data = work / "data"
try:
    from uopsl.train.synthetic import SynthConfig, make_dataset
    make_dataset(data, args["images"], config=SynthConfig(size=512, classes=("dr", "dme"), seed=0), progress=False)
    paths = sorted((data / "fundus").glob("*"))
    out["data"] = f"synthetic generator, {len(paths)} fundus images (labels.csv)"
except Exception as exc:
    from uopsl.runtime.bench import synthetic_jpeg
    (data / "photos").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args["images"]):
        p = data / "photos" / f"s{i:03d}.jpg"; p.write_bytes(synthetic_jpeg(i, 512)); paths.append(p)
    out["data"] = f"synthetic photographs (unlabelled; generator unavailable: {exc})"
    data = data / "photos"
out["data_dir"] = str(data)
pre = PreprocessConfig(size=size)
x = np.stack([preprocess(read_bytes(p), pre).image for p in paths])
text = np.random.default_rng(0).standard_normal((len(classes), 384)).astype(np.float32)
cfg = ModelConfig(backbone=args["backbone"], init="random", classes=classes, dim=64, sites=2)
model = UopslModel(cfg, text).eval()
meta = CheckpointMeta(model=cfg, preprocess=pre, phrases=tuple((c,) for c in classes), data_fingerprint="gpu-check")
ckpt = work / "ckpt"; save_model(ckpt, model, meta)
deploy = DeployModel(model, size)
with torch.no_grad():
    probs = deploy(torch.from_numpy(x))[0].numpy()
th = [float(np.sort(probs[:, k])[len(x) // 2 - 1: len(x) // 2 + 1].mean()) for k in range(len(classes))]
export_onnx(deploy, work / "model.onnx", size)
bundle = work / "bundle"
write_bundle(bundle, work / "model.onnx", [ClassSpec(c, (c,), t, c != "normal") for c, t in zip(classes, th)],
             "sigmoid", pre, class_bank=text, site_map_size=(deploy.h, deploy.w), opset=17,
             backbone=args["backbone"], notes={"gpu_check": "random weights, demo only"})
out.update(checkpoint=str(ckpt), bundle=str(bundle), backbone=args["backbone"], size=size,
           thresholds=th, export_seconds=round(time.time() - t0, 1))
print("RESULT " + json.dumps(out), flush=True)
# INT8 variants: calibration on the demo images, then each variant; a failure is recorded, not fatal
from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.ranges import calibrate
from uopsl.export.quantize import QuantizeConfig, quantize_model
int8 = {}
try:
    cset = CalibrationSet.from_images(x, pre)
    table = calibrate(bundle / "model.onnx", cset, method="entropy", show_progress=False)
    table.save(bundle / "calibration.json")
    add_file(bundle, None, "calibration.json", "calibration")
    for variant, name in (("cpu", "model.int8.onnx"), ("trt", "model.int8.trt.onnx")):
        t1 = time.time()
        try:
            try:
                res = quantize_model(bundle / "model.onnx", table, bundle / name, QuantizeConfig(variant),
                                     calib_set=cset, show_progress=False)
                note = "default exclusions"
            except Exception as exc:
                # known: the deployed graph's Mul by a Constant node has no range; keep Mul in float and say so
                res = quantize_model(bundle / "model.onnx", table, bundle / name,
                                     QuantizeConfig(variant, exclude=("Mul",)), calib_set=cset, show_progress=False)
                note = f"default failed ({type(exc).__name__}: {str(exc)[:200]}); retried with --exclude Mul"
            add_file(bundle, None, name, "onnx", res.precision, info=res.manifest_info())
            int8[name] = {"precision": res.precision, "note": note, "seconds": round(time.time() - t1, 1)}
        except Exception as exc:
            int8[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
except Exception as exc:
    int8["calibration"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
out["int8"] = int8
print("RESULT " + json.dumps(out), flush=True)
# TensorRT engines where TensorRT is present
engines = {}
try:
    import tensorrt  # noqa: F401
    from uopsl.export.tensorrt import EngineBuildConfig, build_engine
    for precision, src in (("fp16", "model.onnx"), ("int8", "model.int8.trt.onnx")):
        if not (bundle / src).is_file():
            engines[precision] = {"error": f"{src} missing"}; continue
        t1 = time.time()
        try:
            mode = "qdq" if precision == "int8" else "auto"
            info = build_engine(bundle / src, bundle / f"model.{precision}.engine",
                                EngineBuildConfig(precision=precision, int8_mode=mode, min_batch=1, opt_batch=8,
                                                  max_batch=16))
            add_file(bundle, None, f"model.{precision}.engine", "engine", precision, info=info.header.to_dict())
            engines[precision] = {"seconds": round(time.time() - t1, 1), "tensorrt": info.header.tensorrt_version}
        except Exception as exc:
            engines[precision] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
except ImportError as exc:
    engines["status"] = f"TensorRT not importable: {exc}"
out["engines"] = engines
print("RESULT " + json.dumps(out), flush=True)
'''


def last_result(stdout: str) -> dict[str, Any] | None:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else None


def demo_bundle(rec: Recorder, env: dict[str, str], work: Path, profile: dict[str, Any]) -> dict[str, Any]:
    args = {"work": str(work), "size": profile["size"], "backbone": profile["backbone"], "images": profile["images"]}
    r = run([sys.executable, "-c", DEMO_CODE, json.dumps(args)], min(profile["demo_timeout"], rec.left() - 60), env)
    result = last_result(r["stdout_tail"]) or {}
    result["process"] = {k: r[k] for k in ("rc", "seconds", "stderr_tail")}
    if "bundle" not in result:
        result.update(status="failed", reason=f"demo bundle not built (rc {r['rc']}): {r['stderr_tail'][-800:]}")
    return result


# -- parity tests ------------------------------------------------------------------------------------
def parity_tests(rec: Recorder, env: dict[str, str], repo: Path, work: Path, budget: float) -> dict[str, Any]:
    junit = work / "parity_gpu_junit.xml"
    r = run([sys.executable, "-m", "pytest", "tests/parity", "tests/test_gpu_training.py", "-m", "gpu or trt", "-q",
             "-rs", "-p", "no:cacheprovider",
             f"--junitxml={junit}"], min(budget, rec.left() - 30), env, cwd=repo)
    summary: dict[str, Any] = {"rc": r["rc"], "seconds": r["seconds"], "output_tail": r["stdout_tail"][-1500:]}
    if junit.is_file():
        root = ET.parse(junit).getroot()
        cases = []
        for tc in root.iter("testcase"):
            outcome, detail = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = tc.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    detail = (el.get("message") or "")[:400]
            cases.append({"test": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome,
                          "seconds": float(tc.get("time") or 0), "detail": detail})
        summary["cases"] = cases
        summary["counts"] = {k: sum(1 for c in cases if c["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
    if r["rc"] not in (0, 5) and not summary.get("cases"):
        summary.update(status="failed", reason=r["stderr_tail"][-500:] or "pytest did not run")
    return summary


# -- bench -------------------------------------------------------------------------------------------
def usable_backends(env: dict[str, str], with_ort_trt: bool) -> list[str]:
    code = ("import json; from uopsl.runtime.backends import detect_availability as d; a = d(); "
            "print(json.dumps({'ort-cpu': 'CPUExecutionProvider' in a.ort_providers, 'ort-cuda': a.ort_cuda, "
            "'ort-trt': a.ort_trt, 'openvino': a.openvino, 'tensorrt': a.tensorrt}))")
    r = run([sys.executable, "-c", code], 60, env)
    try:
        usable = json.loads(r["stdout_tail"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return ["ort-cpu"]
    return [b for b, ok in usable.items() if ok and (b != "ort-trt" or with_ort_trt)]


def bench(rec: Recorder, env: dict[str, str], bundle: Path, backends: list[str], work: Path,
          profile: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for b in backends:
        if rec.left() < 45:
            results[b] = {"status": "skipped", "reason": "time budget spent"}
            continue
        out = work / f"bench_{b}.json"
        cmd = [sys.executable, "-c", "import sys; from uopsl.runtime.cli import main; raise SystemExit(main())",
               "bench", str(bundle), "--backend", b, "--precision", "all", "--batch", profile["batches"],
               "--iters", str(profile["iters"]), "--warmup", str(profile["warmup"]), "--json", str(out)]
        cmd += ["--e2e-images", str(profile["e2e_images"])] if profile["e2e"] else ["--no-e2e"]
        r = run(cmd, min(profile["bench_timeout"], rec.left() - 30), env)
        entry: dict[str, Any] = {"rc": r["rc"], "seconds": r["seconds"]}
        if out.is_file():
            data = json.loads(out.read_text(encoding="utf-8"))
            entry.update(cases=data.get("cases"), e2e=data.get("e2e"), preprocess=data.get("preprocess"),
                         auto=data.get("auto"), machine=data.get("machine"))
        else:
            entry["error"] = (r["stderr_tail"] or r["stdout_tail"])[-800:]
        results[b] = entry
        rec.data["bench"] = results
        rec.save()
    return results


# -- validate ----------------------------------------------------------------------------------------------
VALIDATE_CODE = (
    "import sys, click\n"
    "from uopsl.runtime.clikit import main_entry\n"
    "from uopsl.train.commands.validate import command\n"
    "group = click.Group('uopsl', commands={'validate': command})\n"
    "raise SystemExit(main_entry(group, sys.argv[1:], prog_name='uopsl'))\n"
)


def validate(rec: Recorder, env: dict[str, str], bundle: Path, ckpt: Path, data: str, backends: list[str],
             work: Path, budget: float, per_layer_images: int) -> dict[str, Any]:
    out = work / "validate"
    r = run([sys.executable, "-c", VALIDATE_CODE, "validate", str(bundle), "--checkpoint", str(ckpt),
             "--data", data, "--out", str(out), "--backends", ",".join(backends), "--per-layer",
             "--per-layer-images", str(per_layer_images), "--n-boot", "500", "--no-resume"],
            min(budget, rec.left() - 15), env)
    summary: dict[str, Any] = {"rc": r["rc"], "seconds": r["seconds"], "stdout_tail": r["stdout_tail"][-2000:]}
    report_file = out / "parity.json"
    if not report_file.is_file():
        summary.update(status="failed", reason=(r["stderr_tail"] or r["stdout_tail"])[-800:])
        return summary
    report = json.loads(report_file.read_text(encoding="utf-8"))
    summary.update(passed=report["passed"], data=report["data"], skipped_candidates=report["skipped_candidates"],
                   gates=report["gates"], command=report["context"].get("command"))
    cands = []
    for c in report["candidates"]:
        row: dict[str, Any] = {"name": c["name"], "precision": c["precision"], "passed": c["passed"],
                               "reasons": c.get("reasons"), "error": c.get("error")}
        if "numerical" in c:
            row.update({k: c["numerical"][k] for k in ("max_abs_prob_diff", "p99_abs_prob_diff", "logit_cosine_min",
                                                       "site_map_corr_mean")})
            row["flips"] = c["clinical"]["flips"]["n"]
            row["flip_rate"] = c["clinical"]["flips"]["rate"]
            row["top1_agreement"] = c["clinical"]["top1_agreement"]
            row["checks"] = {k["name"]: k["value"] for k in c["checks"]}
        cands.append(row)
    summary["candidates"] = cands
    summary["per_layer"] = {f: {"suggested_command": d.get("suggested_command"), "error": d.get("error"),
                                "outputs": d.get("outputs"), "worst": (d.get("layers") or [])[:5]}
                            for f, d in report.get("per_layer", {}).items()}
    return summary


# -- main -------------------------------------------------------------------------------------------------------
PROFILES = {
    # e2e (decode-to-decision throughput at the largest batch, once per precision) screens 2,000
    # photographs per precision: a few seconds on a GPU machine's many cores (session 23, both with
    # threads: 110/s over 200, 306/s over 2,000: fixed costs weigh in a short run); too long in the quick one.
    "full": {"backbone": "efficientnet_lite0", "size": 320, "images": 48, "batches": "1,8,16", "iters": 30,
             "warmup": 5, "e2e": True, "e2e_images": 2000, "demo_timeout": 200, "bench_timeout": 100,
             "per_layer_images": 4},
    "quick": {"backbone": "resnet18", "size": 96, "images": 24, "batches": "1,8", "iters": 5, "warmup": 1,
              "e2e": False, "e2e_images": 200, "demo_timeout": 180, "bench_timeout": 60, "per_layer_images": 4},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--out", type=Path, default=None, help="JSON to write [default: $OUT/gpu_check.json or ./gpu_check.json]")
    ap.add_argument("--bundle", type=Path, default=None, help="Use this bundle instead of building the demo one.")
    ap.add_argument("--checkpoint", type=Path, default=None, help="Its checkpoint (for uopsl validate).")
    ap.add_argument("--data", default=None, help="--data for uopsl validate [default: the demo images].")
    ap.add_argument("--profile", choices=("auto", "full", "quick"), default="auto",
                    help="full on a GPU machine, quick (small model, short timings) without one.")
    ap.add_argument("--budget", type=float, default=450.0, help="Seconds for the whole check.")
    ap.add_argument("--with-ort-trt", action="store_true",
                    help="Also bench ONNX Runtime's TensorRT provider (builds engines at session start: slow).")
    ap.add_argument("--work", type=Path, default=None, help="Work folder [default: a temporary one, removed].")
    args = ap.parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json"))
    rec = Recorder(out.resolve(), time.monotonic() + args.budget)
    repo = args.repo.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="uopsl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        env = make_importable(repo, work)
        env.setdefault("UOPSL_CACHE_DIR", str(work / "cache"))
        env["PYTHONUNBUFFERED"] = "1"
        info = rec.step("environment", lambda: environment(repo, env)) or {}
        rec.data["environment"] = info
        gpu = bool(info.get("gpu_found"))
        rec.data["gpu_found"] = gpu
        if not gpu:
            rec.data["note"] = ("no NVIDIA GPU found: CPU fallback (quick profile); GPU tests skip, GPU backends "
                                "are not benchmarked")
        name = args.profile if args.profile != "auto" else ("full" if gpu else "quick")
        profile: dict[str, Any] = PROFILES[name]
        rec.data["profile"] = {"name": name, **profile}
        rec.save()
        bundle, ckpt, data = args.bundle, args.checkpoint, args.data
        if bundle is None:
            demo = rec.step("demo_bundle", lambda: demo_bundle(rec, env, work, profile), min_seconds=60) or {}
            rec.data["demo"] = demo
            if "bundle" in demo:
                bundle, ckpt = Path(demo["bundle"]), Path(demo["checkpoint"])
                data = data or demo.get("data_dir")
        rec.data["parity_tests"] = rec.step(
            "parity_gpu_tests", lambda: parity_tests(rec, env, repo, work, 150 if gpu else 90), min_seconds=30)
        backends = usable_backends(env, args.with_ort_trt)
        rec.data["backends_available"] = backends
        if bundle is not None:
            rec.step("bench", lambda: bench(rec, env, bundle, backends, work, profile), min_seconds=45)
            if ckpt is not None and data:
                rec.data["validate"] = rec.step(
                    "validate", lambda: validate(rec, env, bundle, ckpt, data, backends, work, 150,
                                                 profile["per_layer_images"]), min_seconds=30)
            else:
                rec.data["validate"] = {"status": "skipped", "reason": "no checkpoint/data for uopsl validate"}
        else:
            rec.data["bench"] = {"status": "skipped", "reason": "no bundle (demo build failed)"}
    finally:
        rec.data["finished"] = _now()
        rec.data["ok"] = all(s["status"] in ("ok", "skipped") for s in rec.data["steps"])
        rec.save()
        if args.work is None:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    print(f"gpu_check: {'ok' if rec.data['ok'] else 'some steps failed'}; figures in {rec.path}")
    return 0 if rec.data["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
