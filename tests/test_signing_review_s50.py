"""Session 50's review of signing and the chain of trust: what a device reads its trust from must be changeable
by its administrator only; several keys in one file all count; a private key given as a trusted key is named."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.signing import (
    REVOCATIONS_FILE,
    TRUSTED_KEYS_DIR_ENV,
    configured_key_files,
    configured_revocations,
    generate_keypair,
    load_trusted_keys,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes and owners are POSIX's; Windows uses ACLs")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    keys = tmp_path / "trusted"
    keys.mkdir(mode=0o755)
    os.chmod(keys, 0o755)
    _, public, _ = generate_keypair(tmp_path / "maker", "maker")
    (keys / "maker.pub").write_bytes(public.read_bytes())
    os.chmod(keys / "maker.pub", 0o644)
    (keys / REVOCATIONS_FILE).write_text("# nothing recalled\n")
    os.chmod(keys / REVOCATIONS_FILE, 0o644)
    return keys


def _env(folder: Path) -> dict[str, str]:
    return {TRUSTED_KEYS_DIR_ENV: str(folder)}


@posix_only
def test_a_trust_folder_or_file_others_can_write_is_refused(folder: Path) -> None:
    """A review, as user ``nobody``, added its own key to a mode-777 folder and emptied revoked.txt: the device
    then ran its model. Each of the folder, a key file and the list is now checked."""
    assert len(configured_key_files(_env(folder))) == 1 and configured_revocations(_env(folder)) == ()
    os.chmod(folder, 0o777)
    with pytest.raises(ConfigError, match=r"trusted-keys folder can be changed by another user \(mode 777, "
                                          r"writable by group or others\).*chmod go-w"):
        configured_key_files(_env(folder))
    os.chmod(folder, 0o755)
    os.chmod(folder / "maker.pub", 0o664)
    with pytest.raises(ConfigError, match=r"maker.pub: the trusted key file can be changed by another user"):
        load_trusted_keys(configured_key_files(_env(folder)))
    os.chmod(folder / "maker.pub", 0o644)
    os.chmod(folder / REVOCATIONS_FILE, 0o646)
    with pytest.raises(ConfigError, match=r"revoked.txt: the revocation list can be changed by another user"):
        configured_revocations(_env(folder))


@posix_only
def test_a_folder_above_that_others_can_write_is_refused_unless_sticky(folder: Path) -> None:
    above = folder.parent
    mode = stat.S_IMODE(above.stat().st_mode)
    try:
        os.chmod(above, 0o777)
        with pytest.raises(ConfigError, match=r"\(above .*trusted\): the trusted-keys folder can be changed"):
            configured_key_files(_env(folder))
        os.chmod(above, 0o1777)  # /tmp: others may write, but not rename what is not theirs
        assert len(configured_key_files(_env(folder))) == 1
    finally:
        os.chmod(above, mode)


@posix_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file away needs root")
def test_a_key_file_another_user_owns_is_refused(folder: Path) -> None:
    os.chown(folder / "maker.pub", 65534, -1)
    with pytest.raises(ConfigError, match=r"maker.pub: the trusted key file can be changed by another user "
                                          r"\(mode 644, owner uid 65534\)"):
        load_trusted_keys(configured_key_files(_env(folder)))


@posix_only
def test_a_linked_key_is_judged_by_the_file_it_names(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.pub"
    target.write_bytes((folder / "maker.pub").read_bytes())
    os.chmod(target, 0o666)
    (folder / "maker.pub").unlink()
    (folder / "maker.pub").symlink_to(target)
    with pytest.raises(ConfigError, match="elsewhere.pub: the trusted key file can be changed by another user"):
        load_trusted_keys(configured_key_files(_env(folder)))


def test_every_key_in_a_file_of_several_is_trusted(tmp_path: Path) -> None:
    """It trusted the first alone, silently: an administrator who appended a second maker's key had it ignored."""
    _, a, ka = generate_keypair(tmp_path, "a")
    _, b, kb = generate_keypair(tmp_path, "b")
    both = tmp_path / "makers.pem"
    both.write_bytes(b"# maker B, then maker A\n" + b.read_bytes() + a.read_bytes())
    keys = load_trusted_keys([both])
    assert [k.key_id for k in keys] == [kb, ka]
    assert keys[1].source == f"{both} (key 2 of 2)"


def test_a_comment_above_the_key_is_read_past(tmp_path: Path) -> None:
    _, a, ka = generate_keypair(tmp_path, "a")
    noted = tmp_path / "noted.pub"
    noted.write_bytes(b"# " + b"installed by the clinic's IT on 2026-12-06; ask before changing " * 5 + b"\n"
                      + a.read_bytes())
    assert [k.key_id for k in load_trusted_keys([noted])] == [ka]


def test_a_private_key_given_as_trusted_is_named(tmp_path: Path) -> None:
    private, _, _ = generate_keypair(tmp_path, "a")
    with pytest.raises(ConfigError, match="this is a PRIVATE key, which must not be on devices.*NAME.pub"):
        load_trusted_keys([private])


def test_the_trusted_view_sets_aside_the_unsigned_speed_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review raised the INT8 file's recorded speed-up (unsigned) from 0.8x to 9.9x on a signed bundle, and
    `auto` ran the INT8 file without measuring: where signatures are required the figure is now set aside."""
    from dataclasses import replace

    from tinybundle import make_tiny_bundle

    from uopsl.runtime.backends import cpu_int8_speedup, cpu_name
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.signing import UNSIGNED_CHOICE_FIELDS, signed_parity_view

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))  # nothing measured earlier on this machine
    root = make_tiny_bundle(tmp_path / "b", size=64, int8=True)
    m = read_manifest(root)
    files = tuple(replace(f, info={**f.info, "cpu_int8_speedup": 9.9, "cpu_int8_speedup_cpu": cpu_name()})
                  if f.path == "model.int8.onnx" else f for f in m.files)
    m = replace(m, files=files)
    fp32, int8 = m.file("model.onnx"), m.file("model.int8.onnx")
    assert cpu_int8_speedup(root, fp32, int8, measure=False)[0] == 9.9  # unsigned: what a device without keys reads
    view, _ = signed_parity_view(m, None)
    assert not set(UNSIGNED_CHOICE_FIELDS) & set(view.file("model.int8.onnx").info)
    speedup, why = cpu_int8_speedup(root, view.file("model.onnx"), view.file("model.int8.onnx"), measure=False)
    assert speedup is None and "never measured" in why


def test_a_password_for_an_unencrypted_key_says_what_to_do(tmp_path: Path) -> None:
    from tinybundle import make_tiny_bundle

    from uopsl.runtime.signing import sign_bundle

    private, _, _ = generate_keypair(tmp_path / "k", "k")  # no password: unencrypted
    root = make_tiny_bundle(tmp_path / "b", size=64)
    with pytest.raises(ConfigError, match="leave out --password-env and --password-prompt for this key"):
        sign_bundle(root, private, b"a password")


@posix_only
def test_sign_warns_about_an_unencrypted_or_shared_private_key(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from tinybundle import make_tiny_bundle

    from uopsl.runtime.signing import sign_bundle

    private, _, _ = generate_keypair(tmp_path / "k", "k")
    os.chmod(private, 0o644)
    root = make_tiny_bundle(tmp_path / "b", size=64)
    with caplog.at_level("WARNING", logger="uopsl"):
        sign_bundle(root, private)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "is not encrypted: anyone who copies it can sign bundles" in said
    assert "can be read by other users (mode 644); keep it owner-only: chmod 600" in said


@posix_only
def test_sign_says_readable_only_of_a_key_others_can_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tinybundle import make_tiny_bundle

    from uopsl.runtime.signing import sign_bundle

    private, _, _ = generate_keypair(tmp_path / "k", "k")
    os.chmod(private, 0o610)  # a group bit, but not read: nobody else can read it
    with caplog.at_level("WARNING", logger="uopsl"):
        sign_bundle(make_tiny_bundle(tmp_path / "b", size=64), private)
    assert not any("can be read by other users" in r.getMessage() for r in caplog.records)
