"""What a bundle's model may be used for, as its maker states it, and how every output shows it.

A report made with the demo's model (trained on computer-drawn photographs)
looked exactly like one made with a validated model: a clinic could not tell
that every "refer" on the page meant nothing. The manifest therefore carries an
:class:`IntendedUse`, and the runtime shows it wherever results are read: a
banner at the top of every report page and in the header each printed sheet
repeats, a warning when a bundle is opened for screening, ``uopsl-screen info``
and :attr:`uopsl.runtime.api.Screener.intended_use`.

The toolkit records the statement; it does not check it. ``clinical`` means
the bundle's maker says they validated this model for the use the statement
describes (population, cameras, the study), which is theirs to prove; the
toolkit refuses the label without a statement, and ``uopsl export`` refuses it
for a model whose checkpoint records that every stage teaching it its classes
trained on synthetic photographs (``uopsl.train.workflow.resolve_use``).

Bundles exported before uopsl recorded an intended use read as ``unstated``
and are shown with a notice that asks whether the model was validated.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from uopsl.runtime.errors import BundleError

UseStatus = Literal["demonstration", "research", "clinical", "unstated"]
#: Every status, in the order help texts list them (``unstated`` is never written: it is the absence of one).
STATUSES: tuple[str, ...] = ("demonstration", "research", "clinical", "unstated")
#: The statuses an exporter may write.
STATED: tuple[str, ...] = ("demonstration", "research", "clinical")

#: Longest statement and training-data description kept (a paragraph, not a document: it is shown on every page).
MAX_STATEMENT_CHARS = 1000
MAX_TRAINED_ON_CHARS = 300

#: The formatting characters a statement may hold: zero-width non-joiner and joiner (Persian, Indic scripts),
#: soft hyphen. None of them can reorder or hide text.
_KEPT_FORMAT = frozenset("\u200c\u200d\u00ad")

#: Banner texts. A report shows them above everything else; a run logs them as a warning.
_WARNINGS = {
    "demonstration": ("Demonstration model, trained on computer-drawn (synthetic) photographs. Its results say "
                      "nothing about real patients: do not use them for any patient."),
    "research": ("Research use only: this model has not been validated for clinical decisions. Do not use its "
                 "results to decide a patient's care."),
    "unstated": ("This bundle does not state what it may be used for (it was exported before uopsl recorded "
                 "it). Ask its maker whether the model was validated for clinical use before acting on its "
                 "results."),
}

#: Marks for per-result console lines.
_TAG = {"demonstration": "[demonstration model] ", "research": "[research use only] ",
        "unstated": "[intended use not stated] "}

#: Short forms for a page header that every printed sheet repeats, and for one-line summaries.
_SHORT = {
    "demonstration": "DEMONSTRATION MODEL - not for patients",
    "research": "RESEARCH USE ONLY - not for clinical decisions",
    "unstated": "intended use not stated",
    "clinical": "clinical use as stated by the bundle's maker",
}


def _clean_text(value: object, what: str, limit: int) -> str:
    """``value`` as one line of text (whitespace runs folded), or BundleError saying what is wrong.

    Control characters (C0, C1) and invisible formatting characters (bidirectional
    marks, embeddings, overrides and isolates, zero-width space, word joiner, tags,
    the byte-order mark) are refused: they could make a terminal or a page show other
    text than is stored ("ages 18 - 65" can display as "ages 65 - 18"). The three that
    scripts need and that cannot reorder text are kept: the zero-width non-joiner and
    joiner of Persian or Indic spelling, and the soft hyphen.
    """
    if not isinstance(value, str):
        raise BundleError(f"intended_use.{what} must be text, got {type(value).__name__}")
    text = " ".join(value.split())
    if any(unicodedata.category(ch) == "Cc" or (unicodedata.category(ch) == "Cf" and ch not in _KEPT_FORMAT)
           for ch in text):
        raise BundleError(f"intended_use.{what} holds control or formatting characters; write plain text")
    if len(text) > limit:
        raise BundleError(f"intended_use.{what} is {len(text)} characters long; at most {limit} are kept on "
                          "every report page: shorten it and refer to the full document")
    return text


@dataclass(frozen=True)
class IntendedUse:
    """The maker's statement of what the model may be used for.

    status: ``demonstration`` (trained on synthetic photographs: shows the
    toolkit working, nothing more), ``research`` (not validated for clinical
    decisions), ``clinical`` (the maker states it is validated for the use
    ``statement`` describes) or ``unstated`` (a bundle from before the field).
    statement: the maker's words (who validated it, for which population and
    cameras, the study); required for ``clinical``. trained_on: what the model
    was trained on, in a few words (shown next to the status).
    """

    status: UseStatus = "unstated"
    statement: str = ""
    trained_on: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise BundleError(f"intended_use.status must be one of {', '.join(STATED)} (or unstated, where a bundle "
                              f"states none), got {self.status!r}")
        object.__setattr__(self, "statement", _clean_text(self.statement, "statement", MAX_STATEMENT_CHARS))
        object.__setattr__(self, "trained_on", _clean_text(self.trained_on, "trained_on", MAX_TRAINED_ON_CHARS))
        if self.status == "clinical" and not self.statement:
            raise BundleError("intended use 'clinical' needs a statement: who validated the model, for which "
                              "population and cameras, and where the evidence is (--use-statement)")

    @property
    def stated(self) -> bool:
        return self.status != "unstated"

    @property
    def for_patients(self) -> bool:
        """Whether the maker states the model may inform a patient's care (``clinical`` only)."""
        return self.status == "clinical"

    def warning(self) -> str | None:
        """The caution every output must carry, or None for a ``clinical`` bundle (its statement is shown)."""
        return _WARNINGS.get(self.status)

    def short(self) -> str:
        """A few words for page headers and one-line summaries."""
        return _SHORT[self.status]

    def tag(self) -> str:
        """A bracketed mark for lines that show one result each (``watch``'s console), "" for ``clinical``."""
        return _TAG.get(self.status, "")

    def describe(self) -> str:
        """One paragraph: status, statement and training data, for ``info`` and logs."""
        parts = [self.warning() or f"Clinical use as stated by the bundle's maker: {self.statement}"]
        if self.statement and self.status != "clinical":
            parts.append(f"Maker's statement: {self.statement}")
        if self.trained_on:
            parts.append(f"Trained on: {self.trained_on}.")
        return " ".join(parts)

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "statement": self.statement, "trained_on": self.trained_on}

    @classmethod
    def from_dict(cls, d: object) -> IntendedUse:
        if not isinstance(d, dict):
            raise BundleError(f"intended_use must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"status", "statement", "trained_on"})
        if unknown:
            raise BundleError(f"intended_use has unknown fields {unknown}")
        status = d.get("status")
        if status == "unstated":  # never written: a manifest without a statement leaves the field out
            raise BundleError("intended_use.status 'unstated' is not written; leave the field out instead")
        return cls(status=status, statement=d.get("statement", ""), trained_on=d.get("trained_on", ""))  # type: ignore[arg-type]


#: Training stages that teach a model its classes (QAT only distils a model into INT8, on any photographs).
LABEL_STAGES = ("pretrain", "finetune")


def synthetic_only(records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the training-data ``records`` (``uopsl.train.workflow.data_record``) say every fundus photograph
    that taught the model its classes was synthetic. False when none is recorded: nothing is known.

    Fundus only: the model screens fundus photographs, and OCT pools (real or not) teach it where lesions
    sit, not what a real photograph looks like.
    """
    taught = [r for r in records if r.get("stage") in LABEL_STAGES and r.get("modality") == "fundus"]
    return bool(taught) and all(r.get("synthetic") is True for r in taught)


#: The manifest ``notes`` key under which ``uopsl export`` keeps the checkpoint's training-data records.
TRAINING_DATA_NOTE = "training_data"

SYNTHETIC_CLINICAL = ("this model only ever learned from synthetic fundus photographs ({}); it cannot be stated "
                      "for clinical use. Train on real photographs, or state it as research or demonstration")


def check_choice(status: str, statement: str = "", trained_on: str = "") -> IntendedUse:
    """An :class:`IntendedUse` an exporter may write, from command-line values (BundleError if not)."""
    if status not in STATED:
        raise BundleError(f"intended use must be one of {', '.join(STATED)}, got {status!r}")
    return IntendedUse(status, statement, trained_on)  # type: ignore[arg-type]
