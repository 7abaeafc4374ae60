"""Site attention restricted to the tokens inside the field of view (``ModelConfig.fov_token_mask``)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trainhelpers import tiny_model
from uopsl.runtime.errors import ConfigError
from uopsl.train.checkpoint import load_model, save_model
from uopsl.train.model import DeployModel, ModelConfig, UopslModel, fov_token_mask

GRID = 8  # resnet18 (stride 32) at 256 px
SIZE = 256


def cell_inside_fraction(h: int, w: int, i: int, j: int, radius: float, n: int = 20000, shift: float = 0.0) -> float:
    """Exact-in-y area fraction of cell (i, j) inside the circle (centre 0.5, ``radius``), by the chord in y.

    Independent of :func:`fov_token_mask`'s 2-D supersampling: for each of ``n``
    x positions the circle's chord is clipped to the cell's y range analytically.
    ``shift``: the window moved by that many cells (-0.5: centred on the token, ``centres="token"``).
    """
    x = (j + shift + (np.arange(n) + 0.5) / n) / w - 0.5
    half = np.sqrt(np.clip(radius**2 - x**2, 0.0, None))
    y0, y1 = (i + shift) / h - 0.5, (i + 1 + shift) / h - 0.5
    chord = np.clip(np.minimum(half, y1) - np.maximum(-half, y0), 0.0, None)
    return float(chord.mean() / (y1 - y0))


def test_mask_of_an_8x8_grid_without_margin_leaves_out_three_cells_per_corner() -> None:
    mask = fov_token_mask(8, 8, 0.0, centres="cell")  # grid cells: what models before session 17 were trained with
    frac = np.array([[cell_inside_fraction(8, 8, i, j, 0.5) for j in range(8)] for i in range(8)])
    # No cell is near the 1/2 threshold, so the 16x16 supersampling decides every cell as the exact area does.
    assert np.abs(frac - 0.5).min() > 0.1
    np.testing.assert_array_equal(mask, frac >= 0.5)
    corner = {(0, 0), (0, 1), (1, 0)}  # the corner cell and its two edge neighbours; (1, 1) is 94 % inside
    out = {(i, j) for i, j in corner} | {(i, 7 - j) for i, j in corner} | {(7 - i, j) for i, j in corner} \
        | {(7 - i, 7 - j) for i, j in corner}
    assert {tuple(map(int, p)) for p in np.argwhere(~mask)} == out
    assert int(mask.sum()) == 64 - 12
    np.testing.assert_array_equal(mask, mask[::-1])
    np.testing.assert_array_equal(mask, mask.T)


@pytest.mark.parametrize("n", [8, 10, 12, 16])
def test_token_windows_are_centred_where_the_tokens_look(n: int) -> None:
    # Token j of a stride-s grid looks at model pixel s * j (benchmarks/receptive_fields.py): its window is the
    # grid cell moved half a token up and left. At 8 x 8, token 4 sits on the circle's centre, so the mask is
    # symmetric about token 4 (not about the grid's middle), and token (0, 4) straddles the input's top edge
    # at the circle's top point: 49 % inside by area, exactly half of the 16 x 16 samples, and left out.
    mask = fov_token_mask(n, n, 0.0, centres="token")
    frac = np.array([[cell_inside_fraction(n, n, i, j, 0.5, shift=-0.5) for j in range(n)] for i in range(n)])
    np.testing.assert_array_equal(mask, frac > 0.5)  # the samples decide every token as the exact area does
    np.testing.assert_array_equal(mask, mask.T)
    c = n // 2
    inner = mask[1:, 1:]  # rows/columns 1..n-1: symmetric about token c
    np.testing.assert_array_equal(inner, inner[::-1, ::-1])
    assert not np.array_equal(mask, fov_token_mask(n, n, 0.0))  # the default: grid cells
    assert not mask[c, 0] and not mask[0, c] and 0.48 < frac[0, c] < 0.5
    if n == 8:
        assert int(mask.sum()) == 45 and int(fov_token_mask(8, 8, 0.0, centres="cell").sum()) == 52


def test_a_wider_margin_shrinks_the_circle_and_every_2x2_cell_is_inside() -> None:
    assert fov_token_mask(2, 2, centres="cell").all()  # pi/4 of each quarter lies inside
    counts = [int(fov_token_mask(8, 8, m).sum()) for m in (0.0, 0.1, 0.5, 1.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    r = 0.5 / 1.5
    frac = np.array([[cell_inside_fraction(8, 8, i, j, r) for j in range(8)] for i in range(8)])
    np.testing.assert_array_equal(fov_token_mask(8, 8, 0.5, centres="cell"), frac >= 0.5)


def model_8x8(variant: str = "uopsl", attention: str = "cosine", mask: bool = True) -> UopslModel:
    model, _ = tiny_model(variant)
    torch.manual_seed(0)
    cfg = replace(model.config, attention=attention, fov_token_mask=mask)  # type: ignore[arg-type]
    return UopslModel(cfg, model.class_text.numpy()).eval()


@pytest.mark.parametrize("use_sites", [True, False])
@pytest.mark.parametrize("variant", ["uopsl", "p_only", "fundus_only"])
def test_maps_are_exactly_zero_outside_the_fov_and_sum_to_one_inside(variant: str, use_sites: bool) -> None:
    model = model_8x8(variant)
    feat = torch.randn(3, model.fundus.encoder.channels, GRID, GRID) * 3
    with torch.no_grad():
        maps = model.forward_features(feat, use_sites)["site_maps"]
    out = torch.from_numpy(~fov_token_mask(GRID, GRID))
    assert torch.all(maps[:, :, out] == 0)
    assert torch.all(maps[:, :, ~out] > 0)
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(3, maps.shape[1]), atol=1e-6)


def test_tokens_outside_the_fov_do_not_change_the_site_features() -> None:
    model = model_8x8()
    tokens = torch.randn(2, GRID * GRID, model.config.dim)
    inside = model.inside_tokens(GRID, GRID, tokens.device)
    assert inside is not None
    changed = tokens.clone()
    changed[:, ~inside] = torch.randn(2, int((~inside).sum()), model.config.dim) * 100
    with torch.no_grad():
        z, maps = model.sites(tokens, model.site_queries(), inside)
        z2, maps2 = model.sites(changed, model.site_queries(), inside)
    assert torch.equal(maps[:, :, ~inside], torch.zeros_like(maps[:, :, ~inside]))
    assert torch.allclose(z, z2, atol=1e-6) and torch.allclose(maps, maps2, atol=1e-7)


def test_p_only_stage1_site_loss_ignores_tokens_outside_the_fov() -> None:
    """Stage 1 of ``p_only`` trains P on fundus tokens: with the same mask as stage 2 and deployment."""
    from uopsl.train.loops import TrainConfig, pretrain_losses

    model = model_8x8("p_only")
    channels = model.fundus.encoder.channels
    feat = torch.randn(2, channels, GRID, GRID)
    inside = torch.from_numpy(fov_token_mask(GRID, GRID)).reshape(GRID, GRID)
    changed = feat.clone()
    changed[:, :, ~inside] = torch.randn(2, channels, int((~inside).sum())) * 100
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])[:, : len(model.config.classes)]
    loss = pretrain_losses(model, TrainConfig(), features=True)
    with torch.no_grad():
        a, b = loss(feat, y), loss(changed, y)
    assert torch.allclose(a["site"], b["site"], atol=1e-6)
    assert not torch.allclose(a["fundus"], b["fundus"])  # the global vector does see every token


def test_an_empty_token_mask_is_refused() -> None:
    with pytest.raises(ConfigError, match="no token of the 2x2 grid"):
        fov_token_mask(2, 2, 0.5, centres="cell")
    assert fov_token_mask(2, 2, 0.0, centres="cell").all()
    # Centred where it looks, a 1 x 1 grid's token sits on the input's corner: a quarter of a circle's disc.
    with pytest.raises(ConfigError, match="no token of the 1x1 grid"):
        fov_token_mask(1, 1, centres="token")
    with pytest.raises(ConfigError, match="token centres must be"):
        fov_token_mask(8, 8, centres="middle")  # type: ignore[arg-type]


def test_oct_branch_attends_to_every_token() -> None:
    model = model_8x8()
    with torch.no_grad():
        maps = model.oct_forward(torch.randn(2, model.oct.encoder.channels, GRID, GRID), features=True)["site_maps"]  # type: ignore[union-attr]
    assert torch.all(maps > 0)  # a B-scan has no FOV circle


def test_config_without_the_key_loads_without_the_mask_and_computes_as_before(tmp_path: Path) -> None:
    assert ModelConfig().fov_token_mask is True  # new models
    assert ModelConfig.from_dict({}).fov_token_mask is False
    old = model_8x8(mask=False)
    _, meta = tiny_model()
    save_model(tmp_path, old, replace(meta, model=old.config))
    ckpt = tmp_path / "checkpoint.json"
    raw = json.loads(ckpt.read_text())
    for key in ("fov_token_mask", "fov_margin", "token_centres"):  # a checkpoint older than the fields
        del raw["model"][key]
    ckpt.write_text(json.dumps(raw))
    loaded, meta2 = load_model(tmp_path)
    loaded.eval()
    assert meta2.model.fov_token_mask is False and loaded.inside_tokens(GRID, GRID, torch.device("cpu")) is None
    feat = torch.randn(2, loaded.fundus.encoder.channels, GRID, GRID)
    with torch.no_grad():
        a, b = old.forward_features(feat), loaded.forward_features(feat)
        # the pre-mask computation, spelled out: softmax over all T tokens, no masked_fill
        tokens, glob, _ = loaded.fundus.from_features(feat)
        att = loaded.sites.logits(tokens, loaded.site_queries()).softmax(dim=-1)
        before = att.reshape(2, loaded.num_classes, loaded.config.sites, -1).mean(dim=2)
    assert torch.equal(b["site_maps"].flatten(2), before)  # same instance, same ops: bit-identical
    assert torch.all(b["site_maps"] > 0)  # corners included, as before
    # two instances differ only in memory alignment (SIMD summation order, ~1e-7)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-6)
    assert not DeployModel(loaded, SIZE).masked


def test_a_checkpoint_without_token_centres_keeps_its_grid_cell_mask(tmp_path: Path) -> None:
    # Checkpoints written before the field judged tokens by their grid cells (still the default); they must load
    # with that mask, in training code and in the exported graph alike, and a "token" model must keep its own.
    assert ModelConfig().token_centres == "cell" and ModelConfig.from_dict({}).token_centres == "cell"
    model = model_8x8()
    _, meta = tiny_model()
    cell_model = copy.deepcopy(model)
    cell_model.config = replace(model.config, token_centres="cell")
    save_model(tmp_path, cell_model, replace(meta, model=cell_model.config))
    ckpt = tmp_path / "checkpoint.json"
    raw = json.loads(ckpt.read_text())
    del raw["model"]["token_centres"]
    ckpt.write_text(json.dumps(raw))
    loaded, meta2 = load_model(tmp_path)
    cells = fov_token_mask(GRID, GRID, centres="cell")
    assert meta2.model.token_centres == "cell"
    np.testing.assert_array_equal(loaded.inside_tokens(GRID, GRID, torch.device("cpu")).numpy(), cells.reshape(-1))
    assert DeployModel(loaded.eval(), SIZE).inside_idx.numel() == int(cells.sum()) == 52
    with pytest.raises(ConfigError, match="token centres must be"):
        replace(model.config, token_centres="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("attention", ["cosine", "dot"])
@pytest.mark.parametrize("variant", ["uopsl", "p_only", "fundus_only"])
def test_deploy_graph_equals_training_model_with_the_mask(variant: str, attention: str) -> None:
    model = model_8x8(variant, attention)
    x = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = model(x.permute(0, 3, 1, 2).float())
        deploy = DeployModel(model, SIZE)
        probs, logits, maps = deploy(x)
    assert deploy.masked and deploy.inside_idx.numel() == int(fov_token_mask(GRID, GRID).sum()) == 52
    assert torch.allclose(logits, ref["logits"], atol=1e-4), (logits - ref["logits"]).abs().max()
    assert torch.allclose(probs, model.probs(ref["logits"]), atol=1e-5)
    assert maps.shape == (2, model.num_classes, GRID, GRID)
    assert torch.allclose(maps, ref["site_maps"], atol=1e-6)
    out = torch.from_numpy(~fov_token_mask(GRID, GRID))
    assert torch.all(maps[:, :, out] == 0)


def test_onnx_graph_gathers_the_inside_tokens_and_matches_pytorch(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from uopsl.export.onnx_export import export_onnx

    model = model_8x8()
    deploy = DeployModel(model, SIZE)
    report = export_onnx(deploy, tmp_path / "m.onnx", SIZE)
    assert report.outputs["site_maps"][1:] == [model.num_classes, GRID, GRID]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "Gather" in ops and not ops & {"ScatterND", "ScatterElements", "Pad", "Where"}
    # The Softmax reads the attention logits of the inside tokens only: no additive mask before it.
    softmax = [n for n in graph.node if n.op_type == "Softmax" and not n.name.startswith("/trunk/")]
    assert softmax
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probs, logits, maps = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        ref = deploy(torch.from_numpy(x))
    assert np.abs(logits - ref[1].numpy()).max() <= 1e-4
    assert np.abs(maps - ref[2].numpy()).max() <= 1e-4
    assert np.all(maps[:, :, ~fov_token_mask(GRID, GRID)] == 0)


def test_a_model_too_small_for_its_site_attention_is_named_when_made(caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.train.workflow import new_model

    with caplog.at_level("WARNING", logger="uopsl.train.workflow"):
        new_model(("normal", "dr"), backbone="resnet18", init="random", size=64)
        new_model(("normal", "dr"), backbone="resnet18", init="random", size=32)
    assert "4 token(s) of the field of view" in caplog.text and "2x2 grid" in caplog.text
    assert "1 token(s) of the field of view" in caplog.text and "1x1 grid" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="uopsl.train.workflow"):
        model, _ = new_model(("normal", "dr"), backbone="resnet18", init="random", size=256)
        new_model(("normal", "dr"), backbone="resnet18", init="random", size=96)  # 9 cells of 9
        new_model(("normal", "dr"), backbone="resnet18", init="random", size=300)  # cells: no window to drift
    assert not [r for r in caplog.records if r.name == "uopsl.train.workflow"]  # other loggers may speak
    assert model.inside_tokens(8, 8, torch.device("cpu")).sum() == 52  # the grid a 256 px input gives
    # Judged where they look, 32 px leaves no token inside (one, on the input's corner): refused when the mask is
    # made, whatever the variant; 300 px windows drift from where the tokens look, and that is said.
    cfg = ModelConfig(backbone="resnet18", init="random", classes=("normal", "dr"), token_centres="token")
    with pytest.raises(ConfigError, match=r"no token of the 1x1 grid.*--size"):
        cfg.token_mask(1, 1)
    assert int(cfg.token_mask(8, 8).sum()) == 45  # type: ignore[union-attr]
