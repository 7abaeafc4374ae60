"""Where each token of a backbone looks: the span of input rows that reach one token, and its centre.

    python benchmarks/receptive_fields.py

For each registered stride-32 backbone family (torchvision ResNet-18 and MobileNetV3-Large, timm
EfficientNet-Lite0; random weights: the span depends on the architecture, not on the weights), token
``j`` of a 1024 px input (32 x 32 tokens) is back-propagated to the input; the rows with a non-zero
gradient are its receptive field. Its centre is what ``uopsl.runtime.preprocess.Geometry.to_original``
assumes: model pixel ``32 * j``, not the middle of the cell ``[32 j, 32 j + 32)``.
"""

from __future__ import annotations

import argparse

import torch
import torchvision


def backbones() -> dict[str, torch.nn.Module]:
    import timm

    return {
        "resnet18": torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]),
        "efficientnet_lite0": timm.create_model("efficientnet_lite0", num_classes=0, global_pool=""),
        "mobilenet_v3_large": torchvision.models.mobilenet_v3_large().features,
    }


def span(model: torch.nn.Module, size: int, token: int, seed: int = 0) -> tuple[int, int, int]:
    """(first row, last row, grid side) of the input rows that reach token (``token``, ``token``)."""
    torch.manual_seed(seed)
    model.eval()
    x = torch.rand(1, 3, size, size, requires_grad=True)
    y = model(x)
    y[0, :, token, token].sum().backward()
    rows = (x.grad[0].abs().sum(dim=(0, 2)) > 0).nonzero().flatten()
    return int(rows.min()), int(rows.max()), int(y.shape[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--token", type=int, default=16)
    args = ap.parse_args()
    print("| backbone | grid | rows reaching the token | centre | 32 j | cell centre 32 j + 15.5 |")
    print("|---|---|---|---|---|---|")
    for name, model in backbones().items():
        lo, hi, grid = span(model, args.size, args.token)
        stride = args.size // grid
        print(f"| {name} | {grid} x {grid} | {lo}-{hi} | {(lo + hi) / 2:g} | {stride * args.token} | "
              f"{stride * args.token + (stride - 1) / 2:g} |")


if __name__ == "__main__":
    main()
