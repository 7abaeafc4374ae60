"""The synthetic retina generator: determinism, lesion sites, labels, dataset files, CLI, preprocessing fit."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import preprocess
from uopsl.train import synthetic as sy
from uopsl.train.commands.synth import command as synth_command

REPO = Path(__file__).resolve().parents[1]


def _fundus(seed: int, labels, size: int = 256, **kw) -> sy.SynthImage:
    return sy.generate_fundus(np.random.default_rng(seed), labels, size, **kw)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


# ------------------------------------------------------------------ import hygiene


def test_import_does_not_load_torch():
    code = ("import sys, uopsl.train.synthetic, uopsl.train.commands.synth; "
            "bad = [m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"importing the generator loaded {proc.stdout.strip()} {proc.stderr[-500:]}"


# ------------------------------------------------------------------ single images


def test_fundus_is_deterministic_for_a_seed_and_varies_across_seeds():
    a, b = _fundus(7, ("dr", "dme")), _fundus(7, ("dr", "dme"))
    assert a.image.dtype == np.uint8 and a.image.shape == (256, 256, 3)
    assert np.array_equal(a.image, b.image)
    assert a.masks.keys() == b.masks.keys() == {"dr", "dme"}
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.meta == b.meta
    c = _fundus(8, ("dr", "dme"))
    assert not np.array_equal(a.image, c.image)


def test_oct_is_deterministic_and_grayscale():
    a = sy.generate_oct(np.random.default_rng(3), ("amd",), 320, 140)
    b = sy.generate_oct(np.random.default_rng(3), ("amd",), 320, 140)
    assert a.image.shape == (140, 320) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks["amd"], b.masks["amd"])


def _site_distances(im: sy.SynthImage, cls: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    ys, xs = np.nonzero(im.masks[cls])
    fx, fy = im.meta["fovea"]
    dx, dy, _ = im.meta["disc"]
    r = im.meta["fov"][2]
    return np.hypot(xs - fx, ys - fy) / r, np.hypot(xs - dx, ys - dy) / r, r, np.stack([xs, ys], 1)


@pytest.mark.parametrize("cls", sy.DISEASE_CLASSES)
def test_fundus_site_masks_are_nonempty_inside_the_fov_and_at_the_class_site(cls):
    for seed in range(4):
        # the weakest allowed severity included: even subtle cases must have a site
        im = _fundus(seed, (cls,), severity={cls: 0.15} if seed == 0 else None)
        m = im.masks[cls]
        assert set(im.masks) == {cls} and m.dtype == np.uint8 and m.shape == im.image.shape[:2]
        assert set(np.unique(m)) <= {0, 1} and m.sum() > 0, f"{cls} seed {seed}: empty mask"
        cx, cy, r = im.meta["fov"]
        yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
        outside = (xx - cx) ** 2 + (yy - cy) ** 2 > (r + 0.5) ** 2
        assert not m[outside].any(), f"{cls} seed {seed}: mask outside the field of view"
        d_fovea, d_disc, _, _ = _site_distances(im, cls)
        rd = im.meta["disc"][2] / r
        if cls == "dr":  # posterior pole, inside the arcades, not on the disc
            assert np.quantile(d_fovea, 0.95) < 0.8 and np.quantile(d_disc, 0.05) > rd
        elif cls in ("dme", "amd"):  # macula
            assert np.median(d_fovea) < 0.2 and d_fovea.max() < 0.45
        elif cls == "macular_hole":  # fovea
            assert d_fovea.max() < 0.15
        elif cls == "glaucoma":  # disc and its nerve-fibre layer, as far out as the wedge darkens (0.34 R)
            assert np.median(d_disc) < 0.2 and 0.31 < d_disc.max() < 0.35
        elif cls == "rp":  # mid-periphery, not the macula
            assert np.quantile(d_fovea, 0.1) > 0.3 and np.median(d_fovea) > 0.5


def test_normal_fundus_has_no_masks_and_labels_are_validated():
    for labels in ((), ("normal",), "normal", ""):
        im = _fundus(1, labels)
        assert im.labels == () and im.masks == {} and im.label_string == "normal"
    assert _fundus(1, "dme;dr").labels == ("dr", "dme")  # canonical order
    assert _fundus(1, ("dr",), with_masks=False).masks == {}
    with pytest.raises(ConfigError, match="cannot be combined"):
        _fundus(1, ("normal", "dr"))
    with pytest.raises(ConfigError, match="unknown labels"):
        _fundus(1, ("cataract",))
    with pytest.raises(ConfigError, match="eye must be"):
        _fundus(1, (), eye="both")
    with pytest.raises(ConfigError, match="severity of 'dr'"):
        _fundus(1, ("dr",), severity={"dr": 1.5})


def test_eye_puts_the_disc_on_the_nasal_side():
    for eye, sign in (("right", 1), ("left", -1)):
        for seed in range(3):
            im = _fundus(seed, (), eye=eye)
            assert im.meta["eye"] == eye
            assert sign * (im.meta["disc"][0] - im.meta["fovea"][0]) > 0.4 * im.meta["fov"][2]
            # and the disc really is the brightest blob there
            g = cv2.GaussianBlur(im.image[:, :, 1], (0, 0), 4)
            _, _, _, (bx, by) = cv2.minMaxLoc(g)
            assert np.hypot(bx - im.meta["disc"][0], by - im.meta["disc"][1]) < 2.5 * im.meta["disc"][2]


@pytest.mark.parametrize("cls", sy.DISEASE_CLASSES)
def test_oct_site_masks_are_at_the_class_site(cls):
    w, h = 384, 168
    for seed in range(3):
        im = sy.generate_oct(np.random.default_rng(seed), (cls,), w, h)
        m = im.masks[cls]
        assert m.shape == (h, w) and m.sum() > 0
        ys, xs = np.nonzero(m)
        off = np.abs(xs - im.meta["fovea_x"]) / w
        if cls in ("dme", "amd", "macular_hole"):  # at the fovea (a 6 mm scan: 0.3 W is about 1.8 mm)
            assert np.median(off) < 0.15 and off.max() < 0.3
        elif cls == "dr":  # inner retina around the fovea
            assert off.max() < 0.4
        elif cls == "rp":  # outer retina outside the central island
            assert off.min() > 0.08
        elif cls == "glaucoma":  # nerve-fibre layer across the scan, in the upper part of the retina
            assert len(np.unique(xs)) > 0.9 * w
        # the mask lies within the retina, not in the vitreous or deep choroid
        rows = im.image.astype(float).mean(axis=1)
        assert ys.min() > 0.05 * h and ys.max() < h - 2
        assert rows[: int(0.1 * h)].mean() < rows.max() * 0.6


def test_oct_normal_has_layers_and_a_foveal_pit():
    im = sy.generate_oct(np.random.default_rng(0), (), 512, 224)
    assert im.masks == {}
    img = cv2.GaussianBlur(im.image.astype(np.float32), (0, 0), 2)
    # inner-retina surface: first row per column clearly above the vitreous level
    vitreous = float(np.median(img[:10]))
    top = np.argmax(img > vitreous + 0.5 * (img.max() - vitreous), axis=0)
    xf = int(im.meta["fovea_x"])
    assert top[xf] > top[max(0, xf - 120)] and top[xf] > top[min(511, xf + 120)]  # pit is deeper
    profile = img[:, xf - 60]
    peaks = np.flatnonzero((profile[1:-1] > profile[:-2]) & (profile[1:-1] >= profile[2:])
                           & (profile[1:-1] > vitreous + 20))
    assert len(peaks) >= 3  # several reflective bands (NFL, ..., RPE)


# ------------------------------------------------------------------ labels and configuration


def test_label_distribution_follows_the_config():
    rng = np.random.default_rng(0)
    n = 4000

    def binomial_ok(count: int, p: float) -> bool:
        return abs(count / n - p) < 4 * (p * (1 - p) / n) ** 0.5

    # without extra labels: normal with p_normal, else one class, uniformly
    single = sy.SynthConfig(p_extra=0.0, co_occurrence=())
    draws = [sy.sample_labels(rng, single) for _ in range(n)]
    assert all(len(d) <= 1 for d in draws)
    counts = Counter(d[0] if d else "normal" for d in draws)
    assert binomial_ok(counts["normal"], single.p_normal)
    for c in sy.SEEN_CLASSES:
        assert binomial_ok(counts[c], (1 - single.p_normal) / len(sy.SEEN_CLASSES)), (c, counts)
    assert set(counts) == {"normal", *sy.SEEN_CLASSES}  # unseen classes never drawn unless asked

    # defaults: multi-label, DR and DME co-occur, still no unseen class
    draws = [sy.sample_labels(rng, sy.SynthConfig()) for _ in range(n)]
    assert binomial_ok(sum(1 for d in draws if not d), sy.SynthConfig().p_normal)
    assert sum(1 for d in draws if set(d) == {"dr", "dme"}) > 0.03 * n
    assert {c for d in draws for c in d} == set(sy.SEEN_CLASSES)

    with_unseen = sy.SynthConfig(classes=sy.DISEASE_CLASSES)
    drawn = Counter(c for _ in range(600) for c in sy.sample_labels(rng, with_unseen))
    assert drawn["rp"] > 0 and drawn["macular_hole"] > 0

    only_dr = sy.SynthConfig(class_weights=(1, 0, 0, 0), p_extra=0.0, co_occurrence=(), p_normal=0.5)
    assert {d for d in (sy.sample_labels(rng, only_dr) for _ in range(300))} == {(), ("dr",)}


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": ("dr", "bogus")}, "unknown synthetic classes"),
    ({"classes": ("normal",)}, "implicit"),
    ({"classes": ()}, "at least one"),
    ({"p_normal": 1.5}, "p_normal"),
    ({"class_weights": (1.0, 2.0)}, "class_weights"),
    ({"severity": (0.0, 1.0)}, "severity"),
    ({"size": 16}, "size"),
    ({"fundus_format": "gif"}, "fundus_format"),
    ({"co_occurrence": (("dr", "xx", 0.5),)}, "co_occurrence"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sy.SynthConfig(**kwargs)


def test_config_round_trips_through_json():
    cfg = sy.SynthConfig(size=128, classes=("dr", "rp"), seed=5, oct_width=200)
    back = sy.SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.oct_shape == (round(200 * 7 / 16), 200)
    with pytest.raises(ConfigError, match="unknown synthetic config parameters"):
        sy.SynthConfig.from_dict({"sise": 3})


def test_overall_brightness_is_not_a_label_shortcut():
    """Mean field-of-view brightness (what preprocessing reports) must not tell a class from normal."""
    def brightness(cls: str, n: int) -> np.ndarray:
        labels = () if cls == "normal" else (cls,)
        out = []
        for i in range(n):
            im = sy.generate_fundus(np.random.default_rng([sy.ALL_CLASSES.index(cls), i]), labels, 128,
                                    with_masks=False)
            out.append(preprocess(im.image).mean_intensity)
        return np.asarray(out)

    normal = brightness("normal", 120)
    for cls in sy.DISEASE_CLASSES:
        auc = _auc(brightness(cls, 60), normal)
        # 0.5 = no information; with 60 vs 120 images the standard error is about 0.045
        assert 0.35 < auc < 0.65, f"{cls}: brightness alone separates it from normal (AUC {auc:.2f})"


def test_real_preprocessing_finds_the_generated_field_of_view():
    size = 256
    for seed in range(12):
        rng = np.random.default_rng(seed)
        im = sy.generate_fundus(rng, sy.sample_labels(rng, sy.SynthConfig()), size, with_masks=False)
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(im.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        geom = preprocess(enc.tobytes()).geometry
        cx, cy, r = im.meta["fov"]
        assert geom.fov_found, f"seed {seed}: no field of view found (fill {geom.fov_fill:.2f})"
        err = max(abs(geom.cx - cx), abs(geom.cy - cy), abs(geom.radius - r))
        # the detector works on a 256 px copy and fits a circle to a blurred edge: a few pixels
        assert err < 0.015 * size, f"seed {seed}: fitted circle off by {err:.1f} px"


# ------------------------------------------------------------------ datasets


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == sy.CSV_COLUMNS
        return list(reader)


def test_make_dataset_writes_images_masks_and_one_csv(tmp_path):
    cfg = sy.SynthConfig(size=128, classes=sy.DISEASE_CLASSES, seed=3)
    csv_path = sy.make_dataset(tmp_path / "ds", 14, 6, cfg, workers=1, progress=False)
    root = csv_path.parent
    assert csv_path == tmp_path / "ds" / "labels.csv"
    rows = _read_csv(csv_path)
    assert len(rows) == 20 and Counter(r["modality"] for r in rows) == {"fundus": 14, "oct": 6}
    assert json.loads((root / "synth_config.json").read_text())["config"]["seed"] == 3
    oct_h, oct_w = cfg.oct_shape
    for i, row in enumerate(rows):
        img = cv2.imread(str(root / row["path"]), cv2.IMREAD_UNCHANGED)
        if row["modality"] == "fundus":
            assert row["path"].startswith("fundus/") and row["path"].endswith(".jpg")
            assert img.shape == (128, 128, 3)
        else:
            assert row["path"].startswith("oct/") and row["path"].endswith(".png")
            assert img.shape == (oct_h, oct_w)
        labels = row["labels"].split(";")
        assert labels == ["normal"] or set(labels) <= set(sy.DISEASE_CLASSES)
        assert row["eye"] in ("right", "left") and row["patient"]
        if labels == ["normal"]:
            assert row["masks"] == ""
        else:
            assert row["masks"].startswith("masks/")
            masks = sy.load_masks(root / row["masks"])
            assert sorted(masks) == sorted(labels)
            assert all(m.shape == img.shape[:2] and m.any() for m in masks.values())
    # patients are pairs of eyes
    fundus = [r for r in rows if r["modality"] == "fundus"]
    assert [r["eye"] for r in fundus[:2]] == ["right", "left"] and fundus[0]["patient"] == fundus[1]["patient"]


def test_make_dataset_without_masks_and_png(tmp_path):
    cfg = sy.SynthConfig(size=96, fundus_format="png", p_normal=0.0)
    csv_path = sy.make_dataset(tmp_path, 4, 0, cfg, write_masks=False, progress=False)
    rows = _read_csv(csv_path)
    assert all(r["masks"] == "" and r["path"].endswith(".png") for r in rows)
    assert not (tmp_path / "masks").exists()


def test_make_dataset_is_byte_identical_across_workers_and_resumes(tmp_path):
    cfg = sy.SynthConfig(size=96, classes=sy.DISEASE_CLASSES, seed=11)
    one = sy.make_dataset(tmp_path / "one", 10, 4, cfg, workers=1, progress=False).parent
    two = sy.make_dataset(tmp_path / "two", 10, 4, cfg, workers=2, progress=False).parent
    digest = _tree_digest(one)
    assert digest == _tree_digest(two)

    # a complete folder: rerun does nothing (not even rewriting the CSV)
    stamps = {p: p.stat().st_mtime_ns for p in one.rglob("*") if p.is_file()}
    sy.make_dataset(one, 10, 4, cfg, workers=1, progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in one.rglob("*") if p.is_file()}

    # interrupted run: missing files are regenerated identically
    row = next(r for r in _read_csv(one / "labels.csv") if r["masks"])
    (one / row["path"]).unlink()
    (one / row["masks"]).unlink()
    (one / "labels.csv").unlink()
    sy.make_dataset(one, 10, 4, cfg, workers=1, progress=False)
    assert _tree_digest(one) == digest

    # other settings over the same folder are refused, not mixed
    with pytest.raises(ConfigError, match="other settings"):
        sy.make_dataset(one, 12, 4, cfg, progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        sy.make_dataset(tmp_path / "foreign", 2, 0, cfg, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        sy.make_dataset(tmp_path / "afile", 2, 0, cfg, progress=False)
    with pytest.raises(ConfigError, match="n_fundus"):
        sy.make_dataset(tmp_path / "neg", -1, 0, cfg)


def test_npz_bytes_are_stable_and_loadable(tmp_path):
    arrays = {"dr": np.eye(5, dtype=np.uint8), "amd": np.zeros((5, 5), np.uint8)}
    data = sy.npz_bytes(arrays)
    assert data == sy.npz_bytes(dict(reversed(list(arrays.items()))))
    (tmp_path / "m.npz").write_bytes(data)
    back = sy.load_masks(tmp_path / "m.npz")
    assert back.keys() == arrays.keys() and all(np.array_equal(back[k], arrays[k]) for k in arrays)


# ------------------------------------------------------------------ CLI


def test_cli_synth_writes_a_dataset(tmp_path):
    runner = CliRunner()
    out = tmp_path / "s"
    res = runner.invoke(synth_command, ["--out", str(out), "--n", "6", "--n-oct", "2", "--size", "96",
                                        "--seed", "1", "--include-unseen", "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "6 fundus + 2 OCT images" in res.output
    rows = _read_csv(out / "labels.csv")
    assert len(rows) == 8
    saved = json.loads((out / "synth_config.json").read_text())["config"]
    assert saved["classes"] == list(sy.DISEASE_CLASSES) and saved["size"] == 96 and saved["seed"] == 1

    res = runner.invoke(synth_command, ["--out", str(tmp_path / "nm"), "--n", "3", "--size", "96", "--no-masks",
                                        "--classes", "dr,amd", "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = _read_csv(tmp_path / "nm" / "labels.csv")
    assert len(rows) == 6 and all(r["masks"] == "" for r in rows)  # --n-oct defaults to --n
    assert {c for r in rows for c in r["labels"].split(";")} <= {"normal", "dr", "amd"}


def test_cli_synth_rejects_an_unknown_class(tmp_path):
    res = CliRunner().invoke(synth_command, ["--out", str(tmp_path / "x"), "--n", "2", "--classes", "dr,foo"])
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError) and "foo" in str(res.exception)
    assert not (tmp_path / "x").exists()


def test_uopsl_synth_runs_as_a_console_command(tmp_path):
    """Through the real ``uopsl`` group (lazy registration in train/cli.py) in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", "from uopsl.train.cli import main; main()", "synth", "--out", str(tmp_path / "c"),
         "--n", "2", "--n-oct", "1", "--size", "96", "--workers", "1", "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_read_csv(tmp_path / "c" / "labels.csv")) == 3
