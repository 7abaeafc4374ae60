"""Mutation audit (session 37) of bundle signing and trust, encrypted key files and the intended-use statement.

Each test pins a behaviour a single-point bug in ``runtime/signing.py``, ``runtime/pkcs8.py`` or
``runtime/intended_use.py`` once slipped past the rest of the suite (the audit's report names the bug each one
catches). Expected values are derived by hand, or by a plain re-implementation written out in the test (the
signed bytes, key ids, DER encodings), never by calling the code under test a second way. Keys are made here
with ``cryptography`` directly, not with ``uopsl keygen``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from uopsl.runtime.bundle import read_manifest, verify_or_raise, write_manifest
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.intended_use import IntendedUse, synthetic_only
from uopsl.runtime.pkcs8 import encrypt_pkcs8_pem, pbkdf2_iterations
from uopsl.runtime.signing import (
    SIGNATURE_FILE,
    Revocation,
    check_signature,
    configured_revocations,
    generate_keypair,
    load_trusted_keys,
    open_trusted,
    read_revocations,
    recheck_signature,
    sign_bundle,
    signed_parity_view,
    trust_state,
    trusted_keys_for,
)

ser = pytest.importorskip("cryptography.hazmat.primitives.serialization", reason="pip install 'cryptography>=41'")
ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

PASS = {"verdict": "PASS", "passed": True}
FAIL = {"verdict": "FAIL", "passed": False, "reasons": ["flip_rate 0.02 > 0.005"]}


def _new_key(folder: Path, name: str) -> SimpleNamespace:
    """An Ed25519 key pair written as PEM (PKCS#8 private, SubjectPublicKeyInfo public), and its key id worked
    out as documented: the first 16 hex digits of the sha256 of the 32 raw public bytes."""
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return SimpleNamespace(key=key, private=private, public=public, kid=hashlib.sha256(raw).hexdigest()[:16])


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FP32 + INT8 bundle (read-only: tests copy it before changing anything)."""
    from tinybundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle-s37") / "tiny", int8=True)


@pytest.fixture(scope="module")
def maker(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return _new_key(tmp_path_factory.mktemp("keys-s37"), "maker")


@pytest.fixture()
def signed(source_bundle: Path, tmp_path: Path, maker: SimpleNamespace) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(source_bundle, bundle)
    sign_bundle(bundle, maker.private)
    return bundle


def _canonical(obj: object) -> bytes:
    """The signed bytes, written out: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _payload(bundle: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((bundle / SIGNATURE_FILE).read_text())["payload"]  # type: ignore[no-any-return]


def _resign(bundle: Path, key: object, payload: dict) -> None:  # type: ignore[type-arg]
    """What a signer holding the key writes: ``payload`` as given (key order kept) and an Ed25519 signature over
    its canonical bytes."""
    sig = base64.b64encode(key.sign(_canonical(payload))).decode("ascii")  # type: ignore[attr-defined]
    (bundle / SIGNATURE_FILE).write_text(json.dumps({"payload": payload, "signature": sig}))


def _machine(tmp_path: Path, maker: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
             revoked: str | None = None) -> Path:
    """This machine's trusted-keys folder, holding the maker's key (and ``revoked`` as its revocation list)."""
    import uopsl.runtime.signing as signing

    folder = tmp_path / "trusted-keys"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(maker.public, folder / "maker.pub")
    if revoked is not None:
        (folder / "revoked.txt").write_text(revoked)
    monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
    return folder


def _reseal(bundle: Path, **changes: object) -> None:
    """An edit with fresh checksums: what someone who changes a bundle after signing does."""
    write_manifest(bundle, replace(read_manifest(bundle), **changes))
    verify_or_raise(bundle)


# -- what is signed -------------------------------------------------------------------------------------------
def test_the_signed_bytes_are_the_payload_as_sorted_compact_json_whatever_order_the_file_holds(
        signed: Path, maker: SimpleNamespace) -> None:
    """Mutant: ``_canonical`` without ``sort_keys`` (the signature then covers the file's key order). A signature
    made by another signer, or by an earlier uopsl, whose signature.json lists the payload's keys in another
    order was then refused on every device, and the signature id a recall names came out different. Expected
    bytes and id: json.dumps(sort_keys=True, separators=(",", ":")) and its sha256, written out here."""
    payload = _payload(signed)

    def reversed_order(obj: object) -> object:
        return {k: reversed_order(obj[k]) for k in reversed(list(obj))} if isinstance(obj, dict) else obj

    shuffled = reversed_order(payload)
    assert list(shuffled) != sorted(shuffled)  # type: ignore[arg-type]  # the file's order is not the signed one
    _resign(signed, maker.key, shuffled)  # type: ignore[arg-type]
    check = check_signature(signed, load_trusted_keys([maker.public]))
    assert check.trusted, check.problem
    assert check.signature_id == hashlib.sha256(_canonical(payload)).hexdigest()


@pytest.mark.parametrize("when", ["2026-01-02T03:04:05", "last tuesday"])
def test_a_signing_time_without_a_zone_cannot_prove_it_is_after_a_cut_off(
        signed: Path, tmp_path: Path, maker: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Mutants: ``_signed_time`` kept a time without a zone (then shown as signed_at, and compared with the
    list's zoned cut-off: TypeError), and ``Revocation.refuses`` let a time it cannot read pass a ``before``
    entry. A recall (``key ID before DATE``) must refuse every bundle that cannot prove it was signed after the
    date (signing.py: "A signing time that cannot be read cannot prove it is after the cut-off"). The same
    bundle with a zoned time after the cut-off passes."""
    _machine(tmp_path, maker, monkeypatch, f"key {maker.kid} before 2000-01-01  # recall\n")
    payload = _payload(signed)
    _resign(signed, maker.key, {**payload, "signed_at": when})
    check = check_signature(signed, trusted_keys_for())
    assert not check.trusted and check.signed_at == "(unreadable time)"
    assert check.problem.startswith(f"key {maker.kid}'s bundles signed before 2000-01-01T00:00:00+00:00 are revoked")
    _resign(signed, maker.key, {**payload, "signed_at": "2026-01-02T03:04:05+00:00"})
    assert check_signature(signed, trusted_keys_for()).trusted


def test_a_key_entry_never_refuses_a_bundle_another_key_signed() -> None:
    """Mutant: ``Revocation.refuses`` without its key-id comparison. A ``key`` entry withdraws that key only;
    a caller that attaches a machine's whole list to a key (TrustedKey's doc: "this machine's revocation
    lists") must not see another maker's bundles refused."""
    entry = Revocation("key", "a" * 16, None, "leaked", "revoked.txt:1")
    assert entry.refuses("a" * 16, "0" * 64, None) is True
    assert entry.refuses("b" * 16, "0" * 64, None) is False
    cutoff = Revocation("key", "a" * 16, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert cutoff.refuses("b" * 16, "0" * 64, None) is False


def test_a_public_key_of_another_algorithm_is_refused_with_one_line(tmp_path: Path) -> None:
    """Mutant: ``load_trusted_keys`` without its Ed25519 check. An operator who puts an EC (or RSA) public key in
    the trusted-keys folder then got a ValueError traceback from the raw-bytes export, not the ConfigError that
    says what to fix."""
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pub"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="expected an Ed25519 public key"):
        load_trusted_keys([path])


def test_a_signature_of_another_format_is_refused_even_when_it_verifies(signed: Path,
                                                                        maker: SimpleNamespace) -> None:
    """Mutant: ``check_signature`` checked the algorithm but not ``format``. A signature a newer uopsl writes
    (format 2: content this uopsl may not read as it means) must be refused with "upgrade uopsl", not trusted
    because the bytes verify."""
    _resign(signed, maker.key, {**_payload(signed), "format": 2})
    check = check_signature(signed, load_trusted_keys([maker.public]))
    assert not check.trusted and "signature format 2 " in check.problem and "upgrade uopsl" in check.problem


def test_a_signature_that_is_not_text_is_reported_without_raising(signed: Path, maker: SimpleNamespace) -> None:
    """Mutant: ``_read_signature`` no longer required the signature to be a string. ``check_signature`` promises
    never to raise for a bad signature (``verify`` and ``info`` print what is wrong); base64 of a number raised
    TypeError through it."""
    doc = json.loads((signed / SIGNATURE_FILE).read_text())
    doc["signature"] = 5
    (signed / SIGNATURE_FILE).write_text(json.dumps(doc))
    check = check_signature(signed, load_trusted_keys([maker.public]))
    assert not check.trusted and "not a uopsl signature" in check.problem


def test_a_damaged_signature_file_is_not_called_fine_by_verify(signed: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Mutant: an unreadable signature.json read as "not signed" (``signed`` False). On a machine without keys
    ``uopsl-screen verify`` then told the user it was "fine where no signing key is set up", hiding that a
    signature had been there and was damaged (signing.py: "refused where a key is trusted; only reported
    elsewhere")."""
    from uopsl.runtime.cli import main

    (signed / SIGNATURE_FILE).write_text("{")
    assert check_signature(signed).signed is True
    assert main(["verify", str(signed)]) == 0
    err = capsys.readouterr().err
    assert "unreadable signature" in err and "fine where no signing key" not in err


# -- what a change after signing does ---------------------------------------------------------------------------
def test_restating_the_intended_use_after_signing_voids_the_signature(signed: Path, maker: SimpleNamespace) -> None:
    """Mutant: ``intended_use`` left out of what is signed. Someone who turns a research bundle into a
    'clinical' one (and recomputes the checksums) must not keep the maker's signature: deployment.md lists the
    intended use among the fields the signature covers."""
    _reseal(signed, intended_use=IntendedUse("clinical", "Validated by nobody, for everybody."))
    check = check_signature(signed, load_trusted_keys([maker.public]))
    assert not check.trusted
    assert check.problem == "manifest field(s) intended_use changed since signing: sign the bundle again"


def test_relabelling_a_files_precision_after_signing_voids_the_signature(signed: Path,
                                                                          maker: SimpleNamespace) -> None:
    """Mutant: a file's precision left out of what is signed. Each listed file's path, kind, precision, size and
    sha256 are signed (deployment.md); a precision edited on the way would change what ``auto`` and the reports
    take the file for."""
    m = read_manifest(signed)
    _reseal(signed, files=tuple(replace(f, precision="int8-qdq-s8") if f.path == "model.int8.onnx" else f
                                for f in m.files))
    check = check_signature(signed, load_trusted_keys([maker.public]))
    assert not check.trusted
    assert check.problem.startswith("model.int8.onnx changed since signing")


def test_the_files_bytes_are_checked_even_when_the_signature_holds(signed: Path, maker: SimpleNamespace) -> None:
    """Mutant: ``open_trusted`` skipped the checksums where keys are trusted. A model file changed without
    touching the manifest leaves the signature valid (it covers the manifest); only the hashes catch it, and a
    device must not load that model."""
    data = bytearray((signed / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (signed / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        open_trusted(signed, trusted_keys=[maker.public])


def test_no_verify_is_refused_whichever_source_the_keys_come_from(signed: Path, tmp_path: Path,
                                                                  maker: SimpleNamespace,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: the --no-verify refusal applied only to keys the caller passed. With the key only in the
    machine's folder, ``verify=False`` then opened a bundle whose files were never hashed."""
    _machine(tmp_path, maker, monkeypatch)
    with pytest.raises(ConfigError, match="needs the bundle's checksums checked"):
        open_trusted(signed, verify=False)


def test_a_signature_over_no_records_is_not_taken_for_one_from_an_older_uopsl(
        signed: Path, maker: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    """Mutant: the "made by an older uopsl, covers no parity records" warning for an empty record set too. A
    bundle signed today before any validation covers no records on purpose; telling its user to sign it again
    "with this uopsl" is wrong advice."""
    assert _payload(signed)["content"]["parity"] == {}
    with caplog.at_level(logging.WARNING, logger="uopsl.runtime.signing"):
        _, check = open_trusted(signed, trusted_keys=[maker.public])
    assert check is not None and check.trusted and check.signed_parity == {}
    assert not [r for r in caplog.records if "covers no parity records" in r.getMessage()]


def test_records_written_after_signing_restrict_only_when_they_refuse_this_content(source_bundle: Path) -> None:
    """Mutants in ``_merged_record``: (a) a run recorded since counted as a PASS when ``passed`` was true whatever
    its verdict, so an INCOMPLETE that ``parity_status`` refuses was set aside for the older signed PASS; (b) a
    refusal recorded for other file content (a stale record) overruled the signed PASS of the file that ships.
    Expected views written out by hand from the docstring: "every run of have that is not a PASS for this same
    content laid over" the signed record."""
    m = read_manifest(source_bundle)
    sha = m.file("model.int8.onnx").sha256
    signed = {"model.int8.onnx": {"sha256": sha, "backends": {"ort-cpu": PASS}}}

    def view_of(have: dict) -> dict:  # type: ignore[type-arg]
        files = tuple(replace(f, info={**f.info, "parity": have}) if f.path == "model.int8.onnx" else f
                      for f in m.files)
        view, _ = signed_parity_view(replace(m, files=files), signed)
        return view.file("model.int8.onnx").info["parity"]  # type: ignore[no-any-return]

    incomplete = {"verdict": "INCOMPLETE", "passed": True}
    assert view_of({"sha256": sha, "backends": {"ort-cpu": incomplete}}) == \
        {"sha256": sha, "backends": {"ort-cpu": incomplete}}
    assert view_of({"sha256": "0" * 64, "backends": {"ort-cpu": FAIL}}) == signed["model.int8.onnx"]


# -- recalls while a bundle is open -----------------------------------------------------------------------------
def test_a_recall_published_while_a_bundle_is_open_is_judged_on_what_was_verified(
        signed: Path, tmp_path: Path, maker: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants in ``recheck_signature`` (what a running ``watch`` or Screener calls before its batches): the
    signing time dropped (a cut-off before it then refused the bundle), the signature id dropped (a ``release``
    recall did not stop it), the files dropped (a ``file`` recall did not stop it). The model's sha256 is
    computed here from its bytes."""
    folder = _machine(tmp_path, maker, monkeypatch)
    manifest, check = open_trusted(signed)
    assert check is not None and check.trusted
    signed_at = dt.datetime.fromisoformat(check.signed_at)
    day_before = (signed_at - dt.timedelta(days=1)).date().isoformat()
    (folder / "revoked.txt").write_text(f"key {maker.kid} before {day_before}\n")
    assert recheck_signature(signed, manifest, check) == check  # signed after the cut-off: still trusted
    (folder / "revoked.txt").write_text(f"release {hashlib.sha256(_canonical(_payload(signed))).hexdigest()}\n")
    with pytest.raises(BundleError, match=r"no longer trusted here: this signed release \([0-9a-f]{64}\) is revoked"):
        recheck_signature(signed, manifest, check)
    model_sha = hashlib.sha256((signed / "model.onnx").read_bytes()).hexdigest()
    (folder / "revoked.txt").write_text(f"file {model_sha}  # misses DME\n")
    with pytest.raises(BundleError, match=f"a file of this bundle \\(sha256 {model_sha}\\) is revoked"):
        recheck_signature(signed, manifest, check)


def test_a_bundle_opened_before_keys_existed_is_refused_if_its_manifest_changed_since(
        signed: Path, tmp_path: Path, maker: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: ``recheck_signature`` without its comparison of the manifest in memory with the one on disk. A
    Screener opened while the machine trusted no key kept the thresholds it read then; once keys appear, a
    bundle changed (and signed again) since must not make those unsigned thresholds pass as signed."""
    import uopsl.runtime.signing as signing

    monkeypatch.setattr(signing, "_system_dir_for_tests", tmp_path / "no-keys-yet")
    manifest, check = open_trusted(signed)
    assert check is None
    _reseal(signed, referral_threshold=manifest.referral_threshold + 0.1)
    sign_bundle(signed, maker.private)
    _machine(tmp_path, maker, monkeypatch)
    with pytest.raises(BundleError, match="changed since it was opened"):
        recheck_signature(signed, manifest, check)


def test_trust_state_sees_a_list_or_key_file_rewritten_in_place(tmp_path: Path, maker: SimpleNamespace,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants in ``trust_state`` (the cheap fingerprint a running Screener compares before reading its keys and
    lists again): times left out of each file's stat, the folder's entries left out, the key files given left
    out. An administrator who edits revoked.txt in place (same inode; one 16-digit id for another, same size)
    or replaces a given key file must be seen. The modification time is moved on explicitly, as a later edit
    would, so the test does not depend on the clock's resolution."""
    folder = _machine(tmp_path, maker, monkeypatch, "key " + "a" * 16 + "\n")
    given = tmp_path / "given" / "site.pub"
    given.parent.mkdir()
    shutil.copyfile(maker.public, given)

    def rewrite(path: Path, data: bytes) -> None:
        st = os.stat(path)
        with open(path, "r+b") as fh:  # in place: same inode
            fh.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert (os.stat(path).st_ino, os.stat(path).st_size) == (st.st_ino, st.st_size)

    before = trust_state([given])
    rewrite(folder / "revoked.txt", ("key " + "b" * 16 + "\n").encode())
    after_list = trust_state([given])
    assert after_list != before
    other = _new_key(tmp_path, "other")
    assert len(other.public.read_bytes()) == len(given.read_bytes())  # Ed25519 SPKI PEM: always the same size
    rewrite(given, other.public.read_bytes())
    assert trust_state([given]) != after_list


# -- revocation lists -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["release", "file"])
def test_only_key_entries_take_a_before_date(tmp_path: Path, kind: str) -> None:
    """Mutant: ``before DATE`` accepted after any entry. The list fails closed on a line it cannot read
    (read_revocations: "a line it cannot read stops every run"); ``release X before D`` means nothing the code
    applies, so a maker who wrote it believing in a dated recall must be told."""
    path = tmp_path / "revoked.txt"
    path.write_text(f"{kind} {'a' * 64} before 2026-12-01\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_revocations(path)


def test_a_list_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Mutant: the list read as plain UTF-8. Windows Notepad (and other editors) start a UTF-8 file with a byte
    order mark; the first line then read as an unknown entry and the machine stopped screening."""
    path = tmp_path / "revoked.txt"
    path.write_bytes(b"\xef\xbb\xbfkey 0123456789abcdef  # leaked\n")
    assert read_revocations(path) == (Revocation("key", "0123456789abcdef", None, "leaked", f"{path}:1"),)


def test_two_lists_whose_names_differ_only_in_case_stop_every_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: of two lists named revoked.txt in different cases, one was read (whichever the folder listed
    first) and the other ignored, so a recall in the ignored one let the bundle screen."""
    import uopsl.runtime.signing as signing

    folder = tmp_path / "trusted-keys"
    folder.mkdir()
    (folder / "revoked.txt").write_text("key " + "a" * 16 + "\n")
    (folder / "REVOKED.TXT").write_text("key " + "b" * 16 + "\n")
    if len(os.listdir(folder)) != 2:
        pytest.skip("a file system that ignores case holds one file")
    monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
    with pytest.raises(ConfigError, match="is not read as a revocation list"):
        configured_revocations({})


# -- keygen -------------------------------------------------------------------------------------------------------
def test_a_key_name_with_a_backslash_is_refused(tmp_path: Path) -> None:
    """Mutant: the backslash left out of the name check. On Windows ``a\\b`` names a folder; the name check
    refuses it everywhere so a name that works on one system works on all (signing.py: "a plain file name")."""
    with pytest.raises(ConfigError, match="must be a plain file name"):
        generate_keypair(tmp_path, "a\\b")
    assert list(tmp_path.iterdir()) == []


def test_a_keygen_that_fails_half_way_leaves_no_private_key_behind(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: the clean-up of a half-written pair dropped. A disk that fills after the private key is written
    left NAME.key without NAME.pub, and the next ``keygen`` refused to overwrite it."""
    real_open = os.open

    def failing_open(path: str, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".pub"):
            raise OSError(28, "No space left on device")
        return real_open(path, flags, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(OSError, match="No space left"):
        generate_keypair(tmp_path / "keys", "k")
    monkeypatch.undo()
    assert list((tmp_path / "keys").iterdir()) == []


# -- the password protection of a key file -------------------------------------------------------------------------
def _ed25519_der() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8,
                                                              ser.NoEncryption())


def test_sign_warns_below_100000_rounds_and_not_at_100000(source_bundle: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Mutants: the weak-key warning at ``<=`` WEAK_BELOW, and WEAK_BELOW lowered. pkcs8.py: "Below this
    (100,000), uopsl sign warns that the key file's password protection is weak"."""
    bundle = tmp_path / "bundle"
    shutil.copytree(source_bundle, bundle)
    warned = {}
    for rounds in (99_999, 100_000):
        path = tmp_path / f"k{rounds}.key"
        path.write_bytes(encrypt_pkcs8_pem(_ed25519_der(), b"pw", iterations=rounds))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uopsl.runtime.signing"):
            sign_bundle(bundle, path, b"pw")
        warned[rounds] = any("PBKDF2 rounds" in r.getMessage() for r in caplog.records)
    assert warned == {99_999: True, 100_000: False}


def test_a_count_with_its_top_bit_set_is_a_positive_der_integer() -> None:
    """Mutant: ``_int`` without the leading zero byte. 50,000 rounds (0xC350) then encoded as a negative INTEGER,
    and ``cryptography`` could not read the key back. Expected encoding by hand: 02 03 00 C3 50."""
    der = _ed25519_der()
    pem = encrypt_pkcs8_pem(der, b"pw", iterations=50_000)
    body = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    assert b"\x02\x03\x00\xc3\x50" in body
    key = ser.load_pem_private_key(pem, password=b"pw")
    assert key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()) == der


def test_a_body_of_exactly_128_bytes_takes_the_long_length_form() -> None:
    """Mutant: DER's short length form up to 128 (``<=``). A length of 128 is then written as the single byte
    0x80, which DER reads as "long form, 0 bytes": the file cannot be read. 112 bytes of key pad to 128 bytes of
    ciphertext; its OCTET STRING header must be 04 81 80 (by hand), and the count reads back."""
    pem = encrypt_pkcs8_pem(bytes(range(112)), b"pw", iterations=1000)
    body = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    assert body[-131:-128] == b"\x04\x81\x80"
    assert pbkdf2_iterations(pem) == 1000


def test_every_key_file_gets_a_fresh_iv() -> None:
    """Mutant: a constant (zero) IV. AES-CBC needs an unpredictable IV (RFC 8018's PBES2 takes it from the
    encryption scheme's parameters); the IV sits after the AES-256-CBC OID (06 09 60 86 48 01 65 03 04 01 2A)
    as an OCTET STRING of 16 bytes."""
    aes_oid = bytes.fromhex("060960864801650304012a")
    der = _ed25519_der()

    def iv_of(pem: bytes) -> bytes:
        body = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
        at = body.index(aes_oid) + len(aes_oid)
        assert body[at:at + 2] == b"\x04\x10"
        return body[at + 2:at + 18]

    first, second = iv_of(encrypt_pkcs8_pem(der, b"pw", 1000)), iv_of(encrypt_pkcs8_pem(der, b"pw", 1000))
    assert first != second and bytes(16) not in (first, second)


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


#: OIDs encoded by hand (tag, length, base-128 arcs).
_OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")  # 1.2.840.113549.1.5.13
_OID_PBES1 = bytes.fromhex("06092a864886f70d01050a")  # 1.2.840.113549.1.5.10 (pbeWithSHA1AndDES-CBC)
_OID_PBKDF2 = bytes.fromhex("06092a864886f70d01050c")  # 1.2.840.113549.1.5.12
_OID_SCRYPT = bytes.fromhex("06092b06010401da47040b")  # 1.3.6.1.4.1.11591.4.11
_OID_HMAC_SHA256 = bytes.fromhex("06082a864886f70d0209")  # 1.2.840.113549.2.9
_OID_AES256_CBC = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42


def _pem(der: bytes) -> bytes:
    return (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + base64.b64encode(der) +
            b"\n-----END ENCRYPTED PRIVATE KEY-----\n")


def _encrypted_key(scheme: bytes = _OID_PBES2, kdf: bytes = _OID_PBKDF2, params: bytes = b"") -> bytes:
    """An EncryptedPrivateKeyInfo written by hand: scheme, KDF and its parameters, AES-256-CBC, 16 bytes of
    'ciphertext'. Default parameters: salt, INTEGER 1000 (02 02 03 E8), HMAC-SHA256."""
    params = params or _seq(_tlv(0x04, b"s" * 16), bytes.fromhex("020203e8"), _seq(_OID_HMAC_SHA256, b"\x05\x00"))
    algorithm = _seq(scheme, _seq(_seq(kdf, params), _seq(_OID_AES256_CBC, _tlv(0x04, b"i" * 16))))
    return _seq(algorithm, _tlv(0x04, b"c" * 16))


def test_the_count_is_read_only_from_pbes2_with_pbkdf2_and_a_whole_pem() -> None:
    """Mutants in ``pbkdf2_iterations``: the PBES2 check, the PBKDF2 check, the INTEGER check and the END line
    check dropped. Its doc: None "for anything else (an unencrypted key, another scheme, not PEM)". A PBES2 key
    stretched with scrypt (``openssl pkcs8 -scrypt``) otherwise read its cost N=16384 as a PBKDF2 count and
    ``uopsl sign`` warned that a strong key was weak."""
    assert pbkdf2_iterations(_pem(_encrypted_key())) == 1000  # the hand-written document itself is read
    assert pbkdf2_iterations(_pem(_encrypted_key(scheme=_OID_PBES1))) is None
    scrypt = _seq(_tlv(0x04, b"s" * 16), bytes.fromhex("02024000"), bytes.fromhex("020108"), bytes.fromhex("020101"))
    assert pbkdf2_iterations(_pem(_encrypted_key(kdf=_OID_SCRYPT, params=scrypt))) is None
    octet_count = _seq(_tlv(0x04, b"s" * 16), bytes.fromhex("040203e8"), _seq(_OID_HMAC_SHA256, b"\x05\x00"))
    assert pbkdf2_iterations(_pem(_encrypted_key(params=octet_count))) is None
    cut = _pem(_encrypted_key()).split(b"-----END")[0]  # a copy cut off before its END line
    assert pbkdf2_iterations(cut) is None


# -- the intended-use statement -------------------------------------------------------------------------------------
def test_statements_at_their_limits_are_kept_and_one_more_character_is_refused() -> None:
    """Mutants: the length check at ``>=`` (a statement of exactly 1,000 characters refused) and the
    training-data limit raised from 300. intended_use.py: "at most {limit} are kept on every report page"."""
    use = IntendedUse("research", "s" * 1000, "t" * 300)
    assert (len(use.statement), len(use.trained_on)) == (1000, 300)
    with pytest.raises(BundleError, match="intended_use.trained_on is 301 characters long; at most 300"):
        IntendedUse("research", trained_on="t" * 301)


def test_a_clinical_description_quotes_the_statement_once() -> None:
    """Mutant: ``describe`` added "Maker's statement: ..." for clinical bundles too, so ``info`` and the logs
    repeated the statement right after quoting it. Expected text written out from the method's two parts."""
    statement = "Validated by Example Eye Care for adults with diabetes (study EEC-2026-04)."
    assert IntendedUse("clinical", statement, "real photographs").describe() == (
        f"Clinical use as stated by the bundle's maker: {statement} Trained on: real photographs.")


def test_a_model_that_also_learned_from_real_photographs_is_not_synthetic_only() -> None:
    """Mutant: ``synthetic_only`` with ``any`` for ``all``. A model pretrained on synthetic photographs and
    fine-tuned on real ones was then taken for a synthetic-only model, and ``uopsl export`` refused it the
    clinical label its maker validated it for. Its doc: "every fundus photograph that taught the model its
    classes was synthetic"."""
    synthetic = {"stage": "pretrain", "modality": "fundus", "synthetic": True}
    real = {"stage": "finetune", "modality": "fundus", "synthetic": False}
    assert synthetic_only([synthetic, {**synthetic, "stage": "finetune"}]) is True
    assert synthetic_only([synthetic, real]) is False
