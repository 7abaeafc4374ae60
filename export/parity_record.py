"""What a validation run writes into the bundle's manifest, and what its report says about that.

A verdict in the manifest is what ``auto`` trusts on a device, so recording
follows rules the report must be able to state in advance (``parity.json``'s
``record``): nothing from a run whose images made the checkpoint (``withhold``);
otherwise a FAIL is offered to the manifest, a PASS or INCOMPLETE only from a
run that :func:`uopsl.runtime.bundle.parity_run_problem` finds sound and, for an
INT8 file, on images it was not calibrated on (``withhold_pass``); a FAIL
from a run on too few images does not replace a PASS from one that could vouch
for the file; a candidate that could not run here is never recorded (that would erase
a valid earlier verdict); and the manifest keeps, by bundle_writer's own rules,
a verdict judged against PyTorch over one judged against a device's ONNX
reference, and a complete verdict over an INCOMPLETE one. Every record is
derived from the run's report (``parity.json``), so the two cannot disagree
about the gates, the data or the reference; after writing, the manifest is read
back, and a verdict it did not take is reported as not recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
import os
from pathlib import Path
from typing import Any

from uopsl.export.bundle_writer import kept_pytorch_verdict, kept_verdict, record_parity
from uopsl.export.parity_metrics import FAIL, ON_ESTIMATES, PASS, jsonable
from uopsl.runtime.bundle import (
    MIN_PARITY_IMAGES,
    MIN_PARITY_PATIENTS,
    PARITY_GATE_DEFAULTS,
    PARITY_KEY,
    FileEntry,
    Manifest,
    parity_run_problem,
    read_manifest,
)
from uopsl.runtime.cpuinfo import CPU_BACKENDS
from uopsl.runtime.errors import BundleError
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

#: A verdict this run did not record: (the candidate, the record the manifest kept, why, kept as PyTorch's).
Kept = tuple[Mapping[str, Any], Mapping[str, Any], str, bool]
#: A verdict never offered to the manifest: (the candidate, why).
PassedOver = tuple[Mapping[str, Any], str]

#: The module whose version says what computed a backend's outputs (recorded with its verdicts).
_BACKEND_RUNTIME = {"ort-cpu": "onnxruntime", "ort-cuda": "onnxruntime", "ort-trt": "onnxruntime",
                    "openvino": "openvino", "tensorrt": "tensorrt"}


def backend_machine(backend: str, machine: Mapping[str, Any]) -> dict[str, Any]:
    """The CPU architecture and ``backend``'s runtime version from the report's ``machine`` (what was present).

    CPU backends also keep the CPU's 8-bit arithmetic class (:mod:`uopsl.runtime.cpuinfo`): ``auto``
    trusts a CPU INT8 PASS only on a CPU of the same class.
    """
    keys = ("arch", _BACKEND_RUNTIME.get(backend, ""), *(("cpu_int8",) if backend in CPU_BACKENDS else ()))
    return {k: machine[k] for k in keys if machine.get(k)}


def parity_records(candidates: Sequence[Mapping[str, Any]], report: Mapping[str, Any],
                   report_path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Each candidate's verdict as the manifest records it, by file and backend, from the run's ``report``.

    The record holds what :func:`uopsl.runtime.bundle.parity_status` needs to
    decide whether to trust it: every gate with its value, the number of
    images, the data and the reference (``reference``: its description;
    ``reference_kind``/``reference_source``: PyTorch, the bundle's FP32 ONNX
    file or unknown, which :mod:`uopsl.export.onnx_reference` reads to enforce
    its chain of trust; a record without them predates ONNX references, and
    counts as PyTorch only with a reference fingerprint). An ONNX reference's
    records add ``reference_file`` and ``reference_sha256``, which ``auto``
    re-checks (:func:`uopsl.runtime.bundle.parity_status`). ``machine``: the
    CPU architecture and the version of the runtime that ran the backend, so a
    device can tell whether its ONNX Runtime is the one that proved its
    reference.
    """
    data, reference = report["data"], report["reference"]
    machine = report.get("machine")
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for c in candidates:
        extra: dict[str, Any] = {}
        if reference.get("file") and reference.get("sha256"):
            extra.update(reference_file=reference["file"], reference_sha256=reference["sha256"])
        if machine is not None:
            extra["machine"] = backend_machine(c["backend"], machine)
        records.setdefault(c["file"], {})[c["backend"]] = jsonable({
            "passed": bool(c["passed"]), "verdict": c["verdict"], "reasons": list(c.get("reasons", []))[:6],
            "gates": c.get("gates") or report["gates"], "n_images": data["n_used"], "truth": str(data["truth"]),
            # The patients behind the images, where known: the bounds and intervals count them (a review).
            **({"n_patients": int(data["patients"]["n_patients"])}
               if (data.get("patients") or {}).get("known") else {}),
            # Only when not the default: a re-validation as before must leave the manifest byte for byte.
            **({"judged_on": report["judged_on"]} if report["judged_on"] != ON_ESTIMATES else {}),
            "data": {"spec": data["spec"], "image_ids_sha256": data["image_ids_sha256"],
                     "images_sha256": data["images_sha256"], "classes_with_truth": data["classes_with_truth"],
                     **({"n_dropped_unknown_labels": data["unknown_labels"]["n_dropped_images"]}
                        if (data.get("unknown_labels") or {}).get("n_dropped_images") else {}),
                     # byte-identical copies left out (n_images counts distinct photographs)
                     **({"n_dropped_duplicate_content": data["n_duplicate_content"]}
                        if data.get("n_duplicate_content") else {})},
            "reference": reference["describe"], "reference_fingerprint": reference["fingerprint"],
            "reference_kind": reference["kind"], "reference_source": reference["source"],
            **extra,
            # The git commit stays in parity.json: a re-validation with the same result must leave the manifest
            # (the bundle's identity) as it is, whatever was committed meanwhile.
            "bootstrap_seed": report["bootstrap"]["seed"], "created": report["created"],
            "toolkit_version": __version__, "report": str(report_path),
        })
    return records


def report_location(root: Path, report_path: Path) -> str:
    """Where a manifest record says its ``parity.json`` is: relative to the bundle folder ``root`` and with "/"
    separators, so that it stays right wherever the command ran (it was relative to the working folder: from
    anywhere else, or after a copy of both, it pointed nowhere) and names no user's home; absolute where no
    relative path exists (another drive on Windows)."""
    report = Path(report_path).resolve()
    try:
        # In "/" form on every system: a bundle copied from a Windows PC to a device must still resolve it.
        return Path(os.path.relpath(report, Path(root).resolve())).as_posix()
    except ValueError:
        return str(report)


def recorded_verdict(entry: FileEntry | None, backend: str) -> Mapping[str, Any] | None:
    """The verdict the manifest holds for ``entry``'s current content on ``backend`` (None: none)."""
    if entry is None:
        return None
    rec = entry.info.get(PARITY_KEY)
    if not isinstance(rec, dict) or rec.get("sha256") != entry.sha256 or not isinstance(rec.get("backends"), dict):
        return None
    old = rec["backends"].get(backend)
    return old if isinstance(old, dict) else None


def kept_reason(manifest: Manifest, c: Mapping[str, Any], new: Mapping[str, Any], ref_class: str,
                ref_kind: str) -> tuple[Mapping[str, Any], str, bool] | None:
    """(the recorded verdict, why it stays, whether it was judged against PyTorch and ``new`` was not) when
    record_parity will keep it instead of ``new``; None when ``new`` is written.

    The rules are bundle_writer's own (:func:`kept_pytorch_verdict`, :func:`kept_verdict`), asked before
    writing so the report can say what the manifest will hold.
    """
    try:
        entry = manifest.file(c["file"])
    except (BundleError, KeyError):
        return None
    old = kept_pytorch_verdict(entry, c["backend"], ref_class)
    if old is not None:
        return old, (f"{old.get('verdict', '?')} against PyTorch ({old.get('created', '?')}): the manifest keeps the "
                     f"verdict judged against PyTorch (a verdict against the {ref_kind} reference never replaces "
                     "it)"), True
    prev = recorded_verdict(entry, c["backend"])
    why = kept_verdict(prev, new)
    return (prev, f"the manifest keeps {why}", False) if prev is not None and why is not None else None


def kept_release_pass(manifest: Manifest, c: Mapping[str, Any], n_images: int, n_patients: int | None = None
                      ) -> tuple[Mapping[str, Any], str, bool] | None:
    """(the recorded PASS, why it stays, False) when ``c``'s FAIL comes from a run on fewer than
    :data:`~uopsl.runtime.bundle.MIN_PARITY_IMAGES` images and the manifest holds, for the same file content
    and backend, a PASS from a run that could vouch for the file (enough images, the default gates or
    stricter); None when the FAIL is recorded.

    Why: a small run records only a FAIL, so that it never turns a file into a pass; but its FAIL on a few images
    is weak evidence (one flip on 30 images is 3 %), and replacing a release-sized PASS with it took ``auto`` off
    the file and broke ``--onnx-reference`` (a review: 30 threshold-choosing images against 200 fresh ones). A
    FAIL not judged by the gates (non-finite outputs, probabilities outside [0, 1]) is a defect whatever the
    number of images: it is recorded. The same holds for a FAIL on images of fewer than
    :data:`~uopsl.runtime.bundle.MIN_PARITY_PATIENTS` patients (``n_patients``, where known).
    """
    small = parity_run_problem(dict(PARITY_GATE_DEFAULTS), n_images, n_patients)  # the data's size alone
    if c.get("verdict") != FAIL or "checks" not in c or not small:
        return None
    try:
        old = recorded_verdict(manifest.file(c["file"]), c["backend"])
    except (BundleError, KeyError):
        return None
    if old is None or old.get("verdict") != PASS or parity_run_problem(old.get("gates") or {}, old.get("n_images"),
                                                                       old.get("n_patients")):
        return None
    data = old.get("data")
    spec = data.get("spec", "unrecorded data") if isinstance(data, dict) else "unrecorded data"
    return old, (f"the manifest keeps its PASS on {old.get('n_images')} images of {spec} "
                 f"({old.get('created', '?')}): a FAIL from a run too small to vouch for the file ({small}) does "
                 f"not replace a PASS from a run that can; validate on at least {MIN_PARITY_IMAGES} images"
                 + (f" of {MIN_PARITY_PATIENTS} patients" if n_patients is not None else "") + " to settle it"), False


def kept_note(kept: Sequence[Kept]) -> str:
    """One sentence listing the verdicts this run did not record, the one the manifest kept for each and why."""
    return "not recorded in the manifest: " + "; ".join(f"{c['name']} {c['verdict']} here, {why}"
                                                        for c, _old, why, _torch in kept)


@dataclass(frozen=True)
class RecordPlan:
    """What the manifest is to hold from a run, and what the report says about the rest.

    ``to_record``: the candidates whose records are written (after the reports: a read-only bundle costs the
    record, not the run); ``kept``: verdicts the manifest keeps instead of this run's; ``passed_over``:
    verdicts never offered to it; ``error``: why the manifest could not be written (None: it could, or
    nothing was to be written); ``withheld``: why nothing of this run was offered to the manifest (None: the
    rules above decided).
    """

    enabled: bool
    run_problem: str | None
    note: str | None = None
    to_record: tuple[Mapping[str, Any], ...] = ()
    kept: tuple[Kept, ...] = ()
    passed_over: tuple[PassedOver, ...] = ()
    records: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    error: str | None = None
    withheld: str | None = None

    def section(self) -> dict[str, Any]:
        """``parity.json``'s ``record``: what the manifest holds from this run (``recorded``: written, or already
        there word for word), the verdicts it kept instead of this run's (``kept``, with why), and the verdicts
        of this run never offered to it (``not_recorded``: a weak run's pass, a candidate that could not run)."""
        return jsonable({
            "enabled": self.enabled, "run_problem": self.run_problem, "note": self.note,
            "recorded": [c["name"] for c in self.to_record],
            "recorded_verdicts": [{"name": c["name"], "verdict": c["verdict"]} for c in self.to_record],
            "kept": [{"name": c["name"], "verdict": c["verdict"], "kept_verdict": old.get("verdict"),
                      "kept_created": old.get("created"), "why": why} for c, old, why, _torch in self.kept],
            # the kept verdicts judged against PyTorch (a device's ONNX reference never replaces them)
            "kept_pytorch": [{"name": c["name"], "verdict": c["verdict"], "kept_verdict": old.get("verdict"),
                              "kept_created": old.get("created")} for c, old, _why, torch in self.kept if torch],
            "not_recorded": [{"name": c["name"], "verdict": c["verdict"], "why": why} for c, why in self.passed_over],
            **({"error": self.error} if self.error else {}),
            **({"withheld": self.withheld} if self.withheld else {})})


def plan_records(root: Path, report: Mapping[str, Any], report_path: Path, *, enabled: bool, run_failed: bool,
                 run_problem: str | None, ref_class: str, ref_kind: str, withhold: str | None = None,
                 withhold_pass: Mapping[str, str] | None = None) -> RecordPlan:
    """Which of ``report``'s verdicts go into the manifest of the bundle at ``root``, and why the others do not.

    ``run_failed``: the reference's outputs could not be used (nothing is recorded); ``run_problem``: why a
    run records only a FAIL (:func:`uopsl.runtime.bundle.parity_run_problem`; None: a sound run);
    ``withhold``: why no verdict of this run may be recorded, a FAIL neither (e.g. its images made the
    checkpoint: the thresholds sit on the validation images' scores, so noise flips their calls). A FAIL from a
    run on fewer than :data:`~uopsl.runtime.bundle.MIN_PARITY_IMAGES` images does not replace a PASS from a
    run that could vouch for the file (:func:`kept_release_pass`). ``withhold_pass``: file -> why its PASS or
    INCOMPLETE is not recorded while its FAIL is (it was judged on its own calibration images:
    :mod:`uopsl.export.calibration_images`).
    """
    if not enabled:
        return RecordPlan(enabled, run_problem)
    if run_failed:
        note = "nothing recorded in the manifest: the reference's outputs could not be used"
        log.warning(note)
        return RecordPlan(enabled, run_problem, note)
    if withhold:
        note = f"nothing recorded in the manifest: {withhold}"
        log.warning(note)
        return RecordPlan(enabled, run_problem, note, passed_over=tuple((c, withhold) for c in report["candidates"]),
                          withheld=withhold)
    # A FAIL is recorded (it keeps `auto` off the file; kept_release_pass below names the exception). A PASS or
    # INCOMPLETE only from a run that parity_status would trust: a weaker run neither turns an earlier FAIL into a
    # pass nor erases an earlier complete verdict because its few images could not evaluate every gate.
    # A candidate that could not be loaded or run here (GPU out of memory, missing CUDA libraries)
    # was never judged: recording its FAIL would erase a valid earlier verdict on that file.
    unjudged = [c for c in report["candidates"] if c.get("judged") is False]
    judged = [c for c in report["candidates"] if c.get("judged") is not False]
    withheld = [c for c in judged if c["verdict"] != FAIL and run_problem]
    calibrated = [c for c in judged if c["verdict"] != FAIL and c not in withheld
                  and (withhold_pass or {}).get(c["file"])]
    to_record = [c for c in judged if c not in withheld and c not in calibrated]
    passed_over = ([(c, f"{run_problem}: a run like this records only a FAIL") for c in withheld]
                   + [(c, (withhold_pass or {})[c["file"]]) for c in calibrated]
                   + [(c, "could not be run here, so not judged") for c in unjudged])
    records = parity_records(to_record, report, Path(report_location(root, report_path)))
    # What record_parity will keep instead, by its own rules (bundle_writer): a verdict against anything but
    # PyTorch (a device's ONNX reference) never replaces one against PyTorch for the same content and
    # backend, an INCOMPLETE run does not replace a complete verdict, a PASS on other data does not clear
    # a FAIL. The manifest as the file holds it: where signatures are required, the run's manifest is the
    # signed view, which may not show a record written since (record_parity reads the file too).
    on_disk = read_manifest(root)
    kept: list[Kept] = []
    n_images = int(report["data"]["n_used"])
    known = report["data"].get("patients") or {}
    n_patients = int(known["n_patients"]) if known.get("known") else None
    for c in list(to_record):
        keeps = (kept_reason(on_disk, c, records[c["file"]][c["backend"]], ref_class, ref_kind)
                 or kept_release_pass(on_disk, c, n_images, n_patients))
        if keeps is not None:
            kept.append((c, *keeps))
            to_record.remove(c)
    notes = []
    if withheld:
        notes.append(f"not recorded in the manifest ({run_problem}): "
                     f"{', '.join(c['name'] + ' ' + c['verdict'] for c in withheld)}; a run like this records "
                     "only a FAIL, never a pass, and `auto` keeps the earlier record")
    if calibrated:
        notes.append("not recorded in the manifest: " + "; ".join(
            f"{c['name']} {c['verdict']} ({(withhold_pass or {})[c['file']]})" for c in calibrated)
            + "; a FAIL there would be recorded, and `auto` keeps the earlier record")
    if unjudged:
        notes.append("not recorded (could not be run here, so not judged; the earlier record stays): "
                     + ", ".join(f"{c['name']} ({c['error']})" for c in unjudged))
    if notes:
        log.warning("%s", "; ".join(notes))
    if kept:
        note = kept_note(kept)
        # A warning when this run disagrees with the kept verdict: worth a look, though the latter stands.
        differ = any(str(c["verdict"]) != str(old.get("verdict")) for c, old, _why, _torch in kept)
        (log.warning if differ else log.info)("%s", note)
        notes.insert(0, note)
    return RecordPlan(enabled, run_problem, "; ".join(notes) or None, tuple(to_record), tuple(kept),
                      tuple(passed_over), records)


def what_was_written(written: Manifest | None, candidates: Sequence[Mapping[str, Any]],
                     records: Mapping[str, Mapping[str, Mapping[str, Any]]]
                     ) -> tuple[list[Mapping[str, Any]], list[Kept]]:
    """(candidates whose record the manifest now holds, those it does not: with what it holds and why).

    Read back from the manifest record_parity returned, so the report never lists as recorded a verdict that
    was not written (a file changed while it was validated, a rule checked only there).
    """
    if written is None:
        return [], []
    done: list[Mapping[str, Any]] = []
    late: list[Kept] = []
    for c in candidates:
        new = records[c["file"]][c["backend"]]
        try:
            held = recorded_verdict(written.file(c["file"]), c["backend"])
        except (BundleError, KeyError):
            held = None
        same = held is not None and ({k: v for k, v in held.items() if k != "created"}
                                     == {k: v for k, v in new.items() if k != "created"})
        if same:
            done.append(c)
        else:
            late.append((c, held or {}, "the manifest did not take it (see the log: e.g. the file changed while "
                                        "it was validated)", False))
    return done, late


def record_verdicts(root: Path, plan: RecordPlan, validated: Mapping[str, str], out_dir: Path) -> RecordPlan:
    """Write ``plan``'s records into the manifest; the plan as it turned out (``plan`` itself when it all went in).

    ``validated``: each file's sha256 as validated (record_parity refuses a record for a file changed since).
    """
    if not plan.to_record:
        return plan
    error = None
    written: Manifest | None = None
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for c in plan.to_record:
        chosen.setdefault(c["file"], {})[c["backend"]] = dict(plan.records[c["file"]][c["backend"]])
    try:
        written = record_parity(root, chosen, validated)
    except OSError as exc:
        error = str(exc)
        log.warning("the parity verdicts could not be recorded in %s (%s); the reports are in %s",
                    root / "manifest.json", exc, out_dir)
    actual, late = what_was_written(written, plan.to_record, plan.records)
    if written is not None and actual:
        log.info("%s holds these parity verdicts: %s", root / "manifest.json",
                 ", ".join(f"{c['file']} on {c['backend']} {c['verdict']}" for c in actual))
    if error is None and not late:
        return plan
    # The manifest did not take what the report said it would: the reports say what it holds.
    note = plan.note
    if late:
        note = "; ".join(x for x in (note, kept_note(late)) if x)
    if error is not None:
        note = "; ".join(x for x in (note, f"nothing recorded: the manifest could not be written ({error})") if x)
    passed_over = plan.passed_over + (tuple((c, f"the manifest could not be written ({error})") for c in plan.to_record)
                                      if error is not None else ())
    return replace(plan, note=note, to_record=tuple(actual) if error is None else (), kept=plan.kept + tuple(late),
                   passed_over=passed_over, error=error)
