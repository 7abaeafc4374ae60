"""The deployment bundle: a folder a device copies as a whole.

Layout (DESIGN.md section 3)::

    manifest.json        this module's :class:`Manifest`
    model.onnx           FP32 graph: uint8 NHWC RGB in; probs, logits, site_maps out
    model.int8.onnx      optional INT8 QDQ graph(s) (CPU u8 and/or TensorRT s8 variants)
    calibration.json     optional: the calibration table the INT8 files came from
    *.engine             optional TensorRT engines (length-prefixed JSON header + plan)
    class_bank.npy       the class prototypes the head was exported with (K x d)

The manifest is the contract between export (which writes it) and the runtime
(which reads it); both sides use these dataclasses, so a field cannot be
written under one name and read under another. Verification (sha256 of every
file) lives here so a device can check a bundle without the training stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np

from uopsl.runtime.cpuinfo import CPU_BACKENDS, int8_cpu_class, same_int8_arithmetic
from uopsl.runtime.errors import BundleError, command_word
from uopsl.runtime.fsio import (Stage, json_default, load_json_strict, sha256_bytes, sha256_file, staging,
                               sync_folder)
from uopsl.runtime.image_suffixes import IMAGE_SUFFIXES, image_suffix
from uopsl.runtime.intended_use import IntendedUse
from uopsl.runtime.model_folders import folder_kind
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.version import __version__

# 2: the preprocessing block may carry the JPEG decode rule (decode_min_ratio,
# decode_min_side). A manifest is written with the lowest version that can hold it,
# so a bundle made before the rule existed stays version 1 when it is rewritten
# (a parity record, an engine added) and older runtimes keep reading it.
# 3: the manifest states the model's intended use (``intended_use``); a runtime
# that cannot show it must refuse the bundle rather than screen without it.
FORMAT_VERSION = 3

log = logging.getLogger(__name__)

#: Where a manifest keeps the display names a class file gave (``{class: display}``), shown by the report.
CLASS_DISPLAY_NOTE = "class_display"
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
_REEXPORT = "re-export the bundle or restore the original file"
#: The lock writers hold while they rewrite the manifest (``uopsl.export.bundle_writer.manifest_update``).
MANIFEST_LOCK = ".manifest.lock"

HeadType = Literal["sigmoid", "softmax"]
# any_referable: refer when any referable class reaches its own threshold
#   (multi-label heads; also fine for softmax with per-class thresholds).
# referable_sum: refer when the summed probability of the referable classes
#   reaches ``referral_threshold`` (softmax heads: P(referable disease)).
#: What export, the Screener, ``info`` and the report say of a bundle none of whose classes is referable (a
#: re-export whose class file keeps no trained referable class, or whose classes' thresholds were chosen on no
#: data): it screened and called every gradable photograph "no referable finding", which read as a result.
REFERS_NO_ONE = ("no class of this bundle is referable, so it refers no patient: its 'no referable finding' means "
                 "only that, not that a photograph was judged free of disease; give a class a threshold chosen on "
                 "labelled photographs and referable = true (uopsl export --classes FILE), or use a bundle that refers")
ReferralRule = Literal["any_referable", "referable_sum"]
FileKind = Literal["onnx", "engine", "calibration", "class_bank", "other"]
# fp32 | fp16 | int8-qdq-u8 (CPU: u8 activations, s8 weights) |
# int8-qdq-s8 (TensorRT: symmetric s8, zero point 0) | int8 (engine)
Precision = Literal["fp32", "fp16", "int8-qdq-u8", "int8-qdq-s8", "int8", "none"]
FILE_KINDS: tuple[str, ...] = get_args(FileKind)
FILE_PRECISIONS: tuple[str, ...] = get_args(Precision)

INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "logits", "site_maps")
#: Largest manifest.json read: a real one is a few hundred kB (parity records included).
MAX_MANIFEST_BYTES = 16 << 20


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _is_flag(x: object) -> bool:
    return isinstance(x, (bool, np.bool_))


def probability(value: object, what: str) -> float:
    """``value`` as a float when it is a finite probability in [0, 1], else :class:`BundleError`.

    An operating threshold that is NaN, infinite or missing makes its class
    never positive (``p >= nan`` is false): a referable disease would silently
    never be referred. So a threshold is refused wherever one is read.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)) or not 0.0 <= float(value) <= 1.0:
        raise BundleError(f"{what} must be a probability between 0 and 1, got {value!r}")  # (NaN fails the test)
    return float(value)


@dataclass(frozen=True)
class ClassSpec:
    """One output class: name, the descriptions its prototype came from, its operating point.

    Checked when made, from a manifest or by the exporter alike: a non-empty
    name, a finite threshold in [0, 1], true/false flags (a string "false" is
    not false).
    """

    name: str
    descriptions: tuple[str, ...] = ()
    threshold: float = 0.5
    referable: bool = False
    seen_in_training: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise BundleError(f"a class name must be a non-empty string, got {self.name!r}")
        if isinstance(self.descriptions, str):
            # tuple("a sentence") would be its characters: one description given bare, not in a list
            raise BundleError(f"class {self.name!r}: descriptions must be a list of strings, got one string "
                              f"{self.descriptions!r}; put it in a list")
        if not isinstance(self.descriptions, (tuple, list)) or not all(isinstance(t, str) for t in self.descriptions):
            raise BundleError(f"class {self.name!r}: descriptions must be a list of strings, got {self.descriptions!r}")
        object.__setattr__(self, "descriptions", tuple(self.descriptions))
        object.__setattr__(self, "threshold", probability(self.threshold, f"class {self.name!r}: threshold"))
        for flag in ("referable", "seen_in_training"):
            value = getattr(self, flag)
            if not _is_flag(value):
                raise BundleError(f"class {self.name!r}: {flag} must be true or false, got {value!r}")
            object.__setattr__(self, flag, bool(value))


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle with what it is and its checksum."""

    path: str
    kind: FileKind
    precision: Precision = "none"
    sha256: str = ""
    size: int = 0
    # Free-form facts about the file (e.g. TensorRT version of an engine,
    # excluded nodes of an INT8 graph). Kept JSON-serialisable.
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = bundle_path_problem(self.path)
        if problem:
            raise BundleError(f"file entry {self.path!r}: {problem}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise BundleError(f"file entry {self.path!r}: size must be a whole number of bytes >= 0, got {self.size!r}")
        if not isinstance(self.sha256, str):  # (any other string simply fails verification)
            raise BundleError(f"file entry {self.path!r}: sha256 must be a string, got {self.sha256!r}")
        if not isinstance(self.info, dict):
            raise BundleError(f"file entry {self.path!r}: info must be an object, got {type(self.info).__name__}")
        # A kind or precision outside the known sets would leave the file silently never chosen (or an INT8
        # file judged as a float one); a newer kind comes with a newer format_version.
        if self.kind not in FILE_KINDS:
            raise BundleError(f"file entry {self.path!r}: kind must be one of {', '.join(FILE_KINDS)}, "
                              f"got {self.kind!r}")
        if self.precision not in FILE_PRECISIONS:
            raise BundleError(f"file entry {self.path!r}: precision must be one of {', '.join(FILE_PRECISIONS)}, "
                              f"got {self.precision!r}")


def bundle_path_problem(name: object) -> str | None:
    """Why ``name`` cannot name a file inside a bundle folder, or None when it can.

    Only plain relative names with forward slashes: no absolute or drive
    paths, no ``..``, no backslash or colon (on Windows ``\\x`` and ``C:x``
    are not absolute, yet lead out of the folder).
    """
    if not isinstance(name, str) or not name:
        return f"a file name must be a non-empty string, got {name!r}"
    if "\\" in name or ":" in name or "\x00" in name:
        return "a file name may not hold a backslash, a colon or a NUL character"
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts or "." in parts:
        return "path leaves the bundle folder (only plain relative names are allowed)"
    return None


PARITY_KEY = "parity"  # FileEntry.info key written by `uopsl validate`

#: The gates ``uopsl validate`` applies by default (``uopsl.export.parity_metrics.ParityGates`` has the same
#: defaults; a test keeps the two equal). They live here because the runtime must tell, without the export
#: stack, whether a recorded pass was obtained under these gates or stricter ones: a run with looser gates
#: proves less, and must not let ``auto`` use a reduced-precision file. ``None``: not gated by default.
PARITY_GATE_DEFAULTS: Mapping[str, float | None] = MappingProxyType({
    "max_flip_rate": 0.005,
    "max_class_flip_rate": 0.005,
    "max_finding_change_rate": 0.01,
    "max_auc_drop": 0.005,
    "max_sensitivity_drop": 0.01,
    "max_prob_diff": None,
    "min_top1_agreement": 0.99,
})

#: Fewest images a passing run must have covered for ``auto`` to trust it. Why 100: with no change at all in
#: n images, the exact one-sided 95 % upper bound on the true change rate is 1 - 0.05**(1/n), about 3/n. Below
#: 100 images that bound is above 3 %, six times the 0.5 % flip gate, and the 99 % top-1 gate cannot tolerate
#: a single change, so such a run (``--limit 4``, a smoke test) says little beyond "it runs". 100 is a floor,
#: not a proof: showing a 0.5 % rate with 95 % confidence takes 598 images without a change, which the
#: report prints next to its verdict. The demo's 120-image test set clears the floor.
MIN_PARITY_IMAGES = 100

#: Fewest patients a passing run's images must come from, where the data names them (``patient`` column; TVHL).
#: Why: the images of one patient are correlated, and the patient-level figures of the report (bounds over
#: patients, the bootstrap that resamples patients, Wilson intervals on the design-effect sample size) are
#: large-sample methods that need some 30 clusters to mean what they say; 150 images of 5 patients passed the
#: image floor with a 95 % bound over patients of 45 % (a review). Data whose patients are unknown are judged by
#: the image floor alone.
MIN_PARITY_PATIENTS = 30

#: The manifest notes in which ``uopsl export`` records the sha256 of the checkpoint's weights
#: (``uopsl.train.checkpoint.checkpoint_digest``) and, for a ``uopsl qat`` model, that of the checkpoint it was
#: fine-tuned from. Defined here, in the layer every other one reads, so that reading them needs no torch.
CHECKPOINT_DIGEST_NOTE = "checkpoint_weights_sha256"
TEACHER_DIGEST_NOTE = "checkpoint_teacher_weights_sha256"

#: What a per-backend record must hold to be judged; a record without them predates these checks.
PARITY_RECORD_FIELDS = ("passed", "gates", "n_images", "data", "reference")

#: What a verdict was judged against (a record's ``reference_kind``): the PyTorch checkpoint (``uopsl validate
#: --checkpoint``), the bundle's own FP32 ONNX file (``--onnx-reference``, on a device), or anything else (a
#: reference that declared no kind, e.g. a runtime backend passed to ``validate_bundle``).
REFERENCE_PYTORCH = "pytorch"
REFERENCE_ONNX = "onnx"
REFERENCE_UNKNOWN = "unknown"
#: The backend an ONNX reference runs on, and on which its file must carry a PyTorch-referenced PASS.
ONNX_REFERENCE_BACKEND = "ort-cpu"
#: Issue 4's FP32 tolerance (max |prob diff| against PyTorch): the FP32 file's ``ort-cpu`` PASS is judged by it
#: as well as by the decision gates, and a record that did not hold it cannot make that file a reference.
REFERENCE_MAX_PROB_DIFF = 1e-4


def parity_gates_problem(gates: Mapping[str, Any]) -> str | None:
    """Why ``gates`` are looser than :data:`PARITY_GATE_DEFAULTS` (None: the defaults or stricter).

    ``max_*`` gates are stricter when smaller, ``min_*`` gates when larger; a
    gate that is off by default (``None``) may take any value, since gating it
    only adds a condition. A missing or non-numeric gate counts as looser.
    """
    looser = []
    for name, default in PARITY_GATE_DEFAULTS.items():
        value = gates.get(name)
        if default is None:
            if value is not None and not _is_number(value):
                looser.append(f"{name}={value!r}")
            continue
        if not isinstance(value, (int, float)) or not _is_number(value):
            looser.append(f"{name}={value!r} (expected a number)")
        elif (name.startswith("min_") and float(value) < default) or (
                not name.startswith("min_") and float(value) > default):
            looser.append(f"{name}={float(value):g} (default {default:g})")
    return ("gates looser than the defaults: " + ", ".join(looser)) if looser else None


def parity_run_problem(gates: Mapping[str, Any], n_images: Any, n_patients: Any = None) -> str | None:
    """Why a run with ``gates`` on ``n_images`` images of ``n_patients`` patients (None: not known) cannot vouch
    for a file (None: it can).

    Shared by :func:`parity_status` (reading a record) and ``uopsl validate``
    (deciding whether a pass is recorded at all), so both apply one rule.
    """
    problems = []
    why = parity_gates_problem(gates)
    if why:
        problems.append(why)
    if not _is_number(n_images) or int(n_images) < MIN_PARITY_IMAGES:
        problems.append(f"only {n_images} images (a pass counts from {MIN_PARITY_IMAGES}; validate on more images)")
    if n_patients is not None and (not _is_number(n_patients) or int(n_patients) < MIN_PARITY_PATIENTS):
        problems.append(f"images of only {n_patients} patients (a pass counts from {MIN_PARITY_PATIENTS} patients; "
                        "validate on photographs of more patients)")
    return "; ".join(problems) if problems else None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def parity_reference_kind(r: Mapping[str, Any]) -> str:
    """What a per-backend parity record was judged against: :data:`REFERENCE_PYTORCH`, ``_ONNX`` or ``_UNKNOWN``.

    A record names its kind (``reference_kind``) and source (``reference_source``,
    e.g. ``pytorch:<fingerprint>``, ``onnx:model.onnx@<sha256 prefix> on ort-cpu``);
    a PyTorch kind with a source of another kind is not believed. A record from
    before kinds existed names neither: it counts as PyTorch only when it keeps
    the reference's fingerprint (a checkpoint reference always has one; a
    runtime backend used as the reference has none).
    """
    kind = r.get("reference_kind")
    source = str(r.get("reference_source") or "")
    if kind == REFERENCE_ONNX or source.startswith(f"{REFERENCE_ONNX}:"):
        return REFERENCE_ONNX
    if kind == REFERENCE_PYTORCH:
        ok = source in ("", REFERENCE_PYTORCH) or source.startswith(f"{REFERENCE_PYTORCH}:")
        return REFERENCE_PYTORCH if ok else REFERENCE_UNKNOWN
    if kind is None and "reference_source" not in r:
        return REFERENCE_PYTORCH if str(r.get("reference_fingerprint") or "").strip() else REFERENCE_UNKNOWN
    return REFERENCE_UNKNOWN


def pytorch_pass_problem(entry: FileEntry, backend: str = ONNX_REFERENCE_BACKEND) -> str | None:
    """Why ``entry`` carries no trusted PASS on ``backend`` judged against the PyTorch checkpoint (None: it does).

    What makes a file a valid ONNX reference (``uopsl validate --onnx-reference``)
    and keeps the verdicts judged against it trusted.
    """
    rec = entry.info.get(PARITY_KEY)
    runs = rec.get("backends") if isinstance(rec, dict) else None
    run = runs.get(backend) if isinstance(runs, dict) else None
    if isinstance(run, dict):  # the kind first: a record not judged against PyTorch cannot prove anything here
        kind = parity_reference_kind(run)
        source = str(run.get("reference_source") or run.get("reference_kind") or "")
        verdict = str(run.get("verdict") or ("PASS" if run.get("passed") is True else "FAIL"))
        if kind == REFERENCE_ONNX:
            return (f"{entry.path}'s {backend} {verdict} was itself judged against an ONNX reference ({source}), "
                    "not against the PyTorch checkpoint")
        if kind != REFERENCE_PYTORCH:
            declared = run.get("reference_kind")
            if declared == REFERENCE_PYTORCH:
                named = f"a PyTorch reference whose source {source!r} is not a checkpoint's (pytorch:<fingerprint>)"
            elif declared:
                named = f"a reference of kind {declared!r}" + (f" ({source})" if source != declared else "")
            else:
                named = "no reference kind and no reference fingerprint (a record from before reference kinds)"
            return (f"{entry.path}'s {backend} {verdict} names {named}, not the PyTorch checkpoint (a runtime "
                    "backend used as the reference proves nothing about the checkpoint)")
    ok, why = parity_status(entry, backend)
    if not ok:
        return why
    limit = run.get("gates", {}).get("max_prob_diff") if isinstance(run, dict) else None
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit <= REFERENCE_MAX_PROB_DIFF:
        return (f"{entry.path}'s {backend} PASS did not also hold max |prob diff| <= {REFERENCE_MAX_PROB_DIFF:g} "
                f"against PyTorch (its gates: max_prob_diff={limit!r}; recorded by an older uopsl), which a "
                "reference must")
    return None


def _onnx_chain_problem(path: str, backend: str, r: Mapping[str, Any], manifest: Manifest | None) -> str | None:
    """Why a PASS judged against the bundle's FP32 ONNX file is no longer backed by that file's PyTorch PASS."""
    what = f"{path}'s PASS on {backend} was judged against an ONNX reference"
    redo = (f"validate the reference against the PyTorch checkpoint on the workstation (`uopsl validate "
            f"--checkpoint`), then {path} again on the device (`uopsl validate --onnx-reference --backends {backend}`)")
    ref_file, ref_sha = r.get("reference_file"), r.get("reference_sha256")
    if not isinstance(ref_file, str) or not ref_file or not isinstance(ref_sha, str) or not ref_sha:
        return (f"{what} whose file and sha256 the record does not name (written by an earlier uopsl), so the "
                f"chain to PyTorch cannot be checked; re-run `uopsl validate --onnx-reference --backends {backend}` "
                "on the device")
    if manifest is None:
        return (f"{what} ({ref_file}); it counts only where the bundle's manifest is at hand to check that "
                f"{ref_file} still carries its PyTorch PASS (pass manifest= to parity_status)")
    try:
        ref = manifest.file(ref_file)
    except BundleError:
        return f"{what} ({ref_file}), which the bundle no longer lists; {redo}"
    if ref.sha256 != ref_sha:
        return (f"{what} ({ref_file} with sha256 {ref_sha[:12]}...), which has changed since (now "
                f"{ref.sha256[:12] or '?'}...); {redo}")
    why = pytorch_pass_problem(ref, ONNX_REFERENCE_BACKEND)
    if why is not None:
        return f"{what} ({ref_file}), and that file no longer carries its PyTorch PASS: {why}; {redo}"
    return None


def _with_implied_finding_gate(gates: dict[str, Any], manifest: Manifest | None) -> dict[str, Any]:
    """``gates`` of a record written before ``max_finding_change_rate`` existed, with the limit its class gate
    already implies: an image with a changed finding changed at least one referable class's call, so their
    share is at most the number of referable classes times the worst class's. With two referable classes and
    the 0.5 % class gate that is the 1 % finding gate itself, and such records keep counting; with more, the
    implied limit is looser and the record is treated as lacking the gate (validate again)."""
    key = "max_finding_change_rate"
    per_class = gates.get("max_class_flip_rate")
    if key in gates or manifest is None or not isinstance(per_class, (int, float)) or not _is_number(per_class):
        return gates
    implied = float(per_class) * max(1, int(manifest.referable_mask.sum()))
    limit = PARITY_GATE_DEFAULTS[key]
    return {**gates, key: implied} if limit is not None and implied <= limit else gates


#: What opens a FAIL's reasons that are not failures but gates it did not evaluate in full (``uopsl validate``
#: writes them after the exceeded gates): a signer and ``uopsl-screen info`` read "auc_drop -0.02143 <= 0.005 but
#: not evaluated for ..." among the reasons a file failed (a review). A failure's words leave them out.
INCOMPLETE_MARK = "also incomplete: "


def _record_problem(path: str, backend: str, r: Any, manifest: Manifest | None = None,
                    int8: bool = False) -> str | None:
    """Why one backend's record does not show that ``path`` passed there (None: it does).

    A PASS judged against an ONNX reference also needs that reference file, as
    ``manifest`` lists it now, to still carry its PyTorch PASS on ``ort-cpu``.
    ``int8``: the file computes in INT8; on a CPU backend its PASS then holds
    only on a CPU of the class it was earned on (:mod:`uopsl.runtime.cpuinfo`).
    """
    if not isinstance(r, dict):
        return f"{path}'s parity record on {backend} is unreadable (re-run `uopsl validate --backends {backend}`)"
    if r.get("passed") is not True or r.get("verdict", "PASS") != "PASS":
        incomplete = r.get("verdict") == "INCOMPLETE"
        reasons = [str(x) for x in (r.get("reasons") or []) if incomplete or not str(x).startswith(INCOMPLETE_MARK)]
        why = "; ".join(reasons[:2])
        word = "was incomplete" if incomplete else "failed"
        return f"{path} {word} parity validation on {backend}" + (f" ({why})" if why else "")
    missing = [k for k in PARITY_RECORD_FIELDS if k not in r]
    gates = r.get("gates")
    if isinstance(gates, dict):
        gates = _with_implied_finding_gate(gates, manifest)
        missing += [f"gate {k}" for k in PARITY_GATE_DEFAULTS if k not in gates]
    if missing:
        return (f"{path}'s parity record on {backend} was written by an older uopsl (it lacks "
                f"{', '.join(missing)}); re-run `uopsl validate --backends {backend}`")
    weak = parity_run_problem(gates if isinstance(gates, dict) else {}, r.get("n_images"), r.get("n_patients"))
    if weak:
        return f"{path} passed on {backend} under a run too weak to rely on: {weak}"
    recorded = recorded_cpu_int8(r)
    if int8 and backend in CPU_BACKENDS and recorded is None:
        # As any other field a record lacks: written before uopsl kept the CPU class, so the verdict may
        # come from a CPU with other 8-bit rounding.
        return (f"{path}'s INT8 parity record on {backend} does not say which kind of CPU it was judged on "
                f"(written by an older uopsl); validate it again here (`uopsl validate --backends {backend}`, "
                "or `--onnx-reference` without PyTorch)")
    if int8 and backend in CPU_BACKENDS and judged_on_other_cpu(r):
        return (f"{path} passed on {backend} on a {recorded} CPU, and this one is {int8_cpu_class()}: CPUs with "
                "and without VNNI (or ARM dot products) round 8-bit sums differently, so the verdict does not "
                "carry over; validate it on this kind of CPU (`uopsl validate --onnx-reference` needs no PyTorch)")
    if parity_reference_kind(r) == REFERENCE_ONNX:
        return _onnx_chain_problem(path, backend, r, manifest)
    return None


def recorded_cpu_int8(run: Mapping[str, Any]) -> str | None:
    """The kind of CPU a parity run's 8-bit arithmetic was judged on (``machine.cpu_int8``); None when the
    record does not say (written before uopsl kept it)."""
    machine = run.get("machine")
    recorded = machine.get("cpu_int8") if isinstance(machine, Mapping) else None
    return recorded if isinstance(recorded, str) else None


def judged_on_other_cpu(run: Mapping[str, Any]) -> bool:
    """Whether a CPU INT8 parity run was judged on a kind of CPU whose 8-bit sums round otherwise than this
    one's (with or without VNNI): its verdict, PASS or FAIL, says nothing here. False when not recorded."""
    recorded = recorded_cpu_int8(run)
    return recorded is not None and not same_int8_arithmetic(recorded, int8_cpu_class())


def parity_status(entry: FileEntry, backend: str | None = None, *,
                  manifest: Manifest | None = None) -> tuple[bool, str]:
    """Whether ``uopsl validate`` passed this very file on ``backend`` within the gates, and a reason either way.

    ``auto`` backend selection takes an INT8 file or an INT8/FP16 engine only when this is
    True for the backend that would run it: a reduced-precision model is used
    unasked only after it was shown, on that runtime, to keep the reference
    model's decisions. The record names the file's sha256, so a file replaced
    after validation does not inherit the verdict. A passing record counts
    only when its run used the default gates or stricter ones and covered at
    least :data:`MIN_PARITY_IMAGES` images (a smoke run or loosened gates
    prove less), and it must say which gates, data and reference it used; a
    record from before these fields existed is not trusted. ``backend=None``:
    every backend recorded for the file must have passed.

    A PASS judged against the bundle's FP32 ONNX file (``uopsl validate
    --onnx-reference`` on a device) counts only while that file, as
    ``manifest`` lists it, has the sha256 the record names and still carries
    a PyTorch-referenced PASS on ``ort-cpu`` (see :func:`pytorch_pass_problem`):
    the chain is checked each time, so a reference later failed or replaced
    takes its verdicts with it. Without ``manifest`` such a PASS is not trusted.
    """
    rec = entry.info.get(PARITY_KEY)
    if not isinstance(rec, dict) or not isinstance(rec.get("backends"), dict) or not rec["backends"]:
        return False, f"{entry.path} has no parity record (run `uopsl validate` on this bundle)"
    if rec.get("sha256") != entry.sha256:
        return False, f"{entry.path}'s parity record is for another file content (validate it again)"
    runs: dict[str, Any] = rec["backends"]
    if backend is not None:
        if not isinstance(runs.get(backend), dict):
            return False, (f"{entry.path} has no parity record on {backend} (validated on {', '.join(sorted(runs))}; "
                           f"run `uopsl validate --backends {backend}`)")
        runs = {backend: runs[backend]}
    for b, r in runs.items():
        why = _record_problem(entry.path, b, r, manifest, int8=entry.precision.startswith("int8"))
        if why:
            return False, why
    desc = ", ".join(f"{b} on {r.get('n_images', '?')} images ({r.get('created', '?')})" for b, r in runs.items())
    return True, f"{entry.path} passed parity validation: {desc}"


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to run and interpret the model."""

    classes: tuple[ClassSpec, ...]
    head: HeadType
    preprocess: PreprocessConfig
    files: tuple[FileEntry, ...]
    referral_rule: ReferralRule = "any_referable"
    referral_threshold: float = 0.5
    site_map_size: tuple[int, int] = (10, 10)
    opset: int = 17
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = OUTPUT_NAMES
    model_name: str = "uopsl"
    backbone: str = ""
    training_data_fingerprint: str = ""
    calibration_fingerprint: str = ""
    toolkit_version: str = __version__
    format_version: int = FORMAT_VERSION
    created: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    # What the maker says the model may be used for (runtime/intended_use.py); "unstated" for older bundles.
    intended_use: IntendedUse = field(default_factory=IntendedUse)
    # sha256 of the manifest's own content (canonical JSON without this field):
    # an edited threshold or class fails verification like a modified model file.
    content_sha256: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def display_name(self, name: str) -> str | None:
        """The display name the maker's class file gave class ``name`` (``notes["class_display"]``), or None."""
        shown = self.notes.get(CLASS_DISPLAY_NOTE)
        value = shown.get(name) if isinstance(shown, Mapping) else None
        return value if isinstance(value, str) and value.strip() else None

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([c.threshold for c in self.classes], np.float32)

    @property
    def referable_mask(self) -> np.ndarray:
        return np.array([c.referable for c in self.classes], bool)

    @property
    def refers_no_one(self) -> bool:
        """Whether no class is referable, so no photograph can be referred (:data:`REFERS_NO_ONE`)."""
        return not bool(self.referable_mask.any())

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise BundleError(f"the manifest lists no file {path!r}; it lists {[f.path for f in self.files]}")

    def files_of(self, kind: FileKind) -> tuple[FileEntry, ...]:
        return tuple(f for f in self.files if f.kind == kind)

    def decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the operating thresholds and referral rule to (N, K) probabilities.

        Returns ``(positive (N, K) bool, refer (N,) bool)``. This is the one
        place where a screening decision is made, for the runtime and for the
        parity checks alike.
        """
        p = np.asarray(probs, np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.classes):
            raise BundleError(f"probabilities must be (N, {len(self.classes)}), got shape {p.shape}")
        # A NaN is never above a threshold (a disease silently not called), and values outside [0, 1] are
        # not probabilities (output names that do not fit the model: logits read as probabilities). The
        # screening pipeline takes a photograph's non-finite row out first (its inference error).
        bad = ~((p >= -1e-6) & (p <= 1.0 + 1e-6))
        if bad.any():
            raise BundleError(f"the model's '{self.output_names[0]}' output holds values outside [0, 1] "
                              f"(e.g. {p[bad][0]:.4g}): the manifest's output names do not fit this model file; "
                              "export the bundle again or copy it again from its source")
        positive = p >= self.thresholds[None, :]
        mask = self.referable_mask
        if self.referral_rule == "any_referable":
            refer = (positive & mask[None, :]).any(axis=1)
        else:
            refer = p[:, mask].sum(axis=1) >= self.referral_threshold
        return positive, refer

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        # The lowest version that holds the content, so older runtimes keep reading what they can show.
        if self.intended_use.stated:
            d["intended_use"] = self.intended_use.to_dict()
            d["format_version"] = 3
        else:
            del d["intended_use"]
            d["format_version"] = 2 if "decode_min_ratio" in d["preprocess"] else 1
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = MANIFEST) -> Manifest:
        try:
            # A BundleError raised here without the source gets it and _REEXPORT added below.
            if "format_version" not in d:
                raise BundleError("the manifest has no format_version, so it was not written by uopsl's exporter "
                                  "or has been edited")
            fv = d["format_version"]
            if not isinstance(fv, int) or isinstance(fv, bool):
                raise BundleError(f"format_version must be a whole number, got {fv!r}")
            if fv not in SUPPORTED_FORMAT_VERSIONS:
                newer = fv > FORMAT_VERSION
                raise BundleError(
                    f"{source}: bundle format version {fv} is not supported by uopsl {__version__} "
                    f"(it reads {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); "
                    + ("upgrade uopsl on this device" if newer else "re-export the bundle with this toolkit version")
                )
            missing = [k for k in ("classes", "files", "preprocess") if k not in d]
            if missing:
                raise BundleError(f"the manifest has no {', '.join(map(repr, missing))} field")
            unknown = sorted(set(d) - {f.name for f in fields(cls)})
            pre = d["preprocess"]
            if isinstance(pre, dict):
                unknown += sorted(f"preprocess.{k}" for k in set(pre) - {f.name for f in fields(PreprocessConfig)})
            # Unknown fields of class and file entries too: they made ClassSpec(**c) raise a TypeError, shown as
            # "malformed manifest (TypeError: ClassSpec.__init__() got an unexpected keyword argument ...)".
            for key, spec in (("classes", ClassSpec), ("files", FileEntry)):
                entries = d[key]
                if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                    raise BundleError(f"the manifest's {key!r} must be a list of objects")
                known = {f.name for f in fields(spec)}
                required = [f.name for f in fields(spec) if f.default is MISSING and f.default_factory is MISSING]
                for i, e in enumerate(entries):
                    absent = [k for k in required if k not in e]
                    if absent:
                        raise BundleError(f"{key}[{i}] has no {', '.join(map(repr, absent))} field")
                    unknown += [f"{key}[{i}].{k}" for k in sorted(set(e) - known)]
            if unknown:
                # A sealed manifest with fields this runtime does not know: most likely a newer exporter's
                # (read_manifest_raw says so first when the seal does not hold: an edit, not a newer bundle).
                unknown_text = f"fields this uopsl {__version__} does not know: {', '.join(unknown)}"
                raise _with_problem(BundleError(
                    f"{source}: {unknown_text}; the bundle was most likely made by a newer uopsl (the manifest says "
                    f"toolkit {d.get('toolkit_version')!s}): upgrade uopsl on this device (uopsl-screen --version "
                    "shows what it reads), or export the bundle with this version"), unknown_text)
            d = dict(d)
            d["classes"] = tuple(ClassSpec(**c) for c in d["classes"])
            d["files"] = tuple(FileEntry(**f) for f in d["files"])
            d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
            d["site_map_size"] = tuple(d.get("site_map_size", (10, 10)))
            d["output_names"] = tuple(d.get("output_names", OUTPUT_NAMES))
            if "intended_use" in d:
                if fv < 3:
                    raise BundleError(f"intended_use needs format_version 3, the manifest says {fv}")
                d["intended_use"] = IntendedUse.from_dict(d["intended_use"])
            elif fv >= 3:
                raise BundleError("format_version 3 needs an intended_use statement, the manifest has none")
            m = cls(**d)
            problem = m.problem()
            if problem:
                raise BundleError(problem)
        except BundleError as exc:
            if str(exc).startswith(source):
                raise
            raise _with_problem(BundleError(f"{source}: {exc}; {_REEXPORT}"), str(exc)) from exc
        except (KeyError, TypeError, ValueError) as exc:
            malformed = f"malformed manifest ({exc.__class__.__name__}: {exc})"
            raise _with_problem(BundleError(f"{source}: {malformed}; {_REEXPORT}"), malformed) from exc
        return m

    def problem(self) -> str | None:
        """What makes this manifest unusable (beyond what each class and file entry checks), or None.

        The exporter calls it before writing and :meth:`from_dict` after reading, so a bundle
        that could not be screened correctly is neither written nor loaded.
        """
        if self.head not in ("sigmoid", "softmax"):
            return f"head must be 'sigmoid' or 'softmax', got {self.head!r}"
        if self.referral_rule not in ("any_referable", "referable_sum"):
            return f"referral_rule must be 'any_referable' or 'referable_sum', got {self.referral_rule!r}"
        if not self.classes:
            return "the manifest lists no classes"
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            return f"class names must be unique, got {names}"
        if not _is_real(self.referral_threshold) or not 0.0 <= float(self.referral_threshold) <= len(names):
            return (f"referral_threshold must be a number between 0 and the number of classes ({len(names)}), "
                    f"got {self.referral_threshold!r}")
        if (len(self.site_map_size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.site_map_size)):
            return f"site_map_size must be two whole numbers > 0, got {self.site_map_size!r}"
        if (len(self.output_names) != 3 or not all(isinstance(v, str) and v for v in self.output_names)
                or len(set(self.output_names)) != 3):
            return f"output_names must be three different names (probs, logits, site maps), got {self.output_names!r}"
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or self.opset < 1:
            return f"opset must be a whole number >= 1, got {self.opset!r}"
        if not isinstance(self.input_name, str) or not self.input_name:
            return f"input_name must be a non-empty string, got {self.input_name!r}"
        if self.input_name in self.output_names:
            return f"input_name {self.input_name!r} is also an output name ({', '.join(self.output_names)})"
        for name in ("model_name", "backbone", "training_data_fingerprint", "calibration_fingerprint",
                     "toolkit_version", "created", "content_sha256"):
            if not isinstance(getattr(self, name), str):
                return f"{name} must be a string, got {getattr(self, name)!r}"
        if not isinstance(self.notes, dict):
            return f"notes must be an object, got {type(self.notes).__name__}"
        if not isinstance(self.intended_use, IntendedUse):
            return f"intended_use must be an IntendedUse, got {type(self.intended_use).__name__}"
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            return f"a file is listed twice: {sorted(p for p in set(paths) if paths.count(p) > 1)}"
        return None


def read_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    """Read and parse ``bundle/manifest.json`` (no checksum verification)."""
    return read_manifest_raw(bundle)[0]


def describe_operating_point(point: Mapping[str, Any]) -> str:
    """How one class's threshold was chosen, in a few words, from the manifest's ``notes.operating_points``
    (``uopsl export`` writes them): "target sensitivity 0.90 on 31 positive / 69 negative validation images",
    "youden on ...", or the record's source ("chosen on no data", "class file ...")."""
    method = point.get("method")
    chosen = method in ("target_sensitivity", "youden")  # chosen on validation images
    how = str(point.get("source", "")) or "not recorded"
    if method == "target_sensitivity" and point.get("target_sensitivity") is not None:
        how = f"target sensitivity {float(point['target_sensitivity']):.2f}"
    elif chosen:
        how = str(method)
    if chosen and point.get("n_positive") is not None:
        how += f" on {point['n_positive']} positive / {point.get('n_negative')} negative validation images"
        if str(point.get("source", "")).startswith("the fine-tuned checkpoint's"):
            how += ", before QAT"
    return how


def _holds_photographs(folder: Path, look_at: int = 200) -> bool:
    """Whether ``folder`` directly holds a file named like a photograph (among its first ``look_at`` entries)."""
    try:
        with os.scandir(folder) as it:
            for k, e in enumerate(it):
                if k >= look_at:
                    return False
                if image_suffix(e.name) in IMAGE_SUFFIXES:
                    return True
    except OSError:
        return False
    return False


def read_manifest_raw(bundle: str | os.PathLike[str]) -> tuple[Manifest, dict[str, Any]]:
    """``bundle``'s manifest parsed, and the JSON object it was parsed from: one read of the file.

    Checks that must agree on one manifest (its own checksum, the files' hashes, a signature) take
    both from here: reading the file again for each would let a manifest swapped in between pass
    one check as itself and another as the original.
    """
    root = Path(bundle)
    path = root / MANIFEST
    if not root.exists():
        raise BundleError(f"{root}: no such bundle folder; check the path (a bundle is the folder "
                          f"`uopsl export` wrote, holding {MANIFEST})")
    if not root.is_dir():
        hint = f"; give its folder, {root.parent}" if (root.parent / MANIFEST).is_file() else ""
        raise BundleError(f"{root}: not a bundle folder (expected a folder holding {MANIFEST}){hint}")
    if not path.exists():
        hint = f"; was it copied whole? (a bundle is the folder `uopsl export` wrote, holding {MANIFEST})"
        if folder_kind(root) == "checkpoint":
            raise BundleError(f"{root} is a training checkpoint (checkpoint.json, model.safetensors), not a "
                              f"deployment bundle: export it to one first (uopsl export {command_word(root)} --out "
                              f"{command_word(root.parent / (root.name + '-bundle'))}) and give that folder")
        if _holds_photographs(root):  # photographs where the bundle goes: the arguments swapped
            hint = ("; it holds photographs: the bundle comes first (uopsl-screen run BUNDLE PHOTOS... --out "
                    "FOLDER)")
        raise BundleError(f"{root}: no {MANIFEST}, so not a uopsl bundle folder{hint}")
    raw = read_manifest_json(path)
    try:
        return Manifest.from_dict(raw, source=str(path)), raw
    except BundleError as exc:
        # A sealed manifest that is not what was sealed: an edit or damage, whatever else is wrong with it.
        # Said first, so that a format version changed by hand does not read as "upgrade uopsl".
        if raw.get("content_sha256") and _checksum_problem(raw):
            # What is wrong, without the advice that goes with a sealed manifest (re-export; upgrade uopsl).
            said = exc.problem or str(exc).removeprefix(f"{path}: ")
            raise BundleError(f"{path}: content differs from its checksum (edited or corrupted), and as it "
                              f"stands it cannot be read ({said}); copy the bundle again from its source, or "
                              "export it again") from exc
        raise


def _with_problem(exc: BundleError, problem: str) -> BundleError:
    """``exc`` with ``problem``: what is wrong with the manifest, without the advice its message adds, for
    :func:`read_manifest_raw` to quote when the manifest fails its own checksum (the advice is then another)."""
    exc.problem = problem
    return exc


def read_manifest_json(path: Path) -> dict[str, Any]:
    """The raw JSON object of a manifest file: size-capped, duplicate keys and runaway nesting refused."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a manifest uopsl wrote "
                              "(re-export the bundle)")
        raw = load_json_strict(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BundleError(f"{path}: unreadable manifest ({why}); re-export the bundle") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def content_hash(d: dict[str, Any]) -> str:
    """The content sha256 of a manifest's JSON object ``d`` (every field but ``content_sha256`` itself)."""
    body = {k: v for k, v in d.items() if k != "content_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8"))


def write_manifest(bundle: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write ``manifest`` (with its content hash) into ``bundle``, atomically and durably."""
    with staged_manifest(bundle, manifest) as stage:
        stage.commit()
    sync_folder(bundle)


@contextlib.contextmanager
def staged_manifest(bundle: str | os.PathLike[str], manifest: Manifest) -> Iterator[Stage]:
    """``manifest`` written and fsynced beside ``bundle``'s manifest.json, in its place only once committed.

    Why: a bundle update that puts a new file in place and then writes the manifest could fail between the
    two (a full disk) and leave a listed file whose checksum fails, the FP32 model's screening refused with
    it (a review). Written first, the manifest and the file change by two renames, which allocate nothing.
    """
    problem = manifest.problem()
    if problem:
        raise BundleError(f"not writing {Path(bundle) / MANIFEST}: {problem}")
    # Hashed as written: the values write_json converts (numpy numbers and flags, paths) are converted the same
    # way first; a str() of them ("3", "True") would make a manifest that fails its own checksum on every device.
    d = json.loads(json.dumps(manifest.to_dict(), default=json_default))
    d["content_sha256"] = content_hash(d)
    with staging(Path(bundle) / MANIFEST) as stage:
        with stage.writer("w", encoding="utf-8") as fh:  # as write_json writes it
            fh.write(json.dumps(d, indent=2, sort_keys=False, default=json_default) + "\n")
        yield stage


def describe_file(bundle: str | os.PathLike[str], entry: FileEntry) -> FileEntry:
    """Return ``entry`` with the checksum and size of the file as it is now."""
    p = Path(bundle) / entry.path
    return replace(entry, sha256=sha256_file(p), size=p.stat().st_size)


@dataclass(frozen=True)
class FileCheck:
    path: str
    ok: bool
    reason: str = ""


def verify(bundle: str | os.PathLike[str], manifest: Manifest | None = None,
           raw: dict[str, Any] | None = None) -> list[FileCheck]:
    """Check every file listed in the manifest against its size and sha256.

    Returns one :class:`FileCheck` per file (never raises for a bad file, so a
    report can list them all); see :func:`verify_or_raise`. ``manifest`` and
    ``raw``: what :func:`read_manifest_raw` returned; checks that must agree with
    others on one manifest (a signature's) pass both.
    """
    root = Path(bundle)
    m, raw = _manifest_and_raw(root, manifest, raw)
    out: list[FileCheck] = []
    problem = _checksum_problem(raw)
    out.append(FileCheck(MANIFEST, False, problem) if problem else FileCheck(MANIFEST, True))
    out.extend(verify_file(root, f) for f in m.files)
    return out


def verify_file(bundle: str | os.PathLike[str], f: FileEntry) -> FileCheck:
    """One listed file against its size and sha256 (what :func:`verify` does for each): for a command that reads
    one file of a bundle before, or without, checking all of them."""
    root = Path(bundle)
    p = root / f.path
    if bundle_path_problem(f.path) or not _inside(root, p):
        return FileCheck(f.path, False, "path leaves the bundle folder (a link or a name out of it)")
    if not p.is_file():
        return FileCheck(f.path, False, "missing")
    if f.size and p.stat().st_size != f.size:
        size = p.stat().st_size
        how = "truncated or replaced" if size < f.size else "grown: appended to or replaced"
        return FileCheck(f.path, False, f"size {size} bytes, manifest says {f.size} ({how})")
    if sha256_file(p) != f.sha256:
        return FileCheck(f.path, False, "sha256 differs from the manifest (modified or corrupted)")
    return FileCheck(f.path, True)


def quantize_records(manifest: Manifest) -> tuple[str, ...]:
    """The ``NAME.quantize.json`` that ``uopsl quantize`` writes beside each ONNX file it makes: the bundle's own
    files though the manifest does not list them (docs/deployment.md)."""
    return tuple(f"{f.path[:-len('.onnx')]}.quantize.json" for f in manifest.files_of("onnx")
                 if f.path.endswith(".onnx"))


def unlisted_files(bundle: str | os.PathLike[str], manifest: Manifest, own: Sequence[str] = ()) -> list[str]:
    """The files in the bundle folder that the manifest does not list, as bundle paths, sorted.

    Why: :func:`verify` checks what the manifest lists, so a file added beside them (a model copied in by hand,
    a README) is neither checked nor used; ``uopsl-screen verify`` names them so that nobody takes them as
    verified. The manifest, its lock and the names in ``own`` (the signature file) belong to the bundle. Links
    are listed, not followed.
    """
    root = Path(bundle)
    listed = {f.path for f in manifest.files} | {MANIFEST, MANIFEST_LOCK, *own}
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        for name in [*files, *(d for d in dirs if (Path(folder) / d).is_symlink())]:
            path = (rel / name).as_posix()
            if path not in listed:
                found.append(path)
    return sorted(found)


def _manifest_and_raw(root: Path, manifest: Manifest | None,
                      raw: dict[str, Any] | None) -> tuple[Manifest, dict[str, Any]]:
    """Both forms of one read of the manifest. Without ``raw`` the file is read here once; a ``manifest``
    the caller parsed earlier must still be what the file holds, or the files would be hashed against one
    manifest and the checksum (or a signature) judged on another."""
    if raw is not None:
        return (manifest if manifest is not None else Manifest.from_dict(raw, source=str(root / MANIFEST))), raw
    parsed, raw = read_manifest_raw(root)
    if manifest is not None and manifest != parsed:
        raise BundleError(f"{root / MANIFEST} changed since it was read; read the bundle again")
    return parsed, raw


def check_manifest_checksum(bundle: str | os.PathLike[str]) -> None:
    """BundleError unless the manifest's content matches its own checksum.

    Every writer that rewrites a manifest (adding a file, recording parity) calls this
    under the manifest lock just before it rewrites: a rewrite computes a fresh checksum,
    so without this a hand-edited manifest would come out verifying.
    """
    path = Path(bundle) / MANIFEST
    problem = _checksum_problem(read_manifest_json(path))
    if problem:
        raise BundleError(f"{path}: {problem}; not rewriting it. Copy the bundle again from its source, or "
                          "export it again")


def _checksum_problem(raw: dict[str, Any]) -> str | None:
    """What is wrong with a raw manifest's own content checksum, or None (shared by verify and the writers)."""
    if not raw.get("content_sha256"):
        return "no content checksum (removed, or written by an older exporter); re-export"
    if content_hash(raw) != raw["content_sha256"]:
        return "content differs from its checksum (edited or corrupted)"
    return None


def _inside(root: Path, p: Path) -> bool:
    """Whether ``p`` is a file of ``root`` itself: no link on the way, as the folder was copied."""
    rel = p.relative_to(root)
    at = root
    for part in rel.parts:
        at = at / part
        if at.is_symlink():
            return False
    return True


def verify_before_rewrite(bundle: str | os.PathLike[str], replacing: str) -> bool:
    """:func:`verify_or_raise` for a command about to write the listed file ``replacing`` anew; True when that
    file, and no other, fails (a run of the command stopped between writing it and listing it).

    Such a bundle passes, with a warning: the command that repairs it refused before, telling the user to copy
    the bundle again. The caller must then write the file anew and never reuse what is there (a calibration
    table whose recorded model and images still match was taken as current, and a hand-edited table got
    listed under a fresh checksum), so nothing unverified enters the manifest."""
    m, raw = _manifest_and_raw(Path(bundle), None, None)
    bad = [c for c in verify(bundle, m, raw) if not c.ok]
    if bad and all(c.path == replacing for c in bad):
        log.warning("%s: %s does not match the manifest (%s), as a run stopped between writing it and listing it "
                    "leaves it; it is written anew now", bundle, replacing, bad[0].reason)
        return True
    _raise_bad(bundle, bad)
    return False


def verify_or_raise(bundle: str | os.PathLike[str], manifest: Manifest | None = None,
                    raw: dict[str, Any] | None = None) -> Manifest:
    """:func:`verify`, raising BundleError naming every bad file; returns the manifest the files were checked
    against (``manifest`` and ``raw`` as there)."""
    m, raw = _manifest_and_raw(Path(bundle), manifest, raw)
    _raise_bad(bundle, [c for c in verify(bundle, m, raw) if not c.ok])
    return m


#: What to do about a file that fails verification. A calibration table, an INT8 file or an engine that a
#: command was writing when it was stopped is made good where the bundle was made by running that command again.
VERIFY_REMEDY = ("Copy the bundle again from its source; where it was made, a calibration table, INT8 file or "
                 "engine that fails is made good by running uopsl calibrate, quantize or build-engine again")


def _raise_bad(bundle: str | os.PathLike[str], bad: Sequence[Any]) -> None:
    if bad:
        detail = "; ".join(f"{c.path}: {c.reason}" for c in bad)
        raise BundleError(f"bundle {bundle} failed verification: {detail}. {VERIFY_REMEDY}")
