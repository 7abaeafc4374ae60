"""Losses of the two UOPSL stages.

Stage 1 (unpaired pre-training) uses, for each image pool, a FLAIR-style
image-text contrastive loss whose targets come from the labels (an image is
"paired" with every class it has, so targets are soft), plus on OCT the site
loss that teaches ``P`` where each class's findings sit, plus the generator
fit that makes ``G(t_k)`` explain the learned site queries. Stage 2 uses the
classification loss of the chosen head.
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
