"""The photographs of an evaluation that a screening device would give a result on, as ``uopsl validate`` takes them.

Why: ``uopsl evaluate`` scored every photograph the data listed, while ``uopsl validate`` leaves out what the
runtime's quality gate calls ungradable (a device gives no decision on it) and counts a byte-identical copy
once (under another name or patient id it is the same photograph). On one TVHL spec the two reported other
sensitivities for one model and said nothing of why (a review: 989 against 916 images). Evaluation and
zero-shot now take the same photographs by default, and their reports say which were left out and why;
``keep_ungradable`` scores the ungradable ones too (validate's ``--keep-ungradable``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uopsl.export.validate import ImageRecord, distinct_content
from uopsl.runtime.errors import ConfigError, UopslError
from uopsl.runtime.preprocess import PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.quality import QualityConfig, assess
from uopsl.train.torchdata import Item

log = logging.getLogger(__name__)

_LISTED = 20  # photographs named in a report section; the rest are counted


def canonical_items(items: Sequence[Item], masks: Sequence[Any] | None = None
                    ) -> tuple[list[Item], list[Any] | None]:
    """``items`` (and ``masks``, one per item) sorted by file: the order every figure is computed in, whatever order
    the data listed them in. The bootstrap draws by position, so the same photographs in another row order gave
    other intervals under the same seed (a review)."""
    order = sorted(range(len(items)), key=lambda i: (Path(items[i].path).as_posix(), items[i].group,
                                                     items[i].target.tolist()))
    return [items[i] for i in order], (None if masks is None else [masks[i] for i in order])


@dataclass(frozen=True)
class ScreenedView:
    """``keep``: per item, whether it is scored; ``section``: what the report records of those left out;
    ``shas``: each item's file sha256 as read here (None: unreadable), so the report need not read them again."""

    keep: tuple[bool, ...]
    section: dict[str, Any] = field(default_factory=dict)
    shas: tuple[str | None, ...] = ()

    def select(self, items: Sequence[Any]) -> list[Any]:
        """The entries of ``items`` (one per item, in step) that are scored."""
        return [x for x, k in zip(items, self.keep, strict=True) if k]


def screened_items(items: Sequence[Item], config: PreprocessConfig, names: Sequence[str], *,
                   keep_ungradable: bool = False, what: str = "evaluation", masks: Sequence[Any] | None = None
                   ) -> tuple[list[Item], list[Any] | None, ScreenedView, dict[str, str | None]]:
    """What evaluate and zero-shot score: ``items`` in one order (:func:`canonical_items`), less what
    :func:`screened_view` leaves out; with ``masks`` in step, the view, and each scored file's sha256 by path.
    ConfigError when nothing is left."""
    items, masks = canonical_items(items, masks)
    view = screened_view(items, config, names, keep_ungradable=keep_ungradable, what=what)
    kept = view.select(items)
    if not kept:
        raise ConfigError(f"none of the {len(items)} photographs of this {what} can be scored: every one is "
                          "ungradable by the runtime's quality gate or a copy of another (--keep-ungradable scores "
                          "the ungradable ones too)")
    shas = {str(it.path): sha for it, sha in zip(items, view.shas)}
    return kept, (None if masks is None else view.select(masks)), view, shas


def screened_view(items: Sequence[Item], config: PreprocessConfig, names: Sequence[str], *,
                  keep_ungradable: bool = False, what: str = "evaluation") -> ScreenedView:
    """Which of ``items`` a device would screen: one per content, and gradable unless ``keep_ungradable``.

    A file that cannot be read is kept here (the dataset reports it as unreadable, as before). Copies whose
    labels disagree are refused, as validate refuses them (:class:`~uopsl.runtime.errors.DataError`).
    ``names``: the model's classes, in the order of each item's target. Logs one warning per kind left out.
    """
    records = [ImageRecord(str(it.path), it.path, tuple(n for n, t in zip(names, it.target) if t > 0.5),
                           it.group or None) for it in items]
    shas: list[str | None] = []
    refused: dict[int, str] = {}  # item -> the quality gate's reasons, for the ungradable ones
    for i, it in enumerate(items):  # one read per photograph, its bytes held one at a time
        try:
            raw = read_bytes(it.path)  # a regular file of a sane size, as the runtime reads one
        except UopslError:
            shas.append(None)  # unreadable: the dataset says so
            continue
        shas.append(hashlib.sha256(raw).hexdigest())
        if keep_ungradable:
            continue
        try:
            verdict = assess(preprocess(raw, config, source=str(it.path)))
        except UopslError:
            continue  # undecodable: the dataset says so
        if not verdict.gradable:
            refused[i] = ", ".join(verdict.reasons)
    copies = distinct_content(records, shas)
    keep = [k and i not in refused for i, k in enumerate(copies.keep)]
    ungradable = [(str(items[i].path), why) for i, why in sorted(refused.items()) if copies.keep[i]]
    section: dict[str, Any] = {
        "quality_gate": None if keep_ungradable else QualityConfig().to_dict(),
        "n_listed": len(items), "n_scored": sum(keep),
        "n_duplicate_content": len(copies.dropped),
        "duplicates": [{"image": str(a.path), "copy_of": str(b.path)} for a, b in copies.dropped[:_LISTED]],
        "n_ungradable": len(ungradable),
        "ungradable": [{"image": p, "reasons": r} for p, r in ungradable[:_LISTED]],
        "note": ("as uopsl validate takes them: a byte-identical copy counts once, and "
                 + ("ungradable photographs are scored too (--keep-ungradable)" if keep_ungradable else
                    "photographs the runtime's quality gate calls ungradable are left out (a device gives no "
                    "decision on them; --keep-ungradable scores them too)")),
    }
    if copies.dropped:
        log.warning("%d of the %d photographs of this %s are byte-identical copies of another one (e.g. %s = %s): "
                    "each is counted once", len(copies.dropped), len(items), what, copies.dropped[0][0].path.name,
                    copies.dropped[0][1].path.name)
    if ungradable:
        log.warning("%d of the %d photographs of this %s are ungradable by the runtime's quality gate (e.g. %s: %s) "
                    "and are left out, as a device gives no decision on them (--keep-ungradable scores them too)",
                    len(ungradable), len(items), what, ungradable[0][0], ungradable[0][1])
    return ScreenedView(tuple(keep), section, tuple(shas))
