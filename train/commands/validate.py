"""``uopsl validate``: prove that a bundle still makes the PyTorch model's clinical decisions.

Runs the reference and every model file of BUNDLE on every backend available
here over the same preprocessed images, and writes ``OUT/parity.json`` and
``OUT/parity.html`` (see :mod:`uopsl.export.validate`). The reference is one of:

* ``--checkpoint DIR``: the checkpoint the bundle was exported from, in
  PyTorch (the workstation; the release gate);
* ``--onnx-reference``: the bundle's own FP32 ONNX file on ONNX Runtime CPU,
  without PyTorch (a device validating the engines and INT8 files it built).
  Allowed only once that file carries a recorded PASS on ``ort-cpu`` from a
  ``--checkpoint`` run (:mod:`uopsl.export.onnx_reference`); the FP32 file on
  ``ort-cpu`` is then not a candidate (the reference itself), every
  verdict recorded names the ONNX reference (its file and sha256, which
  ``auto`` re-checks), and none replaces a verdict judged against PyTorch
  (the report lists those kept). ``--device`` and
  ``--other-checkpoint`` are refused with it.

Exit code 0 when every candidate was evaluated in full and is within the gates
(PASS), 1 when one is not (FAIL) or when a gate could not be evaluated for some
class (INCOMPLETE: no labels for it, no positive image, fewer than 10 positive
or negative images), 2 for a usage, bundle or checkpoint error, or a missing
chain of trust (a CI release gate). A PASS under ``--gates`` looser than the
defaults, on fewer than 100 images or with ``--other-checkpoint`` exits 0 (the
run asked for) but is not a release pass: the last line says so, and
``parity.json`` has ``release_pass: false`` with the reasons.

Each image's patient (a ``patient`` column, or the dataset's own) travels with
it: the AUC bootstrap resamples patients, and the report counts them.

``--data`` accepts:

* ``KIND:PATH[:key=value,...]`` as in the other commands (``synthetic:DIR``,
  ``tvhl:DIR:task=referable_dr``, ``folder:DIR``, ... plus ``split=``/``fold=``);
* a folder: ``labels.csv`` inside -> the synthetic generator's set; class
  sub-folders -> folder-per-class labels; otherwise every image under it,
  unlabelled;
* a CSV file with a ``path`` column and a ``label`` (one class) or ``labels``
  (``;``-separated) column; with ``path`` only, unlabelled.

Without labels the reference's own decisions are the truth (the report says so).

A label that is no class of the bundle (``cataract``, a misspelt ``Glaucoma``,
TVHL's ``npdr`` for a bundle with ``dr``) would count as a negative for every
class: ``validate`` refuses it (exit 2), naming each such label, the bundle
class a near miss meant, and, for a dataset kind with tasks (``tvhl``,
``aptos``, ``messidor2``, ``idrid``), the task whose labels are this bundle's
classes. ``--unknown-labels drop`` leaves out the images carrying one instead,
and the terminal, ``parity.json`` and ``parity.html`` count them.

A bundle exported before ``uopsl export`` recorded its checkpoint's weights
sha256 cannot tell which checkpoint it came from: ``validate`` then refuses
(exit 2) a checkpoint whose backbone, input size or classes differ from the
manifest's, instead of recording a FAIL for every file.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from uopsl.runtime.clikit import FINITE_FLOAT, PARALLEL_COUNT, option_given
from uopsl.runtime.model_folders import check_output_outside_model_folders
from uopsl.runtime.errors import ConfigError, DataError

#: The default gates as ``--gates`` spells them (tests/test_cli_messages.py holds them to ParityGates' defaults).
DEFAULT_GATES_TEXT = "flips=0.005,class_flips=0.005,findings=0.01,auc=0.005,sens=0.01,top1=0.99"

if TYPE_CHECKING:
    from uopsl.runtime.bundle import Manifest
    from uopsl.train.checkpoint import CheckpointMeta

log = logging.getLogger(__name__)


def _records_from_source(src: Any) -> tuple[list[Any], tuple[str, ...]]:
    """The fundus images of a dataset with their labels and patients, and the label space to score against.

    The patient goes with each image: the bootstrap resamples patients, and the report counts the patients
    behind each change (:mod:`uopsl.export.validate`).
    """
    from uopsl.export.validate import ImageRecord

    records = []
    others: dict[str, int] = {}
    for s in src.samples:
        if s.modality != "fundus":
            others[s.modality] = others.get(s.modality, 0) + 1
            continue
        try:
            rid = str(Path(s.path).relative_to(src.root))
        except ValueError:
            rid = str(s.path)
        records.append(ImageRecord(rid, Path(s.path), tuple(s.labels), patient=s.patient or None))
    if others:
        # Said, not silent: OCT rows vanished and the run went on to "--limit 60 is more than the 0 image(s) the
        # data hold" and "no images to validate on" (a review), or judged fewer images than the data listed.
        what = ", ".join(f"{n} {m.upper() if m == 'oct' else m} image(s)" for m, n in sorted(others.items()))
        why = "validate judges the bundle on fundus photographs, the only images its model screens"
        if not records:
            raise ConfigError(f"{getattr(src, 'root', 'the data')} holds no fundus photograph, only {what}: {why}; "
                              "give fundus photographs (a CSV or folder of them; TVHL's: tvhl:DIR:task=dme or "
                              "task=referable_dr, without modality=oct)")
        log.warning("%s left out: %s", what, why)
    return records, declared_classes(src)


def declared_classes(src: Any) -> tuple[str, ...]:
    """The label space of ``src`` as the dataset declares it, not as its labels happen to cover it.

    A reader infers its label space from the labels present unless told the
    classes; a class of the data with no positive image among these then
    looks unlabelled ("no labels for this class"), and the referral figures,
    which need every referable class labelled, are dropped. The synthetic
    generator's set says which classes it draws (``synth_config.json``, with
    ``normal`` implicit): there, a class without a positive image is a class
    with no positive image, and the referral figures are computed. Other
    readers keep their own space (explicit for the adapters with tasks; a CSV
    without a class list keeps the labels present).
    """
    from uopsl.train.datasets.core import order_classes
    from uopsl.train.datasets.generic import synthetic_classes

    present = tuple(src.label_space.classes)
    options = getattr(src, "options", {}) or {}
    if options.get("reader") != "synthetic" or options.get("classes") is not None:
        return present
    declared = synthetic_classes(options.get("csv") or src.root)
    if declared is None:
        return present
    return order_classes([*declared, *present])


def _unlabelled(paths: list[Path], root: Path, patients: Sequence[str | None] | None = None) -> list[Any]:
    """Records without labels; ``patients``, when given, the patient of each path (None or "": unknown)."""
    from uopsl.export.validate import ImageRecord

    out = []
    for i, p in enumerate(paths):
        try:
            rid = str(p.relative_to(root))
        except ValueError:
            rid = str(p)
        out.append(ImageRecord(rid, p, None, (patients[i] or None) if patients is not None else None))
    return out


def _csv_records(path: Path) -> tuple[list[Any], tuple[str, ...] | None]:
    from uopsl.runtime.fsio import read_user_text
    from uopsl.train import data

    text = read_user_text(path, "validation CSV")
    header = next(csv.reader(io.StringIO(text, newline="")), [])
    cols = {c.strip() for c in header}
    if "path" not in cols:
        raise DataError(f"{path}: a validation CSV needs a 'path' column (and optionally 'label' or 'labels'); "
                        f"found columns {sorted(cols)}")
    if {"modality", "labels", "masks"} <= cols:
        return _records_from_source(data.read_synthetic(path, modality="fundus"))
    patient = "patient" if "patient" in cols else None  # each image's patient, when the CSV says it
    if "label" in cols:
        return _records_from_source(data.read_csv(path, data.CsvLayout(label_column="label", patient_column=patient)))
    if "labels" in cols:
        return _records_from_source(data.read_csv(path, data.CsvLayout(multi_label_column="labels",
                                                                       patient_column=patient)))
    rows = [r for r in csv.DictReader(io.StringIO(text, newline="")) if (r.get("path") or "").strip()]
    paths = [Path(r["path"].strip()) for r in rows]
    # The patient column counts without labels too: a device's unlabelled photographs need the patient-level
    # bootstrap and bounds as much as labelled ones (it was read only with a label column).
    patients = [(r.get("patient") or "").strip() or None for r in rows] if patient else None
    return _unlabelled([p if p.is_absolute() else path.parent / p for p in paths], path.parent, patients), None


def resolve_data(spec: str) -> tuple[list[Any], tuple[str, ...] | None, str]:
    """``--data`` -> (image records, label space or None, a description for the report)."""
    from uopsl.runtime.inputs import walk_images
    from uopsl.train import data

    path = Path(spec)
    head = spec.split(":", 1)[0]
    if ":" in spec and head in data.READERS and not path.exists():
        from uopsl.train.commands.common import load_source

        records, space = _records_from_source(load_source(spec))
        return records, space, f"dataset {spec}"
    if path.is_file() and path.suffix.lower() == ".csv":
        csv_records, csv_space = _csv_records(path)
        return csv_records, csv_space, f"CSV {path}"
    if path.is_dir():
        if (path / "labels.csv").is_file():
            records, space = _records_from_source(data.read_synthetic(path, modality="fundus"))
            return records, space, f"synthetic set {path}"
        subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
        top_images = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in data.IMAGE_EXTENSIONS]
        if subdirs and not top_images:
            records, space = _records_from_source(data.read_folder(path))
            return records, space, f"folder-per-class {path}"
        return _unlabelled(list(walk_images(path)), path), None, f"unlabelled images under {path}"
    raise ConfigError(
        f"--data {spec!r}: not a folder, a CSV file or KIND:PATH with KIND one of {sorted(data.READERS)}"
    )


def _task_labels(kind: str) -> dict[str, tuple[str, ...]]:
    """The label space of each task of a dataset kind that has tasks (empty for the others)."""
    from uopsl.train import data

    if kind == "tvhl":
        return dict(data.TVHL_TASKS)
    graded = {task: labels for task, (labels, _multi) in data.GRADED_TASKS.items()}
    if kind == "aptos":  # no DME grades: no dr_dme (see uopsl.train.commands.common)
        return {t: labels for t, labels in graded.items() if t != "dr_dme"}
    if kind in ("messidor2", "idrid"):
        return graded
    return {}


def _tvhl_mapping(task: str) -> str:
    """How TVHL's ``task`` maps its raw labels: which become another name, which images are left out."""
    from uopsl.train.datasets.tvhl import TVHL_RAW_LABELS, TVHL_TASK_LABELS

    mapping = TVHL_TASK_LABELS[task]
    raw = sorted(TVHL_RAW_LABELS)
    renamed: dict[str, list[str]] = {}
    for src, dst in mapping.items():
        if src != dst:
            renamed.setdefault(dst, []).append(src)
    parts = [f"{' and '.join(srcs)} become{'s' if len(srcs) == 1 else ''} {dst}" for dst, srcs in renamed.items()]
    left_out = [r for r in raw if r not in mapping]
    if left_out:
        parts.append(f"images labelled {', '.join(left_out)} are left out")
    return "; ".join(parts)


def task_hint(spec: str, class_names: tuple[str, ...]) -> str:
    """For ``--data KIND:PATH[:opts]`` of a kind with tasks: the spec(s) whose labels are all classes of the bundle.

    ``""`` when the spec is no such dataset; a sentence saying no task fits when none does.
    """
    import inspect

    from uopsl.train import data
    from uopsl.train.commands.common import parse_spec

    head = spec.split(":", 1)[0]
    if ":" not in spec or head not in data.READERS or Path(spec).exists():
        return ""
    try:
        kind, path, opts = parse_spec(spec)
    except ConfigError:
        return ""
    tasks = _task_labels(kind)
    if not tasks:
        return ""
    param = inspect.signature(data.READERS[kind]).parameters.get("task")
    current = opts.get("task") or (str(param.default) if param is not None else "")
    classes = set(class_names)
    fits = [t for t, labels in tasks.items() if t != current and set(labels) <= classes]
    said = (f"{kind}'s task={current}{'' if 'task' in opts else ' (its default)'} gives the labels "
            f"{', '.join(tasks[current])}" if current in tasks else "")
    if not fits:
        return (f"{said}; no task of the {kind} reader ({', '.join(tasks)}) gives only this bundle's classes"
                if said else f"no task of the {kind} reader ({', '.join(tasks)}) gives only this bundle's classes")
    ways = []
    for t in fits:
        spec_t = f"{kind}:{path}:" + ",".join(f"{k}={v}" for k, v in {**opts, "task": t}.items())
        how = _tvhl_mapping(t) if kind == "tvhl" else ""
        unlabelled = [c for c in class_names if c not in tasks[t]]
        one = len(unlabelled) == 1
        extra = (f"; this bundle's {', '.join(unlabelled)} then {'has' if one else 'have'} no labels, so "
                 f"{'its' if one else 'their'} gates are INCOMPLETE" if unlabelled else "")
        ways.append(f"--data {spec_t} (labels {', '.join(tasks[t])}{'; ' + how if how else ''}{extra})")
    return (f"{said}; use " if said else "use ") + " or ".join(ways)


def limit_records(records: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset of ``limit`` records, kept in their original order (all when None).

    A ``limit`` above the number of records uses them all, with a warning: a user who asked for 5,000 images
    of data holding 989 should not read the report's n as a surprise.
    """
    if limit is not None and limit > len(records):
        log.warning("--limit %d is more than the %d image(s) the data hold: all %d are used, no subset is drawn",
                    limit, len(records), len(records))
    if limit is None or limit >= len(records):
        return records
    if limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    idx = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return [records[i] for i in idx]


#: Options that only mean something with a PyTorch checkpoint as the reference.
_CHECKPOINT_ONLY = {"device": "--device (the PyTorch reference's device; the ONNX reference runs on ONNX Runtime CPU)",
                    "other_checkpoint": "--other-checkpoint (a comparison with another checkpoint)"}


def _check_reference_options(checkpoint: Path | None, onnx_reference: bool) -> None:
    """Exactly one reference; no checkpoint-only option with the ONNX one (ConfigError: one line, exit 2)."""
    if checkpoint is None and not onnx_reference:
        raise ConfigError("no reference given: pass --checkpoint DIR (the PyTorch checkpoint the bundle was exported "
                          "from, on the workstation) or --onnx-reference (the bundle's FP32 ONNX file, on a device "
                          "without PyTorch, once a --checkpoint run recorded its PASS on ort-cpu)")
    if checkpoint is not None and onnx_reference:
        raise ConfigError(f"both --checkpoint {checkpoint} and --onnx-reference given; pass exactly one: "
                          "--checkpoint where PyTorch is installed (the release gate), --onnx-reference on a device")
    if onnx_reference:
        given = [what for name, what in _CHECKPOINT_ONLY.items() if option_given(name)]
        if given:
            verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
            raise ConfigError(f"{' and '.join(given)} only {verb} with --checkpoint, not with --onnx-reference; "
                              f"drop {them}")


def torch_reference(bundle: Path, checkpoint: Path, device: str, other_checkpoint: bool
                     ) -> tuple[Any, dict[str, Any], bool]:
    """(PyTorch reference, context facts, whether verdicts may be recorded) for ``--checkpoint``."""
    from uopsl.export.bundle_writer import CLASS_BANK_FILE
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.errors import CheckpointError
    from uopsl.train.checkpoint import CHECKPOINT_DIGEST_NOTE, bundle_source_mismatch, checkpoint_digest, read_meta
    from uopsl.train.reference import TorchReference, manifest_mismatches

    manifest = read_manifest(bundle)
    # The verdicts go into the manifest and gate `auto`: they must be against the model the bundle came from.
    mismatch = bundle_source_mismatch(checkpoint, manifest.notes)
    if mismatch and not other_checkpoint:
        raise CheckpointError(f"{mismatch}; validate against that checkpoint, or pass --other-checkpoint to compare "
                              "anyway (nothing is then recorded in the manifest)")
    may_record = True
    if other_checkpoint:  # a study against another model: whatever it finds, it is not this bundle's verdict
        if mismatch:
            log.warning("%s; --other-checkpoint: comparing anyway", mismatch)
        log.warning("--other-checkpoint: no verdict is recorded in the manifest")
        may_record = False
    elif not manifest.notes.get(CHECKPOINT_DIGEST_NOTE):
        # An older bundle cannot tell its checkpoint by its weights: what the manifest says of the model must match.
        foreign = foreign_checkpoint(read_meta(checkpoint), manifest)
        if foreign:
            raise CheckpointError(
                f"{checkpoint} cannot be the checkpoint {bundle} was exported from: {'; '.join(foreign)} (the bundle "
                "was exported by an older uopsl and does not record its checkpoint's weights sha256, so these were "
                "compared instead); validate against the checkpoint it was exported from, re-export the bundle from "
                "this one (uopsl export), or pass --other-checkpoint to compare anyway (nothing is then recorded "
                "in the manifest)")
        log.warning("%s does not record which checkpoint it was exported from (exported by an older uopsl); "
                    "make sure %s is that checkpoint", bundle, checkpoint)
    bank = None
    if manifest.notes.get(CHECKPOINT_DIGEST_NOTE) and not mismatch and (bundle / CLASS_BANK_FILE).is_file():
        # Re-exported with `uopsl export --classes` (other names, or other phrases for a trained class): the same
        # weights scoring the bundle's own class bank. The reference uses it only where it differs from the
        # checkpoint's.
        bank = (manifest.class_names, _class_bank(bundle, manifest))
    reference = TorchReference.from_checkpoint(checkpoint, device, class_bank=bank)
    notes = manifest_mismatches(reference.meta, manifest) if reference.meta is not None else []
    for note in notes:
        log.warning("checkpoint vs bundle: %s", note)
    return reference, {"checkpoint": str(checkpoint),
                       # as `uopsl export` records it in the manifest (the same function): the two compare directly
                       CHECKPOINT_DIGEST_NOTE: checkpoint_digest(checkpoint),
                       "reference_kind": "pytorch", "device": str(reference.device),
                       "checkpoint_manifest_differences": notes, "other_checkpoint": other_checkpoint,
                       "other_checkpoint_reason": mismatch or ""}, may_record


def _class_bank(bundle: Path, manifest: Manifest) -> np.ndarray:
    """The bundle's class bank, read only once it matches the manifest (it is read before the bundle's own check
    runs; a damaged file was a bare ValueError, "a bug")."""
    from uopsl.export.bundle_writer import CLASS_BANK_FILE
    from uopsl.runtime.bundle import VERIFY_REMEDY, verify_file
    from uopsl.runtime.errors import BundleError

    path = bundle / CLASS_BANK_FILE
    check = verify_file(bundle, manifest.file(CLASS_BANK_FILE))
    if not check.ok:
        raise BundleError(f"bundle {bundle} failed verification: {check.path}: {check.reason}. {VERIFY_REMEDY}")
    try:
        return np.asarray(np.load(path, allow_pickle=False), np.float32)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path} ({exc}): copy the bundle again from its source") from exc


def foreign_checkpoint(meta: CheckpointMeta, manifest: Manifest) -> list[str]:
    """What the checkpoint's ``checkpoint.json`` (``meta``) says differently from the manifest about the model.

    Backbone (compared when the manifest names one a uopsl model can have), input size (export writes the
    checkpoint's preprocessing size) and class list (names and order). Each: ``what: checkpoint X, bundle Y``.
    """
    from uopsl.train.backbones import names as backbone_names

    out = []
    if manifest.backbone in backbone_names() and meta.model.backbone != manifest.backbone:
        out.append(f"backbone: checkpoint {meta.model.backbone}, bundle {manifest.backbone}")
    if int(meta.preprocess.size) != int(manifest.preprocess.size):
        out.append(f"input size: checkpoint {meta.preprocess.size} px, bundle {manifest.preprocess.size} px")
    if tuple(meta.model.classes) != tuple(manifest.class_names):
        out.append(f"classes: checkpoint {list(meta.model.classes)}, bundle {list(manifest.class_names)}")
    return out


def _onnx_reference(bundle: Path, threads: int | None) -> tuple[Any, dict[str, Any]]:
    """(ONNX reference, context facts) for ``--onnx-reference``; refuses before anything runs (see the module doc)."""
    from uopsl.export.onnx_reference import OnnxReference
    from uopsl.runtime.signing import open_trusted, trusted_keys_for

    # On a device that trusts signing keys, the reference file is loaded only from a signed bundle. Elsewhere the
    # reference's own chain check comes first: it says why a changed file is refused (a stale parity record).
    manifest = open_trusted(bundle)[0] if trusted_keys_for() else None
    reference = OnnxReference.from_bundle(bundle, threads, manifest=manifest)
    proof = reference.proof
    return reference, {"checkpoint": None, "reference_kind": "onnx", "device": "cpu (ONNX Runtime)",
                       "onnx_reference": {"file": reference.file, "sha256": proof.sha256,
                                          "onnxruntime": reference.ort_version,
                                          "source": reference.reference_source,
                                          "proven_against": proof.record.get("reference"),
                                          "proven_reference_fingerprint": proof.record.get("reference_fingerprint"),
                                          "proven_on_images": proof.record.get("n_images"),
                                          "proven_created": proof.record.get("created"),
                                          # the proving run's CPU architecture and ONNX Runtime (recorded since
                                          # they exist); parity.json's "machine" names this device's
                                          "proven_machine": proof.record.get("machine")},
                       "other_checkpoint": False, "other_checkpoint_reason": ""}


def _refuse_unknown_labels(bundle: Path, records: list[Any], data_spec: str) -> None:
    """ConfigError (exit 2) when ``records`` carry labels that are no class of the bundle, before any model runs."""
    from uopsl.export.validate import unknown_labels, unknown_labels_message
    from uopsl.runtime.bundle import read_manifest

    names = read_manifest(bundle).class_names
    unknown = unknown_labels(names, records)
    if unknown:
        raise ConfigError(unknown_labels_message(unknown, names, hint=task_hint(data_spec, names),
                                                 drop="--unknown-labels drop"))


def int8_next_step(rep: dict[str, Any]) -> str:
    """What to try after an INT8 file failed (``""`` when none did, or ``--per-layer`` already suggested it).

    A review: a FAIL ended the output with no next step unless ``--per-layer`` had been given.
    """
    failed = sorted({str(c["name"]).split(":", 1)[-1] for c in rep.get("candidates", [])
                     # ONNX INT8 files only: --per-layer and quantize do not apply to a TensorRT engine ("int8")
                     if not c.get("error") and str(c.get("precision", "")).startswith("int8-qdq")
                     and (c.get("verdict") or ("PASS" if c.get("passed") else "FAIL")) == "FAIL"})
    if not failed or rep.get("per_layer"):
        return ""
    return (f"{', '.join(failed)} failed: the same command with --per-layer names the layers to keep in float "
            "and the uopsl quantize command that does; or quantize again with --auto-exclude N --images IMAGES, "
            "or calibrate with another --method; then validate again")

@click.command("validate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The checkpoint the bundle was exported from (the PyTorch reference). "
                   "Exactly one of --checkpoint and --onnx-reference.")
@click.option("--onnx-reference", is_flag=True,
              help="No PyTorch (a device): the reference is the bundle's FP32 ONNX file on ONNX Runtime CPU, "
                   "allowed once a --checkpoint run recorded its PASS on ort-cpu.")
@click.option("--data", "data_spec", required=True,
              help="Images: KIND:PATH[:k=v,...] as in training; a folder (labels.csv inside, class sub-folders, "
                   "or unlabelled images); or a CSV with a path column and label/labels.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder; not inside a bundle or checkpoint folder.")
@click.option("--backends", default="all", show_default=True,
              help="'all' (every backend available here) or a comma list: ort-cpu,ort-cuda,ort-trt,openvino,tensorrt.")
@click.option("--gates", default=None,
              help=f"Override gates: {DEFAULT_GATES_TEXT}[,prob=1e-4] "
                   "(the defaults are strict; a run with looser ones records no pass).")
@click.option("--judge-on", type=click.Choice(["estimates", "bounds"]), default="estimates", show_default=True,
              help="Compare the gates with the measured figures, or with their 95 % bounds as well (exact upper "
                   "bounds of the change rates and of the positives lost, by image and by patient; the AUC drop's "
                   "interval end): a figure within its gate whose bound is not reads INCOMPLETE, not shown at "
                   "95 % (0 flips of 120 images: bound 2.5 %, more by patient; 0.5 % needs 598).")
@click.option("--keep-ungradable", is_flag=True,
              help="Compare decisions on images the runtime's quality gate calls ungradable too. By default they "
                   "are left out and listed with the gate's reasons: a device gives no decision on them.")
@click.option("--per-layer", is_flag=True, help="Layer-wise SQNR/cosine of each INT8 ONNX file vs FP32, "
                                                "with a suggested --exclude list for `uopsl quantize`.")
@click.option("--per-layer-images", type=click.IntRange(1), default=8, show_default=True)
@click.option("--sqnr-threshold", type=FINITE_FLOAT, default=30.0, show_default=True,
              help="Per-layer: layers below this SQNR (dB) that lose >= 3 dB themselves are suggested for exclusion.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Validate on a seeded random subset of N images.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of --limit (and of the bootstrap, unless --bootstrap-seed is given).")
@click.option("--bootstrap-seed", type=int, default=None,
              help="Seed of the bootstrap alone (default: --seed), to re-check an interval on the same images.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--n-boot", type=click.IntRange(0), default=1000, show_default=True,
              help="Bootstrap replicates of the paired AUC differences.")
@click.option("--device", default="auto", show_default=True, help="PyTorch reference device (--checkpoint only): auto, cpu, cuda, cuda:N.")
@click.option("--threads", type=PARALLEL_COUNT, default=None, help="Inference threads of the CPU backends.")
@click.option("--no-resume", is_flag=True, help="Recompute every output instead of reusing OUT/.parity-cache.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Write each file's verdict into the bundle manifest; `auto` backend selection uses an INT8 "
                   "file or engine only after it passed.")
@click.option("--unknown-labels", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True,
              help="Images labelled with a name that is no class of the bundle: refuse the run (listing each such "
                   "label and the class a near miss meant), or drop those images (counted in the report).")
@click.option("--max-thumbnails", type=click.IntRange(0), default=60, show_default=True,
              help="Thumbnails of photographs whose decisions changed, per file, embedded in parity.html (patient "
                   "photographs: 0 leaves them out of a report to be shared).")
@click.option("--other-checkpoint", is_flag=True,
              help="Compare against a checkpoint other than the one the bundle was exported from (a study, not "
                   "a release check): allowed, reported, and never recorded in the manifest.")
def command(bundle: Path, checkpoint: Path | None, onnx_reference: bool, data_spec: str, out: Path, backends: str,
            gates: str | None, judge_on: str, per_layer: bool, per_layer_images: int, sqnr_threshold: float,
            limit: int | None,
            seed: int, bootstrap_seed: int | None, batch_size: int, n_boot: int, device: str, threads: int | None,
            no_resume: bool, record: bool, unknown_labels: str, max_thumbnails: int, other_checkpoint: bool,
            keep_ungradable: bool) -> int:
    """Validate BUNDLE against its checkpoint (or, on a device, its proven FP32 ONNX file) on --data.

    Exit 0 when every candidate passes the gates; 1 when one FAILs or is INCOMPLETE (the last line and
    parity.json's "verdict" say which); 2 for a usage, bundle, checkpoint or data error, or a missing chain
    of trust; 130 when stopped with Ctrl-C (the manifest is left as it was; the same command resumes from the
    outputs computed so far).
    """
    boot_seed = seed if bootstrap_seed is None else bootstrap_seed
    _check_reference_options(checkpoint, onnx_reference)
    check_output_outside_model_folders(out)
    from uopsl.export.parity_metrics import failed_gate_headroom, judged_bound, one_sided_referrals, parse_gates
    from uopsl.export.parity_html import skipped_words
    from uopsl.export.validate import ValidateConfig, canonical_order, validate_bundle

    # The data first: a label the bundle does not know is refused before any model loads.
    records, space, description = resolve_data(data_spec)
    pool = len(records)  # what --limit drew from: "300 images" means another sample of 300 than of 1,058
    # --limit draws from the images in one order (by id), so that another row order draws the same subset
    records = limit_records(canonical_order(records), limit, seed)
    if space is not None and unknown_labels == "refuse":
        _refuse_unknown_labels(bundle, records, data_spec)
    reference: Any
    if checkpoint is not None:
        reference, facts, may_record = torch_reference(bundle, checkpoint, device, other_checkpoint)
        record = record and may_record
    else:
        reference, facts = _onnx_reference(bundle, threads)
        click.echo(f"reference: {reference.describe()}")
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    config = ValidateConfig(
        backends=names, gates=parse_gates(gates), judge_on=judge_on, batch_size=batch_size, n_boot=n_boot,
        seed=boot_seed,
        per_layer=per_layer, per_layer_images=per_layer_images, sqnr_threshold_db=sqnr_threshold,
        threads=threads, resume=not no_resume, record=record, unknown_labels=unknown_labels,
        keep_ungradable=keep_ungradable, max_thumbnails=max_thumbnails,
    )
    context: dict[str, Any] = {**facts, "data": data_spec, "data_description": description,
                               # relative paths in the command, the data spec and --out are relative to it
                               "working_folder": str(Path.cwd()),
                               "batch_size": batch_size, "threads": threads,
                               "limit": limit, "limit_drawn_from": pool if limit is not None else None,
                               "seed": seed, "bootstrap_seed": boot_seed,
                               "unknown_labels": unknown_labels,
                               "command": " ".join(["uopsl", *sys.argv[1:]]) if sys.argv else ""}
    with reference:  # loads the ONNX session (a no-op for the PyTorch reference)
        result = validate_bundle(bundle, reference, records, out, config, label_space=space, context=context)
    rep = result.report
    pats = rep["data"]["patients"]
    click.echo(f"{rep['data']['n_used']} images ({skipped_words(rep['data'])})"
               + (f" of {pats['n_patients']} patients" if pats["known"] else ", no patient ids")
               + f", truth: {rep['data']['truth']}")
    dropped = rep["data"]["unknown_labels"]
    if dropped["n_dropped_images"]:
        click.echo(f"  left out {dropped['n_dropped_images']} image(s) carrying label(s) that are not classes of "
                   "the bundle (--unknown-labels drop): "
                   + ", ".join(f"{lab} ({k})" + (f" [the bundle has {dropped['near_misses'][lab]}]"
                                                  if lab in dropped["near_misses"] else "")
                               for lab, k in dropped["labels"].items()))
    for reason in rep.get("reasons", []):
        click.echo(f"  FAIL the run: {reason}")
    for c in rep["candidates"]:
        status = c.get("verdict") or ("PASS" if c["passed"] else "FAIL")
        if c.get("error"):
            click.echo(f"  {status} {c['name']}: {c['error']}")
            continue
        flips, findings = c["clinical"]["flips"], c["clinical"]["finding_changes"]

        def of_patients(d: dict[str, Any]) -> str:
            return f" of {d['n_patients']} patient(s)" if d.get("n_patients") else ""

        changed = ""
        if findings["applicable"]:
            bound, how = judged_bound(findings)
            changed = (f", {findings['changes']} image(s){of_patients(findings)} with a changed finding "
                       f"({findings['rate']:.2%}; upper 95 % {bound:.2%}{' by patient' if how == 'by patient' else ''})")
        click.echo(f"  {status} {c['name']} ({c['precision']}): {flips['n']} flips{of_patients(flips)} "
                   f"(upper 95 % {flips['upper95']:.2%}"
                   + (f", by patient {flips['by_patient']['upper95_images']:.2%}" if flips.get("by_patient")
                      else "")
                   + f"){changed}, max |dp| {c['numerical']['max_abs_prob_diff']:.2e}"
                   + (f"; {'; '.join(c['reasons'])}" if c["reasons"] else ""))
        for line in failed_gate_headroom(c):
            click.echo(f"      {line}")
        arith = c.get("arithmetic")
        if arith:
            click.echo(f"      INT8 arithmetic (logits SQNR): the file {arith['file_db']:.1f} dB from the reference "
                       f"(top-1 {arith['file_top1']:.1%} in its exact arithmetic), this CPU ({arith['cpu_int8']}) "
                       f"{arith['kernels_db']:.1f} dB from the file's exact arithmetic")
            if arith.get("note"):
                click.echo(f"      {arith['note']}")
    one_sided = one_sided_referrals(rep)
    if one_sided:
        click.echo(f"  note: {one_sided}")
    for s in rep["skipped_candidates"]:
        click.echo(f"  not run: {s['name']} ({s['reason']})")
    for file, d in rep["per_layer"].items():
        if d.get("suggested_command"):
            click.echo(f"  per-layer {file}: {d['suggested_command']}")
        elif "error" in d:
            click.echo(f"  per-layer {file}: {d['error']}")
        else:
            click.echo(f"  per-layer {file}: no layer to exclude suggested")
    advice = int8_next_step(rep)
    if advice:
        click.echo(f"  next: {advice}")
    click.echo(f"  {rep['confidence']['line']}")
    if pats["known"]:
        click.echo(f"  AUC intervals resampled by patient ({pats['n_patients']} patients); change rates bounded by "
                   "image and by patient; sensitivity and specificity intervals on the effective number of images "
                   "(patients' images correlated)")
    if rep["record"].get("note"):
        click.echo(f"  {rep['record']['note']}")
    click.echo(f"{rep.get('headline') or result.status}: {result.json_path}, {result.html_path}")
    return result.exit_code
