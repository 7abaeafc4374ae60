"""Bundle signatures: a device that trusts a maker's key screens only with bundles that maker signed, unchanged.

The checksums alone caught a damaged copy, not someone who edited a file and recomputed them.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import engine_header as eh
from uopsl.runtime.bundle import MANIFEST, describe_file, read_manifest, verify_or_raise, write_manifest
from uopsl.runtime.errors import BundleError, ConfigError, MissingDependencyError
from uopsl.runtime.signing import (
    SIGNATURE_FILE,
    TRUSTED_KEYS_ENV,
    check_signature,
    generate_keypair,
    load_trusted_keys,
    sign_bundle,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    private, public, _ = generate_keypair(root, "maker")
    other_private, other_public, _ = generate_keypair(root, "other")
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}


@pytest.fixture()
def signed(tiny_bundle: Path, tmp_path: Path, keys: dict[str, Path]) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    sign_bundle(bundle, keys["private"])
    return bundle


def _trusted(keys: dict[str, Path], *names: str) -> tuple:  # type: ignore[type-arg]
    return load_trusted_keys([keys[n] for n in names or ("public",)])


def _reseal(bundle: Path, **changes: object) -> None:
    """What someone who edits a bundle and recomputes its checksums does: the checksums verify again."""
    write_manifest(bundle, replace(read_manifest(bundle), **changes))
    verify_or_raise(bundle)


# -- keys -------------------------------------------------------------------------------------------------
def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    private, public, kid = generate_keypair(tmp_path, "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_trusted_keys([public])[0].key_id == kid and len(kid) == 16
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_keypair(tmp_path, "k")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_trusted_keys([_text(tmp_path / "junk.pub", "hello")])
    with pytest.raises(ConfigError, match="expected an Ed25519 public key|not a readable public key"):
        load_trusted_keys([private])  # the private key given where the public one belongs

    # An encrypted key signs only with its password, which comes from the environment, not the command line.
    from uopsl.train.cli import cli

    monkeypatch.setenv("KEYPW", "correct horse")
    res = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "enc"), "--password-env", "KEYPW"])
    assert res.exit_code == 0, res.output
    assert b"ENCRYPTED" in (tmp_path / "enc" / "uopsl-signing.key").read_bytes()
    with pytest.raises(ConfigError, match="wrong password|password"):
        sign_bundle(tmp_path, tmp_path / "enc" / "uopsl-signing.key", b"wrong")


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- what a signature covers ------------------------------------------------------------------------------
def test_a_signed_bundle_is_trusted_only_with_its_makers_key(signed: Path, keys: dict[str, Path]) -> None:
    check = check_signature(signed, _trusted(keys))
    assert check.trusted and check.signed and check.key_id == _trusted(keys)[0].key_id
    assert "signature valid, key trusted" in check.describe()
    other = check_signature(signed, _trusted(keys, "other_public"))
    assert not other.trusted and "does not trust" in other.problem
    assert check_signature(signed, _trusted(keys, "other_public", "public")).trusted  # any trusted key will do
    unchecked = check_signature(signed)
    assert not unchecked.trusted and "no trusted key given" in unchecked.problem
    (signed / SIGNATURE_FILE).unlink()
    assert not check_signature(signed, _trusted(keys)).signed


def test_edits_resealed_with_fresh_checksums_void_the_signature(signed: Path, keys: dict[str, Path]) -> None:
    m = read_manifest(signed)
    _reseal(signed, classes=(replace(m.classes[1], threshold=0.99),) + m.classes[2:] + m.classes[:1])
    check = check_signature(signed, _trusted(keys))
    assert not check.trusted and check.problem.startswith("manifest field(s) classes changed since signing")


def test_a_replaced_model_file_with_a_matching_manifest_entry_voids_it(signed: Path, keys: dict[str, Path]) -> None:
    data = bytearray((signed / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (signed / "model.onnx").write_bytes(bytes(data))
    m = read_manifest(signed)
    _reseal(signed, files=tuple(describe_file(signed, f) if f.path == "model.onnx" else f for f in m.files))
    check = check_signature(signed, _trusted(keys))
    assert not check.trusted and check.problem.startswith("model.onnx changed since signing")


def test_files_added_after_signing_need_a_new_signature_but_parity_records_do_not(signed: Path,
                                                                                   keys: dict[str, Path]) -> None:
    from uopsl.export.bundle_writer import add_file, record_parity

    record_parity(signed, {"model.onnx": {"ort-cpu": {"verdict": "PASS", "passed": True}}})
    assert check_signature(signed, _trusted(keys)).trusted  # a device records its own validation
    shutil.copyfile(signed / "model.onnx", signed / "extra.onnx")
    add_file(signed, None, "extra.onnx", "onnx", "fp32")
    check = check_signature(signed, _trusted(keys))
    assert not check.trusted and check.problem == "extra.onnx was added after signing: sign the bundle again"
    sign_bundle(signed, keys["private"])
    assert check_signature(signed, _trusted(keys)).trusted


def _add_engine(bundle: Path, source_sha: str) -> None:
    from uopsl.export.bundle_writer import add_file

    header = eh.EngineHeader(
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA Jetson AGX Orin", compute_capability="8.7",
        precision="fp16", source_onnx="model.onnx", source_onnx_sha256=source_sha,
        min_batch=1, opt_batch=8, max_batch=16, input_name="image", input_shape=(64, 64, 3))
    eh.write_engine(bundle / "model.fp16.engine", b"plan bytes", header)
    add_file(bundle, None, "model.fp16.engine", "engine", "fp16", info=header.to_dict())


def test_engines_built_on_the_device_are_taken_only_when_allowed_and_built_from_a_signed_file(
        signed: Path, keys: dict[str, Path]) -> None:
    onnx_sha = read_manifest(signed).file("model.onnx").sha256
    _add_engine(signed, onnx_sha)
    strict = check_signature(signed, _trusted(keys))
    assert not strict.trusted and "--trust-device-engines" in strict.problem
    allowed = check_signature(signed, _trusted(keys), allow_device_engines=True)
    assert allowed.trusted and allowed.device_engines == ("model.fp16.engine",)
    assert "engines built on this device from signed files: model.fp16.engine" in allowed.describe()
    _add_engine(signed, "0" * 64)  # an engine whose header names other content
    check = check_signature(signed, _trusted(keys), allow_device_engines=True)
    assert not check.trusted and "was not built from a signed ONNX file" in check.problem
    # Signed with the engine in it, the engine is covered like any file.
    _add_engine(signed, onnx_sha)
    sign_bundle(signed, keys["private"])
    assert check_signature(signed, _trusted(keys)).trusted


@pytest.mark.parametrize("edit", ["payload", "signature", "garbage"])
def test_a_tampered_signature_file_is_refused(signed: Path, keys: dict[str, Path], edit: str) -> None:
    path = signed / SIGNATURE_FILE
    doc = json.loads(path.read_text())
    if edit == "payload":
        doc["payload"]["content"]["manifest"]["referral_rule"] = "referable_sum"
        path.write_text(json.dumps(doc))
        assert "does not match" in check_signature(signed, _trusted(keys)).problem
    elif edit == "signature":
        doc["signature"] = "not base64!"
        path.write_text(json.dumps(doc))
        assert "malformed" in check_signature(signed, _trusted(keys)).problem
    else:
        path.write_text("{")
        with pytest.raises(BundleError, match="unreadable signature"):
            check_signature(signed, _trusted(keys))


def test_signing_refuses_a_bundle_that_fails_its_checksums(tiny_bundle: Path, tmp_path: Path,
                                                           keys: dict[str, Path]) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="model.onnx"):
        sign_bundle(bundle, keys["private"])
    assert not (bundle / SIGNATURE_FILE).exists()


# -- the device side ----------------------------------------------------------------------------------------
def test_a_screener_with_trusted_keys_takes_only_signed_bundles(signed: Path, tiny_bundle: Path,
                                                                keys: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.runtime.api import Screener

    s = Screener(signed, backend="ort-cpu", trusted_keys=[keys["public"]])
    assert s.signature is not None and s.signature.trusted
    with pytest.raises(BundleError, match="is not trusted here: not signed"):
        Screener(tiny_bundle, backend="ort-cpu", trusted_keys=[keys["public"]])
    with pytest.raises(ConfigError, match="needs the bundle's checksums checked"):
        Screener(signed, backend="ort-cpu", trusted_keys=[keys["public"]], verify=False)
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["other_public"]))  # what a device maker sets once
    with pytest.raises(BundleError, match="does not trust"):
        Screener(signed, backend="ort-cpu")
    assert Screener(signed, backend="ort-cpu", trusted_keys=[keys["public"]]).signature.trusted  # type: ignore[union-attr]
    monkeypatch.delenv(TRUSTED_KEYS_ENV)
    assert Screener(tiny_bundle, backend="ort-cpu").signature is None  # no key: nothing checked, as before


def test_the_report_says_the_bundle_signature_was_checked(signed: Path, tmp_path: Path, keys: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tinybundle import fundus_jpeg
    from uopsl.runtime.api import Screener

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    with Screener(signed, backend="ort-cpu", trusted_keys=[keys["public"]]) as s:
        s.screen_to(tmp_path / "out", [tmp_path / "in"], overlays=False)
    kid = load_trusted_keys([keys["public"]])[0].key_id
    assert f"signed by key {kid}, checked against a trusted key</dd>" in (tmp_path / "out" / "report.html").read_text()


def test_screen_cli_verify_and_run_check_the_signature(signed: Path, tmp_path: Path, keys: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from tinybundle import fundus_jpeg
    from uopsl.runtime.cli import main

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["verify", str(signed), "--trusted-key", str(keys["public"])]) == 0
    assert "signature: signed by key" in capsys.readouterr().err
    assert main(["verify", str(signed), "--trusted-key", str(keys["other_public"])]) == 2
    assert "does not trust" in capsys.readouterr().err
    fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    m = read_manifest(signed)
    _reseal(signed, referral_threshold=m.referral_threshold + 0.1)
    argv = ["run", str(signed), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "ort-cpu",
            "--no-report", "--trusted-key", str(keys["public"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "referral_threshold changed since signing" in err and not (tmp_path / "out").exists()


def test_without_cryptography_the_error_says_what_to_install(signed: Path, keys: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "cryptography" or n.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # type: ignore[arg-type]
    with pytest.raises(MissingDependencyError, match=r"uopsl\[sign\]"):
        load_trusted_keys([keys["public"]])
    assert not check_signature(signed).trusted  # looking without a key needs no cryptography
    assert (signed / MANIFEST).is_file()
