"""How many early layers must stay float for INT8 to keep the FP32 decisions? (issue 4, exploration)

Reproduce (after ``benchmarks/parity_matrix.py`` has written its Lite0 bundle, tables and
calibration set under --matrix):

    python benchmarks/exp_int8_float_layers.py --matrix /tmp/runs/matrix/efficientnet_lite0 \
        --synthetic /tmp/runs/synthetic --tvhl ../shared/data/tvhl --methods minmax,percentile \
        --groups raw,none,stem+b0+b1,stem..b2

For each calibration method and group of encoder layers kept in float (on top of the
quantizer's defaults: float head, bias correction on the matrix's 64-image calibration set;
group "raw": every layer quantized, no bias correction; group "adaround": the defaults plus
AdaRound on 32 of the calibration images, ``--rounding adaround``; group "gptq": the defaults plus
error-feedback rounding on 32 of them, ``--rounding gptq``; group "dw": the 16 depthwise
convolutions float (nearest rounding, as the other float groups); "gptq+dw": that with GPTQ
rounding of the layers left INT8; group "qat": the defaults applied to
the model of ``--qat CHECKPOINT``, a ``uopsl qat`` fine-tune of the matrix's checkpoint, exported to
its own bundle and calibrated on the same 64 images),
the INT8 CPU file is written and compared with the FP32 ONNX file on ONNX Runtime, on the first
200 synthetic test photographs and 200 TVHL photographs drawn with seed 0 (the matrix's sets):
top-1 agreement, referral decisions flipped at the manifest's thresholds, logits SQNR, and the
top-1 disagreements where FP32 already called both classes present (a multi-label head's
"top class" among co-present diseases is not a clinical decision). Also the CPU speed of the
file (OpenVINO, batch 8, 2 threads) so the cost of each float group is visible.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from uopsl.calibration.dataset import CalibrationSet
from uopsl.calibration.table import CalibrationTable
from uopsl.export.quantize import LAYER_OPS, QuantizeConfig, quantize_model
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.preprocess import preprocess_file
from parity_matrix import synthetic_records, tvhl_records  # benchmarks/ is on sys.path when run as a script

# "raw": every layer quantized, no bias correction (the quantizer before its session-2 defaults).
# "adaround" / "gptq": every encoder layer quantized, the defaults plus that weight rounding.
GROUPS = {
    "raw": (),
    "none": (),
    "adaround": (),
    "gptq": (),
    "qat": (),
    "stem": ("conv_stem",),
    "stem+b0+b1": ("conv_stem", "blocks.0/", "blocks.1/"),
    "stem..b2": ("conv_stem", "blocks.0/", "blocks.1/", "blocks.2/"),
    # Every depthwise convolution float: few multiply-adds, the widest per-channel weight ranges.
    "dw": ("conv_dw",),
    "gptq+dw": ("conv_dw",),
}


def images(paths: list[Path], cfg) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([preprocess_file(p, cfg).image for p in paths])


def run(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with OrtBackend(path, "cpu", 2) as b:
        outs = [b.infer(x[i:i + 16]) for i in range(0, len(x), 16)]
    return np.concatenate([o["probs"] for o in outs]), np.concatenate([o["logits"] for o in outs])


def speed(path: Path, x: np.ndarray, precision: str = "int8-qdq-u8", iters: int = 20) -> float:
    """Images per second, OpenVINO CPU, batch 8, 2 threads (median of ``iters`` timed calls)."""
    from uopsl.runtime.backends.openvino import OpenVinoBackend

    with OpenVinoBackend(path, "CPU", 2, precision=precision) as b:
        for _ in range(3):
            b.infer(x[:8])
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            b.infer(x[:8])
            times.append(time.perf_counter() - t)
    return 8 / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=Path, default=Path("/tmp/runs/matrix/efficientnet_lite0"))
    ap.add_argument("--synthetic", type=Path, default=Path("/tmp/runs/synthetic"))
    ap.add_argument("--tvhl", type=Path, default=Path("../shared/data/tvhl"))
    ap.add_argument("--methods", default="minmax,percentile")
    ap.add_argument("--groups", default="none,stem+b0+b1,stem..b2")
    ap.add_argument("--out", type=Path, default=None, help="JSON of every row")
    ap.add_argument("--qat", type=Path, default=None,
                    help="a `uopsl qat` checkpoint of the matrix's model (needed by the group 'qat')")
    args = ap.parse_args()
    bundle = args.matrix / "bundle"
    m = read_manifest(bundle)
    th = m.thresholds
    # The parity matrix's own image sets (its first 200 synthetic test photographs, 200 TVHL drawn with seed 0).
    syn, _ = synthetic_records(args.synthetic / "data" / "test", 200)
    sets = {"synthetic": images([r.path for r in syn], m.preprocess),
            "tvhl": images([r.path for r in tvhl_records(args.tvhl, 200, 0)], m.preprocess)}
    ref = {k: run(bundle / "model.onnx", x) for k, x in sets.items()}
    cal = CalibrationSet.from_images(np.load(args.matrix / "calib64_seed0.npz")["images"], m.preprocess)
    import onnx

    layers = [n.name for n in onnx.load(str(bundle / "model.onnx")).graph.node if n.op_type in LAYER_OPS]
    qat_tables: dict[str, CalibrationTable] = {}
    if "qat" in args.groups.split(","):
        if args.qat is None:
            raise SystemExit("group 'qat' needs --qat CHECKPOINT")
        from parity_matrix import calibration_tables, export_bundle

        qat_bundle = args.matrix / "qat" / "bundle"
        export_bundle(args.qat, qat_bundle)
        qat_tables, _ = calibration_tables(qat_bundle / "model.onnx", cal, qat_bundle.parent)
        # The QAT model in FP32 against the original FP32 model: how far the fine-tune moved it.
        for name, x in sets.items():
            (p0, l0), (p1, l1) = ref[name], run(qat_bundle / "model.onnx", x)
            print(json.dumps({"qat_fp32_vs_original": name, "top1": float((l0.argmax(1) == l1.argmax(1)).mean()),
                              "referral_flips": int((m.decide(p0)[1] != m.decide(p1)[1]).sum()),
                              "logits_sqnr_db": float(10 * np.log10((l0 ** 2).mean() / ((l0 - l1) ** 2).mean()))}),
                  flush=True)
    rows = []
    for method in args.methods.split(","):
        table = CalibrationTable.load(args.matrix / f"calibration.{method}.json")
        for group in args.groups.split(","):
            keep = tuple(n for n in layers if n.startswith("/trunk/") and any(k in n for k in GROUPS[group]))
            out = args.matrix / f"explore.{method}.{group}.onnx"
            source, group_table = bundle / "model.onnx", table
            if group == "qat":
                source, group_table = args.matrix / "qat" / "bundle" / "model.onnx", qat_tables[method]
                config = QuantizeConfig(rounding="nearest")
            elif group == "raw":
                config = QuantizeConfig(float_head=False, bias_correction=False, rounding="nearest")
            elif group in ("adaround", "gptq"):
                config = QuantizeConfig(rounding=group)
            elif group == "gptq+dw":  # today's defaults (GPTQ) with the depthwise layers float
                config = QuantizeConfig(exclude=keep, rounding="gptq")
            else:  # the figures in docs/results.md were measured with nearest rounding: keep them reproducible
                config = QuantizeConfig(exclude=keep, rounding="nearest")
            started = time.perf_counter()
            quantize_model(source, group_table, out, config, calib_set=cal, show_progress=False)
            row = {"method": method, "float_group": group, "float_layers": len(keep),
                   "quantize_s": round(time.perf_counter() - started, 1)}
            for name, x in sets.items():
                (p0, l0), (p1, l1) = ref[name], run(out, x)
                a, b = l0.argmax(1), l1.argmax(1)
                both = sum(1 for i in np.where(a != b)[0] if p0[i, a[i]] >= th[a[i]] and p0[i, b[i]] >= th[b[i]])
                r0, r1 = m.decide(p0)[1], m.decide(p1)[1]
                row[name] = {"top1": float((a == b).mean()), "top1_swaps_between_present_classes": both,
                             "referral_flips": int((r0 != r1).sum()), "images": len(x),
                             "logits_sqnr_db": float(10 * np.log10((l0 ** 2).mean() / ((l0 - l1) ** 2).mean()))}
            row["openvino_images_per_s_b8"] = round(speed(out, sets["synthetic"]), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"openvino_fp32_images_per_s_b8": round(speed(bundle / "model.onnx", sets["synthetic"], "fp32"), 1)}))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
