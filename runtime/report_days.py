"""A results folder too big for one page: ``report.html`` becomes an index, and each screening day gets pages.

Why: ``report.html`` embeds every thumbnail and heatmap (about 9 KB a photograph) so that it stays one file
a clinic can copy, mail and print. A drop folder watched for a month collects tens of thousands of
photographs; one page would grow to hundreds of megabytes, which browsers open slowly or not at all, and
``watch`` would rewrite all of it every few seconds. And a folder screened into on several days printed, each
day, one list of every day's photographs: yesterday's referrals first, yesterday's retakes in the "retake now"
box (a review). So above ``ONE_PAGE_MAX_ROWS`` photographs, or as soon as the rows span two screening days:

- ``days/YYYY-MM-DD.html`` holds the photographs screened on that local day, in the report's urgency
  order, ``ONE_PAGE_MAX_ROWS`` a page at most (then ``YYYY-MM-DD-2.html``, ...). Each page is a whole
  report (identity, how to read it, counts), printable on its own: a clinic prints the day's page.
- ``report.html`` is the index: counts over the folder, one line per day with its pages, the referred
  photographs (newest first), and photographs found twice anywhere in the folder.

A page is rewritten only when what it shows changed (its rows, their image files, the bundle, the
toolkit); ``days/pages.json`` records each page's fingerprint. A refresh under ``watch`` therefore
rewrites today's pages and the index, not the month behind them. Up to ``ONE_PAGE_MAX_ROWS``
photographs screened on one day the report stays one page, and no ``days/`` folder is left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from uopsl.runtime.bundle import Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import atomic_open
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR
from uopsl.runtime import overlay, reasons, report
from uopsl.runtime.report import (
    REPORT,
    DuplicateCheck,
    PageInfo,
    esc,
    find_duplicates,
    head_html,
    ident_html,
    local_time,
    parse_time,
    report_css,
    report_parts,
    reserve_image_cache,
    row_anchor,
    row_ident,
    still_to_retake,
    summary_html,
    urgency_key,
    use_header_html,
    use_notice_html,
    use_title,
    verdict_counts,
    write_report,
)
from uopsl.runtime.results import model_sha256
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

#: Above this many photographs the report is split by screening day (and a day into pages of this many).
ONE_PAGE_MAX_ROWS = 1000
DAYS_DIR = "days"
FINGERPRINTS = "pages.json"
_PAGE_NAME = re.compile(r"(?:\d{4}-\d{2}-\d{2}|undated)(?:-\d+)?\.html")
_STALE_PAGE_NAME = re.compile(r"(?:\d{4}-\d{2}-\d{2}|undated)(?:-\d+)?\.out-of-date\.html")  # _set_aside
_MAX_REFERRALS = 500  # listed on the index, newest first (text only: ~0.3 KB each)
_MAX_COPIES = 10  # copies of a photograph on other pages named per row (with how many there are in all)


@dataclass(frozen=True)
class DayPage:
    """One page of a split report: its file in ``days/``, what it holds, and its rows (indices, urgency order)."""

    name: str
    label: str
    day: date | None
    rows: tuple[int, ...]
    first: int = 1  # the number of its first row: a day's later parts go on counting


def screening_day(row: Mapping[str, Any]) -> date | None:
    """The local calendar day a row was screened on (None when the row carries no screening time)."""
    return report.local_day(row.get("screened_at"))


def plan_pages(rows: Sequence[Mapping[str, Any]], referable: Sequence[str],
               max_rows: int = ONE_PAGE_MAX_ROWS) -> list[DayPage]:
    """The pages of a split report, oldest day first, rows without a screening time last."""
    if max_rows < 1:
        raise ConfigError(f"max_rows must be >= 1 (photographs a report page may hold), got {max_rows}")
    by_day: dict[date | None, list[int]] = {}
    for i, r in enumerate(rows):
        by_day.setdefault(screening_day(r), []).append(i)
    pages: list[DayPage] = []
    for day in sorted(by_day, key=lambda d: (d is None, d or date.min)):
        order = sorted(by_day[day], key=lambda i: urgency_key(rows[i], referable))
        chunks = [order[k : k + max_rows] for k in range(0, len(order), max_rows)]
        stem = day.isoformat() if day is not None else "undated"
        what = day.isoformat() if day is not None else "photographs without a screening time"
        for k, chunk in enumerate(chunks, 1):
            label = what + (f", part {k} of {len(chunks)}" if len(chunks) > 1 else "")
            pages.append(DayPage(f"{stem}.html" if k == 1 else f"{stem}-{k}.html", label, day, tuple(chunk),
                                 first=(k - 1) * max_rows + 1))
    return pages


def write_reports(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], manifest: Manifest,
                  run_info: dict[str, Any] | None = None, *, max_rows: int | None = None) -> Path:
    """Write the report of a results folder: one page up to ``max_rows`` photographs of one screening day, else an
    index and day pages.

    ``max_rows`` defaults to :data:`ONE_PAGE_MAX_ROWS`. Returns the path of ``report.html`` (the page or
    the index). Every file is written atomically, day pages before the index, so the index never links
    to a page that is not there yet.
    """
    max_rows = ONE_PAGE_MAX_ROWS if max_rows is None else max_rows
    if max_rows < 1:
        raise ConfigError(f"max_rows must be >= 1 (photographs a report page may hold), got {max_rows}")
    out = Path(out_dir)
    if len(rows) <= max_rows and len({screening_day(r) for r in rows} - {None}) <= 1:  # undated rows: no day
        path = write_report(rows, out, manifest, run_info)
        _remove_pages(out / DAYS_DIR, keep=set())
        return path
    info = dict(run_info or {})
    referable = [c.name for c in manifest.classes if c.referable]
    pages = plan_pages(rows, referable, max_rows)
    dups = find_duplicates(rows)
    elsewhere = _duplicates_elsewhere(rows, pages, dups)
    # Keep every image of the busiest day for the next refresh: a new referral reorders all of a
    # day's parts, and a cache smaller than the day would decode them all again each time.
    per_day: dict[date | None, int] = {}
    for p in pages:
        per_day[p.day] = per_day.get(p.day, 0) + len(p.rows)
    reserve_image_cache(2 * max(per_day.values()))
    folder = out / DAYS_DIR
    known = _read_fingerprints(folder)
    written: dict[str, str] = {}
    due: dict[str, tuple[list[dict[str, Any]], PageInfo]] = {}  # pages whose content changed, not yet written
    for k, page in enumerate(pages):
        links = [("all days (report.html)", f"../{REPORT}")]
        if k > 0:
            links.append((f"previous: {pages[k - 1].label}", pages[k - 1].name))
        if k + 1 < len(pages):
            links.append((f"next: {pages[k + 1].label}", pages[k + 1].name))
        page_rows = [rows[i] for i in page.rows]
        info_page = PageInfo(label=page.label, day=page.day, links=tuple(links), first=page.first,
                             elsewhere={row_ident(rows[i]): elsewhere[i] for i in page.rows if i in elsewhere})
        fp = _fingerprint(page_rows, out, manifest, info, info_page)
        written[page.name] = fp
        if known.get(page.name) != fp or not (folder / page.name).is_file():
            due[page.name] = (page_rows, info_page)
    n_written = len(due)
    try:
        for name, (page_rows, info_page) in list(due.items()):
            with atomic_open(folder / name, "w", encoding="utf-8") as fh:
                for part in report_parts(page_rows, out, manifest, info, page=info_page):
                    fh.write(part)
                    fh.write("\n")
            del due[name]
        _write_fingerprints(folder, written)
        path = out / REPORT
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for part in _index_parts(rows, pages, dups, out, manifest, info, max_rows):
                fh.write(part)
                fh.write("\n")
    except Exception:
        _set_aside(folder, due)
        raise
    _remove_pages(folder, keep=set(written))  # after the index stopped linking to them
    log.debug("report: %d day pages, %d rewritten", len(pages), n_written)
    return path


def _duplicates_elsewhere(rows: Sequence[Mapping[str, Any]], pages: Sequence[DayPage],
                          dups: DuplicateCheck) -> dict[int, tuple[tuple[tuple[str, str], ...], int]]:
    """For each row with copies on other pages: (text, link) of the first few, and how many there are.

    Copies on the row's own page are named by the page itself. Worked out once per page of a group,
    not per row: a photograph copied a thousand times costs a thousand rows, not a million links.
    """
    page_of = {i: p.name for p in pages for i in p.rows}
    label_of = {p.name: p.label for p in pages}
    out: dict[int, tuple[tuple[tuple[str, str], ...], int]] = {}
    for group in dups.groups:
        on_page: dict[str, int] = {}
        for i in group:
            on_page[page_of[i]] = on_page.get(page_of[i], 0) + 1
        for name, n_here in on_page.items():
            if n_here == len(group):
                continue
            links: list[tuple[str, str]] = []
            for j in group:
                if page_of[j] != name:
                    links.append((f"{_name(rows[j])} ({label_of[page_of[j]]})", f"{page_of[j]}#{row_anchor(rows[j])}"))
                    if len(links) == _MAX_COPIES:
                        break
            found = (tuple(links), len(group) - n_here)
            for i in group:
                if page_of[i] == name:
                    out[i] = found
    return out


def _name(row: Mapping[str, Any]) -> str:
    source = str(row.get("source", ""))
    return Path(source).name or source


def _file_state(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """The rendering code and style sheet this process runs: a toolkit fix reaches old pages too.

    The version number alone would not do: it changes at releases, not at every fix. ``reasons`` holds the
    words a page gives for a photograph without a result; ``overlay`` the heat colours the page's colour scale
    is drawn in.
    """
    h = hashlib.sha256(__version__.encode())
    for path in (report.__file__, reasons.__file__, overlay.__file__, __file__):
        if path:
            with open(path, "rb") as fh:
                h.update(fh.read())
    h.update(report_css().encode("utf-8"))
    return h.hexdigest()


def _fingerprint(page_rows: Sequence[Mapping[str, Any]], out: Path, manifest: Manifest, info: Mapping[str, Any],
                 page: PageInfo) -> str:
    """What a day page shows, hashed: rewrite the page when this changes.

    The image files count because the page embeds them and trusts them by their times; the code and
    style sheet because they shape every page; the time zone because rows show local clock times. The
    command's inputs count only where the page shows them (no row has a source), so a ``run`` with other
    arguments does not rewrite the month. The generation time does not count: an unchanged page keeps
    the time it was made.
    """
    thumbs, overlays = os.path.join(out, THUMB_DIR, ""), os.path.join(out, OVERLAY_DIR, "")  # str: Path is slow
    images = [(_file_state(f"{thumbs}{r.get('id', '')}.jpg"), _file_state(f"{overlays}{r.get('id', '')}.png"))
              for r in page_rows]
    shown_info = {k: v for k, v in info.items()
                  if k != "inputs" or not any(r.get("source") for r in page_rows)}
    payload = {
        "code": _code_hash(), "tz": [time.tzname, time.timezone, time.altzone, time.daylight],
        "manifest": repr(manifest), "info": shown_info,
        "page": [page.label, str(page.day), page.links, page.first, sorted(page.elsewhere.items())],
        "rows": page_rows, "images": images, "out": str(out.absolute()),
    }
    text = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _read_fingerprints(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / FINGERPRINTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: every page is written again
    pages = data.get("pages") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in pages.items()} if isinstance(pages, dict) else {}


def _write_fingerprints(folder: Path, pages: Mapping[str, str]) -> None:
    with atomic_open(folder / FINGERPRINTS, "w", encoding="utf-8") as fh:
        json.dump({"format": 1, "pages": dict(pages)}, fh, indent=1, sort_keys=True)


def _set_aside(folder: Path, stale: Iterable[str]) -> None:
    """Rename day pages a failed write (a full disk) left showing an earlier state to ``*.out-of-date.html``.

    Why: a clinic prints the day's page; one still listing part of the day, with no banner, passed for the
    day's list. Pages whose content did not change stay where they are (the month behind today), and a
    renamed page is written again by the next refresh (its file is missing); that write removes the copy.
    """
    for name in stale:
        if not (folder / name).is_file():
            continue
        aside = folder / name.replace(".html", ".out-of-date.html")
        try:
            os.replace(folder / name, aside)
        except OSError as exc:
            log.warning("%s could not be rewritten and shows an earlier state; it could not be renamed either "
                        "(%s): do not print it", folder / name, exc)
            continue
        log.warning("%s could not be rewritten: renamed %s so that it is not printed as the day's list", folder / name,
                    aside.name)


def _remove_pages(folder: Path, keep: set[str]) -> None:
    """Remove the day pages this module wrote that the report no longer has, and copies set aside as out of date
    (and the folder, once empty)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name in keep or not (_PAGE_NAME.fullmatch(name) or _STALE_PAGE_NAME.fullmatch(name)
                                or (name == FINGERPRINTS and not keep)):
            continue
        try:
            os.unlink(folder / name)
        except OSError as exc:
            log.warning("could not remove the old report page %s: %s", folder / name, exc)
    if not keep:
        try:
            folder.rmdir()  # only when empty: anything the user put there stays
        except OSError:
            pass


def _listed_rows(title: str, last: str, last_of: Callable[[Mapping[str, Any]], str], cls: str,
                 rows: Sequence[Mapping[str, Any]], page_of: Mapping[int, DayPage], sheet_line: str,
                 chosen: list[int]) -> list[str]:
    """The index's table of ``chosen`` rows, newest first (at most ``_MAX_REFERRALS``), each linked to its row on
    its day's page, with ``last`` as the last column's heading and ``last_of(row)`` as its text."""
    if not chosen:
        return []

    def when(i: int) -> float:
        t = parse_time(rows[i].get("screened_at"))
        return t.timestamp() if t is not None else float("-inf")

    chosen = sorted(chosen, key=when, reverse=True)
    shown = chosen[:_MAX_REFERRALS]
    rest = len(chosen) - len(shown)
    newest = (f", the newest {len(shown)} listed here; the other {rest} {'is' if rest == 1 else 'are'} on "
              f"{'its' if rest == 1 else 'their'} day's page{'' if rest == 1 else 's'}, linked above"
              if rest > 0 else "")
    out = [f"<h2>{esc(title)} ({len(chosen)}{newest})</h2>"
           f"<table class='days {cls}'><thead>"
           f"<tr class='pagehead'><th colspan='4'>{sheet_line}</th></tr>"
           "<tr><th scope='col'>Screened</th><th scope='col'>Photograph</th><th scope='col'>Folder</th>"
           f"<th scope='col'>{esc(last)}</th></tr></thead><tfoot class='pagefoot'><tr><td colspan='4'>"
           f"{sheet_line}</td></tr></tfoot><tbody>"]
    for i in shown:
        r = rows[i]
        at = parse_time(r.get("screened_at"))
        source = str(r.get("source", ""))
        folder = str(Path(source).parent) if Path(source).name else ""
        out.append(f"<tr><td>{esc(local_time(at) if at is not None else '')}</td>"
                   f"<td><a href='{esc(DAYS_DIR)}/{esc(page_of[i].name)}#{esc(row_anchor(r))}'>"
                   f"{esc(_name(r))}</a></td><td>{esc(folder)}</td><td>{esc(last_of(r))}</td></tr>")
    out.append("</tbody></table>")
    return out


def _index_parts(rows: Sequence[Mapping[str, Any]], pages: Sequence[DayPage], dups: DuplicateCheck, out: Path,
                 manifest: Manifest, info: Mapping[str, Any], max_rows: int) -> list[str]:
    """The index page: the folder's counts, its days with their pages, referrals, duplicates."""
    generated = local_time(datetime.now(timezone.utc))
    referable = {c.name for c in manifest.classes if c.referable}
    n = len(rows)
    days: dict[date | None, list[DayPage]] = {}
    for p in pages:
        days.setdefault(p.day, []).append(p)
    page_of = {i: p for p in pages for i in p.rows}
    n_days = sum(1 for d in days if d is not None)
    title = f"Screening report - {n} images on {n_days} day{'s' if n_days != 1 else ''} - {generated}"
    # Repeated at the top and bottom of every printed sheet of the index's tables, as on the day pages.
    sheet_line = use_header_html(manifest) + esc(f"Retinal screening report (index) - {n} images - generated "
                                                 f"{generated} - uopsl {__version__}")
    why_split = (f"{n} photographs are too many for one page" if n > max_rows
                 else "These photographs were screened on more than one day")
    parts = [
        head_html(use_title(manifest, title)),
        "<h1>Retinal screening report</h1>",
        use_notice_html(manifest),
        ident_html(manifest, info, generated, rows, out),
        summary_html(verdict_counts(rows)),
        f"<p class='note'>{why_split}, so each screening day has its own pages "
        f"({max_rows} photographs a page at most, most urgent first) in the folder {esc(DAYS_DIR)} next to this "
        "file. Open a day to see its photographs and heatmaps; each day's page prints on its own.</p>",
    ]
    if manifest.refers_no_one:  # as every day's page says it
        parts.insert(3, report.refers_no_one_html(manifest))
    if dups.groups:
        listed = "; ".join(" = ".join(
            f"<a href='{esc(DAYS_DIR)}/{esc(page_of[i].name)}#{esc(row_anchor(rows[i]))}'>{esc(_name(rows[i]))}</a>"
            f" ({esc(page_of[i].label)})" for i in g) for g in dups.groups[:10])
        more = f"; and {len(dups.groups) - 10} more" if len(dups.groups) > 10 else ""
        parts.append(f"<div class='warn' id='duplicates'><b>{len(dups.groups)} photograph"
                     f"{'s appear' if len(dups.groups) > 1 else ' appears'} more than once</b> (identical files "
                     f"under different names): {listed}{more}. A duplicate can mean a photograph filed under the "
                     "wrong patient: check which patient each one belongs to.</div>")
    model_sha = model_sha256(manifest)
    other = [r for r in rows if r.get("model_sha256") and str(r["model_sha256"]) != model_sha]
    if other:
        parts.append(f"<div class='warn' id='other-bundle'><b>{len(other)} photograph(s) were screened with "
                     "another model bundle</b> than the one described here: their scores and thresholds differ. "
                     "Their rows say so on their day's page; screen them again into a new folder.</div>")
    parts.append("<table class='days'><thead>"
                 f"<tr class='pagehead'><th colspan='7'>{sheet_line}</th></tr>"
                 "<tr><th>Screening day</th><th>Photographs</th><th>Refer</th>"
                 "<th>No referable finding</th><th>Ungradable</th><th>Unreadable or not screened</th>"
                 f"<th>Pages</th></tr></thead><tfoot class='pagefoot'><tr><td colspan='7'>{sheet_line}</td></tr>"
                 "</tfoot><tbody>")
    for day in sorted(days, key=lambda d: (d is not None, d or date.min), reverse=True):  # newest first
        day_rows = [rows[i] for p in days[day] for i in p.rows]
        c = verdict_counts(day_rows)
        links = ", ".join(f"<a href='{esc(DAYS_DIR)}/{esc(p.name)}'>{esc(p.label)}</a>" for p in days[day])
        parts.append(f"<tr><td>{esc(day.isoformat() if day is not None else 'no screening time')}</td>"
                     f"<td>{len(day_rows)}</td><td class='refer'>{c.get('refer', 0)}</td>"
                     f"<td>{c.get('routine', 0)}</td><td>{c.get('ungradable', 0)}</td><td>{c.get('error', 0)}</td>"
                     f"<td>{links}</td></tr>")
    parts.append("</tbody></table>")

    def findings(r: Mapping[str, Any]) -> str:
        return ", ".join(str(x) for x in (r.get("positive") or []) if x in referable)

    def reason(r: Mapping[str, Any]) -> str:
        tags = reasons.order_reasons(r.get("reasons") or [])
        return reasons.reason_text(tags[0]).label if tags else "no result"

    paged = [i for p in pages for i in p.rows]
    parts += _listed_rows("Referred photographs", "Findings", findings, "referred", rows, page_of, sheet_line,
                          [i for i in paged if rows[i].get("status") == "ok" and rows[i].get("refer")])
    # Retakes too: on a split folder they sat only at the end of their day's last page (a review, session 53).
    parts += _listed_rows("Photographs to retake or copy again", "Why", reason, "retakes", rows, page_of,
                          sheet_line, [i for i in paged if still_to_retake(rows[i])])
    unchecked = (f" Duplicate check: {dups.unchecked} photograph(s) could not be compared (moved, changed "
                 "since screening, or too much to read)." if dups.unchecked else "")
    parts.append("<p class='note'>Screening support only: a referral decision comes from the model's operating "
                 f"thresholds in the bundle manifest and must be confirmed by a qualified grader.{unchecked}</p>"
                 "</body></html>")
    return parts


__all__ = ["DAYS_DIR", "FINGERPRINTS", "ONE_PAGE_MAX_ROWS", "DayPage", "plan_pages", "screening_day",
           "write_reports"]
