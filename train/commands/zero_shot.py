"""``uopsl zero-shot``: classify into classes given only by name and description."""

from __future__ import annotations

from pathlib import Path

import click

from uopsl.train.commands.common import items_for, load_source, split_classes


@click.command("zero-shot")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help="Labelled test images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--classes", required=True, help="Comma-separated class names (built-in or from --classes-file).")
@click.option("--classes-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="TOML/JSON file describing new classes (name + phrases).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def command(checkpoint: Path, data_spec: str, classes: str, classes_file: Path | None, out: Path) -> None:
    """AUC per class with site attention and without it (the 'plain CLIP' reading)."""
    from uopsl.train.workflow import run_zero_shot

    names = split_classes(classes) or ()
    src = load_source(data_spec)
    res = run_zero_shot(checkpoint, items_for(src, names, "fundus"), names, out, classes_file, cache=out / "cache")
    for n in names:
        with_sites, without = res["site_attention"][n], res["no_site_attention"][n]
        if with_sites is None or without is None:
            click.echo(f"{n:>14}: AUC undefined (the data has no image with, or none without, this class)")
        else:
            click.echo(f"{n:>14}: AUC with sites {with_sites:.4f}, without {without:.4f}")
