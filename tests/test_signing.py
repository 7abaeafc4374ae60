"""Bundle signatures: a device that trusts a maker's key screens only with bundles that maker signed, unchanged.

The checksums alone caught a damaged copy, not someone who edited a file and recomputed them.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinybundle import tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime import engine_header as eh
from uopsl.runtime.bundle import MANIFEST, FileEntry, describe_file, read_manifest, verify_or_raise, write_manifest
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
def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(tmp_path: Path, tiny_bundle: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    private, public, kid = generate_keypair(tmp_path, "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_trusted_keys([public])[0].key_id == kid and len(kid) == 16
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_keypair(tmp_path, "k")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_trusted_keys([_text(tmp_path / "junk.pub", "hello")])
    with pytest.raises(ConfigError, match="this is a PRIVATE key, which must not be on devices"):
        load_trusted_keys([private])  # the private key given where the public one belongs

    # An encrypted key signs only with its password, which comes from the environment, not the command line.
    from uopsl.train.cli import cli

    monkeypatch.setenv("KEYPW", "correct horse")
    res = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "enc"), "--password-env", "KEYPW"])
    assert res.exit_code == 0, res.output
    assert b"ENCRYPTED" in (tmp_path / "enc" / "uopsl-signing.key").read_bytes()
    with pytest.raises(ConfigError, match="wrong password|password"):
        sign_bundle(tmp_path, tmp_path / "enc" / "uopsl-signing.key", b"wrong")
    res = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0 and "not encrypted" in res.output
    # Typed at a hidden prompt (twice for a new key), as an interactive user would.
    res = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "typed"), "--password-prompt"],
                             input="long passphrase\nlong passphrase\n")
    assert res.exit_code == 0 and "long passphrase" not in res.output, res.output
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    res = CliRunner().invoke(cli, ["sign", str(bundle), "--key", str(tmp_path / "typed" / "uopsl-signing.key")])
    assert isinstance(res.exception, ConfigError) and "--password-prompt" in str(res.exception)
    res = CliRunner().invoke(cli, ["sign", str(bundle), "--key", str(tmp_path / "typed" / "uopsl-signing.key"),
                                   "--password-prompt"], input="long passphrase\n")
    assert res.exit_code == 0 and (bundle / SIGNATURE_FILE).is_file(), res.output


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


def test_an_engine_added_after_signing_is_refused_and_a_signed_one_is_covered(signed: Path,
                                                                              keys: dict[str, Path]) -> None:
    """A review showed that an engine whose (unsigned) header names a signed ONNX file proves nothing: anyone
    handling the bundle in transit can write such a header. Engines count only when signed."""
    onnx_sha = read_manifest(signed).file("model.onnx").sha256
    _add_engine(signed, onnx_sha)
    check = check_signature(signed, _trusted(keys))
    assert not check.trusted
    assert check.problem.startswith("engine model.fp16.engine was added after signing: build engines on a device")
    sign_bundle(signed, keys["private"])  # built on a device of the same kind, then signed
    assert check_signature(signed, _trusted(keys)).trusted
    _add_engine(signed, "0" * 64)  # replaced by an engine of other bytes
    assert "model.fp16.engine changed since signing" in check_signature(signed, _trusted(keys)).problem


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
        check = check_signature(signed, _trusted(keys))  # refused where keys are trusted, reported elsewhere
        assert not check.trusted and "unreadable signature" in check.problem
        assert check_signature(signed).describe().startswith(f"{path}: unreadable signature")


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
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["other_public"]))
    with pytest.raises(BundleError, match="does not trust"):
        Screener(signed, backend="ort-cpu")
    # Keys given add to the machine's; an empty list does not switch them off.
    assert Screener(signed, backend="ort-cpu", trusted_keys=[keys["public"]]).signature.trusted  # type: ignore[union-attr]
    with pytest.raises(BundleError, match="is not trusted here: not signed"):
        Screener(tiny_bundle, backend="ort-cpu", trusted_keys=[])
    monkeypatch.delenv(TRUSTED_KEYS_ENV)
    assert Screener(tiny_bundle, backend="ort-cpu").signature is None  # no key: nothing checked, as before
    assert Screener(signed, backend="ort-cpu", trusted_keys=str(keys["public"])).signature.trusted  # type: ignore[union-attr]


def test_the_machines_key_folder_is_read_whatever_the_environment_says(signed: Path, tiny_bundle: Path,
                                                                       tmp_path: Path, keys: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a service started without UOPSL_TRUSTED_KEYS screened unsigned bundles (fail-open)."""
    from uopsl.runtime.api import Screener

    import uopsl.runtime.signing as signing

    folder = tmp_path / "trusted-keys"
    folder.mkdir()
    shutil.copyfile(keys["public"], folder / "maker.PUB")  # any case
    (folder / "README.txt").write_text("keys of our bundle makers")  # other names are left alone
    monkeypatch.setattr(signing, "_system_dir_for_tests", folder)  # the machine's own folder
    with pytest.raises(BundleError, match="not signed"):
        Screener(tiny_bundle, backend="ort-cpu")
    assert Screener(signed, backend="ort-cpu").signature.trusted  # type: ignore[union-attr]
    # The variable adds a folder; it cannot hide the machine's own.
    other = tmp_path / "other-keys"
    other.mkdir()
    shutil.copyfile(keys["other_public"], other / "other.pem")
    monkeypatch.setenv("UOPSL_TRUSTED_KEYS_DIR", str(other))
    with pytest.raises(BundleError, match="not signed"):
        Screener(tiny_bundle, backend="ort-cpu")
    assert Screener(signed, backend="ort-cpu").signature.trusted  # type: ignore[union-attr]


@pytest.mark.parametrize("broken", ["named folder missing", "a file where the folder is", "a broken link",
                                    "the folder a broken link", "no key in the folder"])
def test_a_key_folder_that_cannot_be_read_stops_every_run(tiny_bundle: Path, tmp_path: Path, broken: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A second review: an unlistable folder, a file copied where the folder should be, a broken link or a
    mistyped folder name all read as "no keys" and let unsigned bundles through (fail-open)."""
    import uopsl.runtime.signing as signing
    from uopsl.runtime.api import Screener

    folder = tmp_path / "trusted-keys"
    if broken == "named folder missing":
        monkeypatch.setenv("UOPSL_TRUSTED_KEYS_DIR", str(folder))  # mistyped, or never created
        match = "no such trusted-keys folder"
    elif broken == "a file where the folder is":
        folder.write_text("-----BEGIN PUBLIC KEY-----")  # `cp maker.pub /etc/uopsl/trusted-keys`, no folder yet
        monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
        match = "cannot list the trusted keys"
    elif broken == "a broken link":
        folder.mkdir()
        (folder / "maker.pub").symlink_to(tmp_path / "gone.pub")
        monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
        match = "not a readable file"
    elif broken == "the folder a broken link":
        folder.symlink_to(tmp_path / "unmounted")
        monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
        match = "is a broken link"
    else:  # made for keys (an empty bind mount, a key saved as maker.pub.txt) but holding none
        folder.mkdir()
        (folder / "maker.pub.txt").write_text("-----BEGIN PUBLIC KEY-----")
        monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
        match = "holds no key"
    with pytest.raises(ConfigError, match=match):
        Screener(tiny_bundle, backend="ort-cpu")


def test_the_signature_is_compared_with_the_manifest_whose_files_were_hashed(
        signed: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A review raced manifest.json between two reads: a forged manifest (re-sealed, listing another model and
    new thresholds) for the checksum read, the signed one for the signature read; 19-26 of 60 tries passed.
    Every check now works on one read."""
    import uopsl.runtime.bundle as bundle_mod
    from uopsl.runtime.signing import open_trusted

    signed_raw = json.loads((signed / MANIFEST).read_text())
    shutil.copyfile(signed / "model.onnx", signed / "evil.onnx")
    with open(signed / "evil.onnx", "ab") as fh:
        fh.write(b"\0")
    m = read_manifest(signed)
    _reseal(signed, classes=tuple(replace(c, threshold=1.0) for c in m.classes),
            files=m.files + (describe_file(signed, FileEntry("evil.onnx", "onnx", "fp32")),))
    forged = json.loads((signed / MANIFEST).read_text())
    reads = []
    real = bundle_mod.read_manifest_json

    def swapping(path: Path) -> dict:  # type: ignore[type-arg]
        reads.append(path)
        return forged if len(reads) == 1 else signed_raw  # the attacker's timing, at its best

    import uopsl.runtime.signing as signing_mod

    for mod in (bundle_mod, signing_mod):  # wherever the manifest could be read again
        monkeypatch.setattr(mod, "read_manifest_json", swapping)
    with pytest.raises(BundleError, match="changed since signing"):
        open_trusted(signed, trusted_keys=[keys["public"]])
    assert len(reads) == 1  # one read of the manifest for every check
    for mod in (bundle_mod, signing_mod):
        monkeypatch.setattr(mod, "read_manifest_json", real)


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


def test_bench_and_info_obey_the_machines_keys(signed: Path, tiny_bundle: Path, keys: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A review: with a key configured, `run` refused an unsigned bundle but `bench` ran it and `info` said 0."""
    from uopsl.runtime.cli import main

    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["public"]))
    assert main(["bench", str(tiny_bundle), "--backend", "ort-cpu", "--iters", "1", "--warmup", "0",
                 "--batch", "1", "--no-e2e"]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["info", str(tiny_bundle)]) == 2
    assert "REFUSED here" in capsys.readouterr().out
    assert main(["info", str(signed), "--json"]) == 0
    sig = json.loads(capsys.readouterr().out)["signature"]
    assert sig["trusted"] and sig["keys_trusted_here"] == [sig["key_id"]]


def test_sign_refuses_onnx_files_with_external_data(tiny_bundle: Path, tmp_path: Path,
                                                    keys: dict[str, Path]) -> None:
    """A review: weights kept in an external-data file are read by path and were not covered by the signature."""
    import onnx

    from uopsl.export.bundle_writer import add_file
    from uopsl.train.cli import cli

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    model = onnx.load(str(bundle / "model.onnx"))
    onnx.save(model, str(bundle / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    add_file(bundle, None, "ext.onnx", "onnx", "fp32")
    res = CliRunner().invoke(cli, ["sign", str(bundle), "--key", str(keys["private"])])
    assert isinstance(res.exception, ConfigError) and "external data" in str(res.exception)
    assert not (bundle / SIGNATURE_FILE).exists()

    # Inside a subgraph (an If branch) too: a second review edited such weights after the first check passed.
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full(4, 2.0, np.float32), "w")
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "branch", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[w])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)],
                              "g", [cond], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])])
    sub = helper.make_model(graph)
    onnx.save(sub, str(tmp_path / "sub.onnx"), save_as_external_data=True, location="sub.weights", size_threshold=0)
    from uopsl.train.commands.sign import _refuse_external_data

    with pytest.raises(ConfigError, match="external data"):
        _refuse_external_data(tmp_path, type("M", (), {"files": (FileEntry("sub.onnx", "onnx"),)})())
    # And a sparse initializer whose indices live in an external file (a third review's case).
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sw")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sw_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    g2 = helper.make_graph([helper.make_node("Identity", ["sw"], ["o"])], "g2", [],
                           [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])], sparse_initializer=[sparse])
    m2 = helper.make_model(g2)
    from onnx.external_data_helper import set_external_data

    set_external_data(m2.graph.sparse_initializer[0].indices, location="idx.bin")
    (tmp_path / "idx.bin").write_bytes(m2.graph.sparse_initializer[0].indices.raw_data or b"")
    m2.graph.sparse_initializer[0].indices.data_location = TensorProto.EXTERNAL
    onnx.save(m2, str(tmp_path / "sparse.onnx"))
    with pytest.raises(ConfigError, match="external data"):
        _refuse_external_data(tmp_path, type("M", (), {"files": (FileEntry("sparse.onnx", "onnx"),)})())

    # A damaged bundle gets the checksum's message, not a parser's.
    (bundle / "ext.onnx").write_bytes(b"damaged")
    res = CliRunner().invoke(cli, ["sign", str(bundle), "--key", str(keys["private"])])
    assert isinstance(res.exception, BundleError) and "ext.onnx" in str(res.exception)


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
    with pytest.raises(MissingDependencyError, match=r"pip install 'cryptography>=41'"):
        load_trusted_keys([keys["public"]])
    assert not check_signature(signed).trusted  # looking without a key needs no cryptography


def test_verify_refuses_a_parsed_manifest_the_file_no_longer_holds(signed: Path) -> None:
    """A caller that parsed the manifest earlier must not get its files hashed against that copy while the
    checksum is judged on the file's current content (the split a review raced)."""
    from uopsl.runtime.bundle import verify

    m = read_manifest(signed)
    assert all(c.ok for c in verify(signed, m))
    _reseal(signed, referral_threshold=m.referral_threshold + 0.1)
    with pytest.raises(BundleError, match="changed since it was read"):
        verify(signed, m)
    with pytest.raises(BundleError, match="changed since it was read"):
        verify_or_raise(signed, m)


# -- revocation -------------------------------------------------------------------------------------------
def _machine_folder(tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                    revoked: str | None = None) -> Path:
    import uopsl.runtime.signing as signing

    folder = tmp_path / "trusted-keys"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(keys["public"], folder / "maker.pub")
    if revoked is not None:
        (folder / "revoked.txt").write_text(revoked)
    monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
    return folder


def test_a_revocation_list_withdraws_a_key_recalls_older_releases_or_names_one(
        signed: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A maker who recalls a model (or whose key leaked) must stop devices screening with bundles already
    signed: before revocation lists, a signed bundle stayed trusted for as long as its key did."""
    import datetime as dt

    from uopsl.runtime.api import Screener
    from uopsl.runtime.signing import signature_id

    payload = json.loads((signed / SIGNATURE_FILE).read_text())["payload"]
    kid, sid = payload["key_id"], signature_id(payload)
    signed_at = dt.datetime.fromisoformat(payload["signed_at"])
    folder = _machine_folder(tmp_path, keys, monkeypatch, "# nothing revoked yet\n\n")
    assert Screener(signed, backend="ort-cpu").signature.signature_id == sid  # type: ignore[union-attr]

    def refused(text: str) -> str:
        (folder / "revoked.txt").write_text(text)
        with pytest.raises(BundleError) as err:
            # A key the operator adds by hand is refused too: the revocation wins over every source.
            Screener(signed, backend="ort-cpu", trusted_keys=[keys["public"]])
        return str(err.value)

    msg = refused(f"key {kid}   # key left on a laptop that was stolen\n")
    assert f"key {kid} is revoked by {folder / 'revoked.txt'}:1: key left on a laptop that was stolen" in msg
    later = (signed_at + dt.timedelta(seconds=1)).isoformat()
    msg = refused(f"# recall\nkey {kid.upper()} before {later}  # misses DME in dark photographs\n")
    assert f"signed before {later}" in msg and "revoked.txt:2: misses DME" in msg
    day = (signed_at + dt.timedelta(days=1)).date().isoformat()  # a date alone: midnight UTC
    assert f"before {day}T00:00:00+00:00" in refused(f"key {kid} before {day}\n")
    msg = refused(f"release {sid}\n")
    assert f"this signed release ({sid}) is revoked" in msg
    from uopsl.runtime.cli import main

    assert main(["info", str(signed), "--json"]) == 2  # refused here, and says what is in force
    info = json.loads(capsys.readouterr().out)["signature"]
    assert not info["trusted"] and info["revocations_here"] == [
        {"kind": "release", "id": sid, "before": None, "reason": "", "source": f"{folder / 'revoked.txt'}:1"}]
    # Bundles signed at or after the cut-off, other releases and other keys' entries pass.
    (folder / "revoked.txt").write_text(f"key {kid} before {payload['signed_at']}\nrelease {'0' * 64}\n"
                                        f"key {'f' * 16}\n")
    assert Screener(signed, backend="ort-cpu").signature.trusted  # type: ignore[union-attr]
    # A second folder (UOPSL_TRUSTED_KEYS_DIR) adds its own list.
    (folder / "revoked.txt").unlink()
    extra = tmp_path / "site-keys"
    extra.mkdir()
    shutil.copyfile(keys["other_public"], extra / "other.pub")
    (extra / "revoked.txt").write_text(f"release {sid}\n")
    monkeypatch.setenv("UOPSL_TRUSTED_KEYS_DIR", str(extra))
    with pytest.raises(BundleError, match="is revoked by"):
        Screener(signed, backend="ort-cpu")


@pytest.mark.parametrize("line,match", [
    ("key abc", "cannot read 'key abc'"),
    ("release 1234", "cannot read"),
    ("bundle " + "a" * 64, "cannot read"),
    ("key 0123456789abcdef after 2026-12-01", "cannot read"),
    ("key 0123456789abcdef before", "cannot read"),
    ("key 0123456789abcdef before 2026-13-01", "is not a calendar date"),
    ("key 0123456789abcdef before 2026-12-01T10:00:00", "is not a date this list takes"),
    # Python 3.11 reads these, 3.10 does not: refused on both, so one list reads the same on every device.
    ("key 0123456789abcdef before 20261201", "is not a date this list takes"),
    ("key 0123456789abcdef before 2026-12-01Z", "is not a date this list takes"),
    ("key 0123456789abcdef before 2026-12-01 10:00", "cannot read"),
    ("key 0123456789abcdef before 2026-12-01T09:30:00.5Z", "is not a date this list takes"),  # 3.10: 3 or 6 digits
    ("file " + "a" * 63, "cannot read"),
    ("release " + "g" * 64, "cannot read"),
])
def test_a_revocation_list_it_cannot_read_stops_every_run(signed: Path, tmp_path: Path, keys: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch, line: str,
                                                          match: str) -> None:
    """Fail closed: a misread list would let a recalled bundle screen."""
    from uopsl.runtime.api import Screener

    folder = _machine_folder(tmp_path, keys, monkeypatch, f"# ok\n{line}\n")
    with pytest.raises(ConfigError, match=match) as err:
        Screener(signed, backend="ort-cpu")
    assert f"{folder / 'revoked.txt'}:2" in str(err.value)
    (folder / "revoked.txt").unlink()
    (folder / "revoked.txt").mkdir()
    with pytest.raises(ConfigError, match="not a readable file"):
        Screener(signed, backend="ort-cpu")


def test_sign_verify_and_info_show_the_signature_id_a_recall_names(tiny_bundle: Path, tmp_path: Path,
                                                                   keys: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from uopsl.runtime.cli import main
    from uopsl.train.cli import cli

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    res = CliRunner().invoke(cli, ["sign", str(bundle), "--key", str(keys["private"])])
    assert res.exit_code == 0, res.output
    sid = re.search(r"signature id ([0-9a-f]{64})", res.output).group(1)  # type: ignore[union-attr]
    assert main(["verify", str(bundle), "--trusted-key", str(keys["public"])]) == 0
    assert f"signature id: {sid}" in capsys.readouterr().err
    assert main(["info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signature"]["signature_id"] == sid


def test_a_running_screener_stops_when_a_revocation_is_published(
        signed: Path, tiny_bundle: Path, tmp_path: Path, keys: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a `watch` or an application's Screener read the lists once at open and kept screening a bundle
    revoked after it started; only a new Screener refused."""
    from tinybundle import fundus_jpeg
    from uopsl.runtime.api import Screener

    monkeypatch.setattr(Screener, "TRUST_RECHECK_S", 0.0)  # every batch (2 s in service)
    payload = json.loads((signed / SIGNATURE_FILE).read_text())["payload"]
    folder = _machine_folder(tmp_path, keys, monkeypatch)
    photo = fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    with Screener(signed, backend="ort-cpu") as s:
        assert s.screen(photo).status == "ok"
        (folder / "README.txt").write_text("our keys")  # a change that revokes nothing: still screening
        assert s.screen(photo).status == "ok"
        (folder / "revoked.txt").write_text(f"key {payload['key_id']}  # leaked\n")
        with pytest.raises(BundleError, match=r"no longer trusted here: key [0-9a-f]{16} is revoked by .*: leaked"):
            s.screen(photo)
        with pytest.raises(BundleError, match="no longer trusted"):  # and stays refused
            list(s.screen_many([photo, photo]))
        (folder / "revoked.txt").unlink()
        (folder / "maker.pub").unlink()
        shutil.copyfile(keys["other_public"], folder / "other.pub")  # the key itself withdrawn
        with pytest.raises(BundleError, match="is not among this machine's keys any more"):
            s.screen(photo)
    # A bundle opened while the machine trusted no key is checked in full once keys appear.
    monkeypatch.setattr(signing_module(), "_system_dir_for_tests", tmp_path / "none-yet")
    with Screener(tiny_bundle, backend="ort-cpu") as s:
        assert s.signature is None and s.screen(photo).status == "ok"
        (tmp_path / "later").mkdir()
        _machine_folder(tmp_path / "later", keys, monkeypatch)
        with pytest.raises(BundleError, match="not signed"):
            s.screen(photo)


def signing_module():  # type: ignore[no-untyped-def]
    import uopsl.runtime.signing as signing

    return signing


@pytest.mark.parametrize("name", ["Revoked.txt.txt", "revoked", "REVOCATIONS.txt", " revoked.txt", "revoke.txt"])
def test_a_revocation_list_under_another_name_stops_every_run(signed: Path, tmp_path: Path, keys: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A review: revoked.txt.txt (an editor hiding extensions), Revoked.txt on Linux and the like were ignored
    without a word, and the revoked key screened."""
    from uopsl.runtime.api import Screener

    folder = _machine_folder(tmp_path, keys, monkeypatch)
    (folder / name).write_text("key 0123456789abcdef\n")
    with pytest.raises(ConfigError, match=f"{name!r} is not read as a revocation list: name the one list exactly "
                                          "revoked.txt"):
        Screener(signed, backend="ort-cpu")


def test_a_list_named_in_another_case_is_read_and_scratch_files_are_left_alone(
        signed: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A second review: editor swap files and the temporary file of an atomic replace stopped a running service."""
    from uopsl.runtime.api import Screener

    kid = json.loads((signed / SIGNATURE_FILE).read_text())["payload"]["key_id"]
    folder = _machine_folder(tmp_path, keys, monkeypatch)
    for scratch in (".revoked.txt.swp", "revoked.txt~", "revoked.txt.tmp", ".revoked.txt.new", "revoked.txt.bak"):
        (folder / scratch).write_text("key 0123456789abcdef\n")
    assert Screener(signed, backend="ort-cpu").signature.trusted  # type: ignore[union-attr]
    (folder / "REVOKED.TXT").write_text(f"key {kid}\n")
    with pytest.raises(BundleError, match="is revoked by"):
        Screener(signed, backend="ort-cpu")


def test_keys_given_as_a_one_shot_iterable_or_relative_paths_keep_working(
        signed: Path, tiny_bundle: Path, tmp_path: Path, keys: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A second review: a glob passed as trusted_keys was used up before the signature check, so an unsigned
    bundle screened; and relative key paths were read again after the application changed directory."""
    from tinybundle import fundus_jpeg
    from uopsl.runtime.api import Screener

    with pytest.raises(BundleError, match="not signed"):
        Screener(tiny_bundle, backend="ort-cpu", trusted_keys=keys["public"].parent.glob("maker.pub"))
    monkeypatch.setattr(Screener, "TRUST_RECHECK_S", 0.0)
    photo = fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    for given in (iter(["maker.pub"]), ["maker.pub"]):
        monkeypatch.chdir(keys["public"].parent)
        with Screener(signed, backend="ort-cpu", trusted_keys=given) as s:
            monkeypatch.chdir(tmp_path)  # "maker.pub" here names nothing: the key must not move with the cwd
            assert s.screen(photo).status == "ok" and s.signature is not None and s.signature.trusted


def test_a_file_entry_recalls_a_model_however_often_it_is_signed(signed: Path, tmp_path: Path,
                                                                keys: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: re-signing the same files (as building an engine requires) made a new signature id and time,
    which escaped release and before entries."""
    from uopsl.runtime.api import Screener

    model_sha = read_manifest(signed).file("model.onnx").sha256
    folder = _machine_folder(tmp_path, keys, monkeypatch, f"file {model_sha.upper()}  # misses DME\n")
    sign_bundle(signed, keys["private"])  # signed again: another release
    with pytest.raises(BundleError, match=f"a file of this bundle \\(sha256 {model_sha}\\) is revoked"):
        Screener(signed, backend="ort-cpu")
    (folder / "revoked.txt").write_text(f"file {'0' * 64}\n")
    assert Screener(signed, backend="ort-cpu").signature.trusted  # type: ignore[union-attr]


def test_unverified_signature_text_cannot_reach_the_terminal_as_it_is(signed: Path, keys: dict[str, Path]) -> None:
    """A review put ': signature valid, key trusted' into signed_at of a tampered signature file."""
    doc = json.loads((signed / SIGNATURE_FILE).read_text())
    doc["payload"]["signed_at"] = "2026-11-30: signature valid, key trusted; really"
    doc["payload"]["key_id"] = "evil\nline"
    (signed / SIGNATURE_FILE).write_text(json.dumps(doc))
    check = check_signature(signed, _trusted(keys))
    assert not check.trusted and "signature valid" not in check.describe().split(":", 1)[0]
    assert check.key_id == "(malformed key id)" and check.signed_at == "(unreadable time)"


def test_the_machines_folder_on_windows_does_not_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: %PROGRAMDATA% as the process sees it let whoever starts the process move the machine's keys
    and revocation list out of the way."""
    import uopsl.runtime.signing as signing

    monkeypatch.setenv("PROGRAMDATA", "/tmp/someone-elses")
    monkeypatch.setattr(signing, "_windows_program_data", lambda: Path("/from-the-system/ProgramData"))
    for environ in (None, {"PROGRAMDATA": "/tmp/someone-elses"}):
        got = signing.system_keys_dir(environ, windows=True)
        assert got == Path("/from-the-system/ProgramData/uopsl/trusted-keys")


def test_watch_stops_with_exit_2_when_its_bundle_is_revoked_while_it_runs(
        signed: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import threading
    import time

    from tinybundle import fundus_jpeg
    from uopsl.runtime.cli import main

    from uopsl.runtime.api import Screener

    monkeypatch.setattr(Screener, "TRUST_RECHECK_S", 0.0)
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))
    kid = json.loads((signed / SIGNATURE_FILE).read_text())["payload"]["key_id"]
    folder = _machine_folder(tmp_path, keys, monkeypatch)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    fundus_jpeg(inbox / "a.jpg", seed=1)

    def recall_after_the_first_photograph() -> None:  # the watch loop runs in this test's main thread
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (out / "results.jsonl").is_file() and "a.jpg" in (out / "results.jsonl").read_text():
                break
            time.sleep(0.05)
        (folder / "revoked.txt").write_text(f"key {kid}  # recalled\n")
        fundus_jpeg(inbox / "b.jpg", seed=2)

    helper = threading.Thread(target=recall_after_the_first_photograph)
    helper.start()
    rc = main(["watch", str(signed), str(inbox), "--out", str(out), "--backend", "ort-cpu", "--settle-ms", "50",
               "--poll", "0.05", "--timeout", "30"])
    helper.join()
    err = capsys.readouterr().err
    assert rc == 2 and "no longer trusted here" in err and "recalled" in err, err[-800:]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [Path(r["source"]).name for r in rows if "source" in r] == ["a.jpg"]  # nothing screened after it


def test_only_signed_parity_records_decide_where_signatures_are_required(
        signed: Path, tiny_bundle: Path, tmp_path: Path, keys: dict[str, Path], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Parity records sat outside the signature: a forged PASS written into manifest.json on a device could make
    `auto` run a signed INT8 file that FAILED validation. Now the signature covers the records present at
    signing, and a machine that requires signatures uses only those."""
    import base64 as b64

    from cryptography.hazmat.primitives import serialization

    from uopsl.export.bundle_writer import record_parity
    from uopsl.runtime.signing import _canonical, open_trusted

    caplog.set_level("INFO")
    forged = {"model.int8.onnx": {"ort-cpu": {"verdict": "PASS", "passed": True}}}
    record_parity(signed, forged)  # after signing: outside the signature
    assert "parity" in read_manifest(signed).file("model.int8.onnx").info
    view, check = open_trusted(signed, trusted_keys=[keys["public"]])
    assert check is not None and check.trusted and check.signed_parity == {}
    assert "parity" not in view.file("model.int8.onnx").info
    assert any("not covered by the bundle's signature are not used" in r.getMessage() and "model.int8.onnx" in
               r.getMessage() for r in caplog.records)
    view, _ = open_trusted(signed)  # a machine that trusts no key reads the manifest as it is
    assert "parity" in view.file("model.int8.onnx").info
    # Validated, then signed (the documented order): the records count.
    sign_bundle(signed, keys["private"])
    view, check = open_trusted(signed, trusted_keys=[keys["public"]])
    assert check is not None and set(check.signed_parity or {}) == {"model.int8.onnx"}
    assert view.file("model.int8.onnx").info["parity"] == read_manifest(signed).file("model.int8.onnx").info["parity"]
    # A record edited after signing reads as the signed one.
    record_parity(signed, {"model.int8.onnx": {"openvino": {"verdict": "PASS", "passed": True}}})
    view, _ = open_trusted(signed, trusted_keys=[keys["public"]])
    assert set(view.file("model.int8.onnx").info["parity"]["backends"]) == {"ort-cpu"}
    # A signature made before records were signed covers none: nothing INT8 is used unasked, and it says so.
    doc = json.loads((signed / SIGNATURE_FILE).read_text())
    del doc["payload"]["content"]["parity"]
    private = serialization.load_pem_private_key(keys["private"].read_bytes(), password=None)
    doc["signature"] = b64.b64encode(private.sign(_canonical(doc["payload"]))).decode()  # type: ignore[union-attr]
    (signed / SIGNATURE_FILE).write_text(json.dumps(doc))
    caplog.clear()
    view, check = open_trusted(signed, trusted_keys=[keys["public"]])
    assert check is not None and check.trusted and check.signed_parity is None
    assert all("parity" not in f.info for f in view.files)
    assert any("covers no parity records" in r.getMessage() for r in caplog.records)
    from uopsl.runtime.cli import main

    record_parity(signed, forged)
    sign_bundle(signed, keys["private"])
    record_parity(signed, {"model.onnx": {"ort-cpu": {"verdict": "PASS", "passed": True}}})
    assert main(["info", str(signed), "--trusted-key", str(keys["public"])]) == 0
    assert "parity records not covered by the signature, not used here: model.onnx on ort-cpu" in \
        capsys.readouterr().out


def test_a_refusal_recorded_after_signing_still_counts_where_signatures_are_required(
        signed: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A third review: the signed view put an older signed PASS back over a FAIL a device recorded since, and
    `info --json` reported the raw records. Records outside the signature may restrict, never permit."""
    from uopsl.export.bundle_writer import record_parity
    from uopsl.runtime.bundle import parity_status
    from uopsl.runtime.cli import main
    from uopsl.runtime.signing import open_trusted
    from uopsl.train.cli import cli

    passed = {"verdict": "PASS", "passed": True}
    record_parity(signed, {"model.int8.onnx": {"ort-cpu": passed, "openvino": passed}})
    res = CliRunner().invoke(cli, ["sign", str(signed), "--key", str(keys["private"])])
    assert res.exit_code == 0 and "note: this replaces release " in res.output, res.output
    record_parity(signed, {"model.int8.onnx": {"ort-cpu": {"verdict": "FAIL", "passed": False,
                                                           "reasons": ["flip_rate 0.02 > 0.005"]}}})
    view, check = open_trusted(signed, trusted_keys=[keys["public"]])
    runs = view.file("model.int8.onnx").info["parity"]["backends"]
    assert runs["ort-cpu"]["verdict"] == "FAIL" and runs["openvino"]["verdict"] == "PASS"  # the signed PASS stays
    ok, why = parity_status(view.file("model.int8.onnx"), "ort-cpu", manifest=view)
    assert not ok and "failed parity validation on ort-cpu (flip_rate 0.02" in why
    assert main(["info", str(signed), "--json", "--trusted-key", str(keys["public"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["signature"]["parity_set_aside"] == []  # the FAIL is used, nothing set aside
    f = next(x for x in info["manifest"]["files"] if x["path"] == "model.int8.onnx")
    assert f["info"]["parity"]["backends"]["ort-cpu"]["verdict"] == "FAIL"


def test_a_screener_opened_before_keys_existed_stops_if_its_choice_rested_on_unsigned_records(
        signed: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Only a file chosen unasked on the strength of unsigned records stops it (a fourth review: an FP32
    Screener was stopped too, and the message said its choice rested on records)."""
    import uopsl.runtime.signing as signing
    from tinybundle import fundus_jpeg
    from uopsl.export.bundle_writer import record_parity
    from uopsl.runtime.api import Screener
    from uopsl.runtime.backends import Selection

    monkeypatch.setattr(Screener, "TRUST_RECHECK_S", 0.0)
    record_parity(signed, {"model.int8.onnx": {"ort-cpu": {"verdict": "PASS", "passed": True}}})  # unsigned
    photo = fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    monkeypatch.setattr(signing, "_system_dir_for_tests", tmp_path / "no-keys-yet")
    with Screener(signed, backend="ort-cpu") as fp32, Screener(signed, backend="ort-cpu") as int8, \
            Screener(signed, backend="ort-cpu") as fp16, Screener(signed, backend="ort-cpu", precision="int8") as named:
        # As if auto had picked the INT8 file, or an FP16 engine, on an (unsigned) PASS: since session 28 auto
        # takes an FP16 engine only with a PASS too, so it rested on a record as the INT8 file did.
        int8._backend.selection = Selection("ort-cpu", "int8-qdq-u8", "model.int8.onnx", "auto")  # type: ignore[union-attr]
        fp16._backend.selection = Selection("tensorrt", "fp16", "model.onnx", "auto")  # type: ignore[union-attr]
        # Asked for by name, and validated by that unsigned record when it opened.
        named._backend.selection = Selection(  # type: ignore[union-attr]
            "ort-cpu", "int8-qdq-u8", "model.int8.onnx", "asked", validated=True)
        assert fp32.signature is None and fp32.screen(photo).status == "ok"
        _machine_folder(tmp_path, keys, monkeypatch)
        assert fp32.screen(photo).status == "ok"  # FP32: nothing rested on a record
        with pytest.raises(BundleError, match="model.onnx on tensorrt was chosen by parity records it does not sign"):
            fp16.screen(photo)
        # It keeps running (the user asked for it), but no longer reads as validated (a leftover of session 21).
        with caplog.at_level(logging.WARNING, logger="uopsl.runtime.api"):
            assert named.screen(photo).status == "ok"
        assert named.selection is not None and named.selection.validated is False
        assert "model.int8.onnx on ort-cpu is no longer a validated file on this machine" in caplog.text
        assert fp32.signature is not None and "parity" not in fp32.manifest.file("model.int8.onnx").info
        with pytest.raises(BundleError, match="model.int8.onnx on ort-cpu was chosen by parity records it does "
                                              "not sign .*make a new Screener"):
            int8.screen(photo)
    assert Screener(signed, backend="ort-cpu").signature.trusted  # type: ignore[union-attr]  # a new one: fine


def test_keys_removed_and_put_back_do_not_read_as_a_changed_bundle(
        signed: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import uopsl.runtime.signing as signing
    from tinybundle import fundus_jpeg
    from uopsl.export.bundle_writer import record_parity
    from uopsl.runtime.api import Screener

    monkeypatch.setattr(Screener, "TRUST_RECHECK_S", 0.0)
    record_parity(signed, {"model.int8.onnx": {"ort-cpu": {"verdict": "PASS", "passed": True}}})  # set aside
    photo = fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    folder = _machine_folder(tmp_path, keys, monkeypatch)
    with Screener(signed, backend="ort-cpu") as s:
        assert s.screen(photo).status == "ok"
        monkeypatch.setattr(signing, "_system_dir_for_tests", tmp_path / "keys-gone")
        assert s.screen(photo).status == "ok" and s.signature is None
        monkeypatch.setattr(signing, "_system_dir_for_tests", folder)
        assert s.screen(photo).status == "ok" and s.signature is not None and s.signature.trusted


def test_commands_that_void_a_signature_warn_before_they_change_the_bundle(
        signed: Path, tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A review: intended-use (and calibrate, quantize) voided a signature without a word; build-engine warned."""
    from tinymodel import fundus_png_folder
    from uopsl.runtime.clikit import main_entry
    from uopsl.train.cli import cli

    def warned(*argv: str) -> list[str]:
        try:
            assert main_entry(cli, list(argv)) == 0, capsys.readouterr().err
        finally:
            logging.basicConfig(force=True)
            logging.getLogger().setLevel(logging.WARNING)
        return [line for line in capsys.readouterr().err.splitlines() if "is signed" in line]

    images = fundus_png_folder(tmp_path / "imgs", 6)
    first = "research" if read_manifest(signed).intended_use.status != "research" else "demonstration"
    said = warned("intended-use", str(signed), first)
    assert len(said) == 1 and "restating its intended use" in said[0] and "uopsl sign" in said[0]
    said = warned("calibrate", str(signed), "--images", str(images), "--method", "minmax")
    assert len(said) == 1 and "the calibration table listed now (calibration.json)" in said[0]
    # The same images again: the table is reused, nothing in the bundle changes, nothing to warn about.
    assert warned("calibrate", str(signed), "--images", str(images), "--method", "minmax") == []
    # Measured again (--force) to the same bytes: still nothing changed (a mutation audit: warning on --force
    # alone went unnoticed).
    assert warned("calibrate", str(signed), "--images", str(images), "--method", "minmax", "--force") == []
    said = warned("quantize", str(signed), "--rounding", "nearest", "--no-bias-correction")
    assert len(said) == 1 and "an INT8 file listed now (model.int8.onnx)" in said[0]
    # The warnings were true: the signature no longer covers the bundle.
    assert not check_signature(signed, _trusted(keys)).trusted
    # A restatement that changes nothing, or an unsigned bundle: no warning.
    assert warned("intended-use", str(signed), first) == []
    (signed / SIGNATURE_FILE).unlink()
    assert warned("intended-use", str(signed), "research" if first != "research" else "demonstration") == []


def test_verify_of_an_unsigned_bundle_says_whether_that_matters(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A clinic review: 'signature: not signed' with no word on whether it matters or what to do."""
    import uopsl.runtime.signing as signing
    from uopsl.runtime.cli import cli as screen_cli

    monkeypatch.setattr(signing, "_system_dir_for_tests", tmp_path / "no-keys")
    res = CliRunner().invoke(screen_cli, ["verify", str(tiny_bundle)])
    assert res.exit_code == 0, res.output
    assert "signature: not signed (no signature.json) (fine where no signing key is set up on this machine" in \
        res.output and "compare the fingerprint below" in res.output


@pytest.mark.parametrize("variable", ["UOPSL_TRUSTED_KEYS", "UOPSL_TRUSTED_KEYS_DIR"])
def test_relative_paths_in_the_trust_variables_survive_a_change_of_directory(
        signed: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """Session 37's signing audit: the variables are read again before batches, and a relative path was taken
    against the working directory of each read: an application that changed directory after opening its
    Screener stopped with "cannot read the public key". They are now relative to the directory the process
    started in (the module's import), as a service's launcher meant them."""
    from tinybundle import fundus_jpeg
    from uopsl.runtime.api import Screener

    signing = signing_module()
    start = tmp_path / "start"
    (start / "trust").mkdir(parents=True)
    shutil.copyfile(keys["public"], start / "trust" / "maker.pub")
    monkeypatch.setattr(signing, "_ENV_BASE", str(start))
    monkeypatch.setattr(signing, "_system_dir_for_tests", tmp_path / "no-machine-folder")
    monkeypatch.setenv(variable, "trust/maker.pub" if variable == "UOPSL_TRUSTED_KEYS" else "trust")
    monkeypatch.setattr(Screener, "TRUST_RECHECK_S", 0.0)
    photo = fundus_jpeg(tmp_path / "in" / "a.jpg", seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the keys are: the start folder counts, not this one
    with Screener(signed, backend="ort-cpu") as s:
        assert s.signature is not None and s.signature.trusted
        monkeypatch.chdir(tmp_path)
        assert s.screen(photo).status == "ok"
    if variable == "UOPSL_TRUSTED_KEYS":
        assert signing.trusted_keys_from_env() == (str(start / "trust" / "maker.pub"),)
    monkeypatch.setenv(variable, str(start / "trust" / "maker.pub") if variable == "UOPSL_TRUSTED_KEYS"
                       else str(start / "trust"))  # an absolute path is taken as it is
    with Screener(signed, backend="ort-cpu") as s:
        assert s.signature is not None and s.signature.trusted
