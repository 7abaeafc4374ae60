"""The same photograph twice in a dataset: under two file names, two patients, two eyes or two labels.

Why: a patient-level split keeps one patient's photographs on one side, but a
photograph filed under two patient ids (public sets hold such copies; TVHL
holds several, ``docs/results.md``) lands on both sides and the held-out
figures count images the model trained on. A copy is rarely byte-identical:
mirrors re-encode, resize, re-crop and re-tone photographs.

How: each photograph becomes a signature, the green channel of its model
input (the field of view found, cropped and resized to ``size``, by the
runtime's own preprocessing, so the frame, resolution and padding drop out)
band-passed at vessel scale (difference of Gaussians, sigma 1 and 4 pixels at
128 px: the fine JPEG noise and the slow illumination both drop out) inside
the central disc of 0.8 of the field's radius (the vignetted rim would make
every pair alike), normalised to zero mean and unit variance. Two
photographs are copies when their signatures correlate at ``threshold`` or
more (default 0.9). On TVHL's 1,058 photographs (``docs/results.md``,
``benchmarks/duplicate_signatures.py``): byte-identical copies correlate at
1.0, a re-toned copy at 0.99, the highest pair of photographs that are not
copies at 0.85; altered copies reach 0.9 in 90 % (JPEG quality 60) to 100 %
(twice the size) of photographs, 75 % under a strong tone curve (gamma 0.6).
A copy misses where the field of view is found differently (a very dark
photograph's dim rim). Repeat shots of one eye a moment apart, framed alike,
are found too (0.91-0.98 in TVHL); one eye photographed on another visit, or
a mirrored copy, is not.

Signatures are cached by file content (sha256), so a renamed or moved file is
not decoded again. Cost: one decode and preprocess per photograph, then a
matrix product of the N signatures (8,224 values each at 128 px: N^2 / 2 x
8,224 multiply-adds: 9 s for 5,000 photographs on two shared cores, growing
with the square), in memory about 16 KB per photograph (float16).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from uopsl.runtime.errors import ConfigError, ImageError
from uopsl.runtime.fsio import NUMPY_FILE_ERRORS, atomic_open
from uopsl.runtime.preprocess import PREPROCESS_VERSION, PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.progress import track
from uopsl.train.datasets.core import Sample
from uopsl.train.datasets.splits import representatives

log = logging.getLogger(__name__)

#: Bumped when the same bytes give another signature (the cache keys on it).
SIGNATURE_VERSION = 1
_SIGMA_FINE, _SIGMA_COARSE = 1.0, 4.0  # at 128 px; scaled with the size
_DISC = 0.8
#: A band-passed field flatter than this (grey levels, standard deviation) has nothing to compare: a black or
#: blank photograph would match every other one.
MIN_DETAIL = 0.25


@dataclass(frozen=True)
class DuplicateConfig:
    """threshold: least signature correlation of two copies (0-1]. size: model-input side the signatures use."""

    threshold: float = 0.9
    size: int = 128

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 < float(self.threshold) <= 1.0):
            raise ConfigError(f"the duplicate threshold must be a correlation in (0, 1], got {self.threshold!r}; "
                              "0.9 finds re-encoded, resized and re-toned copies (docs/results.md)")
        if not (isinstance(self.size, int) and 32 <= self.size <= 512):
            raise ConfigError(f"the signature size must be an integer from 32 to 512 px, got {self.size!r}")


@dataclass(frozen=True)
class Copy:
    """Two samples (indices) whose signatures correlate at ``similarity``."""

    a: int
    b: int
    similarity: float


@dataclass(frozen=True)
class DuplicateReport:
    """groups: sample indices of each set of copies (two or more, joined through pairs); pairs: every pair found;
    skipped: index -> why no signature (unreadable, or too little detail to compare)."""

    n: int
    groups: tuple[tuple[int, ...], ...]
    pairs: tuple[Copy, ...]
    skipped: dict[int, str] = field(default_factory=dict)

    def links(self) -> list[tuple[int, int]]:
        """The pairs as (i, j): what the splits keep on one side (:func:`uopsl.train.datasets.splits.group_kfold`)."""
        return [(c.a, c.b) for c in self.pairs]


def _disc(size: int) -> np.ndarray:
    c = size / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx + 0.5 - c) ** 2 + (yy + 0.5 - c) ** 2) <= (_DISC * c) ** 2


def signature(image: np.ndarray, size: int = 128) -> np.ndarray | None:
    """The signature of a model input (``size`` x ``size`` RGB uint8), or None when it is too flat to compare."""
    if image.shape[:2] != (size, size) or image.ndim != 3:
        raise ConfigError(f"signature needs a {size}x{size} RGB model input, got shape {image.shape}")
    g = image[:, :, 1].astype(np.float32)
    s = size / 128.0
    band = cv2.GaussianBlur(g, (0, 0), _SIGMA_FINE * s) - cv2.GaussianBlur(g, (0, 0), _SIGMA_COARSE * s)
    v = band[_disc(size)]
    spread = float(v.std())
    if not math.isfinite(spread) or spread < MIN_DETAIL:
        return None
    return ((v - v.mean()) / spread).astype(np.float16)


def _cache_file(cache_dir: Path, size: int) -> Path:
    """One file per way of making signatures: everything a signature depends on besides the file's bytes."""
    how = repr((SIGNATURE_VERSION, PREPROCESS_VERSION, PreprocessConfig(size=size).to_dict(), _SIGMA_FINE,
                _SIGMA_COARSE, _DISC, MIN_DETAIL))
    return cache_dir / f"signatures-{size}-{hashlib.sha256(how.encode()).hexdigest()[:16]}.npz"


def _load_cache(path: Path) -> dict[str, np.ndarray | None]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            shas, sigs, ok = z["sha"], z["sig"], z["ok"]
    except NUMPY_FILE_ERRORS as exc:  # an empty or truncated file too (a partial copy or sync)
        log.warning("ignoring the unreadable signature cache %s (%s); it will be rewritten", path, exc)
        return {}
    return {str(h): (sigs[i] if ok[i] else None) for i, h in enumerate(shas)}


def _save_cache(path: Path, entries: dict[str, np.ndarray | None], dim: int) -> None:
    shas = sorted(entries)
    sig = np.zeros((len(shas), dim), np.float16)
    ok = np.zeros(len(shas), bool)
    for i, h in enumerate(shas):
        v = entries[h]
        if v is not None and v.shape == (dim,):
            sig[i], ok[i] = v, True
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, sha=np.asarray(shas, dtype="U64"), sig=sig, ok=ok)


def signatures(paths: Sequence[Path], config: DuplicateConfig | None = None,
               cache_dir: Path | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Signatures of ``paths`` (N x D float16; a skipped file's row is zero) and index -> why skipped."""
    cfg = config or DuplicateConfig()
    dim = int(_disc(cfg.size).sum())
    cache_path = _cache_file(cache_dir, cfg.size) if cache_dir is not None else None
    cached = _load_cache(cache_path) if cache_path is not None else {}
    out = np.zeros((len(paths), dim), np.float16)
    skipped: dict[int, str] = {}
    new = 0
    pre_cfg = PreprocessConfig(size=cfg.size)
    for i, p in enumerate(track(paths, total=len(paths), desc="signatures", mininterval=1.0)):
        try:
            data = read_bytes(p)
        except ImageError as exc:  # not cached: the file may read next time
            skipped[i] = f"unreadable: {exc}"
            continue
        key = hashlib.sha256(data).hexdigest()
        if key in cached:
            v = cached[key]
        else:
            try:
                v = signature(preprocess(data, pre_cfg, source=str(p)).image, cfg.size)
            except (ImageError, MemoryError) as exc:
                skipped[i] = f"not decodable: {exc}"
                continue
            cached[key] = v
            new += 1
        if v is None or v.shape != (dim,):
            skipped[i] = "too little detail to compare (a blank or nearly black photograph)"
            continue
        out[i] = v
    if cache_path is not None and new:
        _save_cache(cache_path, cached, dim)
    return out, skipped


def _unit_rows(sigs: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero): the dot product is then the correlation, and a
    row's product with itself is 1 to float32 precision despite the float16 rounding of the stored signature."""
    x = sigs.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def similar_pairs(sigs: np.ndarray, threshold: float, *, block: int = 512) -> list[Copy]:
    """Every pair (i < j) of rows whose correlation is at least ``threshold``; zero rows match nothing.

    Blocks of ``block`` rows are converted to float32 as they are used, so memory stays near that of the
    float16 signatures (plus two blocks and a block x N product), not four times it.
    """
    n, dim = sigs.shape
    pairs: list[Copy] = []
    if n < 2 or dim == 0:
        return pairs
    cut = threshold - 1e-5  # float32 sums: identical signatures must reach a threshold of 1.0
    for s in range(0, n, block):
        x = _unit_rows(sigs[s : s + block])
        for t in range(s, n, block):
            corr = x @ _unit_rows(sigs[t : t + block]).T
            ii, jj = np.nonzero(corr >= cut)
            for i, j in zip(ii.tolist(), jj.tolist()):
                a, b = s + i, t + j
                if a < b:
                    pairs.append(Copy(a, b, round(min(float(corr[i, j]), 1.0), 4)))
    return sorted(pairs, key=lambda c: (c.a, c.b))


def groups_of(n: int, pairs: Sequence[Copy] | Sequence[tuple[int, int]]) -> tuple[tuple[int, ...], ...]:
    """Sets of two or more indices joined through ``pairs``, each sorted, ordered by first member."""
    rep = representatives(n, [(p.a, p.b) if isinstance(p, Copy) else p for p in pairs])
    members: dict[int, list[int]] = {}
    for i, r in enumerate(rep):
        members.setdefault(r, []).append(i)
    return tuple(tuple(m) for _, m in sorted(members.items()) if len(m) > 1)


def find_duplicates(samples: Sequence[Sample], config: DuplicateConfig | None = None,
                    cache_dir: Path | None = None) -> DuplicateReport:
    """Copies among ``samples`` (fundus photographs; other modalities are skipped)."""
    cfg = config or DuplicateConfig()
    fundus = [i for i, s in enumerate(samples) if s.modality == "fundus"]
    sigs, skipped_local = signatures([samples[i].path for i in fundus], cfg, cache_dir)
    pairs = [Copy(fundus[c.a], fundus[c.b], c.similarity) for c in similar_pairs(sigs, cfg.threshold)]
    skipped = {fundus[i]: why for i, why in skipped_local.items()}
    for i, s in enumerate(samples):
        if s.modality != "fundus":
            skipped[i] = f"not a fundus photograph ({s.modality})"
    return DuplicateReport(len(samples), groups_of(len(samples), pairs), tuple(pairs), dict(sorted(skipped.items())))
