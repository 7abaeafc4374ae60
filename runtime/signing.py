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
signing time, its path, kind, precision, size and sha256 (so with
:func:`uopsl.runtime.bundle.verify`, every byte of every signed file). What it
leaves out, because a device writes it after the maker signed: each file's
``info`` (``uopsl validate``'s parity records). A forged parity record can
therefore make ``auto`` choose a signed INT8 file it would not otherwise use;
it cannot bring in unsigned bytes. Any file added after signing (an INT8 file,
an engine) fails the check until the bundle is signed again.

TensorRT engines are built on the device that runs them, after the maker
signed. Sign the bundle after building its engine on a device of the same kind
(a signed engine is covered like any file), or let the device accept engines
it built itself (``allow_device_engines``, ``--trust-device-engines``): an
engine added after signing is then taken when its header names a signed ONNX
file with that file's sha256. That is weaker: the header is not signed, so
whoever can write the device's bundle folder can put any engine there.

``cryptography`` is needed to sign and to check (``pip install 'uopsl[sign]'``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uopsl.runtime.bundle import MANIFEST, read_manifest_json
from uopsl.runtime.engine_header import read_header
from uopsl.runtime.errors import BundleError, ConfigError, UopslError
from uopsl.runtime.fsio import load_json_strict, write_json
from uopsl.runtime.optional import require

SIGNATURE_FILE = "signature.json"
SIGNATURE_FORMAT = 1
#: Where a device lists the public keys it trusts (PEM files), separated like PATH.
TRUSTED_KEYS_ENV = "UOPSL_TRUSTED_KEYS"
#: Manifest fields a signature does not cover: the file list is covered entry by entry, and the rest is
#: bookkeeping that a rewrite on the device recomputes.
_UNSIGNED_FIELDS = ("files", "content_sha256", "format_version")
_MAX_SIGNATURE_BYTES = 1 << 20


def _ed25519() -> Any:
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "Signing or checking a bundle signature")


def _serialization() -> Any:
    return require("cryptography.hazmat.primitives.serialization", "Signing or checking a bundle signature")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode("ascii")


def key_id(public_raw: bytes) -> str:
    """A public key's short name: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} ({exc.strerror or exc}); check the path") from exc
    if b"-----BEGIN" not in data[:200]:
        raise ConfigError(f"{p}: not a PEM {what} (expected a file starting with '-----BEGIN'; `uopsl keygen` "
                          "writes both keys)")
    return data


@dataclass(frozen=True)
class TrustedKey:
    """A public key a device trusts, with where it came from (for messages)."""

    key_id: str
    raw: bytes
    source: str


def load_trusted_keys(paths: Iterable[str | os.PathLike[str]]) -> tuple[TrustedKey, ...]:
    """The Ed25519 public keys in PEM files ``paths`` (ConfigError for a file that holds none)."""
    paths = list(paths)
    if not paths:  # nothing to load: no need for cryptography
        return ()
    ser, ed = _serialization(), _ed25519()
    keys = []
    for path in paths:
        data = _read_pem(path, "public key")
        try:
            key = ser.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a readable public key ({exc})") from exc
        if not isinstance(key, ed.Ed25519PublicKey):
            raise ConfigError(f"{path}: a {type(key).__name__}, expected an Ed25519 public key (`uopsl keygen`)")
        raw = key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        keys.append(TrustedKey(key_id(raw), raw, str(path)))
    return tuple(keys)


def trusted_keys_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The key files :data:`TRUSTED_KEYS_ENV` lists (empty when unset)."""
    value = (os.environ if environ is None else environ).get(TRUSTED_KEYS_ENV, "")
    return tuple(p for p in value.split(os.pathsep) if p.strip())


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


def sign_bundle(bundle: str | os.PathLike[str], private_key: str | os.PathLike[str],
                password: bytes | None = None) -> str:
    """Sign ``bundle`` (already verified by the caller) with the PEM Ed25519 key file ``private_key``;
    writes ``signature.json`` atomically and returns the key id."""
    from uopsl.runtime.bundle import verify_or_raise

    ser, ed = _serialization(), _ed25519()
    root = Path(bundle)
    data = _read_pem(private_key, "private key")
    try:
        key = ser.load_pem_private_key(data, password=password)
    except TypeError as exc:  # a password given for an unencrypted key, or none for an encrypted one
        raise ConfigError(f"{private_key}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{private_key}: not a readable private key, or a wrong password ({exc})") from exc
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigError(f"{private_key}: a {type(key).__name__}, expected an Ed25519 private key (`uopsl keygen`)")
    verify_or_raise(root)  # never sign what fails its own checksums
    public_raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    payload = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key_id(public_raw),
               "signed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "content": signed_content(read_manifest_json(root / MANIFEST))}
    signature = key.sign(_canonical(payload))
    write_json(root / SIGNATURE_FILE, {"payload": payload, "signature": base64.b64encode(signature).decode("ascii")})
    return str(payload["key_id"])


@dataclass(frozen=True)
class SignatureCheck:
    """What :func:`check_signature` found. ``trusted``: signed by a given key and nothing changed since."""

    signed: bool
    key_id: str = ""
    signed_at: str = ""
    trusted: bool = False
    problem: str = ""
    device_engines: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.signed:
            return self.problem or "not signed"
        who = f"signed by key {self.key_id} on {self.signed_at}"
        if self.trusted:
            extra = f"; engines built on this device from signed files: {', '.join(self.device_engines)}" \
                if self.device_engines else ""
            return f"{who}: signature valid, key trusted{extra}"
        return f"{who}: {self.problem}"


def _read_signature(root: Path) -> dict[str, Any] | None:
    path = root / SIGNATURE_FILE
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_SIGNATURE_BYTES + 1)
        if len(data) > _MAX_SIGNATURE_BYTES:
            raise ValueError("larger than 1 MiB")
        doc = load_json_strict(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: unreadable signature ({exc}); sign the bundle again or copy it again") from exc
    if (not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict)
            or not isinstance(doc.get("signature"), str)):
        raise BundleError(f"{path}: not a uopsl signature (expected payload and signature)")
    return doc


def check_signature(bundle: str | os.PathLike[str], trusted: Sequence[TrustedKey] = (), *,
                    allow_device_engines: bool = False) -> SignatureCheck:
    """Whether ``bundle``'s signature is valid for one of ``trusted`` and covers its manifest as it is now.

    ``allow_device_engines``: accept engines added after signing that name a signed ONNX file (see the
    module docstring for what that gives up).

    Never raises for a bad signature (the result says what is wrong); raises
    BundleError for an unreadable ``signature.json``. The files' bytes are
    :func:`uopsl.runtime.bundle.verify`'s job: call it too.
    """
    root = Path(bundle)
    doc = _read_signature(root)
    if doc is None:
        return SignatureCheck(False, problem=f"not signed (no {SIGNATURE_FILE})")
    payload = doc["payload"]
    kid, when = str(payload.get("key_id", "")), str(payload.get("signed_at", ""))
    if payload.get("format") != SIGNATURE_FORMAT or payload.get("algorithm") != "ed25519":
        return SignatureCheck(True, kid, when, problem=f"signature format {payload.get('format')!r} / algorithm "
                              f"{payload.get('algorithm')!r} is not one this uopsl reads (format "
                              f"{SIGNATURE_FORMAT}, ed25519): upgrade uopsl on this device")
    if not trusted:
        return SignatureCheck(True, kid, when, problem="not checked (no trusted key given)")
    key = next((k for k in trusted if k.key_id == kid), None)
    if key is None:
        return SignatureCheck(True, kid, when, problem=f"signed by a key this device does not trust (trusted: "
                              f"{', '.join(k.key_id for k in trusted)})")
    ed = _ed25519()
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
        ed.Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, _canonical(payload))
    except (binascii.Error, ValueError) as exc:
        return SignatureCheck(True, kid, when, problem=f"the signature is malformed ({exc})")
    except Exception as exc:  # cryptography's InvalidSignature
        if type(exc).__name__ != "InvalidSignature":
            raise
        return SignatureCheck(True, kid, when, problem=f"the signature does not match {SIGNATURE_FILE}'s content "
                              "(edited after signing, or signed by another key of the same id)")
    problem, engines = _changed_since_signing(root, payload.get("content"), read_manifest_json(root / MANIFEST),
                                              allow_device_engines)
    if problem:
        return SignatureCheck(True, kid, when, problem=problem)
    return SignatureCheck(True, kid, when, trusted=True, device_engines=engines)


def _changed_since_signing(root: Path, signed: Any, raw: dict[str, Any],
                           allow_device_engines: bool) -> tuple[str, tuple[str, ...]]:
    """What differs between the signed content and the manifest ``raw`` ("" when nothing a signature covers),
    and the engines accepted as built on the device."""
    if not isinstance(signed, dict) or not isinstance(signed.get("files"), dict):
        return "the signed content is malformed", ()
    now = signed_content(raw)
    if now["manifest"] != signed.get("manifest"):
        fields = sorted(k for k in set(now["manifest"]) | set(signed.get("manifest") or {})
                        if now["manifest"].get(k) != (signed.get("manifest") or {}).get(k))
        return f"manifest field(s) {', '.join(fields)} changed since signing: sign the bundle again", ()
    signed_files: dict[str, Any] = signed["files"]
    for path, entry in signed_files.items():
        if now["files"].get(path) != entry:
            what = "no longer listed" if path not in now["files"] else "changed"
            return f"{path} {what} since signing: sign the bundle again, or copy it again from its source", ()
    engines = []
    for path, entry in now["files"].items():
        if path in signed_files:
            continue
        if entry.get("kind") != "engine":
            return f"{path} was added after signing: sign the bundle again", ()
        if not allow_device_engines:
            return (f"engine {path} was added after signing: sign the bundle again after building it, or let "
                    "this device take the engines it builds (--trust-device-engines)"), ()
        try:
            header = read_header(root / path)
        except (UopslError, OSError) as exc:
            return f"{path} was added after signing and its header is unreadable ({exc})", ()
        source = signed_files.get(header.source_onnx)
        if source is None or source.get("kind") != "onnx" or source.get("sha256") != header.source_onnx_sha256:
            return (f"{path} was added after signing and was not built from a signed ONNX file "
                    f"(its header names {header.source_onnx or 'none'}): build it again on this device"), ()
        engines.append(path)
    return "", tuple(engines)


def require_signature(bundle: str | os.PathLike[str], trusted: Sequence[TrustedKey], *,
                      allow_device_engines: bool = False) -> SignatureCheck:
    """:func:`check_signature`, raising BundleError unless the bundle is signed by a trusted key, unchanged."""
    check = check_signature(bundle, trusted, allow_device_engines=allow_device_engines)
    if not check.trusted:
        raise BundleError(f"bundle {bundle} is not trusted here: {check.describe()}. Use a bundle its maker "
                          "signed, or ask them to sign this one (uopsl sign)")
    return check


def generate_keypair(out_dir: str | os.PathLike[str], name: str = "uopsl-signing",
                     password: bytes | None = None) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (private, owner-only, encrypted when ``password``) and ``NAME.pub`` in ``out_dir``;
    refuses to overwrite. Returns both paths and the key id."""
    ser, ed = _serialization(), _ed25519()
    out = Path(out_dir)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; keys are never overwritten (choose another --name or folder)")
    out.mkdir(parents=True, exist_ok=True)
    key = ed.Ed25519PrivateKey.generate()
    enc = ser.BestAvailableEncryption(password) if password else ser.NoEncryption()
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, enc)
    public = key.public_key()
    public_pem = public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path, key_id(public.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw))


