"""``uopsl zero-shot``: classify into classes given only by name and description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from uopsl.train.commands.common import items_for, load_source, split_classes


@click.command("zero-shot")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help="Labelled test images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--classes", required=True, help="Comma-separated class names (built-in or from --classes-file).")
@click.option("--classes-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="TOML/JSON file describing new classes (name + phrases).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--n-boot", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples for the interval of each with/without-sites difference.")
def command(checkpoint: Path, data_spec: str, classes: str, classes_file: Path | None, out: Path,
            n_boot: int) -> None:
    """AUC per class with site attention and without it (the 'plain CLIP' reading).

    Two readings (the class description alone; against the healthy class's
    description) and two sets of negatives (every other image; healthy eyes
    only), each with/without-sites difference with a 95 % paired bootstrap
    interval and DeLong's p. Everything goes to OUT/zero_shot.json.
    """
    from uopsl.train.workflow import run_zero_shot

    names = split_classes(classes) or ()
    src = load_source(data_spec)
    res = run_zero_shot(checkpoint, items_for(src, names, "fundus"), names, out, classes_file, cache=out / "cache",
                        n_boot=n_boot)
    for n in names:
        with_sites, without = res["site_attention"][n], res["no_site_attention"][n]
        if with_sites is None or without is None:
            click.echo(f"{n:>14}: AUC undefined (the data has no image with, or none without, this class)")
        else:
            click.echo(f"{n:>14}: AUC with sites {with_sites:.4f}, without {without:.4f}")
    click.echo(_table(res["readings"], names, res.get("healthy_class")))


def _table(readings: dict[str, Any], names: tuple[str, ...] | list[str], healthy: str | None) -> str:
    """The readings as a plain-text table: one row per class, reading and set of negatives."""
    labels = {"raw": "description", "vs_healthy": f"vs {healthy}"}
    lines = [f"{'class':>14}  {'reading':<16} {'negatives':<9} {'with sites':>10} {'without':>8}  "
             f"difference [95 % CI]      DeLong p"]
    for n in names:
        for reading, by_negatives in readings.items():
            for negatives, block in by_negatives.items():
                row = block.get(n)
                if row is None or row["with_sites"] is None:
                    continue
                lo, hi = row["difference_ci95"]
                ci = "[undefined]" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"
                p = "-" if row["delong_p"] is None else f"{row['delong_p']:.3f}"
                neg = "all" if negatives == "all" else f"{healthy} only"
                lines.append(f"{n:>14}  {labels[reading]:<16} {neg:<9} {row['with_sites']:>10.4f} "
                             f"{row['without']:>8.4f}  {row['difference']:+.4f} {ci:<18} {p:>8}")
    if healthy is None:
        lines.append("(no healthy class in the bank: only the description reading, every other image a negative)")
    return "\n".join(lines)
