"""Mutation audit (session 35) of the training method: losses, site attention, head, zero-shot readings, sampling.

Every expected value here is computed independently of the code under test: by hand, or by a direct
re-implementation of the formula in ``docs/method.md`` with explicit loops over images, classes, queries
and tokens. Tiny tensors, CPU only.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainhelpers import tiny_model
from uopsl.train import losses
from uopsl.train.loops import TrainConfig, epoch_order, pretrain_losses
from uopsl.train.model import SiteAttention
from uopsl.train.zero_shot import reading_scores

GRID = 8


# -- independent references ------------------------------------------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _log_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _ref_site_attention(att: SiteAttention, tokens: torch.Tensor, queries: torch.Tensor,
                        inside: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """method.md: A_ks = softmax over (inside) tokens of s * cos(q(P_ks), k(T_t)); map_k = mean_s A_ks;
    z_k = mean_s A_ks v(T) = sum_t map_k[t] v(T_t). Loops, one (image, class, query) at a time."""
    n, t, d = tokens.shape
    k, s, _ = queries.shape
    temp = min(float(att.log_temp.exp()), att.temp_max)
    with torch.no_grad():
        q = att.q(queries)  # (K, S, d)
        kk = att.k(tokens)  # (N, T, d)
        v = att.v(tokens)
    allowed = [True] * t if inside is None else [bool(x) for x in inside]
    maps = torch.zeros(n, k, t, dtype=torch.float64)
    for i in range(n):
        for c in range(k):
            for j in range(s):
                logits = [temp * _cos(q[c, j], kk[i, u]) if allowed[u] else None for u in range(t)]
                live = [x for x in logits if x is not None]
                m = max(live)
                den = sum(math.exp(x - m) for x in live)
                for u in range(t):
                    if allowed[u]:
                        maps[i, c, u] += math.exp(logits[u] - m) / den / s
    z = torch.zeros(n, k, d, dtype=torch.float64)
    for i in range(n):
        for c in range(k):
            for u in range(t):
                z[i, c] += maps[i, c, u] * v[i, u].double()
    return z, maps


def _tiny(variant: str = "uopsl"):  # type: ignore[no-untyped-def]
    model, _ = tiny_model(variant, random_text=True)
    return model.eval()


# -- soft_contrastive ------------------------------------------------------------------------------
def test_soft_contrastive_is_the_mean_of_both_directions_with_normalised_soft_targets() -> None:
    img = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0]])  # not unit length: the loss normalises
    protos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # unit length
    targets = torch.tensor([[1, 1], [0, 1], [0, 0]])  # a two-label image, a one-label one, an unlabelled one
    tau = torch.tensor(2.0)
    sim = [[2.0 * _cos(img[n], protos[k]) for k in range(2)] for n in range(3)]
    # Image -> class, only over images with a label: cross-entropy against the label vector divided by its sum.
    rows = []
    for n in range(3):
        lab = [float(x) for x in targets[n]]
        if sum(lab) == 0:
            continue
        ls = _log_softmax(sim[n])
        rows.append(-sum(lab[k] / sum(lab) * ls[k] for k in range(2)))
    loss_i = sum(rows) / len(rows)
    # Class -> image, only over classes present: softmax over the batch's images (all of them), uniform target
    # over the images that have the class.
    cols = []
    for k in range(2):
        lab = [float(targets[n, k]) for n in range(3)]
        if sum(lab) == 0:
            continue
        ls = _log_softmax([sim[n][k] for n in range(3)])
        cols.append(-sum(lab[n] / sum(lab) * ls[n] for n in range(3)))
    loss_c = sum(cols) / len(cols)
    got = float(losses.soft_contrastive(img, protos, targets, tau))
    assert got == pytest.approx(0.5 * (loss_i + loss_c), rel=1e-5)


def test_soft_contrastive_class_to_image_term_skips_absent_classes() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    targets = torch.tensor([[1, 0, 0], [1, 0, 0]])  # only class 0 present
    tau = torch.tensor(1.0)
    # Image->class: both images target class 0 alone.
    li = []
    for n in range(2):
        ls = _log_softmax([_cos(img[n], protos[k]) for k in range(3)])
        li.append(-ls[0])
    # Class->image: class 0 only, uniform over both images.
    ls = _log_softmax([_cos(img[n], protos[0]) for n in range(2)])
    lc = -(0.5 * ls[0] + 0.5 * ls[1])
    got = float(losses.soft_contrastive(img, protos, targets, tau))
    assert got == pytest.approx(0.5 * (sum(li) / 2 + lc), rel=1e-5)


# -- site loss ------------------------------------------------------------------------------------
def test_site_loss_is_bce_of_the_per_image_centred_cosines() -> None:
    z = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]],
                      [[0.0, -1.0], [4.0, 4.0], [-2.0, 0.5]]])  # (N=2, K=3, d=2), not unit length
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y = torch.tensor([[1, 0, 1], [0, 1, 0]])
    tau = torch.tensor(3.0)
    total = 0.0
    for n in range(2):
        cos = [_cos(z[n, k], protos[k]) for k in range(3)]
        mean = sum(cos) / 3  # the image's mean over classes
        for k in range(3):
            x = 3.0 * (cos[k] - mean)
            p = 1 / (1 + math.exp(-x))
            total += -(float(y[n, k]) * math.log(p) + (1 - float(y[n, k])) * math.log(1 - p))
    got = float(losses.site_loss(z, protos, y, tau))
    assert got == pytest.approx(total / 6, rel=1e-5)


def test_site_loss_sends_no_gradient_through_the_subtracted_mean() -> None:
    """method.md: 'centred per image (the mean is subtracted as a constant: no gradient flows through it)'.

    With the mean constant, d loss / d cos_nk = tau * (sigmoid(logit_nk) - y_nk) / (N K) exactly."""
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    tau = torch.tensor(2.5)
    cos = torch.tensor([[0.9, -0.2, 0.4], [0.1, 0.7, -0.5]], requires_grad=True)
    # z_k = cos_k * e_k + sin_k * e_k_perp has cosine cos_k with e_k and unit length.
    perp = torch.stack([-protos[:, 1], protos[:, 0]], dim=-1)
    z = cos.unsqueeze(-1) * protos + (1 - cos.unsqueeze(-1) ** 2).sqrt() * perp
    losses.site_loss(z, protos, y, tau).backward()
    with torch.no_grad():
        c = cos.detach()
        logit = 2.5 * (c - c.mean(1, keepdim=True))
        want = 2.5 * (torch.sigmoid(logit) - y) / 6
    assert torch.allclose(cos.grad, want, atol=1e-5)


# -- generator fit, classification ----------------------------------------------------------------
def test_generator_fit_is_the_mean_square_of_the_seen_residuals() -> None:
    delta = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2) - 5.0
    seen = torch.tensor([True, False, True])
    vals = [float(x) for x in delta[0].flatten()] + [float(x) for x in delta[2].flatten()]
    want = sum(v * v for v in vals) / len(vals)
    assert float(losses.generator_fit(delta, seen)) == pytest.approx(want)
    assert float(losses.generator_fit(delta, torch.tensor([False, False, False]))) == 0.0


def test_softmax_classification_is_cross_entropy_on_the_one_label() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([[0, 1, 0], [1, 0, 0]])
    want = (-_log_softmax([2.0, 0.5, -1.0])[1] - _log_softmax([0.0, 1.0, 3.0])[0]) / 2
    assert float(losses.classification(logits, y, "softmax")) == pytest.approx(want, rel=1e-6)


# -- site attention, queries, head ----------------------------------------------------------------
def test_cosine_site_attention_matches_the_formula_inside_the_fov() -> None:
    torch.manual_seed(3)
    att = SiteAttention(4, "cosine", temp_init=3.0)
    tokens = torch.randn(2, 6, 4)
    queries = torch.randn(3, 2, 4)  # K = 3 classes, S = 2 queries each
    inside = torch.tensor([True, False, True, True, True, False])
    with torch.no_grad():
        z, maps = att(tokens, queries, inside)
    z_ref, maps_ref = _ref_site_attention(att, tokens, queries, inside)
    assert torch.allclose(maps.double(), maps_ref, atol=1e-5)
    assert torch.allclose(z.double(), z_ref, atol=1e-5)
    with torch.no_grad():
        z, maps = att(tokens, queries)
    z_ref, maps_ref = _ref_site_attention(att, tokens, queries, None)
    assert torch.allclose(maps.double(), maps_ref, atol=1e-5)
    assert torch.allclose(z.double(), z_ref, atol=1e-5)


def test_temperatures_are_capped_as_documented() -> None:
    """method.md: site-attention temperature s capped at 50; head temperature tau capped at 100."""
    model = _tiny()
    with torch.no_grad():
        model.sites.log_temp.fill_(math.log(20.0))
        model.log_tau.fill_(math.log(40.0))
    assert float(model.sites.temperature) == pytest.approx(20.0)
    assert float(model.tau) == pytest.approx(40.0)
    with torch.no_grad():
        model.sites.log_temp.fill_(math.log(1000.0))
        model.log_tau.fill_(math.log(1000.0))
    assert float(model.sites.temperature) == pytest.approx(50.0)
    assert float(model.tau) == pytest.approx(100.0)


def test_site_queries_add_the_residual_for_seen_classes_only() -> None:
    model = _tiny()
    with torch.no_grad():
        model.delta.copy_(torch.randn_like(model.delta))
    model.seen = torch.tensor([True, False, True])
    with torch.no_grad():
        q = model.site_queries()
        k, s, d = model.delta.shape
        for c in range(k):
            g = model.generator(model.class_text[c]).view(s, d)  # G(t_k), one class at a time
            want = g + model.delta[c] if c != 1 else g
            assert torch.allclose(q[c], want, atol=1e-6), c


def _ref_logits(model, feat: torch.Tensor, use_sites: bool = True):  # type: ignore[no-untyped-def]
    """logit_k = tau * cos(a * norm(g) + (1 - a) * norm(z_k), e_k) + b_k, e_k = norm(W_t t_k); a = 1 without sites."""
    tokens, glob, (h, w) = model.fundus.from_features(feat)
    inside = torch.from_numpy(model.config.token_mask(h, w).reshape(-1))
    a = 1.0 / (1.0 + math.exp(-float(model.alpha)))
    tau = min(float(model.log_tau.exp()), 100.0)
    with torch.no_grad():
        e = model.text_proj(model.class_text)
        e = e / e.norm(dim=-1, keepdim=True)
        queries = model.generator(model.class_text).view(model.num_classes, model.config.sites, model.config.dim)
        queries = queries + model.delta * model.seen.view(-1, 1, 1)
        z, _ = _ref_site_attention(model.sites, tokens, queries, inside)
    n, k = feat.shape[0], model.num_classes
    logits = torch.zeros(n, k, dtype=torch.float64)
    cosines = torch.zeros(n, k, dtype=torch.float64)
    for i in range(n):
        g = glob[i].double() / glob[i].double().norm()
        for c in range(k):
            fused = g if not use_sites else a * g + (1 - a) * z[i, c] / z[i, c].norm()
            cosines[i, c] = _cos(fused, e[c].double())
            logits[i, c] = tau * cosines[i, c] + float(model.bias[c])
    return logits, cosines


def test_head_logits_follow_the_prototype_formula() -> None:
    model = _tiny()
    with torch.no_grad():  # a != 1/2 (so g and z_k are told apart), non-zero biases, tau != 1
        model.alpha.fill_(0.8)
        model.log_tau.fill_(math.log(7.0))
        model.bias.copy_(torch.tensor([0.3, -0.2, 0.5]))
        model.delta.copy_(torch.randn_like(model.delta) * 0.3)
    torch.manual_seed(5)
    feat = torch.randn(2, model.fundus.encoder.channels, GRID, GRID)
    with torch.no_grad():
        got = model.forward_features(feat)["logits"]
        plain = model.forward_features(feat, use_sites=False)["logits"]
    want, _ = _ref_logits(model, feat)
    want_plain, _ = _ref_logits(model, feat, use_sites=False)
    assert torch.allclose(got.double(), want, atol=1e-4)
    assert torch.allclose(plain.double(), want_plain, atol=1e-4)


def test_softmax_head_normalises_over_the_classes_of_each_image() -> None:
    model = _tiny()
    model.config = replace(model.config, head="softmax")
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, math.log(2.0)]])
    p = model.probs(logits)
    e = [math.exp(x) for x in (1.0, 2.0, 3.0)]
    assert [float(x) for x in p[0]] == pytest.approx([x / sum(e) for x in e], rel=1e-6)
    assert [float(x) for x in p[1]] == pytest.approx([0.25, 0.25, 0.5], rel=1e-6)


def test_with_classes_carries_each_known_class_by_name_and_starts_new_ones_from_text() -> None:
    model = _tiny()
    with torch.no_grad():
        model.delta.copy_(torch.randn_like(model.delta))
        model.bias.copy_(torch.tensor([0.3, -0.6, 0.9]))
    old_delta = model.delta.detach().clone()
    text = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    new = model.with_classes(("b", "normal", "new"), text, seen_names=("normal", "a", "b", "new"))
    assert torch.equal(new.delta.detach()[0], old_delta[2])  # b was old class 2
    assert torch.equal(new.delta.detach()[1], old_delta[0])  # normal was old class 0
    assert torch.equal(new.delta.detach()[2], torch.zeros_like(old_delta[0]))
    assert [float(x) for x in new.bias] == pytest.approx([0.9, 0.3, 0.2])  # new: mean of the old biases
    # "new" is in seen_names but the model never knew it: unseen (its queries come from G alone).
    assert new.config.seen == (True, True, False) and new.seen.tolist() == [True, True, False]


# -- zero-shot readings ---------------------------------------------------------------------------
def test_zero_shot_readings_are_the_site_and_plain_cosines() -> None:
    model = _tiny()
    with torch.no_grad():
        model.alpha.fill_(-0.4)
        model.delta.copy_(torch.randn_like(model.delta) * 0.3)
    torch.manual_seed(7)
    feat = torch.randn(3, model.fundus.encoder.channels, GRID, GRID)
    ds = type("DS", (), {"features": feat, "__len__": lambda self: 3})()
    got = reading_scores(model, ds, batch_size=2)
    _, with_sites = _ref_logits(model, feat, use_sites=True)
    _, plain = _ref_logits(model, feat, use_sites=False)
    ref = model.reference_class()
    assert ref == 0
    assert np.allclose(got["site_attention"]["raw"], with_sites.numpy(), atol=1e-5)
    assert np.allclose(got["no_site_attention"]["raw"], plain.numpy(), atol=1e-5)
    # vs_healthy: cos(fused_k, e_k) - cos(fused_k, e_normal) on the same fused feature.
    tokens, glob, (h, w) = model.fundus.from_features(feat)
    with torch.no_grad():
        e = F.normalize(model.text_proj(model.class_text), dim=-1)
    for arm, cos in (("site_attention", with_sites), ("no_site_attention", plain)):
        vh = got[arm]["vs_healthy"]
        assert np.allclose(vh[:, ref], 0.0, atol=1e-6)
        assert np.all(np.isfinite(vh))
    # The sign: for the plain reading fused = g, so vs_healthy = cos(g, e_k) - cos(g, e_0).
    gn = F.normalize(glob, dim=-1).detach()
    want = ((gn @ e.t()) - (gn @ e[0]).unsqueeze(1)).numpy()
    assert np.allclose(got["no_site_attention"]["vs_healthy"], want, atol=1e-5)
    # and for the site reading, against the reference cosines of the same fused features.
    a = 1.0 / (1.0 + math.exp(0.4))
    with torch.no_grad():
        queries = model.site_queries()
    z, _ = _ref_site_attention(model.sites, tokens, queries, torch.from_numpy(model.config.token_mask(h, w).reshape(-1)))
    fused = a * gn.double().unsqueeze(1) + (1 - a) * F.normalize(z, dim=-1)
    fused = F.normalize(fused, dim=-1)
    ed = e.double()
    want_s = (fused * ed.unsqueeze(0)).sum(-1) - (fused * ed[0]).sum(-1)
    assert np.allclose(got["site_attention"]["vs_healthy"], want_s.numpy(), atol=1e-5)


# -- stage-1 loss assembly ------------------------------------------------------------------------
def test_pretrain_losses_score_each_pool_against_its_own_labels_and_weigh_the_parts() -> None:
    model = _tiny("uopsl")
    cfg = TrainConfig(w_fundus=0.7, w_oct=1.3, w_site=2.1, w_gen=0.4)
    torch.manual_seed(2)
    c = model.fundus.encoder.channels
    xf, xo = torch.randn(3, c, GRID, GRID), torch.randn(3, c, GRID, GRID)
    yf = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    yo = torch.tensor([[0.0, 1, 1], [1, 0, 0], [0, 1, 0]])
    with torch.no_grad():
        parts = pretrain_losses(model, cfg, features=True)(xf, yf, xo, yo)
        e = model.prototypes()
        tok_o, glob_o, _ = model.oct.from_features(xo)
        _, glob_f, _ = model.fundus.from_features(xf)
        z_o, _ = _ref_site_attention(model.sites, tok_o, model.site_queries(), None)  # OCT: no FOV mask
        want_site = losses.site_loss(z_o.float(), e, yo, model.tau)
        want_oct = losses.soft_contrastive(glob_o, e, yo, model.tau)
        want_fundus = losses.soft_contrastive(glob_f, e, yf, model.tau)
    assert float(parts["site"]) == pytest.approx(float(want_site), rel=1e-4)
    assert float(parts["oct"]) == pytest.approx(float(want_oct), rel=1e-5)
    assert float(parts["fundus"]) == pytest.approx(float(want_fundus), rel=1e-5)
    want = 0.7 * parts["fundus"] + 1.3 * parts["oct"] + 2.1 * parts["site"] + 0.4 * parts["gen"]
    assert float(parts["loss"]) == pytest.approx(float(want), rel=1e-6)


def test_p_only_site_loss_pools_only_the_fundus_tokens_inside_the_fov() -> None:
    model = _tiny("p_only")
    torch.manual_seed(4)
    xf = torch.randn(3, model.fundus.encoder.channels, GRID, GRID)
    yf = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 1]])
    with torch.no_grad():
        parts = pretrain_losses(model, TrainConfig(), features=True)(xf, yf)
        tokens, _, (h, w) = model.fundus.from_features(xf)
        inside = torch.from_numpy(model.config.token_mask(h, w).reshape(-1))
        assert 0 < int(inside.sum()) < h * w
        z, _ = _ref_site_attention(model.sites, tokens, model.site_queries(), inside)
        want = losses.site_loss(z.float(), model.prototypes(), yf, model.tau)
    assert float(parts["site"]) == pytest.approx(float(want), rel=1e-4)


# -- balanced sampling ----------------------------------------------------------------------------
def test_balanced_order_draws_each_class_and_the_unlabelled_equally_often() -> None:
    """method.md: inverse class frequency per image; images with no label count as one more class."""
    targets = np.zeros((105, 2), np.float32)
    targets[:90, 0] = 1  # 90 of class 0
    targets[90:100, 1] = 1  # 10 of class 1
    # 5 without a label of the model's classes
    order = epoch_order(targets, epoch=0, seed=0, balanced=True, length=30000)
    shares = [np.mean(order < 90), np.mean((order >= 90) & (order < 100)), np.mean(order >= 100)]
    assert shares == pytest.approx([1 / 3] * 3, abs=0.02)


def test_balanced_order_weighs_a_multi_label_image_by_its_classes_mean_inverse_frequency() -> None:
    targets = np.zeros((80, 2), np.float32)
    targets[:40, 0] = 1  # [1, 0] x 40
    targets[40:60, 1] = 1  # [0, 1] x 20
    targets[60:, :] = 1  # [1, 1] x 20; class 0: 60 images, class 1: 40
    w = {"a": 1 / 60, "b": 1 / 40, "ab": (1 / 60 + 1 / 40) / 2}
    mass = {"a": 40 * w["a"], "b": 20 * w["b"], "ab": 20 * w["ab"]}
    total = sum(mass.values())
    order = epoch_order(targets, epoch=1, seed=3, balanced=True, length=40000)
    got = {"a": np.mean(order < 40), "b": np.mean((order >= 40) & (order < 60)), "ab": np.mean(order >= 60)}
    for key in mass:
        assert got[key] == pytest.approx(mass[key] / total, abs=0.015), key


def test_unbalanced_order_is_a_permutation_per_pass() -> None:
    targets = np.eye(3, dtype=np.float32)[np.array([0] * 8 + [1, 2])]
    order = epoch_order(targets, epoch=0, seed=0, balanced=False, length=25)
    assert sorted(order[:10].tolist()) == list(range(10)) and sorted(order[10:20].tolist()) == list(range(10))


def _feature_pool(model, labels: list[int], seed: int):  # type: ignore[no-untyped-def]
    from uopsl.train.stages import FeatureDataset

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(labels), model.fundus.encoder.channels, GRID, GRID, generator=g)
    return FeatureDataset(feats, np.eye(3, dtype=np.float32)[labels])


def test_pretrain_epoch_spans_the_larger_pool_with_both_pools_balanced(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """method.md: 'each step takes one fundus batch and one OCT batch; an epoch is as long as the larger pool',
    with class-balanced sampling in both pools."""
    from uopsl.train import stages

    calls: list[tuple[int, bool, int | None]] = []
    real = stages.epoch_order

    def spy(targets, epoch, seed, balanced, length=None):  # type: ignore[no-untyped-def]
        calls.append((len(targets), bool(balanced), length))
        return real(targets, epoch, seed, balanced, length)

    monkeypatch.setattr(stages, "epoch_order", spy)
    model, meta = tiny_model("uopsl", random_text=True)
    fundus = _feature_pool(model, [0, 1, 2, 0], 0)
    oct_pool = _feature_pool(model, [i % 3 for i in range(10)], 1)
    cfg = TrainConfig(epochs=1, batch_size=2, save_every=0, augment=False, freeze_encoder=True)
    stages.pretrain(model, fundus, oct_pool, cfg, tmp_path / "pre", meta)
    assert calls == [(4, True, 10), (10, True, 10)]


def test_finetune_samples_class_balanced(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from uopsl.train import loops, stages

    calls: list[tuple[int, bool]] = []
    real = loops.epoch_order

    def spy(targets, epoch, seed, balanced, length=None):  # type: ignore[no-untyped-def]
        calls.append((len(targets), bool(balanced)))
        return real(targets, epoch, seed, balanced, length)

    monkeypatch.setattr(loops, "epoch_order", spy)
    model, meta = tiny_model("uopsl", random_text=True)
    pool = _feature_pool(model, [0, 0, 0, 1, 2, 0], 2)
    cfg = TrainConfig(epochs=1, batch_size=2, save_every=0, augment=False, freeze_encoder=True, w_site_guide=0.0)
    stages.finetune(model, pool, None, cfg, tmp_path / "ft", meta)
    assert calls == [(6, True)]


def test_finetune_loss_of_a_softmax_head_is_cross_entropy() -> None:
    """method.md, stage 2: 'loss is BCE (sigmoid head) or cross-entropy (softmax head)'."""
    from uopsl.train.loops import finetune_losses

    model = _tiny()
    model.config = replace(model.config, head="softmax")
    torch.manual_seed(6)
    feat = torch.randn(3, model.fundus.encoder.channels, GRID, GRID)
    y = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    with torch.no_grad():
        parts = finetune_losses(model, features=True, w_guide=0.0)(feat, y)
        logits = model.forward_features(feat)["logits"]
    want = sum(-_log_softmax([float(x) for x in logits[i]])[int(y[i].argmax())] for i in range(3)) / 3
    assert float(parts["cls"]) == pytest.approx(want, rel=1e-5)


def test_site_guide_treats_the_evidence_maps_as_constants() -> None:
    """losses.site_guide's contract: the target maps are constants (only the site maps receive gradient)."""
    maps = torch.tensor([[[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]], requires_grad=True)
    target = torch.tensor([[[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]], requires_grad=True)
    loss = losses.site_guide(maps, target, torch.tensor([[0.0, 1.0]]), reference=0)
    loss.backward()
    assert target.grad is None
    # d KL(t || m) / d m = -t / m on the one guided pair (image 0, class 1).
    want = torch.zeros(1, 2, 3)
    want[0, 1] = -target.detach()[0, 1] / maps.detach()[0, 1]
    assert torch.allclose(maps.grad, want, atol=1e-6)


def test_evidence_maps_measure_against_the_healthy_prototype() -> None:
    """method.md: class k's evidence at cell t is g_t . (e_k - e_normal), z-scored over the tokens, softmax(2 z)."""
    torch.manual_seed(8)
    protos = F.normalize(torch.randn(3, 5), dim=-1)
    g = torch.randn(2, 4, 5)
    got = losses.evidence_maps(g, protos, reference=2)
    for n in range(2):
        for k in range(3):
            ev = [float((g[n, t] * (protos[k] - protos[2])).sum()) for t in range(4)]
            if k == 2:  # the healthy class against itself: no evidence anywhere, a uniform map
                assert [float(x) for x in got[n, k]] == pytest.approx([0.25] * 4, abs=1e-6)
                continue
            mean = sum(ev) / 4
            sd = math.sqrt(sum((x - mean) ** 2 for x in ev) / 3)  # sample standard deviation
            w = [math.exp(2.0 * (x - mean) / sd) for x in ev]
            assert [float(x) for x in got[n, k]] == pytest.approx([x / sum(w) for x in w], rel=1e-4), (n, k)
