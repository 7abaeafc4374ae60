"""``uopsl zero-shot``: classify into classes given only by name and description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.model_folders import check_output_outside_model_folders
from uopsl.train.commands.common import check_out_outside_data, items_for, load_source, split_classes


@click.command("zero-shot")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help="Labelled test images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--classes", required=True, help="Comma-separated class names (built-in or from --classes-file).")
@click.option("--classes-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="TOML/JSON file describing new classes (name + phrases).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Report folder (zero_shot.json); not inside a bundle or checkpoint folder.")
@click.option("--text-model", default=None,
              help="The sentence encoder that made CHECKPOINT, for a checkpoint that does not record it (checked).")
@click.option("--n-boot", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples for the interval of each with/without-sites difference.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
def command(checkpoint: Path, data_spec: str, classes: str, classes_file: Path | None, out: Path,
            text_model: str | None, n_boot: int, seed: int) -> None:
    """AUC per class with site attention and without it (the 'plain CLIP' reading).

    Two readings (the class description alone; against the healthy class's
    description) and two sets of negatives (every other image; healthy eyes
    only), each with/without-sites difference with a 95 % paired bootstrap
    interval and DeLong's p. Everything goes to OUT/zero_shot.json.
    """
    from uopsl.train.workflow import run_zero_shot

    import numpy as np

    from uopsl.train.evaluate import class_coverage

    check_output_outside_model_folders(out)  # before the data are read
    names = split_classes(classes) or ()
    src = load_source(data_spec)
    check_out_outside_data(out, src)
    items = items_for(src, names, "fundus")
    cov = class_coverage(np.stack([it.target for it in items]) if items else np.zeros((0, len(names))), names)
    if not cov.evaluated:  # before the model runs: an empty table says nothing
        labelled = sorted({n for s in src.samples for n in s.labels})
        raise ConfigError(f"{data_spec} has no class of --classes with both positive and negative photographs "
                          f"({', '.join(f'{n}: {why}' for n, why in cov.left_out.items())}); its labels are "
                          f"{', '.join(labelled) or 'none'}: give data labelled with the classes to score")
    res = run_zero_shot(checkpoint, items, names, out, classes_file, cache=out / "cache", n_boot=n_boot,
                        text_model=text_model, seed=seed)
    for n in names:
        if res["site_attention"][n] is None:
            click.echo(f"{n:>14}: AUC undefined (the data has no image with, or none without, this class)")
    click.echo(_table(res["readings"], names, res.get("healthy_class")))


def _p(p: float | None) -> str:
    if p is None:  # DeLong's variance estimate was zero (tiny or degenerate samples): no p-value, not p = 0
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _table(readings: dict[str, Any], names: tuple[str, ...] | list[str], healthy: str | None) -> str:
    """The readings as a plain-text table: one row per class, reading and set of negatives."""
    labels = {"raw": "description", "vs_healthy": f"vs {healthy}"}
    rows = []
    for n in names:
        for reading, by_negatives in readings.items():
            for negatives, block in by_negatives.items():
                row = block.get(n)
                if row is None or row["with_sites"] is None:
                    continue
                lo, hi = row["difference_ci95"]
                ci = "undefined" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"
                small = " (small n)" if row.get("small_sample") else ""
                rows.append((n, labels[reading], ("all" if negatives == "all" else f"{healthy} only") + small,
                             f"{row['with_sites']:.4f}", f"{row['without']:.4f}", f"{row['difference']:+.4f}", ci,
                             _p(row["delong_p"])))
    header = ("class", "reading", "negatives", "with sites", "without", "difference", "95 % CI", "DeLong p")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ("<", "<", "<", ">", ">", ">", "<", ">")
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths)).rstrip() for r in [header, *rows]]
    if healthy is None:
        lines.append("(no healthy class in the bank: only the description reading, every other image a negative)")
    if any(" (small n)" in r[2] for r in rows):
        lines.append("(small n: fewer than 10 images with, or without, the class; read the interval, not the p-value)")
    return "\n".join(lines)
