"""Zero-shot readings (uopsl.train.zero_shot): the scores, the negatives, the comparison, the CLI table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainhelpers import tiny_model, tiny_synth

from uopsl.runtime.clikit import main_entry
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.metrics import paired_auc_difference, roc_auc
from uopsl.train.checkpoint import save_model
from uopsl.train.cli import cli
from uopsl.train.stages import FeatureDataset
from uopsl.train.zero_shot import compare, healthy_only, reading_scores, site_comparisons


def _features(model: torch.nn.Module, n: int = 10) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(n, model.fundus.encoder.channels, 4, 4)


def _cached(feats: torch.Tensor) -> FeatureDataset:
    return FeatureDataset(feats, np.zeros((len(feats), 3), np.float32))


def test_raw_reading_is_what_the_logits_rank_by() -> None:
    model, _ = tiny_model()
    feats = _features(model)
    scores = reading_scores(model, _cached(feats), batch_size=4)
    for arm, use_sites in (("site_attention", True), ("no_site_attention", False)):
        with torch.no_grad():
            logits = model.forward_features(feats, use_sites)["logits"]
            cos = ((logits - model.bias) / model.tau).numpy()
        np.testing.assert_allclose(scores[arm]["raw"], cos, atol=1e-5)


def test_vs_healthy_scores_each_class_feature_against_the_healthy_description() -> None:
    model, _ = tiny_model()  # classes normal, a, b: normal is the healthy class
    ref = model.reference_class()
    assert ref == 0
    feats = _features(model)
    both = reading_scores(model, _cached(feats), batch_size=3)
    scores = both["site_attention"]
    with torch.no_grad():
        tokens, glob, (h, w) = model.fundus.from_features(feats)
        fused, _, _ = model.fused_features(tokens, glob, True, model.inside_tokens(h, w, feats.device))
        fn = F.normalize(fused, dim=-1)
        e = model.prototypes()
        expected = ((fn * e).sum(-1) - (fn * e[ref]).sum(-1)).numpy()
    np.testing.assert_allclose(scores["vs_healthy"], expected, atol=1e-5)
    assert np.all(scores["vs_healthy"][:, ref] == 0)
    # Without site attention every class shares one feature: the reading is raw_k - raw_healthy.
    plain = both["no_site_attention"]
    np.testing.assert_allclose(plain["vs_healthy"], plain["raw"] - plain["raw"][:, [ref]], atol=1e-5)


def test_healthy_only_excludes_images_with_any_other_label() -> None:
    t = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert healthy_only(t, 0).tolist() == [True, False, False, True, False]
    assert healthy_only(t, None) is None


def test_compare_gives_both_aucs_and_a_paired_interval_around_their_difference() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(60)].astype(bool)
    without = rng.standard_normal(100) + 0.8 * y
    with_sites = without + 0.6 * y + 0.3 * rng.standard_normal(100)
    c = compare(y, with_sites, without, n_boot=400, seed=1)
    assert c.with_sites == pytest.approx(roc_auc(y, with_sites)) and c.without == pytest.approx(roc_auc(y, without))
    assert c.difference == pytest.approx(c.with_sites - c.without)
    assert c.low is not None and c.high is not None and c.low <= c.difference <= c.high and c.low > 0
    assert c.p_value is not None and c.p_value < 0.05 and (c.n_positive, c.n_negative) == (40, 60)
    assert compare(y, with_sites, without, n_boot=400, seed=1) == c  # seeded: reproducible
    same = compare(y, without, without, n_boot=200)
    assert same.difference == 0 and same.low == 0 and same.high == 0
    undefined = compare(np.ones(5, bool), np.arange(5.0), np.arange(5.0))
    assert undefined.with_sites is None and undefined.difference is None and undefined.n_negative == 0


def test_degenerate_delong_gives_no_p_and_small_comparisons_are_flagged(caplog: pytest.LogCaptureFixture) -> None:
    # The review's input: 2 positives, 3 negatives; with sites separates perfectly, without is constant.
    y = np.array([1, 1, 0, 0, 0], bool)
    c = compare(y, np.array([0.9, 0.8, 0.1, 0.2, 0.3]), np.full(5, 0.5), n_boot=200)
    assert (c.with_sites, c.without, c.difference) == (1.0, 0.5, 0.5)
    assert c.p_value is None and c.small_sample  # was delong_p 0.0
    d = c.to_dict()
    assert d["delong_p"] is None and d["small_sample"] is True and d["bootstrap_unit"] == "image"
    assert any(n.startswith("DeLong p n/a: DeLong variance estimate is zero") for n in d["notes"])
    assert any(n.startswith("small sample (2 positives, 3 negatives") for n in d["notes"])
    assert d["difference_ci95"] == [0.5, 0.5] and any("zero-width interval" in n for n in d["notes"])
    t = np.zeros((5, 2))
    t[:2, 1] = 1
    t[2:, 0] = 1
    s = {"raw": np.stack([np.zeros(5), [0.9, 0.8, 0.1, 0.2, 0.3]], 1)}
    s0 = {"raw": np.stack([np.zeros(5), np.full(5, 0.5)], 1)}
    with caplog.at_level(logging.WARNING, logger="uopsl.train.zero_shot"):
        out = site_comparisons(t, ["x", "rp"], None, s, s0, n_boot=50)
    assert out["raw"]["all"]["rp"]["delong_p"] is None
    assert "rp (raw reading, all negatives): DeLong p n/a" in caplog.text
    assert "fewer than 10 positives or negatives" in caplog.text
    assert "rp (raw reading, all negatives): 2+/3-" in caplog.text


def test_compare_resamples_patients_when_they_are_known() -> None:
    rng = np.random.default_rng(0)
    dis = rng.random(50) < 0.4
    y = np.repeat(dis, 2)  # both eyes of a patient share the label and part of the score
    shared = np.repeat(rng.standard_normal(50), 2)
    without = shared + rng.standard_normal(100) * 0.5 + 0.8 * y
    with_sites = without + 0.6 * y + 0.3 * rng.standard_normal(100)
    pid = np.repeat(np.arange(50), 2)
    c = compare(y, with_sites, without, n_boot=400, seed=1, clusters=pid)
    ref = paired_auc_difference(y, without, with_sites, n_boot=400, seed=1, clusters=pid)
    assert c.bootstrap_unit == "patient" and (c.low, c.high) == (ref.low, ref.high)
    assert any("DeLong's p treats the 100 images as independent; they come from 50 patients" in n for n in c.notes)
    alone = compare(y, with_sites, without, n_boot=400, seed=1, clusters=np.arange(100))
    assert alone == compare(y, with_sites, without, n_boot=400, seed=1)  # one image per patient: as before
    t = np.stack([~y, y], 1).astype(float)
    out = site_comparisons(t, ["normal", "dr"], 0, {"raw": np.stack([with_sites] * 2, 1)},
                           {"raw": np.stack([without] * 2, 1)}, n_boot=100, clusters=pid)
    assert out["raw"]["all"]["dr"]["bootstrap_unit"] == "patient"
    with pytest.raises(ConfigError, match="one id per image"):
        site_comparisons(t, ["normal", "dr"], 0, {"raw": t}, {"raw": t}, clusters=pid[:10])


def test_site_comparisons_take_the_right_negatives_and_leave_out_the_healthy_class() -> None:
    # 0 normal (healthy), 1 dr, 2 rp (unseen): rows 0-3 healthy only, 4-6 dr, 7-9 rp, row 10 dr + rp.
    t = np.zeros((11, 3))
    t[:4, 0] = 1
    t[4:7, 1] = 1
    t[7:10, 2] = 1
    t[10, [1, 2]] = 1
    rng = np.random.default_rng(0)
    s = {r: rng.standard_normal((11, 3)) for r in ("raw", "vs_healthy")}
    s2 = {r: rng.standard_normal((11, 3)) for r in ("raw", "vs_healthy")}
    out = site_comparisons(t, ["normal", "dr", "rp"], 0, s, s2, n_boot=100)
    assert set(out) == {"raw", "vs_healthy"} and set(out["raw"]) == {"all", "healthy"}
    assert "normal" in out["raw"]["all"] and "normal" not in out["raw"]["healthy"]
    assert "normal" not in out["vs_healthy"]["all"]
    rp_all, rp_healthy = out["raw"]["all"]["rp"], out["raw"]["healthy"]["rp"]
    assert (rp_all["n_positive"], rp_all["n_negative"]) == (4, 7)
    assert (rp_healthy["n_positive"], rp_healthy["n_negative"]) == (4, 4)  # the dr eyes are not negatives here
    rows = np.r_[0:4, 7:11]
    assert rp_healthy["with_sites"] == pytest.approx(roc_auc(t[rows, 2] > 0, s["raw"][rows, 2]))
    # Without a healthy class: the raw reading against every other image only.
    bare = site_comparisons(t, ["a", "b", "c"], None, {"raw": s["raw"]}, {"raw": s2["raw"]}, n_boot=100)
    assert set(bare) == {"raw"} and set(bare["raw"]) == {"all"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_synth(tmp_path_factory.mktemp("synth_zs"), 12)


def test_cli_prints_the_readings_table_and_writes_them(synth: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    rc = main_entry(cli, ["zero-shot", "--keep-ungradable",
                          str(tmp_path / "ck"), "--data", f"synthetic:{synth}", "--classes",
                          "normal,dr,dme", "--out", str(tmp_path / "zs"), "--n-boot", "100"], prog_name="uopsl")
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads((tmp_path / "zs" / "zero_shot.json").read_text())
    assert res["healthy_class"] == "normal" and set(res["readings"]) == {"raw", "vs_healthy"}
    assert "95 % CI" in out and "vs normal" in out and "normal only" in out
    defined = [(r, n, c) for r, b in res["readings"].items() for n, blk in b.items() for c, row in blk.items()
               if row["with_sites"] is not None]
    table = [line for line in out.splitlines() if line.strip().startswith(("class", "normal", "dr", "dme"))]
    assert len(table) == len(defined) + 1 > 1 and table[0].split()[:2] == ["class", "reading"]
    # Columns line up: every row puts its AUCs where the header's "with sites" column ends.
    end = table[0].index("with sites") + len("with sites")
    assert all(line[end - 6 : end].replace(".", "").isdigit() for line in table[1:])
    # The summary keys are the raw reading against every other image: one figure per class, not two.
    raw_all = res["readings"]["raw"]["all"]
    for c in ("normal", "dr", "dme"):
        assert res["site_attention"][c] == raw_all[c]["with_sites"]
        assert res["no_site_attention"][c] == raw_all[c]["without"]


def test_cli_without_a_healthy_class_reports_the_description_reading_only(
        synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, meta = tiny_model()
    save_model(tmp_path / "ck", model, meta)
    rc = main_entry(cli, ["zero-shot", "--keep-ungradable",
                          str(tmp_path / "ck"), "--data", f"synthetic:{synth}", "--classes", "dr,dme",
                          "--out", str(tmp_path / "zs"), "--n-boot", "100"], prog_name="uopsl")
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads((tmp_path / "zs" / "zero_shot.json").read_text())
    assert res["healthy_class"] is None and set(res["readings"]) == {"raw"} and set(res["readings"]["raw"]) == {"all"}
    assert "no healthy class in the bank" in out and "vs " not in out


def test_a_difference_from_one_positive_patient_has_no_interval() -> None:
    """Review (session 13): TVHL's pdr (2 photographs, 1 patient) read +0.510 [+0.421, +0.597]; every resample
    kept that patient, and the footnote told readers to trust the interval."""
    rng = np.random.default_rng(0)
    y = np.zeros(40, bool)
    y[:2] = True
    with_sites, without = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    patients = np.array([0, 0] + list(range(1, 39)))
    c = compare(y, with_sites, without, n_boot=200, clusters=patients)
    assert c.difference is not None and c.low is None and c.high is None
    assert any("interval undefined: the positive cases come from one patient" in n for n in c.notes)
    two = compare(y, with_sites, without, n_boot=200)  # two positive images, patients unknown: two units
    assert two.low is not None and two.high is not None


def test_two_readings_at_the_ceiling_give_no_delong_p_and_say_why() -> None:
    """Both AUCs 1.0: DeLong's variance estimate is 0, and it read p = 1.000 with a [0, 0] interval and no note
    (a review of the outputs, session 30)."""
    y = np.r_[np.ones(12), np.zeros(20)].astype(bool)
    a = np.r_[np.linspace(0.6, 0.9, 12), np.linspace(0.0, 0.4, 20)]
    c = compare(y, a, a * 0.5, n_boot=200)
    assert (c.with_sites, c.without, c.difference) == (1.0, 1.0, 0.0)
    d = c.to_dict()
    assert d["delong_p"] is None and any(n.startswith("DeLong p n/a: its variance estimate is 0") for n in d["notes"])
    assert d["difference_ci95"] == [0.0, 0.0] and any("zero-width interval" in n for n in d["notes"])
