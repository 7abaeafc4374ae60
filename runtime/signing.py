"""Bundle signatures: a device that trusts its maker's public key screens only with bundles that maker signed.

The manifest's checksums catch a damaged copy but not someone who edits a
file and recomputes them (``docs/deployment.md``, "The bundle"). A maker signs
a finished bundle with an Ed25519 private key (``uopsl sign``); the signature
lives next to the manifest in ``signature.json``; a device given the maker's
public key (``--trusted-key`` or ``UOPSL_TRUSTED_KEYS``) refuses a bundle that
is unsigned, signed by another key, or changed since it was signed.

What a signature covers (:func:`signed_content`): every manifest field that
decides or describes a screening (classes and thresholds, head, referral
rule, preprocessing, output names, intended use, ...) and, per file listed at
signing time, its path, kind, precision, size and sha256; with
:func:`uopsl.runtime.bundle.verify`, run on the same read of the manifest
(:func:`open_trusted`), the bytes of every listed file. Each file's parity
records (``uopsl validate``'s verdicts, which a device may add after signing)
are signed beside that, as they were at signing: adding one later is no change
to the bundle, but where signatures are required only the signed ones decide
which INT8 file or INT8/FP16 engine ``auto`` runs (:func:`with_signed_parity`; before,
a forged record could make ``auto`` run a signed INT8 file that failed
validation). Any file
added after signing, a TensorRT engine included, fails the check until the
bundle is signed again: build engines on a device of the same kind (GPU model,
JetPack / TensorRT version) before signing, and ship the signed bundle.

Where a device's keys come from (:func:`trusted_keys_for`): the ``*.pub`` /
``*.pem`` files of a folder only an administrator writes
(``/etc/uopsl/trusted-keys``, on Windows ``%PROGRAMDATA%\\uopsl\\trusted-keys``,
whose permissions the administrator must restrict), of the folder
``UOPSL_TRUSTED_KEYS_DIR`` names, the files ``UOPSL_TRUSTED_KEYS`` lists, and
those a caller passes. Each source adds keys; none removes them, so a service
started without the environment variables still checks; a folder that
exists but cannot be read stops every run instead of counting as empty.

Recalls: a trusted-keys folder's :data:`REVOCATIONS_FILE` withdraws a key, the
bundles a key signed before a date (which also stops a rollback to them), or
one signed release (:func:`read_revocations`); it wins over every source of keys.

Not covered: a file replaced between the checksum check and the load and put
back after it (the backends hash each model file just before and after loading
it, by path); ONNX external-data files (``uopsl sign`` refuses models that use
them); rollback to an older bundle the same key signed, until a revocation
list names a cut-off.

``cryptography`` is needed to sign and to check (the ``sign`` extra: :func:`uopsl.runtime.optional.extra_hint`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from uopsl.runtime.bundle import (
    MANIFEST,
    PARITY_KEY,
    Manifest,
    read_manifest_json,
    read_manifest_raw,
    verify_or_raise,
)
from uopsl.runtime.errors import BundleError, ConfigError, command_word
from uopsl.runtime.fsio import load_json_strict, write_json
from uopsl.runtime.optional import require
from uopsl.runtime.pkcs8 import (PBKDF2_ITERATIONS, WEAK_BELOW, encrypt_pkcs8_pem, legacy_scheme,
                                 pbkdf2_iterations)

log = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
SIGNATURE_FORMAT = 1
#: Where a device lists the public keys it trusts (PEM files), separated like PATH.
TRUSTED_KEYS_ENV = "UOPSL_TRUSTED_KEYS"
#: Another folder of trusted public keys (``*.pub``, ``*.pem``), read besides the machine's own.
TRUSTED_KEYS_DIR_ENV = "UOPSL_TRUSTED_KEYS_DIR"
#: The revocation list a trusted-keys folder may hold (:func:`read_revocations`).
REVOCATIONS_FILE = "revoked.txt"
#: Manifest fields a signature does not cover: the file list is covered entry by entry, and the rest is
#: bookkeeping that a rewrite on the device recomputes.
_UNSIGNED_FIELDS = ("files", "content_sha256", "format_version")
_MAX_SIGNATURE_BYTES = 32 << 20  # the signed content repeats the manifest's fields (manifests: <= 16 MiB)


def _starting_dir() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # started in a folder deleted since
        return None


#: The working directory when this module was first imported: what a relative path in
#: :data:`TRUSTED_KEYS_ENV` or :data:`TRUSTED_KEYS_DIR_ENV` is relative to. The variables are read again
#: before batches (a service picks up a new key or recall), and an application may change directory in
#: between: against the directory of each read, ``UOPSL_TRUSTED_KEYS=maker.pub`` would stop a running
#: service with "cannot read the public key" after a ``chdir``.
_ENV_BASE = _starting_dir()


def _from_env(path: str) -> str:
    """A path from one of the trust variables, absolute: relative ones against :data:`_ENV_BASE`."""
    if os.path.isabs(path) or _ENV_BASE is None:
        return path
    return os.path.join(_ENV_BASE, path)


def warn_if_signed(bundle: str | os.PathLike[str], change: str) -> bool:
    """Warn that ``change`` to ``bundle`` voids its signature, when the bundle is signed; True then.

    calibrate, quantize, build-engine and intended-use rewrite the manifest or add a file the signature does
    not cover: machines that trust signing keys then refuse the bundle until it is signed again. Said on the
    maker's machine, not found on the device afterwards: calibrate, quantize and intended-use say it once the
    change is made (a command refused on the way voids nothing), build-engine before its minutes of work.
    """
    path = Path(bundle)
    if not (path / SIGNATURE_FILE).exists():
        return False
    log.warning("%s is signed: %s makes machines that trust signing keys refuse the bundle until it is signed "
                "again (uopsl sign, where the private key is; docs/deployment.md, \"Signed bundles\")", path, change)
    return True


def _ed25519() -> Any:
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "Signing or checking a bundle signature")


def _serialization() -> Any:
    return require("cryptography.hazmat.primitives.serialization", "Signing or checking a bundle signature")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode("ascii")


def signature_id(payload: Mapping[str, Any]) -> str:
    """A signed release's name: the sha256 of its signed payload (key, time, content), 64 hex digits. Signing
    the same bundle again makes another; a revocation list names a release by it."""
    return hashlib.sha256(_canonical(payload)).hexdigest()


def _signed_time(text: str) -> _dt.datetime | None:
    try:
        when = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def key_id(public_raw: bytes) -> str:
    """A public key's short name: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} ({exc.strerror or exc}); check the path") from exc
    if b"-----BEGIN" not in data:  # after any comment lines (an administrator's note above the key is fine)
        raise ConfigError(f"{p}: not a PEM {what} (no '-----BEGIN' line in it; `uopsl keygen` writes both keys)")
    return data


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)


def _public_key_blocks(path: str | os.PathLike[str], data: bytes) -> list[bytes]:
    """Each PEM block of a public-key file (an administrator may keep several makers' keys in one file).

    A private key is refused by name: it must never be on a device."""
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    if any(b"PRIVATE" in label for label, _ in blocks):
        raise ConfigError(f"{path}: this is a PRIVATE key, which must not be on devices (whoever copies it can sign "
                          "bundles they trust); give the public one (`uopsl keygen` wrote it as NAME.pub) and "
                          "delete this copy")
    return [block for _, block in blocks] or [data]


def _check_not_writable_by_others(path: str | os.PathLike[str], what: str) -> None:
    """ConfigError when ``path`` (links resolved) or a folder above it can be changed by another user (POSIX).

    Why: anyone who can write a trusted-keys folder, a key file or a revocation list can add a key of their
    own or undo a recall, and the device would then screen with their model (a review did it as ``nobody``
    on a folder left at mode 777). So, as ssh does with its keys, such a file or folder is refused: each must
    belong to root or to this user and not be writable by group or others; a folder above may be, with the
    sticky bit (``/tmp``), which keeps others from renaming what is not theirs. Not checked on Windows, where
    ProgramData's access lists decide (docs/deployment.md).
    """
    if os.name != "posix":
        return
    real = Path(os.path.realpath(os.fspath(path)))
    me = os.geteuid()
    for i, p in enumerate((real, *real.parents)):
        try:
            st = os.stat(p)
        except OSError:
            continue  # what cannot be read is reported where it is read
        sticky_folder = i > 0 and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_folder
        if st.st_uid not in (0, me) or writable:
            whose = f"owner uid {st.st_uid}" if st.st_uid not in (0, me) else "writable by group or others"
            shown = f"{real}" if i == 0 else f"{p} (above {real})"
            raise ConfigError(
                f"{shown}: the {what} can be changed by another user (mode {stat.S_IMODE(st.st_mode):o}, {whose}); "
                "anyone who can write it can add a signing key or undo a recall. Make it belong to root (or this "
                f"user) and writable by its owner only, e.g. sudo chown root {command_word(p)} && sudo chmod go-w "
                f"{command_word(p)}")


@dataclass(frozen=True)
class Revocation:
    """One line of a revocation list: a key withdrawn (from ``before`` on, when given) or one signed release.

    ``kind``: ``key`` (``ident`` a key id), ``release`` (``ident`` a signature id,
    :func:`signature_id`) or ``file`` (``ident`` the sha256 of a bundle file: a recall of a model
    that holds whichever signature it was signed with). ``before``: for a key, only bundles it signed earlier are
    refused (a recall of older releases, and what stops a rollback to them); None
    withdraws the key. ``source``: ``file:line``, for messages.
    """

    kind: str
    ident: str
    before: _dt.datetime | None = None
    reason: str = ""
    source: str = ""

    def refuses(self, key_id_: str, signature_id_: str, signed_at: _dt.datetime | None,
                file_sha256s: Iterable[str] = ()) -> bool:
        if self.kind == "release":
            return signature_id_ == self.ident
        if self.kind == "file":
            return self.ident in {str(h).lower() for h in file_sha256s}
        if key_id_ != self.ident:
            return False
        # A signing time that cannot be read cannot prove it is after the cut-off.
        return self.before is None or signed_at is None or signed_at < self.before

    def describe(self) -> str:
        if self.kind == "release":
            what = f"this signed release ({self.ident}) is revoked"
        elif self.kind == "file":
            what = f"a file of this bundle (sha256 {self.ident}) is revoked, however the bundle was signed"
        elif self.before is None:
            what = f"key {self.ident} is revoked"
        else:
            what = (f"key {self.ident}'s bundles signed before {self.before.isoformat()} are revoked (use one it "
                    "signed since)")
        return f"{what} by {self.source}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class TrustedKey:
    """A public key a device trusts, with where it came from (for messages) and the revocations that apply to
    the bundles it signs (this machine's revocation lists: every release entry, and the entries for this key)."""

    key_id: str
    raw: bytes
    source: str
    revocations: tuple[Revocation, ...] = ()


def load_trusted_keys(paths: Iterable[str | os.PathLike[str]]) -> tuple[TrustedKey, ...]:
    """The Ed25519 public keys in PEM files ``paths`` (ConfigError for a file that holds none).

    Without this machine's revocation lists: checking a bundle against these alone ignores every recall.
    :func:`trusted_keys_for` (what :func:`open_trusted` uses) attaches them."""
    paths = list(paths)
    if not paths:  # nothing to load: no need for cryptography
        return ()
    ser, ed = _serialization(), _ed25519()
    keys: list[TrustedKey] = []
    for path in paths:
        _check_not_writable_by_others(path, "trusted key file")
        blocks = _public_key_blocks(path, _read_pem(path, "public key"))
        for i, block in enumerate(blocks):
            where = f"{path}" if len(blocks) == 1 else f"{path} (key {i + 1} of {len(blocks)})"
            try:
                key = ser.load_pem_public_key(block)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: not a readable public key ({exc})") from exc
            if not isinstance(key, ed.Ed25519PublicKey):
                raise ConfigError(f"{where}: a {type(key).__name__}, expected an Ed25519 public key (`uopsl keygen`)")
            raw = key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
            if all(k.raw != raw for k in keys):  # the same key in the folder and on the command line: once
                keys.append(TrustedKey(key_id(raw), raw, where))
    return tuple(keys)


def trusted_keys_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The key files :data:`TRUSTED_KEYS_ENV` lists (empty when unset); relative ones as :data:`_ENV_BASE` says."""
    value = (os.environ if environ is None else environ).get(TRUSTED_KEYS_ENV, "")
    return tuple(_from_env(p.strip()) for p in value.split(os.pathsep) if p.strip())


def _windows_program_data() -> Path:
    """Windows' ProgramData folder as the system records it (SHGetFolderPathW, CSIDL_COMMON_APPDATA), not the
    ``PROGRAMDATA`` environment variable, which whoever starts the process can point at a folder of their own
    (a review: that moved the machine's keys and revocation list out of the way)."""
    import ctypes

    try:
        buf = ctypes.create_unicode_buffer(1024)
        shell32 = getattr(ctypes, "windll").shell32
        if shell32.SHGetFolderPathW(None, 0x23, None, 0, buf) == 0 and buf.value:
            return Path(buf.value)
    except (AttributeError, OSError):
        pass
    return Path("C:\\ProgramData")


def system_keys_dir(environ: Mapping[str, str] | None = None, *, windows: bool | None = None) -> Path:
    """The machine's own folder of trusted keys, read by every run whatever the uopsl variables say: on Windows
    under the system's ProgramData folder (never taken from the environment). ``windows``: this system's
    answer unless given (tests)."""
    if (os.name == "nt") if windows is None else windows:
        return _windows_program_data() / "uopsl" / "trusted-keys"
    return Path("/etc/uopsl/trusted-keys")


#: Key file names taken from a trusted-keys folder (any case); other names (a README) are left alone.
_KEY_SUFFIXES = (".pub", ".pem")


def _keys_in_folder(folder: Path, *, required: bool) -> tuple[str, ...]:
    """The key files of ``folder``. Fails closed: a folder that exists but cannot be listed or holds no key,
    a broken link or a file where the folder should be, a key name that is not a readable file, or a
    ``required`` folder that is missing is a ConfigError, never "no keys" (which would screen unsigned
    bundles). Only a folder that is not there at all means this machine trusts no key from it."""
    if os.path.islink(folder) and not os.path.exists(folder):
        raise ConfigError(f"{folder}: the trusted-keys folder is a broken link; fix or remove it")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{folder}: no such trusted-keys folder ({TRUSTED_KEYS_DIR_ENV} names it); fix the "
                              "path or create the folder") from None
        return ()
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot list the trusted keys ({exc.strerror or exc}); fix the folder or its "
                          "permissions (a machine that cannot read its keys screens nothing)") from exc
    _check_not_writable_by_others(folder, "trusted-keys folder")
    found = []
    for e in entries:
        if not e.name.lower().endswith(_KEY_SUFFIXES):
            continue
        if not os.path.isfile(e.path):
            raise ConfigError(f"{e.path}: listed as a trusted key but not a readable file (a broken link?); "
                              "fix or remove it")
        found.append(e.path)
    if not found:  # made for keys (by an administrator, a mount) yet holding none: a mistake, not a choice
        raise ConfigError(f"{folder}: the trusted-keys folder holds no key (*.pub or *.pem files); put the bundle "
                          "makers' public keys there (a revocation list works beside them, not alone), or remove "
                          "the folder if this machine trusts none")
    return tuple(found)


# The forms Python 3.10's fromisoformat reads too (3.11 takes many more), so a list reads the same everywhere:
# a date, or a date and time to the minute, second or fraction, with Z or an offset.
_DATE_FORM = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.(\d{3}|\d{6}))?)?(Z|[+-]\d{2}:\d{2}))?")


def _parse_time(text: str, where: str) -> _dt.datetime:
    """An ISO 8601 date (midnight UTC) or date-time with its zone (:data:`_DATE_FORM`); ConfigError otherwise."""
    if not _DATE_FORM.fullmatch(text):
        raise ConfigError(f"{where}: {text!r} is not a date this list takes: 2026-12-01 (midnight UTC), or a date "
                          "and time with its zone, 2026-12-01T09:30:00Z or 2026-12-01T09:30:00+01:00")
    try:
        when = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a calendar date") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)


_HEX = frozenset("0123456789abcdef")
#: Entry kind -> the length of its hex identifier.
_ENTRY_KINDS = {"key": 16, "release": 64, "file": 64}


def read_revocations(path: str | os.PathLike[str]) -> tuple[Revocation, ...]:
    """The entries of the revocation list ``path`` (UTF-8 text; ``#`` starts a comment, which becomes the
    entry's reason). One entry a line::

        key KEY_ID                        # withdrawn: every bundle it signed is refused (a leaked key)
        key KEY_ID before 2026-12-01      # its bundles signed before then are refused (recall, no rollback)
        release SIGNATURE_ID              # one signed release (uopsl sign and uopsl-screen verify print it)
        file SHA256                       # any bundle holding a file of this content, however often signed

    Fails closed: a line it cannot read stops every run (ConfigError with the line), as a device that
    misreads its revocations would screen with a recalled model.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the revocation list ({getattr(exc, 'strerror', None) or exc}); fix "
                          "the file or its permissions (a machine that cannot read it screens nothing)") from exc
    entries: list[Revocation] = []
    for n, line in enumerate(text.splitlines(), 1):
        body, _, comment = line.partition("#")
        words = body.split()
        if not words:
            continue
        where = f"{p}:{n}"
        kind, ident = words[0].lower(), (words[1].lower() if len(words) > 1 else "")
        expected_len = _ENTRY_KINDS.get(kind)
        shape_ok = expected_len is not None and len(ident) == expected_len and set(ident) <= _HEX
        tail = [w.lower() for w in words[2:]]
        if not shape_ok or not (tail == [] or (kind == "key" and len(tail) == 2 and tail[0] == "before")):
            raise ConfigError(f"{where}: cannot read {line.strip()!r}; expected 'key KEY_ID' (16 hex digits), "
                              "'key KEY_ID before DATE', 'release SIGNATURE_ID' or 'file SHA256' (64 hex digits), "
                              "then an optional '# reason'")
        before = _parse_time(words[3], where) if tail else None
        entries.append(Revocation(kind, ident, before, comment.strip(), where))
    return tuple(entries)


# Names a list may have been given by mistake, once case, spaces and any ".txt" are taken off.
_NEAR_MISS_STEMS = frozenset({"revoked", "revoke", "revokes", "revocation", "revocations", "revoked.text",
                              "revocation.list", "revoked.list"})
# Files an editor or a careful writer leaves beside a list (swap files, backups, the temporary file of an
# atomic replace): never the list, never a mistake to stop for.
_SCRATCH_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".temp", ".bak", ".orig", ".old", ".new", ".part")


def _meant_as_list(name: str) -> bool:
    """Whether ``name`` looks like a revocation list under a wrong name (``revoked.txt.txt``, ``revoked``,
    ``Revocations.txt``, `` revoked.txt``), as opposed to an editor's or writer's scratch file."""
    low = name.strip().lower()
    if name.startswith(".") or low.endswith(_SCRATCH_SUFFIXES):
        return False
    while low.endswith(".txt"):
        low = low[: -len(".txt")]
    return low in _NEAR_MISS_STEMS


def _revocation_file(folder: Path) -> Path | None:
    """The revocation list of ``folder`` (its name in any case), or None. A name that looks meant for one but is
    not exactly ``revoked.txt`` (``revoked.txt.txt`` from an editor that hides extensions, ``revoked``,
    ``Revocations.txt``) stops every run: read as "no list", it would let a recalled bundle screen."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot list the trusted keys ({exc.strerror or exc}); fix the folder or its "
                          "permissions (a machine that cannot read its keys screens nothing)") from exc
    found = [e for e in entries if e.name.lower() == REVOCATIONS_FILE]
    near = sorted(e.name for e in entries if e.name.lower() != REVOCATIONS_FILE and _meant_as_list(e.name))
    if near or len(found) > 1:
        names = near or [e.name for e in found]
        raise ConfigError(f"{folder}: {', '.join(repr(n) for n in names)} is not read as a revocation list: name "
                          f"the one list exactly {REVOCATIONS_FILE} (a list under another name would be ignored)")
    if not found:
        return None
    path = Path(found[0].path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: the revocation list is not a readable file (a broken link, a folder?); fix or "
                          "remove it")
    _check_not_writable_by_others(path, "revocation list")
    return path


def _revocations_in_folder(folder: Path) -> tuple[Revocation, ...]:
    path = _revocation_file(folder)
    return () if path is None else read_revocations(path)


def _trust_folders(env: Mapping[str, str]) -> list[Path]:
    """The machine's trusted-keys folder, then the one :data:`TRUSTED_KEYS_DIR_ENV` names (if set)."""
    folders = [_system_dir_for_tests or system_keys_dir(env)]
    if env.get(TRUSTED_KEYS_DIR_ENV):
        folders.append(Path(_from_env(env[TRUSTED_KEYS_DIR_ENV])))
    return folders


def key_paths(keys: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None) -> list[str]:
    """``keys`` (one key file or several, a one-shot iterable included) as a list of absolute paths, read once:
    what later reads of the same keys use, whatever the working directory is by then."""
    if keys is None:
        return []
    given = [keys] if isinstance(keys, (str, os.PathLike)) else list(keys)
    return [os.path.abspath(k) for k in given]


def configured_revocations(environ: Mapping[str, str] | None = None) -> tuple[Revocation, ...]:
    """The entries of the :data:`REVOCATIONS_FILE` of this machine's trusted-keys folder and of the folder
    :data:`TRUSTED_KEYS_DIR_ENV` names: a revocation wins over every source of keys, so a key an operator
    added by hand (``--trusted-key``) is refused once its maker revokes it."""
    env = os.environ if environ is None else environ
    return tuple(r for folder in _trust_folders(env) for r in _revocations_in_folder(folder))


def configured_key_files(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every key file this machine trusts: the system folder's, then those of the folder
    :data:`TRUSTED_KEYS_DIR_ENV` names (an addition, not a replacement), then the files
    :data:`TRUSTED_KEYS_ENV` lists."""
    env = os.environ if environ is None else environ
    files = [f for i, folder in enumerate(_trust_folders(env)) for f in _keys_in_folder(folder, required=i > 0)]
    return tuple(files) + trusted_keys_from_env(env)


#: Set by the test suite to a folder of its own, so a developer's configured keys do not change the tests.
_system_dir_for_tests: Path | None = None


def trusted_keys_for(extra: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[TrustedKey, ...]:
    """The keys this machine trusts (:func:`configured_key_files`) plus ``extra`` (a file or several)."""
    files = list(dict.fromkeys([*configured_key_files(environ), *key_paths(extra)]))
    keys = load_trusted_keys(files)
    if not keys:
        return keys
    revoked = configured_revocations(environ)
    return tuple(replace(k, revocations=tuple(r for r in revoked if r.kind != "key" or r.ident == k.key_id))
                 for k in keys)


def signed_content(raw: dict[str, Any]) -> dict[str, Any]:
    """What a signature of the manifest ``raw`` (its JSON object, as the file holds it) covers.

    The JSON as written, not as this toolkit would write it again: a newer uopsl
    on the device must not read a field it added (with its default) as a change.
    """
    fields = {k: v for k, v in raw.items() if k not in _UNSIGNED_FIELDS}
    files: dict[str, Any] = {}
    for f in raw.get("files") or []:
        if isinstance(f, dict):
            files[str(f.get("path"))] = {k: f.get(k) for k in ("kind", "precision", "size", "sha256")}
    return {"manifest": fields, "files": files}


def signed_parity_of(raw: dict[str, Any]) -> dict[str, Any]:
    """Each file's parity record (``uopsl validate``'s verdicts, ``info["parity"]``) in the manifest ``raw``.

    Signed next to :func:`signed_content` but not part of it: a device may add records after signing
    (that is no change to the bundle), but where signatures are required only these signed ones decide
    which INT8 file or INT8/FP16 engine ``auto`` runs (:func:`with_signed_parity`)."""
    out: dict[str, Any] = {}
    for f in raw.get("files") or []:
        if isinstance(f, dict) and isinstance(f.get("info"), dict) and PARITY_KEY in f["info"]:
            out[str(f.get("path"))] = f["info"][PARITY_KEY]
    return out


def _merged_record(signed: Any, have: Any, sha256: str) -> Any:
    """The parity record to use where signatures are required: ``signed`` (the record the signature covers),
    with every run of ``have`` (the record on disk now) that is not a PASS for this same content laid over it.
    Records outside the signature may restrict but never permit: a FAIL a device recorded after signing still
    keeps ``auto`` off the file (a review: the view had put an older signed PASS back over it)."""
    runs = have.get("backends") if isinstance(have, dict) and have.get("sha256") == sha256 else None
    refusals = {b: r for b, r in runs.items()
                if not (isinstance(r, dict) and r.get("passed") is True and r.get("verdict", "PASS") == "PASS")} \
        if isinstance(runs, dict) else {}
    if not refusals:
        return signed
    base: dict[str, Any] = signed if isinstance(signed, dict) and isinstance(signed.get("backends"), dict) else \
        {"sha256": sha256, "backends": {}}
    runs_now: dict[str, Any] = {**base["backends"], **refusals}
    return {**base, "backends": runs_now}


def with_signed_parity(manifest: Manifest, signed: Mapping[str, Any] | None) -> Manifest:
    """``manifest`` with each file's parity record replaced by the one its signature covers (``signed``; None: a
    signature made before uopsl signed records, which covers none), so a record written after signing (or
    forged: a review showed it could make ``auto`` run a signed INT8 file that FAILED validation) decides
    nothing where signatures are required, except that a verdict other than PASS recorded since for the same
    file content still counts (:func:`_merged_record`). What is set aside is logged."""
    view, set_aside = signed_parity_view(manifest, signed)
    if set_aside:
        log.info("parity records not covered by the bundle's signature are not used (this machine requires "
                 "signed bundles): %s; validate before signing, or sign again after validating",
                 ", ".join(set_aside))
    return view


#: Per-file manifest fields that steer ``auto`` (export's measured CPU INT8 speed-up and the CPU it was measured on)
#: but that no signature covers: where signatures are required they are set aside, and the device measures for
#: itself (a review raised a recorded 0.8x to 9.9x on a signed bundle, and ``auto`` ran the INT8 file).
UNSIGNED_CHOICE_FIELDS = ("cpu_int8_speedup", "cpu_int8_speedup_cpu")


def signed_parity_view(manifest: Manifest, signed: Mapping[str, Any] | None) -> tuple[Manifest, list[str]]:
    """:func:`with_signed_parity`'s manifest, without logging, and the runs on disk ("FILE on BACKEND") it does
    not use: recorded after signing, or changed since (a non-PASS recorded since is used, so it is not listed).
    The view also leaves out :data:`UNSIGNED_CHOICE_FIELDS`."""
    signed = signed or {}
    files, set_aside = [], []
    for f in manifest.files:
        have = f.info.get(PARITY_KEY)
        want = _merged_record(signed.get(f.path), have, f.sha256)
        if isinstance(have, dict) and isinstance(have.get("backends"), dict):
            used = want["backends"] if isinstance(want, dict) and isinstance(want.get("backends"), dict) and \
                want.get("sha256") == have.get("sha256") else {}
            set_aside += [f"{f.path} on {b}" for b, r in sorted(have["backends"].items()) if used.get(b) != r]
        if have == want and not any(k in f.info for k in UNSIGNED_CHOICE_FIELDS):
            files.append(f)
            continue
        info = {k: v for k, v in f.info.items() if k != PARITY_KEY and k not in UNSIGNED_CHOICE_FIELDS}
        if want is not None:
            info[PARITY_KEY] = want
        files.append(replace(f, info=info))
    view = replace(manifest, files=tuple(files)) if files != list(manifest.files) else manifest
    return view, set_aside


def _without_parity(manifest: Manifest) -> Manifest:
    return replace(manifest, files=tuple(replace(f, info={k: v for k, v in f.info.items() if k != PARITY_KEY})
                                         for f in manifest.files))


@dataclass(frozen=True)
class SignedRelease:
    """What :func:`sign_bundle` made: the key's id, the signature's (record it: a recall names it) and when."""

    key_id: str
    signature_id: str
    signed_at: str


def sign_bundle(bundle: str | os.PathLike[str], private_key: str | os.PathLike[str],
                password: bytes | None = None, *, verified: tuple[Manifest, dict[str, Any]] | None = None,
                ) -> SignedRelease:
    """Sign ``bundle`` with the PEM Ed25519 key file ``private_key``; writes ``signature.json`` atomically and
    returns the release's ids.

    What is signed is the read of the manifest that was verified: here, or by the caller, who then passes
    ``verified`` (:func:`uopsl.runtime.bundle.read_manifest_raw`'s pair, after ``verify_or_raise`` on it).
    """
    ser, ed = _serialization(), _ed25519()
    root = Path(bundle)
    data = _read_pem(private_key, "private key")
    if b"-----BEGIN PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        # A review: the public key given to `sign` read "not a readable private key, or a wrong password".
        raise ConfigError(f"{private_key} is a public key; signing needs the private key of the pair (the .key file "
                          "uopsl keygen wrote beside the .pub); the public key is what devices trust")
    try:
        key = ser.load_pem_private_key(data, password=password)
    except TypeError as exc:  # a password given for an unencrypted key, or none for an encrypted one
        hint = (" (uopsl sign --password-prompt, or --password-env VAR)" if password is None else
                " (leave out --password-env and --password-prompt for this key; better, encrypt it: `uopsl "
                "keygen --password-prompt` makes a new pair)")
        raise ConfigError(f"{private_key}: {exc}{hint}") from exc
    except ValueError as exc:
        raise ConfigError(f"{private_key}: not a readable private key, or a wrong password ({exc})") from exc
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigError(f"{private_key}: a {type(key).__name__}, expected an Ed25519 private key (`uopsl keygen`)")
    if password is None:
        log.warning("%s is not encrypted: anyone who copies it can sign bundles your devices trust; make an "
                    "encrypted pair with `uopsl keygen --password-prompt` (and move the devices to its public key)",
                    private_key)
    with contextlib.suppress(OSError):
        mode = os.stat(private_key).st_mode
        if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s can be read by other users (mode %o); keep it owner-only: chmod 600 %s", private_key,
                        stat.S_IMODE(mode), command_word(private_key))
    rounds = pbkdf2_iterations(data)
    if rounds is not None and rounds < WEAK_BELOW:  # keys from uopsl keygen before it wrote PBKDF2_ITERATIONS
        log.warning("%s: its password is stretched with only %d PBKDF2 rounds, cheap to guess against if the file "
                    "is stolen; re-encrypt it with %d: openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 "
                    "-iter %d -in %s -out NEW.key (then replace the old file)",
                    private_key, rounds, PBKDF2_ITERATIONS, PBKDF2_ITERATIONS, private_key)
    legacy = legacy_scheme(data)
    if legacy is not None:
        log.warning("%s: its password protection is the legacy scheme %s with %d rounds, cheap to guess against "
                    "if the file is stolen; re-encrypt it with PBES2: openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf "
                    "hmacWithSHA256 -iter %d -in %s -out NEW.key (then replace the old file)",
                    private_key, legacy[0], legacy[1], PBKDF2_ITERATIONS, private_key)
    if verified is None:
        manifest, raw = read_manifest_raw(root)
        verify_or_raise(root, manifest, raw)  # never sign what fails its own checksums; sign what was checked
    else:
        manifest, raw = verified
    public_raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    payload = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key_id(public_raw),
               "signed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "content": {**signed_content(raw), "parity": signed_parity_of(raw)}}
    signature = key.sign(_canonical(payload))
    write_json(root / SIGNATURE_FILE, {"payload": payload, "signature": base64.b64encode(signature).decode("ascii")})
    return SignedRelease(str(payload["key_id"]), signature_id(payload), str(payload["signed_at"]))


def open_trusted(bundle: str | os.PathLike[str], *, verify: bool = True,
                 trusted_keys: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                 ) -> tuple[Manifest, SignatureCheck | None]:
    """``bundle``'s manifest, with its files checked (``verify``) and, where this machine trusts any key
    (:func:`trusted_keys_for`), its signature required: every check on one read of the manifest.

    Returns the manifest and the signature check (None: no key trusted here, nothing checked). Every
    path that loads a bundle's model calls this first (the Screener, ``bench``, ``validate``).
    """
    keys = trusted_keys_for(trusted_keys)
    if keys and not verify:
        raise ConfigError("this machine trusts bundle signing keys, which needs the bundle's checksums checked: "
                          "drop --no-verify (verify=False)")
    if keys:
        log.info("trusted signing keys here: %s", ", ".join(f"{k.key_id} ({k.source})" for k in keys))
    manifest, raw = read_manifest_raw(bundle)
    if verify:
        verify_or_raise(bundle, manifest, raw)
    check = require_signature(bundle, keys, raw=raw) if keys else None
    if check is not None:
        if check.signed_parity is None:
            log.warning("%s: its signature (made by an older uopsl) covers no parity records, so no INT8 file or "
                        "engine is used unasked on this machine; sign the bundle again with this uopsl", bundle)
        manifest = with_signed_parity(manifest, check.signed_parity)
    return manifest, check


@dataclass(frozen=True)
class SignatureCheck:
    """What :func:`check_signature` found. ``trusted``: signed by a given key and nothing changed since."""

    signed: bool
    key_id: str = ""
    signed_at: str = ""
    trusted: bool = False
    problem: str = ""
    signature_id: str = ""
    #: the parity records the signature covers, by file (None: a signature from before they were signed)
    signed_parity: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        if not self.signed or not self.key_id:  # no signature, or one that could not be read
            return self.problem or "not signed"
        who = f"signed by key {self.key_id} on {self.signed_at}"
        return f"{who}: signature valid, key trusted" if self.trusted else f"{who}: {self.problem}"

    def to_dict(self) -> dict[str, Any]:
        return {"signed": self.signed, "key_id": self.key_id, "signed_at": self.signed_at,
                "trusted": self.trusted, "problem": self.problem, "signature_id": self.signature_id}


def _read_signature(root: Path) -> dict[str, Any] | None:
    path = root / SIGNATURE_FILE
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_SIGNATURE_BYTES + 1)
        if len(data) > _MAX_SIGNATURE_BYTES:
            raise ValueError(f"larger than {_MAX_SIGNATURE_BYTES >> 20} MiB")
        doc = load_json_strict(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: unreadable signature ({exc}); sign the bundle again or copy it again") from exc
    if (not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict)
            or not isinstance(doc.get("signature"), str)):
        raise BundleError(f"{path}: not a uopsl signature (expected payload and signature)")
    return doc


def current_signature_id(bundle: str | os.PathLike[str]) -> str:
    """The signature id of the signature ``bundle`` holds now ("" when it holds none or one that cannot be read)."""
    try:
        doc = _read_signature(Path(bundle))
    except BundleError:
        return ""
    return signature_id(doc["payload"]) if doc is not None else ""


def check_signature(bundle: str | os.PathLike[str], trusted: Sequence[TrustedKey] = (), *,
                    raw: dict[str, Any] | None = None) -> SignatureCheck:
    """Whether ``bundle``'s signature is valid for one of ``trusted`` and covers its manifest as it is now.

    ``raw``: the manifest's JSON as the caller read it for its other checks (else read here): compare the
    signature with the very manifest whose files were hashed.

    Never raises for a bad or unreadable signature (the result says what is
    wrong). The files' bytes are :func:`uopsl.runtime.bundle.verify`'s job:
    call it on the same ``raw`` (:func:`open_trusted` does both).
    """
    root = Path(bundle)
    try:
        doc = _read_signature(root)
    except BundleError as exc:  # refused where a key is trusted; only reported elsewhere
        return SignatureCheck(True, problem=str(exc))
    if doc is None:
        return SignatureCheck(False, problem=f"not signed (no {SIGNATURE_FILE})")
    payload = doc["payload"]
    kid, when = str(payload.get("key_id", "")), str(payload.get("signed_at", ""))
    sid = signature_id(payload)
    # Shown before the signature is known to be good: only text of the expected shape reaches a terminal or a
    # report (a review put "signature valid, key trusted" into signed_at of a tampered file).
    if not (len(kid) == 16 and set(kid) <= _HEX):
        kid = "(malformed key id)"
    if _signed_time(when) is None:
        when = "(unreadable time)"

    def result(problem: str = "", trusted: bool = False) -> SignatureCheck:
        return SignatureCheck(True, kid, when, trusted=trusted, problem=problem, signature_id=sid)

    if payload.get("format") != SIGNATURE_FORMAT or payload.get("algorithm") != "ed25519":
        return result(f"signature format {payload.get('format')!r} / algorithm {payload.get('algorithm')!r} is "
                      f"not one this uopsl reads (format {SIGNATURE_FORMAT}, ed25519): upgrade uopsl on this device")
    if not trusted:
        # Unauthenticated, but still worth saying: a bundle changed since its (unverified) signature was made is
        # not the release that was signed (a review: verify without a key said only "not checked").
        try:
            changed = _changed_since_signing(payload.get("content"), raw if raw is not None else
                                             read_manifest_json(root / MANIFEST))
        except (BundleError, OSError, ValueError, TypeError, AttributeError, KeyError):
            changed = ""  # no readable manifest to compare: verify says what is wrong with it
        return result("not checked (no trusted key given)"
                      + (f"; and the bundle is not what was signed: {changed}" if changed else ""))
    key = next((k for k in trusted if k.key_id == kid), None)
    if key is None:
        return result(f"signed by a key this device does not trust (trusted: {', '.join(k.key_id for k in trusted)})")
    ed = _ed25519()
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
        ed.Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, _canonical(payload))
    except (binascii.Error, ValueError) as exc:
        return result(f"the signature is malformed ({exc})")
    except Exception as exc:  # cryptography's InvalidSignature
        if type(exc).__name__ != "InvalidSignature":
            raise
        return result(f"the signature does not match {SIGNATURE_FILE}'s content (edited after signing, or "
                      "signed by another key of the same id)")
    signed_at = _signed_time(when)  # signed, so the maker's clock, not whoever copied the bundle
    content = payload.get("content")
    signed_files = [str(e.get("sha256")) for e in content["files"].values() if isinstance(e, dict)] \
        if isinstance(content, dict) and isinstance(content.get("files"), dict) else []
    revoked = next((r for r in key.revocations if r.refuses(kid, sid, signed_at, signed_files)), None)
    if revoked is not None:
        return result(revoked.describe())
    problem = _changed_since_signing(payload.get("content"), raw if raw is not None else
                                     read_manifest_json(root / MANIFEST))
    if problem:
        return result(problem)
    parity = content.get("parity") if isinstance(content, dict) else None
    return replace(result(trusted=True), signed_parity=parity if isinstance(parity, dict) else None)


def _changed_since_signing(signed: Any, raw: dict[str, Any]) -> str:
    """What differs between the signed content and the manifest ``raw`` ("" when nothing a signature covers)."""
    # Also read unauthenticated (no trusted key): any shape must give an answer, never an exception.
    if (not isinstance(signed, dict) or not isinstance(signed.get("files"), dict)
            or not isinstance(signed.get("manifest"), dict)
            or not all(isinstance(e, dict) for e in signed["files"].values())):
        return "the signed content is malformed"
    now = signed_content(raw)
    if now["manifest"] != signed.get("manifest"):
        fields = sorted(k for k in set(now["manifest"]) | set(signed.get("manifest") or {})
                        if now["manifest"].get(k) != (signed.get("manifest") or {}).get(k))
        return f"manifest field(s) {', '.join(fields)} changed since signing: sign the bundle again"
    signed_files: dict[str, Any] = signed["files"]
    for path, entry in signed_files.items():
        if now["files"].get(path) != entry:
            what = "no longer listed" if path not in now["files"] else "changed"
            return f"{path} {what} since signing: sign the bundle again, or copy it again from its source"
    for path, entry in now["files"].items():
        if path not in signed_files:
            if entry.get("kind") == "engine":
                return (f"engine {path} was added after signing: build engines on a device of the same kind "
                        "before signing, then copy the signed bundle (docs/deployment.md, \"Signed bundles\")")
            return f"{path} was added after signing: sign the bundle again"
    return ""


def _stat_of(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def trust_state(extra: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    """A cheap fingerprint of what this machine's trust is read from: each trusted-keys folder, its entries
    (keys, revocation list) and the key files named elsewhere, by inode, size and times. Equal fingerprints:
    nothing to read again (a few stat calls; :meth:`uopsl.runtime.api.Screener.recheck_trust` compares them
    before batches, at most every ``TRUST_RECHECK_S`` seconds)."""
    env = os.environ if environ is None else environ
    given = key_paths(extra)
    state: list[Any] = [tuple(trusted_keys_from_env(env))]
    for folder in _trust_folders(env):
        state.append((str(folder), _stat_of(folder)))
        try:
            names = sorted(e.name for e in os.scandir(folder))
        except OSError:
            continue
        state.extend((name, _stat_of(folder / name)) for name in names)
    state.extend((os.fspath(p), _stat_of(p)) for p in [*trusted_keys_from_env(env), *given])
    return tuple(state)


def recheck_signature(bundle: str | os.PathLike[str], manifest: Manifest, check: SignatureCheck | None,
                      trusted_keys: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                      ) -> SignatureCheck | None:
    """Judge again, against this machine's keys and revocation lists as they are now, a bundle opened earlier
    (``manifest`` and ``check``, what :func:`open_trusted` returned); BundleError when it is no longer trusted.

    A long-running service (``watch``, an application's Screener) read them once when it opened the bundle;
    a recall published since must stop it too. A trusted bundle is judged on what was verified when it was
    opened (its key, signature id, signing time and files), without reading it again. One opened while this
    machine trusted no key is checked in full now, and refused if its manifest changed since.
    """
    keys = trusted_keys_for(trusted_keys)
    if not keys:
        return None
    if check is None or not check.trusted:
        now, raw = read_manifest_raw(bundle)
        # Parity records aside: ``manifest`` may be the signed view of an earlier check (keys removed, then put
        # back). A record written since also changes the manifest's content hash, and that is refused too: fail
        # closed (open the bundle again).
        if _without_parity(now) != _without_parity(manifest):
            raise BundleError(f"bundle {bundle} changed since it was opened, and this machine now trusts signing "
                              "keys: open it again")
        return require_signature(bundle, keys, raw=raw)
    key = next((k for k in keys if k.key_id == check.key_id), None)
    if key is None:
        raise BundleError(f"bundle {bundle} is no longer trusted here: key {check.key_id} that signed it is not "
                          f"among this machine's keys any more (trusted: {', '.join(k.key_id for k in keys)})")
    signed_at = _signed_time(check.signed_at)
    files = [f.sha256 for f in manifest.files]
    revoked = next((r for r in key.revocations if r.refuses(check.key_id, check.signature_id, signed_at, files)),
                   None)
    if revoked is not None:
        raise BundleError(f"bundle {bundle} is no longer trusted here: {revoked.describe()}. Use a bundle its maker "
                          "signed since, or ask them")
    return check


def require_signature(bundle: str | os.PathLike[str], trusted: Sequence[TrustedKey], *,
                      raw: dict[str, Any] | None = None) -> SignatureCheck:
    """:func:`check_signature`, raising BundleError unless the bundle is signed by a trusted key, unchanged."""
    check = check_signature(bundle, trusted, raw=raw)
    if not check.trusted:
        raise BundleError(f"bundle {bundle} is not trusted here: {check.describe()}. Use a bundle its maker "
                          "signed, or ask them to sign this one (uopsl sign)")
    return check


def generate_keypair(out_dir: str | os.PathLike[str], name: str = "uopsl-signing",
                     password: bytes | None = None) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (private, owner-only, encrypted when ``password``) and ``NAME.pub`` in ``out_dir``;
    refuses to overwrite. Returns both paths and the key id."""
    if not isinstance(name, str) or not name or name.startswith(".") or name != os.path.basename(name) \
            or "/" in name or "\\" in name or any(ord(c) < 32 for c in name):
        raise ConfigError(f"key name {name!r} must be a plain file name (not empty, no folder, not starting "
                          "with '.'): the keys are written as NAME.key and NAME.pub inside the --out folder")
    ser, ed = _serialization(), _ed25519()
    out = Path(out_dir)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; keys are never overwritten (choose another --name or folder)")
    out.mkdir(parents=True, exist_ok=True)
    key = ed.Ed25519PrivateKey.generate()
    if password:  # not BestAvailableEncryption: its 2,048 PBKDF2 rounds are cheap to guess against
        private_pem = encrypt_pkcs8_pem(key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8,
                                                          ser.NoEncryption()), password)
    else:
        private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    public = key.public_key()
    public_pem = public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        # O_EXCL: never through a link or over a file made meanwhile; the private key is owner-only (POSIX).
        for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            written.append(path)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    except BaseException:
        for path in written:  # no half pair left behind to block the next attempt
            path.unlink(missing_ok=True)
        raise
    return private_path, public_path, key_id(public.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw))


