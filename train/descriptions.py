"""The disease-description dictionary: per class a name, a display name and expert phrases.

Text is the only bridge between the unpaired fundus and OCT pools (DESIGN.md
section 1): a class prototype is the mean of its phrase embeddings. The phrases
below were written for this project from standard clinical descriptions (ICDR
diabetic retinopathy scale, Beckman AMD classification, common OCT
terminology); they are not taken from the UOPSL paper, which does not publish
its texts. Each phrase records the modality it describes, ``fundus``, ``oct``
or ``both``; the tag documents the phrase and does not change the prototype,
which is the mean of every phrase of the class whatever its tag (one shared
prototype scores both pools, DESIGN.md section 1). The phrases are English:
the default sentence encoder, all-MiniLM-L6-v2, was trained on English text.

Pure data and small helpers; no torch. Users add or redefine classes for a
zero-shot re-export with a TOML or JSON file read by :func:`load_classes`.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import read_user_text
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

Modality = Literal["fundus", "oct", "both"]
MODALITIES: tuple[str, ...] = ("fundus", "oct", "both")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class DiseaseDescription:
    """One class: canonical ``name``, human ``display`` name, phrases and the modality of each.

    ``phrases`` and ``modalities`` are parallel tuples. Construction validates
    the entry (name syntax, at least one phrase, no empty or repeated phrase,
    known modalities) and raises :class:`ConfigError` otherwise.
    """

    name: str
    display: str
    phrases: tuple[str, ...]
    modalities: tuple[Modality, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"class name {self.name!r} is not valid: use 1-64 characters a-z, 0-9 and '_', starting with a letter"
            )
        if not isinstance(self.display, str) or not self.display.strip():
            raise ConfigError(f"class {self.name!r}: display name must be a non-empty string; got {self.display!r}")
        if not self.phrases:
            raise ConfigError(f"class {self.name!r} has no phrases; give at least one description phrase")
        if len(self.phrases) != len(self.modalities):
            raise ConfigError(
                f"class {self.name!r}: {len(self.phrases)} phrases but {len(self.modalities)} modalities; "
                "give one modality per phrase"
            )
        for p, m in zip(self.phrases, self.modalities):
            if not isinstance(p, str) or not p.strip():
                raise ConfigError(f"class {self.name!r}: every phrase must be a non-empty string; got {p!r}")
            if m not in MODALITIES:
                raise ConfigError(f"class {self.name!r}: modality of {p!r} is {m!r}; expected one of {MODALITIES}")
        seen: set[str] = set()
        for p in self.phrases:
            key = " ".join(p.lower().split())
            if key in seen:
                raise ConfigError(f"class {self.name!r}: phrase {p!r} is given twice; remove the repeat")
            seen.add(key)

    def modality_phrases(self, modality: Literal["fundus", "oct"], *, fallback: bool = True) -> tuple[str, ...]:
        """Phrases that describe ``modality`` (tagged with it or ``both``), for reading a description; the
        prototype is built from every phrase (:func:`uopsl.train.bank.build`), not from these.

        A class described only for the other modality (possible in a user file)
        returns all its phrases when ``fallback`` is true, so a prototype always
        exists; with ``fallback=False`` it returns an empty tuple.
        """
        if modality not in ("fundus", "oct"):
            raise ConfigError(f"modality must be 'fundus' or 'oct'; got {modality!r}")
        own = tuple(p for p, m in zip(self.phrases, self.modalities) if m in (modality, "both"))
        return own if own or not fallback else self.phrases

    @property
    def fundus_phrases(self) -> tuple[str, ...]:
        return self.modality_phrases("fundus")

    @property
    def oct_phrases(self) -> tuple[str, ...]:
        return self.modality_phrases("oct")

    def to_dict(self) -> dict[str, Any]:
        """The entry in the user-file format (round-trips through :func:`load_classes`)."""
        return {
            "name": self.name,
            "display": self.display,
            "phrases": [{"text": p, "modality": m} for p, m in zip(self.phrases, self.modalities)],
        }


def _d(name: str, display: str, *phrases: tuple[Modality, str]) -> DiseaseDescription:
    return DiseaseDescription(name, display, tuple(p for _, p in phrases), tuple(m for m, _ in phrases))


F: Modality = "fundus"
O: Modality = "oct"
B: Modality = "both"

_BUILTIN: tuple[DiseaseDescription, ...] = (
    _d(
        "normal", "Normal",
        (F, "healthy optic disc with a sharp margin and a pink neuroretinal rim"),
        (F, "normal calibre retinal arteries and veins without hemorrhages or exudates"),
        (F, "evenly coloured orange-red fundus with a clear foveal reflex"),
        (O, "preserved foveal depression with normal retinal thickness"),
        (O, "intact, continuous outer retinal bands including the ellipsoid zone"),
    ),
    # ---- diabetic retinopathy: generic, ICDR grades, referable
    _d(
        "dr", "Diabetic retinopathy",
        (F, "microaneurysms and dot-and-blot retinal hemorrhages"),
        (F, "hard exudates and cotton wool spots in a diabetic eye"),
        (F, "venous beading and intraretinal microvascular abnormalities"),
        (O, "hyperreflective foci and disorganization of the inner retinal layers in a diabetic eye"),
    ),
    _d(
        "npdr", "Non-proliferative diabetic retinopathy",
        (F, "scattered microaneurysms and intraretinal hemorrhages without new vessels"),
        (F, "hard exudates and cotton wool spots with no neovascularization"),
        (F, "diabetic vascular damage confined within the retina, no proliferation onto the disc or vitreous"),
        (O, "intraretinal hyperreflective dots with an intact vitreoretinal interface"),
    ),
    _d(
        "mild_npdr", "Mild non-proliferative diabetic retinopathy",
        (F, "microaneurysms only, seen as tiny red dots at the posterior pole"),
        (F, "a few isolated microaneurysms without hemorrhages or exudates"),
        (F, "earliest diabetic retinopathy with a handful of red dots near the macula"),
        (O, "small round hyperreflective microaneurysms in the inner nuclear layer with normal retinal thickness"),
    ),
    _d(
        "moderate_npdr", "Moderate non-proliferative diabetic retinopathy",
        (F, "microaneurysms with dot and blot hemorrhages in several quadrants"),
        (F, "hard exudates and cotton wool spots alongside intraretinal hemorrhages"),
        (F, "venous beading in a single quadrant, short of the severe 4-2-1 criteria"),
        (O, "scattered intraretinal hyperreflective foci with small cystoid spaces"),
    ),
    _d(
        "severe_npdr", "Severe non-proliferative diabetic retinopathy",
        (F, "more than twenty intraretinal hemorrhages in each of the four quadrants"),
        (F, "definite venous beading in two or more quadrants"),
        (F, "prominent intraretinal microvascular abnormalities in at least one quadrant"),
        (O, "inner retinal thinning and disorganization from extensive capillary nonperfusion"),
    ),
    _d(
        "pdr", "Proliferative diabetic retinopathy",
        (F, "neovascularization of the optic disc"),
        (F, "fine new vessels elsewhere along the vascular arcades"),
        (F, "preretinal or vitreous hemorrhage from fragile new vessels"),
        (F, "fibrovascular proliferation with tractional retinal detachment"),
        (O, "preretinal hyperreflective fibrovascular tissue breaching the internal limiting membrane"),
    ),
    _d(
        "referable_dr", "Referable diabetic retinopathy",
        (F, "diabetic retinopathy of moderate non-proliferative grade or worse"),
        (F, "multiple hemorrhages, venous beading or new vessels that need an ophthalmologist"),
        (F, "hard exudates within one disc diameter of the fovea suggesting macular edema"),
        (O, "center-involving macular thickening with intraretinal fluid in a diabetic eye"),
    ),
    _d(
        "non_referable", "No referable diabetic retinopathy",
        (F, "no diabetic retinopathy or only a few isolated microaneurysms"),
        (F, "no hemorrhages, exudates or new vessels that would need an ophthalmologist"),
        (F, "a diabetic fundus fit for routine annual rescreening"),
        (O, "normal central retinal thickness without intraretinal or subretinal fluid"),
    ),
    _d(
        "dme", "Diabetic macular edema",
        (F, "hard exudates within one disc diameter of the center of the macula"),
        (F, "circinate ring of yellow exudates around leaking microaneurysms near the fovea"),
        (F, "retinal thickening at or near the center of the macula"),
        (O, "intraretinal cystoid fluid spaces thickening the fovea"),
        (O, "increased central subfield thickness with loss of the foveal depression"),
        (O, "hyperreflective foci in the outer plexiform layer from lipid exudates"),
    ),
    # ---- age-related macular degeneration
    _d(
        "amd", "Age-related macular degeneration",
        (F, "yellow drusen clustered at the macula of an older adult"),
        (F, "macular pigment clumping and patchy depigmentation"),
        (O, "drusen elevating the retinal pigment epithelium beneath the macula"),
        (B, "degenerative changes of the macula with drusen, atrophy or neovascularization"),
    ),
    _d(
        "early_amd", "Early age-related macular degeneration",
        (F, "small to medium soft drusen at the macula without atrophy or neovascularization"),
        (F, "a few yellow drusen with subtle macular pigmentary changes"),
        (O, "small dome-shaped elevations of the retinal pigment epithelium from drusen"),
        (O, "intact retinal layers over the drusen with no intraretinal or subretinal fluid"),
    ),
    _d(
        "late_amd", "Late age-related macular degeneration",
        (F, "geographic atrophy with sharply demarcated loss of pigment epithelium exposing choroidal vessels"),
        (F, "subretinal hemorrhage and exudation at the macula from choroidal neovascularization"),
        (F, "disciform fibrovascular scar at the macula"),
        (O, "subretinal and intraretinal fluid over a neovascular membrane"),
        (O, "complete outer retinal and pigment epithelial atrophy with hypertransmission into the choroid"),
    ),
    # ---- other fundus diseases
    _d(
        "glaucoma", "Glaucoma",
        (F, "enlarged cup-to-disc ratio with thinning of the neuroretinal rim"),
        (F, "notching of the inferior or superior neuroretinal rim"),
        (F, "splinter hemorrhage at the optic disc margin"),
        (F, "wedge-shaped defect of the retinal nerve fibre layer"),
        (O, "thinning of the peripapillary retinal nerve fibre layer"),
        (O, "loss of the macular ganglion cell complex"),
    ),
    _d(
        "cataract", "Cataract",
        (F, "hazy, blurred fundus photograph from lens opacity"),
        (F, "retinal vessels and optic disc barely visible through a cloudy lens"),
        (F, "low-contrast image behind a diffuse veil of media opacity"),
        (O, "weak, low signal strength B-scan degraded by lens opacity"),
    ),
    _d(
        "pathologic_myopia", "Pathologic myopia",
        (F, "tilted optic disc with a large peripapillary atrophy crescent"),
        (F, "tessellated, tigroid fundus from a thinned choroid"),
        (F, "patchy chorioretinal atrophy and lacquer cracks at the posterior pole"),
        (O, "posterior staphyloma with a markedly thinned choroid"),
        (O, "myopic foveoschisis splitting the outer retinal layers"),
    ),
    _d(
        "rp", "Retinitis pigmentosa",
        (F, "bone-spicule pigment clumping in the mid-peripheral retina"),
        (F, "markedly attenuated retinal arterioles"),
        (F, "waxy pallor of the optic disc"),
        (O, "loss of the ellipsoid zone outside a preserved central island"),
        (O, "thinning of the outer nuclear layer with cystoid macular changes"),
    ),
    _d(
        "macular_hole", "Macular hole",
        (F, "round, sharply outlined red defect at the center of the fovea"),
        (F, "yellow deposits at the base of a foveal hole surrounded by a grey cuff of fluid"),
        (O, "full-thickness defect of the neurosensory retina at the fovea"),
        (O, "foveal hole with cystic, elevated edges and vitreomacular traction"),
    ),
    _d(
        "csc", "Central serous chorioretinopathy",
        (F, "well-circumscribed serous detachment of the macula"),
        (F, "round blister of clear subretinal fluid at the posterior pole"),
        (O, "dome-shaped serous detachment of the neurosensory retina"),
        (O, "thickened choroid with dilated outer choroidal vessels"),
        (O, "small pigment epithelial detachment at the leakage point under subretinal fluid"),
    ),
    _d(
        "rvo", "Retinal vein occlusion",
        (F, "flame-shaped hemorrhages in all four quadrants with dilated tortuous veins"),
        (F, "sectoral intraretinal hemorrhages distal to an arteriovenous crossing"),
        (F, "cotton wool spots and optic disc swelling after a venous occlusion"),
        (O, "cystoid macular edema secondary to a retinal vein occlusion"),
    ),
    _d(
        "hypertensive_retinopathy", "Hypertensive retinopathy",
        (F, "generalized arteriolar narrowing with copper or silver wiring"),
        (F, "arteriovenous nicking at vessel crossings"),
        (F, "flame hemorrhages and cotton wool spots in a hypertensive patient"),
        (F, "optic disc swelling with a macular star of exudates in malignant hypertension"),
        (O, "hyperreflective thickening of the nerve fibre layer at cotton wool spots"),
    ),
    # ---- OCT findings
    _d(
        "cnv", "Choroidal neovascularization",
        (O, "hyperreflective fibrovascular lesion beneath or above the retinal pigment epithelium"),
        (O, "fibrovascular pigment epithelial detachment with overlying subretinal fluid"),
        (O, "subretinal hyperreflective material with intraretinal fluid"),
        (F, "grey-green subretinal membrane with surrounding hemorrhage at the macula"),
    ),
    _d(
        "drusen", "Drusen",
        (O, "discrete deposits between the retinal pigment epithelium and Bruch's membrane"),
        (O, "undulating, lumpy elevation of the retinal pigment epithelium band"),
        (F, "round yellow-white deposits deep to the retina at the macula"),
    ),
    _d(
        "dme_cysts", "Intraretinal cysts of diabetic macular edema",
        (O, "hyporeflective cystoid spaces in the inner nuclear and outer plexiform layers"),
        (O, "large central foveal cyst surrounded by smaller cystoid spaces"),
        (O, "round dark fluid pockets within a thickened retina"),
        (F, "loss of the foveal reflex from cystic retinal thickening in a diabetic eye"),
    ),
    _d(
        "subretinal_fluid", "Subretinal fluid",
        (O, "hyporeflective space between the neurosensory retina and the retinal pigment epithelium"),
        (O, "shallow serous detachment of the neurosensory retina"),
        (O, "elongated photoreceptor outer segments hanging into subretinal fluid"),
        (F, "blister-like elevation of the macula with a blurred foveal reflex"),
    ),
    _d(
        "erm", "Epiretinal membrane",
        (O, "hyperreflective membrane on the inner retinal surface"),
        (O, "wrinkled inner retinal surface with loss of the foveal contour"),
        (O, "retina thickened by traction from a preretinal membrane"),
        (F, "cellophane-like glistening sheen over the macula"),
        (F, "retinal striae with small vessels drawn toward the membrane"),
    ),
    _d(
        "vmi", "Vitreomacular interface disease",
        (O, "vitreomacular traction distorting the foveal contour"),
        (O, "partial posterior vitreous detachment still attached at the fovea"),
        (O, "lamellar defect of the inner fovea at the vitreomacular interface"),
        (F, "an irregular, distorted foveal light reflex at the macula"),
    ),
    # ---- further findings of the public sets (ODIR, RFMiD, OCTDL)
    _d(
        "rao", "Retinal artery occlusion",
        (F, "pale, whitened ischemic retina with a cherry-red spot at the fovea"),
        (F, "attenuated arterioles with segmented blood columns"),
        (F, "a refractile embolus at an arteriolar bifurcation with sectoral retinal whitening"),
        (O, "hyperreflective, thickened inner retinal layers from acute ischemia"),
        (O, "thinned, atrophic inner retina after an old arterial occlusion"),
    ),
    _d(
        "media_haze", "Media haze",
        (F, "a hazy, low-contrast fundus view through cloudy ocular media"),
        (F, "retinal vessels and optic disc blurred by an opacity in front of the retina"),
        (F, "a diffuse veil over the whole photograph from a vitreous or lens opacity"),
        (O, "a faint, noisy B-scan with weak signal through an opaque lens or vitreous"),
    ),
    _d(
        "other", "Other retinal abnormality",
        (F, "a retinal or optic disc abnormality other than the named screening diseases"),
        (F, "an uncommon fundus finding such as chorioretinal atrophy, a coloboma or laser scars"),
        (F, "an abnormal fundus that fits none of the common disease classes"),
        (O, "an abnormal retinal profile that none of the named findings describes"),
    ),
)

_BY_NAME: dict[str, DiseaseDescription] = {d.name: d for d in _BUILTIN}

# Classes that do not refer a patient unless a class file says otherwise: a healthy eye, and the DR
# findings below the referable grade (moderate NPDR or worse refers; ICDR, and REFERABLE_GRADE of the
# graded datasets). Every other class refers by default.
NOT_REFERABLE_BY_DEFAULT: frozenset[str] = frozenset({"normal", "non_referable", "mild_npdr"})


def referable_by_default(name: str) -> bool:
    """Whether class ``name`` (any spelling) refers a patient when no class file sets ``referable``."""
    return canonical(name) not in NOT_REFERABLE_BY_DEFAULT

# Long forms and common spellings accepted by :func:`get` (and in user files).
ALIASES: dict[str, str] = {
    "no_disease": "normal",
    "healthy": "normal",
    "diabetic_retinopathy": "dr",
    "non_proliferative_dr": "npdr",
    "nonproliferative_dr": "npdr",
    "proliferative_dr": "pdr",
    "diabetic_macular_edema": "dme",
    "diabetic_macular_oedema": "dme",
    "age_related_macular_degeneration": "amd",
    "pathological_myopia": "pathologic_myopia",
    "myopia": "pathologic_myopia",  # ODIR's and RFMiD's myopia codes are its fundus signs
    "retinitis_pigmentosa": "rp",
    "central_serous_chorioretinopathy": "csc",
    "retinal_vein_occlusion": "rvo",
    "choroidal_neovascularization": "cnv",
    "choroidal_neovascularisation": "cnv",
    "epiretinal_membrane": "erm",
    "retinal_artery_occlusion": "rao",
    "vitreomacular_interface_disease": "vmi",
    "no_referable_dr": "non_referable",
    "intraretinal_cysts": "dme_cysts",
    "srf": "subretinal_fluid",
}


def normalize_name(name: str) -> str:
    """Lower-case, trimmed, spaces and hyphens as underscores (``"Macular hole"`` -> ``macular_hole``)."""
    if not isinstance(name, str):
        raise ConfigError(f"a class name must be a string; got {name!r}")
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def canonical(name: str) -> str:
    """The dictionary's name for ``name`` (an alias or any spelling of it), the key of class files too."""
    key = normalize_name(name)
    return ALIASES.get(key, key)


def names() -> tuple[str, ...]:
    """Canonical names of the built-in classes, in dictionary order."""
    return tuple(_BY_NAME)


def get(name: str) -> DiseaseDescription:
    """The built-in description of ``name`` (canonical name or alias, any case)."""
    key = normalize_name(name)
    key = ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        close = difflib.get_close_matches(key, list(_BY_NAME) + list(ALIASES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"no built-in description for class {name!r}.{hint} Known classes: {', '.join(_BY_NAME)}. "
            "Describe a new class in a TOML/JSON file: --classes-file FILE (uopsl pretrain, finetune, zero-shot) "
            "or uopsl export --classes FILE."
        ) from None


# --------------------------------------------------------------------------- user class files

_CLASS_KEYS = {"name", "display", "phrases", "threshold", "referable"}
_PHRASE_KEYS = {"text", "modality"}


@dataclass(frozen=True)
class OperatingPointOverride:
    """What a class file says about a class's decision: its threshold and whether it refers; None = not given."""

    threshold: float | None = None
    referable: bool | None = None


def load_operating_points(path: str | os.PathLike[str],
                          known: Mapping[str, Sequence[str]] | None = None) -> dict[str, OperatingPointOverride]:
    """``threshold`` / ``referable`` per class of a class file (canonical names), for classes that give one.

    A threshold must be a probability strictly between 0 and 1, ``referable``
    a boolean; anything else is a :class:`ConfigError` naming the file and entry.
    The descriptions themselves come from :func:`load_classes`.
    """
    p = Path(path)
    out: dict[str, OperatingPointOverride] = {}
    for i, entry in enumerate(_read_entries(p), start=1):
        desc = _parse_entry(entry, f"{p}: class #{i}", known)
        where = f"{p}: class #{i} ({desc.name!r})"
        threshold, referable = entry.get("threshold"), entry.get("referable")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
                raise ConfigError(f"{where}: 'threshold' must be a probability between 0 and 1 (exclusive); "
                                  f"got {threshold!r}")
            threshold = float(threshold)
        if referable is not None and not isinstance(referable, bool):
            raise ConfigError(f"{where}: 'referable' must be true or false; got {referable!r}")
        if threshold is not None or referable is not None:
            out[desc.name] = OperatingPointOverride(threshold, referable)
    return out


def load_classes(path: str | os.PathLike[str], known: Mapping[str, Sequence[str]] | None = None, *,
                 quiet: bool = False) -> tuple[DiseaseDescription, ...]:
    """Read an ordered class list from a TOML or JSON file (e.g. for a zero-shot re-export).

    Phrases are English sentences of a line or two: the default sentence encoder (all-MiniLM-L6-v2) was trained
    on English and reads at most 256 tokens of a phrase (a longer one is cut, with a warning; a phrase written
    mostly in another script is named in a warning too). For phrases in another language, train the model with a multilingual
    sentence-transformers folder as ``--text-model``. A ``display`` name may be in any language.

    TOML::

        [[classes]]
        name = "dme"                     # built-in: its dictionary phrases are used
        [[classes]]
        name = "retinal_detachment"      # new class: phrases required
        display = "Retinal detachment"   # optional (default: from the name)
        referable = true                 # optional; a new class refers only if set, and then
        threshold = 0.62                 #   only at a threshold you chose on validation data
        phrases = [
          "grey, elevated retina with undulating folds",                # modality "both"
          { text = "neurosensory retina lifted off the pigment epithelium", modality = "oct" },
        ]

    JSON: ``{"classes": [{"name": ..., "phrases": [...]}, ...]}`` or the bare list.
    A phrase's ``modality`` (``fundus``, ``oct`` or ``both``, the default) records what it describes; the
    class's one prototype is the mean of all its phrases, whatever their tags, and scores fundus photographs
    (and OCT scans in training) alike. A class given only ``oct`` phrases is named in a warning: fundus
    photographs are then scored against OCT wording alone.
    A built-in name with ``phrases`` replaces the built-in phrases. ``known``: the phrases of the
    classes a checkpoint was trained with; such a class listed without ``phrases`` keeps them (its
    prototype, scores and threshold stay those of the trained model), before any built-in ones. Errors
    (unreadable file, unknown keys, empty or repeated phrases, duplicate class
    names, unknown modality) raise :class:`ConfigError` naming the file and entry.

    ``quiet``: no log lines (built-in phrases replaced, a phrase shared by two classes), for a second read of
    a file a command has read already: a review saw each line three times in one export.
    """
    p = Path(path)
    entries = _read_entries(p)
    out: list[DiseaseDescription] = []
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries, start=1):
        where = f"{p}: class #{i}"
        desc = _parse_entry(entry, where, known)
        if desc.name in first_seen:
            raise ConfigError(
                f"{where}: class {desc.name!r} is already defined by class #{first_seen[desc.name]}; "
                "each class may appear once"
            )
        first_seen[desc.name] = i
        out.append(desc)
        # (a trained class described anew: the export or zero-shot that reads the file says so, with its effect)
        if (not quiet and isinstance(entry, Mapping) and "phrases" in entry and desc.name in _BY_NAME
                and desc.name not in (known or {})):
            log.info("%s: class %r replaces the built-in phrases", p, desc.name)
        if (not quiet and isinstance(entry, Mapping) and "phrases" in entry
                and not desc.modality_phrases("fundus", fallback=False)):
            _warn_oct_only(desc, where)
    if not quiet:
        _warn_shared_phrases(out, p)
    return tuple(out)


def trained_description(name: str, phrases: Sequence[str], display: str | None = None) -> DiseaseDescription:
    """The description a checkpoint's class was trained with (its phrases, each for both modalities)."""
    both: tuple[Modality, ...] = tuple("both" for _ in phrases)
    return DiseaseDescription(name, display or name.replace("_", " ").capitalize(), tuple(phrases), both)


def display_names(path: str | os.PathLike[str], known: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """``{class: display}`` for the classes a class file gives a ``display`` name (as :func:`load_classes` names
    them), for the bundle's report; the others keep the report's own words."""
    p = Path(path)
    out = {}
    for i, entry in enumerate(_read_entries(p), start=1):
        if isinstance(entry, Mapping) and entry.get("display") is not None:
            desc = _parse_entry(entry, f"{p}: class #{i}", known)
            out[desc.name] = desc.display
    return out


def class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The (canonical) names a class file lists, in its order, without checking its entries
    (:func:`load_classes` does)."""
    return tuple(canonical(e["name"]) for e in _read_entries(Path(path))
                 if isinstance(e, Mapping) and isinstance(e.get("name"), str))


def classes_giving_phrases(path: str | os.PathLike[str]) -> frozenset[str]:
    """The (canonical) names of the classes a class file describes with phrases of its own."""
    out = set()
    for entry in _read_entries(Path(path)):
        if isinstance(entry, Mapping) and "phrases" in entry and isinstance(entry.get("name"), str):
            out.add(canonical(entry["name"]))
    return frozenset(out)


def _read_entries(p: Path) -> list[Any]:
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"{p}: class files must end in .toml or .json; got {suffix or 'no suffix'!r}")
    text = read_user_text(p, "class file", ConfigError)  # a BOM (Notepad's UTF-8) is not part of the JSON/TOML
    try:
        data: Any = _toml_loads(text) if suffix == ".toml" else json.loads(text, object_pairs_hook=_unique_keys)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise ConfigError(f"{p}: not valid {suffix[1:].upper()} ({exc})") from exc
    if isinstance(data, Mapping):
        extra = set(data) - {"classes"}
        if extra:
            raise ConfigError(f"{p}: unknown top-level keys {sorted(extra)}; expected only 'classes'")
        data = data.get("classes")
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f"{p}: expected a non-empty list of classes (TOML: [[classes]] tables; JSON: "
            '{"classes": [...]}); got ' + ("an empty list" if data == [] else type(data).__name__
                                           if data is not None else "no 'classes' key")
        )
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: ``{"name": "rp", ..., "name": "zzz"}`` kept the last name without a
    word (a copy-paste slip a review made); TOML refuses a repeated key itself."""
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"the key {k!r} appears twice in one object")
        seen[k] = v
    return seen


def _toml_loads(text: str) -> Any:
    try:
        toml: Any = importlib.import_module("tomllib")  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        toml = require("tomli", "reading a TOML class file (or write the file as JSON)")
    return toml.loads(text)


def _parse_entry(entry: Any, where: str, known: Mapping[str, Sequence[str]] | None = None) -> DiseaseDescription:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a table with 'name' and 'phrases'; got {type(entry).__name__}")
    unknown = set(entry) - _CLASS_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_CLASS_KEYS)}")
    raw_name = entry.get("name")
    if not isinstance(raw_name, str) or not raw_name.strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string; got {raw_name!r}")
    key = normalize_name(raw_name)
    key = ALIASES.get(key, key)
    builtin = _BY_NAME.get(key)
    # A trained class keeps the checkpoint's own spelling (a folder named diabetic_retinopathy trains that name,
    # whose canonical form is dr): matched by canonical name, or it became a new, unvalidated zero-shot class
    # that never refers, and the trained one was dropped (a review).
    key = next((k for k in (known or {}) if canonical(k) == key), key)
    display = entry.get("display")
    if display is not None and (not isinstance(display, str) or not display.strip()):
        raise ConfigError(f"{where} ({raw_name!r}): 'display' must be a non-empty string; got {display!r}")
    if "phrases" not in entry:
        if known and key in known:
            return trained_description(key, known[key], display or (builtin.display if builtin else None))
        if builtin is None:
            close = difflib.get_close_matches(key, list(_BY_NAME) + list(ALIASES), n=3)
            raise ConfigError(
                f"{where}: class {raw_name!r} has no 'phrases' and is not a built-in class"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + f"; describe it with at least one phrase (built-in classes: {', '.join(_BY_NAME)})"
            )
        return builtin if display is None else DiseaseDescription(key, display, builtin.phrases, builtin.modalities)
    phrases = entry["phrases"]
    if not isinstance(phrases, list):
        raise ConfigError(f"{where} ({raw_name!r}): 'phrases' must be a list; got {type(phrases).__name__}")
    if not phrases:
        raise ConfigError(
            f"{where} ({raw_name!r}): 'phrases' is empty; give at least one phrase"
            + (", or drop the key to use the built-in description" if builtin else "")
        )
    texts: list[str] = []
    mods: list[Modality] = []
    for j, ph in enumerate(phrases, start=1):
        text, mod = _parse_phrase(ph, f"{where} ({raw_name!r}) phrase #{j}")
        texts.append(text)
        mods.append(mod)
    default_display = builtin.display if builtin else key.replace("_", " ").capitalize()
    try:
        return DiseaseDescription(key, display or default_display, tuple(texts), tuple(mods))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _parse_phrase(ph: Any, where: str) -> tuple[str, Modality]:
    text: Any
    mod: Any
    if isinstance(ph, str):
        text, mod = ph, "both"
    elif isinstance(ph, Mapping):
        unknown = set(ph) - _PHRASE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_PHRASE_KEYS)}")
        text, mod = ph.get("text"), ph.get("modality", "both")
    else:
        raise ConfigError(f"{where}: expected a string or a table {{text, modality}}; got {type(ph).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: phrase text must be a non-empty string; got {text!r}")
    if mod not in MODALITIES:
        raise ConfigError(f"{where}: modality must be one of {MODALITIES}; got {mod!r}")
    return text.strip(), mod  # type: ignore[return-value]


def _warn_oct_only(desc: DiseaseDescription, where: str) -> None:
    """Warn that a class file describes ``desc`` for OCT only.

    Why: the tag does not split the prototype (every phrase forms the one shared prototype, and zero-shot and
    the screener score fundus photographs with it), so a class described only in OCT terms ("hyporeflective
    cystoid spaces") is looked for in photographs by wording that describes no photograph.
    """
    log.warning("%s (%r): every phrase is tagged modality 'oct', but its one prototype (the mean of all its "
                "phrases) also scores fundus photographs, against OCT wording only; add a phrase describing how "
                "it looks on a fundus photograph (modality 'fundus' or 'both')", where, desc.name)


def _warn_shared_phrases(descs: list[DiseaseDescription], p: Path) -> None:
    owner: dict[str, str] = {}
    for d in descs:
        for ph in d.phrases:
            key = ph.lower()
            if key in owner and owner[key] != d.name:
                log.warning("%s: phrase %r describes both %r and %r; their prototypes will be closer", p, ph,
                            owner[key], d.name)
            owner.setdefault(key, d.name)
