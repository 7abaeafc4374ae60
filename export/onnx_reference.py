"""A torch-free reference for ``uopsl validate --onnx-reference``: the bundle's FP32 ONNX file on ONNX Runtime CPU.

A device (a Jetson building its own TensorRT engines) has no PyTorch, so it
cannot run the checkpoint. It can run the bundle's FP32 ONNX file, and that
file is as good a reference as the checkpoint once it has been *proven* equal
to it: :class:`OnnxReference` is allowed only when the manifest records a PASS
of that very file (same sha256) on ``ort-cpu`` from a PyTorch-referenced
``uopsl validate`` run that ``auto`` would trust (default gates or stricter, at
least :data:`~uopsl.runtime.bundle.MIN_PARITY_IMAGES` images). The chain of
trust is then: PyTorch -> FP32 file on ORT CPU (the workstation) -> engines
and INT8 files (the device). A PASS that itself came from an ONNX reference
does not count (a chain must end at PyTorch), nor does one judged against a
reference of unknown kind (a runtime backend passed as the reference), nor a
FAIL, an INCOMPLETE verdict or a record of another file content; see
:func:`uopsl.runtime.bundle.pytorch_pass_problem`. The chain is checked again
whenever ``auto`` reads a verdict judged against this reference (each such
record names the reference file and its full sha256), and such a verdict never
replaces one judged against PyTorch (:func:`uopsl.export.bundle_writer.record_parity`).

The reference is a runtime :class:`~uopsl.runtime.backends.onnxruntime.OrtBackend`
(enter it with ``with``) carrying what :func:`uopsl.export.validate.validate_bundle`
reads: ``preprocess`` (the manifest's own), ``fingerprint`` (the file's sha256
and the ONNX Runtime version: keys the output cache), ``describe()``,
``reference_kind`` / ``reference_source`` / ``reference_file`` /
``reference_sha256`` (recorded with every verdict) and
``excluded_candidates``: the FP32 file on ``ort-cpu`` is the reference
itself, never a candidate (it would pass against itself). Only
``uopsl.runtime`` and numpy are needed; ONNX Runtime is imported when the
reference is built, with a message naming what to install.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from uopsl.export.validate import ExcludedCandidate
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bundle import (
    MANIFEST,
    MIN_PARITY_IMAGES,
    ONNX_REFERENCE_BACKEND,
    PARITY_KEY,
    REFERENCE_ONNX,
    FileEntry,
    Manifest,
    pytorch_pass_problem,
    read_manifest,
)
from uopsl.runtime.errors import BundleError, ConfigError, MissingDependencyError
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.optional import require
from uopsl.runtime.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

#: The backend the reference runs on, and on which its PyTorch PASS must be recorded.
REFERENCE_BACKEND = ONNX_REFERENCE_BACKEND
#: Why the reference pair is not a candidate (the report's skipped candidates).
REFERENCE_ITSELF = "the reference itself"
#: What to run on the workstation when the chain of trust is missing.
WORKSTATION_COMMAND = "uopsl validate BUNDLE --checkpoint CKPT --data DATA --out OUT"
#: What to install when ONNX Runtime is missing.
ONNXRUNTIME_HINT = ("pip install onnxruntime (on a Jetson: the onnxruntime-gpu wheel for your JetPack from the "
                    "Jetson Zoo; its CPU provider runs the reference)")


@dataclass(frozen=True)
class ReferenceProof:
    """The bundle's FP32 ONNX file, its content's sha256 now, and its PyTorch-referenced ``ort-cpu`` PASS record."""

    entry: FileEntry
    sha256: str
    record: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def fp32_file(manifest: Manifest, bundle: str | os.PathLike[str] = "BUNDLE") -> FileEntry:
    """The FP32 ONNX file the runtime runs on ``ort-cpu`` (the first one the manifest lists)."""
    for f in manifest.files_of("onnx"):
        if f.precision == "fp32":
            return f
    have = [f"{f.path} ({f.precision})" for f in manifest.files_of("onnx")]
    raise ConfigError(f"{bundle} has no FP32 ONNX file to serve as the reference (its ONNX files: {have}); "
                      "the ONNX reference is the bundle's FP32 model.onnx: re-export the bundle with `uopsl export` "
                      "and validate it against its checkpoint")


def _chain_problem(entry: FileEntry, sha256_now: str) -> str | None:
    """Why ``entry`` (content ``sha256_now``) carries no PyTorch-referenced PASS on ``ort-cpu`` (None: it does).

    The file as it is now must be the content the record names; the rest (a record at all, on
    ``ort-cpu``, a PASS ``auto`` trusts, judged against PyTorch) is :func:`pytorch_pass_problem`'s.
    """
    rec = entry.info.get(PARITY_KEY)
    recorded = str(rec.get("sha256") or "") if isinstance(rec, dict) else ""
    if recorded and (recorded != sha256_now or entry.sha256 != sha256_now):
        return (f"a stale record: {entry.path}'s parity record is for content sha256 {recorded[:12]}..., "
                f"the file is now {sha256_now[:12]}... (it changed after it was validated)")
    return pytorch_pass_problem(entry, REFERENCE_BACKEND)


def check_reference_chain(bundle: str | os.PathLike[str], manifest: Manifest | None = None) -> ReferenceProof:
    """The FP32 file and its proof, or :class:`ConfigError` saying what was found and what to run first.

    Hashes the FP32 file as it is now, so a file replaced after its PASS is
    refused even where the manifest was not updated.
    """
    root = Path(bundle)
    m = manifest or read_manifest(root)
    entry = fp32_file(m, root)
    try:
        now = sha256_file(root / entry.path)
    except OSError as exc:
        raise BundleError(f"{root / entry.path}: the FP32 reference file cannot be read ({exc}); copy the bundle "
                          "again") from exc
    problem = _chain_problem(entry, now)
    if problem is not None:
        rec = entry.info.get(PARITY_KEY)
        runs = rec.get("backends") if isinstance(rec, dict) else None
        run = runs.get(REFERENCE_BACKEND) if isinstance(runs, dict) else None
        # A review: after an INCOMPLETE run (data labelled for some classes only) this said to run the same
        # command again, which gave the same verdict. What makes a run complete is the data, so say that.
        data = (" on data that lets every gate be judged (each class with enough positive and negative images: "
                "data labelled for some classes only, such as TVHL's, leaves the others ungated; photographs "
                "without labels, judged on the checkpoint's own decisions, gate every class they show)"
                if isinstance(run, dict) and run.get("verdict") == "INCOMPLETE" else "")
        raise ConfigError(
            f"--onnx-reference needs {entry.path} to carry a recorded PASS on {REFERENCE_BACKEND} against the "
            f"PyTorch checkpoint (in {root / MANIFEST}); found: {problem}. On the workstation, first run "
            f"`{WORKSTATION_COMMAND}` on this bundle (its checkpoint, at least {MIN_PARITY_IMAGES} images, the "
            f"default gates, {REFERENCE_BACKEND} among the backends){data}, then copy the bundle to this device "
            "again"
        )
    return ReferenceProof(entry, now, MappingProxyType(dict(entry.info[PARITY_KEY]["backends"][REFERENCE_BACKEND])))


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or :class:`MissingDependencyError` saying what to install for the reference."""
    try:
        return require("onnxruntime", "the ONNX reference")
    except MissingDependencyError as exc:
        cause = exc.__cause__
        raise MissingDependencyError(
            "`uopsl validate --onnx-reference` runs the bundle's FP32 file with ONNX Runtime, which is not "
            f"importable here ({type(cause).__name__ if cause else 'ImportError'}: {cause or exc}). "
            f"Install it: {ONNXRUNTIME_HINT}"
        ) from exc


class OnnxReference(OrtBackend):
    """The bundle's FP32 ONNX file on ONNX Runtime CPU, as the reference of :func:`validate_bundle`.

    Build it with :meth:`from_bundle` (which enforces the chain of trust) and
    enter it (``with``) before validating.
    """

    reference_kind = REFERENCE_ONNX

    def __init__(self, bundle: str | os.PathLike[str], proof: ReferenceProof, preprocess: PreprocessConfig,
                 ort_version: str, threads: int | None = None) -> None:
        super().__init__(Path(bundle) / proof.entry.path, "cpu", threads, precision="fp32")
        self.proof = proof
        self.preprocess = preprocess
        self.ort_version = ort_version

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike[str], threads: int | None = None, *,
                    manifest: Manifest | None = None) -> OnnxReference:
        """Check the chain of trust (:func:`check_reference_chain`) and ONNX Runtime; load nothing yet."""
        root = Path(bundle)
        m = manifest or read_manifest(root)
        proof = check_reference_chain(root, m)
        ort = require_onnxruntime()
        ref = cls(root, proof, m.preprocess, str(getattr(ort, "__version__", "unknown")), threads)
        log.debug("reference: %s", ref.describe())
        ref.warn_if_another_runtime()
        return ref

    def warn_if_another_runtime(self) -> None:
        """A WARNING when this ONNX Runtime version or CPU architecture differs from the proving run's (if recorded)."""
        proven = self.proof.record.get("machine")
        if not isinstance(proven, Mapping):
            return  # recorded by an older uopsl: the workstation's parity.json names its versions
        here = {"onnxruntime": self.ort_version, "arch": platform.machine()}
        diffs = [f"{k} {proven[k]} there, {v} here" for k, v in here.items()
                 if proven.get(k) and v and str(proven[k]) != v]
        if diffs:
            log.warning("the reference %s is computed here by another ONNX Runtime than the one that proved it "
                        "against PyTorch (%s): the chain assumes both give the same outputs, which this run does not "
                        "show; both versions are in parity.json (machine, context.onnx_reference). Where that "
                        "matters, validate on the workstation with this ONNX Runtime version or with stricter gates",
                        self.file, "; ".join(diffs))

    @property
    def file(self) -> str:
        """The bundle file that is the reference."""
        return self.proof.entry.path

    @property
    def fingerprint(self) -> str:
        """Keys the output cache: the file's content and the ONNX Runtime that computes its outputs."""
        return f"{REFERENCE_ONNX}:{self.file}@{self.proof.sha256}|onnxruntime {self.ort_version}|{REFERENCE_BACKEND}"

    @property
    def reference_file(self) -> str:
        """Recorded with each verdict: the bundle file judged against (``auto`` re-checks its PyTorch PASS)."""
        return self.file

    @property
    def reference_sha256(self) -> str:
        """Recorded with each verdict: the reference file's full sha256 when it was run."""
        return self.proof.sha256

    @property
    def reference_source(self) -> str:
        """What each verdict's record names as its reference."""
        return f"{REFERENCE_ONNX}:{self.file}@{self.proof.sha256[:12]} on {REFERENCE_BACKEND}"

    @property
    def excluded_candidates(self) -> tuple[ExcludedCandidate, ...]:
        """The reference itself: judged against PyTorch on the workstation, never against itself."""
        return (ExcludedCandidate(self.file, REFERENCE_BACKEND, REFERENCE_ITSELF),)

    def describe(self) -> str:
        r = self.proof.record
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else ""
        proven = str(r.get("reference") or "the PyTorch checkpoint")
        return (f"the bundle's FP32 ONNX file {self.file} (sha256 {self.proof.sha256[:12]}...) on ONNX Runtime "
                f"{self.ort_version} CPU{threads}, which passed on {REFERENCE_BACKEND} against PyTorch on "
                f"{r.get('n_images', '?')} images ({r.get('created', '?')}; reference then: {proven})")
