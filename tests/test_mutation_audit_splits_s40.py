"""Mutation audit (session 40) of what keeps a patient, or a copy of a photograph, on one side of a split.

Audited: ``train/datasets/splits.py`` (group keys and links, ``group_kfold``, ``patient_split``, the spec's
hashed ``split=`` / ``fold=`` parts, ``take_shots``, ``check_apart``), ``train/datasets/duplicates.py``
(signatures, their cache, ``similar_pairs``, ``find_duplicates``) and ``train/datasets/tvhl.py``. Each test pins
a behaviour that a single-point bug slipped past the rest of the suite with; its docstring names the mutant
id(s) of the audit's list it catches. Every expected figure is worked out by hand in the test (the dealing
rules of the module docstrings followed step by step, numpy's correlation, the signature recipe, binomial
shares); the photographs are synthetic (``imagekit.draw_fake_fundus``), so the file needs neither the TVHL data
nor a GPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import uopsl.train.datasets.duplicates as dup
from fixtures_data import make_tvhl
from imagekit import draw_fake_fundus
from uopsl.runtime.errors import ConfigError, DataError
from uopsl.runtime.preprocess import PreprocessConfig, preprocess
from uopsl.train.datasets.core import DatasetSource, LabelSpace, Sample
from uopsl.train.datasets.duplicates import DuplicateConfig, find_duplicates, signature, signatures, similar_pairs
from uopsl.train.datasets.splits import (
    check_apart,
    group_keys,
    group_kfold,
    patient_split,
    spec_folds,
    spec_split,
    take_shots,
)
from uopsl.train.datasets.tvhl import read_tvhl


def _img(i: int, label: str, patient: str | None) -> Sample:
    return Sample(Path(f"/x/{i:04d}.png"), (label,), patient=patient)


def _source(samples: list[Sample]) -> DatasetSource:
    classes = tuple(sorted({n for s in samples for n in s.labels}))
    return DatasetSource("set", Path("/x"), tuple(samples), LabelSpace(classes), "fp")


def _fold_of(folds: list[tuple[np.ndarray, np.ndarray]], n: int) -> list[int]:
    where = [-1] * n
    for f, (_, test) in enumerate(folds):
        for i in test.tolist():
            assert where[i] == -1, f"image {i} in two test folds"
            where[i] = f
    assert -1 not in where, "an image in no test fold"
    return where


# -- links ----------------------------------------------------------------------------------------------------
def test_a_link_naming_a_negative_index_is_refused() -> None:
    """S02: a link (i, j) must name samples of the list. Index -1 is no sample; accepted, Python's negative
    indexing silently linked the last sample instead (a copy-of link moved an unrelated patient)."""
    samples = [_img(i, "dr", f"p{i}") for i in range(4)]
    with pytest.raises(ConfigError, match="outside the 4"):
        group_keys(samples, [(-1, 0)])
    with pytest.raises(ConfigError, match="outside the 4"):
        group_keys(samples, [(1, -4)])


# -- group_kfold --------------------------------------------------------------------------------------------
def test_a_fold_takes_the_fewest_images_of_a_class_larger_patients_first() -> None:
    """S10, S15: a group goes to the fold with the fewest *images* of its stratum, larger groups dealt first.
    By hand, one class, k=2, patient A with 3 images and B, C, D with 1: A (dealt first) -> fold 0; B, C and
    D -> fold 1 (0 < 3, 1 < 3, 2 < 3): folds of 3 and 3 images whatever the seed. Dealing the singles first
    gave 2 and 4; counting patients instead of images gave 4 and 2."""
    samples = [_img(i, "dr", "A") for i in range(3)] + [_img(3 + i, "dr", p) for i, p in enumerate("BCD")]
    for seed in range(6):
        where = _fold_of(group_kfold(samples, 2, seed=seed), len(samples))
        assert where == [0, 0, 0, 1, 1, 1], (seed, where)


def test_single_image_patients_of_three_classes_fill_three_folds() -> None:
    """S16: ties in a class's counts go to the fold with the fewest images overall. By hand, k=3 and three
    one-image patients of three classes (each class its own stratum, all as rare): the first -> fold 0, the
    second -> fold 1 (its class is in no fold; fold 1 is emptier than fold 0), the third -> fold 2. Without
    the overall count all three fell in fold 0, leaving two empty test folds."""
    samples = [_img(0, "a", "p0"), _img(1, "b", "p1"), _img(2, "c", "p2")]
    for seed in range(6):
        where = _fold_of(group_kfold(samples, 3, seed=seed), 3)
        assert sorted(where) == [0, 1, 2], (seed, where)


def test_a_patient_with_a_rare_and_a_common_class_is_dealt_as_the_rare_class() -> None:
    """S07: a group's stratum is its *rarest* class. By hand, k=2: patients P1 and P2 each have one image of the
    rare class r and one of c, P3 four images of c (r: 2 images, c: 6). Stratum r is dealt first: the first of
    P1 and P2 (in the seed's order) -> fold 0, the other -> fold 1, so each fold tests one r patient. Taking the
    commonest class as the stratum dealt all three as c, larger first: P3 -> fold 0, then P1 and P2 both to
    fold 1 (all of r in one fold, none in the other)."""
    samples = [_img(0, "r", "P1"), _img(1, "c", "P1"), _img(2, "r", "P2"), _img(3, "c", "P2")]
    samples += [_img(4 + j, "c", "P3") for j in range(4)]
    for seed in range(6):
        where = _fold_of(group_kfold(samples, 2, seed=seed), len(samples))
        assert where[0] == where[1] != where[2] == where[3], (seed, where)


def test_the_rarest_stratum_is_dealt_first() -> None:
    """S11: groups are dealt rarest stratum first. By hand, k=2: p0 one image of a; p1 one of b and one of c;
    p2 one of b (a: 1 image, b: 2, c: 1; p1's stratum is c, its rarest). Dealt a, c, b: p0 -> fold 0; p1 (no c
    anywhere) -> fold 1, the emptier; p2 (no b anywhere) -> fold 0, the emptier: folds of 2 and 2 images. The
    commonest first (b, a, c) ended with p2 and p1 in fold 0: 3 and 1."""
    samples = [_img(0, "a", "p0"), _img(1, "b", "p1"), _img(2, "c", "p1"), _img(3, "b", "p2")]
    for seed in range(6):
        assert _fold_of(group_kfold(samples, 2, seed=seed), 4) == [0, 1, 1, 0], seed


def test_a_class_is_spread_over_the_folds_before_the_folds_are_evened_out() -> None:
    """S14: the fold with the fewest images *of the group's stratum* first, the fewest overall only on a tie.
    By hand, k=2: p1 two images of a, p0 and p2 one of b each (a and b both 2 images; a dealt first by name).
    p1 -> fold 0; the first b patient -> fold 1 (no b anywhere; fold 1 is emptier); the second -> fold 0 (fold 1
    holds a b image): each fold tests one b patient. Choosing by the overall count first put both b patients
    in fold 1, and fold 0 tested no b at all."""
    samples = [_img(0, "b", "p0"), _img(1, "a", "p1"), _img(2, "a", "p1"), _img(3, "b", "p2")]
    for seed in range(6):
        where = _fold_of(group_kfold(samples, 2, seed=seed), 4)
        assert where[1] == where[2] == 0 and sorted((where[0], where[3])) == [0, 1], (seed, where)


# -- patient_split ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fractions", [(1.2, -0.2, 0.0), (0.7, 0.15, 0.1), (0.7, 0.15, 0.16)])
def test_fractions_that_are_negative_or_do_not_sum_to_one_are_refused(fractions: tuple[float, float, float]) -> None:
    """S19, S20: three non-negative fractions summing to 1. A negative share, or shares summing to 0.95 or 1.01,
    were taken (a silently different split than asked)."""
    samples = [_img(i, "dr", f"p{i}") for i in range(20)]
    with pytest.raises(ConfigError, match="summing to 1"):
        patient_split(samples, fractions)


def test_a_split_counts_images_and_deals_larger_patients_first() -> None:
    """S10, S24 (and S25): halves of one class, patient A with 4 images and B..E with 1. By hand: A first (larger
    groups first), deficits 4 and 4 tie -> train (the earlier part, as group_kfold's lower fold); B..E then
    all to test: 4 and 4 images. Counting patients in place of images gave 5 and 3; the singles first gave
    6 and 2."""
    samples = [_img(i, "dr", "A") for i in range(4)] + [_img(4 + i, "dr", p) for i, p in enumerate("BCDE")]
    for seed in range(6):
        split = patient_split(samples, (0.5, 0.0, 0.5), seed=seed)
        assert split.train.tolist() == [0, 1, 2, 3] and split.test.tolist() == [4, 5, 6, 7], seed
        assert split.val.tolist() == []


def test_two_classes_of_one_image_each_go_one_to_each_half() -> None:
    """S24, S26: ties within a class go to the part furthest below its share of *all* images, then to the
    earlier part. By hand, halves, patient a (class a, dealt first: both classes have one image and 'a' < 'b')
    -> train (a full tie); patient b: its class ties, but train holds 1 of its 1 image and test 0 -> test.
    Without the overall count both went to train (an empty test part); ties to the later part swapped them."""
    samples = [_img(0, "a", "pa"), _img(1, "b", "pb")]
    for seed in range(4):
        split = patient_split(samples, (0.5, 0.0, 0.5), seed=seed)
        assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0], [], [1]), seed


# -- the hashed parts of a dataset spec (split=, fold=) -----------------------------------------------------
def test_spec_parts_and_folds_hold_their_shares_and_keep_linked_copies_together() -> None:
    """S28, S30, S32-S36, S38, without the TVHL photographs (the suite's other checks of these parts need
    them): a patient's number is uniform in [0, 1); split= takes [0, .7), [.7, .85), [.85, 1), fold=I/K the I-th
    K-th of a number drawn apart from it. Over 3,000 one-image patients the shares are binomial (sd under
    0.009): within 0.04 of 0.70 / 0.15 / 0.15, of 1/4 for each of 4 folds, and of 1/2 for fold 1/2 *inside*
    the train part (one number for both gave 5/7). The parts are disjoint and whole, and two patients linked
    as copies share a part and a fold."""
    n = 3000
    src = _source([_img(i, "dr" if i % 3 else "normal", f"P{i:05d}") for i in range(n)])
    parts = spec_split(src, seed=0)
    assert sorted(np.concatenate([parts.train, parts.val, parts.test]).tolist()) == list(range(n))
    np.testing.assert_allclose([len(parts.train) / n, len(parts.val) / n, len(parts.test) / n],
                               [0.70, 0.15, 0.15], atol=0.04)
    folds = spec_folds(src, 4, seed=0)
    assert _fold_of(folds, n) and all(len(tr) + len(te) == n for tr, te in folds)
    np.testing.assert_allclose([len(te) / n for _, te in folds], [0.25] * 4, atol=0.04)
    in_fold_1 = set(spec_folds(src, 2, seed=0)[0][1].tolist())
    assert abs(sum(1 for i in parts.train.tolist() if i in in_fold_1) / len(parts.train) - 0.5) < 0.05
    # Links: a train patient and a test patient linked as copies land in one part; likewise across folds.
    a, b = int(parts.train[0]), int(parts.test[0])
    linked = spec_split(src, seed=0, links=[(a, b)])
    assert sum(a in p.tolist() and b in p.tolist() for p in (linked.train, linked.val, linked.test)) == 1
    c, d = int(folds[0][1][0]), int(folds[1][1][0])
    where = _fold_of(spec_folds(src, 4, seed=0, links=[(c, d)]), n)
    assert where[c] == where[d]


def test_fewer_than_two_spec_folds_are_refused() -> None:
    """S37: fold=1/1 held out every patient and trained on none; spec_folds must refuse k < 2."""
    with pytest.raises(ConfigError, match="k must be an integer >= 2"):
        spec_folds(_source([_img(i, "dr", f"p{i}") for i in range(10)]), 1)


# -- few-shot subsets -----------------------------------------------------------------------------------------
def test_shots_cover_only_the_classes_asked_for() -> None:
    """S40: ``classes=`` names the classes to cover. By hand, 2 shots of class a from 3 a, 3 b and 3 c images:
    exactly two images, both of class a. Ignoring the argument took 2 of every class."""
    samples = [_img(i, "abc"[i // 3], f"p{i}") for i in range(9)]
    for seed in range(5):
        idx = take_shots(samples, 2, seed=seed, classes=["a"])
        assert len(idx) == 2 and all(samples[i].labels == ("a",) for i in idx.tolist()), (seed, idx)


# -- check_apart ----------------------------------------------------------------------------------------------
def test_a_validation_set_reached_through_a_linked_folder_shares_its_patients(tmp_path: Path) -> None:
    """S46: patient ids are compared when both sets come from the same dataset folder, the folder resolved.
    The training data named by its folder and the validation data by a symbolic link to it are one dataset:
    patient p1 on both sides must be refused. Compared as text, the two roots differed and the leak passed."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a1.jpg", "b1.jpg"):
        (data / name).write_bytes(b"jpeg")
    os.symlink(data, tmp_path / "alias")
    train = DatasetSource("train", data, (Sample(data / "a1.jpg", ("dr",), patient="p1"),), LabelSpace(("dr",)), "f")
    alias = tmp_path / "alias"
    val = DatasetSource("val", alias, (Sample(alias / "b1.jpg", ("dr",), patient="p1"),), LabelSpace(("dr",)), "g")
    with pytest.raises(ConfigError, match=r"1 patient\(s\) have images on both sides \(e.g. patient p1\)"):
        check_apart(train, val)


# -- duplicates: similar_pairs ----------------------------------------------------------------------------------
def test_similar_pairs_are_numpys_correlations_across_blocks() -> None:
    """D19, D20, D21: every pair i < j of rows correlating at the threshold or more, found whatever block
    they fall in. Random zero-mean rows (correlation = cosine), rows 1 and 6 and rows 2 and 3 near-copies,
    in blocks of 2 rows: the expected pairs are numpy's corrcoef >= 0.9 above the diagonal. Looking only in a
    row's own block missed (1, 6); pairing a row with itself listed (i, i)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 64))
    x[6] = x[1] + 0.1 * rng.normal(size=64)
    x[3] = x[2] + 0.1 * rng.normal(size=64)
    x[7] = 0.0  # a skipped photograph's row: matches nothing
    x = x - x.mean(axis=1, keepdims=True)
    sigs = x.astype(np.float16)
    live = np.arange(7)
    corr = np.corrcoef(sigs[live].astype(np.float64))
    want = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(corr >= 0.9, k=1)))]
    assert want == [(1, 6), (2, 3)]  # the construction did what it meant to
    for block in (2, 3, 512):
        got = similar_pairs(sigs, 0.9, block=block)
        assert [(c.a, c.b) for c in got] == want, block
        for c in got:
            assert c.similarity == pytest.approx(corr[c.a, c.b], abs=2e-3)


# -- duplicates: find_duplicates on a mixed set ------------------------------------------------------------------
def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic fundus photographs: s1, s2 and s3 are different eyes; s1copy is s1's bytes under another name
    and s1small s1 shrunk and re-encoded (a mirror's copy); blank is a black frame."""
    d = tmp_path_factory.mktemp("photos")
    rgb = {s: draw_fake_fundus(512, seed=s) for s in (1, 2, 3)}
    files = {f"s{s}": _jpeg(v) for s, v in rgb.items()}
    files["s1copy"] = files["s1"]
    files["s1small"] = _jpeg(cv2.resize(rgb[1], (300, 300), interpolation=cv2.INTER_AREA))
    files["blank"] = cv2.imencode(".png", np.zeros((300, 300, 3), np.uint8))[1].tobytes()
    out = {}
    for name, blob in files.items():
        out[name] = d / f"{name}.{'png' if name == 'blank' else 'jpg'}"
        out[name].write_bytes(blob)
    return out


def test_copies_in_a_set_of_fundus_and_oct_images_are_named_by_their_place_in_it(photos: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """D23, D24, D25, D27, D30: only fundus photographs are compared, and pairs, sets of copies and skipped
    images are indices into the *given* list, OCT scans included. By hand: OCT at 0 and 2 (s1's bytes, which
    must not join s1's set), s1 at 1, its copy at 3, s3 at 4, a missing file at 5, s1 shrunk at 6. The set of
    copies is (1, 3, 6); the links are its three pairs; 0 and 2 are skipped as OCT, 5 as unreadable; n = 7.
    With indices into the fundus sublist the set was (0, 1, 4) and the missing file was 'image 3'."""
    samples = [Sample(photos["s1"], ("normal",), modality="oct"), Sample(photos["s1"], ("dr",), patient="a"),
               Sample(photos["s1copy"], ("normal",), modality="oct"), Sample(photos["s1copy"], ("dr",), patient="b"),
               Sample(photos["s3"], ("dr",), patient="c"), Sample(tmp_path / "gone.jpg", ("dr",), patient="d"),
               Sample(photos["s1small"], ("dr",), patient="e")]
    report = find_duplicates(samples, DuplicateConfig(), None)
    assert report.n == 7
    assert report.groups == ((1, 3, 6),)
    assert report.links() == [(1, 3), (1, 6), (3, 6)]
    assert sorted(report.skipped) == [0, 2, 5]
    assert "not a fundus photograph (oct)" in report.skipped[0] and "not a fundus" in report.skipped[2]
    assert report.skipped[5].startswith("unreadable")


def test_the_threshold_given_is_the_one_used(photos: dict[str, Path]) -> None:
    """D26: find_duplicates compares at its config's threshold. s2 and s3 are different eyes whose signatures
    correlate at about 0.64 (numpy's corrcoef of the two signatures, computed here): at a threshold of 0.5
    they are listed, at the default 0.9 not. With 0.9 always, a lowered threshold changed nothing."""
    sig = [signature(preprocess(photos[n].read_bytes(), PreprocessConfig(size=128)).image) for n in ("s2", "s3")]
    r = float(np.corrcoef(sig[0].astype(np.float64), sig[1].astype(np.float64))[0, 1])
    assert 0.55 < r < 0.8  # the construction: well between the two thresholds
    samples = [Sample(photos["s2"], ("dr",), patient="a"), Sample(photos["s3"], ("dr",), patient="b")]
    low = find_duplicates(samples, DuplicateConfig(threshold=0.5), None)
    assert low.links() == [(0, 1)] and low.pairs[0].similarity == pytest.approx(r, abs=2e-3)
    assert find_duplicates(samples, DuplicateConfig(), None).pairs == ()


# -- duplicates: the signature itself ---------------------------------------------------------------------------
def _by_hand_signature(rgb: np.ndarray, size: int) -> np.ndarray:
    """The module docstring's recipe: green channel, difference of Gaussians of sigma 1 and 4 px at 128 px
    (scaled with the size), inside the disc of 0.8 of the half-side around the image centre (pixel centres),
    zero mean and unit variance."""
    g = rgb[:, :, 1].astype(np.float32)
    s = size / 128.0
    band = cv2.GaussianBlur(g, (0, 0), 1.0 * s) - cv2.GaussianBlur(g, (0, 0), 4.0 * s)
    c = size / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx + 0.5 - c) ** 2 + (yy + 0.5 - c) ** 2 <= (0.8 * c) ** 2
    v = band[inside].astype(np.float64)
    return (v - v.mean()) / v.std()


@pytest.mark.parametrize("size", [128, 256])
def test_a_signature_is_the_documented_band_of_the_green_channel(size: int) -> None:
    """D04, D05, D07: the signature of a model input is its green channel band-passed at vessel scale (sigmas
    scaled with the size), inside the 0.8 disc, standardised: equal, to float16 rounding, to the recipe done
    by hand. The red channel, unscaled sigmas at 256 px or a missing centring each changed it."""
    rgb = preprocess(_jpeg(draw_fake_fundus(512, seed=5)), PreprocessConfig(size=size)).image
    got = signature(rgb, size)
    want = _by_hand_signature(rgb, size)
    assert got is not None and got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-3, atol=5e-3)


@pytest.mark.parametrize("shape", [(128, 128), (128, 128, 3, 1), (64, 64, 3)])
def test_a_signature_needs_a_square_rgb_model_input(shape: tuple[int, ...]) -> None:
    """D08: a grey (2-D) or 4-D array is no model input: a ConfigError, not an IndexError or a signature of
    something else."""
    with pytest.raises(ConfigError, match="RGB model input"):
        signature(np.zeros(shape, np.uint8), 128)


@pytest.mark.parametrize("size", [16, 31, 513, 128.0])
def test_a_signature_size_outside_32_to_512_is_refused(size: object) -> None:
    """D03: the size is an integer from 32 to 512 px."""
    with pytest.raises(ConfigError, match="from 32 to 512"):
        DuplicateConfig(size=size)  # type: ignore[arg-type]


# -- duplicates: the signature cache -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [("SIGNATURE_VERSION", 99), ("PREPROCESS_VERSION", "changed"),
                                         ("MIN_DETAIL", 0.5), ("_DISC", 0.7), ("_SIGMA_FINE", 1.5)])
def test_the_cache_file_changes_with_everything_a_signature_depends_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       name: str, value: object) -> None:
    """D09, D10, D11: signatures cached under one way of making them must not be read under another (a bumped
    SIGNATURE_VERSION, a new preprocessing, another detail floor): the cache file's name keys on each. Left out
    of the key, a stale signature was reused and copies were missed or invented."""
    before = dup._cache_file(tmp_path, 128)
    monkeypatch.setattr(dup, name, value)
    assert dup._cache_file(tmp_path, 128) != before
    assert dup._cache_file(tmp_path, 128).parent == tmp_path


def test_a_blank_photograph_stays_skipped_when_its_signature_comes_from_the_cache(photos: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    """D12: the cache remembers that a photograph had too little detail. Read back as a row of zeros, the
    second run compared it (as a zero row) instead of naming it skipped."""
    paths = [photos["blank"], photos["s2"]]
    first = signatures(paths, DuplicateConfig(), tmp_path)
    again = signatures(paths, DuplicateConfig(), tmp_path)
    assert list(tmp_path.glob("signatures-*.npz"))
    for sigs, skipped in (first, again):
        assert list(skipped) == [0] and "too little detail" in skipped[0]
        assert not sigs[0].any() and sigs[1].any()
    np.testing.assert_array_equal(first[0], again[0])


def test_an_unreadable_cache_is_ignored_and_rewritten(photos: dict[str, Path], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """D13: a cache file that is not an npz (here bytes that numpy refuses with a ValueError) is said and
    ignored, and the signatures made again are the right ones; it crashed the run."""
    paths = [photos["s2"], photos["s3"]]
    want, _ = signatures(paths, DuplicateConfig(), None)
    cache = dup._cache_file(tmp_path, 128)
    cache.write_bytes(b"garbage" * 10)
    with caplog.at_level(logging.WARNING):
        got, skipped = signatures(paths, DuplicateConfig(), tmp_path)
    assert "ignoring the unreadable signature cache" in caplog.text
    np.testing.assert_array_equal(got, want)
    assert skipped == {}
    assert dup._load_cache(cache).keys() and all(v is not None for v in dup._load_cache(cache).values())


def test_a_cache_write_that_fails_leaves_the_previous_cache_whole(photos: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """D14: the cache is replaced atomically. A write that stops halfway (a full disk, a killed run) must leave
    the previous cache as it was; written in place, it left half a zip file behind."""
    signatures([photos["s2"]], DuplicateConfig(), tmp_path)
    cache = dup._cache_file(tmp_path, 128)
    before = cache.read_bytes()

    def dies_halfway(fh: object, **arrays: object) -> None:
        fh.write(before[: len(before) // 2])  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    monkeypatch.setattr(dup.np, "savez", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        signatures([photos["s2"], photos["s3"]], DuplicateConfig(), tmp_path)
    assert cache.read_bytes() == before


@pytest.mark.parametrize("cut", [0, 40])
def test_an_empty_or_truncated_cache_is_ignored_too(photos: dict[str, Path], tmp_path: Path, cut: int) -> None:
    """A cache cut short (an empty file, a partial copy from a backup or a sync) is as unreadable as a garbled
    one: the run should say so and make the signatures again, not stop with a traceback."""
    paths = [photos["s2"]]
    signatures(paths, DuplicateConfig(), tmp_path)
    cache = dup._cache_file(tmp_path, 128)
    cache.write_bytes(cache.read_bytes()[:cut])
    got, skipped = signatures(paths, DuplicateConfig(), tmp_path)
    assert skipped == {} and got[0].any()


# -- the TVHL reader ---------------------------------------------------------------------------------------------
def _edit_row(csv_path: Path, row: int, old: str, new: str) -> None:
    lines = csv_path.read_text().splitlines()
    assert old in lines[row]
    lines[row] = lines[row].replace(old, new)
    csv_path.write_text("\n".join(lines) + "\n")


def test_a_tvhl_row_filed_under_the_other_modality_is_refused(tmp_path: Path) -> None:
    """T02: fundus.csv holds fundus rows. A row saying oct there is a broken table (the image would be trained
    as a fundus photograph): a DataError naming the row."""
    make_tvhl(tmp_path)
    _edit_row(tmp_path / "fundus.csv", 3, ",fundus,", ",oct,")
    with pytest.raises(DataError, match=r"fundus\.csv, row 3 .*modality 'oct' in fundus\.csv; expected 'fundus'"):
        read_tvhl(tmp_path)


def test_an_unknown_tvhl_dr_grade_names_its_row(tmp_path: Path) -> None:
    """T03: a dr value outside none/npdr/pdr/unknown is a DataError naming the row and the allowed values, not
    a KeyError from the label check."""
    make_tvhl(tmp_path)
    _edit_row(tmp_path / "fundus.csv", 3, ",none,", ",mild,")
    with pytest.raises(DataError, match=r"row 3 .*unknown dr grade 'mild'; allowed: \['none', 'npdr', 'pdr'"):
        read_tvhl(tmp_path)


def test_an_unknown_tvhl_modality_is_refused() -> None:
    """T07: modality must be fundus, oct or both."""
    with pytest.raises(ConfigError, match="modality must be 'fundus', 'oct' or 'both'"):
        read_tvhl("/nonexistent", modality="xray")


def test_tvhl_keeps_the_raw_label_beside_the_tasks_class(tmp_path: Path) -> None:
    """T12: ``extra['raw_label']`` is TVHL's own label (npdr, pdr), not the task's class (dr): per-grade
    figures of the referable-DR task read it."""
    make_tvhl(tmp_path)
    src = read_tvhl(tmp_path, task="referable_dr")
    assert [(s.labels, s.extra["raw_label"], s.extra["dr_grade"]) for s in src.samples] == [
        (("normal",), "normal", 0), (("dr",), "npdr", 1), (("dr",), "pdr", 2)]
