"""Write a deployment bundle: model files, class bank and a manifest with every file's sha256.

The manifest format is owned by :mod:`uopsl.runtime.bundle`, so the writer and
the device reader share one definition. A bundle is assembled in a temporary
sibling folder and renamed into place, so a crash never leaves a half bundle
that would verify. Adding files to an existing bundle (INT8 models, engines,
the calibration table) re-hashes them and rewrites the manifest atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.bundle import (
    MANIFEST,
    MANIFEST_LOCK,
    PARITY_KEY,
    REFERENCE_PYTORCH,
    ClassSpec,
    FileEntry,
    FileKind,
    HeadType,
    Manifest,
    Precision,
    ReferralRule,
    bundle_path_problem,
    check_manifest_checksum,
    describe_file,
    parity_reference_kind,
    quantize_records,
    read_manifest,
    staged_manifest,
    unlisted_files,
    verify_or_raise,
    write_manifest,
)
from uopsl.runtime.errors import BundleError
from uopsl.runtime.fsio import (
    FolderLock,
    Stage,
    is_or_holds,
    is_temporary_name,
    new_dir_mode,
    remove_stale_temporaries,
    replace_folder,
    set_mode,
    sha256_file,
    staging,
    sync_folder,
)
from uopsl.runtime.intended_use import SYNTHETIC_CLINICAL, TRAINING_DATA_NOTE, IntendedUse, synthetic_only
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.signing import SIGNATURE_FILE

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CLASS_BANK_FILE = "class_bank.npy"
_LOCK_WAIT_S = 30.0  # a manifest update takes milliseconds; a holder longer than this is stuck or someone's editor


@contextlib.contextmanager
def manifest_update(bundle: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the bundle's manifest lock while the manifest is read, changed and written back.

    Why: ``quantize --variant cpu`` and ``--variant trt``, ``validate`` and ``build-engine`` may run side
    by side on one bundle; each rewrites the whole manifest, and without the lock the last writer drops
    the others' entries. The lock is the kernel's (released if the process dies); a second writer waits
    for it up to ``_LOCK_WAIT_S``.
    """
    lock = FolderLock(bundle, MANIFEST_LOCK)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while not _try(lock):
        if time.monotonic() > deadline:
            who = f"pid {lock.holder}" if lock.holder else "another process"
            raise BundleError(f"{who} has been updating {Path(bundle) / 'manifest.json'} for {_LOCK_WAIT_S:.0f} s; "
                              "wait for that uopsl command to finish, then run this one again")
        time.sleep(0.05)
    try:
        # What a writer killed mid-write left: the manifest's temporaries are only made under this lock, so any
        # there now is stale; a file staged for add_file is copied without it, so only one idle for a while goes.
        # Otherwise they travelled with every copy of the bundle (17 MB for an INT8 file) and blocked --force.
        remove_stale_temporaries(bundle, target=MANIFEST)
        remove_stale_temporaries(bundle, idle_s=_STALE_STAGE_S)
        yield
    finally:
        lock.release_and_unlink()  # the lock file goes with the update: a bundle copied to a device carries none


#: A file staged for the bundle and unchanged this long belongs to a writer that was stopped (a copy into the
#: bundle takes seconds): :func:`manifest_update` removes it.
_STALE_STAGE_S = 600.0


def _try(lock: FolderLock) -> bool:
    """One attempt at the manifest lock; a lock file removed under us again and again counts as busy."""
    try:
        return lock.acquire()
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return False
        raise


def check_replaceable(target: str | os.PathLike[str], keep: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Raise :class:`BundleError` unless ``--force`` may replace ``target``: missing, an empty folder, or a bundle.

    Why: replacing means deleting. A mistyped ``--out`` (the runs folder, the checkpoint, the folder you
    are in) must not take a checkpoint or anyone's files with it. ``keep``: paths that must survive
    (the checkpoint, the class file), refused when they are ``target`` or inside it.
    """
    path = Path(target)
    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        raise BundleError(f"{path} is a file (or a link), not a bundle folder; --force replaces only a bundle "
                          "folder or an empty one: choose another --out")
    for other in (Path.cwd(), *map(Path, keep)):
        if is_or_holds(path, other):
            what = "the folder you are in" if other == Path.cwd() else str(other)
            raise BundleError(f"--out {path} is or holds {what}, which replacing it would delete: choose another --out")
    if not any(path.iterdir()):
        return
    if not (path / "manifest.json").is_file():
        raise BundleError(f"{path} is not a uopsl bundle (it holds no manifest.json); --force replaces only a bundle "
                          "folder or an empty one, so that nothing else is deleted: choose another --out")
    try:
        manifest = read_manifest(path)
    except BundleError as exc:
        raise BundleError(f"{path} holds a manifest.json that is not a readable uopsl manifest ({exc}); --force does "
                          "not delete it: remove the folder yourself if it is an old bundle, or choose another --out"
                          ) from None
    # Files the manifest does not list are nobody's bundle: results screened into it before 0.2.1 refused that,
    # a signing key, notes. Replacing the bundle would delete them with it.
    # Temporaries of a write that was stopped are the bundle's own leftovers: deleted with it.
    extra = [f for f in unlisted_files(path, manifest, own=(SIGNATURE_FILE, *quantize_records(manifest)))
             if not is_temporary_name(f)]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BundleError(f"{path} is a bundle, but it also holds {len(extra)} file(s) its manifest does not list "
                          f"({shown}), which replacing it would delete: move them out of it (results, keys) or "
                          "delete them yourself, or choose another --out")


def write_bundle(
    out: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    classes: Sequence[ClassSpec],
    head: HeadType,
    preprocess: PreprocessConfig,
    *,
    class_bank: np.ndarray,
    site_map_size: tuple[int, int],
    opset: int,
    referral_rule: ReferralRule = "any_referable",
    referral_threshold: float = 0.5,
    backbone: str = "",
    training_data_fingerprint: str = "",
    notes: dict[str, Any] | None = None,
    overwrite: bool = False,
    intended_use: IntendedUse | None = None,
) -> Manifest:
    """Create bundle folder ``out`` holding ``model.onnx``, ``class_bank.npy`` and ``manifest.json``.

    ``intended_use``: what the model may be used for (None: not stated, and every report says so).
    """
    target = Path(os.path.abspath(out))  # "." has no name to build the temporary folder's from
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists; pass overwrite=True (--force) to replace it")
    check_replaceable(target)
    if class_bank.shape[0] != len(classes):
        raise BundleError(f"class bank has {class_bank.shape[0]} rows for {len(classes)} classes")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copyfile(onnx_path, tmp / MODEL_FILE)
        np.save(tmp / CLASS_BANK_FILE, np.ascontiguousarray(class_bank, np.float32))
        files = (
            describe_file(tmp, FileEntry(MODEL_FILE, "onnx", "fp32")),
            describe_file(tmp, FileEntry(CLASS_BANK_FILE, "class_bank")),
        )
        manifest = Manifest(
            classes=tuple(classes), head=head, preprocess=preprocess, files=files,
            referral_rule=referral_rule, referral_threshold=referral_threshold,
            site_map_size=tuple(site_map_size), opset=opset, backbone=backbone,  # type: ignore[arg-type]
            training_data_fingerprint=training_data_fingerprint,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), notes=dict(notes or {}),
            intended_use=intended_use or IntendedUse(),
        )
        write_manifest(tmp, manifest)
        manifest = read_manifest(tmp)  # as written (its content hash, the format version to_dict chose)
        # mkdtemp made the folder owner-only (0700): give it the mode mkdir would, once it is filled (a fresh
        # bundle, not the replaced one's mode), so the account that screens can read a copied bundle.
        set_mode(tmp, new_dir_mode())
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%d classes, %s head)", target, len(classes), head)
    return manifest


# What a file's manifest entry records about its content (not how it was made): kept while its sha256 is unchanged.
_CONTENT_RECORDS = ("parity",)


def add_file(
    bundle: str | os.PathLike[str],
    src: str | os.PathLike[str] | None,
    name: str,
    kind: FileKind,
    precision: Precision = "none",
    info: dict[str, Any] | None = None,
    *,
    move: bool = False,
    **manifest_updates: Any,
) -> Manifest:
    """Copy ``src`` into the bundle as ``name`` (or register a file already there when ``src`` is None).

    Replaces an entry of the same name; ``manifest_updates`` set other
    manifest fields (e.g. ``calibration_fingerprint``) in the same atomic write.
    The new file takes the old one's place only under the manifest lock, once
    the manifest has passed its check and the new manifest is written beside
    its place: a refused or failed update (the lock busy, a damaged manifest,
    a full disk) leaves the bundle's files as they were, and what is left to
    do then is two renames. A kill or power cut between those two renames (a
    moment, not the seconds of writing) still leaves the new file beside the
    old manifest: verify names it, and running the command again repairs it.

    ``move``: ``src`` is the caller's own temporary in the bundle's folder
    (:func:`uopsl.runtime.fsio.staged_path`; ``uopsl quantize`` writes its
    model there): it is renamed, not copied, so a nearly full disk needs no
    room for a second copy.
    """
    root = Path(bundle)
    dest = root / name
    problem = bundle_path_problem(name)
    if problem:
        raise BundleError(f"cannot add {name!r} to the bundle: {problem}")
    with contextlib.ExitStack() as stack:
        stage: Stage | None = None
        if src is not None and Path(src).resolve() != dest.resolve():
            # A temporary of its own: two commands adding the same file side by side copy to different places.
            stage = stack.enter_context(staging(dest))
            if move and Path(src).resolve().parent == dest.resolve().parent:
                stage.close()
                os.replace(src, stage.path)  # sealed (mode, fsync) when committed
            else:
                with stage.writer("wb") as out, open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
        elif not dest.is_file():
            raise BundleError(f"{dest} does not exist; nothing to add to the bundle")
        with manifest_update(root):
            check_manifest_checksum(root)
            manifest = read_manifest(root)
            staged = dest if stage is None else stage.path  # the new bytes, described before they take dest's place
            entry = FileEntry(name, kind, precision, sha256=sha256_file(staged), size=staged.stat().st_size,
                              info=dict(info or {}))
            before = next((f for f in manifest.files if f.path == name), None)
            if before is not None and before.sha256 == entry.sha256:
                # The same bytes keep what was found about them: a quantize rerun that made the same file again
                # dropped its validate verdicts, a FAIL included, and a FAILed file read "not validated" (a review).
                kept = {k: before.info[k] for k in _CONTENT_RECORDS if k in before.info and k not in entry.info}
                entry = replace(entry, info={**entry.info, **kept})
            # In place when listed already: re-adding what is there changes nothing, not even the manifest's hash.
            names = [f.path for f in manifest.files]
            files = (tuple(entry if f.path == name else f for f in manifest.files) if name in names
                     else manifest.files + (entry,))
            updated = replace(manifest, files=files, **manifest_updates)
            with contextlib.ExitStack() as writing:
                new_manifest = writing.enter_context(staged_manifest(root, updated)) if updated != manifest else None
                if stage is not None:
                    stage.commit()
                if new_manifest is not None:
                    new_manifest.commit()
            if stage is not None or updated != manifest:
                sync_folder(root)
    return updated


def set_intended_use(bundle: str | os.PathLike[str], use: IntendedUse) -> Manifest:
    """Restate what ``bundle``'s model may be used for, atomically (``uopsl intended-use``).

    The statement is about these files, so a bundle that fails verification is
    refused rather than labelled. Results already screened with the bundle stay
    tied to it: the intended use is not part of the model's identity
    (:data:`uopsl.runtime.results.model_sha256` leaves it out), only of the
    manifest's own hash. Restating the same use leaves the manifest as it was.
    """
    root = Path(bundle)
    if not use.stated:
        raise BundleError("an intended use must be stated: demonstration, research or clinical")
    with manifest_update(root):
        manifest = verify_or_raise(root)  # the manifest's own checksum included
        records = manifest.notes.get(TRAINING_DATA_NOTE)
        if use.for_patients and isinstance(records, list) and synthetic_only(r for r in records if isinstance(r, dict)):
            raise BundleError(SYNTHETIC_CLINICAL.format(manifest.intended_use.trained_on or "see the manifest's notes"))
        if manifest.intended_use == use:
            log.info("%s already states this intended use; the manifest is left as it was", root / "manifest.json")
            return manifest
        write_manifest(root, replace(manifest, intended_use=use))
        updated = read_manifest(root)  # with the content hash just written
    log.info("%s: intended use now %s", root, use.status)
    return updated


def record_parity(bundle: str | os.PathLike[str], records: dict[str, dict[str, dict[str, Any]]],
                  validated: Mapping[str, str] | None = None) -> Manifest:
    """Store ``uopsl validate``'s verdicts in the manifest (``FileEntry.info["parity"]``), atomically.

    ``validated``: the sha256 of each file as it was validated. A file the
    manifest lists with other content by now (``uopsl quantize`` replaced it
    during the run) gets no record: the verdict is about the old content, and
    filed under the new checksum it would let ``auto`` trust a file never
    validated.

    ``records`` maps a bundle file to ``{backend: verdict}``. Verdicts are
    merged per backend into the file's record while its sha256 is unchanged
    (a later run on one backend does not erase another backend's verdict), and
    start afresh once the file's content changed; see
    :func:`uopsl.runtime.bundle.parity_status`. A verdict judged against
    anything but the PyTorch checkpoint (a device's ONNX reference) never
    replaces one judged against it for the same content on the same backend
    (:func:`kept_pytorch_verdict`: that one is kept, whatever either says);
    a PyTorch-referenced verdict replaces any, with two exceptions
    (:func:`kept_verdict`): an INCOMPLETE one never replaces a complete PASS
    or FAIL, and a PASS never replaces a FAIL judged on other data: a failure
    on one set of photographs is not undone by passing on another, so
    running again on other data until a file passes cannot clear it (validate
    again on the data it failed on, or change the file). A verdict that only repeats
    the recorded one (everything equal but its ``created`` time) leaves the
    record as it is, and when nothing changed the manifest is not rewritten:
    rerunning the same validation keeps the manifest's bytes, its content hash
    and so the identity of the bundle that screening results are tied to.
    """
    root = Path(bundle)
    with manifest_update(root):
        return _record_parity(root, records, validated or {})


def _record_parity(root: Path, records: dict[str, dict[str, dict[str, Any]]],
                   validated: Mapping[str, str]) -> Manifest:
    check_manifest_checksum(root)
    manifest = read_manifest(root)
    listed = {f.path: f.sha256 for f in manifest.files}
    for path in [p for p in records if p in validated and listed.get(p) != validated[p]]:
        log.warning("%s changed while it was validated (the manifest lists other content now); its verdict is not "
                    "recorded: validate it again", path)
        records = {k: v for k, v in records.items() if k != path}
    unknown = sorted(set(records) - {f.path for f in manifest.files})
    if unknown:
        raise BundleError(f"cannot record parity for files the manifest of {root} does not list: {unknown}")
    files = []
    changed = False
    for f in manifest.files:
        if f.path in records:
            old = f.info.get(PARITY_KEY)
            kept = dict(old.get("backends") or {}) if isinstance(old, dict) and old.get("sha256") == f.sha256 else {}
            new = {}
            for b, v in records[f.path].items():
                guarded = kept_pytorch_verdict(f, b, parity_reference_kind(v))
                if guarded is not None:
                    log.warning("%s on %s: the verdict judged against %s (%s) is not recorded; the manifest keeps "
                                "its verdict judged against PyTorch (%s)", f.path, b,
                                v.get("reference_source") or "another reference", v.get("verdict"),
                                guarded.get("verdict"))
                elif (why := kept_verdict(kept.get(b), v)) is not None:
                    guarded = kept[b]
                    log.warning("%s on %s: %s is not recorded; the manifest keeps %s", f.path, b,
                                v.get("verdict"), why)
                new[b] = kept[b] if guarded is not None or _same_verdict(kept.get(b), v) else v
            # The overall verdict is not stored: parity_status derives it from the per-backend ones.
            entry = {"sha256": f.sha256, "backends": {**kept, **new}}
            if entry != old:
                changed = True
                f = replace(f, info={**f.info, PARITY_KEY: entry})
        files.append(f)
    if not changed:
        log.info("parity verdicts unchanged in %s: the manifest is left as it was", root / "manifest.json")
        return manifest
    manifest = replace(manifest, files=tuple(files))
    write_manifest(root, manifest)
    return manifest


def kept_pytorch_verdict(entry: FileEntry, backend: str, new_kind: str) -> Mapping[str, Any] | None:
    """The recorded verdict that a new one of reference kind ``new_kind`` may not replace (None: it may).

    A verdict judged against the PyTorch checkpoint (the release gate, on the
    workstation) is kept for as long as the file's content is unchanged: a
    verdict judged against anything else (the bundle's FP32 ONNX file on a
    device, a reference of unknown kind) is weaker evidence, one gated link
    further from PyTorch, and must neither turn its FAIL into a PASS nor
    replace its PASS. ``new_kind``: :func:`~uopsl.runtime.bundle.parity_reference_kind`
    of the new verdict.
    """
    if new_kind == REFERENCE_PYTORCH:
        return None
    rec = entry.info.get(PARITY_KEY)
    if not isinstance(rec, dict) or rec.get("sha256") != entry.sha256 or not isinstance(rec.get("backends"), dict):
        return None
    old = rec["backends"].get(backend)
    if isinstance(old, dict) and parity_reference_kind(old) == REFERENCE_PYTORCH:
        return old
    return None


def kept_verdict(old: Any, new: Mapping[str, Any]) -> str | None:
    """Why the recorded verdict ``old`` (same file content, same backend) stays instead of ``new``, or None.

    An INCOMPLETE run (some gate could not be evaluated on its data) does not
    replace a complete PASS or FAIL; a PASS does not replace a FAIL judged on
    other photographs (another ``data.image_ids_sha256``, or ``data.images_sha256``
    where both records have one). A FAIL replaces anything: it only keeps
    ``auto`` off the file.
    """
    if not isinstance(old, dict) or old.get("verdict") not in ("PASS", "FAIL"):
        return None
    said = f"its {old['verdict']} on {_data_words(old)} ({old.get('created', '?')})"
    if new.get("verdict") == "INCOMPLETE":
        return f"{said}: an incomplete run does not replace a complete verdict"
    if old["verdict"] == "FAIL" and new.get("verdict") == "PASS" and not _same_data(old, new):
        return (f"{said}: a PASS on other data ({_data_words(new)}) does not clear a FAIL; validate again on "
                "the data it failed on, or change the file")
    return None


def _data_of(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    data = rec.get("data")
    return data if isinstance(data, dict) else {}


def _data_words(rec: Mapping[str, Any]) -> str:
    return f"{rec.get('n_images', '?')} images of {_data_of(rec).get('spec', 'unrecorded data')}"


def _same_data(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    da, db = _data_of(a), _data_of(b)
    if not da.get("image_ids_sha256") or da.get("image_ids_sha256") != db.get("image_ids_sha256"):
        return False
    both = da.get("images_sha256") and db.get("images_sha256")
    return not both or da["images_sha256"] == db["images_sha256"]


def _same_verdict(old: Any, new: Any) -> bool:
    """Whether ``new`` repeats ``old`` in everything but the time it was made."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    return {k: v for k, v in old.items() if k != "created"} == {k: v for k, v in new.items() if k != "created"}
