"""Calibration sets: model-ready images, preprocessed by the runtime's own code.

A calibration set is a list of images turned into exactly the uint8 RGB
``size x size`` inputs the deployed model sees (:func:`uopsl.runtime.preprocess.preprocess`),
plus what a reviewer needs to trust it:

* a content fingerprint (sha256 over the preprocessed pixel bytes and the
  preprocessing config), recorded in the calibration table and the bundle, so
  re-calibration can be skipped when nothing changed;
* the images that were skipped, each with its reason (a bad image never stops
  the set from being built);
* a class-balance report when labels are known (an INT8 model calibrated on
  one class only can clip the activations of the others);
* each image file's content digest (the first 16 hex characters of its bytes'
  sha256, as the training checkpoint records its photographs), carried into the
  calibration table so that ``uopsl validate`` can tell when the images an INT8
  file is judged on are the ones its ranges were fitted on.

Sources: a folder (searched recursively), a CSV file (``path`` column,
optional ``label`` column, paths relative to the CSV), a text list (one path
per line, relative to the list file), an explicit list of paths, or a ``.npz``
written by this module. The preprocessed set is cached as ``.npz`` so it is
not recomputed; the cache is keyed by the files' paths, sizes, mtimes, change times and inodes and
the preprocessing config.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.runtime.errors import ConfigError, DataError, ImageError
from uopsl.runtime.fsio import NUMPY_FILE_ERRORS, atomic_open, read_user_text, short_sha256, user_cache_dir
from uopsl.runtime.progress import track
from uopsl.runtime.image_suffixes import IMAGE_SUFFIXES
from uopsl.runtime.inputs import WalkState, walk_images
from uopsl.runtime.preprocess import PREPROCESS_VERSION, PreprocessConfig, preprocess, read_bytes

log = logging.getLogger(__name__)

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of the set and why (``reason`` is a short tag, ``message`` says more)."""

    source: str
    reason: str
    message: str


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images (N, size, size, 3) uint8 RGB and their provenance."""

    images: np.ndarray
    sources: tuple[str, ...]
    preprocess: PreprocessConfig
    fingerprint: str
    labels: tuple[str, ...] | None = None
    skipped: tuple[SkippedImage, ...] = ()
    #: each image file's digest (:func:`uopsl.runtime.fsio.short_sha256`), in set order; None where
    #: the files are not known (a set made from arrays, or cached by a uopsl that did not record them)
    digests: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        imgs = self.images
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[3] != 3:
            raise ConfigError(f"calibration images must be uint8 (N, H, W, 3), got {imgs.dtype} {imgs.shape}")
        if len(self.sources) != len(imgs):
            raise ConfigError(f"{len(imgs)} calibration images but {len(self.sources)} sources")
        if self.labels is not None and len(self.labels) != len(imgs):
            raise ConfigError(f"{len(imgs)} calibration images but {len(self.labels)} labels")
        if self.digests is not None and len(self.digests) != len(imgs):
            raise ConfigError(f"{len(imgs)} calibration images but {len(self.digests)} file digests")
        imgs.setflags(write=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_images(
        cls,
        images: np.ndarray,
        preprocess_config: PreprocessConfig | None = None,
        *,
        sources: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> CalibrationSet:
        """A set from images that are already model inputs (uint8 (N, H, W, 3) RGB)."""
        images = np.ascontiguousarray(images)
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ConfigError(f"expected square uint8 images (N, S, S, 3), got shape {images.shape}")
        cfg = preprocess_config or PreprocessConfig(size=int(images.shape[1]))
        if cfg.size != images.shape[1]:
            raise ConfigError(f"images are {images.shape[1]} px but the preprocessing config says {cfg.size} px")
        srcs = tuple(sources) if sources is not None else tuple(f"array[{i}]" for i in range(len(images)))
        return cls(images, srcs, cfg, fingerprint_images(images, cfg),
                   tuple(labels) if labels is not None else None)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of at most ``batch_size`` images."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size]

    def subset(self, n: int, seed: int = 0) -> CalibrationSet:
        """A seeded random subset of ``n`` images (the whole set when ``n >= len``), in set order."""
        if n >= len(self):
            return self
        if n < 1:
            raise ConfigError(f"subset size must be >= 1, got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        imgs = self.images[idx]
        return CalibrationSet(
            imgs, tuple(self.sources[i] for i in idx), self.preprocess, fingerprint_images(imgs, self.preprocess),
            tuple(self.labels[i] for i in idx) if self.labels is not None else None,
            digests=tuple(self.digests[i] for i in idx) if self.digests is not None else None,
        )

    def class_balance(self) -> dict[str, int] | None:
        """Images per class (most frequent first), or None without labels.

        A label of several classes joined by ``;`` (multi-label, ``dr;amd``) counts its image once under
        each, so the counts may add up to more than the images: "dr;amd" and "amd;dr" were counted as two
        classes of their own, and ``dr`` alone missed the images that also had ``amd``.
        """
        if self.labels is None:
            return None
        counts: Counter[str] = Counter()
        for label in self.labels:
            counts.update({c.strip() for c in label.split(";") if c.strip()} or {UNLABELLED})
        return dict(counts.most_common())

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable summary: size, fingerprint, class balance, skipped images."""
        return {
            "num_images": len(self),
            "size": self.preprocess.size,
            "fingerprint": self.fingerprint,
            "class_balance": self.class_balance(),
            "skipped": [{"source": s.source, "reason": s.reason, "message": s.message} for s in self.skipped],
        }

    # -- cache -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, request_key: str = "") -> Path:
        """Write the set as ``.npz`` atomically (no pickles; loads with ``allow_pickle=False``)."""
        meta = {
            "cache_format": _CACHE_FORMAT,
            "fingerprint": self.fingerprint,
            "preprocess": self.preprocess.to_dict(),
            "sources": list(self.sources),
            "labels": list(self.labels) if self.labels is not None else None,
            "digests": list(self.digests) if self.digests is not None else None,
            "skipped": [[s.source, s.reason, s.message] for s in self.skipped],
            "request_key": request_key,
            "preprocess_version": PREPROCESS_VERSION,  # the runtime code that made the pixels (load checks it)
        }
        with atomic_open(path, "wb") as fh:
            np.savez(fh, images=self.images, meta=np.array(json.dumps(meta)))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationSet:
        """Read a set written by :meth:`save`; its fingerprint is checked against the pixels.

        A set whose pixels an older version of the runtime's preprocessing made is refused: they are not what
        the deployed model is fed now, and a table calibrated on them would carry their fingerprint as if
        they were (the user cache folder's sets are rebuilt instead: their key holds the version).
        """
        set_, meta = _load_npz(Path(path))
        made_by = meta.get("preprocess_version")
        if made_by != PREPROCESS_VERSION:
            by = (f"version {made_by} of the runtime's preprocessing" if made_by is not None
                  else "a uopsl that did not record its preprocessing version")
            raise DataError(f"{path}: these calibration pixels were made by {by}; today's is version "
                            f"{PREPROCESS_VERSION}, which feeds the model other pixels. Rebuild the set from the "
                            "images (uopsl calibrate ... --images DIR --set-cache FILE)")
        return set_


def fingerprint_images(images: np.ndarray, config: PreprocessConfig) -> str:
    """sha256 over the preprocessing config (canonical JSON), the array shape and the pixel bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images, np.uint8).tobytes())
    return h.hexdigest()


def _replaceable_cache(path: Path) -> bool:
    """Whether an unreadable cache file at ``path`` may be written over: it lies in the user cache folder
    (:func:`user_cache_dir`: nothing but caches live there), or it is an ``.npz`` that names itself a
    calibration set cache (another format, or damaged images). Anything else is someone's file."""
    try:
        if Path(os.path.realpath(user_cache_dir())) in Path(os.path.realpath(path)).parents:
            return True
        with np.load(path, allow_pickle=False) as z:
            return "cache_format" in json.loads(str(z["meta"]))
    except Exception:  # noqa: BLE001 - any failure to read it as ours means it is not ours
        return False


def _load_npz(path: Path) -> tuple[CalibrationSet, dict[str, Any]]:
    """The set saved at ``path`` (its fingerprint checked against its pixels) and the file's metadata."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images = np.array(z["images"])
            meta = json.loads(str(z["meta"]))
    except NUMPY_FILE_ERRORS as exc:
        raise DataError(f"{path}: not a calibration set cache ({exc}); delete it and rebuild the set") from exc
    if meta.get("cache_format") != _CACHE_FORMAT:
        raise DataError(f"{path}: calibration set cache format {meta.get('cache_format')!r}, expected {_CACHE_FORMAT}")
    cfg = PreprocessConfig.from_dict(meta["preprocess"])
    if fingerprint_images(images, cfg) != meta["fingerprint"]:
        raise DataError(f"{path}: the cached images do not match their fingerprint (corrupted?); delete the file")
    labels = meta.get("labels")
    digests = meta.get("digests")
    set_ = CalibrationSet(
        images, tuple(meta["sources"]), cfg, meta["fingerprint"],
        tuple(labels) if labels is not None else None,
        tuple(SkippedImage(*s) for s in meta.get("skipped", ())),
        tuple(str(d) for d in digests) if isinstance(digests, list) and len(digests) == len(images) else None,
    )
    return set_, meta


# -- reading image lists ------------------------------------------------------
def list_images(source: str | os.PathLike[str]) -> tuple[list[Path], list[str] | None]:
    """Resolve a folder, CSV or text list into image paths (and labels when the CSV has them)."""
    src = Path(source)
    if src.is_dir():
        # The screening runtime's own walk: the same image types, and no hidden files, no symbolic-link
        # loops and no uopsl-screen output folder (its overlays and thumbnails are no calibration images).
        state = WalkState()
        paths = list(walk_images(src, state))
        if not paths:
            raise DataError(f"{src}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively"
                            + (f"; {state.skipped_message()}" if state.anything_skipped else "") + ")")
        if state.excluded:
            log.info("%s: left out %s (uopsl-screen output)", src, ", ".join(state.excluded))
        return paths, None
    if not src.is_file():
        raise DataError(f"{src}: no such file or folder; expected an image folder, a CSV or a text list of paths")
    if src.suffix.lower() == ".csv":
        return _read_csv(src)
    if src.suffix.lower() in LIST_SUFFIXES:
        lines = [ln.strip() for ln in _read_text(src).splitlines()]
        paths = [_resolve(src.parent, ln) for ln in lines if ln and not ln.startswith("#")]
        if not paths:
            raise DataError(f"{src}: the list holds no image paths")
        return paths, None
    raise DataError(
        f"{src}: unsupported calibration source (suffix {src.suffix!r}); "
        f"expected a folder, a .csv, a text list ({sorted(LIST_SUFFIXES)}) or a .npz set"
    )


def _resolve(base: Path, entry: str) -> Path:
    p = Path(entry)
    return p if p.is_absolute() else base / p


def _read_text(path: Path) -> str:
    """A list or CSV file's text: UTF-8, with or without the byte-order mark Excel writes; else one clear error."""
    return read_user_text(path, "calibration list" if path.suffix.lower() in LIST_SUFFIXES else "calibration CSV")


#: The class-balance name of a CSV row whose label cell is empty (not a class of its own called "").
UNLABELLED = "(no label)"


def _read_csv(path: Path) -> tuple[list[Path], list[str] | None]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    fields = [f.strip() for f in reader.fieldnames or []]
    reader.fieldnames = fields
    if "path" not in fields:
        raise DataError(f"{path}: a calibration CSV needs a 'path' column; its columns are {fields}")
    rows = list(reader)
    # Rows without a path (Excel leaves separator-only rows at the end) are not images: left out, said once.
    blank = [i + 2 for i, r in enumerate(rows) if not (r["path"] or "").strip()]
    if blank:
        log.warning("%s: %d row(s) without a path left out (line%s %s)", path, len(blank),
                    "s" if len(blank) > 1 else "", ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else ""))
        rows = [r for r in rows if (r["path"] or "").strip()]
    if not rows:
        raise DataError(f"{path}: the CSV lists no images")
    paths = [_resolve(path.parent, (r["path"] or "").strip()) for r in rows]
    # `label` (one class) or `labels` (`;`-joined classes, as `uopsl synth` and the training CSVs write them).
    column = "label" if "label" in fields else "labels" if "labels" in fields else None
    labels = [(r.get(column) or "").strip() or UNLABELLED for r in rows] if column else None
    return paths, labels


# -- building -------------------------------------------------------------
def _log_skipped(skipped: Sequence[SkippedImage]) -> None:
    for s in skipped:
        log.warning("calibration image skipped (%s): %s", s.reason, s.message)


def _request_key(paths: Sequence[Path], labels: Sequence[str] | None, cfg: PreprocessConfig,
                 max_images: int | None, seed: int, require_fov: bool) -> str:
    # What decides the cache's content without reading the images: file identity and options. The change time
    # and inode too: a file replaced by a copy keeping size and mtime (cp -p, rsync -t, tar x; fixed-size BMP,
    # TIFF, DICOM) was served from the cache, and calibration was skipped with the old images' table.
    entries = []
    for p in paths:
        try:
            st = p.stat()
            entries.append([str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        except OSError:
            entries.append([str(p), -1, -1, -1, -1])
    blob = json.dumps(
        {"files": entries, "labels": list(labels) if labels is not None else None, "preprocess": cfg.to_dict(),
         "preprocess_version": PREPROCESS_VERSION,
         "max_images": max_images, "seed": seed, "require_fov": require_fov},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def build_calibration_set(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: PreprocessConfig | None = None,
    *,
    labels: Sequence[str] | None = None,
    max_images: int | None = None,
    seed: int = 0,
    require_fov: bool = True,
    cache: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> CalibrationSet:
    """Build (or load from ``cache``) a calibration set.

    source: a folder, a CSV (``path`` [, ``label``]), a text list, a ``.npz``
        written by :meth:`CalibrationSet.save`, or a sequence of image paths.
    labels: one label per path (overrides a CSV's ``label`` column).
    max_images: keep at most this many good images, drawn in a seeded random
        order so a sorted list (e.g. one class first) is not cut to one class;
        a skipped image is replaced by the next one in that order.
    require_fov: skip photographs without a detected field of view (the
        runtime's quality gate would refuse them, so they are not what the
        deployed model sees).
    cache: ``.npz`` path; reused when the files (paths, sizes, mtimes, change times, inodes) and
        options are unchanged, written otherwise; a file there that is not a calibration set cache
        is refused (ConfigError), not written over, unless it lies in the user cache folder.
    """
    cfg = config or PreprocessConfig()
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".npz":
        loaded = CalibrationSet.load(source)
        if config is not None and loaded.preprocess != cfg:
            raise ConfigError(
                f"{source}: this set was preprocessed with {loaded.preprocess}, not the requested {cfg}; "
                "rebuild it from the images"
            )
        if labels is not None:
            raise ConfigError(f"{source}: a saved set keeps the labels it was built with; labels apply to images")
        if max_images is not None:  # the same seeded draw as for images (its fingerprint follows the subset)
            if max_images < 1:
                raise ConfigError(f"max_images must be >= 1, got {max_images}")
            loaded = loaded.subset(max_images, seed)
        return loaded
    if isinstance(source, (str, os.PathLike)):
        paths, csv_labels = list_images(source)
    else:
        paths, csv_labels = [Path(p) for p in source], None
        if not paths:
            raise DataError("no calibration images given (empty list)")
    if labels is not None:
        if len(labels) != len(paths):
            raise DataError(f"{len(paths)} images but {len(labels)} labels; give one label per image")
        csv_labels = [str(x) for x in labels]
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be >= 1, got {max_images}")

    key = _request_key(paths, csv_labels, cfg, max_images, seed, require_fov)
    if cache is not None and Path(cache).is_file():
        try:
            cached, cached_meta = _load_npz(Path(cache))
            cached_key = str(cached_meta.get("request_key", ""))
        except DataError as exc:
            if not _replaceable_cache(Path(cache)):
                raise ConfigError(f"{cache} exists and is not a calibration set cache, so it is not written over: "
                                  "give another --set-cache path, or remove it if it is an old cache") from exc
            log.warning("ignoring calibration set cache: %s", exc)
        else:
            if cached_key == key and cached.digests is None:
                # Written before sets recorded their files' digests: rebuilt, so that the table gets them.
                log.info("calibration set cache %s does not record its files' digests: rebuilding", cache)
            elif cached_key == key:
                log.info("calibration set loaded from cache %s (%d images)", cache, len(cached))
                _log_skipped(cached.skipped)
                return cached
            log.info("calibration set cache %s is for other files or options: rebuilding", cache)

    order = np.arange(len(paths))
    if max_images is not None and max_images < len(paths):
        order = np.random.default_rng(seed).permutation(len(paths))
    want = len(paths) if max_images is None else min(max_images, len(paths))
    kept: list[tuple[int, np.ndarray, str]] = []
    skipped: list[SkippedImage] = []
    for i in track(order, total=want, desc="preprocess", show=show_progress):
        if len(kept) >= want:
            break
        path = paths[int(i)]
        try:
            data = read_bytes(path)
            pre = preprocess(data, cfg, source=str(path))
        except ImageError as exc:
            skipped.append(SkippedImage(str(path), exc.reason, str(exc)))
            continue
        except (cv2.error, ValueError, OSError, MemoryError) as exc:  # a broken file must not stop the set
            skipped.append(SkippedImage(str(path), "unreadable", f"{path}: {exc.__class__.__name__}: {exc}"))
            continue
        if require_fov and not pre.geometry.fov_found:
            skipped.append(SkippedImage(
                str(path), "no_fov",
                f"{path}: no fundus field of view found (fill {pre.geometry.fov_fill:.2f}); "
                "the quality gate would refuse it",
            ))
            continue
        if require_fov and pre.geometry.fov_count > 1:
            skipped.append(SkippedImage(
                str(path), "several_fov",
                f"{path}: {pre.geometry.fov_count} fields of view in one image (both eyes or a montage); "
                "the quality gate would refuse it",
            ))
            continue
        kept.append((int(i), pre.image, short_sha256(data)))
    _log_skipped(skipped)
    if not kept:
        raise DataError(
            f"none of the {len(skipped)} calibration images could be used (first: {skipped[0].message if skipped else '-'}); "
            "check the paths and the files"
        )
    kept.sort(key=lambda t: t[0])
    images = np.stack([img for _, img, _ in kept])
    set_ = CalibrationSet(
        images,
        tuple(str(paths[i]) for i, _, _ in kept),
        cfg,
        fingerprint_images(images, cfg),
        tuple(csv_labels[i] for i, _, _ in kept) if csv_labels is not None else None,
        tuple(skipped),
        tuple(d for _, _, d in kept),
    )
    if set_.labels is not None:
        log.info("calibration set class balance: %s", set_.class_balance())
    log.info("calibration set: %d images, %d skipped, fingerprint %s...", len(set_), len(skipped), set_.fingerprint[:12])
    missing_reader = sum(s.reason == "reader_missing" for s in skipped)
    if cache is not None and missing_reader:
        # Those files read once the reader is installed: a cache would leave them out for good.
        log.info("calibration set not cached: %d image(s) need a reader that is not installed", missing_reader)
    elif cache is not None:
        try:
            set_.save(cache, request_key=key)
        except OSError as exc:
            # A cache only saves the next run its reading: a read-only or full cache folder ended the command
            # after every image was read, with a message that named no cache (a review).
            log.warning("calibration set not cached: cannot write %s (%s); going on without it (point "
                        "UOPSL_CACHE_DIR at writable storage; calibrate also takes --set-cache PATH or --no-cache)",
                        cache, exc.strerror or exc)
    return set_
