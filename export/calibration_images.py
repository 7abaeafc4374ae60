"""Whether the images an INT8 file is validated on are the images it was calibrated on.

An INT8 file's activation ranges (and, where used, its bias correction and
auto-exclude choice) are fitted on its calibration images. Judged on those same
images it meets ranges made for exactly their activations, so its agreement with
the FP32 model there says less about new photographs than the same figure on
images it never saw. Validation practice keeps the calibration and test sets
apart; this module checks it.

How: ``uopsl calibrate`` records each calibration image file's digest (the first
16 hex characters of its sha256) in ``calibration.json``, and ``uopsl quantize``
records the calibration set's fingerprint in the INT8 file's manifest entry. An
INT8 file whose fingerprint is the bundle's table's (an engine built from
calibration.json's ranges, or from such a file, records it too) is checked
against that table's digests; for any other file (quantized from a table since
replaced, with ``quantize --images`` another set, an engine TensorRT calibrated
from ``build-engine --calib-images`` or a cache file, a table from before
digests were recorded) the check says it could not look, and why. A file judged on any of its
calibration images keeps its FAIL (a file that fails even there is not fit), but
its PASS is not recorded in the manifest and is not a release pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uopsl.calibration.table import CalibrationTable
from uopsl.export.parity_metrics import FAIL
from uopsl.runtime.bundle import FileEntry, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import SHORT_DIGEST_CHARS

#: What the digests are (parity.json says it beside each check).
DIGEST_WORDS = f"sha256 of each image file, first {SHORT_DIGEST_CHARS} hex characters (calibration.json's image_digests)"


@dataclass(frozen=True)
class CalibrationOverlap:
    """How many of the ``of`` images judged were among ``file``'s calibration images.

    ``n_overlap`` None: not known, ``why_not_known`` says why.
    """

    file: str
    of: int
    n_overlap: int | None
    n_calibration: int | None = None
    table: str | None = None
    why_not_known: str | None = None

    @property
    def held_out(self) -> bool | None:
        """True: none of the images calibrated the file; False: some did; None: not known."""
        return None if self.n_overlap is None else self.n_overlap == 0

    def report(self) -> dict[str, Any]:
        """A candidate's ``calibration_images`` in parity.json."""
        return {"n_overlap": self.n_overlap, "of": self.of, "n_calibration_images": self.n_calibration,
                "held_out": self.held_out, "table": self.table, "why_not_known": self.why_not_known,
                "digest": DIGEST_WORDS}

    def note(self) -> str | None:
        """The warning for the report's notes (None when there is nothing to warn about)."""
        if not self.n_overlap:
            return None
        return (f"{self.n_overlap} of the {self.of} images judged (same file content) are among the "
                f"{self.n_calibration} images {self.file} was calibrated on ({self.table}): its INT8 ranges were "
                "fitted to their activations, so its figures there flatter it; its FAIL stands, its PASS is not "
                "recorded. Validate on images outside the calibration set")

    def withhold(self) -> str | None:
        """Why a PASS (or INCOMPLETE) of this file is not recorded (None: nothing against recording it)."""
        if not self.n_overlap:
            return None
        return (f"judged on {self.n_overlap} of its {self.n_calibration} calibration images: a pass there is not a "
                "pass on held-out images")


def _calibration_entry(manifest: Manifest) -> FileEntry | None:
    entries = [f for f in manifest.files if f.kind == "calibration"]
    return entries[0] if len(entries) == 1 else None


def _source_of(entry: FileEntry, by_sha: Mapping[str, FileEntry]) -> FileEntry:
    """The file whose calibration ``entry`` carries: an engine built from the bundle's INT8 ONNX file (TensorRT's
    Q/DQ path) carries that file's; any other file its own."""
    source = by_sha.get(str(entry.info.get("source_onnx_sha256") or ""))
    if entry.kind == "engine" and not entry.info.get("calibration_fingerprint") and source is not None \
            and source.precision.startswith("int8"):
        return source
    return entry


def _fitted_elsewhere(entry: FileEntry, table_fingerprint: str) -> str | None:
    """Why the images ``uopsl quantize`` fitted ``entry``'s rounding, bias correction or sensitivity pass on are
    not known to be the table's set (None: they are, or no step used images)."""
    fitted = entry.info.get("fitted_on")
    if not isinstance(fitted, dict) or not fitted:
        return None
    for step, v in fitted.items():
        origin = v.get("from_set") if isinstance(v, dict) else None
        if origin is None:
            return (f"its {step} does not record which set its images came from (quantized before uopsl "
                    "recorded it)")
        if origin != table_fingerprint:
            return (f"its {step} was fitted on images of another set than calibration.json's (quantize --images "
                    "was given another set), whose images are not recorded: quantize with the calibration set")
    return None


def is_calibrated(entry: FileEntry) -> bool:
    """Whether ``entry`` is a file whose numbers depend on a calibration set (an INT8 model or engine)."""
    return entry.kind in ("onnx", "engine") and entry.precision.lower().startswith("int8")


def calibration_overlaps(root: str | Path, manifest: Manifest, files: Iterable[str],
                         digests: Sequence[str | None]) -> dict[str, CalibrationOverlap]:
    """For each INT8 file among ``files``, how many of the images (``digests``: each file's sha256 in hex, None
    for an unreadable one) were among its calibration images. Files that are not INT8 are left out.

    The bundle was verified before this is called, so its calibration.json is the one the manifest lists.
    """
    mine = [d[:SHORT_DIGEST_CHARS].lower() for d in digests if d]
    n = len(digests)
    by_path = {f.path: f for f in manifest.files}
    by_sha = {f.sha256: f for f in manifest.files}
    table_entry = _calibration_entry(manifest)
    table: CalibrationTable | None = None
    table_problem = None
    if table_entry is None:
        table_problem = "the bundle lists no calibration table (or several), so its calibration images are not known"
    else:
        try:
            table = CalibrationTable.load(Path(root) / table_entry.path)
        except ConfigError as exc:
            table_problem = f"{table_entry.path} could not be read ({exc})"
    out: dict[str, CalibrationOverlap] = {}
    for name in dict.fromkeys(files):
        entry = by_path.get(name)
        if entry is None or not is_calibrated(entry):
            continue
        where = table_entry.path if table_entry is not None else None

        def unknown(why: str, name: str = name, where: str | None = where) -> CalibrationOverlap:
            return CalibrationOverlap(name, n, None, table=where, why_not_known=why)

        source = _source_of(entry, by_sha)
        own = source.info.get("calibration_fingerprint")
        fingerprint = own if isinstance(own, str) and own else None
        elsewhere = _fitted_elsewhere(source, fingerprint) if fingerprint and table is not None else None
        if fingerprint is None:
            out[name] = unknown(f"{name} does not record the calibration set it was made with (an engine "
                                "built from a TensorRT cache file, or a file from before uopsl recorded it)")
        elif table is None:
            out[name] = unknown(str(table_problem))
        elif table.set_fingerprint != fingerprint:
            out[name] = unknown(f"{name} was calibrated on another set than the bundle's {where} describes "
                                f"(fingerprint {fingerprint[:12]}... against {table.set_fingerprint[:12]}...: "
                                "the table was recalibrated since, or the file was calibrated on other images, "
                                "such as build-engine's --calib-images)")
        elif table.image_digests is None:
            out[name] = unknown(f"{where} does not record its images' digests (made before uopsl recorded "
                                "them, or from arrays): run uopsl calibrate and uopsl quantize again to have them "
                                "checked")
        elif elsewhere is not None:
            out[name] = unknown(f"{name}: {elsewhere}")
        else:
            calibration = {d[:SHORT_DIGEST_CHARS] for d in table.image_digests}
            out[name] = CalibrationOverlap(name, n, sum(1 for d in mine if d in calibration),
                                           table.num_images, where)
    return out


def withheld_passes(overlaps: Mapping[str, CalibrationOverlap]) -> dict[str, str]:
    """file -> why its PASS is not recorded, for the files judged on their own calibration images."""
    return {f: why for f, o in overlaps.items() if (why := o.withhold())}


def release_reasons(candidates: Sequence[Mapping[str, Any]]) -> list[str]:
    """The reasons a run is not a release pass because a passing candidate was judged on its calibration images
    (read from the candidates' ``calibration_images`` in parity.json)."""
    reasons = []
    for c in candidates:
        cal = c.get("calibration_images") or {}
        if cal.get("n_overlap") and c.get("verdict") != FAIL and c.get("judged") is not False:
            reasons.append(f"{c.get('name')}: {cal['n_overlap']} of the {cal.get('of')} images were among its "
                           f"{cal.get('n_calibration_images')} calibration images (not held out)")
    return reasons


__all__ = ["CalibrationOverlap", "DIGEST_WORDS", "calibration_overlaps", "is_calibrated", "release_reasons",
           "withheld_passes"]
