"""The one calibration table: activation ranges that every INT8 consumer reads.

A table maps each activation tensor of the FP32 ONNX model to the real range
``(min, max)`` its INT8 encoding must cover, and records where the ranges came
from: the method, the model's sha256, the calibration set's fingerprint, the
number of images and the toolkit version. It is written as ``calibration.json``
in the bundle and read by

* ONNX Runtime QDQ quantization (``uopsl.export.quantize``): asymmetric u8
  activations use ``(min, max)``; symmetric s8 activations use ``amax``;
* TensorRT explicit quantization (symmetric s8 Q/DQ, zero point 0): ``amax``;
* the TensorRT 8.x legacy calibration cache: ``scale`` (``amax / 127``).

Keeping one table (rather than letting each consumer re-calibrate) guarantees
that the CPU and GPU INT8 models saw the same ranges, and lets a re-run skip
calibration when neither the model nor the set changed (:func:`load_if_current`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import SHORT_DIGEST_CHARS, write_json
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.version import __version__

log = logging.getLogger(__name__)

TABLE_FORMAT = 1
TABLE_FILE = "calibration.json"
METHODS = ("minmax", "entropy", "percentile")
# Largest magnitude of a symmetric signed 8-bit code (TensorRT uses [-127, 127]).
INT8_MAX = 127


# Bumped per method whenever the same histograms give other ranges, so that a cached
# table of the old algorithm is recomputed, not reused: entropy 2 = every candidate
# threshold searched (session 9; version 1 searched every few bins and could land up
# to ~14 % away from NVIDIA's algorithm). Tables without the field are version 1.
# minmax 2, entropy 3, percentile 2 (session 28): the tensors computed from the uint8 input
# alone hold their bounds from the input type, not measured ones (uopsl.calibration.ranges.input_bound_ranges).
# entropy 4 (session 31): thresholds whose reference histogram is one spike are not candidates (on a tensor far
# from zero, a sigmoid gate, entropy 3 kept a range one bin wide and clipped every value; ranges.entropy_amax).
ALGORITHM_VERSIONS: Mapping[str, int] = MappingProxyType({"minmax": 2, "entropy": 4, "percentile": 2})


@dataclass(frozen=True)
class CalibrationTable:
    """Per-tensor activation ranges of one FP32 model on one calibration set.

    ranges: tensor name -> ``(min, max)`` in real units, ``min <= max``, finite.
    method: ``minmax``, ``entropy`` or ``percentile``.
    model_sha256: sha256 of the FP32 ONNX file the ranges were measured on.
    set_fingerprint: :attr:`uopsl.calibration.dataset.CalibrationSet.fingerprint`.
    num_images: images the ranges were measured on.
    percentile: the percentile of ``|x|`` kept (``percentile`` method only).
    algorithm_version: the version of ``method``'s range algorithm that made
        the table (:data:`ALGORITHM_VERSIONS`; a table of an older one is not reused).
    image_digests: each calibration image file's digest (the first 16 hex
        characters of its sha256, :data:`uopsl.runtime.fsio.SHORT_DIGEST_CHARS`),
        sorted; None where not known (a table from before uopsl recorded them, or a
        set made from arrays). ``uopsl validate`` compares them with the images it
        judges an INT8 file on: ranges fitted on those very images flatter it there.
        Digests, not names: the table ships in the bundle, and names can name patients.
    """

    ranges: Mapping[str, tuple[float, float]]
    method: str
    model_sha256: str
    set_fingerprint: str
    num_images: int
    percentile: float | None = None
    algorithm_version: int = 0  # 0: the current version of ``method`` (set in __post_init__)
    toolkit_version: str = __version__
    format_version: int = TABLE_FORMAT
    notes: Mapping[str, Any] = field(default_factory=dict)
    image_digests: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if self.algorithm_version == 0:
            object.__setattr__(self, "algorithm_version", ALGORITHM_VERSIONS[self.method])
        if (self.method == "percentile") != (self.percentile is not None):
            raise ConfigError(
                f"a percentile is required for (and only for) the percentile method; "
                f"got method={self.method!r}, percentile={self.percentile!r}"
            )
        if self.percentile is not None and not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.num_images < 1:
            raise ConfigError(f"a calibration table needs at least one image, got num_images={self.num_images}")
        clean: dict[str, tuple[float, float]] = {}
        for name, rng in self.ranges.items():
            try:
                lo, hi = (float(v) for v in rng)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"range of tensor {name!r} must be a (min, max) pair, got {rng!r}") from exc
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ConfigError(f"range of tensor {name!r} must be finite with min <= max, got ({lo}, {hi})")
            clean[str(name)] = (lo, hi)
        if not clean:
            raise ConfigError("a calibration table needs at least one tensor range, got none")
        if self.image_digests is not None:
            # the first 16 hex characters, as the sets and the checkpoints record them (a longer digest, e.g. a
            # whole sha256 from another writer, would otherwise never equal a judged image's)
            digests = tuple(sorted({str(d).lower()[:SHORT_DIGEST_CHARS] for d in self.image_digests}))
            bad = [d for d in digests if len(d) < 16 or any(c not in "0123456789abcdef" for c in d)]
            if bad:
                raise ConfigError(f"image_digests must be hex sha256 prefixes of at least 16 characters; {len(bad)} "
                                  f"are not (e.g. {bad[0]!r}): recalibrate with `uopsl calibrate`")
            object.__setattr__(self, "image_digests", digests)
        # Read-only views: a frozen table must not change under a consumer's feet.
        object.__setattr__(self, "ranges", MappingProxyType(clean))
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))

    # -- what consumers read ----------------------------------------------
    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    @property
    def outdated(self) -> bool:
        """Whether an older version of its method's range algorithm made this table (:data:`ALGORITHM_VERSIONS`)."""
        return self.algorithm_version < ALGORITHM_VERSIONS[self.method]

    def __contains__(self, name: object) -> bool:
        return name in self.ranges

    def range(self, name: str) -> tuple[float, float]:
        """``(min, max)`` of tensor ``name``."""
        try:
            return self.ranges[name]
        except KeyError:
            raise ConfigError(
                f"the calibration table has no range for tensor {name!r} ({len(self.ranges)} tensors, "
                f"e.g. {list(self.ranges)[:3]}); was it calibrated on another model?"
            ) from None

    def preprocess_mismatch(self, expected: PreprocessConfig) -> str | None:
        """How the preprocessing this table's images went through differs from ``expected`` (a bundle's), in
        words; None when it is the same, or when the table does not record it (tables from before it did).

        Ranges measured on other pixels (another size, CLAHE, decode rule) quantize a model for inputs its
        runtime never gives it.
        """
        raw = self.notes.get("preprocess")
        if not isinstance(raw, Mapping):
            return None
        try:
            got = PreprocessConfig.from_dict(dict(raw))
        except (ConfigError, TypeError, ValueError) as exc:
            return f"its recorded preprocessing is unreadable ({exc})"
        diffs = got.differences(expected)
        return ", ".join(f"{k} {a!r} (bundle: {b!r})" for k, (a, b) in diffs.items()) or None

    def amax(self, name: str) -> float:
        """Symmetric range limit of tensor ``name``: ``max(|min|, |max|)``."""
        lo, hi = self.range(name)
        return max(abs(lo), abs(hi))

    def scale(self, name: str) -> float:
        """Symmetric int8 scale of tensor ``name``: ``amax / 127`` (0.0 for a tensor that was always 0)."""
        return self.amax(name) / INT8_MAX

    # -- persistence -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "toolkit_version": self.toolkit_version,
            "method": self.method,
            "percentile": self.percentile,
            "algorithm_version": self.algorithm_version,
            "model_sha256": self.model_sha256,
            "set_fingerprint": self.set_fingerprint,
            "num_images": self.num_images,
            "notes": dict(self.notes),
            "image_digests": list(self.image_digests) if self.image_digests is not None else None,
            "ranges": {name: [lo, hi] for name, (lo, hi) in self.ranges.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = TABLE_FILE) -> CalibrationTable:
        fv = d.get("format_version")
        if fv != TABLE_FORMAT:
            raise ConfigError(
                f"{source}: calibration table format {fv!r} is not supported by uopsl {__version__} "
                f"(expected {TABLE_FORMAT}); recalibrate with `uopsl calibrate`"
            )
        try:
            return cls(
                ranges={str(k): (v[0], v[1]) for k, v in d["ranges"].items()},
                method=d["method"],
                model_sha256=str(d["model_sha256"]),
                set_fingerprint=str(d["set_fingerprint"]),
                num_images=int(d["num_images"]),
                percentile=None if d.get("percentile") is None else float(d["percentile"]),
                algorithm_version=int(d.get("algorithm_version", 1)),  # tables from before the field: version 1
                toolkit_version=str(d.get("toolkit_version", "")),
                format_version=int(fv),
                notes=dict(d.get("notes") or {}),
                image_digests=None if d.get("image_digests") is None else tuple(d["image_digests"]),
            )
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ConfigError(
                f"{source}: malformed calibration table ({exc.__class__.__name__}: {exc}); "
                "recalibrate with `uopsl calibrate`"
            ) from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as JSON atomically; returns the path."""
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model_sha256: str | None = None) -> CalibrationTable:
        """Read a table; with ``model_sha256``, refuse a table measured on another model."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no calibration table there; create one with `uopsl calibrate`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{p}: unreadable calibration table ({exc}); recalibrate with `uopsl calibrate`") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a JSON object, got {type(raw).__name__}")
        table = cls.from_dict(raw, source=str(p))
        if table.outdated:
            # load_if_current recomputes such a table; a consumer given its path (quantize, build-engine) says so.
            log.warning("%s: made by version %d of the %s range algorithm; today's is version %d (calibration/"
                        "table.py says what changed): its ranges may differ from what calibrating again gives. "
                        "Recalibrate with `uopsl calibrate ... --force`", p, table.algorithm_version, table.method,
                        ALGORITHM_VERSIONS[table.method])
        if model_sha256 is not None and table.model_sha256 != model_sha256:
            raise ConfigError(
                f"{p}: this calibration table was measured on a model with sha256 {table.model_sha256[:12]}..., "
                f"but the model given has sha256 {model_sha256[:12]}...; its tensor ranges do not apply. "
                "Recalibrate this model with `uopsl calibrate`"
            )
        return table

    def matches(
        self, *, model_sha256: str, set_fingerprint: str, method: str, percentile: float | None = None
    ) -> bool:
        """True when this table is what calibrating ``model`` on ``set`` with ``method`` would produce."""
        pct = percentile if method == "percentile" else None
        return (
            self.model_sha256 == model_sha256
            and self.set_fingerprint == set_fingerprint
            and self.method == method
            and self.percentile == pct
            and self.algorithm_version == ALGORITHM_VERSIONS[method]
        )


def load_if_current(
    path: str | os.PathLike[str],
    *,
    model_sha256: str,
    set_fingerprint: str,
    method: str,
    percentile: float | None = None,
    image_digests: Sequence[str] | None = None,
) -> CalibrationTable | None:
    """The cache check: return the table at ``path`` if it is still valid, else None.

    Valid means same model hash, same set fingerprint, same method (and
    percentile), made by the method's current algorithm, and, where the set knows its files' digests
    (``image_digests``), a table that records them: an older table has the same ranges but not its images, and
    ``uopsl validate`` cannot check an INT8 file against them. An unreadable or outdated table is not an error
    here; it is simply recomputed (and logged).
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        table = CalibrationTable.load(p)
    except ConfigError as exc:
        log.info("existing calibration table not reused: %s", exc)
        return None
    if table.matches(model_sha256=model_sha256, set_fingerprint=set_fingerprint, method=method, percentile=percentile):
        if image_digests is not None and table.image_digests is None:
            log.info("existing calibration table %s does not record its images' digests (made before uopsl "
                     "recorded them): recalibrating, so that validate can check INT8 files against them", p)
            return None
        log.info(
            "calibration skipped: %s already holds %s ranges for this model (sha256 %s...) and set (%s...)",
            p, method, model_sha256[:12], set_fingerprint[:12],
        )
        return table
    log.info("existing calibration table %s is for another model, set or method: recalibrating", p)
    return None
