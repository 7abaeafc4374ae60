"""The QAT simulation's grids are the deployed file's (session 46): FP32 ranges, int32 biases, rounded residual sums.

Each of the three was missing before and together they moved the simulation from 23 to 30 dB of what ONNX
Runtime computes from the quantized file (tests/test_qat.py checks that end to end; docs/results.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from test_qat import SIZE, as_input, lite0_model
from tinymodel import random_fundus_batch
from uopsl.train import qat


def test_calibration_measures_the_ranges_of_the_fp32_model_as_the_deployed_table_does() -> None:
    """The table that quantizes the file is measured on the FP32 file; rounded weights moved ranges up to 1.7 %."""
    model, _ = lite0_model(init="imagenet")
    calib = as_input(random_fundus_batch(8, SIZE, seed=1))
    convs = [m for m in model.fundus.encoder.trunk.modules() if isinstance(m, nn.Conv2d)]
    seen: list[tuple[float, float]] = []
    hooks = [c.register_forward_pre_hook(lambda m, inp: seen.append((float(inp[0].min()), float(inp[0].max()))))
             for c in convs]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    with torch.no_grad(), qat.SimulatedInt8(model) as sim:
        sim.calibrate(calib)
    # The stem's range is pinned to what the input type allows (tests/test_qat.py); every other one is measured.
    assert len(seen) == len(sim.layers)
    for i, (layer, (lo, hi)) in enumerate(zip(sim.layers[1:], seen[1:]), start=1):
        np.testing.assert_allclose([layer.input_range.lo, layer.input_range.hi], [lo, hi], rtol=1e-5, atol=1e-5,
                                   err_msg=f"input of convolution {i}")


def test_a_bias_is_rounded_to_the_int32_grid_of_input_scale_times_weight_scale() -> None:
    """ONNX Runtime's quantizer stores each bias as int32 on that grid; the simulation used the float bias."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1) * torch.ones(4, 3, 1, 1))
        conv.bias.copy_(torch.tensor([0.3, -0.7, 1.3, 2.9]))
    sim = qat._SimConv(conv, None, None)
    sim.input_range.pin(-100.0, 155.0)  # input scale 1.0, zero point 100: an input of 0 is exactly on the grid
    out = sim.forward(torch.zeros(1, 3, 2, 2))[0, :, 0, 0]
    grid = torch.tensor([0.5, 1.0, 2.0, 4.0]) / 127  # 1.0 x each channel's max|w| / 127
    expected = torch.round(conv.bias.detach() / grid) * grid
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, conv.bias.detach(), atol=1e-3)  # the grid is coarse enough to tell
    b = torch.tensor([0.3, -0.7], requires_grad=True)
    qat.fake_quant_bias(b, torch.tensor([0.25, 0.25])).sum().backward()
    assert torch.equal(b.grad, torch.ones(2))  # straight through, like the weights


def test_each_residual_sum_is_rounded_once_on_its_own_uint8_grid() -> None:
    """The quantizer puts a Q/DQ pair on every residual Add: the next block and its shortcut read the rounded sum."""
    model, _ = lite0_model(init="imagenet")
    calib = as_input(random_fundus_batch(8, SIZE, seed=1))
    residual = [m for m in model.fundus.encoder.trunk.modules() if getattr(m, "has_skip", False) is True]
    assert len(residual) == 9  # EfficientNet-Lite0: 16 blocks, 9 of them add their input back
    sums: list[torch.Tensor] = []
    with torch.no_grad(), qat.SimulatedInt8(model) as sim:
        assert [b.block for b in sim.block_outputs] == residual
        sim.calibrate(calib)
        hooks = [m.register_forward_hook(lambda m, i, o: sums.append(o)) for m in residual]
        model(calib)
        for h in hooks:
            h.remove()
    for k, (blk, out) in enumerate(zip(sim.block_outputs, sums)):
        assert blk.output_range is not None and blk.output_range.grid is not None
        scale, zero = blk.output_range.grid
        steps = out / scale + zero
        assert float((steps - steps.round()).abs().max()) < 1e-3, f"residual sum {k} is not on its grid"
    # Leaving the context restores every block's own forward.
    assert all("forward" not in vars(m) for m in residual)
