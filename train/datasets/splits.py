"""Patient-level splits, patient-grouped stratified K-fold and few-shot subsampling.

One patient's images (several photographs, both eyes, fundus and OCT) always
fall on the same side of a split, or the evaluation leaks. Images without a
patient id are each their own group. Links (copies of one photograph under
two patients, :mod:`uopsl.train.datasets.duplicates`) merge groups. Everything is a pure function of the
samples and the seed: same inputs, same indices, whatever the input order of
equal samples' groups (groups are sorted by id before the seeded shuffle).

Stratification works on groups: a group's stratum is its rarest class (by
image count over the whole set), so rare classes are spread over the folds
first. Indices are numpy int64 arrays into the given sample sequence, sorted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np

from uopsl.runtime.errors import ConfigError
from uopsl.train.datasets.core import DatasetSource, Sample

log = logging.getLogger(__name__)

Samples: TypeAlias = "Sequence[Sample] | DatasetSource"


def _samples(samples: Samples) -> Sequence[Sample]:
    return samples.samples if isinstance(samples, DatasetSource) else samples


Links: TypeAlias = "Sequence[tuple[int, int]] | None"


def group_keys(samples: Samples, links: Links = None) -> list[str]:
    """The split group of each sample: its patient id, or its file's path when it has none (not its row number:
    sorting a table must not move an image to the other side of a split).

    ``links``: pairs of sample indices that must share a side (the same photograph under two patient ids,
    :func:`uopsl.train.datasets.duplicates.find_duplicates`); their groups merge, under the smallest of their
    keys. Without links the keys, and so every split, are what they were.
    """
    seq = _samples(samples)
    return _merged([s.patient if s.patient is not None else "\x00file-" + Path(s.path).as_posix() for s in seq], links)


def _merged(keys: list[str], links: Links) -> list[str]:
    """``keys`` with the groups ``links`` join merged under the smallest of their keys."""
    if not links:
        return keys
    for a, b in links:
        if not (0 <= a < len(keys) and 0 <= b < len(keys)):
            raise ConfigError(f"a link ({a}, {b}) names a sample outside the {len(keys)} given")
    names = sorted(set(keys))  # a merged group takes its smallest key: the representative is the smallest index
    at = {k: i for i, k in enumerate(names)}
    rep = representatives(len(names), [(at[keys[a]], at[keys[b]]) for a, b in links])
    return [names[rep[at[k]]] for k in keys]


def links_within(links: Links, kept: Iterable[int]) -> list[tuple[int, int]] | None:
    """``links`` (indices into a sample list) as indices into its subset ``kept`` (sorted indices), so a split of
    the subset keeps them; links with an end outside the subset are dropped (that copy is on the other side
    already). None stays None."""
    if links is None:
        return None
    at = {int(i): j for j, i in enumerate(kept)}
    return [(at[a], at[b]) for a, b in links if a in at and b in at]


def representatives(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find over ``n`` items joined by ``pairs``: each item's representative, the smallest index of its set."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(n)]


@dataclass(frozen=True)
class _Group:
    key: str
    members: tuple[int, ...]
    stratum: str


def _groups(samples: Sequence[Sample], seed: int, links: Links = None) -> list[_Group]:
    """Groups ordered rarest stratum first, seeded shuffle within a stratum, then larger groups first."""
    keys = group_keys(samples, links)
    members: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        members[k].append(i)
    freq: Counter[str] = Counter(n for s in samples for n in s.labels)

    def stratum(idx: list[int]) -> str:
        names = {n for i in idx for n in samples[i].labels}
        return min(names, key=lambda n: (freq[n], n)) if names else ""

    groups = [_Group(k, tuple(members[k]), stratum(members[k])) for k in sorted(members)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    shuffled = [groups[i] for i in order]
    # stable sort keeps the seeded order among groups of one stratum and size
    return sorted(shuffled, key=lambda g: (freq.get(g.stratum, 0), g.stratum, -len(g.members)))


def group_kfold(samples: Samples, k: int, seed: int = 0, links: Links = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, test_idx) pairs; each group is in exactly one test fold (``links``: :func:`group_keys`).

    Each group goes to the fold holding the fewest images of its stratum (ties:
    fewest images overall, then the lower fold), which balances class
    proportions and fold sizes.
    """
    seq = _samples(samples)
    groups = _groups(seq, seed, links)
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"k must be an integer >= 2, got {k!r}")
    if k > len(groups):
        raise ConfigError(f"k={k} folds need at least {k} patient groups; the samples have {len(groups)}")
    fold_total = np.zeros((k,), np.int64)
    strata: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((k,), np.int64))
    fold_of = np.empty(len(seq), np.int64)
    for g in groups:
        counts = strata[g.stratum]
        fold = min(range(k), key=lambda f: (counts[f], fold_total[f], f))
        counts[fold] += len(g.members)
        fold_total[fold] += len(g.members)
        fold_of[list(g.members)] = fold
    idx = np.arange(len(seq))
    return [(idx[fold_of != f], idx[fold_of == f]) for f in range(k)]


@dataclass(frozen=True)
class Split:
    """Sample indices of a train/val/test split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def patient_split(
    samples: Samples, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0, links: Links = None
) -> Split:
    """Patient-level train/val/test split with the given image fractions (val may be 0; ``links``: :func:`group_keys`).

    Groups are dealt, rarest stratum first, to the part furthest below its
    target share of that stratum's images; the fractions hold to within a group.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    seq = _samples(samples)
    groups = _groups(seq, seed, links)
    stratum_total: Counter[str] = Counter()
    for g in groups:
        stratum_total[g.stratum] += len(g.members)
    frac = np.asarray(fractions, np.float64)
    done: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, np.float64))
    overall = np.zeros(3, np.float64)
    part_of = np.empty(len(seq), np.int64)
    for g in groups:
        have = done[g.stratum]
        deficit = frac * stratum_total[g.stratum] - have
        global_deficit = frac * len(seq) - overall
        part = max((p for p in range(3) if frac[p] > 0), key=lambda p: (deficit[p], global_deficit[p], -p))
        have[part] += len(g.members)
        overall[part] += len(g.members)
        part_of[list(g.members)] = part
    idx = np.arange(len(seq))
    return Split(idx[part_of == 0], idx[part_of == 1], idx[part_of == 2])


# -- the parts a dataset spec names (split=, fold=) ---------------------------------------------------------
#: What a spec's ``split=`` deals: 70 / 15 / 15 % of the patient groups, each by its own seeded hash.
SPEC_FRACTIONS = (0.7, 0.15, 0.15)


def _stable_unit(key: str, seed: int, purpose: str) -> float:
    """A number in [0, 1) fixed by ``key``, ``seed`` and ``purpose`` alone (``split`` and ``fold`` draw apart:
    with one number for both, ``split=train,fold=1/2`` gave folds of 5/7 and 2/7 of the part)."""
    digest = hashlib.sha256(f"uopsl-{purpose}\x00{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _spec_keys(src: DatasetSource, links: Links) -> list[str]:
    """Each sample's group for a spec's parts: its patient id; without one, its file's path under the dataset's
    root (not its row number: sorting a table must not move an image to another part)."""
    root = Path(src.root)

    def own(s: Sample) -> str:
        if s.patient is not None:
            return s.patient
        try:
            rel = Path(s.path).relative_to(root)
        except ValueError:
            rel = Path(s.path)
        return "\x00file-" + rel.as_posix()

    return _merged([own(s) for s in src.samples], links)


def spec_units(src: DatasetSource, seed: int, purpose: str, links: Links = None) -> np.ndarray:
    """(N,) the seeded number in [0, 1) of each sample's patient group (see :func:`spec_split`)."""
    keys = _spec_keys(src, links)
    memo = {k: _stable_unit(k, seed, purpose) for k in set(keys)}
    return np.array([memo[k] for k in keys], np.float64)


def spec_split(src: DatasetSource, seed: int = 0, links: Links = None) -> Split:
    """The train / val / test parts a spec's ``split=`` names: each patient group by a seeded hash of its id.

    Why not :func:`patient_split`: its stratified dealing depends on which samples the reader kept, so the
    same patient fell in another part under another ``task=``, ``modality=`` or ``classes=`` (in a review, 13
    of 26 TVHL ``task=referable_dr,split=test`` patients were in ``task=four_class,split=train``, and 17 had
    their OCT scans in ``modality=oct,split=train``): pre-training, fine-tuning and testing from specs
    shared patients. Here a patient's part depends on its id and the seed alone. The parts hold about
    70 / 15 / 15 % of the patients, not exactly, and classes are not balanced across them.
    """
    u = spec_units(src, seed, "split", links)
    a, b = SPEC_FRACTIONS[0], SPEC_FRACTIONS[0] + SPEC_FRACTIONS[1]
    idx = np.arange(len(u))
    return Split(idx[u < a], idx[(u >= a) & (u < b)], idx[u >= b])


def spec_folds(src: DatasetSource, k: int, seed: int = 0, links: Links = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds a spec's ``fold=I/K`` / ``notfold=I/K`` name: each patient group in fold floor(u * K) of its
    seeded number u (as :func:`spec_split`, the same patient's fold whatever else the set holds)."""
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"k must be an integer >= 2, got {k!r}")
    fold = np.minimum((spec_units(src, seed, "fold", links) * k).astype(np.int64), k - 1)
    idx = np.arange(len(fold))
    return [(idx[fold != f], idx[fold == f]) for f in range(k)]


def take_shots(
    samples: Samples, n_per_class: int, seed: int = 0, classes: Sequence[str] | None = None
) -> np.ndarray:
    """Indices of a few-shot subset with ``n_per_class`` images of each class.

    Rarest class first; an image already taken counts for every class it
    carries (multi-label), so a class may end with more than ``n_per_class``.
    A class with fewer images than asked contributes all it has (logged).
    classes: the classes to cover (default: every class present).
    """
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise ConfigError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    seq = _samples(samples)
    freq: Counter[str] = Counter(n for s in seq for n in s.labels)
    wanted = sorted(classes if classes is not None else freq, key=lambda n: (freq[n], n))
    rng = np.random.default_rng(seed)
    taken: set[int] = set()
    for name in wanted:
        have = sum(1 for i in taken if name in seq[i].labels)
        candidates = [i for i, s in enumerate(seq) if name in s.labels and i not in taken]
        for j in rng.permutation(len(candidates)):
            if have >= n_per_class:
                break
            taken.add(candidates[j])
            have += 1
        if have < n_per_class:
            log.warning("take_shots: class %r has only %d images, %d asked", name, have, n_per_class)
    return np.asarray(sorted(taken), np.int64)


def check_apart(train: DatasetSource, held_out: DatasetSource, what: str = "--val") -> None:
    """Refuse a held-out set that shares images or patients with the training set.

    Why: validation images choose the operating thresholds and the best epoch; any that the model
    trained on make both look better than they are, and the thresholds then miss disease in the
    clinic. An image counts as shared by its resolved path; a patient by its id, compared only when
    both sets come from one dataset: the same dataset folder, or images in a common folder (two CSV
    tables kept apart from each other, listing photographs of one image folder). Ids of two datasets
    are different namespaces: patient "12" of one study is not patient "12" of another. Identical
    files under different names are found later, by content (:func:`uopsl.train.workflow.warn_shared_images`).
    """
    def resolved(samples: Sequence[Sample]) -> dict[str, Sample]:
        return {os.path.realpath(s.path): s for s in samples}

    def folders(paths: Iterable[str]) -> set[str]:
        return {os.path.dirname(p) for p in paths}

    mine = resolved(train.samples)
    theirs = resolved(held_out.samples)
    same_files = [s for p, s in theirs.items() if p in mine]
    same_patients: list[str] = []
    if (os.path.realpath(train.root) == os.path.realpath(held_out.root)
            or folders(mine) & folders(theirs)):
        patients = {s.patient for s in train.samples if s.patient is not None}
        same_patients = sorted({s.patient for s in held_out.samples if s.patient is not None and s.patient in patients})
    if not same_files and not same_patients:
        return
    found = []
    if same_files:
        found.append(f"{len(same_files)} of its {len(held_out)} images are training images too "
                     f"(e.g. {same_files[0].path})")
    if same_patients:
        found.append(f"{len(same_patients)} patient(s) have images on both sides (e.g. patient {same_patients[0]})")
    raise ConfigError(f"{what} {held_out.name} overlaps the training data {train.name}: {'; '.join(found)}. "
                      "Validation must be images of other patients: give a set without them, or leave out "
                      f"{what} to hold out 15 % of the training data's patients")
