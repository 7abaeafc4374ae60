"""``uopsl keygen`` and ``uopsl sign``: sign finished bundles so devices that trust the key take only those."""

from __future__ import annotations

import os
from pathlib import Path

import click

from uopsl.calibration.onnx_file import refuse_external_data
from uopsl.runtime.errors import ConfigError


def _password(env: str | None, prompt: bool = False, *, confirm: bool = False) -> bytes | None:
    """The key's password: typed at a hidden prompt (``prompt``), or held by environment variable ``env``
    (for scripts), or None. Never from the command line, where it would stay in the shell's history and the
    process list."""
    if env is not None and prompt:
        raise click.UsageError("give --password-env or --password-prompt, not both")
    if prompt:
        typed = str(click.prompt("Password for the private key", hide_input=True, confirmation_prompt=confirm))
        if not typed:
            raise ConfigError("an empty password encrypts nothing; give one, or leave out --password-prompt")
        return typed.encode("utf-8")
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"--password-env {env}: that environment variable is not set or empty")
    return value.encode("utf-8")


def _refuse_external_data(bundle: Path, manifest: object) -> None:
    """ConfigError for an ONNX file whose tensors live in other files: the runtimes read those by path, and the
    manifest (so the signature) does not list them."""
    for f in manifest.files:  # type: ignore[attr-defined]
        if f.kind == "onnx":
            refuse_external_data(bundle / f.path, "which a signature would not cover")


@click.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for NAME.key (private: keep it off devices) and NAME.pub (give it to devices).")
@click.option("--name", default="uopsl-signing", show_default=True, help="File name stem of the two keys.")
@click.option("--password-env", default=None, metavar="VAR",
              help="Encrypt the private key with the password in environment variable VAR.")
@click.option("--password-prompt", is_flag=True, help="Encrypt the private key with a password typed (hidden) now.")
def keygen_command(out: Path, name: str, password_env: str | None, password_prompt: bool) -> None:
    """Make an Ed25519 key pair for signing bundles (never overwrites a key)."""
    from uopsl.runtime.model_folders import enclosing_model_folders
    from uopsl.runtime.signing import generate_keypair

    found = enclosing_model_folders(out)
    if found:
        # A key kept there travels with the model: devices copy a bundle whole, a checkpoint is shared whole.
        kind, folder = found[0]
        raise ConfigError(f"--out {out} is or lies inside the {kind} folder {folder}, which is copied whole to "
                          "devices or colleagues: the private key would travel with it. Keep keys in a folder of "
                          "their own, outside every bundle and checkpoint")
    password = _password(password_env, password_prompt, confirm=True)
    private, public, kid = generate_keypair(out, name, password)
    click.echo(f"key {kid}: private {private} (owner-only; keep it off devices), public {public} "
               "(devices: their trusted-keys folder, --trusted-key or UOPSL_TRUSTED_KEYS)")
    if password is None:
        click.echo("note: the private key is not encrypted; anyone who copies it can sign bundles your devices "
                   "trust (--password-prompt or --password-env VAR encrypt it; use a long passphrase)", err=True)


@click.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The PEM Ed25519 private key (`uopsl keygen`).")
@click.option("--password-env", default=None, metavar="VAR",
              help="The private key's password is in environment variable VAR.")
@click.option("--password-prompt", is_flag=True, help="Ask for the private key's password (hidden).")
def sign_command(bundle: Path, key_path: Path, password_env: str | None, password_prompt: bool) -> None:
    """Sign BUNDLE (verified first) as it is now: run it last, after quantize, validate, intended-use and any
    engine you ship; anything added later (other than parity records) voids the signature on devices."""
    from uopsl.runtime.bundle import read_manifest_raw, verify_or_raise
    from uopsl.runtime.signing import SIGNATURE_FILE, current_signature_id, sign_bundle

    # One read: checksums first (a damaged file gets the checksum's message, not a parser's), then what they
    # cannot see, then the signature over that same read.
    manifest, raw = read_manifest_raw(bundle)
    verify_or_raise(bundle, manifest, raw)
    _refuse_external_data(bundle, manifest)
    earlier = current_signature_id(bundle)
    done = sign_bundle(bundle, key_path, _password(password_env, password_prompt), verified=(manifest, raw))
    click.echo(f"{bundle / SIGNATURE_FILE}: signed with key {done.key_id} at {done.signed_at}")
    # What a recall names in the devices' revocation lists (docs/deployment.md, "Revoking").
    click.echo(f"signature id {done.signature_id} (keep it with the release)")
    if earlier and earlier != done.signature_id:
        # The earlier signature.json stays valid for these files: a copy of it can be put back (a review).
        click.echo(f"note: this replaces release {earlier}, which devices keep accepting for these files; if it "
                   f"must not be used any more (a verdict that turned FAIL), publish 'release {earlier}' in their "
                   "revocation lists (docs/deployment.md, \"Revoking\")")
