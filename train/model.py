"""The UOPSL model: image encoders, text prototypes, the predilection-sites matrix, the prototype head.

Notation follows DESIGN.md section 1. For each class ``k`` with raw text
prototype ``t_k`` (frozen sentence embedding), the model learns

* a projection ``e_k = norm(W_t t_k)`` into the shared space of dimension ``d``;
* site queries ``P_k = G(t_k) + delta_k`` (``S`` per class; ``delta_k`` only for
  classes seen in training, so an unseen class gets queries from text alone);
* site attention over image tokens ``T``:
  ``A_ks = softmax_tokens(s * cos(q(P_ks), k(T)))`` with a learnable temperature
  ``s`` (``attention="cosine"``, the default) or the original
  ``softmax_tokens(q(P_ks) . k(T) / sqrt(d))`` (``attention="dot"``, what
  checkpoints written before the choice existed use); ``z_k = mean_s A_ks v(T)``;
  the class's predilection map is ``mean_s A_ks``; with ``fov_token_mask`` (the
  default for new models) the softmax runs over the tokens inside the field of
  view only (:func:`fov_token_mask`), so a token of the black corners of the
  square fundus input gets zero weight exactly;
* logits ``tau * cos(a g + (1 - a) z_k, e_k) + b_k`` with ``a = sigmoid(alpha)``.

Variants (the ablations): ``uopsl`` (OCT pre-training trains ``P``),
``p_only`` (same architecture, no OCT: ``P`` learns from fundus alone) and
``fundus_only`` (no ``P``: ``tau * cos(g, e_k) + b_k``, the plain contrastive
baseline). The variant is data, not a code path of its own: ``fundus_only``
fixes ``a = 1``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uopsl.runtime.errors import ConfigError
from uopsl.train.backbones import Encoder, spec

Variant = Literal["uopsl", "p_only", "fundus_only"]
Head = Literal["sigmoid", "softmax"]
Attention = Literal["cosine", "dot"]
TokenProjection = Literal["global", "separate"]
TokenCentres = Literal["token", "cell"]
# What a checkpoint whose config predates the ``attention`` field used.
LEGACY_ATTENTION: Attention = "dot"
# What a checkpoint whose config predates ``fov_token_mask`` used: attention over every token.
LEGACY_FOV_TOKEN_MASK = False
# Checkpoints written before ModelConfig.tokens existed project tokens with a separate 1x1 convolution.
LEGACY_TOKENS: TokenProjection = "separate"
# Checkpoints written before ModelConfig.token_centres existed judged each token by its grid cell (the default).
LEGACY_TOKEN_CENTRES: TokenCentres = "cell"
# Supersampling of one token cell (per axis) when measuring how much of it lies inside the FOV.
FOV_SUPERSAMPLE = 16


# The class whose prototype the stage-2 site guide measures lesion evidence against.
HEALTHY_CLASS = "normal"


def fov_token_mask(h: int, w: int, fov_margin: float = 0.0, supersample: int = FOV_SUPERSAMPLE,
                   centres: TokenCentres = "cell") -> np.ndarray:
    """(h, w) bool: the tokens whose window (one stride square) lies half inside the FOV circle (grid cells: at
    least half; windows where the tokens look: more than half).

    The model input is the square crop of ``uopsl.runtime.preprocess``: the FOV
    circle is centred and its radius is ``size / 2 / (1 + fov_margin)`` pixels,
    so in units of the input side the circle has centre 0.5 and radius
    ``0.5 / (1 + fov_margin)`` whatever the size. ``centres="token"``: token j's
    window is centred where it looks, on model pixel ``s * j`` (stride ``s``;
    every registered backbone pads its stride-2 layers symmetrically, see
    ``benchmarks/receptive_fields.py``); the half pixel to that pixel's centre
    is below the sampling here and left out. The grid alone does not give the
    input size, so the stride is taken as ``size / w``: exact for inputs that
    are a multiple of 32 px (every default), up to half a window off at the far
    edge otherwise. ``"cell"``: the grid cell
    ``[s * j, s * (j + 1))``, half a token further down and right (what every
    model is trained with by default; ``ModelConfig.token_centres``). A window's
    inside fraction is measured on ``supersample`` x ``supersample`` points at
    the centres of equal sub-windows; a token window counts when more than
    half is inside. A window centred on the input's edge at the circle's top
    (or left) point has its outer half outside the input and 49 % inside: the
    samples put it at exactly one half, and the strict test leaves it out
    (``"cell"`` keeps its ``>=``, as trained).
    """
    if h < 1 or w < 1 or supersample < 1:
        raise ConfigError(f"need h, w, supersample >= 1, got {h}, {w}, {supersample}")
    if centres not in ("token", "cell"):
        raise ConfigError(f"token centres must be 'token' or 'cell', got {centres!r}")
    radius = 0.5 / (1.0 + fov_margin)
    sub = (np.arange(supersample) + 0.5) / supersample - (0.5 if centres == "token" else 0.0)
    ys = ((np.arange(h)[:, None] + sub[None, :]) / h - 0.5)  # (h, ss) sample y per window
    xs = ((np.arange(w)[:, None] + sub[None, :]) / w - 0.5)  # (w, ss)
    inside = ys[:, None, :, None] ** 2 + xs[None, :, None, :] ** 2 <= radius**2  # (h, w, ss, ss)
    frac = inside.mean(axis=(2, 3))
    mask = frac > 0.5 if centres == "token" else frac >= 0.5
    if not mask.any():
        # An empty mask would turn every attention logit into -inf (NaN maps and losses).
        raise ConfigError(
            f"no token of the {h}x{w} grid lies half inside the FOV circle (fov_margin {fov_margin}); "
            "use a larger model input (--size; 256 px or more), a smaller fov_margin, or fov_token_mask=False"
        )
    return mask


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a UOPSL model; saved in every checkpoint."""

    backbone: str = "efficientnet_lite0"
    oct_backbone: str = ""  # "" = same as backbone
    init: str = "imagenet"  # imagenet | random | path to a weights file
    dim: int = 256
    sites: int = 4
    text_dim: int = 384
    head: Head = "sigmoid"
    variant: Variant = "uopsl"
    alpha_init: float = 0.0  # sigmoid(0) = 0.5: global and site features weigh the same
    tau_init: float = 10.0
    # Site attention: "cosine" bounds every attention logit by the temperature (soft maps,
    # gradients through the attention, an INT8-friendly Softmax input); "dot" is the unbounded
    # q.k/sqrt(d) form of DESIGN.md, kept so older checkpoints compute what they were trained as.
    attention: Attention = "cosine"
    attention_temp_init: float = 10.0
    attention_temp_max: float = 50.0
    # Site attention over the tokens inside the field of view only (fov_token_mask); fov_margin
    # is the preprocessing's (PreprocessConfig.fov_margin), copied when the model is created.
    fov_token_mask: bool = True
    fov_margin: float = 0.0
    # Which window judges a token for that mask: its grid cell, half a token off where it looks ("cell", what
    # every model has used), or the window centred where it looks ("token"). "token" is the geometrically right
    # one; on TVHL the two are indistinguishable over three training seeds (docs/results.md, session 18), so
    # "cell" stays the default: every trained checkpoint uses it.
    token_centres: TokenCentres = "cell"
    # How each branch's tokens enter the shared space: "global" projects every feature-map cell with the
    # branch's global projection (so the tokens' mean is g, which the text contrastive aligns, and the
    # fundus tokens share the OCT tokens' space from stage 1 on); "separate" gives them a 1x1 convolution
    # of their own, which in the full variant nothing trained on fundus tokens before stage 2.
    tokens: TokenProjection = "global"
    classes: tuple[str, ...] = ()
    seen: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        spec(self.backbone)
        if self.oct_backbone:
            spec(self.oct_backbone)
        if self.variant not in ("uopsl", "p_only", "fundus_only"):
            raise ConfigError(f"variant must be uopsl, p_only or fundus_only, got {self.variant!r}")
        if self.head not in ("sigmoid", "softmax"):
            raise ConfigError(f"head must be sigmoid or softmax, got {self.head!r}")
        if self.attention not in ("cosine", "dot"):
            raise ConfigError(f"attention must be cosine or dot, got {self.attention!r}")
        if not 0 < self.attention_temp_init <= self.attention_temp_max:
            raise ConfigError("need 0 < attention_temp_init <= attention_temp_max, got "
                              f"{self.attention_temp_init} and {self.attention_temp_max}")
        if self.tokens not in ("global", "separate"):
            raise ConfigError(f"tokens must be global or separate, got {self.tokens!r}")
        if self.token_centres not in ("token", "cell"):
            raise ConfigError(f"token centres must be 'token' or 'cell', got {self.token_centres!r}")
        if not 0 <= self.fov_margin <= 1:
            raise ConfigError(f"fov_margin must be in [0, 1] (as PreprocessConfig), got {self.fov_margin}")
        if self.dim < 8 or self.sites < 1:
            raise ConfigError(f"dim must be >= 8 and sites >= 1, got dim={self.dim}, sites={self.sites}")
        if self.seen and len(self.seen) != len(self.classes):
            raise ConfigError(f"seen has {len(self.seen)} entries for {len(self.classes)} classes")

    @property
    def uses_oct(self) -> bool:
        return self.variant == "uopsl"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def token_mask(self, h: int, w: int) -> np.ndarray | None:
        """(h, w) bool mask of the fundus tokens the site attention may weigh; None: all of them."""
        return fov_token_mask(h, w, self.fov_margin, centres=self.token_centres) if self.fov_token_mask else None

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ModelConfig:
        """Config from checkpoint JSON; keys a config predates take the value it was trained with.

        No ``attention``: ``"dot"``; no ``fov_token_mask``: attention over every token;
        no ``tokens``: a separate token projection; no ``token_centres``: the mask judged grid cells.
        """
        d = dict(d)
        d.setdefault("attention", LEGACY_ATTENTION)
        d.setdefault("fov_token_mask", LEGACY_FOV_TOKEN_MASK)
        d.setdefault("tokens", LEGACY_TOKENS)
        d.setdefault("token_centres", LEGACY_TOKEN_CENTRES)
        d["classes"] = tuple(d.get("classes", ()))  # type: ignore[arg-type]
        d["seen"] = tuple(d.get("seen", ()))  # type: ignore[arg-type]
        return cls(**d)  # type: ignore[arg-type]


class SiteAttention(nn.Module):
    """Class-wise site attention of ``S`` queries per class over image tokens.

    ``cosine``: logits ``s * cos(q(P), k(T))`` with a learnable temperature
    ``s`` capped at ``temp_max``, so ``|logit| <= s`` whatever the weights grow
    to. ``dot``: ``q(P) . k(T) / sqrt(d)``, unbounded (a trained model reached
    logits of ~7,000, i.e. a one-hot argmax over the tokens).
    """

    def __init__(self, dim: int, form: Attention = "dot", temp_init: float = 10.0, temp_max: float = 50.0) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.form = form
        self.scale = 1.0 / math.sqrt(dim)
        self.temp_max = temp_max
        if form == "cosine":  # no parameter for "dot": older state dicts load strictly
            self.log_temp = nn.Parameter(torch.tensor(math.log(temp_init)))

    @property
    def temperature(self) -> torch.Tensor:
        """Multiplier of the cosine logits (cosine form only)."""
        if self.form != "cosine":
            raise ConfigError("the dot-product site attention has no temperature")
        return self.log_temp.exp().clamp(max=self.temp_max)

    def cosine_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """(K, S, d) site queries -> (K*S, d): normalised projected queries times the temperature.

        Constant after training; DeployModel folds it into one matrix.
        """
        k, s, d = queries.shape
        return F.normalize(self.q(queries).reshape(k * s, d), dim=-1) * self.temperature

    def logits(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Attention logits before the softmax over tokens: (N, K*S, T)."""
        if self.form == "cosine":
            return torch.einsum("qd,ntd->nqt", self.cosine_queries(queries), F.normalize(self.k(tokens), dim=-1))
        k, s, d = queries.shape
        q = self.q(queries).reshape(k * s, d)
        return torch.einsum("qd,ntd->nqt", q, self.k(tokens)) * self.scale

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor,
                inside: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, T, d), queries (K, S, d) -> z (N, K, d), maps (N, K, T).

        ``inside`` (T,) bool: the softmax runs over these tokens only; the others
        get weight 0 exactly (exp(-inf)) and add nothing to ``z``.
        """
        maps = self.maps(tokens, queries, inside)
        z = torch.einsum("nkt,ntd->nkd", maps, self.v(tokens))  # mean over s commutes with the pooling
        return z, maps

    def maps(self, tokens: torch.Tensor, queries: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
        """The per-class maps (N, K, T) alone: the mean over each class's ``S`` query softmaxes."""
        k, s, _ = queries.shape
        logits = self.logits(tokens, queries)
        if inside is not None:
            logits = logits.masked_fill(~inside, float("-inf"))
        return logits.softmax(dim=-1).reshape(tokens.shape[0], k, s, -1).mean(dim=2)


class TiedTokens(nn.Module):
    """The tokens of ``ModelConfig.tokens = "global"``: the global projection applied to every cell.

    A 1x1 convolution whose weights are the ``nn.Linear``'s own (not a copy: one
    parameter trains both); the Linear is held outside the module tree, so the
    state dict lists it once, under the branch.
    """

    def __init__(self, glob: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "_glob", glob)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        glob = self.__dict__["_glob"]
        return F.conv2d(feat, glob.weight[:, :, None, None], glob.bias)


class Branch(nn.Module):
    """One image modality: encoder -> tokens (N, T, d) and a global vector (N, d)."""

    def __init__(self, backbone: str, init: str, dim: int, tokens: TokenProjection = "separate") -> None:
        super().__init__()
        self.encoder = Encoder(backbone, init)
        # In this order for "separate": its models initialise as they did before the choice existed.
        self.tokens: nn.Module = nn.Conv2d(self.encoder.channels, dim, 1) if tokens == "separate" else nn.Identity()
        self.glob = nn.Linear(self.encoder.channels, dim)
        if tokens == "global":
            self.tokens = TiedTokens(self.glob)

    def from_features(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        t = self.tokens(feat)
        n, d, h, w = t.shape
        return t.flatten(2).transpose(1, 2), self.glob(feat.mean(dim=(2, 3))), (h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        return self.from_features(self.encoder(x))

    def token_globals(self, feat: torch.Tensor) -> torch.Tensor:
        """The global projection applied to every cell of the feature map: (N, C, h, w) -> (N, h*w, d).

        The projection is linear, so the mean of these over all cells is the
        global vector itself: each is that cell's share of the image-level
        evidence (a class activation map in the shared space).
        """
        return self.glob(feat.flatten(2).transpose(1, 2))


class UopslModel(nn.Module):
    """Fundus classifier with a learned predilection-sites matrix (and an OCT branch for pre-training)."""

    # Buffers (register_buffer); declared so they type as tensors, not Module.__getattr__'s union.
    class_text: torch.Tensor
    seen: torch.Tensor

    def __init__(self, config: ModelConfig, class_text: np.ndarray) -> None:
        super().__init__()
        k = len(config.classes)
        if class_text.shape != (k, config.text_dim):
            raise ConfigError(
                f"class_text must be ({k}, {config.text_dim}) for classes {config.classes}, got {class_text.shape}"
            )
        self.config = config
        d, s = config.dim, config.sites
        self.fundus = Branch(config.backbone, config.init, d, config.tokens)
        self.oct = Branch(config.oct_backbone or config.backbone, config.init, d, config.tokens) if config.uses_oct else None
        self.text_proj = nn.Linear(config.text_dim, d)
        self.generator = nn.Sequential(nn.Linear(config.text_dim, d), nn.GELU(), nn.Linear(d, s * d))
        self.delta = nn.Parameter(torch.zeros(k, s, d))
        self.sites = SiteAttention(d, config.attention, config.attention_temp_init, config.attention_temp_max)
        self.alpha = nn.Parameter(torch.tensor(float(config.alpha_init)))
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.tau_init)))
        self.bias = nn.Parameter(torch.zeros(k))
        seen = config.seen or (True,) * k
        self.register_buffer("class_text", torch.from_numpy(np.ascontiguousarray(class_text, np.float32)))
        self.register_buffer("seen", torch.tensor(seen, dtype=torch.bool))

    # -- class bank --------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.class_text.shape[0])

    def prototypes(self) -> torch.Tensor:
        """(K, d) normalised class prototypes e_k."""
        return F.normalize(self.text_proj(self.class_text), dim=-1)

    def site_queries(self) -> torch.Tensor:
        """(K, S, d): G(t_k) + delta_k, delta only for seen classes."""
        k = self.num_classes
        base = self.generator(self.class_text).view(k, self.config.sites, self.config.dim)
        return base + self.delta * self.seen.view(k, 1, 1).to(self.delta.dtype)

    def with_classes(self, names: tuple[str, ...], class_text: np.ndarray, seen_names: tuple[str, ...], *,
                     to_train: bool = False) -> UopslModel:
        """A copy of this model scoring a new class bank (zero-shot / re-export), or to fine-tune on it.

        Classes already known keep their ``delta`` and bias; new ones get site
        queries from ``G`` alone and the mean bias of the known classes. A class
        counts as seen when it is in ``seen_names`` and this model knew it; with
        ``to_train`` (fine-tuning on images of every class of ``names``) every
        class is seen, so a new class's ``delta`` trains and its bundle entry is
        not marked zero-shot.
        """
        cfg = replace(self.config, classes=tuple(names),
                      seen=tuple(to_train or (n in seen_names and n in self.config.classes) for n in names))
        new = copy.deepcopy(self)
        new.config = cfg
        k = len(names)
        new.class_text = torch.from_numpy(np.ascontiguousarray(class_text, np.float32)).to(self.class_text.device)
        new.seen = torch.tensor(cfg.seen, dtype=torch.bool, device=self.seen.device)
        delta = torch.zeros(k, cfg.sites, cfg.dim, device=self.delta.device)
        bias = torch.full((k,), float(self.bias.detach().mean()), device=self.bias.device)
        for i, n in enumerate(names):
            if n in self.config.classes:
                j = self.config.classes.index(n)
                delta[i] = self.delta.detach()[j]
                bias[i] = self.bias.detach()[j]
        new.delta = nn.Parameter(delta)
        new.bias = nn.Parameter(bias)
        return new

    # -- scoring -----------------------------------------------------------
    def inside_tokens(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """(h*w,) bool: fundus tokens inside the FOV (``config.fov_token_mask``), or None (all tokens)."""
        mask = self.config.token_mask(h, w)
        return None if mask is None else torch.from_numpy(mask.reshape(-1)).to(device)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(max=100.0)

    def fuse_weight(self) -> torch.Tensor:
        if self.config.variant == "fundus_only":
            return torch.ones((), device=self.alpha.device)
        return torch.sigmoid(self.alpha)

    def fused_features(
        self, tokens: torch.Tensor, glob: torch.Tensor, use_sites: bool = True, inside: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-class fused features (N, K, d), site maps (N, K, T) and site-pooled features z (N, K, d).

        What each class's prototype is compared with: ``a * g + (1 - a) * z_k``
        with site attention, the global feature ``g`` without it. ``inside``
        (T,) bool: the tokens the maps may weigh (None: all); without site
        attention the maps are uniform over them and z is None.
        """
        n, t = tokens.shape[0], tokens.shape[1]
        if self.config.variant == "fundus_only" or not use_sites:
            fused = glob.unsqueeze(1).expand(n, self.num_classes, -1)
            if inside is None:
                maps = torch.full((n, self.num_classes, t), 1.0 / t, device=tokens.device, dtype=tokens.dtype)
            else:
                row = inside.to(tokens.dtype) / inside.sum().to(tokens.dtype)
                maps = row.expand(n, self.num_classes, t)
            return fused, maps, None
        z, maps = self.sites(tokens, self.site_queries(), inside)
        a = self.fuse_weight()
        return a * F.normalize(glob, dim=-1).unsqueeze(1) + (1 - a) * F.normalize(z, dim=-1), maps, z

    def score_tokens(
        self, tokens: torch.Tensor, glob: torch.Tensor, use_sites: bool = True, inside: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Class logits (N, K), site maps (N, K, T) and site-pooled class features z (N, K, d)
        (see :meth:`fused_features`): ``tau * cos(fused_k, e_k) + b_k``."""
        fused, maps, z = self.fused_features(tokens, glob, use_sites, inside)
        cos = (F.normalize(fused, dim=-1) * self.prototypes().unsqueeze(0)).sum(-1)
        return self.tau * cos + self.bias, maps, z

    def forward_features(self, feat: torch.Tensor, use_sites: bool = True,
                         token_globals: bool = False) -> dict[str, torch.Tensor]:
        """Score fundus backbone features (N, C, h, w) (used with cached, frozen-encoder features).

        With site attention the output also holds ``site_features``: the
        site-pooled class features z (N, K, d) that the stage-2 site loss scores.
        ``token_globals``: also return the per-cell global projections (N, T, d)
        that the stage-2 site guide reads (:meth:`Branch.token_globals`),
        computed without gradients.
        """
        tokens, glob, (h, w) = self.fundus.from_features(feat)
        logits, maps, z = self.score_tokens(tokens, glob, use_sites, self.inside_tokens(h, w, tokens.device))
        out = {"logits": logits, "site_maps": maps.reshape(maps.shape[0], maps.shape[1], h, w),
               "global": glob, "tokens": tokens}
        if z is not None:
            out["site_features"] = z
        if token_globals:
            with torch.no_grad():  # a training target (the site guide's), never a path for gradients
                out["token_globals"] = self.fundus.token_globals(feat)
        return out

    def forward(self, x: torch.Tensor, use_sites: bool = True, token_globals: bool = False) -> dict[str, torch.Tensor]:
        """Fundus forward: x (N, 3, H, W) float RGB in 0..255."""
        return self.forward_features(self.fundus.encoder(x), use_sites, token_globals)

    def reference_class(self) -> int | None:
        """Index of the healthy class that lesion evidence is measured against, or None.

        ``normal`` under any of its accepted spellings (``healthy``, ``no_disease``,
        any case; :data:`uopsl.train.descriptions.ALIASES`).
        """
        from uopsl.train.descriptions import ALIASES

        for i, name in enumerate(self.config.classes):
            key = name.strip().lower()
            if ALIASES.get(key, key) == HEALTHY_CLASS:
                return i
        return None

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.config.head == "sigmoid" else logits.softmax(dim=-1)

    def oct_forward(self, x: torch.Tensor, features: bool = False) -> dict[str, torch.Tensor]:
        """OCT branch for pre-training: global vector, site-pooled class features, maps.

        ``features``: ``x`` is already the OCT backbone's feature map. No FOV
        mask: the whole B-scan is in the input, letterboxed
        (:func:`uopsl.train.torchdata.bscan_input`), and the black bands above
        and below it are left to the attention to ignore.
        """
        if self.oct is None:
            raise ConfigError(f"variant {self.config.variant!r} has no OCT branch")
        tokens, glob, (h, w) = self.oct.from_features(x) if features else self.oct(x)
        z, maps = self.sites(tokens, self.site_queries())
        return {"global": glob, "z": z, "site_maps": maps.reshape(maps.shape[0], maps.shape[1], h, w)}


class DeployModel(nn.Module):
    """The deployed graph: uint8 NHWC RGB in; probs, logits, site_maps out; constants pre-folded.

    * input normalisation: the per-channel 1/std folds into the first
      convolution's weights; the mean subtraction stays as one Sub before it,
      because folding it too would change what the convolution's zero padding
      means at the image border (the folded graph must equal the trained one);
    * BatchNorm folds into convolutions at ONNX export (eval mode);
    * cosine site attention: the normalised site queries times their
      temperature are one constant matrix; the keys ``k(T)`` are projected and
      L2-normalised per token at run time (the norm is data-dependent, so the
      key projection cannot fold into the query matrix);
    * dot site attention (older checkpoints): the site queries ``q(P)`` are
      pre-multiplied with the key projection (``q(P) W_k`` is one constant
      matrix; the key bias adds the same value to every token of a query, so it
      cancels in the softmax and is dropped);
    * the normalised prototypes and the temperature are one constant matrix
      ``tau * E^T``; fusing with ``a`` and the biases are constants too;
    * FOV token mask (``fov_token_mask``): a constant Gather picks the ``T_in``
      tokens inside the field of view before the attention, the softmax runs
      over them alone (no -inf/-1e4 added into the Softmax input, which INT8
      calibration would see as its range), and a constant (T_in, T) 0/1 MatMul
      puts the maps back on the full grid with exact zeros outside.
    """

    # Buffers (register_buffer); ``qk`` only with site attention, the last three only with the FOV mask.
    mean: torch.Tensor
    proto_t: torch.Tensor
    bias: torch.Tensor
    qk: torch.Tensor
    inside_idx: torch.Tensor
    place: torch.Tensor
    uniform: torch.Tensor

    def __init__(self, model: UopslModel, size: int) -> None:
        super().__init__()
        m = copy.deepcopy(model).eval().cpu()
        trunk = m.fundus.encoder.trunk
        first = next(mod for mod in trunk.modules() if isinstance(mod, nn.Conv2d) and mod.in_channels == 3)
        with torch.no_grad():
            first.weight.div_(m.fundus.encoder.std.view(1, 3, 1, 1))
            self.register_buffer("mean", m.fundus.encoder.mean.clone())
            self.trunk = trunk
            self.tokens = m.fundus.tokens
            self.glob = m.fundus.glob
            self.variant = m.config.variant
            self.head = m.config.head
            d = m.config.dim
            k, s = m.num_classes, m.config.sites
            e = m.prototypes()
            self.register_buffer("proto_t", (m.tau * e).t().contiguous())  # (d, K)
            self.register_buffer("bias", m.bias.detach().clone())
            self.cosine = m.sites.form == "cosine"
            if self.variant != "fundus_only":
                if self.cosine:
                    self.register_buffer("qk", m.sites.cosine_queries(m.site_queries()).t().contiguous())  # (d, K*S)
                    self.key = m.sites.k
                else:
                    q = m.sites.q(m.site_queries()).reshape(k * s, d)
                    self.register_buffer("qk", (q @ m.sites.k.weight * m.sites.scale).t().contiguous())  # (d, K*S)
                self.v = m.sites.v
                a = float(m.fuse_weight())
                self.a, self.s = a, s
            self.k = k
            # Token grid for this input size, so every reshape in the graph is static but the batch.
            self.h, self.w = m.fundus.encoder(torch.zeros(1, 3, size, size)).shape[-2:]
            mask = m.config.token_mask(self.h, self.w)
            self.masked = mask is not None
            if mask is not None:
                idx = np.flatnonzero(mask.reshape(-1))
                place = torch.zeros(len(idx), self.h * self.w)
                place[torch.arange(len(idx)), torch.from_numpy(idx)] = 1.0
                self.register_buffer("inside_idx", torch.from_numpy(idx))  # (T_in,) Gather indices
                self.register_buffer("place", place)  # (T_in, T): maps back onto the full grid
                self.register_buffer("uniform", (place.sum(0) / len(idx)).unsqueeze(-1))  # (T, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Cast before anything else: TensorRT takes a uint8 network input only straight into a cast
        # (not even a transpose may read it); the values are the same either way.
        x = image.to(torch.float32).permute(0, 3, 1, 2) - self.mean
        feat = self.trunk(x)
        h, w, k = self.h, self.w, self.k
        tokens = self.tokens(feat).flatten(2).transpose(1, 2)  # (N, T, d)
        glob = self.glob(feat.mean(dim=(2, 3)))
        gn = F.normalize(glob, dim=-1)
        if self.variant == "fundus_only":
            logits = gn @ self.proto_t + self.bias
            uniform = self.uniform if self.masked else 1.0 / (h * w)
            maps = (tokens[:, :, :1] * 0 + uniform).transpose(1, 2).expand(-1, k, h * w)
        else:
            seen = tokens.index_select(1, self.inside_idx) if self.masked else tokens  # (N, T_in, d)
            if self.cosine:  # F.normalize's arithmetic, broadcast instead of expand_as (no Shape/Expand ops)
                kk = self.key(seen)
                keys = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            else:
                keys = seen
            att = (keys @ self.qk).transpose(1, 2).reshape(-1, k, self.s, seen.shape[1]).softmax(dim=-1)
            maps = att.mean(dim=2)  # (N, K, T_in)
            z = maps @ self.v(seen)  # (N, K, d)
            if self.masked:
                maps = maps @ self.place  # (N, K, T), exact zeros outside the FOV
            fused = self.a * gn.unsqueeze(1) + (1 - self.a) * F.normalize(z, dim=-1)
            # One batched MatMul per class (K, N, d) @ (K, d, 1): OpenVINO 2026.4 mis-broadcasts the
            # bias of the equivalent Mul -> ReduceSum -> Add pattern at batch > 1.
            scores = torch.matmul(F.normalize(fused, dim=-1).transpose(0, 1), self.proto_t.t().unsqueeze(-1))
            # A Reshape to a constant (K, N), not a Squeeze: with one class, ONNX shape inference could not tell
            # the class count from the bias's broadcast, and the outputs came out with no fixed size.
            logits = scores.reshape(k, -1).transpose(0, 1) + self.bias
        probs = torch.sigmoid(logits) if self.head == "sigmoid" else logits.softmax(dim=-1)
        return probs, logits, maps.reshape(-1, k, h, w)
