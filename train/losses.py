"""Losses of the two UOPSL stages.

Stage 1 (unpaired pre-training) uses, for each image pool, a FLAIR-style
image-text contrastive loss whose targets come from the labels (an image is
"paired" with every class it has, so targets are soft), plus on OCT the site
loss that teaches ``P`` where each class's findings sit, plus the generator
fit that makes ``G(t_k)`` explain the learned site queries. Stage 2 uses the
classification loss of the chosen head, optionally with the site loss on
fundus tokens and the site guide (:func:`site_guide`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_contrastive(img: torch.Tensor, protos: torch.Tensor, targets: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Symmetric image<->class contrastive loss with label-derived soft targets.

    img (N, d) image embeddings; protos (K, d) normalised class prototypes;
    targets (N, K) multi-hot. Image->class: cross-entropy against the
    normalised label vector. Class->image: for each class present in the batch,
    cross-entropy over the batch's images against a uniform target over the
    images that have it.
    """
    sim = tau * F.normalize(img, dim=-1) @ protos.t()  # (N, K)
    t = targets.float()
    has = t.sum(dim=1) > 0
    loss_i = -(t[has] / t[has].sum(1, keepdim=True) * sim[has].log_softmax(dim=1)).sum(1).mean() if has.any() else sim.sum() * 0
    present = t.sum(dim=0) > 0
    if present.any():
        tc = t[:, present].t()  # (Kp, N)
        loss_c = -(tc / tc.sum(1, keepdim=True) * sim[:, present].t().log_softmax(dim=1)).sum(1).mean()
    else:
        loss_c = sim.sum() * 0
    return 0.5 * (loss_i + loss_c)


def site_loss(z: torch.Tensor, protos: torch.Tensor, targets: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Site loss: cos(z_k, e_k) must score the image's own classes (multi-label BCE).

    Stage 1 applies it to OCT tokens (fundus tokens for ``p_only``); stage 2 to
    fundus tokens when ``TrainConfig.w_site_finetune`` > 0.

    z (N, K, d) site-pooled features per class; targets (N, K) multi-hot.
    """
    cos = (F.normalize(z, dim=-1) * protos.unsqueeze(0)).sum(-1)  # (N, K)
    logits = tau * (cos - cos.mean(dim=1, keepdim=True).detach())
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def generator_fit(delta: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Mean squared residual ``delta_k`` of the seen classes: G(t_k) must explain P_k."""
    d = delta[seen]
    return (d * d).mean() if d.numel() else delta.sum() * 0


def classification(logits: torch.Tensor, targets: torch.Tensor, head: str, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Stage-2 loss: BCE for multi-label sigmoid heads, cross-entropy for softmax heads."""
    if head == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=pos_weight)
    return F.cross_entropy(logits, targets.float().argmax(dim=1))


# Multiplier of the z-scored evidence before the softmax over tokens in :func:`evidence_maps`.
# Fixed, not tuned per model: 2 puts a token two standard deviations above the
# image's mean evidence at e^4 ~ 55x the weight of an average one.
GUIDE_SHARPNESS = 2.0


def evidence_maps(token_globals: torch.Tensor, protos: torch.Tensor, reference: int | None,
                  inside: torch.Tensor | None = None, sharpness: float = GUIDE_SHARPNESS) -> torch.Tensor:
    """Where each class's evidence sits in each image, as maps over tokens (N, K, T) that sum to 1.

    token_globals (N, T, d): the global projection of every cell
    (``Branch.token_globals``); protos (K, d) normalised prototypes. Class k's
    evidence at a cell is ``g_t . (e_k - e_ref)``, with ``e_ref`` the healthy
    class's prototype (``reference``) or, without one, the mean of the other
    classes' prototypes: how much more the cell looks like class k than like a
    healthy retina. Comparing with the reference rather than scoring ``e_k``
    alone removes what every class shares (vessels, the disc, the field's
    brightness). Per image and class the evidence is z-scored over the
    ``inside`` tokens and turned into a softmax with ``sharpness``; tokens
    outside get weight 0.
    """
    token_globals, protos = token_globals.float(), protos.float()  # fp32 under AMP: z-scores and a softmax
    k = protos.shape[0]
    if reference is None:
        ref = (protos.sum(0, keepdim=True) - protos) / max(k - 1, 1)
    else:
        ref = protos[reference].expand_as(protos)
    ev = torch.einsum("ntd,kd->nkt", token_globals, protos - ref)
    if inside is not None:
        ev = ev[..., inside]
    # Sample standard deviation (one inside token: 0, so a uniform map rather than NaN).
    sd = ev.std(-1, keepdim=True) if ev.shape[-1] > 1 else torch.zeros_like(ev[..., :1])
    z = (ev - ev.mean(-1, keepdim=True)) / sd.clamp_min(1e-6)
    maps = (sharpness * z).softmax(-1)
    if inside is None:
        return maps
    full = maps.new_zeros(maps.shape[:-1] + inside.shape)
    full[..., inside] = maps
    return full


def site_guide(maps: torch.Tensor, target: torch.Tensor, targets: torch.Tensor, reference: int | None) -> torch.Tensor:
    """KL divergence from the evidence maps to the site maps, for each class an image has.

    maps, target (N, K, T): site-attention maps and :func:`evidence_maps`
    (treated as constants: the guide moves the site attention, not the
    classifier it reads). Only (image, class) pairs with the class present
    count, and never the healthy class: a class absent from an image has no
    lesions to point at.
    """
    pos = targets.float() > 0
    if reference is not None:
        pos[:, reference] = False
    if not pos.any():
        return maps.sum() * 0
    t = target.detach()[pos]
    m = maps[pos].clamp_min(1e-8)
    kl = torch.where(t > 0, t * (t.clamp_min(1e-30).log() - m.log()), torch.zeros_like(t))
    return kl.sum(-1).mean()
