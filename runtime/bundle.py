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

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from uopsl.runtime.errors import BundleError
from uopsl.runtime.fsio import sha256_bytes, sha256_file, write_json
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.version import __version__

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

HeadType = Literal["sigmoid", "softmax"]
# any_referable: refer when any referable class reaches its own threshold
#   (multi-label heads; also fine for softmax with per-class thresholds).
# referable_sum: refer when the summed probability of the referable classes
#   reaches ``referral_threshold`` (softmax heads: P(referable disease)).
ReferralRule = Literal["any_referable", "referable_sum"]
FileKind = Literal["onnx", "engine", "calibration", "class_bank", "other"]
# fp32 | fp16 | int8-qdq-u8 (CPU: u8 activations, s8 weights) |
# int8-qdq-s8 (TensorRT: symmetric s8, zero point 0) | int8 (engine)
Precision = Literal["fp32", "fp16", "int8-qdq-u8", "int8-qdq-s8", "int8", "none"]

INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "logits", "site_maps")


@dataclass(frozen=True)
class ClassSpec:
    """One output class: name, the descriptions its prototype came from, its operating point."""

    name: str
    descriptions: tuple[str, ...] = ()
    threshold: float = 0.5
    referable: bool = False
    seen_in_training: bool = True


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


PARITY_KEY = "parity"  # FileEntry.info key written by `uopsl validate`


def parity_status(entry: FileEntry, backend: str | None = None) -> tuple[bool, str]:
    """Whether ``uopsl validate`` passed this very file on ``backend`` within its gates, and a reason either way.

    ``auto`` backend selection takes an INT8 file or engine only when this is
    True for the backend that would run it: a reduced-precision model is used
    unasked only after it was shown, on that runtime, to keep the reference
    model's decisions. The record names the file's sha256, so a file replaced
    after validation does not inherit the verdict. ``backend=None``: every
    backend recorded for the file must have passed.
    """
    rec = entry.info.get(PARITY_KEY)
    if not isinstance(rec, dict) or not isinstance(rec.get("backends"), dict) or not rec["backends"]:
        return False, f"{entry.path} has no parity record (run `uopsl validate` on this bundle)"
    if rec.get("sha256") != entry.sha256:
        return False, f"{entry.path}'s parity record is for another file content (validate it again)"
    runs: dict[str, Any] = rec["backends"]
    if backend is not None:
        if not isinstance(runs.get(backend), dict):
            return False, (f"{entry.path} has no parity record on {backend} (validated on {sorted(runs)}; "
                           f"run `uopsl validate --backends {backend}`)")
        runs = {backend: runs[backend]}
    failed = {b: r for b, r in runs.items() if not (isinstance(r, dict) and r.get("passed") is True)}
    if failed:
        b, r = next(iter(failed.items()))
        why = "; ".join(str(x) for x in (r.get("reasons") or [])[:2]) if isinstance(r, dict) else ""
        return False, f"{entry.path} failed parity validation on {b}" + (f" ({why})" if why else "")
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
    # sha256 of the manifest's own content (canonical JSON without this field):
    # an edited threshold or class fails verification like a modified model file.
    content_sha256: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([c.threshold for c in self.classes], np.float32)

    @property
    def referable_mask(self) -> np.ndarray:
        return np.array([c.referable for c in self.classes], bool)

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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = MANIFEST) -> Manifest:
        try:
            fv = int(d.get("format_version", -1))
            if fv != FORMAT_VERSION:
                raise BundleError(
                    f"{source}: bundle format version {fv} is not supported by uopsl {__version__} "
                    f"(expected {FORMAT_VERSION}); re-export the bundle with this toolkit version"
                )
            d = dict(d)
            d["classes"] = tuple(
                ClassSpec(**{**c, "descriptions": tuple(c.get("descriptions", ()))}) for c in d["classes"]
            )
            d["files"] = tuple(FileEntry(**f) for f in d["files"])
            d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
            d["site_map_size"] = tuple(d.get("site_map_size", (10, 10)))
            d["output_names"] = tuple(d.get("output_names", OUTPUT_NAMES))
            m = cls(**d)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{source}: malformed manifest ({exc.__class__.__name__}: {exc}); "
                "re-export the bundle or restore the original file"
            ) from exc
        if m.head not in ("sigmoid", "softmax"):
            raise BundleError(f"{source}: head must be 'sigmoid' or 'softmax', got {m.head!r}")
        if m.referral_rule not in ("any_referable", "referable_sum"):
            raise BundleError(f"{source}: unknown referral rule {m.referral_rule!r}")
        if not m.classes:
            raise BundleError(f"{source}: the manifest lists no classes")
        return m


def read_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    """Read and parse ``bundle/manifest.json`` (no checksum verification)."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (expected a folder holding {MANIFEST})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{root}: no {MANIFEST}; is this a uopsl bundle folder?") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc}); re-export the bundle") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return Manifest.from_dict(raw, source=str(path))


def _content_hash(d: dict[str, Any]) -> str:
    body = {k: v for k, v in d.items() if k != "content_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8"))


def write_manifest(bundle: str | os.PathLike[str], manifest: Manifest) -> None:
    d = manifest.to_dict()
    d["content_sha256"] = _content_hash(json.loads(json.dumps(d, default=str)))
    write_json(Path(bundle) / MANIFEST, d)


def describe_file(bundle: str | os.PathLike[str], entry: FileEntry) -> FileEntry:
    """Return ``entry`` with the checksum and size of the file as it is now."""
    p = Path(bundle) / entry.path
    return replace(entry, sha256=sha256_file(p), size=p.stat().st_size)


@dataclass(frozen=True)
class FileCheck:
    path: str
    ok: bool
    reason: str = ""


def verify(bundle: str | os.PathLike[str], manifest: Manifest | None = None) -> list[FileCheck]:
    """Check every file listed in the manifest against its size and sha256.

    Returns one :class:`FileCheck` per file (never raises for a bad file, so a
    report can list them all); see :func:`verify_or_raise`.
    """
    root = Path(bundle)
    m = manifest or read_manifest(root)
    out: list[FileCheck] = []
    raw = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    if not raw.get("content_sha256"):
        out.append(FileCheck(MANIFEST, False, "no content checksum (written by an older exporter?); re-export"))
    elif _content_hash(raw) != raw["content_sha256"]:
        out.append(FileCheck(MANIFEST, False, "content differs from its checksum (edited or corrupted)"))
    else:
        out.append(FileCheck(MANIFEST, True))
    for f in m.files:
        p = root / f.path
        if Path(f.path).is_absolute() or ".." in Path(f.path).parts:
            out.append(FileCheck(f.path, False, "path leaves the bundle folder"))
        elif not p.is_file():
            out.append(FileCheck(f.path, False, "missing"))
        elif f.size and p.stat().st_size != f.size:
            out.append(FileCheck(f.path, False, f"size {p.stat().st_size} bytes, manifest says {f.size} (truncated?)"))
        elif sha256_file(p) != f.sha256:
            out.append(FileCheck(f.path, False, "sha256 differs from the manifest (modified or corrupted)"))
        else:
            out.append(FileCheck(f.path, True))
    return out


def verify_or_raise(bundle: str | os.PathLike[str], manifest: Manifest | None = None) -> Manifest:
    m = manifest or read_manifest(bundle)
    bad = [c for c in verify(bundle, m) if not c.ok]
    if bad:
        detail = "; ".join(f"{c.path}: {c.reason}" for c in bad)
        raise BundleError(
            f"bundle {bundle} failed verification: {detail}. Copy the bundle again from its source"
        )
    return m
