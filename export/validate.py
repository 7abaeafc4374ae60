"""Accuracy parity: run a reference model and every deployable file of a bundle on the same images.

``validate_bundle`` is the engine behind ``uopsl validate``. The reference is
any object with ``infer(uint8 NHWC batch) -> {"probs", "logits", "site_maps"}``
(the shape of a runtime :class:`~uopsl.runtime.backends.base.Backend`); the
train layer builds one from a checkpoint (:mod:`uopsl.train.reference`), so
this layer never imports training code. Without PyTorch (on a device),
:class:`uopsl.export.onnx_reference.OnnxReference` is the bundle's own FP32
ONNX file on ONNX Runtime's CPU provider, allowed only once that file carries a
recorded PASS on ``ort-cpu`` against PyTorch (the chain of trust: the
workstation proved the FP32 file, the device proves its engines and INT8 files
against it). That pair, the reference itself, is left out of the candidates
(:class:`ExcludedCandidate`), so its PyTorch verdict is never overwritten.

Candidates are the model files of the bundle on every backend available here:
``ort-cpu`` runs every ONNX file (FP32 and each INT8 variant); ``ort-cuda``,
``ort-trt`` and ``openvino`` run, per precision, the file the runtime's backend
selection would run there (OpenVINO: the u8 QDQ file, not the TensorRT s8 one);
``tensorrt`` runs each engine whose header matches this GPU and TensorRT. Each image is preprocessed once with the bundle's
preprocessing and that one uint8 batch feeds every candidate. The reference is
fed the same batch, unless it declares its own preprocessing (the
checkpoint's) and that differs from the manifest's: then it gets its own
batch, so a wrong preprocessing parameter in a manifest shows up as flipped
decisions instead of going unnoticed.

Each candidate gets PASS, FAIL or INCOMPLETE (:mod:`uopsl.export.parity_metrics`);
a model whose outputs are not finite (NaN, inf: an FP16/INT8 overflow) FAILs
with the images named, and the other candidates are still judged (a
non-finite reference fails the run, with a report). The verdicts go into the
manifest for ``auto`` under the rule of ``ValidateConfig.record``
(:mod:`uopsl.export.parity_record`, which derives each record from the report); each record
names its reference (``reference_kind``: ``pytorch``, ``onnx``, or ``unknown``
for a reference that declares no kind, e.g. a runtime backend; and
``reference_source``, e.g. ``onnx:model.onnx@<sha256 prefix> on ort-cpu``; an
ONNX reference adds ``reference_file`` and its full ``reference_sha256``, which
``auto`` re-checks). A verdict not judged against PyTorch never replaces one
that was (same file content, same backend): the report says which were kept.

Outputs in ``out``: ``parity.json`` (every figure, the image ids used, the
bootstrap's replicates, alpha and seed, and what the verdict is tied to: each
file's and the manifest's sha256, a content digest of the images and their
labels, the checkpoint's weights sha256 when the caller gives it in
``context``, the CPU model and the runtimes' versions), ``parity.html``
(self-contained, offline, printable: ROC overlays and thumbnails of flipped
images embedded), ``outputs.csv`` (every image's outputs, from which a signer
recomputes the figures; its sha256 is in parity.json, see
:func:`write_outputs_csv`), ``roc_<candidate>.png`` and ``parity_config.json``
(the resolved configuration). Model outputs are cached per batch in
``out/.parity-cache``, so an interrupted run resumes and a rerun with other
gates costs nothing; the cache is keyed by the files' checksums, the
reference's fingerprint, the images' content, the preprocessing, the runtimes'
versions, the PyTorch version and the reference's device, and parity.json's
``cache`` says whether the outputs came from it.

Each image's patient (:attr:`ImageRecord.patient`) makes the AUC bootstrap
resample patients; ``record.recorded`` lists what the manifest holds after the
run, ``record.kept`` the verdicts it kept instead and why; ``release_pass`` and
``headline`` say when a PASS is not one a release may rest on (looser gates,
too few images, another checkpoint).

Labels that are no class of the bundle are refused, dropped or counted as
negatives, by ``ValidateConfig.unknown_labels``; never silently.

A photograph counts once: a byte-identical copy of an earlier image (under
another name or patient id) is left out of every figure, and the report's
notes and ``data.duplicate_content`` list the copies (copies whose labels
disagree are refused). With ``context["checkpoint"]``, the images are checked
against the checkpoint's record of the photographs that made it
(``images_seen.json``, as ``uopsl evaluate`` does): the report warns,
``data.held_out`` is False, ``data.images_seen_in_training`` counts them by
role, the PASS is not a release pass and nothing is recorded in the manifest.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from uopsl.runtime.progress import track
from uopsl.export.calibration_images import calibration_overlaps, withheld_passes
from uopsl.export.calibration_images import release_reasons as calibration_release_reasons
from uopsl.export.int8_arithmetic import ExactRunner, arithmetic_check
from uopsl.export.parity_record import plan_records, record_verdicts
from uopsl.export.parity_metrics import (
    BOOTSTRAP_ALPHA,
    CONFIDENCE,
    PROPORTION_ALPHA,
    PROPORTION_METHOD,
    PROPORTION_METHOD_PATIENTS,
    FAIL,
    INDEPENDENCE_NOTE,
    JUDGE_ON,
    MIN_CASES_PER_CLASS,
    NEWCOMBE_PAIRED,
    NEWCOMBE_PAIRED_CLUSTERED,
    ON_ESTIMATES,
    PASS,
    ParityGates,
    Truth,
    clinical,
    decision_headroom,
    jsonable,
    judge,
    nonfinite_images,
    nonfinite_reason,
    numerical,
    overall_status,
    patient_facts,
    truth_from_labels,
    truth_from_reference,
    zero_change_line,
    zero_change_sample_sizes,
)
from uopsl.runtime.backends import (
    BACKEND_NAMES,
    Availability,
    Selection,
    construct_backend,
    detect_availability,
    engine_mismatch,
    select_backend,
)
from uopsl.runtime.backends.base import Backend
from uopsl.runtime.bundle import (
    CHECKPOINT_DIGEST_NOTE,
    MANIFEST,
    ONNX_REFERENCE_BACKEND,
    OUTPUT_NAMES,
    REFERENCE_MAX_PROB_DIFF,
    REFERENCE_UNKNOWN,
    TEACHER_DIGEST_NOTE,
    Manifest,
    parity_gates_problem,
    parity_reference_kind,
    parity_run_problem,
)
from uopsl.runtime.cpuinfo import CPU_BACKENDS, int8_cpu_class
from uopsl.runtime.errors import BackendError, BundleError, ConfigError, DataError, UopslError
from uopsl.runtime.fsio import (
    NUMPY_FILE_ERRORS,
    SHORT_DIGEST_CHARS,
    remove_stale_temporaries,
    sha256_file,
    write_bytes,
    write_json,
    write_text,
)
from uopsl.runtime.metrics import roc_curve
from uopsl.runtime.optional import available, extra_hint
from uopsl.runtime.parallelism import check_parallelism
from uopsl.runtime.preprocess import PREPROCESS_VERSION, PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.quality import QualityConfig, assess
from uopsl.runtime.version import __version__, source_revision
from uopsl.runtime.signing import open_trusted

log = logging.getLogger(__name__)

# Outputs of a file run in its exact arithmetic, among the batch arrays (see export.int8_arithmetic).
EXACT_PREFIX = "exact:"
# What the cached batches hold beyond the candidates' outputs (a change here invalidates older caches).
CACHE_ARRAYS = ("exact-int8-logits/1",)

REPORT_FORMAT = "uopsl-parity/1"
_CACHE_DIR = ".parity-cache"
# A skipped image's reason when the runtime's quality gate rejects it (validate leaves those out by default).
UNGRADABLE = "ungradable"
_INT8 = ("int8-qdq-u8", "int8-qdq-s8")
#: ``ValidateConfig.unknown_labels``: what to do with images carrying a label that is no class of the bundle.
UNKNOWN_LABELS_REFUSE, UNKNOWN_LABELS_DROP, UNKNOWN_LABELS_NEGATIVE = "refuse", "drop", "negative"
UNKNOWN_LABEL_POLICIES = (UNKNOWN_LABELS_REFUSE, UNKNOWN_LABELS_DROP, UNKNOWN_LABELS_NEGATIVE)
#: How ``data.images_sha256`` is computed (written into each report so a signer can recompute it).
IMAGES_DIGEST_METHOD = ("sha256 of the UTF-8 text holding one line per image used, the lines sorted (so the "
                        "order the data listed them in does not enter it): the JSON array [sha256 of the file's "
                        "bytes, its labels sorted (null: unlabelled)] as json.dumps(line, separators=(',', ':'), "
                        "ensure_ascii=False) writes it, ended by a newline; file names and times do not enter it")
#: The checkpoint's record of the photographs that made it, and its roles (``uopsl.train.workflow.SEEN_FILE`` and
#: ``SEEN_ROLES``; this layer never imports training code, a test keeps the two equal). Each photograph is the
#: first 8 bytes of its file's sha256, in hex: the first 16 characters of ``data.image_sha256``.
SEEN_FILE = "images_seen.json"
SEEN_ROLES = {"earlier": "the checkpoint this one was made from", "pretrain": "pre-training",
              "train": "fine-tuning", "validation": "validation (thresholds, best epoch)",
              "qat": "quantization-aware fine-tuning (without labels)"}
_SEEN_DIGEST_CHARS = SHORT_DIGEST_CHARS
#: Written into ``data.images_seen`` (what the check of held-out images could not see).
_SEEN_NOT_CHECKED = ("calibration images: not here; each INT8 candidate's calibration_images says whether they "
                     "could be checked against calibration.json's image digests, and how many were judged")
T = TypeVar("T")


class Reference(Protocol):
    """What the engine needs from the reference model (a runtime Backend fits too).

    Optional attributes, read with ``getattr``: ``preprocess`` (its own
    PreprocessConfig), ``fingerprint`` (keys the output cache), ``describe()``
    (one line for the reports), ``reference_kind`` (``"pytorch"``: the
    checkpoint, which :class:`uopsl.train.reference.TorchReference` declares;
    ``"onnx"``: the bundle's FP32 file; when absent, ``"unknown"``: its
    verdicts are judged and recorded as usual, but never prove a file for an
    ONNX reference nor replace a PyTorch-referenced verdict),
    ``reference_source`` (what the manifest records as the reference; default
    ``<kind>:<fingerprint>``), ``reference_file`` and ``reference_sha256``
    (the bundle file an ONNX reference runs, recorded so ``auto`` can re-check
    its chain) and ``excluded_candidates`` (a sequence of
    :class:`ExcludedCandidate`: pairs never judged against it, e.g. itself).
    """

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


# REFERENCE_PYTORCH, REFERENCE_ONNX, REFERENCE_UNKNOWN (the ``reference_kind`` values, imported above) live with
# the runtime's parity check (uopsl.runtime.bundle), which reads them back; they stay importable from here.


@dataclass(frozen=True)
class ExcludedCandidate:
    """A (bundle file, backend) pair to leave out of the candidates, listed as skipped with ``reason``."""

    file: str
    backend: str
    reason: str

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ConfigError(f"an excluded candidate's backend must be one of {BACKEND_NAMES}; got {self.backend!r}")
        if not self.file or not self.reason:
            raise ConfigError(f"an excluded candidate needs a file and a reason; got {self!r}")


@dataclass(frozen=True)
class ImageRecord:
    """One image to validate on: a display id, its file, its label names (None: unlabelled) and its patient.

    ``patient`` (None: unknown): images of one patient (two eyes, repeat visits) are not independent, so the
    bootstrap resamples them together and the report counts the patients behind each change; an image
    without a patient id counts as a patient of its own.
    """

    id: str
    path: Path
    labels: tuple[str, ...] | None = None
    patient: str | None = None


@dataclass(frozen=True)
class ValidateConfig:
    """How to validate.

    backends: registry names to try, or ``("all",)`` for every backend available here.
    gates: the verdict's limits (see :class:`ParityGates`).
    batch_size: images per inference call (also the cache granularity).
    n_boot, seed: paired bootstrap of the AUC differences (``seed`` is the bootstrap's only; the CLI's
        ``--bootstrap-seed``, which defaults to its ``--seed``).
    per_layer: run the layer-wise diagnosis (:mod:`uopsl.export.layerwise`) on each INT8 ONNX file.
    per_layer_images: images it uses; sqnr_threshold_db/min_drop_db/max_suggestions: its exclusion rule.
    threads: inference threads of CPU backends (None: their default).
    max_thumbnails: flipped images shown with a thumbnail per candidate in the HTML report.
    resume: reuse cached model outputs of an earlier run with identical inputs.
    unknown_labels: images whose labels include a name that is no class of the bundle (``cataract``, a
        misspelt ``Glaucoma``, TVHL's ``npdr`` for a bundle with ``dr``). ``"refuse"`` raises a ConfigError
        naming each such label and the bundle class it looks like (the default); ``"drop"`` leaves those
        images out of the run, and the report counts and lists them; ``"negative"`` (for callers that
        compare a model with data labelled for other classes on purpose) counts each such image as a
        negative for every bundle class and says so in the report's notes, its ``data.unknown_labels``
        and the log.
    judge_on: what the verdict compares with the gates: ``"estimates"`` (the measured figures, the default)
        or ``"bounds"`` (those, then their 95 % bounds: a figure within its gate whose bound is not reads
        INCOMPLETE; :func:`~uopsl.export.parity_metrics.judge`): for a signer who must claim each rate is within
        its gate at 95 % confidence, not only that it was on these images.
    keep_ungradable: compare decisions on images the runtime's quality gate (default
        :class:`~uopsl.runtime.quality.QualityConfig`, as ``uopsl-screen`` runs it) calls ungradable too. By
        default they are left out, listed among the skipped images with the gate's reasons: a device gives no
        decision on them, so they must not count towards the images a verdict rests on.
    record: write each file's verdict into the bundle manifest (``FileEntry.info["parity"]``);
        ``auto`` backend selection uses an INT8 file or an INT8/FP16 engine only with a passing record. A FAIL is
        recorded; a PASS or INCOMPLETE only from a run with the default gates (or stricter) on at
        least :data:`uopsl.runtime.bundle.MIN_PARITY_IMAGES` images, so a smoke run or loosened gates never
        replace an earlier verdict with a pass (the report and the log say so). A FAIL from a run on fewer
        images does not replace such a run's PASS of the same file on the same backend; and a run whose
        images made the checkpoint (its ``images_seen.json``: training, or the validation images its
        thresholds were chosen on) records nothing at all (``record.withheld``).
    """

    backends: tuple[str, ...] = ("all",)
    gates: ParityGates = field(default_factory=ParityGates)
    batch_size: int = 16
    n_boot: int = 1000
    seed: int = 0
    per_layer: bool = False
    per_layer_images: int = 8
    sqnr_threshold_db: float = 30.0
    min_drop_db: float = 3.0
    max_suggestions: int = 5
    threads: int | None = None
    max_thumbnails: int = 60
    resume: bool = True
    show_progress: bool = True
    record: bool = True
    unknown_labels: str = UNKNOWN_LABELS_REFUSE
    judge_on: str = ON_ESTIMATES
    keep_ungradable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", tuple(self.backends))
        if self.judge_on not in JUDGE_ON:
            raise ConfigError(f"judge_on must be one of {JUDGE_ON}, got {self.judge_on!r}")
        if self.unknown_labels not in UNKNOWN_LABEL_POLICIES:
            raise ConfigError(f"unknown_labels must be one of {UNKNOWN_LABEL_POLICIES}, got {self.unknown_labels!r}")
        bad = [b for b in self.backends if b != "all" and b not in BACKEND_NAMES]
        if not self.backends or bad or ("all" in self.backends and len(self.backends) > 1):
            raise ConfigError(f"backends must be ('all',) or names from {BACKEND_NAMES}; got {self.backends}")
        if self.batch_size < 1 or self.n_boot < 0 or self.per_layer_images < 1 or self.max_thumbnails < 0:
            raise ConfigError("batch_size and per_layer_images must be >= 1; n_boot and max_thumbnails >= 0")
        check_parallelism("threads", self.threads)
        for name in ("sqnr_threshold_db", "min_drop_db"):
            if not math.isfinite(getattr(self, name)):  # NaN or infinity failed only when the report was drawn
                raise ConfigError(f"{name} must be a finite number of dB, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gates"] = self.gates.to_dict()
        return d


@dataclass(frozen=True)
class CandidateSpec:
    """One model file of the bundle on one backend."""

    name: str
    backend: str
    file: str
    precision: str


@dataclass(frozen=True)
class ParityReport:
    """The outcome and the report's content and files.

    ``status``: PASS (every candidate evaluated in full and within the gates),
    FAIL or INCOMPLETE (see :mod:`uopsl.export.parity_metrics`); ``passed`` is
    ``status == "PASS"``, and anything else exits 1.
    """

    passed: bool
    report: dict[str, Any]
    json_path: Path
    html_path: Path
    status: str = PASS

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


# -- candidates ----------------------------------------------------------------------------------
def _usable(av: Availability) -> dict[str, bool]:
    return {"ort-cpu": "CPUExecutionProvider" in av.ort_providers, "ort-cuda": av.ort_cuda, "ort-trt": av.ort_trt,
            "openvino": av.openvino, "tensorrt": av.tensorrt}


def plan_candidates(
    bundle: Path, manifest: Manifest, backends: Sequence[str], availability: Availability,
    exclude: Sequence[ExcludedCandidate] = (),
) -> tuple[list[CandidateSpec], list[dict[str, str]]]:
    """(candidates to run, skipped ones with the reason) for ``backends`` on this machine.

    ``exclude``: (file, backend) pairs never run, listed among the skipped with their reason.
    """
    usable = _usable(availability)
    excluded = {(e.file, e.backend): e.reason for e in exclude}
    names = list(BACKEND_NAMES) if tuple(backends) == ("all",) else list(backends)
    explicit = tuple(backends) != ("all",)
    runs: list[CandidateSpec] = []
    skipped: list[dict[str, str]] = []
    onnx = manifest.files_of("onnx")
    engines = manifest.files_of("engine")
    for b in names:
        files = engines if b == "tensorrt" else onnx
        if not usable[b]:
            if explicit or files:
                why = {"ort-cuda": "ONNX Runtime has no CUDA provider here (onnxruntime-gpu and a GPU needed)",
                       "ort-trt": "ONNX Runtime has no TensorRT provider here",
                       "openvino": f"OpenVINO is not installed ({extra_hint('openvino')})",
                       "tensorrt": f"TensorRT and a CUDA binding are not installed ({extra_hint('trt')})",
                       "ort-cpu": "ONNX Runtime is not installed"}[b]
                skipped.append({"name": b, "reason": why})
            continue
        if not files and (explicit or b == "tensorrt"):
            skipped.append({"name": b, "reason": "the bundle has no " + ("engine" if b == "tensorrt" else "ONNX") + " file"})
        chosen = None if b in ("ort-cpu", "tensorrt") else _runtime_choices(bundle, manifest, b, availability)
        for f in files:
            name = f"{b}:{f.path}"
            if (f.path, b) in excluded:
                skipped.append({"name": name, "reason": excluded[(f.path, b)]})
                continue
            if b == "tensorrt":
                mismatch = engine_mismatch(bundle / f.path)
                if mismatch is not None:
                    skipped.append({"name": name, "reason": mismatch})
                    continue
            if chosen is not None and f.path not in chosen:
                skipped.append({"name": name, "reason": f"the runtime never runs this {f.precision} file on {b} "
                                                        f"(it runs {sorted(chosen)})"})
                continue
            runs.append(CandidateSpec(name, b, f.path, f.precision))
    return runs, skipped


def _runtime_choices(bundle: Path, manifest: Manifest, backend: str, availability: Availability) -> set[str]:
    """The ONNX files the runtime's backend selection would run on ``backend``, over every precision.

    ``ort-cpu`` runs every ONNX file (each INT8 variant is worth measuring there);
    on the other backends only what a device would run is validated, e.g.
    OpenVINO runs the u8 QDQ file, not the TensorRT s8 one.
    """
    files = set()
    for precision in ("fp32", "fp16", "int8"):
        with contextlib.suppress(UopslError):
            files.add(select_backend(bundle, backend, precision, manifest=manifest, availability=availability,
                                     measure=False).file)
    return files


def open_candidate(bundle: Path, spec: CandidateSpec, threads: int | None, manifest: Manifest) -> Backend:
    """Construct (not enter) the backend for ``spec``, as the runtime builds it (TensorRT is imported only then)."""
    sel = Selection(spec.backend, spec.precision, spec.file, "uopsl validate candidate")
    return construct_backend(bundle, sel, manifest, threads)


# -- labels the bundle does not know ---------------------------------------------------------------------
def _label_key(name: str) -> str:
    """A label name without case, spaces, ``_`` and ``-``: how a near miss (``Glaucoma``, ``macular-hole``) is found."""
    return re.sub(r"[\s_\-]+", "", name.casefold())


def unknown_labels(class_names: Sequence[str], images: Sequence[ImageRecord]) -> dict[str, int]:
    """Each label carried by ``images`` that is no class in ``class_names``, with the number of images carrying it."""
    known = set(class_names)
    counts: dict[str, int] = {}
    for rec in images:
        for label in dict.fromkeys(rec.labels or ()):
            if label not in known:
                counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def label_near_misses(labels: Sequence[str], class_names: Sequence[str]) -> dict[str, str]:
    """Unknown label -> the bundle class it only differs from in case, spaces, ``_`` or ``-``."""
    keys = {_label_key(c): c for c in class_names}
    return {lab: keys[_label_key(lab)] for lab in labels if _label_key(lab) in keys}


def unknown_labels_message(unknown: Mapping[str, int], class_names: Sequence[str], *, hint: str = "",
                           drop: str = f"ValidateConfig(unknown_labels={UNKNOWN_LABELS_DROP!r})") -> str:
    """The refusal for labels that are no class of the bundle: each one, its near miss, ``hint``, and ``drop``."""
    near = label_near_misses(list(unknown), class_names)
    listed = ", ".join(f"{lab!r} ({n} image{'s' if n != 1 else ''}"
                       + (f"; the bundle has {near[lab]!r}" if lab in near else "") + ")" for lab, n in unknown.items())
    msg = (f"the data carry label(s) that are not classes of this bundle {list(class_names)}: {listed}; each such "
           "image would count as a negative for every class of the bundle, a wrong truth")
    if near:
        msg += "; rename " + ", ".join(f"{a!r} to {b!r}" for a, b in near.items()) + " in the labels"
    if hint:
        msg += f"; {hint}"
    return msg + f"; or pass {drop} to leave out every image carrying one (the report counts them)"


def _image_sha256(path: Path) -> str | None:
    """sha256 of an image file's bytes (None when it cannot be read; such an image is skipped by the run anyway)."""
    try:
        return hashlib.sha256(read_bytes(path)).hexdigest()
    except UopslError:
        return None


def canonical_order(images: Sequence[ImageRecord]) -> list[ImageRecord]:
    """``images`` sorted by id (with "/" separators on every system), then file, patient and labels: the order
    every figure and the cache are computed in, whatever order the data listed them in."""
    return sorted(images, key=lambda r: (r.id.replace("\\", "/"), Path(r.path).as_posix(), r.patient or "",
                                         sorted(r.labels) if r.labels is not None else []))


def images_digest(digests: Sequence[str | None], labels: Sequence[tuple[str, ...] | None]) -> str:
    """Content fingerprint of the images used and their labels, whatever their order (:data:`IMAGES_DIGEST_METHOD`).

    ``image_ids_sha256`` hashes the names only: two different sets of
    photographs named alike share it. This one changes with any byte of any
    image or any label, and not with a file's name, folder or time, nor with
    the order the data listed them in (a review: one set of photographs had two
    fingerprints, one per row order of its CSV).
    """
    lines = [json.dumps([digest, sorted(labs) if labs is not None else None], separators=(",", ":"),
                        ensure_ascii=False) + "\n" for digest, labs in zip(digests, labels, strict=True)]
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8"))
    return h.hexdigest()


# -- the same photograph twice ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Copies:
    """Which of the images compared are byte-identical copies of an earlier one (the first of each content kept).

    A copy under another name or patient id is the same photograph: counted twice it inflates the images a
    verdict rests on (the 100-image minimum), narrows every bound, and counts one changed decision twice.
    ``keep``: per image compared, in order, whether it stays; ``dropped``: (the copy left out, the earlier
    image it repeats).
    """

    keep: tuple[bool, ...]
    dropped: tuple[tuple[ImageRecord, ImageRecord], ...]

    @property
    def n_other_patient(self) -> int:
        """Copies filed under another patient id than the image they repeat (the first one's is kept)."""
        return sum(1 for copy, first in self.dropped if copy.patient != first.patient)

    def report(self) -> dict[str, Any]:
        """``data.duplicate_content``: what was left out and why (the first 100 copies listed)."""
        return {"rule": "byte-identical image files (same sha256) count once: the first is kept, each later copy is "
                        "left out of every figure (unreadable files are skipped with their reason, not merged)",
                "n_dropped": len(self.dropped), "n_with_other_patient": self.n_other_patient,
                "dropped": [{"id": copy.id, "same_as": first.id,
                             **({"patient": copy.patient, "same_as_patient": first.patient}
                                if copy.patient != first.patient else {})}
                            for copy, first in self.dropped[:100]]}

    def note(self) -> str | None:
        """What the report's notes say about the copies (None: there are none)."""
        if not self.dropped:
            return None
        examples = ", ".join(f"{copy.id} = {first.id}" for copy, first in self.dropped[:3])
        other = (f"; {self.n_other_patient} of them under another patient id than the image they copy (the first "
                 "one's is kept)" if self.n_other_patient else "")
        return (f"{len(self.dropped)} image(s) left out: byte-identical copies of earlier images (same file "
                f"content), e.g. {examples}{other}; every figure counts the {len(self.keep) - len(self.dropped)} "
                f"distinct photographs of the {len(self.keep)} compared: remove the copies from the data")


def distinct_content(images: Sequence[ImageRecord], shas: Sequence[str | None]) -> _Copies:
    """Which of ``images`` (those compared, in order) are later byte-identical copies of an earlier one (by
    ``shas``, each image's file sha256).

    An image without a sha256 is kept. Copies whose labels disagree are refused (:class:`DataError`): one
    photograph needs one set of labels, and keeping either would choose the truth.
    """
    first_of: dict[str, ImageRecord] = {}
    keep: list[bool] = []
    dropped: list[tuple[ImageRecord, ImageRecord]] = []
    for rec, sha in zip(images, shas, strict=True):
        first = first_of.get(sha) if sha else None
        keep.append(first is None)
        if first is None:
            if sha:
                first_of[sha] = rec
            continue
        if _label_set(rec.labels) != _label_set(first.labels):
            raise DataError(
                f"image {rec.id} ({rec.path}) is a byte-identical copy of image {first.id} ({first.path}) (same "
                f"sha256 {str(sha)[:12]}...), and their labels disagree ({_label_words(rec.labels)} here, "
                f"{_label_words(first.labels)} there); one photograph needs one set of labels: settle the label "
                "and keep one of the two in the data")
        dropped.append((rec, first))
    return _Copies(tuple(keep), tuple(dropped))


def _label_set(labels: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if labels is None else tuple(sorted(set(labels)))


def _label_words(labels: tuple[str, ...] | None) -> str:
    return "unlabelled" if labels is None else repr(sorted(set(labels)))


# -- photographs that made the checkpoint --------------------------------------------------------------------
@dataclass(frozen=True)
class _Seen:
    """How many of the images used made the reference checkpoint, by role (its ``images_seen.json``).

    ``per_role`` None: not known (no checkpoint, or one that does not record its photographs); ``unknown_roles``:
    roles the checkpoint names without recording their photographs (an older ancestor).
    """

    checkpoint: str | None
    n: int
    per_role: Mapping[str, int] | None
    n_seen: int | None
    unknown_roles: tuple[str, ...] = ()
    why_unknown: str | None = None

    @property
    def held_out(self) -> bool | None:
        """False: some images made the checkpoint; True: none did, by a complete record; None: not known."""
        if self.n_seen:
            return False
        if self.per_role is None or self.unknown_roles:
            return None
        return True

    def _roles(self) -> str:
        return ", ".join(f"{k} in {SEEN_ROLES.get(r, r)}" for r, k in (self.per_role or {}).items())

    def report(self) -> dict[str, Any]:
        """``data.images_seen``: the check's details (the counts are also ``data.images_seen_in_training``)."""
        return {"checkpoint": self.checkpoint, "file": SEEN_FILE if self.checkpoint else None,
                "n_seen": self.n_seen, "of": self.n, "per_role": dict(self.per_role) if self.per_role is not None
                else None, "roles_not_recorded": list(self.unknown_roles), "why_not_known": self.why_unknown,
                "not_checked": _SEEN_NOT_CHECKED, "held_out": self.held_out,
                "digest": "sha256 of each image file, first 8 bytes (the checkpoint's record)"}

    def note(self) -> str | None:
        """The warning for the report's notes (None: nothing to say)."""
        unknown = [SEEN_ROLES.get(r, r) for r in self.unknown_roles]
        caveat = (f"what made {' and '.join(unknown)} is not recorded (made before uopsl recorded it): make sure "
                  "the validation images were not among them") if unknown else ""
        if self.n_seen:
            why = []
            if (self.per_role or {}).get("validation"):
                why.append("the operating thresholds were chosen on the validation images' scores, so numeric "
                           "noise of 1e-7 can flip their calls (a FAIL or PASS there says little)")
            if any(r != "validation" for r in self.per_role or {}):
                why.append("the model learnt from the others, whose scores rarely come near a threshold (a PASS "
                           "there overstates)")
            return (f"{self.n_seen} of {self.n} images (same file content) were used to make this checkpoint "
                    f"({self._roles()}): they are not held out; {'; '.join(why)}; validate on images that did not "
                    "make the model" + (f"; {caveat}" if caveat else ""))
        if self.per_role is None and self.checkpoint:
            return f"{self.why_unknown}: make sure the validation images were not among them"
        return caveat[0].upper() + caveat[1:] if caveat else None

    def no_record(self) -> str | None:
        """Why this run records nothing in the manifest (None: the images are not known to have made it)."""
        if not self.n_seen:
            return None
        return (f"{self.n_seen} of {self.n} images made the checkpoint ({self._roles()}), so no verdict on them is a "
                "release verdict; validate on held-out images")


def images_seen(checkpoint: str | os.PathLike[str] | None, digests: Sequence[str | None]) -> _Seen:
    """Which of the images (``digests``: each file's sha256, hex) made ``checkpoint`` (its :data:`SEEN_FILE`).

    The check ``uopsl evaluate`` makes too (``uopsl.train.workflow.seen_overlap`` calls this), read without training
    code: the same file, the same digests.
    """
    n = len(digests)
    if not checkpoint:
        return _Seen(None, n, None, None, why_unknown="no checkpoint (the reference is not a PyTorch checkpoint): "
                                                      "which photographs made the model is not known here")
    path = Path(checkpoint) / SEEN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        seen = {str(role): None if v is None else {str(d) for d in v} for role, v in dict(data["roles"]).items()}
    except FileNotFoundError:
        return _Seen(str(checkpoint), n, None, None,
                     why_unknown=f"the checkpoint {checkpoint} does not record which photographs made it (no "
                                 f"{SEEN_FILE}: made before uopsl recorded them, or left out when it was shared)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return _Seen(str(checkpoint), n, None, None,
                     why_unknown=f"{path} could not be read ({type(exc).__name__}: {exc}), so which photographs "
                                 "made the checkpoint is not known")
    mine = [d[:_SEEN_DIGEST_CHARS] if d else None for d in digests]
    per_role = {role: sum(1 for d in mine if d and d in (seen.get(role) or ())) for role in (*SEEN_ROLES, *seen)}
    anywhere: set[str] = set().union(*(v for v in seen.values() if v))
    return _Seen(str(checkpoint), n, {r: k for r, k in per_role.items() if k},
                 sum(1 for d in mine if d and d in anywhere), tuple(r for r, v in seen.items() if v is None))


# -- output cache -----------------------------------------------------------------------------------
class _BatchCache:
    """Model outputs of each batch as ``.npz`` under a key; a different key empties the folder."""

    def __init__(self, folder: Path, key: dict[str, Any] | None) -> None:
        self.folder = folder
        self.enabled = key is not None
        if not self.enabled:
            return
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        key_file = folder / "key.json"
        try:
            same = json.loads(key_file.read_text(encoding="utf-8")).get("digest") == digest
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            shutil.rmtree(folder, ignore_errors=True)
            write_json(key_file, {"digest": digest, "key": key})

    def _path(self, index: int) -> Path:
        return self.folder / f"batch_{index:06d}.npz"

    def get(self, index: int) -> dict[str, Any] | None:
        if not self.enabled or not self._path(index).is_file():
            return None
        try:
            with np.load(self._path(index), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except NUMPY_FILE_ERRORS as exc:
            log.warning("ignoring unreadable cached batch %s (%s)", self._path(index), exc)
            return None
        return {"arrays": arrays, **meta}

    def put(self, index: int, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        buf = io.BytesIO()
        payload: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **arrays}
        np.savez(buf, **payload)
        write_bytes(self._path(index), buf.getvalue())


def _chunks(seq: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(seq), n):
        yield seq[start:start + n]


def _check_outputs(who: str, out: Mapping[str, np.ndarray], n: int, k: int) -> dict[str, np.ndarray]:
    missing = [name for name in ("probs", "logits") if name not in out]
    if missing:
        raise BundleError(f"{who} returned no {missing}; expected the outputs {list(OUTPUT_NAMES)}")
    res = {name: np.asarray(out[name], np.float32) for name in OUTPUT_NAMES if name in out}
    for name in ("probs", "logits"):
        if res[name].shape != (n, k):
            raise BundleError(f"{who}: '{name}' has shape {res[name].shape}, expected ({n}, {k}) for the "
                              f"bundle's {k} classes; are the checkpoint and the bundle the same model?")
    return res


# -- the run --------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """Outputs gathered over all batches."""

    ids: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # each used image's index among the images given
    labels: list[tuple[str, ...] | None] = field(default_factory=list)
    # From the records, never from the cache: a rerun with patient ids added uses them (outputs do not change).
    patients: list[str | None] = field(default_factory=list)
    batches: int = 0
    batches_from_cache: int = 0
    outputs: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Each candidate's runtime settings (Backend.settings): as this run opened it, or, for outputs from the
    # cache, as the run that computed them did (its batches keep them). Outputs computed under different
    # settings (a rerun with other --threads reusing cached batches) record every set: {"mixed": [...]}.
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note_settings(self, name: str, settings: Mapping[str, Any]) -> None:
        """Record that some of ``name``'s outputs were computed with ``settings``."""
        have = self.settings.get(name)
        if have is None:
            self.settings[name] = dict(settings)
            return
        sets = have["mixed"] if set(have) == {"mixed"} else [have]
        if dict(settings) not in sets:
            log.warning("%s: outputs from batches computed with different runtime settings (%s and %s); the "
                        "report lists every set (run with --no-resume for one)", name, sets[0], dict(settings))
            self.settings[name] = {"mixed": [*sets, dict(settings)]}

    def select(self, keep: Sequence[bool]) -> None:
        """Keep only the images where ``keep`` (one flag per image used, in order) is True, in every output.

        Outputs that do not cover every image (a candidate that failed part-way) are dropped: they were
        unusable before too.
        """
        n = len(self.ids)
        if len(keep) != n:
            raise ValueError(f"select needs one flag per image used ({n}), got {len(keep)}")
        mask = np.asarray(keep, bool)
        self.ids = [x for x, k in zip(self.ids, keep) if k]
        self.positions = [x for x, k in zip(self.positions, keep) if k]
        self.labels = [x for x, k in zip(self.labels, keep) if k]
        self.patients = [x for x, k in zip(self.patients, keep) if k]
        for slot in self.outputs.values():
            for name, parts in list(slot.items()):
                whole = np.concatenate(parts) if parts else np.zeros((0,))
                if len(whole) == n:
                    slot[name] = [whole[mask]]
                else:
                    del slot[name]

    def add(self, source: str, arrays: Mapping[str, np.ndarray]) -> None:
        slot = self.outputs.setdefault(source, {})
        for name, a in arrays.items():
            slot.setdefault(name, []).append(a)

    def stacked(self, source: str) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.outputs.get(source, {}).items()}


def _preprocess_batch(records: Sequence[ImageRecord], cfg: PreprocessConfig, ref_cfg: PreprocessConfig | None,
                      gate: bool = True
                      ) -> tuple[list[int], np.ndarray | None, np.ndarray | None, list[dict[str, str]]]:
    """The images of a batch that can be compared, as model inputs; the others as skipped entries.

    ``gate``: images the runtime's quality gate calls ungradable are skipped too (reason ``ungradable``, the
    gate's tags as the message), judged on the candidate's preprocessing, which is what the device sees.
    """
    ok: list[int] = []
    cand: list[np.ndarray] = []
    ref: list[np.ndarray] = []
    skipped = []
    for i, rec in enumerate(records):
        try:
            data = read_bytes(rec.path)
            pre = preprocess(data, cfg, source=rec.id)
            if gate:
                verdict = assess(pre)
                if not verdict.gradable:
                    skipped.append({"id": rec.id, "reason": UNGRADABLE,
                                    "message": "the quality gate calls it ungradable (" + ", ".join(verdict.reasons)
                                               + "): a device gives no decision on it"})
                    continue
            a = pre.image
            b = preprocess(data, ref_cfg, source=rec.id).image if ref_cfg is not None else None
        except UopslError as exc:
            skipped.append({"id": rec.id, "reason": getattr(exc, "reason", type(exc).__name__), "message": str(exc)})
            continue
        ok.append(i)
        cand.append(a)
        if b is not None:
            ref.append(b)
    if not ok:
        return ok, None, None, skipped
    return ok, np.stack(cand), (np.stack(ref) if ref_cfg is not None else None), skipped


def _run_all(bundle: Path, manifest: Manifest, reference: Reference, ref_cfg: PreprocessConfig | None,
             images: Sequence[ImageRecord], specs: Sequence[CandidateSpec], config: ValidateConfig,
             cache: _BatchCache) -> _Run:
    run = _Run()
    k = len(manifest.classes)
    cfg = manifest.preprocess
    # Each CPU INT8 file also runs in its exact arithmetic, once however many CPU backends run it: the check of
    # this CPU's integer kernels (export.int8_arithmetic). A diagnosis, never a verdict.
    exact_files = sorted({s.file for s in specs if s.precision.startswith("int8") and s.backend in CPU_BACKENDS})
    with contextlib.ExitStack() as stack:
        opened: dict[str, Backend] = {}
        exact: dict[str, ExactRunner] = {}
        opened_settings: dict[str, dict[str, Any]] = {}
        started = False

        def open_all() -> None:
            for spec in specs:
                if spec.name in run.errors:
                    continue
                try:
                    opened[spec.name] = stack.enter_context(open_candidate(bundle, spec, config.threads, manifest))
                    settings = getattr(opened[spec.name], "settings", None)  # a stand-in backend may have none
                    try:
                        opened_settings[spec.name] = settings() if callable(settings) else {}
                    except Exception as exc:  # noqa: BLE001 - a description must not fail a candidate that loaded
                        opened_settings[spec.name] = {"error": f"settings not read: {exc}"}
                except Exception as exc:  # noqa: BLE001 - a broken candidate must not stop the others
                    run.errors[spec.name] = f"cannot load: {exc}"
                    log.error("%s: cannot load (%s)", spec.name, exc)
            for file in exact_files:
                try:
                    exact[file] = ExactRunner(bundle / file, config.threads, manifest.file(file).sha256)
                except (BackendError, ImportError) as exc:
                    log.info("%s: no check of this CPU's INT8 arithmetic (%s)", file, exc)

        n_batches = -(-len(images) // config.batch_size)
        for index, records in enumerate(track(_chunks(images, config.batch_size), total=n_batches,
                                                 desc="validate", show=config.show_progress)):
            cached = cache.get(index)
            run.batches += 1
            run.batches_from_cache += cached is not None
            if cached is None:
                ok, x, x_ref, skipped = _preprocess_batch(records, cfg, ref_cfg, gate=not config.keep_ungradable)
                arrays: dict[str, np.ndarray] = {}
                errors: dict[str, str] = {}
                if ok and x is not None:
                    if not started:
                        open_all()
                        started = True
                    ref_out = _check_outputs("the reference", reference.infer(x if x_ref is None else x_ref), len(ok), k)
                    arrays.update({f"ref__{n}": a for n, a in ref_out.items()})
                    for spec in specs:
                        if spec.name in run.errors or spec.name not in opened:
                            continue
                        try:
                            out = _check_outputs(spec.name, opened[spec.name].infer(x), len(ok), k)
                        except Exception as exc:  # noqa: BLE001 - record it; the other candidates go on
                            errors[spec.name] = f"inference failed: {exc}"
                            run.errors[spec.name] = errors[spec.name]
                            log.error("%s: %s", spec.name, errors[spec.name])
                            continue
                        arrays.update({f"{spec.name}__{n}": a for n, a in out.items()})
                    for file, runner in list(exact.items()):
                        try:
                            arrays[f"{EXACT_PREFIX}{file}__logits"] = runner.logits(x)
                        except Exception as exc:  # noqa: BLE001 - a diagnosis: its failure stops nothing
                            log.info("%s: no check of this CPU's INT8 arithmetic (%s)", file, exc)
                            del exact[file]
                meta = {"ok": ok, "skipped": skipped, "errors": {**run.errors, **errors},
                        # what computed these outputs, for a rerun that takes them from the cache
                        "settings": {name: opened_settings[name] for name in opened_settings
                                     if f"{name}__probs" in arrays}}
                cache.put(index, arrays, meta)
                cached = {"arrays": arrays, **meta}
            else:
                run.errors.update({kk: v for kk, v in cached["errors"].items() if kk not in run.errors})
            for name, settings in (cached.get("settings") or {}).items():
                run.note_settings(name, settings)
            run.skipped.extend(cached["skipped"])
            ok = cached["ok"]
            if not ok:
                continue
            run.ids.extend(records[i].id for i in ok)
            run.positions.extend(index * config.batch_size + i for i in ok)
            run.labels.extend(records[i].labels for i in ok)
            run.patients.extend(records[i].patient for i in ok)
            for source in ["ref", *(s.name for s in specs), *(EXACT_PREFIX + f for f in exact_files)]:
                # By prefix, not by splitting at "__": a file's own name may hold "__".
                part = {kk[len(source) + 2:]: v for kk, v in cached["arrays"].items() if kk.startswith(f"{source}__")}
                if part:
                    run.add(source, part)
    return run


# -- images for the report ----------------------------------------------------------------------------------
def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _thumbnail(rec: ImageRecord, cfg: PreprocessConfig, side: int = 112) -> str | None:
    try:
        img = preprocess(read_bytes(rec.path), cfg, source=rec.id).image
    except UopslError:
        return None
    small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _roc_png(out: Path, name: str, manifest: Manifest, truth: Truth, ref: np.ndarray, cand: np.ndarray) -> Path | None:
    from uopsl.runtime.plots import overlay_series, roc_plot

    rc: dict[str, Any] = {}
    cc: dict[str, Any] = {}
    rp: dict[str, tuple[float, float]] = {}
    cp: dict[str, tuple[float, float]] = {}
    for k, spec in enumerate(manifest.classes):
        y = truth.positive[:, k]
        if not truth.defined[k] or not y.any() or y.all():
            continue
        rc[spec.name], cc[spec.name] = roc_curve(y, ref[:, k]), roc_curve(y, cand[:, k])
        for probs, points in ((ref, rp), (cand, cp)):
            called = probs[:, k] >= spec.threshold
            points[spec.name] = (float(called[~y].mean()), float(called[y].mean()))
    if not rc:
        return None
    series = overlay_series(rc, cc, reference_label="reference", candidate_label=name,
                            reference_points=rp, candidate_points=cp)
    truth_word = "labels" if truth.source == "labels" else "reference decisions"
    return roc_plot(series, out / f"roc_{_slug(name)}.png", title=f"ROC: reference vs {name}",
                    subtitle=f"truth: {truth_word}; markers: manifest thresholds")


# -- the entry point ---------------------------------------------------------------------------------------
def _cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo, else the device-tree model of a Jetson; else the platform's)."""
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    with contextlib.suppress(OSError):
        model = Path("/sys/firmware/devicetree/base/model").read_bytes().rstrip(b"\0").decode("utf-8", "replace")
        if model.strip():
            return model.strip()
    return platform.processor() or None


def _torch_version() -> str | None:
    """PyTorch's version: the imported module's, else the installed package's (never imports torch)."""
    import sys

    mod = sys.modules.get("torch")
    if mod is not None:
        return str(getattr(mod, "__version__", "")) or None
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """Where the run happened: CPU model and architecture, Python, and the versions of what computed the outputs
    (parity.json's ``machine``; ``uopsl evaluate``'s eval.json builds on it)."""
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "arch": platform.machine(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                            "cpu_int8": int8_cpu_class()}
    torch_version = _torch_version()
    if torch_version:
        info["torch"] = torch_version
    for mod in ("onnxruntime", "openvino", "tensorrt", "numpy", "cv2"):
        if available(mod):
            with contextlib.suppress(Exception):
                info[mod] = __import__(mod).__version__
    return info


@dataclass(frozen=True)
class _Labels:
    """The images left to validate on after the label check, and what the check found (``unknown_labels``)."""

    images: tuple[ImageRecord, ...]
    dropped: tuple[ImageRecord, ...]
    unknown: Mapping[str, int]
    near: Mapping[str, str]
    policy: str

    def report(self) -> dict[str, Any]:
        return {"policy": self.policy, "labels": dict(self.unknown), "near_misses": dict(self.near),
                "n_dropped_images": len(self.dropped), "dropped_ids": [r.id for r in self.dropped]}

    def note(self) -> str | None:
        """What the report's notes say about labels that are no class of the bundle (None: there are none)."""
        if not self.unknown:
            return None
        listed = ", ".join(f"{lab} ({k} image(s)" + (f"; the bundle has {self.near[lab]!r}" if lab in self.near
                                                     else "") + ")" for lab, k in self.unknown.items())
        if self.dropped:
            return (f"{len(self.dropped)} image(s) left out (unknown_labels={self.policy}): they carry label(s) "
                    f"that are not classes of this bundle: {listed}")
        return (f"label(s) that are not classes of this bundle, counted as negatives for every bundle class "
                f"(unknown_labels={self.policy}): {listed}")


def _check_labels(images: Sequence[ImageRecord], manifest: Manifest, label_space: Sequence[str] | None,
                  policy: str) -> _Labels:
    """Labels that are no class of the bundle refused, dropped or kept (counted as negatives), by ``policy``."""
    if not images:
        raise ConfigError("no images to validate on; check --data (and --limit)")
    if label_space is not None and any(r.labels is None for r in images):
        raise ConfigError("label_space is given but some images have no labels")
    unknown = unknown_labels(manifest.class_names, images) if label_space is not None else {}
    dropped: list[ImageRecord] = []
    if unknown and policy == UNKNOWN_LABELS_REFUSE:
        raise ConfigError(unknown_labels_message(unknown, manifest.class_names))
    if unknown and policy == UNKNOWN_LABELS_DROP:
        known = set(manifest.class_names)
        dropped = [r for r in images if set(r.labels or ()) - known]
        images = [r for r in images if not set(r.labels or ()) - known]
        if not images:
            raise ConfigError(f"every one of the {len(dropped)} images carries a label that is no class of this "
                              f"bundle {list(manifest.class_names)} ({', '.join(unknown)}): nothing left to "
                              "validate on")
    return _Labels(tuple(images), tuple(dropped), unknown, label_near_misses(list(unknown), manifest.class_names),
                   policy)


@dataclass(frozen=True)
class _ReferenceFacts:
    """What the reference declares about itself (see :class:`Reference`), read once."""

    fingerprint: str
    kind: str
    source: str
    file: Any
    sha256: Any
    preprocess: PreprocessConfig | None
    # The manifest's preprocessing fields that differ from the reference's: name -> [reference, bundle].
    diffs: Mapping[str, list[Any]]

    @property
    def trust_class(self) -> str:
        """PyTorch, the bundle's ONNX file or unknown (:func:`uopsl.runtime.bundle.parity_reference_kind`)."""
        return parity_reference_kind({"reference_kind": self.kind, "reference_source": self.source,
                                      "reference_fingerprint": self.fingerprint})

    @classmethod
    def of(cls, reference: Reference, manifest: Manifest) -> _ReferenceFacts:
        fingerprint = getattr(reference, "fingerprint", "")
        # The kind must be declared (TorchReference: pytorch; OnnxReference: onnx): anything else, e.g. a runtime
        # backend passed as the reference, is "unknown" and can never start a chain of trust (runtime.bundle).
        kind = str(getattr(reference, "reference_kind", "") or REFERENCE_UNKNOWN)
        source = str(getattr(reference, "reference_source", "") or (f"{kind}:{fingerprint}" if fingerprint else kind))
        pre: PreprocessConfig | None = getattr(reference, "preprocess", None)
        diffs = ({k: [ref, bundle] for k, (bundle, ref) in manifest.preprocess.differences(pre).items()}
                 if pre is not None else {})
        return cls(fingerprint, kind, source, getattr(reference, "reference_file", None),
                   getattr(reference, "reference_sha256", None), pre, diffs)

    def note(self) -> str | None:
        """What the report's notes say about a manifest whose preprocessing differs from the reference's."""
        if not self.diffs:
            return None
        return ("the manifest's preprocessing differs from the reference's (checkpoint) in "
                + ", ".join(f"{k}: reference {v[0]!r}, bundle {v[1]!r}" for k, v in self.diffs.items())
                + "; each side was fed its own preprocessing")


def _cache_key(cfg: ValidateConfig, manifest: Manifest, ref: _ReferenceFacts, images: Sequence[ImageRecord],
               image_sha: Mapping[str, str | None], specs: Sequence[CandidateSpec], machine: Mapping[str, Any],
               reference: Reference, context: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the cached outputs depend on (None: no cache; ``--no-resume``, or a reference without a fingerprint)."""
    if not (cfg.resume and ref.fingerprint):
        return None  # and the reference's device is not asked for: nothing needs it
    return {"version": __version__, "preprocess_version": PREPROCESS_VERSION,
            "files": {f.path: f.sha256 for f in manifest.files}, "reference": ref.fingerprint,
            "images": [[r.id, str(r.path), image_sha[r.id]] for r in images],
            "preprocess": manifest.preprocess.to_dict(),
            "reference_preprocess": ref.preprocess.to_dict() if ref.preprocess is not None and ref.diffs else None,
            "candidates": [s.name for s in specs], "batch_size": cfg.batch_size,
            "quality_gate": None if cfg.keep_ungradable else QualityConfig().to_dict(),
            # Outputs depend on the machine too (the CPU's INT8 kernels, the runtimes' versions), and batches
            # cached before a CPU INT8 file also ran in its exact arithmetic lack those outputs.
            "machine": {k: v for k, v in machine.items() if k in ("cpu_int8", "onnxruntime", "openvino")},
            # The reference's outputs depend on what computes them: another PyTorch, or the GPU instead of
            # the CPU (TF32 off, but other kernels), must recompute them, not reuse them silently.
            "torch": machine.get("torch"), "reference_device": _reference_device(reference, context),
            "arrays": CACHE_ARRAYS}


def _truth(manifest: Manifest, run: _Run, ref: Mapping[str, np.ndarray],
           label_space: Sequence[str] | None) -> tuple[Truth | None, list[str]]:
    """What the candidates are judged against (None: nothing can be), and why the run fails (empty: it does not)."""
    ref_bad = nonfinite_images(ref)
    if ref_bad.any():
        # Nothing can be judged against a reference that overflowed: the run fails, the files are not blamed.
        why = "the reference: " + nonfinite_reason(ref_bad, run.ids)
        log.error("%s; no candidate can be judged against it", why)
        return None, [why]
    if label_space is not None:
        return truth_from_labels(manifest, [lab or () for lab in run.labels], label_space), []
    return truth_from_reference(manifest, ref["probs"]), []


def _not_judged(entry: dict[str, Any], why: str, **extra: Any) -> dict[str, Any]:
    entry.update({"passed": False, "verdict": FAIL, "error": why, "reasons": [why], **extra})
    return entry


def _judge_candidate(spec: CandidateSpec, manifest: Manifest, run: _Run, ref: Mapping[str, np.ndarray],
                     truth: Truth | None, run_reasons: Sequence[str], cfg: ValidateConfig
                     ) -> tuple[dict[str, Any], np.ndarray | None]:
    """``spec``'s entry in the report, and its probabilities when it was judged on every gate (its ROC and flips
    are drawn; None: it was not).

    A candidate that could not run here is marked ``judged: False`` (its FAIL is never recorded); one with
    non-finite outputs, or probabilities outside [0, 1], FAILs with the reason, and the others are still judged.
    """
    entry: dict[str, Any] = {"name": spec.name, "backend": spec.backend, "file": spec.file,
                             "precision": spec.precision, "sha256": manifest.file(spec.file).sha256,
                             # the verdict holds for these settings (outputs from the cache: not reopened)
                             "runtime_settings": run.settings.get(spec.name)}
    if spec.name in run.errors:
        return _not_judged(entry, run.errors[spec.name], judged=False), None
    cand = run.stacked(spec.name)
    bad = nonfinite_images(cand)
    if truth is None:
        return _not_judged(entry, f"not judged: {run_reasons[0]}", judged=False), None
    ids = run.ids
    if bad.any():
        why = nonfinite_reason(bad, ids)
        log.error("%s: FAIL (%s)", spec.name, why)
        return _not_judged(entry, why, non_finite={"n": int(bad.sum()), "of": len(bad),
                                                   "ids": [ids[i] for i in np.flatnonzero(bad)][:50]}), None
    num = numerical(ref, cand)
    try:
        clin = clinical(manifest, truth, ref["probs"], cand["probs"], ids, n_boot=cfg.n_boot, seed=cfg.seed,
                        alpha=BOOTSTRAP_ALPHA, reference_logits=ref.get("logits"),
                        candidate_logits=cand.get("logits"), patients=run.patients)
    except BundleError as exc:  # e.g. this file's probabilities outside [0, 1]: its FAIL, not the run's end
        log.error("%s: FAIL (%s)", spec.name, exc)
        return _not_judged(entry, str(exc), numerical=num), None
    if spec.precision.startswith("int8") and spec.backend in CPU_BACKENDS:
        exact_out = run.stacked(EXACT_PREFIX + spec.file).get("logits")
        if exact_out is not None and len(exact_out) == len(cand["logits"]) and np.isfinite(exact_out).all():
            file_info = manifest.file(spec.file).info
            entry["arithmetic"] = arithmetic_check(ref["logits"], cand["logits"], exact_out, backend=spec.backend,
                                                   cpu_int8=int8_cpu_class(), precision=spec.precision,
                                                   reduce_range=bool(file_info.get("reduce_range")))
            if entry["arithmetic"]["note"]:
                log.info("%s: %s", spec.name, entry["arithmetic"]["note"])
        else:
            log.warning("%s: no check of this CPU's INT8 arithmetic (the file could not be run in its exact "
                        "arithmetic on every image; see the INFO log)", spec.name)
    gates = candidate_gates(cfg.gates, spec)
    verdict = judge(gates, num, clin, on=cfg.judge_on)
    if verdict.estimate_checks:  # judged on the bounds: the measured figures beside the bounds compared
        entry["estimate_checks"] = [asdict(c) for c in verdict.estimate_checks]
    entry.update({"passed": verdict.passed, "verdict": verdict.status, "reasons": list(verdict.reasons),
                  "judged_on": cfg.judge_on,
                  "checks": [asdict(c) for c in verdict.checks], "numerical": num, "clinical": clin,
                  "gates": gates.to_dict(), "headroom": decision_headroom(manifest, gates, ref, cand)})
    return entry, cand["probs"]


def _illustrate(entry: dict[str, Any], out_dir: Path, manifest: Manifest, truth: Truth,
                ref: Mapping[str, np.ndarray], cand_probs: np.ndarray, images: Mapping[str, ImageRecord],
                max_thumbnails: int, html_images: dict[str, str]) -> None:
    """A judged candidate's ROC overlay (``roc_<name>.png``, and in ``html_images``) and thumbnails of the first
    ``max_thumbnails`` images whose decisions or findings it changed."""
    png = _roc_png(out_dir, entry["name"], manifest, truth, ref["probs"], cand_probs)
    if png is not None:
        entry["roc_png"] = png.name
        html_images[f"roc:{entry['name']}"] = _png_data_uri(png)
    clin = entry["clinical"]
    for item in [*clin["flips"]["items"][:max_thumbnails], *clin["finding_changes"]["items"][:max_thumbnails]]:
        key_t = f"thumb:{item['id']}"
        if key_t not in html_images:
            uri = _thumbnail(images[item["id"]], manifest.preprocess)
            if uri:
                html_images[key_t] = uri


#: parity.json's ``min_cases_per_class``.
_MIN_CASES_SECTION = {
    "positive": MIN_CASES_PER_CLASS, "negative": MIN_CASES_PER_CLASS,
    "applies_to": "the auc_drop and sensitivity_drop gates, per class and for the referral decision",
    "why": "with fewer, the figure says almost nothing (one image moves an AUC or a sensitivity by 0.1 or more): "
           "the class is listed as not evaluated (INCOMPLETE) and its figures are reported, not gated. Above the "
           "minimum the sensitivity gate still allows no lost positive below 1 / gate positives (100 at the "
           "default 0.01): one lost case fails it"}


def _bundle_section(root: Path, manifest: Manifest, manifest_sha256: str | None) -> dict[str, Any]:
    """parity.json's ``bundle``: the model judged, how its thresholds were chosen, and every file's sha256."""
    return {"path": str(root), "model_name": manifest.model_name, "backbone": manifest.backbone,
            "head": manifest.head, "referral_rule": manifest.referral_rule,
            "referral_threshold": manifest.referral_threshold,
            "classes": [{"name": c.name, "threshold": c.threshold, "referable": c.referable}
                        for c in manifest.classes],
            # what the model may be used for (a demonstration model's PASS is no clinical evidence)
            "intended_use": {**manifest.intended_use.to_dict(), "words": manifest.intended_use.describe()},
            # how `uopsl export` says each threshold was chosen (None: a bundle from before the note)
            "operating_points": manifest.notes.get("operating_points"),
            # manifest.json's bytes as read before this run recorded its verdicts in it (recording changes
            # them); its content checksum; and what it says the bundle was exported from
            "manifest_sha256": manifest_sha256, "manifest_content_sha256": manifest.content_sha256,
            "checkpoint_weights_sha256": manifest.notes.get(CHECKPOINT_DIGEST_NOTE) or None,
            # each file's sha256, checked against its bytes when this run started (verify_or_raise)
            "files": [{"path": f.path, "kind": f.kind, "precision": f.precision, "sha256": f.sha256,
                       "size": f.size} for f in manifest.files]}


def _reference_section(reference: Reference, ref: _ReferenceFacts, context: Mapping[str, Any] | None,
                       manifest: Manifest) -> dict[str, Any]:
    """parity.json's ``reference``: what the candidates were compared with."""
    return {"describe": _describe(reference), "fingerprint": ref.fingerprint, "kind": ref.kind, "source": ref.source,
            **({"file": str(ref.file), "sha256": str(ref.sha256)} if ref.file and ref.sha256 else {}),
            **_checkpoint_facts(context, manifest),
            "preprocess": (ref.preprocess or manifest.preprocess).to_dict()}


def _data_section(images: Sequence[ImageRecord], run: _Run, manifest: Manifest, truth: Truth | None,
                  label_space: Sequence[str] | None, labels: _Labels, image_sha: Mapping[str, str | None],
                  patients: Mapping[str, Any], cfg: ValidateConfig, context: Mapping[str, Any] | None,
                  copies: _Copies, seen: _Seen) -> dict[str, Any]:
    """parity.json's ``data``: the images used (ids and content digests), those skipped, the truth, the
    byte-identical copies left out and whether the images made the checkpoint (``held_out``)."""
    ids = run.ids
    used_sha = [image_sha.get(i) for i in ids]
    return {"spec": str((context or {}).get("data") or f"{len(images)} images passed to validate_bundle"),
            # n_images = n_used + n_skipped + n_duplicate_content (byte-identical copies left out)
            "n_images": len(images), "n_used": len(ids), "n_skipped": len(run.skipped),
            # of the skipped, those the runtime's quality gate rejected (decodable, but no device decision)
            "n_ungradable": sum(1 for sk in run.skipped if sk.get("reason") == UNGRADABLE),
            "quality_gate": "kept" if cfg.keep_ungradable else "left out",
            "truth": truth.source if truth is not None else None,
            "label_space": list(label_space) if label_space is not None else None,
            "classes_with_truth": ([c.name for c, d in zip(manifest.classes, truth.defined) if d]
                                   if truth is not None else []),
            "image_ids": list(ids), "image_ids_sha256": _ids_digest(ids),
            "images_sha256": images_digest(used_sha, run.labels), "images_sha256_method": IMAGES_DIGEST_METHOD,
            "image_sha256": used_sha, "unknown_labels": labels.report(), "patients": patients,
            "n_duplicate_content": len(copies.dropped), "duplicate_content": copies.report(),
            # as eval.json's: images per role that made the checkpoint (None: not known); False: not held out
            "images_seen_in_training": dict(seen.per_role) if seen.per_role is not None else None,
            "n_images_seen_in_training": seen.n_seen, "held_out": seen.held_out, "images_seen": seen.report(),
            **({"image_patients": list(run.patients)} if patients["known"] else {})}


def _confidence_section(cfg: ValidateConfig, n: int, patients: Mapping[str, Any]) -> dict[str, Any]:
    """parity.json's ``confidence``: how the exact bounds and the proportion intervals were computed."""
    sizes = zero_change_sample_sizes(cfg.gates)
    return {"level": CONFIDENCE, "method": "exact (Clopper-Pearson) one-sided upper bound",
            "zero_change_min_images": sizes,
            "line": zero_change_line(sizes, n, n_patients=patients["n_patients"] if patients["known"] else None),
            **({"independence_note": INDEPENDENCE_NOTE} if patients["known"] else {}),
            "proportion_intervals": {"level": 1.0 - PROPORTION_ALPHA,
                                     "method": PROPORTION_METHOD_PATIENTS if patients["known"] else PROPORTION_METHOD,
                                     "unit": "patient" if patients["known"] else "image",
                                     "two_sided": True, "gated": False,
                                     "of": "each class's and the referral's sensitivity and specificity, "
                                           "reference and candidate (fields *_ci95: [low, high])"},
            "sensitivity_difference": {"level": 1.0 - PROPORTION_ALPHA,
                                       "method": NEWCOMBE_PAIRED_CLUSTERED if patients["known"] else NEWCOMBE_PAIRED,
                                       "unit": "patient" if patients["known"] else "image", "gated": False,
                                       "of": "candidate minus reference sensitivity, each class's and "
                                             "the referral's (field sensitivity_difference)"}}


def _cache_section(cache: _BatchCache, run: _Run, cfg: ValidateConfig) -> dict[str, Any]:
    """parity.json's ``cache``: whether the outputs came from an earlier run's cache."""
    return {"enabled": cache.enabled, "batches": run.batches, "batches_from_cache": run.batches_from_cache,
            "outputs_from_cache": ("all" if run.batches and run.batches_from_cache == run.batches
                                   else "some" if run.batches_from_cache else "none"),
            **({} if cache.enabled else {"why_disabled": "--no-resume" if not cfg.resume else
                                         "the reference has no fingerprint to key its outputs by"})}


def validate_bundle(
    bundle: str | os.PathLike[str],
    reference: Reference,
    images: Sequence[ImageRecord],
    out: str | os.PathLike[str],
    config: ValidateConfig | None = None,
    *,
    label_space: Sequence[str] | None = None,
    context: Mapping[str, Any] | None = None,
    availability: Availability | None = None,
    exclude: Sequence[ExcludedCandidate] = (),
) -> ParityReport:
    """Validate every candidate of ``bundle`` against ``reference`` on ``images``; write the reports to ``out``.

    label_space: the dataset's class names when ``images`` carry labels (None:
        unlabelled; the reference's decisions become the truth).
    context: facts for the report and the saved config (checkpoint, data source, command line...);
        ``context["checkpoint_weights_sha256"]`` (the reference checkpoint's, as
        ``uopsl.train.checkpoint.checkpoint_digest`` computes it) goes into the report's ``reference``.
    exclude: (file, backend) pairs not to judge, listed among the skipped candidates with their reason;
        the reference's own ``excluded_candidates`` are added (an ONNX reference leaves itself out).
    The reference may carry ``preprocess`` (its own PreprocessConfig), ``fingerprint``
    (enables the output cache), ``describe()``, ``reference_kind``, ``reference_source`` and
    ``excluded_candidates`` (see :class:`Reference`).
    Raises :class:`BundleError` for a bundle that fails verification or does not
    match the reference, :class:`ConfigError` for unusable inputs.
    """
    cfg = config or ValidateConfig()
    source_revision()  # the code this run starts with (cached), not what a checkout holds hours later
    root = Path(bundle)
    out_dir = Path(out)
    _remove_own_temporaries(out_dir)
    try:  # the manifest as it stands before this run records anything in it (read before it is verified)
        manifest_sha256: str | None = sha256_file(root / MANIFEST)
    except OSError:
        manifest_sha256 = None
    # On a device that trusts signing keys, only a signed bundle's files are run (runtime/signing.py).
    manifest, _ = open_trusted(root)
    labels = _check_labels(images, manifest, label_space, cfg.unknown_labels)
    # One order whatever order the data listed them in (by id, then file): the bootstrap draws by position, so
    # the same photographs in another row order gave other intervals under the same seed (a review).
    images = canonical_order(labels.images)
    av = availability or detect_availability()
    exclusions = (*exclude, *getattr(reference, "excluded_candidates", ()))
    specs, skipped_candidates = plan_candidates(root, manifest, cfg.backends, av, exclusions)
    if not specs:
        raise BundleError(f"no candidate to validate in {root} with backends {cfg.backends}: "
                          + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped_candidates))
    notes: list[str] = []

    def warn(note: str | None) -> None:
        if note:
            notes.append(note)
            log.warning(note)

    warn(labels.note())  # before the reference is asked anything (what it says about itself may fail)
    ref = _ReferenceFacts.of(reference, manifest)
    warn(ref.note())
    # Each image's content: the report's data fingerprint, the cache key (a changed photograph invalidates its
    # cached outputs whatever its time; a copy with a new time keeps them), and one photograph counted once.
    shas = [_image_sha256(r.path) for r in images]
    image_sha = {r.id: sha for r, sha in zip(images, shas)}
    machine = machine_facts()
    cache = _BatchCache(out_dir / _CACHE_DIR, _cache_key(cfg, manifest, ref, images, image_sha, specs, machine,
                                                         reference, context))
    run = _run_all(root, manifest, reference, ref.preprocess if ref.diffs else None, images, specs, cfg, cache)
    by_id = {r.id: r for r in images}
    # A photograph counts once: each later byte-identical copy among the images compared is left out of every
    # figure (unreadable files stay skipped with their own reason).
    copies = distinct_content([images[i] for i in run.positions], [shas[i] for i in run.positions])
    if copies.dropped:
        run.select(copies.keep)
    warn(copies.note())
    n = len(run.ids)
    if n == 0:
        raise ConfigError(f"none of the {len(images)} images could be compared (unreadable, or ungradable by the "
                          "runtime's quality gate: --keep-ungradable compares those too); first reasons: "
                          + "; ".join(f"{s['id']}: {s['message']}" for s in run.skipped[:3]))
    # Photographs that made the checkpoint (training, or the validation images its thresholds were chosen on):
    # the verdict is not a release verdict, and nothing is recorded (record.withheld says why).
    seen = images_seen((context or {}).get("checkpoint"), [shas[i] for i in run.positions])
    warn(seen.note())
    # Images an INT8 file was calibrated on: its FAIL stands, its PASS is not a held-out pass (not recorded).
    calibrated = calibration_overlaps(root, manifest, [s.file for s in specs], [shas[i] for i in run.positions])
    for overlap in calibrated.values():
        warn(overlap.note())
    ref_out = run.stacked("ref")
    truth, run_reasons = _truth(manifest, run, ref_out, label_space)
    if truth is not None:
        notes.extend(truth.notes)
    candidates: list[dict[str, Any]] = []
    html_images: dict[str, str] = {}
    for spec in specs:
        entry, cand_probs = _judge_candidate(spec, manifest, run, ref_out, truth, run_reasons, cfg)
        if spec.file in calibrated:
            entry["calibration_images"] = calibrated[spec.file].report()
        if cand_probs is not None and truth is not None:
            _illustrate(entry, out_dir, manifest, truth, ref_out, cand_probs, by_id, cfg.max_thumbnails,
                        html_images)
            log.info("%s: %s (%d flips, max |dp| %.2e)", spec.name, entry["verdict"],
                     entry["clinical"]["flips"]["n"], entry["numerical"]["max_abs_prob_diff"])
        candidates.append(entry)
    per_layer = _per_layer(root, manifest, specs, images, cfg) if cfg.per_layer else {}
    status = FAIL if run_reasons else overall_status([c["verdict"] for c in candidates])
    patients = patient_facts(run.patients)
    weak = parity_run_problem(cfg.gates.to_dict(), n, patients["n_patients"] if patients["known"] else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Before parity.json, which records its sha256: every figure can be recomputed from it (see write_outputs_csv).
    outputs_csv = write_outputs_csv(out_dir / OUTPUTS_CSV, manifest, run, specs)
    report = jsonable({
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "toolkit_source": source_revision(),
        "machine": machine,
        "passed": status == PASS,
        "verdict": status,
        "reasons": run_reasons,
        "gates": cfg.gates.to_dict(),
        "judged_on": cfg.judge_on,
        "gates_are_default": cfg.gates.is_default,
        "gates_looser_than_default": cfg.gates.looser_than_default,
        "min_cases_per_class": _MIN_CASES_SECTION,
        "bundle": _bundle_section(root, manifest, manifest_sha256),
        "reference": _reference_section(reference, ref, context, manifest),
        "preprocess": {"bundle": manifest.preprocess.to_dict(), "differences": dict(ref.diffs)},
        "data": _data_section(images, run, manifest, truth, label_space, labels, image_sha, patients, cfg, context,
                              copies, seen),
        "bootstrap": {"n_boot": cfg.n_boot, "alpha": BOOTSTRAP_ALPHA, "seed": cfg.seed,
                      "unit": "patient" if patients["known"] else "image",
                      **({"n_patients": patients["n_patients"]} if patients["known"] else {}),
                      "method": bootstrap_method(patients)},
        "confidence": _confidence_section(cfg, n, patients),
        "cache": _cache_section(cache, run, cfg),
        "outputs_csv": outputs_csv,
        "context": dict(context or {}),
        "notes": notes,
        "skipped_images": run.skipped,
        "skipped_candidates": skipped_candidates,
        "candidates": candidates,
        "per_layer": per_layer,
    })
    json_path, html_path = json_path_of(out_dir), out_dir / "parity.html"
    plan = plan_records(root, report, json_path, enabled=cfg.record, run_failed=bool(run_reasons),
                        run_problem=weak, ref_class=ref.trust_class, ref_kind=ref.kind, withhold=seen.no_record(),
                        withhold_pass=withheld_passes(calibrated))
    report["record"] = plan.section()
    _set_release(report, weak, context)
    write_json(out_dir / "parity_config.json", jsonable({"bundle": str(root), "config": cfg.to_dict(),
                                                         "context": dict(context or {}),
                                                         "candidates": [asdict(s) for s in specs]}))
    from uopsl.export.parity_html import render_html

    _say_replaced_report(json_path, manifest, {str(c["name"]) for c in candidates})
    write_json(json_path, report)
    write_text(html_path, render_html(report, html_images))
    _remove_stale_rocs(out_dir, {str(c["roc_png"]) for c in candidates if c.get("roc_png")})
    # After the reports: a read-only bundle costs the record, not the run.
    outcome = record_verdicts(root, plan, {f.path: f.sha256 for f in manifest.files}, out_dir)
    if outcome is not plan:  # the manifest did not take what the reports said it would: they say what it holds
        report["record"] = outcome.section()
        _set_release(report, weak, context)
        write_json(json_path, report)
        write_text(html_path, render_html(report, html_images))
    return ParityReport(status == PASS, report, json_path, html_path, status)


def _model_digest(files: Sequence[Mapping[str, Any]]) -> str | None:
    """The FP32 ONNX file's sha256 among a report's or manifest's files: which model a report is about."""
    return next((str(f.get("sha256")) for f in files
                 if f.get("kind") == "onnx" and f.get("precision") == "fp32"), None)


def _say_replaced_report(json_path: Path, manifest: Manifest, judged: set[str]) -> None:
    """Warn when this run replaces a report that manifest records may still name: another model's (a review
    validated two bundles into one ``--out``, and the first bundle's record then pointed at a report about the
    second, on other data), or this model's with candidates this run does not judge (``judged``: this run's
    candidate names), whose records keep naming a report that no longer holds them."""
    try:
        old = json.loads(json_path.read_text(encoding="utf-8"))
        old_bundle = old["bundle"]
        old_model = _model_digest(old_bundle["files"])
        old_judged = {str(c["name"]) for c in old.get("candidates", ()) if c.get("judged") is not False}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no report there, or not one of ours: nothing to say
    new_model = _model_digest([{"kind": f.kind, "precision": f.precision, "sha256": f.sha256} for f in manifest.files])
    if old_model is not None and new_model is not None and old_model != new_model:
        log.warning("%s held the report of another model (bundle %s, validated %s), which this run replaces: that "
                    "bundle's manifest records still name it; validate each bundle into its own --out folder",
                    json_path, old_bundle.get("path", "?"), old.get("created", "?"))
        return
    dropped = sorted(old_judged - judged)
    if dropped:
        log.warning("%s held verdicts on %s (validated %s), which this run does not judge: their manifest records "
                    "still name this report, which will no longer hold them; validate them again, or into another "
                    "--out folder", json_path, ", ".join(dropped), old.get("created", "?"))


def _remove_stale_rocs(out_dir: Path, written: set[str]) -> None:
    """Delete the ROC plots an earlier run left in ``out_dir`` for candidates this run did not judge: the new
    parity.html does not show them, and beside it they read as this run's (a review found an OpenVINO plot next
    to a report without OpenVINO)."""
    stale = [f for f in out_dir.glob("roc_*.png") if f.name not in written and f.is_file()]
    for f in stale:
        try:
            f.unlink()
        except OSError as exc:
            log.warning("could not remove %s, an earlier run's ROC plot (%s)", f, exc)
    if stale:
        log.info("removed %d ROC plot(s) of an earlier run from %s", len(stale), out_dir)


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def _checkpoint_facts(context: Mapping[str, Any] | None, manifest: Manifest) -> dict[str, Any]:
    """The reference checkpoint's weights sha256 (``context["checkpoint_weights_sha256"]``, as the caller computed
    it with ``uopsl.train.checkpoint.checkpoint_digest``, the function export records with) and whether it is the
    one the manifest names; nothing for a reference without a checkpoint (the ONNX one)."""
    digest = (context or {}).get(CHECKPOINT_DIGEST_NOTE)
    if not digest:
        return {}
    recorded = manifest.notes.get(CHECKPOINT_DIGEST_NOTE)
    accepted = {str(recorded), str(manifest.notes.get(TEACHER_DIGEST_NOTE) or recorded)}
    # True: the checkpoint the manifest records (or the original of its `uopsl qat` checkpoint); None: not recorded
    return {CHECKPOINT_DIGEST_NOTE: str(digest),
            "checkpoint_matches_bundle": (str(digest) in accepted) if recorded else None}


def candidate_gates(gates: ParityGates, spec: CandidateSpec) -> ParityGates:
    """The gates ``spec`` is judged by: ``gates``, plus issue 4's FP32 tolerance for the FP32 file on
    ``ort-cpu`` (max |prob diff| <= :data:`~uopsl.runtime.bundle.REFERENCE_MAX_PROB_DIFF`, or the user's
    stricter limit).

    That file's PASS makes it the ONNX reference a device validates its engines and INT8 files against, so
    the decision gates alone are not enough: a review passed an FP32 file off by 1e-2 everywhere because no
    decision crossed a threshold. Other FP32 candidates (GPUs, where TF32 or another kernel order moves the
    outputs by more) keep the decision gates only.
    """
    if spec.precision != "fp32" or spec.backend != ONNX_REFERENCE_BACKEND:
        return gates
    limit = REFERENCE_MAX_PROB_DIFF if gates.max_prob_diff is None else min(gates.max_prob_diff,
                                                                            REFERENCE_MAX_PROB_DIFF)
    return replace(gates, max_prob_diff=limit)


def _set_release(report: dict[str, Any], weak: str | None, context: Mapping[str, Any] | None) -> None:
    """``release_pass`` (a PASS a release may rest on), its reasons when not, and the ``headline`` that says so.

    A PASS under gates looser than the defaults, on fewer than
    :data:`~uopsl.runtime.bundle.MIN_PARITY_IMAGES` images or images of fewer than
    :data:`~uopsl.runtime.bundle.MIN_PARITY_PATIENTS` patients (where known), against another
    checkpoint or on images that made the checkpoint (``data.held_out`` False)
    is what the user asked for (exit 0), but not a release pass: the headline
    says so in words, and ``release_pass`` says it to a script.
    """
    status = str(report["verdict"])
    reasons: list[str] = []
    if status != PASS:
        # Which file failed on which backend, and why: "the verdict is FAIL" alone gave a release script nothing.
        failing = [f"{c['name']} {c.get('verdict') or 'FAIL'}"
                   + (f" ({'; '.join(map(str, c.get('reasons') or ())) or c.get('error') or 'no reason given'})")
                   for c in report.get("candidates", ()) if not c.get("passed")]
        reasons.append(f"the verdict is {status}" + (f": {' | '.join(failing)}" if failing else ""))
    if weak:  # each problem on its own, in parity_run_problem's words (the rule `auto` applies to records)
        looser = parity_gates_problem(report["gates"])
        known = (report["data"].get("patients") or {})
        few = parity_run_problem(ParityGates().to_dict(), report["data"]["n_used"],
                                 known.get("n_patients") if known.get("known") else None)
        reasons.extend(r for r in (looser, few) if r)
    if (context or {}).get("other_checkpoint"):
        reasons.append("judged against another checkpoint than the bundle's (--other-checkpoint: a study)")
    data = report.get("data") or {}
    if data.get("held_out") is False:
        seen = data.get("images_seen") or {}
        reasons.append(f"{seen.get('n_seen')} of {seen.get('of')} images made the checkpoint ("
                       + ", ".join(f"{k} in {SEEN_ROLES.get(r, r)}" for r, k in (seen.get("per_role") or {}).items())
                       + "): not held out")
    reasons.extend(calibration_release_reasons(report.get("candidates", ())))
    report["release_pass"] = not reasons
    report["release_pass_reasons"] = reasons
    if status != PASS or not reasons:
        report["headline"] = status
        return
    rec = report.get("record") or {}
    if not rec.get("enabled"):
        said = "nothing recorded (recording was off)"
    elif rec.get("recorded"):
        said = "recorded: " + ", ".join(f"{v['name']} {v['verdict']}" for v in rec.get("recorded_verdicts", []))
    else:
        said = "nothing recorded"
    report["headline"] = f"PASS (not a release pass: {'; '.join(reasons)}; {said})"


# The files validate writes in its --out folder (besides roc_<candidate>.png), whose temporaries a killed run
# leaves; a temporary unchanged this long belongs to no live run (validate holds no lock on --out: a second run
# writing the same folder at the same time keeps its own).
_OUT_FILES = ("parity.json", "parity.html", "parity_config.json", "outputs.csv")
_STALE_TEMPORARY_S = 600.0


def _remove_own_temporaries(out_dir: Path) -> None:
    """Delete the temporaries of validate's own files that a run killed mid-write left in ``out_dir``.

    Only validate's names: ``--out`` may be a folder that holds other programs' ``.NAME.XXXX.tmp`` files.
    """
    def own(name: str) -> bool:
        return name in _OUT_FILES or (name.startswith("roc_") and name.endswith(".png"))

    n = remove_stale_temporaries(out_dir, of=own, idle_s=_STALE_TEMPORARY_S)
    n += remove_stale_temporaries(out_dir / _CACHE_DIR, idle_s=_STALE_TEMPORARY_S)
    if n:
        log.info("removed %d temporary file(s) an interrupted run left in %s", n, out_dir)


def json_path_of(out_dir: Path) -> Path:
    """Where ``validate_bundle`` writes ``parity.json`` in ``out_dir``."""
    return out_dir / "parity.json"


def bootstrap_method(patients: Mapping[str, Any]) -> str:
    """The report's words for how the AUC differences were resampled (``patients``: ``data.patients``)."""
    head = "paired percentile bootstrap of each class's AUC difference, stratified by the class's label; "
    tail = "; undefined when one side comes from a single resampled unit"
    if patients.get("known"):
        alone = patients.get("n_images_without_patient") or 0
        return (head + f"resampled by patient ({patients['n_patients']} patients: the images of one patient are "
                "drawn together, a patient counting as positive when any of its images is"
                + (f"; {alone} image(s) without a patient id each count as a patient of their own" if alone else "")
                + ")" + tail)
    return (head + "resampled by image, because the data carry no patient ids (with several images of one "
            "patient, e.g. both eyes, the interval is too narrow; give the data a patient column)" + tail)


#: The per-image outputs next to parity.json (see :func:`write_outputs_csv`).
OUTPUTS_CSV = "outputs.csv"


def _float_cell(v: float) -> str:
    """A model output as the shortest text that reads back as the same float64 (the float32 output exactly)."""
    return repr(float(v))


def write_outputs_csv(path: Path, manifest: Manifest, run: _Run, specs: Sequence[CandidateSpec]) -> dict[str, Any]:
    """Every image's outputs as ``outputs.csv`` (atomic); its file name, sha256, rows and columns for the report.

    Why: the figures in parity.json are computed from these outputs, which otherwise live only in the
    internal ``.parity-cache``; a signer recomputes every figure from this file. One row per image used, in
    the order of ``data.image_ids``: ``id``, ``patient`` (empty when unknown), ``labels`` (``;``-joined,
    empty when unlabelled), then for the reference and each candidate that ran on every image
    ``<source>:p_<class>`` and ``<source>:logit_<class>`` per class (the exact float32 values, as the
    shortest decimal that reads back to them: rounding could move a decision at a threshold) and
    ``<source>:refer`` (``yes``/``no``, the manifest's referral rule). The conventions of ``results.csv``
    (:func:`uopsl.runtime.results.write_csv`, comma style): UTF-8 with a BOM, comma-separated, ``yes``/``no``,
    ``;`` between the items of a list, and text a spreadsheet would run as a formula prefixed with ``'``.
    """
    from uopsl.runtime.results import _cell

    names = manifest.class_names
    n = len(run.ids)
    sources = [("reference", "ref")]
    left_out = []
    for spec in specs:
        out = run.stacked(spec.name)
        if len(out.get("probs", ())) == n and len(out.get("logits", ())) == n:
            sources.append((spec.name, spec.name))
        else:
            left_out.append(spec.name)
    columns = ["id", "patient", "labels"]
    blocks = []
    for label, key in sources:
        out = run.stacked(key)
        probs = np.asarray(out["probs"], np.float32).astype(np.float64)
        logits = np.asarray(out["logits"], np.float32).astype(np.float64)
        # A model whose outputs overflowed or left [0, 1] has no decision there (its FAIL says why): empty cells.
        valid = np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1) & (probs <= 1).all(axis=1)
        refer = np.full(n, "", dtype=object)
        if valid.any():
            refer[valid] = np.where(manifest.decide(probs[valid])[1], "yes", "no")
        columns += ([f"{label}:p_{c}" for c in names] + [f"{label}:logit_{c}" for c in names] + [f"{label}:refer"])
        blocks.append((probs, logits, refer))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for i in range(n):
        labels = run.labels[i]
        # Text a spreadsheet would run as a formula gets its ' (a file named "=cmd|..."); numbers stay numbers.
        row: list[Any] = [_cell(run.ids[i]), _cell(run.patients[i] or ""),
                          _cell("" if labels is None else ";".join(labels))]
        for probs, logits, refer in blocks:
            row += [_float_cell(v) for v in probs[i]] + [_float_cell(v) for v in logits[i]]
            row.append(refer[i])
        w.writerow(row)
    data = buf.getvalue().encode("utf-8-sig")
    write_bytes(path, data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "rows": n, "columns": columns,
            "sources": [label for label, _ in sources],
            **({"left_out": left_out, "left_out_why": "did not run on every image (see its error)"}
               if left_out else {})}


def _reference_device(reference: Any, context: Mapping[str, Any] | None) -> str | None:
    """Where the reference computes (``cuda:0``, ``cpu``): the reference's ``device``, else the caller's words."""
    device = getattr(reference, "device", None)
    if device is not None and str(device):
        return str(device)
    said = (context or {}).get("device")
    return str(said) if said else None


def _describe(reference: Any) -> str:
    fn = getattr(reference, "describe", None)
    return str(fn()) if callable(fn) else type(reference).__name__


def _per_layer(root: Path, manifest: Manifest, specs: Sequence[CandidateSpec], images: Sequence[ImageRecord],
               cfg: ValidateConfig) -> dict[str, Any]:
    """Layer-wise diagnosis of each INT8 ONNX file among the candidates (keyed by file)."""
    from uopsl.export.layerwise import layerwise_errors

    fp32 = next((f for f in manifest.files_of("onnx") if f.precision == "fp32"), None)
    files = sorted({s.file for s in specs if s.precision in _INT8 and s.backend != "tensorrt"})
    if not files:
        return {}
    if fp32 is None:
        return {f: {"error": "the bundle has no FP32 ONNX file to compare against"} for f in files}
    inputs: list[np.ndarray] = []
    for rec in images:
        if len(inputs) >= cfg.per_layer_images:
            break
        with contextlib.suppress(UopslError):
            inputs.append(preprocess(read_bytes(rec.path), manifest.preprocess, source=rec.id).image)
    result: dict[str, Any] = {}
    for f in files:
        entry = manifest.file(f)
        try:
            rep = layerwise_errors(root / fp32.path, root / f, np.stack(inputs),
                                   sqnr_threshold_db=cfg.sqnr_threshold_db, min_drop_db=cfg.min_drop_db,
                                   max_suggestions=cfg.max_suggestions)
        except UopslError as exc:
            result[f] = {"error": str(exc)}
            continue
        d = rep.to_dict()
        variant = entry.info.get("variant") or ("trt" if entry.precision == "int8-qdq-s8" else "cpu")
        d["suggested_command"] = rep.suggested_command(str(root), variant, entry.info)
        result[f] = d
    return result
