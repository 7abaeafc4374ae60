"""``uopsl intended-use``: state, on a finished bundle, what its model may be used for."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("intended-use")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("status", type=click.Choice(["research", "clinical", "demonstration"]), required=False)
@click.option("--use-statement", "statement", default=None,
              help="The maker's statement: population, cameras, the validation and where its evidence is "
                   "(required to state clinical use; default: keep the bundle's if the status stays, else none).")
@click.option("--trained-on", default=None, help="What the model was trained on (default: keep the bundle's).")
def command(bundle: Path, status: str | None, statement: str | None, trained_on: str | None) -> None:
    """Show BUNDLE's intended use, or restate it as STATUS (the bundle is verified first).

    Run it after validating a bundle for clinical use, on the very files you
    validated: every report and run made with the bundle shows what it states.
    Results already screened with the bundle stay tied to it (the model has
    not changed).
    """
    from uopsl.export.bundle_writer import set_intended_use
    from uopsl.runtime.bundle import read_manifest
    from uopsl.runtime.intended_use import check_choice
    from uopsl.runtime.signing import warn_if_signed

    current = read_manifest(bundle).intended_use
    if status is None:
        if statement is not None or trained_on is not None:
            raise click.UsageError("give the STATUS to restate (research, clinical or demonstration)")
        click.echo(f"{bundle}: {current.status}. {current.describe()}")
        return
    if statement is None and status == "clinical" and current.status != "clinical":
        raise click.UsageError("stating clinical use needs its own statement: give --use-statement (who validated "
                               "the model, for which population and cameras, where the evidence is)")
    # A statement belongs to the use it was written for: a new status starts without one.
    kept = current.statement if status == current.status else ""
    use = check_choice(status, kept if statement is None else statement,
                       current.trained_on if trained_on is None else trained_on)
    m = set_intended_use(bundle, use)
    if use != current:  # once it is written: a refused restatement (clinical for a synthetic model) voids nothing
        warn_if_signed(bundle, "restating its intended use")
    click.echo(f"{bundle}: intended use {m.intended_use.status} (manifest {m.content_sha256[:12]})")
