"""Encrypted private keys: the standard PKCS#8 structure, with a PBKDF2 count that slows a password guesser."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.pkcs8 import PBKDF2_ITERATIONS, encrypt_pkcs8_pem, pbkdf2_iterations
from uopsl.runtime.signing import SIGNATURE_FILE, generate_keypair, sign_bundle

ser = pytest.importorskip("cryptography.hazmat.primitives.serialization", reason="pip install 'cryptography>=41'")
ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")


def _raw(key: object) -> bytes:
    return key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())  # type: ignore[attr-defined]


def test_keygen_key_reads_back_with_its_password_and_many_rounds(tmp_path: Path) -> None:
    private, _, _ = generate_keypair(tmp_path, "k", password=b"correct horse")
    pem = private.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert pbkdf2_iterations(pem) == PBKDF2_ITERATIONS == 600_000
    key = ser.load_pem_private_key(pem, password=b"correct horse")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    with pytest.raises(ValueError):
        ser.load_pem_private_key(pem, password=b"wrong")
    # Unencrypted keys stay plain PKCS#8 (keygen warns about them).
    plain, _, _ = generate_keypair(tmp_path, "p")
    assert pbkdf2_iterations(plain.read_bytes()) is None
    assert b"ENCRYPTED" not in plain.read_bytes()


def test_same_key_as_cryptography_writes_and_what_cryptography_wrote_reads_as_2048_rounds() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    ours = encrypt_pkcs8_pem(der, b"pw", iterations=1000)  # few rounds: this test checks the encoding
    assert pbkdf2_iterations(ours) == 1000
    assert _raw(ser.load_pem_private_key(ours, password=b"pw")) == _raw(key)
    theirs = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw"))
    assert pbkdf2_iterations(theirs) == 2048  # why this module exists; a cryptography that changes it shows here
    # A long key body (DER lengths in long form) and counts whose top bit needs a leading zero byte.
    for rounds in (1, 127, 128, 255, 256, 0x8000, 600_000):
        assert pbkdf2_iterations(encrypt_pkcs8_pem(der * 9, b"pw", iterations=rounds)) == rounds
    for junk in (b"", b"not pem", b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n!!\n-----END ENCRYPTED PRIVATE KEY-----\n",
                 b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"):
        assert pbkdf2_iterations(junk) is None
    with pytest.raises(ValueError, match="empty password"):
        encrypt_pkcs8_pem(der, b"")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_reads_it(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    path = tmp_path / "k.pem"
    path.write_bytes(encrypt_pkcs8_pem(der, b"pw", iterations=2000))
    out = subprocess.run(["openssl", "pkey", "-in", str(path), "-passin", "pass:pw", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert out == der


def test_sign_warns_about_a_key_with_few_rounds(tmp_path: Path, tiny_bundle: Path,  # noqa: F811
                                                caplog: pytest.LogCaptureFixture) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    weak = tmp_path / "weak.key"
    weak.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.signing"):
        sign_bundle(bundle, weak, b"pw")
    assert (bundle / SIGNATURE_FILE).is_file()
    msg, = [r.getMessage() for r in caplog.records if "PBKDF2" in r.getMessage()]
    assert "only 2048 PBKDF2 rounds" in msg and "openssl pkcs8 -topk8" in msg and "-iter 600000" in msg
    caplog.clear()
    strong = tmp_path / "strong.key"
    strong.write_bytes(encrypt_pkcs8_pem(key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8,
                                                           ser.NoEncryption()), b"pw"))
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.signing"):
        sign_bundle(bundle, strong, b"pw")
    assert not [r for r in caplog.records if "PBKDF2" in r.getMessage()]


#: An Ed25519 key that ``openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES -passout pass:secret`` (OpenSSL 3.0.19) wrote:
#: the PKCS#12 scheme, 2,048 rounds of SHA-1 into 3DES. A throwaway test key.
LEGACY_3DES_KEY = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MFgwHAYKKoZIhvcNAQwBAzAOBAimqlLz7lyb8AICCAAEOOUNRjP0NKPg55R0gE+Q
FB4V4VO/ZY3h2w8ef0qR37ik2vJmCsS4vXXvEut1pGkS3pRVz4P8p/se
-----END ENCRYPTED PRIVATE KEY-----
"""


def test_legacy_schemes_are_recognised_with_their_round_count() -> None:
    """``pbkdf2_iterations`` reads PBES2 only, so a PBES1 / PKCS#12 key signed without a word (session 37's
    note): ``legacy_scheme`` names it. The count 2048 is the file's INTEGER 0x0800."""
    from uopsl.runtime.pkcs8 import legacy_scheme

    assert legacy_scheme(LEGACY_3DES_KEY) == ("PKCS#12 PBE (SHA-1, 3-key 3DES)", 2048)
    assert pbkdf2_iterations(LEGACY_3DES_KEY) is None
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    assert legacy_scheme(encrypt_pkcs8_pem(der, b"pw", iterations=1000)) is None  # PBES2, however few rounds
    assert legacy_scheme(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())) is None
    # Damaged documents: no guess (the algorithm a SET instead of a SEQUENCE; the body cut short).
    assert legacy_scheme(LEGACY_3DES_KEY.replace(b"MFgw", b"MFgx")) is None
    assert legacy_scheme(LEGACY_3DES_KEY.replace(b"MFgwHAYKKoZIhvcNAQwBAzAOBAim", b"MFgwHAYKKoZIhvcNAQwBAzAO")) is None


def test_sign_warns_about_a_legacy_scheme_and_names_the_fix(tmp_path: Path, tiny_bundle: Path,  # noqa: F811
                                                           caplog: pytest.LogCaptureFixture) -> None:
    legacy, bundle = tmp_path / "legacy.key", tmp_path / "bundle"
    legacy.write_bytes(LEGACY_3DES_KEY)
    shutil.copytree(tiny_bundle, bundle)
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.signing"):
        assert sign_bundle(bundle, legacy, b"secret").key_id and (bundle / SIGNATURE_FILE).is_file()
    msg, = [r.getMessage() for r in caplog.records if "legacy scheme" in r.getMessage()]
    assert "PKCS#12 PBE (SHA-1, 3-key 3DES) with 2048 rounds" in msg and str(legacy) in msg
    assert "openssl pkcs8 -topk8 -v2 aes-256-cbc" in msg and "-iter 600000" in msg
    if shutil.which("openssl") is None:
        return
    # The command the warning gives does what it says: the re-encrypted file signs without a warning.
    fixed = tmp_path / "fixed.key"
    subprocess.run(["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA256", "-iter", "600000",
                    "-in", str(legacy), "-passin", "pass:secret", "-out", str(fixed), "-passout", "pass:secret"],
                   check=True, capture_output=True)
    assert pbkdf2_iterations(fixed.read_bytes()) == 600_000
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.signing"):
        sign_bundle(bundle, fixed, b"secret")
    assert not [r for r in caplog.records if "rounds" in r.getMessage()]
