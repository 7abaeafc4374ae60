"""Where does an EfficientNet-Lite0 UOPSL model lose its INT8 accuracy? (issue 4, diagnosis)

Runs the checkpoint in PyTorch with simulated INT8 (:class:`uopsl.train.qat.SimulatedInt8`:
BatchNorm folded as the export folds it, per-channel s8 weights, u8 activation grids from
minmax ranges on calibration photographs; no bias correction) and reports the logits SQNR
against the FP32 model on test photographs, split three ways:

* ``split``: weights only, convolution inputs only, block outputs (BatchNorm outputs and residual
  sums) only, and combinations;
* ``layers``: the weights of ONE layer rounded at a time (the rest float), with nearest
  rounding and with the toolkit's error-feedback rounding
  (:func:`uopsl.export.gptq.round_with_feedback`, ``H`` from that layer's float input on the
  calibration photographs); the worst ``--top`` layers and the noise of all layers summed;
* ``activations``: ONE activation grid at a time (weights float); the worst ``--top``.

Reproduce (docs/results.md, section 4; seconds to minutes per checkpoint on 2 cores):

    python benchmarks/diag_int8_error.py runs/s3_n3000/uopsl/finetune runs/s4_e2e/uopsl_ft \\
        --train runs/s3_n3000/data/train --test runs/s3_n3000/data/test --what split,layers,activations
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uopsl.export.gptq import conv_hessians, round_with_feedback
from uopsl.runtime.preprocess import preprocess_file
from uopsl.train import qat
from uopsl.train.checkpoint import load_model

_nearest = qat.fake_quant_weight  # per-channel s8, nearest rounding (kept before any patching)


def photographs(folder: Path, n: int, pre: Any) -> torch.Tensor:
    """The first ``n`` fundus photographs of a synthetic pool, preprocessed, as (N, 3, S, S) float 0..255."""
    paths = sorted((folder / "fundus").glob("*"))[:n]
    if not paths:
        raise SystemExit(f"no photographs under {folder / 'fundus'}")
    return torch.from_numpy(np.stack([preprocess_file(p, pre).image for p in paths])).permute(0, 3, 1, 2).float()


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).mean() / ((ref - x) ** 2).mean()))


@contextmanager
def weights_by(choose: Callable[[int, torch.Tensor], torch.Tensor], layers: int) -> Iterator[None]:
    """Inside: the simulation rounds the weight of layer k (of ``layers``, in graph order) as ``choose(k, w)``.

    Every forward pass (calibration passes included) calls the rounding once per layer, in order.
    """
    original = qat.fake_quant_weight
    calls = {"n": 0}

    def patched(w: torch.Tensor) -> torch.Tensor:
        k = calls["n"] % layers
        calls["n"] += 1
        return choose(k, w)

    qat.fake_quant_weight = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        qat.fake_quant_weight = original  # type: ignore[assignment]


def simulate(model: Any, cal: torch.Tensor, x: torch.Tensor, *, inputs: bool, outputs: bool) -> np.ndarray:
    """Logits with simulated INT8; ``inputs``/``outputs`` switch the convolution-input and block-output grids."""
    with torch.no_grad(), qat.SimulatedInt8(model) as sim:
        sim.calibrate(cal)
        if not inputs:
            for layer in sim.layers:
                layer.input_range.grid = None
                layer.input_range.observe = lambda t: None  # type: ignore[method-assign]
        if not outputs:
            for after in sim.outputs:
                after.output_range = None
            for block in sim.block_outputs:
                block.output_range = None
        return model(x)["logits"].numpy()


def layer_hessian(model: Any, cal: torch.Tensor, conv: torch.nn.Conv2d, std: torch.Tensor | None) -> torch.Tensor:
    """:func:`conv_hessians` of ``conv``'s float input on ``cal`` (the stem's: ``x - mean``, as deployed)."""
    got: dict[str, torch.Tensor] = {}
    hook = conv.register_forward_pre_hook(lambda m, inp: got.setdefault("x", inp[0].detach()))
    with torch.no_grad():
        model(cal)
    hook.remove()
    x = got["x"] if std is None else got["x"] * std.view(1, -1, 1, 1)
    h, _ = conv_hessians(x, conv.kernel_size, conv.stride, conv.dilation, conv.groups, conv.padding)
    return h


def run_layers(model: Any, cal: torch.Tensor, x: torch.Tensor, ref: np.ndarray, top: int) -> dict[str, Any]:
    pairs = qat._conv_bn_pairs(model.fundus.encoder.trunk)
    std = model.fundus.encoder.std.detach().reshape(-1)
    rows = []
    for k, (name, conv, bn) in enumerate(pairs):
        w, _ = qat._SimConv(conv, bn, None).folded()  # the folded weight, as the simulation rounds it
        w = w.detach() / (std.view(1, -1, 1, 1) if k == 0 else 1.0)
        groups = conv.groups
        wg = w.reshape(groups, w.shape[0] // groups, -1).double()
        scale = wg.abs().amax(dim=2).clamp_min(1e-12) / qat.QMAX_WEIGHT
        fed = round_with_feedback(wg, scale, layer_hessian(model, cal, conv, std if k == 0 else None), qat.QMAX_WEIGHT)
        # (For the stem the simulation rounds w / std and feeds x - mean, as the deployed graph does.)
        fed_w = (fed * scale.unsqueeze(-1)).reshape(w.shape).float()
        row: dict[str, Any] = {"layer": name}
        for tag, pick in (("nearest", _nearest), ("feedback", lambda w_, fed_w=fed_w: fed_w)):
            with weights_by(lambda j, w_, k=k, pick=pick: pick(w_) if j == k else w_, len(pairs)):
                row[tag] = round(sqnr_db(ref, simulate(model, cal, x, inputs=False, outputs=False)), 1)
        rows.append(row)
    total = {tag: round(-10 * np.log10(sum(10 ** (-r[tag] / 10) for r in rows)), 1) for tag in ("nearest", "feedback")}
    rows.sort(key=lambda r: r["nearest"])
    return {"worst_layers": rows[:top], "all_layers_noise_summed_db": total,
            "median_single_layer_db": {t: float(np.median([r[t] for r in rows])) for t in ("nearest", "feedback")}}


def run_activations(model: Any, cal: torch.Tensor, x: torch.Tensor, ref: np.ndarray, top: int) -> dict[str, Any]:
    """One convolution-input grid at a time (in the ONNX model each tensor has one grid, which is both a
    block's output and the next convolution's input), weights float."""
    names = [name for name, _, _ in qat._conv_bn_pairs(model.fundus.encoder.trunk)]
    rows = []
    with weights_by(lambda j, w: w, len(names)):
        for index, name in enumerate(names):
            with torch.no_grad(), qat.SimulatedInt8(model) as sim:
                sim.calibrate(cal)
                for j, layer in enumerate(sim.layers):
                    if j != index:
                        layer.input_range.grid = None
                        layer.input_range.observe = lambda t: None  # type: ignore[method-assign]
                for after in sim.outputs:
                    after.output_range = None
                for block in sim.block_outputs:
                    block.output_range = None
                grid = sim.layers[index].input_range
                out = model(x)["logits"].numpy()
            rows.append({"input_of": name, "sqnr_db": round(sqnr_db(ref, out), 1),
                         "range": [round(grid.lo, 2), round(grid.hi, 2)]})
        every = round(sqnr_db(ref, simulate(model, cal, x, inputs=True, outputs=True)), 1)
    rows.sort(key=lambda r: r["sqnr_db"])
    return {"all_activation_grids_db": every, "worst_single_grids": rows[:top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--train", type=Path, required=True, help="synthetic pool whose photographs calibrate the grids")
    ap.add_argument("--test", type=Path, required=True, help="synthetic pool of the photographs scored")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--test-images", type=int, default=32)
    ap.add_argument("--what", default="split,layers,activations")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for ck in args.checkpoints:
        model, meta = load_model(ck)
        model.eval()
        cal = photographs(args.train, args.calib_images, meta.preprocess)
        x = photographs(args.test, args.test_images, meta.preprocess)
        with torch.no_grad():
            ref = model(x)["logits"].numpy()
        result: dict[str, Any] = {"checkpoint": str(ck)}
        whats = [w.strip() for w in args.what.split(",") if w.strip()]
        layers = len(qat._conv_bn_pairs(model.fundus.encoder.trunk))
        if "split" in whats:
            split = {}
            for name, w_on, i_on, o_on in (("weights", True, False, False), ("conv inputs", False, True, False),
                                           ("block outputs", False, False, True), ("activations", False, True, True),
                                           ("weights + activations", True, True, True)):
                with weights_by(lambda j, w, w_on=w_on: _nearest(w) if w_on else w, layers):
                    split[name] = round(sqnr_db(ref, simulate(model, cal, x, inputs=i_on, outputs=o_on)), 1)
            result["split_db"] = split
        if "layers" in whats:
            result["layers"] = run_layers(model, cal, x, ref, args.top)
        if "activations" in whats:
            result["activations"] = run_activations(model, cal, x, ref, args.top)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
