"""The HTML report a clinic reads: one self-contained page (inline CSS, base64 images), readable offline, printable.

Who reads it: a nurse or technician at a field clinic, on screen and on A4
paper, without an engineer at hand. So every verdict says what to do in words
(refer per the local protocol, retake and how), each score is shown next to
the threshold that decides it, class abbreviations are explained from the
bundle's own class list, and each printed page carries the report's identity
(when, which model and bundle) in a repeated table header and footer.

Sorted by urgency: referable first, then ungradable and unreadable images
(they need a new photograph), then the rest; referrals with more referable
findings first, and otherwise in the order the photographs were screened.
Not by score: scores of different classes are not comparable (each counts only
against its own threshold, as the page says), so ordering referrals by their
highest score (as until session 45) put a dr 0.76 call above an amd call 160
times its threshold. Per image: file name, thumbnail, heatmap overlay
(only for a photograph screened ``ok``), verdict and reasons, scores.

The report is regenerated from ``results.jsonl`` after every run (and every
few seconds under ``watch``), so it trusts nothing on disk blindly: a
thumbnail or overlay file named after a row's id may be left over from an
earlier version of that photograph (see :func:`_trusted_image`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import os
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from uopsl.runtime.bundle import REFERS_NO_ONE, Manifest, describe_operating_point
from uopsl.runtime.fsio import atomic_open, readable_text, special_entry
from uopsl.runtime.overlay import COLOURS, LOW_COLOUR, OVERLAY_DIR, PEAK_COLOUR, PNG_COLOURS_HEAD, THUMB_DIR, \
    content_id, encode_jpeg, heat_scale_hex, png_colours
from uopsl.runtime.quality import BORDERLINE_SCORE
from uopsl.runtime.input_keys import key_path
from uopsl.runtime.reasons import NO_RESULT_ADVICE, order_reasons, reason_text
from uopsl.runtime.results import content_hash, model_sha256, valid_image_id
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

REPORT = "report.html"
_THUMB = 160
# A thumbnail or overlay written for a row is at most this much older than the row's screening time
# (rows are stamped around when their images are written); anything older is an earlier run's file.
_MTIME_SLACK_S = 5.0
# Bytes the duplicate check may read per report (only files whose sizes collide are read at all).
_HASH_BUDGET = 2 << 30
_MAX_LISTED = 10

# Plain-language names of the classes the toolkit knows; a bundle's other classes show their own name.
CLASS_WORDS: dict[str, str] = {
    "normal": "no disease found (not a finding)",
    "dr": "diabetic retinopathy",
    "npdr": "non-proliferative diabetic retinopathy",
    "pdr": "proliferative diabetic retinopathy",
    "dme": "diabetic macular edema, swelling at the centre of the retina",
    "amd": "age-related macular degeneration",
    "glaucoma": "glaucoma (suspected, from the optic disc)",
    "rp": "retinitis pigmentosa",
    "macular_hole": "macular hole",
    "rvo": "retinal vein occlusion",
    "crvo": "central retinal vein occlusion",
    "brvo": "branch retinal vein occlusion",
    "cataract": "cataract",
    "myopia": "pathological myopia",
    "pathologic_myopia": "pathological myopia",
    "hypertensive": "hypertensive retinopathy",
    "hypertensive_retinopathy": "hypertensive retinopathy",
    "drusen": "drusen",
    "referable_dr": "diabetic retinopathy that needs an eye specialist (moderate or worse, or macular edema)",
    "non_referable": "no diabetic retinopathy that needs referral (not a finding)",
    "mild_npdr": "mild diabetic retinopathy (microaneurysms only)",
    "moderate_npdr": "moderate non-proliferative diabetic retinopathy",
    "severe_npdr": "severe non-proliferative diabetic retinopathy",
    "early_amd": "early age-related macular degeneration",
    "late_amd": "late age-related macular degeneration",
    "csc": "central serous chorioretinopathy (fluid under the retina)",
    "rao": "retinal artery occlusion",
    "erm": "epiretinal membrane (a film on the retina)",
    "cnv": "choroidal neovascularization (new vessels under the retina)",
    "vmi": "vitreomacular interface disease",
    "media_haze": "hazy view (clouded lens or vitreous)",
    "other": "another retinal abnormality",
}


@lru_cache(maxsize=1)
def report_css() -> str:
    """The style sheet, kept in templates/ so it can be edited as CSS; inlined so the report stays one file."""
    return (resources.files("uopsl.runtime") / "templates" / "report.css").read_text(encoding="utf-8")


def _text(value: object) -> str:
    """``str(value)`` that can be written as UTF-8 (:func:`uopsl.runtime.fsio.readable_text`): a file name from an
    old camera or a FAT stick may hold bytes that are not UTF-8; they never crash the report."""
    return readable_text(str(value))


def esc(value: object) -> str:
    """HTML-escaped text (quotes too, so it is safe in attributes): file names and manifests are not trusted."""
    return html.escape(_text(value), quote=True)


def esc_path(value: object) -> str:
    """:func:`esc` with a line-break opportunity after each folder separator, so that a narrow column breaks a
    path between folders (printed, "/data/test/fun dus" read as two words); a single overlong name still breaks
    anywhere (the CSS's overflow-wrap)."""
    return esc(value).replace("/", "/<wbr>").replace("\\", "\\<wbr>")


def local_time(dt: datetime) -> str:
    """Local time with its UTC offset ("2026-11-29 13:46 (UTC+01:00)"): a printed report travels between clinics."""
    loc = dt.astimezone()
    off = loc.strftime("%z")
    off = f"{off[:3]}:{off[3:]}" if len(off) == 5 else off
    return f"{loc:%Y-%m-%d %H:%M} (UTC{off})"


def _short_time(dt: datetime, today: datetime) -> str:
    """A row's screening time: the clock time on the report's day (its offset is in the header), else the date too."""
    loc, ref = dt.astimezone(), today.astimezone()
    return f"{loc:%H:%M}" if loc.date() == ref.date() else f"{loc:%Y-%m-%d %H:%M}"


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 string (a trailing Z allowed) or epoch seconds; None when it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return dt if dt.tzinfo is not None else dt.astimezone()
    return None


def local_day(value: object) -> date | None:
    """The local calendar day of a time :func:`parse_time` reads (None when it reads none)."""
    when = parse_time(value)
    return None if when is None else when.astimezone().date()


def refers_no_one_html(manifest: Manifest) -> str:
    """The box a report page opens with when no class of the bundle refers anyone (:data:`REFERS_NO_ONE`)."""
    if not manifest.refers_no_one:
        return ""
    return (f"<div class='warn' id='refers-no-one'><b>This model refers no one.</b> "
            f"{esc(REFERS_NO_ONE[0].upper() + REFERS_NO_ONE[1:])}.</div>")


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _thumbnail_belongs(row: Mapping[str, Any]) -> bool:
    """Whether this row's run wrote a thumbnail: a photograph that decoded (ok, ungradable, or the model failing
    on it). An unreadable file's row has none, so any thumbnail under its id is an older version's."""
    status = row.get("status")
    return status in ("ok", "ungradable") or (status == "error" and "inference_error" in (row.get("reasons") or ()))


def _decided_by(rows: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[str, str, str], int]]:
    """(backend, precision, model file) and how many photographs each screened, most first (rows that name one)."""
    seen = Counter((str(r["backend"]), str(r.get("precision") or "?"), str(r.get("model_file") or "?"))
                   for r in rows if r.get("backend"))
    return seen.most_common()


def _trusted_image(path: Path, row: Mapping[str, Any], kind: str, thumb_mtime: float | None) -> bool:
    """Whether the file at ``path`` shows this row's photograph, as this row judged it.

    Ids depend on the path only, so ``thumbs/<id>.jpg`` and ``overlays/<id>.png`` can be left from an earlier
    version of the file (a photograph replaced by a black or truncated one). Rules: a heatmap only for a row
    screened ``ok``; a thumbnail only for a row whose run writes one (:func:`_thumbnail_belongs`); when the
    row carries its screening time (``screened_at``), the file must not be older than it; a heatmap older
    than the row's thumbnail is from an earlier run (both are written together).
    """
    if kind == "overlay" and row.get("status") != "ok":
        return False
    if kind == "thumb" and not _thumbnail_belongs(row):
        return False
    recorded = row.get(f"{kind}_id")
    if isinstance(recorded, str) and recorded:  # rows since session 15 name their images' content
        return _content_sha16(path) == recorded
    mtime = _mtime(path)
    if mtime is None:
        return False
    when = parse_time(row.get("screened_at"))
    if when is not None and mtime < when.timestamp() - _MTIME_SLACK_S:
        return False
    return not (kind == "overlay" and thumb_mtime is not None and mtime < thumb_mtime - _MTIME_SLACK_S)


_T = TypeVar("_T")


def _kept_while_unchanged(cache: OrderedDict[str, tuple[int, int, _T]], path: Path,
                          read: Callable[[Path], _T]) -> _T | None:
    """``read(path)``, kept in ``cache`` (least recently used first, at most the image cache's capacity) while the
    file keeps its size and time: watch refreshes the report often, and each file is read once. None when the
    file cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    hit = cache.get(str(path))
    if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
        cache.move_to_end(str(path))
        return hit[2]
    try:
        value = read(path)
    except OSError:
        return None
    cache[str(path)] = (st.st_size, st.st_mtime_ns, value)
    while len(cache) > _uri_capacity:
        cache.popitem(last=False)
    return value


#: path -> (size, mtime_ns, first 16 hex digits of the content's sha256): watch refreshes read each image once.
_SHAS: OrderedDict[str, tuple[int, int, str]] = OrderedDict()


def _content_sha16(path: Path) -> str | None:
    """The first 16 hex digits of the file's sha256 (None when unreadable), kept while the file is unchanged."""
    return _kept_while_unchanged(_SHAS, path, lambda p: content_id(p.read_bytes()))


#: path -> (size, mtime_ns, the colour map the overlay names): watch refreshes read each overlay's head once.
_COLOUR_MARKS: OrderedDict[str, tuple[int, int, str]] = OrderedDict()
#: What :func:`_overlay_colours` says of an overlay that names no colours: drawn before session 56, in jet.
OLDER_COLOURS = "jet"


def _read_colours(path: Path) -> str:
    with open(path, "rb") as fh:
        return png_colours(fh.read(PNG_COLOURS_HEAD)) or OLDER_COLOURS


def _overlay_colours(path: Path) -> str | None:
    """The colour map an overlay file names (:func:`uopsl.runtime.overlay.png_colours`), kept while the file is
    unchanged; :data:`OLDER_COLOURS` for one that names none (drawn in jet, before session 56); None for one
    that cannot be read (it shows as missing, and no caption is given about its colours).

    Why: a folder screened again after an upgrade keeps its earlier rows and their overlays, so one report can
    hold heatmaps in two colourings, and the page's colour scale describes only the current one.
    """
    return _kept_while_unchanged(_COLOUR_MARKS, path, _read_colours)


def heat_scale_html() -> str:
    """The heatmaps' colour scale, "low [gradient] high", drawn in the overlays' own colours.

    Why: a reader must know which end of the colours is the model's attention, on screen and on a
    black-and-white print. The gradient is an inline CSS background (no image, no file: the page stays one
    self-contained file and works offline), printed as is (the style sheet asks print to keep colours), and its
    grey rises from left to right as the overlays' does.
    """
    stops = ", ".join(heat_scale_hex(9))
    return ("<span class='heatscale'>low<span class='bar' role='img' aria-label='colour scale from "
            f"{LOW_COLOUR} (low site attention) to {PEAK_COLOUR} (high)' "
            f"style='background: linear-gradient(to right, {stops})'></span>high</span>")


#: (path, side) -> (size, mtime_ns, data URI), least recently used first: kept for watch's refreshes.
_URIS: OrderedDict[tuple[str, int], tuple[int, int, str]] = OrderedDict()
_MAX_URIS = 4096  # about 10 KB each; a report with more images raises it (see :func:`reserve_image_cache`)
_uri_capacity = _MAX_URIS


def reserve_image_cache(n_images: int) -> None:
    """Let the cache hold ``n_images`` (a report's thumbnails and heatmaps) so a refresh hits every one.

    Why: watch renders the same rows in the same order every few seconds; a cache smaller than that set
    (or one emptied when full) misses on every lookup and decodes every image again each time. Its
    memory is about that of the report's own HTML.
    """
    global _uri_capacity
    _uri_capacity = max(_MAX_URIS, n_images + 64)


def _uri_get(path: Path, side: int, size: int, mtime_ns: int) -> str | None:
    entry = _URIS.get((str(path), side))
    if entry is None or entry[:2] != (size, mtime_ns):
        return None
    _URIS.move_to_end((str(path), side))
    return entry[2]


def _uri_put(path: Path, side: int, size: int, mtime_ns: int, uri: str) -> None:
    _URIS[(str(path), side)] = (size, mtime_ns, uri)  # one entry per file: a new version replaces the old
    _URIS.move_to_end((str(path), side))
    while len(_URIS) > _uri_capacity:
        _URIS.popitem(last=False)  # the least recently used


def _data_uri(path: Path, side: int = _THUMB) -> str:
    """A small base64 JPEG of the image at ``path`` (empty string when missing or unreadable).

    Read with ``np.fromfile`` + ``cv2.imdecode``: ``cv2.imread`` cannot open non-ASCII paths on Windows, and
    ids keep a photograph's Unicode letters. A JPEG is decoded at half size when that still covers ``side``
    (libjpeg scales while decoding: about 3x faster), and each result is kept while the file is unchanged,
    because ``watch`` re-renders the whole report every few seconds.
    """
    try:
        st = path.stat()
        cached = _uri_get(path, side, st.st_size, st.st_mtime_ns)
        if cached is not None:
            return cached
        buf = np.fromfile(str(path), dtype=np.uint8)
        img = None
        if buf.size and path.suffix.lower() in (".jpg", ".jpeg"):
            img = cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_2)
            if img is not None and max(img.shape[:2]) < side:
                img = None
        if img is None and buf.size:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except (OSError, ValueError, cv2.error):
        return ""
    if img is None:
        return ""
    h, w = img.shape[:2]
    while max(h, w) >= 2 * side:  # halving first: INTER_AREA is about 2x faster at an integer factor
        img = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    if s < 1.0:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    data = encode_jpeg(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), 75)
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    _uri_put(path, side, st.st_size, st.st_mtime_ns, uri)
    return uri


def urgency_key(row: Mapping[str, Any], referable: Sequence[str]) -> tuple[int, int]:
    """Sort key (for a stable sort): referable (0), ungradable or unreadable (1), the rest (2); within the
    referrals, more referable findings first. Equal keys keep their order (the order of screening)."""
    if row.get("status") == "ok" and row.get("refer"):
        wanted = set(referable)
        return 0, -sum(1 for c in row.get("positive") or () if c in wanted)
    if still_to_retake(row):
        return 1, 0
    return 2, 0  # a retaken photograph's failed row is history: with the rows without a referable finding


#: Reasons of an error row whose file opened but cannot be screened as it is: "Unusable image", not "Unreadable
#: file" (a 1x1 PNG was called unreadable, and the page defines that as "could not be opened"; a review).
_UNUSABLE = frozenset({"too_small", "too_large", "several_fov"})


def _verdict(row: Mapping[str, Any]) -> tuple[str, str]:
    status = row.get("status")
    if status == "error":
        tags = order_reasons(row.get("reasons") or [])
        if "inference_error" in tags or "internal_error" in tags:
            return "v-error", "Not screened - program failure"
        if tags and tags[0] in _UNUSABLE:
            return "v-error", "Unusable image"
        return "v-error", "Unreadable file"
    if status == "ungradable":
        return "v-ungradable", "Ungradable - retake"
    if row.get("refer"):
        return "v-refer", "Refer"
    return "v-routine", "No referable finding"


# -- source identity -----------------------------------------------------------------------------------------
def _split_key(row: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """(path, size, mtime_ns) from the row's key ``path|size|mtime_ns`` (a path may hold ``|``).

    Size and mtime are None for ``path|missing`` and in-memory inputs (``sha1:...``), whose path is the
    row's source.
    """
    key = str(row.get("key", ""))
    parts = key.rsplit("|", 2)
    if not key.startswith("sha1:") and len(parts) == 3 and parts[1].isdigit() and parts[2].lstrip("-").isdigit():
        return parts[0], int(parts[1]), int(parts[2])
    if key.endswith("|missing"):
        return key[: -len("|missing")], None, None
    return str(row.get("source", "")), None, None


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256; watch re-renders every few seconds


def _file_hash(path: str, size: int, mtime_ns: int) -> str | None:
    """sha256 of the file, only while it is still the version the row screened (same size and mtime)."""
    k = (path, size, mtime_ns)
    try:
        st = os.stat(path)
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return None
        if k in _HASHES:
            return _HASHES[k]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    if len(_HASHES) > 100_000:
        _HASHES.clear()
    _HASHES[k] = h.hexdigest()
    return _HASHES[k]


@dataclass(frozen=True)
class DuplicateCheck:
    """Rows (indices into the list given) that hold the same photograph, and how complete the check was."""

    groups: list[list[int]]
    unchecked: int


def find_duplicates(rows: Sequence[Mapping[str, Any]]) -> DuplicateCheck:
    """Identical photographs under different names (a duplicate often means a mis-filed patient).

    A row's own content hash is used when it carries one (``sha256``/``content_sha256``, or an in-memory
    input's ``sha1:`` key). Otherwise only files whose sizes collide (from the key) are read and hashed, so
    a folder of JPEGs costs a few ``stat`` calls; at most ``_HASH_BUDGET`` bytes are read. Unreadable rows
    are left out (two empty files are not "the same photograph"); so are files changed since screening.
    """
    # One key form for every sha256, whether the row carried it or it was computed from the file: the bare
    # hex. A row that carries its hash still joins its size group, so a same-size row without one is hashed.
    by_hash: dict[str, list[int]] = {}
    by_size: dict[int, list[tuple[int, str, int, bool]]] = {}  # size -> (row, path, mtime_ns, hashed)
    unchecked = 0
    for i, r in enumerate(rows):
        if r.get("status") not in ("ok", "ungradable"):
            continue
        own = content_hash(r)
        key = str(r.get("key", ""))
        if not own and key.startswith("sha1:"):
            own = key
        if own:
            by_hash.setdefault(str(own), []).append(i)
        path, size, mtime_ns = _split_key(r)
        if size is None or mtime_ns is None:
            if not own:
                unchecked += 1
            continue
        if size > 0:
            by_size.setdefault(size, []).append((i, path, mtime_ns, bool(own)))
    budget = _HASH_BUDGET
    for size, members in by_size.items():
        if len(members) < 2 or all(hashed for *_, hashed in members):
            continue
        for i, path, mtime_ns, hashed in members:
            if hashed:
                continue
            if budget < size:
                unchecked += 1
                continue
            budget -= size
            digest = _file_hash(path, size, mtime_ns)
            if digest is None:
                unchecked += 1
            else:
                by_hash.setdefault(digest.lower().removeprefix("sha256:"), []).append(i)
    groups = sorted((sorted(g) for g in by_hash.values() if len(g) > 1), key=lambda g: g[0])
    return DuplicateCheck(groups, unchecked)


def _folders(rows: Sequence[Mapping[str, Any]], run_info: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The folders the report's photographs came from, with how many from each, most first.

    From the rows rather than the command's arguments: a command names single files as often as folders,
    and the report also lists rows earlier runs left in the folder. The caller's ``inputs`` are used only
    when no row has a source.
    """
    raw: Counter[str] = Counter()
    for r in rows:
        src = str(r.get("source", ""))
        if src:
            raw[os.path.dirname(_split_key(r)[0] or src)] += 1  # strings: a Path per row is slow at 20,000 rows
    counts: Counter[str] = Counter()
    for folder, k in raw.items():
        counts[str(Path(folder)) if folder else "."] += k  # the form Path(...).parent gives
    if not counts:
        given = run_info.get("inputs")
        return [(str(x), 0) for x in given] if isinstance(given, (list, tuple)) else []
    return counts.most_common()


# -- pieces of the page --------------------------------------------------------------------------------------
def _rule_sentence(manifest: Manifest, referable: Sequence[str]) -> str:
    """``referral_rule`` in words (the manifest's tag stays in brackets for whoever checks the bundle)."""
    names = ", ".join(referable) or "none"
    if manifest.referral_rule == "referable_sum":
        return (f"A photograph is referred when the scores of the referable classes ({names}) add up to "
                f"{manifest.referral_threshold:.2f} or more (rule: referable_sum).")
    return (f"A photograph is referred when at least one referable class ({names}) scores at or above its "
            f"threshold (rule: {manifest.referral_rule}).")


def _legend(manifest: Manifest, zero_shot: set[str]) -> str:
    """One line per class: name, meaning (known name, then the bundle's own descriptions), threshold (and, where
    it was not chosen on validation photographs, how it was: a class file's, or a default), refers."""
    unvalidated = unvalidated_thresholds(manifest)
    lines = ["<table class='legend'><thead><tr><th>Class</th><th>Meaning</th><th>Threshold</th>"
             "<th>Refers?</th></tr></thead><tbody>"]
    for c in manifest.classes:
        words = manifest.display_name(c.name) or CLASS_WORDS.get(c.name.lower(), "")
        desc = "; ".join(c.descriptions[:2])
        meaning = (f"{esc(words)}" if words else "") + (
            f"<div class='desc'>{esc(desc)}</div>" if desc else "")
        refers = "yes" if c.referable else "no" + (" (zero-shot: not validated)" if c.name in zero_shot else "")
        how = unvalidated.get(c.name)
        lines.append(
            f"<tr><td><b>{esc(c.name)}</b>{'*' if c.name in zero_shot else ''}</td>"
            f"<td class='desc'>{meaning or '&mdash;'}</td><td>{c.threshold:.3f}"
            + (f"<div class='desc'>not set on validation photographs: {esc(how)}</div>" if how else "")
            + f"</td><td>{refers}</td></tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def unvalidated_thresholds(manifest: Manifest) -> dict[str, str]:
    """How each class's threshold was set, for the classes whose threshold ``uopsl export`` recorded as not
    chosen on validation photographs (a class file's, a default "chosen on no data"); none for a bundle that
    records no operating points (made before they were recorded: the report then says nothing it cannot know).
    """
    out = {}
    for point in manifest.notes.get("operating_points") or []:
        if isinstance(point, Mapping) and point.get("method") not in ("target_sensitivity", "youden"):
            out[str(point.get("name"))] = describe_operating_point(point)
    return out


def _example(manifest: Manifest) -> str:
    """How to read a score, shown with one of this bundle's own referable classes and its real threshold."""
    c = next((c for c in manifest.classes if c.referable), None)
    if c is None:
        return ""
    t = float(c.threshold)
    below, above = round(t / 2, 2), round(t + (1.0 - t) / 2, 2)
    below = below if below < t else t / 2
    above = above if above >= t else t
    a1, b1 = _fmt_pair(below, c.threshold)
    a2, b2 = _fmt_pair(above, c.threshold)
    return (f": <span class='probs'>{esc(c.name)} {a1} &lt; {b1}</span> is below it; "
            f"<span class='probs'><b>{esc(c.name)} {a2} &ge; {b2}</b></span> in bold is at or above it, a finding")


def _fmt_pair(p: float, t: float) -> tuple[str, str]:
    """Probability and threshold to 3 decimals, or more where 3 would print them equal (0.879 vs 0.879): up to
    the 9 that tell two neighbouring float32 values apart, which is how the decision compares them."""
    if np.float32(p) == np.float32(t):
        return f"{t:.3f}", f"{t:.3f}"
    for nd in range(3, 10):
        a, b = f"{p:.{nd}f}", f"{t:.{nd}f}"
        if a != b:
            return a, b
    return repr(float(np.float32(p))), repr(float(np.float32(t)))


def _probs_html(row: Mapping[str, Any], manifest: Manifest, zero_shot: set[str], findings: set[str]) -> str:
    """Each class's score with its threshold: ``dr 0.564 < 0.879`` plain, ``amd 0.038 ≥ 0.012`` bold when it is
    a finding (a referable class at or above its threshold on a gradable photograph)."""
    probs = row.get("probs") or {}
    if not probs:
        return "&mdash;"
    thr = {c.name: c.threshold for c in manifest.classes}
    referable = {c.name for c in manifest.classes if c.referable}
    order = [c for c in manifest.class_names if c in probs] + [c for c in probs if c not in thr]
    out = []
    if row.get("status") != "ok":
        out.append("<div class='unused'>not used: no decision on an ungradable photograph</div>")
    for c in order:
        p = float(probs[c])
        star = "*" if c in zero_shot else ""
        if c not in thr:
            out.append(f"<span>{esc(c)}{star} <span class='val'>{p:.3f}</span></span>")
            continue
        if c not in referable:
            # No comparison: "normal 0.320 >= 0.057" on a referred row read like a finding (a review).
            out.append(f"<span>{esc(c)}{star} <span class='val'>{p:.3f} <span class='cmp'>(not referable)</span>"
                       "</span></span>")
            continue
        a, b = _fmt_pair(p, float(thr[c]))
        sign = "&ge;" if np.float32(p) >= np.float32(thr[c]) else "&lt;"  # as Manifest.decide compares them
        # A finding is said in words as well as bold: a screen reader does not announce bold.
        cls, said = (" class='pos'", "<span class='sr'> finding</span>") if c in findings else ("", "")
        # Score and threshold kept together, under the name where the line is too long: a long class name
        # ("hypertensive_retinopathy") pushed the threshold off a printed A4 page (a review).
        out.append(f"<span{cls}>{esc(c)}{star} <span class='val'>{a} <span class='cmp'>{sign} {b}</span></span>"
                   f"{said}</span>")
    if manifest.referral_rule == "referable_sum" and row.get("status") == "ok":
        total = sum(float(probs[c.name]) for c in manifest.classes if c.referable and c.name in probs)
        sign = "&ge;" if total >= manifest.referral_threshold else "&lt;"
        out.append(f"<span class='{'pos' if row.get('refer') else ''}'>sum <span class='val'>{total:.3f} "
                   f"<span class='cmp'>{sign} {manifest.referral_threshold:.3f}</span></span></span>")
    return "<br>".join(out)


def _finding(name: str, display: str | None = None) -> str:
    """``<b>dr</b> (diabetic retinopathy)``; ``<b>glaucoma</b> (suspected, ...)`` where the words repeat the name.
    ``display``: the bundle's own words for the class (a class file's ``display``), before the built-in ones."""
    if display:  # the maker's own words, whole (cutting the name off as a prefix cut "Glaucomatous" to "tous")
        return f"<b>{esc(name)}</b> ({esc(display)})"
    words = CLASS_WORDS.get(name.lower(), "")
    if not words:
        return f"<b>{esc(name)}</b>"
    if words.lower().startswith(name.lower()):
        rest = words[len(name):].strip()
        return f"<b>{esc(name)}</b>" + (f" {esc(rest)}" if rest else "")
    return f"<b>{esc(name)}</b> ({esc(words)})"


def _result_html(row: Mapping[str, Any], manifest: Manifest, findings: list[str], referable: Sequence[str],
                 zero_shot: set[str]) -> str:
    """Verdict, then what was found (referable classes only) or why there is no result and what to do."""
    cls, word = _verdict(row)
    parts = [f"<div class='verdict {cls}'>{esc(word)}</div>"]
    status = row.get("status")
    if status == "ok" and row.get("refer"):
        if findings:
            # a zero-shot class's finding carries its star here too: its threshold was never validated
            named = ", ".join(_finding(c, manifest.display_name(c)) + ("*" if c in zero_shot else "")
                              for c in findings)
            parts.append(f"<div class='find'>Found: {named}</div>")
        else:
            parts.append(f"<div class='find'>Referable classes together at or above "
                         f"{manifest.referral_threshold:.2f} ({esc(', '.join(referable))})</div>")
    tags = order_reasons(row.get("reasons") or [])
    if status in ("ungradable", "error") and tags:
        main = reason_text(tags[0])
        why = [f"<div class='main' title='{esc(tags[0])}'>{esc(main.advice)}</div>"]
        also = [t for t in tags[1:] if reason_text(t).label != main.label]
        if also:
            why.append("<div class='also'>Also: " + ", ".join(
                f"<span title='{esc(t)}'>{esc(reason_text(t).label)}</span>" for t in also) + "</div>")
        parts.append("<div class='why'>" + "".join(why) + "</div>")
        parts.append(f"<div class='tags'>codes: {esc(', '.join(tags))}</div>")
    elif status in ("ungradable", "error"):
        parts.append(f"<div class='why'><div class='main'>{esc(NO_RESULT_ADVICE)}</div></div>")
    q = row.get("quality_score")
    if status == "ok" and isinstance(q, (int, float)) and not isinstance(q, bool) and q < BORDERLINE_SCORE:
        # A very dark photograph passed the gate and was referred, its thumbnail black (a review): say so.
        parts.append(f"<div class='borderline'>Quality near the limit (score {float(q):.2f}; below 0.50 is "
                     "ungradable): check the photograph is clear enough before relying on this result.</div>")
    if row.get("error"):
        parts.append(f"<div class='tags'>detail: {esc(row['error'])}</div>")
    return "".join(parts)


@dataclass(frozen=True)
class PageInfo:
    """Where one page of a report split into pages sits (see :mod:`uopsl.runtime.report_days`).

    label: what the page holds, in words ("2026-11-29", "2026-11-29, part 2 of 3").
    day: the local screening day of its rows (None for rows without a screening time); row times on the
    page are then shown as clock times of that day.
    links: (text, href) pairs of the navigation line: the index and the neighbouring pages.
    elsewhere: for a row (by :func:`row_ident`), its copies on other pages: (text, href) of the first few,
    and how many there are in all.
    first: the number of the page's first row (a day's second page of 1,000 starts at 1001).
    """

    label: str
    day: date | None = None
    links: tuple[tuple[str, str], ...] = ()
    elsewhere: Mapping[tuple[str, str], tuple[tuple[tuple[str, str], ...], int]] = field(default_factory=dict)
    first: int = 1


def row_ident(row: Mapping[str, Any]) -> tuple[str, str]:
    """What tells one displayed row from every other: its input key and screening time."""
    return str(row.get("key", "")), str(row.get("screened_at", ""))


def row_anchor(row: Mapping[str, Any]) -> str:
    """The HTML id of a row's line in the table (ids are file-name safe, so they are safe here too)."""
    return f"r-{row.get('id', '')}"


def head_html(title: str) -> str:
    """The page's head: title and the inlined style sheet."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<title>{esc(title)}</title><style>{report_css()}</style></head><body>")


def _model_and_bundle(manifest: Manifest, info: Mapping[str, Any]) -> tuple[str, str]:
    """("uopsl (efficientnet_lite0)", the bundle's short hash or "not recorded"): how every page names them."""
    bundle_sha = manifest.content_sha256 or str(info.get("bundle_sha256") or "")
    model = f"{manifest.model_name}" + (f" ({manifest.backbone})" if manifest.backbone else "")
    return model, bundle_sha[:12] if bundle_sha else "not recorded"


def use_notice_html(manifest: Manifest) -> str:
    """The banner that opens every page of a bundle not stated for clinical use ("" for a clinical one).

    A demonstration model's report must not pass for a screening: its banner is
    the first thing on the page and the printed sheets repeat its short form.
    """
    use = manifest.intended_use
    warning = use.warning()
    if warning is None:
        return ""
    trained = f" Trained on: {esc(use.trained_on)}." if use.trained_on else ""
    statement = f" Maker's statement: {esc(use.statement)}" if use.statement else ""
    return (f"<div class='use use-{esc(use.status)}' id='intended-use' role='note'><b>{esc(use.short())}</b>"
            f"<br>{esc(warning)}{trained}{statement}</div>")


def use_header(manifest: Manifest) -> str:
    """The intended use's short form that starts the header line every printed sheet repeats ("" if clinical)."""
    use = manifest.intended_use
    return "" if use.for_patients else use.short()


def use_header_html(manifest: Manifest) -> str:
    """:func:`use_header` as the start of a page-header or footer line ("" if clinical)."""
    short = use_header(manifest)
    return f"<b class='use-short'>{esc(short)}</b> - " if short else ""


def use_title(manifest: Manifest, title: str) -> str:
    """A page title, led by the caution for a bundle not stated for patients (the browser tab and the name a
    saved PDF gets then say it too)."""
    short = use_header(manifest)
    return f"{short} - {title}" if short else title


def ident_html(manifest: Manifest, info: Mapping[str, Any], generated: str, rows: Sequence[Mapping[str, Any]],
               out: Path, extra: str = "") -> str:
    """The identity block (when, by what, which model and bundle, from where, to where) of a page."""
    model, bundle_hash = _model_and_bundle(manifest, info)
    created = parse_time(manifest.created)
    created_s = local_time(created) if created is not None else (manifest.created or "not recorded")
    decided_by = _decided_by(rows)
    folders = _folders(rows, info)
    return "".join([
        "<dl class='ident'>",
        extra,
        f"<dt>Generated</dt><dd>{esc(generated)} on {esc(socket.gethostname())} by uopsl {esc(__version__)}</dd>",
        f"<dt>Model</dt><dd>{esc(model)}, toolkit {esc(manifest.toolkit_version)}</dd>",
        f"<dt>Intended use</dt><dd>{esc(_use_line(manifest))}</dd>",
        f"<dt>Bundle</dt><dd>content {esc(bundle_hash)} (sha256 of the manifest), created {esc(created_s)}"
        + ("; <b>file checksums not verified in this run</b> (--no-verify)"
           if info.get("bundle_verified") is False else "")
        + (f"; {esc(info['bundle_signature'])}" if info.get("bundle_signature") else "") + "</dd>",
        (f"<dt>Backend</dt><dd>{esc(info['backend'])}</dd>" if info.get("backend") and len(decided_by) <= 1 else ""),
        (("<dt>Model files</dt><dd>" + "<br>".join(
            f"{esc(f)} ({esc(p)} on {esc(b)}): {k} photograph{'s' if k != 1 else ''}" for (b, p, f), k in decided_by)
          + "<br>Each row names its file in results.csv.</dd>") if len(decided_by) > 1 else ""),
        "<dt>Photographs from</dt><dd>"
        + ("<br>".join(esc(f) + (f" ({k})" if k else "") for f, k in folders[:5])
           + (f"<br>and {len(folders) - 5} more folders" if len(folders) > 5 else "") if folders else "&mdash;")
        + "</dd>",
        f"<dt>Results folder</dt><dd>{esc(out.absolute())} (results.csv has every score)</dd>",
        "</dl>",
    ])


def _use_line(manifest: Manifest) -> str:
    use = manifest.intended_use
    text = (f"clinical, as the bundle's maker states: {use.statement}" if use.for_patients
            else {"demonstration": "demonstration only (not for patients)", "research": "research use only",
                  "unstated": "not stated by the bundle"}[use.status])
    return text + (f"; trained on {use.trained_on}" if use.trained_on else "")


def verdict_counts(rows: Sequence[Mapping[str, Any]]) -> Counter[str]:
    """Rows by verdict: ``refer``, ``routine`` (screened, no referable finding), ``ungradable``, ``error``, and
    ``retaken`` (a failed row whose photograph was retaken under its name: :func:`retaken`)."""
    return Counter(("refer" if r.get("refer") else "routine") if r.get("status") == "ok"
                   else "retaken" if retaken(r)
                   else ("ungradable" if r.get("status") == "ungradable" else "error") for r in rows)


# The table's groups in urgency order (urgency_key's first element), and the id of each group's first row.
GROUP_ANCHORS = ("g-refer", "g-retake", "g-routine")


def summary_html(counts: Mapping[str, int], linked: bool = False) -> str:
    """The row of count cards under the identity block; ``linked``: each card leads to its group's first row
    of the table below (a long report's retakes sat after hundreds of referrals, unfindable on screen). The
    link holds the card's words too: a screen reader read the links as bare numbers ("39")."""
    n = sum(counts.values())

    def card(cls: str, key: str, group: int, words: str, extra: str = "") -> str:
        k = counts.get(key, 0)
        inner = f"<b{extra}>{k}</b>{words}"
        return f"<div class='card {cls}'>" + (f"<a href='#{GROUP_ANCHORS[group]}'>{inner}</a>" if linked and k
                                              else inner) + "</div>"

    return "".join([
        "<div class='summary'>",
        f"<div class='card total'><b>{n}</b>{'image' if n == 1 else 'images'}</div>",
        card("refer", "refer", 0, "refer", extra=" id='n-refer'"),
        card("ok", "routine", 2, "no referable finding"),
        card("ungradable", "ungradable", 1, "ungradable (retake)"),
        card("error", "error", 1, "unreadable or not screened"),
        *([card("ok", "retaken", 2, "retaken under the same name")] if counts.get("retaken") else []),
        "</div>",
    ])


#: Each group's heading row in the table, and the words of the line that gives each group's rows on paper.
_GROUP_WORDS = ("Refer", "Retake or copy again (ungradable, unreadable or not screened)", "No referable finding")
_GROUP_SHORT = ("refer", "retake or copy again", "no referable finding")
_GROUP_ORDER = ("photographs with more referable findings first (a count, not a measure of severity), "
                "then in screening order", "in screening order", "in screening order")
#: Rows listed by name in the "retake now" box at the top of a page (the rest: their rows are given).
_MAX_RETAKES_LISTED = 100


def group_ranges_html(groups: Sequence[int], first: int) -> str:
    """Where each group's rows are, by row number: a printed report's count cards link nowhere, and its
    retakes sat on pages 68-70 of 71 (a review)."""
    spans: dict[int, tuple[int, int]] = {}
    for k, g in enumerate(groups):
        a, _ = spans.get(g, (first + k, 0))
        spans[g] = (a, first + k)
    if not spans:
        return ""
    parts = [f"{_GROUP_SHORT[g]}: " + (f"row #{a}" if a == b else f"rows #{a}-#{b}")
             for g, (a, b) in sorted(spans.items())]
    return "<p class='ranges'>In the table below: " + "; ".join(parts) + ".</p>"


def retake_list_html(ordered: Sequence[Mapping[str, Any]], groups: Sequence[int], first: int) -> str:
    """The photographs to retake or copy again, by name, near the top of the page: the one action that must
    happen while the patient is still there, listed after every referral before (a review)."""
    # A row whose file was since replaced by another photograph (the retake saved under its name) is history:
    # it stays in the table, not in this list (a review: a retake screened fine still read "retake now").
    rows = [(first + k, r) for k, (r, g) in enumerate(zip(ordered, groups)) if g == 1 and still_to_retake(r)]
    if not rows:
        return ""
    shown = rows[:_MAX_RETAKES_LISTED]
    names = distinct_names([_text(r.get("source", "")) for _, r in shown])
    items = []
    for (i, r), name in zip(shown, names):
        tags = order_reasons(r.get("reasons") or [])
        label = reason_text(tags[0]).label if tags else "no result"
        items.append(f"<li><a href='#{esc(row_anchor(r))}'>#{i}</a> {esc(name)}: {esc(label)}</li>")
    more = (f"<p>and {len(rows) - len(shown)} more, rows #{rows[len(shown)][0]}-#{rows[-1][0]}</p>"
            if len(rows) > len(shown) else "")
    return (f"<div class='retakes' id='retakes'><h2>Retake or copy again now ({len(rows)})</h2>"
            f"<ul>{''.join(items)}</ul>{more}</div>")


def retaken(row: Mapping[str, Any]) -> bool:
    """Whether a row without a result was retaken: another photograph was screened under its name
    (``file_replaced``) on the same local day. Later, the name may be another patient's (cameras restart their
    numbering): the row then still asks for a retake."""
    if row.get("status") not in ("ungradable", "error") or not row.get("file_replaced"):
        return False
    failed = local_day(row.get("screened_at"))
    return failed is not None and failed == local_day(row.get("replaced_at"))


def still_to_retake(row: Mapping[str, Any]) -> bool:
    """Whether a row without a result still asks for a retake (not when :func:`retaken`)."""
    return row.get("status") in ("ungradable", "error") and not retaken(row)


def distinct_names(sources: Sequence[str]) -> list[str]:
    """Each source's file name, with its folder's name before it where two of ``sources`` share a file name
    (``Garcia Maria/IMG_0001.jpg``): a camera that files each patient in a folder names every first photograph
    alike, and a list of bare names could not say whom to call back (a review)."""
    names = [Path(s).name or s for s in sources]
    shared = {n for n in names if names.count(n) > 1}
    return [f"{Path(s).parent.name}/{n}" if n in shared and Path(s).parent.name else n
            for s, n in zip(sources, names)]


def _display_name(row: Mapping[str, Any]) -> str:
    source = _text(row.get("source", ""))
    return Path(source).name or source


def _shown_folder(row: Mapping[str, Any]) -> str:
    """The folder a row's photograph was read from, absolute where the row's key knows it: a path given
    relative printed as "bad", which says nothing on a filed sheet (a review)."""
    source = _text(row.get("source", ""))
    if not Path(source).name:
        return ""
    folder = str(Path(source).parent)
    if not Path(source).is_absolute():
        resolved = key_path(str(row.get("key", "")))
        if resolved and Path(resolved).is_absolute() and Path(resolved).name == Path(source).name:
            folder = str(Path(resolved).parent)
    return folder


def report_parts(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                 run_info: dict[str, Any] | None = None, *, page: PageInfo | None = None) -> Iterator[str]:
    """The report page, piece by piece (a report of thousands of images never sits in memory whole).

    ``page`` makes it one page of a report split by screening day (:mod:`uopsl.runtime.report_days`).
    """
    out = Path(out_dir)
    referable = [c.name for c in manifest.classes if c.referable]
    referable_set = set(referable)
    zero_shot = {c.name for c in manifest.classes if not c.seen_in_training}
    info = dict(run_info or {})
    keyed = sorted(((urgency_key(r, referable), r) for r in rows), key=lambda kr: kr[0])
    ordered = [r for _, r in keyed]
    groups = [key[0] for key, _ in keyed]  # each row's group, for the anchor on each group's first row
    n = len(ordered)
    now = datetime.now(timezone.utc)
    # A day's page shows clock times of its own day, whenever it is read.
    shown_day = now if page is None or page.day is None else datetime(
        page.day.year, page.day.month, page.day.day, 12).astimezone()
    generated = local_time(now)
    model, bundle_hash = _model_and_bundle(manifest, info)
    images_word = "image" if n == 1 else "images"
    what = f"{page.label} - " if page is not None else ""
    ident_line = (f"Retinal screening report - {what}{n} {images_word} - generated {generated} - model {model}, "
                  f"bundle {bundle_hash} - uopsl {__version__}")
    use_html = use_header_html(manifest)
    dups = find_duplicates(ordered)
    # Rows of another model: compare the decision-relevant hash (a re-validated bundle has a new
    # manifest hash but the same model); rows without one are not judged.
    model_sha = model_sha256(manifest)
    first = page.first if page is not None else 1  # the number of the page's first row (parts continue)
    other_bundle = [first + k for k, r in enumerate(ordered)
                    if r.get("model_sha256") and str(r["model_sha256"]) != model_sha]
    example = _example(manifest)
    nav = ""
    if page is not None:
        nav = ("<p class='nav noprint'>" + " &middot; ".join(f"<a href='{esc(h)}'>{esc(t)}</a>" for t, h in page.links)
               + "</p>")

    yield from [
        head_html(use_title(manifest, f"Screening report - {what}{n} {images_word} - {generated}")),
        "<h1>Retinal screening report" + (f" &middot; {esc(page.label)}" if page is not None else "") + "</h1>",
        use_notice_html(manifest),
        nav,
        ident_html(manifest, info, generated, ordered, out,
                   extra="" if page is None else f"<dt>Page</dt><dd>{esc(page.label)}: one page of this folder's "
                   "report (report.html lists every day)</dd>"),
        summary_html(verdict_counts(ordered), linked=True),
        group_ranges_html(groups, first),
        retake_list_html(ordered, groups, first),
    ]
    if info.get("incomplete"):
        yield (f"<div class='warn' id='incomplete'><b>INCOMPLETE: {esc(info['incomplete'])}.</b> Photographs not "
               "screened yet are not in this report: run the same command again to screen them (photographs "
               "already screened are kept, not screened twice).</div>")
    if manifest.refers_no_one:
        yield refers_no_one_html(manifest)
    if info.get("unvalidated_file"):
        yield (f"<div class='warn' id='unvalidated'><b>Not validated: {esc(info['unvalidated_file'])}.</b> It was "
               "used because it was asked for by name; its decisions may differ from those of the validated model "
               "file. Screen with the default model choice (auto) for results that were checked.</div>")
    if dups.groups:
        listed = "; ".join(
            " = ".join(f"#{first + i} {esc(Path(_text(ordered[i].get('source', ''))).name)}" for i in g)
            for g in dups.groups[:_MAX_LISTED])
        more = f"; and {len(dups.groups) - _MAX_LISTED} more" if len(dups.groups) > _MAX_LISTED else ""
        yield (f"<div class='warn' id='duplicates'><b>{len(dups.groups)} photograph"
               f"{'s appear' if len(dups.groups) > 1 else ' appears'} more than once</b> (identical files under "
               f"different names): {listed}{more}. A duplicate can mean a photograph filed under the wrong "
               "patient: check which patient each one belongs to.</div>")
    if other_bundle:
        yield (f"<div class='warn' id='other-bundle'><b>{len(other_bundle)} row(s) were screened with another "
               f"model bundle</b> than the one described here (rows "
               f"{', '.join(f'#{i}' for i in other_bundle[:_MAX_LISTED])}"
               f"{' ...' if len(other_bundle) > _MAX_LISTED else ''}): their scores and thresholds differ. Screen "
               "them again into a new folder.</div>")
    yield (
        "<div class='howto'><h2>How to read this report</h2>"
        "<p><b class='v-refer'>Refer</b>: the model found signs of an eye disease that needs an eye specialist. "
        "Refer the patient to an eye specialist as your local protocol says. This tool supports screening; "
        "it does not diagnose, and a qualified grader should confirm each result.</p>"
        f"<p>{esc(_rule_sentence(manifest, referable))}</p>"
        + ("<p><b class='v-routine'>No referable finding</b>: no referable class reached its threshold; "
           "follow your routine screening schedule. " if not manifest.refers_no_one else
           "<p><b class='v-routine'>No referable finding</b>: this model has no referable class (see the box above), "
           "so every photograph it could read is listed so; that is not a screening result. ")
        + "<b class='v-ungradable'>Ungradable - retake</b>: the photograph is too poor for a result; the row "
        "says what to fix. <b class='v-error'>Unreadable file</b>: the file could not be opened; copy it "
        "again or retake. <b class='v-error'>Unusable image</b>: the file opened but cannot be screened as "
        "it is (too small, too large, or more than one eye in it); the row says what to do.</p>"
        "<p>The table lists referrals first, then photographs to retake or copy again, then those with no "
        "referable finding. Within the referrals, photographs with more referable findings come first: that "
        "is a count, not a measure of how severe or urgent a case is. Otherwise rows keep the order in which "
        "they were screened.</p>"
        f"<p>Scores are the model's score for each class (0 to 1) next to that class's threshold{example}. "
        "Each class has its own threshold, set on validation photographs unless the table below says otherwise, "
        "so a score means something only against its own threshold: a low score can be a finding and a higher score of another class not one; compare "
        "scores of different classes, or read them as chances, and you will misjudge. "
        "Non-referable classes (such as normal) are never findings.</p>"
        f"<p>Heatmaps show where the model looked for the class named under them: {heat_scale_html()} site "
        f"attention, from {LOW_COLOUR} to {PEAK_COLOUR}, lighter where higher (in a black-and-white print too); "
        "where attention is low the photograph shows unchanged. High means the most attention within that "
        "heatmap (each is scaled to its own peak), not a probability. Heatmaps are not outlines of lesions.</p>"
        + (f"<p>* zero-shot (no training images, scores not validated): {esc(', '.join(sorted(zero_shot)))}</p>"
           if zero_shot else "")
        + _legend(manifest, zero_shot)
        + "<p class='noprint'>To print: your browser's Print (Ctrl+P), A4 portrait; each page repeats the "
        "column names and this report's identity.</p></div>"
    )
    yield (
        "<h2 class='results-head noprint'>Results</h2>"
        "<table id='results' class='results'>"
        "<caption class='sr'>Screening results: referrals first, then photographs to retake, then those with "
        "no referable finding</caption>"
        "<colgroup><col class='c-n'><col class='c-src'><col class='c-img'><col class='c-img'><col class='c-res'>"
        "<col class='c-probs'></colgroup><thead>"
        f"<tr class='pagehead'><th colspan='6'>{use_html}{esc(ident_line)}</th></tr>"
        "<tr><th scope='col'>#</th><th scope='col'>Photograph</th><th scope='col'>Image</th>"
        "<th scope='col'>Heatmap</th><th scope='col'>Result</th><th scope='col'>Score vs threshold</th></tr>"
        "</thead>"
        f"<tfoot><tr><td colspan='6'>{use_html}{esc(ident_line)} - screening support, not a diagnosis</td></tr>"
        "</tfoot><tbody>"
    )
    dup_of: dict[int, list[int]] = {i: [j for j in g if j != i] for g in dups.groups for i in g}
    if page is None:  # a split report's writer sizes the cache for all the pages it refreshes
        reserve_image_cache(2 * len(ordered))  # a thumbnail and a heatmap per row
    other = set(other_bundle)
    sizes = Counter(groups)
    for k, r in enumerate(ordered):
        i = first + k
        if k == 0 or groups[k - 1] != groups[k]:
            # A heading row per group: on paper and to a screen reader the groups had no heading (a review).
            g = groups[k]
            yield (f"<tr class='group' id='{GROUP_ANCHORS[g]}'><th colspan='6' scope='colgroup'>"
                   f"{esc(_GROUP_WORDS[g])}: {sizes[g]} photograph{'s' if sizes[g] != 1 else ''}"
                   f"<span class='order'> - {esc(_GROUP_ORDER[g])}</span></th></tr>")
        cls, _ = _verdict(r)
        rid = r.get("id", "")
        rid = rid if valid_image_id(rid) else ""  # an id that is a path would show a picture from elsewhere
        tpath = out / THUMB_DIR / f"{rid}.jpg"
        opath = out / OVERLAY_DIR / f"{rid}.png"
        thumb_mtime = _mtime(tpath) if rid else None
        # A link planted among the pictures would show a file from elsewhere: only plain files are shown.
        thumb = _data_uri(tpath) if rid and special_entry(tpath) is None and _trusted_image(tpath, r, "thumb", None) \
            else ""
        over = _data_uri(opath) if rid and special_entry(opath) is None \
            and _trusted_image(opath, r, "overlay", thumb_mtime) else ""
        positive = [str(c) for c in (r.get("positive") or [])]
        findings = [c for c in positive if c in referable_set] if r.get("status") == "ok" else []
        source = _text(r.get("source", ""))
        name = _display_name(r)
        folder = _shown_folder(r)
        when = parse_time(r.get("screened_at"))
        src_html = (f"<span class='fname' title='{esc(source)}'>{esc(name)}</span>"
                    + (f"<span class='dir'>{esc_path(folder)}</span>" if folder and folder != "." else "")
                    + (f"<span class='when'>{'checked' if r.get('status') == 'error' else 'screened'} "
                       f"{esc(_short_time(when, shown_day))}</span>"
                       if when is not None else "")
                    + (f"<span class='dir'>moved from {esc_path(r['moved_from'])}</span>" if r.get("moved_from")
                       else "")
                    + ("<div class='dup'>This file has since been replaced by another photograph of the same "
                       "name, listed separately.</div>" if r.get("file_replaced") else ""))
        # The first few copies only: a photograph copied a thousand times must not list a million links.
        here = dup_of.get(k, [])
        copies = [f"#{first + j} ({esc(Path(_text(ordered[j].get('source', ''))).name)})" for j in here[:_MAX_LISTED]]
        n_copies = len(here)
        if page is not None and row_ident(r) in page.elsewhere:
            links, n_there = page.elsewhere[row_ident(r)]
            copies += [f"<a href='{esc(h)}'>{esc(t)}</a>" for t, h in links]
            n_copies += n_there
        if copies:
            shown = copies[:_MAX_LISTED]
            src_html += ("<div class='dup'>Same photograph as " + ", ".join(shown)
                         + (f" and {n_copies - len(shown)} more" if n_copies > len(shown) else "") + "</div>")
        result = _result_html(r, manifest, findings, referable, zero_shot)
        if i in other:
            result += (f"<div class='other'>Screened with another model "
                       f"(bundle {esc(str(r.get('bundle_sha256') or '?')[:12])}); screen again.</div>")
        cap = f"<div class='cap'>heatmap: {esc(r['heatmap_class'])}</div>" if over and r.get("heatmap_class") else ""
        drawn_in = _overlay_colours(opath) if over else COLOURS
        if drawn_in is not None and drawn_in != COLOURS:  # an earlier run's overlay, kept on a rerun
            cap += ("<div class='cap'>older colours: red = most attention</div>" if drawn_in == OLDER_COLOURS
                    else f"<div class='cap'>other colours ({esc(drawn_in)}): not the scale above</div>")
        # The thumbnail's alt is empty (the row header names the photograph); each picture was read out as
        # "thumbnail" or "heatmap", 1,200 times in a 600-row report (a review).
        none = "&mdash;<span class='sr'>no image</span>"
        thumb_img = f'<img class="thumb" alt="" src="{thumb}">' if thumb else none
        over_alt = f"heatmap of where the model looked for {r['heatmap_class']}" if r.get("heatmap_class") \
            else "heatmap of where the model looked"
        over_img = f'<img class="heatmap" alt="{esc(over_alt)}" src="{over}">{cap}' if over else none
        yield (
            f"<tr class='result {cls}' data-status='{esc(r.get('status'))}' id='{esc(row_anchor(r))}'>"
            f"<td class='n'>{i}</td>"
            f"<th scope='row' class='src'>{src_html}</th>"
            f"<td class='img'>{thumb_img}</td><td class='img'>{over_img}</td>"
            f"<td class='res'>{result}</td>"
            f"<td class='probs'>{_probs_html(r, manifest, zero_shot, set(findings))}</td></tr>"
        )
    yield "</tbody></table>"
    unchecked = (f" Duplicate check: {dups.unchecked} photograph(s) could not be compared (moved, changed "
                 "since screening, or too much to read)." if dups.unchecked else "")
    yield (
        "<p class='note'>Screening support only: a referral decision comes from the model's operating "
        "thresholds in the bundle manifest and must be confirmed by a qualified grader. Ungradable images "
        "need a new photograph; an unreadable file needs copying again (or a new photograph), and each row "
        "says why. Heatmaps show where the model's predilection-site "
        f"attention was highest, not lesion segmentations.{unchecked}</p></body></html>"
    )


def render_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                  run_info: dict[str, Any] | None = None) -> str:
    """The report page as one string."""
    return "\n".join(report_parts(rows, out_dir, manifest, run_info))


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                 run_info: dict[str, Any] | None = None) -> Path:
    """Write ``report.html`` atomically into ``out_dir``; returns its path."""
    path = Path(out_dir) / REPORT
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for part in report_parts(rows, out_dir, manifest, run_info):
            fh.write(part)
            fh.write("\n")
    return path


__all__ = ["CLASS_WORDS", "REPORT", "DuplicateCheck", "PageInfo", "esc",
           "find_duplicates", "head_html", "heat_scale_html", "ident_html", "local_time", "parse_time",
           "render_report", "report_css",
           "report_parts", "reserve_image_cache", "row_anchor", "row_ident", "summary_html", "urgency_key",
           "verdict_counts", "write_report"]
