"""Torch datasets over preprocessed images, with a disk cache of the preprocessed pixels.

Fundus photographs go through :func:`uopsl.runtime.preprocess.preprocess` (the
same code the device runs) once; OCT B-scans, which have no circular field of
view, are letterboxed whole (:func:`bscan_input`). The uint8 results are kept in
a memory-mapped ``.npy`` keyed by the file list, the modality and the
preprocessing parameters, so later epochs, folds and runs skip decoding.
Unreadable images are reported and dropped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from uopsl.runtime.errors import DataError, ImageError, ImageReaderMissingError, ImageReadError
from uopsl.runtime.fsio import NUMPY_FILE_ERRORS, atomic_open
from uopsl.runtime.preprocess import PREPROCESS_VERSION, PreprocessConfig, decode, preprocess, read_bytes, resize_square
from uopsl.runtime.progress import track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One training image: its path and its multi-hot target over the model's classes."""

    path: Path
    target: np.ndarray
    group: str = ""




_NAMED_BAD = 5  # unreadable images named one by one before the rest only count

ImageModality = Literal["fundus", "oct"]
#: How a B-scan becomes the square model input (part of the cache key and of a run's identity).
#: Before it, B-scans went through the fundus preprocessing, which finds no field of view on a
#: B-scan and kept the frame's central square: 44 % of a synthetic scan's width, with most of the
#: peripheral lesions (dr foci, the glaucoma band, rp's outer-layer loss) cut away.
OCT_INPUT = "letterbox-1"


def pixels_version(oct_scans: bool) -> list[Any]:
    """How files become model inputs, for cache keys and run identities: the preprocessing version, and
    :data:`OCT_INPUT` when B-scans are among the inputs."""
    return [PREPROCESS_VERSION, *([OCT_INPUT] if oct_scans else [])]


def bscan_input(data: bytes, pre: PreprocessConfig, source: str | None = None) -> np.ndarray:
    """An OCT B-scan as the (size, size, 3) uint8 model input: the whole scan, centred on black, resized.

    Padding rather than stretching keeps the retina's layers at their thickness
    and a lesion's position along the scan proportional to where it is.
    """
    rgb = decode(data, source=source, max_pixels=pre.max_pixels)
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    square[y0 : y0 + h, x0 : x0 + w] = rgb
    return resize_square(square, pre.size)


def cache_images(paths: Sequence[Path], pre: PreprocessConfig, cache_dir: Path | None,
                 modality: ImageModality = "fundus") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preprocess ``paths``; returns (images (N, S, S, 3) uint8, ok (N,) bool, content digests (N,) uint64).

    A content digest is the first 8 bytes of the file's sha256 (0 for a file
    that could not be read): which photographs made a checkpoint, without
    their names (see :func:`uopsl.train.workflow.record_images_seen`). Nothing is
    cached when a file could not be *read* (an I/O error, a file locked by
    another program): it may read next time, and a cache would leave it out for good.
    """
    how: list[Any] = [pre.to_dict(), *pixels_version(modality == "oct")]
    key = hashlib.sha256(json.dumps([_file_key(p) for p in paths] + how).encode()).hexdigest()[:20]
    if cache_dir is not None:
        img_file, ok_file, sha_file = (cache_dir / f"{kind}-{key}.npy" for kind in ("img", "ok", "sha"))
        if img_file.is_file() and ok_file.is_file() and sha_file.is_file():
            try:
                images, ok_flags, shas = np.load(img_file, mmap_mode="r"), np.load(ok_file), np.load(sha_file)
            except NUMPY_FILE_ERRORS as exc:  # empty or cut short (a partial copy): made again below
                log.warning("ignoring the unreadable image cache %s (%s); it will be rewritten", img_file.parent, exc)
            else:
                if len(images) == len(ok_flags) == len(shas) == len(paths) and images.shape[1:] == (pre.size, pre.size, 3):
                    return images, ok_flags, shas
                log.warning("ignoring the image cache in %s: its arrays do not match %d photographs at %d px; it "
                            "will be rewritten", img_file.parent, len(paths), pre.size)
                del images  # the memory map, before the file is replaced (Windows refuses a mapped file)
    out = np.zeros((len(paths), pre.size, pre.size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    digests = np.zeros(len(paths), np.uint64)
    n_bad = 0
    read_failed = False
    for i, p in enumerate(track(paths, total=len(paths), desc="preprocess", mininterval=1.0)):
        try:
            data = read_bytes(p)
            digests[i] = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
            out[i] = bscan_input(data, pre, str(p)) if modality == "oct" else preprocess(data, pre, source=str(p)).image
            ok[i] = True
        except (ImageError, ValueError, MemoryError) as exc:  # a bad file is skipped, never the run
            n_bad += 1
            # A file that is there but could not be read (I/O error, locked) may read next time; a missing
            # path or a folder is in the cache key already (size -1) and is cached like any bad image.
            read_failed |= isinstance(exc, ImageReadError) and p.is_file()
            # A reader installed later (pydicom for DICOM) reads it: not a property of the file either.
            read_failed |= isinstance(exc, ImageReaderMissingError)
            # The first few by name; ImageDataset counts them all (also when read back from the cache).
            log.log(logging.WARNING if n_bad <= _NAMED_BAD else logging.DEBUG, "skipping %s: %s", p, exc)
    if cache_dir is not None and not read_failed:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path, array in ((img_file, out), (ok_file, ok), (sha_file, digests)):
            with atomic_open(path, "wb") as fh:
                np.save(fh, array)
    return out, ok, digests


def _file_key(p: Path) -> list[Any]:
    """Path, size and modification time (-1 for a missing file): a file replaced in place is preprocessed again."""
    try:
        st = p.stat()
    except OSError:
        return [str(p), -1, -1]
    return [str(p), st.st_size, st.st_mtime_ns]


class ImageDataset(Dataset):
    """(image float (3, S, S) in 0..255, target (K,)) pairs, with light augmentation when training."""

    def __init__(self, items: Sequence[Item], pre: PreprocessConfig, cache_dir: Path | None = None,
                 augment: bool = False, modality: ImageModality = "fundus") -> None:
        if not items:
            raise DataError("the dataset is empty: no images to train or evaluate on")
        images, ok, digests = cache_images([it.path for it in items], pre, cache_dir, modality)
        self.pre = pre
        self.modality = modality
        self.images = images
        self.index = np.flatnonzero(ok)
        if len(self.index) == 0:
            raise DataError(f"none of the {len(items)} images could be read")
        #: The images left out because they could not be decoded or preprocessed.
        self.unreadable = [items[int(i)].path for i in np.flatnonzero(~np.asarray(ok, bool))]
        if self.unreadable:
            log.warning("%d of %d images could not be read and are left out (e.g. %s)%s", len(self.unreadable),
                        len(items), self.unreadable[0], "; -vv lists them" if len(self.unreadable) > 1 else "")
            log.debug("unreadable images left out: %s", ", ".join(str(p) for p in self.unreadable))
        self.items = [items[int(i)] for i in self.index]
        #: Per kept image, the first 8 bytes of its file's sha256 (see :func:`cache_images`).
        self.digests = np.asarray(digests)[self.index]
        self.targets = np.stack([it.target for it in self.items]).astype(np.float32)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(self.images[self.index[i]])).permute(2, 0, 1).float()
        if self.augment:
            x = augment(x, torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item())))
        return x, torch.from_numpy(self.targets[i])


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip, small brightness/contrast/colour jitter; keeps the black surround black-ish.

    Horizontal flips are safe (left and right eyes are mirror images);
    geometric warps are kept small so predilection sites keep their meaning.
    """
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    gain = 1.0 + (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.2
    contrast = 1.0 + (torch.rand((), generator=g) - 0.5) * 0.3
    mean = x.mean()
    return ((x - mean) * contrast + mean).mul(gain).clamp(0, 255)
