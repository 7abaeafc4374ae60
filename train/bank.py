"""Class banks: class names -> description phrases -> frozen text prototypes.

A class bank is what the model scores against. Training builds it from the
built-in description dictionary (:mod:`uopsl.train.descriptions`); a re-export
or a zero-shot run can build one from a user file of new classes (names +
phrases), including classes that never had an image.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uopsl.runtime.errors import ConfigError
from uopsl.train import descriptions
from uopsl.train.text import DEFAULT_MODEL, TextEncoder

log = logging.getLogger(__name__)

#: Two prototypes at least this close (cosine) are one to the model: :func:`warn_identical`.
IDENTICAL_COSINE = 0.999


@dataclass(frozen=True)
class ClassBank:
    """Names, their phrases, raw text prototypes (K, text_dim) and which were seen in training."""

    names: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]
    text: np.ndarray = field(repr=False)
    seen: tuple[bool, ...] = ()


def resolve(names: Sequence[str], classes_file: str | Path | None = None,
            known: Mapping[str, Sequence[str]] | None = None, *,
            quiet: bool = False) -> list[descriptions.DiseaseDescription]:
    """Descriptions for ``names``: from ``classes_file`` first (if given), then ``known`` (a checkpoint's
    classes and the phrases it was trained with), else the built-in dictionary. ``quiet``: the file was
    read (and its notes logged) already."""
    user = ({d.name: d for d in descriptions.load_classes(classes_file, known, quiet=quiet)}
            if classes_file else {})
    out = []
    for n in names:
        key = descriptions.canonical(n)
        if n in user or key in user:  # a trained class is named in the file's descriptions as it was trained
            out.append(user[n] if n in user else user[key])
            continue
        if known and n in known:
            out.append(descriptions.trained_description(key, known[n]))
            continue
        try:
            out.append(descriptions.get(n))
        except ConfigError as exc:
            if not classes_file:
                raise
            raise ConfigError(f"class {n!r} is neither described in {classes_file} (which describes "
                              f"{', '.join(sorted(user)) or 'no class'}) nor built in: add it to that file") from exc
    return out


def build(names: Sequence[str], classes_file: str | Path | None = None, text_model: str = DEFAULT_MODEL,
          seen: Sequence[str] | None = None, cache_dir: str | Path | None = None,
          known: Mapping[str, Sequence[str]] | None = None, *, quiet: bool = False) -> ClassBank:
    """Encode the class descriptions into prototypes (mean of normalised phrase embeddings).

    All phrases of a class, whatever modality each is tagged with (fundus, OCT
    or both), form its single shared prototype: text is the bridge between the
    two unpaired image pools, so both pools are scored against the same ``e_k``
    (DESIGN.md section 1). The tag only records what a phrase describes.
    Classes whose prototypes the encoder cannot tell apart are named in a
    warning (:func:`warn_identical`).
    """
    descs = resolve(names, classes_file, known, quiet=quiet)
    phrases = tuple(tuple(d.phrases) for d in descs)
    text = TextEncoder(text_model, cache_dir).prototypes(phrases)
    warn_identical(names, text)
    seen_set = set(names if seen is None else seen)
    return ClassBank(tuple(names), phrases, text, tuple(n in seen_set for n in names))


def warn_identical(names: Sequence[str], text: np.ndarray) -> None:
    """Warn of classes whose prototypes are (near-)identical (cosine >= :data:`IDENTICAL_COSINE`).

    Why: the model scores a photograph against the prototypes alone, so two such classes get the same score
    whatever the photograph shows. Long descriptions that begin alike did this silently (the encoder reads only
    their first tokens): two new classes had cosine 1.0 and one scored as the other (a review).
    """
    if len(names) < 2:
        return
    unit = text / np.linalg.norm(text, axis=1, keepdims=True).clip(1e-8)
    cos = unit @ unit.T
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if cos[i, j] >= IDENTICAL_COSINE:
                log.warning("classes %r and %r get (near-)identical prototypes (cosine %.4f): the sentence encoder "
                            "cannot tell their descriptions apart, so the model gives them the same scores; "
                            "describe them with phrases that differ, early on in each phrase", names[i], names[j],
                            float(cos[i, j]))


def from_file(classes_file: str | Path, text_model: str = DEFAULT_MODEL, seen: Sequence[str] = (),
              cache_dir: str | Path | None = None, known: Mapping[str, Sequence[str]] | None = None) -> ClassBank:
    """A bank of every class listed in a user TOML/JSON file, in file order.

    ``known``: a checkpoint's classes and their phrases; one listed without phrases keeps them.
    """
    descs = descriptions.load_classes(classes_file, known)
    return build([d.name for d in descs], classes_file, text_model, seen, cache_dir, known, quiet=True)
