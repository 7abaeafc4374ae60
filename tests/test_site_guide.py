"""Stage 2's site guide (``TrainConfig.w_site_guide``): site maps pulled towards the classifier's own evidence."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from trainhelpers import feature_batch, tiny_model
from uopsl.runtime.errors import ConfigError
from uopsl.train import losses
from uopsl.train.loops import TrainConfig, finetune_losses

GRID = 8


def _batch(model, n: int = 6):  # type: ignore[no-untyped-def]
    feat, y = feature_batch(model, n, GRID)
    y[0, 1] = y[0, 2] = 1.0  # one image with two diseases
    return feat, y


def test_token_globals_average_to_the_global_vector() -> None:
    model, _ = tiny_model("uopsl")
    feat, _ = _batch(model)
    with torch.no_grad():
        out = model.forward_features(feat, token_globals=True)
    assert out["token_globals"].shape == (feat.shape[0], GRID * GRID, model.config.dim)
    assert torch.allclose(out["token_globals"].mean(1), out["global"], atol=1e-5)
    assert "token_globals" not in model.forward_features(feat)


def test_evidence_map_peaks_where_a_cell_looks_like_the_class_and_not_like_the_reference() -> None:
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(3, 16), dim=-1)
    g = torch.randn(2, 9, 16) * 0.1
    g[0, 4] += 3 * (protos[1] - protos[0])  # cell 4 of image 0: class 1, not the reference (class 0)
    g[1, 7] += 3 * protos[0]  # cell 7 of image 1: the healthy look itself
    maps = losses.evidence_maps(g, protos, reference=0)
    assert maps.shape == (2, 3, 9)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 3))
    assert int(maps[0, 1].argmax()) == 4 and float(maps[0, 1, 4]) > 0.5
    # Looking healthy is evidence against every disease: that cell gets the least weight.
    assert int(maps[1, 1].argmin()) == 7 and int(maps[1, 2].argmin()) == 7


def test_without_a_reference_the_other_classes_mean_is_used() -> None:
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(4, 8), dim=-1)
    g = torch.randn(3, 5, 8)
    maps = losses.evidence_maps(g, protos, reference=None, sharpness=1.5)
    k = 2
    others = (protos.sum(0) - protos[k]) / 3
    ev = g @ (protos[k] - others)
    z = (ev - ev.mean(-1, keepdim=True)) / ev.std(-1, keepdim=True)
    assert torch.allclose(maps[:, k], (1.5 * z).softmax(-1), atol=1e-6)


def test_evidence_maps_weigh_only_the_inside_tokens() -> None:
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(3, 8), dim=-1)
    g = torch.randn(2, 6, 8)
    inside = torch.tensor([True, False, True, True, False, True])
    maps = losses.evidence_maps(g, protos, 0, inside)
    assert torch.all(maps[..., ~inside] == 0)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 3))
    # The inside tokens get what the same computation on them alone gives.
    assert torch.allclose(maps[..., inside], losses.evidence_maps(g[:, inside], protos, 0), atol=1e-6)


def test_site_guide_is_the_kl_over_present_disease_classes_only() -> None:
    torch.manual_seed(0)
    target = torch.rand(3, 3, 5).softmax(-1)
    maps = torch.rand(3, 3, 5).softmax(-1)
    y = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.float32)
    got = losses.site_guide(maps, target, y, reference=0)
    pairs = [(1, 1), (1, 2), (2, 2)]  # class 0 is the reference: never guided
    want = sum(float((target[n, k] * (target[n, k].log() - maps[n, k].log())).sum()) for n, k in pairs) / len(pairs)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(losses.site_guide(target, target, y, 0)) == pytest.approx(0.0, abs=1e-6)
    # Without a reference the first class counts too.
    assert float(losses.site_guide(maps, target, y, None)) != pytest.approx(float(got))


def test_site_guide_without_a_present_disease_is_zero_and_keeps_the_graph() -> None:
    maps = torch.rand(2, 3, 4, requires_grad=True)
    y = torch.tensor([[1, 0, 0], [1, 0, 0]], dtype=torch.float32)
    loss = losses.site_guide(maps, maps.detach(), y, reference=0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and maps.grad is not None


def test_site_guide_tolerates_zero_weight_tokens() -> None:
    """Outside tokens carry exact zeros in both maps: they add nothing (no 0 * log 0 = nan)."""
    maps = torch.tensor([[[0.0, 0.5, 0.5], [0.0, 0.2, 0.8]]])
    target = torch.tensor([[[0.0, 0.9, 0.1], [0.0, 0.5, 0.5]]])
    loss = losses.site_guide(maps, target, torch.tensor([[0.0, 1.0]]), reference=0)
    assert torch.isfinite(loss) and float(loss) > 0


def test_finetune_guide_term_matches_the_parts_and_only_moves_the_site_attention() -> None:
    model, _ = tiny_model("uopsl")
    feat, y = _batch(model)
    parts = finetune_losses(model, features=True, w_guide=0.7)(feat, y)
    with torch.no_grad():
        out = model.forward_features(feat, token_globals=True)
        target = losses.evidence_maps(out["token_globals"], model.prototypes(), 0,
                                      model.inside_tokens(GRID, GRID, feat.device))
        want = losses.site_guide(out["site_maps"].flatten(2), target, y, 0)
    assert torch.allclose(parts["guide"], want)
    assert torch.allclose(parts["loss"], parts["cls"] + 0.1 * parts["gen"] + 0.7 * want)
    parts["guide"].backward()
    # The target is a constant and the tokens are read as constants: the global and token
    # projections (and an encoder under them) and the prototypes get nothing from the guide.
    for p in (model.fundus.glob.weight, model.text_proj.weight, *model.fundus.tokens.parameters()):
        assert p.grad is None or float(p.grad.abs().sum()) == 0.0
    assert float(model.delta.grad.abs().sum()) > 0
    assert float(model.sites.k.weight.grad.abs().sum()) > 0


def test_training_with_the_guide_brings_the_maps_to_the_evidence() -> None:
    torch.manual_seed(0)
    model, _ = tiny_model("uopsl")
    feat, y = _batch(model, n=12)

    def gap() -> float:
        with torch.no_grad():
            out = model.forward_features(feat, token_globals=True)
            t = losses.evidence_maps(out["token_globals"], model.prototypes(), 0,
                                     model.inside_tokens(GRID, GRID, feat.device))
            return float(losses.site_guide(out["site_maps"].flatten(2), t, y, 0))

    before = gap()
    # Only the site attention trains, so the evidence (the target) stays where it is.
    params = [model.delta, *model.sites.parameters()]
    opt = torch.optim.Adam(params, lr=3e-2)
    fn = finetune_losses(model, features=True, w_guide=1.0)
    for _ in range(60):
        opt.zero_grad()
        fn(feat, y)["guide"].backward()
        opt.step()
    after = gap()
    assert after < 0.5 * before, (before, after)


def test_fundus_only_has_no_guide_term() -> None:
    model, _ = tiny_model("fundus_only")
    feat, y = _batch(model)
    with torch.no_grad():
        parts = finetune_losses(model, features=True, w_guide=1.0)(feat, y)
    assert "guide" not in parts


def test_reference_class_is_the_healthy_one() -> None:
    model, _ = tiny_model("uopsl")
    assert model.config.classes[0] == "normal" and model.reference_class() == 0


def test_negative_guide_weight_is_refused() -> None:
    with pytest.raises(ConfigError, match="w_site_guide must be >= 0, got -0.5"):
        TrainConfig(w_site_guide=-0.5)


def test_finetune_trains_with_the_guide_by_default_and_not_with_frozen_sites(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from trainhelpers import tiny_dataset
    from uopsl.train.stages import finetune

    ds = tiny_dataset(tmp_path, n=8)
    assert TrainConfig().w_site_guide == 1.0
    model, meta = tiny_model("uopsl")
    _, res = finetune(model, ds, None, TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False),
                      tmp_path / "on", meta)
    assert "guide" in res["history"][0] and res["history"][0]["guide"] >= 0
    model, meta = tiny_model("uopsl")
    _, res = finetune(model, ds, None, TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False,
                                                   freeze_sites=True), tmp_path / "frozen", meta)
    assert "guide" not in res["history"][0]
    # what was saved says what ran
    from uopsl.train.checkpoint import read_meta

    assert read_meta(tmp_path / "frozen").train_config["w_site_guide"] == 0.0
    assert read_meta(tmp_path / "on").train_config["w_site_guide"] == 1.0


def test_guide_on_images_leaves_the_encoder_alone() -> None:
    """Trained end to end, the encoder learns from the classification only, never from the guide."""
    model, _ = tiny_model("uopsl")
    torch.manual_seed(2)
    x = torch.rand(4, 3, 64, 64) * 255
    y = torch.tensor([[0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=torch.float32)
    parts = finetune_losses(model, features=False, w_guide=1.0)(x, y)
    parts["guide"].backward(retain_graph=True)
    grads = [p.grad for p in model.fundus.encoder.parameters()]
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads)
    assert float(model.delta.grad.abs().sum()) > 0
    parts["cls"].backward()  # the control: the classification does reach the encoder
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.fundus.encoder.parameters())


def test_one_inside_token_gives_a_uniform_target_not_nan() -> None:
    protos = F.normalize(torch.randn(3, 8), dim=-1)
    maps = losses.evidence_maps(torch.randn(2, 1, 8), protos, 0)
    assert torch.equal(maps, torch.ones(2, 3, 1))


def test_the_healthy_class_is_found_under_its_other_spellings() -> None:
    from dataclasses import replace

    model, _ = tiny_model("uopsl")
    for names, want in ((("a", "Healthy", "b"), 1), (("no_disease", "a", "b"), 0), (("a", "b", "c"), None)):
        model.config = replace(model.config, classes=names)
        assert model.reference_class() == want, names


def test_resume_tag_ignores_the_guide_where_it_cannot_act() -> None:
    """Runs interrupted before the option existed resume: pretraining always, fine-tuning with --site-guide 0."""
    import hashlib
    import json
    from dataclasses import asdict

    from uopsl.train.loops import run_tag

    def old_tag(stage: str, cfg: TrainConfig) -> str:
        settings = {k: v for k, v in asdict(cfg).items() if k != "w_site_guide"}
        return hashlib.sha256(json.dumps([stage, settings, "fp", 1]).encode()).hexdigest()[:16]

    on, off = TrainConfig(), TrainConfig(w_site_guide=0.0)
    # The tags of states saved before session 25 (every setting, how the run is carried out included).
    assert (run_tag("pretrain", on, "fp", 1, legacy=True) == run_tag("pretrain", off, "fp", 1, legacy=True)
            == old_tag("pretrain", on))
    assert run_tag("finetune", off, "fp", 1, legacy=True) == old_tag("finetune", off)
    assert run_tag("finetune", on, "fp", 1) != run_tag("finetune", off, "fp", 1)
    # Today's leaves out how a run is carried out (device, AMP, checkpoint interval).
    assert run_tag("finetune", off, "fp", 1) == run_tag("finetune", replace(off, save_every=7, device="cpu"), "fp", 1)
    assert run_tag("pretrain", on, "fp", 1) == run_tag("pretrain", off, "fp", 1)
