"""``uopsl synth``: write a synthetic retina dataset (fundus photographs, OCT B-scans, site masks, labels.csv)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import click

from uopsl.runtime.clikit import PARALLEL_COUNT, FiniteFloatRange
from uopsl.train.synthetic import SEEN_CLASSES, UNSEEN_CLASSES, SynthConfig, make_dataset


def _split_classes(values: tuple[str, ...]) -> tuple[str, ...]:
    # --classes dr,dme and --classes dr --classes dme are the same
    return tuple(c.strip() for v in values for c in v.split(",") if c.strip())


@click.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created; a rerun over it resumes or does nothing).")
@click.option("--n", "n_fundus", type=click.IntRange(min=0), default=50, show_default=True,
              help="Number of fundus photographs.")
@click.option("--n-oct", type=click.IntRange(min=0), default=None,
              help="Number of OCT B-scans (an independent, unpaired pool).  [default: same as --n]")
@click.option("--size", type=click.IntRange(64, 4096), default=512, show_default=True,
              help="Side of the square fundus photographs in pixels (OCT: width; height 7/16 of it). Below 256 "
                   "`uopsl-screen` marks them ungradable (too_small), as it would a real photograph that small.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Dataset seed: the same seed and options give byte-identical files.")
@click.option("--masks/--no-masks", default=True, show_default=True,
              help="Write per-class lesion-site masks (masks/<image>.npz).")
@click.option("--classes", "classes", multiple=True, metavar="NAMES",
              help=f"Disease classes to draw, comma-separated or repeated. [default: {','.join(SEEN_CLASSES)}]")
@click.option("--include-unseen", is_flag=True,
              help=f"Also draw the classes reserved for zero-shot tests ({', '.join(UNSEEN_CLASSES)}).")
@click.option("--p-normal", type=FiniteFloatRange(0.0, 1.0), default=SynthConfig.p_normal, show_default=True,
              help="Probability that an image has no disease.")
@click.option("--format", "fundus_format", type=click.Choice(["jpg", "png"]), default="jpg", show_default=True,
              help="File format of the fundus photographs (OCT is always PNG).")
@click.option("--workers", type=PARALLEL_COUNT, default=None,
              help="Processes to use (the output does not depend on it).  [default: CPU count, at most 8]")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when it is a terminal).")
def command(
    out_dir: Path,
    n_fundus: int,
    n_oct: int | None,
    size: int,
    seed: int,
    masks: bool,
    classes: tuple[str, ...],
    include_unseen: bool,
    p_normal: float,
    fundus_format: str,
    workers: int | None,
    progress: bool | None,
) -> None:
    """Generate a synthetic retina dataset with known lesion sites.

    Writes OUT/fundus/, OUT/oct/, OUT/masks/ (with --masks), OUT/synth_config.json
    and OUT/labels.csv (columns path,patient,eye,modality,labels,masks).
    Seen classes: dr, dme, amd, glaucoma; unseen (zero-shot) classes: rp, macular_hole.
    """
    chosen = _split_classes(classes) or SEEN_CLASSES
    if include_unseen:
        chosen = chosen + tuple(c for c in UNSEEN_CLASSES if c not in chosen)
    config = SynthConfig(size=size, classes=chosen, p_normal=p_normal, seed=seed, fundus_format=fundus_format)
    n_oct = n_fundus if n_oct is None else n_oct
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    csv_path = make_dataset(out_dir, n_fundus, n_oct, config, write_masks=masks, workers=workers, progress=progress)
    counts: Counter[str] = Counter()
    with open(csv_path, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            counts.update(line.rstrip("\n").split(",")[4].split(";"))
    summary = ", ".join(f"{c} {counts[c]}" for c in ("normal", *chosen) if counts[c])
    click.echo(f"{n_fundus} fundus + {n_oct} OCT images in {out_dir} ({summary}); labels: {csv_path}")
