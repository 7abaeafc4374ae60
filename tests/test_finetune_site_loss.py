"""Stage 2's optional site loss on fundus tokens (``TrainConfig.w_site_finetune``)."""

from __future__ import annotations

import pytest
import torch

from trainhelpers import feature_batch, tiny_model
from uopsl.runtime.errors import ConfigError
from uopsl.train import losses
from uopsl.train.loops import TrainConfig, finetune_losses

GRID = 8


def _batch(model, n: int = 4):  # type: ignore[no-untyped-def]
    return feature_batch(model, n, GRID)


def test_weight_zero_is_the_fused_loss_alone() -> None:
    model, _ = tiny_model("uopsl")
    feat, y = _batch(model)
    with torch.no_grad():
        parts = finetune_losses(model, features=True)(feat, y)
    assert "site" not in parts
    assert torch.allclose(parts["loss"], parts["cls"] + 0.1 * parts["gen"])


def test_site_term_is_the_site_loss_of_the_pooled_class_features() -> None:
    model, _ = tiny_model("uopsl")
    feat, y = _batch(model)
    with torch.no_grad():
        parts = finetune_losses(model, features=True, w_site=0.5)(feat, y)
        out = model.forward_features(feat)
        tokens = out["tokens"]
        z, _ = model.sites(tokens, model.site_queries(), model.inside_tokens(GRID, GRID, tokens.device))
        expected = losses.site_loss(z, model.prototypes(), y, model.tau)
    assert torch.allclose(out["site_features"], z)
    assert torch.allclose(parts["site"], expected)
    assert torch.allclose(parts["loss"], parts["cls"] + 0.1 * parts["gen"] + 0.5 * expected)


def test_site_term_trains_the_site_queries_but_not_the_fuse_weight() -> None:
    """The term reaches P (through the site queries) and skips the global/site mix, which it does not use."""
    model, _ = tiny_model("uopsl")
    feat, y = _batch(model)
    parts = finetune_losses(model, features=True, w_site=1.0)(feat, y)
    parts["site"].backward()
    assert model.alpha.grad is None or float(model.alpha.grad.abs()) == 0.0
    grads = [p.grad for name, p in model.named_parameters() if "delta" in name or "sites" in name]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_fundus_only_has_no_site_term() -> None:
    model, _ = tiny_model("fundus_only")
    feat, y = _batch(model)
    with torch.no_grad():
        parts = finetune_losses(model, features=True, w_site=1.0)(feat, y)
    assert "site" not in parts and "site_features" not in model.forward_features(feat)


def test_negative_weight_is_refused() -> None:
    with pytest.raises(ConfigError, match="w_site_finetune must be >= 0, got -1"):
        TrainConfig(w_site_finetune=-1.0)
