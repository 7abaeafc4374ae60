"""``uopsl explain``: per-class predilection maps over fundus photographs."""

from __future__ import annotations

from pathlib import Path

import click

from uopsl.train.commands.common import split_classes


@click.command("explain")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the heatmap PNGs.")
@click.option("--classes", default=None, help="Comma-separated classes to show (default: all).")
def command(checkpoint: Path, images: tuple[Path, ...], out: Path, classes: str | None) -> None:
    """Write IMAGE_sites.png: the site attention of each class overlaid on the original photograph."""
    from uopsl.train.workflow import explain

    for p in explain(checkpoint, images, out, split_classes(classes)):
        click.echo(str(p))
