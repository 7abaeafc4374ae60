"""``uopsl explain``: per-class predilection maps over fundus photographs."""

from __future__ import annotations

from pathlib import Path

import click

from uopsl.runtime.errors import ConfigError
from uopsl.train.commands.common import split_classes


@click.command("explain")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for the heatmap PNGs; not inside a bundle or checkpoint folder.")
@click.option("--classes", default=None, help="Comma-separated classes to show (default: all).")
def command(checkpoint: Path, images: tuple[Path, ...], out: Path, classes: str | None) -> int:
    """Write IMAGE_sites.png: the site attention of each class overlaid on the original photograph.

    IMAGES are photographs, folders (searched recursively) or list files.
    Photographs that share a file name get IMAGE-HASH_sites.png, so none
    overwrites another; OUT/maps.csv says which photograph each PNG shows.
    Prints one PNG path per line. A photograph that uopsl-screen's quality
    gate would call ungradable (an OCT scan, a blurred or dark photograph) is
    drawn with UNGRADABLE and the gate's reasons on each panel, and named in
    a warning. Exit 1 when some photographs could not be read (logged and
    skipped), 2 when nothing could be done.
    """
    from uopsl.train.explain import explain_inputs

    result = explain_inputs(checkpoint, images, out, split_classes(classes))
    for _source, png in result.written:
        click.echo(str(png))
    if not result.written:
        raise ConfigError(f"no heatmap written: {len(result.failed)} photograph(s) could not be read (logged above); "
                          "check the paths and the files")
    return 1 if result.failed else 0
