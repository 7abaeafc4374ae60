"""Encrypted PKCS#8 private keys with a PBKDF2 count that slows a password guesser down.

``cryptography``'s ``BestAvailableEncryption`` writes PKCS#8 as PBES2 with
PBKDF2-HMAC-SHA256 at **2,048** iterations (read from its output; it offers
no way to raise the count for PKCS#8), so a stolen key file can be tried
against millions of passwords a second on one GPU. This module writes the
same standard structure (RFC 8018 PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC) at
:data:`PBKDF2_ITERATIONS` (OWASP's 2023 figure for PBKDF2-HMAC-SHA256), which
``cryptography``'s ``load_pem_private_key`` and ``openssl pkey`` read as any
other encrypted key. Only the encoding is ours; the key derivation and the
cipher are ``hashlib`` and ``cryptography``'s.

:func:`pbkdf2_iterations` reads the count back from a PEM file, and
:func:`legacy_scheme` recognises the older PBES1 and PKCS#12 schemes, so
``uopsl sign`` can say when a key file's password is cheap to guess.
"""

from __future__ import annotations

import base64
import hashlib
import os
import textwrap

from uopsl.runtime.optional import require

PBKDF2_ITERATIONS = 600_000
#: Below this, ``uopsl sign`` warns that the key file's password protection is weak.
WEAK_BELOW = 100_000

_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_HMAC_SHA256 = "1.2.840.113549.2.9"
_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_PEM_LABEL = "ENCRYPTED PRIVATE KEY"
_SEQUENCE = 0x30


# -- DER, the few types PBES2 needs ---------------------------------------------------------------------
def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _int(v: int) -> bytes:
    return _tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))  # +1: a leading 0 keeps it positive


def _octets(b: bytes) -> bytes:
    return _tlv(0x04, b)


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


_NULL = b"\x05\x00"


def encrypt_pkcs8_pem(private_der: bytes, password: bytes, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """An unencrypted PKCS#8 DER private key -> PEM ``ENCRYPTED PRIVATE KEY`` (PBES2, see the module)."""
    if not password:
        raise ValueError("an empty password encrypts nothing; write the key unencrypted instead")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    ciphers = require("cryptography.hazmat.primitives.ciphers", "Encrypting a private key")
    padding = require("cryptography.hazmat.primitives.padding", "Encrypting a private key")
    salt, iv = os.urandom(16), os.urandom(16)
    key = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, dklen=32)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(private_der) + padder.finalize()
    encryptor = ciphers.Cipher(ciphers.algorithms.AES(key), ciphers.modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    kdf = _seq(_oid(_PBKDF2), _seq(_octets(salt), _int(iterations), _seq(_oid(_HMAC_SHA256), _NULL)))
    scheme = _seq(_oid(_AES256_CBC), _octets(iv))
    der = _seq(_seq(_oid(_PBES2), _seq(kdf, scheme)), _octets(encrypted))
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {_PEM_LABEL}-----\n{body}\n-----END {_PEM_LABEL}-----\n".encode("ascii")


# -- reading the count back -----------------------------------------------------------------------------
def _read_tlv(data: bytes, at: int) -> tuple[int, bytes, int]:
    """(tag, body, offset after it) of the DER element at ``at``; ValueError when it does not fit."""
    if at + 2 > len(data):
        raise ValueError("truncated DER")
    tag, n = data[at], data[at + 1]
    at += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or at + k > len(data):
            raise ValueError("bad DER length")
        n = int.from_bytes(data[at:at + k], "big")
        at += k
    if at + n > len(data):
        raise ValueError("truncated DER")
    return tag, data[at:at + n], at + n


def _children(body: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(body):
        tag, child, at = _read_tlv(body, at)
        out.append((tag, child))
    return out


#: Password-based schemes older than PBES2 (RFC 8018 PBES1, RFC 7292 appendix C): one MD5 or SHA-1
#: derivation into DES, RC2, RC4 or 3DES. ``openssl pkcs8 -topk8 -v1 ...`` writes them (2,048 rounds by
#: default) and ``cryptography`` reads at least the 3DES one, so ``uopsl sign`` may be handed one.
LEGACY_SCHEMES: dict[str, str] = {
    "1.2.840.113549.1.5.1": "PBES1 (MD2, DES)",
    "1.2.840.113549.1.5.3": "PBES1 (MD5, DES)",
    "1.2.840.113549.1.5.4": "PBES1 (MD2, RC2)",
    "1.2.840.113549.1.5.6": "PBES1 (MD5, RC2)",
    "1.2.840.113549.1.5.10": "PBES1 (SHA-1, DES)",
    "1.2.840.113549.1.5.11": "PBES1 (SHA-1, RC2)",
    "1.2.840.113549.1.12.1.1": "PKCS#12 PBE (SHA-1, 128-bit RC4)",
    "1.2.840.113549.1.12.1.2": "PKCS#12 PBE (SHA-1, 40-bit RC4)",
    "1.2.840.113549.1.12.1.3": "PKCS#12 PBE (SHA-1, 3-key 3DES)",
    "1.2.840.113549.1.12.1.4": "PKCS#12 PBE (SHA-1, 2-key 3DES)",
    "1.2.840.113549.1.12.1.5": "PKCS#12 PBE (SHA-1, 128-bit RC2)",
    "1.2.840.113549.1.12.1.6": "PKCS#12 PBE (SHA-1, 40-bit RC2)",
}


def _algorithm(pem: bytes) -> list[tuple[int, bytes]] | None:
    """The children (OID, parameters) of an ``ENCRYPTED PRIVATE KEY``'s AlgorithmIdentifier; None if not one."""
    text = pem.decode("ascii", "replace")
    begin, end = f"-----BEGIN {_PEM_LABEL}-----", f"-----END {_PEM_LABEL}-----"
    if begin not in text or end not in text:
        return None
    der = base64.b64decode("".join(text.split(begin, 1)[1].split(end, 1)[0].split()), validate=True)
    tag, body, _ = _read_tlv(der, 0)
    info = _children(body)[0] if tag == _SEQUENCE else (0, b"")  # EncryptedPrivateKeyInfo -> AlgorithmIdentifier
    return _children(info[1]) if info[0] == _SEQUENCE else None


def _dotted(oid_body: bytes) -> str:
    """An OBJECT IDENTIFIER's body as dotted text (the inverse of :func:`_oid`)."""
    if not oid_body:
        raise ValueError("empty OID")
    parts, value = [], 0
    for b in oid_body:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    if oid_body[-1] & 0x80:
        raise ValueError("truncated OID")
    first = min(parts[0] // 40, 2)
    return ".".join(str(v) for v in (first, parts[0] - 40 * first, *parts[1:]))


def legacy_scheme(pem: bytes) -> tuple[str, int] | None:
    """(name, iteration count) when a PEM ``ENCRYPTED PRIVATE KEY`` uses a pre-PBES2 scheme (see
    :data:`LEGACY_SCHEMES`); None for PBES2, an unencrypted key, or anything unreadable."""
    try:
        algorithm = _algorithm(pem)
        if algorithm is None or algorithm[0][0] != 0x06:
            return None
        name = LEGACY_SCHEMES.get(_dotted(algorithm[0][1]))
        if name is None:
            return None
        salt, count = _children(algorithm[1][1])[:2]  # PBEParameter ::= SEQUENCE { salt, iterationCount }
        if salt[0] != 0x04 or count[0] != 0x02:
            return None
        return name, int.from_bytes(count[1], "big")
    except (ValueError, IndexError):
        return None


def pbkdf2_iterations(pem: bytes) -> int | None:
    """The PBKDF2 iteration count of a PEM ``ENCRYPTED PRIVATE KEY`` (PBES2); None for anything else
    (an unencrypted key, another scheme, not PEM)."""
    try:
        algorithm = _algorithm(pem)
        if algorithm is None or algorithm[0][1] != _oid(_PBES2)[2:]:
            return None
        kdf = _children(algorithm[1][1])[0][1]
        kdf_oid, kdf_params = _children(kdf)
        if kdf_oid[1] != _oid(_PBKDF2)[2:]:
            return None
        count = _children(kdf_params[1])[1]
        return int.from_bytes(count[1], "big") if count[0] == 0x02 else None
    except (ValueError, IndexError):
        return None


__all__ = ["LEGACY_SCHEMES", "PBKDF2_ITERATIONS", "WEAK_BELOW", "encrypt_pkcs8_pem", "legacy_scheme",
           "pbkdf2_iterations"]
